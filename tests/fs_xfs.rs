//! XFS and btrfs through the VM adapter (src/fs/vm): a plan script run by the real binary
//! (`strata shell VOL -f SCRIPT --write`) edits filesystems made by mkfs.xfs (defaults:
//! v5, CRCs, reflink; and reflink=0) and mkfs.btrfs, inside Debian's kernel under QEMU; then
//! `xfs_repair -n` and `btrfs check --readonly` must find them clean, and the host kernel's
//! read-only loop mount (the oracle) must read back what the script wrote.
//!
//! Needs root (loop mounts), xfsprogs, btrfs-progs, qemu-system-x86 and a Debian kernel in
//! /boot (tools/install-deps).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::disks::{self, KernelMount, Part};
use common::{ok, tool, Repo};

const HINT: &str = "tools/install-deps";

const MIB: u64 = 1 << 20;

/// Writes a GPT disk of `parts` (MiB each, from 1 MiB) with each image copied in.
fn gpt_disk(work: &Path, images: &[(&Path, u64)]) -> (PathBuf, Vec<Part>) {
    let disk = work.join("gold.raw");
    let total: u64 = images.iter().map(|(_, m)| m).sum::<u64>() + 2;
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(total * MIB)
        .unwrap();
    let mut table = String::from("label: gpt\n");
    let mut parts = Vec::new();
    let mut at = 1;
    for (_, mib) in images {
        table.push_str(&format!("start={at}MiB,size={mib}MiB,type=L\n"));
        parts.push(Part {
            start: at * MIB,
            len: mib * MIB,
        });
        at += mib;
    }
    let mut c = Command::new(tool("sfdisk", HINT));
    c.arg("-q").arg(&disk).stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), table.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    for ((img, _), p) in images.iter().zip(&parts) {
        ok(Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", disk.display()))
            .args([
                "bs=1M",
                &format!("seek={}", p.start / MIB),
                "conv=notrunc,sparse",
                "status=none",
            ]));
    }
    (disk, parts)
}

fn sized(path: &Path, mib: u64) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(mib * MIB)
        .unwrap();
}

/// An XFS image from mkfs.xfs's prototype file: /etc with hostname, motd and old.
fn xfs_image(work: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let files = work.join(format!("{name}-files"));
    std::fs::create_dir_all(&files).unwrap();
    for (f, text) in [
        ("hostname", "golden\n"),
        ("motd", "welcome\n"),
        ("old", "x\n"),
    ] {
        std::fs::write(files.join(f), text).unwrap();
    }
    let proto = work.join(format!("{name}.proto"));
    let f = |n: &str| files.join(n).display().to_string();
    std::fs::write(
        &proto,
        format!(
            "/dev/null\n0 0\nd--755 0 0\netc d--755 0 0\nhostname ---644 0 0 {}\nmotd ---644 0 0 {}\n\
             old ---644 0 0 {}\n$\n$\n",
            f("hostname"),
            f("motd"),
            f("old")
        ),
    )
    .unwrap();
    let img = work.join(format!("{name}.img"));
    sized(&img, 300);
    ok(Command::new(tool("mkfs.xfs", HINT))
        .args(["-q", "-f", "-L", name])
        .args(extra)
        .arg("-p")
        .arg(&proto)
        .arg(&img));
    img
}

fn btrfs_image(work: &Path) -> PathBuf {
    let root = work.join("btrfs-root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/issue"), "SLES-like\n").unwrap();
    let img = work.join("btrfs.img");
    sized(&img, 200);
    ok(Command::new(tool("mkfs.btrfs", HINT))
        .args(["-q", "-f", "-L", "sles", "--rootdir"])
        .arg(&root)
        .arg(&img));
    img
}

/// One partition of `disk` copied out, for the checkers that take no offset.
fn part_file(disk: &Path, p: &Part, out: &Path) -> PathBuf {
    ok(Command::new("dd")
        .arg(format!("if={}", disk.display()))
        .arg(format!("of={}", out.display()))
        .args([
            "bs=1M",
            &format!("skip={}", p.start / MIB),
            &format!("count={}", p.len / MIB),
            "conv=sparse",
            "status=none",
        ]));
    out.to_path_buf()
}

fn xfs_repair_clean(img: &Path) {
    let o = Command::new(tool("xfs_repair", HINT))
        .arg("-n")
        .arg(img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "xfs_repair -n {}: {}{}",
        img.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn btrfs_check_clean(img: &Path) {
    let o = Command::new(tool("btrfs", HINT))
        .args(["check", "--readonly"])
        .arg(img)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "btrfs check {}: {}{}",
        img.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn read(m: &KernelMount, p: &str) -> String {
    std::fs::read_to_string(m.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// One script, one VM: three filesystems mounted nested (XFS with reflink at /, XFS without
/// at /data, btrfs at /srv), edits on each, then the checkers and the kernel's view.
#[test]
fn a_script_edits_nested_xfs_and_btrfs_and_the_checkers_find_them_clean() {
    let r = Repo::new();
    let a = xfs_image(&r.work, "root", &[]);
    let b = xfs_image(&r.work, "data", &["-m", "reflink=0"]);
    let c = btrfs_image(&r.work);
    let (disk, parts) = gpt_disk(&r.work, &[(&a, 300), (&b, 300), (&c, 200)]);
    r.ok(&["image", "import", disk.to_str().unwrap(), "--name", "gold"]);
    r.ok(&["volume", "create", "web", "--from", "gold"]);
    let gold = r.path("gold-before.raw");
    r.ok(&["image", "export", "gold", gold.to_str().unwrap()]);

    let script = r.path("edit.fish");
    std::fs::write(
        &script,
        "list-filesystems\n\
         mount /dev/sda1 /\n\
         mkdir-p /data\n\
         mkdir-p /srv\n\
         mount /dev/sda2 /data\n\
         mount /dev/sda3 /srv\n\
         write /etc/hostname \"web-01\\n\"\n\
         mkdir-p /opt/app/conf\n\
         upload -<<EOF /opt/app/conf/app.conf\nkey=value\nEOF\n\
         chmod 0750 /opt/app\n\
         ln-s /etc/hostname /etc/hn-link\n\
         rm /etc/old\n\
         mv /etc/motd /etc/motd.orig\n\
         !seq 1 300000 > ./big\n\
         upload ./big /data/big\n\
         write /data/note \"no reflink here\\n\"\n\
         write /srv/note \"on btrfs\\n\"\n\
         mkdir-p /srv/a/b\n\
         touch /srv/a/b/c\n\
         cat /etc/hostname\n\
         umount-all\n",
    )
    .unwrap();
    let out = r.ok(&["shell", "web", "-f", script.to_str().unwrap(), "--write"]);
    assert!(out.contains("/dev/sda1: xfs"), "{out}");
    assert!(out.contains("/dev/sda3: btrfs"), "{out}");
    assert!(out.contains("web-01"), "{out}");

    let raw = r.path("web.raw");
    r.ok(&["volume", "export", "web", raw.to_str().unwrap()]);
    let pa = part_file(&raw, &parts[0], &r.path("p1.img"));
    let pb = part_file(&raw, &parts[1], &r.path("p2.img"));
    let pc = part_file(&raw, &parts[2], &r.path("p3.img"));
    xfs_repair_clean(&pa);
    xfs_repair_clean(&pb);
    btrfs_check_clean(&pc);

    let m = KernelMount::new(&raw, &parts[0], "xfs");
    assert_eq!(read(&m, "etc/hostname"), "web-01\n");
    assert_eq!(read(&m, "opt/app/conf/app.conf"), "key=value\n");
    assert_eq!(read(&m, "etc/motd.orig"), "welcome\n");
    assert!(!m.path("etc/old").exists() && !m.path("etc/motd").exists());
    assert_eq!(
        std::fs::read_link(m.path("etc/hn-link")).unwrap(),
        Path::new("/etc/hostname")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(m.path("opt/app"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o750);
    drop(m);
    let m = KernelMount::new(&raw, &parts[1], "xfs");
    let seq = ok(Command::new("seq").args(["1", "300000"]));
    assert_eq!(read(&m, "big"), seq);
    assert_eq!(read(&m, "note"), "no reflink here\n");
    drop(m);
    let m = KernelMount::new(&raw, &parts[2], "btrfs");
    assert_eq!(read(&m, "note"), "on btrfs\n");
    assert_eq!(read(&m, "etc/issue"), "SLES-like\n");
    assert!(m.path("a/b/c").is_file());
    drop(m);

    let after = r.path("gold-after.raw");
    r.ok(&["image", "export", "gold", after.to_str().unwrap()]);
    assert_eq!(
        disks::sha256(&gold),
        disks::sha256(&after),
        "the golden image is unchanged"
    );
}

/// A damaged XFS superblock (the magic kept, so detection still says xfs): the mount fails
/// with the kernel's reason, the script fails, and the volume is as it was.
#[test]
fn a_corrupt_xfs_superblock_fails_the_script_with_the_kernels_reason() {
    let r = Repo::new();
    let a = xfs_image(&r.work, "root", &[]);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
        // sb_blocksize .. sb_rextents and the AG geometry: garbage.
        f.seek(SeekFrom::Start(4)).unwrap();
        f.write_all(&[0xA5; 100]).unwrap();
    }
    let (disk, _parts) = gpt_disk(&r.work, &[(&a, 300)]);
    r.ok(&["image", "import", disk.to_str().unwrap(), "--name", "gold"]);
    r.ok(&["volume", "create", "web", "--from", "gold"]);
    let before = r.path("before.raw");
    r.ok(&["volume", "export", "web", before.to_str().unwrap()]);
    let script = r.path("edit.fish");
    std::fs::write(&script, "mount /dev/sda1 /\nwrite /etc/hostname \"x\"\n").unwrap();
    let err = r.fails(&["shell", "web", "-f", script.to_str().unwrap(), "--write"]);
    assert!(err.contains("mount"), "{err}");
    assert!(
        err.contains("XFS") || err.contains("xfs"),
        "the error carries the kernel's words: {err}"
    );
    let after = r.path("after.raw");
    r.ok(&["volume", "export", "web", after.to_str().unwrap()]);
    assert_eq!(disks::sha256(&before), disks::sha256(&after));
}
