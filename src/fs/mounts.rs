//! The mount table: several filesystems mounted at guest mountpoints (`/`, then `/boot`
//! inside it), and guest paths resolved across them the way a kernel resolves them.
//!
//! Resolution walks one component at a time, keeping the directories it came through on a
//! stack: `..` pops it (and stops at the guest root), an absolute symlink restarts from the
//! guest root, a relative one continues from the directory holding it, a mountpoint is
//! crossed into the root of what is mounted on it. Every lookup is a call into one of the
//! mounted `GuestFs` instances, so no path, `..` or symlink can reach anything outside the
//! mounted filesystems: there is nothing else to reach. More than `MAX_SYMLINKS` links in
//! one resolution is ELOOP, as in Linux.

use std::collections::VecDeque;

use super::types::*;
use super::GuestFs;

/// Linux's limit on symlinks followed in one path resolution.
pub const MAX_SYMLINKS: usize = 40;

/// Linux's limit on a path given to a system call, with its NUL (`PATH_MAX`). It also
/// bounds how deep anything that builds paths from directory listings can go (rm -rf on a
/// damaged filesystem whose directories form a cycle).
pub const PATH_MAX: usize = 4096;

/// A place in the guest: a mounted filesystem (its index in the table) and an inode in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub mount: usize,
    pub ino: Ino,
}

struct Mounted {
    point: String,
    device: String,
    fs: Box<dyn GuestFs>,
    read_only: bool,
    /// The directory this filesystem is mounted on (`None` for `/`).
    covers: Option<Loc>,
}

/// What a mount table entry is, for `mountpoints` and `mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub device: String,
    pub point: String,
    pub fs_type: &'static str,
    pub read_only: bool,
}

#[derive(Default)]
pub struct MountTable {
    mounts: Vec<Option<Mounted>>,
}

/// Where a path leads when something is to be made or removed there: the directory that
/// holds (or would hold) the final component, the component, and what is there now.
pub struct Target {
    pub parent: Loc,
    pub name: Vec<u8>,
    pub existing: Option<Loc>,
}

fn err<T>(errno: i32, detail: impl Into<String>) -> FsResult<T> {
    Err(FsError::new(errno, detail))
}

/// The components of an absolute guest path; a relative one is refused as guestfish
/// refuses it.
pub fn components(path: &[u8]) -> FsResult<VecDeque<Vec<u8>>> {
    if path.first() != Some(&b'/') {
        return err(
            libc::EINVAL,
            format!(
                "{}: path must start with a / character",
                String::from_utf8_lossy(path)
            ),
        );
    }
    if path.contains(&0) {
        return err(libc::EINVAL, "path contains a NUL byte");
    }
    if path.len() >= PATH_MAX {
        return err(
            libc::ENAMETOOLONG,
            format!("a path of {} bytes is too long", path.len()),
        );
    }
    Ok(split(path))
}

fn split(path: &[u8]) -> VecDeque<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

impl MountTable {
    pub fn new() -> MountTable {
        MountTable::default()
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Mounted)> {
        self.mounts
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.as_ref().map(|m| (i, m)))
    }

    fn root_mount(&self) -> FsResult<usize> {
        self.live()
            .find(|(_, m)| m.covers.is_none())
            .map(|(i, _)| i)
            .ok_or_else(|| {
                FsError::new(
                    libc::ENOENT,
                    "no filesystem is mounted on /; mount one first (list-filesystems shows them)",
                )
            })
    }

    fn mounted(&mut self, m: usize) -> FsResult<&mut Mounted> {
        self.mounts
            .get_mut(m)
            .and_then(Option::as_mut)
            .ok_or_else(|| FsError::new(libc::ESTALE, "that filesystem was unmounted"))
    }

    /// The filesystem behind a location.
    pub fn fs(&mut self, loc: Loc) -> FsResult<&mut dyn GuestFs> {
        Ok(self.mounted(loc.mount)?.fs.as_mut())
    }

    /// EROFS unless the filesystem at `loc` is mounted read-write.
    pub fn check_writable(&self, loc: Loc) -> FsResult<()> {
        match self.mounts.get(loc.mount).and_then(Option::as_ref) {
            Some(m) if !m.read_only => Ok(()),
            Some(m) => err(
                libc::EROFS,
                format!("{} is mounted read-only on {}", m.device, m.point),
            ),
            None => err(libc::ESTALE, "that filesystem was unmounted"),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.live().next().is_none()
    }

    /// Mounts `fs` (the filesystem of `device`) on `point`: `/` first, then directories
    /// inside what is mounted. A device is mounted once, but for btrfs, whose subvolumes
    /// are mounts of one device (the kernel in the VM shares the filesystem between them);
    /// a directory carries one mount.
    pub fn mount(
        &mut self,
        fs: Box<dyn GuestFs>,
        device: &str,
        point: &str,
        read_only: bool,
    ) -> FsResult<()> {
        let shared = |m: &Mounted| m.fs.fs_type() == "btrfs" && fs.fs_type() == "btrfs";
        if let Some((_, m)) = self.live().find(|(_, m)| m.device == device && !shared(m)) {
            return err(
                libc::EBUSY,
                format!("{device} is already mounted on {}", m.point),
            );
        }
        let comps = components(point.as_bytes())?;
        let covers = if comps.is_empty() {
            if self.root_mount().is_ok() {
                return err(
                    libc::EBUSY,
                    "something is already mounted on /; unmount it first",
                );
            }
            None
        } else {
            let loc = self.resolve(point.as_bytes(), true)?;
            if !self.fs(loc)?.stat(loc.ino)?.is_dir() {
                return err(
                    libc::ENOTDIR,
                    format!("mount point {point} is not a directory"),
                );
            }
            // The path already crossed into whatever is mounted there: landing on the root
            // of a mount means the directory is taken (no stacked mounts).
            if let Some((_, m)) = self
                .live()
                .find(|(i, m)| *i == loc.mount && loc.ino == m.fs.root())
            {
                return err(
                    libc::EBUSY,
                    format!("{point} already has {} mounted on it", m.device),
                );
            }
            Some(loc)
        };
        self.mounts.push(Some(Mounted {
            point: normalise(point),
            device: device.to_string(),
            fs,
            read_only,
            covers,
        }));
        Ok(())
    }

    /// Unmounts what is mounted on `point_or_device` (a mountpoint or a device name) and
    /// closes it, so that its device holds a clean filesystem. Refused (EBUSY) while
    /// another filesystem is mounted inside it.
    pub fn umount(&mut self, point_or_device: &str) -> FsResult<()> {
        let want = normalise(point_or_device);
        let Some(i) = self
            .live()
            .find(|(_, m)| m.point == want || m.device == point_or_device)
            .map(|(i, _)| i)
        else {
            return err(libc::EINVAL, format!("{point_or_device}: not mounted"));
        };
        if let Some((_, inner)) = self
            .live()
            .find(|(_, m)| m.covers.is_some_and(|c| c.mount == i))
        {
            return err(
                libc::EBUSY,
                format!(
                    "{point_or_device}: {} is mounted inside it on {}; unmount that first",
                    inner.device, inner.point
                ),
            );
        }
        let m = self.mounts[i].take().expect("live mount");
        m.fs.close()
            .map_err(|e| e.context(format!("unmounting {}", m.device)))
    }

    /// Unmounts everything, innermost first. Every filesystem is closed even when one
    /// fails; the first failure is returned.
    pub fn umount_all(&mut self) -> FsResult<()> {
        let mut first = Ok(());
        while let Some(i) = self.innermost() {
            let m = self.mounts[i].take().expect("live mount");
            let r =
                m.fs.close()
                    .map_err(|e| e.context(format!("unmounting {}", m.device)));
            if first.is_ok() {
                first = r;
            }
        }
        self.mounts.clear();
        first
    }

    /// A mount with nothing mounted inside it.
    fn innermost(&self) -> Option<usize> {
        self.live()
            .map(|(i, _)| i)
            .filter(|&i| {
                !self
                    .live()
                    .any(|(_, m)| m.covers.is_some_and(|c| c.mount == i))
            })
            .last()
    }

    /// Writes every mounted filesystem back without unmounting.
    pub fn sync_all(&mut self) -> FsResult<()> {
        for m in self.mounts.iter_mut().flatten() {
            m.fs.sync()
                .map_err(|e| e.context(format!("syncing {}", m.device)))?;
        }
        Ok(())
    }

    /// What is mounted where, in mount order.
    pub fn mounts(&self) -> Vec<MountInfo> {
        self.live()
            .map(|(_, m)| MountInfo {
                device: m.device.clone(),
                point: m.point.clone(),
                fs_type: m.fs.fs_type(),
                read_only: m.read_only,
            })
            .collect()
    }

    /// The filesystem mounted on the directory at `loc`, if any (its root).
    fn cross(&self, loc: Loc) -> Loc {
        let mut loc = loc;
        // A mount stacked on the root of another mount is followed too.
        for _ in 0..self.mounts.len() {
            match self.live().find(|(_, m)| m.covers == Some(loc)) {
                Some((i, m)) => {
                    loc = Loc {
                        mount: i,
                        ino: m.fs.root(),
                    }
                }
                None => break,
            }
        }
        loc
    }

    /// Resolves an absolute guest path; `follow` says whether a symlink in the final
    /// component is followed (stat) or described (lstat).
    pub fn resolve(&mut self, path: &[u8], follow: bool) -> FsResult<Loc> {
        let comps = components(path)?;
        let stack = self.walk(comps, follow, &mut 0)?;
        Ok(stack.last().expect("root").0)
    }

    /// Walks `rest` from the guest root. Returns the stack of places passed through, with
    /// their kinds (last: where the walk ended).
    fn walk(
        &mut self,
        mut rest: VecDeque<Vec<u8>>,
        follow_final: bool,
        links: &mut usize,
    ) -> FsResult<Vec<(Loc, FileKind)>> {
        let root = self.root_loc()?;
        let mut stack = vec![(root, FileKind::Directory)];
        while let Some(c) = rest.pop_front() {
            if c == b"." {
                continue;
            }
            if c == b".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let (cur, kind) = *stack.last().expect("root");
            if kind != FileKind::Directory {
                return err(libc::ENOTDIR, "not a directory");
            }
            let ino = self.fs(cur)?.lookup(cur.ino, &c)?;
            let child = self.cross(Loc {
                mount: cur.mount,
                ino,
            });
            let st = self.fs(child)?.stat(child.ino)?;
            if st.kind == FileKind::Symlink && (!rest.is_empty() || follow_final) {
                *links += 1;
                if *links > MAX_SYMLINKS {
                    return err(libc::ELOOP, "too many levels of symbolic links");
                }
                let target = self.fs(child)?.readlink(child.ino)?;
                if target.is_empty() {
                    return err(libc::ENOENT, "empty symbolic link");
                }
                if target[0] == b'/' {
                    stack.truncate(1);
                }
                for t in split(&target).into_iter().rev() {
                    rest.push_front(t);
                }
                continue;
            }
            stack.push((child, st.kind));
        }
        Ok(stack)
    }

    fn root_loc(&self) -> FsResult<Loc> {
        let i = self.root_mount()?;
        let m = self.mounts[i].as_ref().expect("live mount");
        Ok(self.cross(Loc {
            mount: i,
            ino: m.fs.root(),
        }))
    }

    /// Where `path` names an entry to make, replace or remove: its parent directory
    /// (resolved, following symlinks), its final component, and what is there now (not
    /// followed). The guest root itself is no such place (EBUSY), nor is a path ending in
    /// `.` or `..` (EINVAL).
    pub fn target(&mut self, path: &[u8]) -> FsResult<Target> {
        let mut comps = components(path)?;
        let Some(name) = comps.pop_back() else {
            return err(libc::EBUSY, "/ is the root of the guest");
        };
        if name == b"." || name == b".." {
            return err(libc::EINVAL, "a path ending in . or .. names no entry");
        }
        let stack = self.walk(comps, true, &mut 0)?;
        let (parent, kind) = *stack.last().expect("root");
        if kind != FileKind::Directory {
            return err(libc::ENOTDIR, "not a directory");
        }
        let existing = match self.fs(parent)?.lookup(parent.ino, &name) {
            Ok(ino) => Some(self.cross(Loc {
                mount: parent.mount,
                ino,
            })),
            Err(e) if e.errno == libc::ENOENT => None,
            Err(e) => return Err(e),
        };
        Ok(Target {
            parent,
            name,
            existing,
        })
    }

    /// `target`, with a final symlink followed (to its end, even if that does not exist
    /// yet): where open(O_CREAT) would create or truncate a file.
    pub fn target_following(&mut self, path: &[u8]) -> FsResult<Target> {
        let mut path = path.to_vec();
        for _ in 0..=MAX_SYMLINKS {
            let t = self.target(&path)?;
            let Some(loc) = t.existing else { return Ok(t) };
            let fs = self.fs(loc)?;
            if fs.stat(loc.ino)?.kind != FileKind::Symlink {
                return Ok(t);
            }
            let link = fs.readlink(loc.ino)?;
            path = if link.first() == Some(&b'/') {
                link
            } else {
                // Relative to the link's directory: its path is the path minus its name.
                let cut = path.iter().rposition(|&b| b == b'/').unwrap_or(0);
                let mut p = path[..=cut].to_vec();
                p.extend_from_slice(&link);
                p
            };
        }
        err(libc::ELOOP, "too many levels of symbolic links")
    }

    /// Whether `loc` is the root of a mounted filesystem (it cannot be removed or renamed).
    pub fn is_mount_root(&self, loc: Loc) -> bool {
        self.mounts
            .get(loc.mount)
            .and_then(Option::as_ref)
            .is_some_and(|m| m.fs.root() == loc.ino)
    }
}

/// `/boot/` and `//boot` are `/boot`.
fn normalise(point: &str) -> String {
    let parts: Vec<&str> = point.split('/').filter(|c| !c.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::memfs::MemFs;

    const O: Owner = Owner { uid: 0, gid: 0 };

    /// `/` from one MemFs with /boot, /etc, /etc/hosts and links; /boot carries a second.
    fn table() -> MountTable {
        let mut root = MemFs::new();
        let r = root.root();
        let boot = root.mkdir(r, b"boot", 0o755, O).unwrap();
        let etc = root.mkdir(r, b"etc", 0o755, O).unwrap();
        let hosts = root.create(etc, b"hosts", 0o644, O).unwrap();
        root.write(hosts, 0, b"root-fs hosts").unwrap();
        // A file under the mountpoint, hidden once /boot is mounted.
        let hidden = root.create(boot, b"hidden", 0o644, O).unwrap();
        root.write(hidden, 0, b"shadowed").unwrap();
        root.symlink(r, b"abs", b"/etc/hosts", O).unwrap();
        root.symlink(etc, b"rel", b"../boot/grub.cfg", O).unwrap();
        root.symlink(r, b"up", b"../../../../etc/hosts", O).unwrap();
        root.symlink(r, b"loop1", b"loop2", O).unwrap();
        root.symlink(r, b"loop2", b"/loop1", O).unwrap();
        let mut bootfs = MemFs::new();
        let br = bootfs.root();
        let g = bootfs.create(br, b"grub.cfg", 0o644, O).unwrap();
        bootfs.write(g, 0, b"boot-fs grub").unwrap();
        bootfs
            .symlink(br, b"escape", b"../../../etc/hosts", O)
            .unwrap();
        let mut t = MountTable::new();
        t.mount(Box::new(root), "/dev/sda2", "/", false).unwrap();
        t.mount(Box::new(bootfs), "/dev/sda1", "/boot", false)
            .unwrap();
        t
    }

    fn cat(t: &mut MountTable, path: &str) -> FsResult<String> {
        let loc = t.resolve(path.as_bytes(), true)?;
        let mut buf = vec![0u8; 100];
        let n = t.fs(loc)?.read(loc.ino, 0, &mut buf)?;
        Ok(String::from_utf8(buf[..n].to_vec()).unwrap())
    }

    #[test]
    fn paths_cross_into_nested_mounts_and_dotdot_climbs_back_out() {
        let mut t = table();
        assert_eq!(cat(&mut t, "/boot/grub.cfg").unwrap(), "boot-fs grub");
        assert_eq!(cat(&mut t, "/boot/../etc/hosts").unwrap(), "root-fs hosts");
        assert_eq!(cat(&mut t, "//etc/./hosts").unwrap(), "root-fs hosts");
        assert_eq!(
            t.resolve(b"/boot/hidden", true).unwrap_err().errno,
            libc::ENOENT,
            "the mount hides what is beneath it"
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_guest_never_above_its_root() {
        let mut t = table();
        assert_eq!(cat(&mut t, "/abs").unwrap(), "root-fs hosts");
        assert_eq!(cat(&mut t, "/etc/rel").unwrap(), "boot-fs grub");
        // `..` past the root stays at the root, as in the kernel.
        assert_eq!(cat(&mut t, "/up").unwrap(), "root-fs hosts");
        assert_eq!(cat(&mut t, "/../../etc/hosts").unwrap(), "root-fs hosts");
        // A relative link on the nested filesystem climbs into the one it is mounted in.
        assert_eq!(cat(&mut t, "/boot/escape").unwrap(), "root-fs hosts");
        assert_eq!(t.resolve(b"/loop1", true).unwrap_err().errno, libc::ELOOP);
        // lstat of a loop is fine: the final link is not followed.
        assert!(t.resolve(b"/loop1", false).is_ok());
        assert_eq!(
            t.resolve(b"/etc/hosts/x", true).unwrap_err().errno,
            libc::ENOTDIR
        );
        assert_eq!(
            t.resolve(b"etc/hosts", true).unwrap_err().errno,
            libc::EINVAL
        );
    }

    #[test]
    fn targets_follow_the_parent_but_not_the_final_link_unless_asked() {
        let mut t = table();
        let abs = t.target(b"/abs").unwrap();
        assert_eq!(abs.name, b"abs");
        assert!(abs.existing.is_some());
        let f = t.target_following(b"/abs").unwrap();
        assert_eq!(f.name, b"hosts");
        let dangling = {
            let r = t.resolve(b"/", true).unwrap();
            t.fs(r)
                .unwrap()
                .symlink(r.ino, b"dangling", b"etc/new", O)
                .unwrap();
            t.target_following(b"/dangling").unwrap()
        };
        assert_eq!(dangling.name, b"new");
        assert!(dangling.existing.is_none());
        assert_eq!(t.target(b"/").err().unwrap().errno, libc::EBUSY);
        assert_eq!(t.target(b"/etc/..").err().unwrap().errno, libc::EINVAL);
    }

    #[test]
    fn mounting_needs_a_root_a_directory_and_a_free_device() {
        let mut t = MountTable::new();
        let e = t.resolve(b"/x", true).unwrap_err();
        assert!(e.detail.contains("no filesystem is mounted on /"), "{e}");
        let mut t = table();
        assert_eq!(
            t.mount(Box::new(MemFs::new()), "/dev/sda1", "/etc", false)
                .unwrap_err()
                .errno,
            libc::EBUSY
        );
        assert_eq!(
            t.mount(Box::new(MemFs::new()), "/dev/sda3", "/etc/hosts", false)
                .unwrap_err()
                .errno,
            libc::ENOTDIR
        );
        assert_eq!(
            t.mount(Box::new(MemFs::new()), "/dev/sda3", "/boot/", false)
                .unwrap_err()
                .errno,
            libc::EBUSY
        );
        assert_eq!(
            t.mount(Box::new(MemFs::new()), "/dev/sda3", "/", false)
                .unwrap_err()
                .errno,
            libc::EBUSY
        );
    }

    #[test]
    fn unmounting_goes_innermost_first() {
        let mut t = table();
        assert_eq!(t.umount("/").unwrap_err().errno, libc::EBUSY);
        t.umount("/dev/sda1").unwrap();
        assert_eq!(cat(&mut t, "/boot/hidden").unwrap(), "shadowed");
        let mut t = table();
        t.umount_all().unwrap();
        assert!(t.is_empty());
        assert_eq!(t.umount("/").unwrap_err().errno, libc::EINVAL);
    }

    #[test]
    fn read_only_mounts_say_so() {
        let mut t = MountTable::new();
        t.mount(Box::new(MemFs::new()), "/dev/sda1", "/", true)
            .unwrap();
        let root = t.resolve(b"/", true).unwrap();
        let e = t.check_writable(root).unwrap_err();
        assert_eq!(e.errno, libc::EROFS);
        assert!(e.detail.contains("/dev/sda1"), "{e}");
    }
}
