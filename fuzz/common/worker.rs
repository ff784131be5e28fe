//! The driver of the worker-based targets (`ext4`, `ntfs`): the C libraries parse the
//! mutated image only inside a `strata fs-worker` process, started through the real client
//! (`strata::fs::worker::Worker`) with its limits and a short per-request timeout. The
//! fuzzing process itself runs no filesystem code.
//!
//! One run: write the image to a file, start a worker on it, list devices and filesystems
//! (which opens each one read-only), mount the first filesystem, walk it (Readdir, Stat,
//! Read, Readlink), change it (create, write, append, mkdir -p, truncate, rename, symlink,
//! rm, rm -rf), ask statvfs and the used blocks, then commit or drop (one bit of the
//! input chooses); after a commit, a second, read-only worker mounts and walks the result.
//!
//! What is checked here, in the parent: every call comes back (Ok or Err) within the
//! timeout plus a margin, the client never panics, and the worker process is gone once
//! the `Worker` is. A worker that crashes, hangs, aborts or panics is contained (the call
//! is an `Err`); it is a finding, not a failure of the property: the input and the message
//! are written to `$STRATA_FUZZ_FINDINGS` (when set), and `STRATA_FUZZ_STRICT=1` turns
//! them into a panic of the target so that libFuzzer keeps and minimises the input.
//!
//! Environment: `STRATA_FUZZ_BIN` (the strata binary, default `../target/release/strata`
//! next to this crate), `STRATA_FUZZ_TIMEOUT` (seconds per request, default 5),
//! `STRATA_FUZZ_VERBOSE=1` (one line per run: mounted, entries, errors, committed).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use strata::fs::worker::{Call, Reply, Request, Source, Worker, WorkerOptions};
use strata::fs::{FileKind, FsError, FsResult};

/// Extra time a call may take beyond the worker timeout: killing and reaping the worker.
const MARGIN: Duration = Duration::from_secs(5);
const MAX_ENTRIES: usize = 300;
const MAX_DEPTH: usize = 5;
const MAX_FILES_READ: usize = 40;
const READ_LEN: u32 = 64 << 10;

struct Setup {
    opts: WorkerOptions,
    image: PathBuf,
    findings: Option<PathBuf>,
    strict: bool,
    verbose: bool,
    _dir: tempfile::TempDir,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let exe = std::env::var_os("STRATA_FUZZ_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../target/release/strata"
                ))
            });
        assert!(
            exe.is_file(),
            "the worker binary {} is missing: build it first (cargo build --release in the \
             repository) or point STRATA_FUZZ_BIN at a strata binary",
            exe.display()
        );
        let timeout = std::env::var("STRATA_FUZZ_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(5);
        // A tmpfs when there is one: every run writes a few MiB.
        let base = ["/dev/shm", "/tmp"]
            .into_iter()
            .find(|d| std::path::Path::new(d).is_dir())
            .unwrap_or("/tmp");
        let dir = tempfile::Builder::new()
            .prefix("strata-fuzz-")
            .tempdir_in(base)
            .expect("a temporary directory for the fuzzed image");
        let findings = std::env::var_os("STRATA_FUZZ_FINDINGS").map(PathBuf::from);
        if let Some(f) = &findings {
            std::fs::create_dir_all(f).expect("creating STRATA_FUZZ_FINDINGS");
        }
        Setup {
            opts: WorkerOptions {
                exe,
                timeout: Duration::from_secs(timeout),
                memory_bytes: 512 << 20,
                cpu_seconds: 30,
                max_files: 64,
                cache_bytes: 4 << 20,
            },
            image: dir.path().join("image"),
            findings,
            strict: std::env::var("STRATA_FUZZ_STRICT").is_ok_and(|v| v == "1"),
            verbose: std::env::var("STRATA_FUZZ_VERBOSE").is_ok_and(|v| v == "1"),
            _dir: dir,
        }
    })
}

/// How the worker died, from the client's message, if it did.
pub fn death(e: &FsError) -> Option<&'static str> {
    let d = &e.detail;
    if !d.contains("the filesystem worker") {
        return None;
    }
    Some(if d.contains("did not answer within") {
        "hang"
    } else if d.contains("exit status: 101") {
        "panic"
    } else if d.contains("crashed (signal") {
        "crash"
    } else if d.contains("aborted") {
        "abort"
    } else if d.contains("ran out of CPU") {
        "cpu"
    } else if d.contains("was stopped") {
        "stopped"
    } else {
        "died"
    })
}

struct Run<'a> {
    s: &'a Setup,
    input: &'a [u8],
    /// Set once the worker died: the rest of the run is skipped.
    dead: bool,
    errors: usize,
    entries: usize,
}

impl Run<'_> {
    /// One request, timed; a dead worker is recorded.
    fn call(&mut self, w: &mut Worker, req: Request) -> FsResult<Reply> {
        if self.dead {
            return Err(FsError::new(libc::EIO, "skipped: the worker died"));
        }
        let what = req.describe();
        let t = Instant::now();
        let r = w.call(req);
        self.check_time(t, &what);
        if let Err(e) = &r {
            self.errors += 1;
            self.note(e);
        }
        r
    }

    fn check_time(&self, t: Instant, what: &str) {
        let took = t.elapsed();
        assert!(
            took <= self.s.opts.timeout + MARGIN,
            "the worker client took {took:?} {what}, more than its {:?} timeout",
            self.s.opts.timeout
        );
    }

    fn note(&mut self, e: &FsError) {
        let Some(kind) = death(e) else { return };
        if kind == "stopped" {
            return;
        }
        self.dead = true;
        if let Some(dir) = &self.s.findings {
            let name = format!("{kind}-{:016x}", fnv(self.input));
            let _ = std::fs::write(dir.join(format!("{name}.input")), self.input);
            let _ = std::fs::write(dir.join(format!("{name}.txt")), format!("{e}\n"));
        }
        eprintln!("strata-fuzz: contained worker {kind}: {e}");
        assert!(!self.s.strict, "worker {kind} (STRATA_FUZZ_STRICT=1): {e}");
    }

    fn start(&mut self, read_only: bool) -> Option<Worker> {
        let t = Instant::now();
        let r = Worker::start(
            Source::File {
                path: self.s.image.clone(),
            },
            read_only,
            &self.s.opts,
        );
        self.check_time(t, "starting");
        match r {
            Ok(w) => Some(w),
            Err(e) => {
                self.note(&e);
                None
            }
        }
    }

    fn fs_call(&mut self, w: &mut Worker, c: Call) -> FsResult<Reply> {
        self.call(w, Request::Call(c))
    }

    /// Walks the tree from `/`, reading files and links; returns (files, dirs) found.
    fn walk(&mut self, w: &mut Worker) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        let mut queue = vec![(b"/".to_vec(), 0usize)];
        let mut seen = 0;
        while let Some((dir, depth)) = queue.pop() {
            let Ok(Reply::Entries(entries)) = self.fs_call(w, Call::Readdir { path: dir.clone() })
            else {
                continue;
            };
            for e in entries {
                seen += 1;
                self.entries += 1;
                if seen > MAX_ENTRIES || self.dead {
                    return (files, dirs);
                }
                let mut path = dir.clone();
                if path.len() > 1 {
                    path.push(b'/');
                }
                path.extend_from_slice(&e.name);
                let kind = match self.fs_call(
                    w,
                    Call::Stat {
                        path: path.clone(),
                        follow: false,
                    },
                ) {
                    Ok(Reply::Stat(st)) => st.kind,
                    _ => e.kind,
                };
                match kind {
                    FileKind::Directory => {
                        if depth < MAX_DEPTH {
                            queue.push((path.clone(), depth + 1));
                        }
                        dirs.push(path);
                    }
                    FileKind::Regular => {
                        if files.len() < MAX_FILES_READ {
                            let _ = self.fs_call(
                                w,
                                Call::Read {
                                    path: path.clone(),
                                    offset: 0,
                                    len: READ_LEN,
                                },
                            );
                        }
                        files.push(path);
                    }
                    FileKind::Symlink => {
                        let _ = self.fs_call(w, Call::Readlink { path: path.clone() });
                        let _ = self.fs_call(w, Call::Stat { path, follow: true });
                    }
                    _ => {}
                }
            }
        }
        (files, dirs)
    }

    /// Mounts the first filesystem the worker recognises on `/`.
    fn mount_first(&mut self, w: &mut Worker, read_only: bool) -> bool {
        let _ = self.call(w, Request::Devices);
        let Ok(Reply::Filesystems(list)) = self.call(w, Request::Filesystems { usage: true })
        else {
            return false;
        };
        let Some(fs) = list.iter().find(|f| {
            f.detected
                .as_ref()
                .is_some_and(|d| matches!(&*d.fs_type, "ext2" | "ext3" | "ext4" | "vfat" | "ntfs"))
        }) else {
            return false;
        };
        let device = fs.device.clone();
        let _ = self.call(
            w,
            Request::UsedBlocks {
                device: device.clone(),
            },
        );
        self.call(
            w,
            Request::Mount {
                device,
                point: "/".into(),
                read_only,
            },
        )
        .is_ok()
    }

    fn change(&mut self, w: &mut Worker, files: &[Vec<u8>], dirs: &[Vec<u8>]) {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + 3) as u8).collect();
        let new = b"/fuzz-new.txt".to_vec();
        let calls = [
            Call::CreateOrTruncate {
                path: new.clone(),
                mode: 0o644,
            },
            Call::WriteAt {
                path: new.clone(),
                offset: 0,
                data: data.clone(),
            },
            Call::Append {
                path: new.clone(),
                data: data[..1234].to_vec(),
            },
            Call::Read {
                path: new.clone(),
                offset: 0,
                len: 8192,
            },
            Call::Mkdir {
                path: b"/fuzz-dir/a/b".to_vec(),
                mode: 0o755,
                parents: true,
            },
            Call::Symlink {
                target: b"../fuzz-new.txt".to_vec(),
                path: b"/fuzz-dir/link".to_vec(),
            },
            Call::Statvfs {
                path: b"/".to_vec(),
            },
        ];
        for c in calls {
            let _ = self.fs_call(w, c);
        }
        if let Some(f) = files.first() {
            let _ = self.fs_call(
                w,
                Call::WriteAt {
                    path: f.clone(),
                    offset: 4096 + 7,
                    data: data[..3000].to_vec(),
                },
            );
            let _ = self.fs_call(
                w,
                Call::SetAttr {
                    path: f.clone(),
                    follow: false,
                    attr: strata::fs::SetAttr {
                        mode: Some(0o600),
                        ..Default::default()
                    },
                },
            );
        }
        if let Some(f) = files.get(1) {
            let _ = self.fs_call(
                w,
                Call::Truncate {
                    path: f.clone(),
                    size: 1,
                },
            );
        }
        if let Some(f) = files.get(2) {
            let _ = self.fs_call(
                w,
                Call::Rename {
                    from: f.clone(),
                    to: b"/fuzz-dir/moved".to_vec(),
                },
            );
        }
        if let Some(f) = files.get(3) {
            let _ = self.fs_call(
                w,
                Call::Link {
                    target: f.clone(),
                    path: b"/fuzz-dir/hard".to_vec(),
                },
            );
            let _ = self.fs_call(
                w,
                Call::Rm {
                    path: f.clone(),
                    force: false,
                },
            );
        }
        if let Some(d) = dirs.last() {
            let _ = self.fs_call(w, Call::RmRf { path: d.clone() });
        }
    }
}

/// FNV-1a of the input: names a finding.
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

/// Whether process `pid` still exists (it must not once its `Worker` is dropped).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for the process.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

/// One fuzz run on the image `data` describes (see `image.rs`), at most `max_bytes`.
pub fn run(data: &[u8], max_bytes: usize) {
    let s = setup();
    let img = super::image::decode(data, max_bytes);
    std::fs::write(&s.image, &img).expect("writing the fuzzed image");
    let commit = fnv(data) & 1 == 0;
    let mut r = Run {
        s,
        input: data,
        dead: false,
        errors: 0,
        entries: 0,
    };
    let Some(mut w) = r.start(false) else { return };
    let pid = w.pid();
    let mut committed = false;
    let mounted = r.mount_first(&mut w, false);
    if mounted {
        let (files, dirs) = r.walk(&mut w);
        r.change(&mut w, &files, &dirs);
        if commit && !r.dead {
            let t = Instant::now();
            let c = w.commit();
            r.check_time(t, "committing");
            match c {
                Ok(()) => committed = true,
                Err(e) => r.note(&e),
            }
        } else {
            drop(w);
        }
    } else {
        drop(w);
    }
    assert!(!alive(pid), "worker {pid} outlived its client");
    if s.verbose {
        eprintln!(
            "strata-fuzz: mounted {mounted}, {} entries, {} errors, committed {committed}, dead {}",
            r.entries, r.errors, r.dead
        );
    }
    if committed {
        // What the adapter wrote back must open again (or be refused) just as safely.
        let Some(mut w) = r.start(true) else { return };
        let pid = w.pid();
        if r.mount_first(&mut w, true) {
            r.walk(&mut w);
        }
        w.finish();
        drop(w);
        assert!(!alive(pid), "worker {pid} outlived its client");
    }
}
