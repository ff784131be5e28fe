//! Hostile images through the real worker (`strata fs-worker`, started by
//! `strata::fs::worker::Worker` exactly as `strata fs` starts it): ext4, NTFS and FAT
//! images with damaged superblocks, garbage directory blocks, a looping extent tree,
//! damaged MFT records, looping cluster chains and sizes that claim terabytes. For each,
//! the job (list filesystems, mount, walk, read, write, commit) must end with an error or a
//! consistent answer, every call must come back within the worker timeout, and the worker
//! process must be gone afterwards. The deterministic companion of the fuzz targets in
//! fuzz/ (which run the same driver on random corruptions).
//!
//! Fixtures are made by mke2fs/debugfs, mkntfs and mkfs.vfat (tools/install-deps), and
//! populated through the worker itself, so no mount (FUSE, loop) is needed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ok, tool, BIN};
use strata::fs::worker::{Call, Reply, Request, Source, Worker, WorkerOptions};
use strata::fs::{FileKind, FsError, FsResult};

const TIMEOUT: Duration = Duration::from_secs(20);
/// Killing and reaping a worker that ran out of time.
const MARGIN: Duration = Duration::from_secs(5);

fn opts() -> WorkerOptions {
    WorkerOptions {
        exe: BIN.into(),
        timeout: TIMEOUT,
        memory_bytes: 512 << 20,
        cpu_seconds: 60,
        ..WorkerOptions::default()
    }
}

/// How the worker died, from the client's message, if it did.
fn death(e: &FsError) -> Option<String> {
    let d = &e.detail;
    (d.contains("the filesystem worker") && !d.contains("was stopped")).then(|| d.clone())
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// What one job on a hostile image came to.
#[derive(Debug, Default)]
struct Outcome {
    mounted: bool,
    entries: usize,
    reads: usize,
    errors: usize,
    committed: bool,
    /// The client's message when the worker crashed, hung or was killed.
    died: Option<String>,
}

struct Job {
    w: Option<Worker>,
    o: Outcome,
}

impl Job {
    fn start(image: &Path, read_only: bool) -> (Job, Option<u32>) {
        let t = Instant::now();
        let r = Worker::start(
            Source::File {
                path: image.to_path_buf(),
            },
            read_only,
            &opts(),
        );
        assert!(
            t.elapsed() <= TIMEOUT + MARGIN,
            "starting took {:?}",
            t.elapsed()
        );
        let mut job = Job {
            w: None,
            o: Outcome::default(),
        };
        match r {
            Ok(w) => {
                let pid = w.pid();
                job.w = Some(w);
                (job, Some(pid))
            }
            Err(e) => {
                job.o.errors += 1;
                job.o.died = death(&e);
                (job, None)
            }
        }
    }

    /// One request, which must come back within the timeout; a dead worker ends the job.
    fn call(&mut self, req: Request) -> FsResult<Reply> {
        let Some(w) = self.w.as_mut() else {
            return Err(FsError::new(libc::EIO, "no worker"));
        };
        let what = req.describe();
        let t = Instant::now();
        let r = w.call(req);
        assert!(
            t.elapsed() <= TIMEOUT + MARGIN,
            "{what} took {:?}, beyond the {TIMEOUT:?} timeout",
            t.elapsed()
        );
        if let Err(e) = &r {
            self.o.errors += 1;
            if let Some(d) = death(e) {
                self.o.died = Some(d);
                self.w = None;
            }
        }
        r
    }

    fn fs(&mut self, c: Call) -> FsResult<Reply> {
        self.call(Request::Call(c))
    }

    fn mount_first(&mut self, read_only: bool) {
        let _ = self.call(Request::Devices);
        let Ok(Reply::Filesystems(list)) = self.call(Request::Filesystems { usage: true }) else {
            return;
        };
        let Some(f) = list.iter().find(|f| f.detected.is_some()) else {
            return;
        };
        let device = f.device.clone();
        let _ = self.call(Request::UsedBlocks {
            device: device.clone(),
        });
        self.o.mounted = self
            .call(Request::Mount {
                device,
                point: "/".into(),
                read_only,
            })
            .is_ok();
    }

    /// Walks everything (bounded), checking that what comes back is self-consistent.
    fn walk(&mut self) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (mut files, mut dirs) = (Vec::new(), Vec::new());
        let mut queue = vec![(b"/".to_vec(), 0)];
        while let Some((dir, depth)) = queue.pop() {
            let Ok(Reply::Entries(entries)) = self.fs(Call::Readdir { path: dir.clone() }) else {
                continue;
            };
            for e in entries {
                self.o.entries += 1;
                if self.o.entries > 2000 {
                    return (files, dirs);
                }
                assert!(
                    !e.name.is_empty()
                        && e.name != b"."
                        && e.name != b".."
                        && !e.name.contains(&b'/')
                        && !e.name.contains(&0),
                    "readdir of {} gave the name {:?}",
                    String::from_utf8_lossy(&dir),
                    e.name
                );
                let mut path = dir.clone();
                if path.len() > 1 {
                    path.push(b'/');
                }
                path.extend_from_slice(&e.name);
                let Ok(Reply::Stat(st)) = self.fs(Call::Stat {
                    path: path.clone(),
                    follow: false,
                }) else {
                    continue;
                };
                assert_eq!(
                    FileKind::from_mode(st.mode),
                    Some(st.kind),
                    "stat of {} gave mode {:o} for a {:?}",
                    String::from_utf8_lossy(&path),
                    st.mode,
                    st.kind
                );
                match st.kind {
                    FileKind::Directory if depth < 8 => {
                        queue.push((path.clone(), depth + 1));
                        dirs.push(path);
                    }
                    FileKind::Regular => {
                        // The start, and far out (a size that claims terabytes must not
                        // make anything allocate them).
                        for offset in [0, st.size.saturating_sub(100), 1 << 40] {
                            let len = 1 << 16;
                            if let Ok(Reply::Bytes(b)) = self.fs(Call::Read {
                                path: path.clone(),
                                offset,
                                len,
                            }) {
                                self.o.reads += 1;
                                let most = st.size.saturating_sub(offset).min(len as u64);
                                assert!(
                                    b.len() as u64 <= most,
                                    "read of {} at {offset} gave {} bytes; its size is {}",
                                    String::from_utf8_lossy(&path),
                                    b.len(),
                                    st.size
                                );
                            }
                        }
                        files.push(path);
                    }
                    FileKind::Symlink => {
                        let _ = self.fs(Call::Readlink { path: path.clone() });
                        let _ = self.fs(Call::Stat { path, follow: true });
                    }
                    _ => {}
                }
            }
        }
        (files, dirs)
    }

    fn change(&mut self, files: &[Vec<u8>], dirs: &[Vec<u8>]) {
        let data = vec![0x5au8; 20_000];
        let _ = self.fs(Call::CreateOrTruncate {
            path: b"/hostile-new".to_vec(),
            mode: 0o644,
        });
        let _ = self.fs(Call::WriteAt {
            path: b"/hostile-new".to_vec(),
            offset: 0,
            data: data.clone(),
        });
        let _ = self.fs(Call::Mkdir {
            path: b"/hostile-dir/a".to_vec(),
            mode: 0o755,
            parents: true,
        });
        if let Some(f) = files.first() {
            let _ = self.fs(Call::Append {
                path: f.clone(),
                data,
            });
        }
        if let Some(f) = files.get(1) {
            let _ = self.fs(Call::Truncate {
                path: f.clone(),
                size: 0,
            });
        }
        for d in dirs.iter().take(2) {
            let _ = self.fs(Call::RmRf { path: d.clone() });
        }
        let _ = self.fs(Call::Statvfs {
            path: b"/".to_vec(),
        });
    }
}

/// The whole job on `image`: returns what happened; panics only where the client failed
/// its promise (a call beyond the timeout, a worker left behind, an inconsistent answer).
fn drive(image: &Path) -> Outcome {
    let (mut job, pid) = Job::start(image, false);
    job.mount_first(false);
    if job.o.mounted {
        let (files, dirs) = job.walk();
        job.change(&files, &dirs);
        if let Some(w) = job.w.take() {
            let t = Instant::now();
            match w.commit() {
                Ok(()) => job.o.committed = true,
                Err(e) => {
                    job.o.errors += 1;
                    job.o.died = death(&e);
                }
            }
            assert!(
                t.elapsed() <= TIMEOUT + MARGIN,
                "commit took {:?}",
                t.elapsed()
            );
        }
    }
    drop(job.w.take());
    if let Some(pid) = pid {
        assert!(!alive(pid), "worker {pid} is still there after the job");
    }
    let mut o = job.o;
    if o.committed {
        // What was written back opens (or is refused) just as safely.
        let (mut again, pid) = Job::start(image, true);
        again.mount_first(true);
        if again.o.mounted {
            again.walk();
        }
        drop(again.w.take());
        if let Some(pid) = pid {
            assert!(!alive(pid), "worker {pid} is still there after the job");
        }
        o.errors += again.o.errors;
        o.died = o.died.or(again.o.died);
    }
    eprintln!("{}: {o:?}", image.display());
    o
}

/// A fresh copy of `base` named `name`, with `edit` applied to its bytes.
fn variant(dir: &Path, base: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut b = std::fs::read(base).unwrap();
    edit(&mut b);
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    p
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Deterministic garbage.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Populates the filesystem of `image` through a worker: `files` as (path, size).
fn populate(image: &Path, dirs: &[&str], files: &[(&str, usize)]) {
    let mut w = Worker::start(
        Source::File {
            path: image.to_path_buf(),
        },
        false,
        &opts(),
    )
    .unwrap();
    w.call(Request::Mount {
        device: "/dev/sda".into(),
        point: "/".into(),
        read_only: false,
    })
    .unwrap();
    for d in dirs {
        w.call(Request::Call(Call::Mkdir {
            path: d.as_bytes().to_vec(),
            mode: 0o755,
            parents: true,
        }))
        .unwrap();
    }
    for (i, (f, size)) in files.iter().enumerate() {
        let path = f.as_bytes().to_vec();
        w.call(Request::Call(Call::CreateOrTruncate {
            path: path.clone(),
            mode: 0o644,
        }))
        .unwrap();
        w.call(Request::Call(Call::WriteAt {
            path,
            offset: 0,
            data: garbage(i as u64 + 1, *size),
        }))
        .unwrap();
    }
    w.commit().unwrap();
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---- ext4 ----------------------------------------------------------------------------

fn debugfs(image: &Path, req: &str) -> String {
    ok(Command::new(tool("debugfs", "tools/install-deps"))
        .arg("-R")
        .arg(req)
        .arg(image))
}

/// Device byte offset of the on-disk inode of `path` (1 KiB blocks).
fn inode_offset(image: &Path, path: &str) -> usize {
    let out = debugfs(image, &format!("imap {path}"));
    let block: usize = out
        .split("located at block ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("debugfs imap {path}: {out}"));
    let off = out
        .split("offset 0x")
        .nth(1)
        .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
        .unwrap_or_else(|| panic!("debugfs imap {path}: {out}"));
    block * 1024 + off
}

/// A 4 MiB ext4 with 1 KiB blocks: files, a 60-entry directory (an htree), a file of
/// twelve extents (an extent tree with an index block), a symlink.
fn ext4_base(dir: &Path, extra: &[&str]) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc/sub")).unwrap();
    std::fs::create_dir_all(tree.join("big")).unwrap();
    std::fs::write(tree.join("etc/hostname"), "hostile\n").unwrap();
    std::fs::write(tree.join("etc/sub/deep"), "deep\n").unwrap();
    std::fs::write(tree.join("blob.bin"), garbage(7, 30_000)).unwrap();
    for i in 0..60 {
        std::fs::write(tree.join(format!("big/entry-with-a-long-name-{i}")), "x").unwrap();
    }
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(tree.join("sparse.bin")).unwrap();
        for i in 0..12u64 {
            f.write_all_at(&garbage(i + 100, 1024), i * 8192).unwrap();
        }
    }
    std::os::unix::fs::symlink("etc/hostname", tree.join("link")).unwrap();
    let img = dir.join("ext4.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    ok(Command::new(tool("mke2fs", "tools/install-deps"))
        .args(["-q", "-F", "-t", "ext4", "-b", "1024", "-N", "256"])
        .args(extra)
        .arg("-d")
        .arg(&tree)
        .arg(&img));
    // e2fsck -D turns the big directory into an htree.
    let _ = Command::new("e2fsck").arg("-fyD").arg(&img).output();
    img
}

#[test]
fn hostile_ext4_images_give_errors_or_consistent_answers_never_a_hang() {
    let d = tmp();
    let base = ext4_base(d.path(), &["-O", "^metadata_csum"]);
    let clean = drive(&variant(d.path(), &base, "clean", |_| {}));
    assert!(
        clean.mounted && clean.committed && clean.died.is_none(),
        "{clean:?}"
    );
    assert!(clean.entries >= 66 && clean.reads >= 60, "{clean:?}");

    let sb = 1024;
    let v = |name: &str, edit: Box<dyn FnOnce(&mut Vec<u8>)>| variant(d.path(), &base, name, edit);
    // Superblock fields: a block size of 2^40, no inodes per group, more blocks than the
    // device has, a first data block past the end.
    let o = drive(&v("sb-block-size", Box::new(|b| put32(b, sb + 24, 30))));
    assert!(!o.mounted, "{o:?}");
    let o = drive(&v(
        "sb-inodes-per-group",
        Box::new(|b| put32(b, sb + 40, 0)),
    ));
    assert!(!o.mounted, "{o:?}");
    drive(&v(
        "sb-blocks-count",
        Box::new(|b| put32(b, sb + 4, 0xffff_ff00)),
    ));
    drive(&v(
        "sb-first-data-block",
        Box::new(|b| put32(b, sb + 20, 0x00ff_ffff)),
    ));
    // The first group descriptor (block 2) puts the inode table past the device.
    drive(&v(
        "gd-inode-table",
        Box::new(|b| put32(b, 2048 + 8, 0x7fff_fff0)),
    ));

    // Every block of the big directory, and of the root, is garbage.
    let blocks: Vec<usize> = debugfs(&base, "blocks /big")
        .split_whitespace()
        .chain(debugfs(&base, "blocks /").split_whitespace())
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(blocks.len() >= 3, "{blocks:?}");
    drive(&v(
        "dir-garbage",
        Box::new(move |b| {
            for (i, blk) in blocks.iter().enumerate() {
                b[blk * 1024..blk * 1024 + 1024].copy_from_slice(&garbage(i as u64 + 9, 1024));
            }
        }),
    ));

    // The extent tree's index block points at itself, one level deeper each time.
    let stat = debugfs(&base, "stat /sparse.bin");
    let etb: usize = stat
        .split("(ETB0):")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no extent tree block in: {stat}"));
    let o = drive(&v(
        "extent-loop",
        Box::new(move |b| {
            let at = etb * 1024;
            assert_eq!(le16(b, at), 0xf30a, "extent header magic");
            put16(b, at + 2, 1); // entries
            put16(b, at + 6, 1); // depth: an index node
            put32(b, at + 12, 0); // ei_block
            put32(b, at + 16, etb as u32); // ei_leaf_lo: itself
            put16(b, at + 20, 0); // ei_leaf_hi
        }),
    ));
    assert!(o.mounted, "{o:?}");

    // An inode that claims a size of 2^60 bytes, and one of 2^40 with no blocks.
    let blob = inode_offset(&base, "/blob.bin");
    drive(&v(
        "huge-size",
        Box::new(move |b| {
            put32(b, blob + 4, 0);
            put32(b, blob + 108, 1 << 28);
        }),
    ));
    let deep = inode_offset(&base, "/etc/sub/deep");
    drive(&v(
        "huge-size-empty",
        Box::new(move |b| {
            put32(b, deep + 108, 1 << 8);
        }),
    ));
    // A directory entry naming an inode far beyond the inode count.
    let root_blocks: Vec<usize> = debugfs(&base, "blocks /")
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect();
    drive(&v(
        "dirent-bad-inode",
        Box::new(move |b| {
            // The third entry of the root's first block (after . and ..).
            let at = root_blocks[0] * 1024;
            let third = at + 12 + 12;
            put32(b, third, 0x7fff_fff0);
        }),
    ));
}

#[test]
fn hostile_ext4_with_checksums_refuses_damaged_metadata() {
    let d = tmp();
    let base = ext4_base(d.path(), &[]);
    let blob = inode_offset(&base, "/blob.bin");
    let img = variant(d.path(), &base, "inode-csum", |b| b[blob + 40] ^= 0xff);
    let o = drive(&img);
    assert!(o.mounted && o.errors > 0, "{o:?}");
    let img = variant(d.path(), &base, "sb-csum", |b| b[1024 + 0x78] ^= 1);
    let o = drive(&img);
    assert!(!o.mounted, "{o:?}");
}

// ---- NTFS ----------------------------------------------------------------------------

fn ntfs_base(dir: &Path) -> PathBuf {
    let img = dir.join("ntfs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    ok(Command::new(tool("mkntfs", "tools/install-deps"))
        .args(["-q", "-Q", "-F"])
        .arg(&img));
    let mut files: Vec<(String, usize)> = vec![
        ("/small.txt".into(), 100),
        ("/dir/data.bin".into(), 20_000),
        ("/dir/sub/deep.txt".into(), 10),
    ];
    for i in 0..40 {
        files.push((format!("/big/entry-with-a-long-name-{i}"), 10));
    }
    let files: Vec<(&str, usize)> = files.iter().map(|(p, s)| (p.as_str(), *s)).collect();
    populate(&img, &["/dir/sub", "/big"], &files);
    img
}

/// Byte offset of the MFT record in use whose $FILE_NAME is `name` (a directory's when
/// `dir`).
fn mft_record(b: &[u8], name: &str, dir: bool) -> usize {
    let u: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    (0..b.len() / 1024)
        .map(|i| i * 1024)
        .find(|&r| {
            if &b[r..r + 4] != b"FILE" || le16(b, r + 22) & 1 == 0 {
                return false;
            }
            if (le16(b, r + 22) & 2 != 0) != dir {
                return false;
            }
            let Some(a) = find_attribute(b, r, 0x30) else {
                return false;
            };
            let v = a + le16(b, a + 20) as usize;
            let n = b[v + 64] as usize * 2;
            b[v + 66..v + 66 + n] == u[..]
        })
        .unwrap_or_else(|| panic!("no MFT record holds {name}"))
}

fn find_attribute(b: &[u8], rec: usize, kind: u32) -> Option<usize> {
    let mut a = rec + le16(b, rec + 20) as usize;
    while a + 8 <= rec + 1024 && le32(b, a) != 0xffff_ffff {
        if le32(b, a) == kind {
            return Some(a);
        }
        let len = le32(b, a + 4) as usize;
        if len == 0 {
            return None;
        }
        a += len;
    }
    None
}

/// Byte offset of the first attribute of `kind` in the record at `rec`.
fn attribute(b: &[u8], rec: usize, kind: u32) -> usize {
    find_attribute(b, rec, kind)
        .unwrap_or_else(|| panic!("no attribute {kind:#x} in the record at {rec}"))
}

#[test]
fn hostile_ntfs_images_give_errors_or_consistent_answers_never_a_hang() {
    let d = tmp();
    let base = ntfs_base(d.path());
    let clean = drive(&variant(d.path(), &base, "clean", |_| {}));
    assert!(
        clean.mounted && clean.committed && clean.died.is_none(),
        "{clean:?}"
    );
    assert!(clean.entries >= 45, "{clean:?}");
    let b0 = std::fs::read(&base).unwrap();
    let cluster = le16(&b0, 11) as usize * b0[13] as usize;
    let mft = le64(&b0, 48) as usize * cluster;
    let v = |name: &str, edit: Box<dyn FnOnce(&mut Vec<u8>)>| variant(d.path(), &base, name, edit);

    // $MFT's own record is garbage: nothing can be found.
    let o = drive(&v(
        "mft-garbage",
        Box::new(move |b| b[mft..mft + 1024].copy_from_slice(&garbage(3, 1024))),
    ));
    assert!(!o.mounted, "{o:?}");
    // The root directory's record (5) fails its update-sequence check.
    let root = mft + 5 * 1024;
    drive(&v("root-usa", Box::new(move |b| b[root + 510] ^= 0xff)));
    // A file record whose first attribute has length 0 (a walk that trusts it never ends).
    let small = mft_record(&b0, "small.txt", false);
    drive(&v(
        "attr-len-zero",
        Box::new(move |b| {
            let a = small + le16(b, small + 20) as usize;
            put32(b, a + 4, 0);
        }),
    ));
    // The same record, its attributes offset pointing outside it.
    drive(&v(
        "attrs-offset",
        Box::new(move |b| put16(b, small + 20, 0xfff0)),
    ));
    // A non-resident $DATA whose runlist points far beyond the volume, and whose size
    // claims 2^50 bytes.
    let data = mft_record(&b0, "data.bin", false);
    let a = attribute(&b0, data, 0x80);
    assert_eq!(b0[a + 8], 1, "data.bin's $DATA is non-resident");
    drive(&v(
        "runlist-far",
        Box::new(move |b| {
            // One run of the first run's length at LCN 0x3ffffff0 (four offset bytes).
            let run = a + le16(b, a + 32) as usize;
            let h = b[run];
            assert_eq!(h & 0xf, 1, "a one-byte run length");
            assert!(le32(b, a + 4) as usize - (run - a) >= 7, "room for the run");
            let len = b[run + 1];
            b[run..run + 7].copy_from_slice(&[0x41, len, 0xf0, 0xff, 0xff, 0x3f, 0]);
        }),
    ));
    drive(&v(
        "data-size-huge",
        Box::new(move |b| {
            put64(b, a + 48, 1 << 50);
            put64(b, a + 56, 1 << 50);
        }),
    ));
    // The big directory's record (index root and allocation) is garbage past its header.
    let big = mft_record(&b0, "big", true);
    drive(&v(
        "dir-record-garbage",
        Box::new(move |b| {
            let g = garbage(11, 1024 - 56);
            b[big + 56..big + 1024].copy_from_slice(&g);
        }),
    ));
}

// ---- FAT -----------------------------------------------------------------------------

/// An 8 MiB FAT16 (2 sectors per cluster) with files and nested directories.
fn fat_base(dir: &Path) -> PathBuf {
    let img = dir.join("fat.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    ok(Command::new(tool("mkfs.vfat", "tools/install-deps"))
        .args(["-F", "16", "-s", "2"])
        .arg(&img));
    populate(
        &img,
        &["/DIR/SUB"],
        &[
            ("/HELLO.TXT", 5000),
            ("/DIR/INNER.TXT", 3000),
            ("/DIR/SUB/DEEP.TXT", 10),
        ],
    );
    img
}

struct FatGeo {
    fat: usize,
    root: usize,
    data: usize,
    cluster: usize,
}

fn fat_geo(b: &[u8]) -> FatGeo {
    let bps = le16(b, 11) as usize;
    let spc = b[13] as usize;
    let fat = le16(b, 14) as usize * bps;
    let fat_len = le16(b, 22) as usize * bps;
    let root = fat + b[16] as usize * fat_len;
    let data = root + le16(b, 17) as usize * 32;
    FatGeo {
        fat,
        root,
        data,
        cluster: bps * spc,
    }
}

/// Byte offset of the directory entry with 8.3 name `name` (11 bytes, space-padded).
fn fat_entry(b: &[u8], name: &[u8; 11]) -> usize {
    let g = fat_geo(b);
    (g.root..b.len())
        .step_by(32)
        .find(|&e| &b[e..e + 11] == name)
        .unwrap_or_else(|| panic!("no entry {:?}", String::from_utf8_lossy(name)))
}

#[test]
fn hostile_fat_images_give_errors_or_consistent_answers_never_a_hang() {
    let d = tmp();
    let base = fat_base(d.path());
    let clean = drive(&variant(d.path(), &base, "clean", |_| {}));
    assert!(
        clean.mounted && clean.committed && clean.died.is_none(),
        "{clean:?}"
    );
    assert!(clean.entries >= 5, "{clean:?}");
    let b0 = std::fs::read(&base).unwrap();
    let g = fat_geo(&b0);
    // The FAT adapter is pure Rust: a worker that dies on any of these is a bug of ours,
    // not a contained C-library fault.
    let v = |name: &str, edit: Box<dyn FnOnce(&mut Vec<u8>)>| variant(d.path(), &base, name, edit);
    let drive = |p: &Path| {
        let o = drive(p);
        assert!(o.died.is_none(), "{}: {o:?}", p.display());
        o
    };

    // A file whose cluster chain loops back on itself.
    let hello = fat_entry(&b0, b"HELLO   TXT");
    let first = le16(&b0, hello + 26) as usize;
    let fat = g.fat;
    drive(&v(
        "chain-loop",
        Box::new(move |b| put16(b, fat + 2 * first, first as u16)),
    ));
    // The same file claims 4 GiB - 1.
    drive(&v(
        "size-huge",
        Box::new(move |b| put32(b, hello + 28, u32::MAX)),
    ));
    // A subdirectory whose cluster is its parent's: the tree is infinite (rm -rf of it
    // once descended for ever; now ELOOP).
    let dir = fat_entry(&b0, b"DIR        ");
    let dir_cluster = le16(&b0, dir + 26);
    let sub = fat_entry(&b0, b"SUB        ");
    let o = drive(&v(
        "dir-loop",
        Box::new(move |b| put16(b, sub + 26, dir_cluster)),
    ));
    assert!(o.mounted && o.committed, "{o:?}");
    // A directory cluster of garbage.
    let at = g.data + (dir_cluster as usize - 2) * g.cluster;
    let len = g.cluster;
    drive(&v(
        "dir-garbage",
        Box::new(move |b| b[at..at + len].copy_from_slice(&garbage(5, len))),
    ));
    // Boot sector: no sectors per cluster; reserved sectors past the end; no FATs.
    let o = drive(&v("bpb-spc-zero", Box::new(|b| b[13] = 0)));
    assert!(!o.mounted, "{o:?}");
    drive(&v("bpb-reserved", Box::new(|b| put16(b, 14, 0xffff))));
    drive(&v("bpb-no-fats", Box::new(|b| b[16] = 0)));
    // A cluster number beyond the last cluster in a chain.
    drive(&v(
        "chain-beyond",
        Box::new(move |b| put16(b, fat + 2 * first, 0xfff0)),
    ));
}
