//! The worker process's side: opens the disk through the store itself, holds a `Session`,
//! answers requests on stdin/stdout, and flushes the disk only on `Commit`.
//!
//! Why nothing else may flush: a volume's store commits atomically, so a job whose changes
//! reach the store only in one flush at its end is all-or-nothing. This process therefore
//! never returns normally and never unwinds: every way out (end of input, a fatal error, a
//! panic) is `process::exit`, which runs no destructors, so the volume is never flushed on
//! the way out (a `Volume` flushes its dirty blocks when dropped).

use std::io::{self, BufReader, BufWriter, Write};
use std::sync::Arc;

use crate::fs::session::Session;
use crate::fs::types::*;
use crate::store::device::{FileDevice, SharedDevice};
use crate::store::overlay::Overlay;
use crate::store::{RepoOptions, Repository};

use super::protocol::*;

/// Runs the worker on this process's stdin and stdout; never returns.
pub fn run() -> ! {
    std::panic::set_hook(Box::new(|info| {
        // Before any unwinding: nothing is dropped, nothing is flushed.
        eprintln!("strata fs-worker: internal error: {info}");
        std::process::exit(101);
    }));
    keep_big_buffers();
    let stdin = io::stdin();
    let stdout = io::stdout();
    let mut input = BufReader::with_capacity(1 << 20, stdin.lock());
    let mut output = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut state: Option<(SharedDevice, Session)> = None;
    loop {
        let req: Request = match read_frame(&mut input) {
            Ok(Some(r)) => r,
            // The parent went away or gave up: abandon the job, flush nothing.
            Ok(None) => std::process::exit(0),
            Err(e) => {
                eprintln!("strata fs-worker: reading a request: {e}");
                std::process::exit(2);
            }
        };
        let resp = handle(&mut state, req);
        if let Err(e) = write_frame(&mut output, &resp).and_then(|()| output.flush()) {
            eprintln!("strata fs-worker: sending a reply: {e}");
            std::process::exit(2);
        }
    }
}

/// Requests that carry file data are up to 8 MiB, and each is decoded into two buffers
/// that size (the frame, the data). glibc serves blocks that large with mmap and unmaps them
/// on free, so every request would fault its buffers in afresh: a third of the CPU of a
/// 100 MiB `put` went to those page faults. Raising the thresholds keeps freed blocks in the
/// heap for the next request. The peak is unchanged (the two buffers live at once anyway);
/// blocks of 32 MiB and more (the ext4 adapter's cache) are still mapped lazily.
fn keep_big_buffers() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt takes plain integers; called before this process allocates much.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
    }
}

fn open(o: &Open) -> FsResult<SharedDevice> {
    let repo = |root: &std::path::Path| {
        Repository::open(
            root,
            RepoOptions {
                cache_bytes: o.cache_bytes,
            },
        )
    };
    Ok(match &o.source {
        Source::Volume { repo: root, name } => {
            repo(root)?.open_volume(name, o.read_only)? as SharedDevice
        }
        Source::Image { repo: root, name } => {
            if !o.read_only {
                return Err(FsError::new(
                    libc::EROFS,
                    format!(
                        "image {name:?} is a golden image and never changes; clone a volume \
                         from it (strata volume create NAME --from {name}) and edit that"
                    ),
                ));
            }
            repo(root)?.open_image(name)? as SharedDevice
        }
        Source::File { path } => Arc::new(FileDevice::open(path, o.read_only)?),
        Source::Staged {
            repo: root,
            dir,
            name,
        } => repo(root)?.open_staged_volume(dir, name)? as SharedDevice,
        Source::Snapshot {
            repo: root,
            volume,
            snapshot,
            overlay,
        } => {
            let snap: SharedDevice = Arc::new(repo(root)?.open_snapshot(volume, snapshot)?);
            match overlay {
                Some(dir) => Arc::new(Overlay::open(dir, snap, o.read_only)?),
                None if o.read_only => snap,
                None => {
                    return Err(FsError::new(
                        libc::EROFS,
                        format!(
                            "a snapshot of volume {volume:?} is read-only; edit a copy of it \
                             (an overlay) instead"
                        ),
                    ))
                }
            }
        }
    })
}

/// The worker's request handling inside the calling process, on a device the caller
/// opened: for tests of the layers above (the plan interpreter) only. It runs the C
/// filesystem libraries in the calling process, which a server must never do.
pub struct InProcess {
    state: Option<(SharedDevice, Session)>,
}

impl InProcess {
    pub fn new(dev: SharedDevice) -> FsResult<InProcess> {
        let session = Session::new(dev.clone())?;
        Ok(InProcess {
            state: Some((dev, session)),
        })
    }

    pub fn call(&mut self, req: Request) -> Response {
        handle(&mut self.state, req)
    }
}

fn handle(state: &mut Option<(SharedDevice, Session)>, req: Request) -> Response {
    if let Request::Open(o) = &req {
        if state.is_some() {
            return Err(FsError::new(
                libc::EINVAL,
                "the worker has a disk open already",
            ));
        }
        let dev = open(o)?;
        let session = Session::new(dev.clone())?;
        let reply = Reply::Opened {
            size: dev.len(),
            read_only: dev.is_read_only(),
        };
        *state = Some((dev, session));
        return Ok(reply);
    }
    let Some((dev, s)) = state.as_mut() else {
        return Err(FsError::new(
            libc::EINVAL,
            "no disk is open; the first request must be Open",
        ));
    };
    Ok(match req {
        Request::Open(_) => unreachable!("handled above"),
        Request::Devices => Reply::Devices(s.devices()),
        Request::Filesystems { usage } => Reply::Filesystems(s.filesystems(usage)),
        Request::Mount {
            device,
            point,
            read_only,
        } => {
            s.mount(&device, &point, read_only)?;
            Reply::Done
        }
        Request::MountOptions {
            options,
            vfs_type,
            device,
            point,
            read_only,
        } => {
            let t = Some(vfs_type.as_str()).filter(|t| !t.is_empty());
            s.mount_options(&options, t, &device, &point, read_only)?;
            Reply::Done
        }
        Request::Umount { target } => {
            s.table.umount(&target)?;
            Reply::Done
        }
        Request::UmountAll => {
            s.table.umount_all()?;
            Reply::Done
        }
        Request::Mounts => Reply::Mounts(s.table.mounts().into_iter().map(Into::into).collect()),
        Request::UsedBlocks { device } => Reply::Ranges(s.used_blocks(&device)?),
        Request::Inspect => Reply::Inspected(s.inspect()?),
        Request::Commit => {
            s.table.umount_all()?;
            dev.flush()?;
            Reply::Done
        }
        Request::Call(c) => call(&mut s.table, c)?,
    })
}

/// One path-level call on a mount table: what the worker does with `Request::Call` (public
/// so that model tests put the same calls to the in-memory model).
pub fn call(t: &mut crate::fs::mounts::MountTable, c: Call) -> FsResult<Reply> {
    Ok(match c {
        Call::Stat { path, follow } => Reply::Stat(t.stat_path(&path, follow)?),
        Call::Exists { path } => Reply::Bool(t.exists(&path)?),
        Call::KindOf { path, follow } => Reply::Kind(t.kind_of(&path, follow)?),
        Call::Read { path, offset, len } => {
            Reply::Bytes(t.read_path(&path, offset, (len as usize).min(MAX_FRAME / 2))?)
        }
        Call::CreateOrTruncate { path, mode } => {
            t.create_or_truncate(&path, mode)?;
            Reply::Done
        }
        Call::WriteAt { path, offset, data } => {
            t.write_path(&path, offset, &data)?;
            Reply::Done
        }
        Call::Append { path, data } => {
            t.append_file(&path, &data)?;
            Reply::Done
        }
        Call::Truncate { path, size } => {
            t.truncate_path(&path, size)?;
            Reply::Done
        }
        Call::Touch { path } => {
            t.touch(&path)?;
            Reply::Done
        }
        Call::Mkdir {
            path,
            mode,
            parents,
        } => {
            if parents {
                t.mkdir_p(&path, mode)?
            } else {
                t.mkdir(&path, mode)?
            }
            Reply::Done
        }
        Call::Rm { path, force } => {
            if force {
                t.rm_f(&path)?
            } else {
                t.rm(&path)?
            }
            Reply::Done
        }
        Call::Rmdir { path } => {
            t.rmdir(&path)?;
            Reply::Done
        }
        Call::RmRf { path } => {
            t.rm_rf(&path)?;
            Reply::Done
        }
        Call::Rename { from, to } => {
            t.rename_path(&from, &to)?;
            Reply::Done
        }
        Call::Symlink { target, path } => {
            t.symlink(&target, &path)?;
            Reply::Done
        }
        Call::Link { target, path } => {
            t.link(&target, &path)?;
            Reply::Done
        }
        Call::Readlink { path } => Reply::Bytes(t.readlink(&path)?),
        Call::SetAttr { path, follow, attr } => {
            t.setattr_path(&path, follow, &attr)?;
            Reply::Done
        }
        Call::Readdir { path } => Reply::Entries(t.readdir_path(&path)?),
        Call::Statvfs { path } => Reply::StatVfs(t.statvfs_path(&path)?),
        Call::Glob { pattern } => Reply::Paths(
            t.glob(&pattern)?
                .into_iter()
                .map(serde_bytes::ByteBuf::from)
                .collect(),
        ),
    })
}
