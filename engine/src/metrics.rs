//! The metrics API's query model (Outpost's `GET /metrics/events` and
//! `GET /metrics/attempts`): granularities and their UTC buckets, measures,
//! dimensions, and the plan that answers a query from the log store's
//! rollups.
//!
//! The stores keep per-minute, per-hour and per-day rollups of events and attempts,
//! updated in the same transaction as the rows they count (so a replayed
//! write is not counted twice). A query is split into the part its buckets
//! can take from the coarsest rollup, finer rollups around it, and raw rows
//! at the edges (a range that does not start or end on a minute): a week of
//! hourly buckets reads 168 hours of rollup rows, never the attempts.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// 1969-12-28, the Sunday before the epoch: weeks start on Sunday.
const SUNDAY_EPOCH: i64 = -4 * DAY;

/// At most this many rows are returned (Outpost's limit).
pub const ROW_LIMIT: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    Month,
}

/// `<n><unit>`, e.g. `1h`, `15m`, `1M`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Granularity {
    pub n: i64,
    pub unit: Unit,
}

impl Granularity {
    /// Outpost's syntax and bounds: s 1–60, m 1–60, h 1–24, d 1–31, w 1–4, M 1–12.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid granularity {s:?}: use <n><unit> with unit s, m, h, d, w or M (e.g. 1h)");
        // By character: the input is anyone's text, and a byte split
        // inside a multi-byte character would panic.
        let Some(last) = s.chars().last() else {
            return Err(bad());
        };
        let (digits, unit) = s.split_at(s.len() - last.len_utf8());
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 3 {
            return Err(bad());
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        let (unit_kind, max) = match unit {
            "s" => (Unit::Second, 60),
            "m" => (Unit::Minute, 60),
            "h" => (Unit::Hour, 24),
            "d" => (Unit::Day, 31),
            "w" => (Unit::Week, 4),
            "M" => (Unit::Month, 12),
            _ => return Err(bad()),
        };
        if n < 1 || n > max {
            return Err(format!("invalid granularity {s:?}: {unit} takes 1 to {max}"));
        }
        Ok(Self { n, unit: unit_kind })
    }

    pub fn text(&self) -> String {
        let u = match self.unit {
            Unit::Second => "s",
            Unit::Minute => "m",
            Unit::Hour => "h",
            Unit::Day => "d",
            Unit::Week => "w",
            Unit::Month => "M",
        };
        format!("{}{u}", self.n)
    }

    /// The fixed length of a bucket, for every unit but months.
    fn fixed_ms(&self) -> Option<i64> {
        let unit = match self.unit {
            Unit::Second => SECOND,
            Unit::Minute => MINUTE,
            Unit::Hour => HOUR,
            Unit::Day => DAY,
            Unit::Week => 7 * DAY,
            Unit::Month => return None,
        };
        Some(self.n * unit)
    }

    /// The start of the bucket holding `ms`. Seconds, minutes and hours are
    /// aligned on their value from the epoch (15m: :00, :15, …); one day is
    /// a UTC day, one week starts on Sunday, one month on the 1st; larger
    /// multiples of days, weeks and months count from the epoch.
    pub fn floor(&self, ms: i64) -> i64 {
        match self.fixed_ms() {
            Some(len) => {
                let anchor = if self.unit == Unit::Week { SUNDAY_EPOCH } else { 0 };
                anchor + (ms - anchor).div_euclid(len) * len
            }
            None => {
                let d = DateTime::from_timestamp_millis(ms).unwrap_or_default();
                let months = (d.year() as i64 - 1970) * 12 + d.month0() as i64;
                month_start(months.div_euclid(self.n) * self.n)
            }
        }
    }

    /// The start of the bucket after the one starting at `start`.
    pub fn next(&self, start: i64) -> i64 {
        match self.fixed_ms() {
            Some(len) => start + len,
            None => {
                let d = DateTime::from_timestamp_millis(start).unwrap_or_default();
                let months = (d.year() as i64 - 1970) * 12 + d.month0() as i64;
                month_start(months + self.n)
            }
        }
    }

    /// The coarsest rollup whose units never straddle one of these buckets.
    fn finest_source(&self) -> Source {
        match self.unit {
            Unit::Second => Source::Raw,
            Unit::Minute => Source::Minute,
            Unit::Hour => Source::Hour,
            // Days, Sunday weeks, months and multiples counted from the
            // epoch all start at a UTC midnight.
            Unit::Day | Unit::Week | Unit::Month => Source::Day,
        }
    }
}

/// Covers `[s, e)`: the part aligned to `levels[0]` recursively with the
/// coarser levels, the rest from `outer` (the next finer source).
fn split(s: i64, e: i64, levels: &[Source], outer: Source, out: &mut Vec<(Source, i64, i64)>) {
    let Some((&level, coarser)) = levels.split_first() else {
        out.push((outer, s, e));
        return;
    };
    let u = level.unit_ms();
    let a = s.div_euclid(u) * u + if s.rem_euclid(u) == 0 { 0 } else { u };
    let b = e.div_euclid(u) * u;
    if a >= b {
        out.push((outer, s, e));
        return;
    }
    out.push((outer, s, a));
    split(a, b, coarser, level, out);
    out.push((outer, b, e));
}

/// Milliseconds at the start of month `m` counted from January 1970.
fn month_start(m: i64) -> i64 {
    let year = 1970 + m.div_euclid(12);
    let month = m.rem_euclid(12) as u32 + 1;
    NaiveDate::from_ymd_opt(year as i32, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| Utc.from_utc_datetime(&t).timestamp_millis())
        .unwrap_or(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dataset {
    Events,
    Attempts,
}

/// What a scan reads: raw rows (grouped by second), or a rollup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Raw,
    Minute,
    Hour,
    Day,
}

/// The rollups, finest first.
pub const ROLLUPS: [Source; 3] = [Source::Minute, Source::Hour, Source::Day];

impl Source {
    pub fn unit_ms(self) -> i64 {
        match self {
            Source::Raw => SECOND,
            Source::Minute => MINUTE,
            Source::Hour => HOUR,
            Source::Day => DAY,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    TenantId,
    Topic,
    DestinationId,
    DestinationType,
    Status,
    Code,
    Manual,
    AttemptNumber,
}

impl Dim {
    pub fn name(self) -> &'static str {
        match self {
            Dim::TenantId => "tenant_id",
            Dim::Topic => "topic",
            Dim::DestinationId => "destination_id",
            Dim::DestinationType => "destination_type",
            Dim::Status => "status",
            Dim::Code => "code",
            Dim::Manual => "manual",
            Dim::AttemptNumber => "attempt_number",
        }
    }

    /// The dimensions a dataset has, by name.
    pub fn parse(dataset: Dataset, name: &str) -> Option<Dim> {
        let d = match name {
            "tenant_id" => Dim::TenantId,
            "topic" => Dim::Topic,
            "destination_id" => Dim::DestinationId,
            "destination_type" => Dim::DestinationType,
            "status" => Dim::Status,
            "code" => Dim::Code,
            "manual" => Dim::Manual,
            "attempt_number" => Dim::AttemptNumber,
            _ => return None,
        };
        match dataset {
            Dataset::Events if !matches!(d, Dim::TenantId | Dim::Topic | Dim::DestinationId) => None,
            _ => Some(d),
        }
    }

    /// Dimensions the narrow attempt rollup keeps; the others need the wide one.
    pub fn in_narrow_rollup(self) -> bool {
        matches!(
            self,
            Dim::TenantId | Dim::Topic | Dim::DestinationId | Dim::DestinationType
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Measure {
    Count,
    Rate,
    SuccessfulCount,
    FailedCount,
    ErrorRate,
    FirstAttemptCount,
    RetryCount,
    ManualRetryCount,
    AvgAttemptNumber,
    SuccessfulRate,
    FailedRate,
}

impl Measure {
    pub fn parse(dataset: Dataset, name: &str) -> Option<Measure> {
        let m = match name {
            "count" => Measure::Count,
            "rate" => Measure::Rate,
            "successful_count" => Measure::SuccessfulCount,
            "failed_count" => Measure::FailedCount,
            "error_rate" => Measure::ErrorRate,
            "first_attempt_count" => Measure::FirstAttemptCount,
            "retry_count" => Measure::RetryCount,
            "manual_retry_count" => Measure::ManualRetryCount,
            "avg_attempt_number" => Measure::AvgAttemptNumber,
            "successful_rate" => Measure::SuccessfulRate,
            "failed_rate" => Measure::FailedRate,
            _ => return None,
        };
        match dataset {
            Dataset::Events if !matches!(m, Measure::Count | Measure::Rate) => None,
            _ => Some(m),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Measure::Count => "count",
            Measure::Rate => "rate",
            Measure::SuccessfulCount => "successful_count",
            Measure::FailedCount => "failed_count",
            Measure::ErrorRate => "error_rate",
            Measure::FirstAttemptCount => "first_attempt_count",
            Measure::RetryCount => "retry_count",
            Measure::ManualRetryCount => "manual_retry_count",
            Measure::AvgAttemptNumber => "avg_attempt_number",
            Measure::SuccessfulRate => "successful_rate",
            Measure::FailedRate => "failed_rate",
        }
    }
}

/// Sums a scan returns for one (unit, dimension values) group; every
/// measure is computed from these.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Partial {
    pub count: i64,
    pub successful: i64,
    pub failed: i64,
    pub first: i64,
    pub retry: i64,
    pub manual: i64,
    pub attempt_number_sum: i64,
}

impl Partial {
    pub fn add(&mut self, o: &Partial) {
        self.count += o.count;
        self.successful += o.successful;
        self.failed += o.failed;
        self.first += o.first;
        self.retry += o.retry;
        self.manual += o.manual;
        self.attempt_number_sum += o.attempt_number_sum;
    }

    /// One attempt's contribution.
    pub fn of_attempt(success: bool, attempt_number: u32, manual: bool) -> Self {
        Self {
            count: 1,
            successful: success as i64,
            failed: !success as i64,
            first: (attempt_number <= 1) as i64,
            retry: (attempt_number > 1) as i64,
            manual: manual as i64,
            attempt_number_sum: attempt_number as i64,
        }
    }

    fn value(&self, m: Measure, seconds: f64) -> serde_json::Value {
        let ratio = |a: i64, b: i64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_second = |a: i64| if seconds > 0.0 { a as f64 / seconds } else { 0.0 };
        match m {
            Measure::Count => self.count.into(),
            Measure::SuccessfulCount => self.successful.into(),
            Measure::FailedCount => self.failed.into(),
            Measure::FirstAttemptCount => self.first.into(),
            Measure::RetryCount => self.retry.into(),
            Measure::ManualRetryCount => self.manual.into(),
            Measure::ErrorRate => ratio(self.failed, self.count).into(),
            Measure::AvgAttemptNumber => ratio(self.attempt_number_sum, self.count).into(),
            Measure::Rate => per_second(self.count).into(),
            Measure::SuccessfulRate => per_second(self.successful).into(),
            Measure::FailedRate => per_second(self.failed).into(),
        }
    }
}

/// One scan of a store: rows in `[from, to)` of `source`, grouped by unit
/// (a second for raw rows) unless `by_unit` is off, and by `dims`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scan {
    pub dataset: Dataset,
    pub source: Source,
    pub from_ms: i64,
    pub to_ms: i64,
    pub by_unit: bool,
    pub dims: Vec<Dim>,
    /// Each filter: the dimension and the values it may take.
    pub filters: Vec<(Dim, Vec<String>)>,
}

impl Scan {
    /// Whether the attempt scan needs the wide rollup (status, code,
    /// manual or attempt number asked for or filtered on).
    pub fn needs_wide(&self) -> bool {
        self.dims
            .iter()
            .chain(self.filters.iter().map(|(d, _)| d))
            .any(|d| !d.in_narrow_rollup())
    }

    /// Whether the attempt scan can use the per-tenant rollup (no
    /// dimension or filter but the tenant).
    pub fn tenant_only(&self) -> bool {
        self.dims
            .iter()
            .chain(self.filters.iter().map(|(d, _)| d))
            .all(|d| *d == Dim::TenantId)
    }

    /// Whether the event scan needs the per-destination rollup.
    pub fn needs_destinations(&self) -> bool {
        self.dims
            .iter()
            .chain(self.filters.iter().map(|(d, _)| d))
            .any(|d| *d == Dim::DestinationId)
    }
}

/// A scan's row: the unit's start (the scan's `from` when not grouped by
/// unit), the values of the scan's dims in order, and the sums.
pub type ScanRow = (i64, Vec<String>, Partial);

/// A parsed query.
#[derive(Clone, Debug)]
pub struct Query {
    pub dataset: Dataset,
    pub start_ms: i64,
    pub end_ms: i64,
    pub granularity: Option<Granularity>,
    pub measures: Vec<Measure>,
    pub dims: Vec<Dim>,
    pub filters: Vec<(Dim, Vec<String>)>,
}

impl Query {
    /// The scans that answer this query, covering `[start, end)` once: the
    /// coarsest rollup the buckets allow in the middle, finer ones around
    /// it, raw rows at the edges.
    pub fn plan(&self) -> Vec<Scan> {
        let finest = self
            .granularity
            .as_ref()
            .map_or(Source::Day, Granularity::finest_source);
        let levels: Vec<Source> = ROLLUPS.iter().copied().filter(|s| *s <= finest).collect();
        let mut pieces = Vec::new();
        split(self.start_ms, self.end_ms, &levels, Source::Raw, &mut pieces);
        pieces
            .into_iter()
            .filter(|(_, a, b)| a < b)
            .map(|(source, from_ms, to_ms)| Scan {
                dataset: self.dataset,
                source,
                from_ms,
                to_ms,
                by_unit: self.granularity.is_some(),
                dims: self.dims.clone(),
                filters: self.filters.clone(),
            })
            .collect()
    }

    /// How many buckets the answer has per dimension combination.
    pub fn bucket_count(&self) -> usize {
        let Some(g) = &self.granularity else {
            return 1;
        };
        if let Some(len) = g.fixed_ms() {
            let first = g.floor(self.start_ms);
            return ((self.end_ms - first + len - 1) / len).max(0) as usize;
        }
        let mut n = 0;
        let mut b = g.floor(self.start_ms);
        while b < self.end_ms && n <= ROW_LIMIT {
            n += 1;
            b = g.next(b);
        }
        n
    }

    /// The answer's rows from the scans' rows: buckets (zero-filled for each
    /// dimension combination seen, or the one combination when there are no
    /// dimensions), measures, truncated at [`ROW_LIMIT`].
    pub fn answer(&self, rows: Vec<ScanRow>) -> Answer {
        let mut groups: BTreeMap<Vec<String>, BTreeMap<i64, Partial>> = BTreeMap::new();
        for (t, dims, p) in rows {
            let bucket = match &self.granularity {
                Some(g) => g.floor(t.max(self.start_ms)),
                None => self.start_ms,
            };
            groups.entry(dims).or_default().entry(bucket).or_default().add(&p);
        }
        if groups.is_empty() && self.dims.is_empty() {
            groups.insert(Vec::new(), BTreeMap::new());
        }
        let mut data = Vec::new();
        let mut truncated = false;
        'groups: for (dims, buckets) in groups {
            let dim_map: serde_json::Map<String, serde_json::Value> = self
                .dims
                .iter()
                .zip(dims)
                .map(|(d, v)| (d.name().to_string(), serde_json::Value::String(v)))
                .collect();
            let mut emit = |time: Option<i64>, p: &Partial, seconds: f64| {
                if data.len() >= ROW_LIMIT {
                    return false;
                }
                let metrics: serde_json::Map<String, serde_json::Value> = self
                    .measures
                    .iter()
                    .map(|m| (m.name().to_string(), p.value(*m, seconds)))
                    .collect();
                data.push(DataPoint {
                    time_bucket: time,
                    dimensions: dim_map.clone(),
                    metrics,
                });
                true
            };
            match &self.granularity {
                None => {
                    let p = buckets.values().fold(Partial::default(), |mut a, p| {
                        a.add(p);
                        a
                    });
                    let seconds = (self.end_ms - self.start_ms) as f64 / 1000.0;
                    if !emit(None, &p, seconds) {
                        truncated = true;
                        break 'groups;
                    }
                }
                Some(g) => {
                    let mut b = g.floor(self.start_ms);
                    while b < self.end_ms {
                        let next = g.next(b);
                        let p = buckets.get(&b).copied().unwrap_or_default();
                        if !emit(Some(b), &p, (next - b) as f64 / 1000.0) {
                            truncated = true;
                            break 'groups;
                        }
                        b = next;
                    }
                }
            }
        }
        Answer { data, truncated }
    }
}

pub struct DataPoint {
    pub time_bucket: Option<i64>,
    pub dimensions: serde_json::Map<String, serde_json::Value>,
    pub metrics: serde_json::Map<String, serde_json::Value>,
}

pub struct Answer {
    pub data: Vec<DataPoint>,
    pub truncated: bool,
}

/// Rollup rows to add for a batch of newly stored events: per (unit,
/// tenant, topic) and per (unit, tenant, topic, destination), for minute
/// and hour units.
#[derive(Default, Debug)]
pub struct RollupDelta {
    /// (source, unit start, tenant, topic) → events.
    pub events: HashMap<(Source, i64, String, String), i64>,
    /// (source, unit start, tenant, topic, destination) → events.
    pub event_destinations: HashMap<(Source, i64, String, String, String), i64>,
    /// Per tenant: (source, unit, tenant) → sums.
    pub attempts_tenant: HashMap<(Source, i64, String), Partial>,
    /// Narrow: (source, unit, tenant, destination, type, topic) → sums.
    pub attempts: HashMap<(Source, i64, AttemptKey), Partial>,
    /// Wide: the narrow key plus status, code, manual, attempt number → count.
    pub attempts_wide: HashMap<(Source, i64, AttemptKey, WideKey), i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptKey {
    pub tenant_id: String,
    pub destination_id: String,
    pub destination_type: String,
    pub topic: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WideKey {
    pub status: String,
    pub code: String,
    pub manual: bool,
    pub attempt_number: i64,
}

impl RollupDelta {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.attempts.is_empty()
    }

    pub fn add_event(&mut self, e: &crate::model::Event, sign: i64) {
        for source in ROLLUPS {
            let unit = e.time.div_euclid(source.unit_ms()) * source.unit_ms();
            *self
                .events
                .entry((source, unit, e.tenant_id.clone(), e.topic.clone()))
                .or_default() += sign;
            for d in &e.matched_destination_ids {
                *self
                    .event_destinations
                    .entry((source, unit, e.tenant_id.clone(), e.topic.clone(), d.clone()))
                    .or_default() += sign;
            }
        }
    }

    /// `sign` -1 takes back a stored attempt that is being replaced.
    pub fn add_attempt(&mut self, a: &crate::model::Attempt, sign: i64) {
        let success = a.status == crate::model::AttemptStatus::Success;
        let mut p = Partial::of_attempt(success, a.attempt_number, a.manual);
        if sign < 0 {
            p = Partial {
                count: -p.count,
                successful: -p.successful,
                failed: -p.failed,
                first: -p.first,
                retry: -p.retry,
                manual: -p.manual,
                attempt_number_sum: -p.attempt_number_sum,
            };
        }
        let key = AttemptKey {
            tenant_id: a.tenant_id.clone(),
            destination_id: a.destination_id.clone(),
            destination_type: a.destination_type.clone(),
            topic: a.topic.clone(),
        };
        let wide = WideKey {
            status: a.status.as_str().to_string(),
            code: a.code.clone().unwrap_or_default(),
            manual: a.manual,
            attempt_number: a.attempt_number as i64,
        };
        for source in ROLLUPS {
            let unit = a.time.div_euclid(source.unit_ms()) * source.unit_ms();
            self.attempts_tenant
                .entry((source, unit, a.tenant_id.clone()))
                .or_default()
                .add(&p);
            self.attempts.entry((source, unit, key.clone())).or_default().add(&p);
            *self
                .attempts_wide
                .entry((source, unit, key.clone(), wide.clone()))
                .or_default() += sign;
        }
    }
}

/// A dimension value as the API shows it, from the stored column.
pub fn dim_text(d: Dim, raw: &str) -> String {
    match d {
        Dim::Manual => match raw {
            "1" | "t" | "true" => "true".into(),
            _ => "false".into(),
        },
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        crate::timefmt::parse_rfc3339_ms(s).unwrap()
    }

    #[test]
    fn granularities_parse_with_outposts_bounds() {
        assert_eq!(
            Granularity::parse("1h").unwrap(),
            Granularity { n: 1, unit: Unit::Hour }
        );
        assert_eq!(Granularity::parse("12M").unwrap().unit, Unit::Month);
        for bad in [
            "",
            "h",
            "0h",
            "25h",
            "61s",
            "5w",
            "13M",
            "1y",
            "-1h",
            "1.5h",
            "1H",
            "0001h",
            // Found by schemathesis: a multi-byte last character made the parser panic.
            "1\u{f5b8}",
            "\u{f5b8}",
            "Bf\u{e9}",
        ] {
            assert!(Granularity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets_align_as_outposts() {
        let g = |s: &str| Granularity::parse(s).unwrap();
        let t = ms("2026-12-02T13:47:31.5Z"); // a Wednesday
        assert_eq!(g("15m").floor(t), ms("2026-12-02T13:45:00Z"));
        assert_eq!(g("1h").floor(t), ms("2026-12-02T13:00:00Z"));
        assert_eq!(g("6h").floor(t), ms("2026-12-02T12:00:00Z"));
        assert_eq!(g("1d").floor(t), ms("2026-12-02T00:00:00Z"));
        assert_eq!(g("1w").floor(t), ms("2026-11-29T00:00:00Z"));
        assert_eq!(g("1M").floor(t), ms("2026-12-01T00:00:00Z"));
        assert_eq!(g("1M").next(ms("2026-12-01T00:00:00Z")), ms("2027-01-01T00:00:00Z"));
        assert_eq!(g("3M").floor(t), ms("2026-10-01T00:00:00Z"));
        assert_eq!(g("30s").floor(t), ms("2026-12-02T13:47:30Z"));
        // Multiples of days count from the epoch.
        let two = g("2d").floor(t);
        assert_eq!((two / DAY) % 2, 0);
    }

    #[test]
    fn a_plan_covers_the_range_once_from_the_coarsest_rollup() {
        let q = |start: &str, end: &str, gran: Option<&str>| Query {
            dataset: Dataset::Attempts,
            start_ms: ms(start),
            end_ms: ms(end),
            granularity: gran.map(|g| Granularity::parse(g).unwrap()),
            measures: vec![Measure::Count],
            dims: vec![],
            filters: vec![],
        };
        let show =
            |p: Vec<Scan>| -> Vec<(Source, i64, i64)> { p.iter().map(|s| (s.source, s.from_ms, s.to_ms)).collect() };
        let p = show(q("2026-12-01T10:15:30Z", "2026-12-03T08:00:00Z", Some("1h")).plan());
        assert_eq!(
            p,
            vec![
                (Source::Raw, ms("2026-12-01T10:15:30Z"), ms("2026-12-01T10:16:00Z")),
                (Source::Minute, ms("2026-12-01T10:16:00Z"), ms("2026-12-01T11:00:00Z")),
                (Source::Hour, ms("2026-12-01T11:00:00Z"), ms("2026-12-03T08:00:00Z")),
            ]
        );
        assert_eq!(
            show(q("2026-12-01T10:00:00Z", "2026-12-01T11:00:00Z", Some("30s")).plan()),
            vec![(Source::Raw, ms("2026-12-01T10:00:00Z"), ms("2026-12-01T11:00:00Z"))]
        );
        assert_eq!(
            show(q("2026-12-01T10:00:00Z", "2026-12-01T14:30:00Z", Some("5m")).plan()),
            vec![(Source::Minute, ms("2026-12-01T10:00:00Z"), ms("2026-12-01T14:30:00Z"))]
        );
        // Days from the day rollup, hours and minutes around them.
        assert_eq!(
            show(q("2026-11-01T22:30:00Z", "2026-12-01T01:00:00Z", Some("1d")).plan()),
            vec![
                (Source::Minute, ms("2026-11-01T22:30:00Z"), ms("2026-11-01T23:00:00Z")),
                (Source::Hour, ms("2026-11-01T23:00:00Z"), ms("2026-11-02T00:00:00Z")),
                (Source::Day, ms("2026-11-02T00:00:00Z"), ms("2026-12-01T00:00:00Z")),
                (Source::Hour, ms("2026-12-01T00:00:00Z"), ms("2026-12-01T01:00:00Z")),
            ]
        );
    }

    #[test]
    fn answers_zero_fill_buckets_and_compute_measures() {
        let q = Query {
            dataset: Dataset::Attempts,
            start_ms: ms("2026-12-01T10:00:00Z"),
            end_ms: ms("2026-12-01T13:00:00Z"),
            granularity: Some(Granularity::parse("1h").unwrap()),
            measures: vec![
                Measure::Count,
                Measure::ErrorRate,
                Measure::AvgAttemptNumber,
                Measure::Rate,
            ],
            dims: vec![],
            filters: vec![],
        };
        let mut p = Partial::of_attempt(true, 1, false);
        p.add(&Partial::of_attempt(false, 3, false));
        let a = q.answer(vec![(ms("2026-12-01T11:59:00Z"), vec![], p)]);
        assert_eq!(a.data.len(), 3);
        assert_eq!(a.data[0].metrics["count"], 0);
        assert_eq!(a.data[1].time_bucket, Some(ms("2026-12-01T11:00:00Z")));
        assert_eq!(a.data[1].metrics["count"], 2);
        assert_eq!(a.data[1].metrics["error_rate"], 0.5);
        assert_eq!(a.data[1].metrics["avg_attempt_number"], 2.0);
        assert_eq!(a.data[1].metrics["rate"], 2.0 / 3600.0);
        assert!(!a.truncated);
    }
}
