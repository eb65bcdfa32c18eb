//! The PostgreSQL log store (`POSTGRES_URL`): events and attempts, written in
//! batches with one `UNNEST` insert per table per batch, read with the same
//! filters and seek pagination as the embedded store. The schema lives in
//! `migrations/*.sql` and is applied by `outrider migrate` and at start.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::*;
use crate::error_text::with_causes;
use crate::model::StringMap;

/// Migrations in order; each runs once, in its own transaction.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_logs", include_str!("../../../migrations/0001_logs.sql")),
    (
        "0002_log_dead_letters",
        include_str!("../../../migrations/0002_log_dead_letters.sql"),
    ),
    (
        "0003_metric_rollups",
        include_str!("../../../migrations/0003_metric_rollups.sql"),
    ),
];

/// The migration that creates the metrics rollups; the rows already stored
/// are counted into them in the same transaction.
const ROLLUP_MIGRATION: &str = "0003_metric_rollups";

/// Serialises migrations across nodes (an arbitrary, fixed advisory-lock key).
const MIGRATION_LOCK: i64 = 0x6f75_7472_6964_6572;

const POOL_SIZE: usize = 8;

pub struct PostgresLogStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresLogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresLogStore")
    }
}

fn db_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Database(e.to_string())
}

/// A write's error: [`StoreError::Refused`] when PostgreSQL refuses the
/// rows themselves (SQLSTATE class 22 data exception, 23 integrity
/// constraint, 54 program limit), so retrying them can never succeed; any
/// other error may pass (a lost connection, a restart) and is retried.
fn write_err(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if matches!(&db.code().code()[..2], "22" | "23" | "54") => {
            StoreError::Refused(format!("{} (SQLSTATE {})", db.message(), db.code().code()))
        }
        _ => db_err(e),
    }
}

impl PostgresLogStore {
    /// Connects, retrying for up to `patience` so a database that is still
    /// starting does not fail the start; after that the error says why.
    pub async fn connect(url: &str, patience: Duration) -> StoreResult<Self> {
        let prepared = super::postgres_tls::prepare(url).map_err(|message| StoreError::Unreachable {
            what: "PostgreSQL (POSTGRES_URL)",
            message,
        })?;
        let mgr = Manager::from_config(
            prepared.config,
            prepared.tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(db_err)?;
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            match pool.get().await {
                Ok(c) => match c.simple_query("SELECT 1").await {
                    Ok(_) => return Ok(Self { pool }),
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(StoreError::Unreachable {
                            what: "PostgreSQL",
                            message: with_causes(&e),
                        })
                    }
                    Err(_) => {}
                },
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(StoreError::Unreachable {
                        what: "PostgreSQL",
                        message: with_causes(&e),
                    })
                }
                Err(_) => {}
            }
            backoff.wait().await;
        }
    }

    /// Applies pending migrations; returns the names applied now.
    pub async fn migrate(&self) -> StoreResult<Vec<String>> {
        let mut c = self.pool.get().await.map_err(db_err)?;
        c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db_err)?;
        let result = async {
            c.batch_execute(
                "CREATE TABLE IF NOT EXISTS outrider_migrations (
                     version TEXT PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await
            .map_err(db_err)?;
            let mut applied = Vec::new();
            for (version, sql) in MIGRATIONS {
                let done = c
                    .query_opt("SELECT 1 FROM outrider_migrations WHERE version = $1", &[version])
                    .await
                    .map_err(db_err)?
                    .is_some();
                if done {
                    continue;
                }
                let tx = c.transaction().await.map_err(db_err)?;
                tx.batch_execute(sql)
                    .await
                    .map_err(|e| StoreError::Database(format!("migration {version}: {e}")))?;
                if *version == ROLLUP_MIGRATION {
                    for statement in super::metrics_sql::backfill(super::metrics_sql::Dialect::Postgres) {
                        tx.batch_execute(&statement)
                            .await
                            .map_err(|e| StoreError::Database(format!("migration {version}: {e}")))?;
                    }
                }
                tx.execute("INSERT INTO outrider_migrations (version) VALUES ($1)", &[version])
                    .await
                    .map_err(db_err)?;
                tx.commit().await.map_err(db_err)?;
                applied.push(version.to_string());
            }
            Ok(applied)
        }
        .await;
        let _ = c.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
        result
    }

    /// Versions not applied yet.
    pub async fn pending_migrations(&self) -> StoreResult<Vec<String>> {
        let c = self.pool.get().await.map_err(db_err)?;
        let exists = c
            .query_one("SELECT to_regclass('outrider_migrations') IS NOT NULL", &[])
            .await
            .map_err(db_err)?
            .get::<_, bool>(0);
        let done: Vec<String> = if exists {
            c.query("SELECT version FROM outrider_migrations", &[])
                .await
                .map_err(db_err)?
                .iter()
                .map(|r| r.get(0))
                .collect()
        } else {
            vec![]
        };
        Ok(MIGRATIONS
            .iter()
            .map(|(v, _)| v.to_string())
            .filter(|v| !done.contains(v))
            .collect())
    }

    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<Vec<Row>> {
        let c = self.pool.get().await.map_err(db_err)?;
        let stmt = c.prepare_cached(sql).await.map_err(db_err)?;
        c.query(&stmt, params).await.map_err(db_err)
    }
}

const EVENT_COLS: &str = "id, tenant_id, topic, eligible_for_retry, (EXTRACT(EPOCH FROM time) * 1000)::BIGINT, metadata::TEXT, data, matched_destination_ids";

fn event_row(r: &Row) -> StoreResult<Event> {
    let metadata: String = r.get(5);
    let data: String = r.get(6);
    Ok(Event {
        id: r.get(0),
        tenant_id: r.get(1),
        destination_id: None,
        topic: r.get(2),
        eligible_for_retry: r.get(3),
        time: r.get(4),
        time_ns: 0,
        metadata: serde_json::from_str::<StringMap>(&metadata).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        data: Arc::from(data),
        matched_destination_ids: r.get(7),
    })
}

const ATTEMPT_COLS: &str = "id, tenant_id, event_id, destination_id, destination_type, topic, attempt_number, manual, status, (EXTRACT(EPOCH FROM time) * 1000)::BIGINT, code, response_data";

fn attempt_row(r: &Row) -> StoreResult<Attempt> {
    let status: String = r.get(8);
    let rd: Option<String> = r.get(11);
    let n: i32 = r.get(6);
    Ok(Attempt {
        id: r.get(0),
        tenant_id: r.get(1),
        event_id: r.get(2),
        destination_id: r.get(3),
        destination_type: r.get(4),
        topic: r.get(5),
        attempt_number: n.max(0) as u32,
        manual: r.get(7),
        status: if status == "success" {
            AttemptStatus::Success
        } else {
            AttemptStatus::Failed
        },
        time: r.get(9),
        code: r.get(10),
        response_data: rd
            .map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?,
    })
}

/// A list query as SQL text and owned parameters.
struct Sql {
    text: String,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Sql {
    fn push(&mut self, clause: &str, p: Box<dyn ToSql + Sync + Send>) {
        self.params.push(p);
        // `$` in the clause stands for this parameter's number.
        self.text
            .push_str(&clause.replace('$', &format!("${}", self.params.len())));
    }

    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
    }
}

fn list_sql(table: &str, cols: &str, q: &ListQuery, attempts: bool) -> Sql {
    let mut s = Sql {
        text: format!("SELECT {cols} FROM {table} WHERE TRUE"),
        params: Vec::new(),
    };
    let arrays: [(&str, &Vec<String>); 3] = [("tenant_id", &q.tenant_ids), ("id", &q.ids), ("topic", &q.topics)];
    for (col, vals) in arrays {
        if !vals.is_empty() {
            s.push(&format!(" AND {col} = ANY($)"), Box::new(vals.clone()));
        }
    }
    if attempts {
        let arrays: [(&str, &Vec<String>); 3] = [
            ("event_id", &q.event_ids),
            ("destination_id", &q.destination_ids),
            ("destination_type", &q.destination_types),
        ];
        for (col, vals) in arrays {
            if !vals.is_empty() {
                s.push(&format!(" AND {col} = ANY($)"), Box::new(vals.clone()));
            }
        }
        if let Some(st) = q.status {
            s.push(" AND status = $", Box::new(st.as_str().to_string()));
        }
    } else if !q.destination_ids.is_empty() {
        s.push(" AND matched_destination_ids && $", Box::new(q.destination_ids.clone()));
    }
    for (op, v) in q.time_bounds() {
        if let Some(v) = v {
            s.push(&format!(" AND time {op} to_timestamp($::BIGINT / 1000.0)"), Box::new(v));
        }
    }
    let (cmp, order) = match q.dir {
        Dir::Asc => (">", "ASC"),
        Dir::Desc => ("<", "DESC"),
    };
    if let Some(seek) = &q.after {
        s.push(
            &format!(" AND (time, id) {cmp} (to_timestamp($::BIGINT / 1000.0)"),
            Box::new(seek.time_ms),
        );
        s.push(", $)", Box::new(seek.id.clone()));
    }
    s.push(
        &format!(" ORDER BY time {order}, id {order} LIMIT $"),
        Box::new(q.limit as i64),
    );
    s
}

/// Serialises retention across log nodes (the migration lock's neighbour),
/// per schema: deployments sharing a database do not skip each other's runs.
const RETENTION_LOCK: i64 = MIGRATION_LOCK + 1;

/// The log tables partitioned by day.
const PARTITIONED: [&str; 2] = ["events", "attempts"];

impl PostgresLogStore {
    /// One retention run ([`retention`]); another node running it now makes
    /// this one a no-op.
    async fn retain_days(&self, policy: retention::Policy) -> StoreResult<retention::Pruned> {
        let mut c = self.pool.get().await.map_err(db_err)?;
        let locked: bool = c
            .query_one(
                "SELECT pg_try_advisory_lock($1::BIGINT # hashtext(current_schema())::BIGINT)",
                &[&RETENTION_LOCK],
            )
            .await
            .map_err(db_err)?
            .get(0);
        if !locked {
            return Ok(retention::Pruned {
                skipped: true,
                ..Default::default()
            });
        }
        let result = retain_locked(&mut c, policy).await;
        let _ = c
            .execute(
                "SELECT pg_advisory_unlock($1::BIGINT # hashtext(current_schema())::BIGINT)",
                &[&RETENTION_LOCK],
            )
            .await;
        result
    }
}

async fn retain_locked(c: &mut deadpool_postgres::Object, policy: retention::Policy) -> StoreResult<retention::Pruned> {
    let mut out = retention::Pruned::default();
    for table in PARTITIONED {
        for day in policy.today + 1..=policy.today + retention::DAYS_AHEAD {
            if let Some(name) = ensure_partition(c, table, day).await? {
                out.partitions_created.push(name);
            }
        }
        for (name, day) in day_partitions(c, table).await? {
            if (day + 1) * retention::DAY_MS <= policy.cutoff_ms {
                c.batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
                    .await
                    .map_err(db_err)?;
                out.partitions_dropped.push(name);
            }
        }
    }
    // What is left before the cutoff sits in the default partition (rows
    // from before retention was turned on) or in partitions an operator made:
    // deleted a batch at a time, by the primary key.
    let cutoff = policy.cutoff_ms as f64 / 1000.0;
    for table in PARTITIONED {
        let sql = format!(
            "DELETE FROM {table} WHERE (time, id) IN
               (SELECT time, id FROM {table} WHERE time < to_timestamp($1::FLOAT8) LIMIT $2)"
        );
        let mut total = 0;
        loop {
            let n = c.execute(&sql, &[&cutoff, &retention::BATCH]).await.map_err(db_err)?;
            total += n;
            if n < retention::BATCH as u64 {
                break;
            }
        }
        if table == "events" {
            out.events = total;
        } else {
            out.attempts = total;
        }
    }
    for table in retention::ROLLUP_TABLES {
        out.rollup_rows += c
            .execute(
                &format!("DELETE FROM {table} WHERE res IN (1, 2, 3) AND unit < $1"),
                &[&policy.cutoff_ms],
            )
            .await
            .map_err(db_err)?;
    }
    Ok(out)
}

/// Creates `table`'s partition for `day` unless it exists; returns its name
/// when this call made it. Rows of that day already in the default partition
/// (published with a future time) move into it in the same transaction.
async fn ensure_partition(c: &mut deadpool_postgres::Object, table: &str, day: i64) -> StoreResult<Option<String>> {
    use tokio_postgres::error::SqlState;
    let (Some((ymd, from)), Some((_, to))) = (retention::day_names(day), retention::day_names(day + 1)) else {
        return Ok(None);
    };
    let name = format!("{table}_p{ymd}");
    let exists: bool = c
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await
        .map_err(db_err)?
        .get(0);
    if exists {
        return Ok(None);
    }
    let bounds = format!("FOR VALUES FROM ('{from}') TO ('{to}')");
    match c
        .batch_execute(&format!("CREATE TABLE {name} PARTITION OF {table} {bounds}"))
        .await
    {
        Ok(()) => Ok(Some(name)),
        // The default partition holds rows of that day.
        Err(e) if e.code() == Some(&SqlState::CHECK_VIOLATION) => {
            let tx = c.transaction().await.map_err(db_err)?;
            // Inserts into the default partition wait until the rows have
            // moved, so none is deleted without having been copied.
            tx.batch_execute(&format!(
                "LOCK TABLE ONLY {table} IN SHARE UPDATE EXCLUSIVE MODE;
                 LOCK TABLE {table}_default IN ACCESS EXCLUSIVE MODE;
                 CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS);
                 INSERT INTO {name} SELECT * FROM {table}_default WHERE time >= '{from}' AND time < '{to}';
                 DELETE FROM {table}_default WHERE time >= '{from}' AND time < '{to}';
                 ALTER TABLE {table} ATTACH PARTITION {name} {bounds};"
            ))
            .await
            .map_err(|e| StoreError::Database(format!("moving {table} rows into {name}: {}", with_causes(&e))))?;
            tx.commit().await.map_err(db_err)?;
            Ok(Some(name))
        }
        // A partition an operator made covers the day, or another node made
        // this one a moment ago.
        Err(e) if matches!(e.code(), Some(c) if *c == SqlState::INVALID_OBJECT_DEFINITION || *c == SqlState::DUPLICATE_TABLE) => {
            Ok(None)
        }
        Err(e) => Err(StoreError::Database(format!("creating {name}: {}", with_causes(&e)))),
    }
}

/// `table`'s daily partitions (`<table>_pYYYYMMDD`) with their day numbers;
/// other partitions (the default one, an operator's) are not listed.
async fn day_partitions(c: &deadpool_postgres::Object, table: &str) -> StoreResult<Vec<(String, i64)>> {
    let rows = c
        .query(
            "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = to_regclass($1)",
            &[&table],
        )
        .await
        .map_err(db_err)?;
    let prefix = format!("{table}_p");
    Ok(rows
        .iter()
        .filter_map(|r| {
            let name: String = r.get(0);
            let day = retention::parse_day(name.strip_prefix(&prefix)?)?;
            Some((name, day))
        })
        .collect())
}

impl LogStore for PostgresLogStore {
    fn retain(&self, policy: retention::Policy) -> BoxFuture<'_, StoreResult<retention::Pruned>> {
        Box::pin(self.retain_days(policy))
    }

    fn metric_scan(&self, scan: crate::metrics::Scan) -> BoxFuture<'_, StoreResult<Vec<crate::metrics::ScanRow>>> {
        use super::metrics_sql::{self, Arg, Dialect};
        Box::pin(async move {
            let (sql, args) = metrics_sql::scan(Dialect::Postgres, &scan);
            let params: Vec<Box<dyn ToSql + Sync + Send>> = args
                .into_iter()
                .map(|a| -> Box<dyn ToSql + Sync + Send> {
                    match a {
                        Arg::Int(i) => Box::new(i),
                        Arg::Text(t) => Box::new(t),
                    }
                })
                .collect();
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect();
            let n = scan.dims.len();
            let rows = self.query(&sql, &refs).await?;
            rows.iter()
                .map(|r| {
                    let mut dims = Vec::with_capacity(n);
                    for i in 0..n {
                        let v: Option<String> = r.try_get(1 + i).map_err(db_err)?;
                        dims.push(v.unwrap_or_default());
                    }
                    let at = |i: usize| r.try_get::<_, i64>(1 + n + i).map_err(db_err);
                    Ok((
                        r.try_get::<_, i64>(0).map_err(db_err)?,
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
                })
                .collect()
        })
    }

    fn list_events(&self, q: ListQuery) -> BoxFuture<'_, StoreResult<Vec<Event>>> {
        Box::pin(async move {
            let sql = list_sql("events", EVENT_COLS, &q, false);
            self.query(&sql.text, &sql.refs())
                .await?
                .iter()
                .map(event_row)
                .collect()
        })
    }

    fn get_event(&self, tenant_id: Option<String>, id: String) -> BoxFuture<'_, StoreResult<Option<Event>>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!(
                        "SELECT {EVENT_COLS} FROM events WHERE id = $1 AND ($2::TEXT IS NULL OR tenant_id = $2)
                         ORDER BY time DESC LIMIT 1"
                    ),
                    &[&id, &tenant_id],
                )
                .await?;
            rows.first().map(event_row).transpose()
        })
    }

    fn get_events(&self, keys: Vec<(String, String)>) -> BoxFuture<'_, StoreResult<Vec<Event>>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let (tenants, ids): (Vec<String>, Vec<String>) = keys.into_iter().unzip();
            self.query(
                &format!(
                    "SELECT DISTINCT ON (id, tenant_id) {EVENT_COLS} FROM events
                     JOIN unnest($1::TEXT[], $2::TEXT[]) AS k(t, i) ON tenant_id = k.t AND id = k.i
                     ORDER BY id, tenant_id, time DESC"
                ),
                &[&tenants, &ids],
            )
            .await?
            .iter()
            .map(event_row)
            .collect()
        })
    }

    fn list_attempts(&self, q: ListQuery) -> BoxFuture<'_, StoreResult<Vec<Attempt>>> {
        Box::pin(async move {
            let sql = list_sql("attempts", ATTEMPT_COLS, &q, true);
            self.query(&sql.text, &sql.refs())
                .await?
                .iter()
                .map(attempt_row)
                .collect()
        })
    }

    fn get_attempt(&self, tenant_id: Option<String>, id: String) -> BoxFuture<'_, StoreResult<Option<Attempt>>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!(
                        "SELECT {ATTEMPT_COLS} FROM attempts WHERE id = $1 AND ($2::TEXT IS NULL OR tenant_id = $2)
                         ORDER BY time DESC LIMIT 1"
                    ),
                    &[&id, &tenant_id],
                )
                .await?;
            rows.first().map(attempt_row).transpose()
        })
    }

    fn latest_attempt(
        &self,
        tenant_id: Option<String>,
        event_id: String,
        destination_id: String,
    ) -> BoxFuture<'_, StoreResult<Option<Attempt>>> {
        Box::pin(async move {
            let rows = self
                .query(
                    &format!(
                        "SELECT {ATTEMPT_COLS} FROM attempts
                         WHERE event_id = $1 AND destination_id = $2 AND ($3::TEXT IS NULL OR tenant_id = $3)
                         ORDER BY attempt_number DESC, time DESC LIMIT 1"
                    ),
                    &[&event_id, &destination_id, &tenant_id],
                )
                .await?;
            rows.first().map(attempt_row).transpose()
        })
    }
}

/// Adds a batch's counts to the rollup tables, one `UNNEST` upsert per
/// table, rows sorted so that concurrent writers lock them in one order.
async fn apply_rollups(tx: &tokio_postgres::Transaction<'_>, d: &crate::metrics::RollupDelta) -> StoreResult<()> {
    use super::metrics_sql::res;
    if d.is_empty() {
        return Ok(());
    }
    let mut ev: Vec<_> = d
        .events
        .iter()
        .map(|((s, u, t, p), n)| (res(*s), *u, t, p, *n))
        .collect();
    ev.sort();
    if !ev.is_empty() {
        let r: Vec<i16> = ev.iter().map(|x| x.0 as i16).collect();
        let u: Vec<i64> = ev.iter().map(|x| x.1).collect();
        let t: Vec<&str> = ev.iter().map(|x| x.2.as_str()).collect();
        let p: Vec<&str> = ev.iter().map(|x| x.3.as_str()).collect();
        let n: Vec<i64> = ev.iter().map(|x| x.4).collect();
        tx.execute(
            "INSERT INTO metric_events (res, unit, tenant_id, topic, n)
             SELECT * FROM UNNEST($1::SMALLINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[])
             ON CONFLICT (res, unit, tenant_id, topic) DO UPDATE SET n = metric_events.n + EXCLUDED.n",
            &[&r, &u, &t, &p, &n],
        )
        .await
        .map_err(write_err)?;
    }
    let mut ed: Vec<_> = d
        .event_destinations
        .iter()
        .map(|((s, u, t, p, dest), n)| (res(*s), *u, t, p, dest, *n))
        .collect();
    ed.sort();
    if !ed.is_empty() {
        let r: Vec<i16> = ed.iter().map(|x| x.0 as i16).collect();
        let u: Vec<i64> = ed.iter().map(|x| x.1).collect();
        let t: Vec<&str> = ed.iter().map(|x| x.2.as_str()).collect();
        let p: Vec<&str> = ed.iter().map(|x| x.3.as_str()).collect();
        let dest: Vec<&str> = ed.iter().map(|x| x.4.as_str()).collect();
        let n: Vec<i64> = ed.iter().map(|x| x.5).collect();
        tx.execute(
            "INSERT INTO metric_event_destinations (res, unit, tenant_id, topic, destination_id, n)
             SELECT * FROM UNNEST($1::SMALLINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[])
             ON CONFLICT (res, unit, tenant_id, topic, destination_id)
             DO UPDATE SET n = metric_event_destinations.n + EXCLUDED.n",
            &[&r, &u, &t, &p, &dest, &n],
        )
        .await
        .map_err(write_err)?;
    }
    let mut at: Vec<_> = d.attempts.iter().map(|((s, u, k), p)| (res(*s), *u, k, *p)).collect();
    at.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    if !at.is_empty() {
        let r: Vec<i16> = at.iter().map(|x| x.0 as i16).collect();
        let u: Vec<i64> = at.iter().map(|x| x.1).collect();
        let t: Vec<&str> = at.iter().map(|x| x.2.tenant_id.as_str()).collect();
        let dest: Vec<&str> = at.iter().map(|x| x.2.destination_id.as_str()).collect();
        let kind: Vec<&str> = at.iter().map(|x| x.2.destination_type.as_str()).collect();
        let topic: Vec<&str> = at.iter().map(|x| x.2.topic.as_str()).collect();
        let col = |f: fn(&crate::metrics::Partial) -> i64| -> Vec<i64> { at.iter().map(|x| f(&x.3)).collect() };
        let (n, ok, bad, first, retry, manual, sum) = (
            col(|p| p.count),
            col(|p| p.successful),
            col(|p| p.failed),
            col(|p| p.first),
            col(|p| p.retry),
            col(|p| p.manual),
            col(|p| p.attempt_number_sum),
        );
        tx.execute(
            "INSERT INTO metric_attempts (res, unit, tenant_id, destination_id, destination_type, topic,
                                          n, successful, failed, first_n, retry_n, manual_n, attempt_sum)
             SELECT * FROM UNNEST($1::SMALLINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[],
                                  $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[],
                                  $13::BIGINT[])
             ON CONFLICT (res, unit, tenant_id, destination_id, destination_type, topic) DO UPDATE SET
                 n = metric_attempts.n + EXCLUDED.n,
                 successful = metric_attempts.successful + EXCLUDED.successful,
                 failed = metric_attempts.failed + EXCLUDED.failed,
                 first_n = metric_attempts.first_n + EXCLUDED.first_n,
                 retry_n = metric_attempts.retry_n + EXCLUDED.retry_n,
                 manual_n = metric_attempts.manual_n + EXCLUDED.manual_n,
                 attempt_sum = metric_attempts.attempt_sum + EXCLUDED.attempt_sum",
            &[
                &r, &u, &t, &dest, &kind, &topic, &n, &ok, &bad, &first, &retry, &manual, &sum,
            ],
        )
        .await
        .map_err(write_err)?;
    }
    let mut per_tenant: Vec<_> = d
        .attempts_tenant
        .iter()
        .map(|((s, u, t), p)| (res(*s), *u, t, *p))
        .collect();
    per_tenant.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    if !per_tenant.is_empty() {
        let r: Vec<i16> = per_tenant.iter().map(|x| x.0 as i16).collect();
        let u: Vec<i64> = per_tenant.iter().map(|x| x.1).collect();
        let t: Vec<&str> = per_tenant.iter().map(|x| x.2.as_str()).collect();
        let col = |f: fn(&crate::metrics::Partial) -> i64| -> Vec<i64> { per_tenant.iter().map(|x| f(&x.3)).collect() };
        let (n, ok, bad, first, retry, manual, sum) = (
            col(|p| p.count),
            col(|p| p.successful),
            col(|p| p.failed),
            col(|p| p.first),
            col(|p| p.retry),
            col(|p| p.manual),
            col(|p| p.attempt_number_sum),
        );
        tx.execute(
            "INSERT INTO metric_attempts_tenant (res, unit, tenant_id,
                                                 n, successful, failed, first_n, retry_n, manual_n, attempt_sum)
             SELECT * FROM UNNEST($1::SMALLINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], $6::BIGINT[],
                                  $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[])
             ON CONFLICT (res, unit, tenant_id) DO UPDATE SET
                 n = metric_attempts_tenant.n + EXCLUDED.n,
                 successful = metric_attempts_tenant.successful + EXCLUDED.successful,
                 failed = metric_attempts_tenant.failed + EXCLUDED.failed,
                 first_n = metric_attempts_tenant.first_n + EXCLUDED.first_n,
                 retry_n = metric_attempts_tenant.retry_n + EXCLUDED.retry_n,
                 manual_n = metric_attempts_tenant.manual_n + EXCLUDED.manual_n,
                 attempt_sum = metric_attempts_tenant.attempt_sum + EXCLUDED.attempt_sum",
            &[&r, &u, &t, &n, &ok, &bad, &first, &retry, &manual, &sum],
        )
        .await
        .map_err(write_err)?;
    }
    let mut wide: Vec<_> = d
        .attempts_wide
        .iter()
        .map(|((s, u, k, w), n)| (res(*s), *u, k, w, *n))
        .collect();
    wide.sort();
    if !wide.is_empty() {
        let r: Vec<i16> = wide.iter().map(|x| x.0 as i16).collect();
        let u: Vec<i64> = wide.iter().map(|x| x.1).collect();
        let t: Vec<&str> = wide.iter().map(|x| x.2.tenant_id.as_str()).collect();
        let dest: Vec<&str> = wide.iter().map(|x| x.2.destination_id.as_str()).collect();
        let kind: Vec<&str> = wide.iter().map(|x| x.2.destination_type.as_str()).collect();
        let topic: Vec<&str> = wide.iter().map(|x| x.2.topic.as_str()).collect();
        let status: Vec<&str> = wide.iter().map(|x| x.3.status.as_str()).collect();
        let code: Vec<&str> = wide.iter().map(|x| x.3.code.as_str()).collect();
        let manual: Vec<bool> = wide.iter().map(|x| x.3.manual).collect();
        let number: Vec<i32> = wide.iter().map(|x| x.3.attempt_number as i32).collect();
        let n: Vec<i64> = wide.iter().map(|x| x.4).collect();
        tx.execute(
            "INSERT INTO metric_attempts_wide (res, unit, tenant_id, destination_id, destination_type, topic,
                                               status, code, manual, attempt_number, n)
             SELECT * FROM UNNEST($1::SMALLINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[],
                                  $7::TEXT[], $8::TEXT[], $9::BOOL[], $10::INT[], $11::BIGINT[])
             ON CONFLICT (res, unit, tenant_id, destination_id, destination_type, topic, status, code, manual, attempt_number)
             DO UPDATE SET n = metric_attempts_wide.n + EXCLUDED.n",
            &[&r, &u, &t, &dest, &kind, &topic, &status, &code, &manual, &number, &n],
        )
        .await
        .map_err(write_err)?;
    }
    Ok(())
}

impl LogWriter for PostgresLogStore {
    fn write_logs(&self, events: Vec<Arc<Event>>, attempts: Vec<Attempt>) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let mut c = self.pool.get().await.map_err(db_err)?;
            let tx = c.transaction().await.map_err(db_err)?;
            let mut delta = crate::metrics::RollupDelta::default();
            if !events.is_empty() {
                let id: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
                let tenant: Vec<&str> = events.iter().map(|e| e.tenant_id.as_str()).collect();
                let time: Vec<i64> = events.iter().map(|e| e.time).collect();
                let topic: Vec<&str> = events.iter().map(|e| e.topic.as_str()).collect();
                let retry: Vec<bool> = events.iter().map(|e| e.eligible_for_retry).collect();
                let data: Vec<&str> = events.iter().map(|e| &*e.data).collect();
                let meta: Vec<String> = events
                    .iter()
                    .map(|e| serde_json::to_string(&e.metadata).unwrap_or_else(|_| "{}".into()))
                    .collect();
                // Arrays of arrays must be rectangular in PostgreSQL, so the
                // matched ids travel as JSON text and are unpacked in SQL.
                let matched: Vec<String> = events
                    .iter()
                    .map(|e| serde_json::to_string(&e.matched_destination_ids).unwrap_or_else(|_| "[]".into()))
                    .collect();
                let inserted = tx
                    .query(
                        "INSERT INTO events (id, tenant_id, time, topic, eligible_for_retry, data, metadata, matched_destination_ids)
                         SELECT u.id, u.tenant_id, to_timestamp(u.ms / 1000.0), u.topic, u.retry, u.data, u.meta::JSONB,
                                ARRAY(SELECT jsonb_array_elements_text(u.matched::JSONB))
                         FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[], $4::TEXT[], $5::BOOL[], $6::TEXT[], $7::TEXT[], $8::TEXT[])
                              AS u(id, tenant_id, ms, topic, retry, data, meta, matched)
                         ON CONFLICT DO NOTHING
                         RETURNING id",
                        &[&id, &tenant, &time, &topic, &retry, &data, &meta, &matched],
                    )
                    .await
                    .map_err(write_err)?;
                // Only events stored now are counted (a replayed write is not).
                let new: std::collections::HashSet<String> = inserted.iter().map(|r| r.get::<_, String>(0)).collect();
                for e in &events {
                    if new.contains(&e.id) {
                        delta.add_event(e, 1);
                    }
                }
            }
            if !attempts.is_empty() {
                // Attempts already stored under the same (time, id): the
                // upsert below changes their status and code, so their old
                // contribution to the rollups is taken back.
                let keys_ms: Vec<i64> = attempts.iter().map(|x| x.time).collect();
                let keys_id: Vec<&str> = attempts.iter().map(|x| x.id.as_str()).collect();
                let old = tx
                    .query(
                        &format!(
                            "SELECT {ATTEMPT_COLS} FROM attempts
                             WHERE (time, id) IN (SELECT to_timestamp(u.ms / 1000.0), u.id
                                                  FROM UNNEST($1::BIGINT[], $2::TEXT[]) AS u(ms, id))"
                        ),
                        &[&keys_ms, &keys_id],
                    )
                    .await
                    .map_err(write_err)?;
                let mut stored = std::collections::HashMap::new();
                for r in &old {
                    let a = attempt_row(r)?;
                    stored.insert(a.id.clone(), a);
                }
                for a in &attempts {
                    match stored.get(&a.id) {
                        Some(before) => {
                            delta.add_attempt(before, -1);
                            let mut after = before.clone();
                            after.status = a.status;
                            after.code = a.code.clone();
                            delta.add_attempt(&after, 1);
                        }
                        None => delta.add_attempt(a, 1),
                    }
                }
                let a = &attempts;
                let id: Vec<&str> = a.iter().map(|x| x.id.as_str()).collect();
                let event: Vec<&str> = a.iter().map(|x| x.event_id.as_str()).collect();
                let dest: Vec<&str> = a.iter().map(|x| x.destination_id.as_str()).collect();
                let kind: Vec<&str> = a.iter().map(|x| x.destination_type.as_str()).collect();
                let status: Vec<&str> = a.iter().map(|x| x.status.as_str()).collect();
                let time: Vec<i64> = a.iter().map(|x| x.time).collect();
                let code: Vec<Option<&str>> = a.iter().map(|x| x.code.as_deref()).collect();
                let rd: Vec<Option<String>> = a
                    .iter()
                    .map(|x| x.response_data.as_ref().map(|v| v.to_string()))
                    .collect();
                let manual: Vec<bool> = a.iter().map(|x| x.manual).collect();
                let number: Vec<i32> = a.iter().map(|x| x.attempt_number as i32).collect();
                let tenant: Vec<&str> = a.iter().map(|x| x.tenant_id.as_str()).collect();
                let topic: Vec<&str> = a.iter().map(|x| x.topic.as_str()).collect();
                tx.execute(
                    "INSERT INTO attempts (id, event_id, destination_id, destination_type, status, time, code, response_data,
                                           manual, attempt_number, tenant_id, topic)
                     SELECT u.id, u.event_id, u.dest, u.kind, u.status, to_timestamp(u.ms / 1000.0), u.code, u.rd,
                            u.manual, u.n, u.tenant_id, u.topic
                     FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::BIGINT[], $7::TEXT[],
                                 $8::TEXT[], $9::BOOL[], $10::INT[], $11::TEXT[], $12::TEXT[])
                          AS u(id, event_id, dest, kind, status, ms, code, rd, manual, n, tenant_id, topic)
                     ON CONFLICT (time, id) DO UPDATE
                     SET status = EXCLUDED.status, code = EXCLUDED.code, response_data = EXCLUDED.response_data",
                    &[&id, &event, &dest, &kind, &status, &time, &code, &rd, &manual, &number, &tenant, &topic],
                )
                .await
                .map_err(write_err)?;
            }
            apply_rollups(&tx, &delta).await?;
            tx.commit().await.map_err(write_err)
        })
    }

    fn dead_letter(&self, letters: Vec<DeadLetter>) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            let c = self.pool.get().await.map_err(db_err)?;
            let kind: Vec<&str> = letters.iter().map(|l| l.kind).collect();
            let id: Vec<&str> = letters.iter().map(|l| l.record_id.as_str()).collect();
            let tenant: Vec<&str> = letters.iter().map(|l| l.tenant_id.as_str()).collect();
            let error: Vec<&str> = letters.iter().map(|l| l.error.as_str()).collect();
            let record: Vec<&str> = letters.iter().map(|l| l.record.as_str()).collect();
            c.execute(
                "INSERT INTO log_dead_letters (kind, record_id, tenant_id, error, record)
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])",
                &[&kind, &id, &tenant, &error, &record],
            )
            .await
            .map_err(db_err)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test database; override with OUTRIDER_TEST_POSTGRES_URL.
    fn base_url() -> String {
        std::env::var("OUTRIDER_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// A fresh schema per test, so runs never see each other's rows. A missing
    /// database fails the test with a clear message (never a silent pass).
    async fn fresh() -> (PostgresLogStore, String) {
        let base = base_url();
        let schema = format!("outrider_t_{}", crate::ids::random_hex(6));
        let admin = PostgresLogStore::connect(&base, Duration::from_secs(5)).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is required for this test and is not reachable at {base}: {e} (start it with scripts/services.sh up)")
        });
        admin
            .pool
            .get()
            .await
            .unwrap()
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        let store = PostgresLogStore::connect(&url, Duration::from_secs(5)).await.unwrap();
        (store, schema)
    }

    async fn drop_schema(schema: &str) {
        if let Ok(s) = PostgresLogStore::connect(&base_url(), Duration::from_secs(5)).await {
            let _ = s
                .pool
                .get()
                .await
                .unwrap()
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .await;
        }
    }

    #[tokio::test]
    async fn migrations_apply_once() {
        let (s, schema) = fresh().await;
        let all = vec!["0001_logs", "0002_log_dead_letters", "0003_metric_rollups"];
        assert_eq!(s.pending_migrations().await.unwrap(), all);
        assert_eq!(s.migrate().await.unwrap(), all);
        assert!(s.migrate().await.unwrap().is_empty(), "second run applies nothing");
        assert!(s.pending_migrations().await.unwrap().is_empty());
        drop_schema(&schema).await;
    }

    #[tokio::test]
    async fn log_store_conformance() {
        let (s, schema) = fresh().await;
        s.migrate().await.unwrap();
        crate::store::conformance::run_all(&s, &s).await;
        drop_schema(&schema).await;
    }

    #[tokio::test]
    async fn metrics_conformance() {
        let (s, schema) = fresh().await;
        s.migrate().await.unwrap();
        crate::store::conformance::run_metrics(&s, &s).await;
        drop_schema(&schema).await;
    }

    #[tokio::test]
    async fn retention_conformance() {
        let (s, schema) = fresh().await;
        s.migrate().await.unwrap();
        crate::store::conformance::run_retention(&s, &s).await;
        drop_schema(&schema).await;
    }

    /// Daily partitions: made ahead, dropped whole once past retention, and
    /// a day's rows already in the default partition move into its new one.
    #[tokio::test]
    async fn retention_drops_whole_day_partitions() {
        use crate::store::retention::{Policy, DAY_MS};
        const NOW: i64 = 1_796_464_800_000; // 2026-12-05T10:00:00Z
        let (s, schema) = fresh().await;
        s.migrate().await.unwrap();
        let first = s.retain(Policy::new(NOW - 5 * DAY_MS, 2, 0)).await.unwrap();
        let made = |t: &str| -> Vec<String> {
            ["20261201", "20261202", "20261203"]
                .map(|d| format!("{t}_p{d}"))
                .to_vec()
        };
        assert_eq!(first.partitions_created, [made("events"), made("attempts")].concat());
        assert!(first.partitions_dropped.is_empty());

        let ev = |id: &str, t: i64| {
            Arc::new(Event {
                id: id.into(),
                tenant_id: "pt".into(),
                destination_id: None,
                topic: "x".into(),
                eligible_for_retry: true,
                time: t,
                time_ns: 0,
                metadata: StringMap::new(),
                data: Arc::from("{}"),
                matched_destination_ids: vec!["pd".into()],
            })
        };
        let at = |id: &str, t: i64| Attempt {
            id: format!("a-{id}"),
            tenant_id: "pt".into(),
            event_id: id.into(),
            destination_id: "pd".into(),
            destination_type: "webhook".into(),
            attempt_number: 1,
            manual: false,
            status: AttemptStatus::Success,
            time: t,
            code: Some("200".into()),
            response_data: None,
            topic: "x".into(),
        };
        let midnight = NOW - NOW % DAY_MS; // 2026-12-05
        let rows = [
            ("dec01", midnight - 4 * DAY_MS + 5_000),
            ("dec02", midnight - 3 * DAY_MS + 5_000),
            ("dec03", midnight - 2 * DAY_MS + 5_000),
            ("dec05", midnight + 5_000),
            // Published with a time two days ahead: in the default partition
            // until its day's partition is made.
            ("dec07", midnight + 2 * DAY_MS + 5_000),
        ];
        s.write_logs(
            rows.iter().map(|(id, t)| ev(id, *t)).collect(),
            rows.iter().map(|(id, t)| at(id, *t)).collect(),
        )
        .await
        .unwrap();
        let c = s.pool.get().await.unwrap();
        let count = |sql: String| {
            let c = &c;
            async move { c.query_one(&sql, &[]).await.unwrap().get::<_, i64>(0) }
        };
        assert_eq!(count("SELECT count(*) FROM ONLY events_p20261201".into()).await, 1);
        assert_eq!(count("SELECT count(*) FROM ONLY events_default".into()).await, 2);

        let second = s.retain(Policy::new(NOW, 2, 0)).await.unwrap();
        let day = |t: &str, d: &str| format!("{t}_p{d}");
        assert_eq!(
            second.partitions_dropped,
            [
                day("events", "20261201"),
                day("events", "20261202"),
                day("attempts", "20261201"),
                day("attempts", "20261202")
            ]
        );
        assert_eq!(
            second.partitions_created,
            ["events", "attempts"]
                .iter()
                .flat_map(|t| ["20261206", "20261207", "20261208"].map(|d| day(t, d)))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            (second.events, second.attempts),
            (0, 0),
            "whole partitions, no row deletes"
        );
        for gone in [
            "events_p20261201",
            "events_p20261202",
            "attempts_p20261201",
            "attempts_p20261202",
        ] {
            assert_eq!(
                count(format!("SELECT count(*) FROM pg_class WHERE relname = '{gone}'")).await,
                0
            );
        }
        // The row dated two days ahead moved into its day's partition.
        assert_eq!(count("SELECT count(*) FROM ONLY events_p20261207".into()).await, 1);
        assert_eq!(count("SELECT count(*) FROM ONLY attempts_p20261207".into()).await, 1);
        assert_eq!(count("SELECT count(*) FROM ONLY events_default".into()).await, 1);
        let q = ListQuery {
            tenant_ids: vec!["pt".into()],
            ..Default::default()
        };
        let ids: Vec<String> = s
            .list_events(q.clone())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, ["dec07", "dec05", "dec03"]);
        let ids: Vec<String> = s.list_attempts(q).await.unwrap().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["a-dec07", "a-dec05", "a-dec03"]);

        let third = s.retain(Policy::new(NOW, 2, 0)).await.unwrap();
        assert_eq!(third, Default::default(), "nothing left to do");
        // Another node running it: this one says it skipped, not that it ran.
        let holder = s.pool.get().await.unwrap();
        holder
            .execute(
                "SELECT pg_advisory_lock($1::BIGINT # hashtext(current_schema())::BIGINT)",
                &[&RETENTION_LOCK],
            )
            .await
            .unwrap();
        let busy = s.retain(Policy::new(NOW, 2, 0)).await.unwrap();
        assert!(busy.skipped, "{busy:?}");
        holder
            .execute(
                "SELECT pg_advisory_unlock($1::BIGINT # hashtext(current_schema())::BIGINT)",
                &[&RETENTION_LOCK],
            )
            .await
            .unwrap();
        drop(holder);
        drop(c);
        drop_schema(&schema).await;
    }

    #[tokio::test]
    async fn unreachable_database_is_a_clear_error() {
        let e = PostgresLogStore::connect("postgres://nobody@127.0.0.1:1/none", Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot reach PostgreSQL"), "{e}");
    }
}
