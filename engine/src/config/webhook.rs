//! The webhook section (`DESTINATIONS_WEBHOOK_*`): headers, signature and
//! secret templates, the response-body cap and the proxy.

use super::sources::Sources;
use super::{invalid, ConfigError};
use crate::signing::{
    valid_header_token, HeaderName, SignatureAlgorithm, SignatureEncoding, WebhookConfig, WebhookMode, RESERVED_HEADERS,
};

pub(super) fn read(src: &Sources) -> Result<WebhookConfig, ConfigError> {
    let mode = match src.non_empty("DESTINATIONS_WEBHOOK_MODE").unwrap_or("default") {
        "default" => WebhookMode::Default,
        "standard" => WebhookMode::Standard,
        other => {
            return Err(invalid(
                "DESTINATIONS_WEBHOOK_MODE",
                format!("expected default or standard, got {other:?}"),
            ))
        }
    };
    let header_prefix = match src.get("DESTINATIONS_WEBHOOK_HEADER_PREFIX") {
        Some(v) => v.trim().to_string(),
        None if mode == WebhookMode::Standard => "webhook-".into(),
        None => "x-outpost-".into(),
    };
    let webhook = WebhookConfig {
        mode,
        header_prefix,
        event_id_header: header_name(
            src,
            "DESTINATIONS_WEBHOOK_EVENT_ID_HEADER_NAME",
            "DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_EVENT_ID_HEADER",
        )?,
        signature_header: header_name(
            src,
            "DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_NAME",
            "DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_SIGNATURE_HEADER",
        )?,
        timestamp_header: header_name(
            src,
            "DESTINATIONS_WEBHOOK_TIMESTAMP_HEADER_NAME",
            "DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_TIMESTAMP_HEADER",
        )?,
        topic_header: header_name(
            src,
            "DESTINATIONS_WEBHOOK_TOPIC_HEADER_NAME",
            "DESTINATIONS_WEBHOOK_DISABLE_DEFAULT_TOPIC_HEADER",
        )?,
        signature_content_template: src
            .non_empty("DESTINATIONS_WEBHOOK_SIGNATURE_CONTENT_TEMPLATE")
            .unwrap_or("{{.Body}}")
            .to_string(),
        signature_header_template: src
            .non_empty("DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_TEMPLATE")
            .unwrap_or("v0={{.Signatures | join \",\"}}")
            .to_string(),
        signature_encoding: match src
            .non_empty("DESTINATIONS_WEBHOOK_SIGNATURE_ENCODING")
            .unwrap_or("hex")
        {
            "hex" => SignatureEncoding::Hex,
            "base64" => SignatureEncoding::Base64,
            other => {
                return Err(invalid(
                    "DESTINATIONS_WEBHOOK_SIGNATURE_ENCODING",
                    format!("expected hex or base64, got {other:?}"),
                ))
            }
        },
        // Outpost falls back to sha256 for unknown names; we do the same.
        signature_algorithm: match src.non_empty("DESTINATIONS_WEBHOOK_SIGNATURE_ALGORITHM") {
            Some("hmac-sha1") => SignatureAlgorithm::HmacSha1,
            _ => SignatureAlgorithm::HmacSha256,
        },
        signing_secret_template: src
            .non_empty("DESTINATIONS_WEBHOOK_SIGNING_SECRET_TEMPLATE")
            .unwrap_or("whsec_{{.RandomHex}}")
            .to_string(),
        max_response_body_bytes: src.num("DESTINATIONS_WEBHOOK_MAX_RESPONSE_BODY_BYTES", 131_072)?,
        include_millisecond_timestamp: src.bool("DESTINATIONS_INCLUDE_MILLISECOND_TIMESTAMP", false)?,
        proxy: src
            .non_empty("DESTINATIONS_WEBHOOK_PROXY_URL")
            .map(crate::http_client::Proxy::parse)
            .transpose()
            .map_err(|e| invalid("DESTINATIONS_WEBHOOK_PROXY_URL", e))?,
    };
    crate::signing::validate_templates(&webhook).map_err(|(key, message)| invalid(key, message))?;
    check_header_collisions(&webhook)?;
    Ok(webhook)
}

fn header_name(src: &Sources, name_key: &'static str, disable_key: &'static str) -> Result<HeaderName, ConfigError> {
    if src.bool(disable_key, false)? {
        return Ok(HeaderName::Disabled);
    }
    match src.get(name_key) {
        None => Ok(HeaderName::Default),
        Some(v) if v.trim().is_empty() => Ok(HeaderName::Disabled),
        Some(v) => {
            let v = v.trim();
            if !valid_header_token(v) {
                return Err(invalid(name_key, format!("{v:?} is not a valid header name")));
            }
            if RESERVED_HEADERS.contains(&v.to_ascii_lowercase().as_str()) {
                return Err(invalid(name_key, format!("{v:?} is a reserved header")));
            }
            Ok(HeaderName::Named(v.to_string()))
        }
    }
}

fn check_header_collisions(w: &WebhookConfig) -> Result<(), ConfigError> {
    if w.mode != WebhookMode::Default {
        return Ok(());
    }
    let resolve = |h: &HeaderName, key: &str| match h {
        HeaderName::Default => Some(format!("{}{}", w.header_prefix, key).to_ascii_lowercase()),
        HeaderName::Named(n) => Some(n.to_ascii_lowercase()),
        HeaderName::Disabled => None,
    };
    let names = [
        resolve(&w.event_id_header, "event-id"),
        resolve(&w.signature_header, "signature"),
        resolve(&w.timestamp_header, "timestamp"),
        resolve(&w.topic_header, "topic"),
    ];
    let set: Vec<_> = names.iter().flatten().collect();
    for (i, a) in set.iter().enumerate() {
        if set[i + 1..].contains(a) {
            return Err(invalid(
                "DESTINATIONS_WEBHOOK_SIGNATURE_HEADER_NAME",
                format!("two webhook headers resolve to the same name {a:?}"),
            ));
        }
    }
    Ok(())
}
