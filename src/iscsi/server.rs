//! The server: listeners on each `--listen` address, the shared context every connection
//! uses (repository, exports, session table, open logical units), and graceful shutdown —
//! on SIGTERM/SIGINT listeners stop accepting, each full-feature session is asked to log
//! out (Asynchronous Message, AsyncEvent 1) and served until it does or 5 s pass, in-flight
//! commands finish and their responses are sent, then sockets close.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::store::{Repository, StoreError};

use super::exports::{Export, ExportTable};
use super::scsi::{Identity, LogicalUnit};
use super::session::SessionTable;
use super::text::TargetLimits;

/// Tunables of a running server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub identity: Identity,
    pub limits: TargetLimits,
    /// Idle time after which the target pings the initiator with a NOP-In.
    pub nop_interval: Duration,
    /// How long an unanswered ping may stay unanswered (initiators that answer pings).
    pub nop_timeout: Duration,
    /// Time allowed for a whole login.
    pub login_timeout: Duration,
    pub max_connections: usize,
    pub max_sessions: usize,
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
            login_timeout: Duration::from_secs(15),
            max_connections: 2048,
            max_sessions: 1024,
            queue_depth: 64,
        }
    }
}

/// Everything connections share.
pub struct ServerCtx {
    pub repo: Arc<Repository>,
    pub exports: ExportTable,
    pub sessions: SessionTable,
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
    /// Boot traces: records a first boot of each image's clones, prefetches it for the next.
    pub tracer: crate::store::trace::Tracer,
}

impl ServerCtx {
    pub fn new(
        repo: Arc<Repository>,
        opts: ServerOptions,
        shutdown: watch::Receiver<bool>,
    ) -> ServerCtx {
        ServerCtx {
            exports: ExportTable::new(repo.root()),
            repo,
            sessions: SessionTable::new(opts.max_sessions),
            opts,
            lus: Mutex::new(HashMap::new()),
            next_nexus: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            shutdown,
            shutdown_logouts: AtomicUsize::new(0),
            shutdown_drops: AtomicUsize::new(0),
            tracer: Default::default(),
        }
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
        let l = TcpListener::bind(a)
            .await
            .map_err(|source| ServeError::Listening { addr: *a, source })?;
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
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        let ctx = ctx.clone();
        tasks.spawn(accept_loop(l, ctx));
    }
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
    ctx.tracer.finish_all();
    tracing::info!(
        logged_out = ctx.shutdown_logouts.load(Ordering::Relaxed),
        not_logged_out = ctx.shutdown_drops.load(Ordering::Relaxed),
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

async fn accept_loop(l: TcpListener, ctx: Arc<ServerCtx>) {
    let mut conns = tokio::task::JoinSet::new();
    let mut sd = ctx.shutdown.clone();
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((sock, peer)) => {
                    if ctx.connections.load(Ordering::Relaxed) >= ctx.opts.max_connections {
                        tracing::warn!(%peer, "too many connections; refusing");
                        drop(sock);
                        continue;
                    }
                    ctx.connections.fetch_add(1, Ordering::Relaxed);
                    let ctx = ctx.clone();
                    conns.spawn(async move {
                        super::connection::run(ctx.clone(), sock, peer).await;
                        ctx.connections.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
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
