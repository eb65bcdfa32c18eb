//! One API error type. Its shape on the wire is Outpost's:
//! `{"status": <int>, "message": "<text>", "data": <array|object>?}`, and some
//! statuses (auth failures, missing destination) carry no body at all.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use outrider_engine::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A status with an empty body (401, 403, some 404s, 409).
    #[error("{0}")]
    Bare(StatusCode),
    #[error("{1}")]
    Message(StatusCode, String),
    /// 422 with the list of what is wrong.
    #[error("validation error")]
    Validation(Vec<String>),
    #[error("{1}")]
    WithData(StatusCode, String, Value),
    #[error("internal server error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid_json() -> Self {
        ApiError::Message(StatusCode::UNPROCESSABLE_ENTITY, "invalid JSON".into())
    }
    pub fn unprocessable(msg: impl Into<String>) -> Self {
        ApiError::Message(StatusCode::UNPROCESSABLE_ENTITY, msg.into())
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::Message(StatusCode::BAD_REQUEST, msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiError::Message(StatusCode::NOT_FOUND, msg.into())
    }
    /// 422 whose `data` is an object keyed by query parameter.
    pub fn query(field: &str, msg: &str) -> Self {
        ApiError::WithData(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation error".into(),
            json!({ field: msg }),
        )
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(m) => ApiError::not_found(m),
            EngineError::BadRequest(m) => ApiError::bad_request(m),
            EngineError::DestinationDisabled => ApiError::WithData(
                StatusCode::BAD_REQUEST,
                "Destination is disabled".into(),
                json!({"error": "destination_disabled"}),
            ),
            EngineError::Queue(e) => {
                tracing::error!(error = %e, "delivery queue unavailable");
                ApiError::Message(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "delivery queue unavailable, retry later".into(),
                )
            }
            EngineError::PublishInProgress => ApiError::Message(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "another publish of this event id is still in progress, retry later".into(),
            ),
            EngineError::Store(s) => ApiError::from(s),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Bare(s) => s.into_response(),
            ApiError::Message(s, m) => (s, Json(json!({"status": s.as_u16(), "message": m}))).into_response(),
            ApiError::Validation(list) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"status": 422, "message": "validation error", "data": list})),
            )
                .into_response(),
            ApiError::WithData(s, m, d) => {
                (s, Json(json!({"status": s.as_u16(), "message": m, "data": d}))).into_response()
            }
            ApiError::Internal(detail) => {
                // Details go to the log only; callers see a fixed message.
                tracing::error!(error = %detail, "internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"status": 500, "message": "internal server error"})),
                )
                    .into_response()
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

impl From<outrider_engine::store::StoreError> for ApiError {
    fn from(e: outrider_engine::store::StoreError) -> Self {
        use outrider_engine::store::StoreError;
        match e {
            StoreError::Unavailable(_) | StoreError::Unreachable { .. } => {
                tracing::error!(error = %e, "store unavailable");
                ApiError::Message(StatusCode::SERVICE_UNAVAILABLE, "store unavailable, retry later".into())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}
