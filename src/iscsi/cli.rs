//! The iSCSI commands of the `strata` binary: `serve`, `export` (add, `ls`) and `unexport`.
//! Argument structs and their run functions live here so `src/cli` only dispatches.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Args, Subcommand};

use crate::store::Repository;

use super::exports::{self, Chap, Export};
use super::scsi::Identity;
use super::server::{self, ServerOptions};

pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

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
    /// Commands one session may have in flight (CmdSN window).
    #[arg(long, default_value_t = 64)]
    pub queue_depth: u32,
    /// Worker threads of the network runtime (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds a connection may take to complete its login (half-open connections and
    /// login floods are dropped after this).
    #[arg(long, default_value_t = 15, hide = true)]
    pub login_timeout: u64,
    /// Seconds an initiator that answers pings may leave one unanswered before its
    /// connection is dropped.
    #[arg(long, default_value_t = 30, hide = true)]
    pub nop_timeout: u64,
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
}

#[derive(Args, Debug)]
pub struct UnexportArgs {
    pub volume: String,
}

pub fn serve(repo: Arc<Repository>, a: ServeArgs) -> CliResult {
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
        ..ServerOptions::default()
    };
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    rt.block_on(async move {
        let announce = tokio::spawn(async move {
            if let Ok(addrs) = ready_rx.await {
                for a in addrs {
                    println!("serving iSCSI on {a}");
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
        });
        let r = server::serve(repo, &a.listen, opts, stop_rx, Some(ready_tx)).await;
        let _ = announce.await;
        r
    })?;
    Ok(())
}

pub fn export(repo: &Repository, a: ExportArgs) -> CliResult {
    if let Some(ExportCmd::Ls { json }) = a.cmd {
        let all = exports::load(repo.root())?;
        if json {
            // Secrets stay out of listings.
            let shown: Vec<serde_json::Value> = all
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "volume": e.volume, "iqn": e.iqn, "initiators": e.initiators,
                        "chap": e.chap.is_some(), "mutual_chap": e.mutual_chap.is_some(),
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&shown)?);
        } else {
            println!("VOLUME\tTARGET\tINITIATORS\tAUTH");
            for e in all.iter() {
                let auth = match (&e.chap, &e.mutual_chap) {
                    (Some(_), Some(_)) => "chap+mutual",
                    (Some(_), None) => "chap",
                    _ => "none",
                };
                println!(
                    "{}\t{}\t{}\t{}",
                    e.volume,
                    e.iqn,
                    e.initiators.join(","),
                    auth
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
    let secrets = [
        ("--chap-secret", &e.chap),
        ("--mutual-secret", &e.mutual_chap),
    ];
    for (flag, chap) in secrets {
        if let Some(c) = chap
            .as_ref()
            .filter(|c| !(12..=16).contains(&c.secret.len()))
        {
            eprintln!(
                "note: {flag} has {} characters; UEFI firmware (EDK2/OVMF iSCSI) accepts only \
                 12 to 16, and RFC 7143 asks for at least 12",
                c.secret.len()
            );
        }
    }
    exports::add(repo.root(), e)?;
    println!("exported volume {volume} as {iqn}");
    Ok(())
}

pub fn unexport(repo: &Repository, a: UnexportArgs) -> CliResult {
    exports::remove(repo.root(), &a.volume)?;
    println!("volume {} is no longer exported", a.volume);
    Ok(())
}
