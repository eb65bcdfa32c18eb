//! Kafka, Kinesis and S3 key templates are tenant input: compiling must
//! refuse what it cannot bound, and a template that compiles must evaluate
//! without panicking or overflowing the stack.
#![no_main]
use libfuzzer_sys::fuzz_target;
use outrider_engine::destinations::template::Template;
use serde_json::{json, Value};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (expr, doc) = text.split_once('\u{1}').unwrap_or((text, ""));
    let Ok(template) = Template::compile(expr) else {
        return;
    };
    let doc = serde_json::from_str::<Value>(doc).unwrap_or_else(|_| {
        json!({"data": {"id": "c1", "n": 1234567, "list": [1, "a", null], "s": "xyz"},
               "metadata": {"event-id": "e1", "topic": "t"}})
    });
    let _ = template.key(&doc);
});
