//! Filesystems inside a device, read and written in userspace: one `GuestFs` interface with
//! an adapter per filesystem, a mount table that resolves guest paths across several
//! mounted filesystems, and the worker process that runs all of it away from the process
//! that serves volumes.
//!
//! Map of this directory:
//! - `types.rs`   what the interface speaks: inode numbers, `Stat`, `DirEntry`, `FsError`
//! - `detect.rs`  which filesystem a device holds, its label and UUID (pure Rust, safe in any process)
//! - `mounts.rs`  the mount table and guest path resolution (`..`, symlinks, mountpoints)
//! - `memfs.rs`   an in-memory reference filesystem (the model in tests)
//! - `ops.rs`     path-level operations (write a file, mkdir -p, rm -rf, glob) on the mount table
//! - `session.rs` one disk being worked on: its devices, filesystems and mount table
//! - `inspect.rs` which device holds an OS root and what OS it is (guestfish's inspect-*)
//! - `frame.rs`   the length-prefixed postcard frames the worker and the VM's agent speak
//! - `worker/`    the worker process that runs all of the above, and its client
//! - `fat.rs`     FAT12/16/32 (the fatfs crate)
//! - `ext4.rs`    ext2/3/4 (libext2fs through `ext4_shim.c`)
//! - `ntfs.rs`    NTFS (libntfs-3g through `ntfs_shim.c`)
//! - `vm/`        XFS and btrfs (and ext4 whose journal needs replaying), in Debian's
//!   kernel under QEMU (TCG) in the worker's job
//!
//! Everything here is below the plan engine and above `disk/` (which names the devices) and
//! the store (which holds the blocks). Adapters parse untrusted images with C libraries:
//! they are only ever opened inside a worker process (see `worker`), never in a server.

pub mod detect;
pub mod ext4;
pub mod fat;
pub mod frame;
pub mod inspect;
pub mod memfs;
pub mod mounts;
pub mod ntfs;
pub mod ops;
pub mod session;
pub mod types;
pub mod vm;
pub mod worker;

pub use types::*;

use crate::store::device::SharedDevice;

/// A mounted filesystem, seen through inode numbers the way FUSE's low-level interface
/// sees one. Paths, `..`, symlinks and mount points are resolved above this (in the mount
/// table), so an adapter only ever deals with one directory entry at a time.
///
/// Conventions every adapter keeps (the model tests check them against the kernel):
/// - Names are one path component: never empty, never `.` or `..`, no `/` or NUL. Adapters
///   may refuse names their format cannot store (EINVAL) or that are too long
///   (ENAMETOOLONG).
/// - Errors carry the errno the Linux kernel gives for the same call on the same
///   filesystem: ENOENT for a missing entry, EEXIST when creating over one, ENOTDIR,
///   EISDIR, ENOTEMPTY, ENOSPC, EROFS on a read-only mount, EPERM where the format cannot
///   store a change (chown on FAT), EIO/EUCLEAN for a damaged structure.
/// - Modes passed in are permission bits only (`0o7777`); `Stat::mode` carries the file type
///   bits as well, as `st_mode` does.
/// - `ENOSPC` part-way through an operation leaves the filesystem consistent (fsck-clean
///   after `close`), with the operation either not done or partly done the way the kernel
///   leaves it (a short write keeps what was written).
/// - Nothing is guaranteed to reach the device before `sync` or `close`; after either
///   returns, the device holds a clean filesystem (journal empty, no orphans, counters
///   right). The device itself is flushed by the caller, so an operation is atomic.
pub trait GuestFs: Send {
    /// The filesystem type as `list-filesystems` prints it: `ext2`, `ext3`, `ext4`,
    /// `vfat`, `ntfs`.
    fn fs_type(&self) -> &'static str;

    fn root(&self) -> Ino;

    /// The inode `name` in directory `dir`; ENOENT if there is none.
    fn lookup(&mut self, dir: Ino, name: &[u8]) -> FsResult<Ino>;

    /// lstat: a symlink is described, not followed.
    fn stat(&mut self, ino: Ino) -> FsResult<Stat>;

    /// The entries of directory `dir`, without `.` and `..`, in the filesystem's order.
    fn readdir(&mut self, dir: Ino) -> FsResult<Vec<DirEntry>>;

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end of the file.
    fn read(&mut self, ino: Ino, offset: u64, buf: &mut [u8]) -> FsResult<usize>;

    /// Writes all of `data` at `offset`, growing the file if needed (a gap reads as zeros
    /// and is left sparse where the format can).
    fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> FsResult<()>;

    /// Sets the file's size, cutting or extending with zeros.
    fn truncate(&mut self, ino: Ino, size: u64) -> FsResult<()>;

    /// Creates an empty regular file; EEXIST if `name` exists.
    fn create(&mut self, dir: Ino, name: &[u8], mode: u32, owner: Owner) -> FsResult<Ino>;

    fn mkdir(&mut self, dir: Ino, name: &[u8], mode: u32, owner: Owner) -> FsResult<Ino>;

    /// Creates a symbolic link holding `target` (not resolved, not checked).
    fn symlink(&mut self, dir: Ino, name: &[u8], target: &[u8], owner: Owner) -> FsResult<Ino>;

    /// Adds a hard link `name` in `dir` to the existing non-directory `ino`.
    fn link(&mut self, ino: Ino, dir: Ino, name: &[u8]) -> FsResult<()>;

    /// Removes a non-directory entry (EISDIR for a directory); the inode goes when its
    /// last link does.
    fn unlink(&mut self, dir: Ino, name: &[u8]) -> FsResult<()>;

    /// Removes an empty directory (ENOTEMPTY otherwise, ENOTDIR for a non-directory).
    fn rmdir(&mut self, dir: Ino, name: &[u8]) -> FsResult<()>;

    /// rename(2): replaces an existing target (a non-directory by a non-directory, an
    /// empty directory by a directory); EINVAL when moving a directory into itself.
    fn rename(&mut self, from_dir: Ino, from: &[u8], to_dir: Ino, to: &[u8]) -> FsResult<()>;

    fn readlink(&mut self, ino: Ino) -> FsResult<Vec<u8>>;

    /// chmod, chown and utimens in one call; `None` fields are left alone. ctime is set to
    /// now when anything changes, as the kernel does.
    fn setattr(&mut self, ino: Ino, attr: &SetAttr) -> FsResult<()>;

    fn statvfs(&mut self) -> FsResult<StatVfs>;

    /// Byte ranges of the device that hold data or metadata, sorted and merged, from the
    /// allocation bitmaps: what a capture must keep. Everything else reads as garbage the
    /// filesystem does not care about.
    fn used_blocks(&mut self) -> FsResult<Vec<(u64, u64)>>;

    /// Writes everything back: afterwards the device holds a clean filesystem.
    fn sync(&mut self) -> FsResult<()>;

    /// `sync`, then releases the filesystem. Dropping a `GuestFs` without `close` abandons
    /// its unwritten changes (what did reach the device is discarded by not flushing it).
    fn close(self: Box<Self>) -> FsResult<()>;

    /// The volume label where it is not in a boot sector `detect` reads (NTFS keeps it in
    /// the MFT); `None` to keep what `detect` found.
    fn label(&mut self) -> Option<String> {
        None
    }
}

/// How to open a filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Refuse every change (EROFS); the device is never written.
    pub read_only: bool,
}

/// Opens the filesystem of type `fs_type` (as `detect` names it) on `dev`. Only call this
/// inside a worker process: the adapters run C code over untrusted bytes.
pub fn open(fs_type: &str, dev: SharedDevice, opts: OpenOptions) -> FsResult<Box<dyn GuestFs>> {
    match fs_type {
        "ext2" | "ext3" | "ext4" => ext4::open(fs_type, dev, opts),
        "vfat" => fat::open(dev, opts),
        "ntfs" => Ok(Box::new(ntfs::Ntfs::open(dev, opts)?)),
        _ => Err(FsError::new(
            libc::ENODEV,
            format!("no adapter for {fs_type:?} filesystems"),
        )),
    }
}
