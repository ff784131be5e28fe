//! `strata bench …`: in-process measurements of the store, for tools/bench-store.
//!
//! `io` drives the Volume API with N threads (the queue depth) over the same access pattern
//! `qemu-img bench` uses: offset = (i × step) mod size, step = block size for sequential
//! runs or a large odd multiple of it for scattered ones. `clone` times clone creation and
//! measures its disk and memory cost.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Subcommand, ValueEnum};
use serde::Serialize;
use strata::store::Repository;

use super::size::parse_size;
use super::CliResult;

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Read,
    Write,
}

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Reads or writes on a volume through the Volume API.
    Io {
        volume: String,
        #[arg(long, value_enum, default_value = "read")]
        op: Op,
        /// Request size.
        #[arg(long, default_value = "4K", value_parser = parse_size)]
        bs: u64,
        /// Offset step between requests (default: the request size, i.e. sequential).
        #[arg(long, value_parser = parse_size)]
        step: Option<u64>,
        /// Requests in flight (threads).
        #[arg(long, default_value_t = 1)]
        qd: usize,
        /// Requests in all.
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long)]
        json: bool,
    },
    /// Creates clones of an image and reports time, disk and memory per clone.
    Clone {
        image: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Also open every clone and report the memory each costs.
        #[arg(long)]
        open: bool,
        /// Keep the clones instead of removing them afterwards.
        #[arg(long)]
        keep: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Serialize)]
struct IoResult {
    op: Op,
    bs: u64,
    step: u64,
    qd: usize,
    count: u64,
    seconds: f64,
    iops: f64,
    mib_per_s: f64,
}

#[derive(Serialize)]
struct CloneResult {
    count: usize,
    total_seconds: f64,
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    disk_bytes_per_clone: u64,
    open_bytes_per_volume: Option<u64>,
}

pub fn run(repo: &Repository, cmd: BenchCmd) -> CliResult {
    match cmd {
        BenchCmd::Io {
            volume,
            op,
            bs,
            step,
            qd,
            count,
            json,
        } => {
            let r = bench_io(repo, &volume, op, bs, step.unwrap_or(bs), qd.max(1), count)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{:?} bs={} step={} qd={} count={}: {:.3} s, {:.0} IOPS, {:.1} MiB/s",
                    r.op, r.bs, r.step, r.qd, r.count, r.seconds, r.iops, r.mib_per_s
                );
            }
        }
        BenchCmd::Clone {
            image,
            count,
            open,
            keep,
            json,
        } => {
            let r = bench_clone(repo, &image, count, open, keep)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{} clones in {:.3} s: median {:.3} ms, p99 {:.3} ms, max {:.3} ms, {} bytes of disk each{}",
                    r.count,
                    r.total_seconds,
                    r.median_ms,
                    r.p99_ms,
                    r.max_ms,
                    r.disk_bytes_per_clone,
                    r.open_bytes_per_volume
                        .map(|b| format!(", {b} bytes of memory per open volume"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

fn bench_io(
    repo: &Repository,
    name: &str,
    op: Op,
    bs: u64,
    step: u64,
    qd: usize,
    count: u64,
) -> Result<IoResult, Box<dyn std::error::Error + Send + Sync>> {
    let vol = repo.open_volume(name, op == Op::Read)?;
    let len = vol.len();
    if bs == 0 || bs > len || step == 0 {
        return Err(format!("bad request size {bs} or step {step} for a {len}-byte volume").into());
    }
    let slots = len / bs;
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let failed: parking_lot::Mutex<Option<String>> = parking_lot::Mutex::new(None);
    std::thread::scope(|s| {
        for t in 0..qd {
            let (vol, next, failed) = (&vol, &next, &failed);
            s.spawn(move || {
                // Aligned, as real I/O stacks (qemu's among them) allocate their buffers.
                let mut buf = strata::store::AlignedBuf::zeroed(bs as usize);
                buf.fill((t as u8) | 0x80);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    // Same walk as qemu-img bench: wrap at the end, aligned to the request size.
                    let off = ((i as u128 * step as u128) % (slots * bs) as u128) as u64 / bs * bs;
                    let r = match op {
                        Op::Read => vol.read_at(&mut buf, off),
                        Op::Write => {
                            buf[..8].copy_from_slice(&i.to_le_bytes());
                            vol.write_at(&buf, off)
                        }
                    };
                    if let Err(e) = r {
                        *failed.lock() = Some(e.to_string());
                        next.store(count, Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    if op == Op::Write {
        vol.flush()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    if let Some(e) = failed.into_inner() {
        return Err(e.into());
    }
    Ok(IoResult {
        op,
        bs,
        step,
        qd,
        count,
        seconds,
        iops: count as f64 / seconds,
        mib_per_s: (count * bs) as f64 / seconds / (1 << 20) as f64,
    })
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = std::fs::metadata(path).map_or(0, |m| m.blocks() * 512);
    if let Ok(rd) = std::fs::read_dir(path) {
        for e in rd.flatten() {
            total += e.metadata().map_or(0, |m| m.blocks() * 512);
        }
    }
    total
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn bench_clone(
    repo: &Repository,
    image: &str,
    count: usize,
    open: bool,
    keep: bool,
) -> Result<CloneResult, Box<dyn std::error::Error + Send + Sync>> {
    repo.image_meta(image)?;
    let prefix = format!("bench-clone-{}", std::process::id());
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    let mut times: Vec<Duration> = Vec::with_capacity(count);
    let start = Instant::now();
    for n in &names {
        let t = Instant::now();
        repo.create_volume(n, Some(image), None)?;
        times.push(t.elapsed());
    }
    let total = start.elapsed();
    let disk: u64 = names
        .iter()
        .map(|n| dir_bytes(&repo.root().join("volumes").join(n)))
        .sum();
    let open_bytes = if open {
        let before = rss_bytes();
        let vols = names
            .iter()
            .map(|n| repo.open_volume(n, false))
            .collect::<Result<Vec<_>, _>>()?;
        let after = rss_bytes();
        drop(vols);
        Some(after.saturating_sub(before) / count.max(1) as u64)
    } else {
        None
    };
    if !keep {
        for n in &names {
            repo.remove_volume(n)?;
        }
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| ms(times[((times.len() - 1) as f64 * q) as usize]);
    Ok(CloneResult {
        count,
        total_seconds: total.as_secs_f64(),
        median_ms: pick(0.5),
        p99_ms: pick(0.99),
        max_ms: pick(1.0),
        disk_bytes_per_clone: disk / count.max(1) as u64,
        open_bytes_per_volume: open_bytes,
    })
}
