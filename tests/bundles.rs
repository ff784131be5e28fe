//! HPE artifact bundles end to end: HPE's five public bundles open, verify, validate, resolve
//! and round-trip through `Bundle::write`; the Support bundle's golden image imports into a
//! fresh store byte for byte; and hostile bundles built here (tampered, incomplete, with
//! path-like, duplicated or bomb entries, broken or inconsistent JSON) are refused with the
//! error that names the problem.

use std::fs;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use strata::plan::artifacts::{GoldenImage, OeBuildPlan, OeDeploymentPlan, PlanScript};
use strata::plan::bundle::{
    store_name_for, Algorithm, Bundle, BundleError, Payload, PayloadSource,
};
use strata::store::{RepoOptions, Repository};
use zip::write::SimpleFileOptions;

const FOUNDATION: &str = "HPE-Foundation-Artifacts-2018-09-11-v4.0";
const DEVELOPER: &str = "HPE-ImageStreamer-Developer-2017-08-28-v4.1";
const RHEL8: &str = "HPE-RHEL8-EFI-2020-01-27-v6.40";
const SUPPORT_OLD: &str = "HPE-Support-Artifacts-2017-03-24";
const SUPPORT: &str = "HPE-Support-Artifacts-2017-11-29-v4.0";
const ALL: [&str; 5] = [FOUNDATION, DEVELOPER, RHEL8, SUPPORT_OLD, SUPPORT];
const SUPPORT_IMAGE: &str = "HPE - Support 1.0 - UEFI Test Image - 2017-03-24";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hpe-artifacts")
        .join(format!("{name}.zip"))
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Every entry of a zip, in order.
fn entries(zip_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = zip::ZipArchive::new(Cursor::new(zip_bytes)).unwrap();
    (0..a.len())
        .map(|i| {
            let mut f = a.by_index(i).unwrap();
            let mut v = Vec::new();
            f.read_to_end(&mut v).unwrap();
            (f.name().to_string(), v)
        })
        .collect()
}

fn fixture_entries(name: &str) -> Vec<(String, Vec<u8>)> {
    entries(&fs::read(fixture(name)).unwrap())
}

fn make_zip(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (n, b) in files {
        w.start_file(n.as_str(), SimpleFileOptions::default())
            .unwrap();
        w.write_all(b).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// The fixture unpacked into a folder (by name, which the fixtures' names allow).
fn unpack(name: &str, dir: &Path) {
    for (n, b) in fixture_entries(name) {
        fs::write(dir.join(n), b).unwrap();
    }
}

/// Rewrites a folder bundle's checksum file over all its other files.
fn resum(dir: &Path) {
    let (sum_file, sha1) = if dir.join("SHA1SUM.sha1sum").exists() {
        ("SHA1SUM.sha1sum", true)
    } else {
        ("SHA256SUM.sha256sum", false)
    };
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n != sum_file)
        .collect();
    names.sort();
    let mut text = String::new();
    for n in names {
        let b = fs::read(dir.join(&n)).unwrap();
        let h = if sha1 {
            use sha1::Digest as _;
            sha1::Sha1::digest(&b)
                .iter()
                .map(|x| format!("{x:02x}"))
                .collect::<String>()
        } else {
            sha256_hex(&b)
        };
        text.push_str(&format!("{n}\t{h}\n"));
    }
    fs::write(dir.join(sum_file), text).unwrap();
}

/// Sets the uncompressed size that the local and central headers of entry `name` declare.
fn patch_declared_size(zip: &mut [u8], name: &str, size: u32) {
    let mut patched = 0;
    for i in 0..zip.len().saturating_sub(46) {
        let sig = &zip[i..i + 4];
        let u16at = |z: &[u8], j: usize| u16::from_le_bytes([z[j], z[j + 1]]) as usize;
        if sig == b"PK\x03\x04" {
            let n = u16at(zip, i + 26);
            if zip.get(i + 30..i + 30 + n) == Some(name.as_bytes()) {
                zip[i + 22..i + 26].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        } else if sig == b"PK\x01\x02" {
            let n = u16at(zip, i + 28);
            if zip.get(i + 46..i + 46 + n) == Some(name.as_bytes()) {
                zip[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
                patched += 1;
            }
        }
    }
    assert_eq!(patched, 2, "patching {name}");
}

fn open_err(path: &Path) -> BundleError {
    match Bundle::open(path) {
        Ok(_) => panic!("{} opened, but should have been refused", path.display()),
        Err(e) => e,
    }
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn first_file(dir: &Path, suffix: &str) -> PathBuf {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v.remove(0)
}

#[test]
fn every_hpe_bundle_opens_verifies_and_validates_cleanly() {
    // (bundle, plan scripts, build plans, deployment plans, golden images, payloads)
    let expect = [
        (FOUNDATION, 2, 3, 1, 0, 0),
        (DEVELOPER, 7, 5, 2, 1, 1),
        (RHEL8, 10, 2, 0, 0, 0),
        (SUPPORT_OLD, 3, 2, 2, 1, 1),
        (SUPPORT, 3, 2, 2, 1, 1),
    ];
    for (name, ps, bp, dp, gi, pl) in expect {
        let b = Bundle::open(fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let a = b.artifacts();
        assert_eq!(
            (
                a.plan_scripts.len(),
                a.build_plans.len(),
                a.deployment_plans.len(),
                a.golden_images.len(),
                b.payloads().len()
            ),
            (ps, bp, dp, gi, pl),
            "{name}"
        );
        assert!(b.warnings().is_empty(), "{name}: {:?}", b.warnings());
        assert_eq!(b.manifest().get("Artifact Type"), Some("USER"), "{name}");
        assert!(b.manifest().artifact_name().is_some(), "{name}");
        let want = if name == SUPPORT_OLD {
            Algorithm::Sha1
        } else {
            Algorithm::Sha256
        };
        assert_eq!(b.checksum_files(), [want], "{name}");
    }
}

#[test]
fn every_deployment_plan_resolves_to_its_build_plan_scripts_and_golden_image() {
    // (bundle, deployment plan id, build plan id, script ids in order, golden image id)
    type Case<'a> = (&'a str, &'a str, &'a str, &'a [&'a str], Option<&'a str>);
    let expect: [Case; 6] = [
        (
            FOUNDATION,
            "3078a850-1870-4321-aa23-ea323a9e54a0",
            "81811fac-4cbc-4dd2-9e51-1a4c6d7551ae",
            &["a4fd6d18-5833-44c3-8848-a7413dcf8b9f"],
            None,
        ),
        (
            DEVELOPER,
            "71bf7ed1-ddf5-456a-afd7-fe67496da476",
            "829593b3-0763-46d8-b13d-0a1f233bcc75",
            &["24f3e49b-984e-45ef-bb34-2bee9a79e1cd"],
            Some("f12887e3-a1d5-4fda-9a58-b372c32db74a"),
        ),
        (
            DEVELOPER,
            "646daa3c-22b9-4e51-b2ca-a4349262693b",
            "f82b0043-ab95-4378-96eb-895aadc774aa",
            &[
                "1ba1732f-0d3f-4dba-a811-86edd7a6d6c6",
                "f244c12d-a830-4432-92b6-6e1d5d46abca",
            ],
            Some("f12887e3-a1d5-4fda-9a58-b372c32db74a"),
        ),
        (
            SUPPORT_OLD,
            "81541936-0776-4feb-ab9f-b8d2d59bff33",
            "a07bd729-d434-4020-b5ad-25ef68c79fd0",
            &["711a0ab8-4d95-46d9-8d0a-b25a8dde92c6"],
            Some("b5f1d060-41a1-4002-9a8e-a0143cf34dac"),
        ),
        (
            SUPPORT,
            "c792c921-7959-4ed7-9ad7-e309d1be3f67",
            "72cc4ec7-d323-43f2-a888-770c3f67518e",
            &["ea0e6e28-6c0a-468a-abdc-b8098928b34b"],
            Some("e75c8b4c-4202-4864-999d-cc1e506fd23c"),
        ),
        (
            SUPPORT,
            "8b1d1e3b-43c6-4378-8158-b0430ce7aea1",
            "84664017-1e03-4bfb-b48e-173284f7090e",
            &["481ff65a-e41f-4540-8846-a59761d10674"],
            Some("e75c8b4c-4202-4864-999d-cc1e506fd23c"),
        ),
    ];
    for (bundle, dp, bp, scripts, gi) in expect {
        let b = Bundle::open(fixture(bundle)).unwrap();
        let set = b.artifacts();
        // By id and by name alike.
        let name = set.deployment_plan(dp).unwrap().name.clone();
        for key in [dp.to_string(), name] {
            let r = set.resolve(&key).unwrap();
            assert_eq!(r.deployment_plan.id, dp);
            assert_eq!(r.build_plan.build_plan.id, bp, "{bundle} {dp}");
            let got: Vec<&str> = r
                .build_plan
                .steps
                .iter()
                .map(|(_, s)| s.id.as_str())
                .collect();
            assert_eq!(got, scripts, "{bundle} {dp}");
            assert_eq!(r.golden_image.map(|g| g.id.as_str()), gi, "{bundle} {dp}");
            if let Some(g) = r.golden_image {
                assert!(b.has_payload(&g.name), "{bundle}: payload of {}", g.name);
            }
        }
    }
    // Every deployment plan of every bundle resolves.
    for bundle in ALL {
        let b = Bundle::open(fixture(bundle)).unwrap();
        for dp in &b.artifacts().deployment_plans {
            b.artifacts().resolve(&dp.id).unwrap();
        }
    }
    // RHEL8 has build plans only: nine steps, mount first and unmount last.
    let b = Bundle::open(fixture(RHEL8)).unwrap();
    let set = b.artifacts();
    let bp = set
        .build_plan("/rest/build-plans/ba5e31ad-bb8a-4f8e-8299-0187618459ba")
        .unwrap();
    let r = set.resolve_build_plan(bp).unwrap();
    let names: Vec<&str> = r.steps.iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(names.len(), 9);
    assert_eq!(names[0], "HPE-RHEL8-EFI-mount-2019-03-21");
    assert_eq!(names[8], "HPE-RHEL8-EFI-unmount-2019-03-21");
    let serials: Vec<u64> = r.steps.iter().map(|(st, _)| st.serial().unwrap()).collect();
    assert_eq!(serials, (1..=9).collect::<Vec<_>>());
}

#[test]
fn every_artifact_parses_and_serializes_to_the_same_json() {
    let mut n = 0;
    for bundle in ALL {
        for (name, bytes) in fixture_entries(bundle) {
            if !name.ends_with(".json") {
                continue;
            }
            let orig: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let again = if name.ends_with("_planscript.json") {
                serde_json::to_value(serde_json::from_slice::<PlanScript>(&bytes).unwrap())
            } else if name.ends_with("_buildplan.json") {
                serde_json::to_value(serde_json::from_slice::<OeBuildPlan>(&bytes).unwrap())
            } else if name.ends_with("_deploymentplan.json") {
                serde_json::to_value(serde_json::from_slice::<OeDeploymentPlan>(&bytes).unwrap())
            } else if name.ends_with("_goldenimage.json") {
                serde_json::to_value(serde_json::from_slice::<GoldenImage>(&bytes).unwrap())
            } else {
                panic!("{bundle}: unexpected {name}");
            }
            .unwrap();
            assert_eq!(again, orig, "{bundle}/{name}");
            n += 1;
        }
    }
    assert_eq!(n, 49);
}

#[test]
fn every_bundle_round_trips_through_write_with_its_payload() {
    for bundle in ALL {
        let t = tmp();
        let b = Bundle::open(fixture(bundle)).unwrap();
        let payloads: Vec<Payload> = b
            .payloads()
            .iter()
            .map(|(gi, _)| Payload {
                golden_image: gi.to_string(),
                source: PayloadSource::Bundle(&b),
            })
            .collect();
        let out = t.path().join("out.zip");
        Bundle::write(&out, b.artifacts(), b.manifest(), &payloads).unwrap();
        let again = Bundle::open(&out).unwrap_or_else(|e| panic!("{bundle}: {e}"));
        assert_eq!(again.artifacts(), b.artifacts(), "{bundle}");
        assert_eq!(again.manifest(), b.manifest(), "{bundle}");
        assert_eq!(again.payloads(), b.payloads(), "{bundle}");
        assert!(
            again.warnings().is_empty(),
            "{bundle}: {:?}",
            again.warnings()
        );
        assert_eq!(again.checksum_files(), [Algorithm::Sha256]);
        for (gi, _) in b.payloads() {
            let (mut x, mut y) = (Vec::new(), Vec::new());
            b.copy_payload(gi, &mut x).unwrap();
            again.copy_payload(gi, &mut y).unwrap();
            assert_eq!(sha256_hex(&x), sha256_hex(&y), "{bundle}: payload {gi}");
        }
        // The layout is HPE's: same file names as the original.
        let mut want: Vec<String> = fixture_entries(bundle)
            .into_iter()
            .map(|(n, _)| n)
            .map(|n| {
                if n == "SHA1SUM.sha1sum" {
                    "SHA256SUM.sha256sum".into()
                } else {
                    n
                }
            })
            .collect();
        let mut got: Vec<String> = entries(&fs::read(&out).unwrap())
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{bundle}");
        // A second write to the same place is refused, and nothing partial is left.
        let e = Bundle::write(&out, b.artifacts(), b.manifest(), &[]).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 1);
    }
}

#[test]
fn a_folder_bundle_opens_like_its_zip() {
    for bundle in [DEVELOPER, SUPPORT_OLD] {
        let t = tmp();
        unpack(bundle, t.path());
        let z = Bundle::open(fixture(bundle)).unwrap();
        let d = Bundle::open(t.path()).unwrap();
        assert_eq!(d.artifacts(), z.artifacts());
        assert_eq!(d.manifest(), z.manifest());
        assert_eq!(d.payloads(), z.payloads());
    }
}

/// The raw disk inside the Support bundle's payload, extracted with the zip crate directly.
fn support_disk() -> Vec<u8> {
    let (_, payload) = fixture_entries(SUPPORT)
        .into_iter()
        .find(|(n, _)| n == SUPPORT_IMAGE)
        .unwrap();
    let inner = entries(&payload);
    assert_eq!(inner.len(), 1);
    inner.into_iter().next().unwrap().1
}

fn exported_sha(repo: &Repository, name: &str, dir: &Path) -> String {
    let out = dir.join(format!("{name}.raw"));
    repo.export_image(name, &out, &|_, _| {}).unwrap();
    sha256_hex(&fs::read(&out).unwrap())
}

#[test]
fn support_golden_image_imports_into_the_store_byte_for_byte() {
    let disk = support_disk();
    assert_eq!(disk.len(), 100 << 20);
    assert_eq!(&disk[512..520], b"EFI PART", "a GPT disk");
    let want = sha256_hex(&disk);

    let t = tmp();
    let repo = Repository::open(t.path().join("repo"), RepoOptions::default()).unwrap();
    let b = Bundle::open(fixture(SUPPORT)).unwrap();
    let name = store_name_for(SUPPORT_IMAGE);
    let seen = Mutex::new(Vec::new());
    let meta = b
        .import_golden_image(&repo, SUPPORT_IMAGE, &name, &|d, t| {
            seen.lock().unwrap().push((d, t))
        })
        .unwrap();
    assert_eq!(meta.name, name);
    assert_eq!(meta.virtual_size, 100 << 20);
    let seen = seen.into_inner().unwrap();
    let total = 2 * (100u64 << 20);
    assert!(seen.iter().all(|&(_, t)| t == total), "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "progress goes forward"
    );
    assert_eq!(seen.last(), Some(&(total, total)));
    assert_eq!(exported_sha(&repo, &name, t.path()), want);

    // Again under the same name: the store says it has it; nothing is read.
    let e = b
        .import_golden_image(&repo, SUPPORT_IMAGE, &name, &|_, _| {})
        .unwrap_err();
    assert!(matches!(e, BundleError::ImageExists { .. }), "{e}");
    assert!(e.to_string().contains("already has an image"), "{e}");

    // The old SHA-1 bundle, as a folder, by the golden image's id: the same disk.
    let dir = t.path().join("old");
    fs::create_dir(&dir).unwrap();
    unpack(SUPPORT_OLD, &dir);
    let old = Bundle::open(&dir).unwrap();
    old.import_golden_image(
        &repo,
        "b5f1d060-41a1-4002-9a8e-a0143cf34dac",
        "old",
        &|_, _| {},
    )
    .unwrap();
    assert_eq!(exported_sha(&repo, "old", t.path()), want);

    // Staging is left empty.
    assert_eq!(fs::read_dir(t.path().join("repo/tmp")).unwrap().count(), 0);

    // A bundle written from a raw disk carries it in HPE's payload form.
    let raw = t.path().join("disk.raw");
    fs::write(&raw, &disk).unwrap();
    let out = t.path().join("from-raw.zip");
    Bundle::write(
        &out,
        b.artifacts(),
        b.manifest(),
        &[Payload {
            golden_image: SUPPORT_IMAGE.into(),
            source: PayloadSource::RawDisk(raw),
        }],
    )
    .unwrap();
    let w = Bundle::open(&out).unwrap();
    w.import_golden_image(&repo, SUPPORT_IMAGE, "from-raw", &|_, _| {})
        .unwrap();
    assert_eq!(exported_sha(&repo, "from-raw", t.path()), want);
}

// ---- hostile bundles ----

#[test]
fn a_tampered_file_is_refused_naming_it_and_both_checksums() {
    // In a folder.
    let t = tmp();
    unpack(FOUNDATION, t.path());
    let f = first_file(t.path(), "_planscript.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&f).unwrap()).unwrap();
    v["content"] = "!rm -rf /".into();
    fs::write(&f, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = open_err(t.path());
    let msg = e.to_string();
    let fname = f.file_name().unwrap().to_str().unwrap();
    assert!(matches!(e, BundleError::Mismatch { .. }), "{msg}");
    assert!(
        msg.contains(fname) && msg.contains("expects") && msg.contains("has"),
        "{msg}"
    );

    // In a zip: one byte of a build plan changed, the checksum file left as it was.
    let mut files = fixture_entries(SUPPORT_OLD);
    let (name, bytes) = files
        .iter_mut()
        .find(|(n, _)| n.ends_with("_buildplan.json"))
        .unwrap();
    let name = name.clone();
    let at = bytes.windows(4).position(|w| w == b"1.0 ").unwrap();
    bytes[at] = b'2';
    let z = t.path().join("tampered.zip");
    fs::write(&z, make_zip(&files)).unwrap();
    let e = open_err(&z);
    assert!(
        matches!(&e, BundleError::Mismatch { name: n, algorithm: "SHA-1", .. } if *n == name),
        "{e}"
    );
}

#[test]
fn a_listed_file_that_is_missing_is_refused() {
    let t = tmp();
    unpack(FOUNDATION, t.path());
    let f = first_file(t.path(), "_buildplan.json");
    fs::remove_file(&f).unwrap();
    let e = open_err(t.path());
    let fname = f.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        matches!(&e, BundleError::Missing { name, .. } if *name == fname),
        "{e}"
    );
    assert!(e.to_string().contains("SHA256SUM.sha256sum"), "{e}");
}

#[test]
fn an_artifact_not_in_the_checksum_file_is_refused_and_a_stray_file_only_warned() {
    let t = tmp();
    unpack(FOUNDATION, t.path());
    fs::write(t.path().join("README.txt"), "hello").unwrap();
    let b = Bundle::open(t.path()).unwrap();
    assert!(
        b.warnings().iter().any(|w| w.contains("README.txt")),
        "{:?}",
        b.warnings()
    );

    let f = first_file(t.path(), "_planscript.json");
    fs::copy(&f, t.path().join("extra_planscript.json")).unwrap();
    let e = open_err(t.path());
    assert!(
        matches!(&e, BundleError::Unlisted { name, .. } if name == "extra_planscript.json"),
        "{e}"
    );
}

#[test]
fn path_like_entry_names_are_refused() {
    let t = tmp();
    for bad in [
        "../evil.json",
        "/etc/cron.d/x",
        "sub/x_planscript.json",
        "a\\b",
    ] {
        let mut files = fixture_entries(FOUNDATION);
        files.push((bad.to_string(), b"{}".to_vec()));
        let z = t.path().join("bad.zip");
        fs::write(&z, make_zip(&files)).unwrap();
        let e = open_err(&z);
        assert!(
            matches!(&e, BundleError::UnsafeName { name, .. } if name == bad),
            "{bad}: {e}"
        );
        fs::remove_file(&z).unwrap();
    }
    // A checksum line naming a path is refused too (a folder bundle never opens it).
    unpack(FOUNDATION, t.path());
    let sums = t.path().join("SHA256SUM.sha256sum");
    let mut text = fs::read_to_string(&sums).unwrap();
    text.push_str(&format!("../../etc/passwd\t{}\n", "0".repeat(64)));
    fs::write(&sums, text).unwrap();
    let e = open_err(t.path());
    assert!(matches!(e, BundleError::UnsafeName { .. }), "{e}");
}

#[test]
fn an_entry_unpacking_to_more_than_it_declares_is_refused_as_a_zip_bomb() {
    let t = tmp();
    let mut files = fixture_entries(FOUNDATION);
    let name = files
        .iter()
        .find(|(n, _)| n.ends_with("_planscript.json"))
        .unwrap()
        .0
        .clone();
    // 64 MiB of spaces: valid JSON padding, a few dozen KiB deflated, declared as 1000 bytes.
    let bomb = files.iter_mut().find(|(n, _)| *n == name).unwrap();
    bomb.1.extend(std::iter::repeat_n(b' ', 64 << 20));
    let mut z = make_zip(&files);
    assert!(z.len() < 1 << 20);
    patch_declared_size(&mut z, &name, 1000);
    let p = t.path().join("bomb.zip");
    fs::write(&p, &z).unwrap();
    let e = open_err(&p);
    assert!(
        matches!(&e, BundleError::SizeMismatch { name: n, .. } if *n == name),
        "{e}"
    );
    assert!(e.to_string().contains("zip bomb"), "{e}");

    // Declared honestly, a JSON artifact over the limit is refused before it is read.
    let mut z = make_zip(&files);
    patch_declared_size(&mut z, &name, (64 << 20) + 2000);
    fs::write(&p, &z).unwrap();
    let e = open_err(&p);
    assert!(matches!(e, BundleError::TooLarge { .. }), "{e}");
}

#[test]
fn duplicate_zip_entries_are_refused() {
    let t = tmp();
    let mut files = fixture_entries(FOUNDATION);
    files.push(("MANIFEST.MX".into(), b"Artifact Name:evil".to_vec()));
    let mut z = make_zip(&files);
    // Rename MANIFEST.MX to MANIFEST.MF in both headers: the zip now holds the name twice.
    let mut n = 0;
    for i in 0..z.len() - 11 {
        if &z[i..i + 11] == b"MANIFEST.MX" {
            z[i + 10] = b'F';
            n += 1;
        }
    }
    assert_eq!(n, 2);
    let p = t.path().join("dup.zip");
    fs::write(&p, &z).unwrap();
    let e = open_err(&p);
    assert!(
        matches!(&e, BundleError::Duplicate { name } if name == "MANIFEST.MF"),
        "{e}"
    );
}

#[test]
fn duplicate_ids_are_refused_with_every_problem_listed() {
    let t = tmp();
    unpack(DEVELOPER, t.path());
    let f = first_file(t.path(), "_planscript.json");
    fs::copy(
        &f,
        t.path()
            .join("00000000-0000-0000-0000-000000000000_planscript.json"),
    )
    .unwrap();
    resum(t.path());
    let e = open_err(t.path());
    let msg = e.to_string();
    assert!(msg.contains("2 problems"), "{msg}");
    assert!(msg.contains("id: the same id as plan script"), "{msg}");
    assert!(msg.contains("name: the same name as plan script"), "{msg}");
}

#[test]
fn broken_json_is_refused_naming_the_file() {
    let t = tmp();
    unpack(SUPPORT, t.path());
    let f = first_file(t.path(), "_buildplan.json");
    let b = fs::read(&f).unwrap();
    fs::write(&f, &b[..b.len() / 2]).unwrap();
    resum(t.path());
    let e = open_err(t.path());
    let fname = f.file_name().unwrap().to_str().unwrap();
    assert!(matches!(e, BundleError::Json { .. }), "{e}");
    assert!(
        e.to_string().contains(fname) && e.to_string().contains("build plan"),
        "{e}"
    );

    // Valid JSON of the wrong kind says so.
    fs::write(
        &f,
        fs::read(first_file(t.path(), "_planscript.json")).unwrap(),
    )
    .unwrap();
    resum(t.path());
    let e = open_err(t.path());
    assert!(matches!(e, BundleError::WrongType { .. }), "{e}");
}

#[test]
fn a_deployment_plan_naming_a_missing_build_plan_is_refused() {
    let t = tmp();
    unpack(SUPPORT, t.path());
    let f = t
        .path()
        .join("c792c921-7959-4ed7-9ad7-e309d1be3f67_deploymentplan.json");
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&f).unwrap()).unwrap();
    v["oeBuildPlanURI"] = "no such build plan".into();
    fs::write(&f, serde_json::to_vec(&v).unwrap()).unwrap();
    resum(t.path());
    let e = open_err(t.path());
    let msg = e.to_string();
    assert!(msg.contains("1 problem"), "{msg}");
    assert!(
        msg.contains("deployment plan \"HPE - Support 1.0 - simple deployment test-2017-11-29\"")
            && msg.contains("oeBuildPlanURI")
            && msg.contains("\"no such build plan\""),
        "{msg}"
    );
}

#[test]
fn bundles_missing_their_checksums_or_manifest_or_not_zips_are_refused() {
    let t = tmp();
    unpack(FOUNDATION, t.path());
    fs::remove_file(t.path().join("MANIFEST.MF")).unwrap();
    resum(t.path());
    assert!(matches!(open_err(t.path()), BundleError::NoManifest { .. }));
    fs::remove_file(t.path().join("SHA256SUM.sha256sum")).unwrap();
    // A folder with neither is a set of artifacts written by hand: read, unverified, and
    // said so; a zip without checksums is refused.
    let b = Bundle::open(t.path()).unwrap();
    assert!(
        b.warnings().iter().any(|w| w.contains("not verified")),
        "{:?}",
        b.warnings()
    );
    let z = t.path().join("nosums.zip");
    {
        let mut w = zip::ZipWriter::new(fs::File::create(&z).unwrap());
        w.start_file("MANIFEST.MF", SimpleFileOptions::default())
            .unwrap();
        w.write_all(b"Artifact Name:x").unwrap();
        w.finish().unwrap();
    }
    assert!(matches!(open_err(&z), BundleError::NoChecksums { .. }));
    let p = t.path().join("junk.zip");
    fs::write(&p, b"this is not a zip file").unwrap();
    let e = open_err(&p);
    assert!(matches!(e, BundleError::NotZip { .. }), "{e}");
    // A symlink in a folder bundle is never followed.
    let d = t.path().join("links");
    fs::create_dir(&d).unwrap();
    unpack(FOUNDATION, &d);
    std::os::unix::fs::symlink("/etc/passwd", d.join("x_planscript.json")).unwrap();
    let e = open_err(&d);
    assert!(matches!(e, BundleError::Unsupported { .. }), "{e}");
}

#[test]
fn a_bad_payload_is_refused_at_import_and_nothing_is_left_behind() {
    let t = tmp();
    let repo = Repository::open(t.path().join("repo"), RepoOptions::default()).unwrap();
    let disk = vec![7u8; 1 << 20];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not a zip", b"plain bytes".to_vec(), "not a zip"),
        (
            "two files",
            make_zip(&[("a".into(), disk.clone()), ("b".into(), disk.clone())]),
            "holds 2 files",
        ),
        (
            "odd size",
            make_zip(&[("a".into(), vec![1u8; 1000])]),
            "512-byte",
        ),
        (
            "bomb",
            {
                let mut z = make_zip(&[("disk".into(), vec![0u8; 4 << 20])]);
                patch_declared_size(&mut z, "disk", 1 << 20);
                z
            },
            "zip bomb",
        ),
    ];
    for (what, payload, want) in cases {
        let dir = t.path().join(what.replace(' ', "-"));
        fs::create_dir(&dir).unwrap();
        unpack(SUPPORT, &dir);
        fs::write(dir.join(SUPPORT_IMAGE), payload).unwrap();
        resum(&dir);
        let b = Bundle::open(&dir).unwrap();
        let e = b
            .import_golden_image(&repo, SUPPORT_IMAGE, "x", &|_, _| {})
            .unwrap_err();
        assert!(e.to_string().contains(want), "{what}: {e}");
        assert!(repo.list_images().unwrap().is_empty(), "{what}");
        assert_eq!(
            fs::read_dir(t.path().join("repo/tmp")).unwrap().count(),
            0,
            "{what}"
        );
    }
}

#[test]
fn a_checksum_file_listing_itself_is_accepted_as_old_bundles_do() {
    let t = tmp();
    unpack(FOUNDATION, t.path());
    let sums = t.path().join("SHA256SUM.sha256sum");
    let mut text = fs::read_to_string(&sums).unwrap();
    text.push_str(&format!("SHA256SUM.sha256sum\t{}", "0".repeat(64)));
    fs::write(&sums, text).unwrap();
    let b = Bundle::open(t.path()).unwrap();
    assert!(b.warnings().is_empty(), "{:?}", b.warnings());
}

#[test]
fn damaged_compressed_data_is_refused_naming_the_entry() {
    let t = tmp();
    let files = fixture_entries(FOUNDATION);
    let name = files
        .iter()
        .find(|(n, _)| n.ends_with("_planscript.json"))
        .unwrap()
        .0
        .clone();
    let mut z = make_zip(&files);
    // The entry's data starts after its local header (30 bytes, the name, the extra field).
    let at = z
        .windows(4)
        .enumerate()
        .position(|(i, w)| {
            w == b"PK\x03\x04" && z.get(i + 30..i + 30 + name.len()) == Some(name.as_bytes())
        })
        .unwrap();
    let extra = u16::from_le_bytes([z[at + 28], z[at + 29]]) as usize;
    let data = at + 30 + name.len() + extra;
    for b in &mut z[data + 40..data + 48] {
        *b ^= 0x55;
    }
    let p = t.path().join("damaged.zip");
    fs::write(&p, &z).unwrap();
    let e = open_err(&p);
    assert!(
        matches!(&e, BundleError::Damaged { name: n, .. } | BundleError::SizeMismatch { name: n, .. } if *n == name),
        "{e}"
    );
}
