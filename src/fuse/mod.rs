//! FUSE export: the repository as files, one per volume, image and partition.
//!
//! ```text
//! MOUNT/volumes/NAME   MOUNT/volumes/NAME.p1 …   (read-write unless mounted read-only)
//! MOUNT/images/NAME    MOUNT/images/NAME.p1 …    (always read-only)
//! ```
//! Map of this directory:
//! - `mod.rs`   mounting, the serving thread, unmounting, SIGINT/SIGTERM
//! - `tree.rs`  names, inode numbers and the directory model
//! - `disks.rs` opening and closing volumes and images, cached partition tables
//! - `fs.rs`    the `fuser::Filesystem` implementation (requests onto the store)
//!
//! It calls only the store (and `disk` for partition tables). It does not parse filesystems,
//! and it never keeps data of its own: every byte is read from and written to the store.

mod disks;
mod fs;
mod tree;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuser::{Config, MountOption, Session};

use crate::store::Repository;
use disks::Disks;
use fs::StrataFs;

#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Serve volumes read-only (writes fail with EROFS).
    pub read_only: bool,
    /// Threads serving kernel requests, each with its own cloned /dev/fuse descriptor.
    pub threads: usize,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            threads: 4,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    #[error(
        "mounting on {mountpoint}: {source}; check that it is an existing empty directory, \
         that /dev/fuse exists and that you are root (or fusermount3 is installed)"
    )]
    Mounting {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("starting the serving thread for {mountpoint}: {source}")]
    StartingThread {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("watching for SIGINT/SIGTERM: {0}")]
    WatchingSignals(#[source] io::Error),
    #[error("serving {mountpoint}: {source}")]
    Serving {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unmounting {mountpoint}: {source}; close the files open under it (or a loop device on them) and try again")]
    Unmounting {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },
}

enum Event {
    Signal(i32),
    Ended(io::Result<()>),
}

/// A mount served by background threads. Dropping it unmounts (lazily, if files are still
/// open under it).
pub struct MountHandle {
    mountpoint: PathBuf,
    disks: Arc<Disks>,
    thread: Option<JoinHandle<()>>,
    events: Receiver<Event>,
    sender: Sender<Event>,
    ended: Option<io::Result<()>>,
}

/// Mounts `repo` on `mountpoint` and serves it from background threads; returns once the
/// kernel has accepted the mount.
pub fn spawn_mount(
    repo: Arc<Repository>,
    mountpoint: &Path,
    opts: MountOptions,
) -> Result<MountHandle, FuseError> {
    let mountpoint = mountpoint
        .canonicalize()
        .map_err(|source| FuseError::Mounting {
            mountpoint: mountpoint.to_path_buf(),
            source,
        })?;
    let disks = Arc::new(Disks::new(repo.clone(), opts.read_only));
    let fs = StrataFs::new(repo, disks.clone(), opts.read_only);
    let mut mount_options = vec![
        MountOption::FSName("strata".into()),
        MountOption::Subtype("strata".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    mount_options.push(if opts.read_only {
        MountOption::RO
    } else {
        MountOption::RW
    });
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let session = Session::new(fs, &mountpoint, &config).map_err(|source| FuseError::Mounting {
        mountpoint: mountpoint.clone(),
        source,
    })?;
    let (sender, events) = mpsc::channel();
    let tx = sender.clone();
    let thread = std::thread::Builder::new()
        .name("strata-fuse".into())
        .spawn(move || {
            let _ = tx.send(Event::Ended(session.run()));
        })
        .map_err(|source| FuseError::StartingThread {
            mountpoint: mountpoint.clone(),
            source,
        })?;
    tracing::info!(mountpoint = %mountpoint.display(), "mounted");
    Ok(MountHandle {
        mountpoint,
        disks,
        thread: Some(thread),
        events,
        sender,
        ended: None,
    })
}

/// Mounts `repo` on `mountpoint` and serves it until SIGINT or SIGTERM (then unmounts and
/// flushes every open volume) or until it is unmounted from outside (`umount`,
/// `fusermount3 -u`).
pub fn mount(
    repo: Arc<Repository>,
    mountpoint: &Path,
    opts: MountOptions,
) -> Result<(), FuseError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(FuseError::WatchingSignals)?;
    let signal_handle = signals.handle();
    let mut handle = spawn_mount(repo, mountpoint, opts)?;
    let tx = handle.sender.clone();
    let watcher = std::thread::spawn(move || {
        for sig in signals.forever() {
            if tx.send(Event::Signal(sig)).is_err() {
                break;
            }
        }
    });
    let result = match handle.events.recv() {
        Ok(Event::Signal(sig)) => {
            tracing::info!(signal = sig, "unmounting on signal");
            handle.unmount()
        }
        Ok(Event::Ended(r)) => {
            tracing::info!("unmounted from outside");
            handle.ended = Some(r);
            handle.join()
        }
        Err(_) => handle.join(),
    };
    signal_handle.close();
    let _ = watcher.join();
    result
}

impl MountHandle {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Whether the mount is still being served (false once unmounted from outside).
    pub fn is_serving(&mut self) -> bool {
        if self.ended.is_none() {
            while let Ok(ev) = self.events.try_recv() {
                if let Event::Ended(r) = ev {
                    self.ended = Some(r);
                }
            }
        }
        self.ended.is_none()
    }

    /// Unmounts, waits for the serving threads to finish and flushes every open volume.
    /// Fails (and stays mounted) while files under the mount are in use.
    pub fn unmount(&mut self) -> Result<(), FuseError> {
        if self.thread.is_none() {
            return Ok(());
        }
        if self.is_serving() {
            if let Err(source) = umount(&self.mountpoint, 0) {
                // Already gone (unmounted from outside just now) is not an error.
                if source.raw_os_error() != Some(libc::EINVAL) {
                    return Err(FuseError::Unmounting {
                        mountpoint: self.mountpoint.clone(),
                        source,
                    });
                }
            }
        }
        self.join()
    }

    fn join(&mut self) -> Result<(), FuseError> {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.ended.is_none() {
            while let Ok(ev) = self.events.try_recv() {
                if let Event::Ended(r) = ev {
                    self.ended = Some(r);
                }
            }
        }
        // The session's destroy() has flushed everything; this covers a session that ended
        // without it (the kernel connection aborted).
        self.disks.close_all();
        match self.ended.take() {
            Some(Err(source)) => Err(FuseError::Serving {
                mountpoint: self.mountpoint.clone(),
                source,
            }),
            _ => Ok(()),
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if self.thread.is_none() {
            return;
        }
        if self.is_serving() {
            if let Err(e) = umount(&self.mountpoint, 0) {
                tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e,
                    "unmount failed; detaching lazily");
                let _ = umount(&self.mountpoint, libc::MNT_DETACH);
                // Serving continues until the last user closes; do not wait for that here.
                self.disks.close_all();
                return;
            }
        }
        let _ = self.join();
    }
}

/// Unmounts `path`; as a user without the right to umount(2), through `fusermount3 -u`.
fn umount(path: &Path, flags: i32) -> io::Result<()> {
    match umount2(path, flags) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let mut cmd = std::process::Command::new("fusermount3");
            cmd.arg("-u");
            if flags & libc::MNT_DETACH != 0 {
                cmd.arg("-z");
            }
            let out = cmd.arg(path).output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(io::Error::other(
                    String::from_utf8_lossy(&out.stderr).trim().to_string(),
                ))
            }
        }
        r => r,
    }
}

fn umount2(path: &Path, flags: i32) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
