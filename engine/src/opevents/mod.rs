//! Operator events: lifecycle events about the deployment itself (alerts,
//! attempts, subscription changes) sent to one operator-configured sink.
//!
//! `alert.*` events are written to the node's embedded store before anything
//! is sent and deleted only once the sink accepted them, so they survive sink
//! outages and restarts (at least once). Other topics are best effort: a
//! bounded queue, up to three tries, and what does not fit is counted and
//! dropped, so a slow sink never slows deliveries.

pub mod sink;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::backoff::Backoff;

use crate::model::{Attempt, AttemptStatus, Destination, Event};
use crate::store::embedded::EmbeddedStore;
use crate::timefmt::{format_ms, now_ms};

pub use sink::{Sink, SinkConfig};

/// Every topic this build emits.
pub const TOPICS: &[&str] = &[
    TOPIC_CONSECUTIVE_FAILURE,
    TOPIC_DISABLED,
    TOPIC_EXHAUSTED,
    TOPIC_ATTEMPT_SUCCESS,
    TOPIC_ATTEMPT_FAILED,
    TOPIC_SUBSCRIPTION_UPDATED,
];

pub const TOPIC_CONSECUTIVE_FAILURE: &str = "alert.destination.consecutive_failure";
pub const TOPIC_DISABLED: &str = "alert.destination.disabled";
pub const TOPIC_EXHAUSTED: &str = "alert.attempt.exhausted_retries";
pub const TOPIC_ATTEMPT_SUCCESS: &str = "attempt.success";
pub const TOPIC_ATTEMPT_FAILED: &str = "attempt.failed";
pub const TOPIC_SUBSCRIPTION_UPDATED: &str = "tenant.subscription.updated";

/// Best-effort events waiting for the sink; beyond this they are dropped.
const BEST_EFFORT_QUEUE: usize = 16_384;
/// Concurrent sends of best-effort events.
const BEST_EFFORT_WORKERS: usize = 8;
/// Tries of a best-effort event (with 100 ms, then 200 ms between them).
const BEST_EFFORT_TRIES: u32 = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicSet {
    All,
    List(Vec<String>),
}

impl TopicSet {
    pub fn contains(&self, topic: &str) -> bool {
        match self {
            TopicSet::All => true,
            TopicSet::List(l) => l.iter().any(|t| t == topic),
        }
    }
}

#[derive(Debug, Clone)]
pub struct OperatorEventsConfig {
    pub topics: TopicSet,
    pub sink: SinkConfig,
}

/// Outpost's event projection (the delivery task's event).
pub fn event_json(e: &Event) -> serde_json::Value {
    crate::queue::event_json(e)
}

pub fn attempt_json(a: &Attempt) -> serde_json::Value {
    serde_json::json!({
        "id": a.id,
        "tenant_id": a.tenant_id,
        "event_id": a.event_id,
        "destination_id": a.destination_id,
        "destination_type": a.destination_type,
        "attempt_number": a.attempt_number,
        "manual": a.manual,
        "status": a.status.as_str(),
        "time": format_ms(a.time),
        "code": a.code,
        "response_data": a.response_data,
    })
}

/// The destination as operator events show it: never its credentials.
pub fn destination_json(d: &Destination) -> serde_json::Value {
    serde_json::json!({
        "id": d.id,
        "tenant_id": d.tenant_id,
        "type": d.kind,
        "topics": d.topics,
        "config": d.config,
        "created_at": format_ms(d.created_at),
        "disabled_at": d.disabled_at.map(format_ms),
    })
}

/// A best-effort event, serialised off the delivery path by a sender worker.
enum Pending {
    Ready { topic: &'static str, body: Vec<u8> },
    Attempt(Box<AttemptNote>),
}

/// One delivery attempt, for `attempt.success` / `attempt.failed`.
pub struct AttemptNote {
    pub event: Arc<Event>,
    pub attempt: Attempt,
    pub destination: Arc<Destination>,
}

/// Counters for the health endpoint and tests.
#[derive(Debug, Default)]
pub struct OpEventStats {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
    pub failed_sends: AtomicU64,
}

/// The node's operator-events emitter.
pub struct OperatorEvents {
    topics: TopicSet,
    deployment_id: Option<String>,
    sink: Arc<dyn Sink>,
    outbox: Arc<EmbeddedStore>,
    alert_wake: Notify,
    tx: flume::Sender<Pending>,
    rx: flume::Receiver<Pending>,
    pub stats: OpEventStats,
}

impl OperatorEvents {
    pub fn new(cfg: &OperatorEventsConfig, deployment_id: &str, outbox: Arc<EmbeddedStore>) -> Arc<Self> {
        let (tx, rx) = flume::bounded(BEST_EFFORT_QUEUE);
        Arc::new(Self {
            topics: cfg.topics.clone(),
            deployment_id: (!deployment_id.is_empty()).then(|| deployment_id.to_string()),
            sink: sink::build(cfg.sink.clone()),
            outbox,
            alert_wake: Notify::new(),
            tx,
            rx,
            stats: OpEventStats::default(),
        })
    }

    pub fn wants(&self, topic: &str) -> bool {
        self.topics.contains(topic)
    }

    fn envelope(&self, topic: &str, tenant_id: Option<&str>, data: serde_json::Value) -> Vec<u8> {
        let mut env = serde_json::Map::new();
        env.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
        env.insert("topic".into(), topic.into());
        env.insert("time".into(), format_ms(now_ms()).into());
        if let Some(d) = &self.deployment_id {
            env.insert("deployment_id".into(), d.clone().into());
        }
        if let Some(t) = tenant_id {
            env.insert("tenant_id".into(), t.into());
        }
        env.insert("data".into(), data);
        serde_json::to_vec(&env).unwrap_or_default()
    }

    /// Persists an `alert.*` event, then wakes the sender. Returns once the
    /// event is durable (it is retried until the sink accepts it).
    pub async fn alert(&self, topic: &'static str, tenant_id: String, data: serde_json::Value) {
        if !self.wants(topic) {
            return;
        }
        let body = self.envelope(topic, Some(&tenant_id), data);
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            match self.outbox.outbox_put(topic, body.clone()).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, topic, "cannot persist an operator alert; retrying");
                    backoff.wait().await;
                }
            }
        }
        self.alert_wake.notify_one();
    }

    /// Queues a best-effort event; dropped (and counted) if the queue is full.
    pub fn best_effort(&self, topic: &'static str, tenant_id: Option<&str>, data: serde_json::Value) {
        if !self.wants(topic) {
            return;
        }
        let body = self.envelope(topic, tenant_id, data);
        self.offer(Pending::Ready { topic, body });
    }

    /// Queues `attempt.success` / `attempt.failed` from a shard: no
    /// serialisation here, and never a wait.
    pub fn attempt(&self, note: AttemptNote) {
        self.offer(Pending::Attempt(Box::new(note)));
    }

    pub fn wants_attempts(&self) -> bool {
        self.wants(TOPIC_ATTEMPT_SUCCESS) || self.wants(TOPIC_ATTEMPT_FAILED)
    }

    fn offer(&self, p: Pending) {
        if self.tx.try_send(p).is_err() {
            let n = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // One line per power of two keeps a flood from flooding the log.
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped_total = n,
                    "operator-event queue full; best-effort events dropped"
                );
            }
        }
    }

    /// Starts the alert sender and the best-effort workers.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut v = vec![tokio::spawn(self.clone().send_alerts())];
        for _ in 0..BEST_EFFORT_WORKERS {
            v.push(tokio::spawn(self.clone().send_best_effort()));
        }
        v
    }

    /// Sends persisted alerts in order, each until the sink accepts it.
    async fn send_alerts(self: Arc<Self>) {
        let mut sending = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut reading = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let batch = match self.outbox.outbox_load(100).await {
                Ok(b) => {
                    reading.reset();
                    b
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the operator alert outbox");
                    reading.wait().await;
                    continue;
                }
            };
            if batch.is_empty() {
                // Woken by a new alert; the timeout is a safety net.
                let _ = tokio::time::timeout(Duration::from_secs(5), self.alert_wake.notified()).await;
                continue;
            }
            for (seq, topic, body) in batch {
                loop {
                    match self.sink.send(&topic, &body).await {
                        Ok(()) => {
                            self.stats.sent.fetch_add(1, Ordering::Relaxed);
                            sending.reset();
                            break;
                        }
                        Err(e) => {
                            self.stats.failed_sends.fetch_add(1, Ordering::Relaxed);
                            let wait = sending.next_delay();
                            tracing::warn!(error = %e, topic, retry_in_ms = wait.as_millis() as u64, "operator alert not accepted by the sink; will retry");
                            tokio::time::sleep(wait).await;
                        }
                    }
                }
                if let Err(e) = self.outbox.outbox_delete(seq).await {
                    // It will be sent again after a restart (at least once).
                    tracing::warn!(error = %e, "cannot clear a sent operator alert");
                }
            }
        }
    }

    async fn send_best_effort(self: Arc<Self>) {
        while let Ok(p) = self.rx.recv_async().await {
            let (topic, body) = match p {
                Pending::Ready { topic, body } => (topic, body),
                Pending::Attempt(n) => {
                    let topic = match n.attempt.status {
                        AttemptStatus::Success => TOPIC_ATTEMPT_SUCCESS,
                        AttemptStatus::Failed => TOPIC_ATTEMPT_FAILED,
                    };
                    if !self.wants(topic) {
                        continue;
                    }
                    let data = serde_json::json!({
                        "tenant_id": n.event.tenant_id,
                        "event": event_json(&n.event),
                        "attempt": attempt_json(&n.attempt),
                        "destination": destination_json(&n.destination),
                    });
                    (topic, self.envelope(topic, Some(&n.event.tenant_id), data))
                }
            };
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
            for n in 1..=BEST_EFFORT_TRIES {
                match self.sink.send(topic, &body).await {
                    Ok(()) => {
                        self.stats.sent.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        self.stats.failed_sends.fetch_add(1, Ordering::Relaxed);
                        if n == BEST_EFFORT_TRIES {
                            let d = self.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                            tracing::warn!(error = %e, topic, dropped_total = d, "operator event dropped after {BEST_EFFORT_TRIES} tries");
                        } else {
                            backoff.wait().await;
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_sets() {
        assert!(TopicSet::All.contains("attempt.success"));
        let l = TopicSet::List(vec!["alert.destination.disabled".into()]);
        assert!(l.contains("alert.destination.disabled"));
        assert!(!l.contains("attempt.failed"));
    }
}
