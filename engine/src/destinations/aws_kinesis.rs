//! The `aws_kinesis` destination type: each event is one record, sent with
//! `PutRecords` (concurrent deliveries to one stream share a call, up to 500
//! records; see [`super::batch`]). Outpost sends each record with
//! `PutRecord`, and the IAM policy its docs give grants only that action: when
//! `PutRecords` is denied, the publisher sends record by record with
//! `PutRecord` from then on (the denied batch is resent that way at once). The
//! record is `{"data":<event data>,"metadata":{...}}` (keys sorted, as
//! Outpost's encoder writes them), or the bare data with
//! `DESTINATIONS_AWS_KINESIS_METADATA_IN_PAYLOAD=false`. The partition key is
//! `partition_key_template` (JMESPath over `{metadata, data}`, or over the
//! data alone when metadata is not in the payload), falling back to the event
//! id when it is unset, empty or fails.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU8, Ordering};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;
use serde_json::{json, Value};

use super::aws::{self, AwsKey};
use super::fields::{self, Field, Schema};
use super::template::{self, Template};
use super::*;

fn stream_name_ok(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

const CONFIG: &[Field] = &[
    Field::text("stream_name", "Stream Name", "The name of your Kinesis data stream")
        .required()
        .pattern("^[a-zA-Z0-9_.-]+$", stream_name_ok),
    Field::text("region", "AWS Region", "The AWS region of the stream, e.g. us-east-1")
        .required()
        .pattern(aws::REGION_PATTERN, aws::region_ok),
    Field::text(
        "endpoint",
        "Endpoint",
        "A custom endpoint URL (LocalStack or a VPC endpoint); empty uses the region's.",
    )
    .pattern("^https?:\\/\\/[^\\s]+$", fields::http_url),
    Field::text(
        "partition_key_template",
        "Partition Key Template",
        "A JMESPath expression over {metadata, data} for the partition key; the event id when empty.",
    ),
];

const SCHEMA: Schema = Schema {
    kind: "aws_kinesis",
    label: "AWS Kinesis",
    description: "Put each event on an Amazon Kinesis data stream, partitioned by a key you choose.",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\"><rect width=\"16\" height=\"16\" rx=\"4\" fill=\"#8C4FFF\"/><path d=\"M3 5h10M3 8h10M3 11h10\" stroke=\"#fff\"/></svg>",
    instructions: "Give the stream's name and region and an access key allowed `kinesis:PutRecord` on it. Each record is `{\"data\": <event data>, \"metadata\": {\"event-id\", \"topic\", \"timestamp\", ...}}` unless the deployment sends bare data. Set `partition_key_template` (JMESPath, e.g. `data.customer_id`) to keep related events on one shard; the event id is used otherwise.",
    config: CONFIG,
    credentials: aws::CREDENTIALS,
};

#[derive(Default)]
pub struct AwsKinesis {
    pub credentials: aws::CredentialPolicy,
}

impl DestinationType for AwsKinesis {
    fn schema(&self) -> Option<&'static Schema> {
        Some(&SCHEMA)
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = SCHEMA.check(&d.config, &d.credentials);
        if let Some(t) = d.config.get("partition_key_template").filter(|t| !t.is_empty()) {
            if let Some(e) = template::invalid(t) {
                errs.push(template::violation("partition_key_template", &e));
            }
        }
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
        let get = |k: &str| d.config.get(k).map(String::as_str).unwrap_or("");
        (format!("{} in {}", get("stream_name"), get("region")), None)
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let get = |k: &str| d.config.get(k).filter(|v| !v.is_empty()).cloned();
        let region = get("region").ok_or(PublisherError::Missing("config.region"))?;
        let partition_key = match get("partition_key_template") {
            Some(t) => Some(Template::compile(&t).map_err(|e| PublisherError::Refused {
                field: "config.partition_key_template",
                reason: e.to_string(),
            })?),
            None => None,
        };
        Ok(Box::new(KinesisPublisher {
            lane: Arc::new((
                AwsKey::new(d, region, get("endpoint"), self.credentials)?,
                get("stream_name").ok_or(PublisherError::Missing("config.stream_name"))?,
            )),
            partition_key,
            delivery_metadata: d.delivery_metadata.clone(),
            include_ms: ctx.config.webhook.include_millisecond_timestamp,
            metadata_in_payload: ctx.config.kinesis_metadata_in_payload,
            calls: AtomicU8::new(UNTRIED),
        }))
    }
}

pub struct KinesisPublisher {
    /// The client key and stream name: also the batch lane's key, made once.
    lane: Arc<(AwsKey, String)>,
    partition_key: Option<Template>,
    delivery_metadata: Option<StringMap>,
    include_ms: bool,
    metadata_in_payload: bool,
    /// What `PutRecords` did: [`UNTRIED`], [`BATCHING`] or [`ONE_BY_ONE`].
    calls: AtomicU8,
}

/// No `PutRecords` answered yet: the first batch keeps a copy of its
/// records, to resend them one by one if the call is denied.
const UNTRIED: u8 = 0;
/// `PutRecords` is allowed.
const BATCHING: u8 = 1;
/// `PutRecords` was denied: `PutRecord` per record.
const ONE_BY_ONE: u8 = 2;

async fn connect(key: &AwsKey, guard: &crate::ssrf::Guard) -> Result<Client, PublishResult> {
    let sdk = key
        .sdk_config(&format!("kinesis.{}.amazonaws.com", key.region), guard)
        .await?;
    Ok(Client::new(&sdk))
}

impl KinesisPublisher {
    /// The record bytes and its partition key.
    fn record(&self, event: &Event, now_ms: i64) -> Result<(Vec<u8>, String), String> {
        let meta: BTreeMap<String, String> =
            merged_metadata(self.delivery_metadata.as_ref(), event, now_ms, self.include_ms)
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
        // The data is parsed only when a template has to look into it.
        let key = match &self.partition_key {
            None => None,
            Some(t) => {
                let data: Value = serde_json::from_str(&event.data).map_err(|e| e.to_string())?;
                if self.metadata_in_payload {
                    t.key(&json!({ "metadata": &meta, "data": data }))
                } else {
                    t.key(&data)
                }
            }
        };
        let bytes = if self.metadata_in_payload {
            // The data is already compact JSON: spliced in, not re-encoded.
            let meta = serde_json::to_string(&meta).map_err(|e| e.to_string())?;
            format!("{{\"data\":{},\"metadata\":{meta}}}", event.data).into_bytes()
        } else {
            event.data.as_bytes().to_vec()
        };
        Ok((bytes, key.unwrap_or_else(|| event.id.clone())))
    }
}

/// One record of a `PutRecords`: its bytes and partition key.
pub struct Item {
    data: Vec<u8>,
    partition_key: String,
}

/// `PutRecords` takes 500 records and 5 MiB of data and partition keys.
const LIMITS: batch::Limits = batch::Limits {
    max_items: 500,
    max_bytes: 5 * 1024 * 1024,
};

impl KinesisPublisher {
    async fn send(&self, client: &Client, items: Vec<Item>) -> Vec<PublishResult> {
        if self.calls.load(Ordering::Relaxed) == ONE_BY_ONE {
            return self.send_one_by_one(client, items).await;
        }
        let n = items.len();
        let keys: Vec<String> = items.iter().map(|i| i.partition_key.clone()).collect();
        let copies: Option<Vec<Item>> = (self.calls.load(Ordering::Relaxed) == UNTRIED).then(|| {
            items
                .iter()
                .map(|i| Item {
                    data: i.data.clone(),
                    partition_key: i.partition_key.clone(),
                })
                .collect()
        });
        let entries: Result<Vec<_>, _> = items
            .into_iter()
            .map(|i| {
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(i.data))
                    .partition_key(i.partition_key)
                    .build()
            })
            .collect();
        let entries = match entries {
            Ok(e) => e,
            Err(e) => {
                return vec![PublishResult::failed("ERR", format!("could not format event for delivery: {e}")); n]
            }
        };
        let out = match client
            .put_records()
            .stream_name(&self.lane.1)
            .set_records(Some(entries))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                let failed = aws::classify(&e, "stream_not_found");
                // AWS answers AccessDeniedException; a 403 whose body the SDK
                // cannot read (an endpoint policy, moto's IAM) is a denial too.
                let forbidden = e.raw_response().is_some_and(|r| r.status().as_u16() == 403);
                if failed.code != "access_denied" && !forbidden {
                    return vec![failed; n];
                }
                tracing::info!(stream = %self.lane.1, "PutRecords is denied; sending with PutRecord from now on");
                self.calls.store(ONE_BY_ONE, Ordering::Relaxed);
                return match copies {
                    Some(items) => self.send_one_by_one(client, items).await,
                    // Retried on the schedule, with PutRecord.
                    None => vec![failed; n],
                };
            }
        };
        self.calls.store(BATCHING, Ordering::Relaxed);
        // One result per record, in the request's order.
        let mut results: Vec<PublishResult> = out
            .records()
            .iter()
            .zip(keys)
            .map(|(r, key)| match r.error_code() {
                Some(code) => aws::entry_failure(code, r.error_message(), "stream_not_found"),
                None => recorded(r.shard_id(), r.sequence_number(), key),
            })
            .collect();
        results.resize_with(n, || {
            PublishResult::failed("ERR", "PutRecords did not answer for this record")
        });
        results
    }

    /// `PutRecord` for each record, all at once.
    async fn send_one_by_one(&self, client: &Client, items: Vec<Item>) -> Vec<PublishResult> {
        let calls = items.into_iter().map(|i| async move {
            let key = i.partition_key.clone();
            match client
                .put_record()
                .stream_name(&self.lane.1)
                .data(Blob::new(i.data))
                .partition_key(i.partition_key)
                .send()
                .await
            {
                Ok(out) => recorded(Some(out.shard_id()), Some(out.sequence_number()), key),
                Err(e) => aws::classify(&e, "stream_not_found"),
            }
        });
        futures_util::future::join_all(calls).await
    }
}

fn recorded(shard_id: Option<&str>, sequence_number: Option<&str>, partition_key: String) -> PublishResult {
    PublishResult::success(
        "OK",
        json!({
            "shard_id": shard_id,
            "sequence_number": sequence_number,
            "partition_key": partition_key,
        }),
    )
}

impl Publisher for KinesisPublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let (data, partition_key) = match self.record(event, now_ms) {
                Ok(r) => r,
                Err(e) => return PublishResult::failed("ERR", format!("could not format event for delivery: {e}")),
            };
            let client: Rc<Client> = match clients
                .kinesis
                .get(&self.lane.0, || connect(&self.lane.0, &clients.guard))
                .await
            {
                Ok(c) => c,
                Err(r) => return r,
            };
            let size = data.len() + partition_key.len();
            let item = Item { data, partition_key };
            clients
                .kinesis_batches
                .submit(&self.lane, item, size, LIMITS, |items| self.send(&client, items))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publisher(config: &[(&str, &str)], in_payload: bool) -> KinesisPublisher {
        let d = test_destination("aws_kinesis", config, &[("key", "k"), ("secret", "s")]);
        KinesisPublisher {
            lane: Arc::new((
                AwsKey::new(&d, "us-east-1".into(), None, Default::default()).unwrap(),
                "s".into(),
            )),
            partition_key: d
                .config
                .get("partition_key_template")
                .map(|t| Template::compile(t).unwrap()),
            delivery_metadata: None,
            include_ms: false,
            metadata_in_payload: in_payload,
            calls: AtomicU8::new(UNTRIED),
        }
    }

    fn event() -> Event {
        let mut metadata = StringMap::new();
        metadata.insert("b".into(), "2".into());
        Event {
            id: "evt_1".into(),
            tenant_id: "t".into(),
            destination_id: None,
            topic: "orders".into(),
            eligible_for_retry: true,
            time: 0,
            time_ns: 0,
            metadata,
            data: Arc::from(r#"{"customer":{"id":"c9"},"n":7}"#),
            matched_destination_ids: vec![],
        }
    }

    #[test]
    fn records_and_keys() {
        let p = publisher(&[("partition_key_template", "data.customer.id")], true);
        let (bytes, key) = p.record(&event(), 1_700_000_000_000).unwrap();
        assert_eq!(key, "c9");
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["data"], json!({"customer": {"id": "c9"}, "n": 7}));
        assert_eq!(v["metadata"]["event-id"], "evt_1");
        assert_eq!(v["metadata"]["b"], "2");
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("{\"data\":{\"customer\""), "{text}");
        assert!(
            text.find("\"b\"").unwrap() < text.find("\"event-id\"").unwrap(),
            "sorted keys: {text}"
        );

        let p = publisher(&[("partition_key_template", "metadata.missing")], true);
        assert_eq!(p.record(&event(), 0).unwrap().1, "evt_1", "falls back to the event id");
        let p = publisher(&[("partition_key_template", "n")], false);
        let (bytes, key) = p.record(&event(), 0).unwrap();
        assert_eq!(key, "7");
        assert_eq!(bytes, br#"{"customer":{"id":"c9"},"n":7}"#);
        let p = publisher(&[], true);
        assert_eq!(p.record(&event(), 0).unwrap().1, "evt_1");
    }

    #[test]
    fn validation() {
        let d = test_destination(
            "aws_kinesis",
            &[
                ("stream_name", "bad name"),
                ("region", "moon-1"),
                ("partition_key_template", "a.["),
            ],
            &[("key", "k")],
        );
        assert_eq!(
            AwsKinesis::default().validate(&d).unwrap_err(),
            vec![
                "config.stream_name failed pattern validation",
                "config.region failed pattern validation",
                "credentials.secret is required",
                "config.partition_key_template is invalid",
            ]
        );
        let d = test_destination(
            "aws_kinesis",
            &[("stream_name", "s-1"), ("region", "eu-west-1")],
            &[("key", "k"), ("secret", "s")],
        );
        assert!(AwsKinesis::default().validate(&d).is_ok());
        assert_eq!(AwsKinesis::default().target(&d).0, "s-1 in eu-west-1");
    }
}
