//! The ext2/3/4 adapter against the real tools: every test builds its filesystem with
//! mke2fs in a temporary file, edits it through `strata::fs::open` on a `FileDevice`, closes
//! it, and then asks `e2fsck -fn` whether it is clean and the kernel (a read-only loop
//! mount) or debugfs what it holds.
//!
//! Needs root (loop mounts) and e2fsprogs; CI has both.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use strata::fs::{FileKind, GuestFs, Ino, OpenOptions, Owner, SetAttr, Timespec};
use strata::store::device::FileDevice;

struct Image {
    _dir: tempfile::TempDir,
    path: PathBuf,
    kind: &'static str,
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e} (install e2fsprogs)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must(cmd: &str, args: &[&str]) -> String {
    let (ok, text) = run(cmd, args);
    assert!(ok, "{cmd} {args:?} failed:\n{text}");
    text
}

/// A fresh filesystem of `size_mib` made by `mke2fs -t kind extra...`.
fn mkfs(kind: &'static str, size_mib: u64, extra: &[&str]) -> Image {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fs.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(size_mib << 20)
        .unwrap();
    let mut args = vec!["-q", "-F", "-t", kind];
    args.extend_from_slice(extra);
    let p = path.to_str().unwrap().to_string();
    args.push(&p);
    must("mke2fs", &args);
    Image {
        _dir: dir,
        path,
        kind,
    }
}

impl Image {
    fn p(&self) -> &str {
        self.path.to_str().unwrap()
    }

    fn open(&self, read_only: bool) -> strata::fs::FsResult<Box<dyn GuestFs>> {
        // The device itself is always writable: read-only must come from the adapter.
        let dev = Arc::new(FileDevice::open(&self.path, false).unwrap());
        strata::fs::open(self.kind, dev, OpenOptions { read_only })
    }

    fn rw(&self) -> Box<dyn GuestFs> {
        self.open(false).unwrap()
    }

    fn fsck_clean(&self) {
        let (ok, text) = run("e2fsck", &["-fn", self.p()]);
        assert!(ok, "e2fsck -fn found problems:\n{text}");
    }

    fn debugfs(&self, request: &str) -> String {
        must("debugfs", &["-R", request, self.p()])
    }

    fn debugfs_w(&self, request: &str) {
        must("debugfs", &["-w", "-R", request, self.p()]);
    }

    fn mount(&self, read_only: bool) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let opts = if read_only { "loop,ro" } else { "loop" };
        must(
            "mount",
            &["-o", opts, self.p(), dir.path().to_str().unwrap()],
        );
        Mount { dir }
    }

    fn sha256(&self) -> Vec<u8> {
        Sha256::digest(std::fs::read(&self.path).unwrap()).to_vec()
    }
}

struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

const OWNER: Owner = Owner {
    uid: 1234,
    gid: 5678,
};

fn walk(fs: &mut dyn GuestFs, path: &str) -> Ino {
    let mut ino = fs.root();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        ino = fs
            .lookup(ino, c.as_bytes())
            .unwrap_or_else(|e| panic!("lookup {path}: {e}"));
    }
    ino
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .rotate_left(seed as u32 % 32) as u8
                ^ seed
        })
        .collect()
}

fn ts(sec: i64, nsec: u32) -> Timespec {
    Timespec { sec, nsec }
}

fn now_sec() -> i64 {
    Timespec::now().sec
}

/// Files, directories, both kinds of symlink, a hard link, attributes, a rename and the
/// removals, then e2fsck and the kernel's view of the result.
fn edit_and_check(img: &Image) {
    let before = now_sec();
    let mut fs = img.rw();
    let root = fs.root();
    assert_eq!(root, 2);
    let etc = fs.mkdir(root, b"etc", 0o755, OWNER).unwrap();
    let hosts = fs.create(etc, b"hosts", 0o644, OWNER).unwrap();
    fs.write(hosts, 0, b"127.0.0.1 localhost\n").unwrap();
    fs.write(hosts, 20, b"::1 localhost\n").unwrap();
    let big = fs
        .create(root, b"big", 0o640, Owner { uid: 0, gid: 0 })
        .unwrap();
    let data = pattern(3 << 20, 7);
    fs.write(big, 0, &data).unwrap();
    // Overwrite the middle, unaligned.
    fs.write(big, 1_000_001, b"middle").unwrap();
    let slow_target = "t/".repeat(100);
    fs.symlink(root, b"fast", b"etc/hosts", OWNER).unwrap();
    fs.symlink(root, b"slow", slow_target.as_bytes(), OWNER)
        .unwrap();
    fs.link(hosts, root, b"hosts-link").unwrap();
    assert_eq!(fs.stat(hosts).unwrap().nlink, 2);
    fs.setattr(
        hosts,
        &SetAttr {
            mode: Some(0o600),
            atime: Some(ts(1_500_000_000, 5)),
            mtime: Some(ts(1_600_000_000, 123_456_789)),
            ..Default::default()
        },
    )
    .unwrap();
    let far = fs.create(root, b"far-future", 0o644, OWNER).unwrap();
    fs.setattr(
        far,
        &SetAttr {
            mtime: Some(ts(1 << 33, 42)),
            uid: Some(70000),
            gid: Some(80000),
            ..Default::default()
        },
    )
    .unwrap();
    let gone = fs.create(root, b"gone", 0o644, OWNER).unwrap();
    fs.write(gone, 0, &pattern(100_000, 3)).unwrap();
    fs.unlink(root, b"gone").unwrap();
    fs.mkdir(root, b"empty", 0o700, OWNER).unwrap();
    fs.rmdir(root, b"empty").unwrap();
    fs.mkdir(etc, b"sub", 0o750, OWNER).unwrap();
    fs.rename(etc, b"sub", root, b"moved").unwrap();
    assert_eq!(fs.lookup(root, b"gone").unwrap_err().errno, libc::ENOENT);
    fs.close().unwrap();
    img.fsck_clean();

    let m = img.mount(true);
    assert_eq!(
        std::fs::read(m.path("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n::1 localhost\n"
    );
    let mut expect = data.clone();
    expect[1_000_001..1_000_007].copy_from_slice(b"middle");
    assert!(std::fs::read(m.path("big")).unwrap() == expect);
    let md = std::fs::symlink_metadata(m.path("etc/hosts")).unwrap();
    assert_eq!(md.mode(), 0o100600);
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!(md.nlink(), 2);
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 123_456_789));
    assert_eq!((md.atime(), md.atime_nsec()), (1_500_000_000, 5));
    assert!(md.ctime() >= before && md.ctime() <= now_sec() + 1);
    assert_eq!(
        std::fs::symlink_metadata(m.path("hosts-link"))
            .unwrap()
            .ino(),
        md.ino()
    );
    let bmd = std::fs::symlink_metadata(m.path("big")).unwrap();
    assert_eq!(bmd.mode(), 0o100640);
    assert_eq!((bmd.uid(), bmd.gid()), (0, 0));
    let far = std::fs::symlink_metadata(m.path("far-future")).unwrap();
    assert_eq!((far.mtime(), far.mtime_nsec()), (1 << 33, 42));
    assert_eq!((far.uid(), far.gid()), (70000, 80000));
    assert_eq!(
        std::fs::read_link(m.path("fast")).unwrap(),
        Path::new("etc/hosts")
    );
    assert_eq!(
        std::fs::read_link(m.path("slow")).unwrap(),
        Path::new(&slow_target)
    );
    let smd = std::fs::symlink_metadata(m.path("slow")).unwrap();
    assert_eq!((smd.uid(), smd.gid(), smd.mode()), (1234, 5678, 0o120777));
    let emd = std::fs::symlink_metadata(m.path("etc")).unwrap();
    assert_eq!(emd.mode(), 0o040755);
    assert_eq!(emd.nlink(), 2, "etc lost its subdirectory");
    assert!(emd.mtime() >= before);
    let mmd = std::fs::symlink_metadata(m.path("moved")).unwrap();
    assert_eq!(mmd.mode(), 0o040750);
    assert_eq!(
        std::fs::metadata(m.path("moved/..")).unwrap().ino(),
        2,
        "'..' of a moved directory is its new parent"
    );
    let rmd = std::fs::metadata(m.path("")).unwrap();
    // root: ., .., lost+found, etc, moved
    assert_eq!(rmd.nlink(), 5);
    let names: BTreeSet<String> = std::fs::read_dir(m.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let want: BTreeSet<String> = [
        "lost+found",
        "etc",
        "big",
        "fast",
        "slow",
        "hosts-link",
        "far-future",
        "moved",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(names, want);
    drop(m);

    // The adapter reads back what the kernel saw.
    let mut fs = img.open(true).unwrap();
    let h = walk(&mut *fs, "etc/hosts");
    let st = fs.stat(h).unwrap();
    assert_eq!(st.mode, 0o100600);
    assert_eq!(st.nlink, 2);
    assert_eq!(st.mtime, ts(1_600_000_000, 123_456_789));
    let b = walk(&mut *fs, "big");
    let mut back = vec![0u8; expect.len() + 10];
    assert_eq!(fs.read(b, 0, &mut back).unwrap(), expect.len());
    assert!(back[..expect.len()] == expect[..]);
    let slow = walk(&mut *fs, "slow");
    assert_eq!(fs.readlink(slow).unwrap(), slow_target.as_bytes());
    assert_eq!(fs.stat(slow).unwrap().kind, FileKind::Symlink);
    let entries: Vec<_> = fs
        .readdir(root)
        .unwrap()
        .into_iter()
        .map(|e| (String::from_utf8(e.name).unwrap(), e.kind))
        .collect();
    assert!(entries.contains(&("moved".into(), FileKind::Directory)));
    assert!(entries.contains(&("fast".into(), FileKind::Symlink)));
    assert!(entries.contains(&("big".into(), FileKind::Regular)));
    fs.close().unwrap();
}

#[test]
fn ext4_with_mke2fs_defaults_takes_every_kind_of_edit() {
    edit_and_check(&mkfs("ext4", 64, &[]));
}

#[test]
fn ext4_with_4k_blocks_and_orphan_file_takes_every_kind_of_edit() {
    let img = mkfs(
        "ext4",
        128,
        &["-b", "4096", "-O", "orphan_file,metadata_csum_seed"],
    );
    edit_and_check(&img);
}

#[test]
fn ext3_takes_every_kind_of_edit() {
    edit_and_check(&mkfs("ext3", 64, &[]));
}

#[test]
fn ext2_takes_every_kind_of_edit() {
    edit_and_check(&mkfs("ext2", 64, &[]));
}

#[test]
fn ext2_with_small_inodes_keeps_whole_seconds() {
    let img = mkfs("ext2", 16, &["-I", "128"]);
    let mut fs = img.rw();
    let f = fs.create(2, b"f", 0o644, OWNER).unwrap();
    fs.setattr(
        f,
        &SetAttr {
            mtime: Some(ts(1_234_567_890, 999)),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fs.stat(f).unwrap().mtime, ts(1_234_567_890, 0));
    fs.close().unwrap();
    img.fsck_clean();
    let m = img.mount(true);
    assert_eq!(
        std::fs::metadata(m.path("f")).unwrap().mtime(),
        1_234_567_890
    );
}

/// The kernel makes an htree directory; the adapter adds to it (splitting leaves), looks
/// every name up, removes half.
#[test]
fn htree_directory_of_5000_entries_grows_and_shrinks() {
    let img = mkfs("ext4", 64, &[]);
    {
        let m = img.mount(false);
        std::fs::create_dir(m.path("big")).unwrap();
        for i in 0..5000 {
            std::fs::write(m.path(&format!("big/file-{i:05}")), b"").unwrap();
        }
    }
    let flags = img.debugfs("stat /big");
    assert!(flags.contains("Flags: 0x81000"), "not an htree:\n{flags}");

    let mut fs = img.rw();
    let big = walk(&mut *fs, "big");
    for i in 0..5000 {
        fs.lookup(big, format!("file-{i:05}").as_bytes()).unwrap();
    }
    for i in 5000..7000 {
        fs.create(big, format!("file-{i:05}").as_bytes(), 0o644, OWNER)
            .unwrap();
    }
    for i in (0..7000).step_by(2) {
        fs.unlink(big, format!("file-{i:05}").as_bytes()).unwrap();
    }
    for i in 0..7000 {
        let r = fs.lookup(big, format!("file-{i:05}").as_bytes());
        assert_eq!(r.is_ok(), i % 2 == 1, "file-{i:05}: {r:?}");
    }
    assert_eq!(fs.readdir(big).unwrap().len(), 3500);
    fs.close().unwrap();
    img.fsck_clean();
    let m = img.mount(true);
    let names: BTreeSet<String> = std::fs::read_dir(m.path("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let want: BTreeSet<String> = (1..7000)
        .step_by(2)
        .map(|i| format!("file-{i:05}"))
        .collect();
    assert_eq!(names, want);
    for i in [1, 4999, 5001, 6999] {
        assert!(m.path(&format!("big/file-{i:05}")).exists());
    }
}

/// A directory the adapter makes and fills with 5000 entries, then halves: it becomes an
/// htree when it outgrows its first block, as the kernel would make it.
#[test]
fn large_directory_made_by_the_adapter_becomes_an_htree() {
    large_directory(&mkfs("ext4", 64, &[]), "Flags: 0x81000");
    large_directory(&mkfs("ext3", 64, &[]), "Flags: 0x1000");
    large_directory(
        &mkfs("ext4", 64, &["-O", "^metadata_csum"]),
        "Flags: 0x81000",
    );
    // Without dir_index it stays linear.
    large_directory(&mkfs("ext2", 64, &["-O", "^dir_index"]), "Flags: 0x0");
}

fn large_directory(img: &Image, flags: &str) {
    let mut fs = img.rw();
    let d = fs.mkdir(2, b"many", 0o755, OWNER).unwrap();
    for i in 0..5000 {
        fs.create(d, format!("entry-{i}").as_bytes(), 0o600, OWNER)
            .unwrap();
    }
    for i in (0..5000).step_by(2) {
        fs.unlink(d, format!("entry-{i}").as_bytes()).unwrap();
    }
    fs.close().unwrap();
    img.fsck_clean();
    let stat = img.debugfs("stat /many");
    assert!(stat.contains(flags), "{flags}:\n{stat}");
    let m = img.mount(true);
    let n = std::fs::read_dir(m.path("many")).unwrap().count();
    assert_eq!(n, 2500);
    assert!(m.path("many/entry-4999").exists());
    assert!(!m.path("many/entry-4998").exists());
}

#[test]
fn file_with_many_extents_from_holes_and_fragmented_free_space() {
    let img = mkfs("ext4", 64, &["-b", "4096"]);
    let mut fs = img.rw();
    // Holes: twelve separate runs.
    let holes = fs.create(2, b"holes", 0o644, OWNER).unwrap();
    let mut expect = vec![0u8; 11 * (1 << 20) + 8192];
    for k in 0..12usize {
        let chunk = pattern(8192, k as u8);
        let at = k * (1 << 20);
        fs.write(holes, at as u64, &chunk).unwrap();
        expect[at..at + 8192].copy_from_slice(&chunk);
    }
    // Fragmented free space: many small files, every other one removed, then one file.
    for i in 0..200 {
        let f = fs
            .create(2, format!("small-{i}").as_bytes(), 0o644, OWNER)
            .unwrap();
        fs.write(f, 0, &pattern(8192, i as u8)).unwrap();
    }
    for i in (0..200).step_by(2) {
        fs.unlink(2, format!("small-{i}").as_bytes()).unwrap();
    }
    let frag = fs.create(2, b"frag", 0o644, OWNER).unwrap();
    let fdata = pattern(40 << 20, 99);
    fs.write(frag, 0, &fdata).unwrap();
    fs.close().unwrap();
    img.fsck_clean();

    let ex = img.debugfs("ex /holes");
    let leaves = ex.lines().filter(|l| l.contains(" 1/ 1 ")).count();
    assert!(leaves >= 12, "expected a depth-1 tree of 12 extents:\n{ex}");
    let m = img.mount(true);
    assert!(std::fs::read(m.path("holes")).unwrap() == expect);
    assert!(std::fs::read(m.path("frag")).unwrap() == fdata);
    assert_eq!(std::fs::read(m.path("small-7")).unwrap(), pattern(8192, 7));
}

#[test]
fn sparse_files_stay_sparse_and_truncate_both_ways() {
    let img = mkfs("ext4", 64, &[]);
    let mut fs = img.rw();
    let f = fs.create(2, b"sparse", 0o644, OWNER).unwrap();
    fs.write(f, 0, b"head").unwrap();
    fs.write(f, 1 << 30, b"tail").unwrap();
    let st = fs.stat(f).unwrap();
    assert_eq!(st.size, (1 << 30) + 4);
    assert!(st.blocks < 64, "{} sectors for two small runs", st.blocks);
    let mut b = [1u8; 8];
    assert_eq!(fs.read(f, 500 << 20, &mut b).unwrap(), 8);
    assert_eq!(b, [0; 8]);
    // Shrink into the first block, then extend: the cut-off bytes read as zeros.
    let t = fs.create(2, b"trunc", 0o644, OWNER).unwrap();
    fs.write(t, 0, &pattern(10_000, 1)).unwrap();
    fs.truncate(t, 5000).unwrap();
    fs.truncate(t, 3 << 20).unwrap();
    fs.write(t, 9000, b"x").unwrap();
    let mut expect = vec![0u8; 3 << 20];
    expect[..5000].copy_from_slice(&pattern(10_000, 1)[..5000]);
    expect[9000] = b'x';
    fs.close().unwrap();
    img.fsck_clean();
    let m = img.mount(true);
    let md = std::fs::metadata(m.path("sparse")).unwrap();
    assert_eq!(md.len(), (1 << 30) + 4);
    assert_eq!(md.blocks(), st.blocks);
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(m.path("sparse")).unwrap();
    let mut head = [0u8; 4];
    file.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"head");
    file.seek(SeekFrom::Start(1 << 30)).unwrap();
    file.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"tail");
    assert!(std::fs::read(m.path("trunc")).unwrap() == expect);
}

#[test]
fn deep_trees_long_and_non_ascii_names() {
    let img = mkfs("ext4", 64, &[]);
    let mut fs = img.rw();
    let mut d = 2;
    for i in 0..150 {
        d = fs
            .mkdir(d, format!("level{i}").as_bytes(), 0o755, OWNER)
            .unwrap();
    }
    let leaf = fs.create(d, b"leaf", 0o644, OWNER).unwrap();
    fs.write(leaf, 0, b"deep").unwrap();
    let long = "L".repeat(255);
    let utf8 = format!("{}x", "é".repeat(127));
    assert_eq!(utf8.len(), 255);
    let names = [
        long.as_str(),
        utf8.as_str(),
        "日本語のファイル",
        "with space\nnewline",
    ];
    for n in names {
        let f = fs.create(2, n.as_bytes(), 0o644, OWNER).unwrap();
        fs.write(f, 0, n.as_bytes()).unwrap();
    }
    assert_eq!(
        fs.create(2, "L".repeat(256).as_bytes(), 0o644, OWNER)
            .unwrap_err()
            .errno,
        libc::ENAMETOOLONG
    );
    assert_eq!(
        fs.create(2, b"a/b", 0o644, OWNER).unwrap_err().errno,
        libc::EINVAL
    );
    assert_eq!(
        fs.create(2, long.as_bytes(), 0o644, OWNER)
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    fs.close().unwrap();
    img.fsck_clean();
    let m = img.mount(true);
    let path: String = (0..150).map(|i| format!("level{i}/")).collect();
    assert_eq!(
        std::fs::read(m.path(&format!("{path}leaf"))).unwrap(),
        b"deep"
    );
    for n in names {
        assert_eq!(std::fs::read(m.path(n)).unwrap(), n.as_bytes());
    }
}

#[test]
fn rename_replaces_targets_moves_directories_and_refuses_what_posix_refuses() {
    let img = mkfs("ext4", 64, &[]);
    let mut fs = img.rw();
    let a = fs.mkdir(2, b"a", 0o755, OWNER).unwrap();
    let b = fs.mkdir(2, b"b", 0o755, OWNER).unwrap();
    let sub = fs.mkdir(a, b"sub", 0o755, OWNER).unwrap();
    fs.create(sub, b"inner", 0o644, OWNER).unwrap();
    let f1 = fs.create(a, b"f1", 0o644, OWNER).unwrap();
    fs.write(f1, 0, b"one").unwrap();
    let f2 = fs.create(b, b"f2", 0o644, OWNER).unwrap();
    fs.write(f2, 0, &pattern(50_000, 2)).unwrap();
    let free_before = fs.statvfs().unwrap().bfree;
    // A file replaces a file (whose blocks are freed).
    fs.rename(a, b"f1", b, b"f2").unwrap();
    assert_eq!(fs.lookup(b, b"f2").unwrap(), f1);
    assert!(fs.statvfs().unwrap().bfree > free_before);
    // A directory moves into another, then replaces an empty one.
    fs.rename(a, b"sub", b, b"sub").unwrap();
    assert_eq!(fs.stat(a).unwrap().nlink, 2);
    assert_eq!(fs.stat(b).unwrap().nlink, 3);
    assert_eq!(fs.lookup(sub, b"..").unwrap_err().errno, libc::EINVAL);
    fs.mkdir(a, b"empty", 0o755, OWNER).unwrap();
    fs.rename(b, b"sub", a, b"empty").unwrap();
    assert_eq!(fs.lookup(a, b"empty").unwrap(), sub);
    assert_eq!(fs.stat(a).unwrap().nlink, 3);
    assert_eq!(fs.stat(b).unwrap().nlink, 2);
    // Refusals.
    let e = |r: strata::fs::FsResult<()>| r.unwrap_err().errno;
    assert_eq!(e(fs.rename(2, b"a", sub, b"x")), libc::EINVAL);
    assert_eq!(e(fs.rename(2, b"a", a, b"x")), libc::EINVAL);
    fs.mkdir(2, b"full", 0o755, OWNER).unwrap();
    let full = walk(&mut *fs, "full");
    fs.create(full, b"x", 0o644, OWNER).unwrap();
    assert_eq!(e(fs.rename(2, b"b", 2, b"full")), libc::ENOTEMPTY);
    assert_eq!(e(fs.rename(b, b"f2", 2, b"full")), libc::EISDIR);
    assert_eq!(e(fs.rename(2, b"b", full, b"x")), libc::ENOTDIR);
    assert_eq!(e(fs.rename(2, b"nothing", 2, b"x")), libc::ENOENT);
    // Same inode under two names: nothing happens.
    fs.link(f1, 2, b"alias").unwrap();
    fs.rename(2, b"alias", b, b"f2").unwrap();
    assert_eq!(fs.stat(f1).unwrap().nlink, 2);
    // Rename within a directory.
    fs.rename(b, b"f2", b, b"renamed").unwrap();
    assert_eq!(fs.lookup(b, b"f2").unwrap_err().errno, libc::ENOENT);
    // unlink/rmdir errors.
    assert_eq!(e(fs.unlink(2, b"a")), libc::EISDIR);
    assert_eq!(e(fs.rmdir(2, b"alias")), libc::ENOTDIR);
    assert_eq!(e(fs.rmdir(2, b"a")), libc::ENOTEMPTY);
    assert_eq!(e(fs.link(a, 2, b"dirlink")), libc::EPERM);
    fs.close().unwrap();
    img.fsck_clean();
    let m = img.mount(true);
    assert_eq!(std::fs::read(m.path("b/renamed")).unwrap(), b"one");
    assert!(m.path("a/empty/inner").exists());
    assert_eq!(
        std::fs::metadata(m.path("a/empty/..")).unwrap().ino(),
        std::fs::metadata(m.path("a")).unwrap().ino()
    );
    assert_eq!(std::fs::metadata(m.path("a")).unwrap().nlink(), 3);
    assert_eq!(std::fs::metadata(m.path("b")).unwrap().nlink(), 2);
    assert_eq!(std::fs::metadata(m.path("alias")).unwrap().nlink(), 2);
}

fn fill_until_enospc(img: &Image) {
    let mut fs = img.rw();
    let d = fs.mkdir(2, b"fill", 0o755, OWNER).unwrap();
    let chunk = pattern(1 << 20, 5);
    // Big files until the space runs out.
    let mut written = 0u64;
    let mut full = false;
    for i in 0..1000 {
        let f = match fs.create(d, format!("big{i}").as_bytes(), 0o644, OWNER) {
            Ok(f) => f,
            Err(e) => {
                assert_eq!(e.errno, libc::ENOSPC, "{e}");
                full = true;
                break;
            }
        };
        for k in 0..8u64 {
            match fs.write(f, k << 20, &chunk) {
                Ok(()) => written += 1 << 20,
                Err(e) => {
                    assert_eq!(e.errno, libc::ENOSPC, "{e}");
                    full = true;
                    break;
                }
            }
        }
        if full {
            break;
        }
    }
    assert!(full, "never ran out of space after {written} bytes");
    // Small files until inodes or blocks run out too.
    let mut small = 0;
    loop {
        match fs.create(d, format!("small{small}").as_bytes(), 0o644, OWNER) {
            Ok(f) => match fs.write(f, 0, b"x") {
                Ok(()) => small += 1,
                Err(e) => {
                    assert_eq!(e.errno, libc::ENOSPC, "{e}");
                    break;
                }
            },
            Err(e) => {
                assert_eq!(e.errno, libc::ENOSPC, "{e}");
                break;
            }
        }
        assert!(small < 100_000);
    }
    assert_eq!(
        fs.mkdir(2, b"more", 0o755, OWNER).unwrap_err().errno,
        libc::ENOSPC
    );
    let sv = fs.statvfs().unwrap();
    assert_eq!(sv.bavail, 0);
    fs.close().unwrap();
    img.fsck_clean();
    // Space freed is usable again.
    let mut fs = img.rw();
    let d = walk(&mut *fs, "fill");
    fs.unlink(d, b"big0").unwrap();
    let f = fs.create(d, b"again", 0o644, OWNER).unwrap();
    fs.write(f, 0, &chunk).unwrap();
    fs.close().unwrap();
    img.fsck_clean();
    let m = img.mount(true);
    assert!(std::fs::read(m.path("fill/again")).unwrap() == chunk);
    let big1 = std::fs::read(m.path("fill/big1")).unwrap();
    assert!(big1.len() % (1 << 20) == 0 || big1.len() < 8 << 20);
    assert!(big1.chunks(1 << 20).all(|c| c == &chunk[..c.len()]));
}

#[test]
fn filling_ext4_to_enospc_leaves_it_clean() {
    fill_until_enospc(&mkfs("ext4", 24, &[]));
}

#[test]
fn filling_ext3_to_enospc_leaves_it_clean() {
    fill_until_enospc(&mkfs("ext3", 24, &[]));
}

#[test]
fn running_out_of_inodes_is_enospc_and_clean() {
    let img = mkfs("ext4", 16, &["-N", "64"]);
    let mut fs = img.rw();
    let mut n = 0;
    let err = loop {
        match fs.create(2, format!("f{n}").as_bytes(), 0o644, OWNER) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err.errno, libc::ENOSPC, "{err}");
    assert!(n > 40 && n < 64, "{n} files");
    assert_eq!(fs.statvfs().unwrap().ffree, 0);
    fs.close().unwrap();
    img.fsck_clean();
}

#[test]
fn a_journal_that_needs_recovery_is_refused_read_write_but_reads() {
    let img = mkfs("ext4", 32, &[]);
    {
        let mut fs = img.rw();
        let f = fs.create(2, b"f", 0o644, OWNER).unwrap();
        fs.write(f, 0, b"data").unwrap();
        fs.close().unwrap();
    }
    img.debugfs_w("feature needs_recovery");
    let err = img
        .open(false)
        .err()
        .expect("opened a dirty journal read-write");
    assert_eq!(err.errno, libc::EUCLEAN);
    assert!(err.detail.contains("journal needs recovery"), "{err}");
    let mut fs = img.open(true).unwrap();
    let f = walk(&mut *fs, "f");
    let mut b = [0u8; 4];
    fs.read(f, 0, &mut b).unwrap();
    assert_eq!(&b, b"data");
    // The bitmaps may miss blocks the journal allocates: a capture must keep it whole.
    let err = fs.used_blocks().unwrap_err();
    assert!(err.detail.contains("journal needs recovery"), "{err}");
}

#[test]
fn unclean_and_erroneous_filesystems_are_refused_read_write() {
    let img = mkfs("ext4", 32, &[]);
    img.debugfs_w("ssv state 0");
    let err = img.open(false).err().expect("opened an unclean fs");
    assert!(err.detail.contains("not cleanly unmounted"), "{err}");
    img.open(true).unwrap().close().unwrap();
    img.debugfs_w("ssv state 3");
    let err = img.open(false).err().expect("opened an fs with errors");
    assert!(err.detail.contains("errors"), "{err}");
}

#[test]
fn features_the_adapter_cannot_write_are_refused_by_name() {
    for (feature, word) in [("inline_data", "inline_data"), ("quota", "quota")] {
        let img = mkfs("ext4", 32, &["-O", feature]);
        let err = img.open(false).err().expect("opened read-write");
        assert_eq!(err.errno, libc::EOPNOTSUPP);
        assert!(err.detail.contains(word), "{err}");
        let mut fs = img.open(true).unwrap();
        assert!(fs
            .readdir(2)
            .unwrap()
            .iter()
            .any(|e| e.name == b"lost+found"));
    }
}

#[test]
fn read_only_open_never_writes_a_byte() {
    let img = mkfs("ext4", 32, &[]);
    {
        let mut fs = img.rw();
        let f = fs.create(2, b"f", 0o644, OWNER).unwrap();
        fs.write(f, 0, &pattern(100_000, 1)).unwrap();
        fs.symlink(2, b"l", b"f", OWNER).unwrap();
        fs.close().unwrap();
    }
    let before = img.sha256();
    let mut fs = img.open(true).unwrap();
    let f = walk(&mut *fs, "f");
    let mut buf = vec![0u8; 100_000];
    assert_eq!(fs.read(f, 0, &mut buf).unwrap(), 100_000);
    fs.readdir(2).unwrap();
    fs.stat(f).unwrap();
    let l = walk(&mut *fs, "l");
    fs.readlink(l).unwrap();
    fs.statvfs().unwrap();
    fs.used_blocks().unwrap();
    let e = |r: strata::fs::FsResult<()>| r.unwrap_err().errno;
    assert_eq!(e(fs.write(f, 0, b"x")), libc::EROFS);
    assert_eq!(e(fs.truncate(f, 0)), libc::EROFS);
    assert_eq!(e(fs.unlink(2, b"f")), libc::EROFS);
    assert_eq!(
        fs.create(2, b"new", 0o644, OWNER).unwrap_err().errno,
        libc::EROFS
    );
    assert_eq!(e(fs.setattr(f, &SetAttr::default())), libc::EROFS);
    fs.sync().unwrap();
    fs.close().unwrap();
    assert_eq!(img.sha256(), before);
}

#[test]
fn statvfs_matches_the_kernel() {
    for (kind, extra) in [
        ("ext4", &[][..]),
        ("ext4", &["-b", "4096", "-m", "1"][..]),
        ("ext3", &[][..]),
        ("ext2", &["-b", "4096"][..]),
    ] {
        let img = mkfs(kind, 96, extra);
        let mut fs = img.rw();
        let f = fs.create(2, b"f", 0o644, OWNER).unwrap();
        fs.write(f, 0, &pattern(5 << 20, 1)).unwrap();
        let ours = fs.statvfs().unwrap();
        fs.close().unwrap();
        let m = img.mount(true);
        // GNU stat prints the fsid's two 32-bit halves high word last.
        let out = must(
            "stat",
            &[
                "-f",
                "-c",
                "%s %S %b %f %a %c %d %l %i",
                m.path("").to_str().unwrap(),
            ],
        );
        let f: Vec<&str> = out.split_whitespace().collect();
        let num = |i: usize| f[i].parse::<u64>().unwrap();
        let fsid = u64::from_str_radix(f[8], 16).unwrap();
        let kernel = vec![
            num(0),
            num(1),
            num(2),
            num(3),
            num(4),
            num(5),
            num(6),
            num(6),
            fsid.rotate_left(32),
            num(7),
        ];
        let mine = vec![
            ours.bsize,
            ours.frsize,
            ours.blocks,
            ours.bfree,
            ours.bavail,
            ours.files,
            ours.ffree,
            ours.favail,
            ours.fsid,
            ours.namemax,
        ];
        assert_eq!(mine, kernel, "{kind} {extra:?}: ours vs the kernel's");
    }
}

/// A copy holding only the used byte ranges (everything else zero) is the same
/// filesystem: what a capture relies on.
#[test]
fn used_blocks_are_all_a_copy_needs() {
    for (kind, extra) in [("ext4", &[][..]), ("ext2", &["-b", "1024"][..])] {
        let img = mkfs(kind, 48, extra);
        let mut fs = img.rw();
        let f = fs.create(2, b"f", 0o644, OWNER).unwrap();
        fs.write(f, 0, &pattern(3 << 20, 4)).unwrap();
        fs.write(f, 20 << 20, b"far").unwrap();
        fs.close().unwrap();
        // Garbage where the filesystem has nothing, to prove the copy does not need it.
        let mut fs = img.open(true).unwrap();
        let used = fs.used_blocks().unwrap();
        fs.close().unwrap();
        let mut last_end = 0;
        for &(at, len) in &used {
            assert!(
                len > 0 && at >= last_end,
                "unsorted or overlapping: {used:?}"
            );
            assert!(at > last_end || last_end == 0, "not merged: {used:?}");
            last_end = at + len;
        }
        assert!(last_end <= 48 << 20);
        assert_eq!(used[0].0, 0, "the superblock's block is used");
        let src = std::fs::read(&img.path).unwrap();
        let mut copy = pattern(src.len(), 0xAA);
        for &(at, len) in &used {
            let (at, len) = (at as usize, len as usize);
            copy[at..at + len].copy_from_slice(&src[at..at + len]);
        }
        let total: u64 = used.iter().map(|r| r.1).sum();
        assert!(
            total < (src.len() as u64) / 2,
            "{total} bytes used of {}",
            src.len()
        );
        let dir = tempfile::tempdir().unwrap();
        let cpath = dir.path().join("copy.img");
        std::fs::write(&cpath, &copy).unwrap();
        let (ok, text) = run("e2fsck", &["-fn", cpath.to_str().unwrap()]);
        assert!(ok, "{kind}: the copy is not clean:\n{text}");
        let copy_img = Image {
            _dir: dir,
            path: cpath,
            kind,
        };
        let m = copy_img.mount(true);
        let back = std::fs::read(m.path("f")).unwrap();
        assert!(back[..3 << 20] == pattern(3 << 20, 4)[..]);
        assert_eq!(&back[20 << 20..], b"far");
    }
}

#[test]
fn open_goes_through_fs_open_for_every_ext_type_and_reports_it() {
    for kind in ["ext2", "ext3", "ext4"] {
        let img = mkfs(kind, 16, &[]);
        let fs = img.open(false).unwrap();
        assert_eq!(fs.fs_type(), kind);
        fs.close().unwrap();
        img.fsck_clean();
    }
}

#[test]
fn errors_carry_the_kernels_errno() {
    let img = mkfs("ext4", 16, &[]);
    let mut fs = img.rw();
    let f = fs.create(2, b"f", 0o644, OWNER).unwrap();
    let d = fs.mkdir(2, b"d", 0o755, OWNER).unwrap();
    let e = |r: strata::fs::FsResult<()>| r.unwrap_err().errno;
    assert_eq!(fs.lookup(2, b"nope").unwrap_err().errno, libc::ENOENT);
    assert_eq!(fs.lookup(f, b"x").unwrap_err().errno, libc::ENOTDIR);
    assert_eq!(
        fs.create(2, b"f", 0o644, OWNER).unwrap_err().errno,
        libc::EEXIST
    );
    assert_eq!(
        fs.mkdir(2, b"d", 0o755, OWNER).unwrap_err().errno,
        libc::EEXIST
    );
    assert_eq!(
        fs.create(f, b"x", 0o644, OWNER).unwrap_err().errno,
        libc::ENOTDIR
    );
    assert_eq!(fs.read(d, 0, &mut [0; 4]).unwrap_err().errno, libc::EISDIR);
    assert_eq!(e(fs.write(d, 0, b"x")), libc::EISDIR);
    assert_eq!(fs.readlink(f).unwrap_err().errno, libc::EINVAL);
    assert_eq!(fs.readdir(f).unwrap_err().errno, libc::ENOTDIR);
    assert_eq!(
        fs.symlink(2, b"s", &[b'a'; 5000], OWNER).unwrap_err().errno,
        libc::ENAMETOOLONG
    );
    assert_eq!(fs.stat(999_999_999).unwrap_err().errno, libc::ESTALE);
    // chown clears set-user-ID as the kernel does; chmod keeps what it is given.
    fs.setattr(
        f,
        &SetAttr {
            mode: Some(0o4755),
            ..Default::default()
        },
    )
    .unwrap();
    fs.setattr(
        f,
        &SetAttr {
            uid: Some(5),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(fs.stat(f).unwrap().mode, 0o100755);
    fs.close().unwrap();
    img.fsck_clean();
}

/// Not a benchmark harness, a measurement: 100 MiB into a 4 GiB ext4 through the adapter
/// on a FileDevice, against cp into a loop mount plus sync. Run with --ignored --nocapture.
#[test]
#[ignore]
fn write_throughput_against_a_loop_mount() {
    let data = pattern(100 << 20, 9);
    let img = mkfs("ext4", 4096, &[]);
    let t = std::time::Instant::now();
    let mut fs = img.rw();
    let f = fs.create(2, b"big", 0o644, OWNER).unwrap();
    for (i, c) in data.chunks(1 << 20).enumerate() {
        fs.write(f, (i as u64) << 20, c).unwrap();
    }
    fs.close().unwrap();
    std::fs::File::open(&img.path).unwrap().sync_all().unwrap();
    let ours = t.elapsed();
    img.fsck_clean();

    let img2 = mkfs("ext4", 4096, &[]);
    let src_dir = tempfile::tempdir().unwrap();
    let src = src_dir.path().join("src");
    std::fs::write(&src, &data).unwrap();
    let m = img2.mount(false);
    let t = std::time::Instant::now();
    must(
        "cp",
        &[src.to_str().unwrap(), m.path("big").to_str().unwrap()],
    );
    must("sync", &[]);
    let mnt = m.dir.path().to_path_buf();
    drop(m);
    let _ = mnt;
    std::fs::File::open(&img2.path).unwrap().sync_all().unwrap();
    let kernel = t.elapsed();

    let t = std::time::Instant::now();
    let mut fs = img.open(true).unwrap();
    let f = walk(&mut *fs, "big");
    let mut back = vec![0u8; data.len()];
    fs.read(f, 0, &mut back).unwrap();
    let read = t.elapsed();
    assert!(back == data);

    let mib = 100.0;
    println!(
        "adapter write: {:.1} MiB/s ({:.2} s); kernel cp + sync + umount: {:.1} MiB/s ({:.2} s); \
         adapter read: {:.1} MiB/s",
        mib / ours.as_secs_f64(),
        ours.as_secs_f64(),
        mib / kernel.as_secs_f64(),
        kernel.as_secs_f64(),
        mib / read.as_secs_f64()
    );
}

#[test]
fn a_memory_device_works_like_a_file() {
    let img = mkfs("ext4", 16, &[]);
    let mem = Arc::new(strata::store::device::MemDevice::new(
        std::fs::read(&img.path).unwrap(),
    ));
    let mut fs = strata::fs::open("ext4", mem.clone(), OpenOptions::default()).unwrap();
    let f = fs.create(2, b"in-memory", 0o644, OWNER).unwrap();
    fs.write(f, 0, b"hello").unwrap();
    fs.close().unwrap();
    std::fs::write(&img.path, mem.contents()).unwrap();
    img.fsck_clean();
    assert!(img.debugfs("cat /in-memory").contains("hello"));
}

#[test]
fn a_truncated_image_is_refused_read_write_and_fails_reads_cleanly() {
    let img = mkfs("ext4", 32, &[]);
    {
        let mut fs = img.rw();
        let f = fs.create(2, b"f", 0o644, OWNER).unwrap();
        fs.write(f, 0, &pattern(20 << 20, 1)).unwrap();
        fs.close().unwrap();
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&img.path)
        .unwrap();
    file.set_len(16 << 20).unwrap();
    let err = img
        .open(false)
        .err()
        .expect("opened a truncated image read-write");
    assert!(err.detail.contains("truncated"), "{err}");
    // Read-only, whatever lies past the end fails with an errno instead of a crash.
    if let Ok(mut fs) = img.open(true) {
        if let Ok(f) = fs.lookup(2, b"f") {
            let mut b = vec![0u8; 20 << 20];
            let r = fs.read(f, 0, &mut b);
            assert_eq!(r.unwrap_err().errno, libc::EIO);
        }
    }
}

#[test]
fn damaged_metadata_gives_errors_not_panics() {
    // Scribble over everything after the first group's descriptors, in a few patterns.
    for seed in 0..4u8 {
        let img = mkfs("ext4", 8, &[]);
        {
            let mut fs = img.rw();
            for i in 0..20 {
                let f = fs
                    .create(2, format!("f{i}").as_bytes(), 0o644, OWNER)
                    .unwrap();
                fs.write(f, 0, &pattern(3000, i)).unwrap();
            }
            fs.close().unwrap();
        }
        let mut bytes = std::fs::read(&img.path).unwrap();
        let junk = pattern(bytes.len(), seed.wrapping_mul(37).wrapping_add(1));
        // Keep the superblock (and the descriptors for some seeds), garble the rest.
        let keep = if seed % 2 == 0 { 2048 } else { 8192 };
        for (i, b) in bytes.iter_mut().enumerate().skip(keep) {
            if i % 3 != seed as usize % 3 {
                *b = junk[i];
            }
        }
        std::fs::write(&img.path, &bytes).unwrap();
        if let Ok(mut fs) = img.open(true) {
            if let Ok(entries) = fs.readdir(2) {
                for e in entries.iter().take(50) {
                    let _ = fs.stat(e.ino);
                    let mut b = vec![0u8; 8192];
                    let _ = fs.read(e.ino, 0, &mut b);
                    let _ = fs.readlink(e.ino);
                }
            }
            let _ = fs.statvfs();
            let _ = fs.used_blocks();
        }
    }
}

/// A small model of a directory tree, to drive random edits and check the result.
#[derive(Clone, Debug, PartialEq)]
enum Node {
    Dir,
    File(u32),
    Link(Vec<u8>),
}

struct Model {
    nodes: std::collections::BTreeMap<Vec<String>, Node>,
    contents: std::collections::HashMap<u32, Vec<u8>>,
    next_id: u32,
}

impl Model {
    fn children(&self, dir: &[String]) -> Vec<Vec<String>> {
        self.nodes
            .keys()
            .filter(|k| k.len() == dir.len() + 1 && k.starts_with(dir))
            .cloned()
            .collect()
    }

    fn links(&self, id: u32) -> usize {
        self.nodes
            .values()
            .filter(|n| **n == Node::File(id))
            .count()
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn walk_path(fs: &mut dyn GuestFs, path: &[String]) -> Ino {
    let mut ino = fs.root();
    for c in path {
        ino = fs.lookup(ino, c.as_bytes()).unwrap();
    }
    ino
}

fn random_edits(img: &Image, seed: u64, steps: usize) {
    let mut rng = Rng(seed);
    let mut m = Model {
        nodes: [
            (vec![], Node::Dir),
            (vec!["lost+found".to_string()], Node::Dir),
        ]
        .into_iter()
        .collect(),
        contents: Default::default(),
        next_id: 0,
    };
    let names = ["a", "b", "c", "d", "long-name-for-a-directory-entry-here"];
    let mut fs = img.rw();
    let expect = |r: Result<(), i32>, want: Result<(), i32>, what: &str| {
        assert_eq!(r, want, "step {what}");
    };
    for step in 0..steps {
        if step % 400 == 399 {
            fs.close().unwrap();
            img.fsck_clean();
            fs = img.rw();
        }
        let all: Vec<Vec<String>> = m.nodes.keys().cloned().collect();
        let dirs: Vec<Vec<String>> = m
            .nodes
            .iter()
            .filter(|(_, n)| **n == Node::Dir)
            .map(|(k, _)| k.clone())
            .collect();
        let files: Vec<Vec<String>> = m
            .nodes
            .iter()
            .filter(|(_, n)| matches!(n, Node::File(_)))
            .map(|(k, _)| k.clone())
            .collect();
        let dir = dirs[rng.below(dirs.len())].clone();
        let name = names[rng.below(names.len())].to_string();
        let mut path = dir.clone();
        path.push(name.clone());
        let exists = m.nodes.contains_key(&path);
        let what = format!("{step}");
        match rng.below(10) {
            0 | 1 => {
                let d = walk_path(&mut *fs, &dir);
                let r = fs.create(d, name.as_bytes(), 0o644, OWNER).map(|_| ());
                if exists {
                    expect(r.map_err(|e| e.errno), Err(libc::EEXIST), &what);
                } else {
                    r.unwrap();
                    m.nodes.insert(path, Node::File(m.next_id));
                    m.contents.insert(m.next_id, vec![]);
                    m.next_id += 1;
                }
            }
            2 | 3 if !files.is_empty() => {
                let p = &files[rng.below(files.len())];
                let Node::File(id) = m.nodes[p] else {
                    unreachable!()
                };
                let off = rng.below(300_000);
                let len = rng.below(70_000) + 1;
                let data = pattern(len, step as u8);
                let ino = walk_path(&mut *fs, p);
                fs.write(ino, off as u64, &data).unwrap();
                let c = m.contents.get_mut(&id).unwrap();
                if c.len() < off + len {
                    c.resize(off + len, 0);
                }
                c[off..off + len].copy_from_slice(&data);
            }
            4 if !files.is_empty() => {
                let p = &files[rng.below(files.len())];
                let Node::File(id) = m.nodes[p] else {
                    unreachable!()
                };
                let size = rng.below(400_000);
                let ino = walk_path(&mut *fs, p);
                fs.truncate(ino, size as u64).unwrap();
                m.contents.get_mut(&id).unwrap().resize(size, 0);
            }
            5 if dir.len() < 6 => {
                let d = walk_path(&mut *fs, &dir);
                let r = fs.mkdir(d, name.as_bytes(), 0o755, OWNER).map(|_| ());
                if exists {
                    expect(r.map_err(|e| e.errno), Err(libc::EEXIST), &what);
                } else {
                    r.unwrap();
                    m.nodes.insert(path, Node::Dir);
                }
            }
            6 if all.len() > 2 => {
                let p = all[rng.below(all.len() - 1) + 1].clone();
                if p == ["lost+found"] {
                    continue;
                }
                let (parent, last) = p.split_at(p.len() - 1);
                let d = walk_path(&mut *fs, parent);
                let is_dir = m.nodes[&p] == Node::Dir;
                if rng.below(2) == 0 {
                    let r = fs.unlink(d, last[0].as_bytes()).map_err(|e| e.errno);
                    if is_dir {
                        expect(r, Err(libc::EISDIR), &what);
                    } else {
                        r.unwrap();
                        m.nodes.remove(&p);
                    }
                } else {
                    let r = fs.rmdir(d, last[0].as_bytes()).map_err(|e| e.errno);
                    if !is_dir {
                        expect(r, Err(libc::ENOTDIR), &what);
                    } else if !m.children(&p).is_empty() {
                        expect(r, Err(libc::ENOTEMPTY), &what);
                    } else {
                        r.unwrap();
                        m.nodes.remove(&p);
                    }
                }
            }
            7 if all.len() > 2 => {
                let src = all[rng.below(all.len() - 1) + 1].clone();
                if src == ["lost+found"] {
                    continue;
                }
                let (sp, sl) = src.split_at(src.len() - 1);
                let sd = walk_path(&mut *fs, sp);
                let td = walk_path(&mut *fs, &dir);
                let r = fs
                    .rename(sd, sl[0].as_bytes(), td, name.as_bytes())
                    .map_err(|e| e.errno);
                let snode = m.nodes[&src].clone();
                let want = if path == src {
                    Ok(())
                } else if snode == Node::Dir && path.starts_with(&src) {
                    Err(libc::EINVAL)
                } else if let Some(t) = m.nodes.get(&path).cloned() {
                    if t == snode && matches!(t, Node::File(_)) {
                        Ok(())
                    } else if snode == Node::Dir && t != Node::Dir {
                        Err(libc::ENOTDIR)
                    } else if snode != Node::Dir && t == Node::Dir {
                        Err(libc::EISDIR)
                    } else if t == Node::Dir && !m.children(&path).is_empty() {
                        Err(libc::ENOTEMPTY)
                    } else {
                        Ok(())
                    }
                } else {
                    Ok(())
                };
                expect(r, want, &what);
                let same = matches!((&snode, m.nodes.get(&path)), (Node::File(a), Some(Node::File(b))) if a == b);
                if want.is_ok() && path != src && !same {
                    m.nodes.remove(&path);
                    let moved: Vec<_> = m
                        .nodes
                        .keys()
                        .filter(|k| k.starts_with(&src))
                        .cloned()
                        .collect();
                    for k in moved {
                        let n = m.nodes.remove(&k).unwrap();
                        let mut nk = path.clone();
                        nk.extend_from_slice(&k[src.len()..]);
                        m.nodes.insert(nk, n);
                    }
                }
            }
            8 if !files.is_empty() => {
                let p = &files[rng.below(files.len())];
                let node = m.nodes[p].clone();
                let ino = walk_path(&mut *fs, p);
                let d = walk_path(&mut *fs, &dir);
                let r = fs.link(ino, d, name.as_bytes()).map_err(|e| e.errno);
                if exists {
                    expect(r, Err(libc::EEXIST), &what);
                } else {
                    r.unwrap();
                    m.nodes.insert(path, node);
                }
            }
            9 => {
                let target = "x".repeat(rng.below(120) + 1).into_bytes();
                let d = walk_path(&mut *fs, &dir);
                let r = fs
                    .symlink(d, name.as_bytes(), &target, OWNER)
                    .map(|_| ())
                    .map_err(|e| e.errno);
                if exists {
                    expect(r, Err(libc::EEXIST), &what);
                } else {
                    r.unwrap();
                    m.nodes.insert(path, Node::Link(target));
                }
            }
            _ => {}
        }
    }
    fs.close().unwrap();
    img.fsck_clean();

    // The kernel sees the model's tree.
    let mnt = img.mount(true);
    let mut seen = std::collections::BTreeMap::new();
    let mut stack = vec![vec![]];
    while let Some(d) = stack.pop() {
        let dp = mnt.path(&d.join("/"));
        for e in std::fs::read_dir(&dp).unwrap() {
            let e = e.unwrap();
            let mut k: Vec<String> = d.clone();
            k.push(e.file_name().into_string().unwrap());
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                stack.push(k.clone());
                let subdirs = m
                    .children(&k)
                    .iter()
                    .filter(|c| m.nodes[*c] == Node::Dir)
                    .count();
                if k != ["lost+found"] {
                    assert_eq!(md.nlink() as usize, 2 + subdirs, "{k:?}");
                }
                seen.insert(k, Node::Dir);
            } else if md.file_type().is_symlink() {
                let t = std::fs::read_link(e.path()).unwrap();
                seen.insert(k, Node::Link(t.into_os_string().into_encoded_bytes()));
            } else {
                let Some(Node::File(id)) = m.nodes.get(&k) else {
                    panic!("unexpected file {k:?}");
                };
                assert_eq!(md.nlink() as usize, m.links(*id), "{k:?}");
                assert!(
                    std::fs::read(e.path()).unwrap() == m.contents[id],
                    "contents of {k:?}"
                );
                seen.insert(k, Node::File(*id));
            }
        }
    }
    let mut want = m.nodes.clone();
    want.remove(&vec![]);
    assert_eq!(seen, want);
}

#[test]
fn random_edits_on_ext4_match_a_model_and_stay_clean() {
    random_edits(&mkfs("ext4", 64, &[]), 0x9E3779B97F4A7C15, 2500);
}

#[test]
fn random_edits_on_ext3_and_ext2_match_a_model_and_stay_clean() {
    random_edits(&mkfs("ext3", 64, &[]), 12345, 1500);
    random_edits(&mkfs("ext2", 64, &["-b", "4096"]), 777, 1500);
}
#[test]
#[ignore]
fn random_edits_many_seeds() {
    for seed in 1..25u64 {
        let kind = ["ext4", "ext3", "ext2"][seed as usize % 3];
        let extra: &[&str] = if seed % 2 == 0 {
            &["-b", "1024"]
        } else {
            &["-b", "4096"]
        };
        random_edits(&mkfs(kind, 48, extra), seed * 0x2545F4914F6CDD1D, 1200);
    }
}

#[test]
fn random_edits_on_less_common_layouts_stay_clean() {
    let layouts: &[&[&str]] = &[
        &["-O", "^metadata_csum,uninit_bg"],
        &["-O", "meta_bg,^resize_inode"],
        &["-O", "^64bit,^flex_bg"],
        &["-O", "large_dir,sparse_super2"],
        &["-O", "^has_journal", "-E", "lazy_itable_init=1"],
        &["-O", "^dir_index,^extra_isize", "-I", "128"],
        &["-b", "2048", "-O", "^huge_file"],
    ];
    for (i, extra) in layouts.iter().enumerate() {
        random_edits(&mkfs("ext4", 48, extra), 1000 + i as u64, 800);
    }
}

/// `data` written at `start` in pieces of the given sizes, in turn, as `fs put` sends a
/// file (but with sizes and offsets that are not block multiples).
fn write_in_pieces(
    fs: &mut dyn GuestFs,
    f: Ino,
    start: u64,
    data: &[u8],
    sizes: &[usize],
) -> strata::fs::FsResult<()> {
    let mut done = 0usize;
    let mut k = 0usize;
    while done < data.len() {
        let n = sizes[k % sizes.len()].min(data.len() - done);
        fs.write(f, start + done as u64, &data[done..done + n])?;
        done += n;
        k += 1;
    }
    Ok(())
}

/// Leaf extents of `path`, as debugfs lists them.
fn leaf_extents(img: &Image, path: &str) -> usize {
    img.debugfs(&format!("ex {path}"))
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // "Level Entries Logical Physical Length Flags": a leaf's level is "d/ d".
            f.len() >= 2 && f[0].split('/').next() == f[1].split('/').next()
        })
        .count()
}

#[test]
fn a_file_over_100_mib_written_in_unaligned_pieces_reads_back_whole() {
    // 4 KiB blocks (mke2fs defaults: extents, 64bit, metadata_csum, huge_file, flex_bg)
    // and 1 KiB blocks, whose blocks are not whole pages of the block cache.
    for (extra, fs_mib, len) in [
        (&[][..], 512u64, (100 << 20) + 4321usize),
        (&["-b", "1024"][..], 96, (40 << 20) + 999),
    ] {
        let img = mkfs("ext4", fs_mib, extra);
        let data = pattern(len, 17);
        let mut fs = img.rw();
        let f = fs.create(2, b"big", 0o644, OWNER).unwrap();
        // Starts 777 bytes in; pieces of 3 MiB + 17, 8 MiB, 1 MiB - 1 and 5 bytes.
        let sizes = [(3 << 20) + 17, 8 << 20, (1 << 20) - 1, 5];
        write_in_pieces(&mut *fs, f, 777, &data, &sizes).unwrap();
        // Rewritten in place, unaligned: blocks already written are overwritten.
        let patch = pattern((5 << 20) + 3, 23);
        fs.write(f, (7 << 20) + 1, &patch).unwrap();
        let st = fs.stat(f).unwrap();
        assert_eq!(st.size, 777 + len as u64);
        fs.close().unwrap();
        img.fsck_clean();

        let mut expect = vec![0u8; 777];
        expect.extend_from_slice(&data);
        expect[(7 << 20) + 1..(7 << 20) + 1 + patch.len()].copy_from_slice(&patch);
        let m = img.mount(true);
        let back = std::fs::read(m.path("big")).unwrap();
        assert!(back == expect, "the kernel reads other bytes ({extra:?})");
        let md = std::fs::metadata(m.path("big")).unwrap();
        assert!(
            md.blocks() * 512 >= expect.len() as u64
                && md.blocks() * 512 <= expect.len() as u64 + (4 << 20),
            "{} sectors for {} bytes",
            md.blocks(),
            expect.len()
        );
        drop(m);
        // Pieces written one after the other merge into long extents, not one a piece.
        let leaves = leaf_extents(&img, "/big");
        assert!(
            leaves <= 24,
            "{leaves} extents for {len} bytes ({extra:?}):\n{}",
            img.debugfs("ex /big")
        );
    }
}

#[test]
fn a_large_write_over_a_sparse_and_preallocated_file_replaces_just_its_range() {
    use std::os::unix::io::AsRawFd;
    let img = mkfs("ext4", 256, &[]);
    let mib = 1usize << 20;
    let mut expect = Vec::new();
    {
        // Made by the kernel: data, holes, an unwritten (fallocated) range inside the file,
        // and another one past its end (FALLOC_FL_KEEP_SIZE).
        let m = img.mount(false);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .open(m.path("over"))
            .unwrap();
        use std::os::unix::fs::FileExt;
        let put = |expect: &mut Vec<u8>, at: usize, d: &[u8]| {
            file.write_all_at(d, at as u64).unwrap();
            if expect.len() < at + d.len() {
                expect.resize(at + d.len(), 0);
            }
            expect[at..at + d.len()].copy_from_slice(d);
        };
        put(&mut expect, 0, &pattern(mib, 1));
        put(&mut expect, 5 * mib, &pattern(mib + 100, 2));
        let fd = file.as_raw_fd();
        // SAFETY: fallocate on an open file.
        assert_eq!(
            unsafe { libc::fallocate(fd, 0, (8 * mib) as i64, (4 * mib) as i64) },
            0
        );
        expect.resize(12 * mib, 0);
        put(&mut expect, 20 * mib, &pattern(4096, 3));
        // SAFETY: as above.
        assert_eq!(
            unsafe {
                libc::fallocate(
                    fd,
                    libc::FALLOC_FL_KEEP_SIZE,
                    (30 * mib) as i64,
                    (4 * mib) as i64,
                )
            },
            0
        );
        file.sync_all().unwrap();
    }
    let before = img.debugfs("ex /over");
    assert!(before.contains("Uninit"), "no unwritten extents:\n{before}");

    // Over data, holes, the unwritten range inside, and half of the one past the end.
    let start = 512 * 1024 + 123;
    let new = pattern(32 * mib + 777 - start, 9);
    let mut fs = img.rw();
    let f = walk(&mut *fs, "over");
    write_in_pieces(&mut *fs, f, start as u64, &new, &[(3 << 20) + 5]).unwrap();
    fs.close().unwrap();
    img.fsck_clean();
    expect.resize(start + new.len(), 0);
    expect[start..].copy_from_slice(&new);

    let m = img.mount(true);
    let back = std::fs::read(m.path("over")).unwrap();
    assert_eq!(back.len(), expect.len());
    assert!(back == expect, "the kernel reads other bytes");
    drop(m);
    // The rest of the range preallocated past the end is still allocated and unwritten.
    let after = img.debugfs("ex /over");
    assert!(after.contains("Uninit"), "{after}");
}

#[test]
fn a_large_write_that_fills_the_filesystem_keeps_what_fitted_and_stays_clean() {
    let img = mkfs("ext4", 16, &[]);
    let data = pattern(32 << 20, 31);
    let mut fs = img.rw();
    let f = fs.create(2, b"full", 0o644, OWNER).unwrap();
    let e = write_in_pieces(&mut *fs, f, 4095, &data, &[(2 << 20) + 3])
        .expect_err("32 MiB fitted into 16 MiB");
    assert_eq!(e.errno, libc::ENOSPC, "{e}");
    let size = fs.stat(f).unwrap().size;
    assert!(size > 4 << 20, "only {size} bytes were written");
    assert_eq!(fs.statvfs().unwrap().bavail, 0);
    fs.close().unwrap();
    img.fsck_clean();

    let m = img.mount(true);
    let back = std::fs::read(m.path("full")).unwrap();
    assert_eq!(back.len() as u64, size);
    assert!(back[..4095].iter().all(|&b| b == 0));
    assert!(
        back[4095..] == data[..back.len() - 4095],
        "a short write keeps what it wrote"
    );
}
