//! Alert rules (`ALERT_*`): consecutive failures, auto-disable, and how
//! exhausted-retry alerts are suppressed.

use std::time::Duration;

use super::sources::Sources;
use super::{invalid, ConfigError};
use crate::alerts::{AlertConfig, ExhaustedScope};

pub(super) fn read(src: &Sources) -> Result<AlertConfig, ConfigError> {
    // Unset means the default; set to an empty string turns the rule off.
    let consecutive_failure_count = match src.get("ALERT_CONSECUTIVE_FAILURE_COUNT").map(str::trim) {
        None => Some(100),
        Some("") => None,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                return Err(invalid(
                    "ALERT_CONSECUTIVE_FAILURE_COUNT",
                    format!("must be an integer >= 1 (or empty to turn it off), got {v:?}"),
                ))
            }
        },
    };
    let exhausted_retries_window = match src.get("ALERT_EXHAUSTED_RETRIES_WINDOW_SECONDS").map(str::trim) {
        None => Some(Duration::from_secs(3600)),
        Some("") => None,
        Some(v) => match v.parse::<u64>() {
            Ok(n) => Some(Duration::from_secs(n)),
            _ => {
                return Err(invalid(
                    "ALERT_EXHAUSTED_RETRIES_WINDOW_SECONDS",
                    format!("must be a whole number of seconds (0 = no suppression, empty = off), got {v:?}"),
                ))
            }
        },
    };
    let exhausted_retries_scope = match src
        .non_empty("OUTRIDER_ALERT_EXHAUSTED_RETRIES_SCOPE")
        .unwrap_or("event")
    {
        "event" => ExhaustedScope::Event,
        "destination" => ExhaustedScope::Destination,
        other => {
            return Err(invalid(
                "OUTRIDER_ALERT_EXHAUSTED_RETRIES_SCOPE",
                format!("expected event or destination, got {other:?}"),
            ))
        }
    };
    Ok(AlertConfig {
        consecutive_failure_count,
        auto_disable_destination: src.bool("ALERT_AUTO_DISABLE_DESTINATION", false)?,
        exhausted_retries_window,
        exhausted_retries_scope,
    })
}
