//! Moving whole disks in and out of the store: recognising an import's format, converting
//! qcow2 (and other formats qemu-img reads) to raw, copying raw data chunk by chunk while
//! skipping holes and zeros, and writing sparse raw exports.
//!
//! An import's source is not trusted (the coming REST API takes uploads): it must be a
//! regular file or a block device (checked before it is opened for reading, so a FIFO cannot
//! hang us); a qcow2's header is read here and an image naming another file (a backing file,
//! an external data file) is refused unless the caller allows it; qemu-img is always told the
//! format and the file driver (never left to probe, never handed a name it would parse as
//! `json:` or a URL), checks the image first (a truncated qcow2 is refused, not read as
//! zeros), and any read error is fatal. Sizes are capped at `MAX_DISK_SIZE`.
//!
//! Progress is reported through a plain callback `(done, total)`; drawing it is the CLI's job.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
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

/// The disk format other than raw whose magic `head` (a file's first bytes) starts with.
pub fn foreign_format(head: &[u8]) -> Option<&'static str> {
    FOREIGN_MAGICS
        .iter()
        .find(|(m, _)| head.starts_with(m))
        .map(|(_, name)| *name)
}

/// What an import will read: a raw file, or a file qemu-img must convert first.
#[derive(Debug, PartialEq, Eq)]
pub enum Detected {
    Raw,
    Convert(&'static str),
}

pub fn detect(path: &Path, format: SourceFormat) -> Result<Detected> {
    let mut f = open_source(path)?;
    let mut magic = [0u8; 8];
    let n = read_up_to(&mut f, &mut magic).map_err(|e| StoreError::io("reading", path, e))?;
    let found = foreign_format(&magic[..n]);
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

/// The largest disk (image or volume) strata takes: 16 TiB - 1 MiB. Every layer addresses
/// it: a volume's delta numbers its 4 KiB blocks with 32 bits (two values reserved), so
/// 16 TiB - 8 KiB is the most it can hold; an image's index the same; a sparse export on
/// ext4 stops at 16 TiB - 4 KiB; FUSE (i64 offsets) and iSCSI (64-bit LBAs) go further.
/// Rounded down to a MiB so partition tables aligned the usual way fit.
pub const MAX_DISK_SIZE: u64 = (16 << 40) - (1 << 20);

/// Refuses a disk size beyond `MAX_DISK_SIZE`, saying the cap. `what` names the disk.
pub fn check_disk_size(size: u64, what: &str) -> Result<()> {
    if size > MAX_DISK_SIZE {
        return Err(StoreError::InvalidInput(format!(
            "{what} is {size} bytes; the largest disk strata can address is 16 TiB - 1 MiB \
             ({MAX_DISK_SIZE} bytes)"
        )));
    }
    Ok(())
}

/// What an import may read, beyond the bytes of the file named.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    pub format: SourceFormat,
    /// Follow references to other files (a qcow2 backing file or external data file, vmdk
    /// extents) and accept formats whose references strata does not inspect. Off by
    /// default: a crafted image could otherwise make the import read any host file.
    pub allow_backing: bool,
}

/// Opens an import's source for reading, refusing anything that is not a regular file or a
/// block device. Checked by path first (so a FIFO is never opened), then again on the open
/// descriptor (opened non-blocking, so a FIFO swapped in between cannot hang the open).
pub fn open_source(path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| StoreError::io("reading", path, e))?;
    check_source_type(path, &meta.file_type())?;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| StoreError::io("opening", path, e))?;
    let meta = f
        .metadata()
        .map_err(|e| StoreError::io("reading", path, e))?;
    check_source_type(path, &meta.file_type())?;
    // Back to blocking reads (a block device may return EAGAIN otherwise).
    // SAFETY: fcntl on a descriptor we own, with flags read from it.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
    }
    Ok(f)
}

fn check_source_type(path: &Path, t: &std::fs::FileType) -> Result<()> {
    if t.is_file() || t.is_block_device() {
        return Ok(());
    }
    let kind = if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    };
    Err(StoreError::InvalidInput(format!(
        "{} is {kind}: only regular files and block devices can be imported",
        path.display()
    )))
}

/// The raw disk an import reads, once its source has been checked (and converted).
#[derive(Debug)]
pub struct Prepared {
    /// The source itself (raw), or the converted copy in the staging directory.
    pub raw: PathBuf,
    pub len: u64,
}

/// Checks an import's source and, for formats other than raw, converts it into `stage` (the
/// caller's staging directory, removed with everything in it on failure).
pub fn prepare_source(src: &Path, opts: &ImportOptions, stage: &Path) -> Result<Prepared> {
    let raw = match detect(src, opts.format)? {
        Detected::Raw => src.to_path_buf(),
        Detected::Convert(fmt) => {
            let spec = if fmt == "qcow2" {
                let h = read_qcow2_header(src)?;
                check_disk_size(h.size, "its virtual size").map_err(|e| {
                    StoreError::InvalidInput(format!("cannot read {} as qcow2: {e}", src.display()))
                })?;
                if !opts.allow_backing {
                    h.refuse_references(src)?;
                } else if h.backing_file.is_some() && h.backing_format.is_none() {
                    return Err(StoreError::InvalidInput(format!(
                        "{} does not record its backing file's format, so qemu-img would \
                         guess it; record it with `qemu-img rebase -u -F FORMAT -b BACKING`",
                        src.display()
                    )));
                }
                let spec = QemuSource::new(src, fmt, !opts.allow_backing);
                qemu_check(&spec, src)?;
                spec
            } else {
                if !opts.allow_backing {
                    return Err(StoreError::InvalidInput(format!(
                        "{} is a {fmt} image: strata cannot check that it references no other \
                         file (vmdk extents, parent disks); convert it to qcow2 or raw first, or \
                         pass --allow-backing if you trust it",
                        src.display()
                    )));
                }
                QemuSource::new(src, fmt, false)
            };
            let out = stage.join("source.raw");
            tracing::info!(source = %src.display(), format = fmt, "converting with qemu-img");
            convert_to_raw(&spec, src, &out)?;
            out
        }
    };
    let len = raw_size(&raw)?;
    check_disk_size(len, &src.display().to_string())?;
    Ok(Prepared { raw, len })
}

/// The fields of a qcow2 header that decide whether an image refers to other files.
#[derive(Debug, PartialEq, Eq)]
pub struct Qcow2Header {
    pub version: u32,
    /// Virtual size in bytes.
    pub size: u64,
    /// The backing file's name, if the image has one.
    pub backing_file: Option<String>,
    /// The backing file's format, if the image records it (else qemu would probe it).
    pub backing_format: Option<String>,
    /// Incompatible feature bit 2, or a data-file-name extension: the data lives elsewhere.
    pub external_data_file: Option<String>,
    /// Incompatible feature bit 1: qemu marked the image corrupt.
    pub marked_corrupt: bool,
}

impl Qcow2Header {
    fn refuse_references(&self, src: &Path) -> Result<()> {
        let refuse = |what: String| {
            Err(StoreError::InvalidInput(format!(
                "{} {what}; refusing to import it: an image must not make strata read other \
                 files (flatten it with `qemu-img convert -O qcow2`, or pass --allow-backing if \
                 you trust it)",
                src.display()
            )))
        };
        if let Some(b) = &self.backing_file {
            return refuse(format!("has a backing file {b:?}"));
        }
        if let Some(d) = &self.external_data_file {
            return refuse(format!("keeps its data in an external data file {d:?}"));
        }
        Ok(())
    }
}

const QCOW2_INCOMPAT_CORRUPT: u64 = 1 << 1;
const QCOW2_INCOMPAT_DATA_FILE: u64 = 1 << 2;
/// Header extension types (qemu docs/interop/qcow2.txt).
const QCOW2_EXT_END: u32 = 0;
const QCOW2_EXT_DATA_FILE: u32 = 0x4441_5441;
const QCOW2_EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// A qcow2 header with its extensions fits in its first cluster; 2 MiB is the largest
/// cluster size, and far more than any real header needs.
const QCOW2_HEADER_READ: usize = 64 * 1024;

/// Decodes the parts of a qcow2 header (qemu docs/interop/qcow2.txt) that matter for
/// deciding what an import would read. Pure: `b` is the start of the file.
pub fn parse_qcow2_header(b: &[u8]) -> std::result::Result<Qcow2Header, String> {
    let be32 = |at: usize| -> std::result::Result<u32, String> {
        b.get(at..at + 4)
            .map(|x| u32::from_be_bytes(x.try_into().expect("4 bytes")))
            .ok_or_else(|| format!("header cut short at byte {at}"))
    };
    let be64 = |at: usize| -> std::result::Result<u64, String> {
        b.get(at..at + 8)
            .map(|x| u64::from_be_bytes(x.try_into().expect("8 bytes")))
            .ok_or_else(|| format!("header cut short at byte {at}"))
    };
    if b.get(0..4) != Some(b"QFI\xfb") {
        return Err("no qcow2 magic".into());
    }
    let version = be32(4)?;
    if !(2..=3).contains(&version) {
        return Err(format!("unsupported qcow2 version {version}"));
    }
    let backing_off = be64(8)?;
    let backing_len = be32(16)? as usize;
    let size = be64(24)?;
    let backing_file = if backing_off != 0 {
        let name = usize::try_from(backing_off)
            .ok()
            .and_then(|o| b.get(o..o.checked_add(backing_len.min(1023))?))
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .unwrap_or_else(|| format!("(name at byte {backing_off})"));
        Some(name)
    } else {
        None
    };
    let (incompat, ext_start) = if version >= 3 {
        (be64(72)?, be32(100)? as usize)
    } else {
        (0, 72)
    };
    let mut external_data_file =
        (incompat & QCOW2_INCOMPAT_DATA_FILE != 0).then(|| "(unnamed)".to_string());
    let mut backing_format = None;
    // Header extensions: { u32 type, u32 length, data padded to 8 } until type 0. Stop at
    // the end of what was read or at the backing file name, whichever comes first.
    let limit = if backing_off != 0 {
        (backing_off as usize).min(b.len())
    } else {
        b.len()
    };
    let mut at = ext_start.max(72);
    while at + 8 <= limit {
        let (ty, len) = (be32(at)?, be32(at + 4)? as usize);
        if ty == QCOW2_EXT_END {
            break;
        }
        let data = at + 8;
        let text = || {
            b.get(data..data.saturating_add(len).min(b.len()))
                .map(|n| String::from_utf8_lossy(n).into_owned())
                .unwrap_or_default()
        };
        match ty {
            QCOW2_EXT_DATA_FILE => external_data_file = Some(text()),
            QCOW2_EXT_BACKING_FORMAT => backing_format = Some(text()),
            _ => {}
        }
        at = data.saturating_add(len.div_ceil(8) * 8);
    }
    Ok(Qcow2Header {
        version,
        size,
        backing_file,
        backing_format,
        external_data_file,
        marked_corrupt: incompat & QCOW2_INCOMPAT_CORRUPT != 0,
    })
}

fn read_qcow2_header(src: &Path) -> Result<Qcow2Header> {
    let mut f = open_source(src)?;
    let mut b = vec![0u8; QCOW2_HEADER_READ];
    let n = read_up_to(&mut f, &mut b).map_err(|e| StoreError::io("reading", src, e))?;
    b.truncate(n);
    let h = parse_qcow2_header(&b).map_err(|e| {
        StoreError::InvalidInput(format!("cannot read {} as qcow2: {e}", src.display()))
    })?;
    if h.marked_corrupt {
        return Err(StoreError::InvalidInput(format!(
            "cannot read {} as qcow2: qemu marked the image corrupt; repair it with \
             `qemu-img check -r all` first",
            src.display()
        )));
    }
    Ok(h)
}

/// How qemu-img is told to open an import's source: a `json:` description naming the format
/// driver and the plain file driver, so qemu-img neither probes the format nor reads the
/// file name as a protocol (`json:…`, `nbd://…`); with `no_backing`, `"backing": null`
/// keeps it from opening a backing file even if our header check missed one.
struct QemuSource {
    spec: String,
    format: &'static str,
}

impl QemuSource {
    fn new(src: &Path, format: &'static str, no_backing: bool) -> QemuSource {
        let abs = std::path::absolute(src).unwrap_or_else(|_| src.to_path_buf());
        let mut v = serde_json::json!({
            "driver": format,
            "file": { "driver": "file", "filename": abs.to_string_lossy() },
        });
        if no_backing && format == "qcow2" {
            v["backing"] = serde_json::Value::Null;
        }
        QemuSource {
            spec: format!("json:{v}"),
            format,
        }
    }
}

fn run_qemu_img(args: &[&str], src: &Path, format: &str) -> Result<std::process::Output> {
    Command::new("qemu-img").args(args).output().map_err(|e| {
        StoreError::Failed(format!(
            "cannot run qemu-img to read the {format} image {}: {e} (install qemu-utils)",
            src.display()
        ))
    })
}

/// The first lines of qemu-img's complaint, without its prefix (a damaged image can make it
/// print thousands).
fn qemu_message(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.trim().trim_start_matches("qemu-img: "))
        .filter(|l| !l.is_empty())
        .collect();
    let mut msg = lines.iter().take(2).copied().collect::<Vec<_>>().join("; ");
    if lines.len() > 2 {
        msg.push_str(&format!(" (and {} more lines)", lines.len() - 2));
    }
    msg
}

/// `qemu-img check`: a truncated or damaged image is refused with the reason. Leaked
/// clusters (exit status 3) are harmless for reading and accepted.
fn qemu_check(spec: &QemuSource, src: &Path) -> Result<()> {
    let out = run_qemu_img(&["check", "--output=json", &spec.spec], src, spec.format)?;
    let code = out.status.code();
    if code == Some(0) || code == Some(3) {
        return Ok(());
    }
    let report: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    let count = |k: &str| {
        report
            .as_ref()
            .and_then(|r| r.get(k))
            .and_then(|v| v.as_u64())
    };
    let len = std::fs::metadata(src).map(|m| m.len()).unwrap_or(0);
    let mut why = match (count("corruptions"), count("check-errors")) {
        (Some(c), _) if c > 0 => format!("{c} corruption(s) found by `qemu-img check`"),
        (_, Some(e)) if e > 0 => format!("`qemu-img check` could not finish ({e} error(s))"),
        _ if code == Some(2) => "`qemu-img check` found it corrupt".to_string(),
        _ => match code {
            Some(c) => format!("`qemu-img check` failed (exit status {c})"),
            None => "`qemu-img check` was killed".to_string(),
        },
    };
    if let Some(end) = count("image-end-offset").filter(|&e| e > len) {
        why.push_str(&format!(
            "; the image refers to data up to byte {end} but the file has {len} bytes: truncated?"
        ));
    }
    let detail = qemu_message(&out.stderr);
    if !detail.is_empty() {
        why.push_str(&format!(": {detail}"));
    }
    Err(StoreError::InvalidInput(format!(
        "cannot read {} as {}: {why}",
        src.display(),
        spec.format
    )))
}

/// Converts the source to a sparse raw file at `dest` with qemu-img. Any read error fails
/// the conversion (qemu-img exits non-zero) and the caller's stage is removed.
fn convert_to_raw(spec: &QemuSource, src: &Path, dest: &Path) -> Result<()> {
    let dest_s = dest.to_string_lossy();
    let out = run_qemu_img(
        &["convert", "-q", "-O", "raw", &spec.spec, &dest_s],
        src,
        spec.format,
    )?;
    if !out.status.success() {
        return Err(StoreError::InvalidInput(format!(
            "cannot read {} as {}: {}",
            src.display(),
            spec.format,
            qemu_message(&out.stderr)
        )));
    }
    Ok(())
}

/// Checks that a raw source looks like a disk: non-empty, whole 512-byte sectors.
pub fn raw_size(path: &Path) -> Result<u64> {
    let f = open_source(path)?;
    let meta = f
        .metadata()
        .map_err(|e| StoreError::io("reading", path, e))?;
    let len = if meta.file_type().is_file() {
        meta.len()
    } else {
        device_size(&f).map_err(|e| StoreError::io("reading size of", path, e))?
    };
    check_raw_len(len, &path.display().to_string())?;
    Ok(len)
}

/// Refuses a raw disk of `len` bytes that is empty or not whole 512-byte sectors; `what`
/// names it.
fn check_raw_len(len: u64, what: &str) -> Result<()> {
    if len == 0 {
        return Err(StoreError::InvalidInput(format!(
            "{what} is empty: not a disk image"
        )));
    }
    if len % 512 != 0 {
        return Err(StoreError::InvalidInput(format!(
            "{what} is {len} bytes, not a whole number of 512-byte sectors: truncated, or not a raw disk image"
        )));
    }
    Ok(())
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
    let f = open_source(src)?;
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

/// Copies a raw disk read from `input` to its end into `w`, growing it as bytes arrive, and
/// skipping zero chunks; returns the disk's length (whole sectors, as a raw file's must
/// be). `source` names the input in errors;
/// `progress(bytes so far)` after each MiB. Refuses a stream that grows past
/// `MAX_DISK_SIZE` as soon as it does.
pub fn copy_stream_into(
    input: &mut dyn Read,
    source: &str,
    w: &mut ImageWriter,
    chunk: usize,
    progress: &dyn Fn(u64),
) -> Result<u64> {
    const READ: usize = 1 << 20;
    let mut buf = vec![0u8; READ.max(chunk)];
    let mut pos = 0u64;
    loop {
        // Whole buffers, so that chunks stay aligned whatever sizes the input reads in.
        let mut n = 0;
        while n < buf.len() {
            match input.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io("reading", source, e)),
            }
        }
        if n == 0 {
            check_raw_len(pos, source)?;
            return Ok(pos);
        }
        check_disk_size(pos + n as u64, source)?;
        w.grow_to(pos + n as u64);
        let cs = chunk as u64;
        for (i, c) in buf[..n].chunks(chunk).enumerate() {
            w.put(pos / cs + i as u64, c)?;
        }
        pos += n as u64;
        progress(pos);
        if n < buf.len() {
            check_raw_len(pos, source)?;
            return Ok(pos);
        }
    }
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

    /// A qcow2 v3 header (104 bytes) with optional backing name and header extensions.
    fn qcow2(size: u64, backing: Option<&str>, incompat: u64, exts: &[(u32, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; 104];
        b[0..4].copy_from_slice(b"QFI\xfb");
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        b[20..24].copy_from_slice(&16u32.to_be_bytes());
        b[24..32].copy_from_slice(&size.to_be_bytes());
        b[72..80].copy_from_slice(&incompat.to_be_bytes());
        b[100..104].copy_from_slice(&104u32.to_be_bytes());
        for (ty, data) in exts {
            b.extend_from_slice(&ty.to_be_bytes());
            b.extend_from_slice(&(data.len() as u32).to_be_bytes());
            b.extend_from_slice(data);
            b.resize(b.len().div_ceil(8) * 8, 0);
        }
        b.extend_from_slice(&[0; 8]);
        if let Some(name) = backing {
            let off = b.len() as u64;
            b[8..16].copy_from_slice(&off.to_be_bytes());
            b[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            b.extend_from_slice(name.as_bytes());
        }
        b
    }

    #[test]
    fn qcow2_header_names_backing_and_data_files() {
        let h = parse_qcow2_header(&qcow2(1 << 30, None, 0, &[])).unwrap();
        assert_eq!(h.size, 1 << 30);
        assert_eq!((h.backing_file, h.external_data_file), (None, None));
        let h = parse_qcow2_header(&qcow2(
            1 << 20,
            Some("json:{\"driver\":\"file\",\"filename\":\"/etc/shadow\"}"),
            0,
            &[(QCOW2_EXT_BACKING_FORMAT, b"raw")],
        ))
        .unwrap();
        assert!(h.backing_file.as_deref().unwrap().contains("/etc/shadow"));
        assert_eq!(h.backing_format.as_deref(), Some("raw"));
        let h = parse_qcow2_header(&qcow2(
            1 << 20,
            None,
            QCOW2_INCOMPAT_DATA_FILE,
            &[(QCOW2_EXT_DATA_FILE, b"/dev/sda")],
        ))
        .unwrap();
        assert_eq!(h.external_data_file.as_deref(), Some("/dev/sda"));
        // The bit alone is enough (qemu then needs a data file from the command line).
        let h = parse_qcow2_header(&qcow2(1 << 20, None, QCOW2_INCOMPAT_DATA_FILE, &[])).unwrap();
        assert!(h.external_data_file.is_some());
        let h = parse_qcow2_header(&qcow2(1 << 20, None, QCOW2_INCOMPAT_CORRUPT, &[])).unwrap();
        assert!(h.marked_corrupt);
    }

    #[test]
    fn qcow2_header_garbage_is_an_error_not_a_panic() {
        assert!(parse_qcow2_header(b"").is_err());
        assert!(parse_qcow2_header(b"QFI\xfb\0\0\0\x03").is_err());
        let mut b = qcow2(1 << 20, Some("x"), 0, &[]);
        b[8..16].copy_from_slice(&u64::MAX.to_be_bytes());
        let h = parse_qcow2_header(&b).unwrap();
        assert!(
            h.backing_file.is_some(),
            "an unreadable name is still a backing file"
        );
        let mut b = qcow2(1 << 20, None, 0, &[(0x1234, &[0xff; 3])]);
        b[104 + 4..104 + 8].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_qcow2_header(&b).is_ok());
        let mut b = qcow2(1 << 20, None, 0, &[]);
        b[4..8].copy_from_slice(&9u32.to_be_bytes());
        assert!(parse_qcow2_header(&b).is_err());
    }

    #[test]
    fn only_regular_files_and_block_devices_are_opened() {
        let t = tempfile::tempdir().unwrap();
        let fifo = t.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a path in our temporary directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_source(&fifo).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        assert!(open_source(t.path())
            .unwrap_err()
            .to_string()
            .contains("directory"));
        assert!(open_source(Path::new("/dev/null"))
            .unwrap_err()
            .to_string()
            .contains("character device"));
        let f = t.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        assert!(open_source(&f).is_ok());
    }

    #[test]
    fn disk_sizes_are_capped_with_the_cap_in_the_message() {
        assert!(check_disk_size(MAX_DISK_SIZE, "v").is_ok());
        let e = check_disk_size(1 << 63, "v").unwrap_err().to_string();
        assert!(
            e.contains("16 TiB - 1 MiB") && e.contains(&MAX_DISK_SIZE.to_string()),
            "{e}"
        );
        // Below every layer's limit: the delta's 2^32 - 2 blocks of 4 KiB.
        const { assert!(MAX_DISK_SIZE <= ((1u64 << 32) - 2) * 4096) };
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
