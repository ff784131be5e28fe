//! The SCSI block device (SPC-4 / SBC-3) behind each target's LUN 0: one `LogicalUnit` per
//! exported volume, executing CDBs against the store's Volume API.
//!
//! `execute` is blocking (the volume's calls are pread/pwrite/fsync) and must run on the
//! blocking pool, never on a reactor thread. It handles unit attentions and reservation
//! conflicts, then dispatches to one file per command family. Large reads are not executed
//! here: they come back as a `ReadPlan` so the connection can stream them in pieces.
//! Nothing in this module knows about iSCSI PDUs.

pub mod capacity;
pub mod inquiry;
pub mod misc;
pub mod mode;
pub mod reservations;
pub mod rw;
pub mod sense;
pub mod sync;
pub mod unmap;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::store::{ErrorKind, StoreError, Volume, Wait};

use super::cdb;
use sense::{status, Sense};

/// Logical block size reported to initiators. Firmware expects 512. The store's 4 KiB block
/// is only hinted (optimal transfer granularity in VPD 0xB0): reporting it as the physical
/// block size makes GET LBA STATUS answers depend on physical-block rounding.
pub const BLOCK_SIZE: u64 = 512;
pub const PHYS_EXPONENT: u8 = 0;
/// Largest transfer of one command, in blocks (VPD 0xB0); bounds per-command write buffers.
pub const MAX_TRANSFER_BLOCKS: u32 = 64 * 1024; // 32 MiB
/// Reads may be larger (firmware reads 10 MB at once and never asks VPD 0xB0); they are
/// streamed, so this only bounds nonsense.
pub const MAX_READ_BLOCKS: u64 = 1 << 24; // 8 GiB
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 255;
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
pub const MAX_WRITE_SAME_BLOCKS: u64 = 1 << 22;

/// Strings an initiator sees (INQUIRY; EDK2 names its boot entry after vendor and product).
#[derive(Debug, Clone)]
pub struct Identity {
    pub vendor: String,
    pub product: String,
    pub revision: String,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            vendor: "STRATA".into(),
            product: "Strata Volume".into(),
            revision: "0001".into(),
        }
    }
}

/// One I_T nexus (an iSCSI session) as the LU sees it.
#[derive(Debug, Clone)]
pub struct Nexus {
    pub id: u64,
    pub initiator: String,
    pub isid: [u8; 6],
}

impl Nexus {
    /// The initiator port name, `<iqn>,i,0x<isid>` (RFC 7143 §4.2.7.1 / SPC-4 TransportID).
    pub fn port_name(&self) -> String {
        let mut s = format!("{},i,0x", self.initiator);
        for b in self.isid {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

/// The answer to a command executed to completion.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u8,
    pub sense: Option<Sense>,
    /// Data-In, at its natural length (the connection trims to the expected length).
    pub data: Vec<u8>,
    /// Bytes of Data-Out the command would consume (for the residual count).
    pub out_len: usize,
}

impl Response {
    pub fn good(data: Vec<u8>) -> Response {
        Response {
            status: status::GOOD,
            sense: None,
            data,
            out_len: 0,
        }
    }
    pub fn check(sense: Sense) -> Response {
        Response {
            status: status::CHECK_CONDITION,
            sense: Some(sense),
            data: Vec::new(),
            out_len: 0,
        }
    }
    pub fn status(status: u8) -> Response {
        Response {
            status,
            sense: None,
            data: Vec::new(),
            out_len: 0,
        }
    }
    pub fn consumed(mut self, n: usize) -> Response {
        self.out_len = n;
        self
    }
}

/// A read to stream: byte offset and length on the volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPlan {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug)]
pub enum Outcome {
    Done(Response),
    Read(ReadPlan),
    /// Asked not to wait, the command would have had to; nothing was done.
    WouldBlock,
}

impl From<Response> for Outcome {
    fn from(r: Response) -> Outcome {
        Outcome::Done(r)
    }
}

pub type CmdResult = Result<Outcome, Sense>;

/// One command as the LU receives it.
pub struct Request<'a> {
    pub cdb: &'a [u8],
    pub data_out: &'a [u8],
    pub nexus: &'a Nexus,
    /// `Wait::No`: a write that would wait for the volume comes back as
    /// `Outcome::WouldBlock` instead, having done nothing.
    pub wait: Wait,
}

/// The sense condition for a failed store call.
pub fn store_sense(e: &StoreError, writing: bool) -> Sense {
    match e.kind() {
        ErrorKind::OutOfRange => sense::LBA_OUT_OF_RANGE,
        ErrorKind::ReadOnly => sense::WRITE_PROTECTED,
        ErrorKind::NoSpace => sense::SPACE_ALLOCATION_FAILED,
        ErrorKind::Integrity | ErrorKind::Io if !writing => sense::UNRECOVERED_READ_ERROR,
        ErrorKind::Integrity | ErrorKind::Io => sense::WRITE_ERROR,
        _ => sense::INTERNAL_TARGET_FAILURE,
    }
}

/// An exported volume as a SCSI logical unit, shared by every session of its target.
pub struct LogicalUnit {
    pub volume: Arc<Volume>,
    pub target_iqn: String,
    pub identity: Identity,
    /// Unit serial number (VPD 0x80) and the NAA identifier (VPD 0x83), derived from the
    /// volume name so that they are stable across restarts and unique per volume.
    pub serial: String,
    pub naa: [u8; 16],
    /// Write cache enabled (caching mode page). With it off, every write is flushed.
    pub wce: AtomicBool,
    /// Pending unit attentions, per nexus.
    ua: Mutex<HashMap<u64, (String, VecDeque<Sense>)>>,
    /// Nexuses that hold PREVENT MEDIUM REMOVAL.
    prevent: Mutex<HashSet<u64>>,
    pub pr: Mutex<reservations::PrState>,
    /// Serialises COMPARE AND WRITE and ORWRITE (read-modify-write commands).
    caw: Mutex<()>,
    /// SPC-2 RESERVE(6/10) holder (nexus id).
    legacy_reservation: Mutex<Option<u64>>,
    /// The recording of this clone's first boot, if it is the one traced (store/trace.rs).
    pub trace: std::sync::OnceLock<Arc<crate::store::trace::Recording>>,
}

fn fnv1a(data: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

impl LogicalUnit {
    pub fn new(volume: Arc<Volume>, target_iqn: &str, identity: Identity) -> LogicalUnit {
        let name = volume.name().as_bytes().to_vec();
        let h1 = fnv1a(&name, 1);
        let h2 = fnv1a(&name, 2);
        // NAA 6 (IEEE Registered Extended): 4-bit NAA, 24-bit OUI, 36+64 bits vendor specific.
        // Locally administered: OUI 0x000000 is avoided by using a fixed private value.
        let mut naa = [0u8; 16];
        naa[..8].copy_from_slice(&h1.to_be_bytes());
        naa[8..].copy_from_slice(&h2.to_be_bytes());
        naa[0] = 0x60 | 0x0a; // NAA 6, then OUI 0xa5_7a_7a ("strata")
        naa[1] = 0x57;
        naa[2] = 0xa7;
        naa[3] = (naa[3] & 0x0f) | 0xa0;
        LogicalUnit {
            volume,
            target_iqn: target_iqn.to_string(),
            identity,
            serial: format!("{h1:016x}"),
            naa,
            wce: AtomicBool::new(true),
            ua: Mutex::new(HashMap::new()),
            prevent: Mutex::new(HashSet::new()),
            pr: Mutex::new(reservations::PrState::default()),
            caw: Mutex::new(()),
            legacy_reservation: Mutex::new(None),
            trace: Default::default(),
        }
    }

    pub fn blocks(&self) -> u64 {
        self.volume.len() / BLOCK_SIZE
    }

    /// A new session: it starts with the power-on unit attention.
    pub fn attach(&self, nexus: &Nexus) {
        self.ua.lock().insert(
            nexus.id,
            (nexus.port_name(), VecDeque::from([sense::POWER_ON_RESET])),
        );
    }

    /// A session ended: its attentions and medium-removal prevention go with it.
    pub fn detach(&self, nexus: &Nexus) {
        self.ua.lock().remove(&nexus.id);
        self.prevent.lock().remove(&nexus.id);
        // I_T nexus loss releases an SPC-2 reservation.
        let mut r = self.legacy_reservation.lock();
        if *r == Some(nexus.id) {
            *r = None;
        }
    }

    /// Queues a unit attention for every nexus except `except`.
    pub fn raise_ua(&self, s: Sense, except: Option<u64>) {
        for (id, (_, q)) in self.ua.lock().iter_mut() {
            if Some(*id) != except && !q.contains(&s) && q.len() < 8 {
                q.push_back(s);
            }
        }
    }

    pub fn raise_ua_for(&self, nexus: u64, s: Sense) {
        if let Some((_, q)) = self.ua.lock().get_mut(&nexus) {
            if !q.contains(&s) && q.len() < 8 {
                q.push_back(s);
            }
        }
    }

    pub(crate) fn take_ua(&self, nexus: u64) -> Option<Sense> {
        self.ua
            .lock()
            .get_mut(&nexus)
            .and_then(|(_, q)| q.pop_front())
    }

    /// (nexus id, initiator port name) of every attached session.
    pub(crate) fn nexus_ports(&self) -> Vec<(u64, String)> {
        self.ua
            .lock()
            .iter()
            .map(|(id, (port, _))| (*id, port.clone()))
            .collect()
    }

    /// LUN RESET / TARGET RESET: mode pages to defaults, medium-removal prevention
    /// cleared (persistent reservations survive), and every nexus told, the resetting one
    /// included (SAM-5 §6.3.2).
    pub fn reset(&self) {
        self.wce.store(true, Ordering::Relaxed);
        self.prevent.lock().clear();
        *self.legacy_reservation.lock() = None;
        self.pr.lock().reset();
        self.raise_ua(sense::BUS_DEVICE_RESET, None);
    }

    /// Range check in blocks: LBA OUT OF RANGE when `[lba, lba+blocks)` leaves the volume.
    pub fn check_range(&self, lba: u64, blocks: u64) -> Result<(), Sense> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks() => Ok(()),
            _ => Err(sense::LBA_OUT_OF_RANGE),
        }
    }

    /// Executes one command (blocking).
    pub fn execute(&self, req: &Request) -> Outcome {
        match self.dispatch(req) {
            Ok(o) => o,
            Err(s) => Outcome::Done(Response::check(s)),
        }
    }

    fn dispatch(&self, req: &Request) -> CmdResult {
        let c = req.cdb;
        let op = cdb::byte(c, 0);
        // Unit attentions are reported to everything except INQUIRY, REPORT LUNS and
        // REQUEST SENSE (SPC-4 §5.14).
        if !matches!(op, 0x12 | 0xa0 | 0x03) {
            if let Some(s) = self.take_ua(req.nexus.id) {
                return Err(s);
            }
        }
        if self.pr.lock().conflict(req.nexus, c) || self.legacy_conflict(req.nexus.id, op) {
            return Ok(Response::status(status::RESERVATION_CONFLICT).into());
        }
        // NACA and LINK in the control byte are not supported.
        if let Some(len) = cdb::cdb_len(op) {
            if cdb::byte(c, len - 1) & 0x05 != 0 && op != 0x7f {
                return Err(sense::invalid_cdb_field(len as u16 - 1, None));
            }
        }
        match op {
            0x00 => Ok(Response::good(Vec::new()).into()),
            0x03 => misc::request_sense(self, req),
            0x12 => inquiry::inquiry(self, req),
            0x1a | 0x5a => mode::mode_sense(self, req),
            0x15 | 0x55 => mode::mode_select(self, req),
            0x1b => misc::start_stop(self, req),
            0x1e => misc::prevent_allow(self, req),
            0x25 => capacity::read_capacity10(self, req),
            0x9e => match cdb::byte(c, 1) & 0x1f {
                0x10 => capacity::read_capacity16(self, req),
                0x12 => misc::get_lba_status(self, req),
                _ => Err(sense::invalid_cdb_field(1, Some(4))),
            },
            0x08 | 0x28 | 0xa8 | 0x88 => rw::read(self, req),
            0x0a | 0x2a | 0xaa | 0x8a => rw::write(self, req),
            0x2f | 0xaf | 0x8f => rw::verify(self, req),
            0x2e | 0xae | 0x8e => rw::write_and_verify(self, req),
            0x89 => rw::compare_and_write(self, req),
            0x34 | 0x90 => sync::prefetch(self, req),
            0x35 | 0x91 => sync::synchronize_cache(self, req),
            0x42 => unmap::unmap(self, req),
            0x41 | 0x93 => unmap::write_same(self, req),
            0xa0 => misc::report_luns(self, req),
            0xa3 => match cdb::byte(c, 1) & 0x1f {
                0x0c => misc::report_supported_opcodes(self, req),
                _ => Err(sense::invalid_cdb_field(1, Some(4))),
            },
            0x16 | 0x56 => self.reserve(req),
            0x17 | 0x57 => self.release(req),
            0x8b => rw::orwrite(self, req),
            0x37 | 0xb7 => misc::read_defect_data(self, req),
            0x5e => reservations::persistent_reserve_in(self, req),
            0x5f => reservations::persistent_reserve_out(self, req),
            _ => Err(sense::INVALID_OPCODE),
        }
    }

    /// Whether an SPC-2 reservation held by another nexus blocks `op`.
    fn legacy_conflict(&self, nexus: u64, op: u8) -> bool {
        match *self.legacy_reservation.lock() {
            Some(holder) if holder != nexus => {
                !matches!(op, 0x12 | 0xa0 | 0x03 | 0x17 | 0x57 | 0x00 | 0xa3)
            }
            _ => false,
        }
    }

    /// RESERVE(6/10): an SPC-2 reservation of the whole LU.
    fn reserve(&self, req: &Request) -> CmdResult {
        if cdb::byte(req.cdb, 0) == 0x56 && cdb::byte(req.cdb, 1) & 0x03 != 0 {
            return Err(sense::invalid_cdb_field(1, None)); // third-party / LONGID
        }
        if self.pr.lock().has_registrations() {
            return Ok(Response::status(status::RESERVATION_CONFLICT).into());
        }
        let mut r = self.legacy_reservation.lock();
        match *r {
            Some(h) if h != req.nexus.id => {
                Ok(Response::status(status::RESERVATION_CONFLICT).into())
            }
            _ => {
                *r = Some(req.nexus.id);
                Ok(Response::good(Vec::new()).into())
            }
        }
    }

    /// RELEASE(6/10): by the holder; a no-op from anyone else.
    fn release(&self, req: &Request) -> CmdResult {
        let mut r = self.legacy_reservation.lock();
        if *r == Some(req.nexus.id) {
            *r = None;
        }
        Ok(Response::good(Vec::new()).into())
    }

    pub(crate) fn prevent_set(&self, nexus: u64, on: bool) {
        let mut p = self.prevent.lock();
        if on {
            p.insert(nexus);
        } else {
            p.remove(&nexus);
        }
    }

    pub(crate) fn prevented(&self) -> bool {
        !self.prevent.lock().is_empty()
    }

    pub(crate) fn caw_lock(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.caw.lock()
    }
}

/// Executes a command addressed to a LUN that does not exist (only LUN 0 does).
pub fn execute_without_lun(req: &Request) -> Response {
    let c = req.cdb;
    match cdb::byte(c, 0) {
        // INQUIRY: peripheral qualifier 3, "not capable of supporting a device here".
        0x12 if cdb::byte(c, 1) & 1 == 0 => {
            let mut d = vec![0u8; 36];
            d[0] = 0x7f;
            d[2] = 0x06;
            d[3] = 0x12;
            d[4] = 31;
            Response::good(d)
        }
        0xa0 => {
            let mut d = vec![0u8; 16];
            d[3] = 8;
            Response::good(d)
        }
        0x03 => Response::good(sense::LUN_NOT_SUPPORTED.fixed()),
        _ => Response::check(sense::LUN_NOT_SUPPORTED),
    }
}

/// Copies `data` cut to `alloc` bytes (allocation length semantics).
pub fn truncate(mut data: Vec<u8>, alloc: u32) -> Vec<u8> {
    data.truncate(alloc as usize);
    data
}
