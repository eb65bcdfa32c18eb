//! Time as Unix milliseconds internally, and Go-compatible RFC 3339 on the wire
//! (fractional seconds with trailing zeros trimmed, `Z` for UTC).

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// `2024-01-01T00:00:00.12Z` style: like Go's `time.Time` JSON at ms precision.
pub fn format_ms(ms: i64) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    trim_fraction(&t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// Seconds precision, as used in webhook timestamp headers and metadata.
pub fn format_secs(ms: i64) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Nanosecond-style RFC 3339 for `timestamp-ms` metadata.
pub fn format_nanos(ms: i64) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Go's `time.RFC3339Nano` in UTC: the fraction to the nanosecond with
/// trailing zeros trimmed (`2024-06-01T08:23:36.123456789Z`,
/// `2024-06-01T08:23:36.1Z`, `2024-06-01T08:23:36Z`). `ns` is within `ms`'s
/// millisecond.
pub fn format_rfc3339_nano(ms: i64, ns: u32) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
        + chrono::Duration::nanoseconds(i64::from(ns % 1_000_000));
    trim_fraction(&t.to_rfc3339_opts(SecondsFormat::Nanos, true))
}

/// `…ss.fffZ` with the fraction's trailing zeros trimmed, and the dot when
/// nothing is left of it, as Go writes times.
fn trim_fraction(s: &str) -> String {
    match (s.rfind('.'), s.strip_suffix('Z')) {
        (Some(dot), Some(body)) => {
            let frac = body[dot + 1..].trim_end_matches('0');
            if frac.is_empty() {
                format!("{}Z", &body[..dot])
            } else {
                format!("{}.{}Z", &body[..dot], frac)
            }
        }
        _ => s.to_string(),
    }
}

/// Parses RFC 3339 (any precision, any offset) into Unix ms and the
/// nanoseconds within that millisecond.
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| (t.timestamp_millis(), t.timestamp_subsec_nanos() % 1_000_000))
}

/// Now, as [`parse_rfc3339`] gives a time.
pub fn now_ms_ns() -> (i64, u32) {
    let t = Utc::now();
    (t.timestamp_millis(), t.timestamp_subsec_nanos() % 1_000_000)
}

/// Parses RFC 3339 (any precision, any offset) into Unix ms.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

/// RFC 3339 or `YYYY-MM-DD` (UTC midnight), as the list filters accept.
pub fn parse_query_time(s: &str) -> Option<i64> {
    parse_rfc3339_ms(s).or_else(|| {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|dt| dt.and_utc().timestamp_millis())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_fraction() {
        assert_eq!(format_ms(1_704_067_200_000), "2024-01-01T00:00:00Z");
        assert_eq!(format_ms(1_704_067_200_120), "2024-01-01T00:00:00.12Z");
        assert_eq!(parse_rfc3339_ms("2024-01-01T00:00:00.12Z"), Some(1_704_067_200_120));
        assert_eq!(parse_query_time("2024-01-01"), Some(1_704_067_200_000));
        assert_eq!(format_secs(1_704_067_200_999), "2024-01-01T00:00:00Z");
    }
}
