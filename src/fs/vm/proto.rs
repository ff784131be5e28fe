//! What the worker and the agent inside the VM say to each other over the virtio-serial
//! port: one request, one reply, each a frame of the worker protocol's framing (a
//! little-endian length, then postcard). Pure data; the two ends are `agent.rs` (in the
//! guest) and `conn.rs` (in the worker).
//!
//! Inode numbers are the agent's: the guest kernel's `st_ino` on the mount's own device, and
//! numbers the agent hands out (high bit set) for inodes on another device under the mount
//! (a btrfs subvolume). A mount is named by the index the agent gave it.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::fs::types::*;

/// The agent's first frame, once it is ready for requests.
pub const HELLO: &str = "strata-vm-agent 1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentRequest {
    /// Mounts the disk whose virtio serial is `serial` (`/dev/vdX` in the guest), with
    /// `options` as mount(2)'s data (`subvol=@/home`; empty for none); replies `Mounted`.
    /// The same disk may be mounted more than once (btrfs subvolumes): the guest kernel
    /// shares one superblock between the mounts.
    Mount {
        serial: String,
        fs_type: String,
        read_only: bool,
        options: String,
    },
    /// Unmounts (after dropping every inode handle the agent holds on it).
    Umount {
        mount: u32,
    },
    Lookup {
        mount: u32,
        dir: Ino,
        name: ByteBuf,
    },
    Stat {
        mount: u32,
        ino: Ino,
    },
    Readdir {
        mount: u32,
        dir: Ino,
    },
    Read {
        mount: u32,
        ino: Ino,
        offset: u64,
        len: u32,
    },
    Write {
        mount: u32,
        ino: Ino,
        offset: u64,
        data: ByteBuf,
    },
    Truncate {
        mount: u32,
        ino: Ino,
        size: u64,
    },
    Create {
        mount: u32,
        dir: Ino,
        name: ByteBuf,
        mode: u32,
        owner: Owner,
    },
    Mkdir {
        mount: u32,
        dir: Ino,
        name: ByteBuf,
        mode: u32,
        owner: Owner,
    },
    Symlink {
        mount: u32,
        dir: Ino,
        name: ByteBuf,
        target: ByteBuf,
        owner: Owner,
    },
    Link {
        mount: u32,
        ino: Ino,
        dir: Ino,
        name: ByteBuf,
    },
    Unlink {
        mount: u32,
        dir: Ino,
        name: ByteBuf,
    },
    Rmdir {
        mount: u32,
        dir: Ino,
        name: ByteBuf,
    },
    Rename {
        mount: u32,
        from_dir: Ino,
        from: ByteBuf,
        to_dir: Ino,
        to: ByteBuf,
    },
    Readlink {
        mount: u32,
        ino: Ino,
    },
    SetAttr {
        mount: u32,
        ino: Ino,
        attr: SetAttr,
    },
    Statvfs {
        mount: u32,
    },
    /// The device's used byte ranges as the filesystem reports them (XFS: GETFSMAP;
    /// btrfs: its extent tree mapped through the chunk tree).
    UsedBlocks {
        mount: u32,
    },
    Sync {
        mount: u32,
    },
    /// A btrfs filesystem's subvolumes and its default one; replies `Subvolumes`.
    Subvolumes {
        mount: u32,
    },
    /// Powers the VM off (no reply is owed; the port closes).
    PowerOff,
    /// The first request to an agent restored from a saved VM state (`snapshot.rs`), which
    /// greeted another worker at the save: the host's wall clock (the guest's is the
    /// save's), random bytes to mix into the guest's pool (every restore starts from the
    /// same one), and the job's disks, by serial, which the guest probed at the save as
    /// empty placeholders and probes again now. Replies `Done`.
    Resume {
        sec: i64,
        nsec: u32,
        seed: ByteBuf,
        serials: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentReply {
    Hello(String),
    Mounted {
        mount: u32,
        root: Ino,
    },
    Ino(Ino),
    Stat(Stat),
    Entries(Vec<DirEntry>),
    Bytes(ByteBuf),
    StatVfs(StatVfs),
    /// `None`: the filesystem cannot say (every block counts as used).
    Ranges(Option<Vec<(u64, u64)>>),
    Subvolumes(Subvolumes),
    Done,
    Error(FsError),
}

/// What `btrfs subvolume list` and `btrfs subvolume get-default` say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subvolumes {
    /// The subvolume a mount without `subvol=` shows (5, the top level, unless set).
    pub default: u64,
    /// `(id, path from the top level)`, by id.
    pub list: Vec<(u64, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::frame::{read_frame, write_frame};

    #[test]
    fn requests_and_replies_round_trip_through_frames() {
        let req = AgentRequest::Write {
            mount: 2,
            ino: 131,
            offset: 4096,
            data: ByteBuf::from(vec![7u8; 100]),
        };
        let mut buf = Vec::new();
        write_frame(&mut buf, &req).unwrap();
        let back: AgentRequest = read_frame(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!(back, req);
        let rep = AgentReply::Error(FsError::new(libc::ENOENT, "x"));
        let mut buf = Vec::new();
        write_frame(&mut buf, &rep).unwrap();
        let back: AgentReply = read_frame(&mut buf.as_slice()).unwrap().unwrap();
        assert_eq!(back, rep);
    }
}
