//! Path-level operations on the mount table, with the semantics of the system calls (and
//! the few coreutils) that guestfish's daemon runs for them: what `strata fs` and the plan
//! engine call. Each returns an `FsError` whose detail names the path, the way guestfish's
//! messages do (`mkdir: /a/b: No such file or directory` once the caller adds the command).
//!
//! New files and directories get guestfish's defaults: owner root, mode 0644 for files
//! and 0755 for directories (0666 and 0777 under the daemon's umask 022).

use super::mounts::{Loc, MountTable};
use super::types::*;

pub const FILE_MODE: u32 = 0o644;
pub const DIR_MODE: u32 = 0o755;
const ROOT: Owner = Owner { uid: 0, gid: 0 };
/// How much a read moves at once.
const IO_CHUNK: usize = 1 << 20;

fn show(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn at<T>(path: &[u8], r: FsResult<T>) -> FsResult<T> {
    r.map_err(|e| FsError::new(e.errno, show(path)))
}

fn fail<T>(errno: i32, path: &[u8]) -> FsResult<T> {
    Err(FsError::new(errno, show(path)))
}

impl MountTable {
    /// stat(2) (`follow`) or lstat(2).
    pub fn stat_path(&mut self, path: &[u8], follow: bool) -> FsResult<Stat> {
        at(
            path,
            (|| {
                let loc = self.resolve(path, follow)?;
                self.fs(loc)?.stat(loc.ino)
            })(),
        )
    }

    /// Whether anything is at `path` (following symlinks, as guestfish's `exists` does).
    pub fn exists(&mut self, path: &[u8]) -> FsResult<bool> {
        match self.resolve(path, true) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.errno, libc::ENOENT | libc::ENOTDIR) => Ok(false),
            Err(e) => at(path, Err(e)),
        }
    }

    /// The kind of what is at `path`, or `None`; lstat unless `follow`.
    pub fn kind_of(&mut self, path: &[u8], follow: bool) -> FsResult<Option<FileKind>> {
        match self.resolve(path, follow) {
            Ok(loc) => Ok(Some(at(path, self.fs(loc)?.stat(loc.ino))?.kind)),
            Err(e) if matches!(e.errno, libc::ENOENT | libc::ENOTDIR) => Ok(None),
            Err(e) => at(path, Err(e)),
        }
    }

    fn file_at(&mut self, path: &[u8]) -> FsResult<(Loc, Stat)> {
        at(
            path,
            (|| {
                let loc = self.resolve(path, true)?;
                let st = self.fs(loc)?.stat(loc.ino)?;
                match st.kind {
                    FileKind::Directory => Err(FsError::new(libc::EISDIR, "")),
                    _ => Ok((loc, st)),
                }
            })(),
        )
    }

    /// Reads up to `len` bytes at `offset` of the file at `path`.
    pub fn read_path(&mut self, path: &[u8], offset: u64, len: usize) -> FsResult<Vec<u8>> {
        let (loc, _) = self.file_at(path)?;
        let mut out = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = at(
                path,
                self.fs(loc)?
                    .read(loc.ino, offset + done as u64, &mut out[done..]),
            )?;
            if n == 0 {
                break;
            }
            done += n;
        }
        out.truncate(done);
        Ok(out)
    }

    /// The whole file at `path`, refusing files larger than `limit` bytes (EFBIG).
    pub fn read_file(&mut self, path: &[u8], limit: u64) -> FsResult<Vec<u8>> {
        let (_, st) = self.file_at(path)?;
        if st.size > limit {
            return fail(libc::EFBIG, path);
        }
        let mut out = Vec::with_capacity(st.size as usize);
        loop {
            let piece = self.read_path(path, out.len() as u64, IO_CHUNK)?;
            if piece.is_empty() {
                return Ok(out);
            }
            out.extend_from_slice(&piece);
        }
    }

    /// open(path, O_WRONLY|O_CREAT|O_TRUNC, mode): the file is made (mode applies only then)
    /// or emptied, following a final symlink even when it dangles. Returns where it is.
    pub fn create_or_truncate(&mut self, path: &[u8], mode: u32) -> FsResult<Loc> {
        at(
            path,
            (|| {
                let t = self.target_following(path)?;
                self.check_writable(t.parent)?;
                match t.existing {
                    Some(loc) => {
                        let fs = self.fs(loc)?;
                        if fs.stat(loc.ino)?.is_dir() {
                            return Err(FsError::new(libc::EISDIR, ""));
                        }
                        fs.truncate(loc.ino, 0)?;
                        Ok(loc)
                    }
                    None => {
                        let ino = self
                            .fs(t.parent)?
                            .create(t.parent.ino, &t.name, mode, ROOT)?;
                        Ok(Loc {
                            mount: t.parent.mount,
                            ino,
                        })
                    }
                }
            })(),
        )
    }

    /// Writes `data` at `offset` of the existing file at `path`.
    pub fn write_path(&mut self, path: &[u8], offset: u64, data: &[u8]) -> FsResult<()> {
        let (loc, _) = self.file_at(path)?;
        at(path, self.check_writable(loc))?;
        at(path, self.fs(loc)?.write(loc.ino, offset, data))
    }

    /// Replaces the contents of `path` (creating it with mode 0644): guestfish `write`,
    /// `upload`.
    pub fn write_file(&mut self, path: &[u8], data: &[u8]) -> FsResult<()> {
        let loc = self.create_or_truncate(path, FILE_MODE)?;
        for (i, piece) in data.chunks(IO_CHUNK).enumerate() {
            at(
                path,
                self.fs(loc)?.write(loc.ino, (i * IO_CHUNK) as u64, piece),
            )?;
        }
        Ok(())
    }

    /// Appends `data` to `path`, creating it if missing: guestfish `write-append`.
    pub fn append_file(&mut self, path: &[u8], data: &[u8]) -> FsResult<()> {
        let loc = match self.resolve(path, true) {
            Ok(loc) => loc,
            Err(e) if e.errno == libc::ENOENT => self.create_or_truncate(path, FILE_MODE)?,
            Err(e) => return at(path, Err(e)),
        };
        at(path, self.check_writable(loc))?;
        let fs = self.fs(loc)?;
        let st = at(path, fs.stat(loc.ino))?;
        if st.is_dir() {
            return fail(libc::EISDIR, path);
        }
        at(path, fs.write(loc.ino, st.size, data))
    }

    pub fn truncate_path(&mut self, path: &[u8], size: u64) -> FsResult<()> {
        let (loc, _) = self.file_at(path)?;
        at(path, self.check_writable(loc))?;
        at(path, self.fs(loc)?.truncate(loc.ino, size))
    }

    /// guestfish `touch`: creates an empty file, or sets an existing one's times to now.
    /// Like the daemon, refuses anything but a regular file (or a link to one).
    pub fn touch(&mut self, path: &[u8]) -> FsResult<()> {
        match self.resolve(path, true) {
            Ok(loc) => {
                at(path, self.check_writable(loc))?;
                let fs = self.fs(loc)?;
                if at(path, fs.stat(loc.ino))?.kind != FileKind::Regular {
                    return fail(libc::EINVAL, path);
                }
                let now = Timespec::now();
                at(
                    path,
                    fs.setattr(
                        loc.ino,
                        &SetAttr {
                            atime: Some(now),
                            mtime: Some(now),
                            ..SetAttr::default()
                        },
                    ),
                )
            }
            Err(e) if e.errno == libc::ENOENT => {
                self.create_or_truncate(path, FILE_MODE).map(|_| ())
            }
            Err(e) => at(path, Err(e)),
        }
    }

    /// mkdir(2).
    pub fn mkdir(&mut self, path: &[u8], mode: u32) -> FsResult<()> {
        at(
            path,
            (|| {
                let t = self.target(path)?;
                if t.existing.is_some() {
                    return Err(FsError::new(libc::EEXIST, ""));
                }
                self.check_writable(t.parent)?;
                self.fs(t.parent)?
                    .mkdir(t.parent.ino, &t.name, mode, ROOT)
                    .map(|_| ())
            })(),
        )
    }

    /// `mkdir -p`: every missing directory on the way; an existing directory (or a link
    /// to one) is fine, anything else in the way is EEXIST/ENOTDIR.
    pub fn mkdir_p(&mut self, path: &[u8], mode: u32) -> FsResult<()> {
        let comps = super::mounts::components(path)?;
        let mut p = Vec::new();
        for c in comps {
            p.push(b'/');
            p.extend_from_slice(&c);
            match self.kind_of(&p, true)? {
                Some(FileKind::Directory) => continue,
                Some(_) => return fail(libc::EEXIST, &p),
                None => match self.mkdir(&p, mode) {
                    Ok(()) => {}
                    // `..` and `.` components name directories that exist.
                    Err(e) if e.errno == libc::EEXIST || e.errno == libc::EINVAL => {}
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(())
    }

    /// unlink(2): a non-directory (a symlink itself, not its target).
    pub fn rm(&mut self, path: &[u8]) -> FsResult<()> {
        self.remove(path, false)
    }

    /// `rm -f`: as `rm`, but a missing file is not an error.
    pub fn rm_f(&mut self, path: &[u8]) -> FsResult<()> {
        match self.rm(path) {
            Err(e) if e.errno == libc::ENOENT => Ok(()),
            r => r,
        }
    }

    /// rmdir(2).
    pub fn rmdir(&mut self, path: &[u8]) -> FsResult<()> {
        self.remove(path, true)
    }

    /// unlink(2) or rmdir(2) of the entry `path` names; a mount's root is EBUSY.
    fn remove(&mut self, path: &[u8], dir: bool) -> FsResult<()> {
        at(
            path,
            (|| {
                let t = self.target(path)?;
                let Some(loc) = t.existing else {
                    return Err(FsError::new(libc::ENOENT, ""));
                };
                self.check_writable(t.parent)?;
                if self.is_mount_root(loc) {
                    return Err(FsError::new(libc::EBUSY, ""));
                }
                let fs = self.fs(t.parent)?;
                if dir {
                    fs.rmdir(t.parent.ino, &t.name)
                } else {
                    fs.unlink(t.parent.ino, &t.name)
                }
            })(),
        )
    }

    /// `rm -rf`: removes `path` and, for a directory, all beneath it; symlinks are removed,
    /// never followed; nothing there is not an error; a mountpoint inside is EBUSY (as
    /// rm -rf fails to remove it, after removing what it can). A directory found inside
    /// itself (a damaged filesystem whose directories form a cycle) is ELOOP, not an
    /// endless descent.
    pub fn rm_rf(&mut self, path: &[u8]) -> FsResult<()> {
        self.rm_rf_below(path, &mut Vec::new())
    }

    /// `rm_rf` of `path`, below the directories `above` (outermost first).
    fn rm_rf_below(&mut self, path: &[u8], above: &mut Vec<Loc>) -> FsResult<()> {
        let t = match self.target(path) {
            Err(e) if matches!(e.errno, libc::ENOENT | libc::ENOTDIR) => return Ok(()),
            t => at(path, t)?,
        };
        let Some(loc) = t.existing else {
            return Ok(());
        };
        at(path, self.check_writable(t.parent))?;
        if self.is_mount_root(loc) {
            return fail(libc::EBUSY, path);
        }
        let fs = self.fs(loc)?;
        if at(path, fs.stat(loc.ino))?.is_dir() {
            if above.contains(&loc) {
                return Err(FsError::new(
                    libc::ELOOP,
                    format!(
                        "{}: this directory is inside itself (the filesystem is damaged; \
                         fsck it)",
                        show(path)
                    ),
                ));
            }
            let entries = at(path, fs.readdir(loc.ino))?;
            above.push(loc);
            for e in entries {
                let mut child = path.to_vec();
                child.push(b'/');
                child.extend_from_slice(&e.name);
                if let Err(e) = self.rm_rf_below(&child, above) {
                    above.pop();
                    return Err(e);
                }
            }
            above.pop();
            at(path, self.fs(t.parent)?.rmdir(t.parent.ino, &t.name))
        } else {
            at(path, self.fs(t.parent)?.unlink(t.parent.ino, &t.name))
        }
    }

    /// rename(2); across filesystems EXDEV, as the kernel says.
    pub fn rename_path(&mut self, from: &[u8], to: &[u8]) -> FsResult<()> {
        let f = at(from, self.target(from))?;
        let Some(floc) = f.existing else {
            return fail(libc::ENOENT, from);
        };
        let t = at(to, self.target(to))?;
        if f.parent.mount != t.parent.mount {
            return fail(libc::EXDEV, to);
        }
        if self.is_mount_root(floc) || t.existing.is_some_and(|l| self.is_mount_root(l)) {
            return fail(libc::EBUSY, from);
        }
        at(to, self.check_writable(t.parent))?;
        at(
            to,
            self.fs(f.parent)?
                .rename(f.parent.ino, &f.name, t.parent.ino, &t.name),
        )
    }

    /// symlink(2): a link at `linkpath` holding `target`.
    pub fn symlink(&mut self, target: &[u8], linkpath: &[u8]) -> FsResult<()> {
        at(
            linkpath,
            (|| {
                let t = self.target(linkpath)?;
                if t.existing.is_some() {
                    return Err(FsError::new(libc::EEXIST, ""));
                }
                self.check_writable(t.parent)?;
                self.fs(t.parent)?
                    .symlink(t.parent.ino, &t.name, target, ROOT)
                    .map(|_| ())
            })(),
        )
    }

    /// link(2): `linkpath` becomes another name of the non-directory at `target`.
    pub fn link(&mut self, target: &[u8], linkpath: &[u8]) -> FsResult<()> {
        let src = at(target, self.resolve(target, false))?;
        // The VFS refuses links to directories before any filesystem is asked.
        if at(target, self.fs(src)?.stat(src.ino))?.is_dir() {
            return fail(libc::EPERM, target);
        }
        let t = at(linkpath, self.target(linkpath))?;
        if t.existing.is_some() {
            return fail(libc::EEXIST, linkpath);
        }
        if src.mount != t.parent.mount {
            return fail(libc::EXDEV, linkpath);
        }
        at(linkpath, self.check_writable(t.parent))?;
        at(linkpath, self.fs(src)?.link(src.ino, t.parent.ino, &t.name))
    }

    pub fn readlink(&mut self, path: &[u8]) -> FsResult<Vec<u8>> {
        at(
            path,
            (|| {
                let loc = self.resolve(path, false)?;
                self.fs(loc)?.readlink(loc.ino)
            })(),
        )
    }

    /// chmod, chown, utimens of what `path` leads to (`follow`) or of a link itself.
    pub fn setattr_path(&mut self, path: &[u8], follow: bool, attr: &SetAttr) -> FsResult<()> {
        at(
            path,
            (|| {
                let loc = self.resolve(path, follow)?;
                self.check_writable(loc)?;
                self.fs(loc)?.setattr(loc.ino, attr)
            })(),
        )
    }

    /// The entries of the directory at `path` (following symlinks), with their kinds;
    /// mountpoints show as the directories they are.
    pub fn readdir_path(&mut self, path: &[u8]) -> FsResult<Vec<DirEntry>> {
        at(
            path,
            (|| {
                let loc = self.resolve(path, true)?;
                let fs = self.fs(loc)?;
                if !fs.stat(loc.ino)?.is_dir() {
                    return Err(FsError::new(libc::ENOTDIR, ""));
                }
                fs.readdir(loc.ino)
            })(),
        )
    }

    /// statvfs of the filesystem holding `path`.
    pub fn statvfs_path(&mut self, path: &[u8]) -> FsResult<StatVfs> {
        at(
            path,
            (|| {
                let loc = self.resolve(path, true)?;
                self.fs(loc)?.statvfs()
            })(),
        )
    }

    /// Every path matching the shell pattern `pattern` (`*`, `?`, `[...]` per component;
    /// hidden names match only a pattern that starts with `.`), sorted as glob(3) sorts;
    /// directories end in `/` (GLOB_MARK, as guestfish's glob-expand gives them). No match
    /// is an empty list.
    pub fn glob(&mut self, pattern: &[u8]) -> FsResult<Vec<Vec<u8>>> {
        let comps = super::mounts::components(pattern)?;
        let mut found: Vec<Vec<u8>> = vec![Vec::new()];
        for c in comps {
            let mut next = Vec::new();
            for base in &found {
                let dir = if base.is_empty() {
                    b"/".to_vec()
                } else {
                    base.clone()
                };
                if !has_magic(&c) {
                    let mut p = base.clone();
                    p.push(b'/');
                    p.extend_from_slice(&unescape(&c));
                    if self.kind_of(&p, false)?.is_some() {
                        next.push(p);
                    }
                    continue;
                }
                let entries = match self.readdir_path(&dir) {
                    Ok(e) => e,
                    Err(e) if matches!(e.errno, libc::ENOTDIR | libc::ENOENT | libc::EACCES) => {
                        continue
                    }
                    Err(e) => return Err(e),
                };
                for e in entries {
                    if e.name[0] == b'.' && c[0] != b'.' {
                        continue;
                    }
                    if fnmatch(&c, &e.name) {
                        let mut p = base.clone();
                        p.push(b'/');
                        p.extend_from_slice(&e.name);
                        next.push(p);
                    }
                }
            }
            found = next;
        }
        let mut out = Vec::new();
        for mut p in found {
            if p.is_empty() {
                p = b"/".to_vec();
            } else if self.kind_of(&p, true)? == Some(FileKind::Directory) {
                p.push(b'/');
            }
            out.push(p);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

fn has_magic(c: &[u8]) -> bool {
    c.iter().any(|b| matches!(b, b'*' | b'?' | b'['))
}

fn unescape(c: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(c.len());
    let mut i = 0;
    while i < c.len() {
        if c[i] == b'\\' && i + 1 < c.len() {
            i += 1;
        }
        out.push(c[i]);
        i += 1;
    }
    out
}

/// fnmatch(3) without flags over one component: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`, `\x`.
pub fn fnmatch(pat: &[u8], name: &[u8]) -> bool {
    // Iterative with one backtrack point for the last `*`: linear enough, never recursive.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pat.len() {
            match pat[p] {
                b'*' => {
                    star = Some((p, n));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    n += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, len)) = class(&pat[p..], name[n]) {
                        if matched {
                            p += len;
                            n += 1;
                            continue;
                        }
                    } else if name[n] == b'[' {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pat.len() => {
                    if pat[p + 1] == name[n] {
                        p += 2;
                        n += 1;
                        continue;
                    }
                }
                c => {
                    if c == name[n] {
                        p += 1;
                        n += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, sn)) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|&b| b == b'*')
}

/// Matches `c` against the bracket expression at the start of `pat`: (matched, length of
/// the expression), or `None` if it is not a complete expression.
fn class(pat: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(pat.get(i), Some(b'!') | Some(b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pat.len() {
        if pat[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        let lo = pat[i];
        if i + 2 < pat.len() && pat[i + 1] == b'-' && pat[i + 2] != b']' {
            if lo <= c && c <= pat[i + 2] {
                matched = true;
            }
            i += 3;
        } else {
            if lo == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::memfs::MemFs;

    fn guest() -> MountTable {
        let mut t = MountTable::new();
        t.mount(Box::new(MemFs::new()), "/dev/sda1", "/", false)
            .unwrap();
        t
    }

    #[test]
    fn write_append_read_and_a_write_through_a_dangling_link() {
        let mut g = guest();
        g.mkdir_p(b"/etc/sysconfig/network-scripts", DIR_MODE)
            .unwrap();
        g.write_file(b"/etc/hostname", b"web-01\n").unwrap();
        g.append_file(b"/etc/hostname", b"more\n").unwrap();
        assert_eq!(
            g.read_file(b"/etc/hostname", 1 << 20).unwrap(),
            b"web-01\nmore\n"
        );
        assert_eq!(g.stat_path(b"/etc/hostname", true).unwrap().perm(), 0o644);
        assert_eq!(g.stat_path(b"/etc/sysconfig", true).unwrap().perm(), 0o755);
        g.symlink(b"/etc/real", b"/etc/link").unwrap();
        g.write_file(b"/etc/link", b"x").unwrap();
        assert_eq!(g.read_file(b"/etc/real", 10).unwrap(), b"x");
        assert_eq!(g.readlink(b"/etc/link").unwrap(), b"/etc/real");
        let e = g.read_file(b"/etc/hostname", 3).unwrap_err();
        assert_eq!(e.errno, libc::EFBIG);
        let e = g.write_file(b"/etc", b"x").unwrap_err();
        assert_eq!(e.to_string(), "/etc: Is a directory");
    }

    #[test]
    fn mkdir_p_accepts_what_exists_and_refuses_files_in_the_way() {
        let mut g = guest();
        g.mkdir_p(b"/a/b/c", DIR_MODE).unwrap();
        g.mkdir_p(b"/a/b/c", DIR_MODE).unwrap();
        g.mkdir_p(b"/a/./b/../b/d", DIR_MODE).unwrap();
        assert!(g.exists(b"/a/b/d").unwrap());
        g.write_file(b"/a/f", b"").unwrap();
        assert_eq!(
            g.mkdir_p(b"/a/f/g", DIR_MODE).unwrap_err().errno,
            libc::EEXIST
        );
        assert_eq!(g.mkdir(b"/a", DIR_MODE).unwrap_err().errno, libc::EEXIST);
        assert_eq!(g.mkdir(b"/x/y", DIR_MODE).unwrap_err().errno, libc::ENOENT);
    }

    #[test]
    fn rm_rf_removes_trees_and_links_but_not_what_links_point_to() {
        let mut g = guest();
        g.mkdir_p(b"/keep", DIR_MODE).unwrap();
        g.write_file(b"/keep/file", b"k").unwrap();
        g.mkdir_p(b"/t/d/e", DIR_MODE).unwrap();
        g.write_file(b"/t/d/e/f", b"1").unwrap();
        g.symlink(b"/keep", b"/t/link").unwrap();
        g.rm_rf(b"/t").unwrap();
        assert!(!g.exists(b"/t").unwrap());
        assert_eq!(g.read_file(b"/keep/file", 10).unwrap(), b"k");
        g.rm_rf(b"/nothing/here").unwrap();
        assert_eq!(g.rm(b"/keep").unwrap_err().errno, libc::EISDIR);
        assert_eq!(g.rm(b"/gone").unwrap_err().errno, libc::ENOENT);
        g.rm_f(b"/gone").unwrap();
        assert_eq!(g.rmdir(b"/keep").unwrap_err().errno, libc::ENOTEMPTY);
        assert_eq!(g.rm_rf(b"/").unwrap_err().errno, libc::EBUSY);
    }

    /// A FAT image (formatted by the fatfs crate) with /DIR/SUB, whose SUB entry is then
    /// pointed at DIR's own cluster: /DIR/SUB/SUB/... never ends.
    fn fat_with_a_directory_cycle() -> MountTable {
        use crate::store::device::{MemDevice, SharedDevice};
        use std::sync::Arc;
        let mut img = std::io::Cursor::new(vec![0u8; 4 << 20]);
        fatfs::format_volume(&mut img, fatfs::FormatVolumeOptions::new()).unwrap();
        let dev: SharedDevice = Arc::new(MemDevice::new(img.into_inner()));
        let fs = crate::fs::fat::open(dev.clone(), Default::default()).unwrap();
        let mut g = MountTable::new();
        g.mount(fs, "/dev/sda", "/", false).unwrap();
        g.mkdir_p(b"/DIR/SUB", DIR_MODE).unwrap();
        g.write_file(b"/DIR/FILE", b"x").unwrap();
        g.umount_all().unwrap();
        let mut b = vec![0u8; dev.len() as usize];
        dev.read_at(&mut b, 0).unwrap();
        let entry = |name: &[u8; 11]| (0..b.len()).step_by(32).find(|&e| &b[e..e + 11] == name);
        let (dir, sub) = (
            entry(b"DIR        ").unwrap(),
            entry(b"SUB        ").unwrap(),
        );
        let cluster = [b[dir + 26], b[dir + 27]];
        dev.write_at(&cluster, sub as u64 + 26).unwrap();
        let fs = crate::fs::fat::open(dev, Default::default()).unwrap();
        let mut g = MountTable::new();
        g.mount(fs, "/dev/sda", "/", false).unwrap();
        g
    }

    #[test]
    fn rm_rf_of_a_directory_inside_itself_is_eloop_not_an_endless_descent() {
        let mut g = fat_with_a_directory_cycle();
        assert!(g.exists(b"/DIR/SUB/SUB/SUB/FILE").unwrap());
        let t = std::time::Instant::now();
        let e = g.rm_rf(b"/DIR").unwrap_err();
        assert_eq!(e.errno, libc::ELOOP, "{e}");
        assert!(e.detail.contains("/DIR/SUB"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn paths_of_path_max_bytes_or_more_are_enametoolong() {
        let mut g = guest();
        let mut p = b"/".to_vec();
        while p.len() < crate::fs::mounts::PATH_MAX - 2 {
            p.extend_from_slice(b"a/");
        }
        assert_eq!(g.exists(&p).unwrap(), false);
        p.extend_from_slice(b"bb");
        assert_eq!(g.stat_path(&p, true).unwrap_err().errno, libc::ENAMETOOLONG);
        assert_eq!(g.rm_rf(&p).unwrap_err().errno, libc::ENAMETOOLONG);
        // Resolving through a directory cycle ends too.
        let mut g = fat_with_a_directory_cycle();
        let mut deep = b"/DIR".to_vec();
        while deep.len() < crate::fs::mounts::PATH_MAX {
            deep.extend_from_slice(b"/SUB");
        }
        assert_eq!(g.exists(&deep).unwrap_err().errno, libc::ENAMETOOLONG);
    }

    #[test]
    fn touch_creates_or_refreshes_only_regular_files() {
        let mut g = guest();
        g.touch(b"/new").unwrap();
        assert_eq!(g.stat_path(b"/new", true).unwrap().size, 0);
        g.mkdir(b"/d", DIR_MODE).unwrap();
        assert_eq!(g.touch(b"/d").unwrap_err().errno, libc::EINVAL);
    }

    #[test]
    fn glob_matches_per_component_and_marks_directories() {
        let mut g = guest();
        for p in [&b"/etc/sysconfig/network-scripts"[..], b"/etc/ssh"] {
            g.mkdir_p(p, DIR_MODE).unwrap();
        }
        for f in [
            &b"/etc/ssh/ssh_host_rsa_key"[..],
            b"/etc/ssh/ssh_host_rsa_key.pub",
            b"/etc/ssh/.hidden",
            b"/etc/ssh/sshd_config",
        ] {
            g.write_file(f, b"").unwrap();
        }
        let s = |v: Vec<Vec<u8>>| {
            v.into_iter()
                .map(|p| String::from_utf8(p).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            s(g.glob(b"/etc/ssh/ssh_host_*").unwrap()),
            ["/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_rsa_key.pub"]
        );
        assert_eq!(
            s(g.glob(b"/etc/s*").unwrap()),
            ["/etc/ssh/", "/etc/sysconfig/"]
        );
        assert_eq!(
            s(g.glob(b"/etc/ssh/*").unwrap()).len(),
            3,
            "hidden names need a leading dot"
        );
        assert_eq!(s(g.glob(b"/etc/ssh/.h*").unwrap()), ["/etc/ssh/.hidden"]);
        assert_eq!(
            s(g.glob(b"/etc/*/ssh[d_]?config").unwrap()),
            ["/etc/ssh/sshd_config"]
        );
        assert!(g.glob(b"/nope/*").unwrap().is_empty());
        assert_eq!(s(g.glob(b"/etc").unwrap()), ["/etc/"]);
    }

    #[test]
    fn fnmatch_handles_classes_ranges_negation_and_stars() {
        assert!(fnmatch(b"*.cfg", b"boot.cfg"));
        assert!(!fnmatch(b"*.cfg", b"boot.cfgx"));
        assert!(fnmatch(b"a*b*c", b"aXXbYYc"));
        assert!(fnmatch(b"[!a]x", b"bx"));
        assert!(!fnmatch(b"[!a]x", b"ax"));
        assert!(fnmatch(b"[a-c]", b"b"));
        assert!(fnmatch(b"[]]", b"]"));
        assert!(fnmatch(b"\\*", b"*"));
        assert!(!fnmatch(b"\\*", b"x"));
        assert!(fnmatch(b"[", b"["));
        assert!(fnmatch(b"**", b""));
        // No exponential blow-up on hostile patterns.
        let p = vec![b'*'; 50].into_iter().chain([b'x']).collect::<Vec<_>>();
        assert!(!fnmatch(&p, &[b'a'; 200]));
    }

    #[test]
    fn rename_across_mounts_is_exdev() {
        let mut g = guest();
        g.mkdir(b"/boot", DIR_MODE).unwrap();
        g.mount(Box::new(MemFs::new()), "/dev/sda2", "/boot", false)
            .unwrap();
        g.write_file(b"/f", b"1").unwrap();
        assert_eq!(
            g.rename_path(b"/f", b"/boot/f").unwrap_err().errno,
            libc::EXDEV
        );
        g.rename_path(b"/f", b"/g").unwrap();
        assert_eq!(g.read_file(b"/g", 9).unwrap(), b"1");
        assert_eq!(
            g.rename_path(b"/boot", b"/b2").unwrap_err().errno,
            libc::EBUSY
        );
    }
}
