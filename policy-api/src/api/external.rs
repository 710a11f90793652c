//! Handlers of the external (user-facing) API.

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, json_body};
use super::extract::{Admin, Version, Writer};
use crate::mapper::{self, ApiVersion};
use crate::policy::{Policy, PolicyFilter};
use crate::state::AppState;
use crate::store::{CreateLimits, StoreError};
use crate::{authz, cleanup as cleaner, uptime};

/// Largest request body, as upstream: 10 MiB.
pub const BODY_LIMIT: usize = 10 << 20;

pub async fn uptime(State(state): State<AppState>) -> Response {
    let mut resp =
        format!("Network policy server, up for {}\n", uptime::go_duration(state.started.elapsed())).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// Answers within its own deadline, so a busy connection pool shows as a failed check
/// instead of a hung probe.
pub async fn health(State(state): State<AppState>) -> Response {
    match tokio::time::timeout(state.settings.health_database_timeout, state.store.check()).await {
        Ok(Ok(())) => StatusCode::OK.into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "check database failed");
            ApiError::internal("check database failed").into_response()
        }
        Err(_) => {
            tracing::error!(timeout = ?state.settings.health_database_timeout, "check database timed out");
            ApiError::internal("check database failed").into_response()
        }
    }
}

pub async fn whoami(_v: Version, Admin(caller): Admin) -> Response {
    let body = serde_json::to_vec(&serde_json::json!({ "subject": caller.display_name() })).expect("serialisable");
    json_body(StatusCode::OK, body)
}

/// Reads at most [`BODY_LIMIT`] bytes (see [`read_body_within`]).
pub async fn read_body(body: Body, message: &'static str) -> Result<bytes::Bytes, ApiError> {
    read_body_within(body, BODY_LIMIT, message).await
}

/// Reads at most `limit` bytes. An oversized body is still drained (up to a cap) so the
/// client, which is usually still sending, gets to read the 400 instead of a reset. A body
/// that stops arriving fails at the listener's body-read deadline.
pub async fn read_body_within(body: Body, limit: usize, message: &'static str) -> Result<bytes::Bytes, ApiError> {
    use futures::StreamExt;
    let drain_cap = 8 * limit;
    let mut stream = body.into_data_stream();
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ApiError::bad_request(message))?;
        seen += chunk.len();
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > drain_cap {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::bad_request(message));
    }
    Ok(buf.freeze())
}

fn empty_ok() -> Response {
    json_body(StatusCode::OK, b"{}".to_vec())
}

async fn guard(state: &AppState, caller: &crate::auth::Identity, policies: &[Policy]) -> Result<(), ApiError> {
    if let Some((which, _)) = authz::non_guid(caller, policies) {
        return Err(ApiError::bad_request(format!(
            "mapper: validate policies: invalid {which} id: not a Cloud Controller app guid"
        )));
    }
    let named = crate::policy::apps_of(policies).len();
    if !caller.is_admin() && named > state.settings.max_apps_per_request {
        return Err(ApiError::bad_request(format!(
            "too many applications in one request: {named}; at most {} (max_apps_per_request)",
            state.settings.max_apps_per_request
        )));
    }
    match authz::may_change(&state.cc, caller, policies).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::forbidden("one or more applications cannot be found or accessed")),
        Err(e) => {
            tracing::error!(error = %e, "check access failed");
            Err(ApiError::internal("check access failed"))
        }
    }
}

pub async fn create_policies(
    State(state): State<AppState>,
    Version(version): Version,
    Writer(caller): Writer,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, "failed reading request body").await?;
    let policies = mapper::policies_from_body(&bytes, version).map_err(|e| ApiError::bad_request(e.to_string()))?;
    guard(&state, &caller, &policies).await?;
    let mut budget = match caller.is_admin() {
        true => None,
        false => Some(state.tag_budget.hold(&caller.subject_id).await),
    };
    let limits = match &budget {
        None => CreateLimits::default(),
        Some(held) => CreateLimits {
            max_per_source: Some(state.settings.max_policies_per_app_source),
            max_new_tags: Some(held.remaining()),
        },
    };
    let count = policies.len();
    let written = state.writes.create(policies, limits).await.map_err(|e| match e {
        StoreError::QuotaExceeded => ApiError::forbidden("policy quota exceeded"),
        StoreError::Deadline(_) => ApiError::timed_out(),
        StoreError::CaseConflict { .. } | StoreError::TypeConflict { .. } => {
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        StoreError::TagBudget { .. } => {
            metrics::counter!("c2c_tag_budget_refusals_total").increment(1);
            tracing::warn!(userName = caller.display_name(), error = %e, "tag budget exceeded");
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.to_string())
        }
        e => {
            tracing::error!(error = %e, "database create failed");
            ApiError::internal("database create failed")
        }
    })?;
    if let Some(held) = budget.as_mut() {
        held.spend(written.new_tags);
    }
    drop(budget);
    tracing::info!(policies = count, userName = caller.display_name(), "created-policies");
    Ok(empty_ok())
}

pub async fn delete_policies(
    State(state): State<AppState>,
    Version(version): Version,
    Writer(caller): Writer,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body, "invalid request body").await?;
    let policies = mapper::policies_from_body(&bytes, version).map_err(|e| ApiError::bad_request(e.to_string()))?;
    guard(&state, &caller, &policies).await?;
    let written = state.store.delete(&policies).await.map_err(|e| {
        tracing::error!(error = %e, "database delete failed");
        ApiError::internal("database delete failed")
    })?;
    state.snapshots.written(&written);
    tracing::info!(policies = policies.len(), userName = caller.display_name(), "deleted-policies");
    tracing::debug!(policies = ?policies, "deleted-policies");
    Ok(empty_ok())
}

/// First value of each of `id`, `source_id`, `dest_id` (upstream ignores repeats).
pub fn filter_from_query(query: Option<&str>) -> PolicyFilter {
    let mut id = None;
    let mut source = None;
    let mut dest = None;
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match k.as_ref() {
            "id" => &mut id,
            "source_id" => &mut source,
            "dest_id" => &mut dest,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(v.into_owned());
        }
    }
    PolicyFilter::from_query(id.as_deref(), source.as_deref(), dest.as_deref())
}

/// Answered from the in-memory snapshot, after one check that it is not older than the
/// database. Admins' answers are rendered once per snapshot and query.
pub async fn list_policies(
    State(state): State<AppState>,
    Version(version): Version,
    Writer(caller): Writer,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = filter_from_query(query.as_deref());
    let snapshot = state.snapshots.as_of_database(&state.store).await.map_err(|e| {
        tracing::error!(error = %e, "database read failed");
        ApiError::internal("database read failed")
    })?;
    let select = || -> Vec<&Policy> { snapshot.select(&filter).into_iter().map(|t| &t.policy).collect() };
    if caller.is_admin() {
        let key = format!("external:{version:?}:{}", query.as_deref().unwrap_or(""));
        let answer = snapshot.rendered(&key, || render(version, &select()));
        return Ok(json_body(StatusCode::OK, answer.body.clone()));
    }
    let selected = select();
    let visible = authz::visible(&state.cc, &caller, selected, |p| *p).await.map_err(|e| {
        tracing::error!(error = %e, "filter policies failed");
        ApiError::internal("filter policies failed")
    })?;
    Ok(json_body(StatusCode::OK, render(version, &visible)))
}

fn render(version: ApiVersion, policies: &[&Policy]) -> Vec<u8> {
    match version {
        ApiVersion::V1 => mapper::list_v1(policies.iter().copied()),
        ApiVersion::V0 => mapper::list_v0(policies.iter().copied()),
    }
}

/// `?dry_run=true` reports what would be deleted; `?force=true` passes the safety valve.
pub async fn cleanup(
    State(state): State<AppState>,
    _v: Version,
    Admin(caller): Admin,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    // A flag is `true` or `false`; anything else is refused rather than read as `false`, so
    // a typo such as `force=yes` cannot quietly run a different cleanup than asked for.
    let flag = |name: &str| -> Result<bool, ApiError> {
        let mut set = false;
        for (k, v) in url::form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
            match (k == name, v.as_ref()) {
                (false, _) => {}
                (true, "true") => set = true,
                (true, "false") => {}
                (true, _) => {
                    return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("{name} must be true or false")));
                }
            }
        }
        Ok(set)
    };
    let run = cleaner::Run { dry_run: flag("dry_run")?, force: flag("force")? };
    let stale = cleaner::run_once(&state.store, &state.cc, state.settings.cleanup_valve, run).await.map_err(|e| {
        tracing::error!(error = %e, userName = caller.display_name(), "policies cleanup failed");
        match e {
            cleaner::CleanupError::NoAdminRead | cleaner::CleanupError::TooMany { .. } => {
                ApiError::new(StatusCode::CONFLICT, e.to_string())
            }
            _ => ApiError::internal("policies cleanup failed"),
        }
    })?;
    state.snapshots.changed();
    // Always the v1 shape, also under /v0/, as upstream.
    Ok(json_body(StatusCode::OK, mapper::list_v1(&stale)))
}

pub async fn tags(State(state): State<AppState>, _v: Version, Admin(_caller): Admin) -> Result<Response, ApiError> {
    let tags = state.store.tags().await.map_err(|e| {
        tracing::error!(error = %e, "database read failed");
        ApiError::internal("database read failed")
    })?;
    let body = serde_json::to_vec(&serde_json::json!({ "tags": tags })).expect("serialisable");
    Ok(json_body(StatusCode::OK, body))
}

/// CORS pre-flight: no authentication, empty body.
pub async fn preflight(State(_state): State<AppState>, _headers: HeaderMap, allow_methods: String) -> Response {
    let mut resp = StatusCode::OK.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&allow_methods) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization"));
    resp
}
