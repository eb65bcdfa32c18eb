//! The delivery queue between API nodes and delivery nodes. Messages are
//! Outpost's `DeliveryTask` JSON, so the format on the wire is the one Outpost
//! operators already know:
//! `{"event":{...},"destination_id":"...","attempt":1,"manual":false}`.
//!
//! One addition: a fan-out event goes as **one** message with
//! `"destination_ids":[...]` (`destination_id` is the first of them) instead
//! of one message per destination. Delivery nodes read both forms; when
//! upgrading, update delivery nodes before API nodes (an older delivery node
//! would deliver only to `destination_id`).

pub mod pubsub;
pub mod rabbitmq;
pub mod sqs;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::{Event, StringMap};

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("cannot reach {what}: {message}")]
    Unreachable { what: &'static str, message: String },
    #[error("{what}: {message}")]
    Broker { what: &'static str, message: String },
    #[error("the queue refused the message")]
    Nacked,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a delivery node did not take a task (it is requeued): the node's own
/// error, kept whole with its causes for the log line.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// What a delivery node does with one task: `Ok` = durable here (ack it).
pub type TaskHandler = Arc<dyn Fn(Task) -> BoxFuture<'static, Result<(), TaskError>> + Send + Sync>;

/// The consumed messages a queue client is still handling or settling
/// (acking, deleting, nacking), and the signal that stops its consumer. At
/// shutdown the engine asks the consumer to stop taking messages (on
/// RabbitMQ: cancel the consumer, keeping the channel open), then waits for
/// these before it stops the shards: a message whose task is already
/// durable on this node gets its ack instead of being redelivered to the
/// next node (which would deliver it a second time). Aborting the consumer
/// instead closed the channel under the pending acks.
#[derive(Debug, Default)]
pub struct Settling {
    n: std::sync::atomic::AtomicUsize,
    idle: tokio::sync::Notify,
    stopping: std::sync::atomic::AtomicBool,
    stop: tokio::sync::Notify,
}

impl Settling {
    /// Asks the consumer to take no more messages.
    pub fn stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Release);
        self.stop.notify_waiters();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Returns once [`Settling::stop`] was called.
    pub async fn stopped(&self) {
        wait_until(&self.stop, || self.is_stopping()).await
    }

    /// Spawns the handling and settling of one message, counted.
    pub fn spawn(self: &Arc<Self>, work: impl Future<Output = ()> + Send + 'static) {
        use std::sync::atomic::Ordering::AcqRel;
        self.n.fetch_add(1, AcqRel);
        let me = self.clone();
        tokio::spawn(async move {
            // Counted down even if `work` panics.
            struct Done(Arc<Settling>);
            impl Drop for Done {
                fn drop(&mut self) {
                    if self.0.n.fetch_sub(1, AcqRel) == 1 {
                        self.0.idle.notify_waiters();
                    }
                }
            }
            let _done = Done(me);
            work.await;
        });
    }

    /// Messages being handled or settled now.
    pub fn count(&self) -> usize {
        self.n.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Returns once none is.
    pub async fn idle(&self) {
        wait_until(&self.idle, || self.count() == 0).await
    }
}

/// Returns once `done()` holds, re-checked each time `notify` wakes its
/// waiters (registered before each check, so no wake-up is missed).
async fn wait_until(notify: &tokio::sync::Notify, done: impl Fn() -> bool) {
    loop {
        let woken = notify.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if done() {
            return;
        }
        woken.await;
    }
}

/// The delivery queue between API and delivery nodes, whatever the broker.
pub trait DeliveryBus: Send + Sync + 'static {
    /// Returns once the broker holds every task durably.
    fn publish(&self, tasks: Vec<Task>) -> BoxFuture<'_, Result<(), QueueError>>;
    /// Consumes until the connection fails; acks after `handle` succeeds,
    /// makes the task visible again after it fails, drops malformed messages.
    fn consume(&self, prefetch: u16, handle: TaskHandler) -> BoxFuture<'_, Result<(), QueueError>>;
    /// The consumed messages still being handled or settled.
    fn settling(&self) -> Arc<Settling>;
}

/// What to do with a consumed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    Ack,
    /// Put it back for another try (a transient failure here).
    Requeue,
    /// Drop it (or dead-letter it, per the broker's policy): it can never succeed.
    Reject,
}

/// What a consumer does with one raw message.
pub type ByteHandler = Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, Disposition> + Send + Sync>;

/// A queue consumed as raw messages (the publish queue).
pub trait MessageSource: Send + Sync + 'static {
    fn consume_bytes(&self, prefetch: u16, handle: ByteHandler) -> BoxFuture<'_, Result<(), QueueError>>;
    /// The consumed messages still being handled or settled.
    fn settling(&self) -> Arc<Settling>;
}

/// Adapts a task handler to raw messages: malformed tasks are rejected; the
/// tasks of a message (one per destination) are handled concurrently and the
/// message is acked only if every one succeeded, requeued otherwise (the
/// ones that had succeeded then run again: at least once).
pub fn task_handler(handle: TaskHandler) -> ByteHandler {
    Arc::new(move |bytes: Vec<u8>| {
        let handle = handle.clone();
        Box::pin(async move {
            match decode_all(&bytes) {
                Err(e) => {
                    tracing::warn!(error = %e, "dropping a malformed delivery task");
                    Disposition::Reject
                }
                Ok(tasks) => {
                    let results = futures_util::future::join_all(tasks.into_iter().map(|t| handle(t))).await;
                    match results.into_iter().find_map(Result::err) {
                        None => Disposition::Ack,
                        Some(e) => {
                            tracing::warn!(error = %crate::error_text::with_causes(&*e), "delivery task not accepted; it will be redelivered");
                            Disposition::Requeue
                        }
                    }
                }
            }
        })
    })
}

/// Runs `work` (a consumed message's handler) and, every `every` until it
/// finishes, `extend` (pushes the message's visibility timeout or ack
/// deadline further away). A busy node may hold a message longer than its
/// first lease (its shard's inbox is full, say); without this the broker
/// would hand it to another node meanwhile, and SQS would dead-letter a
/// delivered message after a few such receives.
pub(crate) async fn while_extending<T>(
    work: impl Future<Output = T>,
    every: std::time::Duration,
    mut extend: impl FnMut() -> BoxFuture<'static, ()>,
) -> T {
    tokio::pin!(work);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => extend().await,
        }
    }
}

/// One delivery to make.
#[derive(Debug, Clone)]
pub struct Task {
    pub event: Arc<Event>,
    pub destination_id: String,
    pub attempt: u32,
    pub manual: bool,
}

#[derive(Serialize, Deserialize)]
struct WireEvent<'a> {
    id: String,
    tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    destination_id: Option<String>,
    #[serde(default)]
    matched_destination_ids: Vec<String>,
    #[serde(default)]
    topic: String,
    #[serde(default = "yes")]
    eligible_for_retry: bool,
    time: String,
    #[serde(default)]
    metadata: StringMap,
    #[serde(borrow)]
    data: &'a RawValue,
}

fn yes() -> bool {
    true
}

#[derive(Serialize, Deserialize)]
struct WireTask<'a> {
    #[serde(borrow)]
    event: WireEvent<'a>,
    destination_id: String,
    /// Ours: every destination of a fan-out message (the first is `destination_id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    destination_ids: Vec<String>,
    attempt: u32,
    #[serde(default)]
    manual: bool,
}

impl<'a> WireEvent<'a> {
    fn of(e: &Event, data: &'a RawValue) -> Self {
        WireEvent {
            id: e.id.clone(),
            tenant_id: e.tenant_id.clone(),
            destination_id: e.destination_id.clone(),
            matched_destination_ids: e.matched_destination_ids.clone(),
            topic: e.topic.clone(),
            eligible_for_retry: e.eligible_for_retry,
            time: crate::timefmt::format_rfc3339_nano(e.time, e.time_ns),
            metadata: e.metadata.clone(),
            data,
        }
    }
}

/// The event's data as raw JSON (it was validated as an object on publish).
fn raw_data(e: &Event) -> Box<RawValue> {
    RawValue::from_string(e.data.to_string())
        .unwrap_or_else(|_| RawValue::from_string("{}".into()).unwrap_or_else(|_| unreachable!("literal JSON")))
}

/// An event as Outpost shows it in a delivery task, for other documents
/// that carry one (operator events).
pub fn event_json(e: &Event) -> serde_json::Value {
    let data = raw_data(e);
    serde_json::to_value(WireEvent::of(e, &data)).unwrap_or_default()
}

pub fn encode(t: &Task) -> Vec<u8> {
    encode_group(std::slice::from_ref(t))
}

/// One message for tasks of the same event, attempt and manual flag.
fn encode_group(group: &[Task]) -> Vec<u8> {
    let Some(t) = group.first() else { return Vec::new() };
    let data = raw_data(&t.event);
    let wire = WireTask {
        event: WireEvent::of(&t.event, &data),
        destination_id: t.destination_id.clone(),
        destination_ids: if group.len() > 1 {
            group.iter().map(|t| t.destination_id.clone()).collect()
        } else {
            Vec::new()
        },
        attempt: t.attempt,
        manual: t.manual,
    };
    serde_json::to_vec(&wire).unwrap_or_default()
}

/// Most tasks in one message.
pub const MESSAGE_MAX_TASKS: usize = 64;
/// Most bytes in one message made of several events (one event larger than
/// this still goes, alone). Ten of them fit in SQS's batch limit once the
/// SQS client splits batches by size, and each is under its 256 KiB limit.
pub const MESSAGE_MAX_BYTES: usize = 192 * 1024;

/// The messages for `tasks`. Neighbouring tasks of the same event (the same
/// `Arc`), attempt and manual flag are one task document (with
/// `destination_ids`). Documents for the same destinations share a message,
/// as a JSON array, up to [`MESSAGE_MAX_TASKS`] tasks and
/// [`MESSAGE_MAX_BYTES`]; a message of one document is Outpost's
/// `DeliveryTask` object itself. The broker's cost is per message, so
/// packing is what makes a busy node's publishes cheap (see [`Coalesced`]).
/// Packing by destination matters because a delivery node acks a message
/// only when every task in it has its outcome: a slow destination then
/// holds back messages of its own tasks, never other destinations' ones.
/// Messages come out in the order of their first task; tasks for one
/// destination keep their order.
pub fn encode_all(tasks: &[Task]) -> Vec<Vec<u8>> {
    struct Open<'a> {
        key: Vec<&'a str>,
        parts: Vec<Vec<u8>>,
        tasks: usize,
        bytes: usize,
    }
    let mut out: Vec<Option<Vec<u8>>> = Vec::new();
    // Messages still taking documents, with their slot in `out`.
    let mut open: Vec<(Open, usize)> = Vec::new();
    for group in groups(tasks) {
        let key: Vec<&str> = group.iter().map(|t| t.destination_id.as_str()).collect();
        let doc = encode_group(group);
        let i = open.iter().position(|(o, _)| o.key == key);
        if let Some(i) = i {
            let o = &open[i].0;
            if o.tasks + group.len() > MESSAGE_MAX_TASKS || o.bytes + doc.len() + 1 > MESSAGE_MAX_BYTES {
                let (full, slot) = open.swap_remove(i);
                out[slot] = Some(join_documents(full.parts));
            } else {
                let o = &mut open[i].0;
                o.tasks += group.len();
                o.bytes += doc.len() + 1;
                o.parts.push(doc);
                continue;
            }
        }
        out.push(None);
        open.push((
            Open {
                key,
                tasks: group.len(),
                bytes: doc.len() + 1,
                parts: vec![doc],
            },
            out.len() - 1,
        ));
    }
    for (o, slot) in open {
        out[slot] = Some(join_documents(o.parts));
    }
    out.into_iter().flatten().collect()
}

/// Runs of neighbouring tasks that one task document carries.
fn groups(tasks: &[Task]) -> impl Iterator<Item = &[Task]> {
    tasks.chunk_by(|a, b| Arc::ptr_eq(&a.event, &b.event) && a.attempt == b.attempt && a.manual == b.manual)
}

fn join_documents(mut parts: Vec<Vec<u8>>) -> Vec<u8> {
    if parts.len() == 1 {
        return parts.pop().unwrap_or_default();
    }
    let mut msg = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum::<usize>() + 1);
    msg.push(b'[');
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            msg.push(b',');
        }
        msg.extend_from_slice(p);
    }
    msg.push(b']');
    msg
}

/// Every task of a message: one task document, or an array of them.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Task>, String> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let docs: Vec<&RawValue> =
            serde_json::from_slice(bytes).map_err(|e| format!("malformed delivery task: {e}"))?;
        let mut tasks = Vec::with_capacity(docs.len());
        for doc in docs {
            tasks.extend(decode_document(doc.get().as_bytes())?);
        }
        return Ok(tasks);
    }
    decode_document(bytes)
}

/// The tasks of one task document (one per destination).
fn decode_document(bytes: &[u8]) -> Result<Vec<Task>, String> {
    let (first, ids) = decode_wire(bytes)?;
    if ids.is_empty() {
        return Ok(vec![first]);
    }
    Ok(ids
        .into_iter()
        .map(|destination_id| Task {
            destination_id,
            ..first.clone()
        })
        .collect())
}

/// Splits `messages` into runs for one batch request of at most `max_count`
/// messages and `max_bytes` together (a message larger than that alone).
pub(crate) fn batch_requests(messages: &[Vec<u8>], max_count: usize, max_bytes: usize) -> Vec<&[Vec<u8>]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in messages.iter().enumerate() {
        if i > start && (i - start == max_count || bytes + m.len() > max_bytes) {
            out.push(&messages[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += m.len();
    }
    if start < messages.len() {
        out.push(&messages[start..]);
    }
    out
}

/// A [`DeliveryBus`] whose concurrent publishes go out together: the
/// tasks of the publishes made while earlier ones wait for their confirms
/// are sent in one call, packed into shared messages ([`encode_all`]). A
/// publish returns when its batch is confirmed; a batch that fails fails
/// every publish in it (each may then be retried: at least once).
pub struct Coalesced {
    inner: Arc<dyn DeliveryBus>,
    batches: crate::coalesce::Coalescer<Vec<Task>, Result<(), QueueError>>,
}

/// Publishes (events) in one batch, and batches waiting for confirms at once.
const PUBLISHES_PER_BATCH: usize = 64;
const PUBLISH_BATCHES_IN_FLIGHT: usize = 2;

impl Coalesced {
    /// Needs a tokio runtime (the batching task starts here).
    pub fn new(inner: Arc<dyn DeliveryBus>) -> Self {
        let bus = inner.clone();
        let batches = crate::coalesce::Coalescer::spawn(
            PUBLISHES_PER_BATCH,
            PUBLISH_BATCHES_IN_FLIGHT,
            move |publishes: Vec<Vec<Task>>| {
                let bus = bus.clone();
                async move {
                    let n = publishes.len();
                    let tasks: Vec<Task> = publishes.into_iter().flatten().collect();
                    let result = bus.publish(tasks).await;
                    vec![result; n]
                }
            },
        );
        Self { inner, batches }
    }

    /// How many publishes went out in how many batches.
    pub fn stats(&self) -> Arc<crate::coalesce::BatchStats> {
        self.batches.stats()
    }
}

impl DeliveryBus for Coalesced {
    fn publish(&self, tasks: Vec<Task>) -> BoxFuture<'_, Result<(), QueueError>> {
        Box::pin(async move {
            self.batches.call(tasks).await.map_err(|_| QueueError::Broker {
                what: "delivery queue",
                message: "the publishing task has stopped".into(),
            })?
        })
    }

    fn consume(&self, prefetch: u16, handle: TaskHandler) -> BoxFuture<'_, Result<(), QueueError>> {
        self.inner.consume(prefetch, handle)
    }

    fn settling(&self) -> Arc<Settling> {
        self.inner.settling()
    }
}

/// A single-destination task document (the form the shared retry schedule stores).
pub fn decode(bytes: &[u8]) -> Result<Task, String> {
    decode_wire(bytes).map(|(t, _)| t)
}

fn decode_wire(bytes: &[u8]) -> Result<(Task, Vec<String>), String> {
    let w: WireTask = serde_json::from_slice(bytes).map_err(|e| format!("malformed delivery task: {e}"))?;
    let (time, time_ns) =
        crate::timefmt::parse_rfc3339(&w.event.time).ok_or("malformed delivery task: bad event time")?;
    if !w.event.data.get().starts_with('{') {
        return Err("malformed delivery task: event data is not an object".into());
    }
    let task = Task {
        event: Arc::new(Event {
            id: w.event.id,
            tenant_id: w.event.tenant_id,
            destination_id: w.event.destination_id,
            topic: w.event.topic,
            eligible_for_retry: w.event.eligible_for_retry,
            time,
            time_ns,
            metadata: w.event.metadata,
            data: Arc::from(crate::json::compact(w.event.data.get())),
            matched_destination_ids: w.event.matched_destination_ids,
        }),
        destination_id: w.destination_id,
        attempt: w.attempt.max(1),
        manual: w.manual,
    };
    Ok((task, w.destination_ids))
}

/// A task for tests: event `e<n>` of tenant `t` to destination `d`.
#[cfg(test)]
pub(crate) fn sample_task(n: u32, data: &str) -> Task {
    Task {
        event: Arc::new(Event {
            id: format!("e{n}"),
            tenant_id: "t".into(),
            destination_id: None,
            topic: "x".into(),
            eligible_for_retry: true,
            time: 1_704_067_200_000,
            time_ns: 250_001,
            metadata: StringMap::new(),
            data: Arc::from(data),
            matched_destination_ids: vec!["d".into()],
        }),
        destination_id: "d".into(),
        attempt: 1,
        manual: false,
    }
}

/// Two consumers ("nodes") of one queue, `a` and `b`; the handler holds
/// each message for `hold`. `send` puts one message on; after `watch`,
/// returns how many times it was handled (1 unless the broker handed it
/// to a second consumer while the first still held it).
#[cfg(test)]
pub(crate) async fn handlings_of_a_held_message<Q: MessageSource>(
    a: Arc<Q>,
    b: Arc<Q>,
    hold: std::time::Duration,
    watch: std::time::Duration,
    send: impl Future<Output = ()>,
) -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let handler: ByteHandler = {
        let calls = calls.clone();
        Arc::new(move |_body| {
            calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(hold).await;
                Disposition::Ack
            })
        })
    };
    let consumers: Vec<_> = [a, b]
        .into_iter()
        .map(|q| {
            let h = handler.clone();
            tokio::spawn(async move { q.consume_bytes(1, h).await })
        })
        .collect();
    send.await;
    tokio::time::sleep(watch).await;
    for c in consumers {
        c.abort();
    }
    calls.load(Ordering::SeqCst)
}

/// A handler for tests: records every task id it sees, checks the data is
/// `data`, and fails the first delivery of `fail_once`. Returns the record.
#[cfg(test)]
pub(crate) fn recording_handler(
    data: &'static str,
    fail_once: &'static str,
) -> (TaskHandler, Arc<std::sync::Mutex<Vec<String>>>) {
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let handler: TaskHandler = Arc::new(move |t: Task| {
        let s = s.clone();
        Box::pin(async move {
            assert_eq!(&*t.event.data, data);
            let mut v = s.lock().unwrap_or_else(|e| e.into_inner());
            let first = !v.contains(&t.event.id);
            v.push(t.event.id.clone());
            if first && t.event.id == fail_once {
                Err("not now".into())
            } else {
                Ok(())
            }
        })
    });
    (handler, seen)
}

/// The shared test suite every [`DeliveryBus`] passes: at-least-once
/// redelivery of a failed task, no redelivery of acked ones, malformed
/// messages never reach the handler, and tasks handled concurrently (a
/// delivery node acks only after the attempt, so one slow attempt must not
/// hold the others back).
#[cfg(test)]
pub(crate) mod conformance {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    async fn until(what: &str, timeout: Duration, f: impl Fn() -> bool) {
        let deadline = Instant::now() + timeout;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `t` with its event renamed `id`.
    fn with_event_id(mut t: Task, id: &str) -> Task {
        t.event = Arc::new(Event {
            id: id.into(),
            ..(*t.event).clone()
        });
        t
    }

    /// Waits until `seen` holds `n` entries, then a moment more (anything
    /// redelivered would show up), and returns them sorted.
    async fn settled(seen: &std::sync::Mutex<Vec<String>>, n: usize, what: &str, timeout: Duration) -> Vec<String> {
        until(what, timeout, || seen.lock().map(|v| v.len() >= n).unwrap_or(false)).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut got = seen.lock().unwrap().clone();
        got.sort();
        got
    }

    /// `raw` puts bytes on the queue as a producer would. One consumer runs
    /// throughout (an aborted receive could still take messages on the
    /// broker side and hide them for the visibility timeout).
    pub async fn run(bus: Arc<dyn DeliveryBus>, raw: impl AsyncFnOnce(Vec<u8>)) {
        const DATA: &str = "{\"b\":1,\"a\":2}";
        // Tasks e0..e4 are recorded (e2 fails once); e10.. wait until 4 are in flight at once.
        let (record, seen) = recording_handler(DATA, "e2");
        let inflight = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let (i, p, d) = (inflight.clone(), peak.clone(), done.clone());
        let fanned: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let f = fanned.clone();
        let packed: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let pk = packed.clone();
        let handler: TaskHandler = Arc::new(move |t: Task| {
            if t.event.id.starts_with('p') {
                let mut v = pk.lock().unwrap_or_else(|e| e.into_inner());
                let first = !v.contains(&t.event.id);
                v.push(t.event.id.clone());
                let fail = first && t.event.id == "p1";
                return Box::pin(async move {
                    if fail {
                        Err("not now".into())
                    } else {
                        Ok(())
                    }
                });
            }
            if t.event.id == "fan" {
                f.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(t.destination_id.clone());
                return Box::pin(async { Ok(()) });
            }
            if t.event.id.len() == 2 {
                return record(t);
            }
            let (i, p, d) = (i.clone(), p.clone(), d.clone());
            Box::pin(async move {
                let now = i.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(now, Ordering::SeqCst);
                let deadline = Instant::now() + Duration::from_secs(3);
                while p.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                i.fetch_sub(1, Ordering::SeqCst);
                d.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
        });
        let b = bus.clone();
        let consumer = tokio::spawn(async move { b.consume(10, handler).await });

        // One publish per task: each its own message (one publish of all
        // five would pack them into one, and e2's failure would send all
        // five back; that case is checked below).
        for n in 0..5 {
            bus.publish(vec![sample_task(n, DATA)]).await.unwrap();
        }
        raw(b"not a task".to_vec()).await;
        until("5 tasks + 1 redelivery", Duration::from_secs(20), || {
            seen.lock().map(|v| v.len() >= 6).unwrap_or(false)
        })
        .await;
        // Anything acked would come back within this.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let v = seen.lock().unwrap().clone();
        let mut unique = v.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique, vec!["e0", "e1", "e2", "e3", "e4"], "{v:?}");
        assert_eq!(
            v.iter().filter(|id| *id == "e2").count(),
            2,
            "failed once, redelivered once: {v:?}"
        );
        assert_eq!(
            v.len(),
            6,
            "acked tasks are not redelivered; malformed never handled: {v:?}"
        );

        let tasks: Vec<Task> = (10..18).map(|n| sample_task(n, DATA)).collect();
        bus.publish(tasks).await.unwrap();
        until("8 tasks handled", Duration::from_secs(30), || {
            done.load(Ordering::SeqCst) >= 8
        })
        .await;
        assert!(
            peak.load(Ordering::SeqCst) >= 4,
            "tasks are handled concurrently: peak {} in flight",
            peak.load(Ordering::SeqCst)
        );

        // One fan-out event: one message, every destination handled once.
        let fan = with_event_id(sample_task(0, DATA), "fan");
        let group: Vec<Task> = ["d1", "d2", "d3"]
            .iter()
            .map(|d| Task {
                destination_id: d.to_string(),
                ..fan.clone()
            })
            .collect();
        assert_eq!(encode_all(&group).len(), 1, "one message for the fan-out");
        bus.publish(group).await.unwrap();
        let got = settled(&fanned, 3, "3 destinations of one message", Duration::from_secs(20)).await;
        assert_eq!(got, ["d1", "d2", "d3"]);

        // Three events for one destination published together: one message.
        // p1 fails once, so the whole message comes back and each of its
        // tasks is handled twice (a delivery node acks the copies of the
        // committed ones by their Redis done marks), then it is acked.
        let three: Vec<Task> = (0..3)
            .map(|n| with_event_id(sample_task(n, DATA), &format!("p{n}")))
            .collect();
        assert_eq!(encode_all(&three).len(), 1, "one message for one destination's tasks");
        bus.publish(three).await.unwrap();
        let got = settled(&packed, 6, "the packed message handled twice", Duration::from_secs(30)).await;
        assert_eq!(
            got,
            ["p0", "p0", "p1", "p1", "p2", "p2"],
            "redelivered once as a whole, then acked"
        );
        consumer.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_json_is_the_task_event() {
        let t = sample_task(1, r#"{"zebra":1,"alpha":2}"#);
        let v = event_json(&t.event);
        let task: serde_json::Value = serde_json::from_slice(&encode(&t)).unwrap();
        assert_eq!(v, task["event"]);
        assert_eq!(v["data"]["zebra"], 1);
    }

    #[test]
    fn round_trip_keeps_key_order() {
        let t = Task {
            event: Arc::new(Event {
                id: "e1".into(),
                tenant_id: "t1".into(),
                destination_id: None,
                topic: "x".into(),
                eligible_for_retry: false,
                time: 1_704_067_200_120,
                time_ns: 0,
                metadata: StringMap::new(),
                data: Arc::from(r#"{"zebra":1,"alpha":2}"#),
                matched_destination_ids: vec!["d1".into()],
            }),
            destination_id: "d1".into(),
            attempt: 3,
            manual: true,
        };
        let bytes = encode(&t);
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""data":{"zebra":1,"alpha":2}"#), "{text}");
        let back = decode(&bytes).unwrap();
        assert_eq!(*back.event, *t.event);
        assert_eq!(
            (back.attempt, back.manual, back.destination_id.as_str()),
            (3, true, "d1")
        );
        assert!(decode(b"{}").is_err());
    }

    #[test]
    fn a_fan_out_is_one_document_and_reads_back_as_its_tasks() {
        let t = sample_task(1, "{}");
        let other = sample_task(2, "{}");
        let tasks = vec![
            Task {
                destination_id: "d1".into(),
                ..t.clone()
            },
            Task {
                destination_id: "d2".into(),
                ..t.clone()
            },
            other.clone(),
            Task {
                attempt: 2,
                ..other.clone()
            },
        ];
        let docs: Vec<Vec<u8>> = groups(&tasks).map(encode_group).collect();
        assert_eq!(docs.len(), 3, "same event and attempt share a document");
        let first = decode_all(&docs[0]).unwrap();
        assert_eq!(
            first.iter().map(|t| t.destination_id.as_str()).collect::<Vec<_>>(),
            ["d1", "d2"]
        );
        assert!(Arc::ptr_eq(&first[0].event, &first[1].event));
        let v: serde_json::Value = serde_json::from_slice(&docs[0]).unwrap();
        assert_eq!(v["destination_id"], "d1", "Outpost's field is kept");
        assert_eq!(decode_all(&docs[1]).unwrap().len(), 1);
        assert!(serde_json::from_slice::<serde_json::Value>(&docs[1])
            .unwrap()
            .get("destination_ids")
            .is_none());

        // Packed: the fan-out alone (it goes to other destinations), and
        // event 2's two documents for "d" as one array message.
        let msgs = encode_all(&tasks);
        assert_eq!(msgs.len(), 2);
        let v: serde_json::Value = serde_json::from_slice(&msgs[1]).unwrap();
        assert_eq!(v.as_array().map(Vec::len), Some(2));
        let back: Vec<Task> = msgs.iter().flat_map(|m| decode_all(m).unwrap()).collect();
        let seen: Vec<_> = back
            .iter()
            .map(|t| (t.event.id.as_str(), t.destination_id.as_str(), t.attempt))
            .collect();
        assert_eq!(seen, [("e1", "d1", 1), ("e1", "d2", 1), ("e2", "d", 1), ("e2", "d", 2)]);
    }

    #[test]
    fn a_lone_task_is_outposts_task_object() {
        let msgs = encode_all(&[sample_task(1, "{\"a\":1}")]);
        assert_eq!(msgs.len(), 1);
        let v: serde_json::Value = serde_json::from_slice(&msgs[0]).unwrap();
        assert!(v.is_object(), "{v}");
        assert_eq!(v["event"]["id"], "e1");
    }

    /// Messages stay within the task and byte limits, a too-large event goes
    /// alone, and no task is lost or reordered across messages.
    #[test]
    fn packing_respects_the_message_limits() {
        let big = format!("{{\"x\":\"{}\"}}", "y".repeat(MESSAGE_MAX_BYTES));
        let mut tasks: Vec<Task> = (0..150).map(|n| sample_task(n, "{\"n\":1}")).collect();
        tasks.insert(70, sample_task(1000, &big));
        let msgs = encode_all(&tasks);
        let mut back = Vec::new();
        for m in &msgs {
            let ts = decode_all(m).unwrap();
            assert!(ts.len() <= MESSAGE_MAX_TASKS);
            if ts.len() > 1 {
                assert!(
                    m.len() <= MESSAGE_MAX_BYTES,
                    "{} bytes with {} tasks",
                    m.len(),
                    ts.len()
                );
            }
            back.extend(ts.into_iter().map(|t| t.event.id.clone()));
        }
        let sent: Vec<_> = tasks.iter().map(|t| t.event.id.clone()).collect();
        assert_eq!(back, sent);
        assert!(
            msgs.iter().any(|m| m.len() > MESSAGE_MAX_BYTES),
            "the big event went alone"
        );
        assert!(msgs.len() <= 5, "151 tasks took {} messages", msgs.len());
    }

    /// A message holds tasks for one destination (or one fan-out's set), so
    /// a slow destination's unacked messages carry no one else's tasks.
    #[test]
    fn messages_are_packed_per_destination() {
        let to = |n: u32, d: &str| Task {
            destination_id: d.into(),
            ..sample_task(n, "{}")
        };
        let e9 = sample_task(9, "{}");
        let fan = |d: &str| Task {
            destination_id: d.into(),
            ..e9.clone()
        };
        let tasks = vec![
            to(1, "a"),
            to(2, "b"),
            to(3, "a"),
            fan("a"),
            fan("b"),
            to(4, "b"),
            to(5, "a"),
        ];
        let msgs = encode_all(&tasks);
        let read: Vec<Vec<(String, String)>> = msgs
            .iter()
            .map(|m| {
                decode_all(m)
                    .unwrap()
                    .into_iter()
                    .map(|t| (t.event.id.clone(), t.destination_id))
                    .collect()
            })
            .collect();
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(e, d)| (e.to_string(), d.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            read,
            vec![
                pairs(&[("e1", "a"), ("e3", "a"), ("e5", "a")]),
                pairs(&[("e2", "b"), ("e4", "b")]),
                pairs(&[("e9", "a"), ("e9", "b")]),
            ]
        );
    }

    #[test]
    fn batch_requests_respect_count_and_size() {
        let msgs: Vec<Vec<u8>> = [10, 10, 10, 50, 5, 100, 1].iter().map(|&n| vec![b'x'; n]).collect();
        let runs: Vec<Vec<usize>> = batch_requests(&msgs, 3, 60)
            .into_iter()
            .map(|r| r.iter().map(Vec::len).collect())
            .collect();
        assert_eq!(runs, vec![vec![10, 10, 10], vec![50, 5], vec![100], vec![1]]);
        assert!(batch_requests(&[], 10, 10).is_empty());
    }

    #[test]
    fn a_malformed_document_in_an_array_fails_the_message() {
        let good = encode(&sample_task(1, "{}"));
        let mut msg = b"[".to_vec();
        msg.extend_from_slice(&good);
        msg.extend_from_slice(b",{\"event\":1}]");
        assert!(decode_all(&msg).is_err());
        assert!(decode_all(b"[]").unwrap().is_empty());
    }
}
