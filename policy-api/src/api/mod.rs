//! The HTTP surface: the route table (the one list the router is built from and the spec is
//! checked against), the external handlers and the middleware around them.

pub mod error;
pub mod external;
pub mod extract;
pub mod internal;
pub mod middleware;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, get, on, options, post};

use crate::state::AppState;

/// One served route. `path` uses `{version}` for the API version segment; every such path
/// exists for `v0` and `v1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Upstream's name, also the metric label.
    pub name: &'static str,
    pub method: &'static str,
    pub path: &'static str,
}

const fn route(name: &'static str, method: &'static str, path: &'static str) -> Route {
    Route { name, method, path }
}

/// The external API, in upstream's registration order (which fixes the order of methods in
/// CORS `Access-Control-Allow-Methods`).
pub const EXTERNAL_ROUTES: &[Route] = &[
    route("Uptime", "GET", "/"),
    route("Uptime", "GET", "/networking"),
    route("Health", "GET", "/health"),
    route("WhoAmI", "GET", "/networking/{version}/external/whoami"),
    route("CreatePolicies", "POST", "/networking/{version}/external/policies"),
    route("DeletePolicies", "POST", "/networking/{version}/external/policies/delete"),
    route("PoliciesIndex", "GET", "/networking/{version}/external/policies"),
    route("Cleanup", "POST", "/networking/{version}/external/policies/cleanup"),
    route("TagsIndex", "GET", "/networking/{version}/external/tags"),
];

/// The cells' API (mTLS listener). Any `{version}` segment is accepted, as upstream; the
/// spec documents `v1`.
pub const INTERNAL_ROUTES: &[Route] = &[
    route("CreateTags", "PUT", "/networking/v1/internal/tags"),
    route("InternalPolicies", "GET", "/networking/{version}/internal/policies"),
    route("InternalPoliciesLastUpdated", "GET", "/networking/{version}/internal/policies_last_updated"),
    route("InternalSecurityGroups", "GET", "/networking/{version}/internal/security_groups"),
    route("LeasesIndex", "GET", "/leases"),
    route("LeasesAcquire", "PUT", "/leases/acquire"),
    route("LeasesRenew", "PUT", "/leases/renew"),
    route("LeasesRelease", "PUT", "/leases/release"),
    route("RegisterCell", "PUT", "/v1/cells/{cell}/registrations"),
    route("DeregisterCell", "DELETE", "/v1/cells/{cell}/registrations"),
    route("Registrations", "GET", "/v1/registrations"),
    route("Registration", "GET", "/v1/registration/{hostname}"),
    route("InternalHealth", "GET", "/health"),
];

/// The cells' API routes whose requests may wait for a change (`wait=`).
const WATCH_ROUTES: [&str; 3] = ["InternalPolicies", "InternalSecurityGroups", "Registrations"];

/// Whether a request is a watch: a `GET` of a watchable route of the cells' API with a
/// `wait` parameter. Watches wait as asked, outside the request deadline, and count
/// against `limits.max_watches` instead of `max_concurrent_requests`.
pub fn is_watch(uri: &axum::http::Uri) -> bool {
    let Some(query) = uri.query() else { return false };
    url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "wait")
        && INTERNAL_ROUTES.iter().any(|r| WATCH_ROUTES.contains(&r.name) && path_matches(r.path, uri.path()))
}

/// Routes of the metrics listener.
pub const METRICS_ROUTES: &[Route] = &[route("Metrics", "GET", "/metrics")];

/// Every distinct path of `routes`, each with its methods in order, plus OPTIONS.
pub fn paths_with_methods(routes: &[Route]) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&'static str, Vec<&'static str>)> = Vec::new();
    for r in routes {
        match out.iter_mut().find(|(p, _)| *p == r.path) {
            Some((_, methods)) => methods.push(r.method),
            None => out.push((r.path, vec![r.method])),
        }
    }
    out
}

/// GET without axum's implicit HEAD: upstream answers HEAD with 405.
const GET: MethodFilter = MethodFilter::GET;

fn handler(name: &str, method: &str) -> MethodRouter<AppState> {
    match (name, method) {
        ("Uptime", _) => on(GET, external::uptime),
        ("Health", _) => on(GET, external::health),
        ("WhoAmI", _) => on(GET, external::whoami),
        ("CreatePolicies", _) => post(external::create_policies),
        ("DeletePolicies", _) => post(external::delete_policies),
        ("PoliciesIndex", _) => on(GET, external::list_policies),
        ("Cleanup", _) => post(external::cleanup),
        ("TagsIndex", _) => on(GET, external::tags),
        (other, m) => unreachable!("route table names {m} {other} without a handler"),
    }
}

fn internal_handler(name: &str) -> MethodRouter<AppState> {
    use axum::routing::{delete, put};
    match name {
        "CreateTags" => put(internal::create_tag),
        "InternalPolicies" => on(GET, internal::policies),
        "InternalPoliciesLastUpdated" => on(GET, internal::policies_last_updated),
        "InternalSecurityGroups" => on(GET, internal::security_groups),
        "LeasesIndex" => on(GET, internal::leases),
        "LeasesAcquire" => put(internal::acquire_lease),
        "LeasesRenew" => put(internal::renew_lease),
        "LeasesRelease" => put(internal::release_lease),
        "RegisterCell" => put(internal::register_cell),
        "DeregisterCell" => delete(internal::deregister_cell),
        "Registrations" => on(GET, internal::registrations),
        "Registration" => on(GET, internal::registration),
        "InternalHealth" => on(GET, external::health),
        other => unreachable!("route table names {other} without a handler"),
    }
}

/// The cells' API router (serve it behind mTLS only).
pub fn internal_router(state: AppState) -> Router {
    let mut router: Router<AppState> = Router::new();
    for (path, _) in paths_with_methods(INTERNAL_ROUTES) {
        let mut method_router: MethodRouter<AppState> = MethodRouter::new();
        for r in INTERNAL_ROUTES.iter().filter(|r| r.path == path) {
            method_router = method_router.merge(internal_handler(r.name));
        }
        router = router.route(path, method_router);
    }
    router.route_layer(axum::middleware::from_fn(middleware::observe_internal)).fallback(not_found).with_state(state)
}

/// The external API router. Unknown paths get Go's `404 page not found`, known paths with
/// another method a `405` with `Allow`.
pub fn router(state: AppState) -> Router {
    let mut router: Router<AppState> = Router::new();
    for (path, methods) in paths_with_methods(EXTERNAL_ROUTES) {
        let mut method_router: MethodRouter<AppState> = MethodRouter::new();
        for m in &methods {
            let name = EXTERNAL_ROUTES.iter().find(|r| r.path == path && r.method == *m).map(|r| r.name).unwrap_or("");
            method_router = method_router.merge(handler(name, m));
        }
        let allow = methods.iter().copied().chain(["OPTIONS"]).collect::<Vec<_>>().join(",");
        method_router = method_router.merge(options(move |state, headers| external::preflight(state, headers, allow)));
        // axum would answer HEAD through the GET handler; upstream does not route HEAD.
        method_router = method_router.on(MethodFilter::HEAD, method_not_allowed);
        router = router.route(path, method_router);
    }
    router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), middleware::observe))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}

/// Go's 405: `Allow` lists the methods registered for the path (comma and space, as Go's
/// router joins them).
async fn method_not_allowed(uri: axum::http::Uri) -> Response {
    let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n");
    let allowed: Vec<&str> = paths_with_methods(EXTERNAL_ROUTES)
        .into_iter()
        .find(|(template, _)| path_matches(template, uri.path()))
        .map(|(_, methods)| methods.into_iter().chain(["OPTIONS"]).collect())
        .unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
        resp.headers_mut().insert(header::ALLOW, v);
    }
    resp
}

/// Whether `path` fits `template`, where a `{name}` segment matches any one segment.
fn path_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| (t.starts_with('{') && t.ends_with('}')) || t == p)
}

fn text(status: StatusCode, body: &'static str) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// The metrics listener: Prometheus text at `/metrics`.
pub fn metrics_router(handle: metrics_exporter_prometheus::PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move {
                let mut resp = handle.render().into_response();
                resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
                resp
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::{is_watch, path_matches};

    #[test]
    fn watches_are_the_cells_api_waits_only() {
        let watch = |u: &str| is_watch(&u.parse().unwrap());
        assert!(watch("/networking/v1/internal/policies?id=a&wait=30s"));
        assert!(watch("/networking/v0/internal/security_groups?wait=1s&space_guids=s"));
        assert!(watch("/v1/registrations?wait=25s"));
        assert!(!watch("/networking/v1/internal/policies?id=a"), "no wait");
        assert!(!watch("/networking/v1/internal/policies?id=await=1"), "not the parameter");
        assert!(!watch("/networking/v1/external/policies?wait=30s"), "the external API never waits");
        assert!(!watch("/leases?wait=30s"));
        assert!(!watch("/networking/v1/internal/policies/x?wait=30s"));
    }

    #[test]
    fn templates_match_one_segment_per_parameter() {
        assert!(path_matches("/networking/{version}/external/tags", "/networking/v1/external/tags"));
        assert!(!path_matches("/networking/{version}/external/tags", "/networking/v1/external/tags/x"));
        assert!(!path_matches("/", "/health"));
        assert!(path_matches("/", "/"));
    }
}
