//! Byte layouts of the store's binary files, encoded and decoded here and nowhere else.
//! Pure functions on byte slices: no I/O, no locks. All integers are little-endian.
//!
//! # Repository directory (format version 1)
//! ```text
//! REPO/strata-repo.json        {"format":"strata-repo","version":1}  (refused if version > ours)
//! REPO/lock                    flock'd while names are added or removed
//! REPO/tmp/                    staging; anything here is garbage after a crash
//! REPO/images/NAME/image.json  name, virtual size, chunk size, stored bytes, created
//! REPO/images/NAME/index       ImageIndex (below)
//! REPO/images/NAME/data        stored chunks, CHUNK bytes each, in slot order
//! REPO/volumes/NAME/volume.json name, size, image (or none), created
//! REPO/volumes/NAME/data       delta blocks, BLOCK bytes each, in slot order
//! REPO/volumes/NAME/map.0|1    delta map files (below)
//! ```
//! Images and volumes appear by an atomic rename out of `tmp/`, so a name exists whole or not.
//!
//! # Image index
//! ```text
//! 0   8  magic "STRATAIX"
//! 8   4  version (1)
//! 12  4  chunk size in bytes
//! 16  8  virtual size in bytes
//! 24  8  chunk count = ceil(virtual size / chunk size)
//! 32  8  stored chunk count
//! 40  4  crc32 of the table
//! 44 16  zero
//! 60  4  crc32 of bytes 0..60
//! 64  .. table: chunk count x { u32 slot+1 (0 = hole, reads as zeros), u32 crc32 of the chunk }
//! ```
//!
//! # Delta map file (`map.0`, `map.1`)
//! ```text
//! header (64 bytes)                      batch (32 + 16 x count bytes)
//! 0   8  magic "STRATAMP"                0   4  magic "BTCH"
//! 8   4  version (1)                     4   1  kind: 0 snapshot, 1 log
//! 12  4  block size                      5   3  zero
//! 16  8  generation                      8   8  generation (equals the header's)
//! 24 36  zero                            16  8  sequence: 0 for the snapshot, then 1, 2, ...
//! 60  4  crc32 of bytes 0..60            24  4  entry count
//!                                        28  4  crc32 of bytes 0..28 and the entries
//!                                        32  .. entries { u64 block, u32 slot, u32 crc32 }
//! ```
//! A map file is a header, one snapshot batch (the whole map at that generation), then log
//! batches (blocks changed by one flush each). Slot `ZERO_SLOT` means "reads as zeros" (a
//! discarded block, which masks the image below); `UNMAPPED_SLOT` (log only) removes an entry.
//!
//! # Commit protocol (why a crash at any instant is safe)
//! 1. A write never overwrites a data slot that the durable map references: it goes to a free
//!    slot, and the slot it supersedes becomes free only once the superseding map is durable.
//! 2. Flush: cut the changed blocks into a batch (under the volume lock, briefly); then,
//!    without the lock, sync `data` and append the batch to the active map file and sync it.
//!    From the cut on, the cut's slots count as referenced by the durable map for rule 1, so
//!    writes racing the syncs cannot reuse them. The batch's checksum makes it all-or-nothing:
//!    a torn batch fails its crc and is ignored, so the volume opens at the previous flush.
//!    Every block named by a valid batch was synced before the batch was written, and carries
//!    its own crc on top. If a commit fails, its fate on disk is unknown: the volume refuses
//!    further commits until it is reopened, which decides from what is on disk.
//! 3. Compaction (when the log outgrows the snapshot): write header + snapshot with
//!    generation+1 into the *other* map file, sync it. Until that sync completes the old file
//!    (lower generation, complete log) wins on open; after it the new one does.
//! 4. Open: take the map file with the highest generation whose header and snapshot are valid,
//!    replay its log batches in sequence until the first invalid one, cut the file there.

use std::convert::TryInto;

/// Size of a delta block: the unit of copy-on-write and of checksumming in a volume.
pub const BLOCK: usize = 4096;
/// Size of an image chunk: the unit of storage, checksumming and caching in an image. Small
/// on purpose: a cold 4 KiB read loads (and verifies) 4 KiB, not a whole cluster; runs of
/// chunks stored next to each other are still read from disk in one go.
pub const CHUNK: usize = 4096;
/// Chunks are loaded in aligned groups of this many at most (1 MiB), one reader per group
/// at a time: see `cache.rs`. Large enough that a sequential reader's requests reach the
/// disk whole.
pub const LOAD_GROUP: u64 = 256;
/// Slot value meaning "this block reads as zeros" (masks the image below).
pub const ZERO_SLOT: u32 = u32::MAX;
/// Slot value, in log batches only, meaning "this block has no entry any more": reads fall
/// through to the image (or zeros when there is none).
pub const UNMAPPED_SLOT: u32 = u32::MAX - 1;
pub const FORMAT_VERSION: u32 = 1;

pub const MAP_HEADER_LEN: usize = 64;
pub const BATCH_HEADER_LEN: usize = 32;
pub const ENTRY_LEN: usize = 16;
pub const INDEX_HEADER_LEN: usize = 64;
pub const INDEX_ENTRY_LEN: usize = 8;

const MAP_MAGIC: &[u8; 8] = b"STRATAMP";
const BATCH_MAGIC: &[u8; 4] = b"BTCH";
const INDEX_MAGIC: &[u8; 8] = b"STRATAIX";

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Why a header could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("too short")]
    Truncated,
    #[error("not a strata file (bad magic)")]
    BadMagic,
    #[error("header checksum mismatch")]
    BadChecksum,
    #[error("format version {0} is newer than this strata understands")]
    NewerVersion(u32),
    #[error("{0}")]
    Invalid(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapHeader {
    pub block_size: u32,
    pub generation: u64,
}

impl MapHeader {
    pub fn encode(&self) -> [u8; MAP_HEADER_LEN] {
        let mut b = [0u8; MAP_HEADER_LEN];
        b[0..8].copy_from_slice(MAP_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.block_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<MapHeader, HeaderError> {
        if b.len() < MAP_HEADER_LEN {
            return Err(HeaderError::Truncated);
        }
        if &b[0..8] != MAP_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if crc32fast::hash(&b[0..60]) != u32_at(b, 60) {
            return Err(HeaderError::BadChecksum);
        }
        let version = u32_at(b, 8);
        if version > FORMAT_VERSION {
            return Err(HeaderError::NewerVersion(version));
        }
        Ok(MapHeader {
            block_size: u32_at(b, 12),
            generation: u64_at(b, 16),
        })
    }
}

/// One mapping of a virtual block to a data slot, with the crc of the block's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapEntry {
    pub block: u64,
    pub slot: u32,
    pub crc: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchKind {
    Snapshot,
    Log,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub kind: BatchKind,
    pub generation: u64,
    pub sequence: u64,
    pub entries: Vec<MapEntry>,
}

impl Batch {
    pub fn encoded_len(entries: usize) -> usize {
        BATCH_HEADER_LEN + entries * ENTRY_LEN
    }

    /// Appends the encoded batch to `out`.
    pub fn encode_into(
        kind: BatchKind,
        generation: u64,
        sequence: u64,
        entries: impl ExactSizeIterator<Item = MapEntry>,
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.extend_from_slice(BATCH_MAGIC);
        out.push(match kind {
            BatchKind::Snapshot => 0,
            BatchKind::Log => 1,
        });
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&generation.to_le_bytes());
        out.extend_from_slice(&sequence.to_le_bytes());
        out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]); // crc, filled below
        for e in entries {
            out.extend_from_slice(&e.block.to_le_bytes());
            out.extend_from_slice(&e.slot.to_le_bytes());
            out.extend_from_slice(&e.crc.to_le_bytes());
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&out[start..start + 28]);
        h.update(&out[start + BATCH_HEADER_LEN..]);
        let crc = h.finalize();
        out[start + 28..start + 32].copy_from_slice(&crc.to_le_bytes());
    }

    /// Decodes the batch at the start of `b`. `None` when the bytes are not a whole, valid
    /// batch (torn, truncated, stale or garbage): the end of the log. Returns the batch and
    /// its encoded length.
    pub fn decode(b: &[u8]) -> Option<(Batch, usize)> {
        if b.len() < BATCH_HEADER_LEN || &b[0..4] != BATCH_MAGIC {
            return None;
        }
        let kind = match b[4] {
            0 => BatchKind::Snapshot,
            1 => BatchKind::Log,
            _ => return None,
        };
        let count = u32_at(b, 24) as usize;
        let len = count
            .checked_mul(ENTRY_LEN)?
            .checked_add(BATCH_HEADER_LEN)?;
        if b.len() < len {
            return None;
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&b[0..28]);
        h.update(&b[BATCH_HEADER_LEN..len]);
        if h.finalize() != u32_at(b, 28) {
            return None;
        }
        let entries = b[BATCH_HEADER_LEN..len]
            .chunks_exact(ENTRY_LEN)
            .map(|e| MapEntry {
                block: u64_at(e, 0),
                slot: u32_at(e, 8),
                crc: u32_at(e, 12),
            })
            .collect();
        Some((
            Batch {
                kind,
                generation: u64_at(b, 8),
                sequence: u64_at(b, 16),
                entries,
            },
            len,
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHeader {
    pub chunk_size: u32,
    pub virtual_size: u64,
    pub chunk_count: u64,
    pub stored_chunks: u64,
    pub table_crc: u32,
}

impl IndexHeader {
    pub fn encode(&self) -> [u8; INDEX_HEADER_LEN] {
        let mut b = [0u8; INDEX_HEADER_LEN];
        b[0..8].copy_from_slice(INDEX_MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.chunk_size.to_le_bytes());
        b[16..24].copy_from_slice(&self.virtual_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.chunk_count.to_le_bytes());
        b[32..40].copy_from_slice(&self.stored_chunks.to_le_bytes());
        b[40..44].copy_from_slice(&self.table_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<IndexHeader, HeaderError> {
        if b.len() < INDEX_HEADER_LEN {
            return Err(HeaderError::Truncated);
        }
        if &b[0..8] != INDEX_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if crc32fast::hash(&b[0..60]) != u32_at(b, 60) {
            return Err(HeaderError::BadChecksum);
        }
        let version = u32_at(b, 8);
        if version > FORMAT_VERSION {
            return Err(HeaderError::NewerVersion(version));
        }
        let h = IndexHeader {
            chunk_size: u32_at(b, 12),
            virtual_size: u64_at(b, 16),
            chunk_count: u64_at(b, 24),
            stored_chunks: u64_at(b, 32),
            table_crc: u32_at(b, 40),
        };
        if h.chunk_size == 0 || !h.chunk_size.is_power_of_two() {
            return Err(HeaderError::Invalid("chunk size is not a power of two"));
        }
        if h.chunk_count != h.virtual_size.div_ceil(h.chunk_size as u64) {
            return Err(HeaderError::Invalid("chunk count does not match the size"));
        }
        Ok(h)
    }
}

/// An image index table entry: where chunk i is stored, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    /// Data slot, or `None` for a hole (all zeros, not stored).
    pub slot: Option<u32>,
    pub crc: u32,
}

impl IndexEntry {
    pub fn encode(&self) -> [u8; INDEX_ENTRY_LEN] {
        let mut b = [0u8; INDEX_ENTRY_LEN];
        let s = self.slot.map_or(0, |s| s + 1);
        b[0..4].copy_from_slice(&s.to_le_bytes());
        b[4..8].copy_from_slice(&self.crc.to_le_bytes());
        b
    }
    pub fn decode(b: &[u8]) -> IndexEntry {
        let s = u32_at(b, 0);
        IndexEntry {
            slot: s.checked_sub(1),
            crc: u32_at(b, 4),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u64) -> Vec<MapEntry> {
        (0..n)
            .map(|i| MapEntry {
                block: i * 7,
                slot: i as u32,
                crc: 0xdead_0000 + i as u32,
            })
            .collect()
    }

    #[test]
    fn map_header_round_trips_and_rejects_damage() {
        let h = MapHeader {
            block_size: 4096,
            generation: 42,
        };
        let mut b = h.encode();
        assert_eq!(MapHeader::decode(&b), Ok(h));
        b[17] ^= 1;
        assert_eq!(MapHeader::decode(&b), Err(HeaderError::BadChecksum));
        assert_eq!(MapHeader::decode(&b[..10]), Err(HeaderError::Truncated));
        assert_eq!(MapHeader::decode(&[0u8; 64]), Err(HeaderError::BadMagic));
    }

    #[test]
    fn newer_map_version_is_reported_as_such() {
        let mut b = MapHeader {
            block_size: 4096,
            generation: 1,
        }
        .encode();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&b[0..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(MapHeader::decode(&b), Err(HeaderError::NewerVersion(2)));
    }

    #[test]
    fn batch_round_trips() {
        let mut out = vec![9u8; 3];
        Batch::encode_into(BatchKind::Log, 5, 9, entries(4).into_iter(), &mut out);
        let (b, len) = Batch::decode(&out[3..]).unwrap();
        assert_eq!(len, Batch::encoded_len(4));
        assert_eq!(b.kind, BatchKind::Log);
        assert_eq!((b.generation, b.sequence), (5, 9));
        assert_eq!(b.entries, entries(4));
    }

    #[test]
    fn torn_or_flipped_batch_is_not_a_batch() {
        let mut out = Vec::new();
        Batch::encode_into(BatchKind::Snapshot, 1, 0, entries(10).into_iter(), &mut out);
        for cut in [0, 5, 31, 32, out.len() - 1] {
            assert!(Batch::decode(&out[..cut]).is_none(), "cut at {cut}");
        }
        for flip in [4, 9, 20, 40, out.len() - 1] {
            let mut bad = out.clone();
            bad[flip] ^= 0x10;
            assert!(Batch::decode(&bad).is_none(), "flip at {flip}");
        }
    }

    #[test]
    fn huge_entry_count_does_not_overflow() {
        let mut out = Vec::new();
        Batch::encode_into(BatchKind::Log, 1, 1, std::iter::empty(), &mut out);
        out[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Batch::decode(&out).is_none());
    }

    #[test]
    fn index_header_checks_consistency() {
        let h = IndexHeader {
            chunk_size: CHUNK as u32,
            virtual_size: 10 * CHUNK as u64 + 512,
            chunk_count: 11,
            stored_chunks: 3,
            table_crc: 7,
        };
        assert_eq!(IndexHeader::decode(&h.encode()), Ok(h));
        let bad = IndexHeader {
            chunk_count: 10,
            ..h
        };
        assert!(matches!(
            IndexHeader::decode(&bad.encode()),
            Err(HeaderError::Invalid(_))
        ));
    }

    #[test]
    fn index_entry_distinguishes_holes_from_slot_zero() {
        let hole = IndexEntry { slot: None, crc: 0 };
        let first = IndexEntry {
            slot: Some(0),
            crc: 5,
        };
        assert_eq!(IndexEntry::decode(&hole.encode()), hole);
        assert_eq!(IndexEntry::decode(&first.encode()), first);
    }
}
