//! The FAT adapter's view of its device: a write-back page cache over a `SharedDevice`, and
//! `Disk`, the `Read + Write + Seek` handle the fatfs crate is given.
//!
//! fatfs reads directory entries 32 bytes at a time and updates FAT entries 2 to 4 bytes at a
//! time (once per copy of the FAT), so without a cache a 100 MiB write is hundreds of
//! thousands of tiny device calls. Pages here are 4 KiB at 4 KiB-aligned device offsets;
//! dirty pages are written back in runs of adjacent pages (one device call per run) when the
//! cache is full and at `flush`. Nothing reaches the device before that, and the device
//! itself is never flushed here: the caller of `GuestFs::sync` does that.
//!
//! The adapter's own code (directory parsing, entry fix-ups) reads and writes through the
//! same cache, so it and fatfs always see the same bytes.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::fs::{FsError, FsResult};
use crate::store::device::SharedDevice;

const PAGE: u64 = 4096;
/// Pages kept before write-back and eviction: 32 MiB.
const DEFAULT_LIMIT: usize = 8192;
/// Reads at least this long bypass the page cache (one device read, then any cached pages
/// laid over it), so reading a large file does not churn the metadata out of the cache.
const DIRECT_READ: usize = 64 * 1024;
/// The longest single device write when writing back a run of dirty pages.
const MAX_RUN: usize = 4 << 20;

struct Page {
    data: Box<[u8]>,
    dirty: bool,
    used: u64,
}

pub(crate) struct BlockCache {
    dev: SharedDevice,
    len: u64,
    read_only: bool,
    pages: BTreeMap<u64, Page>,
    tick: u64,
    limit: usize,
}

impl BlockCache {
    pub(crate) fn new(dev: SharedDevice, read_only: bool) -> BlockCache {
        BlockCache {
            len: dev.len(),
            read_only: read_only || dev.is_read_only(),
            dev,
            pages: BTreeMap::new(),
            tick: 0,
            limit: DEFAULT_LIMIT,
        }
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    fn check(&self, pos: u64, len: usize) -> FsResult<()> {
        match pos.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(FsError::new(
                libc::EIO,
                format!(
                    "FAT structure points outside the device ({len} bytes at {pos}, device is {} bytes): the filesystem is damaged",
                    self.len
                ),
            )),
        }
    }

    /// The page holding device offset `idx * PAGE`, read from the device if absent.
    fn page(&mut self, idx: u64) -> FsResult<&mut Page> {
        self.tick += 1;
        let tick = self.tick;
        if !self.pages.contains_key(&idx) {
            let start = idx * PAGE;
            let n = PAGE.min(self.len - start) as usize;
            let mut data = vec![0u8; n].into_boxed_slice();
            self.dev.read_at(&mut data, start)?;
            self.insert(idx, data, false)?;
        }
        let p = self
            .pages
            .get_mut(&idx)
            .ok_or_else(|| FsError::new(libc::EIO, "FAT cache lost a page it had just loaded"))?;
        p.used = tick;
        Ok(p)
    }

    fn insert(&mut self, idx: u64, data: Box<[u8]>, dirty: bool) -> FsResult<()> {
        if self.pages.len() >= self.limit {
            self.shrink()?;
        }
        self.tick += 1;
        self.pages.insert(
            idx,
            Page {
                data,
                dirty,
                used: self.tick,
            },
        );
        Ok(())
    }

    /// Writes every dirty page back, then drops the least recently used half.
    fn shrink(&mut self) -> FsResult<()> {
        self.write_back()?;
        let mut ticks: Vec<u64> = self.pages.values().map(|p| p.used).collect();
        let mid = ticks.len() / 2;
        let (_, cut, _) = ticks.select_nth_unstable(mid);
        let cut = *cut;
        self.pages.retain(|_, p| p.used > cut);
        Ok(())
    }

    pub(crate) fn read(&mut self, pos: u64, buf: &mut [u8]) -> FsResult<()> {
        self.check(pos, buf.len())?;
        if buf.len() >= DIRECT_READ {
            self.dev.read_at(buf, pos)?;
            let end = pos + buf.len() as u64;
            for (&idx, p) in self.pages.range(pos / PAGE..end.div_ceil(PAGE)) {
                let (a, b) = overlap(idx * PAGE, p.data.len(), pos, buf.len());
                if a < b {
                    let src = &p.data[(a - idx * PAGE) as usize..(b - idx * PAGE) as usize];
                    buf[(a - pos) as usize..(b - pos) as usize].copy_from_slice(src);
                }
            }
            return Ok(());
        }
        let mut done = 0usize;
        while done < buf.len() {
            let at = pos + done as u64;
            let idx = at / PAGE;
            let off = (at % PAGE) as usize;
            let page = self.page(idx)?;
            let n = (page.data.len() - off).min(buf.len() - done);
            buf[done..done + n].copy_from_slice(&page.data[off..off + n]);
            done += n;
        }
        Ok(())
    }

    pub(crate) fn write(&mut self, pos: u64, data: &[u8]) -> FsResult<()> {
        if self.read_only {
            return Err(FsError::new(
                libc::EROFS,
                "the FAT filesystem is open read-only",
            ));
        }
        self.check(pos, data.len())?;
        let mut done = 0usize;
        while done < data.len() {
            let at = pos + done as u64;
            let idx = at / PAGE;
            let off = (at % PAGE) as usize;
            let page_len = PAGE.min(self.len - idx * PAGE) as usize;
            let n = (page_len - off).min(data.len() - done);
            if off == 0 && n == page_len && !self.pages.contains_key(&idx) {
                // A whole page: no need to read what is about to be replaced.
                self.insert(idx, data[done..done + n].into(), true)?;
            } else {
                let page = self.page(idx)?;
                page.data[off..off + n].copy_from_slice(&data[done..done + n]);
                page.dirty = true;
            }
            done += n;
        }
        Ok(())
    }

    /// Writes all dirty pages to the device (not flushing the device itself).
    pub(crate) fn write_back(&mut self) -> FsResult<()> {
        let dirty: Vec<u64> = self
            .pages
            .iter()
            .filter(|(_, p)| p.dirty)
            .map(|(&i, _)| i)
            .collect();
        let mut i = 0;
        while i < dirty.len() {
            let first = dirty[i];
            let mut run = Vec::with_capacity(PAGE as usize);
            let mut j = i;
            while j < dirty.len() && dirty[j] == first + (j - i) as u64 && run.len() < MAX_RUN {
                if let Some(p) = self.pages.get(&dirty[j]) {
                    run.extend_from_slice(&p.data);
                }
                j += 1;
            }
            self.dev.write_at(&run, first * PAGE)?;
            for idx in &dirty[i..j] {
                if let Some(p) = self.pages.get_mut(idx) {
                    p.dirty = false;
                }
            }
            i = j;
        }
        Ok(())
    }

    /// Forgets every page, written back or not (for a read-only open, or after write-back).
    pub(crate) fn clear(&mut self) {
        self.pages.clear();
    }
}

fn overlap(a: u64, alen: usize, b: u64, blen: usize) -> (u64, u64) {
    (a.max(b), (a + alen as u64).min(b + blen as u64))
}

pub(crate) type SharedCache = Arc<Mutex<BlockCache>>;

/// The cursor fatfs reads and writes through. Errors carry the `FsError` (and so the
/// errno) they started as, for `errno_of` to find again.
pub(crate) struct Disk {
    pub(crate) cache: SharedCache,
    pos: u64,
}

impl Disk {
    pub(crate) fn new(cache: SharedCache) -> Disk {
        Disk { cache, pos: 0 }
    }
}

fn to_io(e: FsError) -> io::Error {
    io::Error::other(e)
}

impl io::Read for Disk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut c = self.cache.lock();
        let n = (c.len().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        c.read(self.pos, &mut buf[..n]).map_err(to_io)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Write for Disk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut c = self.cache.lock();
        let n = (c.len().saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        c.write(self.pos, &buf[..n]).map_err(to_io)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        // fatfs flushes after every file write; write-back happens at `sync` instead.
        Ok(())
    }
}

impl io::Seek for Disk {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let len = self.cache.lock().len();
        let new = match pos {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => len.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the device",
            )),
        }
    }
}

/// The errno an error from fatfs stands for: ours if it started in the cache, ENOSPC for
/// fatfs's "No space left on device", EIO otherwise.
pub(crate) fn errno_of(e: &io::Error) -> i32 {
    if let Some(fe) = e.get_ref().and_then(|x| x.downcast_ref::<FsError>()) {
        return fe.errno;
    }
    if let Some(n) = e.raw_os_error() {
        return n;
    }
    let msg = e.to_string();
    if msg.contains("No space left") {
        libc::ENOSPC
    } else if e.kind() == io::ErrorKind::NotFound {
        libc::ENOENT
    } else if e.kind() == io::ErrorKind::AlreadyExists {
        libc::EEXIST
    } else {
        libc::EIO
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::{BlockDevice, MemDevice};

    #[test]
    fn writes_stay_in_the_cache_until_written_back_in_one_run() {
        let dev = Arc::new(MemDevice::new(vec![0u8; 64 * 1024 + 100]));
        let mut c = BlockCache::new(dev.clone(), false);
        c.write(10, b"abc").unwrap();
        c.write(4096, &[7u8; 8192]).unwrap();
        c.write(64 * 1024 + 98, b"zz").unwrap();
        assert_eq!(dev.contents()[10], 0, "nothing written before write_back");
        let mut b = [0u8; 3];
        c.read(10, &mut b).unwrap();
        assert_eq!(&b, b"abc");
        let mut big = vec![0u8; 64 * 1024 + 100];
        c.read(0, &mut big).unwrap();
        assert_eq!(&big[10..13], b"abc", "direct reads see dirty pages");
        assert_eq!(&big[64 * 1024 + 98..], b"zz");
        c.write_back().unwrap();
        let d = dev.contents();
        assert_eq!(&d[10..13], b"abc");
        assert!(d[4096..12288].iter().all(|&x| x == 7));
        assert_eq!(&d[64 * 1024 + 98..], b"zz");
        assert!(c.read(64 * 1024 + 99, &mut b).is_err(), "past the end");
    }

    #[test]
    fn a_full_cache_writes_back_and_keeps_working() {
        let dev = Arc::new(MemDevice::new(vec![0u8; 1 << 20]));
        let mut c = BlockCache::new(dev.clone(), false);
        c.limit = 8;
        for i in 0..256u64 {
            c.write(i * 4096 + 1, &[i as u8]).unwrap();
        }
        for i in 0..256u64 {
            let mut b = [0u8];
            c.read(i * 4096 + 1, &mut b).unwrap();
            assert_eq!(b[0], i as u8);
        }
        c.write_back().unwrap();
        assert_eq!(dev.contents()[255 * 4096 + 1], 255);
        assert!(dev.len() > 0);
    }

    #[test]
    fn a_read_only_cache_refuses_writes() {
        let dev = Arc::new(MemDevice::new(vec![0u8; 8192]));
        let mut c = BlockCache::new(dev, true);
        assert_eq!(c.write(0, b"x").unwrap_err().errno, libc::EROFS);
    }
}
