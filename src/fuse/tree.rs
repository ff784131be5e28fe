//! The directory model of the mount and its inode numbers.
//!
//! ```text
//! /                      inode 1
//! /volumes/NAME          a volume, whole disk        /volumes/NAME.pN  its partition N
//! /images/NAME           a golden image, read-only   /images/NAME.pN   its partition N
//! ```
//! This file owns names ↔ keys ↔ inode numbers. A key gets its inode number the first time
//! it is seen and keeps it for the life of the mount, so a name always has the same number
//! (even if it is removed and created again). It does not know what exists: listings come
//! from the repository (`fs.rs`).

use std::collections::HashMap;

use parking_lot::RwLock;

pub(crate) const ROOT: u64 = 1;
pub(crate) const VOLUMES_DIR: u64 = 2;
pub(crate) const IMAGES_DIR: u64 = 3;
const FIRST_FILE: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Volume,
    Image,
}

impl Kind {
    pub(crate) fn dir_ino(self) -> u64 {
        match self {
            Kind::Volume => VOLUMES_DIR,
            Kind::Image => IMAGES_DIR,
        }
    }

    pub(crate) fn dir_name(self) -> &'static str {
        match self {
            Kind::Volume => "volumes",
            Kind::Image => "images",
        }
    }
}

/// A file of the mount: a whole disk (`part == 0`) or one of its partitions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FileKey {
    pub kind: Kind,
    pub name: String,
    pub part: u32,
}

impl FileKey {
    /// The file's name in its directory.
    pub(crate) fn file_name(&self) -> String {
        if self.part == 0 {
            self.name.clone()
        } else {
            format!("{}.p{}", self.name, self.part)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Root,
    Dir(Kind),
    File(FileKey),
}

/// The ways a directory entry name can be read: as a whole-disk name, and, if it ends in
/// `.pN` (N ≥ 1), as partition N of the disk named by the rest. The whole-disk reading comes
/// first: a volume really called `a.p1` shadows partition 1 of volume `a`.
pub(crate) fn candidates(kind: Kind, name: &str) -> Vec<FileKey> {
    let mut out = vec![FileKey {
        kind,
        name: name.to_string(),
        part: 0,
    }];
    if let Some((base, digits)) = name.rsplit_once(".p") {
        let canonical = !digits.starts_with('0') && digits.bytes().all(|b| b.is_ascii_digit());
        if let (true, false, Ok(n)) = (canonical, base.is_empty(), digits.parse::<u32>()) {
            out.push(FileKey {
                kind,
                name: base.to_string(),
                part: n,
            });
        }
    }
    out
}

#[derive(Default)]
struct Table {
    by_key: HashMap<FileKey, u64>,
    by_ino: Vec<FileKey>,
}

/// Inode numbers of files, allocated on first sight and never reused during a mount.
#[derive(Default)]
pub(crate) struct Inodes {
    table: RwLock<Table>,
}

impl Inodes {
    pub(crate) fn ino_of(&self, key: &FileKey) -> u64 {
        if let Some(&ino) = self.table.read().by_key.get(key) {
            return ino;
        }
        let mut t = self.table.write();
        if let Some(&ino) = t.by_key.get(key) {
            return ino;
        }
        let ino = FIRST_FILE + t.by_ino.len() as u64;
        t.by_ino.push(key.clone());
        t.by_key.insert(key.clone(), ino);
        ino
    }

    pub(crate) fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT => Some(Node::Root),
            VOLUMES_DIR => Some(Node::Dir(Kind::Volume)),
            IMAGES_DIR => Some(Node::Dir(Kind::Image)),
            _ => {
                let i = usize::try_from(ino.checked_sub(FIRST_FILE)?).ok()?;
                self.table.read().by_ino.get(i).cloned().map(Node::File)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_numbers_are_stable_per_name() {
        let t = Inodes::default();
        let a = candidates(Kind::Volume, "a").remove(0);
        let b = candidates(Kind::Image, "a").remove(0);
        let (ia, ib) = (t.ino_of(&a), t.ino_of(&b));
        assert_ne!(ia, ib);
        assert_eq!(t.ino_of(&a), ia);
        assert_eq!(t.node(ia), Some(Node::File(a)));
        assert_eq!(t.node(ROOT), Some(Node::Root));
        assert_eq!(t.node(999), None);
    }

    #[test]
    fn partition_names_parse_only_in_canonical_form() {
        let c = candidates(Kind::Volume, "vm.p12");
        assert_eq!(c.len(), 2);
        assert_eq!((c[1].name.as_str(), c[1].part), ("vm", 12));
        assert_eq!(c[1].file_name(), "vm.p12");
        for plain in [
            "vm",
            "vm.p",
            "vm.p0",
            "vm.p01",
            "vm.px",
            ".p1",
            "vm.p99999999999",
        ] {
            assert_eq!(candidates(Kind::Volume, plain).len(), 1, "{plain}");
        }
    }
}
