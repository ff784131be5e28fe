//! The REST API: Image Streamer's resources over HTTPS (axum on rustls), on the catalog.
//!
//! Map of this directory:
//! - `tls.rs`       the certificate: given, or self-signed on first start in the repository
//! - `auth.rs`      `/rest/login-sessions` and the session gate in front of everything else
//! - `version.rs`   `/rest/version`, `X-API-Version`, the resource `type` names per version
//! - `body.rs`      JSON request bodies under the size limit, every failure a 400
//! - `list.rs`      list parameters and Image Streamer's list shape
//! - `error.rs`     Image Streamer's error shape and the status of each catalog error
//! - `artifacts.rs` plan scripts, build plans, deployment plans, golden images (read, update)
//! - `golden_images.rs` golden images uploaded (multipart, a task), downloaded, deleted
//! - `bundles.rs`   artifact bundles (upload, extract, download, delete) and the
//!   deployment groups
//! - `backups.rs`   the backup bundle (`/rest/artifact-bundles/backups…`): made, uploaded,
//!   downloaded, restored
//! - `volumes.rs`   OS volumes, and deploying one (`POST /rest/os-volumes`, strata's own)
//! - `tasks.rs`     `/rest/tasks/{id}` and the 202 answer for long work
//! - `stream.rs`    request and response bodies streamed to and from the appliance's jobs
//!
//! Handlers are thin: parse, call one catalog (or plan) function on a blocking thread
//! ([`blocking`]; a read that never waits, [`read`], runs at once when the catalog's reads
//! never wait), shape the answer. Adding an endpoint: a handler in the file of its resource, its route
//! in that file's `routes()`, nothing else (the gate covers every route). Long work: create
//! a task (`Catalog::create_task`), spawn the work (it calls `task_progress` and
//! `finish_task`), answer `tasks::accepted(&task)`.

pub mod artifacts;
pub mod auth;
pub mod backups;
pub mod body;
pub mod bundles;
pub mod error;
pub mod golden_images;
pub mod list;
pub mod stream;
pub mod tasks;
pub mod tls;
pub mod version;
pub mod volumes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;

use crate::catalog::Catalog;
use crate::plan::artifacts::ArtifactKind;
use crate::store::Repository;
use error::ApiError;
pub use tls::TlsSource;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub catalog: Catalog,
    /// The store the appliance's jobs (uploads, deploys, bundles) work on.
    pub repo: Arc<Repository>,
    /// A session ends this long after its last use.
    pub session_idle: Duration,
    /// The largest JSON body accepted, in bytes.
    pub body_limit: usize,
    /// Slots for tasks' jobs without an upload (deploys, bundle extraction): that many run
    /// at once, the others wait.
    pub jobs: Arc<tokio::sync::Semaphore>,
}

/// How many jobs run at once: two per CPU (a deploy waits on its fs worker and the disk).
pub fn job_slots() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) * 2
}

/// How the API serves.
#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub tls: TlsSource,
    pub session_idle: Duration,
    /// The largest JSON body accepted, in bytes.
    pub body_limit: usize,
}

impl ApiOptions {
    /// Defaults for a repository: self-signed TLS kept in it, 24 h idle sessions, 8 MiB
    /// bodies (HPE's largest plan scripts are tens of KiB).
    pub fn for_repo(repo: &std::path::Path) -> ApiOptions {
        ApiOptions {
            tls: TlsSource::SelfSigned {
                dir: tls::self_signed_dir(repo),
            },
            session_idle: Duration::from_secs(24 * 3600),
            body_limit: 8 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeApiError {
    #[error("API TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("API listener: {0}")]
    Listen(std::io::Error),
    #[error("API catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("API start, recovering from the last run: {0}")]
    Recover(#[from] crate::appliance::ApplianceError),
}

/// Runs catalog work off the async threads (SQLite and argon2 block).
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a request's worker failed: {e}")))?
}

/// Runs a catalog read that writes nothing: at once, on this async thread, when the
/// catalog's reads never wait (SQLite's read connections: a cached statement, tens of
/// microseconds, less than handing the work to a blocking thread and back costs), else as
/// [`blocking`] (PostgreSQL: a network round trip). Only for reads: a write may wait for
/// another (a transaction, another process's lock) and would stall the async thread.
pub async fn read<T: Send + 'static>(
    catalog: &Catalog,
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    if catalog.reads_never_wait() {
        f()
    } else {
        blocking(f).await
    }
}

/// Every route, behind the session gate.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/rest/version", axum::routing::get(version::get_version))
        .route(
            "/rest/login-sessions",
            axum::routing::post(auth::login)
                .put(auth::refresh)
                .delete(auth::logout),
        )
        .merge(artifacts::routes(ArtifactKind::PlanScript, true))
        .merge(artifacts::routes(ArtifactKind::BuildPlan, true))
        .merge(artifacts::routes(ArtifactKind::DeploymentPlan, true))
        .merge(artifacts::routes(ArtifactKind::GoldenImage, false))
        .merge(golden_images::routes())
        .merge(bundles::routes())
        .merge(backups::routes())
        .merge(volumes::routes())
        .merge(tasks::routes())
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::not_found(format!("no resource at {}", uri.path()))
        })
        .method_not_allowed_fallback(|m: axum::http::Method, uri: axum::http::Uri| async move {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                format!("{} does not take {m}", uri.path()),
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_session,
        ))
        .with_state(state)
}

/// A running API server.
pub struct ApiServer {
    handle: axum_server::Handle<SocketAddr>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    addr: SocketAddr,
}

impl ApiServer {
    /// Starts serving on `listener` (already bound, so a taken port fails before anything
    /// starts). Must run inside a tokio runtime. What a previous run left unfinished is
    /// recovered first (`appliance::recover`: jobs undone, their tasks marked failed).
    pub fn start(
        catalog: Catalog,
        repo: Arc<Repository>,
        listener: std::net::TcpListener,
        opts: ApiOptions,
    ) -> Result<ApiServer, ServeApiError> {
        let cfg = tls::server_config(&opts.tls)?;
        // What a crash left: interrupted jobs undone, their tasks failed, orphans removed.
        let r = crate::appliance::recover(&catalog, &repo)?;
        if r.failed_tasks > 0 {
            tracing::warn!(
                tasks = r.failed_tasks,
                "tasks left running by the last run marked failed"
            );
        }
        listener
            .set_nonblocking(true)
            .map_err(ServeApiError::Listen)?;
        let addr = listener.local_addr().map_err(ServeApiError::Listen)?;
        let state = AppState {
            catalog,
            repo,
            session_idle: opts.session_idle,
            body_limit: opts.body_limit,
            jobs: Arc::new(tokio::sync::Semaphore::new(job_slots())),
        };
        let app = router(state);
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(cfg),
        )
        .map_err(ServeApiError::Listen)?
        .handle(handle.clone());
        let task = tokio::spawn(server.serve(app.into_make_service()));
        tracing::info!(listen = %addr, "serving the REST API over HTTPS");
        Ok(ApiServer { handle, task, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets requests in flight finish (up to `grace`), and returns.
    pub async fn stop(self, grace: Duration) -> std::io::Result<()> {
        self.handle.graceful_shutdown(Some(grace));
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}
