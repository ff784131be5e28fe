//! Boot traces: which chunks of a golden image its first boot read, in the order it read
//! them, stored with the image (`REPO/images/NAME/boot-trace`), and replayed into the shared
//! chunk cache when clones of that image are served, ahead of their initiators.
//!
//! This file owns the trace's byte format, the recording (fed by the iSCSI target's reads
//! of a clone), and the prefetch. A trace names the image it was recorded on by the image's
//! identity, a SHA-256 of its index (the index holds every chunk's checksum and place, so
//! two images share an identity only if they hold the same data): a trace whose identity is
//! not the current image's (a new image under the same name, a trace copied along with the
//! wrong image) is ignored and recorded anew, never replayed.
//!
//! Format (little-endian): magic `STRTRACE`, version (u32), chunk size (u32), identity (32
//! bytes), run count (u64), then runs of chunks as (first chunk u64, length u32) in the order
//! of their first read, then a crc32 of everything before it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::error::{Result, StoreError};
use super::image::{Image, INDEX_FILE};
use super::volume::Volume;

pub const TRACE_FILE: &str = "boot-trace";
const MAGIC: &[u8; 8] = b"STRTRACE";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 4 + 32 + 8;
const RUN_LEN: usize = 12;

/// What a recorded first boot read of an image, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootTrace {
    pub identity: [u8; 32],
    pub chunk_size: u32,
    /// (first chunk, chunks) in the order their first chunk was first read.
    pub runs: Vec<(u64, u32)>,
}

impl BootTrace {
    pub fn chunks(&self) -> u64 {
        self.runs.iter().map(|r| r.1 as u64).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(HEADER_LEN + self.runs.len() * RUN_LEN + 4);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.chunk_size.to_le_bytes());
        b.extend_from_slice(&self.identity);
        b.extend_from_slice(&(self.runs.len() as u64).to_le_bytes());
        for &(first, n) in &self.runs {
            b.extend_from_slice(&first.to_le_bytes());
            b.extend_from_slice(&n.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses a trace file's bytes; the error says what is wrong with them.
    pub fn decode(b: &[u8]) -> std::result::Result<BootTrace, String> {
        if b.len() < HEADER_LEN + 4 || &b[..8] != MAGIC {
            return Err("not a boot trace".into());
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return Err("checksum mismatch".into());
        }
        let u32_at = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(body[o..o + 8].try_into().unwrap_or_default());
        if u32_at(8) != VERSION {
            return Err(format!(
                "version {} (this strata reads {VERSION})",
                u32_at(8)
            ));
        }
        let chunk_size = u32_at(12);
        let mut identity = [0u8; 32];
        identity.copy_from_slice(&body[16..48]);
        let count = u64_at(48);
        if count.checked_mul(RUN_LEN as u64) != Some((body.len() - HEADER_LEN) as u64) {
            return Err("run count does not match the file's length".into());
        }
        let runs = (0..count as usize)
            .map(|i| {
                let o = HEADER_LEN + i * RUN_LEN;
                (u64_at(o), u32_at(o + 8))
            })
            .collect();
        Ok(BootTrace {
            identity,
            chunk_size,
            runs,
        })
    }

    /// Writes the trace into `dir` atomically (a reader sees the old file or the new one).
    pub fn store(&self, dir: &Path) -> Result<()> {
        let path = dir.join(TRACE_FILE);
        let tmp = dir.join(format!("{TRACE_FILE}.tmp"));
        std::fs::write(&tmp, self.encode()).map_err(|e| StoreError::io("writing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io("renaming", &path, e))
    }
}

/// The image's identity: SHA-256 of its index file.
pub fn identity(image: &Image) -> Result<[u8; 32]> {
    let path = image.dir().join(INDEX_FILE);
    let index = std::fs::read(&path).map_err(|e| StoreError::io("reading", &path, e))?;
    Ok(Sha256::digest(&index).into())
}

fn hex(id: &[u8; 32]) -> String {
    id[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// How long a first boot is recorded, and how much of it.
#[derive(Debug, Clone, Copy)]
pub struct TraceOptions {
    /// Recording stops this long after the first read (a boot to userspace).
    pub window: Duration,
    /// ... or once this many bytes of distinct chunks were read.
    pub max_bytes: u64,
    /// Prefetch stops after this many bytes (keep it well under the shared cache's size, or
    /// the prefetch evicts what it fetched).
    pub prefetch_bytes: u64,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            window: Duration::from_secs(300),
            max_bytes: 512 << 20,
            prefetch_bytes: 128 << 20,
        }
    }
}

/// A first boot being recorded: the chunks initiators read from one clone.
pub struct Recording {
    image: Arc<Image>,
    identity: [u8; 32],
    opts: TraceOptions,
    active: AtomicBool,
    inner: Mutex<RecInner>,
}

struct RecInner {
    started: Option<Instant>,
    /// One bit per chunk of the image: read already.
    seen: Vec<u64>,
    runs: Vec<(u64, u32)>,
    chunks: u64,
}

impl Recording {
    /// Notes a read of `len` bytes at `offset` of the clone (offsets past the image's end
    /// are the clone's own and are not traced).
    pub fn note(&self, offset: u64, len: u64) {
        if !self.active.load(Ordering::Relaxed) || len == 0 {
            return;
        }
        let cs = self.image.chunk_size() as u64;
        let count = self.image.len().div_ceil(cs);
        let first = offset / cs;
        let last = ((offset + len - 1) / cs).min(count.saturating_sub(1));
        let mut r = self.inner.lock();
        let started = *r.started.get_or_insert_with(Instant::now);
        for c in first..=last.max(first) {
            if c >= count {
                break;
            }
            let (w, bit) = ((c / 64) as usize, 1u64 << (c % 64));
            if r.seen[w] & bit != 0 {
                continue;
            }
            r.seen[w] |= bit;
            r.chunks += 1;
            match r.runs.last_mut() {
                Some((f, n)) if *f + *n as u64 == c && *n < u32::MAX => *n += 1,
                _ => r.runs.push((c, 1)),
            }
        }
        let full = r.chunks * cs >= self.opts.max_bytes;
        drop(r);
        if full || started.elapsed() >= self.opts.window {
            self.finish();
        }
    }

    fn expired(&self) -> bool {
        self.inner
            .lock()
            .started
            .is_some_and(|t| t.elapsed() >= self.opts.window)
    }

    /// Stops recording and stores what was read (once; later calls do nothing).
    pub fn finish(&self) {
        if !self.active.swap(false, Ordering::AcqRel) {
            return;
        }
        let r = self.inner.lock();
        if r.runs.is_empty() {
            return;
        }
        let trace = BootTrace {
            identity: self.identity,
            chunk_size: self.image.chunk_size() as u32,
            runs: r.runs.clone(),
        };
        match trace.store(self.image.dir()) {
            Ok(()) => tracing::info!(
                image = %self.image.name(), identity = %hex(&self.identity),
                chunks = r.chunks, runs = r.runs.len(),
                mib = (r.chunks * self.image.chunk_size() as u64) >> 20,
                "boot trace recorded"
            ),
            Err(e) => {
                tracing::warn!(image = %self.image.name(), error = %e, "boot trace not stored")
            }
        }
    }
}

/// Per image: the trace being recorded, or the prefetch that ran.
enum State {
    Recording(Weak<Recording>),
    Prefetched,
}

/// The server's boot traces: records the first boot of each image's clones, prefetches the
/// trace for later clones.
pub struct Tracer {
    opts: TraceOptions,
    images: Mutex<HashMap<[u8; 32], State>>,
    recordings: Mutex<Vec<Arc<Recording>>>,
    prefetches: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Default for Tracer {
    fn default() -> Self {
        Tracer::new(TraceOptions::default())
    }
}

impl Tracer {
    pub fn new(opts: TraceOptions) -> Tracer {
        Tracer {
            opts,
            images: Mutex::new(HashMap::new()),
            recordings: Mutex::new(Vec::new()),
            prefetches: Mutex::new(Vec::new()),
        }
    }

    /// A clone is about to be served: replays the image's trace into the cache (in the
    /// background) if it has a valid one, else records this clone's reads (returned: feed it
    /// the clone's reads). Volumes without an image, and errors, trace nothing.
    pub fn volume_opened(&self, volume: &Volume) -> Option<Arc<Recording>> {
        let image = volume.image()?.clone();
        let id = match identity(&image) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(image = %image.name(), error = %e, "no boot trace: image identity unknown");
                return None;
            }
        };
        let mut images = self.images.lock();
        match images.get(&id) {
            Some(State::Prefetched) => return None,
            Some(State::Recording(r)) => {
                // One recording per image: the first clone's boot is the trace.
                if let Some(r) = r.upgrade() {
                    // A window that ran out with no read since is closed here, so the new
                    // clone gets the trace.
                    if r.expired() {
                        r.finish();
                    }
                    if r.active.load(Ordering::Relaxed) {
                        return None;
                    }
                }
            }
            None => {}
        }
        let path = image.dir().join(TRACE_FILE);
        let stored = match std::fs::read(&path) {
            Ok(b) => match BootTrace::decode(&b) {
                Ok(t) if t.identity == id && t.chunk_size as usize == image.chunk_size() => Some(t),
                Ok(t) => {
                    tracing::info!(
                        image = %image.name(), trace_identity = %hex(&t.identity),
                        image_identity = %hex(&id),
                        "boot trace is of another image (replaced under the same name?): ignored, recording anew"
                    );
                    None
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "boot trace unreadable: ignored, recording anew");
                    None
                }
            },
            Err(_) => None,
        };
        if let Some(trace) = stored {
            images.insert(id, State::Prefetched);
            let budget = self.opts.prefetch_bytes;
            let h = std::thread::Builder::new()
                .name("boot-trace-prefetch".into())
                .spawn(move || prefetch(&image, &trace, budget));
            match h {
                Ok(h) => self.prefetches.lock().push(h),
                Err(e) => tracing::warn!(error = %e, "boot trace prefetch not started"),
            }
            return None;
        }
        let count = image.len().div_ceil(image.chunk_size() as u64);
        let rec = Arc::new(Recording {
            image,
            identity: id,
            opts: self.opts,
            active: AtomicBool::new(true),
            inner: Mutex::new(RecInner {
                started: None,
                seen: vec![0; count.div_ceil(64) as usize],
                runs: Vec::new(),
                chunks: 0,
            }),
        });
        images.insert(id, State::Recording(Arc::downgrade(&rec)));
        self.recordings.lock().push(rec.clone());
        Some(rec)
    }

    /// Stores the recordings still open (the server is stopping).
    pub fn finish_all(&self) {
        for r in self.recordings.lock().drain(..) {
            r.finish();
        }
    }

    /// Waits for the prefetches started so far (tests and benchmarks).
    pub fn wait_prefetches(&self) {
        let hs: Vec<_> = self.prefetches.lock().drain(..).collect();
        for h in hs {
            let _ = h.join();
        }
    }
}

/// Reads the trace's chunks in order through the image, which checks them and keeps them
/// in the shared cache, in pieces the cache takes (16 chunks; longer runs bypass it).
fn prefetch(image: &Image, trace: &BootTrace, budget: u64) {
    const PIECE: u64 = 16;
    let start = Instant::now();
    let cs = image.chunk_size() as u64;
    let mut buf = vec![0u8; (PIECE * cs) as usize];
    let mut done = 0u64;
    let reader = format!("boot trace prefetch of {:?}", image.name());
    'runs: for &(first, n) in &trace.runs {
        let mut c = first;
        while c < first + n as u64 {
            if done * cs >= budget {
                break 'runs;
            }
            let k = PIECE.min(first + n as u64 - c);
            if let Err(e) = image.read_at(&mut buf[..(k * cs) as usize], c * cs, &reader) {
                tracing::warn!(image = %image.name(), error = %e, "boot trace prefetch stopped");
                break 'runs;
            }
            done += k;
            c += k;
        }
    }
    tracing::info!(
        image = %image.name(), chunks = done, of = trace.chunks(),
        mib = (done * cs) >> 20, ms = start.elapsed().as_millis() as u64,
        "boot trace prefetched"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RepoOptions, Repository, SourceFormat};

    /// A repository with image `gold` of `chunks` 4 KiB chunks, chunk i filled with
    /// `seed + i`, and clones `names` of it.
    fn repo_with(dir: &Path, seed: u8, chunks: usize, names: &[&str]) -> Repository {
        let repo = Repository::open(dir.join("repo"), RepoOptions::default()).unwrap();
        let raw = dir.join(format!("gold-{seed}.raw"));
        let mut data = Vec::new();
        for i in 0..chunks {
            data.extend(std::iter::repeat_n(seed.wrapping_add(i as u8) | 1, 4096));
        }
        std::fs::write(&raw, &data).unwrap();
        repo.import_image("gold", &raw, SourceFormat::Raw, &|_, _| {})
            .unwrap();
        for n in names {
            repo.create_volume(n, Some("gold"), None).unwrap();
        }
        repo
    }

    fn quick() -> TraceOptions {
        TraceOptions {
            window: Duration::from_secs(3600),
            ..TraceOptions::default()
        }
    }

    #[test]
    fn trace_bytes_round_trip_and_damage_is_detected() {
        let t = BootTrace {
            identity: [7; 32],
            chunk_size: 4096,
            runs: vec![(10, 3), (0, 1), (1 << 40, 7)],
        };
        let b = t.encode();
        assert_eq!(BootTrace::decode(&b).unwrap(), t);
        let mut bad = b.clone();
        bad[HEADER_LEN + 2] ^= 1;
        assert!(BootTrace::decode(&bad).unwrap_err().contains("checksum"));
        assert!(BootTrace::decode(&b[..b.len() - 1]).is_err());
        assert!(BootTrace::decode(b"not a trace at all, no").is_err());
    }

    #[test]
    fn a_first_boot_is_recorded_in_first_read_order_and_stored_with_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo_with(tmp.path(), 1, 64, &["a"]);
        let vol = repo.open_volume("a", false).unwrap();
        let tracer = Tracer::new(quick());
        let rec = tracer.volume_opened(&vol).expect("no trace yet: records");
        // Reads as a boot does them: the loader's blocks, then the kernel's, re-reads.
        for (off, len) in [
            (40 * 4096, 8192),
            (0, 512),
            (4096, 4096),
            (41 * 4096, 100),
            (2 * 4096, 3 * 4096),
        ] {
            let mut b = vec![0u8; len];
            vol.read_at(&mut b, off).unwrap();
            rec.note(off, len as u64);
        }
        // A second clone opened meanwhile does not start a second recording.
        drop(tracer.volume_opened(&vol));
        tracer.finish_all();
        let img = vol.image().unwrap();
        let t = BootTrace::decode(&std::fs::read(img.dir().join(TRACE_FILE)).unwrap()).unwrap();
        assert_eq!(t.runs, vec![(40, 2), (0, 5)]);
        assert_eq!(t.identity, identity(img).unwrap());
        assert_eq!(t.chunk_size, 4096);
    }

    #[test]
    fn a_recording_ends_with_its_window_and_the_next_clone_gets_the_trace() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo_with(tmp.path(), 1, 64, &["a", "b"]);
        let a = repo.open_volume("a", false).unwrap();
        let b = repo.open_volume("b", false).unwrap();
        let tracer = Tracer::new(TraceOptions {
            window: Duration::ZERO,
            ..quick()
        });
        let rec = tracer.volume_opened(&a).unwrap();
        // The first read opens the window, which (zero long) is over at once.
        rec.note(3 * 4096, 4096);
        assert!(b.image().unwrap().dir().join(TRACE_FILE).exists());
        assert!(tracer.volume_opened(&b).is_none(), "b gets the trace");
        tracer.wait_prefetches();
    }

    #[test]
    fn recording_stops_at_its_byte_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = repo_with(tmp.path(), 1, 64, &["a"]);
        let vol = repo.open_volume("a", false).unwrap();
        let tracer = Tracer::new(TraceOptions {
            max_bytes: 4 * 4096,
            ..quick()
        });
        let rec = tracer.volume_opened(&vol).unwrap();
        rec.note(0, 4 * 4096);
        assert!(
            vol.image().unwrap().dir().join(TRACE_FILE).exists(),
            "stored at the limit"
        );
        rec.note(10 * 4096, 4096); // after the limit: not traced
        let t =
            BootTrace::decode(&std::fs::read(vol.image().unwrap().dir().join(TRACE_FILE)).unwrap())
                .unwrap();
        assert_eq!(t.runs, vec![(0, 4)]);
    }

    #[test]
    fn clones_of_a_traced_image_get_its_chunks_prefetched_into_the_shared_cache() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let repo = repo_with(tmp.path(), 1, 256, &["a", "b"]);
            let vol = repo.open_volume("a", false).unwrap();
            let tracer = Tracer::new(quick());
            let rec = tracer.volume_opened(&vol).unwrap();
            rec.note(100 * 4096, 40 * 4096);
            rec.note(0, 4096);
            tracer.finish_all();
        }
        // Another server process: a fresh repository handle and cache.
        let repo = Repository::open(tmp.path().join("repo"), RepoOptions::default()).unwrap();
        let vol = repo.open_volume("b", false).unwrap();
        let tracer = Tracer::new(quick());
        let (_, loaded_before) = repo.cache().stats();
        assert!(
            tracer.volume_opened(&vol).is_none(),
            "a traced image is not recorded again"
        );
        tracer.wait_prefetches();
        let (hits0, loaded) = repo.cache().stats();
        assert_eq!(loaded - loaded_before, 41, "the trace's chunks were loaded");
        // The clone's boot now reads them from memory, and they are the image's bytes.
        let mut b = vec![0u8; 40 * 4096];
        vol.read_at(&mut b, 100 * 4096).unwrap();
        let (hits, loaded_after) = repo.cache().stats();
        assert_eq!(
            loaded_after, loaded,
            "nothing more read from the image's files"
        );
        assert_eq!(hits - hits0, 40);
        assert!(b[..4096].iter().all(|&x| x == 1u8.wrapping_add(100) | 1));
        // Later clones of the same image do not prefetch again.
        assert!(tracer.volume_opened(&vol).is_none());
        tracer.wait_prefetches();
        assert_eq!(repo.cache().stats().1, loaded_after);
    }

    #[test]
    fn a_trace_of_a_replaced_image_is_not_replayed_and_is_recorded_anew() {
        let tmp = tempfile::tempdir().unwrap();
        let old_trace = {
            let repo = repo_with(tmp.path(), 1, 64, &["a"]);
            let vol = repo.open_volume("a", false).unwrap();
            let tracer = Tracer::new(quick());
            tracer.volume_opened(&vol).unwrap().note(0, 8 * 4096);
            tracer.finish_all();
            let dir = vol.image().unwrap().dir().to_path_buf();
            drop(vol);
            let bytes = std::fs::read(dir.join(TRACE_FILE)).unwrap();
            // The golden image changes: its clones go, then a new image of the same name.
            repo.remove_volume("a").unwrap();
            repo.remove_image("gold").unwrap();
            bytes
        };
        let repo = Repository::open(tmp.path().join("repo"), RepoOptions::default()).unwrap();
        let raw = tmp.path().join("new.raw");
        std::fs::write(&raw, vec![0x5a; 64 * 4096]).unwrap();
        repo.import_image("gold", &raw, SourceFormat::Raw, &|_, _| {})
            .unwrap();
        repo.create_volume("c", Some("gold"), None).unwrap();
        let vol = repo.open_volume("c", false).unwrap();
        let img = vol.image().unwrap();
        // Even with the old trace put back beside the new image (as a copy or a bundle
        // might), it names the old image's identity.
        std::fs::write(img.dir().join(TRACE_FILE), &old_trace).unwrap();
        let tracer = Tracer::new(quick());
        let (_, loaded0) = repo.cache().stats();
        let rec = tracer
            .volume_opened(&vol)
            .expect("a stale trace is recorded anew");
        tracer.wait_prefetches();
        assert_eq!(
            repo.cache().stats().1,
            loaded0,
            "nothing prefetched from a stale trace"
        );
        rec.note(20 * 4096, 4096);
        tracer.finish_all();
        let t = BootTrace::decode(&std::fs::read(img.dir().join(TRACE_FILE)).unwrap()).unwrap();
        assert_eq!(t.identity, identity(img).unwrap());
        assert_eq!(t.runs, vec![(20, 1)]);
    }

    #[test]
    fn volumes_without_an_image_are_not_traced() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = Repository::open(tmp.path().join("repo"), RepoOptions::default()).unwrap();
        repo.create_volume("empty", None, Some(1 << 20)).unwrap();
        let vol = repo.open_volume("empty", false).unwrap();
        assert!(Tracer::default().volume_opened(&vol).is_none());
    }
}
