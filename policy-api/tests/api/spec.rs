//! The checked-in OpenAPI document and the router agree: every route served is in the spec,
//! every path and method in the spec is served.

use std::collections::BTreeSet;

use policy_api::api::{EXTERNAL_ROUTES, INTERNAL_ROUTES, METRICS_ROUTES, paths_with_methods};

fn spec() -> serde_norway::Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/policy-server.yaml")).unwrap();
    serde_norway::from_str(&text).unwrap()
}

fn spec_routes() -> BTreeSet<(String, String)> {
    let spec = spec();
    assert_eq!(spec["openapi"].as_str(), Some("3.0.3"), "progenitor needs OpenAPI 3.0.x");
    let mut out = BTreeSet::new();
    for (path, item) in spec["paths"].as_mapping().unwrap() {
        for (method, _) in item.as_mapping().unwrap() {
            out.insert((method.as_str().unwrap().to_uppercase(), path.as_str().unwrap().to_string()));
        }
    }
    out
}

/// The cells' API: any version segment is accepted, the spec documents `v1`.
pub fn internal_routes() -> BTreeSet<(String, String)> {
    INTERNAL_ROUTES.iter().map(|r| (r.method.to_string(), r.path.replace("{version}", "v1"))).collect()
}

fn served_routes() -> BTreeSet<(String, String)> {
    let mut out = external_and_metrics_routes();
    out.extend(internal_routes());
    out
}

fn external_and_metrics_routes() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, methods) in paths_with_methods(EXTERNAL_ROUTES) {
        let versions: Vec<String> = if path.contains("{version}") {
            vec![path.replace("{version}", "v0"), path.replace("{version}", "v1")]
        } else {
            vec![path.to_string()]
        };
        for concrete in versions {
            for m in methods.iter().chain(&["OPTIONS"]) {
                out.insert((m.to_string(), concrete.clone()));
            }
        }
    }
    for r in METRICS_ROUTES {
        out.insert((r.method.to_string(), r.path.to_string()));
    }
    out
}

#[test]
fn router_and_spec_agree() {
    let spec = spec_routes();
    let served = served_routes();
    let missing_in_spec: Vec<_> = served.difference(&spec).collect();
    let missing_in_router: Vec<_> = spec.difference(&served).collect();
    assert!(missing_in_spec.is_empty(), "served but not in openapi/policy-server.yaml: {missing_in_spec:?}");
    assert!(missing_in_router.is_empty(), "in the spec but not served: {missing_in_router:?}");
}

/// Every route of the table really answers (no 404/405) on a running server.
#[tokio::test]
async fn every_route_in_the_table_is_routed() {
    let cf = testkit::Cf::start().await.unwrap();
    let db = crate::harness::TestDb::create(crate::harness::Backend::Sqlite).await;
    let server = policy_api::Server::start(&crate::harness::config_for(&cf, &db)).await.unwrap();
    let http = reqwest::Client::new();
    for (method, path) in external_and_metrics_routes() {
        let base = if path == "/metrics" { format!("http://{}", server.metrics_addr.unwrap()) } else { server.url() };
        let resp = http.request(method.parse().unwrap(), format!("{base}{path}")).send().await.unwrap();
        assert!(![404, 405].contains(&resp.status().as_u16()), "{method} {path} answered {}", resp.status());
    }
    server.shutdown().await;
}

/// Checks an answer against the spec: the status is documented for the operation, and a JSON
/// body validates against the documented schema. Panics with the reason otherwise.
pub fn validate_response(method: &str, path: &str, status: u16, content_type: Option<&str>, body: &str) {
    let spec = spec_json();
    let path_only = spec_path(spec, path.split('?').next().unwrap_or(path));
    let path_only = path_only.as_str();
    let op = &spec["paths"][path_only][method.to_lowercase()];
    assert!(!op.is_null(), "{method} {path_only} is not in the spec");
    let mut response = op["responses"][status.to_string()].clone();
    assert!(!response.is_null(), "{method} {path_only} answered {status}, which the spec does not document");
    if let Some(r) = response.get("$ref").and_then(|r| r.as_str()) {
        let name = r.trim_start_matches("#/components/responses/");
        response = spec["components"]["responses"][name].clone();
    }
    let schema = &response["content"]["application/json"]["schema"];
    if schema.is_null() {
        return;
    }
    assert_eq!(content_type, Some("application/json"), "{method} {path_only} {status}: JSON answers say so");
    let body: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{method} {path_only} {status}: body is not JSON: {e}"));
    let root = serde_json::json!({ "$ref": schema["$ref"], "components": spec["components"] });
    let validator = jsonschema::validator_for(&root).expect("spec schemas compile");
    let errors: Vec<String> = validator.iter_errors(&body).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "{method} {path_only} {status}: body does not match the spec: {errors:?}\n{body}");
}

/// The spec path a concrete request path falls under: templates match any one segment, and
/// the internal API's version segment is documented as `v1`.
fn spec_path(spec: &serde_json::Value, path: &str) -> String {
    let mut segments: Vec<&str> = path.split('/').collect();
    if segments.len() > 3 && segments[1] == "networking" && segments[3] == "internal" {
        segments[2] = "v1";
    }
    let paths = spec["paths"].as_object().expect("paths");
    paths
        .keys()
        .find(|template| {
            let t: Vec<&str> = template.split('/').collect();
            t.len() == segments.len()
                && t.iter().zip(&segments).all(|(t, s)| (t.starts_with('{') && t.ends_with('}')) || t == s)
        })
        .cloned()
        .unwrap_or_else(|| path.to_string())
}

fn spec_json() -> &'static serde_json::Value {
    static SPEC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    SPEC.get_or_init(|| serde_json::to_value(spec()).expect("YAML to JSON"))
}

/// Each operation's main answers, fetched raw and validated against the spec.
#[tokio::test]
async fn responses_match_the_spec() {
    use crate::harness::{Backend, Harness};
    let h = Harness::start(Backend::Sqlite).await;
    let admin = h.admin();
    let create = br#"{"policies":[{"source":{"id":"app-1"},"destination":{"id":"app-2","protocol":"tcp","ports":{"start":80,"end":90}}}]}"#;
    let create_v0 =
        br#"{"policies":[{"source":{"id":"app-1"},"destination":{"id":"app-2","protocol":"udp","port":53}}]}"#;
    for v in ["v0", "v1"] {
        let body = if v == "v1" { create.to_vec() } else { create_v0.to_vec() };
        let base = format!("/networking/{v}/external");
        // `raw` validates every answer it gets.
        h.raw(&admin, "POST", &format!("{base}/policies"), body.clone()).await;
        h.raw(&admin, "GET", &format!("{base}/policies"), vec![]).await;
        h.raw(&admin, "GET", &format!("{base}/policies?id=app-1"), vec![]).await;
        h.raw(&admin, "GET", &format!("{base}/tags"), vec![]).await;
        h.raw(&admin, "GET", &format!("{base}/whoami"), vec![]).await;
        h.raw(&admin, "POST", &format!("{base}/policies/cleanup"), vec![]).await;
        h.raw(&admin, "POST", &format!("{base}/policies/delete"), body).await;
        h.raw(&admin, "POST", &format!("{base}/policies"), b"{}".to_vec()).await;
        h.raw(&h.client("alice"), "GET", &format!("{base}/tags"), vec![]).await;
        h.raw(&h.with_token("bad"), "GET", &format!("{base}/policies"), vec![]).await;
    }
    h.raw(&admin, "GET", "/health", vec![]).await;
    h.raw(&admin, "GET", "/", vec![]).await;
}

#[test]
#[should_panic(expected = "does not match the spec")]
fn the_validator_catches_a_wrong_body() {
    validate_response(
        "GET",
        "/networking/v1/external/policies",
        200,
        Some("application/json"),
        r#"{"total_policies":"one","policies":[]}"#,
    );
}

#[test]
#[should_panic(expected = "does not document")]
fn the_validator_catches_an_undocumented_status() {
    validate_response("GET", "/networking/v1/external/tags", 400, Some("application/json"), r#"{"error": "x"}"#);
}
