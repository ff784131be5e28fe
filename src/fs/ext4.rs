//! ext2, ext3 and ext4, read and written with libext2fs (e2fsprogs 1.47) through the C shim
//! `ext4_shim.c`.
//!
//! What this file owns: the `GuestFs` adapter (the POSIX rules of each call, free-space
//! margins, the order of a rename's checks), the refusal to write filesystems libext2fs
//! cannot write safely, and the device side of libext2fs's I/O: its block reads and writes
//! come back here (`DevOps`) and go through a write-back block cache (`cache::Cache`) to the
//! `SharedDevice`. The shim owns every libext2fs structure; nothing here knows their layout.
//!
//! Safety model: libext2fs parses untrusted images and may misbehave on garbage, so this
//! adapter only ever runs inside a worker process. On this side nothing panics on what the
//! image or the C side says: lengths, names and counts handed back are checked first.
//!
//! libext2fs never writes through the journal and cannot replay one, so a filesystem whose
//! journal needs recovery, that has recorded errors, or that was not cleanly unmounted is
//! refused read-write (as fuse2fs refuses it). Changes are written in place; the caller
//! flushes the device after `sync`/`close`, which makes the edit atomic.

use std::ffi::{c_char, c_int, c_long, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use parking_lot::Mutex;

use super::{
    DirEntry, FileKind, FsError, FsResult, GuestFs, Ino, OpenOptions, Owner, SetAttr, Stat,
    StatVfs, Timespec,
};
use crate::store::device::{BlockDevice, SharedDevice};

/// The root directory's inode number in every ext2/3/4 filesystem.
const ROOT_INO: Ino = 2;

/// Longest name a directory entry holds (EXT2_NAME_LEN).
const NAME_MAX: usize = 255;

/// Blocks kept free beyond what an operation's data needs, for the metadata libext2fs
/// allocates on the way (a directory block, an htree split, extent tree or indirect blocks,
/// a deeper extent tree). libext2fs has no reservation mechanism and can leave a filesystem
/// inconsistent when an allocation fails half-way, so every allocating call checks first
/// that it cannot run out: ENOSPC then arrives with nothing done.
const SPARE_BLOCKS: u64 = 32;

/// How much of a write goes to libext2fs at once; free space is checked per chunk, so a
/// write that fills the filesystem keeps what fitted (like a short write).
const WRITE_CHUNK: usize = 1 << 20;

/// Most bytes read from libext2fs in one call.
const READ_CHUNK: usize = 16 << 20;

/// A directory's link count where dir_nlink stops counting (EXT4_LINK_MAX).
const LINK_MAX: u32 = 65000;

/// i_flags bit of a directory with an htree index (EXT2_INDEX_FL).
const INDEX_FL: u32 = 0x1000;

// ---- The C side (ext4_shim.c) -------------------------------------------------------------

/// `struct strata_ext4_dev`: the device as libext2fs's I/O manager calls it.
#[repr(C)]
struct DevOps {
    /// The `IoState`, opaque to C.
    ctx: *const c_void,
    read: extern "C" fn(*const c_void, u64, *mut c_void, u64) -> c_long,
    write: extern "C" fn(*const c_void, u64, *const c_void, u64) -> c_long,
    flush: extern "C" fn(*const c_void) -> c_long,
    discard: extern "C" fn(*const c_void, u64, u64) -> c_long,
}

/// `struct strata_ext4_super`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct RawSuper {
    blocksize: u32,
    cluster_ratio: u32,
    first_data_block: u64,
    blocks_count: u64,
    free_blocks: u64,
    r_blocks: u64,
    inodes_count: u64,
    free_inodes: u64,
    groups: u64,
    overhead_clusters: u64,
    inode_size: u32,
    journal_inum: u32,
    compat: u32,
    incompat: u32,
    ro_compat: u32,
    state: u32,
    last_orphan: u32,
    uuid: [u8; 16],
}

/// `struct strata_ext4_stat`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct RawStat {
    mode: u32,
    uid: u32,
    gid: u32,
    links: u32,
    flags: u32,
    dtime: u32,
    size: u64,
    blocks: u64,
    atime: i64,
    mtime: i64,
    ctime: i64,
    atime_ns: u32,
    mtime_ns: u32,
    ctime_ns: u32,
    rdev_old: u32,
    rdev_new: u32,
}

/// `struct strata_ext4_setattr`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct RawSetAttr {
    set_mode: u32,
    mode: u32,
    set_uid: u32,
    uid: u32,
    set_gid: u32,
    gid: u32,
    set_atime: u32,
    atime_ns: u32,
    atime: i64,
    set_mtime: u32,
    mtime_ns: u32,
    mtime: i64,
}

/// `ext2_filsys`, opaque here.
type Filsys = *mut c_void;

type DirentCb = extern "C" fn(*mut c_void, u32, *const c_char, u32, u32) -> c_int;
type RunCb = extern "C" fn(*mut c_void, u64, u64);

// com_err provides error_message(), which the shim calls; pkg-config's ext2fs entry lists it
// only as a private requirement, so it is named here.
#[link(name = "com_err")]
extern "C" {
    fn strata_ext4_errno(code: c_long) -> c_int;
    fn strata_ext4_message(code: c_long) -> *const c_char;
    fn strata_ext4_open(dev: *const DevOps, rw: c_int, out: *mut Filsys) -> c_long;
    fn strata_ext4_super(fs: Filsys, out: *mut RawSuper);
    fn strata_ext4_fix_counts(fs: Filsys) -> c_int;
    fn strata_ext4_overhead(fs: Filsys, out: *mut u64) -> c_long;
    fn strata_ext4_sync(fs: Filsys, metadata: c_int) -> c_long;
    fn strata_ext4_free(fs: Filsys);
    fn strata_ext4_stat(fs: Filsys, ino: u32, out: *mut RawStat) -> c_long;
    fn strata_ext4_setattr(fs: Filsys, ino: u32, attr: *const RawSetAttr) -> c_long;
    fn strata_ext4_lookup(
        fs: Filsys,
        dir: u32,
        name: *const c_char,
        len: c_int,
        ino: *mut u32,
    ) -> c_long;
    fn strata_ext4_readdir(fs: Filsys, dir: u32, cb: DirentCb, ctx: *mut c_void) -> c_long;
    fn strata_ext4_dir_is_empty(fs: Filsys, dir: u32, empty: *mut c_int) -> c_long;
    fn strata_ext4_create(
        fs: Filsys,
        dir: u32,
        name: *const c_char,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        out: *mut u32,
    ) -> c_long;
    fn strata_ext4_mkdir(
        fs: Filsys,
        dir: u32,
        name: *const c_char,
        mode: u32,
        uid: u32,
        gid: u32,
        out: *mut u32,
    ) -> c_long;
    fn strata_ext4_symlink(
        fs: Filsys,
        dir: u32,
        name: *const c_char,
        target: *const c_char,
        uid: u32,
        gid: u32,
        out: *mut u32,
    ) -> c_long;
    fn strata_ext4_hardlink(fs: Filsys, ino: u32, dir: u32, name: *const c_char) -> c_long;
    fn strata_ext4_remove(
        fs: Filsys,
        dir: u32,
        name: *const c_char,
        ino: u32,
        is_dir: c_int,
    ) -> c_long;
    fn strata_ext4_rename(
        fs: Filsys,
        from_dir: u32,
        from: *const c_char,
        to_dir: u32,
        to: *const c_char,
        ino: u32,
        target: u32,
    ) -> c_long;
    fn strata_ext4_readlink(
        fs: Filsys,
        ino: u32,
        buf: *mut c_char,
        cap: u32,
        len: *mut u32,
    ) -> c_long;
    fn strata_ext4_read(
        fs: Filsys,
        ino: u32,
        offset: u64,
        buf: *mut c_void,
        len: u32,
        got: *mut u32,
    ) -> c_long;
    fn strata_ext4_write(
        fs: Filsys,
        ino: u32,
        offset: u64,
        buf: *const c_void,
        len: u32,
        written: *mut u32,
    ) -> c_long;
    fn strata_ext4_truncate(fs: Filsys, ino: u32, size: u64) -> c_long;
    fn strata_ext4_unmapped(
        fs: Filsys,
        ino: u32,
        lblk: u64,
        count: u64,
        unmapped: *mut u64,
    ) -> c_long;
    fn strata_ext4_used_runs(fs: Filsys, cb: RunCb, ctx: *mut c_void) -> c_long;
}

// ---- Features and states -------------------------------------------------------------------

// Feature bits, from e2fsprogs' ext2_fs.h.
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_EXTENTS: u32 = 0x40;
const RO_COMPAT_HUGE_FILE: u32 = 0x8;
const RO_COMPAT_ORPHAN_PRESENT: u32 = 0x10000;
const INCOMPAT_FILETYPE: u32 = 0x2;
const RO_COMPAT_DIR_NLINK: u32 = 0x20;

/// Superblock states (s_state).
const STATE_VALID: u32 = 0x1;
const STATE_ERROR: u32 = 0x2;

const INCOMPAT_NAMES: &[(u32, &str)] = &[
    (0x1, "compression"),
    (0x2, "filetype"),
    (0x4, "needs_recovery"),
    (0x8, "journal_dev"),
    (0x10, "meta_bg"),
    (0x40, "extent"),
    (0x80, "64bit"),
    (0x100, "mmp"),
    (0x200, "flex_bg"),
    (0x400, "ea_inode"),
    (0x1000, "dirdata"),
    (0x2000, "metadata_csum_seed"),
    (0x4000, "large_dir"),
    (0x8000, "inline_data"),
    (0x10000, "encrypt"),
    (0x20000, "casefold"),
];

const RO_COMPAT_NAMES: &[(u32, &str)] = &[
    (0x1, "sparse_super"),
    (0x2, "large_file"),
    (0x8, "huge_file"),
    (0x10, "uninit_bg"),
    (0x20, "dir_nlink"),
    (0x40, "extra_isize"),
    (0x80, "snapshot"),
    (0x100, "quota"),
    (0x200, "bigalloc"),
    (0x400, "metadata_csum"),
    (0x800, "replica"),
    (0x1000, "read-only"),
    (0x2000, "project"),
    (0x4000, "shared_blocks"),
    (0x8000, "verity"),
    (0x10000, "orphan_present"),
];

/// EXT2_LIB_FEATURE_INCOMPAT_SUPP of libext2fs 1.47 (Debian builds it with MMP).
const LIB_INCOMPAT: u32 = 0x2
    | 0x4
    | 0x8
    | 0x10
    | 0x40
    | 0x80
    | 0x100
    | 0x200
    | 0x400
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000;

/// EXT2_LIB_FEATURE_RO_COMPAT_SUPP of libext2fs 1.47.
const LIB_RO_COMPAT: u32 = 0x1
    | 0x2
    | 0x8
    | 0x10
    | 0x20
    | 0x40
    | 0x100
    | 0x200
    | 0x400
    | 0x1000
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000;

/// Incompat features this adapter writes: what mke2fs 1.47 makes, and layout-only
/// features libext2fs handles wholly (meta_bg, csum_seed, large_dir).
const WRITE_INCOMPAT: u32 = 0x2 | 0x10 | 0x40 | 0x80 | 0x200 | 0x2000 | 0x4000;

/// Ro-compat features this adapter writes.
const WRITE_RO_COMPAT: u32 = 0x1 | 0x2 | 0x8 | 0x10 | 0x20 | 0x40 | 0x400 | 0x2000;

/// Why a feature this adapter does not write is refused (read-only still works).
fn write_refusal_reason(name: &str) -> &'static str {
    match name {
        "mmp" => "multi-mount protection would make every open wait for the MMP interval",
        "ea_inode" => "freeing inodes would have to release extended-attribute inodes",
        "inline_data" => "new and growing files would have to move data out of the inode",
        "encrypt" => "names and contents in encrypted directories cannot be written",
        "casefold" => "name lookups in case-folded directories do not fold case here",
        "quota" => "quota usage would not be updated",
        "bigalloc" => "cluster allocation is not tested here",
        "snapshot" | "replica" => "libext2fs does not write it",
        "read-only" => "the filesystem is marked read-only",
        "shared_blocks" => "blocks are shared between files (the kernel mounts it read-only too)",
        "verity" => "verity files must not change",
        "orphan_present" => "orphan inodes are waiting for cleanup",
        "journal_dev" => "it is an external journal, not a filesystem",
        _ => "libext2fs 1.47 does not write it",
    }
}

fn feature_names(bits: u32, table: &[(u32, &'static str)]) -> Vec<String> {
    (0..32)
        .map(|i| 1u32 << i)
        .filter(|b| bits & b != 0)
        .map(|b| {
            table
                .iter()
                .find(|(v, _)| *v == b)
                .map(|(_, n)| n.to_string())
                .unwrap_or_else(|| format!("unknown feature bit {b:#x}"))
        })
        .collect()
}

/// Whether the ext2/3/4 filesystem on `dev` is one that only the kernel can make writable:
/// cleanly marked, but with a journal to replay (needs_recovery: the server crashed or the
/// volume was taken while mounted) or orphan inodes to clean up, which the kernel does at
/// mount as the server's own would at boot. libext2fs can do neither, so this adapter
/// refuses to write it (`SuperCheck::refusal`) and the fs session mounts it in the job's VM
/// instead (`fs::vm`). Marked with errors or as not cleanly unmounted, it stays refused:
/// the kernel mounts such a filesystem without repairing it.
pub fn kernel_recovers(dev: &dyn BlockDevice) -> FsResult<bool> {
    let c = SuperCheck::read(dev)?;
    let pending = c.incompat & INCOMPAT_RECOVER != 0
        || c.last_orphan != 0
        || c.ro_compat & RO_COMPAT_ORPHAN_PRESENT != 0;
    let state = u32::from(c.state);
    Ok(pending
        && state & STATE_VALID != 0
        && state & STATE_ERROR == 0
        && c.incompat & !LIB_INCOMPAT == 0
        && c.incompat & INCOMPAT_JOURNAL_DEV == 0)
}

/// The fields of the on-disk superblock (byte 1024) the open checks need, read before
/// libext2fs sees the image so that a refusal can name the reason.
#[derive(Debug, Clone, Copy)]
struct SuperCheck {
    state: u16,
    incompat: u32,
    ro_compat: u32,
    last_orphan: u32,
}

impl SuperCheck {
    fn read(dev: &dyn BlockDevice) -> FsResult<SuperCheck> {
        if dev.len() < 2048 {
            return Err(FsError::new(
                libc::EINVAL,
                format!(
                    "{} is {} bytes, too small for an ext2/3/4 filesystem",
                    dev.describe(),
                    dev.len()
                ),
            ));
        }
        let mut sb = [0u8; 1024];
        dev.read_at(&mut sb, 1024)?;
        let u16_at = |o: usize| u16::from_le_bytes([sb[o], sb[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
        if u16_at(0x38) != 0xEF53 {
            return Err(FsError::new(
                libc::EINVAL,
                format!("{} holds no ext2/3/4 superblock", dev.describe()),
            ));
        }
        // Revision 0 filesystems have no feature fields.
        let dynamic = u32_at(0x4C) >= 1;
        Ok(SuperCheck {
            state: u16_at(0x3A),
            incompat: if dynamic { u32_at(0x60) } else { 0 },
            ro_compat: if dynamic { u32_at(0x64) } else { 0 },
            last_orphan: if dynamic { u32_at(0xE8) } else { 0 },
        })
    }

    /// Why this filesystem cannot be opened this way, if it cannot.
    fn refusal(&self, what: &str, read_only: bool) -> Option<FsError> {
        let unknown = self.incompat & !LIB_INCOMPAT;
        if unknown != 0 {
            return Some(FsError::new(
                libc::EOPNOTSUPP,
                format!(
                    "{what} uses {}, which libext2fs 1.47 cannot read",
                    feature_names(unknown, INCOMPAT_NAMES).join(", ")
                ),
            ));
        }
        if self.incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return Some(FsError::new(
                libc::EINVAL,
                format!("{what} is an external ext3/4 journal, not a filesystem"),
            ));
        }
        if read_only {
            return None;
        }
        let hint = "open it read-only, or have the guest (or e2fsck -fy) repair it first";
        if self.incompat & INCOMPAT_RECOVER != 0 {
            return Some(FsError::new(
                libc::EUCLEAN,
                format!(
                    "{what} cannot be written: its journal needs recovery (needs_recovery is \
                     set, so it was not cleanly unmounted) and libext2fs cannot replay a \
                     journal; {hint}"
                ),
            ));
        }
        if u32::from(self.state) & STATE_ERROR != 0 {
            return Some(FsError::new(
                libc::EUCLEAN,
                format!("{what} cannot be written: it is marked as having errors; {hint}"),
            ));
        }
        if u32::from(self.state) & STATE_VALID == 0 {
            return Some(FsError::new(
                libc::EUCLEAN,
                format!(
                    "{what} cannot be written: it was not cleanly unmounted (state \
                     'not clean'); {hint}"
                ),
            ));
        }
        if self.last_orphan != 0 || self.ro_compat & RO_COMPAT_ORPHAN_PRESENT != 0 {
            return Some(FsError::new(
                libc::EUCLEAN,
                format!(
                    "{what} cannot be written: it has orphan inodes waiting for cleanup; {hint}"
                ),
            ));
        }
        let ro_unknown = self.ro_compat & !LIB_RO_COMPAT;
        if ro_unknown != 0 {
            return Some(FsError::new(
                libc::EOPNOTSUPP,
                format!(
                    "{what} cannot be written: it uses {}, which libext2fs 1.47 cannot write; \
                     open it read-only",
                    feature_names(ro_unknown, RO_COMPAT_NAMES).join(", ")
                ),
            ));
        }
        let unsafe_features: Vec<String> = feature_names(
            self.incompat & !WRITE_INCOMPAT & !INCOMPAT_RECOVER,
            INCOMPAT_NAMES,
        )
        .into_iter()
        .chain(feature_names(
            self.ro_compat & !WRITE_RO_COMPAT,
            RO_COMPAT_NAMES,
        ))
        .collect();
        if let Some(name) = unsafe_features.first() {
            return Some(FsError::new(
                libc::EOPNOTSUPP,
                format!(
                    "{what} cannot be written: it uses the ext4 feature {name}, which this \
                     adapter does not write ({}); open it read-only",
                    write_refusal_reason(name)
                ),
            ));
        }
        None
    }
}

// ---- The device under libext2fs ------------------------------------------------------------

/// What libext2fs's I/O manager reads and writes: the device, through the block cache.
struct IoState {
    dev: SharedDevice,
    len: u64,
    writable: bool,
    cache: Mutex<cache::Cache>,
    /// The device's own words for the last failure, to put into the FsError.
    last_error: Mutex<Option<String>>,
}

impl IoState {
    fn fail(&self, e: crate::store::StoreError) -> c_long {
        let fe = FsError::from(e);
        *self.last_error.lock() = Some(fe.detail.clone());
        // A block outside the device (a truncated image, a damaged block number) is an I/O
        // error to the filesystem, as the kernel reports it; a full store stays ENOSPC.
        match fe.errno {
            libc::EINVAL | libc::ENOENT | libc::EBUSY => libc::EIO as c_long,
            errno => errno as c_long,
        }
    }
}

/// Runs a callback body, turning a panic into EIO: unwinding into C is not allowed.
fn guarded(f: impl FnOnce() -> c_long) -> c_long {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(libc::EIO as c_long)
}

extern "C" fn dev_read(io: *const c_void, offset: u64, buf: *mut c_void, len: u64) -> c_long {
    guarded(|| {
        // SAFETY: `io` is the IoState this adapter boxed and keeps alive while the
        // filesystem is open; only the C side holding that filesystem calls here.
        let io = unsafe { &*(io as *const IoState) };
        let Ok(len) = usize::try_from(len) else {
            return libc::EINVAL as c_long;
        };
        if buf.is_null() || len > isize::MAX as usize {
            return libc::EINVAL as c_long;
        }
        // SAFETY: libext2fs hands a buffer of the size it asks for.
        let buf = unsafe { std::slice::from_raw_parts_mut(buf as *mut u8, len) };
        match io.cache.lock().read(&*io.dev, io.len, offset, buf) {
            Ok(()) => 0,
            Err(e) => io.fail(e),
        }
    })
}

extern "C" fn dev_write(io: *const c_void, offset: u64, buf: *const c_void, len: u64) -> c_long {
    guarded(|| {
        // SAFETY: as in dev_read.
        let io = unsafe { &*(io as *const IoState) };
        if !io.writable {
            return libc::EROFS as c_long;
        }
        let Ok(len) = usize::try_from(len) else {
            return libc::EINVAL as c_long;
        };
        if buf.is_null() || len > isize::MAX as usize {
            return libc::EINVAL as c_long;
        }
        // SAFETY: libext2fs hands a buffer of the size it writes.
        let buf = unsafe { std::slice::from_raw_parts(buf as *const u8, len) };
        match io.cache.lock().write(&*io.dev, io.len, offset, buf) {
            Ok(()) => 0,
            Err(e) => io.fail(e),
        }
    })
}

extern "C" fn dev_flush(io: *const c_void) -> c_long {
    guarded(|| {
        // SAFETY: as in dev_read.
        let io = unsafe { &*(io as *const IoState) };
        if !io.writable {
            return 0;
        }
        // Written back to the device, not flushed: the caller flushes the device after
        // sync/close, which is what makes an edit atomic.
        match io.cache.lock().write_back(&*io.dev) {
            Ok(()) => 0,
            Err(e) => io.fail(e),
        }
    })
}

extern "C" fn dev_discard(io: *const c_void, offset: u64, len: u64) -> c_long {
    guarded(|| {
        // SAFETY: as in dev_read.
        let io = unsafe { &*(io as *const IoState) };
        if !io.writable {
            return libc::EROFS as c_long;
        }
        match io.cache.lock().discard(&*io.dev, io.len, offset, len) {
            Ok(()) => 0,
            Err(e) => io.fail(e),
        }
    })
}

/// A write-back cache of the device in 4 KiB pages, addressed by byte offset (so the
/// channel's block size, which libext2fs changes while opening, does not matter).
/// libext2fs reads and writes a block at a time, and rewrites the same inode-table and
/// directory blocks over and over; this turns that into large, sorted device writes.
mod cache {
    use rustc_hash::FxHashMap;

    use crate::store::device::BlockDevice;
    use crate::store::StoreError;

    type Result<T> = std::result::Result<T, StoreError>;

    pub const PAGE: usize = 4096;
    /// 32 MiB.
    const PAGES: usize = 8192;
    /// A miss reads this many pages ahead (64 KiB): libext2fs reads files and directories
    /// block by block, in order.
    const READ_AHEAD: u64 = 16;
    /// Requests at least this large go to the device directly (the cache would only churn).
    const DIRECT: usize = 256 << 10;
    /// Largest single device write when writing back.
    const WRITE_RUN: usize = 256;

    #[derive(Clone, Copy, Default)]
    struct Slot {
        page: u64,
        dirty: bool,
        referenced: bool,
    }

    pub struct Cache {
        data: Vec<u8>,
        slots: Vec<Slot>,
        map: FxHashMap<u64, usize>,
        free: Vec<usize>,
        hand: usize,
        dirty: usize,
        scratch: Vec<u8>,
    }

    fn out_of_range(dev: &dyn BlockDevice, offset: u64, len: u64, size: u64) -> StoreError {
        StoreError::OutOfRange {
            what: dev.describe(),
            offset,
            len,
            size,
        }
    }

    impl Cache {
        pub fn new() -> Cache {
            Cache::with_pages(PAGES)
        }

        pub fn with_pages(pages: usize) -> Cache {
            let pages = pages.max(4);
            Cache {
                data: vec![0u8; pages * PAGE],
                slots: vec![Slot::default(); pages],
                map: FxHashMap::default(),
                free: (0..pages).rev().collect(),
                hand: 0,
                dirty: 0,
                scratch: Vec::new(),
            }
        }

        fn page_len(dev_len: u64, page: u64) -> usize {
            (dev_len.saturating_sub(page * PAGE as u64)).min(PAGE as u64) as usize
        }

        fn slot_bytes(&mut self, slot: usize) -> &mut [u8] {
            &mut self.data[slot * PAGE..(slot + 1) * PAGE]
        }

        pub fn read(
            &mut self,
            dev: &dyn BlockDevice,
            dev_len: u64,
            offset: u64,
            buf: &mut [u8],
        ) -> Result<()> {
            let len = buf.len() as u64;
            let end = match offset.checked_add(len) {
                Some(e) if e <= dev_len => e,
                _ => return Err(out_of_range(dev, offset, len, dev_len)),
            };
            if len == 0 {
                return Ok(());
            }
            let first = offset / PAGE as u64;
            let last = (end - 1) / PAGE as u64;
            if buf.len() >= DIRECT {
                dev.read_at(buf, offset)?;
                // Clean pages hold what the device holds; dirty ones are newer.
                if self.dirty > 0 {
                    for p in first..=last {
                        if let Some(&s) = self.map.get(&p) {
                            if self.slots[s].dirty {
                                self.copy_out(s, p, offset, buf);
                            }
                        }
                    }
                }
                return Ok(());
            }
            let mut p = first;
            while p <= last {
                if let Some(&s) = self.map.get(&p) {
                    self.slots[s].referenced = true;
                    self.copy_out(s, p, offset, buf);
                    p += 1;
                    continue;
                }
                // A run of missing pages: what the request still needs, and read-ahead.
                let max_end = (last + 1).max(p + READ_AHEAD);
                let dev_pages = dev_len.div_ceil(PAGE as u64);
                let mut q = p;
                while q < max_end && q < dev_pages && (q == p || !self.map.contains_key(&q)) {
                    q += 1;
                }
                let run_start = p * PAGE as u64;
                let run_end = (q * PAGE as u64).min(dev_len);
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.resize((run_end - run_start) as usize, 0);
                let res = dev.read_at(&mut scratch, run_start);
                if let Err(e) = res {
                    self.scratch = scratch;
                    return Err(e);
                }
                // Copy the request's part straight from what was read ...
                let a = offset.max(run_start);
                let b = end.min(run_end);
                if a < b {
                    buf[(a - offset) as usize..(b - offset) as usize].copy_from_slice(
                        &scratch[(a - run_start) as usize..(b - run_start) as usize],
                    );
                }
                // ... and keep the pages.
                let mut insert_err = None;
                for page in p..q {
                    let at = ((page - p) as usize) * PAGE;
                    let n = Cache::page_len(dev_len, page);
                    match self.alloc_slot(dev) {
                        Ok(s) => {
                            self.slot_bytes(s)[..n].copy_from_slice(&scratch[at..at + n]);
                            self.slots[s] = Slot {
                                page,
                                dirty: false,
                                referenced: true,
                            };
                            self.map.insert(page, s);
                        }
                        Err(e) => {
                            insert_err = Some(e);
                            break;
                        }
                    }
                }
                self.scratch = scratch;
                if let Some(e) = insert_err {
                    return Err(e);
                }
                p = q.min(last + 1).max(p + 1);
            }
            Ok(())
        }

        /// Copies the part of page `p` (in slot `s`) that overlaps the request.
        fn copy_out(&self, s: usize, p: u64, offset: u64, buf: &mut [u8]) {
            let page_start = p * PAGE as u64;
            let end = offset + buf.len() as u64;
            let a = offset.max(page_start);
            let b = end.min(page_start + PAGE as u64);
            if a >= b {
                return;
            }
            let src = &self.data[s * PAGE..(s + 1) * PAGE];
            buf[(a - offset) as usize..(b - offset) as usize]
                .copy_from_slice(&src[(a - page_start) as usize..(b - page_start) as usize]);
        }

        pub fn write(
            &mut self,
            dev: &dyn BlockDevice,
            dev_len: u64,
            offset: u64,
            data: &[u8],
        ) -> Result<()> {
            let len = data.len() as u64;
            let end = match offset.checked_add(len) {
                Some(e) if e <= dev_len => e,
                _ => return Err(out_of_range(dev, offset, len, dev_len)),
            };
            if len == 0 {
                return Ok(());
            }
            if data.len() >= DIRECT {
                // Whole pages in the middle go straight to the device (replacing whatever
                // the cache held for them); the partial pages at either end are cached.
                let m0 = offset.div_ceil(PAGE as u64) * PAGE as u64;
                let m1 = end / PAGE as u64 * PAGE as u64;
                if m0 < m1 {
                    for p in m0 / PAGE as u64..m1 / PAGE as u64 {
                        if let Some(s) = self.map.remove(&p) {
                            if self.slots[s].dirty {
                                self.dirty -= 1;
                            }
                            self.slots[s] = Slot::default();
                            self.free.push(s);
                        }
                    }
                    dev.write_at(&data[(m0 - offset) as usize..(m1 - offset) as usize], m0)?;
                    self.write_cached(dev, dev_len, offset, &data[..(m0 - offset) as usize])?;
                    return self.write_cached(dev, dev_len, m1, &data[(m1 - offset) as usize..]);
                }
            }
            self.write_cached(dev, dev_len, offset, data)
        }

        fn write_cached(
            &mut self,
            dev: &dyn BlockDevice,
            dev_len: u64,
            offset: u64,
            data: &[u8],
        ) -> Result<()> {
            let end = offset + data.len() as u64;
            if data.is_empty() {
                return Ok(());
            }
            for p in offset / PAGE as u64..=(end - 1) / PAGE as u64 {
                let page_start = p * PAGE as u64;
                let plen = Cache::page_len(dev_len, p);
                let a = offset.max(page_start);
                let b = end.min(page_start + plen as u64);
                let s = match self.map.get(&p) {
                    Some(&s) => s,
                    None => {
                        let s = self.alloc_slot(dev)?;
                        if a > page_start || b < page_start + plen as u64 {
                            let mut page = std::mem::take(&mut self.scratch);
                            page.resize(plen, 0);
                            let r = dev.read_at(&mut page, page_start);
                            if r.is_ok() {
                                self.slot_bytes(s)[..plen].copy_from_slice(&page);
                            }
                            self.scratch = page;
                            if let Err(e) = r {
                                self.free.push(s);
                                return Err(e);
                            }
                        }
                        self.slots[s] = Slot {
                            page: p,
                            dirty: false,
                            referenced: true,
                        };
                        self.map.insert(p, s);
                        s
                    }
                };
                let dst = &mut self.data[s * PAGE..(s + 1) * PAGE];
                dst[(a - page_start) as usize..(b - page_start) as usize]
                    .copy_from_slice(&data[(a - offset) as usize..(b - offset) as usize]);
                let slot = &mut self.slots[s];
                slot.referenced = true;
                if !slot.dirty {
                    slot.dirty = true;
                    self.dirty += 1;
                }
            }
            Ok(())
        }

        /// A slot for a new page: a free one, else the CLOCK victim (after writing back
        /// every dirty page, in one sorted sweep, if the victim is dirty).
        fn alloc_slot(&mut self, dev: &dyn BlockDevice) -> Result<usize> {
            if let Some(s) = self.free.pop() {
                return Ok(s);
            }
            loop {
                let s = self.hand;
                self.hand = (self.hand + 1) % self.slots.len();
                if self.slots[s].referenced {
                    self.slots[s].referenced = false;
                    continue;
                }
                if self.slots[s].dirty {
                    self.write_back(dev)?;
                }
                let page = self.slots[s].page;
                self.map.remove(&page);
                self.slots[s] = Slot::default();
                return Ok(s);
            }
        }

        /// Writes every dirty page to the device, in order, contiguous pages together.
        pub fn write_back(&mut self, dev: &dyn BlockDevice) -> Result<()> {
            if self.dirty == 0 {
                return Ok(());
            }
            let dev_len = dev.len();
            let mut dirty: Vec<(u64, usize)> = self
                .map
                .iter()
                .filter(|(_, &s)| self.slots[s].dirty)
                .map(|(&p, &s)| (p, s))
                .collect();
            dirty.sort_unstable();
            let mut buf = std::mem::take(&mut self.scratch);
            let mut i = 0;
            let mut result = Ok(());
            while i < dirty.len() {
                let start = dirty[i].0;
                let mut j = i;
                buf.clear();
                while j < dirty.len() && dirty[j].0 == start + (j - i) as u64 && j - i < WRITE_RUN {
                    let (p, s) = dirty[j];
                    let n = Cache::page_len(dev_len, p);
                    buf.extend_from_slice(&self.data[s * PAGE..s * PAGE + n]);
                    j += 1;
                }
                if let Err(e) = dev.write_at(&buf, start * PAGE as u64) {
                    result = Err(e);
                    break;
                }
                for &(_, s) in &dirty[i..j] {
                    self.slots[s].dirty = false;
                    self.dirty -= 1;
                }
                i = j;
            }
            self.scratch = buf;
            result
        }

        pub fn discard(
            &mut self,
            dev: &dyn BlockDevice,
            dev_len: u64,
            offset: u64,
            len: u64,
        ) -> Result<()> {
            let end = match offset.checked_add(len) {
                Some(e) if e <= dev_len => e,
                _ => return Err(out_of_range(dev, offset, len, dev_len)),
            };
            if len == 0 {
                return Ok(());
            }
            self.write_back(dev)?;
            dev.discard(offset, len)?;
            for p in offset / PAGE as u64..=(end - 1) / PAGE as u64 {
                if let Some(s) = self.map.remove(&p) {
                    self.slots[s] = Slot::default();
                    self.free.push(s);
                }
            }
            Ok(())
        }

        #[cfg(test)]
        pub fn dirty_pages(&self) -> usize {
            self.dirty
        }
    }
}

// ---- The adapter ---------------------------------------------------------------------------

/// An open ext2/3/4 filesystem.
pub struct Ext4 {
    fs: Filsys,
    /// What the C side's I/O channel points at; must outlive `fs`.
    ops: Box<DevOps>,
    io: Box<IoState>,
    fs_type: &'static str,
    read_only: bool,
    sb: RawSuper,
    /// Blocks statfs leaves out (bsddf), fixed while open.
    overhead: u64,
    /// Metadata changed since the last sync (superblock, descriptors, bitmaps to write).
    changed: bool,
}

// SAFETY: the libext2fs handle and the boxes it points into belong to this value alone,
// and every use goes through `&mut self`; libext2fs keeps no thread-local state.
unsafe impl Send for Ext4 {}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if !self.fs.is_null() {
            // SAFETY: `fs` came from strata_ext4_open and is freed once; freeing writes
            // nothing (dropping without close abandons unwritten changes).
            unsafe { strata_ext4_free(self.fs) };
            self.fs = std::ptr::null_mut();
        }
        let _ = &self.ops;
    }
}

/// Opens the ext2/3/4 filesystem on `dev`; `fs_type` is what `detect` called it.
pub fn open(fs_type: &str, dev: SharedDevice, opts: OpenOptions) -> FsResult<Box<dyn GuestFs>> {
    Ok(Box::new(Ext4::open(fs_type, dev, opts)?))
}

fn c_name(name: &[u8]) -> FsResult<CString> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
        return Err(FsError::new(
            libc::EINVAL,
            format!("{:?} is not a file name", String::from_utf8_lossy(name)),
        ));
    }
    if name.len() > NAME_MAX {
        return Err(FsError::new(
            libc::ENAMETOOLONG,
            format!(
                "a name of {} bytes (ext2/3/4 names hold at most {NAME_MAX})",
                name.len()
            ),
        ));
    }
    CString::new(name).map_err(|_| FsError::new(libc::EINVAL, "a file name holding a NUL byte"))
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn kind_of(mode: u32, ino: Ino) -> FsResult<FileKind> {
    FileKind::from_mode(mode).ok_or_else(|| {
        FsError::new(
            libc::EUCLEAN,
            format!("inode {ino} has no valid file type (mode {mode:o})"),
        )
    })
}

fn dirent_kind(ft: u32) -> Option<FileKind> {
    Some(match ft {
        1 => FileKind::Regular,
        2 => FileKind::Directory,
        3 => FileKind::CharDevice,
        4 => FileKind::BlockDevice,
        5 => FileKind::Fifo,
        6 => FileKind::Socket,
        7 => FileKind::Symlink,
        _ => return None,
    })
}

fn timespec(sec: i64, nsec: u32) -> Timespec {
    Timespec {
        sec,
        nsec: nsec.min(999_999_999),
    }
}

fn ino32(ino: Ino) -> FsResult<u32> {
    match u32::try_from(ino) {
        Ok(i) if i != 0 => Ok(i),
        _ => Err(FsError::new(
            libc::ESTALE,
            format!("{ino} is not an ext2/3/4 inode number"),
        )),
    }
}

impl Ext4 {
    pub fn open(fs_type: &str, dev: SharedDevice, opts: OpenOptions) -> FsResult<Ext4> {
        let fs_type: &'static str = match fs_type {
            "ext2" => "ext2",
            "ext3" => "ext3",
            _ => "ext4",
        };
        let what = format!("the {fs_type} filesystem on {}", dev.describe());
        let read_only = opts.read_only;
        if !read_only && dev.is_read_only() {
            return Err(FsError::new(
                libc::EROFS,
                format!("{what} cannot be written: the device is read-only"),
            ));
        }
        let check = SuperCheck::read(&*dev).map_err(|e| e.context(&what))?;
        if let Some(e) = check.refusal(&what, read_only) {
            return Err(e);
        }
        if read_only && check.incompat & INCOMPAT_RECOVER != 0 {
            tracing::warn!(
                "{what}: its journal needs recovery; reading it without replaying the journal \
                 may show stale or inconsistent data"
            );
        }

        let io = Box::new(IoState {
            len: dev.len(),
            dev,
            writable: !read_only,
            cache: Mutex::new(cache::Cache::new()),
            last_error: Mutex::new(None),
        });
        let ops = Box::new(DevOps {
            ctx: &*io as *const IoState as *const c_void,
            read: dev_read,
            write: dev_write,
            flush: dev_flush,
            discard: dev_discard,
        });
        let mut fs: Filsys = std::ptr::null_mut();
        // SAFETY: `ops` and `io` are boxed (stable addresses) and moved into the Ext4 that
        // owns `fs`, so they outlive it; `fs` is written by the call.
        let code = unsafe { strata_ext4_open(&*ops, c_int::from(!read_only), &mut fs) };
        let mut me = Ext4 {
            fs,
            ops,
            io,
            fs_type,
            read_only,
            sb: RawSuper::default(),
            overhead: 0,
            changed: false,
        };
        if code != 0 || me.fs.is_null() {
            me.fs = std::ptr::null_mut();
            return Err(me.error(if code == 0 { libc::EIO as c_long } else { code }, &what));
        }
        me.refresh_super();
        let sb = me.sb;
        if sb.blocksize < 1024 || sb.blocksize > 65536 || sb.inodes_count < ROOT_INO {
            return Err(FsError::new(
                libc::EUCLEAN,
                format!("{what}: the superblock is damaged"),
            ));
        }
        if !read_only
            && sb
                .blocks_count
                .checked_mul(u64::from(sb.blocksize))
                .is_none_or(|n| n > me.io.len)
        {
            return Err(FsError::new(
                libc::EUCLEAN,
                format!(
                    "{what} cannot be written: it claims {} blocks of {} bytes but the \
                     device holds {} bytes (a truncated image?)",
                    sb.blocks_count, sb.blocksize, me.io.len
                ),
            ));
        }
        me.overhead = if sb.overhead_clusters != 0 {
            sb.overhead_clusters
                .saturating_mul(u64::from(sb.cluster_ratio.max(1)))
        } else {
            let mut o = 0u64;
            // SAFETY: `fs` is open.
            let code = unsafe { strata_ext4_overhead(me.fs, &mut o) };
            me.check(code, "counting the filesystem's metadata blocks")?;
            o
        };
        if !read_only {
            // SAFETY: `fs` is open read-write with its bitmaps loaded.
            me.changed = unsafe { strata_ext4_fix_counts(me.fs) } != 0;
            me.refresh_super();
        }
        Ok(me)
    }

    fn refresh_super(&mut self) {
        // SAFETY: `fs` is open; the shim fills the struct.
        unsafe { strata_ext4_super(self.fs, &mut self.sb) };
    }

    /// The FsError for a libext2fs error code, with the device's reason if it gave one.
    fn error(&self, code: c_long, what: impl std::fmt::Display) -> FsError {
        // SAFETY: pure functions of the code; the message is a static string or NULL.
        let errno = unsafe { strata_ext4_errno(code) };
        let mut detail = what.to_string();
        if !(1..4096).contains(&code) {
            // SAFETY: as above.
            let msg = unsafe { strata_ext4_message(code) };
            if !msg.is_null() {
                // SAFETY: error_message returns a NUL-terminated string.
                let msg = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
                detail = format!("{detail}: {msg}");
            }
        }
        if let Some(dev) = self.io.last_error.lock().take() {
            detail = format!("{detail} ({dev})");
        }
        FsError::new(errno, detail)
    }

    fn check(&self, code: c_long, what: impl std::fmt::Display) -> FsResult<()> {
        if code == 0 {
            Ok(())
        } else {
            Err(self.error(code, what))
        }
    }

    fn writable(&self, what: impl std::fmt::Display) -> FsResult<()> {
        if self.read_only {
            Err(FsError::new(
                libc::EROFS,
                format!("{what}: the filesystem is open read-only"),
            ))
        } else {
            Ok(())
        }
    }

    fn raw_stat(&mut self, ino: Ino) -> FsResult<RawStat> {
        let i = ino32(ino)?;
        let mut st = RawStat::default();
        // SAFETY: `fs` is open; the shim fills `st`.
        let code = unsafe { strata_ext4_stat(self.fs, i, &mut st) };
        self.check(code, format_args!("reading inode {ino}"))?;
        // Nothing holds an unlinked inode open here, so no links means freed.
        if st.links == 0 {
            return Err(FsError::new(
                libc::ESTALE,
                format!("inode {ino} is not in use"),
            ));
        }
        Ok(st)
    }

    /// The inode of directory `dir`, or ENOTDIR.
    fn dir_stat(&mut self, dir: Ino) -> FsResult<RawStat> {
        let st = self.raw_stat(dir)?;
        if st.mode & 0o170000 != 0o040000 {
            return Err(FsError::new(
                libc::ENOTDIR,
                format!("inode {dir} is not a directory"),
            ));
        }
        Ok(st)
    }

    fn lookup_c(&mut self, dir: Ino, name: &CStr) -> FsResult<Option<Ino>> {
        let d = ino32(dir)?;
        let bytes = name.to_bytes();
        let mut ino = 0u32;
        // SAFETY: `name` is NUL-terminated and `bytes.len()` long.
        let code = unsafe {
            strata_ext4_lookup(self.fs, d, name.as_ptr(), bytes.len() as c_int, &mut ino)
        };
        if code != 0 {
            let e = self.error(
                code,
                format_args!("looking up {:?} in directory {dir}", show(bytes)),
            );
            if e.errno == libc::ENOENT {
                return Ok(None);
            }
            return Err(e);
        }
        if ino == 0 {
            return Ok(None);
        }
        Ok(Some(Ino::from(ino)))
    }

    /// Free blocks, as libext2fs counts them now.
    fn free_blocks(&mut self) -> u64 {
        self.refresh_super();
        self.sb.free_blocks
    }

    /// Metadata blocks (extent tree or indirect blocks) that mapping `n` new blocks may
    /// allocate, at worst one 12-byte extent per block.
    fn map_overhead(&self, n: u64) -> u64 {
        n.saturating_mul(12) / u64::from(self.sb.blocksize.max(1024)) + 4
    }

    /// ENOSPC unless `blocks` more blocks (and their metadata) can be allocated safely.
    fn ensure_space(&mut self, blocks: u64, what: impl std::fmt::Display) -> FsResult<()> {
        let need = blocks
            .saturating_add(if blocks > 0 {
                self.map_overhead(blocks)
            } else {
                0
            })
            .saturating_add(SPARE_BLOCKS);
        if self.free_blocks() >= need {
            return Ok(());
        }
        Err(FsError::new(
            libc::ENOSPC,
            format!("{what}: the filesystem is full"),
        ))
    }

    fn regular(&mut self, ino: Ino, what: &str) -> FsResult<RawStat> {
        let st = self.raw_stat(ino)?;
        match st.mode & 0o170000 {
            0o100000 => Ok(st),
            0o040000 => Err(FsError::new(
                libc::EISDIR,
                format!("{what} inode {ino}: is a directory"),
            )),
            _ => Err(FsError::new(
                libc::EINVAL,
                format!("{what} inode {ino}: not a regular file"),
            )),
        }
    }

    /// The largest file size this filesystem stores (the kernel's s_maxbytes, roughly:
    /// 2^32 - 1 blocks with extents, the indirect-block limit without).
    fn max_file_size(&self, flags: u32) -> u64 {
        let bs = u64::from(self.sb.blocksize);
        let blocks = if flags & 0x80000 != 0 {
            // EXT4_EXTENTS_FL
            u64::from(u32::MAX)
        } else {
            let a = bs / 4;
            12 + a + a * a + a * a * a
        };
        let mut max = blocks.saturating_mul(bs);
        if self.sb.ro_compat & RO_COMPAT_HUGE_FILE == 0 {
            // i_blocks counts 512-byte sectors in 32 bits.
            max = max.min(((1u64 << 32) - 1) * 512);
        }
        max.min(i64::MAX as u64)
    }

    /// Whether `ancestor` is `dir` or one of its ancestors ('..' followed up to the root).
    fn is_ancestor(&mut self, ancestor: Ino, dir: Ino) -> FsResult<bool> {
        let dotdot = c"..";
        let mut d = dir;
        for _ in 0..65536 {
            if d == ancestor {
                return Ok(true);
            }
            if d == ROOT_INO {
                return Ok(false);
            }
            d = match self.lookup_c(d, dotdot)? {
                Some(p) => p,
                None => {
                    return Err(FsError::new(
                        libc::EUCLEAN,
                        format!("directory {d} has no '..' entry"),
                    ))
                }
            };
        }
        Err(FsError::new(
            libc::EUCLEAN,
            format!("the '..' entries above directory {dir} loop"),
        ))
    }

    fn dir_is_empty(&mut self, dir: Ino) -> FsResult<bool> {
        let d = ino32(dir)?;
        let mut empty: c_int = 1;
        // SAFETY: `fs` is open.
        let code = unsafe { strata_ext4_dir_is_empty(self.fs, d, &mut empty) };
        self.check(code, format_args!("reading directory {dir}"))?;
        Ok(empty != 0)
    }

    /// EMLINK when `dir` cannot take another subdirectory (as the kernel's
    /// EXT4_DIR_LINK_MAX: only an indexed directory on a dir_nlink filesystem can).
    fn check_subdir_room(&self, dir: Ino, st: &RawStat) -> FsResult<()> {
        if st.links >= LINK_MAX
            && !(self.sb.ro_compat & RO_COMPAT_DIR_NLINK != 0 && st.flags & INDEX_FL != 0)
        {
            return Err(FsError::new(
                libc::EMLINK,
                format!("directory {dir} has the most subdirectories it can hold"),
            ));
        }
        Ok(())
    }

    /// Write a chunk of at most WRITE_CHUNK bytes, shrunk to what free space allows.
    fn write_chunk(&mut self, ino: Ino, offset: u64, data: &[u8]) -> FsResult<usize> {
        let i = ino32(ino)?;
        let bs = u64::from(self.sb.blocksize);
        let first = offset / bs;
        let last = (offset + data.len() as u64 - 1) / bs;
        let mut blocks = last - first + 1;
        let free = self.free_blocks();
        let mut len = data.len();
        if free < blocks + self.map_overhead(blocks) + SPARE_BLOCKS {
            // Near full: count what is really unmapped, then cut the chunk to what fits.
            let mut unmapped = 0u64;
            // SAFETY: `fs` is open.
            let code = unsafe { strata_ext4_unmapped(self.fs, i, first, blocks, &mut unmapped) };
            self.check(code, format_args!("mapping inode {ino}"))?;
            if free < unmapped + self.map_overhead(unmapped) + SPARE_BLOCKS {
                let room = free.saturating_sub(SPARE_BLOCKS + 4) * bs / (bs + 12);
                if room == 0 {
                    return Err(FsError::new(
                        libc::ENOSPC,
                        format!("writing inode {ino} at {offset}: the filesystem is full"),
                    ));
                }
                // `room` new blocks fit; chunk = that many blocks (all may be new).
                blocks = room.min(blocks);
                let cut_end = (first + blocks) * bs;
                len = (cut_end - offset).min(len as u64) as usize;
                if len == 0 {
                    return Err(FsError::new(
                        libc::ENOSPC,
                        format!("writing inode {ino} at {offset}: the filesystem is full"),
                    ));
                }
            }
        }
        let mut written = 0u32;
        // SAFETY: `data[..len]` is valid for reads; `fs` is open.
        let code = unsafe {
            strata_ext4_write(
                self.fs,
                i,
                offset,
                data.as_ptr() as *const c_void,
                len as u32,
                &mut written,
            )
        };
        self.changed = true;
        self.check(code, format_args!("writing inode {ino} at {offset}"))?;
        Ok((written as usize).min(len))
    }
}

extern "C" fn collect_dirent(
    ctx: *mut c_void,
    ino: u32,
    name: *const c_char,
    len: u32,
    ft: u32,
) -> c_int {
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: ctx is the Vec readdir passed in, alive for the call.
        let out = unsafe { &mut *(ctx as *mut Vec<(Vec<u8>, u32, u32)>) };
        if name.is_null() || len as usize > NAME_MAX || len == 0 {
            return;
        }
        // SAFETY: the shim checked the name lies inside the directory block.
        let name = unsafe { std::slice::from_raw_parts(name as *const u8, len as usize) };
        out.push((name.to_vec(), ino, ft));
    }));
    c_int::from(r.is_err())
}

extern "C" fn collect_run(ctx: *mut c_void, block: u64, count: u64) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: ctx is the Vec used_blocks passed in, alive for the call.
        let out = unsafe { &mut *(ctx as *mut Vec<(u64, u64)>) };
        out.push((block, count));
    }));
}

impl GuestFs for Ext4 {
    fn fs_type(&self) -> &'static str {
        self.fs_type
    }

    fn root(&self) -> Ino {
        ROOT_INO
    }

    fn lookup(&mut self, dir: Ino, name: &[u8]) -> FsResult<Ino> {
        let cname = c_name(name)?;
        self.dir_stat(dir)?;
        self.lookup_c(dir, &cname)?.ok_or_else(|| {
            FsError::new(libc::ENOENT, format!("{:?} in directory {dir}", show(name)))
        })
    }

    fn stat(&mut self, ino: Ino) -> FsResult<Stat> {
        let st = self.raw_stat(ino)?;
        let kind = kind_of(st.mode, ino)?;
        let rdev = if matches!(kind, FileKind::CharDevice | FileKind::BlockDevice) {
            let (major, minor) = if st.rdev_old != 0 {
                ((st.rdev_old >> 8) & 0xff, st.rdev_old & 0xff)
            } else {
                let d = st.rdev_new;
                ((d & 0xfff00) >> 8, (d & 0xff) | ((d >> 12) & 0xfff00))
            };
            libc::makedev(major, minor)
        } else {
            0
        };
        Ok(Stat {
            ino,
            kind,
            mode: st.mode,
            nlink: st.links,
            uid: st.uid,
            gid: st.gid,
            size: st.size,
            blocks: st.blocks,
            atime: timespec(st.atime, st.atime_ns),
            mtime: timespec(st.mtime, st.mtime_ns),
            ctime: timespec(st.ctime, st.ctime_ns),
            rdev,
            blksize: self.sb.blocksize,
        })
    }

    fn readdir(&mut self, dir: Ino) -> FsResult<Vec<DirEntry>> {
        self.dir_stat(dir)?;
        let d = ino32(dir)?;
        let mut raw: Vec<(Vec<u8>, u32, u32)> = Vec::new();
        // SAFETY: `raw` outlives the call; the callback only pushes into it.
        let code = unsafe {
            strata_ext4_readdir(
                self.fs,
                d,
                collect_dirent,
                &mut raw as *mut _ as *mut c_void,
            )
        };
        self.check(code, format_args!("reading directory {dir}"))?;
        let filetype = self.sb.incompat & INCOMPAT_FILETYPE != 0;
        let mut out = Vec::with_capacity(raw.len());
        for (name, ino, ft) in raw {
            if name.contains(&b'/') || name.contains(&0) {
                tracing::warn!(
                    "directory {dir}: skipping the entry {:?}, which is not a file name",
                    show(&name)
                );
                continue;
            }
            let kind = match dirent_kind(ft).filter(|_| filetype) {
                Some(k) => k,
                None => kind_of(self.raw_stat(Ino::from(ino))?.mode, Ino::from(ino))?,
            };
            out.push(DirEntry {
                name,
                ino: Ino::from(ino),
                kind,
            });
        }
        Ok(out)
    }

    fn read(&mut self, ino: Ino, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let st = self.regular(ino, "reading")?;
        if offset >= st.size || buf.is_empty() {
            return Ok(0);
        }
        let want = (st.size - offset).min(buf.len() as u64) as usize;
        let i = ino32(ino)?;
        let mut done = 0usize;
        while done < want {
            let n = (want - done).min(READ_CHUNK);
            let mut got = 0u32;
            // SAFETY: `buf[done..done + n]` is valid for writes.
            let code = unsafe {
                strata_ext4_read(
                    self.fs,
                    i,
                    offset + done as u64,
                    buf[done..].as_mut_ptr() as *mut c_void,
                    n as u32,
                    &mut got,
                )
            };
            self.check(
                code,
                format_args!("reading inode {ino} at {}", offset + done as u64),
            )?;
            let got = (got as usize).min(n);
            if got == 0 {
                break;
            }
            done += got;
        }
        Ok(done)
    }

    fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> FsResult<()> {
        self.writable(format_args!("writing inode {ino}"))?;
        let st = self.regular(ino, "writing")?;
        if data.is_empty() {
            return Ok(());
        }
        let max = self.max_file_size(st.flags);
        match offset.checked_add(data.len() as u64) {
            Some(end) if end <= max => {}
            _ => {
                return Err(FsError::new(
                    libc::EFBIG,
                    format!(
                        "writing inode {ino}: {} bytes at {offset} go past the largest file \
                         this filesystem holds ({max} bytes)",
                        data.len()
                    ),
                ))
            }
        }
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(WRITE_CHUNK);
            let w = self.write_chunk(ino, offset + done as u64, &data[done..done + n])?;
            if w == 0 {
                return Err(FsError::new(
                    libc::EIO,
                    format!("writing inode {ino}: libext2fs wrote nothing"),
                ));
            }
            done += w;
        }
        Ok(())
    }

    fn truncate(&mut self, ino: Ino, size: u64) -> FsResult<()> {
        self.writable(format_args!("truncating inode {ino}"))?;
        let st = self.regular(ino, "truncating")?;
        let max = self.max_file_size(st.flags);
        if size > max {
            return Err(FsError::new(
                libc::EFBIG,
                format!("truncating inode {ino} to {size} bytes: the largest file is {max}"),
            ));
        }
        let i = ino32(ino)?;
        // SAFETY: `fs` is open.
        let code = unsafe { strata_ext4_truncate(self.fs, i, size) };
        self.changed = true;
        self.check(code, format_args!("truncating inode {ino} to {size} bytes"))
    }

    fn create(&mut self, dir: Ino, name: &[u8], mode: u32, owner: Owner) -> FsResult<Ino> {
        let what = format!("creating {:?} in directory {dir}", show(name));
        self.writable(&what)?;
        let cname = c_name(name)?;
        self.dir_stat(dir)?;
        if self.lookup_c(dir, &cname)?.is_some() {
            return Err(FsError::new(libc::EEXIST, what));
        }
        self.ensure_space(0, &what)?;
        let d = ino32(dir)?;
        let mut ino = 0u32;
        // SAFETY: `cname` is NUL-terminated; `fs` is open.
        let code = unsafe {
            strata_ext4_create(
                self.fs,
                d,
                cname.as_ptr(),
                0o100000 | (mode & 0o7777),
                owner.uid,
                owner.gid,
                0,
                &mut ino,
            )
        };
        self.changed = true;
        self.check(code, &what)?;
        Ok(Ino::from(ino))
    }

    fn mkdir(&mut self, dir: Ino, name: &[u8], mode: u32, owner: Owner) -> FsResult<Ino> {
        let what = format!("making directory {:?} in directory {dir}", show(name));
        self.writable(&what)?;
        let cname = c_name(name)?;
        let parent = self.dir_stat(dir)?;
        if self.lookup_c(dir, &cname)?.is_some() {
            return Err(FsError::new(libc::EEXIST, what));
        }
        self.check_subdir_room(dir, &parent)?;
        self.ensure_space(1, &what)?;
        let d = ino32(dir)?;
        let mut ino = 0u32;
        // SAFETY: as in create.
        let code = unsafe {
            strata_ext4_mkdir(
                self.fs,
                d,
                cname.as_ptr(),
                mode & 0o7777,
                owner.uid,
                owner.gid,
                &mut ino,
            )
        };
        self.changed = true;
        self.check(code, &what)?;
        Ok(Ino::from(ino))
    }

    fn symlink(&mut self, dir: Ino, name: &[u8], target: &[u8], owner: Owner) -> FsResult<Ino> {
        let what = format!("making symlink {:?} in directory {dir}", show(name));
        self.writable(&what)?;
        let cname = c_name(name)?;
        if target.is_empty() {
            return Err(FsError::new(libc::ENOENT, format!("{what}: empty target")));
        }
        if target.len() >= (self.sb.blocksize as usize).min(4096) {
            return Err(FsError::new(
                libc::ENAMETOOLONG,
                format!("{what}: a target of {} bytes", target.len()),
            ));
        }
        let ctarget = CString::new(target)
            .map_err(|_| FsError::new(libc::EINVAL, format!("{what}: the target holds NUL")))?;
        self.dir_stat(dir)?;
        if self.lookup_c(dir, &cname)?.is_some() {
            return Err(FsError::new(libc::EEXIST, what));
        }
        self.ensure_space(1, &what)?;
        let d = ino32(dir)?;
        let mut ino = 0u32;
        // SAFETY: both strings are NUL-terminated; `fs` is open.
        let code = unsafe {
            strata_ext4_symlink(
                self.fs,
                d,
                cname.as_ptr(),
                ctarget.as_ptr(),
                owner.uid,
                owner.gid,
                &mut ino,
            )
        };
        self.changed = true;
        self.check(code, &what)?;
        Ok(Ino::from(ino))
    }

    fn link(&mut self, ino: Ino, dir: Ino, name: &[u8]) -> FsResult<()> {
        let what = format!("linking inode {ino} as {:?} in directory {dir}", show(name));
        self.writable(&what)?;
        let cname = c_name(name)?;
        let st = self.raw_stat(ino)?;
        if st.mode & 0o170000 == 0o040000 {
            return Err(FsError::new(
                libc::EPERM,
                format!("{what}: directories cannot be hard-linked"),
            ));
        }
        if st.links >= LINK_MAX {
            return Err(FsError::new(
                libc::EMLINK,
                format!("{what}: too many links"),
            ));
        }
        self.dir_stat(dir)?;
        if self.lookup_c(dir, &cname)?.is_some() {
            return Err(FsError::new(libc::EEXIST, what));
        }
        self.ensure_space(0, &what)?;
        let (i, d) = (ino32(ino)?, ino32(dir)?);
        // SAFETY: as in create.
        let code = unsafe { strata_ext4_hardlink(self.fs, i, d, cname.as_ptr()) };
        self.changed = true;
        self.check(code, &what)
    }

    fn unlink(&mut self, dir: Ino, name: &[u8]) -> FsResult<()> {
        let what = format!("removing {:?} from directory {dir}", show(name));
        self.writable(&what)?;
        let cname = c_name(name)?;
        self.dir_stat(dir)?;
        let ino = self
            .lookup_c(dir, &cname)?
            .ok_or_else(|| FsError::new(libc::ENOENT, what.clone()))?;
        let st = self.raw_stat(ino)?;
        if st.mode & 0o170000 == 0o040000 {
            return Err(FsError::new(libc::EISDIR, what));
        }
        let (d, i) = (ino32(dir)?, ino32(ino)?);
        // SAFETY: as in create.
        let code = unsafe { strata_ext4_remove(self.fs, d, cname.as_ptr(), i, 0) };
        self.changed = true;
        self.check(code, &what)
    }

    fn rmdir(&mut self, dir: Ino, name: &[u8]) -> FsResult<()> {
        let what = format!("removing directory {:?} from directory {dir}", show(name));
        self.writable(&what)?;
        let cname = c_name(name)?;
        self.dir_stat(dir)?;
        let ino = self
            .lookup_c(dir, &cname)?
            .ok_or_else(|| FsError::new(libc::ENOENT, what.clone()))?;
        let st = self.raw_stat(ino)?;
        if st.mode & 0o170000 != 0o040000 {
            return Err(FsError::new(libc::ENOTDIR, what));
        }
        if ino == ROOT_INO || ino == dir {
            return Err(FsError::new(libc::EBUSY, what));
        }
        if !self.dir_is_empty(ino)? {
            return Err(FsError::new(libc::ENOTEMPTY, what));
        }
        let (d, i) = (ino32(dir)?, ino32(ino)?);
        // SAFETY: as in create.
        let code = unsafe { strata_ext4_remove(self.fs, d, cname.as_ptr(), i, 1) };
        self.changed = true;
        self.check(code, &what)
    }

    fn rename(&mut self, from_dir: Ino, from: &[u8], to_dir: Ino, to: &[u8]) -> FsResult<()> {
        let what = format!(
            "renaming {:?} in directory {from_dir} to {:?} in directory {to_dir}",
            show(from),
            show(to)
        );
        self.writable(&what)?;
        let cfrom = c_name(from)?;
        let cto = c_name(to)?;
        self.dir_stat(from_dir)?;
        let to_st = self.dir_stat(to_dir)?;
        let ino = self
            .lookup_c(from_dir, &cfrom)?
            .ok_or_else(|| FsError::new(libc::ENOENT, what.clone()))?;
        let target = self.lookup_c(to_dir, &cto)?;
        if target == Some(ino) {
            // Two names of one inode (or the same name): rename(2) does nothing.
            return Ok(());
        }
        let st = self.raw_stat(ino)?;
        let is_dir = st.mode & 0o170000 == 0o040000;
        if is_dir && self.is_ancestor(ino, to_dir)? {
            return Err(FsError::new(
                libc::EINVAL,
                format!("{what}: a directory cannot move into itself"),
            ));
        }
        if let Some(t) = target {
            let tst = self.raw_stat(t)?;
            let t_dir = tst.mode & 0o170000 == 0o040000;
            if is_dir && !t_dir {
                return Err(FsError::new(libc::ENOTDIR, what));
            }
            if !is_dir && t_dir {
                return Err(FsError::new(libc::EISDIR, what));
            }
            if t_dir && !self.dir_is_empty(t)? {
                return Err(FsError::new(libc::ENOTEMPTY, what));
            }
        } else {
            if is_dir && from_dir != to_dir {
                self.check_subdir_room(to_dir, &to_st)?;
            }
            self.ensure_space(0, &what)?;
        }
        let (fd, td, i) = (ino32(from_dir)?, ino32(to_dir)?, ino32(ino)?);
        let t = match target {
            Some(t) => ino32(t)?,
            None => 0,
        };
        // SAFETY: both names are NUL-terminated; `fs` is open.
        let code =
            unsafe { strata_ext4_rename(self.fs, fd, cfrom.as_ptr(), td, cto.as_ptr(), i, t) };
        self.changed = true;
        self.check(code, &what)
    }

    fn readlink(&mut self, ino: Ino) -> FsResult<Vec<u8>> {
        let st = self.raw_stat(ino)?;
        if st.mode & 0o170000 != 0o120000 {
            return Err(FsError::new(
                libc::EINVAL,
                format!("inode {ino} is not a symlink"),
            ));
        }
        let i = ino32(ino)?;
        let cap = self.sb.blocksize.max(4096);
        let mut buf = vec![0u8; cap as usize];
        let mut len = 0u32;
        // SAFETY: `buf` holds `cap` bytes.
        let code = unsafe {
            strata_ext4_readlink(self.fs, i, buf.as_mut_ptr() as *mut c_char, cap, &mut len)
        };
        self.check(code, format_args!("reading symlink {ino}"))?;
        buf.truncate((len as usize).min(cap as usize));
        Ok(buf)
    }

    fn setattr(&mut self, ino: Ino, attr: &SetAttr) -> FsResult<()> {
        let what = format!("changing the attributes of inode {ino}");
        self.writable(&what)?;
        let st = self.raw_stat(ino)?;
        let mut mode = st.mode;
        if let Some(m) = attr.mode {
            mode = (mode & 0o170000) | (m & 0o7777);
        } else if (attr.uid.is_some() || attr.gid.is_some()) && mode & 0o170000 != 0o040000 {
            // chown(2) clears set-user-ID, and set-group-ID when group-executable, on
            // non-directories, even for root (notify_change's ATTR_KILL_SUID/SGID).
            mode &= !0o4000;
            if mode & 0o2010 == 0o2010 {
                mode &= !0o2000;
            }
        }
        let raw = RawSetAttr {
            set_mode: u32::from(mode != st.mode || attr.mode.is_some()),
            mode,
            set_uid: u32::from(attr.uid.is_some()),
            uid: attr.uid.unwrap_or(0),
            set_gid: u32::from(attr.gid.is_some()),
            gid: attr.gid.unwrap_or(0),
            set_atime: u32::from(attr.atime.is_some()),
            atime: attr.atime.map_or(0, |t| t.sec),
            atime_ns: attr.atime.map_or(0, |t| t.nsec),
            set_mtime: u32::from(attr.mtime.is_some()),
            mtime: attr.mtime.map_or(0, |t| t.sec),
            mtime_ns: attr.mtime.map_or(0, |t| t.nsec),
        };
        let i = ino32(ino)?;
        // SAFETY: `fs` is open; `raw` is read by the call.
        let code = unsafe { strata_ext4_setattr(self.fs, i, &raw) };
        self.changed = true;
        self.check(code, &what)
    }

    fn statvfs(&mut self) -> FsResult<StatVfs> {
        // As the kernel's ext4_statfs: bsddf (metadata not counted), and bavail leaves out
        // the reserved blocks and the 2% (at most 4096 clusters) the kernel keeps back for
        // extent-tree growth (s_resv_clusters) on extent filesystems.
        self.refresh_super();
        let sb = self.sb;
        let ratio = u64::from(sb.cluster_ratio.max(1));
        let resv = if sb.incompat & INCOMPAT_EXTENTS != 0 {
            ((sb.blocks_count / ratio) / 50).min(4096) * ratio
        } else {
            0
        };
        let bfree = sb.free_blocks;
        let reserved = sb.r_blocks.saturating_add(resv);
        let lo = u64::from_le_bytes(sb.uuid[..8].try_into().unwrap_or_default());
        let hi = u64::from_le_bytes(sb.uuid[8..].try_into().unwrap_or_default());
        Ok(StatVfs {
            bsize: u64::from(sb.blocksize),
            frsize: u64::from(sb.blocksize),
            blocks: sb.blocks_count.saturating_sub(self.overhead),
            bfree,
            bavail: bfree.saturating_sub(reserved),
            files: sb.inodes_count,
            ffree: sb.free_inodes,
            favail: sb.free_inodes,
            fsid: lo ^ hi,
            flag: if self.read_only { libc::ST_RDONLY } else { 0 },
            namemax: NAME_MAX as u64,
        })
    }

    fn used_blocks(&mut self) -> FsResult<Vec<(u64, u64)>> {
        // Blocks that transactions in the journal allocate are not yet in the bitmaps: a
        // capture that kept only the bitmaps' blocks would lose them when the deployed
        // volume's kernel replays the journal. The caller keeps the filesystem whole.
        if self.sb.incompat & INCOMPAT_RECOVER != 0 {
            return Err(FsError::new(
                libc::EUCLEAN,
                "its journal needs recovery, so the block bitmaps may not show every                  block in use",
            ));
        }
        let mut runs: Vec<(u64, u64)> = Vec::new();
        // SAFETY: `runs` outlives the call; the callback only pushes into it.
        let code = unsafe {
            strata_ext4_used_runs(self.fs, collect_run, &mut runs as *mut _ as *mut c_void)
        };
        self.check(code, "reading the block bitmap")?;
        let bs = u64::from(self.sb.blocksize);
        let dev_len = self.io.len;
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(runs.len() + 1);
        // A 1 KiB-block filesystem starts at block 1: block 0 is the boot block.
        if self.sb.first_data_block > 0 {
            out.push((0, self.sb.first_data_block.saturating_mul(bs)));
        }
        for (block, count) in runs {
            let start = block.saturating_mul(bs);
            let end = block.saturating_add(count).saturating_mul(bs).min(dev_len);
            if start >= end {
                continue;
            }
            match out.last_mut() {
                Some((s, l)) if *s + *l >= start => *l = (*l).max(end - *s),
                _ => out.push((start, end - start)),
            }
        }
        Ok(out)
    }

    fn sync(&mut self) -> FsResult<()> {
        if self.read_only {
            return Ok(());
        }
        // SAFETY: `fs` is open.
        let code = unsafe { strata_ext4_sync(self.fs, c_int::from(self.changed)) };
        self.check(code, "writing the filesystem back")?;
        self.changed = false;
        Ok(())
    }

    fn close(mut self: Box<Self>) -> FsResult<()> {
        let r = self.sync();
        // Dropping frees the filesystem without writing (everything was just written).
        drop(self);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::cache::{Cache, PAGE};
    use super::*;
    use crate::store::device::MemDevice;

    #[test]
    fn cache_reads_what_was_written_and_writes_back_in_order() {
        let dev = MemDevice::new(vec![7u8; 64 * PAGE + 100]);
        let len = dev.len();
        let mut c = Cache::with_pages(8);
        // Partial pages, a page straddle, the short last page.
        c.write(&dev, len, 10, &[1, 2, 3]).unwrap();
        c.write(&dev, len, PAGE as u64 - 2, &[9; 4]).unwrap();
        c.write(&dev, len, len - 3, &[5; 3]).unwrap();
        assert_eq!(dev.contents()[10], 7, "nothing written before write-back");
        let mut b = [0u8; 6];
        c.read(&dev, len, 9, &mut b[..5]).unwrap();
        assert_eq!(&b[..5], &[7, 1, 2, 3, 7]);
        // Enough traffic to evict: dirty pages go to the device first.
        for p in 10..40u64 {
            let mut x = [0u8; 8];
            c.read(&dev, len, p * PAGE as u64, &mut x).unwrap();
        }
        c.write_back(&dev).unwrap();
        assert_eq!(c.dirty_pages(), 0);
        let d = dev.contents();
        assert_eq!(&d[9..14], &[7, 1, 2, 3, 7]);
        assert_eq!(&d[PAGE - 2..PAGE + 2], &[9; 4]);
        assert_eq!(&d[d.len() - 3..], &[5; 3]);
        assert!(c.read(&dev, len, len - 2, &mut b[..3]).is_err());
    }

    #[test]
    fn cache_large_requests_bypass_it_but_see_dirty_pages() {
        let dev = MemDevice::new(vec![0u8; 256 * PAGE]);
        let len = dev.len();
        let mut c = Cache::with_pages(16);
        c.write(&dev, len, 5 * PAGE as u64 + 1, &[3; 10]).unwrap();
        let big = vec![4u8; 128 * PAGE];
        let mut out = vec![0u8; 100 * PAGE];
        c.read(&dev, len, 0, &mut out).unwrap();
        assert_eq!(&out[5 * PAGE + 1..5 * PAGE + 11], &[3; 10]);
        // A big unaligned write replaces cached pages in its middle.
        c.write(&dev, len, 100, &big).unwrap();
        c.read(&dev, len, 0, &mut out).unwrap();
        assert_eq!(out[99], 0);
        assert!(out[100..].iter().all(|&b| b == 4));
        // So does a small read of a page the cache held dirty before the big write.
        let mut page = [0u8; 16];
        c.read(&dev, len, 5 * PAGE as u64, &mut page).unwrap();
        assert_eq!(page, [4u8; 16]);
        c.write_back(&dev).unwrap();
        let d = dev.contents();
        assert!(d[100..100 + big.len()].iter().all(|&b| b == 4));
        assert_eq!(d[100 + big.len()], 0);
    }

    #[test]
    fn refusals_name_the_feature_or_state() {
        let ok = SuperCheck {
            state: 1,
            incompat: 0x2 | 0x40 | 0x80 | 0x200,
            ro_compat: 0x1 | 0x2 | 0x8 | 0x20 | 0x40 | 0x400,
            last_orphan: 0,
        };
        assert!(ok.refusal("fs", false).is_none());
        let dirty = SuperCheck {
            incompat: ok.incompat | INCOMPAT_RECOVER,
            ..ok
        };
        let e = dirty.refusal("fs", false).unwrap();
        assert!(e.detail.contains("needs recovery"), "{e}");
        assert!(dirty.refusal("fs", true).is_none());
        let inline = SuperCheck {
            incompat: ok.incompat | 0x8000,
            ..ok
        };
        let e = inline.refusal("fs", false).unwrap();
        assert_eq!(e.errno, libc::EOPNOTSUPP);
        assert!(e.detail.contains("inline_data"), "{e}");
        let unknown = SuperCheck {
            incompat: ok.incompat | 0x80000,
            ..ok
        };
        let e = unknown.refusal("fs", true).unwrap();
        assert!(e.detail.contains("0x80000"), "{e}");
        let errors = SuperCheck { state: 3, ..ok };
        assert!(errors
            .refusal("fs", false)
            .unwrap()
            .detail
            .contains("errors"));
        let unclean = SuperCheck { state: 0, ..ok };
        assert!(unclean
            .refusal("fs", false)
            .unwrap()
            .detail
            .contains("not cleanly unmounted"));
    }
}
