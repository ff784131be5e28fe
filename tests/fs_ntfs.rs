//! The NTFS adapter against ntfs-3g's own tools: every test builds an image with
//! `mkntfs`, edits it through `strata::fs::open("ntfs", …)`, closes it, then checks that
//! `ntfsfix -n` finds it clean and that ntfs-3g (a read-only FUSE mount, ntfscat,
//! ntfsinfo) reads back what was written.
//!
//! Needs root and /dev/fuse for the mounts, and ntfs-3g's tools (tools/install-deps);
//! without them each test prints why and passes vacuously. CI has both.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use strata::fs::{self, FileKind, GuestFs, Ino, OpenOptions, Owner, SetAttr, Timespec};
use strata::store::device::{BlockDevice, FileDevice, MemDevice, SharedDevice};

const MIB: u64 = 1 << 20;

fn have(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Why this machine cannot run these tests, if it cannot.
fn missing() -> Option<String> {
    for t in [
        "mkntfs", "ntfsfix", "ntfs-3g", "ntfscat", "ntfsinfo", "ntfsls",
    ] {
        if !have(t) {
            return Some(format!("{t} missing (tools/install-deps installs ntfs-3g)"));
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (ntfs-3g mounts need it)".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    None
}

macro_rules! need_tools {
    () => {
        if let Some(why) = missing() {
            eprintln!("skipping: {why}");
            return;
        }
    };
}

fn run(cmd: &mut Command) -> std::process::Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct Image {
    _tmp: tempfile::TempDir,
    path: PathBuf,
    dir: PathBuf,
}

/// A fresh NTFS image of `size` bytes made by `mkntfs -Q -F` (and `extra` options).
fn image(size: u64, extra: &[&str]) -> Image {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("ntfs.img");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    ok(Command::new("mkntfs")
        .args(["-Q", "-F", "-q"])
        .args(extra)
        .arg(&path));
    Image {
        dir: tmp.path().to_path_buf(),
        _tmp: tmp,
        path,
    }
}

impl Image {
    fn device(&self, read_only: bool) -> SharedDevice {
        Arc::new(FileDevice::open(&self.path, read_only).unwrap())
    }

    fn open(&self) -> Box<dyn GuestFs> {
        fs::open("ntfs", self.device(false), OpenOptions::default()).unwrap()
    }

    fn open_ro(&self) -> Box<dyn GuestFs> {
        fs::open("ntfs", self.device(true), OpenOptions { read_only: true }).unwrap()
    }

    /// `ntfsfix -n` must find nothing to fix.
    fn assert_clean(&self) {
        let out = ok(Command::new("ntfsfix").arg("-n").arg(&self.path));
        assert!(
            out.contains("processed successfully") && !out.contains("FAILED"),
            "ntfsfix -n: {out}"
        );
    }

    /// A read-only ntfs-3g mount of the image, unmounted on drop.
    fn mount(&self) -> Mount {
        let at = self.dir.join(format!("mnt{}", rand_suffix()));
        std::fs::create_dir(&at).unwrap();
        ok(Command::new("ntfs-3g")
            .arg("-o")
            .arg("ro")
            .arg(&self.path)
            .arg(&at));
        Mount { at }
    }

    fn cat(&self, inside: &str) -> Vec<u8> {
        let o = run(Command::new("ntfscat").arg(&self.path).arg(inside));
        assert!(
            o.status.success(),
            "ntfscat {inside}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    }

    fn sha(&self) -> Vec<u8> {
        use sha2::Digest;
        sha2::Sha256::digest(std::fs::read(&self.path).unwrap()).to_vec()
    }
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

struct Mount {
    at: PathBuf,
}

impl Mount {
    fn p(&self, rel: &str) -> PathBuf {
        self.at.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let o = run(Command::new("umount").arg(&self.at));
        if !o.status.success() {
            let _ = run(Command::new("fusermount").arg("-u").arg(&self.at));
        }
    }
}

/// Deterministic bytes (xorshift), different per seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
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

const OWNER: Owner = Owner { uid: 0, gid: 0 };

fn mkfile(f: &mut dyn GuestFs, dir: Ino, name: &str, data: &[u8]) -> Ino {
    let ino = f.create(dir, name.as_bytes(), 0o644, OWNER).unwrap();
    if !data.is_empty() {
        f.write(ino, 0, data).unwrap();
    }
    ino
}

fn read_all(f: &mut dyn GuestFs, ino: Ino) -> Vec<u8> {
    let size = f.stat(ino).unwrap().size as usize;
    let mut buf = vec![0u8; size + 10];
    let mut got = 0;
    while got < buf.len() {
        let n = f.read(ino, got as u64, &mut buf[got..]).unwrap();
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    buf
}

fn names(f: &mut dyn GuestFs, dir: Ino) -> Vec<String> {
    f.readdir(dir)
        .unwrap()
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect()
}

fn errno<T: std::fmt::Debug>(r: fs::FsResult<T>) -> i32 {
    r.expect_err("expected an error").errno
}

fn host_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn files_dirs_symlinks_and_hard_links_read_back_through_ntfs_3g() {
    need_tools!();
    let img = image(64 * MIB, &["-L", "Windows"]);
    let mut f = img.open();
    let root = f.root();
    assert_eq!(root, 5);
    assert_eq!(f.fs_type(), "ntfs");
    let etc = f.mkdir(root, b"etc", 0o755, OWNER).unwrap();
    let hosts = mkfile(&mut *f, etc, "hosts", b"127.0.0.1 localhost\n");
    let big_data = pattern(1, 3 * MIB as usize + 12345);
    let big = mkfile(&mut *f, root, "big.bin", &big_data);
    assert_eq!(read_all(&mut *f, big), big_data);
    let empty = mkfile(&mut *f, root, "empty", b"");
    let sl = f.symlink(root, b"hosts-link", b"etc/hosts", OWNER).unwrap();
    f.link(hosts, root, b"hosts-hard").unwrap();
    let mtime = Timespec {
        sec: 1_600_000_000,
        nsec: 123_456_700,
    };
    let atime = Timespec {
        sec: 1_500_000_000,
        nsec: 0,
    };
    f.setattr(
        big,
        &SetAttr {
            mtime: Some(mtime),
            atime: Some(atime),
            ..Default::default()
        },
    )
    .unwrap();
    // chmod and chown are accepted and change nothing, as on a default ntfs-3g mount
    f.setattr(
        hosts,
        &SetAttr {
            mode: Some(0o600),
            uid: Some(1000),
            ..Default::default()
        },
    )
    .unwrap();

    // what the adapter says, before closing
    let st = f.stat(hosts).unwrap();
    assert_eq!((st.mode, st.nlink, st.uid, st.size), (0o100777, 2, 0, 20));
    assert_eq!(f.stat(etc).unwrap().mode, 0o40777);
    let lst = f.stat(sl).unwrap();
    assert_eq!(
        (lst.kind, lst.mode, lst.size),
        (FileKind::Symlink, 0o120777, 9)
    );
    assert_eq!(f.readlink(sl).unwrap(), b"etc/hosts");
    assert_eq!(f.stat(big).unwrap().mtime, mtime);
    assert_eq!(f.stat(big).unwrap().atime, atime);
    assert_eq!(f.lookup(root, b"hosts-hard").unwrap(), hosts);
    let mut listed = names(&mut *f, root);
    listed.sort();
    assert_eq!(
        listed,
        ["big.bin", "empty", "etc", "hosts-hard", "hosts-link"]
    );
    let kinds: BTreeMap<String, FileKind> = f
        .readdir(root)
        .unwrap()
        .into_iter()
        .map(|e| (String::from_utf8(e.name).unwrap(), e.kind))
        .collect();
    assert_eq!(kinds["etc"], FileKind::Directory);
    assert_eq!(kinds["hosts-link"], FileKind::Symlink);
    assert_eq!(kinds["empty"], FileKind::Regular);
    assert_eq!(
        f.lookup(root, b"$MFT").map_err(|e| e.errno),
        Err(libc::ENOENT)
    );
    f.close().unwrap();
    img.assert_clean();

    assert_eq!(img.cat("/etc/hosts"), b"127.0.0.1 localhost\n");
    assert_eq!(img.cat("/big.bin"), big_data);
    let m = img.mount();
    assert_eq!(
        host_names(&m.at),
        ["big.bin", "empty", "etc", "hosts-hard", "hosts-link"]
    );
    assert_eq!(
        std::fs::read_link(m.p("hosts-link")).unwrap(),
        Path::new("etc/hosts")
    );
    assert_eq!(
        std::fs::read(m.p("hosts-link")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    let md = std::fs::metadata(m.p("etc/hosts")).unwrap();
    assert_eq!((md.nlink(), md.ino(), md.mode()), (2, hosts, 0o100777));
    assert_eq!(std::fs::metadata(m.p("hosts-hard")).unwrap().ino(), hosts);
    let md = std::fs::metadata(m.p("big.bin")).unwrap();
    assert_eq!(
        (md.mtime(), md.mtime_nsec()),
        (mtime.sec, mtime.nsec as i64)
    );
    assert_eq!(md.atime(), atime.sec);
    assert_eq!(md.ino(), big);
    assert_eq!(std::fs::metadata(m.p("empty")).unwrap().len(), 0);
    assert_eq!(std::fs::metadata(m.p("empty")).unwrap().ino(), empty);
    drop(m);

    // reopened, the adapter's stat agrees with ntfs-3g's for every inode
    let mut f = img.open_ro();
    let m = img.mount();
    for name in [
        "big.bin",
        "empty",
        "etc",
        "hosts-hard",
        "hosts-link",
        "etc/hosts",
    ] {
        let mut ino = f.root();
        for part in name.split('/') {
            ino = f.lookup(ino, part.as_bytes()).unwrap();
        }
        let st = f.stat(ino).unwrap();
        let md = std::fs::symlink_metadata(m.p(name)).unwrap();
        assert_eq!(
            (
                st.ino,
                st.mode,
                st.nlink as u64,
                st.size,
                st.blocks,
                st.blksize as u64
            ),
            (
                md.ino(),
                md.mode(),
                md.nlink(),
                md.size(),
                md.blocks(),
                md.blksize()
            ),
            "{name}"
        );
        assert_eq!((st.uid, st.gid), (md.uid(), md.gid()));
        assert_eq!(
            (st.mtime.sec, st.mtime.nsec as i64),
            (md.mtime(), md.mtime_nsec()),
            "{name}"
        );
        assert_eq!(
            (st.ctime.sec, st.ctime.nsec as i64),
            (md.ctime(), md.ctime_nsec()),
            "{name}"
        );
    }
    let root_st = f.stat(5).unwrap();
    let md = std::fs::metadata(&m.at).unwrap();
    assert_eq!(
        (root_st.mode, root_st.size, root_st.nlink as u64),
        (md.mode(), md.size(), md.nlink())
    );
    let v = f.statvfs().unwrap();
    // SAFETY: a zeroed statvfs is a valid out-buffer.
    let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
    let cpath = std::ffi::CString::new(m.at.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::statvfs(cpath.as_ptr(), &mut sv) }, 0);
    assert_eq!(
        (v.bsize, v.blocks, v.bfree, v.files, v.ffree, v.namemax),
        (
            sv.f_bsize,
            sv.f_blocks,
            sv.f_bfree,
            sv.f_files,
            sv.f_ffree,
            sv.f_namemax
        )
    );
    drop(m);
    assert_eq!(
        strata::fs::ntfs::Ntfs::read_label(img.device(true)).unwrap(),
        "Windows"
    );
    assert_eq!(
        strata::fs::ntfs::Ntfs::open(img.device(true), OpenOptions { read_only: true })
            .unwrap()
            .label(),
        "Windows"
    );
}

#[test]
fn a_directory_of_3000_entries_lists_and_looks_up_everything() {
    need_tools!();
    let img = image(128 * MIB, &[]);
    let mut f = img.open();
    let root = f.root();
    let d = f.mkdir(root, b"many", 0o755, OWNER).unwrap();
    let mut inos = BTreeMap::new();
    for i in 0..3000 {
        let name = format!("file-{i:05}-{}", "x".repeat(i % 40));
        let ino = mkfile(&mut *f, d, &name, format!("{i}\n").as_bytes());
        inos.insert(name, ino);
    }
    let listed: BTreeMap<String, Ino> = f
        .readdir(d)
        .unwrap()
        .into_iter()
        .map(|e| (String::from_utf8(e.name).unwrap(), e.ino))
        .collect();
    assert_eq!(listed, inos);
    // remove every third, then check again after reopening
    for (i, name) in inos.keys().enumerate() {
        if i % 3 == 0 {
            f.unlink(d, name.as_bytes()).unwrap();
        }
    }
    f.close().unwrap();
    img.assert_clean();
    let kept: Vec<String> = inos
        .keys()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(_, n)| n.clone())
        .collect();
    let mut f = img.open();
    let mut listed = names(&mut *f, d);
    listed.sort();
    assert_eq!(listed, kept);
    for name in &kept {
        let ino = f.lookup(d, name.as_bytes()).unwrap();
        assert_eq!(ino, inos[name]);
    }
    f.close().unwrap();
    let m = img.mount();
    assert_eq!(host_names(&m.p("many")), kept);
    let n: usize = kept[1234].split('-').nth(1).unwrap().parse().unwrap();
    assert_eq!(
        std::fs::read(m.p(&format!("many/{}", kept[1234]))).unwrap(),
        format!("{n}\n").as_bytes()
    );
}

/// Runs of the file's unnamed $DATA, as `ntfsinfo -v` lists them.
fn runs_of(img: &Image, ino: Ino) -> usize {
    let out = ok(Command::new("ntfsinfo")
        .arg("-v")
        .arg("-i")
        .arg(ino.to_string())
        .arg(&img.path));
    let total = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Total runs: "))
        .map(|r| {
            r.split_whitespace()
                .next()
                .unwrap()
                .parse::<usize>()
                .unwrap()
        })
        .max();
    total.unwrap_or(0)
}

#[test]
fn a_file_grown_between_others_is_fragmented_and_reads_back_whole() {
    need_tools!();
    let img = image(64 * MIB, &[]);
    let mut f = img.open();
    let root = f.root();
    let frag = mkfile(&mut *f, root, "fragmented", b"");
    let mut expect = Vec::new();
    let mut fillers = Vec::new();
    for i in 0..200 {
        let chunk = pattern(100 + i, 8192 + (i as usize % 3) * 4096);
        f.write(frag, expect.len() as u64, &chunk).unwrap();
        expect.extend_from_slice(&chunk);
        let name = format!("filler{i}");
        mkfile(&mut *f, root, &name, &pattern(i, 4096));
        fillers.push(name);
    }
    for name in fillers.iter().step_by(2) {
        f.unlink(root, name.as_bytes()).unwrap();
    }
    // a rewrite in the middle, across runs
    let patch = pattern(7, 50_000);
    f.write(frag, 100_000, &patch).unwrap();
    expect[100_000..150_000].copy_from_slice(&patch);
    assert_eq!(read_all(&mut *f, frag), expect);
    f.close().unwrap();
    img.assert_clean();
    let runs = runs_of(&img, frag);
    assert!(runs >= 50, "only {runs} runs");
    assert_eq!(img.cat("/fragmented"), expect);
    let m = img.mount();
    assert_eq!(std::fs::read(m.p("fragmented")).unwrap(), expect);
    assert_eq!(host_names(&m.at).len(), 101);
}

#[test]
fn writing_past_the_end_leaves_a_sparse_hole_of_zeros() {
    need_tools!();
    let img = image(64 * MIB, &[]);
    let mut f = img.open();
    let root = f.root();
    let s = mkfile(&mut *f, root, "sparse", b"head");
    // far past what the volume could hold if the gap were allocated
    let far = 1u64 << 30;
    f.write(s, far, b"tail").unwrap();
    let st = f.stat(s).unwrap();
    assert_eq!(st.size, far + 4);
    assert!(st.blocks * 512 < 8 * MIB, "{} blocks allocated", st.blocks);
    let mut buf = vec![1u8; 8192];
    assert_eq!(f.read(s, far - 4096, &mut buf).unwrap(), 4096 + 4);
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert_eq!(&buf[4096..4100], b"tail");
    // truncating up is sparse too
    let t = mkfile(&mut *f, root, "truncated", b"");
    f.truncate(t, 512 * MIB).unwrap();
    assert_eq!(f.stat(t).unwrap().size, 512 * MIB);
    f.truncate(s, 2).unwrap();
    assert_eq!(read_all(&mut *f, s), b"he");
    f.write(s, far, b"tail").unwrap();
    f.close().unwrap();
    img.assert_clean();
    let m = img.mount();
    let md = std::fs::metadata(m.p("sparse")).unwrap();
    assert_eq!(md.len(), far + 4);
    assert!(md.blocks() * 512 < 8 * MIB);
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(m.p("sparse")).unwrap();
    let mut b = vec![1u8; 6];
    file.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(b, b"he\0\0\0\0");
    file.read_exact_at(&mut b[..4], far).unwrap();
    assert_eq!(&b[..4], b"tail");
    assert_eq!(
        std::fs::metadata(m.p("truncated")).unwrap().len(),
        512 * MIB
    );
}

#[test]
fn a_deep_tree_of_directories_resolves_to_its_leaf() {
    need_tools!();
    let img = image(64 * MIB, &[]);
    let mut f = img.open();
    let mut dir = f.root();
    let mut path = String::new();
    for i in 0..120 {
        let name = format!("d{i}");
        dir = f.mkdir(dir, name.as_bytes(), 0o755, OWNER).unwrap();
        path.push_str(&name);
        path.push('/');
    }
    mkfile(&mut *f, dir, "leaf", b"deep\n");
    f.close().unwrap();
    img.assert_clean();
    let m = img.mount();
    assert_eq!(
        std::fs::read(m.p(&format!("{path}leaf"))).unwrap(),
        b"deep\n"
    );
    drop(m);
    // moving the top directory into its own leaf is refused
    let mut f = img.open();
    let d0 = f.lookup(f.root(), b"d0").unwrap();
    assert_eq!(errno(f.rename(f.root(), b"d0", dir, b"loop")), libc::EINVAL);
    assert_eq!(errno(f.rename(f.root(), b"d0", d0, b"loop")), libc::EINVAL);
    f.close().unwrap();
    img.assert_clean();
}

#[test]
fn non_ascii_and_255_unit_names_round_trip_and_longer_ones_are_refused() {
    need_tools!();
    let img = image(64 * MIB, &[]);
    let mut f = img.open();
    let root = f.root();
    let long_e = "é".repeat(255);
    let long_emoji = format!("{}x", "😀".repeat(127)); // 255 UTF-16 units
    let names_in = [
        "Привет мир".to_string(),
        "日本語のファイル.txt".to_string(),
        "a:b*?<>|\\\"".to_string(), // forbidden on Windows, allowed in POSIX names
        long_e.clone(),
        long_emoji.clone(),
        "x".repeat(255),
        "Case".to_string(),
        "case".to_string(),
    ];
    for (i, n) in names_in.iter().enumerate() {
        mkfile(&mut *f, root, n, format!("{i}").as_bytes());
    }
    assert_ne!(
        f.lookup(root, b"Case").unwrap(),
        f.lookup(root, b"case").unwrap()
    );
    assert_eq!(errno(f.lookup(root, b"CASE")), libc::ENOENT);
    assert_eq!(
        errno(f.create(root, "x".repeat(256).as_bytes(), 0o644, OWNER)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(f.create(root, "😀".repeat(128).as_bytes(), 0o644, OWNER)),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(f.lookup(root, "😀".repeat(128).as_bytes())),
        libc::ENAMETOOLONG
    );
    // bytes that are not UTF-8 cannot become an NTFS name: ntfs-3g says EILSEQ
    assert_eq!(
        errno(f.create(root, b"bad\xff", 0o644, OWNER)),
        libc::EILSEQ
    );
    assert_eq!(errno(f.lookup(root, b"bad\xff")), libc::EILSEQ);
    assert_eq!(errno(f.create(root, b"Case", 0o644, OWNER)), libc::EEXIST);
    assert_eq!(errno(f.mkdir(root, b"case", 0o755, OWNER)), libc::EEXIST);
    f.close().unwrap();
    img.assert_clean();
    let m = img.mount();
    let mut expect: Vec<String> = names_in.to_vec();
    expect.sort();
    assert_eq!(host_names(&m.at), expect);
    for (i, n) in names_in.iter().enumerate() {
        assert_eq!(
            std::fs::read(m.p(n)).unwrap(),
            format!("{i}").as_bytes(),
            "{n}"
        );
    }
}

#[test]
fn unlink_rmdir_and_rename_follow_posix_and_leave_the_volume_clean() {
    need_tools!();
    let img = image(64 * MIB, &[]);
    let mut f = img.open();
    let r = f.root();
    let a = f.mkdir(r, b"a", 0o755, OWNER).unwrap();
    let b = f.mkdir(r, b"b", 0o755, OWNER).unwrap();
    let fa = mkfile(&mut *f, a, "f", b"from a");
    let fb = mkfile(&mut *f, b, "g", b"in b");
    let full = f.mkdir(r, b"full", 0o755, OWNER).unwrap();
    mkfile(&mut *f, full, "x", b"x");
    let empty = f.mkdir(r, b"empty", 0o755, OWNER).unwrap();

    assert_eq!(errno(f.unlink(r, b"a")), libc::EISDIR);
    assert_eq!(errno(f.rmdir(a, b"f")), libc::ENOTDIR);
    assert_eq!(errno(f.rmdir(r, b"full")), libc::ENOTEMPTY);
    assert_eq!(errno(f.unlink(r, b"nothere")), libc::ENOENT);
    assert_eq!(errno(f.unlink(r, b"$LogFile")), libc::EPERM);
    assert_eq!(errno(f.truncate(2, 0)), libc::EPERM);
    assert_eq!(errno(f.link(a, r, b"dirlink")), libc::EPERM);
    assert_eq!(errno(f.lookup(fa, b"x")), libc::ENOTDIR);
    assert_eq!(errno(f.create(fa, b"x", 0o644, OWNER)), libc::ENOTDIR);
    assert_eq!(errno(f.write(a, 0, b"x")), libc::EISDIR);
    assert_eq!(errno(f.read(a, 0, &mut [0u8; 4])), libc::EISDIR);
    assert_eq!(errno(f.readlink(fa)), libc::EINVAL);
    assert_eq!(errno(f.symlink(r, b"nolink", b"", OWNER)), libc::ENOENT);

    // a file over a file, across directories: the target's inode goes
    f.rename(a, b"f", b, b"g").unwrap();
    assert_eq!(f.lookup(b, b"g").unwrap(), fa);
    assert_eq!(errno(f.lookup(a, b"f")), libc::ENOENT);
    assert_eq!(errno(f.stat(fb)), libc::ENOENT);
    // type mismatches and a non-empty target
    assert_eq!(errno(f.rename(b, b"g", r, b"a")), libc::EISDIR);
    assert_eq!(errno(f.rename(r, b"a", b, b"g")), libc::ENOTDIR);
    assert_eq!(errno(f.rename(r, b"a", r, b"full")), libc::ENOTEMPTY);
    assert_eq!(errno(f.rename(r, b"nothere", r, b"x")), libc::ENOENT);
    // a directory over an empty one, then into another directory
    f.rename(r, b"a", r, b"empty").unwrap();
    assert_eq!(f.lookup(r, b"empty").unwrap(), a);
    assert_eq!(errno(f.stat(empty)), libc::ENOENT);
    f.rename(r, b"empty", b, b"moved").unwrap();
    assert_eq!(f.lookup(b, b"moved").unwrap(), a);
    // hard links of one inode: rename does nothing
    f.link(fa, r, b"alias").unwrap();
    f.rename(r, b"alias", b, b"g").unwrap();
    assert_eq!(f.lookup(r, b"alias").unwrap(), fa);
    assert_eq!(f.stat(fa).unwrap().nlink, 2);
    // a case change in place
    f.rename(r, b"alias", r, b"ALIAS").unwrap();
    assert_eq!(f.lookup(r, b"ALIAS").unwrap(), fa);
    assert_eq!(errno(f.lookup(r, b"alias")), libc::ENOENT);
    f.unlink(r, b"ALIAS").unwrap();
    assert_eq!(f.stat(fa).unwrap().nlink, 1);
    f.rmdir(b, b"moved").unwrap();
    // a non-empty tree moves whole, and its contents come along
    let tree = f.mkdir(r, b"tree", 0o755, OWNER).unwrap();
    let sub = f.mkdir(tree, b"sub", 0o755, OWNER).unwrap();
    mkfile(&mut *f, sub, "leaf", b"leaf data");
    f.rename(r, b"tree", b, b"tree2").unwrap();
    assert_eq!(f.lookup(b, b"tree2").unwrap(), tree);
    assert_eq!(f.lookup(tree, b"sub").unwrap(), sub);
    assert_eq!(errno(f.rename(b, b"tree2", sub, b"x")), libc::EINVAL);
    f.unlink(full, b"x").unwrap();
    f.rmdir(r, b"full").unwrap();
    f.close().unwrap();
    img.assert_clean();
    let m = img.mount();
    assert_eq!(host_names(&m.at), ["b"]);
    assert_eq!(host_names(&m.p("b")), ["g", "tree2"]);
    assert_eq!(
        std::fs::read(m.p("b/tree2/sub/leaf")).unwrap(),
        b"leaf data"
    );
    assert_eq!(
        std::fs::read(m.p("b/tree2/sub/../../g")).unwrap(),
        b"from a"
    );
    assert_eq!(std::fs::read(m.p("b/g")).unwrap(), b"from a");
    assert_eq!(std::fs::metadata(m.p("b/g")).unwrap().nlink(), 1);
}

#[test]
fn running_out_of_space_fails_with_enospc_and_leaves_the_volume_clean() {
    need_tools!();
    let img = image(16 * MIB, &[]);
    let mut f = img.open();
    let r = f.root();
    let big = mkfile(&mut *f, r, "big", b"");
    let chunk = pattern(3, MIB as usize);
    let mut written = 0u64;
    let err = loop {
        match f.write(big, written, &chunk) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => break e,
        }
        assert!(written < 32 * MIB, "a 16 MiB volume took {written} bytes");
    };
    assert_eq!(err.errno, libc::ENOSPC, "{err}");
    // small files until the MFT or the clusters run out too
    let mut n = 0;
    let err = loop {
        match f.create(r, format!("small{n}").as_bytes(), 0o644, OWNER) {
            Ok(ino) => {
                if let Err(e) = f.write(ino, 0, &pattern(n, 2000)) {
                    break e;
                }
            }
            Err(e) => break e,
        }
        n += 1;
        assert!(n < 100_000);
    };
    assert_eq!(err.errno, libc::ENOSPC, "{err}");
    let size = f.stat(big).unwrap().size;
    assert!(size >= written, "{size} < {written}");
    let sv = f.statvfs().unwrap();
    assert!(sv.bfree < 16, "{} clusters free", sv.bfree);
    f.close().unwrap();
    img.assert_clean();
    let m = img.mount();
    let got = std::fs::read(m.p("big")).unwrap();
    assert_eq!(got.len() as u64, size);
    assert_eq!(&got[..chunk.len()], &chunk[..]);
    drop(m);
    // and space comes back when the file goes
    let mut f = img.open();
    f.unlink(r, b"big").unwrap();
    let free = f.statvfs().unwrap().bfree;
    assert!(
        free * 4096 > 8 * MIB,
        "{free} clusters free after the delete"
    );
    let again = mkfile(&mut *f, r, "again", &chunk);
    assert_eq!(read_all(&mut *f, again), chunk);
    f.close().unwrap();
    img.assert_clean();
}

/// Creates `/hiberfil.sys` through a read-write ntfs-3g mount, starting with `head`.
fn add_hiberfile(img: &Image, head: &[u8]) {
    let at = img.dir.join("rw");
    std::fs::create_dir_all(&at).unwrap();
    ok(Command::new("ntfs-3g").arg(&img.path).arg(&at));
    let mut data = head.to_vec();
    data.resize(64 * 1024, 0);
    let w = std::fs::write(at.join("hiberfil.sys"), &data);
    ok(Command::new("umount").arg(&at));
    w.unwrap();
}

#[test]
fn a_hibernated_volume_is_refused_read_write_and_opens_read_only() {
    need_tools!();
    let img = image(64 * MIB, &[]);
    add_hiberfile(&img, b"hibr");
    let before = img.sha();
    let e = fs::open("ntfs", img.device(false), OpenOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.errno, libc::EPERM, "{e}");
    assert!(e.detail.contains("hibernated"), "{e}");
    assert_eq!(img.sha(), before, "the refused open wrote to the device");
    let mut f = img.open_ro();
    let h = f.lookup(f.root(), b"hiberfil.sys").unwrap();
    let mut head = [0u8; 4];
    f.read(h, 0, &mut head).unwrap();
    assert_eq!(&head, b"hibr");
    f.close().unwrap();
    assert_eq!(img.sha(), before);
    // a zeroed hibernation file means Windows resumed: fine
    let img = image(64 * MIB, &[]);
    add_hiberfile(&img, &[0u8; 4]);
    img.open().close().unwrap();
}

/// Writes `page` at the start of `$LogFile`'s data (found with `ntfsinfo`).
fn overwrite_logfile_start(img: &Image, page: &[u8]) {
    let out = ok(Command::new("ntfsinfo")
        .args(["-v", "-i", "2"])
        .arg(&img.path));
    let mut lines = out.lines().skip_while(|l| !l.contains("Runlist:"));
    lines.next();
    let first = lines.next().expect("a run of $LogFile");
    let cols: Vec<&str> = first.split_whitespace().collect();
    let lcn = u64::from_str_radix(cols[1].trim_start_matches("0x"), 16).unwrap();
    let info = ok(Command::new("ntfsinfo").arg("-m").arg(&img.path));
    let csize: u64 = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("Cluster Size: "))
        .unwrap()
        .parse()
        .unwrap();
    let dev = FileDevice::open(&img.path, false).unwrap();
    dev.write_at(page, lcn * csize).unwrap();
    dev.flush().unwrap();
}

/// A $LogFile restart page (version `major.minor`) with one log client still in use and
/// no "volume is clean" flag: what Windows leaves when it does not shut down cleanly.
fn restart_page(logfile_size: u64, major: u16, minor: u16) -> Vec<u8> {
    let mut p = vec![0u8; 4096];
    let put16 = |p: &mut Vec<u8>, o: usize, v: u16| p[o..o + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |p: &mut Vec<u8>, o: usize, v: u32| p[o..o + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |p: &mut Vec<u8>, o: usize, v: u64| p[o..o + 8].copy_from_slice(&v.to_le_bytes());
    p[0..4].copy_from_slice(b"RSTR");
    put16(&mut p, 4, 0x1e); // update sequence array offset
    put16(&mut p, 6, 9); // 1 + 4096 / 512
    put32(&mut p, 16, 4096); // system page size
    put32(&mut p, 20, 4096); // log page size
    put16(&mut p, 24, 0x30); // restart area offset
    put16(&mut p, 26, minor);
    put16(&mut p, 28, major);
    let ra = 0x30;
    put64(&mut p, ra, 0x1234); // current LSN
    put16(&mut p, ra + 8, 1); // log clients
    put16(&mut p, ra + 10, 0xffff); // free list: none
    put16(&mut p, ra + 12, 0); // in-use list: client 0
    put16(&mut p, ra + 14, 0); // flags: not clean
    let bits = 64 - logfile_size.leading_zeros();
    put32(&mut p, ra + 16, 67 - bits); // sequence number bits
    put16(&mut p, ra + 20, 0x40 + 0xa0); // restart area length
    put16(&mut p, ra + 22, 0x40); // client array offset
    put64(&mut p, ra + 24, logfile_size);
    put16(&mut p, ra + 36, 0x30); // log record header length
    put16(&mut p, ra + 38, 0x40); // log page data offset
    let client = ra + 0x40;
    put16(&mut p, client + 16, 0xffff); // prev client
    put16(&mut p, client + 18, 0xffff); // next client
    put32(&mut p, client + 28, 8); // name length in bytes
    for (i, c) in "NTFS".encode_utf16().enumerate() {
        put16(&mut p, client + 32 + 2 * i, c);
    }
    // multi-sector protection: sequence number 1 at each sector's end, originals saved
    put16(&mut p, 0x1e, 1);
    for s in 0..8 {
        let end = s * 512 + 510;
        let orig = u16::from_le_bytes([p[end], p[end + 1]]);
        put16(&mut p, 0x20 + 2 * s, orig);
        put16(&mut p, end, 1);
    }
    p
}

#[test]
fn an_unclean_logfile_is_refused_read_write_and_opens_read_only() {
    need_tools!();
    let img = image(64 * MIB, &[]);
    let size = img.cat("/$LogFile").len() as u64;
    overwrite_logfile_start(&img, &restart_page(size, 1, 1));
    let before = img.sha();
    let e = fs::open("ntfs", img.device(false), OpenOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.errno, libc::EOPNOTSUPP, "{e}");
    assert!(e.detail.contains("$LogFile is unclean"), "{e}");
    let mut f = img.open_ro();
    assert!(names(&mut *f, 5).is_empty());
    f.close().unwrap();
    assert_eq!(img.sha(), before);
    // restart page version 2.0 is Windows Fast Startup's cached metadata: EPERM
    let img = image(64 * MIB, &[]);
    overwrite_logfile_start(&img, &restart_page(size, 2, 0));
    let e = fs::open("ntfs", img.device(false), OpenOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.errno, libc::EPERM, "{e}");
}

#[test]
fn a_read_only_open_changes_no_byte_and_refuses_changes_with_erofs() {
    need_tools!();
    let img = image(64 * MIB, &[]);
    let mut f = img.open();
    let r = f.root();
    let d = f.mkdir(r, b"d", 0o755, OWNER).unwrap();
    let file = mkfile(&mut *f, d, "f", &pattern(9, 100_000));
    f.symlink(r, b"l", b"d/f", OWNER).unwrap();
    // atimes older than mtimes: a read-write mount would move them (relatime)
    f.setattr(
        file,
        &SetAttr {
            atime: Some(Timespec { sec: 1, nsec: 0 }),
            ..Default::default()
        },
    )
    .unwrap();
    f.close().unwrap();
    let before = img.sha();
    let mut f = img.open_ro();
    let file = f.lookup(d, b"f").unwrap();
    assert_eq!(read_all(&mut *f, file), pattern(9, 100_000));
    names(&mut *f, r);
    names(&mut *f, d);
    let l = f.lookup(r, b"l").unwrap();
    assert_eq!(f.readlink(l).unwrap(), b"d/f");
    f.statvfs().unwrap();
    f.used_blocks().unwrap();
    assert_eq!(f.stat(file).unwrap().atime, Timespec { sec: 1, nsec: 0 });
    assert_eq!(errno(f.write(file, 0, b"x")), libc::EROFS);
    assert_eq!(errno(f.create(r, b"new", 0o644, OWNER)), libc::EROFS);
    assert_eq!(errno(f.unlink(d, b"f")), libc::EROFS);
    assert_eq!(errno(f.rename(d, b"f", r, b"g")), libc::EROFS);
    assert_eq!(
        errno(f.setattr(
            file,
            &SetAttr {
                mode: Some(0o600),
                ..Default::default()
            }
        )),
        libc::EROFS
    );
    assert_eq!(errno(f.truncate(file, 0)), libc::EROFS);
    f.sync().unwrap();
    f.close().unwrap();
    assert_eq!(img.sha(), before);
    // a read-only device cannot be opened read-write
    let e = fs::open("ntfs", img.device(true), OpenOptions::default())
        .err()
        .unwrap();
    assert_eq!(e.errno, libc::EROFS);
    // a read-write open that only reads moves atime (relatime), as ntfs-3g does
    let mut f = img.open();
    read_all(&mut *f, file);
    assert!(f.stat(file).unwrap().atime.sec > 1);
    f.close().unwrap();
    img.assert_clean();
}

#[test]
fn used_blocks_cover_every_allocated_cluster_and_the_backup_boot_sector() {
    need_tools!();
    let img = image(64 * MIB, &[]);
    let mut f = img.open();
    let r = f.root();
    let big = mkfile(&mut *f, r, "big", &pattern(5, 5 * MIB as usize));
    let used = f.used_blocks().unwrap();
    let sv = f.statvfs().unwrap();
    let total: u64 = used.iter().map(|r| r.1).sum();
    let allocated = (sv.blocks - sv.bfree) * sv.frsize;
    assert!(
        total >= allocated && total <= allocated + 4096,
        "{total} vs {allocated}"
    );
    assert_eq!(used[0].0, 0, "the boot sector is used");
    for w in used.windows(2) {
        assert!(w[0].0 + w[0].1 < w[1].0, "ranges not merged: {w:?}");
    }
    let len = 64 * MIB;
    assert!(
        used.iter().any(|&(o, l)| o + l == len),
        "backup boot sector at the end: {used:?}"
    );
    // zeroing everything else keeps the filesystem and the file intact
    f.close().unwrap();
    let dev = FileDevice::open(&img.path, false).unwrap();
    let mut pos = 0;
    let zeros = vec![0u8; MIB as usize];
    for &(o, l) in used.iter().chain(std::iter::once(&(len, 0))) {
        while pos < o {
            let n = (o - pos).min(MIB);
            dev.write_at(&zeros[..n as usize], pos).unwrap();
            pos += n;
        }
        pos = pos.max(o + l);
    }
    dev.flush().unwrap();
    drop(dev);
    img.assert_clean();
    let mut f = img.open_ro();
    assert_eq!(read_all(&mut *f, big), pattern(5, 5 * MIB as usize));
    f.close().unwrap();
}

#[test]
fn damaged_images_give_errors_and_never_crash() {
    need_tools!();
    let img = image(16 * MIB, &[]);
    let mut f = img.open();
    let r = f.root();
    let d = f.mkdir(r, b"dir", 0o755, OWNER).unwrap();
    for i in 0..40 {
        mkfile(&mut *f, d, &format!("f{i}"), &pattern(i, 3000));
    }
    f.symlink(r, b"link", b"dir/f1", OWNER).unwrap();
    f.close().unwrap();
    let pristine = std::fs::read(&img.path).unwrap();
    // the MFT of a 16 MiB mkntfs volume starts at cluster 4
    let mft = 4 * 4096usize;
    let mut seed = 0x5eed_u64;
    let (mut refused, mut walked) = (0, 0);
    for round in 0..60 {
        let mut bytes = pristine.clone();
        for _ in 0..(1 + round % 8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let at = mft + (seed as usize % (96 * 1024));
            bytes[at] ^= (seed >> 32) as u8 | 1;
        }
        std::fs::write(&img.path, &bytes).unwrap();
        let Ok(mut f) = fs::open("ntfs", img.device(true), OpenOptions { read_only: true }) else {
            refused += 1;
            continue;
        };
        // walk everything; errors are fine, crashes are not
        let mut stack = vec![f.root()];
        let mut seen = 0;
        while let Some(dir) = stack.pop() {
            seen += 1;
            if seen > 500 {
                break;
            }
            let Ok(entries) = f.readdir(dir) else {
                continue;
            };
            for e in entries {
                let _ = f.lookup(dir, &e.name);
                match f.stat(e.ino) {
                    Ok(st) if st.kind == FileKind::Directory => stack.push(e.ino),
                    Ok(st) if st.kind == FileKind::Symlink => {
                        let _ = f.readlink(e.ino);
                    }
                    Ok(_) => {
                        let mut buf = vec![0u8; 8192];
                        let _ = f.read(e.ino, 0, &mut buf);
                    }
                    Err(_) => {}
                }
            }
        }
        walked += seen;
        let _ = f.used_blocks();
        let _ = f.close();
        // and writing to it, on a copy in memory
        let mem: SharedDevice = Arc::new(MemDevice::new(bytes.clone()));
        let Ok(mut f) = fs::open("ntfs", mem, OpenOptions::default()) else {
            continue;
        };
        let root = f.root();
        let Ok(entries) = f.readdir(root) else {
            continue;
        };
        for e in entries {
            if let Ok(st) = f.stat(e.ino) {
                if st.kind == FileKind::Directory {
                    let _ = f.create(e.ino, b"new", 0o644, OWNER);
                    for sub in f.readdir(e.ino).unwrap_or_default().iter().take(10) {
                        let _ = f.write(sub.ino, 100, b"more");
                        let _ = f.rename(e.ino, &sub.name, root, &sub.name);
                        let _ = f.unlink(root, &sub.name);
                    }
                } else {
                    let _ = f.truncate(e.ino, 10);
                }
            }
            let _ = f.rename(root, &e.name, root, b"renamed");
        }
        let _ = f.close();
    }
    eprintln!("damaged images: {refused} of 60 refused at mount, {walked} directories walked");
    // most damage lands in file records, not in what mounting needs
    assert!(
        refused < 45,
        "{refused} of 60 refused: the walk is not exercised"
    );
}

#[test]
fn fs_open_gives_the_ntfs_adapter_on_a_shared_device() {
    need_tools!();
    let img = image(16 * MIB, &["-L", "Data"]);
    let dev: SharedDevice = img.device(false);
    let mut f = fs::open("ntfs", dev.clone(), OpenOptions::default()).unwrap();
    assert_eq!(f.fs_type(), "ntfs");
    mkfile(&mut *f, 5, "x", b"y");
    f.sync().unwrap();
    // after sync the device holds a clean filesystem, before close
    img.assert_clean();
    assert_eq!(img.cat("/x"), b"y");
    f.close().unwrap();
    assert!(Arc::strong_count(&dev) == 1, "close released the device");
    let e = fs::open("ntfs", img.device(true), OpenOptions { read_only: true });
    assert!(e.is_ok());
    // not NTFS
    let blank = tempfile::NamedTempFile::new().unwrap();
    blank.as_file().set_len(MIB).unwrap();
    let dev: SharedDevice = Arc::new(FileDevice::open(blank.path(), true).unwrap());
    let e = fs::open("ntfs", dev, OpenOptions { read_only: true })
        .err()
        .unwrap();
    assert_eq!(e.errno, libc::EINVAL, "{e}");
}

/// 100 MiB through the adapter into a 1 GiB image, beside ntfs-3g mount + cp + sync.
/// `cargo nextest run --release -E 'test(/ntfs_write_throughput/)' --run-ignored all`
#[test]
#[ignore = "a measurement, not a check"]
fn ntfs_write_throughput() {
    need_tools!();
    let data = pattern(11, 100 * MIB as usize);
    let img = image(1024 * MIB, &[]);
    let t = Instant::now();
    let dev = img.device(false);
    let mut f = fs::open("ntfs", dev.clone(), OpenOptions::default()).unwrap();
    let ino = f.create(5, b"big", 0o644, OWNER).unwrap();
    for (i, chunk) in data.chunks(MIB as usize).enumerate() {
        f.write(ino, i as u64 * MIB, chunk).unwrap();
    }
    f.close().unwrap();
    dev.flush().unwrap();
    let ours = t.elapsed().as_secs_f64();
    img.assert_clean();

    let img2 = image(1024 * MIB, &[]);
    let src = img2.dir.join("src.bin");
    std::fs::write(&src, &data).unwrap();
    let at = img2.dir.join("rw");
    std::fs::create_dir(&at).unwrap();
    let t = Instant::now();
    ok(Command::new("ntfs-3g").arg(&img2.path).arg(&at));
    ok(Command::new("cp").arg(&src).arg(at.join("big")));
    ok(&mut Command::new("sync"));
    ok(Command::new("umount").arg(&at));
    ok(&mut Command::new("sync"));
    let theirs = t.elapsed().as_secs_f64();
    eprintln!(
        "100 MiB into a 1 GiB NTFS image: adapter {:.0} MiB/s ({ours:.2} s), ntfs-3g mount+cp+sync {:.0} MiB/s ({theirs:.2} s)",
        100.0 / ours,
        100.0 / theirs
    );
    assert_eq!(img.cat("/big").len(), data.len());
}

/// A reparse point buffer: `tag`, then a MOUNT_POINT (flags None) or SYMLINK (flags)
/// body naming `subst` and `print`.
fn reparse(tag: u32, subst: &str, print: &str, flags: Option<u32>) -> Vec<u8> {
    let s: Vec<u8> = subst.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    let p: Vec<u8> = print.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    let mut body = Vec::new();
    let put16 = |b: &mut Vec<u8>, v: usize| b.extend_from_slice(&(v as u16).to_le_bytes());
    match flags {
        None => {
            put16(&mut body, 0);
            put16(&mut body, s.len());
            put16(&mut body, s.len() + 2);
            put16(&mut body, p.len());
            body.extend_from_slice(&s);
            body.extend_from_slice(&[0, 0]);
            body.extend_from_slice(&p);
            body.extend_from_slice(&[0, 0]);
        }
        Some(flags) => {
            put16(&mut body, 0);
            put16(&mut body, s.len());
            put16(&mut body, s.len());
            put16(&mut body, p.len());
            body.extend_from_slice(&flags.to_le_bytes());
            body.extend_from_slice(&s);
            body.extend_from_slice(&p);
        }
    }
    let mut out = tag.to_le_bytes().to_vec();
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&body);
    out
}

fn set_reparse(path: &Path, data: &[u8]) {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let name = c"system.ntfs_reparse_data";
    // SAFETY: valid NUL-terminated strings and a buffer of data.len() bytes.
    let r = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            data.as_ptr().cast(),
            data.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
fn junctions_reparse_symlinks_and_interix_specials_match_ntfs_3g() {
    need_tools!();
    let img = image(64 * MIB, &[]);
    let at = img.dir.join("rw");
    std::fs::create_dir(&at).unwrap();
    ok(Command::new("ntfs-3g").arg(&img.path).arg(&at));
    let made = std::panic::catch_unwind(|| {
        std::fs::create_dir(at.join("target")).unwrap();
        std::fs::create_dir(at.join("junction")).unwrap();
        set_reparse(
            &at.join("junction"),
            &reparse(0xA000_0003, r"\??\C:\target", r"C:\target", None),
        );
        std::fs::write(at.join("relative"), b"").unwrap();
        set_reparse(
            &at.join("relative"),
            &reparse(0xA000_000C, r"target\x", r"target\x", Some(1)),
        );
        std::fs::write(at.join("wof"), b"").unwrap();
        let mut wof = 0x8000_0017u32.to_le_bytes().to_vec();
        wof.extend_from_slice(&[8, 0, 0, 0]);
        wof.extend_from_slice(&[0; 8]);
        set_reparse(&at.join("wof"), &wof);
        let c =
            |n: &str| std::ffi::CString::new(at.join(n).as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid paths.
        unsafe {
            assert_eq!(libc::mkfifo(c("fifo").as_ptr(), 0o644), 0);
            assert_eq!(
                libc::mknod(
                    c("chr").as_ptr(),
                    libc::S_IFCHR | 0o644,
                    libc::makedev(4, 5)
                ),
                0
            );
            assert_eq!(
                libc::mknod(
                    c("blk").as_ptr(),
                    libc::S_IFBLK | 0o644,
                    libc::makedev(8, 1)
                ),
                0
            );
        }
        std::os::unix::fs::symlink("target", at.join("interix")).unwrap();
    });
    ok(Command::new("umount").arg(&at));
    made.unwrap();

    let mut f = img.open();
    let m = img.mount();
    let mount_point = m.at.to_str().unwrap().to_string();
    let listed: BTreeMap<String, (Ino, FileKind)> = f
        .readdir(5)
        .unwrap()
        .into_iter()
        .map(|e| (String::from_utf8(e.name).unwrap(), (e.ino, e.kind)))
        .collect();
    let expect_kind = [
        ("junction", FileKind::Symlink),
        ("relative", FileKind::Symlink),
        ("wof", FileKind::Symlink),
        ("fifo", FileKind::Fifo),
        ("chr", FileKind::CharDevice),
        ("blk", FileKind::BlockDevice),
        ("interix", FileKind::Symlink),
        ("target", FileKind::Directory),
    ];
    for (name, kind) in expect_kind {
        let (ino, listed_kind) = listed[name];
        assert_eq!(listed_kind, kind, "{name} as listed");
        let st = f.stat(ino).unwrap();
        let md = std::fs::symlink_metadata(m.p(name)).unwrap();
        assert_eq!(st.kind, kind, "{name}");
        assert_eq!(
            (st.mode, st.nlink as u64, st.blocks, st.rdev),
            (md.mode(), md.nlink(), md.blocks(), md.rdev()),
            "{name}"
        );
        if name != "junction" {
            assert_eq!(st.size, md.size(), "{name}");
        }
        if kind == FileKind::Symlink {
            let ours = String::from_utf8(f.readlink(ino).unwrap()).unwrap();
            let theirs = std::fs::read_link(m.p(name))
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            // absolute junction targets are relative to the filesystem's root here
            let theirs = theirs
                .strip_prefix(&mount_point)
                .unwrap_or(&theirs)
                .to_string();
            assert_eq!(ours, theirs, "{name}");
            assert_eq!(ours.len() as u64, st.size, "{name}");
        }
    }
    drop(m);
    // a junction goes with unlink (it is a symlink to POSIX), not rmdir
    assert_eq!(errno(f.rmdir(5, b"junction")), libc::ENOTDIR);
    f.unlink(5, b"junction").unwrap();
    f.unlink(5, b"fifo").unwrap();
    f.close().unwrap();
    img.assert_clean();
}

#[test]
fn dropping_without_close_frees_the_volume_and_leaves_it_mountable() {
    need_tools!();
    let img = image(16 * MIB, &[]);
    let mem = Arc::new(MemDevice::new(std::fs::read(&img.path).unwrap()));
    let mut f = fs::open("ntfs", mem.clone(), OpenOptions::default()).unwrap();
    let ino = mkfile(&mut *f, 5, "kept", b"written through");
    f.write(ino, 0, b"WRITTEN").unwrap();
    drop(f);
    assert_eq!(
        Arc::strong_count(&mem),
        1,
        "the adapter let go of the device"
    );
    // what reached the device before the drop is a consistent filesystem
    std::fs::write(&img.path, mem.contents()).unwrap();
    img.assert_clean();
    assert_eq!(img.cat("/kept"), b"WRITTEN through");
}
