//! HPE artifact bundles: reading one (a zip, or a folder of the same files), verifying its
//! checksums, parsing its manifest and artifacts, importing its golden-image payload into
//! the store, and writing a bundle in the same layout.
//!
//! Layout (flat): `<id>_planscript.json`, `<id>_buildplan.json`, `<id>_deploymentplan.json`,
//! `<id>_goldenimage.json`, for each golden image optionally its payload (a file named after
//! the image's `name`, itself a zip holding one raw disk), `MANIFEST.MF` (`Key:Value` lines,
//! the last one without a newline) and `SHA256SUM.sha256sum` (older bundles:
//! `SHA1SUM.sha1sum`), `<file>\t<hex>` per line.
//!
//! A bundle is untrusted input (the REST API will take uploads). So: an entry name is only
//! ever compared, never joined into a filesystem path unchecked (a flat name: no `/`, `\`,
//! `..`, NUL or control characters; in a folder, files are opened without following
//! symlinks); every listed file must be present and match, and every file strata uses must be
//! listed; duplicate zip entries (which the zip crate would silently collapse) are refused;
//! JSON artifacts are bounded in size; every entry is read through a counter that refuses
//! more bytes than its header declares (a zip bomb), and the payload and its disk are
//! streamed, never held in memory. Checksums of everything are checked at `open`; the payload's
//! again when it is imported (a folder may change in between).
//!
//! Artifact format and validation are `artifacts.rs`; this file only does the I/O.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use sha2::Digest;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipArchive, ZipWriter};

use super::artifacts::{Artifact, ArtifactError, ArtifactKind, ArtifactSet, GoldenImage};
use crate::store::transfer::{check_disk_size, Progress, MAX_DISK_SIZE};
use crate::store::{ImageMeta, Repository, SourceFormat, StoreError};

pub const MANIFEST: &str = "MANIFEST.MF";
pub const SHA256SUM: &str = "SHA256SUM.sha256sum";
pub const SHA1SUM: &str = "SHA1SUM.sha1sum";

/// Largest JSON artifact, manifest or checksum file read. HPE's largest is 7 KB; a plan
/// script holding a whole embedded archive might reach a few MB.
pub const MAX_JSON_BYTES: u64 = 16 << 20;
/// Largest total of the small files read into memory.
pub const MAX_SMALL_TOTAL: u64 = 256 << 20;
/// Most files in a bundle. HPE's have 8 to 18.
pub const MAX_ENTRIES: usize = 4096;
/// Largest payload (a zip of a disk; random data compresses to slightly more than itself).
pub const MAX_PAYLOAD_BYTES: u64 = MAX_DISK_SIZE + (1 << 30);
/// Longest entry name (bytes).
const MAX_NAME_LEN: usize = 255;

const READ_BUF: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a readable zip archive: {detail}")]
    NotZip { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Unsupported { path: PathBuf, detail: String },
    #[error("bundle entry {name:?} refused: {reason}; a bundle holds plain file names only")]
    UnsafeName { name: String, reason: String },
    #[error("bundle entry {name:?} appears more than once; a bundle must hold each file once")]
    Duplicate { name: String },
    #[error("{name}: {size} bytes is more than the {limit} bytes allowed for this kind of file")]
    TooLarge { name: String, size: u64, limit: u64 },
    #[error("{path} holds more than {MAX_ENTRIES} files: not an HPE artifact bundle")]
    TooManyEntries { path: PathBuf },
    #[error("{name}: {detail}")]
    SizeMismatch { name: String, detail: String },
    #[error("{name}: damaged in the zip (its CRC does not match): {detail}")]
    Damaged { name: String, detail: String },
    #[error(
        "{path} has no {SHA256SUM} or {SHA1SUM}: not an HPE artifact bundle, or an incomplete one"
    )]
    NoChecksums { path: PathBuf },
    #[error("{file} line {line}: {detail}")]
    ChecksumSyntax {
        file: String,
        line: usize,
        detail: String,
    },
    #[error("{name} is listed in {listed_in} but missing from the bundle")]
    Missing { name: String, listed_in: String },
    #[error("{name}: {algorithm} checksum mismatch: {listed_in} expects {expected}, the file has {actual}; the bundle is damaged or was altered")]
    Mismatch {
        name: String,
        algorithm: &'static str,
        listed_in: String,
        expected: String,
        actual: String,
    },
    #[error("{name} is not listed in {sum_file}, so it cannot be verified; refused")]
    Unlisted { name: String, sum_file: String },
    #[error("{path} has no {MANIFEST}: not an HPE artifact bundle, or an incomplete one")]
    NoManifest { path: PathBuf },
    #[error("{MANIFEST} line {line}: {detail}")]
    Manifest { line: usize, detail: String },
    #[error("{file}: not a valid {what}: {detail}")]
    Json {
        file: String,
        what: &'static str,
        detail: String,
    },
    #[error("{file}: its \"type\" is {found:?}, but its name says {expected:?}")]
    WrongType {
        file: String,
        expected: &'static str,
        found: String,
    },
    #[error(transparent)]
    Artifacts(#[from] ArtifactError),
    #[error("the bundle has no golden image {name:?}")]
    NoGoldenImage { name: String },
    #[error("the bundle holds no payload for golden image {name:?} (a file of that name)")]
    NoPayload { name: String },
    #[error("payload of golden image {name:?}: {detail}")]
    Payload { name: String, detail: String },
    #[error(
        "the store already has an image named {name:?}; reuse it, or import under another name"
    )]
    ImageExists { name: String },
    #[error("cannot write the bundle: {0}")]
    Write(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub type Result<T, E = BundleError> = std::result::Result<T, E>;

fn io_err(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> BundleError {
    let path = path.into();
    move |source| BundleError::Io {
        action,
        path,
        source,
    }
}

/// Checks that a name from a bundle (an entry name, a line of the checksum file, a golden
/// image's name) is a plain file name: it is never used as a path otherwise.
pub fn check_entry_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(BundleError::UnsafeName {
            name: name.into(),
            reason: reason.into(),
        })
    };
    if name.is_empty() {
        return bad("an empty name");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 255 bytes");
    }
    if name.starts_with('/') {
        return bad("an absolute path");
    }
    if name.contains('/') || name.contains('\\') {
        return bad("a path with folders (or a backslash)");
    }
    if name == "." || name == ".." {
        return bad("a reference to a folder");
    }
    if name.chars().any(char::is_control) {
        return bad("control characters");
    }
    Ok(())
}

/// The checksum algorithms HPE's bundles use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha1,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha1 => "SHA-1",
        }
    }
    fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha1 => 40,
        }
    }
    pub fn file_name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => SHA256SUM,
            Algorithm::Sha1 => SHA1SUM,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A file's digests, hex: one per algorithm it is listed under.
type Digests = Vec<(Algorithm, String)>;

/// Hashes with whichever algorithms a file is listed under.
#[derive(Default)]
struct Hashers {
    sha256: Option<sha2::Sha256>,
    sha1: Option<sha1::Sha1>,
}

impl Hashers {
    fn new(algs: &[Algorithm]) -> Self {
        Hashers {
            sha256: algs.contains(&Algorithm::Sha256).then(sha2::Sha256::new),
            sha1: algs.contains(&Algorithm::Sha1).then(sha1::Sha1::new),
        }
    }
    fn update(&mut self, b: &[u8]) {
        if let Some(h) = &mut self.sha256 {
            h.update(b);
        }
        if let Some(h) = &mut self.sha1 {
            h.update(b);
        }
    }
    fn finish(self) -> Digests {
        let mut out = Vec::new();
        if let Some(h) = self.sha256 {
            out.push((Algorithm::Sha256, hex(&h.finalize())));
        }
        if let Some(h) = self.sha1 {
            out.push((Algorithm::Sha1, hex(&h.finalize())));
        }
        out
    }
}

/// Parses a checksum file: `<file>\t<hex>` per line (a CR before the newline and a missing
/// last newline are accepted; blank lines skipped).
pub fn parse_checksums(text: &str, algorithm: Algorithm) -> Result<Vec<(String, String)>> {
    let file = algorithm.file_name();
    let mut out: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let syntax = |detail: String| BundleError::ChecksumSyntax {
            file: file.into(),
            line: i + 1,
            detail,
        };
        let (name, sum) = line
            .split_once('\t')
            .ok_or_else(|| syntax("expected `<file><TAB><hex checksum>`".into()))?;
        let sum = sum.trim().to_ascii_lowercase();
        if sum.len() != algorithm.hex_len() || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(syntax(format!(
                "{sum:?} is not a {} checksum ({} hex digits)",
                algorithm.name(),
                algorithm.hex_len()
            )));
        }
        check_entry_name(name)?;
        if !seen.insert(name.to_string()) {
            return Err(syntax(format!("{name:?} is listed twice")));
        }
        out.push((name.to_string(), sum));
    }
    Ok(out)
}

/// MANIFEST.MF: `Key:Value` lines, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub entries: Vec<(String, String)>,
}

impl Manifest {
    /// Parses `Key:Value` lines (split at the first `:`; the value is kept as written).
    pub fn parse(text: &str) -> Result<Manifest> {
        let mut m = Manifest::default();
        for (i, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            let err = |detail: String| BundleError::Manifest {
                line: i + 1,
                detail,
            };
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| err(format!("{line:?} is not `Key:Value`")))?;
            let k = k.trim();
            if k.is_empty() {
                return Err(err("an empty key".into()));
            }
            if m.get(k).is_some() {
                return Err(err(format!("key {k:?} appears twice")));
            }
            m.entries.push((k.to_string(), v.to_string()));
        }
        Ok(m)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Sets `key` (replacing its value in place, or appending it).
    pub fn set(&mut self, key: &str, value: &str) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value.to_string(),
            None => self.entries.push((key.to_string(), value.to_string())),
        }
    }

    /// `Artifact Name`.
    pub fn artifact_name(&self) -> Option<&str> {
        self.get("Artifact Name")
    }

    /// The text as HPE writes it: lines joined by `\n`, no newline after the last.
    pub fn to_text(&self) -> Result<String> {
        let mut lines = Vec::new();
        for (k, v) in &self.entries {
            if k.is_empty() || k.contains([':', '\n', '\r']) || v.contains(['\n', '\r']) {
                return Err(BundleError::Write(format!(
                    "manifest entry {k:?}:{v:?} cannot be written as a `Key:Value` line"
                )));
            }
            lines.push(format!("{k}:{v}"));
        }
        Ok(lines.join("\n"))
    }
}

/// One file of the bundle.
#[derive(Debug, Clone)]
struct Entry {
    name: String,
    /// Bytes, as the zip's central directory declares them (or the folder's file size).
    size: u64,
    /// Index in the zip (unused for a folder).
    index: usize,
}

enum Source {
    Zip {
        path: PathBuf,
        archive: Mutex<ZipArchive<File>>,
    },
    Dir {
        path: PathBuf,
    },
}

/// Opens `dir/name` without following a symlink, and only if it is a regular file.
fn open_in_dir(dir: &Path, name: &str) -> Result<File> {
    check_entry_name(name)?;
    let p = dir.join(name);
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&p)
        .map_err(io_err("opening", &p))?;
    let meta = f.metadata().map_err(io_err("reading", &p))?;
    if !meta.is_file() {
        return Err(BundleError::Unsupported {
            path: p,
            detail: "not a regular file: a bundle folder holds plain files only".into(),
        });
    }
    Ok(f)
}

/// Reads at most `declared` bytes from `r` into `sink`, refusing a stream that holds more
/// (a zip bomb, or a file that grew) or less (truncated) than declared.
fn read_bounded(
    name: &str,
    r: &mut dyn Read,
    declared: u64,
    from_zip: bool,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<u64> {
    let mut buf = vec![0u8; READ_BUF];
    let mut done: u64 = 0;
    let map_read = |e: io::Error| {
        // A CRC mismatch is InvalidData; a corrupt deflate stream InvalidInput.
        if from_zip
            && matches!(
                e.kind(),
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput
            )
        {
            BundleError::Damaged {
                name: name.into(),
                detail: e.to_string(),
            }
        } else {
            BundleError::Io {
                action: "reading",
                path: PathBuf::from(name),
                source: e,
            }
        }
    };
    loop {
        // One byte past the declared end tells "more than declared" from "exactly".
        let want = (declared - done).saturating_add(1).min(READ_BUF as u64) as usize;
        let n = match r.read(&mut buf[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(map_read(e)),
        };
        if n == 0 {
            break;
        }
        if done + n as u64 > declared {
            return Err(BundleError::SizeMismatch {
                name: name.into(),
                detail: if from_zip {
                    format!(
                        "unpacks to more than the {declared} bytes its zip header declares; \
                         refused (a zip bomb, or a damaged zip)"
                    )
                } else {
                    format!("grew past {declared} bytes while it was read")
                },
            });
        }
        sink(&buf[..n])?;
        done += n as u64;
    }
    if done != declared {
        return Err(BundleError::SizeMismatch {
            name: name.into(),
            detail: format!("holds {done} bytes, not the {declared} declared: truncated"),
        });
    }
    Ok(done)
}

/// Raw names in a zip's central directory, duplicates included (the zip crate keeps only
/// the last of a duplicated name). Stops at the first non-header.
fn central_names(mut f: File, start: u64) -> io::Result<Vec<Vec<u8>>> {
    f.seek(SeekFrom::Start(start))?;
    let mut r = BufReader::new(f);
    let mut names = Vec::new();
    let mut h = [0u8; 46];
    while names.len() <= MAX_ENTRIES {
        if r.read_exact(&mut h).is_err() || h[..4] != [0x50, 0x4b, 0x01, 0x02] {
            break;
        }
        let u16at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]) as usize;
        let (n, extra, comment) = (u16at(28), u16at(30), u16at(32));
        let mut name = vec![0u8; n];
        r.read_exact(&mut name)?;
        r.seek_relative((extra + comment) as i64)?;
        names.push(name);
    }
    Ok(names)
}

/// Opens a zip, refusing duplicate entry names and more than `MAX_ENTRIES` entries.
fn open_zip(path: &Path, f: File) -> Result<ZipArchive<File>> {
    let clone = f.try_clone().map_err(io_err("opening", path))?;
    let archive = ZipArchive::new(f).map_err(|e| BundleError::NotZip {
        path: path.into(),
        detail: e.to_string(),
    })?;
    if archive.len() > MAX_ENTRIES {
        return Err(BundleError::TooManyEntries { path: path.into() });
    }
    let raw = central_names(clone, archive.central_directory_start())
        .map_err(io_err("reading the zip directory of", path))?;
    if raw.len() > MAX_ENTRIES {
        return Err(BundleError::TooManyEntries { path: path.into() });
    }
    let mut seen = HashSet::new();
    for n in &raw {
        if !seen.insert(n.as_slice()) {
            return Err(BundleError::Duplicate {
                name: String::from_utf8_lossy(n).into_owned(),
            });
        }
    }
    Ok(archive)
}

/// The zip entries of an archive (refusing directories, links, encryption, bad names).
fn zip_entries(path: &Path, archive: &mut ZipArchive<File>) -> Result<Vec<Entry>> {
    let mut out = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let f = archive.by_index_raw(i).map_err(|e| BundleError::NotZip {
            path: path.into(),
            detail: e.to_string(),
        })?;
        let name = std::str::from_utf8(f.name_raw())
            .map_err(|_| BundleError::UnsafeName {
                name: String::from_utf8_lossy(f.name_raw()).into_owned(),
                reason: "not UTF-8".into(),
            })?
            .to_string();
        check_entry_name(&name)?;
        if f.is_symlink() {
            return Err(BundleError::UnsafeName {
                name,
                reason: "a symbolic link".into(),
            });
        }
        if f.encrypted() {
            return Err(BundleError::Unsupported {
                path: path.into(),
                detail: format!("entry {name:?} is encrypted; bundles are not"),
            });
        }
        out.push(Entry {
            name,
            size: f.size(),
            index: i,
        });
    }
    Ok(out)
}

/// Names a staging directory the way the repository does (`<pid>-<seq>-<what>` in its
/// `tmp/`), so a crash's leftovers are cleaned by the next `Repository::open`.
static STAGE_SEQ: AtomicU64 = AtomicU64::new(0);

struct StageDir(PathBuf);

impl StageDir {
    fn new(repo: &Repository) -> Result<StageDir> {
        let p = repo.root().join("tmp").join(format!(
            "{}-{}-bundle",
            std::process::id(),
            STAGE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&p).map_err(io_err("creating", &p))?;
        Ok(StageDir(p))
    }
}

impl Drop for StageDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Writes `data` at `pos` of `f`, leaving all-zero 64 KiB blocks as holes (a golden image
/// is mostly empty; the store skips holes on import).
fn write_sparse(f: &File, path: &Path, pos: u64, data: &[u8]) -> Result<()> {
    const BLOCK: usize = 64 << 10;
    for (i, b) in data.chunks(BLOCK).enumerate() {
        if b.iter().any(|&x| x != 0) {
            f.write_all_at(b, pos + (i * BLOCK) as u64)
                .map_err(io_err("writing", path))?;
        }
    }
    Ok(())
}

/// Where a bundle's payload comes from when a bundle is written.
pub enum PayloadSource<'a> {
    /// A file in HPE's payload form already (a zip holding one raw disk).
    File(PathBuf),
    /// The payload of the same golden image in an opened bundle, copied as it is.
    Bundle(&'a Bundle),
    /// A raw disk image, zipped into HPE's payload form on the way.
    RawDisk(PathBuf),
}

/// A golden image's payload to put in a written bundle.
pub struct Payload<'a> {
    /// The golden image's `name` (the payload's file name in the bundle).
    pub golden_image: String,
    pub source: PayloadSource<'a>,
}

/// Counts and hashes what goes through it into a zip entry.
struct HashingWriter<'w, W: Write> {
    inner: &'w mut W,
    hash: sha2::Sha256,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hash.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An opened, verified and validated bundle.
pub struct Bundle {
    source: Source,
    entries: Vec<Entry>,
    /// Where each listed file's checksums came from: (algorithm, hex).
    sums: HashMap<String, Vec<(Algorithm, String)>>,
    manifest: Manifest,
    artifacts: ArtifactSet,
    /// Golden image name → index into `entries` of its payload.
    payloads: HashMap<String, usize>,
    checksum_files: Vec<Algorithm>,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("path", &self.path())
            .field("manifest", &self.manifest)
            .field("warnings", &self.warnings)
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// Opens the bundle at `path` (a zip file, or a folder of the same files), verifies every
    /// checksum, parses the manifest and artifacts and validates them (all problems at once:
    /// `BundleError::Artifacts(ArtifactError::Invalid(report))`). Doubts that do not refuse
    /// the bundle are in `warnings()`.
    pub fn open(path: impl AsRef<Path>) -> Result<Bundle> {
        let path = path.as_ref();
        let meta = fs::metadata(path).map_err(io_err("opening", path))?;
        let (source, entries) = if meta.is_dir() {
            let mut entries = Vec::new();
            for e in fs::read_dir(path).map_err(io_err("listing", path))? {
                let e = e.map_err(io_err("listing", path))?;
                let name = e
                    .file_name()
                    .into_string()
                    .map_err(|n| BundleError::UnsafeName {
                        name: n.to_string_lossy().into_owned(),
                        reason: "not UTF-8".into(),
                    })?;
                check_entry_name(&name)?;
                let m = fs::symlink_metadata(e.path()).map_err(io_err("reading", e.path()))?;
                if !m.is_file() {
                    return Err(BundleError::Unsupported {
                        path: e.path(),
                        detail: "not a regular file (a folder, a link, a device): a bundle folder holds plain files only".into(),
                    });
                }
                entries.push(Entry {
                    name,
                    size: m.len(),
                    index: 0,
                });
                if entries.len() > MAX_ENTRIES {
                    return Err(BundleError::TooManyEntries { path: path.into() });
                }
            }
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            (Source::Dir { path: path.into() }, entries)
        } else if meta.is_file() {
            let f = File::open(path).map_err(io_err("opening", path))?;
            let mut archive = open_zip(path, f)?;
            let mut entries = zip_entries(path, &mut archive)?;
            // Artifacts load in file-name order whatever the zip's order, so a zip and its
            // unpacked folder give equal sets.
            entries.sort_by(|a, b| a.name.cmp(&b.name));
            (
                Source::Zip {
                    path: path.into(),
                    archive: Mutex::new(archive),
                },
                entries,
            )
        } else {
            return Err(BundleError::Unsupported {
                path: path.into(),
                detail: "neither a zip file nor a folder".into(),
            });
        };

        let mut b = Bundle {
            source,
            entries,
            sums: HashMap::new(),
            manifest: Manifest::default(),
            artifacts: ArtifactSet::default(),
            payloads: HashMap::new(),
            checksum_files: Vec::new(),
            warnings: Vec::new(),
        };
        b.load()?;
        Ok(b)
    }

    fn load(&mut self) -> Result<()> {
        let by_name: HashMap<String, usize> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();

        // Checksum files first: everything else is verified against them.
        let mut small_total: u64 = 0;
        for alg in [Algorithm::Sha256, Algorithm::Sha1] {
            let Some(&i) = by_name.get(alg.file_name()) else {
                continue;
            };
            let bytes = self.read_small(i, &[], &mut small_total)?.0;
            let text = String::from_utf8(bytes).map_err(|_| BundleError::ChecksumSyntax {
                file: alg.file_name().into(),
                line: 0,
                detail: "not UTF-8 text".into(),
            })?;
            for (name, sum) in parse_checksums(&text, alg)? {
                // Some old bundles list the checksum file itself, which cannot match.
                if name == SHA256SUM || name == SHA1SUM {
                    continue;
                }
                if !by_name.contains_key(&name) {
                    return Err(BundleError::Missing {
                        name,
                        listed_in: alg.file_name().into(),
                    });
                }
                self.sums.entry(name).or_default().push((alg, sum));
            }
            self.checksum_files.push(alg);
        }
        // A zip must carry its checksums. A folder without any is a set of artifacts being
        // written by hand (a plan under development, the demo's): read as it is, with a
        // warning that nothing was verified.
        let verify = !self.checksum_files.is_empty();
        if !verify {
            if !matches!(self.source, Source::Dir { .. }) {
                return Err(BundleError::NoChecksums {
                    path: self.path().into(),
                });
            }
            self.warnings.push(format!(
                "{} has no {SHA256SUM} or {SHA1SUM}: its files were not verified",
                self.path().display()
            ));
        }
        let sum_files = self
            .checksum_files
            .iter()
            .map(|a| a.file_name())
            .collect::<Vec<_>>()
            .join(" and ");
        let unlisted = |name: &str| BundleError::Unlisted {
            name: name.into(),
            sum_file: sum_files.clone(),
        };

        // The manifest and the artifacts: read, verify, parse.
        match by_name.get(MANIFEST) {
            None if !verify => {}
            None => {
                return Err(BundleError::NoManifest {
                    path: self.path().into(),
                })
            }
            Some(&mi) => {
                if verify && !self.sums.contains_key(MANIFEST) {
                    return Err(unlisted(MANIFEST));
                }
                let bytes = self.read_verified_small(mi, &mut small_total)?;
                let text = String::from_utf8(bytes).map_err(|_| BundleError::Manifest {
                    line: 0,
                    detail: "not UTF-8 text".into(),
                })?;
                self.manifest = Manifest::parse(&text)?;
            }
        }

        let mut others = Vec::new();
        for i in 0..self.entries.len() {
            let name = self.entries[i].name.clone();
            if name == MANIFEST || name == SHA256SUM || name == SHA1SUM {
                continue;
            }
            let Some(kind) = ArtifactKind::of_file_name(&name) else {
                others.push(i);
                continue;
            };
            if verify && !self.sums.contains_key(&name) {
                return Err(unlisted(&name));
            }
            let bytes = self.read_verified_small(i, &mut small_total)?;
            self.parse_artifact(kind, &name, &bytes)?;
        }

        // Payloads: the other files named after a golden image. Everything else is ignored.
        let gi_names: HashSet<String> = self
            .artifacts
            .golden_images
            .iter()
            .map(|g| g.name.clone())
            .collect();
        for i in others {
            let name = self.entries[i].name.clone();
            if gi_names.contains(&name) {
                if verify && !self.sums.contains_key(&name) {
                    return Err(unlisted(&name));
                }
                let size = self.entries[i].size;
                if size > MAX_PAYLOAD_BYTES {
                    return Err(BundleError::TooLarge {
                        name,
                        size,
                        limit: MAX_PAYLOAD_BYTES,
                    });
                }
                self.verify_streamed(i)?;
                self.payloads.insert(name, i);
            } else {
                let size = self.entries[i].size;
                if size > MAX_PAYLOAD_BYTES {
                    return Err(BundleError::TooLarge {
                        name,
                        size,
                        limit: MAX_PAYLOAD_BYTES,
                    });
                }
                if self.sums.contains_key(&name) {
                    self.verify_streamed(i)?;
                }
                self.warnings.push(format!(
                    "{name}: not an artifact nor a golden image's payload; ignored"
                ));
            }
        }
        for g in &self.artifacts.golden_images {
            if !self.payloads.contains_key(&g.name) {
                self.warnings.push(format!(
                    "golden image {:?} has no payload in the bundle (no file of that name); \
                     the store must already have it",
                    g.name
                ));
            }
        }

        let report = self.artifacts.check()?;
        self.warnings
            .extend(report.warnings.iter().map(ToString::to_string));
        Ok(())
    }

    fn parse_artifact(&mut self, kind: ArtifactKind, file: &str, bytes: &[u8]) -> Result<()> {
        let a = Artifact::from_json(bytes, Some(kind)).map_err(|e| match e {
            ArtifactError::WrongType {
                expected, found, ..
            } => BundleError::WrongType {
                file: file.into(),
                expected,
                found,
            },
            e => BundleError::Json {
                file: file.into(),
                what: kind.what(),
                detail: match e {
                    ArtifactError::Parse { detail, .. } => detail,
                    e => e.to_string(),
                },
            },
        })?;
        let id = a.id().to_string();
        self.artifacts.insert(a);
        if file.strip_suffix(kind.file_suffix()) != Some(id.as_str()) {
            self.warnings.push(format!(
                "{file}: holds the {} with id {id:?}; HPE names the file {id}{}",
                kind.what(),
                kind.file_suffix()
            ));
        }
        Ok(())
    }

    /// Streams entry `i` into `sink`, bounded by its declared size.
    fn read_entry(&self, i: usize, sink: &mut dyn FnMut(&[u8]) -> Result<()>) -> Result<u64> {
        let e = &self.entries[i];
        match &self.source {
            Source::Zip { path, archive } => {
                let mut a = archive.lock();
                let mut f = a.by_index(e.index).map_err(|err| BundleError::NotZip {
                    path: path.clone(),
                    detail: format!("entry {:?}: {err}", e.name),
                })?;
                read_bounded(&e.name, &mut f, e.size, true, sink)
            }
            Source::Dir { path } => {
                let mut f = open_in_dir(path, &e.name)?;
                read_bounded(&e.name, &mut f, e.size, false, sink)
            }
        }
    }

    /// Reads a small entry into memory (bounded), hashing it with `algs`.
    fn read_small(
        &self,
        i: usize,
        algs: &[Algorithm],
        total: &mut u64,
    ) -> Result<(Vec<u8>, Digests)> {
        let e = &self.entries[i];
        if e.size > MAX_JSON_BYTES {
            return Err(BundleError::TooLarge {
                name: e.name.clone(),
                size: e.size,
                limit: MAX_JSON_BYTES,
            });
        }
        *total += e.size;
        if *total > MAX_SMALL_TOTAL {
            return Err(BundleError::TooLarge {
                name: format!("the JSON files of {}", self.path().display()),
                size: *total,
                limit: MAX_SMALL_TOTAL,
            });
        }
        let mut bytes = Vec::with_capacity(e.size as usize);
        let mut h = Hashers::new(algs);
        self.read_entry(i, &mut |b| {
            h.update(b);
            bytes.extend_from_slice(b);
            Ok(())
        })?;
        Ok((bytes, h.finish()))
    }

    fn expected(&self, name: &str) -> Vec<Algorithm> {
        self.sums
            .get(name)
            .map(|v| v.iter().map(|(a, _)| *a).collect())
            .unwrap_or_default()
    }

    fn compare(&self, name: &str, actual: &[(Algorithm, String)]) -> Result<()> {
        for (alg, want) in self.sums.get(name).into_iter().flatten() {
            let got = actual
                .iter()
                .find(|(a, _)| a == alg)
                .map(|(_, h)| h.as_str())
                .unwrap_or("");
            if got != want {
                return Err(BundleError::Mismatch {
                    name: name.into(),
                    algorithm: alg.name(),
                    listed_in: alg.file_name().into(),
                    expected: want.clone(),
                    actual: got.into(),
                });
            }
        }
        Ok(())
    }

    fn read_verified_small(&self, i: usize, total: &mut u64) -> Result<Vec<u8>> {
        let name = self.entries[i].name.clone();
        let (bytes, actual) = self.read_small(i, &self.expected(&name), total)?;
        self.compare(&name, &actual)?;
        Ok(bytes)
    }

    fn verify_streamed(&self, i: usize) -> Result<()> {
        let name = self.entries[i].name.clone();
        let mut h = Hashers::new(&self.expected(&name));
        self.read_entry(i, &mut |b| {
            h.update(b);
            Ok(())
        })?;
        self.compare(&name, &h.finish())
    }

    /// The zip file or folder this bundle was opened from.
    pub fn path(&self) -> &Path {
        match &self.source {
            Source::Zip { path, .. } | Source::Dir { path } => path,
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn artifacts(&self) -> &ArtifactSet {
        &self.artifacts
    }

    pub fn into_artifacts(self) -> ArtifactSet {
        self.artifacts
    }

    /// What looked doubtful but did not refuse the bundle.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The checksum files that were verified (SHA256SUM, SHA1SUM, or both).
    pub fn checksum_files(&self) -> &[Algorithm] {
        &self.checksum_files
    }

    /// Golden images whose payload the bundle holds, with the payload's size (the zip, not
    /// the disk), sorted by name.
    pub fn payloads(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self
            .payloads
            .iter()
            .map(|(n, &i)| (n.as_str(), self.entries[i].size))
            .collect();
        v.sort();
        v
    }

    pub fn has_payload(&self, golden_image: &str) -> bool {
        self.payload_index(golden_image).is_ok()
    }

    fn payload_index(&self, golden_image: &str) -> Result<(usize, &GoldenImage)> {
        let gi = self.artifacts.golden_image(golden_image).ok_or_else(|| {
            BundleError::NoGoldenImage {
                name: golden_image.into(),
            }
        })?;
        let i = *self
            .payloads
            .get(&gi.name)
            .ok_or_else(|| BundleError::NoPayload {
                name: gi.name.clone(),
            })?;
        Ok((i, gi))
    }

    /// Copies a golden image's payload (HPE's zip holding the raw disk) into `out` as it is,
    /// verifying its checksum on the way. Returns its size. `out` has all the bytes even when
    /// the checksum then fails: discard them on error.
    pub fn copy_payload(&self, golden_image: &str, out: &mut dyn Write) -> Result<u64> {
        let (i, _) = self.payload_index(golden_image)?;
        let name = self.entries[i].name.clone();
        let mut h = Hashers::new(&self.expected(&name));
        let n = self.read_entry(i, &mut |b| {
            h.update(b);
            out.write_all(b).map_err(|e| BundleError::Io {
                action: "copying",
                path: PathBuf::from(&name),
                source: e,
            })
        })?;
        self.compare(&name, &h.finish())?;
        Ok(n)
    }

    /// Imports a golden image's disk into the store as image `store_as` (a store name:
    /// `store_name_for` makes one from HPE's). The payload is checked again, then imported
    /// by [`import_payload`]. If the store already has `store_as`,
    /// `BundleError::ImageExists` says so and nothing is read. `progress(done, total)` covers
    /// both passes (unpacking, then storing): total is twice the disk's size.
    pub fn import_golden_image(
        &self,
        repo: &Repository,
        golden_image: &str,
        store_as: &str,
        progress: Progress,
    ) -> Result<ImageMeta> {
        refuse_existing(repo, store_as)?;
        let (i, gi) = self.payload_index(golden_image)?;
        let gi_name = gi.name.clone();
        let stage = StageDir::new(repo)?;

        // The payload as a seekable file: the folder's own file (verified again first), or
        // the zip entry streamed out and verified on the way.
        let payload_file = match &self.source {
            Source::Dir { path } => {
                // One descriptor, hashed then read: a file swapped in between cannot slip in.
                let e = &self.entries[i];
                let mut f = open_in_dir(path, &e.name)?;
                let mut h = Hashers::new(&self.expected(&e.name));
                read_bounded(&e.name, &mut f, e.size, false, &mut |b| {
                    h.update(b);
                    Ok(())
                })?;
                self.compare(&e.name, &h.finish())?;
                f.seek(SeekFrom::Start(0))
                    .map_err(io_err("reading", path.join(&e.name)))?;
                f
            }
            Source::Zip { .. } => {
                let p = stage.0.join("payload.zip");
                let mut f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .map_err(io_err("creating", &p))?;
                self.copy_payload(&gi_name, &mut f)?;
                f.seek(SeekFrom::Start(0)).map_err(io_err("reading", &p))?;
                f
            }
        };

        import_payload(repo, payload_file, &gi_name, store_as, progress)
    }

    /// Writes a bundle to `dest` (a new .zip) in HPE's layout: the artifacts as
    /// `<id>_<kind>.json`, each payload under its golden image's name, `MANIFEST.MF` and
    /// `SHA256SUM.sha256sum` over all of them. The set must validate; each payload must name
    /// a golden image of the set. Written to `<dest>.partial` and renamed at the end, so a
    /// failure leaves nothing behind.
    pub fn write(
        dest: &Path,
        set: &ArtifactSet,
        manifest: &Manifest,
        payloads: &[Payload<'_>],
    ) -> Result<()> {
        set.check()?;
        if dest.exists() {
            return Err(BundleError::Write(format!(
                "{} already exists; remove it or choose another path",
                dest.display()
            )));
        }
        let mut seen = HashSet::new();
        for p in payloads {
            if set.golden_images.iter().all(|g| g.name != p.golden_image) {
                return Err(BundleError::NoGoldenImage {
                    name: p.golden_image.clone(),
                });
            }
            check_entry_name(&p.golden_image)?;
            if !seen.insert(p.golden_image.as_str()) {
                return Err(BundleError::Duplicate {
                    name: p.golden_image.clone(),
                });
            }
        }
        let manifest_text = manifest.to_text()?;
        let mut partial = dest.as_os_str().to_owned();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let mut tmp_disk = dest.as_os_str().to_owned();
        tmp_disk.push(".partial-disk.zip");
        let tmp_disk = PathBuf::from(tmp_disk);

        let result = write_zip(&partial, &tmp_disk, set, &manifest_text, payloads);
        let _ = fs::remove_file(&tmp_disk);
        match result {
            Ok(()) => fs::rename(&partial, dest).map_err(io_err("renaming", &partial)),
            Err(e) => {
                let _ = fs::remove_file(&partial);
                Err(e)
            }
        }
    }
}

/// `store_as` is a valid store name no image has yet (else `BundleError::ImageExists`).
fn refuse_existing(repo: &Repository, store_as: &str) -> Result<()> {
    crate::store::names::validate(store_as)?;
    match repo.image_meta(store_as) {
        Ok(_) => Err(BundleError::ImageExists {
            name: store_as.into(),
        }),
        Err(StoreError::NotFound { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Imports a golden-image payload — HPE's form, a zip holding one raw disk, open as
/// `payload` — into the store as image `store_as`: the disk is streamed into a sparse file
/// in the repository's staging area and imported with `Repository::import_image` as raw
/// (never whole in memory; the disk's declared size bounds what is unpacked). `label`
/// names the payload in errors. If the store already has `store_as`,
/// `BundleError::ImageExists` says so and nothing is read. `progress(done, total)` covers
/// both passes (unpacking, then storing): total is twice the disk's size. A failure leaves
/// nothing behind.
pub fn import_payload(
    repo: &Repository,
    payload: File,
    label: &str,
    store_as: &str,
    progress: Progress,
) -> Result<ImageMeta> {
    refuse_existing(repo, store_as)?;
    let payload_err = |detail: String| BundleError::Payload {
        name: label.into(),
        detail,
    };
    let stage = StageDir::new(repo)?;
    let payload_file = payload;
    let mut inner = open_zip(Path::new(label), payload_file).map_err(|e| match e {
        BundleError::NotZip { detail, .. } => {
            payload_err(format!("not a zip holding a raw disk: {detail}"))
        }
        other => other,
    })?;
    let mut disks = Vec::new();
    for k in 0..inner.len() {
        let f = inner
            .by_index_raw(k)
            .map_err(|e| payload_err(e.to_string()))?;
        if f.is_dir() {
            continue;
        }
        if f.encrypted() {
            return Err(payload_err("its disk is encrypted".into()));
        }
        disks.push((k, f.name().to_string(), f.size()));
    }
    let [(k, disk_name, len)] = disks.as_slice() else {
        return Err(payload_err(format!(
            "holds {} files; a golden-image payload is a zip holding one raw disk",
            disks.len()
        )));
    };
    let (k, len) = (*k, *len);
    check_disk_size(len, &format!("the disk in the payload of {label:?}"))?;
    if len == 0 || len % 512 != 0 {
        return Err(payload_err(format!(
            "its disk {disk_name:?} is {len} bytes, not a whole number of 512-byte sectors"
        )));
    }

    let raw = stage.0.join("disk.raw");
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&raw)
        .map_err(io_err("creating", &raw))?;
    {
        let mut f = inner.by_index(k).map_err(|e| payload_err(e.to_string()))?;
        let mut pos = 0u64;
        let total = 2 * len;
        let label = format!("{label}/{disk_name}");
        read_bounded(&label, &mut f, len, true, &mut |b| {
            write_sparse(&out, &raw, pos, b)?;
            pos += b.len() as u64;
            progress(pos, total);
            Ok(())
        })?;
    }
    out.set_len(len).map_err(io_err("sizing", &raw))?;
    out.sync_all().map_err(io_err("syncing", &raw))?;
    drop(out);
    drop(inner);
    let store_progress = |d: u64, t: u64| progress(len + d.min(t), 2 * len);
    let meta = repo
        .import_image(store_as, &raw, SourceFormat::Raw, &store_progress)
        .map_err(|e| match e {
            StoreError::Exists { name, .. } => BundleError::ImageExists { name },
            e => e.into(),
        })?;
    Ok(meta)
}

fn zip_write_err(what: &str) -> impl FnOnce(zip::result::ZipError) -> BundleError + '_ {
    move |e| BundleError::Write(format!("{what}: {e}"))
}

/// Adds entry `name` to `zip`, filled by `fill`, and records its SHA-256 in `sums`.
fn put(
    zip: &mut ZipWriter<File>,
    sums: &mut Vec<(String, String)>,
    name: String,
    opts: SimpleFileOptions,
    fill: &mut dyn FnMut(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    check_entry_name(&name)?;
    zip.start_file(name.as_str(), opts)
        .map_err(zip_write_err(&name))?;
    let mut w = HashingWriter {
        inner: zip,
        hash: sha2::Sha256::new(),
    };
    fill(&mut w)?;
    let sum = hex(&w.hash.finalize());
    sums.push((name, sum));
    Ok(())
}

fn write_zip(
    partial: &Path,
    tmp_disk: &Path,
    set: &ArtifactSet,
    manifest_text: &str,
    payloads: &[Payload<'_>],
) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(partial)
        .map_err(io_err("creating", partial))?;
    let mut zip = ZipWriter::new(f);
    let deflate = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    let mut sums: Vec<(String, String)> = Vec::new();

    let write_err = |name: &str| {
        let name = name.to_string();
        move |e: io::Error| BundleError::Write(format!("{name}: {e}"))
    };

    // HPE's order: plan scripts, golden images (each followed by its payload), build plans,
    // deployment plans, the manifest, the checksums.
    for a in set.artifacts() {
        let name = format!("{}{}", a.id(), a.kind().file_suffix());
        let bytes = a.to_json();
        put(&mut zip, &mut sums, name.clone(), deflate, &mut |w| {
            w.write_all(&bytes).map_err(write_err(&name))
        })?;
        let Artifact::GoldenImage(g) = &a else {
            continue;
        };
        if let Some(p) = payloads.iter().find(|p| p.golden_image == g.name) {
            write_payload(&mut zip, &mut sums, tmp_disk, g, p)?;
        }
    }
    put(&mut zip, &mut sums, MANIFEST.into(), deflate, &mut |w| {
        w.write_all(manifest_text.as_bytes())
            .map_err(write_err(MANIFEST))
    })?;
    let mut text = String::new();
    for (n, s) in &sums {
        let _ = writeln!(text, "{n}\t{s}");
    }
    zip.start_file(SHA256SUM, deflate)
        .map_err(zip_write_err(SHA256SUM))?;
    zip.write_all(text.as_bytes())
        .map_err(write_err(SHA256SUM))?;
    let f = zip.finish().map_err(zip_write_err("finishing the zip"))?;
    f.sync_all().map_err(io_err("syncing", partial))
}

fn write_payload(
    zip: &mut ZipWriter<File>,
    sums: &mut Vec<(String, String)>,
    tmp_disk: &Path,
    g: &GoldenImage,
    p: &Payload<'_>,
) -> Result<()> {
    // The payload is already compressed: stored, not deflated again.
    let stored = SimpleFileOptions::default().compression_method(CompressionMethod::Stored);
    let large = |size: u64| stored.large_file(size >= u32::MAX as u64);
    let name = g.name.clone();
    let copy_file =
        |zip: &mut ZipWriter<File>, sums: &mut Vec<(String, String)>, src: &Path| -> Result<()> {
            let mut f = File::open(src).map_err(io_err("opening", src))?;
            let size = f.metadata().map_err(io_err("reading", src))?.len();
            put(zip, sums, name.clone(), large(size), &mut |w| {
                io::copy(&mut f, w)
                    .map(|_| ())
                    .map_err(|e| BundleError::Write(format!("{}: {e}", src.display())))
            })
        };
    match &p.source {
        PayloadSource::File(src) => copy_file(zip, sums, src),
        PayloadSource::Bundle(b) => {
            let (i, _) = b.payload_index(&g.name)?;
            let size = b.entries[i].size;
            put(zip, sums, name.clone(), large(size), &mut |w| {
                b.copy_payload(&g.name, w).map(|_| ())
            })
        }
        PayloadSource::RawDisk(src) => {
            let mut disk = File::open(src).map_err(io_err("opening", src))?;
            let size = disk.metadata().map_err(io_err("reading", src))?.len();
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(tmp_disk)
                .map_err(io_err("creating", tmp_disk))?;
            let mut inner = ZipWriter::new(f);
            let opts = SimpleFileOptions::default()
                .compression_method(CompressionMethod::Deflated)
                .large_file(size >= u32::MAX as u64);
            // HPE names the disk inside by a UUID; the golden image's id is one.
            inner
                .start_file(g.id.as_str(), opts)
                .map_err(zip_write_err(&g.id))?;
            io::copy(&mut disk, &mut inner)
                .map_err(|e| BundleError::Write(format!("{}: {e}", src.display())))?;
            inner
                .finish()
                .map_err(zip_write_err("finishing the payload zip"))?;
            copy_file(zip, sums, tmp_disk)
        }
    }
}

/// A store image name made from a golden image's name (HPE's hold spaces; store names take
/// letters, digits, `.`, `_` and `-`): every other character becomes `_`, runs of `_` are
/// squeezed, and the result is cut to the store's length limit.
pub fn store_name_for(golden_image: &str) -> String {
    let mut s = String::new();
    for c in golden_image.chars() {
        let c = if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
            c
        } else {
            '_'
        };
        if !(c == '_' && s.ends_with('_')) {
            s.push(c);
        }
    }
    let s = s.trim_start_matches(['.', '-', '_']).trim_end_matches('_');
    let mut s: String = s.chars().take(crate::store::names::MAX_NAME_LEN).collect();
    if s.is_empty() {
        s = "golden-image".into();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_that_could_be_paths_are_refused() {
        for n in [
            "",
            "../x",
            "/etc/passwd",
            "a/b",
            "a\\b",
            "..",
            ".",
            "a\0b",
            "tab\tx",
            "x\n",
        ] {
            assert!(
                matches!(check_entry_name(n), Err(BundleError::UnsafeName { .. })),
                "{n:?}"
            );
        }
        for n in [
            "MANIFEST.MF",
            "HPE - Support 1.0 - UEFI Test Image - 2017-03-24",
            "a..b",
        ] {
            check_entry_name(n).unwrap();
        }
    }

    #[test]
    fn checksum_lines_parse_with_and_without_final_newline() {
        let h = "ab".repeat(32);
        let v = parse_checksums(
            &format!("a.json\t{h}\r\nMANIFEST.MF\t{}", h.to_uppercase()),
            Algorithm::Sha256,
        )
        .unwrap();
        assert_eq!(
            v,
            [
                ("a.json".into(), h.clone()),
                ("MANIFEST.MF".into(), h.clone())
            ]
        );
        let e = parse_checksums("a.json  abc", Algorithm::Sha256)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1") && e.contains("<TAB>"), "{e}");
        let e = parse_checksums(&format!("a\t{h}\n\nb\tzz"), Algorithm::Sha256)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("SHA-256"), "{e}");
        let e = parse_checksums(&format!("a\t{h}\na\t{h}"), Algorithm::Sha256)
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
        let e = parse_checksums(&format!("../a\t{h}"), Algorithm::Sha256).unwrap_err();
        assert!(matches!(e, BundleError::UnsafeName { .. }), "{e}");
    }

    #[test]
    fn manifest_round_trips_hpe_text_and_refuses_junk() {
        let text = "Artifact Name:X\nDescription:a: b \\\"c\\\"\nTime Stamp:2018-01-30T17:10:45.182Z\nArtifact Type:USER";
        let m = Manifest::parse(text).unwrap();
        assert_eq!(m.get("Time Stamp"), Some("2018-01-30T17:10:45.182Z"));
        assert_eq!(m.get("Description"), Some("a: b \\\"c\\\""));
        assert_eq!(m.artifact_name(), Some("X"));
        assert_eq!(m.to_text().unwrap(), text);
        assert!(Manifest::parse("no colon here")
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        assert!(Manifest::parse("A:1\nA:2")
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let mut m = Manifest::default();
        m.set("Bad", "two\nlines");
        assert!(m.to_text().is_err());
    }

    #[test]
    fn store_names_are_made_valid() {
        let n = store_name_for("HPE - Support 1.0 - UEFI Test Image - 2017-03-24");
        assert_eq!(n, "HPE_-_Support_1.0_-_UEFI_Test_Image_-_2017-03-24");
        crate::store::names::validate(&n).unwrap();
        assert_eq!(store_name_for("  "), "golden-image");
        assert_eq!(store_name_for(&"é".repeat(300)), "golden-image");
        crate::store::names::validate(&store_name_for(&"x ".repeat(300))).unwrap();
    }
}
