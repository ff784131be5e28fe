//! Recomputes the checksums of a mutated disk's partition table and LVM metadata, so that
//! the fuzzer's changes reach the parsers behind the checksum checks (GPT header and entry
//! fields, PV headers, metadata area headers, the metadata text) instead of all stopping
//! at "checksum mismatch". Best effort on any bytes: whatever does not look like the
//! structure is left alone, and nothing here panics.

const SECTOR: usize = 512;

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&v.to_le_bytes());
    }
}

/// LVM's CRC-32: reflected polynomial, initial 0xf597a6cf, no final inversion.
fn lvm_crc(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(!0xf597_a6cfu32);
    h.update(data);
    !h.finalize()
}

/// The GPT at LBA 1: the entry array's CRC, then the header's.
pub fn gpt(img: &mut [u8]) {
    let h = SECTOR;
    if img.get(h..h + 8) != Some(b"EFI PART".as_slice()) {
        return;
    }
    let (Some(size), Some(lba), Some(n), Some(esz)) = (
        le32(img, h + 12),
        le64(img, h + 72),
        le32(img, h + 80),
        le32(img, h + 84),
    ) else {
        return;
    };
    let start = (lba as usize).saturating_mul(SECTOR);
    let len = (n as usize).saturating_mul(esz as usize);
    if let Some(entries) = start
        .checked_add(len)
        .filter(|&e| e <= img.len())
        .map(|e| &img[start..e])
    {
        let crc = crc32fast::hash(entries);
        put32(img, h + 88, crc);
    }
    let size = size as usize;
    if (92..=SECTOR).contains(&size) {
        put32(img, h + 16, 0);
        let crc = crc32fast::hash(&img[h..h + size]);
        put32(img, h + 16, crc);
    }
}

/// An LVM PV starting at byte `pv` of `img`: text checksums, metadata area headers, label.
pub fn lvm(img: &mut [u8], pv: usize) {
    for s in 0..4 {
        let l = pv + s * SECTOR;
        if img.get(l..l + 8) != Some(b"LABELONE".as_slice()) || l + SECTOR > img.len() {
            continue;
        }
        let at = le32(img, l + 20).unwrap_or(0) as usize;
        if !(32..=SECTOR - 72).contains(&at) {
            continue;
        }
        // Data areas, then metadata areas: (offset, size) pairs, each list ended by a
        // zero offset.
        let mut p = l + at + 40;
        let mut lists = 0;
        while lists < 2 && p + 16 <= l + SECTOR {
            let off = le64(img, p).unwrap_or(0);
            let size = le64(img, p + 8).unwrap_or(0);
            p += 16;
            if off == 0 {
                lists += 1;
            } else if lists == 1 {
                mda(img, pv, off, size);
            }
        }
        let crc = lvm_crc(&img[l + 20..l + SECTOR]);
        put32(img, l + 16, crc);
    }
}

fn mda(img: &mut [u8], pv: usize, off: u64, size: u64) {
    let Some(m) = usize::try_from(off).ok().and_then(|o| pv.checked_add(o)) else {
        return;
    };
    if m.checked_add(SECTOR).is_none_or(|e| e > img.len()) {
        return;
    }
    let area_end = usize::try_from(size)
        .ok()
        .and_then(|s| m.checked_add(s))
        .map_or(img.len(), |e| e.min(img.len()));
    // The first raw location: the committed text, in the circular buffer after the header.
    let (toff, tsize) = (
        le64(img, m + 40).unwrap_or(0),
        le64(img, m + 48).unwrap_or(0),
    );
    if toff != 0 && tsize <= 1 << 20 {
        let mut text = Vec::new();
        let mut pos = usize::try_from(toff).ok().and_then(|o| m.checked_add(o));
        let mut left = tsize as usize;
        while left > 0 {
            let Some(p) = pos.filter(|&p| p < area_end) else {
                break;
            };
            let n = left.min(area_end - p);
            text.extend_from_slice(&img[p..p + n]);
            left -= n;
            pos = Some(m + SECTOR);
            if area_end <= m + SECTOR {
                break;
            }
        }
        if left == 0 {
            let crc = lvm_crc(&text);
            put32(img, m + 56, crc);
        }
    }
    let crc = lvm_crc(&img[m + 4..m + SECTOR]);
    put32(img, m, crc);
}
