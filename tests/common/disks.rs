//! Disk fixtures for the filesystem tests, made with the real tools (sfdisk, mkfs.vfat,
//! mke2fs -d, mkntfs), and loop devices (with Drop guards) to check the results with
//! fsck and the kernel.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{ok, tool};

/// Where each partition of a fixture lies, in bytes.
pub struct Part {
    pub start: u64,
    pub len: u64,
}

/// A 256 MiB GPT disk: /dev/sda1 a 64 MiB FAT32 ESP labelled ESP, /dev/sda2 an ext4 root
/// (mke2fs 1.47 defaults, label root) made from the directory `rootfs`.
pub fn gpt_esp_ext4(work: &Path, rootfs: &Path) -> (PathBuf, Vec<Part>) {
    let disk = work.join("gold.raw");
    let esp = work.join("esp.img");
    let root = work.join("root.img");
    for (f, mib) in [(&disk, 256u64), (&esp, 64), (&root, 190)] {
        std::fs::File::create(f)
            .unwrap()
            .set_len(mib << 20)
            .unwrap();
    }
    let mut c = Command::new("sfdisk");
    c.arg("-q").arg(&disk).stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        b"label: gpt\nstart=1MiB,size=64MiB,type=U\nstart=65MiB,size=190MiB,type=L\n",
    )
    .unwrap();
    assert!(child.wait().unwrap().success());
    ok(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "ESP"])
        .arg(&esp));
    ok(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "root", "-d"])
        .arg(rootfs)
        .arg(&root));
    for (img, at) in [(&esp, 1u64), (&root, 65)] {
        ok(Command::new("dd")
            .arg(format!("if={}", img.display()))
            .arg(format!("of={}", disk.display()))
            .args([
                "bs=1M",
                &format!("seek={at}"),
                "conv=notrunc,sparse",
                "status=none",
            ]));
    }
    let parts = vec![
        Part {
            start: 1 << 20,
            len: 64 << 20,
        },
        Part {
            start: 65 << 20,
            len: 190 << 20,
        },
    ];
    (disk, parts)
}

/// A loop device over a byte range of a file; detached on drop.
pub struct Loop(pub String);

impl Loop {
    pub fn new(file: &Path, part: &Part, read_only: bool) -> Loop {
        let mut c = Command::new("losetup");
        c.arg("-f")
            .arg("--show")
            .arg("-o")
            .arg(part.start.to_string())
            .arg("--sizelimit")
            .arg(part.len.to_string());
        if read_only {
            c.arg("-r");
        }
        Loop(ok(c.arg(file)).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// A kernel mount of a loop device (read-only), unmounted on drop.
pub struct KernelMount {
    pub dir: tempfile::TempDir,
    _loop: Loop,
}

impl KernelMount {
    pub fn new(file: &Path, part: &Part, fstype: &str) -> KernelMount {
        let lo = Loop::new(file, part, true);
        let dir = tempfile::tempdir().unwrap();
        ok(Command::new("mount")
            .args(["-t", fstype, "-o", "ro"])
            .arg(&lo.0)
            .arg(dir.path()));
        KernelMount { dir, _loop: lo }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel.trim_start_matches('/'))
    }
}

impl Drop for KernelMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// e2fsck -fn of a partition of a raw disk; returns (clean, output).
pub fn e2fsck(file: &Path, part: &Part) -> (bool, String) {
    let lo = Loop::new(file, part, true);
    let o = Command::new("e2fsck")
        .arg("-fn")
        .arg(&lo.0)
        .output()
        .unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// fsck.fat -n of a partition of a raw disk; returns (clean, output).
pub fn fsck_fat(file: &Path, part: &Part) -> (bool, String) {
    let lo = Loop::new(file, part, true);
    let o = Command::new("fsck.fat")
        .arg("-n")
        .arg(&lo.0)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// A file's bytes from a FAT partition of a raw disk, read by mtools (these machines'
/// kernels have no vfat driver, so mtools is the second opinion).
pub fn mtools_read(file: &Path, part: &Part, path: &str) -> Vec<u8> {
    let o = Command::new("mcopy")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{}", file.display(), part.start))
        .arg(format!("::{path}"))
        .arg("-")
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mcopy {path}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// sha256 of a whole file, as hex.
pub fn sha256(file: &Path) -> String {
    let out = ok(Command::new("sha256sum").arg(file));
    out.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Writes an `lvm.conf` into `conf` that lets the LVM tools see `devices` only (loop
/// devices), with no backups, udev, hints or daemons: nothing outside `conf` is written or
/// asked. Point `LVM_SYSTEM_DIR` at `conf` to use it.
pub fn write_lvm_conf(conf: &Path, devices: &[&str]) {
    std::fs::create_dir_all(conf.join("lock")).unwrap();
    let accept: String = devices.iter().map(|d| format!("\"a|^{d}$|\", ")).collect();
    std::fs::write(
        conf.join("lvm.conf"),
        format!(
            "devices {{\n filter = [ {accept}\"r|.*|\" ]\n global_filter = [ {accept}\"r|.*|\" ]\n \
             use_devicesfile = 0\n obtain_device_list_from_udev = 0\n \
             external_device_info_source = \"none\"\n hints = \"none\"\n}}\n\
             global {{\n locking_dir = \"{}\"\n use_lvmpolld = 0\n event_activation = 0\n}}\n\
             activation {{\n udev_sync = 0\n udev_rules = 0\n monitoring = 0\n}}\n\
             backup {{\n backup = 0\n archive = 0\n}}\n",
            conf.join("lock").display()
        ),
    )
    .unwrap();
}

// ---- Fixtures for the VM-edited filesystems (XFS, btrfs): tests/fs_xfs.rs, fs_btrfs.rs.

const HINT: &str = "tools/install-deps";

pub const MIB: u64 = 1 << 20;

/// Writes a GPT disk of `parts` (MiB each, from 1 MiB) with each image copied in.
pub fn gpt_disk(work: &Path, images: &[(&Path, u64)]) -> (PathBuf, Vec<Part>) {
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

pub fn sized(path: &Path, mib: u64) {
    std::fs::File::create(path)
        .unwrap()
        .set_len(mib * MIB)
        .unwrap();
}

/// One partition of `disk` copied out, for the checkers that take no offset.
pub fn part_file(disk: &Path, p: &Part, out: &Path) -> PathBuf {
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

pub fn xfs_repair_clean(img: &Path) {
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

pub fn btrfs_check_clean(img: &Path) {
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
