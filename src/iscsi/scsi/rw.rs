//! The data path: READ (6/10/12/16), WRITE (6/10/12/16), VERIFY (10/12/16), WRITE AND VERIFY
//! (10/12/16) and COMPARE AND WRITE. Reads are returned as a plan and streamed by the
//! connection; writes go to the volume in one call; FUA (or a disabled write cache) adds a
//! flush before the status.

use std::sync::atomic::Ordering;

use crate::store::Wait;

use super::sense::{self};
use super::{
    cdb, store_sense, CmdResult, LogicalUnit, Outcome, ReadPlan, Request, Response, BLOCK_SIZE,
    MAX_COMPARE_AND_WRITE_BLOCKS, MAX_READ_BLOCKS, MAX_TRANSFER_BLOCKS,
};

/// Protection information is not supported: any non-zero *PROTECT field is invalid.
fn no_protect(r: &cdb::BlockRange) -> Result<(), sense::Sense> {
    if r.protect() != 0 {
        return Err(sense::invalid_cdb_field(1, Some(7)));
    }
    Ok(())
}

pub fn read(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let r = cdb::block_range(req.cdb);
    no_protect(&r)?;
    lu.check_range(r.lba, r.blocks)?;
    if r.blocks > MAX_READ_BLOCKS {
        return Err(sense::invalid_cdb_field(
            if req.cdb.len() >= 16 { 10 } else { 7 },
            None,
        ));
    }
    Ok(Outcome::Read(ReadPlan {
        offset: r.lba * BLOCK_SIZE,
        len: r.blocks * BLOCK_SIZE,
    }))
}

/// Flushes when FUA is set or the write cache is off.
fn maybe_flush(lu: &LogicalUnit, fua: bool) -> Result<(), sense::Sense> {
    if fua || !lu.wce.load(Ordering::Relaxed) {
        lu.volume.flush().map_err(|e| store_sense(&e, true))?;
    }
    Ok(())
}

/// Checks a write's range; returns the data to write: the transfer length's worth, or
/// fewer whole blocks when the initiator's expected length is shorter (the difference is
/// reported as a residual overflow, as SAM-5 allows).
fn write_data<'a>(
    lu: &LogicalUnit,
    req: &Request<'a>,
    r: &cdb::BlockRange,
) -> Result<&'a [u8], sense::Sense> {
    no_protect(r)?;
    lu.check_range(r.lba, r.blocks)?;
    if r.blocks > MAX_TRANSFER_BLOCKS as u64 {
        return Err(sense::invalid_cdb_field(7, None));
    }
    if lu.volume.is_read_only() {
        return Err(sense::WRITE_PROTECTED);
    }
    let need = (r.blocks * BLOCK_SIZE) as usize;
    let have = need.min(req.data_out.len());
    Ok(&req.data_out[..have - have % BLOCK_SIZE as usize])
}

fn transfer_bytes(r: &cdb::BlockRange) -> usize {
    (r.blocks * BLOCK_SIZE) as usize
}

pub fn write(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let r = cdb::block_range(req.cdb);
    let data = write_data(lu, req, &r)?;
    if !data.is_empty() {
        let at = r.lba * BLOCK_SIZE;
        let written = match req.wait {
            Wait::Yes => lu.volume.write_at(data, at).map(|()| true),
            Wait::No => lu.volume.try_write_at(data, at),
        }
        .map_err(|e| store_sense(&e, true))?;
        if !written {
            return Ok(Outcome::WouldBlock);
        }
        maybe_flush(lu, r.fua())?;
    }
    Ok(Response::good(Vec::new())
        .consumed(transfer_bytes(&r))
        .into())
}

pub fn write_and_verify(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let r = cdb::block_range(req.cdb);
    let data = write_data(lu, req, &r)?;
    if !data.is_empty() {
        lu.volume
            .write_at(data, r.lba * BLOCK_SIZE)
            .map_err(|e| store_sense(&e, true))?;
        // Verification means the data is on the medium: flush, as FUA would.
        maybe_flush(lu, true)?;
    }
    Ok(Response::good(Vec::new())
        .consumed(transfer_bytes(&r))
        .into())
}

pub fn verify(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let r = cdb::block_range(req.cdb);
    no_protect(&r)?;
    let bytchk = (r.flags >> 1) & 0x03;
    if bytchk == 2 {
        return Err(sense::invalid_cdb_field(1, Some(2)));
    }
    lu.check_range(r.lba, r.blocks)?;
    if r.blocks > MAX_TRANSFER_BLOCKS as u64 {
        return Err(sense::invalid_cdb_field(7, None));
    }
    let len = (r.blocks * BLOCK_SIZE) as usize;
    let mut medium = vec![0u8; len];
    lu.volume
        .read_at(&mut medium, r.lba * BLOCK_SIZE)
        .map_err(|e| store_sense(&e, false))?;
    let consumed = match bytchk {
        0 => 0,
        1 => {
            let given = req
                .data_out
                .get(..len)
                .ok_or(sense::PARAM_LIST_LENGTH_ERROR)?;
            if let Some(at) = first_difference(given, &medium) {
                return Err(sense::MISCOMPARE_DURING_VERIFY.with_information(at as u64));
            }
            len
        }
        _ => {
            let b = BLOCK_SIZE as usize;
            let given = req
                .data_out
                .get(..b)
                .ok_or(sense::PARAM_LIST_LENGTH_ERROR)?;
            for (i, chunk) in medium.chunks(b).enumerate() {
                if let Some(at) = first_difference(given, chunk) {
                    return Err(
                        sense::MISCOMPARE_DURING_VERIFY.with_information((i * b + at) as u64)
                    );
                }
            }
            b
        }
    };
    Ok(Response::good(Vec::new()).consumed(consumed).into())
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

pub fn compare_and_write(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let flags = cdb::byte(c, 1);
    if flags >> 5 != 0 {
        return Err(sense::invalid_cdb_field(1, Some(7)));
    }
    let lba = cdb::be64(c, 2);
    // NUMBER OF LOGICAL BLOCKS is one byte and the limit (VPD 0xB0) is its maximum, so
    // any value is within it.
    let nob = cdb::byte(c, 13);
    const _: () = assert!(MAX_COMPARE_AND_WRITE_BLOCKS == u8::MAX);
    lu.check_range(lba, nob as u64)?;
    let len = nob as usize * BLOCK_SIZE as usize;
    // The Data-Out must be exactly the verify and write halves.
    if req.data_out.len() != 2 * len {
        return Err(sense::invalid_cdb_field(13, None));
    }
    if nob == 0 {
        return Ok(Response::good(Vec::new()).into());
    }
    if lu.volume.is_read_only() {
        return Err(sense::WRITE_PROTECTED);
    }
    let data = req
        .data_out
        .get(..2 * len)
        .ok_or(sense::PARAM_LIST_LENGTH_ERROR)?;
    let (verify, new) = data.split_at(len);
    let _atomic = lu.caw_lock();
    let mut medium = vec![0u8; len];
    lu.volume
        .read_at(&mut medium, lba * BLOCK_SIZE)
        .map_err(|e| store_sense(&e, false))?;
    if let Some(at) = first_difference(verify, &medium) {
        return Err(sense::MISCOMPARE_DURING_VERIFY.with_information(at as u64));
    }
    lu.volume
        .write_at(new, lba * BLOCK_SIZE)
        .map_err(|e| store_sense(&e, true))?;
    maybe_flush(lu, flags & 0x08 != 0)?;
    Ok(Response::good(Vec::new()).consumed(2 * len).into())
}

/// ORWRITE (16): each block becomes the bitwise OR of itself and the Data-Out.
pub fn orwrite(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let r = cdb::block_range(req.cdb);
    let data = write_data(lu, req, &r)?;
    if !data.is_empty() {
        let _atomic = lu.caw_lock();
        let off = r.lba * BLOCK_SIZE;
        let mut cur = vec![0u8; data.len()];
        lu.volume
            .read_at(&mut cur, off)
            .map_err(|e| store_sense(&e, false))?;
        for (c, d) in cur.iter_mut().zip(data) {
            *c |= d;
        }
        lu.volume
            .write_at(&cur, off)
            .map_err(|e| store_sense(&e, true))?;
        maybe_flush(lu, r.fua())?;
    }
    Ok(Response::good(Vec::new())
        .consumed(transfer_bytes(&r))
        .into())
}
