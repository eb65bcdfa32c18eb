//! Turns many concurrent calls to a remote back end into a few batched ones.
//!
//! In queue mode every publish and every delivery makes small round trips
//! to Redis and the broker. Made one by one, the broker spends most of its
//! CPU on per-message work (a confirm, an ack, a queue entry) and Redis on
//! per-command dispatch. A [`Coalescer`] queues the calls made meanwhile and
//! hands them to one batch function: while `in_flight` batches are out, new
//! calls wait in the queue, so the busier the node, the larger the batches
//! (the same idea as the journal's group commit). An idle node sends a batch
//! of one at once: no timer, no added wait.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::sync::{oneshot, Semaphore};

/// Batches calls of `I` answered with `O`; see the module docs.
pub struct Coalescer<I, O> {
    tx: flume::Sender<(I, oneshot::Sender<O>)>,
    stats: Arc<BatchStats>,
}

/// What a coalescer sent (`GET /metrics`): calls per batch is their ratio.
#[derive(Debug, Default)]
pub struct BatchStats {
    pub batches: AtomicU64,
    pub calls: AtomicU64,
}

impl<I, O> std::fmt::Debug for Coalescer<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer").field("queued", &self.tx.len()).finish()
    }
}

/// The batch loop has stopped (its runtime shut down): nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the batching task has stopped")]
pub struct Stopped;

impl<I: Send + 'static, O: Send + 'static> Coalescer<I, O> {
    /// Starts the batch loop on the current tokio runtime. `run` gets up to
    /// `max_batch` calls in arrival order and answers each, in the same
    /// order; at most `in_flight` batches run at once. The loop ends when
    /// the coalescer is dropped, after the batches already taken.
    pub fn spawn<F, Fut>(max_batch: usize, in_flight: usize, run: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (tx, rx) = flume::unbounded::<(I, oneshot::Sender<O>)>();
        let max_batch = max_batch.max(1);
        let stats = Arc::new(BatchStats::default());
        let counts = stats.clone();
        tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(in_flight.max(1)));
            while let Ok(first) = rx.recv_async().await {
                // Taking the slot before draining is what grows batches: the
                // calls that arrive while every slot is busy join this one.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    break;
                };
                let mut batch = Vec::with_capacity(max_batch.min(rx.len() + 1));
                batch.push(first);
                batch.extend(rx.try_iter().take(max_batch - 1));
                counts.batches.fetch_add(1, Relaxed);
                counts.calls.fetch_add(batch.len() as u64, Relaxed);
                let (items, replies): (Vec<I>, Vec<_>) = batch.into_iter().unzip();
                let work = run(items);
                tokio::spawn(async move {
                    let answers = work.await;
                    debug_assert_eq!(answers.len(), replies.len(), "a batch must answer every call");
                    // A caller that went away drops its answer; the batch
                    // itself was sent regardless.
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                    drop(slot);
                });
            }
        });
        Self { tx, stats }
    }

    pub fn stats(&self) -> Arc<BatchStats> {
        self.stats.clone()
    }

    /// Queues one call and waits for its answer.
    pub async fn call(&self, item: I) -> Result<O, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn answers_each_call_with_its_own_result() {
        let c = Coalescer::spawn(
            8,
            2,
            |xs: Vec<u32>| async move { xs.into_iter().map(|x| x * 10).collect() },
        );
        let answers = futures_util::future::join_all((0..100u32).map(|i| c.call(i))).await;
        for (i, a) in answers.into_iter().enumerate() {
            assert_eq!(a, Ok(i as u32 * 10));
        }
    }

    /// Calls made while the only slot is busy go out together, up to the
    /// batch limit; a lone call goes alone and at once.
    #[tokio::test]
    async fn calls_made_while_a_batch_is_out_share_the_next_one() {
        let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = sizes.clone();
        let c = Arc::new(Coalescer::spawn(16, 1, move |xs: Vec<u32>| {
            s.lock().unwrap().push(xs.len());
            async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                xs
            }
        }));
        assert_eq!(c.call(1).await, Ok(1));
        assert_eq!(*sizes.lock().unwrap(), vec![1]);
        let calls: Vec<_> = (0..40u32)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.call(i).await })
            })
            .collect();
        for (i, h) in calls.into_iter().enumerate() {
            assert_eq!(h.await.unwrap(), Ok(i as u32));
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 41, "every call was sent once: {sizes:?}");
        assert_eq!(c.stats().calls.load(Relaxed), 41);
        assert_eq!(c.stats().batches.load(Relaxed), sizes.len() as u64);
        assert!(
            sizes.iter().all(|&n| n <= 16),
            "batches stay within the limit: {sizes:?}"
        );
        assert!(
            sizes.len() <= 6,
            "40 calls made together went out in a few batches: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_dropped_caller_does_not_stop_the_batch() {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let c = Coalescer::spawn(4, 1, move |xs: Vec<u32>| {
            let r = r.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                r.fetch_add(xs.len(), Ordering::SeqCst);
                xs
            }
        });
        let call = c.call(7);
        let _ = tokio::time::timeout(Duration::from_millis(1), call).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        assert_eq!(c.call(8).await, Ok(8));
    }
}
