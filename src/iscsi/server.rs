//! The server: listeners on each `--listen` address, the shared context every connection
//! uses (repository, exports, session table, pre-login budget, open logical units), and
//! graceful shutdown — on SIGTERM/SIGINT listeners stop accepting, each full-feature
//! session is asked to log out (Asynchronous Message, AsyncEvent 1) and served until it
//! does or 5 s pass, in-flight commands finish and their responses are sent, then sockets
//! close.
//!
//! Export changes take effect at once: `strata export`/`unexport` ask through the control
//! socket (`control.rs`), and exports.json is also polled every second (for hand edits).
//! Applying them ends the sessions they no longer admit and closes the volumes no longer
//! exported once their last session is gone (so `strata volume rm` works right after).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::store::{Repository, StoreError};

use super::control::{self, Applied};
use super::exports::{Export, ExportTable};
use super::prelogin::{PreLoginLimits, PreLoginTable};
use super::scsi::{Identity, LogicalUnit};
use super::session::{SessionLimits, SessionTable};
use super::text::TargetLimits;

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
}

/// How long applying an export change waits for the sessions it ends.
const REVOKE_WAIT: Duration = Duration::from_secs(10);
/// How often exports.json is checked for changes not announced on the control socket.
const EXPORTS_POLL: Duration = Duration::from_secs(1);

impl ServerCtx {
    pub fn new(
        repo: Arc<Repository>,
        opts: ServerOptions,
        shutdown: watch::Receiver<bool>,
    ) -> ServerCtx {
        ServerCtx {
            exports: ExportTable::new(repo.root()),
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
        }
    }

    /// Applies exports.json as it is now (re-read when `force`, else only if it changed):
    /// sessions it no longer admits are ended, and once they are, volumes no longer exported
    /// are closed. Returns when all that is done (or REVOKE_WAIT has passed).
    pub async fn apply_exports(&self, force: bool) -> Applied {
        let _one = self.applying.lock().await;
        let exports = if force {
            self.exports.reload()
        } else {
            self.exports.current()
        };
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

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on {addr}: {source}")]
    Listening {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Runs the target on `addrs` until SIGTERM/SIGINT (or until `stop` says so), then shuts
/// down gracefully. `ready` is told the bound addresses (useful with port 0).
pub async fn serve(
    repo: Arc<Repository>,
    addrs: &[SocketAddr],
    opts: ServerOptions,
    mut stop: watch::Receiver<bool>,
    ready: Option<tokio::sync::oneshot::Sender<Vec<SocketAddr>>>,
) -> Result<(), ServeError> {
    let mut listeners = Vec::new();
    for a in addrs {
        let l = listen(*a).map_err(|source| ServeError::Listening { addr: *a, source })?;
        let local = l.local_addr().unwrap_or(*a);
        tracing::info!(listen = %local, "serving iSCSI");
        listeners.push(l);
    }
    if let Some(r) = ready {
        let _ = r.send(
            listeners
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .collect(),
        );
    }
    let (sd_tx, sd_rx) = watch::channel(false);
    let ctx = Arc::new(ServerCtx::new(repo, opts, sd_rx));
    ctx.apply_exports(true).await;
    let control = control::bind(ctx.repo.root());
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        let ctx = ctx.clone();
        tasks.spawn(accept_loop(l, ctx));
    }
    let mut side = tokio::task::JoinSet::new();
    let control_listener = control.map(|(l, dir)| {
        let l = Arc::new(l);
        side.spawn(control::serve(l.clone(), ctx.clone()));
        (l, dir)
    });
    side.spawn(watch_exports(ctx.clone()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServeError::Signals)?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(ServeError::Signals)?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        _ = async { while stop.changed().await.is_ok() { if *stop.borrow() { break } } } => {
            tracing::info!("stop requested: shutting down")
        }
    }
    let _ = sd_tx.send(true);
    // Accept loops return once they see the shutdown; each waits for its connections.
    while tasks.join_next().await.is_some() {}
    side.abort_all();
    while side.join_next().await.is_some() {}
    if let Some((l, _dir)) = &control_listener {
        control::unbind(ctx.repo.root(), l);
    }
    ctx.tracer.finish_all();
    tracing::info!(
        logged_out = ctx.shutdown_logouts.load(Ordering::Relaxed),
        not_logged_out = ctx.shutdown_drops.load(Ordering::Relaxed),
        nop_timeouts = ctx.nop_timeouts.load(Ordering::Relaxed),
        prelogin_evicted = ctx.prelogin.evicted.load(Ordering::Relaxed),
        "all connections closed"
    );
    // What the shared cache saved: chunk reads served from memory, and chunks read from the
    // images' files (in a boot storm, about one image's working set however many clones).
    let (hits, loaded) = ctx.repo.cache().stats();
    tracing::info!(
        chunk_hits = hits,
        chunks_loaded = loaded,
        mib_loaded = (loaded * crate::store::format::CHUNK as u64) >> 20,
        "image chunk cache"
    );
    Ok(())
}

/// Connections the kernel completes before we accept them. A flood arrives in bursts; when
/// this queue overflows the kernel drops SYNs, and every initiator whose SYN is dropped
/// waits a full second to retry, so it is made as deep as the kernel allows (somaxconn caps
/// it) rather than the usual 128 or 1024.
const ACCEPT_BACKLOG: u32 = 4096;

fn listen(a: SocketAddr) -> std::io::Result<TcpListener> {
    let s = match a {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    s.set_reuseaddr(true)?;
    s.bind(a)?;
    s.listen(ACCEPT_BACKLOG)
}

/// Applies exports.json when it changes without a word on the control socket.
async fn watch_exports(ctx: Arc<ServerCtx>) {
    loop {
        tokio::time::sleep(EXPORTS_POLL).await;
        ctx.apply_exports(false).await;
    }
}

async fn accept_loop(l: TcpListener, ctx: Arc<ServerCtx>) {
    let mut conns = tokio::task::JoinSet::new();
    let mut sd = ctx.shutdown.clone();
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((sock, peer)) => {
                    // Every connection gets a pre-login place, at the cost of the least
                    // recently active one when its budget is full: never a refusal.
                    let place = ctx.prelogin.admit(&peer);
                    ctx.connections.fetch_add(1, Ordering::Relaxed);
                    let ctx = ctx.clone();
                    conns.spawn(async move {
                        super::connection::run(ctx.clone(), sock, peer, place).await;
                        ctx.connections.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    // EMFILE and the like: the pre-login budget bounds what a flood holds,
                    // so this passes as sessions end.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = sd.changed() => break,
        }
    }
    drop(l);
    while conns.join_next().await.is_some() {}
}
