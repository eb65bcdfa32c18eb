//! Parsing and validation of a publish request, shared by `POST /publish`
//! and the publish queue (the same JSON document either way).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Config;
use crate::ids::IdGenerator;
use crate::model::{Event, StringMap};

/// Why a publish request was refused; the API maps these to 422 bodies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishInputError {
    /// Not JSON, or a field of the wrong type.
    #[error("invalid JSON")]
    InvalidJson,
    /// Field-level problems (`tenant_id is required`, ...).
    #[error("validation error: {0:?}")]
    Invalid(Vec<String>),
}

/// Borrowed from the request body where it can be: `data` is raw JSON text
/// copied once, into the event's shared `Arc<str>`.
#[derive(Deserialize)]
struct PublishBody<'a> {
    id: Option<String>,
    tenant_id: Option<String>,
    destination_id: Option<String>,
    topic: Option<String>,
    eligible_for_retry: Option<bool>,
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    metadata: Option<StringMap>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

/// Metadata becomes headers and attributes. Any name Outpost accepts is
/// accepted (`host`, `content-type`, `signature`...): each destination type
/// keeps its own headers at delivery. Only two things are refused: control
/// characters in a key (no header or attribute name can hold one) and NUL
/// in a value (PostgreSQL's JSONB cannot store it).
fn metadata_problems(meta: &StringMap) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in meta.iter() {
        if k.chars().any(char::is_control) || v.contains('\0') {
            out.push(format!(
                "metadata.{k} must not contain control characters (keys) or NUL (values)"
            ));
        }
    }
    out
}

/// Most entries in a metadata map (event `metadata`, a destination's
/// `metadata` and `delivery_metadata`).
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_BYTES: usize = 256;
/// Longest metadata value, in bytes (it may become a header).
pub const MAX_METADATA_VALUE_BYTES: usize = 4096;

/// Size limits of a tenant's metadata map called `field`: each entry is
/// carried by every delivery (as headers or attributes) and stored with
/// every event, so a tenant may not make them unbounded. Outpost has none.
pub fn metadata_limits(field: &str, meta: &StringMap) -> Vec<String> {
    let mut out = Vec::new();
    if meta.len() > MAX_METADATA_ENTRIES {
        out.push(format!("{field} must have at most {MAX_METADATA_ENTRIES} entries"));
    }
    for (k, v) in meta.iter() {
        if k.len() > MAX_METADATA_KEY_BYTES {
            let shown: String = k.chars().take(32).collect();
            out.push(format!(
                "{field} keys must be at most {MAX_METADATA_KEY_BYTES} bytes ({shown}...)"
            ));
        } else if v.len() > MAX_METADATA_VALUE_BYTES {
            out.push(format!("{field}.{k} must be at most {MAX_METADATA_VALUE_BYTES} bytes"));
        }
    }
    out
}

/// Turns a publish document into an event (id generated when absent).
pub fn parse(body: &[u8], cfg: &Config, ids: &IdGenerator) -> Result<Event, PublishInputError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(PublishInputError::InvalidJson);
    }
    let b: PublishBody = serde_json::from_slice(body).map_err(|_| PublishInputError::InvalidJson)?;
    let mut missing = Vec::new();
    let tenant_id = b.tenant_id.filter(|t| !t.is_empty());
    if tenant_id.is_none() {
        missing.push("tenant_id is required".to_string());
    }
    match &b.data {
        None => missing.push("data is required".into()),
        Some(d) if d.get() == "null" => missing.push("data is required".into()),
        Some(d) if !d.get().starts_with('{') => missing.push("data must be a valid JSON object".into()),
        _ => {}
    }
    for (field, id) in [
        ("id", b.id.as_deref()),
        ("tenant_id", tenant_id.as_deref()),
        ("destination_id", b.destination_id.as_deref()),
    ] {
        missing.extend(id.and_then(|id| crate::ids::id_problem(field, id)));
    }
    if let Some(meta) = &b.metadata {
        missing.extend(metadata_limits("metadata", meta));
        missing.extend(metadata_problems(meta));
    }
    if !missing.is_empty() {
        return Err(PublishInputError::Invalid(missing));
    }
    let topic = b.topic.unwrap_or_default();
    if !cfg.topics.is_empty() {
        if topic.is_empty() {
            return Err(PublishInputError::Invalid(vec!["topic is required".into()]));
        }
        if topic != "*" && !cfg.topics.contains(&topic) {
            return Err(PublishInputError::Invalid(vec!["topic is invalid".into()]));
        }
    }
    let (time, time_ns) = match b.time.as_deref() {
        None | Some("") => crate::timefmt::now_ms_ns(),
        Some(t) => crate::timefmt::parse_rfc3339(t)
            .ok_or_else(|| PublishInputError::Invalid(vec!["time must be an RFC 3339 date-time".into()]))?,
    };
    let data = b
        .data
        .map(|d| crate::json::compact_shared(d.get()))
        .unwrap_or_else(|| "".into());
    Ok(Event {
        id: b
            .id
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| ids.generate(&cfg.event_id_prefix)),
        tenant_id: tenant_id.unwrap_or_default(),
        destination_id: b.destination_id.filter(|d| !d.is_empty()),
        topic,
        eligible_for_retry: b.eligible_for_retry.unwrap_or(true),
        time,
        time_ns,
        metadata: b.metadata.unwrap_or_default(),
        data,
        matched_destination_ids: vec![],
    })
}
