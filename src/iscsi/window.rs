//! The CmdSN window of a session (RFC 7143 4.2.2.1): which command numbers the initiator
//! may send, shared by the reader (arrivals, completions) and the writer (the ExpCmdSN and
//! MaxCmdSN it stamps on everything sent).

use std::sync::atomic::{AtomicU32, Ordering};

/// The CmdSN window, shared by the reader (arrivals) and the writer (the fields it sends).
pub struct Window {
    base: u32,
    depth: u32,
    arrived: AtomicU32,
    completed: AtomicU32,
    /// The highest MaxCmdSN the initiator has been told (the final login response is the
    /// first PDU stamped).
    /// Commands are checked against this, not against the window as it has grown since:
    /// a command beyond what the initiator was told must be ignored (RFC 7143 4.2.2.1),
    /// even if the target could take it by now.
    advertised: AtomicU32,
}

impl Window {
    pub(super) fn new(exp: u32, depth: u32) -> Window {
        Window {
            base: exp,
            depth,
            arrived: AtomicU32::new(0),
            completed: AtomicU32::new(0),
            advertised: AtomicU32::new(exp),
        }
    }
    /// The MaxCmdSN to put in a PDU about to be sent; remembered as advertised.
    pub(super) fn stamp_max_cmd_sn(&self) -> u32 {
        let m = self.max_cmd_sn();
        // Only the writer stamps, and the window only grows: a plain store keeps the max.
        self.advertised.store(m, Ordering::Release);
        m
    }
    pub(super) fn advertised_max_cmd_sn(&self) -> u32 {
        self.advertised.load(Ordering::Acquire)
    }
    pub fn exp_cmd_sn(&self) -> u32 {
        self.base.wrapping_add(self.arrived.load(Ordering::Acquire))
    }
    pub fn max_cmd_sn(&self) -> u32 {
        self.base
            .wrapping_add(self.completed.load(Ordering::Acquire))
            .wrapping_add(self.depth)
            .wrapping_sub(1)
    }
    pub(super) fn arrive(&self) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
    }
    pub(super) fn complete(&self) {
        self.completed.fetch_add(1, Ordering::AcqRel);
    }
}
