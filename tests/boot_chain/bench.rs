//! Measurements of real boots (issue 11), run by `tools/bench-boot`, not by CI (ignored):
//!
//! 1. Storms: N servers (QEMU under TCG, default 4) booting at once, from one `strata serve`
//!    serving N clones of the golden image, first with no boot trace (the first clone's boot
//!    is recorded), then N new clones with the trace prefetched, then tgt serving N full
//!    copies of the image. Per storm: time to userspace of each server, the slowest, and
//!    for strata the MiB read from the image's files (the shared cache's loads).
//! 2. One server's boot over strata (no trace) beside tgt serving the same image, phase by
//!    phase: the firmware's login to the loader, the loader reading the kernel and initramfs
//!    through the firmware, the kernel to the initramfs's login, that login to the root
//!    mounted, the root to userspace's report.
//!
//! Everything runs in the same process, one after the other, on the same warm page cache.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::super::common::{ok, tool, Repo};
use super::{follow, golden_image, ovmf_vars_lun, spawn_vm, Boot, PHASES};
use crate::boot_lock;

const TGT_HINT: &str = "tools/install-iscsi-deps";

/// A tgtd of our own on a free port (refuses to start beside another tgtd: tgtadm would
/// talk to that one's control socket).
struct Tgt {
    child: Child,
    port: u16,
}

impl Tgt {
    fn start(log: &Path) -> Tgt {
        tool("tgtd", TGT_HINT);
        let running = Command::new("pgrep").args(["-x", "tgtd"]).output();
        assert!(
            !running.is_ok_and(|o| o.status.success()),
            "a tgtd is running already; stop it first"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let child = Command::new("tgtd")
            .args(["-f", "--iscsi", &format!("portal=127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new("tgtadm")
            .args(["--lld", "iscsi", "--op", "show", "--mode", "target"])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            assert!(Instant::now() < deadline, "tgtd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Tgt { child, port }
    }

    /// Target `tid` named `iqn` with `file` as LUN 1, open to every initiator.
    fn add(&self, tid: u32, iqn: &str, file: &Path) {
        let t = tid.to_string();
        let adm = |args: &[&str]| ok(Command::new("tgtadm").args(["--lld", "iscsi"]).args(args));
        adm(&["--op", "new", "--mode", "target", "--tid", &t, "-T", iqn]);
        adm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            &t,
            "--lun",
            "1",
            "-b",
            file.to_str().unwrap(),
        ]);
        adm(&["--op", "bind", "--mode", "target", "--tid", &t, "-I", "ALL"]);
    }
}

impl Drop for Tgt {
    fn drop(&mut self) {
        let _ = Command::new("tgtadm")
            .args(["--lld", "iscsi", "--op", "delete", "--mode", "system"])
            .output();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots `vms` (variable store, port) at once; returns each boot and the wall time.
fn storm(repo: &Repo, vms: &[(PathBuf, u16)]) -> (Vec<Boot>, f64) {
    let start = Instant::now();
    let mut consoles: Vec<_> = vms
        .iter()
        .map(|(vars, port)| spawn_vm(repo, vars, *port, &[]))
        .collect();
    let boots: Vec<Boot> = std::thread::scope(|s| {
        let hs: Vec<_> = consoles
            .iter_mut()
            .map(|vm| s.spawn(move || follow(vm, start, Duration::from_secs(1200))))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (boots, start.elapsed().as_secs_f64())
}

fn at(b: &Boot, phase: &str) -> Option<f64> {
    b.phases.iter().find(|p| p.0 == phase).map(|p| p.1)
}

fn summary(label: &str, boots: &[Boot], wall: f64, extra: &str) -> Option<f64> {
    let up: Vec<Option<f64>> = boots.iter().map(|b| at(b, "root mounted")).collect();
    let shown: Vec<String> = up
        .iter()
        .map(|t| t.map_or("FAILED".into(), |t| format!("{t:.0}")))
        .collect();
    let slowest = up
        .iter()
        .copied()
        .collect::<Option<Vec<f64>>>()
        .map(|v| v.into_iter().fold(0.0, f64::max));
    eprintln!(
        "{label:<28} userspace at [{}] s, slowest {}, all done in {wall:.0} s{extra}",
        shown.join(", "),
        slowest.map_or("-".into(), |s| format!("{s:.0} s"))
    );
    for (i, b) in boots.iter().enumerate() {
        if at(b, "root mounted").is_none() {
            eprintln!(
                "  {label} server {i} failed on {:?}: ...{}",
                b.failed_on,
                super::super::common::tail(&b.console, 1500)
            );
        }
    }
    slowest
}

/// The `image chunk cache` line of a stopped server's log: MiB read from image files.
fn mib_loaded(log: &str) -> String {
    log.lines()
        .find(|l| l.contains("image chunk cache"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("mib_loaded=")))
        .map_or("?".into(), |w| w["mib_loaded=".len()..].to_string())
}

fn servers() -> usize {
    std::env::var("STRATA_BENCH_SERVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

#[test]
#[ignore = "a benchmark: tools/bench-boot runs it"]
fn bench_boot_phases_and_storms_against_tgt() {
    let Some(_lock) = boot_lock("bench_boot") else {
        return;
    };
    let n = servers();
    let repo = Repo::new();
    let disk = golden_image();
    repo.ok(&["image", "import", disk.to_str().unwrap(), "--name", "gold"]);
    let ini = |k: &str| format!("iqn.2026-11.org.strata.bench:{k}");
    let clone = |name: &str| {
        repo.ok(&["volume", "create", name, "--from", "gold"]);
        repo.ok(&["export", name, "--initiator", &ini(name)]);
        let target = format!("iqn.2026-11.org.strata:{name}");
        ovmf_vars_lun(&repo, &format!("{name}.vars"), &ini(name), &target, None, 0)
    };
    let trace = repo.root.join("images/gold/boot-trace");
    // Servers started in this process write serve.log, serve-1.log, ... in order.
    let mut served = 0usize;
    let mut serve_log = |repo: &Repo| {
        let name = if served == 0 {
            "serve.log".to_string()
        } else {
            format!("serve-{served}.log")
        };
        served += 1;
        repo.path(&name)
    };

    eprintln!("--- {n} servers booting at once ---");
    // strata, no trace yet (the first clone to log in is recorded).
    let vms: Vec<_> = (0..n).map(|i| clone(&format!("a{i}"))).collect();
    let log = serve_log(&repo);
    let server = repo.serve(&[]);
    let (boots, wall) = storm(
        &repo,
        &vms.iter()
            .map(|v| (v.clone(), server.port()))
            .collect::<Vec<_>>(),
    );
    assert!(server.stop().success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let no_trace = summary(
        "strata, no trace",
        &boots,
        wall,
        &format!(", {} MiB read from the image", mib_loaded(&text)),
    );
    assert!(trace.exists(), "the storm recorded no trace");

    // strata, new clones, the trace prefetched by a new server (empty cache).
    let vms: Vec<_> = (0..n).map(|i| clone(&format!("b{i}"))).collect();
    let log = serve_log(&repo);
    let server = repo.serve(&[]);
    let (boots, wall) = storm(
        &repo,
        &vms.iter()
            .map(|v| (v.clone(), server.port()))
            .collect::<Vec<_>>(),
    );
    assert!(server.stop().success());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let prefetched = text
        .lines()
        .find(|l| l.contains("boot trace prefetched"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("ms=")))
        .unwrap_or("ms=?")
        .to_string();
    let with_trace = summary(
        "strata, trace prefetched",
        &boots,
        wall,
        &format!(
            ", {} MiB read from the image (prefetch {prefetched})",
            mib_loaded(&text)
        ),
    );

    // tgt, N full copies.
    let tgt = Tgt::start(&repo.path("tgtd.log"));
    let mut vms = Vec::new();
    for i in 0..n {
        let copy = repo.path(&format!("tgt{i}.raw"));
        std::fs::copy(&disk, &copy).unwrap();
        let iqn = format!("iqn.2026-11.org.peer:boot{i}");
        tgt.add(i as u32 + 1, &iqn, &copy);
        let k = format!("t{i}");
        let vars = ovmf_vars_lun(&repo, &format!("{k}.vars"), &ini(&k), &iqn, None, 1);
        vms.push((vars, tgt.port));
    }
    let (boots, wall) = storm(&repo, &vms);
    let tgt_storm = summary(&format!("tgt, {n} copies"), &boots, wall, "");
    drop(tgt);
    if let (Some(s), Some(t)) = (no_trace, tgt_storm) {
        eprintln!("slowest to userspace, strata/tgt: no trace {:.2}", s / t);
    }
    if let (Some(s), Some(t)) = (with_trace, tgt_storm) {
        eprintln!("slowest to userspace, strata/tgt: with trace {:.2}", s / t);
    }

    eprintln!("--- one server, phase by phase ---");
    let _ = std::fs::remove_file(&trace);
    let vars = clone("single");
    let server = repo.serve(&[]);
    let start = Instant::now();
    let mut vm = spawn_vm(&repo, &vars, server.port(), &[]);
    let strata_boot = follow(&mut vm, start, Duration::from_secs(600));
    assert!(server.stop().success());
    let tgt = Tgt::start(&repo.path("tgtd-single.log"));
    let copy = repo.path("tgt-single.raw");
    std::fs::copy(&disk, &copy).unwrap();
    tgt.add(1, "iqn.2026-11.org.peer:single", &copy);
    let vars = ovmf_vars_lun(
        &repo,
        "tgt-single.vars",
        &ini("tgt-single"),
        "iqn.2026-11.org.peer:single",
        None,
        1,
    );
    let start = Instant::now();
    let mut vm = spawn_vm(&repo, &vars, tgt.port, &[]);
    let tgt_boot = follow(&mut vm, start, Duration::from_secs(600));
    drop(tgt);
    eprintln!(
        "{:<18} {:>8} {:>8} {:>7}",
        "phase (s)", "strata", "tgt", "ratio"
    );
    let (mut sp, mut tp) = (0.0, 0.0);
    for (name, _) in PHASES {
        let (Some(s), Some(t)) = (at(&strata_boot, name), at(&tgt_boot, name)) else {
            eprintln!(
                "{name:<18} (not reached: strata {:?}, tgt {:?})",
                strata_boot.failed_on, tgt_boot.failed_on
            );
            break;
        };
        let (ds, dt) = (s - sp, t - tp);
        eprintln!(
            "{name:<18} {ds:>8.1} {dt:>8.1} {:>7.2}",
            if dt > 0.0 { ds / dt } else { f64::NAN }
        );
        (sp, tp) = (s, t);
    }
    eprintln!("{:<18} {sp:>8.1} {tp:>8.1} {:>7.2}", "total", sp / tp);
}
