//! One VM for one job: Debian's kernel under QEMU (TCG), strata's agent as its init, the
//! job's XFS/btrfs devices attached as virtio disks served over NBD from this process, and
//! the agent reached over a virtio-serial port on a unix socket. Requests are answered in
//! order, each within a timeout; a VM that dies, hangs or answers nonsense is killed and
//! every later request fails, without the device having been flushed.
//!
//! Limits: no network device (`-nodefaults -nic none`), a fixed guest memory, a bounded
//! TCG code buffer, the process's address space, CPU time from the worker's limits, death
//! with the worker (PR_SET_PDEATHSIG), and, when the worker runs as root, uid/gid 65534
//! (nobody) for QEMU itself.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::fs::frame::{read_frame, write_frame};
use crate::fs::types::*;
use crate::store::device::SharedDevice;

use super::proto::*;

/// Guest memory, MiB.
const GUEST_MB: u64 = 512;
/// TCG's translated-code buffer, MiB (QEMU's default is 1 GiB).
const TB_MB: u64 = 128;

pub struct Vm {
    child: Child,
    to: BufWriter<UnixStream>,
    from: BufReader<UnixStream>,
    /// The job's directory: removed once the VM is up (QEMU holds what it needs open), so a
    /// worker that ends by `process::exit` leaves nothing behind but during a boot.
    dir: PathBuf,
    /// The guest's console log, kept open after its directory is gone, for error messages.
    console: Option<std::fs::File>,
    timeout: Duration,
    dead: Option<String>,
    /// How long the boot took, to the agent's first frame.
    pub boot: Duration,
    /// Filesystems mounted in the guest and not yet unmounted: with none, the guest holds
    /// nothing that is not on its disks already, and it is killed without a power-off.
    mounted: u32,
}

/// The start of the error of a restore whose saved state is at fault.
pub(super) const BAD_STATE: &str = "the saved VM state did not resume";

/// How long a restored agent may take to resume before the job boots a VM instead.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

fn vm_err(detail: impl Into<String>) -> FsError {
    FsError::new(libc::EIO, detail)
}

fn io_err(what: &str) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |e| vm_err(format!("the XFS/btrfs VM: {what}: {e}"))
}

/// A private directory for the job's sockets and console log.
pub(super) fn job_dir() -> FsResult<PathBuf> {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = std::env::temp_dir().join(format!("strata-vm-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).map_err(io_err("making its directory"))?;
    use std::os::unix::fs::PermissionsExt;
    // QEMU may run as nobody: it must reach the sockets in here.
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777))
        .map_err(io_err("its directory"))?;
    Ok(d)
}

fn timeout() -> Duration {
    let s = std::env::var("STRATA_VM_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(s)
}

/// How a VM starts.
pub(super) enum Boot {
    /// A full boot of the kernel with the job's disks (and only them) attached.
    Cold,
    /// A boot to be saved (`snapshot.rs`): every slot a placeholder, the filesystems'
    /// modules preloaded, and a QMP monitor on this socket path.
    Save(PathBuf),
    /// A restore of the saved state read from this file, the job's disks in the first slots.
    Restore(std::fs::File),
}

/// The kernel command line; a saved VM's has `strata.preload` (the agent loads every
/// filesystem's modules before greeting).
fn append(boot: &Boot) -> String {
    let mut a = String::from(
        "console=ttyS0 panic=-1 oops=panic loglevel=4 rdinit=/init tsc=reliable no_timer_check",
    );
    if !matches!(boot, Boot::Cold) {
        a.push_str(" strata.preload");
    }
    a
}

/// What a saved VM state depends on besides the kernel, initramfs and QEMU binary: the
/// machine and its devices (`snapshot.rs` keys its file by it).
pub(super) fn machine_key() -> String {
    format!(
        "m={GUEST_MB} tb={TB_MB} slots={SLOTS} append={:?} serial-pci@{SERIAL_ADDR} blk@{FIRST_SLOT_ADDR}",
        append(&Boot::Save(PathBuf::new()))
    )
}

/// Disk slots of a saved VM: a job with more XFS/btrfs devices boots cold.
pub const SLOTS: usize = 8;
/// PCI addresses (slot numbers) fixed so that a restore's devices are the save's.
const SERIAL_ADDR: u32 = 3;
const FIRST_SLOT_ADDR: u32 = 4;

/// The QEMU binary (`STRATA_VM_QEMU` or `qemu-system-x86_64` from `PATH`).
pub(super) fn qemu_binary() -> std::ffi::OsString {
    std::env::var_os("STRATA_VM_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into())
}

/// QEMU started, its agent socket not yet accepted.
struct Spawned {
    child: Child,
    agent: UnixListener,
    dir: PathBuf,
    started: Instant,
}

/// Starts QEMU for `boot` with `disks` (virtio serial, device), serving them over NBD.
fn spawn(boot: &Boot, disks: &[(String, SharedDevice)]) -> FsResult<Spawned> {
    let (kernel, version) = super::initramfs::kernel()?;
    let exe = std::env::current_exe().map_err(io_err("finding strata's binary"))?;
    let initrd = super::initramfs::build(&kernel, &version, &exe)?;
    let kernel = super::initramfs::bootable(&kernel, &version);
    let dir = job_dir()?;
    let fail = |e: FsError, dir: &PathBuf| {
        let _ = std::fs::remove_dir_all(dir);
        e
    };
    // The cache may sit under a home directory QEMU (as nobody) cannot enter.
    let job_initrd = dir.join("initrd.cpio");
    let job_kernel = dir.join("kernel");
    for (from, to) in [(&initrd, &job_initrd), (&kernel, &job_kernel)] {
        std::fs::hard_link(from, to)
            .or_else(|_| std::fs::copy(from, to).map(drop))
            .map_err(io_err("the kernel and initramfs"))
            .map_err(|e| fail(e, &dir))?;
    }
    let nbd_path = dir.join("nbd.sock");
    let agent_path = dir.join("agent.sock");
    let nbd = listen(&nbd_path).map_err(|e| fail(e, &dir))?;
    let agent = listen(&agent_path).map_err(|e| fail(e, &dir))?;
    let mut cmd = Command::new(qemu_binary());
    cmd.args(["-accel", &format!("tcg,tb-size={TB_MB}")])
        .args(["-m", &GUEST_MB.to_string(), "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-no-reboot",
            "-nic",
            "none",
        ])
        .args(["-display", "none", "-monitor", "none"])
        .arg("-serial")
        .arg(format!("file:{}", dir.join("console.log").display()))
        .arg("-kernel")
        .arg(&job_kernel)
        .arg("-initrd")
        .arg(&job_initrd)
        .args(["-append", &append(boot)]);
    let cold = matches!(boot, Boot::Cold);
    if cold {
        cmd.args(["-device", "virtio-serial-pci"]);
    } else {
        cmd.args(["-device", &format!("virtio-serial-pci,addr={SERIAL_ADDR}")]);
    }
    cmd.arg("-chardev")
        .arg(format!("socket,id=agent,path={}", agent_path.display()))
        .args(["-device", "virtserialport,chardev=agent,name=strata"]);
    let mut exports = HashMap::new();
    for (serial, dev) in disks {
        exports.insert(serial.clone(), dev.clone());
    }
    let slots = if cold { disks.len() } else { SLOTS };
    for i in 0..slots {
        let (node, serial) = match disks.get(i) {
            Some((serial, dev)) => {
                cmd.arg("-blockdev").arg(format!(
                    "driver=nbd,node-name={serial},server.type=unix,server.path={},export={serial}{}",
                    nbd_path.display(),
                    if dev.is_read_only() {
                        ",read-only=on"
                    } else {
                        ""
                    }
                ));
                (serial.clone(), serial.clone())
            }
            None => {
                // An empty placeholder: the guest sees a disk of no sectors.
                cmd.arg("-blockdev")
                    .arg(format!("driver=null-co,node-name=slot{i},size=0"));
                (format!("slot{i}"), format!("none{i}"))
            }
        };
        let addr = if cold {
            String::new()
        } else {
            format!(",addr={}", FIRST_SLOT_ADDR + i as u32)
        };
        cmd.arg("-device")
            .arg(format!("virtio-blk-pci,drive={node},serial={serial}{addr}"));
    }
    if let Boot::Save(qmp) = boot {
        cmd.arg("-chardev")
            .arg(format!("socket,id=qmp,path={}", qmp.display()))
            .args(["-mon", "chardev=qmp,mode=control"]);
    }
    let incoming = match boot {
        Boot::Restore(f) => {
            use std::os::fd::AsRawFd;
            cmd.args(["-incoming", &format!("fd:{INCOMING_FD}")]);
            Some(f.as_raw_fd())
        }
        _ => None,
    };
    super::nbd_server::spawn(nbd, Arc::new(exports))
        .map_err(io_err("the NBD server"))
        .map_err(|e| fail(e, &dir))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let mem = (GUEST_MB + TB_MB + 768) << 20;
            let lim = libc::rlimit {
                rlim_cur: mem,
                rlim_max: mem,
            };
            libc::setrlimit(libc::RLIMIT_DATA, &lim);
            if let Some(fd) = incoming {
                // The saved state, opened read-only by this process: QEMU (as nobody)
                // reads it through this descriptor and cannot write it.
                if fd == INCOMING_FD {
                    libc::fcntl(fd, libc::F_SETFD, 0);
                } else if libc::dup2(fd, INCOMING_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::geteuid() == 0 {
                libc::setgroups(0, std::ptr::null());
                libc::setgid(65534);
                libc::setuid(65534);
            }
            // After the uid change, which clears it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let started = Instant::now();
    let child = cmd.spawn().map_err(|e| {
        fail(
            vm_err(format!(
                "starting qemu-system-x86_64 for the XFS/btrfs VM: {e} (install \
                 qemu-system-x86: tools/install-deps)"
            )),
            &dir,
        )
    })?;
    Ok(Spawned {
        child,
        agent,
        dir,
        started,
    })
}

/// The descriptor a restored QEMU reads its saved state from.
const INCOMING_FD: i32 = 3;

/// A unix socket QEMU (maybe as nobody) may connect to.
pub(super) fn listen(path: &std::path::Path) -> FsResult<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let l = UnixListener::bind(path).map_err(io_err("binding a socket"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777))
        .map_err(io_err("a socket's mode"))?;
    Ok(l)
}

impl Vm {
    /// Starts QEMU for `boot` and connects to its agent: greeted (a boot), or resumed with
    /// the job's disks (a restore). `timeout` bounds the wait for the agent's first frame.
    pub(super) fn boot(boot: Boot, disks: &[(String, SharedDevice)]) -> FsResult<Vm> {
        let restore = matches!(boot, Boot::Restore(_));
        let Spawned {
            mut child,
            agent,
            dir,
            started,
        } = spawn(&boot, disks)?;
        drop(boot);
        let timeout = timeout();
        let stream = match accept(&agent, &mut child, started + timeout) {
            Ok(s) => s,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                let said = qemu_said(&mut child, &dir, None);
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e.context(said));
            }
        };
        let connected = started.elapsed();
        let from = BufReader::new(stream.try_clone().map_err(io_err("the agent socket"))?);
        let mut vm = Vm {
            child,
            to: BufWriter::new(stream),
            from,
            dir,
            console: None,
            timeout,
            dead: None,
            boot: Duration::ZERO,
            mounted: 0,
        };
        if restore {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let seed: [u8; 32] = rand::random();
            // Twice: first the clock and randomness alone, which proves the saved state
            // good (else it is discarded), then the disks,
            // whose failure is the job's (a hostile image), not the saved state's.
            let req = |serials: Vec<String>| AgentRequest::Resume {
                sec: now.as_secs() as i64,
                nsec: now.subsec_nanos(),
                seed: serde_bytes::ByteBuf::from(seed.to_vec()),
                serials,
            };
            // A restore that goes wrong is retried as a boot: it need not wait long.
            vm.timeout = timeout.min(RESTORE_TIMEOUT);
            match vm.call(&req(Vec::new())) {
                Ok(AgentReply::Done) => {}
                Ok(other) => {
                    let e = vm.kill(format!("the agent resumed with {other:?}"));
                    return Err(e.context(BAD_STATE));
                }
                Err(e) => return Err(e.context(BAD_STATE)),
            }
            let resumed = started.elapsed();
            match vm.call(&req(disks.iter().map(|(s, _)| s.clone()).collect())) {
                Ok(AgentReply::Done) => {}
                Ok(other) => return Err(vm.kill(format!("the agent resumed with {other:?}"))),
                Err(e) => return Err(e),
            }
            vm.timeout = timeout;
            tracing::debug!(
                "the XFS/btrfs VM's restore: QEMU connected at {:.3}s, the agent resumed at \
                 {:.3}s, its {} disk(s) probed at {:.3}s",
                connected.as_secs_f64(),
                resumed.as_secs_f64(),
                disks.len(),
                started.elapsed().as_secs_f64()
            );
        } else {
            match vm.recv("booting") {
                Ok(AgentReply::Hello(h)) if h == HELLO => {}
                Ok(other) => return Err(vm.kill(format!("the agent greeted with {other:?}"))),
                Err(e) => return Err(e),
            }
        }
        // Every connection is made and QEMU has the kernel, initramfs and console log open
        // by now: nothing in the directory is needed by name any more.
        vm.console = std::fs::File::open(vm.dir.join("console.log")).ok();
        let _ = std::fs::remove_dir_all(&vm.dir);
        vm.boot = started.elapsed();
        tracing::debug!(
            "the XFS/btrfs VM {} in {:.3}s",
            if restore { "restored" } else { "booted" },
            vm.boot.as_secs_f64()
        );
        Ok(vm)
    }

    /// Sends `req` and returns the agent's answer (its errors as `Err`).
    pub fn call(&mut self, req: &AgentRequest) -> FsResult<AgentReply> {
        if let Some(d) = &self.dead {
            return Err(vm_err(format!("the XFS/btrfs VM is gone ({d})")));
        }
        use std::io::Write;
        if let Err(e) = write_frame(&mut self.to, req).and_then(|()| self.to.flush()) {
            return Err(self.kill(format!("sending a request: {e}")));
        }
        let doing = format!("{req:?}");
        let doing = doing
            .split([' ', '{', '('])
            .next()
            .unwrap_or_default()
            .to_lowercase();
        match self.recv(&format!("answering {doing}"))? {
            AgentReply::Error(e) => Err(e),
            r => {
                match (req, &r) {
                    (AgentRequest::Mount { .. }, AgentReply::Mounted { .. }) => self.mounted += 1,
                    (AgentRequest::Umount { .. }, AgentReply::Done) => {
                        self.mounted = self.mounted.saturating_sub(1)
                    }
                    _ => {}
                }
                Ok(r)
            }
        }
    }

    fn recv(&mut self, doing: &str) -> FsResult<AgentReply> {
        let _ = self.from.get_ref().set_read_timeout(Some(self.timeout));
        match read_frame::<AgentReply>(&mut self.from) {
            Ok(Some(r)) => Ok(r),
            Ok(None) => Err(self.kill(format!("the VM stopped while {doing}"))),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(self.kill(format!("no answer within {:?} while {doing}", self.timeout)))
            }
            Err(e) => Err(self.kill(format!("while {doing}: {e}"))),
        }
    }

    /// Kills QEMU and records why; the error to return.
    fn kill(&mut self, why: String) -> FsError {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let said = qemu_said(&mut self.child, &self.dir, self.console.as_mut());
        let msg = format!("the XFS/btrfs VM failed: {why}{said}");
        // The path-level layer above keeps only the errno of a failed call (as guestfish
        // prints it): the reason goes to the log as well.
        tracing::warn!("{msg}");
        self.dead = Some(why);
        vm_err(msg)
    }

    /// Asks the guest to power off and waits for QEMU (killing it after a while); a guest
    /// with nothing mounted is killed at once (every write it made is on its disks).
    pub fn shutdown(&mut self) {
        if self.dead.is_none() && self.mounted == 0 {
            self.dead = Some("stopped".into());
        }
        if self.dead.is_none() {
            use std::io::Write;
            let _ =
                write_frame(&mut self.to, &AgentRequest::PowerOff).and_then(|()| self.to.flush());
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                match self.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            self.dead = Some("powered off".into());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.shutdown();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for QEMU to connect to the agent socket, or to exit.
fn accept(l: &UnixListener, child: &mut Child, deadline: Instant) -> FsResult<UnixStream> {
    l.set_nonblocking(true)
        .map_err(io_err("the agent socket"))?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)
                    .map_err(io_err("the agent socket"))?;
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(vm_err(format!("the agent socket: {e}"))),
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(vm_err(format!("qemu-system-x86_64 exited at start ({st})")));
        }
        if Instant::now() > deadline {
            return Err(vm_err(
                "qemu-system-x86_64 did not connect to the agent socket",
            ));
        }
        // QEMU connects the chardev once it has parsed its options: a few ms.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The last lines of QEMU's stderr and of the guest's console, for an error message.
fn qemu_said(
    child: &mut Child,
    dir: &std::path::Path,
    console: Option<&mut std::fs::File>,
) -> String {
    let mut out = String::new();
    if let Some(mut e) = child.stderr.take() {
        let mut s = String::new();
        let _ = e.read_to_string(&mut s);
        if !s.trim().is_empty() {
            out.push_str(&format!("; qemu: {}", s.trim()));
        }
    }
    let text = match console {
        Some(f) => {
            use std::io::Seek;
            let mut s = String::new();
            f.rewind()
                .and_then(|()| f.read_to_string(&mut s))
                .map(|_| s)
        }
        None => std::fs::read_to_string(dir.join("console.log")),
    };
    if let Ok(c) = text {
        let lines: Vec<&str> = c.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(8)..].join(" | ");
        if !tail.is_empty() {
            out.push_str(&format!("; guest console: {tail}"));
        }
    }
    out
}
