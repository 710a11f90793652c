//! Upstream's error body, `{"error": "<description>"}` (with the space after the colon),
//! always valid JSON here.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into() }
    }
    pub fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    pub fn unauthorized(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, m)
    }
    pub fn forbidden(m: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, m)
    }
    /// The request outlived its deadline (a database that stopped answering); nothing of it
    /// was committed.
    pub fn timed_out() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request did not finish in time (is the database reachable?); nothing was changed",
        )
    }

    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, m)
    }
}

/// The exact bytes of an error body.
pub fn error_body(message: &str) -> String {
    format!("{{\"error\": {}}}", serde_json::Value::String(message.to_string()))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("c2c_http_errors_total", "status" => self.status.as_u16().to_string()).increment(1);
        let mut resp = (self.status, error_body(&self.message)).into_response();
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// A JSON success body.
pub fn json_body(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut resp = (status, body.into()).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_escaped_and_keep_upstream_spacing() {
        assert_eq!(error_body("missing policies"), r#"{"error": "missing policies"}"#);
        assert_eq!(error_body(r#"invalid character '"'"#), r#"{"error": "invalid character '\"'"}"#);
        let parsed: serde_json::Value = serde_json::from_str(&error_body("a\"b\\c\n")).unwrap();
        assert_eq!(parsed["error"], "a\"b\\c\n");
    }
}
