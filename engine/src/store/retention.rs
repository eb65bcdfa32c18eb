//! Log retention (`LOG_RETENTION_DAYS`): the log's home store deletes
//! events, attempts and their metrics rollups older than the cutoff, once at
//! start and then every [`INTERVAL`]. PostgreSQL keeps one partition per UTC
//! day (created [`DAYS_AHEAD`] days ahead) and drops whole partitions; the
//! embedded store deletes rows in small batches so deliveries' index writes
//! never wait long behind it.

use std::sync::Arc;
use std::time::Duration;

use super::LogStore;

pub const DAY_MS: i64 = 86_400_000;

/// How often retention runs after the first run at start.
pub const INTERVAL: Duration = Duration::from_secs(3600);

/// Daily partitions exist this many days ahead of today, so rows of a new
/// day never land in the default partition (and never have to be moved).
pub const DAYS_AHEAD: i64 = 3;

/// Rows deleted per statement where rows are deleted one by one.
pub const BATCH: i64 = 5_000;

/// The metrics rollup tables; their `unit` is a bucket's start in ms.
pub const ROLLUP_TABLES: [&str; 5] = [
    "metric_events",
    "metric_event_destinations",
    "metric_attempts",
    "metric_attempts_wide",
    "metric_attempts_tenant",
];

/// What one run may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Rows with a time before this (a UTC midnight, in ms) are deleted.
    pub cutoff_ms: i64,
    /// Today's UTC day number (days since 1970-01-01): partitions are made
    /// for the days after it.
    pub today: i64,
    /// Events accepted at or after this time (ms) are kept whatever their
    /// own time says: publish idempotency is judged against them.
    pub keep_accepted_after: i64,
}

impl Policy {
    /// Keeps `days` whole UTC days before today's midnight, and today.
    pub fn new(now_ms: i64, days: u32, idempotency_window_ms: i64) -> Self {
        let today = now_ms.div_euclid(DAY_MS);
        Policy {
            cutoff_ms: (today - i64::from(days)) * DAY_MS,
            today,
            keep_accepted_after: now_ms - idempotency_window_ms,
        }
    }
}

/// What a run deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Whole partitions dropped (PostgreSQL), by name.
    pub partitions_dropped: Vec<String>,
    /// Partitions created ahead (PostgreSQL), by name.
    pub partitions_created: Vec<String>,
    /// Rows deleted one by one (embedded, or PostgreSQL's default partition).
    pub events: u64,
    pub attempts: u64,
    pub rollup_rows: u64,
    /// Another node held the retention lock, so this one did nothing.
    pub skipped: bool,
}

/// The UTC date of a day number, as `YYYYMMDD` and as a timestamp literal.
pub fn day_names(day: i64) -> Option<(String, String)> {
    let d = chrono::DateTime::from_timestamp(day.checked_mul(86_400)?, 0)?.date_naive();
    Some((
        d.format("%Y%m%d").to_string(),
        format!("{} 00:00:00+00", d.format("%Y-%m-%d")),
    ))
}

/// The day number of a `YYYYMMDD` name part.
pub fn parse_day(s: &str) -> Option<i64> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let d = chrono::NaiveDate::parse_from_str(s, "%Y%m%d").ok()?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
    Some((d - epoch).num_days())
}

/// Runs retention on `store` now and then every [`INTERVAL`], until the task
/// is dropped. A failed run is logged and tried again at the next interval.
pub async fn run(store: Arc<dyn LogStore>, days: u32, idempotency_window_ms: i64, stats: Arc<Stats>) {
    loop {
        let policy = Policy::new(crate::timefmt::now_ms(), days, idempotency_window_ms);
        match store.retain(policy).await {
            Ok(p) if p.skipped => {
                tracing::debug!(days, "log retention skipped: another node is running it");
            }
            Ok(p) => {
                stats.record(&p);
                tracing::info!(
                    days,
                    dropped = ?p.partitions_dropped,
                    created = p.partitions_created.len(),
                    events = p.events,
                    attempts = p.attempts,
                    rollup_rows = p.rollup_rows,
                    "log retention ran"
                );
            }
            Err(e) => {
                stats.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(error = %e, "log retention failed; trying again in an hour");
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// Counters for `GET /metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    pub runs: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    pub partitions_dropped: std::sync::atomic::AtomicU64,
    pub rows_deleted: std::sync::atomic::AtomicU64,
}

impl Stats {
    fn record(&self, p: &Pruned) {
        use std::sync::atomic::Ordering::Relaxed;
        self.runs.fetch_add(1, Relaxed);
        self.partitions_dropped
            .fetch_add(p.partitions_dropped.len() as u64, Relaxed);
        self.rows_deleted.fetch_add(p.events + p.attempts, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_is_a_utc_midnight_days_before_today() {
        // 2026-12-05T10:00:00Z
        let now = 1_796_464_800_000;
        let p = Policy::new(now, 2, 3_600_000);
        assert_eq!(p.cutoff_ms % DAY_MS, 0);
        assert_eq!(day_names(p.cutoff_ms / DAY_MS).unwrap().0, "20261203");
        assert_eq!(
            day_names(p.today).unwrap(),
            ("20261205".into(), "2026-12-05 00:00:00+00".into())
        );
        assert_eq!(p.keep_accepted_after, now - 3_600_000);
    }

    #[test]
    fn day_names_round_trip_and_odd_names_are_not_days() {
        for day in [-1, 0, 20_427, 2_932_896] {
            assert_eq!(parse_day(&day_names(day).unwrap().0), Some(day));
        }
        for bad in ["2026120", "2026-12-", "20261332", "2026120x", "202612055"] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
    }
}
