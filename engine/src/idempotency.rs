//! Publish idempotency on one node: which event ids were accepted within the
//! window (`PUBLISH_IDEMPOTENCY_KEY_TTL`).
//!
//! Striped so that publishes on different cores rarely meet on a lock. Ids
//! are kept as a 128-bit keyed hash (two SipHash keys drawn at start), so a
//! large window costs ~40 bytes per id and a caller cannot craft a collision.
//! The map is rebuilt at every start from the index and the journals.
//!
//! Memory is bounded: past [`MAX_IDS`] ids, the oldest are dropped at the
//! next prune and `evicted_until` says up to when; an id not found in memory
//! while that time is still inside the window must be looked up in the index
//! (the caller does that), so a duplicate is never missed.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use parking_lot::Mutex;

const STRIPES: usize = 64;
/// Ids kept in memory at most (about 40 bytes each).
pub const MAX_IDS: usize = 2_000_000;

pub struct Idempotency {
    k1: RandomState,
    k2: RandomState,
    stripes: Vec<Mutex<HashMap<u128, Claim>>>,
    ttl_ms: i64,
    max_ids: usize,
    /// Ids accepted at or before this time (ms) may have been dropped from memory.
    evicted_until: std::sync::atomic::AtomicI64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Claim {
    /// A publish is making the event durable right now.
    InFlight,
    Accepted {
        at_ms: i64,
    },
}

/// What a publish found for its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimResult {
    /// The caller now holds the id; `confirm` or `release` it.
    Claimed,
    Duplicate,
    /// Another publish of the same id is in progress: not a duplicate yet.
    Busy,
}

impl Idempotency {
    pub fn new(ttl_ms: i64) -> Self {
        Self::with_limit(ttl_ms, MAX_IDS)
    }

    pub fn with_limit(ttl_ms: i64, max_ids: usize) -> Self {
        Self {
            k1: RandomState::new(),
            k2: RandomState::new(),
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            ttl_ms,
            max_ids,
            evicted_until: std::sync::atomic::AtomicI64::new(i64::MIN),
        }
    }

    /// Ids accepted up to `until_ms` may be missing from memory.
    pub fn mark_evicted(&self, until_ms: i64) {
        self.evicted_until
            .fetch_max(until_ms, std::sync::atomic::Ordering::AcqRel);
    }

    /// Whether an id missing from memory may still be a duplicate (memory
    /// was trimmed within the window): then ask the index.
    pub fn needs_lookup(&self, now_ms: i64) -> bool {
        self.evicted_until.load(std::sync::atomic::Ordering::Acquire) + self.ttl_ms > now_ms
    }

    fn key(&self, id: &str) -> u128 {
        ((self.k1.hash_one(id) as u128) << 64) | self.k2.hash_one(id) as u128
    }

    fn stripe(&self, key: u128) -> &Mutex<HashMap<u128, Claim>> {
        &self.stripes[(key as usize) % STRIPES]
    }

    pub fn claim(&self, id: &str, now_ms: i64) -> ClaimResult {
        let key = self.key(id);
        let mut s = self.stripe(key).lock();
        match s.get(&key) {
            Some(Claim::InFlight) => ClaimResult::Busy,
            Some(Claim::Accepted { at_ms }) if at_ms + self.ttl_ms > now_ms => ClaimResult::Duplicate,
            _ => {
                s.insert(key, Claim::InFlight);
                ClaimResult::Claimed
            }
        }
    }

    /// The claimed event is durable.
    pub fn confirm(&self, id: &str, now_ms: i64) {
        let key = self.key(id);
        self.stripe(key).lock().insert(key, Claim::Accepted { at_ms: now_ms });
    }

    /// The claimed publish failed: a retry of it must go through.
    pub fn release(&self, id: &str) {
        let key = self.key(id);
        let mut s = self.stripe(key).lock();
        if s.get(&key) == Some(&Claim::InFlight) {
            s.remove(&key);
        }
    }

    /// Records an id accepted earlier (recovery); the latest time wins.
    pub fn remember(&self, id: &str, at_ms: i64) {
        let key = self.key(id);
        let mut s = self.stripe(key).lock();
        match s.get(&key) {
            Some(Claim::Accepted { at_ms: prev }) if *prev >= at_ms => {}
            _ => {
                s.insert(key, Claim::Accepted { at_ms });
            }
        }
    }

    /// Drops ids older than the window, and the oldest ones beyond the
    /// memory limit; returns how many are kept.
    pub fn prune(&self, now_ms: i64) -> usize {
        let mut cutoff = now_ms - self.ttl_ms;
        let len = self.len();
        if len > self.max_ids {
            // Keep the newest `max_ids`: cut at the time of the one just older.
            let mut times: Vec<i64> = Vec::with_capacity(len);
            for st in &self.stripes {
                times.extend(st.lock().values().filter_map(|c| match c {
                    Claim::Accepted { at_ms } => Some(*at_ms),
                    Claim::InFlight => None,
                }));
            }
            if times.len() > self.max_ids {
                let k = times.len() - self.max_ids - 1;
                let (_, nth, _) = times.select_nth_unstable(k);
                cutoff = cutoff.max(*nth);
                self.evicted_until
                    .fetch_max(cutoff, std::sync::atomic::Ordering::AcqRel);
            }
        }
        let mut kept = 0;
        for s in &self.stripes {
            let mut s = s.lock();
            s.retain(|_, c| match c {
                Claim::InFlight => true,
                Claim::Accepted { at_ms } => *at_ms > cutoff,
            });
            let keep = s.len() * 2;
            s.shrink_to(keep);
            kept += s.len();
        }
        kept
    }

    pub fn len(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_confirm_duplicate_and_expiry() {
        let i = Idempotency::new(1000);
        assert_eq!(i.claim("e1", 0), ClaimResult::Claimed);
        assert_eq!(i.claim("e1", 1), ClaimResult::Busy);
        i.confirm("e1", 10);
        assert_eq!(i.claim("e1", 500), ClaimResult::Duplicate);
        assert_eq!(i.claim("e1", 1010), ClaimResult::Claimed);
        i.release("e1");
        assert_eq!(i.claim("e1", 1011), ClaimResult::Claimed);
        assert_eq!(i.claim("e2", 0), ClaimResult::Claimed);
        i.confirm("e2", 0);
        i.remember("e3", 5);
        assert_eq!(i.prune(1004), 2, "e2 expired, e1 in flight and e3 kept");
        assert_eq!(i.claim("e3", 6), ClaimResult::Duplicate);
    }

    #[test]
    fn memory_is_bounded_and_says_when_to_ask_the_index() {
        let i = Idempotency::with_limit(1000, 10);
        assert!(!i.needs_lookup(0));
        for n in 0..40 {
            i.remember(&format!("e{n}"), n * 10);
        }
        let kept = i.prune(400);
        assert_eq!(kept, 10);
        assert!(i.needs_lookup(400), "dropped ids are still inside the window");
        assert_eq!(i.claim("e39", 401), ClaimResult::Duplicate, "the newest stay");
        assert!(
            !i.needs_lookup(400 + 1000),
            "once the window has passed them, no lookup"
        );
    }
}
