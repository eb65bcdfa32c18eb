//! Consecutive-failure tracking, auto-disable and exhausted-retries alerts.
//!
//! Shards count failures per destination in a plain map they own (no locks on
//! the delivery path) and flush the deltas every [`FLUSH_INTERVAL`] to one
//! tracker task per node. The tracker applies them to an [`AlertState`]
//! (in memory for a single node, Redis when nodes share state), works out
//! which thresholds a streak crossed, disables the destination at 100% when
//! asked to, and hands the alerts to the operator-events emitter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use crate::model::{Attempt, Destination, Event};
use crate::store::StoreResult;
use crate::timefmt::now_ms;

/// How often a shard hands its counters to the tracker.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);

/// Alert thresholds, in percent of `ALERT_CONSECUTIVE_FAILURE_COUNT`.
pub const THRESHOLDS: [u32; 4] = [50, 70, 90, 100];

/// Thresholds a streak crossed going from `old` to `new` failures, each with
/// the count at which it was reached (`ceil(n * p / 100)`). A threshold fires
/// once per streak: only when the count passes it, never again above it.
pub fn crossed(old: u64, new: u64, n: u32) -> Vec<(u32, u64)> {
    THRESHOLDS
        .iter()
        .map(|&p| (p, (n as u64 * p as u64).div_ceil(100)))
        .filter(|&(_, at)| old < at && at <= new)
        .collect()
}

/// One failed attempt kept as the example an alert carries.
#[derive(Debug, Clone)]
pub struct Sample {
    pub event: Arc<Event>,
    pub attempt: Attempt,
}

/// What a shard saw for one destination since its last flush: whether a
/// success ended the streak, then how many failures followed.
#[derive(Debug, Clone)]
pub struct Streak {
    pub destination: Arc<Destination>,
    pub reset: bool,
    pub failures: u32,
    /// The first failures after the reset (at most the alert count): an
    /// alert reports the attempt that reached its threshold.
    pub samples: Vec<Sample>,
}

impl Streak {
    pub fn new(destination: Arc<Destination>) -> Self {
        Self {
            destination,
            reset: false,
            failures: 0,
            samples: Vec::new(),
        }
    }

    pub fn success(&mut self) {
        self.reset = true;
        self.failures = 0;
        self.samples.clear();
    }

    pub fn failure(&mut self, sample: Sample, keep: usize) {
        self.failures += 1;
        if self.samples.len() < keep {
            self.samples.push(sample);
        }
    }

    /// Folds a later streak into this one (a flush that could not be applied yet).
    fn then(&mut self, later: Streak, keep: usize) {
        self.destination = later.destination;
        if later.reset {
            *self = Streak {
                destination: self.destination.clone(),
                ..later
            };
            return;
        }
        self.failures += later.failures;
        for s in later.samples {
            if self.samples.len() >= keep {
                break;
            }
            self.samples.push(s);
        }
    }
}

/// Alerting rules (Outpost's `ALERT_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertConfig {
    /// `None` turns consecutive-failure tracking off (the key set to an empty string).
    pub consecutive_failure_count: Option<u32>,
    pub auto_disable_destination: bool,
    /// `None` turns exhausted-retries alerts off; zero means no suppression.
    pub exhausted_retries_window: Option<Duration>,
    /// Which exhausted-retries alerts a window suppresses.
    pub exhausted_retries_scope: ExhaustedScope,
}

/// What one exhausted-retries alert stands for within its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExhaustedScope {
    /// The seed's rule (default): one alert per event and destination.
    Event,
    /// The newer docs' rule: one alert per destination.
    Destination,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            consecutive_failure_count: Some(100),
            auto_disable_destination: false,
            exhausted_retries_window: Some(Duration::from_secs(3600)),
            exhausted_retries_scope: ExhaustedScope::Event,
        }
    }
}

/// Messages from the shards to the tracker.
pub enum Signal {
    Streaks(Vec<Streak>),
    /// A delivery used up its retries.
    Exhausted {
        destination: Arc<Destination>,
        sample: Box<Sample>,
    },
}

/// One counter change: reset to zero first if `reset`, then add `failures`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterOp {
    pub destination_id: String,
    pub reset: bool,
    pub failures: u32,
}

/// The state alerts need, shared by every node that delivers.
pub trait AlertState: Send + Sync + 'static {
    /// Applies the ops in order; returns `(before, after)` per op, where
    /// `before` is the count after the reset and before the failures.
    fn apply(&self, ops: Vec<CounterOp>) -> BoxFuture<'_, StoreResult<Vec<(u64, u64)>>>;
    /// `true` the first time `key` is claimed within `window` (zero: always).
    fn claim(&self, key: String, window: Duration) -> BoxFuture<'_, StoreResult<bool>>;
    /// The current consecutive-failure count of a destination.
    fn failures(&self, destination_id: String) -> BoxFuture<'_, StoreResult<u64>>;
}

/// Shared by every delivery node: the counters and claim keys live in Redis
/// (`cf:<destination>`, `alert:claim:<key>`; the store's counter primitives).
impl AlertState for crate::store::redis::RedisEntityStore {
    fn apply(&self, ops: Vec<CounterOp>) -> BoxFuture<'_, StoreResult<Vec<(u64, u64)>>> {
        Box::pin(async move {
            let changes: Vec<(&str, bool, u32)> = ops
                .iter()
                .map(|o| (o.destination_id.as_str(), o.reset, o.failures))
                .collect();
            self.apply_counters(&changes).await
        })
    }

    fn claim(&self, key: String, window: Duration) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move { self.claim_once(&key, window).await })
    }

    fn failures(&self, destination_id: String) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move { self.counter(&destination_id).await })
    }
}

/// A single node's alert state.
#[derive(Default)]
pub struct MemoryAlertState {
    counts: Mutex<HashMap<String, u64>>,
    claims: Mutex<HashMap<String, i64>>,
}

impl AlertState for MemoryAlertState {
    fn apply(&self, ops: Vec<CounterOp>) -> BoxFuture<'_, StoreResult<Vec<(u64, u64)>>> {
        let mut counts = self.counts.lock();
        let out = ops
            .into_iter()
            .map(|op| {
                let before = if op.reset {
                    0
                } else {
                    counts.get(&op.destination_id).copied().unwrap_or(0)
                };
                let after = before + op.failures as u64;
                if after == 0 {
                    counts.remove(&op.destination_id);
                } else {
                    counts.insert(op.destination_id, after);
                }
                (before, after)
            })
            .collect();
        Box::pin(async move { Ok(out) })
    }

    fn claim(&self, key: String, window: Duration) -> BoxFuture<'_, StoreResult<bool>> {
        let now = now_ms();
        let mut claims = self.claims.lock();
        if claims.len() > 100_000 {
            claims.retain(|_, until| *until > now);
        }
        let fresh = match claims.get(&key) {
            Some(&until) if until > now => false,
            _ => {
                if !window.is_zero() {
                    claims.insert(key, now + window.as_millis() as i64);
                }
                true
            }
        };
        Box::pin(async move { Ok(fresh) })
    }

    fn failures(&self, destination_id: String) -> BoxFuture<'_, StoreResult<u64>> {
        let n = self.counts.lock().get(&destination_id).copied().unwrap_or(0);
        Box::pin(async move { Ok(n) })
    }
}

/// What the tracker needs from the rest of the node.
pub trait AlertActions: Send + Sync + 'static {
    /// Disables the destination; returns it as stored, or `None` if it is gone.
    fn disable(&self, destination: Arc<Destination>) -> BoxFuture<'_, Option<Arc<Destination>>>;
    /// Persists and sends an `alert.*` operator event (at least once).
    fn alert(&self, topic: &'static str, tenant_id: String, data: serde_json::Value) -> BoxFuture<'_, ()>;
    /// Whether anyone listens to this operator-event topic.
    fn wants(&self, topic: &str) -> bool;
}

// The alert topics are operator-event topics, named with the others.
pub use crate::opevents::{TOPIC_CONSECUTIVE_FAILURE, TOPIC_DISABLED, TOPIC_EXHAUSTED};

/// The node's tracker: applies the shards' counters and raises the alerts.
pub async fn track(
    cfg: AlertConfig,
    state: Arc<dyn AlertState>,
    actions: Arc<dyn AlertActions>,
    rx: flume::Receiver<Signal>,
) {
    let keep = cfg.consecutive_failure_count.unwrap_or(0) as usize;
    // Streaks whose flush failed (state store down), applied with the next ones.
    let mut carry: Vec<Streak> = Vec::new();
    loop {
        let first = if carry.is_empty() {
            match rx.recv_async().await {
                Ok(s) => Some(s),
                Err(_) => return,
            }
        } else {
            match tokio::time::timeout(Duration::from_millis(500), rx.recv_async()).await {
                Ok(Ok(s)) => Some(s),
                Ok(Err(_)) => return,
                Err(_) => None,
            }
        };
        let mut streaks: Vec<Streak> = std::mem::take(&mut carry);
        let mut exhausted = Vec::new();
        for signal in first.into_iter().chain(rx.drain()) {
            match signal {
                Signal::Streaks(s) => streaks.extend(s),
                Signal::Exhausted { destination, sample } => exhausted.push((destination, *sample)),
            }
        }
        for (destination, sample) in exhausted {
            exhausted_retries(&cfg, &*state, &*actions, destination, sample).await;
        }
        if streaks.is_empty() {
            continue;
        }
        // One op per destination, in arrival order.
        let mut merged: Vec<Streak> = Vec::with_capacity(streaks.len());
        let mut at: HashMap<String, usize> = HashMap::with_capacity(streaks.len());
        for s in streaks {
            match at.get(&s.destination.id) {
                Some(&i) => merged[i].then(s, keep),
                None => {
                    at.insert(s.destination.id.clone(), merged.len());
                    merged.push(s);
                }
            }
        }
        let ops = merged
            .iter()
            .map(|s| CounterOp {
                destination_id: s.destination.id.clone(),
                reset: s.reset,
                failures: s.failures,
            })
            .collect();
        let results = match state.apply(ops).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, destinations = merged.len(), "cannot update failure counters; will retry");
                carry = merged;
                continue;
            }
        };
        let Some(n) = cfg.consecutive_failure_count else {
            continue;
        };
        for (streak, (before, after)) in merged.into_iter().zip(results) {
            for (pct, count) in crossed(before, after, n) {
                raise(&cfg, &*actions, &streak, n, pct, count, before).await;
            }
        }
    }
}

async fn raise(
    cfg: &AlertConfig,
    actions: &dyn AlertActions,
    streak: &Streak,
    n: u32,
    pct: u32,
    count: u64,
    before: u64,
) {
    let idx = (count - before - 1) as usize;
    let Some(sample) = streak.samples.get(idx).or(streak.samples.last()) else {
        return;
    };
    let tenant_id = streak.destination.tenant_id.clone();
    if actions.wants(TOPIC_CONSECUTIVE_FAILURE) {
        let data = serde_json::json!({
            "tenant_id": tenant_id,
            "event": crate::opevents::event_json(&sample.event),
            "attempt": crate::opevents::attempt_json(&sample.attempt),
            "destination": crate::opevents::destination_json(&streak.destination),
            "consecutive_failures": { "current": count, "max": n, "threshold": pct },
        });
        actions.alert(TOPIC_CONSECUTIVE_FAILURE, tenant_id.clone(), data).await;
    }
    if pct == 100 && cfg.auto_disable_destination {
        let Some(disabled) = actions.disable(streak.destination.clone()).await else {
            return;
        };
        tracing::warn!(
            tenant_id = %tenant_id,
            destination_id = %disabled.id,
            consecutive_failures = count,
            "destination disabled after consecutive failures"
        );
        if actions.wants(TOPIC_DISABLED) {
            let at = disabled.disabled_at.map(crate::timefmt::format_ms);
            let data = serde_json::json!({
                "tenant_id": tenant_id,
                "destination": crate::opevents::destination_json(&disabled),
                "disabled_at": at,
                "reason": "consecutive_failure",
                "event": crate::opevents::event_json(&sample.event),
                "attempt": crate::opevents::attempt_json(&sample.attempt),
            });
            actions.alert(TOPIC_DISABLED, tenant_id, data).await;
        }
    }
}

async fn exhausted_retries(
    cfg: &AlertConfig,
    state: &dyn AlertState,
    actions: &dyn AlertActions,
    destination: Arc<Destination>,
    sample: Sample,
) {
    let Some(window) = cfg.exhausted_retries_window else {
        return;
    };
    if !actions.wants(TOPIC_EXHAUSTED) {
        return;
    }
    let key = match cfg.exhausted_retries_scope {
        ExhaustedScope::Event => format!("{}:{}:{}", destination.tenant_id, destination.id, sample.event.id),
        ExhaustedScope::Destination => format!("{}:{}", destination.tenant_id, destination.id),
    };
    // If the state store is down, alert anyway: a duplicate beats a lost alert.
    let fresh = match state.claim(key, window).await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "cannot check exhausted-retries suppression; alerting");
            true
        }
    };
    if !fresh {
        return;
    }
    let tenant_id = destination.tenant_id.clone();
    let data = serde_json::json!({
        "tenant_id": tenant_id,
        "event": crate::opevents::event_json(&sample.event),
        "attempt": crate::opevents::attempt_json(&sample.attempt),
        "destination": crate::opevents::destination_json(&destination),
    });
    actions.alert(TOPIC_EXHAUSTED, tenant_id, data).await;
}

/// The shared test suite every [`AlertState`] passes.
#[cfg(test)]
pub mod conformance {
    use super::*;

    fn op(d: &str, reset: bool, failures: u32) -> CounterOp {
        CounterOp {
            destination_id: d.into(),
            reset,
            failures,
        }
    }

    /// `prefix` keeps runs against a shared server apart.
    pub async fn run_all(state: &dyn AlertState, prefix: &str) {
        let a = format!("{prefix}des_a");
        let b = format!("{prefix}des_b");
        assert_eq!(state.failures(a.clone()).await.unwrap(), 0);
        let r = state
            .apply(vec![op(&a, false, 3), op(&b, false, 1), op(&a, false, 2)])
            .await
            .unwrap();
        assert_eq!(r, vec![(0, 3), (0, 1), (3, 5)]);
        assert_eq!(state.failures(a.clone()).await.unwrap(), 5);
        // A reset then failures: counted from zero.
        let r = state.apply(vec![op(&a, true, 2), op(&b, true, 0)]).await.unwrap();
        assert_eq!(r, vec![(0, 2), (0, 0)]);
        assert_eq!(state.failures(a.clone()).await.unwrap(), 2);
        assert_eq!(state.failures(b.clone()).await.unwrap(), 0);

        let k = format!("{prefix}claim");
        assert!(state.claim(k.clone(), Duration::from_millis(300)).await.unwrap());
        assert!(!state.claim(k.clone(), Duration::from_millis(300)).await.unwrap());
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(state.claim(k.clone(), Duration::from_millis(300)).await.unwrap());
        // A zero window never suppresses.
        let z = format!("{prefix}zero");
        assert!(state.claim(z.clone(), Duration::ZERO).await.unwrap());
        assert!(state.claim(z, Duration::ZERO).await.unwrap());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_fire_once_per_streak() {
        assert_eq!(crossed(0, 4, 10), vec![]);
        assert_eq!(crossed(4, 5, 10), vec![(50, 5)]);
        assert_eq!(crossed(5, 6, 10), vec![]);
        assert_eq!(crossed(6, 7, 10), vec![(70, 7)]);
        assert_eq!(crossed(0, 15, 10), vec![(50, 5), (70, 7), (90, 9), (100, 10)]);
        assert_eq!(crossed(10, 11, 10), vec![]);
        // ceil: 3 → 2, 3, 3, 3
        assert_eq!(crossed(0, 3, 3), vec![(50, 2), (70, 3), (90, 3), (100, 3)]);
        assert_eq!(crossed(0, 100, 100).len(), 4);
    }

    #[tokio::test]
    async fn memory_state_conformance() {
        conformance::run_all(&MemoryAlertState::default(), "").await;
    }

    #[tokio::test]
    async fn redis_state_conformance() {
        use crate::store::redis::{RedisConfig, RedisEntityStore};
        let host = std::env::var("OUTRIDER_TEST_REDIS_HOST").unwrap_or_else(|_| "127.0.0.1".into());
        // A random deployment prefix keeps test runs apart.
        let dep = format!("t{}", crate::ids::random_hex(6));
        let store = RedisEntityStore::connect(
            &RedisConfig::plain(host, 6379),
            &dep,
            crate::crypto::Cipher::new("k"),
            Duration::from_secs(3),
        )
        .await
        .unwrap_or_else(|e| panic!("Redis is required for this test: {e} (start it with scripts/services.sh up)"));
        conformance::run_all(&store, "").await;
    }
}
