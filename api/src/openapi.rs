//! Our OpenAPI document, served at `GET /api/v1/openapi.json`.
//!
//! Built from the code, not copied from Outpost's file: the response
//! objects' schemas are derived from the structs that serialize them
//! (`utoipa::ToSchema` on [`crate::views`]), each destination type's
//! `config`/`credentials` schemas from the field lists that also drive
//! `/destination-types` and validation, and the operations from the table
//! below, one entry per route of [`crate::router`]. Names of operations and
//! schemas are Outpost's, so that clients generated from either document
//! agree; `tests/e2e/openapi.rs` compares the two and lists every intended
//! difference.

use serde_json::{json, Map, Value};
use utoipa::openapi::OpenApi;
use utoipa::PartialSchema;

use outrider_engine::destinations::Registry;

use crate::views;

/// Outpost's schema-name stem for each type (ours follow the same style).
fn stem(kind: &str) -> String {
    match kind {
        "webhook" => "Webhook".into(),
        "hookdeck" => "Hookdeck".into(),
        "aws_sqs" => "AWSSQS".into(),
        "aws_kinesis" => "AWSKinesis".into(),
        "aws_s3" => "AWSS3".into(),
        "aws_eventbridge" => "AWSEventBridge".into(),
        "gcp_pubsub" => "GCPPubSub".into(),
        "azure_servicebus" => "AzureServiceBus".into(),
        "rabbitmq" => "RabbitMQ".into(),
        "kafka" => "Kafka".into(),
        "nats" => "NATS".into(),
        "mqtt" => "MQTT".into(),
        "redis_stream" => "RedisStream".into(),
        other => other
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect(),
    }
}

fn sref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn one_or_many(item: Value) -> Value {
    json!({"oneOf": [item.clone(), {"type": "array", "items": item}]})
}

fn derived<T: PartialSchema>() -> Value {
    serde_json::to_value(T::schema()).unwrap_or(Value::Null)
}

/// A query parameter.
fn query(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema, "description": description})
}

fn path_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}, "description": description})
}

fn strings(name: &str, description: &str) -> Value {
    query(name, one_or_many(json!({"type": "string"})), description)
}

fn time_range(field: &str) -> Value {
    json!({"name": field, "in": "query", "required": false, "style": "deepObject", "explode": true,
        "schema": sref("Operator"), "description": format!("Only rows whose {field} is in this range (`{field}[gte]=…` etc.).")})
}

fn paging() -> Vec<Value> {
    vec![
        query(
            "limit",
            json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
            "Page size; larger values are clamped to 1000.",
        ),
        query("next", json!({"type": "string"}), "Cursor of the next page."),
        query("prev", json!({"type": "string"}), "Cursor of the previous page."),
        query(
            "order_by",
            json!({"type": "string", "enum": ["time"], "default": "time"}),
            "Sort field.",
        ),
        query(
            "dir",
            json!({"type": "string", "enum": ["asc", "desc"], "default": "desc"}),
            "Sort direction.",
        ),
    ]
}

fn include() -> Value {
    strings(
        "include",
        "Embed more: `event`, `event.data`, `response_data`, `destination`.",
    )
}

/// An operation. `security`: `None` = the document's default (admin key or
/// tenant token), `Some(&[])` = public, else the schemes allowed.
struct Op {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    tag: &'static str,
    summary: &'static str,
    security: Option<&'static [&'static str]>,
    params: Vec<Value>,
    body: Option<(&'static str, bool)>,
    ok: (u16, Value),
    errors: &'static [u16],
}

/// `/healthz`'s body (inline, as Outpost's contract has it).
fn health() -> Value {
    json!({"type": "object", "required": ["status", "timestamp", "workers"], "properties": {
        "status": {"type": "string", "enum": ["healthy", "degraded", "failed"]},
        "timestamp": {"type": "string", "format": "date-time"},
        "workers": {"type": "object", "additionalProperties": {"type": "object"}}}})
}

fn error_response(code: u16) -> Value {
    match code {
        // Outpost answers these with an empty body in several places.
        401 => json!({"description": "Missing or invalid credentials."}),
        403 => json!({"description": "The credentials may not do this."}),
        404 => json!({"description": "Not found."}),
        409 => json!({"description": "Conflict."}),
        501 => {
            json!({"description": "Not enabled on this deployment.", "content": {"application/json": {"schema": sref("APIErrorResponse")}}})
        }
        _ => {
            let description = match code {
                400 => "Malformed request or parameters.",
                422 => "The request body fails validation.",
                503 => "A back end is not answering; retry later.",
                _ => "Unexpected server error.",
            };
            json!({"description": description, "content": {"application/json": {"schema": sref("APIErrorResponse")}}})
        }
    }
}

fn operations(kinds: &[Value]) -> Vec<Op> {
    let admin: Option<&'static [&'static str]> = Some(&["AdminApiKey"]);
    let tenant_id = || path_param("tenant_id", "The tenant's id.");
    let destination_id = || path_param("destination_id", "The destination's id.");
    let attempt_id = || path_param("attempt_id", "The attempt's id.");
    let json_ok = |schema: Value, description: &str| json!({"description": description, "content": {"application/json": {"schema": schema}}});
    let destinations = |description: &str| json_ok(sref("Destination"), description);
    let success = || json_ok(sref("SuccessResponse"), "Done.");
    let attempts_page = || json_ok(sref("AttemptPaginatedResult"), "A page of attempts.");
    let attempt_filters = |with_destination: bool| {
        let mut p = Vec::new();
        if with_destination {
            p.push(strings(
                "tenant_id",
                "Tenants to include (admin only; a tenant token sees its own).",
            ));
        }
        p.push(strings("event_id", "Only attempts of these events."));
        if with_destination {
            p.push(strings("destination_id", "Only attempts to these destinations."));
            p.push(query(
                "destination_type",
                one_or_many(sref("DestinationType")),
                "Only attempts to destinations of these types.",
            ));
        }
        p.push(query(
            "status",
            json!({"type": "string", "enum": ["success", "failed"]}),
            "Only attempts with this outcome.",
        ));
        p.push(strings("topic", "Only attempts of events with these topics."));
        p.push(time_range("time"));
        p.extend(paging());
        p.push(include());
        p
    };
    vec![
        Op {
            method: "get",
            path: "/healthz",
            id: "healthCheck",
            tag: "Health",
            summary: "Health of every part of this node",
            security: Some(&[]),
            params: vec![],
            body: None,
            ok: (200, json_ok(health(), "Every part is working.")),
            errors: &[503],
        },
        Op {
            method: "get",
            path: "/tenants",
            id: "listTenants",
            tag: "Tenants",
            summary: "List tenants",
            security: None,
            params: vec![
                strings("id", "Only these tenants."),
                query(
                    "limit",
                    json!({"type": "integer", "minimum": 1, "maximum": 100, "default": 20}),
                    "Page size.",
                ),
                query(
                    "dir",
                    json!({"type": "string", "enum": ["asc", "desc"], "default": "desc"}),
                    "Sort direction (by creation time).",
                ),
                query("next", json!({"type": "string"}), "Cursor of the next page."),
                query("prev", json!({"type": "string"}), "Cursor of the previous page."),
            ],
            body: None,
            ok: (200, json_ok(sref("TenantPaginatedResult"), "A page of tenants.")),
            errors: &[400, 401, 422, 500, 503],
        },
        Op {
            method: "put",
            path: "/tenants/{tenant_id}",
            id: "upsertTenant",
            tag: "Tenants",
            summary: "Create or update a tenant",
            security: None,
            params: vec![tenant_id()],
            body: Some(("TenantUpsert", false)),
            ok: (200, json_ok(sref("Tenant"), "Updated (201 when created).")),
            errors: &[201, 401, 403, 422, 500, 503],
        },
        Op {
            method: "get",
            path: "/tenants/{tenant_id}",
            id: "getTenant",
            tag: "Tenants",
            summary: "Get a tenant",
            security: None,
            params: vec![tenant_id()],
            body: None,
            ok: (200, json_ok(sref("Tenant"), "The tenant.")),
            errors: &[401, 403, 404, 500],
        },
        Op {
            method: "delete",
            path: "/tenants/{tenant_id}",
            id: "deleteTenant",
            tag: "Tenants",
            summary: "Delete a tenant and its destinations",
            security: None,
            params: vec![tenant_id()],
            body: None,
            ok: (200, success()),
            errors: &[401, 403, 404, 500, 503],
        },
        Op {
            method: "get",
            path: "/tenants/{tenant_id}/token",
            id: "getTenantToken",
            tag: "Tenants",
            summary: "A JWT for this tenant",
            security: admin,
            params: vec![tenant_id()],
            body: None,
            ok: (200, json_ok(sref("TenantToken"), "The token.")),
            errors: &[401, 403, 404, 500, 501],
        },
        Op {
            method: "get",
            path: "/tenants/{tenant_id}/portal",
            id: "getTenantPortalUrl",
            tag: "Tenants",
            summary: "A portal URL carrying a tenant token",
            security: admin,
            params: vec![
                tenant_id(),
                query(
                    "theme",
                    json!({"type": "string", "enum": ["light", "dark"]}),
                    "The portal's theme.",
                ),
            ],
            body: None,
            ok: (200, json_ok(sref("PortalRedirect"), "The URL.")),
            errors: &[401, 403, 404, 500, 501],
        },
        Op {
            method: "get",
            path: "/tenants/{tenant_id}/destinations",
            id: "listTenantDestinations",
            tag: "Destinations",
            summary: "List a tenant's destinations",
            security: None,
            params: vec![
                tenant_id(),
                query("type", one_or_many(sref("DestinationType")), "Only these types."),
                strings("topics", "Only destinations subscribed to these topics."),
            ],
            body: None,
            ok: (
                200,
                json_ok(
                    json!({"type": "array", "items": sref("Destination")}),
                    "The destinations.",
                ),
            ),
            errors: &[400, 401, 403, 404, 422, 500],
        },
        Op {
            method: "post",
            path: "/tenants/{tenant_id}/destinations",
            id: "createTenantDestination",
            tag: "Destinations",
            summary: "Create a destination",
            security: None,
            params: vec![tenant_id()],
            body: Some(("DestinationCreate", true)),
            ok: (201, destinations("The destination.")),
            errors: &[400, 401, 403, 404, 409, 422, 500, 503],
        },
        Op {
            method: "get",
            path: "/tenants/{tenant_id}/destinations/{destination_id}",
            id: "getTenantDestination",
            tag: "Destinations",
            summary: "Get a destination",
            security: None,
            params: vec![tenant_id(), destination_id()],
            body: None,
            ok: (200, destinations("The destination.")),
            errors: &[401, 403, 404, 500],
        },
        Op {
            method: "patch",
            path: "/tenants/{tenant_id}/destinations/{destination_id}",
            id: "updateTenantDestination",
            tag: "Destinations",
            summary: "Update a destination (JSON merge patch)",
            security: None,
            params: vec![tenant_id(), destination_id()],
            body: Some(("DestinationUpdate", true)),
            ok: (200, destinations("The updated destination.")),
            errors: &[400, 401, 403, 404, 422, 500, 503],
        },
        Op {
            method: "delete",
            path: "/tenants/{tenant_id}/destinations/{destination_id}",
            id: "deleteTenantDestination",
            tag: "Destinations",
            summary: "Delete a destination",
            security: None,
            params: vec![tenant_id(), destination_id()],
            body: None,
            ok: (200, success()),
            errors: &[401, 403, 404, 500, 503],
        },
        Op {
            method: "put",
            path: "/tenants/{tenant_id}/destinations/{destination_id}/enable",
            id: "enableTenantDestination",
            tag: "Destinations",
            summary: "Enable a destination",
            security: None,
            params: vec![tenant_id(), destination_id()],
            body: None,
            ok: (200, destinations("The destination.")),
            errors: &[401, 403, 404, 500, 503],
        },
        Op {
            method: "put",
            path: "/tenants/{tenant_id}/destinations/{destination_id}/disable",
            id: "disableTenantDestination",
            tag: "Destinations",
            summary: "Disable a destination",
            security: None,
            params: vec![tenant_id(), destination_id()],
            body: None,
            ok: (200, destinations("The destination.")),
            errors: &[401, 403, 404, 500, 503],
        },
        Op {
            method: "get",
            path: "/tenants/{tenant_id}/destinations/{destination_id}/attempts",
            id: "listTenantDestinationAttempts",
            tag: "Attempts",
            summary: "List a destination's attempts",
            security: None,
            params: [vec![tenant_id(), destination_id()], attempt_filters(false)].concat(),
            body: None,
            ok: (200, attempts_page()),
            errors: &[400, 401, 403, 404, 422, 500],
        },
        Op {
            method: "get",
            path: "/tenants/{tenant_id}/destinations/{destination_id}/attempts/{attempt_id}",
            id: "getTenantDestinationAttempt",
            tag: "Attempts",
            summary: "Get one of a destination's attempts",
            security: None,
            params: vec![tenant_id(), destination_id(), attempt_id(), include()],
            body: None,
            ok: (200, json_ok(sref("Attempt"), "The attempt.")),
            errors: &[400, 401, 403, 404, 422, 500],
        },
        Op {
            method: "get",
            path: "/events",
            id: "listEvents",
            tag: "Events",
            summary: "List events",
            security: None,
            params: [
                vec![
                    strings("id", "Only these events."),
                    strings(
                        "tenant_id",
                        "Tenants to include (admin only; a tenant token sees its own).",
                    ),
                    strings("destination_id", "Only events matched to these destinations."),
                    strings("topic", "Only events with these topics."),
                    time_range("time"),
                ],
                paging(),
            ]
            .concat(),
            body: None,
            ok: (200, json_ok(sref("EventPaginatedResult"), "A page of events.")),
            errors: &[400, 401, 403, 422, 500],
        },
        Op {
            method: "get",
            path: "/events/{event_id}",
            id: "getEvent",
            tag: "Events",
            summary: "Get an event",
            security: None,
            params: vec![
                path_param("event_id", "The event's id."),
                query(
                    "tenant_id",
                    json!({"type": "string"}),
                    "The event's tenant (admin only).",
                ),
            ],
            body: None,
            ok: (200, json_ok(sref("Event"), "The event.")),
            errors: &[401, 403, 404, 422, 500],
        },
        Op {
            method: "get",
            path: "/attempts",
            id: "listAttempts",
            tag: "Attempts",
            summary: "List attempts",
            security: None,
            params: attempt_filters(true),
            body: None,
            ok: (200, attempts_page()),
            errors: &[400, 401, 403, 422, 500],
        },
        Op {
            method: "get",
            path: "/attempts/{attempt_id}",
            id: "getAttempt",
            tag: "Attempts",
            summary: "Get an attempt",
            security: None,
            params: vec![
                attempt_id(),
                query(
                    "tenant_id",
                    json!({"type": "string"}),
                    "The attempt's tenant (admin only).",
                ),
                include(),
            ],
            body: None,
            ok: (200, json_ok(sref("Attempt"), "The attempt.")),
            errors: &[400, 401, 403, 404, 422, 500],
        },
        Op {
            method: "post",
            path: "/publish",
            id: "publishEvent",
            tag: "Publish",
            summary: "Publish an event",
            security: admin,
            params: vec![],
            body: Some(("PublishRequest", true)),
            ok: (202, json_ok(sref("PublishResponse"), "Accepted and durable.")),
            errors: &[401, 403, 404, 422, 500, 503],
        },
        Op {
            method: "post",
            path: "/retry",
            id: "retryEvent",
            tag: "Publish",
            summary: "Deliver an event to a destination again",
            security: None,
            params: vec![],
            body: Some(("RetryRequest", true)),
            ok: (202, success()),
            errors: &[400, 401, 403, 404, 422, 500, 503],
        },
        Op {
            method: "post",
            path: "/tenants/{tenant_id}/destinations/{destination_id}/test",
            id: "sendTestEvent",
            tag: "Destinations",
            summary: "Publish a test event to this destination only (ours; the portal's \"send test event\")",
            security: None,
            params: vec![tenant_id(), destination_id()],
            body: Some(("TestEventRequest", false)),
            ok: (
                202,
                json_ok(
                    json!({"type": "object", "required": ["id", "topic", "destination_ids"], "properties": {
                        "id": {"type": "string"}, "topic": {"type": "string"},
                        "destination_ids": {"type": "array", "items": {"type": "string"}}}}),
                    "The event was accepted, as by `POST /publish`.",
                ),
            ),
            errors: &[400, 401, 403, 404, 422, 500, 503],
        },
        Op {
            method: "get",
            path: "/destination-types",
            id: "listDestinationTypeSchemas",
            tag: "Schemas",
            summary: "Every destination type and its fields",
            security: None,
            params: vec![],
            body: None,
            ok: (
                200,
                json_ok(
                    json!({"type": "array", "items": sref("DestinationTypeSchema")}),
                    "The types.",
                ),
            ),
            errors: &[401, 500],
        },
        Op {
            method: "get",
            path: "/destination-types/{type}",
            id: "getDestinationTypeSchema",
            tag: "Schemas",
            summary: "One destination type and its fields",
            security: None,
            params: vec![json!({"name": "type", "in": "path", "required": true,
                "schema": {"type": "string", "enum": kinds}, "description": "The type."})],
            body: None,
            ok: (200, json_ok(sref("DestinationTypeSchema"), "The type.")),
            errors: &[401, 404, 500],
        },
        Op {
            method: "get",
            path: "/topics",
            id: "listTopics",
            tag: "Topics",
            summary: "The configured topics",
            security: None,
            params: vec![],
            body: None,
            ok: (
                200,
                json_ok(json!({"type": "array", "items": {"type": "string"}}), "The topics."),
            ),
            errors: &[401, 500],
        },
        metrics_op(
            "/metrics/events",
            "getEventMetrics",
            "Event counts and rates over time",
            &["count", "rate"],
            &["tenant_id", "topic", "destination_id"],
        ),
        metrics_op(
            "/metrics/attempts",
            "getAttemptMetrics",
            "Attempt outcomes over time",
            &[
                "count",
                "successful_count",
                "failed_count",
                "error_rate",
                "first_attempt_count",
                "retry_count",
                "manual_retry_count",
                "avg_attempt_number",
                "rate",
                "successful_rate",
                "failed_rate",
            ],
            &[
                "tenant_id",
                "destination_id",
                "destination_type",
                "topic",
                "status",
                "code",
                "manual",
                "attempt_number",
            ],
        ),
        Op {
            method: "get",
            path: "/openapi.json",
            id: "getOpenApiDocument",
            tag: "Schemas",
            summary: "This document",
            security: Some(&[]),
            params: vec![],
            body: None,
            ok: (200, json_ok(json!({"type": "object"}), "The OpenAPI document.")),
            errors: &[],
        },
    ]
}

/// A metrics operation: `time[start]`/`time[end]`, `granularity`,
/// `measures`, `dimensions`, and one `filters[<dimension>]` per dimension.
fn metrics_op(path: &'static str, id: &'static str, summary: &'static str, measures: &[&str], dims: &[&str]) -> Op {
    let mut params = vec![
        json!({"name": "time", "in": "query", "required": true, "style": "deepObject", "explode": true,
            "schema": {"type": "object", "required": ["start", "end"], "properties": {
                "start": {"type": "string", "format": "date-time", "description": "Start (inclusive)."},
                "end": {"type": "string", "format": "date-time", "description": "End (exclusive)."}}},
            "description": "The time range."}),
        query(
            "granularity",
            json!({"type": "string", "pattern": "^[0-9]{1,3}[smhdwM]$"}),
            "Bucket size `<n><unit>`: s 1–60, m 1–60, h 1–24, d 1–31, w 1–4, M 1–12. Omitted: one row per dimension combination.",
        ),
        json!({"name": "measures", "in": "query", "required": true,
            "schema": one_or_many(json!({"type": "string", "enum": measures})), "description": "What to compute."}),
        query(
            "dimensions",
            one_or_many(json!({"type": "string", "enum": dims})),
            "Group by these (tenant_id: admin only).",
        ),
    ];
    for d in dims {
        let schema = match *d {
            "destination_type" => one_or_many(sref("DestinationType")),
            "status" => one_or_many(json!({"type": "string", "enum": ["success", "failed"]})),
            "manual" => json!({"type": "string", "enum": ["true", "false"]}),
            _ => one_or_many(json!({"type": "string"})),
        };
        params.push(query(&format!("filters[{d}]"), schema, "Only rows with these values."));
    }
    Op {
        method: "get",
        path,
        id,
        tag: "Metrics",
        summary,
        security: None,
        params,
        body: None,
        ok: (
            200,
            json!({"description": "The data points.", "content": {"application/json": {"schema": sref("MetricsResponse")}}}),
        ),
        errors: &[400, 401, 403, 500, 503],
    }
}

/// Schemas of request bodies and small answers that have no struct of their
/// own (the handlers parse or build them directly).
fn fixed_schemas() -> Map<String, Value> {
    let string_map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    let nullable_string_map = json!({"type": ["object", "null"], "additionalProperties": {"type": "string"}});
    let mut s = Map::new();
    let mut put = |name: &str, v: Value| {
        s.insert(name.to_string(), v);
    };
    put(
        "Operator",
        json!({"type": "object", "properties": {
            "gte": {"type": "string", "format": "date-time"},
            "lte": {"type": "string", "format": "date-time"},
            "gt": {"type": "string", "format": "date-time"},
            "lt": {"type": "string", "format": "date-time"}},
            "description": "A time range: RFC 3339 or YYYY-MM-DD bounds."}),
    );
    put(
        "APIErrorResponse",
        json!({"type": "object", "required": ["status", "message"], "properties": {
            "status": {"type": "integer"},
            "message": {"type": "string"},
            "data": {"oneOf": [{"type": "array", "items": {"type": "string"}}, {"type": "object", "additionalProperties": true}]}}}),
    );
    put(
        "SuccessResponse",
        json!({"type": "object", "required": ["success"], "properties": {"success": {"type": "boolean"}}}),
    );
    put(
        "TenantUpsert",
        json!({"type": "object", "properties": {"metadata": nullable_string_map}}),
    );
    put(
        "TenantToken",
        json!({"type": "object", "required": ["token", "tenant_id"], "properties": {
            "token": {"type": "string"}, "tenant_id": {"type": "string"}}}),
    );
    put(
        "PortalRedirect",
        json!({"type": "object", "required": ["redirect_url", "tenant_id"], "properties": {
            "redirect_url": {"type": "string", "format": "uri"}, "tenant_id": {"type": "string"}}}),
    );
    put(
        "TenantPaginatedResult",
        json!({"type": "object", "required": ["models", "pagination", "count"], "properties": {
            "models": {"type": "array", "items": sref("Tenant")},
            "pagination": sref("SeekPagination"),
            "count": {"type": "integer"}}}),
    );
    put(
        "EventPaginatedResult",
        json!({"type": "object", "required": ["models", "pagination"], "properties": {
            "models": {"type": "array", "items": sref("Event")},
            "pagination": sref("SeekPagination")}}),
    );
    put(
        "AttemptPaginatedResult",
        json!({"type": "object", "required": ["models", "pagination"], "properties": {
            "models": {"type": "array", "items": sref("Attempt")},
            "pagination": sref("SeekPagination")}}),
    );
    put(
        "Topics",
        json!({"oneOf": [{"type": "string", "enum": ["*"]}, {"type": "array", "items": {"type": "string"}}],
            "description": "\"*\" (every topic) or a list of topics; `*` inside a topic matches any run of characters."}),
    );
    put(
        "Filter",
        json!({"type": ["object", "null"], "additionalProperties": true,
            "description": "A JSON filter an event must match ($eq, $neq, $gt, $gte, $lt, $lte, $in, $nin, $startsWith, $endsWith, $exist, $or, $and, $not)."}),
    );
    put(
        "PublishRequest",
        json!({"type": "object", "required": ["data"], "properties": {
            "id": {"type": "string", "description": "Idempotency key; generated when absent."},
            "tenant_id": {"type": "string"},
            "destination_id": {"type": "string", "description": "Deliver to this destination only."},
            "topic": {"type": "string"},
            "eligible_for_retry": {"type": "boolean"},
            "time": {"type": "string", "format": "date-time"},
            "metadata": string_map,
            "data": {"type": "object", "additionalProperties": true}}}),
    );
    put(
        "PublishResponse",
        json!({"type": "object", "required": ["id", "duplicate", "destination_ids"], "properties": {
            "id": {"type": "string"},
            "duplicate": {"type": "boolean"},
            "destination_ids": {"type": "array", "items": {"type": "string"}}}}),
    );
    put(
        "RetryRequest",
        json!({"type": "object", "required": ["event_id", "destination_id"], "properties": {
            "event_id": {"type": "string"}, "destination_id": {"type": "string"}}}),
    );
    put(
        "TestEventRequest",
        json!({"type": "object", "properties": {
            "topic": {"type": "string", "description": "Defaults to the destination's first topic."},
            "data": {"type": "object", "description": "Defaults to a small object saying it is a test."}}}),
    );
    put(
        "MetricsDataPoint",
        json!({"type": "object", "required": ["dimensions", "metrics"], "properties": {
            "time_bucket": {"type": "string", "format": "date-time", "description": "The bucket's start; absent without a granularity."},
            "dimensions": {"type": "object", "additionalProperties": {"type": "string"}},
            "metrics": {"type": "object", "additionalProperties": {"type": "number"}}}}),
    );
    put(
        "MetricsMetadata",
        json!({"type": "object", "required": ["query_time_ms", "row_count", "row_limit", "truncated"], "properties": {
            "granularity": {"type": "string"},
            "query_time_ms": {"type": "integer"},
            "row_count": {"type": "integer"},
            "row_limit": {"type": "integer"},
            "truncated": {"type": "boolean"}}}),
    );
    put(
        "MetricsResponse",
        json!({"type": "object", "required": ["data", "metadata"], "properties": {
            "data": {"type": "array", "items": sref("MetricsDataPoint")},
            "metadata": sref("MetricsMetadata")}}),
    );
    put(
        "DestinationSchemaField",
        json!({"type": "object", "required": ["type", "required", "key"], "properties": {
            "key": {"type": "string"},
            "type": {"type": "string", "enum": ["text", "checkbox", "key_value_map", "select"]},
            "label": {"type": "string"},
            "description": {"type": "string"},
            "required": {"type": "boolean"},
            "sensitive": {"type": "boolean"},
            "default": {"type": "string"},
            "minlength": {"type": "integer"},
            "maxlength": {"type": "integer"},
            "min": {"type": "integer"},
            "max": {"type": "integer"},
            "pattern": {"type": "string"},
            "options": {"type": "array", "items": {"type": "object", "required": ["label", "value"],
                "properties": {"label": {"type": "string"}, "value": {"type": "string"}}}}}}),
    );
    put(
        "DestinationTypeSchema",
        json!({"type": "object", "properties": {
            "type": {"type": "string"},
            "label": {"type": "string"},
            "description": {"type": "string"},
            "icon": {"type": "string"},
            "instructions": {"type": "string"},
            "setup_link": {"type": "object", "required": ["href", "cta"], "properties": {
                "href": {"type": "string"}, "cta": {"type": "string"}}},
            "config_fields": {"type": "array", "items": sref("DestinationSchemaField")},
            "credential_fields": {"type": "array", "items": sref("DestinationSchemaField")}}}),
    );
    s
}

/// Fields a type reads that its listed fields leave out, as Outpost's
/// metadata leaves them out (see `engine/src/destinations/aws_sqs.rs`):
/// (type, section, key, description).
const UNLISTED: &[(&str, &str, &str, &str)] = &[
    (
        "aws_sqs",
        "config",
        "endpoint",
        "Another SQS endpoint (LocalStack, moto).",
    ),
    (
        "aws_sqs",
        "credentials",
        "session",
        "A session token, with temporary credentials.",
    ),
];

/// `fields` of a type's metadata as an object schema; `partial` leaves
/// every field optional (PATCH bodies).
fn fields_schema(kind: &str, section: &str, fields: Option<&Value>, partial: bool) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for f in fields.and_then(Value::as_array).into_iter().flatten() {
        let Some(key) = f.get("key").and_then(Value::as_str) else {
            continue;
        };
        // The server takes an empty value of an optional field as "not
        // set" and checks no pattern or option against it, and it answers
        // with what was stored: the schema admits "" for such fields, or a
        // destination saved with one would not match its own schema.
        // (Checkboxes are stored as "true" or "false", never "".)
        let optional = f.get("required").and_then(Value::as_bool) != Some(true);
        let select = f.get("type").and_then(Value::as_str) == Some("select");
        let mut p = Map::new();
        p.insert("type".into(), "string".into());
        match f.get("type").and_then(Value::as_str) {
            Some("checkbox") => {
                p.insert("enum".into(), json!(["true", "false"]));
            }
            Some("select") => {
                let values: Vec<Value> = f
                    .get("options")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o.get("value").cloned())
                    .collect();
                p.insert("enum".into(), Value::Array(values));
            }
            _ => {}
        }
        for k in ["description", "default", "pattern"] {
            if let Some(v) = f.get(k) {
                p.insert(k.into(), v.clone());
            }
        }
        if optional {
            if let Some(Value::String(pattern)) = p.get("pattern") {
                let either = format!("^$|{pattern}");
                p.insert("pattern".into(), either.into());
            }
            if let Some(Value::Array(values)) = p.get_mut("enum").filter(|_| select) {
                if !values.iter().any(|v| v == "") {
                    values.push("".into());
                }
            }
        }
        if !partial && !optional {
            required.push(Value::from(key));
        }
        props.insert(key.into(), Value::Object(p));
    }
    for (_, _, key, description) in UNLISTED.iter().filter(|(k, s, _, _)| *k == kind && *s == section) {
        props.insert((*key).into(), json!({"type": "string", "description": description}));
    }
    let mut o = json!({"type": "object", "properties": props});
    if !required.is_empty() {
        o["required"] = Value::Array(required);
    }
    o
}

fn has_required(fields: Option<&Value>) -> bool {
    fields
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|f| f.get("required").and_then(Value::as_bool) == Some(true))
}

/// Per-type schemas: `<Stem>Config`, `<Stem>Credentials`, their `…Update`
/// forms, `Destination<Stem>`, `DestinationCreate<Stem>`,
/// `DestinationUpdate<Stem>`, and the three `oneOf`s over all types.
fn type_schemas(types: &Registry, base: &Value, s: &mut Map<String, Value>) {
    let mut kinds = Vec::new();
    let (mut read, mut create, mut update) = (Vec::new(), Vec::new(), Vec::new());
    let (mut read_map, mut create_map, mut update_map) = (Map::new(), Map::new(), Map::new());
    let time = json!({"type": ["string", "null"], "format": "date-time"});
    let string_map = json!({"type": ["object", "null"], "additionalProperties": {"type": "string"}});
    // PATCH maps: a null value deletes its key (RFC 7396).
    let patch_map = json!({"type": ["object", "null"],
        "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "null"}]}});
    for t in types.all() {
        let kind = t.kind().to_string();
        if kind == "test_panic" {
            continue;
        }
        let meta = types.metadata(t);
        let stem = stem(&kind);
        let (config_fields, credential_fields) = (meta.get("config_fields"), meta.get("credential_fields"));
        let config = fields_schema(&kind, "config", config_fields, false);
        let has_config = config["properties"].as_object().is_some_and(|p| !p.is_empty());
        if has_config {
            s.insert(format!("{stem}Config"), config);
            s.insert(
                format!("{stem}ConfigUpdate"),
                fields_schema(&kind, "config", config_fields, true),
            );
        }
        s.insert(
            format!("{stem}Credentials"),
            fields_schema(&kind, "credentials", credential_fields, false),
        );
        let mut cred_update = fields_schema(&kind, "credentials", credential_fields, true);
        if kind == "webhook" {
            cred_update["properties"]["rotate_secret"] = json!({"type": "boolean", "description": "Generate a new secret; the current one becomes the previous secret."});
        }
        s.insert(format!("{stem}CredentialsUpdate"), cred_update);
        let kind_enum = json!({"type": "string", "enum": [kind]});
        // A type with no config fields takes any config (Outpost: `{}`).
        let config_ref = |suffix: &str| {
            if has_config {
                sref(&format!("{stem}Config{suffix}"))
            } else {
                json!({})
            }
        };

        // The response: the derived destination object with this type's
        // `type`, `config` and `credentials`.
        let mut d = base.clone();
        d["properties"]["type"] = kind_enum.clone();
        d["properties"]["config"] = config_ref("");
        d["properties"]["credentials"] = sref(&format!("{stem}Credentials"));
        let name = format!("Destination{stem}");
        read_map.insert(kind.clone(), Value::from(format!("#/components/schemas/{name}")));
        read.push(sref(&name));
        s.insert(name, d);

        let mut required = vec![json!("type"), json!("topics")];
        if has_config && has_required(config_fields) {
            required.push(json!("config"));
        }
        if has_required(credential_fields) {
            required.push(json!("credentials"));
        }
        let c = json!({"type": "object",
        "required": required,
        "properties": {
            "id": {"type": "string", "description": "Generated when absent."},
            "type": kind_enum,
            "topics": sref("Topics"),
            "filter": sref("Filter"),
            "config": config_ref(""),
            "credentials": sref(&format!("{stem}Credentials")),
            "delivery_metadata": string_map,
            "metadata": string_map,
            "created_at": time,
            "updated_at": time,
            "disabled_at": time,
        }});
        let name = format!("DestinationCreate{stem}");
        create_map.insert(kind.clone(), Value::from(format!("#/components/schemas/{name}")));
        create.push(sref(&name));
        s.insert(name, c);

        let mut u = json!({"type": "object", "required": ["type"], "properties": {
            "type": kind_enum,
            "topics": sref("Topics"),
            "filter": sref("Filter"),
            "credentials": sref(&format!("{stem}CredentialsUpdate")),
            "delivery_metadata": patch_map,
            "metadata": patch_map,
            "disabled_at": time,
        }});
        if has_config {
            u["properties"]["config"] = config_ref("Update");
        }
        let name = format!("DestinationUpdate{stem}");
        update_map.insert(kind.clone(), Value::from(format!("#/components/schemas/{name}")));
        update.push(sref(&name));
        s.insert(name, u);
        kinds.push(Value::from(kind));
    }
    s.insert(
        "Destination".into(),
        json!({"oneOf": read, "discriminator": {"propertyName": "type", "mapping": read_map}}),
    );
    s.insert(
        "DestinationCreate".into(),
        json!({"oneOf": create, "discriminator": {"propertyName": "type", "mapping": create_map}}),
    );
    s.insert(
        "DestinationUpdate".into(),
        json!({"oneOf": update, "discriminator": {"propertyName": "type", "mapping": update_map}}),
    );
    s.insert(
        "DestinationType".into(),
        json!({"type": "string", "enum": kinds, "description": "A destination type."}),
    );
}

/// The whole document as JSON.
pub fn document_json(types: &Registry) -> Value {
    let mut schemas = fixed_schemas();
    schemas.insert("Tenant".into(), derived::<views::TenantJson>());
    let mut pagination = derived::<views::Pagination>();
    pagination["properties"]["dir"] = json!({"type": "string", "enum": ["asc", "desc"]});
    schemas.insert("SeekPagination".into(), pagination);
    let event = derived::<views::EventJson>();
    // One struct serves three shapes: the event as listed, and as embedded
    // in an attempt with or without its data.
    let mut listed = event.clone();
    if let Some(p) = listed["properties"].as_object_mut() {
        p.remove("destination_id");
    }
    let mut full = event.clone();
    if let Some(p) = full["properties"].as_object_mut() {
        p.remove("matched_destination_ids");
    }
    let mut summary = full.clone();
    if let Some(p) = summary["properties"].as_object_mut() {
        p.remove("data");
    }
    schemas.insert("Event".into(), listed);
    schemas.insert("EventFull".into(), full);
    schemas.insert("EventSummary".into(), summary);
    let mut attempt = derived::<views::AttemptJson>();
    attempt["properties"]["status"] = json!({"type": "string", "enum": ["success", "failed"]});
    attempt["properties"]["event"] = json!({"oneOf": [sref("EventFull"), sref("EventSummary")]});
    attempt["properties"]["destination"] = sref("Destination");
    schemas.insert("Attempt".into(), attempt);
    let mut base = derived::<views::DestinationJson>();
    // Always sent (null when enabled), though an `Option`.
    if let Some(r) = base["required"].as_array_mut() {
        r.push("disabled_at".into());
    }
    base["properties"]["topics"] = sref("Topics");
    base["properties"]["filter"] = sref("Filter");
    type_schemas(types, &base, &mut schemas);

    let mut paths = Map::new();
    let kinds: Vec<Value> = types
        .all()
        .map(|t| Value::from(t.kind()))
        .filter(|k| k != "test_panic")
        .collect();
    for op in operations(&kinds) {
        let mut o = json!({
            "operationId": op.id,
            "tags": [op.tag],
            "summary": op.summary,
            "parameters": op.params,
        });
        if let Some(sec) = op.security {
            o["security"] = Value::Array(sec.iter().map(|s| json!({ *s: [] })).collect());
        }
        if let Some((schema, required)) = op.body {
            o["requestBody"] = json!({"required": required, "content": {"application/json": {"schema": sref(schema)}}});
        }
        let mut responses = Map::new();
        responses.insert(op.ok.0.to_string(), op.ok.1);
        for code in op.errors {
            // A second success code (201 on upsert) shares the first's body.
            let r = if *code < 300 {
                responses.values().next().cloned().unwrap_or(Value::Null)
            } else {
                error_response(*code)
            };
            responses.insert(code.to_string(), r);
        }
        o["responses"] = Value::Object(responses);
        let item = paths
            .entry(op.path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        item[op.method] = o;
    }

    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Outrider API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Outrider's REST API, wire-compatible with Hookdeck Outpost's: the same paths under /api/v1, field names, status codes and error bodies.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"AdminApiKey": []}, {"TenantJwt": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "AdminApiKey": {"type": "http", "scheme": "bearer", "description": "The API_KEY setting."},
                "TenantJwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                    "description": "A tenant token from GET /tenants/{tenant_id}/token (HS256, iss outpost, sub = tenant id)."},
            },
            "schemas": schemas,
        },
    })
}

/// The document as utoipa's typed model: building it checks that the JSON
/// above is a well-formed OpenAPI document.
pub fn document(types: &Registry) -> Result<OpenApi, serde_json::Error> {
    serde_json::from_value(document_json(types))
}
