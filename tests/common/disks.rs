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

/// An XFS image from mkfs.xfs's prototype file: /etc with hostname, motd and old.
pub fn xfs_image(work: &Path, name: &str, extra: &[&str]) -> PathBuf {
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

/// Runs the lvm tools on `disk`'s partition `pv` through a loop device, with a private
/// configuration (no device-mapper here: nothing is activated).
pub struct Lvm {
    pub conf: PathBuf,
    pub lo: Loop,
}

impl Lvm {
    pub fn new(work: &Path, disk: &Path, pv: &Part) -> Lvm {
        let conf = work.join("lvm-conf");
        let lo = Loop::new(disk, pv, false);
        write_lvm_conf(&conf, &[&lo.0]);
        Lvm { conf, lo }
    }

    pub fn run(&self, args: &[&str]) -> String {
        ok(Command::new(tool("lvm", HINT))
            .args(args)
            .env("LVM_SYSTEM_DIR", &self.conf)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1"))
    }

    /// The PV on the loop device and VG `vg` (4 MiB extents) on it.
    pub fn create_vg(&self, vg: &str) {
        let lo = self.lo.0.as_str();
        self.run(&[
            "pvcreate",
            "-q",
            "--norestorefile",
            "--dataalignment",
            "1m",
            lo,
        ]);
        self.run(&["vgcreate", "-q", "-s", "4m", vg, lo]);
    }

    /// A linear LV `vg/lv` of `size` (`312M`), not activated (no device-mapper here).
    pub fn create_lv(&self, vg: &str, lv: &str, size: &str) {
        self.run(&[
            "lvcreate",
            "--driverloaded",
            "n",
            "-an",
            "-Zn",
            "-q",
            "-L",
            size,
            "-n",
            lv,
            vg,
        ]);
    }

    /// Where linear LV `vg/lv` lies on the disk.
    pub fn at(&self, pv: &Part, vg: &str, lv: &str) -> Part {
        let q = |args: &[&str]| {
            let mut all = vec![args[0], "--units", "b", "--nosuffix", "--noheadings"];
            all.extend_from_slice(&args[1..]);
            self.run(&all).trim().to_string()
        };
        let extent: u64 = q(&["vgs", "-o", "vg_extent_size", vg]).parse().unwrap();
        let pe_start: u64 = q(&["pvs", "-o", "pe_start", &self.lo.0]).parse().unwrap();
        let seg = q(&[
            "lvs",
            "--driverloaded",
            "n",
            "--separator",
            "|",
            "-o",
            "seg_size,seg_pe_ranges",
            &format!("{vg}/{lv}"),
        ]);
        let (size, ranges) = seg.split_once('|').unwrap();
        let first: u64 = ranges
            .rsplit_once(':')
            .unwrap()
            .1
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Part {
            start: pv.start + pe_start + first * extent,
            len: size.parse().unwrap(),
        }
    }
}

/// A RHEL-like golden image: GPT with a FAT32 ESP (sda1), /boot on XFS (sda2), and an LVM
/// PV (sda3) holding VG `rhel` with LV `root` (XFS) and LV `swap`. Returns the disk, its
/// partitions and the root LV's place.
pub fn rhel_disk(work: &Path) -> (PathBuf, Vec<Part>, Part) {
    let esp = work.join("esp.img");
    sized(&esp, 64);
    ok(Command::new(tool("mkfs.vfat", HINT))
        .args(["-F", "32", "-n", "ESP"])
        .arg(&esp));
    let boot = xfs_image(work, "boot", &[]);
    let pv = work.join("pv.img");
    sized(&pv, 340);
    let (disk, parts) = gpt_disk(work, &[(&esp, 64), (&boot, 300), (&pv, 340)]);
    let lvm = Lvm::new(work, &disk, &parts[2]);
    lvm.create_vg("rhel");
    lvm.create_lv("rhel", "root", "312M");
    lvm.create_lv("rhel", "swap", "16M");
    let root = lvm.at(&parts[2], "rhel", "root");
    drop(lvm);
    let files = work.join("rhel-files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("hostname"), "gold-rhel\n").unwrap();
    std::fs::write(
        files.join("os-release"),
        "NAME=\"Red Hat Enterprise Linux\"\nID=\"rhel\"\nVERSION_ID=\"9.4\"\n",
    )
    .unwrap();
    let proto = work.join("rhel.proto");
    std::fs::write(
        &proto,
        format!(
            "/dev/null\n0 0\nd--755 0 0\netc d--755 0 0\nhostname ---644 0 0 {}\n\
             os-release ---644 0 0 {}\nsysconfig d--755 0 0\n$\n$\nboot d--555 0 0\n$\nusr d--755 0 0\n$\n$\n",
            files.join("hostname").display(),
            files.join("os-release").display()
        ),
    )
    .unwrap();
    let img = work.join("rhel-root.img");
    sized(&img, root.len / MIB);
    ok(Command::new("mkfs.xfs")
        .args(["-q", "-f", "-L", "root", "-p"])
        .arg(&proto)
        .arg(&img));
    ok(Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", disk.display()))
        .args([
            "bs=1M",
            &format!("seek={}", root.start / MIB),
            "conv=notrunc,sparse",
            "status=none",
        ]));
    assert_eq!(root.start % MIB, 0);
    (disk, parts, root)
}

/// The noise a capture test writes and deletes: 45 MB of numbers that a kept file of
/// `seq 1 600000` never holds, so that no 4 KiB block of one is a block of the other. (A
/// script's host commands run in a directory of their own: the script runs this, and the
/// test runs it too, to know the blocks.)
pub const NOISE_CMD: &str = "seq 10000000 14999999";

/// Writes to `path` the capture tests' script: on /dev/sda1, the noise written and deleted
/// and `seq 1 600000` kept as /kept. Returns the noise's bytes.
pub fn write_noise_script(path: &Path) -> Vec<u8> {
    std::fs::write(
        path,
        format!(
            "mount /dev/sda1 /\n\
             !{NOISE_CMD} > ./junk\n\
             upload ./junk /junk\n\
             !seq 1 600000 > ./kept\n\
             upload ./kept /kept\n\
             rm /junk\n"
        ),
    )
    .unwrap();
    ok(Command::new("sh").args(["-c", NOISE_CMD])).into_bytes()
}

/// How many 4 KiB blocks of `file` (at 4 KiB offsets) are blocks of `noise`.
pub fn noise_blocks_in(file: &Path, noise: &[u8]) -> usize {
    let blocks: std::collections::HashSet<&[u8]> = noise.chunks_exact(4096).collect();
    let image = std::fs::read(file).unwrap();
    image
        .chunks_exact(4096)
        .filter(|b| blocks.contains(b))
        .count()
}
