//! FAT12/16/32 with long names: the `GuestFs` adapter for `vfat`, showing what Linux's vfat
//! driver shows with guestfish's default mount (Debian's kernel: codepage=437,
//! iocharset=ascii, utf8, shortname=mixed, fmask=dmask=0022, no tz=).
//!
//! Who does what:
//! - the `fatfs` crate (0.3.6) allocates: clusters for file data (`File::write`), directory
//!   slots and short names for new entries (`Dir::create_file` / `create_dir`), directory
//!   growth; and keeps the dirty flag;
//! - `raw` reads everything itself (directories, FAT chains, entries) and makes the edits
//!   fatfs has no API for or gets wrong (see below), through the same page cache (`cache`).
//!
//! Where fatfs 0.3.6 and Linux disagree, and what is done about it:
//! - A directory fatfs creates starts with a long-name slot for `.`, then `.`, another for
//!   `..`, then `..` (it writes `.` and `..` like ordinary names), and on FAT32 its `..`
//!   holds the root's cluster where FAT says 0. `fsck.fat` refuses that ("Expected a valid
//!   '.' entry"). `mkdir` rewrites the new directory's first slots as `.`, `..`, free.
//! - Growing FAT32's root directory, fatfs does not zero the new cluster (it zeroes only
//!   clusters of directories that have an entry), so stale bytes would read as entries:
//!   the new clusters' unused slots are zeroed after the fact.
//! - fatfs compares names with Unicode case folding and refuses some names Linux takes
//!   (DEL, characters outside the BMP, more than 255 UTF-8 bytes). New entries are made
//!   under a stand-in name (the name with every non-ASCII unit as `_`, unique in fatfs's
//!   eyes) and their long-name slots rewritten with the real name (same slot count).
//! - Removing, renaming and attribute changes are done on the raw entries, which also gives
//!   rename(2) its replace semantics the way Linux does it: the moved entry takes over the
//!   target's slot (and keeps the target's stored name), so replacing never allocates.
//! - FSInfo's free count is recomputed from the FAT at every `sync`, since clusters are
//!   freed behind fatfs's back.
//!
//! Semantics, checked against Debian 12's kernel (6.1) in tests/fs_fat.rs: files and
//! directories are 0755 (0555 for a read-only file; a directory's read-only bit is
//! ignored), uid and gid 0; chmod can only move a file between 0755 and 0555 (other
//! permission changes are ignored without an error, set-id and sticky bits are EPERM);
//! chown to anything but 0:0 is EPERM; symlinks and hard links are EPERM; mtime has 2 s
//! resolution, atime is a date, ctime reads as mtime (6.1's fat_fill_inode), the root has
//! all three at 0; names are case-insensitive for ASCII only and trailing dots are dropped;
//! a directory's nlink counts its subdirectories (and its `.`/`..`).

mod cache;
mod raw;

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::fs::{
    DirEntry, FileKind, FsError, FsResult, GuestFs, Ino, OpenOptions, Owner, SetAttr, Stat,
    StatVfs, Timespec,
};
use crate::store::device::SharedDevice;

use cache::{errno_of, BlockCache, Disk, SharedCache};
use raw::{DirLoc, FatKind, Geometry, RawEntry, ATTR_DIR, ATTR_RO, SLOT};

const ROOT: Ino = 1;
/// The largest FAT file: sizes are 32-bit.
const MAX_FILE: u64 = 0xFFFF_FFFF;
/// statvfs f_namemax as vfat reports it: FAT_LFN_LEN * NLS_MAX_CHARSET_SIZE.
const NAMEMAX: u64 = 255 * 6;
/// statvfs f_flag of a default (relatime) mount.
const ST_RELATIME: u64 = 4096;
const ST_RDONLY: u64 = 1;

/// The mount umask guestfish's daemon runs `mount` with.
const MASK: u32 = 0o022;

/// fatfs's clock: now, in UTC (see raw.rs on time zones).
#[derive(Debug)]
struct UtcClock;
static UTC_CLOCK: UtcClock = UtcClock;

impl fatfs::TimeProvider for UtcClock {
    fn get_current_date(&self) -> fatfs::Date {
        self.get_current_date_time().date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        let (date, time, cs) = raw::unix_to_fat(Timespec::now());
        fatfs::DateTime {
            date: fatfs::Date {
                year: 1980 + (date >> 9),
                month: (date >> 5) & 0xF,
                day: date & 0x1F,
            },
            time: fatfs::Time {
                hour: time >> 11,
                min: (time >> 5) & 0x3F,
                sec: (time & 0x1F) * 2 + (cs / 100) as u16,
                millis: (cs % 100) as u16 * 10,
            },
        }
    }
}

struct Mounted(fatfs::FileSystem<Disk>);
// SAFETY: fatfs::FileSystem is not Send only because its FsOptions hold `&'static dyn
// TimeProvider` and `&'static dyn OemCpConverter` without a Sync bound. Those point at
// `UTC_CLOCK` and fatfs's own converter, both stateless zero-sized statics; every other
// field (RefCell, Cell, and `Disk`, an Arc<Mutex<..>>) is Send. The FatFs owning this is
// the only user, so moving it to another thread shares nothing.
unsafe impl Send for Mounted {}

struct Node {
    parent: Ino,
    /// Device offset of the entry's short-name slot.
    pos: u64,
}

pub struct FatFs {
    cache: SharedCache,
    geo: Geometry,
    fs: Option<Mounted>,
    read_only: bool,
    nodes: HashMap<Ino, Node>,
    by_pos: HashMap<u64, Ino>,
    next_ino: Ino,
    /// Cluster chains by first cluster, for reads; emptied by every change.
    chains: HashMap<u32, Arc<Vec<u32>>>,
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> FsError + '_ {
    move |e| FsError::new(errno_of(&e), format!("{what}: {e}"))
}

fn mount(cache: &SharedCache) -> FsResult<Mounted> {
    let opts = fatfs::FsOptions::new()
        .update_accessed_date(false)
        .time_provider(&UTC_CLOCK);
    fatfs::FileSystem::new(Disk::new(cache.clone()), opts)
        .map(Mounted)
        .map_err(io_err("opening the FAT filesystem"))
}

/// Opens the FAT filesystem on `dev`.
pub fn open(dev: SharedDevice, opts: OpenOptions) -> FsResult<Box<dyn GuestFs>> {
    let read_only = opts.read_only || dev.is_read_only();
    let mut c = BlockCache::new(dev, read_only);
    let mut boot = [0u8; 512];
    c.read(0, &mut boot)?;
    let geo = Geometry::parse(&boot, c.len())?;
    let cache = Arc::new(Mutex::new(c));
    let fs = if read_only {
        None
    } else {
        Some(mount(&cache)?)
    };
    let mut nodes = HashMap::new();
    nodes.insert(
        ROOT,
        Node {
            parent: ROOT,
            pos: u64::MAX,
        },
    );
    Ok(Box::new(FatFs {
        cache,
        geo,
        fs,
        read_only,
        nodes,
        by_pos: HashMap::new(),
        next_ino: ROOT + 1,
        chains: HashMap::new(),
    }))
}

/// The fatfs directory at the end of `path` (short names, from the root).
fn fatfs_dir<'a>(
    fs: &'a fatfs::FileSystem<Disk>,
    path: &[Vec<u8>],
) -> FsResult<fatfs::Dir<'a, Disk>> {
    let mut d = fs.root_dir();
    for sfn in path {
        let e = fatfs_child(&d, sfn)?;
        if !e.is_dir() {
            return Err(FsError::new(libc::EIO, "a directory became a file"));
        }
        d = e.to_dir();
    }
    Ok(d)
}

/// The entry with short name `sfn` in `d`: short names are unique in a directory, so this
/// finds exactly the entry meant, whatever fatfs makes of long names.
fn fatfs_child<'a>(d: &fatfs::Dir<'a, Disk>, sfn: &[u8]) -> FsResult<fatfs::DirEntry<'a, Disk>> {
    for e in d.iter() {
        let e = e.map_err(io_err("reading a directory"))?;
        if e.short_file_name_as_bytes() == sfn {
            return Ok(e);
        }
    }
    Err(FsError::new(
        libc::EIO,
        "an entry vanished from its directory under the adapter",
    ))
}

fn einval_not_dir() -> FsError {
    FsError::new(libc::ENOTDIR, "not a directory")
}

impl FatFs {
    fn check_writable(&self) -> FsResult<&Mounted> {
        match &self.fs {
            Some(m) if !self.read_only => Ok(m),
            _ => Err(FsError::new(
                libc::EROFS,
                "the FAT filesystem is open read-only",
            )),
        }
    }

    fn node(&self, ino: Ino) -> FsResult<&Node> {
        self.nodes
            .get(&ino)
            .ok_or_else(|| FsError::new(libc::ENOENT, format!("no inode {ino} (removed?)")))
    }

    fn read_entry(&self, pos: u64) -> FsResult<RawEntry> {
        let mut b = [0u8; 32];
        self.cache.lock().read(pos, &mut b)?;
        Ok(RawEntry::parse(&b, pos, self.geo.kind))
    }

    fn write_entry(&self, e: &RawEntry) -> FsResult<()> {
        self.cache.lock().write(e.pos, &e.encode(self.geo.kind))
    }

    /// The short-name entry of `ino`; None for the root.
    fn entry(&self, ino: Ino) -> FsResult<Option<RawEntry>> {
        if ino == ROOT {
            return Ok(None);
        }
        let pos = self.node(ino)?.pos;
        Ok(Some(self.read_entry(pos)?))
    }

    fn root_loc(&self) -> DirLoc {
        match self.geo.kind {
            FatKind::Fat32 => DirLoc::Chain(self.geo.root_cluster),
            _ => DirLoc::FixedRoot,
        }
    }

    fn dir_loc(&self, ino: Ino) -> FsResult<DirLoc> {
        match self.entry(ino)? {
            None => Ok(self.root_loc()),
            Some(e) if e.is_dir() => {
                if e.cluster < 2 {
                    Err(FsError::new(
                        libc::EIO,
                        "a directory entry has no cluster: run fsck.fat",
                    ))
                } else {
                    Ok(DirLoc::Chain(e.cluster))
                }
            }
            Some(_) => Err(einval_not_dir()),
        }
    }

    /// The cluster `..` of a child of `dir` names (0 for the root, on every FAT type).
    fn dotdot_cluster(&self, dir: Ino) -> FsResult<u32> {
        match self.dir_loc(dir)? {
            DirLoc::Chain(c) if dir != ROOT => Ok(c),
            _ => Ok(0),
        }
    }

    /// Entries of `dir` without `.` and `..`.
    fn list(&self, dir: Ino) -> FsResult<Vec<RawEntry>> {
        let loc = self.dir_loc(dir)?;
        let mut c = self.cache.lock();
        let mut v = raw::read_dir(&self.geo, &mut c, loc)?;
        v.retain(|e| !e.is_dot());
        Ok(v)
    }

    fn ino_at(&mut self, parent: Ino, pos: u64) -> Ino {
        if let Some(&i) = self.by_pos.get(&pos) {
            if let Some(n) = self.nodes.get_mut(&i) {
                n.parent = parent;
            }
            return i;
        }
        let i = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(i, Node { parent, pos });
        self.by_pos.insert(pos, i);
        i
    }

    fn forget(&mut self, pos: u64) {
        if let Some(i) = self.by_pos.remove(&pos) {
            self.nodes.remove(&i);
        }
    }

    fn find(&self, dir: Ino, name: &[u8]) -> FsResult<Option<RawEntry>> {
        Ok(self
            .list(dir)?
            .into_iter()
            .find(|e| raw::entry_matches(e, name)))
    }

    /// Short names from the root down to `ino` (a directory), for walking fatfs there.
    fn sfn_path(&self, mut ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        let mut path = Vec::new();
        while ino != ROOT {
            let n = self.node(ino)?;
            path.push(self.read_entry(n.pos)?.fatfs_short_bytes());
            ino = n.parent;
        }
        path.reverse();
        Ok(path)
    }

    fn chain(&mut self, first: u32) -> FsResult<Arc<Vec<u32>>> {
        if let Some(c) = self.chains.get(&first) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.geo.chain(&mut self.cache.lock(), first)?);
        if self.chains.len() > 64 {
            self.chains.clear();
        }
        self.chains.insert(first, c.clone());
        Ok(c)
    }

    fn mode_of(&self, e: Option<&RawEntry>) -> u32 {
        match e {
            None => 0o040000 | (0o777 & !MASK),
            Some(e) if e.is_dir() => 0o040000 | (0o777 & !MASK),
            Some(e) => {
                let m = 0o777 & !MASK;
                0o100000 | if e.attr & ATTR_RO != 0 { m & !0o222 } else { m }
            }
        }
    }

    /// Sets the mtime of directory `dir`'s own entry to now, as Linux does when an entry in
    /// it is added or removed (the root has no entry to hold it).
    fn touch_dir(&self, dir: Ino) -> FsResult<()> {
        if let Some(mut e) = self.entry(dir)? {
            let (d, t, _) = raw::unix_to_fat(Timespec::now());
            e.mdate = d;
            e.mtime = t;
            self.write_entry(&e)?;
        }
        Ok(())
    }

    /// Can `dir` take an entry of `slots` slots, and how many clusters would it need?
    /// Mirrors fatfs's Dir::find_free_entries, so ENOSPC is known before anything changes.
    fn clusters_for_slots(&self, dir: Ino, slots: usize) -> FsResult<Option<u64>> {
        let loc = self.dir_loc(dir)?;
        let all = raw::dir_slots(&self.geo, &mut self.cache.lock(), loc)?;
        let mut run = 0usize;
        for (i, (_, s)) in all.iter().enumerate() {
            if s[0] == 0 {
                let start = i - run;
                let room = all.len() - start;
                if room >= slots {
                    return Ok(Some(0));
                }
                return Ok(match loc {
                    DirLoc::FixedRoot => None,
                    DirLoc::Chain(_) => {
                        Some(((slots - room) as u64 * SLOT).div_ceil(self.geo.cluster_size))
                    }
                });
            } else if s[0] == 0xE5 {
                run += 1;
                if run == slots {
                    return Ok(Some(0));
                }
            } else {
                run = 0;
            }
        }
        // No end marker: fatfs appends after the last slot.
        Ok(match loc {
            DirLoc::FixedRoot => None,
            DirLoc::Chain(_) => Some((slots as u64 * SLOT).div_ceil(self.geo.cluster_size)),
        })
    }

    fn need_space(&self, dir: Ino, slots: usize, extra_clusters: u64) -> FsResult<()> {
        let need = match self.clusters_for_slots(dir, slots)? {
            None => {
                return Err(FsError::new(
                    libc::ENOSPC,
                    "the FAT root directory is full (its size is fixed on FAT12/16)",
                ))
            }
            Some(n) => n + extra_clusters,
        };
        if need > 0 {
            let free = self.geo.free_clusters(&mut self.cache.lock())? as u64;
            if free < need {
                return Err(FsError::new(libc::ENOSPC, "no free clusters left"));
            }
        }
        Ok(())
    }

    /// Creates an entry `name` (already checked, not present) in `dir` through fatfs and
    /// returns it as it now is on disk. See the module doc for the stand-in name.
    fn add_entry(
        &mut self,
        dir: Ino,
        name: &str,
        units: &[u16],
        is_dir: bool,
    ) -> FsResult<RawEntry> {
        let slots = units.len().div_ceil(13) + 1;
        self.need_space(dir, slots, is_dir as u64)?;
        let existing = self.list(dir)?;
        let mut stand_in: Vec<char> = name
            .encode_utf16()
            .map(|u| {
                if (0x20..0x7F).contains(&u) {
                    u as u8 as char
                } else {
                    '_'
                }
            })
            .collect();
        let len = stand_in.len();
        let mut n = 0u64;
        let base = stand_in.clone();
        loop {
            let s: String = stand_in.iter().collect();
            if !existing.iter().any(|e| raw::fatfs_matches(e, &s)) {
                break;
            }
            let digits: Vec<char> = format!("{n:x}").chars().collect();
            if digits.len() > len {
                return Err(FsError::new(
                    libc::EEXIST,
                    "no free name for fatfs to create",
                ));
            }
            stand_in = base.clone();
            stand_in[len - digits.len()..].copy_from_slice(&digits);
            n += 1;
        }
        let stand_in: String = stand_in.into_iter().collect();
        let loc = self.dir_loc(dir)?;
        let before = match loc {
            DirLoc::Chain(c) => self.geo.chain(&mut self.cache.lock(), c)?.len(),
            DirLoc::FixedRoot => 0,
        };
        let path = self.sfn_path(dir)?;
        {
            let fs = &self.check_writable()?.0;
            let d = fatfs_dir(fs, &path)?;
            if is_dir {
                d.create_dir(&stand_in).map(drop)
            } else {
                d.create_file(&stand_in).map(drop)
            }
            .map_err(io_err("creating a FAT directory entry"))?;
        }
        let want: Vec<u16> = stand_in.encode_utf16().collect();
        let e = self
            .list(dir)?
            .into_iter()
            .find(|e| e.lfn.as_deref() == Some(&want[..]))
            .ok_or_else(|| {
                FsError::new(libc::EIO, "fatfs did not create the entry it was asked for")
            })?;
        let mut c = self.cache.lock();
        if stand_in != name {
            raw::rewrite_long_name(&mut c, &e, units)?;
        }
        // A grown FAT32 root: zero what fatfs left of the new clusters' old contents.
        if let (DirLoc::Chain(first), true) = (loc, dir == ROOT) {
            let after = self.geo.chain(&mut c, first)?;
            for &cl in &after[before.min(after.len())..] {
                let start = self.geo.cluster_offset(cl);
                for k in 0..self.geo.cluster_size / SLOT {
                    let p = start + k * SLOT;
                    if !e.slots.contains(&p) {
                        c.write(p, &[0u8; 32])?;
                    }
                }
            }
        }
        drop(c);
        let mut e = e;
        if stand_in != name {
            e.lfn = Some(units.to_vec());
        }
        Ok(e)
    }

    /// Writes a new directory's `.` and `..` the way FAT wants them (fatfs 0.3.6 writes long
    /// names before them, and on FAT32 a `..` naming the root's cluster).
    fn fix_dots(&self, e: &RawEntry, parent_cluster: u32) -> FsResult<()> {
        let start = self.geo.cluster_offset(e.cluster);
        let mut dot = e.clone();
        dot.sfn = *b".          ";
        dot.attr = ATTR_DIR;
        dot.lcase = 0;
        dot.size = 0;
        let mut dotdot = dot.clone();
        dotdot.sfn = *b"..         ";
        dotdot.cluster = parent_cluster;
        let mut c = self.cache.lock();
        let mut block = vec![0u8; 4 * SLOT as usize];
        block[..32].copy_from_slice(&dot.encode(self.geo.kind));
        block[32..64].copy_from_slice(&dotdot.encode(self.geo.kind));
        c.write(start, &block)
    }

    /// Points the `..` of directory entry `e` at `parent_cluster`.
    fn set_dotdot(&self, e: &RawEntry, parent_cluster: u32) -> FsResult<()> {
        let entries = raw::read_dir(&self.geo, &mut self.cache.lock(), DirLoc::Chain(e.cluster))?;
        if let Some(mut dd) = entries.into_iter().find(|x| &x.sfn == b"..         ") {
            dd.cluster = parent_cluster;
            self.write_entry(&dd)?;
        }
        Ok(())
    }

    fn fatfs_file_op<T>(
        &mut self,
        ino: Ino,
        what: &str,
        op: impl FnOnce(&mut fatfs::File<'_, Disk>) -> std::io::Result<T>,
    ) -> FsResult<T> {
        let node = self.node(ino)?;
        let parent = node.parent;
        let sfn = self.read_entry(node.pos)?.fatfs_short_bytes();
        let path = self.sfn_path(parent)?;
        self.chains.clear();
        let fs = &self.check_writable()?.0;
        let d = fatfs_dir(fs, &path)?;
        let e = fatfs_child(&d, &sfn)?;
        if e.is_dir() {
            return Err(FsError::new(libc::EISDIR, "is a directory"));
        }
        let mut f = e.to_file();
        let r = op(&mut f).map_err(io_err(what));
        drop(f);
        r
    }

    fn remove(&mut self, dir: Ino, name: &[u8], want_dir: bool) -> FsResult<()> {
        self.check_writable()?;
        let e = self
            .find(dir, name)?
            .ok_or_else(|| FsError::new(libc::ENOENT, "no such entry"))?;
        if e.is_dir() != want_dir {
            return Err(if want_dir {
                einval_not_dir()
            } else {
                FsError::new(libc::EISDIR, "is a directory")
            });
        }
        if want_dir {
            let inside =
                raw::read_dir(&self.geo, &mut self.cache.lock(), DirLoc::Chain(e.cluster))?;
            if inside.iter().any(|x| !x.is_dot()) {
                return Err(FsError::new(libc::ENOTEMPTY, "directory not empty"));
            }
        }
        self.chains.clear();
        {
            let mut c = self.cache.lock();
            raw::delete_slots(&mut c, &e)?;
            if e.cluster >= 2 {
                self.geo.free_chain(&mut c, e.cluster)?;
            }
        }
        self.forget(e.pos);
        self.touch_dir(dir)
    }

    fn is_ancestor(&self, a: Ino, mut b: Ino) -> FsResult<bool> {
        loop {
            if a == b {
                return Ok(true);
            }
            if b == ROOT {
                return Ok(false);
            }
            b = self.node(b)?.parent;
        }
    }

    fn file_size_zeros(f: &mut fatfs::File<'_, Disk>, from: u64, to: u64) -> std::io::Result<()> {
        f.seek(SeekFrom::Start(from))?;
        let zeros = vec![0u8; 64 * 1024];
        let mut at = from;
        while at < to {
            let n = (to - at).min(zeros.len() as u64) as usize;
            f.write_all(&zeros[..n])?;
            at += n as u64;
        }
        Ok(())
    }
}

impl GuestFs for FatFs {
    fn fs_type(&self) -> &'static str {
        "vfat"
    }

    fn root(&self) -> Ino {
        ROOT
    }

    fn lookup(&mut self, dir: Ino, name: &[u8]) -> FsResult<Ino> {
        match self.find(dir, name)? {
            Some(e) => Ok(self.ino_at(dir, e.pos)),
            None => Err(FsError::new(libc::ENOENT, "no such entry")),
        }
    }

    fn stat(&mut self, ino: Ino) -> FsResult<Stat> {
        let e = self.entry(ino)?;
        let cs = self.geo.cluster_size;
        let is_dir = e.as_ref().is_none_or(|e| e.is_dir());
        let (size, nlink) = if is_dir {
            let loc = self.dir_loc(ino)?;
            let size = match loc {
                DirLoc::FixedRoot => self.geo.root_len,
                DirLoc::Chain(c) => self.chain(c)?.len() as u64 * cs,
            };
            let mut c = self.cache.lock();
            let subdirs = raw::read_dir(&self.geo, &mut c, loc)?
                .iter()
                .filter(|x| x.is_dir())
                .count() as u32;
            (size, if ino == ROOT { subdirs + 2 } else { subdirs })
        } else {
            (e.as_ref().map_or(0, |e| e.size as u64), 1)
        };
        let (mtime, atime) = match &e {
            None => (Timespec::default(), Timespec::default()),
            Some(e) => (
                raw::fat_to_unix(e.mdate, e.mtime, 0),
                raw::fat_to_unix(e.adate, 0, 0),
            ),
        };
        Ok(Stat {
            ino,
            kind: if is_dir {
                FileKind::Directory
            } else {
                FileKind::Regular
            },
            mode: self.mode_of(e.as_ref()),
            nlink,
            uid: 0,
            gid: 0,
            size,
            blocks: size.div_ceil(cs) * cs / 512,
            atime,
            mtime,
            ctime: mtime,
            rdev: 0,
            blksize: cs as u32,
        })
    }

    fn readdir(&mut self, dir: Ino) -> FsResult<Vec<DirEntry>> {
        let entries = self.list(dir)?;
        Ok(entries
            .into_iter()
            .map(|e| DirEntry {
                name: e.name(),
                ino: self.ino_at(dir, e.pos),
                kind: if e.is_dir() {
                    FileKind::Directory
                } else {
                    FileKind::Regular
                },
            })
            .collect())
    }

    fn read(&mut self, ino: Ino, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let e = self
            .entry(ino)?
            .ok_or_else(|| FsError::new(libc::EISDIR, "is a directory"))?;
        if e.is_dir() {
            return Err(FsError::new(libc::EISDIR, "is a directory"));
        }
        let size = e.size as u64;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let n = ((size - offset) as usize).min(buf.len());
        let chain = self.chain(e.cluster)?;
        let cs = self.geo.cluster_size;
        let mut done = 0usize;
        let mut c = self.cache.lock();
        while done < n {
            let at = offset + done as u64;
            let idx = (at / cs) as usize;
            let first = *chain.get(idx).ok_or_else(|| {
                FsError::new(
                    libc::EIO,
                    "file is longer than its cluster chain: run fsck.fat",
                )
            })?;
            // Extend over clusters that follow each other on disk: one read for the run.
            let mut last = idx;
            while last + 1 < chain.len()
                && chain[last + 1] == chain[last] + 1
                && ((last + 1 - idx) as u64 * cs) < (n - done) as u64 + at % cs
            {
                last += 1;
            }
            let run_end = (last as u64 + 1) * cs;
            let len = ((run_end - at) as usize).min(n - done);
            let dev_at = self.geo.cluster_offset(first) + at % cs;
            c.read(dev_at, &mut buf[done..done + len])?;
            done += len;
        }
        Ok(n)
    }

    fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        if offset + data.len() as u64 > MAX_FILE {
            return Err(FsError::new(libc::EFBIG, "FAT files end at 4 GiB - 1"));
        }
        if data.is_empty() {
            return Ok(());
        }
        self.fatfs_file_op(ino, "writing a FAT file", |f| {
            let size = f.seek(SeekFrom::End(0))?;
            if offset > size {
                // FAT has no holes: the gap is written as zeros.
                FatFs::file_size_zeros(f, size, offset)?;
            }
            f.seek(SeekFrom::Start(offset))?;
            f.write_all(data)
        })
    }

    fn truncate(&mut self, ino: Ino, size: u64) -> FsResult<()> {
        self.check_writable()?;
        if size > MAX_FILE {
            return Err(FsError::new(libc::EFBIG, "FAT files end at 4 GiB - 1"));
        }
        let e = self
            .entry(ino)?
            .ok_or_else(|| FsError::new(libc::EISDIR, "is a directory"))?;
        if e.is_dir() {
            return Err(FsError::new(libc::EISDIR, "is a directory"));
        }
        let old = e.size as u64;
        self.fatfs_file_op(ino, "truncating a FAT file", |f| {
            if size <= old {
                f.seek(SeekFrom::Start(size))?;
                f.truncate()
            } else {
                let r = FatFs::file_size_zeros(f, old, size);
                if r.is_err() {
                    // Linux leaves the size as it was when extending fails.
                    f.seek(SeekFrom::Start(old))?;
                    f.truncate()?;
                }
                r
            }
        })?;
        if size != old || e.cluster != 0 {
            let mut e = self.read_entry(e.pos)?;
            let (d, t, _) = raw::unix_to_fat(Timespec::now());
            e.mdate = d;
            e.mtime = t;
            self.write_entry(&e)?;
        }
        Ok(())
    }

    fn create(&mut self, dir: Ino, name: &[u8], _mode: u32, _owner: Owner) -> FsResult<Ino> {
        self.check_writable()?;
        if self.find(dir, name)?.is_some() {
            return Err(FsError::new(libc::EEXIST, "entry exists"));
        }
        let (name, units) = raw::check_new_name(name)?;
        self.chains.clear();
        let e = self.add_entry(dir, &name, &units, false)?;
        self.touch_dir(dir)?;
        Ok(self.ino_at(dir, e.pos))
    }

    fn mkdir(&mut self, dir: Ino, name: &[u8], _mode: u32, _owner: Owner) -> FsResult<Ino> {
        self.check_writable()?;
        if self.find(dir, name)?.is_some() {
            return Err(FsError::new(libc::EEXIST, "entry exists"));
        }
        let (name, units) = raw::check_new_name(name)?;
        let parent_cluster = self.dotdot_cluster(dir)?;
        self.chains.clear();
        let e = self.add_entry(dir, &name, &units, true)?;
        self.fix_dots(&e, parent_cluster)?;
        self.touch_dir(dir)?;
        Ok(self.ino_at(dir, e.pos))
    }

    fn symlink(&mut self, _: Ino, _: &[u8], _: &[u8], _: Owner) -> FsResult<Ino> {
        self.check_writable()?;
        Err(FsError::new(libc::EPERM, "FAT has no symbolic links"))
    }

    fn link(&mut self, _: Ino, _: Ino, _: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        Err(FsError::new(libc::EPERM, "FAT has no hard links"))
    }

    fn unlink(&mut self, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.remove(dir, name, false)
    }

    fn rmdir(&mut self, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.remove(dir, name, true)
    }

    fn rename(&mut self, from_dir: Ino, from: &[u8], to_dir: Ino, to: &[u8]) -> FsResult<()> {
        self.check_writable()?;
        let src = self
            .find(from_dir, from)?
            .ok_or_else(|| FsError::new(libc::ENOENT, "no such entry"))?;
        if self.dir_loc(to_dir).is_err() {
            return Err(einval_not_dir());
        }
        let src_ino = self.ino_at(from_dir, src.pos);
        let dst = self.find(to_dir, to)?;
        if let Some(d) = &dst {
            if d.pos == src.pos {
                // Same entry (a case-only rename): Linux does nothing either.
                return Ok(());
            }
        }
        if src.is_dir() && self.is_ancestor(src_ino, to_dir)? {
            return Err(FsError::new(
                libc::EINVAL,
                "cannot move a directory into itself",
            ));
        }
        self.chains.clear();
        let moved_dir = src.is_dir() && from_dir != to_dir;
        let new_parent_cluster = self.dotdot_cluster(to_dir)?;
        let new_pos;
        match dst {
            Some(mut d) => {
                match (src.is_dir(), d.is_dir()) {
                    (true, false) => return Err(einval_not_dir()),
                    (false, true) => return Err(FsError::new(libc::EISDIR, "is a directory")),
                    (true, true) => {
                        let inside = raw::read_dir(
                            &self.geo,
                            &mut self.cache.lock(),
                            DirLoc::Chain(d.cluster),
                        )?;
                        if inside.iter().any(|x| !x.is_dot()) {
                            return Err(FsError::new(libc::ENOTEMPTY, "directory not empty"));
                        }
                    }
                    _ => {}
                }
                // Linux's way: the moved inode takes over the target's slot, name and all.
                let old_cluster = d.cluster;
                d.attr = src.attr;
                d.ctime_cs = src.ctime_cs;
                d.ctime = src.ctime;
                d.cdate = src.cdate;
                d.adate = src.adate;
                d.mtime = src.mtime;
                d.mdate = src.mdate;
                d.cluster = src.cluster;
                d.size = src.size;
                {
                    let mut c = self.cache.lock();
                    c.write(d.pos, &d.encode(self.geo.kind))?;
                    raw::delete_slots(&mut c, &src)?;
                    if old_cluster >= 2 {
                        self.geo.free_chain(&mut c, old_cluster)?;
                    }
                }
                self.forget(d.pos);
                new_pos = d.pos;
            }
            None => {
                let (name, units) = raw::check_new_name(to)?;
                let mut n = self.add_entry(to_dir, &name, &units, false)?;
                n.attr = src.attr;
                n.ctime_cs = src.ctime_cs;
                n.ctime = src.ctime;
                n.cdate = src.cdate;
                n.adate = src.adate;
                n.mtime = src.mtime;
                n.mdate = src.mdate;
                n.cluster = src.cluster;
                n.size = src.size;
                {
                    let mut c = self.cache.lock();
                    c.write(n.pos, &n.encode(self.geo.kind))?;
                    raw::delete_slots(&mut c, &src)?;
                }
                self.touch_dir(to_dir)?;
                new_pos = n.pos;
            }
        }
        if moved_dir {
            let moved = self.read_entry(new_pos)?;
            self.set_dotdot(&moved, new_parent_cluster)?;
        }
        self.by_pos.remove(&src.pos);
        self.by_pos.insert(new_pos, src_ino);
        if let Some(n) = self.nodes.get_mut(&src_ino) {
            n.pos = new_pos;
            n.parent = to_dir;
        }
        self.touch_dir(from_dir)
    }

    fn readlink(&mut self, ino: Ino) -> FsResult<Vec<u8>> {
        self.node(ino)?;
        Err(FsError::new(libc::EINVAL, "not a symbolic link"))
    }

    fn setattr(&mut self, ino: Ino, attr: &SetAttr) -> FsResult<()> {
        self.check_writable()?;
        self.node(ino)?;
        // fs/fat/file.c fat_setattr: another owner, or set-id/sticky bits, is EPERM ...
        if attr.uid.is_some_and(|u| u != 0) || attr.gid.is_some_and(|g| g != 0) {
            return Err(FsError::new(
                libc::EPERM,
                "FAT stores no owner: only 0:0 can be set",
            ));
        }
        if attr.mode.is_some_and(|m| m & !0o777 != 0) {
            return Err(FsError::new(
                libc::EPERM,
                "FAT cannot store set-id or sticky bits",
            ));
        }
        let Some(mut e) = self.entry(ino)? else {
            // The root has no entry: Linux keeps nothing of a change to it.
            return Ok(());
        };
        let mut ro = e.attr & ATTR_RO != 0 && !e.is_dir();
        if let Some(m) = attr.mode {
            // ... and fat_sanitize_mode_change quietly drops what FAT cannot hold: all of
            // r and x must stay, w is all (of the mask) or, for a file, none.
            let perm = m & !MASK;
            let w = perm & 0o222;
            if perm & 0o555 == 0o555 {
                if e.is_dir() {
                    // A directory cannot hold the read-only bit (no `rodir`).
                } else if w == 0 {
                    ro = true;
                } else if w == 0o222 & !MASK {
                    ro = false;
                }
            }
        }
        e.attr =
            (e.attr & 0x2E) | if e.is_dir() { ATTR_DIR } else { 0 } | if ro { ATTR_RO } else { 0 };
        if let Some(t) = attr.mtime {
            let (d, tm, _) = raw::unix_to_fat(t);
            e.mdate = d;
            e.mtime = tm;
        }
        if let Some(t) = attr.atime {
            e.adate = raw::unix_to_fat(t).0;
        }
        self.write_entry(&e)
    }

    fn statvfs(&mut self) -> FsResult<StatVfs> {
        let free = self.geo.free_clusters(&mut self.cache.lock())? as u64;
        Ok(StatVfs {
            bsize: self.geo.cluster_size,
            frsize: self.geo.cluster_size,
            blocks: self.geo.clusters as u64,
            bfree: free,
            bavail: free,
            files: 0,
            ffree: 0,
            favail: 0,
            fsid: self.geo.volume_id as u64,
            flag: ST_RELATIME | if self.read_only { ST_RDONLY } else { 0 },
            namemax: NAMEMAX,
        })
    }

    fn used_blocks(&mut self) -> FsResult<Vec<(u64, u64)>> {
        self.geo.used_ranges(&mut self.cache.lock())
    }

    fn sync(&mut self) -> FsResult<()> {
        if self.read_only {
            return Ok(());
        }
        if let Some(m) = self.fs.take() {
            // Unmounting writes FSInfo and clears the dirty flag; mounting again is cheap.
            m.0.unmount()
                .map_err(io_err("writing the FAT filesystem back"))?;
        }
        {
            let mut c = self.cache.lock();
            self.geo.write_fs_info(&mut c)?;
            c.write_back()?;
        }
        self.fs = Some(mount(&self.cache)?);
        Ok(())
    }

    fn close(mut self: Box<Self>) -> FsResult<()> {
        self.sync()?;
        if let Some(m) = self.fs.take() {
            drop(m);
            // fatfs's drop only rewrites what sync just wrote; nothing new to write back.
            self.cache.lock().write_back()?;
        }
        self.cache.lock().clear();
        Ok(())
    }
}
