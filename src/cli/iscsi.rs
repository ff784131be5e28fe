//! The iSCSI commands of the `strata` binary: `serve`, `export` (add, `ls`) and `unexport`.
//! Presentation only: arguments, messages and tables; the target itself is `strata::iscsi`.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Args, Subcommand};
use strata::api::{ApiOptions, ApiServer, TlsSource};
use strata::catalog::{Catalog, Location};
use strata::iscsi::control;
use strata::iscsi::exports::{self, Chap, Export};
use strata::iscsi::prelogin::PreLoginLimits;
use strata::iscsi::scsi::Identity;
use strata::iscsi::server::{self, ServerOptions};
use strata::iscsi::session::{SessionInfo, SessionLimits};
use strata::store::Repository;

use super::CliResult;
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on (repeatable; IPv4 or [IPv6]:port). Port 0 picks a free port.
    #[arg(
        long = "listen",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:3260"
    )]
    pub listen: Vec<SocketAddr>,
    /// INQUIRY vendor string (8 characters at most are shown).
    #[arg(long, default_value = "STRATA")]
    pub vendor: String,
    /// INQUIRY product string (16 characters at most are shown).
    #[arg(long, default_value = "Strata Volume")]
    pub product: String,
    /// Seconds of initiator silence before the target pings it with a NOP-In.
    #[arg(long, default_value_t = 5)]
    pub nop_interval: u64,
    /// Seconds a ping may go unanswered (nothing received from the initiator, no command
    /// running) before the connection is closed and its volume released.
    #[arg(long, default_value_t = 30)]
    pub nop_timeout: u64,
    /// Commands one session may have in flight (CmdSN window).
    #[arg(long, default_value_t = 64)]
    pub queue_depth: u32,
    /// Worker threads of the network runtime (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds a connection may take to complete its login.
    #[arg(long, default_value_t = 5)]
    pub login_timeout: u64,
    /// Connections from one address (IPv6: one /64) that may be logging in at once; when
    /// full, its least recently active one is closed to make room.
    #[arg(long, default_value_t = 16)]
    pub prelogin_per_address: usize,
    /// Connections that may be logging in at once in all (logged-in sessions do not
    /// count); when full, the least recently active one is closed to make room.
    #[arg(long, default_value_t = 128)]
    pub prelogin_max: usize,
    /// Sessions (normal and discovery) the server holds in all.
    #[arg(long, default_value_t = 1024)]
    pub max_sessions: usize,
    /// Sessions one initiator name may hold (discovery included).
    #[arg(long, default_value_t = 8)]
    pub max_sessions_per_initiator: usize,
    /// Sessions one target (export) may have.
    #[arg(long, default_value_t = 8)]
    pub max_sessions_per_target: usize,
    /// Serve Image Streamer's REST API over HTTPS on this address too (port 0 picks a
    /// free port). Plain HTTP is not served.
    #[arg(long, value_name = "ADDR:PORT")]
    pub api: Option<SocketAddr>,
    /// The API's certificate (PEM); without it a self-signed one is made on first start
    /// and kept in the repository (tls/cert.pem).
    #[arg(long, value_name = "PEM", requires_all = ["tls_key", "api"])]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The API certificate's private key (PEM).
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Seconds an API session lasts after its last use.
    #[arg(long, value_name = "SECS", default_value_t = 24 * 3600)]
    pub session_timeout: u64,
    /// The largest JSON request body the API accepts (e.g. 8M).
    #[arg(long, value_name = "SIZE", default_value = "8M", value_parser = super::size::parse_size)]
    pub api_body_limit: u64,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub cmd: Option<ExportCmd>,
    #[command(flatten)]
    pub add: ExportAdd,
}

#[derive(Subcommand, Debug)]
pub enum ExportCmd {
    /// List exports.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct ExportAdd {
    /// Volume to export (its own target, LUN 0).
    pub volume: Option<String>,
    /// Initiator name allowed to discover and log in (repeatable).
    #[arg(long = "initiator", value_name = "IQN")]
    pub initiators: Vec<String>,
    /// Target name (default iqn.2026-11.org.strata:VOLUME).
    #[arg(long)]
    pub iqn: Option<String>,
    /// CHAP user the initiator must authenticate as.
    #[arg(long, requires = "chap_secret")]
    pub chap_user: Option<String>,
    #[arg(long, requires = "chap_user")]
    pub chap_secret: Option<String>,
    /// Mutual CHAP: the name and secret the target answers with.
    #[arg(long, requires_all = ["mutual_secret", "chap_user"])]
    pub mutual_user: Option<String>,
    #[arg(long, requires = "mutual_user")]
    pub mutual_secret: Option<String>,
    /// Accept CHAP secrets shorter than 12 bytes (RFC 7143 §12.1.3 asks for at least 96
    /// bits). Empty secrets are refused whatever this says.
    #[arg(long)]
    pub weak_secret: bool,
    /// Seconds to wait for a running server to apply the change.
    #[arg(long, default_value_t = 15)]
    pub wait: u64,
}

#[derive(Args, Debug)]
pub struct UnexportArgs {
    pub volume: String,
    /// Seconds to wait for a running server to end the volume's sessions.
    #[arg(long, default_value_t = 15)]
    pub wait: u64,
}

pub fn serve(repo: Arc<Repository>, catalog: &Location, a: ServeArgs) -> CliResult {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("strata-iscsi");
    if let Some(t) = a.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = rt.build()?;
    let opts = ServerOptions {
        identity: Identity {
            vendor: a.vendor,
            product: a.product,
            ..Identity::default()
        },
        nop_interval: std::time::Duration::from_secs(a.nop_interval.max(1)),
        queue_depth: a.queue_depth.clamp(1, 1024),
        login_timeout: std::time::Duration::from_secs(a.login_timeout.max(1)),
        nop_timeout: std::time::Duration::from_secs(a.nop_timeout.max(1)),
        prelogin: PreLoginLimits {
            per_address: a.prelogin_per_address.max(1),
            global: a.prelogin_max.max(1),
        },
        sessions: SessionLimits {
            max_sessions: a.max_sessions.max(1),
            per_initiator: a.max_sessions_per_initiator.max(1),
            per_target: a.max_sessions_per_target.max(1),
        },
        ..ServerOptions::default()
    };
    raise_fd_limit();
    // The catalog (which holds the exports; an earlier strata's exports.json is taken over
    // here) and the API's listener first: a catalog this strata cannot read or a taken port
    // stops the start before anything serves.
    let catalog = Catalog::open_at(catalog, repo.root())?;
    let export_source = catalog.export_source();
    let api = match a.api {
        None => None,
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| format!("listening for the API on {addr}: {e}"))?;
            let catalog = catalog.clone();
            let mut opts = ApiOptions::for_repo(repo.root());
            if let (Some(cert), Some(key)) = (a.tls_cert.clone(), a.tls_key.clone()) {
                opts.tls = TlsSource::Files { cert, key };
            }
            opts.session_idle = std::time::Duration::from_secs(a.session_timeout.max(1));
            opts.body_limit = usize::try_from(a.api_body_limit).unwrap_or(usize::MAX);
            Some((listener, catalog, opts))
        }
    };
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let api_repo = repo.clone();
    rt.block_on(async move {
        let api = match api {
            None => None,
            Some((listener, catalog, opts)) => {
                let s = ApiServer::start(catalog, api_repo, listener, opts)?;
                println!("serving HTTPS API on {}", s.local_addr());
                Some(s)
            }
        };
        let announce = tokio::spawn(async move {
            if let Ok(addrs) = ready_rx.await {
                for a in addrs {
                    println!("serving iSCSI on {a}");
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
        });
        let r = server::serve(
            repo,
            export_source,
            &a.listen,
            opts,
            stop_rx,
            Some(ready_tx),
        )
        .await;
        let _ = announce.await;
        // iSCSI returns on SIGTERM/SIGINT; the API then finishes its requests in flight.
        if let Some(api) = api {
            if let Err(e) = api.stop(std::time::Duration::from_secs(10)).await {
                tracing::warn!(error = %e, "API server stopped with an error");
            }
        }
        r.map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
    })?;
    Ok(())
}

/// Raises the soft limit on open files to the hard one: each session holds a socket and
/// its volume's files, and the default soft limit (often 1024) is below `--max-sessions`.
fn raise_fd_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Short CHAP secrets are refused (unless `weak`), empty ones always; long ones only get
/// a note (EDK2 firmware takes 16 bytes at most).
fn check_secrets(e: &Export, weak: bool) -> CliResult {
    let secrets = [
        ("--chap-secret", &e.chap),
        ("--mutual-secret", &e.mutual_chap),
    ];
    for (flag, chap) in secrets {
        let Some(c) = chap else { continue };
        let n = c.secret.len();
        if n == 0 {
            return Err(
                format!("{flag} is empty: an empty CHAP secret authenticates nobody").into(),
            );
        }
        if n < 12 && !weak {
            return Err(format!(
                "{flag} has {n} bytes; RFC 7143 asks for at least 12 (96 bits): use a longer \
                 secret, or --weak-secret to accept it anyway"
            )
            .into());
        }
        if n < 12 {
            eprintln!(
                "warning: {flag} has {n} bytes, under the 12 RFC 7143 asks for (--weak-secret)"
            );
        } else if n > 16 {
            eprintln!(
                "note: {flag} has {n} bytes; UEFI firmware (EDK2/OVMF iSCSI) accepts only 12 \
                 to 16"
            );
        }
    }
    Ok(())
}

/// Tells a running server (if any) to apply the exports now, and waits until it has.
fn confirm(
    repo: &Repository,
    wait: u64,
) -> Result<Option<control::Applied>, control::ControlError> {
    control::apply(repo.root(), std::time::Duration::from_secs(wait.max(1)))
}

pub fn export(repo: &Repository, a: ExportArgs) -> CliResult {
    if let Some(ExportCmd::Ls { json }) = a.cmd {
        let all = Catalog::open(repo.root())?.exports()?;
        // Live sessions, from the running server; None when no server runs.
        let live: Option<Vec<SessionInfo>> =
            match control::sessions(repo.root(), std::time::Duration::from_secs(5)) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("note: no session list: {e}");
                    None
                }
            };
        let of = |e: &Export| -> Vec<&SessionInfo> {
            live.iter()
                .flatten()
                .filter(|s| s.target.eq_ignore_ascii_case(&e.iqn))
                .collect()
        };
        if json {
            // Secrets stay out of listings.
            let shown: Vec<serde_json::Value> = all
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "volume": e.volume, "iqn": e.iqn, "initiators": e.initiators,
                        "chap": e.chap.is_some(), "mutual_chap": e.mutual_chap.is_some(),
                        "sessions": live.as_ref().map(|_| of(e)),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&shown)?);
        } else {
            println!("VOLUME\tTARGET\tINITIATORS\tAUTH\tSESSIONS");
            for e in all.iter() {
                let auth = match (&e.chap, &e.mutual_chap) {
                    (Some(_), Some(_)) => "chap+mutual",
                    (Some(_), None) => "chap",
                    _ => "none",
                };
                let sessions = match &live {
                    None => "-".to_string(),
                    Some(_) => {
                        let s = of(e);
                        if s.is_empty() {
                            "0".to_string()
                        } else {
                            let who: Vec<String> = s
                                .iter()
                                .map(|s| format!("{}@{}", s.initiator, s.peer))
                                .collect();
                            format!("{} ({})", s.len(), who.join(", "))
                        }
                    }
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    e.volume,
                    e.iqn,
                    e.initiators.join(","),
                    auth,
                    sessions
                );
            }
        }
        return Ok(());
    }
    let add = a.add;
    let Some(volume) = add.volume else {
        return Err("export needs a VOLUME (or `export ls`)".into());
    };
    repo.volume_meta(&volume)?;
    let iqn = add.iqn.unwrap_or_else(|| exports::default_iqn(&volume));
    let e = Export {
        volume: volume.clone(),
        iqn: iqn.clone(),
        initiators: add.initiators,
        chap: add
            .chap_user
            .zip(add.chap_secret)
            .map(|(user, secret)| Chap { user, secret }),
        mutual_chap: add
            .mutual_user
            .zip(add.mutual_secret)
            .map(|(user, secret)| Chap { user, secret }),
    };
    check_secrets(&e, add.weak_secret)?;
    Catalog::open(repo.root())?.add_export(&e)?;
    // A replaced export may admit fewer initiators, or other secrets: the server ends the
    // sessions it no longer admits before this returns.
    let applied = confirm(repo, add.wait)
        .map_err(|e| format!("volume {volume} is exported as {iqn}, but {e}"))?;
    println!("exported volume {volume} as {iqn}");
    if let Some(a) = applied.filter(|a| a.revoked > 0) {
        println!(
            "ended {} session(s) the new export does not admit",
            a.revoked
        );
    }
    Ok(())
}

pub fn unexport(repo: &Repository, a: UnexportArgs) -> CliResult {
    Catalog::open(repo.root())?.remove_export(&a.volume)?;
    match confirm(repo, a.wait) {
        Ok(applied) => {
            println!("volume {} is no longer exported", a.volume);
            if let Some(ap) = applied {
                if ap.revoked > 0 {
                    println!("ended {} session(s)", ap.revoked);
                }
                if ap.still_open > 0 {
                    return Err(format!(
                        "{} session(s) of {} had not ended when the server stopped waiting; \
                         see the server's log",
                        ap.still_open, a.volume
                    )
                    .into());
                }
            }
            Ok(())
        }
        Err(e) => Err(format!(
            "volume {} is no longer exported, but its sessions may still be open: {e}",
            a.volume
        )
        .into()),
    }
}
