//! One `strata fs` job driven through the worker protocol, timed, with the worker's memory:
//! the harness `tools/bench-fs` runs (it is a bench target only so that it builds against
//! the library with the benches; it is not a criterion bench).
//!
//!   fs_job edit EXE REPO VOLUME DEVICE
//!       the four edits of the bench (replace /etc/hostname, add a 4 KiB file, mkdir -p a
//!       directory, chmod /etc/hostname 600) as ONE job: one worker, one flush
//!   fs_job put EXE REPO VOLUME DEVICE LOCAL PATH
//!       what `strata fs put` does (8 MiB requests), for the worker's memory on a big file
//!
//! EXE is the program started as the worker (`EXE fs-worker`): the strata binary, or a
//! wrapper that runs it under `/usr/bin/time` to get its peak RSS at exit. Prints one line:
//! `seconds=S started=A edited=B hwm_kib=K rss_kib=R`: the wall time from starting the worker
//! to the end of its flush (and to the worker being ready, and to the last edit answered),
//! and the worker's VmHWM and VmRSS read from /proc just before the commit.
//! Run without arguments (as `cargo bench` does) it prints its usage and does nothing.

use std::error::Error;
use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use strata::fs::worker::{Call, Reply, Request, Source, Worker, WorkerOptions};
use strata::fs::SetAttr;

type Res<T> = Result<T, Box<dyn Error>>;

/// As `strata fs put` sends a file.
const CHUNK: usize = 8 << 20;

const USAGE: &str = "usage: fs_job edit EXE REPO VOLUME DEVICE\n       \
                     fs_job put EXE REPO VOLUME DEVICE LOCAL PATH";

fn main() {
    // `cargo bench` passes --bench (and maybe a filter); only tools/bench-fs gives a mode.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let r = match args.first().map(String::as_str) {
        Some("edit") if args.len() == 5 => edit(&args[1..]),
        Some("put") if args.len() == 7 => put(&args[1..]),
        None => {
            eprintln!("fs_job: driven by tools/bench-fs; nothing to do\n{USAGE}");
            return;
        }
        _ => Err(USAGE.into()),
    };
    match r {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("fs_job: {e}");
            std::process::exit(1);
        }
    }
}

/// Starts a worker on the volume with DEVICE mounted read-write on /.
fn start(args: &[String]) -> Res<Worker> {
    let opts = WorkerOptions {
        exe: PathBuf::from(&args[0]),
        ..WorkerOptions::default()
    };
    let source = Source::Volume {
        repo: PathBuf::from(&args[1]),
        name: args[2].clone(),
    };
    let mut w = Worker::start(source, false, &opts)?;
    w.call(Request::Mount {
        device: args[3].clone(),
        point: "/".into(),
        read_only: false,
    })?;
    Ok(w)
}

fn call(w: &mut Worker, c: Call) -> Res<Reply> {
    Ok(w.call(Request::Call(c))?)
}

fn put_bytes(w: &mut Worker, path: &[u8], data: &[u8], mode: u32) -> Res<()> {
    call(
        w,
        Call::CreateOrTruncate {
            path: path.to_vec(),
            mode,
        },
    )?;
    call(
        w,
        Call::WriteAt {
            path: path.to_vec(),
            offset: 0,
            data: data.to_vec(),
        },
    )?;
    Ok(())
}

/// VmHWM and VmRSS of a process, in KiB.
fn memory(pid: u32) -> Res<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Res<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| format!("unreadable line {line:?}"))?;
        Ok(kib.parse()?)
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

/// The worker's memory now; with a wrapper as EXE the worker is the wrapper's only child.
fn worker_memory(w: &Worker) -> Res<(u64, u64)> {
    let pid = w.pid();
    let kids =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    match kids.split_whitespace().next() {
        Some(k) => memory(k.parse()?),
        None => memory(pid),
    }
}

/// Reads the worker's memory, commits, and reports the phases: `started` (worker up, disk
/// open, filesystem mounted), `edited` (every request answered), `seconds` (committed).
fn finish(w: Worker, t0: Instant, started: f64) -> Res<String> {
    let edited = t0.elapsed().as_secs_f64();
    let (hwm, rss) = worker_memory(&w)?;
    w.commit()?;
    Ok(format!(
        "seconds={:.6} started={started:.6} edited={edited:.6} hwm_kib={hwm} rss_kib={rss}",
        t0.elapsed().as_secs_f64()
    ))
}

fn edit(args: &[String]) -> Res<String> {
    let four_k: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let t0 = Instant::now();
    let mut w = start(args)?;
    let started = t0.elapsed().as_secs_f64();
    put_bytes(&mut w, b"/etc/hostname", b"web-01\n", 0o644)?;
    put_bytes(&mut w, b"/root/bench-4k", &four_k, 0o644)?;
    call(
        &mut w,
        Call::Mkdir {
            path: b"/srv/bench".to_vec(),
            mode: 0o755,
            parents: true,
        },
    )?;
    call(
        &mut w,
        Call::SetAttr {
            path: b"/etc/hostname".to_vec(),
            follow: true,
            attr: SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
        },
    )?;
    finish(w, t0, started)
}

fn put(args: &[String]) -> Res<String> {
    let local = &args[4];
    let path = args[5].as_bytes().to_vec();
    let mut f = std::fs::File::open(local).map_err(|e| format!("opening {local}: {e}"))?;
    let t0 = Instant::now();
    let mut w = start(args)?;
    let started = t0.elapsed().as_secs_f64();
    call(
        &mut w,
        Call::CreateOrTruncate {
            path: path.clone(),
            mode: 0o644,
        },
    )?;
    // Pipelined as `strata fs put` sends: the next piece goes out while the worker writes
    // one, two pieces unanswered at most, one buffer carrying every piece.
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..])? {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        buf.truncate(n);
        while w.in_flight() >= 2 {
            w.recv()?;
        }
        let req = Request::Call(Call::WriteAt {
            path: path.clone(),
            offset: off,
            data: buf,
        });
        w.send(&req)?;
        let Request::Call(Call::WriteAt { data, .. }) = req else {
            unreachable!("built just above")
        };
        buf = data;
        buf.resize(CHUNK, 0);
        off += n as u64;
    }
    w.settle()?;
    finish(w, t0, started)
}
