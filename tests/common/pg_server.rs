//! A throwaway PostgreSQL server for the tests: Debian's `postgresql` package's programs
//! (`/usr/lib/postgresql/VERSION/bin`, installed by tools/install-deps), a cluster made by
//! `initdb` in a fresh temporary directory, `postgres` on a free 127.0.0.1 port with its
//! socket in that directory, trust authentication for the user `strata`, durability off.
//!
//! PostgreSQL refuses to run as root, so under root the cluster belongs to the `postgres`
//! user (or `nobody`), which owns the directory. The server runs under a small `sh` that
//! the kernel signals when the thread that started it ends (`PR_SET_PDEATHSIG`): on that
//! signal, or on drop, it stops the server (fast shutdown) and removes the directory, so
//! neither a process nor a cluster outlives the test, even one that was killed.
//! Readiness is PostgreSQL's own log line, read from its standard error.
//!
//! Shared by the integration tests (`mod common`) and the catalog's unit tests
//! (`catalog::testing`, by path), so it uses only what both have: std, libc, `postgres`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The user the cluster's superuser is named after.
pub const PG_USER: &str = "strata";

/// What PostgreSQL prints when it takes connections.
const READY: &str = "database system is ready to accept connections";

/// Stops the server (fast shutdown) on INT, TERM or HUP, then removes the directory.
const WRAPPER: &str = r#"
dir="$1"; shift
pid=
trap '[ -n "$pid" ] && kill -INT "$pid" 2>/dev/null' INT TERM HUP
"$@" &
pid=$!
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
rm -rf -- "$dir"
"#;

pub struct PgServer {
    child: Child,
    port: u16,
    dir: PathBuf,
    log: Arc<Mutex<String>>,
    next_db: AtomicUsize,
}

impl PgServer {
    /// The directory holding `initdb` and `postgres` (the newest installed version), if any.
    pub fn binaries() -> Option<PathBuf> {
        let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .flatten()
            .filter_map(|e| {
                let v: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                (bin.join("initdb").is_file() && bin.join("postgres").is_file()).then_some((v, bin))
            })
            .collect();
        dirs.sort();
        dirs.pop().map(|(_, d)| d)
    }

    /// Starts a server that stops when this value is dropped, or when the calling thread
    /// ends, whichever comes first.
    pub fn start() -> Result<PgServer, String> {
        let bin = PgServer::binaries().ok_or(
            "PostgreSQL's programs are not in /usr/lib/postgresql/*/bin: run tools/install-deps",
        )?;
        let mut last = String::new();
        // A free port can be taken between choosing and binding it: try a few.
        for _ in 0..4 {
            match PgServer::start_in(&bin) {
                Ok(s) => return Ok(s),
                Err(e) if e.contains("could not bind") => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// Starts a server that lives as long as the process (started from a thread that never
    /// ends; the kernel stops it when the process exits).
    pub fn start_for_process() -> Result<PgServer, String> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("pg-server".into())
            .spawn(move || {
                let _ = tx.send(PgServer::start());
                loop {
                    std::thread::park();
                }
            })
            .map_err(|e| e.to_string())?;
        rx.recv().map_err(|e| e.to_string())?
    }

    fn start_in(bin: &Path) -> Result<PgServer, String> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "strata-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let owner = run_as()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| format!("giving {} to uid {uid}: {e}", dir.display()))?;
        }
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", PG_USER, "-E", "UTF8", "--locale=C"])
            .args(["--no-sync", "--no-instructions"]);
        as_user(&mut initdb, owner, &dir);
        let out = initdb
            .output()
            .map_err(|e| format!("running {}: {e}", bin.join("initdb").display()))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("finding a free port: {e}"))?
            .port();
        let mut sh = Command::new("sh");
        sh.arg("-c")
            .arg(WRAPPER)
            .arg("pg-server")
            .arg(&dir)
            .arg(bin.join("postgres"))
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .arg("-k")
            .arg(&dir)
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
            .args(["-c", "shared_buffers=16MB", "-c", "logging_collector=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_user(&mut sh, owner, &dir);
        // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death
        // signal, after the uid change (which would clear it).
        unsafe {
            use std::os::unix::process::CommandExt;
            sh.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = sh.spawn().map_err(|e| format!("starting postgres: {e}"))?;
        let stderr = child.stderr.take().ok_or("postgres has no stderr")?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let shared = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let ready = line.contains(READY);
                if let Ok(mut l) = shared.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
                if ready {
                    let _ = tx.send(true);
                }
            }
            let _ = tx.send(false);
        });
        let server = PgServer {
            child,
            port,
            dir,
            log,
            next_db: AtomicUsize::new(0),
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(true) => Ok(server),
            Ok(false) | Err(_) => Err(format!("postgres did not start: {}", server.log())),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `db` over TCP.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// The URL of database `db` through the unix socket.
    pub fn socket_url(&self, db: &str) -> String {
        format!(
            "postgresql://{PG_USER}@/{db}?host={}&port={}",
            self.dir.display(),
            self.port
        )
    }

    /// Creates an empty database; returns its URL.
    pub fn new_database(&self) -> Result<String, String> {
        let name = format!("strata_{}", self.next_db.fetch_add(1, Ordering::Relaxed));
        self.sql(&format!("CREATE DATABASE {name}"))?;
        Ok(self.url(&name))
    }

    /// Runs SQL in the `postgres` database.
    pub fn sql(&self, sql: &str) -> Result<(), String> {
        let mut c = postgres::Client::connect(&self.url("postgres"), postgres::NoTls)
            .map_err(|e| format!("connecting to the test server: {e}"))?;
        c.batch_execute(sql).map_err(|e| format!("{sql}: {e}"))
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child (the wrapper), which stops the server.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Under root: the uid and gid of `postgres` (else `nobody`), which the server runs as.
fn run_as() -> Result<Option<(u32, u32)>, String> {
    // SAFETY: plain libc calls; getpwnam's result is read before any other call.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(None);
        }
        for name in [c"postgres", c"nobody"] {
            let pw = libc::getpwnam(name.as_ptr());
            if !pw.is_null() {
                return Ok(Some(((*pw).pw_uid, (*pw).pw_gid)));
            }
        }
    }
    Err("running as root, and neither a postgres nor a nobody user exists".into())
}

fn as_user(cmd: &mut Command, owner: Option<(u32, u32)>, dir: &Path) {
    use std::os::unix::process::CommandExt;
    cmd.current_dir(dir).env("LC_ALL", "C").env_remove("PGDATA");
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
}
