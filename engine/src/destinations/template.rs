//! JMESPath templates (Kinesis and Kafka partition keys, S3 object keys):
//! compiled once per destination on its shard, evaluated per delivery over
//! a JSON document the type builds (`{data, metadata}`, plus `time` for S3).
//!
//! A template is tenant input, and the `jmespath` crate bounds neither its
//! parser's recursion (200,000 `!` overflow the stack) nor what an
//! evaluation may build (a projection that pairs each element with itself,
//! repeated 40 times, asks for 2^40 elements). So a template must pass
//! three checks before it is compiled for use, both when a destination is
//! saved and when a shard builds its publisher (destinations saved before
//! the checks existed must not crash a shard either):
//! - at most [`MAX_BYTES`] bytes;
//! - at most [`MAX_NESTING`] tokens that make the parser recurse (`!`, `&`,
//!   `(`, `[`, `{`, `*`), counted before parsing so the parser never sees a
//!   deeper expression;
//! - after parsing, a syntax tree at most [`MAX_DEPTH`] deep and a growth
//!   bound of at most [`MAX_GROWTH`]: an upper bound, computed from the
//!   tree, on how many times larger than the document any value built
//!   while evaluating it can be. Templates that pick fields and join a few
//!   of them stay far below it.

use jmespath::ast::Ast;
use jmespath::Variable;
use serde_json::Value;

/// Longest template accepted, in bytes.
pub const MAX_BYTES: usize = 1024;
/// Most tokens that nest the parser (`!`, `&`, `(`, `[`, `{`, `*`).
pub const MAX_NESTING: usize = 64;
/// Deepest syntax tree accepted.
pub const MAX_DEPTH: usize = 64;
/// Largest growth bound accepted (see the module docs).
pub const MAX_GROWTH: u64 = 64;

/// Why a template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Syntax(String),
    #[error("longer than {MAX_BYTES} bytes")]
    TooLong,
    #[error("nested deeper than {MAX_NESTING} levels")]
    TooNested,
    #[error("may build values more than {MAX_GROWTH} times the event's size")]
    TooExpensive,
}

/// A compiled template.
pub struct Template(jmespath::Expression<'static>);

impl Template {
    pub fn compile(expr: &str) -> Result<Self, TemplateError> {
        if expr.len() > MAX_BYTES {
            return Err(TemplateError::TooLong);
        }
        if nesting_tokens(expr) > MAX_NESTING {
            return Err(TemplateError::TooNested);
        }
        let compiled = jmespath::compile(expr).map_err(|e| TemplateError::Syntax(e.to_string()))?;
        let ast = compiled.as_ast();
        if depth(ast, 0) > MAX_DEPTH {
            return Err(TemplateError::TooNested);
        }
        if growth(ast) > MAX_GROWTH {
            return Err(TemplateError::TooExpensive);
        }
        Ok(Template(compiled))
    }

    /// The template's value as a key, written as Outpost writes it (Go's
    /// `%v` of the decoded JSON): strings as they are, numbers as `%g`
    /// (`1234567` → `1.234567e+06`), booleans as `true`/`false`, lists as
    /// `[a b]` and objects as `map[k:v]` with sorted keys. `None` for null,
    /// an empty string and an evaluation error, where Outpost falls back.
    pub fn key(&self, doc: &Value) -> Option<String> {
        let v = self.0.search(doc).ok()?;
        match &*v {
            Variable::Null => None,
            Variable::String(s) if s.is_empty() => None,
            other => {
                let mut out = String::new();
                go_value(other, &mut out);
                Some(out)
            }
        }
    }
}

/// Go's `%v` of a value decoded from JSON (`nil`, string, float64, bool,
/// `[]any`, `map[string]any`).
fn go_value(v: &Variable, out: &mut String) {
    match v {
        Variable::Null => out.push_str("<nil>"),
        Variable::String(s) => out.push_str(s),
        Variable::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Variable::Number(n) => out.push_str(&format_g(n.as_f64().unwrap_or(f64::NAN))),
        Variable::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                go_value(item, out);
            }
            out.push(']');
        }
        Variable::Object(map) => {
            // Go prints a map's keys sorted, as the BTreeMap holds them.
            out.push_str("map[");
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                out.push_str(k);
                out.push(':');
                go_value(item, out);
            }
            out.push(']');
        }
        // Only `&expr` arguments of functions hold one; never a result.
        Variable::Expref(_) => {}
    }
}

/// The check for validation: why `expr` is refused, if it is.
pub fn invalid(expr: &str) -> Option<TemplateError> {
    Template::compile(expr).err()
}

/// The validation message for a refused template in config field `field`:
/// Outpost's wording for a syntax error, the limit for the others.
pub fn violation(field: &str, e: &TemplateError) -> String {
    match e {
        TemplateError::Syntax(_) => format!("config.{field} is invalid"),
        limit => format!("config.{field} is invalid: {limit}"),
    }
}

/// Tokens that make the parser recurse, outside quoted strings, raw
/// strings and JSON literals (their escapes skipped). Counting all of them,
/// not only the nested ones, over-counts, which only makes the bound safer.
fn nesting_tokens(expr: &str) -> usize {
    let mut n = 0;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for &b in expr.as_bytes() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == q {
                quote = None;
            }
            continue;
        }
        match b {
            b'"' | b'\'' | b'`' => quote = Some(b),
            b'!' | b'&' | b'(' | b'[' | b'{' | b'*' => n += 1,
            _ => {}
        }
    }
    n
}

fn children(ast: &Ast) -> Vec<&Ast> {
    match ast {
        Ast::Comparison { lhs, rhs, .. }
        | Ast::Projection { lhs, rhs, .. }
        | Ast::And { lhs, rhs, .. }
        | Ast::Or { lhs, rhs, .. }
        | Ast::Subexpr { lhs, rhs, .. } => vec![lhs, rhs],
        Ast::Condition { predicate, then, .. } => vec![predicate, then],
        Ast::Expref { ast: node, .. }
        | Ast::Flatten { node, .. }
        | Ast::Not { node, .. }
        | Ast::ObjectValues { node, .. } => vec![node],
        Ast::Function { args, .. } => args.iter().collect(),
        Ast::MultiList { elements, .. } => elements.iter().collect(),
        Ast::MultiHash { elements, .. } => elements.iter().map(|kv| &kv.value).collect(),
        Ast::Identity { .. } | Ast::Field { .. } | Ast::Index { .. } | Ast::Literal { .. } | Ast::Slice { .. } => {
            vec![]
        }
    }
}

/// The tree's depth, stopping early once it passes the limit (so the walk
/// itself stays shallow for a left-deep chain of thousands of fields).
fn depth(ast: &Ast, at: usize) -> usize {
    if at > MAX_DEPTH {
        return at;
    }
    children(ast)
        .into_iter()
        .map(|c| depth(c, at + 1))
        .max()
        .unwrap_or(at + 1)
}

/// An upper bound on the size of any value built while evaluating `ast`,
/// in units of the document's size (a literal counts as one document).
/// Selecting, slicing, flattening and filtering never grow a value; a list
/// or object built from expressions holds all their results (sum); applying
/// an expression to each result of another, or to another's result
/// (projection, sub-expression, pipe, `map`/`sort_by`/`min_by`/`max_by`),
/// multiplies. Saturating, so a hostile tree cannot overflow the bound.
fn growth(ast: &Ast) -> u64 {
    match ast {
        Ast::Identity { .. } | Ast::Field { .. } | Ast::Index { .. } | Ast::Literal { .. } | Ast::Slice { .. } => 1,
        Ast::Projection { lhs, rhs, .. } | Ast::Subexpr { lhs, rhs, .. } => growth(lhs).saturating_mul(growth(rhs)),
        Ast::Comparison { lhs, rhs, .. } | Ast::And { lhs, rhs, .. } | Ast::Or { lhs, rhs, .. } => {
            growth(lhs).saturating_add(growth(rhs))
        }
        Ast::Condition { predicate, then, .. } => growth(predicate).max(growth(then)),
        Ast::Expref { ast: node, .. }
        | Ast::Flatten { node, .. }
        | Ast::Not { node, .. }
        | Ast::ObjectValues { node, .. } => growth(node),
        Ast::MultiList { elements, .. } => elements.iter().fold(0u64, |a, e| a.saturating_add(growth(e))).max(1),
        Ast::MultiHash { elements, .. } => elements
            .iter()
            .fold(0u64, |a, kv| a.saturating_add(growth(&kv.value)))
            .max(1),
        Ast::Function { args, .. } => {
            // Values passed by value are held together; an expression
            // reference runs once per element of the other arguments.
            let (exprefs, values): (Vec<&Ast>, Vec<&Ast>) = args.iter().partition(|a| matches!(a, Ast::Expref { .. }));
            let held = values.iter().fold(0u64, |a, v| a.saturating_add(growth(v))).max(1);
            exprefs.iter().fold(held, |a, e| a.saturating_mul(growth(e)))
        }
    }
}

/// Go's `%g` with the shortest precision (what `%v` prints for a float64):
/// the fewest digits that read back as the same number, in exponent form
/// when the decimal exponent is below -4 or at least 6 (`1e+06`,
/// `1.234567e+06`, `1e-05`), else plain (`123456`, `1.5`, `0.0001`).
fn format_g(n: f64) -> String {
    if n.is_nan() {
        return "NaN".into();
    }
    if n.is_infinite() {
        return if n > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    if n == 0.0 {
        return if n.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // Rust's `{:e}` is the shortest round-trip form too: `1.234567e6`.
    let e = format!("{n:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
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
        let doc = json!({
            "data": {
                "customer": "c1", "n": 42, "f": 1.5, "ok": true, "empty": "", "big": 1234567,
                "list": ["a", 1, true, null, [2.5]], "obj": {"b": {"c": "x"}, "a": 1}, "nothing": null
            },
            "metadata": {"event-id": "e1"}
        });
        let k = |e: &str| Template::compile(e).unwrap().key(&doc);
        assert_eq!(k("data.customer").as_deref(), Some("c1"));
        assert_eq!(k("data.n").as_deref(), Some("42"));
        assert_eq!(k("data.f").as_deref(), Some("1.5"));
        assert_eq!(k("data.ok").as_deref(), Some("true"));
        assert_eq!(k("data.empty"), None);
        assert_eq!(k("data.missing"), None);
        assert_eq!(k("metadata.\"event-id\"").as_deref(), Some("e1"));
        assert_eq!(
            k("join('/', [data.customer, metadata.\"event-id\"])").as_deref(),
            Some("c1/e1")
        );
        assert!(invalid("data.[").is_some());
        assert!(invalid("data.customer").is_none());
        assert_eq!(k("data.big").as_deref(), Some("1.234567e+06"));
        assert_eq!(k("data.list").as_deref(), Some("[a 1 true <nil> [2.5]]"));
        assert_eq!(k("data.obj").as_deref(), Some("map[a:1 b:map[c:x]]"));
        assert_eq!(k("data.nothing"), None);
        for (n, go) in [
            (1e21, "1e+21"),
            (0.00001, "1e-05"),
            (0.0001, "0.0001"),
            (123456.0, "123456"),
            (1e6, "1e+06"),
            (1234567.0, "1.234567e+06"),
            (-2.5e-7, "-2.5e-07"),
            (1.5e300, "1.5e+300"),
            (0.1, "0.1"),
            (100.25, "100.25"),
            (0.0, "0"),
        ] {
            assert_eq!(format_g(n), go, "{n}");
        }
    }

    /// Runs `f` on a thread with a 128 KiB stack, far less than any thread
    /// of ours (tokio's workers and the shards have 2 MiB), so a template
    /// that passes the checks cannot overflow one.
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(128 * 1024)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn the_reported_template_is_refused_without_parsing_it() {
        // The report: 200,000 `!` then `a` overflowed the API thread's stack.
        let reported = format!("{}a", "!".repeat(200_000));
        assert_eq!(on_small_stack(move || invalid(&reported)), Some(TemplateError::TooLong));
        // At the length limit, the nesting count refuses it before parsing.
        let longest = format!("{}a", "!".repeat(MAX_BYTES - 1));
        assert_eq!(
            on_small_stack(move || invalid(&longest)),
            Some(TemplateError::TooNested)
        );
        for open in ["(", "[", "{a:", "&"] {
            let nested = open.repeat(MAX_BYTES / open.len());
            assert!(on_small_stack(move || invalid(&nested)).is_some(), "{open}");
        }
        // Quoted text is not counted: a key may contain brackets.
        assert_eq!(invalid(&format!("data.\"{}\"", "[".repeat(200))), None);
    }

    #[test]
    fn a_long_chain_of_fields_is_refused_by_depth() {
        let chain = vec!["a"; MAX_BYTES / 2].join(".");
        assert_eq!(on_small_stack(move || invalid(&chain)), Some(TemplateError::TooNested));
        let fine = vec!["a"; MAX_DEPTH / 2].join(".");
        assert_eq!(invalid(&fine), None);
    }

    #[test]
    fn a_template_that_doubles_its_input_is_refused() {
        // Each step pairs every element with itself and flattens: 2^40
        // elements after 40 steps, from any list in the event. Forty steps
        // pass the nesting count; fifteen stay under it, and the growth
        // bound (2^15) refuses them.
        let forty = format!("data.list{}", " | [*].[@, @][]".repeat(40));
        assert!(forty.len() < MAX_BYTES);
        assert_eq!(invalid(&forty), Some(TemplateError::TooNested));
        let fifteen = format!("data.list{}", " | [*].[@, @][]".repeat(15));
        assert_eq!(invalid(&fifteen), Some(TemplateError::TooExpensive));
        // Strings doubled by nested joins and arrays by `map`.
        let mut joins = "data.s".to_string();
        for _ in 0..10 {
            joins = format!("join('', [{joins}, {joins}])");
            if joins.len() > MAX_BYTES {
                break;
            }
        }
        assert!(invalid(&joins).is_some());
        let maps = format!("data.list{}", "| map(&[@, @, @, @], @)[]".repeat(4));
        assert_eq!(invalid(&maps), Some(TemplateError::TooExpensive));
        // Six doublings stay within the bound and evaluate.
        let six = format!("length(data.list{})", " | [*].[@, @][]".repeat(6));
        let t = Template::compile(&six).unwrap();
        assert_eq!(t.key(&json!({"data": {"list": [1, 2]}})).as_deref(), Some("128"));
    }

    #[test]
    fn templates_people_write_pass_the_checks() {
        for t in [
            "data.customer",
            "metadata.\"event-id\"",
            crate::destinations::aws_s3::DEFAULT_KEY_TEMPLATE,
            "join('/', [metadata.topic, data.customer_id, data.order.id, metadata.\"event-id\"])",
            "data.items[?kind == 'primary'] | [0].id",
            "to_string(data.amount)",
            "data.a || data.b || metadata.\"event-id\"",
        ] {
            assert_eq!(invalid(t), None, "{t}");
        }
    }

    #[test]
    fn a_template_at_every_limit_evaluates_on_a_small_stack() {
        // As deep as the checks allow, then evaluated: no overflow.
        let deep = format!("{}data.a{}", "not_null(".repeat(31), ")".repeat(31));
        let key = on_small_stack(move || {
            let t = Template::compile(&deep).unwrap();
            t.key(&json!({"data": {"a": "x"}}))
        });
        assert_eq!(key.as_deref(), Some("x"));
    }
}
