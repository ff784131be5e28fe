//! The MBR (DOS) partition table: byte layout of the boot sector's four entries and of the
//! extended boot records that chain logical partitions. Pure parsing, no I/O.
//!
//! Layout of sector 0: entries at bytes 446, 462, 478, 494 (16 bytes each: boot flag, CHS
//! start, type, CHS end, start LBA u32 LE, sector count u32 LE); signature 0x55 0xAA at 510.

/// Byte offset of the first of the four entries.
const ENTRIES_AT: usize = 446;
const ENTRY_LEN: usize = 16;
/// Type of the protective entry that says "this disk has a GPT".
pub const TYPE_GPT_PROTECTIVE: u8 = 0xEE;
/// Extended-partition container types (DOS CHS, LBA, Linux).
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0F, 0x85];
/// Cap on logical partitions: Linux's sd driver numbers at most 256 minors per disk anyway,
/// and a cap bounds the work a malicious chain can cause.
pub const MAX_LOGICAL: u32 = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub kind: u8,
    pub start_lba: u64,
    pub sectors: u64,
}

impl Entry {
    pub fn is_extended(&self) -> bool {
        EXTENDED_TYPES.contains(&self.kind)
    }
}

/// The four primary slots; `None` for an unused slot (type 0 or no sectors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub entries: [Option<Entry>; 4],
}

impl Table {
    /// Whether this is a GPT disk's protective (or hybrid) MBR.
    pub fn is_protective(&self) -> bool {
        self.entries
            .iter()
            .flatten()
            .any(|e| e.kind == TYPE_GPT_PROTECTIVE)
    }
}

fn has_signature(sector: &[u8; 512]) -> bool {
    sector[510] == 0x55 && sector[511] == 0xAA
}

fn entry(sector: &[u8; 512], slot: usize) -> (u8, Option<Entry>) {
    let b = &sector[ENTRIES_AT + slot * ENTRY_LEN..ENTRIES_AT + (slot + 1) * ENTRY_LEN];
    let le32 = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64;
    let (boot, kind, start_lba, sectors) = (b[0], b[4], le32(8), le32(12));
    let e = (kind != 0 && sectors != 0).then_some(Entry {
        kind,
        start_lba,
        sectors,
    });
    (boot, e)
}

/// Parses sector 0. `None` when it holds no partition table: no 0x55AA signature, or a
/// boot flag other than 0x00/0x80 (then it is most likely a FAT or NTFS boot sector, which
/// carries the same signature; Linux applies the same test).
pub fn parse(sector: &[u8; 512]) -> Option<Table> {
    if !has_signature(sector) {
        return None;
    }
    let mut entries = [None; 4];
    for (slot, out) in entries.iter_mut().enumerate() {
        let (boot, e) = entry(sector, slot);
        if boot != 0 && boot != 0x80 {
            return None;
        }
        *out = e;
    }
    Some(Table { entries })
}

/// An extended boot record: a logical partition (start relative to this EBR) and the link
/// to the next EBR (start relative to the extended partition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ebr {
    pub logical: Option<Entry>,
    pub next: Option<Entry>,
}

/// Parses an extended boot record; `None` without the signature.
pub fn parse_ebr(sector: &[u8; 512]) -> Option<Ebr> {
    if !has_signature(sector) {
        return None;
    }
    let logical = entry(sector, 0).1.filter(|e| !e.is_extended());
    let next = entry(sector, 1).1.filter(|e| e.is_extended());
    Some(Ebr { logical, next })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes entry `slot` of an MBR or EBR sector (and the signature).
    pub(crate) fn put_entry(sector: &mut [u8], slot: usize, kind: u8, start: u32, sectors: u32) {
        let at = ENTRIES_AT + slot * ENTRY_LEN;
        sector[at + 4] = kind;
        sector[at + 8..at + 12].copy_from_slice(&start.to_le_bytes());
        sector[at + 12..at + 16].copy_from_slice(&sectors.to_le_bytes());
        sector[510] = 0x55;
        sector[511] = 0xAA;
    }

    #[test]
    fn sector_without_signature_has_no_table() {
        let mut s = [0u8; 512];
        put_entry(&mut s, 0, 0x83, 2048, 100);
        s[511] = 0;
        assert_eq!(parse(&s), None);
    }

    #[test]
    fn fat_boot_sector_is_not_a_partition_table() {
        let mut s = [0u8; 512];
        put_entry(&mut s, 0, 0x83, 2048, 100);
        s[ENTRIES_AT] = 0x29; // a boot flag no partition table uses
        assert_eq!(parse(&s), None);
    }

    #[test]
    fn empty_slots_and_zero_length_entries_are_unused() {
        let mut s = [0u8; 512];
        put_entry(&mut s, 1, 0x83, 2048, 100);
        put_entry(&mut s, 2, 0x83, 4096, 0);
        let t = parse(&s).unwrap();
        assert_eq!(
            t.entries,
            [
                None,
                Some(Entry {
                    kind: 0x83,
                    start_lba: 2048,
                    sectors: 100
                }),
                None,
                None
            ]
        );
        assert!(!t.is_protective());
    }

    #[test]
    fn protective_entry_marks_a_gpt_disk() {
        let mut s = [0u8; 512];
        put_entry(&mut s, 0, TYPE_GPT_PROTECTIVE, 1, u32::MAX);
        assert!(parse(&s).unwrap().is_protective());
    }

    #[test]
    fn ebr_keeps_only_a_data_entry_and_an_extended_link() {
        let mut s = [0u8; 512];
        put_entry(&mut s, 0, 0x83, 63, 1000);
        put_entry(&mut s, 1, 0x05, 2000, 1000);
        let e = parse_ebr(&s).unwrap();
        assert_eq!(e.logical.unwrap().start_lba, 63);
        assert_eq!(e.next.unwrap().start_lba, 2000);
        let mut s = [0u8; 512];
        put_entry(&mut s, 0, 0x05, 63, 1000);
        put_entry(&mut s, 1, 0x83, 2000, 1000);
        assert_eq!(
            parse_ebr(&s).unwrap(),
            Ebr {
                logical: None,
                next: None
            }
        );
    }
}
