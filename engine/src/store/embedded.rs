//! The embedded store: one SQLite database (WAL) under the data dir, holding
//! the entities (tenants, destinations) and the queryable index of events and
//! attempts. It is not on the delivery path: deliveries are made durable in
//! the shards' journals, and the index follower writes their rows here in
//! large transactions.
//!
//! Every write goes through one writer thread that groups whatever is queued
//! into a single transaction. Reads use a small pool of read connections on
//! the blocking pool.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rusqlite::{params, params_from_iter, Connection, OpenFlags, OptionalExtension, Row};
use tokio::sync::oneshot;

use super::*;
use crate::crypto::Cipher;
use crate::metrics::{RollupDelta, Scan, ScanRow};
use crate::model::{Delivery, StringMap};

mod outbox;
mod writeback;
pub use outbox::LogRole;

/// Most operations one transaction takes before it commits.
const MAX_BATCH: usize = 2048;
/// Bound on queued writes: publishers wait (backpressure) beyond this.
const WRITE_QUEUE: usize = 16_384;
const READERS: usize = 4;

// Rows live in rowid tables, which grow at the end (a batch touches few
// pages); ids are in narrow unique indexes. Random-id primary keys made every
// insert dirty a different page of every tree and the WAL write dominated.
const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY,
    metadata TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS destinations (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    body TEXT NOT NULL,
    credentials BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS destinations_tenant ON destinations (tenant_id);
CREATE TABLE IF NOT EXISTS events (
    -- AUTOINCREMENT: sequence numbers are never reused after rows are pruned,
    -- so the log-shipping cursor never skips a new row.
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    destination_id TEXT,
    topic TEXT NOT NULL,
    eligible_for_retry INTEGER NOT NULL,
    time INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    data TEXT NOT NULL,
    matched TEXT NOT NULL,
    -- When the id was accepted: publish idempotency is judged against it.
    accepted_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_tenant_time ON events (tenant_id, time, id);
CREATE INDEX IF NOT EXISTS events_time ON events (time, id);
CREATE TABLE IF NOT EXISTS attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    tenant_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    destination_id TEXT NOT NULL,
    destination_type TEXT NOT NULL,
    topic TEXT NOT NULL,
    attempt_number INTEGER NOT NULL,
    manual INTEGER NOT NULL,
    status TEXT NOT NULL,
    time INTEGER NOT NULL,
    code TEXT,
    response_data TEXT,
    event_seq INTEGER
);
CREATE INDEX IF NOT EXISTS attempts_tenant_time ON attempts (tenant_id, time, id);
CREATE INDEX IF NOT EXISTS attempts_time ON attempts (time, id);
CREATE INDEX IF NOT EXISTS attempts_dest_time ON attempts (destination_id, time, id);
-- A destination's failures (the portal's most used filter): without it, the
-- failures of a healthy destination are found by walking all its rows. Only
-- failed rows are in it, so a healthy delivery pays nothing for it (a full
-- (destination_id, status, time) index, with one on topic, cost 13 % more
-- server CPU per delivery on `single`).
CREATE INDEX IF NOT EXISTS attempts_dest_failed ON attempts (destination_id, time, id) WHERE status = 'failed';
CREATE TABLE IF NOT EXISTS pending (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    destination_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    manual INTEGER NOT NULL,
    due_ms INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS pending_key ON pending (event_id, destination_id);
-- Operator alerts persisted before they are sent; deleted once the sink has them.
CREATE TABLE IF NOT EXISTS opevent_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    body BLOB NOT NULL
);
-- Small durable counters, e.g. how far the log pipeline has shipped.
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
-- Metrics rollups (`crate::metrics`): per minute (res 1), hour (res 2) and
-- day (res 3), kept in the transaction that writes the rows they count.
CREATE TABLE IF NOT EXISTS metric_events (
    res INTEGER NOT NULL, unit INTEGER NOT NULL, tenant_id TEXT NOT NULL, topic TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (res, unit, tenant_id, topic)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metric_event_destinations (
    res INTEGER NOT NULL, unit INTEGER NOT NULL, tenant_id TEXT NOT NULL, topic TEXT NOT NULL,
    destination_id TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (res, unit, tenant_id, topic, destination_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metric_attempts (
    res INTEGER NOT NULL, unit INTEGER NOT NULL, tenant_id TEXT NOT NULL, destination_id TEXT NOT NULL,
    destination_type TEXT NOT NULL, topic TEXT NOT NULL,
    n INTEGER NOT NULL, successful INTEGER NOT NULL, failed INTEGER NOT NULL, first_n INTEGER NOT NULL,
    retry_n INTEGER NOT NULL, manual_n INTEGER NOT NULL, attempt_sum INTEGER NOT NULL,
    PRIMARY KEY (res, unit, tenant_id, destination_id, destination_type, topic)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metric_attempts_wide (
    res INTEGER NOT NULL, unit INTEGER NOT NULL, tenant_id TEXT NOT NULL, destination_id TEXT NOT NULL,
    destination_type TEXT NOT NULL, topic TEXT NOT NULL, status TEXT NOT NULL, code TEXT NOT NULL,
    manual INTEGER NOT NULL, attempt_number INTEGER NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (res, unit, tenant_id, destination_id, destination_type, topic, status, code, manual, attempt_number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS metric_attempts_tenant (
    res INTEGER NOT NULL, unit INTEGER NOT NULL, tenant_id TEXT NOT NULL,
    n INTEGER NOT NULL, successful INTEGER NOT NULL, failed INTEGER NOT NULL, first_n INTEGER NOT NULL,
    retry_n INTEGER NOT NULL, manual_n INTEGER NOT NULL, attempt_sum INTEGER NOT NULL,
    PRIMARY KEY (res, unit, tenant_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metric_events_by_tenant ON metric_events (tenant_id, res, unit);
CREATE INDEX IF NOT EXISTS metric_attempts_by_tenant ON metric_attempts (tenant_id, res, unit);
"#;

/// Attempts by event. Event ids are random (UUIDv4 by default), so an index
/// keyed by them takes every insert to a different page (written to the WAL
/// and again by the checkpoint): with a million deliveries stored it was a
/// third of the index's cost (`bench/src/bin/index_model.rs`). Keyed by the
/// event's row number (`attempts.event_seq`, set at insert) instead, new
/// attempts land at the end of the index. Attempts without an event row
/// (stored before the column existed, whose event is not in the log, or
/// whose event retention deleted: the trigger unlinks them) stay findable
/// by event id through a partial index that holds only them.
const ATTEMPTS_BY_EVENT: &str = r#"
CREATE INDEX IF NOT EXISTS attempts_event_seq ON attempts (event_seq, destination_id, attempt_number);
CREATE INDEX IF NOT EXISTS attempts_event_unlinked ON attempts (event_id, destination_id, attempt_number)
    WHERE event_seq IS NULL;
DROP INDEX IF EXISTS attempts_event_dest;
CREATE TRIGGER IF NOT EXISTS events_unlink_attempts AFTER DELETE ON events BEGIN
    UPDATE attempts SET event_seq = NULL WHERE event_seq = old.seq;
END;
"#;

/// Rows of `attempts` for the events whose ids are bound at `?{first}`..
/// (`n` of them), optionally for the destination bound at `?{dest}`: the
/// attempts linked to the events' rows, and those without a link (named
/// index: without statistics SQLite would read every unlinked row through
/// `attempts_event_seq`'s `NULL` entries instead).
fn attempts_of_events(first: usize, n: usize, dest: Option<usize>) -> String {
    let ids = (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(",");
    let and_dest = dest.map(|d| format!(" AND destination_id = ?{d}")).unwrap_or_default();
    format!(
        "SELECT seq FROM attempts WHERE event_seq IN (SELECT seq FROM events WHERE id IN ({ids})){and_dest}
         UNION ALL SELECT seq FROM attempts INDEXED BY attempts_event_unlinked
           WHERE event_seq IS NULL AND event_id IN ({ids}){and_dest}"
    )
}

/// Adds `attempts.event_seq` to a store created before it (new attempts
/// get it; older ones keep being found by event id) and swaps the
/// attempts-by-event index for [`ATTEMPTS_BY_EVENT`]'s (once: the partial
/// index is built from the rows already stored).
fn migrate_attempts_by_event(conn: &Connection) -> rusqlite::Result<()> {
    let has_column = conn
        .prepare("SELECT 1 FROM pragma_table_info('attempts') WHERE name = 'event_seq'")?
        .exists([])?;
    if !has_column {
        conn.execute_batch("ALTER TABLE attempts ADD COLUMN event_seq INTEGER")?;
    }
    let old_index = conn
        .prepare("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'attempts_event_dest'")?
        .exists([])?;
    let started = std::time::Instant::now();
    conn.execute_batch(ATTEMPTS_BY_EVENT)?;
    if old_index {
        tracing::info!(took = ?started.elapsed(), "attempts are now found by event through the event's row number");
    }
    Ok(())
}

/// `meta` key set once the rollups cover every stored row.
const ROLLUPS_READY: &str = "metric_rollups_v2";

type Reply<T> = oneshot::Sender<StoreResult<T>>;
type EntityOp = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()> + Send>;

enum WriteOp {
    /// Index rows from the shards' journals, with the follower's positions.
    Index {
        events: Vec<Arc<Event>>,
        attempts: Vec<Attempt>,
        /// Journal positions (`journal::Loc`, packed) per shard.
        cursors: Vec<(usize, u64)>,
        /// Sync this transaction (and the unsynced ones before it) to disk.
        sync: bool,
        reply: Reply<()>,
    },
    Logs {
        events: Vec<Arc<Event>>,
        attempts: Vec<Attempt>,
        reply: Reply<()>,
    },
    Entity {
        op: EntityOp,
        reply: Reply<()>,
    },
}

/// The embedded SQLite store.
pub struct EmbeddedStore {
    writer: flume::Sender<WriteOp>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: std::path::PathBuf,
    cipher: Cipher,
    /// Stops the checkpoint thread.
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// What the writer thread's transactions did (`GET /metrics`).
    pub writer_stats: Arc<WriterStats>,
    /// Whether the event and attempt rows are the log or wait to be shipped.
    role: LogRole,
}

/// The writer thread's transactions: how many, the log records (events
/// and attempts) they carried, and how long each took to apply and commit.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub commits: std::sync::atomic::AtomicU64,
    pub records: std::sync::atomic::AtomicU64,
    pub latency: crate::latency::Histogram,
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore").field("path", &self.path).finish()
    }
}

fn open(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(30))?;
    // Memory-mapped reads keep index pages resident without a large page
    // cache (a large cache costs a scan of it at the end of every transaction).
    conn.pragma_update(None, "cache_size", -8_192)?;
    // Mapped pages count in the process's RSS: 256 MiB keeps the hot index
    // pages mapped without the whole file showing up as resident memory.
    conn.pragma_update(None, "mmap_size", 268_435_456i64)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

impl EmbeddedStore {
    /// Opens (creating if needed) `<dir>/outrider.db` as the log's home.
    pub fn open(dir: &Path, cipher: Cipher, synchronous_full: bool) -> StoreResult<Self> {
        Self::open_as(dir, cipher, synchronous_full, LogRole::Home)
    }

    /// Opens (creating if needed) `<dir>/outrider.db`; `role` says whether
    /// its event and attempt rows are the log or an outbox for PostgreSQL.
    pub fn open_as(dir: &Path, cipher: Cipher, synchronous_full: bool, role: LogRole) -> StoreResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Database(format!("cannot create data dir {}: {e}", dir.display())))?;
        let path = dir.join("outrider.db");
        let mut conn = open(&path, OpenFlags::default())?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", if synchronous_full { "FULL" } else { "NORMAL" })?;
        // Checkpoints run on their own thread (below) so that copying WAL pages
        // into the database never stalls the group commits publishers wait on.
        // The writer's own auto-checkpoint stays as a far-off safety net.
        conn.pragma_update(None, "wal_autocheckpoint", 262_144)?;
        // After the WAL starts over, a file grown past this is cut back to it.
        let page: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        conn.pragma_update(None, "journal_size_limit", WAL_RESTART_FRAMES * page)?;
        conn.execute_batch(SCHEMA)?;
        migrate_attempts_by_event(&conn)?;
        conn.execute_batch(outbox::SCHEMA)?;
        backfill_rollups(&conn)?;
        let moved = match role {
            LogRole::Outbox => outbox::adopt_home_rows(&mut conn)?,
            LogRole::Home => outbox::return_to_home(&mut conn, crate::timefmt::now_ms())?,
        };
        if moved != (0, 0) {
            tracing::info!(
                ?role,
                events = moved.0,
                attempts = moved.1,
                "log rows moved between the home tables and the outbox (the log's home changed)"
            );
        }
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = open(
                &path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            readers.push(r);
        }
        let checkpointer = open(&path, OpenFlags::default())?;
        // A RESTART checkpoint holds every writer back while it waits for
        // readers (an API query, say) to leave the WAL: give up after a
        // moment and try again at the next round rather than stall entity
        // writes behind a long read.
        checkpointer.busy_timeout(Duration::from_millis(250))?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        // Thread names fit Linux's 15-byte `comm`, so `top -H` and the load
        // harness's per-thread profile tell the writer from the checkpointer.
        std::thread::Builder::new()
            .name("outrider-ckpt".into())
            .spawn(move || checkpoint_loop(checkpointer, stop2))
            .map_err(|e| StoreError::Database(format!("cannot start checkpoint thread: {e}")))?;
        let wal = dir.join("outrider.db-wal");
        writeback::spawn(vec![wal, path.clone()], stop.clone())
            .map_err(|e| StoreError::Database(format!("cannot start writeback thread: {e}")))?;
        let (tx, rx) = flume::bounded(WRITE_QUEUE);
        let writer_stats = Arc::new(WriterStats::default());
        let stats = writer_stats.clone();
        std::thread::Builder::new()
            .name("outrider-sqlite".into())
            .spawn(move || writer_loop(conn, rx, synchronous_full, role, &stats))
            .map_err(|e| StoreError::Database(format!("cannot start writer thread: {e}")))?;
        Ok(Self {
            writer: tx,
            readers: Arc::new(Mutex::new(readers)),
            path,
            cipher,
            stop,
            writer_stats,
            role,
        })
    }

    async fn write(&self, op: WriteOp) -> StoreResult<()> {
        self.writer.send_async(op).await.map_err(|_| StoreError::Closed)
    }

    async fn entity(&self, op: EntityOp) -> StoreResult<()> {
        let (reply, rx) = oneshot::channel();
        self.write(WriteOp::Entity { op, reply }).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a read on the blocking pool with a pooled read connection.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let pool = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.lock().pop();
            let conn = match conn {
                Some(c) => c,
                None => open(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?,
            };
            let out = f(&conn);
            let mut p = pool.lock();
            if p.len() < READERS {
                p.push(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Database(format!("read task failed: {e}")))?
    }
}

/// WAL frames (one page each) past which a checkpoint makes the WAL start
/// over (16 MiB with SQLite's default 4 KiB pages; about what the WAL holds at its high-water mark when checkpoints
/// keep up).
const WAL_RESTART_FRAMES: i64 = 4_096;

/// Copies committed WAL frames into the database file in the background.
/// PASSIVE never waits for the writer or readers; it stops with the store.
///
/// The WAL only starts over from its beginning when a checkpoint has copied
/// every frame before the writer's next commit. When checkpoints fall behind
/// the writer's commits, that moment never comes and the WAL grows to the
/// auto-checkpoint limit (1 GiB): every page lookup searches a larger WAL
/// index and each delivery's index rows cost more writing (seen at 6,000
/// deliveries/s: WAL at 1 GiB, 33 KiB written per delivery against 14, 40 %
/// more server CPU). Past [`WAL_RESTART_FRAMES`] a RESTART checkpoint holds
/// the writer back for one catch-up (the index writer is off the publish
/// path; it waits at most the checkpointer's 250 ms busy timeout for readers)
/// so that the WAL starts over, and `journal_size_limit` cuts the file back.
fn checkpoint_loop(conn: Connection, stop: Arc<std::sync::atomic::AtomicBool>) {
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        // (busy, frames in the WAL, frames copied)
        let passive = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
        match passive {
            Ok(frames) if frames > WAL_RESTART_FRAMES => {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, frames, "WAL restart checkpoint failed");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    rx: flume::Receiver<WriteOp>,
    synchronous_full: bool,
    role: LogRole,
    stats: &WriterStats,
) {
    let mut full = synchronous_full;
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // Index rows are derived from the journals (which are synced), and the
        // follower's position commits with them: losing the last index
        // transactions to a power cut only means reading those records again.
        // Entities have no other copy, so batches with them sync fully.
        let want_full = synchronous_full
            && batch
                .iter()
                .any(|op| matches!(op, WriteOp::Entity { .. } | WriteOp::Index { sync: true, .. }));
        if want_full != full {
            let level = if want_full { "FULL" } else { "NORMAL" };
            match conn.pragma_update(None, "synchronous", level) {
                Ok(()) => full = want_full,
                Err(e) => tracing::warn!(error = %e, "cannot change the store's synchronous mode"),
            }
        }
        let now = crate::timefmt::now_ms();
        let records: usize = batch
            .iter()
            .map(|op| match op {
                WriteOp::Index { events, attempts, .. } | WriteOp::Logs { events, attempts, .. } => {
                    events.len() + attempts.len()
                }
                WriteOp::Entity { .. } => 0,
            })
            .sum();
        let started = std::time::Instant::now();
        let result = apply_batch(&mut conn, &mut batch, now, role);
        stats.latency.observe(started.elapsed());
        stats.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stats
            .records
            .fetch_add(records as u64, std::sync::atomic::Ordering::Relaxed);
        // Replies are sent only after the commit: an `Ok` means durable.
        for (op, res) in batch.into_iter().zip(result) {
            match op {
                WriteOp::Index { reply, .. } | WriteOp::Entity { reply, .. } | WriteOp::Logs { reply, .. } => {
                    let _ = reply.send(res);
                }
            }
        }
    }
}

/// Applies a batch in one transaction. A failed commit fails every op.
fn apply_batch(conn: &mut Connection, batch: &mut [WriteOp], now: i64, role: LogRole) -> Vec<StoreResult<()>> {
    let logs = |tx: &rusqlite::Transaction<'_>, events: &[Arc<Event>], attempts: &[Attempt]| match role {
        LogRole::Home => write_logs(tx, events, attempts, now),
        LogRole::Outbox => outbox::append(tx, events, attempts, now),
    };
    let tx = match conn.transaction() {
        Ok(t) => t,
        Err(e) => return batch.iter().map(|_| Err(StoreError::from(e.clone_msg()))).collect(),
    };
    let mut results = Vec::with_capacity(batch.len());
    for op in batch.iter_mut() {
        let r = match op {
            WriteOp::Index {
                events,
                attempts,
                cursors,
                ..
            } => logs(&tx, events, attempts).and_then(|_| {
                let mut st = tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
                for (shard, at) in cursors.iter() {
                    st.execute(params![format!("journal_index:{shard}"), *at as i64])?;
                }
                Ok(())
            }),
            WriteOp::Logs { events, attempts, .. } => logs(&tx, events, attempts),
            WriteOp::Entity { op, .. } => {
                // Each entity op runs in a savepoint so its failure does not sink the batch.
                let op = std::mem::replace(op, Box::new(|_| Ok(())));
                (|| {
                    tx.execute_batch("SAVEPOINT entity")?;
                    match op(&tx) {
                        Ok(()) => tx.execute_batch("RELEASE entity"),
                        Err(e) => {
                            tx.execute_batch("ROLLBACK TO entity; RELEASE entity")?;
                            Err(e)
                        }
                    }
                })()
            }
        };
        results.push(r.map_err(StoreError::from));
    }
    match tx.commit() {
        Ok(()) => results,
        Err(e) => results
            .into_iter()
            .map(|_| Err(StoreError::Database(format!("commit failed: {e}"))))
            .collect(),
    }
}

trait CloneMsg {
    fn clone_msg(&self) -> rusqlite::Error;
}

impl CloneMsg for rusqlite::Error {
    fn clone_msg(&self) -> rusqlite::Error {
        rusqlite::Error::InvalidParameterName(self.to_string())
    }
}

/// Stores `a`, and adds its change to the rollups: a new attempt counts
/// once; one written again (the same id) replaces the stored row, whose
/// contribution is taken back first.
fn insert_attempt(tx: &rusqlite::Transaction<'_>, a: &Attempt, delta: &mut RollupDelta) -> rusqlite::Result<()> {
    let inserted = execute_attempt(
        &mut tx.prepare_cached(
            "INSERT OR IGNORE INTO attempts (id, tenant_id, event_id, destination_id, destination_type, topic, attempt_number, manual, status, time, code, response_data, event_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, (SELECT seq FROM events WHERE id = ?3))",
        )?,
        a,
    )?;
    if inserted == 0 {
        if let Some(old) = tx
            .prepare_cached(&format!("SELECT {ATTEMPT_COLS} FROM attempts WHERE id = ?1"))?
            .query_row([&a.id], attempt_row)
            .optional()?
        {
            delta.add_attempt(&old, -1);
        }
        execute_attempt(
            &mut tx.prepare_cached(
                "INSERT OR REPLACE INTO attempts (id, tenant_id, event_id, destination_id, destination_type, topic, attempt_number, manual, status, time, code, response_data, event_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, (SELECT seq FROM events WHERE id = ?3))",
            )?,
            a,
        )?;
    }
    delta.add_attempt(a, 1);
    Ok(())
}

/// Runs an insert whose parameters are an attempt's columns in
/// `ATTEMPT_COLS` order (the log table's, the outbox's).
fn execute_attempt(st: &mut rusqlite::CachedStatement<'_>, a: &Attempt) -> rusqlite::Result<usize> {
    st.execute(params![
        a.id,
        a.tenant_id,
        a.event_id,
        a.destination_id,
        a.destination_type,
        a.topic,
        a.attempt_number,
        a.manual,
        a.status.as_str(),
        a.time,
        a.code,
        a.response_data.as_ref().map(|v| v.to_string()),
    ])
}

/// Runs an insert whose parameters are an event's columns and its
/// acceptance time (`id, tenant_id, destination_id, topic,
/// eligible_for_retry, time, metadata, data, matched, accepted_at`).
fn execute_event(st: &mut rusqlite::CachedStatement<'_>, e: &Event, accepted_at: i64) -> rusqlite::Result<usize> {
    st.execute(params![
        e.id,
        e.tenant_id,
        e.destination_id,
        e.topic,
        e.eligible_for_retry,
        e.time,
        json_text(&e.metadata),
        &*e.data,
        json_text(&e.matched_destination_ids),
        accepted_at,
    ])
}

fn write_logs(
    tx: &rusqlite::Transaction<'_>,
    events: &[Arc<Event>],
    attempts: &[Attempt],
    now: i64,
) -> rusqlite::Result<()> {
    let mut delta = RollupDelta::default();
    let mut stmt = tx.prepare_cached(
        "INSERT OR IGNORE INTO events (id, tenant_id, destination_id, topic, eligible_for_retry, time, metadata, data, matched, accepted_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for e in events {
        let inserted = execute_event(&mut stmt, e, now)?;
        // An event already stored (a replayed write) is not counted again.
        if inserted == 1 {
            delta.add_event(e, 1);
        }
    }
    for a in attempts {
        insert_attempt(tx, a, &mut delta)?;
    }
    apply_rollups(tx, &delta)
}

/// Adds a batch's counts to the rollup tables.
fn apply_rollups(tx: &rusqlite::Transaction<'_>, d: &RollupDelta) -> rusqlite::Result<()> {
    use crate::store::metrics_sql::res;
    if d.is_empty() {
        return Ok(());
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO metric_events (res, unit, tenant_id, topic, n) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (res, unit, tenant_id, topic) DO UPDATE SET n = n + excluded.n",
    )?;
    for ((source, unit, tenant, topic), n) in &d.events {
        st.execute(params![res(*source), unit, tenant, topic, n])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO metric_event_destinations (res, unit, tenant_id, topic, destination_id, n)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (res, unit, tenant_id, topic, destination_id) DO UPDATE SET n = n + excluded.n",
    )?;
    for ((source, unit, tenant, topic, dest), n) in &d.event_destinations {
        st.execute(params![res(*source), unit, tenant, topic, dest, n])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO metric_attempts (res, unit, tenant_id, destination_id, destination_type, topic,
                                      n, successful, failed, first_n, retry_n, manual_n, attempt_sum)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (res, unit, tenant_id, destination_id, destination_type, topic) DO UPDATE SET
             n = n + excluded.n, successful = successful + excluded.successful, failed = failed + excluded.failed,
             first_n = first_n + excluded.first_n, retry_n = retry_n + excluded.retry_n,
             manual_n = manual_n + excluded.manual_n, attempt_sum = attempt_sum + excluded.attempt_sum",
    )?;
    for ((source, unit, k), p) in &d.attempts {
        st.execute(params![
            res(*source),
            unit,
            k.tenant_id,
            k.destination_id,
            k.destination_type,
            k.topic,
            p.count,
            p.successful,
            p.failed,
            p.first,
            p.retry,
            p.manual,
            p.attempt_number_sum
        ])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO metric_attempts_tenant (res, unit, tenant_id,
                                             n, successful, failed, first_n, retry_n, manual_n, attempt_sum)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (res, unit, tenant_id) DO UPDATE SET
             n = n + excluded.n, successful = successful + excluded.successful, failed = failed + excluded.failed,
             first_n = first_n + excluded.first_n, retry_n = retry_n + excluded.retry_n,
             manual_n = manual_n + excluded.manual_n, attempt_sum = attempt_sum + excluded.attempt_sum",
    )?;
    for ((source, unit, tenant), p) in &d.attempts_tenant {
        st.execute(params![
            res(*source),
            unit,
            tenant,
            p.count,
            p.successful,
            p.failed,
            p.first,
            p.retry,
            p.manual,
            p.attempt_number_sum
        ])?;
    }
    let mut st = tx.prepare_cached(
        "INSERT INTO metric_attempts_wide (res, unit, tenant_id, destination_id, destination_type, topic,
                                           status, code, manual, attempt_number, n)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (res, unit, tenant_id, destination_id, destination_type, topic, status, code, manual, attempt_number)
         DO UPDATE SET n = n + excluded.n",
    )?;
    for ((source, unit, k, w), n) in &d.attempts_wide {
        st.execute(params![
            res(*source),
            unit,
            k.tenant_id,
            k.destination_id,
            k.destination_type,
            k.topic,
            w.status,
            w.code,
            w.manual,
            w.attempt_number,
            n
        ])?;
    }
    Ok(())
}

/// Builds the rollups from the stored rows once (a store from before them).
fn backfill_rollups(conn: &Connection) -> StoreResult<()> {
    let ready: Option<i64> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [ROLLUPS_READY], |r| r.get(0))
        .optional()?;
    if ready.is_some() {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let mut sql = String::from("BEGIN IMMEDIATE;");
    for statement in crate::store::metrics_sql::backfill(crate::store::metrics_sql::Dialect::Sqlite) {
        sql.push_str(&statement);
        sql.push(';');
    }
    sql.push_str(&format!(
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('{ROLLUPS_READY}', 1); COMMIT;"
    ));
    conn.execute_batch(&sql)?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "metrics rollups built from the stored log"
    );
    Ok(())
}

fn json_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

fn parse_json<T: serde::de::DeserializeOwned>(s: &str) -> rusqlite::Result<T> {
    serde_json::from_str(s)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

const EVENT_COLS: &str = "id, tenant_id, destination_id, topic, eligible_for_retry, time, metadata, data, matched";

fn event_row(r: &Row<'_>) -> rusqlite::Result<Event> {
    let data: String = r.get(7)?;
    Ok(Event {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        destination_id: r.get(2)?,
        topic: r.get(3)?,
        eligible_for_retry: r.get(4)?,
        time: r.get(5)?,
        time_ns: 0,
        metadata: parse_json(&r.get::<_, String>(6)?)?,
        data: Arc::from(data),
        matched_destination_ids: parse_json(&r.get::<_, String>(8)?)?,
    })
}

const ATTEMPT_COLS: &str =
    "id, tenant_id, event_id, destination_id, destination_type, topic, attempt_number, manual, status, time, code, response_data";

fn attempt_row(r: &Row<'_>) -> rusqlite::Result<Attempt> {
    let status: String = r.get(8)?;
    let rd: Option<String> = r.get(11)?;
    Ok(Attempt {
        id: r.get(0)?,
        tenant_id: r.get(1)?,
        event_id: r.get(2)?,
        destination_id: r.get(3)?,
        destination_type: r.get(4)?,
        topic: r.get(5)?,
        attempt_number: r.get(6)?,
        manual: r.get(7)?,
        status: if status == "success" {
            AttemptStatus::Success
        } else {
            AttemptStatus::Failed
        },
        time: r.get(9)?,
        code: r.get(10)?,
        response_data: rd.map(|s| parse_json(&s)).transpose()?,
    })
}

/// Builds `WHERE ... ORDER BY ... LIMIT` for a list query.
fn list_sql(table: &str, cols: &str, q: &ListQuery, attempts: bool) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as V;
    let mut sql = format!("SELECT {cols} FROM {table} WHERE 1=1");
    let mut args: Vec<V> = Vec::new();
    let in_list = |sql: &mut String, col: &str, vals: &[String], args: &mut Vec<V>| {
        if vals.is_empty() {
            return;
        }
        sql.push_str(&format!(" AND {col} IN ({})", vec!["?"; vals.len()].join(",")));
        args.extend(vals.iter().map(|v| V::Text(v.clone())));
    };
    in_list(&mut sql, "tenant_id", &q.tenant_ids, &mut args);
    in_list(&mut sql, "id", &q.ids, &mut args);
    in_list(&mut sql, "topic", &q.topics, &mut args);
    if attempts {
        if !q.event_ids.is_empty() {
            let first = args.len() + 1;
            sql.push_str(&format!(
                " AND seq IN ({})",
                attempts_of_events(first, q.event_ids.len(), None)
            ));
            args.extend(q.event_ids.iter().map(|v| V::Text(v.clone())));
        }
        in_list(&mut sql, "destination_id", &q.destination_ids, &mut args);
        in_list(&mut sql, "destination_type", &q.destination_types, &mut args);
        // A literal, not a parameter: SQLite uses the partial index of
        // failures only when the query names its condition as written.
        match q.status {
            Some(AttemptStatus::Failed) => sql.push_str(" AND status = 'failed'"),
            Some(AttemptStatus::Success) => sql.push_str(" AND status = 'success'"),
            None => {}
        }
    } else if !q.destination_ids.is_empty() {
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM json_each(events.matched) WHERE value IN ({}))",
            vec!["?"; q.destination_ids.len()].join(",")
        ));
        args.extend(q.destination_ids.iter().map(|v| V::Text(v.clone())));
    }
    for (op, v) in q.time_bounds() {
        if let Some(v) = v {
            sql.push_str(&format!(" AND time {op} ?"));
            args.push(V::Integer(v));
        }
    }
    let (cmp, order) = match q.dir {
        Dir::Asc => (">", "ASC"),
        Dir::Desc => ("<", "DESC"),
    };
    if let Some(s) = &q.after {
        sql.push_str(&format!(" AND (time, id) {cmp} (?, ?)"));
        args.push(V::Integer(s.time_ms));
        args.push(V::Text(s.id.clone()));
    }
    sql.push_str(&format!(" ORDER BY time {order}, id {order} LIMIT ?"));
    args.push(V::Integer(q.limit as i64));
    (sql, args)
}

/// The parts of a destination stored as plain JSON (credentials are sealed apart).
#[derive(serde::Serialize, serde::Deserialize)]
struct DestinationBody {
    #[serde(rename = "type")]
    kind: String,
    topics: Vec<String>,
    filter: Option<serde_json::Value>,
    config: StringMap,
    delivery_metadata: Option<StringMap>,
    metadata: Option<StringMap>,
    created_at: i64,
    updated_at: i64,
    disabled_at: Option<i64>,
}

/// A destination's stored body: everything but its sealed parts.
fn destination_body(d: &Destination) -> String {
    json_text(&DestinationBody {
        kind: d.kind.clone(),
        topics: d.topics.clone(),
        filter: d.filter.clone(),
        config: crate::crypto::without_sealed_keys(&d.config),
        delivery_metadata: d.delivery_metadata.clone(),
        metadata: d.metadata.clone(),
        created_at: d.created_at,
        updated_at: d.updated_at,
        disabled_at: d.disabled_at,
    })
}

impl EmbeddedStore {
    /// Seals `d` again in the current format if its row still holds `was`
    /// (a write since the read wins). 1 when rewritten.
    async fn reseal(&self, d: &Destination, was: Vec<u8>) -> StoreResult<usize> {
        let sealed = self
            .cipher
            .seal_destination(&d.id, &d.credentials, &d.config)
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let (id, body) = (d.id.clone(), destination_body(d));
        let changed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = changed.clone();
        self.entity(Box::new(move |c| {
            c.execute(
                "UPDATE destinations SET body = ?1, credentials = ?2 WHERE id = ?3 AND credentials = ?4",
                params![body, sealed, id, was],
            )
            .map(|n| counted.store(n, std::sync::atomic::Ordering::Relaxed))
        }))
        .await?;
        Ok(changed.load(std::sync::atomic::Ordering::Relaxed))
    }
}

impl EntityStore for EmbeddedStore {
    fn load_entities(&self) -> BoxFuture<'_, StoreResult<(Vec<Tenant>, Vec<Destination>)>> {
        let cipher = self.cipher.clone();
        let loaded = self.read(move |c| {
            let tenants = c
                .prepare("SELECT id, metadata, created_at, updated_at FROM tenants")?
                .query_map([], |r| {
                    let md: Option<String> = r.get(1)?;
                    Ok(Tenant {
                        id: r.get(0)?,
                        metadata: md.map(|s| parse_json(&s)).transpose()?,
                        created_at: r.get(2)?,
                        updated_at: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let rows = c
                .prepare("SELECT id, tenant_id, body, credentials FROM destinations")?
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut dests = Vec::with_capacity(rows.len());
            let mut old = Vec::new();
            for (id, tenant_id, body, sealed) in rows {
                let b: DestinationBody =
                    serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(format!("destination {id}: {e}")))?;
                let opened = cipher
                    .open_destination(&id, &sealed)
                    .map_err(|e| StoreError::Corrupt(format!("destination {id}: {e}")))?;
                if opened.legacy {
                    old.push((dests.len(), sealed));
                }
                let mut config = b.config;
                config.extend(opened.config.iter().map(|(k, v)| (k.clone(), v.clone())));
                dests.push(Destination {
                    id,
                    tenant_id,
                    kind: b.kind,
                    topics: b.topics,
                    filter: b.filter,
                    config,
                    credentials: opened.credentials,
                    delivery_metadata: b.delivery_metadata,
                    metadata: b.metadata,
                    created_at: b.created_at,
                    updated_at: b.updated_at,
                    disabled_at: b.disabled_at,
                });
            }
            Ok((tenants, dests, old))
        });
        Box::pin(async move {
            let (tenants, dests, old) = loaded.await?;
            // Records sealed the old way are sealed again in the current
            // format, unless they changed since they were read.
            let mut resealed = 0;
            for (i, was) in old {
                resealed += self.reseal(&dests[i], was).await?;
            }
            if resealed > 0 {
                tracing::info!(
                    resealed,
                    "destination secrets sealed again in the current format (HKDF-SHA256, bound to the destination id)"
                );
            }
            Ok((tenants, dests))
        })
    }

    fn put_tenant(&self, t: Tenant) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.entity(Box::new(move |c| {
            c.execute(
                "INSERT INTO tenants (id, metadata, created_at, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO UPDATE SET metadata = excluded.metadata, updated_at = excluded.updated_at",
                params![t.id, t.metadata.as_ref().map(json_text), t.created_at, t.updated_at],
            )
            .map(|_| ())
        })))
    }

    fn delete_tenant(&self, id: String) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.entity(Box::new(move |c| {
            c.execute("DELETE FROM destinations WHERE tenant_id = ?1", [&id])?;
            c.execute("DELETE FROM tenants WHERE id = ?1", [&id]).map(|_| ())
        })))
    }

    fn put_destination(&self, d: Destination) -> BoxFuture<'_, StoreResult<()>> {
        let sealed = self
            .cipher
            .seal_destination(&d.id, &d.credentials, &d.config)
            .map_err(|e| StoreError::Database(e.to_string()));
        Box::pin(async move {
            let sealed = sealed?;
            let body = destination_body(&d);
            self.entity(Box::new(move |c| {
                c.execute(
                    "INSERT OR REPLACE INTO destinations (id, tenant_id, body, credentials) VALUES (?1, ?2, ?3, ?4)",
                    params![d.id, d.tenant_id, body, sealed],
                )
                .map(|_| ())
            }))
            .await
        })
    }

    fn delete_destination(&self, tenant_id: String, id: String) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.entity(Box::new(move |c| {
            c.execute(
                "DELETE FROM destinations WHERE tenant_id = ?1 AND id = ?2",
                params![tenant_id, id],
            )
            .map(|_| ())
        })))
    }
}

impl EmbeddedStore {
    /// Runs one delete on the writer thread and returns the rows it deleted.
    async fn delete_counted(&self, sql: String, args: Vec<i64>) -> StoreResult<u64> {
        let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let out = n.clone();
        self.entity(Box::new(move |c| {
            let deleted = c.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(args))?;
            out.store(deleted as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        }))
        .await?;
        Ok(n.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Deletes with `sql` (which deletes at most one batch) until a batch
    /// comes back short: each batch is its own short write, so the index
    /// follower's writes go between them.
    async fn delete_batches(&self, sql: &'static str, args: Vec<i64>) -> StoreResult<u64> {
        let mut total = 0;
        loop {
            let n = self.delete_counted(sql.to_string(), args.clone()).await?;
            total += n;
            if n < retention::BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn retain_rows(&self, policy: retention::Policy) -> StoreResult<retention::Pruned> {
        let b = retention::BATCH;
        let attempts = self
            .delete_batches(
                "DELETE FROM attempts WHERE seq IN (SELECT seq FROM attempts WHERE time < ?1 LIMIT ?2)",
                vec![policy.cutoff_ms, b],
            )
            .await?;
        // An event inside the idempotency window stays whatever time its
        // publisher gave it, and so does one a build before the journals
        // still has pending.
        let events = self
            .delete_batches(
                "DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE time < ?1 AND accepted_at < ?2
                   AND NOT EXISTS (SELECT 1 FROM pending p WHERE p.event_id = events.id) LIMIT ?3)",
                vec![policy.cutoff_ms, policy.keep_accepted_after, b],
            )
            .await?;
        let mut rollup_rows = 0;
        for table in retention::ROLLUP_TABLES {
            // A day of buckets per statement, from the oldest left (the
            // minute rows of a long history are many; empty days are
            // skipped), so the writer is never held by one huge delete.
            loop {
                let oldest: Option<i64> = self
                    .read(move |c| {
                        Ok(c.query_row(
                            // One index seek per resolution.
                            &format!(
                                "SELECT min(m) FROM (SELECT min(unit) AS m FROM {table} WHERE res = 1
                                 UNION ALL SELECT min(unit) FROM {table} WHERE res = 2
                                 UNION ALL SELECT min(unit) FROM {table} WHERE res = 3)"
                            ),
                            [],
                            |r| r.get(0),
                        )?)
                    })
                    .await?;
                let Some(from) = oldest.filter(|u| *u < policy.cutoff_ms) else {
                    break;
                };
                let to = from.saturating_add(retention::DAY_MS).min(policy.cutoff_ms);
                let sql = format!("DELETE FROM {table} WHERE res IN (1, 2, 3) AND unit < ?1");
                rollup_rows += self.delete_counted(sql, vec![to]).await?;
            }
        }
        Ok(retention::Pruned {
            events,
            attempts,
            rollup_rows,
            ..Default::default()
        })
    }
}

impl LogStore for EmbeddedStore {
    fn retain(&self, policy: retention::Policy) -> BoxFuture<'_, StoreResult<retention::Pruned>> {
        Box::pin(self.retain_rows(policy))
    }

    fn metric_scan(&self, scan: Scan) -> BoxFuture<'_, StoreResult<Vec<ScanRow>>> {
        use crate::store::metrics_sql::{self, Arg, Dialect};
        Box::pin(self.read(move |c| {
            let (sql, args) = metrics_sql::scan(Dialect::Sqlite, &scan);
            let args = args.into_iter().map(|a| match a {
                Arg::Int(i) => rusqlite::types::Value::Integer(i),
                Arg::Text(t) => rusqlite::types::Value::Text(t),
            });
            let n = scan.dims.len();
            let rows = c
                .prepare_cached(&sql)?
                .query_map(params_from_iter(args), |r| {
                    let mut dims = Vec::with_capacity(n);
                    for i in 0..n {
                        let v: Option<String> = r.get(1 + i)?;
                        dims.push(v.unwrap_or_default());
                    }
                    let at = |i: usize| r.get::<_, i64>(1 + n + i);
                    Ok((
                        r.get::<_, i64>(0)?,
                        dims,
                        crate::metrics::Partial {
                            count: at(0)?,
                            successful: at(1)?,
                            failed: at(2)?,
                            first: at(3)?,
                            retry: at(4)?,
                            manual: at(5)?,
                            attempt_number_sum: at(6)?,
                        },
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        }))
    }

    fn list_events(&self, q: ListQuery) -> BoxFuture<'_, StoreResult<Vec<Event>>> {
        Box::pin(self.read(move |c| {
            let (sql, args) = list_sql("events", EVENT_COLS, &q, false);
            let rows = c
                .prepare_cached(&sql)?
                .query_map(params_from_iter(args), event_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        }))
    }

    fn get_event(&self, tenant_id: Option<String>, id: String) -> BoxFuture<'_, StoreResult<Option<Event>>> {
        Box::pin(self.read(move |c| {
            let e = c
                .prepare_cached(&format!("SELECT {EVENT_COLS} FROM events WHERE id = ?1"))?
                .query_row([&id], event_row)
                .optional()?;
            Ok(e.filter(|e| tenant_id.as_ref().is_none_or(|t| *t == e.tenant_id)))
        }))
    }

    fn get_events(&self, keys: Vec<(String, String)>) -> BoxFuture<'_, StoreResult<Vec<Event>>> {
        // Local lookups by primary key: one trip to the reader, not one per event.
        Box::pin(self.read(move |c| {
            let mut stmt = c.prepare_cached(&format!("SELECT {EVENT_COLS} FROM events WHERE id = ?1"))?;
            let mut out = Vec::with_capacity(keys.len());
            for (tenant_id, id) in &keys {
                if let Some(e) = stmt.query_row([id], event_row).optional()? {
                    if e.tenant_id == *tenant_id {
                        out.push(e);
                    }
                }
            }
            Ok(out)
        }))
    }

    fn list_attempts(&self, q: ListQuery) -> BoxFuture<'_, StoreResult<Vec<Attempt>>> {
        Box::pin(self.read(move |c| {
            let (sql, args) = list_sql("attempts", ATTEMPT_COLS, &q, true);
            let rows = c
                .prepare_cached(&sql)?
                .query_map(params_from_iter(args), attempt_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        }))
    }

    fn get_attempt(&self, tenant_id: Option<String>, id: String) -> BoxFuture<'_, StoreResult<Option<Attempt>>> {
        Box::pin(self.read(move |c| {
            let a = c
                .prepare_cached(&format!("SELECT {ATTEMPT_COLS} FROM attempts WHERE id = ?1"))?
                .query_row([&id], attempt_row)
                .optional()?;
            Ok(a.filter(|a| tenant_id.as_ref().is_none_or(|t| *t == a.tenant_id)))
        }))
    }

    fn latest_attempt(
        &self,
        tenant_id: Option<String>,
        event_id: String,
        destination_id: String,
    ) -> BoxFuture<'_, StoreResult<Option<Attempt>>> {
        Box::pin(self.read(move |c| {
            let a = c
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLS} FROM attempts WHERE seq IN ({})
                     ORDER BY attempt_number DESC, time DESC LIMIT 1",
                    attempts_of_events(1, 1, Some(2))
                ))?
                .query_row(params![event_id, destination_id], attempt_row)
                .optional()?;
            Ok(a.filter(|a| tenant_id.as_ref().is_none_or(|t| *t == a.tenant_id)))
        }))
    }
}

/// Log records after a shipping cursor, with their sequence numbers.
pub struct LogBatch {
    pub events: Vec<(i64, Event)>,
    pub attempts: Vec<(i64, Attempt)>,
}

impl EmbeddedStore {
    /// Persists an operator event for sending; returns its sequence number.
    pub async fn outbox_put(&self, topic: &str, body: Vec<u8>) -> StoreResult<i64> {
        let (tx, rx) = oneshot::channel();
        let topic = topic.to_string();
        self.entity(Box::new(move |c| {
            c.prepare_cached("INSERT INTO opevent_outbox (topic, body) VALUES (?1, ?2)")?
                .execute(params![topic, body])?;
            let _ = tx.send(c.last_insert_rowid());
            Ok(())
        }))
        .await?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// The oldest `limit` persisted operator events: `(seq, topic, body)`.
    pub async fn outbox_load(&self, limit: usize) -> StoreResult<Vec<(i64, String, Vec<u8>)>> {
        self.read(move |c| {
            let mut st = c.prepare_cached("SELECT seq, topic, body FROM opevent_outbox ORDER BY seq LIMIT ?1")?;
            let rows = st
                .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    pub async fn outbox_delete(&self, seq: i64) -> StoreResult<()> {
        self.entity(Box::new(move |c| {
            c.prepare_cached("DELETE FROM opevent_outbox WHERE seq = ?1")?
                .execute([seq])?;
            Ok(())
        }))
        .await
    }

    /// How far the log pipeline has shipped: `(event seq, attempt seq)`.
    pub async fn log_cursor(&self) -> StoreResult<(i64, i64)> {
        let t = self.role.tables();
        self.read(move |c| Ok(outbox::cursor(c, t)?)).await
    }

    pub async fn set_log_cursor(&self, events: i64, attempts: i64) -> StoreResult<()> {
        let t = self.role.tables();
        self.entity(Box::new(move |c| outbox::set_cursor(c, t, events, attempts)))
            .await
    }

    /// Deletes log rows already shipped (up to the cursor), keeping events that
    /// still have pending deliveries or are inside the publish-idempotency
    /// window. Used when the logs' home is an external store; as an outbox,
    /// home rows left from before (shipped through the outbox) go too.
    pub async fn prune_shipped(&self, events: i64, attempts: i64, keep_accepted_after: i64) -> StoreResult<()> {
        let role = self.role;
        self.entity(Box::new(move |c| {
            outbox::prune(c, role.tables(), events, attempts, keep_accepted_after)?;
            if role == LogRole::Outbox {
                let (ev, at) = outbox::cursor(c, &outbox::HOME)?;
                outbox::prune(c, &outbox::HOME, ev, at, keep_accepted_after)?;
            }
            Ok(())
        }))
        .await
    }

    /// The newest sequence numbers `(events, attempts)` of the local log
    /// tables: with the shipping cursor, how far shipping is behind.
    pub async fn log_heads(&self) -> StoreResult<(i64, i64)> {
        let t = self.role.tables();
        self.read(move |c| {
            let head = |t: &str| -> rusqlite::Result<i64> {
                c.prepare_cached(&format!("SELECT coalesce(max(seq), 0) FROM {t}"))?
                    .query_row([], |r| r.get(0))
            };
            Ok((head(t.events)?, head(t.attempts)?))
        })
        .await
    }

    /// Row counts `(events, attempts)` of the local log tables (the
    /// outbox's, when the store is one).
    pub async fn log_counts(&self) -> StoreResult<(i64, i64)> {
        let t = self.role.tables();
        self.read(move |c| {
            let n = |t: &str| -> rusqlite::Result<i64> {
                c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
            };
            Ok((n(t.events)?, n(t.attempts)?))
        })
        .await
    }

    /// Up to `limit` events and `limit` attempts written after the cursor, in
    /// write order. Rows are appended with increasing sequence numbers by the
    /// single writer, so a cursor never skips a committed row.
    pub async fn logs_after(&self, events: i64, attempts: i64, limit: usize) -> StoreResult<LogBatch> {
        let t = self.role.tables();
        self.read(move |c| {
            let ev = c
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLS}, seq FROM {} WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    t.events
                ))?
                .query_map(params![events, limit as i64], |r| {
                    Ok((r.get::<_, i64>(9)?, event_row(r)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let at = c
                .prepare_cached(&format!(
                    "SELECT {ATTEMPT_COLS}, seq FROM {} WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                    t.attempts
                ))?
                .query_map(params![attempts, limit as i64], |r| {
                    Ok((r.get::<_, i64>(12)?, attempt_row(r)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(LogBatch {
                events: ev,
                attempts: at,
            })
        })
        .await
    }
}

impl LogWriter for EmbeddedStore {
    fn write_logs(&self, events: Vec<Arc<Event>>, attempts: Vec<Attempt>) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let (reply, rx) = oneshot::channel();
            self.write(WriteOp::Logs {
                events,
                attempts,
                reply,
            })
            .await?;
            rx.await.map_err(|_| StoreError::Closed)?
        })
    }
}

/// Journal-era operations: the index follower's writes and positions, the
/// idempotency ids at start, and the import of pending deliveries written by
/// builds before the journals.
impl EmbeddedStore {
    /// Stores index rows and the follower's positions in one transaction;
    /// `sync` makes it (and every index transaction before it) durable.
    pub async fn index(
        &self,
        events: Vec<Arc<Event>>,
        attempts: Vec<Attempt>,
        // Journal positions (`journal::Loc`, packed) per shard.
        cursors: Vec<(usize, u64)>,
        sync: bool,
    ) -> StoreResult<()> {
        let (reply, rx) = oneshot::channel();
        self.write(WriteOp::Index {
            events,
            attempts,
            cursors,
            sync,
            reply,
        })
        .await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// The index follower's position per shard.
    pub async fn journal_cursors(&self) -> StoreResult<std::collections::HashMap<usize, u64>> {
        self.read(|c| {
            let mut st = c.prepare("SELECT key, value FROM meta WHERE key LIKE 'journal_index:%'")?;
            let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut out = std::collections::HashMap::new();
            for row in rows {
                let (k, v) = row?;
                if let Some(shard) = k.strip_prefix("journal_index:").and_then(|s| s.parse().ok()) {
                    out.insert(shard, v as u64);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The tables that hold events a publish may repeat: the outbox's (when
    /// the store is one) first, then the home's.
    fn event_tables(&self) -> &'static [&'static str] {
        match self.role {
            LogRole::Home => &["events"],
            LogRole::Outbox => &["log_outbox_events", "events"],
        }
    }

    /// When an indexed event was accepted (publish idempotency beyond memory).
    pub async fn event_accepted_at(&self, id: &str) -> StoreResult<Option<i64>> {
        let id = id.to_string();
        let tables = self.event_tables();
        self.read(move |c| {
            for t in tables {
                let at = c
                    .prepare_cached(&format!("SELECT accepted_at FROM {t} WHERE id = ?1"))?
                    .query_row([&id], |r| r.get(0))
                    .optional()?;
                if at.is_some() {
                    return Ok(at);
                }
            }
            Ok(None)
        })
        .await
    }

    /// The newest `limit` indexed events accepted at or after `since_ms`,
    /// with the time (rows are in acceptance order, so this reads from the end).
    pub async fn recent_event_ids(&self, since_ms: i64, limit: usize) -> StoreResult<Vec<(String, i64)>> {
        let tables = self.event_tables();
        self.read(move |c| {
            let mut rows = Vec::new();
            // The outbox's rows are newer than any the home tables kept.
            for t in tables {
                let left = limit - rows.len();
                if left == 0 {
                    break;
                }
                let mut st = c.prepare(&format!(
                    "SELECT id, accepted_at FROM {t} WHERE accepted_at >= ?1 ORDER BY seq DESC LIMIT ?2"
                ))?;
                for row in st.query_map(params![since_ms, left as i64], |r| Ok((r.get(0)?, r.get(1)?)))? {
                    rows.push(row?);
                }
            }
            Ok(rows)
        })
        .await
    }

    /// Pending deliveries left in the `pending` table by a build from before
    /// the journals (the caller moves them into the journals, then clears them).
    pub async fn legacy_pending(&self) -> StoreResult<Vec<Delivery>> {
        self.read(move |c| {
            let cols = EVENT_COLS
                .split(", ")
                .map(|col| format!("e.{col}"))
                .collect::<Vec<_>>()
                .join(", ");
            let mut stmt = c.prepare(&format!(
                "SELECT {cols}, p.destination_id, p.attempt, p.manual, p.due_ms
                 FROM pending p JOIN events e ON e.id = p.event_id ORDER BY e.id"
            ))?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    event_row(r)?,
                    r.get::<_, String>(9)?,
                    r.get(10)?,
                    r.get(11)?,
                    r.get(12)?,
                ))
            })?;
            let mut out = Vec::new();
            let mut last: Option<Arc<Event>> = None;
            for row in rows {
                let (e, destination_id, attempt, manual, due_ms) = row?;
                let event = match &last {
                    Some(l) if l.id == e.id => l.clone(),
                    _ => Arc::new(e),
                };
                last = Some(event.clone());
                out.push(Delivery {
                    event,
                    destination_id,
                    attempt,
                    manual,
                    due_ms,
                });
            }
            Ok(out)
        })
        .await
    }

    pub async fn clear_legacy_pending(&self) -> StoreResult<()> {
        self.entity(Box::new(|c| c.execute_batch("DELETE FROM pending"))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, tenant: &str, time: i64) -> Arc<Event> {
        Arc::new(Event {
            id: id.into(),
            tenant_id: tenant.into(),
            destination_id: None,
            topic: "t".into(),
            eligible_for_retry: true,
            time,
            time_ns: 0,
            metadata: StringMap::new(),
            data: Arc::from("{\"b\":1,\"a\":2}"),
            matched_destination_ids: vec!["d1".into()],
        })
    }

    /// A destination sealed before the current format loads whole and is
    /// stored again sealed the current way, its custom headers out of the
    /// clear body.
    #[tokio::test]
    async fn destinations_sealed_the_old_way_are_read_and_sealed_again() {
        let dir = tempfile::tempdir().unwrap();
        let cipher = Cipher::new("k");
        {
            let s = EmbeddedStore::open(dir.path(), cipher.clone(), false).unwrap();
            s.put_tenant(Tenant {
                id: "t1".into(),
                metadata: None,
                created_at: 1,
                updated_at: 1,
            })
            .await
            .unwrap();
            let sealed = cipher.seal_legacy(b"{\"secret\":\"whsec_old\"}");
            let body = r#"{"type":"webhook","topics":["*"],"filter":null,"config":{"url":"https://x.example/h","custom_headers":"{\"X-Key\":\"k1\"}"},"delivery_metadata":null,"metadata":null,"created_at":1,"updated_at":1,"disabled_at":null}"#;
            s.entity(Box::new(move |c| {
                c.execute(
                    "INSERT INTO destinations (id, tenant_id, body, credentials) VALUES ('des_old', 't1', ?1, ?2)",
                    params![body, sealed],
                )
                .map(|_| ())
            }))
            .await
            .unwrap();
        }
        let s = EmbeddedStore::open(dir.path(), cipher.clone(), false).unwrap();
        let (_, dests) = s.load_entities().await.unwrap();
        assert_eq!(dests.len(), 1);
        assert_eq!(
            dests[0].credentials.get("secret").map(String::as_str),
            Some("whsec_old")
        );
        assert_eq!(
            dests[0].config.get("custom_headers").map(String::as_str),
            Some("{\"X-Key\":\"k1\"}")
        );
        let (body, sealed): (String, Vec<u8>) = s
            .read(|c| {
                Ok(c.query_row(
                    "SELECT body, credentials FROM destinations WHERE id = 'des_old'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?)
            })
            .await
            .unwrap();
        assert!(!body.contains("X-Key"), "{body}");
        assert!(!cipher.open_destination("des_old", &sealed).unwrap().legacy);
        let (_, again) = s.load_entities().await.unwrap();
        assert_eq!(again, dests);
    }

    /// A reader holding an old snapshot keeps the WAL from starting over, so
    /// a burst grows it; once the reader lets go the WAL must come back under
    /// its bound while writes go on (before, it stayed at its high-water mark,
    /// up to 1 GiB, for as long as checkpoints trailed the writer).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_comes_back_under_its_bound_after_a_burst() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), Cipher::new("k"), false).unwrap();
        let wal = dir.path().join("outrider.db-wal");
        let bound = (WAL_RESTART_FRAMES * 4096) as u64;
        let wal_len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let reader = Connection::open(dir.path().join("outrider.db")).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap();
        let big = |i: usize| {
            let mut e = (*event(&format!("e{i}"), "t1", 1000)).clone();
            e.data = Arc::from(format!("\"{}\"", "x".repeat(64 * 1024)));
            Arc::new(e)
        };
        let mut i = 0;
        while wal_len() < 2 * bound {
            s.write_logs((i..i + 16).map(big).collect(), vec![]).await.unwrap();
            i += 16;
        }
        reader.execute_batch("COMMIT").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            s.write_logs((i..i + 4).map(big).collect(), vec![]).await.unwrap();
            i += 4;
            if wal_len() <= bound {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the WAL stayed at {} bytes (bound {bound}) for 20 s of writes",
                wal_len()
            );
        }
    }

    #[tokio::test]
    async fn seek_pagination_and_filters() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), Cipher::new("k"), false).unwrap();
        for i in 0..5 {
            s.write_logs(
                vec![event(&format!("e{i}"), if i % 2 == 0 { "t1" } else { "t2" }, 1000 + i)],
                vec![],
            )
            .await
            .unwrap();
        }
        let all = s
            .list_events(ListQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            all.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["e4", "e3", "e2", "e1", "e0"]
        );
        let page = s
            .list_events(ListQuery {
                limit: 2,
                after: Some(Seek {
                    time_ms: 1003,
                    id: "e3".into(),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(page.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e2", "e1"]);
        let t1 = s
            .list_events(ListQuery {
                tenant_ids: vec!["t1".into()],
                dir: Dir::Asc,
                time_gt: Some(1000),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(t1.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e2", "e4"]);
        let by_dest = s
            .list_events(ListQuery {
                destination_ids: vec!["d1".into()],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(by_dest.len(), 5);
    }

    #[tokio::test]
    async fn entity_store_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), Cipher::new("k"), false).unwrap();
        crate::store::conformance::run_entities(&s).await;
    }

    #[tokio::test]
    async fn log_store_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), Cipher::new("k"), false).unwrap();
        crate::store::conformance::run_all(&s, &s).await;
    }

    #[tokio::test]
    async fn retention_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), Cipher::new("k"), false).unwrap();
        crate::store::conformance::run_retention(&s, &s).await;
    }

    #[tokio::test]
    async fn retention_keeps_events_inside_the_idempotency_window() {
        use crate::store::retention::Policy;
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), Cipher::new("k"), false).unwrap();
        let now = crate::timefmt::now_ms();
        let old = Arc::new(Event {
            id: "just-accepted".into(),
            tenant_id: "t".into(),
            destination_id: None,
            topic: "x".into(),
            eligible_for_retry: true,
            time: now - 40 * crate::store::retention::DAY_MS,
            time_ns: 0,
            metadata: StringMap::new(),
            data: Arc::from("{}"),
            matched_destination_ids: vec![],
        });
        s.write_logs(vec![old], vec![]).await.unwrap();
        // Accepted a moment ago with a time 40 days back: inside a one-hour
        // idempotency window it stays, so a repeat of it is still refused.
        let p = s.retain(Policy::new(now, 7, 3_600_000)).await.unwrap();
        assert_eq!(p.events, 0);
        assert!(s.event_accepted_at("just-accepted").await.unwrap().is_some());
        // A minute later with no window, its time decides.
        let p = s.retain(Policy::new(now + 60_000, 7, 0)).await.unwrap();
        assert_eq!(p.events, 1);
        assert!(s.event_accepted_at("just-accepted").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn metrics_conformance() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), Cipher::new("k"), false).unwrap();
        crate::store::conformance::run_metrics(&s, &s).await;
    }

    fn attempt_of(id: &str, event_id: &str, n: u32, t: i64) -> Attempt {
        Attempt {
            id: id.into(),
            tenant_id: "t1".into(),
            event_id: event_id.into(),
            destination_id: "d1".into(),
            destination_type: "webhook".into(),
            attempt_number: n,
            manual: false,
            status: AttemptStatus::Failed,
            time: t,
            code: Some("500".into()),
            response_data: None,
            topic: "t".into(),
        }
    }

    async fn attempt_ids(s: &EmbeddedStore, event_ids: &[&str]) -> Vec<String> {
        let mut ids: Vec<String> = s
            .list_attempts(ListQuery {
                event_ids: event_ids.iter().map(|e| e.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect();
        ids.sort();
        ids
    }

    /// Attempts are found by event through the event's row; those stored
    /// before that link existed (a store from an older build, its index
    /// swapped at open) or whose event is not stored are found by event id.
    #[tokio::test]
    async fn attempts_are_found_by_event_linked_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_704_067_200_000;
        {
            let s = EmbeddedStore::open(dir.path(), Cipher::new("k"), false).unwrap();
            s.write_logs(
                vec![event("e_old", "t1", t0)],
                vec![attempt_of("a_old", "e_old", 1, t0)],
            )
            .await
            .unwrap();
        }
        // As an older build left it: no link, the attempts-by-event index on ids.
        let c = Connection::open(dir.path().join("outrider.db")).unwrap();
        c.execute_batch(
            "DROP INDEX attempts_event_seq; DROP INDEX attempts_event_unlinked; DROP TRIGGER events_unlink_attempts;
             ALTER TABLE attempts DROP COLUMN event_seq;
             CREATE INDEX attempts_event_dest ON attempts (event_id, destination_id, attempt_number);",
        )
        .unwrap();
        drop(c);
        let s = EmbeddedStore::open(dir.path(), Cipher::new("k"), false).unwrap();
        s.write_logs(
            vec![event("e1", "t1", t0), event("e2", "t1", t0)],
            vec![
                attempt_of("a1", "e1", 1, t0 + 1),
                attempt_of("a2", "e1", 2, t0 + 2),
                attempt_of("b1", "e2", 1, t0 + 3),
            ],
        )
        .await
        .unwrap();
        // An attempt whose event is not in the log; then one for the old event.
        s.write_logs(
            Vec::new(),
            vec![
                attempt_of("x1", "e_missing", 1, t0 + 4),
                attempt_of("a_old2", "e_old", 2, t0 + 5),
            ],
        )
        .await
        .unwrap();
        assert_eq!(attempt_ids(&s, &["e1"]).await, ["a1", "a2"]);
        assert_eq!(attempt_ids(&s, &["e_old"]).await, ["a_old", "a_old2"]);
        assert_eq!(attempt_ids(&s, &["e_missing"]).await, ["x1"]);
        assert_eq!(
            attempt_ids(&s, &["e2", "e_old", "nope"]).await,
            ["a_old", "a_old2", "b1"]
        );
        let latest = |e: &str| s.latest_attempt(Some("t1".into()), e.into(), "d1".into());
        assert_eq!(latest("e1").await.unwrap().unwrap().id, "a2");
        assert_eq!(latest("e_old").await.unwrap().unwrap().id, "a_old2");
        assert_eq!(latest("e_missing").await.unwrap().unwrap().id, "x1");
        assert!(latest("nope").await.unwrap().is_none());

        let c = Connection::open(dir.path().join("outrider.db")).unwrap();
        let linked: Vec<(String, Option<i64>)> = c
            .prepare("SELECT id, event_seq FROM attempts ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let unlinked: Vec<&str> = linked
            .iter()
            .filter(|(_, seq)| seq.is_none())
            .map(|(id, _)| id.as_str())
            .collect();
        assert_eq!(unlinked, ["a_old", "x1"], "{linked:?}");
        let old_index = c
            .prepare("SELECT 1 FROM sqlite_master WHERE name = 'attempts_event_dest'")
            .unwrap()
            .exists([])
            .unwrap();
        assert!(!old_index, "the id-keyed index is gone");
        // Both queries go through the two indexes, never a scan of the table.
        let q = ListQuery {
            event_ids: vec!["e1".into(), "e2".into()],
            ..Default::default()
        };
        let (sql, args) = list_sql("attempts", ATTEMPT_COLS, &q, true);
        let latest_sql = format!(
            "SELECT {ATTEMPT_COLS} FROM attempts WHERE seq IN ({}) ORDER BY attempt_number DESC, time DESC LIMIT 1",
            attempts_of_events(1, 1, Some(2))
        );
        for (sql, args) in [
            (sql, args),
            (
                latest_sql,
                vec![
                    rusqlite::types::Value::Text("e1".into()),
                    rusqlite::types::Value::Text("d1".into()),
                ],
            ),
        ] {
            let plan: Vec<String> = c
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap()
                .query_map(params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            let plan = plan.join(" | ");
            assert!(plan.contains("attempts_event_seq"), "{plan}");
            assert!(plan.contains("attempts_event_unlinked"), "{plan}");
            assert!(!plan.contains("SCAN attempts"), "{plan}");
        }
        // An event deleted (retention) leaves its attempts findable by its id.
        c.execute("DELETE FROM events WHERE id = 'e1'", []).unwrap();
        assert_eq!(attempt_ids(&s, &["e1"]).await, ["a1", "a2"]);
        assert_eq!(latest("e1").await.unwrap().unwrap().id, "a2");
    }

    /// A store written before the rollups existed gets them built at open.
    #[tokio::test]
    async fn rollups_are_built_for_rows_stored_before_them() {
        use crate::metrics::{Dataset, Measure, Query};
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), Cipher::new("k"), false).unwrap();
        let t0 = 1_704_067_200_000;
        let mk = |id: &str, t: i64| Attempt {
            id: id.into(),
            tenant_id: "t".into(),
            event_id: "e".into(),
            destination_id: "d".into(),
            destination_type: "webhook".into(),
            attempt_number: 1,
            manual: false,
            status: AttemptStatus::Success,
            time: t,
            code: Some("200".into()),
            response_data: None,
            topic: "x".into(),
        };
        s.write_logs(Vec::new(), vec![mk("a1", t0), mk("a2", t0 + 3_600_000)])
            .await
            .unwrap();
        drop(s);
        // As if written by a build without rollups.
        let c = Connection::open(dir.path().join("outrider.db")).unwrap();
        c.execute_batch(
            "DELETE FROM metric_attempts; DELETE FROM metric_attempts_wide; DELETE FROM metric_attempts_tenant;
             DELETE FROM meta WHERE key LIKE 'metric_rollups%';",
        )
        .unwrap();
        drop(c);
        let s = EmbeddedStore::open(dir.path(), Cipher::new("k"), false).unwrap();
        let q = Query {
            dataset: Dataset::Attempts,
            start_ms: t0,
            end_ms: t0 + 2 * 3_600_000,
            granularity: None,
            measures: vec![Measure::Count],
            dims: vec![],
            filters: vec![],
        };
        let a = crate::store::answer_metrics(&s, &q).await.unwrap();
        assert_eq!(a.data[0].metrics["count"], 2);
    }

    #[tokio::test]
    async fn credentials_are_encrypted_at_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path(), Cipher::new("k"), false).unwrap();
        let mut creds = StringMap::new();
        creds.insert("secret".into(), "whsec_topsecretvalue".into());
        let mut config = StringMap::new();
        config.insert(
            "custom_headers".into(),
            "{\"Authorization\":\"Bearer hiddentokenvalue\"}".into(),
        );
        let d = Destination {
            id: "d1".into(),
            tenant_id: "t1".into(),
            kind: "webhook".into(),
            topics: vec!["*".into()],
            filter: None,
            config,
            credentials: creds,
            delivery_metadata: None,
            metadata: None,
            created_at: 1,
            updated_at: 1,
            disabled_at: None,
        };
        s.put_destination(d.clone()).await.unwrap();
        let raw = std::fs::read(dir.path().join("outrider.db")).unwrap();
        let wal = std::fs::read(dir.path().join("outrider.db-wal")).unwrap_or_default();
        for needle in [&b"topsecretvalue"[..], b"hiddentokenvalue"] {
            assert!(!raw.windows(needle.len()).any(|w| w == needle));
            assert!(!wal.windows(needle.len()).any(|w| w == needle));
        }
        let (_, dests) = s.load_entities().await.unwrap();
        assert_eq!(dests, vec![d]);
    }
}
