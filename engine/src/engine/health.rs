//! What `/healthz` reports: each part of the node from its real state. A
//! part is `failed` (the node answers 503, naming it) when it stopped or
//! cannot reach what it needs, `degraded` when it lost its connection once
//! and is reconnecting, else `healthy`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};

use super::Engine;

/// A reconnecting worker failing this many times in a row, each time
/// within [`SHORT_RUN`] of (re)starting, cannot reach its back end.
const FAILED_AFTER: u32 = 3;
/// A connection that lasted this long before it failed was working: the
/// count of failures starts again from it.
const SHORT_RUN: Duration = Duration::from_secs(10);
/// How long `/healthz` waits for Redis to answer `PING`.
const PING_TIMEOUT: Duration = Duration::from_secs(1);

/// What a reconnecting worker (a queue consumer, the Redis change follower,
/// the shared retry poller) last saw of its back end.
#[derive(Debug, Default)]
pub struct Link {
    consecutive_errors: AtomicU32,
    last_error: Mutex<String>,
}

impl Link {
    /// The worker reached its back end.
    pub fn ok(&self) {
        self.consecutive_errors.store(0, Ordering::Relaxed);
    }

    /// The worker's connection (or its attempt at one) that began at
    /// `started` failed with `error`.
    pub fn failed(&self, started: Instant, error: impl std::fmt::Display) {
        if started.elapsed() >= SHORT_RUN {
            self.consecutive_errors.store(1, Ordering::Relaxed);
        } else {
            self.consecutive_errors.fetch_add(1, Ordering::Relaxed);
        }
        *self.last_error.lock() = error.to_string();
    }

    /// `running`: whether the worker's task is still alive.
    fn report(&self, running: bool) -> (Status, Value) {
        if !running {
            return (
                Status::Failed,
                json!({"status": "failed", "error": "the worker stopped"}),
            );
        }
        let n = self.consecutive_errors.load(Ordering::Relaxed);
        let status = match n {
            0 => Status::Healthy,
            n if n >= FAILED_AFTER => Status::Failed,
            _ => Status::Degraded,
        };
        let mut v = json!({"status": status.word()});
        if n > 0 {
            v["error"] = json!(self.last_error.lock().clone());
            v["consecutive_errors"] = json!(n);
        }
        (status, v)
    }
}

/// Runs a worker's connection `run` (which returns when the connection
/// fails): still running after [`SHORT_RUN`], it is connected, and `link`
/// says so.
pub async fn watched<F: std::future::Future>(link: &Link, run: F) -> F::Output {
    let run = std::pin::pin!(run);
    let mut run = run;
    tokio::select! {
        out = &mut run => out,
        _ = tokio::time::sleep(SHORT_RUN) => {
            link.ok();
            run.await
        }
    }
}

/// The links of one node's workers.
#[derive(Debug, Default)]
pub struct Links {
    pub delivery_queue: std::sync::Arc<Link>,
    pub publish_queue: std::sync::Arc<Link>,
    pub entity_follower: std::sync::Arc<Link>,
    pub retry_poller: std::sync::Arc<Link>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Healthy,
    Degraded,
    Failed,
}

impl Status {
    pub fn word(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Failed => "failed",
        }
    }
}

/// The node's health: each part by name, and the worst status.
pub struct Health {
    pub status: Status,
    pub parts: Vec<(&'static str, Value)>,
}

impl Engine {
    /// Every part of this node, from its real state (see the module doc).
    pub async fn health(&self) -> Health {
        use std::sync::atomic::Ordering::Relaxed;
        let mut parts: Vec<(&'static str, Status, Value)> = Vec::new();
        let (total, running) = (self.shard_count(), self.shards_running());
        let status = if running == total {
            Status::Healthy
        } else {
            Status::Failed
        };
        parts.push((
            "delivery-shards",
            status,
            json!({"status": status.word(), "shards": total, "running": running,
                   "pending_deliveries": self.pending_deliveries()}),
        ));
        // If it stopped, queries go stale and no journal segment is collected.
        let status = if self.index_running() {
            Status::Healthy
        } else {
            Status::Failed
        };
        parts.push(("journal-index", status, json!({"status": status.word()})));
        // PostgreSQL being down only delays shipping (records wait on disk):
        // degraded, not failed; a stopped pipeline ships nothing again.
        if let Some(running) = self.log_pipeline_running() {
            let st = &self.log_stats;
            let status = match (running, st.failing.load(Relaxed)) {
                (false, _) => Status::Failed,
                (true, true) => Status::Degraded,
                (true, false) => Status::Healthy,
            };
            let mut v = json!({"status": status.word(), "shipped": st.shipped.load(Relaxed),
                               "quarantined": st.quarantined.load(Relaxed)});
            if status == Status::Degraded {
                v["error"] = json!(st.last_error.lock().clone());
            }
            parts.push(("log-pipeline", status, v));
        }
        if let Some(redis) = &self.redis {
            let (status, v) = match tokio::time::timeout(PING_TIMEOUT, redis.ping()).await {
                Ok(Ok(())) => (Status::Healthy, json!({"status": "healthy"})),
                Ok(Err(e)) => (Status::Failed, json!({"status": "failed", "error": e.to_string()})),
                Err(_) => (
                    Status::Failed,
                    json!({"status": "failed", "error": format!("no answer to PING within {PING_TIMEOUT:?}")}),
                ),
            };
            parts.push(("redis", status, v));
        }
        let workers = [
            ("redis-change-follower", &self.follower, &self.links.entity_follower),
            ("delivery-queue-consumer", &self.consumer, &self.links.delivery_queue),
            ("shared-retry-poller", &self.retry_poller, &self.links.retry_poller),
            (
                "publish-queue-consumer",
                &self.publish_consumer,
                &self.links.publish_queue,
            ),
        ];
        for (name, task, link) in workers {
            let Some(running) = task.lock().as_ref().map(|h| !h.is_finished()) else {
                continue;
            };
            let (status, v) = link.report(running);
            parts.push((name, status, v));
        }
        if let Some(o) = &self.opevents {
            // Best-effort events dropped (queue full or 3 failed tries) are
            // visible here, not only in logs.
            parts.push((
                "operator-events",
                Status::Healthy,
                json!({"status": "healthy", "sent": o.stats.sent.load(Relaxed),
                       "dropped": o.stats.dropped.load(Relaxed),
                       "failed_sends": o.stats.failed_sends.load(Relaxed)}),
            ));
        }
        // Degraded parts are reported; only failed ones make the node unhealthy.
        let status = if parts.iter().any(|(_, s, _)| *s == Status::Failed) {
            Status::Failed
        } else {
            Status::Healthy
        };
        Health {
            status,
            parts: parts.into_iter().map(|(n, _, v)| (n, v)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_fails_after_repeated_short_lived_connections_and_recovers() {
        let l = Link::default();
        assert_eq!(l.report(true).0, Status::Healthy);
        let now = Instant::now();
        l.failed(now, "connection refused");
        assert_eq!(l.report(true).0, Status::Degraded);
        l.failed(now, "connection refused");
        l.failed(now, "connection refused");
        let (s, v) = l.report(true);
        assert_eq!(s, Status::Failed);
        assert_eq!(
            (v["error"].as_str(), v["consecutive_errors"].as_u64()),
            (Some("connection refused"), Some(3))
        );
        // A connection that had lasted was working: one failure after it is one.
        l.failed(now - SHORT_RUN, "reset");
        assert_eq!(l.report(true).0, Status::Degraded);
        l.ok();
        assert_eq!(l.report(true).0, Status::Healthy);
        assert_eq!(l.report(false).0, Status::Failed, "a stopped worker is failed");
    }
}
