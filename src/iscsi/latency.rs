//! The server's read latency: a histogram of how long each READ (6/10/12/16) took from its
//! arrival (its PDU read off the socket, so the time it waited for a thread counts) until
//! its last Data-In and status were queued for the socket. Log2 buckets of microseconds in
//! atomics, cheap enough to be always on; the server logs it at shutdown (`read latency`),
//! which is how tools/bench-iscsi compares a replay with and without a boot trace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket `b` counts times in [2^b, 2^(b+1)) µs (bucket 0 also holds 0 µs); the last one
/// everything above (2^31 µs is over half an hour).
const BUCKETS: usize = 32;

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
}

fn bucket(us: u64) -> usize {
    if us == 0 {
        0
    } else {
        (63 - us.leading_zeros() as usize).min(BUCKETS - 1)
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The mean in µs (0 with nothing recorded).
    pub fn mean_us(&self) -> u64 {
        let n = total(&self.snapshot());
        self.sum_us
            .load(Ordering::Relaxed)
            .checked_div(n)
            .unwrap_or(0)
    }

    pub fn snapshot(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

/// What a snapshot says: the count, and per-quantile the upper bound (µs, exclusive) of the
/// bucket holding it: "p99 < 2048 µs".
pub fn total(s: &[u64; BUCKETS]) -> u64 {
    s.iter().sum()
}

pub fn quantile_bound_us(s: &[u64; BUCKETS], q: f64) -> u64 {
    let n = total(s);
    if n == 0 {
        return 0;
    }
    // The rank of the quantile, 1-based: the smallest count whose share reaches q.
    let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
    let mut seen = 0;
    for (b, &c) in s.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return 1u64 << (b + 1);
        }
    }
    1u64 << BUCKETS
}

/// The non-empty buckets as `lower_us:count` pairs, e.g. `64:10 128:3`.
pub fn buckets_text(s: &[u64; BUCKETS]) -> String {
    s.iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(b, c)| format!("{}:{c}", if b == 0 { 0 } else { 1u64 << b }))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_fall_in_their_power_of_two_bucket() {
        let h = Histogram::default();
        for us in [0, 1, 2, 3, 4, 1000, 1023, 1024] {
            h.record(Duration::from_micros(us));
        }
        h.record(Duration::from_secs(100_000));
        let s = h.snapshot();
        assert_eq!(s[0], 2); // 0 and 1 µs
        assert_eq!(s[1], 2); // 2, 3
        assert_eq!(s[2], 1); // 4
        assert_eq!(s[9], 2); // 1000, 1023
        assert_eq!(s[10], 1); // 1024
        assert_eq!(s[BUCKETS - 1], 1);
        assert_eq!(total(&s), 9);
        assert_eq!(buckets_text(&s), "0:2 2:2 4:1 512:2 1024:1 2147483648:1");
    }

    #[test]
    fn quantiles_are_the_upper_bound_of_their_bucket() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(100)); // bucket 6: [64, 128)
        }
        h.record(Duration::from_micros(5000)); // bucket 12: [4096, 8192)
        h.record(Duration::from_micros(70_000)); // bucket 16
        let s = h.snapshot();
        assert_eq!(quantile_bound_us(&s, 0.5), 128);
        assert_eq!(quantile_bound_us(&s, 0.98), 128);
        assert_eq!(quantile_bound_us(&s, 0.99), 8192);
        assert_eq!(quantile_bound_us(&s, 1.0), 131_072);
        assert_eq!(quantile_bound_us(&[0; BUCKETS], 0.99), 0);
        assert_eq!(h.mean_us(), (98 * 100 + 5000 + 70_000) / 100);
        assert_eq!(Histogram::default().mean_us(), 0);
    }
}
