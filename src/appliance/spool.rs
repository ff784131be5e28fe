//! Spooling: an upload (a request body, any `Read`) copied into a file in a scratch
//! directory of the repository's `tmp/`, so that a zip can be seeked and nothing is held
//! in memory. All-zero blocks are left as holes (a disk image is mostly empty). The scratch
//! directory goes when its [`Scratch`] is dropped, or, after a crash, with the next
//! `Repository::open`.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::error::{io_err, ApplianceError, Result};
use crate::store::Repository;

const BUF: usize = 1 << 20;
const BLOCK: usize = 64 << 10;

/// A scratch directory in the repository's `tmp/`, removed on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(repo: &Repository, what: &str) -> Result<Scratch> {
        Ok(Scratch(repo.scratch_dir(what)?))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A spooled upload: its file (open for reading, at its start), path and size.
#[derive(Debug)]
pub struct Spooled {
    pub file: File,
    pub path: PathBuf,
    pub len: u64,
    /// Its first bytes (up to 8), to tell a zip from a disk.
    pub magic: Vec<u8>,
}

/// Copies `input` into `dir/name`, sparse; `progress(bytes so far)` after each MiB.
pub fn spool(
    input: &mut dyn Read,
    dir: &Path,
    name: &str,
    progress: &dyn Fn(u64),
) -> Result<Spooled> {
    let path = dir.join(name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io_err("creating", &path))?;
    let mut buf = vec![0u8; BUF];
    let mut pos = 0u64;
    let mut magic = Vec::new();
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ApplianceError::Upload(e)),
        };
        if magic.len() < 8 {
            let want = (8 - magic.len()).min(n);
            magic.extend_from_slice(&buf[..want]);
        }
        for (i, b) in buf[..n].chunks(BLOCK).enumerate() {
            if b.iter().any(|&x| x != 0) {
                file.write_all_at(b, pos + (i * BLOCK) as u64)
                    .map_err(io_err("writing", &path))?;
            }
        }
        pos += n as u64;
        progress(pos);
    }
    file.set_len(pos).map_err(io_err("sizing", &path))?;
    file.seek(SeekFrom::Start(0))
        .map_err(io_err("reading", &path))?;
    Ok(Spooled {
        file,
        path,
        len: pos,
        magic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spooled_upload_has_the_same_bytes_and_holes_for_zeros() {
        let d = tempfile::tempdir().unwrap();
        let mut data = vec![0u8; 3 << 20];
        data[0] = 7;
        data[(3 << 20) - 1] = 9;
        let s = spool(&mut &data[..], d.path(), "x", &|_| {}).unwrap();
        assert_eq!(s.len, data.len() as u64);
        assert_eq!(s.magic, data[..8]);
        assert_eq!(fs::read(&s.path).unwrap(), data);
        use std::os::unix::fs::MetadataExt;
        let blocks = fs::metadata(&s.path).unwrap().blocks() * 512;
        assert!(blocks < 1 << 20, "{blocks} bytes allocated");
    }

    #[test]
    fn a_failing_reader_is_an_upload_error() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("connection reset"))
            }
        }
        let d = tempfile::tempdir().unwrap();
        let e = spool(&mut Broken, d.path(), "x", &|_| {}).unwrap_err();
        assert!(e.to_string().contains("connection reset"), "{e}");
    }
}
