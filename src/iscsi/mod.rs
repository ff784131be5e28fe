//! The native iSCSI target (RFC 7143, ErrorRecoveryLevel 0) that serves exported volumes.
//!
//! Map of this directory, bottom up:
//! - `digest.rs`  CRC32C digests; `pdu.rs` PDU framing (pure); `text.rs` key=value negotiation
//! - `cdb.rs`     CDB field decoding; `scsi/` the block device, one file per command family
//! - `exports.rs` which volume is served as which target to which initiators (the type, its
//!   checks, the server's cached table; stored by the catalog, read through `ExportSource`)
//! - `login.rs`   the login state machine, CHAP and the ACL; `session.rs` the session table
//! - `wire.rs`    PDUs in from and out to a socket; `window.rs` the CmdSN window
//! - `command.rs` one SCSI command from CDB to Data-In and status
//! - `data_out.rs` a connection's writes collecting their Data-Out (R2Ts, order checks)
//! - `connection.rs` one TCP connection's loop; `tmf.rs` task management
//! - `latency.rs` the histogram of the server's read service times (logged at shutdown)
//! - `prelogin.rs` the budget of connections not yet logged in (floods evict themselves)
//! - `context.rs` what every connection shares: options, tables, open units, export changes
//! - `server.rs`  listeners and graceful shutdown; `control.rs` the control socket through
//!   which `export`/`unexport` learn a change was applied (the commands themselves are in
//!   the binary's `src/cli/iscsi.rs`)

pub mod cdb;
mod command;
pub mod connection;
pub mod context;
pub mod control;
mod data_out;
pub mod digest;
pub mod exports;
pub mod latency;
pub mod login;
pub mod pdu;
pub mod prelogin;
pub mod scsi;
pub mod server;
pub mod session;
pub mod text;
pub mod tmf;
mod window;
pub mod wire;
