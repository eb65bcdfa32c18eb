//! A latency histogram the hot path can feed without a lock: one relaxed
//! atomic add per bucket, sum and count. Shards are single-threaded and
//! each owns its own, so nothing contends; the Prometheus exposition reads
//! them from another thread.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds, in microseconds, of the buckets (Prometheus' `le`).
const BOUNDS_US: [u64; 18] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];

#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        let i = BOUNDS_US.partition_point(|b| *b < us);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Sum in seconds, count, and `(le seconds, observations)` per bucket,
    /// not cumulative, the last with `le` = `f64::MAX` (`+Inf`): the form
    /// the exposition encoder takes.
    pub fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets = BOUNDS_US
            .iter()
            .map(|b| *b as f64 / 1e6)
            .chain(std::iter::once(f64::MAX))
            .zip(&self.buckets)
            .map(|(le, n)| (le, n.load(Relaxed)))
            .collect();
        let count = self.count.load(Relaxed);
        (self.sum_us.load(Relaxed) as f64 / 1e6, count, buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (sum, count, buckets) = h.snapshot();
        assert_eq!(count, 3);
        assert!((sum - 60.0033).abs() < 1e-9);
        assert_eq!(buckets[2], (0.00025, 0));
        assert_eq!(buckets[3], (0.0005, 1));
        assert_eq!(buckets[6], (0.005, 1));
        assert_eq!(buckets[buckets.len() - 2], (30.0, 0));
        assert_eq!(buckets.last().copied(), Some((f64::MAX, 1)), "60 s is only in +Inf");
        assert_eq!(buckets.iter().map(|b| b.1).sum::<u64>(), count);
    }
}
