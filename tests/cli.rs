//! End-to-end tests of the `strata` binary: import, clone, export, bad input, full disks,
//! corruption and `kill -9` in the middle of writes. Fixtures are built here (sfdisk,
//! qemu-img, plain files); nothing is downloaded.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

use common::{Repo, BIN};

/// A 64 MiB GPT disk with pseudo-random data in a few places and holes elsewhere.
fn make_disk(path: &Path) -> Vec<u8> {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(64 << 20).unwrap();
    drop(f);
    let mut sf = Command::new("sfdisk")
        .args(["-q"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .expect("sfdisk (fdisk package) is needed");
    sf.stdin
        .take()
        .unwrap()
        .write_all(b"label: gpt\n,32M,L\n,,L\n")
        .unwrap();
    assert!(sf.wait().unwrap().success());
    let mut disk = std::fs::read(path).unwrap();
    let mut x: u64 = 0x1234_5678;
    for region in [(2 << 20, 300_000), (20 << 20, 65_536), (40 << 20, 1 << 20)] {
        for b in &mut disk[region.0..region.0 + region.1] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    std::fs::write(path, &disk).unwrap();
    disk
}

#[test]
fn import_clone_and_export_round_trip_byte_for_byte() {
    let r = Repo::new();
    let src = r.path("disk.raw");
    let disk = make_disk(&src);
    r.ok(&["image", "import", src.to_str().unwrap(), "--name", "gold"]);
    let info: serde_json::Value =
        serde_json::from_str(&r.ok(&["image", "info", "gold", "--json"])).unwrap();
    assert_eq!(info["virtual_size"], 64 << 20);
    let stored = info["stored_bytes"].as_u64().unwrap();
    assert!(
        stored < 4 << 20,
        "holes and zeros must not be stored: {stored}"
    );
    r.ok(&["volume", "create", "web-01", "--from", "gold"]);
    r.ok(&[
        "volume", "create", "web-02", "--from", "gold", "--size", "128M",
    ]);
    let out = r.path("web-01.raw");
    r.ok(&["volume", "export", "web-01", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == disk);
    let img = r.path("gold.raw");
    r.ok(&["image", "export", "gold", img.to_str().unwrap()]);
    assert!(std::fs::read(&img).unwrap() == disk);
    let info: serde_json::Value =
        serde_json::from_str(&r.ok(&["image", "info", "gold", "--json"])).unwrap();
    assert_eq!(info["volumes"], serde_json::json!(["web-01", "web-02"]));
    let v2: serde_json::Value =
        serde_json::from_str(&r.ok(&["volume", "info", "web-02", "--json"])).unwrap();
    assert_eq!(v2["size"], 128 << 20);
    assert_eq!(v2["image"], "gold");
}

#[test]
fn qcow2_imports_through_qemu_img() {
    let r = Repo::new();
    let raw = r.path("disk.raw");
    let disk = make_disk(&raw);
    let q = r.path("disk.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q)
        .status()
        .expect("qemu-img (qemu-utils) is needed");
    assert!(st.success());
    r.ok(&["image", "import", q.to_str().unwrap(), "--name", "gold"]);
    let out = r.path("out.raw");
    r.ok(&["image", "export", "gold", out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == disk);
}

#[test]
fn bad_input_is_refused_clearly_and_leaves_nothing_behind() {
    let r = Repo::new();
    let good = r.path("disk.raw");
    make_disk(&good);
    r.ok(&["image", "import", good.to_str().unwrap(), "--name", "gold"]);

    let truncated = r.path("truncated.raw");
    std::fs::write(&truncated, vec![1u8; 1000]).unwrap();
    let e = r.fails(&[
        "image",
        "import",
        truncated.to_str().unwrap(),
        "--name",
        "t1",
    ]);
    assert!(e.contains("512"), "{e}");

    let empty = r.path("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    assert!(r
        .fails(&["image", "import", empty.to_str().unwrap(), "--name", "t2"])
        .contains("empty"));

    let garbage = r.path("garbage.qcow2");
    let mut g = b"QFI\xfb\0\0\0\x03".to_vec();
    g.extend(std::iter::repeat_n(0xA5u8, 3000));
    std::fs::write(&garbage, g).unwrap();
    let e = r.fails(&["image", "import", garbage.to_str().unwrap(), "--name", "t3"]);
    assert!(e.contains("cannot read") && e.contains("qcow2"), "{e}");

    let orphan = r.path("orphan.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-u", "-F", "raw", "-b"])
        .arg(r.path("missing-backing.raw"))
        .arg(&orphan)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    let e = r.fails(&["image", "import", orphan.to_str().unwrap(), "--name", "t4"]);
    assert!(
        e.contains("missing-backing"),
        "the message must name the missing file: {e}"
    );

    let e = r.fails(&[
        "image",
        "import",
        r.path("nonexistent").to_str().unwrap(),
        "--name",
        "t5",
    ]);
    assert!(e.contains("nonexistent"), "{e}");

    for bad in ["a/b", "..", "../escape", "x\u{1}y", "tab\tname", ".hidden"] {
        let e = r.fails(&["volume", "create", bad, "--size", "1M"]);
        assert!(e.contains("invalid name"), "{bad:?}: {e}");
        let e = r.fails(&["image", "import", good.to_str().unwrap(), "--name", bad]);
        assert!(e.contains("invalid name"), "{bad:?}: {e}");
    }
    assert!(r
        .fails(&["volume", "create", "odd", "--size", "1000"])
        .contains("multiple of 512"));
    assert!(r.fails(&["volume", "create", "nosize"]).contains("--size"));
    assert!(r
        .fails(&["volume", "create", "small", "--from", "gold", "--size", "1M"])
        .contains("smaller"));
    assert!(r
        .fails(&["volume", "create", "x", "--from", "nope"])
        .contains("not found"));
    r.ok(&["volume", "create", "v1", "--from", "gold"]);
    assert!(r
        .fails(&["volume", "create", "v1", "--size", "1M"])
        .contains("already exists"));
    assert!(r
        .fails(&["image", "import", good.to_str().unwrap(), "--name", "gold"])
        .contains("already exists"));
    let existing = r.path("exists.raw");
    std::fs::write(&existing, b"keep me").unwrap();
    assert!(r
        .fails(&["volume", "export", "v1", existing.to_str().unwrap()])
        .contains("already exists"));
    assert_eq!(std::fs::read(&existing).unwrap(), b"keep me");

    let images = r.ok(&["image", "ls"]);
    assert_eq!(images.lines().count(), 2, "only gold: {images}");
    let vols = r.ok(&["volume", "ls"]);
    assert_eq!(vols.lines().count(), 2, "only v1: {vols}");
    assert!(r.staging_is_empty());
    assert!(!r.root.join("volumes/odd").exists() && !r.root.join("images/t3").exists());
}

#[test]
fn image_removal_is_refused_while_volumes_use_it() {
    let r = Repo::new();
    let src = r.path("disk.raw");
    make_disk(&src);
    r.ok(&["image", "import", src.to_str().unwrap(), "--name", "gold"]);
    r.ok(&["volume", "create", "a1", "--from", "gold"]);
    r.ok(&["volume", "create", "b2", "--from", "gold"]);
    let e = r.fails(&["image", "rm", "gold"]);
    assert!(e.contains("a1") && e.contains("b2"), "{e}");
    r.ok(&["volume", "rm", "a1"]);
    r.ok(&["volume", "rm", "b2"]);
    r.ok(&["image", "rm", "gold"]);
    assert!(r.ok(&["image", "ls"]).lines().count() == 1);
}

#[test]
fn newer_repository_format_is_refused() {
    let r = Repo::new();
    r.ok(&["image", "ls"]);
    std::fs::write(
        r.root.join("strata-repo.json"),
        r#"{"format":"strata-repo","version":99}"#,
    )
    .unwrap();
    let e = r.fails(&["volume", "ls"]);
    assert!(e.contains("version 99") && e.contains("upgrade"), "{e}");
}

#[test]
fn non_repository_directory_is_not_taken_over() {
    let r = Repo::new();
    std::fs::create_dir_all(&r.root).unwrap();
    std::fs::write(r.root.join("precious.txt"), b"x").unwrap();
    let e = r.fails(&["image", "ls"]);
    assert!(e.contains("not a strata repository"), "{e}");
}

#[test]
fn flipped_byte_in_a_stored_extent_is_an_io_error_naming_volume_and_offset() {
    let r = Repo::new();
    let src = r.path("disk.raw");
    make_disk(&src);
    r.ok(&["image", "import", src.to_str().unwrap(), "--name", "gold"]);
    r.ok(&["volume", "create", "vm", "--from", "gold"]);
    // Damage the image: its first stored chunk is the GPT at offset 0.
    let data = r.root.join("images/gold/data");
    let mut d = std::fs::read(&data).unwrap();
    d[10] ^= 0x01;
    std::fs::write(&data, d).unwrap();
    let e = r.fails(&["volume", "export", "vm", r.path("o.raw").to_str().unwrap()]);
    assert!(
        e.contains("checksum mismatch") && e.contains("\"vm\"") && e.contains("offset 0"),
        "{e}"
    );
    assert!(!r.path("o.raw").exists() && !r.path("o.raw.partial").exists());

    // Damage a volume's own delta.
    r.ok(&["volume", "create", "e", "--size", "4M"]);
    r.ok(&["debug", "torture", "e", "--blocks", "64", "--writes", "200"]);
    let data = r.root.join("volumes/e/data");
    let mut d = std::fs::read(&data).unwrap();
    let at = d.iter().position(|&b| b != 0).unwrap() + 20;
    d[at] ^= 0x80;
    std::fs::write(&data, d).unwrap();
    let e = r.fails(&["volume", "export", "e", r.path("e.raw").to_str().unwrap()]);
    assert!(
        e.contains("checksum mismatch") && e.contains("volume \"e\"") && e.contains("offset"),
        "{e}"
    );
}

/// Kills the writer with SIGKILL after it has reported some flushes; every write before the
/// last reported flush must be there and no block torn.
#[test]
fn kill_9_during_writes_keeps_every_flushed_write() {
    let r = Repo::new();
    let src = r.path("disk.raw");
    make_disk(&src);
    r.ok(&["image", "import", src.to_str().unwrap(), "--name", "gold"]);
    for (seed, flushes) in [(1u64, 5usize), (2, 23), (3, 61)] {
        let vol = format!("k{seed}");
        r.ok(&["volume", "create", &vol, "--from", "gold"]);
        let mut child = Command::new(BIN)
            .arg("--repo")
            .arg(&r.root)
            .args([
                "debug",
                "torture",
                &vol,
                "--blocks",
                "4096",
                "--flush-every",
                "37",
            ])
            .args(["--seed", &seed.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut last = 0u64;
        for _ in 0..flushes {
            let l = lines.next().expect("torture ended early").unwrap();
            last = l.strip_prefix("flushed ").unwrap().parse().unwrap();
        }
        child.kill().unwrap(); // SIGKILL, while it keeps writing
        child.wait().unwrap();
        let out = r.ok(&[
            "debug",
            "torture-check",
            &vol,
            "--blocks",
            "4096",
            "--seed",
            &seed.to_string(),
            "--flushed",
            &last.to_string(),
        ]);
        assert!(out.starts_with("ok:"), "{out}");
    }
}

#[test]
fn a_volume_in_use_by_another_process_is_not_removed() {
    let r = Repo::new();
    r.ok(&["volume", "create", "busy", "--size", "16M"]);
    let mut child = Command::new(BIN)
        .arg("--repo")
        .arg(&r.root)
        .args(["debug", "torture", "busy", "--blocks", "64"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    lines.next().unwrap().unwrap(); // it holds the volume now
    let e = r.fails(&["volume", "rm", "busy"]);
    assert!(e.contains("in use"), "{e}");
    let e = r.fails(&["debug", "torture", "busy", "--writes", "1"]);
    assert!(e.contains("in use"), "{e}");
    child.kill().unwrap();
    child.wait().unwrap();
    r.ok(&["volume", "rm", "busy"]);
}

#[test]
fn clones_cost_no_data_whatever_the_image_size() {
    let r = Repo::new();
    // A 20 GiB sparse image with a little data.
    let src = r.path("big.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(20 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[7u8; 1 << 20], 10 << 30).unwrap();
    drop(f);
    r.ok(&["image", "import", src.to_str().unwrap(), "--name", "big"]);
    let out = r.ok(&["bench", "clone", "big", "--count", "50", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let disk = v["disk_bytes_per_clone"].as_u64().unwrap();
    assert!(
        disk < 64 << 10,
        "a clone must cost under 64 KiB of disk: {disk}"
    );
    assert!(
        r.ok(&["volume", "ls"]).lines().count() == 1,
        "bench clones are removed"
    );
}

/// A full filesystem during import and during writes: clear errors, nothing half-made.
#[test]
fn full_disk_during_import_and_write() {
    let r = Repo::new();
    std::fs::create_dir_all(&r.root).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3M", "tmpfs"])
        .arg(&r.root)
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        eprintln!("SKIP full_disk_during_import_and_write: cannot mount a tmpfs (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(r.root.clone());
    let src = r.path("disk.raw");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(16 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    let noise: Vec<u8> = (0..8 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    f.write_all_at(&noise, 0).unwrap();
    drop(f);
    let e = r.fails(&["image", "import", src.to_str().unwrap(), "--name", "big"]);
    assert!(e.contains("No space left"), "{e}");
    assert!(r.staging_is_empty());
    assert_eq!(r.ok(&["image", "ls"]).lines().count(), 1);

    r.ok(&["volume", "create", "w", "--size", "64M"]);
    let e = r.fails(&[
        "debug", "torture", "w", "--blocks", "16384", "--writes", "10000",
    ]);
    assert!(e.contains("No space left"), "{e}");
    // The volume still opens; what was flushed before the failure is intact.
    r.ok(&["volume", "info", "w"]);
    let o = r.run(&["volume", "export", "w", r.path("w.raw").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// `strata mount` serves until SIGTERM, then unmounts cleanly and keeps what was written.
#[test]
fn mount_unmounts_cleanly_on_sigterm_and_keeps_writes() {
    if !Path::new("/dev/fuse").exists() || unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "SKIP mount_unmounts_cleanly_on_sigterm_and_keeps_writes: needs root and /dev/fuse"
        );
        return;
    }
    let r = Repo::new();
    r.ok(&["volume", "create", "m1", "--size", "8M"]);
    let mnt = r.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(BIN)
        .arg("--repo")
        .arg(&r.root)
        .arg("mount")
        .arg(&mnt)
        .spawn()
        .unwrap();
    let file = mnt.join("volumes/m1");
    let mut served = false;
    for _ in 0..500 {
        if file.exists() {
            served = true;
            break;
        }
        std::thread::yield_now();
        std::thread::sleep(std::time::Duration::from_millis(10)); // polling, bounded
    }
    assert!(served, "the mount never appeared");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.write_all_at(&[0x5A; 8192], 4096).unwrap();
        // No fsync: stopping the mount must flush.
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(st.success(), "strata mount exited with {st}");
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(!mounts.contains(mnt.to_str().unwrap()), "still mounted");
    let out = r.path("m1.raw");
    r.ok(&["volume", "export", "m1", out.to_str().unwrap()]);
    let d = std::fs::read(&out).unwrap();
    assert!(d[4096..12288].iter().all(|&b| b == 0x5A) && d[..4096].iter().all(|&b| b == 0));
}
