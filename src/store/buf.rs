//! Page-aligned byte buffers. The kernel copies into a page-aligned buffer several times
//! faster than into one that malloc placed 16 bytes past a page boundary (measured here:
//! 1 MiB preads from the page cache, 0.16 ms against 0.65 ms), so every buffer the I/O path
//! allocates for itself, and every buffer an exporter hands to the store, should be one.
//!
//! `ReadBuf` recycles them: zeroing and faulting in a fresh megabyte for every 1 MiB read
//! costs about as much as the read from the page cache itself.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

const ALIGN: usize = 4096;

/// A zero-filled, fixed-size, page-aligned byte buffer.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared access only hands out &[u8].
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    pub fn zeroed(len: usize) -> AlignedBuf {
        if len == 0 {
            return AlignedBuf {
                ptr: NonNull::dangling(),
                len: 0,
            };
        }
        let layout = Layout::from_size_align(len, ALIGN).expect("buffer size fits a layout");
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes (or dangling with len 0) and initialized.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl AsRef<[u8]> for AlignedBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            let layout = Layout::from_size_align(self.len, ALIGN).expect("same layout as alloc");
            // SAFETY: allocated with exactly this layout in `zeroed`.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// A page-aligned buffer for a read that overwrites every byte of it (`Volume::read_at`
/// does), taken from and given back to a free list of its size class. Its bytes before the
/// read are left over from an earlier read, so it must never be sent unread.
pub struct ReadBuf {
    buf: Option<AlignedBuf>,
    len: usize,
}

/// Size classes: 4 KiB << k, up to 1 MiB. Larger reads get a fresh buffer.
const CLASSES: usize = 9;
/// Each class keeps at most this many bytes of idle buffers.
const CLASS_KEEP_BYTES: usize = 16 << 20;

static FREE: [parking_lot::Mutex<Vec<AlignedBuf>>; CLASSES] =
    [const { parking_lot::Mutex::new(Vec::new()) }; CLASSES];

fn class_of(len: usize) -> Option<usize> {
    let size = len.max(ALIGN).next_power_of_two();
    let k = (size / ALIGN).trailing_zeros() as usize;
    (k < CLASSES).then_some(k)
}

impl ReadBuf {
    pub fn new(len: usize) -> ReadBuf {
        let buf = match class_of(len) {
            Some(k) => FREE[k]
                .lock()
                .pop()
                .unwrap_or_else(|| AlignedBuf::zeroed(ALIGN << k)),
            None => AlignedBuf::zeroed(len),
        };
        ReadBuf {
            buf: Some(buf),
            len,
        }
    }
}

impl Deref for ReadBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf.as_ref().expect("present until dropped")[..self.len]
    }
}

impl DerefMut for ReadBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.buf.as_mut().expect("present until dropped")[..len]
    }
}

impl AsRef<[u8]> for ReadBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for ReadBuf {
    fn drop(&mut self) {
        let Some(buf) = self.buf.take() else { return };
        if let Some(k) = class_of(buf.len()).filter(|&k| ALIGN << k == buf.len()) {
            let mut free = FREE[k].lock();
            if (free.len() + 1) * buf.len() <= CLASS_KEEP_BYTES {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_zeroed_aligned_and_writable() {
        for len in [0, 1, 4096, 100_000] {
            let mut b = AlignedBuf::zeroed(len);
            assert_eq!(b.len(), len);
            assert!(b.iter().all(|&x| x == 0));
            if len > 0 {
                assert_eq!(b.as_ptr() as usize % ALIGN, 0);
                b[len - 1] = 7;
                assert_eq!(b[len - 1], 7);
            }
        }
    }

    #[test]
    fn read_bufs_are_aligned_sized_and_reused() {
        let mut a = ReadBuf::new(10_000);
        assert_eq!(a.len(), 10_000);
        assert_eq!(a.as_ptr() as usize % ALIGN, 0);
        a.fill(9);
        let p = a.as_ptr();
        drop(a);
        // The same class hands the buffer out again (other tests use other sizes).
        let b = ReadBuf::new(12_000);
        assert_eq!(b.as_ptr(), p);
        assert_eq!(b.len(), 12_000);
        let big = ReadBuf::new(3 << 20);
        assert_eq!(big.len(), 3 << 20);
        assert_eq!(big.as_ptr() as usize % ALIGN, 0);
    }
}
