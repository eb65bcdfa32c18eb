//! Queue mode: deliveries that would wait behind their own destination go
//! back to the shared schedule instead of holding their broker message.
//!
//! A delivery node acks a task's message only once the task's outcome is
//! committed, and holds at most `DELIVERY_MAX_CONCURRENCY` unacked messages.
//! Tasks queued on a shard behind a destination that does not keep up (one
//! that never answers, or one slower than its traffic) would hold their
//! messages until the destination reaches them, and with enough of them the
//! node stops taking tasks for every tenant. So a task that would wait longer
//! than [`DEFER_AFTER`] behind its destination's in-flight limit is written to
//! the shared retry schedule in Redis as it is (same attempt number, no
//! attempt recorded) and its message is acked; it comes back through the
//! delivery queue when due, to this node or another. Due times are spaced by
//! the destination's pace (attempt time over its limit), between
//! [`DEFER_MIN`] and [`DEFER_MAX`] ahead, so they come back about when the
//! destination can take them.
//!
//! Two places decide. A sweep every [`SWEEP`] looks at destinations whose
//! oldest queued delivery has waited [`DEFER_AFTER`] while the destination
//! was at its limit: it keeps the deliveries the destination will start
//! within that time, defers the others that hold a message, and marks the
//! destination as deferring. While marked and at its limit, an arriving task
//! beyond what the destination starts within [`DEFER_AFTER`] is deferred
//! before it is journaled. Work that holds no message (recovered from the
//! journal, a retry kept here while Redis was down) stays queued. When
//! Redis refuses a deferral, deferring stops for [`PAUSE`]: an arriving task
//! is then accepted as usual, and a queued one (already settled here) has
//! its message sent back to the broker, which hands the task out again.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::{AcceptMsg, AfterCommit, DestQueue, Handled, Shard, Work};
use crate::flow::Flow;
use crate::model::NextStep;
use crate::queue::Task;
use crate::store::redis::RedisEntityStore;
use crate::timefmt::now_ms;

/// How long a delivery may wait behind its own destination while holding a
/// broker message.
const DEFER_AFTER: Duration = Duration::from_secs(1);
const SWEEP: Duration = Duration::from_millis(250);
/// Bounds on how far ahead a deferred task is due.
const DEFER_MIN: Duration = Duration::from_secs(1);
const DEFER_MAX: Duration = Duration::from_secs(60);
/// Deferring stays off this long after Redis refused a deferral.
const PAUSE: Duration = Duration::from_secs(5);

/// Looks for deliveries to defer every [`SWEEP`] until the shard drains.
pub(super) async fn sweep_loop(shard: Rc<Shard>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shard.draining.get() {
            return;
        }
        shard.sweep();
    }
}

/// The due time of the next task deferred from `q`: [`DEFER_MIN`] ahead at
/// least, then one `pace` after the one before, [`DEFER_MAX`] ahead at most.
fn next_due(q: &mut DestQueue, pace: Duration, now_ms: i64) -> i64 {
    let min = now_ms + DEFER_MIN.as_millis() as i64;
    let max = now_ms + DEFER_MAX.as_millis() as i64;
    let due = q.defer_horizon_ms.clamp(min, max);
    q.defer_horizon_ms = (due + pace.as_millis() as i64).min(max);
    due
}

impl Shard {
    /// Deferring is possible (queue mode with Redis) and not paused.
    fn may_defer(&self) -> bool {
        self.deps.shared_retries.is_some()
            && self
                .defer_paused_until
                .get()
                .is_none_or(|until| std::time::Instant::now() >= until)
    }

    fn pause_deferring(&self, error: &dyn std::fmt::Display) {
        if self.may_defer() {
            tracing::warn!(shard = self.id, error = %error,
                "cannot defer a delivery to the shared schedule; deliveries wait on this node for {PAUSE:?}");
        }
        self.defer_paused_until.set(Some(std::time::Instant::now() + PAUSE));
    }

    /// A destination's limit without creating an entry for it.
    fn flow_of(&self, key: &str) -> Flow {
        self.flows
            .borrow()
            .get(key)
            .copied()
            .unwrap_or_else(|| Flow::new(self.per_destination))
    }

    /// When `q`'s destination is at its own in-flight limit (or its slow
    /// share is used up): how many queued deliveries it starts within
    /// [`DEFER_AFTER`], and its pace. `None` when a delivery for it could
    /// start now or waits only for the shard's slots (load, not this
    /// destination). Before the first outcome, how long the oldest queued
    /// delivery has waited stands in for the attempt time.
    fn backed_up(&self, flow: &Flow, q: &DestQueue, now: u32) -> Option<(usize, Duration)> {
        let limited = q.inflight >= flow.limit || (flow.slow && self.slow_inflight.get() >= self.slow_cap);
        if !limited {
            return None;
        }
        let stand_in = match (flow.latency_ms, q.waiting.front()) {
            (0, Some(head)) => Duration::from_millis(u64::from(now.wrapping_sub(head.queued_at))),
            _ => Duration::ZERO,
        };
        let pace = flow.pace(stand_in);
        let keep = (DEFER_AFTER.as_micros() / pace.as_micros().max(1)) as usize;
        Some((keep, pace))
    }

    /// Defers an arriving queue-mode task instead of journaling it when its
    /// destination is marked deferring and still backed up with at least
    /// what it starts within [`DEFER_AFTER`] queued. Returns the message
    /// when it is to be accepted as usual.
    pub(super) fn defer_arrival(self: &Rc<Self>, m: AcceptMsg) -> Option<AcceptMsg> {
        if m.done.is_none() || m.targets.len() != 1 || !self.may_defer() {
            return Some(m);
        }
        let Some(redis) = self.deps.shared_retries.clone() else {
            return Some(m);
        };
        let due_ms = {
            let mut queues = self.queues.borrow_mut();
            let key = m.targets[0].destination_id.as_str();
            let q = match queues.get_mut(key) {
                Some(q) if q.deferring => q,
                _ => return Some(m),
            };
            match self.backed_up(&self.flow_of(key), q, self.clock_ms()) {
                Some((keep, pace)) if q.waiting.len() >= keep => next_due(q, pace, now_ms()),
                Some(_) => return Some(m),
                None => {
                    q.deferring = false;
                    return Some(m);
                }
            }
        };
        let target = &m.targets[0];
        let task = Task {
            event: m.event.clone(),
            destination_id: target.destination_id.clone(),
            attempt: target.attempt,
            manual: target.manual,
        };
        self.write_deferral(redis, task, due_ms, move |me, written| {
            if !written {
                me.accept(m);
                return;
            }
            if let Some(r) = m.reply {
                let _ = r.send(Ok(()));
            }
            if let Some(d) = m.done {
                let _ = d.send(Handled::Deferred);
            }
        });
        None
    }

    /// Defers the queued deliveries of backed-up destinations that their
    /// destination will not start within [`DEFER_AFTER`] and that hold a
    /// broker message.
    fn sweep(self: &Rc<Self>) {
        if !self.may_defer() {
            return;
        }
        let now = self.clock_ms();
        let wall = now_ms();
        let mut out: Vec<(Work, i64)> = Vec::new();
        {
            let mut queues = self.queues.borrow_mut();
            let mut idle = Vec::new();
            for (key, q) in queues.iter_mut() {
                let Some(head) = q.waiting.front() else { continue };
                if Duration::from_millis(u64::from(now.wrapping_sub(head.queued_at))) < DEFER_AFTER {
                    continue;
                }
                let Some((keep, pace)) = self.backed_up(&self.flow_of(key), q, now) else {
                    continue;
                };
                q.deferring = true;
                if q.waiting.len() <= keep {
                    continue;
                }
                let beyond = q.waiting.split_off(keep);
                for w in beyond {
                    if w.done.is_some() {
                        let due = next_due(q, pace, wall);
                        out.push((w, due));
                    } else {
                        q.waiting.push_back(w);
                    }
                }
                if q.waiting.is_empty() && q.inflight == 0 {
                    idle.push(key.clone());
                }
            }
            for key in idle {
                queues.remove(&key);
            }
        }
        for (w, due) in out {
            if w.event.is_some() {
                self.queued_in_memory.set(self.queued_in_memory.get() - 1);
                self.queued_bytes.set(self.queued_bytes.get() - w.charged);
            }
            self.defer_queued(w, due);
        }
    }

    /// Settles a queued (journaled) delivery here without an attempt and,
    /// once that is durable, writes it to the shared schedule, then lets its
    /// message be acked. In this order a crash in between leaves one copy
    /// (the journal no longer holds it; the unacked message comes back from
    /// the broker), where the other order left two, one of them attempted
    /// again under an old attempt number. If Redis refuses, the message goes
    /// back to the broker instead of being acked.
    fn defer_queued(self: &Rc<Self>, mut w: Work, due_ms: i64) {
        let event = match w.event.take() {
            Some(e) => e,
            None => match self.load_event(w.loc) {
                Ok(e) => e,
                // Queued again: its attempt reads it back (and retries the read).
                Err(_) => {
                    self.enqueue(w);
                    return;
                }
            },
        };
        let task = Task {
            event,
            destination_id: w.destination_id.to_string(),
            attempt: w.attempt,
            manual: w.manual,
        };
        self.deferrals.set(self.deferrals.get() + 1);
        self.append_settle(w.loc, w.target, w.attempt, NextStep::Done, None);
        self.after_commit.borrow_mut().push(AfterCommit::Deferred {
            task,
            due_ms,
            done: w.done.take(),
        });
        self.schedule_flush();
    }

    /// A deferred delivery's settle is committed (`committed`): now to the
    /// shared schedule, and its message is acked once Redis has it.
    pub(super) fn deferral_settled(
        self: &Rc<Self>,
        task: Task,
        due_ms: i64,
        done: Option<tokio::sync::oneshot::Sender<Handled>>,
        committed: bool,
    ) {
        self.deferrals.set(self.deferrals.get() - 1);
        let Some(redis) = self.deps.shared_retries.clone() else {
            return;
        };
        if !committed {
            // Still pending in the journal; `done` dropped: the message
            // goes back to the broker.
            return;
        }
        self.write_deferral(redis, task, due_ms, move |_, written| {
            // Not written: `done` is dropped and the message goes back to
            // the broker, which hands the task out again.
            if let (true, Some(d)) = (written, done) {
                let _ = d.send(Handled::Deferred);
            }
        });
    }

    /// Writes `task` to the shared schedule in the background (a deferral
    /// in progress, which drain waits for), then runs `then` on the shard
    /// with whether Redis took it; a refusal pauses deferring first.
    fn write_deferral(
        self: &Rc<Self>,
        redis: Arc<RedisEntityStore>,
        task: Task,
        due_ms: i64,
        then: impl FnOnce(&Rc<Self>, bool) + 'static,
    ) {
        self.deferrals.set(self.deferrals.get() + 1);
        let me = self.clone();
        tokio::task::spawn_local(async move {
            let written = redis.schedule_deferred(&task, due_ms).await;
            me.deferrals.set(me.deferrals.get() - 1);
            match &written {
                Ok(()) => {
                    me.stats.deferred.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => me.pause_deferring(e),
            }
            then(&me, written.is_ok());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferred_tasks_are_spaced_by_the_pace_within_bounds() {
        let mut q = DestQueue::default();
        let pace = Duration::from_millis(400);
        let now = 1_000_000;
        let dues: Vec<i64> = (0..4).map(|_| next_due(&mut q, pace, now) - now).collect();
        assert_eq!(dues, [1000, 1400, 1800, 2200]);
        // Later, the horizon is behind the minimum: it starts again from it.
        assert_eq!(next_due(&mut q, pace, now + 10_000) - now, 11_000);
        // A destination at one attempt per 25 s: a minute ahead at most.
        let mut q = DestQueue::default();
        let dues: Vec<i64> = (0..5)
            .map(|_| next_due(&mut q, Duration::from_secs(25), now) - now)
            .collect();
        assert_eq!(dues, [1000, 26_000, 51_000, 60_000, 60_000]);
    }
}
