//! READ CAPACITY (10) and (16): size, 512-byte logical blocks on 4 KiB physical blocks, and
//! logical block provisioning (LBPME, LBPRZ: discarded blocks read back as zeros).

use super::sense;
use super::{cdb, truncate, CmdResult, LogicalUnit, Request, Response, BLOCK_SIZE, PHYS_EXPONENT};

pub fn read_capacity10(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    // PMI and LOGICAL BLOCK ADDRESS are obsolete: an LBA without PMI is an error.
    if cdb::byte(c, 8) & 1 == 0 && cdb::be32(c, 2) != 0 {
        return Err(sense::invalid_cdb_field(2, None));
    }
    let last = lu.blocks().saturating_sub(1).min(0xffff_ffff) as u32;
    let mut d = Vec::with_capacity(8);
    d.extend_from_slice(&last.to_be_bytes());
    d.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
    Ok(Response::good(d).into())
}

pub fn read_capacity16(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let alloc = cdb::be32(req.cdb, 10);
    let mut d = vec![0u8; 32];
    d[0..8].copy_from_slice(&lu.blocks().saturating_sub(1).to_be_bytes());
    d[8..12].copy_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
    d[13] = PHYS_EXPONENT;
    d[14] = 0x80 | 0x40; // LBPME, LBPRZ
    Ok(Response::good(truncate(d, alloc)).into())
}
