//! The one cache of golden-image chunks shared by every volume of a process.
//!
//! A hundred clones booting at once read the same image chunks; the first reader verifies a
//! chunk's checksum and inserts it here, the other ninety-nine copy from memory. The cache is
//! split into shards, each under its own short lock, so readers of different chunks rarely
//! meet. It holds `Bytes` so a hit can be handed out without copying.
//!
//! Eviction is CLOCK (second chance), an approximation of LRU whose hit only sets a flag: a
//! true LRU relinks a list node on every hit, and with hundreds of thousands of chunks
//! those pointer chases were 17% of the server's CPU in a 16-session boot storm.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use rustc_hash::FxHashMap;

/// Key of a cached chunk: (process-local image id, chunk index).
pub type ChunkKey = (u64, u64);

/// Shards: enough that two cores never wait on each other in practice.
const SHARDS: usize = 16;

/// Stripes of the single-flight locks taken while a missing chunk is loaded.
const LOAD_STRIPES: usize = 64;

/// One shard: chunks in a ring of slots that a clock hand sweeps when room is needed,
/// sparing (once) each chunk read since the hand last passed.
struct Shard {
    index: FxHashMap<ChunkKey, usize>,
    slots: Vec<Slot>,
    hand: usize,
    capacity: usize,
}

struct Slot {
    key: ChunkKey,
    chunk: Bytes,
    referenced: bool,
}

impl Shard {
    fn new(capacity: usize) -> Shard {
        Shard {
            index: FxHashMap::default(),
            slots: Vec::new(),
            hand: 0,
            capacity,
        }
    }

    /// A cached chunk, marked as read since the hand last passed.
    fn get(&mut self, key: &ChunkKey) -> Option<&Bytes> {
        let i = *self.index.get(key)?;
        let s = &mut self.slots[i];
        s.referenced = true;
        Some(&s.chunk)
    }

    fn put(&mut self, key: ChunkKey, chunk: Bytes) {
        if let Some(&i) = self.index.get(&key) {
            self.slots[i].chunk = chunk;
            return;
        }
        let slot = Slot {
            key,
            chunk,
            referenced: false,
        };
        if self.slots.len() < self.capacity {
            self.index.insert(key, self.slots.len());
            self.slots.push(slot);
            return;
        }
        while self.slots[self.hand].referenced {
            self.slots[self.hand].referenced = false;
            self.hand = (self.hand + 1) % self.slots.len();
        }
        let old = std::mem::replace(&mut self.slots[self.hand], slot);
        self.index.remove(&old.key);
        self.index.insert(key, self.hand);
        self.hand = (self.hand + 1) % self.slots.len();
    }

    fn retain(&mut self, keep: impl Fn(&ChunkKey) -> bool) {
        self.slots.retain(|s| keep(&s.key));
        self.index.clear();
        for (i, s) in self.slots.iter().enumerate() {
            self.index.insert(s.key, i);
        }
        self.hand = 0;
    }
}

pub struct ChunkCache {
    shards: Vec<Mutex<Shard>>,
    /// A chunk missing from the cache is loaded by one reader while the others of the same
    /// chunk wait for it, so a boot storm reads each chunk from disk once.
    loading: Vec<Mutex<()>>,
    hasher: rustc_hash::FxBuildHasher,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl ChunkCache {
    /// A cache holding up to `capacity_bytes` of chunks of `chunk_size` bytes. Zero disables it.
    pub fn new(capacity_bytes: u64, chunk_size: usize) -> ChunkCache {
        let per_shard = (capacity_bytes / chunk_size as u64 / SHARDS as u64) as usize;
        let shards = match per_shard {
            0 => Vec::new(),
            n => (0..SHARDS).map(|_| Mutex::new(Shard::new(n))).collect(),
        };
        ChunkCache {
            shards,
            loading: (0..LOAD_STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: rustc_hash::FxBuildHasher,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.shards.is_empty()
    }

    fn hash(&self, key: &ChunkKey) -> usize {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        std::hash::Hasher::finish(&h) as usize
    }

    fn shard(&self, key: &ChunkKey) -> &Mutex<Shard> {
        &self.shards[self.hash(key) % self.shards.len()]
    }

    /// A cached chunk (tests; readers use `copy_out`).
    #[cfg(test)]
    fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        if !self.enabled() {
            return None;
        }
        self.shard(key).lock().get(key).cloned()
    }

    /// Copies bytes `within..within + out.len()` of a cached chunk into `out`, counting the
    /// hit; false if the chunk is not cached. Copying under the shard lock costs less than
    /// handing out a reference (two atomic updates of a count other cores also touch).
    pub fn copy_out(&self, key: &ChunkKey, within: usize, out: &mut [u8]) -> bool {
        if !self.enabled() {
            return false;
        }
        let mut g = self.shard(key).lock();
        let Some(chunk) = g.get(key) else {
            return false;
        };
        out.copy_from_slice(&chunk[within..within + out.len()]);
        drop(g);
        self.hits.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Whether a chunk is cached, without touching its recency or the counters.
    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.enabled() && self.shard(key).lock().index.contains_key(key)
    }

    /// The lock one loader of a group of chunks holds while it reads them from disk: the
    /// other readers of that group wait for it and then find the chunks cached, so a boot
    /// storm reads each chunk once. `group` is any key that names the group.
    pub fn loading(&self, group: &ChunkKey) -> MutexGuard<'_, ()> {
        self.loading[self.hash(group) % LOAD_STRIPES].lock()
    }

    /// `loading`, unless another reader holds the lock.
    pub fn try_loading(&self, group: &ChunkKey) -> Option<MutexGuard<'_, ()>> {
        self.loading[self.hash(group) % LOAD_STRIPES].try_lock()
    }

    /// Counts chunks loaded from the image's files.
    pub fn count_loads(&self, n: u64) {
        self.misses.fetch_add(n, Ordering::Relaxed);
    }

    /// Chunks served from memory, and chunks loaded from the image's files.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    pub fn insert(&self, key: ChunkKey, chunk: Bytes) {
        if self.enabled() {
            self.shard(&key).lock().put(key, chunk);
        }
    }

    /// Drops every chunk of one image (when the image is closed or removed).
    pub fn forget_image(&self, image: u64) {
        for sh in &self.shards {
            sh.lock().retain(|k| k.0 != image);
        }
    }

    /// Number of chunks held (for tests and stats).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().slots.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_capacity_and_keeps_the_newest() {
        let c = ChunkCache::new(16 * 4 * 8, 8); // 4 per shard
        for i in 0..1000u64 {
            c.insert((1, i), Bytes::from(vec![i as u8; 8]));
        }
        assert_eq!(c.len(), 64);
        assert_eq!(c.get(&(1, 999)).unwrap()[0], 999u64 as u8);
    }

    #[test]
    fn a_chunk_read_since_the_hand_passed_survives_the_next_eviction() {
        let mut s = Shard::new(3);
        for k in 0..3u64 {
            s.put((1, k), Bytes::from(vec![k as u8]));
        }
        assert!(s.get(&(1, 0)).is_some());
        s.put((1, 3), Bytes::from_static(b"3")); // evicts 1, not the recently read 0
        assert!(s.get(&(1, 0)).is_some());
        assert!(s.get(&(1, 1)).is_none());
        assert!(s.get(&(1, 2)).is_some());
        assert!(s.get(&(1, 3)).is_some());
        s.put((1, 4), Bytes::from_static(b"4")); // everything was read: a full sweep
        assert_eq!(s.slots.len(), 3);
        assert_eq!(s.index.len(), 3);
        assert!(s.get(&(1, 4)).is_some());
    }

    #[test]
    fn zero_capacity_disables() {
        let c = ChunkCache::new(0, 65536);
        c.insert((1, 1), Bytes::from_static(b"x"));
        assert!(c.get(&(1, 1)).is_none());
    }

    #[test]
    fn forget_image_drops_only_that_image() {
        let c = ChunkCache::new(1 << 20, 8);
        c.insert((1, 1), Bytes::from_static(b"a"));
        c.insert((2, 1), Bytes::from_static(b"b"));
        c.insert((1, 2), Bytes::from_static(b"c"));
        c.forget_image(1);
        assert!(c.get(&(1, 1)).is_none());
        assert!(c.get(&(1, 2)).is_none());
        assert_eq!(c.get(&(2, 1)).unwrap(), Bytes::from_static(b"b"));
        c.insert((1, 1), Bytes::from_static(b"d"));
        assert_eq!(c.get(&(1, 1)).unwrap(), Bytes::from_static(b"d"));
    }
}
