//! Delivery shards: one thread per core, pinned, each running its own tokio
//! `current_thread` runtime. A shard owns a slice of the destinations (by hash
//! of the destination id): their prepared publishers, its HTTP connection pool
//! and its retry timers. Nothing on the delivery path takes a lock shared with
//! another thread; the control plane talks to a shard only through its inbox.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{Notify, Semaphore};

use crate::alerts::{Sample, Signal, Streak};
use crate::destinations::{PublishContext, Publisher, Registry};
use crate::http_client::HttpClient;
use crate::ids::IdGenerator;
use crate::model::{Attempt, AttemptStatus, Delivery, Destination, NextStep};
use crate::store::{OutcomeRecord, SharedStore};
use crate::timefmt::now_ms;

/// Messages a shard accepts.
pub enum ShardMsg {
    /// Create or replace a destination this shard owns (disabled ones too).
    Upsert(Arc<Destination>),
    Remove(String),
    Deliver(Delivery),
    /// A delivery taken from the delivery queue: `done` fires once its
    /// outcome (and any retry) is durable, so the message can be acked.
    DeliverThen(Delivery, tokio::sync::oneshot::Sender<()>),
    /// Stop after finishing nothing further; pending work stays durable.
    Shutdown,
}

/// Which shard owns a destination: a stable hash of its id.
pub fn shard_for(destination_id: &str, shards: usize) -> usize {
    // FNV-1a: stable across processes and releases (unlike `DefaultHasher`'s seed).
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    destination_id.hash(&mut h);
    (h.finish() % shards as u64) as usize
}

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Counters a shard publishes for tests, benches and the health endpoint.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub attempts: AtomicU64,
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    pub dropped: AtomicU64,
}

/// The control plane's handle to one shard.
#[derive(Clone)]
pub struct ShardHandle {
    pub tx: flume::Sender<ShardMsg>,
    pub stats: Arc<ShardStats>,
}

/// Everything a shard needs from the outside, shared read-only.
#[derive(Clone)]
pub struct ShardDeps {
    pub store: SharedStore,
    pub types: Arc<Registry>,
    pub publish: PublishContext,
    pub tls: Arc<rustls::ClientConfig>,
    pub ids: IdGenerator,
    /// With a delivery queue, retries go to the schedule shared through
    /// Redis (any delivery node runs them); without, they stay on this node.
    pub shared_retries: Option<Arc<crate::store::redis::RedisEntityStore>>,
    /// Where failure streaks and exhausted retries go, when alerting is on.
    pub alerts: Option<AlertHooks>,
    /// Operator events, for `attempt.*` (only when a sink wants them).
    pub opevents: Option<Arc<crate::opevents::OperatorEvents>>,
}

/// How a shard feeds the node's alert tracker.
#[derive(Clone)]
pub struct AlertHooks {
    pub tx: flume::Sender<Signal>,
    /// Count consecutive failures (`ALERT_CONSECUTIVE_FAILURE_COUNT` set).
    pub count_failures: bool,
    /// Failures kept per streak as alert examples (the alert count).
    pub keep_samples: usize,
    /// Counters shared with other nodes: every success must reset them,
    /// not only those after a failure this shard saw.
    pub shared: bool,
    /// Report deliveries that used up their retries.
    pub exhausted: bool,
}

/// Bound on a shard's inbox; senders wait beyond it (backpressure).
const INBOX: usize = 8192;

/// Starts `n` shards, pinned to cores round-robin when the OS allows it.
pub fn start(n: usize, deps: ShardDeps) -> std::io::Result<(Vec<ShardHandle>, Vec<std::thread::JoinHandle<()>>)> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::with_capacity(n);
    let mut joins = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = flume::bounded(INBOX);
        let stats = Arc::new(ShardStats::default());
        let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
        let deps = deps.clone();
        let st = stats.clone();
        let join = std::thread::Builder::new()
            .name(format!("outrider-shard-{i}"))
            .spawn(move || {
                if let Some(c) = core {
                    core_affinity::set_for_current(c);
                }
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(shard = i, error = %e, "cannot build shard runtime");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, run(i, rx, deps, st));
            })?;
        handles.push(ShardHandle { tx, stats });
        joins.push(join);
    }
    Ok((handles, joins))
}

struct Owned {
    dest: Arc<Destination>,
    publisher: Result<Rc<dyn Publisher>, String>,
}

/// A delivery waiting for its time, ordered by due time then arrival.
struct Timer {
    due_ms: i64,
    seq: u64,
    delivery: Delivery,
}

impl PartialEq for Timer {
    fn eq(&self, o: &Self) -> bool {
        (self.due_ms, self.seq) == (o.due_ms, o.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timer {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due_ms, self.seq).cmp(&(o.due_ms, o.seq))
    }
}

struct Shard {
    id: usize,
    deps: ShardDeps,
    dests: RefCell<HashMap<String, Owned>>,
    timers: RefCell<BinaryHeap<Reverse<Timer>>>,
    seq: std::cell::Cell<u64>,
    wake: Notify,
    client: HttpClient,
    inflight: Arc<Semaphore>,
    /// A manual retry supersedes scheduled retries with lower attempt numbers
    /// for the same (event, destination).
    superseded: RefCell<HashMap<(String, String), u32>>,
    stats: Arc<ShardStats>,
    /// Failure streaks since the last flush to the tracker, per destination.
    streaks: RefCell<HashMap<String, Streak>>,
    /// Destinations whose last outcome here was a failure (single node: a
    /// success elsewhere is impossible, so other successes need no reset).
    failing: RefCell<HashSet<String>>,
}

async fn run(id: usize, rx: flume::Receiver<ShardMsg>, deps: ShardDeps, stats: Arc<ShardStats>) {
    let cfg = deps.publish.config.clone();
    let shard = Rc::new(Shard {
        id,
        client: HttpClient::new(
            deps.tls.clone(),
            !cfg.allow_private_destinations,
            cfg.webhook.max_response_body_bytes,
        ),
        deps,
        dests: RefCell::new(HashMap::new()),
        timers: RefCell::new(BinaryHeap::new()),
        seq: std::cell::Cell::new(0),
        wake: Notify::new(),
        inflight: Arc::new(Semaphore::new(cfg.delivery_max_concurrency)),
        superseded: RefCell::new(HashMap::new()),
        stats,
        streaks: RefCell::new(HashMap::new()),
        failing: RefCell::new(HashSet::new()),
    });
    let timer_task = tokio::task::spawn_local(timer_loop(shard.clone()));
    let flush_task = shard
        .deps
        .alerts
        .clone()
        .map(|h| tokio::task::spawn_local(flush_loop(shard.clone(), h.tx)));
    while let Ok(msg) = rx.recv_async().await {
        match msg {
            ShardMsg::Upsert(d) => shard.upsert(d),
            ShardMsg::Remove(id) => {
                shard.dests.borrow_mut().remove(&id);
                shard.failing.borrow_mut().remove(&id);
            }
            ShardMsg::Deliver(d) => {
                if d.manual {
                    shard
                        .superseded
                        .borrow_mut()
                        .insert((d.event.id.clone(), d.destination_id.clone()), d.attempt);
                }
                if d.due_ms > now_ms() {
                    shard.schedule(d);
                } else {
                    shard.clone().dispatch(d, None).await;
                }
            }
            ShardMsg::DeliverThen(d, done) => {
                if d.manual {
                    shard
                        .superseded
                        .borrow_mut()
                        .insert((d.event.id.clone(), d.destination_id.clone()), d.attempt);
                }
                shard.clone().dispatch(d, Some(done)).await;
            }
            ShardMsg::Shutdown => break,
        }
    }
    timer_task.abort();
    if let Some(t) = flush_task {
        t.abort();
    }
    tracing::debug!(shard = id, "shard stopped");
}

async fn timer_loop(shard: Rc<Shard>) {
    loop {
        let next = shard.timers.borrow().peek().map(|Reverse(t)| t.due_ms);
        match next {
            None => shard.wake.notified().await,
            Some(due) => {
                let now = now_ms();
                if due > now {
                    let wait = std::time::Duration::from_millis((due - now) as u64);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shard.wake.notified() => {}
                    }
                    continue;
                }
                let t = shard.timers.borrow_mut().pop();
                if let Some(Reverse(t)) = t {
                    let key = (t.delivery.event.id.clone(), t.delivery.destination_id.clone());
                    let stale = shard
                        .superseded
                        .borrow()
                        .get(&key)
                        .is_some_and(|&a| a > t.delivery.attempt);
                    if !stale {
                        shard.clone().dispatch(t.delivery, None).await;
                    }
                }
            }
        }
    }
}

/// Hands the shard's failure streaks to the tracker every flush interval.
async fn flush_loop(shard: Rc<Shard>, tx: flume::Sender<Signal>) {
    let mut tick = tokio::time::interval(crate::alerts::FLUSH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shard.streaks.borrow().is_empty() {
            continue;
        }
        let batch: Vec<Streak> = shard.streaks.borrow_mut().drain().map(|(_, s)| s).collect();
        if tx.send_async(Signal::Streaks(batch)).await.is_err() {
            return;
        }
    }
}

impl Shard {
    /// Feeds the alert tracker and `attempt.*` operator events with one
    /// outcome. `attempt` is only there when something needs a copy of it
    /// (a failure while alerting, or `attempt.*` subscribed).
    fn observe(
        &self,
        dest: &Arc<Destination>,
        event: &Arc<crate::model::Event>,
        status: AttemptStatus,
        attempt: Option<Attempt>,
    ) {
        let failed = status == AttemptStatus::Failed;
        if let Some(h) = &self.deps.alerts {
            if h.count_failures {
                let mut streaks = self.streaks.borrow_mut();
                if failed {
                    self.failing.borrow_mut().insert(dest.id.clone());
                    if let Some(a) = &attempt {
                        let sample = Sample {
                            event: event.clone(),
                            attempt: a.clone(),
                        };
                        streaks
                            .entry(dest.id.clone())
                            .or_insert_with(|| Streak::new(dest.clone()))
                            .failure(sample, h.keep_samples);
                    }
                } else if h.shared || self.failing.borrow_mut().remove(&dest.id) {
                    // Shared counters see a success per delivery: look up before
                    // allocating a key, so a busy destination costs no allocation.
                    match streaks.get_mut(&dest.id) {
                        Some(s) => s.success(),
                        None => {
                            let mut s = Streak::new(dest.clone());
                            s.success();
                            streaks.insert(dest.id.clone(), s);
                        }
                    }
                }
            }
            let max = self.deps.publish.config.retry.max_retries();
            if let (true, true, Some(a)) = (failed, h.exhausted, &attempt) {
                if event.eligible_for_retry && max > 0 && a.attempt_number > max {
                    let signal = Signal::Exhausted {
                        destination: dest.clone(),
                        sample: Box::new(Sample {
                            event: event.clone(),
                            attempt: a.clone(),
                        }),
                    };
                    let tx = h.tx.clone();
                    // Rare; sent from its own task so the attempt never waits on the tracker.
                    tokio::task::spawn_local(async move {
                        let _ = tx.send_async(signal).await;
                    });
                }
            }
        }
        if let (Some(op), Some(a)) = (&self.deps.opevents, attempt) {
            if op.wants_attempts() {
                op.attempt(crate::opevents::AttemptNote {
                    event: event.clone(),
                    attempt: a,
                    destination: dest.clone(),
                });
            }
        }
    }

    fn upsert(&self, d: Arc<Destination>) {
        let publisher = match self.deps.types.get(&d.kind) {
            Some(t) => t.publisher(&d, &self.deps.publish).map(Rc::<dyn Publisher>::from),
            None => Err(format!("destination type {} is not supported by this build", d.kind)),
        };
        if let Err(e) = &publisher {
            tracing::warn!(shard = self.id, destination_id = %d.id, error = %e, "destination cannot be delivered to");
        }
        self.dests
            .borrow_mut()
            .insert(d.id.clone(), Owned { dest: d, publisher });
    }

    fn schedule(&self, d: Delivery) {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let earliest = self.timers.borrow().peek().map(|Reverse(t)| t.due_ms);
        let due = d.due_ms;
        self.timers.borrow_mut().push(Reverse(Timer {
            due_ms: due,
            seq,
            delivery: d,
        }));
        if earliest.is_none_or(|e| due < e) {
            self.wake.notify_one();
        }
    }

    /// Waits for an in-flight slot (backpressure on the inbox), then runs the
    /// attempt as its own task.
    async fn dispatch(self: Rc<Self>, d: Delivery, done: Option<tokio::sync::oneshot::Sender<()>>) {
        let permit = match self.inflight.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        tokio::task::spawn_local(async move {
            self.attempt(d).await;
            drop(permit);
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
    }

    async fn attempt(self: &Rc<Self>, d: Delivery) {
        let owned = self
            .dests
            .borrow()
            .get(&d.destination_id)
            .map(|o| (o.dest.clone(), o.publisher.clone()));
        let (dest, publisher) = match owned {
            Some((dest, p)) if dest.is_enabled() => (dest, p),
            // Deleted or disabled: nothing is attempted and the record goes.
            _ => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.record(OutcomeRecord {
                    event_id: d.event.id.clone(),
                    destination_id: d.destination_id.clone(),
                    attempt_number: d.attempt,
                    attempt: None,
                    next: NextStep::Done,
                })
                .await;
                return;
            }
        };
        let cfg = &self.deps.publish.config;
        let started = now_ms();
        let result = match &publisher {
            Ok(p) => match tokio::time::timeout(cfg.delivery_timeout, p.publish(&self.client, &d.event, started)).await
            {
                Ok(r) => r,
                Err(_) => crate::destinations::PublishResult {
                    status: AttemptStatus::Failed,
                    code: "timeout".into(),
                    response_data: Some(serde_json::json!({ "error": "timeout" })),
                },
            },
            Err(e) => crate::destinations::PublishResult {
                status: AttemptStatus::Failed,
                code: "ERR".into(),
                response_data: Some(serde_json::json!({ "error": e })),
            },
        };
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let next = match result.status {
            AttemptStatus::Success => {
                self.stats.successes.fetch_add(1, Ordering::Relaxed);
                NextStep::Done
            }
            AttemptStatus::Failed => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                if d.event.eligible_for_retry && d.attempt <= cfg.retry.max_retries() {
                    let delay = cfg.retry.delay(d.attempt);
                    NextStep::Retry {
                        attempt: d.attempt + 1,
                        due_ms: now_ms() + delay.as_millis() as i64,
                    }
                } else {
                    NextStep::Done
                }
            }
        };
        // Hand the retry to the shared schedule first; only once it is there
        // is the local record settled. If Redis is unavailable the retry
        // stays local (still durable, on this node).
        let mut next = next;
        if let (Some(redis), NextStep::Retry { attempt, due_ms }) = (&self.deps.shared_retries, &next) {
            let task = crate::queue::Task {
                event: d.event.clone(),
                destination_id: d.destination_id.clone(),
                attempt: *attempt,
                manual: false,
            };
            match redis.schedule_retry(&task, *due_ms).await {
                Ok(()) => next = NextStep::Done,
                Err(e) => tracing::warn!(error = %e, "shared retry schedule unavailable; retrying from this node"),
            }
        }
        let attempt = Attempt {
            id: self.deps.ids.generate(&cfg.attempt_id_prefix),
            tenant_id: d.event.tenant_id.clone(),
            event_id: d.event.id.clone(),
            destination_id: d.destination_id.clone(),
            destination_type: dest.kind.clone(),
            attempt_number: d.attempt,
            manual: d.manual,
            status: result.status,
            time: started,
            code: Some(result.code),
            response_data: result.response_data,
            topic: d.event.topic.clone(),
        };
        let status = attempt.status;
        let copy = (status == AttemptStatus::Failed && self.deps.alerts.is_some())
            || self.deps.opevents.as_ref().is_some_and(|o| o.wants_attempts());
        let observed = copy.then(|| attempt.clone());
        self.record(OutcomeRecord {
            event_id: d.event.id.clone(),
            destination_id: d.destination_id.clone(),
            attempt_number: d.attempt,
            attempt: Some(attempt),
            next: next.clone(),
        })
        .await;
        // After the outcome is durable: alerts never run ahead of the log.
        if self.deps.alerts.is_some() || self.deps.opevents.is_some() {
            self.observe(&dest, &d.event, status, observed);
        }
        match next {
            NextStep::Retry { attempt, due_ms } => self.schedule(Delivery {
                event: d.event,
                destination_id: d.destination_id,
                attempt,
                manual: false,
                due_ms,
            }),
            NextStep::Done => {
                let key = (d.event.id.clone(), d.destination_id.clone());
                let mut sup = self.superseded.borrow_mut();
                if sup.get(&key).is_some_and(|&a| a <= d.attempt) {
                    sup.remove(&key);
                }
            }
        }
    }

    async fn record(&self, o: OutcomeRecord) {
        if let Err(e) = self.deps.store.record(o).await {
            // The pending record is untouched, so the delivery runs again after a restart.
            tracing::error!(shard = self.id, error = %e, "cannot queue attempt outcome");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_stable_and_spread() {
        assert_eq!(shard_for("des_1", 8), shard_for("des_1", 8));
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_for(&format!("des_{i}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}
