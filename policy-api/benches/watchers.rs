//! 10,000 watching cells, each on its own mTLS connection, as real cells are (not a test):
//!
//!     cargo bench -p policy-api --bench watchers                # PostgreSQL, HTTP/1.1
//!     cargo bench -p policy-api --bench watchers -- http2       # HTTP/2
//!     cargo bench -p policy-api --bench watchers -- netagent    # HTTP/2, 3 watches a cell
//!     cargo bench -p policy-api --bench watchers -- sqlite
//!
//! The real `policy-server` binary holds 60,000 policies; 10,000 cells each open their own
//! TLS connection and watch `internal/policies?id=<a shared app>,<its own app>`, and after
//! an answer watch again with its tag, as cells do. HTTP/1.1 is what upstream's agents
//! speak; netagent speaks HTTP/2 and also watches its spaces' security groups and the
//! discovery table on the same connection (`netagent`).
//! Measures: the server's resident memory and open file descriptors with every watch
//! parked; a create that concerns one cell and how many watches it woke; a create that
//! concerns every cell (the shared app), the time from the API's answer to the watchers'
//! answers (p50, p99, last), and the CPU the server and the cells spent meanwhile.
//! `C2C_BENCH_WATCHERS` changes the number of cells; `C2C_BENCH_SERVER` measures another
//! `policy-server` binary (or a wrapper around it, such as a heap profiler).

use std::sync::Arc;
use std::time::{Duration, Instant};

use policy_client::types::{Policies, Policy, Protocol};

#[path = "support/databases.rs"]
mod databases;
#[path = "support/stats.rs"]
mod stats;
use stats::ms;

const STORED: usize = 60_000;
const SHARED: &str = "shared-app";

fn app(i: usize) -> String {
    format!("app-{i:05}")
}

/// A line of the server's Prometheus text.
async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// A watcher's first, unconditional answer, its tag; `connect` paces the TLS handshakes.
async fn first_tag(http: &reqwest::Client, connect: &tokio::sync::Semaphore, url: &str) -> String {
    let _slot = connect.acquire().await.unwrap();
    let r = http.get(url).send().await.expect("first answer");
    r.headers()["etag"].to_str().unwrap().to_string()
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// User and system CPU seconds of a process, from its `/proc/<pid>/stat`.
fn cpu_secs(stat: &str) -> f64 {
    let text = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which may hold spaces) and its closing parenthesis.
    let fields: Vec<&str> = text.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = [11, 12].iter().filter_map(|&i| fields.get(i)?.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on every Linux architecture c2c runs on.
    ticks as f64 / 100.0
}

async fn run(name: &str, database_url: String) {
    // `netagent`: as netagent does, HTTP/2 and three watches per cell on its one connection
    // (policies, its spaces' security groups, the discovery table).
    let netagent = std::env::args().any(|a| a == "netagent");
    let http2 = netagent || std::env::args().any(|a| a == "http2");
    let streams = if netagent { 3 } else { 1 };
    let watchers: usize = std::env::var("C2C_BENCH_WATCHERS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    // This process holds one connection per cell, and the server one more each.
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.max(65_536), hard.max(65_536));

    let dir = std::env::temp_dir().join(format!("c2c-bench-watchers-{}", std::process::id()));
    let ca = testkit::pki::TestCa::new(&dir, "ca");
    let server_cert = ca.server("policy-server", &["127.0.0.1"]);
    let cell_cert = ca.client("cell");
    let cf = testkit::Cf::start().await.expect("doubles");
    let mut config = policy_api::config::Config {
        database_max_connections: 20,
        log_format: policy_api::config::LogFormat::Json,
        ..policy_api::dev::config_for_doubles(&cf, &database_url)
    };
    config.internal.listen = "127.0.0.1:0".parse().unwrap();
    config.internal.max_watch_secs = 300;
    config.internal.tls = Some(policy_api::tls::TlsFiles {
        cert_file: server_cert.cert.clone(),
        key_file: server_cert.key.clone(),
        client_ca_file: Some(server_cert.ca.clone()),
    });
    let config_file = dir.join("policy-server.toml");
    std::fs::write(&config_file, toml::to_string(&config).unwrap()).unwrap();

    // C2C_BENCH_SERVER: another build (or a wrapper, such as a heap profiler) to measure.
    let binary = std::env::var("C2C_BENCH_SERVER").unwrap_or_else(|_| env!("CARGO_BIN_EXE_policy-server").into());
    let server = testkit::server_process::ServerProcess::start(std::path::Path::new(&binary), &config_file);
    let pid = server.pid();
    let (api, internal) = (server.api.clone(), server.internal.clone().expect("the cells' API"));
    let metrics = server.metrics.clone().expect("the metrics listener");
    println!(
        "\n== {name}, {watchers} cells, each on its own connection ({})",
        if http2 { "HTTP/2" } else { "HTTP/1.1" }
    );
    let admin = policy_client::Client::new_with_token(&api, &cf.uaa.user_token("admin")).unwrap();
    let all: Vec<Policy> = (0..STORED)
        .map(|i| Policy::new(&app(i % 20_000), &app((i / 3 + 1) % 20_000), Protocol::Tcp, 8080, 8080))
        .collect();
    for chunk in all.chunks(1000) {
        admin.create_policies(&Policies { policies: chunk.to_vec() }).await.expect("seed");
    }
    let (rss_before, fds_before) =
        (status_kib(pid, "VmRSS:"), std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count());
    println!("server with {STORED} policies, no watch: RSS {} MiB, {} fds", rss_before / 1024, fds_before);

    let mut pem = std::fs::read(&cell_cert.cert).unwrap();
    pem.extend(std::fs::read(&cell_cert.key).unwrap());
    let identity = reqwest::Identity::from_pem(&pem).unwrap();
    let root = reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap();
    // Each cell its own client, so its own TLS connection.
    let connect = Arc::new(tokio::sync::Semaphore::new(64));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let builder = reqwest::Client::builder().add_root_certificate(root.clone()).identity(identity.clone());
        // netagent's client offers h2 and HTTP/1.1 and so speaks HTTP/2 with c2c; upstream's
        // agents speak HTTP/1.1.
        let builder = if http2 { builder.http2_prior_knowledge() } else { builder.http1_only() };
        let http = builder.pool_max_idle_per_host(1).timeout(Duration::from_secs(600)).build().unwrap();
        let url = format!("{internal}/networking/v1/internal/policies?id={SHARED},cell-app-{w}");
        if netagent {
            for other in [
                format!("{internal}/networking/v1/internal/security_groups?space_guids=space-{w}"),
                format!("{internal}/v1/registrations"),
            ] {
                let (http, connect) = (http.clone(), connect.clone());
                tasks.push(tokio::spawn(async move {
                    let mut etag = first_tag(&http, &connect, &other).await;
                    let watch = format!("{other}{}wait=280s", if other.contains('?') { '&' } else { '?' });
                    loop {
                        let r = http.get(&watch).header("if-none-match", &etag).send().await.expect("watch");
                        etag = r.headers()["etag"].to_str().unwrap().to_string();
                    }
                }));
            }
        }
        let (connect, done) = (connect.clone(), done_tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut etag = first_tag(&http, &connect, &url).await;
            // As a cell does: after an answer, watch again with its tag, on the same
            // connection (the task is stopped at the end).
            loop {
                let r =
                    http.get(format!("{url}&wait=280s")).header("if-none-match", &etag).send().await.expect("watch");
                if r.status() == 200 {
                    let _ = done.send((w, Instant::now()));
                    etag = r.headers()["etag"].to_str().unwrap().to_string();
                    let _ = r.bytes().await;
                }
            }
        }));
    }
    drop(done_tx);
    let watches = watchers * streams;
    while (metric(&metrics, "c2c_watches_waiting").await as usize) < watches {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (rss, fds) = (status_kib(pid, "VmRSS:"), std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count());
    println!(
        "{watches} watches parked after {:.1} s: server RSS {} MiB (+{} MiB), {} fds",
        started.elapsed().as_secs_f64(),
        rss / 1024,
        rss.saturating_sub(rss_before) / 1024,
        fds
    );

    // One cell concerned: one watch woken.
    let woken_before = metric(&metrics, "c2c_watch_wakeups_total").await;
    let t = Instant::now();
    admin
        .create_policies(&Policies { policies: vec![Policy::new("cell-app-7", "cell-app-7", Protocol::Tcp, 9, 9)] })
        .await
        .unwrap();
    let answered = t.elapsed();
    let (w, at) = done_rx.recv().await.expect("the concerned cell answers");
    println!(
        "a create concerning one cell: API answered in {}, cell {w} answered {} after the API, watches woken: {}",
        ms(answered),
        ms(at.saturating_duration_since(t + answered)),
        metric(&metrics, "c2c_watch_wakeups_total").await - woken_before
    );

    // Every cell concerned (the one above watching again first).
    while (metric(&metrics, "c2c_watches_waiting").await as usize) < watches {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (server_cpu, own_cpu) = (cpu_secs(&format!("/proc/{pid}/stat")), cpu_secs("/proc/self/stat"));
    let t = Instant::now();
    admin
        .create_policies(&Policies { policies: vec![Policy::new(SHARED, &app(1), Protocol::Tcp, 443, 443)] })
        .await
        .unwrap();
    let api_answer = Instant::now();
    let mut answered = std::collections::HashMap::new();
    while answered.len() < watchers {
        let (w, at) = done_rx.recv().await.expect("every cell answers");
        answered.entry(w).or_insert(at.saturating_duration_since(api_answer));
    }
    let mut after: Vec<Duration> = answered.into_values().collect();
    after.sort();
    let (server_cpu, own_cpu) =
        (cpu_secs(&format!("/proc/{pid}/stat")) - server_cpu, cpu_secs("/proc/self/stat") - own_cpu);
    println!(
        "a create concerning all {watchers} cells: API answered in {}; watchers answered after the API's answer: p50 {}, p99 {}, last {}; CPU meanwhile: server {:.2} s, the cells {:.2} s",
        ms(api_answer - t),
        ms(stats::percentile(&after, 0.5)),
        ms(stats::percentile(&after, 0.99)),
        ms(*after.last().expect("watchers")),
        server_cpu,
        own_cpu
    );
    for t in &tasks {
        t.abort();
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::main]
async fn main() {
    databases::on_the_asked_one(run).await;
}
