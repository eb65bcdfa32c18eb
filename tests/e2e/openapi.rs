//! The OpenAPI document the server serves, compared with Outpost's contract
//! (`spec/outpost-openapi.yaml` of the shared reference, read where it lies,
//! never copied into this repository): paths, operations, parameters,
//! request and success-response bodies, and every schema both define
//! (properties, their shapes, required lists). Any difference that is not in
//! [`INTENDED`] fails the test, and so does an entry of [`INTENDED`] that no
//! longer happens, so the list stays exactly what differs.
//!
//! Shapes are compared after normalising what the two documents spell
//! differently and means the same: `nullable: true` and `type: [x, "null"]`,
//! a one-element `oneOf`, descriptions, examples and formats. A property
//! that only our document marks required, in a schema no request uses, is
//! a promise we keep (every response carries it), not a difference: those
//! are counted and printed, not listed. An entry of [`INTENDED`] may use `*`
//! for any run of characters.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value;

use crate::common::*;

/// Each difference we keep on purpose, with why.
const INTENDED: &[&str] = &[
    // Managed Outpost only: self-hosted Outpost configures these by environment, as we do.
    "path /config: only in Outpost's",
    "schema ManagedConfig: only in Outpost's",
    // Ours: this document.
    "path /openapi.json: only here",
    // Ours: the portal's "send test event".
    "path /tenants/{tenant_id}/destinations/{destination_id}/test: only here",
    "schema TestEventRequest: only here",
    // Our four destination types (aws_eventbridge, nats, mqtt, redis_stream), in every union and list.
    "schema *AWSEventBridge*: only here",
    "schema *NATS*: only here",
    "schema *MQTT*: only here",
    "schema *RedisStream*: only here",
    "schema Destination: Outpost's is oneOf(*), ours oneOf(*)",
    "schema DestinationCreate: Outpost's is oneOf(*), ours oneOf(*)",
    "schema DestinationUpdate: Outpost's is oneOf(*), ours oneOf(*)",
    "schema DestinationType: Outpost's is string{*}, ours string{*}",
    "GET /destination-types/{type}: parameter type is string{*} in Outpost's, string{*} here",
    // Fields Outpost's server sends that its contract leaves out (spec/outpost-behaviour.md §2.7, §2.9).
    "schema Destination*: property tenant_id only here",
    "schema Attempt: property destination_type only here",
    "schema Event: property eligible_for_retry only here",
    // Ours: the schema says every measure is a number.
    "schema MetricsDataPoint: property metrics is object in Outpost's, map<number> here",
    // Ours: number fields carry their bounds in the type listing.
    "schema DestinationSchemaField: property max only here",
    "schema DestinationSchemaField: property min only here",
    // Outpost's contract requires `exchange`; its own type metadata and server do not (the default exchange).
    "schema RabbitMQConfig: exchange required only in Outpost's",
];

/// `pattern` with `*` standing for any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text.ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for p in &parts[1..parts.len() - 1] {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// Schemas a request can carry: reachable from request bodies and parameters.
fn request_schemas(doc: &Value) -> BTreeSet<String> {
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    out.push(r.rsplit('/').next().unwrap_or(r).to_string());
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut todo = Vec::new();
    for item in doc["paths"].as_object().into_iter().flatten().map(|(_, v)| v) {
        for op in item.as_object().into_iter().flatten().map(|(_, v)| v) {
            refs(&op["requestBody"], &mut todo);
            refs(&op["parameters"], &mut todo);
        }
    }
    let mut seen = BTreeSet::new();
    while let Some(name) = todo.pop() {
        if seen.insert(name.clone()) {
            if let Some(s) = doc.pointer(&format!("/components/schemas/{name}")) {
                refs(s, &mut todo);
            }
        }
    }
    seen
}

fn contract_path() -> PathBuf {
    if let Ok(p) = std::env::var("OUTRIDER_OUTPOST_CONTRACT") {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates = [
        root.join("../shared/spec/outpost-openapi.yaml"),
        PathBuf::from("/work/shared/spec/outpost-openapi.yaml"),
    ];
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!(
            "Outpost's OpenAPI contract is required for this test: set OUTRIDER_OUTPOST_CONTRACT to \
                 spec/outpost-openapi.yaml of the shared reference (looked in {candidates:?})"
        )
    })
}

/// A schema's shape in a form both documents agree on.
fn shape(v: &Value) -> String {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        return format!("ref:{}", r.rsplit('/').next().unwrap_or(r));
    }
    for key in ["oneOf", "anyOf"] {
        if let Some(a) = v.get(key).and_then(Value::as_array) {
            let mut parts: Vec<String> = a.iter().map(shape).filter(|s| s != "null").collect();
            parts.sort();
            parts.dedup();
            return if parts.len() == 1 {
                parts.remove(0)
            } else {
                format!("oneOf({})", parts.join("|"))
            };
        }
    }
    if let Some([one]) = v.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
        return shape(one);
    }
    let ty = match v.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null")
            .to_string(),
        _ if v.get("properties").is_some() => "object".into(),
        _ => "any".into(),
    };
    match ty.as_str() {
        "array" => format!("array<{}>", v.get("items").map(shape).unwrap_or_default()),
        "object" => match v.get("additionalProperties") {
            Some(ap @ Value::Object(_)) if v.get("properties").is_none() && ap.get("type").is_some() => {
                format!("map<{}>", shape(ap))
            }
            _ => "object".into(),
        },
        t => match v.get("enum").and_then(Value::as_array) {
            Some(e) => {
                let mut vals: Vec<String> = e.iter().filter(|x| !x.is_null()).map(|x| x.to_string()).collect();
                vals.sort();
                format!("{t}{{{}}}", vals.join(","))
            }
            None => t.to_string(),
        },
    }
}

fn params(path_item: &Value, op: &Value) -> BTreeMap<(String, String), (bool, String)> {
    let mut out = BTreeMap::new();
    for list in [path_item.get("parameters"), op.get("parameters")] {
        for p in list.and_then(Value::as_array).into_iter().flatten() {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let place = p["in"].as_str().unwrap_or_default().to_string();
            let required = p.get("required").and_then(Value::as_bool).unwrap_or(false);
            out.insert((place, name), (required, shape(&p["schema"])));
        }
    }
    out
}

fn success(op: &Value) -> BTreeMap<String, String> {
    op["responses"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(code, _)| code.starts_with('2'))
        .map(|(code, r)| {
            let schema = r.pointer("/content/application~1json/schema");
            (code.clone(), schema.map(shape).unwrap_or_else(|| "none".into()))
        })
        .collect()
}

fn compare_schema(name: &str, theirs: &Value, ours: &Value, out: &mut Vec<String>) {
    let variants = |v: &Value| v.get("oneOf").map(shape);
    if variants(theirs).is_some() || variants(ours).is_some() {
        if shape(theirs) != shape(ours) {
            out.push(format!(
                "schema {name}: Outpost's is {}, ours {}",
                shape(theirs),
                shape(ours)
            ));
        }
        return;
    }
    let props = |v: &Value| -> BTreeMap<String, String> {
        v["properties"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, p)| (k.clone(), shape(p)))
            .collect()
    };
    let required = |v: &Value| -> BTreeSet<String> {
        v["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    let (tp, op) = (props(theirs), props(ours));
    if tp.is_empty() && op.is_empty() {
        if shape(theirs) != shape(ours) {
            out.push(format!(
                "schema {name}: Outpost's is {}, ours {}",
                shape(theirs),
                shape(ours)
            ));
        }
        return;
    }
    for (k, s) in &tp {
        match op.get(k) {
            None => out.push(format!("schema {name}: property {k} only in Outpost's")),
            Some(o) if o != s => out.push(format!("schema {name}: property {k} is {s} in Outpost's, {o} here")),
            _ => {}
        }
    }
    for k in op.keys().filter(|k| !tp.contains_key(*k)) {
        out.push(format!("schema {name}: property {k} only here"));
    }
    let (tr, or) = (required(theirs), required(ours));
    for k in tr.difference(&or) {
        out.push(format!("schema {name}: {k} required only in Outpost's"));
    }
    for k in or.difference(&tr) {
        out.push(format!("schema {name}: {k} required only here"));
    }
}

/// The differences, and the response-only properties only we mark required.
fn differences(theirs: &Value, ours: &Value) -> (Vec<String>, Vec<String>) {
    let mut out = Vec::new();
    let empty = serde_json::Map::new();
    let tpaths = theirs["paths"].as_object().unwrap_or(&empty);
    let opaths = ours["paths"].as_object().unwrap_or(&empty);
    for (path, titem) in tpaths {
        let Some(oitem) = opaths.get(path) else {
            out.push(format!("path {path}: only in Outpost's"));
            continue;
        };
        let methods = |v: &Value| -> BTreeSet<String> {
            v.as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| ["get", "put", "post", "patch", "delete"].contains(&k.as_str()))
                .map(|(k, _)| k.clone())
                .collect()
        };
        let (tm, om) = (methods(titem), methods(oitem));
        for m in tm.difference(&om) {
            out.push(format!("{} {path}: only in Outpost's", m.to_uppercase()));
        }
        for m in om.difference(&tm) {
            out.push(format!("{} {path}: only here", m.to_uppercase()));
        }
        for m in tm.intersection(&om) {
            let (top, oop) = (&titem[m], &oitem[m]);
            let at = format!("{} {path}", m.to_uppercase());
            if top["operationId"] != oop["operationId"] {
                out.push(format!(
                    "{at}: operationId {} in Outpost's, {} here",
                    top["operationId"], oop["operationId"]
                ));
            }
            let (tp, op) = (params(titem, top), params(oitem, oop));
            for (k, (treq, tshape)) in &tp {
                match op.get(k) {
                    None => out.push(format!("{at}: {} parameter {} only in Outpost's", k.0, k.1)),
                    Some((oreq, oshape)) => {
                        if treq != oreq {
                            out.push(format!(
                                "{at}: parameter {} required {treq} in Outpost's, {oreq} here",
                                k.1
                            ));
                        }
                        if tshape != oshape {
                            out.push(format!(
                                "{at}: parameter {} is {tshape} in Outpost's, {oshape} here",
                                k.1
                            ));
                        }
                    }
                }
            }
            for k in op.keys().filter(|k| !tp.contains_key(*k)) {
                out.push(format!("{at}: {} parameter {} only here", k.0, k.1));
            }
            let body = |v: &Value| {
                v.get("requestBody").map(|b| {
                    (
                        b.get("required").and_then(Value::as_bool).unwrap_or(false),
                        b.pointer("/content/application~1json/schema")
                            .map(shape)
                            .unwrap_or_default(),
                    )
                })
            };
            if body(top) != body(oop) {
                out.push(format!(
                    "{at}: request body {:?} in Outpost's, {:?} here",
                    body(top),
                    body(oop)
                ));
            }
            let (ts, os) = (success(top), success(oop));
            if ts != os {
                out.push(format!("{at}: success responses {ts:?} in Outpost's, {os:?} here"));
            }
        }
    }
    for path in opaths.keys().filter(|p| !tpaths.contains_key(*p)) {
        out.push(format!("path {path}: only here"));
    }
    let tschemas = theirs
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let oschemas = ours
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (name, t) in tschemas {
        match oschemas.get(name) {
            None => out.push(format!("schema {name}: only in Outpost's")),
            Some(o) => compare_schema(name, t, o, &mut out),
        }
    }
    for name in oschemas.keys().filter(|n| !tschemas.contains_key(*n)) {
        out.push(format!("schema {name}: only here"));
    }
    let requests = request_schemas(ours);
    let (mut kept, mut promised) = (Vec::new(), Vec::new());
    for d in out {
        let schema = d
            .strip_prefix("schema ")
            .and_then(|r| r.split(':').next())
            .unwrap_or("");
        if d.ends_with(" required only here") && !requests.contains(schema) {
            promised.push(d);
        } else {
            kept.push(d);
        }
    }
    kept.sort();
    (kept, promised)
}

#[tokio::test]
async fn the_served_openapi_document_differs_from_outposts_only_where_listed() {
    let path = contract_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let theirs: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let s = Server::start(&[]).await;
    // Public: no token.
    let api = Api::with_token(&s, "");
    let r = api.get("/openapi.json").await;
    assert_eq!(r.status, 200, "{}", r.text);
    let ours = r.body;
    assert_eq!(ours["openapi"], "3.1.0");
    let (found, promised) = differences(&theirs, &ours);
    let unlisted: Vec<&String> = found.iter().filter(|d| !INTENDED.iter().any(|p| glob(p, d))).collect();
    let stale: Vec<&&str> = INTENDED.iter().filter(|p| !found.iter().any(|d| glob(p, d))).collect();
    assert!(
        unlisted.is_empty() && stale.is_empty(),
        "{} differences from Outpost's contract are not listed as intended:\n{}\n\nlisted but no longer found:\n{}",
        unlisted.len(),
        unlisted
            .iter()
            .map(|d| format!("    \"{d}\","))
            .collect::<Vec<_>>()
            .join("\n"),
        stale
            .iter()
            .map(|d| format!("    \"{d}\","))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    println!(
        "compared {} paths and {} schemas of Outpost's contract: {} differences, all intended ({} entries); \
         {} response properties only we mark required",
        theirs["paths"].as_object().map_or(0, |p| p.len()),
        theirs
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .map_or(0, |p| p.len()),
        found.len(),
        INTENDED.len(),
        promised.len()
    );
}

/// The server takes an empty value of an optional config or credentials
/// field as "not set" (no pattern or option is checked against it) and
/// answers with what it stored, so each such field's schema must admit "".
/// Schemathesis found one that did not: an `aws_eventbridge` destination
/// saved with `config.endpoint: ""` came back failing the endpoint's pattern.
#[tokio::test]
async fn a_destination_with_an_optional_field_left_empty_matches_its_own_schema() {
    let s = Server::start(&[]).await;
    let api = Api::admin(&s);
    let doc = api.get("/openapi.json").await.body;
    let schemas = doc["components"]["schemas"].as_object().expect("components.schemas");
    let mut checked = 0;
    for (name, schema) in schemas {
        let full = name.ends_with("Config") || name.ends_with("Credentials");
        let Some(props) = schema["properties"].as_object().filter(|_| full) else {
            continue;
        };
        let required: Vec<&str> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (key, p) in props.iter().filter(|(k, _)| !required.contains(&k.as_str())) {
            if let Some(pattern) = p["pattern"].as_str() {
                let re = regex::Regex::new(pattern).unwrap_or_else(|e| panic!("{name}.{key}: {pattern}: {e}"));
                assert!(
                    re.is_match(""),
                    "{name}.{key}: optional, but its pattern {pattern} refuses \"\""
                );
                checked += 1;
            }
            // Checkboxes ("true" / "false") are stored normalised, never "".
            let checkbox = p["enum"] == serde_json::json!(["true", "false"]);
            if let Some(values) = p["enum"].as_array().filter(|_| !checkbox) {
                assert!(
                    values.contains(&Value::from("")),
                    "{name}.{key}: optional, but its enum {values:?} lacks \"\""
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 0,
        "no optional field with a pattern or an enum: the test checked nothing"
    );

    // The case schemathesis found, end to end.
    api.tenant("empty-field").await;
    let created = api
        .post(
            "/tenants/empty-field/destinations",
            serde_json::json!({"type": "aws_eventbridge", "topics": "*",
                "config": {"region": "us-east-1", "endpoint": ""},
                "credentials": {"key": "k", "secret": "s"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let listed = api.get("/tenants/empty-field/destinations").await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    let endpoint = &listed.body[0]["config"]["endpoint"];
    let pattern = schemas["AWSEventBridgeConfig"]["properties"]["endpoint"]["pattern"]
        .as_str()
        .expect("the endpoint's pattern");
    let re = regex::Regex::new(pattern).expect("a pattern Rust's regex reads");
    assert!(
        endpoint.as_str().is_none_or(|v| re.is_match(v)),
        "config.endpoint {endpoint} does not match its schema's pattern {pattern}"
    );
}

/// Schemathesis (PyPI) against the document the server serves: generated
/// requests for every operation, positive and negative, bounded by examples
/// and time. No answer may be a 5xx, a status the document does not list
/// for the operation, or a body that does not match its schema.
#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let st = std::env::var("OUTRIDER_SCHEMATHESIS").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/outrider/tools/schemathesis-venv/bin/st")
    });
    assert!(
        std::path::Path::new(&st).exists(),
        "schemathesis is required for this test: {st} is missing (scripts/test.sh installs it; \
         or set OUTRIDER_SCHEMATHESIS to an `st` binary)"
    );
    // The guard on with no private network allowed: destinations the
    // generator invents are never dialled on this machine.
    let s = Server::start(&[("OUTRIDER_ALLOW_PRIVATE_DESTINATIONS", "false")]).await;
    let api = Api::admin(&s);
    // Something to find: a tenant, a destination, an event and its attempt.
    api.tenant("st-tenant").await;
    api.webhook(
        "st-tenant",
        "https://receiver.example/hook",
        serde_json::json!({"id": "st-dest"}),
    )
    .await;
    let r = api
        .publish(serde_json::json!({"id": "st-event", "tenant_id": "st-tenant", "topic": "t", "data": {"a": 1}}))
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let report = tempfile::tempdir().unwrap();
    let url = format!("{}/openapi.json", s.base());
    let dir = report.path().to_path_buf();
    // Schemathesis 4.32.5 sometimes stops on an error of its own (seen in CI:
    // Hypothesis' "Inconsistent results" while generating a case, and
    // "An internal error occurred" from urlsplit on a URL in a response it
    // was reading for links), with no failure found. Such a run says nothing
    // about the server, so it is run again, at most twice; a run with a
    // FAILURES section is never retried.
    let tool_error = |t: &str| {
        (t.contains("Inconsistent results") || t.contains("An internal error occurred")) && !t.contains("FAILURES")
    };
    let (mut out, mut text) = run_schemathesis(&st, &url, &dir).await;
    for _ in 0..2 {
        if out.status.success() || !tool_error(&text) {
            break;
        }
        println!("schemathesis: an error of the tool itself, not a finding; running it again");
        (out, text) = run_schemathesis(&st, &url, &dir).await;
    }
    assert!(
        out.status.success(),
        "schemathesis found problems (exit {:?}):\n{text}",
        out.status.code()
    );
}

async fn run_schemathesis(st: &str, url: &str, dir: &std::path::Path) -> (std::process::Output, String) {
    let (st2, url, dir) = (st.to_string(), url.to_string(), dir.to_path_buf());
    // Blocking: the test's runtime keeps serving nothing the run needs.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(&st2)
            .args(["--no-color", "run", &url])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,response_schema_conformance",
            ])
            .args([
                "--max-examples",
                "25",
                "--seed",
                "20261205",
                "--max-time",
                "150",
                "--workers",
                "2",
            ])
            .args(["--header", &format!("Authorization: Bearer {API_KEY}")])
            .args(["--request-timeout", "10"])
            .current_dir(dir)
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{st}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    println!("{text}");
    (out, text)
}
