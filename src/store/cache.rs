//! The one cache of golden-image chunks shared by every volume of a process.
//!
//! A hundred clones booting at once read the same image chunks; the first reader verifies a
//! chunk's checksum and inserts it here, the other ninety-nine copy from memory. The cache is
//! split into shards, each an LRU under its own short lock, so readers of different chunks
//! rarely meet. It holds `Bytes` so a hit can be handed out without copying.

use std::hash::{BuildHasher, Hash};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use lru::LruCache;
use parking_lot::{Mutex, MutexGuard};

/// Key of a cached chunk: (process-local image id, chunk index).
pub type ChunkKey = (u64, u64);

/// Shards: enough that two cores never wait on each other in practice.
const SHARDS: usize = 16;

/// Stripes of the single-flight locks taken while a missing chunk is loaded.
const LOAD_STRIPES: usize = 64;

pub struct ChunkCache {
    shards: Vec<Mutex<LruCache<ChunkKey, Bytes>>>,
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
        let shards = match NonZeroUsize::new(per_shard) {
            Some(n) => (0..SHARDS).map(|_| Mutex::new(LruCache::new(n))).collect(),
            None => Vec::new(),
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

    fn shard(&self, key: &ChunkKey) -> &Mutex<LruCache<ChunkKey, Bytes>> {
        &self.shards[self.hash(key) % self.shards.len()]
    }

    fn lookup(&self, key: &ChunkKey) -> Option<Bytes> {
        if !self.enabled() {
            return None;
        }
        self.shard(key).lock().get(key).cloned()
    }

    /// Looks a chunk up, counting the hit.
    pub fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        let b = self.lookup(key);
        if b.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
        b
    }

    /// Whether a chunk is cached, without touching its recency or the counters.
    pub fn contains(&self, key: &ChunkKey) -> bool {
        self.enabled() && self.shard(key).lock().contains(key)
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
        for s in &self.shards {
            let mut g = s.lock();
            let keys: Vec<ChunkKey> = g
                .iter()
                .filter(|(k, _)| k.0 == image)
                .map(|(k, _)| *k)
                .collect();
            for k in keys {
                g.pop(&k);
            }
        }
    }

    /// Number of chunks held (for tests and stats).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_capacity() {
        let c = ChunkCache::new(16 * 4 * 8, 8); // 4 per shard
        for i in 0..1000u64 {
            c.insert((1, i), Bytes::from(vec![i as u8; 8]));
        }
        assert!(c.len() <= 64);
        assert_eq!(c.get(&(1, 999)).unwrap()[0], 999u64 as u8);
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
        c.forget_image(1);
        assert!(c.get(&(1, 1)).is_none());
        assert!(c.get(&(2, 1)).is_some());
    }
}
