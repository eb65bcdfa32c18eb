//! The report: JSON for machines, a self-contained HTML page with SVG plots
//! for people, and a one-screen summary for the terminal.

use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::Serialize;

use crate::scenario::Scenario;

#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
    pub count: u64,
}

impl From<&Histogram<u64>> for Percentiles {
    fn from(h: &Histogram<u64>) -> Self {
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            max: h.max(),
            mean: h.mean(),
            count: h.len(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Provisioning {
    pub tenants: u64,
    pub destinations: u64,
    pub seconds: f64,
    pub rss_before_bytes: Option<u64>,
    pub rss_after_bytes: Option<u64>,
    pub bytes_per_destination: Option<f64>,
    /// Of which anonymous memory (heap) and file-backed pages (the mmap'd store).
    pub heap_bytes_per_destination: Option<f64>,
    pub file_bytes_per_destination: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Publish {
    pub published: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub errors: u64,
    pub seconds: f64,
    pub per_s: f64,
    pub latency_us: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub expected: u64,
    pub delivered: u64,
    pub duplicates: u64,
    pub lost: u64,
    /// Unique deliveries ÷ time from the first publish to the last delivery.
    pub per_s: f64,
    pub span_seconds: f64,
    /// Publish sent → delivered at the sink.
    pub latency_us: Percentiles,
    pub sink_requests: u64,
    pub failures_sent: u64,
    pub bad_signatures: u64,
}

/// The server's log pipeline (PostgreSQL), from its `/metrics`
/// (`outrider_log_pipeline_lag_records`, sampled every 250 ms).
#[derive(Debug, Clone, Serialize)]
pub struct LogLag {
    /// Most records waiting to be shipped at any sample during the run.
    pub max_records: u64,
    /// Waiting when the last delivery arrived.
    pub at_last_delivery: u64,
    /// From the last delivery to a sample with nothing waiting; `None`: not
    /// within 60 s.
    pub caught_up_seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Process {
    pub cpu_seconds: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    /// `cpu_seconds` by what the server's threads do (from their names),
    /// most first; empty for a `--target` server.
    pub threads: Vec<ThreadRole>,
    /// What the block device holding the server's data dir completed over
    /// the same window as `cpu_seconds` (journal, SQLite WAL, checkpoints;
    /// whole-device counts). `None` for a `--target` server or off a block
    /// device.
    pub device_writes: Option<DeviceWrites>,
    /// CPU seconds of the local back ends (Redis, RabbitMQ, PostgreSQL,
    /// NATS; by process name) over the same window, most first; empty when
    /// none ran or the server is a `--target`.
    pub back_ends: Vec<ThreadRole>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThreadRole {
    pub role: String,
    pub cpu_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceWrites {
    pub bytes: u64,
    pub requests: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub requests_per_s: f64,
    pub seconds: u64,
    pub connections: usize,
    pub threads: usize,
    /// What the raw client was.
    pub client: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub bucket_ms: u64,
    pub published: Vec<u64>,
    pub delivered: Vec<u64>,
}

/// `(quantile, publish µs, end-to-end µs)` rows for the latency plot.
pub type Quantiles = Vec<(f64, u64, u64)>;

pub fn quantiles(publish: &Histogram<u64>, e2e: &Histogram<u64>) -> Quantiles {
    [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9999, 1.0]
        .iter()
        .map(|&q| (q, publish.value_at_quantile(q), e2e.value_at_quantile(q)))
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub date: String,
    pub cores: usize,
    pub server: String,
    pub provisioning: Provisioning,
    pub publish: Publish,
    pub delivery: Delivery,
    pub server_process: Process,
    pub baseline: Option<Baseline>,
    /// Engine deliveries/s ÷ raw client requests/s into the same sink: the
    /// share of the ceiling (webhook scenarios, where the raw client is the
    /// fastest way in).
    pub ratio: Option<f64>,
    /// Engine deliveries/s ÷ the raw client of the same broker (broker
    /// scenarios). The two make different calls (SQS, Kinesis: one message
    /// per call against the engine's batches; Pub/Sub: the library's batching
    /// publisher), so this can pass 1: a comparison, not a share of a
    /// ceiling, and kept apart from `ratio` for that reason.
    pub vs_raw_client: Option<f64>,
    pub series: Series,
    pub latency_quantiles: Quantiles,
    /// `None` when the server ships no log (embedded mode).
    pub log_lag: Option<LogLag>,
    /// The server's journal group commits while publishing (its `/metrics`);
    /// `None` when it has no journal metrics (another server, queue mode).
    pub journal: Option<JournalCommits>,
}

/// Group commits of every shard's journal from the start to the end of
/// publishing: how many, how many commit requests each carried, and their
/// duration (write + `fdatasync`) from the server's histogram, so a
/// publish-latency tail can be told apart from a slow disk.
#[derive(Debug, Clone, Serialize, Default)]
pub struct JournalCommits {
    pub commits: u64,
    pub requests_per_commit: f64,
    pub mean_ms: f64,
    /// Upper bounds of the histogram buckets holding these quantiles.
    pub p50_le_ms: f64,
    pub p99_le_ms: f64,
    pub max_le_ms: f64,
    /// Commits that took longer than 5 ms (the histogram's bucket bound).
    pub over_5ms: u64,
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

impl Report {
    pub fn summary(&self) -> String {
        let p = &self.publish;
        let d = &self.delivery;
        let mut s = String::new();
        s.push_str(&format!("== {} — {}\n", self.scenario.name, self.scenario.description));
        s.push_str(&format!(
            "provisioned   {} tenants × {} destinations in {:.1} s{}\n",
            self.provisioning.tenants,
            self.scenario.destinations_per_tenant,
            self.provisioning.seconds,
            self.provisioning
                .bytes_per_destination
                .map(|b| format!(
                    " (server RSS +{b:.0} B per destination: heap {:.0} B, file-backed {:.0} B)",
                    self.provisioning.heap_bytes_per_destination.unwrap_or(0.0),
                    self.provisioning.file_bytes_per_destination.unwrap_or(0.0)
                ))
                .unwrap_or_default()
        ));
        s.push_str(&format!(
            "publish       {} sent, {} accepted, {} rejected, {} errors; {:.0}/s\n",
            p.published, p.accepted, p.rejected, p.errors, p.per_s
        ));
        s.push_str(&format!(
            "  latency     p50 {}  p90 {}  p99 {}  max {}\n",
            ms(p.latency_us.p50),
            ms(p.latency_us.p90),
            ms(p.latency_us.p99),
            ms(p.latency_us.max)
        ));
        s.push_str(&format!(
            "delivery      {} expected, {} delivered, {} duplicated, {} LOST; {:.0} deliveries/s\n",
            d.expected, d.delivered, d.duplicates, d.lost, d.per_s
        ));
        s.push_str(&format!(
            "  end-to-end  p50 {}  p90 {}  p99 {}  max {}\n",
            ms(d.latency_us.p50),
            ms(d.latency_us.p90),
            ms(d.latency_us.p99),
            ms(d.latency_us.max)
        ));
        s.push_str(&format!(
            "  sink        {} requests, {} answered 500 on purpose, {} bad signatures\n",
            d.sink_requests, d.failures_sent, d.bad_signatures
        ));
        if let Some(l) = &self.log_lag {
            s.push_str(&format!(
                "  log lag     max {} records, {} at the last delivery, {}\n",
                l.max_records,
                l.at_last_delivery,
                l.caught_up_seconds
                    .map(|c| format!("all shipped {c:.2} s after it"))
                    .unwrap_or_else(|| "NOT caught up within 60 s".into())
            ));
        }
        if let Some(j) = &self.journal {
            s.push_str(&format!(
                "  journal     {} group commits ({:.1} requests each), mean {:.2} ms, p50 ≤ {} ms, p99 ≤ {} ms, max ≤ {} ms, {} over 5 ms\n",
                j.commits, j.requests_per_commit, j.mean_ms, j.p50_le_ms, j.p99_le_ms, j.max_le_ms, j.over_5ms
            ));
        }
        if let (Some(c), Some(r)) = (self.server_process.cpu_seconds, self.server_process.peak_rss_bytes) {
            s.push_str(&format!(
                "server        {:.1} CPU s ({:.1} µs per delivery), peak RSS {:.1} MiB\n",
                c,
                c * 1e6 / d.delivered.max(1) as f64,
                r as f64 / 1048576.0
            ));
        }
        if let Some(total) = self.server_process.cpu_seconds.filter(|c| *c > 0.0) {
            let roles: Vec<String> = self
                .server_process
                .threads
                .iter()
                .map(|t| {
                    format!(
                        "{} {:.0}% ({:.1} µs)",
                        t.role,
                        t.cpu_seconds * 100.0 / total,
                        t.cpu_seconds * 1e6 / d.delivered.max(1) as f64
                    )
                })
                .collect();
            if !roles.is_empty() {
                s.push_str(&format!("  threads     {}\n", roles.join(", ")));
            }
        }
        if !self.server_process.back_ends.is_empty() {
            let per = |c: f64| c * 1e6 / d.delivered.max(1) as f64;
            let all: f64 = self.server_process.back_ends.iter().map(|b| b.cpu_seconds).sum();
            let each: Vec<String> = self
                .server_process
                .back_ends
                .iter()
                .map(|b| format!("{} {:.1} µs", b.role, per(b.cpu_seconds)))
                .collect();
            s.push_str(&format!(
                "back ends     {:.1} CPU s ({:.1} µs per delivery: {}); server + back ends {:.1} µs per delivery\n",
                all,
                per(all),
                each.join(", "),
                per(all + self.server_process.cpu_seconds.unwrap_or(0.0))
            ));
        }
        if let Some(w) = &self.server_process.device_writes {
            s.push_str(&format!(
                "  disk        {:.1} MiB in {} writes to the data dir's device ({:.1} KiB per delivery; whole device)\n",
                w.bytes as f64 / 1048576.0,
                w.requests,
                w.bytes as f64 / 1024.0 / d.delivered.max(1) as f64
            ));
        }
        if let Some(b) = &self.baseline {
            s.push_str(&format!(
                "baseline      {}: {:.0} req/s ({} in flight, {} threads)\n",
                b.client, b.requests_per_s, b.connections, b.threads
            ));
        }
        if let Some(r) = self.ratio {
            s.push_str(&format!(
                "RATIO         engine deliveries/s ÷ raw client req/s = {r:.3}\n"
            ));
        }
        if let Some(x) = self.vs_raw_client {
            s.push_str(&format!(
                "VS RAW CLIENT engine deliveries/s ÷ the broker's raw client msgs/s = {x:.2}x (the two make different calls, e.g. batches against one message per call: a comparison, not a share of a ceiling)\n"
            ));
        }
        s
    }

    pub fn html(&self) -> String {
        let json = serde_json::to_string_pretty(self).unwrap_or_default();
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Outrider load test: {name}</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto}}pre{{background:#f5f5f5;padding:1em;overflow:auto}}</style></head>\
             <body><h1>Load test: {name}</h1><pre>{summary}</pre><h2>Throughput</h2>{tp}<h2>Latency</h2>{lat}\
             <h2>Raw report</h2><pre>{json}</pre></body></html>",
            name = html_escape(&self.scenario.name),
            summary = html_escape(&self.summary()),
            tp = self.throughput_svg(),
            lat = self.latency_svg(),
            json = html_escape(&json),
        )
    }

    fn throughput_svg(&self) -> String {
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (900, 360)).into_drawing_area();
            let _ = root.fill(&WHITE);
            let per_s = 1000.0 / self.series.bucket_ms as f64;
            let n = self.series.published.len().max(1);
            let max_y = self
                .series
                .published
                .iter()
                .chain(self.series.delivered.iter())
                .copied()
                .max()
                .unwrap_or(1) as f64
                * per_s;
            let secs = n as f64 * self.series.bucket_ms as f64 / 1000.0;
            if let Ok(mut chart) = ChartBuilder::on(&root)
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..secs.max(1.0), 0f64..(max_y * 1.1).max(1.0))
            {
                let _ = chart.configure_mesh().x_desc("seconds").y_desc("per second").draw();
                let series = |v: &Vec<u64>| -> Vec<(f64, f64)> {
                    v.iter()
                        .enumerate()
                        .map(|(i, c)| (i as f64 * self.series.bucket_ms as f64 / 1000.0, *c as f64 * per_s))
                        .collect()
                };
                if let Ok(a) = chart.draw_series(LineSeries::new(series(&self.series.published), &BLUE)) {
                    a.label("accepted publishes/s")
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
                }
                if let Ok(a) = chart.draw_series(LineSeries::new(series(&self.series.delivered), &RED)) {
                    a.label("deliveries/s")
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
                }
                let _ = chart.configure_series_labels().border_style(BLACK).draw();
            }
            let _ = root.present();
        }
        out
    }

    fn latency_svg(&self) -> String {
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (900, 360)).into_drawing_area();
            let _ = root.fill(&WHITE);
            // x: "nines" (−log10(1−q)), so the tail is visible.
            let nines = |q: f64| -(1.0 - q.min(0.99999)).log10();
            let max_ms = self.latency_quantiles.iter().map(|r| r.1.max(r.2)).max().unwrap_or(1) as f64 / 1000.0;
            if let Ok(mut chart) = ChartBuilder::on(&root)
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..5.0, 0f64..(max_ms * 1.1).max(0.1))
            {
                let _ = chart
                    .configure_mesh()
                    .x_desc("percentile (0=p0, 1=p90, 2=p99, 3=p99.9, 4=p99.99)")
                    .y_desc("ms")
                    .draw();
                let pts = |f: fn(&(f64, u64, u64)) -> u64| -> Vec<(f64, f64)> {
                    self.latency_quantiles
                        .iter()
                        .map(|r| (nines(r.0), f(r) as f64 / 1000.0))
                        .collect()
                };
                if let Ok(a) = chart.draw_series(LineSeries::new(pts(|r| r.1), &BLUE)) {
                    a.label("publish (API)")
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
                }
                if let Ok(a) = chart.draw_series(LineSeries::new(pts(|r| r.2), &RED)) {
                    a.label("publish → delivered")
                        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
                }
                let _ = chart.configure_series_labels().border_style(BLACK).draw();
            }
            let _ = root.present();
        }
        out
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
