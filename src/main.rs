//! The `strata` command: parses arguments, opens the repository, dispatches to src/cli/.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Inside the XFS/btrfs VM, this binary is the initramfs's /init (src/fs/vm/agent.rs).
    if std::process::id() == 1 && std::env::args_os().next().is_some_and(|a| a == "/init") {
        strata::fs::vm::agent::run();
    }
    let args = cli::Cli::parse();
    // A server's log is its record of sessions: `serve` logs at info level unless told.
    let server = matches!(args.command, cli::Command::Serve(_));
    cli::init_logging(args.verbose.max(server as u8));
    cli::raise_fd_limit();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: error: {e}");
            let mut src = std::error::Error::source(&*e);
            while let Some(s) = src {
                // thiserror messages already embed their source; only show what is new.
                let msg = s.to_string();
                if !e.to_string().contains(&msg) {
                    eprintln!("  caused by: {msg}");
                }
                src = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
