//! Pure CDB field extraction: big-endian fields at fixed offsets, and the decoded shape of
//! the read/write family. Never panics: a CDB shorter than its opcode's length is reported
//! as `None` / an error, never indexed past its end.

use super::scsi::opcode::*;

/// Length of the CDB for an opcode, by its group code (SPC-4 §4.2.5.1).
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

pub fn be16(c: &[u8], at: usize) -> u16 {
    c.get(at..at + 2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

pub fn be24(c: &[u8], at: usize) -> u32 {
    c.get(at..at + 3)
        .map_or(0, |b| u32::from_be_bytes([0, b[0], b[1], b[2]]))
}

pub fn be32(c: &[u8], at: usize) -> u32 {
    c.get(at..at + 4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn be64(c: &[u8], at: usize) -> u64 {
    c.get(at..at + 8).map_or(0, |b| {
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        u64::from_be_bytes(a)
    })
}

pub fn byte(c: &[u8], at: usize) -> u8 {
    c.get(at).copied().unwrap_or(0)
}

/// A decoded READ/WRITE/VERIFY/WRITE AND VERIFY/WRITE SAME/SYNCHRONIZE CACHE-style CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockRange {
    pub lba: u64,
    pub blocks: u64,
    /// Byte 1 (flags: FUA 0x08, DPO 0x10, protect bits 7..5, BYTCHK, UNMAP, ...).
    pub flags: u8,
}

impl BlockRange {
    pub fn fua(&self) -> bool {
        self.flags & 0x08 != 0
    }
    /// RDPROTECT/WRPROTECT/VRPROTECT (bits 7..5 of byte 1).
    pub fn protect(&self) -> u8 {
        self.flags >> 5
    }
}

/// Decodes LBA, block count and flags for the 6/10/12/16-byte forms of the block commands.
/// READ(6)/WRITE(6): 21-bit LBA, a count of 0 means 256 blocks.
pub fn block_range(c: &[u8]) -> BlockRange {
    let op = byte(c, 0);
    match cdb_len(op) {
        Some(6) => {
            let lba = (be24(c, 1) & 0x1f_ffff) as u64;
            let n = byte(c, 4) as u64;
            BlockRange {
                lba,
                blocks: if n == 0 { 256 } else { n },
                flags: 0,
            }
        }
        Some(10) => BlockRange {
            lba: be32(c, 2) as u64,
            blocks: be16(c, 7) as u64,
            flags: byte(c, 1),
        },
        Some(12) => BlockRange {
            lba: be32(c, 2) as u64,
            blocks: be32(c, 6) as u64,
            flags: byte(c, 1),
        },
        _ => BlockRange {
            lba: be64(c, 2),
            blocks: be32(c, 10) as u64,
            flags: byte(c, 1),
        },
    }
}

/// Allocation length of the CDBs that have one, by opcode.
pub fn allocation_length(c: &[u8]) -> u32 {
    match byte(c, 0) {
        INQUIRY => be16(c, 3) as u32,
        REQUEST_SENSE | MODE_SENSE_6 => byte(c, 4) as u32,
        MODE_SENSE_10 | PERSISTENT_RESERVE_IN => be16(c, 7) as u32,
        // REPORT SUPPORTED OPERATION CODES is MAINTENANCE IN's one service action.
        REPORT_LUNS | MAINTENANCE_IN => be32(c, 6),
        // READ CAPACITY(16), GET LBA STATUS
        SERVICE_ACTION_IN_16 => be32(c, 10),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_codes_give_cdb_lengths() {
        assert_eq!(cdb_len(0x08), Some(6));
        assert_eq!(cdb_len(0x28), Some(10));
        assert_eq!(cdb_len(0x5a), Some(10));
        assert_eq!(cdb_len(0x88), Some(16));
        assert_eq!(cdb_len(0xa8), Some(12));
        assert_eq!(cdb_len(0x7f), None);
    }

    #[test]
    fn read6_zero_length_means_256_blocks() {
        let r = block_range(&[0x08, 0x01, 0x02, 0x03, 0x00, 0x00]);
        assert_eq!(r.lba, 0x01_0203);
        assert_eq!(r.blocks, 256);
    }

    #[test]
    fn read16_fields_and_fua() {
        let mut c = [0u8; 16];
        c[0] = 0x88;
        c[1] = 0x08;
        c[2..10].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        c[10..14].copy_from_slice(&7u32.to_be_bytes());
        let r = block_range(&c);
        assert_eq!((r.lba, r.blocks), (0x1_0000_0000, 7));
        assert!(r.fua());
    }

    #[test]
    fn short_cdbs_read_as_zero_not_panic() {
        let r = block_range(&[0x88, 0]);
        assert_eq!((r.lba, r.blocks), (0, 0));
        assert_eq!(allocation_length(&[0x12]), 0);
    }
}
