//! The whole boot chain (issue 11): a Debian 12 golden image built from Debian packages by
//! `tools/build-boot-image` boots in QEMU with OVMF and no local disk. OVMF's IScsiDxe logs
//! in to `strata serve` with the attempt the test writes into its variable store (as a
//! server profile would), GRUB on the volume's ESP loads the kernel and initramfs through
//! the firmware, the kernel finds the iBFT the firmware published, the initramfs
//! (initramfs-tools with open-iscsi, `ISCSI_AUTO=true`) logs in again with the iBFT's
//! initiator name and target, mounts the root from the iSCSI disk, and the root's init
//! reports on the serial console what the root is mounted from, writes a file, and powers
//! off. Each boot is about two minutes under TCG, so these tests share boot.rs's lock (one
//! QEMU at a time) and nextest's heavy group.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use strata::store::trace;

use super::common::{tail, Console, Repo, Server};
use super::ovmf_vars;
use super::{boot_lock, netdev, qemu_base, Chap, HINT};

mod bench;

const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x57];

/// The golden image's disk, built (or found in its cache) by tools/build-boot-image.
pub fn golden_image() -> PathBuf {
    let tool = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/build-boot-image");
    let o = Command::new(&tool)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", tool.display()));
    assert!(
        o.status.success(),
        "{} failed (needs root, Debian's archive and {HINT}):\n{}",
        tool.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let path = PathBuf::from(out.lines().last().unwrap_or_default().trim());
    assert!(path.exists(), "build-boot-image printed {path:?}");
    path
}

/// What a boot is configured with.
pub struct BootConfig<'a> {
    pub initiator: &'a str,
    /// The CHAP the export requires, and the (possibly different) one the firmware uses.
    pub export_chap: Option<&'a Chap>,
    pub firmware_chap: Option<&'a Chap>,
    pub timeout: Duration,
}

/// Console lines that mark the phases, in the order they come.
pub const PHASES: &[(&str, &str)] = &[
    ("loader", "STRATA-GRUB-START"),
    ("kernel", "Linux version"),
    ("initramfs login", "iscsistart: Logging into"),
    ("root mounted", "STRATA-USERSPACE-UP"),
    ("reported", "STRATA-ROOT "),
    ("powered off", "STRATA-POWEROFF"),
];

/// Console text that means the boot failed: stop waiting.
const FAILED: &[&str] = &[
    ">>Start PXE over IPv4",
    "Kernel panic",
    "Dropping to a shell",
    "No bootable device",
];

/// One boot's record.
pub struct Boot {
    pub console: String,
    /// Seconds from QEMU's start to each phase seen (in PHASES order, until one is missing).
    pub phases: Vec<(&'static str, f64)>,
    /// The console marker that stopped the wait early, if a failure one.
    pub failed_on: Option<&'static str>,
}

impl Boot {
    pub fn reached(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p.0 == phase)
    }

    /// The `STRATA-ROOT ...` line the image's init prints.
    pub fn root_line(&self) -> Option<&str> {
        self.console
            .lines()
            .find(|l| l.starts_with("STRATA-ROOT "))
            .map(str::trim)
    }
}

/// A copy of OVMF's variable store with one IScsiDxe attempt to LUN 0 of `target`.
pub fn ovmf_vars_for(
    repo: &Repo,
    name: &str,
    initiator: &str,
    target: &str,
    chap: Option<&Chap>,
) -> PathBuf {
    ovmf_vars_lun(repo, name, initiator, target, chap, 0)
}

/// `ovmf_vars_for` booting LUN `lun` (tgt's first disk is LUN 1).
pub fn ovmf_vars_lun(
    repo: &Repo,
    name: &str,
    initiator: &str,
    target: &str,
    chap: Option<&Chap>,
    lun: u8,
) -> PathBuf {
    let vars = repo.path(name);
    let mut store = ovmf_vars::VarStore::open(Path::new(OVMF_VARS));
    ovmf_vars::configure_iscsi_boot(
        &mut store,
        initiator,
        &ovmf_vars::Attempt {
            mac: MAC,
            target,
            target_ip: [10, 0, 2, 100],
            port: 3260,
            lun,
            chap: chap.map(|c| (c.user, c.secret)),
            reverse_chap: chap.and_then(|c| c.mutual),
        },
    );
    store.save(&vars);
    vars
}

/// QEMU with OVMF, no disk, one virtio NIC whose only reachable address is strata's port.
/// `extra` are more QEMU arguments (e.g. `-fw_cfg` settings for the image's init). QEMU
/// runs at the test's own priority: niced below the rest of the run, a guest under TCG got
/// a few per cent of a core beside a parallel build, and its iSCSI initiator and its I/O
/// slowed to a crawl (its own timers, and strata's NOP-In pings, keep running meanwhile).
pub fn spawn_vm(repo: &Repo, vars: &Path, port: u16, extra: &[&str]) -> Console {
    let tftp = repo.path("tftp");
    std::fs::create_dir_all(&tftp).unwrap();
    let mac = MAC.map(|b| format!("{b:02x}")).join(":");
    let mut cmd = qemu_base();
    cmd.args(["-machine", "q35", "-m", "768", "-no-reboot"])
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"))
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        .args(["-netdev", &netdev(&tftp, port)])
        .arg("-device")
        .arg(format!("virtio-net-pci,netdev=n0,romfile=,mac={mac}"))
        .args(extra);
    Console::spawn_with_input(&mut cmd)
}

/// Follows a boot on `vm`'s console through PHASES until power-off, a failure marker, or
/// `timeout`.
pub fn follow(vm: &mut Console, start: Instant, timeout: Duration) -> Boot {
    let mut boot = follow_phases(vm, start, timeout, PHASES);
    if boot.phases.len() == PHASES.len() {
        // The guest powers off by sysrq right after its last marker.
        let _ = vm.wait_exit(Duration::from_secs(30));
    }
    vm.kill();
    boot.console = vm.text();
    boot
}

/// Waits for `phases` in turn (stopping at a failure marker or `timeout` after `start`),
/// leaving the VM running.
pub fn follow_phases(
    vm: &mut Console,
    start: Instant,
    timeout: Duration,
    phases_wanted: &[(&'static str, &'static str)],
) -> Boot {
    let deadline = start + timeout;
    let mut phases = Vec::new();
    let mut failed_on = None;
    for &(name, marker) in phases_wanted {
        let mut wanted = vec![marker];
        wanted.extend_from_slice(FAILED);
        let left = deadline.saturating_duration_since(Instant::now());
        match vm.wait_for_any(&wanted, left) {
            Some(0) => phases.push((name, start.elapsed().as_secs_f64())),
            Some(i) => {
                failed_on = Some(FAILED[i - 1]);
                break;
            }
            None => break,
        }
    }
    Boot {
        console: vm.text(),
        phases,
        failed_on,
    }
}

/// Imports the golden image, clones and exports volume `os` to `cfg.initiator`, and boots
/// it once. Returns the boot, the running server and the target IQN.
pub fn boot_once(repo: &Repo, cfg: &BootConfig) -> (Boot, Server, String) {
    let disk = golden_image();
    let export = cfg.export_chap.map(Chap::export_args).unwrap_or_default();
    let target = repo.volume_from_file("os", &disk, cfg.initiator, &export);
    let vars = ovmf_vars_for(
        repo,
        "OVMF_VARS.fd",
        cfg.initiator,
        &target,
        cfg.firmware_chap,
    );
    let server = repo.serve(&[]);
    let start = Instant::now();
    let mut vm = spawn_vm(repo, &vars, server.port(), &[]);
    let boot = follow(&mut vm, start, cfg.timeout);
    (boot, server, target)
}

pub fn explain(what: &str, boot: &Boot, server: &Server) -> String {
    format!(
        "{what} (phases {:?}, stopped on {:?})\n--- console (tail) ---\n{}\n--- strata serve log (tail) ---\n{}",
        boot.phases,
        boot.failed_on,
        tail(&boot.console, 6000),
        tail(&server.log(), 4000)
    )
}

/// `session started` lines of `initiator` in strata's log, each with its target.
pub fn sessions_of(log: &str, initiator: &str) -> Vec<String> {
    let who = format!("initiator={initiator}");
    log.lines()
        .filter(|l| l.contains("session started") && l.contains(&who))
        .map(str::to_string)
        .collect()
}

/// Asserts what every successful boot chain must show.
pub fn assert_os_ran_from_the_volume(boot: &Boot, server: &Server, initiator: &str, target: &str) {
    assert!(
        boot.reached("powered off"),
        "{}",
        explain("the OS did not run to its end", boot, server)
    );
    // The firmware booted the loader from the iSCSI disk (OVMF names the boot option by its
    // device path, which ends in the iSCSI node IScsiDxe built).
    let started = boot
        .console
        .lines()
        .find(|l| l.starts_with("BdsDxe: starting Boot"));
    assert!(
        started.is_some_and(|l| l.contains(&format!("/iSCSI({target},"))),
        "{}",
        explain("the loader did not come from the iSCSI disk", boot, server)
    );
    // The kernel found the firmware's iBFT and the initramfs logged in from it.
    assert!(
        boot.console.contains("iscsistart: Logging into"),
        "{}",
        explain("the initramfs did not log in", boot, server)
    );
    // The root is a partition of a SCSI disk that hangs below an iSCSI session of the
    // firmware's initiator to this target.
    let line = boot
        .root_line()
        .unwrap_or_else(|| panic!("{}", explain("no STRATA-ROOT line", boot, server)));
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_default()
            .to_string()
    };
    let source = field("source=");
    assert!(
        source.starts_with("/dev/sd") && source.ends_with('2'),
        "root is not the iSCSI disk's partition 2: {line}"
    );
    let sysfs = field("sysfs=");
    assert!(
        sysfs.contains("/session") && sysfs.contains("/host"),
        "root's block device is not below an iSCSI session: {line}"
    );
    assert!(
        line.contains(&format!(":{initiator}:{target}")),
        "no iSCSI session of {initiator} to {target} in the OS: {line}"
    );
    assert!(
        boot.console.contains("STRATA-IO-OK"),
        "{}",
        explain("write and read back on the root failed", boot, server)
    );
    // strata saw the firmware's session and the OS's: two logins by the same initiator to
    // the same target.
    let log = server.log();
    let sessions = sessions_of(&log, initiator);
    assert!(
        sessions.len() >= 2 && sessions.iter().all(|l| l.contains(target)),
        "strata's log shows {} session(s) of {initiator} to {target}, not the firmware's and the OS's:\n{}",
        sessions.len(),
        tail(&log, 4000)
    );
}

/// What one session of an initiator carried, from strata's `session started` and `session
/// ending` lines (matched by the connection's address).
#[derive(Debug)]
pub struct SessionIo {
    pub peer: String,
    pub commands: u64,
    pub read_bytes: u64,
    pub written_bytes: u64,
    pub reason: String,
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let key = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key.as_str()))
}

/// The sessions of `initiator` to a target (not discovery) that have ended, in the order
/// they started.
pub fn session_io(log: &str, initiator: &str) -> Vec<SessionIo> {
    let who = format!("initiator={initiator}");
    let mut started: Vec<String> = Vec::new();
    let mut ended: Vec<SessionIo> = Vec::new();
    for l in log.lines().filter(|l| l.contains(&who)) {
        let Some(peer) = field(l, "peer") else {
            continue;
        };
        if l.contains("session started") && !l.contains("(discovery)") {
            started.push(peer.to_string());
        } else if l.contains("session ending") && started.iter().any(|p| p == peer) {
            let n = |k| field(l, k).and_then(|v| v.parse().ok()).unwrap_or(0);
            ended.push(SessionIo {
                peer: peer.to_string(),
                commands: n("commands"),
                read_bytes: n("read_bytes"),
                written_bytes: n("written_bytes"),
                reason: l.split("reason=").nth(1).unwrap_or_default().to_string(),
            });
        }
    }
    ended.sort_by_key(|s| started.iter().position(|p| *p == s.peer));
    ended
}

/// Once the OS has taken over, its session carries the I/O: the firmware's session (the
/// first) read the loader, kernel and initramfs and then stopped, and the OS's sessions
/// that came after it carry the root's reads and its writes (the init writes and syncs a
/// file; nothing before the OS writes). `log` is the whole log of a stopped server, so every
/// session has its `session ending` line.
pub fn assert_the_os_sessions_carried_the_io(log: &str, initiator: &str) {
    let s = session_io(log, initiator);
    assert!(
        s.len() >= 2,
        "strata's log shows {} ended session(s) of {initiator} with their I/O, not the firmware's and the OS's: {s:?}\n{}",
        s.len(),
        tail(log, 4000)
    );
    let info = std::fs::read_to_string(golden_image().with_file_name("info")).unwrap();
    let loaded: u64 = ["kernel_bytes=", "initrd_bytes="]
        .iter()
        .filter_map(|k| info.lines().find_map(|l| l.strip_prefix(k)))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum();
    let (firmware, os) = (&s[0], &s[1..]);
    assert!(
        firmware.read_bytes >= loaded,
        "the firmware's session read {} bytes, less than the kernel and initramfs ({loaded}): {s:?}",
        firmware.read_bytes
    );
    assert_eq!(
        firmware.written_bytes, 0,
        "the firmware's session wrote: {s:?}"
    );
    let last = &os[os.len() - 1];
    assert!(
        last.commands > 0 && last.read_bytes > 0 && last.written_bytes > 0,
        "the OS's last session carried no reads or no writes: {s:?}"
    );
    eprintln!(
        "sessions of {initiator}: {}",
        s.iter()
            .map(|x| format!(
                "{} commands, {} KiB read, {} KiB written ({})",
                x.commands,
                x.read_bytes >> 10,
                x.written_bytes >> 10,
                x.reason
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

pub fn report_phases(test: &str, boot: &Boot) {
    let mut last = 0.0;
    let mut s = String::new();
    for (name, t) in &boot.phases {
        s.push_str(&format!(" {name} {t:.1}s (+{:.1})", t - last));
        last = *t;
    }
    eprintln!("{test}:{s}");
}

/// The whole chain, as `initiator`, with `chap` on both sides.
pub fn boot_chain(test: &str, initiator: &str, chap: Option<&Chap>) {
    let Some(_lock) = boot_lock(test) else {
        return;
    };
    super::common::tool("socat", HINT);
    let repo = Repo::new();
    let cfg = BootConfig {
        initiator,
        export_chap: chap,
        firmware_chap: chap,
        timeout: Duration::from_secs(420),
    };
    let (boot, server, target) = boot_once(&repo, &cfg);
    report_phases(test, &boot);
    assert_os_ran_from_the_volume(&boot, &server, initiator, &target);
    let log = server.log_path();
    assert!(server.stop().success());
    assert_the_os_sessions_carried_the_io(&std::fs::read_to_string(log).unwrap(), initiator);
    assert_boot_trace_recorded_and_replayed(&repo, &serve_logs(&repo));
}

/// The logs of every `strata serve` the test ran (the server's own handle goes at its stop).
fn serve_logs(repo: &Repo) -> String {
    let mut names: Vec<PathBuf> = std::fs::read_dir(&repo.work)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.retain(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("serve") && n.ends_with(".log"))
    });
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

/// The first boot of the image's first clone was recorded: the trace beside the image holds
/// at least the kernel and initramfs the loader read; a second clone served by a new server
/// gets the whole trace prefetched as soon as an initiator logs in to it.
fn assert_boot_trace_recorded_and_replayed(repo: &Repo, first_log: &str) {
    assert!(
        first_log.contains("boot trace recorded"),
        "the first boot was not recorded:\n{}",
        tail(first_log, 3000)
    );
    let path = repo.root.join("images/os-gold").join(trace::TRACE_FILE);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let t = trace::BootTrace::decode(&bytes).unwrap();
    // A real boot's trace, kept for tools/bench-iscsi's replay (--trace) when asked for.
    if let Some(keep) = std::env::var_os("STRATA_KEEP_BOOT_TRACE") {
        std::fs::write(&keep, &bytes).unwrap_or_else(|e| panic!("{keep:?}: {e}"));
    }
    let info = std::fs::read_to_string(golden_image().with_file_name("info")).unwrap();
    let field = |k: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let loaded = field("kernel_bytes=") + field("initrd_bytes=");
    assert!(
        t.chunks() * t.chunk_size as u64 >= loaded,
        "the trace ({} chunks) is smaller than the kernel and initramfs ({loaded} bytes)",
        t.chunks()
    );
    eprintln!(
        "boot trace: {} chunks ({} MiB) in {} runs",
        t.chunks(),
        (t.chunks() * t.chunk_size as u64) >> 20,
        t.runs.len()
    );
    const SECOND: &str = "iqn.2026-11.org.strata.test:second-server";
    repo.ok(&["volume", "create", "os2", "--from", "os-gold"]);
    repo.ok(&["export", "os2", "--initiator", SECOND]);
    let server = repo.serve(&[]);
    let url = server.url("iqn.2026-11.org.strata:os2");
    super::common::ok(
        Command::new(super::common::tool("iscsi-inq", "tools/install-iscsi-deps"))
            .args(["-i", SECOND])
            .arg(&url),
    );
    let want = format!("chunks={} of={}", t.chunks(), t.chunks());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server
        .log()
        .lines()
        .any(|l| l.contains("boot trace prefetched"))
    {
        assert!(
            Instant::now() < deadline,
            "no prefetch for the second clone:\n{}",
            tail(&server.log(), 3000)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("boot trace prefetched"))
        .unwrap_or_default();
    assert!(
        line.contains(&want),
        "not the whole trace prefetched: {line}"
    );
    assert!(server.stop().success());
}

/// The OS's session survives a restart of `strata serve` under it. The image's init starts
/// iscsid, which takes the boot session over by logging in again, and says so once iscsid
/// owns the session; it then writes and syncs a file every second. Meanwhile the server
/// stops (SIGTERM: it asks the initiator to log out) and a new one starts on the same port;
/// once the initiator has logged in to it, the test types a word on the console, which the
/// OS writes to a file and syncs before it powers off. No I/O error reached userspace, and
/// the word is in the volume: it went through the new server.
///
/// Every step waits for the event it needs (a console line, a log line), never for a time:
/// under TCG on a loaded host each of them may take minutes. The timeouts are hang guards.
pub fn boot_chain_survives_restart(test: &str, initiator: &str, chap: Option<&Chap>) {
    let Some(_lock) = boot_lock(test) else {
        return;
    };
    super::common::tool("socat", HINT);
    const HANG: Duration = Duration::from_secs(900);
    let repo = Repo::new();
    let disk = golden_image();
    let export = chap.map(Chap::export_args).unwrap_or_default();
    let target = repo.volume_from_file("os", &disk, initiator, &export);
    let vars = ovmf_vars_for(&repo, "OVMF_VARS.fd", initiator, &target, chap);
    let server = repo.serve(&[]);
    let port = server.port();
    let start = Instant::now();
    let mut vm = spawn_vm(
        &repo,
        &vars,
        port,
        &["-fw_cfg", "name=opt/strata/restart,string=1"],
    );
    let boot = follow_phases(&mut vm, start, HANG, &PHASES[..PHASES.len() - 1]);
    let fail = |vm: &mut Console, boot: &Boot, server: &Server, what: &str| -> ! {
        vm.kill();
        let boot = Boot {
            console: vm.text(),
            phases: boot.phases.clone(),
            failed_on: boot.failed_on,
        };
        panic!("{}", explain(what, &boot, server))
    };
    if !boot.reached("reported") {
        fail(&mut vm, &boot, &server, "the OS did not boot");
    }
    report_phases(test, &boot);
    // iscsid owns the session (it logged in again: strata saw the firmware's, the
    // initramfs's and iscsid's logins), and the OS's I/O runs on it.
    if !vm.wait_for("STRATA-TAKEN-OVER", HANG) {
        fail(
            &mut vm,
            &boot,
            &server,
            "iscsid did not take the session over",
        );
    }
    let logins = sessions_of(&server.log(), initiator).len();
    if logins < 3 {
        fail(&mut vm, &boot, &server, "strata saw no login by iscsid");
    }
    if !vm.wait_for("STRATA-TICK 1\r", HANG) && !vm.wait_for("STRATA-TICK 1\n", HANG) {
        fail(&mut vm, &boot, &server, "the OS did not start its I/O");
    }
    let ticks_before = last_tick(&vm.text());
    // The restart: a clean stop, then a new server on the port QEMU forwards to.
    let first_log = server.log_path();
    assert!(server.stop().success(), "strata serve did not stop cleanly");
    let first_log = std::fs::read_to_string(first_log).unwrap_or_default();
    let server = repo.serve(&["--listen", &format!("127.0.0.1:{port}")]);
    // The initiator comes back to the new server.
    let deadline = Instant::now() + HANG;
    while sessions_of(&server.log(), initiator).is_empty() {
        if Instant::now() > deadline {
            fail(
                &mut vm,
                &boot,
                &server,
                "the initiator did not log in again",
            );
        }
        // The new server's log is a file its process appends to: poll it.
        std::thread::sleep(Duration::from_millis(200));
    }
    let word = format!("strata-restarted-{}", std::process::id());
    vm.type_line(&word);
    let end = vm.wait_for_any(&["STRATA-TICKS-OK", "STRATA-TICKS-FAILED"], HANG);
    let _ = vm.wait_for("STRATA-POWEROFF", HANG);
    let _ = vm.wait_exit(Duration::from_secs(60));
    vm.kill();
    let boot = Boot {
        console: vm.text(),
        ..boot
    };
    assert_eq!(
        end,
        Some(0),
        "{}\n--- the first strata serve's log (tail) ---\n{}",
        explain("I/O failed across the restart", &boot, &server),
        tail(&first_log, 6000)
    );
    assert!(
        !boot.console.contains("I/O error"),
        "{}",
        explain("an I/O error across the restart", &boot, &server)
    );
    // The OS kept writing while the server went away and came back.
    let ticks_after = last_tick(&boot.console);
    assert!(
        ticks_after > ticks_before,
        "no write after the restart (ticks {ticks_before} then {ticks_after})"
    );
    // The first server asked the OS's session to log out when it stopped, and it did.
    assert!(
        first_log.contains("asked the initiator to log out"),
        "{}",
        tail(&first_log, 4000)
    );
    assert!(server.stop().success());
    let taken = boot
        .console
        .lines()
        .find(|l| l.contains("STRATA-TAKEN-OVER"))
        .unwrap_or_default()
        .trim()
        .to_string();
    eprintln!("{test}: {taken}; ticks {ticks_before} at the restart, {ticks_after} at the end");
    // What the OS wrote after the restart is in the volume.
    let got = repo.ok(&["fs", "cat", "os", "/dev/sda2:/strata-after-restart"]);
    assert_eq!(got.trim(), word);
}

/// The number of the last `STRATA-TICK n` line on the console (0 if none).
fn last_tick(console: &str) -> u32 {
    console
        .lines()
        .filter_map(|l| l.trim().strip_prefix("STRATA-TICK "))
        .filter_map(|n| n.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// A folder of artifacts that personalizes the boot image: one plan script (hostname and a
/// marker file on the root, from custom attributes), its build plan, and a deployment plan
/// on golden image `image` (in the store already). Returns the folder and the plan's name.
fn personalize_artifacts(repo: &Repo, image: &str) -> (PathBuf, &'static str) {
    const PLAN: &str = "boot test - personalize";
    let dir = repo.path("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    let script = "mount /dev/sda2 /\n\
                  write /etc/hostname \"@HostName@\\n\"\n\
                  write /etc/strata-deployed \"@Marker@\\n\"\n\
                  umount-all\n";
    let attr = |name: &str, kind: &str| {
        serde_json::json!({"name": name, "type": kind, "value": "", "constraints": "{}",
                           "description": "", "editable": true, "visible": true})
    };
    let attrs = serde_json::json!([attr("HostName", "hostname"), attr("Marker", "string")]);
    let ids = [
        "b0070000-0000-4000-8000-000000000001",
        "b0070000-0000-4000-8000-000000000002",
        "b0070000-0000-4000-8000-000000000003",
        "b0070000-0000-4000-8000-000000000004",
    ];
    let docs = [
        (
            "planscript",
            serde_json::json!({
                "type": "PlanScript", "id": ids[0], "name": "boot test - hostname and marker",
                "planType": "deploy", "content": script, "customAttributes": null,
                "description": ""
            }),
        ),
        (
            "buildplan",
            serde_json::json!({
                "type": "OeBuildPlan", "buildPlanid": ids[1], "name": "boot test - deploy",
                "oeBuildPlanType": "deploy", "customAttributes": attrs, "description": "",
                "buildStep": [{"serialNumber": "1",
                               "planScriptName": "boot test - hostname and marker",
                               "planScriptUri": format!("/rest/plan-scripts/{}", ids[0]),
                               "parameters": null}]
            }),
        ),
        (
            "deploymentplan",
            serde_json::json!({
                "type": "OEDeploymentPlan", "id": ids[2], "name": PLAN,
                "oeBuildPlanURI": "boot test - deploy", "goldenImageURI": image,
                "customAttributes": attrs, "description": ""
            }),
        ),
        (
            "goldenimage",
            serde_json::json!({
                "type": "GoldenImage", "id": ids[3], "name": image,
                "description": "the boot chain's golden image (in the store already)"
            }),
        ),
    ];
    for (i, (kind, doc)) in docs.iter().enumerate() {
        std::fs::write(
            dir.join(format!("{}_{kind}.json", ids[i])),
            serde_json::to_vec(doc).unwrap(),
        )
        .unwrap();
    }
    (dir, PLAN)
}

/// Deploy, then boot: `strata deploy` makes an OS volume from the boot image with a build
/// plan that writes the hostname and a marker file into its root; the volume is exported
/// to `initiator` (with `chap`) and booted through the firmware; the OS prints what it
/// found. The golden image itself still has its own hostname.
pub fn deploy_then_boot(test: &str, initiator: &str, chap: &Chap) {
    let Some(_lock) = boot_lock(test) else {
        return;
    };
    super::common::tool("socat", HINT);
    const VOLUME: &str = "web-07";
    const HOST: &str = "web-07";
    let repo = Repo::new();
    let disk = golden_image();
    repo.ok(&[
        "image",
        "import",
        disk.to_str().unwrap(),
        "--name",
        "os-gold",
    ]);
    let (artifacts, plan) = personalize_artifacts(&repo, "os-gold");
    let marker = format!("deployed-for-{HOST}-by-{}", std::process::id());
    repo.ok(&[
        "deploy",
        VOLUME,
        "--artifacts",
        artifacts.to_str().unwrap(),
        "--plan",
        plan,
        "--attr",
        &format!("HostName={HOST}"),
        "--attr",
        &format!("Marker={marker}"),
        "--initiator",
        initiator,
        "-q",
    ]);
    let mut export = vec!["export", VOLUME, "--initiator", initiator];
    export.extend(chap.export_args());
    repo.ok(&export);
    let target = format!("iqn.2026-11.org.strata:{VOLUME}");
    let vars = ovmf_vars_for(&repo, "OVMF_VARS.fd", initiator, &target, Some(chap));
    let server = repo.serve(&[]);
    let start = Instant::now();
    let mut vm = spawn_vm(&repo, &vars, server.port(), &[]);
    let boot = follow(&mut vm, start, Duration::from_secs(900));
    report_phases(test, &boot);
    assert_os_ran_from_the_volume(&boot, &server, initiator, &target);
    let line = |prefix: &str| {
        boot.console
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_string))
            .unwrap_or_else(|| panic!("{}", explain(&format!("no {prefix} line"), &boot, &server)))
    };
    assert_eq!(line("STRATA-HOSTNAME "), HOST, "the OS's hostname");
    assert_eq!(line("STRATA-DEPLOYED "), marker, "the deployed marker");
    let log = server.log_path();
    assert!(server.stop().success());
    assert_the_os_sessions_carried_the_io(&std::fs::read_to_string(log).unwrap(), initiator);
    // The personalization is the volume's alone.
    let gold = repo.ok(&["fs", "cat", "--image", "os-gold", "/dev/sda2:/etc/hostname"]);
    assert_eq!(gold.trim(), "strata-boot");
}
