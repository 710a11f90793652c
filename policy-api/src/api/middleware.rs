//! Around every routed request: request id, structured log span, Prometheus metrics, and the
//! headers upstream adds (external: security headers and CORS origin echo; internal: HSTS).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::{EXTERNAL_ROUTES, INTERNAL_ROUTES, Route};
use crate::state::AppState;

pub const REQUEST_ID: &str = "x-vcap-request-id";

/// Longest incoming request id kept; Gorouter's are 36-character UUIDs.
const MAX_INCOMING_ID: usize = 64;

/// The client's request id as it may reach logs: at most [`MAX_INCOMING_ID`] characters of
/// letters, digits, `-`, `_`, `.` and `:`; anything else is dropped.
fn incoming_id(raw: &[u8]) -> String {
    raw.iter()
        .map(|&b| b as char)
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        .take(MAX_INCOMING_ID)
        .collect()
}

fn route_name(routes: &[Route], path: &str, method: &Method) -> &'static str {
    routes.iter().find(|r| r.path == path && r.method == method.as_str()).map(|r| r.name).unwrap_or("Other")
}

/// Runs the request inside a span with a request id (`<incoming>::<new>` when the client
/// sent one), records its metrics and echoes the id. OPTIONS is answered outside upstream's
/// logging wrapper: no request id, no metric.
async fn instrumented(routes: &[Route], req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    if method == Method::OPTIONS {
        return next.run(req).await;
    }
    let fresh = uuid::Uuid::new_v4().to_string();
    let incoming = req.headers().get(REQUEST_ID).map(|v| incoming_id(v.as_bytes())).unwrap_or_default();
    let request_id = if incoming.is_empty() { fresh } else { format!("{incoming}::{fresh}") };
    let span = tracing::info_span!("request", request_guid = %request_id, method = %method, path = %path);
    let mut resp = next.run(req).instrument(span.clone()).await;
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    let name = route_name(routes, &path, &method);
    let status = resp.status().as_u16().to_string();
    let elapsed = started.elapsed().as_secs_f64();
    metrics::counter!("c2c_http_requests_total", "route" => name, "status" => status).increment(1);
    metrics::histogram!("c2c_http_request_duration_seconds", "route" => name).record(elapsed);
    span.in_scope(|| tracing::debug!(status = resp.status().as_u16(), elapsed_ms = elapsed * 1e3, "done"));
    resp
}

pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = instrumented(EXTERNAL_ROUTES, req, next).await;
    let h = resp.headers_mut();
    h.insert("x-xss-protection", HeaderValue::from_static("1; mode=block"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("deny"));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("frame-ancestors 'none'"));
    if state.settings.tls {
        h.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    }
    let cors = &state.settings.allowed_cors_domains;
    if cors.iter().any(|d| d == "*") {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    } else if let Some(origin) = origin
        && origin.to_str().is_ok_and(|o| cors.iter().any(|d| d == o))
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    resp
}

pub async fn observe_internal(req: Request, next: Next) -> Response {
    let mut resp = instrumented(INTERNAL_ROUTES, req, next).await;
    resp.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_request_ids_are_short_and_plain() {
        assert_eq!(incoming_id(b"2f1c9a52-6f1e-4c8b-9d0a-5b2c7e8f9a10"), "2f1c9a52-6f1e-4c8b-9d0a-5b2c7e8f9a10");
        assert_eq!(incoming_id(b"a\r\nlevel=error msg=forged\x1b[31m"), "alevelerrormsgforged31m");
        assert_eq!(incoming_id("é\u{202e}x".as_bytes()), "x");
        assert_eq!(incoming_id(&[b'a'; 10_000]).len(), MAX_INCOMING_ID);
    }
}
