//! SQL for the metrics scans ([`crate::metrics::Scan`]) and the rollup
//! tables, shared by SQLite and PostgreSQL: the tables and columns are the
//! same in both; times are milliseconds in SQLite and `TIMESTAMPTZ` in
//! PostgreSQL's raw tables (the rollups keep milliseconds in both).

use crate::metrics::{Dataset, Dim, Scan, Source};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A bound parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Int(i64),
    Text(String),
}

/// The rollup tables' `res` column.
pub fn res(source: Source) -> i64 {
    match source {
        Source::Raw => 0,
        Source::Minute => 1,
        Source::Hour => 2,
        Source::Day => 3,
    }
}

struct Builder {
    dialect: Dialect,
    args: Vec<Arg>,
}

impl Builder {
    fn arg(&mut self, a: Arg) -> String {
        self.args.push(a);
        match self.dialect {
            Dialect::Sqlite => "?".into(),
            Dialect::Postgres => match self.args.last() {
                Some(Arg::Int(_)) => format!("${}::BIGINT", self.args.len()),
                _ => format!("${}::TEXT", self.args.len()),
            },
        }
    }
}

/// `t` floored to a multiple of `u` (also for times before 1970).
fn floor_expr(t: &str, u: i64) -> String {
    format!("({t} - ((({t} % {u}) + {u}) % {u}))")
}

/// A raw table's time in milliseconds.
fn raw_ms(d: Dialect, alias: &str) -> String {
    match d {
        Dialect::Sqlite => format!("{alias}.time"),
        Dialect::Postgres => format!("(floor(extract(epoch FROM {alias}.time) * 1000))::BIGINT"),
    }
}

/// A dimension as text, as the API shows it.
fn dim_expr(dim: Dim, alias: &str, dest_col: &str) -> String {
    match dim {
        Dim::TenantId => format!("{alias}.tenant_id"),
        Dim::Topic => format!("{alias}.topic"),
        Dim::DestinationId => dest_col.to_string(),
        Dim::DestinationType => format!("{alias}.destination_type"),
        Dim::Status => format!("{alias}.status"),
        Dim::Code => format!("COALESCE({alias}.code, '')"),
        Dim::Manual => format!("CASE WHEN {alias}.manual THEN 'true' ELSE 'false' END"),
        Dim::AttemptNumber => format!("CAST({alias}.attempt_number AS TEXT)"),
    }
}

/// The scan's query: columns are the unit start, the dims in order, then
/// count, successful, failed, first, retry, manual, attempt-number sum.
pub fn scan(dialect: Dialect, s: &Scan) -> (String, Vec<Arg>) {
    let mut b = Builder {
        dialect,
        args: Vec::new(),
    };
    let sum = |e: &str| match dialect {
        Dialect::Sqlite => format!("COALESCE(SUM({e}), 0)"),
        Dialect::Postgres => format!("COALESCE(SUM({e}), 0)::BIGINT"),
    };
    let when = |cond: &str, then: &str| sum(&format!("CASE WHEN {cond} THEN {then} ELSE 0 END"));
    // Columns an event scan has no value for (PostgreSQL's bare 0 is an INT).
    let zero = match dialect {
        Dialect::Sqlite => "0",
        Dialect::Postgres => "0::BIGINT",
    };
    let zeros = |first: String| -> Vec<String> {
        std::iter::once(first)
            .chain(std::iter::repeat_n(zero.to_string(), 6))
            .collect()
    };
    // (FROM clause, alias, destination_id expression, time-in-ms expression, sums)
    let (from, alias, dest_col, time_ms, sums): (String, &str, &str, String, Vec<String>) = match (s.dataset, s.source)
    {
        (Dataset::Events, Source::Raw) => {
            let (from, dest) = if s.needs_destinations() {
                match dialect {
                    Dialect::Sqlite => ("events e, json_each(e.matched) AS d".to_string(), "d.value"),
                    Dialect::Postgres => (
                        "events e CROSS JOIN LATERAL unnest(e.matched_destination_ids) AS d(destination_id)"
                            .to_string(),
                        "d.destination_id",
                    ),
                }
            } else {
                ("events e".to_string(), "e.destination_id")
            };
            let count = match dialect {
                Dialect::Sqlite => "COUNT(*)".to_string(),
                Dialect::Postgres => "COUNT(*)::BIGINT".to_string(),
            };
            (from, "e", dest, raw_ms(dialect, "e"), zeros(count))
        }
        (Dataset::Events, _) => {
            let table = if s.needs_destinations() {
                "metric_event_destinations"
            } else {
                "metric_events"
            };
            (
                format!("{table} r"),
                "r",
                "r.destination_id",
                "r.unit".into(),
                zeros(sum("r.n")),
            )
        }
        (Dataset::Attempts, Source::Raw) => {
            let count = match dialect {
                Dialect::Sqlite => "COUNT(*)".to_string(),
                Dialect::Postgres => "COUNT(*)::BIGINT".to_string(),
            };
            (
                "attempts a".into(),
                "a",
                "a.destination_id",
                raw_ms(dialect, "a"),
                vec![
                    count,
                    when("a.status = 'success'", "1"),
                    when("a.status <> 'success'", "1"),
                    when("a.attempt_number <= 1", "1"),
                    when("a.attempt_number > 1", "1"),
                    when("a.manual", "1"),
                    sum("a.attempt_number"),
                ],
            )
        }
        (Dataset::Attempts, _) if s.needs_wide() => (
            "metric_attempts_wide r".into(),
            "r",
            "r.destination_id",
            "r.unit".into(),
            vec![
                sum("r.n"),
                when("r.status = 'success'", "r.n"),
                when("r.status <> 'success'", "r.n"),
                when("r.attempt_number <= 1", "r.n"),
                when("r.attempt_number > 1", "r.n"),
                when("r.manual", "r.n"),
                sum("r.n * r.attempt_number"),
            ],
        ),
        (Dataset::Attempts, _) if s.tenant_only() => (
            "metric_attempts_tenant r".into(),
            "r",
            "r.destination_id",
            "r.unit".into(),
            vec![
                sum("r.n"),
                sum("r.successful"),
                sum("r.failed"),
                sum("r.first_n"),
                sum("r.retry_n"),
                sum("r.manual_n"),
                sum("r.attempt_sum"),
            ],
        ),
        (Dataset::Attempts, _) => (
            "metric_attempts r".into(),
            "r",
            "r.destination_id",
            "r.unit".into(),
            vec![
                sum("r.n"),
                sum("r.successful"),
                sum("r.failed"),
                sum("r.first_n"),
                sum("r.retry_n"),
                sum("r.manual_n"),
                sum("r.attempt_sum"),
            ],
        ),
    };
    let unit_col = if !s.by_unit {
        s.from_ms.to_string()
    } else if s.source == Source::Raw {
        floor_expr(&time_ms, 1_000)
    } else {
        "r.unit".into()
    };
    let mut where_ = Vec::new();
    if s.source == Source::Raw {
        match dialect {
            Dialect::Sqlite => {
                let (a, z) = (b.arg(Arg::Int(s.from_ms)), b.arg(Arg::Int(s.to_ms)));
                where_.push(format!("{alias}.time >= {a} AND {alias}.time < {z}"));
            }
            Dialect::Postgres => {
                let (a, z) = (b.arg(Arg::Int(s.from_ms)), b.arg(Arg::Int(s.to_ms)));
                where_.push(format!(
                    "{alias}.time >= to_timestamp({a} / 1000.0) AND {alias}.time < to_timestamp({z} / 1000.0)"
                ));
            }
        }
    } else {
        let r = b.arg(Arg::Int(res(s.source)));
        let (a, z) = (b.arg(Arg::Int(s.from_ms)), b.arg(Arg::Int(s.to_ms)));
        where_.push(format!("r.res = {r} AND r.unit >= {a} AND r.unit < {z}"));
    }
    for (dim, values) in &s.filters {
        if values.is_empty() {
            continue;
        }
        let expr = dim_expr(*dim, alias, dest_col);
        let list: Vec<String> = values.iter().map(|v| b.arg(Arg::Text(v.clone()))).collect();
        where_.push(format!("{expr} IN ({})", list.join(", ")));
    }
    let dims: Vec<String> = s.dims.iter().map(|d| dim_expr(*d, alias, dest_col)).collect();
    let mut cols = vec![format!("{unit_col} AS u")];
    cols.extend(dims.iter().map(|d| format!("CAST({d} AS TEXT)")));
    cols.extend(sums);
    let mut sql = format!("SELECT {} FROM {from} WHERE {}", cols.join(", "), where_.join(" AND "));
    let group: Vec<String> = (if s.by_unit { 1 } else { 2 }..=1 + dims.len())
        .map(|i| i.to_string())
        .collect();
    if !group.is_empty() {
        sql.push_str(&format!(" GROUP BY {}", group.join(", ")));
    }
    (sql, b.args)
}

/// Rebuilds every rollup from the raw tables (first start with rollups, or a
/// store written before them).
pub fn backfill(dialect: Dialect) -> Vec<String> {
    let mut out = vec![
        "DELETE FROM metric_events".to_string(),
        "DELETE FROM metric_event_destinations".to_string(),
        "DELETE FROM metric_attempts".to_string(),
        "DELETE FROM metric_attempts_wide".to_string(),
        "DELETE FROM metric_attempts_tenant".to_string(),
    ];
    for source in crate::metrics::ROLLUPS {
        let (r, u) = (res(source), source.unit_ms());
        let et = floor_expr(&raw_ms(dialect, "e"), u);
        let at = floor_expr(&raw_ms(dialect, "a"), u);
        let dest_join = match dialect {
            Dialect::Sqlite => "events e, json_each(e.matched) AS d",
            Dialect::Postgres => "events e CROSS JOIN LATERAL unnest(e.matched_destination_ids) AS d(value)",
        };
        out.push(format!(
            "INSERT INTO metric_events (res, unit, tenant_id, topic, n)
             SELECT {r}, {et}, e.tenant_id, e.topic, COUNT(*) FROM events e GROUP BY 2, 3, 4"
        ));
        out.push(format!(
            "INSERT INTO metric_event_destinations (res, unit, tenant_id, topic, destination_id, n)
             SELECT {r}, {et}, e.tenant_id, e.topic, d.value, COUNT(*) FROM {dest_join} GROUP BY 2, 3, 4, 5"
        ));
        let one = |cond: &str| format!("SUM(CASE WHEN {cond} THEN 1 ELSE 0 END)");
        out.push(format!(
            "INSERT INTO metric_attempts (res, unit, tenant_id, destination_id, destination_type, topic,
                                          n, successful, failed, first_n, retry_n, manual_n, attempt_sum)
             SELECT {r}, {at}, a.tenant_id, a.destination_id, a.destination_type, a.topic, COUNT(*),
                    {}, {}, {}, {}, {}, SUM(a.attempt_number)
             FROM attempts a GROUP BY 2, 3, 4, 5, 6",
            one("a.status = 'success'"),
            one("a.status <> 'success'"),
            one("a.attempt_number <= 1"),
            one("a.attempt_number > 1"),
            one("a.manual"),
        ));
        out.push(format!(
            "INSERT INTO metric_attempts_tenant (res, unit, tenant_id,
                                                 n, successful, failed, first_n, retry_n, manual_n, attempt_sum)
             SELECT {r}, {at}, a.tenant_id, COUNT(*), {}, {}, {}, {}, {}, SUM(a.attempt_number)
             FROM attempts a GROUP BY 2, 3",
            one("a.status = 'success'"),
            one("a.status <> 'success'"),
            one("a.attempt_number <= 1"),
            one("a.attempt_number > 1"),
            one("a.manual"),
        ));
        out.push(format!(
            "INSERT INTO metric_attempts_wide (res, unit, tenant_id, destination_id, destination_type, topic,
                                               status, code, manual, attempt_number, n)
             SELECT {r}, {at}, a.tenant_id, a.destination_id, a.destination_type, a.topic,
                    a.status, COALESCE(a.code, ''), a.manual, a.attempt_number, COUNT(*)
             FROM attempts a GROUP BY 2, 3, 4, 5, 6, 7, 8, 9, 10"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Scan;

    #[test]
    fn scans_choose_the_table_their_dimensions_need() {
        let scan_of = |dataset, source, dims: Vec<Dim>, filters: Vec<(Dim, Vec<String>)>| Scan {
            dataset,
            source,
            from_ms: 0,
            to_ms: 3_600_000,
            by_unit: true,
            dims,
            filters,
        };
        let (sql, args) = scan(
            Dialect::Sqlite,
            &scan_of(Dataset::Attempts, Source::Hour, vec![Dim::DestinationId], vec![]),
        );
        assert!(sql.contains("FROM metric_attempts r"), "{sql}");
        assert_eq!(args, vec![Arg::Int(2), Arg::Int(0), Arg::Int(3_600_000)]);
        let (sql, _) = scan(
            Dialect::Postgres,
            &scan_of(
                Dataset::Attempts,
                Source::Day,
                vec![],
                vec![(Dim::TenantId, vec!["t".into()])],
            ),
        );
        assert!(sql.contains("FROM metric_attempts_tenant r"), "{sql}");
        let (sql, _) = scan(
            Dialect::Postgres,
            &scan_of(
                Dataset::Attempts,
                Source::Minute,
                vec![],
                vec![(Dim::Code, vec!["500".into()])],
            ),
        );
        assert!(sql.contains("FROM metric_attempts_wide r"), "{sql}");
        assert!(sql.contains("$4::TEXT"), "{sql}");
        let (sql, _) = scan(
            Dialect::Sqlite,
            &scan_of(Dataset::Events, Source::Raw, vec![Dim::DestinationId], vec![]),
        );
        assert!(sql.contains("json_each(e.matched)") && sql.contains("d.value"), "{sql}");
        let (sql, _) = scan(
            Dialect::Sqlite,
            &scan_of(Dataset::Events, Source::Minute, vec![Dim::Topic], vec![]),
        );
        assert!(sql.contains("FROM metric_events r"), "{sql}");
    }
}
