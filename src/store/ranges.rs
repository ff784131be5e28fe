//! Byte-range sets (sorted, merged lists of `(offset, len)`) and copying the ranges of a
//! device into a new image: what a capture stores. Everything outside the ranges is left
//! out of the image and reads back as zeros.

use super::buf::AlignedBuf;
use super::device::BlockDevice;
use super::error::Result;
use super::image::ImageWriter;
use super::transfer::Progress;

/// Sorts and merges `ranges` (touching ranges join), dropping empty ones and clipping to
/// `0..limit`.
pub fn normalize(ranges: &[(u64, u64)], limit: u64) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = ranges
        .iter()
        .filter_map(|&(o, l)| {
            let end = o.saturating_add(l).min(limit);
            (o < end).then_some((o, end))
        })
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some((_, le)) if *le >= s => *le = (*le).max(e),
            _ => out.push((s, e)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

/// `ranges` widened to whole units of `unit` bytes (then merged), clipped to `limit`.
pub fn align_out(ranges: &[(u64, u64)], unit: u64, limit: u64) -> Vec<(u64, u64)> {
    let widened: Vec<(u64, u64)> = ranges
        .iter()
        .map(|&(o, l)| {
            let s = o / unit * unit;
            let e = o.saturating_add(l).div_ceil(unit).saturating_mul(unit);
            (s, e - s)
        })
        .collect();
    normalize(&widened, limit)
}

/// `0..limit` minus `holes` (both normalized first).
pub fn complement(holes: &[(u64, u64)], limit: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for (o, l) in normalize(holes, limit) {
        if o > pos {
            out.push((pos, o - pos));
        }
        pos = o + l;
    }
    if pos < limit {
        out.push((pos, limit - pos));
    }
    out
}

/// The bytes `ranges` cover.
pub fn total(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|r| r.1).sum()
}

/// Copies the bytes of `dev` in `keep` (normalized, chunk-aligned here) into `w`, chunk by
/// chunk; zero chunks are not stored. Progress counts kept bytes.
pub fn copy_ranges_into(
    dev: &dyn BlockDevice,
    keep: &[(u64, u64)],
    w: &mut ImageWriter,
    chunk: usize,
    progress: Progress,
) -> Result<u64> {
    const READ: u64 = 1 << 20;
    let len = dev.len();
    let cs = chunk as u64;
    let keep = align_out(keep, cs, len.div_ceil(cs) * cs);
    let all = total(&keep);
    let mut buf = AlignedBuf::zeroed(READ as usize);
    let mut done = 0;
    progress(0, all);
    for (start, n) in keep {
        let mut pos = start;
        while pos < start + n {
            let want = (start + n - pos).min(READ) as usize;
            // The last chunk may run past a device whose size is not a whole chunk.
            let avail = (len.saturating_sub(pos) as usize).min(want);
            buf[avail..want].fill(0);
            dev.read_at(&mut buf[..avail], pos)?;
            for (i, c) in buf[..want].chunks(chunk).enumerate() {
                w.put(pos / cs + i as u64, c)?;
            }
            pos += want as u64;
            done += want as u64;
            progress(done, all);
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_clip_align_and_complement() {
        assert_eq!(
            normalize(&[(10, 5), (0, 3), (14, 6), (30, 0), (90, 50)], 100),
            vec![(0, 3), (10, 10), (90, 10)]
        );
        assert_eq!(normalize(&[(3, 2), (0, 3)], 10), vec![(0, 5)]);
        assert_eq!(
            align_out(&[(5, 2), (4100, 1)], 4096, 1 << 20),
            vec![(0, 8192)]
        );
        assert_eq!(
            align_out(&[(9000, 1)], 4096, 10_000),
            vec![(8192, 10_000 - 8192)]
        );
        assert_eq!(
            complement(&[(10, 10), (50, 60)], 100),
            vec![(0, 10), (20, 30)]
        );
        assert_eq!(complement(&[], 7), vec![(0, 7)]);
        assert_eq!(total(&[(0, 3), (10, 4)]), 7);
    }
}
