//! Request parsing: JSON bodies with Outpost's error shapes, array query
//! parameters in their three forms, time filters and seek-pagination input.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;
use crate::AppState;

/// Largest request body accepted (publish payloads included).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// How much of an oversize body is read (and dropped) before answering 413.
const DRAIN_LIMIT_BYTES: usize = 32 * 1024 * 1024;
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A JSON body: syntax or type errors and an empty body give 422 `invalid JSON`,
/// an oversize body 413.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = RawBody::from_request(req, state).await?.0;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid_json());
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|_| ApiError::invalid_json())
    }
}

/// The raw body, size-limited.
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &AppState) -> Result<Self, Self::Rejection> {
        use http_body_util::BodyExt;
        let mut body = req.into_body();
        let mut buf = bytes::BytesMut::new();
        let mut seen: usize = 0;
        let read = async {
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Err(ApiError::invalid_json());
                };
                if let Ok(data) = frame.into_data() {
                    seen += data.len();
                    if seen <= MAX_BODY_BYTES {
                        buf.extend_from_slice(&data);
                    } else if seen > DRAIN_LIMIT_BYTES {
                        break;
                    }
                }
            }
            Ok(())
        };
        // Past the limit the rest is read and dropped (bounded in bytes and
        // time), so the client is not reset mid-upload and does see the 413.
        match tokio::time::timeout(DRAIN_TIMEOUT, read).await {
            Ok(Err(e)) => return Err(e),
            Err(_) if seen <= MAX_BODY_BYTES => {
                return Err(ApiError::Message(
                    StatusCode::REQUEST_TIMEOUT,
                    "request body was not received in time".into(),
                ))
            }
            _ => {}
        }
        if seen > MAX_BODY_BYTES {
            return Err(ApiError::Message(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            ));
        }
        Ok(RawBody(buf.freeze()))
    }
}

/// Decoded query pairs in order.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        Self {
            pairs: raw
                .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every `(key, value)` pair, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// `f[0]=a&f[1]=b` (by index), `f[]=a&f[]=b`, or plain `f=a&f=b` (only
    /// when no bracket form is present).
    pub fn array(&self, key: &str) -> Vec<String> {
        let mut indexed: BTreeMap<usize, String> = BTreeMap::new();
        let mut brackets = Vec::new();
        let mut plain = Vec::new();
        for (k, v) in &self.pairs {
            let Some(rest) = k.strip_prefix(key) else { continue };
            if rest.is_empty() {
                plain.push(v.clone());
            } else if rest == "[]" {
                brackets.push(v.clone());
            } else if let Some(i) = rest
                .strip_prefix('[')
                .and_then(|r| r.strip_suffix(']'))
                .and_then(|n| n.parse().ok())
            {
                indexed.insert(i, v.clone());
            }
        }
        if !indexed.is_empty() || !brackets.is_empty() {
            indexed
                .into_values()
                .chain(brackets)
                .filter(|s| !s.is_empty())
                .collect()
        } else {
            plain.into_iter().filter(|s| !s.is_empty()).collect()
        }
    }
}

/// `time[gte]` and friends, in Unix ms.
#[derive(Debug, Default, Clone, Copy)]
pub struct TimeRange {
    pub gte: Option<i64>,
    pub gt: Option<i64>,
    pub lte: Option<i64>,
    pub lt: Option<i64>,
}

pub fn time_range(q: &Query, field: &str) -> Result<TimeRange, ApiError> {
    let mut r = TimeRange::default();
    for (k, v) in &q.pairs {
        let Some(op) = k
            .strip_prefix(field)
            .and_then(|s| s.strip_prefix('['))
            .and_then(|s| s.strip_suffix(']'))
        else {
            continue;
        };
        let slot = match op {
            "gte" => &mut r.gte,
            "gt" => &mut r.gt,
            "lte" => &mut r.lte,
            "lt" => &mut r.lt,
            other => {
                return Err(ApiError::bad_request(format!(
                    "operator '{other}' is not supported, use 'gte', 'lte', 'gt', or 'lt'"
                )))
            }
        };
        *slot = Some(outrider_engine::timefmt::parse_query_time(v).ok_or_else(|| {
            ApiError::query(
                &format!("query.{field}[{op}]"),
                "invalid format, expected RFC3339 (e.g. 2024-01-01T00:00:00Z) or YYYY-MM-DD",
            )
        })?);
    }
    Ok(r)
}
