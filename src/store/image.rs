//! A golden image: immutable once imported. Its index is memory-mapped (shared by every
//! volume of the process); its data is read with one pread per run of chunks, checked
//! against each chunk's crc32, and kept in the shared chunk cache for the next reader.
//! (The data was memory-mapped first; cold reads through page faults measured half as fast
//! as qemu's, see `read_run_into`.)
//!
//! This file owns reading an image directory and writing a new one (`ImageWriter`); it does
//! not decide names or where directories live (that is `repo.rs`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use memmap2::Mmap;

use super::backend::read_nowait;
use super::buf::AlignedBuf;
use super::cache::ChunkCache;
use super::delta::Wait;
use super::error::{Result, StoreError};
use super::format::{IndexEntry, IndexHeader, INDEX_ENTRY_LEN, INDEX_HEADER_LEN, LOAD_GROUP};

/// Runs of chunks longer than this (64 KiB) are scans (exports, whole-disk copies, a loader
/// read in one go): they are served without entering the cache, so a scan neither pays for
/// hundreds of cache insertions nor flushes out the small blocks a boot storm shares.
const CACHE_RUN_MAX: usize = 16;

pub const INDEX_FILE: &str = "index";
pub const DATA_FILE: &str = "data";

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

pub struct Image {
    name: String,
    uid: u64,
    header: IndexHeader,
    index: Mmap,
    /// Read with pread: one system call per run of chunks (see `stored_run`).
    data: File,
    data_len: u64,
    cache: Arc<ChunkCache>,
    dir: PathBuf,
}

impl Image {
    /// Opens the image stored in `dir`, checking its index.
    pub fn open(dir: &Path, name: &str, cache: Arc<ChunkCache>) -> Result<Image> {
        let index_path = dir.join(INDEX_FILE);
        let corrupt = |detail: String| StoreError::Corrupt {
            path: index_path.clone(),
            detail,
        };
        let f = File::open(&index_path).map_err(|e| StoreError::io("opening", &index_path, e))?;
        // SAFETY: image files are immutable after import; nothing truncates them while open
        // (removal unlinks, which keeps the mapping valid).
        let index =
            unsafe { Mmap::map(&f) }.map_err(|e| StoreError::io("mapping", &index_path, e))?;
        let header =
            IndexHeader::decode(&index).map_err(|e| corrupt(format!("image index: {e}")))?;
        let table_len = header
            .chunk_count
            .checked_mul(INDEX_ENTRY_LEN as u64)
            .ok_or_else(|| corrupt("chunk count overflows".into()))?;
        if (index.len() as u64) < INDEX_HEADER_LEN as u64 + table_len {
            return Err(corrupt("image index is truncated".into()));
        }
        let table = &index[INDEX_HEADER_LEN..INDEX_HEADER_LEN + table_len as usize];
        if crc32fast::hash(table) != header.table_crc {
            return Err(corrupt("image index table checksum mismatch".into()));
        }
        let data_path = dir.join(DATA_FILE);
        let df = File::open(&data_path).map_err(|e| StoreError::io("opening", &data_path, e))?;
        let dlen = df
            .metadata()
            .map_err(|e| StoreError::io("reading size of", &data_path, e))?
            .len();
        // The store sizes its own reads (whole runs of chunks); kernel readahead would only
        // add reads nobody asked for.
        // SAFETY: posix_fadvise on an fd we own.
        unsafe { libc::posix_fadvise(df.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        Ok(Image {
            name: name.to_string(),
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            header,
            index,
            data: df,
            data_len: dlen,
            cache,
            dir: dir.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The image's directory in the repository (its boot trace is kept there).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Virtual size in bytes.
    pub fn len(&self) -> u64 {
        self.header.virtual_size
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn chunk_size(&self) -> usize {
        self.header.chunk_size as usize
    }

    pub fn stored_bytes(&self) -> u64 {
        self.header.stored_chunks * self.header.chunk_size as u64
    }

    fn entry(&self, chunk: u64) -> IndexEntry {
        let at = INDEX_HEADER_LEN + chunk as usize * INDEX_ENTRY_LEN;
        IndexEntry::decode(&self.index[at..at + INDEX_ENTRY_LEN])
    }

    /// Whether chunk `chunk` is stored (false for holes and zero chunks).
    pub fn chunk_is_stored(&self, chunk: u64) -> bool {
        chunk < self.header.chunk_count && self.entry(chunk).slot.is_some()
    }

    /// Reads the stored bytes of the chunks from `slot` on into `out` (not yet checked), in
    /// one read.
    ///
    /// Why pread and not the memory map: a cold read through the map faults page by page
    /// (or reads ahead blindly); measured here it was half as fast as qemu's O_DIRECT
    /// reads of the same file. One pread per run is as fast, and hot reads never come here:
    /// they are served from the shared cache.
    fn read_run_into(&self, slot: u32, out: &mut [u8], wait: Wait) -> Result<()> {
        let start = slot as u64 * self.chunk_size() as u64;
        let path = || self.dir.join(DATA_FILE);
        if start + out.len() as u64 > self.data_len {
            return Err(StoreError::Corrupt {
                path: path(),
                detail: format!("data file is shorter than its index says (slot {slot})"),
            });
        }
        match wait {
            Wait::Yes => self.data.read_exact_at(out, start),
            Wait::No => read_nowait(&self.data, out, start).and_then(|n| {
                if n == out.len() {
                    Ok(())
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                }
            }),
        }
        .map_err(|e| StoreError::io("reading", path(), e))
    }

    fn check(&self, raw: &[u8], chunk: u64, crc: u32, reader: &str) -> Result<()> {
        if crc32fast::hash(raw) == crc {
            return Ok(());
        }
        let offset = chunk * self.chunk_size() as u64;
        tracing::error!(image = %self.name, offset, reader, "checksum mismatch in image chunk");
        Err(StoreError::Checksum {
            what: format!("image {:?} (read by {reader})", self.name),
            offset,
        })
    }

    /// Reads `buf.len()` bytes at `offset`. Bytes past the end read as zeros. `reader` names
    /// who is reading, for error messages.
    ///
    /// Chunks come from the shared cache; missing ones are loaded in runs (chunks stored side
    /// by side, within one load group), checked, cached, and copied out. With the cache
    /// disabled they are checked and copied straight from the map.
    pub fn read_at(&self, buf: &mut [u8], offset: u64, reader: &str) -> Result<()> {
        self.read_mode(buf, offset, reader, Wait::Yes)
    }

    /// `read_at`; with `Wait::No` it fails with `WouldBlock` rather than wait, for the disk
    /// or for another reader loading the same chunks.
    pub fn read_mode(&self, buf: &mut [u8], offset: u64, reader: &str, wait: Wait) -> Result<()> {
        let cs = self.chunk_size() as u64;
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let chunk = pos / cs;
            let within = (pos % cs) as usize;
            let n = ((cs - within as u64).min(end - pos)) as usize;
            let at = (pos - offset) as usize;
            if chunk >= self.header.chunk_count {
                buf[at..].fill(0);
                return Ok(());
            }
            let e = self.entry(chunk);
            let Some(slot) = e.slot else {
                buf[at..at + n].fill(0);
                pos += n as u64;
                continue;
            };
            if self
                .cache
                .copy_out(&(self.uid, chunk), within, &mut buf[at..at + n])
            {
                pos += n as u64;
                continue;
            }
            // A miss: load the run of chunks this request needs from here, in this group.
            let group = chunk / LOAD_GROUP;
            let _loader = match (self.cache.enabled(), wait) {
                (false, _) => None,
                (true, Wait::Yes) => Some(self.cache.loading(&(self.uid, group))),
                (true, Wait::No) => Some(
                    self.cache
                        .try_loading(&(self.uid, group))
                        .ok_or(StoreError::WouldBlock)?,
                ),
            };
            if self.cache.contains(&(self.uid, chunk)) {
                continue; // another reader loaded it while we waited
            }
            let last = ((end - 1) / cs)
                .min((group + 1) * LOAD_GROUP - 1)
                .min(self.header.chunk_count - 1);
            // Chunks stored side by side: one read. A short run stops at a cached chunk, so
            // a boot storm loads each chunk once; a scan (past CACHE_RUN_MAX) stops asking,
            // as re-reading a few cached chunks costs less than a lookup for every chunk.
            let mut run = 1usize;
            while chunk + (run as u64) <= last {
                let next = self.entry(chunk + run as u64);
                if next.slot != Some(slot + run as u32)
                    || (run <= CACHE_RUN_MAX
                        && self.cache.contains(&(self.uid, chunk + run as u64)))
                {
                    break;
                }
                run += 1;
            }
            let first_byte = chunk * cs;
            let run_bytes = run as u64 * cs;
            let cache_it = self.cache.enabled() && run <= CACHE_RUN_MAX;
            if !cache_it && first_byte >= offset && first_byte + run_bytes <= end {
                // A scan: read straight into the caller's buffer and check it there.
                let o = (first_byte - offset) as usize;
                let out = &mut buf[o..o + run_bytes as usize];
                self.read_run_into(slot, out, wait)?;
                for (k, bytes) in out.chunks_exact(cs as usize).enumerate() {
                    let c = chunk + k as u64;
                    self.check(bytes, c, self.entry(c).crc, reader)?;
                }
            } else {
                let mut raw = AlignedBuf::zeroed(run_bytes as usize);
                self.read_run_into(slot, &mut raw, wait)?;
                for (k, bytes) in raw.chunks_exact(cs as usize).enumerate() {
                    let c = chunk + k as u64;
                    self.check(bytes, c, self.entry(c).crc, reader)?;
                    let p = pos.max(c * cs);
                    let w = (p % cs) as usize;
                    let m = ((cs - w as u64).min(end - p)) as usize;
                    let o = (p - offset) as usize;
                    buf[o..o + m].copy_from_slice(&bytes[w..w + m]);
                    if cache_it {
                        self.cache
                            .insert((self.uid, c), Bytes::copy_from_slice(bytes));
                    }
                }
            }
            self.cache.count_loads(run as u64);
            pos = ((chunk + run as u64) * cs).min(end);
        }
        Ok(())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        self.cache.forget_image(self.uid);
    }
}

/// True when every byte of `b` is zero.
pub fn is_zero(b: &[u8]) -> bool {
    // SAFETY: u64 has no invalid bit patterns; align_to only reinterprets aligned middle.
    let (head, mid, tail) = unsafe { b.align_to::<u64>() };
    head.iter().all(|&x| x == 0) && mid.iter().all(|&x| x == 0) && tail.iter().all(|&x| x == 0)
}

/// Writes a new image directory: chunks in, index out. Used by import.
pub struct ImageWriter {
    dir: PathBuf,
    data: BufWriter<File>,
    table: Vec<IndexEntry>,
    virtual_size: u64,
    chunk_size: usize,
    next_slot: u32,
}

impl ImageWriter {
    pub fn create(dir: &Path, virtual_size: u64, chunk_size: usize) -> Result<ImageWriter> {
        let data_path = dir.join(DATA_FILE);
        let f = File::create(&data_path).map_err(|e| StoreError::io("creating", &data_path, e))?;
        let chunks = virtual_size.div_ceil(chunk_size as u64) as usize;
        Ok(ImageWriter {
            dir: dir.to_path_buf(),
            data: BufWriter::with_capacity(1 << 20, f),
            table: vec![IndexEntry { slot: None, crc: 0 }; chunks],
            virtual_size,
            chunk_size,
            next_slot: 0,
        })
    }

    /// Makes the image `virtual_size` bytes long, if that is longer than it is: for an
    /// import whose length is known only at its end (a stream).
    pub fn grow_to(&mut self, virtual_size: u64) {
        if virtual_size > self.virtual_size {
            self.virtual_size = virtual_size;
            let chunks = virtual_size.div_ceil(self.chunk_size as u64) as usize;
            self.table.resize(chunks, IndexEntry { slot: None, crc: 0 });
        }
    }

    /// Stores chunk `index` unless it is all zeros. A short last chunk is padded with zeros.
    pub fn put(&mut self, index: u64, bytes: &[u8]) -> Result<()> {
        if is_zero(bytes) {
            return Ok(());
        }
        let i = index as usize;
        if i >= self.table.len() || bytes.len() > self.chunk_size {
            return Err(StoreError::InvalidInput(format!(
                "chunk {index} is outside the image"
            )));
        }
        let data_path = self.dir.join(DATA_FILE);
        let mut h = crc32fast::Hasher::new();
        h.update(bytes);
        self.data
            .write_all(bytes)
            .map_err(|e| StoreError::io("writing", &data_path, e))?;
        if bytes.len() < self.chunk_size {
            let pad = vec![0u8; self.chunk_size - bytes.len()];
            h.update(&pad);
            self.data
                .write_all(&pad)
                .map_err(|e| StoreError::io("writing", &data_path, e))?;
        }
        self.table[i] = IndexEntry {
            slot: Some(self.next_slot),
            crc: h.finalize(),
        };
        self.next_slot = self
            .next_slot
            .checked_add(1)
            .ok_or_else(|| StoreError::InvalidInput("image is too large".into()))?;
        Ok(())
    }

    /// Writes the index and makes both files durable. Returns the stored byte count.
    pub fn finish(self) -> Result<u64> {
        let data_path = self.dir.join(DATA_FILE);
        let f = self
            .data
            .into_inner()
            .map_err(|e| StoreError::io("writing", &data_path, e.into_error()))?;
        f.sync_all()
            .map_err(|e| StoreError::io("syncing", &data_path, e))?;
        let mut table = Vec::with_capacity(self.table.len() * INDEX_ENTRY_LEN);
        for e in &self.table {
            table.extend_from_slice(&e.encode());
        }
        let header = IndexHeader {
            chunk_size: self.chunk_size as u32,
            virtual_size: self.virtual_size,
            chunk_count: self.table.len() as u64,
            stored_chunks: self.next_slot as u64,
            table_crc: crc32fast::hash(&table),
        };
        let index_path = self.dir.join(INDEX_FILE);
        let mut f =
            File::create(&index_path).map_err(|e| StoreError::io("creating", &index_path, e))?;
        f.write_all(&header.encode())
            .and_then(|_| f.write_all(&table))
            .and_then(|_| f.sync_all())
            .map_err(|e| StoreError::io("writing", &index_path, e))?;
        Ok(self.next_slot as u64 * self.chunk_size as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zero_checks_every_byte_at_any_alignment() {
        let mut v = vec![0u8; 1000];
        assert!(is_zero(&v[3..]));
        v[999] = 1;
        assert!(!is_zero(&v[3..]));
        v[999] = 0;
        v[4] = 1;
        assert!(!is_zero(&v[3..]));
    }

    fn write_image(dir: &Path, size: u64, chunks: &[(u64, u8)]) {
        let mut w = ImageWriter::create(dir, size, 4096).unwrap();
        for &(i, v) in chunks {
            w.put(i, &vec![v; 4096]).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn a_growing_writer_takes_chunks_past_its_first_size() {
        let t = tempfile::tempdir().unwrap();
        let mut w = ImageWriter::create(t.path(), 0, 4096).unwrap();
        assert!(
            w.put(0, &[1u8; 4096]).is_err(),
            "an empty image has no chunk 0"
        );
        w.grow_to(4096 + 100);
        w.put(0, &[1u8; 4096]).unwrap();
        w.put(1, &[2u8; 100]).unwrap();
        w.grow_to(10);
        w.finish().unwrap();
        let img = Image::open(t.path(), "g", Arc::new(ChunkCache::new(1 << 20, 4096))).unwrap();
        assert_eq!(img.len(), 4096 + 100);
        let mut buf = vec![0u8; 4196];
        img.read_at(&mut buf, 0, "test").unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 1));
        assert!(buf[4096..].iter().all(|&b| b == 2));
    }

    #[test]
    fn holes_and_zero_chunks_are_not_stored_and_read_as_zeros() {
        let t = tempfile::tempdir().unwrap();
        write_image(t.path(), 5 * 4096, &[(1, 7), (3, 0), (4, 9)]);
        let img = Image::open(t.path(), "g", Arc::new(ChunkCache::new(1 << 20, 4096))).unwrap();
        assert_eq!(img.stored_bytes(), 2 * 4096);
        let mut buf = vec![1u8; 5 * 4096 + 100];
        img.read_at(&mut buf, 0, "test").unwrap();
        assert!(is_zero(&buf[..4096]));
        assert!(buf[4096..8192].iter().all(|&b| b == 7));
        assert!(is_zero(&buf[8192..4 * 4096]));
        assert!(buf[4 * 4096..5 * 4096].iter().all(|&b| b == 9));
        assert!(is_zero(&buf[5 * 4096..]));
    }

    /// Whether each 4 KiB page of `f`'s first `pages` is in the page cache (mincore: it
    /// looks without reading, where a probing read may start reading what it asks for).
    fn resident(f: &File, pages: usize) -> Vec<bool> {
        let len = pages * 4096;
        // SAFETY: a private read-only mapping of an open file, unmapped below; mincore
        // writes one byte per page into a vector of that many.
        unsafe {
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            let mut v = vec![0u8; pages];
            assert_eq!(libc::mincore(p, len, v.as_mut_ptr()), 0);
            libc::munmap(p, len);
            v.iter().map(|b| b & 1 != 0).collect()
        }
    }

    #[test]
    fn a_read_that_may_not_wait_refuses_cold_chunks_and_serves_hot_ones() {
        // DONTNEED may leave a page that still sits in another CPU's LRU batch, so it is
        // asked again until mincore sees both pages out. A refused read starts reading the
        // page it asked for, and on this machine's fast virtual disk that read may finish
        // before the kernel looks again (the read is then served), at times on every try
        // with one file: so the probe is retried, with a fresh image (and cache) each time,
        // since a read that succeeds caches its chunk, and on a new file every 20 tries.
        // .config/nextest.toml runs this test alone.
        let mut buf = vec![0u8; 4096];
        let mut tries = 0;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut files = 0;
        let (_t, data, img) = 'found: loop {
            // Each new file on the next CPU: where the disk's completion runs on the CPU
            // that reads, the read a refused one starts may be done before it looks again.
            // SAFETY: a zeroed cpu_set_t with one CPU set, for this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(files % cpus, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            files += 1;
            let t = tempfile::tempdir().unwrap();
            write_image(t.path(), 2 * 4096, &[(0, 3), (1, 4)]);
            let data = File::open(t.path().join(DATA_FILE)).unwrap();
            data.sync_all().unwrap();
            for _ in 0..20 {
                tries += 1;
                assert!(tries <= 400, "a cold read was served on every try");
                // SAFETY: fadvise on an fd we own.
                let rc = unsafe {
                    libc::posix_fadvise(data.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
                };
                assert_eq!(rc, 0);
                if resident(&data, 2) != [false, false] {
                    continue;
                }
                let img =
                    Image::open(t.path(), "g", Arc::new(ChunkCache::new(1 << 20, 4096))).unwrap();
                if let Err(e) = img.read_mode(&mut buf, 0, "t", Wait::No) {
                    assert!(matches!(e, StoreError::WouldBlock), "{e:?}");
                    break 'found (t, data, img);
                }
            }
        };
        img.read_at(&mut buf, 0, "t").unwrap();
        buf.fill(0);
        img.read_mode(&mut buf, 0, "t", Wait::No).unwrap();
        assert!(buf.iter().all(|&b| b == 3));
        // Reading chunk 0 did not bring chunk 1 in (no readahead on image data). (Not
        // probed with a read: a refused read may be served, as above.)
        assert!(
            !resident(&data, 2)[1],
            "reading chunk 0 read chunk 1's page too"
        );
    }

    #[test]
    fn flipped_byte_is_a_checksum_error_naming_image_and_offset() {
        for cache in [0, 1 << 20] {
            let t = tempfile::tempdir().unwrap();
            write_image(t.path(), 3 * 4096, &[(2, 5)]);
            let p = t.path().join(DATA_FILE);
            let mut d = std::fs::read(&p).unwrap();
            d[100] ^= 1;
            std::fs::write(&p, d).unwrap();
            let img =
                Image::open(t.path(), "gold", Arc::new(ChunkCache::new(cache, 4096))).unwrap();
            let mut buf = vec![0u8; 512];
            let e = img.read_at(&mut buf, 2 * 4096, "volume \"v\"").unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains("gold") && msg.contains("8192"), "{msg}");
            img.read_at(&mut buf, 0, "x").unwrap();
        }
    }

    #[test]
    fn reads_at_any_offset_match_the_source_with_and_without_cache() {
        let t = tempfile::tempdir().unwrap();
        let chunks = 40u64;
        let mut content = vec![0u8; (chunks * 4096) as usize];
        let mut w = ImageWriter::create(t.path(), chunks * 4096, 4096).unwrap();
        for c in (0..chunks).filter(|c| c % 7 != 3) {
            let data: Vec<u8> = (0..4096).map(|i| (i as u64 * 31 + c) as u8 | 1).collect();
            content[(c * 4096) as usize..((c + 1) * 4096) as usize].copy_from_slice(&data);
            w.put(c, &data).unwrap();
        }
        w.finish().unwrap();
        for cache in [0, 4096 * 16 * 4, 1 << 20] {
            let img = Image::open(t.path(), "g", Arc::new(ChunkCache::new(cache, 4096))).unwrap();
            let mut x = 12345u64;
            for _ in 0..300 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let off = (x >> 20) % (chunks * 4096 + 5000);
                let len = ((x >> 40) % 70_000) as usize + 1;
                let mut buf = vec![0xAAu8; len];
                img.read_at(&mut buf, off, "t").unwrap();
                for (i, &b) in buf.iter().enumerate() {
                    let p = off as usize + i;
                    assert_eq!(
                        b,
                        content.get(p).copied().unwrap_or(0),
                        "cache {cache} at {p}"
                    );
                }
            }
        }
    }

    #[test]
    fn damaged_index_is_refused_at_open() {
        let t = tempfile::tempdir().unwrap();
        write_image(t.path(), 3 * 4096, &[(2, 5)]);
        let p = t.path().join(INDEX_FILE);
        let mut d = std::fs::read(&p).unwrap();
        let last = d.len() - 1;
        d[last] ^= 1;
        std::fs::write(&p, d).unwrap();
        let e = Image::open(t.path(), "g", Arc::new(ChunkCache::new(0, 4096)))
            .err()
            .unwrap();
        assert!(e.to_string().contains("checksum"), "{e}");
    }
}
