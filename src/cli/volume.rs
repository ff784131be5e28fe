//! `strata volume …`: create (clone or empty), list, inspect, export and remove OS volumes.

use std::path::PathBuf;

use clap::Subcommand;
use strata::store::Repository;

use super::progress::Bar;
use super::size::{human, parse_size};
use super::{print_table, CliResult};

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a volume: a copy-on-write clone of an image (no data copied), or empty.
    Create {
        name: String,
        /// Golden image to clone.
        #[arg(long)]
        from: Option<String>,
        /// Size: bytes, or with K/M/G/T (powers of 1024; KB/MB/... are refused as ambiguous);
        /// defaults to the image's. A multiple of 512, at most 16 TiB - 1 MiB.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
    },
    /// List volumes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show a volume: size, image, bytes in its own delta.
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Write a volume out as a sparse raw file.
    Export { name: String, file: PathBuf },
    /// Remove a volume (refused while it is mounted or served).
    Rm { name: String },
}

pub fn run(repo: &Repository, cmd: VolumeCmd) -> CliResult {
    match cmd {
        VolumeCmd::Create { name, from, size } => {
            let m = repo.create_volume(&name, from.as_deref(), size)?;
            match &m.image {
                Some(img) => println!("created volume {name} ({}) from image {img}", human(m.size)),
                None => println!("created empty volume {name} ({})", human(m.size)),
            }
        }
        VolumeCmd::Ls { json } => {
            let vols = repo.list_volumes()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&vols)?);
            } else {
                let rows: Vec<Vec<String>> = vols
                    .iter()
                    .map(|m| {
                        vec![
                            m.name.clone(),
                            human(m.size),
                            m.image.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                print_table(&["NAME", "SIZE", "IMAGE"], &rows);
            }
        }
        VolumeCmd::Info { name, json } => {
            let info = repo.volume_info(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                let m = &info.meta;
                println!("name:          {}", m.name);
                println!("virtual size:  {} ({} bytes)", human(m.size), m.size);
                println!(
                    "image:         {}",
                    m.image.as_deref().unwrap_or("(none: empty volume)")
                );
                println!(
                    "delta bytes:   {} ({} bytes)",
                    human(info.delta_bytes),
                    info.delta_bytes
                );
            }
        }
        VolumeCmd::Export { name, file } => {
            let bar = Bar::new(&format!("exporting {name}"));
            let r = repo.export_volume(&name, &file, &|d, t| bar.update(d, t));
            bar.finish();
            r?;
            println!("exported volume {name} to {}", file.display());
        }
        VolumeCmd::Rm { name } => {
            repo.remove_volume(&name)?;
            println!("removed volume {name}");
        }
    }
    Ok(())
}
