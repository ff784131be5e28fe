//! The `fuser::Filesystem` implementation: kernel requests onto the store.
//!
//! Directories are listed from the repository on every lookup and opendir (cheap: the
//! metadata files, plus partition tables cached in `disks.rs`), so volumes created or removed
//! while mounted appear and disappear. Reads and writes go straight to the `Disk` of the
//! file handle, offset by the partition start and clipped at its end; no lock is held while
//! data moves except the read lock on the handle table to find the handle.
//! Errors are replied with the store error's errno; nothing here panics on a request.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock};

use super::disks::{Disk, Disks, Stamp};
use super::tree::{self, FileKey, Inodes, Kind, Node};
use crate::store::{Repository, StoreError};

/// How long the kernel may cache names and attributes. Short, because volumes come and go
/// behind its back.
const TTL: Duration = Duration::from_secs(1);
/// Largest single read or write the kernel sends us.
pub(crate) const MAX_IO: u32 = 1 << 20;

fn errno(e: &StoreError) -> Errno {
    Errno::from_i32(e.errno())
}

/// An open file: the disk, the byte range of it the file shows, and whether it was written
/// through (then a whole-disk file may have changed the partition table).
struct Handle {
    key: FileKey,
    disk: Disk,
    start: u64,
    len: u64,
    writable: bool,
    wrote: AtomicBool,
}

impl Handle {
    /// The part of `[offset, offset + len)` inside the file, as a disk offset and length.
    fn clip(&self, offset: u64, len: usize) -> Option<(u64, usize)> {
        if offset >= self.len {
            return None;
        }
        let n = (len as u64).min(self.len - offset) as usize;
        Some((self.start + offset, n))
    }
}

type Listing = Arc<Vec<(u64, FileType, String)>>;

pub(crate) struct StrataFs {
    repo: Arc<Repository>,
    disks: Arc<Disks>,
    inodes: Inodes,
    read_only: bool,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    dirs: Mutex<HashMap<u64, Listing>>,
    next_fh: AtomicU64,
    uid: u32,
    gid: u32,
    mounted_at: SystemTime,
}

impl StrataFs {
    pub(crate) fn new(repo: Arc<Repository>, disks: Arc<Disks>, read_only: bool) -> StrataFs {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        StrataFs {
            repo,
            disks,
            inodes: Inodes::default(),
            read_only,
            handles: RwLock::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            uid,
            gid,
            mounted_at: SystemTime::now(),
        }
    }

    /// The stamp of disk `name`, or `None` if it does not exist.
    fn stamp(&self, kind: Kind, name: &str) -> Result<Option<Stamp>, StoreError> {
        let r = match kind {
            Kind::Volume => self.repo.volume_meta(name).map(|m| (m.created, m.size)),
            Kind::Image => self
                .repo
                .image_meta(name)
                .map(|m| (m.created, m.virtual_size)),
        };
        match r {
            Ok(s) => Ok(Some(s)),
            Err(StoreError::NotFound { .. } | StoreError::InvalidName { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Finds file `key`: its byte range on the disk and the disk's stamp.
    fn locate(&self, key: &FileKey) -> Result<Option<(u64, u64, Stamp)>, StoreError> {
        let Some(stamp) = self.stamp(key.kind, &key.name)? else {
            return Ok(None);
        };
        if key.part == 0 {
            return Ok(Some((0, stamp.1, stamp)));
        }
        let parts = self.disks.partitions(key.kind, &key.name, stamp);
        Ok(parts
            .iter()
            .find(|p| p.number == key.part)
            .map(|p| (p.start, p.len, stamp)))
    }

    /// Resolves a directory entry name to a file key and its size.
    fn resolve(&self, kind: Kind, name: &str) -> Result<Option<(FileKey, u64, Stamp)>, StoreError> {
        for key in tree::candidates(kind, name) {
            if let Some((_, len, stamp)) = self.locate(&key)? {
                return Ok(Some((key, len, stamp)));
            }
        }
        Ok(None)
    }

    /// Every file of a directory, whole disks followed by their partitions.
    fn list(&self, kind: Kind) -> Result<Vec<(FileKey, u64, Stamp)>, StoreError> {
        let disks: Vec<(String, Stamp)> = match kind {
            Kind::Volume => self
                .repo
                .list_volumes()?
                .into_iter()
                .map(|m| (m.name, (m.created, m.size)))
                .collect(),
            Kind::Image => self
                .repo
                .list_images()?
                .into_iter()
                .map(|m| (m.name, (m.created, m.virtual_size)))
                .collect(),
        };
        self.disks
            .retain_tables(kind, &|n| disks.iter().any(|(d, _)| d == n));
        let mut out = Vec::new();
        for (name, stamp) in disks {
            let parts = self.disks.partitions(kind, &name, stamp);
            out.push((
                FileKey {
                    kind,
                    name: name.clone(),
                    part: 0,
                },
                stamp.1,
                stamp,
            ));
            for p in parts.iter() {
                out.push((
                    FileKey {
                        kind,
                        name: name.clone(),
                        part: p.number,
                    },
                    p.len,
                    stamp,
                ));
            }
        }
        Ok(out)
    }

    fn dir_attr(&self, ino: u64) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: self.mounted_at,
            mtime: self.mounted_at,
            ctime: self.mounted_at,
            crtime: self.mounted_at,
            kind: FileType::Directory,
            perm: 0o555,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn file_attr(&self, key: &FileKey, size: u64, stamp: Stamp) -> FileAttr {
        let created = UNIX_EPOCH + Duration::from_secs(stamp.0);
        let writable = key.kind == Kind::Volume && !self.read_only;
        FileAttr {
            ino: INodeNo(self.inodes.ino_of(key)),
            size,
            blocks: size.div_ceil(512),
            atime: created,
            mtime: created,
            ctime: created,
            crtime: created,
            kind: FileType::RegularFile,
            perm: if writable { 0o644 } else { 0o444 },
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn attr_of(&self, ino: u64) -> Result<FileAttr, Errno> {
        match self.inodes.node(ino) {
            None => Err(Errno::ENOENT),
            Some(Node::Root) | Some(Node::Dir(_)) => Ok(self.dir_attr(ino)),
            Some(Node::File(key)) => match self.locate(&key) {
                Ok(Some((_, len, stamp))) => Ok(self.file_attr(&key, len, stamp)),
                Ok(None) => Err(Errno::ENOENT),
                Err(e) => Err(errno(&e)),
            },
        }
    }

    fn handle(&self, fh: FileHandle) -> Result<Arc<Handle>, Errno> {
        self.handles.read().get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    fn listing(&self, ino: u64) -> Result<Listing, Errno> {
        let mut out = vec![
            (ino, FileType::Directory, ".".to_string()),
            (tree::ROOT, FileType::Directory, "..".to_string()),
        ];
        match self.inodes.node(ino) {
            Some(Node::Root) => {
                for kind in [Kind::Volume, Kind::Image] {
                    out.push((kind.dir_ino(), FileType::Directory, kind.dir_name().into()));
                }
            }
            Some(Node::Dir(kind)) => {
                for (key, _, _) in self.list(kind).map_err(|e| errno(&e))? {
                    out.push((
                        self.inodes.ino_of(&key),
                        FileType::RegularFile,
                        key.file_name(),
                    ));
                }
            }
            Some(Node::File(_)) => return Err(Errno::ENOTDIR),
            None => return Err(Errno::ENOENT),
        }
        Ok(Arc::new(out))
    }

    /// After writes through a handle: a whole-disk file may have rewritten the table.
    fn note_written(&self, h: &Handle) {
        if h.key.part == 0 && h.wrote.swap(false, Ordering::Relaxed) {
            self.disks.mark_stale(h.key.kind, &h.key.name);
        }
    }
}

impl fuser::Filesystem for StrataFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_IO) {
            let _ = config.set_max_write(max);
        }
        if let Err(max) = config.set_max_readahead(MAX_IO) {
            let _ = config.set_max_readahead(max);
        }
        // Optional: concurrent lookups and async direct I/O, where the kernel offers them.
        for cap in [InitFlags::FUSE_PARALLEL_DIROPS, InitFlags::FUSE_ASYNC_DIO] {
            let _ = config.add_capabilities(cap);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.handles.write().clear();
        self.disks.close_all();
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(name) = name.to_str() else {
            return reply.error(Errno::ENOENT);
        };
        match self.inodes.node(parent.0) {
            Some(Node::Root) => {
                for kind in [Kind::Volume, Kind::Image] {
                    if name == kind.dir_name() {
                        let attr = self.dir_attr(kind.dir_ino());
                        return reply.entry(&TTL, &attr, Generation(0));
                    }
                }
                reply.error(Errno::ENOENT)
            }
            Some(Node::Dir(kind)) => match self.resolve(kind, name) {
                Ok(Some((key, len, stamp))) => {
                    reply.entry(&TTL, &self.file_attr(&key, len, stamp), Generation(0))
                }
                Ok(None) => reply.error(Errno::ENOENT),
                Err(e) => reply.error(errno(&e)),
            },
            Some(Node::File(_)) => reply.error(Errno::ENOTDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Disks have a fixed size: truncation (O_TRUNC, `truncate`) is refused so that a
        // careless `cp` cannot empty a volume. Mode and time changes are accepted and ignored.
        match self.attr_of(ino.0) {
            Ok(a) if size.is_none_or(|s| s == a.size) => reply.attr(&TTL, &a),
            Ok(_) => reply.error(Errno::EPERM),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let key = match self.inodes.node(ino.0) {
            Some(Node::File(key)) => key,
            Some(_) => return reply.error(Errno::EISDIR),
            None => return reply.error(Errno::ENOENT),
        };
        let writable = flags.acc_mode() != OpenAccMode::O_RDONLY;
        if writable && (self.read_only || key.kind == Kind::Image) {
            return reply.error(Errno::EROFS);
        }
        let (start, len) = match self.locate(&key) {
            Ok(Some((start, len, _))) => (start, len),
            Ok(None) => return reply.error(Errno::ENOENT),
            Err(e) => return reply.error(errno(&e)),
        };
        let disk = match self.disks.acquire(key.kind, &key.name) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(file = %key.file_name(), error = %e, "open failed");
                return reply.error(errno(&e));
            }
        };
        if start.checked_add(len).is_none_or(|end| end > disk.len()) {
            // The table changed under us; refuse rather than serve a wrong range.
            let _ = self.disks.release(key.kind, &key.name);
            return reply.error(Errno::ESTALE);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let h = Handle {
            key,
            disk,
            start,
            len,
            writable,
            wrote: AtomicBool::new(false),
        };
        self.handles.write().insert(fh, Arc::new(h));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let Some((at, n)) = h.clip(offset, size.min(MAX_IO) as usize) else {
            return reply.data(&[]);
        };
        // Recycled, not zeroed: read_at overwrites all of it (store/buf.rs).
        let mut buf = crate::store::ReadBuf::new(n);
        match h.disk.read_at(&mut buf, at) {
            Ok(()) => reply.data(&buf),
            Err(e) => {
                tracing::error!(file = %h.key.file_name(), offset, error = %e, "read failed");
                reply.error(errno(&e))
            }
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        if !h.writable {
            return reply.error(Errno::EBADF);
        }
        // A disk cannot grow: writing at or past its end is out of space, as on a block device.
        let Some((at, n)) = h.clip(offset, data.len()) else {
            return reply.error(if data.is_empty() {
                Errno::EINVAL
            } else {
                Errno::ENOSPC
            });
        };
        match h.disk.write_at(&data[..n], at) {
            Ok(()) => {
                h.wrote.store(true, Ordering::Relaxed);
                reply.written(n as u32)
            }
            Err(e) => {
                tracing::error!(file = %h.key.file_name(), offset, error = %e, "write failed");
                reply.error(errno(&e))
            }
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        if !h.writable {
            return reply.error(Errno::EBADF);
        }
        let end = offset.checked_add(length).filter(|&e| e <= h.len);
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        match (mode, end) {
            // Allocation inside the disk: every byte already exists.
            (0, Some(_)) | (libc::FALLOC_FL_KEEP_SIZE, Some(_)) => reply.ok(),
            (0, None) => reply.error(Errno::EFBIG),
            // Hole punching (fstrim through a loop device, `fallocate -p`): a discard.
            (m, _) if m == punch => {
                let Some((at, n)) = h.clip(offset, length.min(h.len) as usize) else {
                    return reply.ok();
                };
                match h.disk.discard(at, n as u64) {
                    Ok(()) => {
                        h.wrote.store(true, Ordering::Relaxed);
                        reply.ok()
                    }
                    Err(e) => reply.error(errno(&e)),
                }
            }
            _ => reply.error(Errno::EOPNOTSUPP),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.fsync_handle(fh, reply)
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        self.fsync_handle(fh, reply)
    }

    /// These are plain files: block-device ioctls (which `mount -o loop`, e2fsck and
    /// friends probe with) are answered "not a tty" so the callers fall back quietly.
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY)
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let Some(h) = self.handles.write().remove(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        self.note_written(&h);
        let key = h.key.clone();
        drop(h);
        match self.disks.release(key.kind, &key.name) {
            Ok(()) => reply.ok(),
            Err(e) => {
                tracing::error!(file = %key.file_name(), error = %e, "flush on close failed");
                reply.error(errno(&e))
            }
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // The listing is taken once per opendir so that offsets stay meaningful while
        // volumes come and go during a long readdir.
        match self.listing(ino.0) {
            Ok(l) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs.lock().insert(fh, l);
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(listing) = self.dirs.lock().get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in listing.iter().enumerate().skip(skip) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.lock().remove(&fh.0);
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        reply.statfs(0, 0, 0, 0, 0, 4096, 255, 4096)
    }
}

impl StrataFs {
    fn fsync_handle(&self, fh: FileHandle, reply: ReplyEmpty) {
        let h = match self.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        self.note_written(&h);
        match h.disk.flush() {
            Ok(()) => reply.ok(),
            Err(e) => {
                tracing::error!(file = %h.key.file_name(), error = %e, "flush failed");
                reply.error(errno(&e))
            }
        }
    }
}
