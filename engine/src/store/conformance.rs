//! One behaviour suite for every log store: what the list endpoints rely on
//! (order, seek pagination, filters, tenant scoping, idempotent rewrites).
//! Each implementation's tests call [`run_all`] on a fresh, empty store.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::model::StringMap;

const T0: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z

fn event(id: &str, tenant: &str, topic: &str, t: i64, dests: &[&str]) -> Arc<Event> {
    let mut metadata = StringMap::new();
    metadata.insert("source".into(), "crm".into());
    Arc::new(Event {
        id: id.into(),
        tenant_id: tenant.into(),
        destination_id: None,
        topic: topic.into(),
        eligible_for_retry: true,
        time: t,
        time_ns: 0,
        metadata,
        data: Arc::from(r#"{"zebra":1,"alpha":{"b":2,"a":1}}"#),
        matched_destination_ids: dests.iter().map(|d| d.to_string()).collect(),
    })
}

#[allow(clippy::too_many_arguments)]
fn attempt(id: &str, tenant: &str, ev: &str, dest: &str, kind: &str, n: u32, ok: bool, t: i64) -> Attempt {
    Attempt {
        id: id.into(),
        tenant_id: tenant.into(),
        event_id: ev.into(),
        destination_id: dest.into(),
        destination_type: kind.into(),
        attempt_number: n,
        manual: n > 2,
        status: if ok {
            AttemptStatus::Success
        } else {
            AttemptStatus::Failed
        },
        time: t,
        code: Some(if ok { "200" } else { "500" }.into()),
        response_data: Some(json!({"status": if ok { 200 } else { 500 }, "body": "x"})),
        topic: "t".into(),
    }
}

fn ids_e(v: &[Event]) -> Vec<&str> {
    v.iter().map(|e| e.id.as_str()).collect()
}

fn ids_a(v: &[Attempt]) -> Vec<&str> {
    v.iter().map(|a| a.id.as_str()).collect()
}

pub(crate) async fn run_all(store: &dyn LogStore, writer: &dyn LogWriter) {
    // Five events over two tenants, 1 ms apart; e2 and e3 share a timestamp
    // so the id breaks the tie.
    let events = vec![
        event("e0", "t1", "user.created", T0, &["d1"]),
        event("e1", "t2", "user.created", T0 + 1, &["d2"]),
        event("e2", "t1", "order.paid", T0 + 2, &["d1", "d3"]),
        event("e3", "t1", "user.created", T0 + 2, &["d3"]),
        event("e4", "t2", "order.paid", T0 + 4, &["d2"]),
    ];
    let attempts = vec![
        attempt("a0", "t1", "e0", "d1", "webhook", 1, false, T0 + 10),
        attempt("a1", "t1", "e0", "d1", "webhook", 2, true, T0 + 20),
        attempt("a2", "t2", "e1", "d2", "rabbitmq", 1, true, T0 + 11),
        attempt("a3", "t1", "e2", "d3", "webhook", 1, true, T0 + 12),
        attempt("a4", "t1", "e2", "d1", "webhook", 1, false, T0 + 12),
    ];
    writer.write_logs(events.clone(), attempts.clone()).await.unwrap();
    // Rewriting is idempotent: no duplicates, attempts take the new status.
    let mut a4 = attempts[4].clone();
    a4.status = AttemptStatus::Success;
    a4.code = Some("204".into());
    writer.write_logs(vec![events[0].clone()], vec![a4]).await.unwrap();

    // ---- events ----
    let all = store
        .list_events(ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids_e(&all),
        ["e4", "e3", "e2", "e1", "e0"],
        "newest first, id breaks ties"
    );
    assert_eq!(
        &*all[0].data, r#"{"zebra":1,"alpha":{"b":2,"a":1}}"#,
        "data text kept verbatim"
    );
    assert_eq!(all[0].metadata.get("source").map(String::as_str), Some("crm"));
    assert_eq!(all[2].matched_destination_ids, vec!["d1", "d3"]);
    assert_eq!(all[2].time, T0 + 2);
    let asc = store
        .list_events(ListQuery {
            limit: 2,
            dir: Dir::Asc,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_e(&asc), ["e0", "e1"]);
    let after = store
        .list_events(ListQuery {
            limit: 2,
            after: Some(Seek {
                time_ms: T0 + 2,
                id: "e3".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_e(&after), ["e2", "e1"], "seek past a timestamp tie");
    let t1 = store
        .list_events(ListQuery {
            tenant_ids: vec!["t1".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_e(&t1), ["e3", "e2", "e0"]);
    let topic = store
        .list_events(ListQuery {
            topics: vec!["order.paid".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_e(&topic), ["e4", "e2"]);
    let by_dest = store
        .list_events(ListQuery {
            destination_ids: vec!["d3".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_e(&by_dest), ["e3", "e2"], "matched_destination_ids overlap");
    let window = store
        .list_events(ListQuery {
            time_gt: Some(T0),
            time_lte: Some(T0 + 2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_e(&window), ["e3", "e2", "e1"]);
    let by_id = store
        .list_events(ListQuery {
            ids: vec!["e1".into(), "e4".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_e(&by_id), ["e4", "e1"]);
    assert_eq!(
        store.get_event(None, "e2".into()).await.unwrap().unwrap().tenant_id,
        "t1"
    );
    assert!(
        store.get_event(Some("t2".into()), "e2".into()).await.unwrap().is_none(),
        "tenant scoped"
    );
    assert!(store.get_event(None, "nope".into()).await.unwrap().is_none());

    // ---- attempts ----
    let all = store
        .list_attempts(ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_a(&all), ["a1", "a4", "a3", "a2", "a0"]);
    let a4 = all.iter().find(|a| a.id == "a4").unwrap();
    assert_eq!(
        (a4.status, a4.code.as_deref()),
        (AttemptStatus::Success, Some("204")),
        "rewrite updated"
    );
    assert_eq!(all[0].response_data, Some(json!({"status": 200, "body": "x"})));
    let failed = store
        .list_attempts(ListQuery {
            status: Some(AttemptStatus::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_a(&failed), ["a0"]);
    let q = ListQuery {
        tenant_ids: vec!["t1".into()],
        destination_ids: vec!["d1".into()],
        event_ids: vec!["e0".into()],
        dir: Dir::Asc,
        ..Default::default()
    };
    assert_eq!(ids_a(&store.list_attempts(q).await.unwrap()), ["a0", "a1"]);
    let by_type = store
        .list_attempts(ListQuery {
            destination_types: vec!["rabbitmq".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_a(&by_type), ["a2"]);
    let page = store
        .list_attempts(ListQuery {
            limit: 2,
            after: Some(Seek {
                time_ms: T0 + 12,
                id: "a4".into(),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids_a(&page), ["a3", "a2"]);
    let latest = store
        .latest_attempt(Some("t1".into()), "e0".into(), "d1".into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((latest.id.as_str(), latest.attempt_number), ("a1", 2));
    assert!(store
        .latest_attempt(Some("t2".into()), "e0".into(), "d1".into())
        .await
        .unwrap()
        .is_none());
    assert!(store
        .get_attempt(Some("t2".into()), "a0".into())
        .await
        .unwrap()
        .is_none());
    let got = store.get_attempt(None, "a3".into()).await.unwrap().unwrap();
    assert_eq!(
        (got.event_id.as_str(), got.destination_type.as_str(), got.time),
        ("e2", "webhook", T0 + 12)
    );
    assert!(!got.manual && store.get_attempt(None, "zz".into()).await.unwrap().is_none());
}

fn dest(id: &str, tenant: &str, secret: &str) -> Destination {
    let mut config = StringMap::new();
    config.insert("url".into(), format!("https://example.com/{id}"));
    // Sealed with the credentials, restored on load.
    config.insert(
        "custom_headers".into(),
        format!("{{\"Authorization\":\"Bearer tok-{id}\"}}"),
    );
    let mut credentials = StringMap::new();
    credentials.insert("secret".into(), secret.into());
    Destination {
        id: id.into(),
        tenant_id: tenant.into(),
        kind: "webhook".into(),
        topics: vec!["user.*".into()],
        filter: Some(json!({"data": {"amount": {"$gte": 1}}})),
        config,
        credentials,
        delivery_metadata: None,
        metadata: None,
        created_at: T0,
        updated_at: T0,
        disabled_at: None,
    }
}

fn tenant(id: &str) -> Tenant {
    Tenant {
        id: id.into(),
        metadata: None,
        created_at: T0,
        updated_at: T0,
    }
}

/// The entity-store behaviour every implementation must have.
pub(crate) async fn run_entities(store: &dyn EntityStore) {
    let (t0, d0) = store.load_entities().await.unwrap();
    assert!(t0.is_empty() && d0.is_empty(), "starts empty");
    store.put_tenant(tenant("t1")).await.unwrap();
    store.put_tenant(tenant("t2")).await.unwrap();
    let mut t1 = tenant("t1");
    let mut md = StringMap::new();
    md.insert("plan".into(), "pro".into());
    t1.metadata = Some(md);
    t1.updated_at = T0 + 5;
    store.put_tenant(t1.clone()).await.unwrap();
    store.put_destination(dest("d1", "t1", "whsec_one")).await.unwrap();
    store.put_destination(dest("d2", "t1", "whsec_two")).await.unwrap();
    store.put_destination(dest("d3", "t2", "whsec_three")).await.unwrap();
    let mut d1 = dest("d1", "t1", "whsec_rotated");
    d1.disabled_at = Some(T0 + 9);
    store.put_destination(d1.clone()).await.unwrap();
    store.delete_destination("t1".into(), "d2".into()).await.unwrap();
    store.delete_tenant("t2".into()).await.unwrap();

    let (mut tenants, dests) = store.load_entities().await.unwrap();
    tenants.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(tenants, vec![t1], "update replaced metadata; deleted tenant gone");
    assert_eq!(
        dests,
        vec![d1],
        "credentials round-trip; deletes and the tenant cascade applied"
    );
}

/// The metrics rollups against a count made here from the same records:
/// several batches (one replayed, some attempts written again with another
/// outcome), then queries over aligned and unaligned ranges, with and
/// without granularity, dimensions and filters. Each answer must equal the
/// one computed from the records themselves.
pub(crate) async fn run_metrics(store: &dyn LogStore, writer: &dyn LogWriter) {
    use crate::metrics::{Dataset, Dim, Granularity, Measure, Partial, Query, ScanRow};
    const MIN: i64 = 60_000;
    // A small deterministic generator: no dependency, same records every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let tenants = ["mt1", "mt2"];
    let topics = ["a", "b", "c"];
    let dests = ["md1", "md2", "md3"];
    let mut events = Vec::new();
    let mut attempts = Vec::new();
    for i in 0..400 {
        // Three hours from T0 + 17 s, at odd milliseconds.
        let t = T0 + 17_000 + (next(3 * 60 * MIN as u64) as i64);
        let tenant = tenants[next(2) as usize];
        let matched: Vec<&str> = dests.iter().copied().filter(|_| next(2) == 0).collect();
        let e = event(&format!("me{i}"), tenant, topics[next(3) as usize], t, &matched);
        for (j, d) in matched.iter().enumerate() {
            for n in 1..=(1 + next(3) as u32) {
                let mut a = attempt(
                    &format!("ma{i}-{j}-{n}"),
                    tenant,
                    &e.id,
                    d,
                    if *d == "md3" { "rabbitmq" } else { "webhook" },
                    n,
                    next(3) != 0,
                    t + (n as i64) * 1_500,
                );
                a.topic = e.topic.clone();
                a.manual = next(5) == 0;
                attempts.push(a);
            }
        }
        events.push(e);
    }
    for chunk in 0..4 {
        let ev: Vec<_> = events.iter().skip(chunk * 100).take(100).cloned().collect();
        let ids: std::collections::HashSet<&str> = ev.iter().map(|e| e.id.as_str()).collect();
        let at: Vec<_> = attempts
            .iter()
            .filter(|a| ids.contains(a.event_id.as_str()))
            .cloned()
            .collect();
        writer.write_logs(ev, at).await.unwrap();
    }
    // A replayed batch is not counted twice.
    let replay: Vec<_> = events.iter().take(50).cloned().collect();
    let ids: std::collections::HashSet<&str> = replay.iter().map(|e| e.id.as_str()).collect();
    let again: Vec<_> = attempts
        .iter()
        .filter(|a| ids.contains(a.event_id.as_str()))
        .cloned()
        .collect();
    writer.write_logs(replay, again).await.unwrap();
    // Attempts written again with another outcome move between counts.
    for a in attempts.iter_mut().step_by(7) {
        a.status = if a.status == AttemptStatus::Success {
            AttemptStatus::Failed
        } else {
            AttemptStatus::Success
        };
        a.code = Some(
            if a.status == AttemptStatus::Success {
                "200"
            } else {
                "503"
            }
            .into(),
        );
    }
    let rewritten: Vec<_> = attempts.iter().step_by(7).cloned().collect();
    writer.write_logs(Vec::new(), rewritten).await.unwrap();

    let text = |d: Dim, e: Option<&Event>, a: Option<&Attempt>, dest: &str| -> String {
        match (d, e, a) {
            (Dim::TenantId, Some(e), _) => e.tenant_id.clone(),
            (Dim::Topic, Some(e), _) => e.topic.clone(),
            (Dim::DestinationId, Some(_), _) => dest.to_string(),
            (Dim::TenantId, _, Some(a)) => a.tenant_id.clone(),
            (Dim::Topic, _, Some(a)) => a.topic.clone(),
            (Dim::DestinationId, _, Some(a)) => a.destination_id.clone(),
            (Dim::DestinationType, _, Some(a)) => a.destination_type.clone(),
            (Dim::Status, _, Some(a)) => a.status.as_str().to_string(),
            (Dim::Code, _, Some(a)) => a.code.clone().unwrap_or_default(),
            (Dim::Manual, _, Some(a)) => a.manual.to_string(),
            (Dim::AttemptNumber, _, Some(a)) => a.attempt_number.to_string(),
            _ => String::new(),
        }
    };
    let expected = |q: &Query| -> crate::metrics::Answer {
        let keep = |values: &dyn Fn(Dim) -> String| q.filters.iter().all(|(d, allowed)| allowed.contains(&values(*d)));
        let mut rows: Vec<ScanRow> = Vec::new();
        let in_range = |t: i64| t >= q.start_ms && t < q.end_ms;
        match q.dataset {
            Dataset::Events => {
                let per_destination =
                    q.dims.contains(&Dim::DestinationId) || q.filters.iter().any(|(d, _)| *d == Dim::DestinationId);
                for e in events.iter().filter(|e| in_range(e.time)) {
                    let ds: Vec<String> = if per_destination {
                        e.matched_destination_ids.clone()
                    } else {
                        vec![String::new()]
                    };
                    for d in ds {
                        let values = |dim: Dim| text(dim, Some(e), None, &d);
                        if keep(&values) {
                            let p = Partial {
                                count: 1,
                                ..Default::default()
                            };
                            rows.push((e.time, q.dims.iter().map(|d| values(*d)).collect(), p));
                        }
                    }
                }
            }
            Dataset::Attempts => {
                for a in attempts.iter().filter(|a| in_range(a.time)) {
                    let values = |dim: Dim| text(dim, None, Some(a), "");
                    if keep(&values) {
                        let p = Partial::of_attempt(a.status == AttemptStatus::Success, a.attempt_number, a.manual);
                        rows.push((a.time, q.dims.iter().map(|d| values(*d)).collect(), p));
                    }
                }
            }
        }
        q.answer(rows)
    };
    let all_attempt_measures = vec![
        Measure::Count,
        Measure::SuccessfulCount,
        Measure::FailedCount,
        Measure::ErrorRate,
        Measure::FirstAttemptCount,
        Measure::RetryCount,
        Measure::ManualRetryCount,
        Measure::AvgAttemptNumber,
        Measure::Rate,
    ];
    type Case<'a> = (Dataset, i64, i64, Option<&'a str>, Vec<Dim>, Vec<(Dim, Vec<String>)>);
    let cases: Vec<Case> = vec![
        (Dataset::Events, T0, T0 + 4 * 60 * MIN, Some("1h"), vec![], vec![]),
        (
            Dataset::Events,
            T0 + 90_123,
            T0 + 3 * 60 * MIN - 7,
            Some("15m"),
            vec![Dim::Topic],
            vec![],
        ),
        (
            Dataset::Events,
            T0 + 5 * MIN + 1,
            T0 + 190 * MIN,
            None,
            vec![Dim::DestinationId],
            vec![],
        ),
        (
            Dataset::Events,
            T0,
            T0 + 4 * 60 * MIN,
            Some("1d"),
            vec![Dim::TenantId],
            vec![(Dim::DestinationId, vec!["md2".into()])],
        ),
        (
            Dataset::Events,
            T0 + 30 * MIN,
            T0 + 32 * MIN,
            Some("10s"),
            vec![],
            vec![],
        ),
        (Dataset::Attempts, T0, T0 + 4 * 60 * MIN, Some("1h"), vec![], vec![]),
        (
            Dataset::Attempts,
            T0 + 61_001,
            T0 + 150 * MIN + 999,
            Some("1h"),
            vec![Dim::DestinationId],
            vec![],
        ),
        (
            Dataset::Attempts,
            T0 + 1,
            T0 + 4 * 60 * MIN,
            None,
            vec![Dim::Status, Dim::Code],
            vec![(Dim::TenantId, vec!["mt1".into()])],
        ),
        (
            Dataset::Attempts,
            T0 + 10 * MIN,
            T0 + 130 * MIN,
            Some("5m"),
            vec![Dim::Manual, Dim::AttemptNumber],
            vec![(Dim::DestinationType, vec!["webhook".into()])],
        ),
        (
            Dataset::Attempts,
            T0,
            T0 + 4 * 60 * MIN,
            Some("30m"),
            vec![Dim::Topic],
            vec![
                (Dim::Status, vec!["failed".into()]),
                (Dim::Manual, vec!["false".into()]),
            ],
        ),
        (
            Dataset::Attempts,
            T0 + 45 * MIN + 3,
            T0 + 47 * MIN,
            Some("1s"),
            vec![],
            vec![],
        ),
    ];
    for (dataset, start_ms, end_ms, gran, dims, filters) in cases {
        let q = Query {
            dataset,
            start_ms,
            end_ms,
            granularity: gran.map(|g| Granularity::parse(g).unwrap()),
            measures: match dataset {
                Dataset::Events => vec![Measure::Count, Measure::Rate],
                Dataset::Attempts => all_attempt_measures.clone(),
            },
            dims,
            filters,
        };
        let got = crate::store::answer_metrics(store, &q).await.unwrap();
        let want = expected(&q);
        let show = |a: &crate::metrics::Answer| -> Vec<String> {
            a.data
                .iter()
                .map(|d| format!("{:?} {:?} {:?}", d.time_bucket, d.dimensions, d.metrics))
                .collect()
        };
        assert_eq!(show(&got), show(&want), "{q:?}");
        assert!(
            want.data.iter().any(|d| d.metrics["count"] != 0),
            "the case counts something: {q:?}"
        );
    }
}

/// Retention deletes rows and rollups before the cutoff, keeps the rest, and
/// a second run finds nothing more to delete.
pub(crate) async fn run_retention(store: &dyn LogStore, writer: &dyn LogWriter) {
    use crate::metrics::{Dataset, Granularity, Measure, Query};
    use crate::store::retention::{Policy, DAY_MS};
    const NOW: i64 = 1_796_464_800_000; // 2026-12-05T10:00:00Z
    let mut policy = Policy::new(NOW, 2, 0);
    // Nothing is held back for publish idempotency here (the embedded
    // store's own test covers that).
    policy.keep_accepted_after = i64::MAX;
    let cut = policy.cutoff_ms;
    let times = [
        ("old", cut - 5 * DAY_MS + 3),
        ("edge", cut - 1),
        ("kept", cut),
        ("now", NOW),
    ];
    let events: Vec<_> = times
        .iter()
        .map(|(n, t)| event(&format!("r-{n}"), "rt", "x", *t, &["rd"]))
        .collect();
    let attempts: Vec<_> = times
        .iter()
        .map(|(n, t)| {
            attempt(
                &format!("ra-{n}"),
                "rt",
                &format!("r-{n}"),
                "rd",
                "webhook",
                1,
                true,
                *t,
            )
        })
        .collect();
    writer.write_logs(events, attempts).await.unwrap();
    let per_day = |dataset| Query {
        dataset,
        start_ms: cut - 6 * DAY_MS,
        end_ms: NOW - NOW % DAY_MS + DAY_MS,
        granularity: Some(Granularity::parse("1d").unwrap()),
        measures: vec![Measure::Count],
        dims: vec![],
        filters: vec![],
    };
    let counted = |a: crate::metrics::Answer| -> Vec<(String, u64)> {
        a.data
            .iter()
            .map(|d| (format!("{:?}", d.time_bucket), d.metrics["count"].as_u64().unwrap_or(0)))
            .filter(|(_, n)| *n != 0)
            .collect()
    };
    let before = counted(
        crate::store::answer_metrics(store, &per_day(Dataset::Attempts))
            .await
            .unwrap(),
    );
    assert_eq!(before.len(), 4, "{before:?}");

    let pruned = store.retain(policy).await.unwrap();
    assert_eq!((pruned.events, pruned.attempts), (2, 2), "{pruned:?}");
    assert!(
        pruned.rollup_rows >= 6,
        "minute, hour and day rows of two days: {pruned:?}"
    );
    let q = ListQuery {
        tenant_ids: vec!["rt".into()],
        ..Default::default()
    };
    assert_eq!(ids_e(&store.list_events(q.clone()).await.unwrap()), ["r-now", "r-kept"]);
    assert_eq!(ids_a(&store.list_attempts(q).await.unwrap()), ["ra-now", "ra-kept"]);
    for dataset in [Dataset::Events, Dataset::Attempts] {
        let after = counted(crate::store::answer_metrics(store, &per_day(dataset)).await.unwrap());
        assert_eq!(after.len(), 2, "{dataset:?}: only the two kept days count: {after:?}");
        assert_eq!(after.iter().map(|(_, n)| n).sum::<u64>(), 2, "{after:?}");
    }
    let again = store.retain(policy).await.unwrap();
    assert_eq!(
        (
            again.events,
            again.attempts,
            again.rollup_rows,
            again.partitions_dropped.len()
        ),
        (0, 0, 0, 0),
        "{again:?}"
    );
}
