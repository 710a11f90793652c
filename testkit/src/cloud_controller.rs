//! A Cloud Controller v3 double: the root document (with `network_policy_v1`), organizations,
//! spaces, apps and roles, paginated and filtered like the real API, and visible per token
//! the way Cloud Controller shows them (admins see everything, others their spaces).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::server::{Running, serve};
use crate::uaa::{Claims, Uaa};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Org {
    pub guid: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Space {
    pub guid: String,
    pub name: String,
    pub org: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct App {
    pub guid: String,
    pub name: String,
    pub space: String,
    #[serde(default = "started")]
    pub state: String,
}

fn started() -> String {
    "STARTED".to_string()
}

/// A role: `space_developer`, `space_manager`, `space_auditor`, `org_user`, ...
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Role {
    #[serde(rename = "type")]
    pub kind: String,
    pub user: String,
    #[serde(default)]
    pub space: Option<String>,
    #[serde(default)]
    pub org: Option<String>,
}

/// An application security group as Cloud Controller v3 holds it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SecurityGroup {
    pub guid: String,
    pub name: String,
    /// The v3 rule objects (`protocol`, `destination`, `ports`, ...).
    #[serde(default)]
    pub rules: Vec<Value>,
    #[serde(default)]
    pub running_default: bool,
    #[serde(default)]
    pub staging_default: bool,
    #[serde(default)]
    pub running_spaces: Vec<String>,
    #[serde(default)]
    pub staging_spaces: Vec<String>,
}

/// The world the double serves; also the format of fixture files (JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Fixture {
    #[serde(default)]
    pub orgs: Vec<Org>,
    #[serde(default)]
    pub spaces: Vec<Space>,
    #[serde(default)]
    pub apps: Vec<App>,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub security_groups: Vec<SecurityGroup>,
}

#[derive(Debug)]
struct Inner {
    world: RwLock<Fixture>,
    uaa: Uaa,
    policy_server_url: RwLock<Option<String>>,
    base: RwLock<String>,
    requests: AtomicU64,
    failing: std::sync::atomic::AtomicBool,
    ignore_guid_filter: std::sync::atomic::AtomicBool,
    latency_ms: AtomicU64,
    by_path: std::sync::Mutex<HashMap<String, u64>>,
}

/// A running Cloud Controller double.
#[derive(Clone, Debug)]
pub struct CloudController {
    inner: Arc<Inner>,
    running: Arc<Running>,
}

impl CloudController {
    /// Starts a double whose tokens are verified against `uaa`'s keys.
    pub async fn start(uaa: &Uaa, fixture: Fixture) -> std::io::Result<Self> {
        Self::start_on(uaa, fixture, None).await
    }

    pub async fn start_on(uaa: &Uaa, fixture: Fixture, addr: Option<SocketAddr>) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            world: RwLock::new(fixture),
            uaa: uaa.clone(),
            policy_server_url: RwLock::new(None),
            base: RwLock::new(String::new()),
            requests: AtomicU64::new(0),
            failing: std::sync::atomic::AtomicBool::new(false),
            ignore_guid_filter: std::sync::atomic::AtomicBool::new(false),
            latency_ms: AtomicU64::new(0),
            by_path: Default::default(),
        });
        let router = Router::new()
            .route("/", get(root))
            .route("/v3", get(v3_root))
            .route("/v3/apps", get(list_apps))
            .route("/v3/apps/{guid}", get(get_app))
            .route("/v3/spaces", get(list_spaces))
            .route("/v3/spaces/{guid}", get(get_space))
            .route("/v3/organizations", get(list_orgs))
            .route("/v3/organizations/{guid}", get(get_org))
            .route("/v3/roles", get(list_roles))
            .route("/v3/security_groups", get(list_security_groups))
            .layer(axum::middleware::from_fn_with_state(inner.clone(), observe))
            .with_state(inner.clone());
        let running = serve(router, addr).await?;
        *inner.base.write().expect("lock") = running.url();
        Ok(CloudController { inner, running: Arc::new(running) })
    }

    pub fn url(&self) -> String {
        self.running.url()
    }

    /// Where the root document's `network_policy_v0/v1` links point.
    pub fn set_policy_server_url(&self, url: &str) {
        *self.inner.policy_server_url.write().expect("lock") = Some(url.trim_end_matches('/').to_string());
    }

    pub fn add_org(&self, guid: &str, name: &str) {
        self.inner.world.write().expect("lock").orgs.push(Org { guid: guid.into(), name: name.into() });
    }

    pub fn add_space(&self, guid: &str, name: &str, org: &str) {
        self.inner.world.write().expect("lock").spaces.push(Space {
            guid: guid.into(),
            name: name.into(),
            org: org.into(),
        });
    }

    pub fn add_app(&self, guid: &str, name: &str, space: &str) {
        self.inner.world.write().expect("lock").apps.push(App {
            guid: guid.into(),
            name: name.into(),
            space: space.into(),
            state: started(),
        });
    }

    pub fn delete_app(&self, guid: &str) {
        self.inner.world.write().expect("lock").apps.retain(|a| a.guid != guid);
    }

    pub fn add_role(&self, kind: &str, user_guid: &str, space: &str) {
        self.inner.world.write().expect("lock").roles.push(Role {
            kind: kind.into(),
            user: user_guid.into(),
            space: Some(space.into()),
            org: None,
        });
    }

    /// Adds or replaces a security group.
    pub fn put_security_group(&self, group: SecurityGroup) {
        let mut world = self.inner.world.write().expect("lock");
        world.security_groups.retain(|g| g.guid != group.guid);
        world.security_groups.push(group);
    }

    pub fn delete_security_group(&self, guid: &str) {
        self.inner.world.write().expect("lock").security_groups.retain(|g| g.guid != guid);
    }

    /// Number of API requests served (not counting the root documents).
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// While set, every v3 request fails with 503, as a Cloud Controller in trouble would.
    pub fn set_failing(&self, failing: bool) {
        self.inner.failing.store(failing, Ordering::Relaxed);
    }

    /// Number of requests for `path` (such as `/v3/apps`), whatever their query.
    pub fn requests_for(&self, path: &str) -> u64 {
        self.inner.by_path.lock().expect("lock").get(path).copied().unwrap_or(0)
    }

    /// Every answer waits this long first, as a loaded Cloud Controller would (0 by default).
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.inner.latency_ms.store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// While set, `GET /v3/apps?guids=` answers every app the caller can see, as a Cloud
    /// Controller (or a proxy in front of it) that drops the filter would.
    pub fn set_ignore_guid_filter(&self, ignore: bool) {
        self.inner.ignore_guid_filter.store(ignore, Ordering::Relaxed);
    }
}

/// Counts requests per path and holds each for the configured latency.
async fn observe(State(cc): State<Arc<Inner>>, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    *cc.by_path.lock().expect("lock").entry(req.uri().path().to_string()).or_default() += 1;
    let ms = cc.latency_ms.load(Ordering::Relaxed);
    if ms > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    next.run(req).await
}

fn cc_error(status: StatusCode, title: &str, code: u32, detail: &str) -> Response {
    (status, Json(json!({"errors": [{"detail": detail, "title": title, "code": code}]}))).into_response()
}

fn not_found(what: &str) -> Response {
    cc_error(StatusCode::NOT_FOUND, "CF-ResourceNotFound", 10010, &format!("{what} not found"))
}

/// Who is asking, as Cloud Controller sees it from the bearer token.
struct Caller {
    claims: Claims,
}

impl Caller {
    fn is_admin(&self) -> bool {
        self.claims.scope.iter().any(|s| {
            s == "cloud_controller.admin"
                || s == "cloud_controller.admin_read_only"
                || s == "cloud_controller.global_auditor"
        })
    }

    fn spaces(&self, world: &Fixture) -> BTreeSet<String> {
        world.roles.iter().filter(|r| r.user == self.claims.sub).filter_map(|r| r.space.clone()).collect()
    }

    fn can_see_space(&self, world: &Fixture, space: &str) -> bool {
        self.is_admin() || self.spaces(world).contains(space)
    }

    fn can_see_org(&self, world: &Fixture, org: &str) -> bool {
        self.is_admin()
            || world.roles.iter().any(|r| r.user == self.claims.sub && r.org.as_deref() == Some(org))
            || world.spaces.iter().any(|s| s.org == org && self.spaces(world).contains(&s.guid))
    }
}

impl axum::extract::FromRequestParts<Arc<Inner>> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, cc: &Arc<Inner>) -> Result<Self, Response> {
        authenticate(cc, &parts.headers)
    }
}

#[allow(clippy::result_large_err)] // the error is the answer, returned at once
fn authenticate(cc: &Inner, headers: &HeaderMap) -> Result<Caller, Response> {
    cc.requests.fetch_add(1, Ordering::Relaxed);
    if cc.failing.load(Ordering::Relaxed) {
        return Err(cc_error(StatusCode::SERVICE_UNAVAILABLE, "CF-ServiceUnavailable", 10015, "unavailable"));
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bearer ").or_else(|| v.strip_prefix("Bearer ")));
    let claims = token.and_then(|t| cc.uaa.verify(t));
    match claims {
        Some(claims) => Ok(Caller { claims }),
        None => Err(cc_error(StatusCode::UNAUTHORIZED, "CF-InvalidAuthToken", 1000, "Invalid Auth Token")),
    }
}

fn list_param(q: &HashMap<String, String>, key: &str) -> Option<BTreeSet<String>> {
    q.get(key).map(|v| v.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect())
}

fn matches(filter: &Option<BTreeSet<String>>, value: &str) -> bool {
    filter.as_ref().is_none_or(|f| f.contains(value))
}

/// Paginates `items` like Cloud Controller v3 (`page`, `per_page` ≤ 5000, default 50).
fn paginate(base: &str, path: &str, q: &HashMap<String, String>, items: Vec<Value>) -> Response {
    let per_page: usize = match q.get("per_page").map(|v| v.parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if (1..=5000).contains(&n) => n,
        Some(_) => {
            return cc_error(
                StatusCode::BAD_REQUEST,
                "CF-UnprocessableEntity",
                10008,
                "Per page must be between 1 and 5000",
            );
        }
    };
    let page: usize = q.get("page").and_then(|v| v.parse().ok()).filter(|p| *p >= 1).unwrap_or(1);
    let total = items.len();
    let total_pages = total.div_ceil(per_page).max(1);
    let mut others: Vec<(String, String)> =
        q.iter().filter(|(k, _)| *k != "page" && *k != "per_page").map(|(k, v)| (k.clone(), v.clone())).collect();
    others.sort();
    let href = |p: usize| {
        let mut url = url::Url::parse(&format!("{base}{path}")).expect("own URL");
        {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &others {
                pairs.append_pair(k, v);
            }
            pairs.append_pair("page", &p.to_string());
            pairs.append_pair("per_page", &per_page.to_string());
        }
        json!({ "href": url.to_string() })
    };
    let resources: Vec<Value> = items.into_iter().skip((page - 1) * per_page).take(per_page).collect();
    Json(json!({
        "pagination": {
            "total_results": total,
            "total_pages": total_pages,
            "first": href(1),
            "last": href(total_pages),
            "next": if page < total_pages { href(page + 1) } else { Value::Null },
            "previous": if page > 1 { href(page - 1) } else { Value::Null },
        },
        "resources": resources,
    }))
    .into_response()
}

fn app_json(base: &str, app: &App) -> Value {
    json!({
        "guid": app.guid,
        "name": app.name,
        "state": app.state,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "lifecycle": {"type": "buildpack", "data": {"buildpacks": [], "stack": "cflinuxfs4"}},
        "relationships": {"space": {"data": {"guid": app.space}}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": {"href": format!("{base}/v3/apps/{}", app.guid)},
            "space": {"href": format!("{base}/v3/spaces/{}", app.space)},
        },
    })
}

fn space_json(base: &str, space: &Space) -> Value {
    json!({
        "guid": space.guid,
        "name": space.name,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "relationships": {"organization": {"data": {"guid": space.org}}, "quota": {"data": null}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": {"href": format!("{base}/v3/spaces/{}", space.guid)},
            "organization": {"href": format!("{base}/v3/organizations/{}", space.org)},
        },
    })
}

fn org_json(base: &str, org: &Org) -> Value {
    json!({
        "guid": org.guid,
        "name": org.name,
        "suspended": false,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "relationships": {"quota": {"data": null}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {"self": {"href": format!("{base}/v3/organizations/{}", org.guid)}},
    })
}

fn role_json(base: &str, index: usize, role: &Role) -> Value {
    let rel = |v: &Option<String>| match v {
        Some(g) => json!({"data": {"guid": g}}),
        None => json!({"data": null}),
    };
    json!({
        "guid": format!("role-{index}"),
        "type": role.kind,
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "relationships": {
            "user": {"data": {"guid": role.user}},
            "space": rel(&role.space),
            "organization": rel(&role.org),
        },
        "links": {"self": {"href": format!("{base}/v3/roles/role-{index}")}},
    })
}

async fn root(State(cc): State<Arc<Inner>>) -> Json<Value> {
    let base = cc.base.read().expect("lock").clone();
    let policy = cc.policy_server_url.read().expect("lock").clone().unwrap_or_else(|| base.clone());
    let uaa = cc.uaa.url();
    Json(json!({
        "links": {
            "self": {"href": base},
            "cloud_controller_v2": null,
            "cloud_controller_v3": {"href": format!("{base}/v3"), "meta": {"version": "3.180.0"}},
            "network_policy_v0": {"href": format!("{policy}/networking/v0/external")},
            "network_policy_v1": {"href": format!("{policy}/networking/v1/external")},
            "login": {"href": uaa},
            "uaa": {"href": uaa},
            "logging": null,
            "log_cache": null,
            "routing": null,
            "app_ssh": null,
        }
    }))
}

async fn v3_root(State(cc): State<Arc<Inner>>) -> Json<Value> {
    let base = cc.base.read().expect("lock").clone();
    Json(json!({"links": {"self": {"href": format!("{base}/v3")},
        "apps": {"href": format!("{base}/v3/apps")},
        "spaces": {"href": format!("{base}/v3/spaces")},
        "organizations": {"href": format!("{base}/v3/organizations")},
        "roles": {"href": format!("{base}/v3/roles")}}}))
}

async fn list_apps(State(cc): State<Arc<Inner>>, caller: Caller, Query(q): Query<HashMap<String, String>>) -> Response {
    let base = cc.base.read().expect("lock").clone();
    let world = cc.world.read().expect("lock");
    let (mut guids, names, spaces) = (list_param(&q, "guids"), list_param(&q, "names"), list_param(&q, "space_guids"));
    if cc.ignore_guid_filter.load(Ordering::Relaxed) {
        guids = None;
    }
    let orgs = list_param(&q, "organization_guids");
    let items: Vec<Value> = world
        .apps
        .iter()
        .filter(|a| matches(&guids, &a.guid) && matches(&names, &a.name) && matches(&spaces, &a.space))
        .filter(|a| orgs.is_none() || world.spaces.iter().any(|s| s.guid == a.space && matches(&orgs, &s.org)))
        .filter(|a| caller.can_see_space(&world, &a.space))
        .map(|a| app_json(&base, a))
        .collect();
    paginate(&base, "/v3/apps", &q, items)
}

async fn get_app(State(cc): State<Arc<Inner>>, caller: Caller, Path(guid): Path<String>) -> Response {
    let base = cc.base.read().expect("lock").clone();
    let world = cc.world.read().expect("lock");
    match world.apps.iter().find(|a| a.guid == guid && caller.can_see_space(&world, &a.space)) {
        Some(app) => Json(app_json(&base, app)).into_response(),
        None => not_found("App"),
    }
}

async fn list_spaces(
    State(cc): State<Arc<Inner>>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let base = cc.base.read().expect("lock").clone();
    let world = cc.world.read().expect("lock");
    let (guids, names, orgs) = (list_param(&q, "guids"), list_param(&q, "names"), list_param(&q, "organization_guids"));
    let items: Vec<Value> = world
        .spaces
        .iter()
        .filter(|s| matches(&guids, &s.guid) && matches(&names, &s.name) && matches(&orgs, &s.org))
        .filter(|s| caller.can_see_space(&world, &s.guid))
        .map(|s| space_json(&base, s))
        .collect();
    paginate(&base, "/v3/spaces", &q, items)
}

async fn get_space(State(cc): State<Arc<Inner>>, caller: Caller, Path(guid): Path<String>) -> Response {
    let base = cc.base.read().expect("lock").clone();
    let world = cc.world.read().expect("lock");
    match world.spaces.iter().find(|s| s.guid == guid && caller.can_see_space(&world, &s.guid)) {
        Some(space) => Json(space_json(&base, space)).into_response(),
        None => not_found("Space"),
    }
}

async fn list_orgs(State(cc): State<Arc<Inner>>, caller: Caller, Query(q): Query<HashMap<String, String>>) -> Response {
    let base = cc.base.read().expect("lock").clone();
    let world = cc.world.read().expect("lock");
    let (guids, names) = (list_param(&q, "guids"), list_param(&q, "names"));
    let items: Vec<Value> = world
        .orgs
        .iter()
        .filter(|o| matches(&guids, &o.guid) && matches(&names, &o.name))
        .filter(|o| caller.can_see_org(&world, &o.guid))
        .map(|o| org_json(&base, o))
        .collect();
    paginate(&base, "/v3/organizations", &q, items)
}

async fn get_org(State(cc): State<Arc<Inner>>, caller: Caller, Path(guid): Path<String>) -> Response {
    let base = cc.base.read().expect("lock").clone();
    let world = cc.world.read().expect("lock");
    match world.orgs.iter().find(|o| o.guid == guid && caller.can_see_org(&world, &o.guid)) {
        Some(org) => Json(org_json(&base, org)).into_response(),
        None => not_found("Organization"),
    }
}

async fn list_roles(
    State(cc): State<Arc<Inner>>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let base = cc.base.read().expect("lock").clone();
    let world = cc.world.read().expect("lock");
    let (types, users, spaces) = (list_param(&q, "types"), list_param(&q, "user_guids"), list_param(&q, "space_guids"));
    let orgs = list_param(&q, "organization_guids");
    let mine = caller.spaces(&world);
    let items: Vec<Value> = world
        .roles
        .iter()
        .enumerate()
        .filter(|(_, r)| matches(&types, &r.kind) && matches(&users, &r.user))
        .filter(|(_, r)| spaces.is_none() || r.space.as_ref().is_some_and(|s| matches(&spaces, s)))
        .filter(|(_, r)| orgs.is_none() || r.org.as_ref().is_some_and(|o| matches(&orgs, o)))
        .filter(|(_, r)| {
            caller.is_admin() || r.user == caller.claims.sub || r.space.as_ref().is_some_and(|s| mine.contains(s))
        })
        .map(|(i, r)| role_json(&base, i, r))
        .collect();
    paginate(&base, "/v3/roles", &q, items)
}

async fn list_security_groups(
    State(cc): State<Arc<Inner>>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let base = cc.base.read().expect("lock").clone();
    if !caller.is_admin() {
        return paginate(&base, "/v3/security_groups", &q, Vec::new());
    }
    let world = cc.world.read().expect("lock");
    let data = |spaces: &Vec<String>| json!({"data": spaces.iter().map(|s| json!({"guid": s})).collect::<Vec<_>>()});
    let items: Vec<Value> = world
        .security_groups
        .iter()
        .map(|g| {
            json!({
                "guid": g.guid, "name": g.name,
                "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
                "globally_enabled": {"running": g.running_default, "staging": g.staging_default},
                "rules": g.rules,
                "relationships": {"running_spaces": data(&g.running_spaces), "staging_spaces": data(&g.staging_spaces)},
                "links": {"self": {"href": format!("{base}/v3/security_groups/{}", g.guid)}},
            })
        })
        .collect();
    paginate(&base, "/v3/security_groups", &q, items)
}
