//! Command-line interface: the clap definitions and one file per command family.
//! Everything here is presentation (arguments, tables, progress bars); the work is done by
//! the library layers.

mod bench;
mod capture;
mod debug;
mod fs;
mod image;
mod iscsi;
mod plan;
mod progress;
mod size;
mod user;
mod volume;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use strata::store::{RepoOptions, Repository};

pub type CliResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Golden-image streaming: copy-on-write OS volumes served over iSCSI and FUSE"
)]
pub struct Cli {
    /// Repository directory (created if missing or empty).
    #[arg(
        long,
        global = true,
        env = "STRATA_REPO",
        default_value = "/var/lib/strata"
    )]
    pub repo: PathBuf,
    /// The catalog (artifacts, OS volumes, users, tasks) of `serve --api` and `user`: a
    /// postgres:// or postgresql:// URL for a PostgreSQL catalog that several strata nodes
    /// share (password in the URL or PGPASSWORD); by default catalog.db in the repository.
    #[arg(long, global = true, env = "STRATA_CATALOG", value_name = "URL")]
    pub catalog: Option<String>,
    /// Memory for the image-chunk cache shared by all volumes, in MiB (0 disables).
    #[arg(long, global = true, default_value_t = 256)]
    pub cache_mb: u64,
    /// More log output (-v info, -vv debug; `serve` logs at info already); RUST_LOG
    /// overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Golden images: import, list, inspect, export, remove.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// OS volumes: create (clone), list, inspect, export, remove.
    #[command(subcommand)]
    Volume(volume::VolumeCmd),
    /// Mount the repository through FUSE: volumes/NAME, images/NAME and one file per partition.
    Mount(MountArgs),
    /// Measure the store in-process (see tools/bench-store for comparisons with qcow2).
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Serve exported volumes over iSCSI (foreground; stops cleanly on SIGTERM).
    Serve(iscsi::ServeArgs),
    /// Export a volume as an iSCSI target for given initiators (`export ls` lists).
    Export(iscsi::ExportArgs),
    /// Stop exporting a volume.
    Unexport(iscsi::UnexportArgs),
    /// Filesystems inside a volume or image: list, inspect, ls, cat, stat, df, mkdir, rm,
    /// chmod, put, get (DEVICE:PATH, e.g. /dev/sda2:/etc/hostname).
    #[command(subcommand)]
    Fs(fs::FsCmd),
    /// Deploy an OS volume from a deployment plan: clone its golden image, run its build
    /// plan's scripts with the attributes given, keep the volume only if all succeed.
    Deploy(plan::DeployArgs),
    /// Capture an OS volume as a new golden image: a snapshot of it (the volume is never
    /// changed and may keep serving), a capture build plan's scripts run on a throwaway
    /// copy, and only the blocks its filesystems use stored.
    Capture(capture::CaptureArgs),
    /// Run guestfish commands or a script against a volume or image (a throwaway copy
    /// unless --write): the debugging loop for plan scripts.
    Shell(plan::ShellArgs),
    /// Plan scripts: lint.
    #[command(subcommand)]
    Script(plan::ScriptCmd),
    /// Local users of the REST API: add (password on standard input), ls, rm.
    #[command(subcommand)]
    User(user::UserCmd),
    /// Tools for tests and debugging.
    #[command(subcommand, hide = true)]
    Debug(debug::DebugCmd),
    /// The filesystem worker process (started by strata itself; speaks on stdin/stdout).
    #[command(name = "fs-worker", hide = true)]
    FsWorker,
}

#[derive(clap::Args)]
pub struct MountArgs {
    /// Existing empty directory to mount on.
    pub mountpoint: PathBuf,
    /// Refuse all writes.
    #[arg(long)]
    pub ro: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
}

pub fn init_logging(verbose: u8) {
    // fuser logs the kernel's routine refusals (a second unmount after ours) as warnings.
    let default = match verbose {
        // fatfs warns about every BPB that is legal but unusual (mkfs.vfat's own defaults).
        0 => "warn,fuser=error,fatfs=error",
        1 => "info,fuser=error,fatfs=error",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only on a terminal: a log file or journal gets plain text.
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Each open volume holds a file descriptor; let the process use all it may.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls with a valid pointer to a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn open_repo(cli: &Cli) -> Result<Arc<Repository>, strata::store::StoreError> {
    Repository::open(
        &cli.repo,
        RepoOptions {
            cache_bytes: cli.cache_mb << 20,
        },
    )
    .map(Arc::new)
}

pub fn run(cli: Cli) -> CliResult {
    match &cli.command {
        Command::FsWorker => strata::fs::worker::child::run(),
        // The worker opens the repository itself; this process never touches the volume.
        Command::Fs(_) => {
            let Command::Fs(c) = cli.command else {
                unreachable!()
            };
            return fs::run(&cli.repo, c);
        }
        Command::Script(_) => {
            let Command::Script(c) = cli.command else {
                unreachable!()
            };
            return plan::lint(c);
        }
        _ => {}
    }
    let catalog = || strata::catalog::Location::parse(cli.catalog.as_deref());
    let repo = open_repo(&cli)?;
    match cli.command {
        Command::Image(c) => image::run(&repo, c),
        Command::Volume(c) => volume::run(&repo, c),
        Command::Mount(m) => {
            strata::fuse::mount(
                repo,
                &m.mountpoint,
                strata::fuse::MountOptions {
                    read_only: m.ro,
                    threads: m.threads,
                },
            )?;
            Ok(())
        }
        Command::Bench(c) => bench::run(&repo, c),
        Command::Serve(a) => iscsi::serve(repo, &catalog()?, a),
        Command::Export(a) => iscsi::export(&repo, a),
        Command::Unexport(a) => iscsi::unexport(&repo, a),
        Command::Debug(c) => debug::run(&repo, c),
        Command::Deploy(a) => plan::deploy(&repo, a),
        Command::Shell(a) => plan::shell(&repo, a),
        Command::Capture(a) => capture::run(&repo, a),
        Command::User(c) => user::run(repo.root(), &catalog()?, c),
        Command::Fs(_) | Command::FsWorker | Command::Script(_) => {
            unreachable!("dispatched above")
        }
    }
}

/// Prints rows as aligned columns.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
