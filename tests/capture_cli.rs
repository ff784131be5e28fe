//! `strata capture` and `strata shell` end to end with HPE's Developer and Foundation
//! bundles: a deployed volume, changed after its deployment, is captured through HPE's own
//! capture build plan and deployed again with the same files; the image stores about the
//! used blocks; the source volume's bytes never change, also while `strata serve` holds it
//! open and a client writes to it; a failing capture leaves no image; and `strata shell`
//! works on a throwaway copy of a volume unless told `--write`.

mod common;

use std::path::Path;
use std::process::Command;

use common::hpe::*;
use common::*;
use sha2::{Digest, Sha256};

const DEV_DEPLOY: &str = "HPE - Developer 1.0 - Deployment Test (UEFI) - 2017-03-24";
const DEV_CAPTURE: &str = "HPE - Developer 1.0 - example UEFI capture - 2017-03-24";
const DEV_IMAGE: &str = "HPE_-_Developer_1.0_-_UEFI_Test_Image_-_2017-03-24";
const AS_IS: &str = "HPE - Foundation 1.0 - capture OS Volume as is-2017-03-24";
const CLIENT: &str = "iqn.2008-11.org.linux-kvm";

fn sha256(path: &Path) -> String {
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn volume_sha(repo: &Repo, volume: &str) -> String {
    let p = export(repo, volume);
    let s = sha256(&p);
    std::fs::remove_file(p).unwrap();
    s
}

/// The ESP of `disk` has no fsck.fat complaint HPE's golden image did not already have.
fn fsck_fat(repo: &Repo, disk: &Path) {
    fsck_fat_like(repo, DEV_IMAGE, disk, 1);
}

/// Bytes nobody could compress or guess (xorshift), so that storing them costs their size.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Deploys the Developer bundle's UEFI test plan as `volume`.
fn deploy_developer(repo: &Repo, volume: &str) {
    repo.ok(&[
        "deploy",
        volume,
        "--artifacts",
        &bundle(DEVELOPER),
        "--plan",
        DEV_DEPLOY,
        "--attr",
        "ExampleString1=deployed before the capture",
        "--attr",
        "ExampleNumber1=7",
        "-q",
    ]);
}

fn put(repo: &Repo, volume: &str, data: &[u8], guest_path: &str) {
    let local = repo.path("put.tmp");
    std::fs::write(&local, data).unwrap();
    repo.ok(&["fs", "put", volume, local.to_str().unwrap(), guest_path]);
    std::fs::remove_file(local).unwrap();
}

/// Bytes the filesystem on `device` marks as used, per `strata fs list --json`.
fn used_bytes(repo: &Repo, volume: &str, device: &str) -> u64 {
    let v: serde_json::Value =
        serde_json::from_str(&repo.ok(&["fs", "list", volume, "--json"])).unwrap();
    let fs = v["filesystems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["device"] == device)
        .unwrap_or_else(|| panic!("no filesystem on {device}: {v}"));
    let u = &fs["usage"];
    (u["blocks"].as_u64().unwrap() - u["bfree"].as_u64().unwrap()) * u["frsize"].as_u64().unwrap()
}

/// Bytes a directory's files take on the host's disk (`du`, not their apparent size).
fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

fn image_names(repo: &Repo) -> Vec<String> {
    repo.ok(&["image", "ls"])
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// A folder of artifacts with one plan script (`script`, of `kind` deploy or capture) in a
/// build plan of the same kind; for deploy, a deployment plan "redeploy" on golden image
/// `image` (its description only: the store already holds the image).
fn folder(repo: &Repo, dir: &str, kind: &str, script: &str, image: &str) -> String {
    let dir = repo.path(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ps = serde_json::json!({
        "type": "PlanScript", "id": "11111111-1111-1111-1111-111111111111",
        "name": "test script", "planType": kind, "content": script,
        "customAttributes": null, "description": ""
    });
    let bp = serde_json::json!({
        "type": "OeBuildPlan", "buildPlanid": "22222222-2222-2222-2222-222222222222",
        "name": "test build plan", "oeBuildPlanType": kind, "customAttributes": [],
        "buildStep": [{"serialNumber": "1", "planScriptName": "test script",
                       "planScriptUri": "/rest/plan-scripts/11111111-1111-1111-1111-111111111111",
                       "parameters": null}]
    });
    let mut files = vec![
        ("11111111-1111-1111-1111-111111111111_planscript.json", ps),
        ("22222222-2222-2222-2222-222222222222_buildplan.json", bp),
    ];
    if kind == "deploy" {
        files.push((
            "33333333-3333-3333-3333-333333333333_deploymentplan.json",
            serde_json::json!({
                "type": "OEDeploymentPlan", "id": "33333333-3333-3333-3333-333333333333",
                "name": "redeploy", "oeBuildPlanURI": "test build plan",
                "goldenImageURI": image, "customAttributes": []
            }),
        ));
        files.push((
            "44444444-4444-4444-4444-444444444444_goldenimage.json",
            serde_json::json!({
                "type": "GoldenImage", "id": "44444444-4444-4444-4444-444444444444",
                "name": image, "description": "captured by strata"
            }),
        ));
    }
    for (f, v) in files {
        std::fs::write(dir.join(f), serde_json::to_vec(&v).unwrap()).unwrap();
    }
    dir.display().to_string()
}

#[test]
fn a_captured_volume_deploys_back_with_its_files_and_the_image_stores_about_the_used_blocks() {
    let repo = Repo::new();
    deploy_developer(&repo, "src");
    // Changes after the deployment: a kept file of noise, and a larger one deleted again,
    // which leaves its noise in the ESP's free clusters (free space the image must not
    // store).
    let kept = noise(6 << 20, 7);
    put(
        &repo,
        "src",
        &noise(24 << 20, 11),
        "/dev/sda1:/EFI/junk.bin",
    );
    repo.ok(&["fs", "rm", "src", "/dev/sda1:/EFI/junk.bin"]);
    put(&repo, "src", &kept, "/dev/sda1:/EFI/extra.bin");
    put(
        &repo,
        "src",
        b"added after deployment\n",
        "/dev/sda1:/EFI/extra.txt",
    );
    let used = used_bytes(&repo, "src", "/dev/sda1");
    let before = volume_sha(&repo, "src");

    let o = repo.run(&[
        "capture",
        "src",
        "--artifacts",
        &bundle(DEVELOPER),
        "--plan",
        DEV_CAPTURE,
        "--name",
        "dev-captured",
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    // HPE's generalization script ran, its output echoed; the summary names the image.
    assert!(out.contains("Generalize message.txt content:"), "{out}");
    assert!(out.contains("/dev/sda1: vfat"), "{out}");
    assert!(
        err.contains("captured volume \"src\" as image \"dev-captured\""),
        "{err}"
    );

    // The source is untouched.
    assert_eq!(
        volume_sha(&repo, "src"),
        before,
        "the capture changed the volume"
    );

    // Stored: about the used blocks (6 MiB of noise and the ESP's metadata), not the
    // 100 MiB disk, nor the 24 MiB of noise in its free space.
    let info: serde_json::Value =
        serde_json::from_str(&repo.ok(&["image", "info", "dev-captured", "--json"])).unwrap();
    let virtual_size = info["virtual_size"].as_u64().unwrap();
    let stored = du(&repo.root.join("images/dev-captured"));
    assert_eq!(virtual_size, 100 << 20);
    assert!(
        stored >= kept.len() as u64 && stored <= used + (1 << 20),
        "stored {stored} bytes for {used} used"
    );
    assert!(
        stored < virtual_size / 10,
        "stored {stored} of {virtual_size}"
    );

    // The record lies beside the image.
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo.root.join("images/dev-captured/capture.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["kind"], "capture");
    assert_eq!(rec["result"], "succeeded");
    assert_eq!(rec["build_plan"], DEV_CAPTURE);
    assert_eq!(rec["volume"], "src");

    // Deployed again, from a folder of artifacts naming the captured image.
    let dir = folder(
        &repo,
        "redeploy",
        "deploy",
        "mount /dev/sda1 /\ncat /EFI/extra.txt\n",
        "dev-captured",
    );
    let out = repo.ok(&["deploy", "dst", "--artifacts", &dir, "--plan", "redeploy"]);
    assert!(out.contains("added after deployment"), "{out}");
    let disk = export(&repo, "dst");
    let msg = fat_text(&disk, 1, "/EFI/BOOT/message.txt");
    assert!(msg.contains("has been generalized!"), "{msg}");
    assert!(!msg.contains("deployed before the capture"), "{msg}");
    assert_eq!(
        fat_text(&disk, 1, "/EFI/extra.txt"),
        "added after deployment\n"
    );
    assert!(
        fat_read(&disk, 1, "/EFI/extra.bin") == kept,
        "extra.bin differs"
    );
    // Every other file of the source, byte for byte (the loader, its config).
    let src_disk = export(&repo, "src");
    for f in ["/EFI/BOOT/bootx64.efi", "/EFI/BOOT/bootx64.conf"] {
        let (a, b) = (fat_read(&src_disk, 1, f), fat_read(&disk, 1, f));
        assert!(a == b, "{f} differs after the round trip");
    }
    fsck_fat(&repo, &disk);
    assert!(repo.staging_is_empty());
}

#[test]
fn a_volume_served_and_written_over_iscsi_is_captured_as_flushed_and_left_alone() {
    if !have("qemu-io") {
        eprintln!("note: qemu-io missing (tools/install-deps installs qemu-utils); skipped");
        return;
    }
    let repo = Repo::new();
    deploy_developer(&repo, "live");
    // Where message.txt's data lies on the disk: a client will overwrite it in place.
    let raw = std::fs::read(export(&repo, "live")).unwrap();
    let needle = b"UEFI loader message.txt has been personalized!";
    let hits: Vec<usize> = raw
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "message.txt's data found {} times",
        hits.len()
    );
    // The file starts one byte before the text (an empty first line), at a sector start.
    let at = hits[0] as u64 - 1;
    assert_eq!(at % 512, 0);
    repo.ok(&["export", "live", "--initiator", CLIENT]);
    let srv = repo.serve(&[]);
    let url = srv.url("iqn.2026-11.org.strata:live");
    // The server has the volume open read-write; the client writes and flushes.
    ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        &format!("write -P 0x41 {at} 512"),
        "-c",
        "flush",
        &url,
    ]));
    let served = |name: &str| {
        let p = repo.path(name);
        ok(Command::new("qemu-img").args(["convert", "-O", "raw", &url, p.to_str().unwrap()]));
        sha256(&p)
    };
    let before = served("served-before.raw");
    // The server keeps the volume open for writing: nobody else may open it so.
    let e = repo.fails(&["fs", "mkdir", "live", "/dev/sda1:/EFI/other-writer"]);
    assert!(e.contains("in use") || e.contains("locked"), "{e}");
    repo.ok(&[
        "capture",
        "live",
        "--artifacts",
        &bundle(FOUNDATION),
        "--plan",
        AS_IS,
        "--name",
        "live-image",
        "-q",
    ]);
    // The volume, as its server serves it, is what it was; the server is still up.
    assert_eq!(served("served-after.raw"), before);
    // The image has the client's flushed write, and is the volume but for free space.
    let img = export_image(&repo, "live-image");
    let msg = fat_read(&img, 1, "/EFI/BOOT/message.txt");
    assert!(!msg.is_empty() && msg.iter().all(|&b| b == b'A'), "{msg:?}");
    // Writes after the capture do not reach the image.
    ok(Command::new("qemu-io").args([
        "-f",
        "raw",
        "-c",
        &format!("write -P 0x42 {at} 512"),
        "-c",
        "flush",
        &url,
    ]));
    std::fs::remove_file(&img).unwrap();
    let img = export_image(&repo, "live-image");
    assert!(fat_read(&img, 1, "/EFI/BOOT/message.txt")
        .iter()
        .all(|&b| b == b'A'));
    fsck_fat(&repo, &img);
    drop(srv);
}

#[test]
fn a_failing_capture_plan_leaves_no_image_and_the_name_free() {
    let repo = Repo::new();
    deploy_developer(&repo, "src");
    let before = volume_sha(&repo, "src");
    let dir = folder(
        &repo,
        "broken",
        "capture",
        "mount /dev/sda1 /\nwrite /EFI/BOOT/message.txt \"half generalized\"\nNo_Such_Command\n",
        "",
    );
    let e = repo.fails(&[
        "capture",
        "src",
        "--artifacts",
        &dir,
        "--plan",
        "test build plan",
        "--name",
        "gold",
        "-q",
    ]);
    assert!(e.contains("No_Such_Command: unknown command"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    assert!(e.contains("no image \"gold\" was made"), "{e}");
    assert_eq!(image_names(&repo), vec![DEV_IMAGE.to_string()]);
    assert!(!repo.root.join("images/gold").exists());
    assert_eq!(volume_sha(&repo, "src"), before);
    assert!(repo.staging_is_empty());

    // Refused before any work: a deploy build plan, a missing volume, a name taken.
    let e = repo.fails(&[
        "capture",
        "src",
        "--artifacts",
        &bundle(DEVELOPER),
        "--plan",
        "HPE - Developer 1.0 - example UEFI deploy - 2017-03-24",
        "--name",
        "gold",
    ]);
    assert!(e.contains("not a capture one"), "{e}");
    let e = repo.fails(&[
        "capture",
        "nosuch",
        "--artifacts",
        &bundle(DEVELOPER),
        "--plan",
        DEV_CAPTURE,
        "--name",
        "gold",
    ]);
    assert!(e.contains("no volume \"nosuch\""), "{e}");
    let e = repo.fails(&[
        "capture",
        "src",
        "--artifacts",
        &bundle(DEVELOPER),
        "--plan",
        DEV_DEPLOY,
        "--name",
        "gold",
    ]);
    assert!(e.contains("a deployment plan but no build plan"), "{e}");
    assert!(e.contains(DEV_CAPTURE), "lists the capture plans: {e}");

    // The name is free: the same capture, fixed, makes it.
    repo.ok(&[
        "capture",
        "src",
        "--artifacts",
        &bundle(DEVELOPER),
        "--plan",
        DEV_CAPTURE,
        "--name",
        "gold",
        "-q",
    ]);
    let e = repo.fails(&[
        "capture",
        "src",
        "--artifacts",
        &bundle(DEVELOPER),
        "--plan",
        DEV_CAPTURE,
        "--name",
        "gold",
    ]);
    assert!(e.contains("already exists"), "{e}");
    assert_eq!(volume_sha(&repo, "src"), before);
    assert!(repo.staging_is_empty());
}

#[test]
fn shell_works_on_a_throwaway_copy_of_a_volume_unless_told_to_write() {
    let repo = Repo::new();
    deploy_developer(&repo, "vol");
    let before = volume_sha(&repo, "vol");
    let script = repo.path("edit.gfs");
    std::fs::write(
        &script,
        "mount /dev/sda1 /\nwrite /EFI/shell.txt \"@What:from the shell@\"\ncat /EFI/shell.txt\nrm /EFI/BOOT/message.txt\nls /EFI/BOOT\n",
    )
    .unwrap();
    let o = repo.run(&["shell", "vol", "-f", script.to_str().unwrap()]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    assert!(out.contains("from the shell"), "{out}");
    assert!(
        !out.contains("message.txt"),
        "the copy saw its own rm: {out}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    assert_eq!(
        volume_sha(&repo, "vol"),
        before,
        "the throwaway run changed the volume"
    );
    assert!(repo.staging_is_empty());

    let out = repo.ok(&[
        "shell",
        "vol",
        "-f",
        script.to_str().unwrap(),
        "--attr",
        "What=kept",
        "--write",
    ]);
    assert!(out.contains("kept"), "{out}");
    let disk = export(&repo, "vol");
    assert_eq!(fat_text(&disk, 1, "/EFI/shell.txt"), "kept");
    let o = Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{}", disk.display(), partition(&disk, 1).0))
        .arg("::/EFI/BOOT/message.txt")
        .output()
        .unwrap();
    assert!(!o.status.success(), "message.txt survived --write's rm");
}
