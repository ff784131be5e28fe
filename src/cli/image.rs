//! `strata image …`: import, list, inspect, export and remove golden images.

use std::path::PathBuf;

use clap::Subcommand;
use strata::store::transfer::ImportOptions;
use strata::store::{Repository, SourceFormat};

use super::progress::Bar;
use super::size::human;
use super::{print_table, CliResult};

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Import a raw or qcow2 disk image as a golden image (holes and zero blocks are not stored).
    Import {
        file: PathBuf,
        #[arg(long)]
        name: String,
        /// auto (qcow2 by its magic, else raw), raw or qcow2.
        #[arg(long, default_value = "auto")]
        format: SourceFormat,
        /// Let the image make strata read other files: a qcow2 backing file or external data
        /// file, vmdk extents (and formats whose references strata does not inspect). Off by
        /// default: only for images you trust.
        #[arg(long)]
        allow_backing: bool,
    },
    /// List golden images.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show an image: virtual size, stored bytes, volumes using it.
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Write an image out as a sparse raw file.
    Export { name: String, file: PathBuf },
    /// Remove an image (refused while volumes use it).
    Rm { name: String },
}

pub fn run(repo: &Repository, cmd: ImageCmd) -> CliResult {
    match cmd {
        ImageCmd::Import {
            file,
            name,
            format,
            allow_backing,
        } => {
            let opts = ImportOptions {
                format,
                allow_backing,
            };
            let bar = Bar::new(&format!("importing {name}"));
            let meta = repo.import_image_with(&name, &file, &opts, &|d, t| bar.update(d, t));
            bar.finish();
            let meta = meta?;
            println!(
                "imported image {}: {} virtual, {} stored",
                meta.name,
                human(meta.virtual_size),
                human(meta.stored_bytes)
            );
        }
        ImageCmd::Ls { json } => {
            let images = repo.list_images()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                let rows: Vec<Vec<String>> = images
                    .iter()
                    .map(|m| vec![m.name.clone(), human(m.virtual_size), human(m.stored_bytes)])
                    .collect();
                print_table(&["NAME", "SIZE", "STORED"], &rows);
            }
        }
        ImageCmd::Info { name, json } => {
            let info = repo.image_info(&name)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                let m = &info.meta;
                println!("name:          {}", m.name);
                println!(
                    "virtual size:  {} ({} bytes)",
                    human(m.virtual_size),
                    m.virtual_size
                );
                println!(
                    "stored bytes:  {} ({} bytes)",
                    human(m.stored_bytes),
                    m.stored_bytes
                );
                println!("source:        {}", m.source);
                println!(
                    "volumes:       {}",
                    if info.volumes.is_empty() {
                        "(none)".to_string()
                    } else {
                        info.volumes.join(", ")
                    }
                );
            }
        }
        ImageCmd::Export { name, file } => {
            let bar = Bar::new(&format!("exporting {name}"));
            let r = repo.export_image(&name, &file, &|d, t| bar.update(d, t));
            bar.finish();
            r?;
            println!("exported image {name} to {}", file.display());
        }
        ImageCmd::Rm { name } => {
            repo.remove_image(&name)?;
            println!("removed image {name}");
        }
    }
    Ok(())
}
