//! `strata user add|ls|rm`: the local users the REST API logs in. Presentation only; the
//! catalog hashes and stores. A password is read from standard input (`--password-stdin`),
//! never from the command line, where other users could see it.

use std::io::Read;

use clap::Subcommand;
use strata::catalog::{Catalog, Location};

use super::{print_table, CliResult};

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user; the password is read from standard input (one line, or all of it).
    Add {
        name: String,
        /// Read the password from standard input (required: passwords are never arguments).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// List users.
    Ls,
    /// Remove a user and end its sessions.
    Rm { name: String },
}

pub fn run(repo: &std::path::Path, catalog: &Location, cmd: UserCmd) -> CliResult {
    let cat = Catalog::open_at(catalog, repo)?;
    match cmd {
        UserCmd::Add { name, .. } => {
            let mut pw = String::new();
            std::io::stdin()
                .read_to_string(&mut pw)
                .map_err(|e| format!("reading the password from standard input: {e}"))?;
            // A password piped with echo ends in a newline that is not part of it.
            let pw = pw.strip_suffix('\n').unwrap_or(&pw);
            let pw = pw.strip_suffix('\r').unwrap_or(pw);
            if pw.is_empty() {
                return Err("the password read from standard input is empty".into());
            }
            cat.add_user(&name, pw)?;
            println!("added user {name}");
        }
        UserCmd::Ls => {
            let rows: Vec<Vec<String>> = cat
                .users()?
                .into_iter()
                .map(|u| vec![u.name, u.created])
                .collect();
            print_table(&["NAME", "CREATED"], &rows);
        }
        UserCmd::Rm { name } => {
            cat.remove_user(&name)?;
            println!("removed user {name}");
        }
    }
    Ok(())
}
