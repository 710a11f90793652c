//! The policy server fuzzed from its own OpenAPI document with schemathesis: the real
//! `policy-server` binary, both listeners, as an admin, as a non-admin and as a cell. Every
//! check schemathesis has must pass (no 5xx, status codes, content types and bodies as the
//! spec says, invalid input refused, valid input accepted, unknown methods answered 405),
//! and the server's log must hold no panic. The budget is fixed (examples per operation and
//! the seed), so a run takes the same time on every machine; `C2C_FUZZ_EXAMPLES` and
//! `C2C_FUZZ_SEED` change it for a longer local hunt.

use std::path::{Path, PathBuf};
use std::process::Command;

use harness::lab::require_tool;
use harness::scratch::TempDir;

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/policy-server.yaml");
const HOOKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/hooks.py");

/// One schemathesis run; panics with its report unless every check passed.
fn fuzz(name: &str, dir: &Path, paths: &str, url: &str, extra: &[&str], role: &str) {
    let examples = std::env::var("C2C_FUZZ_EXAMPLES").unwrap_or_else(|_| "40".into());
    let seed = std::env::var("C2C_FUZZ_SEED").unwrap_or_else(|_| "20261129".into());
    let out = Command::new("schemathesis")
        .current_dir(dir)
        .env("SCHEMATHESIS_HOOKS", HOOKS)
        .env("C2C_FUZZ_ROLE", role)
        .args(["run", SPEC, "--url", url, "--checks", "all", "--max-examples", &examples, "--seed", &seed])
        .args(["--include-path-regex", paths, "--suppress-health-check", "all", "--generation-database", "none"])
        // One worker: schemathesis 4's coverage phase can fail inside itself when two
        // threads generate at once (a KeyError in its own source lookup).
        .args(["--no-color", "--request-timeout", "20", "--workers", "1"])
        .args(extra)
        .output()
        .expect("run schemathesis");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis, {name}: failures\n{report}");
    let tested = report.lines().find(|l| l.contains(" generated,")).unwrap_or_default().trim().to_string();
    assert!(tested.contains("passed"), "schemathesis, {name}: no test case ran\n{report}");
    eprintln!("schemathesis, {name}: {tested}");
}

#[test]
fn the_api_honours_its_spec_under_fuzzing() {
    require_tool("schemathesis", "schemathesis (PyPI; scripts/setup installs it)");
    let dir = TempDir::new("c2c-fuzz");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let cf = rt.block_on(testkit::Cf::start()).expect("UAA and Cloud Controller doubles");
    let ca = testkit::pki::TestCa::new(dir.path(), "fuzz-ca");
    let server_cert = ca.server("policy-server", &["127.0.0.1"]);
    let cell = ca.client_for("cell", &["127.0.0.1"]);
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("policy.db").display());
    let mut config = policy_api::dev::config_for_doubles(&cf, &db);
    config.log_format = policy_api::config::LogFormat::Json;
    config.internal.listen = "127.0.0.1:0".parse().unwrap();
    config.internal.tls = Some(policy_api::tls::TlsFiles {
        cert_file: server_cert.cert.clone(),
        key_file: server_cert.key.clone(),
        client_ca_file: Some(server_cert.ca.clone()),
    });
    let config_path: PathBuf = dir.path().join("policy-server.toml");
    std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
    let server = testkit::server_process::ServerProcess::start(&harness::bins::path("policy-server"), &config_path);
    let internal = server.internal.clone().expect("the cells' API");
    let metrics = server.metrics.clone().expect("the metrics listener");

    let external = "^/(networking/v[01]/external/|health$)";
    for (name, user, role) in [("admin", "admin", "admin"), ("a space developer", "alice", "non-admin")] {
        let header = format!("Authorization: Bearer {}", cf.uaa.user_token(user));
        fuzz(&format!("external API as {name}"), dir.path(), external, &server.api, &["--header", &header], role);
    }
    let mtls = [
        "--tls-verify",
        server_cert.ca.to_str().unwrap(),
        "--request-cert",
        cell.cert.to_str().unwrap(),
        "--request-cert-key",
        cell.key.to_str().unwrap(),
    ];
    fuzz("cells' API", dir.path(), "^/networking/v[01]/internal/", &internal, &mtls, "cell");
    // schemathesis appends the spec's path to the base URL.
    let metrics_base = metrics.trim_end_matches("/metrics");
    fuzz("metrics listener", dir.path(), "^/metrics$", metrics_base, &[], "anyone");

    let panics: Vec<String> = server.log().into_iter().filter(|l| l.contains("panicked")).collect();
    assert_eq!(panics, Vec::<String>::new(), "policy-server panicked under fuzzing");
}
