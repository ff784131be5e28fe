//! The disk being personalized, as the interpreter sees it: typed calls over the
//! filesystem worker's requests. The worker process does the filesystem work (the C
//! libraries never run in this process); tests may put the same request handling
//! in-process instead (`Guest::in_process`).
//!
//! Big files move in pieces so that no message exceeds the worker's frame limit.

use crate::fs::inspect::OsInfo;
use crate::fs::session::{DeviceInfo, FsInfo};
use crate::fs::types::*;
use crate::fs::worker::child::InProcess;
use crate::fs::worker::client::Worker;
use crate::fs::worker::protocol::{Call, MountEntry, Reply, Request};
use crate::store::device::SharedDevice;

/// File data moves in pieces of this size.
pub const PIECE: usize = 8 << 20;

enum Transport {
    Worker(Worker),
    Local(Box<InProcess>),
}

pub struct Guest {
    t: Transport,
}

fn unexpected(r: Reply) -> FsError {
    FsError::new(
        libc::EIO,
        format!("the filesystem worker gave an unexpected answer: {r:?}"),
    )
}

impl Guest {
    pub fn new(worker: Worker) -> Guest {
        Guest {
            t: Transport::Worker(worker),
        }
    }

    /// The worker's handling in this process, on a device the caller made (tests only).
    pub fn in_process(dev: SharedDevice) -> FsResult<Guest> {
        Ok(Guest {
            t: Transport::Local(Box::new(InProcess::new(dev)?)),
        })
    }

    pub fn request(&mut self, req: Request) -> FsResult<Reply> {
        match &mut self.t {
            Transport::Worker(w) => w.call(req),
            Transport::Local(l) => l.call(req),
        }
    }

    fn call(&mut self, c: Call) -> FsResult<Reply> {
        self.request(Request::Call(c))
    }

    fn done(&mut self, c: Call) -> FsResult<()> {
        match self.call(c)? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// Unmounts everything and makes the job's changes durable in one flush; the worker
    /// ends. Nothing reaches the disk before this.
    pub fn commit(self) -> FsResult<()> {
        match self.t {
            Transport::Worker(w) => w.commit(),
            Transport::Local(mut l) => l.call(Request::Commit).map(|_| ()),
        }
    }

    /// Ends the job without writing anything back.
    pub fn abandon(self) {
        if let Transport::Worker(mut w) = self.t {
            w.finish();
        }
    }

    pub fn devices(&mut self) -> FsResult<Vec<DeviceInfo>> {
        match self.request(Request::Devices)? {
            Reply::Devices(d) => Ok(d),
            r => Err(unexpected(r)),
        }
    }

    pub fn filesystems(&mut self) -> FsResult<Vec<FsInfo>> {
        match self.request(Request::Filesystems { usage: false })? {
            Reply::Filesystems(f) => Ok(f),
            r => Err(unexpected(r)),
        }
    }

    pub fn mount(&mut self, device: &str, point: &str, read_only: bool) -> FsResult<()> {
        match self.request(Request::Mount {
            device: device.into(),
            point: point.into(),
            read_only,
        })? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    /// `mount` with mount options and a filesystem type (`""` for any).
    pub fn mount_options(
        &mut self,
        options: &str,
        vfs_type: &str,
        device: &str,
        point: &str,
        read_only: bool,
    ) -> FsResult<()> {
        match self.request(Request::MountOptions {
            options: options.into(),
            vfs_type: vfs_type.into(),
            device: device.into(),
            point: point.into(),
            read_only,
        })? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    pub fn umount(&mut self, target: &str) -> FsResult<()> {
        match self.request(Request::Umount {
            target: target.into(),
        })? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    pub fn umount_all(&mut self) -> FsResult<()> {
        match self.request(Request::UmountAll)? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    pub fn mounts(&mut self) -> FsResult<Vec<MountEntry>> {
        match self.request(Request::Mounts)? {
            Reply::Mounts(m) => Ok(m),
            r => Err(unexpected(r)),
        }
    }

    pub fn inspect(&mut self) -> FsResult<Vec<OsInfo>> {
        match self.request(Request::Inspect)? {
            Reply::Inspected(o) => Ok(o),
            r => Err(unexpected(r)),
        }
    }

    pub fn stat(&mut self, path: &[u8], follow: bool) -> FsResult<Stat> {
        match self.call(Call::Stat {
            path: path.to_vec(),
            follow,
        })? {
            Reply::Stat(s) => Ok(s),
            r => Err(unexpected(r)),
        }
    }

    /// The kind of what `path` names, `None` if nothing (a dangling symlink followed is
    /// nothing).
    pub fn kind(&mut self, path: &[u8], follow: bool) -> FsResult<Option<FileKind>> {
        match self.call(Call::KindOf {
            path: path.to_vec(),
            follow,
        })? {
            Reply::Kind(k) => Ok(k),
            r => Err(unexpected(r)),
        }
    }

    pub fn exists(&mut self, path: &[u8]) -> FsResult<bool> {
        match self.call(Call::Exists {
            path: path.to_vec(),
        })? {
            Reply::Bool(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    pub fn read_at(&mut self, path: &[u8], offset: u64, len: usize) -> FsResult<Vec<u8>> {
        match self.call(Call::Read {
            path: path.to_vec(),
            offset,
            len: len.min(PIECE) as u32,
        })? {
            Reply::Bytes(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    /// A whole file (following symlinks), refused past `limit` bytes.
    pub fn read_file(&mut self, path: &[u8], limit: u64) -> FsResult<Vec<u8>> {
        let st = self.stat(path, true)?;
        if st.is_dir() {
            return Err(FsError::new(libc::EISDIR, show(path)));
        }
        if st.size > limit {
            return Err(FsError::new(
                libc::EFBIG,
                format!(
                    "{} is {} bytes, more than the {limit} this command reads",
                    show(path),
                    st.size
                ),
            ));
        }
        let mut out = Vec::with_capacity(st.size as usize);
        loop {
            let piece = self.read_at(path, out.len() as u64, PIECE)?;
            if piece.is_empty() {
                break;
            }
            out.extend_from_slice(&piece);
            if out.len() as u64 > limit {
                return Err(FsError::new(libc::EFBIG, show(path)));
            }
        }
        Ok(out)
    }

    /// Streams a whole file to `sink`, piece by piece.
    pub fn read_to(
        &mut self,
        path: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> FsResult<()>,
    ) -> FsResult<u64> {
        let mut off = 0u64;
        loop {
            let piece = self.read_at(path, off, PIECE)?;
            if piece.is_empty() {
                return Ok(off);
            }
            off += piece.len() as u64;
            sink(&piece)?;
        }
    }

    /// Creates `path` (mode `mode` if new) or empties it, then writes `data`.
    pub fn write_file(&mut self, path: &[u8], mode: u32, data: &[u8]) -> FsResult<()> {
        self.create(path, mode)?;
        let mut off = 0;
        for piece in data.chunks(PIECE) {
            self.write_at(path, off, piece)?;
            off += piece.len() as u64;
        }
        Ok(())
    }

    pub fn create(&mut self, path: &[u8], mode: u32) -> FsResult<()> {
        self.done(Call::CreateOrTruncate {
            path: path.to_vec(),
            mode,
        })
    }

    pub fn write_at(&mut self, path: &[u8], offset: u64, data: &[u8]) -> FsResult<()> {
        self.done(Call::WriteAt {
            path: path.to_vec(),
            offset,
            data: data.to_vec(),
        })
    }

    pub fn append(&mut self, path: &[u8], data: &[u8]) -> FsResult<()> {
        for piece in data.chunks(PIECE) {
            self.done(Call::Append {
                path: path.to_vec(),
                data: piece.to_vec(),
            })?;
        }
        if data.is_empty() {
            self.done(Call::Append {
                path: path.to_vec(),
                data: Vec::new(),
            })?;
        }
        Ok(())
    }

    pub fn touch(&mut self, path: &[u8]) -> FsResult<()> {
        self.done(Call::Touch {
            path: path.to_vec(),
        })
    }

    pub fn mkdir(&mut self, path: &[u8], mode: u32, parents: bool) -> FsResult<()> {
        self.done(Call::Mkdir {
            path: path.to_vec(),
            mode,
            parents,
        })
    }

    pub fn rm(&mut self, path: &[u8], force: bool) -> FsResult<()> {
        self.done(Call::Rm {
            path: path.to_vec(),
            force,
        })
    }

    pub fn rmdir(&mut self, path: &[u8]) -> FsResult<()> {
        self.done(Call::Rmdir {
            path: path.to_vec(),
        })
    }

    pub fn rm_rf(&mut self, path: &[u8]) -> FsResult<()> {
        self.done(Call::RmRf {
            path: path.to_vec(),
        })
    }

    pub fn rename(&mut self, from: &[u8], to: &[u8]) -> FsResult<()> {
        self.done(Call::Rename {
            from: from.to_vec(),
            to: to.to_vec(),
        })
    }

    pub fn symlink(&mut self, target: &[u8], path: &[u8]) -> FsResult<()> {
        self.done(Call::Symlink {
            target: target.to_vec(),
            path: path.to_vec(),
        })
    }

    pub fn link(&mut self, target: &[u8], path: &[u8]) -> FsResult<()> {
        self.done(Call::Link {
            target: target.to_vec(),
            path: path.to_vec(),
        })
    }

    pub fn readlink(&mut self, path: &[u8]) -> FsResult<Vec<u8>> {
        match self.call(Call::Readlink {
            path: path.to_vec(),
        })? {
            Reply::Bytes(b) => Ok(b),
            r => Err(unexpected(r)),
        }
    }

    pub fn setattr(&mut self, path: &[u8], follow: bool, attr: SetAttr) -> FsResult<()> {
        self.done(Call::SetAttr {
            path: path.to_vec(),
            follow,
            attr,
        })
    }

    pub fn readdir(&mut self, path: &[u8]) -> FsResult<Vec<DirEntry>> {
        match self.call(Call::Readdir {
            path: path.to_vec(),
        })? {
            Reply::Entries(e) => Ok(e),
            r => Err(unexpected(r)),
        }
    }

    pub fn statvfs(&mut self, path: &[u8]) -> FsResult<StatVfs> {
        match self.call(Call::Statvfs {
            path: path.to_vec(),
        })? {
            Reply::StatVfs(v) => Ok(v),
            r => Err(unexpected(r)),
        }
    }

    pub fn glob(&mut self, pattern: &[u8]) -> FsResult<Vec<Vec<u8>>> {
        match self.call(Call::Glob {
            pattern: pattern.to_vec(),
        })? {
            Reply::Paths(p) => Ok(p.into_iter().map(|b| b.into_vec()).collect()),
            r => Err(unexpected(r)),
        }
    }
}

/// A guest path for messages.
pub fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}
