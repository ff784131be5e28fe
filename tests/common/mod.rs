//! Helpers shared by integration tests that drive the real `strata` binary: a temporary
//! repository, `strata serve` on a free 127.0.0.1 port (stopped by a Drop guard), external
//! commands, and a child process whose console output is read incrementally with a bounded
//! wait for a marker (killed by a Drop guard).

#![allow(dead_code)]

pub mod disks;
pub mod golden_images;
pub mod hpe;
pub mod pg_server;
pub mod zips;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_strata");

/// Whether `name` is on PATH.
pub fn have(name: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `name`, asserting it is installed (`hint` says which tool installs it).
pub fn tool<'a>(name: &'a str, hint: &str) -> &'a str {
    assert!(have(name), "{name} is missing: run {hint}");
    name
}

/// Runs `cmd`, asserting success; returns stdout.
pub fn ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The last `n` characters of `s` (for failure messages).
pub fn tail(s: &str, n: usize) -> &str {
    let mut start = s.len().saturating_sub(n);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// A temporary repository plus a work directory for fixtures.
pub struct Repo {
    _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub work: PathBuf,
}

impl Repo {
    pub fn new() -> Repo {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        Repo {
            root,
            work,
            _tmp: tmp,
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--repo")
            .arg(&self.root)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "strata {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }

    /// `strata user add NAME --password-stdin`: a user the REST API logs in.
    pub fn add_user(&self, name: &str, password: &str) {
        use std::io::Write;
        let mut c = Command::new(BIN)
            .arg("--repo")
            .arg(&self.root)
            .args(["user", "add", name, "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(c.stdin.take().unwrap(), "{password}").unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Runs a command that must fail with a clear message (no panic); returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "strata {args:?} unexpectedly succeeded"
        );
        let e = String::from_utf8(o.stderr).unwrap();
        assert!(e.contains("strata: error:"), "unclear error: {e}");
        assert!(!e.contains("panicked"), "panic: {e}");
        e
    }

    /// Whether the repository's staging directory holds nothing (nothing half-made).
    pub fn staging_is_empty(&self) -> bool {
        std::fs::read_dir(self.root.join("tmp"))
            .unwrap()
            .next()
            .is_none()
    }

    /// Imports `file` as golden image `name`-gold, clones volume `name` from it and exports
    /// it to `initiator` (with `extra` export options, e.g. CHAP). Returns the target IQN.
    pub fn volume_from_file(
        &self,
        name: &str,
        file: &Path,
        initiator: &str,
        extra: &[&str],
    ) -> String {
        let image = format!("{name}-gold");
        self.ok(&["image", "import", file.to_str().unwrap(), "--name", &image]);
        self.ok(&["volume", "create", name, "--from", &image]);
        let mut args = vec!["export", name, "--initiator", initiator];
        args.extend_from_slice(extra);
        self.ok(&args);
        format!("iqn.2026-11.org.strata:{name}")
    }

    /// An empty volume of `mib` MiB exported to `initiators`; returns the target IQN.
    pub fn exported_volume(&self, name: &str, mib: u64, initiators: &[&str]) -> String {
        self.ok(&["volume", "create", name, "--size", &format!("{mib}M")]);
        let mut args = vec!["export", name];
        for i in initiators {
            args.push("--initiator");
            args.push(i);
        }
        self.ok(&args);
        format!("iqn.2026-11.org.strata:{name}")
    }

    /// `strata serve` on a free 127.0.0.1 port; its stderr (the log) goes to a file, one
    /// per server started (a restarted server does not overwrite the earlier log).
    pub fn serve(&self, extra: &[&str]) -> Server {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = self.path(&if n == 0 {
            "serve.log".to_string()
        } else {
            format!("serve-{n}.log")
        });
        let mut child = Command::new(BIN)
            .arg("--repo")
            .arg(&self.root)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Server {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            log,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("server did not announce its address: {}", server.log()));
        server.addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected announcement {line:?}"));
        server
    }
}

/// A running `strata serve`; killed on drop unless stopped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The `iscsi://` URL of LUN 0 of `iqn` (libiscsi tools, qemu-img).
    pub fn url(&self, iqn: &str) -> String {
        format!("iscsi://{}/{iqn}/0", self.addr)
    }

    /// QEMU `--image-opts` for LUN 0 of `iqn` as `initiator`.
    pub fn qemu_opts(&self, iqn: &str, initiator: &str) -> String {
        format!(
            "driver=iscsi,transport=tcp,portal={},target={iqn},lun=0,initiator-name={initiator}",
            self.addr
        )
    }

    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap the process.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "server ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The file the log goes to (it outlives the server, e.g. to read what `stop` logged).
    pub fn log_path(&self) -> PathBuf {
        self.log.clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child (a VM) whose stdout is its console; read incrementally by a thread, and whose
/// stdin is the console's input (`type_line`). Killed on drop.
pub struct Console {
    child: Child,
    input: Option<std::process::ChildStdin>,
    rx: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
    eof: bool,
}

impl Console {
    /// Spawns `cmd` with stdout piped (stderr is merged into the console record too) and
    /// no input.
    pub fn spawn(cmd: &mut Command) -> Console {
        Console::start(cmd.stdin(Stdio::null()))
    }

    /// `spawn`, with a pipe to the child's stdin for `type_line`.
    pub fn spawn_with_input(cmd: &mut Command) -> Console {
        Console::start(cmd.stdin(Stdio::piped()))
    }

    fn start(cmd: &mut Command) -> Console {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let (tx, rx) = mpsc::channel();
        for mut r in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tx.send(buf[..n].to_vec()).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
        Console {
            input: child.stdin.take(),
            child,
            rx,
            seen: Vec::new(),
            eof: false,
        }
    }

    /// Types `line` and a newline on the console (QEMU's `-serial stdio`: the guest's
    /// serial port receives it).
    pub fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let input = self.input.as_mut().expect("console input");
        input
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| input.flush())
            .unwrap_or_else(|e| panic!("typing on the console: {e}"));
    }

    /// Everything read so far, lossily as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }

    fn contains(&self, marker: &str) -> bool {
        self.seen
            .windows(marker.len())
            .any(|w| w == marker.as_bytes())
    }

    /// Waits until `marker` appears on the console; false on timeout or if the console
    /// closed without it.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> bool {
        self.wait_for_any(&[marker], timeout) == Some(0)
    }

    /// Waits until one of `markers` appears on the console (e.g. success and known
    /// failure messages); returns its index, or None on timeout or if the console closed.
    pub fn wait_for_any(&mut self, markers: &[&str], timeout: Duration) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = markers.iter().position(|m| self.contains(m)) {
                return Some(i);
            }
            if self.eof {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
                Err(mpsc::RecvTimeoutError::Disconnected) => self.eof = true,
            }
        }
    }

    /// Waits (bounded) for the process to exit, collecting its console; None on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Ok(chunk) = self.rx.try_recv() {
                self.seen.extend_from_slice(&chunk);
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                // Drain what the reader threads still hold (bounded).
                let drain = Instant::now() + Duration::from_secs(5);
                while !self.eof && Instant::now() < drain {
                    match self.rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(chunk) => self.seen.extend_from_slice(&chunk),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => self.eof = true,
                    }
                }
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(chunk) => self.seen.extend_from_slice(&chunk),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.eof = true;
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An exclusive lock on a file in the temp directory, held until dropped: serializes tests
/// (across test processes too, as nextest runs each test in its own process).
pub struct ProcessLock(std::fs::File);

impl ProcessLock {
    pub fn acquire(name: &str) -> ProcessLock {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join(name))
            .unwrap();
        // SAFETY: flock on a descriptor we own; released when the file is closed.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(r, 0, "flock: {}", std::io::Error::last_os_error());
        ProcessLock(f)
    }
}
