//! Model-based tests of every filesystem adapter: random sequences of operations are run
//! through the mount table on a real image (made by mke2fs, mkfs.vfat, mkntfs) and on the
//! in-memory reference filesystem side by side. Every operation must succeed or fail alike
//! (same errno); after each sequence the adapter is closed, the filesystem's own checker
//! must find it clean (e2fsck -fn, fsck.fat -n, ntfsfix -n), and the tree read back after
//! reopening must equal the model's; every few sequences the kernel (ext), ntfs-3g (NTFS)
//! or mtools (FAT; these kernels have no vfat) reads it back too.
//!
//! `STRATA_FS_MODEL_SEQUENCES` sets the sequences per filesystem (default 150, 20
//! operations each); a failure prints the seed, and `STRATA_FS_MODEL_SEED` replays it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use strata::fs::memfs::MemFs;
use strata::fs::mounts::MountTable;
use strata::fs::{FileKind, FsResult, OpenOptions, SetAttr, Timespec};
use strata::store::device::FileDevice;

/// What a filesystem can store, so that the model only asks for what makes sense there.
#[derive(Clone, Copy)]
struct Flavor {
    fs_type: &'static str,
    mkfs: &'static [&'static str],
    mib: u64,
    links: bool,
    modes: bool,
    times: bool,
    checker: &'static [&'static str],
    readback: Readback,
}

#[derive(Clone, Copy, PartialEq)]
enum Readback {
    Kernel,
    Ntfs3g,
    Mtools,
}

const EXT4: Flavor = Flavor {
    fs_type: "ext4",
    mkfs: &["mke2fs", "-q", "-F", "-t", "ext4"],
    mib: 64,
    links: true,
    modes: true,
    times: true,
    checker: &["e2fsck", "-fn"],
    readback: Readback::Kernel,
};

fn flavor(fs_type: &'static str, mkfs: &'static [&'static str], mib: u64) -> Flavor {
    match fs_type {
        "vfat" => Flavor {
            fs_type,
            mkfs,
            mib,
            links: false,
            modes: false,
            times: false,
            checker: &["fsck.fat", "-n"],
            readback: Readback::Mtools,
        },
        "ntfs" => Flavor {
            fs_type,
            mkfs,
            mib,
            links: true,
            modes: false,
            times: false,
            checker: &["ntfsfix", "-n"],
            readback: Readback::Ntfs3g,
        },
        _ => Flavor {
            fs_type,
            mkfs,
            mib,
            ..EXT4
        },
    }
}

/// xorshift64*: deterministic, seedable, no dependency on an RNG crate's API.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// Names: short, long, non-ASCII; no two equal ignoring case (FAT folds case).
fn names() -> Vec<String> {
    vec![
        "a".into(),
        "Bee".into(),
        "conf.d".into(),
        "données-é".into(),
        "中文名".into(),
        "x".repeat(200),
        "with space".into(),
        "dot.".to_string() + "txt",
    ]
}

#[derive(Debug, Clone)]
enum Op {
    Write(String, usize, u8),
    WriteAt(String, u64, usize, u8),
    Append(String, usize, u8),
    Truncate(String, u64),
    Mkdir(String),
    MkdirP(String),
    Rm(String),
    Rmdir(String),
    RmRf(String),
    Rename(String, String),
    Symlink(String, String),
    Link(String, String),
    Chmod(String, u32),
    Chown(String, u32, u32),
    Utimes(String, i64, u32),
}

/// A path: half the time one that exists (so that operations mostly do something), else
/// made up from the names (so that they also fail in every way).
fn path(r: &mut Rng, names: &[String], known: &[String]) -> String {
    if !known.is_empty() && r.below(2) == 0 {
        let base = r.pick(known).clone();
        return match r.below(3) {
            0 => format!("{base}/{}", r.pick(names)),
            _ => base,
        };
    }
    let depth = 1 + r.below(3);
    let mut p = String::new();
    for _ in 0..depth {
        p.push('/');
        p.push_str(r.pick(names).as_str());
    }
    p
}

fn op(r: &mut Rng, f: &Flavor, names: &[String], known: &[String]) -> Op {
    let p = path(r, names, known);
    let size = |r: &mut Rng| match r.below(10) {
        0 => 0,
        1..=6 => r.below(5000) as usize,
        7 | 8 => r.below(70_000) as usize,
        _ => 300_000 + r.below(100_000) as usize,
    };
    let byte = r.next() as u8;
    loop {
        let o = match r.below(16) {
            0 | 1 => Op::Write(p.clone(), size(r), byte),
            2 => Op::WriteAt(
                p.clone(),
                r.below(200_000),
                1 + r.below(9000) as usize,
                byte,
            ),
            3 => Op::Append(p.clone(), size(r), byte),
            4 => Op::Truncate(p.clone(), r.below(100_000)),
            5 | 6 => Op::Mkdir(p.clone()),
            7 => Op::MkdirP(p.clone()),
            8 => Op::Rm(p.clone()),
            9 => Op::Rmdir(p.clone()),
            10 => Op::RmRf(p.clone()),
            11 => Op::Rename(p.clone(), path(r, names, known)),
            12 if f.links => Op::Symlink(path(r, names, known), p.clone()),
            13 if f.links => Op::Link(path(r, names, known), p.clone()),
            14 if f.modes => match r.below(2) {
                0 => Op::Chmod(p.clone(), (r.below(0o7777 + 1)) as u32),
                _ => Op::Chown(p.clone(), r.below(3) as u32 * 1000, r.below(3) as u32 * 100),
            },
            15 if f.times => Op::Utimes(
                p.clone(),
                r.below(2_000_000_000) as i64,
                r.below(1_000_000_000) as u32,
            ),
            _ => continue,
        };
        return o;
    }
}

fn apply(t: &mut MountTable, o: &Op) -> FsResult<()> {
    let b = |s: &String| s.as_bytes().to_vec();
    match o {
        Op::Write(p, n, v) => t.write_file(&b(p), &vec![*v; *n]),
        Op::WriteAt(p, off, n, v) => t.write_path(&b(p), *off, &vec![*v; *n]),
        Op::Append(p, n, v) => t.append_file(&b(p), &vec![*v; *n]),
        Op::Truncate(p, n) => t.truncate_path(&b(p), *n),
        Op::Mkdir(p) => t.mkdir(&b(p), 0o755),
        Op::MkdirP(p) => t.mkdir_p(&b(p), 0o755),
        Op::Rm(p) => t.rm(&b(p)),
        Op::Rmdir(p) => t.rmdir(&b(p)),
        Op::RmRf(p) => t.rm_rf(&b(p)),
        Op::Rename(a, z) => t.rename_path(&b(a), &b(z)),
        Op::Symlink(target, p) => t.symlink(&b(target), &b(p)),
        Op::Link(target, p) => t.link(&b(target), &b(p)),
        Op::Chmod(p, m) => t.setattr_path(
            &b(p),
            true,
            &SetAttr {
                mode: Some(*m),
                ..SetAttr::default()
            },
        ),
        Op::Chown(p, u, g) => t.setattr_path(
            &b(p),
            false,
            &SetAttr {
                uid: Some(*u),
                gid: Some(*g),
                ..SetAttr::default()
            },
        ),
        Op::Utimes(p, s, ns) => t.setattr_path(
            &b(p),
            false,
            &SetAttr {
                mtime: Some(Timespec { sec: *s, nsec: *ns }),
                ..SetAttr::default()
            },
        ),
    }
}

/// What the tree holds, as compared: per path, kind, contents (or link target), and the
/// attributes the flavor keeps.
type Tree = BTreeMap<String, String>;

fn tree(t: &mut MountTable, f: &Flavor) -> Tree {
    let mut out = Tree::new();
    let mut todo = vec![String::new()];
    while let Some(dir) = todo.pop() {
        let shown = if dir.is_empty() {
            "/".to_string()
        } else {
            dir.clone()
        };
        for e in t.readdir_path(shown.as_bytes()).expect("readdir") {
            let name = String::from_utf8(e.name.clone()).expect("utf-8 name");
            if dir.is_empty() && f.fs_type.starts_with("ext") && name == "lost+found" {
                continue;
            }
            let p = format!("{dir}/{name}");
            let st = t.stat_path(p.as_bytes(), false).expect("stat");
            let mut desc = format!("{:?}", st.kind);
            if f.modes {
                desc += &format!(" mode={:o} uid={} gid={}", st.perm(), st.uid, st.gid);
            }
            match st.kind {
                FileKind::Directory => todo.push(p.clone()),
                FileKind::Symlink => {
                    desc += &format!(
                        " -> {}",
                        String::from_utf8_lossy(&t.readlink(p.as_bytes()).unwrap())
                    )
                }
                _ => {
                    let data = t.read_file(p.as_bytes(), 1 << 30).expect("read");
                    desc += &format!(" {} bytes crc {:08x}", data.len(), crc32fast::hash(&data));
                    if f.links {
                        desc += &format!(" links={}", st.nlink);
                    }
                }
            }
            out.insert(p, desc);
        }
    }
    out
}

fn run(cmd: &[&str], file: &Path) -> (bool, String) {
    let o = Command::new(cmd[0])
        .args(&cmd[1..])
        .arg(file)
        .output()
        .expect(cmd[0]);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

fn open(f: &Flavor, file: &Path) -> MountTable {
    let dev = Arc::new(FileDevice::open(file, false).unwrap());
    let fs = strata::fs::open(f.fs_type, dev, OpenOptions::default()).expect("open");
    let mut t = MountTable::new();
    t.mount(fs, "/dev/sda1", "/", false).unwrap();
    t
}

/// The tree as an outside reader sees it (the kernel, ntfs-3g, mtools), in the model's form
/// minus what that reader cannot tell (modes on FAT and NTFS).
fn outside_tree(f: &Flavor, file: &Path, work: &Path) -> Tree {
    let dir = work.join("outside");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let unmount = |d: &Path| {
        let _ = Command::new("umount").arg(d).status();
    };
    match f.readback {
        Readback::Kernel => {
            common::ok(
                Command::new("mount")
                    .args(["-o", "loop,ro"])
                    .arg(file)
                    .arg(&dir),
            );
        }
        Readback::Ntfs3g => {
            common::ok(
                Command::new("ntfs-3g")
                    .args(["-o", "ro"])
                    .arg(file)
                    .arg(&dir),
            );
        }
        Readback::Mtools => {
            common::ok(
                Command::new("mcopy")
                    .args(["-s", "-n", "-p", "-m", "-i"])
                    .arg(file)
                    .arg("::/")
                    .arg(&dir)
                    .env("MTOOLS_SKIP_CHECK", "1"),
            );
        }
    }
    let root = dir.clone();
    let mut out = Tree::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(root.join(&rel))
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().into_string().unwrap();
            if rel.as_os_str().is_empty()
                && (name == "lost+found" || (f.fs_type == "ntfs" && name.starts_with('$')))
            {
                continue;
            }
            let p = rel.join(&name);
            let shown = format!("/{}", p.display());
            let meta = std::fs::symlink_metadata(root.join(&p)).unwrap();
            use std::os::unix::fs::MetadataExt;
            let kind = if meta.is_dir() {
                FileKind::Directory
            } else if meta.file_type().is_symlink() {
                FileKind::Symlink
            } else {
                FileKind::Regular
            };
            let mut desc = format!("{kind:?}");
            if f.modes {
                desc += &format!(
                    " mode={:o} uid={} gid={}",
                    meta.mode() & 0o7777,
                    meta.uid(),
                    meta.gid()
                );
            }
            match kind {
                FileKind::Directory => todo.push(p.clone()),
                FileKind::Symlink => {
                    desc += &format!(
                        " -> {}",
                        std::fs::read_link(root.join(&p)).unwrap().display()
                    )
                }
                _ => {
                    let data = std::fs::read(root.join(&p)).unwrap();
                    desc += &format!(" {} bytes crc {:08x}", data.len(), crc32fast::hash(&data));
                    if f.links && f.readback != Readback::Mtools {
                        desc += &format!(" links={}", meta.nlink());
                    }
                }
            }
            out.insert(shown, desc);
        }
    }
    if f.readback != Readback::Mtools {
        unmount(&dir);
    }
    out
}

fn model_test(f: Flavor) {
    if !common::have(f.mkfs[0]) || !common::have(f.checker[0]) {
        eprintln!(
            "note: {} or {} missing; run tools/install-deps",
            f.mkfs[0], f.checker[0]
        );
        return;
    }
    let sequences: u64 = std::env::var("STRATA_FS_MODEL_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let seed: u64 = std::env::var("STRATA_FS_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_0000 + f.mib * 31 + f.mkfs.len() as u64);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("fs.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(f.mib << 20)
        .unwrap();
    let (ok, out) = run(f.mkfs, &file);
    assert!(ok, "{:?}: {out}", f.mkfs);
    let names = names();
    let mut model = MountTable::new();
    model
        .mount(Box::new(MemFs::new()), "/dev/model", "/", false)
        .unwrap();
    let mut rng = Rng(seed | 1);
    let mut ops_run = 0;
    let mut succeeded = 0;
    let mut largest = 0;
    let mut known: Vec<String> = Vec::new();
    for s in 0..sequences {
        let mut t = open(&f, &file);
        let mut log = Vec::new();
        for _ in 0..20 {
            let o = op(&mut rng, &f, &names, &known);
            let want = apply(&mut model, &o).map_err(|e| e.errno);
            let got = apply(&mut t, &o).map_err(|e| e.errno);
            log.push(format!("{o:?} -> {got:?}"));
            assert_eq!(
                got, want,
                "{}: sequence {s} (seed {seed}): {o:?} gave {got:?}, the model {want:?}\nops so far:\n{}",
                f.fs_type,
                log.join("\n")
            );
            ops_run += 1;
            if got.is_ok() {
                succeeded += 1;
            }
        }
        t.umount_all().expect("close");
        let (clean, out) = run(f.checker, &file);
        assert!(
            clean,
            "{}: {:?} after sequence {s} (seed {seed}):\n{out}\nops:\n{}",
            f.fs_type,
            f.checker,
            log.join("\n")
        );
        let mut t = open(&f, &file);
        let got = tree(&mut t, &f);
        let want = tree(&mut model, &f);
        assert_eq!(
            got,
            want,
            "{}: tree after sequence {s} (seed {seed})\nops:\n{}",
            f.fs_type,
            log.join("\n")
        );
        t.umount_all().unwrap();
        largest = largest.max(want.len());
        known = want.keys().cloned().collect();
        if s % 10 == 9 || s + 1 == sequences {
            let outside = outside_tree(&f, &file, work.path());
            assert_eq!(
                outside, want,
                "{}: read back from outside after sequence {s} (seed {seed})",
                f.fs_type
            );
        }
    }
    eprintln!(
        "{}: {sequences} sequences, {ops_run} operations ({succeeded} succeeded), up to {largest} paths, seed {seed}",
        f.fs_type
    );
    assert!(
        succeeded * 4 > ops_run,
        "too few operations did anything: {succeeded} of {ops_run}"
    );
}

#[test]
fn ext4_with_mke2fs_defaults_matches_the_model() {
    model_test(EXT4);
}

#[test]
fn ext3_matches_the_model() {
    model_test(flavor("ext3", &["mke2fs", "-q", "-F", "-t", "ext3"], 48));
}

#[test]
fn ext2_matches_the_model() {
    model_test(flavor("ext2", &["mke2fs", "-q", "-F", "-t", "ext2"], 48));
}

#[test]
fn fat12_matches_the_model() {
    model_test(flavor("vfat", &["mkfs.vfat", "-F", "12"], 8));
}

#[test]
fn fat16_matches_the_model() {
    model_test(flavor("vfat", &["mkfs.vfat", "-F", "16"], 32));
}

#[test]
fn fat32_matches_the_model() {
    model_test(flavor("vfat", &["mkfs.vfat", "-F", "32"], 64));
}

#[test]
fn ntfs_matches_the_model() {
    model_test(flavor("ntfs", &["mkntfs", "-Q", "-F"], 64));
}
