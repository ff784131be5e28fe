//! SCSI operation codes (SPC-4, SBC-3) the logical unit answers, by their standard names,
//! and the service actions of the opcodes that carry one. Everything that looks at a CDB's
//! operation code matches on these names, never on the numbers.

pub const TEST_UNIT_READY: u8 = 0x00;
pub const REQUEST_SENSE: u8 = 0x03;
pub const READ_6: u8 = 0x08;
pub const WRITE_6: u8 = 0x0a;
pub const INQUIRY: u8 = 0x12;
pub const MODE_SELECT_6: u8 = 0x15;
pub const RESERVE_6: u8 = 0x16;
pub const RELEASE_6: u8 = 0x17;
pub const MODE_SENSE_6: u8 = 0x1a;
pub const START_STOP_UNIT: u8 = 0x1b;
pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
pub const READ_CAPACITY_10: u8 = 0x25;
pub const READ_10: u8 = 0x28;
pub const WRITE_10: u8 = 0x2a;
pub const WRITE_AND_VERIFY_10: u8 = 0x2e;
pub const VERIFY_10: u8 = 0x2f;
pub const PRE_FETCH_10: u8 = 0x34;
pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
pub const READ_DEFECT_DATA_10: u8 = 0x37;
pub const WRITE_SAME_10: u8 = 0x41;
pub const UNMAP: u8 = 0x42;
pub const MODE_SELECT_10: u8 = 0x55;
pub const RESERVE_10: u8 = 0x56;
pub const RELEASE_10: u8 = 0x57;
pub const MODE_SENSE_10: u8 = 0x5a;
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
/// Variable-length CDBs (not supported: its control byte is elsewhere).
pub const VARIABLE_LENGTH: u8 = 0x7f;
pub const READ_16: u8 = 0x88;
pub const COMPARE_AND_WRITE: u8 = 0x89;
pub const WRITE_16: u8 = 0x8a;
pub const ORWRITE_16: u8 = 0x8b;
pub const WRITE_AND_VERIFY_16: u8 = 0x8e;
pub const VERIFY_16: u8 = 0x8f;
pub const PRE_FETCH_16: u8 = 0x90;
pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
pub const WRITE_SAME_16: u8 = 0x93;
/// SERVICE ACTION IN (16): READ CAPACITY (16), GET LBA STATUS.
pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
pub const REPORT_LUNS: u8 = 0xa0;
/// MAINTENANCE IN: REPORT SUPPORTED OPERATION CODES.
pub const MAINTENANCE_IN: u8 = 0xa3;
pub const READ_12: u8 = 0xa8;
pub const WRITE_12: u8 = 0xaa;
pub const WRITE_AND_VERIFY_12: u8 = 0xae;
pub const VERIFY_12: u8 = 0xaf;
pub const READ_DEFECT_DATA_12: u8 = 0xb7;

/// Service actions of SERVICE ACTION IN (16).
pub const SA_READ_CAPACITY_16: u8 = 0x10;
pub const SA_GET_LBA_STATUS: u8 = 0x12;
/// Service action of MAINTENANCE IN.
pub const SA_REPORT_SUPPORTED_OPCODES: u8 = 0x0c;

/// Service actions of PERSISTENT RESERVE IN (SPC-4 §6.15.1).
pub const PRIN_READ_KEYS: u8 = 0x00;
pub const PRIN_READ_RESERVATION: u8 = 0x01;
pub const PRIN_REPORT_CAPABILITIES: u8 = 0x02;
pub const PRIN_READ_FULL_STATUS: u8 = 0x03;

/// Service actions of PERSISTENT RESERVE OUT (SPC-4 §6.16.2).
pub const PROUT_REGISTER: u8 = 0x00;
pub const PROUT_RESERVE: u8 = 0x01;
pub const PROUT_RELEASE: u8 = 0x02;
pub const PROUT_CLEAR: u8 = 0x03;
pub const PROUT_PREEMPT: u8 = 0x04;
pub const PROUT_PREEMPT_AND_ABORT: u8 = 0x05;
pub const PROUT_REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 0x06;
/// REGISTER AND MOVE: the last service action SPC-4 defines (not supported).
pub const PROUT_REGISTER_AND_MOVE: u8 = 0x07;
