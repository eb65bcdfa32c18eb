//! The `aws_s3` destination type: each event becomes one object. The body
//! is the event data (`application/json`), the merged metadata is the
//! object's user metadata (`x-amz-meta-*`), and the key comes from
//! `key_template`, a JMESPath expression over
//! `{data, metadata, time:{year, month, day, hour, minute, second, date,
//! datetime, unix, rfc3339, rfc3339_nano}}` (the event's time, UTC, every
//! value a string). A template that yields nothing is a format error.
//! `config.endpoint` (read, not listed, as in Outpost) switches to
//! path-style requests for LocalStack and moto.

use std::collections::HashMap;
use std::rc::Rc;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::StorageClass;
use aws_sdk_s3::Client;
use base64::Engine as _;
use chrono::{TimeZone, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::aws::{self, AwsKey};
use super::fields::{self, Field, Schema};
use super::template::{self, Template};
use super::*;

/// Outpost's default key: `<rfc3339_nano>_<event-id>.json`.
pub const DEFAULT_KEY_TEMPLATE: &str = "join('', [time.rfc3339_nano, '_', metadata.\"event-id\", '.json'])";

const STORAGE_CLASSES: &[&str] = &[
    "STANDARD",
    "REDUCED_REDUNDANCY",
    "STANDARD_IA",
    "ONEZONE_IA",
    "INTELLIGENT_TIERING",
    "GLACIER",
    "DEEP_ARCHIVE",
    "OUTPOSTS",
    "GLACIER_IR",
    "SNOW",
    "EXPRESS_ONEZONE",
];

const CONFIG: &[Field] = &[
    Field::text("bucket", "Bucket Name", "The S3 bucket each event is written to").required(),
    Field::text("region", "AWS Region", "The bucket's AWS region, e.g. us-east-1")
        .required()
        .pattern(aws::REGION_PATTERN, aws::region_ok),
    Field::text(
        "key_template",
        "Key Template",
        "A JMESPath expression for the object key; by default <time>_<event id>.json.",
    ),
    Field::text("storage_class", "Storage Class", "The S3 storage class of each object").default_value("STANDARD"),
];

const SCHEMA: Schema = Schema {
    kind: "aws_s3",
    label: "AWS S3",
    description: "Write each event as a JSON object to an Amazon S3 bucket.",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\"><rect width=\"16\" height=\"16\" rx=\"4\" fill=\"#3F8624\"/><path d=\"M4 5c0-1 8-1 8 0l-1 7c0 1-6 1-6 0z\" stroke=\"#fff\" fill=\"none\"/></svg>",
    instructions: "Give the bucket, its region and an access key allowed `s3:PutObject` on it. Each object's body is the event data; `event-id`, `topic`, `timestamp` and the event's metadata are its user metadata. `key_template` (JMESPath over `data`, `metadata` and `time`) names the object, e.g. `join('/', [time.date, metadata.\"event-id\"])`.",
    config: CONFIG,
    credentials: aws::CREDENTIALS,
};

#[derive(Default)]
pub struct AwsS3 {
    pub credentials: aws::CredentialPolicy,
}

fn storage_class(config: &StringMap) -> Option<&'static str> {
    match config.get("storage_class").map(|s| s.trim()).filter(|s| !s.is_empty()) {
        None => Some("STANDARD"),
        Some(s) => STORAGE_CLASSES.iter().copied().find(|c| c.eq_ignore_ascii_case(s)),
    }
}

impl DestinationType for AwsS3 {
    fn schema(&self) -> Option<&'static Schema> {
        Some(&SCHEMA)
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = SCHEMA.check(&d.config, &d.credentials);
        if let Some(t) = d.config.get("key_template").filter(|t| !t.is_empty()) {
            if let Some(e) = template::invalid(t) {
                errs.push(template::violation("key_template", &e));
            }
        }
        if storage_class(&d.config).is_none() {
            errs.push("config.storage_class failed enum validation".into());
        }
        aws::check_endpoint(&d.config, &mut errs);
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
        self.credentials.check_actor(d, previous, actor)?;
        if let Some(c) = storage_class(&d.config) {
            if d.config.contains_key("storage_class") {
                d.config.insert("storage_class".into(), c.to_string());
            }
        }
        Ok(())
    }

    fn target(&self, d: &Destination) -> (String, Option<String>) {
        let get = |k: &str| d.config.get(k).map(String::as_str).unwrap_or("");
        let (bucket, region) = (get("bucket"), get("region"));
        (
            format!("{bucket} in {region}"),
            Some(format!(
                "https://s3.console.aws.amazon.com/s3/buckets/{bucket}?region={region}"
            )),
        )
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let get = |k: &str| d.config.get(k).filter(|v| !v.is_empty()).cloned();
        let region = get("region").ok_or(PublisherError::Missing("config.region"))?;
        let template = get("key_template").unwrap_or_else(|| DEFAULT_KEY_TEMPLATE.to_string());
        Ok(Box::new(S3Publisher {
            key: AwsKey::new(d, region, get("endpoint"), self.credentials)?,
            bucket: get("bucket").ok_or(PublisherError::Missing("config.bucket"))?,
            key_template: Template::compile(&template).map_err(|e| PublisherError::Refused {
                field: "config.key_template",
                reason: e.to_string(),
            })?,
            storage_class: StorageClass::from(
                storage_class(&d.config).ok_or(PublisherError::Invalid("config.storage_class"))?,
            ),
            delivery_metadata: d.delivery_metadata.clone(),
            include_ms: ctx.config.webhook.include_millisecond_timestamp,
        }))
    }
}

pub struct S3Publisher {
    key: AwsKey,
    bucket: String,
    key_template: Template,
    storage_class: StorageClass,
    delivery_metadata: Option<StringMap>,
    include_ms: bool,
}

/// The `time` object of the key template, from the event's time (UTC).
fn time_fields(ms: i64, ns: u32) -> Value {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    json!({
        "year": t.format("%Y").to_string(),
        "month": t.format("%m").to_string(),
        "day": t.format("%d").to_string(),
        "hour": t.format("%H").to_string(),
        "minute": t.format("%M").to_string(),
        "second": t.format("%S").to_string(),
        "date": t.format("%Y-%m-%d").to_string(),
        "datetime": t.format("%Y-%m-%dT%H:%M:%S").to_string(),
        "unix": t.timestamp().to_string(),
        "rfc3339": crate::timefmt::format_secs(ms),
        "rfc3339_nano": crate::timefmt::format_rfc3339_nano(ms, ns),
    })
}

async fn connect(key: &AwsKey, guard: &crate::ssrf::Guard) -> Result<Client, PublishResult> {
    let sdk = key
        .sdk_config(&format!("s3.{}.amazonaws.com", key.region), guard)
        .await?;
    let mut conf = aws_sdk_s3::config::Builder::from(&sdk);
    if key.endpoint.is_some() {
        conf = conf.force_path_style(true);
    }
    Ok(Client::from_conf(conf.build()))
}

impl S3Publisher {
    fn object_key(&self, event: &Event, meta: &StringMap) -> Result<String, String> {
        let data: Value = serde_json::from_str(&event.data).map_err(|e| e.to_string())?;
        let doc = json!({ "data": data, "metadata": meta, "time": time_fields(event.time, event.time_ns) });
        self.key_template
            .key(&doc)
            .ok_or_else(|| "the key template gave no key".to_string())
    }
}

impl Publisher for S3Publisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let meta = merged_metadata(self.delivery_metadata.as_ref(), event, now_ms, self.include_ms);
            let object_key = match self.object_key(event, &meta) {
                Ok(k) => k,
                Err(e) => return PublishResult::failed("ERR", format!("could not format event for delivery: {e}")),
            };
            let client: Rc<Client> = match clients.s3.get(&self.key, || connect(&self.key, &clients.guard)).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            let body = event.data.as_bytes().to_vec();
            let checksum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body));
            let metadata: HashMap<String, String> = meta.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let sent = client
                .put_object()
                .bucket(&self.bucket)
                .key(&object_key)
                .body(ByteStream::from(body))
                .content_type("application/json")
                .set_metadata(Some(metadata))
                .storage_class(self.storage_class.clone())
                .checksum_sha256(checksum)
                .send()
                .await;
            match sent {
                Ok(_) => PublishResult::success("OK", json!({ "bucket": self.bucket, "key": object_key })),
                Err(e) => aws::classify(&e, "bucket_not_found"),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_validation() {
        let d = test_destination(
            "aws_s3",
            &[
                ("bucket", "b"),
                ("region", "us-east-1"),
                ("storage_class", "glacier_ir"),
            ],
            &[("key", "k"), ("secret", "s")],
        );
        assert!(AwsS3::default().validate(&d).is_ok());
        assert_eq!(storage_class(&d.config), Some("GLACIER_IR"));
        assert_eq!(
            AwsS3::default().target(&d),
            (
                "b in us-east-1".to_string(),
                Some("https://s3.console.aws.amazon.com/s3/buckets/b?region=us-east-1".to_string())
            )
        );
        let bad = test_destination(
            "aws_s3",
            &[
                ("bucket", "b"),
                ("region", "us-east-1"),
                ("storage_class", "COLD"),
                ("key_template", "a.["),
            ],
            &[("key", "k"), ("secret", "s")],
        );
        assert_eq!(
            AwsS3::default().validate(&bad).unwrap_err(),
            vec![
                "config.key_template is invalid",
                "config.storage_class failed enum validation"
            ]
        );

        // 2024-06-01T08:23:36.120Z
        let t = time_fields(1_717_230_216_120, 0);
        assert_eq!(t["date"], "2024-06-01");
        assert_eq!(t["month"], "06");
        assert_eq!(t["rfc3339"], "2024-06-01T08:23:36Z");
        assert_eq!(t["rfc3339_nano"], "2024-06-01T08:23:36.12Z");
        // To the nanosecond, as Go's RFC3339Nano writes it.
        assert_eq!(
            time_fields(1_717_230_216_123, 456_780)["rfc3339_nano"],
            "2024-06-01T08:23:36.12345678Z"
        );
        assert_eq!(
            time_fields(1_717_230_216_000, 0)["rfc3339_nano"],
            "2024-06-01T08:23:36Z"
        );
        assert_eq!(t["unix"], "1717230216");
        let mut meta = StringMap::new();
        meta.insert("event-id".into(), "evt_1".into());
        let p = |tpl: &str| S3Publisher {
            key: AwsKey::new(&d, "us-east-1".into(), None, Default::default()).unwrap(),
            bucket: "b".into(),
            key_template: Template::compile(tpl).unwrap(),
            storage_class: StorageClass::Standard,
            delivery_metadata: None,
            include_ms: false,
        };
        let event = Event {
            id: "evt_1".into(),
            tenant_id: "t".into(),
            destination_id: None,
            topic: "a".into(),
            eligible_for_retry: true,
            time: 1_717_230_216_120,
            time_ns: 0,
            metadata: StringMap::new(),
            data: Arc::from(r#"{"customer":"c1"}"#),
            matched_destination_ids: vec![],
        };
        assert_eq!(
            p(DEFAULT_KEY_TEMPLATE).object_key(&event, &meta).unwrap(),
            "2024-06-01T08:23:36.12Z_evt_1.json"
        );
        assert_eq!(
            p("join('/', [data.customer, time.year, metadata.\"event-id\"])")
                .object_key(&event, &meta)
                .unwrap(),
            "c1/2024/evt_1"
        );
        assert!(p("data.missing").object_key(&event, &meta).is_err());
    }
}
