//! The store's one public error type: what failed, on what, and why.
//!
//! Variants are named for the failing action or condition; each message says what was wrong
//! and, where there is one, what to do. `errno()` maps an error onto the POSIX code the FUSE
//! export returns; the iSCSI target maps `kind()`s onto sense data.

use std::io;
use std::path::PathBuf;

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("{kind} {name:?} already exists; pick another name or remove it first")]
    Exists { kind: &'static str, name: String },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{what} is in use by {users}; {hint}")]
    InUse {
        what: String,
        users: String,
        hint: &'static str,
    },
    #[error("checksum mismatch in {what} at byte offset {offset}: the stored data is damaged and was not returned")]
    Checksum { what: String, offset: u64 },
    #[error("{what}: access of {len} bytes at offset {offset} is beyond its end ({size} bytes)")]
    OutOfRange {
        what: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("{what} is read-only")]
    ReadOnly { what: String },
    #[error("{path}: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: repository format version {found} is newer than this strata understands ({supported}); upgrade strata")]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// A non-waiting read (`Volume::try_read_at`) found data that is not in memory. Never
    /// returned by the calls that may wait.
    #[error("the data is not in memory; read it with a call that may wait")]
    WouldBlock,
    #[error("{0}")]
    InvalidInput(String),
    #[error("{0}")]
    Failed(String),
}

/// Coarse classes of error, for exporters that must translate errors into their own protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Io,
    NoSpace,
    Integrity,
    OutOfRange,
    ReadOnly,
    NotFound,
    Conflict,
    Invalid,
}

impl StoreError {
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::WouldBlock {
            return StoreError::WouldBlock;
        }
        StoreError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => {
                ErrorKind::NoSpace
            }
            StoreError::Io { .. } | StoreError::Failed(_) | StoreError::WouldBlock => ErrorKind::Io,
            StoreError::Checksum { .. } | StoreError::Corrupt { .. } => ErrorKind::Integrity,
            StoreError::OutOfRange { .. } => ErrorKind::OutOfRange,
            StoreError::ReadOnly { .. } => ErrorKind::ReadOnly,
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::Exists { .. } | StoreError::InUse { .. } => ErrorKind::Conflict,
            StoreError::InvalidName { .. }
            | StoreError::InvalidInput(_)
            | StoreError::NewerFormat { .. } => ErrorKind::Invalid,
        }
    }

    /// The POSIX error number that best describes this error (for FUSE replies).
    pub fn errno(&self) -> i32 {
        match self.kind() {
            ErrorKind::Io | ErrorKind::Integrity => libc::EIO,
            ErrorKind::NoSpace => libc::ENOSPC,
            ErrorKind::OutOfRange => libc::EINVAL,
            ErrorKind::ReadOnly => libc::EROFS,
            ErrorKind::NotFound => libc::ENOENT,
            ErrorKind::Conflict => libc::EBUSY,
            ErrorKind::Invalid => libc::EINVAL,
        }
    }
}
