//! Time as Unix milliseconds internally, and Go-compatible RFC 3339 on the wire
//! (fractional seconds with trailing zeros trimmed, `Z` for UTC).

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// `2024-01-01T00:00:00.12Z` style: like Go's `time.Time` JSON at ms precision.
pub fn format_ms(ms: i64) -> String {
    let t = Utc.timestamp_millis_opt(ms).single().unwrap_or_default();
    let s = t.to_rfc3339_opts(SecondsFormat::Millis, true);
    // "....sss Z": trim trailing zeros of the fraction, and the dot if nothing is left.
    match s.rfind('.') {
        Some(dot) => {
            let frac = s[dot + 1..s.len() - 1].trim_end_matches('0');
            if frac.is_empty() {
                format!("{}Z", &s[..dot])
            } else {
                format!("{}.{}Z", &s[..dot], frac)
            }
        }
        None => s,
    }
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
