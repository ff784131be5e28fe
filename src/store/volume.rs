//! The Volume API every layer above uses: `read_at`, `write_at`, `discard`, `flush`, `len`.
//!
//! A volume is a delta layer over an optional golden image. The delta's map is consulted
//! under a short read lock; blocks the delta does not hold are then read from the image
//! without any volume lock (the image is immutable). Writes and discards take the write lock
//! of this one volume only: volumes never wait on each other.
//! Offsets and lengths are in bytes and need no alignment; partial blocks are merged here.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex, RwLock};

use super::buf::AlignedBuf;
use super::delta::{BaseRange, Delta, Wait};
use super::error::{Result, StoreError};
use super::format::BLOCK;
use super::image::Image;

const B: u64 = BLOCK as u64;

pub struct Volume {
    name: String,
    label: String,
    len: u64,
    base: Option<Arc<Image>>,
    delta: RwLock<Delta>,
    /// Serializes flushes; held across the syncs, while reads and writes go on.
    committing: Mutex<()>,
    read_only: bool,
    /// Declared last, so dropped last: after `Drop::drop`'s flush and after the delta, whose
    /// data file carries the lock that keeps other openers out. Tells the repository that
    /// this instance is wholly gone and the volume may be opened afresh.
    closed: Option<CloseGuard>,
}

/// Whether an instance of a volume has finished closing (see `Volume::closed`): a
/// repository that meets an instance already unreachable but not yet closed waits on this
/// rather than failing to take the lock the closing instance still holds.
#[derive(Default)]
pub(crate) struct Closing {
    done: Mutex<bool>,
    cv: Condvar,
}

impl Closing {
    pub(crate) fn is_done(&self) -> bool {
        *self.done.lock()
    }

    /// Waits until the instance this watches has closed its files.
    pub(crate) fn wait(&self) {
        let mut done = self.done.lock();
        while !*done {
            self.cv.wait(&mut done);
        }
    }
}

/// Held by a volume instance; dropping it marks its `Closing` done.
pub(crate) struct CloseGuard(pub(crate) Arc<Closing>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        *self.0.done.lock() = true;
        self.0.cv.notify_all();
    }
}

impl Volume {
    /// Assembles a volume from its parts. The repository does this; tests use it to put a
    /// volume on another storage backend.
    pub fn new(
        name: &str,
        len: u64,
        base: Option<Arc<Image>>,
        delta: Delta,
        read_only: bool,
    ) -> Volume {
        Volume {
            name: name.to_string(),
            label: format!("volume {name:?}"),
            len,
            base,
            delta: RwLock::new(delta),
            committing: Mutex::new(()),
            read_only,
            closed: None,
        }
    }

    /// Has `guard` dropped once this instance has closed everything it holds.
    pub(crate) fn signal_close(mut self, guard: CloseGuard) -> Volume {
        self.closed = Some(guard);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Size in bytes (a multiple of 512).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The golden image below, if any.
    pub fn image(&self) -> Option<&Arc<Image>> {
        self.base.as_ref()
    }

    fn check_range(&self, offset: u64, len: usize) -> Result<()> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(StoreError::OutOfRange {
                what: self.label.clone(),
                offset,
                len: len as u64,
                size: self.len,
            }),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.read_mode(buf, offset, Wait::Yes)
    }

    /// `read_at` if every byte can be had without waiting for the disk (from the chunk cache
    /// or the page cache): `Ok(false)` means it would have to wait, and `buf` then holds
    /// nothing useful. An event loop serves hot reads with this and hands cold ones to a
    /// thread.
    pub fn try_read_at(&self, buf: &mut [u8], offset: u64) -> Result<bool> {
        match self.read_mode(buf, offset, Wait::No) {
            Ok(()) => Ok(true),
            Err(StoreError::WouldBlock) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn read_mode(&self, buf: &mut [u8], offset: u64, wait: Wait) -> Result<()> {
        self.check_range(offset, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        if offset % B == 0 && buf.len() % BLOCK == 0 {
            return self.read_blocks(offset / B, buf, wait);
        }
        let first = offset / B;
        let end = (offset + buf.len() as u64).div_ceil(B);
        let mut tmp = AlignedBuf::zeroed(((end - first) * B) as usize);
        self.read_blocks(first, &mut tmp, wait)?;
        let skip = (offset - first * B) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }

    /// Reads whole blocks; the image part is read after the volume lock is released.
    fn read_blocks(&self, first: u64, buf: &mut [u8], wait: Wait) -> Result<()> {
        let mut below: Vec<BaseRange> = Vec::new();
        {
            // Not waiting includes not waiting for a writer that holds the lock.
            let delta = match wait {
                Wait::Yes => self.delta.read(),
                Wait::No => self.delta.try_read().ok_or(StoreError::WouldBlock)?,
            };
            delta.read(first, buf, &mut below, wait)?;
        }
        self.read_below(first, buf, &below, wait)
    }

    fn read_below(
        &self,
        first: u64,
        buf: &mut [u8],
        below: &[BaseRange],
        wait: Wait,
    ) -> Result<()> {
        for &(off, len) in below {
            let out = &mut buf[off..off + len];
            match &self.base {
                Some(img) => img.read_mode(out, first * B + off as u64, &self.label, wait)?,
                None => out.fill(0),
            }
        }
        Ok(())
    }

    /// Provisioning status from `offset`: whether the bytes there are mapped (data written
    /// to this volume, or stored in its image) or deallocated (never written over a hole or
    /// zero chunk of the image, or discarded: they read as zeros), and the length of the run
    /// from `offset` with that same status, at most `len` bytes. Status is per 4 KiB block,
    /// so a run ends on a block boundary or at `offset + len`. Read-only: only the map is
    /// consulted, under the volume's read lock for the length of the scan.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<(bool, u64)> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len && len > 0 => {}
            _ => {
                return Err(StoreError::OutOfRange {
                    what: self.label.clone(),
                    offset,
                    len,
                    size: self.len,
                })
            }
        }
        let end = offset + len;
        let (first, last) = (offset / B, (end - 1) / B);
        let delta = self.delta.read();
        let mapped = |block: u64| {
            delta
                .block_state(block)
                .unwrap_or_else(|| self.base_has_data(block))
        };
        let status = mapped(first);
        let mut b = first + 1;
        while b <= last && mapped(b) == status {
            b += 1;
        }
        Ok((status, (b * B).min(end) - offset))
    }

    /// Whether the image stores data for any part of `block` (holes and zero chunks are
    /// not stored; nor is anything past the image's end).
    fn base_has_data(&self, block: u64) -> bool {
        let Some(img) = &self.base else {
            return false;
        };
        let cs = img.chunk_size() as u64;
        (block * B / cs..=((block + 1) * B - 1) / cs).any(|c| img.chunk_is_stored(c))
    }

    /// Writes `buf` at `offset`. Durable after the next `flush`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len())?;
        if self.read_only {
            return Err(StoreError::ReadOnly {
                what: self.label.clone(),
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        if offset % B == 0 && buf.len() % BLOCK == 0 {
            return self.delta.write().write(offset / B, buf);
        }
        // Partial blocks: read the covering blocks, merge, write them back, all under the
        // write lock so no other writer slips in between.
        let first = offset / B;
        let end = (offset + buf.len() as u64).div_ceil(B);
        let mut tmp = AlignedBuf::zeroed(((end - first) * B) as usize);
        let mut delta = self.delta.write();
        let mut below = Vec::new();
        {
            // Only the head and tail blocks need their old contents.
            let last = tmp.len() - BLOCK;
            delta.read(first, &mut tmp[..BLOCK], &mut below, Wait::Yes)?;
            self.read_below(first, &mut tmp[..BLOCK], &below, Wait::Yes)?;
            if last > 0 {
                below.clear();
                delta.read(end - 1, &mut tmp[last..], &mut below, Wait::Yes)?;
                self.read_below(end - 1, &mut tmp[last..], &below, Wait::Yes)?;
            }
        }
        let skip = (offset - first * B) as usize;
        tmp[skip..skip + buf.len()].copy_from_slice(buf);
        delta.write(first, &tmp)
    }

    /// `write_at` for whole blocks if it need not wait for another thread holding the
    /// volume: `Ok(false)` (nothing written) when the volume is busy or the write is not
    /// block-aligned. An event loop writes with this and hands what it refuses to a thread.
    pub fn try_write_at(&self, buf: &[u8], offset: u64) -> Result<bool> {
        self.check_range(offset, buf.len())?;
        if self.read_only {
            return Err(StoreError::ReadOnly {
                what: self.label.clone(),
            });
        }
        if offset % B != 0 || buf.len() % BLOCK != 0 {
            return Ok(false);
        }
        match self.delta.try_write() {
            Some(mut d) => d.write(offset / B, buf).map(|()| true),
            None => Ok(false),
        }
    }

    /// Discards `len` bytes at `offset`: the range then reads as zeros (LBPRZ) and whole
    /// blocks give their delta space back after the next flush.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_range(offset, len as usize)?;
        if self.read_only {
            return Err(StoreError::ReadOnly {
                what: self.label.clone(),
            });
        }
        let end = offset + len;
        let first_full = offset.div_ceil(B);
        let end_full = end / B;
        if first_full >= end_full {
            return self.write_zeros(offset, len);
        }
        if offset < first_full * B {
            self.write_zeros(offset, first_full * B - offset)?;
        }
        if end > end_full * B {
            self.write_zeros(end_full * B, end - end_full * B)?;
        }
        let base = self.base.clone();
        let cs = base.as_ref().map_or(1, |b| b.chunk_size() as u64);
        self.delta
            .write()
            .discard(first_full, end_full - first_full, |block| {
                base.as_ref()
                    .is_some_and(|img| img.chunk_is_stored(block * B / cs))
            });
        Ok(())
    }

    fn write_zeros(&self, offset: u64, len: u64) -> Result<()> {
        self.write_at(&vec![0u8; len as usize], offset)
    }

    /// Makes every write and discard completed before this call durable. The syncs run
    /// without the volume lock: reads and writes go on meanwhile.
    pub fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let _one_at_a_time = self.committing.lock();
        let Some(commit) = self.delta.write().begin_commit()? else {
            return Ok(());
        };
        let outcome = commit.write();
        self.delta.write().finish_commit(commit, outcome)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if !self.read_only && self.delta.get_mut().is_dirty() {
            if let Err(e) = self.delta.get_mut().flush() {
                tracing::error!(volume = %self.name, error = %e, "flush on close failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::backend::MemDir;

    fn mem_volume(len: u64) -> (MemDir, Volume) {
        let dir = MemDir::new();
        let d = Delta::create(Arc::new(dir.clone()), "volume \"t\"".into()).unwrap();
        (dir, Volume::new("t", len, None, d, false))
    }

    #[test]
    fn a_write_that_may_not_wait_refuses_a_busy_volume_and_unaligned_data() {
        let (_d, v) = mem_volume(64 * 1024);
        assert!(v.try_write_at(&[1u8; 4096], 8192).unwrap());
        assert!(!v.try_write_at(&[2u8; 100], 0).unwrap());
        {
            let _reader = v.delta.read();
            assert!(!v.try_write_at(&[3u8; 4096], 0).unwrap());
        }
        let mut buf = vec![9u8; 3 * 4096];
        v.read_at(&mut buf, 0).unwrap();
        assert!(
            buf[..8192].iter().all(|&b| b == 0),
            "refused writes wrote nothing"
        );
        assert!(buf[8192..].iter().all(|&b| b == 1));
        assert!(v.try_write_at(&[1u8; 4096], 64 * 1024).is_err());
    }

    #[test]
    fn unaligned_writes_merge_with_neighbours() {
        let (_d, v) = mem_volume(1 << 20);
        v.write_at(&[1u8; 10_000], 100).unwrap();
        v.write_at(&[2u8; 3], 4095).unwrap();
        let mut buf = vec![9u8; 12_000];
        v.read_at(&mut buf, 0).unwrap();
        assert!(buf[..100].iter().all(|&b| b == 0));
        assert!(buf[100..4095].iter().all(|&b| b == 1));
        assert_eq!(&buf[4095..4098], &[2, 2, 2]);
        assert!(buf[4098..10_100].iter().all(|&b| b == 1));
        assert!(buf[10_100..].iter().all(|&b| b == 0));
    }

    #[test]
    fn access_beyond_the_end_is_refused() {
        let (_d, v) = mem_volume(8192);
        let mut buf = vec![0u8; 512];
        assert!(matches!(
            v.read_at(&mut buf, 8192 - 511),
            Err(StoreError::OutOfRange { .. })
        ));
        assert!(v.write_at(&buf, u64::MAX - 10).is_err());
        v.read_at(&mut buf, 8192 - 512).unwrap();
    }

    #[test]
    fn discard_reads_back_zeros_including_partial_blocks() {
        let (_d, v) = mem_volume(64 * 1024);
        v.write_at(&vec![7u8; 64 * 1024], 0).unwrap();
        v.discard(1000, 20_000).unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        v.read_at(&mut buf, 0).unwrap();
        assert!(buf[..1000].iter().all(|&b| b == 7));
        assert!(buf[1000..21_000].iter().all(|&b| b == 0));
        assert!(buf[21_000..].iter().all(|&b| b == 7));
    }

    #[test]
    fn allocation_reports_runs_of_written_never_written_and_discarded_blocks() {
        let (_d, v) = mem_volume(64 * 4096);
        // Nothing written and no image: one deallocated run, cut at the length asked.
        assert_eq!(v.allocation(0, 64 * 4096).unwrap(), (false, 64 * 4096));
        assert_eq!(v.allocation(512, 4096).unwrap(), (false, 4096));
        v.write_at(&[1u8; 3 * 4096], 4 * 4096).unwrap();
        // A partial write maps its whole block.
        v.write_at(&[1u8; 10], 20 * 4096 + 100).unwrap();
        assert_eq!(v.allocation(0, 64 * 4096).unwrap(), (false, 4 * 4096));
        assert_eq!(v.allocation(4 * 4096, 60 * 4096).unwrap(), (true, 3 * 4096));
        // From inside a block: the run still ends on the block boundary.
        assert_eq!(v.allocation(5 * 4096 + 512, 4096).unwrap(), (true, 4096));
        assert_eq!(
            v.allocation(5 * 4096 + 512, 10 * 4096).unwrap(),
            (true, 2 * 4096 - 512)
        );
        assert_eq!(
            v.allocation(7 * 4096, 57 * 4096).unwrap(),
            (false, 13 * 4096)
        );
        assert_eq!(v.allocation(20 * 4096, 44 * 4096).unwrap(), (true, 4096));
        // Discarding the middle block splits the run; a partial discard stays mapped.
        v.discard(5 * 4096, 4096).unwrap();
        v.discard(6 * 4096, 100).unwrap();
        assert_eq!(v.allocation(4 * 4096, 60 * 4096).unwrap(), (true, 4096));
        assert_eq!(v.allocation(5 * 4096, 59 * 4096).unwrap(), (false, 4096));
        assert_eq!(v.allocation(6 * 4096, 58 * 4096).unwrap(), (true, 4096));
        // Out of range and empty queries are errors, not panics.
        assert!(v.allocation(64 * 4096, 1).is_err());
        assert!(v.allocation(0, 64 * 4096 + 1).is_err());
        assert!(v.allocation(u64::MAX, 2).is_err());
        assert!(v.allocation(0, 0).is_err());
    }

    #[test]
    fn allocation_sees_through_to_the_images_stored_chunks() {
        use crate::store::repo::{RepoOptions, Repository};
        use crate::store::transfer::SourceFormat;
        let tmp = tempfile::tempdir().unwrap();
        let raw = tmp.path().join("gold.raw");
        // 16 blocks: data in blocks 2..5 and 9, zeros (not stored) elsewhere.
        let mut img = vec![0u8; 16 * 4096];
        img[2 * 4096..5 * 4096].fill(3);
        img[9 * 4096 + 7] = 1;
        std::fs::write(&raw, &img).unwrap();
        let repo = Repository::open(tmp.path().join("repo"), RepoOptions::default()).unwrap();
        repo.import_image("gold", &raw, SourceFormat::Raw, &|_, _| {})
            .unwrap();
        repo.create_volume("v", Some("gold"), Some(20 * 4096))
            .unwrap();
        // The run from block `b` to the end: (mapped, length in blocks).
        let from = |v: &Volume, b: u64| {
            let (mapped, len) = v.allocation(b * 4096, (20 - b) * 4096).unwrap();
            (mapped, len / 4096)
        };
        let v = repo.open_volume("v", false).unwrap();
        assert_eq!(from(&v, 0), (false, 2));
        assert_eq!(from(&v, 2), (true, 3));
        assert_eq!(from(&v, 5), (false, 4));
        assert_eq!(from(&v, 9), (true, 1));
        // Past the image's end (the volume grew) reads zeros: deallocated.
        assert_eq!(from(&v, 10), (false, 10));
        // Discarding image data hides it (deallocated); writing over a hole maps it.
        v.discard(3 * 4096, 4096).unwrap();
        v.write_at(&[8u8; 4096], 6 * 4096).unwrap();
        for (b, mapped) in [(2, true), (3, false), (4, true), (5, false), (6, true)] {
            assert_eq!(from(&v, b), (mapped, 1), "block {b}");
        }
        // Discarding over a hole leaves it deallocated; the answers survive a reopen.
        v.discard(0, 2 * 4096).unwrap();
        v.flush().unwrap();
        drop(v);
        let v = repo.open_volume("v", false).unwrap();
        assert_eq!(from(&v, 0), (false, 2));
        assert_eq!(from(&v, 3), (false, 1));
        assert_eq!(from(&v, 6), (true, 1));
    }

    #[test]
    fn flipped_delta_byte_is_an_error_naming_volume_and_offset() {
        let (dir, v) = mem_volume(1 << 20);
        v.write_at(&[5u8; 4096], 3 * 4096).unwrap();
        v.flush().unwrap();
        dir.file("data").unwrap().corrupt(17, 0x40);
        let mut buf = vec![0u8; 4096];
        let e = v.read_at(&mut buf, 3 * 4096).unwrap_err().to_string();
        assert!(e.contains("volume \"t\"") && e.contains("12288"), "{e}");
    }
}
