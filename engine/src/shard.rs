//! Delivery shards: one thread per core, pinned, each running its own tokio
//! `current_thread` runtime. A shard owns a slice of the destinations (by hash
//! of the destination id): their prepared publishers, its HTTP connection
//! pool, its retry timers and its own durable journal. Nothing on the delivery
//! path takes a lock or a thread shared with another shard; the control plane
//! talks to a shard only through its inbox.
//!
//! A delivery's life on its shard: an accept record in the shard's journal
//! (the publisher is answered once it is committed) → a per-destination queue
//! (at most `OUTRIDER_DESTINATION_MAX_CONCURRENCY` attempts in flight per
//! destination, `DELIVERY_MAX_CONCURRENCY` per shard) → the attempt → a settle
//! record (the attempt, and the retry if one follows). Retries and recovered
//! deliveries keep only the record's location in memory and read the event
//! back from the journal when they run.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, Notify};

use crate::alerts::{Sample, Signal, Streak};
use crate::destinations::{PublishContext, PublishResult, Publisher, Registry, ShardClients};
use crate::flow::{Flow, Outcome};
use crate::http_client::HttpClient;
use crate::ids::IdGenerator;
use crate::journal::replay::Recovered;
use crate::journal::{self, AcceptTarget, Journal, JournalError, Loc, Reader, Record};
use crate::model::{Attempt, AttemptStatus, Destination, Event, NextStep};
use crate::timefmt::now_ms;

mod defer;

/// Why a shard could not take work on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ShardError {
    #[error("cannot make the event durable: {0}")]
    Journal(Arc<JournalError>),
    #[error("the delivery shard is shutting down")]
    Closed,
}

/// What became of a queue-mode delivery task (see [`AcceptMsg::done`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Its attempt's outcome (and any retry) is committed.
    Committed,
    /// Its attempt's outcome is committed and its retry is on the shared
    /// schedule, written there together with the task's done mark (so the
    /// mark is not written again).
    HandedOver,
    /// Its destination is backed up on this node: it went back to the
    /// shared schedule, not attempted, to come back later (see `defer`).
    Deferred,
}

/// Deliveries for this shard, to be made durable in its journal first.
pub struct AcceptMsg {
    pub event: Arc<Event>,
    /// This shard's destinations for the event.
    pub targets: Vec<AcceptTarget>,
    /// Answered once the accept record is committed.
    pub reply: Option<oneshot::Sender<Result<(), ShardError>>>,
    /// Queue mode (one target): fires once that delivery's outcome is
    /// committed or it was deferred, so the broker message can be acked.
    pub done: Option<oneshot::Sender<Handled>>,
}

/// Messages a shard accepts.
pub enum ShardMsg {
    /// Create or replace a destination this shard owns (disabled ones too).
    Upsert(Arc<Destination>),
    Remove(String),
    Accept(Box<AcceptMsg>),
    /// Every destination has been sent: start the deliveries recovery found.
    Resume,
    /// Recovery moved these deliveries to other shards: settle them here.
    Forget {
        settled: Vec<(Loc, u16, u32)>,
        done: oneshot::Sender<()>,
    },
    /// Stop taking work, let attempts in flight finish (bounded by the
    /// deadline), commit, then exit. Work not started stays in the journal.
    Shutdown {
        deadline: std::time::Instant,
        report: oneshot::Sender<DrainReport>,
    },
    /// Runs on the shard's own thread, inside its runtime: whatever it spawns
    /// (the API's accept loop) shares the shard's core instead of a runtime
    /// of its own.
    OnThread(Box<dyn FnOnce() + Send>),
}

/// What a shard did when it was asked to stop.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Attempts still in flight when the stop came, that finished and settled.
    pub finished: usize,
    /// Attempts abandoned at the deadline (they run again after a restart).
    pub abandoned: usize,
    /// Deliveries queued or scheduled, left in the journal for the next start.
    pub left: usize,
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
    /// Events that could not be read back from the journal (each is tried
    /// again after [`READ_RETRY`]).
    pub read_errors: AtomicU64,
    /// Attempt tasks that panicked (each settled as a failed attempt).
    pub panics: AtomicU64,
    /// Deliveries put back without an attempt because the egress proxy was
    /// unavailable (each is tried again after [`NOT_ATTEMPTED_RETRY`]).
    pub not_attempted: AtomicU64,
    /// Queue-mode tasks handed back to the shared schedule because their
    /// destination was backed up here (see `defer`).
    pub deferred: AtomicU64,
    /// Deliveries accepted and not yet settled (queued, in flight, scheduled).
    pub pending: AtomicU64,
    /// Attempts running now.
    pub in_flight: AtomicU64,
    /// Deliveries waiting for a timer: retries with their backoff, and
    /// deliveries put back for a moment (a read error, the egress proxy).
    pub scheduled: AtomicU64,
    /// How long attempts take, start to outcome (`GET /metrics`).
    pub attempt_latency: crate::latency::Histogram,
    /// Whether the shard's loop is running (for `/healthz`).
    pub running: std::sync::atomic::AtomicBool,
}

/// The control plane's handle to one shard.
#[derive(Clone)]
pub struct ShardHandle {
    pub tx: flume::Sender<ShardMsg>,
    pub stats: Arc<ShardStats>,
    pub progress: Arc<journal::Progress>,
}

/// Everything a shard needs from the outside, shared read-only.
#[derive(Clone)]
pub struct ShardDeps {
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
/// Queued deliveries that keep their event in memory, per shard, by count
/// and by bytes (8,192 events of 1 MiB would be 8 GiB); beyond either,
/// queued deliveries keep only the journal location.
const QUEUED_IN_MEMORY: usize = 8192;
const QUEUED_BYTES: usize = 64 * 1024 * 1024;

/// About what an event holds in memory.
fn event_bytes(e: &Event) -> usize {
    let metadata: usize = e.metadata.iter().map(|(k, v)| k.len() + v.len() + 16).sum();
    e.data.len() + e.id.len() + e.tenant_id.len() + e.topic.len() + metadata + 128
}
/// How long a delivery whose event could not be read back waits to try again.
const READ_RETRY: Duration = Duration::from_secs(5);
/// How long a delivery that could not be attempted through no fault of its
/// destination (the egress proxy is down) waits to try again. Like a queue's
/// redelivery, it is not an attempt: the schedule's count does not move.
const NOT_ATTEMPTED_RETRY: Duration = Duration::from_secs(5);
/// Deliveries carried forward per compaction pass, at most.
const CARRY_PER_PASS: usize = 4096;
/// How often a shard deletes journal segments nothing needs any more.
const GC_INTERVAL: Duration = Duration::from_secs(1);

/// One shard's start-up material: its journal, and what recovery found.
pub struct ShardInit {
    pub journal: Journal,
    pub recovered: Recovered,
}

/// Starts one shard per `inits` entry, pinned to cores round-robin when the
/// OS allows it.
pub fn start(
    inits: Vec<ShardInit>,
    deps: ShardDeps,
) -> std::io::Result<(Vec<ShardHandle>, Vec<std::thread::JoinHandle<()>>)> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::with_capacity(inits.len());
    let mut joins = Vec::with_capacity(inits.len());
    for (i, init) in inits.into_iter().enumerate() {
        let (tx, rx) = flume::bounded(INBOX);
        let stats = Arc::new(ShardStats::default());
        let progress = init.journal.progress.clone();
        let core = (!cores.is_empty()).then(|| cores[i % cores.len()]);
        let deps = deps.clone();
        let st = stats.clone();
        st.running.store(true, Ordering::Release);
        let join = std::thread::Builder::new()
            .name(format!("outrider-shard-{i}"))
            .spawn(move || {
                if let Some(c) = core {
                    core_affinity::set_for_current(c);
                }
                // `/healthz` must see a shard whose thread died, even by a panic.
                struct Stopped(Arc<ShardStats>);
                impl Drop for Stopped {
                    fn drop(&mut self) {
                        self.0.running.store(false, Ordering::Release);
                    }
                }
                let _stopped = Stopped(st.clone());
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(shard = i, error = %e, "cannot build shard runtime");
                        st.running.store(false, Ordering::Release);
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, run(i, rx, deps, st.clone(), init));
                st.running.store(false, Ordering::Release);
            })?;
        handles.push(ShardHandle { tx, stats, progress });
        joins.push(join);
    }
    Ok((handles, joins))
}

struct Owned {
    dest: Arc<Destination>,
    publisher: Result<Rc<dyn Publisher>, crate::destinations::PublisherError>,
}

/// One delivery waiting on, or running on, this shard.
struct Work {
    /// The accept record it came from, and its index there.
    loc: Loc,
    target: u16,
    destination_id: Arc<str>,
    attempt: u32,
    manual: bool,
    /// In memory for fresh deliveries; `None` = read back from the journal.
    event: Option<Arc<Event>>,
    /// Bytes of `event` charged to the shard's in-memory bound while queued:
    /// the deliveries of one accept share one event, so each carries a share.
    charged: usize,
    /// When it joined its destination's queue ([`Shard::clock_ms`]).
    queued_at: u32,
    /// Queue mode: the broker message waits for this (see [`AcceptMsg::done`]).
    done: Option<oneshot::Sender<Handled>>,
}

impl Work {
    /// A delivery whose event stays on disk (a retry, a recovered delivery):
    /// read back from its accept record when it runs.
    fn on_disk(loc: Loc, target: u16, destination_id: Arc<str>, attempt: u32, manual: bool) -> Work {
        Work {
            loc,
            target,
            destination_id,
            attempt,
            manual,
            event: None,
            charged: 0,
            queued_at: 0,
            done: None,
        }
    }
}

/// A waiting delivery as a carried accept's target.
fn target_of(w: &Work, due_ms: i64) -> journal::AcceptTarget {
    journal::AcceptTarget {
        destination_id: w.destination_id.to_string(),
        attempt: w.attempt,
        manual: w.manual,
        due_ms,
    }
}

/// A delivery waiting for its time, ordered by due time then arrival.
struct Timer {
    due_ms: i64,
    seq: u64,
    work: Work,
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

/// A destination's queue on this shard.
#[derive(Default)]
struct DestQueue {
    inflight: usize,
    waiting: VecDeque<Work>,
    /// Listed in `runnable` (so it is never listed twice).
    listed: bool,
    /// Queue mode: its tasks are being deferred (it is backed up), and the
    /// due time the next deferred one gets (see `defer`).
    deferring: bool,
    defer_horizon_ms: i64,
}

/// What to do once the journal has committed the records appended so far.
enum AfterCommit {
    Accepted {
        reply: Option<oneshot::Sender<Result<(), ShardError>>>,
        works: Vec<Work>,
        due_ms: Vec<i64>,
    },
    Settled {
        /// Fired with what became of the task once the settle is durable.
        done: Option<(oneshot::Sender<Handled>, Handled)>,
        observe: Option<Observed>,
    },
    /// Settled here to go to the shared schedule (see `defer`).
    Deferred {
        task: crate::queue::Task,
        due_ms: i64,
        done: Option<oneshot::Sender<Handled>>,
    },
}

struct Observed {
    dest: Arc<Destination>,
    event: Arc<Event>,
    status: AttemptStatus,
    attempt: Option<Attempt>,
}

struct Shard {
    id: usize,
    deps: ShardDeps,
    dests: RefCell<HashMap<String, Owned>>,
    queues: RefCell<HashMap<Arc<str>, DestQueue>>,
    /// Destinations with waiting work and a free per-destination slot, in turn.
    runnable: RefCell<VecDeque<Arc<str>>>,
    /// Free attempt slots of the shard (`DELIVERY_MAX_CONCURRENCY`).
    free: Cell<usize>,
    per_destination: usize,
    /// Each destination's adaptive limit (see [`crate::flow`]).
    flows: RefCell<HashMap<Arc<str>, Flow>>,
    /// Attempts in flight to slow destinations, their cap, and the slow
    /// destinations waiting for that share (listed, so not listed twice).
    slow_inflight: Cell<usize>,
    slow_cap: usize,
    parked: RefCell<VecDeque<Arc<str>>>,
    queued_in_memory: Cell<usize>,
    /// Bytes of the events those queued deliveries hold.
    queued_bytes: Cell<usize>,
    /// Signalled when a slot frees up (the inbox waits on it under load).
    slot_freed: Notify,
    journal: RefCell<Journal>,
    reader: RefCell<Reader>,
    after_commit: RefCell<Vec<AfterCommit>>,
    flush_scheduled: Cell<bool>,
    /// Live (unsettled) deliveries per journal segment of their accept
    /// record, deliveries accepted or carried into each segment, and every
    /// segment on disk.
    live: RefCell<BTreeMap<u32, u64>>,
    born: RefCell<BTreeMap<u32, u64>>,
    segments: RefCell<BTreeSet<u32>>,
    timers: RefCell<BinaryHeap<Reverse<Timer>>>,
    seq: Cell<u64>,
    wake: Notify,
    /// Connections of every destination type, shared by this shard's destinations.
    clients: ShardClients,
    /// A manual retry supersedes scheduled retries with lower attempt numbers
    /// for the same (event, destination).
    superseded: RefCell<HashMap<(String, String), u32>>,
    stats: Arc<ShardStats>,
    /// Failure streaks since the last flush to the tracker, per destination.
    streaks: RefCell<HashMap<String, Streak>>,
    /// Destinations whose last outcome here was a failure (single node: a
    /// success elsewhere is impossible, so other successes need no reset).
    failing: RefCell<HashSet<String>>,
    draining: Cell<bool>,
    /// Recovered deliveries have been handed over (compaction waits for it:
    /// before, they are in no queue or timer to carry forward).
    resumed: Cell<bool>,
    inflight: Cell<usize>,
    /// Started with the shard: [`Shard::clock_ms`] counts from it.
    epoch: std::time::Instant,
    /// Deferrals waiting for Redis (drain waits for them too), and until
    /// when deferring is off after Redis failed one.
    deferrals: Cell<usize>,
    defer_paused_until: Cell<Option<std::time::Instant>>,
}

async fn run(id: usize, rx: flume::Receiver<ShardMsg>, deps: ShardDeps, stats: Arc<ShardStats>, init: ShardInit) {
    let cfg = deps.publish.config.clone();
    let ShardInit { journal, recovered } = init;
    let mut segments: BTreeSet<u32> = recovered.segments.iter().copied().collect();
    segments.insert(journal.current_segment());
    let shard = Rc::new(Shard {
        id,
        clients: {
            let http = HttpClient::new(deps.tls.clone(), cfg.ssrf_guard(), cfg.webhook.max_response_body_bytes);
            let webhook = match &cfg.webhook.proxy {
                Some(p) => HttpClient::with_proxy(
                    deps.tls.clone(),
                    cfg.ssrf_guard(),
                    cfg.webhook.max_response_body_bytes,
                    p.clone(),
                ),
                None => http.clone(),
            };
            ShardClients::new(http, webhook, cfg.ssrf_guard())
        },
        deps,
        dests: RefCell::new(HashMap::new()),
        queues: RefCell::new(HashMap::new()),
        runnable: RefCell::new(VecDeque::new()),
        free: Cell::new(cfg.delivery_max_concurrency),
        per_destination: cfg.destination_max_concurrency.max(1),
        flows: RefCell::new(HashMap::new()),
        slow_inflight: Cell::new(0),
        slow_cap: crate::flow::slow_share(cfg.delivery_max_concurrency),
        parked: RefCell::new(VecDeque::new()),
        queued_in_memory: Cell::new(0),
        queued_bytes: Cell::new(0),
        slot_freed: Notify::new(),
        journal: RefCell::new(journal),
        reader: RefCell::new(Reader::default()),
        after_commit: RefCell::new(Vec::new()),
        flush_scheduled: Cell::new(false),
        live: RefCell::new(recovered.live.clone()),
        born: RefCell::new(recovered.born.clone()),
        segments: RefCell::new(segments),
        timers: RefCell::new(BinaryHeap::new()),
        seq: Cell::new(0),
        wake: Notify::new(),
        superseded: RefCell::new(HashMap::new()),
        stats,
        streaks: RefCell::new(HashMap::new()),
        failing: RefCell::new(HashSet::new()),
        draining: Cell::new(false),
        resumed: Cell::new(false),
        inflight: Cell::new(0),
        epoch: std::time::Instant::now(),
        deferrals: Cell::new(0),
        defer_paused_until: Cell::new(None),
    });
    {
        let mut sup = shard.superseded.borrow_mut();
        for (event_id, dest, attempt) in recovered.manual {
            let e = sup.entry((event_id, dest)).or_insert(0);
            *e = (*e).max(attempt);
        }
    }
    let n = recovered.pending.len();
    shard.stats.pending.store(n as u64, Ordering::Relaxed);
    let timer_task = tokio::task::spawn_local(timer_loop(shard.clone()));
    let gc_task = tokio::task::spawn_local(gc_loop(shard.clone()));
    let flush_task = shard
        .deps
        .alerts
        .clone()
        .map(|h| tokio::task::spawn_local(flush_loop(shard.clone(), h.tx)));
    let defer_task = shard
        .deps
        .shared_retries
        .is_some()
        .then(|| tokio::task::spawn_local(defer::sweep_loop(shard.clone())));
    // Recovered deliveries wait for `Resume`: the engine sends every
    // destination first, so none is taken for deleted.
    let mut recovered_pending = Some(recovered.pending);
    let mut shutdown = None;
    loop {
        // Backpressure: with every slot busy and the in-memory queue full,
        // stop reading the inbox so publishers wait.
        while shard.free.get() == 0 && shard.memory_full() {
            shard.slot_freed.notified().await;
        }
        let msg = match rx.recv_async().await {
            Ok(m) => m,
            Err(_) => break,
        };
        match msg {
            ShardMsg::Upsert(d) => shard.upsert(d),
            ShardMsg::Remove(id) => {
                shard.flows.borrow_mut().remove(id.as_str());
                shard.dests.borrow_mut().remove(&id);
                shard.failing.borrow_mut().remove(&id);
            }
            ShardMsg::Accept(m) => shard.accept(*m),
            ShardMsg::Forget { settled, done } => shard.forget(settled, done),
            ShardMsg::Resume => {
                if let Some(p) = recovered_pending.take() {
                    shard.resume(p);
                }
                shard.resumed.set(true);
            }
            ShardMsg::Shutdown { deadline, report } => {
                shutdown = Some((deadline, report));
                break;
            }
            ShardMsg::OnThread(start) => start(),
        }
    }
    let report = shard.drain(shutdown.as_ref().map(|(d, _)| *d)).await;
    timer_task.abort();
    gc_task.abort();
    for t in [flush_task, defer_task].into_iter().flatten() {
        t.abort();
    }
    tracing::info!(
        shard = id,
        finished = report.finished,
        abandoned = report.abandoned,
        left = report.left,
        "shard stopped"
    );
    if let Some((_, r)) = shutdown {
        let _ = r.send(report);
    }
}

async fn timer_loop(shard: Rc<Shard>) {
    loop {
        let next = shard.timers.borrow().peek().map(|Reverse(t)| t.due_ms);
        match next {
            None => shard.wake.notified().await,
            Some(due) => {
                let now = now_ms();
                if due > now {
                    let wait = Duration::from_millis((due - now) as u64);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shard.wake.notified() => {}
                    }
                    continue;
                }
                let t = shard.timers.borrow_mut().pop();
                shard.count_scheduled();
                if let Some(Reverse(t)) = t {
                    shard.enqueue(t.work);
                }
            }
        }
    }
}

/// Deletes journal segments that the index has read and that hold no
/// unsettled delivery.
async fn gc_loop(shard: Rc<Shard>) {
    let mut tick = tokio::time::interval(GC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        shard.compact();
        shard.collect_segments();
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
    /// Appends the accept record; the reply and the deliveries follow the commit.
    fn accept(self: &Rc<Self>, m: AcceptMsg) {
        if self.draining.get() {
            if let Some(r) = m.reply {
                let _ = r.send(Err(ShardError::Closed));
            }
            return;
        }
        let Some(m) = self.defer_arrival(m) else { return };
        let accepted_at = now_ms();
        let loc = self
            .journal
            .borrow_mut()
            .append_with(|buf| journal::codec::encode_accept(accepted_at, true, &m.event, &m.targets, buf));
        self.note_segment(loc.segment());
        *self.live.borrow_mut().entry(loc.segment()).or_default() += m.targets.len() as u64;
        *self.born.borrow_mut().entry(loc.segment()).or_default() += m.targets.len() as u64;
        self.stats.pending.fetch_add(m.targets.len() as u64, Ordering::Relaxed);
        let mut done = m.done;
        let mut works = Vec::with_capacity(m.targets.len());
        let mut due = Vec::with_capacity(m.targets.len());
        // The targets share one event in memory: each carries its share.
        let share = event_bytes(&m.event) / m.targets.len().max(1);
        for (i, t) in m.targets.into_iter().enumerate() {
            if t.manual {
                self.superseded
                    .borrow_mut()
                    .insert((m.event.id.clone(), t.destination_id.clone()), t.attempt);
            }
            due.push(t.due_ms);
            works.push(Work {
                loc,
                target: i as u16,
                destination_id: Arc::from(t.destination_id),
                attempt: t.attempt,
                manual: t.manual,
                event: Some(m.event.clone()),
                charged: share,
                queued_at: 0,
                done: done.take(),
            });
        }
        self.after_commit.borrow_mut().push(AfterCommit::Accepted {
            reply: m.reply,
            works,
            due_ms: due,
        });
        self.schedule_flush();
    }

    fn forget(self: &Rc<Self>, settled: Vec<(Loc, u16, u32)>, done: oneshot::Sender<()>) {
        let mut j = self.journal.borrow_mut();
        for (loc, target, attempt_number) in settled {
            j.append_closed(loc, target, attempt_number);
            if let Some(c) = self.live.borrow_mut().get_mut(&loc.segment()) {
                *c = c.saturating_sub(1);
            }
        }
        let c = j.commit();
        j.flush();
        tokio::task::spawn_local(async move {
            let _ = c.await;
            let _ = done.send(());
        });
    }

    /// Recovered deliveries: due ones are queued, later ones wait on a timer.
    fn resume(self: &Rc<Self>, pending: Vec<crate::journal::replay::Pending>) {
        if !pending.is_empty() {
            tracing::info!(
                shard = self.id,
                deliveries = pending.len(),
                "resuming pending deliveries"
            );
        }
        let now = now_ms();
        // Taken from the back (replay sorts newest first) and the list
        // shrunk as it empties, so the list and the queues it fills are not
        // both whole in memory at once.
        let mut pending = pending;
        let mut shrink_at = pending.len() / 2;
        while let Some(p) = pending.pop() {
            if pending.len() < shrink_at {
                pending.shrink_to_fit();
                shrink_at = pending.len() / 2;
            }
            let w = Work::on_disk(p.loc, p.target, p.destination_id, p.attempt, p.manual);
            if p.due_ms > now {
                self.schedule(w, p.due_ms);
            } else {
                self.enqueue(w);
            }
        }
    }

    fn note_segment(&self, seg: u32) {
        let mut s = self.segments.borrow_mut();
        if s.last().is_none_or(|l| *l < seg) {
            s.insert(seg);
        }
    }

    /// Batches every record appended in this turn of the scheduler into one
    /// hand-off to the journal's sync thread.
    fn schedule_flush(self: &Rc<Self>) {
        if self.flush_scheduled.replace(true) {
            return;
        }
        let me = self.clone();
        tokio::task::spawn_local(async move {
            tokio::task::yield_now().await;
            me.flush_now();
        });
    }

    fn flush_now(self: &Rc<Self>) {
        self.flush_scheduled.set(false);
        let after = std::mem::take(&mut *self.after_commit.borrow_mut());
        let mut j = self.journal.borrow_mut();
        let commit = (!after.is_empty()).then(|| j.commit());
        j.flush();
        drop(j);
        let Some(commit) = commit else { return };
        let me = self.clone();
        tokio::task::spawn_local(async move {
            let result = match commit.await {
                Ok(r) => r.map_err(ShardError::Journal),
                Err(_) => Err(ShardError::Closed),
            };
            me.committed(after, result);
        });
    }

    fn committed(self: &Rc<Self>, after: Vec<AfterCommit>, result: Result<(), ShardError>) {
        for a in after {
            match a {
                AfterCommit::Accepted { reply, works, due_ms } => {
                    let ok = result.is_ok();
                    if let Some(r) = reply {
                        let _ = r.send(result.clone());
                    }
                    if !ok {
                        // Not durable, not acknowledged: nothing to deliver.
                        if let Some(w) = works.first() {
                            self.release(w.loc, works.len() as u64);
                        }
                        continue;
                    }
                    let now = now_ms();
                    for (w, due) in works.into_iter().zip(due_ms) {
                        if due > now {
                            self.schedule(
                                Work {
                                    event: None,
                                    charged: 0,
                                    ..w
                                },
                                due,
                            );
                        } else {
                            self.enqueue(w);
                        }
                    }
                }
                AfterCommit::Deferred { task, due_ms, done } => {
                    self.deferral_settled(task, due_ms, done, result.is_ok());
                }
                AfterCommit::Settled { done, observe } => {
                    if result.is_err() {
                        // The outcome is not durable: the delivery runs again
                        // after a restart, and the broker (if any) redelivers.
                        continue;
                    }
                    if let Some((d, handled)) = done {
                        let _ = d.send(handled);
                    }
                    // After the outcome is durable: alerts never run ahead of the log.
                    if let Some(o) = observe {
                        self.observe(&o.dest, &o.event, o.status, o.attempt);
                    }
                }
            }
        }
    }

    /// One fewer unsettled delivery refers to `loc`'s segment.
    fn release(&self, loc: Loc, n: u64) {
        let mut live = self.live.borrow_mut();
        if let Some(c) = live.get_mut(&loc.segment()) {
            *c = c.saturating_sub(n);
        }
        let _ = self
            .stats
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(p.saturating_sub(n)));
    }

    /// Deletes the prefix of segments that replay no longer needs: older
    /// than the current segment, read by the index, and before the oldest
    /// segment holding a pending delivery's accept (see the journal's module
    /// docs for why only a prefix may go).
    fn collect_segments(&self) {
        let current = self.journal.borrow().current_segment();
        let indexed = Loc(self.journal.borrow().progress.indexed.load(Ordering::Acquire));
        let dir = self.journal.borrow().dir().to_path_buf();
        let oldest_needed = self
            .live
            .borrow()
            .iter()
            .find(|(_, n)| **n > 0)
            .map_or(current, |(s, _)| *s);
        let limit = current.min(indexed.segment()).min(oldest_needed);
        let candidates: Vec<u32> = self.segments.borrow().range(..limit).copied().collect();
        for seg in candidates {
            self.reader.borrow_mut().forget(seg);
            match std::fs::remove_file(journal::segment_path(&dir, seg)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    // Later segments wait too: the prefix rule holds on disk.
                    tracing::warn!(shard = self.id, segment = seg, error = %e, "cannot delete a journal segment");
                    break;
                }
            }
            self.segments.borrow_mut().remove(&seg);
            self.live.borrow_mut().remove(&seg);
            self.born.borrow_mut().remove(&seg);
        }
    }

    /// Carries the pending deliveries of the oldest needed segment forward
    /// into the current one when the segments kept hold more than twice what
    /// the pending deliveries need (estimated per segment as live / born).
    /// Deliveries in flight are left: they settle within their timeout and
    /// a later pass carries them if they retry.
    fn compact(self: &Rc<Self>) {
        if !self.resumed.get() || self.draining.get() {
            return;
        }
        let current = self.journal.borrow().current_segment();
        let (oldest, need) = {
            let live = self.live.borrow();
            let born = self.born.borrow();
            let oldest = live.iter().find(|(_, n)| **n > 0).map(|(s, _)| *s);
            let need: f64 = live
                .iter()
                .map(|(s, n)| *n as f64 / born.get(s).copied().unwrap_or(0).max(*n).max(1) as f64)
                .sum();
            (oldest, need)
        };
        let Some(oldest) = oldest else { return };
        if oldest >= current || f64::from(current - oldest + 1) <= 2.0 * need + 2.0 {
            return;
        }
        // Only a mostly settled segment is worth copying from (a backlog
        // draining in order empties its oldest segment by itself), unless
        // the kept segments are far beyond the need.
        let (live_here, born_here) = (
            self.live.borrow().get(&oldest).copied().unwrap_or(0),
            self.born.borrow().get(&oldest).copied().unwrap_or(0),
        );
        let far_behind = f64::from(current - oldest + 1) > 4.0 * need + 4.0;
        if live_here * 2 > born_here && !far_behind {
            return;
        }
        // What is waiting (timers, queues) with its accept in `oldest`.
        let mut groups: BTreeMap<Loc, Vec<(u16, journal::AcceptTarget)>> = BTreeMap::new();
        let mut heap = std::mem::take(&mut *self.timers.borrow_mut()).into_vec();
        for Reverse(t) in &heap {
            if t.work.loc.segment() == oldest {
                groups
                    .entry(t.work.loc)
                    .or_default()
                    .push((t.work.target, target_of(&t.work, t.due_ms)));
            }
        }
        {
            let queues = self.queues.borrow();
            for q in queues.values() {
                for w in q.waiting.iter().filter(|w| w.loc.segment() == oldest) {
                    groups.entry(w.loc).or_default().push((w.target, target_of(w, 0)));
                }
            }
        }
        let mut moved: HashMap<(Loc, u16), (Loc, u16)> = HashMap::new();
        for (loc, targets) in groups {
            if moved.len() >= CARRY_PER_PASS {
                // The rest goes at the next pass: bounded work and memory per tick.
                break;
            }
            let (accepted_at, event) = match self.load_accept(loc) {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(shard = self.id, error = %e, "cannot read a pending delivery to carry it forward; it stays where it is");
                    continue;
                }
            };
            let from: Vec<(Loc, u16)> = targets.iter().map(|(t, _)| (loc, *t)).collect();
            let carried: Vec<journal::AcceptTarget> = targets.into_iter().map(|(_, a)| a).collect();
            let at = self
                .journal
                .borrow_mut()
                .append_with(|buf| journal::codec::encode_carry(accepted_at, &event, &carried, &from, buf));
            self.note_segment(at.segment());
            *self.live.borrow_mut().entry(at.segment()).or_default() += from.len() as u64;
            *self.born.borrow_mut().entry(at.segment()).or_default() += from.len() as u64;
            for (i, f) in from.into_iter().enumerate() {
                moved.insert(f, (at, i as u16));
            }
        }
        let relocate = |w: &mut Work| {
            if let Some((loc, target)) = moved.get(&(w.loc, w.target)) {
                w.loc = *loc;
                w.target = *target;
            }
        };
        for Reverse(t) in heap.iter_mut() {
            relocate(&mut t.work);
        }
        *self.timers.borrow_mut() = BinaryHeap::from(heap);
        for q in self.queues.borrow_mut().values_mut() {
            q.waiting.iter_mut().for_each(relocate);
        }
        if moved.is_empty() {
            return;
        }
        tracing::debug!(
            shard = self.id,
            segment = oldest,
            deliveries = moved.len(),
            "carried pending deliveries forward"
        );
        // The old segment stops counting them only once the carry is on disk.
        let n = moved.len() as u64;
        let commit = {
            let mut j = self.journal.borrow_mut();
            let c = j.commit();
            j.flush();
            c
        };
        let me = self.clone();
        tokio::task::spawn_local(async move {
            if let Ok(Ok(())) = commit.await {
                if let Some(c) = me.live.borrow_mut().get_mut(&oldest) {
                    *c = c.saturating_sub(n);
                }
            }
        });
    }

    /// Milliseconds since the shard started (wraps after 49 days: compare
    /// with `wrapping_sub`).
    fn clock_ms(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }

    /// Mirrors the timer heap's size for `GET /metrics`.
    fn count_scheduled(&self) {
        let n = self.timers.borrow().len() as u64;
        self.stats.scheduled.store(n, Ordering::Relaxed);
    }

    fn schedule(&self, work: Work, due_ms: i64) {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let earliest = self.timers.borrow().peek().map(|Reverse(t)| t.due_ms);
        self.timers.borrow_mut().push(Reverse(Timer { due_ms, seq, work }));
        self.count_scheduled();
        if earliest.is_none_or(|e| due_ms < e) {
            self.wake.notify_one();
        }
    }

    /// Queues a delivery behind its destination's others and starts what
    /// the shard's and the destination's in-flight limits allow.
    fn enqueue(self: &Rc<Self>, mut w: Work) {
        {
            let mut queues = self.queues.borrow_mut();
            let q = queues.entry(w.destination_id.clone()).or_default();
            if w.event.is_some() {
                if self.memory_full() || self.queued_bytes.get() + w.charged > QUEUED_BYTES {
                    // Read back from the journal when its turn comes.
                    w.event = None;
                    w.charged = 0;
                } else {
                    self.queued_in_memory.set(self.queued_in_memory.get() + 1);
                    self.queued_bytes.set(self.queued_bytes.get() + w.charged);
                }
            }
            let key = w.destination_id.clone();
            w.queued_at = self.clock_ms();
            q.waiting.push_back(w);
            if !q.listed && q.inflight < self.flow(&key).limit {
                q.listed = true;
                self.runnable.borrow_mut().push_back(key);
            }
        }
        self.pump();
    }

    /// The in-memory queue is at its count or byte bound.
    fn memory_full(&self) -> bool {
        self.queued_in_memory.get() >= QUEUED_IN_MEMORY || self.queued_bytes.get() >= QUEUED_BYTES
    }

    /// A destination's adaptive limit (a new one starts small).
    fn flow(&self, key: &Arc<str>) -> Flow {
        if let Some(f) = self.flows.borrow().get(key) {
            return *f;
        }
        let f = Flow::new(self.per_destination);
        self.flows.borrow_mut().insert(key.clone(), f);
        f
    }

    /// Starts waiting deliveries, one destination after another, while the
    /// shard has free slots. A destination runs at most its adaptive limit
    /// at once; slow ones (timing out) share at most half the slots and wait
    /// in `parked` beyond it, so other destinations always find slots.
    fn pump(self: &Rc<Self>) {
        while self.free.get() > 0 && !self.draining.get() {
            let Some(key) = self.runnable.borrow_mut().pop_front() else {
                break;
            };
            let flow = self.flow(&key);
            let work = {
                let mut queues = self.queues.borrow_mut();
                let Some(q) = queues.get_mut(&key) else { continue };
                if q.inflight >= flow.limit {
                    q.listed = false;
                    continue;
                }
                if flow.slow && self.slow_inflight.get() >= self.slow_cap {
                    // Stays listed: it comes back when a slow attempt ends.
                    self.parked.borrow_mut().push_back(key);
                    continue;
                }
                q.listed = false;
                let Some(w) = q.waiting.pop_front() else { continue };
                q.inflight += 1;
                if !q.waiting.is_empty() && q.inflight < flow.limit {
                    q.listed = true;
                    self.runnable.borrow_mut().push_back(key);
                }
                w
            };
            if work.event.is_some() {
                self.queued_in_memory.set(self.queued_in_memory.get() - 1);
                self.queued_bytes.set(self.queued_bytes.get() - work.charged);
            }
            self.free.set(self.free.get() - 1);
            self.inflight.set(self.inflight.get() + 1);
            self.stats
                .in_flight
                .store(self.inflight.get() as u64, Ordering::Relaxed);
            if flow.slow {
                self.slow_inflight.set(self.slow_inflight.get() + 1);
            }
            let me = self.clone();
            tokio::task::spawn_local(async move {
                let key = work.destination_id.clone();
                let id = (work.loc, work.target, work.attempt);
                let ran = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(me.run_work(work))).await;
                if ran.is_err() {
                    me.panicked(id, &key);
                }
                me.finished(&key, flow.slow);
            });
        }
    }

    /// Feeds an attempt's outcome to its destination's limit.
    fn observe_flow(&self, key: &Arc<str>, result: &PublishResult, took: Duration) {
        let outcome = match result.status {
            AttemptStatus::Success => Outcome::Success,
            AttemptStatus::Failed if result.code == "timeout" => Outcome::Timeout,
            AttemptStatus::Failed => Outcome::Other,
        };
        if let Some(f) = self.flows.borrow_mut().get_mut(key) {
            f.observe(outcome, self.per_destination, took);
        }
    }

    fn finished(self: &Rc<Self>, key: &Arc<str>, counted_slow: bool) {
        self.free.set(self.free.get() + 1);
        self.inflight.set(self.inflight.get() - 1);
        self.stats
            .in_flight
            .store(self.inflight.get() as u64, Ordering::Relaxed);
        if counted_slow {
            self.slow_inflight.set(self.slow_inflight.get() - 1);
            // A share slot is free: the parked slow destinations try again.
            let parked = std::mem::take(&mut *self.parked.borrow_mut());
            self.runnable.borrow_mut().extend(parked);
        }
        {
            let mut queues = self.queues.borrow_mut();
            if let Some(q) = queues.get_mut(key) {
                q.inflight -= 1;
                if q.waiting.is_empty() && q.inflight == 0 {
                    queues.remove(key);
                } else if !q.waiting.is_empty() && !q.listed {
                    q.listed = true;
                    self.runnable.borrow_mut().push_back(key.clone());
                }
            }
        }
        self.slot_freed.notify_waiters();
        self.pump();
    }

    /// Reads a delivery's event back from the journal.
    fn load_event(&self, loc: Loc) -> Result<Arc<Event>, JournalError> {
        self.load_accept(loc).map(|(_, e)| e)
    }

    /// Reads an accept record back: when it was accepted, and the event.
    fn load_accept(&self, loc: Loc) -> Result<(i64, Arc<Event>), JournalError> {
        let dir = self.journal.borrow().dir().to_path_buf();
        match self.reader.borrow_mut().read(&dir, loc)? {
            Record::Accept { accepted_at, event, .. } => Ok((accepted_at, event)),
            Record::Settle(_) => Err(JournalError::Corrupt {
                loc,
                source: journal::codec::CodecError::Kind(2),
            }),
        }
    }

    /// An attempt task panicked (a bug, not the destination's doing): the
    /// delivery is settled as a failed attempt so its slot, its destination's
    /// in-flight count and its segment are released, and it is retried on
    /// the schedule like any failure (so a panic that repeats ends when the
    /// retries do, instead of looping).
    fn panicked(self: &Rc<Self>, (loc, target, attempt): (Loc, u16, u32), destination_id: &Arc<str>) {
        self.stats.panics.fetch_add(1, Ordering::Relaxed);
        let retry = &self.deps.publish.config.retry;
        let next = if attempt <= retry.max_retries() {
            NextStep::Retry {
                attempt: attempt + 1,
                due_ms: now_ms() + retry.delay(attempt).as_millis() as i64,
            }
        } else {
            NextStep::Done
        };
        tracing::error!(shard = self.id, %destination_id, attempt, ?next, "a delivery attempt panicked");
        self.settle(loc, target, attempt, next.clone(), None, None, None);
        if let NextStep::Retry { attempt, due_ms } = next {
            self.schedule(
                Work::on_disk(loc, target, destination_id.clone(), attempt, false),
                due_ms,
            );
        }
    }

    /// Settles a delivery without an attempt (nothing to deliver to).
    fn settle_dropped(self: &Rc<Self>, w: Work) {
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        self.settle_unattempted(w);
    }

    /// Settles a delivery as done with no attempt recorded.
    fn settle_unattempted(self: &Rc<Self>, w: Work) {
        self.settle(
            w.loc,
            w.target,
            w.attempt,
            NextStep::Done,
            None,
            w.done.map(|d| (d, Handled::Committed)),
            None,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn settle(
        self: &Rc<Self>,
        loc: Loc,
        target: u16,
        attempt_number: u32,
        next: NextStep,
        attempt: Option<journal::codec::AttemptRef<'_>>,
        done: Option<(oneshot::Sender<Handled>, Handled)>,
        observe: Option<Observed>,
    ) {
        self.append_settle(loc, target, attempt_number, next, attempt);
        self.after_commit
            .borrow_mut()
            .push(AfterCommit::Settled { done, observe });
        self.schedule_flush();
    }

    /// Appends a settle record (released once it is `Done`).
    fn append_settle(
        &self,
        loc: Loc,
        target: u16,
        attempt_number: u32,
        next: NextStep,
        attempt: Option<journal::codec::AttemptRef<'_>>,
    ) {
        let settled = next == NextStep::Done;
        let at = self
            .journal
            .borrow_mut()
            .append_with(|buf| journal::codec::encode_settle(loc, target, attempt_number, &next, attempt, buf));
        self.note_segment(at.segment());
        if settled {
            self.release(loc, 1);
        }
    }

    async fn run_work(self: &Rc<Self>, mut w: Work) {
        if w.event.is_none() && Loc(self.journal.borrow().progress.durable.load(Ordering::Acquire)) <= w.loc {
            // Just carried forward: its record is not on disk yet.
            let c = {
                let mut j = self.journal.borrow_mut();
                let c = j.commit();
                j.flush();
                c
            };
            let _ = c.await;
        }
        let event = match w.event.take() {
            Some(e) => e,
            None => match self.load_event(w.loc) {
                Ok(e) => e,
                Err(e) => {
                    // Never dropped: the accept is still on disk (its segment
                    // is kept while the delivery is pending), so a transient
                    // error (EMFILE, EIO) clears; an error that does not is
                    // logged on every try.
                    self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(shard = self.id, error = %e, destination_id = %w.destination_id,
                        "cannot read a delivery's event back from the journal; trying again in {READ_RETRY:?}");
                    self.schedule(w, now_ms() + READ_RETRY.as_millis() as i64);
                    return;
                }
            },
        };
        // A scheduled retry superseded by a manual retry of a later attempt
        // (the map is almost always empty: no key is built then).
        let stale = !w.manual && {
            let sup = self.superseded.borrow();
            !sup.is_empty()
                && sup
                    .get(&(event.id.clone(), w.destination_id.to_string()))
                    .is_some_and(|&a| a > w.attempt)
        };
        if stale {
            self.settle_unattempted(w);
            return;
        }
        let owned = self
            .dests
            .borrow()
            .get(&*w.destination_id)
            .map(|o| (o.dest.clone(), o.publisher.clone()));
        let (dest, publisher) = match owned {
            // Routing is by destination id alone: a task (from the delivery
            // queue, say) naming another tenant's destination is refused.
            Some((dest, _)) if dest.tenant_id != event.tenant_id => {
                tracing::error!(shard = self.id, destination_id = %w.destination_id, event_id = %event.id,
                    "a delivery names a destination of another tenant; it is dropped");
                self.settle_dropped(w);
                return;
            }
            Some((dest, p)) if dest.is_enabled() => (dest, p),
            // Deleted or disabled: nothing is attempted and the delivery is settled.
            _ => {
                self.settle_dropped(w);
                return;
            }
        };
        let cfg = &self.deps.publish.config;
        let started = now_ms();
        let clock = std::time::Instant::now();
        let result = match &publisher {
            Ok(p) => {
                match tokio::time::timeout(
                    cfg.delivery_timeout_for(&dest.kind),
                    p.publish(&self.clients, &event, started),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => PublishResult::failed("timeout", "timeout"),
                }
            }
            Err(e) => PublishResult::failed("ERR", e.to_string()),
        };
        if result.not_attempted {
            let n = self.stats.not_attempted.fetch_add(1, Ordering::Relaxed);
            // One line per hundred: an outage of the proxy puts back every delivery.
            if n.is_multiple_of(100) {
                let why = result
                    .response_data
                    .as_ref()
                    .and_then(|d| d["error"].as_str())
                    .unwrap_or("");
                tracing::warn!(shard = self.id, destination_id = %w.destination_id, error = why, not_attempted = n + 1,
                    "a delivery could not be attempted; it is tried again in {NOT_ATTEMPTED_RETRY:?} with no attempt recorded");
            }
            self.schedule(w, now_ms() + NOT_ATTEMPTED_RETRY.as_millis() as i64);
            return;
        }
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        let took = clock.elapsed();
        self.stats.attempt_latency.observe(took);
        if let Some(otel) = crate::otel::get() {
            otel.attempt(
                &event,
                &dest,
                w.attempt,
                w.manual,
                (result.status, &result.code),
                started,
                took,
            );
        }
        self.observe_flow(&w.destination_id, &result, took);
        let mut next = match result.status {
            AttemptStatus::Success => {
                self.stats.successes.fetch_add(1, Ordering::Relaxed);
                NextStep::Done
            }
            AttemptStatus::Failed => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                // A permanent failure (refused credentials) is retried like
                // any other, as Outpost does, unless the operator chose to
                // leave those to a manual retry.
                let retryable = result.retryable || !cfg.retry.skip_permanent;
                if event.eligible_for_retry && retryable && w.attempt <= cfg.retry.max_retries() {
                    let mut delay = cfg.retry.delay(w.attempt);
                    if let Some(asked) = result.retry_after {
                        delay = delay.max(asked.min(cfg.retry.max_delay()));
                    }
                    NextStep::Retry {
                        attempt: w.attempt + 1,
                        due_ms: now_ms() + delay.as_millis() as i64,
                    }
                } else {
                    NextStep::Done
                }
            }
        };
        let attempt_id = self.deps.ids.generate(&cfg.attempt_id_prefix);
        let attempt = journal::codec::AttemptRef {
            id: &attempt_id,
            tenant_id: &event.tenant_id,
            event_id: &event.id,
            destination_id: &w.destination_id,
            destination_type: &dest.kind,
            topic: &event.topic,
            attempt_number: w.attempt,
            manual: w.manual,
            status: result.status,
            time: started,
            code: Some(&result.code),
            response_data: result.response_data.as_ref(),
        };
        // Hand the retry to the shared schedule first; only once it is there
        // is the local record settled. If Redis is unavailable the retry
        // stays local (still durable, on this node). The task that failed is
        // marked done in the same transaction: from then on the retry may
        // run, and a copy of this task must not run after it under this
        // number: its message handed out again after a crash before the
        // ack, or this journal's own record of it after a crash before the
        // settle below was committed (recovery then settles it from the
        // outcome the mark holds: `recovery::settle_handed_over`).
        let mut handled = Handled::Committed;
        if let (
            Some(redis),
            NextStep::Retry {
                attempt: next_attempt,
                due_ms,
            },
        ) = (&self.deps.shared_retries, &next)
        {
            let retry = crate::queue::Task {
                event: event.clone(),
                destination_id: w.destination_id.to_string(),
                attempt: *next_attempt,
                manual: false,
            };
            let failed = crate::queue::Task {
                attempt: w.attempt,
                manual: w.manual,
                ..retry.clone()
            };
            let mut outcome = Vec::new();
            journal::codec::encode_settle(w.loc, w.target, w.attempt, &NextStep::Done, Some(attempt), &mut outcome);
            let after = crate::store::redis::RetryAfter {
                failed: &failed,
                ttl_ms: cfg.delivery_idempotency_key_ttl.as_millis() as i64,
                outcome: &outcome,
            };
            match redis.schedule_retry(&retry, *due_ms, Some(after)).await {
                Ok(()) => {
                    next = NextStep::Done;
                    handled = Handled::HandedOver;
                }
                Err(e) => tracing::warn!(error = %e, event_id = %event.id, destination_id = %w.destination_id,
                    attempt = w.attempt, "shared retry schedule unavailable; retrying from this node"),
            }
        }
        let status = result.status;
        let copy = (status == AttemptStatus::Failed && self.deps.alerts.is_some())
            || self.deps.opevents.as_ref().is_some_and(|o| o.wants_attempts());
        let observe = (self.deps.alerts.is_some() || self.deps.opevents.is_some()).then(|| Observed {
            dest: dest.clone(),
            event: event.clone(),
            status,
            attempt: copy.then(|| attempt.to_owned()),
        });
        self.settle(
            w.loc,
            w.target,
            w.attempt,
            next.clone(),
            Some(attempt),
            w.done.take().map(|d| (d, handled)),
            observe,
        );
        match next {
            NextStep::Retry { attempt, due_ms } => {
                self.schedule(Work::on_disk(w.loc, w.target, w.destination_id, attempt, false), due_ms)
            }
            NextStep::Done => {
                let mut sup = self.superseded.borrow_mut();
                if !sup.is_empty() {
                    let key = (event.id.clone(), w.destination_id.to_string());
                    if sup.get(&key).is_some_and(|&a| a <= w.attempt) {
                        sup.remove(&key);
                    }
                }
            }
        }
    }

    /// Stops taking work; waits (up to the deadline) for attempts in flight
    /// to finish and for their outcomes to be committed.
    async fn drain(self: &Rc<Self>, deadline: Option<std::time::Instant>) -> DrainReport {
        self.draining.set(true);
        let at_stop = self.inflight.get();
        let deadline = deadline.unwrap_or_else(std::time::Instant::now);
        while self.inflight.get() + self.deferrals.get() > 0 && std::time::Instant::now() < deadline {
            tokio::select! {
                _ = self.slot_freed.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        let abandoned = self.inflight.get();
        // Commit what the finished attempts appended.
        self.flush_now();
        let (tx, rx) = oneshot::channel::<()>();
        {
            let mut j = self.journal.borrow_mut();
            let c = j.commit();
            j.flush();
            tokio::task::spawn_local(async move {
                let _ = c.await;
                let _ = tx.send(());
            });
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        // Let the post-commit handlers (acks, alerts) run.
        tokio::task::yield_now().await;
        let queued: usize = self.queues.borrow().values().map(|q| q.waiting.len()).sum();
        DrainReport {
            finished: at_stop - abandoned,
            abandoned,
            left: queued + self.timers.borrow().len(),
        }
    }

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
            None => Err(crate::destinations::PublisherError::Unsupported(d.kind.clone())),
        };
        if let Err(e) = &publisher {
            tracing::warn!(shard = self.id, destination_id = %d.id, error = %e, "destination cannot be delivered to");
        }
        self.dests
            .borrow_mut()
            .insert(d.id.clone(), Owned { dest: d, publisher });
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
