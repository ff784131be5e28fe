//! btrfs as the agent reads it in the guest, for the two things no generic system call
//! answers: which byte ranges of the device hold anything (a capture's used blocks), and
//! which subvolumes exist (list-filesystems and inspection, as guestfish lists them).
//!
//! Both come from the filesystem's own trees, read through BTRFS_IOC_TREE_SEARCH_V2 on the
//! mounted filesystem (the kernel's view, so nothing here parses a tree block):
//!
//! - Used blocks: every EXTENT_ITEM and METADATA_ITEM of the extent tree (data extents and
//!   tree blocks, by logical address), placed on the device through the chunk tree's
//!   CHUNK_ITEMs (each stripe of a single, DUP or RAID1 chunk is a whole copy); SYSTEM
//!   chunks whole (they hold the chunk tree itself); the first MiB (btrfs leaves it to boot
//!   loaders; the primary superblock is at 64 KiB) and the superblock copies at 64 MiB and
//!   256 GiB. A log tree (whose blocks the extent tree does not record), several devices
//!   or a striped profile make the answer `None`: the whole device then counts.
//! - Subvolumes: the root tree's ROOT_BACKREF items (subvolume, parent, directory, name),
//!   the directory's path inside its parent from BTRFS_IOC_INO_LOOKUP, and the default
//!   subvolume from the DIR_ITEM `default` in the root tree's directory.
//!
//! The parsing of search results and the mapping arithmetic are pure functions, tested on
//! bytes here; the ioctls are the thin part at the end.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;

/// statfs's f_type for btrfs.
pub const SUPER_MAGIC: i64 = 0x9123_683E;

const ROOT_TREE: u64 = 1;
const EXTENT_TREE: u64 = 2;
const CHUNK_TREE: u64 = 3;
const FS_TREE: u64 = 5;
const ROOT_TREE_DIR: u64 = 6;
const FIRST_FREE: u64 = 256;
const LAST_FREE: u64 = (-256i64) as u64;

const DIR_ITEM: u8 = 84;
const ROOT_BACKREF: u8 = 144;
const EXTENT_ITEM: u8 = 168;
const METADATA_ITEM: u8 = 169;
const CHUNK_ITEM: u8 = 228;

const BG_SYSTEM: u64 = 2;
const BG_STRIPED: u64 = 8 | 64 | 128 | 256; // RAID0, RAID10, RAID5, RAID6

const MIB: u64 = 1 << 20;
/// The superblock copies: 64 KiB (inside the first MiB), 64 MiB, 256 GiB.
const SUPER_COPIES: [u64; 3] = [64 << 10, 64 << 20, 256 << 30];
const SUPER_LEN: u64 = 4096;

/// One item of a tree search: its key and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub objectid: u64,
    pub kind: u8,
    pub offset: u64,
    pub data: Vec<u8>,
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The `n` items of a search result buffer: each a 32-byte header (transid, objectid,
/// offset, type, len) and `len` bytes.
pub fn parse_items(buf: &[u8], n: usize) -> Result<Vec<Item>, String> {
    let mut out = Vec::with_capacity(n);
    let mut at = 0;
    for _ in 0..n {
        let bad = || format!("a tree search result is cut short at byte {at}");
        let objectid = u64_at(buf, at + 8).ok_or_else(bad)?;
        let offset = u64_at(buf, at + 16).ok_or_else(bad)?;
        let kind = u32_at(buf, at + 24).ok_or_else(bad)?;
        let len = u32_at(buf, at + 28).ok_or_else(bad)? as usize;
        let data = buf.get(at + 32..at + 32 + len).ok_or_else(bad)?.to_vec();
        out.push(Item {
            objectid,
            kind: kind as u8,
            offset,
            data,
        });
        at += 32 + len;
    }
    Ok(out)
}

/// A chunk: `length` bytes of logical address space from `logical`, each stripe a
/// `(devid, offset on that device)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub logical: u64,
    pub length: u64,
    pub flags: u64,
    pub stripes: Vec<(u64, u64)>,
}

/// A CHUNK_ITEM's bytes (struct btrfs_chunk): length, owner, stripe_len, type, io_align,
/// io_width, sector_size, num_stripes, sub_stripes, then 32-byte stripes (devid, offset,
/// device uuid).
pub fn parse_chunk(logical: u64, d: &[u8]) -> Result<Chunk, String> {
    let bad = || format!("the chunk at {logical} is cut short");
    let length = u64_at(d, 0).ok_or_else(bad)?;
    let flags = u64_at(d, 24).ok_or_else(bad)?;
    let n = u16_at(d, 44).ok_or_else(bad)? as usize;
    let mut stripes = Vec::with_capacity(n);
    for i in 0..n {
        let s = 48 + i * 32;
        stripes.push((
            u64_at(d, s).ok_or_else(bad)?,
            u64_at(d, s + 8).ok_or_else(bad)?,
        ));
    }
    if n == 0 || length == 0 {
        return Err(format!("the chunk at {logical} is empty"));
    }
    Ok(Chunk {
        logical,
        length,
        flags,
        stripes,
    })
}

/// The allocated extents (logical `(start, len)`) among the extent tree's items: data
/// extents and tree blocks (a METADATA_ITEM is one node of `nodesize` bytes).
pub fn extents(items: &[Item], nodesize: u64) -> Vec<(u64, u64)> {
    items
        .iter()
        .filter_map(|i| match i.kind {
            EXTENT_ITEM => Some((i.objectid, i.offset)),
            METADATA_ITEM => Some((i.objectid, nodesize)),
            _ => None,
        })
        .collect()
}

/// Sorts and merges byte ranges, clipped to `len`.
pub fn merge(mut r: Vec<(u64, u64)>, len: u64) -> Vec<(u64, u64)> {
    r.retain(|&(o, l)| l > 0 && o < len);
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (o, l) in r {
        let l = l.min(len - o);
        match out.last_mut() {
            Some(p) if p.0 + p.1 >= o => p.1 = p.1.max(o + l - p.0),
            _ => out.push((o, l)),
        }
    }
    out
}

/// The device ranges that hold `extents` (logical) through `chunks`, with SYSTEM chunks
/// whole and the fixed areas (first MiB, superblock copies), on a device of `dev_len`
/// bytes. `Ok(None)` for what this does not map (a striped chunk); `Err` for an extent no
/// chunk holds (an inconsistent tree).
pub fn used_ranges(
    chunks: &[Chunk],
    extents: &[(u64, u64)],
    dev_len: u64,
) -> Result<Option<Vec<(u64, u64)>>, String> {
    if chunks.iter().any(|c| c.flags & BG_STRIPED != 0) {
        return Ok(None);
    }
    let mut chunks: Vec<&Chunk> = chunks.iter().collect();
    chunks.sort_by_key(|c| c.logical);
    let mut out = vec![(0, MIB.min(dev_len))];
    for at in SUPER_COPIES {
        out.push((at, SUPER_LEN));
    }
    for c in chunks.iter().filter(|c| c.flags & BG_SYSTEM != 0) {
        out.extend(c.stripes.iter().map(|&(_, off)| (off, c.length)));
    }
    for &(start, len) in extents {
        let i = chunks.partition_point(|c| c.logical <= start);
        let c = i
            .checked_sub(1)
            .map(|i| chunks[i])
            .filter(|c| start.saturating_add(len) <= c.logical.saturating_add(c.length))
            .ok_or_else(|| {
                format!("the extent at {start} ({len} bytes) lies in no chunk of the chunk tree")
            })?;
        for &(_, off) in &c.stripes {
            out.push((off + (start - c.logical), len));
        }
    }
    Ok(Some(merge(out, dev_len)))
}

/// A ROOT_BACKREF's bytes (struct btrfs_root_ref): the directory holding the subvolume in
/// its parent, a sequence number, the name's length, the name.
pub fn parse_root_ref(d: &[u8]) -> Result<(u64, Vec<u8>), String> {
    let bad = || "a subvolume's back reference is cut short".to_string();
    let dirid = u64_at(d, 0).ok_or_else(bad)?;
    let n = u16_at(d, 16).ok_or_else(bad)? as usize;
    Ok((dirid, d.get(18..18 + n).ok_or_else(bad)?.to_vec()))
}

/// The subvolume a DIR_ITEM named `default` points at (struct btrfs_dir_item: location
/// key, transid, data_len, name_len, type, name), if this item is that one.
pub fn parse_default(d: &[u8]) -> Option<u64> {
    let n = u16_at(d, 27)? as usize;
    (d.get(30..30 + n)? == b"default").then(|| u64_at(d, 0))?
}

/// One subvolume's place: its parent subvolume, the directory in the parent, its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackRef {
    pub id: u64,
    pub parent: u64,
    pub dirid: u64,
    pub name: Vec<u8>,
}

/// Every subvolume's path from the top level (`@/home`), by id. `dir_path(tree, dir)` is
/// the path of directory `dir` inside subvolume `tree`, with a trailing `/` (empty for
/// its root directory), as BTRFS_IOC_INO_LOOKUP gives it.
pub fn subvolume_paths(
    refs: &[BackRef],
    mut dir_path: impl FnMut(u64, u64) -> Result<Vec<u8>, String>,
) -> Result<Vec<(u64, String)>, String> {
    let by_id: HashMap<u64, &BackRef> = refs.iter().map(|r| (r.id, r)).collect();
    let mut paths: HashMap<u64, Vec<u8>> = HashMap::new();
    paths.insert(FS_TREE, Vec::new());
    let mut ids: Vec<u64> = by_id.keys().copied().collect();
    ids.sort_unstable();
    for &id in &ids {
        // The chain up to a known path, then back down.
        let mut chain = Vec::new();
        let mut cur = id;
        while !paths.contains_key(&cur) {
            let r = by_id.get(&cur).ok_or_else(|| {
                format!("subvolume {id} hangs under subvolume {cur}, which has no back reference")
            })?;
            if chain.len() > refs.len() {
                return Err(format!("the subvolumes above {id} form a cycle"));
            }
            chain.push(*r);
            cur = r.parent;
        }
        for r in chain.into_iter().rev() {
            let mut p = paths[&r.parent].clone();
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend(dir_path(r.parent, r.dirid)?);
            p.extend(&r.name);
            paths.insert(r.id, p);
        }
    }
    Ok(ids
        .into_iter()
        .map(|id| (id, String::from_utf8_lossy(&paths[&id]).into_owned()))
        .collect())
}

// ---- The ioctls.

const SEARCH_BUF: usize = 256 << 10;
/// _IOWR(0x94, 17, struct btrfs_ioctl_search_args_v2): a 104-byte key and a buffer size.
const IOC_TREE_SEARCH_V2: libc::c_ulong = 0xC070_9411;
/// _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args), 4096 bytes.
const IOC_INO_LOOKUP: libc::c_ulong = 0xD000_9412;
/// _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args), 1024 bytes.
const IOC_FS_INFO: libc::c_ulong = 0x8400_941F;

#[repr(C)]
struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: [u64; 4],
}

#[repr(C)]
struct SearchArgs {
    key: SearchKey,
    buf_size: u64,
    buf: [u8; SEARCH_BUF],
}

fn os_err(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

/// Every item of tree `tree` with objectid in `objectids`, in key order, to `each`.
fn search(
    fd: RawFd,
    tree: u64,
    objectids: (u64, u64),
    mut each: impl FnMut(Item) -> Result<(), String>,
) -> Result<(), String> {
    // SAFETY: plain data, all zeroes is a valid value; boxed for its size.
    let mut args: Box<SearchArgs> = unsafe { Box::new(std::mem::zeroed()) };
    let (mut obj, mut kind, mut off) = (objectids.0, 0u32, 0u64);
    loop {
        args.key = SearchKey {
            tree_id: tree,
            min_objectid: obj,
            max_objectid: objectids.1,
            min_offset: off,
            max_offset: u64::MAX,
            min_transid: 0,
            max_transid: u64::MAX,
            min_type: kind,
            max_type: 255,
            nr_items: u32::MAX,
            unused: 0,
            unused1: [0; 4],
        };
        args.buf_size = SEARCH_BUF as u64;
        // SAFETY: the argument is the v2 search struct with the buffer its size says.
        let r = unsafe { libc::ioctl(fd, IOC_TREE_SEARCH_V2, &mut *args as *mut SearchArgs) };
        if r < 0 {
            return Err(os_err(&format!("searching btrfs tree {tree}")));
        }
        let n = args.key.nr_items as usize;
        if n == 0 {
            return Ok(());
        }
        let items = parse_items(&args.buf, n)?;
        let last = items.last().map(|i| (i.objectid, i.kind, i.offset));
        for i in items {
            each(i)?;
        }
        // The next search starts just after the last key found.
        let Some((o, k, f)) = last else {
            return Ok(());
        };
        (obj, kind, off) = (o, k as u32, f);
        if off < u64::MAX {
            off += 1;
        } else if kind < 255 {
            (kind, off) = (kind + 1, 0);
        } else if obj < objectids.1 {
            (obj, kind, off) = (obj + 1, 0, 0);
        } else {
            return Ok(());
        }
    }
}

/// The node size and the number of devices (BTRFS_IOC_FS_INFO).
fn fs_info(fd: RawFd) -> Result<(u64, u64), String> {
    let mut a = [0u64; 128];
    // SAFETY: a 1024-byte buffer, as the ioctl's struct is.
    if unsafe { libc::ioctl(fd, IOC_FS_INFO, a.as_mut_ptr()) } < 0 {
        return Err(os_err("BTRFS_IOC_FS_INFO"));
    }
    Ok((a[4] & 0xFFFF_FFFF, a[1]))
}

/// Whether the superblock on `dev` records a log tree (its log_root field).
fn has_log_tree(dev: &File) -> Result<bool, String> {
    let mut sb = [0u8; 4096];
    dev.read_exact_at(&mut sb, SUPER_COPIES[0])
        .map_err(|e| format!("reading the btrfs superblock: {e}"))?;
    if &sb[64..72] != b"_BHRfS_M" {
        return Err("the btrfs superblock's magic is gone".into());
    }
    Ok(u64_at(&sb, 96) != Some(0))
}

/// The used byte ranges of the btrfs filesystem mounted at `root` whose device is `dev`
/// (`dev_len` bytes); `None` where they cannot be told apart (see the module doc).
pub fn used_blocks(
    root: &File,
    dev: &File,
    dev_len: u64,
) -> Result<Option<Vec<(u64, u64)>>, String> {
    let fd = root.as_raw_fd();
    // A transaction commit first, so that the extent tree holds every delayed reference.
    // SAFETY: syncfs on an open descriptor.
    if unsafe { libc::syncfs(fd) } < 0 {
        return Err(os_err("syncfs"));
    }
    let (nodesize, devices) = fs_info(fd)?;
    if devices != 1 || has_log_tree(dev)? {
        return Ok(None);
    }
    let mut chunks = Vec::new();
    search(fd, CHUNK_TREE, (FIRST_FREE, FIRST_FREE), |i| {
        if i.kind == CHUNK_ITEM {
            chunks.push(parse_chunk(i.offset, &i.data)?);
        }
        Ok(())
    })?;
    let mut ext = Vec::new();
    search(fd, EXTENT_TREE, (0, u64::MAX), |i| {
        ext.extend(extents(std::slice::from_ref(&i), nodesize));
        Ok(())
    })?;
    used_ranges(&chunks, &ext, dev_len)
}

/// The path of directory `dir` inside subvolume `tree` (BTRFS_IOC_INO_LOOKUP).
fn ino_lookup(fd: RawFd, tree: u64, dir: u64) -> Result<Vec<u8>, String> {
    let mut a = [0u64; 512];
    a[0] = tree;
    a[1] = dir;
    // SAFETY: a 4096-byte buffer, as the ioctl's struct is.
    if unsafe { libc::ioctl(fd, IOC_INO_LOOKUP, a.as_mut_ptr()) } < 0 {
        return Err(os_err("BTRFS_IOC_INO_LOOKUP"));
    }
    let bytes: Vec<u8> = a[2..].iter().flat_map(|w| w.to_le_bytes()).collect();
    let n = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Ok(bytes[..n].to_vec())
}

/// The default subvolume and every subvolume's `(id, path)` of the btrfs filesystem
/// mounted at `root`.
pub fn subvolumes(root: &File) -> Result<(u64, Vec<(u64, String)>), String> {
    let fd = root.as_raw_fd();
    let mut refs = Vec::new();
    search(fd, ROOT_TREE, (FIRST_FREE, LAST_FREE), |i| {
        if i.kind == ROOT_BACKREF {
            let (dirid, name) = parse_root_ref(&i.data)?;
            refs.push(BackRef {
                id: i.objectid,
                parent: i.offset,
                dirid,
                name,
            });
        }
        Ok(())
    })?;
    // A subvolume has one back reference; keep the first.
    refs.dedup_by_key(|r| r.id);
    let mut default = FS_TREE;
    search(fd, ROOT_TREE, (ROOT_TREE_DIR, ROOT_TREE_DIR), |i| {
        if i.kind == DIR_ITEM {
            if let Some(d) = parse_default(&i.data) {
                default = d;
            }
        }
        Ok(())
    })?;
    let list = subvolume_paths(&refs, |tree, dir| ino_lookup(fd, tree, dir))?;
    Ok((default, list))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(objectid: u64, kind: u32, offset: u64, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(7u64.to_le_bytes());
        b.extend(objectid.to_le_bytes());
        b.extend(offset.to_le_bytes());
        b.extend(kind.to_le_bytes());
        b.extend((data.len() as u32).to_le_bytes());
        b.extend(data);
        b
    }

    fn chunk_bytes(length: u64, flags: u64, stripes: &[(u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; 48 + 32 * stripes.len()];
        d[0..8].copy_from_slice(&length.to_le_bytes());
        d[24..32].copy_from_slice(&flags.to_le_bytes());
        d[44..46].copy_from_slice(&(stripes.len() as u16).to_le_bytes());
        for (i, (dev, off)) in stripes.iter().enumerate() {
            d[48 + 32 * i..56 + 32 * i].copy_from_slice(&dev.to_le_bytes());
            d[56 + 32 * i..64 + 32 * i].copy_from_slice(&off.to_le_bytes());
        }
        d
    }

    #[test]
    fn search_results_parse_into_items_and_a_short_buffer_is_an_error() {
        let mut buf = header(256, 228, 1 << 22, &[1, 2, 3]);
        buf.extend(header(300, 168, 4096, &[]));
        let items = parse_items(&buf, 2).unwrap();
        assert_eq!(items[0].objectid, 256);
        assert_eq!(items[0].kind, 228);
        assert_eq!(items[0].data, [1, 2, 3]);
        assert_eq!((items[1].objectid, items[1].offset), (300, 4096));
        assert!(parse_items(&buf, 3).is_err());
        assert!(parse_items(&buf[..34], 1).is_err());
    }

    #[test]
    fn extents_map_to_every_copy_of_their_chunk_and_system_chunks_count_whole() {
        let dup = parse_chunk(
            30 << 20,
            &chunk_bytes(8 << 20, 4 | 32, &[(1, 100 << 20), (1, 108 << 20)]),
        )
        .unwrap();
        let data = parse_chunk(50 << 20, &chunk_bytes(16 << 20, 1, &[(1, 120 << 20)])).unwrap();
        let sys = parse_chunk(
            22 << 20,
            &chunk_bytes(MIB, 2 | 32, &[(1, 2 << 20), (1, 3 << 20)]),
        )
        .unwrap();
        assert_eq!(dup.stripes.len(), 2);
        let items = vec![
            Item {
                objectid: (30 << 20) + 16384,
                kind: METADATA_ITEM,
                offset: 0,
                data: vec![],
            },
            Item {
                objectid: (50 << 20) + 8192,
                kind: EXTENT_ITEM,
                offset: 12288,
                data: vec![],
            },
            Item {
                objectid: 50 << 20,
                kind: 192,
                offset: 16 << 20,
                data: vec![],
            },
        ];
        let ext = extents(&items, 16384);
        assert_eq!(
            ext,
            vec![((30 << 20) + 16384, 16384), ((50 << 20) + 8192, 12288)]
        );
        let r = used_ranges(&[data, dup, sys], &ext, 200 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(
            r,
            vec![
                (0, MIB),
                (2 << 20, 2 << 20),
                (64 << 20, 4096),
                ((100 << 20) + 16384, 16384),
                ((108 << 20) + 16384, 16384),
                ((120 << 20) + 8192, 12288),
            ]
        );
    }

    #[test]
    fn an_extent_outside_every_chunk_is_an_error_and_a_striped_chunk_is_not_mapped() {
        let data = parse_chunk(50 << 20, &chunk_bytes(MIB, 1, &[(1, 120 << 20)])).unwrap();
        assert!(used_ranges(&[data.clone()], &[(10 << 20, 4096)], 1 << 30).is_err());
        assert!(used_ranges(&[data.clone()], &[((51 << 20) - 4096, 8192)], 1 << 30).is_err());
        let raid0 = parse_chunk(60 << 20, &chunk_bytes(MIB, 1 | 8, &[(1, 130 << 20)])).unwrap();
        assert_eq!(used_ranges(&[data, raid0], &[], 1 << 30).unwrap(), None);
        assert!(parse_chunk(0, &chunk_bytes(MIB, 1, &[])).is_err());
        assert!(parse_chunk(0, &[0; 20]).is_err());
    }

    #[test]
    fn ranges_merge_and_clip_to_the_device() {
        assert_eq!(
            merge(
                vec![(10, 5), (0, 4), (4, 2), (12, 10), (90, 20), (200, 1)],
                100
            ),
            vec![(0, 6), (10, 12), (90, 10)]
        );
    }

    #[test]
    fn subvolume_paths_follow_parents_and_the_directories_inside_them() {
        let r = |id, parent, dirid, name: &str| BackRef {
            id,
            parent,
            dirid,
            name: name.as_bytes().to_vec(),
        };
        // SLES: @ at the top, @/.snapshots and @/usr/local inside @ (in its directory
        // usr), snapshot 1 inside @/.snapshots (in its directory 1).
        let refs = vec![
            r(258, 257, 300, "snapshot"),
            r(256, 5, 256, "@"),
            r(257, 256, 256, ".snapshots"),
            r(259, 256, 260, "local"),
        ];
        let dirs = |tree: u64, dir: u64| -> Result<Vec<u8>, String> {
            Ok(match (tree, dir) {
                (_, 256) => b"".to_vec(),
                (257, 300) => b"1/".to_vec(),
                (256, 260) => b"usr/".to_vec(),
                _ => return Err(format!("no directory {dir} in {tree}")),
            })
        };
        assert_eq!(
            subvolume_paths(&refs, dirs).unwrap(),
            vec![
                (256, "@".to_string()),
                (257, "@/.snapshots".to_string()),
                (258, "@/.snapshots/1/snapshot".to_string()),
                (259, "@/usr/local".to_string()),
            ]
        );
        let orphan = vec![r(300, 299, 256, "x")];
        assert!(subvolume_paths(&orphan, dirs).is_err());
        let cycle = vec![r(300, 301, 256, "x"), r(301, 300, 256, "y")];
        assert!(subvolume_paths(&cycle, dirs).is_err());
    }

    #[test]
    fn the_default_dir_item_names_the_default_subvolume() {
        let mut d = vec![0u8; 30];
        d[0..8].copy_from_slice(&258u64.to_le_bytes());
        d[27..29].copy_from_slice(&7u16.to_le_bytes());
        d.extend(b"default");
        assert_eq!(parse_default(&d), Some(258));
        let mut other = d.clone();
        other[30] = b'x';
        assert_eq!(parse_default(&other), None);
        assert_eq!(parse_default(&d[..20]), None);
        let root_ref = [&9u64.to_le_bytes()[..], &[0; 8], &2u16.to_le_bytes(), b"@x"].concat();
        assert_eq!(parse_root_ref(&root_ref).unwrap(), (9, b"@x".to_vec()));
        assert!(parse_root_ref(&root_ref[..19]).is_err());
    }
}
