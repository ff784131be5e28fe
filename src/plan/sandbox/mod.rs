//! Host-side commands of plan scripts: guestfish's `!cmd`, `<!cmd` and `cmd | shell`, which
//! are untrusted code from a bundle, run in a sandbox over the run's scratch directory.
//!
//! - [`Scratch`] (`scratch.rs`) owns the scratch directory of one build plan run: it persists
//!   across the plan's steps and is removed on drop; the interpreter opens local files only
//!   through it, so a symlink the sandboxed code plants cannot lead it outside.
//! - [`Sandbox`] runs one `bash -c` command line in it: with bubblewrap (`bwrap.rs`) in new
//!   namespaces as an unprivileged user, with no network and no view of the host beyond /usr
//!   and a few /etc files; with a time limit that kills every process the command started
//!   (`run.rs`), bounded output, a fixed environment.
//!
//! Where the host cannot give namespaces (no bwrap, user namespaces disabled), commands still
//! run as the unprivileged user, in their own process group, with the fixed environment and
//! the time limit; that is logged once, and [`Sandbox::isolation`] says which one holds, so a
//! caller can refuse to deploy without it.
//!
//! This module does not interpret guestfish; `interp.rs` decides what a line means and hands
//! the shell part here.

mod bwrap;
mod run;
mod scratch;

pub use scratch::{Scratch, ScratchEntry, SANDBOX_GID, SANDBOX_SCRATCH, SANDBOX_UID};

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// What failed, with the path or command it concerned.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A local path that would leave the run's scratch directory.
    #[error("local path {path:?} is refused: {reason}")]
    Escape { path: String, reason: &'static str },
    /// A local path that cannot be used for another reason (empty, NUL byte, not a regular
    /// file where one is needed).
    #[error("local path {path:?} cannot be used: {reason}")]
    BadPath { path: String, reason: &'static str },
    /// A directory above the scratch directory that the sandbox user may not pass.
    #[error(
        "the sandbox user (uid {}) cannot reach the scratch directory: {} has mode {mode:04o}; \
         put scratch directories under a parent that others may traverse (o+x), such as /tmp",
        SANDBOX_UID,
        dir.display()
    )]
    Unreachable { dir: PathBuf, mode: u32 },
    /// An option that cannot be honoured (a malformed environment variable name, …).
    #[error("sandbox option refused: {0}")]
    BadOption(String),
    /// The sandbox or the shell could not be started.
    #[error("starting the sandboxed shell: {0}")]
    Start(#[source] std::io::Error),
    /// A filesystem or process operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How strongly commands are isolated on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// bubblewrap: user, pid, network, ipc, uts (and cgroup) namespaces, a read-only view of
    /// /usr and a few /etc files, the scratch areas writable, no capabilities.
    Namespaces,
    /// The host gave no namespaces: the command runs as the sandbox user (when strata is
    /// root) in its own process group with the fixed environment and the time limit, but sees
    /// the host's filesystem and network as that user does.
    UserOnly,
}

/// Limits and environment of the commands a [`Sandbox`] runs.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Wall-clock limit of one command; at the deadline every process it started is killed.
    pub timeout: Duration,
    /// Bytes kept of stdout, and separately of stderr; the rest is read and dropped.
    pub output_limit: usize,
    /// Variables set on top of the fixed environment (PATH, HOME, TMPDIR, LANG, TERM, SHELL).
    pub env: Vec<(String, String)>,
    /// RLIMIT_NPROC of the sandbox user, when strata runs as root (a fork bomb stops here).
    pub max_processes: u64,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            timeout: Duration::from_secs(600),
            output_limit: 16 << 20,
            env: Vec::new(),
            max_processes: 1024,
        }
    }
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellStatus {
    /// Its exit code. Under bubblewrap a command killed by signal N shows as 128+N, as a
    /// shell reports it.
    Exited(i32),
    /// Killed by this signal (the time limit, or a signal from outside).
    Signaled(i32),
}

impl ShellStatus {
    pub fn success(self) -> bool {
        self == ShellStatus::Exited(0)
    }
}

impl std::fmt::Display for ShellStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShellStatus::Exited(c) => write!(f, "exit status {c}"),
            ShellStatus::Signaled(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct ShellOutput {
    pub status: ShellStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The time limit was reached and the command's processes were killed.
    pub timed_out: bool,
    /// More than `output_limit` bytes came; `stdout` holds the first of them.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

impl ShellOutput {
    /// Finished in time with exit status 0 (what guestfish calls success).
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.success()
    }
}

/// What the first sandbox of this process found out about the host.
#[derive(Debug)]
struct HostSupport {
    bwrap: Option<PathBuf>,
    isolation: Isolation,
    layout: bwrap::HostLayout,
}

static HOST: OnceLock<HostSupport> = OnceLock::new();

/// Runs host-side commands of one build plan run in its scratch directory.
#[derive(Debug)]
pub struct Sandbox<'a> {
    scratch: &'a Scratch,
    opts: SandboxOptions,
    host: &'a HostSupport,
}

impl<'a> Sandbox<'a> {
    /// A sandbox over `scratch`. The first one in a process tries bubblewrap once (a `true`
    /// in full isolation) and settles which [`Isolation`] holds; a failure there is logged.
    pub fn new(scratch: &'a Scratch, opts: SandboxOptions) -> Result<Sandbox<'a>, SandboxError> {
        for (k, v) in &opts.env {
            let valid_name = !k.is_empty()
                && !k.starts_with(|c: char| c.is_ascii_digit())
                && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name || v.contains('\0') {
                return Err(SandboxError::BadOption(format!(
                    "environment variable {k:?}: names are letters, digits and _, values hold no NUL"
                )));
            }
        }
        let host = HOST.get_or_init(|| probe(scratch));
        Ok(Sandbox {
            scratch,
            opts,
            host,
        })
    }

    /// Which isolation this host gives (the same for every sandbox of the process).
    pub fn isolation(&self) -> Isolation {
        self.host.isolation
    }

    /// Runs `bash -c command` with `stdin` (or /dev/null) as its standard input and returns
    /// when it and every process it started have ended, or at the time limit, once they are
    /// killed. A non-zero exit is not an error here: the status is in the output.
    pub fn run(&self, command: &str, stdin: Option<&[u8]>) -> Result<ShellOutput, SandboxError> {
        self.run_as(self.host.isolation, command, stdin)
    }

    fn run_as(
        &self,
        isolation: Isolation,
        command: &str,
        stdin: Option<&[u8]>,
    ) -> Result<ShellOutput, SandboxError> {
        let namespaced = isolation == Isolation::Namespaces && self.host.bwrap.is_some();
        let env = self.env(namespaced);
        run::execute(run::Spawn {
            bwrap: if namespaced {
                self.host.bwrap.as_deref()
            } else {
                None
            },
            layout: &self.host.layout,
            work: self.scratch.path(),
            tmp: self.scratch.tmp_path(),
            owner: self.scratch.owner(),
            env: &env,
            command,
            stdin,
            timeout: self.opts.timeout,
            output_limit: self.opts.output_limit,
            max_processes: self.opts.max_processes,
        })
    }

    /// The whole environment of a command: fixed, so nothing of strata's own (credentials,
    /// STRATA_*, the repository's path) reaches code from a bundle.
    fn env(&self, namespaced: bool) -> Vec<(String, String)> {
        let (home, tmp) = if namespaced {
            (SANDBOX_SCRATCH.to_string(), "/tmp".to_string())
        } else {
            (
                self.scratch.path().display().to_string(),
                self.scratch.tmp_path().display().to_string(),
            )
        };
        let mut env: Vec<(String, String)> = vec![
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
            ("HOME".into(), home),
            ("TMPDIR".into(), tmp),
            ("LANG".into(), "C.UTF-8".into()),
            ("TERM".into(), "dumb".into()),
            ("SHELL".into(), "/bin/bash".into()),
        ];
        for (k, v) in &self.opts.env {
            env.retain(|(name, _)| name != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }
}

/// Tries bubblewrap in full isolation once; says so when it does not work.
fn probe(scratch: &Scratch) -> HostSupport {
    let layout = bwrap::HostLayout::probe();
    let Some(path) = bwrap::find() else {
        tracing::warn!(
            "sandbox: bubblewrap (bwrap) is not installed; plan scripts' shell commands run \
             without namespaces (no filesystem or network isolation). Install the bubblewrap package."
        );
        return HostSupport {
            bwrap: None,
            isolation: Isolation::UserOnly,
            layout,
        };
    };
    let trial = HostSupport {
        bwrap: Some(path.clone()),
        isolation: Isolation::Namespaces,
        layout,
    };
    let sandbox = Sandbox {
        scratch,
        opts: SandboxOptions {
            timeout: Duration::from_secs(60),
            ..SandboxOptions::default()
        },
        host: &trial,
    };
    let outcome = sandbox.run_as(Isolation::Namespaces, "true", None);
    let host = &trial;
    match outcome {
        Ok(out) if out.success() => {
            tracing::debug!(bwrap = %path.display(), "sandbox: bubblewrap isolation works");
            HostSupport {
                bwrap: Some(path),
                isolation: Isolation::Namespaces,
                layout: host.layout.clone(),
            }
        }
        other => {
            let why = match other {
                Ok(out) => format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Err(e) => e.to_string(),
            };
            tracing::warn!(
                bwrap = %path.display(),
                "sandbox: bubblewrap cannot isolate commands on this host ({why}); plan scripts' \
                 shell commands run without namespaces (no filesystem or network isolation)"
            );
            HostSupport {
                bwrap: None,
                isolation: Isolation::UserOnly,
                layout: host.layout.clone(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// The fallback for hosts without namespaces (the integration tests prove the isolated
    /// path): commands run, in the scratch directory, with the time limit.
    #[test]
    fn without_namespaces_commands_still_run_in_the_scratch_directory_with_a_time_limit() {
        let scratch = Scratch::in_temp_dir().unwrap();
        let host = HostSupport {
            bwrap: None,
            isolation: Isolation::UserOnly,
            layout: bwrap::HostLayout::probe(),
        };
        let sb = Sandbox {
            scratch: &scratch,
            opts: SandboxOptions {
                timeout: Duration::from_secs(2),
                ..SandboxOptions::default()
            },
            host: &host,
        };
        let o = sb
            .run("echo hi; pwd; echo \"$HOME\"; exit 4", None)
            .unwrap();
        let dir = scratch.path().display();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            format!("hi\n{dir}\n{dir}\n")
        );
        assert_eq!(o.status, ShellStatus::Exited(4));
        if unsafe { libc::geteuid() } == 0 {
            let o = sb.run("id -u", None).unwrap();
            assert_eq!(o.stdout, format!("{SANDBOX_UID}\n").as_bytes());
        }
        let t0 = Instant::now();
        let o = sb.run("sleep 100 & sleep 100", None).unwrap();
        assert!(o.timed_out && !o.success(), "{o:?}");
        assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    }
}
