//! Scenario files (`loadtest/scenarios/*.yaml`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "one")]
    pub tenants: u64,
    #[serde(default = "one")]
    pub destinations_per_tenant: u64,
    #[serde(default = "kib")]
    pub payload_bytes: usize,
    /// Target events/s; 0 = as fast as the server accepts.
    #[serde(default)]
    pub rate: u64,
    #[serde(default = "ten")]
    pub duration_seconds: u64,
    /// Upper bound on events published, whatever the duration.
    #[serde(default = "max_events")]
    pub max_events: u64,
    #[serde(default = "concurrency")]
    pub publish_concurrency: usize,
    #[serde(default = "concurrency")]
    pub provision_concurrency: usize,
    /// How long to wait for the last deliveries after publishing stops.
    #[serde(default = "drain")]
    pub drain_seconds: u64,
    #[serde(default)]
    pub sink: SinkSpec,
    /// Extra environment for a server the harness starts.
    #[serde(default)]
    pub server_env: BTreeMap<String, String>,
    /// `webhook` (default: the harness's HTTP sink) or a broker type
    /// (`rabbitmq`, `redis_stream`, `nats`, `kafka`) on loopback, drained by the
    /// broker's own consumer; the baseline is then a raw client of that broker.
    #[serde(default)]
    pub destination_type: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    #[serde(default)]
    pub delay_ms: u64,
    /// Answer 500 to the first attempt of half of the deliveries.
    #[serde(default)]
    pub fail_half_first_attempts: bool,
}

fn one() -> u64 {
    1
}
fn kib() -> usize {
    1024
}
fn ten() -> u64 {
    10
}
fn max_events() -> u64 {
    1_000_000
}
fn concurrency() -> usize {
    64
}
fn drain() -> u64 {
    30
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let s: Scenario = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if s.tenants == 0 || s.destinations_per_tenant == 0 {
            return Err(format!(
                "{}: tenants and destinations_per_tenant must be >= 1",
                path.display()
            ));
        }
        if s.publish_concurrency == 0 || s.provision_concurrency == 0 {
            return Err(format!("{}: concurrency must be >= 1", path.display()));
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_scenarios_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            Scenario::load(&p).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
        assert!(n >= 4);
    }
}
