//! A throwaway writable layer over any read-only device (a snapshot, an image, a volume
//! opened read-only): writes go to a private data file in a scratch directory, a small
//! map says which blocks it holds; reads merge the two. The device below is never written.
//! Used to generalize a captured copy and for throwaway clones.
//!
//! The layer lives in a directory of two files, so that another process (the filesystem
//! worker) can open the same layer: `data` (4 KiB slots, appended) and `map` (which
//! block is in which slot, or reads as zeros). `OverlayDir` owns the directory and removes
//! it on drop; `Overlay` is the device, opened by one writer (flock exclusive on `data`)
//! or by readers (shared).
//!
//! Commit discipline, as in a volume's delta but simpler since nothing here must outlive
//! the machine: a write never overwrites a slot the saved map references (blocks first
//! written since the last flush are rewritten in place, the others get a new slot); `flush`
//! saves the map (written aside, then renamed over `map`): that rename is the one point
//! where a job's writes become visible to the next opener, all of them or none. Slots
//! superseded are not reused (an overlay lives for one capture or one shell session). No
//! fsync: after a crash the scratch directory is removed, not recovered. Every block
//! carries a crc32, checked on read.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use rustc_hash::{FxHashMap, FxHashSet};

use super::device::{BlockDevice, SharedDevice};
use super::error::{Result, StoreError};
use super::format::BLOCK;

const B: u64 = BLOCK as u64;
const DATA: &str = "data";
const MAP: &str = "map";
const MAP_TMP: &str = "map.new";
const MAGIC: &[u8; 8] = b"STRATAOV";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;
const ENTRY_LEN: usize = 16;
/// An entry's slot meaning "reads as zeros" (a discarded block).
const ZERO: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    slot: u64,
    crc: u32,
}

/// The map file: header { magic "STRATAOV", u32 version, u32 crc32 of bytes 16.., u64
/// device size, u64 next slot }, then entries sorted by block { u64 block, u32 slot
/// (u32::MAX: reads as zeros), u32 crc32 of the block }.
fn encode_map(len: u64, next: u64, map: &FxHashMap<u64, Entry>) -> Vec<u8> {
    let mut b = vec![0u8; HEADER_LEN];
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&len.to_le_bytes());
    b[24..32].copy_from_slice(&next.to_le_bytes());
    let mut v: Vec<(&u64, &Entry)> = map.iter().collect();
    v.sort_unstable_by_key(|(k, _)| **k);
    for (&block, e) in v {
        let slot = if e.slot == ZERO {
            u32::MAX
        } else {
            e.slot as u32
        };
        b.extend_from_slice(&block.to_le_bytes());
        b.extend_from_slice(&slot.to_le_bytes());
        b.extend_from_slice(&e.crc.to_le_bytes());
    }
    let crc = crc32fast::hash(&b[16..]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

fn decode_map(b: &[u8]) -> Option<(u64, u64, FxHashMap<u64, Entry>)> {
    if b.len() < HEADER_LEN
        || &b[0..8] != MAGIC
        || b[8..12] != VERSION.to_le_bytes()
        || (b.len() - HEADER_LEN) % ENTRY_LEN != 0
        || crc32fast::hash(&b[16..]).to_le_bytes() != b[12..16]
    {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
    let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4"));
    let (len, next) = (u64_at(16), u64_at(24));
    let mut map = FxHashMap::default();
    for at in (HEADER_LEN..b.len()).step_by(ENTRY_LEN) {
        let slot = match u32_at(at + 8) {
            u32::MAX => ZERO,
            s if u64::from(s) < next => u64::from(s),
            _ => return None,
        };
        map.insert(
            u64_at(at),
            Entry {
                slot,
                crc: u32_at(at + 12),
            },
        );
    }
    Some((len, next, map))
}

/// The directory of an overlay, owned: created empty for a device of `len` bytes, removed
/// (with everything in it) on drop.
pub struct OverlayDir {
    path: PathBuf,
}

impl OverlayDir {
    /// Makes `path` (an existing empty directory, or a new one) an empty overlay for a
    /// device of `len` bytes.
    pub fn create(path: &Path, len: u64) -> Result<OverlayDir> {
        fs::create_dir_all(path).map_err(|e| StoreError::io("creating", path, e))?;
        let d = OverlayDir {
            path: path.to_path_buf(),
        };
        let data = path.join(DATA);
        File::create(&data).map_err(|e| StoreError::io("creating", &data, e))?;
        let map = path.join(MAP);
        fs::write(&map, encode_map(len, 0, &FxHashMap::default()))
            .map_err(|e| StoreError::io("creating", &map, e))?;
        Ok(d)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the overlay over `base` (see `Overlay::open`).
    pub fn open(&self, base: SharedDevice, read_only: bool) -> Result<Overlay> {
        Overlay::open(&self.path, base, read_only)
    }
}

impl Drop for OverlayDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "could not remove an overlay");
        }
    }
}

struct State {
    map: FxHashMap<u64, Entry>,
    /// Blocks whose slot was handed out since the last flush: the saved map does not
    /// reference it, so it may be rewritten in place.
    fresh: FxHashSet<u64>,
    next_slot: u64,
    dirty: bool,
}

/// The overlay device.
pub struct Overlay {
    base: SharedDevice,
    dir: PathBuf,
    data: File,
    len: u64,
    read_only: bool,
    state: Mutex<State>,
    label: String,
    /// The directory, when this device owns it (`temporary`); dropped after the files.
    _owned: Option<OverlayDir>,
}

impl Overlay {
    /// Opens the overlay in `dir` over `base`, which must be the device it was made for
    /// (same size). One process may open it for writing, or several for reading.
    pub fn open(dir: &Path, base: SharedDevice, read_only: bool) -> Result<Overlay> {
        let data_path = dir.join(DATA);
        let data = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&data_path)
            .map_err(|e| StoreError::io("opening", &data_path, e))?;
        let op = if read_only {
            libc::LOCK_SH
        } else {
            libc::LOCK_EX
        } | libc::LOCK_NB;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(data.as_raw_fd(), op) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StoreError::InUse {
                    what: format!("overlay {}", dir.display()),
                    users: "another process writing it".into(),
                    hint: "wait for that job to end",
                });
            }
            return Err(StoreError::io("locking", &data_path, e));
        }
        let map_path = dir.join(MAP);
        let bytes = fs::read(&map_path).map_err(|e| StoreError::io("reading", &map_path, e))?;
        let (len, next_slot, map) = decode_map(&bytes).ok_or_else(|| StoreError::Corrupt {
            path: map_path.clone(),
            detail: "overlay map is damaged".into(),
        })?;
        if len != base.len() {
            return Err(StoreError::InvalidInput(format!(
                "overlay {} was made for a device of {len} bytes, not {} ({} bytes)",
                dir.display(),
                base.describe(),
                base.len()
            )));
        }
        Ok(Overlay {
            label: format!("overlay on {}", base.describe()),
            base,
            dir: dir.to_path_buf(),
            data,
            len,
            read_only,
            state: Mutex::new(State {
                map,
                fresh: FxHashSet::default(),
                next_slot,
                dirty: false,
            }),
            _owned: None,
        })
    }

    /// A writable overlay over `base` in a new directory under `parent`, removed when the
    /// overlay is dropped: a throwaway clone of `base`.
    pub fn temporary(base: SharedDevice, parent: &Path) -> Result<Overlay> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let dir = parent.join(format!(
            "overlay-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        fs::create_dir(&dir).map_err(|e| StoreError::io("creating", &dir, e))?;
        let owner = OverlayDir::create(&dir, base.len())?;
        let mut o = Overlay::open(&dir, base, false)?;
        o._owned = Some(owner);
        Ok(o)
    }

    /// The directory holding its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes written to the overlay (its blocks holding data).
    pub fn changed_bytes(&self) -> u64 {
        let s = self.state.lock();
        s.map.values().filter(|e| e.slot != ZERO).count() as u64 * B
    }

    fn check(&self, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(StoreError::OutOfRange {
                what: self.label.clone(),
                offset,
                len,
                size: self.len,
            }),
        }
    }

    fn read_only_error(&self) -> StoreError {
        StoreError::ReadOnly {
            what: self.label.clone(),
        }
    }

    /// The bytes of block `block` from `within` on, into `out` (no longer than the block,
    /// nor than the device).
    fn read_block(&self, s: &State, block: u64, within: usize, out: &mut [u8]) -> Result<()> {
        match s.map.get(&block) {
            None => self.base.read_at(out, block * B + within as u64),
            Some(e) if e.slot == ZERO => {
                out.fill(0);
                Ok(())
            }
            Some(e) => {
                let mut whole = [0u8; BLOCK];
                self.data
                    .read_exact_at(&mut whole, e.slot * B)
                    .map_err(|err| StoreError::io("reading", self.dir.join(DATA), err))?;
                if crc32fast::hash(&whole) != e.crc {
                    tracing::error!(what = %self.label, offset = block * B, "checksum mismatch in overlay block");
                    return Err(StoreError::Checksum {
                        what: self.label.clone(),
                        offset: block * B,
                    });
                }
                out.copy_from_slice(&whole[within..within + out.len()]);
                Ok(())
            }
        }
    }

    /// Stores one whole block (the tail block of a device that is not a whole number of
    /// blocks is stored whole, zero-padded).
    fn put_block(&self, s: &mut State, block: u64, bytes: &[u8; BLOCK]) -> Result<()> {
        let slot = match s.map.get(&block) {
            Some(e) if e.slot != ZERO && s.fresh.contains(&block) => e.slot,
            _ => {
                if s.next_slot >= u64::from(u32::MAX - 1) {
                    return Err(StoreError::Failed(format!(
                        "{}: the overlay is full (16 TiB of changed blocks)",
                        self.label
                    )));
                }
                s.next_slot += 1;
                s.next_slot - 1
            }
        };
        self.data
            .write_all_at(bytes, slot * B)
            .map_err(|e| StoreError::io("writing", self.dir.join(DATA), e))?;
        s.map.insert(
            block,
            Entry {
                slot,
                crc: crc32fast::hash(bytes),
            },
        );
        s.fresh.insert(block);
        s.dirty = true;
        Ok(())
    }

    /// The valid length of block `block` (shorter for a device's partial last block).
    fn block_len(&self, block: u64) -> usize {
        (self.len - block * B).min(B) as usize
    }
}

impl BlockDevice for Overlay {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check(offset, buf.len() as u64)?;
        let s = self.state.lock();
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        while pos < end {
            let block = pos / B;
            // Runs of blocks the overlay does not hold are read from below in one go.
            if !s.map.contains_key(&block) {
                let mut e = (block + 1) * B;
                while e < end && !s.map.contains_key(&(e / B)) {
                    e += B;
                }
                let e = e.min(end);
                let at = (pos - offset) as usize;
                self.base
                    .read_at(&mut buf[at..at + (e - pos) as usize], pos)?;
                pos = e;
                continue;
            }
            let within = (pos % B) as usize;
            let n = ((B - within as u64).min(end - pos)) as usize;
            let at = (pos - offset) as usize;
            self.read_block(&s, block, within, &mut buf[at..at + n])?;
            pos += n as u64;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(self.read_only_error());
        }
        self.check(offset, buf.len() as u64)?;
        let mut s = self.state.lock();
        let end = offset + buf.len() as u64;
        let mut pos = offset;
        let mut whole = [0u8; BLOCK];
        while pos < end {
            let block = pos / B;
            let within = (pos % B) as usize;
            let valid = self.block_len(block);
            let n = ((valid - within) as u64).min(end - pos) as usize;
            if within != 0 || n != valid {
                // A partial block: its other bytes come from what it holds now.
                whole.fill(0);
                self.read_block(&s, block, 0, &mut whole[..valid])?;
            }
            let at = (pos - offset) as usize;
            whole[within..within + n].copy_from_slice(&buf[at..at + n]);
            if valid < BLOCK {
                whole[valid..].fill(0);
            }
            self.put_block(&mut s, block, &whole)?;
            pos += n as u64;
        }
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(self.read_only_error());
        }
        self.check(offset, len)?;
        let end = offset + len;
        let first_full = offset.div_ceil(B);
        let end_full = if end == self.len {
            end.div_ceil(B)
        } else {
            end / B
        };
        if first_full >= end_full {
            return self.write_at(&vec![0u8; len as usize], offset);
        }
        if offset < first_full * B {
            self.write_at(&vec![0u8; (first_full * B - offset) as usize], offset)?;
        }
        if end_full * B < end {
            self.write_at(&vec![0u8; (end - end_full * B) as usize], end_full * B)?;
        }
        let mut s = self.state.lock();
        for block in first_full..end_full {
            s.map.insert(block, Entry { slot: ZERO, crc: 0 });
            s.fresh.remove(&block);
        }
        s.dirty = true;
        Ok(())
    }

    /// Saves the map: from here on another opener sees every write made before it.
    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let mut s = self.state.lock();
        if !s.dirty {
            return Ok(());
        }
        let tmp = self.dir.join(MAP_TMP);
        let map = self.dir.join(MAP);
        fs::write(&tmp, encode_map(self.len, s.next_slot, &s.map))
            .map_err(|e| StoreError::io("writing", &tmp, e))?;
        fs::rename(&tmp, &map).map_err(|e| StoreError::io("replacing", &map, e))?;
        s.fresh.clear();
        s.dirty = false;
        Ok(())
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn describe(&self) -> String {
        self.label.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::MemDevice;
    use std::sync::Arc;

    fn base(len: usize) -> (Arc<MemDevice>, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8 + 1).collect();
        (Arc::new(MemDevice::read_only(bytes.clone())), bytes)
    }

    #[test]
    fn reads_merge_writes_over_an_untouched_base() {
        let len = 10 * BLOCK + 1536; // not a whole number of blocks
        let (b, mut model) = base(len);
        let t = tempfile::tempdir().unwrap();
        let o = Overlay::temporary(b.clone(), t.path()).unwrap();
        let mut x = 99u64;
        for _ in 0..300 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = ((x >> 20) % len as u64) as usize;
            let n = (((x >> 40) % 9000) as usize + 1).min(len - off);
            if x % 5 == 0 {
                o.discard(off as u64, n as u64).unwrap();
                model[off..off + n].fill(0);
            } else {
                let v = (x >> 8) as u8;
                o.write_at(&vec![v; n], off as u64).unwrap();
                model[off..off + n].fill(v);
            }
            if x % 7 == 0 {
                o.flush().unwrap();
            }
            let roff = ((x >> 12) % len as u64) as usize;
            let rn = (((x >> 30) % 20_000) as usize + 1).min(len - roff);
            let mut got = vec![0u8; rn];
            o.read_at(&mut got, roff as u64).unwrap();
            assert_eq!(got, model[roff..roff + rn]);
        }
        let (_, orig) = base(len);
        assert_eq!(b.contents(), orig, "the base is untouched");
        let dir = o.dir().to_path_buf();
        assert!(dir.exists());
        drop(o);
        assert!(!dir.exists(), "a temporary overlay is removed on drop");
    }

    #[test]
    fn another_opener_sees_the_writes_of_the_last_flush_only() {
        let (b, orig) = base(8 * BLOCK);
        let t = tempfile::tempdir().unwrap();
        let d = OverlayDir::create(&t.path().join("ov"), b.len()).unwrap();
        let w = d.open(b.clone(), false).unwrap();
        assert!(matches!(
            d.open(b.clone(), true),
            Err(StoreError::InUse { .. })
        ));
        w.write_at(&[5u8; 100], 4096 + 10).unwrap();
        w.flush().unwrap();
        w.write_at(&[6u8; 100], 4096 + 10).unwrap(); // after the flush: lost
        w.write_at(&[6u8; 4096], 0).unwrap();
        drop(w);
        let r = d.open(b.clone(), true).unwrap();
        let mut got = vec![0u8; 2 * BLOCK];
        r.read_at(&mut got, 0).unwrap();
        let mut want = orig[..2 * BLOCK].to_vec();
        want[4096 + 10..4096 + 110].fill(5);
        assert_eq!(got, want);
        assert!(r.write_at(&[1], 0).is_err());
        let path = d.path().to_path_buf();
        drop(r);
        drop(d);
        assert!(!path.exists());
    }

    #[test]
    fn a_flipped_overlay_byte_is_a_checksum_error() {
        let (b, _) = base(4 * BLOCK);
        let t = tempfile::tempdir().unwrap();
        let o = Overlay::temporary(b, t.path()).unwrap();
        o.write_at(&[9u8; BLOCK], 2 * B).unwrap();
        let f = OpenOptions::new()
            .write(true)
            .open(o.dir().join(DATA))
            .unwrap();
        f.write_all_at(&[0], 17).unwrap();
        let mut buf = [0u8; 10];
        assert!(matches!(
            o.read_at(&mut buf, 2 * B),
            Err(StoreError::Checksum { .. })
        ));
    }
}
