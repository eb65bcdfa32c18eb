//! Per-destination concurrency on a shard, adapted to how the destination
//! answers, so that one destination (or one tenant's many) that stops
//! answering cannot take the shard's attempt slots from everybody else.
//!
//! - A destination starts with [`INITIAL`] attempts in flight at most and
//!   gains one per success, up to `OUTRIDER_DESTINATION_MAX_CONCURRENCY`
//!   (a healthy destination reaches 64 after about 50 deliveries). The start
//!   is not lower so that a burst to a new destination still fills the
//!   batch APIs' calls (SQS, Kinesis, EventBridge, Pub/Sub, Kafka).
//! - Until their first timeout, new destinations that never answer hold
//!   [`INITIAL`] slots each: more than `slots / INITIAL` of them created at
//!   once can fill a shard for one delivery timeout.
//! - A timeout halves its limit (down to 1) and marks it *slow*.
//! - Slow destinations together hold at most half of the shard's slots
//!   ([`slow_share`]); a success clears the mark. Other failures (a fast 500)
//!   change nothing: they do not hold slots.
//! - Every outcome also feeds an average of how long attempts take, so the
//!   shard can tell how long a delivery queued behind the destination's
//!   limit will wait ([`Flow::pace`]).

/// Attempts in flight a destination starts with.
pub const INITIAL: usize = 16;

/// A destination's limit, whether its last telling outcome was a timeout,
/// and how long its attempts take (a moving average; 0 before the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub limit: usize,
    pub slow: bool,
    pub latency_ms: u32,
}

/// What an attempt's outcome says about the destination's capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Timeout,
    /// Any other failure: it came back quickly, so it says nothing.
    Other,
}

impl Flow {
    pub fn new(max: usize) -> Self {
        Flow {
            limit: INITIAL.min(max).max(1),
            slow: false,
            latency_ms: 0,
        }
    }

    /// About how often the destination takes another delivery while it is
    /// at its limit: one attempt's time over the attempts it runs at once.
    /// `at_least` stands in for the average while it is shorter (before the
    /// first outcome, say, when deliveries have waited that long already).
    pub fn pace(&self, at_least: std::time::Duration) -> std::time::Duration {
        let latency = std::time::Duration::from_millis(u64::from(self.latency_ms)).max(at_least);
        latency / self.limit.max(1) as u32
    }

    pub fn observe(&mut self, outcome: Outcome, max: usize, took: std::time::Duration) {
        let took = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
        // Weighs the last eight outcomes or so: a destination that slows
        // down shows within a few attempts.
        self.latency_ms = if self.latency_ms == 0 {
            took.max(1)
        } else {
            ((u64::from(self.latency_ms) * 7 + u64::from(took)) / 8).max(1) as u32
        };
        match outcome {
            Outcome::Success => {
                self.limit = (self.limit + 1).min(max.max(1));
                self.slow = false;
            }
            Outcome::Timeout => {
                self.limit = (self.limit / 2).max(1);
                self.slow = true;
            }
            Outcome::Other => {}
        }
    }
}

/// Slots that slow destinations may hold together on a shard of `slots`.
pub fn slow_share(slots: usize) -> usize {
    (slots / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: std::time::Duration = std::time::Duration::from_millis(1);

    #[test]
    fn grows_on_success_and_halves_on_timeout() {
        let mut f = Flow::new(64);
        assert_eq!((f.limit, f.slow), (16, false));
        for _ in 0..100 {
            f.observe(Outcome::Success, 64, MS);
        }
        assert_eq!(f.limit, 64);
        f.observe(Outcome::Timeout, 64, MS);
        assert_eq!((f.limit, f.slow), (32, true));
        f.observe(Outcome::Other, 64, MS);
        assert_eq!((f.limit, f.slow), (32, true));
        for _ in 0..10 {
            f.observe(Outcome::Timeout, 64, MS);
        }
        assert_eq!((f.limit, f.slow), (1, true));
        f.observe(Outcome::Success, 64, MS);
        assert_eq!((f.limit, f.slow), (2, false));
        assert_eq!(Flow::new(8).limit, 8);
        assert_eq!(Flow::new(1).limit, 1);
        assert_eq!(slow_share(512), 256);
        assert_eq!(slow_share(1), 1);
    }

    #[test]
    fn pace_follows_how_long_attempts_take() {
        let mut f = Flow::new(64);
        // Nothing known yet: what the caller has seen stands in.
        assert_eq!(f.pace(1600 * MS), 100 * MS);
        f.observe(Outcome::Success, 64, 170 * MS);
        assert_eq!(f.latency_ms, 170);
        // 17 attempts at once (one more after the success), 170 ms each.
        assert_eq!(f.pace(std::time::Duration::ZERO), 10 * MS);
        // A destination that starts timing out (5 s) shows within a few
        // outcomes, and its limit halves each time.
        for _ in 0..4 {
            f.observe(Outcome::Timeout, 64, 5000 * MS);
        }
        assert!(f.latency_ms > 2000, "{f:?}");
        assert_eq!(f.limit, 1);
        assert!(f.pace(std::time::Duration::ZERO) > 2000 * MS);
        // A longer wait already seen counts over the average.
        assert_eq!(f.pace(60_000 * MS), 60_000 * MS);
    }
}
