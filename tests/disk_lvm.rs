//! LVM against the real lvm2 tools: fixtures made with sfdisk, losetup, pvcreate, vgcreate,
//! lvcreate and lvextend (no activation: these kernels have no device-mapper), then our
//! scan compared with what `lvs` and `pvs` report, and filesystems put into LVs at the
//! offsets LVM gives read back through our devices.
//!
//! Every fixture has a private LVM_SYSTEM_DIR whose filter accepts only the fixture's own
//! loop devices, and unique VG names, so the tests neither see nor touch the host's LVM
//! state or each other's. Loop devices are detached by a Drop guard.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::ok;
use strata::disk::lvm::{self, LogicalVolume, MappedSegment, Scan};
use strata::disk::read_partitions;
use strata::disk::window::Window;
use strata::store::device::{FileDevice, SharedDevice};

const MIB: u64 = 1 << 20;

/// Numbers the fixtures of this process.
static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Whether this machine can build LVM fixtures; prints why not.
fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("note: not root; skipping the lvm2 comparison (CI runs it as root)");
        return false;
    }
    for t in ["pvcreate", "losetup", "sfdisk", "mke2fs", "debugfs"] {
        if !common::have(t) {
            eprintln!("note: {t} missing (tools/install-deps installs it); skipping");
            return false;
        }
    }
    true
}

/// One LV as `lvs` reports it.
struct LvsLv {
    roles: Vec<String>,
    writable: bool,
    segs: Vec<LvsSeg>,
}

#[derive(Clone)]
struct LvsSeg {
    segtype: String,
    /// Bytes, in the LV.
    start: u64,
    size: u64,
    /// (guest device, first PE) per stripe on a PV.
    ranges: Vec<(String, u64)>,
}

struct Fixture {
    dir: tempfile::TempDir,
    disk: PathBuf,
    /// (loop device, the name guestfish would give the partition), detached on drop.
    loops: Vec<(String, String)>,
    /// Partition start and length in bytes, by partition number.
    parts: BTreeMap<u32, (u64, u64)>,
    /// Prefix of this fixture's VG names.
    tag: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for (dev, _) in &self.loops {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

impl Fixture {
    /// A sparse disk with one GPT partition per size (MiB); `tag` makes VG names unique.
    fn new(tag: &str, sizes_mib: &[u64]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        let total: u64 = sizes_mib.iter().sum::<u64>() + 2;
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(total * MIB)
            .unwrap();
        let mut script = String::from("label: gpt\n");
        for s in sizes_mib {
            script.push_str(&format!(
                "size={}MiB, type=E6D6D379-F507-44C2-A23C-238F2A3DF928\n",
                s
            ));
        }
        let mut child = Command::new("sfdisk")
            .arg("--quiet")
            .arg(&disk)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        let dev = FileDevice::open(&disk, true).unwrap();
        let parts = read_partitions(&dev)
            .unwrap()
            .into_iter()
            .map(|p| (p.number, (p.start, p.len)))
            .collect();
        let f = Fixture {
            // Unique per fixture even when the tests share a process (cargo test).
            tag: format!(
                "st{}x{}{tag}",
                std::process::id(),
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            ),
            dir,
            disk,
            loops: Vec::new(),
            parts,
        };
        f.write_conf();
        f
    }

    fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("lvm")
    }

    /// lvm.conf accepting only this fixture's loop devices, locking in the fixture's
    /// directory, and no backups, udev, hints or daemons.
    fn write_conf(&self) {
        let conf = self.conf_dir();
        let devices: Vec<&str> = self.loops.iter().map(|(d, _)| d.as_str()).collect();
        common::disks::write_lvm_conf(&conf, &devices);
    }

    /// A loop device on partition `n`; returns it.
    fn attach(&mut self, n: u32) -> String {
        let (start, len) = self.parts[&n];
        let dev = ok(Command::new("losetup")
            .args([
                "-f",
                "--show",
                "-o",
                &start.to_string(),
                "--sizelimit",
                &len.to_string(),
            ])
            .arg(&self.disk))
        .trim()
        .to_string();
        self.loops.push((dev.clone(), format!("/dev/sda{n}")));
        self.write_conf();
        dev
    }

    fn vg(&self, name: &str) -> String {
        format!("{}{name}", self.tag)
    }

    /// Runs an lvm command in the fixture's private configuration.
    fn lvm(&self, args: &[&str]) -> String {
        ok(Command::new("lvm")
            .args(args)
            .env("LVM_SYSTEM_DIR", self.conf_dir())
            .env("LVM_SUPPRESS_FD_WARNINGS", "1"))
    }

    fn guest_name(&self, dev: &str) -> String {
        self.loops
            .iter()
            .find(|(d, _)| d == dev)
            .map(|(_, g)| g.clone())
            .unwrap_or_else(|| panic!("{dev} is not one of the fixture's loop devices"))
    }

    /// Every partition of the disk image, as guestfish names them, read-write.
    fn devices_except(&self, skip: &[u32]) -> Vec<(String, SharedDevice)> {
        let disk: SharedDevice = Arc::new(FileDevice::open(&self.disk, false).unwrap());
        self.parts
            .iter()
            .filter(|(n, _)| !skip.contains(n))
            .map(|(n, &(start, len))| {
                let w = Window::range(disk.clone(), start, len, format!("sda{n}")).unwrap();
                (format!("/dev/sda{n}"), Arc::new(w) as SharedDevice)
            })
            .collect()
    }

    fn scan(&self) -> Scan {
        lvm::scan(&self.devices_except(&[]))
    }

    /// Byte offset of each PV's first extent, by guest name, as `pvs` reports it.
    fn pe_starts(&self) -> BTreeMap<String, u64> {
        self.lvm(&[
            "pvs",
            "--units",
            "b",
            "--nosuffix",
            "--noheadings",
            "--separator",
            "|",
            "-o",
            "pv_name,pe_start",
        ])
        .lines()
        .map(|l| {
            let (dev, start) = l.trim().split_once('|').unwrap();
            (self.guest_name(dev), start.parse().unwrap())
        })
        .collect()
    }

    /// `lvs`' view of the visible LVs, by (vg, lv).
    fn lvs(&self) -> BTreeMap<(String, String), LvsLv> {
        let mut out: BTreeMap<_, LvsLv> = BTreeMap::new();
        let text = self.lvm(&[
            "lvs",
            "--driverloaded",
            "n",
            "--units",
            "b",
            "--nosuffix",
            "--noheadings",
            "--separator",
            "|",
            "-o",
            "lv_name,vg_name,seg_pe_ranges,seg_start,seg_size,segtype,lv_role,lv_attr",
        ]);
        for l in text.lines().filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = l.trim().split('|').collect();
            assert_eq!(f.len(), 8, "{l}");
            let ranges = f[2]
                .split_whitespace()
                .filter_map(|r| {
                    let (dev, pe) = r.rsplit_once(':')?;
                    // Ranges on LVs (a thin pool's data) are not on a PV.
                    if !dev.starts_with("/dev/") {
                        return None;
                    }
                    let first = pe.split('-').next()?.parse().ok()?;
                    Some((self.guest_name(dev), first))
                })
                .collect();
            let lv = out
                .entry((f[1].to_string(), f[0].to_string()))
                .or_insert_with(|| LvsLv {
                    roles: f[6].split(',').map(String::from).collect(),
                    writable: f[7].as_bytes().get(1) == Some(&b'w'),
                    segs: Vec::new(),
                });
            lv.segs.push(LvsSeg {
                segtype: f[5].to_string(),
                start: f[3].parse().unwrap(),
                size: f[4].parse().unwrap(),
                ranges,
            });
        }
        out
    }

    /// The extent size of `vg` in bytes.
    fn extent_size(&self, vg: &str) -> u64 {
        self.lvm(&[
            "vgs",
            "--units",
            "b",
            "--nosuffix",
            "--noheadings",
            "-o",
            "vg_extent_size",
            vg,
        ])
        .trim()
        .parse()
        .unwrap()
    }
}

/// Asserts that every visible LV `lvs` reports is in the scan with the same segments at
/// the same byte offsets (or refused by its segment type), and nothing more.
fn assert_matches_lvs(f: &Fixture, s: &Scan) {
    let pe_starts = f.pe_starts();
    let expected = f.lvs();
    let got: BTreeMap<(String, String), &LogicalVolume> = s
        .vgs
        .iter()
        .flat_map(|v| &v.lvs)
        .map(|l| ((l.vg.clone(), l.lv.clone()), l))
        .collect();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the visible LVs"
    );
    assert!(!expected.is_empty());
    for (key, want) in &expected {
        let lv = got[key];
        let ext = f.extent_size(&key.0);
        let refusal = || {
            lv.device
                .as_ref()
                .err()
                .unwrap_or_else(|| panic!("{key:?} was mapped, not refused"))
                .clone()
        };
        if let Some(seg) = want.segs.iter().find(|s| s.segtype != "linear") {
            let e = refusal();
            assert!(
                e.contains(&format!("unsupported segment type {}", seg.segtype)),
                "{key:?}: {e}"
            );
            continue;
        }
        if want.roles.iter().any(|r| r == "origin" || r == "snapshot") {
            let e = refusal();
            assert!(e.contains("snapshot"), "{key:?}: {e}");
            continue;
        }
        let segments: Vec<MappedSegment> = want
            .segs
            .iter()
            .map(|s| {
                assert_eq!(s.ranges.len(), 1, "{key:?}: linear has one range");
                let (dev, pe) = &s.ranges[0];
                MappedSegment {
                    lv_offset: s.start,
                    len: s.size,
                    pv_device: dev.clone(),
                    pv_offset: pe_starts[dev] + pe * ext,
                }
            })
            .collect();
        assert_eq!(lv.segments, segments, "{key:?}");
        let d = lv.device.as_ref().unwrap();
        assert_eq!(d.len(), segments.iter().map(|s| s.len).sum::<u64>());
        assert_eq!(d.is_read_only(), !want.writable, "{key:?} read-only");
    }
    // What guestfish's vgs, lvs and pvs would print, from LVM's own selection.
    let vgs: Vec<String> = f
        .lvm(&["vgs", "--noheadings", "-o", "vg_name"])
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(s.vg_names(), vgs);
    let lvs: Vec<String> = f
        .lvm(&[
            "lvs",
            "--driverloaded",
            "n",
            "--noheadings",
            "--separator",
            "/",
            "-o",
            "vg_name,lv_name",
            "-S",
            "lv_role=public && lv_skip_activation!=yes",
        ])
        .lines()
        .map(|l| format!("/dev/{}", l.trim()))
        .filter(|l| l != "/dev/")
        .collect();
    assert_eq!(s.lv_paths(), lvs);
    let mut pvs: Vec<String> = f
        .lvm(&["pvs", "--noheadings", "-o", "pv_name"])
        .lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .map(|l| f.guest_name(l))
        .collect();
    pvs.sort();
    assert_eq!(s.pv_names(), pvs);
}

/// Turns the `pdata` and `pmeta` LVs of `vg` into a thin pool `pool` with one thin LV,
/// and `swapsnap` into a snapshot of `swap`, through vgcfgbackup and vgcfgrestore:
/// lvcreate and lvconvert refuse to make pools and snapshots without device-mapper, but
/// LVM restores such metadata as written (and `lvs` then reports them as such).
fn make_thin_pool_and_snapshot(f: &Fixture, vg: &str) {
    let file = f.dir.path().join("vg.txt");
    let file_s = file.to_str().unwrap();
    f.lvm(&["vgcfgbackup", "--driverloaded", "n", "-f", file_s, vg]);
    let mut t = std::fs::read_to_string(&file).unwrap();
    for (from, to) in [("pdata", "pool_tdata"), ("pmeta", "pool_tmeta")] {
        let at = t.find(&format!("\t{from} {{")).unwrap();
        t.replace_range(at + 1..at + 1 + from.len(), to);
        let vis = at + t[at..].find(", \"VISIBLE\"]").unwrap();
        t.replace_range(vis..vis + ", \"VISIBLE\"]".len(), "]");
    }
    let pool = "\t\tpool {\n\
        id = \"Pooooo-oooo-oooo-oooo-oooo-oooo-oooool\"\n\
        status = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\nsegment_count = 1\n\
        segment1 {\nstart_extent = 0\nextent_count = 2\ntype = \"thin-pool\"\n\
        metadata = \"pool_tmeta\"\npool = \"pool_tdata\"\ntransaction_id = 1\n\
        chunk_size = 128\ndiscards = \"passdown\"\nzero_new_blocks = 0\n}\n}\n\
        thin1 {\nid = \"Thiiii-iiii-iiii-iiii-iiii-iiii-iiiin1\"\n\
        status = [\"READ\", \"WRITE\", \"VISIBLE\"]\nflags = []\nsegment_count = 1\n\
        segment1 {\nstart_extent = 0\nextent_count = 5\ntype = \"thin\"\n\
        thin_pool = \"pool\"\ntransaction_id = 0\ndevice_id = 1\n}\n}\n\
        snapshot0 {\nid = \"Snapsh-otoo-oooo-oooo-oooo-oooo-oooo00\"\n\
        status = [\"READ\"]\nflags = []\nsegment_count = 1\n\
        segment1 {\nstart_extent = 0\nextent_count = 5\ntype = \"snapshot\"\n\
        chunk_size = 8\norigin = \"swap\"\ncow_store = \"swapsnap\"\n}\n}\n";
    let at = t.find("\t\tpool_tdata {").unwrap();
    t.insert_str(at, pool);
    std::fs::write(&file, t).unwrap();
    f.lvm(&[
        "vgcfgrestore",
        "--driverloaded",
        "n",
        "--force",
        "-f",
        file_s,
        vg,
    ]);
}

/// An ext4 image of `mib` MiB holding /hello.txt with `content`.
fn ext4_image(dir: &Path, mib: u64, content: &[u8]) -> PathBuf {
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), content).unwrap();
    let img = dir.join("fs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(mib * MIB)
        .unwrap();
    ok(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&src)
        .arg(&img));
    img
}

/// /hello.txt of the ext4 filesystem in `dev`, read by debugfs from a copy made through
/// `dev`.
fn hello_through(dev: &SharedDevice, dir: &Path) -> Vec<u8> {
    let mut magic = [0u8; 2];
    dev.read_at(&mut magic, 1024 + 56).unwrap();
    assert_eq!(magic, [0x53, 0xEF], "ext4 superblock magic through the LV");
    // A sparse copy: only the chunks that hold data are written.
    let copy = dir.join("copy.img");
    let out = std::fs::File::create(&copy).unwrap();
    out.set_len(dev.len()).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut at = 0;
    while at < dev.len() {
        let n = (dev.len() - at).min(buf.len() as u64) as usize;
        dev.read_at(&mut buf[..n], at).unwrap();
        if buf[..n].iter().any(|&b| b != 0) {
            std::os::unix::fs::FileExt::write_all_at(&out, &buf[..n], at).unwrap();
        }
        at += n as u64;
    }
    drop(out);
    let o = Command::new("debugfs")
        .args(["-R", "cat /hello.txt"])
        .arg(&copy)
        .output()
        .unwrap();
    assert!(o.status.success());
    o.stdout
}

/// The standard fixture: sda1 plain; VG `a` on sda2 (300 MiB) and sda3 (100 MiB) with
/// `root` (200 MiB, then extended by 40 MiB after `swap`, so two segments), `swap`,
/// `span` (across both PVs) and a thin pool; VG `b` on sda4 with `home`.
fn standard() -> (Fixture, [String; 3]) {
    let mut f = Fixture::new("s", &[8, 300, 100, 48]);
    let (a, b, c) = (f.attach(2), f.attach(3), f.attach(4));
    let (vga, vgb) = (f.vg("a"), f.vg("b"));
    f.lvm(&["pvcreate", "-q", &a, &b, &c]);
    f.lvm(&["vgcreate", "-q", &vga, &a, &b]);
    f.lvm(&["vgcreate", "-q", &vgb, &c]);
    let create = |vg: &str, name: &str, size: &str, pvs: &[&str]| {
        let mut args = vec![
            "lvcreate",
            "--driverloaded",
            "n",
            "-an",
            "-Zn",
            "-q",
            "-L",
            size,
            "-n",
            name,
            vg,
        ];
        args.extend(pvs);
        f.lvm(&args);
    };
    create(&vga, "root", "200M", &[&a]);
    create(&vga, "swap", "20M", &[&a]);
    f.lvm(&[
        "lvextend",
        "--driverloaded",
        "n",
        "-q",
        "-L",
        "+40M",
        &format!("{vga}/root"),
        &a,
    ]);
    create(&vga, "pdata", "8M", &[&b]);
    create(&vga, "pmeta", "4M", &[&b]);
    create(&vga, "swapsnap", "8M", &[&b]);
    // More than either PV has left: the rest of sda2 and most of sda3.
    create(&vga, "span", "100M", &[&a, &b]);
    make_thin_pool_and_snapshot(&f, &vga);
    create(&vgb, "home", "40M", &[&c]);
    create(&vgb, "ro", "4M", &[&c]);
    f.lvm(&[
        "lvchange",
        "--driverloaded",
        "n",
        "-q",
        "-pr",
        &format!("{vgb}/ro"),
    ]);
    (f, [a, b, c])
}

#[test]
fn scan_agrees_with_lvs_on_every_lv_segment_and_offset() {
    if !can_run() {
        return;
    }
    let (f, _) = standard();
    let s = f.scan();
    assert!(s.problems.is_empty(), "{:?}", s.problems);
    assert_matches_lvs(&f, &s);
    let vga = f.vg("a");
    let root = s.find(&format!("/dev/{vga}/root")).unwrap();
    assert_eq!(
        root.segments.len(),
        2,
        "lvextend gave root a second segment"
    );
    let span = s.find(&format!("/dev/{vga}/span")).unwrap();
    let mut on: Vec<&str> = span.segments.iter().map(|s| s.pv_device.as_str()).collect();
    on.sort();
    on.dedup();
    assert_eq!(on, ["/dev/sda2", "/dev/sda3"], "span crosses both PVs");
    let pool = s.find(&format!("/dev/{vga}/pool")).unwrap();
    assert_eq!(
        pool.device.as_ref().err().unwrap(),
        "unsupported segment type thin-pool"
    );
    assert!(s.find(&format!("/dev/{vga}/pool_tdata")).is_none());
    let paths = s.lv_paths();
    assert!(paths.contains(&format!("/dev/{vga}/thin1")), "{paths:?}");
    assert!(!paths.contains(&format!("/dev/{vga}/pool")), "{paths:?}");
    let swap = s.find(&format!("/dev/{vga}/swap")).unwrap();
    let e = swap.device.as_ref().err().unwrap();
    assert!(e.contains("origin of snapshot swapsnap"), "{e}");
    let ro = s.find(&format!("/dev/{}/ro", f.vg("b"))).unwrap();
    assert!(ro.device.as_ref().unwrap().is_read_only());
}

#[test]
fn ext4_made_in_an_lv_by_mke2fs_reads_back_through_the_lv_device() {
    if !can_run() {
        return;
    }
    let (mut f, _) = standard();
    let vgb = f.vg("b");
    // Where LVM puts home: from lvs and pvs, not from our parse.
    let segs = &f.lvs()[&(vgb.clone(), "home".to_string())].segs;
    assert_eq!(segs.len(), 1);
    let size = &segs[0].size;
    let (dev, pe) = &segs[0].ranges[0];
    let part: u32 = dev.trim_start_matches("/dev/sda").parse().unwrap();
    let at = f.parts[&part].0 + f.pe_starts()[dev] + pe * f.extent_size(&vgb);
    let fsdev = ok(Command::new("losetup")
        .args([
            "-f",
            "--show",
            "-o",
            &at.to_string(),
            "--sizelimit",
            &size.to_string(),
        ])
        .arg(&f.disk))
    .trim()
    .to_string();
    f.loops.push((fsdev.clone(), "(ext4 in home)".into()));
    let src = f.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), b"hello from an LV\n").unwrap();
    ok(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&src)
        .arg(&fsdev));
    ok(Command::new("losetup").args(["-d", &fsdev]));
    f.loops.retain(|(d, _)| d != &fsdev);
    let s = f.scan();
    let home = s.find(&format!("/dev/{vgb}/home")).unwrap();
    let d = home.device.as_ref().unwrap();
    assert_eq!(d.len(), *size);
    assert_eq!(hello_through(d, f.dir.path()), b"hello from an LV\n");
}

#[test]
fn ext4_placed_in_a_two_segment_lv_at_lvs_offsets_reads_back_whole() {
    if !can_run() {
        return;
    }
    let (f, _) = standard();
    let vga = f.vg("a");
    let segs = f.lvs()[&(vga.clone(), "root".to_string())].segs.clone();
    assert_eq!(segs.len(), 2);
    let total: u64 = segs.iter().map(|s| s.size).sum();
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let work = f.dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let img = ext4_image(&work, total / MIB, &content);
    // Lay the image into the disk at the offsets lvs and pvs give, skipping zero chunks
    // (the disk file is sparse and zero there already).
    let image = std::fs::read(&img).unwrap();
    let disk = std::fs::OpenOptions::new()
        .write(true)
        .open(&f.disk)
        .unwrap();
    let pe_starts = f.pe_starts();
    let ext = f.extent_size(&vga);
    for LvsSeg {
        start,
        size,
        ranges,
        ..
    } in &segs
    {
        let (dev, pe) = &ranges[0];
        let part: u32 = dev.trim_start_matches("/dev/sda").parse().unwrap();
        let base = f.parts[&part].0 + pe_starts[dev] + pe * ext;
        for off in (0..*size).step_by(64 << 10) {
            let chunk = &image[(start + off) as usize..(start + off + (64 << 10)) as usize];
            if chunk.iter().any(|&b| b != 0) {
                std::os::unix::fs::FileExt::write_all_at(&disk, chunk, base + off).unwrap();
            }
        }
    }
    drop(disk);
    let s = f.scan();
    let root = s.find(&format!("/dev/{vga}/root")).unwrap();
    let d = root.device.as_ref().unwrap();
    let mut buf = vec![0u8; MIB as usize];
    for at in (0..total).step_by(MIB as usize) {
        d.read_at(&mut buf, at).unwrap();
        assert!(
            buf == image[at as usize..(at + MIB) as usize],
            "LV byte {at}.. differs from the image laid at LVM's offsets"
        );
    }
    assert_eq!(hello_through(d, &work), content);
}

#[test]
fn a_missing_pv_refuses_the_lvs_on_it_by_uuid_and_keeps_the_others() {
    if !can_run() {
        return;
    }
    let (f, [_, b, _]) = standard();
    let uuid = f
        .lvm(&["pvs", "--noheadings", "-o", "pv_uuid", &b])
        .trim()
        .to_string();
    let s = lvm::scan(&f.devices_except(&[3]));
    let vga = f.vg("a");
    let span = s.find(&format!("/dev/{vga}/span")).unwrap();
    let e = span
        .device
        .as_ref()
        .err()
        .expect("span needs the missing PV");
    assert!(e.contains(&uuid) && e.contains("missing"), "{e}");
    assert!(s.find(&format!("/dev/{vga}/root")).unwrap().device.is_ok());
    assert_eq!(s.pv_names(), ["/dev/sda2", "/dev/sda4"]);
}

#[test]
fn metadata_that_wrapped_around_the_circular_buffer_is_read() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new("w", &[16]);
    let pv = f.attach(1);
    let vg = f.vg("w");
    // The smallest metadata area LVM allows (32 KiB): a dozen updates wrap it.
    f.lvm(&[
        "pvcreate",
        "-q",
        "--metadatasize",
        "32k",
        "--dataalignment",
        "4k",
        &pv,
    ]);
    f.lvm(&["vgcreate", "-q", "-s", "1M", &vg, &pv]);
    let devs = f.devices_except(&[]);
    let dev = &devs[0].1;
    let mut wrapped = false;
    for i in 0..40 {
        f.lvm(&[
            "lvcreate",
            "--driverloaded",
            "n",
            "-an",
            "-Zn",
            "-q",
            "-L",
            "1M",
            "-n",
            &format!("l{i}"),
            &vg,
        ]);
        let pv = lvm::read_pv(dev.as_ref()).unwrap().unwrap();
        let m = pv.metadata.unwrap();
        assert_eq!(m.vg.lvs.len(), i + 1);
        if m.wrapped {
            wrapped = true;
            break;
        }
    }
    assert!(wrapped, "40 updates never wrapped the 32 KiB area");
    assert_matches_lvs(&f, &f.scan());
}

#[test]
fn the_second_metadata_copy_is_used_when_the_first_is_damaged() {
    if !can_run() {
        return;
    }
    let mut f = Fixture::new("m", &[64]);
    let pv = f.attach(1);
    let vg = f.vg("m");
    f.lvm(&["pvcreate", "-q", "--pvmetadatacopies", "2", &pv]);
    f.lvm(&["vgcreate", "-q", &vg, &pv]);
    f.lvm(&[
        "lvcreate",
        "--driverloaded",
        "n",
        "-an",
        "-Zn",
        "-q",
        "-L",
        "8M",
        "-n",
        "data",
        &vg,
    ]);
    let before = f.scan();
    assert_matches_lvs(&f, &before);
    let dev = f.devices_except(&[])[0].1.clone();
    let pvinfo = lvm::read_pv(dev.as_ref()).unwrap().unwrap();
    assert_eq!(pvinfo.label.metadata_areas.len(), 2);
    // Zero the first area's header, as a stray write at the start of the disk would.
    let first = pvinfo.label.metadata_areas[0].offset;
    dev.write_at(&[0u8; 512], first).unwrap();
    let pvinfo = lvm::read_pv(dev.as_ref()).unwrap().unwrap();
    let m = pvinfo.metadata.unwrap();
    assert_eq!(m.area, pvinfo.label.metadata_areas[1].offset);
    assert_eq!(pvinfo.damaged.len(), 1, "{:?}", pvinfo.damaged);
    let after = f.scan();
    assert_eq!(after.lv_paths(), before.lv_paths());
    assert_eq!(
        after.find(&format!("/dev/{vg}/data")).unwrap().segments,
        before.find(&format!("/dev/{vg}/data")).unwrap().segments
    );
}
