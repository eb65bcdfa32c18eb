//! Start-up recovery of the shards' journals.
//!
//! Every shard directory under the journal dir (`OUTRIDER_JOURNAL_DIR`) is replayed in parallel
//! (pending = accepted − settled). A delivery stays with the shard that wrote
//! it when that shard still owns its destination; when `DELIVERY_SHARDS`
//! changed since, it is re-accepted by its new owner and then settled in the
//! old journal, so nothing is lost and the old directory can go.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::{Engine, EngineError, StartupError};
use crate::config::Config;
use crate::idempotency::Idempotency;
use crate::journal::index::Followed;
use crate::journal::replay::{self, Pending, Recovered};
use crate::journal::{self, AcceptTarget, Journal, Loc, Progress, Reader, Record};
use crate::shard::{shard_for, ShardInit, ShardMsg};
use crate::store::embedded::EmbeddedStore;
use crate::store::redis::RedisEntityStore;
use crate::timefmt::now_ms;

/// Moves awaiting their commit at once when `DELIVERY_SHARDS` changed.
const MOVES_IN_FLIGHT: usize = 1024;

/// Most queue tasks remembered per shard at start (see [`Plan::take_task_keys`]).
const MAX_TASK_KEYS: usize = 65_536;

/// Deliveries found in a journal whose destination another shard owns now.
pub struct Plan {
    moves: Vec<Move>,
    task_keys: Vec<(String, String, u32)>,
}

impl Plan {
    /// (event id, destination id, attempt) of every pending delivery due
    /// at once (a task taken from a delivery queue, in queue mode), read
    /// back from the journals: the broker still holds those tasks unacked
    /// and hands them out again, and this node delivers them from its
    /// journal, so the copies are acked on arrival (`Engine::receive`).
    pub fn take_task_keys(&mut self) -> Vec<(String, String, u32)> {
        std::mem::take(&mut self.task_keys)
    }
}

struct Move {
    dir: PathBuf,
    shard: usize,
    next_segment: u32,
    pending: Vec<Pending>,
}

pub fn journal_root(config: &Config) -> PathBuf {
    config.journal_dir.clone()
}

/// The file in the data dir that names the journal directory last used with
/// it: the index's positions in the journals are stored beside it.
const JOURNAL_LOCATION: &str = "JOURNAL_LOCATION";

/// Refuses to start when the journal directory changed while the one used
/// before still holds segments: the deliveries pending there would never be
/// replayed. A journal moved whole (the old directory empty or gone) is fine.
pub fn check_journal_location(config: &Config) -> Result<(), StartupError> {
    let configured =
        std::path::absolute(&config.journal_dir).map_err(StartupError::file("resolve", &config.journal_dir))?;
    let marker = config.data_dir.join(JOURNAL_LOCATION);
    let previous = match std::fs::read_to_string(&marker) {
        Ok(text) => PathBuf::from(text.trim_end_matches('\n')),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::path::absolute(config.data_dir.join("journal")).unwrap_or_else(|_| config.data_dir.join("journal"))
        }
        Err(e) => return Err(StartupError::file("read", marker)(e)),
    };
    if previous != configured && holds_segments(&previous) {
        return Err(StartupError::JournalMoved {
            previous,
            configured,
            marker,
        });
    }
    if previous != configured || !marker.exists() {
        let tmp = config.data_dir.join(format!("{JOURNAL_LOCATION}.tmp"));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&config.data_dir)?;
            let mut f = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, format!("{}\n", configured.display()).as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &marker)?;
            std::fs::File::open(&config.data_dir)?.sync_all()
        };
        write().map_err(StartupError::file("write", &marker))?;
    }
    Ok(())
}

/// Whether any shard directory under `root` has a segment file.
fn holds_segments(root: &Path) -> bool {
    shard_dirs(root).is_ok_and(|shards| {
        shards
            .iter()
            .any(|s| journal::list_segments(&journal::shard_dir(root, *s)).is_ok_and(|v| !v.is_empty()))
    })
}

fn shard_dirs(root: &Path) -> std::io::Result<Vec<usize>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(root)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            if let Ok(n) = e.file_name().to_string_lossy().parse::<usize>() {
                v.push(n);
            }
        }
    }
    v.sort_unstable();
    Ok(v)
}

type Prepared = (Plan, Vec<ShardInit>, Vec<Followed>, flume::Receiver<()>);

/// Replays the journals and opens one for each shard.
pub async fn prepare(
    config: &Config,
    store: &Arc<EmbeddedStore>,
    idempotency: &Arc<Idempotency>,
    queue_fed: bool,
    redis: Option<&RedisEntityStore>,
) -> Result<Prepared, EngineError> {
    let root = journal_root(config);
    std::fs::create_dir_all(&root).map_err(StartupError::file("create", &root))?;
    let n = config.delivery_shards;
    let mut indexes = shard_dirs(&root).map_err(StartupError::file("list", &root))?;
    indexes.extend(0..n);
    indexes.sort_unstable();
    indexes.dedup();
    let ttl = config.publish_idempotency_key_ttl.as_millis() as i64;
    let since = now_ms() - ttl;
    let started = std::time::Instant::now();
    let dirs: Vec<(usize, PathBuf)> = indexes.iter().map(|i| (*i, journal::shard_dir(&root, *i))).collect();
    let idem = idempotency.clone();
    let replayed = tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            let handles: Vec<_> = dirs
                .iter()
                .map(|(i, d)| {
                    let idem = &idem;
                    let h = s.spawn(move || replay::replay_with(d, since, &mut |id, at| idem.remember(id, at)));
                    (*i, d.clone(), h)
                })
                .collect();
            handles
                .into_iter()
                .map(|(i, d, h)| {
                    (
                        i,
                        d,
                        h.join().map_err(|_| StartupError::Replay("a replay thread panicked")),
                    )
                })
                .collect::<Vec<_>>()
        })
    })
    .await
    .map_err(|_| StartupError::Replay("the replay task did not finish"))?;
    let limit = crate::idempotency::MAX_IDS;
    let recent = store.recent_event_ids(since, limit).await?;
    if recent.len() == limit {
        // More ids in the window than memory holds: older ones are looked up.
        let oldest = recent.iter().map(|(_, at)| *at).min().unwrap_or(since);
        idempotency.mark_evicted(oldest);
    }
    for (id, at) in recent {
        idempotency.remember(&id, at);
    }
    let cursors = store.journal_cursors().await?;
    let (wake_tx, wake_rx) = flume::bounded(1);
    let mut inits = Vec::with_capacity(n);
    let mut followed = Vec::new();
    let mut moves = Vec::new();
    let mut task_keys = Vec::new();
    let mut total = 0usize;
    for (i, dir, rec) in replayed {
        let mut rec: Recovered = rec
            .map_err(EngineError::Startup)?
            .map_err(StartupError::journal("journal recovery"))?;
        for (seg, off, why) in &rec.damaged {
            tracing::warn!(shard = i, segment = seg, offset = off, reason = %why,
                "journal tail unreadable (a write cut short by a crash, or damage); records after it are ignored");
        }
        // (index in `rec.pending`, event id) of the tasks taken from the
        // delivery queue.
        let mut queued = Vec::new();
        if queue_fed {
            // Few: a queue-fed node acks each task once its outcome is
            // committed, so only tasks in flight at the stop are pending.
            // (A node switched from embedded mode may hold a large backlog
            // that no broker has copies of: only the first keys are read.)
            let mut reader = Reader::default();
            for (k, p) in rec
                .pending
                .iter()
                .enumerate()
                .filter(|(_, p)| p.due_ms == 0)
                .take(MAX_TASK_KEYS)
            {
                if let Ok(Record::Accept { event, .. }) = reader.read(&dir, p.loc) {
                    task_keys.push((event.id.clone(), p.destination_id.to_string(), p.attempt));
                    queued.push((k, event.id.clone()));
                }
            }
        }
        let mut journal = if i < n {
            let progress = Arc::new(Progress::default());
            let journal = Journal::open(
                &dir,
                rec.next_segment,
                config.embedded_synchronous_full,
                progress.clone(),
                Some(wake_tx.clone()),
            )
            .map_err(StartupError::journal("cannot open the journal"))?
            .with_segment_bytes(config.journal_segment_bytes);
            Some((journal, progress))
        } else {
            None
        };
        if let (Some(redis), Some((journal, _))) = (redis, journal.as_mut()) {
            if !queued.is_empty() {
                settle_handed_over(redis, journal, &mut rec, &queued, i).await?;
            }
        }
        total += rec.pending.len();
        // Split in place: a 1M backlog must not be held twice at once.
        let mut own = std::mem::take(&mut rec.pending);
        let had_pending = !own.is_empty();
        let mut foreign = Vec::new();
        own.retain(|p| {
            let mine = i < n && shard_for(&p.destination_id, n) == i;
            if !mine {
                foreign.push(p.clone());
            }
            mine
        });
        if !foreign.is_empty() {
            moves.push(Move {
                dir: dir.clone(),
                shard: i,
                next_segment: rec.next_segment,
                pending: foreign,
            });
        }
        if let Some((journal, progress)) = journal {
            followed.push(Followed {
                shard: i,
                dir: dir.clone(),
                progress,
            });
            inits.push(ShardInit {
                journal,
                recovered: Recovered { pending: own, ..rec },
            });
        } else {
            // A shard that no longer exists: its records are indexed, its
            // deliveries moved; once both are done the directory goes.
            // Everything after the follower's position is empty (a segment
            // with only its header has nothing to index).
            let at =
                cursors.get(&i).copied().map(Loc).unwrap_or_else(|| {
                    Loc::new(rec.segments.first().copied().unwrap_or(0), journal::MAGIC.len() as u64)
                });
            let indexed_all = rec.segments.iter().all(|&seg| {
                let len = rec.ends.get(&seg).copied().unwrap_or(0);
                match seg.cmp(&at.segment()) {
                    std::cmp::Ordering::Less => true,
                    std::cmp::Ordering::Equal => len <= at.offset(),
                    std::cmp::Ordering::Greater => len <= journal::MAGIC.len() as u64,
                }
            });
            if !had_pending && indexed_all {
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot remove an old shard's journal");
                }
                continue;
            }
            let progress = Arc::new(Progress::default());
            // Closed for good: the follower reads every segment to its end.
            progress
                .durable
                .store(Loc::new(u32::MAX, 0).0, std::sync::atomic::Ordering::Release);
            followed.push(Followed {
                shard: i,
                dir: dir.clone(),
                progress,
            });
        }
    }
    tracing::info!(
        shards = n,
        pending = total,
        moved = moves.iter().map(|m| m.pending.len()).sum::<usize>(),
        ids = idempotency.len(),
        ms = started.elapsed().as_millis() as u64,
        "journals recovered"
    );
    Ok((Plan { moves, task_keys }, inits, followed, wake_rx))
}

/// How long recovery waits for Redis to say which queue tasks were handed over.
const HANDED_OVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Queue mode: settles the pending tasks (`queued`: index in
/// `rec.pending`, event id) whose outcome is already in Redis, and takes
/// them out of `rec.pending`, so this node does not attempt them again.
///
/// A failed attempt hands its retry to the shared schedule together with
/// its own done mark, which holds the attempt's settle record; the settle
/// is then committed here. A node killed between the two finds the attempt
/// pending in its journal, while the retry may already have run on another
/// node: attempting it again would run it after its retry, under the older
/// number. Its settle is written from the mark instead (the attempt is
/// logged once, as it happened). A mark without a record (`1`) means a node
/// committed the task's outcome (another node took the broker's copy while
/// this one was down): closed without an attempt. Redis unreachable: the
/// tasks are attempted again, as before (an in-flight repeat).
async fn settle_handed_over(
    redis: &RedisEntityStore,
    journal: &mut Journal,
    rec: &mut Recovered,
    queued: &[(usize, String)],
    shard: usize,
) -> Result<(), EngineError> {
    let keys: Vec<String> = queued
        .iter()
        .map(|(k, event_id)| {
            let p = &rec.pending[*k];
            redis.task_key_of(event_id, &p.destination_id, p.attempt, p.manual)
        })
        .collect();
    let outcomes = match tokio::time::timeout(HANDED_OVER_WAIT, redis.task_outcomes(&keys)).await {
        Ok(Ok(o)) if o.len() == keys.len() => o,
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(shard, error = %e,
                "cannot read queue tasks' done marks at start; pending tasks are attempted again");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!(
                shard,
                "Redis did not answer for queue tasks' done marks at start; pending tasks are attempted again"
            );
            return Ok(());
        }
    };
    let mut closed = Vec::new();
    let (mut from_record, mut done_elsewhere) = (0usize, 0usize);
    for ((k, event_id), outcome) in queued.iter().zip(outcomes) {
        let Some(outcome) = outcome else { continue };
        let p = &rec.pending[*k];
        let attempt = match journal::codec::decode_framed(&outcome) {
            Ok(Record::Settle(s))
                if s.attempt.as_ref().is_some_and(|a| {
                    a.event_id == *event_id && *a.destination_id == *p.destination_id && a.attempt_number == p.attempt
                }) =>
            {
                s.attempt
            }
            _ => None,
        };
        match &attempt {
            Some(_) => from_record += 1,
            None => done_elsewhere += 1,
        }
        journal.append_with(|buf| {
            journal::codec::encode_settle(
                p.loc,
                p.target,
                p.attempt,
                &crate::model::NextStep::Done,
                attempt.as_ref().map(journal::codec::AttemptRef::of),
                buf,
            )
        });
        closed.push(*k);
    }
    if closed.is_empty() {
        return Ok(());
    }
    let c = journal.commit();
    journal.flush();
    c.await
        .map_err(|_| EngineError::Closed)?
        .map_err(StartupError::journal("cannot settle handed-over queue tasks"))?;
    closed.sort_unstable();
    for k in closed.into_iter().rev() {
        let p = rec.pending.remove(k);
        if let Some(c) = rec.live.get_mut(&p.loc.segment()) {
            *c = c.saturating_sub(1);
        }
    }
    tracing::info!(
        shard,
        settled_from_redis = from_record,
        done_elsewhere,
        "queue tasks pending in the journal were already handed over; settled without an attempt"
    );
    Ok(())
}

/// Moves deliveries to their new owners (after the routing table is
/// installed, before any shard resumes), then settles them where they were.
pub async fn finish(engine: &Arc<Engine>, plan: Plan) -> Result<(), EngineError> {
    let n = engine.config.delivery_shards;
    for m in plan.moves {
        tracing::info!(
            from_shard = m.shard,
            deliveries = m.pending.len(),
            "moving deliveries to the shards that own them now"
        );
        let mut reader = Reader::default();
        let mut settled = Vec::with_capacity(m.pending.len());
        let mut unreadable = 0usize;
        // Many moves in flight at once, so their accepts share group commits
        // (one awaited fsync per move made 1M moves take tens of minutes).
        let mut accepts = FuturesUnordered::new();
        for p in &m.pending {
            let event = match reader.read(&m.dir, p.loc) {
                Ok(Record::Accept { event, .. }) => event,
                Ok(_) | Err(_) => {
                    // Left pending where it is (never settled unread): the
                    // next start tries again.
                    unreadable += 1;
                    continue;
                }
            };
            let target = AcceptTarget {
                destination_id: p.destination_id.to_string(),
                attempt: p.attempt,
                manual: p.manual,
                due_ms: p.due_ms,
            };
            let key = (p.loc, p.target, p.attempt);
            accepts.push(async move { engine.accept_on_shards(event, vec![target]).await.map(|()| key) });
            if accepts.len() >= MOVES_IN_FLIGHT {
                if let Some(r) = accepts.next().await {
                    settled.push(r?);
                }
            }
        }
        while let Some(r) = accepts.next().await {
            settled.push(r?);
        }
        if unreadable > 0 {
            tracing::error!(
                from_shard = m.shard,
                deliveries = unreadable,
                "cannot read pending deliveries' events back to move them; they stay pending in the old journal until the next start"
            );
        }
        if m.shard < n {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let msg = ShardMsg::Forget { settled, done: tx };
            engine.shard_handles()[m.shard]
                .tx
                .send_async(msg)
                .await
                .map_err(|_| EngineError::Closed)?;
            rx.await.map_err(|_| EngineError::Closed)?;
        } else {
            let mut j = Journal::open(
                &m.dir,
                m.next_segment,
                engine.config.embedded_synchronous_full,
                Arc::new(Progress::default()),
                None,
            )
            .map_err(StartupError::journal("cannot open an old journal"))?;
            for (loc, target, attempt_number) in settled {
                j.append_closed(loc, target, attempt_number);
            }
            let c = j.commit();
            j.flush();
            c.await
                .map_err(|_| EngineError::Closed)?
                .map_err(StartupError::journal("cannot settle moved deliveries"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::codec::{self, tests::event, AttemptRef, FRAME_HEADER};
    use crate::journal::Settle;
    use crate::model::{Attempt, AttemptStatus, NextStep};
    use crate::queue::Task;
    use crate::store::redis::RetryAfter;

    fn task(event_id: &str, attempt: u32) -> Task {
        Task {
            event: event(event_id),
            destination_id: "d1".into(),
            attempt,
            manual: false,
        }
    }

    /// Every record in one segment file, in order.
    fn records_in(dir: &Path, segment: u32) -> Vec<Record> {
        let b = std::fs::read(journal::segment_path(dir, segment)).unwrap();
        let mut at = journal::MAGIC.len();
        let mut out = Vec::new();
        while let Ok((len, _)) = codec::frame_header(&b[at..]) {
            out.push(codec::decode_framed(&b[at..at + FRAME_HEADER + len]).unwrap());
            at += FRAME_HEADER + len;
        }
        out
    }

    /// A node killed after a failed attempt handed its retry to Redis, but
    /// before the attempt's settle was committed, finds the attempt pending
    /// at start. It must not run it again (its retry may have run on another
    /// node already): the settle is written from the done mark, the attempt
    /// logged as it happened. A task another node committed (mark `1`) is
    /// closed without an attempt; one with no mark stays pending.
    #[tokio::test]
    async fn queue_tasks_handed_over_before_a_kill_are_settled_from_their_done_marks() {
        let redis = crate::store::redis::tests::store().await;
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 0, true, Arc::new(Progress::default()), None).unwrap();
        let accept = |event_id: &str, attempt| Record::Accept {
            accepted_at: 1_000,
            index_event: true,
            event: event(event_id),
            targets: vec![AcceptTarget {
                destination_id: "d1".into(),
                attempt,
                manual: false,
                due_ms: 0,
            }],
        };
        let handed = j.append(&accept("e1", 2));
        let elsewhere = j.append(&accept("e2", 1));
        let open = j.append(&accept("e3", 1));
        let c = j.commit();
        j.flush();
        c.await.unwrap().unwrap();
        drop(j);

        let failed = Attempt {
            id: "atm_1".into(),
            tenant_id: "t1".into(),
            event_id: "e1".into(),
            destination_id: "d1".into(),
            destination_type: "webhook".into(),
            attempt_number: 2,
            manual: false,
            status: AttemptStatus::Failed,
            time: 1_700_000_000_500,
            code: Some("503".into()),
            response_data: Some(serde_json::json!({"status": 503, "body": "busy"})),
            topic: "user.created".into(),
        };
        let mut outcome = Vec::new();
        codec::encode_settle(
            handed,
            0,
            2,
            &NextStep::Done,
            Some(AttemptRef::of(&failed)),
            &mut outcome,
        );
        let after = RetryAfter {
            failed: &task("e1", 2),
            ttl_ms: 60_000,
            outcome: &outcome,
        };
        redis.schedule_retry(&task("e1", 3), 5_000, Some(after)).await.unwrap();
        redis
            .mark_task_done(redis.task_key(&task("e2", 1)), 60_000)
            .await
            .unwrap();

        let mut rec = replay::replay(dir.path(), 0).unwrap();
        assert_eq!(rec.pending.len(), 3);
        let mut reader = Reader::default();
        let queued: Vec<(usize, String)> = rec
            .pending
            .iter()
            .enumerate()
            .map(|(k, p)| match reader.read(dir.path(), p.loc).unwrap() {
                Record::Accept { event, .. } => (k, event.id.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        let next_segment = rec.next_segment;
        let mut j = Journal::open(dir.path(), next_segment, true, Arc::new(Progress::default()), None).unwrap();
        settle_handed_over(&redis, &mut j, &mut rec, &queued, 0).await.unwrap();
        drop(j);
        let left: Vec<Loc> = rec.pending.iter().map(|p| p.loc).collect();
        assert_eq!(left, vec![open]);
        assert_eq!(rec.live.values().sum::<u64>(), 1);

        // What was written survives a restart, and says what happened.
        let again = replay::replay(dir.path(), 0).unwrap();
        assert_eq!(again.pending.iter().map(|p| p.loc).collect::<Vec<_>>(), vec![open]);
        let mut settles: Vec<Settle> = records_in(dir.path(), next_segment)
            .into_iter()
            .map(|r| match r {
                Record::Settle(s) => *s,
                other => panic!("{other:?}"),
            })
            .collect();
        settles.sort_by_key(|s| s.accept);
        assert_eq!(settles.len(), 2);
        assert_eq!((settles[0].accept, settles[0].attempt_number), (handed, 2));
        assert_eq!(settles[0].next, NextStep::Done);
        assert_eq!(settles[0].attempt.as_ref(), Some(&failed));
        assert_eq!((settles[1].accept, settles[1].attempt.as_ref()), (elsewhere, None));
    }

    /// A mark whose record is for another task (damaged, or written by a
    /// different build) is not taken as this task's attempt: the task is
    /// closed, and no attempt is invented for it.
    #[tokio::test]
    async fn a_done_mark_that_is_not_this_tasks_record_logs_no_attempt() {
        let redis = crate::store::redis::tests::store().await;
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path(), 0, true, Arc::new(Progress::default()), None).unwrap();
        let at = j.append(&Record::Accept {
            accepted_at: 1_000,
            index_event: true,
            event: event("e7"),
            targets: vec![AcceptTarget {
                destination_id: "d1".into(),
                attempt: 1,
                manual: false,
                due_ms: 0,
            }],
        });
        let c = j.commit();
        j.flush();
        c.await.unwrap().unwrap();
        drop(j);
        let after = RetryAfter {
            failed: &task("e7", 1),
            ttl_ms: 60_000,
            outcome: b"not a record",
        };
        redis.schedule_retry(&task("e7", 2), 5_000, Some(after)).await.unwrap();
        let mut rec = replay::replay(dir.path(), 0).unwrap();
        let next_segment = rec.next_segment;
        let mut j = Journal::open(dir.path(), next_segment, true, Arc::new(Progress::default()), None).unwrap();
        settle_handed_over(&redis, &mut j, &mut rec, &[(0, "e7".into())], 0)
            .await
            .unwrap();
        drop(j);
        assert!(rec.pending.is_empty());
        match records_in(dir.path(), next_segment).as_slice() {
            [Record::Settle(s)] => assert_eq!((s.accept, s.attempt.as_ref()), (at, None)),
            other => panic!("{other:?}"),
        }
    }
}
