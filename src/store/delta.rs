//! A volume's delta layer: the map from virtual blocks to data slots, the allocation of
//! slots, and the commit protocol that makes flushes atomic (described, with the byte
//! layouts, in `format.rs`).
//!
//! `Delta` is single-writer state: `&self` reads, `&mut self` writes, discards and flushes.
//! The caller (`volume.rs`) holds it under a read-write lock. It knows nothing of images;
//! blocks it has no entry for are reported back for the caller to read from below.

use std::io;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use super::backend::{StoreDir, StoreFile};
use super::error::{Result, StoreError};
use super::format::{
    Batch, BatchKind, HeaderError, MapEntry, MapHeader, BLOCK, FORMAT_VERSION, MAP_HEADER_LEN,
    UNMAPPED_SLOT, ZERO_SLOT,
};
use super::pins::PinSource;

pub const DATA_FILE: &str = "data";
pub const MAP_FILES: [&str; 2] = ["map.0", "map.1"];
/// The log is folded into a new snapshot once it is larger than this and than twice the
/// snapshot: replay on open stays proportional to the map, not to the volume's history.
const COMPACT_MIN_BYTES: u64 = 4 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    slot: u32,
    crc: u32,
}

/// Whether a read may wait for the disk (`No`: it fails with `StoreError::WouldBlock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Yes,
    No,
}

/// A run of the request that the delta does not hold: (byte offset in the buffer, length).
pub type BaseRange = (usize, usize);

pub struct Delta {
    dir: Arc<dyn StoreDir>,
    data: Arc<dyn StoreFile>,
    /// Who this is, for messages: `volume "web-01"`.
    label: String,
    map: FxHashMap<u64, Slot>,
    /// Blocks changed since the last durable commit. Their slots are not referenced by the
    /// durable map, so they may be freed at once when superseded.
    dirty: FxHashSet<u64>,
    /// Slots reusable now.
    free: Vec<u32>,
    /// Slots the durable map still references but the live map no longer does: reusable once
    /// the next commit is durable.
    pending_free: Vec<u32>,
    /// Slots at or beyond this index have never been handed out.
    next_slot: u32,
    active: usize,
    generation: u64,
    sequence: u64,
    /// Append position in the active map file.
    map_len: u64,
    /// Size of the active file's snapshot batch.
    snapshot_len: u64,
    /// Log size below which no compaction happens (see COMPACT_MIN_BYTES).
    compact_min: u64,
    /// Set when a commit failed: its fate on disk is unknown, so no more commits.
    failed: Option<String>,
    /// The snapshots of this volume that pin committed maps (see `snapshot.rs`): asked
    /// before a slot is handed back for reuse. `None`: nobody can pin (tests, read-only).
    pins: Option<Arc<dyn PinSource>>,
    /// Slots no map of ours references any more but a pinned map may: neither free nor
    /// used, until the pins that hold them go.
    held: Vec<u32>,
    /// The pin state `held` was last sorted against.
    held_version: u64,
}

/// Where the map files stand after a commit.
#[derive(Debug, Clone, Copy)]
struct CommitState {
    active: usize,
    generation: u64,
    sequence: u64,
    map_len: u64,
    snapshot_len: u64,
}

/// A cut set of changes on its way to disk (see `Delta::begin_commit`). Writing it needs no
/// lock on the delta: it only syncs the data file and writes its own bytes to a map file.
pub struct Commit {
    dir: Arc<dyn StoreDir>,
    data: Arc<dyn StoreFile>,
    file: usize,
    /// Append position for a log batch; `None` for a compaction (rewrites the file).
    offset: Option<u64>,
    bytes: Vec<u8>,
    /// Slots that become free once this commit is durable.
    freed: Vec<u32>,
    after: CommitState,
}

impl Commit {
    /// Step 2: data first, then the map record that points at it (see format.rs).
    pub fn write(&self) -> Result<()> {
        let at = |f: &str| self.dir.describe().join(f);
        self.data
            .sync()
            .map_err(|e| StoreError::io("syncing", at(DATA_FILE), e))?;
        let name = MAP_FILES[self.file];
        let f = self
            .dir
            .open(name)
            .map_err(|e| StoreError::io("opening", at(name), e))?;
        match self.offset {
            Some(off) => f.write_at(&self.bytes, off),
            None => f.set_len(0).and_then(|_| f.write_at(&self.bytes, 0)),
        }
        .and_then(|_| f.sync())
        .map_err(|e| StoreError::io("committing to", at(name), e))
    }
}

impl Delta {
    fn io_err(&self, action: &'static str, file: &str, e: io::Error) -> StoreError {
        StoreError::io(action, self.dir.describe().join(file), e)
    }

    /// Creates an empty delta in `dir`.
    pub fn create(dir: Arc<dyn StoreDir>, label: String) -> Result<Delta> {
        let at = |f: &str| dir.describe().join(f);
        let data = dir
            .open(DATA_FILE)
            .map_err(|e| StoreError::io("creating", at(DATA_FILE), e))?;
        let mut d = Delta {
            dir,
            data,
            label,
            map: FxHashMap::default(),
            dirty: FxHashSet::default(),
            free: Vec::new(),
            pending_free: Vec::new(),
            next_slot: 0,
            active: 1,
            generation: 0,
            sequence: 0,
            map_len: 0,
            snapshot_len: 0,
            compact_min: COMPACT_MIN_BYTES,
            failed: None,
            pins: None,
            held: Vec::new(),
            held_version: 0,
        };
        // The first commit: generation 1, an empty snapshot, into map.0.
        let c = d.snapshot_commit(Vec::new());
        let r = c.write();
        d.finish_commit(c, r)?;
        Ok(d)
    }

    /// Opens the delta in `dir` at its last durable commit.
    pub fn open(dir: Arc<dyn StoreDir>, label: String) -> Result<Delta> {
        let data = dir
            .open(DATA_FILE)
            .map_err(|e| StoreError::io("opening", dir.describe().join(DATA_FILE), e))?;
        Self::open_with_data(dir, data, label)
    }

    /// Opens the delta in `dir` whose data file the caller has opened already (the
    /// repository does, to lock it before anything is read).
    pub fn open_with_data(
        dir: Arc<dyn StoreDir>,
        data: Arc<dyn StoreFile>,
        label: String,
    ) -> Result<Delta> {
        let at = |f: &str| dir.describe().join(f);
        // Pick the map file with the highest generation whose header and snapshot are whole.
        let mut best: Option<(u64, usize, Vec<u8>)> = None;
        for (i, name) in MAP_FILES.iter().enumerate() {
            let f = match dir.open(name) {
                Ok(f) => f,
                // A read-only open creates nothing: a map file never written yet (map.1
                // before the first compaction) is simply not a candidate.
                Err(e) if e.kind() == io::ErrorKind::NotFound && dir.is_read_only() => continue,
                Err(e) => return Err(StoreError::io("opening", at(name), e)),
            };
            let len = f
                .len()
                .map_err(|e| StoreError::io("reading", at(name), e))?;
            let mut bytes = vec![0u8; len as usize];
            f.read_at(&mut bytes, 0)
                .map_err(|e| StoreError::io("reading", at(name), e))?;
            let header = match MapHeader::decode(&bytes) {
                Ok(h) => h,
                Err(HeaderError::NewerVersion(v)) => {
                    return Err(StoreError::NewerFormat {
                        path: at(name),
                        found: v,
                        supported: FORMAT_VERSION,
                    })
                }
                Err(_) => continue,
            };
            if header.block_size as usize != BLOCK {
                return Err(StoreError::Corrupt {
                    path: at(name),
                    detail: format!("block size {} is not {BLOCK}", header.block_size),
                });
            }
            let snapshot_ok = matches!(
                Batch::decode(&bytes[MAP_HEADER_LEN..]),
                Some((b, _)) if b.kind == BatchKind::Snapshot
                    && b.generation == header.generation && b.sequence == 0
            );
            if snapshot_ok && best.as_ref().is_none_or(|b| header.generation > b.0) {
                best = Some((header.generation, i, bytes));
            }
        }
        let Some((generation, active, bytes)) = best else {
            return Err(StoreError::Corrupt {
                path: dir.describe(),
                detail: "no valid delta map (map.0 and map.1 are both damaged)".into(),
            });
        };
        let data_len = data
            .len()
            .map_err(|e| StoreError::io("reading", at(DATA_FILE), e))?;
        let mut d = Delta {
            dir,
            data,
            label,
            map: FxHashMap::default(),
            dirty: FxHashSet::default(),
            free: Vec::new(),
            pending_free: Vec::new(),
            next_slot: 0,
            active,
            generation,
            sequence: 0,
            map_len: 0,
            snapshot_len: 0,
            compact_min: COMPACT_MIN_BYTES,
            failed: None,
            pins: None,
            held: Vec::new(),
            held_version: 0,
        };
        let mut pos = MAP_HEADER_LEN;
        while let Some((batch, len)) = Batch::decode(&bytes[pos..]) {
            let expected = if pos == MAP_HEADER_LEN {
                (BatchKind::Snapshot, 0)
            } else {
                (BatchKind::Log, d.sequence + 1)
            };
            if batch.generation != generation || (batch.kind, batch.sequence) != expected {
                break;
            }
            for e in &batch.entries {
                d.apply(e);
            }
            if batch.kind == BatchKind::Snapshot {
                d.snapshot_len = len as u64;
            }
            d.sequence = batch.sequence;
            pos += len;
        }
        d.map_len = pos as u64;
        if (bytes.len() as u64) > d.map_len && !d.dir.is_read_only() {
            // Cut a torn tail so the next append starts from known ground. A read-only
            // open leaves it: it writes nothing, and the next writer cuts it.
            let name = MAP_FILES[active];
            let f = d.dir.open(name).map_err(|e| d.io_err("opening", name, e))?;
            f.set_len(d.map_len)
                .and_then(|_| f.sync())
                .map_err(|e| d.io_err("truncating", name, e))?;
        }
        d.rebuild_free(data_len)?;
        Ok(d)
    }

    fn apply(&mut self, e: &MapEntry) {
        if e.slot == UNMAPPED_SLOT {
            self.map.remove(&e.block);
        } else {
            self.map.insert(
                e.block,
                Slot {
                    slot: e.slot,
                    crc: e.crc,
                },
            );
        }
    }

    /// Every slot below the high-water mark that the map does not reference is free.
    fn rebuild_free(&mut self, data_len: u64) -> Result<()> {
        let max_ref = self
            .map
            .values()
            .filter(|s| s.slot != ZERO_SLOT)
            .map(|s| s.slot as u64 + 1)
            .max()
            .unwrap_or(0);
        let high = max_ref.max(data_len.div_ceil(BLOCK as u64));
        let high = u32::try_from(high).map_err(|_| StoreError::Corrupt {
            path: self.dir.describe(),
            detail: "delta data file is larger than the format allows".into(),
        })?;
        // One bit per slot: a 16 TiB delta needs 512 MiB of bits, not 4 GiB of bools.
        let mut used = vec![0u64; (high as usize).div_ceil(64)];
        let is_used = |used: &[u64], s: u32| used[s as usize / 64] & (1 << (s % 64)) != 0;
        for s in self.map.values().filter(|s| s.slot != ZERO_SLOT) {
            if is_used(&used, s.slot) {
                return Err(StoreError::Corrupt {
                    path: self.dir.describe(),
                    detail: format!("delta map references slot {} twice", s.slot),
                });
            }
            used[s.slot as usize / 64] |= 1 << (s.slot % 64);
        }
        // Highest first, so pops hand out the lowest slots first.
        self.free = (0..high).rev().filter(|&s| !is_used(&used, s)).collect();
        self.next_slot = high;
        Ok(())
    }

    /// Fills the blocks of `buf` (starting at virtual block `first`) that the delta holds,
    /// and appends to `below` the ranges it does not hold, for the caller to read. With
    /// `Wait::No` it fails with `WouldBlock` rather than wait for the disk.
    pub fn read(
        &self,
        first: u64,
        buf: &mut [u8],
        below: &mut Vec<BaseRange>,
        wait: Wait,
    ) -> Result<()> {
        debug_assert_eq!(buf.len() % BLOCK, 0);
        let n = buf.len() / BLOCK;
        let mut i = 0;
        while i < n {
            match self.map.get(&(first + i as u64)) {
                None => {
                    let off = i * BLOCK;
                    match below.last_mut() {
                        Some((o, l)) if *o + *l == off => *l += BLOCK,
                        _ => below.push((off, BLOCK)),
                    }
                    i += 1;
                }
                Some(s) if s.slot == ZERO_SLOT => {
                    buf[i * BLOCK..(i + 1) * BLOCK].fill(0);
                    i += 1;
                }
                Some(s) => {
                    // Extend over blocks stored in consecutive slots: one read for the run.
                    let mut j = i + 1;
                    while j < n {
                        match self.map.get(&(first + j as u64)) {
                            Some(t)
                                if t.slot != ZERO_SLOT
                                    && t.slot.wrapping_sub(s.slot) == (j - i) as u32 =>
                            {
                                j += 1
                            }
                            _ => break,
                        }
                    }
                    let out = &mut buf[i * BLOCK..j * BLOCK];
                    let at = s.slot as u64 * BLOCK as u64;
                    match wait {
                        Wait::Yes => self.data.read_at(out, at),
                        Wait::No => self.data.read_at_nowait(out, at),
                    }
                    .map_err(|e| self.io_err("reading", DATA_FILE, e))?;
                    for (k, blk) in out.chunks_exact(BLOCK).enumerate() {
                        let block = first + (i + k) as u64;
                        let want = self.map[&block].crc;
                        if crc32fast::hash(blk) != want {
                            let offset = block * BLOCK as u64;
                            tracing::error!(what = %self.label, offset, "checksum mismatch in delta block");
                            return Err(StoreError::Checksum {
                                what: self.label.clone(),
                                offset,
                            });
                        }
                    }
                    i = j;
                }
            }
        }
        Ok(())
    }

    /// What the delta holds for `block`: `None` when it has no entry (what is below shows
    /// through), `Some(true)` for stored data, `Some(false)` for a zero entry (a discard
    /// hiding what is below).
    pub fn block_state(&self, block: u64) -> Option<bool> {
        self.map.get(&block).map(|s| s.slot != ZERO_SLOT)
    }

    /// Writes whole blocks starting at virtual block `first`. Never overwrites a slot the
    /// durable map references.
    pub fn write(&mut self, first: u64, data: &[u8]) -> Result<()> {
        debug_assert_eq!(data.len() % BLOCK, 0);
        let n = data.len() / BLOCK;
        let old_next = self.next_slot;
        // Large writes take a fresh contiguous run so they go down in one pwrite.
        let from_free = n < 16;
        let mut slots = Vec::with_capacity(n);
        for _ in 0..n {
            let reused = if from_free { self.free.pop() } else { None };
            let s = match reused {
                Some(s) => s,
                None => {
                    if self.next_slot >= ZERO_SLOT - 1 {
                        self.rollback(&slots, old_next);
                        return Err(StoreError::Failed(format!(
                            "{}: delta is full (the format holds at most 16 TiB of changed blocks)",
                            self.label
                        )));
                    }
                    self.next_slot += 1;
                    self.next_slot - 1
                }
            };
            slots.push(s);
        }
        let mut k = 0;
        while k < n {
            let mut j = k + 1;
            while j < n && slots[j] == slots[j - 1] + 1 {
                j += 1;
            }
            if let Err(e) = self
                .data
                .write_at(&data[k * BLOCK..j * BLOCK], slots[k] as u64 * BLOCK as u64)
            {
                self.rollback(&slots, old_next);
                return Err(self.io_err("writing", DATA_FILE, e));
            }
            k = j;
        }
        for (k, &slot) in slots.iter().enumerate() {
            let block = first + k as u64;
            let crc = crc32fast::hash(&data[k * BLOCK..(k + 1) * BLOCK]);
            let old = self.map.insert(block, Slot { slot, crc });
            self.release(block, old);
            self.dirty.insert(block);
        }
        Ok(())
    }

    /// Gives back slots taken by a write that failed.
    fn rollback(&mut self, slots: &[u32], old_next: u32) {
        self.free
            .extend(slots.iter().copied().filter(|&s| s < old_next));
        self.next_slot = old_next;
    }

    /// The slot of a superseded entry becomes free now if no durable map references it,
    /// else after the next commit.
    fn release(&mut self, block: u64, old: Option<Slot>) {
        if let Some(o) = old.filter(|o| o.slot != ZERO_SLOT) {
            if self.dirty.contains(&block) {
                self.free.push(o.slot);
            } else {
                self.pending_free.push(o.slot);
            }
        }
    }

    /// Drops `count` blocks from `first`. Blocks for which `mask` says true get a zero entry
    /// (they must hide what is below); the others simply lose their entry.
    pub fn discard(&mut self, first: u64, count: u64, mask: impl Fn(u64) -> bool) {
        for block in first..first + count {
            let old = if mask(block) {
                self.map.insert(
                    block,
                    Slot {
                        slot: ZERO_SLOT,
                        crc: 0,
                    },
                )
            } else {
                self.map.remove(&block)
            };
            let changed = old.is_some() || self.map.contains_key(&block);
            self.release(block, old);
            if changed {
                self.dirty.insert(block);
            }
        }
    }

    /// Makes every earlier write and discard durable, atomically. Holds `&mut self` for the
    /// whole commit; a caller that wants readers and writers to go on during the syncs uses
    /// `begin_commit` / `Commit::write` / `finish_commit` instead.
    pub fn flush(&mut self) -> Result<()> {
        match self.begin_commit()? {
            None => Ok(()),
            Some(c) => {
                let r = c.write();
                self.finish_commit(c, r)
            }
        }
    }

    /// Step 1 of a commit (under the volume's write lock, short): cuts the set of changes
    /// to commit and encodes it. From here on the cut blocks count as durable for slot
    /// reuse: a later write to one of them leaves its slot alone until the next commit.
    /// `None` when there is nothing to commit. Commits must not overlap (the caller
    /// serializes them).
    pub fn begin_commit(&mut self) -> Result<Option<Commit>> {
        if let Some(why) = &self.failed {
            return Err(StoreError::Failed(format!(
                "{}: an earlier flush failed ({why}); reopen the volume",
                self.label
            )));
        }
        if self.dirty.is_empty() && self.pending_free.is_empty() {
            return Ok(None);
        }
        let log_len = self.map_len - MAP_HEADER_LEN as u64 - self.snapshot_len;
        let batch_len = Batch::encoded_len(self.dirty.len()) as u64;
        let snapshot_len = Batch::encoded_len(self.map.len()) as u64;
        let freed = std::mem::take(&mut self.pending_free);
        let c = if log_len + batch_len > self.compact_min.max(2 * snapshot_len) {
            self.snapshot_commit(freed)
        } else {
            self.log_commit(freed)
        };
        self.dirty.clear();
        Ok(Some(c))
    }

    /// A commit that writes the whole map as a new generation into the inactive map file.
    fn snapshot_commit(&self, freed: Vec<u32>) -> Commit {
        let generation = self.generation + 1;
        let mut bytes = Vec::with_capacity(MAP_HEADER_LEN + Batch::encoded_len(self.map.len()));
        bytes.extend_from_slice(
            &MapHeader {
                block_size: BLOCK as u32,
                generation,
            }
            .encode(),
        );
        let entries = self.map.iter().map(|(&block, s)| MapEntry {
            block,
            slot: s.slot,
            crc: s.crc,
        });
        Batch::encode_into(BatchKind::Snapshot, generation, 0, entries, &mut bytes);
        let after = CommitState {
            active: 1 - self.active,
            generation,
            sequence: 0,
            map_len: bytes.len() as u64,
            snapshot_len: (bytes.len() - MAP_HEADER_LEN) as u64,
        };
        self.commit(after.active, None, bytes, freed, after)
    }

    /// A commit that appends the changed blocks as one log batch to the active map file.
    fn log_commit(&self, freed: Vec<u32>) -> Commit {
        let entries = self.dirty.iter().map(|&block| match self.map.get(&block) {
            Some(s) => MapEntry {
                block,
                slot: s.slot,
                crc: s.crc,
            },
            None => MapEntry {
                block,
                slot: UNMAPPED_SLOT,
                crc: 0,
            },
        });
        let mut bytes = Vec::with_capacity(Batch::encoded_len(self.dirty.len()));
        let sequence = self.sequence + 1;
        Batch::encode_into(
            BatchKind::Log,
            self.generation,
            sequence,
            entries,
            &mut bytes,
        );
        let after = CommitState {
            sequence,
            map_len: self.map_len + bytes.len() as u64,
            ..self.state()
        };
        self.commit(self.active, Some(self.map_len), bytes, freed, after)
    }

    fn state(&self) -> CommitState {
        CommitState {
            active: self.active,
            generation: self.generation,
            sequence: self.sequence,
            map_len: self.map_len,
            snapshot_len: self.snapshot_len,
        }
    }

    fn commit(
        &self,
        file: usize,
        offset: Option<u64>,
        bytes: Vec<u8>,
        freed: Vec<u32>,
        after: CommitState,
    ) -> Commit {
        Commit {
            dir: self.dir.clone(),
            data: self.data.clone(),
            file,
            offset,
            bytes,
            freed,
            after,
        }
    }

    /// Step 3 (under the write lock again): records the outcome of `Commit::write`. On
    /// success the slots the commit superseded become free. On failure the delta refuses
    /// further commits: whether the commit reached the disk is unknown, so no slot it
    /// might reference can be reused safely; reopening decides from what is on disk.
    pub fn finish_commit(&mut self, c: Commit, outcome: Result<()>) -> Result<()> {
        match outcome {
            Ok(()) => {
                let a = c.after;
                self.active = a.active;
                self.generation = a.generation;
                self.sequence = a.sequence;
                self.map_len = a.map_len;
                self.snapshot_len = a.snapshot_len;
                self.reclaim(c.freed);
                Ok(())
            }
            Err(e) => {
                tracing::error!(what = %self.label, error = %e, "flush failed; the volume must be reopened");
                self.failed = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// After a durable commit: slots it superseded are free (unless a snapshot pins them);
    /// give their space back.
    fn reclaim(&mut self, freed: Vec<u32>) {
        let mut freed = self.unpinned(freed);
        freed.sort_unstable();
        let mut i = 0;
        while i < freed.len() {
            let mut j = i + 1;
            while j < freed.len() && freed[j] == freed[j - 1] + 1 {
                j += 1;
            }
            let (off, len) = (
                freed[i] as u64 * BLOCK as u64,
                (j - i) as u64 * BLOCK as u64,
            );
            if let Err(e) = self.data.punch_hole(off, len) {
                tracing::debug!(what = %self.label, error = %e, "could not punch freed blocks");
            }
            i = j;
        }
        self.free.extend(freed.into_iter().rev());
    }

    /// Of `freed` and the slots held so far, those no pin holds now; the others are kept in
    /// `held`. Asked at every reclaim that has something to give back, so a writer that
    /// opened the volume before a snapshot was taken learns of it before it reuses a slot.
    /// When the pins cannot be read, nothing is given back (a full disk is better than a
    /// snapshot's blocks overwritten).
    fn unpinned(&mut self, mut freed: Vec<u32>) -> Vec<u32> {
        let Some(pins) = &self.pins else {
            return freed;
        };
        if freed.is_empty() && self.held.is_empty() {
            return freed;
        }
        let state = match pins.current() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(what = %self.label, error = %e, "cannot read the snapshot pins; keeping freed blocks");
                self.held.append(&mut freed);
                return freed;
            }
        };
        if state.version != self.held_version {
            freed.append(&mut self.held);
            self.held_version = state.version;
        }
        if state.is_empty() {
            return freed;
        }
        let (hold, free): (Vec<u32>, Vec<u32>) = freed.into_iter().partition(|&s| state.holds(s));
        self.held.extend(hold);
        free
    }

    /// Makes the writer honour the snapshots' pins from now on (see `snapshot.rs`). Called
    /// by the repository on every writable open: slots the map does not reference but a
    /// live pin does are taken out of the free list. With a pin still being taken (its map
    /// not yet written), every free slot is held: that snapshot may be reading a map an
    /// earlier writer committed and freed slots after.
    pub fn set_pins(&mut self, pins: Arc<dyn PinSource>) -> Result<()> {
        let state = pins
            .current()
            .map_err(|e| StoreError::io("reading the snapshot pins of", self.dir.describe(), e))?;
        self.held_version = state.version;
        if !state.is_empty() {
            let free = std::mem::take(&mut self.free);
            let (hold, free): (Vec<u32>, Vec<u32>) =
                free.into_iter().partition(|&s| state.holds(s));
            self.free = free;
            self.held = hold;
        }
        self.pins = Some(pins);
        Ok(())
    }

    /// Which map file holds the state this delta was opened at, its generation and its
    /// last log sequence number (a snapshot checks the file still has that generation).
    pub fn committed(&self) -> (usize, u64, u64) {
        (self.active, self.generation, self.sequence)
    }

    /// Every entry of the map, in no particular order.
    pub fn entries(&self) -> Vec<MapEntry> {
        self.map
            .iter()
            .map(|(&block, s)| MapEntry {
                block,
                slot: s.slot,
                crc: s.crc,
            })
            .collect()
    }

    /// A delta that is exactly `entries` over the data file `data`, for reading only: a
    /// snapshot's view of a committed map (it never writes, flushes or allocates).
    pub fn frozen(
        dir: Arc<dyn StoreDir>,
        data: Arc<dyn StoreFile>,
        label: String,
        entries: &[MapEntry],
    ) -> Delta {
        let mut d = Delta {
            dir,
            data,
            label,
            map: FxHashMap::default(),
            dirty: FxHashSet::default(),
            free: Vec::new(),
            pending_free: Vec::new(),
            next_slot: 0,
            active: 0,
            generation: 0,
            sequence: 0,
            map_len: 0,
            snapshot_len: 0,
            compact_min: COMPACT_MIN_BYTES,
            failed: Some("a snapshot never commits".into()),
            pins: None,
            held: Vec::new(),
            held_version: 0,
        };
        d.map.reserve(entries.len());
        for e in entries {
            d.apply(e);
        }
        d
    }

    /// The data slot block `block` is stored in, if any (for tests of slot reuse).
    pub fn slot_of(&self, block: u64) -> Option<u32> {
        self.map
            .get(&block)
            .map(|s| s.slot)
            .filter(|&s| s != ZERO_SLOT)
    }

    /// Slots held for snapshots now (for tests and stats).
    pub fn held_slots(&self) -> usize {
        self.held.len()
    }

    /// Sets the log size below which flushes never compact (tests use small values to
    /// exercise compaction often).
    pub fn set_compaction_threshold(&mut self, bytes: u64) {
        self.compact_min = bytes;
    }

    /// Whether there are changes not yet made durable.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }
}
