//! Per-type overrides of what `/destination-types` says
//! (`DESTINATIONS_METADATA_PATH`, Outpost's layout): `<dir>/<type>/metadata.json`
//! may replace a type's `label`, `description`, `icon` and `setup_link`, and
//! `<dir>/<type>/instructions.md` its instructions. A type's `type` and its
//! field lists are what the server validates against, so they are never
//! taken from the directory.
//!
//! Where Outpost skips a file it cannot parse, the server refuses to start
//! naming the file: an operator who wrote an override expects to see it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// A file larger than this is refused (an icon is an inline SVG, instructions
/// a page of markdown).
const MAX_FILE: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OverrideError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// What replaces a type's own description. `None`: keep the type's own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Override {
    pub label: Option<String>,
    pub description: Option<String>,
    pub icon: Option<String>,
    /// `{"href": …, "cta": …}`.
    pub setup_link: Option<Value>,
    pub instructions: Option<String>,
}

/// Overrides by type.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    by_type: HashMap<String, Override>,
}

impl Overrides {
    /// Reads `dir`. `kinds`: the types this build has; a folder named after
    /// none of them is reported in the returned notices (Outpost has types we
    /// do not, and the reverse). Keys that may not be overridden are noticed
    /// too.
    pub fn load(dir: &Path, kinds: &[&str]) -> Result<(Self, Vec<String>), OverrideError> {
        let err = |path: &Path, message: String| OverrideError::File {
            path: path.to_path_buf(),
            message,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| err(dir, e.to_string()))?;
        let mut by_type = HashMap::new();
        let mut notices = Vec::new();
        let mut names: Vec<(String, PathBuf)> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| err(dir, e.to_string()))?;
            if entry.path().is_dir() {
                names.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
            }
        }
        names.sort();
        for (name, path) in names {
            if !kinds.contains(&name.as_str()) {
                notices.push(format!(
                    "DESTINATIONS_METADATA_PATH: {} names no destination type of this build; it is not used",
                    path.display()
                ));
                continue;
            }
            let mut o = Override::default();
            let meta = path.join("metadata.json");
            if let Some(text) = read_capped(&meta).map_err(|m| err(&meta, m))? {
                let v: Value = serde_json::from_str(&text).map_err(|e| err(&meta, format!("not valid JSON: {e}")))?;
                let obj = v.as_object().ok_or_else(|| err(&meta, "not a JSON object".into()))?;
                for (key, value) in obj {
                    let text = || {
                        value
                            .as_str()
                            .map(str::to_string)
                            .ok_or_else(|| err(&meta, format!("{key} must be a string")))
                    };
                    match key.as_str() {
                        "label" => o.label = Some(text()?).filter(|s| !s.is_empty()),
                        "description" => o.description = Some(text()?).filter(|s| !s.is_empty()),
                        "icon" => o.icon = Some(text()?).filter(|s| !s.is_empty()),
                        "setup_link" => {
                            let ok = value
                                .as_object()
                                .is_some_and(|l| l.get("href").is_some_and(Value::is_string));
                            if !ok {
                                return Err(err(&meta, "setup_link must be {\"href\": …, \"cta\": …}".into()));
                            }
                            o.setup_link = Some(value.clone());
                        }
                        "type" | "config_fields" | "credential_fields" => notices.push(format!(
                            "{}: {key} cannot be overridden (the server validates against its own); it is not used",
                            meta.display()
                        )),
                        other => notices.push(format!(
                            "{}: {other} is not a metadata key; it is not used",
                            meta.display()
                        )),
                    }
                }
            }
            let instructions = path.join("instructions.md");
            o.instructions = read_capped(&instructions).map_err(|m| err(&instructions, m))?;
            by_type.insert(name, o);
        }
        Ok((Self { by_type }, notices))
    }

    pub fn is_empty(&self) -> bool {
        self.by_type.is_empty()
    }

    /// Applies `kind`'s override to its `/destination-types` description.
    pub fn apply(&self, kind: &str, metadata: &mut Value) {
        let (Some(o), Some(m)) = (self.by_type.get(kind), metadata.as_object_mut()) else {
            return;
        };
        let mut set = |key: &str, v: &Option<String>| {
            if let Some(v) = v {
                m.insert(key.into(), Value::String(v.clone()));
            }
        };
        set("label", &o.label);
        set("description", &o.description);
        set("icon", &o.icon);
        set("instructions", &o.instructions);
        if let Some(l) = &o.setup_link {
            m.insert("setup_link".into(), l.clone());
        }
    }
}

/// The file's text; `None` when there is no such file.
fn read_capped(path: &Path) -> Result<Option<String>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if meta.len() > MAX_FILE {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    std::fs::read_to_string(path).map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    #[test]
    fn overrides_replace_presentation_and_never_the_fields() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(
            d,
            "webhook/metadata.json",
            r#"{"label":"Hooks","icon":"<svg/>","type":"other","config_fields":[],"description":"","setup_link":{"href":"https://x","cta":"Go"}}"#,
        );
        write(d, "webhook/instructions.md", "# Ours");
        write(d, "rabbitmq/instructions.md", "Bind a queue.");
        write(d, "mcp/metadata.json", r#"{"label":"MCP"}"#);
        let (o, notices) = Overrides::load(d, &["webhook", "rabbitmq"]).unwrap();
        let mut m = json!({"type":"webhook","label":"Webhook","description":"d","icon":"i","instructions":"x","config_fields":[1]});
        o.apply("webhook", &mut m);
        assert_eq!(
            m,
            json!({"type":"webhook","label":"Hooks","description":"d","icon":"<svg/>","instructions":"# Ours",
                   "config_fields":[1],"setup_link":{"href":"https://x","cta":"Go"}})
        );
        let mut r = json!({"type":"rabbitmq","label":"RabbitMQ","instructions":"old"});
        o.apply("rabbitmq", &mut r);
        assert_eq!(
            r,
            json!({"type":"rabbitmq","label":"RabbitMQ","instructions":"Bind a queue."})
        );
        assert_eq!(notices.len(), 3, "{notices:?}");
        assert!(notices[0].contains("mcp") && notices[0].contains("names no destination type"));
        assert!(notices.iter().any(|n| n.contains("type cannot be overridden")));
        assert!(notices.iter().any(|n| n.contains("config_fields cannot be overridden")));
    }

    #[test]
    fn a_file_that_cannot_be_read_as_an_override_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "webhook/metadata.json", "{\"label\": ");
        let e = Overrides::load(dir.path(), &["webhook"]).unwrap_err().to_string();
        assert!(e.contains("webhook/metadata.json: not valid JSON"), "{e}");
        write(dir.path(), "webhook/metadata.json", r#"{"label": 3}"#);
        let e = Overrides::load(dir.path(), &["webhook"]).unwrap_err().to_string();
        assert!(e.ends_with("label must be a string"), "{e}");
        let e = Overrides::load(&dir.path().join("absent"), &["webhook"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("absent"), "{e}");
    }
}
