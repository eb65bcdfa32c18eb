//! The `aws_eventbridge` destination type (ours; Outpost lists it as its
//! most-asked missing type): each event is one `PutEvents` entry on the
//! destination's event bus (concurrent deliveries with the same credentials
//! share a call, up to 10 entries; see [`super::batch`]). `Source` is the configured source, `DetailType`
//! the configured detail type or else the event topic, and `Detail` is
//! `{"data":<event data>,"metadata":{...}}`, so rules can match on either.

use std::collections::BTreeMap;
use std::rc::Rc;

use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use aws_sdk_eventbridge::Client;
use serde_json::json;

use super::aws::{self, AwsKey};
use super::fields::{self, Field, Schema};
use super::*;

const CONFIG: &[Field] = &[
    Field::text(
        "event_bus",
        "Event Bus",
        "The event bus name or ARN; `default` when empty.",
    )
    .default_value("default"),
    Field::text("region", "AWS Region", "The bus's AWS region, e.g. us-east-1")
        .required()
        .pattern(aws::REGION_PATTERN, aws::region_ok),
    Field::text(
        "source",
        "Source",
        "The `source` of every entry, for rules to match on.",
    )
    .default_value("outrider"),
    Field::text(
        "detail_type",
        "Detail Type",
        "The `detail-type` of every entry; the event topic when empty.",
    ),
    Field::text(
        "endpoint",
        "Endpoint",
        "A custom endpoint URL (LocalStack or a VPC endpoint); empty uses the region's.",
    )
    .pattern("^https?:\\/\\/[^\\s]+$", fields::http_url),
];

const SCHEMA: Schema = Schema {
    kind: "aws_eventbridge",
    label: "AWS EventBridge",
    description: "Put each event on an Amazon EventBridge event bus, for rules to route.",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\"><rect width=\"16\" height=\"16\" rx=\"4\" fill=\"#E7157B\"/><circle cx=\"8\" cy=\"8\" r=\"3\" stroke=\"#fff\" fill=\"none\"/><path d=\"M2 8h3M11 8h3M8 2v3M8 11v3\" stroke=\"#fff\"/></svg>",
    instructions: "Give the bus (or leave `default`), its region and an access key allowed `events:PutEvents` on it. Each entry's `detail` is `{\"data\": <event data>, \"metadata\": {\"event-id\", \"topic\", \"timestamp\", ...}}`, its `detail-type` the event topic (or the configured detail type) and its `source` the configured source, so a rule such as `{\"source\": [\"outrider\"], \"detail-type\": [\"orders.created\"]}` selects events by topic.",
    config: CONFIG,
    credentials: aws::CREDENTIALS,
};

#[derive(Default)]
pub struct AwsEventBridge {
    pub credentials: aws::CredentialPolicy,
}

impl DestinationType for AwsEventBridge {
    fn schema(&self) -> Option<&'static Schema> {
        Some(&SCHEMA)
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = SCHEMA.check(&d.config, &d.credentials);
        self.credentials.relax(d, &mut errs);
        fields::result(errs)
    }

    fn preprocess(
        &self,
        d: &mut Destination,
        previous: Option<&Destination>,
        _raw: &RawInput,
        actor: Actor,
        _now_ms: i64,
    ) -> Result<(), Violations> {
        self.credentials.check_actor(d, previous, actor)
    }

    fn target(&self, d: &Destination) -> (String, Option<String>) {
        let bus = d
            .config
            .get("event_bus")
            .filter(|b| !b.is_empty())
            .map_or("default", String::as_str);
        let region = d.config.get("region").map(String::as_str).unwrap_or("");
        (
            format!("{bus} in {region}"),
            Some(format!(
                "https://{region}.console.aws.amazon.com/events/home?region={region}#/eventbus/{bus}"
            )),
        )
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let get = |k: &str| d.config.get(k).filter(|v| !v.is_empty()).cloned();
        let region = get("region").ok_or(PublisherError::Missing("config.region"))?;
        Ok(Box::new(EventBridgePublisher {
            key: AwsKey::new(d, region, get("endpoint"), self.credentials)?,
            bus: get("event_bus").unwrap_or_else(|| "default".into()),
            source: get("source").unwrap_or_else(|| "outrider".into()),
            detail_type: get("detail_type"),
            delivery_metadata: d.delivery_metadata.clone(),
            include_ms: ctx.config.webhook.include_millisecond_timestamp,
        }))
    }
}

pub struct EventBridgePublisher {
    key: AwsKey,
    bus: String,
    source: String,
    detail_type: Option<String>,
    delivery_metadata: Option<StringMap>,
    include_ms: bool,
}

async fn connect(key: &AwsKey, guard: &crate::ssrf::Guard) -> Result<Client, PublishResult> {
    let sdk = key
        .sdk_config(&format!("events.{}.amazonaws.com", key.region), guard)
        .await?;
    Ok(Client::new(&sdk))
}

/// One entry of a `PutEvents`, and the bus it goes to (for the attempt).
pub struct Item {
    entry: PutEventsRequestEntry,
    bus: String,
}

/// `PutEvents` takes 10 entries and 256 KiB, counted over source, detail
/// type and detail.
const LIMITS: batch::Limits = batch::Limits {
    max_items: 10,
    max_bytes: 256 * 1024,
};

async fn send(client: &Client, items: Vec<Item>) -> Vec<PublishResult> {
    let n = items.len();
    let (entries, buses): (Vec<_>, Vec<_>) = items.into_iter().map(|i| (i.entry, i.bus)).unzip();
    let out = match client.put_events().set_entries(Some(entries)).send().await {
        Ok(out) => out,
        Err(e) => return vec![aws::classify(&e, "event_bus_not_found"); n],
    };
    // One entry per event, in the request's order; a failed entry comes back
    // inside a 200.
    let mut results: Vec<PublishResult> = out
        .entries()
        .iter()
        .zip(buses)
        .map(|(e, bus)| match e.error_code() {
            Some(code) => aws::entry_failure(code, e.error_message(), "event_bus_not_found"),
            None => PublishResult::success("OK", json!({ "event_id": e.event_id(), "event_bus": bus })),
        })
        .collect();
    results.resize_with(n, || {
        PublishResult::failed("ERR", "PutEvents did not answer for this event")
    });
    results
}

impl Publisher for EventBridgePublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let meta: BTreeMap<String, String> =
                merged_metadata(self.delivery_metadata.as_ref(), event, now_ms, self.include_ms)
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
            let meta = match serde_json::to_string(&meta) {
                Ok(m) => m,
                Err(e) => return PublishResult::failed("ERR", format!("could not format event for delivery: {e}")),
            };
            let detail_type = self.detail_type.as_deref().unwrap_or(&event.topic);
            let detail = format!("{{\"data\":{},\"metadata\":{meta}}}", event.data);
            let size = self.source.len() + detail_type.len() + detail.len();
            let entry = PutEventsRequestEntry::builder()
                .event_bus_name(&self.bus)
                .source(&self.source)
                .detail_type(detail_type)
                .detail(detail)
                .build();
            let client: Rc<Client> = match clients
                .eventbridge
                .get(&self.key, || connect(&self.key, &clients.guard))
                .await
            {
                Ok(c) => c,
                Err(r) => return r,
            };
            let item = Item {
                entry,
                bus: self.bus.clone(),
            };
            clients
                .eventbridge_batches
                .submit(&self.key, item, size, LIMITS, |items| send(&client, items))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_target() {
        let d = test_destination(
            "aws_eventbridge",
            &[("region", "eu-west-1")],
            &[("key", "k"), ("secret", "s")],
        );
        assert!(AwsEventBridge::default().validate(&d).is_ok());
        assert_eq!(AwsEventBridge::default().target(&d).0, "default in eu-west-1");
        let d = test_destination("aws_eventbridge", &[], &[]);
        assert_eq!(
            AwsEventBridge::default().validate(&d).unwrap_err(),
            vec![
                "config.region is required",
                "credentials.key is required",
                "credentials.secret is required"
            ]
        );
    }
}
