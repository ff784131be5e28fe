//! Task management functions (RFC 7143 §11.5): ABORT TASK, ABORT TASK SET, CLEAR TASK SET,
//! LUN RESET, TARGET WARM RESET and TARGET COLD RESET. Aborted tasks send no response;
//! resets also reset the logical unit's state and raise unit attentions for other sessions.

use std::future::Future;
use std::sync::Arc;

use super::pdu::Bhs;
use super::scsi::LogicalUnit;
use super::session::sn_lt;

/// What task management needs of a connection (`connection::Conn` is the one).
pub trait Tasks {
    /// Whether task `itt` is still running (not yet answering).
    fn has_task(&self, itt: u32) -> bool;
    fn lu(&self) -> Option<&Arc<LogicalUnit>>;
    fn exp_cmd_sn(&self) -> u32;
    /// Aborts the tasks `pred(itt, lun, cmd_sn)` selects; answers how many it aborted.
    fn abort_tasks(
        &mut self,
        pred: impl Fn(u32, u64, u32) -> bool + Send,
    ) -> impl Future<Output = usize> + Send;
}

pub mod response {
    pub const COMPLETE: u8 = 0;
    pub const NO_TASK: u8 = 1;
    pub const NO_LUN: u8 = 2;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const REJECTED: u8 = 255;
}

pub struct TmfResult {
    pub code: u8,
    /// Close the connection after responding (cold reset).
    pub close: bool,
}

fn done(code: u8) -> TmfResult {
    TmfResult { code, close: false }
}

pub async fn execute(conn: &mut impl Tasks, b: &Bhs) -> TmfResult {
    let function = b.flags() & 0x7f;
    let lun = b.lun();
    let rtt = b.u32_at(20);
    let ref_cmd_sn = b.u32_at(32);
    let lun_ok = lun == 0 && conn.lu().is_some();
    match function {
        // ABORT TASK
        1 => {
            if !lun_ok {
                return done(response::NO_LUN);
            }
            if conn.has_task(rtt) {
                if conn.abort_tasks(|itt, _, _| itt == rtt).await > 0 {
                    done(response::COMPLETE)
                } else {
                    // It was already answering: its response goes out, nothing was aborted.
                    done(response::NO_TASK)
                }
            } else if sn_lt(ref_cmd_sn, conn.exp_cmd_sn()) {
                // Already completed (its response was sent).
                done(response::NO_TASK)
            } else {
                done(response::COMPLETE)
            }
        }
        // ABORT TASK SET, CLEAR TASK SET
        2 | 4 => {
            if !lun_ok {
                return done(response::NO_LUN);
            }
            conn.abort_tasks(|_, l, _| l == lun).await;
            done(response::COMPLETE)
        }
        // CLEAR ACA: NACA is not supported
        3 => done(response::NOT_SUPPORTED),
        // LUN RESET
        5 => {
            if !lun_ok {
                return done(response::NO_LUN);
            }
            conn.abort_tasks(|_, l, _| l == lun).await;
            if let Some(lu) = conn.lu() {
                lu.reset();
            }
            done(response::COMPLETE)
        }
        // TARGET WARM RESET, TARGET COLD RESET
        6 | 7 => {
            conn.abort_tasks(|_, _, _| true).await;
            if let Some(lu) = conn.lu() {
                lu.reset();
            }
            TmfResult {
                code: response::COMPLETE,
                close: function == 7,
            }
        }
        // TASK REASSIGN needs ERL 2
        8 => done(response::NOT_SUPPORTED),
        _ => done(response::REJECTED),
    }
}
