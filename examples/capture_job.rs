//! One capture through the library, timed: the harness `tools/bench-capture` runs (an
//! example only so that it builds against the library without a CLI command; the lead's
//! `strata capture` is the user-facing way).
//!
//!   capture_job EXE REPO VOLUME IMAGE
//!
//! EXE is the strata binary (started as the filesystem worker). No capture scripts: the
//! core path (snapshot, overlay, keep-map from a worker, used blocks stored). Prints one
//! line: `seconds=S kept=K stored=B` (bytes kept by the keep-map, bytes stored).

use std::path::PathBuf;
use std::time::Instant;

use strata::fs::worker::{Source, WorkerOptions};
use strata::plan::capture;
use strata::store::{RepoOptions, Repository};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [exe, repo, volume, image] = args.as_slice() else {
        eprintln!("usage: capture_job EXE REPO VOLUME IMAGE");
        std::process::exit(2);
    };
    let start = Instant::now();
    let r = Repository::open(repo, RepoOptions::default()).unwrap_or_else(|e| {
        eprintln!("capture_job: {e}");
        std::process::exit(1)
    });
    let opts = WorkerOptions {
        exe: PathBuf::from(exe),
        ..WorkerOptions::default()
    };
    let progress = |_: u64, _: u64| {};
    let none = |_: &Source| Ok::<(), std::io::Error>(());
    match capture::capture(&r, volume, image, &opts, none, &progress) {
        Ok(rep) => {
            println!(
                "seconds={:.3} kept={} stored={}",
                start.elapsed().as_secs_f64(),
                rep.keep.kept_bytes(),
                rep.image.stored_bytes
            );
            for f in &rep.keep.filesystems {
                eprintln!(
                    "  {} {} size={} used={} {}",
                    f.device,
                    f.fs_type,
                    f.size,
                    f.used,
                    f.error.as_deref().unwrap_or("")
                );
            }
        }
        Err(e) => {
            eprintln!("capture_job: {e}");
            std::process::exit(1);
        }
    }
}
