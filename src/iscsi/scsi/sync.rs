//! SYNCHRONIZE CACHE (10/16): the durability point, mapped to the volume's flush. And
//! PRE-FETCH (10/16), which has nothing to do here beyond its range check.

use super::{cdb, opcode, sense::status, store_sense, CmdResult, LogicalUnit, Request, Response};

fn range(c: &[u8]) -> (u64, u64) {
    if matches!(
        cdb::byte(c, 0),
        opcode::SYNCHRONIZE_CACHE_10 | opcode::PRE_FETCH_10
    ) {
        (cdb::be32(c, 2) as u64, cdb::be16(c, 7) as u64)
    } else {
        (cdb::be64(c, 2), cdb::be32(c, 10) as u64)
    }
}

pub fn synchronize_cache(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let (lba, blocks) = range(req.cdb);
    lu.check_range(lba, blocks)?;
    lu.volume.flush().map_err(|e| store_sense(&e, true))?;
    Ok(Response::good(Vec::new()).into())
}

pub fn prefetch(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let (lba, blocks) = range(req.cdb);
    lu.check_range(lba, blocks)?;
    // Data is served from the page cache and the shared chunk cache already; CONDITION MET
    // says "the range would fit in the cache".
    Ok(Response::status(status::CONDITION_MET).into())
}
