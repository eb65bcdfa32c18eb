//! Ships log records (events and attempts) from the embedded store to an
//! external log store (PostgreSQL) in batches.
//!
//! The embedded store's index is the outbox: the index follower writes every
//! accepted event and attempt there from the shards' journals, and a cursor
//! in the same database says how far shipping got. If the log store is down, records simply wait on
//! disk and shipping resumes from the cursor when it returns; rewrites after a
//! crash are harmless because the log store's writes are idempotent.
//!
//! A record the log store refuses (PostgreSQL will not store a NUL in a
//! topic, say) would otherwise stop shipping for good, since the batch is
//! retried forever. So a refused batch is split in halves until the refused
//! records are alone; each is moved to the store's dead letters with the
//! error, counted, and logged, and the rest ship.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use crate::model::{Attempt, Event};
use crate::store::embedded::EmbeddedStore;
use crate::store::{DeadLetter, LogWriter, StoreError, StoreResult};

/// What the pipeline did, for `/healthz`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Records written to the log store.
    pub shipped: AtomicU64,
    /// Records the log store refused, kept in its dead letters.
    pub quarantined: AtomicU64,
    /// The last write failed for a reason other than the records (the
    /// store is unreachable, say): records wait on disk.
    pub failing: std::sync::atomic::AtomicBool,
    /// Why the last write failed, while `failing`.
    pub last_error: parking_lot::Mutex<String>,
    /// Records in the embedded store not shipped yet (after the last batch).
    pub lag: AtomicU64,
}

enum Record {
    Event(Arc<Event>),
    Attempt(Box<Attempt>),
}

fn split(records: &[Record]) -> (Vec<Arc<Event>>, Vec<Attempt>) {
    let (mut events, mut attempts) = (Vec::new(), Vec::new());
    for r in records {
        match r {
            Record::Event(e) => events.push(e.clone()),
            Record::Attempt(a) => attempts.push((**a).clone()),
        }
    }
    (events, attempts)
}

/// A batch the store refused as a whole (`first` is why): bisects it,
/// writes what the store takes and dead-letters each refused record. Any
/// other error returns, so the whole batch is written again later (writes
/// are idempotent).
async fn quarantine(
    sink: &dyn LogWriter,
    events: Vec<Arc<Event>>,
    attempts: Vec<Attempt>,
    first: String,
    stats: &Stats,
) -> StoreResult<()> {
    let records: Vec<Record> = events
        .into_iter()
        .map(Record::Event)
        .chain(attempts.into_iter().map(|a| Record::Attempt(Box::new(a))))
        .collect();
    // A stack of ranges still to write, with the refusal that made them.
    let mut todo = vec![(0..records.len(), first)];
    while let Some((range, error)) = todo.pop() {
        if range.len() == 1 {
            let letter = match &records[range.start] {
                Record::Event(e) => DeadLetter::event(e, &error),
                Record::Attempt(a) => DeadLetter::attempt(a, &error),
            };
            tracing::error!(kind = letter.kind, id = %letter.record_id, tenant_id = %letter.tenant_id,
                error = %error, "the log store refused a record; it is kept in log_dead_letters");
            sink.dead_letter(vec![letter]).await?;
            stats.quarantined.fetch_add(1, Relaxed);
            continue;
        }
        let mid = range.start + range.len() / 2;
        for half in [range.start..mid, mid..range.end] {
            let (e, a) = split(&records[half.clone()]);
            match sink.write_logs(e, a).await {
                Ok(()) => {
                    stats.shipped.fetch_add(half.len() as u64, Relaxed);
                }
                Err(StoreError::Refused(why)) => todo.push((half, why)),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Pause when there is nothing to ship.
const IDLE: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// `idempotency_ttl_ms`: shipped events younger than this stay locally, since
/// duplicate publishes are detected against them.
pub fn spawn(
    source: Arc<EmbeddedStore>,
    sink: Arc<dyn LogWriter>,
    batch: usize,
    idempotency_ttl_ms: i64,
    stats: Arc<Stats>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Writing to PostgreSQL and reading the embedded store fail for
        // different reasons: each backs off on its own.
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
        let mut reading = crate::backoff::Backoff::new(Duration::from_millis(100), MAX_BACKOFF);
        let (mut ev, mut at) = loop {
            match source.log_cursor().await {
                Ok(c) => break c,
                Err(e) => {
                    tracing::error!(error = %e, "log pipeline cannot read its cursor");
                    reading.wait().await;
                }
            }
        };
        reading.reset();
        // The batch after the one being written, read while PostgreSQL
        // writes: one write in flight at a time, so records still land in
        // order (a rewritten attempt never goes before its first write).
        let mut ahead: Option<crate::store::embedded::LogBatch> = None;
        loop {
            let b = match ahead.take() {
                Some(b) => b,
                None => match source.logs_after(ev, at, batch).await {
                    Ok(b) => {
                        reading.reset();
                        b
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "log pipeline cannot read the embedded store");
                        reading.wait().await;
                        continue;
                    }
                },
            };
            if b.events.is_empty() && b.attempts.is_empty() {
                stats.lag.store(0, Relaxed);
                tokio::time::sleep(IDLE).await;
                continue;
            }
            let mut next_ev = b.events.last().map(|(s, _)| *s).unwrap_or(ev);
            let mut next_at = b.attempts.last().map(|(s, _)| *s).unwrap_or(at);
            let events: Vec<_> = b.events.into_iter().map(|(_, e)| Arc::new(e)).collect();
            let attempts: Vec<_> = b.attempts.into_iter().map(|(_, a)| a).collect();
            let n = events.len() + attempts.len();
            let (written, next) = tokio::join!(
                sink.write_logs(events, attempts),
                source.logs_after(next_ev, next_at, batch)
            );
            let mut next = next.ok();
            let shipped = match written {
                Ok(()) => {
                    stats.shipped.fetch_add(n as u64, Relaxed);
                    Ok(())
                }
                // The transaction wrote nothing: read the same records again
                // (the cursor has not moved; the batch is kept only on this
                // rare path) and bisect them.
                Err(StoreError::Refused(why)) => {
                    next = None;
                    match source.logs_after(ev, at, batch).await {
                        Ok(again) => {
                            next_ev = again.events.last().map(|(s, _)| *s).unwrap_or(ev);
                            next_at = again.attempts.last().map(|(s, _)| *s).unwrap_or(at);
                            let events = again.events.into_iter().map(|(_, e)| Arc::new(e)).collect();
                            let attempts = again.attempts.into_iter().map(|(_, a)| a).collect();
                            quarantine(&*sink, events, attempts, why, &stats).await
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match shipped {
                Ok(()) => {
                    stats.failing.store(false, Relaxed);
                    if backoff.backing_off() {
                        tracing::info!("log store reachable again; shipping resumed");
                    }
                    backoff.reset();
                    if let Err(e) = source.set_log_cursor(next_ev, next_at).await {
                        // The batch is shipped again later: writes are idempotent.
                        tracing::warn!(error = %e, "cannot save the log shipping cursor");
                        continue;
                    }
                    ev = next_ev;
                    at = next_at;
                    ahead = next.take();
                    if let Ok((head_ev, head_at)) = source.log_heads().await {
                        let behind = (head_ev - ev).max(0) + (head_at - at).max(0);
                        stats.lag.store(behind as u64, Relaxed);
                    }
                    // Shipped rows have their home elsewhere now; keep the disk bounded.
                    let keep_after = crate::timefmt::now_ms() - idempotency_ttl_ms;
                    if let Err(e) = source.prune_shipped(ev, at, keep_after).await {
                        tracing::warn!(error = %e, "cannot prune shipped log rows");
                    }
                    tracing::trace!(records = n, "log records shipped");
                }
                Err(e) => {
                    *stats.last_error.lock() = e.to_string();
                    stats.failing.store(true, Relaxed);
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, records = n, retry_in_ms = wait.as_millis() as u64,
                        "cannot write to the PostgreSQL log store; records wait in the embedded store");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Cipher;
    use crate::model::{Attempt, AttemptStatus, StringMap};
    use crate::store::{ListQuery, LogStore};

    fn event(id: &str) -> Arc<crate::model::Event> {
        Arc::new(crate::model::Event {
            id: id.into(),
            tenant_id: "t".into(),
            destination_id: None,
            topic: "x".into(),
            eligible_for_retry: true,
            time: 1_704_067_200_000,
            time_ns: 0,
            metadata: StringMap::new(),
            data: Arc::from("{}"),
            matched_destination_ids: vec!["d".into()],
        })
    }

    fn done(ev: &str, n: u32) -> Attempt {
        {
            Attempt {
                id: format!("a-{ev}-{n}"),
                tenant_id: "t".into(),
                event_id: ev.into(),
                destination_id: "d".into(),
                destination_type: "webhook".into(),
                attempt_number: n,
                manual: false,
                status: AttemptStatus::Success,
                time: 1_704_067_200_500,
                code: Some("200".into()),
                response_data: None,
                topic: "x".into(),
            }
        }
    }

    /// Ships from one real embedded store, an outbox as on a node whose log
    /// lives in PostgreSQL, to another (both real SQLite stores), then
    /// prunes what the source no longer needs.
    #[tokio::test]
    async fn ships_everything_then_prunes_what_is_not_needed() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = Arc::new(
            EmbeddedStore::open_as(
                a.path(),
                Cipher::new("k"),
                false,
                crate::store::embedded::LogRole::Outbox,
            )
            .unwrap(),
        );
        let sink = Arc::new(EmbeddedStore::open(b.path(), Cipher::new("k"), false).unwrap());
        // Three indexed events, two of them attempted (pending deliveries
        // live in the shards' journals, not here).
        source
            .write_logs(
                vec![event("e1"), event("e2"), event("e3")],
                vec![done("e1", 1), done("e2", 1)],
            )
            .await
            .unwrap();
        let h = spawn(source.clone(), sink.clone(), 2, 0, Arc::default());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let shipped = sink.list_events(ListQuery::default()).await.unwrap().len();
            let (ev, at) = source.log_counts().await.unwrap();
            if (shipped, ev, at) == (3, 0, 0) || std::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        h.abort();
        assert_eq!(
            sink.list_events(ListQuery::default()).await.unwrap().len(),
            3,
            "all shipped"
        );
        assert_eq!(sink.list_attempts(ListQuery::default()).await.unwrap().len(), 2);
        assert_eq!(source.log_counts().await.unwrap(), (0, 0), "shipped rows are pruned");
    }
}
