//! A run's scratch directory: the working directory of every host-side command of one build
//! plan, and the only local files the interpreter itself reads or writes for `download`,
//! `upload`, `copy-out` and the like.
//!
//! Layout (one per run, under a parent the caller names):
//!
//! ```text
//! <parent>/strata-run-XXXXXX/   root:nogroup 0710 (the sandbox user may pass, not list)
//!     work/                     the scratch directory proper: cwd and HOME of `!` commands,
//!                               seen inside the sandbox as /scratch
//!     tmp/                      the run's private /tmp (and /var/tmp)
//! ```
//!
//! `work/` and `tmp/` belong to the sandbox user, so code from a bundle can write there and
//! nowhere else. That same code can plant symlinks, FIFOs and odd permissions for the
//! interpreter (running as root) to trip over, so every local path the interpreter uses goes
//! through [`Scratch`]'s methods: a path is mapped to one of the two areas (relative paths to
//! `work/`, `/tmp/...` to `tmp/`, anything else refused), then opened with openat2(2)
//! `RESOLVE_BENEATH` from a handle on that area, which the kernel enforces atomically during
//! the walk (a symlink or `..` that leads outside fails, however it got there). Files that are
//! not regular (a FIFO would hang the interpreter) are refused.
//!
//! This module does not run anything; `Sandbox` (the parent module) does.

use std::ffi::{CString, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::SandboxError;

/// Where sandboxed commands see the scratch directory (their cwd and HOME). Fixed, so a
/// script's `$(pwd)` does not reveal where the host keeps its runs.
pub const SANDBOX_SCRATCH: &str = "/scratch";

/// The host uid and gid sandboxed code runs as when strata runs as root: the conventional
/// unprivileged "nobody", which owns nothing on a Debian host.
pub const SANDBOX_UID: u32 = 65534;
pub const SANDBOX_GID: u32 = 65534;

/// The two places a local path may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Area {
    /// The scratch directory proper (relative paths, `/scratch/...`).
    Work,
    /// The run's private /tmp (`/tmp/...`, `/var/tmp/...`).
    Tmp,
}

/// One entry of a scratch directory listing.
#[derive(Debug, Clone)]
pub struct ScratchEntry {
    pub name: OsString,
    pub file_type: std::fs::FileType,
}

/// A fresh private scratch directory, removed (with everything in it) on drop.
#[derive(Debug)]
pub struct Scratch {
    root: PathBuf,
    work: PathBuf,
    tmp: PathBuf,
    work_dir: Option<OwnedFd>,
    tmp_dir: Option<OwnedFd>,
    owner: Option<(u32, u32)>,
}

impl Scratch {
    /// Creates `strata-run-XXXXXX` under `parent` (which must exist). As root, its `work/` and
    /// `tmp/` are handed to the sandbox user, and every directory above them must let that
    /// user pass (bubblewrap binds them by path), or this fails saying which one does not.
    pub fn new(parent: &Path) -> Result<Scratch, SandboxError> {
        let parent = parent
            .canonicalize()
            .map_err(|e| io_err("finding the scratch parent", parent, e))?;
        let owner = if unsafe { libc::geteuid() } == 0 {
            Some((SANDBOX_UID, SANDBOX_GID))
        } else {
            None
        };
        if owner.is_some() {
            check_passable(&parent)?;
        }
        let template = CString::new(parent.join("strata-run-XXXXXX").as_os_str().as_bytes())
            .map_err(|_| SandboxError::BadPath {
                path: parent.display().to_string(),
                reason: "it contains a NUL byte",
            })?;
        let mut buf = template.into_bytes_with_nul();
        // mkdtemp: an unpredictable name, created atomically with mode 0700.
        if unsafe { libc::mkdtemp(buf.as_mut_ptr().cast()) }.is_null() {
            return Err(io_err(
                "creating a scratch directory in",
                &parent,
                io::Error::last_os_error(),
            ));
        }
        buf.pop();
        let root = PathBuf::from(std::ffi::OsStr::from_bytes(&buf));
        // From here on, dropping `scratch` removes what was made.
        let mut scratch = Scratch {
            work: root.join("work"),
            tmp: root.join("tmp"),
            root,
            work_dir: None,
            tmp_dir: None,
            owner,
        };
        for dir in [&scratch.work, &scratch.tmp] {
            std::fs::create_dir(dir).map_err(|e| io_err("creating", dir, e))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io_err("setting the mode of", dir, e))?;
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                    .map_err(|e| io_err("handing to the sandbox user", dir, e))?;
            }
        }
        if owner.is_some() {
            std::os::unix::fs::chown(&scratch.root, Some(0), Some(SANDBOX_GID))
                .map_err(|e| io_err("setting the group of", &scratch.root, e))?;
            std::fs::set_permissions(&scratch.root, std::fs::Permissions::from_mode(0o710))
                .map_err(|e| io_err("setting the mode of", &scratch.root, e))?;
        }
        scratch.work_dir = Some(open_dir_handle(&scratch.work)?);
        scratch.tmp_dir = Some(open_dir_handle(&scratch.tmp)?);
        Ok(scratch)
    }

    /// A scratch directory under the system temp dir (`$TMPDIR` or /tmp).
    pub fn in_temp_dir() -> Result<Scratch, SandboxError> {
        Scratch::new(&std::env::temp_dir())
    }

    /// The scratch directory proper, as the host sees it (inside the sandbox: /scratch).
    pub fn path(&self) -> &Path {
        &self.work
    }

    /// The run's private /tmp, as the host sees it.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// The host uid and gid that own the scratch areas and run sandboxed code, when strata
    /// runs as root; `None` otherwise (then everything stays the caller's).
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.owner
    }

    /// The host path that `local` (a path as a plan script writes it) names, after checking
    /// that it stays inside the scratch area: `./x`, `x/y`, `/tmp/x` are fine; `../x`,
    /// `/etc/passwd`, or a path through a symlink that points outside are refused.
    ///
    /// The check holds when it is made; code running in the sandbox at the same time could
    /// swap a directory for a symlink afterwards. Prefer [`Scratch::open_read`],
    /// [`Scratch::create`] and friends, which check and open in one step.
    pub fn resolve(&self, local: impl AsRef<Path>) -> Result<PathBuf, SandboxError> {
        let local = local.as_ref();
        let (area, rel) = self.map(local)?;
        // The longest prefix that exists must open beneath the area; what does not exist yet
        // cannot lead anywhere.
        let comps: Vec<&std::ffi::OsStr> = rel.iter().collect();
        for n in (0..=comps.len()).rev() {
            let prefix: PathBuf = comps[..n].iter().collect();
            match openat_beneath(self.area_fd(area), &prefix, libc::O_PATH, 0) {
                Ok(_) => break,
                Err(e) if is_escape(&e) => return Err(escape(local)),
                Err(e)
                    if e.raw_os_error() == Some(libc::ENOENT)
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    continue
                }
                Err(e) => return Err(io_err("checking", &self.host_path(area, &rel), e)),
            }
        }
        Ok(self.host_path(area, &rel))
    }

    /// Opens an existing regular file for reading.
    pub fn open_read(&self, local: impl AsRef<Path>) -> Result<File, SandboxError> {
        self.open_regular(local.as_ref(), libc::O_RDONLY, "opening")
    }

    /// Creates (or truncates) a regular file for writing, mode 0644, owned by the sandbox user
    /// so that later `!` commands may change it as they could a file they made.
    pub fn create(&self, local: impl AsRef<Path>) -> Result<File, SandboxError> {
        let local = local.as_ref();
        let f = self.open_regular(
            local,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            "creating",
        )?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .map_err(|e| io_err("handing to the sandbox user", local, e))?;
        }
        Ok(f)
    }

    /// Creates a directory and its missing parents (mode 0755, owned by the sandbox user).
    pub fn create_dir_all(&self, local: impl AsRef<Path>) -> Result<(), SandboxError> {
        let local = local.as_ref();
        let (area, rel) = self.map(local)?;
        let base = self.area_fd(area);
        let mut cur: OwnedFd = base
            .try_clone_to_owned()
            .map_err(|e| io_err("opening", &self.host_path(area, Path::new("")), e))?;
        let mut prefix = PathBuf::new();
        for comp in rel.iter() {
            prefix.push(comp);
            let name = CString::new(comp.as_bytes()).map_err(|_| nul(local))?;
            // One component at a time, from a handle that was itself opened beneath the area:
            // mkdirat never follows a symlink in its last component.
            let made = unsafe { libc::mkdirat(cur.as_raw_fd(), name.as_ptr(), 0o755) } == 0;
            if !made {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(io_err("creating", &self.host_path(area, &prefix), e));
                }
            }
            let next = openat_beneath(base, &prefix, libc::O_PATH | libc::O_DIRECTORY, 0)
                .map_err(|e| self.open_err("opening", local, area, &prefix, e))?;
            if made {
                if let Some((uid, gid)) = self.owner {
                    let empty = c"";
                    let r = unsafe {
                        libc::fchownat(
                            next.as_raw_fd(),
                            empty.as_ptr(),
                            uid,
                            gid,
                            libc::AT_EMPTY_PATH,
                        )
                    };
                    if r != 0 {
                        return Err(io_err(
                            "handing to the sandbox user",
                            &self.host_path(area, &prefix),
                            io::Error::last_os_error(),
                        ));
                    }
                }
            }
            cur = next;
        }
        Ok(())
    }

    /// The entries of a directory (without `.` and `..`).
    pub fn read_dir(&self, local: impl AsRef<Path>) -> Result<Vec<ScratchEntry>, SandboxError> {
        let local = local.as_ref();
        let (area, rel) = self.map(local)?;
        let dir = openat_beneath(
            self.area_fd(area),
            &rel,
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(|e| self.open_err("listing", local, area, &rel, e))?;
        // /proc/self/fd/N names the directory already opened, so nothing is resolved again.
        let via = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let host = self.host_path(area, &rel);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&via).map_err(|e| io_err("listing", &host, e))? {
            let entry = entry.map_err(|e| io_err("listing", &host, e))?;
            let file_type = entry.file_type().map_err(|e| io_err("listing", &host, e))?;
            out.push(ScratchEntry {
                name: entry.file_name(),
                file_type,
            });
        }
        drop(dir);
        Ok(out)
    }

    /// What lstat(2) says of a path (a final symlink is described, not followed).
    pub fn symlink_metadata(&self, local: impl AsRef<Path>) -> Result<Metadata, SandboxError> {
        let local = local.as_ref();
        let (area, rel) = self.map(local)?;
        let fd = openat_beneath(self.area_fd(area), &rel, libc::O_PATH | libc::O_NOFOLLOW, 0)
            .map_err(|e| self.open_err("examining", local, area, &rel, e))?;
        File::from(fd)
            .metadata()
            .map_err(|e| io_err("examining", &self.host_path(area, &rel), e))
    }

    fn open_regular(
        &self,
        local: &Path,
        flags: i32,
        op: &'static str,
    ) -> Result<File, SandboxError> {
        let (area, rel) = self.map(local)?;
        // O_NONBLOCK: opening a FIFO the sandbox planted must fail or return at once, never
        // wait for a peer; it is cleared again once the file is known to be regular.
        let fd = openat_beneath(self.area_fd(area), &rel, flags | libc::O_NONBLOCK, 0o644)
            .map_err(|e| self.open_err(op, local, area, &rel, e))?;
        let f = File::from(fd);
        let md = f
            .metadata()
            .map_err(|e| io_err(op, &self.host_path(area, &rel), e))?;
        if !md.file_type().is_file() {
            return Err(SandboxError::BadPath {
                path: local.display().to_string(),
                reason: "it is not a regular file",
            });
        }
        let fl = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        if fl < 0
            || unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK) } < 0
        {
            return Err(io_err(
                op,
                &self.host_path(area, &rel),
                io::Error::last_os_error(),
            ));
        }
        Ok(f)
    }

    fn map(&self, local: &Path) -> Result<(Area, PathBuf), SandboxError> {
        map_local(local, &self.work, &self.tmp)
    }

    fn area_fd(&self, area: Area) -> BorrowedFd<'_> {
        let fd = match area {
            Area::Work => &self.work_dir,
            Area::Tmp => &self.tmp_dir,
        };
        // Both are set by `new` before a Scratch is handed out.
        fd.as_ref()
            .map(|f| f.as_fd())
            .unwrap_or_else(|| unreachable!("scratch handles are opened in Scratch::new"))
    }

    fn host_path(&self, area: Area, rel: &Path) -> PathBuf {
        match area {
            Area::Work => self.work.join(rel),
            Area::Tmp => self.tmp.join(rel),
        }
    }

    fn open_err(
        &self,
        op: &'static str,
        local: &Path,
        area: Area,
        rel: &Path,
        e: io::Error,
    ) -> SandboxError {
        if is_escape(&e) {
            escape(local)
        } else {
            io_err(op, &self.host_path(area, rel), e)
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.work_dir = None;
        self.tmp_dir = None;
        if let Err(e) = remove_tree(&self.root) {
            tracing::warn!(dir = %self.root.display(), error = %e, "could not remove a scratch directory");
        }
    }
}

/// Removes `root` and everything under it. std's remove_dir_all never follows symlinks; what
/// can stop it is a directory the sandboxed code made unreadable or unwritable (which stops
/// only a non-root caller), so on failure every directory is made 0700 and it is tried again.
fn remove_tree(root: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            open_up(root);
            std::fs::remove_dir_all(root)
        }
    }
}

fn open_up(dir: &Path) {
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    if let Ok(rd) = std::fs::read_dir(dir) {
        for entry in rd.flatten() {
            // file_type() is lstat's: a symlink to a directory is not entered.
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                open_up(&entry.path());
            }
        }
    }
}

/// Maps a local path as a script writes it to an area and a normalized relative path inside
/// it. `host_work` and `host_tmp` (the host's own names for the areas) are accepted too, so
/// the interpreter may hand back a path it got from [`Scratch::path`].
pub(crate) fn map_local(
    local: &Path,
    host_work: &Path,
    host_tmp: &Path,
) -> Result<(Area, PathBuf), SandboxError> {
    if local.as_os_str().is_empty() {
        return Err(SandboxError::BadPath {
            path: String::new(),
            reason: "the local path is empty",
        });
    }
    if local.as_os_str().as_bytes().contains(&0) {
        return Err(nul(local));
    }
    let (area, rest) = if local.is_absolute() {
        let candidates: [(&Path, Area); 5] = [
            (host_work, Area::Work),
            (host_tmp, Area::Tmp),
            (Path::new(SANDBOX_SCRATCH), Area::Work),
            (Path::new("/tmp"), Area::Tmp),
            (Path::new("/var/tmp"), Area::Tmp),
        ];
        match candidates
            .iter()
            .find_map(|(base, area)| local.strip_prefix(base).ok().map(|r| (*area, r)))
        {
            Some(found) => found,
            None => {
                return Err(SandboxError::Escape {
                    path: local.display().to_string(),
                    reason: "an absolute local path must be under /tmp; plan scripts name \
                             other local files relative to the scratch directory (./file)",
                })
            }
        }
    } else {
        (Area::Work, local)
    };
    let mut out = PathBuf::new();
    for comp in rest.components() {
        match comp {
            Component::Normal(c) => out.push(c),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(escape(local));
                }
            }
            Component::Prefix(_) => return Err(escape(local)),
        }
    }
    Ok((area, out))
}

/// Every directory from `dir` up to `/` must let the sandbox user pass: bubblewrap, running
/// as that user, binds the scratch areas by path.
fn check_passable(dir: &Path) -> Result<(), SandboxError> {
    for d in dir.ancestors() {
        let md = std::fs::metadata(d).map_err(|e| io_err("examining", d, e))?;
        let mode = md.mode();
        let ok = mode & 0o001 != 0
            || (md.gid() == SANDBOX_GID && mode & 0o010 != 0)
            || (md.uid() == SANDBOX_UID && mode & 0o100 != 0);
        if !ok {
            return Err(SandboxError::Unreachable {
                dir: d.to_path_buf(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

fn open_dir_handle(dir: &Path) -> Result<OwnedFd, SandboxError> {
    let c = CString::new(dir.as_os_str().as_bytes()).map_err(|_| nul(dir))?;
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io_err("opening", dir, io::Error::last_os_error()));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The kernel's `struct open_how` (libc's is non-exhaustive, so it cannot be built in place).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// openat2(2) from `dir` with `RESOLVE_BENEATH` (no `..`, absolute path or symlink may leave
/// `dir`), no magic links (/proc/self/fd/...), and no crossing into another mount.
fn openat_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let path = if rel.as_os_str().is_empty() {
        CString::from(c".")
    } else {
        CString::new(rel.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?
    };
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV,
    };
    let mut tries = 0;
    loop {
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r >= 0 {
            return Ok(unsafe { OwnedFd::from_raw_fd(r as i32) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // The kernel saw a concurrent rename it could not rule out; trying again is the
            // documented answer.
            Some(libc::EAGAIN) if tries < 16 => tries += 1,
            _ => return Err(e),
        }
    }
}

/// EXDEV: the walk would leave the area (`..`, an absolute symlink, a symlink out, or a mount);
/// ELOOP: a magic link, or symlinks that loop.
fn is_escape(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EXDEV) | Some(libc::ELOOP))
}

fn escape(local: &Path) -> SandboxError {
    SandboxError::Escape {
        path: local.display().to_string(),
        reason: "it leads outside the run's scratch directory (through `..` or a symlink)",
    }
}

fn nul(p: &Path) -> SandboxError {
    SandboxError::BadPath {
        path: p.display().to_string(),
        reason: "it contains a NUL byte",
    }
}

fn io_err(op: &'static str, path: &Path, source: io::Error) -> SandboxError {
    SandboxError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str) -> Result<(Area, PathBuf), SandboxError> {
        map_local(
            Path::new(p),
            Path::new("/h/run/work"),
            Path::new("/h/run/tmp"),
        )
    }

    #[test]
    fn relative_paths_name_the_scratch_directory() {
        assert_eq!(m("./x").unwrap(), (Area::Work, PathBuf::from("x")));
        assert_eq!(m("a/b/./c").unwrap(), (Area::Work, PathBuf::from("a/b/c")));
        assert_eq!(m("a/../b").unwrap(), (Area::Work, PathBuf::from("b")));
        assert_eq!(m(".").unwrap(), (Area::Work, PathBuf::new()));
    }

    #[test]
    fn tmp_paths_name_the_private_tmp() {
        assert_eq!(m("/tmp/x").unwrap(), (Area::Tmp, PathBuf::from("x")));
        assert_eq!(m("/tmp").unwrap(), (Area::Tmp, PathBuf::new()));
        assert_eq!(
            m("/var/tmp/y/z").unwrap(),
            (Area::Tmp, PathBuf::from("y/z"))
        );
        assert_eq!(m("/h/run/tmp/q").unwrap(), (Area::Tmp, PathBuf::from("q")));
    }

    #[test]
    fn the_sandbox_and_host_names_of_the_scratch_directory_map_to_it() {
        assert_eq!(m("/scratch/x").unwrap(), (Area::Work, PathBuf::from("x")));
        assert_eq!(
            m("/h/run/work/d/f").unwrap(),
            (Area::Work, PathBuf::from("d/f"))
        );
    }

    #[test]
    fn escapes_and_other_absolute_paths_are_refused() {
        for p in [
            "../x",
            "a/../../x",
            "/tmp/../etc/passwd",
            "/etc/passwd",
            "/tmpx",
            "/",
            "/h/run",
        ] {
            assert!(
                matches!(m(p), Err(SandboxError::Escape { .. })),
                "{p} was accepted: {:?}",
                m(p)
            );
        }
        assert!(matches!(m(""), Err(SandboxError::BadPath { .. })));
    }

    #[test]
    fn the_refusal_of_an_absolute_path_says_what_is_allowed() {
        let msg = m("/etc/passwd").unwrap_err().to_string();
        assert!(msg.contains("/etc/passwd") && msg.contains("/tmp"), "{msg}");
    }
}
