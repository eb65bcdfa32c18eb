//! JMESPath templates (Kinesis and Kafka partition keys, S3 object keys):
//! compiled once per destination on its shard, evaluated per delivery over
//! a JSON document the type builds (`{data, metadata}`, plus `time` for S3).

use serde_json::Value;

/// A compiled template.
pub struct Template(jmespath::Expression<'static>);

impl Template {
    pub fn compile(expr: &str) -> Result<Self, String> {
        jmespath::compile(expr).map(Template).map_err(|e| e.to_string())
    }

    /// The template's value as a key: strings as they are, numbers as Go's
    /// `%g` prints them, booleans as `true`/`false`; `None` for null, an
    /// empty string, a list or an object, and for an evaluation error.
    pub fn key(&self, doc: &Value) -> Option<String> {
        let v = self.0.search(doc).ok()?;
        if let Some(s) = v.as_string() {
            return (!s.is_empty()).then(|| s.clone());
        }
        if let Some(n) = v.as_number() {
            return Some(format_g(n));
        }
        v.as_boolean().map(|b| b.to_string())
    }
}

/// A compile check for validation: `Some(message)` when `expr` does not compile.
pub fn invalid(expr: &str) -> Option<String> {
    jmespath::compile(expr).err().map(|e| e.to_string())
}

/// Go's `%g` for the numbers keys are usually made of: integers without a
/// fraction, others in the shortest form that round-trips, exponents from 1e21.
fn format_g(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e21 {
        format!("{}", n as i64)
    } else if n.abs() >= 1e21 || (n != 0.0 && n.abs() < 1e-4) {
        let s = format!("{n:e}");
        // Rust writes `1e21`, Go `1e+21`.
        match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e:0>2}"),
            Some((m, e)) => format!("{m}e-{:0>2}", &e[1..]),
            None => s,
        }
    } else {
        format!("{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys() {
        let doc = json!({"data": {"customer": "c1", "n": 42, "f": 1.5, "ok": true, "empty": ""}, "metadata": {"event-id": "e1"}});
        let k = |e: &str| Template::compile(e).unwrap().key(&doc);
        assert_eq!(k("data.customer").as_deref(), Some("c1"));
        assert_eq!(k("data.n").as_deref(), Some("42"));
        assert_eq!(k("data.f").as_deref(), Some("1.5"));
        assert_eq!(k("data.ok").as_deref(), Some("true"));
        assert_eq!(k("data.empty"), None);
        assert_eq!(k("data.missing"), None);
        assert_eq!(k("data"), None);
        assert_eq!(k("metadata.\"event-id\"").as_deref(), Some("e1"));
        assert_eq!(
            k("join('/', [data.customer, metadata.\"event-id\"])").as_deref(),
            Some("c1/e1")
        );
        assert!(invalid("data.[").is_some());
        assert!(invalid("data.customer").is_none());
        assert_eq!(format_g(1e21), "1e+21");
        assert_eq!(format_g(0.00001), "1e-05");
    }
}
