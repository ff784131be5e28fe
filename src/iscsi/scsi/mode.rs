//! MODE SENSE (6/10) and MODE SELECT (6/10): the caching page (WCE, changeable), the
//! control page and the informational exceptions page. Nothing is savable.

use std::sync::atomic::Ordering;

use super::sense::{self};
use super::{cdb, opcode, truncate, CmdResult, LogicalUnit, Request, Response, BLOCK_SIZE};

const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0a;
const INFO_EXCEPTIONS: u8 = 0x1c;
const ALL: u8 = 0x3f;

/// Page contents: current (pc 0), changeable (1), default (2).
fn page(lu: &LogicalUnit, code: u8, pc: u8) -> Vec<u8> {
    match code {
        CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = CACHING;
            p[1] = 0x12;
            let wce = match pc {
                0 => lu.wce.load(Ordering::Relaxed),
                _ => true, // changeable mask, and the default
            };
            if wce {
                p[2] |= 0x04;
            }
            p
        }
        CONTROL => {
            let mut p = vec![0u8; 12];
            p[0] = CONTROL;
            p[1] = 0x0a;
            if pc != 1 {
                p[3] = 0x10; // queue algorithm modifier 1: unrestricted reordering
                p[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // busy timeout: unlimited
            }
            p
        }
        _ => {
            let mut p = vec![0u8; 12];
            p[0] = INFO_EXCEPTIONS;
            p[1] = 0x0a;
            p
        }
    }
}

pub fn mode_sense(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let ten = cdb::byte(c, 0) == opcode::MODE_SENSE_10;
    let dbd = cdb::byte(c, 1) & 0x08 != 0;
    let llbaa = ten && cdb::byte(c, 1) & 0x10 != 0;
    let pc = cdb::byte(c, 2) >> 6;
    let code = cdb::byte(c, 2) & 0x3f;
    let subpage = cdb::byte(c, 3);
    let alloc = if ten {
        cdb::be16(c, 7) as u32
    } else {
        cdb::byte(c, 4) as u32
    };
    if pc == 3 {
        return Err(sense::SAVING_PARAMS_UNSUPPORTED);
    }
    if subpage != 0 && !(code == ALL && subpage == 0xff) {
        return Err(sense::invalid_cdb_field(3, None));
    }
    let mut pages = Vec::new();
    match code {
        ALL => {
            for p in [CACHING, CONTROL, INFO_EXCEPTIONS] {
                pages.extend(page(lu, p, pc));
            }
        }
        CACHING | CONTROL | INFO_EXCEPTIONS => pages.extend(page(lu, code, pc)),
        _ => return Err(sense::invalid_cdb_field(2, Some(5))),
    }
    let mut bd = Vec::new();
    if !dbd {
        let blocks = lu.blocks();
        if llbaa {
            bd.extend_from_slice(&blocks.to_be_bytes());
            bd.extend_from_slice(&[0, 0, 0, 0]);
            bd.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
        } else {
            bd.extend_from_slice(&(blocks.min(0xffff_ffff) as u32).to_be_bytes());
            bd.extend_from_slice(&(BLOCK_SIZE as u32).to_be_bytes());
            bd[4] = 0; // density code
        }
    }
    let dsp = 0x10 | if lu.volume.is_read_only() { 0x80 } else { 0 }; // DPOFUA, WP
    let mut d;
    if ten {
        d = vec![0u8; 8];
        d[3] = dsp;
        if llbaa && !bd.is_empty() {
            d[4] = 0x01;
        }
        d[6..8].copy_from_slice(&(bd.len() as u16).to_be_bytes());
        d.extend(bd);
        d.extend(pages);
        let n = (d.len() - 2) as u16;
        d[0..2].copy_from_slice(&n.to_be_bytes());
    } else {
        d = vec![0u8; 4];
        d[2] = dsp;
        d[3] = bd.len() as u8;
        d.extend(bd);
        d.extend(pages);
        d[0] = (d.len() - 1).min(255) as u8;
    }
    Ok(Response::good(truncate(d, alloc)).into())
}

pub fn mode_select(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let ten = cdb::byte(c, 0) == opcode::MODE_SELECT_10;
    let pf = cdb::byte(c, 1) & 0x10 != 0;
    let sp = cdb::byte(c, 1) & 0x01 != 0;
    let len = if ten {
        cdb::be16(c, 7) as usize
    } else {
        cdb::byte(c, 4) as usize
    };
    if sp {
        return Err(sense::invalid_cdb_field(1, Some(0)));
    }
    if len == 0 {
        return Ok(Response::good(Vec::new()).into());
    }
    if !pf {
        return Err(sense::invalid_cdb_field(1, Some(4)));
    }
    let data = req.data_out;
    if data.len() < len {
        return Err(sense::PARAM_LIST_LENGTH_ERROR);
    }
    let data = &data[..len];
    let hdr = if ten { 8 } else { 4 };
    if data.len() < hdr {
        return Err(sense::PARAM_LIST_LENGTH_ERROR);
    }
    let bdl = if ten {
        cdb::be16(data, 6) as usize
    } else {
        data[3] as usize
    };
    let mut at = hdr + bdl;
    if at > data.len() {
        return Err(sense::PARAM_LIST_LENGTH_ERROR);
    }
    let mut new_wce = None;
    while at < data.len() {
        if data.len() - at < 2 {
            return Err(sense::PARAM_LIST_LENGTH_ERROR);
        }
        let code = data[at] & 0x3f;
        if data[at] & 0x40 != 0 {
            return Err(sense::invalid_param_field(at as u16));
        }
        let plen = data[at + 1] as usize + 2;
        if at + plen > data.len() {
            return Err(sense::PARAM_LIST_LENGTH_ERROR);
        }
        let given = &data[at..at + plen];
        let current = page(lu, code, 0);
        let mask = page(lu, code, 1);
        if !matches!(code, CACHING | CONTROL | INFO_EXCEPTIONS) || plen != current.len() {
            return Err(sense::invalid_param_field(at as u16));
        }
        // Every bit outside the changeable mask must equal the current value.
        for i in 2..plen {
            if (given[i] ^ current[i]) & !mask[i] != 0 {
                return Err(sense::invalid_param_field((at + i) as u16));
            }
        }
        if code == CACHING {
            new_wce = Some(given[2] & 0x04 != 0);
        }
        at += plen;
    }
    if let Some(w) = new_wce {
        if lu.wce.swap(w, Ordering::Relaxed) != w {
            lu.raise_ua(sense::MODE_PARAMETERS_CHANGED, Some(req.nexus.id));
        }
    }
    Ok(Response::good(Vec::new()).into())
}
