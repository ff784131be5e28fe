//! The one block-device interface every layer above the store sees: a length, reads and
//! writes at byte offsets, discard, flush, and whether writes are allowed.
//!
//! `Volume` (read-write, or read-only when opened so) and `Image` (always read-only)
//! implement it here; `disk::Window` implements it for a partition or a logical volume on
//! top of another device. Callers that only move bytes (the partition reader, the
//! filesystem adapters, export, FUSE) take `&dyn BlockDevice` or `Arc<dyn BlockDevice>` and
//! never ask which kind of device they were given.

use std::sync::Arc;

use super::error::{Result, StoreError};
use super::image::Image;
use super::volume::Volume;

pub trait BlockDevice: Send + Sync {
    /// Size in bytes.
    fn len(&self) -> u64;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads `buf.len()` bytes at `offset`; the whole range must lie inside the device.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()>;

    /// Writes `buf` at `offset`; durable after the next `flush`.
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()>;

    /// The range then reads as zeros.
    fn discard(&self, offset: u64, len: u64) -> Result<()>;

    /// Makes every acknowledged write durable (for a volume: one atomic commit).
    fn flush(&self) -> Result<()>;

    fn is_read_only(&self) -> bool;

    /// What this device is, for error messages: `volume "web-01"`, `image "rhel8"`,
    /// `volume "web-01" partition 2`.
    fn describe(&self) -> String;
}

impl BlockDevice for Volume {
    fn len(&self) -> u64 {
        Volume::len(self)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        Volume::read_at(self, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        Volume::write_at(self, buf, offset)
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        Volume::discard(self, offset, len)
    }
    fn flush(&self) -> Result<()> {
        Volume::flush(self)
    }
    fn is_read_only(&self) -> bool {
        Volume::is_read_only(self)
    }
    fn describe(&self) -> String {
        format!("volume {:?}", self.name())
    }
}

/// Who reads an image through the device interface, as named in checksum errors.
const IMAGE_READER: &str = "a block-device reader";

impl BlockDevice for Image {
    fn len(&self) -> u64 {
        Image::len(self)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= Image::len(self) => {}
            _ => {
                return Err(StoreError::OutOfRange {
                    what: self.describe(),
                    offset,
                    len: buf.len() as u64,
                    size: Image::len(self),
                })
            }
        }
        Image::read_at(self, buf, offset, IMAGE_READER)
    }
    fn write_at(&self, _: &[u8], _: u64) -> Result<()> {
        Err(self.read_only_error())
    }
    fn discard(&self, _: u64, _: u64) -> Result<()> {
        Err(self.read_only_error())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("image {:?}", self.name())
    }
}

impl Image {
    fn read_only_error(&self) -> StoreError {
        StoreError::ReadOnly {
            what: format!(
                "image {:?} (golden images never change; clone a volume from it and edit that)",
                self.name()
            ),
        }
    }
}

/// A device shared between owners.
pub type SharedDevice = Arc<dyn BlockDevice>;

/// An in-memory device, for tests and for fuzzing the layers above without a repository.
pub struct MemDevice {
    data: parking_lot::RwLock<Vec<u8>>,
    read_only: bool,
}

impl MemDevice {
    pub fn new(data: Vec<u8>) -> MemDevice {
        MemDevice {
            data: parking_lot::RwLock::new(data),
            read_only: false,
        }
    }

    pub fn read_only(data: Vec<u8>) -> MemDevice {
        MemDevice {
            data: parking_lot::RwLock::new(data),
            read_only: true,
        }
    }

    /// A copy of the contents.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().clone()
    }

    fn range(&self, offset: u64, len: usize) -> Result<std::ops::Range<usize>> {
        let size = self.data.read().len() as u64;
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(offset as usize..end as usize),
            _ => Err(StoreError::OutOfRange {
                what: self.describe(),
                offset,
                len: len as u64,
                size,
            }),
        }
    }
}

impl BlockDevice for MemDevice {
    fn len(&self) -> u64 {
        self.data.read().len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let r = self.range(offset, buf.len())?;
        buf.copy_from_slice(&self.data.read()[r]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly {
                what: self.describe(),
            });
        }
        let r = self.range(offset, buf.len())?;
        self.data.write()[r].copy_from_slice(buf);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        if self.read_only {
            return Err(StoreError::ReadOnly {
                what: self.describe(),
            });
        }
        let r = self.range(offset, len as usize)?;
        self.data.write()[r].fill(0);
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn describe(&self) -> String {
        "an in-memory device".into()
    }
}

/// A plain file (or block device node) as a device: for tests, benchmarks and tools that
/// work on raw images outside a repository. No checksums, no copy-on-write.
pub struct FileDevice {
    file: std::fs::File,
    len: u64,
    read_only: bool,
    label: String,
}

impl FileDevice {
    pub fn open(path: &std::path::Path, read_only: bool) -> Result<FileDevice> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| StoreError::io("opening", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| StoreError::io("reading the size of", path, e))?
            .len();
        Ok(FileDevice {
            file,
            len,
            read_only,
            label: format!("file {}", path.display()),
        })
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

    fn io_error(&self, action: &'static str, e: std::io::Error) -> StoreError {
        StoreError::io(action, &self.label, e)
    }
}

impl BlockDevice for FileDevice {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.check(offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io_error("reading", e))
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        if self.read_only {
            return Err(StoreError::ReadOnly {
                what: self.label.clone(),
            });
        }
        self.check(offset, buf.len() as u64)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io_error("writing", e))
    }
    fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check(offset, len)?;
        // Zeros written, not holes punched: simple, and this device is not for speed.
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = (offset + len - pos).min(zeros.len() as u64) as usize;
            self.write_at(&zeros[..n], pos)?;
            pos += n as u64;
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.file
            .sync_data()
            .map_err(|e| self.io_error("syncing", e))
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

    #[test]
    fn a_read_only_memory_device_refuses_writes_and_discards() {
        let d = MemDevice::read_only(vec![1u8; 4096]);
        assert!(matches!(
            d.write_at(&[0], 0),
            Err(StoreError::ReadOnly { .. })
        ));
        assert!(d.discard(0, 1).is_err());
        let mut b = [0u8; 2];
        d.read_at(&mut b, 4094).unwrap();
        assert_eq!(b, [1, 1]);
        assert!(d.read_at(&mut b, 4095).is_err());
        assert!(d.read_at(&mut b, u64::MAX).is_err());
    }
}
