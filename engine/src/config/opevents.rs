//! Operator events (`OPERATION_EVENTS_*`): which topics go to which one sink.

use super::backends::gcp_credentials;
use super::sources::{comma_list, Sources};
use super::{invalid, ConfigError};

/// Outpost's docs say `OPERATION_EVENTS_*`, its code reads `OPERATOR_EVENTS_*`:
/// both are accepted, the documented name wins when both are set.
fn opev<'a>(src: &'a Sources, suffix: &str) -> Option<&'a str> {
    src.non_empty(&format!("OPERATION_EVENTS_{suffix}"))
        .or_else(|| src.non_empty(&format!("OPERATOR_EVENTS_{suffix}")))
}

pub(super) fn read(src: &Sources) -> Result<Option<crate::opevents::OperatorEventsConfig>, ConfigError> {
    use crate::opevents::{OperatorEventsConfig, SinkConfig, TopicSet, TOPICS};
    let mut sinks = Vec::new();
    if let Some(url) = opev(src, "HTTP_URL") {
        crate::http_client::Target::parse(url).map_err(|e| invalid("OPERATION_EVENTS_HTTP_URL", e))?;
        sinks.push(SinkConfig::Http {
            url: url.to_string(),
            signing_secret: opev(src, "HTTP_SIGNING_SECRET").map(String::from),
        });
    }
    if let Some(queue_url) = opev(src, "AWS_SQS_QUEUE_URL") {
        let credentials = match (opev(src, "AWS_SQS_ACCESS_KEY_ID"), opev(src, "AWS_SQS_SECRET_ACCESS_KEY")) {
            (Some(k), Some(s)) => Some((k.to_string(), s.to_string())),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "OPERATION_EVENTS_AWS_SQS_ACCESS_KEY_ID",
                    "set both OPERATION_EVENTS_AWS_SQS_ACCESS_KEY_ID and OPERATION_EVENTS_AWS_SQS_SECRET_ACCESS_KEY, or neither",
                ))
            }
        };
        sinks.push(SinkConfig::Sqs {
            queue_url: queue_url.to_string(),
            region: opev(src, "AWS_SQS_REGION").unwrap_or("us-east-1").to_string(),
            endpoint: opev(src, "AWS_SQS_ENDPOINT").map(String::from),
            credentials,
        });
    }
    if let Some(project) = opev(src, "GCP_PUBSUB_PROJECT_ID") {
        let credentials = gcp_credentials(
            "OPERATION_EVENTS_GCP_PUBSUB_CREDENTIALS",
            opev(src, "GCP_PUBSUB_CREDENTIALS"),
        )?;
        sinks.push(SinkConfig::PubSub {
            project: project.to_string(),
            credentials,
            topic: opev(src, "GCP_PUBSUB_TOPIC_ID")
                .ok_or(ConfigError::Missing {
                    key: "OPERATION_EVENTS_GCP_PUBSUB_TOPIC_ID",
                })?
                .to_string(),
            auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
        });
    }
    if let Some(url) = opev(src, "RABBITMQ_SERVER_URL") {
        sinks.push(SinkConfig::RabbitMq {
            url: url.to_string(),
            exchange: opev(src, "RABBITMQ_EXCHANGE").unwrap_or("outpost-events").to_string(),
            auto_provision: src.bool("MQS_AUTO_PROVISION", true)?,
        });
    }
    let topics = match opev(src, "TOPICS").map(str::trim) {
        None | Some("") => return Ok(None),
        Some("*") => TopicSet::All,
        Some(list) => {
            let topics = comma_list(list);
            if let Some(bad) = topics.iter().find(|t| !TOPICS.contains(&t.as_str())) {
                return Err(invalid(
                    "OPERATION_EVENTS_TOPICS",
                    format!("unknown topic {bad:?}; expected * or a list of: {}", TOPICS.join(", ")),
                ));
            }
            TopicSet::List(topics)
        }
    };
    if sinks.len() > 1 {
        return Err(invalid(
            "OPERATION_EVENTS_TOPICS",
            format!(
                "exactly one sink may be configured, found {}: {}",
                sinks.len(),
                sinks.iter().map(SinkConfig::kind).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    match sinks.pop() {
        Some(sink) => Ok(Some(OperatorEventsConfig { topics, sink })),
        None => Err(invalid(
            "OPERATION_EVENTS_TOPICS",
            "topics are set but no sink is configured: set OPERATION_EVENTS_HTTP_URL, OPERATION_EVENTS_AWS_SQS_QUEUE_URL, OPERATION_EVENTS_GCP_PUBSUB_PROJECT_ID or OPERATION_EVENTS_RABBITMQ_SERVER_URL",
        )),
    }
}
