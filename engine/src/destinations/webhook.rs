//! The `webhook` destination type: an HTTP POST of the event data, signed.
//! Default mode (Outpost's `x-outpost-*` headers, `v0=` HMAC) or Standard
//! Webhooks mode, chosen per deployment.

use std::sync::Arc;

use std::borrow::Cow;

use http::HeaderValue;
use serde_json::{json, Value};

use super::*;
use crate::config::{HeaderName as HeaderSetting, WebhookMode, PROTECTED_HEADERS, RESERVED_HEADERS};
use crate::http_client::{Headers, SendError, Target};
use crate::signing;

const SECRET: &str = "secret";
const PREVIOUS_SECRET: &str = "previous_secret";
const PREVIOUS_SECRET_INVALID_AT: &str = "previous_secret_invalid_at";
const ROTATE_SECRET: &str = "rotate_secret";
const ROTATION_WINDOW_MS: i64 = 24 * 3600 * 1000;

pub struct Webhook {
    config: Arc<Config>,
}

impl Webhook {
    pub fn new(config: Arc<Config>) -> Self {
        Self { config }
    }
}

fn truthy(v: &str) -> bool {
    matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "on" | "yes")
}

/// Parses and checks `config.custom_headers` (a JSON-encoded object of strings).
pub fn parse_custom_headers(raw: &str) -> Result<Vec<(String, String)>, Violations> {
    let map: serde_json::Map<String, Value> = match serde_json::from_str(raw) {
        Ok(Value::Object(m)) => m,
        _ => return Err(vec!["config.custom_headers is invalid".into()]),
    };
    let mut errs = Vec::new();
    let mut out = Vec::new();
    for (k, v) in map {
        let Some(v) = v.as_str() else {
            errs.push(format!("config.custom_headers.{k} is invalid"));
            continue;
        };
        if !crate::config::valid_header_token(&k) {
            errs.push(format!("config.custom_headers.{k} failed pattern validation"));
        } else if RESERVED_HEADERS
            .iter()
            .chain(PROTECTED_HEADERS)
            .any(|h| h.eq_ignore_ascii_case(&k))
        {
            errs.push(format!("config.custom_headers.{k} is forbidden"));
        } else if v.is_empty() {
            errs.push(format!("config.custom_headers.{k} is required"));
        } else if HeaderValue::from_str(v).is_err() {
            errs.push(format!("config.custom_headers.{k} is invalid"));
        } else {
            out.push((k, v.to_string()));
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

fn url_ok(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && !url.chars().any(char::is_whitespace)
        && url.len() > "http://".len()
        && Target::parse(url).is_ok()
}

impl DestinationType for Webhook {
    fn kind(&self) -> &'static str {
        "webhook"
    }

    fn metadata(&self) -> Value {
        json!({
            "type": "webhook",
            "label": "Webhook",
            "description": "Deliver each event as a signed HTTP POST to an endpoint you control.",
            "icon": "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 24 24\" fill=\"none\" stroke=\"currentColor\" stroke-width=\"2\"><path d=\"M4 12h16M14 6l6 6-6 6\"/></svg>",
            "instructions": "Give the URL of an endpoint that accepts `POST` requests with a JSON body. Every request is signed; verify the signature header with the destination's secret before trusting the payload, and answer with a 2xx status quickly.",
            "config_fields": [
                {"type": "text", "label": "URL", "description": "The endpoint that receives each event as an HTTP POST.", "key": "url", "required": true, "pattern": "^https?:\\/\\/[^\\s]+$"},
                {"type": "text", "label": "Custom headers", "description": "A JSON object of extra headers sent with every request.", "key": "custom_headers", "required": false}
            ],
            "credential_fields": [
                {"type": "text", "label": "Signing secret", "description": "The key used to sign requests. Generated when omitted.", "key": "secret", "required": false, "sensitive": true},
                {"type": "text", "label": "Previous secret", "description": "A rotated-out key that still signs until it expires.", "key": "previous_secret", "required": false, "sensitive": true},
                {"type": "text", "label": "Previous secret expiry", "description": "When the previous secret stops signing (RFC 3339).", "key": "previous_secret_invalid_at", "required": false}
            ]
        })
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = Vec::new();
        match d.config.get("url").map(String::as_str) {
            None | Some("") => errs.push("config.url is required".to_string()),
            Some(u) if !url_ok(u) => errs.push("config.url failed pattern validation".to_string()),
            _ => {}
        }
        if let Some(h) = d.config.get("custom_headers").filter(|s| !s.is_empty()) {
            if let Err(e) = parse_custom_headers(h) {
                errs.extend(e);
            }
        }
        let c = &d.credentials;
        let has = |k: &str| c.get(k).is_some_and(|v| !v.is_empty());
        if (has(PREVIOUS_SECRET) || has(PREVIOUS_SECRET_INVALID_AT)) && !has(SECRET) {
            errs.push("credentials.secret is required".into());
        }
        if has(PREVIOUS_SECRET) && !has(PREVIOUS_SECRET_INVALID_AT) {
            errs.push("credentials.previous_secret_invalid_at is required".into());
        }
        if has(PREVIOUS_SECRET_INVALID_AT) && !has(PREVIOUS_SECRET) {
            errs.push("credentials.previous_secret is required".into());
        }
        if let Some(t) = c.get(PREVIOUS_SECRET_INVALID_AT).filter(|s| !s.is_empty()) {
            if crate::timefmt::parse_rfc3339_ms(t).is_none() {
                errs.push("credentials.previous_secret_invalid_at failed pattern validation".into());
            }
        }
        if self.config.webhook.mode == WebhookMode::Standard {
            for k in [SECRET, PREVIOUS_SECRET] {
                if let Some(s) = c.get(k).filter(|s| !s.is_empty()) {
                    if signing::standard_secret_key(s).is_none() {
                        errs.push(format!("credentials.{k} is invalid"));
                    }
                }
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    fn preprocess(
        &self,
        d: &mut Destination,
        previous: Option<&Destination>,
        raw: &RawInput,
        actor: Actor,
        now_ms: i64,
    ) -> Result<(), Violations> {
        let sent = |k: &str| {
            raw.credentials
                .as_ref()
                .and_then(|m| m.get(k))
                .is_some_and(|v| !v.is_null())
        };
        let rotate = d.credentials.get(ROTATE_SECRET).is_some_and(|v| truthy(v));
        let mut errs = Vec::new();
        match previous {
            None => {
                if rotate {
                    errs.push("credentials.rotate_secret is invalid".to_string());
                }
                if actor == Actor::Tenant {
                    for k in [SECRET, PREVIOUS_SECRET, PREVIOUS_SECRET_INVALID_AT] {
                        if sent(k) {
                            errs.push(format!("credentials.{k} is forbidden"));
                        }
                    }
                }
                if !errs.is_empty() {
                    return Err(errs);
                }
                if d.credentials.get(SECRET).is_none_or(|s| s.is_empty()) {
                    d.credentials
                        .insert(SECRET.into(), signing::generate_secret(&self.config.webhook));
                }
            }
            Some(prev) => {
                if actor == Actor::Tenant {
                    for k in [SECRET, PREVIOUS_SECRET, PREVIOUS_SECRET_INVALID_AT] {
                        if sent(k) && d.credentials.get(k) != prev.credentials.get(k) {
                            errs.push(format!("credentials.{k} is forbidden"));
                        }
                    }
                    if !errs.is_empty() {
                        return Err(errs);
                    }
                }
                if rotate {
                    let old = prev.credentials.get(SECRET).cloned().unwrap_or_default();
                    d.credentials.insert(PREVIOUS_SECRET.into(), old);
                    d.credentials
                        .insert(SECRET.into(), signing::generate_secret(&self.config.webhook));
                    if !sent(PREVIOUS_SECRET_INVALID_AT) {
                        d.credentials.remove(PREVIOUS_SECRET_INVALID_AT);
                    }
                }
            }
        }
        if d.credentials.get(PREVIOUS_SECRET).is_some_and(|s| !s.is_empty())
            && d.credentials
                .get(PREVIOUS_SECRET_INVALID_AT)
                .is_none_or(|s| s.is_empty())
        {
            d.credentials.insert(
                PREVIOUS_SECRET_INVALID_AT.into(),
                crate::timefmt::format_secs(now_ms + ROTATION_WINDOW_MS),
            );
        }
        d.credentials.retain(|k, v| {
            matches!(k.as_str(), SECRET | PREVIOUS_SECRET | PREVIOUS_SECRET_INVALID_AT) && !v.is_empty()
        });
        Ok(())
    }

    fn target(&self, d: &Destination) -> (String, Option<String>) {
        (d.config.get("url").cloned().unwrap_or_default(), None)
    }

    fn display_credentials(&self, d: &Destination, now_ms: i64) -> StringMap {
        // Webhook secrets are shown in full (the receiver needs them); an
        // expired previous secret is hidden.
        let mut c = d.credentials.clone();
        let expired = c
            .get(PREVIOUS_SECRET_INVALID_AT)
            .and_then(|t| crate::timefmt::parse_rfc3339_ms(t))
            .is_some_and(|t| t <= now_ms);
        if expired {
            c.remove(PREVIOUS_SECRET);
            c.remove(PREVIOUS_SECRET_INVALID_AT);
        }
        c
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let url = d.config.get("url").ok_or(PublisherError::Missing("config.url"))?;
        let target = Target::parse(url).map_err(|reason| PublisherError::Refused {
            field: "config.url",
            reason,
        })?;
        let custom_headers = match d.config.get("custom_headers").filter(|s| !s.is_empty()) {
            Some(h) => parse_custom_headers(h).map_err(|e| PublisherError::Refused {
                field: "config.custom_headers",
                reason: e.join(", "),
            })?,
            None => vec![],
        };
        let previous = match (
            d.credentials.get(PREVIOUS_SECRET),
            d.credentials.get(PREVIOUS_SECRET_INVALID_AT),
        ) {
            (Some(s), Some(t)) if !s.is_empty() => crate::timefmt::parse_rfc3339_ms(t).map(|t| (s.clone(), t)),
            _ => None,
        };
        Ok(Box::new(WebhookPublisher::new(
            target,
            custom_headers,
            d.credentials.get(SECRET).cloned().filter(|s| !s.is_empty()),
            previous,
            d.delivery_metadata.clone(),
            ctx.clone(),
        )))
    }
}

/// A prepared webhook destination on its shard. Everything that does not
/// change between attempts (static headers, header names) is computed here,
/// once, when the destination reaches the shard.
pub struct WebhookPublisher {
    target: Target,
    /// `content-type`, then the destination's custom headers.
    leading: Vec<(String, String)>,
    secret: Option<String>,
    /// Previous secret and the time (ms) it stops signing.
    previous: Option<(String, i64)>,
    delivery_metadata: Option<StringMap>,
    names: HeaderNames,
    ctx: PublishContext,
}

/// Header names resolved from the deployment's settings.
struct HeaderNames {
    /// `None` = header off.
    event_id: Option<String>,
    timestamp: Option<String>,
    topic: Option<String>,
    signature: Option<String>,
    prefix: String,
}

impl HeaderNames {
    fn new(w: &crate::config::WebhookConfig) -> Self {
        let prefix = w.header_prefix.clone();
        let named = |s: &HeaderSetting, key: &str| match s {
            HeaderSetting::Disabled => None,
            HeaderSetting::Named(n) => Some(n.clone()),
            _ => Some(format!("{prefix}{key}")),
        };
        Self {
            event_id: named(&w.event_id_header, "event-id"),
            timestamp: named(&w.timestamp_header, "timestamp"),
            topic: named(&w.topic_header, "topic"),
            signature: named(&w.signature_header, "signature"),
            prefix,
        }
    }
}

impl WebhookPublisher {
    fn new(
        target: Target,
        custom_headers: Vec<(String, String)>,
        secret: Option<String>,
        previous: Option<(String, i64)>,
        delivery_metadata: Option<StringMap>,
        ctx: PublishContext,
    ) -> Self {
        let mut leading = vec![("content-type".to_string(), "application/json".to_string())];
        leading.extend(custom_headers);
        Self {
            target,
            leading,
            secret,
            previous,
            delivery_metadata,
            names: HeaderNames::new(&ctx.config.webhook),
            ctx,
        }
    }

    fn secrets(&self, now_ms: i64) -> Vec<&str> {
        let mut s: Vec<&str> = self.secret.iter().map(String::as_str).collect();
        if let Some((p, until)) = &self.previous {
            if now_ms < *until {
                s.push(p);
            }
        }
        s
    }

    /// The metadata a delivery carries (system < destination
    /// `delivery_metadata` < event metadata), borrowed, in key order.
    fn metadata<'a>(&'a self, event: &'a Event, now_ms: i64) -> Vec<(&'a str, Cow<'a, str>)> {
        let mut m: Vec<(&str, Cow<str>)> = Vec::with_capacity(4 + event.metadata.len());
        m.push(("timestamp", Cow::Owned(crate::timefmt::format_secs(now_ms))));
        m.push(("event-id", Cow::Borrowed(event.id.as_str())));
        m.push(("topic", Cow::Borrowed(event.topic.as_str())));
        if self.ctx.config.webhook.include_millisecond_timestamp {
            m.push(("timestamp-ms", Cow::Owned(crate::timefmt::format_nanos(now_ms))));
        }
        let later = self
            .delivery_metadata
            .iter()
            .flat_map(|dm| dm.iter())
            .chain(event.metadata.iter());
        for (k, v) in later {
            match m.iter_mut().find(|(have, _)| *have == k.as_str()) {
                Some(slot) => slot.1 = Cow::Borrowed(v.as_str()),
                None => m.push((k.as_str(), Cow::Borrowed(v.as_str()))),
            }
        }
        m.sort_by(|a, b| a.0.cmp(b.0));
        m
    }

    /// The request headers for one attempt, in Outpost's order (later wins).
    pub fn headers<'a>(&'a self, event: &'a Event, now_ms: i64) -> Result<Headers<'a>, String> {
        let cfg = &self.ctx.config;
        let w = &cfg.webhook;
        let mut h = Headers::with_capacity(self.leading.len() + 6 + event.metadata.len());
        for (k, v) in &self.leading {
            h.insert(k.as_str(), v.as_str());
        }
        let meta = self.metadata(event, now_ms);
        let prefix = self.names.prefix.as_str();
        let secrets = self.secrets(now_ms);
        match w.mode {
            WebhookMode::Default => {
                for (k, v) in meta {
                    let name: Option<Cow<str>> = match k {
                        "event-id" => self.names.event_id.as_deref().map(Cow::Borrowed),
                        "timestamp" => self.names.timestamp.as_deref().map(Cow::Borrowed),
                        "topic" => self.names.topic.as_deref().map(Cow::Borrowed),
                        // Metadata never becomes a header the request or
                        // its signature needs (an empty prefix with `host`,
                        // or `signature` under the prefix): those are ours.
                        _ => Some(Cow::Owned(format!("{prefix}{k}"))).filter(|n| !w.is_protected_header(n)),
                    };
                    if let Some(n) = name {
                        h.insert(n, v);
                    }
                }
                if let Some(name) = &self.names.signature {
                    if let Some(sig) =
                        self.ctx
                            .webhook_signer
                            .header_value(&secrets, &event.data, &event.id, &event.topic, now_ms)
                    {
                        h.insert(name.as_str(), sig);
                    }
                }
            }
            WebhookMode::Standard => {
                // Metadata first, so the signed headers below win even over a
                // name publish validation did not know about.
                // Metadata that would name a header the request or its
                // signature needs (`host`, `content-type`, `webhook-id`) is
                // not sent as a header: ours always win.
                for (k, v) in meta {
                    let name = format!("{prefix}{k}");
                    if k != "event-id" && k != "timestamp" && !w.is_protected_header(&name) {
                        h.insert(name, v);
                    }
                }
                for (k, v) in &event.metadata {
                    if !w.is_protected_header(k) {
                        h.insert(k.as_str(), v.as_str());
                    }
                }
                let secs = now_ms.div_euclid(1000);
                h.insert(format!("{prefix}id"), event.id.as_str());
                h.insert(format!("{prefix}timestamp"), secs.to_string());
                let keys: Vec<Vec<u8>> = secrets
                    .iter()
                    .map(|s| {
                        signing::standard_secret_key(s)
                            .ok_or_else(|| "webhook secret is not a valid whsec_ base64 secret".to_string())
                    })
                    .collect::<Result<_, _>>()?;
                if !keys.is_empty() {
                    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
                    h.insert(
                        format!("{prefix}signature"),
                        signing::standard_header_value(&refs, &event.id, secs, &event.data),
                    );
                }
            }
        }
        h.insert("user-agent", cfg.http_user_agent.as_str());
        Ok(h)
    }
}

/// The wait a 429 (Too Many Requests) or 503 (Service Unavailable) asks for;
/// other statuses' `Retry-After` is not a request to slow down.
pub(super) fn retry_after(r: &crate::http_client::Response) -> Option<std::time::Duration> {
    matches!(r.status, 429 | 503).then_some(r.retry_after).flatten()
}

/// Only a 2xx delivers. A redirect is a failed attempt, retried on the
/// schedule: the request was not handled where it was sent, and following
/// it would need a new SSRF check per hop and, for 301/302/303, would turn
/// the POST into a GET that drops the event (what Go's client, and so
/// Outpost, does while calling it a success).
pub(super) fn outcome(status: u16) -> AttemptStatus {
    if (200..300).contains(&status) {
        AttemptStatus::Success
    } else {
        AttemptStatus::Failed
    }
}

/// Where a 3xx says the endpoint moved, for the attempt's response data.
pub(super) fn redirect_location(r: &crate::http_client::Response) -> Option<&str> {
    (300..400)
        .contains(&r.status)
        .then_some(r.location.as_deref())
        .flatten()
}

/// Maps a transport error to an attempt result.
fn failed(e: SendError) -> PublishResult {
    if e.code == crate::http_client::PROXY_UNAVAILABLE {
        return PublishResult::not_attempted(e.message);
    }
    PublishResult {
        status: AttemptStatus::Failed,
        code: e.code.to_string(),
        response_data: Some(json!({ "error": e.message })),
        retryable: true,
        retry_after: None,
        not_attempted: false,
    }
}

impl Publisher for WebhookPublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let headers = match self.headers(event, now_ms) {
                Ok(h) => h,
                Err(e) => {
                    return PublishResult {
                        status: AttemptStatus::Failed,
                        code: "ERR".into(),
                        response_data: Some(json!({ "error": e })),
                        retryable: true,
                        retry_after: None,
                        not_attempted: false,
                    }
                }
            };
            // The body is the event's shared text, borrowed: no copy per delivery.
            match clients
                .webhook
                .post(&self.target, &headers, event.data.as_bytes())
                .await
            {
                Ok(r) => {
                    let max = self.ctx.config.webhook.max_response_body_bytes;
                    let body = if r.truncated {
                        format!("Response body exceeded {max} bytes and was not stored")
                    } else {
                        String::from_utf8_lossy(&r.body).into_owned()
                    };
                    let mut data = json!({ "status": r.status, "body": body });
                    if let Some(l) = redirect_location(&r) {
                        data["location"] = json!(l);
                    }
                    PublishResult {
                        status: outcome(r.status),
                        code: r.status.to_string(),
                        response_data: Some(data),
                        retryable: true,
                        retry_after: retry_after(&r),
                        not_attempted: false,
                    }
                }
                Err(e) => failed(e),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Sources;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Arc<Config> {
        let mut m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        m.insert("AES_ENCRYPTION_SECRET".into(), "x".into());
        Arc::new(Config::from_sources(&Sources::from_map(m)).unwrap())
    }

    fn dest(url: &str) -> Destination {
        let mut config = StringMap::new();
        config.insert("url".into(), url.into());
        Destination {
            id: "d".into(),
            tenant_id: "t".into(),
            kind: "webhook".into(),
            topics: vec!["*".into()],
            filter: None,
            config,
            credentials: StringMap::new(),
            delivery_metadata: None,
            metadata: None,
            created_at: 0,
            updated_at: 0,
            disabled_at: None,
        }
    }

    fn event() -> Event {
        let mut metadata = StringMap::new();
        metadata.insert("source".into(), "crm".into());
        Event {
            id: "evt_1".into(),
            tenant_id: "t".into(),
            destination_id: None,
            topic: "user.created".into(),
            eligible_for_retry: true,
            time: 0,
            time_ns: 0,
            metadata,
            data: Arc::from("{\"a\":1}"),
            matched_destination_ids: vec![],
        }
    }

    /// A stored destination that cannot be delivered to says which field
    /// is wrong, in words the attempt log shows.
    #[test]
    fn a_publisher_that_cannot_be_built_names_the_field() {
        let c = cfg(&[]);
        let ctx = PublishContext::new(c.clone()).unwrap();
        let w = Webhook::new(c.clone());
        let build = |d: &Destination| w.publisher(d, &ctx).err();
        let mut d = dest("http://example.com/hook");
        assert_eq!(build(&d), None);
        d.config.remove("url");
        assert_eq!(build(&d), Some(PublisherError::Missing("config.url")));
        assert_eq!(build(&d).unwrap().to_string(), "config.url is required");
        let d = dest("ftp://example.com/");
        let e = build(&d).unwrap();
        assert!(
            matches!(
                &e,
                PublisherError::Refused {
                    field: "config.url",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("config.url: "), "{e}");
        let mut d = dest("http://example.com/hook");
        d.config.insert("custom_headers".into(), "not json".into());
        assert!(
            matches!(
                build(&d),
                Some(PublisherError::Refused {
                    field: "config.custom_headers",
                    ..
                })
            ),
            "{:?}",
            build(&d)
        );
    }

    fn publisher(c: &Arc<Config>, d: &Destination) -> WebhookPublisher {
        let ctx = PublishContext::new(c.clone()).unwrap();
        let w = Webhook::new(c.clone());
        let url = d.config["url"].clone();
        let _ = w.publisher(d, &ctx).unwrap();
        let custom = match d.config.get("custom_headers") {
            Some(h) => parse_custom_headers(h).unwrap(),
            None => vec![],
        };
        WebhookPublisher::new(
            Target::parse(&url).unwrap(),
            custom,
            d.credentials.get("secret").cloned(),
            None,
            d.delivery_metadata.clone(),
            ctx,
        )
    }

    #[test]
    fn validation_messages() {
        let w = Webhook::new(cfg(&[]));
        let mut d = dest("");
        assert_eq!(w.validate(&d).unwrap_err(), vec!["config.url is required"]);
        d.config.insert("url".into(), "ftp://x".into());
        assert_eq!(
            w.validate(&d).unwrap_err(),
            vec!["config.url failed pattern validation"]
        );
        d.config.insert("url".into(), "https://x.example/h".into());
        d.config.insert(
            "custom_headers".into(),
            "{\"Host\":\"a\",\"bad name\":\"b\",\"X-Ok\":\"\"}".into(),
        );
        let e = w.validate(&d).unwrap_err();
        assert!(
            e.contains(&"config.custom_headers.Host is forbidden".to_string()),
            "{e:?}"
        );
        assert!(
            e.contains(&"config.custom_headers.bad name failed pattern validation".to_string()),
            "{e:?}"
        );
        assert!(
            e.contains(&"config.custom_headers.X-Ok is required".to_string()),
            "{e:?}"
        );
    }

    #[test]
    fn secrets_generated_forbidden_and_rotated() {
        let w = Webhook::new(cfg(&[]));
        let mut d = dest("https://x.example");
        w.preprocess(&mut d, None, &RawInput::default(), Actor::Tenant, 0)
            .unwrap();
        let first = d.credentials["secret"].clone();
        assert!(first.starts_with("whsec_"));
        let mut t = dest("https://x.example");
        t.credentials.insert("secret".into(), "mine".into());
        let raw = RawInput {
            credentials: Some(serde_json::from_str("{\"secret\":\"mine\"}").unwrap()),
        };
        assert_eq!(
            w.preprocess(&mut t, None, &raw, Actor::Tenant, 0).unwrap_err(),
            vec!["credentials.secret is forbidden"]
        );
        let prev = d.clone();
        let mut next = d.clone();
        next.credentials.insert("rotate_secret".into(), "TRUE".into());
        w.preprocess(&mut next, Some(&prev), &RawInput::default(), Actor::Tenant, 1_000)
            .unwrap();
        assert_eq!(next.credentials["previous_secret"], first);
        assert_ne!(next.credentials["secret"], first);
        assert_eq!(next.credentials["previous_secret_invalid_at"], "1970-01-02T00:00:01Z");
        assert!(!next.credentials.contains_key("rotate_secret"));
        // The previous secret is hidden once it has expired.
        assert!(w.display_credentials(&next, 0).contains_key("previous_secret"));
        assert!(!w.display_credentials(&next, 90_000_000).contains_key("previous_secret"));
    }

    #[test]
    fn default_mode_headers() {
        let c = cfg(&[]);
        let mut d = dest("https://x.example");
        d.credentials.insert("secret".into(), "whsec_k".into());
        let mut dm = StringMap::new();
        dm.insert("app".into(), "a1".into());
        dm.insert("topic".into(), "overridden-by-event?".into());
        d.delivery_metadata = Some(dm);
        let p = publisher(&c, &d);
        let ev = event();
        let h = p.headers(&ev, 1_717_230_216_000).unwrap();
        assert_eq!(h.get("x-outpost-event-id").unwrap(), "evt_1");
        assert_eq!(h.get("x-outpost-topic").unwrap(), "overridden-by-event?");
        assert_eq!(h.get("x-outpost-timestamp").unwrap(), "2024-06-01T08:23:36Z");
        assert_eq!(h.get("x-outpost-source").unwrap(), "crm");
        assert_eq!(h.get("x-outpost-app").unwrap(), "a1");
        assert_eq!(h.get("content-type").unwrap(), "application/json");
        let want = hex::encode(signing::hmac_sha256(b"whsec_k", &[b"{\"a\":1}"]));
        assert_eq!(h.get("x-outpost-signature").unwrap(), format!("v0={want}").as_str());
    }

    #[test]
    fn header_name_settings() {
        let c = cfg(&[
            ("DESTINATIONS_WEBHOOK_TOPIC_HEADER_NAME", ""),
            ("DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_NAME", "X-Sig"),
            ("DESTINATIONS_WEBHOOK_HEADER_PREFIX", "x-acme-"),
        ]);
        let mut d = dest("https://x.example");
        d.credentials.insert("secret".into(), "s".into());
        let (p, ev) = (publisher(&c, &d), event());
        let h = p.headers(&ev, 0).unwrap();
        assert!(h.get("x-acme-topic").is_none());
        assert!(h.get("x-sig").is_some());
        assert_eq!(h.get("x-acme-event-id").unwrap(), "evt_1");
    }

    #[test]
    fn standard_mode_headers() {
        let c = cfg(&[("DESTINATIONS_WEBHOOK_MODE", "standard")]);
        let mut d = dest("https://x.example");
        let key = [9u8; 32];
        use base64::Engine as _;
        d.credentials.insert(
            "secret".into(),
            format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(key)),
        );
        let (p, ev) = (publisher(&c, &d), event());
        let h = p.headers(&ev, 1_700_000_000_000).unwrap();
        assert_eq!(h.get("webhook-id").unwrap(), "evt_1");
        assert_eq!(h.get("webhook-timestamp").unwrap(), "1700000000");
        assert_eq!(h.get("webhook-topic").unwrap(), "user.created");
        assert_eq!(h.get("source").unwrap(), "crm");
        assert_eq!(
            h.get("webhook-signature").unwrap(),
            signing::standard_header_value(&[&key], "evt_1", 1_700_000_000, "{\"a\":1}")
        );
        // Metadata that slipped past publish validation (an event stored
        // before it existed) still cannot replace the signed headers.
        let mut ev = event();
        for k in [
            "webhook-signature",
            "webhook-id",
            "webhook-timestamp",
            "signature",
            "id",
        ] {
            ev.metadata.insert(k.into(), "forged".into());
        }
        let h = p.headers(&ev, 1_700_000_000_000).unwrap();
        let sent: Vec<(&str, &str)> = h.effective().collect();
        for name in ["webhook-signature", "webhook-id", "webhook-timestamp"] {
            let values: Vec<&str> = sent.iter().filter(|(n, _)| *n == name).map(|(_, v)| *v).collect();
            assert_eq!(values.len(), 1, "{name}: {sent:?}");
            assert_ne!(values[0], "forged", "{name}");
        }
    }

    #[test]
    fn protected_header_names() {
        let std = cfg(&[("DESTINATIONS_WEBHOOK_MODE", "standard")]);
        let def = cfg(&[("DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_NAME", "X-Sig")]);
        for n in [
            "Content-Type",
            "host",
            "transfer-encoding",
            "webhook-signature",
            "webhook-id",
            "x-outpost-signature",
        ] {
            assert!(std.webhook.is_protected_header(n), "{n}");
            assert!(def.webhook.is_protected_header(n), "{n}");
        }
        assert!(def.webhook.is_protected_header("x-sig"));
        assert!(!std.webhook.is_protected_header("x-sig"));
        assert!(!std.webhook.is_protected_header("webhook-topic"));
        assert!(!def.webhook.is_protected_header("x-outpost-topic"));
        let e = parse_custom_headers(r#"{"Webhook-Signature":"v1,x","Transfer-Encoding":"chunked"}"#).unwrap_err();
        assert!(
            e.contains(&"config.custom_headers.Webhook-Signature is forbidden".to_string()),
            "{e:?}"
        );
        assert!(
            e.contains(&"config.custom_headers.Transfer-Encoding is forbidden".to_string()),
            "{e:?}"
        );
    }
}
