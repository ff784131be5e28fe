//! The GUID partition table: byte layout of the header and of the entry array, with their
//! CRC32 checks. Pure parsing, no I/O (`disk/mod.rs` decides which sectors to read).
//!
//! Header (little-endian, at LBA 1, backup at the last LBA):
//! ```text
//!   0  "EFI PART"      8  revision       12 header size    16 header CRC32 (of header size
//!  20  reserved       24 my LBA          32 alternate LBA     bytes, this field as zero)
//!  40  first usable   48 last usable     56 disk GUID (16)
//!  72  entries LBA    80 entry count     84 entry size     88 entry array CRC32
//! ```
//! Entry (`entry size` bytes, at least 128): type GUID (16; all zero = unused), unique GUID
//! (16), first LBA (8), last LBA inclusive (8), attributes (8), name (72 bytes UTF-16LE).

pub const SIGNATURE: &[u8; 8] = b"EFI PART";
/// The header fields above end at byte 92; a header may be longer (up to one sector).
const MIN_HEADER_SIZE: u32 = 92;
const SECTOR: u32 = 512;
const MIN_ENTRY_SIZE: u32 = 128;
/// Larger entries are allowed by the spec (multiples of 128) but never used; 4 KiB bounds
/// what an untrusted header can make us read per entry.
const MAX_ENTRY_SIZE: u32 = 4096;
/// Bound on the entry array we read: 1 MiB is 8192 standard entries, 64 times the usual 128.
pub const MAX_ENTRY_ARRAY_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub my_lba: u64,
    pub first_usable: u64,
    pub last_usable: u64,
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    pub entries_crc: u32,
}

/// A used entry, numbered as Linux numbers it (index in the array + 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub number: u32,
    pub first_lba: u64,
    pub last_lba: u64,
    pub name: String,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Header {
    /// Parses and checks the header in `sector`, read from LBA `lba` of a disk of
    /// `disk_sectors` sectors. The error says which check failed.
    pub fn parse(sector: &[u8; 512], lba: u64, disk_sectors: u64) -> Result<Header, String> {
        if &sector[..8] != SIGNATURE {
            return Err("no \"EFI PART\" signature".into());
        }
        let size = le32(sector, 12);
        if !(MIN_HEADER_SIZE..=SECTOR).contains(&size) {
            return Err(format!(
                "header size {size} is outside {MIN_HEADER_SIZE}..={SECTOR}"
            ));
        }
        let stored_crc = le32(sector, 16);
        let mut copy = *sector;
        copy[16..20].fill(0);
        let crc = crc32fast::hash(&copy[..size as usize]);
        if crc != stored_crc {
            return Err(format!(
                "header checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"
            ));
        }
        let h = Header {
            my_lba: le64(sector, 24),
            first_usable: le64(sector, 40),
            last_usable: le64(sector, 48),
            entries_lba: le64(sector, 72),
            entry_count: le32(sector, 80),
            entry_size: le32(sector, 84),
            entries_crc: le32(sector, 88),
        };
        if h.my_lba != lba {
            return Err(format!(
                "header says it is at LBA {}, found at LBA {lba}",
                h.my_lba
            ));
        }
        if h.entry_size < MIN_ENTRY_SIZE
            || h.entry_size > MAX_ENTRY_SIZE
            || h.entry_size % MIN_ENTRY_SIZE != 0
        {
            return Err(format!(
                "entry size {} is not a multiple of 128 between 128 and {MAX_ENTRY_SIZE}",
                h.entry_size
            ));
        }
        let array = h.entry_count as u64 * h.entry_size as u64;
        if array > MAX_ENTRY_ARRAY_BYTES as u64 {
            return Err(format!(
                "{} entries of {} bytes exceed the {MAX_ENTRY_ARRAY_BYTES}-byte limit",
                h.entry_count, h.entry_size
            ));
        }
        let array_sectors = array.div_ceil(SECTOR as u64);
        if h.entries_lba < 2 && lba == 1 || h.entries_lba == lba {
            return Err(format!(
                "entry array LBA {} overlaps the header",
                h.entries_lba
            ));
        }
        if h.entries_lba.saturating_add(array_sectors) > disk_sectors {
            return Err(format!(
                "entry array (LBA {}, {array_sectors} sectors) is beyond the end of the disk ({disk_sectors} sectors)",
                h.entries_lba
            ));
        }
        if h.first_usable > h.last_usable || h.last_usable >= disk_sectors {
            return Err(format!(
                "usable LBAs {}..={} do not fit a disk of {disk_sectors} sectors",
                h.first_usable, h.last_usable
            ));
        }
        Ok(h)
    }

    /// Bytes of the entry array (bounded by `MAX_ENTRY_ARRAY_BYTES` once parsed).
    pub fn entry_array_len(&self) -> usize {
        self.entry_count as usize * self.entry_size as usize
    }

    /// Checks the entry array's CRC32 and returns the used entries. Entries must lie in
    /// the usable area the header declares.
    pub fn parse_entries(&self, array: &[u8]) -> Result<Vec<Entry>, String> {
        if array.len() != self.entry_array_len() {
            return Err(format!(
                "entry array is {} bytes, expected {}",
                array.len(),
                self.entry_array_len()
            ));
        }
        let crc = crc32fast::hash(array);
        if crc != self.entries_crc {
            return Err(format!(
                "entry array checksum mismatch (stored {:#010x}, computed {crc:#010x})",
                self.entries_crc
            ));
        }
        let mut out = Vec::new();
        for (i, e) in array.chunks_exact(self.entry_size as usize).enumerate() {
            if e[..16].iter().all(|&b| b == 0) {
                continue;
            }
            let number = i as u32 + 1;
            let (first_lba, last_lba) = (le64(e, 32), le64(e, 40));
            if first_lba < self.first_usable || last_lba > self.last_usable {
                return Err(format!(
                    "partition {number} (LBA {first_lba}..={last_lba}) is outside the usable area {}..={}",
                    self.first_usable, self.last_usable
                ));
            }
            let units: Vec<u16> = e[56..128]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&u| u != 0)
                .collect();
            out.push(Entry {
                number,
                first_lba,
                last_lba,
                name: String::from_utf16_lossy(&units),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A GPT entry array with the given (first LBA, last LBA, name) entries.
    pub(crate) fn entries(count: u32, parts: &[(u64, u64, &str)]) -> Vec<u8> {
        let mut a = vec![0u8; count as usize * 128];
        for (i, &(first, last, name)) in parts.iter().enumerate() {
            let e = &mut a[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&[0xAF; 16]);
            e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, u) in name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        a
    }

    /// A header at `lba` for a disk of `disk_sectors` sectors describing `array`.
    pub(crate) fn header(lba: u64, disk_sectors: u64, entries_lba: u64, array: &[u8]) -> [u8; 512] {
        let mut s = [0u8; 512];
        s[..8].copy_from_slice(SIGNATURE);
        s[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        s[12..16].copy_from_slice(&92u32.to_le_bytes());
        s[24..32].copy_from_slice(&lba.to_le_bytes());
        let alt = if lba == 1 { disk_sectors - 1 } else { 1 };
        s[32..40].copy_from_slice(&alt.to_le_bytes());
        s[40..48].copy_from_slice(&34u64.to_le_bytes());
        s[48..56].copy_from_slice(&(disk_sectors - 34).to_le_bytes());
        s[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        s[80..84].copy_from_slice(&((array.len() / 128) as u32).to_le_bytes());
        s[84..88].copy_from_slice(&128u32.to_le_bytes());
        s[88..92].copy_from_slice(&crc32fast::hash(array).to_le_bytes());
        reseal(&mut s);
        s
    }

    /// Recomputes the header CRC after a test edits a field.
    pub(crate) fn reseal(s: &mut [u8; 512]) {
        s[16..20].fill(0);
        let size = le32(s, 12) as usize;
        let crc = crc32fast::hash(&s[..size.min(512)]);
        s[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    const DISK: u64 = 8192;

    #[test]
    fn valid_header_and_entries_parse_with_linux_numbering() {
        let a = entries(128, &[(2048, 4095, "boot")]);
        let mut a2 = a.clone();
        // Leave slot 2 unused and fill slot 3: it must be numbered 3, not 2.
        a2[2 * 128..3 * 128].copy_from_slice(&entries(1, &[(4096, 6000, "root")])[..128]);
        let h = Header::parse(&header(1, DISK, 2, &a2), 1, DISK).unwrap();
        let e = h.parse_entries(&a2).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].number, e[0].first_lba, e[0].last_lba),
            (1, 2048, 4095)
        );
        assert_eq!(e[0].name, "boot");
        assert_eq!((e[1].number, e[1].name.as_str()), (3, "root"));
    }

    #[test]
    fn header_with_bad_checksum_is_refused() {
        let a = entries(128, &[]);
        let mut h = header(1, DISK, 2, &a);
        h[40] ^= 1;
        let e = Header::parse(&h, 1, DISK).unwrap_err();
        assert!(e.contains("header checksum"), "{e}");
    }

    #[test]
    fn entry_array_with_bad_checksum_is_refused() {
        let mut a = entries(128, &[(2048, 4095, "x")]);
        let h = Header::parse(&header(1, DISK, 2, &a), 1, DISK).unwrap();
        a[40] ^= 1;
        let e = h.parse_entries(&a).unwrap_err();
        assert!(e.contains("entry array checksum"), "{e}");
    }

    #[test]
    fn absurd_entry_size_or_count_is_refused_before_any_allocation() {
        let a = entries(128, &[]);
        for (field, value, expect) in [
            (84, 100u32, "entry size"),
            (84, 1 << 20, "entry size"),
            (80, u32::MAX, "limit"),
        ] {
            let mut h = header(1, DISK, 2, &a);
            h[field..field + 4].copy_from_slice(&value.to_le_bytes());
            reseal(&mut h);
            let e = Header::parse(&h, 1, DISK).unwrap_err();
            assert!(e.contains(expect), "{field}: {e}");
        }
    }

    #[test]
    fn header_size_beyond_the_sector_is_refused() {
        let a = entries(128, &[]);
        let mut h = header(1, DISK, 2, &a);
        h[12..16].copy_from_slice(&4096u32.to_le_bytes());
        let e = Header::parse(&h, 1, DISK).unwrap_err();
        assert!(e.contains("header size"), "{e}");
    }

    #[test]
    fn entry_array_beyond_the_disk_is_refused() {
        let a = entries(128, &[]);
        let h = header(1, DISK, DISK - 4, &a);
        let e = Header::parse(&h, 1, DISK).unwrap_err();
        assert!(e.contains("beyond the end"), "{e}");
    }

    #[test]
    fn partition_outside_the_usable_area_is_refused() {
        let a = entries(128, &[(2048, DISK + 10, "big")]);
        let h = Header::parse(&header(1, DISK, 2, &a), 1, DISK).unwrap();
        let e = h.parse_entries(&a).unwrap_err();
        assert!(e.contains("outside the usable area"), "{e}");
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut s = [0u8; 512];
            for b in s.iter_mut() {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (seed >> 24) as u8;
            }
            s[..8].copy_from_slice(SIGNATURE);
            reseal(&mut s);
            if let Ok(h) = Header::parse(&s, 1, DISK) {
                let _ = h.parse_entries(&vec![0u8; h.entry_array_len()]);
            }
        }
    }
}
