//! The policy server fuzzed from its own OpenAPI document with schemathesis: the real
//! `policy-server` binary, both listeners, as an admin, as a non-admin and as a cell. Every
//! check schemathesis has must pass (no 5xx, status codes, content types and bodies as the
//! spec says, invalid input refused, valid input accepted, unknown methods answered 405),
//! and the server's log must hold no panic. The budget is fixed (examples per operation and
//! the seed), so a run takes the same time on every machine; `C2C_FUZZ_EXAMPLES` and
//! `C2C_FUZZ_SEED` change it for a longer local hunt.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use harness::lab::require_tool;
use harness::scratch::TempDir;

const SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/policy-server.yaml");
const HOOKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/hooks.py");

/// The real binary, its log kept in memory, its addresses read from its own log lines.
struct Server {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    api: String,
    internal: String,
    metrics: String,
}

impl Server {
    fn start(config: &Path) -> Server {
        let mut child = Command::new(harness::bins::path("policy-server"))
            .args(["--config", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start policy-server");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    let fields = &v;
                    let _ = tx.send((
                        fields["message"].as_str().unwrap_or_default().to_string(),
                        fields["listen_address"].as_str().unwrap_or_default().to_string(),
                        fields["metrics"].as_str().unwrap_or_default().to_string(),
                    ));
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (mut api, mut internal, mut metrics) = (None, None, None);
        while api.is_none() || internal.is_none() {
            let (message, addr, metrics_addr) = rx
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("policy-server did not start: {:?}", log.lock().unwrap()));
            // `Some(127.0.0.1:4003)`, as the log line prints an optional address.
            let unwrap_some = |s: &str| s.trim_start_matches("Some(").trim_end_matches(')').to_string();
            match message.as_str() {
                "starting external server" => {
                    api = Some(format!("http://{addr}"));
                    metrics = Some(format!("http://{}", unwrap_some(&metrics_addr)));
                }
                "starting internal server" => internal = Some(format!("https://{}", unwrap_some(&addr))),
                _ => {}
            }
        }
        Server { child, log, api: api.unwrap(), internal: internal.unwrap(), metrics: metrics.unwrap() }
    }

    fn panics(&self) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|l| l.contains("panicked")).cloned().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let server = Server::start(&config_path);

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
    fuzz("cells' API", dir.path(), "^/networking/v[01]/internal/", &server.internal, &mtls, "cell");
    fuzz("metrics listener", dir.path(), "^/metrics$", &server.metrics, &[], "anyone");

    assert_eq!(server.panics(), Vec::<String>::new(), "policy-server panicked under fuzzing");
}
