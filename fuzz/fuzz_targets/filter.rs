//! A destination's filter is tenant input and events are tenant input:
//! validating and matching must never panic or recurse without bound.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (schema, input) = text.split_once('\u{1}').unwrap_or((text, "{}"));
    let Ok(schema) = serde_json::from_str::<Value>(schema) else {
        return;
    };
    if outrider_engine::filter::validate(&schema).is_err() {
        return;
    }
    if let Ok(input) = serde_json::from_str::<Value>(input) {
        let _ = outrider_engine::filter::matches(&input, &schema);
    }
});
