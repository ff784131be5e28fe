//! `strata deploy` end to end with HPE's own bundles: the Support bundle's real 100 MiB UEFI
//! golden image is imported from the bundle, personalized by its plan scripts unchanged,
//! and read back with mtools and checked with fsck.fat; failing plans leave no volume.

mod common;

use std::path::Path;

use std::process::Command;

use common::hpe::*;
use common::*;

const SIMPLE_PLAN: &str = "HPE - Support 1.0 - simple deployment test-2017-11-29";

/// A file of a FAT partition, as text.
fn fat_read(disk: &Path, part: usize, path: &str) -> String {
    fat_text(disk, part, path)
}

/// The deployed ESP has no fsck.fat complaint its golden image did not already have.
fn fsck_fat(repo: &Repo, disk: &Path, part: usize) {
    let images = repo.ok(&["image", "ls"]);
    let image = images
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    fsck_fat_like(repo, &image, disk, part);
}

#[test]
fn the_support_bundle_deploys_unchanged_and_personalizes_the_esp() {
    let repo = Repo::new();
    let out = repo.ok(&[
        "deploy",
        "web-01",
        "--artifacts",
        &bundle(SUPPORT),
        "--plan",
        SIMPLE_PLAN,
        "--attr",
        "ExampleString=hello from web-01",
    ]);
    // The script's own output, as guestfish prints it.
    assert!(out.contains("/dev/sda1: vfat"), "{out}");
    let disk = export(&repo, "web-01");
    let msg = fat_read(&disk, 1, "/EFI/BOOT/message.txt");
    assert!(msg.contains("hello from web-01"), "{msg}");
    fsck_fat(&repo, &disk, 1);
    let record = std::fs::read_to_string(repo.root.join("volumes/web-01/deployment.json")).unwrap();
    let r: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(r["result"], "succeeded");
    assert_eq!(r["deployment_plan"], SIMPLE_PLAN);
    // A second deployment reuses the imported golden image.
    repo.ok(&[
        "deploy",
        "web-02",
        "--artifacts",
        &bundle(SUPPORT),
        "--plan",
        SIMPLE_PLAN,
        "-q",
    ]);
    let images = repo.ok(&["image", "ls"]);
    assert_eq!(images.lines().count(), 2, "{images}");
    let disk2 = export(&repo, "web-02");
    assert!(fat_read(&disk2, 1, "/EFI/BOOT/message.txt").contains("Hello World!"));
    assert!(repo.staging_is_empty());
}

#[test]
fn the_intentional_failure_plan_leaves_no_volume_and_says_where() {
    let repo = Repo::new();
    let e = repo.fails(&[
        "deploy",
        "doomed",
        "--artifacts",
        &bundle(DEVELOPER),
        "--plan",
        "User - Developer 1.0 - Deployment Test (UEFI) - 2017-03-24",
        "-q",
    ]);
    assert!(e.contains("Fail_OS_Deployment: unknown command"), "{e}");
    assert!(e.contains("attempt or fail deployment"), "{e}");
    assert!(e.contains("line 14"), "{e}");
    assert_eq!(
        repo.ok(&["volume", "ls"]).lines().count(),
        1,
        "only the header"
    );
    assert!(repo.staging_is_empty());
}

#[test]
fn the_empty_volume_plan_makes_a_blank_volume_of_volume_size_mib() {
    let repo = Repo::new();
    let plan = "HPE - Foundation 1.0 - create empty OS Volume-2017-10-13";
    let e = repo.fails(&[
        "deploy",
        "blank",
        "--artifacts",
        &bundle(FOUNDATION),
        "--plan",
        plan,
    ]);
    assert!(e.contains("VolumeSize"), "{e}");
    let out = repo.ok(&[
        "deploy",
        "blank",
        "--artifacts",
        &bundle(FOUNDATION),
        "--plan",
        plan,
        "--attr",
        "VolumeSize=64",
    ]);
    assert!(
        out.contains("Create empty OS Volume of size 64 MiB"),
        "{out}"
    );
    let info = repo.ok(&["volume", "info", "blank", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["size"].as_u64(), Some(64 << 20), "{info}");
}

#[test]
fn a_password_never_reaches_the_output_the_errors_or_the_record() {
    let repo = Repo::new();
    let secret = "Pw-9q7Zx";
    let plan = "HPE - Developer 1.0 - Deployment Test (UEFI) - 2017-03-24";
    let o = repo.run(&[
        "deploy",
        "pw",
        "--artifacts",
        &bundle(DEVELOPER),
        "--plan",
        plan,
        "--attr",
        &format!("ExamplePassword={secret}"),
        "--attr",
        "ExampleFQDN=web.example.com",
        "--attr",
        "ExampleIPv4Address=10.0.0.5",
        "--attr",
        "ExampleString1=one",
        "--attr",
        "ExampleString2=two",
        "--attr",
        "ExampleNumber1=7",
    ]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{all}");
    assert!(!all.contains(secret), "{all}");
    let record = std::fs::read_to_string(repo.root.join("volumes/pw/deployment.json")).unwrap();
    assert!(!record.contains(secret), "{record}");
    assert!(record.contains("********"));
    // The guest file itself gets the value: that is what the script asks for.
    let disk = export(&repo, "pw");
    assert!(fat_read(&disk, 1, "/EFI/BOOT/message.txt").contains(secret));
    // A password over its maxlen (10) is refused, and the refusal does not repeat it.
    let long = "Zz-0123456789-long";
    let e = repo.fails(&[
        "deploy",
        "pw2",
        "--artifacts",
        &bundle(DEVELOPER),
        "--plan",
        plan,
        "--attr",
        &format!("ExamplePassword={long}"),
    ]);
    assert!(e.contains("ExamplePassword"), "{e}");
    assert!(!e.contains(long), "{e}");
}

/// A folder of artifacts: one plan script (given), its build plan, a deployment plan on the
/// Support bundle's golden image.
fn folder_plan(repo: &Repo, script: &str) -> String {
    let dir = repo.path("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let ps = serde_json::json!({
        "type": "PlanScript", "id": "11111111-1111-1111-1111-111111111111",
        "name": "test script", "planType": "deploy", "content": script,
        "customAttributes": null, "description": ""
    });
    let bp = serde_json::json!({
        "type": "OeBuildPlan", "buildPlanid": "22222222-2222-2222-2222-222222222222",
        "name": "test build plan", "oeBuildPlanType": "deploy", "customAttributes": [],
        "buildStep": [{"serialNumber": "1", "planScriptName": "test script",
                       "planScriptUri": "/rest/plan-scripts/11111111-1111-1111-1111-111111111111",
                       "parameters": null}]
    });
    let dp = serde_json::json!({
        "type": "OEDeploymentPlan", "id": "33333333-3333-3333-3333-333333333333",
        "name": "test plan", "oeBuildPlanURI": "test build plan",
        "goldenImageURI": "HPE - Support 1.0 - UEFI Test Image - 2017-03-24",
        "customAttributes": []
    });
    // The golden image is in the store already (imported from the Support bundle): its
    // description names it, with no payload beside it.
    let gi = serde_json::json!({
        "type": "GoldenImage", "id": "44444444-4444-4444-4444-444444444444",
        "name": "HPE - Support 1.0 - UEFI Test Image - 2017-03-24", "description": ""
    });
    for (f, v) in [
        ("44444444-4444-4444-4444-444444444444_goldenimage.json", gi),
        ("11111111-1111-1111-1111-111111111111_planscript.json", ps),
        ("22222222-2222-2222-2222-222222222222_buildplan.json", bp),
        (
            "33333333-3333-3333-3333-333333333333_deploymentplan.json",
            dp,
        ),
    ] {
        std::fs::write(dir.join(f), serde_json::to_vec(&v).unwrap()).unwrap();
    }
    dir.display().to_string()
}

fn import_support_image(repo: &Repo) {
    repo.ok(&[
        "deploy",
        "seed",
        "--artifacts",
        &bundle(SUPPORT),
        "--plan",
        SIMPLE_PLAN,
        "-q",
    ]);
}

#[test]
fn scripts_that_escape_their_scratch_directory_or_fail_on_the_host_leave_no_volume() {
    let repo = Repo::new();
    import_support_image(&repo);
    for (script, why) in [
        (
            "mount /dev/sda1 /\ndownload /EFI/BOOT/message.txt ../../escaped\n",
            "escaped",
        ),
        (
            "mount /dev/sda1 /\ndownload /EFI/BOOT/message.txt /etc/escaped\n",
            "escaped",
        ),
        ("mount /dev/sda1 /\nwrite /x \"y\"\n!exit 1\n", "status 1"),
        ("mount /dev/sda1 /\nrm /nothere\n", "nothere"),
    ] {
        let dir = folder_plan(&repo, script);
        let e = repo.fails(&[
            "deploy",
            "bad",
            "--artifacts",
            &dir,
            "--plan",
            "test plan",
            "-q",
        ]);
        assert!(e.contains(why) || e.contains("outside"), "{script}: {e}");
        assert!(!repo.root.join("volumes/bad").exists(), "{script}");
        assert!(!Path::new("/etc/escaped").exists());
    }
    assert!(repo.staging_is_empty());
}

#[test]
fn kill_9_in_the_middle_of_a_deployment_leaves_no_half_made_volume() {
    let repo = Repo::new();
    import_support_image(&repo);
    let dir = folder_plan(
        &repo,
        "mount /dev/sda1 /\nwrite /EFI/half \"made\"\n!sleep 617\n",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("--repo")
        .arg(&repo.root)
        .args([
            "deploy",
            "half",
            "--artifacts",
            &dir,
            "--plan",
            "test plan",
            "-q",
        ])
        .spawn()
        .unwrap();
    // Wait for the host-side command to be running (its `sleep 617` shows in /proc).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let started = loop {
        let found = walk_proc_for("sleep\0617");
        if found || std::time::Instant::now() > deadline {
            break found;
        }
        std::thread::yield_now();
    };
    assert!(started, "the script never reached its shell command");
    child.kill().unwrap();
    child.wait().unwrap();
    // The next command sees no volume, and clears what the dead deployment left.
    assert_eq!(
        repo.ok(&["volume", "ls"]).lines().count(),
        2,
        "header and seed only"
    );
    assert!(!repo.root.join("volumes/half").exists());
    // The name is free and the image intact: the same deployment, fixed, succeeds.
    let dir = folder_plan(&repo, "mount /dev/sda1 /\nwrite /EFI/half \"made\"\n");
    repo.ok(&[
        "deploy",
        "half",
        "--artifacts",
        &dir,
        "--plan",
        "test plan",
        "-q",
    ]);
    let disk = export(&repo, "half");
    assert_eq!(fat_read(&disk, 1, "/EFI/half"), "made");
    fsck_fat(&repo, &disk, 1);
}

/// Whether some process's command line contains `needle` (arguments NUL-separated).
fn walk_proc_for(needle: &str) -> bool {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .map(|c| c.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .unwrap_or(false)
    })
}
