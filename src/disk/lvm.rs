//! LVM2: finding physical volumes on devices, reading the volume group metadata from their
//! metadata areas, and turning each logical volume into a device (a `Window` over the PVs'
//! extents) or a refusal that says why not.
//!
//! This module owns the on-disk binary layout and the I/O; the metadata text itself is
//! parsed by `lvm_text.rs`. On-disk layout (all integers little-endian):
//! ```text
//! label, in one of sectors 0..4 of the PV (usually sector 1):
//!   0 "LABELONE"   8 sector_xl (this sector)   16 crc_xl (of bytes 20..512)
//!  20 offset_xl (of the PV header in this sector, usually 32)   24 "LVM2 001"
//! PV header, at offset_xl:
//!   0 PV UUID (32 ASCII characters, no dashes)   32 device size in bytes
//!  40 data areas:     (offset u64, size u64) pairs, ended by a zero offset
//!     metadata areas: (offset u64, size u64) pairs, ended by a zero offset
//! metadata area header, 512 bytes at a metadata area's offset:
//!   0 checksum (of bytes 4..512)   4 " LVM2 x[5A%r0N*>"   20 version (1)
//!  24 start (its own byte offset)  32 size of the area
//!  40 raw locations: (offset u64 from the area's start, size u64, checksum u32,
//!     flags u32), ended by a zero offset; the first is the committed metadata.
//! ```
//! The text lives in a circular buffer: the area after its 512-byte header. A text that
//! runs past the end of the area continues right after the header. Its size counts a
//! trailing NUL. Every checksum is LVM's CRC-32 (the usual reflected polynomial, initial
//! value 0xf597a6cf, no final inversion).
//!
//! A PV is untrusted input: every offset is checked against the device, the label and
//! header lists are bounded by the sector that holds them, the text is capped at
//! `lvm_text::MAX_TEXT`, and nothing panics or loops on any bytes.
//! Only linear LVs (every segment one run of a PV's extents) become devices. Thin, RAID,
//! mirror, cache, VDO, striped and snapshot LVs are refused by name: their data is not a
//! plain run of extents, and writing through a naive mapping would corrupt them.

use std::collections::HashMap;
use std::sync::Arc;

use super::lvm_text::{self, LvMeta, SegmentKind, VolumeGroupMeta};
use super::window::Window;
use super::{Disk, DiskError, SECTOR};
use crate::store::device::{BlockDevice, SharedDevice};

const LABEL_ID: &[u8; 8] = b"LABELONE";
const LABEL_TYPE: &[u8; 8] = b"LVM2 001";
/// LVM looks for its label in the first four sectors only.
const LABEL_SCAN_SECTORS: u64 = 4;
const LABEL_HEADER_SIZE: usize = 32;
/// Length of a PV or VG UUID without its dashes.
const ID_LEN: usize = 32;
const INITIAL_CRC: u32 = 0xf597_a6cf;
const MDA_MAGIC: &[u8; 16] = b" LVM2 x[5A%r0N*>";
const MDA_HEADER_SIZE: u64 = 512;
const MDA_VERSION: u32 = 1;
/// Raw location flag: this area's copy is deliberately not kept up to date
/// (`pvchange --metadataignore`), so it must not be read.
const RAW_LOCN_IGNORED: u32 = 1;
/// The characters LVM draws UUIDs from.
const ID_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#";

/// LVM's CRC-32 of `data`, continuing from `crc` (start with `INITIAL_CRC`).
fn crc_update(crc: u32, data: &[u8]) -> u32 {
    // crc32fast inverts its state before and after; LVM does neither.
    let mut h = crc32fast::Hasher::new_with_initial(!crc);
    h.update(data);
    !h.finalize()
}

fn lvm_crc(data: &[u8]) -> u32 {
    crc_update(INITIAL_CRC, data)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// A byte range of the PV: a data area or a metadata area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    pub offset: u64,
    pub size: u64,
}

/// What the label sector says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// The sector (0..4) it was found in.
    pub sector: u64,
    /// The PV UUID as LVM prints it (`2hxszJ-HRNf-dNIf-6wUf-69Vj-SE53-Rdtdbb`).
    pub uuid: String,
    pub device_size: u64,
    pub data_areas: Vec<Area>,
    pub metadata_areas: Vec<Area>,
}

/// LVM's printed form of a 32-character UUID: groups of 6-4-4-4-4-4-6.
fn dashed(id: &str) -> String {
    let mut out = String::with_capacity(38);
    let mut at = 0;
    for (i, n) in [6, 4, 4, 4, 4, 4, 6].into_iter().enumerate() {
        if i > 0 {
            out.push('-');
        }
        out.push_str(id.get(at..at + n).unwrap_or(""));
        at += n;
    }
    out
}

/// A UUID with its dashes removed, for comparing the label's form with the text's.
fn undashed(id: &str) -> String {
    id.chars().filter(|&c| c != '-').collect()
}

/// Parses `sector`, read from sector number `number` of the device. `Ok(None)` when it is
/// not a label (no "LABELONE"); an error when it is one that fails a check.
pub fn parse_label(sector: &[u8; 512], number: u64) -> Result<Option<Label>, String> {
    if &sector[..8] != LABEL_ID {
        return Ok(None);
    }
    let sector_xl = le64(sector, 8);
    if sector_xl != number {
        return Err(format!(
            "the label says it is in sector {sector_xl}, found in sector {number}"
        ));
    }
    let stored = le32(sector, 16);
    let crc = lvm_crc(&sector[20..]);
    if stored != crc {
        return Err(format!(
            "label checksum mismatch (stored {stored:#010x}, computed {crc:#010x})"
        ));
    }
    if &sector[24..32] != LABEL_TYPE {
        return Err(format!(
            "label type {:?} is not \"LVM2 001\" (not an LVM2 text-format PV)",
            String::from_utf8_lossy(&sector[24..32])
        ));
    }
    let at = le32(sector, 20) as usize;
    // The PV header (UUID, size, and at least the two list terminators) must fit.
    if !(LABEL_HEADER_SIZE..=512 - (ID_LEN + 8 + 32)).contains(&at) {
        return Err(format!(
            "the PV header offset {at} does not leave room for the header in the sector"
        ));
    }
    let id = &sector[at..at + ID_LEN];
    if !id.iter().all(|c| ID_CHARS.contains(c)) {
        return Err(format!(
            "the PV UUID {:?} holds characters LVM never writes",
            String::from_utf8_lossy(id)
        ));
    }
    let uuid = dashed(&String::from_utf8_lossy(id));
    let device_size = le64(sector, at + ID_LEN);
    let mut pos = at + ID_LEN + 8;
    let data_areas = area_list(sector, &mut pos, "data")?;
    let metadata_areas = area_list(sector, &mut pos, "metadata")?;
    Ok(Some(Label {
        sector: number,
        uuid,
        device_size,
        data_areas,
        metadata_areas,
    }))
}

/// A zero-terminated list of (offset, size) pairs; the sector bounds it.
fn area_list(sector: &[u8; 512], pos: &mut usize, what: &str) -> Result<Vec<Area>, String> {
    let mut out = Vec::new();
    loop {
        if *pos + 16 > sector.len() {
            return Err(format!(
                "the {what} area list runs past the end of the label sector"
            ));
        }
        let (offset, size) = (le64(sector, *pos), le64(sector, *pos + 8));
        *pos += 16;
        if offset == 0 {
            return Ok(out);
        }
        out.push(Area { offset, size });
    }
}

/// The committed (or any) metadata location of an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawLocation {
    /// From the start of the metadata area.
    pub offset: u64,
    /// Bytes of text, its trailing NUL included.
    pub size: u64,
    pub checksum: u32,
    pub flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdaHeader {
    /// Byte offset of the area (and of this header) on the PV.
    pub start: u64,
    pub size: u64,
    pub locations: Vec<RawLocation>,
}

/// Parses the 512-byte header of the metadata area `area`.
pub fn parse_mda_header(buf: &[u8; 512], area: Area) -> Result<MdaHeader, String> {
    let stored = le32(buf, 0);
    let crc = lvm_crc(&buf[4..]);
    if stored != crc {
        return Err(format!(
            "header checksum mismatch (stored {stored:#010x}, computed {crc:#010x})"
        ));
    }
    if &buf[4..20] != MDA_MAGIC {
        return Err("no \" LVM2 x[5A%r0N*>\" magic".into());
    }
    let version = le32(buf, 20);
    if version != MDA_VERSION {
        return Err(format!("format version {version} (only 1 is known)"));
    }
    let start = le64(buf, 24);
    let size = le64(buf, 32);
    if start != area.offset {
        return Err(format!(
            "the header says it is at byte {start}, found at byte {}",
            area.offset
        ));
    }
    if size <= MDA_HEADER_SIZE || size > area.size {
        return Err(format!(
            "area size {size} is not between {MDA_HEADER_SIZE} and the label's {}",
            area.size
        ));
    }
    let mut locations = Vec::new();
    let mut pos = 40;
    while pos + 24 <= buf.len() {
        let offset = le64(buf, pos);
        if offset == 0 {
            break;
        }
        locations.push(RawLocation {
            offset,
            size: le64(buf, pos + 8),
            checksum: le32(buf, pos + 16),
            flags: le32(buf, pos + 20),
        });
        pos += 24;
    }
    Ok(MdaHeader {
        start,
        size,
        locations,
    })
}

/// Where `loc`'s text lies on the PV: one `(offset, len)` run, or two when it wraps
/// around the end of the circular buffer.
pub fn text_runs(h: &MdaHeader, loc: &RawLocation) -> Result<Vec<(u64, u64)>, String> {
    let buffer = h.size - MDA_HEADER_SIZE;
    if loc.offset < MDA_HEADER_SIZE || loc.offset >= h.size {
        return Err(format!(
            "the text offset {} is outside the area's buffer ({MDA_HEADER_SIZE}..{})",
            loc.offset, h.size
        ));
    }
    if loc.size == 0 || loc.size > buffer {
        return Err(format!(
            "the text size {} does not fit the area's {buffer}-byte buffer",
            loc.size
        ));
    }
    if loc.size > lvm_text::MAX_TEXT as u64 + 1 {
        return Err(format!(
            "the text size {} exceeds the {}-byte limit",
            loc.size,
            lvm_text::MAX_TEXT
        ));
    }
    let first = loc.size.min(h.size - loc.offset);
    let mut runs = vec![(h.start + loc.offset, first)];
    if first < loc.size {
        // Wrapped: the rest follows the header. It cannot reach the first part, since the
        // size fits the buffer.
        runs.push((h.start + MDA_HEADER_SIZE, loc.size - first));
    }
    Ok(runs)
}

/// Checks the text's checksum and turns it into a string (the trailing NUL removed).
pub fn check_text(bytes: &[u8], loc: &RawLocation) -> Result<String, String> {
    let crc = lvm_crc(bytes);
    if crc != loc.checksum {
        return Err(format!(
            "text checksum mismatch (stored {:#010x}, computed {crc:#010x})",
            loc.checksum
        ));
    }
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

/// One copy of the VG metadata, as found in one metadata area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub text: String,
    pub vg: VolumeGroupMeta,
    /// Byte offset of the metadata area it came from.
    pub area: u64,
    /// Whether the text wrapped around the end of the area's circular buffer.
    pub wrapped: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysicalVolume {
    pub label: Label,
    /// The newest copy (highest seqno) among the metadata areas; `None` when the PV keeps
    /// no metadata (created with `--metadatacopies 0`, or not in a VG yet).
    pub metadata: Option<Metadata>,
    /// Copies that failed a check while another copy was used, each saying why.
    pub damaged: Vec<String>,
}

/// Reads the PV label in the first four sectors of `dev`: `Ok(None)` when there is none.
pub fn read_label(dev: &dyn BlockDevice) -> Result<Option<Label>, DiskError> {
    let disk = Disk {
        dev,
        len: dev.len(),
    };
    for number in 0..LABEL_SCAN_SECTORS {
        if (number + 1) * SECTOR > disk.len {
            break;
        }
        let mut sector = [0u8; SECTOR as usize];
        disk.read(&mut sector, number * SECTOR, "the LVM label")?;
        if let Some(label) =
            parse_label(&sector, number).map_err(|detail| DiskError::ReadingLvmLabel {
                sector: number,
                detail,
            })?
        {
            return Ok(Some(label));
        }
    }
    Ok(None)
}

/// Reads the PV on `dev`: its label and the newest copy of its VG metadata.
/// `Ok(None)` when `dev` holds no PV label. A damaged copy is skipped when another copy is
/// sound; when every copy is damaged, the first one's error is returned.
pub fn read_pv(dev: &dyn BlockDevice) -> Result<Option<PhysicalVolume>, DiskError> {
    let Some(label) = read_label(dev)? else {
        return Ok(None);
    };
    let disk = Disk {
        dev,
        len: dev.len(),
    };
    let mut copies: Vec<Metadata> = Vec::new();
    let mut errors: Vec<DiskError> = Vec::new();
    for area in &label.metadata_areas {
        match read_area(&disk, *area) {
            Ok(Some(m)) => copies.push(m),
            Ok(None) => {}
            Err(e @ DiskError::Reading { .. }) => return Err(e),
            Err(e) => errors.push(e),
        }
    }
    let damaged: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    // `max_by_key` keeps the last of equal keys; prefer the first area on ties.
    let newest = copies.into_iter().rev().max_by_key(|m| m.vg.seqno);
    if newest.is_none() {
        if let Some(e) = errors.into_iter().next() {
            return Err(e);
        }
    }
    for d in &damaged {
        tracing::warn!(pv = %label.uuid, problem = %d, "skipping a damaged LVM metadata copy");
    }
    Ok(Some(PhysicalVolume {
        label,
        metadata: newest,
        damaged,
    }))
}

/// Reads one metadata area's committed text. `Ok(None)` when the area holds none (a PV
/// not in a VG) or is marked ignored.
fn read_area(disk: &Disk<'_>, area: Area) -> Result<Option<Metadata>, DiskError> {
    let fail = |detail: String| DiskError::ReadingLvmMetadataArea {
        offset: area.offset,
        detail,
    };
    if area
        .offset
        .checked_add(area.size)
        .is_none_or(|end| end > disk.len)
    {
        return Err(fail(format!(
            "the area ({} bytes) is beyond the end of the device ({} bytes)",
            area.size, disk.len
        )));
    }
    if area.size < MDA_HEADER_SIZE {
        return Err(fail(format!("the area is only {} bytes", area.size)));
    }
    let mut buf = [0u8; MDA_HEADER_SIZE as usize];
    disk.read(&mut buf, area.offset, "an LVM metadata area header")?;
    let header = parse_mda_header(&buf, area).map_err(fail)?;
    let Some(loc) = header.locations.first() else {
        return Ok(None);
    };
    if loc.flags & RAW_LOCN_IGNORED != 0 {
        return Ok(None);
    }
    let text_fail = |detail: String| DiskError::ReadingLvmMetadata {
        area: area.offset,
        detail,
    };
    let runs = text_runs(&header, loc).map_err(text_fail)?;
    // Bounded by `text_runs` (at most MAX_TEXT + 1 bytes, inside the area).
    let mut bytes = vec![0u8; loc.size as usize];
    let mut filled = 0usize;
    for &(at, len) in &runs {
        let len = len as usize;
        disk.read(
            &mut bytes[filled..filled + len],
            at,
            "the LVM metadata text",
        )?;
        filled += len;
    }
    let text = check_text(&bytes, loc).map_err(text_fail)?;
    let vg = lvm_text::parse(&text)?;
    Ok(Some(Metadata {
        text,
        vg,
        area: area.offset,
        wrapped: runs.len() > 1,
    }))
}

// ---- from PVs to logical volumes ----

/// One run of an LV, mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedSegment {
    /// Byte offset in the LV.
    pub lv_offset: u64,
    pub len: u64,
    /// The device holding it (its name as given, e.g. `/dev/sda2`).
    pub pv_device: String,
    /// Byte offset on that device.
    pub pv_offset: u64,
}

pub struct LogicalVolume {
    pub vg: String,
    pub lv: String,
    pub uuid: String,
    /// Whether guestfish's `lvs` lists it (LVM's "public" role: visible, not a pool, not
    /// skipped at activation).
    pub public: bool,
    /// The LV as a device, or why strata will not give one.
    pub device: Result<SharedDevice, String>,
    /// Its runs on the PVs, when `device` is one.
    pub segments: Vec<MappedSegment>,
}

impl LogicalVolume {
    /// `/dev/VG/LV`, as guestfish names it.
    pub fn path(&self) -> String {
        format!("/dev/{}/{}", self.vg, self.lv)
    }
}

impl std::fmt::Debug for LogicalVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogicalVolume")
            .field("vg", &self.vg)
            .field("lv", &self.lv)
            .field("public", &self.public)
            .field(
                "device",
                &self.device.as_ref().map(|d| (d.describe(), d.len())),
            )
            .field("segments", &self.segments)
            .finish()
    }
}

#[derive(Debug)]
pub struct VolumeGroup {
    pub name: String,
    pub uuid: String,
    pub seqno: u64,
    pub extent_size: u64,
    /// Visible LVs, sorted by name (hidden ones are internal parts of other LVs).
    pub lvs: Vec<LogicalVolume>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvDevice {
    /// The name given for the device (`/dev/sda2`).
    pub name: String,
    pub uuid: String,
    /// The VG it belongs to, when its metadata was found.
    pub vg: Option<String>,
}

/// Everything LVM-related on a set of devices.
#[derive(Debug, Default)]
pub struct Scan {
    /// Devices that hold a PV label, sorted by name.
    pub pvs: Vec<PvDevice>,
    /// Sorted by name.
    pub vgs: Vec<VolumeGroup>,
    /// Devices or VGs that could not be read, each saying why (also logged).
    pub problems: Vec<String>,
}

impl Scan {
    /// What guestfish's `vgs` prints: the VG names.
    pub fn vg_names(&self) -> Vec<String> {
        self.vgs.iter().map(|v| v.name.clone()).collect()
    }

    /// What guestfish's `lvs` prints: `/dev/VG/LV` of every public LV.
    pub fn lv_paths(&self) -> Vec<String> {
        self.logical_volumes_ref()
            .filter(|l| l.public)
            .map(|l| l.path())
            .collect()
    }

    /// What guestfish's `pvs` prints: the devices holding PVs.
    pub fn pv_names(&self) -> Vec<String> {
        self.pvs.iter().map(|p| p.name.clone()).collect()
    }

    fn logical_volumes_ref(&self) -> impl Iterator<Item = &LogicalVolume> {
        self.vgs.iter().flat_map(|v| &v.lvs)
    }

    /// The LV at `/dev/VG/LV`.
    pub fn find(&self, path: &str) -> Option<&LogicalVolume> {
        self.logical_volumes_ref().find(|l| l.path() == path)
    }

    pub fn into_logical_volumes(self) -> Vec<LogicalVolume> {
        self.vgs.into_iter().flat_map(|v| v.lvs).collect()
    }
}

/// The visible LVs on `devices` (name as guestfish gives it, device), each a device or a
/// refusal. Devices without a PV label are ignored.
pub fn logical_volumes(devices: &[(String, SharedDevice)]) -> Vec<LogicalVolume> {
    scan(devices).into_logical_volumes()
}

/// Where a PV UUID was found.
enum Holder {
    One(String, SharedDevice),
    Several(Vec<String>),
}

/// Reads every device's PV, groups the PVs by VG (the copy with the highest seqno wins
/// when PVs disagree), and maps every visible LV.
pub fn scan(devices: &[(String, SharedDevice)]) -> Scan {
    let mut out = Scan::default();
    let mut holders: HashMap<String, Holder> = HashMap::new();
    // VG UUID -> (newest metadata, the device it came from)
    let mut groups: HashMap<String, (VolumeGroupMeta, String)> = HashMap::new();
    let problem = |out: &mut Scan, p: String| {
        tracing::warn!(problem = %p, "LVM");
        out.problems.push(p);
    };
    for (name, dev) in devices {
        let (label, meta) = match read_pv(dev.as_ref()) {
            Ok(None) => continue,
            Ok(Some(pv)) => {
                for d in &pv.damaged {
                    problem(&mut out, format!("{name}: {d}"));
                }
                (pv.label, pv.metadata)
            }
            Err(e) => {
                problem(&mut out, format!("{name}: {e}"));
                // Its extents may still be described by another PV's metadata.
                match read_label(dev.as_ref()) {
                    Ok(Some(label)) => (label, None),
                    _ => continue,
                }
            }
        };
        let key = undashed(&label.uuid);
        match holders.get_mut(&key) {
            None => {
                holders.insert(key, Holder::One(name.clone(), dev.clone()));
            }
            Some(h) => {
                let mut names = match h {
                    Holder::One(n, _) => vec![n.clone()],
                    Holder::Several(v) => std::mem::take(v),
                };
                names.push(name.clone());
                *h = Holder::Several(names);
            }
        }
        out.pvs.push(PvDevice {
            name: name.clone(),
            uuid: label.uuid,
            vg: None,
        });
        if let Some(m) = meta {
            match groups.get(&m.vg.id) {
                Some((have, _)) if have.seqno >= m.vg.seqno => {}
                _ => {
                    groups.insert(m.vg.id.clone(), (m.vg, name.clone()));
                }
            }
        }
    }
    let mut vgs: Vec<(VolumeGroupMeta, String)> = groups.into_values().collect();
    vgs.sort_by(|a, b| (&a.0.name, &a.0.id).cmp(&(&b.0.name, &b.0.id)));
    for (vg, from) in &vgs {
        if let Err(e) = check_name(&vg.name) {
            problem(
                &mut out,
                format!(
                    "volume group {:?} (metadata from {from}): {e}; ignored",
                    vg.name
                ),
            );
            continue;
        }
        let twin = vgs
            .iter()
            .find(|(other, _)| other.name == vg.name && other.id != vg.id);
        for pv in &mut out.pvs {
            if vg.pvs.iter().any(|p| undashed(&p.id) == undashed(&pv.uuid)) {
                pv.vg = Some(vg.name.clone());
            }
        }
        let mut lvs = Vec::new();
        let roles = snapshot_roles(vg);
        let cows = snapshot_cows(vg);
        for lv in vg.lvs.iter().filter(|l| shown(l, &cows)) {
            if let Err(e) = check_name(&lv.name) {
                problem(
                    &mut out,
                    format!("LV {:?} of volume group {}: {e}; ignored", lv.name, vg.name),
                );
                continue;
            }
            let mapped = match (twin, roles.get(lv.name.as_str())) {
                (Some((other, _)), _) => Err(format!(
                    "two volume groups are named {} (UUIDs {} and {}); LVM cannot tell \
                     them apart either: rename one (vgrename by UUID)",
                    vg.name, vg.id, other.id
                )),
                (None, Some(role)) => Err(role.clone()),
                (None, None) => map_lv(vg, lv, &holders),
            };
            let (device, segments) = match mapped {
                Ok((d, s)) => (Ok(d), s),
                Err(e) => (Err(e), Vec::new()),
            };
            lvs.push(LogicalVolume {
                vg: vg.name.clone(),
                lv: lv.name.clone(),
                uuid: lv.id.clone(),
                public: is_public(lv) || cows.contains(lv.name.as_str()),
                device,
                segments,
            });
        }
        lvs.sort_by(|a, b| a.lv.cmp(&b.lv));
        out.vgs.push(VolumeGroup {
            name: vg.name.clone(),
            uuid: vg.id.clone(),
            seqno: vg.seqno,
            extent_size: vg.extent_size,
            lvs,
        });
    }
    out.pvs.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// LVM's rule for VG and LV names; they become paths, so nothing else is accepted.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 127
        && !name.starts_with('-')
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+_.-".contains(&c));
    if ok {
        Ok(())
    } else {
        Err("the name is not one LVM allows (letters, digits, + _ . -)".into())
    }
}

/// LVs a snapshot depends on, with the refusal for each: both look linear, but writing
/// the origin directly skips the copy-on-write, and the COW store holds chunks, not a
/// filesystem.
fn snapshot_roles(vg: &VolumeGroupMeta) -> HashMap<&str, String> {
    let mut roles = HashMap::new();
    for lv in &vg.lvs {
        for s in &lv.segments {
            if let SegmentKind::Snapshot { origin, cow_store } = &s.kind {
                roles.insert(
                    origin.as_str(),
                    format!(
                        "unsupported: it is the origin of snapshot {cow_store}, and writing \
                         it directly would bypass the snapshot's copy-on-write"
                    ),
                );
                roles.insert(
                    cow_store.as_str(),
                    format!(
                        "unsupported segment type snapshot: it is a snapshot of {origin}, \
                         whose extents hold copy-on-write chunks, not the volume's data"
                    ),
                );
            }
        }
    }
    roles
}

/// The COW stores of the VG's snapshots. LVM writes them without VISIBLE (their
/// visibility is the snapshot's) yet shows each as the snapshot, under its own name.
fn snapshot_cows(vg: &VolumeGroupMeta) -> std::collections::HashSet<&str> {
    vg.lvs
        .iter()
        .flat_map(|l| &l.segments)
        .filter_map(|s| match &s.kind {
            SegmentKind::Snapshot { cow_store, .. } => Some(cow_store.as_str()),
            _ => None,
        })
        .collect()
}

/// Whether LVM shows the LV as `/dev/VG/LV`: visible ones, and snapshots' COW stores; the
/// internal `snapshotN` LV never, whatever its flags.
fn shown(lv: &LvMeta, cows: &std::collections::HashSet<&str>) -> bool {
    let internal = lv
        .segments
        .iter()
        .any(|s| matches!(s.kind, SegmentKind::Snapshot { .. }));
    !internal && (lv.is_visible() || cows.contains(lv.name.as_str()))
}

/// LVM's public role, which guestfish's `lvs` selects (`lv_role=public &&
/// lv_skip_activation!=yes`): pools are visible but private.
fn is_public(lv: &LvMeta) -> bool {
    let pool = lv.segments.iter().any(|s| {
        matches!(&s.kind, SegmentKind::Unsupported { type_name, .. }
            if matches!(type_name.as_str(), "thin-pool" | "cache-pool" | "vdo-pool"))
    });
    lv.is_visible() && !pool && !lv.has_flag("ACTIVATION_SKIP")
}

fn map_lv(
    vg: &VolumeGroupMeta,
    lv: &LvMeta,
    holders: &HashMap<String, Holder>,
) -> Result<(SharedDevice, Vec<MappedSegment>), String> {
    let mut runs = Vec::with_capacity(lv.segments.len());
    let mut mapped = Vec::with_capacity(lv.segments.len());
    let mut lv_offset = 0u64;
    for seg in &lv.segments {
        let SegmentKind::Linear { area, area_start } = &seg.kind else {
            return Err(seg.kind.describe());
        };
        let Some(pv) = vg.pvs.iter().find(|p| &p.name == area) else {
            if vg.lvs.iter().any(|l| &l.name == area) {
                return Err(format!(
                    "extents {}.. lie on LV {area}, not on a PV (a pvmove in progress?); \
                     unsupported",
                    seg.start_extent
                ));
            }
            return Err(format!(
                "the metadata maps extents {}.. onto {area:?}, which is neither a PV nor \
                 an LV of the volume group",
                seg.start_extent
            ));
        };
        if pv.flags.iter().any(|f| f == "MISSING") {
            return Err(format!(
                "PV {} is marked missing in the volume group's metadata",
                pv.id
            ));
        }
        let (name, dev) = match holders.get(&undashed(&pv.id)) {
            None => {
                return Err(format!(
                    "PV {} (last seen as {}) is missing: none of the devices holds it",
                    pv.id,
                    pv.device_hint.as_deref().unwrap_or("an unknown device")
                ))
            }
            Some(Holder::Several(names)) => {
                return Err(format!(
                    "PV {} is on several devices ({}); cannot tell which is current",
                    pv.id,
                    names.join(", ")
                ))
            }
            Some(Holder::One(name, dev)) => (name, dev),
        };
        let end_extent = area_start.saturating_add(seg.extent_count);
        if end_extent > pv.pe_count {
            return Err(format!(
                "extents {area_start}..{end_extent} of PV {} are beyond its {} extents",
                pv.id, pv.pe_count
            ));
        }
        let bytes = |extents: u64| extents.checked_mul(vg.extent_size);
        let at = bytes(*area_start).and_then(|b| b.checked_add(pv.pe_start));
        let len = bytes(seg.extent_count);
        let (Some(at), Some(len)) = (at, len) else {
            return Err(format!(
                "extents {area_start}..{end_extent} of PV {} overflow a byte offset",
                pv.id
            ));
        };
        if at.checked_add(len).is_none_or(|end| end > dev.len()) {
            return Err(format!(
                "bytes {at}..{} of PV {} are beyond the end of {name} ({} bytes; was the \
                 disk truncated?)",
                at.saturating_add(len),
                pv.id,
                dev.len()
            ));
        }
        runs.push((dev.clone(), at, len));
        mapped.push(MappedSegment {
            lv_offset,
            len,
            pv_device: name.clone(),
            pv_offset: at,
        });
        lv_offset = lv_offset.saturating_add(len);
    }
    if runs.is_empty() {
        return Err("the LV has no segments".into());
    }
    let label = format!("logical volume /dev/{}/{}", vg.name, lv.name);
    let w = Window::spans(runs, label).map_err(|e| e.to_string())?;
    if !lv.has_flag("WRITE") {
        // `lvchange -pr`: LVM activates it read-only, so guestfish cannot write it either.
        return Ok((Arc::new(ReadOnly(w)), mapped));
    }
    Ok((Arc::new(w), mapped))
}

/// An LV whose metadata lacks WRITE: reads pass through, writes are refused.
struct ReadOnly(Window);

impl BlockDevice for ReadOnly {
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> crate::store::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, _: &[u8], _: u64) -> crate::store::Result<()> {
        Err(self.refusal())
    }
    fn discard(&self, _: u64, _: u64) -> crate::store::Result<()> {
        Err(self.refusal())
    }
    fn flush(&self) -> crate::store::Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
}

impl ReadOnly {
    fn refusal(&self) -> crate::store::StoreError {
        crate::store::StoreError::ReadOnly {
            what: format!(
                "{} (its LVM metadata marks it read-only; lvchange -prw makes it writable)",
                self.0.describe()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::lvm_text::tests::SAMPLE;
    use crate::store::device::MemDevice;

    const UUID: &str = "2hxszJHRNfdNIf6wUf69VjSE53Rdtdbb";

    /// Seals a label sector (CRC of bytes 20..512).
    fn seal_label(s: &mut [u8]) {
        let crc = lvm_crc(&s[20..512]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    fn seal_mda(h: &mut [u8]) {
        let crc = lvm_crc(&h[4..512]);
        h[0..4].copy_from_slice(&crc.to_le_bytes());
    }

    /// A label sector numbered `number` for a PV with the given areas.
    fn label(number: u64, uuid: &str, size: u64, data: &[Area], mdas: &[Area]) -> [u8; 512] {
        let mut s = [0u8; 512];
        s[..8].copy_from_slice(LABEL_ID);
        s[8..16].copy_from_slice(&number.to_le_bytes());
        s[20..24].copy_from_slice(&32u32.to_le_bytes());
        s[24..32].copy_from_slice(LABEL_TYPE);
        s[32..64].copy_from_slice(uuid.as_bytes());
        s[64..72].copy_from_slice(&size.to_le_bytes());
        let mut pos = 72;
        for list in [data, mdas] {
            for a in list {
                s[pos..pos + 8].copy_from_slice(&a.offset.to_le_bytes());
                s[pos + 8..pos + 16].copy_from_slice(&a.size.to_le_bytes());
                pos += 16;
            }
            pos += 16;
        }
        seal_label(&mut s);
        s
    }

    /// Writes a metadata area at `area` holding `text` at `text_offset` (relative to the
    /// area, wrapping as LVM does).
    fn put_mda(d: &mut [u8], area: Area, text: &str, text_offset: u64) {
        let mut t = text.as_bytes().to_vec();
        t.push(0);
        let mut h = [0u8; 512];
        h[4..20].copy_from_slice(MDA_MAGIC);
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[24..32].copy_from_slice(&area.offset.to_le_bytes());
        h[32..40].copy_from_slice(&area.size.to_le_bytes());
        h[40..48].copy_from_slice(&text_offset.to_le_bytes());
        h[48..56].copy_from_slice(&(t.len() as u64).to_le_bytes());
        h[56..60].copy_from_slice(&lvm_crc(&t).to_le_bytes());
        seal_mda(&mut h);
        let a = area.offset as usize;
        d[a..a + 512].copy_from_slice(&h);
        for (i, b) in t.iter().enumerate() {
            let mut rel = text_offset + i as u64;
            if rel >= area.size {
                rel = rel - area.size + MDA_HEADER_SIZE;
            }
            d[a + rel as usize] = *b;
        }
    }

    const MDA: Area = Area {
        offset: 4096,
        size: 1 << 16,
    };

    /// A 2 MiB PV (label in sector 1, one metadata area at 4 KiB) holding `text`.
    fn pv_image(uuid: &str, text: &str, text_offset: u64) -> Vec<u8> {
        let mut d = vec![0u8; 2 << 20];
        let data = Area {
            offset: 1 << 20,
            size: 0,
        };
        let len = d.len() as u64;
        d[512..1024].copy_from_slice(&label(1, uuid, len, &[data], &[MDA]));
        put_mda(&mut d, MDA, text, text_offset);
        d
    }

    fn read(d: Vec<u8>) -> Result<Option<PhysicalVolume>, DiskError> {
        read_pv(&MemDevice::read_only(d))
    }

    #[test]
    fn lvm_crc_matches_a_value_lvm_wrote() {
        // The label sector pvcreate wrote in the integration fixture; stored CRC e15d6758.
        let mut s = label(
            1,
            UUID,
            0x1e84_8000,
            &[Area {
                offset: 1 << 20,
                size: 0,
            }],
            &[Area {
                offset: 4096,
                size: 0xff000,
            }],
        );
        // pvcreate also writes the PV header extension: version 2, flags 1.
        s[136..140].copy_from_slice(&2u32.to_le_bytes());
        s[140..144].copy_from_slice(&1u32.to_le_bytes());
        seal_label(&mut s);
        assert_eq!(le32(&s, 16), 0xe15d_6758);
    }

    #[test]
    fn a_pv_gives_its_uuid_areas_and_metadata() {
        let pv = read(pv_image(UUID, SAMPLE, 1024)).unwrap().unwrap();
        assert_eq!(pv.label.sector, 1);
        assert_eq!(pv.label.uuid, "2hxszJ-HRNf-dNIf-6wUf-69Vj-SE53-Rdtdbb");
        assert_eq!(pv.label.device_size, 2 << 20);
        assert_eq!(
            pv.label.data_areas,
            [Area {
                offset: 1 << 20,
                size: 0
            }]
        );
        assert_eq!(pv.label.metadata_areas, [MDA]);
        let m = pv.metadata.unwrap();
        assert_eq!(m.text, SAMPLE);
        assert_eq!(m.vg.name, "vg0");
        assert!(!m.wrapped);
        assert!(pv.damaged.is_empty());
    }

    #[test]
    fn no_label_is_not_a_pv() {
        assert!(read(vec![0u8; 1 << 20]).unwrap().is_none());
        assert!(read(vec![0u8; 100]).unwrap().is_none());
        // A label in sector 4 is beyond where LVM looks.
        let mut d = vec![0u8; 1 << 20];
        d[2048..2560].copy_from_slice(&label(4, UUID, 1 << 20, &[], &[]));
        assert!(read(d).unwrap().is_none());
    }

    #[test]
    fn label_in_sector_zero_or_three_is_found() {
        for n in [0u64, 3] {
            let mut d = vec![0u8; 1 << 20];
            let at = (n * 512) as usize;
            d[at..at + 512].copy_from_slice(&label(n, UUID, 1 << 20, &[], &[]));
            let pv = read(d).unwrap().unwrap();
            assert_eq!(pv.label.sector, n);
            assert!(pv.metadata.is_none(), "no metadata areas");
        }
    }

    #[test]
    fn damaged_labels_are_refused_saying_which_check_failed() {
        let good = label(1, UUID, 1 << 20, &[], &[MDA]);
        type Edit = Box<dyn Fn(&mut [u8; 512])>;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(|s| s[100] ^= 1), "label checksum mismatch"),
            (
                Box::new(|s| {
                    s[8] = 2;
                    seal_label(s)
                }),
                "found in sector 1",
            ),
            (
                Box::new(|s| {
                    s[24..32].copy_from_slice(b"LVM1 001");
                    seal_label(s)
                }),
                "not \"LVM2 001\"",
            ),
            (
                Box::new(|s| {
                    s[20..24].copy_from_slice(&500u32.to_le_bytes());
                    seal_label(s)
                }),
                "does not leave room",
            ),
            (
                Box::new(|s| {
                    s[40] = b' ';
                    seal_label(s)
                }),
                "characters LVM never writes",
            ),
            (
                Box::new(|s| {
                    // Fill every list slot: no terminator before the sector ends.
                    for p in (72..512).step_by(8) {
                        s[p..p + 8].copy_from_slice(&7u64.to_le_bytes());
                    }
                    seal_label(s)
                }),
                "runs past the end of the label sector",
            ),
        ];
        for (edit, want) in cases {
            let mut s = good;
            edit(&mut s);
            let mut d = vec![0u8; 1 << 20];
            d[512..1024].copy_from_slice(&s);
            let e = read(d).unwrap_err();
            assert!(
                matches!(e, DiskError::ReadingLvmLabel { sector: 1, .. }),
                "{e}"
            );
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn damaged_metadata_area_headers_are_refused() {
        let cases: Vec<(usize, Vec<u8>, &str)> = vec![
            (4, b"x".to_vec(), "magic"),
            (20, 2u32.to_le_bytes().to_vec(), "format version 2"),
            (24, 8192u64.to_le_bytes().to_vec(), "found at byte 4096"),
            (32, (1u64 << 40).to_le_bytes().to_vec(), "area size"),
        ];
        for (at, bytes, want) in cases {
            let mut d = pv_image(UUID, SAMPLE, 1024);
            let h = MDA.offset as usize;
            d[h + at..h + at + bytes.len()].copy_from_slice(&bytes);
            seal_mda(&mut d[h..h + 512]);
            let e = read(d).unwrap_err();
            assert!(
                matches!(e, DiskError::ReadingLvmMetadataArea { offset: 4096, .. }),
                "{e}"
            );
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        let mut d = pv_image(UUID, SAMPLE, 1024);
        d[4096 + 30] ^= 1;
        let e = read(d).unwrap_err().to_string();
        assert!(e.contains("header checksum mismatch"), "{e}");
    }

    #[test]
    fn text_checksum_is_checked() {
        let mut d = pv_image(UUID, SAMPLE, 1024);
        d[4096 + 1024 + 10] ^= 1;
        let e = read(d).unwrap_err();
        assert!(
            matches!(e, DiskError::ReadingLvmMetadata { area: 4096, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("text checksum mismatch"), "{e}");
    }

    #[test]
    fn text_that_wraps_around_the_circular_buffer_is_joined() {
        // Start 1000 bytes before the end of the area: the rest continues after the header.
        let start = MDA.size - 1000;
        let d = pv_image(UUID, SAMPLE, start);
        assert_ne!(d[4096 + 512], 0, "the text really wrapped");
        let m = read(d).unwrap().unwrap().metadata.unwrap();
        assert!(m.wrapped);
        assert_eq!(m.text, SAMPLE);
    }

    #[test]
    fn text_locations_outside_the_buffer_are_refused() {
        let h = MdaHeader {
            start: 4096,
            size: 1 << 16,
            locations: vec![],
        };
        let loc = |offset, size| RawLocation {
            offset,
            size,
            checksum: 0,
            flags: 0,
        };
        assert!(text_runs(&h, &loc(100, 10))
            .unwrap_err()
            .contains("outside"));
        assert!(text_runs(&h, &loc(1 << 16, 10))
            .unwrap_err()
            .contains("outside"));
        assert!(text_runs(&h, &loc(512, 0)).unwrap_err().contains("fit"));
        assert!(text_runs(&h, &loc(512, u64::MAX))
            .unwrap_err()
            .contains("fit"));
        assert!(text_runs(&h, &loc(512, (1 << 16) - 511))
            .unwrap_err()
            .contains("fit"));
        // Exactly the whole buffer, starting mid-way: two runs that meet, never overlap.
        let runs = text_runs(&h, &loc(1000, (1 << 16) - 512)).unwrap();
        assert_eq!(
            runs,
            vec![(4096 + 1000, (1 << 16) - 1000), (4096 + 512, 1000 - 512)]
        );
        let huge = MdaHeader {
            start: 4096,
            size: 1 << 40,
            locations: vec![],
        };
        assert!(text_runs(&huge, &loc(512, 1 << 30))
            .unwrap_err()
            .contains("limit"));
    }

    #[test]
    fn metadata_area_beyond_the_device_is_refused() {
        let mut d = vec![0u8; 1 << 20];
        let far = Area {
            offset: 4096,
            size: 1 << 30,
        };
        d[512..1024].copy_from_slice(&label(1, UUID, 1 << 30, &[], &[far]));
        let e = read(d).unwrap_err().to_string();
        assert!(e.contains("beyond the end of the device"), "{e}");
    }

    #[test]
    fn empty_or_ignored_areas_hold_no_metadata() {
        let mut d = pv_image(UUID, SAMPLE, 1024);
        let h = MDA.offset as usize;
        d[h + 40..h + 64].fill(0);
        seal_mda(&mut d[h..h + 512]);
        assert!(read(d).unwrap().unwrap().metadata.is_none());
        let mut d = pv_image(UUID, SAMPLE, 1024);
        d[h + 60..h + 64].copy_from_slice(&RAW_LOCN_IGNORED.to_le_bytes());
        seal_mda(&mut d[h..h + 512]);
        assert!(read(d).unwrap().unwrap().metadata.is_none());
    }

    /// A PV with two metadata areas (start and end), holding the two texts.
    fn two_mda_pv(first: &str, second: &str) -> Vec<u8> {
        let mut d = vec![0u8; 2 << 20];
        let end = Area {
            offset: (2 << 20) - (1 << 16),
            size: 1 << 16,
        };
        d[512..1024].copy_from_slice(&label(1, UUID, 2 << 20, &[], &[MDA, end]));
        put_mda(&mut d, MDA, first, 512);
        put_mda(&mut d, end, second, 512);
        d
    }

    #[test]
    fn the_newest_of_several_copies_wins_and_a_damaged_copy_is_skipped() {
        let newer = SAMPLE.replace("seqno = 8", "seqno = 9");
        for (a, b) in [(SAMPLE, newer.as_str()), (newer.as_str(), SAMPLE)] {
            let pv = read(two_mda_pv(a, b)).unwrap().unwrap();
            assert_eq!(pv.metadata.unwrap().vg.seqno, 9);
        }
        let mut d = two_mda_pv(&newer, SAMPLE);
        d[4096 + 600] ^= 1;
        let pv = read(d).unwrap().unwrap();
        assert_eq!(pv.metadata.unwrap().vg.seqno, 8, "the sound copy");
        assert_eq!(pv.damaged.len(), 1);
        assert!(pv.damaged[0].contains("text checksum"), "{:?}", pv.damaged);
        // Both damaged: the error of the first.
        let mut d = two_mda_pv(&newer, SAMPLE);
        d[4096 + 600] ^= 1;
        d[(2 << 20) - (1 << 16) + 600] ^= 1;
        assert!(read(d).is_err());
    }

    #[test]
    fn any_flipped_byte_of_label_header_or_text_is_caught() {
        let good = pv_image(UUID, SAMPLE, 1024);
        let text_end = 4096 + 1024 + SAMPLE.len() + 1;
        let covered = (512..1024)
            .chain(4096..4096 + 512)
            .chain(4096 + 1024..text_end);
        for at in covered {
            let mut d = good.clone();
            d[at] ^= 0x10;
            match read(d) {
                Err(_) | Ok(None) => {}
                Ok(Some(pv)) => panic!(
                    "byte {at} flipped was accepted: {:?}",
                    pv.metadata.map(|m| m.vg.name)
                ),
            }
        }
    }

    #[test]
    fn garbage_labels_and_headers_never_panic() {
        let mut seed = 0xdead_beefu32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            seed
        };
        for _ in 0..2000 {
            let mut s = [0u8; 512];
            s.iter_mut().for_each(|b| *b = (rnd() >> 24) as u8);
            s[..8].copy_from_slice(LABEL_ID);
            s[8..16].copy_from_slice(&1u64.to_le_bytes());
            s[24..32].copy_from_slice(LABEL_TYPE);
            s[20..24].copy_from_slice(&(rnd() % 600).to_le_bytes());
            seal_label(&mut s);
            let _ = parse_label(&s, 1);
            let mut h = [0u8; 512];
            h.iter_mut().for_each(|b| *b = (rnd() >> 24) as u8);
            h[4..20].copy_from_slice(MDA_MAGIC);
            h[20..24].copy_from_slice(&1u32.to_le_bytes());
            h[24..32].copy_from_slice(&4096u64.to_le_bytes());
            seal_mda(&mut h);
            let area = Area {
                offset: 4096,
                size: u64::MAX,
            };
            if let Ok(m) = parse_mda_header(&h, area) {
                for l in &m.locations {
                    let _ = text_runs(&m, l);
                }
            }
        }
    }

    // ---- scan ----

    const UUID2: &str = "Q7bXc1Nq0hJ3kL5mP9rS2tV4wY6zA8dE";

    /// VG "vg0" on two PVs (pv0 = UUID, pv1 = UUID2), 1 MiB extents, pe_start 1 MiB:
    /// `root` = 2 extents of pv0 at 0 then 1 of pv1 at 3, `home` on pv0 at 5..7, a
    /// thin pool and thin LV, a hidden LV, and a snapshot `snap` of `home` written as LVM
    /// writes one (the COW store without VISIBLE, the internal `snapshot0` with it).
    fn two_pv_text(seqno: u64) -> String {
        format!(
            r#"vg0 {{
id = "aaaaaa-bbbb-cccc-dddd-eeee-ffff-gggggg"
seqno = {seqno}
extent_size = 2048
physical_volumes {{
pv0 {{ id = "{}" device = "/dev/sda2" pe_start = 2048 pe_count = 8 }}
pv1 {{ id = "{}" device = "/dev/sdb1" pe_start = 2048 pe_count = 4 }}
}}
logical_volumes {{
root {{ id = "r" status = ["READ", "WRITE", "VISIBLE"] segment_count = 2
segment1 {{ start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 0] }}
segment2 {{ start_extent = 2 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv1", 3] }}
}}
home {{ id = "h" status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
segment1 {{ start_extent = 0 extent_count = 2 type = "striped" stripe_count = 1 stripes = ["pv0", 5] }}
}}
snap {{ id = "s" status = ["READ", "WRITE"] segment_count = 1
segment1 {{ start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv0", 7] }}
}}
snapshot0 {{ id = "s0" status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
segment1 {{ start_extent = 0 extent_count = 2 type = "snapshot" origin = "home" cow_store = "snap" }}
}}
pool {{ id = "p" status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
segment1 {{ start_extent = 0 extent_count = 1 type = "thin-pool" }}
}}
thin {{ id = "t" status = ["READ", "WRITE", "VISIBLE"] segment_count = 1
segment1 {{ start_extent = 0 extent_count = 4 type = "thin" }}
}}
pool_tdata {{ id = "pd" status = ["READ", "WRITE"] segment_count = 1
segment1 {{ start_extent = 0 extent_count = 1 type = "striped" stripe_count = 1 stripes = ["pv1", 0] }}
}}
}}
}}
"#,
            dashed(UUID),
            dashed(UUID2)
        )
    }

    /// A PV device whose extent `e` (1 MiB at 1 MiB + e MiB) is filled with `tag + e`.
    fn pv_dev(uuid: &str, text: &str, extents: u64) -> SharedDevice {
        let mut d = pv_image(uuid, text, 512);
        d.resize(((1 + extents) << 20) as usize, 0);
        for e in 0..extents {
            let at = ((1 + e) << 20) as usize;
            let tag = if uuid == UUID { 0 } else { 100 };
            d[at..at + (1 << 20)].fill(tag + e as u8);
        }
        Arc::new(MemDevice::new(d))
    }

    fn lv<'a>(s: &'a Scan, path: &str) -> &'a LogicalVolume {
        s.find(path)
            .unwrap_or_else(|| panic!("{path} not in {:?}", s.lv_paths()))
    }

    fn refusal(s: &Scan, path: &str) -> String {
        match &lv(s, path).device {
            Ok(_) => panic!("{path} was mapped"),
            Err(e) => e.clone(),
        }
    }

    /// The first byte of each MiB of the device.
    fn extent_tags(d: &SharedDevice) -> Vec<u8> {
        (0..d.len() >> 20)
            .map(|i| {
                let mut b = [0u8; 1];
                d.read_at(&mut b, i << 20).unwrap();
                b[0]
            })
            .collect()
    }

    #[test]
    fn linear_lvs_map_across_segments_and_pvs() {
        let t = two_pv_text(5);
        let devs = vec![
            ("/dev/sda2".to_string(), pv_dev(UUID, &t, 8)),
            ("/dev/sdb1".to_string(), pv_dev(UUID2, &t, 4)),
        ];
        let s = scan(&devs);
        assert!(s.problems.is_empty(), "{:?}", s.problems);
        assert_eq!(s.vg_names(), ["vg0"]);
        assert_eq!(s.pv_names(), ["/dev/sda2", "/dev/sdb1"]);
        assert_eq!(
            s.lv_paths(),
            [
                "/dev/vg0/home",
                "/dev/vg0/root",
                "/dev/vg0/snap",
                "/dev/vg0/thin"
            ],
            "hidden LVs and the pool are not listed"
        );
        let root = lv(&s, "/dev/vg0/root");
        let d = root.device.as_ref().unwrap();
        assert_eq!(d.len(), 3 << 20);
        assert_eq!(extent_tags(d), [0, 1, 103]);
        assert_eq!(
            root.segments[1],
            MappedSegment {
                lv_offset: 2 << 20,
                len: 1 << 20,
                pv_device: "/dev/sdb1".into(),
                pv_offset: 4 << 20
            }
        );
        // Writes land on the right PV, at the right place.
        d.write_at(&[0xAB; 2], (3 << 20) - 1).unwrap_err();
        d.write_at(&[0xAB; 2], (2 << 20) - 1).unwrap();
        let mut b = [0u8; 1];
        devs[1].1.read_at(&mut b, 4 << 20).unwrap();
        assert_eq!(b[0], 0xAB);
        devs[0].1.read_at(&mut b, (3 << 20) - 1).unwrap();
        assert_eq!(b[0], 0xAB);
        assert_eq!(d.describe(), "logical volume /dev/vg0/root");
    }

    #[test]
    fn unsupported_lvs_are_refused_by_name() {
        let t = two_pv_text(5);
        let devs = vec![
            ("/dev/sda2".to_string(), pv_dev(UUID, &t, 8)),
            ("/dev/sdb1".to_string(), pv_dev(UUID2, &t, 4)),
        ];
        let s = scan(&devs);
        assert_eq!(
            refusal(&s, "/dev/vg0/thin"),
            "unsupported segment type thin"
        );
        assert_eq!(
            refusal(&s, "/dev/vg0/pool"),
            "unsupported segment type thin-pool"
        );
        assert!(!lv(&s, "/dev/vg0/pool").public);
        let e = refusal(&s, "/dev/vg0/snap");
        assert!(e.contains("unsupported segment type snapshot"), "{e}");
        let e = refusal(&s, "/dev/vg0/home");
        assert!(e.contains("origin of snapshot snap"), "{e}");
        assert!(s.find("/dev/vg0/pool_tdata").is_none());
        assert!(s.find("/dev/vg0/snapshot0").is_none());
    }

    #[test]
    fn a_missing_pv_refuses_only_the_lvs_on_it_naming_its_uuid() {
        let t = two_pv_text(5);
        let s = scan(&[("/dev/sda2".to_string(), pv_dev(UUID, &t, 8))]);
        let e = refusal(&s, "/dev/vg0/root");
        assert!(
            e.contains(&dashed(UUID2)) && e.contains("missing") && e.contains("/dev/sdb1"),
            "{e}"
        );
        // home's snapshot role still refuses it; a VG without it maps fine:
        let t2 = t.replace("type = \"snapshot\"", "type = \"error\"");
        let s = scan(&[("/dev/sda2".to_string(), pv_dev(UUID, &t2, 8))]);
        assert_eq!(
            extent_tags(lv(&s, "/dev/vg0/home").device.as_ref().unwrap()),
            [5, 6]
        );
    }

    #[test]
    fn the_highest_seqno_wins_when_pvs_disagree() {
        let old = two_pv_text(5);
        let new = two_pv_text(6).replace("stripes = [\"pv1\", 3]", "stripes = [\"pv1\", 2]");
        for (a, b) in [(&old, &new), (&new, &old)] {
            let s = scan(&[
                ("/dev/sda2".to_string(), pv_dev(UUID, a, 8)),
                ("/dev/sdb1".to_string(), pv_dev(UUID2, b, 4)),
            ]);
            assert_eq!(s.vgs[0].seqno, 6);
            let root = lv(&s, "/dev/vg0/root");
            assert_eq!(root.segments[1].pv_offset, 3 << 20);
        }
    }

    #[test]
    fn extents_beyond_the_pv_or_the_device_are_refused() {
        let t = two_pv_text(5).replace("stripes = [\"pv1\", 3]", "stripes = [\"pv1\", 4]");
        let s = scan(&[
            ("/dev/sda2".to_string(), pv_dev(UUID, &t, 8)),
            ("/dev/sdb1".to_string(), pv_dev(UUID2, &t, 4)),
        ]);
        let e = refusal(&s, "/dev/vg0/root");
        assert!(
            e.contains("extents 4..5") && e.contains("beyond its 4 extents"),
            "{e}"
        );
        // The metadata claims 4 extents but the device was cut short.
        let t = two_pv_text(5);
        let s = scan(&[
            ("/dev/sda2".to_string(), pv_dev(UUID, &t, 8)),
            ("/dev/sdb1".to_string(), pv_dev(UUID2, &t, 3)),
        ]);
        let e = refusal(&s, "/dev/vg0/root");
        assert!(e.contains("beyond the end of /dev/sdb1"), "{e}");
    }

    #[test]
    fn an_lv_without_write_status_is_read_only() {
        let t = two_pv_text(5).replace(
            "root { id = \"r\" status = [\"READ\", \"WRITE\", \"VISIBLE\"]",
            "root { id = \"r\" status = [\"READ\", \"VISIBLE\"]",
        );
        let s = scan(&[
            ("/dev/sda2".to_string(), pv_dev(UUID, &t, 8)),
            ("/dev/sdb1".to_string(), pv_dev(UUID2, &t, 4)),
        ]);
        let d = lv(&s, "/dev/vg0/root").device.as_ref().unwrap();
        assert!(d.is_read_only());
        assert_eq!(extent_tags(d), [0, 1, 103]);
        let e = d.write_at(&[1], 0).unwrap_err().to_string();
        assert!(e.contains("read-only"), "{e}");
        assert!(!lv(&s, "/dev/vg0/pool").public);
    }

    #[test]
    fn a_pv_on_two_devices_is_ambiguous() {
        let t = two_pv_text(5);
        let s = scan(&[
            ("/dev/sda2".to_string(), pv_dev(UUID, &t, 8)),
            ("/dev/sdb1".to_string(), pv_dev(UUID2, &t, 4)),
            ("/dev/sdc1".to_string(), pv_dev(UUID2, &t, 4)),
        ]);
        let e = refusal(&s, "/dev/vg0/root");
        assert!(e.contains("several devices (/dev/sdb1, /dev/sdc1)"), "{e}");
    }

    #[test]
    fn a_segment_on_an_lv_is_refused() {
        let t = two_pv_text(5).replace("stripes = [\"pv0\", 0]", "stripes = [\"pool_tdata\", 0]");
        let s = scan(&[
            ("/dev/sda2".to_string(), pv_dev(UUID, &t, 8)),
            ("/dev/sdb1".to_string(), pv_dev(UUID2, &t, 4)),
        ]);
        let e = refusal(&s, "/dev/vg0/root");
        assert!(e.contains("lie on LV pool_tdata"), "{e}");
    }

    #[test]
    fn names_that_are_not_lvm_names_are_ignored_with_a_problem() {
        let t = two_pv_text(5).replace("\nroot {", "\n\"../../etc\" {");
        let s = scan(&[("/dev/sda2".to_string(), pv_dev(UUID, &t, 8))]);
        assert!(s.lv_paths().iter().all(|p| !p.contains("..")));
        assert!(
            s.problems.iter().any(|p| p.contains("../../etc")),
            "{:?}",
            s.problems
        );
    }

    #[test]
    fn a_damaged_pv_is_a_problem_but_its_extents_still_map() {
        let t = two_pv_text(5);
        let bad = pv_dev(UUID2, &t, 4);
        // Break the text of the second PV: its label still names it.
        let mut b = [0u8; 1];
        bad.read_at(&mut b, 4096 + 512 + 20).unwrap();
        bad.write_at(&[b[0] ^ 1], 4096 + 512 + 20).unwrap();
        let s = scan(&[
            ("/dev/sda2".to_string(), pv_dev(UUID, &t, 8)),
            ("/dev/sdb1".to_string(), bad),
        ]);
        assert_eq!(s.problems.len(), 1, "{:?}", s.problems);
        assert!(s.problems[0].starts_with("/dev/sdb1: "), "{:?}", s.problems);
        assert!(lv(&s, "/dev/vg0/root").device.is_ok());
        assert_eq!(s.pv_names(), ["/dev/sda2", "/dev/sdb1"]);
    }
}
