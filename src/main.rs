//! The `strata` command: parses arguments, opens the repository, dispatches to src/cli/.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    cli::init_logging(args.verbose);
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
