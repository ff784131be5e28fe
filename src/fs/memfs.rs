//! An in-memory filesystem with plain POSIX semantics: the reference model the adapters'
//! property tests compare against, and a stand-in for tests of the layers above (the
//! mount table, path resolution, the plan engine). Never used for a real device.

use std::collections::BTreeMap;

use super::types::*;
use super::GuestFs;

const ROOT: Ino = 1;

#[derive(Clone, Debug)]
struct Node {
    stat: Stat,
    data: Vec<u8>,
    /// Directory entries by name (BTreeMap: a stable order for readdir).
    entries: BTreeMap<Vec<u8>, Ino>,
    target: Vec<u8>,
}

#[derive(Clone, Debug)]
pub struct MemFs {
    nodes: BTreeMap<Ino, Node>,
    next: Ino,
    read_only: bool,
    /// Bytes of file data allowed in all, for ENOSPC tests.
    capacity: u64,
}

impl Default for MemFs {
    fn default() -> Self {
        MemFs::new()
    }
}

fn err<T>(errno: i32, what: &str) -> FsResult<T> {
    Err(FsError::new(errno, what.to_string()))
}

impl MemFs {
    pub fn new() -> MemFs {
        let mut fs = MemFs {
            nodes: BTreeMap::new(),
            next: ROOT + 1,
            read_only: false,
            capacity: u64::MAX,
        };
        let root = fs.node(ROOT, FileKind::Directory, 0o755, Owner::default());
        fs.nodes.insert(ROOT, root);
        fs.nodes.get_mut(&ROOT).unwrap().stat.nlink = 2;
        fs
    }

    pub fn set_read_only(&mut self, ro: bool) {
        self.read_only = ro;
    }

    pub fn set_capacity(&mut self, bytes: u64) {
        self.capacity = bytes;
    }

    fn used(&self) -> u64 {
        self.nodes.values().map(|n| n.data.len() as u64).sum()
    }

    fn node(&self, ino: Ino, kind: FileKind, perm: u32, owner: Owner) -> Node {
        let now = Timespec::now();
        Node {
            stat: Stat {
                ino,
                kind,
                mode: kind.mode_bits() | (perm & 0o7777),
                nlink: 1,
                uid: owner.uid,
                gid: owner.gid,
                size: 0,
                blocks: 0,
                atime: now,
                mtime: now,
                ctime: now,
                rdev: 0,
                blksize: 4096,
            },
            data: Vec::new(),
            entries: BTreeMap::new(),
            target: Vec::new(),
        }
    }

    fn get(&self, ino: Ino) -> FsResult<&Node> {
        self.nodes
            .get(&ino)
            .ok_or_else(|| FsError::new(libc::ESTALE, format!("inode {ino}")))
    }

    fn get_mut(&mut self, ino: Ino) -> FsResult<&mut Node> {
        self.nodes
            .get_mut(&ino)
            .ok_or_else(|| FsError::new(libc::ESTALE, format!("inode {ino}")))
    }

    fn dir(&self, ino: Ino) -> FsResult<&Node> {
        let n = self.get(ino)?;
        if n.stat.kind != FileKind::Directory {
            return err(libc::ENOTDIR, "not a directory");
        }
        Ok(n)
    }

    fn writable(&self) -> FsResult<()> {
        if self.read_only {
            return err(libc::EROFS, "read-only filesystem");
        }
        Ok(())
    }

    fn check_name(name: &[u8]) -> FsResult<()> {
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') {
            return err(libc::EINVAL, "invalid name");
        }
        if name.len() > 255 {
            return err(libc::ENAMETOOLONG, "name too long");
        }
        Ok(())
    }

    fn touch_dir(&mut self, dir: Ino) {
        let now = Timespec::now();
        if let Some(d) = self.nodes.get_mut(&dir) {
            d.stat.mtime = now;
            d.stat.ctime = now;
        }
    }

    fn add(&mut self, dir: Ino, name: &[u8], node: Node) -> FsResult<Ino> {
        self.writable()?;
        Self::check_name(name)?;
        if self.dir(dir)?.entries.contains_key(name) {
            return err(libc::EEXIST, "file exists");
        }
        let ino = node.stat.ino;
        let is_dir = node.stat.kind == FileKind::Directory;
        self.nodes.insert(ino, node);
        let d = self.get_mut(dir)?;
        d.entries.insert(name.to_vec(), ino);
        if is_dir {
            d.stat.nlink += 1;
        }
        self.touch_dir(dir);
        Ok(ino)
    }

    fn new_ino(&mut self) -> Ino {
        self.next += 1;
        self.next - 1
    }

    /// Drops one link of `ino`, freeing it with its last.
    fn drop_link(&mut self, ino: Ino) {
        let gone = match self.nodes.get_mut(&ino) {
            Some(n) => {
                n.stat.nlink = n.stat.nlink.saturating_sub(1);
                n.stat.ctime = Timespec::now();
                n.stat.nlink == 0 || (n.stat.kind == FileKind::Directory && n.stat.nlink <= 1)
            }
            None => false,
        };
        if gone {
            self.nodes.remove(&ino);
        }
    }

    fn is_ancestor(&self, maybe_ancestor: Ino, mut of: Ino) -> bool {
        // Directories have one parent; walk up through the entries that hold them.
        loop {
            if of == maybe_ancestor {
                return true;
            }
            let parent = self.nodes.iter().find_map(|(&p, n)| {
                (n.stat.kind == FileKind::Directory && n.entries.values().any(|&c| c == of))
                    .then_some(p)
            });
            match parent {
                Some(p) if p != of => of = p,
                _ => return false,
            }
        }
    }
}

impl GuestFs for MemFs {
    fn fs_type(&self) -> &'static str {
        "memfs"
    }

    fn root(&self) -> Ino {
        ROOT
    }

    fn lookup(&mut self, dir: Ino, name: &[u8]) -> FsResult<Ino> {
        match self.dir(dir)?.entries.get(name) {
            Some(&i) => Ok(i),
            None => err(libc::ENOENT, "no such entry"),
        }
    }

    fn stat(&mut self, ino: Ino) -> FsResult<Stat> {
        let n = self.get(ino)?;
        let mut s = n.stat.clone();
        s.size = match s.kind {
            FileKind::Regular => n.data.len() as u64,
            FileKind::Symlink => n.target.len() as u64,
            FileKind::Directory => 4096,
            _ => 0,
        };
        s.blocks = s.size.div_ceil(512);
        Ok(s)
    }

    fn readdir(&mut self, dir: Ino) -> FsResult<Vec<DirEntry>> {
        let d = self.dir(dir)?;
        Ok(d.entries
            .iter()
            .map(|(name, &ino)| DirEntry {
                name: name.clone(),
                ino,
                kind: self.nodes[&ino].stat.kind,
            })
            .collect())
    }

    fn read(&mut self, ino: Ino, offset: u64, buf: &mut [u8]) -> FsResult<usize> {
        let n = self.get(ino)?;
        if n.stat.kind == FileKind::Directory {
            return err(libc::EISDIR, "is a directory");
        }
        let len = n.data.len() as u64;
        if offset >= len {
            return Ok(0);
        }
        let k = ((len - offset) as usize).min(buf.len());
        buf[..k].copy_from_slice(&n.data[offset as usize..offset as usize + k]);
        Ok(k)
    }

    fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> FsResult<()> {
        self.writable()?;
        let used = self.used();
        let cap = self.capacity;
        let n = self.get_mut(ino)?;
        if n.stat.kind == FileKind::Directory {
            return err(libc::EISDIR, "is a directory");
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or_else(|| FsError::new(libc::EFBIG, "file too large"))?;
        let grow = end.saturating_sub(n.data.len() as u64);
        if used + grow > cap {
            return err(libc::ENOSPC, "no space left on device");
        }
        if end > n.data.len() as u64 {
            n.data.resize(end as usize, 0);
        }
        n.data[offset as usize..end as usize].copy_from_slice(data);
        let now = Timespec::now();
        n.stat.mtime = now;
        n.stat.ctime = now;
        Ok(())
    }

    fn truncate(&mut self, ino: Ino, size: u64) -> FsResult<()> {
        self.writable()?;
        let used = self.used();
        let cap = self.capacity;
        let n = self.get_mut(ino)?;
        if n.stat.kind != FileKind::Regular {
            return err(libc::EISDIR, "not a regular file");
        }
        if used + size.saturating_sub(n.data.len() as u64) > cap {
            return err(libc::ENOSPC, "no space left on device");
        }
        n.data.resize(size as usize, 0);
        let now = Timespec::now();
        n.stat.mtime = now;
        n.stat.ctime = now;
        Ok(())
    }

    fn create(&mut self, dir: Ino, name: &[u8], mode: u32, owner: Owner) -> FsResult<Ino> {
        let ino = self.new_ino();
        let node = self.node(ino, FileKind::Regular, mode, owner);
        self.add(dir, name, node)
    }

    fn mkdir(&mut self, dir: Ino, name: &[u8], mode: u32, owner: Owner) -> FsResult<Ino> {
        let ino = self.new_ino();
        let mut node = self.node(ino, FileKind::Directory, mode, owner);
        node.stat.nlink = 2;
        self.add(dir, name, node)
    }

    fn symlink(&mut self, dir: Ino, name: &[u8], target: &[u8], owner: Owner) -> FsResult<Ino> {
        let ino = self.new_ino();
        let mut node = self.node(ino, FileKind::Symlink, 0o777, owner);
        node.target = target.to_vec();
        self.add(dir, name, node)
    }

    fn link(&mut self, ino: Ino, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        Self::check_name(name)?;
        if self.get(ino)?.stat.kind == FileKind::Directory {
            return err(libc::EPERM, "hard link to a directory");
        }
        if self.dir(dir)?.entries.contains_key(name) {
            return err(libc::EEXIST, "file exists");
        }
        self.get_mut(dir)?.entries.insert(name.to_vec(), ino);
        let n = self.get_mut(ino)?;
        n.stat.nlink += 1;
        n.stat.ctime = Timespec::now();
        self.touch_dir(dir);
        Ok(())
    }

    fn unlink(&mut self, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        let ino = self.lookup(dir, name)?;
        if self.get(ino)?.stat.kind == FileKind::Directory {
            return err(libc::EISDIR, "is a directory");
        }
        self.get_mut(dir)?.entries.remove(name);
        self.touch_dir(dir);
        self.drop_link(ino);
        Ok(())
    }

    fn rmdir(&mut self, dir: Ino, name: &[u8]) -> FsResult<()> {
        self.writable()?;
        let ino = self.lookup(dir, name)?;
        let n = self.get(ino)?;
        if n.stat.kind != FileKind::Directory {
            return err(libc::ENOTDIR, "not a directory");
        }
        if !n.entries.is_empty() {
            return err(libc::ENOTEMPTY, "directory not empty");
        }
        let d = self.get_mut(dir)?;
        d.entries.remove(name);
        d.stat.nlink -= 1;
        self.touch_dir(dir);
        self.nodes.remove(&ino);
        Ok(())
    }

    fn rename(&mut self, from_dir: Ino, from: &[u8], to_dir: Ino, to: &[u8]) -> FsResult<()> {
        self.writable()?;
        Self::check_name(to)?;
        let ino = self.lookup(from_dir, from)?;
        self.dir(to_dir)?;
        let is_dir = self.get(ino)?.stat.kind == FileKind::Directory;
        if is_dir && self.is_ancestor(ino, to_dir) {
            return err(libc::EINVAL, "cannot move a directory into itself");
        }
        if let Some(&old) = self.dir(to_dir)?.entries.get(to) {
            if old == ino {
                return Ok(());
            }
            let o = self.get(old)?;
            match (is_dir, o.stat.kind == FileKind::Directory) {
                (true, false) => return err(libc::ENOTDIR, "not a directory"),
                (false, true) => return err(libc::EISDIR, "is a directory"),
                (true, true) if !o.entries.is_empty() => {
                    return err(libc::ENOTEMPTY, "directory not empty")
                }
                _ => {}
            }
            if is_dir {
                self.rmdir(to_dir, to)?;
            } else {
                self.unlink(to_dir, to)?;
            }
        }
        self.get_mut(from_dir)?.entries.remove(from);
        self.get_mut(to_dir)?.entries.insert(to.to_vec(), ino);
        if is_dir && from_dir != to_dir {
            self.get_mut(from_dir)?.stat.nlink -= 1;
            self.get_mut(to_dir)?.stat.nlink += 1;
        }
        self.touch_dir(from_dir);
        self.touch_dir(to_dir);
        self.get_mut(ino)?.stat.ctime = Timespec::now();
        Ok(())
    }

    fn readlink(&mut self, ino: Ino) -> FsResult<Vec<u8>> {
        let n = self.get(ino)?;
        if n.stat.kind != FileKind::Symlink {
            return err(libc::EINVAL, "not a symbolic link");
        }
        Ok(n.target.clone())
    }

    fn setattr(&mut self, ino: Ino, a: &SetAttr) -> FsResult<()> {
        self.writable()?;
        let n = self.get_mut(ino)?;
        if let Some(m) = a.mode {
            n.stat.mode = (n.stat.mode & 0o170000) | (m & 0o7777);
        } else if (a.uid.is_some() || a.gid.is_some()) && n.stat.kind != FileKind::Directory {
            // chown(2) clears set-user-ID, and set-group-ID when group-executable, on
            // non-directories, even for root (the kernel's ATTR_KILL_SUID/SGID).
            n.stat.mode &= !0o4000;
            if n.stat.mode & 0o2010 == 0o2010 {
                n.stat.mode &= !0o2000;
            }
        }
        if let Some(u) = a.uid {
            n.stat.uid = u;
        }
        if let Some(g) = a.gid {
            n.stat.gid = g;
        }
        if let Some(t) = a.atime {
            n.stat.atime = t;
        }
        if let Some(t) = a.mtime {
            n.stat.mtime = t;
        }
        n.stat.ctime = Timespec::now();
        Ok(())
    }

    fn statvfs(&mut self) -> FsResult<StatVfs> {
        let cap = self.capacity.min(1 << 40);
        let free = cap.saturating_sub(self.used()) / 4096;
        Ok(StatVfs {
            bsize: 4096,
            frsize: 4096,
            blocks: cap / 4096,
            bfree: free,
            bavail: free,
            files: 1 << 20,
            ffree: (1u64 << 20).saturating_sub(self.nodes.len() as u64),
            favail: (1u64 << 20).saturating_sub(self.nodes.len() as u64),
            fsid: 0,
            flag: 0,
            namemax: 255,
        })
    }

    fn used_blocks(&mut self) -> FsResult<Vec<(u64, u64)>> {
        Ok(Vec::new())
    }

    fn sync(&mut self) -> FsResult<()> {
        Ok(())
    }

    fn close(self: Box<Self>) -> FsResult<()> {
        Ok(())
    }
}
