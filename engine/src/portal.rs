//! The tenant portal's settings (Outpost's `PORTAL_*`; YAML `portal:`).
//! The portal itself (pages and assets) is served by the API crate; this
//! module owns what an operator can set and checks it at start, so a typo
//! in a colour or a URL stops the server instead of breaking the page.

use crate::settings::BadSetting;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Theme {
    Light,
    Dark,
}

impl Theme {
    pub fn as_str(self) -> &'static str {
        match self {
            Theme::Light => "light",
            Theme::Dark => "dark",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortalConfig {
    /// `PORTAL_PROXY_URL`: the public address the portal is reached at (a
    /// reverse proxy in front of the API); when set, `redirect_url` starts
    /// with it instead of the request's own host.
    pub proxy_url: Option<String>,
    /// `PORTAL_REFERER_URL`: where a visitor without a valid token goes
    /// when no refresh URL is set.
    pub referer_url: Option<String>,
    /// `PORTAL_REFRESH_URL`: the operator's page that issues a fresh token.
    pub refresh_url: Option<String>,
    pub favicon_url: Option<String>,
    /// `PORTAL_BRAND_COLOR`: a CSS hex colour.
    pub brand_color: Option<String>,
    pub logo: Option<String>,
    pub logo_dark: Option<String>,
    pub organization_name: Option<String>,
    pub force_theme: Option<Theme>,
    /// `PORTAL_DISABLE_OUTPOST_BRANDING`: hides the "Powered by Outrider" line.
    pub disable_branding: bool,
    pub enable_destination_filter: bool,
    pub enable_webhook_custom_headers: bool,
}

/// Longest organisation name shown in the header.
const MAX_NAME: usize = 200;
/// Longest URL accepted (a `data:` logo included).
const MAX_URL: usize = 64 * 1024;

impl PortalConfig {
    /// Reads the `PORTAL_*` keys through `get` (which answers trimmed,
    /// non-empty values only).
    pub fn resolve(get: impl Fn(&'static str) -> Option<String>) -> Result<Self, BadSetting> {
        let flag = |key: &'static str| -> Result<bool, BadSetting> {
            match get(key).map(|v| v.to_ascii_lowercase()) {
                None => Ok(false),
                Some(v) => match v.as_str() {
                    "true" | "1" | "yes" | "on" => Ok(true),
                    "false" | "0" | "no" | "off" => Ok(false),
                    _ => Err(BadSetting::new(key, format!("expected true or false, got {v:?}"))),
                },
            }
        };
        let page_url = |key: &'static str| -> Result<Option<String>, BadSetting> {
            get(key).map(|v| check_url(key, v, false)).transpose()
        };
        let image_url = |key: &'static str| -> Result<Option<String>, BadSetting> {
            get(key).map(|v| check_url(key, v, true)).transpose()
        };
        let proxy_url = match get("PORTAL_PROXY_URL") {
            None => None,
            Some(v) => {
                let v = check_url("PORTAL_PROXY_URL", v, false)?;
                if v.starts_with('/') {
                    return Err(BadSetting::new(
                        "PORTAL_PROXY_URL",
                        "must be an absolute http:// or https:// URL: it is handed to other hosts",
                    ));
                }
                if v.contains('#') {
                    return Err(BadSetting::new("PORTAL_PROXY_URL", "must not carry a #fragment"));
                }
                Some(v)
            }
        };
        let brand_color = match get("PORTAL_BRAND_COLOR") {
            None => None,
            Some(v) if is_hex_colour(&v) => Some(v),
            Some(v) => {
                return Err(BadSetting::new(
                    "PORTAL_BRAND_COLOR",
                    format!("{v:?} is not a hex colour such as #6122E7"),
                ))
            }
        };
        let force_theme = match get("PORTAL_FORCE_THEME").map(|v| v.to_ascii_lowercase()).as_deref() {
            None => None,
            Some("light") => Some(Theme::Light),
            Some("dark") => Some(Theme::Dark),
            Some(v) => {
                return Err(BadSetting::new(
                    "PORTAL_FORCE_THEME",
                    format!("{v:?} is not light or dark"),
                ))
            }
        };
        let organization_name = match get("PORTAL_ORGANIZATION_NAME") {
            Some(v) if v.chars().count() > MAX_NAME => {
                return Err(BadSetting::new(
                    "PORTAL_ORGANIZATION_NAME",
                    format!("is longer than {MAX_NAME} characters"),
                ))
            }
            other => other,
        };
        Ok(Self {
            proxy_url,
            referer_url: page_url("PORTAL_REFERER_URL")?,
            refresh_url: page_url("PORTAL_REFRESH_URL")?,
            favicon_url: image_url("PORTAL_FAVICON_URL")?,
            brand_color,
            logo: image_url("PORTAL_LOGO")?,
            logo_dark: image_url("PORTAL_LOGO_DARK")?,
            organization_name,
            force_theme,
            disable_branding: flag("PORTAL_DISABLE_OUTPOST_BRANDING")?,
            enable_destination_filter: flag("PORTAL_ENABLE_DESTINATION_FILTER")?,
            enable_webhook_custom_headers: flag("PORTAL_ENABLE_WEBHOOK_CUSTOM_HEADERS")?,
        })
    }

    /// The URL `GET /tenants/{id}/portal` hands out: the proxy URL when set,
    /// else the address the client used (`scheme://host`), with the token
    /// and an optional theme in the query.
    pub fn redirect_url(&self, scheme_and_host: &str, token: &str, theme: Option<Theme>) -> String {
        let mut url = match &self.proxy_url {
            Some(base) => {
                let sep = if base.contains('?') { '&' } else { '?' };
                format!("{base}{sep}token={token}")
            }
            None => format!("{scheme_and_host}?token={token}"),
        };
        if let Some(t) = theme {
            url.push_str("&theme=");
            url.push_str(t.as_str());
        }
        url
    }
}

/// `http(s)://…`, a same-origin path, or (for images) a `data:image/` URL;
/// no whitespace or control characters, which would change what the page
/// or a proxy reads.
fn check_url(key: &'static str, v: String, image: bool) -> Result<String, BadSetting> {
    if v.len() > MAX_URL {
        return Err(BadSetting::new(key, format!("is longer than {MAX_URL} bytes")));
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BadSetting::new(key, "must not contain spaces or control characters"));
    }
    let lower = v.to_ascii_lowercase();
    let ok = match lower.split_once("://") {
        Some(("http" | "https", rest)) => !rest.is_empty() && !rest.starts_with('/'),
        Some(_) => false,
        None => (v.starts_with('/') && !v.starts_with("//")) || (image && lower.starts_with("data:image/")),
    };
    if !ok {
        let also = if image {
            ", a path or a data:image/ URL"
        } else {
            " or a path"
        };
        return Err(BadSetting::new(
            key,
            format!("{v:?} is not an http:// or https:// URL{also}"),
        ));
    }
    Ok(v)
}

fn is_hex_colour(v: &str) -> bool {
    v.strip_prefix('#')
        .is_some_and(|h| matches!(h.len(), 3 | 4 | 6 | 8) && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(pairs: &[(&str, &str)]) -> Result<PortalConfig, BadSetting> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        PortalConfig::resolve(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_are_all_off() {
        assert_eq!(resolve(&[]).unwrap(), PortalConfig::default());
    }

    #[test]
    fn every_key_is_read() {
        let c = resolve(&[
            ("PORTAL_PROXY_URL", "https://portal.example.com/hooks"),
            ("PORTAL_REFERER_URL", "https://app.example.com/settings"),
            ("PORTAL_REFRESH_URL", "/refresh"),
            ("PORTAL_FAVICON_URL", "data:image/png;base64,AAAA"),
            ("PORTAL_BRAND_COLOR", "#6122E7"),
            ("PORTAL_LOGO", "https://cdn.example.com/logo.svg"),
            ("PORTAL_LOGO_DARK", "https://cdn.example.com/logo-dark.svg"),
            ("PORTAL_ORGANIZATION_NAME", "Acme"),
            ("PORTAL_FORCE_THEME", "Dark"),
            ("PORTAL_DISABLE_OUTPOST_BRANDING", "true"),
            ("PORTAL_ENABLE_DESTINATION_FILTER", "1"),
            ("PORTAL_ENABLE_WEBHOOK_CUSTOM_HEADERS", "yes"),
        ])
        .unwrap();
        assert_eq!(c.force_theme, Some(Theme::Dark));
        assert_eq!(c.brand_color.as_deref(), Some("#6122E7"));
        assert!(c.disable_branding && c.enable_destination_filter && c.enable_webhook_custom_headers);
        assert_eq!(c.refresh_url.as_deref(), Some("/refresh"));
        assert_eq!(
            c.redirect_url("http://ignored:3333", "abc", Some(Theme::Light)),
            "https://portal.example.com/hooks?token=abc&theme=light"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (k, v) in [
            ("PORTAL_BRAND_COLOR", "red"),
            ("PORTAL_BRAND_COLOR", "#12345"),
            ("PORTAL_FORCE_THEME", "blue"),
            ("PORTAL_LOGO", "javascript:alert(1)"),
            ("PORTAL_LOGO", "//evil.example.com/x.png"),
            ("PORTAL_REFERER_URL", "data:image/png;base64,AA"),
            ("PORTAL_REFRESH_URL", "https://a b"),
            ("PORTAL_PROXY_URL", "/relative"),
            ("PORTAL_PROXY_URL", "https://x.example.com/#frag"),
            ("PORTAL_DISABLE_OUTPOST_BRANDING", "maybe"),
        ] {
            let e = resolve(&[(k, v)]).expect_err(v);
            assert_eq!(e.key, k, "{v}");
        }
    }

    #[test]
    fn redirect_url_uses_the_request_host_without_a_proxy() {
        let c = PortalConfig::default();
        assert_eq!(c.redirect_url("http://h:1", "t", None), "http://h:1?token=t");
        let c = resolve(&[("PORTAL_PROXY_URL", "https://p.example.com/?x=1")]).unwrap();
        assert_eq!(
            c.redirect_url("http://h:1", "t", None),
            "https://p.example.com/?x=1&token=t"
        );
    }
}
