//! Webhook signatures: Outpost's default mode (`v0=` HMAC of the body, one
//! signature per valid secret) and Standard Webhooks (`v1,<base64>` over
//! `id.timestamp.body`, key = base64-decoded `whsec_` secret).
//!
//! Outpost configures the signed content and header value with Go templates.
//! We accept the placeholders those settings document and refuse anything else
//! at start-up, naming the key.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Body,
    EventId,
    Topic,
    TimestampUnix,
    Timestamp,
    Signatures(String),
    RandomHex,
    RandomBase64,
    RandomAlphanumeric,
}

/// A parsed template: literal text and the placeholders Outpost documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Part>);

impl Template {
    pub fn parse(src: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| format!("unclosed {{{{ in {src:?}"))?;
            let inner = after[..end].trim();
            parts.push(parse_placeholder(inner)?);
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template(parts))
    }

    fn uses(&self, f: impl Fn(&Part) -> bool) -> bool {
        self.0.iter().any(f)
    }

    /// True when the template is exactly `{{.Body}}` (the fast path: sign the body bytes).
    pub fn is_body_only(&self) -> bool {
        self.0 == [Part::Body]
    }

    pub fn render(&self, ctx: &TemplateContext<'_>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Body => out.push_str(ctx.body),
                Part::EventId => out.push_str(ctx.event_id),
                Part::Topic => out.push_str(ctx.topic),
                Part::TimestampUnix => out.push_str(&(ctx.timestamp_ms.div_euclid(1000)).to_string()),
                Part::Timestamp => out.push_str(&crate::timefmt::format_secs(ctx.timestamp_ms)),
                Part::Signatures(sep) => out.push_str(&ctx.signatures.join(sep)),
                Part::RandomHex => out.push_str(&crate::ids::random_hex(32)),
                Part::RandomBase64 => out.push_str(&B64.encode(crate::ids::random_bytes(32))),
                Part::RandomAlphanumeric => out.push_str(&crate::ids::random_alphanumeric(32)),
            }
        }
        out
    }
}

fn parse_placeholder(inner: &str) -> Result<Part, String> {
    Ok(match inner {
        ".Body" => Part::Body,
        ".EventID" => Part::EventId,
        ".Topic" => Part::Topic,
        ".Timestamp.Unix" => Part::TimestampUnix,
        ".Timestamp" => Part::Timestamp,
        ".RandomHex" => Part::RandomHex,
        ".RandomBase64" => Part::RandomBase64,
        ".RandomAlphanumeric" => Part::RandomAlphanumeric,
        other => {
            // `.Signatures | join "<sep>"`
            let sig = other
                .strip_prefix(".Signatures")
                .map(str::trim)
                .and_then(|s| s.strip_prefix('|'))
                .map(str::trim)
                .and_then(|s| s.strip_prefix("join"))
                .map(str::trim)
                .and_then(|s| s.strip_prefix('"'))
                .and_then(|s| s.strip_suffix('"'));
            match sig {
                Some(sep) => Part::Signatures(sep.replace("\\\"", "\"")),
                None => return Err(format!("unsupported template expression {{{{{other}}}}}")),
            }
        }
    })
}

/// Values a template can refer to.
pub struct TemplateContext<'a> {
    pub body: &'a str,
    pub event_id: &'a str,
    pub topic: &'a str,
    pub timestamp_ms: i64,
    pub signatures: &'a [String],
}

/// Checks the three webhook templates once, at start-up.
pub fn validate_templates(w: &WebhookConfig) -> Result<(), (&'static str, String)> {
    let content = Template::parse(&w.signature_content_template)
        .map_err(|e| ("DESTINATIONS_WEBHOOK_SIGNATURE_CONTENT_TEMPLATE", e))?;
    if content.uses(|p| {
        matches!(
            p,
            Part::Signatures(_) | Part::RandomHex | Part::RandomBase64 | Part::RandomAlphanumeric
        )
    }) {
        return Err((
            "DESTINATIONS_WEBHOOK_SIGNATURE_CONTENT_TEMPLATE",
            "may use only .Body, .EventID, .Topic and .Timestamp".into(),
        ));
    }
    let header = Template::parse(&w.signature_header_template)
        .map_err(|e| ("DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_TEMPLATE", e))?;
    if header.uses(|p| {
        matches!(
            p,
            Part::Body | Part::RandomHex | Part::RandomBase64 | Part::RandomAlphanumeric
        )
    }) {
        return Err((
            "DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_TEMPLATE",
            "may use only .Signatures, .EventID, .Topic and .Timestamp".into(),
        ));
    }
    let secret =
        Template::parse(&w.signing_secret_template).map_err(|e| ("DESTINATIONS_WEBHOOK_SIGNING_SECRET_TEMPLATE", e))?;
    if secret.uses(|p| {
        !matches!(
            p,
            Part::Lit(_) | Part::RandomHex | Part::RandomBase64 | Part::RandomAlphanumeric
        )
    }) {
        return Err((
            "DESTINATIONS_WEBHOOK_SIGNING_SECRET_TEMPLATE",
            "may use only .RandomHex, .RandomBase64 and .RandomAlphanumeric".into(),
        ));
    }
    Ok(())
}

pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn hmac_sha1(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// Default-mode signer, built once per deployment.
#[derive(Debug, Clone)]
pub struct DefaultSigner {
    content: Template,
    header: Template,
    encoding: SignatureEncoding,
    algorithm: SignatureAlgorithm,
}

impl DefaultSigner {
    pub fn new(w: &WebhookConfig) -> Result<Self, String> {
        Ok(Self {
            content: Template::parse(&w.signature_content_template)?,
            header: Template::parse(&w.signature_header_template)?,
            encoding: w.signature_encoding,
            algorithm: w.signature_algorithm,
        })
    }

    /// The signature header value, or `None` when there is no secret.
    /// Secrets are used as their UTF-8 bytes, `whsec_` prefix included.
    pub fn header_value(
        &self,
        secrets: &[&str],
        body: &str,
        event_id: &str,
        topic: &str,
        timestamp_ms: i64,
    ) -> Option<String> {
        if secrets.is_empty() {
            return None;
        }
        let rendered;
        let content: &str = if self.content.is_body_only() {
            body
        } else {
            rendered = self.content.render(&TemplateContext {
                body,
                event_id,
                topic,
                timestamp_ms,
                signatures: &[],
            });
            &rendered
        };
        let sigs: Vec<String> = secrets
            .iter()
            .map(|s| {
                let raw = match self.algorithm {
                    SignatureAlgorithm::HmacSha256 => hmac_sha256(s.as_bytes(), &[content.as_bytes()]).to_vec(),
                    SignatureAlgorithm::HmacSha1 => hmac_sha1(s.as_bytes(), content.as_bytes()),
                };
                match self.encoding {
                    SignatureEncoding::Hex => hex::encode(raw),
                    SignatureEncoding::Base64 => B64.encode(raw),
                }
            })
            .collect();
        Some(self.header.render(&TemplateContext {
            body,
            event_id,
            topic,
            timestamp_ms,
            signatures: &sigs,
        }))
    }
}

/// Decodes a Standard Webhooks secret (`whsec_<base64>`) into its key bytes.
pub fn standard_secret_key(secret: &str) -> Option<Vec<u8>> {
    B64.decode(secret.strip_prefix("whsec_")?).ok()
}

/// Standard Webhooks signature header: `v1,<b64>` per key, space-separated.
pub fn standard_header_value(keys: &[&[u8]], event_id: &str, unix_secs: i64, body: &str) -> String {
    let ts = unix_secs.to_string();
    keys.iter()
        .map(|k| {
            let mac = hmac_sha256(k, &[event_id.as_bytes(), b".", ts.as_bytes(), b".", body.as_bytes()]);
            format!("v1,{}", B64.encode(mac))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A new secret for a webhook destination in the given mode.
pub fn generate_secret(w: &WebhookConfig) -> String {
    match w.mode {
        WebhookMode::Standard => format!("whsec_{}", B64.encode(crate::ids::random_bytes(32))),
        WebhookMode::Default => Template::parse(&w.signing_secret_template)
            .map(|t| {
                t.render(&TemplateContext {
                    body: "",
                    event_id: "",
                    topic: "",
                    timestamp_ms: 0,
                    signatures: &[],
                })
            })
            .unwrap_or_else(|_| format!("whsec_{}", crate::ids::random_hex(32))),
    }
}

// ---- settings (`DESTINATIONS_WEBHOOK_*`), read by `crate::config` ----

/// Webhook signing mode, chosen per deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookMode {
    /// Outpost's default: `x-outpost-*` headers, `v0=` HMAC of the body.
    Default,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64>`.
    Standard,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureAlgorithm {
    HmacSha256,
    HmacSha1,
}

/// A header whose name can be defaulted (`<prefix><key>`), pinned, or turned off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderName {
    Default,
    Named(String),
    Disabled,
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub mode: WebhookMode,
    /// Header prefix; `x-outpost-` in default mode, `webhook-` in standard mode.
    pub header_prefix: String,
    pub event_id_header: HeaderName,
    pub signature_header: HeaderName,
    pub timestamp_header: HeaderName,
    pub topic_header: HeaderName,
    pub signature_content_template: String,
    pub signature_header_template: String,
    pub signature_encoding: SignatureEncoding,
    pub signature_algorithm: SignatureAlgorithm,
    pub signing_secret_template: String,
    /// 0 means unlimited.
    pub max_response_body_bytes: usize,
    pub include_millisecond_timestamp: bool,
    /// `DESTINATIONS_WEBHOOK_PROXY_URL`: the egress proxy webhook deliveries
    /// are tunnelled through (its `Debug` hides the credentials).
    pub proxy: Option<crate::http_client::Proxy>,
}

/// Header names that neither configuration nor custom headers may set.
pub const RESERVED_HEADERS: &[&str] = &["content-type", "content-length", "host", "connection", "user-agent"];

/// Names that frame or route a request, or that a signature check trusts:
/// no custom header or event metadata may become one of these, in either
/// webhook mode (Outpost's list above, plus these).
pub const PROTECTED_HEADERS: &[&str] = &[
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "expect",
    "proxy-authorization",
    "proxy-connection",
    "x-outpost-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

impl WebhookConfig {
    /// Whether a header called `name` would replace one the request needs
    /// (framing, content type) or one this deployment's signature scheme
    /// sets (its signature, and in standard mode the signed id and
    /// timestamp), whatever the header names are configured to.
    pub fn is_protected_header(&self, name: &str) -> bool {
        self.protects(("", name))
    }

    /// `name` is the concatenation of its two parts.
    fn protects(&self, name: (&str, &str)) -> bool {
        if RESERVED_HEADERS
            .iter()
            .chain(PROTECTED_HEADERS)
            .any(|h| same_name((h, ""), name))
        {
            return true;
        }
        let prefixed = |key: &str| same_name((&self.header_prefix, key), name);
        match self.mode {
            WebhookMode::Standard => prefixed("id") || prefixed("timestamp") || prefixed("signature"),
            WebhookMode::Default => match &self.signature_header {
                HeaderName::Named(custom) => same_name((custom, ""), name),
                HeaderName::Default => prefixed("signature"),
                HeaderName::Disabled => false,
            },
        }
    }
}

/// Whether two header names, each given as two parts, are the same name
/// (ASCII case-insensitive).
fn same_name(a: (&str, &str), b: (&str, &str)) -> bool {
    a.0.len() + a.1.len() == b.0.len() + b.1.len()
        && a.0
            .bytes()
            .chain(a.1.bytes())
            .zip(b.0.bytes().chain(b.1.bytes()))
            .all(|(x, y)| x.eq_ignore_ascii_case(&y))
}

/// `^[a-zA-Z0-9][a-zA-Z0-9_-]*$`
pub fn valid_header_token(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Sources};
    use std::collections::HashMap;

    fn webhook(pairs: &[(&str, &str)]) -> WebhookConfig {
        let mut m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        m.insert("AES_ENCRYPTION_SECRET".into(), "x".into());
        Config::from_sources(&Sources::from_map(m)).unwrap().webhook
    }

    #[test]
    fn default_signature_is_hmac_of_body_with_full_secret() {
        let s = DefaultSigner::new(&webhook(&[])).unwrap();
        let v = s.header_value(&["whsec_abc", "old"], "{\"a\":1}", "e", "t", 0).unwrap();
        let a = hex::encode(hmac_sha256(b"whsec_abc", &[b"{\"a\":1}"]));
        let b = hex::encode(hmac_sha256(b"old", &[b"{\"a\":1}"]));
        assert_eq!(v, format!("v0={a},{b}"));
        assert!(s.header_value(&[], "{}", "e", "t", 0).is_none());
    }

    #[test]
    fn custom_templates() {
        let w = webhook(&[
            (
                "DESTINATIONS_WEBHOOK_SIGNATURE_CONTENT_TEMPLATE",
                "{{.Timestamp.Unix}}.{{.Body}}",
            ),
            (
                "DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_TEMPLATE",
                "t={{.Timestamp.Unix}},v0={{.Signatures | join \" \"}}",
            ),
            ("DESTINATIONS_WEBHOOK_SIGNATURE_ENCODING", "base64"),
        ]);
        let s = DefaultSigner::new(&w).unwrap();
        let v = s.header_value(&["k"], "{}", "e", "t", 5_000).unwrap();
        assert_eq!(v, format!("t=5,v0={}", B64.encode(hmac_sha256(b"k", &[b"5.{}"]))));
        let mut m = HashMap::new();
        m.insert("AES_ENCRYPTION_SECRET".to_string(), "x".to_string());
        m.insert(
            "DESTINATIONS_WEBHOOK_SIGNATURE_CONTENT_TEMPLATE".to_string(),
            "{{ .Nope }}".to_string(),
        );
        let e = Config::from_sources(&Sources::from_map(m)).unwrap_err().to_string();
        assert!(e.contains("DESTINATIONS_WEBHOOK_SIGNATURE_CONTENT_TEMPLATE"), "{e}");
    }

    #[test]
    fn generated_secrets() {
        let s = generate_secret(&webhook(&[]));
        assert!(s.starts_with("whsec_") && s.len() == 6 + 64, "{s}");
        let s = generate_secret(&webhook(&[("DESTINATIONS_WEBHOOK_MODE", "standard")]));
        assert_eq!(standard_secret_key(&s).unwrap().len(), 32);
    }

    #[test]
    fn standard_signature() {
        let key = [7u8; 32];
        let v = standard_header_value(&[&key], "msg_1", 1_700_000_000, "{}");
        let want = B64.encode(hmac_sha256(&key, &[b"msg_1.1700000000.{}"]));
        assert_eq!(v, format!("v1,{want}"));
    }
}
