//! Small commands: REQUEST SENSE, START STOP UNIT, PREVENT ALLOW MEDIUM REMOVAL, REPORT LUNS,
//! REPORT SUPPORTED OPERATION CODES and GET LBA STATUS.

use super::sense::{self};
use super::{
    cdb, opcode, store_sense, truncate, CmdResult, LogicalUnit, Request, Response, BLOCK_SIZE,
};

pub fn request_sense(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let desc = cdb::byte(c, 1) & 1 != 0;
    let alloc = cdb::byte(c, 4) as u32;
    let s = lu.take_ua(req.nexus.id).unwrap_or(sense::NO_SENSE);
    let d = if desc { s.descriptor() } else { s.fixed() };
    Ok(Response::good(truncate(d, alloc)).into())
}

pub fn start_stop(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let power = cdb::byte(c, 4) >> 4;
    let loej = cdb::byte(c, 4) & 0x02 != 0;
    let start = cdb::byte(c, 4) & 0x01 != 0;
    // Eject is refused while any nexus prevents removal.
    if power == 0 && loej && !start && lu.prevented() {
        return Err(sense::MEDIUM_REMOVAL_PREVENTED);
    }
    Ok(Response::good(Vec::new()).into())
}

pub fn prevent_allow(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let prevent = cdb::byte(req.cdb, 4) & 0x03;
    lu.prevent_set(req.nexus.id, prevent & 1 != 0);
    Ok(Response::good(Vec::new()).into())
}

pub fn report_luns(_lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let select = cdb::byte(c, 2);
    let alloc = cdb::be32(c, 6);
    if alloc < 16 {
        return Err(sense::invalid_cdb_field(6, None));
    }
    let luns: &[u64] = match select {
        0x00 | 0x02 => &[0],
        0x01 | 0x10 | 0x11 | 0x12 => &[],
        _ => return Err(sense::invalid_cdb_field(2, None)),
    };
    let mut d = vec![0u8; 8];
    d[0..4].copy_from_slice(&((luns.len() * 8) as u32).to_be_bytes());
    for l in luns {
        d.extend_from_slice(&l.to_be_bytes());
    }
    Ok(Response::good(truncate(d, alloc)).into())
}

/// (opcode, service action, CDB length) of every command this LU executes.
pub const SUPPORTED: &[(u8, Option<u16>, u16)] = &[
    (opcode::TEST_UNIT_READY, None, 6),
    (opcode::REQUEST_SENSE, None, 6),
    (opcode::READ_6, None, 6),
    (opcode::WRITE_6, None, 6),
    (opcode::INQUIRY, None, 6),
    (opcode::MODE_SELECT_6, None, 6),
    (opcode::RESERVE_6, None, 6),
    (opcode::RELEASE_6, None, 6),
    (opcode::MODE_SENSE_6, None, 6),
    (opcode::START_STOP_UNIT, None, 6),
    (opcode::PREVENT_ALLOW_MEDIUM_REMOVAL, None, 6),
    (opcode::READ_CAPACITY_10, None, 10),
    (opcode::READ_10, None, 10),
    (opcode::WRITE_10, None, 10),
    (opcode::WRITE_AND_VERIFY_10, None, 10),
    (opcode::VERIFY_10, None, 10),
    (opcode::PRE_FETCH_10, None, 10),
    (opcode::SYNCHRONIZE_CACHE_10, None, 10),
    (opcode::READ_DEFECT_DATA_10, None, 10),
    (opcode::WRITE_SAME_10, None, 10),
    (opcode::UNMAP, None, 10),
    (opcode::MODE_SELECT_10, None, 10),
    (opcode::RESERVE_10, None, 10),
    (opcode::RELEASE_10, None, 10),
    (opcode::MODE_SENSE_10, None, 10),
    (
        opcode::PERSISTENT_RESERVE_IN,
        Some(opcode::PRIN_READ_KEYS as u16),
        10,
    ),
    (
        opcode::PERSISTENT_RESERVE_IN,
        Some(opcode::PRIN_READ_RESERVATION as u16),
        10,
    ),
    (
        opcode::PERSISTENT_RESERVE_IN,
        Some(opcode::PRIN_REPORT_CAPABILITIES as u16),
        10,
    ),
    (
        opcode::PERSISTENT_RESERVE_IN,
        Some(opcode::PRIN_READ_FULL_STATUS as u16),
        10,
    ),
    (
        opcode::PERSISTENT_RESERVE_OUT,
        Some(opcode::PROUT_REGISTER as u16),
        10,
    ),
    (
        opcode::PERSISTENT_RESERVE_OUT,
        Some(opcode::PROUT_RESERVE as u16),
        10,
    ),
    (
        opcode::PERSISTENT_RESERVE_OUT,
        Some(opcode::PROUT_RELEASE as u16),
        10,
    ),
    (
        opcode::PERSISTENT_RESERVE_OUT,
        Some(opcode::PROUT_CLEAR as u16),
        10,
    ),
    (
        opcode::PERSISTENT_RESERVE_OUT,
        Some(opcode::PROUT_PREEMPT as u16),
        10,
    ),
    (
        opcode::PERSISTENT_RESERVE_OUT,
        Some(opcode::PROUT_PREEMPT_AND_ABORT as u16),
        10,
    ),
    (
        opcode::PERSISTENT_RESERVE_OUT,
        Some(opcode::PROUT_REGISTER_AND_IGNORE_EXISTING_KEY as u16),
        10,
    ),
    (opcode::READ_16, None, 16),
    (opcode::COMPARE_AND_WRITE, None, 16),
    (opcode::WRITE_16, None, 16),
    (opcode::ORWRITE_16, None, 16),
    (opcode::WRITE_AND_VERIFY_16, None, 16),
    (opcode::VERIFY_16, None, 16),
    (opcode::PRE_FETCH_16, None, 16),
    (opcode::SYNCHRONIZE_CACHE_16, None, 16),
    (opcode::WRITE_SAME_16, None, 16),
    (
        opcode::SERVICE_ACTION_IN_16,
        Some(opcode::SA_READ_CAPACITY_16 as u16),
        16,
    ),
    (
        opcode::SERVICE_ACTION_IN_16,
        Some(opcode::SA_GET_LBA_STATUS as u16),
        16,
    ),
    (opcode::REPORT_LUNS, None, 12),
    (
        opcode::MAINTENANCE_IN,
        Some(opcode::SA_REPORT_SUPPORTED_OPCODES as u16),
        12,
    ),
    (opcode::READ_12, None, 12),
    (opcode::WRITE_12, None, 12),
    (opcode::WRITE_AND_VERIFY_12, None, 12),
    (opcode::VERIFY_12, None, 12),
    (opcode::READ_DEFECT_DATA_12, None, 12),
];

/// CDB usage data: which bits of each byte the command looks at.
fn usage(op: u8, sa: Option<u16>, len: u16) -> Vec<u8> {
    let mut m = vec![0xffu8; len as usize];
    m[0] = op;
    if let Some(sa) = sa {
        m[1] = (sa as u8) | 0xe0;
    }
    if let Some(last) = m.last_mut() {
        *last = 0x00; // control byte: NACA/LINK unsupported
    }
    m
}

const TIMEOUTS: [u8; 12] = [0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30];

pub fn report_supported_opcodes(_lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let rctd = cdb::byte(c, 2) & 0x80 != 0;
    let options = cdb::byte(c, 2) & 0x07;
    let op = cdb::byte(c, 3);
    let sa = cdb::be16(c, 4);
    let alloc = cdb::be32(c, 6);
    let d = match options {
        0 => {
            let mut d = vec![0u8; 4];
            for &(o, s, len) in SUPPORTED {
                let mut e = vec![o, 0, 0, 0, 0, 0, 0, 0];
                e[2..4].copy_from_slice(&s.unwrap_or(0).to_be_bytes());
                e[5] = if s.is_some() { 0x01 } else { 0 } | if rctd { 0x02 } else { 0 };
                e[6..8].copy_from_slice(&len.to_be_bytes());
                if rctd {
                    e.extend_from_slice(&TIMEOUTS);
                }
                d.extend(e);
            }
            let n = (d.len() - 4) as u32;
            d[0..4].copy_from_slice(&n.to_be_bytes());
            d
        }
        1..=3 => {
            let has_sa = SUPPORTED.iter().any(|&(o, s, _)| o == op && s.is_some());
            // Option 1: opcode without service action; 2: with; 3: either.
            if (options == 1 && has_sa) || (options == 2 && !has_sa && known(op)) {
                return Err(sense::invalid_cdb_field(2, None));
            }
            let found = SUPPORTED
                .iter()
                .find(|&&(o, s, _)| o == op && (options == 1 || s.is_none() || s == Some(sa)));
            let mut d = vec![0u8; 4];
            match found {
                Some(&(o, s, len)) => {
                    d[1] = 0x03 | if rctd { 0x80 } else { 0 };
                    d[2..4].copy_from_slice(&len.to_be_bytes());
                    d.extend(usage(o, s, len));
                    if rctd {
                        d.extend_from_slice(&TIMEOUTS);
                    }
                }
                None => d[1] = 0x01,
            }
            d
        }
        _ => return Err(sense::invalid_cdb_field(2, None)),
    };
    Ok(Response::good(truncate(d, alloc)).into())
}

fn known(op: u8) -> bool {
    SUPPORTED.iter().any(|&(o, _, _)| o == op)
}

/// READ DEFECT DATA (10/12): this medium has no defects; the list is empty, in the format
/// asked for.
pub fn read_defect_data(_lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let twelve = cdb::byte(c, 0) == opcode::READ_DEFECT_DATA_12;
    let (flags, alloc) = if twelve {
        (cdb::byte(c, 1) & 0x1f, cdb::be32(c, 6))
    } else {
        (cdb::byte(c, 2) & 0x1f, cdb::be16(c, 7) as u32)
    };
    let d = if twelve {
        vec![0, flags, 0, 0, 0, 0, 0, 0]
    } else {
        vec![0, flags, 0, 0]
    };
    Ok(Response::good(truncate(d, alloc)).into())
}

/// Bytes of the volume one GET LBA STATUS looks at, at most: the scan takes the volume's
/// read lock per piece, and an initiator asks again from where the answer stops.
const LBA_STATUS_SCAN_BYTES: u64 = 4 << 30;
/// Bytes scanned per look at the volume's map (the read lock is released in between).
const LBA_STATUS_PIECE_BYTES: u64 = 256 << 20;

/// GET LBA STATUS (SBC-3 §5.6): descriptors of mapped (0) and deallocated (1) extents
/// from the requested LBA on, as many as the allocation length holds. Status is tracked
/// per 4 KiB block by the store, so a descriptor may start or end inside one only at the
/// requested LBA or the end of the volume.
pub fn get_lba_status(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let lba = cdb::be64(c, 2);
    let alloc = cdb::be32(c, 10);
    let blocks = lu.blocks();
    if lba >= blocks {
        return Err(sense::LBA_OUT_OF_RANGE);
    }
    // Room for at least one descriptor even when the allocation length cuts it short.
    let room = ((alloc as usize).saturating_sub(8) / 16).max(1);
    let mut descs: Vec<(u64, u64, bool)> = Vec::new();
    let mut pos = lba * BLOCK_SIZE;
    let stop = (blocks * BLOCK_SIZE).min(pos.saturating_add(LBA_STATUS_SCAN_BYTES));
    while pos < stop {
        let ask = (stop - pos).min(LBA_STATUS_PIECE_BYTES);
        let (mapped, run) = lu
            .volume
            .allocation(pos, ask)
            .map_err(|e| store_sense(&e, false))?;
        let run_blocks = run.div_ceil(BLOCK_SIZE);
        let full = descs.len() == room;
        match descs.last_mut() {
            Some((_, n, m)) if *m == mapped && *n + run_blocks <= u32::MAX as u64 => {
                *n += run_blocks
            }
            _ if full => break,
            _ => descs.push((pos / BLOCK_SIZE, run_blocks, mapped)),
        }
        pos += run_blocks * BLOCK_SIZE;
    }
    let mut d = Vec::with_capacity(8 + 16 * descs.len());
    d.extend_from_slice(&(4 + 16 * descs.len() as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for (start, count, mapped) in descs {
        d.extend_from_slice(&start.to_be_bytes());
        d.extend_from_slice(&(count as u32).to_be_bytes());
        d.push(if mapped { 0 } else { 1 }); // provisioning status
        d.extend_from_slice(&[0; 3]);
    }
    Ok(Response::good(truncate(d, alloc)).into())
}
