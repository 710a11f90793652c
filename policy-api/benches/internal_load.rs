//! Load benchmark of the cells' API (not a test): 60,000 policies among 20,000 apps (each app
//! the source of 3 policies, upstream's published scale), cells asking for 250 app ids each.
//!
//!     cargo bench -p policy-api --bench internal_load            # PostgreSQL
//!     cargo bench -p policy-api --bench internal_load -- sqlite
//!
//! Measures, in one run: `GET internal/policies?id=<250 ids>` answered 200 from the snapshot
//! (every request a different cell, so nothing is cached) against the same answer computed
//! from SQL; 304s per second; and with 5,000 open watches, the time from a policy create to
//! the last watcher answered. Everything runs on loopback over mTLS (HTTP/2).

use std::sync::Arc;
use std::time::{Duration, Instant};

use policy_api::Server;
use policy_api::config::Config;
use policy_api::policy::PolicyFilter;
use policy_client::types::{Policies, Policy, Protocol};
use policy_client::{Client, Watched, watched};

#[path = "support/databases.rs"]
mod databases;
#[path = "support/stats.rs"]
mod stats;
use stats::{ms, percentile};

const APPS: usize = 20_000;
const PER_APP: usize = 3;
const IDS_PER_CELL: usize = 250;
const WATCHERS: usize = 5_000;

fn app(i: usize) -> String {
    format!("app-{:05}", i % APPS)
}

fn cell_ids(cell: usize) -> String {
    (0..IDS_PER_CELL).map(|k| app((cell * 7919 + k * 13) % APPS)).collect::<Vec<_>>().join(",")
}

async fn run(name: &str, database_url: String) {
    let dir = std::env::temp_dir().join(format!("c2c-bench-pki-{}", std::process::id()));
    let ca = testkit::pki::TestCa::new(&dir, "ca");
    let server_cert = ca.server("policy-server", &[]);
    let client_cert = ca.client("cell");
    let cf = testkit::Cf::start().await.expect("doubles");
    let mut config = Config {
        metrics_listen: None,
        database_max_connections: 20,
        ..policy_api::dev::config_for_doubles(&cf, &database_url)
    };
    config.internal.listen = "127.0.0.1:0".parse().unwrap();
    config.internal.max_watch_secs = 120;
    config.internal.tls = Some(policy_api::tls::TlsFiles {
        cert_file: server_cert.cert.clone(),
        key_file: server_cert.key.clone(),
        client_ca_file: Some(server_cert.ca.clone()),
    });
    let server = Server::start(&config).await.expect("server");
    let admin = Client::new_with_token(&server.url(), &cf.uaa.user_token("admin")).unwrap();
    let internal = format!("https://{}", server.internal_addr.unwrap());
    let mut pem = std::fs::read(&client_cert.cert).unwrap();
    pem.extend(std::fs::read(&client_cert.key).unwrap());
    let cell_http = || {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap())
            .identity(reqwest::Identity::from_pem(&pem).unwrap())
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(180))
            .build()
            .unwrap()
    };

    println!("\n== {name}");
    let started = Instant::now();
    let all: Vec<Policy> = (0..APPS)
        .flat_map(|i| (1..=PER_APP).map(move |k| Policy::new(&app(i), &app(i + k), Protocol::Tcp, 8080, 8080)))
        .collect();
    for chunk in all.chunks(1000) {
        admin.create_policies(&Policies { policies: chunk.to_vec() }).await.expect("seed");
    }
    println!("seeded {} policies among {APPS} apps in {:.1} s", all.len(), started.elapsed().as_secs_f64());
    // Let the snapshot catch up with the last write.
    let cell = Client::new_with_client(&internal, cell_http());
    let deadline = Instant::now() + Duration::from_secs(30);
    while cell.internal_policies(Some(&app(0)), None, None).await.unwrap().into_inner().total_policies == 0 {
        assert!(Instant::now() < deadline, "snapshot never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The SQL path: the same question asked of the store, rendered the same way.
    let store = server.state.store.clone();
    let mut sql = Vec::new();
    let t = Instant::now();
    for c in 0..50 {
        let ids: Vec<String> = cell_ids(c).split(',').map(str::to_string).collect();
        let s = Instant::now();
        let rows = store.list(&PolicyFilter::Any(ids)).await.unwrap();
        let body = policy_api::mapper::list_v1_tagged(&rows);
        sql.push(s.elapsed());
        assert!(body.len() > 1000);
    }
    let sql_rate = 50.0 / t.elapsed().as_secs_f64();
    sql.sort();

    // The snapshot path over HTTP: 2,000 different cells, 16 at a time.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16usize {
        let client = Client::new_with_client(&internal, cell_http());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            for c in (w..2000).step_by(16) {
                let ids = cell_ids(1000 + c);
                let s = Instant::now();
                let list = client.internal_policies(Some(&ids), None, None).await.unwrap().into_inner();
                lat.push(s.elapsed());
                assert!(list.total_policies > 0);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for task in tasks {
        lat.extend(task.await.unwrap());
    }
    let rate = lat.len() as f64 / t.elapsed().as_secs_f64();
    lat.sort();
    let answer = cell.internal_policies(Some(&cell_ids(1)), None, None).await.unwrap().into_inner();
    println!(
        "200, ?id=<{IDS_PER_CELL} ids> (~{} policies each), each request a different cell: {:.0} req/s, p50 {} p99 {}",
        answer.total_policies,
        rate,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
    println!(
        "same answer from the SQL store (sequential): {:.0} req/s, p50 {} p99 {} -> snapshot/SQL = {:.1}x",
        sql_rate,
        ms(percentile(&sql, 0.5)),
        ms(percentile(&sql, 0.99)),
        rate / sql_rate
    );

    // 304s: cells asking again with the ETag they have.
    let mut etags = Vec::new();
    for c in 0..64 {
        let ids = cell_ids(c);
        if let Watched::Changed { etag: Some(e), .. } =
            watched(cell.internal_policies(Some(&ids), None, None).await).unwrap()
        {
            etags.push((ids, e));
        }
    }
    let etags = Arc::new(etags);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64usize {
        // The request is built once, as a cell would keep it: the load generator shares the
        // two cores with the server, so it should spend as little as it can.
        let http = cell_http();
        let etags = etags.clone();
        let url = {
            let mut u = url::Url::parse(&format!("{internal}/networking/v1/internal/policies")).unwrap();
            u.query_pairs_mut().append_pair("id", &etags[w].0);
            u.to_string()
        };
        tasks.push(tokio::spawn(async move {
            let etag = &etags[w].1;
            for _ in 0..500 {
                let resp = http.get(&url).header("if-none-match", etag).send().await.unwrap();
                assert_eq!(resp.status(), 304);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    println!("304, If-None-Match, 64 cells: {:.0} req/s", 64.0 * 500.0 / t.elapsed().as_secs_f64());

    // 5,000 open watches (over 50 HTTP/2 connections), then one policy create that concerns
    // every one of them.
    let target = "watched-app";
    let mut watchers = Vec::new();
    let clients: Vec<Client> = (0..50).map(|_| Client::new_with_client(&internal, cell_http())).collect();
    let mut ready = Vec::new();
    for w in 0..WATCHERS {
        let client = clients[w % clients.len()].clone();
        let ids = format!("{target},{}", app(w));
        let etag = match watched(client.internal_policies(Some(&ids), None, None).await).unwrap() {
            Watched::Changed { etag, .. } => etag.unwrap(),
            Watched::NotModified => unreachable!(),
        };
        ready.push((client, ids, etag));
    }
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    for (client, ids, etag) in ready {
        let done = done_tx.clone();
        watchers.push(tokio::spawn(async move {
            let r = watched(client.internal_policies(Some(&ids), Some("100s"), Some(&etag)).await).unwrap();
            assert!(matches!(r, Watched::Changed { .. }), "woken by the change");
            let _ = done.send(Instant::now());
        }));
    }
    drop(done_tx);
    tokio::time::sleep(Duration::from_secs(3)).await; // every watch is parked
    let t = Instant::now();
    admin
        .create_policies(&Policies { policies: vec![Policy::new(target, &app(1), Protocol::Tcp, 443, 443)] })
        .await
        .unwrap();
    let replied = t.elapsed();
    let mut last = t;
    let mut n = 0;
    while let Some(at) = done_rx.recv().await {
        last = last.max(at);
        n += 1;
    }
    println!(
        "{n} watchers: create answered in {}, last watcher answered {} after the create was sent",
        ms(replied),
        ms(last - t)
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::main]
async fn main() {
    databases::on_the_asked_one(run).await;
}
