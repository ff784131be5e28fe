//! The running server's control socket, `REPO/serve.sock` (mode 0600): how `strata export`
//! and `strata unexport` learn that the server has applied a change, and how `strata export
//! ls` sees live sessions.
//!
//! One JSON object per line each way. Requests: `{"op":"apply"}` — re-read the exports,
//! end every session the exports no longer admit, and answer once those sessions are over
//! (connections closed, commands finished or aborted) and volumes no longer exported are
//! closed; `{"op":"sessions"}` — the live sessions. No socket, or a socket nobody listens on
//! (a server killed with -9), means no server is running: there is nothing to wait for.
//!
//! Repository paths too long for a socket address (108 bytes) are reached through
//! `/proc/self/fd/N/`, a descriptor of the repository directory.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

pub use super::context::Applied;
use super::context::ServerCtx;
use super::session::SessionInfo;

pub const SOCKET: &str = "serve.sock";

/// Longest socket path used as is (sun_path is 108 bytes with its NUL).
const SUN_PATH_MAX: usize = 100;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Request {
    Apply,
    Sessions,
}

#[derive(Debug, Serialize, Deserialize)]
struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    applied: Option<Applied>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sessions: Option<Vec<SessionInfo>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "the running server (control socket {path}) did not confirm within {secs} s; \
         sessions may still be open: check `strata export ls` and the server's log"
    )]
    Timeout { path: PathBuf, secs: u64 },
    #[error("talking to the running server through {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the running server answered: {0}")]
    Server(String),
}

/// A path for the socket in `root`: the plain one, or one through a descriptor of `root`
/// (kept open in the returned file) when the plain one is too long.
fn socket_path(root: &Path) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    let plain = root.join(SOCKET);
    if plain.as_os_str().len() <= SUN_PATH_MAX {
        return Ok((plain, None));
    }
    let dir = std::fs::File::open(root)?;
    let via = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", dir.as_raw_fd()));
    Ok((via, Some(dir)))
}

fn request(root: &Path, req: &Request, timeout: Duration) -> Result<Option<Reply>, ControlError> {
    let shown = root.join(SOCKET);
    let io = |source| ControlError::Io {
        path: shown.clone(),
        source,
    };
    let (path, _dir) = socket_path(root).map_err(io)?;
    let stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io(e)),
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("requests serialize");
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io)?;
    let mut answer = String::new();
    match BufReader::new(&stream).read_line(&mut answer) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(ControlError::Timeout {
                path: shown,
                secs: timeout.as_secs(),
            })
        }
        Err(e) => return Err(io(e)),
    }
    let reply: Reply = serde_json::from_str(&answer)
        .map_err(|e| ControlError::Server(format!("unreadable answer {:?}: {e}", answer.trim())))?;
    if let Some(e) = reply.error {
        return Err(ControlError::Server(e));
    }
    Ok(Some(reply))
}

/// Asks the server running on the repository at `root` (if any) to apply the exports now,
/// and waits until it has. `Ok(None)`: no server is running.
pub fn apply(root: &Path, timeout: Duration) -> Result<Option<Applied>, ControlError> {
    Ok(request(root, &Request::Apply, timeout)?.and_then(|r| r.applied))
}

/// The live sessions of the server running on `root`; `Ok(None)`: no server is running.
pub fn sessions(root: &Path, timeout: Duration) -> Result<Option<Vec<SessionInfo>>, ControlError> {
    Ok(request(root, &Request::Sessions, timeout)?.and_then(|r| r.sessions))
}

/// Binds the control socket of the repository at `root`. A socket left by a dead server is
/// replaced; one a live server answers on is left alone (None: this server runs without).
pub fn bind(root: &Path) -> Option<(UnixListener, Option<std::fs::File>)> {
    let (path, dir) = match socket_path(root) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "no control socket: exports apply within a second, unacknowledged");
            return None;
        }
    };
    if UnixStream::connect(&path).is_ok() {
        tracing::warn!(
            socket = %root.join(SOCKET).display(),
            "another strata serve answers on this repository's control socket; \
             `unexport` confirmations go to it (this server applies exports within a second)"
        );
        return None;
    }
    let _ = std::fs::remove_file(&path);
    let l = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "no control socket: exports apply within a second, unacknowledged");
            return None;
        }
    };
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
    Some((l, dir))
}

/// Removes the socket at shutdown (only if it is still ours: same inode).
pub fn unbind(root: &Path, l: &UnixListener) {
    use std::os::unix::fs::MetadataExt;
    let Ok((path, _dir)) = socket_path(root) else {
        return;
    };
    let ours = l
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf))
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.ino());
    if ours.is_some() && std::fs::metadata(&path).ok().map(|m| m.ino()) == ours {
        let _ = std::fs::remove_file(&path);
    }
}

/// Answers control requests until the server shuts down.
pub async fn serve(l: Arc<UnixListener>, ctx: Arc<ServerCtx>) {
    let mut sd = ctx.shutdown.clone();
    loop {
        tokio::select! {
            r = l.accept() => match r {
                Ok((s, _)) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move { answer(s, ctx).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = sd.changed() => break,
        }
    }
}

/// Requests longer than this are not ours.
const MAX_REQUEST: usize = 4096;

async fn answer(s: tokio::net::UnixStream, ctx: Arc<ServerCtx>) {
    let (rd, mut wr) = s.into_split();
    let mut rd = tokio::io::BufReader::new(rd.take(MAX_REQUEST as u64));
    let mut line = String::new();
    let got = tokio::time::timeout(Duration::from_secs(10), rd.read_line(&mut line)).await;
    if !matches!(got, Ok(Ok(n)) if n > 0) {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(Request::Apply) => Reply {
            applied: Some(ctx.apply_exports(true).await),
            sessions: None,
            error: None,
        },
        Ok(Request::Sessions) => Reply {
            applied: None,
            sessions: Some(ctx.sessions.list()),
            error: None,
        },
        Err(e) => Reply {
            applied: None,
            sessions: None,
            error: Some(format!("bad request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&reply).expect("replies serialize");
    out.push(b'\n');
    let _ = wr.write_all(&out).await;
}
