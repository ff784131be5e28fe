//! Snapshots of a volume: a read-only, point-in-time view of its last committed map, taken
//! without copying data and while another process (`strata serve`) keeps the volume open,
//! writing and flushing. This file owns the pin files that make that safe, their byte
//! layout, the writer's side of honouring them (`PinDir`), and the snapshot device itself.
//!
//! # The discipline
//! A committed map references data slots; the writer reuses a slot only after a later
//! commit has superseded it (`delta.rs`). A snapshot *pins* a committed map: a file
//! `volumes/NAME/pins/<pid>-<seq>.pin` holding that map, locked (flock, shared) for as long
//! as the snapshot lives. Before the writer hands a superseded slot back for reuse (and
//! before it punches its space out) it lists the pins directory; a slot that a live pin's
//! map references is *held* instead, and freed only at a later commit after that pin has
//! gone. A pin whose lock nobody holds belongs to a dead process: whoever sees it (the
//! writer, the next snapshot) deletes it, so a crash leaks nothing for longer than the
//! next commit.
//!
//! Taking a snapshot, in order:
//! 1. Create the pin file under a temporary name, lock it, rename it into `pins/`. From
//!    here on it is visible and live, but *pending* (no map in it yet): a writer that sees
//!    a pending pin holds every slot it frees. A writer's reclaim that listed the directory
//!    before this point freed only slots superseded by a batch that was already written.
//! 2. Read the committed map from the map files, as a read-only open does. The files may
//!    be changing under us; any valid state read now is at least as new as every batch
//!    written before step 1 provided the file it came from still has the same generation
//!    once the read is over (only the inactive map file is ever rewritten, and only after
//!    the other one has a newer generation). So: re-read that file's header, retry if its
//!    generation moved.
//! 3. Write the map into the pin (one write; a torn pin fails its checksum and counts as
//!    pending). From now on the writer holds exactly the slots that map references.
//! 4. Read through the map: data slots from the volume's data file, the rest from the
//!    golden image below. Neither changes under a live pin.
//!
//! The writer never waits for a snapshot (no lock is shared with its commits): a stuck
//! snapshot costs disk space (held slots), never a stalled flush. A process that opens the
//! volume for writing while pins exist takes them into account at open (`Delta::set_pins`).
//! Nothing here touches the volume's own files: a crash at any point leaves the volume as
//! the commit protocol leaves it, and at worst a pin file without a holder.
//!
//! # Pin file
//! ```text
//! 0   8  magic "STRATAPN"           40  8  entry count
//! 8   4  version (1)                48  4  length of the image name
//! 12  4  zero                       52  4  crc32 of the file with these 4 bytes zero
//! 16  8  volume size                56  8  zero
//! 24  8  generation of the map      64  .. image name (UTF-8), then entries
//! 32  8  log sequence of the map          { u64 block, u32 slot, u32 crc32 }
//! ```
//! An empty (or torn) pin is pending. The worker process opens a snapshot from its pin.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::backend::{FsDir, FsFile, StoreFile};
use super::delta::{Delta, DATA_FILE, MAP_FILES};
use super::device::BlockDevice;
use super::error::{Result, StoreError};
use super::format::{MapEntry, MapHeader, MAP_HEADER_LEN, ZERO_SLOT};
use super::image::Image;
use super::volume::Volume;

pub use super::pins::{PinSource, PinState};

pub const PINS_DIR: &str = "pins";
const PIN_MAGIC: &[u8; 8] = b"STRATAPN";
const PIN_VERSION: u32 = 1;
const PIN_HEADER_LEN: usize = 64;
const PIN_ENTRY_LEN: usize = 16;
/// How often step 2 may find the map files moving under it before giving up. Each retry
/// needs a compaction of the writer in the window of one read; a handful is already rare.
const READ_ATTEMPTS: usize = 1000;

static PIN_SEQ: AtomicU64 = AtomicU64::new(0);

/// Pins kept in memory, for tests of the writer's side on the crash-simulating backend.
#[derive(Default)]
pub struct MemPins {
    state: Mutex<Arc<PinState>>,
}

impl MemPins {
    /// Replaces the pins: `pending` and one slot set per complete pin.
    pub fn set(&self, pending: bool, maps: &[&[MapEntry]]) {
        let mut g = self.state.lock();
        *g = Arc::new(PinState {
            version: g.version + 1,
            pending,
            sets: maps.iter().map(|m| Arc::new(slot_set(m))).collect(),
        });
    }
}

impl PinSource for MemPins {
    fn current(&self) -> io::Result<Arc<PinState>> {
        Ok(self.state.lock().clone())
    }
}

/// The sorted data slots a map references.
fn slot_set(entries: &[MapEntry]) -> Vec<u32> {
    let mut v: Vec<u32> = entries
        .iter()
        .map(|e| e.slot)
        .filter(|&s| s != ZERO_SLOT)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

// ---- the pin file (pure) ----

/// What a complete pin holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinContent {
    pub volume_size: u64,
    pub generation: u64,
    pub sequence: u64,
    pub image: Option<String>,
    pub entries: Vec<MapEntry>,
}

impl PinContent {
    pub fn encode(&self) -> Vec<u8> {
        let name = self.image.as_deref().unwrap_or("");
        let mut b = vec![0u8; PIN_HEADER_LEN];
        b.reserve(name.len() + self.entries.len() * PIN_ENTRY_LEN);
        b[0..8].copy_from_slice(PIN_MAGIC);
        b[8..12].copy_from_slice(&PIN_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.volume_size.to_le_bytes());
        b[24..32].copy_from_slice(&self.generation.to_le_bytes());
        b[32..40].copy_from_slice(&self.sequence.to_le_bytes());
        b[40..48].copy_from_slice(&(self.entries.len() as u64).to_le_bytes());
        b[48..52].copy_from_slice(&(name.len() as u32).to_le_bytes());
        b.extend_from_slice(name.as_bytes());
        for e in &self.entries {
            b.extend_from_slice(&e.block.to_le_bytes());
            b.extend_from_slice(&e.slot.to_le_bytes());
            b.extend_from_slice(&e.crc.to_le_bytes());
        }
        let crc = crc32fast::hash(&b);
        b[52..56].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `None` for a pending, torn or foreign pin.
    pub fn decode(b: &[u8]) -> Option<PinContent> {
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
        if b.len() < PIN_HEADER_LEN || &b[0..8] != PIN_MAGIC || u32_at(8) != PIN_VERSION {
            return None;
        }
        let count = usize::try_from(u64_at(40)).ok()?;
        let name_len = u32_at(48) as usize;
        let len = count
            .checked_mul(PIN_ENTRY_LEN)?
            .checked_add(name_len)?
            .checked_add(PIN_HEADER_LEN)?;
        if b.len() != len {
            return None;
        }
        let mut h = crc32fast::Hasher::new();
        h.update(&b[..52]);
        h.update(&[0; 4]);
        h.update(&b[56..]);
        if h.finalize() != u32_at(52) {
            return None;
        }
        let name = std::str::from_utf8(&b[PIN_HEADER_LEN..PIN_HEADER_LEN + name_len]).ok()?;
        let entries = b[PIN_HEADER_LEN + name_len..]
            .chunks_exact(PIN_ENTRY_LEN)
            .map(|e| MapEntry {
                block: u64::from_le_bytes(e[0..8].try_into().expect("8")),
                slot: u32::from_le_bytes(e[8..12].try_into().expect("4")),
                crc: u32::from_le_bytes(e[12..16].try_into().expect("4")),
            })
            .collect();
        Some(PinContent {
            volume_size: u64_at(16),
            generation: u64_at(24),
            sequence: u64_at(32),
            image: (!name.is_empty()).then(|| name.to_string()),
            entries,
        })
    }
}

// ---- locks ----

/// flock(2) without blocking; false when another holder conflicts.
fn try_flock(f: &File, op: libc::c_int) -> io::Result<bool> {
    // SAFETY: flock on an fd we own.
    if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn flock_shared(f: &File) -> io::Result<()> {
    loop {
        // SAFETY: flock on an fd we own; blocks only while a cleaner tests the pin (an
        // instant: it holds the exclusive lock only when nobody else holds any).
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether `f` (a pin) has no holder; if so it is deleted at `path`. The test takes the
/// exclusive lock, which any holder's shared lock refuses; our own descriptor is separate
/// from every other (flock locks belong to open file descriptions), so a pin held by this
/// very process counts as held.
fn clear_if_stale(f: &File, path: &Path) -> io::Result<bool> {
    if !try_flock(f, libc::LOCK_EX)? {
        return Ok(false);
    }
    tracing::info!(pin = %path.display(), "removing the pin of a snapshot whose process is gone");
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // SAFETY: flock on an fd we own.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) };
    Ok(true)
}

// ---- the writer's side ----

struct PinEntry {
    file: File,
    /// The pinned slots, once the pin is complete.
    slots: Option<Arc<Vec<u32>>>,
}

#[derive(Default)]
struct PinCache {
    version: u64,
    pins: HashMap<OsString, PinEntry>,
    state: Arc<PinState>,
}

/// The pins directory of a volume, as its writer reads it. Each complete pin is read
/// once; every call lists the directory and checks each pin's lock (a few system calls
/// per pin), so that a pin taken a moment ago is seen and a dead one let go.
pub struct PinDir {
    dir: PathBuf,
    cache: Mutex<PinCache>,
}

impl PinDir {
    pub fn new(dir: impl Into<PathBuf>) -> PinDir {
        PinDir {
            dir: dir.into(),
            cache: Mutex::new(PinCache {
                version: 1,
                ..PinCache::default()
            }),
        }
    }
}

fn read_whole(f: &File) -> io::Result<Vec<u8>> {
    let len = f.metadata()?.len();
    let mut b = vec![0u8; len as usize];
    let mut done = 0;
    while done < b.len() {
        match f.read_at(&mut b[done..], done as u64) {
            Ok(0) => {
                b.truncate(done);
                break;
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(b)
}

impl PinSource for PinDir {
    fn current(&self) -> io::Result<Arc<PinState>> {
        let mut c = self.cache.lock();
        let names: Vec<OsString> = match fs::read_dir(&self.dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name())
                .filter(|n| n.to_string_lossy().ends_with(".pin"))
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut changed = false;
        let before = c.pins.len();
        c.pins.retain(|n, _| names.contains(n));
        changed |= c.pins.len() != before;
        for name in names {
            let path = self.dir.join(&name);
            if !c.pins.contains_key(&name) {
                let file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                c.pins.insert(name.clone(), PinEntry { file, slots: None });
                changed = true;
            }
            let entry = c.pins.get_mut(&name).expect("inserted above");
            if clear_if_stale(&entry.file, &path)? {
                c.pins.remove(&name);
                changed = true;
                continue;
            }
            if entry.slots.is_none() {
                if let Some(p) = PinContent::decode(&read_whole(&entry.file)?) {
                    entry.slots = Some(Arc::new(slot_set(&p.entries)));
                    changed = true;
                }
            }
        }
        if changed {
            c.version += 1;
            let state = PinState {
                version: c.version,
                pending: c.pins.values().any(|p| p.slots.is_none()),
                sets: c.pins.values().filter_map(|p| p.slots.clone()).collect(),
            };
            c.state = Arc::new(state);
        }
        Ok(c.state.clone())
    }
}

// ---- the snapshot ----

/// A read-only, point-in-time view of a volume's committed state. The process that took it
/// (`take`) owns the pin and removes it on drop; others (the filesystem worker) `open` the
/// same pin by its id and read the same state.
pub struct Snapshot {
    id: String,
    volume_name: String,
    view: Volume,
    pin_path: PathBuf,
    _pin: File,
    owner: bool,
}

impl Snapshot {
    /// Takes a snapshot of the volume in `dir` (named `name`, of `size` bytes, over `base`).
    /// No lock on the volume is needed: it may be open for writing elsewhere.
    pub fn take(dir: &Path, name: &str, size: u64, base: Option<Arc<Image>>) -> Result<Snapshot> {
        let pins = dir.join(PINS_DIR);
        fs::create_dir_all(&pins).map_err(|e| StoreError::io("creating", &pins, e))?;
        clean_stale(&pins);
        // Step 1: a live, pending pin, visible only once locked.
        let id = format!(
            "{}-{}",
            std::process::id(),
            PIN_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = pins.join(format!(".{id}.tmp"));
        let pin_path = pins.join(format!("{id}.pin"));
        let pin = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| StoreError::io("creating", &tmp, e))?;
        let placed = flock_shared(&pin).and_then(|()| fs::rename(&tmp, &pin_path));
        if let Err(e) = placed {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("placing", &pin_path, e));
        }
        let label = format!("snapshot of volume {name:?}");
        let result = (|| {
            // Steps 2 and 3.
            let (delta_state, entries) = read_committed(dir, &label)?;
            let content = PinContent {
                volume_size: size,
                generation: delta_state.1,
                sequence: delta_state.2,
                image: base.as_ref().map(|b| b.name().to_string()),
                entries,
            };
            pin.write_all_at(&content.encode(), 0)
                .map_err(|e| StoreError::io("writing", &pin_path, e))?;
            Self::view(dir, name, &content, base)
        })();
        match result {
            Ok(view) => Ok(Snapshot {
                id,
                volume_name: name.to_string(),
                view,
                pin_path,
                _pin: pin,
                owner: true,
            }),
            Err(e) => {
                let _ = fs::remove_file(&pin_path);
                Err(e)
            }
        }
    }

    /// Opens the snapshot `id` of the volume in `dir` that another process took (and still
    /// holds). `image` opens the golden image the pin names.
    pub fn open(
        dir: &Path,
        name: &str,
        id: &str,
        image: impl FnOnce(&str) -> Result<Arc<Image>>,
    ) -> Result<Snapshot> {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
            return Err(StoreError::InvalidInput(format!(
                "{id:?} is not a snapshot id (digits and dashes)"
            )));
        }
        let pin_path = dir.join(PINS_DIR).join(format!("{id}.pin"));
        let gone = |e: io::Error| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::NotFound {
                    kind: "snapshot",
                    name: format!("{id} of volume {name:?}"),
                }
            } else {
                StoreError::io("opening", &pin_path, e)
            }
        };
        let pin = File::open(&pin_path).map_err(gone)?;
        flock_shared(&pin).map_err(|e| StoreError::io("locking", &pin_path, e))?;
        // It may have been found stale and removed between our open and our lock.
        if !pin_path.exists() {
            return Err(gone(io::ErrorKind::NotFound.into()));
        }
        let bytes = read_whole(&pin).map_err(|e| StoreError::io("reading", &pin_path, e))?;
        let content = PinContent::decode(&bytes).ok_or_else(|| StoreError::Corrupt {
            path: pin_path.clone(),
            detail: "the snapshot's pin is incomplete or damaged".into(),
        })?;
        let base = content.image.as_deref().map(image).transpose()?;
        let view = Self::view(dir, name, &content, base)?;
        Ok(Snapshot {
            id: id.to_string(),
            volume_name: name.to_string(),
            view,
            pin_path,
            _pin: pin,
            owner: false,
        })
    }

    fn view(dir: &Path, name: &str, c: &PinContent, base: Option<Arc<Image>>) -> Result<Volume> {
        let data_path = dir.join(DATA_FILE);
        let data = FsFile::open_read_only(&data_path)
            .map_err(|e| StoreError::io("opening", &data_path, e))?;
        let delta = Delta::frozen(
            Arc::new(FsDir::read_only(dir)),
            Arc::new(data) as Arc<dyn StoreFile>,
            format!("snapshot of volume {name:?}"),
            &c.entries,
        );
        Ok(Volume::new(name, c.volume_size, base, delta, true))
    }

    /// The id other processes open it by (`Snapshot::open`).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn volume_name(&self) -> &str {
        &self.volume_name
    }

    /// The snapshot as a read-only volume.
    pub fn volume(&self) -> &Volume {
        &self.view
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        // Unlinked while still locked: no one ever sees it unheld and mistakes it for a
        // leak while we live.
        if self.owner {
            let _ = fs::remove_file(&self.pin_path);
        }
    }
}

/// Step 2: the committed map, from a read-only open of the map files, checked to be at
/// least as new as anything committed before the pin was placed (see the module doc).
fn read_committed(dir: &Path, label: &str) -> Result<((usize, u64, u64), Vec<MapEntry>)> {
    let data_path = dir.join(DATA_FILE);
    let mut last_err = None;
    for _ in 0..READ_ATTEMPTS {
        let data = FsFile::open_read_only(&data_path)
            .map_err(|e| StoreError::io("opening", &data_path, e))?;
        let opened = Delta::open_with_data(
            Arc::new(FsDir::read_only(dir)),
            Arc::new(data),
            label.to_string(),
        );
        let d = match opened {
            Ok(d) => d,
            // Both map files caught mid-rewrite (two compactions during one read): again.
            Err(e @ StoreError::Corrupt { .. }) => {
                last_err = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        let (active, generation, sequence) = d.committed();
        let path = dir.join(MAP_FILES[active]);
        let mut h = [0u8; MAP_HEADER_LEN];
        let again = File::open(&path)
            .and_then(|f| f.read_exact_at(&mut h, 0))
            .map(|()| MapHeader::decode(&h).map(|h| h.generation));
        if let Ok(Ok(g)) = again {
            if g == generation {
                return Ok(((active, generation, sequence), d.entries()));
            }
        }
    }
    Err(last_err.unwrap_or_else(|| {
        StoreError::Failed(format!(
            "{label}: the volume's map kept changing under the snapshot ({READ_ATTEMPTS} \
             attempts); try again"
        ))
    }))
}

/// Removes pins and half-placed pins of processes that are gone.
fn clean_stale(pins: &Path) {
    let Ok(rd) = fs::read_dir(pins) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.ends_with(".pin") {
            if let Ok(f) = File::open(&path) {
                let _ = clear_if_stale(&f, &path);
            }
        } else if let Some(rest) = name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
            // Not yet locked by design: its pid tells whether it may still be placed.
            let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
            // SAFETY: kill with signal 0 only checks for existence.
            if pid.is_some_and(|p| unsafe { libc::kill(p, 0) } != 0) {
                let _ = fs::remove_file(&path);
            }
        }
    }
}

impl BlockDevice for Snapshot {
    fn len(&self) -> u64 {
        self.view.len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.view.read_at(buf, offset)
    }
    fn write_at(&self, _: &[u8], _: u64) -> Result<()> {
        Err(StoreError::ReadOnly {
            what: self.describe(),
        })
    }
    fn discard(&self, _: u64, _: u64) -> Result<()> {
        Err(StoreError::ReadOnly {
            what: self.describe(),
        })
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("snapshot of volume {:?}", self.volume_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::{MemDir, StoreDir};
    use crate::store::format::BLOCK;

    fn entries(n: u64) -> Vec<MapEntry> {
        (0..n)
            .map(|i| MapEntry {
                block: i * 3,
                slot: if i == 2 { ZERO_SLOT } else { (n - i) as u32 },
                crc: i as u32 * 7,
            })
            .collect()
    }

    #[test]
    fn a_pin_round_trips_and_a_torn_or_pending_pin_is_not_complete() {
        let p = PinContent {
            volume_size: 1 << 30,
            generation: 4,
            sequence: 9,
            image: Some("rhel9".into()),
            entries: entries(5),
        };
        let b = p.encode();
        assert_eq!(PinContent::decode(&b), Some(p.clone()));
        assert_eq!(PinContent::decode(&[]), None);
        for cut in [10, 63, 64, b.len() - 1] {
            assert_eq!(PinContent::decode(&b[..cut]), None, "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[70] ^= 1;
        assert_eq!(PinContent::decode(&bad), None);
        let none = PinContent { image: None, ..p };
        assert_eq!(PinContent::decode(&none.encode()), Some(none));
    }

    #[test]
    fn a_pin_state_holds_its_slots_or_everything_while_pending() {
        let set = slot_set(&entries(5));
        assert_eq!(set, vec![1, 2, 4, 5], "zero entries hold no slot");
        let s = PinState {
            version: 1,
            pending: false,
            sets: vec![Arc::new(set)],
        };
        assert!(s.holds(4) && !s.holds(3));
        let p = PinState {
            pending: true,
            ..PinState::default()
        };
        assert!(p.holds(3) && !p.is_empty());
    }

    fn block(v: u8) -> Vec<u8> {
        vec![v; BLOCK]
    }

    /// The writer, on the crash-simulating backend, with pins in memory: a pinned map's
    /// slots are never handed out again (so its bytes never change), and once the pin is
    /// gone they are.
    #[test]
    fn the_writer_reuses_no_pinned_slot_and_reuses_them_once_unpinned() {
        let dir = MemDir::new();
        let pins = Arc::new(MemPins::default());
        let mut d = Delta::create(Arc::new(dir.clone()), "t".into()).unwrap();
        d.set_pins(pins.clone()).unwrap();
        d.set_compaction_threshold(256);
        for b in 0..8u64 {
            d.write(b, &block(b as u8 + 1)).unwrap();
        }
        d.flush().unwrap();
        let pinned = d.entries();
        pins.set(false, &[&pinned]);
        let set = slot_set(&pinned);
        for round in 0..20u8 {
            for b in 0..8u64 {
                d.write(b, &block(100 + round)).unwrap();
                let s = d.slot_of(b).unwrap();
                assert!(set.binary_search(&s).is_err(), "slot {s} reused");
            }
            d.flush().unwrap();
        }
        assert!(d.held_slots() >= 8);
        // The pinned map still reads its own bytes through a frozen delta.
        let frozen = Delta::frozen(
            Arc::new(dir.clone()),
            dir.open(DATA_FILE).unwrap(),
            "snap".into(),
            &pinned,
        );
        let mut buf = block(0);
        let mut below = Vec::new();
        for b in 0..8u64 {
            frozen
                .read(b, &mut buf, &mut below, crate::store::Wait::Yes)
                .unwrap();
            assert_eq!(buf, block(b as u8 + 1));
        }
        pins.set(false, &[]);
        d.write(0, &block(1)).unwrap();
        d.flush().unwrap();
        assert_eq!(
            d.held_slots(),
            0,
            "released at the first commit after the unpin"
        );
        let mut reused = false;
        for b in 0..8u64 {
            d.write(b, &block(7)).unwrap();
            reused |= set.binary_search(&d.slot_of(b).unwrap()).is_ok();
        }
        assert!(reused, "the freed slots are used again");
    }

    #[test]
    fn a_pending_pin_holds_every_freed_slot_even_at_open() {
        let dir = MemDir::new();
        let pins = Arc::new(MemPins::default());
        let mut d = Delta::create(Arc::new(dir.clone()), "t".into()).unwrap();
        d.set_pins(pins.clone()).unwrap();
        for b in 0..4u64 {
            d.write(b, &block(1)).unwrap();
        }
        d.flush().unwrap();
        let before = d.entries();
        pins.set(true, &[]);
        for b in 0..4u64 {
            d.write(b, &block(2)).unwrap();
        }
        d.flush().unwrap();
        assert_eq!(d.held_slots(), 4);
        drop(d);
        // A writer opening now holds all free slots too: among them the 4 an earlier
        // writer freed after the pending snapshot may have read its map.
        let mut d = Delta::open(Arc::new(dir.clone()), "t".into()).unwrap();
        d.set_pins(pins.clone()).unwrap();
        assert_eq!(d.held_slots(), 4);
        for b in 0..4u64 {
            d.write(b, &block(3)).unwrap();
            let s = d.slot_of(b).unwrap();
            assert!(before.iter().all(|e| e.slot != s));
        }
    }

    /// Power cuts while pins come and go: the volume always reopens to a flush point, and
    /// a pinned map's bytes stay readable and unchanged until the cut.
    #[test]
    fn power_cuts_with_pins_leave_the_volume_at_a_flush_point() {
        for seed in 0..40u64 {
            let dir = MemDir::new();
            let pins = Arc::new(MemPins::default());
            let mut d = Delta::create(Arc::new(dir.clone()), "t".into()).unwrap();
            d.set_pins(pins.clone()).unwrap();
            d.set_compaction_threshold(200);
            let mut durable = vec![0u8; 16];
            let mut live = durable.clone();
            let mut pinned: Option<(Vec<MapEntry>, Vec<u8>)> = None;
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut rnd = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let cut_at = 5 + rnd(60);
            let mut step = 0;
            let crashed = loop {
                step += 1;
                if step == cut_at {
                    dir.cut_power_after(rnd(4) as i64);
                }
                let b = rnd(16);
                let v = rnd(250) as u8 + 1;
                if d.write(b, &block(v)).is_err() {
                    break true;
                }
                live[b as usize] = v;
                if rnd(3) == 0 {
                    if d.flush().is_err() {
                        break true;
                    }
                    durable = live.clone();
                    match rnd(4) {
                        0 => {
                            let e = d.entries();
                            pins.set(false, &[&e]);
                            pinned = Some((e, durable.clone()));
                        }
                        1 => {
                            pins.set(false, &[]);
                            pinned = None;
                        }
                        _ => {}
                    }
                }
                if let Some((e, want)) = &pinned {
                    let f = Delta::frozen(
                        Arc::new(dir.clone()),
                        dir.open(DATA_FILE).unwrap(),
                        "snap".into(),
                        e,
                    );
                    let mut buf = block(0);
                    let mut below = Vec::new();
                    for (blk, &v) in want.iter().enumerate() {
                        below.clear();
                        f.read(blk as u64, &mut buf, &mut below, crate::store::Wait::Yes)
                            .unwrap();
                        let got = if below.is_empty() { buf[0] } else { 0 };
                        assert_eq!(got, v, "seed {seed}: pinned block {blk} changed");
                    }
                }
                if step > 200 {
                    break false;
                }
            };
            if !crashed {
                continue;
            }
            let after = dir.crash(seed);
            let d = Delta::open(Arc::new(after), "t".into()).unwrap();
            let mut buf = block(0);
            let mut got = vec![0u8; 16];
            for (blk, g) in got.iter_mut().enumerate() {
                let mut below = Vec::new();
                d.read(blk as u64, &mut buf, &mut below, crate::store::Wait::Yes)
                    .unwrap();
                *g = if below.is_empty() { buf[0] } else { 0 };
            }
            // The cut came during a write or a flush: the state is the last flush, or the
            // one being made (everything written since).
            assert!(
                got == durable || got == live,
                "seed {seed}: reopened to neither flush point"
            );
        }
    }

    /// Real files, a writer thread committing (and compacting) as fast as it can, and
    /// snapshots taken meanwhile: each is exactly one flush point's state, and stays so
    /// while the writer goes on reusing slots.
    #[test]
    fn snapshots_of_a_busy_compacting_writer_are_flush_points_and_stay_put() {
        use std::sync::atomic::AtomicBool;
        const BLOCKS: u64 = 64;
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        let mut d = Delta::create(Arc::new(FsDir::new(&dir)), "v".into()).unwrap();
        d.set_pins(Arc::new(PinDir::new(dir.join(PINS_DIR))))
            .unwrap();
        d.set_compaction_threshold(2048);
        let v = Arc::new(Volume::new("v", BLOCKS * BLOCK as u64, None, d, false));
        let history = Arc::new(Mutex::new(vec![vec![0u64; BLOCKS as usize]]));
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (v, history, stop) = (v.clone(), history.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut state = vec![0u64; BLOCKS as usize];
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..5 {
                        n += 1;
                        let b = (n * 7919) % BLOCKS;
                        let mut buf = vec![(n % 251) as u8; BLOCK];
                        buf[..8].copy_from_slice(&n.to_le_bytes());
                        v.write_at(&buf, b * BLOCK as u64).unwrap();
                        state[b as usize] = n;
                    }
                    // Recorded before the flush: a snapshot may see a commit whose flush
                    // has not returned yet.
                    history.lock().push(state.clone());
                    v.flush().unwrap();
                }
            })
        };
        let read = |s: &Snapshot| -> Vec<u64> {
            let mut buf = vec![0u8; BLOCK];
            (0..BLOCKS)
                .map(|b| {
                    s.read_at(&mut buf, b * BLOCK as u64).unwrap();
                    let n = u64::from_le_bytes(buf[..8].try_into().unwrap());
                    if n != 0 {
                        assert!(buf[8..].iter().all(|&x| x == (n % 251) as u8), "torn block");
                    }
                    n
                })
                .collect()
        };
        let mut kept = Vec::new();
        let mut seen = Vec::new();
        for i in 0..60 {
            let s = Snapshot::take(&dir, "v", BLOCKS * BLOCK as u64, None).unwrap();
            let state = read(&s);
            seen.push(state.clone());
            if i % 10 == 0 {
                kept.push((s, state));
            }
        }
        // Let the writer churn through every block many times while pins are held.
        let until = history.lock().len() + 400;
        while history.lock().len() < until {
            std::thread::yield_now();
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        let history = history.lock();
        for (i, st) in seen.iter().enumerate() {
            assert!(history.contains(st), "snapshot {i} is no flush point");
        }
        for (s, st) in &kept {
            assert_eq!(&read(s), st, "a held snapshot changed");
        }
        drop(kept);
        let left: Vec<_> = fs::read_dir(dir.join(PINS_DIR)).unwrap().collect();
        assert!(left.is_empty(), "dropped snapshots leave no pin");
    }
}
