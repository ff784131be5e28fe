//! Helpers of the tests that deploy and capture with HPE's bundles: where the bundles are,
//! a volume or image as a raw file, and what a FAT partition of one holds and what
//! fsck.fat says of it (the host kernel has no vfat: mtools reads it).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ok, tool, Repo};

pub const SUPPORT: &str = "HPE-Support-Artifacts-2017-11-29-v4.0.zip";
pub const DEVELOPER: &str = "HPE-ImageStreamer-Developer-2017-08-28-v4.1.zip";
pub const FOUNDATION: &str = "HPE-Foundation-Artifacts-2018-09-11-v4.0.zip";

/// The path of one of the bundles in tests/fixtures/hpe-artifacts.
pub fn bundle(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/hpe-artifacts")
        .join(name)
        .display()
        .to_string()
}

/// The volume's disk as a raw file.
pub fn export(repo: &Repo, volume: &str) -> PathBuf {
    let out = repo.path(&format!("{volume}.raw"));
    repo.ok(&["volume", "export", volume, out.to_str().unwrap()]);
    out
}

/// The image's disk as a raw file (exported once).
pub fn export_image(repo: &Repo, image: &str) -> PathBuf {
    let out = repo.path(&format!("{image}.image.raw"));
    if !out.exists() {
        repo.ok(&["image", "export", image, out.to_str().unwrap()]);
    }
    out
}

/// Byte offset and length of partition `n` (1-based), from sfdisk.
pub fn partition(disk: &Path, n: usize) -> (u64, u64) {
    let o = ok(Command::new("sfdisk").arg("--json").arg(disk));
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    let p = &v["partitiontable"]["partitions"][n - 1];
    (
        p["start"].as_u64().unwrap() * 512,
        p["size"].as_u64().unwrap() * 512,
    )
}

/// A file read from a FAT partition with mtools.
pub fn fat_read(disk: &Path, part: usize, path: &str) -> Vec<u8> {
    let img = format!("{}@@{}", disk.display(), partition(disk, part).0);
    let o = Command::new(tool("mtype", "tools/install-deps (mtools)"))
        .arg("-i")
        .arg(img)
        .arg(format!("::{path}"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mtype {path}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

pub fn fat_text(disk: &Path, part: usize, path: &str) -> String {
    String::from_utf8_lossy(&fat_read(disk, part, path)).into_owned()
}

/// What `fsck.fat -n` finds wrong in partition `part` (copied out of the disk): its
/// complaints, without the version, summary and "unchanged" lines.
pub fn fat_problems(disk: &Path, part: usize) -> Vec<String> {
    let (start, size) = partition(disk, part);
    let out = disk.with_extension(format!("p{part}"));
    ok(Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", out.display()))
        .arg("bs=512")
        .arg(format!("skip={}", start / 512))
        .arg(format!("count={}", size / 512))
        .arg("status=none"));
    let o = Command::new(tool("fsck.fat", "tools/install-deps (dosfstools)"))
        .arg("-n")
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let _ = std::fs::remove_file(&out);
    text.lines()
        .filter(|l| {
            !(l.starts_with("fsck.fat ")
                || l.starts_with("Leaving filesystem unchanged")
                || l.trim().is_empty()
                || l.contains(" files, "))
        })
        .map(String::from)
        .collect()
}

/// Partition `part` of `disk` has no fsck.fat complaint that the same partition of golden
/// image `image` did not already have (HPE's images carry an empty label fsck.fat objects
/// to).
pub fn fsck_fat_like(repo: &Repo, image: &str, disk: &Path, part: usize) {
    let before = fat_problems(&export_image(repo, image), part);
    let after = fat_problems(disk, part);
    for p in &after {
        assert!(
            before.contains(p),
            "new fsck.fat complaint: {p}\nall: {after:?}"
        );
    }
}
