//! OpenTelemetry export over OTLP (gRPC or HTTP/protobuf), configured with
//! Outpost's `OTEL_*` keys: traces (publish → match → attempt), metrics
//! with Outpost's instrument names (meter `outpost`), and logs (the binary
//! bridges `tracing` events to the logger provider made here).
//!
//! An event's spans share one trace without carrying a context through the
//! journal or the delivery queue: the trace id and the publish span's id are
//! derived from the tenant and event ids, so a retry days later, on another
//! node or after a restart, lands in the same trace as its publish.
//!
//! Off (no `OTEL_SERVICE_NAME`), every hook is one load of an unset
//! `OnceLock`.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::metrics::{Counter, Histogram, MeterProvider as _};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol as OtlpProtocol, WithExportConfig};
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use sha2::Digest;

use crate::model::{AttemptStatus, Destination, Event};

thread_local! {
    /// The ids the next root span started on this thread takes (an event's
    /// publish span); unset, ids are random.
    static NEXT_TRACE: Cell<Option<TraceId>> = const { Cell::new(None) };
    static NEXT_SPAN: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// Random ids, except where [`NEXT_TRACE`]/[`NEXT_SPAN`] name them: the
/// SDK's span builder takes no ids of its own.
#[derive(Debug, Default)]
struct EventIds(RandomIdGenerator);

impl IdGenerator for EventIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE.with(Cell::take).unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN.with(Cell::take).unwrap_or_else(|| self.0.new_span_id())
    }
}

/// How one signal is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// What `OTEL_*` asks for; `None` for a signal that is not exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelConfig {
    pub service_name: String,
    pub traces: Option<Protocol>,
    pub metrics: Option<Protocol>,
    pub logs: Option<Protocol>,
}

pub use crate::settings::BadSetting;

struct SignalKeys {
    endpoint: &'static str,
    exporter: &'static str,
    protocol: &'static str,
}

const TRACES: SignalKeys = SignalKeys {
    endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    exporter: "OTEL_TRACES_EXPORTER",
    protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
};
const METRICS: SignalKeys = SignalKeys {
    endpoint: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    exporter: "OTEL_METRICS_EXPORTER",
    protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
};
const LOGS: SignalKeys = SignalKeys {
    endpoint: "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    exporter: "OTEL_LOGS_EXPORTER",
    protocol: "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
};

impl OtelConfig {
    /// Outpost's rules: `OTEL_SERVICE_NAME` turns it on; with only
    /// per-signal endpoints set, the signals without one are off; an
    /// exporter (per signal, else `OTEL_EXPORTER`) of `none` turns one off;
    /// the protocol is the signal's, else `OTEL_EXPORTER_OTLP_PROTOCOL`,
    /// else `OTEL_PROTOCOL`, else `grpc`. Endpoints themselves are read by
    /// the exporter from the environment, as the OpenTelemetry SDKs do.
    pub fn resolve(get: impl Fn(&'static str) -> Option<String>) -> Result<Option<Self>, BadSetting> {
        let Some(service_name) = get("OTEL_SERVICE_NAME") else {
            return Ok(None);
        };
        let generic = get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
        let any_signal_endpoint = [&TRACES, &METRICS, &LOGS].iter().any(|k| get(k.endpoint).is_some());
        let signal = |keys: &SignalKeys| -> Result<Option<Protocol>, BadSetting> {
            if !generic && any_signal_endpoint && get(keys.endpoint).is_none() {
                return Ok(None);
            }
            let (key, exporter) = match get(keys.exporter) {
                Some(v) => (keys.exporter, v),
                None => ("OTEL_EXPORTER", get("OTEL_EXPORTER").unwrap_or_else(|| "otlp".into())),
            };
            match exporter.to_ascii_lowercase().as_str() {
                "otlp" => {}
                "none" => return Ok(None),
                "console" | "stdout" => {
                    return Err(BadSetting {
                        key,
                        message: format!("the '{exporter}' exporter is not built: use otlp or none"),
                    })
                }
                _ => {
                    return Err(BadSetting {
                        key,
                        message: format!("'{exporter}' is not one of otlp, none"),
                    })
                }
            }
            let (key, protocol) = [keys.protocol, "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_PROTOCOL"]
                .into_iter()
                .find_map(|k| get(k).map(|v| (k, v)))
                .unwrap_or(("OTEL_PROTOCOL", "grpc".into()));
            match protocol.to_ascii_lowercase().as_str() {
                "grpc" => Ok(Some(Protocol::Grpc)),
                "http" | "http/protobuf" => Ok(Some(Protocol::HttpProtobuf)),
                _ => Err(BadSetting {
                    key,
                    message: format!("'{protocol}' is not one of grpc, http, http/protobuf"),
                }),
            }
        };
        Ok(Some(OtelConfig {
            service_name,
            traces: signal(&TRACES)?,
            metrics: signal(&METRICS)?,
            logs: signal(&LOGS)?,
        }))
    }
}

/// Outpost's instruments (`internal/emetrics`), same names, units and
/// attributes.
struct Instruments {
    delivery_latency: Histogram<u64>,
    delivered_events: Counter<u64>,
    published_events: Counter<u64>,
    eligible_events: Counter<u64>,
    api_response_latency: Histogram<u64>,
    api_calls: Counter<u64>,
    delivery_connections: Counter<u64>,
}

/// The installed exporters and what the hooks record into.
pub struct Telemetry {
    tracer: Option<SdkTracer>,
    instruments: Option<Instruments>,
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
    logger_provider: Option<SdkLoggerProvider>,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// The installed telemetry, when `OTEL_SERVICE_NAME` turned it on.
#[inline]
pub fn get() -> Option<&'static Telemetry> {
    TELEMETRY.get()
}

fn otlp(p: Protocol) -> OtlpProtocol {
    match p {
        Protocol::Grpc => OtlpProtocol::Grpc,
        Protocol::HttpProtobuf => OtlpProtocol::HttpBinary,
    }
}

/// Builds the exporters and installs the hooks' target. Call from inside a
/// Tokio runtime (the gRPC client is bound to it). Returns the logger
/// provider for the binary's `tracing` bridge, when logs are exported.
pub fn install(cfg: &OtelConfig) -> Result<Option<SdkLoggerProvider>, String> {
    let resource = Resource::builder().with_service_name(cfg.service_name.clone()).build();
    // One signal's OTLP exporter over its protocol (the three exporter
    // builders are distinct types with the same methods).
    macro_rules! exporter {
        ($kind:ident, $protocol:expr, $what:literal) => {
            match $protocol {
                Protocol::Grpc => opentelemetry_otlp::$kind::builder().with_tonic().build(),
                p @ Protocol::HttpProtobuf => opentelemetry_otlp::$kind::builder()
                    .with_http()
                    .with_protocol(otlp(p))
                    .build(),
            }
            .map_err(|e| format!("OpenTelemetry {} exporter: {e}", $what))?
        };
    }
    let tracer_provider = match cfg.traces {
        None => None,
        Some(p) => Some(
            SdkTracerProvider::builder()
                .with_id_generator(EventIds::default())
                .with_batch_exporter(exporter!(SpanExporter, p, "traces"))
                .with_resource(resource.clone())
                .build(),
        ),
    };
    let meter_provider = match cfg.metrics {
        None => None,
        Some(p) => Some(
            SdkMeterProvider::builder()
                .with_periodic_exporter(exporter!(MetricExporter, p, "metrics"))
                .with_resource(resource.clone())
                .build(),
        ),
    };
    let logger_provider = match cfg.logs {
        None => None,
        Some(p) => Some(
            SdkLoggerProvider::builder()
                .with_batch_exporter(exporter!(LogExporter, p, "logs"))
                .with_resource(resource)
                .build(),
        ),
    };
    let instruments = meter_provider.as_ref().map(|mp| {
        let m = mp.meter("outpost");
        Instruments {
            delivery_latency: m
                .u64_histogram("outpost.delivery_latency")
                .with_unit("ms")
                .with_description("Event delivery latency")
                .build(),
            delivered_events: m
                .u64_counter("outpost.delivered_events")
                .with_description("Number of delivered events")
                .build(),
            published_events: m
                .u64_counter("outpost.published_events")
                .with_description("Number of published events")
                .build(),
            eligible_events: m
                .u64_counter("outpost.eligible_events")
                .with_description("Number of eligible events")
                .build(),
            api_response_latency: m
                .u64_histogram("outpost.api_response_latency")
                .with_unit("ms")
                .with_description("API response latency")
                .build(),
            api_calls: m
                .u64_counter("outpost.api_calls")
                .with_description("Number of API calls")
                .build(),
            delivery_connections: m
                .u64_counter("outpost.delivery_connections")
                .with_description("Outbound delivery connections, by whether the idle pool had one")
                .build(),
        }
    });
    let t = Telemetry {
        tracer: tracer_provider.as_ref().map(|tp| tp.tracer("outpost")),
        instruments,
        tracer_provider,
        meter_provider,
        logger_provider: logger_provider.clone(),
    };
    TELEMETRY
        .set(t)
        .map_err(|_| "OpenTelemetry is already installed".to_string())?;
    Ok(logger_provider)
}

/// Flushes and stops the exporters (at shutdown, so the last spans and
/// metrics leave the process).
pub fn shutdown() {
    if let Some(t) = get() {
        if let Some(p) = &t.tracer_provider {
            let _ = p.shutdown();
        }
        if let Some(p) = &t.meter_provider {
            let _ = p.shutdown();
        }
        if let Some(p) = &t.logger_provider {
            let _ = p.shutdown();
        }
    }
}

/// The trace id of an event's spans and its publish span's id.
pub fn event_trace(tenant_id: &str, event_id: &str) -> (TraceId, SpanId) {
    let mut h = sha2::Sha256::new();
    h.update(tenant_id.as_bytes());
    h.update([0]);
    h.update(event_id.as_bytes());
    let d = h.finalize();
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    trace.copy_from_slice(&d[..16]);
    span.copy_from_slice(&d[16..24]);
    // All-zero ids are invalid in OpenTelemetry; a hash that gives one is
    // not worth a branch elsewhere.
    if trace == [0; 16] {
        trace[15] = 1;
    }
    if span == [0; 8] {
        span[7] = 1;
    }
    (TraceId::from_bytes(trace), SpanId::from_bytes(span))
}

/// When matching ran, and what it found.
#[derive(Debug, Clone, Copy)]
pub struct Matched {
    pub start: SystemTime,
    pub end: SystemTime,
    pub destinations: usize,
}

/// What a publish's spans and counters name.
#[derive(Debug, Clone)]
pub struct EventNames {
    pub tenant_id: String,
    pub event_id: String,
    pub topic: String,
}

/// How a publish ended, for its span.
pub enum PublishEnd<'a> {
    Accepted { duplicate: bool },
    Failed(&'a str),
}

fn parent(trace: TraceId, span: SpanId) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        trace,
        span,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

impl Telemetry {
    /// `POST /publish` (or a publish-queue message): the root span with a
    /// `match` child, and the published and eligible counters.
    pub fn published(&self, event: &EventNames, start: SystemTime, matched: Option<Matched>, end: PublishEnd<'_>) {
        if let Some(i) = &self.instruments {
            let topic = [KeyValue::new("topic", event.topic.clone())];
            i.published_events.add(1, &topic);
            if matched.is_some_and(|m| m.destinations > 0) {
                i.eligible_events.add(1, &topic);
            }
        }
        let Some(tracer) = &self.tracer else {
            return;
        };
        let (trace_id, span_id) = event_trace(&event.tenant_id, &event.event_id);
        let mut attrs = vec![
            KeyValue::new("event_id", event.event_id.clone()),
            KeyValue::new("tenant_id", event.tenant_id.clone()),
            KeyValue::new("topic", event.topic.clone()),
        ];
        if let Some(m) = matched {
            attrs.push(KeyValue::new("destinations_matched", m.destinations as i64));
        }
        let (status, duplicate) = match end {
            PublishEnd::Accepted { duplicate } => (Status::Ok, duplicate),
            PublishEnd::Failed(why) => (Status::error(why.to_string()), false),
        };
        attrs.push(KeyValue::new("duplicate", duplicate));
        NEXT_TRACE.with(|c| c.set(Some(trace_id)));
        NEXT_SPAN.with(|c| c.set(Some(span_id)));
        let mut span = tracer
            .span_builder("publish")
            .with_kind(SpanKind::Server)
            .with_start_time(start)
            .with_attributes(attrs)
            .start_with_context(tracer, &Context::new());
        // Unused (a sampler that dropped the span): never for another span.
        NEXT_TRACE.with(|c| c.set(None));
        NEXT_SPAN.with(|c| c.set(None));
        opentelemetry::trace::Span::set_status(&mut span, status);
        if let Some(m) = matched {
            let mut child = tracer
                .span_builder("match")
                .with_kind(SpanKind::Internal)
                .with_start_time(m.start)
                .with_attributes(vec![
                    KeyValue::new("event_id", event.event_id.clone()),
                    KeyValue::new("destinations_matched", m.destinations as i64),
                ])
                .start_with_context(tracer, &parent(trace_id, span_id));
            opentelemetry::trace::Span::end_with_timestamp(&mut child, m.end);
        }
        opentelemetry::trace::Span::end_with_timestamp(&mut span, SystemTime::now());
    }

    /// One delivery attempt: its span (a child of the event's publish span),
    /// `delivered_events`, and on success `delivery_latency` from the
    /// event's time.
    #[allow(clippy::too_many_arguments)]
    pub fn attempt(
        &self,
        event: &Event,
        dest: &Destination,
        attempt_number: u32,
        manual: bool,
        outcome: (AttemptStatus, &str),
        started_ms: i64,
        took: Duration,
    ) {
        let (attempt_status, code) = outcome;
        let ok = attempt_status == AttemptStatus::Success;
        if let Some(i) = &self.instruments {
            let kind = KeyValue::new("type", dest.kind.clone());
            i.delivered_events
                .add(1, &[kind.clone(), KeyValue::new("status", attempt_status.as_str())]);
            if ok {
                let end_ms = started_ms + took.as_millis() as i64;
                i.delivery_latency
                    .record(end_ms.saturating_sub(event.time).max(0) as u64, &[kind]);
            }
        }
        let Some(tracer) = &self.tracer else {
            return;
        };
        let (trace_id, publish_span) = event_trace(&event.tenant_id, &event.id);
        let start = SystemTime::UNIX_EPOCH + Duration::from_millis(started_ms.max(0) as u64);
        let status = if ok {
            Status::Ok
        } else {
            Status::error(code.to_string())
        };
        let mut span = tracer
            .span_builder("attempt")
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(vec![
                KeyValue::new("event_id", event.id.clone()),
                KeyValue::new("tenant_id", event.tenant_id.clone()),
                KeyValue::new("destination_id", dest.id.clone()),
                KeyValue::new("destination_type", dest.kind.clone()),
                KeyValue::new("attempt_number", i64::from(attempt_number)),
                KeyValue::new("manual", manual),
                KeyValue::new("status", attempt_status.as_str()),
                KeyValue::new("code", code.to_string()),
            ])
            .start_with_context(tracer, &parent(trace_id, publish_span));
        opentelemetry::trace::Span::set_status(&mut span, status);
        opentelemetry::trace::Span::end_with_timestamp(&mut span, start + took);
    }

    /// One API request: `api_calls` and `api_response_latency` by method and
    /// route (the route's pattern, so ids never become attributes).
    pub fn api_call(&self, method: &str, path: &str, took: Duration) {
        if let Some(i) = &self.instruments {
            let attrs = [
                KeyValue::new("method", method.to_string()),
                KeyValue::new("path", path.to_string()),
            ];
            i.api_calls.add(1, &attrs);
            i.api_response_latency.record(took.as_millis() as u64, &attrs);
        }
    }

    /// One HTTP connection taken for a delivery (`webhook`, `hookdeck`).
    pub fn delivery_connection(&self, kind: &'static str, reused: bool) {
        if let Some(i) = &self.instruments {
            i.delivery_connections
                .add(1, &[KeyValue::new("type", kind), KeyValue::new("reused", reused)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(pairs: &[(&str, &str)]) -> Result<Option<OtelConfig>, BadSetting> {
        OtelConfig::resolve(|k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn outposts_rules_for_which_signals_go_how() {
        use Protocol::*;
        assert_eq!(
            resolve(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).unwrap(),
            None
        );
        let all = resolve(&[
            ("OTEL_SERVICE_NAME", "o"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (all.traces, all.metrics, all.logs),
            (Some(Grpc), Some(Grpc), Some(Grpc))
        );
        // Only a metrics endpoint: only metrics.
        let m = resolve(&[
            ("OTEL_SERVICE_NAME", "o"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://c:4318/v1/metrics"),
            ("OTEL_PROTOCOL", "http"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((m.traces, m.metrics, m.logs), (None, Some(HttpProtobuf), None));
        // `none` turns one off; a signal's protocol beats the generic ones.
        let c = resolve(&[
            ("OTEL_SERVICE_NAME", "o"),
            ("OTEL_LOGS_EXPORTER", "none"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((c.traces, c.metrics, c.logs), (Some(Grpc), Some(HttpProtobuf), None));
        let off = resolve(&[
            ("OTEL_SERVICE_NAME", "o"),
            ("OTEL_EXPORTER", "none"),
            ("OTEL_METRICS_EXPORTER", "otlp"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((off.traces, off.metrics, off.logs), (None, Some(Grpc), None));
    }

    #[test]
    fn what_cannot_be_used_is_named() {
        let e = resolve(&[("OTEL_SERVICE_NAME", "o"), ("OTEL_EXPORTER", "console")]).unwrap_err();
        assert_eq!(e.key, "OTEL_EXPORTER");
        assert!(e.message.contains("not built"), "{e:?}");
        let e = resolve(&[("OTEL_SERVICE_NAME", "o"), ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).unwrap_err();
        assert_eq!(e.key, "OTEL_EXPORTER_OTLP_PROTOCOL");
    }

    #[test]
    fn an_events_spans_share_a_trace_whatever_node_makes_them() {
        let a = event_trace("t1", "evt_1");
        assert_eq!(a, event_trace("t1", "evt_1"));
        assert_ne!(a.0, event_trace("t2", "evt_1").0, "tenants' ids never collide");
        assert_ne!(a.0, event_trace("t1e", "vt_1").0, "the separator matters");
        assert!(a.0 != TraceId::INVALID && a.1 != SpanId::INVALID);
    }
}
