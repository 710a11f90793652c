//! The checked-in OpenAPI document and the router agree: every route served is in the spec,
//! every path and method in the spec is served.

use std::collections::BTreeSet;

use policy_api::api::{EXTERNAL_ROUTES, METRICS_ROUTES, paths_with_methods};

fn spec() -> serde_yaml::Value {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/policy-server.yaml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
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

fn served_routes() -> BTreeSet<(String, String)> {
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
    for (method, path) in served_routes() {
        let base = if path == "/metrics" { format!("http://{}", server.metrics_addr.unwrap()) } else { server.url() };
        let resp = http.request(method.parse().unwrap(), format!("{base}{path}")).send().await.unwrap();
        assert!(![404, 405].contains(&resp.status().as_u16()), "{method} {path} answered {}", resp.status());
    }
    server.shutdown().await;
}
