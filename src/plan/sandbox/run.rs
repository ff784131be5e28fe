//! Starting one sandboxed command and seeing it through: stdin fed, stdout and stderr read up
//! to a bound, the time limit kept, and every process the command started gone before
//! `execute` returns.
//!
//! Under bubblewrap the command's processes all live in a pid namespace whose init is
//! bwrap's child; bwrap reports that child's pid on its info fd, we hold a pidfd on it, and
//! at the deadline SIGKILL it: the kernel then kills everything else in the namespace and
//! the init's exit (which the pidfd reports) comes only after they are gone. Without
//! bubblewrap the command gets a process group, killed at the deadline and at its end.
//!
//! One thread does it all with poll(2) over the pipes and pidfds, so no reader can be left
//! blocked behind a process that escaped.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::bwrap::{self, HostLayout};
use super::{SandboxError, ShellOutput, ShellStatus};

/// How long, without namespaces, the pipes are still read after the command exited: a
/// process that left the process group could hold them open forever.
const ESCAPEE_GRACE: Duration = Duration::from_secs(2);
/// The same under bubblewrap, where the namespace is empty once bwrap has exited.
const NAMESPACE_GRACE: Duration = Duration::from_secs(10);

pub(crate) struct Spawn<'a> {
    /// bwrap's path, or None to run bash directly (no namespaces).
    pub bwrap: Option<&'a Path>,
    pub layout: &'a HostLayout,
    pub work: &'a Path,
    pub tmp: &'a Path,
    pub owner: Option<(u32, u32)>,
    pub env: &'a [(String, String)],
    pub command: &'a str,
    pub stdin: Option<&'a [u8]>,
    pub timeout: Duration,
    pub output_limit: usize,
    pub max_processes: u64,
}

pub(crate) fn execute(s: Spawn<'_>) -> Result<ShellOutput, SandboxError> {
    let (info_r, info_w) = match s.bwrap {
        Some(_) => {
            let (r, w) = pipe().map_err(SandboxError::Start)?;
            (Some(r), Some(w))
        }
        None => (None, None),
    };
    let mut cmd = match s.bwrap {
        Some(path) => {
            let info_fd = info_w.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
            let mut c = Command::new(path);
            c.args(bwrap::args(
                s.layout, s.work, s.tmp, s.env, info_fd, s.command,
            ));
            // bwrap itself needs nothing of ours; --clearenv/--setenv set the command's.
            c.env_clear().current_dir("/");
            c
        }
        None => {
            let mut c = Command::new("/bin/bash");
            c.arg("-c").arg(s.command);
            c.env_clear()
                .envs(s.env.iter().map(|(k, v)| (k, v)))
                .current_dir(s.work);
            c
        }
    };
    cmd.stdin(if s.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group: what is left of it can be killed as one.
    .process_group(0);
    if let Some((uid, gid)) = s.owner {
        // std also drops the supplementary groups when it changes uid as root.
        cmd.uid(uid).gid(gid);
    }
    let keep_fd: RawFd = info_w.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
    let nproc = s.owner.map(|_| s.max_processes);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe system calls run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // No descriptor of strata's (a repository file, a socket) may reach the sandbox:
            // everything from 3 up closes on exec, except the info pipe bwrap writes to.
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            ) != 0
            {
                for fd in 3..65536 {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            if keep_fd >= 0 && libc::fcntl(keep_fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // If strata dies, so does the sandbox (bwrap passes it on with --die-with-parent).
            // This thread waits for the child to end, so it outlives it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            if let Some(n) = nproc {
                let lim = libc::rlimit {
                    rlim_cur: n,
                    rlim_max: n,
                };
                libc::setrlimit(libc::RLIMIT_NPROC, &lim);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(SandboxError::Start)?;
    drop(info_w);
    let pgid = child.id() as libc::pid_t;
    let child_pidfd = match pidfd_open(pgid) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SandboxError::Start(e));
        }
    };

    let mut out = Stream::new(child.stdout.take().map(OwnedFd::from), s.output_limit);
    let mut err = Stream::new(child.stderr.take().map(OwnedFd::from), s.output_limit);
    let mut input: Option<(OwnedFd, &[u8])> = match (child.stdin.take(), s.stdin) {
        (Some(pipe), Some(bytes)) if !bytes.is_empty() => Some((OwnedFd::from(pipe), bytes)),
        _ => None,
    };
    for fd in [
        out.fd.as_ref(),
        err.fd.as_ref(),
        input.as_ref().map(|(f, _)| f),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd.as_raw_fd()).map_err(SandboxError::Start)?;
    }
    let mut info = info_r.map(|fd| (fd, Vec::<u8>::new()));
    // The pid namespace's init, once bwrap has said which it is.
    let mut init: Option<OwnedFd> = None;
    let deadline = Instant::now() + s.timeout;
    let mut exited = false;
    let mut timed_out = false;
    let mut grace_until: Option<Instant> = None;

    loop {
        let streams_done = out.fd.is_none() && err.fd.is_none();
        if exited && streams_done && init.is_none() {
            break;
        }
        if let Some(g) = grace_until {
            if Instant::now() >= g {
                break;
            }
        }
        if !exited && !timed_out && Instant::now() >= deadline {
            timed_out = true;
            match &init {
                Some(fd) => {
                    let _ = pidfd_kill(fd);
                }
                None => unsafe {
                    libc::kill(-pgid, libc::SIGKILL);
                },
            }
        }

        // What to wait for, and for how long.
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut what: Vec<Slot> = Vec::new();
        let mut add = |fd: RawFd, events: libc::c_short, slot: Slot| {
            fds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            what.push(slot);
        };
        if let Some(fd) = &out.fd {
            add(fd.as_raw_fd(), libc::POLLIN, Slot::Out);
        }
        if let Some(fd) = &err.fd {
            add(fd.as_raw_fd(), libc::POLLIN, Slot::Err);
        }
        if let Some((fd, _)) = &input {
            add(fd.as_raw_fd(), libc::POLLOUT, Slot::In);
        }
        if let Some((fd, _)) = &info {
            add(fd.as_raw_fd(), libc::POLLIN, Slot::Info);
        }
        if !exited {
            add(child_pidfd.as_raw_fd(), libc::POLLIN, Slot::Child);
        }
        if let Some(fd) = &init {
            add(fd.as_raw_fd(), libc::POLLIN, Slot::Init);
        }
        let until = match grace_until {
            Some(g) => Some(g),
            None if !exited && !timed_out => Some(deadline),
            None => None,
        };
        let timeout_ms: libc::c_int = match until {
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                // Round up, so the loop does not spin through the last millisecond.
                left.as_millis().min(i32::MAX as u128 - 1) as libc::c_int + 1
            }
            None => -1,
        };
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            kill_all(&init, pgid);
            let _ = child.wait();
            return Err(SandboxError::Start(e));
        }
        for (pfd, slot) in fds.iter().zip(what) {
            if pfd.revents == 0 {
                continue;
            }
            match slot {
                Slot::Out => out.read_available(),
                Slot::Err => err.read_available(),
                Slot::In => {
                    if let Some((fd, rest)) = &mut input {
                        match write_some(fd.as_raw_fd(), rest) {
                            Ok(n) => *rest = &rest[n..],
                            // EPIPE: the command stopped reading; what it did not read is
                            // its business.
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => *rest = &[],
                        }
                        if rest.is_empty() || pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                            input = None;
                        }
                    }
                }
                Slot::Info => {
                    if let Some((fd, buf)) = &mut info {
                        let mut chunk = [0u8; 1024];
                        let n = unsafe {
                            libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len())
                        };
                        let finished = match n {
                            n if n > 0 => {
                                buf.extend_from_slice(&chunk[..n as usize]);
                                match parse_child_pid(buf) {
                                    Parsed::Pid(pid) => {
                                        init = open_init(pid, pgid);
                                        if timed_out {
                                            kill_all(&init, pgid);
                                        }
                                        true
                                    }
                                    Parsed::Incomplete => false,
                                    Parsed::Invalid => true,
                                }
                            }
                            0 => true,
                            _ => !matches!(
                                io::Error::last_os_error().raw_os_error(),
                                Some(libc::EAGAIN) | Some(libc::EINTR)
                            ),
                        };
                        if finished {
                            info = None;
                        }
                    }
                }
                Slot::Child => {
                    exited = true;
                    if s.bwrap.is_none() {
                        // The command is done; whatever it left running in its group goes
                        // now (the leader is a zombie until waited for, so the group id
                        // cannot have been reused).
                        unsafe { libc::kill(-pgid, libc::SIGKILL) };
                        grace_until = Some(Instant::now() + ESCAPEE_GRACE);
                    } else {
                        // Nothing of the sandbox can hold the pipes now; this bounds the wait
                        // should anything else of strata's have inherited them.
                        grace_until = Some(Instant::now() + NAMESPACE_GRACE);
                    }
                    // The namespace's init was bwrap's child: bwrap only exits once it is
                    // reaped, so it is gone too.
                    init = None;
                    info = None;
                }
                Slot::Init => init = None,
            }
        }
    }
    let status = child.wait().map_err(SandboxError::Start)?;
    let status = match (status.code(), status.signal()) {
        (Some(c), _) => ShellStatus::Exited(c),
        (None, Some(sig)) => ShellStatus::Signaled(sig),
        (None, None) => ShellStatus::Exited(-1),
    };
    Ok(ShellOutput {
        status,
        stdout: out.buf,
        stderr: err.buf,
        timed_out,
        stdout_truncated: out.truncated,
        stderr_truncated: err.truncated,
    })
}

#[derive(Clone, Copy)]
enum Slot {
    Out,
    Err,
    In,
    Info,
    Child,
    Init,
}

/// One output pipe, kept up to a bound and drained beyond it.
struct Stream {
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl Stream {
    fn new(fd: Option<OwnedFd>, limit: usize) -> Stream {
        Stream {
            fd,
            buf: Vec::new(),
            limit,
            truncated: false,
        }
    }

    fn read_available(&mut self) {
        let Some(fd) = &self.fd else { return };
        let mut file =
            unsafe { std::mem::ManuallyDrop::new(std::fs::File::from_raw_fd(fd.as_raw_fd())) };
        let mut chunk = [0u8; 65536];
        loop {
            match file.read(&mut chunk) {
                Ok(0) => {
                    self.fd = None;
                    return;
                }
                Ok(n) => {
                    let room = self.limit.saturating_sub(self.buf.len());
                    if n > room {
                        self.truncated = true;
                    }
                    self.buf.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.fd = None;
                    return;
                }
            }
        }
    }
}

enum Parsed {
    Pid(libc::pid_t),
    Incomplete,
    Invalid,
}

/// bwrap's info fd carries one JSON object whose "child-pid" is the namespace's init.
fn parse_child_pid(buf: &[u8]) -> Parsed {
    let mut docs = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
    match docs.next() {
        Some(Ok(v)) => match v.get("child-pid").and_then(|p| p.as_i64()) {
            Some(pid) if pid > 0 && pid <= i32::MAX as i64 => Parsed::Pid(pid as libc::pid_t),
            _ => Parsed::Invalid,
        },
        Some(Err(e)) if e.is_eof() => Parsed::Incomplete,
        None => Parsed::Incomplete,
        Some(Err(_)) => Parsed::Invalid,
    }
}

/// A pidfd on the namespace's init, checked to be bwrap's child: a pid read from a pipe could
/// in principle have been reused by the time it is opened; once the pidfd exists and the
/// process it names is still alive, its parent pid says it is the right one.
fn open_init(pid: libc::pid_t, bwrap_pid: libc::pid_t) -> Option<OwnedFd> {
    let fd = pidfd_open(pid).ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses): state, ppid, …
    let after = stat.rsplit_once(')')?.1;
    let ppid: libc::pid_t = after.split_whitespace().nth(1)?.parse().ok()?;
    let alive = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    } == 0;
    (alive && ppid == bwrap_pid).then_some(fd)
}

fn kill_all(init: &Option<OwnedFd>, pgid: libc::pid_t) {
    if let Some(fd) = init {
        let _ = pidfd_kill(fd);
    }
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
}

fn pidfd_kill(fd: &OwnedFd) -> io::Result<()> {
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes what the pipe takes now. strata's binary ignores SIGPIPE (as every Rust program
/// does), so a reader that went away shows as EPIPE.
fn write_some(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    let mut file = unsafe { std::mem::ManuallyDrop::new(std::fs::File::from_raw_fd(fd)) };
    loop {
        match file.write(&bytes[..bytes.len().min(65536)]) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_pid_is_read_from_a_complete_info_document_only() {
        assert!(matches!(
            parse_child_pid(b"{\n    \"child-pid\": 12"),
            Parsed::Incomplete
        ));
        assert!(matches!(
            parse_child_pid(b"{\n    \"child-pid\": 1234,\n    \"net-namespace\": 4026532183\n}\n"),
            Parsed::Pid(1234)
        ));
        assert!(matches!(
            parse_child_pid(b"{\"other\": 1}"),
            Parsed::Invalid
        ));
        assert!(matches!(parse_child_pid(b"garbage"), Parsed::Invalid));
    }
}
