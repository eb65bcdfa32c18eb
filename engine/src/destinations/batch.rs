//! The batching hook: concurrent publishes to one target on a shard share the
//! service's batch call (SQS `SendMessageBatch`, Kinesis `PutRecords`,
//! EventBridge `PutEvents`, Pub/Sub's multi-message publish, one Kafka
//! produce request per partition).
//!
//! Batches form only under load, never by waiting: the first publish to an
//! idle target is sent alone at once; publishes that arrive while a call to
//! that target is in flight queue up, and the next call takes as many as the
//! service's limits allow. Nobody waits for a timer, so a quiet destination
//! keeps its single-call latency, and a busy one makes fewer calls the more
//! deliveries are in flight to it (down to one per item limit of the call).
//!
//! Each caller keeps its own delivery deadline. The caller whose call is in
//! flight leads its lane: when the call returns it hands each member its
//! outcome and passes the lead, with its item back, to the first caller still
//! waiting. A leader cancelled by its deadline passes the lead on too (the
//! members of its call get a failed outcome; the call may still have reached
//! the service, so a retry can duplicate: delivery is at least once).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::rc::Rc;

use tokio::sync::oneshot;

use super::PublishResult;

/// What one batch call may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_items: usize,
    /// The sum of the items' sizes, as the service counts them; an item that
    /// alone exceeds it is still sent, alone, and the service answers for it.
    pub max_bytes: usize,
}

enum Signal<I> {
    Done(PublishResult),
    /// You lead now: here is your item back.
    Lead(I),
}

struct Waiter<I> {
    item: I,
    size: usize,
    tx: oneshot::Sender<Signal<I>>,
}

struct Lane<I> {
    queue: RefCell<VecDeque<Waiter<I>>>,
    /// Batch calls made on this lane (for tests and diagnostics).
    calls: Cell<u64>,
}

/// Lanes of one kind of batch call on one shard, keyed by client and target.
pub struct Batcher<K, I> {
    lanes: RefCell<HashMap<K, Rc<Lane<I>>>>,
    calls: Cell<u64>,
}

impl<K, I> Default for Batcher<K, I> {
    fn default() -> Self {
        Self {
            lanes: RefCell::new(HashMap::new()),
            calls: Cell::new(0),
        }
    }
}

impl<K: Hash + Eq + Clone, I> Batcher<K, I> {
    /// Publishes `item` (of `size` bytes) in a batch call to `key`'s target.
    /// `send` makes the call when this caller leads; it must answer one
    /// outcome per item, in order.
    pub async fn submit<F, Fut>(&self, key: &K, item: I, size: usize, limits: Limits, send: F) -> PublishResult
    where
        F: FnOnce(Vec<I>) -> Fut,
        Fut: Future<Output = Vec<PublishResult>>,
    {
        let existing = self.lanes.borrow().get(key).cloned();
        let (lane, item) = match existing {
            None => {
                let lane = Rc::new(Lane {
                    queue: RefCell::new(VecDeque::new()),
                    calls: Cell::new(0),
                });
                self.lanes.borrow_mut().insert(key.clone(), lane.clone());
                (lane, item)
            }
            Some(lane) => {
                let (tx, rx) = oneshot::channel();
                lane.queue.borrow_mut().push_back(Waiter { item, size, tx });
                match rx.await {
                    Ok(Signal::Done(r)) => return r,
                    Ok(Signal::Lead(item)) => (lane, item),
                    Err(_) => {
                        return PublishResult::failed(
                            "timeout",
                            "the batch call carrying this message was cancelled before it answered",
                        )
                    }
                }
            }
        };
        self.lead(key, lane, item, size, limits, send).await
    }

    async fn lead<F, Fut>(
        &self,
        key: &K,
        lane: Rc<Lane<I>>,
        item: I,
        size: usize,
        limits: Limits,
        send: F,
    ) -> PublishResult
    where
        F: FnOnce(Vec<I>) -> Fut,
        Fut: Future<Output = Vec<PublishResult>>,
    {
        // Passes the lead on however this call ends, cancellation included.
        let _handover = Handover {
            batcher: self,
            key,
            lane: &lane,
        };
        let mut items = vec![item];
        let mut members = Vec::new();
        let mut total = size;
        {
            let mut queue = lane.queue.borrow_mut();
            while let Some(w) = queue.front() {
                if items.len() >= limits.max_items.max(1) || total.saturating_add(w.size) > limits.max_bytes {
                    break;
                }
                let Some(w) = queue.pop_front() else { break };
                // A caller whose deadline passed while it queued is not sent.
                if w.tx.is_closed() {
                    continue;
                }
                total += w.size;
                items.push(w.item);
                members.push(w.tx);
            }
        }
        let n = items.len();
        lane.calls.set(lane.calls.get() + 1);
        self.calls.set(self.calls.get() + 1);
        let mut outcomes = send(items).await.into_iter();
        let mine = outcomes
            .next()
            .unwrap_or_else(|| PublishResult::failed("ERR", "the batch call answered no outcome for this message"));
        for tx in members {
            let r = outcomes.next().unwrap_or_else(|| {
                PublishResult::failed("ERR", format!("the batch call answered fewer than {n} outcomes"))
            });
            // A member whose deadline passed no longer listens.
            let _ = tx.send(Signal::Done(r));
        }
        mine
    }

    /// Batch calls made so far on this shard.
    pub fn calls(&self) -> u64 {
        self.calls.get()
    }

    /// Lanes with a call in flight.
    pub fn busy_lanes(&self) -> usize {
        self.lanes.borrow().len()
    }
}

struct Handover<'a, K: Hash + Eq, I> {
    batcher: &'a Batcher<K, I>,
    key: &'a K,
    lane: &'a Rc<Lane<I>>,
}

impl<K: Hash + Eq, I> Drop for Handover<'_, K, I> {
    fn drop(&mut self) {
        loop {
            let next = self.lane.queue.borrow_mut().pop_front();
            match next {
                Some(w) => match w.tx.send(Signal::Lead(w.item)) {
                    Ok(()) => return,
                    // That caller gave up; try the next.
                    Err(_) => continue,
                },
                None => {
                    // Idle: the next publish to this target starts a new lane.
                    let mut lanes = self.batcher.lanes.borrow_mut();
                    if lanes.get(self.key).is_some_and(|l| Rc::ptr_eq(l, self.lane)) {
                        lanes.remove(self.key);
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const LIMITS: Limits = Limits {
        max_items: 4,
        max_bytes: 1000,
    };

    /// Sends `items`, recording the batch, answering `ok <item>` for each.
    async fn send(log: &RefCell<Vec<Vec<u32>>>, items: Vec<u32>) -> Vec<PublishResult> {
        log.borrow_mut().push(items.clone());
        tokio::time::sleep(Duration::from_millis(5)).await;
        items
            .iter()
            .map(|i| PublishResult::success(format!("ok {i}"), serde_json::Value::Null))
            .collect()
    }

    // Every test here runs on paused, auto-advancing time: each timer fires
    // alone, in deadline order. On the real clock a stalled thread let two
    // expire in one tick and run in either order (a 30 ms timeout before a
    // 5 ms call's end), which hung one test and failed another in CI.
    async fn run<T>(f: impl Future<Output = T>) -> T {
        tokio::task::LocalSet::new().run_until(f).await
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn concurrent_publishes_share_calls_within_the_limits() {
        run(async {
            let b: Rc<Batcher<&str, u32>> = Rc::default();
            let log: Rc<RefCell<Vec<Vec<u32>>>> = Rc::default();
            let tasks: Vec<_> = (0..10u32)
                .map(|i| {
                    let (b, log) = (b.clone(), log.clone());
                    tokio::task::spawn_local(async move {
                        let r = b.submit(&"q", i, 10, LIMITS, |items| send(&log, items)).await;
                        (i, r.code)
                    })
                })
                .collect();
            for t in tasks {
                let (i, code) = t.await.unwrap();
                assert_eq!(code, format!("ok {i}"), "each caller gets its own outcome");
            }
            let log = log.borrow();
            // The first goes alone; the rest queued behind it and went in fours.
            assert_eq!(log[0], vec![0]);
            assert_eq!(log[1], vec![1, 2, 3, 4]);
            assert_eq!(log[2], vec![5, 6, 7, 8]);
            assert_eq!(log[3], vec![9]);
            assert_eq!(b.calls(), 4);
            assert_eq!(b.busy_lanes(), 0, "an idle lane is dropped");
        })
        .await
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn bytes_bound_a_call_and_an_oversized_item_goes_alone() {
        run(async {
            let b: Rc<Batcher<&str, u32>> = Rc::default();
            let log: Rc<RefCell<Vec<Vec<u32>>>> = Rc::default();
            let sizes = [1, 400, 400, 400, 5000, 1];
            let tasks: Vec<_> = sizes
                .iter()
                .enumerate()
                .map(|(i, &size)| {
                    let (b, log) = (b.clone(), log.clone());
                    tokio::task::spawn_local(async move {
                        b.submit(&"q", i as u32, size, LIMITS, |items| send(&log, items)).await
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(*log.borrow(), vec![vec![0], vec![1, 2], vec![3], vec![4], vec![5]]);
        })
        .await
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn lanes_are_per_target() {
        run(async {
            let b: Rc<Batcher<&str, u32>> = Rc::default();
            let log: Rc<RefCell<Vec<Vec<u32>>>> = Rc::default();
            let tasks: Vec<_> = (0..4u32)
                .map(|i| {
                    let (b, log) = (b.clone(), log.clone());
                    let key = if i % 2 == 0 { "a" } else { "b" };
                    tokio::task::spawn_local(
                        async move { b.submit(&key, i, 1, LIMITS, |items| send(&log, items)).await },
                    )
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            assert_eq!(*log.borrow(), vec![vec![0], vec![1], vec![2], vec![3]]);
        })
        .await
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_cancelled_leader_passes_the_lead_and_expired_waiters_are_not_sent() {
        run(async {
            let b: Rc<Batcher<&str, u32>> = Rc::default();
            let log: Rc<RefCell<Vec<Vec<u32>>>> = Rc::default();
            let slow = |log: Rc<RefCell<Vec<Vec<u32>>>>| {
                move |items: Vec<u32>| async move {
                    log.borrow_mut().push(items.clone());
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    items
                        .iter()
                        .map(|i| PublishResult::success(format!("ok {i}"), serde_json::Value::Null))
                        .collect::<Vec<_>>()
                }
            };
            // The leader gives up after 10 ms, while its call is in flight.
            let leader = {
                let (b, log) = (b.clone(), log.clone());
                tokio::task::spawn_local(async move {
                    tokio::time::timeout(Duration::from_millis(10), b.submit(&"q", 0, 1, LIMITS, slow(log))).await
                })
            };
            tokio::task::yield_now().await;
            // 1 queues with a deadline that passes before it could be sent; 2 waits.
            let expired = {
                let (b, log) = (b.clone(), log.clone());
                tokio::task::spawn_local(async move {
                    tokio::time::timeout(Duration::from_millis(5), b.submit(&"q", 1, 1, LIMITS, slow(log))).await
                })
            };
            let patient = {
                let (b, log) = (b.clone(), log.clone());
                tokio::task::spawn_local(async move { b.submit(&"q", 2, 1, LIMITS, slow(log)).await })
            };
            assert!(leader.await.unwrap().is_err(), "the leader timed out");
            assert!(expired.await.unwrap().is_err());
            assert_eq!(
                patient.await.unwrap().code,
                "ok 2",
                "the lead passed to the waiting caller"
            );
            assert_eq!(
                *log.borrow(),
                vec![vec![0], vec![2]],
                "the expired caller was never sent"
            );
            assert_eq!(b.busy_lanes(), 0);
        })
        .await
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn members_of_a_cancelled_call_fail_instead_of_hanging() {
        run(async {
            let b: Rc<Batcher<&str, u32>> = Rc::default();
            let first = {
                let b = b.clone();
                tokio::task::spawn_local(async move {
                    b.submit(&"q", 0, 1, LIMITS, |items| async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        vec![PublishResult::success("OK", serde_json::Value::Null); items.len()]
                    })
                    .await
                })
            };
            tokio::task::yield_now().await;
            // 1 and 2 queue behind the first call; 1 leads the second call and
            // is cancelled while it is in flight, so 2 (its member) fails.
            let never = |items: Vec<u32>| async move {
                let _ = items;
                std::future::pending::<Vec<PublishResult>>().await
            };
            let leader2 = {
                let b = b.clone();
                tokio::task::spawn_local(async move {
                    tokio::time::timeout(Duration::from_millis(30), b.submit(&"q", 1, 1, LIMITS, never)).await
                })
            };
            let member = {
                let b = b.clone();
                tokio::task::spawn_local(async move { b.submit(&"q", 2, 1, LIMITS, never).await })
            };
            assert_eq!(first.await.unwrap().code, "OK");
            assert!(leader2.await.unwrap().is_err());
            let r = member.await.unwrap();
            assert_eq!(r.code, "timeout");
            assert!(r.retryable);
        })
        .await
    }
}
