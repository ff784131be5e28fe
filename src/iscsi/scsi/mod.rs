//! The SCSI block device (SPC-4 / SBC-3) behind each target's LUN 0: one `LogicalUnit` per
//! exported volume, executing CDBs against the store's Volume API.
//!
//! `execute` is blocking (the volume's calls are pread/pwrite/fsync) and must run on the
//! blocking pool, never on a reactor thread. It handles unit attentions and reservation
//! conflicts, then dispatches to one file per command family. Large reads are not executed
//! here: they come back as a `ReadPlan` so the connection can stream them in pieces.
//! Nothing in this module knows about iSCSI PDUs. Opcodes have their names in `opcode.rs`.

pub mod capacity;
pub mod inquiry;
pub mod misc;
pub mod mode;
pub mod opcode;
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
use opcode::*;
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
        if !matches!(op, INQUIRY | REPORT_LUNS | REQUEST_SENSE) {
            if let Some(s) = self.take_ua(req.nexus.id) {
                return Err(s);
            }
        }
        if self.pr.lock().conflict(req.nexus, c) || self.legacy_conflict(req.nexus.id, op) {
            return Ok(Response::status(status::RESERVATION_CONFLICT).into());
        }
        // NACA and LINK in the control byte are not supported.
        if let Some(len) = cdb::cdb_len(op) {
            if cdb::byte(c, len - 1) & 0x05 != 0 && op != VARIABLE_LENGTH {
                return Err(sense::invalid_cdb_field(len as u16 - 1, None));
            }
        }
        match op {
            TEST_UNIT_READY => Ok(Response::good(Vec::new()).into()),
            REQUEST_SENSE => misc::request_sense(self, req),
            INQUIRY => inquiry::inquiry(self, req),
            MODE_SENSE_6 | MODE_SENSE_10 => mode::mode_sense(self, req),
            MODE_SELECT_6 | MODE_SELECT_10 => mode::mode_select(self, req),
            START_STOP_UNIT => misc::start_stop(self, req),
            PREVENT_ALLOW_MEDIUM_REMOVAL => misc::prevent_allow(self, req),
            READ_CAPACITY_10 => capacity::read_capacity10(self, req),
            SERVICE_ACTION_IN_16 => match cdb::byte(c, 1) & 0x1f {
                SA_READ_CAPACITY_16 => capacity::read_capacity16(self, req),
                SA_GET_LBA_STATUS => misc::get_lba_status(self, req),
                _ => Err(sense::invalid_cdb_field(1, Some(4))),
            },
            READ_6 | READ_10 | READ_12 | READ_16 => rw::read(self, req),
            WRITE_6 | WRITE_10 | WRITE_12 | WRITE_16 => rw::write(self, req),
            VERIFY_10 | VERIFY_12 | VERIFY_16 => rw::verify(self, req),
            WRITE_AND_VERIFY_10 | WRITE_AND_VERIFY_12 | WRITE_AND_VERIFY_16 => {
                rw::write_and_verify(self, req)
            }
            COMPARE_AND_WRITE => rw::compare_and_write(self, req),
            PRE_FETCH_10 | PRE_FETCH_16 => sync::prefetch(self, req),
            SYNCHRONIZE_CACHE_10 | SYNCHRONIZE_CACHE_16 => sync::synchronize_cache(self, req),
            UNMAP => unmap::unmap(self, req),
            WRITE_SAME_10 | WRITE_SAME_16 => unmap::write_same(self, req),
            REPORT_LUNS => misc::report_luns(self, req),
            MAINTENANCE_IN => match cdb::byte(c, 1) & 0x1f {
                SA_REPORT_SUPPORTED_OPCODES => misc::report_supported_opcodes(self, req),
                _ => Err(sense::invalid_cdb_field(1, Some(4))),
            },
            RESERVE_6 | RESERVE_10 => self.reserve(req),
            RELEASE_6 | RELEASE_10 => self.release(req),
            ORWRITE_16 => rw::orwrite(self, req),
            READ_DEFECT_DATA_10 | READ_DEFECT_DATA_12 => misc::read_defect_data(self, req),
            PERSISTENT_RESERVE_IN => reservations::persistent_reserve_in(self, req),
            PERSISTENT_RESERVE_OUT => reservations::persistent_reserve_out(self, req),
            _ => Err(sense::INVALID_OPCODE),
        }
    }

    /// Whether an SPC-2 reservation held by another nexus blocks `op`.
    fn legacy_conflict(&self, nexus: u64, op: u8) -> bool {
        match *self.legacy_reservation.lock() {
            Some(holder) if holder != nexus => !matches!(
                op,
                INQUIRY
                    | REPORT_LUNS
                    | REQUEST_SENSE
                    | RELEASE_6
                    | RELEASE_10
                    | TEST_UNIT_READY
                    | MAINTENANCE_IN
            ),
            _ => false,
        }
    }

    /// RESERVE(6/10): an SPC-2 reservation of the whole LU.
    fn reserve(&self, req: &Request) -> CmdResult {
        if cdb::byte(req.cdb, 0) == RESERVE_10 && cdb::byte(req.cdb, 1) & 0x03 != 0 {
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
        // Peripheral qualifier 3, "not capable of supporting a device here".
        INQUIRY if cdb::byte(c, 1) & 1 == 0 => {
            let mut d = vec![0u8; 36];
            d[0] = 0x7f;
            d[2] = 0x06;
            d[3] = 0x12;
            d[4] = 31;
            Response::good(d)
        }
        REPORT_LUNS => {
            let mut d = vec![0u8; 16];
            d[3] = 8;
            Response::good(d)
        }
        REQUEST_SENSE => Response::good(sense::LUN_NOT_SUPPORTED.fixed()),
        _ => Response::check(sense::LUN_NOT_SUPPORTED),
    }
}

/// Copies `data` cut to `alloc` bytes (allocation length semantics).
pub fn truncate(mut data: Vec<u8>, alloc: u32) -> Vec<u8> {
    data.truncate(alloc as usize);
    data
}
