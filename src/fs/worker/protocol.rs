//! What the parent and a filesystem worker say to each other over the worker's stdin and
//! stdout: requests and replies, framed by `fs::frame`. Pure encoding; the processes are in
//! `child.rs` and `client.rs`.
//!
//! Byte strings (paths, file data) travel as raw bytes (serde_bytes), so a 100 MiB upload
//! costs a copy, not a per-byte encoding.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::fs::inspect::OsInfo;
use crate::fs::mounts::MountInfo;
use crate::fs::session::{DeviceInfo, FsInfo};
use crate::fs::types::*;

pub use crate::fs::frame::{read_frame, write_frame, MAX_FRAME};

/// Which disk a worker opens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A volume of the repository at `repo`.
    Volume { repo: PathBuf, name: String },
    /// A golden image (always read-only).
    Image { repo: PathBuf, name: String },
    /// A raw disk image file outside any repository.
    File { path: PathBuf },
    /// A volume being made (`Repository::stage_volume`), not yet under its name.
    Staged {
        repo: PathBuf,
        dir: PathBuf,
        name: String,
    },
    /// Snapshot `snapshot` (its id) of a volume, taken and held by the parent; with
    /// `overlay`, the overlay directory the parent made over it (written by a writable
    /// open, saved on `Commit`; the parent owns and removes it). Without, read-only.
    Snapshot {
        repo: PathBuf,
        volume: String,
        snapshot: String,
        overlay: Option<PathBuf>,
    },
}

impl Source {
    pub fn describe(&self) -> String {
        match self {
            Source::Volume { name, .. } => format!("volume {name:?}"),
            Source::Image { name, .. } => format!("image {name:?}"),
            Source::File { path } => format!("file {}", path.display()),
            Source::Staged { name, .. } => format!("new volume {name:?}"),
            Source::Snapshot {
                volume,
                overlay: None,
                ..
            } => format!("snapshot of volume {volume:?}"),
            Source::Snapshot { volume, .. } => format!("copy of a snapshot of volume {volume:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    pub source: Source,
    pub read_only: bool,
    /// Memory for the image-chunk cache inside the worker.
    pub cache_bytes: u64,
}

/// A path-level filesystem call (see `fs::ops` for the semantics of each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    Stat {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        follow: bool,
    },
    Exists {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    KindOf {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        follow: bool,
    },
    Read {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        offset: u64,
        len: u32,
    },
    CreateOrTruncate {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        mode: u32,
    },
    WriteAt {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Append {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Truncate {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        size: u64,
    },
    Touch {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    Mkdir {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        mode: u32,
        parents: bool,
    },
    Rm {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        force: bool,
    },
    Rmdir {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    RmRf {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    Rename {
        #[serde(with = "serde_bytes")]
        from: Vec<u8>,
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
    },
    Symlink {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    Link {
        #[serde(with = "serde_bytes")]
        target: Vec<u8>,
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    Readlink {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    SetAttr {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
        follow: bool,
        attr: SetAttr,
    },
    Readdir {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    Statvfs {
        #[serde(with = "serde_bytes")]
        path: Vec<u8>,
    },
    Glob {
        #[serde(with = "serde_bytes")]
        pattern: Vec<u8>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The first request, and only the first.
    Open(Open),
    Devices,
    Filesystems {
        usage: bool,
    },
    Mount {
        device: String,
        point: String,
        read_only: bool,
    },
    Umount {
        target: String,
    },
    UmountAll,
    Mounts,
    Call(Call),
    UsedBlocks {
        device: String,
    },
    Inspect,
    /// Unmount everything (the filesystems written back clean), then flush the disk: the
    /// one point where the job's changes become durable, atomically.
    Commit,
    /// `Mount` with mount options and the filesystem type asked for (guestfish's
    /// mount-options and mount-vfs; `vfs_type` empty for any).
    MountOptions {
        options: String,
        vfs_type: String,
        device: String,
        point: String,
        read_only: bool,
    },
}

impl Request {
    /// A short name for messages ("while writing /etc/hostname").
    pub fn describe(&self) -> String {
        let p = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        match self {
            Request::Open(o) => format!("opening {}", o.source.describe()),
            Request::Devices => "listing devices".into(),
            Request::Filesystems { .. } => "listing filesystems".into(),
            Request::Mount { device, point, .. } | Request::MountOptions { device, point, .. } => {
                format!("mounting {device} on {point}")
            }
            Request::Umount { target } => format!("unmounting {target}"),
            Request::UmountAll => "unmounting everything".into(),
            Request::Mounts => "listing mounts".into(),
            Request::UsedBlocks { device } => format!("reading the allocation of {device}"),
            Request::Inspect => "inspecting the disk".into(),
            Request::Commit => "writing the changes back".into(),
            Request::Call(c) => match c {
                Call::Read { path, .. } => format!("reading {}", p(path)),
                Call::WriteAt { path, .. }
                | Call::Append { path, .. }
                | Call::CreateOrTruncate { path, .. } => {
                    format!("writing {}", p(path))
                }
                Call::Rename { from, to } => format!("renaming {} to {}", p(from), p(to)),
                Call::Glob { pattern } => format!("expanding {}", p(pattern)),
                Call::Symlink { path, .. } | Call::Link { path, .. } => {
                    format!("linking {}", p(path))
                }
                Call::Stat { path, .. }
                | Call::Exists { path }
                | Call::KindOf { path, .. }
                | Call::Truncate { path, .. }
                | Call::Touch { path }
                | Call::Mkdir { path, .. }
                | Call::Rm { path, .. }
                | Call::Rmdir { path }
                | Call::RmRf { path }
                | Call::Readlink { path }
                | Call::SetAttr { path, .. }
                | Call::Readdir { path }
                | Call::Statvfs { path } => format!("working on {}", p(path)),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Done,
    Opened { size: u64, read_only: bool },
    Devices(Vec<DeviceInfo>),
    Filesystems(Vec<FsInfo>),
    Mounts(Vec<MountEntry>),
    Stat(Stat),
    Bool(bool),
    Kind(Option<FileKind>),
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    Entries(Vec<DirEntry>),
    StatVfs(StatVfs),
    Paths(Vec<serde_bytes::ByteBuf>),
    Ranges(Vec<(u64, u64)>),
    Inspected(Vec<OsInfo>),
}

/// `MountInfo` with an owned type name, as it crosses the pipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    pub device: String,
    pub point: String,
    pub fs_type: String,
    pub read_only: bool,
}

impl From<MountInfo> for MountEntry {
    fn from(m: MountInfo) -> MountEntry {
        MountEntry {
            device: m.device,
            point: m.point,
            fs_type: m.fs_type.to_string(),
            read_only: m.read_only,
        }
    }
}

pub type Response = Result<Reply, FsError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_through_frames() {
        let reqs = vec![
            Request::Open(Open {
                source: Source::Volume {
                    repo: "/var/lib/strata".into(),
                    name: "web-01".into(),
                },
                read_only: false,
                cache_bytes: 1 << 24,
            }),
            Request::Call(Call::WriteAt {
                path: b"/etc/\xffhostname".to_vec(),
                offset: 7,
                data: vec![0u8; 100_000],
            }),
            Request::Commit,
        ];
        let mut buf = Vec::new();
        for r in &reqs {
            write_frame(&mut buf, r).unwrap();
        }
        // Data moves as raw bytes: the frame is barely larger than the payload.
        assert!(buf.len() < 100_200, "{}", buf.len());
        let mut rd = &buf[..];
        for r in &reqs {
            assert_eq!(read_frame::<Request>(&mut rd).unwrap().as_ref(), Some(r));
        }
        assert_eq!(read_frame::<Request>(&mut rd).unwrap(), None);
        let resp: Response = Err(FsError::new(libc::ENOSPC, "/big"));
        let mut buf = Vec::new();
        write_frame(&mut buf, &resp).unwrap();
        assert_eq!(read_frame::<Response>(&mut &buf[..]).unwrap(), Some(resp));
    }

    #[test]
    fn torn_oversized_and_garbage_frames_are_errors_not_panics() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Request::Devices).unwrap();
        assert!(read_frame::<Request>(&mut &buf[..buf.len() - 1]).is_err());
        assert!(read_frame::<Request>(&mut &buf[..2]).is_err());
        let huge = (MAX_FRAME as u32 + 1).to_le_bytes();
        assert!(read_frame::<Request>(&mut &huge[..]).is_err());
        let junk = [3u8, 0, 0, 0, 0xff, 0xff, 0xff];
        assert!(read_frame::<Request>(&mut &junk[..]).is_err());
    }
}
