//! The parent's side: starts a worker process (strata's own binary, `strata fs-worker`)
//! inside limits, sends it requests, and turns every way it can fail — an error reply, a
//! crash, a hang, a memory blow-up — into an `FsError` for that one job.
//!
//! Limits applied in the child before it runs (all best effort where the host refuses):
//! address-space data (`RLIMIT_DATA`: the heap and private mappings, not the
//! memory-mapped image index), CPU seconds, open files, no core dumps, no new privileges,
//! death with its parent, and its own network namespace (no network at all) when the
//! process may create one. Each request must be answered within the timeout, else the
//! worker is killed. A worker that is killed or dropped never flushed anything: the disk
//! is as it was before the job.
//!
//! Requests may be pipelined (`send` several, then `recv` their answers in order): a big
//! `put` sends its next piece while the worker writes the one before. Sending has a
//! deadline too, since a worker that stops reading would otherwise block the parent in a
//! write to a full pipe forever.

use std::collections::VecDeque;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::fs::types::*;

use super::protocol::*;

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The strata binary to run as the worker.
    pub exe: PathBuf,
    /// How long one request may take.
    pub timeout: Duration,
    /// RLIMIT_DATA of the worker.
    pub memory_bytes: u64,
    /// RLIMIT_CPU of the worker.
    pub cpu_seconds: u64,
    /// RLIMIT_NOFILE of the worker.
    pub max_files: u64,
    /// Memory for the image-chunk cache inside the worker (it reads each block a few
    /// times at most; the server's big cache is not shared with it).
    pub cache_bytes: u64,
}

impl Default for WorkerOptions {
    /// The running binary, 10 minutes per request, 1 GiB of data, 1 hour of CPU, 256
    /// files; `STRATA_FS_TIMEOUT` (seconds) and `STRATA_FS_MEMORY_MB` override.
    fn default() -> Self {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        WorkerOptions {
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("strata")),
            timeout: Duration::from_secs(env("STRATA_FS_TIMEOUT").unwrap_or(600)),
            memory_bytes: env("STRATA_FS_MEMORY_MB").unwrap_or(1024) << 20,
            cpu_seconds: 3600,
            max_files: 256,
            cache_bytes: 16 << 20,
        }
    }
}

/// The pipes' capacity asked for (Linux's default `pipe-max-size`).
const PIPE_BYTES: libc::c_int = 1 << 20;

pub struct Worker {
    child: Child,
    to: Option<BufWriter<DeadlineWriter>>,
    from: ChildStdout,
    timeout: Duration,
    what: String,
    /// Requests sent and not answered yet, oldest first: what each was doing, and whether
    /// it was the commit.
    pending: VecDeque<(String, bool)>,
}

fn broken(what: &str, detail: impl std::fmt::Display) -> FsError {
    FsError::new(
        libc::EIO,
        format!("the filesystem worker for {what} {detail}; nothing was changed"),
    )
}

/// A worker lost while committing: the store's commit is atomic, but it may have become
/// durable just before the end, so the job is either wholly in the volume or not at all.
fn broken_in_commit(what: &str, detail: impl std::fmt::Display) -> FsError {
    FsError::new(
        libc::EIO,
        format!(
            "the filesystem worker for {what} {detail}; the volume holds either the whole \
             edit or none of it (look to see which)"
        ),
    )
}

impl Worker {
    /// Starts a worker and opens `source` in it.
    pub fn start(source: Source, read_only: bool, opts: &WorkerOptions) -> FsResult<Worker> {
        let what = source.describe();
        let mut cmd = Command::new(&opts.exe);
        cmd.arg("fs-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let limits = (opts.memory_bytes, opts.cpu_seconds, opts.max_files);
        // SAFETY: only async-signal-safe system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                confine(limits);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            FsError::new(
                libc::EIO,
                format!(
                    "starting the filesystem worker ({}): {e}",
                    opts.exe.display()
                ),
            )
        })?;
        // A pipe holds 64 KiB by default: a file sent in 8 MiB requests would cross it in
        // 128 hand-overs per request, each a wake-up of the other process, which on a busy
        // machine waits for a time slice. 1 MiB (the unprivileged maximum) cuts that
        // sixteenfold; a host that refuses keeps the default.
        for fd in [
            child.stdin.as_ref().map(AsRawFd::as_raw_fd),
            child.stdout.as_ref().map(AsRawFd::as_raw_fd),
        ]
        .into_iter()
        .flatten()
        {
            // SAFETY: fcntl on a pipe this process owns.
            unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_BYTES) };
        }
        let to = child
            .stdin
            .take()
            .map(DeadlineWriter::new)
            .map(|s| BufWriter::with_capacity(1 << 20, s));
        let from = child
            .stdout
            .take()
            .ok_or_else(|| broken(&what, "has no output pipe"))?;
        let mut w = Worker {
            child,
            to,
            from,
            timeout: opts.timeout,
            what,
            pending: VecDeque::new(),
        };
        w.call(Request::Open(Open {
            source,
            read_only,
            cache_bytes: opts.cache_bytes,
        }))?;
        Ok(w)
    }

    /// Sends one request and waits for its answer. Answers still owed to requests sent
    /// before come first: if one of them is an error, that error is returned and this
    /// request is not sent.
    pub fn call(&mut self, req: Request) -> FsResult<Reply> {
        self.settle()?;
        self.send(&req)?;
        self.recv()
    }

    /// Sends one request without waiting for its answer; `recv` collects the answers, in
    /// the order the requests were sent. The request is only borrowed, so that its buffers
    /// can carry the next one.
    pub fn send(&mut self, req: &Request) -> FsResult<()> {
        let doing = req.describe();
        let committing = matches!(req, Request::Commit);
        let timeout = self.timeout;
        let Some(to) = self.to.as_mut() else {
            return Err(broken(&self.what, "was stopped"));
        };
        to.get_mut().deadline = Instant::now() + timeout;
        if let Err(e) = write_frame(to, req) {
            return Err(self.failure(&doing, e, committing));
        }
        self.pending.push_back((doing, committing));
        Ok(())
    }

    /// The answer to the oldest request sent and not answered yet.
    pub fn recv(&mut self) -> FsResult<Reply> {
        let Some((doing, committing)) = self.pending.pop_front() else {
            return Err(FsError::new(
                libc::EINVAL,
                format!(
                    "internal error: waiting for the filesystem worker for {} with no request \
                     outstanding",
                    self.what
                ),
            ));
        };
        let deadline = Instant::now() + self.timeout;
        let mut r = Deadline {
            inner: &mut self.from,
            deadline,
        };
        match read_frame::<Response>(&mut r) {
            Ok(Some(resp)) => resp,
            Ok(None) => Err(self.failure(&doing, io::ErrorKind::UnexpectedEof.into(), committing)),
            Err(e) => Err(self.failure(&doing, e, committing)),
        }
    }

    /// How many requests are waiting for their answers.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Reads every answer still owed and returns the first error among them, if any
    /// (later ones are dropped), so that nothing is left unread on the pipe. A worker that
    /// fails meanwhile is gone, with nothing owed.
    pub fn settle(&mut self) -> FsResult<()> {
        let mut first = Ok(());
        while !self.pending.is_empty() {
            if let Err(e) = self.recv() {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Explains why the worker stopped answering, and makes sure it is gone.
    fn failure(&mut self, doing: &str, e: io::Error, committing: bool) -> FsError {
        let broken = if committing { broken_in_commit } else { broken };
        let timed_out = e.kind() == io::ErrorKind::TimedOut;
        let _ = self.child.kill();
        let status = self.child.wait().ok();
        self.to = None;
        self.pending.clear();
        if timed_out {
            return broken(
                &self.what,
                format!(
                    "did not answer within {} s while {doing} and was killed (STRATA_FS_TIMEOUT sets the limit)",
                    self.timeout.as_secs()
                ),
            );
        }
        let how = match status {
            Some(s) if s.signal() == Some(libc::SIGXCPU) => "ran out of CPU time".to_string(),
            Some(s) if s.signal() == Some(libc::SIGKILL) => "was killed (SIGKILL)".to_string(),
            Some(s) if s.signal() == Some(libc::SIGABRT) => {
                "aborted (out of memory? STRATA_FS_MEMORY_MB raises the limit)".to_string()
            }
            // Under a tight memory limit the loader or a stack that cannot grow faults
            // rather than aborting (seen with 512 KiB), so these name the limit too.
            Some(s) if matches!(s.signal(), Some(libc::SIGSEGV | libc::SIGBUS)) => format!(
                "crashed (signal {}; a memory limit too low does this too: \
                 STRATA_FS_MEMORY_MB raises it)",
                s.signal().unwrap_or(0)
            ),
            Some(s) if s.signal().is_some() => {
                format!("crashed (signal {})", s.signal().unwrap_or(0))
            }
            // The dynamic loader's own failure (it could not map the program or its
            // libraries, or allocate its first thread: a memory limit set too low).
            Some(s) if s.code() == Some(127) => "could not start (exit status 127: out of \
                 memory before it ran? STRATA_FS_MEMORY_MB raises the limit)"
                .to_string(),
            Some(s) => format!("exited ({s})"),
            None => format!("stopped answering ({e})"),
        };
        broken(&self.what, format!("{how} while {doing}"))
    }

    /// Writes everything back and makes it durable in one atomic flush, then ends the
    /// worker. Before this is called nothing the job did is in the disk; if the worker is
    /// lost during it, the disk holds the whole job or none of it, and the error says so.
    pub fn commit(mut self) -> FsResult<()> {
        self.call(Request::Commit)?;
        self.finish();
        Ok(())
    }

    /// Ends the worker after a job that changed nothing (or whose changes are unwanted).
    pub fn finish(&mut self) {
        // End of input tells the worker to exit without flushing.
        self.to = None;
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.to.is_some() {
            // Abandoned mid-job: kill it, so that nothing more reaches the disk.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A reader that fails with `TimedOut` when no byte arrives before the deadline.
struct Deadline<'a> {
    inner: &'a mut ChildStdout,
    deadline: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let mut pfd = libc::pollfd {
                fd: self.inner.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                continue;
            }
            return self.inner.read(buf);
        }
    }
}

/// The worker's stdin, made non-blocking, with writes that fail with `TimedOut` when the
/// pipe has had no room since the deadline (a worker that stopped reading).
struct DeadlineWriter {
    inner: ChildStdin,
    deadline: Instant,
}

impl DeadlineWriter {
    fn new(inner: ChildStdin) -> DeadlineWriter {
        let fd = inner.as_raw_fd();
        // SAFETY: fcntl on a pipe this process owns. O_NONBLOCK is a flag of this, the
        // writing, end only; the worker's end stays blocking. A host that refuses it
        // keeps blocking writes, which still work, only without the deadline.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        DeadlineWriter {
            inner,
            deadline: Instant::now(),
        }
    }

    /// Waits until the pipe takes bytes again, or the deadline passes.
    fn wait_writable(&self) -> io::Result<()> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let mut pfd = libc::pollfd {
                fd: self.inner.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n > 0 {
                // Writable, or the worker's end is closed (the write then says EPIPE).
                return Ok(());
            }
        }
    }
}

impl Write for DeadlineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.inner.write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_writable()?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Applied in the child between fork and exec: plain system calls only. Failures are
/// ignored (a host that refuses a namespace still gets the limits).
fn confine((memory, cpu, files): (u64, u64, u64)) {
    let set = |res, v: u64| {
        let lim = libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        // SAFETY: setrlimit with a valid pointer.
        unsafe { libc::setrlimit(res, &lim) };
    };
    set(libc::RLIMIT_DATA, memory);
    set(libc::RLIMIT_CPU, cpu);
    set(libc::RLIMIT_NOFILE, files);
    set(libc::RLIMIT_CORE, 0);
    // SAFETY: prctl and unshare take plain integers.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::unshare(libc::CLONE_NEWNET);
    }
}
