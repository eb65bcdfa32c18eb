//! The domain: tenants, destinations, events, attempts, and the delivery task
//! that travels from the control plane to a shard.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::string_map::StringMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: String,
    pub metadata: Option<StringMap>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A destination as stored (credentials decrypted in memory only). `Debug`
/// leaves out credential values and custom headers.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    pub id: String,
    pub tenant_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `["*"]` means every topic.
    pub topics: Vec<String>,
    pub filter: Option<serde_json::Value>,
    pub config: StringMap,
    pub credentials: StringMap,
    pub delivery_metadata: Option<StringMap>,
    pub metadata: Option<StringMap>,
    pub created_at: i64,
    pub updated_at: i64,
    pub disabled_at: Option<i64>,
}

/// Config keys whose values may hold secrets (a webhook's custom headers
/// carry API keys as often as not).
const SECRET_CONFIG_KEYS: &[&str] = &["custom_headers"];

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Redacted<'a>(&'a StringMap, &'a [&'a str]);
        impl std::fmt::Debug for Redacted<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_map()
                    .entries(self.0.iter().map(|(k, v)| {
                        let shown: &dyn std::fmt::Debug = if self.1.is_empty() || self.1.contains(&k.as_str()) {
                            &"<redacted>"
                        } else {
                            v
                        };
                        (k, shown)
                    }))
                    .finish()
            }
        }
        f.debug_struct("Destination")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("kind", &self.kind)
            .field("topics", &self.topics)
            .field("filter", &self.filter)
            .field("config", &Redacted(&self.config, SECRET_CONFIG_KEYS))
            .field("credentials", &Redacted(&self.credentials, &[]))
            .field("delivery_metadata", &self.delivery_metadata)
            .field("metadata", &self.metadata)
            .field("created_at", &self.created_at)
            .field("updated_at", &self.updated_at)
            .field("disabled_at", &self.disabled_at)
            .finish()
    }
}

impl Destination {
    pub fn is_enabled(&self) -> bool {
        self.disabled_at.is_none()
    }

    /// Drops spare capacity before the destination is kept for long (the
    /// routing table holds every destination in memory).
    pub fn shrink(&mut self) {
        self.id.shrink_to_fit();
        self.tenant_id.shrink_to_fit();
        self.kind.shrink_to_fit();
        self.topics.shrink_to_fit();
        self.config.shrink_to_fit();
        self.credentials.shrink_to_fit();
        for m in [&mut self.delivery_metadata, &mut self.metadata].into_iter().flatten() {
            m.shrink_to_fit();
        }
    }
}

/// An accepted event. `data` is compact JSON text with the publisher's key order.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub tenant_id: String,
    pub destination_id: Option<String>,
    pub topic: String,
    pub eligible_for_retry: bool,
    /// Unix milliseconds.
    pub time: i64,
    /// The nanoseconds within `time`'s millisecond (0 to 999,999): Outpost
    /// keeps an event's time to the nanosecond, and `aws_s3` key templates
    /// show it (`time.rfc3339_nano`).
    pub time_ns: u32,
    pub metadata: StringMap,
    pub data: Arc<str>,
    pub matched_destination_ids: Vec<String>,
}

#[cfg(test)]
impl Event {
    /// An event of tenant `t` with no metadata, for unit tests.
    pub(crate) fn for_tests(id: &str, topic: &str, data: &str) -> Self {
        Self {
            id: id.into(),
            tenant_id: "t".into(),
            destination_id: None,
            topic: topic.into(),
            eligible_for_retry: true,
            time: 0,
            time_ns: 0,
            metadata: StringMap::new(),
            data: std::sync::Arc::from(data),
            matched_destination_ids: vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttemptStatus {
    Success,
    Failed,
}

impl AttemptStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptStatus::Success => "success",
            AttemptStatus::Failed => "failed",
        }
    }
}

/// The result of one try of one event to one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub id: String,
    pub tenant_id: String,
    pub event_id: String,
    pub destination_id: String,
    pub destination_type: String,
    pub attempt_number: u32,
    pub manual: bool,
    pub status: AttemptStatus,
    pub time: i64,
    pub code: Option<String>,
    pub response_data: Option<serde_json::Value>,
    /// The event's topic, kept for attempt filters.
    pub topic: String,
}

/// One delivery of one event to one destination, as sent to the owning shard.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: Arc<Event>,
    pub destination_id: String,
    pub attempt: u32,
    pub manual: bool,
    /// When to deliver (Unix ms); `<= now` means at once.
    pub due_ms: i64,
}

/// What happens to a delivery's durable record once an attempt is done.
#[derive(Debug, Clone, PartialEq)]
pub enum NextStep {
    /// Delivered, or retries exhausted, or not eligible: the pending record goes.
    Done,
    /// Try again as attempt `attempt` at `due_ms`.
    Retry { attempt: u32, due_ms: i64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destination_debug_holds_no_credential_or_custom_header() {
        let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let d = Destination {
            id: "des_1".into(),
            tenant_id: "t1".into(),
            kind: "webhook".into(),
            topics: vec!["*".into()],
            filter: None,
            config: map(&[
                ("url", "https://example.com/hook"),
                ("custom_headers", r#"{"authorization":"Bearer S-header"}"#),
            ]),
            credentials: map(&[("secret", "S-signing"), ("password", "S-password")]),
            delivery_metadata: None,
            metadata: None,
            created_at: 0,
            updated_at: 0,
            disabled_at: None,
        };
        for shown in [format!("{d:?}"), format!("{d:#?}"), format!("{:?}", vec![&d])] {
            assert!(!shown.contains("S-"), "{shown}");
            assert!(
                shown.contains("https://example.com/hook") && shown.contains("\"secret\""),
                "{shown}"
            );
        }
    }
}
