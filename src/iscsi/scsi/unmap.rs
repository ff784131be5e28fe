//! UNMAP and WRITE SAME (10/16), with and without the UNMAP bit. Discarded ranges read back
//! as zeros (LBPRZ), so WRITE SAME of a zero block with UNMAP is a discard too.

use std::sync::atomic::Ordering;

use super::sense::{self};
use super::{
    cdb, opcode, store_sense, CmdResult, LogicalUnit, Request, Response, BLOCK_SIZE,
    MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS,
};

pub fn unmap(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    if cdb::byte(c, 1) & 0x01 != 0 {
        return Err(sense::invalid_cdb_field(1, Some(0))); // ANCHOR unsupported
    }
    let plen = cdb::be16(c, 7) as usize;
    if plen == 0 {
        return Ok(Response::good(Vec::new()).into());
    }
    if plen < 8 {
        return Err(sense::PARAM_LIST_LENGTH_ERROR);
    }
    let data = req
        .data_out
        .get(..plen)
        .ok_or(sense::PARAM_LIST_LENGTH_ERROR)?;
    let bd_len = cdb::be16(data, 2) as usize;
    if bd_len % 16 != 0 || 8 + bd_len > plen {
        return Err(sense::PARAM_LIST_LENGTH_ERROR);
    }
    if (bd_len / 16) as u32 > MAX_UNMAP_DESCRIPTORS {
        return Err(sense::invalid_param_field(2));
    }
    if lu.volume.is_read_only() {
        return Err(sense::WRITE_PROTECTED);
    }
    let descs: Vec<(u64, u64)> = data[8..8 + bd_len]
        .chunks(16)
        .map(|d| (cdb::be64(d, 0), cdb::be32(d, 8) as u64))
        .collect();
    // Check all before changing anything.
    for &(lba, n) in &descs {
        lu.check_range(lba, n)?;
        if n > MAX_UNMAP_BLOCKS as u64 {
            return Err(sense::invalid_param_field(8));
        }
    }
    for (lba, n) in descs {
        if n > 0 {
            lu.volume
                .discard(lba * BLOCK_SIZE, n * BLOCK_SIZE)
                .map_err(|e| store_sense(&e, true))?;
        }
    }
    if !lu.wce.load(Ordering::Relaxed) {
        lu.volume.flush().map_err(|e| store_sense(&e, true))?;
    }
    Ok(Response::good(Vec::new()).consumed(plen).into())
}

pub fn write_same(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let sixteen = cdb::byte(c, 0) == opcode::WRITE_SAME_16;
    let flags = cdb::byte(c, 1);
    if flags >> 5 != 0 {
        return Err(sense::invalid_cdb_field(1, Some(7)));
    }
    let unmap = flags & 0x08 != 0;
    let anchor = flags & 0x10 != 0;
    let ndob = sixteen && flags & 0x01 != 0;
    if anchor {
        return Err(sense::invalid_cdb_field(1, Some(4)));
    }
    let (lba, blocks) = if sixteen {
        (cdb::be64(c, 2), cdb::be32(c, 10) as u64)
    } else {
        (cdb::be32(c, 2) as u64, cdb::be16(c, 7) as u64)
    };
    // Zero blocks means "to the end of the medium" (WSNZ is clear in VPD 0xB0).
    let blocks = if blocks == 0 {
        if lba > lu.blocks() {
            return Err(sense::LBA_OUT_OF_RANGE);
        }
        lu.blocks() - lba
    } else if blocks > MAX_WRITE_SAME_BLOCKS {
        return Err(sense::invalid_cdb_field(if sixteen { 10 } else { 7 }, None));
    } else {
        blocks
    };
    lu.check_range(lba, blocks)?;
    if lu.volume.is_read_only() {
        return Err(sense::WRITE_PROTECTED);
    }
    let b = BLOCK_SIZE as usize;
    let zero = [0u8; BLOCK_SIZE as usize];
    // The Data-Out is exactly one block (none with NDOB).
    if req.data_out.len() != if ndob { 0 } else { b } {
        return Err(sense::invalid_cdb_field(if sixteen { 10 } else { 7 }, None));
    }
    let pattern: &[u8] = if ndob { &zero } else { req.data_out };
    let consumed = if ndob { 0 } else { b };
    let (off, len) = (lba * BLOCK_SIZE, blocks * BLOCK_SIZE);
    if unmap || pattern.iter().all(|&x| x == 0) {
        // UNMAP deallocates whatever the pattern (as LIO and tgt do; the blocks then read
        // as zeros, LBPRZ). A zero pattern is a discard too: it reads back the same and the
        // delta gives the space back.
        lu.volume
            .discard(off, len)
            .map_err(|e| store_sense(&e, true))?;
    } else {
        // Write the pattern in pieces of up to 1 MiB.
        let per = (1usize << 20) / b;
        let chunk: Vec<u8> = pattern.repeat(per);
        let mut done = 0u64;
        while done < blocks {
            let n = (blocks - done).min(per as u64) as usize;
            lu.volume
                .write_at(&chunk[..n * b], off + done * BLOCK_SIZE)
                .map_err(|e| store_sense(&e, true))?;
            done += n as u64;
        }
    }
    if !lu.wce.load(Ordering::Relaxed) {
        lu.volume.flush().map_err(|e| store_sense(&e, true))?;
    }
    Ok(Response::good(Vec::new()).consumed(consumed).into())
}
