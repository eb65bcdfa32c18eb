//! The retry schedule (`RETRY_SCHEDULE`, `RETRY_INTERVAL_SECONDS`,
//! `MAX_RETRY_LIMIT`): how many automatic retries an attempt gets and when.

use std::time::Duration;

use super::sources::{comma_list, Sources};
use super::{invalid, ConfigError};

#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Explicit per-retry delays; when set, max retries = its length.
    pub schedule: Vec<Duration>,
    pub interval: Duration,
    pub max_limit: u32,
    /// `OUTRIDER_RETRY_SKIP_PERMANENT_FAILURES`: failures only the
    /// destination's owner can fix (refused credentials, a forbidden
    /// address) wait for a manual retry instead of the schedule. Off by
    /// default: Outpost retries every failure on the schedule.
    pub skip_permanent: bool,
}

impl RetryConfig {
    /// Number of automatic retries after the first attempt.
    pub fn max_retries(&self) -> u32 {
        if self.schedule.is_empty() {
            self.max_limit
        } else {
            self.schedule.len() as u32
        }
    }

    /// The longest delay the schedule ever waits: what a destination's
    /// `Retry-After` is capped at.
    pub fn max_delay(&self) -> Duration {
        if self.schedule.is_empty() {
            self.delay(self.max_limit.max(1))
        } else {
            self.schedule.iter().copied().max().unwrap_or_default()
        }
    }

    /// Delay before retry number `n` (1-based): `schedule[n-1]` or `interval * 2^(n-1)`.
    pub fn delay(&self, n: u32) -> Duration {
        let i = n.saturating_sub(1);
        if let Some(d) = self.schedule.get(i as usize) {
            return *d;
        }
        let factor = 1u64.checked_shl(i.min(40)).unwrap_or(u64::MAX);
        self.interval
            .checked_mul(factor.min(u32::MAX as u64) as u32)
            .unwrap_or(Duration::from_secs(u32::MAX as u64))
    }
}

pub(super) fn read(src: &Sources) -> Result<RetryConfig, ConfigError> {
    let retry_schedule = match src.non_empty("RETRY_SCHEDULE") {
        None => vec![],
        Some(v) => comma_list(v)
            .iter()
            .map(|s| match s.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Duration::from_secs(n)),
                _ => Err(invalid(
                    "RETRY_SCHEDULE",
                    format!("each delay must be an integer number of seconds >= 1, got {s:?}"),
                )),
            })
            .collect::<Result<_, _>>()?,
    };
    let retry_interval: u64 = src.num("RETRY_INTERVAL_SECONDS", 30)?;
    if retry_interval < 1 {
        return Err(invalid("RETRY_INTERVAL_SECONDS", "must be >= 1"));
    }
    Ok(RetryConfig {
        schedule: retry_schedule,
        interval: Duration::from_secs(retry_interval),
        max_limit: src.num("MAX_RETRY_LIMIT", 10)?,
        skip_permanent: src.bool("OUTRIDER_RETRY_SKIP_PERMANENT_FAILURES", false)?,
    })
}
