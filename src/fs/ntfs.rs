//! NTFS through libntfs-3g: the `GuestFs` adapter, its device glue, and the volume label.
//!
//! What this file owns: the Rust half of the bridge to `ntfs_shim.c`. The shim gives
//! libntfs-3g a device whose reads and writes come back here (`DevCtx`, over any
//! `SharedDevice`), and one C function per operation; this side validates names, turns raw
//! results into `Stat`/`DirEntry`/`FsError`, and composes rename (link + delete, the way
//! ntfs-3g's FUSE driver does it). Semantics are ntfs-3g's as `mount -t ntfs-3g` gives
//! them with default options: no user mapping (every inode mode 0777, owned by root;
//! chmod and chown accepted and ignored, as ntfs-3g's default `silent` option does),
//! case-sensitive names, metafiles hidden from listings, relatime. Inode numbers are MFT
//! record numbers; the root is 5.
//!
//! What it must not do: write the device when opened read-only, or let a panic cross
//! into C (the callbacks catch them).

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{
    DirEntry, FileKind, FsError, FsResult, GuestFs, Ino, OpenOptions, Owner, SetAttr, Stat,
    StatVfs, Timespec,
};
use crate::store::device::SharedDevice;

/// MFT record number of the root directory (`FILE_root`).
pub const ROOT_INO: Ino = 5;

/// `st_blksize` a FUSE mount of a file image reports (not fuseblk): the page size.
const BLKSIZE: u32 = 4096;

/// Longest name NTFS stores, in UTF-16 units; in UTF-8 bytes at most four per two units,
/// so anything longer than this many bytes is refused before it reaches C.
const NAME_MAX_UNITS: usize = 255;
const NAME_MAX_BYTES: usize = NAME_MAX_UNITS * 3;

/// Linux's limit on a symlink target (PATH_MAX, with the NUL).
const SYMLINK_MAX: usize = 4095;

/// 100 ns intervals between 1601-01-01 (NTFS's epoch) and 1970-01-01.
const NTFS_EPOCH_OFFSET: i64 = 116_444_736_000_000_000;

/// statvfs `f_flag` bits (ST_RDONLY, ST_RELATIME), as a default ntfs-3g mount shows them.
const ST_RDONLY: u64 = 1;
const ST_RELATIME: u64 = 4096;

/// `dt_type` values libntfs-3g gives readdir (NTFS_DT_* in dir.h).
const DT_FIFO: u32 = 1;
const DT_CHR: u32 = 2;
const DT_DIR: u32 = 4;
const DT_BLK: u32 = 6;
const DT_LNK: u32 = 10;
const DT_SOCK: u32 = 12;
const DT_REPARSE: u32 = 32;

/// libntfs-3g log levels (NTFS_LOG_LEVEL_* in logging.h) the sink tells apart.
const LOG_INFO: u32 = 1 << 3;
const LOG_WARNING: u32 = 1 << 6;
const LOG_ERROR_MASK: u32 = (1 << 7) | (1 << 8);
const LOG_CRITICAL: u32 = 1 << 9;

/// How many parent links a rename follows looking for a loop before calling the
/// directory tree damaged.
const MAX_DEPTH: usize = 65_536;

// ---- the C side (ntfs_shim.c) ----

#[repr(C)]
struct Io {
    ctx: *mut c_void,
    pread: extern "C" fn(*mut c_void, *mut c_void, i64, i64) -> i64,
    pwrite: extern "C" fn(*mut c_void, *const c_void, i64, i64) -> i64,
    size: extern "C" fn(*mut c_void) -> i64,
    sync: extern "C" fn(*mut c_void) -> c_int,
}

#[repr(C)]
#[derive(Default)]
struct RawStat {
    ino: u64,
    mode: u32,
    nlink: u32,
    size: u64,
    blocks: u64,
    atime: i64,
    mtime: i64,
    ctime: i64,
    rdev_major: u32,
    rdev_minor: u32,
}

#[repr(C)]
#[derive(Default)]
struct RawVfs {
    cluster_size: u64,
    nr_clusters: u64,
    free_clusters: u64,
    files: u64,
    ffree: u64,
    sector_size: u64,
}

/// The shim's `struct strata_ntfs` (opaque).
#[repr(C)]
struct Handle {
    _private: [u8; 0],
}

type DirentCb = extern "C" fn(*mut c_void, *const c_char, usize, u64, u32) -> c_int;

extern "C" {
    fn strata_ntfs_set_logger(sink: extern "C" fn(u32, *const c_char));
    fn strata_ntfs_free(p: *mut c_void);
    fn strata_ntfs_mount(io: *const Io, read_only: c_int, out: *mut *mut Handle) -> c_int;
    fn strata_ntfs_sync(h: *mut Handle) -> c_int;
    fn strata_ntfs_umount(h: *mut Handle) -> c_int;
    fn strata_ntfs_label(h: *mut Handle) -> *mut c_char;
    fn strata_ntfs_statvfs(h: *mut Handle, out: *mut RawVfs) -> c_int;
    fn strata_ntfs_read_bitmap(h: *mut Handle, offset: u64, buf: *mut c_void, len: usize) -> i64;
    fn strata_ntfs_lookup(h: *mut Handle, dir: u64, name: *const c_char, ino: *mut u64) -> c_int;
    fn strata_ntfs_stat(h: *mut Handle, ino: u64, st: *mut RawStat) -> c_int;
    fn strata_ntfs_parent(h: *mut Handle, ino: u64, parent: *mut u64) -> c_int;
    fn strata_ntfs_readdir(h: *mut Handle, dir: u64, cb: DirentCb, ctx: *mut c_void) -> c_int;
    fn strata_ntfs_read(
        h: *mut Handle,
        ino: u64,
        offset: u64,
        buf: *mut c_void,
        len: usize,
        got: *mut usize,
    ) -> c_int;
    fn strata_ntfs_write(
        h: *mut Handle,
        ino: u64,
        offset: u64,
        buf: *const c_void,
        len: usize,
        done: *mut usize,
    ) -> c_int;
    fn strata_ntfs_truncate(h: *mut Handle, ino: u64, size: u64) -> c_int;
    fn strata_ntfs_create(
        h: *mut Handle,
        dir: u64,
        name: *const c_char,
        kind: c_int,
        target: *const c_char,
        ino: *mut u64,
    ) -> c_int;
    fn strata_ntfs_link(
        h: *mut Handle,
        ino: u64,
        dir: u64,
        name: *const c_char,
        allow_dir: c_int,
    ) -> c_int;
    fn strata_ntfs_remove(h: *mut Handle, dir: u64, name: *const c_char, want: c_int) -> c_int;
    fn strata_ntfs_dir_is_empty(h: *mut Handle, ino: u64) -> c_int;
    fn strata_ntfs_readlink(
        h: *mut Handle,
        ino: u64,
        out: *mut *mut c_char,
        len: *mut usize,
    ) -> c_int;
    fn strata_ntfs_set_times(
        h: *mut Handle,
        ino: u64,
        set_atime: c_int,
        atime: i64,
        set_mtime: c_int,
        mtime: i64,
    ) -> c_int;
}

const KIND_FILE: c_int = 0;
const KIND_DIR: c_int = 1;
const KIND_SYMLINK: c_int = 2;

const WANT_ANY: c_int = 0;
const WANT_NONDIR: c_int = 1;
const WANT_DIR: c_int = 2;

// ---- the device, as libntfs-3g sees it ----

/// What the shim's device callbacks reach: the device, and whether writes may happen.
struct DevCtx {
    dev: SharedDevice,
    read_only: bool,
    /// Set when the filesystem is dropped without `close`: libntfs-3g's unmount writes
    /// back what it holds, and those writes must go nowhere.
    discard_writes: AtomicBool,
}

fn errno_of(e: crate::store::StoreError) -> i64 {
    FsError::from(e).errno as i64
}

extern "C" fn dev_pread(ctx: *mut c_void, buf: *mut c_void, count: i64, offset: i64) -> i64 {
    // SAFETY: ctx is the DevCtx the Ntfs owns, alive until after unmount.
    let ctx = unsafe { &*(ctx as *const DevCtx) };
    if count < 0 || offset < 0 || buf.is_null() {
        return -(libc::EINVAL as i64);
    }
    let len = ctx.dev.len();
    let offset = offset as u64;
    if offset >= len || count == 0 {
        return 0;
    }
    let n = (count as u64).min(len - offset) as usize;
    // SAFETY: libntfs-3g hands a buffer of at least `count` bytes.
    let slice = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, n) };
    match catch_unwind(AssertUnwindSafe(|| ctx.dev.read_at(slice, offset))) {
        Ok(Ok(())) => n as i64,
        Ok(Err(e)) => {
            tracing::warn!("ntfs: reading {} at {offset}: {e}", ctx.dev.describe());
            -errno_of(e)
        }
        Err(_) => -(libc::EIO as i64),
    }
}

extern "C" fn dev_pwrite(ctx: *mut c_void, buf: *const c_void, count: i64, offset: i64) -> i64 {
    // SAFETY: as in dev_pread.
    let ctx = unsafe { &*(ctx as *const DevCtx) };
    if count < 0 || offset < 0 || buf.is_null() {
        return -(libc::EINVAL as i64);
    }
    if ctx.read_only {
        return -(libc::EROFS as i64);
    }
    if ctx.discard_writes.load(Ordering::Relaxed) {
        return count;
    }
    let len = ctx.dev.len();
    let offset = offset as u64;
    if count == 0 {
        return 0;
    }
    if offset >= len {
        return -(libc::ENOSPC as i64);
    }
    let n = (count as u64).min(len - offset) as usize;
    // SAFETY: libntfs-3g hands a buffer of at least `count` bytes.
    let slice = unsafe { std::slice::from_raw_parts(buf as *const u8, n) };
    match catch_unwind(AssertUnwindSafe(|| ctx.dev.write_at(slice, offset))) {
        Ok(Ok(())) => n as i64,
        Ok(Err(e)) => {
            tracing::warn!("ntfs: writing {} at {offset}: {e}", ctx.dev.describe());
            -errno_of(e)
        }
        Err(_) => -(libc::EIO as i64),
    }
}

extern "C" fn dev_size(ctx: *mut c_void) -> i64 {
    // SAFETY: as in dev_pread.
    let ctx = unsafe { &*(ctx as *const DevCtx) };
    ctx.dev.len().min(i64::MAX as u64) as i64
}

extern "C" fn dev_sync(_ctx: *mut c_void) -> c_int {
    // The caller flushes the device (one atomic commit for a volume), not the adapter.
    0
}

// ---- libntfs-3g's log ----

thread_local! {
    /// The last error libntfs-3g logged on this thread: why a mount failed, in its words.
    static LAST_ERROR: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

extern "C" fn log_sink(level: u32, msg: *const c_char) {
    if msg.is_null() {
        return;
    }
    // SAFETY: the shim passes a NUL-terminated buffer valid for this call.
    let msg = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
    let _ = catch_unwind(AssertUnwindSafe(|| {
        if level & LOG_CRITICAL != 0 {
            // "damage may have occurred": worth an operator's eye
            tracing::warn!("libntfs-3g: {msg}");
            LAST_ERROR.with(|l| *l.borrow_mut() = Some(msg.trim().to_string()));
        } else if level & LOG_ERROR_MASK != 0 {
            tracing::debug!("libntfs-3g: {msg}");
            LAST_ERROR.with(|l| *l.borrow_mut() = Some(msg.trim().to_string()));
        } else if level & (LOG_WARNING | LOG_INFO) != 0 {
            tracing::debug!("libntfs-3g: {msg}");
        }
    }));
}

fn install_logger() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: sets a global handler once, before any volume is mounted by this process.
    ONCE.call_once(|| unsafe { strata_ntfs_set_logger(log_sink) });
}

fn take_last_error() -> Option<String> {
    LAST_ERROR.with(|l| l.borrow_mut().take())
}

// ---- conversions ----

/// A name as the shim takes it; EINVAL for what is not one path component.
fn cname(name: &[u8]) -> FsResult<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(FsError::new(
            libc::EINVAL,
            format!("{:?} is not a file name", String::from_utf8_lossy(name)),
        ));
    }
    if name.len() > NAME_MAX_BYTES {
        return Err(FsError::new(
            libc::ENAMETOOLONG,
            format!(
                "a name of {} bytes (NTFS names hold at most {NAME_MAX_UNITS} UTF-16 units)",
                name.len()
            ),
        ));
    }
    CString::new(name).map_err(|_| FsError::new(libc::EINVAL, "a file name with a NUL byte"))
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn ntfs_to_timespec(t: i64) -> Timespec {
    let units = t as i128 - NTFS_EPOCH_OFFSET as i128;
    let sec = units.div_euclid(10_000_000);
    let nsec = (units.rem_euclid(10_000_000) * 100) as u32;
    Timespec {
        sec: sec.clamp(i64::MIN as i128, i64::MAX as i128) as i64,
        nsec,
    }
}

/// NTFS keeps 100 ns units; finer parts are dropped, and times outside its range clamp.
fn timespec_to_ntfs(t: Timespec) -> i64 {
    let units = t.sec as i128 * 10_000_000
        + (t.nsec.min(999_999_999) / 100) as i128
        + NTFS_EPOCH_OFFSET as i128;
    units.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

fn kind_of_dt(dt: u32) -> FileKind {
    match dt {
        DT_DIR => FileKind::Directory,
        DT_LNK => FileKind::Symlink,
        DT_FIFO => FileKind::Fifo,
        DT_SOCK => FileKind::Socket,
        DT_BLK => FileKind::BlockDevice,
        DT_CHR => FileKind::CharDevice,
        // unexpected types show as plain files, as in ntfs-3g
        _ => FileKind::Regular,
    }
}

/// Sorts and merges byte ranges (offset, length), dropping empty ones.
fn merge_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|r| r.1 > 0);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (off, len) in ranges {
        match out.last_mut() {
            Some(last) if off <= last.0 + last.1 => {
                last.1 = last.1.max(off + len - last.0);
            }
            _ => out.push((off, len)),
        }
    }
    out
}

/// Cluster ranges (first, count) whose bits are set in `bitmap`, for clusters
/// `base..base + bits`, appended to `out` (extending a run that ends at `base`).
fn set_runs(bitmap: &[u8], base: u64, bits: u64, out: &mut Vec<(u64, u64)>) {
    let mut i = 0u64;
    while i < bits {
        let byte = bitmap[(i / 8) as usize];
        if byte == 0 && i % 8 == 0 {
            i += 8;
            continue;
        }
        if byte & (1 << (i % 8)) != 0 {
            let lcn = base + i;
            match out.last_mut() {
                Some(last) if last.0 + last.1 == lcn => last.1 += 1,
                _ => out.push((lcn, 1)),
            }
        }
        i += 1;
    }
}

// ---- the adapter ----

/// An NTFS volume opened through libntfs-3g.
pub struct Ntfs {
    h: *mut Handle,
    /// Boxed so its address, which the C side holds, never moves; outlives `h`.
    ctx: Box<DevCtx>,
    read_only: bool,
    label: String,
    rename_seq: u64,
}

// SAFETY: the handle and everything libntfs-3g hangs off it are only touched through
// `&mut self` (one thread at a time); libntfs-3g keeps no thread-bound state per volume.
unsafe impl Send for Ntfs {}

impl Ntfs {
    /// Mounts the NTFS volume on `dev`. Read-write refuses a hibernated or Fast-Startup
    /// volume (EPERM) and an unclean `$LogFile` (EOPNOTSUPP), as ntfs-3g does without
    /// `remove_hiberfile`/`recover`; read-only opens both and never writes a byte.
    pub fn open(dev: SharedDevice, opts: OpenOptions) -> FsResult<Ntfs> {
        install_logger();
        let what = dev.describe();
        if !opts.read_only && dev.is_read_only() {
            return Err(FsError::new(
                libc::EROFS,
                format!("{what} is read-only: open its NTFS filesystem read-only"),
            ));
        }
        let ctx = Box::new(DevCtx {
            dev,
            read_only: opts.read_only,
            discard_writes: AtomicBool::new(false),
        });
        let io = Io {
            ctx: &*ctx as *const DevCtx as *mut c_void,
            pread: dev_pread,
            pwrite: dev_pwrite,
            size: dev_size,
            sync: dev_sync,
        };
        take_last_error();
        let mut h: *mut Handle = std::ptr::null_mut();
        // SAFETY: io and ctx outlive the call; on success the handle keeps io's copy and
        // ctx stays boxed inside the returned Ntfs.
        let r = unsafe { strata_ntfs_mount(&io, opts.read_only as c_int, &mut h) };
        if r < 0 || h.is_null() {
            return Err(mount_error(-r, &what, take_last_error()));
        }
        // SAFETY: h is a mounted handle; the label is malloc'd or NULL.
        let label = unsafe {
            let p = strata_ntfs_label(h);
            if p.is_null() {
                String::new()
            } else {
                let s = CStr::from_ptr(p).to_string_lossy().into_owned();
                strata_ntfs_free(p as *mut c_void);
                s
            }
        };
        Ok(Ntfs {
            h,
            ctx,
            read_only: opts.read_only,
            label,
            rename_seq: 0,
        })
    }

    /// The volume label (from `$Volume`, which `detect` cannot read); empty when none.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The volume label of the NTFS filesystem on `dev`, read through a read-only mount
    /// that writes nothing (for `list-filesystems`-style listings outside a mount).
    pub fn read_label(dev: SharedDevice) -> FsResult<String> {
        let fs = Ntfs::open(dev, OpenOptions { read_only: true })?;
        let label = fs.label.clone();
        Box::new(fs).close()?;
        Ok(label)
    }

    fn writable(&self, what: impl FnOnce() -> String) -> FsResult<()> {
        if self.read_only {
            return Err(FsError::new(
                libc::EROFS,
                format!("{}: the NTFS filesystem is open read-only", what()),
            ));
        }
        Ok(())
    }

    fn handle(&self) -> *mut Handle {
        self.h
    }

    fn raw_stat(&mut self, ino: Ino) -> FsResult<RawStat> {
        let mut st = RawStat::default();
        // SAFETY: h is mounted; st is a valid out-pointer.
        let r = unsafe { strata_ntfs_stat(self.handle(), ino, &mut st) };
        check(r, || format!("stat inode {ino}"))?;
        Ok(st)
    }

    fn kind(&mut self, ino: Ino) -> FsResult<FileKind> {
        let st = self.raw_stat(ino)?;
        Ok(FileKind::from_mode(st.mode).unwrap_or(FileKind::Regular))
    }

    fn parent(&mut self, ino: Ino) -> FsResult<Ino> {
        let mut p = 0u64;
        // SAFETY: h is mounted.
        let r = unsafe { strata_ntfs_parent(self.handle(), ino, &mut p) };
        check(r, || format!("finding the parent of inode {ino}"))?;
        Ok(p)
    }

    fn link_raw(&mut self, ino: Ino, dir: Ino, name: &[u8], allow_dir: bool) -> FsResult<()> {
        let c = cname(name)?;
        // SAFETY: h is mounted; c is NUL-terminated.
        let r =
            unsafe { strata_ntfs_link(self.handle(), ino, dir, c.as_ptr(), allow_dir as c_int) };
        check(r, || {
            format!("link inode {ino} as {:?} in inode {dir}", show(name))
        })
    }

    fn remove_raw(&mut self, dir: Ino, name: &[u8], want: c_int) -> FsResult<()> {
        let c = cname(name)?;
        // SAFETY: h is mounted; c is NUL-terminated.
        let r = unsafe { strata_ntfs_remove(self.handle(), dir, c.as_ptr(), want) };
        check(r, || format!("remove {:?} from inode {dir}", show(name)))
    }

    fn create_raw(
        &mut self,
        dir: Ino,
        name: &[u8],
        kind: c_int,
        target: Option<&CStr>,
    ) -> FsResult<Ino> {
        let c = cname(name)?;
        let mut ino = 0u64;
        let t = target.map_or(std::ptr::null(), |t| t.as_ptr());
        // SAFETY: h is mounted; c and t are NUL-terminated or null (t only for symlinks).
        let r = unsafe { strata_ntfs_create(self.handle(), dir, c.as_ptr(), kind, t, &mut ino) };
        check(r, || format!("create {:?} in inode {dir}", show(name)))?;
        Ok(ino)
    }

    fn lookup_opt(&mut self, dir: Ino, name: &[u8]) -> FsResult<Option<Ino>> {
        match self.lookup(dir, name) {
            Ok(i) => Ok(Some(i)),
            Err(e) if e.errno == libc::ENOENT => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// A name no entry of `dir` has, for the old target while a rename replaces it.
    fn spare_name(&mut self, dir: Ino) -> FsResult<Vec<u8>> {
        loop {
            self.rename_seq += 1;
            let name = format!(".strata-rename-{:010}", self.rename_seq).into_bytes();
            if self.lookup_opt(dir, &name)?.is_none() {
                return Ok(name);
            }
        }
    }

    /// Whether `ino` is `dir` or one of its ancestors.
    fn is_ancestor(&mut self, ino: Ino, mut dir: Ino) -> FsResult<bool> {
        for _ in 0..MAX_DEPTH {
            if dir == ino {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = self.parent(dir)?;
        }
        Err(FsError::new(
            libc::EIO,
            format!("the parents of inode {dir} loop: the directory tree is damaged"),
        ))
    }

    /// The old target was renamed to `spare` in `to_dir`; put it back as `to`.
    fn restore_target(&mut self, target: Ino, to_dir: Ino, spare: &[u8], to: &[u8]) {
        if let Err(e) = self
            .link_raw(target, to_dir, to, true)
            .and_then(|()| self.remove_raw(to_dir, spare, WANT_ANY))
        {
            tracing::error!(
                "ntfs: rename failed and the old {:?} stays as {:?}: {e}",
                show(to),
                show(spare)
            );
        }
    }

    fn umount(&mut self) -> FsResult<()> {
        if self.h.is_null() {
            return Ok(());
        }
        let h = std::mem::replace(&mut self.h, std::ptr::null_mut());
        // SAFETY: h is mounted and not used again.
        let r = unsafe { strata_ntfs_umount(h) };
        check(r, || "unmounting the NTFS filesystem".to_string())
    }
}

impl Drop for Ntfs {
    fn drop(&mut self) {
        if !self.h.is_null() {
            // Abandon unwritten changes: unmount only to free what libntfs-3g holds.
            self.ctx.discard_writes.store(true, Ordering::Relaxed);
            let _ = self.umount();
        }
    }
}

fn check(r: c_int, what: impl FnOnce() -> String) -> FsResult<()> {
    if r < 0 {
        return Err(FsError::new(-r, what()));
    }
    Ok(())
}

/// Why the mount failed, in words an operator can act on.
fn mount_error(errno: i32, what: &str, logged: Option<String>) -> FsError {
    let why = match errno {
        libc::EPERM => format!(
            "{what}: NTFS volume is hibernated or holds Windows Fast Startup state; refusing \
             to open it read-write. Boot Windows and shut it down fully (disable Fast \
             Startup: `powercfg /h off`), or open it read-only"
        ),
        libc::EOPNOTSUPP => format!(
            "{what}: NTFS $LogFile is unclean (Windows did not unmount it cleanly); refusing \
             to open it read-write. Boot Windows and shut it down (or run `chkdsk /f`), or \
             open it read-only"
        ),
        libc::EINVAL => format!("{what}: not an NTFS filesystem (bad boot sector)"),
        libc::EIO => format!("{what}: NTFS filesystem damaged (run chkdsk in Windows)"),
        libc::ENXIO => format!("{what}: NTFS volume is part of a RAID set"),
        libc::EROFS => {
            format!("{what}: the device is read-only: open the NTFS filesystem read-only")
        }
        _ => format!("{what}: cannot mount the NTFS filesystem"),
    };
    let detail = match logged {
        Some(l) if !l.is_empty() => format!("{why} (libntfs-3g: {l})"),
        _ => why,
    };
    FsError::new(errno, detail)
}

extern "C" fn dirent_cb(
    ctx: *mut c_void,
    name: *const c_char,
    len: usize,
    ino: u64,
    dt: u32,
) -> c_int {
    if ctx.is_null() || name.is_null() {
        return -1;
    }
    // SAFETY: ctx is the Vec readdir passed; name points at `len` bytes for this call.
    let out = unsafe { &mut *(ctx as *mut Vec<(Vec<u8>, u64, u32)>) };
    let name = unsafe { std::slice::from_raw_parts(name as *const u8, len) };
    match catch_unwind(AssertUnwindSafe(|| out.push((name.to_vec(), ino, dt)))) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

impl GuestFs for Ntfs {
    fn label(&mut self) -> Option<String> {
        Some(Ntfs::label(self).to_string())
    }

    fn fs_type(&self) -> &'static str {
        "ntfs"
    }

    fn root(&self) -> Ino {
        ROOT_INO
    }

    fn lookup(&mut self, dir: Ino, name: &[u8]) -> FsResult<Ino> {
        let c = cname(name)?;
        let mut ino = 0u64;
        // SAFETY: h is mounted; c is NUL-terminated.
        let r = unsafe { strata_ntfs_lookup(self.handle(), dir, c.as_ptr(), &mut ino) };
        check(r, || format!("lookup {:?} in inode {dir}", show(name)))?;
        Ok(ino)
    }

    fn stat(&mut self, ino: Ino) -> FsResult<Stat> {
        let st = self.raw_stat(ino)?;
        let kind = FileKind::from_mode(st.mode).unwrap_or(FileKind::Regular);
        let rdev = match kind {
            FileKind::CharDevice | FileKind::BlockDevice => {
                libc::makedev(st.rdev_major, st.rdev_minor)
            }
            _ => 0,
        };
        Ok(Stat {
            ino: st.ino,
            kind,
            mode: st.mode,
            nlink: st.nlink,
            uid: 0,
            gid: 0,
            size: st.size,
            blocks: st.blocks,
            atime: ntfs_to_timespec(st.atime),
            mtime: ntfs_to_timespec(st.mtime),
            ctime: ntfs_to_timespec(st.ctime),
            rdev,
            blksize: BLKSIZE,
        })
    }

    fn readdir(&mut self, dir: Ino) -> FsResult<Vec<DirEntry>> {
        let mut raw: Vec<(Vec<u8>, u64, u32)> = Vec::new();
        // SAFETY: h is mounted; the callback only pushes into `raw` during the call.
        let r = unsafe {
            strata_ntfs_readdir(
                self.handle(),
                dir,
                dirent_cb,
                &mut raw as *mut Vec<(Vec<u8>, u64, u32)> as *mut c_void,
            )
        };
        check(r, || format!("readdir inode {dir}"))?;
        let mut out = Vec::with_capacity(raw.len());
        for (name, ino, dt) in raw {
            let kind = if dt == DT_REPARSE {
                // what the reparse point emulates, as ntfs-3g asks its plugins
                self.kind(ino).unwrap_or(FileKind::Symlink)
            } else {
                kind_of_dt(dt)
            };
            out.push(DirEntry { name, ino, kind });
        }
        Ok(out)
    }

    fn read(&mut self, ino: Ino, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut got = 0usize;
        // SAFETY: h is mounted; buf is valid for buf.len() bytes.
        let r = unsafe {
            strata_ntfs_read(
                self.handle(),
                ino,
                offset,
                buf.as_mut_ptr() as *mut c_void,
                buf.len(),
                &mut got,
            )
        };
        check(r, || format!("read inode {ino} at {offset}"))?;
        Ok(got.min(buf.len()))
    }

    fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> FsResult<()> {
        self.writable(|| format!("write inode {ino}"))?;
        let mut done = 0usize;
        // SAFETY: h is mounted; data is valid for data.len() bytes.
        let r = unsafe {
            strata_ntfs_write(
                self.handle(),
                ino,
                offset,
                data.as_ptr() as *const c_void,
                data.len(),
                &mut done,
            )
        };
        check(r, || {
            format!(
                "write {} bytes to inode {ino} at {offset} ({done} written)",
                data.len()
            )
        })
    }

    fn truncate(&mut self, ino: Ino, size: u64) -> FsResult<()> {
        self.writable(|| format!("truncate inode {ino}"))?;
        // SAFETY: h is mounted.
        let r = unsafe { strata_ntfs_truncate(self.handle(), ino, size) };
        check(r, || format!("truncate inode {ino} to {size}"))
    }

    fn create(&mut self, dir: Ino, name: &[u8], _mode: u32, _owner: Owner) -> FsResult<Ino> {
        // Without a user mapping ntfs-3g stores no owner or mode: every file reads 0777.
        self.writable(|| format!("create {:?}", show(name)))?;
        self.create_raw(dir, name, KIND_FILE, None)
    }

    fn mkdir(&mut self, dir: Ino, name: &[u8], _mode: u32, _owner: Owner) -> FsResult<Ino> {
        self.writable(|| format!("mkdir {:?}", show(name)))?;
        self.create_raw(dir, name, KIND_DIR, None)
    }

    fn symlink(&mut self, dir: Ino, name: &[u8], target: &[u8], _owner: Owner) -> FsResult<Ino> {
        self.writable(|| format!("symlink {:?}", show(name)))?;
        if target.is_empty() {
            return Err(FsError::new(
                libc::ENOENT,
                format!("symlink {:?}: empty target", show(name)),
            ));
        }
        if target.len() > SYMLINK_MAX {
            return Err(FsError::new(
                libc::ENAMETOOLONG,
                format!("symlink {:?}: target of {} bytes", show(name), target.len()),
            ));
        }
        let t = CString::new(target).map_err(|_| {
            FsError::new(
                libc::EINVAL,
                format!("symlink {:?}: target holds a NUL byte", show(name)),
            )
        })?;
        self.create_raw(dir, name, KIND_SYMLINK, Some(&t))
    }

    fn link(&mut self, ino: Ino, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.writable(|| format!("link {:?}", show(name)))?;
        self.link_raw(ino, dir, name, false)
    }

    fn unlink(&mut self, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.writable(|| format!("unlink {:?}", show(name)))?;
        self.remove_raw(dir, name, WANT_NONDIR)
    }

    fn rmdir(&mut self, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.writable(|| format!("rmdir {:?}", show(name)))?;
        self.remove_raw(dir, name, WANT_DIR)
    }

    fn rename(&mut self, from_dir: Ino, from: &[u8], to_dir: Ino, to: &[u8]) -> FsResult<()> {
        let ctx = || format!("rename {:?} to {:?}", show(from), show(to));
        self.writable(ctx)?;
        let src = self.lookup(from_dir, from).map_err(|e| e.context(ctx()))?;
        let src_kind = self.kind(src).map_err(|e| e.context(ctx()))?;
        let to_kind = self.kind(to_dir).map_err(|e| e.context(ctx()))?;
        if to_kind != FileKind::Directory {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("{}: target directory", ctx()),
            ));
        }
        // The checks the kernel makes before it asks the filesystem.
        let target = self.lookup_opt(to_dir, to).map_err(|e| e.context(ctx()))?;
        if target == Some(src) {
            return Ok(()); // two names of one inode: rename(2) does nothing
        }
        let src_is_dir = src_kind == FileKind::Directory;
        if src_is_dir
            && self
                .is_ancestor(src, to_dir)
                .map_err(|e| e.context(ctx()))?
        {
            return Err(FsError::new(
                libc::EINVAL,
                format!("{}: a directory cannot move into itself", ctx()),
            ));
        }
        if src < FIRST_USER_INO {
            return Err(FsError::new(
                libc::EPERM,
                format!("{}: an NTFS metafile", ctx()),
            ));
        }
        let Some(target) = target else {
            // ntfs-3g: a new name, then the old one goes (and the new one if that fails)
            self.link_raw(src, to_dir, to, true)
                .map_err(|e| e.context(ctx()))?;
            if let Err(e) = self.remove_raw(from_dir, from, WANT_ANY) {
                let _ = self.remove_raw(to_dir, to, WANT_ANY);
                return Err(e.context(ctx()));
            }
            return Ok(());
        };
        let target_kind = self.kind(target).map_err(|e| e.context(ctx()))?;
        match (src_is_dir, target_kind == FileKind::Directory) {
            (true, false) => {
                return Err(FsError::new(
                    libc::ENOTDIR,
                    format!("{}: target is not a directory", ctx()),
                ))
            }
            (false, true) => {
                return Err(FsError::new(
                    libc::EISDIR,
                    format!("{}: target is a directory", ctx()),
                ))
            }
            (true, true) => {
                // SAFETY: h is mounted.
                let r = unsafe { strata_ntfs_dir_is_empty(self.handle(), target) };
                check(r, ctx)?;
                if r == 0 {
                    return Err(FsError::new(
                        libc::ENOTEMPTY,
                        format!("{}: target directory is not empty", ctx()),
                    ));
                }
            }
            (false, false) => {}
        }
        if target < FIRST_USER_INO {
            return Err(FsError::new(
                libc::EPERM,
                format!("{}: target is an NTFS metafile", ctx()),
            ));
        }
        // ntfs-3g's safe rename: keep the old target under a spare name until the source
        // has its new name, so a failure (ENOSPC) can put everything back.
        let spare = self.spare_name(to_dir).map_err(|e| e.context(ctx()))?;
        self.link_raw(target, to_dir, &spare, true)
            .map_err(|e| e.context(ctx()))?;
        if let Err(e) = self.remove_raw(to_dir, to, WANT_ANY) {
            let _ = self.remove_raw(to_dir, &spare, WANT_ANY);
            return Err(e.context(ctx()));
        }
        if let Err(e) = self.link_raw(src, to_dir, to, true) {
            self.restore_target(target, to_dir, &spare, to);
            return Err(e.context(ctx()));
        }
        if let Err(e) = self.remove_raw(from_dir, from, WANT_ANY) {
            let _ = self.remove_raw(to_dir, to, WANT_ANY);
            self.restore_target(target, to_dir, &spare, to);
            return Err(e.context(ctx()));
        }
        self.remove_raw(to_dir, &spare, WANT_ANY)
            .map_err(|e| e.context(format!("{}: removing the replaced target", ctx())))
    }

    fn readlink(&mut self, ino: Ino) -> FsResult<Vec<u8>> {
        let mut p: *mut c_char = std::ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: h is mounted; on success p is a malloc'd buffer of at least len bytes.
        let r = unsafe { strata_ntfs_readlink(self.handle(), ino, &mut p, &mut len) };
        check(r, || format!("readlink inode {ino}"))?;
        if p.is_null() {
            return Err(FsError::new(
                libc::EIO,
                format!("readlink inode {ino}: no target"),
            ));
        }
        // SAFETY: as above; freed right after the copy.
        let out = unsafe {
            let v = std::slice::from_raw_parts(p as *const u8, len).to_vec();
            strata_ntfs_free(p as *mut c_void);
            v
        };
        Ok(out)
    }

    fn setattr(&mut self, ino: Ino, attr: &SetAttr) -> FsResult<()> {
        let nothing = attr.mode.is_none()
            && attr.uid.is_none()
            && attr.gid.is_none()
            && attr.atime.is_none()
            && attr.mtime.is_none();
        if nothing {
            // still an existing inode?
            self.raw_stat(ino)?;
            return Ok(());
        }
        self.writable(|| format!("setattr inode {ino}"))?;
        // chmod and chown: without a user mapping ntfs-3g (option `silent`, its default)
        // answers success and stores nothing; the inode must exist all the same.
        self.raw_stat(ino)?;
        if attr.atime.is_none() && attr.mtime.is_none() {
            return Ok(());
        }
        let a = attr.atime.map(timespec_to_ntfs);
        let m = attr.mtime.map(timespec_to_ntfs);
        // SAFETY: h is mounted.
        let r = unsafe {
            strata_ntfs_set_times(
                self.handle(),
                ino,
                a.is_some() as c_int,
                a.unwrap_or(0),
                m.is_some() as c_int,
                m.unwrap_or(0),
            )
        };
        check(r, || format!("set the times of inode {ino}"))
    }

    fn statvfs(&mut self) -> FsResult<StatVfs> {
        let mut v = RawVfs::default();
        // SAFETY: h is mounted.
        let r = unsafe { strata_ntfs_statvfs(self.handle(), &mut v) };
        check(r, || "statvfs".to_string())?;
        Ok(StatVfs {
            bsize: v.cluster_size,
            frsize: v.cluster_size,
            blocks: v.nr_clusters,
            bfree: v.free_clusters,
            bavail: v.free_clusters,
            files: v.files,
            ffree: v.ffree,
            favail: v.ffree,
            fsid: 0,
            flag: ST_RELATIME | if self.read_only { ST_RDONLY } else { 0 },
            namemax: NAME_MAX_UNITS as u64,
        })
    }

    fn used_blocks(&mut self) -> FsResult<Vec<(u64, u64)>> {
        let mut v = RawVfs::default();
        // SAFETY: h is mounted.
        check(
            unsafe { strata_ntfs_statvfs(self.handle(), &mut v) },
            || "reading the volume geometry".to_string(),
        )?;
        let (csize, nclusters) = (v.cluster_size, v.nr_clusters);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut lcn = 0u64;
        while lcn < nclusters {
            let want = ((nclusters - lcn).div_ceil(8)).min(buf.len() as u64) as usize;
            // SAFETY: h is mounted; buf holds at least `want` bytes.
            let got = unsafe {
                strata_ntfs_read_bitmap(
                    self.handle(),
                    lcn / 8,
                    buf.as_mut_ptr() as *mut c_void,
                    want,
                )
            };
            if got < 0 {
                return Err(FsError::new(-got as i32, "reading $Bitmap"));
            }
            if got == 0 {
                return Err(FsError::new(
                    libc::EIO,
                    format!("$Bitmap ends at cluster {lcn} of {nclusters}"),
                ));
            }
            let bits = (got as u64 * 8).min(nclusters - lcn);
            set_runs(&buf[..got as usize], lcn, bits, &mut runs);
            lcn += bits;
        }
        let mut ranges: Vec<(u64, u64)> = runs
            .into_iter()
            .map(|(c, n)| (c * csize, n * csize))
            .collect();
        // The backup boot sector sits in the volume's last sector, past the last cluster.
        let mut boot = [0u8; 0x30];
        if self.ctx.dev.read_at(&mut boot, 0).is_ok() {
            let sectors = u64::from_le_bytes(boot[0x28..0x30].try_into().unwrap_or([0; 8]));
            let ss = v.sector_size;
            if let Some(off) = sectors.checked_mul(ss) {
                if off
                    .checked_add(ss)
                    .is_some_and(|end| end <= self.ctx.dev.len())
                {
                    ranges.push((off, ss));
                }
            }
        }
        Ok(merge_ranges(ranges))
    }

    fn sync(&mut self) -> FsResult<()> {
        if self.read_only {
            return Ok(());
        }
        // SAFETY: h is mounted.
        let r = unsafe { strata_ntfs_sync(self.handle()) };
        check(r, || "syncing the NTFS filesystem".to_string())
    }

    fn close(mut self: Box<Self>) -> FsResult<()> {
        self.umount()
    }
}

/// The first MFT record number that is not a metafile (`FILE_first_user`).
pub const FIRST_USER_INO: Ino = 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntfs_times_round_trip_at_100ns() {
        for t in [
            Timespec { sec: 0, nsec: 0 },
            Timespec {
                sec: 1_700_000_000,
                nsec: 123_456_700,
            },
            Timespec {
                sec: -1,
                nsec: 999_999_900,
            },
            Timespec {
                sec: -11_644_473_600,
                nsec: 0,
            },
        ] {
            assert_eq!(ntfs_to_timespec(timespec_to_ntfs(t)), t);
        }
        // finer than 100 ns is dropped, as NTFS stores it
        let t = Timespec { sec: 5, nsec: 199 };
        assert_eq!(
            ntfs_to_timespec(timespec_to_ntfs(t)),
            Timespec { sec: 5, nsec: 100 }
        );
        assert_eq!(
            timespec_to_ntfs(Timespec { sec: 0, nsec: 0 }),
            NTFS_EPOCH_OFFSET
        );
        // out of range clamps instead of wrapping
        assert_eq!(
            timespec_to_ntfs(Timespec {
                sec: i64::MAX,
                nsec: 0
            }),
            i64::MAX
        );
        let _ = ntfs_to_timespec(i64::MIN);
    }

    #[test]
    fn names_that_are_not_one_component_are_refused() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert_eq!(cname(bad).unwrap_err().errno, libc::EINVAL, "{bad:?}");
        }
        assert_eq!(cname(&[b'x'; 766]).unwrap_err().errno, libc::ENAMETOOLONG);
        assert!(cname("é".repeat(255).as_bytes()).is_ok());
    }

    #[test]
    fn ranges_merge_sorted_and_touching() {
        assert_eq!(
            merge_ranges(vec![(10, 5), (0, 10), (30, 0), (14, 2), (40, 1)]),
            vec![(0, 16), (40, 1)]
        );
    }

    #[test]
    fn bitmap_runs_cover_set_bits_only() {
        let mut runs = Vec::new();
        // clusters 0-2, 9, 15-16 (crossing a byte), nothing past `bits`
        set_runs(
            &[0b0000_0111, 0b1000_0010, 0b0000_0001, 0xff],
            0,
            17,
            &mut runs,
        );
        assert_eq!(runs, vec![(0, 3), (9, 1), (15, 2)]);
        // a second chunk continues a run that touches it
        set_runs(&[0b0000_0011], 17, 8, &mut runs);
        assert_eq!(runs, vec![(0, 3), (9, 1), (15, 4)]);
    }
}
