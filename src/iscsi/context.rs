//! What every connection of a running server shares: its options, the repository, the
//! export and session tables, the pre-login budget, the open logical units, the counters
//! of the shutdown summary, and applying export changes. The server (`server.rs`) makes
//! one; connections (`connection.rs`) and the control socket (`control.rs`) use it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::store::{Repository, StoreError};

use super::exports::{Export, ExportSource, ExportTable};
use super::prelogin::{PreLoginLimits, PreLoginTable};
use super::scsi::{Identity, LogicalUnit};
use super::session::{SessionLimits, SessionTable};
use super::text::TargetLimits;

/// What applying an export change did (the control socket's answer to `apply`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    /// Sessions ended because the exports no longer admit them.
    pub revoked: usize,
    /// Of those, sessions that had not ended when the server gave up waiting.
    pub still_open: usize,
}

/// Tunables of a running server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub identity: Identity,
    pub limits: TargetLimits,
    /// Idle time after which the target pings the initiator with a NOP-In.
    pub nop_interval: Duration,
    /// How long a ping may stay unanswered (nothing at all received from the initiator)
    /// before the connection is closed.
    pub nop_timeout: Duration,
    /// Time allowed for a whole login.
    pub login_timeout: Duration,
    /// Connections that have not finished logging in: per source address, in all.
    pub prelogin: PreLoginLimits,
    /// Sessions: in all, per initiator name, per target.
    pub sessions: SessionLimits,
    /// Commands a session may have in flight (the CmdSN window).
    pub queue_depth: u32,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            identity: Identity::default(),
            limits: TargetLimits::default(),
            nop_interval: Duration::from_secs(5),
            nop_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(5),
            prelogin: PreLoginLimits::default(),
            sessions: SessionLimits::default(),
            queue_depth: 64,
        }
    }
}

/// Everything connections share.
pub struct ServerCtx {
    pub repo: Arc<Repository>,
    pub exports: ExportTable,
    pub sessions: SessionTable,
    pub prelogin: Arc<PreLoginTable>,
    pub opts: ServerOptions,
    /// Open logical units, kept open while exported (reopening per session would flush
    /// and re-lock the volume each time).
    lus: Mutex<HashMap<String, Arc<LogicalUnit>>>,
    next_nexus: AtomicU64,
    pub connections: AtomicUsize,
    pub shutdown: watch::Receiver<bool>,
    /// Sessions asked to log out at shutdown that did, and that did not (closed anyway).
    pub shutdown_logouts: AtomicUsize,
    pub shutdown_drops: AtomicUsize,
    /// Connections closed because the initiator stopped answering NOP-In pings.
    pub nop_timeouts: AtomicU64,
    /// One `apply_exports` at a time (each waits for the sessions it revoked).
    applying: tokio::sync::Mutex<()>,
    /// Boot traces: records a first boot of each image's clones, prefetches it for the next.
    pub tracer: crate::store::trace::Tracer,
    /// How long READs took to serve, all sessions together.
    pub read_latency: super::latency::Histogram,
}

/// How long applying an export change waits for the sessions it ends.
const REVOKE_WAIT: Duration = Duration::from_secs(10);

impl ServerCtx {
    pub fn new(
        repo: Arc<Repository>,
        exports: Arc<dyn ExportSource>,
        opts: ServerOptions,
        shutdown: watch::Receiver<bool>,
    ) -> ServerCtx {
        ServerCtx {
            exports: ExportTable::new(exports),
            repo,
            sessions: SessionTable::new(opts.sessions),
            prelogin: Arc::new(PreLoginTable::new(opts.prelogin)),
            opts,
            lus: Mutex::new(HashMap::new()),
            next_nexus: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            shutdown,
            shutdown_logouts: AtomicUsize::new(0),
            shutdown_drops: AtomicUsize::new(0),
            nop_timeouts: AtomicU64::new(0),
            applying: tokio::sync::Mutex::new(()),
            tracer: Default::default(),
            read_latency: Default::default(),
        }
    }

    /// Applies the exports as they are now (re-read when `force`, else only if the source's
    /// stamp moved; the source is the catalog, whose reads are short):
    /// sessions it no longer admits are ended, and once they are, volumes no longer exported
    /// are closed. Returns when all that is done (or REVOKE_WAIT has passed).
    pub async fn apply_exports(&self, force: bool) -> Applied {
        let _one = self.applying.lock().await;
        let exports = self.exports.refresh(force);
        if !force && self.sessions.applied(&exports) {
            return Applied {
                revoked: 0,
                still_open: 0,
            };
        }
        let ending = self.sessions.apply(exports);
        let revoked = ending.len();
        let mut still_open = 0;
        for (who, mut alive) in ending {
            tracing::info!(session = %who, "export changed: ending the session");
            let done = tokio::time::timeout(REVOKE_WAIT, async {
                while alive.changed().await.is_ok() {}
            })
            .await;
            if done.is_err() {
                tracing::warn!(session = %who, "revoked session did not end in time");
                still_open += 1;
            }
        }
        // A revoked session's commands that were already running on blocking threads
        // finish there (their answers are dropped) and hold its unit until they do: wait
        // for them, so that the volume is free when the change is acknowledged.
        let deadline = tokio::time::Instant::now() + REVOKE_WAIT;
        while self.unexported_units_in_use() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.release_unused_units().await;
        Applied {
            revoked,
            still_open,
        }
    }

    /// Whether a unit of a volume that is no longer exported is still referenced.
    fn unexported_units_in_use(&self) -> bool {
        let exports = self.exports.current();
        self.lus
            .lock()
            .iter()
            .any(|(vol, lu)| Arc::strong_count(lu) > 1 && !exports.iter().any(|x| &x.volume == vol))
    }

    /// Closes the logical units of volumes that are no longer exported and that no session
    /// uses (dropping the last reference flushes and unlocks the volume: done off the
    /// runtime's threads, and waited for, so the volume is free when this returns).
    pub async fn release_unused_units(&self) {
        let exports = self.exports.current();
        let unused: Vec<Arc<LogicalUnit>> = {
            let mut lus = self.lus.lock();
            let gone: Vec<String> = lus
                .iter()
                .filter(|(vol, lu)| {
                    Arc::strong_count(lu) == 1
                        && !exports.iter().any(|x| {
                            &x.volume == *vol && x.iqn.eq_ignore_ascii_case(&lu.target_iqn)
                        })
                })
                .map(|(vol, _)| vol.clone())
                .collect();
            gone.iter().filter_map(|v| lus.remove(v)).collect()
        };
        if unused.is_empty() {
            return;
        }
        for lu in &unused {
            tracing::info!(target = %lu.target_iqn, "volume no longer exported or used: closed");
        }
        let _ = tokio::task::spawn_blocking(move || drop(unused)).await;
    }

    pub fn nexus_id(&self) -> u64 {
        self.next_nexus.fetch_add(1, Ordering::Relaxed)
    }

    /// The logical unit of an export, opened on first use and shared by its sessions.
    /// Units of volumes no longer exported are closed once no session uses them.
    pub fn logical_unit(&self, e: &Export) -> Result<Arc<LogicalUnit>, StoreError> {
        let exports = self.exports.current();
        let mut lus = self.lus.lock();
        lus.retain(|vol, lu| {
            Arc::strong_count(lu) > 1
                || exports
                    .iter()
                    .any(|x| &x.volume == vol && x.iqn.eq_ignore_ascii_case(&lu.target_iqn))
        });
        if let Some(lu) = lus.get(&e.volume) {
            if lu.target_iqn.eq_ignore_ascii_case(&e.iqn) {
                return Ok(lu.clone());
            }
        }
        let vol = self.repo.open_volume(&e.volume, false)?;
        let trace = self.tracer.volume_opened(&vol);
        let lu = Arc::new(LogicalUnit::new(vol, &e.iqn, self.opts.identity.clone()));
        if let Some(t) = trace {
            let _ = lu.trace.set(t);
        }
        lus.insert(e.volume.clone(), lu.clone());
        Ok(lu)
    }
}
