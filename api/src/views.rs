//! JSON shapes of the API objects (field names and omission rules as Outpost's).

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::ToSchema;

use outrider_engine::destinations::Registry;
use outrider_engine::engine::TenantView;
use outrider_engine::model::{Attempt, Destination, Event, StringMap};
use outrider_engine::timefmt::{format_ms, now_ms};

#[derive(Serialize, ToSchema)]
pub struct TenantJson {
    pub id: String,
    pub destinations_count: usize,
    pub topics: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<HashMap<String, String>>)]
    pub metadata: Option<StringMap>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<&TenantView> for TenantJson {
    fn from(v: &TenantView) -> Self {
        Self {
            id: v.tenant.id.clone(),
            destinations_count: v.destinations_count,
            topics: v.topics.clone(),
            metadata: v.tenant.metadata.clone().filter(|m| !m.is_empty()),
            created_at: format_ms(v.tenant.created_at),
            updated_at: format_ms(v.tenant.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct DestinationJson {
    pub id: String,
    pub tenant_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub topics: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub filter: Option<Value>,
    #[schema(value_type = HashMap<String, String>)]
    pub config: StringMap,
    #[schema(value_type = HashMap<String, String>)]
    pub credentials: StringMap,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<HashMap<String, String>>)]
    pub delivery_metadata: Option<StringMap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<HashMap<String, String>>)]
    pub metadata: Option<StringMap>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
    #[schema(format = DateTime)]
    pub disabled_at: Option<String>,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_url: Option<String>,
}

pub fn destination(types: &Registry, d: &Destination) -> DestinationJson {
    let now = now_ms();
    let (target, target_url, credentials) = match types.get(&d.kind) {
        Some(t) => {
            let (target, url) = t.target(d);
            (target, url, t.display_credentials(d, now))
        }
        None => (String::new(), None, StringMap::new()),
    };
    DestinationJson {
        id: d.id.clone(),
        tenant_id: d.tenant_id.clone(),
        kind: d.kind.clone(),
        topics: d.topics.clone(),
        filter: d
            .filter
            .clone()
            .filter(|f| !f.as_object().is_some_and(|o| o.is_empty())),
        config: d.config.clone(),
        credentials,
        delivery_metadata: d.delivery_metadata.clone().filter(|m| !m.is_empty()),
        metadata: d.metadata.clone().filter(|m| !m.is_empty()),
        created_at: format_ms(d.created_at),
        updated_at: format_ms(d.updated_at),
        disabled_at: d.disabled_at.map(format_ms),
        target,
        target_url,
    }
}

/// Raw JSON text of an event's data, emitted verbatim (key order kept).
fn raw(data: &str) -> Option<Box<RawValue>> {
    RawValue::from_string(data.to_string()).ok()
}

#[derive(Serialize, ToSchema)]
pub struct EventJson {
    pub id: String,
    pub tenant_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_destination_ids: Option<Vec<String>>,
    pub topic: String,
    #[schema(format = DateTime)]
    pub time: String,
    pub eligible_for_retry: bool,
    #[schema(value_type = HashMap<String, String>)]
    pub metadata: StringMap,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub data: Option<Box<RawValue>>,
}

pub fn event(e: &Event) -> EventJson {
    EventJson {
        id: e.id.clone(),
        tenant_id: e.tenant_id.clone(),
        destination_id: None,
        matched_destination_ids: Some(e.matched_destination_ids.clone()),
        topic: e.topic.clone(),
        time: format_ms(e.time),
        eligible_for_retry: e.eligible_for_retry,
        metadata: e.metadata.clone(),
        data: raw(&e.data),
    }
}

/// The event as embedded in an attempt (`include=event` / `event.data`).
pub fn event_in_attempt(e: &Event, destination_id: &str, with_data: bool) -> EventJson {
    EventJson {
        id: e.id.clone(),
        tenant_id: e.tenant_id.clone(),
        destination_id: Some(destination_id.to_string()),
        matched_destination_ids: None,
        topic: e.topic.clone(),
        time: format_ms(e.time),
        eligible_for_retry: e.eligible_for_retry,
        metadata: e.metadata.clone(),
        data: if with_data { raw(&e.data) } else { None },
    }
}

#[derive(Serialize, ToSchema)]
pub struct AttemptJson {
    pub id: String,
    pub tenant_id: String,
    #[schema(value_type = String)]
    pub status: &'static str,
    #[schema(format = DateTime)]
    pub time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub attempt_number: u32,
    pub manual: bool,
    pub destination_type: String,
    pub event_id: String,
    pub destination_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub response_data: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<EventJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<DestinationJson>,
}

pub fn attempt(a: &Attempt) -> AttemptJson {
    AttemptJson {
        id: a.id.clone(),
        tenant_id: a.tenant_id.clone(),
        status: a.status.as_str(),
        time: format_ms(a.time),
        code: a.code.clone(),
        attempt_number: a.attempt_number,
        manual: a.manual,
        destination_type: a.destination_type.clone(),
        event_id: a.event_id.clone(),
        destination_id: a.destination_id.clone(),
        response_data: None,
        event: None,
        destination: None,
    }
}

#[derive(Serialize, ToSchema)]
pub struct Pagination {
    #[schema(value_type = String)]
    pub order_by: &'static str,
    #[schema(value_type = String)]
    pub dir: &'static str,
    pub limit: usize,
    pub next: Option<String>,
    pub prev: Option<String>,
}
