//! A device that is a view onto parts of another: a partition (one segment) or an LVM
//! logical volume (one or more segments, each a run of bytes of a physical volume).
//!
//! Every access is checked against the window's own length and split at segment
//! boundaries; nothing outside the segments can be read or written through it.

use std::sync::Arc;

use crate::store::device::{BlockDevice, SharedDevice};
use crate::store::{Result, StoreError};

/// `len` bytes of the window, from its byte `start`, live at byte `at` of the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub at: u64,
    pub len: u64,
}

pub struct Window {
    /// The distinct devices the segments live on (one for a partition; an LV may span
    /// several PVs).
    parents: Vec<SharedDevice>,
    segments: Vec<Segment>,
    /// `parents[owner[i]]` holds `segments[i]`.
    owner: Vec<usize>,
    len: u64,
    label: String,
}

impl Window {
    /// One contiguous range of `parent` (a partition).
    pub fn range(parent: SharedDevice, at: u64, len: u64, label: String) -> Result<Window> {
        Window::segments(parent, vec![(at, len)], label)
    }

    /// The concatenation of `(offset in parent, length)` runs, in order.
    pub fn segments(parent: SharedDevice, runs: Vec<(u64, u64)>, label: String) -> Result<Window> {
        let mut w = Window::spans(
            runs.into_iter()
                .map(|(at, len)| (parent.clone(), at, len))
                .collect(),
            label,
        )?;
        if w.parents.is_empty() {
            w.parents.push(parent);
        }
        Ok(w)
    }

    /// The concatenation of `(device, offset in it, length)` runs, in order: an LV whose
    /// segments lie on several PVs.
    pub fn spans(runs: Vec<(SharedDevice, u64, u64)>, label: String) -> Result<Window> {
        let mut parents: Vec<SharedDevice> = Vec::new();
        let mut segments = Vec::with_capacity(runs.len());
        let mut owner = Vec::with_capacity(runs.len());
        let mut start = 0u64;
        for (parent, at, len) in runs {
            let end = at.checked_add(len);
            let total = start.checked_add(len);
            if end.is_none_or(|e| e > parent.len()) || len == 0 || total.is_none() {
                return Err(StoreError::InvalidInput(format!(
                    "{label}: segment of {len} bytes at {at} does not fit {} ({} bytes)",
                    parent.describe(),
                    parent.len()
                )));
            }
            let i = match parents.iter().position(|p| Arc::ptr_eq(p, &parent)) {
                Some(i) => i,
                None => {
                    parents.push(parent);
                    parents.len() - 1
                }
            };
            segments.push(Segment { start, at, len });
            owner.push(i);
            start += len;
        }
        Ok(Window {
            parents,
            segments,
            owner,
            len: start,
            label,
        })
    }

    pub fn segment_list(&self) -> &[Segment] {
        &self.segments
    }

    /// Calls `f(parent, parent offset, range of the caller's buffer)` for each piece of
    /// `offset..offset+len`, after checking the range.
    fn pieces(
        &self,
        offset: u64,
        len: u64,
        mut f: impl FnMut(&SharedDevice, u64, std::ops::Range<usize>) -> Result<()>,
    ) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
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
        // Segments are few (one for a partition); a linear scan is fine.
        let mut pos = offset;
        for (s, &owner) in self.segments.iter().zip(&self.owner) {
            if pos >= end {
                break;
            }
            let s_end = s.start + s.len;
            if pos >= s_end {
                continue;
            }
            let n = s_end.min(end) - pos;
            let from = (pos - offset) as usize;
            f(
                &self.parents[owner],
                s.at + (pos - s.start),
                from..from + n as usize,
            )?;
            pos += n;
        }
        Ok(())
    }
}

impl BlockDevice for Window {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.pieces(offset, buf.len() as u64, |p, at, r| {
            p.read_at(&mut buf[r], at)
        })
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly {
                what: self.label.clone(),
            });
        }
        self.pieces(offset, buf.len() as u64, |p, at, r| p.write_at(&buf[r], at))
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly {
                what: self.label.clone(),
            });
        }
        self.pieces(offset, len, |p, at, r| {
            p.discard(at, (r.end - r.start) as u64)
        })
    }
    fn flush(&self) -> Result<()> {
        self.parents.iter().try_for_each(|p| p.flush())
    }
    /// Read-only if any device under it is: a write must never half-succeed.
    fn is_read_only(&self) -> bool {
        self.parents.iter().any(|p| p.is_read_only())
    }
    fn describe(&self) -> String {
        self.label.clone()
    }
}

/// The window as a shared device.
impl From<Window> for SharedDevice {
    fn from(w: Window) -> SharedDevice {
        Arc::new(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::device::MemDevice;

    fn parent() -> SharedDevice {
        Arc::new(MemDevice::new((0..100u8).collect()))
    }

    #[test]
    fn reads_and_writes_cross_segment_boundaries_in_order() {
        let p = parent();
        let w = Window::segments(p.clone(), vec![(50, 10), (10, 5)], "lv".into()).unwrap();
        assert_eq!(w.len(), 15);
        let mut b = [0u8; 15];
        w.read_at(&mut b, 0).unwrap();
        assert_eq!(&b[..10], &(50..60).collect::<Vec<u8>>()[..]);
        assert_eq!(&b[10..], &[10, 11, 12, 13, 14]);
        w.write_at(&[0xAA; 4], 8).unwrap();
        let mut q = [0u8; 2];
        p.read_at(&mut q, 58).unwrap();
        assert_eq!(q, [0xAA, 0xAA]);
        p.read_at(&mut q, 10).unwrap();
        assert_eq!(q, [0xAA, 0xAA]);
        p.read_at(&mut q, 12).unwrap();
        assert_eq!(q, [12, 13], "nothing past the write changed");
    }

    #[test]
    fn access_outside_the_window_is_refused_and_touches_nothing() {
        let p = parent();
        let w = Window::range(p.clone(), 20, 10, "part".into()).unwrap();
        assert!(matches!(
            w.write_at(&[1; 11], 0),
            Err(StoreError::OutOfRange { .. })
        ));
        assert!(w.write_at(&[1; 1], 10).is_err());
        assert!(w.read_at(&mut [0; 2], u64::MAX).is_err());
        let mut all = [0u8; 100];
        p.read_at(&mut all, 0).unwrap();
        assert_eq!(all.to_vec(), (0..100u8).collect::<Vec<_>>());
    }

    #[test]
    fn segments_that_do_not_fit_the_parent_are_refused() {
        assert!(Window::range(parent(), 90, 11, "p".into()).is_err());
        assert!(Window::range(parent(), u64::MAX, 2, "p".into()).is_err());
        assert!(Window::range(parent(), 0, 0, "p".into()).is_err());
    }

    #[test]
    fn spans_on_several_devices_read_and_write_each_in_place() {
        let a = parent();
        let b: SharedDevice = Arc::new(MemDevice::new((100..200u8).collect()));
        let w = Window::spans(
            vec![(a.clone(), 90, 10), (b.clone(), 0, 5), (a.clone(), 0, 3)],
            "lv".into(),
        )
        .unwrap();
        assert_eq!(w.len(), 18);
        let mut all = [0u8; 18];
        w.read_at(&mut all, 0).unwrap();
        let mut want: Vec<u8> = (90..100).collect();
        want.extend(100..105u8);
        want.extend(0..3u8);
        assert_eq!(all.to_vec(), want);
        w.write_at(&[0xEE; 4], 8).unwrap();
        let mut q = [0u8; 3];
        b.read_at(&mut q, 0).unwrap();
        assert_eq!(q, [0xEE, 0xEE, 102]);
        a.read_at(&mut q, 97).unwrap();
        assert_eq!(q, [97, 0xEE, 0xEE]);
    }

    #[test]
    fn spans_with_one_read_only_device_refuse_writes_everywhere() {
        let a = parent();
        let b: SharedDevice = Arc::new(MemDevice::read_only(vec![0; 10]));
        let w = Window::spans(vec![(a.clone(), 0, 10), (b, 0, 10)], "lv".into()).unwrap();
        assert!(w.is_read_only());
        assert!(w.write_at(&[1], 0).is_err());
        let mut q = [0u8; 1];
        a.read_at(&mut q, 0).unwrap();
        assert_eq!(q, [0]);
    }

    #[test]
    fn a_window_on_a_read_only_device_is_read_only() {
        let p: SharedDevice = Arc::new(MemDevice::read_only(vec![0; 10]));
        let w = Window::range(p, 0, 10, "p".into()).unwrap();
        assert!(w.is_read_only());
        assert!(matches!(
            w.write_at(&[1], 0),
            Err(StoreError::ReadOnly { .. })
        ));
    }
}
