//! The `aws_sqs` destination type: each event becomes one message on the
//! destination's queue, sent with `SendMessageBatch` (concurrent deliveries
//! to one queue share a call, up to 10 messages; see [`super::batch`]). The body is the event data; the merged delivery
//! metadata travels as one String message attribute, `metadata`, holding its
//! JSON (as in Outpost, so consumers of either read the same message).
//!
//! The region comes from an `sqs.<region>.amazonaws.com` queue URL (else
//! `us-east-1`). As in Outpost, two keys are read without being listed in
//! the field list: `config.endpoint` sends the calls elsewhere (LocalStack,
//! moto) and `credentials.session` adds a session token (masked on read).
//! A queue URL that is not on `amazonaws.com` is its own endpoint.

use std::rc::Rc;
use std::sync::Arc;

use aws_sdk_sqs::types::{MessageAttributeValue, SendMessageBatchRequestEntry};
use aws_sdk_sqs::Client;
use serde_json::json;

use super::aws::{self, AwsKey};
use super::fields::{self, Field, Schema};
use super::*;

const CONFIG: &[Field] = &[Field::text("queue_url", "Queue URL", "The URL of your AWS SQS queue")
    .required()
    .pattern("^https?:\\/\\/[^\\s]+$", fields::http_url)];

const SCHEMA: Schema = Schema {
    kind: "aws_sqs",
    label: "AWS SQS",
    description: "Send events to an Amazon SQS queue, authenticating with an access key.",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 16 16\"><rect width=\"16\" height=\"16\" rx=\"4\" fill=\"#D82D6D\"/><path d=\"M4 8h8M9.5 5.5 12 8l-2.5 2.5M6.5 5.5 4 8l2.5 2.5\" stroke=\"#fff\" fill=\"none\"/></svg>",
    instructions: "Give the queue's URL and an access key allowed `sqs:SendMessage` on it (with temporary credentials, add `session` to the credentials; for LocalStack, `endpoint` to the config). Each message's body is the event data (JSON); the message attribute `metadata` holds a JSON object with `event-id`, `topic`, `timestamp` and the event's metadata. FIFO queues are not supported yet (no group id is sent).",
    config: CONFIG,
    // Outpost lists key and secret only; `session` is read anyway.
    credentials: aws::CREDENTIALS.split_at(2).0,
};

#[derive(Default)]
pub struct AwsSqs {
    pub credentials: aws::CredentialPolicy,
}

/// The region an AWS queue URL names: `sqs.<region>.amazonaws.com`, and
/// also China (`sqs.cn-north-1.amazonaws.com.cn`), FIPS
/// (`sqs-fips.us-east-1.amazonaws.com`), VPC endpoints
/// (`vpce-….sqs.eu-west-1.vpce.amazonaws.com`) and the legacy
/// `<region>.queue.amazonaws.com`. `None` for any other host.
fn region_of(queue_url: &str) -> Option<String> {
    let (host, _) = clients::url_host_port(queue_url)?;
    let host = host.to_ascii_lowercase();
    let inner = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    inner.split('.').find(|l| is_region(l)).map(String::from)
}

/// `us-east-1`, `cn-north-1`, `us-gov-west-1`, `ap-southeast-2`, ...
fn is_region(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// `scheme://authority` of a URL.
fn origin(url: &str) -> Option<&str> {
    let scheme_end = url.find("://")? + 3;
    let end = url[scheme_end..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| scheme_end + i);
    Some(&url[..end])
}

/// The endpoint the SDK calls: the configured one, else a non-AWS queue's own origin.
fn endpoint_for(config: &StringMap) -> Option<String> {
    if let Some(e) = config.get("endpoint").filter(|e| !e.is_empty()) {
        return Some(e.trim_end_matches('/').to_string());
    }
    let url = config.get("queue_url")?;
    let (host, _) = clients::url_host_port(url)?;
    // Only the standard regional host is left to the SDK; any other queue
    // host (FIPS, China, a VPC endpoint, the legacy one, not AWS at all) is
    // called where the URL says, as the queue's owner intends.
    match region_of(url) {
        Some(region) if host.eq_ignore_ascii_case(&format!("sqs.{region}.amazonaws.com")) => None,
        _ => origin(url).map(String::from),
    }
}

/// `url.QueryEscape`, for the console link.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl DestinationType for AwsSqs {
    fn schema(&self) -> Option<&'static Schema> {
        Some(&SCHEMA)
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = SCHEMA.check(&d.config, &d.credentials);
        if let Some(u) = d.config.get("queue_url").filter(|u| fields::http_url(u)) {
            if clients::url_host_port(u).is_none() {
                errs.push("config.queue_url is invalid".into());
            }
        }
        // Read though not listed (Outpost lists only the queue URL).
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
        self.credentials.check_actor(d, previous, actor)
    }

    fn target(&self, d: &Destination) -> (String, Option<String>) {
        let url = d.config.get("queue_url").cloned().unwrap_or_default();
        let link = region_of(&url).map(|r| {
            format!(
                "https://{r}.console.aws.amazon.com/sqs/v3/home?region={r}#/queues/{}",
                query_escape(&url)
            )
        });
        (url, link)
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let queue_url = d
            .config
            .get("queue_url")
            .cloned()
            .ok_or(PublisherError::Missing("config.queue_url"))?;
        let region = region_of(&queue_url).unwrap_or_else(|| "us-east-1".into());
        Ok(Box::new(SqsPublisher {
            lane: Arc::new((
                AwsKey::new(d, region, endpoint_for(&d.config), self.credentials)?,
                queue_url,
            )),
            delivery_metadata: d.delivery_metadata.clone(),
            include_ms: ctx.config.webhook.include_millisecond_timestamp,
        }))
    }
}

pub struct SqsPublisher {
    /// The client key and queue URL: also the batch lane's key, made once.
    lane: Arc<(AwsKey, String)>,
    delivery_metadata: Option<StringMap>,
    include_ms: bool,
}

async fn connect(key: &AwsKey, guard: &crate::ssrf::Guard) -> Result<Client, PublishResult> {
    let sdk = key
        .sdk_config(&format!("sqs.{}.amazonaws.com", key.region), guard)
        .await?;
    Ok(Client::new(&sdk))
}

/// One message of a `SendMessageBatch`: its body and its `metadata` attribute.
pub struct Item {
    body: Arc<str>,
    metadata: MessageAttributeValue,
}

/// `SendMessageBatch` takes 10 messages and 256 KiB of bodies and attributes.
const LIMITS: batch::Limits = batch::Limits {
    max_items: 10,
    max_bytes: 256 * 1024,
};

impl SqsPublisher {
    async fn send(&self, client: &Client, items: Vec<Item>) -> Vec<PublishResult> {
        let n = items.len();
        let entries: Result<Vec<_>, _> = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&*item.body)
                    .message_attributes("metadata", item.metadata)
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
            .send_message_batch()
            .queue_url(&self.lane.1)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => return vec![aws::classify(&e, "queue_not_found"); n],
        };
        // Entries answer by id, in no promised order.
        let mut results: Vec<Option<PublishResult>> = vec![None; n];
        for ok in out.successful() {
            if let Some(slot) = ok.id().parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
                *slot = Some(PublishResult::success("OK", json!({ "message_id": ok.message_id() })));
            }
        }
        for failed in out.failed() {
            if let Some(slot) = failed.id().parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
                let mut r = aws::entry_failure(failed.code(), failed.message(), "queue_not_found");
                // SQS says whether the sender is at fault: a server-side
                // failure is always worth retrying.
                if !failed.sender_fault() {
                    r.retryable = true;
                }
                *slot = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| PublishResult::failed("ERR", "SendMessageBatch did not answer for this message"))
            })
            .collect()
    }
}

impl Publisher for SqsPublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let metadata = merged_metadata(self.delivery_metadata.as_ref(), event, now_ms, self.include_ms);
            let json = match serde_json::to_string(&metadata) {
                Ok(m) => m,
                Err(e) => return PublishResult::failed("ERR", format!("could not format event for delivery: {e}")),
            };
            // SQS counts the body, the attribute's name, type and value.
            let size = event.data.len() + json.len() + "metadata".len() + "String".len();
            let attribute = match MessageAttributeValue::builder()
                .data_type("String")
                .string_value(json)
                .build()
            {
                Ok(a) => a,
                Err(e) => return PublishResult::failed("ERR", format!("could not format event for delivery: {e}")),
            };
            let client: Rc<Client> = match clients
                .sqs
                .get(&self.lane.0, || connect(&self.lane.0, &clients.guard))
                .await
            {
                Ok(c) => c,
                Err(r) => return r,
            };
            let item = Item {
                body: event.data.clone(),
                metadata: attribute,
            };
            clients
                .sqs_batches
                .submit(&self.lane, item, size, LIMITS, |items| self.send(&client, items))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_endpoints_and_links() {
        assert_eq!(
            region_of("https://sqs.eu-west-1.amazonaws.com/123/q").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(region_of("http://localhost:4566/000000000000/q"), None);
        // Queue URLs outside sqs.<region>.amazonaws.com sign for their own
        // region and are called at their own host.
        for (url, region, endpoint) in [
            (
                "https://sqs.cn-north-1.amazonaws.com.cn/1/q",
                Some("cn-north-1"),
                Some("https://sqs.cn-north-1.amazonaws.com.cn"),
            ),
            (
                "https://sqs-fips.us-gov-west-1.amazonaws.com/1/q",
                Some("us-gov-west-1"),
                Some("https://sqs-fips.us-gov-west-1.amazonaws.com"),
            ),
            (
                "https://vpce-0a1b-c2d3.sqs.eu-central-1.vpce.amazonaws.com/1/q",
                Some("eu-central-1"),
                Some("https://vpce-0a1b-c2d3.sqs.eu-central-1.vpce.amazonaws.com"),
            ),
            (
                "https://ap-southeast-2.queue.amazonaws.com/1/q",
                Some("ap-southeast-2"),
                Some("https://ap-southeast-2.queue.amazonaws.com"),
            ),
            ("https://sqs.eu-west-3.amazonaws.com/1/q", Some("eu-west-3"), None),
            ("https://queue.example.com/1/q", None, Some("https://queue.example.com")),
        ] {
            assert_eq!(region_of(url).as_deref(), region, "{url}");
            let mut c = StringMap::new();
            c.insert("queue_url".into(), url.into());
            assert_eq!(endpoint_for(&c).as_deref(), endpoint, "{url}");
        }
        let mut c = StringMap::new();
        c.insert("queue_url".into(), "http://localhost:4566/000000000000/q".into());
        assert_eq!(endpoint_for(&c).as_deref(), Some("http://localhost:4566"));
        c.insert("queue_url".into(), "https://sqs.us-east-2.amazonaws.com/1/q".into());
        assert_eq!(endpoint_for(&c), None);
        c.insert("endpoint".into(), "http://moto:5000/".into());
        assert_eq!(endpoint_for(&c).as_deref(), Some("http://moto:5000"));
        assert_eq!(query_escape("https://a/b c"), "https%3A%2F%2Fa%2Fb+c");
        let d = test_destination(
            "aws_sqs",
            &[("queue_url", "https://sqs.us-east-2.amazonaws.com/1/q")],
            &[],
        );
        let (t, link) = AwsSqs::default().target(&d);
        assert_eq!(t, "https://sqs.us-east-2.amazonaws.com/1/q");
        assert_eq!(
            link.as_deref(),
            Some("https://us-east-2.console.aws.amazon.com/sqs/v3/home?region=us-east-2#/queues/https%3A%2F%2Fsqs.us-east-2.amazonaws.com%2F1%2Fq")
        );
    }

    #[test]
    fn validation() {
        let mut d = test_destination("aws_sqs", &[], &[]);
        let e = AwsSqs::default().validate(&d).unwrap_err();
        assert!(e.contains(&"config.queue_url is required".to_string()), "{e:?}");
        assert!(e.contains(&"credentials.key is required".to_string()), "{e:?}");
        d.config.insert("queue_url".into(), "sqs.example/q".into());
        d.credentials.insert("key".into(), "AKIA".into());
        d.credentials.insert("secret".into(), "s".into());
        let e = AwsSqs::default().validate(&d).unwrap_err();
        assert_eq!(e, vec!["config.queue_url failed pattern validation".to_string()]);
        d.config
            .insert("queue_url".into(), "https://sqs.us-east-1.amazonaws.com/1/q".into());
        assert!(AwsSqs::default().validate(&d).is_ok());
    }
}
