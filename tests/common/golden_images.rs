//! Deterministic golden images for comparing strata's guestfish dialect with real guestfish:
//! raw disk files built with Debian's tools (sfdisk, mke2fs -d + debugfs, mkfs.fat + mtools,
//! lvm2, mkntfs + ntfs-3g) so that what guestfish prints about them (`ll`, `stat`,
//! `statvfs`, `checksum`, `inspect-*`...) is the same every time they are rebuilt. The
//! guestfish outputs recorded from these images live in tests/fixtures/guestfish/ (see its
//! README.md and tools/record-guestfish-fixtures); the images themselves are never committed.
//!
//! What is fixed: disk and partition UUIDs (sfdisk), filesystem UUIDs, labels and hash seeds
//! (mke2fs -U/-E hash_seed, mkfs.fat -i/--invariant, mkswap -U), every inode's
//! atime/mtime/ctime/crtime (source tree `touch -d`, then debugfs `sif ... ctime`, because
//! `mke2fs -d` copies the source files' ctime, which no tool can set), FAT entry times
//! (`mcopy -m`), NTFS times (`mkntfs -T`, then ntfs-3g under `faketime`). What is not: LVM
//! metadata text (vgcreate stamps creation_host/creation_time and random VG/LV ids), and,
//! rarely (1 build in 9 here), some bytes of the NTFS image; neither shows in guestfish's
//! output. Needs root (losetup for LVM, chown, the ntfs-3g FUSE
//! mount) and faketime (tools/install-deps).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::disks::{Loop, Part};
use super::ok;

const MIB: u64 = 1 << 20;

/// Every timestamp in the images: 2021-01-01 00:00:00 UTC. Far enough in the past that
/// `ls -l` (guestfish `ll`) prints the year rather than the time of day.
pub const EPOCH: i64 = 1_609_459_200;

/// A built image: the raw disk file and where its partitions lie (by partition number - 1).
pub struct Golden {
    pub path: PathBuf,
    pub parts: Vec<Part>,
}

/// The names of the images, as used for tests/fixtures/guestfish/<name>/.
pub const NAMES: [&str; 4] = ["debian-gpt", "fat16-mbr", "lvm-gpt", "windows-ntfs"];

/// Builds image `name` (one of [`NAMES`]) as `dir/<name>.raw`.
pub fn build(name: &str, dir: &Path) -> Golden {
    match name {
        "debian-gpt" => debian_gpt(dir),
        "fat16-mbr" => fat16_mbr(dir),
        "lvm-gpt" => lvm_gpt(dir),
        "windows-ntfs" => windows_ntfs(dir),
        other => panic!("no golden image called {other}; known: {NAMES:?}"),
    }
}

pub const DEBIAN_ROOT_UUID: &str = "0b9d6f8e-1c2a-4e35-9a41-d3b2c1a0e501";
pub const ESP_VOLID: &str = "1234ABCD";
const HASH_SEED: &str = "5a1d2c3b-4e5f-4061-8273-94a5b6c7d8e9";

const DEBIAN_OS_RELEASE: &str = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n\
    NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nVERSION=\"12 (bookworm)\"\n\
    VERSION_CODENAME=bookworm\nID=debian\nHOME_URL=\"https://www.debian.org/\"\n";

fn lines(n: usize) -> String {
    (1..=n).map(|i| format!("line {i}\n")).collect()
}

/// (a) 256 MiB GPT: sda1 a 64 MiB FAT32 ESP (label ESP, id 1234-ABCD) holding EFI/debian and
/// EFI/BOOT; sda2 a 190 MiB ext4 root (label root, UUID [`DEBIAN_ROOT_UUID`]) holding a small
/// Debian 12 tree: os-release, hostname `gold-deb`, an fstab by UUID, /boot with a kernel,
/// `/bin -> usr/bin`, a hard link (usr/bin/sh = usr/bin/dash), /home/user/notes.txt mode 0640
/// owned 1000:1000, /etc/issue.net without a trailing newline, /etc/lines (12 lines).
pub fn debian_gpt(dir: &Path) -> Golden {
    let root = tree(
        dir,
        "debian-root",
        &[
            ("etc/os-release", DEBIAN_OS_RELEASE.as_bytes()),
            ("etc/debian_version", b"12.5\n"),
            ("etc/hostname", b"gold-deb\n"),
            (
                "etc/fstab",
                format!(
                    "# /etc/fstab: static file system information.\n\
                     UUID={DEBIAN_ROOT_UUID} / ext4 errors=remount-ro 0 1\n\
                     UUID=1234-ABCD /boot/efi vfat umask=0077 0 1\n"
                )
                .as_bytes(),
            ),
            ("etc/hosts", b"127.0.0.1\tlocalhost\n127.0.1.1\tgold-deb\n"),
            ("etc/issue.net", b"Debian GNU/Linux 12"),
            ("etc/lines", lines(12).as_bytes()),
            (
                "etc/network/interfaces",
                b"auto lo\niface lo inet loopback\n",
            ),
            ("boot/vmlinuz-6.1.0-18-amd64", &[0x4d, 0x5a, 0, 1, 2, 3]),
            ("boot/config-6.1.0-18-amd64", b"CONFIG_EXT4_FS=y\n"),
            ("usr/bin/dash", b"#!/fake/dash\n"),
            ("usr/bin/true", b"#!/bin/sh\nexit 0\n"),
            ("home/user/notes.txt", b"secret notes\n"),
            ("root/.bashrc", b"PS1='# '\n"),
        ],
        &["boot/efi", "tmp", "var/log", "var/tmp", "usr/lib", "mnt"],
    );
    symlink("usr/bin", &root.join("bin"));
    symlink("/usr/lib/os-release-not-here", &root.join("etc/dangling"));
    std::fs::hard_link(root.join("usr/bin/dash"), root.join("usr/bin/sh")).unwrap();
    chown(&root.join("home/user"), 1000, 1000);
    chown(&root.join("home/user/notes.txt"), 1000, 1000);
    chmod(&root.join("home/user/notes.txt"), 0o640);
    chmod(&root.join("tmp"), 0o1777);
    chmod(&root.join("root"), 0o700);
    let esp = tree(
        dir,
        "debian-esp",
        &[
            ("EFI/debian/grubx64.efi", b"MZ fake grub\n"),
            ("EFI/debian/grub.cfg", b"search.fs_uuid 0b9d6f8e root\n"),
            ("EFI/BOOT/BOOTX64.EFI", b"MZ fake shim\n"),
        ],
        &[],
    );
    stamp(&root);
    stamp(&esp);

    let disk = dir.join("debian-gpt.raw");
    let parts = partition(
        &disk,
        256,
        "label: gpt\nlabel-id: 6D1B5C4E-3A2F-4B1C-9D8E-7F6A5B4C3D21\n\
         start=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, \
         uuid=1C0E5A3B-8F7D-4E2C-9B1A-0D3F5E7C9A01, name=\"EFI System\"\n\
         start=133120, size=389120, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, \
         uuid=2D1F6B4C-9A8E-4F3D-8C2B-1E4A6F8D0B02, name=\"root\"\n",
    );
    fat(&disk, &parts[0], 32, "ESP", ESP_VOLID, &esp);
    ext4(&disk, &parts[1], "root", DEBIAN_ROOT_UUID, &root);
    remove_trees(&[&root, &esp]);
    Golden { path: disk, parts }
}

/// (b) 64 MiB MBR (disk id 0x5eed0016) with one 60 MiB FAT16 partition (type 0x06, label
/// BOOTBANK, id 0016-CAFE): an ESXi-like boot.cfg, a README, a long file name, a nested dir.
pub fn fat16_mbr(dir: &Path) -> Golden {
    let src = tree(
        dir,
        "fat16",
        &[
            (
                "boot.cfg",
                b"bootstate=0\ntitle=Loading ESXi installer\nkernel=/b.b00\n\
                  kernelopt=runweasel\nmodules=/jumpstrt.gz --- /useropts.gz\nbuild=7.0.3\n",
            ),
            ("README.TXT", b"Golden image fixture\r\n"),
            ("Long File Name.txt", b"long names need VFAT entries\n"),
            ("dir/sub/file.txt", b"nested\n"),
            ("useropts.gz", &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]),
        ],
        &["empty"],
    );
    stamp(&src);
    let disk = dir.join("fat16-mbr.raw");
    let parts = partition(
        &disk,
        64,
        "label: dos\nlabel-id: 0x5eed0016\nstart=2048, size=122880, type=6\n",
    );
    fat(&disk, &parts[0], 16, "BOOTBANK", "0016CAFE", &src);
    remove_trees(&[&src]);
    Golden { path: disk, parts }
}

pub const LVM_ROOT_UUID: &str = "3e2d1c0b-5a49-4837-a625-14f3e2d1c0b9";

/// (c) 224 MiB GPT: sda1 a 64 MiB FAT32 ESP (label ESP, id 1234-ABCD, EFI/redhat/grub.cfg);
/// sda2 a 158 MiB LVM PV (PV UUID fixed) of VG `vg0` with LV `root` (96 MiB, ext4 UUID
/// [`LVM_ROOT_UUID`], a RHEL 8.9 tree, fstab naming /dev/mapper/vg0-root) and LV `swap`
/// (16 MiB, mkswap with a fixed UUID). The LVs are made without activation (no
/// device-mapper here); their filesystems are written at the offsets lvs/pvs report.
pub fn lvm_gpt(dir: &Path) -> Golden {
    let root = tree(
        dir,
        "lvm-root",
        &[
            (
                "etc/os-release",
                b"NAME=\"Red Hat Enterprise Linux\"\nVERSION=\"8.9 (Ootpa)\"\nID=\"rhel\"\n\
                  ID_LIKE=\"fedora\"\nVERSION_ID=\"8.9\"\nPLATFORM_ID=\"platform:el8\"\n\
                  PRETTY_NAME=\"Red Hat Enterprise Linux 8.9 (Ootpa)\"\n",
            ),
            (
                "etc/redhat-release",
                b"Red Hat Enterprise Linux release 8.9 (Ootpa)\n",
            ),
            ("etc/hostname", b"gold-rhel\n"),
            (
                "etc/fstab",
                b"/dev/mapper/vg0-root /         ext4 defaults 1 1\n\
                  UUID=1234-ABCD       /boot/efi vfat umask=0077,shortname=winnt 0 2\n\
                  /dev/mapper/vg0-swap none      swap defaults 0 0\n",
            ),
            ("etc/sysconfig/network", b"NETWORKING=yes\n"),
            ("usr/bin/true", b"#!/bin/sh\nexit 0\n"),
        ],
        &["boot/efi", "var/log", "tmp", "root", "home"],
    );
    symlink("usr/bin", &root.join("bin"));
    let esp = tree(
        dir,
        "lvm-esp",
        &[
            ("EFI/redhat/grub.cfg", b"set root=lvm/vg0-root\n"),
            ("EFI/BOOT/BOOTX64.EFI", b"MZ fake shim\n"),
        ],
        &[],
    );
    stamp(&root);
    stamp(&esp);

    let disk = dir.join("lvm-gpt.raw");
    let parts = partition(
        &disk,
        224,
        "label: gpt\nlabel-id: 7E2C6D5F-4B3A-4C2D-8E9F-0A1B2C3D4E5F\n\
         start=2048, size=131072, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, \
         uuid=3F2E1D0C-BA98-4765-8432-10FEDCBA9801, name=\"EFI System\"\n\
         start=133120, size=323584, type=E6D6D379-F507-44C2-A23C-238F2A3DF928, \
         uuid=4A3B2C1D-0E9F-4876-9543-21FEDCBA9802, name=\"lvm\"\n",
    );
    fat(&disk, &parts[0], 32, "ESP", ESP_VOLID, &esp);

    let lvm = Lvm::new(dir, &disk, &parts[1]);
    lvm.run(&[
        "pvcreate",
        "-q",
        "--norestorefile",
        "--uuid",
        "GoLdEn-PvPv-PvPv-PvPv-PvPv-PvPv-PvPv01",
        "--dataalignment",
        "1m",
        &lvm.dev(),
    ]);
    lvm.run(&["vgcreate", "-q", "-s", "4m", "vg0", &lvm.dev()]);
    lvm.lvcreate("root", "96M");
    lvm.lvcreate("swap", "16M");
    let lv_root = lvm.at(&parts[1], "root");
    let lv_swap = lvm.at(&parts[1], "swap");
    drop(lvm);
    ext4(&disk, &lv_root, "root", LVM_ROOT_UUID, &root);
    let swap = dir.join("lvm-swap.img");
    sized(&swap, lv_swap.len);
    ok(Command::new("mkswap")
        .args([
            "-q",
            "-L",
            "swap",
            "-U",
            "5f4e3d2c-1b0a-4998-8776-655443322110",
        ])
        .arg(&swap));
    lay(&swap, &disk, lv_swap.start);
    std::fs::remove_file(&swap).unwrap();
    remove_trees(&[&root, &esp]);
    std::fs::remove_dir_all(dir.join("lvm-conf")).unwrap();
    Golden { path: disk, parts }
}

/// (d) 128 MiB MBR (disk id 0x0d15c0de) with one 120 MiB NTFS partition (type 0x07, label
/// Windows, `mkntfs -T`): a fake Windows tree (Windows/System32/config, a PE32+ console
/// `cmd.exe` stub that `file` recognises, drivers/etc/hosts), Users/Public, Program Files,
/// a mixed-case file name and a file without a trailing newline. No registry hives, so
/// inspection finds Windows but no product name or version.
pub fn windows_ntfs(dir: &Path) -> Golden {
    let src = tree(
        dir,
        "windows",
        &[
            ("Windows/System32/cmd.exe", &pe32plus_console()),
            (
                "Windows/System32/drivers/etc/hosts",
                b"127.0.0.1       localhost\r\n",
            ),
            (
                "Windows/win.ini",
                b"; for 16-bit app support\r\n[fonts]\r\n",
            ),
            (
                "Users/Public/Desktop/ReadMe.txt",
                b"Hello from the golden image",
            ),
            ("Program Files/Common Files/x.dll", b"MZ"),
            ("pagefile.sys", &[0u8; 4096]),
            ("unattend.xml", b"<?xml version=\"1.0\"?>\n<unattend/>\n"),
        ],
        &["Windows/System32/config", "Windows/Temp", "PerfLogs"],
    );
    let disk = dir.join("windows-ntfs.raw");
    let parts = partition(
        &disk,
        128,
        "label: dos\nlabel-id: 0x0d15c0de\nstart=2048, size=245760, type=7, bootable\n",
    );
    ntfs(&disk, &parts[0], "Windows", &src);
    remove_trees(&[&src]);
    Golden { path: disk, parts }
}

/// A minimal PE32+ header (x86-64, console subsystem), enough for `file` (which libguestfs
/// inspection runs on cmd.exe to find the architecture).
fn pe32plus_console() -> Vec<u8> {
    let mut b = vec![0u8; 1024];
    b[0..2].copy_from_slice(b"MZ");
    b[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    b[0x84..0x86].copy_from_slice(&0x8664u16.to_le_bytes());
    b[0x94..0x96].copy_from_slice(&0xf0u16.to_le_bytes());
    b[0x96..0x98].copy_from_slice(&0x22u16.to_le_bytes());
    b[0x98..0x9a].copy_from_slice(&0x20bu16.to_le_bytes());
    b[0x98 + 68..0x98 + 70].copy_from_slice(&3u16.to_le_bytes());
    b
}

/// A fresh source tree `dir/<name>.tree` with `files` and empty `dirs`.
fn tree(dir: &Path, name: &str, files: &[(&str, &[u8])], dirs: &[&str]) -> PathBuf {
    let root = dir.join(format!("{name}.tree"));
    if root.exists() {
        std::fs::remove_dir_all(&root).unwrap();
    }
    std::fs::create_dir_all(&root).unwrap();
    for (p, body) in files {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    for d in dirs {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    root
}

fn remove_trees(trees: &[&Path]) {
    for t in trees {
        std::fs::remove_dir_all(t).unwrap();
    }
}

fn symlink(target: &str, at: &Path) {
    std::os::unix::fs::symlink(target, at).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets atime and mtime of everything in `root` (symlinks themselves included) to EPOCH.
fn stamp(root: &Path) {
    ok(Command::new("find")
        .arg(root)
        .args(["-exec", "touch", "-h", "-d"])
        .arg(format!("@{EPOCH}"))
        .args(["{}", "+"]));
}

/// Every path in `root`, relative, with a leading `/`, sorted (the root itself excluded).
fn paths(root: &Path) -> Vec<String> {
    let out = ok(Command::new("find")
        .arg(".")
        .arg("-mindepth")
        .arg("1")
        .current_dir(root));
    let mut v: Vec<String> = out
        .lines()
        .map(|l| l.trim_start_matches('.').to_string())
        .collect();
    v.sort();
    v
}

fn sized(f: &Path, len: u64) {
    std::fs::File::create(f).unwrap().set_len(len).unwrap();
}

/// A sparse disk of `mib` MiB partitioned by the sfdisk `script`; returns its partitions.
fn partition(disk: &Path, mib: u64, script: &str) -> Vec<Part> {
    sized(disk, mib * MIB);
    let mut child = Command::new("sfdisk")
        .args(["-q", "--no-reread", "--no-tell-kernel", "-w", "never"])
        .arg(disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk {disk:?}");
    let json = ok(Command::new("sfdisk").arg("--json").arg(disk));
    // sfdisk --json: "start": N, "size": N per partition, in 512-byte sectors.
    let num = |s: &str, key: &str| -> Vec<u64> {
        s.match_indices(key)
            .map(|(i, _)| {
                s[i + key.len()..]
                    .trim_start_matches([' ', ':'])
                    .chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    let starts = num(&json, "\"start\"");
    let sizes = num(&json, "\"size\"");
    starts
        .iter()
        .zip(sizes)
        .map(|(s, n)| Part {
            start: s * 512,
            len: n * 512,
        })
        .collect()
}

/// Copies the file `img` into `disk` at byte `at`.
fn lay(img: &Path, disk: &Path, at: u64) {
    assert_eq!(at % MIB, 0, "partitions and LVs are MiB-aligned");
    ok(Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", disk.display()))
        .args([
            "bs=1M",
            &format!("seek={}", at / MIB),
            "conv=notrunc,sparse",
            "status=none",
        ]));
}

/// An ext4 made from `src` at `part` of `disk`, with fixed UUID, hash seed and times.
fn ext4(disk: &Path, part: &Part, label: &str, uuid: &str, src: &Path) {
    let img = disk.with_extension(format!("{label}-{}.ext4", part.start / MIB));
    sized(&img, part.len);
    let fake = EPOCH.to_string();
    ok(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", label, "-U", uuid])
        .arg("-E")
        .arg(format!("hash_seed={HASH_SEED},root_owner=0:0"))
        .arg("-d")
        .arg(src)
        .arg(&img)
        .env("E2FSPROGS_FAKE_TIME", &fake));
    // mke2fs -d copies each source file's ctime (which no tool can set): reset them all.
    let mut cmds = String::new();
    for p in ["/".to_string(), "/lost+found".to_string()]
        .into_iter()
        .chain(paths(src))
    {
        cmds.push_str(&format!("sif \"{p}\" ctime @{EPOCH}\n"));
    }
    let script = img.with_extension("debugfs");
    std::fs::write(&script, cmds).unwrap();
    ok(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(&img)
        .env("E2FSPROGS_FAKE_TIME", &fake));
    let check = Command::new("e2fsck")
        .arg("-fn")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "e2fsck {img:?}: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    lay(&img, disk, part.start);
    std::fs::remove_file(&img).unwrap();
    std::fs::remove_file(&script).unwrap();
}

/// A FAT`bits` at `part` of `disk` (volume id `id`, `--invariant`) holding `src` (mcopy -m
/// keeps the tree's times).
fn fat(disk: &Path, part: &Part, bits: u32, label: &str, id: &str, src: &Path) {
    let img = disk.with_extension(format!("{label}-{}.fat", part.start / MIB));
    sized(&img, part.len);
    ok(Command::new("mkfs.fat")
        .arg("--invariant")
        .args(["-F", &bits.to_string(), "-n", label, "-i", id])
        .args(["-h", &(part.start / 512).to_string()])
        .arg(&img));
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    if !entries.is_empty() {
        ok(Command::new("mcopy")
            .args(["-s", "-m", "-Q", "-i"])
            .arg(&img)
            .args(&entries)
            .arg("::/")
            .env("MTOOLS_SKIP_CHECK", "1"));
    }
    let check = Command::new("fsck.fat")
        .arg("-n")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "fsck.fat {img:?}: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    lay(&img, disk, part.start);
    std::fs::remove_file(&img).unwrap();
}

/// An NTFS at `part` of `disk` (`mkntfs -T`: zero times, fixed serial) filled from `src`
/// through an ntfs-3g FUSE mount running under `faketime` at EPOCH.
fn ntfs(disk: &Path, part: &Part, label: &str, src: &Path) {
    let img = disk.with_extension(format!("{label}-{}.ntfs", part.start / MIB));
    sized(&img, part.len);
    let (heads, sectors) = ("255", "63");
    ok(Command::new("mkntfs")
        .args([
            "-q", "-F", "-T", "-L", label, "-H", heads, "-S", sectors, "-s", "512",
        ])
        .args(["-p", &(part.start / 512).to_string()])
        .arg(&img));
    let mnt = img.with_extension("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    // ntfs-3g stamps every change with the time of day (also in the FILE_NAME copies in
    // the indexes): run it on a frozen clock so every time is EPOCH.
    let mut child = Command::new("faketime")
        .args(["-f", "2021-01-01 00:00:00", "ntfs-3g", "-o", "no_detach"])
        .arg(&img)
        .arg(&mnt)
        .env("TZ", "UTC")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mounted = || {
        Command::new("mountpoint")
            .arg("-q")
            .arg(&mnt)
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    // Bounded wait for the FUSE mount to appear (ntfs-3g has no readiness signal).
    let mut up = false;
    for _ in 0..100 {
        if mounted() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(up, "ntfs-3g did not mount {img:?}");
    let copy = Command::new("cp")
        .arg("-rT")
        .arg(src)
        .arg(&mnt)
        .status()
        .unwrap();
    let _ = Command::new("fusermount").arg("-u").arg(&mnt).status();
    assert!(child.wait().unwrap().success(), "ntfs-3g on {img:?}");
    std::fs::remove_dir(&mnt).unwrap();
    assert!(copy.success(), "cp into the ntfs-3g mount of {img:?}");
    let check = Command::new("ntfsfix")
        .arg("-n")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "ntfsfix -n {img:?}: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    lay(&img, disk, part.start);
    std::fs::remove_file(&img).unwrap();
}

/// The lvm2 tools confined to one loop device over a partition (private LVM_SYSTEM_DIR
/// whose filter accepts only it; no backups, udev, hints or daemons), as tests/fs_lvm.rs.
struct Lvm {
    conf: PathBuf,
    lo: Loop,
}

impl Lvm {
    fn new(dir: &Path, disk: &Path, part: &Part) -> Lvm {
        let conf = dir.join("lvm-conf");
        let lo = Loop::new(disk, part, false);
        super::disks::write_lvm_conf(&conf, &[&lo.0]);
        Lvm { conf, lo }
    }

    fn dev(&self) -> String {
        self.lo.0.clone()
    }

    fn run(&self, args: &[&str]) -> String {
        ok(Command::new("lvm")
            .args(args)
            .env("LVM_SYSTEM_DIR", &self.conf)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1"))
    }

    fn lvcreate(&self, lv: &str, size: &str) {
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
            "vg0",
        ]);
    }

    /// Where linear LV `vg0/lv` lies on the disk (its PV is partition `part`).
    fn at(&self, part: &Part, lv: &str) -> Part {
        let report = |args: &[&str]| {
            let mut all = vec![args[0], "--units", "b", "--nosuffix", "--noheadings"];
            all.extend_from_slice(&args[1..]);
            self.run(&all)
        };
        let extent: u64 = report(&["vgs", "-o", "vg_extent_size", "vg0"])
            .trim()
            .parse()
            .unwrap();
        let pe_start: u64 = report(&["pvs", "-o", "pe_start", &self.dev()])
            .trim()
            .parse()
            .unwrap();
        let seg = report(&[
            "lvs",
            "--driverloaded",
            "n",
            "--separator",
            "|",
            "-o",
            "seg_size,seg_pe_ranges",
            &format!("vg0/{lv}"),
        ]);
        let line = seg.trim();
        let (size, ranges) = line.split_once('|').unwrap();
        assert!(!ranges.contains(' '), "vg0/{lv} is linear: {line}");
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
            start: part.start + pe_start + first * extent,
            len: size.parse().unwrap(),
        }
    }
}

/// Where linear LV `vg0/<lv>` of an [`lvm_gpt`]-style disk lies (its PV is partition 2,
/// `parts[1]`), read from the disk's own LVM metadata with the lvm2 tools, without
/// activation (no device-mapper here). `dir` holds the tools' private configuration for
/// the duration of the call.
pub fn lvm_lv(dir: &Path, disk: &Path, parts: &[Part], lv: &str) -> Part {
    let lvm = Lvm::new(dir, disk, &parts[1]);
    let at = lvm.at(&parts[1], lv);
    drop(lvm);
    std::fs::remove_dir_all(dir.join("lvm-conf")).unwrap();
    at
}
