//! XFS and btrfs (and any other filesystem no userspace library writes) edited by the Linux
//! kernel's own drivers, in a kernel that runs as an ordinary process, never in the host
//! kernel.
//!
//! The issue asked for user-mode Linux; Debian's user-mode-linux does not boot on this
//! machine's CPU, so the documented substitute is Debian's own kernel (linux-image-amd64's
//! vmlinuz and its xfs/btrfs modules) under `qemu-system-x86_64 -accel tcg` (KVM here is
//! unreliable), the way tests/boot.rs already runs QEMU. The rest of the design is what the
//! issue asked for:
//!
//! - The block devices reach the VM from the store, not from a host loop device: the
//!   worker serves each partition or logical volume window over NBD on a unix socket
//!   (`nbd.rs` the protocol, `nbd_server.rs` the I/O), and QEMU attaches them with
//!   `-blockdev driver=nbd,server.type=unix`. Guest writes land in the staged volume's
//!   delta in the worker; the worker flushes only on its commit, after every mount was
//!   unmounted cleanly in the guest (so the XFS log and btrfs tree are clean on disk).
//! - The guest's init is strata's own binary (`agent.rs`, started as `/init`), in an
//!   initramfs built at run time from the host's kernel modules and cached
//!   (`initramfs.rs`). It answers a request/response protocol (`proto.rs`) over a
//!   virtio-serial port: mount, umount, and the `GuestFs` operations on inodes.
//! - The kernel is booted through its PVH entry from the `vmlinux` unpacked out of the
//!   `vmlinuz` (cached): under TCG, the bzImage's decompressor and the BIOS path to it cost
//!   about ten seconds of every boot. Modules for a filesystem load at its first mount.
//! - One VM per job (`qemu.rs`), started the first time an XFS or btrfs filesystem is
//!   mounted; it carries every XFS/btrfs device of the disk, so a script mounts several
//!   and nests them without another boot.
//! - `VmFs` (here) is the `GuestFs` adapter: each call is one round trip to the agent.
//! - ext2/3/4 normally goes to libext2fs, but one whose journal needs replaying (or whose
//!   orphans need cleaning up) is written here, by the kernel's ext4, which replays it at
//!   mount as the server would at boot (`fs::ext4::kernel_recovers`, chosen in
//!   `fs::session`).
//!
//! `used_blocks`: XFS answers FS_IOC_GETFSMAP in the guest (from its free-space B+trees
//! without rmapbt), so a capture keeps exactly the allocated ranges; btrfs does not answer
//! it, and the agent reads its extent and chunk trees instead (`btrfs.rs`, which also lists
//! its subvolumes).

pub mod agent;
pub mod btrfs;
pub mod initramfs;
pub mod nbd;
pub mod nbd_server;
pub mod proto;
pub mod qemu;
pub mod snapshot;

use std::sync::{Arc, Mutex};

use serde_bytes::ByteBuf;

use super::types::*;
use super::GuestFs;
use proto::{AgentReply, AgentRequest};

pub use qemu::Vm;

/// The filesystem types this adapter always handles (ext4 only when the kernel must
/// recover it, which `fs::session` decides).
pub fn handles(fs_type: &str) -> bool {
    matches!(fs_type, "xfs" | "btrfs")
}

pub type SharedVm = Arc<Mutex<Vm>>;

/// A filesystem mounted inside the job's VM.
pub struct VmFs {
    vm: SharedVm,
    mount: u32,
    root: Ino,
    fs_type: &'static str,
    len: u64,
    open: bool,
}

fn unexpected(r: AgentReply) -> FsError {
    FsError::new(libc::EIO, format!("the VM's agent answered {r:?}"))
}

impl VmFs {
    /// Mounts the disk with virtio serial `serial` (of `len` bytes) in `vm`, `options`
    /// given to the guest kernel as they are (`subvol=@/home`).
    pub fn mount(
        vm: SharedVm,
        serial: &str,
        fs_type: &str,
        len: u64,
        read_only: bool,
        options: &str,
    ) -> FsResult<VmFs> {
        let fs_type: &'static str = match fs_type {
            "xfs" => "xfs",
            "btrfs" => "btrfs",
            // Only one whose journal the kernel must replay (`fs::session`).
            "ext4" => "ext4",
            other => {
                return Err(FsError::new(
                    libc::ENODEV,
                    format!("the VM adapter does not mount {other:?}"),
                ))
            }
        };
        let r = vm
            .lock()
            .map_err(|_| FsError::new(libc::EIO, "the VM's lock is poisoned"))?
            .call(&AgentRequest::Mount {
                serial: serial.into(),
                fs_type: fs_type.into(),
                read_only,
                options: options.into(),
            })?;
        let AgentReply::Mounted { mount, root } = r else {
            return Err(unexpected(r));
        };
        Ok(VmFs {
            vm,
            mount,
            root,
            fs_type,
            len,
            open: true,
        })
    }

    fn call(&self, req: AgentRequest) -> FsResult<AgentReply> {
        self.vm
            .lock()
            .map_err(|_| FsError::new(libc::EIO, "the VM's lock is poisoned"))?
            .call(&req)
    }

    fn done(&self, req: AgentRequest) -> FsResult<()> {
        match self.call(req)? {
            AgentReply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    fn ino(&self, req: AgentRequest) -> FsResult<Ino> {
        match self.call(req)? {
            AgentReply::Ino(i) => Ok(i),
            r => Err(unexpected(r)),
        }
    }

    fn bytes(&self, req: AgentRequest) -> FsResult<Vec<u8>> {
        match self.call(req)? {
            AgentReply::Bytes(b) => Ok(b.into_vec()),
            r => Err(unexpected(r)),
        }
    }

    /// A btrfs filesystem's subvolumes and its default one.
    pub fn subvolumes(&self) -> FsResult<proto::Subvolumes> {
        match self.call(AgentRequest::Subvolumes { mount: self.mount })? {
            AgentReply::Subvolumes(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }

    fn umount(&mut self) -> FsResult<()> {
        if !self.open {
            return Ok(());
        }
        self.open = false;
        self.done(AgentRequest::Umount { mount: self.mount })
    }
}

fn b(x: &[u8]) -> ByteBuf {
    ByteBuf::from(x.to_vec())
}

/// Writes go to the agent in pieces this large (a frame holds 64 MiB).
const WRITE_PIECE: usize = 4 << 20;

impl GuestFs for VmFs {
    fn fs_type(&self) -> &'static str {
        self.fs_type
    }

    fn root(&self) -> Ino {
        self.root
    }

    fn lookup(&mut self, dir: Ino, name: &[u8]) -> FsResult<Ino> {
        let m = self.mount;
        self.ino(AgentRequest::Lookup {
            mount: m,
            dir,
            name: b(name),
        })
    }

    fn stat(&mut self, ino: Ino) -> FsResult<Stat> {
        match self.call(AgentRequest::Stat {
            mount: self.mount,
            ino,
        })? {
            AgentReply::Stat(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }

    fn readdir(&mut self, dir: Ino) -> FsResult<Vec<DirEntry>> {
        match self.call(AgentRequest::Readdir {
            mount: self.mount,
            dir,
        })? {
            AgentReply::Entries(e) => Ok(e),
            r => Err(unexpected(r)),
        }
    }

    fn read(&mut self, ino: Ino, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let mut done = 0;
        while done < buf.len() {
            let want = (buf.len() - done).min(WRITE_PIECE);
            let got = self.bytes(AgentRequest::Read {
                mount: self.mount,
                ino,
                offset: offset + done as u64,
                len: want as u32,
            })?;
            let n = got.len().min(want);
            buf[done..done + n].copy_from_slice(&got[..n]);
            done += n;
            if n < want {
                break;
            }
        }
        Ok(done)
    }

    fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> FsResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        for (i, piece) in data.chunks(WRITE_PIECE).enumerate() {
            self.done(AgentRequest::Write {
                mount: self.mount,
                ino,
                offset: offset + (i * WRITE_PIECE) as u64,
                data: b(piece),
            })?;
        }
        Ok(())
    }

    fn truncate(&mut self, ino: Ino, size: u64) -> FsResult<()> {
        self.done(AgentRequest::Truncate {
            mount: self.mount,
            ino,
            size,
        })
    }

    fn create(&mut self, dir: Ino, name: &[u8], mode: u32, owner: Owner) -> FsResult<Ino> {
        self.ino(AgentRequest::Create {
            mount: self.mount,
            dir,
            name: b(name),
            mode,
            owner,
        })
    }

    fn mkdir(&mut self, dir: Ino, name: &[u8], mode: u32, owner: Owner) -> FsResult<Ino> {
        self.ino(AgentRequest::Mkdir {
            mount: self.mount,
            dir,
            name: b(name),
            mode,
            owner,
        })
    }

    fn symlink(&mut self, dir: Ino, name: &[u8], target: &[u8], owner: Owner) -> FsResult<Ino> {
        self.ino(AgentRequest::Symlink {
            mount: self.mount,
            dir,
            name: b(name),
            target: b(target),
            owner,
        })
    }

    fn link(&mut self, ino: Ino, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.done(AgentRequest::Link {
            mount: self.mount,
            ino,
            dir,
            name: b(name),
        })
    }

    fn unlink(&mut self, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.done(AgentRequest::Unlink {
            mount: self.mount,
            dir,
            name: b(name),
        })
    }

    fn rmdir(&mut self, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.done(AgentRequest::Rmdir {
            mount: self.mount,
            dir,
            name: b(name),
        })
    }

    fn rename(&mut self, from_dir: Ino, from: &[u8], to_dir: Ino, to: &[u8]) -> FsResult<()> {
        self.done(AgentRequest::Rename {
            mount: self.mount,
            from_dir,
            from: b(from),
            to_dir,
            to: b(to),
        })
    }

    fn readlink(&mut self, ino: Ino) -> FsResult<Vec<u8>> {
        self.bytes(AgentRequest::Readlink {
            mount: self.mount,
            ino,
        })
    }

    fn setattr(&mut self, ino: Ino, attr: &SetAttr) -> FsResult<()> {
        self.done(AgentRequest::SetAttr {
            mount: self.mount,
            ino,
            attr: attr.clone(),
        })
    }

    fn statvfs(&mut self) -> FsResult<StatVfs> {
        match self.call(AgentRequest::Statvfs { mount: self.mount })? {
            AgentReply::StatVfs(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }

    fn used_blocks(&mut self) -> FsResult<Vec<(u64, u64)>> {
        match self.call(AgentRequest::UsedBlocks { mount: self.mount })? {
            AgentReply::Ranges(Some(r)) => Ok(r),
            AgentReply::Ranges(None) => Ok(vec![(0, self.len)]),
            r => Err(unexpected(r)),
        }
    }

    fn sync(&mut self) -> FsResult<()> {
        self.done(AgentRequest::Sync { mount: self.mount })
    }

    fn close(mut self: Box<Self>) -> FsResult<()> {
        self.umount()
    }
}

impl Drop for VmFs {
    /// A filesystem dropped without `close` is unmounted all the same (the guest's mount
    /// must not outlive it); the device is not flushed, so nothing of it is kept.
    fn drop(&mut self) {
        let _ = self.umount();
    }
}
