//! How the operations users send scale with the table (not a test): single-policy creates
//! (what the cf CLI sends) with 1 and 16 clients, list all, `GET ...policies?id=<app>`, and
//! a create through one replica read back at once through another (which that replica
//! follows from the change log), measured at 0, 10k, 30k and 60k stored policies on
//! PostgreSQL.
//!
//!     cargo bench -p policy-api --bench scaling               # PostgreSQL
//!     cargo bench -p policy-api --bench scaling -- sqlite     # SQLite (file, WAL)
//!
//! The server runs on a runtime of its own with one worker thread, the load generator on
//! another; both share this machine's cores with the database. Policies follow upstream's
//! published scale: 20,000 apps, each the source of 3 policies. PostgreSQL comes from
//! C2C_TEST_POSTGRES_URL (default postgres://postgres@127.0.0.1:5432/postgres); a scratch
//! database is created and dropped.

use policy_api::Server;
use policy_api::config::Config;
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

const APPS: usize = 20_000;
const SIZES: [usize; 4] = [0, 10_000, 30_000, 60_000];
const BATCH: usize = 1_000;

fn app(i: usize) -> String {
    format!("app-{:05}", i % APPS)
}

/// The `n`th stored policy: app n/3 → app n/3 + 1..=3.
fn stored(n: usize) -> Policy {
    Policy::new(&app(n / 3), &app(n / 3 + 1 + n % 3), Protocol::Tcp, 8080, 8080)
}

/// A policy no seed contains, between existing apps (no new tags), unique per `k`.
fn single(k: usize) -> Policy {
    Policy::new(&app(k * 7), &app(k * 7 + 11), Protocol::Udp, (1000 + k % 60_000) as i32, (1000 + k % 60_000) as i32)
}

/// Runs the server on a thread and runtime of its own, until the returned sender drops.
fn start_server(database_url: String) -> (String, String, std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let cf = testkit::Cf::start().await.expect("doubles");
            let config = Config {
                metrics_listen: None,
                database_max_connections: 20,
                ..policy_api::dev::config_for_doubles(&cf, &database_url)
            };
            let server = Server::start(&config).await.expect("server");
            ready_tx.send((server.url(), cf.uaa.user_token("admin"))).unwrap();
            tokio::task::spawn_blocking(move || stop_rx.recv()).await.ok();
            server.shutdown().await;
        });
    });
    let (url, token) = ready_rx.recv().expect("server started");
    (url, token, stop_tx, thread)
}

/// One new policy per request, the `i`th after `base`.
fn single_creates(client: &Client, base: usize) -> impl Fn(usize) -> BoxedUnit + Clone + Send + 'static {
    let client = client.clone();
    move |i| {
        let client = client.clone();
        Box::pin(async move {
            client.create_policies(&Policies { policies: vec![single(base + i)] }).await.expect("create");
        })
    }
}

type BoxedUnit = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

async fn run(name: &str, database_url: String) {
    let (url, token, stop, server_thread) = start_server(database_url.clone());
    let client = Client::new_with_token(&url, &token).unwrap();
    // A second replica on the same database; its own poll is 1 s, so reading a write of the
    // first one at once is the read-time version check and the catch-up it triggers.
    let (url_b, token_b, stop_b, server_b_thread) = start_server(database_url);
    let client_b = Client::new_with_token(&url_b, &token_b).unwrap();
    println!("\n== {name}");
    println!(
        "| stored | single create, 1 client | single create, 16 clients | list all, 1 client | `?id=<app>`, 16 clients | create on A, then `?id=` on B, 1 client |"
    );
    println!("|---|---|---|---|---|---|");
    let mut seeded = 0;
    let mut next_single = 0;
    for size in SIZES {
        while seeded < size {
            let end = (seeded + BATCH).min(size);
            let chunk: Vec<Policy> = (seeded..end).map(stored).collect();
            client.create_policies(&Policies { policies: chunk }).await.expect("seed");
            seeded = end;
        }
        let (one_rate, one_lat) = load(1, 300, single_creates(&client, next_single)).await;
        let (many_rate, many_lat) = load(16, 2_000, single_creates(&client, next_single + 300)).await;
        let (cross_rate, cross_lat) = load(1, 200, {
            let (a, b) = (client.clone(), client_b.clone());
            let base = next_single + 2_300;
            move |i| {
                let (a, b) = (a.clone(), b.clone());
                async move {
                    let new = single(base + i);
                    a.create_policies(&Policies { policies: vec![new.clone()] }).await.expect("create on A");
                    let seen = b.list_policies(None, Some(&new.source.id), None).await.unwrap().into_inner();
                    assert!(seen.policies.contains(&new), "B reads A's write at once");
                }
            }
        })
        .await;
        next_single += 2_500;
        let list_url = format!("{url}/networking/v1/external/policies");
        let (list_rate, list_lat) = load(1, 20, {
            let client = client.clone();
            move |_| {
                let (client, list_url) = (client.clone(), list_url.clone());
                async move {
                    let body = client.client().get(&list_url).send().await.unwrap().bytes().await.unwrap();
                    assert!(body.len() > 20);
                }
            }
        })
        .await;
        let (id_rate, id_lat) = load(16, 4_000, {
            let client = client.clone();
            move |i| {
                let client = client.clone();
                async move {
                    // An app of the seeded part of the table.
                    let id = app((i * 13) % (size / 3).max(1));
                    let list = client.list_policies(None, Some(&id), None).await.unwrap().into_inner();
                    assert!(size == 0 || list.total_policies > 0);
                }
            }
        })
        .await;
        let stored_now = client.list_policies(None, None, None).await.unwrap().into_inner().total_policies;
        println!(
            "| {size} (+{}) | {one_rate:.0} req/s, p50 {} | {many_rate:.0} req/s, p50 {} | {list_rate:.1} req/s, p50 {} | {id_rate:.0} req/s, p50 {} | {cross_rate:.0} pairs/s, p50 {} |",
            stored_now as usize - size,
            ms(percentile(&one_lat, 0.5)),
            ms(percentile(&many_lat, 0.5)),
            ms(percentile(&list_lat, 0.5)),
            ms(percentile(&id_lat, 0.5)),
            ms(percentile(&cross_lat, 0.5))
        );
    }
    drop((stop, stop_b));
    // The servers finish their shutdown before the database goes away.
    tokio::task::spawn_blocking(move || {
        server_thread.join().expect("replica A stopped");
        server_b_thread.join().expect("replica B stopped");
    })
    .await
    .unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    databases::on_the_asked_one(run).await;
}
