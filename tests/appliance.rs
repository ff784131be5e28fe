//! The appliance's jobs (src/appliance) on a real repository and catalog: golden images up
//! and down, HPE's bundles uploaded and extracted (and refused when tampered with, leaving
//! nothing), a deployment through the catalog recorded and exported, a failed upload
//! leaving nothing, recovery after a crash.

use std::fs;
use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};

use strata::appliance::bundles::{extract_bundle, upload_bundle};
use strata::appliance::deploy::{deploy_os_volume, DeployRequest};
use strata::appliance::golden_images::{download_golden_image, upload_golden_image};
use strata::appliance::{no_progress, recover};
use strata::catalog::Catalog;
use strata::fs::worker::client::WorkerOptions;
use strata::plan::artifacts::ArtifactKind;
use strata::plan::bundle::Bundle;
use strata::store::{RepoOptions, Repository};

const SUPPORT: &str = "HPE-Support-Artifacts-2017-11-29-v4.0";
const ALL: [&str; 5] = [
    "HPE-Foundation-Artifacts-2018-09-11-v4.0",
    "HPE-ImageStreamer-Developer-2017-08-28-v4.1",
    "HPE-RHEL8-EFI-2020-01-27-v6.40",
    "HPE-Support-Artifacts-2017-03-24",
    SUPPORT,
];
const SIMPLE_PLAN: &str = "HPE - Support 1.0 - simple deployment test-2017-11-29";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hpe-artifacts")
        .join(format!("{name}.zip"))
}

struct App {
    _dir: tempfile::TempDir,
    repo: Repository,
    catalog: Catalog,
}

fn app() -> App {
    let d = tempfile::tempdir().unwrap();
    let repo = Repository::open(d.path().join("repo"), RepoOptions::default()).unwrap();
    let catalog = Catalog::open(repo.root()).unwrap();
    App {
        _dir: d,
        repo,
        catalog,
    }
}

impl App {
    fn count(&self, kind: ArtifactKind) -> usize {
        self.catalog
            .list_artifacts(kind, &Default::default())
            .unwrap()
            .members
            .len()
    }
    fn counts(&self) -> [usize; 4] {
        ArtifactKind::ALL.map(|k| self.count(k))
    }
    fn tmp_is_empty(&self) -> bool {
        fs::read_dir(self.repo.root().join("tmp")).unwrap().count() == 0
    }
}

/// A 6 MiB disk: data, a hole, data near the end.
fn disk() -> Vec<u8> {
    let mut v = vec![0u8; 6 << 20];
    for (i, b) in v[..300_000].iter_mut().enumerate() {
        *b = (i * 7 % 253) as u8;
    }
    v[(6 << 20) - 100..].fill(0x5a);
    v
}

fn zip_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    z.start_file(name, zip::write::SimpleFileOptions::default())
        .unwrap();
    z.write_all(data).unwrap();
    z.finish().unwrap().into_inner()
}

fn unzip_one(z: &[u8]) -> Vec<u8> {
    let mut a = zip::ZipArchive::new(Cursor::new(z)).unwrap();
    assert_eq!(a.len(), 1, "a download holds one disk");
    let mut v = Vec::new();
    a.by_index(0).unwrap().read_to_end(&mut v).unwrap();
    v
}

#[test]
fn a_golden_image_uploaded_as_zip_or_raw_downloads_byte_identical() {
    let a = app();
    let d = disk();
    let z = upload_golden_image(
        &a.catalog,
        &a.repo,
        "zipped",
        "uploaded as a zip",
        &zip_of("disk.raw", &d)[..],
        &no_progress,
    )
    .unwrap();
    let r = upload_golden_image(&a.catalog, &a.repo, "raw", "", &d[..], &no_progress).unwrap();
    assert_ne!(z["id"], r["id"]);
    for key in ["zipped", r["uri"].as_str().unwrap()] {
        let mut out = Vec::new();
        download_golden_image(&a.catalog, &a.repo, key, &mut out, &no_progress).unwrap();
        assert_eq!(unzip_one(&out), d, "{key}");
    }
    assert_eq!(a.count(ArtifactKind::GoldenImage), 2);
    assert!(a.tmp_is_empty());
}

/// A reader giving `data` a few odd-sized bytes at a time, then failing if `fail_at` is
/// reached (an HTTP body arrives in frames, and may break off). Halfway, it notes what
/// the repository's `tmp/` holds (each entry's name and the bytes of the files in it).
struct Trickle {
    data: Vec<u8>,
    pos: usize,
    fail_at: Option<usize>,
    tmp: PathBuf,
    halfway: Vec<(String, u64)>,
}

impl Read for Trickle {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.fail_at.is_some_and(|f| self.pos >= f) {
            return Err(std::io::Error::other("the client went away"));
        }
        if self.pos >= self.data.len() / 2 && self.halfway.is_empty() {
            for e in fs::read_dir(&self.tmp).unwrap() {
                let e = e.unwrap();
                let bytes = fs::read_dir(e.path())
                    .unwrap()
                    .map(|f| f.unwrap().metadata().unwrap().len())
                    .sum();
                self.halfway
                    .push((e.file_name().to_string_lossy().into_owned(), bytes));
            }
        }
        let n = buf
            .len()
            .min(self.data.len() - self.pos)
            .min(4093 + self.pos % 7);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn a_raw_upload_is_stored_as_it_arrives_and_one_that_breaks_off_leaves_nothing() {
    let a = app();
    let mut d = disk();
    // More than the image writer's 1 MiB buffer before halfway, and data after it too.
    d[1 << 20..5 << 19].fill(0x11);
    d[4 << 20..(4 << 20) + 1000].fill(0x33);
    let trickle = |fail_at| Trickle {
        data: d.clone(),
        pos: 0,
        fail_at,
        tmp: a.repo.root().join("tmp"),
        halfway: Vec::new(),
    };
    let mut t = trickle(None);
    let r = upload_golden_image(&a.catalog, &a.repo, "trickled", "", &mut t, &no_progress);
    let r = r.unwrap();
    assert_eq!(r["size"], d.len() as u64);
    // Halfway through the body, the image being staged already held the first half's
    // data, and nothing was spooled.
    assert_eq!(t.halfway.len(), 1, "{:?}", t.halfway);
    let (name, bytes) = &t.halfway[0];
    assert!(name.ends_with("-image"), "{name}");
    assert!(*bytes >= 1 << 20, "{bytes} bytes stored halfway");
    let mut out = Vec::new();
    download_golden_image(&a.catalog, &a.repo, "trickled", &mut out, &no_progress).unwrap();
    assert_eq!(unzip_one(&out), d);
    assert!(a.tmp_is_empty());
    let meta = &a.repo.list_images().unwrap()[0];
    assert!(
        meta.stored_bytes < 3 << 20,
        "the holes were stored: {meta:?}"
    );

    let mut t = trickle(Some(3 << 20));
    let e = upload_golden_image(&a.catalog, &a.repo, "cut", "", &mut t, &no_progress);
    let e = e.unwrap_err().to_string();
    assert!(e.contains("reading the upload"), "{e}");
    assert!(e.contains("the client went away"), "{e}");
    assert_eq!(a.count(ArtifactKind::GoldenImage), 1);
    assert_eq!(a.repo.list_images().unwrap().len(), 1);
    assert!(a.tmp_is_empty());
}

#[test]
fn a_failed_upload_leaves_no_row_and_no_image() {
    let a = app();
    let mut z = zip_of("disk.raw", &disk());
    let n = z.len();
    z.truncate(n / 2);
    let e = upload_golden_image(&a.catalog, &a.repo, "cut", "", &z[..], &no_progress).unwrap_err();
    assert!(!e.to_string().is_empty());
    // A disk that is not whole sectors.
    let e = upload_golden_image(
        &a.catalog,
        &a.repo,
        "odd",
        "",
        &[1u8; 1000][..],
        &no_progress,
    )
    .unwrap_err();
    assert!(!e.to_string().is_empty());
    assert_eq!(a.count(ArtifactKind::GoldenImage), 0);
    assert!(a.repo.list_images().unwrap().is_empty());
    assert!(a.tmp_is_empty());
}

#[test]
fn every_hpe_bundle_uploads_and_extracts() {
    for name in ALL {
        let a = app();
        let b = Bundle::open(fixture(name)).unwrap();
        let want = [
            b.artifacts().plan_scripts.len(),
            b.artifacts().build_plans.len(),
            b.artifacts().deployment_plans.len(),
            b.artifacts().golden_images.len(),
        ];
        let payloads = b.payloads().len();
        drop(b);
        let up = upload_bundle(
            &a.catalog,
            &a.repo,
            &format!("{name}.zip"),
            fs::File::open(fixture(name)).unwrap(),
            &no_progress,
        )
        .unwrap();
        let x = extract_bundle(
            &a.catalog,
            &a.repo,
            up["uri"].as_str().unwrap(),
            false,
            &no_progress,
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = [
            ArtifactKind::PlanScript,
            ArtifactKind::BuildPlan,
            ArtifactKind::DeploymentPlan,
            ArtifactKind::GoldenImage,
        ]
        .map(|k| a.count(k));
        assert_eq!(got, want, "{name}");
        assert_eq!(x.created.len(), want.iter().sum::<usize>(), "{name}");
        assert_eq!(a.repo.list_images().unwrap().len(), payloads, "{name}");
        assert!(a.tmp_is_empty(), "{name}");
    }
}

#[test]
fn extracting_again_is_refused_without_force_and_replaces_with_it() {
    let a = app();
    let up = upload_bundle(
        &a.catalog,
        &a.repo,
        "s.zip",
        fs::File::open(fixture(SUPPORT)).unwrap(),
        &no_progress,
    )
    .unwrap();
    let key = up["id"].as_str().unwrap();
    extract_bundle(&a.catalog, &a.repo, key, false, &no_progress).unwrap();
    let before = a.counts();
    let images = a.repo.list_images().unwrap().len();
    let e = extract_bundle(&a.catalog, &a.repo, key, false, &no_progress).unwrap_err();
    assert!(e.to_string().contains("forceImport"), "{e}");
    assert_eq!(a.counts(), before);
    let x = extract_bundle(&a.catalog, &a.repo, key, true, &no_progress).unwrap();
    assert!(x.created.is_empty());
    assert!(!x.replaced.is_empty());
    assert_eq!(a.counts(), before);
    assert_eq!(a.repo.list_images().unwrap().len(), images);
}

#[test]
fn a_tampered_bundle_is_refused_with_the_reason_and_leaves_nothing() {
    let a = app();
    // Change one artifact's bytes, keep its checksum line.
    let bytes = fs::read(fixture(SUPPORT)).unwrap();
    let mut src = zip::ZipArchive::new(Cursor::new(&bytes[..])).unwrap();
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let mut changed = String::new();
    for i in 0..src.len() {
        let mut f = src.by_index(i).unwrap();
        let n = f.name().to_string();
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        if changed.is_empty() && n.ends_with("_planscript.json") {
            v.extend_from_slice(b" ");
            changed = n.clone();
        }
        w.start_file(n, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(&v).unwrap();
    }
    let tampered = w.finish().unwrap().into_inner();
    let e = upload_bundle(&a.catalog, &a.repo, "t.zip", &tampered[..], &no_progress).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&changed) && msg.contains("checksum"), "{msg}");
    assert!(a.tmp_is_empty());
    let bundles = a.repo.root().join("bundles");
    assert!(!bundles.exists() || fs::read_dir(&bundles).unwrap().count() == 0);
    assert_eq!(a.counts(), [0; 4]);
}

#[test]
fn a_deployment_through_the_catalog_records_the_volume_and_exports_it() {
    let a = app();
    let up = upload_bundle(
        &a.catalog,
        &a.repo,
        "s.zip",
        fs::File::open(fixture(SUPPORT)).unwrap(),
        &no_progress,
    )
    .unwrap();
    extract_bundle(
        &a.catalog,
        &a.repo,
        up["id"].as_str().unwrap(),
        false,
        &no_progress,
    )
    .unwrap();
    let initiator = "iqn.2026-12.test:server-1";
    let mut values = strata::plan::attrs::DeploymentValues::new();
    values.set("ExampleString=hello from the catalog").unwrap();
    let d = deploy_os_volume(
        &a.catalog,
        &a.repo,
        DeployRequest {
            deployment_plan: SIMPLE_PLAN.into(),
            volume: "web-01".into(),
            initiator: Some(initiator.into()),
            values,
            worker: WorkerOptions {
                exe: env!("CARGO_BIN_EXE_strata").into(),
                ..WorkerOptions::default()
            },
            ..DeployRequest::default()
        },
        &no_progress,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.os_volume["name"], "web-01");
    let row = a.catalog.get_os_volume("web-01").unwrap();
    assert!(row["deploymentPlanUri"]
        .as_str()
        .unwrap()
        .starts_with("/rest/deployment-plans/"));
    let recs = a.catalog.deployment_records("web-01").unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["result"], "succeeded");
    assert_eq!(recs[0]["deployment_plan"], SIMPLE_PLAN);
    assert!(a.repo.volume_meta("web-01").is_ok());
    let ex = a.catalog.exports().unwrap();
    assert_eq!(ex.len(), 1);
    assert!(ex[0].allows(initiator));
    // The golden image is in use now.
    assert!(a
        .catalog
        .delete_artifact(
            ArtifactKind::GoldenImage,
            "HPE - Support 1.0 - UEFI Test Image - 2017-03-24"
        )
        .is_err());
}

#[test]
fn recovery_removes_images_no_row_names_and_fails_running_tasks() {
    let a = app();
    let d = disk();
    let raw = a.repo.root().join("../d.raw");
    fs::write(&raw, &d).unwrap();
    // As if killed between the store import and the row.
    a.repo
        .import_image(
            "gi-00000000-0000-4000-8000-000000000000",
            &raw,
            strata::store::SourceFormat::Raw,
            &|_, _| {},
        )
        .unwrap();
    upload_golden_image(&a.catalog, &a.repo, "kept", "", &d[..], &no_progress).unwrap();
    let r = recover(&a.catalog, &a.repo).unwrap();
    assert_eq!(
        r.orphan_images,
        vec!["gi-00000000-0000-4000-8000-000000000000".to_string()]
    );
    let left = a.repo.list_images().unwrap();
    assert_eq!(left.len(), 1);
    let mut out = Vec::new();
    download_golden_image(&a.catalog, &a.repo, "kept", &mut out, &no_progress).unwrap();
    assert_eq!(unzip_one(&out), d);
}

/// Support's bundle uploaded and extracted: every kind of artifact and one golden image
/// with its disk.
fn with_support(a: &App) {
    let up = upload_bundle(
        &a.catalog,
        &a.repo,
        "s.zip",
        fs::File::open(fixture(SUPPORT)).unwrap(),
        &no_progress,
    )
    .unwrap();
    extract_bundle(
        &a.catalog,
        &a.repo,
        up["id"].as_str().unwrap(),
        false,
        &no_progress,
    )
    .unwrap();
}

const GROUP: &str = "/rest/deployment-groups/local";
const SUPPORT_IMAGE: &str = "HPE - Support 1.0 - UEFI Test Image - 2017-03-24";

#[test]
fn a_backup_holds_every_artifact_and_disk_and_restores_them_all_or_nothing() {
    use strata::appliance::backups::{backup_file, create_backup, list_backups, restore_backup};
    let a = app();
    with_support(&a);
    let before = a.counts();
    let mut disk_before = Vec::new();
    download_golden_image(
        &a.catalog,
        &a.repo,
        SUPPORT_IMAGE,
        &mut disk_before,
        &no_progress,
    )
    .unwrap();
    let plans = a
        .catalog
        .list_artifacts(ArtifactKind::DeploymentPlan, &Default::default())
        .unwrap()
        .members;
    let backup = create_backup(&a.catalog, &a.repo, GROUP, &no_progress).unwrap();
    assert_eq!(backup["deploymentGroupURI"], GROUP);
    let (_, zip) = backup_file(&a.catalog, &a.repo, backup["uri"].as_str().unwrap()).unwrap();
    let b = Bundle::open(&zip).unwrap();
    let held = [
        b.artifacts().plan_scripts.len(),
        b.artifacts().build_plans.len(),
        b.artifacts().deployment_plans.len(),
        b.artifacts().golden_images.len(),
    ];
    assert_eq!(held, before, "the backup holds every artifact");
    assert_eq!(b.payloads().len(), 1, "and the golden image's disk");
    drop(b);

    // After the backup: the deployment plans and the image deleted (its disk with it), a
    // new script made.
    for p in &plans {
        a.catalog
            .delete_artifact(ArtifactKind::DeploymentPlan, p["uri"].as_str().unwrap())
            .unwrap();
    }
    strata::appliance::golden_images::delete_golden_image(&a.catalog, &a.repo, SUPPORT_IMAGE)
        .unwrap();
    assert!(a.repo.list_images().unwrap().is_empty());
    a.catalog
        .create_artifact(
            ArtifactKind::PlanScript,
            serde_json::json!({"name": "made later", "planType": "deploy", "content": "echo"}),
        )
        .unwrap();

    // A restore an OS volume blocks changes nothing: the new image it uses is not in the
    // backup. The backup's disk imported on the way goes again.
    let d = disk();
    upload_golden_image(&a.catalog, &a.repo, "in use", "", &d[..], &no_progress).unwrap();
    a.catalog
        .create_os_volume(strata::catalog::volumes::NewOsVolume {
            name: "server-1",
            store_volume: "server-1",
            golden_image: Some("in use"),
            ..Default::default()
        })
        .unwrap();
    let counts = a.counts();
    let e = restore_backup(
        &a.catalog,
        &a.repo,
        backup["id"].as_str().unwrap(),
        &no_progress,
    )
    .unwrap_err();
    assert!(e.to_string().contains("server-1"), "{e}");
    assert_eq!(a.counts(), counts);
    assert_eq!(a.repo.list_images().unwrap().len(), 1);
    assert!(a
        .catalog
        .get_artifact(ArtifactKind::PlanScript, "made later")
        .is_ok());

    // Without the volume the restore goes through: exactly the backup's artifacts, with
    // their ids, and the disk byte for byte; the image no row names is gone.
    a.catalog.delete_os_volume("server-1").unwrap();
    let r = restore_backup(
        &a.catalog,
        &a.repo,
        backup["id"].as_str().unwrap(),
        &no_progress,
    )
    .unwrap();
    assert_eq!(r.artifacts, before);
    assert_eq!(a.counts(), before);
    assert!(a
        .catalog
        .get_artifact(ArtifactKind::PlanScript, "made later")
        .is_err());
    for p in &plans {
        let back = a
            .catalog
            .get_artifact(ArtifactKind::DeploymentPlan, p["id"].as_str().unwrap())
            .unwrap();
        assert_eq!(back["name"], p["name"]);
        assert_eq!(back["goldenImageURI"], p["goldenImageURI"]);
    }
    let mut disk_after = Vec::new();
    download_golden_image(
        &a.catalog,
        &a.repo,
        SUPPORT_IMAGE,
        &mut disk_after,
        &no_progress,
    )
    .unwrap();
    assert!(
        unzip_one(&disk_after) == unzip_one(&disk_before),
        "the disk differs"
    );
    assert_eq!(a.repo.list_images().unwrap().len(), 1);
    assert!(a.tmp_is_empty());

    // A second backup replaces the first, file and row.
    let again = create_backup(&a.catalog, &a.repo, GROUP, &no_progress).unwrap();
    let page = list_backups(&a.catalog, &Default::default()).unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.members[0]["id"], again["id"]);
    assert!(!zip.exists(), "the first backup's zip is still there");
}

#[test]
fn bundles_are_rows_and_recovery_adopts_old_descriptions_and_drops_orphan_zips() {
    use strata::appliance::bundles::{bundle_file, delete_bundle, list_bundles};
    let a = app();
    let up = upload_bundle(
        &a.catalog,
        &a.repo,
        "s.zip",
        fs::File::open(fixture(SUPPORT)).unwrap(),
        &no_progress,
    )
    .unwrap();
    let id = up["id"].as_str().unwrap().to_owned();
    let (_, zip) = bundle_file(&a.catalog, &a.repo, &id).unwrap();
    let dir = zip.parent().unwrap().to_owned();
    // Nothing but the zip beside the row.
    let files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files, vec![zip.clone()]);
    // An older repository's layout: a description file and no row; and a zip no row or
    // description names (a crash before its row).
    let old_id = "00000000-0000-4000-8000-00000000000b";
    fs::copy(&zip, dir.join(format!("{old_id}.zip"))).unwrap();
    let mut old = up.clone();
    old["id"] = old_id.into();
    old["uri"] = format!("/rest/artifact-bundles/{old_id}").into();
    old["name"] = "from before rows".into();
    fs::write(dir.join(format!("{old_id}.json")), old.to_string()).unwrap();
    let orphan = dir.join("00000000-0000-4000-8000-00000000000c.zip");
    fs::copy(&zip, &orphan).unwrap();
    let r = recover(&a.catalog, &a.repo).unwrap();
    assert_eq!(r.orphan_bundles, vec![orphan.display().to_string()]);
    assert!(!orphan.exists());
    assert!(!dir.join(format!("{old_id}.json")).exists());
    let page = list_bundles(&a.catalog, &Default::default()).unwrap();
    assert_eq!(page.total, 2);
    assert!(bundle_file(&a.catalog, &a.repo, "from before rows").is_ok());
    delete_bundle(&a.catalog, &a.repo, &id).unwrap();
    assert!(!zip.exists());
    assert!(bundle_file(&a.catalog, &a.repo, &id).is_err());
}
