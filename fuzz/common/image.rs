//! The image encoding every filesystem fuzz target reads: a sparse disk image, so that the
//! fuzzer's mutations land on the sectors a filesystem actually uses (superblocks, group
//! descriptors, bitmaps, inode tables, directory blocks, extent trees, MFT records) instead
//! of on megabytes of zeros.
//!
//! Layout (all little-endian):
//! - `b"STRSPRS1"`, then `u32` image size in 512-byte sectors;
//! - then records of 516 bytes: a `u32` sector number (taken modulo the image size) and
//!   512 bytes of data (a short last record is padded with zeros); or, when the number
//!   has its top bit set, a run: sectors from `number & 0x7fffffff` on, `u32` count at
//!   the start of the body, all filled with the byte after it (NTFS's `$LogFile` is a
//!   megabyte of 0xFF).
//!
//! Anything without the magic is taken as a raw image, padded to a whole sector. Seeds in
//! this form are written by `fuzz/make-seeds` (its `encode` step mirrors `decode` here).

pub const MAGIC: &[u8; 8] = b"STRSPRS1";
pub const SECTOR: usize = 512;

/// The disk image `data` describes, at most `max_bytes` long (a larger declared size is
/// cut down to it, so that a mutated size field cannot make the target allocate gigabytes).
pub fn decode(data: &[u8], max_bytes: usize) -> Vec<u8> {
    let max_sectors = (max_bytes / SECTOR).max(1);
    let Some(rest) = data.strip_prefix(MAGIC.as_slice()) else {
        let mut img = data[..data.len().min(max_sectors * SECTOR)].to_vec();
        img.resize(img.len().div_ceil(SECTOR).max(1) * SECTOR, 0);
        return img;
    };
    if rest.len() < 4 {
        return vec![0u8; SECTOR];
    }
    let sectors =
        (u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize).clamp(1, max_sectors);
    let mut img = vec![0u8; sectors * SECTOR];
    let mut rest = &rest[4..];
    while rest.len() > 4 {
        let word = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let n = (word & 0x7fff_ffff) as usize % sectors;
        let body = &rest[4..rest.len().min(4 + SECTOR)];
        if word & 0x8000_0000 != 0 && body.len() >= 5 {
            let count = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
            let end = n + count.min(sectors - n);
            img[n * SECTOR..end * SECTOR].fill(body[4]);
        } else {
            img[n * SECTOR..n * SECTOR + body.len()].copy_from_slice(body);
        }
        rest = &rest[4 + body.len()..];
    }
    img
}
