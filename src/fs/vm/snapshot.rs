//! The saved VM: a boot of the agent to its "ready, no disk opened" point, kept as QEMU's
//! migration stream in strata's cache directory, so that each job restores it (well under
//! a second under TCG) instead of booting the kernel (seconds).
//!
//! The saved machine has `SLOTS` virtio-blk devices at fixed PCI addresses, each an empty
//! placeholder (`null-co`, no sectors), and the filesystems' modules loaded. A restore
//! starts QEMU with the same machine and devices, the job's NBD exports in the first slots
//! (with the job's serials; placeholders in the rest) and `-incoming fd:3`, the file opened
//! read-only by this process: QEMU, as nobody, reads it through the descriptor and can
//! neither write it nor reach it by name. The agent is then told the time, given random
//! bytes, and has the job's disks probed again (`AgentRequest::Resume`).
//!
//! The file is keyed like the initramfs: the kernel QEMU loads, the initramfs (itself keyed
//! by kernel, binary and modules.dep), the QEMU binary, and the machine's options; a new
//! key makes a new file. It is written to a temporary name and renamed, so concurrent jobs
//! making it at once each make a whole one and the last rename wins. A state that does not
//! restore is removed (the next job saves a new one) and the job boots instead.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::qemu::{self, Boot, Vm};
use crate::fs::types::*;
use crate::store::device::SharedDevice;

/// `STRATA_VM_SNAPSHOT=0` turns the saved VM off (every job boots).

/// A VM with `disks` (virtio serial, device) attached, its agent ready: restored from the
/// saved state (made first if there is none), or, where that cannot be, booted.
pub fn start(disks: Vec<(String, SharedDevice)>) -> FsResult<Vm> {
    if disks.len() <= qemu::SLOTS && enabled() {
        match restore(&disks) {
            Ok(vm) => return Ok(vm),
            Err(e) => tracing::warn!("the XFS/btrfs VM boots instead of restoring: {e}"),
        }
    }
    Vm::boot(Boot::Cold, &disks)
}
pub fn enabled() -> bool {
    std::env::var("STRATA_VM_SNAPSHOT").map_or(true, |v| v != "0")
}

fn err(detail: impl Into<String>) -> FsError {
    FsError::new(libc::EIO, detail)
}

/// `PATH`'s `name`, or `name` itself.
fn in_path(name: &std::ffi::OsStr) -> PathBuf {
    let p = Path::new(name);
    if p.components().count() > 1 {
        return p.to_path_buf();
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(p))
        .find(|c| c.is_file())
        .unwrap_or_else(|| p.to_path_buf())
}

/// The saved state's file for the current kernel, initramfs, QEMU and machine.
pub fn path() -> FsResult<PathBuf> {
    use super::initramfs::{bootable, build, cache_dir, kernel, stamp};
    let (k, version) = kernel()?;
    let exe = std::env::current_exe().map_err(|e| err(format!("finding strata's binary: {e}")))?;
    let initrd = build(&k, &version, &exe)?;
    let boot = bootable(&k, &version);
    let qemu = in_path(&qemu::qemu_binary());
    let key = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for p in [&boot, &initrd, &qemu] {
            h.update(stamp(p).as_bytes());
            h.update(b"\n");
        }
        h.update(qemu::machine_key().as_bytes());
        let d = h.finalize();
        d.iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    Ok(cache_dir().join(format!("vmstate-{key}")))
}

/// A VM restored from the saved state with `disks` attached (the state saved first where
/// there is none).
pub fn restore(disks: &[(String, SharedDevice)]) -> FsResult<Vm> {
    let path = path()?;
    if !path.exists() {
        let t = std::time::Instant::now();
        save(&path).map_err(|e| e.context("saving the VM's state"))?;
        tracing::info!(
            "saved the XFS/btrfs VM's state in {:.3}s as {}",
            t.elapsed().as_secs_f64(),
            path.display()
        );
    }
    let f = std::fs::File::open(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    match Vm::boot(Boot::Restore(f), disks) {
        Ok(vm) => Ok(vm),
        Err(e) => {
            if e.detail.starts_with(qemu::BAD_STATE) {
                // Only a file that still is the one that failed: another job may have
                // replaced it with a good one meanwhile (a rename is atomic; this is not,
                // and the worst is one more save).
                let _ = std::fs::remove_file(&path);
                return Err(e.context(format!("{} (removed)", path.display())));
            }
            Err(e)
        }
    }
}

/// Boots the VM to be saved, migrates it into a temporary file beside `path`, and renames
/// that into place.
fn save(path: &Path) -> FsResult<()> {
    let cache = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(cache).map_err(|e| err(format!("{}: {e}", cache.display())))?;
    let dir = qemu::job_dir()?;
    let result = save_in(&dir, path);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn save_in(dir: &Path, path: &Path) -> FsResult<()> {
    let qmp_path = dir.join("qmp.sock");
    let qmp_l = qemu::listen(&qmp_path)?;
    let mig_path = dir.join("mig.sock");
    let mig_l = qemu::listen(&mig_path)?;
    // Booted to its greeting: QEMU connected its monitor at start, before the agent's port.
    let vm = Vm::boot(Boot::Save(qmp_path), &[])?;
    qmp_l
        .set_nonblocking(true)
        .map_err(|e| err(format!("the monitor socket: {e}")))?;
    let (qmp, _) = qmp_l
        .accept()
        .map_err(|e| err(format!("QEMU's monitor did not connect: {e}")))?;
    qmp.set_nonblocking(false)
        .and_then(|()| qmp.set_read_timeout(Some(Duration::from_secs(120))))
        .map_err(|e| err(format!("the monitor socket: {e}")))?;
    let mut m = Monitor::new(qmp)?;
    m.exec("qmp_capabilities", json!({}))?;
    // No bandwidth cap (the default is 128 MiB/s), and a downtime the idle guest meets in
    // one pass.
    m.exec(
        "migrate-set-parameters",
        json!({"max-bandwidth": 64u64 << 30, "downtime-limit": 10000}),
    )?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let out = std::fs::File::create(&tmp).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
    let copier = std::thread::spawn(move || -> std::io::Result<u64> {
        let (mut s, _) = mig_l.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut out = std::io::BufWriter::new(out);
        let n = std::io::copy(&mut s, &mut out)?;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(n)
    });
    let sent = m.exec(
        "migrate",
        json!({"uri": format!("unix:{}", mig_path.display())}),
    );
    let copied = match sent {
        // The copy ends when QEMU closes the stream: done or failed.
        Ok(_) => copier
            .join()
            .map_err(|_| err("the copy of the VM's state panicked"))?,
        Err(e) => {
            // Nothing will connect: unblock the copier by connecting to it.
            let _ = UnixStream::connect(&mig_path);
            let _ = copier.join();
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let status = m.exec("query-migrate", json!({}));
    drop(vm);
    let done = status
        .as_ref()
        .ok()
        .and_then(|s| s.get("status"))
        .and_then(Value::as_str)
        == Some("completed");
    match copied {
        Ok(n) if done && n > 0 => {}
        other => {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(format!(
                "the migration did not complete ({status:?}; copied {other:?})"
            )));
        }
    }
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(format!("{}: {e}", path.display()))
        })
}

/// A QMP connection: one command at a time, events skipped.
struct Monitor {
    to: UnixStream,
    from: BufReader<UnixStream>,
}

impl Monitor {
    fn new(s: UnixStream) -> FsResult<Monitor> {
        let from = BufReader::new(
            s.try_clone()
                .map_err(|e| err(format!("the monitor socket: {e}")))?,
        );
        let mut m = Monitor { to: s, from };
        let greeting = m.read()?;
        if greeting.get("QMP").is_none() {
            return Err(err(format!("QEMU's monitor greeted with {greeting}")));
        }
        Ok(m)
    }

    fn read(&mut self) -> FsResult<Value> {
        let mut line = String::new();
        let n = self
            .from
            .read_line(&mut line)
            .map_err(|e| err(format!("QEMU's monitor: {e}")))?;
        if n == 0 {
            return Err(err("QEMU's monitor closed"));
        }
        serde_json::from_str(&line).map_err(|e| err(format!("QEMU's monitor said {line:?}: {e}")))
    }

    /// Runs `command` and returns its `return` value.
    fn exec(&mut self, command: &str, arguments: Value) -> FsResult<Value> {
        let msg = json!({"execute": command, "arguments": arguments});
        writeln!(self.to, "{msg}").map_err(|e| err(format!("QEMU's monitor: {e}")))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(err(format!("QEMU's monitor refused {command}: {e}")));
            }
        }
    }
}
