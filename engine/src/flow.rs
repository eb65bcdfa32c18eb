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

/// Attempts in flight a destination starts with.
pub const INITIAL: usize = 16;

/// A destination's limit and whether its last telling outcome was a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub limit: usize,
    pub slow: bool,
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
        }
    }

    pub fn observe(&mut self, outcome: Outcome, max: usize) {
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

    #[test]
    fn grows_on_success_and_halves_on_timeout() {
        let mut f = Flow::new(64);
        assert_eq!(f, Flow { limit: 16, slow: false });
        for _ in 0..100 {
            f.observe(Outcome::Success, 64);
        }
        assert_eq!(f.limit, 64);
        f.observe(Outcome::Timeout, 64);
        assert_eq!(f, Flow { limit: 32, slow: true });
        f.observe(Outcome::Other, 64);
        assert_eq!(f, Flow { limit: 32, slow: true });
        for _ in 0..10 {
            f.observe(Outcome::Timeout, 64);
        }
        assert_eq!(f, Flow { limit: 1, slow: true });
        f.observe(Outcome::Success, 64);
        assert_eq!(f, Flow { limit: 2, slow: false });
        assert_eq!(Flow::new(8).limit, 8);
        assert_eq!(Flow::new(1).limit, 1);
        assert_eq!(slow_share(512), 256);
        assert_eq!(slow_share(1), 1);
    }
}
