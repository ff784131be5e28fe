//! Moving whole disks in and out of the store: recognising an import's format, converting
//! qcow2 (and other formats qemu-img reads) to raw, copying raw data chunk by chunk while
//! skipping holes and zeros, and writing sparse raw exports.
//!
//! Progress is reported through a plain callback `(done, total)`; drawing it is the CLI's job.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::buf::AlignedBuf;
use super::error::{Result, StoreError};
use super::image::{is_zero, ImageWriter};

/// Callback for long work: bytes done, bytes in all.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// How to read an import's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SourceFormat {
    /// qcow2 (and other formats qemu-img knows) by magic, raw otherwise.
    #[default]
    Auto,
    Raw,
    Qcow2,
}

impl std::str::FromStr for SourceFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SourceFormat::Auto),
            "raw" => Ok(SourceFormat::Raw),
            "qcow2" => Ok(SourceFormat::Qcow2),
            _ => Err(format!("unknown format {s:?}: use auto, raw or qcow2")),
        }
    }
}

/// Magic numbers of disk formats that must not be imported as raw by mistake.
const FOREIGN_MAGICS: &[(&[u8], &str)] = &[
    (b"QFI\xfb", "qcow2"),
    (b"KDMV", "vmdk"),
    (b"vhdxfile", "vhdx"),
    (b"conectix", "vpc"),
];

/// What an import will read: a raw file, or a file qemu-img must convert first.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    Raw,
    Convert(&'static str),
}

pub fn detect(path: &Path, format: SourceFormat) -> Result<Detected> {
    let mut f = File::open(path).map_err(|e| StoreError::io("opening", path, e))?;
    let mut magic = [0u8; 8];
    let n = read_up_to(&mut f, &mut magic).map_err(|e| StoreError::io("reading", path, e))?;
    let found = FOREIGN_MAGICS
        .iter()
        .find(|(m, _)| n >= m.len() && magic.starts_with(m))
        .map(|(_, name)| *name);
    match (format, found) {
        (SourceFormat::Raw, _) => Ok(Detected::Raw),
        (SourceFormat::Qcow2, Some("qcow2")) | (SourceFormat::Auto, Some("qcow2")) => {
            Ok(Detected::Convert("qcow2"))
        }
        (SourceFormat::Qcow2, _) => Err(StoreError::InvalidInput(format!(
            "{} is not a qcow2 image (no qcow2 magic)",
            path.display()
        ))),
        (SourceFormat::Auto, Some(other)) => Ok(Detected::Convert(other)),
        (SourceFormat::Auto, None) => Ok(Detected::Raw),
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Converts `src` (of `format`) to a sparse raw file at `dest` with qemu-img.
pub fn convert_to_raw(src: &Path, format: &str, dest: &Path) -> Result<()> {
    let out = Command::new("qemu-img")
        .args(["convert", "-q", "-f", format, "-O", "raw"])
        .arg(src)
        .arg(dest)
        .output()
        .map_err(|e| {
            StoreError::Failed(format!(
                "cannot run qemu-img to read the {format} image {}: {e} (install qemu-utils)",
                src.display()
            ))
        })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(StoreError::InvalidInput(format!(
            "cannot read {} as {format}: {}",
            src.display(),
            msg.trim().trim_start_matches("qemu-img: ")
        )));
    }
    Ok(())
}

/// Checks that a raw source looks like a disk: non-empty, whole 512-byte sectors.
pub fn raw_size(path: &Path) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| StoreError::io("reading", path, e))?;
    let len = if meta.file_type().is_file() {
        meta.len()
    } else {
        let f = File::open(path).map_err(|e| StoreError::io("opening", path, e))?;
        device_size(&f).map_err(|e| StoreError::io("reading size of", path, e))?
    };
    if len == 0 {
        return Err(StoreError::InvalidInput(format!(
            "{} is empty: not a disk image",
            path.display()
        )));
    }
    if len % 512 != 0 {
        return Err(StoreError::InvalidInput(format!(
            "{} is {len} bytes, not a whole number of 512-byte sectors: truncated, or not a raw disk image",
            path.display()
        )));
    }
    Ok(len)
}

fn device_size(f: &File) -> io::Result<u64> {
    use std::io::Seek;
    let mut f = f;
    f.seek(io::SeekFrom::End(0))
}

/// The data extents of a file (holes skipped), as (offset, len), via SEEK_DATA/SEEK_HOLE.
/// Falls back to the whole file where the filesystem does not support them.
fn data_extents(f: &File, len: u64) -> Vec<(u64, u64)> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < len {
        // SAFETY: lseek on an fd we own.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) {
                break; // no more data
            }
            return vec![(0, len)];
        }
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { len as i64 } else { hole };
        out.push((data as u64, (hole.min(len as i64) - data) as u64));
        pos = hole as u64;
    }
    out
}

/// Copies the raw disk `src` into `w` chunk by chunk, skipping holes and zero chunks.
pub fn copy_raw_into(
    src: &Path,
    len: u64,
    w: &mut ImageWriter,
    chunk: usize,
    progress: Progress,
) -> Result<()> {
    let f = File::open(src).map_err(|e| StoreError::io("opening", src, e))?;
    const READ: usize = 1 << 20;
    let mut buf = AlignedBuf::zeroed(READ);
    let cs = chunk as u64;
    let mut done_before = 0;
    for (start, elen) in data_extents(&f, len) {
        // Align to chunks: a chunk straddling a hole edge is read whole.
        let mut pos = start / cs * cs;
        let end = (start + elen).div_ceil(cs) * cs;
        let end = end.min(len.div_ceil(cs) * cs);
        while pos < end {
            let want = ((end - pos) as usize).min(READ);
            let avail = (len.saturating_sub(pos) as usize).min(want);
            buf[avail..want].fill(0);
            f.read_exact_at(&mut buf[..avail], pos)
                .map_err(|e| StoreError::io("reading", src, e))?;
            for (i, c) in buf[..want].chunks(chunk).enumerate() {
                w.put(pos / cs + i as u64, c)?;
            }
            pos += want as u64;
            progress(pos.min(len).max(done_before), len);
        }
        done_before = end.min(len);
    }
    progress(len, len);
    Ok(())
}

/// Writes a sparse raw file of `len` bytes to `dest`, filled by `read(buf, offset)`, skipping
/// regions `stored(offset, len)` says are empty. Written to a `.partial` file renamed at the
/// end, so a failed export leaves nothing behind.
pub fn export_raw(
    dest: &Path,
    len: u64,
    read: &dyn Fn(&mut [u8], u64) -> Result<()>,
    stored: &dyn Fn(u64, u64) -> bool,
    progress: Progress,
) -> Result<()> {
    if dest.exists() {
        return Err(StoreError::InvalidInput(format!(
            "{} already exists; remove it or choose another path",
            dest.display()
        )));
    }
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let result = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)
            .map_err(|e| StoreError::io("creating", &partial, e))?;
        f.set_len(len)
            .map_err(|e| StoreError::io("sizing", &partial, e))?;
        const STEP: u64 = 1 << 20;
        let mut buf = AlignedBuf::zeroed(STEP as usize);
        let mut pos = 0;
        while pos < len {
            let n = STEP.min(len - pos);
            if stored(pos, n) {
                let b = &mut buf[..n as usize];
                read(b, pos)?;
                for (i, c) in b.chunks(64 * 1024).enumerate() {
                    if !is_zero(c) {
                        f.write_all_at(c, pos + i as u64 * 64 * 1024)
                            .map_err(|e| StoreError::io("writing", &partial, e))?;
                    }
                }
            }
            pos += n;
            progress(pos, len);
        }
        f.sync_all()
            .map_err(|e| StoreError::io("syncing", &partial, e))?;
        std::fs::rename(&partial, dest).map_err(|e| StoreError::io("renaming", &partial, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_qcow2_by_magic_and_refuses_mismatched_format() {
        let t = tempfile::tempdir().unwrap();
        let q = t.path().join("a");
        std::fs::write(&q, b"QFI\xfb\0\0\0\x03garbage").unwrap();
        assert_eq!(
            detect(&q, SourceFormat::Auto).unwrap(),
            Detected::Convert("qcow2")
        );
        assert_eq!(detect(&q, SourceFormat::Raw).unwrap(), Detected::Raw);
        let r = t.path().join("b");
        std::fs::write(&r, vec![0u8; 1024]).unwrap();
        assert_eq!(detect(&r, SourceFormat::Auto).unwrap(), Detected::Raw);
        assert!(detect(&r, SourceFormat::Qcow2).is_err());
    }

    #[test]
    fn raw_size_refuses_empty_and_partial_sectors() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x");
        std::fs::write(&p, b"").unwrap();
        assert!(raw_size(&p).unwrap_err().to_string().contains("empty"));
        std::fs::write(&p, vec![1u8; 1000]).unwrap();
        assert!(raw_size(&p).unwrap_err().to_string().contains("512"));
        std::fs::write(&p, vec![1u8; 1024]).unwrap();
        assert_eq!(raw_size(&p).unwrap(), 1024);
    }
}
