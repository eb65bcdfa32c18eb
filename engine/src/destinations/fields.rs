//! Field lists of the non-webhook types: one description drives the
//! `/destination-types` listing, the base validation Outpost applies to every
//! type (required, number bounds, pattern) and the masking of sensitive
//! credentials on read. Unknown keys are allowed and stored, as in Outpost.

use serde_json::{json, Map, Value};

use super::{obfuscate, Violations};
use crate::model::StringMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Checkbox,
    Number,
    /// One of `options`.
    Select,
}

/// A field's pattern as listed (an RE2 regex, for the portal's form), and
/// the check that enforces it here.
pub type Pattern = (&'static str, fn(&str) -> bool);

/// One config or credential field.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub key: &'static str,
    pub kind: Kind,
    pub label: &'static str,
    pub description: &'static str,
    pub required: bool,
    pub sensitive: bool,
    pub default: Option<&'static str>,
    pub pattern: Option<Pattern>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    /// `(label, value)` pairs of a select field.
    pub options: &'static [(&'static str, &'static str)],
}

impl Field {
    pub const fn text(key: &'static str, label: &'static str, description: &'static str) -> Self {
        Self {
            key,
            kind: Kind::Text,
            label,
            description,
            required: false,
            sensitive: false,
            default: None,
            pattern: None,
            min: None,
            max: None,
            options: &[],
        }
    }

    pub const fn required(mut self) -> Self {
        self.required = true;
        self
    }

    pub const fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }

    pub const fn checkbox(mut self, default: &'static str) -> Self {
        self.kind = Kind::Checkbox;
        self.default = Some(default);
        self
    }

    /// A text field's default, as listed.
    pub const fn default_value(mut self, default: &'static str) -> Self {
        self.default = Some(default);
        self
    }

    pub const fn number(mut self, min: i64, max: i64) -> Self {
        self.kind = Kind::Number;
        self.min = Some(min);
        self.max = Some(max);
        self
    }

    /// A select field: the value must be one of `options` (`(label, value)`).
    pub const fn select(mut self, options: &'static [(&'static str, &'static str)]) -> Self {
        self.kind = Kind::Select;
        self.options = options;
        self
    }

    pub const fn pattern(mut self, listed: &'static str, check: fn(&str) -> bool) -> Self {
        self.pattern = Some((listed, check));
        self
    }

    fn json(&self) -> Value {
        let mut m = Map::new();
        let kind = match self.kind {
            Kind::Text => "text",
            Kind::Checkbox => "checkbox",
            // Listed as text: the official SDK (1.6.0) rejects a `number`
            // field type; the bounds still travel as `min`/`max` and are enforced.
            Kind::Number => "text",
            Kind::Select => "select",
        };
        m.insert("type".into(), kind.into());
        m.insert("label".into(), self.label.into());
        m.insert("description".into(), self.description.into());
        m.insert("key".into(), self.key.into());
        m.insert("required".into(), self.required.into());
        if let Some(d) = self.default {
            m.insert("default".into(), d.into());
        }
        if self.sensitive {
            m.insert("sensitive".into(), true.into());
        }
        if let Some(min) = self.min {
            m.insert("min".into(), min.into());
        }
        if let Some(max) = self.max {
            m.insert("max".into(), max.into());
        }
        if let Some((p, _)) = self.pattern {
            m.insert("pattern".into(), p.into());
        }
        if self.kind == Kind::Select {
            let options = self
                .options
                .iter()
                .map(|(label, value)| json!({"label": label, "value": value}));
            m.insert("options".into(), Value::Array(options.collect()));
        }
        Value::Object(m)
    }

    /// Outpost's base checks, as `"<section>.<key> <reason>"`.
    fn check(&self, section: &str, map: &StringMap, errs: &mut Violations) {
        let value = map.get(self.key).map(String::as_str).unwrap_or("");
        if value.is_empty() {
            if self.required {
                errs.push(format!("{section}.{} is required", self.key));
            }
            return;
        }
        if self.kind == Kind::Number {
            match value.parse::<i64>() {
                Err(_) => errs.push(format!("{section}.{} is invalid", self.key)),
                Ok(n) if self.min.is_some_and(|m| n < m) || self.max.is_some_and(|m| n > m) => {
                    errs.push(format!("{section}.{} is out of range", self.key))
                }
                Ok(_) => {}
            }
        }
        if self.kind == Kind::Select && !self.options.iter().any(|(_, v)| *v == value) {
            errs.push(format!("{section}.{} is invalid", self.key));
        }
        if let Some((_, ok)) = self.pattern {
            if !ok(value) {
                errs.push(format!("{section}.{} failed pattern validation", self.key));
            }
        }
    }
}

/// What `/destination-types` says about a type, and its fields.
pub struct Schema {
    pub kind: &'static str,
    pub label: &'static str,
    pub description: &'static str,
    pub icon: &'static str,
    pub instructions: &'static str,
    pub config: &'static [Field],
    pub credentials: &'static [Field],
}

impl Schema {
    pub fn metadata(&self) -> Value {
        json!({
            "type": self.kind,
            "label": self.label,
            "description": self.description,
            "icon": self.icon,
            "instructions": self.instructions,
            "config_fields": self.config.iter().map(Field::json).collect::<Vec<_>>(),
            "credential_fields": self.credentials.iter().map(Field::json).collect::<Vec<_>>(),
        })
    }

    /// Base validation of every listed field; the type adds its own checks.
    pub fn check(&self, config: &StringMap, credentials: &StringMap) -> Violations {
        let mut errs = Vec::new();
        for f in self.config {
            f.check("config", config, &mut errs);
        }
        for f in self.credentials {
            f.check("credentials", credentials, &mut errs);
        }
        errs
    }

    /// Credentials as API callers see them: sensitive values masked.
    pub fn display_credentials(&self, credentials: &StringMap) -> StringMap {
        let mut out = credentials.clone();
        for f in self.credentials.iter().filter(|f| f.sensitive) {
            if let Some(v) = credentials.get(f.key) {
                out.insert(f.key.to_string(), obfuscate(v));
            }
        }
        out
    }
}

/// `Ok` when `errs` is empty.
pub fn result(errs: Violations) -> Result<(), Violations> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

pub fn no_whitespace(v: &str) -> bool {
    !v.chars().any(char::is_whitespace)
}

pub fn http_url(v: &str) -> bool {
    (v.starts_with("http://") || v.starts_with("https://")) && v.len() > "https://".len() && no_whitespace(v)
}

/// Outpost's `tls` checkbox: `on`/`true` → `true`, empty → `false`.
pub fn normalise_flag(map: &mut StringMap, key: &str) -> Result<(), Violations> {
    let v = map.get(key).map(|s| s.to_ascii_lowercase()).unwrap_or_default();
    let norm = match v.as_str() {
        "on" | "true" => "true",
        "" | "off" | "false" => "false",
        _ => return Err(vec![format!("config.{key} is invalid")]),
    };
    map.insert(key.to_string(), norm.to_string());
    Ok(())
}

pub fn flag(map: &StringMap, key: &str) -> bool {
    map.get(key)
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "on"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &[Field] = &[
        Field::text("url", "URL", "u")
            .required()
            .pattern("^https?://", http_url),
        Field::text("max", "Max", "m").number(1, 10),
        Field::text("mode", "Mode", "m").select(&[("Fast", "fast"), ("Safe", "safe")]),
    ];
    const CREDS: &[Field] = &[Field::text("password", "Password", "p").required().sensitive()];
    const SCHEMA: Schema = Schema {
        kind: "t",
        label: "T",
        description: "d",
        icon: "",
        instructions: "",
        config: CONFIG,
        credentials: CREDS,
    };

    fn map(pairs: &[(&str, &str)]) -> StringMap {
        let mut m = StringMap::new();
        for (k, v) in pairs {
            m.insert(k.to_string(), v.to_string());
        }
        m
    }

    #[test]
    fn base_checks_and_masking() {
        assert_eq!(
            SCHEMA.check(&map(&[]), &map(&[])),
            vec!["config.url is required", "credentials.password is required"]
        );
        assert_eq!(
            SCHEMA.check(
                &map(&[("url", "ftp://x"), ("max", "11"), ("other", "kept")]),
                &map(&[("password", "p")])
            ),
            vec!["config.url failed pattern validation", "config.max is out of range"]
        );
        assert_eq!(
            SCHEMA.check(
                &map(&[("url", "https://x.example"), ("max", "x"), ("mode", "slow")]),
                &map(&[("password", "p")])
            ),
            vec!["config.max is invalid", "config.mode is invalid"]
        );
        let shown = SCHEMA.display_credentials(&map(&[("password", "hunter22hunter22"), ("user", "u")]));
        assert_eq!(shown.get("password").unwrap(), "hunt************");
        assert_eq!(shown.get("user").unwrap(), "u");
        let m = SCHEMA.metadata();
        assert_eq!(m["config_fields"][1]["type"], "text");
        assert_eq!(m["credential_fields"][0]["sensitive"], true);
        assert_eq!(m["config_fields"][2]["type"], "select");
        assert_eq!(
            m["config_fields"][2]["options"][1],
            json!({"label": "Safe", "value": "safe"})
        );
    }

    #[test]
    fn flags() {
        let mut m = map(&[("tls", "on")]);
        normalise_flag(&mut m, "tls").unwrap();
        assert_eq!(m.get("tls").unwrap(), "true");
        let mut m = map(&[]);
        normalise_flag(&mut m, "tls").unwrap();
        assert_eq!(m.get("tls").unwrap(), "false");
        assert!(normalise_flag(&mut map(&[("tls", "maybe")]), "tls").is_err());
    }
}
