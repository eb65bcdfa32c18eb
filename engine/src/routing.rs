//! Which destinations an event goes to: enabled, topic matches, filter matches,
//! and (when the event names one) the targeted destination only.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::model::{Destination, Event};

/// Ids of the matching destinations, in the order given.
pub fn matching(dests: &[Arc<Destination>], event: &Event) -> Vec<String> {
    // The filter input is built once, and only if some destination has a filter.
    let mut filter_input: Option<Value> = None;
    dests
        .iter()
        .filter(|d| event.destination_id.as_ref().is_none_or(|id| *id == d.id))
        .filter(|d| d.is_enabled() && crate::topics::matches(&d.topics, &event.topic))
        .filter(|d| match &d.filter {
            None => true,
            Some(f) if f.as_object().is_some_and(|o| o.is_empty()) => true,
            Some(f) => {
                let input = filter_input.get_or_insert_with(|| filter_document(event));
                crate::filter::matches(input, f)
            }
        })
        .map(|d| d.id.clone())
        .collect()
}

/// What a filter sees: `{"id","topic","time","metadata","data"}`.
pub fn filter_document(event: &Event) -> Value {
    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
    json!({
        "id": event.id,
        "topic": event.topic,
        "time": crate::timefmt::format_secs(event.time),
        "metadata": event.metadata,
        "data": data,
    })
}
