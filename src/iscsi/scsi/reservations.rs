//! PERSISTENT RESERVE IN / OUT (SPC-4 §5.13, §6.15, §6.16): registrations per initiator
//! port, the six reservation types, and the conflict check every command passes through.
//! State lives in memory for the life of the server (APTPL is not offered).

use super::opcode::*;
use super::sense::{self, status};
use super::{cdb, truncate, CmdResult, LogicalUnit, Nexus, Request, Response};

const WE: u8 = 1;
const EA: u8 = 3;
const WE_RO: u8 = 5;
const EA_RO: u8 = 6;
const WE_AR: u8 = 7;
const EA_AR: u8 = 8;

#[derive(Debug, Clone)]
struct Registration {
    port: String,
    key: u64,
}

#[derive(Debug, Clone)]
struct Reservation {
    holder: String,
    rtype: u8,
}

#[derive(Debug, Default)]
pub struct PrState {
    generation: u32,
    regs: Vec<Registration>,
    res: Option<Reservation>,
}

fn all_registrants(t: u8) -> bool {
    matches!(t, WE_AR | EA_AR)
}

enum Access {
    Read,
    Write,
    Other,
}

fn access(c: &[u8]) -> Access {
    match cdb::byte(c, 0) {
        READ_6 | READ_10 | READ_12 | READ_16 | VERIFY_10 | VERIFY_12 | VERIFY_16 | PRE_FETCH_10
        | PRE_FETCH_16 => Access::Read,
        WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16 | WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12
        | WRITE_AND_VERIFY_16 | COMPARE_AND_WRITE | WRITE_SAME_10 | WRITE_SAME_16 | UNMAP
        | SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16 | MODE_SELECT_6 | MODE_SELECT_10
        | START_STOP_UNIT => Access::Write,
        SERVICE_ACTION_IN_16 if cdb::byte(c, 1) & 0x1f == SA_GET_LBA_STATUS => Access::Read,
        ORWRITE_16 => Access::Write,
        _ => Access::Other,
    }
}

impl PrState {
    fn reg(&self, port: &str) -> Option<&Registration> {
        self.regs.iter().find(|r| r.port == port)
    }

    fn is_holder(&self, port: &str) -> bool {
        match &self.res {
            Some(r) if all_registrants(r.rtype) => self.reg(port).is_some(),
            Some(r) => r.holder == port,
            None => false,
        }
    }

    /// Whether `nexus` may not run `cdb` under the current reservation.
    pub fn conflict(&self, nexus: &Nexus, c: &[u8]) -> bool {
        let Some(res) = &self.res else { return false };
        let port = nexus.port_name();
        if self.is_holder(&port) {
            return false;
        }
        let registered = self.reg(&port).is_some();
        let a = access(c);
        match res.rtype {
            WE => matches!(a, Access::Write),
            EA => matches!(a, Access::Write | Access::Read),
            WE_RO | WE_AR => !registered && matches!(a, Access::Write),
            EA_RO | EA_AR => !registered && matches!(a, Access::Write | Access::Read),
            _ => false,
        }
    }

    pub fn has_registrations(&self) -> bool {
        !self.regs.is_empty()
    }

    /// LUN reset: the reservation survives (it is persistent), so nothing to do; kept as a
    /// hook so the reset path names what it deliberately leaves alone.
    pub fn reset(&mut self) {}
}

fn transport_id(port: &str) -> Vec<u8> {
    let mut name = port.as_bytes().to_vec();
    name.push(0);
    while name.len() % 4 != 0 {
        name.push(0);
    }
    let mut t = vec![0x40 | 0x05, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend(name);
    t
}

pub fn persistent_reserve_in(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let sa = cdb::byte(c, 1) & 0x1f;
    let alloc = cdb::be16(c, 7) as u32;
    let pr = lu.pr.lock();
    let mut d = Vec::new();
    match sa {
        PRIN_READ_KEYS => {
            d.extend_from_slice(&pr.generation.to_be_bytes());
            d.extend_from_slice(&((pr.regs.len() * 8) as u32).to_be_bytes());
            for r in &pr.regs {
                d.extend_from_slice(&r.key.to_be_bytes());
            }
        }
        PRIN_READ_RESERVATION => {
            d.extend_from_slice(&pr.generation.to_be_bytes());
            match &pr.res {
                Some(res) => {
                    d.extend_from_slice(&16u32.to_be_bytes());
                    let key = if all_registrants(res.rtype) {
                        0
                    } else {
                        pr.reg(&res.holder).map_or(0, |r| r.key)
                    };
                    d.extend_from_slice(&key.to_be_bytes());
                    d.extend_from_slice(&[0, 0, 0, 0, 0, res.rtype & 0x0f, 0, 0]);
                }
                None => d.extend_from_slice(&0u32.to_be_bytes()),
            }
        }
        PRIN_REPORT_CAPABILITIES => {
            d = vec![0u8; 8];
            d[1] = 8;
            d[2] = 0x10; // CRH
            d[3] = 0x80; // TMV: the type mask is valid
            d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
            d[5] = 0x01;
        }
        PRIN_READ_FULL_STATUS => {
            d.extend_from_slice(&pr.generation.to_be_bytes());
            d.extend_from_slice(&[0, 0, 0, 0]);
            for r in &pr.regs {
                let mut e = vec![0u8; 24];
                e[0..8].copy_from_slice(&r.key.to_be_bytes());
                if pr.is_holder(&r.port) {
                    e[12] = 0x01;
                    e[13] = pr.res.as_ref().map_or(0, |x| x.rtype & 0x0f);
                }
                e[18..20].copy_from_slice(&1u16.to_be_bytes());
                let t = transport_id(&r.port);
                e[20..24].copy_from_slice(&(t.len() as u32).to_be_bytes());
                e.extend(t);
                d.extend(e);
            }
            let n = (d.len() - 8) as u32;
            d[4..8].copy_from_slice(&n.to_be_bytes());
        }
        _ => return Err(sense::invalid_cdb_field(1, Some(4))),
    }
    Ok(Response::good(truncate(d, alloc)).into())
}

pub fn persistent_reserve_out(lu: &LogicalUnit, req: &Request) -> CmdResult {
    let c = req.cdb;
    let sa = cdb::byte(c, 1) & 0x1f;
    let scope = cdb::byte(c, 2) >> 4;
    let rtype = cdb::byte(c, 2) & 0x0f;
    let plen = cdb::be32(c, 5) as usize;
    if sa > PROUT_REGISTER_AND_MOVE {
        return Err(sense::invalid_cdb_field(1, Some(4)));
    }
    if plen != 24 {
        return Err(sense::PARAM_LIST_LENGTH_ERROR);
    }
    let p = req
        .data_out
        .get(..24)
        .ok_or(sense::PARAM_LIST_LENGTH_ERROR)?;
    let key = cdb::be64(p, 0);
    let sa_key = cdb::be64(p, 8);
    let flags = p[20];
    if flags & 0x08 != 0 || flags & 0x01 != 0 {
        // SPEC_I_PT and APTPL are not offered.
        return Err(sense::invalid_param_field(20));
    }
    let port = req.nexus.port_name();
    let conflict = || {
        Ok(Response::status(status::RESERVATION_CONFLICT)
            .consumed(24)
            .into())
    };
    let good = || Ok(Response::good(Vec::new()).consumed(24).into());
    let valid_type = |t: u8| matches!(t, WE | EA | WE_RO | EA_RO | WE_AR | EA_AR);
    let mut pr = lu.pr.lock();
    let mine = pr.reg(&port).map(|r| r.key);
    match sa {
        // REGISTER, REGISTER AND IGNORE EXISTING KEY
        PROUT_REGISTER | PROUT_REGISTER_AND_IGNORE_EXISTING_KEY => {
            if sa == PROUT_REGISTER && key != mine.unwrap_or(0) {
                return conflict();
            }
            match (mine, sa_key) {
                (None, 0) => {}
                (None, k) => pr.regs.push(Registration {
                    port: port.clone(),
                    key: k,
                }),
                (Some(_), 0) => {
                    let was_holder = pr.is_holder(&port);
                    pr.regs.retain(|r| r.port != port);
                    if was_holder {
                        let t = pr.res.as_ref().map_or(0, |r| r.rtype);
                        if !all_registrants(t) || pr.regs.is_empty() {
                            pr.res = None;
                            if matches!(t, WE_RO | EA_RO) {
                                release_ua(lu, &pr, &port);
                            }
                        }
                    }
                }
                (Some(_), k) => {
                    if let Some(r) = pr.regs.iter_mut().find(|r| r.port == port) {
                        r.key = k;
                    }
                }
            }
            pr.generation = pr.generation.wrapping_add(1);
            good()
        }
        // RESERVE
        PROUT_RESERVE => {
            if mine != Some(key) {
                return conflict();
            }
            if scope != 0 || !valid_type(rtype) {
                return Err(sense::invalid_cdb_field(2, None));
            }
            match &pr.res {
                None => {
                    pr.res = Some(Reservation {
                        holder: port,
                        rtype,
                    });
                    good()
                }
                Some(r) if pr.is_holder(&port) && r.rtype == rtype => good(),
                Some(_) => conflict(),
            }
        }
        // RELEASE
        PROUT_RELEASE => {
            if mine != Some(key) {
                return conflict();
            }
            let Some(r) = pr.res.clone() else {
                return good();
            };
            if !pr.is_holder(&port) {
                return good();
            }
            if scope != 0 || r.rtype != rtype {
                return Err(sense::INVALID_RELEASE_OF_PR);
            }
            pr.res = None;
            if matches!(r.rtype, WE_RO | EA_RO | WE_AR | EA_AR) {
                release_ua(lu, &pr, &port);
            }
            good()
        }
        // CLEAR
        PROUT_CLEAR => {
            if mine != Some(key) {
                return conflict();
            }
            let others: Vec<String> = pr
                .regs
                .iter()
                .filter(|r| r.port != port)
                .map(|r| r.port.clone())
                .collect();
            pr.regs.clear();
            pr.res = None;
            pr.generation = pr.generation.wrapping_add(1);
            drop(pr);
            ua_to_ports(lu, &others, sense::RESERVATIONS_PREEMPTED);
            good()
        }
        // PREEMPT, PREEMPT AND ABORT
        PROUT_PREEMPT | PROUT_PREEMPT_AND_ABORT => {
            if mine != Some(key) {
                return conflict();
            }
            if scope != 0 || !valid_type(rtype) {
                return Err(sense::invalid_cdb_field(2, None));
            }
            let res = pr.res.clone();
            let removed: Vec<String>;
            match res {
                Some(r) if all_registrants(r.rtype) => {
                    if sa_key == 0 {
                        removed = pr
                            .regs
                            .iter()
                            .filter(|x| x.port != port)
                            .map(|x| x.port.clone())
                            .collect();
                        pr.regs.retain(|x| x.port == port);
                        pr.res = Some(Reservation {
                            holder: port.clone(),
                            rtype,
                        });
                    } else {
                        removed = remove_key(&mut pr, sa_key, &port);
                    }
                }
                Some(r) if pr.reg(&r.holder).map(|x| x.key) == Some(sa_key) => {
                    removed = remove_key(&mut pr, sa_key, &port);
                    pr.res = Some(Reservation {
                        holder: port.clone(),
                        rtype,
                    });
                }
                _ => {
                    if sa_key == 0 {
                        return Err(sense::invalid_param_field(8));
                    }
                    if !pr.regs.iter().any(|x| x.key == sa_key) {
                        return conflict();
                    }
                    removed = remove_key(&mut pr, sa_key, &port);
                }
            }
            pr.generation = pr.generation.wrapping_add(1);
            drop(pr);
            ua_to_ports(lu, &removed, sense::REGISTRATIONS_PREEMPTED);
            good()
        }
        _ => Err(sense::invalid_cdb_field(1, Some(4))),
    }
}

/// Removes registrations with `key` (other than `keep`'s own); returns their ports.
fn remove_key(pr: &mut PrState, key: u64, keep: &str) -> Vec<String> {
    let removed: Vec<String> = pr
        .regs
        .iter()
        .filter(|r| r.key == key && r.port != keep)
        .map(|r| r.port.clone())
        .collect();
    pr.regs.retain(|r| r.key != key || r.port == keep);
    removed
}

fn release_ua(lu: &LogicalUnit, pr: &PrState, except: &str) {
    let ports: Vec<String> = pr
        .regs
        .iter()
        .filter(|r| r.port != except)
        .map(|r| r.port.clone())
        .collect();
    ua_to_ports(lu, &ports, sense::RESERVATIONS_RELEASED);
}

fn ua_to_ports(lu: &LogicalUnit, ports: &[String], s: sense::Sense) {
    for (id, port) in lu.nexus_ports() {
        if ports.contains(&port) {
            lu.raise_ua_for(id, s);
        }
    }
}
