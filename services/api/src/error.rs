//! The API's error answers: JSON `{error, errorType?}` with the right status and headers.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use reel_events::ErrorType;
use serde_json::json;

use crate::auth::AuthError;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// For a person.
    pub message: String,
    /// The contract `errorType`, where one fits.
    pub error_type: Option<ErrorType>,
    /// `Retry-After` seconds.
    pub retry_after: Option<u64>,
    /// Extra fields of the body.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Whether to add `WWW-Authenticate: Bearer`.
    pub challenge: bool,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            error_type: None,
            retry_after: None,
            extra: serde_json::Map::new(),
            challenge: false,
        }
    }

    /// 400 `invalid_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message).typed(ErrorType::InvalidRequest)
    }

    /// 404 for a job the caller may not see (or that does not exist: the same answer).
    pub fn job_not_found(job_id: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, format!("job {job_id} not found")).typed(ErrorType::NotFound)
    }

    /// 403 `permission_denied`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, message).typed(ErrorType::PermissionDenied)
    }

    /// 503 with a `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message).retry_after(retry_after)
    }

    /// With an `errorType`.
    pub fn typed(mut self, error_type: ErrorType) -> ApiError {
        self.error_type = Some(error_type);
        self
    }

    /// With a `Retry-After`.
    pub fn retry_after(mut self, seconds: u64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }

    /// With an extra body field.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> ApiError {
        self.extra.insert(key.to_string(), value.into());
        self
    }
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> ApiError {
        if err.is_unavailable() {
            return ApiError::unavailable(format!("cannot check tokens right now: {err}"), 5);
        }
        if err.is_forbidden() {
            return ApiError::forbidden(err.to_string());
        }
        if err.is_bad_request() {
            return ApiError::bad_request(err.to_string());
        }
        let mut e = ApiError::new(StatusCode::UNAUTHORIZED, err.to_string());
        e.challenge = true;
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.message });
        if let Some(t) = self.error_type {
            body["errorType"] = t.as_str().into();
        }
        for (k, v) in self.extra {
            body[k] = v;
        }
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.challenge {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
