//! FAT's on-disk structures as the adapter itself reads and patches them: the boot sector's
//! geometry, FAT entries, directory entries (with their long names assembled the way Linux's
//! vfat does), name rules and DOS times.
//!
//! fatfs does the allocating (clusters, directory slots, short names); this module exists
//! because fatfs 0.3.6 keeps entry positions private and gets a few things wrong or
//! differently from Linux (see fat.rs), so the adapter needs to find and rewrite entries on
//! its own. Everything goes through the shared page cache, so both see the same bytes.

use crate::fs::{FsError, FsResult, Timespec};

use super::cache::BlockCache;

pub(crate) const ATTR_RO: u8 = 0x01;
pub(crate) const ATTR_VOLUME: u8 = 0x08;
pub(crate) const ATTR_DIR: u8 = 0x10;
pub(crate) const ATTR_LFN: u8 = 0x0F;
pub(crate) const SLOT: u64 = 32;
const DELETED: u8 = 0xE5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FatKind {
    Fat12,
    Fat16,
    Fat32,
}

/// What the boot sector says, in bytes where it can.
#[derive(Debug, Clone)]
pub(crate) struct Geometry {
    pub kind: FatKind,
    pub sector: u64,
    pub cluster_size: u64,
    pub fat_start: u64,
    pub fat_len: u64,
    pub fats: u64,
    /// FAT12/16's fixed root directory region.
    pub root_start: u64,
    pub root_len: u64,
    /// FAT32's root directory cluster.
    pub root_cluster: u32,
    pub data_start: u64,
    /// Data clusters: numbered 2..clusters+2.
    pub clusters: u32,
    pub fs_info_sector: u64,
    pub volume_id: u32,
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl Geometry {
    pub(crate) fn parse(b: &[u8; 512], dev_len: u64) -> FsResult<Geometry> {
        let bad = |what: &str| {
            FsError::new(
                libc::EINVAL,
                format!("not a FAT filesystem (boot sector: {what})"),
            )
        };
        let sector = le16(b, 11) as u64;
        if ![512, 1024, 2048, 4096].contains(&sector) {
            return Err(bad("bytes per sector"));
        }
        let spc = b[13] as u64;
        if spc == 0 || !spc.is_power_of_two() {
            return Err(bad("sectors per cluster"));
        }
        let reserved = le16(b, 14) as u64;
        let fats = b[16] as u64;
        let root_entries = le16(b, 17) as u64;
        let total16 = le16(b, 19) as u64;
        let fat16 = le16(b, 22) as u64;
        let total32 = le32(b, 32) as u64;
        let total = if total16 != 0 { total16 } else { total32 };
        let fat_sectors = if fat16 != 0 {
            fat16
        } else {
            le32(b, 36) as u64
        };
        if reserved == 0 || fats == 0 || fat_sectors == 0 || total == 0 {
            return Err(bad("reserved sectors, FAT count or size"));
        }
        let root_sectors = (root_entries * 32).div_ceil(sector);
        let data_sector = reserved + fats * fat_sectors + root_sectors;
        if data_sector >= total || total * sector > dev_len {
            return Err(bad("sizes larger than the device"));
        }
        let clusters = ((total - data_sector) / spc) as u32;
        let kind = if clusters < 4085 {
            FatKind::Fat12
        } else if clusters < 65525 {
            FatKind::Fat16
        } else {
            FatKind::Fat32
        };
        let (root_cluster, fs_info, volume_id) = if kind == FatKind::Fat32 {
            (le32(b, 44), le16(b, 48) as u64, le32(b, 67))
        } else {
            (0, 0, le32(b, 39))
        };
        if kind == FatKind::Fat32 && (root_cluster < 2 || root_cluster >= clusters + 2) {
            return Err(bad("root directory cluster"));
        }
        Ok(Geometry {
            kind,
            sector,
            cluster_size: sector * spc,
            fat_start: reserved * sector,
            fat_len: fat_sectors * sector,
            fats,
            root_start: (reserved + fats * fat_sectors) * sector,
            root_len: root_sectors * sector,
            root_cluster,
            data_start: data_sector * sector,
            clusters,
            fs_info_sector: fs_info,
            volume_id,
        })
    }

    pub(crate) fn cluster_offset(&self, c: u32) -> u64 {
        self.data_start + (c as u64 - 2) * self.cluster_size
    }

    fn valid(&self, c: u32) -> bool {
        c >= 2 && c < self.clusters + 2
    }

    /// The FAT entry of cluster `c` (in the first FAT).
    pub(crate) fn fat_get(&self, cache: &mut BlockCache, c: u32) -> FsResult<u32> {
        Ok(match self.kind {
            FatKind::Fat12 => {
                let at = self.fat_start + c as u64 * 3 / 2;
                let mut b = [0u8; 2];
                cache.read(at, &mut b)?;
                let v = u16::from_le_bytes(b);
                (if c & 1 == 1 { v >> 4 } else { v & 0xFFF }) as u32
            }
            FatKind::Fat16 => {
                let mut b = [0u8; 2];
                cache.read(self.fat_start + c as u64 * 2, &mut b)?;
                u16::from_le_bytes(b) as u32
            }
            FatKind::Fat32 => {
                let mut b = [0u8; 4];
                cache.read(self.fat_start + c as u64 * 4, &mut b)?;
                u32::from_le_bytes(b) & 0x0FFF_FFFF
            }
        })
    }

    /// Sets cluster `c`'s FAT entry in every copy of the FAT.
    pub(crate) fn fat_set(&self, cache: &mut BlockCache, c: u32, v: u32) -> FsResult<()> {
        for n in 0..self.fats {
            let base = self.fat_start + n * self.fat_len;
            match self.kind {
                FatKind::Fat12 => {
                    let at = base + c as u64 * 3 / 2;
                    let mut b = [0u8; 2];
                    cache.read(at, &mut b)?;
                    let old = u16::from_le_bytes(b);
                    let v = v as u16 & 0xFFF;
                    let new = if c & 1 == 1 {
                        (old & 0x000F) | (v << 4)
                    } else {
                        (old & 0xF000) | v
                    };
                    cache.write(at, &new.to_le_bytes())?;
                }
                FatKind::Fat16 => cache.write(base + c as u64 * 2, &(v as u16).to_le_bytes())?,
                FatKind::Fat32 => {
                    let at = base + c as u64 * 4;
                    let mut b = [0u8; 4];
                    cache.read(at, &mut b)?;
                    let keep = u32::from_le_bytes(b) & 0xF000_0000;
                    cache.write(at, &(keep | (v & 0x0FFF_FFFF)).to_le_bytes())?;
                }
            }
        }
        Ok(())
    }

    fn is_eoc(&self, v: u32) -> bool {
        match self.kind {
            FatKind::Fat12 => v >= 0xFF8,
            FatKind::Fat16 => v >= 0xFFF8,
            FatKind::Fat32 => v >= 0x0FFF_FFF8,
        }
    }

    /// The clusters of the chain starting at `first` (empty for 0).
    pub(crate) fn chain(&self, cache: &mut BlockCache, first: u32) -> FsResult<Vec<u32>> {
        let mut out = Vec::new();
        let mut c = first;
        if c == 0 {
            return Ok(out);
        }
        loop {
            if !self.valid(c) || out.len() > self.clusters as usize {
                return Err(FsError::new(
                    libc::EIO,
                    format!("FAT cluster chain from {first} is broken (cluster {c}): run fsck.fat"),
                ));
            }
            out.push(c);
            let next = self.fat_get(cache, c)?;
            if self.is_eoc(next) {
                return Ok(out);
            }
            c = next;
        }
    }

    /// Marks every cluster of the chain from `first` free; returns how many.
    pub(crate) fn free_chain(&self, cache: &mut BlockCache, first: u32) -> FsResult<usize> {
        let chain = self.chain(cache, first)?;
        for &c in &chain {
            self.fat_set(cache, c, 0)?;
        }
        Ok(chain.len())
    }

    /// Free clusters, counted from the FAT.
    pub(crate) fn free_clusters(&self, cache: &mut BlockCache) -> FsResult<u32> {
        let mut fat = vec![0u8; self.fat_len as usize];
        cache.read(self.fat_start, &mut fat)?;
        let mut free = 0;
        for c in 2..self.clusters + 2 {
            if fat_entry(self.kind, &fat, c) == 0 {
                free += 1;
            }
        }
        Ok(free)
    }

    /// Byte ranges of the used clusters, merged.
    pub(crate) fn used_ranges(&self, cache: &mut BlockCache) -> FsResult<Vec<(u64, u64)>> {
        let mut fat = vec![0u8; self.fat_len as usize];
        cache.read(self.fat_start, &mut fat)?;
        let mut out: Vec<(u64, u64)> = vec![(0, self.data_start)];
        for c in 2..self.clusters + 2 {
            if fat_entry(self.kind, &fat, c) != 0 {
                let start = self.cluster_offset(c);
                match out.last_mut() {
                    Some(last) if last.0 + last.1 == start => last.1 += self.cluster_size,
                    _ => out.push((start, self.cluster_size)),
                }
            }
        }
        Ok(out)
    }

    /// Rewrites FAT32's FSInfo free count and next-free hint from the FAT itself (fatfs
    /// only tracks its own changes, and the adapter frees clusters behind its back).
    pub(crate) fn write_fs_info(&self, cache: &mut BlockCache) -> FsResult<()> {
        if self.kind != FatKind::Fat32 || self.fs_info_sector == 0 {
            return Ok(());
        }
        let at = self.fs_info_sector * self.sector;
        let mut s = [0u8; 512];
        cache.read(at, &mut s)?;
        if le32(&s, 0) != 0x4161_5252 || le32(&s, 484) != 0x6141_7272 {
            return Ok(());
        }
        let free = self.free_clusters(cache)?;
        let mut fat = vec![0u8; self.fat_len as usize];
        cache.read(self.fat_start, &mut fat)?;
        let next = (2..self.clusters + 2)
            .find(|&c| fat_entry(self.kind, &fat, c) == 0)
            .unwrap_or(0xFFFF_FFFF);
        let mut upd = [0u8; 8];
        upd[..4].copy_from_slice(&free.to_le_bytes());
        upd[4..].copy_from_slice(&next.to_le_bytes());
        cache.write(at + 488, &upd)
    }
}

fn fat_entry(kind: FatKind, fat: &[u8], c: u32) -> u32 {
    match kind {
        FatKind::Fat12 => {
            let at = c as usize * 3 / 2;
            if at + 1 >= fat.len() {
                return 0;
            }
            let v = le16(fat, at);
            (if c & 1 == 1 { v >> 4 } else { v & 0xFFF }) as u32
        }
        FatKind::Fat16 => {
            let at = c as usize * 2;
            if at + 1 >= fat.len() {
                return 0;
            }
            le16(fat, at) as u32
        }
        FatKind::Fat32 => {
            let at = c as usize * 4;
            if at + 3 >= fat.len() {
                return 0;
            }
            le32(fat, at) & 0x0FFF_FFFF
        }
    }
}

/// Where a directory's entries are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DirLoc {
    FixedRoot,
    Chain(u32),
}

/// A short-name entry with the long name that belongs to it.
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub sfn: [u8; 11],
    pub attr: u8,
    pub lcase: u8,
    pub ctime_cs: u8,
    pub ctime: u16,
    pub cdate: u16,
    pub adate: u16,
    pub mtime: u16,
    pub mdate: u16,
    pub cluster: u32,
    pub size: u32,
    pub lfn: Option<Vec<u16>>,
    /// Device offset of the short-name slot.
    pub pos: u64,
    /// Device offsets of every slot of this entry, long-name slots first.
    pub slots: Vec<u64>,
}

impl RawEntry {
    pub(crate) fn parse(b: &[u8], pos: u64, kind: FatKind) -> RawEntry {
        let mut sfn = [0u8; 11];
        sfn.copy_from_slice(&b[..11]);
        let hi = if kind == FatKind::Fat32 {
            (le16(b, 20) as u32) << 16
        } else {
            0
        };
        RawEntry {
            sfn,
            attr: b[11],
            lcase: b[12],
            ctime_cs: b[13],
            ctime: le16(b, 14),
            cdate: le16(b, 16),
            adate: le16(b, 18),
            mtime: le16(b, 22),
            mdate: le16(b, 24),
            cluster: hi | le16(b, 26) as u32,
            size: le32(b, 28),
            lfn: None,
            pos,
            slots: vec![pos],
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.attr & ATTR_DIR != 0
    }

    pub(crate) fn is_dot(&self) -> bool {
        &self.sfn == b".          " || &self.sfn == b"..         "
    }

    /// The 32 bytes of this short-name entry.
    pub(crate) fn encode(&self, kind: FatKind) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..11].copy_from_slice(&self.sfn);
        b[11] = self.attr;
        b[12] = self.lcase;
        b[13] = self.ctime_cs;
        b[14..16].copy_from_slice(&self.ctime.to_le_bytes());
        b[16..18].copy_from_slice(&self.cdate.to_le_bytes());
        b[18..20].copy_from_slice(&self.adate.to_le_bytes());
        if kind == FatKind::Fat32 {
            b[20..22].copy_from_slice(&((self.cluster >> 16) as u16).to_le_bytes());
        }
        b[22..24].copy_from_slice(&self.mtime.to_le_bytes());
        b[24..26].copy_from_slice(&self.mdate.to_le_bytes());
        b[26..28].copy_from_slice(&(self.cluster as u16).to_le_bytes());
        b[28..32].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    /// The name as Linux's vfat shows it (utf8, shortname=mixed).
    pub(crate) fn name(&self) -> Vec<u8> {
        match &self.lfn {
            Some(u) => String::from_utf16_lossy(u).into_bytes(),
            None => self.short_name(true),
        }
    }

    /// The 8.3 name as text: `lcase` applies the Windows NT lower-case flags.
    pub(crate) fn short_name(&self, lcase: bool) -> Vec<u8> {
        let mut raw = self.sfn;
        if raw[0] == 0x05 {
            raw[0] = 0xE5;
        }
        let base_len = raw[..8]
            .iter()
            .rposition(|&c| c != b' ')
            .map_or(0, |p| p + 1);
        let ext_len = raw[8..]
            .iter()
            .rposition(|&c| c != b' ')
            .map_or(0, |p| p + 1);
        let mut s = String::new();
        for &c in &raw[..base_len] {
            s.push(cp437(c, lcase && self.lcase & 0x08 != 0));
        }
        if ext_len > 0 {
            s.push('.');
            for &c in &raw[8..8 + ext_len] {
                s.push(cp437(c, lcase && self.lcase & 0x10 != 0));
            }
        }
        s.into_bytes()
    }

    /// The short name as fatfs's `short_file_name_as_bytes` gives it: raw OEM bytes.
    pub(crate) fn fatfs_short_bytes(&self) -> Vec<u8> {
        let raw = &self.sfn;
        let base_len = raw[..8]
            .iter()
            .rposition(|&c| c != b' ')
            .map_or(0, |p| p + 1);
        let ext_len = raw[8..]
            .iter()
            .rposition(|&c| c != b' ')
            .map_or(0, |p| p + 1);
        let mut v = raw[..base_len].to_vec();
        if ext_len > 0 {
            v.push(b'.');
            v.extend_from_slice(&raw[8..8 + ext_len]);
        }
        if v.first() == Some(&0x05) {
            v[0] = 0xE5;
        }
        v
    }
}

/// Code page 437's upper half, which is what Linux's default `codepage=437` reads short
/// names as.
const CP437_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";

fn cp437(c: u8, lower: bool) -> char {
    if c < 0x80 {
        let ch = c as char;
        if lower {
            ch.to_ascii_lowercase()
        } else {
            ch
        }
    } else {
        CP437_HIGH.chars().nth((c - 0x80) as usize).unwrap_or('?')
    }
}

fn lfn_checksum(sfn: &[u8; 11]) -> u8 {
    sfn.iter()
        .fold(0u8, |s, &b| (s >> 1).wrapping_add(s << 7).wrapping_add(b))
}

/// Reads every slot of a directory: (device offset, 32 bytes).
pub(crate) fn dir_slots(
    geo: &Geometry,
    cache: &mut BlockCache,
    loc: DirLoc,
) -> FsResult<Vec<(u64, [u8; 32])>> {
    let regions: Vec<(u64, u64)> = match loc {
        DirLoc::FixedRoot => vec![(geo.root_start, geo.root_len)],
        DirLoc::Chain(first) => geo
            .chain(cache, first)?
            .into_iter()
            .map(|c| (geo.cluster_offset(c), geo.cluster_size))
            .collect(),
    };
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for (start, len) in regions {
        buf.resize(len as usize, 0);
        cache.read(start, &mut buf)?;
        for (i, s) in buf.chunks_exact(32).enumerate() {
            let mut a = [0u8; 32];
            a.copy_from_slice(s);
            out.push((start + i as u64 * SLOT, a));
        }
    }
    Ok(out)
}

/// The entries of a directory as Linux reads them: every slot is looked at (Linux does not
/// stop at a zero slot), deleted slots and volume labels are skipped, and a long name counts
/// only when its slots are complete and in order and their checksum matches the short name
/// that follows. `.` and `..` are included (callers skip them).
pub(crate) fn read_dir(
    geo: &Geometry,
    cache: &mut BlockCache,
    loc: DirLoc,
) -> FsResult<Vec<RawEntry>> {
    let slots = dir_slots(geo, cache, loc)?;
    let mut out = Vec::new();
    // The long name being assembled: expected next order, checksum, units, slot offsets.
    let mut lfn: Option<(u8, u8, Vec<u16>, Vec<u64>)> = None;
    for (pos, s) in slots {
        if s[0] == 0 || s[0] == DELETED {
            lfn = None;
            continue;
        }
        if s[11] & 0x3F == ATTR_LFN {
            let order = s[0] & 0x1F;
            let sum = s[13];
            let units: Vec<u16> = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                .iter()
                .map(|&o| le16(&s, o))
                .collect();
            if s[0] & 0x40 != 0 && order >= 1 {
                let mut all = vec![0u16; order as usize * 13];
                all[(order as usize - 1) * 13..].copy_from_slice(&units);
                lfn = Some((order - 1, sum, all, vec![pos]));
            } else if let Some((next, csum, all, ps)) = lfn.as_mut() {
                if order == *next && order >= 1 && sum == *csum {
                    all[(order as usize - 1) * 13..order as usize * 13].copy_from_slice(&units);
                    ps.push(pos);
                    *next -= 1;
                } else {
                    lfn = None;
                }
            }
            continue;
        }
        let long = lfn.take();
        if s[11] & ATTR_VOLUME != 0 {
            continue;
        }
        let mut e = RawEntry::parse(&s, pos, geo.kind);
        if let Some((0, sum, mut units, mut ps)) = long {
            if sum == lfn_checksum(&e.sfn) {
                if let Some(end) = units.iter().position(|&u| u == 0) {
                    units.truncate(end);
                }
                while units.last() == Some(&0xFFFF) {
                    units.pop();
                }
                if !units.is_empty() {
                    ps.push(pos);
                    e.slots = ps;
                    e.lfn = Some(units);
                }
            }
        }
        out.push(e);
    }
    Ok(out)
}

/// Overwrites the long-name slots of `e` with `units` (which must need exactly as many
/// slots); the checksum stays, since the short name does not change.
pub(crate) fn rewrite_long_name(
    cache: &mut BlockCache,
    e: &RawEntry,
    units: &[u16],
) -> FsResult<()> {
    let lfn_slots = &e.slots[..e.slots.len() - 1];
    let n = lfn_slots.len();
    if n != units.len().div_ceil(13) {
        return Err(FsError::new(
            libc::EIO,
            "internal error: long name slot count changed",
        ));
    }
    let mut padded = units.to_vec();
    if padded.len() % 13 != 0 {
        padded.push(0);
        while padded.len() % 13 != 0 {
            padded.push(0xFFFF);
        }
    }
    for (i, &pos) in lfn_slots.iter().enumerate() {
        // Slot i holds part n - i (the last part comes first on disk).
        let part = n - i;
        let mut s = [0u8; 32];
        cache.read(pos, &mut s)?;
        let chunk = &padded[(part - 1) * 13..part * 13];
        for (k, &o) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
            .iter()
            .enumerate()
        {
            s[o..o + 2].copy_from_slice(&chunk[k].to_le_bytes());
        }
        cache.write(pos, &s)?;
    }
    Ok(())
}

/// Marks every slot of `e` deleted.
pub(crate) fn delete_slots(cache: &mut BlockCache, e: &RawEntry) -> FsResult<()> {
    for &p in &e.slots {
        cache.write(p, &[DELETED])?;
    }
    Ok(())
}

/// Linux's vfat name rules for a new entry (fs/fat/namei_vfat.c): trailing dots are dropped
/// (`a.` is `a`), nothing left is ENOENT, more than 255 UTF-16 units is ENAMETOOLONG, control
/// characters and `*?<>|":/\` and a trailing space are EINVAL. Returns the name to store.
pub(crate) fn check_new_name(name: &[u8]) -> FsResult<(String, Vec<u16>)> {
    let stripped = strip_dots(name);
    if stripped.is_empty() {
        return Err(FsError::new(libc::ENOENT, "a FAT name cannot be only dots"));
    }
    let s = std::str::from_utf8(stripped).map_err(|_| {
        FsError::new(
            libc::EINVAL,
            "FAT names are stored as UTF-16: this name is not UTF-8",
        )
    })?;
    let units: Vec<u16> = s.encode_utf16().collect();
    if units.len() > 255 {
        return Err(FsError::new(
            libc::ENAMETOOLONG,
            "FAT long names hold at most 255 UTF-16 characters",
        ));
    }
    if s.chars()
        .any(|c| (c as u32) < 0x20 || "*?<>|\":/\\".contains(c))
    {
        return Err(FsError::new(
            libc::EINVAL,
            "FAT names cannot hold control characters or any of * ? < > | \" : / \\",
        ));
    }
    if s.ends_with(' ') {
        return Err(FsError::new(
            libc::EINVAL,
            "FAT names cannot end in a space",
        ));
    }
    Ok((s.to_string(), units))
}

pub(crate) fn strip_dots(name: &[u8]) -> &[u8] {
    let mut n = name.len();
    while n > 0 && name[n - 1] == b'.' {
        n -= 1;
    }
    &name[..n]
}

/// Linux's comparison (iocharset=ascii with utf8): bytewise, ASCII letters case-insensitive,
/// trailing dots ignored.
pub(crate) fn names_match(query: &[u8], stored: &[u8]) -> bool {
    let a = strip_dots(query);
    let b = strip_dots(stored);
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.eq_ignore_ascii_case(y))
}

/// Does `e` answer to `query` in a lookup: its long name or its 8.3 alias.
pub(crate) fn entry_matches(e: &RawEntry, query: &[u8]) -> bool {
    if strip_dots(query).is_empty() {
        return false;
    }
    if let Some(u) = &e.lfn {
        if names_match(query, String::from_utf16_lossy(u).as_bytes()) {
            return true;
        }
    }
    names_match(query, &e.short_name(false))
}

/// fatfs's own name comparison (Dir::find_entry): Unicode upper-casing of the long name, or
/// of the short name with non-ASCII bytes read as U+FFFD. Used to keep fatfs from taking a
/// new name for an existing entry that Linux holds to be different.
pub(crate) fn fatfs_matches(e: &RawEntry, name: &str) -> bool {
    let up = |s: &str| s.chars().flat_map(char::to_uppercase).collect::<String>();
    let target = up(name);
    let long = match &e.lfn {
        Some(u) => String::from_utf16_lossy(u),
        None => lossy_ascii(&e.short_name(true)),
    };
    up(&long) == target || up(&lossy_ascii(&e.fatfs_short_bytes())) == target
}

fn lossy_ascii(b: &[u8]) -> String {
    b.iter()
        .map(|&c| if c < 0x80 { c as char } else { '\u{FFFD}' })
        .collect()
}

// DOS times. Linux's vfat reads and writes them as UTC here: the guestfish appliance's
// kernel has no timezone set (sys_tz 0) and the default mount has no tz= option.

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A DOS date, time and hundredths as a Unix time (fat_time_fat2unix).
pub(crate) fn fat_to_unix(date: u16, time: u16, cs: u8) -> Timespec {
    let y = 1980 + (date >> 9) as i64;
    let m = (((date >> 5) & 0xF) as i64).clamp(1, 12);
    let d = ((date & 0x1F) as i64).max(1);
    let secs = days_from_civil(y, m, d) * 86400
        + (time >> 11) as i64 * 3600
        + ((time >> 5) & 0x3F) as i64 * 60
        + (time & 0x1F) as i64 * 2;
    Timespec {
        sec: secs + (cs / 100) as i64,
        nsec: (cs % 100) as u32 * 10_000_000,
    }
}

/// A Unix time as DOS (date, time, hundredths), clamped to 1980..2107 (fat_time_unix2fat).
pub(crate) fn unix_to_fat(t: Timespec) -> (u16, u16, u8) {
    let min = days_from_civil(1980, 1, 1) * 86400;
    let max = days_from_civil(2107, 12, 31) * 86400 + 86399;
    if t.sec < min {
        return ((1 << 5) | 1, 0, 0);
    }
    if t.sec > max {
        return (
            (127 << 9) | (12 << 5) | 31,
            (23 << 11) | (59 << 5) | 29,
            199,
        );
    }
    let days = t.sec.div_euclid(86400);
    let rem = t.sec.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16;
    let time =
        (((rem / 3600) as u16) << 11) | ((((rem / 60) % 60) as u16) << 5) | ((rem % 60) / 2) as u16;
    let cs = ((rem % 2) * 100 + (t.nsec / 10_000_000) as i64) as u8;
    (date, time, cs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_times_round_trip_at_their_resolution() {
        let t = Timespec {
            sec: 981_173_107, // 2001-02-03 04:05:07 UTC
            nsec: 450_000_000,
        };
        let (d, tm, cs) = unix_to_fat(t);
        assert_eq!(fat_to_unix(d, tm, 0).sec, 981_173_106, "2 s resolution");
        assert_eq!(
            fat_to_unix(d, tm, cs),
            Timespec {
                sec: 981_173_107,
                nsec: 450_000_000
            }
        );
        assert_eq!(fat_to_unix(d, 0, 0).sec, 981_158_400, "date only: midnight");
        let (d, tm, _) = unix_to_fat(Timespec { sec: 0, nsec: 0 });
        assert_eq!(fat_to_unix(d, tm, 0).sec, 315_532_800, "clamped to 1980");
    }

    #[test]
    fn names_follow_linux_vfat_rules() {
        assert!(names_match(b"README.txt", b"readme.TXT"));
        assert!(names_match(b"a.", b"a"));
        assert!(
            !names_match("é".as_bytes(), "É".as_bytes()),
            "only ASCII folds"
        );
        assert_eq!(check_new_name(b"x.").unwrap().0, "x");
        assert_eq!(check_new_name(b"...").unwrap_err().errno, libc::ENOENT);
        assert_eq!(check_new_name(b"a*b").unwrap_err().errno, libc::EINVAL);
        assert_eq!(check_new_name(b"a ").unwrap_err().errno, libc::EINVAL);
        assert_eq!(
            check_new_name(&[b'a'; 256]).unwrap_err().errno,
            libc::ENAMETOOLONG
        );
        assert!(
            check_new_name("é".repeat(255).as_bytes()).is_ok(),
            "255 units, 510 bytes"
        );
        assert_eq!(check_new_name(&[0xff]).unwrap_err().errno, libc::EINVAL);
    }

    #[test]
    fn short_names_read_as_code_page_437_with_case_flags() {
        let mut e = RawEntry::parse(&[0u8; 32], 0, FatKind::Fat16);
        e.sfn = *b"README  TXT";
        assert_eq!(e.name(), b"README.TXT");
        e.lcase = 0x08;
        assert_eq!(e.name(), b"readme.TXT");
        e.sfn = *b"\x82T\xe1     A  ";
        e.lcase = 0;
        assert_eq!(e.name(), "éTß.A".as_bytes());
    }
}
