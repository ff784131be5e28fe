//! The server: listeners on each `--listen` address, the shared context every connection
//! uses (`context.rs`: repository, exports, session table, pre-login budget, open logical
//! units), and graceful shutdown — on SIGTERM/SIGINT listeners stop accepting, each full-feature
//! session is asked to log out (Asynchronous Message, AsyncEvent 1) and served until it
//! does or 5 s pass, in-flight commands finish and their responses are sent, then sockets
//! close.
//!
//! Export changes take effect at once: `strata export`/`unexport` ask through the control
//! socket (`control.rs`), and the exports' stamp is also polled every second.
//! Applying them ends the sessions they no longer admit and closes the volumes no longer
//! exported once their last session is gone (so `strata volume rm` works right after).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::store::Repository;

pub use super::context::{ServerCtx, ServerOptions};
use super::exports::ExportSource;
use super::{control, latency};

/// How often the exports' stamp is checked for changes not announced on the control socket
/// (made through the API, or by another node of a shared catalog).
const EXPORTS_POLL: Duration = Duration::from_secs(1);

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
    exports: Arc<dyn ExportSource>,
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
    let ctx = Arc::new(ServerCtx::new(repo, exports, opts, sd_rx));
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
    // How long reads took, arrival to response queued (log2 buckets: a quantile is given as
    // the upper bound of its bucket).
    let lat = ctx.read_latency.snapshot();
    tracing::info!(
        reads = latency::total(&lat),
        mean_us = ctx.read_latency.mean_us(),
        p50_us_below = latency::quantile_bound_us(&lat, 0.50),
        p99_us_below = latency::quantile_bound_us(&lat, 0.99),
        p999_us_below = latency::quantile_bound_us(&lat, 0.999),
        buckets = %latency::buckets_text(&lat),
        "read latency"
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

/// Applies the exports when they change without a word on the control socket.
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
