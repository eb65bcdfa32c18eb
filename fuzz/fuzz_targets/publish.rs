//! `POST /publish` bodies and publish-queue messages are untrusted: parsing
//! must refuse bad input with an error, never panic.
#![no_main]
use std::collections::HashMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use outrider_engine::config::{Config, Sources};
use outrider_engine::ids::IdGenerator;

fn config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let values: HashMap<String, String> = [("API_KEY", "k"), ("AES_ENCRYPTION_SECRET", "s")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_sources(&Sources::from_map(values)).expect("a valid configuration")
    })
}

fuzz_target!(|data: &[u8]| {
    let cfg = config();
    let ids = IdGenerator::new(cfg.idgen);
    let _ = outrider_engine::publish::parse(data, cfg, &ids);
});
