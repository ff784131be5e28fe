//! The one cache of golden-image chunks shared by every volume of a process.
//!
//! A hundred clones booting at once read the same image chunks; the first reader verifies a
//! chunk's checksum and inserts it here, the other ninety-nine copy from memory. The cache is
//! split into shards, each an LRU under its own short lock, so readers of different chunks
//! rarely meet. It holds `Bytes` so a hit can be handed out without copying.

use std::hash::{BuildHasher, Hash};
use std::num::NonZeroUsize;

use bytes::Bytes;
use lru::LruCache;
use parking_lot::Mutex;

/// Key of a cached chunk: (process-local image id, chunk index).
pub type ChunkKey = (u64, u64);

/// Shards: enough that two cores never wait on each other in practice.
const SHARDS: usize = 16;

pub struct ChunkCache {
    shards: Vec<Mutex<LruCache<ChunkKey, Bytes>>>,
    hasher: rustc_hash::FxBuildHasher,
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
            hasher: rustc_hash::FxBuildHasher,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.shards.is_empty()
    }

    fn shard(&self, key: &ChunkKey) -> &Mutex<LruCache<ChunkKey, Bytes>> {
        let mut h = self.hasher.build_hasher();
        key.hash(&mut h);
        let i = std::hash::Hasher::finish(&h) as usize % self.shards.len();
        &self.shards[i]
    }

    pub fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        if !self.enabled() {
            return None;
        }
        self.shard(key).lock().get(key).cloned()
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
