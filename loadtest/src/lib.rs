//! Outrider's bundled load harness. It drives any Outpost-compatible server
//! (Outrider by default) with its own recording sink as the destination, and
//! measures the same sink with a plain keep-alive client as the ceiling, so
//! every report can state `engine deliveries/s ÷ raw client requests/s`.

pub mod broker;
pub mod client;
pub mod procstat;
pub mod report;
pub mod run;
pub mod scenario;
pub mod sink;

/// Pins the current thread to core `i` (modulo the core count) when given.
pub fn pin(core: Option<usize>) {
    if let Some(i) = core {
        if let Some(ids) = core_affinity::get_core_ids() {
            if let Some(id) = ids.get(i % ids.len().max(1)) {
                core_affinity::set_for_current(*id);
            }
        }
    }
}

/// A JSON object of about `n` bytes.
pub fn payload(n: usize) -> String {
    let filler = "x".repeat(n.saturating_sub(40));
    serde_json::json!({"user_id": "u_123", "pad": filler}).to_string()
}
