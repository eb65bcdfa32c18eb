//! The tenant portal: a small page, built into the binary, where a tenant
//! manages its destinations and reads its delivery log with the token that
//! `GET /api/v1/tenants/{id}/portal` hands out. It talks to `/api/v1` like
//! any client, so it can see no more than its token allows.
//!
//! The page is plain HTML, CSS and one ES module (no framework and no build
//! step: `api/portal/` is what the browser gets). The assets are compressed
//! once at start; their URLs carry a content hash so browsers may cache them
//! for good, while the page itself is never cached (its settings can change
//! with a restart).

use std::io::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::AppState;
use outrider_engine::config::{Config, HeaderName, SignatureAlgorithm, SignatureEncoding, WebhookMode};

const INDEX: &str = include_str!("../portal/index.html");
const APP_JS: &[u8] = include_bytes!("../portal/app.js");
const APP_CSS: &[u8] = include_bytes!("../portal/app.css");

/// No inline script or style, no other origin but for images (operators'
/// logos), and no framing: the pages hold buttons that delete things.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: http: https:; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One file as served: its bytes, compressed bytes, type and ETag.
struct Asset {
    raw: Vec<u8>,
    gzip: Vec<u8>,
    content_type: &'static str,
    etag: String,
}

impl Asset {
    fn new(raw: Vec<u8>, content_type: &'static str) -> Self {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        // Writing to a Vec cannot fail; an empty `gzip` only means the
        // uncompressed bytes are sent.
        let gzip = enc
            .write_all(&raw)
            .ok()
            .and_then(|_| enc.finish().ok())
            .unwrap_or_default();
        let etag = format!("\"{:016x}\"", fnv1a(&raw));
        Self {
            raw,
            gzip,
            content_type,
            etag,
        }
    }

    fn respond(&self, req: &HeaderMap, cache: &'static str) -> Response {
        if req
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == self.etag))
        {
            return (StatusCode::NOT_MODIFIED, [(header::ETAG, self.etag.clone())]).into_response();
        }
        let gzip_ok = !self.gzip.is_empty()
            && req
                .get(header::ACCEPT_ENCODING)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.split(',').any(|e| e.trim().split(';').next() == Some("gzip")));
        let body = if gzip_ok { self.gzip.clone() } else { self.raw.clone() };
        let mut resp = (StatusCode::OK, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if let Ok(v) = HeaderValue::from_str(&self.etag) {
            h.insert(header::ETAG, v);
        }
        if gzip_ok {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        resp
    }
}

/// The portal's files, rendered once from the configuration.
pub struct Portal {
    index: Asset,
    app_js: Asset,
    app_css: Asset,
    config_js: Asset,
}

/// The hash that versions an asset's URL.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Portal {
    pub fn new(config: &Config) -> Arc<Self> {
        let settings = settings_json(config);
        // `<` escaped so no value can close the data block early.
        let data = settings.to_string().replace('<', "\\u003c");
        let theme = config.portal.force_theme.map(|t| t.as_str()).unwrap_or("");
        let title = config
            .portal
            .organization_name
            .as_deref()
            .map(|n| format!("{} · Event destinations", escape_html(n)))
            .unwrap_or_else(|| "Event destinations".into());
        let favicon = config
            .portal
            .favicon_url
            .as_deref()
            .map(escape_html)
            .unwrap_or_else(|| "data:,".into());
        let index = INDEX
            .replace("{{THEME}}", theme)
            .replace("{{TITLE}}", &title)
            .replace("{{FAVICON}}", &favicon)
            .replace("{{CSS_V}}", &format!("{:x}", fnv1a(APP_CSS)))
            .replace("{{JS_V}}", &format!("{:x}", fnv1a(APP_JS)))
            .replace("{{SETTINGS}}", &data);
        let config_js = format!("window.PORTAL_CONFIGS = {settings};\n");
        Arc::new(Self {
            index: Asset::new(index.into_bytes(), "text/html; charset=utf-8"),
            app_js: Asset::new(APP_JS.to_vec(), "text/javascript; charset=utf-8"),
            app_css: Asset::new(APP_CSS.to_vec(), "text/css; charset=utf-8"),
            config_js: Asset::new(config_js.into_bytes(), "text/javascript; charset=utf-8"),
        })
    }
}

/// What the page needs to know about this deployment. Nothing secret: the
/// page is public, only the API calls it makes need the token.
pub fn settings_json(c: &Config) -> Value {
    let p = &c.portal;
    let w = &c.webhook;
    let prefixed = |name: &HeaderName, key: &str| match name {
        HeaderName::Default => Some(format!("{}{key}", w.header_prefix)),
        HeaderName::Named(n) => Some(n.clone()),
        HeaderName::Disabled => None,
    };
    let signature = match w.mode {
        WebhookMode::Standard => json!({
            "mode": "standard",
            "header": format!("{}signature", w.header_prefix),
            "id_header": format!("{}id", w.header_prefix),
            "timestamp_header": format!("{}timestamp", w.header_prefix),
        }),
        WebhookMode::Default => json!({
            "mode": "default",
            "header": prefixed(&w.signature_header, "signature"),
            "timestamp_header": prefixed(&w.timestamp_header, "timestamp"),
            "event_id_header": prefixed(&w.event_id_header, "event-id"),
            "topic_header": prefixed(&w.topic_header, "topic"),
            "content_template": w.signature_content_template,
            "header_template": w.signature_header_template,
            "algorithm": match w.signature_algorithm {
                SignatureAlgorithm::HmacSha256 => "sha256",
                SignatureAlgorithm::HmacSha1 => "sha1",
            },
            "encoding": match w.signature_encoding {
                SignatureEncoding::Hex => "hex",
                SignatureEncoding::Base64 => "base64",
            },
        }),
    };
    json!({
        "ORGANIZATION_NAME": p.organization_name,
        "BRAND_COLOR": p.brand_color,
        "LOGO": p.logo,
        "LOGO_DARK": p.logo_dark,
        "FAVICON_URL": p.favicon_url,
        "FORCE_THEME": p.force_theme.map(|t| t.as_str()),
        "DISABLE_OUTPOST_BRANDING": p.disable_branding,
        "REFERER_URL": p.referer_url,
        "REFRESH_URL": p.refresh_url,
        "ENABLE_DESTINATION_FILTER": p.enable_destination_filter,
        "ENABLE_WEBHOOK_CUSTOM_HEADERS": p.enable_webhook_custom_headers,
        "TOPICS": c.topics,
        "TOPICS_ALLOW_WILDCARDS": c.topics_allow_wildcards,
        "SIGNATURE": signature,
    })
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn with_page_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(CSP) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    // The first request carries the token in its query: no page it links
    // to may learn it from a Referer header.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

pub async fn index(State(s): State<AppState>, headers: HeaderMap) -> Response {
    with_page_headers(s.portal.index.respond(&headers, "no-cache"))
}

pub async fn app_js(State(s): State<AppState>, headers: HeaderMap) -> Response {
    s.portal.app_js.respond(&headers, "public, max-age=31536000, immutable")
}

pub async fn app_css(State(s): State<AppState>, headers: HeaderMap) -> Response {
    s.portal
        .app_css
        .respond(&headers, "public, max-age=31536000, immutable")
}

/// Outpost's `/inject-portal-config.js`, for a page built against it.
pub async fn config_js(State(s): State<AppState>, headers: HeaderMap) -> Response {
    s.portal.config_js.respond(&headers, "no-store")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let m = [
            ("API_KEY", "k"),
            ("API_JWT_SECRET", "j"),
            ("AES_ENCRYPTION_SECRET", "a"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        Config::from_sources(&outrider_engine::config::Sources::from_map(m)).unwrap()
    }

    #[test]
    fn settings_cannot_close_the_data_block() {
        let mut c = config();
        c.portal.organization_name = Some("</script><script>alert(1)</script>".into());
        let p = Portal::new(&c);
        let html = String::from_utf8(p.index.raw.clone()).unwrap();
        assert_eq!(html.matches("</script>").count(), html.matches("<script").count());
        assert!(html.contains("&lt;/script&gt;"), "title escaped");
    }

    #[test]
    fn assets_are_compressed_and_versioned() {
        let c = config();
        let p = Portal::new(&c);
        assert!(p.app_js.gzip.len() < p.app_js.raw.len());
        let html = String::from_utf8(p.index.raw.clone()).unwrap();
        assert!(html.contains(&format!("/portal/app.js?v={:x}", fnv1a(APP_JS))));
        for key in ["THEME", "TITLE", "FAVICON", "CSS_V", "JS_V", "SETTINGS"] {
            assert!(!html.contains(&format!("{{{{{key}}}}}")), "{key} filled");
        }
    }
}
