//! `GET /metrics`: the node's counters in Prometheus' text format. The
//! values are the engine's own atomics (each shard's, the log pipeline's,
//! the operator events'), read at scrape time; `prometheus-client` only
//! encodes them. Labels are bounded: the shard index, an outcome; never a
//! tenant or destination id.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::Engine;
use crate::journal::Progress;
use crate::latency::Histogram;
use crate::shard::ShardStats;

struct Snapshot {
    shards: Vec<(Arc<ShardStats>, Arc<Progress>)>,
    log: Arc<crate::log_pipeline::Stats>,
    has_log_pipeline: bool,
    opevents: Option<Arc<crate::opevents::OperatorEvents>>,
    publish: Arc<Histogram>,
    alerts: Arc<super::AlertCounts>,
    index: Arc<crate::store::embedded::WriterStats>,
    retention: Option<Arc<crate::store::retention::Stats>>,
    batches: Vec<(&'static str, Arc<crate::coalesce::BatchStats>)>,
    unwritten_marks: Option<usize>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("metrics snapshot")
    }
}

type Enc<'a> = DescriptorEncoder<'a>;

fn per_shard(
    e: &mut Enc,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl Iterator<Item = u64>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (i, v) in values.enumerate() {
        let shard = [("shard", i.to_string())];
        let fam = m.encode_family(&shard)?;
        match kind {
            MetricType::Counter => ConstCounter::new(v).encode(fam)?,
            _ => ConstGauge::new(v as i64).encode(fam)?,
        }
    }
    Ok(())
}

fn single(e: &mut Enc, name: &str, help: &str, kind: MetricType, v: u64) -> Result<(), std::fmt::Error> {
    let m = e.encode_descriptor(name, help, None, kind)?;
    match kind {
        MetricType::Counter => ConstCounter::new(v).encode(m),
        _ => ConstGauge::new(v as i64).encode(m),
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.shards;
        {
            let mut m = e.encode_descriptor(
                "outrider_delivery_attempts",
                "Delivery attempts made, by shard and outcome.",
                None,
                MetricType::Counter,
            )?;
            for (i, (st, _)) in s.iter().enumerate() {
                for (outcome, v) in [("success", &st.successes), ("failed", &st.failures)] {
                    let labels = [("shard", i.to_string()), ("outcome", outcome.to_string())];
                    ConstCounter::new(v.load(Relaxed)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        if !self.batches.is_empty() {
            for (name, help, pick) in [
                (
                    "outrider_batched_calls",
                    "Queue mode: calls (publishes, Redis commands) sent in batches, by kind.",
                    (|b: &crate::coalesce::BatchStats| b.calls.load(Relaxed)) as fn(&_) -> u64,
                ),
                (
                    "outrider_batches",
                    "Queue mode: batches those calls went out in, by kind.",
                    |b: &crate::coalesce::BatchStats| b.batches.load(Relaxed),
                ),
            ] {
                let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (kind, stats) in &self.batches {
                    let labels = [("kind", kind.to_string())];
                    ConstCounter::new(pick(stats)).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        per_shard(
            &mut e,
            "outrider_deliveries_pending",
            "Deliveries accepted and not yet settled: queued, in flight or waiting for a retry.",
            MetricType::Gauge,
            s.iter().map(|(st, _)| st.pending.load(Relaxed)),
        )?;
        per_shard(
            &mut e,
            "outrider_deliveries_in_flight",
            "Attempts running now.",
            MetricType::Gauge,
            s.iter().map(|(st, _)| st.in_flight.load(Relaxed)),
        )?;
        per_shard(
            &mut e,
            "outrider_deliveries_scheduled",
            "Deliveries waiting for a timer: retries in their backoff, and deliveries put back for a moment.",
            MetricType::Gauge,
            s.iter().map(|(st, _)| st.scheduled.load(Relaxed)),
        )?;
        per_shard(
            &mut e,
            "outrider_deliveries_queued",
            "Deliveries ready and waiting for a free attempt slot (pending less in flight and scheduled).",
            MetricType::Gauge,
            s.iter().map(|(st, _)| {
                let busy = st.in_flight.load(Relaxed) + st.scheduled.load(Relaxed);
                st.pending.load(Relaxed).saturating_sub(busy)
            }),
        )?;
        per_shard(
            &mut e,
            "outrider_deliveries_dropped",
            "Deliveries settled without an attempt (destination deleted or disabled).",
            MetricType::Counter,
            s.iter().map(|(st, _)| st.dropped.load(Relaxed)),
        )?;
        per_shard(
            &mut e,
            "outrider_deliveries_not_attempted",
            "Deliveries put back without an attempt (the egress proxy was unavailable).",
            MetricType::Counter,
            s.iter().map(|(st, _)| st.not_attempted.load(Relaxed)),
        )?;
        per_shard(
            &mut e,
            "outrider_deliveries_deferred",
            "Queue-mode deliveries handed back to the shared schedule, not attempted, because their destination was backed up on this node.",
            MetricType::Counter,
            s.iter().map(|(st, _)| st.deferred.load(Relaxed)),
        )?;
        per_shard(
            &mut e,
            "outrider_attempt_panics",
            "Attempts whose publisher panicked (each settled as a failed attempt).",
            MetricType::Counter,
            s.iter().map(|(st, _)| st.panics.load(Relaxed)),
        )?;
        per_shard(
            &mut e,
            "outrider_journal_read_errors",
            "Events that could not be read back from the journal (each retried).",
            MetricType::Counter,
            s.iter().map(|(st, _)| st.read_errors.load(Relaxed)),
        )?;
        per_shard(
            &mut e,
            "outrider_journal_index_lag_bytes",
            "Journal bytes committed but not yet in the event and attempt index.",
            MetricType::Gauge,
            s.iter()
                .map(|(_, p)| p.durable.load(Relaxed).saturating_sub(p.indexed.load(Relaxed))),
        )?;
        per_shard(
            &mut e,
            "outrider_shard_up",
            "1 while the shard's loop runs with a working journal.",
            MetricType::Gauge,
            s.iter()
                .map(|(st, p)| (st.running.load(Relaxed) && !p.failed.load(Relaxed)) as u64),
        )?;
        per_shard(
            &mut e,
            "outrider_journal_commits",
            "Group commits of the shard's journal (one write and fdatasync each).",
            MetricType::Counter,
            s.iter().map(|(_, p)| p.commits.load(Relaxed)),
        )?;
        per_shard(
            &mut e,
            "outrider_journal_commit_requests",
            "Commit requests the group commits carried (divided by commits: the batch size).",
            MetricType::Counter,
            s.iter().map(|(_, p)| p.commit_requests.load(Relaxed)),
        )?;
        per_shard(
            &mut e,
            "outrider_journal_commit_bytes",
            "Bytes the group commits wrote.",
            MetricType::Counter,
            s.iter().map(|(_, p)| p.commit_bytes.load(Relaxed)),
        )?;
        {
            let mut m = e.encode_descriptor(
                "outrider_journal_commit_duration_seconds",
                "Time of one group commit: the writes and the fdatasync.",
                None,
                MetricType::Histogram,
            )?;
            for (i, (_, p)) in s.iter().enumerate() {
                let (sum, count, buckets) = p.commit_latency.snapshot();
                let shard = [("shard", i.to_string())];
                m.encode_family(&shard)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        single(
            &mut e,
            "outrider_store_commits",
            "Transactions of the embedded store's writer (the event and attempt index, entities).",
            MetricType::Counter,
            self.index.commits.load(Relaxed),
        )?;
        single(
            &mut e,
            "outrider_store_commit_records",
            "Events and attempts those transactions wrote (divided by commits: the batch size).",
            MetricType::Counter,
            self.index.records.load(Relaxed),
        )?;
        {
            let m = e.encode_descriptor(
                "outrider_store_commit_duration_seconds",
                "Time to apply and commit one transaction of the embedded store's writer.",
                None,
                MetricType::Histogram,
            )?;
            let (sum, count, buckets) = self.index.latency.snapshot();
            let mut m = m;
            m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        {
            let mut m = e.encode_descriptor(
                "outrider_attempt_duration_seconds",
                "Time from the start of an attempt to its outcome.",
                None,
                MetricType::Histogram,
            )?;
            for (i, (st, _)) in s.iter().enumerate() {
                let (sum, count, buckets) = st.attempt_latency.snapshot();
                let shard = [("shard", i.to_string())];
                m.encode_family(&shard)?
                    .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
            }
        }
        {
            let m = e.encode_descriptor(
                "outrider_publish_duration_seconds",
                "Time to accept a POST /publish: parse, match, and commit to the journals.",
                None,
                MetricType::Histogram,
            )?;
            let (sum, count, buckets) = self.publish.snapshot();
            let mut m = m;
            m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        if self.has_log_pipeline {
            single(
                &mut e,
                "outrider_log_pipeline_shipped",
                "Events and attempts written to PostgreSQL.",
                MetricType::Counter,
                self.log.shipped.load(Relaxed),
            )?;
            single(
                &mut e,
                "outrider_log_pipeline_quarantined",
                "Records PostgreSQL refused, kept in log_dead_letters.",
                MetricType::Counter,
                self.log.quarantined.load(Relaxed),
            )?;
            single(
                &mut e,
                "outrider_log_pipeline_lag_records",
                "Events and attempts on this node not yet written to PostgreSQL (after the last batch).",
                MetricType::Gauge,
                self.log.lag.load(Relaxed),
            )?;
            single(
                &mut e,
                "outrider_log_pipeline_failing",
                "1 while writes to PostgreSQL fail (records wait on disk).",
                MetricType::Gauge,
                self.log.failing.load(Relaxed) as u64,
            )?;
        }
        {
            let mut m = e.encode_descriptor(
                "outrider_alerts",
                "Alerts this node raised for the operator-event sink, by kind (only topics a sink takes are raised).",
                None,
                MetricType::Counter,
            )?;
            let a = &self.alerts;
            for (kind, v) in [
                ("consecutive_failure", &a.consecutive_failure),
                ("exhausted_retries", &a.exhausted_retries),
            ] {
                ConstCounter::new(v.load(Relaxed)).encode(m.encode_family(&[("kind", kind)])?)?;
            }
        }
        single(
            &mut e,
            "outrider_destinations_auto_disabled",
            "Destinations this node disabled after consecutive failures.",
            MetricType::Counter,
            self.alerts.auto_disabled.load(Relaxed),
        )?;
        if let Some(r) = &self.retention {
            single(
                &mut e,
                "outrider_log_retention_runs",
                "Log retention runs that finished.",
                MetricType::Counter,
                r.runs.load(Relaxed),
            )?;
            single(
                &mut e,
                "outrider_log_retention_failures",
                "Log retention runs that failed (tried again an hour later).",
                MetricType::Counter,
                r.failed.load(Relaxed),
            )?;
            single(
                &mut e,
                "outrider_log_retention_partitions_dropped",
                "Daily PostgreSQL partitions dropped by log retention.",
                MetricType::Counter,
                r.partitions_dropped.load(Relaxed),
            )?;
            single(
                &mut e,
                "outrider_log_retention_rows_deleted",
                "Events and attempts log retention deleted row by row.",
                MetricType::Counter,
                r.rows_deleted.load(Relaxed),
            )?;
        }
        if let Some(n) = self.unwritten_marks {
            single(
                &mut e,
                "outrider_done_marks_unwritten",
                "Delivery tasks committed here whose done mark Redis has not taken yet (written when it answers).",
                MetricType::Gauge,
                n as u64,
            )?;
        }
        if let Some(o) = &self.opevents {
            single(
                &mut e,
                "outrider_operator_events_sent",
                "Operator events (alerts and others) delivered to the sink.",
                MetricType::Counter,
                o.stats.sent.load(Relaxed),
            )?;
            single(
                &mut e,
                "outrider_operator_events_dropped",
                "Best-effort operator events dropped because their queue was full.",
                MetricType::Counter,
                o.stats.dropped.load(Relaxed),
            )?;
            single(
                &mut e,
                "outrider_operator_events_failed_sends",
                "Sends to the operator-event sink that failed (alerts are retried).",
                MetricType::Counter,
                o.stats.failed_sends.load(Relaxed),
            )?;
        }
        Ok(())
    }
}

impl Engine {
    /// The Prometheus text exposition of this node's counters.
    pub fn prometheus_text(&self) -> String {
        let snapshot = Snapshot {
            shards: self
                .shards
                .iter()
                .map(|h| (h.stats.clone(), h.progress.clone()))
                .collect(),
            log: self.log_stats.clone(),
            has_log_pipeline: self.pipeline.lock().is_some(),
            opevents: self.opevents.clone(),
            publish: self.publish_latency.clone(),
            alerts: self.alert_counts.clone(),
            index: self.store.writer_stats.clone(),
            retention: self.config.log_retention_days.map(|_| self.retention_stats.clone()),
            batches: self.batch_stats.lock().clone(),
            unwritten_marks: self.unwritten_marks.as_ref().map(|m| m.len()),
        };
        let mut registry = Registry::default();
        registry.register_collector(Box::new(snapshot));
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}
