//! OpenTelemetry: the server exports traces, metrics and logs over OTLP to a
//! receiver in this test (gRPC through tonic, HTTP/protobuf through axum,
//! both decoding the OTLP protobuf messages).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use serde_json::json;

use crate::common::*;

/// A span as received.
#[derive(Debug, Clone)]
struct Span {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attrs: HashMap<String, String>,
    service: String,
}

#[derive(Default)]
struct Seen {
    spans: Vec<Span>,
    /// Metric name → the attribute sets of its data points, as text.
    metrics: HashMap<String, Vec<String>>,
    logs: Vec<String>,
}

#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Seen>>);

fn text(kv: &[KeyValue]) -> HashMap<String, String> {
    kv.iter()
        .map(|k| {
            let v = match k.value.as_ref().and_then(|v| v.value.clone()) {
                Some(AnyValue::StringValue(s)) => s,
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                Some(AnyValue::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (k.key.clone(), v)
        })
        .collect()
}

impl Collector {
    fn traces(&self, req: ExportTraceServiceRequest) {
        let mut seen = self.0.lock().unwrap();
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .map(|r| text(&r.attributes).remove("service.name").unwrap_or_default())
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    seen.spans.push(Span {
                        name: s.name,
                        trace_id: s.trace_id,
                        span_id: s.span_id,
                        parent_span_id: s.parent_span_id,
                        attrs: text(&s.attributes),
                        service: service.clone(),
                    });
                }
            }
        }
    }

    fn metrics(&self, req: ExportMetricsServiceRequest) {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        let mut seen = self.0.lock().unwrap();
        for rm in req.resource_metrics {
            for sm in rm.scope_metrics {
                for m in sm.metrics {
                    let points: Vec<String> = match &m.data {
                        Some(Data::Sum(s)) => s
                            .data_points
                            .iter()
                            .map(|p| format!("{:?}", sorted(text(&p.attributes))))
                            .collect(),
                        Some(Data::Histogram(h)) => h
                            .data_points
                            .iter()
                            .map(|p| format!("{:?}", sorted(text(&p.attributes))))
                            .collect(),
                        _ => vec![],
                    };
                    seen.metrics.entry(m.name).or_default().extend(points);
                }
            }
        }
    }

    fn logs(&self, req: ExportLogsServiceRequest) {
        let mut seen = self.0.lock().unwrap();
        for rl in req.resource_logs {
            for sl in rl.scope_logs {
                for l in sl.log_records {
                    let body = match l.body.and_then(|b| b.value) {
                        Some(AnyValue::StringValue(s)) => s,
                        other => format!("{other:?}"),
                    };
                    seen.logs.push(body);
                }
            }
        }
    }

    /// Waits until `done` holds for what was received.
    async fn wait(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if done(&self.0.lock().unwrap()) {
                return;
            }
            if Instant::now() > deadline {
                let seen = self.0.lock().unwrap();
                panic!(
                    "{what}: not received in 20 s; spans {:?}, metrics {:?}, {} logs",
                    seen.spans.iter().map(|s| &s.name).collect::<Vec<_>>(),
                    seen.metrics.keys().collect::<Vec<_>>(),
                    seen.logs.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn sorted(m: HashMap<String, String>) -> Vec<(String, String)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort();
    v
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        r: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.traces(r.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        r: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics(r.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Collector {
    async fn export(
        &self,
        r: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.logs(r.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// An OTLP/gRPC receiver on a free port.
async fn grpc_receiver() -> (Collector, u16) {
    let c = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(c.clone()))
        .add_service(MetricsServiceServer::new(c.clone()))
        .add_service(LogsServiceServer::new(c.clone()))
        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener));
    tokio::spawn(server);
    (c, port)
}

/// An OTLP/HTTP (protobuf) receiver on a free port.
async fn http_receiver() -> (Collector, u16) {
    use axum::routing::post;
    let c = Collector::default();
    let (t, m, l) = (c.clone(), c.clone(), c.clone());
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            post(move |body: axum::body::Bytes| async move {
                t.traces(ExportTraceServiceRequest::decode(body).unwrap());
                ExportTraceServiceResponse::default().encode_to_vec()
            }),
        )
        .route(
            "/v1/metrics",
            post(move |body: axum::body::Bytes| async move {
                m.metrics(ExportMetricsServiceRequest::decode(body).unwrap());
                ExportMetricsServiceResponse::default().encode_to_vec()
            }),
        )
        .route(
            "/v1/logs",
            post(move |body: axum::body::Bytes| async move {
                l.logs(ExportLogsServiceRequest::decode(body).unwrap());
                ExportLogsServiceResponse::default().encode_to_vec()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (c, port)
}

/// Publishes one event to a webhook that fails once, then succeeds on the
/// retry; checks the trace (publish → match, and both attempts, in one
/// trace keyed by the event) and Outpost's metric names.
async fn one_event_traced(otel: &Collector, env: &[(&str, &str)]) {
    let mut all = vec![
        ("OTEL_SERVICE_NAME", "outrider-e2e"),
        // Seconds, not the SDK's defaults of 5 s (spans) and 60 s (metrics).
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
        ("LOG_LEVEL", "info"),
    ];
    all.extend_from_slice(env);
    let s = Server::start(&all).await;
    let admin = Api::admin(&s);
    admin.tenant("t-otel").await;
    let rx = Receiver::start().await;
    rx.state.script.lock().unwrap().push_back(500);
    admin.webhook("t-otel", &rx.url("/hook"), json!({"id": "d-otel"})).await;
    let r = admin
        .publish(json!({"id": "evt-otel-1", "tenant_id": "t-otel", "topic": "user.created", "data": {"a": 1}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    admin
        .wait_attempts("tenant_id=t-otel", Duration::from_secs(15), |m| {
            m.iter().any(|a| a["status"] == "success")
        })
        .await;
    otel.wait("publish, match and two attempt spans", |seen| {
        let n = |name: &str| seen.spans.iter().filter(|s| s.name == name).count();
        n("publish") >= 1 && n("match") >= 1 && n("attempt") >= 2
    })
    .await;
    {
        let seen = otel.0.lock().unwrap();
        for sp in &seen.spans {
            println!(
                "span {:<8} trace {} span {} parent {} {:?}",
                sp.name,
                hex::encode(&sp.trace_id),
                hex::encode(&sp.span_id),
                hex::encode(&sp.parent_span_id),
                sorted(sp.attrs.clone())
            );
        }
        let publish = seen.spans.iter().find(|s| s.name == "publish").unwrap();
        assert_eq!(publish.attrs["event_id"], "evt-otel-1");
        assert_eq!(publish.attrs["destinations_matched"], "1");
        assert_eq!(publish.service, "outrider-e2e");
        assert!(publish.parent_span_id.is_empty(), "publish is the root");
        let matching = seen.spans.iter().find(|s| s.name == "match").unwrap();
        assert_eq!(
            (&matching.trace_id, &matching.parent_span_id),
            (&publish.trace_id, &publish.span_id)
        );
        let mut attempts: Vec<&Span> = seen.spans.iter().filter(|s| s.name == "attempt").collect();
        attempts.sort_by_key(|s| s.attrs["attempt_number"].clone());
        for a in &attempts {
            assert_eq!(
                a.trace_id, publish.trace_id,
                "every attempt is in the event's trace: {a:?}"
            );
            assert_eq!(a.parent_span_id, publish.span_id, "{a:?}");
            assert_eq!(a.attrs["event_id"], "evt-otel-1");
            assert_eq!(a.attrs["destination_id"], "d-otel");
            assert_eq!(a.attrs["destination_type"], "webhook");
        }
        assert_eq!(
            attempts
                .iter()
                .map(|a| (
                    a.attrs["attempt_number"].as_str(),
                    a.attrs["status"].as_str(),
                    a.attrs["code"].as_str()
                ))
                .collect::<Vec<_>>(),
            [("1", "failed", "500"), ("2", "success", "200")]
        );
    }
    otel.wait("Outpost's metrics", |seen| {
        [
            "outpost.published_events",
            "outpost.eligible_events",
            "outpost.delivered_events",
            "outpost.delivery_latency",
            "outpost.api_calls",
            "outpost.api_response_latency",
            "outpost.delivery_connections",
        ]
        .iter()
        .all(|m| seen.metrics.contains_key(*m))
    })
    .await;
    {
        let seen = otel.0.lock().unwrap();
        let has = |metric: &str, point: &str| seen.metrics[metric].iter().any(|p| p == point);
        assert!(
            has(
                "outpost.delivered_events",
                r#"[("status", "failed"), ("type", "webhook")]"#
            ),
            "{:?}",
            seen.metrics["outpost.delivered_events"]
        );
        assert!(has(
            "outpost.delivered_events",
            r#"[("status", "success"), ("type", "webhook")]"#
        ));
        assert!(has("outpost.published_events", r#"[("topic", "user.created")]"#));
        assert!(
            has(
                "outpost.api_calls",
                r#"[("method", "POST"), ("path", "/api/v1/publish")]"#
            ),
            "route patterns, never ids: {:?}",
            seen.metrics["outpost.api_calls"]
        );
        assert!(
            seen.metrics["outpost.api_calls"].iter().all(|p| !p.contains("t-otel")),
            "{:?}",
            seen.metrics["outpost.api_calls"]
        );
    }
    otel.wait("the start's log line", |seen| {
        seen.logs.iter().any(|l| l.contains("outrider listening"))
    })
    .await;
}

#[tokio::test]
async fn traces_metrics_and_logs_reach_an_otlp_grpc_receiver() {
    let (otel, port) = grpc_receiver().await;
    let endpoint = format!("http://127.0.0.1:{port}");
    one_event_traced(&otel, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]).await;
}

#[tokio::test]
async fn traces_metrics_and_logs_reach_an_otlp_http_receiver() {
    let (otel, port) = http_receiver().await;
    let endpoint = format!("http://127.0.0.1:{port}");
    one_event_traced(
        &otel,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_PROTOCOL", "http/protobuf"),
        ],
    )
    .await;
}

/// Only the signals with an endpoint are exported, and a setting that
/// cannot be used stops the start naming it.
#[tokio::test]
async fn per_signal_endpoints_and_bad_settings() {
    let (otel, port) = http_receiver().await;
    let s = Server::start(&[
        ("OTEL_SERVICE_NAME", "outrider-e2e"),
        ("OTEL_PROTOCOL", "http"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
        (
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            &format!("http://127.0.0.1:{port}/v1/metrics"),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            &format!("http://127.0.0.1:{port}/v1/traces"),
        ),
        ("OTEL_TRACES_EXPORTER", "none"),
    ])
    .await;
    let admin = Api::admin(&s);
    admin.tenant("t-otel2").await;
    otel.wait("metrics", |seen| seen.metrics.contains_key("outpost.api_calls"))
        .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let seen = otel.0.lock().unwrap();
    assert!(seen.spans.is_empty(), "traces are off: {:?}", seen.spans);
    assert!(seen.logs.is_empty(), "logs have no endpoint: {:?}", seen.logs);
    drop(seen);
    let (code, err) = Server::run_once(&[("OTEL_SERVICE_NAME", "x"), ("OTEL_EXPORTER", "console")]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("OTEL_EXPORTER") && err.contains("not built"), "{err}");
}
