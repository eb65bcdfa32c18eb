//! The log outbox. When the log's home is PostgreSQL, the API reads events,
//! attempts and metrics there, so the rows the index follower writes here
//! only wait to be shipped, in order, and are then pruned. They go to two
//! tables indexed by their sequence only (and events by id, for publish
//! idempotency), without rollups: in the home tables an event and its
//! attempt cost three random-key index inserts (a page each), five
//! time-ordered ones and the rollups, all of it work PostgreSQL does again.
//!
//! A node's role can change between runs (a `POSTGRES_URL` added or
//! removed). Opening as an outbox moves the home rows not shipped yet into
//! the outbox, so they ship exactly as before; opening as the home moves any
//! rows left in the outbox into the home tables, where the API now looks.

use super::*;

/// What the embedded store's event and attempt rows are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRole {
    /// The log's home: the API, the portal and the metrics read the rows here.
    Home,
    /// A buffer for the log's home elsewhere: rows are shipped and pruned.
    Outbox,
}

/// Where a role keeps its rows and its shipping cursor.
pub(super) struct LogTables {
    pub events: &'static str,
    pub attempts: &'static str,
    /// `meta` keys of the shipping cursor (sequence numbers shipped).
    pub shipped_events: &'static str,
    pub shipped_attempts: &'static str,
    /// Events a build from before the journals still has pending stay.
    pub legacy_pending: bool,
}

pub(super) const HOME: LogTables = LogTables {
    events: "events",
    attempts: "attempts",
    shipped_events: "log_shipped_events",
    shipped_attempts: "log_shipped_attempts",
    legacy_pending: true,
};

pub(super) const OUTBOX: LogTables = LogTables {
    events: "log_outbox_events",
    attempts: "log_outbox_attempts",
    shipped_events: "log_outbox_shipped_events",
    shipped_attempts: "log_outbox_shipped_attempts",
    legacy_pending: false,
};

impl LogRole {
    pub(super) fn tables(self) -> &'static LogTables {
        match self {
            LogRole::Home => &HOME,
            LogRole::Outbox => &OUTBOX,
        }
    }
}

// AUTOINCREMENT: a pruned-empty table must not hand out sequence numbers the
// shipping cursor has already passed.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS log_outbox_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    destination_id TEXT,
    topic TEXT NOT NULL,
    eligible_for_retry INTEGER NOT NULL,
    time INTEGER NOT NULL,
    metadata TEXT NOT NULL,
    data TEXT NOT NULL,
    matched TEXT NOT NULL,
    accepted_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log_outbox_attempts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL,
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
    response_data TEXT
);
-- Publish idempotency beyond memory looks events up by id (a node without a
-- delivery queue keeps its events here for the idempotency window).
CREATE INDEX IF NOT EXISTS log_outbox_events_id ON log_outbox_events (id);
"#;

const EVENT_FIELDS: &str =
    "id, tenant_id, destination_id, topic, eligible_for_retry, time, metadata, data, matched, accepted_at";

/// Appends rows to be shipped. A row written twice (it cannot be, short of
/// a bug upstream) ships twice, and the home's writes are idempotent.
pub(super) fn append(
    tx: &rusqlite::Transaction<'_>,
    events: &[Arc<Event>],
    attempts: &[Attempt],
    now: i64,
) -> rusqlite::Result<()> {
    let mut st = tx.prepare_cached(&format!(
        "INSERT INTO log_outbox_events ({EVENT_FIELDS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))?;
    for e in events {
        execute_event(&mut st, e, now)?;
    }
    let mut st = tx.prepare_cached(&format!(
        "INSERT INTO log_outbox_attempts ({ATTEMPT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    ))?;
    for a in attempts {
        execute_attempt(&mut st, a)?;
    }
    Ok(())
}

/// The shipping cursor `(events, attempts)` of a role's tables.
pub(super) fn cursor(c: &Connection, t: &LogTables) -> rusqlite::Result<(i64, i64)> {
    let get = |k: &str| -> rusqlite::Result<i64> {
        Ok(c.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
            .query_row([k], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    };
    Ok((get(t.shipped_events)?, get(t.shipped_attempts)?))
}

pub(super) fn set_cursor(c: &Connection, t: &LogTables, events: i64, attempts: i64) -> rusqlite::Result<()> {
    let mut st = c.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")?;
    st.execute(params![t.shipped_events, events])?;
    st.execute(params![t.shipped_attempts, attempts])?;
    Ok(())
}

/// Deletes a role's shipped rows up to the cursor, keeping events inside
/// the publish-idempotency window (and, in the home tables, events a build
/// from before the journals still has pending).
pub(super) fn prune(
    c: &Connection,
    t: &LogTables,
    events: i64,
    attempts: i64,
    keep_accepted_after: i64,
) -> rusqlite::Result<()> {
    c.prepare_cached(&format!("DELETE FROM {} WHERE seq <= ?1", t.attempts))?
        .execute([attempts])?;
    // Rows are appended in acceptance order, so the ones still inside the
    // window are a suffix: stop at the first of them instead of scanning
    // the whole window on every prune.
    let first_kept: Option<i64> = c
        .prepare_cached(&format!(
            "SELECT seq FROM {} WHERE accepted_at >= ?1 ORDER BY seq LIMIT 1",
            t.events
        ))?
        .query_row([keep_accepted_after], |r| r.get(0))
        .optional()?;
    let upto = first_kept.map_or(events, |k| events.min(k - 1));
    let pending = if t.legacy_pending {
        " AND NOT EXISTS (SELECT 1 FROM pending p WHERE p.event_id = events.id)"
    } else {
        ""
    };
    c.prepare_cached(&format!("DELETE FROM {} WHERE seq <= ?1{pending}", t.events))?
        .execute([upto])?;
    Ok(())
}

/// Opening as an outbox: home rows past the home's shipping cursor move to
/// the outbox (in their order), and the home cursor moves past them, so the
/// pipeline ships them once; `prune_shipped` then clears them from the home
/// tables. Returns the rows moved `(events, attempts)`.
pub(super) fn adopt_home_rows(conn: &mut Connection) -> rusqlite::Result<(usize, usize)> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let (ev, at) = cursor(&tx, &HOME)?;
    let events = tx.execute(
        &format!(
            "INSERT INTO log_outbox_events ({EVENT_FIELDS})
             SELECT {EVENT_FIELDS} FROM events WHERE seq > ?1 ORDER BY seq"
        ),
        [ev],
    )?;
    let attempts = tx.execute(
        &format!(
            "INSERT INTO log_outbox_attempts ({ATTEMPT_COLS})
             SELECT {ATTEMPT_COLS} FROM attempts WHERE seq > ?1 ORDER BY seq"
        ),
        [at],
    )?;
    if events + attempts > 0 {
        let head = |t: &str| -> rusqlite::Result<i64> {
            tx.query_row(&format!("SELECT coalesce(max(seq), 0) FROM {t}"), [], |r| r.get(0))
        };
        let (he, ha) = (head("events")?, head("attempts")?);
        set_cursor(&tx, &HOME, he, ha)?;
    }
    tx.commit()?;
    Ok((events, attempts))
}

/// Rows moved per transaction when the outbox goes back to the home.
const RETURN_CHUNK: i64 = 10_000;

/// Opening as the home: every row still in the outbox (not shipped yet, or
/// kept for the idempotency window) moves into the home tables, with their
/// rollups, since the API reads them here now. Returns the rows moved.
pub(super) fn return_to_home(conn: &mut Connection, now: i64) -> rusqlite::Result<(usize, usize)> {
    let mut moved = (0, 0);
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let events: Vec<(i64, Event)> = tx
            .prepare(&format!(
                "SELECT {EVENT_COLS}, seq FROM log_outbox_events ORDER BY seq LIMIT ?1"
            ))?
            .query_map([RETURN_CHUNK], |r| Ok((r.get::<_, i64>(9)?, event_row(r)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let attempts: Vec<(i64, Attempt)> = tx
            .prepare(&format!(
                "SELECT {ATTEMPT_COLS}, seq FROM log_outbox_attempts ORDER BY seq LIMIT ?1"
            ))?
            .query_map([RETURN_CHUNK], |r| Ok((r.get::<_, i64>(12)?, attempt_row(r)?)))?
            .collect::<rusqlite::Result<_>>()?;
        if events.is_empty() && attempts.is_empty() {
            return Ok(moved);
        }
        let last_ev = events.last().map_or(0, |(s, _)| *s);
        let last_at = attempts.last().map_or(0, |(s, _)| *s);
        moved.0 += events.len();
        moved.1 += attempts.len();
        let events: Vec<Arc<Event>> = events.into_iter().map(|(_, e)| Arc::new(e)).collect();
        let attempts: Vec<Attempt> = attempts.into_iter().map(|(_, a)| a).collect();
        write_logs(&tx, &events, &attempts, now)?;
        tx.execute("DELETE FROM log_outbox_events WHERE seq <= ?1", [last_ev])?;
        tx.execute("DELETE FROM log_outbox_attempts WHERE seq <= ?1", [last_at])?;
        tx.commit()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ListQuery, LogStore, LogWriter};

    fn event(id: &str) -> Arc<Event> {
        Arc::new(Event {
            id: id.into(),
            tenant_id: "t".into(),
            destination_id: None,
            topic: "x".into(),
            eligible_for_retry: true,
            time: 1_704_067_200_000,
            time_ns: 0,
            metadata: StringMap::from_iter([("k".to_string(), "v".to_string())]),
            data: Arc::from(r#"{"n":1}"#),
            matched_destination_ids: vec!["d".into()],
        })
    }

    fn attempt(event: &str, n: u32) -> Attempt {
        Attempt {
            id: format!("a-{event}-{n}"),
            tenant_id: "t".into(),
            event_id: event.into(),
            destination_id: "d".into(),
            destination_type: "webhook".into(),
            attempt_number: n,
            manual: false,
            status: AttemptStatus::Failed,
            time: 1_704_067_200_500,
            code: Some("500".into()),
            response_data: Some(serde_json::json!({"status": 500})),
            topic: "x".into(),
        }
    }

    fn ids(b: &LogBatch) -> (Vec<&str>, Vec<&str>) {
        (
            b.events.iter().map(|(_, e)| e.id.as_str()).collect(),
            b.attempts.iter().map(|(_, a)| a.id.as_str()).collect(),
        )
    }

    fn open(dir: &std::path::Path, role: LogRole) -> EmbeddedStore {
        EmbeddedStore::open_as(dir, Cipher::new("k"), false, role).unwrap()
    }

    /// As an outbox, the follower's rows wait in order, whole, for shipping;
    /// the home tables (which the API would read) stay empty, and publish
    /// idempotency still finds the events.
    #[tokio::test]
    async fn an_outbox_keeps_the_rows_in_order_for_shipping() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), LogRole::Outbox);
        s.index(
            vec![event("e1"), event("e2")],
            vec![attempt("e1", 1)],
            vec![(0, 64)],
            false,
        )
        .await
        .unwrap();
        s.index(vec![], vec![attempt("e1", 2), attempt("e2", 1)], vec![(0, 128)], true)
            .await
            .unwrap();
        assert_eq!(s.log_counts().await.unwrap(), (2, 3));
        let b = s.logs_after(0, 0, 10).await.unwrap();
        assert_eq!(ids(&b), (vec!["e1", "e2"], vec!["a-e1-1", "a-e1-2", "a-e2-1"]));
        // Rows come back as they went in.
        let (_, e) = &b.events[0];
        assert_eq!(
            (e.metadata.get("k").map(String::as_str), &*e.data),
            (Some("v"), r#"{"n":1}"#)
        );
        assert_eq!(b.attempts[0].1, attempt("e1", 1));
        assert!(s.list_events(ListQuery::default()).await.unwrap().is_empty());
        assert!(s.list_attempts(ListQuery::default()).await.unwrap().is_empty());
        assert!(s.event_accepted_at("e2").await.unwrap().is_some());
        assert!(s.event_accepted_at("e3").await.unwrap().is_none());
        let recent: Vec<String> = s
            .recent_event_ids(0, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(recent, ["e2", "e1"]);
        assert_eq!(s.journal_cursors().await.unwrap().get(&0), Some(&128));

        // Shipped up to e1 and the first two attempts; the window keeps nothing.
        let (e1, a2) = (b.events[0].0, b.attempts[1].0);
        s.set_log_cursor(e1, a2).await.unwrap();
        s.prune_shipped(e1, a2, i64::MAX).await.unwrap();
        assert_eq!(s.log_counts().await.unwrap(), (1, 1));
        assert_eq!(s.log_cursor().await.unwrap(), (e1, a2));
        assert_eq!(
            ids(&s.logs_after(e1, a2, 10).await.unwrap()),
            (vec!["e2"], vec!["a-e2-1"])
        );
    }

    /// A node that kept its log itself and now ships it to PostgreSQL: the
    /// rows not shipped yet move to the outbox once (not again at the next
    /// start), and the pruning after shipping clears the home tables.
    #[tokio::test]
    async fn a_home_opened_as_an_outbox_hands_over_its_unshipped_rows_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), LogRole::Home);
            s.write_logs(
                vec![event("e1"), event("e2"), event("e3")],
                vec![attempt("e1", 1), attempt("e2", 1)],
            )
            .await
            .unwrap();
            // e1 and its attempt were shipped before (by a pipeline with the home as its source).
            s.set_log_cursor(1, 1).await.unwrap();
        }
        let s = open(dir.path(), LogRole::Outbox);
        let b = s.logs_after(0, 0, 10).await.unwrap();
        assert_eq!(ids(&b), (vec!["e2", "e3"], vec!["a-e2-1"]));
        assert_eq!(b.attempts[0].1, attempt("e2", 1));
        drop(s);
        let s = open(dir.path(), LogRole::Outbox);
        assert_eq!(s.log_counts().await.unwrap(), (2, 1), "moved once");
        assert_eq!(s.list_events(ListQuery::default()).await.unwrap().len(), 3);
        let (ev, at) = (b.events[1].0, b.attempts[0].0);
        s.set_log_cursor(ev, at).await.unwrap();
        s.prune_shipped(ev, at, i64::MAX).await.unwrap();
        assert_eq!(s.log_counts().await.unwrap(), (0, 0));
        assert!(
            s.list_events(ListQuery::default()).await.unwrap().is_empty(),
            "home rows pruned"
        );
        assert!(s.list_attempts(ListQuery::default()).await.unwrap().is_empty());
    }

    /// A node that shipped to PostgreSQL and now keeps its log itself: every
    /// row left in the outbox becomes part of the log the API reads here,
    /// with the metrics rollups counting it.
    #[tokio::test]
    async fn an_outbox_opened_as_the_home_gives_its_rows_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path(), LogRole::Outbox);
            s.index(vec![event("e1"), event("e2")], vec![attempt("e1", 1)], vec![], false)
                .await
                .unwrap();
        }
        let s = open(dir.path(), LogRole::Home);
        let mut events: Vec<String> = s
            .list_events(ListQuery::default())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        events.sort();
        assert_eq!(events, ["e1", "e2"]);
        assert_eq!(
            s.get_attempt(None, "a-e1-1".into()).await.unwrap(),
            Some(attempt("e1", 1))
        );
        assert_eq!(s.log_counts().await.unwrap(), (2, 1));
        let rolled: i64 = s
            .read(|c| {
                Ok(
                    c.query_row("SELECT coalesce(sum(n), 0) FROM metric_events WHERE res = 1", [], |r| {
                        r.get(0)
                    })?,
                )
            })
            .await
            .unwrap();
        assert_eq!(rolled, 2, "the rollups count the returned events");
        drop(s);
        let s = open(dir.path(), LogRole::Home);
        assert_eq!(s.log_counts().await.unwrap(), (2, 1), "returned once");
    }
}
