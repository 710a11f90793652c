//! Load benchmark of the external API (not a test): create in 1000-policy requests with 10k
//! policies stored, list all 10k, and `GET ...policies?id=` for one app — on SQLite and
//! PostgreSQL, through the generated client against a server on loopback.
//!
//!     cargo bench -p policy-api --bench api_load                  # both databases
//!     cargo bench -p policy-api --bench api_load -- postgres      # one
//!
//! PostgreSQL comes from C2C_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres);
//! a scratch database is created and dropped.

use std::time::Instant;

use policy_api::Server;
use policy_api::config::Config;
use policy_api::policy::PolicyFilter;
use policy_client::types::{Policies, Policy, Protocol};
use policy_client::{Client, ClientInfo};

#[path = "support/databases.rs"]
mod databases;
#[path = "support/load.rs"]
mod load;
#[path = "support/stats.rs"]
mod stats;
use load::load;
use stats::{ms, percentile};

const STORED: usize = 10_000;
const BATCH: usize = 1_000;

fn policies(tag: &str, port: i32, count: usize) -> Vec<Policy> {
    // 100 sources × 100 destinations per 10k, so tags stay well inside the pool.
    (0..count)
        .map(|i| Policy::new(&format!("src-{}-{tag}", i / 100), &format!("dst-{}", i % 100), Protocol::Tcp, port, port))
        .collect()
}

async fn run(name: &str, database_url: String) {
    let cf = testkit::Cf::start().await.expect("doubles");
    let config = Config {
        metrics_listen: None,
        database_max_connections: 20,
        ..policy_api::dev::config_for_doubles(&cf, &database_url)
    };
    let server = Server::start(&config).await.expect("server");
    let client = Client::new_with_token(&server.url(), &cf.uaa.user_token("admin")).unwrap();

    println!("\n== {name}");
    let seed = policies("a", 8080, STORED);
    let started = Instant::now();
    for chunk in seed.chunks(BATCH) {
        client.create_policies(&Policies { policies: chunk.to_vec() }).await.expect("seed");
    }
    let seed_time = started.elapsed();
    println!(
        "seed: {STORED} policies in {BATCH}-policy requests on an empty store: {:.0} policies/s",
        STORED as f64 / seed_time.as_secs_f64()
    );

    // Listing all 10k.
    let mut lat = Vec::new();
    // Timed to the last byte of the body; decoding into typed structs is the caller's cost
    // and is checked once afterwards.
    let url = format!("{}/networking/v1/external/policies", server.url());
    for _ in 0..100 {
        let t = Instant::now();
        let bytes = client.client().get(&url).send().await.unwrap().bytes().await.unwrap();
        lat.push(t.elapsed());
        assert!(bytes.len() > STORED * 50);
    }
    let list = client.list_policies(None, None, None).await.unwrap().into_inner();
    assert_eq!(list.total_policies as usize, STORED);
    lat.sort();
    println!(
        "list all {STORED} over HTTP: p50 {} p99 {} (100 requests)",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );

    // The same listing straight from the store, to see what SQL costs on its own.
    let mut lat = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        let rows = server.state.store.list(&PolicyFilter::All).await.unwrap();
        lat.push(t.elapsed());
        assert_eq!(rows.len(), STORED);
    }
    lat.sort();
    println!(
        "list all {STORED} from the SQL store: p50 {} p99 {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );

    // One app by id, 8 clients at once.
    let (rate, lat) = load(8, 2_000, {
        let client = client.clone();
        move |i| {
            let client = client.clone();
            async move {
                let id = format!("dst-{}", i % 100);
                let list = client.list_policies(None, Some(&id), None).await.unwrap().into_inner();
                assert_eq!(list.total_policies, 100);
            }
        }
    })
    .await;
    println!(
        "GET ?id=<one app> (100 policies each), 8 clients: {rate:.0} req/s, p50 {} p99 {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );

    // Creating 10k more with 10k stored.
    let more = policies("b", 9090, STORED);
    let mut lat = Vec::new();
    let started = Instant::now();
    for chunk in more.chunks(BATCH) {
        let t = Instant::now();
        client.create_policies(&Policies { policies: chunk.to_vec() }).await.expect("create");
        lat.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    lat.sort();
    println!(
        "create with {STORED}+ stored, {BATCH}-policy requests: {:.0} policies/s (request p50 {}, max {})",
        STORED as f64 / elapsed.as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(*lat.last().unwrap())
    );
    server.shutdown().await;
}

#[tokio::main]
async fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |n: &str| which.is_empty() || which.iter().any(|w| w == n);
    if wants("sqlite") {
        databases::on_sqlite(|url| run("SQLite (file, WAL)", url)).await;
    }
    if wants("postgres") {
        databases::on_postgres(|url| run("PostgreSQL", url)).await;
    }
}
