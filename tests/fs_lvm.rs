//! `strata fs` on LVM, end to end through the real binary: a golden image whose GPT disk
//! holds a FAT ESP and two LVM partitions (VG `rhel`: a RHEL 8 root, a `var` of two
//! segments, swap and a thin pool with a thin LV; VG `my-vg`, whose dash device-mapper
//! doubles), built with sfdisk and the lvm2 tools (no activation: these kernels have no
//! device-mapper) and mke2fs at the offsets `lvs` and `pvs` give. Edits go in through
//! `/dev/VG/LV` and `/dev/mapper/VG-LV`; the judges are e2fsck and a kernel mount of each LV
//! cut out of the exported volume at those same offsets. Needs root (loop devices).
//!
//! The lvm2 tools run with a private LVM_SYSTEM_DIR whose filter accepts only the fixture's
//! own loop devices, so they neither see nor touch the host's LVM state or another test's,
//! and the fixture can use the VG names a real RHEL disk has.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::disks::{self, KernelMount, Loop, Part};
use common::{ok, Repo};

const MIB: u64 = 1 << 20;
/// GPT type of a Linux LVM partition.
const LVM_TYPE: &str = "E6D6D379-F507-44C2-A23C-238F2A3DF928";

/// Whether this machine can build the fixture; prints why not.
fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root; skipping the LVM end-to-end tests (CI runs them as root)");
        return false;
    }
    for t in ["lvm", "losetup", "sfdisk", "mke2fs", "e2fsck", "mkfs.vfat"] {
        if !common::have(t) {
            eprintln!("note: {t} missing (tools/install-deps installs it); skipping");
            return false;
        }
    }
    true
}

/// The lvm2 tools confined to a few loop devices (each over one partition of a disk file).
struct Lvm {
    conf: PathBuf,
    /// The loop devices (detached on drop) and where their partitions start on the disk.
    pvs: Vec<(Loop, u64)>,
}

impl Lvm {
    fn new(dir: &Path, disk: &Path, parts: &[&Part]) -> Lvm {
        let conf = dir.join("lvm");
        let pvs: Vec<(Loop, u64)> = parts
            .iter()
            .map(|p| (Loop::new(disk, p, false), p.start))
            .collect();
        let devices: Vec<&str> = pvs.iter().map(|(l, _)| l.0.as_str()).collect();
        disks::write_lvm_conf(&conf, &devices);
        Lvm { conf, pvs }
    }

    fn pv(&self, i: usize) -> &str {
        &self.pvs[i].0 .0
    }

    fn run(&self, args: &[&str]) -> String {
        ok(Command::new("lvm")
            .args(args)
            .env("LVM_SYSTEM_DIR", &self.conf)
            .env("LVM_SUPPRESS_FD_WARNINGS", "1"))
    }

    /// A linear LV, not activated or zeroed (there is no device-mapper to do either).
    fn lvcreate(&self, vg: &str, lv: &str, size: &str) {
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

    /// Where `vg/lv`'s segments lie on the disk, in LV order: from lvs, pvs and vgs, not
    /// from strata's own parse.
    fn segments(&self, vg: &str, lv: &str) -> Vec<Part> {
        let report = |args: &[&str]| {
            let mut all = vec![args[0], "--units", "b", "--nosuffix", "--noheadings"];
            all.extend_from_slice(&args[1..]);
            self.run(&all)
        };
        let extent: u64 = report(&["vgs", "-o", "vg_extent_size", vg])
            .trim()
            .parse()
            .unwrap();
        let pe_starts: BTreeMap<String, u64> =
            report(&["pvs", "--separator", "|", "-o", "pv_name,pe_start"])
                .lines()
                .filter_map(|l| l.trim().split_once('|'))
                .map(|(d, s)| (d.to_string(), s.parse().unwrap()))
                .collect();
        let path = format!("{vg}/{lv}");
        let text = report(&[
            "lvs",
            "--driverloaded",
            "n",
            "--separator",
            "|",
            "-o",
            "seg_start,seg_size,seg_pe_ranges",
            &path,
        ]);
        let mut segs: Vec<(u64, Part)> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let f: Vec<&str> = l.trim().split('|').collect();
                assert_eq!(f.len(), 3, "{l}");
                let (dev, pes) = f[2].rsplit_once(':').unwrap();
                let first: u64 = pes.split('-').next().unwrap().parse().unwrap();
                let part_start = self
                    .pvs
                    .iter()
                    .find(|(l, _)| l.0 == dev)
                    .unwrap_or_else(|| panic!("{path} lies on {dev}, not a fixture PV"))
                    .1;
                let start = part_start + pe_starts[dev] + first * extent;
                (
                    f[0].parse().unwrap(),
                    Part {
                        start,
                        len: f[1].parse().unwrap(),
                    },
                )
            })
            .collect();
        segs.sort_by_key(|s| s.0);
        let mut at = 0;
        for (lv_offset, p) in &segs {
            assert_eq!(*lv_offset, at, "{path}: segments are contiguous in the LV");
            at += p.len;
        }
        segs.into_iter().map(|s| s.1).collect()
    }

    /// Turns LVs `pdata` and `pmeta` of `vg` into thin pool `pool00` holding thin LV
    /// `thin_lv`, through vgcfgbackup and vgcfgrestore: lvcreate refuses to make a pool
    /// without device-mapper, but LVM restores such metadata as written.
    fn make_thin_lv(&self, dir: &Path, vg: &str, thin_lv: &str) {
        let file = dir.join(format!("{vg}.vgcfg"));
        let f = file.to_str().unwrap();
        self.run(&["vgcfgbackup", "--driverloaded", "n", "-f", f, vg]);
        let mut t = std::fs::read_to_string(&file).unwrap();
        for (from, to) in [("pdata", "pool00_tdata"), ("pmeta", "pool00_tmeta")] {
            let at = t.find(&format!("\t{from} {{")).unwrap() + 1;
            t.replace_range(at..at + from.len(), to);
            // A pool's data and metadata LVs are hidden.
            let vis = at + t[at..].find(", \"VISIBLE\"]").unwrap();
            t.replace_range(vis..vis + ", \"VISIBLE\"]".len(), "]");
        }
        let lvs = format!(
            "\t\tpool00 {{\nid = \"Pool00-oooo-oooo-oooo-oooo-oooo-oooool\"\n\
             status = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\nsegment_count = 1\n\
             segment1 {{\nstart_extent = 0\nextent_count = 1\ntype = \"thin-pool\"\n\
             metadata = \"pool00_tmeta\"\npool = \"pool00_tdata\"\ntransaction_id = 1\n\
             chunk_size = 128\ndiscards = \"passdown\"\nzero_new_blocks = 0\n}}\n}}\n\
             \t\t{thin_lv} {{\nid = \"Thiiii-iiii-iiii-iiii-iiii-iiii-iiiinL\"\n\
             status = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\nsegment_count = 1\n\
             segment1 {{\nstart_extent = 0\nextent_count = 2\ntype = \"thin\"\n\
             thin_pool = \"pool00\"\ntransaction_id = 0\ndevice_id = 1\n}}\n}}\n"
        );
        let at = t.find("\t\tpool00_tdata {").unwrap();
        t.insert_str(at, &lvs);
        std::fs::write(&file, t).unwrap();
        self.run(&[
            "vgcfgrestore",
            "--driverloaded",
            "n",
            "--force",
            "-f",
            f,
            vg,
        ]);
    }
}

/// The golden image `gold` with clone `a`, the disk file it was imported from, and where
/// each LV's segments lie on that disk.
struct Golden {
    r: Repo,
    disk: PathBuf,
    /// "rhel/root" -> segments, in LV order.
    lvs: BTreeMap<&'static str, Vec<Part>>,
}

impl Golden {
    fn lv(&self, name: &str) -> &[Part] {
        &self.lvs[name]
    }

    /// The single segment of a linear LV made by one lvcreate.
    fn linear(&self, name: &str) -> &Part {
        let s = self.lv(name);
        assert_eq!(s.len(), 1, "{name} has one segment");
        &s[0]
    }
}

fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (p, body) in files {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
}

const OS_RELEASE: &str = "NAME=\"Red Hat Enterprise Linux\"\nVERSION=\"8.9 (Ootpa)\"\n\
    ID=\"rhel\"\nID_LIKE=\"fedora\"\nVERSION_ID=\"8.9\"\nPLATFORM_ID=\"platform:el8\"\n\
    PRETTY_NAME=\"Red Hat Enterprise Linux 8.9 (Ootpa)\"\n";

const FSTAB: &str = "/dev/mapper/rhel-root /         ext4 defaults 1 1\n\
    LABEL=ESP             /boot/efi vfat umask=077 0 2\n\
    /dev/mapper/rhel-var  /var      ext4 defaults 1 2\n\
    /dev/mapper/rhel-swap none      swap defaults 0 0\n";

/// Builds the disk (156 MiB, GPT):
/// - sda1, 16 MiB: FAT ESP;
/// - sda2, 112 MiB: PV of VG `rhel`: `root` 48 MiB (ext4 made by mke2fs -d through a loop
///   device at its offset), `var` 12 MiB, then `swap` 8 MiB, then `var` extended by 20 MiB
///   (so two segments with swap between them; ext4 made in a file and laid at the two
///   offsets), a thin pool `pool00` and thin LV `home`;
/// - sda3, 24 MiB: PV of VG `my-vg`: `root` 12 MiB (ext4).
///
/// Then imports it as golden image `gold` and clones volume `a`.
fn golden() -> Golden {
    let r = Repo::new();
    let work = r.work.clone();
    let rootfs = work.join("rootfs");
    write_tree(
        &rootfs,
        &[
            ("etc/hostname", "rhel-gold\n"),
            ("etc/os-release", OS_RELEASE),
            (
                "etc/redhat-release",
                "Red Hat Enterprise Linux release 8.9 (Ootpa)\n",
            ),
            ("etc/fstab", FSTAB),
            ("usr/bin/true", "#!/bin/sh\nexit 0\n"),
            ("usr/lib/os-release", OS_RELEASE),
        ],
    );
    for d in ["var", "boot/efi", "opt"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let varfs = work.join("varfs");
    write_tree(
        &varfs,
        &[("log/messages", "Dec  1 00:00:00 rhel-gold kernel: hi\n")],
    );
    let dashfs = work.join("dashfs");
    write_tree(&dashfs, &[("etc/hostname", "dashed\n")]);

    let disk = work.join("gold.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(156 * MIB)
        .unwrap();
    let mut child = Command::new("sfdisk")
        .arg("-q")
        .arg(&disk)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    write!(
        child.stdin.take().unwrap(),
        "label: gpt\nstart=1MiB,size=16MiB,type=U\n\
         start=17MiB,size=112MiB,type={LVM_TYPE}\nstart=129MiB,size=24MiB,type={LVM_TYPE}\n"
    )
    .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    let part = |start: u64, len: u64| Part {
        start: start * MIB,
        len: len * MIB,
    };
    let (esp, pv_rhel, pv_dash) = (part(1, 16), part(17, 112), part(129, 24));
    {
        let l = Loop::new(&disk, &esp, false);
        ok(Command::new("mkfs.vfat").args(["-n", "ESP"]).arg(&l.0));
    }

    let lvm = Lvm::new(&work, &disk, &[&pv_rhel, &pv_dash]);
    let (a, b) = (lvm.pv(0).to_string(), lvm.pv(1).to_string());
    lvm.run(&["pvcreate", "-q", &a, &b]);
    lvm.run(&["vgcreate", "-q", "rhel", &a]);
    lvm.run(&["vgcreate", "-q", "my-vg", &b]);
    lvm.lvcreate("rhel", "root", "48M");
    lvm.lvcreate("rhel", "var", "12M");
    lvm.lvcreate("rhel", "swap", "8M");
    lvm.run(&[
        "lvextend",
        "--driverloaded",
        "n",
        "-q",
        "-L",
        "+20M",
        "rhel/var",
    ]);
    lvm.lvcreate("rhel", "pdata", "4M");
    lvm.lvcreate("rhel", "pmeta", "4M");
    lvm.make_thin_lv(&work, "rhel", "home");
    lvm.lvcreate("my-vg", "root", "12M");
    let mut lvs = BTreeMap::new();
    for (name, vg, lv) in [
        ("rhel/root", "rhel", "root"),
        ("rhel/var", "rhel", "var"),
        ("rhel/swap", "rhel", "swap"),
        ("my-vg/root", "my-vg", "root"),
    ] {
        lvs.insert(name, lvm.segments(vg, lv));
    }
    drop(lvm);
    let g = Golden { r, disk, lvs };
    assert_eq!(
        g.lv("rhel/var").len(),
        2,
        "lvextend gave var a second segment"
    );
    assert!(
        g.lv("rhel/var")[1].start > g.linear("rhel/swap").start,
        "var's second segment lies after swap"
    );

    for (name, src, label) in [
        ("rhel/root", &rootfs, "root"),
        ("my-vg/root", &dashfs, "dashroot"),
    ] {
        let l = Loop::new(&g.disk, g.linear(name), false);
        ok(Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext4", "-L", label, "-d"])
            .arg(src)
            .arg(&l.0));
    }
    // var cannot be reached as one device without device-mapper: make its filesystem in a
    // file and lay each piece at the offset lvs gives.
    let var_img = work.join("var.img");
    let var_len: u64 = g.lv("rhel/var").iter().map(|p| p.len).sum();
    std::fs::File::create(&var_img)
        .unwrap()
        .set_len(var_len)
        .unwrap();
    ok(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "var", "-d"])
        .arg(&varfs)
        .arg(&var_img));
    let mut lv_offset = 0;
    for seg in g.lv("rhel/var") {
        dd(&var_img, lv_offset, &g.disk, seg.start, seg.len);
        lv_offset += seg.len;
    }

    g.r.ok(&[
        "image",
        "import",
        g.disk.to_str().unwrap(),
        "--name",
        "gold",
    ]);
    g.r.ok(&["volume", "create", "a", "--from", "gold"]);
    g
}

/// Copies `len` bytes from `src` at `skip` to `dst` at `seek` (sparse, in place).
fn dd(src: &Path, skip: u64, dst: &Path, seek: u64, len: u64) {
    ok(Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", dst.display()))
        .args([
            "bs=1M",
            &format!("skip={skip}"),
            &format!("seek={seek}"),
            &format!("count={len}"),
            "iflag=skip_bytes,count_bytes",
            "oflag=seek_bytes",
            "conv=notrunc,sparse",
            "status=none",
        ]));
}

/// An LV's bytes cut out of a raw disk at its segments' offsets, as one file.
fn assemble(raw: &Path, segs: &[Part], out: &Path) -> Part {
    let len: u64 = segs.iter().map(|p| p.len).sum();
    std::fs::File::create(out).unwrap().set_len(len).unwrap();
    let mut at = 0;
    for s in segs {
        dd(raw, s.start, out, at, s.len);
        at += s.len;
    }
    Part { start: 0, len }
}

fn read_range(file: &Path, p: &Part) -> Vec<u8> {
    let f = std::fs::File::open(file).unwrap();
    let mut buf = vec![0u8; p.len as usize];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, p.start).unwrap();
    buf
}

fn image_hash(r: &Repo) -> String {
    let out = r.path("gold-export.raw");
    let _ = std::fs::remove_file(&out);
    r.ok(&["image", "export", "gold", out.to_str().unwrap()]);
    disks::sha256(&out)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn edits_through_lv_and_mapper_names_land_and_the_exported_lvs_check_clean() {
    if !can_run() {
        return;
    }
    let g = golden();
    let r = &g.r;
    let before = image_hash(r);
    assert_eq!(before, disks::sha256(&g.disk), "the import is the disk");
    let hostname = r.path("hostname");
    std::fs::write(&hostname, "web-01\n").unwrap();
    let tool: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let tool_file = r.path("tool");
    std::fs::write(&tool_file, &tool).unwrap();
    // Bigger than var's first segment (12 MiB), so it must reach into the second.
    let big: Vec<u8> = (0..16 * MIB as u32).map(|i| (i / 4096 + i) as u8).collect();
    let big_file = r.path("big");
    std::fs::write(&big_file, &big).unwrap();
    let dashed = r.path("dashed");
    std::fs::write(&dashed, "dashed-01\n").unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    r.ok(&[
        "fs",
        "put",
        "a",
        &s(&hostname),
        "/dev/rhel/root:/etc/hostname",
    ]);
    r.ok(&["fs", "mkdir", "a", "-p", "/dev/rhel/root:/opt/app/conf"]);
    r.ok(&["fs", "chmod", "a", "750", "/dev/mapper/rhel-root:/opt/app"]);
    r.ok(&[
        "fs",
        "put",
        "a",
        &s(&tool_file),
        "/dev/mapper/rhel-root:/usr/bin/tool",
        "--mode",
        "755",
    ]);
    r.ok(&["fs", "mkdir", "a", "/dev/mapper/rhel-root:/srv"]);
    r.ok(&[
        "fs",
        "put",
        "a",
        &s(&big_file),
        "/dev/mapper/rhel-var:/log/big",
        "--mode",
        "640",
    ]);
    r.ok(&["fs", "rm", "a", "/dev/rhel/var:/log/messages"]);
    r.ok(&[
        "fs",
        "put",
        "a",
        &s(&dashed),
        "/dev/mapper/my--vg-root:/etc/hostname",
    ]);
    r.ok(&["fs", "mkdir", "a", "/dev/my-vg/root:/data"]);

    // Both names reach the same filesystem, and the golden image is untouched.
    assert_eq!(
        r.ok(&["fs", "cat", "a", "/dev/mapper/rhel-root:/etc/hostname"]),
        "web-01\n"
    );
    assert_eq!(
        r.ok(&["fs", "cat", "a", "/dev/my-vg/root:/etc/hostname"]),
        "dashed-01\n"
    );
    assert_eq!(
        r.ok(&["fs", "ls", "a", "/dev/mapper/rhel-var:/log"]).trim(),
        "big"
    );
    let got = r.path("big-got");
    r.ok(&["fs", "get", "a", "/dev/rhel/var:/log/big", &s(&got)]);
    assert!(std::fs::read(&got).unwrap() == big, "log/big reads back");
    assert_eq!(
        r.ok(&[
            "fs",
            "cat",
            "--image",
            "gold",
            "/dev/rhel/root:/etc/hostname"
        ]),
        "rhel-gold\n"
    );
    assert_eq!(image_hash(r), before, "the golden image is byte-identical");

    let raw = r.path("a.raw");
    r.ok(&["volume", "export", "a", &s(&raw)]);

    let root = g.linear("rhel/root");
    let (clean, out) = disks::e2fsck(&raw, root);
    assert!(clean, "e2fsck of rhel/root: {out}");
    {
        let m = KernelMount::new(&raw, root, "ext4");
        assert_eq!(
            std::fs::read_to_string(m.path("etc/hostname")).unwrap(),
            "web-01\n"
        );
        assert_eq!(mode(&m.path("opt/app")), 0o750);
        assert_eq!(mode(&m.path("opt/app/conf")), 0o755);
        assert!(std::fs::read(m.path("usr/bin/tool")).unwrap() == tool);
        assert_eq!(mode(&m.path("usr/bin/tool")), 0o755);
        assert!(m.path("srv").is_dir());
        assert_eq!(
            std::fs::read_to_string(m.path("etc/os-release")).unwrap(),
            OS_RELEASE
        );
    }

    let var = g.lv("rhel/var");
    let whole = assemble(&raw, var, &r.path("var-out.img"));
    let (clean, out) = disks::e2fsck(&r.path("var-out.img"), &whole);
    assert!(clean, "e2fsck of rhel/var (both segments): {out}");
    assert!(
        read_range(&raw, &var[1]) != read_range(&g.disk, &var[1]),
        "the write reached var's second segment"
    );
    {
        let m = KernelMount::new(&r.path("var-out.img"), &whole, "ext4");
        assert!(std::fs::read(m.path("log/big")).unwrap() == big);
        assert_eq!(mode(&m.path("log/big")), 0o640);
        assert!(!m.path("log/messages").exists());
    }
    // swap, between var's segments, is untouched.
    let swap = g.linear("rhel/swap");
    assert!(read_range(&raw, swap) == read_range(&g.disk, swap));

    let dash = g.linear("my-vg/root");
    let (clean, out) = disks::e2fsck(&raw, dash);
    assert!(clean, "e2fsck of my-vg/root: {out}");
    let m = KernelMount::new(&raw, dash, "ext4");
    assert_eq!(
        std::fs::read_to_string(m.path("etc/hostname")).unwrap(),
        "dashed-01\n"
    );
    assert!(m.path("data").is_dir());
}

#[test]
fn list_and_inspect_find_the_rhel_root_in_its_logical_volume() {
    if !can_run() {
        return;
    }
    let g = golden();
    let r = &g.r;
    let list = r.ok(&["fs", "list", "a"]);
    let row = |dev: &str| {
        list.lines()
            .find(|l| l.split_whitespace().next() == Some(dev))
            .unwrap_or_else(|| panic!("{dev} is not listed: {list}"))
            .to_string()
    };
    for (dev, label) in [
        ("/dev/rhel/root", "root"),
        ("/dev/rhel/var", "var"),
        ("/dev/my-vg/root", "dashroot"),
    ] {
        let l = row(dev);
        let cols: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(cols[1], "lv", "{l}");
        assert!(cols.contains(&"ext4") && cols.contains(&label), "{l}");
    }
    assert!(row("/dev/sda1").contains("vfat"), "{list}");
    let json: serde_json::Value =
        serde_json::from_str(&r.ok(&["fs", "list", "a", "--json"])).unwrap();
    let sizes: BTreeMap<String, u64> = json["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["size"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(sizes["/dev/rhel/root"], 48 * MIB);
    assert_eq!(sizes["/dev/rhel/var"], 32 * MIB, "both segments of var");
    assert_eq!(sizes["/dev/rhel/swap"], 8 * MIB);
    let fs_devices: Vec<&str> = json["filesystems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["device"].as_str().unwrap())
        .collect();
    assert!(
        !fs_devices.contains(&"/dev/sda2") && !fs_devices.contains(&"/dev/sda3"),
        "physical volumes are not filesystems: {fs_devices:?}"
    );

    let insp = r.ok(&["fs", "inspect", "a"]);
    for want in [
        "root: /dev/rhel/root",
        "distro: rhel",
        "version: 8.9",
        "hostname: rhel-gold",
        "mountpoint: / /dev/rhel/root",
        "mountpoint: /var /dev/rhel/var",
        "mountpoint: /boot/efi /dev/sda1",
    ] {
        assert!(insp.contains(want), "{want:?} missing from: {insp}");
    }
    let oses: serde_json::Value =
        serde_json::from_str(&r.ok(&["fs", "inspect", "a", "--json"])).unwrap();
    assert_eq!(oses.as_array().unwrap().len(), 1, "one OS: {oses}");

    let df = r.ok(&["fs", "df", "a", "/dev/mapper/rhel-var"]);
    assert!(df.contains("MiB"), "{df}");
    let st: serde_json::Value = serde_json::from_str(&r.ok(&[
        "fs",
        "stat",
        "a",
        "/dev/mapper/my--vg-root:/etc/hostname",
        "--json",
    ]))
    .unwrap();
    assert_eq!(st["size"], 7);
}

#[test]
fn a_thin_lv_is_refused_saying_why_and_nothing_changes() {
    if !can_run() {
        return;
    }
    let g = golden();
    let r = &g.r;
    // What the volume holds, not its files: a read-write open may create the second
    // (empty) delta map file.
    let content = || {
        let out = r.path("a.raw");
        let _ = std::fs::remove_file(&out);
        r.ok(&["volume", "export", "a", out.to_str().unwrap()]);
        disks::sha256(&out)
    };
    let before = content();
    for dev in ["/dev/rhel/home", "/dev/mapper/rhel-home"] {
        let e = r.fails(&["fs", "cat", "a", &format!("{dev}:/etc/hostname")]);
        assert!(
            e.contains(dev) && e.contains("unsupported segment type thin"),
            "{e}"
        );
    }
    let e = r.fails(&["fs", "mkdir", "a", "/dev/rhel/home:/x"]);
    assert!(e.contains("unsupported segment type thin"), "{e}");
    // The pool is private (guestfish's lvs does not show it either): not a device at all.
    let e = r.fails(&["fs", "cat", "a", "/dev/rhel/pool00:/x"]);
    assert!(
        e.contains("no such device") && e.contains("/dev/rhel/root"),
        "{e}"
    );
    let e = r.fails(&["fs", "cat", "a", "/dev/mapper/rhel-nosuch:/x"]);
    assert!(e.contains("/dev/mapper/rhel-nosuch"), "{e}");
    assert_eq!(content(), before, "a refused job changed the volume");
    assert_eq!(
        r.ok(&["fs", "cat", "a", "/dev/rhel/root:/etc/hostname"]),
        "rhel-gold\n"
    );
}
