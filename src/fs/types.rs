//! The vocabulary of the filesystem interface: inode numbers, file kinds, attributes,
//! directory entries, and the one error type (an errno with a message).
//!
//! All of it is plain data that crosses the worker's pipe (serde), so nothing here holds a
//! reference into an adapter.

use serde::{Deserialize, Serialize};

/// An inode number as the adapter defines it (ext4 and NTFS: the on-disk number; FAT: a
/// number the adapter hands out). Stable while the filesystem is open.
pub type Ino = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    Regular,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileKind {
    /// The `S_IFMT` bits of this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::Regular => 0o100000,
            FileKind::Directory => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::CharDevice => 0o020000,
            FileKind::BlockDevice => 0o060000,
            FileKind::Fifo => 0o010000,
            FileKind::Socket => 0o140000,
        }
    }

    /// The kind named by the `S_IFMT` bits of `mode`, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & 0o170000 {
            0o100000 => FileKind::Regular,
            0o040000 => FileKind::Directory,
            0o120000 => FileKind::Symlink,
            0o020000 => FileKind::CharDevice,
            0o060000 => FileKind::BlockDevice,
            0o010000 => FileKind::Fifo,
            0o140000 => FileKind::Socket,
            _ => return None,
        })
    }
}

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Timespec {
    pub sec: i64,
    pub nsec: u32,
}

impl Timespec {
    pub fn now() -> Timespec {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timespec {
            sec: d.as_secs() as i64,
            nsec: d.subsec_nanos(),
        }
    }
}

/// What lstat(2) says of an inode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    pub ino: Ino,
    pub kind: FileKind,
    /// `st_mode`: type bits and permission bits.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Space used, in 512-byte units (`st_blocks`).
    pub blocks: u64,
    pub atime: Timespec,
    pub mtime: Timespec,
    pub ctime: Timespec,
    /// Device number of a character or block device inode (`st_rdev`), else 0.
    pub rdev: u64,
    /// The filesystem's block size (`st_blksize`).
    pub blksize: u32,
}

impl Stat {
    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Directory
    }
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// Owner of a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Attribute changes for `GuestFs::setattr`; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    /// Permission bits (`0o7777`); the file type never changes.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<Timespec>,
    pub mtime: Option<Timespec>,
}

/// What statvfs(2) says, in the filesystem's fragment size units.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatVfs {
    pub bsize: u64,
    pub frsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub favail: u64,
    pub fsid: u64,
    pub flag: u64,
    pub namemax: u64,
}

/// A failed filesystem call: the errno the kernel would give, and what was being done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{detail}: {}", strerror(*errno))]
pub struct FsError {
    pub errno: i32,
    pub detail: String,
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn new(errno: i32, detail: impl Into<String>) -> FsError {
        FsError {
            errno,
            detail: detail.into(),
        }
    }

    /// The same error, with `context` put in front of its detail (`mkdir /a/b: ...`).
    pub fn context(mut self, context: impl std::fmt::Display) -> FsError {
        self.detail = format!("{context}: {}", self.detail);
        self
    }
}

impl From<crate::store::StoreError> for FsError {
    fn from(e: crate::store::StoreError) -> FsError {
        use crate::store::ErrorKind as K;
        let errno = match e.kind() {
            K::NoSpace => libc::ENOSPC,
            K::ReadOnly => libc::EROFS,
            K::OutOfRange | K::Invalid => libc::EINVAL,
            K::NotFound => libc::ENOENT,
            K::Conflict => libc::EBUSY,
            K::Io | K::Integrity => libc::EIO,
        };
        FsError::new(errno, e.to_string())
    }
}

/// The C library's message for `errno` ("No such file or directory"), which is what
/// guestfish prints after a failing call.
pub fn strerror(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno)
        .to_string()
        .split(" (os error")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_read_as_guestfish_prints_them() {
        let e = FsError::new(libc::ENOENT, "/etc/nothere").context("cat");
        assert_eq!(
            e.to_string(),
            "cat: /etc/nothere: No such file or directory"
        );
    }

    #[test]
    fn file_kinds_round_trip_through_mode_bits() {
        for k in [
            FileKind::Regular,
            FileKind::Directory,
            FileKind::Symlink,
            FileKind::CharDevice,
            FileKind::BlockDevice,
            FileKind::Fifo,
            FileKind::Socket,
        ] {
            assert_eq!(FileKind::from_mode(k.mode_bits() | 0o755), Some(k));
        }
        assert_eq!(FileKind::from_mode(0o755), None);
    }
}
