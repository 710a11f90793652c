//! Handlers of the cells' API (mTLS): upstream's internal policy endpoints answered from the
//! in-memory snapshot with ETags and an optional watch, silk-controller's leases, and
//! discovery registrations.

use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{ApiError, json_body};
use super::external::read_body_within;
use crate::cell_identity::{CellIdentity, ClientCert};
use crate::discovery::{self, CellRegistrations};
use crate::gojson;
use crate::leases::Lease;
use crate::snapshot::{Answer, watch_answer};
use crate::state::AppState;
use crate::store::{LeaseStoreError, StoreError};

/// Bodies on the cells' API are small; this bounds what a client can make us buffer.
const BODY_LIMIT: usize = 4 << 20;

/// Query parameters, first occurrence of each (as upstream's router does).
fn first_params(query: Option<&str>) -> std::collections::HashMap<String, String> {
    let mut out = std::collections::HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

/// `wait=30s`, `wait=500ms` or `wait=30` (seconds).
pub fn parse_wait(v: &str) -> Option<Duration> {
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().ok().map(Duration::from_millis);
    }
    v.strip_suffix('s').unwrap_or(v).parse().ok().map(Duration::from_secs)
}

fn answer_response(answer: &Answer, if_none_match: Option<&str>) -> Response {
    let etag = HeaderValue::from_str(&answer.etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""));
    if if_none_match == Some(answer.etag.as_str()) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(header::ETAG, etag);
        return resp;
    }
    let mut resp = json_body(StatusCode::OK, answer.body.to_vec());
    resp.headers_mut().insert(header::ETAG, etag);
    resp
}

fn if_none_match(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())
}

/// The wait a request asks for, capped; a malformed value is a 400.
fn wait_of(state: &AppState, params: &std::collections::HashMap<String, String>) -> Result<Duration, ApiError> {
    match params.get("wait") {
        None => Ok(Duration::ZERO),
        Some(v) => parse_wait(v)
            .map(|d| d.min(state.internal.max_watch))
            .ok_or_else(|| ApiError::bad_request(format!("invalid wait {v:?}: use e.g. 30s or 500ms"))),
    }
}

/// `GET /networking/{version}/internal/policies[?id=a,b][&wait=30s]`.
pub async fn policies(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    // Only a request that waits needs its parameters decoded up front.
    let wait = if query.as_deref().is_some_and(|q| q.contains("wait=")) {
        wait_of(&state, &first_params(query.as_deref()))?
    } else {
        Duration::ZERO
    };
    let inm = if_none_match(&headers);
    let keys = || match first_params(query.as_deref()).get("id") {
        Some(ids) => ids.split(',').map(crate::watchers::app).collect(),
        None => vec![crate::watchers::ALL_POLICIES.to_string()],
    };
    let answer =
        watch_answer(&state.snapshots, keys, inm, wait, |s| s.policies_answer_for_query(query.as_deref())).await;
    Ok(answer_response(&answer, inm))
}

/// `GET .../policies_last_updated`: Unix nanoseconds of the last policy write.
pub async fn policies_last_updated(State(state): State<AppState>) -> Response {
    let ns = state.snapshots.current().versions.last_updated_ns;
    json_body(StatusCode::OK, ns.to_string().into_bytes())
}

/// `PUT /networking/v1/internal/tags` with `{"id": ..., "type": ...}` (keys any case).
pub async fn create_tag(State(state): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(body, BODY_LIMIT)
        .await
        .map_err(|_| ApiError::bad_request("failed reading request body"))?;
    let parse = || -> Result<(String, String), gojson::DecodeError> {
        let value = gojson::parse(&bytes)?;
        let empty = serde_json::Map::new();
        let obj = gojson::top_object(&value, "api.TagRequest")?.unwrap_or(&empty);
        let at = |p: &str| gojson::Field { go_struct: "TagRequest", path: p.to_string() };
        Ok((gojson::string(gojson::get(obj, "id"), &at("id"))?, gojson::string(gojson::get(obj, "type"), &at("type"))?))
    };
    let (id, kind) = parse().map_err(|_| ApiError::bad_request("failed parsing request body"))?;
    // Deviation: upstream tags an empty id too; a tag is for a named group.
    if id.is_empty() || kind.is_empty() {
        return Err(ApiError::bad_request("missing id or type"));
    }
    if let Some(why) = crate::ids::problem(&id).or(crate::ids::problem(&kind)) {
        return Err(ApiError::bad_request(format!("invalid id or type: {why}")));
    }
    let tag = state.store.get_or_create_tag(&id, &kind).await.map_err(|e| match e {
        StoreError::TypeConflict { .. } | StoreError::CaseConflict { .. } => {
            ApiError::new(StatusCode::CONFLICT, e.to_string())
        }
        e => {
            tracing::error!(error = %e, "database create failed");
            ApiError::internal("database create failed")
        }
    })?;
    state.snapshots.changed();
    Ok(json_body(StatusCode::OK, serde_json::to_vec(&tag).expect("JSON")))
}

/// `GET .../security_groups?space_guids=a,b&limit=N&from=ID[&wait=30s]`.
pub async fn security_groups(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = first_params(query.as_deref());
    let wait = wait_of(&state, &params)?;
    // Deviation: upstream answers 500 for a non-integer; it is the caller's mistake, so 400.
    // An empty value means the parameter is absent.
    let from = match params.get("from").filter(|v| !v.is_empty()) {
        Some(v) => v.parse::<i64>().map_err(|_| ApiError::bad_request("invalid value for 'from' parameter"))?,
        None => 0,
    };
    let limit = match params.get("limit").filter(|v| !v.is_empty()) {
        Some(v) => v.parse::<usize>().map_err(|_| ApiError::bad_request("invalid value for 'limit' parameter"))?,
        None => 0,
    };
    let spaces: Vec<String> = params
        .get("space_guids")
        .map(|s| s.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
        .unwrap_or_default();
    let key = format!("sg:{from}:{limit}:{}", spaces.join(","));
    let render = |s: &crate::snapshot::Snapshot| {
        s.rendered(&key, || {
            let (groups, next) = crate::asgs::page(&s.security_groups, &spaces, from, limit);
            serde_json::to_vec(&serde_json::json!({ "next": next, "security_groups": groups })).expect("JSON")
        })
    };
    let inm = if_none_match(&headers);
    let keys = || vec![crate::watchers::SECURITY_GROUPS.to_string()];
    let answer = watch_answer(&state.snapshots, keys, inm, wait, render).await;
    Ok(answer_response(&answer, inm))
}

fn lease_error(e: LeaseStoreError) -> ApiError {
    match e {
        LeaseStoreError::NoneAvailable => ApiError::new(StatusCode::CONFLICT, "no lease available"),
        LeaseStoreError::Invalid(m) => ApiError::new(StatusCode::CONFLICT, m),
        LeaseStoreError::Mismatch => ApiError::new(StatusCode::CONFLICT, "lease mismatch"),
        LeaseStoreError::Store(e) => {
            tracing::error!(error = %e, "lease store failed");
            ApiError::internal("database error")
        }
    }
}

async fn json_request<T: for<'de> Deserialize<'de>>(body: Body) -> Result<T, ApiError> {
    let bytes = read_body_within(body, BODY_LIMIT, "failed reading request body").await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))
}

/// `GET /leases`: the active leases.
pub async fn leases(State(state): State<AppState>) -> Result<Response, ApiError> {
    let leases = state.store.active_leases(state.internal.lease_expiration).await.map_err(|e| {
        tracing::error!(error = %e, "listing leases failed");
        ApiError::internal("database error")
    })?;
    Ok(json_body(StatusCode::OK, serde_json::to_vec(&serde_json::json!({ "leases": leases })).expect("JSON")))
}

#[derive(Deserialize)]
pub struct AcquireRequest {
    underlay_ip: String,
    #[serde(default)]
    single_overlay_ip: bool,
}

/// Refuses a request for another cell than the certificate's (see `cell_identity`).
fn acting_for(state: &AppState, cert: Option<&ClientCert>, underlay_ip: &str) -> Result<(), ApiError> {
    let cert = cert.cloned().unwrap_or_default();
    if state.internal.identity.allows(&cert, underlay_ip) {
        return Ok(());
    }
    metrics::counter!("c2c_cell_identity_refusals_total").increment(1);
    tracing::warn!(underlay_ip, "refused: the client certificate does not name this cell");
    Err(ApiError::new(StatusCode::FORBIDDEN, format!("the client certificate does not name the cell {underlay_ip}")))
}

pub async fn acquire_lease(
    State(state): State<AppState>,
    cert: Option<Extension<ClientCert>>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: AcquireRequest = json_request(body).await?;
    acting_for(&state, cert.as_deref(), &req.underlay_ip)?;
    let lease = state
        .store
        .acquire_lease(&state.internal.pool, &req.underlay_ip, req.single_overlay_ip, state.internal.lease_expiration)
        .await
        .map_err(lease_error)?;
    tracing::info!(underlay_ip = %lease.underlay_ip, overlay_subnet = %lease.overlay_subnet, "lease acquired");
    Ok(json_body(StatusCode::OK, serde_json::to_vec(&lease).expect("JSON")))
}

pub async fn renew_lease(
    State(state): State<AppState>,
    cert: Option<Extension<ClientCert>>,
    body: Body,
) -> Result<Response, ApiError> {
    let lease: Lease = json_request(body).await?;
    acting_for(&state, cert.as_deref(), &lease.underlay_ip)?;
    state.store.renew_lease(&state.internal.pool, &lease).await.map_err(lease_error)?;
    Ok(json_body(StatusCode::OK, b"{}".to_vec()))
}

#[derive(Deserialize)]
pub struct ReleaseRequest {
    underlay_ip: String,
}

pub async fn release_lease(
    State(state): State<AppState>,
    cert: Option<Extension<ClientCert>>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: ReleaseRequest = json_request(body).await?;
    acting_for(&state, cert.as_deref(), &req.underlay_ip)?;
    state.store.release_lease(&req.underlay_ip).await.map_err(|e| {
        tracing::error!(error = %e, "releasing lease failed");
        ApiError::internal("database error")
    })?;
    Ok(json_body(StatusCode::OK, b"{}".to_vec()))
}

fn store_failed(e: StoreError) -> ApiError {
    tracing::error!(error = %e, "registration store failed");
    ApiError::internal("database error")
}

/// `PUT /v1/cells/{cell}/registrations`: the cell's whole set of internal routes.
pub async fn register_cell(
    State(state): State<AppState>,
    Path(cell): Path<String>,
    cert: Option<Extension<ClientCert>>,
    body: Body,
) -> Result<Response, ApiError> {
    let req: CellRegistrations = json_request(body).await?;
    acting_for(&state, cert.as_deref(), &cell)?;
    if !(1..=3600).contains(&req.ttl_seconds) {
        return Err(ApiError::bad_request("ttl_seconds must be between 1 and 3600"));
    }
    for r in &req.registrations {
        if !discovery::valid_hostname(&r.hostname) {
            return Err(ApiError::bad_request(format!("invalid hostname {:?}", r.hostname)));
        }
        if r.ip.parse::<std::net::Ipv4Addr>().is_err() {
            return Err(ApiError::bad_request(format!("invalid IPv4 address {:?}", r.ip)));
        }
    }
    if state.internal.identity == CellIdentity::UnderlayIpSan {
        // A cell registers only addresses of its own subnet.
        let leases = state.store.active_leases(state.internal.lease_expiration).await.map_err(store_failed)?;
        let subnet = leases.iter().find(|l| l.underlay_ip == cell).map(|l| l.overlay_subnet.clone());
        for r in &req.registrations {
            if !subnet.as_deref().is_some_and(|s| crate::leases::subnet_contains(s, &r.ip)) {
                return Err(ApiError::bad_request(format!("{} is not an address of the cell {cell}'s subnet", r.ip)));
            }
        }
    }
    state
        .store
        .register_cell(&cell, &req.registrations, Duration::from_secs(req.ttl_seconds))
        .await
        .map_err(store_failed)?;
    state.snapshots.changed();
    Ok(json_body(StatusCode::OK, b"{}".to_vec()))
}

pub async fn deregister_cell(
    State(state): State<AppState>,
    Path(cell): Path<String>,
    cert: Option<Extension<ClientCert>>,
) -> Result<Response, ApiError> {
    acting_for(&state, cert.as_deref(), &cell)?;
    state.store.deregister_cell(&cell).await.map_err(store_failed)?;
    state.snapshots.changed();
    Ok(json_body(StatusCode::OK, b"{}".to_vec()))
}

/// `GET /v1/registrations[?wait=30s]`: the whole table, with ETag and watch.
pub async fn registrations(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let params = first_params(query.as_deref());
    let wait = wait_of(&state, &params)?;
    let inm = if_none_match(&headers);
    let keys = || vec![crate::watchers::REGISTRATIONS.to_string()];
    let answer = watch_answer(&state.snapshots, keys, inm, wait, |s| s.registrations_answer()).await;
    Ok(answer_response(&answer, inm))
}

/// `GET /v1/registration/{hostname}`, in the service-discovery controller's shape.
pub async fn registration(State(state): State<AppState>, Path(hostname): Path<String>) -> Response {
    let snapshot = state.snapshots.current();
    let ips = snapshot.registrations.get(&discovery::normalize(&hostname)).cloned().unwrap_or_default();
    let hosts: Vec<serde_json::Value> = ips
        .iter()
        .map(|ip| {
            serde_json::json!({"ip_address": ip, "last_check_in": "", "port": 0, "revision": "",
                "service": "", "service_repo_name": "", "tags": {}})
        })
        .collect();
    let body = serde_json::json!({"hosts": hosts, "env": "", "service": ""});
    json_body(StatusCode::OK, serde_json::to_vec(&body).expect("JSON"))
}
