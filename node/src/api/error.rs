//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`. The SDKs raise
//! them by status (`BadRequestError`, `NotFoundError`, ...) and dApps branch on `param` and
//! `code`, so both are set wherever one field or one known condition is to blame.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    /// The request field to blame.
    param: Option<String>,
    /// A machine-readable condition, as OpenAI names it (`model_not_found`, ...).
    code: Option<&'static str>,
    /// Seconds after which the client may retry (`Retry-After`), when it is only too early.
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, kind, message: message.into(), param: None, code: None, retry_after: None }
    }

    /// A `400` blaming the request field `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message).with_param(param)
    }

    /// A `404` for a model this gateway does not serve.
    pub fn model_not_found(asked: &str, served: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("model {asked:?} does not exist; this gateway serves {served:?}"),
        )
        .with_param("model")
        .with_code("model_not_found")
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// Tells the client to retry after `seconds`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<JsonRejection> for ApiError {
    /// A body that is not JSON is the client's error (400); one over the size limit (413),
    /// arriving too slowly (408) or not declared as JSON (415) keeps its own status.
    fn from(rejection: JsonRejection) -> Self {
        let status = match rejection {
            JsonRejection::MissingJsonContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ if body_timed_out(&rejection) => StatusCode::REQUEST_TIMEOUT,
            _ => match rejection.status() {
                StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::BAD_REQUEST,
            },
        };
        let message = format!("malformed request body: {}", rejection.body_text());
        ApiError::new(status, "invalid_request_error", message)
    }
}

/// Whether the body stopped arriving for longer than the edge's body timeout (the rejection
/// then only says it failed to buffer the body; the cause is in its source chain).
fn body_timed_out(rejection: &JsonRejection) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(rejection);
    while let Some(error) = cause {
        if error.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_the_param_and_code() {
        let body = ApiError::model_not_found("x", "y").body();
        assert_eq!(body["error"]["param"], "model");
        assert_eq!(body["error"]["code"], "model_not_found");
        let body = ApiError::invalid("max_tokens", "too many").body();
        assert_eq!(body["error"]["param"], "max_tokens");
        assert_eq!(body["error"]["code"], Value::Null);
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
}
