//! Capture end to end: snapshots of a volume that another process keeps writing and
//! flushing, pins that outlive a killed holder only until the writer's next commit, and the
//! whole capture of a GPT disk (FAT ESP, ext4, NTFS; free space full of junk) into an image
//! that stores about the used blocks, deploys back to the same files, checks clean with the
//! filesystems' own tools, and leaves the source volume's bytes alone.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{ok, tool, Console, BIN};
use sha2::{Digest, Sha256};
use strata::fs::worker::{Call, Request, Source, Worker, WorkerOptions};
use strata::plan::capture;
use strata::store::{BlockDevice, RepoOptions, Repository, SourceFormat};

const BS: usize = 4096;

fn repo(root: &Path) -> Repository {
    Repository::open(root, RepoOptions::default()).unwrap()
}

fn worker_opts() -> WorkerOptions {
    WorkerOptions {
        exe: PathBuf::from(BIN),
        ..WorkerOptions::default()
    }
}

// The block stream of `strata debug torture` (src/cli/debug.rs), recomputed here.
fn target(seed: u64, blocks: u64, seq: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(seq.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 29)) % blocks
}

fn content(seq: u64, block: u64) -> Vec<u8> {
    let mut b = vec![(seq % 251) as u8 + 1; BS];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&block.to_le_bytes());
    b
}

fn read_all(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut b = vec![0u8; dev.len() as usize];
    dev.read_at(&mut b, 0).unwrap();
    b
}

fn flushed_counts(text: &str) -> Vec<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("flushed ")?.trim().parse().ok())
        .collect()
}

#[test]
fn a_snapshot_of_a_volume_another_process_writes_is_one_flush_point_and_stays_put() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("repo");
    let r = repo(&root);
    let (seed, blocks, every) = (5u64, 256u64, 20u64);
    r.create_volume("v", None, Some(blocks * BS as u64))
        .unwrap();
    let mut writer = Console::spawn(
        Command::new(BIN)
            .arg("--repo")
            .arg(&root)
            .args(["debug", "torture", "v", "--seed", "5", "--blocks", "256"])
            .args(["--flush-every", "20"]),
    );
    assert!(
        writer.wait_for("flushed 400\n", Duration::from_secs(120)),
        "{}",
        writer.text()
    );
    let snap = r.snapshot_volume("v").unwrap();
    let pins = root.join("volumes/v/pins");
    assert_eq!(std::fs::read_dir(&pins).unwrap().count(), 1);
    let first = read_all(&snap);
    // The writer goes on: 4000 more writes over the same 256 blocks (each block rewritten
    // about 15 times), each flush superseding slots the snapshot's map references.
    let seen = flushed_counts(&writer.text());
    let before = *seen.last().unwrap();
    let later = format!("flushed {}\n", before + every * 200);
    assert!(
        writer.wait_for(&later, Duration::from_secs(120)),
        "{}",
        writer.text()
    );
    let again = read_all(&snap);
    writer.kill();
    assert!(
        first == again,
        "the snapshot changed while the writer went on"
    );
    // Exactly the state after one flush: writes 0..n for some n the writer flushed at.
    let mut state = vec![0u8; blocks as usize * BS];
    let mut matched = None;
    let mut seq = 0u64;
    let horizon = before + every * 200;
    loop {
        if seq % every == 0 && state == first {
            matched = Some(seq);
            break;
        }
        if seq >= horizon {
            break;
        }
        let b = target(seed, blocks, seq);
        state[b as usize * BS..(b as usize + 1) * BS].copy_from_slice(&content(seq, b));
        seq += 1;
    }
    let n = matched.expect("the snapshot matches no flush point of the writer");
    assert!(n >= 400, "older than a flush the writer had reported: {n}");
    drop(snap);
    assert_eq!(std::fs::read_dir(&pins).unwrap().count(), 0);
}

/// Not a test on its own: the child process of the next test (it takes a snapshot, says so,
/// and waits to be killed).
#[test]
#[ignore]
fn child_holds_a_snapshot() {
    let Ok(root) = std::env::var("STRATA_TEST_SNAPSHOT_REPO") else {
        return;
    };
    let r = repo(Path::new(&root));
    let _s = r.snapshot_volume("v").unwrap();
    println!("pinned");
    loop {
        std::thread::park();
    }
}

#[test]
fn a_pin_left_by_a_killed_process_is_cleared_by_the_next_commit() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("repo");
    let r = repo(&root);
    r.create_volume("v", None, Some(1 << 20)).unwrap();
    let v = r.open_volume("v", false).unwrap();
    for b in 0..64u64 {
        v.write_at(&[1u8; BS], b * BS as u64).unwrap();
    }
    v.flush().unwrap();
    let mut child = Console::spawn(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_holds_a_snapshot",
                "--ignored",
                "--nocapture",
            ])
            .env("STRATA_TEST_SNAPSHOT_REPO", &root),
    );
    assert!(
        child.wait_for("pinned", Duration::from_secs(60)),
        "{}",
        child.text()
    );
    let pins = root.join("volumes/v/pins");
    let data = root.join("volumes/v/data");
    // While it lives, the writer holds the pinned slots: overwrites take new ones.
    for round in 0..3u8 {
        for b in 0..64u64 {
            v.write_at(&[round + 2; BS], b * BS as u64).unwrap();
        }
        v.flush().unwrap();
    }
    assert_eq!(std::fs::read_dir(&pins).unwrap().count(), 1);
    child.kill(); // SIGKILL: no destructor runs, the pin file stays behind
    assert_eq!(std::fs::read_dir(&pins).unwrap().count(), 1);
    for round in 0..2u8 {
        for b in 0..64u64 {
            v.write_at(&[round + 9; BS], b * BS as u64).unwrap();
        }
        v.flush().unwrap();
    }
    assert_eq!(
        std::fs::read_dir(&pins).unwrap().count(),
        0,
        "the dead process's pin was cleared"
    );
    // And its slots are free again: many more rounds do not grow the data file.
    let len = std::fs::metadata(&data).unwrap().len();
    for round in 0..20u8 {
        for b in 0..64u64 {
            v.write_at(&[round + 20; BS], b * BS as u64).unwrap();
        }
        v.flush().unwrap();
    }
    assert_eq!(std::fs::metadata(&data).unwrap().len(), len);
}

// ---- the GPT disk ----

/// Fills a file with pseudo-random bytes: free space that a capture must not store.
fn junk_file(path: &Path, len: u64, seed: u64) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..len >> 20 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const MIB: u64 = 1 << 20;
/// (start, len) of the ESP, the ext4 root and the NTFS data partition, in MiB.
const PARTS: [(u64, u64); 3] = [(1, 48), (49, 160), (209, 128)];
const DISK_MIB: u64 = 400;

/// The files each filesystem gets: (path, bytes).
fn files(seed: u64, n: usize, size: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                format!("f{i:03}.bin"),
                random_bytes(size + i * 1000, seed + i as u64),
            )
        })
        .collect()
}

/// Builds the disk: partitions filled with junk first, then formatted (no discard, no
/// zeroing) and given files with each filesystem's own tools.
fn gpt_disk(work: &Path) -> (PathBuf, u64) {
    let disk = work.join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(DISK_MIB * MIB)
        .unwrap();
    let mut c = Command::new(tool("sfdisk", "tools/install-deps"));
    c.arg("-q").arg(&disk).stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"label: gpt\nstart=1MiB,size=48MiB,type=U\nstart=49MiB,size=160MiB,type=L\n\
          start=209MiB,size=128MiB,type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\n",
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    let mut file_bytes = 0u64;
    // ESP: FAT32 with a directory and files, by mtools.
    let esp = work.join("esp.img");
    junk_file(&esp, PARTS[0].1 * MIB, 1);
    ok(Command::new(tool("mkfs.vfat", "tools/install-deps"))
        .args(["-F", "32", "-n", "ESP"])
        .arg(&esp));
    ok(Command::new("mmd")
        .arg("-i")
        .arg(&esp)
        .arg("::/EFI")
        .env("MTOOLS_SKIP_CHECK", "1"));
    for (name, bytes) in files(100, 6, 1 << 20) {
        let p = work.join(&name);
        std::fs::write(&p, &bytes).unwrap();
        file_bytes += bytes.len() as u64;
        ok(Command::new("mcopy")
            .arg("-i")
            .arg(&esp)
            .arg(&p)
            .arg(format!("::/EFI/{name}"))
            .env("MTOOLS_SKIP_CHECK", "1"));
    }
    // ext4 from a directory tree.
    let tree = work.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::create_dir_all(tree.join("usr/share/data")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "golden-master\n").unwrap();
    std::fs::write(
        tree.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    for (name, bytes) in files(200, 12, 2 << 20) {
        file_bytes += bytes.len() as u64;
        std::fs::write(tree.join("usr/share/data").join(name), bytes).unwrap();
    }
    let root = work.join("root.img");
    junk_file(&root, PARTS[1].1 * MIB, 2);
    ok(Command::new(tool("mke2fs", "tools/install-deps"))
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-E",
            "nodiscard",
            "-L",
            "root",
            "-d",
        ])
        .arg(&tree)
        .arg(&root));
    // NTFS, quick-formatted over the junk, files copied in by ntfscp.
    let ntfs = work.join("ntfs.img");
    junk_file(&ntfs, PARTS[2].1 * MIB, 3);
    ok(Command::new(tool("mkntfs", "tools/install-deps"))
        .args(["-Q", "-F", "-q", "-L", "data", "-p"])
        .arg((PARTS[2].0 * MIB / 512).to_string())
        .arg(&ntfs));
    for (name, bytes) in files(300, 6, 2 << 20) {
        let p = work.join(&name);
        std::fs::write(&p, &bytes).unwrap();
        file_bytes += bytes.len() as u64;
        ok(Command::new("ntfscp")
            .arg("-q")
            .arg(&ntfs)
            .arg(&p)
            .arg(&name));
    }
    for (img, (at, _)) in [(&esp, PARTS[0]), (&root, PARTS[1]), (&ntfs, PARTS[2])] {
        ok(Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", disk.display()))
            .args([
                "bs=1M",
                &format!("seek={at}"),
                "conv=notrunc",
                "status=none",
            ]));
    }
    (disk, file_bytes)
}

/// Partition `i` of a device, written to its own file (for fsck and the readers).
fn extract(dev: &dyn BlockDevice, i: usize, dest: &Path) -> PathBuf {
    let (at, len) = PARTS[i];
    let mut b = vec![0u8; (len * MIB) as usize];
    dev.read_at(&mut b, at * MIB).unwrap();
    std::fs::write(dest, b).unwrap();
    dest.to_path_buf()
}

fn output(cmd: &mut Command) -> (bool, String) {
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// Every regular file under `dir`, relative path and bytes, sorted.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// The files of each filesystem of a disk, read by the filesystems' own tools.
fn contents(dev: &dyn BlockDevice, work: &Path, tag: &str) -> [Vec<(String, Vec<u8>)>; 3] {
    let esp = extract(dev, 0, &work.join(format!("{tag}-esp.img")));
    let root = extract(dev, 1, &work.join(format!("{tag}-root.img")));
    let ntfs = extract(dev, 2, &work.join(format!("{tag}-ntfs.img")));
    let (clean, out) = output(Command::new("fsck.fat").arg("-n").arg(&esp));
    assert!(clean, "{tag}: fsck.fat -n: {out}");
    let (clean, out) = output(Command::new("e2fsck").arg("-fn").arg(&root));
    assert!(clean, "{tag}: e2fsck -fn: {out}");
    let (clean, out) = output(Command::new("ntfsfix").arg("-n").arg(&ntfs));
    assert!(clean, "{tag}: ntfsfix -n: {out}");
    let fat_dir = work.join(format!("{tag}-fat"));
    std::fs::create_dir(&fat_dir).unwrap();
    ok(Command::new("mcopy")
        .arg("-s")
        .arg("-n")
        .arg("-i")
        .arg(&esp)
        .arg("::/EFI")
        .arg(&fat_dir)
        .env("MTOOLS_SKIP_CHECK", "1"));
    let ext_dir = work.join(format!("{tag}-ext"));
    std::fs::create_dir(&ext_dir).unwrap();
    ok(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", ext_dir.display()))
        .arg(&root));
    let listing = ok(Command::new("ntfsls").arg("-f").arg(&ntfs));
    let mut ntfs_files: Vec<(String, Vec<u8>)> = listing
        .lines()
        .map(str::trim)
        .filter(|n| n.ends_with(".bin"))
        .map(|n| {
            let o = Command::new("ntfscat").arg(&ntfs).arg(n).output().unwrap();
            assert!(o.status.success(), "ntfscat {n}");
            (n.to_string(), o.stdout)
        })
        .collect();
    ntfs_files.sort();
    [tree(&fat_dir), tree(&ext_dir), ntfs_files]
}

fn hash(dev: &dyn BlockDevice) -> Vec<u8> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut pos = 0;
    while pos < dev.len() {
        let n = (dev.len() - pos).min(buf.len() as u64) as usize;
        dev.read_at(&mut buf[..n], pos).unwrap();
        h.update(&buf[..n]);
        pos += n as u64;
    }
    h.finalize().to_vec()
}

/// Disk usage of a directory's files (allocated blocks, as du counts them).
fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

#[test]
fn a_captured_gpt_disk_stores_its_used_blocks_and_deploys_back_to_the_same_files() {
    let t = tempfile::tempdir().unwrap();
    let work = t.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let root = t.path().join("repo");
    let r = repo(&root);
    let (disk, file_bytes) = gpt_disk(&work);
    let progress = |_: u64, _: u64| {};
    r.import_image("gold", &disk, SourceFormat::Raw, &progress)
        .unwrap();
    r.create_volume("src", Some("gold"), None).unwrap();
    // A change in the volume's own delta too: a file added through a worker.
    let added = random_bytes(3 << 20, 9);
    let mut w = Worker::start(
        Source::Volume {
            repo: root.clone(),
            name: "src".into(),
        },
        false,
        &worker_opts(),
    )
    .unwrap();
    w.call(Request::Mount {
        device: "/dev/sda2".into(),
        point: "/".into(),
        read_only: false,
    })
    .unwrap();
    w.call(Request::Call(Call::CreateOrTruncate {
        path: b"/added.bin".to_vec(),
        mode: 0o644,
    }))
    .unwrap();
    w.call(Request::Call(Call::WriteAt {
        path: b"/added.bin".to_vec(),
        offset: 0,
        data: added.clone(),
    }))
    .unwrap();
    w.commit().unwrap();
    let src = r.open_volume("src", true).unwrap();
    let before_hash = hash(src.as_ref());
    let before = contents(src.as_ref(), &work, "src");
    drop(src);

    // The capture, with a generalization that edits the copy.
    let report = capture::capture(
        &r,
        "src",
        "captured",
        &worker_opts(),
        |source: &Source| -> Result<(), strata::fs::FsError> {
            let mut w = Worker::start(source.clone(), false, &worker_opts())?;
            w.call(Request::Mount {
                device: "/dev/sda2".into(),
                point: "/".into(),
                read_only: false,
            })?;
            w.call(Request::Call(Call::Rm {
                path: b"/etc/machine-id".to_vec(),
                force: false,
            }))?;
            w.call(Request::Call(Call::CreateOrTruncate {
                path: b"/etc/hostname".to_vec(),
                mode: 0o644,
            }))?;
            w.call(Request::Call(Call::WriteAt {
                path: b"/etc/hostname".to_vec(),
                offset: 0,
                data: b"localhost\n".to_vec(),
            }))?;
            w.commit()
        },
        &progress,
    )
    .unwrap();

    // The source volume is exactly as it was.
    let src = r.open_volume("src", true).unwrap();
    assert_eq!(hash(src.as_ref()), before_hash, "the source volume changed");
    drop(src);
    assert!(
        !root.join("volumes/src/pins").exists()
            || std::fs::read_dir(root.join("volumes/src/pins"))
                .unwrap()
                .count()
                == 0
    );
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);

    // About the used size: the filesystems' used blocks (files + metadata), a little
    // more for the partition tables, and far below the disk.
    let used: u64 = report.keep.filesystems.iter().map(|f| f.used).sum();
    let stored = report.image.stored_bytes;
    let on_disk = du(&root.join("images/captured"));
    eprintln!(
        "capture: disk {} MiB, files {} MiB, used {} MiB, kept {} MiB, stored {} MiB, du {} MiB; {:?}",
        DISK_MIB,
        file_bytes >> 20,
        used >> 20,
        report.keep.kept_bytes() >> 20,
        stored >> 20,
        on_disk >> 20,
        report.keep.filesystems
    );
    assert_eq!(report.keep.filesystems.len(), 3, "{:?}", report.keep);
    assert!(report.keep.filesystems.iter().all(|f| f.error.is_none()));
    assert!(
        stored >= file_bytes,
        "stored less than the files themselves"
    );
    assert!(stored <= used + 2 * MIB, "stored {stored}, used {used}");
    assert!(on_disk <= used + 4 * MIB, "on disk {on_disk}, used {used}");
    assert!(on_disk < DISK_MIB * MIB / 3, "on disk {on_disk}");
    let gold = r.image_meta("gold").unwrap().stored_bytes;
    assert!(
        stored * 3 < gold,
        "the plain import stores the junk ({gold}), the capture must not ({stored})"
    );

    // Deployed again: the same files, clean filesystems, and the generalization's edits.
    r.create_volume("back", Some("captured"), None).unwrap();
    let back = r.open_volume("back", true).unwrap();
    let after = contents(back.as_ref(), &work, "back");
    assert_eq!(after[0], before[0], "ESP files differ");
    assert_eq!(after[2], before[2], "NTFS files differ");
    let strip = |v: &[(String, Vec<u8>)]| -> Vec<(String, Vec<u8>)> {
        v.iter()
            .filter(|(p, _)| p != "etc/hostname" && p != "etc/machine-id")
            .cloned()
            .collect()
    };
    assert_eq!(strip(&after[1]), strip(&before[1]), "ext4 files differ");
    assert!(after[1]
        .iter()
        .any(|(p, b)| p == "added.bin" && *b == added));
    assert!(after[1]
        .iter()
        .any(|(p, b)| p == "etc/hostname" && b == b"localhost\n"));
    assert!(!after[1].iter().any(|(p, _)| p == "etc/machine-id"));
    assert!(before[1].iter().any(|(p, _)| p == "etc/machine-id"));
    assert_eq!(after[0].len(), 6);
    assert_eq!(after[2].len(), 6);
}

#[test]
fn a_failed_generalization_leaves_no_image_and_nothing_behind() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("repo");
    let r = repo(&root);
    r.create_volume("v", None, Some(8 << 20)).unwrap();
    let progress = |_: u64, _: u64| {};
    let e = capture::capture(
        &r,
        "v",
        "img",
        &worker_opts(),
        |_: &Source| Err::<(), _>("script 2 failed"),
        &progress,
    )
    .unwrap_err();
    assert!(e.to_string().contains("script 2 failed"), "{e}");
    assert!(r.image_meta("img").is_err());
    assert_eq!(std::fs::read_dir(root.join("tmp")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(root.join("volumes/v/pins"))
            .unwrap()
            .count(),
        0
    );
}
