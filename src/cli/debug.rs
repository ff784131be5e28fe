//! `strata debug …`: tools for tests. `torture` writes a reproducible stream of blocks into
//! a volume and prints a line after each flush; `torture-check` verifies, after the writer
//! was killed at any instant, that the volume holds every write up to the last reported
//! flush and that no block is torn or stale.

use clap::Subcommand;
use std::io::Write;
use strata::store::Repository;

use super::CliResult;

const BS: usize = 4096;

#[derive(Subcommand)]
pub enum DebugCmd {
    /// Write pseudo-random blocks forever (or --writes N), flushing every --flush-every writes.
    Torture {
        volume: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Blocks of the volume to write into.
        #[arg(long, default_value_t = 1024)]
        blocks: u64,
        #[arg(long, default_value_t = 50)]
        flush_every: u64,
        #[arg(long)]
        writes: Option<u64>,
    },
    /// Check a tortured volume against the last flush the writer reported.
    TortureCheck {
        volume: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 1024)]
        blocks: u64,
        /// Writes completed before the last reported flush.
        #[arg(long)]
        flushed: u64,
    },
}

/// The block written by write number `seq`.
fn target(seed: u64, blocks: u64, seq: u64) -> u64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(seq.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 29)) % blocks
}

fn content(seq: u64, block: u64) -> Vec<u8> {
    let mut b = vec![(seq % 251) as u8 + 1; BS];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&block.to_le_bytes());
    b
}

/// Which write a block's bytes are, if they are exactly one whole write to that block.
fn decode(b: &[u8], block: u64) -> Option<u64> {
    let seq = u64::from_le_bytes(b[..8].try_into().ok()?);
    (b == content(seq, block).as_slice()).then_some(seq)
}

/// Checks one block: `flushed` writes were durable; any write after them may also be there.
/// `before` is what the block held before any write (the image's bytes, or zeros).
fn check_block(
    seed: u64,
    blocks: u64,
    flushed: u64,
    block: u64,
    got: &[u8],
    before: &[u8],
    horizon: u64,
) -> Result<(), String> {
    let durable = (0..flushed)
        .rev()
        .find(|&s| target(seed, blocks, s) == block);
    if got == before {
        return match durable {
            None => Ok(()),
            Some(s) => Err(format!(
                "block {block} holds its original bytes but write {s} was flushed"
            )),
        };
    }
    let Some(seq) = decode(got, block) else {
        return Err(format!(
            "block {block} is torn or foreign: not one whole write"
        ));
    };
    if target(seed, blocks, seq) != block || seq >= horizon {
        return Err(format!(
            "block {block} holds write {seq}, which never went there"
        ));
    }
    match durable {
        Some(s) if seq < s => Err(format!(
            "block {block} holds write {seq}, older than flushed write {s}"
        )),
        _ => Ok(()),
    }
}

pub fn run(repo: &Repository, cmd: DebugCmd) -> CliResult {
    match cmd {
        DebugCmd::Torture {
            volume,
            seed,
            blocks,
            flush_every,
            writes,
        } => {
            let v = repo.open_volume(&volume, false)?;
            let blocks = blocks.min(v.len() / BS as u64).max(1);
            let mut out = std::io::stdout().lock();
            let mut seq = 0u64;
            while writes.is_none_or(|w| seq < w) {
                let b = target(seed, blocks, seq);
                v.write_at(&content(seq, b), b * BS as u64)?;
                seq += 1;
                if seq % flush_every.max(1) == 0 {
                    v.flush()?;
                    writeln!(out, "flushed {seq}")?;
                    out.flush()?;
                }
            }
            v.flush()?;
            writeln!(out, "flushed {seq}")?;
        }
        DebugCmd::TortureCheck {
            volume,
            seed,
            blocks,
            flushed,
        } => {
            let v = repo.open_volume(&volume, true)?;
            let blocks = blocks.min(v.len() / BS as u64).max(1);
            // Writes after the last flush line: at most one flush interval plus what was in
            // flight; allow a generous horizon, the content check is exact anyway.
            let horizon = flushed + 1_000_000;
            let mut buf = vec![0u8; BS];
            let mut before = vec![0u8; BS];
            let mut bad = Vec::new();
            for b in 0..blocks {
                v.read_at(&mut buf, b * BS as u64)?;
                if let Some(img) = v.image() {
                    img.read_at(&mut before, b * BS as u64, "torture-check")?;
                }
                if let Err(e) = check_block(seed, blocks, flushed, b, &buf, &before, horizon) {
                    bad.push(e);
                }
            }
            if !bad.is_empty() {
                return Err(format!("{} bad blocks; first: {}", bad.len(), bad[0]).into());
            }
            println!("ok: {blocks} blocks consistent with {flushed} flushed writes");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_rejects_stale_torn_and_missing_blocks() {
        let (seed, blocks) = (7, 16);
        let flushed = 100;
        let s = (0..flushed)
            .rev()
            .find(|&s| target(seed, blocks, s) == 3)
            .unwrap();
        let older = (0..s)
            .rev()
            .find(|&x| target(seed, blocks, x) == 3)
            .unwrap();
        let zero = vec![0; BS];
        let check =
            |got: &[u8], horizon| check_block(seed, blocks, flushed, 3, got, &zero, horizon);
        assert!(check(&content(s, 3), 200).is_ok());
        assert!(check(&content(older, 3), 200).is_err());
        assert!(check(&zero, 200).is_err());
        let mut torn = content(s, 3);
        torn[2000] ^= 1;
        assert!(check(&torn, 200).is_err());
        let later = (flushed..).find(|&x| target(seed, blocks, x) == 3).unwrap();
        assert!(check(&content(later, 3), later + 1).is_ok());
        let never = (0..blocks).find(|&b| (0..flushed).all(|x| target(seed, blocks, x) != b));
        if let Some(b) = never {
            assert!(check_block(seed, blocks, flushed, b, &zero, &zero, 200).is_ok());
        }
    }
}
