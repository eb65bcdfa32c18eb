//! The `hookdeck` destination type: events go to a Hookdeck managed source.
//! The tenant pastes the source token (base64 of `<source_id>:<signing>`);
//! on create, and whenever the token changes, it is verified with Hookdeck's
//! API and the source's id and name are stored in the config. Each delivery
//! is a `POST <publish URL>/<source_id>` of the event data, signed with
//! HMAC-SHA256 keyed by the whole token (`X-Hookdeck-Signature: v0=<base64>`),
//! metadata as `X-Outpost-<key>` headers.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::fields::{self, Field, Schema};
use super::*;
use crate::http_client::{Headers, Target};

const CREDENTIALS: &[Field] = &[Field::text(
    "token",
    "Source token",
    "The managed source's token, from the Hookdeck dashboard.",
)
.required()
.sensitive()];

const SCHEMA: Schema = Schema {
    kind: "hookdeck",
    label: "Hookdeck",
    description: "Send events to a Hookdeck Event Gateway source, for Hookdeck to route, transform and retry.",
    icon: "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 24 24\"><rect width=\"24\" height=\"24\" rx=\"5\" fill=\"#1d1d1f\"/><path d=\"M8 6v12M16 6v12M8 12h8\" stroke=\"#fff\" stroke-width=\"2\"/></svg>",
    instructions: "In the Hookdeck dashboard, create a managed source and copy its token; paste it here. The token is checked with Hookdeck before the destination is saved. Then create connections in Hookdeck from that source to your endpoints.",
    config: &[],
    credentials: CREDENTIALS,
};

pub struct Hookdeck {
    config: Arc<Config>,
    /// For the token check (control plane only; deliveries use the shard's client).
    http: reqwest::Client,
}

impl Hookdeck {
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            config,
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }
}

/// `(source_id, token)` of a well-formed token.
fn source_id(token: &str) -> Option<String> {
    let raw = base64::engine::general_purpose::STANDARD.decode(token.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (id, signing) = text.split_once(':')?;
    (!id.is_empty() && !signing.is_empty() && fields::no_whitespace(id)).then(|| id.to_string())
}

/// The source's name in a verification answer (`{"name"}` or `{"source":{"name"}}`).
fn source_name(body: &Value) -> Option<String> {
    body.get("source")
        .and_then(|s| s.get("name"))
        .or_else(|| body.get("name"))
        .and_then(Value::as_str)
        .map(String::from)
}

impl DestinationType for Hookdeck {
    fn schema(&self) -> Option<&'static Schema> {
        Some(&SCHEMA)
    }

    fn validate(&self, d: &Destination) -> Result<(), Violations> {
        let mut errs = SCHEMA.check(&d.config, &d.credentials);
        if let Some(t) = d.credentials.get("token").filter(|t| !t.is_empty()) {
            if source_id(t).is_none() {
                errs.push("credentials.token failed invalid_token_format validation".into());
            }
        }
        fields::result(errs)
    }

    fn verify<'a>(
        &'a self,
        d: &'a mut Destination,
        previous: Option<&'a Destination>,
    ) -> BoxFuture<'a, Result<(), Violations>> {
        Box::pin(async move {
            let token = d.credentials.get("token").cloned().unwrap_or_default();
            let unchanged = previous.is_some_and(|p| p.credentials.get("token") == Some(&token));
            if unchanged {
                return Ok(());
            }
            let id = source_id(&token)
                .ok_or_else(|| vec!["credentials.token failed invalid_token_format validation".to_string()])?;
            let failed = || vec!["credentials.token failed token_verification_failed validation".to_string()];
            let url = format!("{}/sources/{id}/managed/verify", self.config.hookdeck_api_url);
            let resp = self
                .http
                .get(&url)
                .header("X-Hookdeck-Source-Token", &token)
                .send()
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "hookdeck token verification did not get an answer");
                    failed()
                })?;
            if resp.status() != reqwest::StatusCode::OK {
                return Err(failed());
            }
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            d.config.insert("source_id".into(), id.clone());
            d.config.insert("source_name".into(), source_name(&body).unwrap_or(id));
            Ok(())
        })
    }

    fn target(&self, d: &Destination) -> (String, Option<String>) {
        let id = d.config.get("source_id").cloned().unwrap_or_default();
        let name = d.config.get("source_name").cloned().unwrap_or_else(|| id.clone());
        (name, Some(format!("https://dashboard.hookdeck.com/sources/{id}")))
    }

    fn publisher(&self, d: &Destination, ctx: &PublishContext) -> Result<Box<dyn Publisher>, PublisherError> {
        let token = d
            .credentials
            .get("token")
            .cloned()
            .ok_or(PublisherError::Missing("credentials.token"))?;
        let id = source_id(&token).ok_or(PublisherError::Unusable {
            field: "credentials.token",
            why: "has an invalid format",
        })?;
        let mut target = Target::parse(&format!("{}/{id}", ctx.config.hookdeck_publish_url)).map_err(|reason| {
            PublisherError::Refused {
                field: "OUTRIDER_HOOKDECK_PUBLISH_URL",
                reason,
            }
        })?;
        target.keep_headers = true;
        target.kind = "hookdeck";
        let mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).map_err(|e| PublisherError::Refused {
            field: "credentials.token",
            reason: e.to_string(),
        })?;
        Ok(Box::new(HookdeckPublisher {
            target,
            mac,
            delivery_metadata: d.delivery_metadata.clone(),
            ctx: ctx.clone(),
        }))
    }
}

pub struct HookdeckPublisher {
    target: Target,
    /// Keyed once; cloned per delivery.
    mac: Hmac<Sha256>,
    delivery_metadata: Option<StringMap>,
    ctx: PublishContext,
}

impl Publisher for HookdeckPublisher {
    fn publish<'a>(
        &'a self,
        clients: &'a ShardClients,
        event: &'a Event,
        now_ms: i64,
    ) -> LocalBoxFuture<'a, PublishResult> {
        Box::pin(async move {
            let cfg = &self.ctx.config;
            let meta = merged_metadata(
                self.delivery_metadata.as_ref(),
                event,
                now_ms,
                cfg.webhook.include_millisecond_timestamp,
            );
            let mut mac = self.mac.clone();
            mac.update(event.data.as_bytes());
            let signature = format!(
                "v0={}",
                base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
            );
            let mut h = Headers::with_capacity(meta.len() + 3);
            h.insert("content-type", "application/json");
            for (k, v) in meta.iter() {
                if http::HeaderValue::from_str(v).is_ok() && crate::config::valid_header_token(k) {
                    h.insert(format!("X-Outpost-{k}"), v.as_str());
                }
            }
            h.insert("X-Hookdeck-Signature", signature);
            h.insert("user-agent", cfg.http_user_agent.as_str());
            match clients.http.post(&self.target, &h, event.data.as_bytes()).await {
                Ok(r) => {
                    let body = String::from_utf8_lossy(&r.body).into_owned();
                    let mut data = json!({ "status_code": r.status, "body": body, "headers": go_headers(&r.headers) });
                    if let Some(l) = super::webhook::redirect_location(&r) {
                        data["location"] = json!(l);
                    }
                    PublishResult {
                        status: super::webhook::outcome(r.status),
                        code: r.status.to_string(),
                        response_data: Some(data),
                        retryable: true,
                        retry_after: super::webhook::retry_after(&r),
                        not_attempted: false,
                    }
                }
                Err(e) => PublishResult::failed(e.code, e.message),
            }
        })
    }
}

/// Response headers as Outpost records them: Go's canonical names
/// (`content-type` → `Content-Type`), a single value as a string and
/// repeated ones as a list.
fn go_headers(headers: &[(String, String)]) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        match map.entry(canonical_header(name)) {
            serde_json::map::Entry::Vacant(e) => {
                e.insert(json!(value));
            }
            serde_json::map::Entry::Occupied(mut e) => {
                let held = e.get_mut();
                if let serde_json::Value::Array(values) = held {
                    values.push(json!(value));
                } else {
                    *held = json!([held.take(), value]);
                }
            }
        }
    }
    serde_json::Value::Object(map)
}

/// Go's `CanonicalMIMEHeaderKey`: each dash-separated word capitalised; a
/// name with a character outside a token is left as it is.
fn canonical_header(name: &str) -> String {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(token) {
        return name.to_string();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_headers_are_recorded_as_outpost_records_them() {
        let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(
            go_headers(&h(&[
                ("content-type", "application/json"),
                ("x-request-id", "r1"),
                ("Set-Cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("set-COOKIE", "c=3"),
                ("bad name", "v"),
            ])),
            json!({
                "Content-Type": "application/json",
                "X-Request-Id": "r1",
                "Set-Cookie": ["a=1", "b=2", "c=3"],
                "bad name": "v"
            })
        );
    }

    #[test]
    fn tokens() {
        let good = base64::engine::general_purpose::STANDARD.encode("src_123:signing");
        assert_eq!(source_id(&good).as_deref(), Some("src_123"));
        assert_eq!(source_id("not base64!"), None);
        let no_colon = base64::engine::general_purpose::STANDARD.encode("src_123");
        assert_eq!(source_id(&no_colon), None);
        let d = test_destination("hookdeck", &[], &[("token", "nope")]);
        let mut m = std::collections::HashMap::new();
        m.insert("AES_ENCRYPTION_SECRET".to_string(), "x".to_string());
        let config = Config::from_sources(&crate::config::Sources::from_map(m)).unwrap();
        let h = Hookdeck::new(Arc::new(config));
        assert_eq!(
            h.validate(&d).unwrap_err(),
            vec!["credentials.token failed invalid_token_format validation".to_string()]
        );
        assert_eq!(source_name(&json!({"source": {"name": "n"}})).as_deref(), Some("n"));
        assert_eq!(source_name(&json!({"name": "m"})).as_deref(), Some("m"));
    }
}
