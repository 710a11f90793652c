//! apps.internal discovery under load (not a test):
//!
//!     cargo bench -p system-tests --bench discovery              # both parts; as root
//!     cargo bench -p system-tests --bench discovery -- qps       # the responder alone
//!
//! - `qps`: netagent's DNS responder on one core (a current-thread runtime pinned to CPU 0)
//!   with 10,000 registrations under 1,000 names, asked over UDP on loopback from the
//!   other core with 256 queries in flight, for 5 s: answers per second.
//! - `add`: two cells in namespaces; a container with a new route is added on cell 2, and a
//!   container on cell 1 asks the cell's responder every 2 ms until the name resolves; the
//!   time from the start of the CNI ADD to the first answer, 50 tries, p50 and p99.
//!
//! `C2C_BENCH_QUICK=1` makes a short run for trying the benchmark itself.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};
use netagent::discovery::responder::{Responder, SharedTable};
use netagent::discovery::table::Table;
use netagent::discovery::{DiscoveryConfig, Forward};

#[path = "../../policy-api/benches/support/stats.rs"]
mod stats;
use stats::{ms, percentile};

fn quick() -> bool {
    std::env::var_os("C2C_BENCH_QUICK").is_some()
}

fn pin(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("a name"), RecordType::A));
    m.to_vec().expect("a query encodes")
}

/// The number of A records in an answer (0 for anything else).
fn answers(bytes: &[u8]) -> usize {
    Message::from_vec(bytes).map(|m| m.answers.len()).unwrap_or(0)
}

fn qps() {
    const NAMES: usize = 1_000;
    const PER_NAME: usize = 10;
    let ips: Vec<Vec<String>> = (0..NAMES)
        .map(|n| (0..PER_NAME).map(|i| format!("10.255.{}.{}", n % 250, 2 + i + 10 * (n / 250))).collect())
        .collect();
    let hosts: Vec<String> = (0..NAMES).map(|n| format!("app-{n}.apps.internal")).collect();
    let domains = vec!["apps.internal.".to_string()];
    let table = Table::new(&domains, hosts.iter().map(String::as_str).zip(ips.iter().map(Vec::as_slice)));
    let shared: SharedTable = Arc::new(std::sync::RwLock::new(Arc::new(table)));
    let config = DiscoveryConfig { forward: Forward::Refuse, ..Default::default() };

    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    let stop = Arc::new(AtomicBool::new(false));
    let server_stop = stop.clone();
    let server = std::thread::spawn(move || {
        pin(0);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(udp.local_addr().unwrap()).unwrap();
            let mut server = Responder::new(&config, shared).unwrap().serve_on(udp, tcp);
            while !server_stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = server.shutdown_gracefully().await;
        });
    });
    let addr = addr_rx.recv().unwrap();

    // The load: 8 sockets on the other core, 32 queries in flight on each.
    pin(1);
    let answered = Arc::new(AtomicU64::new(0));
    let records = Arc::new(AtomicU64::new(0));
    let run_for = if quick() { Duration::from_secs(1) } else { Duration::from_secs(5) };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for s in 0..8u16 {
            let (answered, records) = (answered.clone(), records.clone());
            let hosts = hosts.clone();
            tasks.push(tokio::spawn(async move {
                let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                sock.connect(addr).await.unwrap();
                let mut next = 0usize;
                let ask = |next: usize| query(&hosts[(next * 7 + usize::from(s)) % hosts.len()], next as u16);
                for _ in 0..32 {
                    let _ = sock.send(&ask(next)).await;
                    next += 1;
                }
                let mut buf = vec![0u8; 4096];
                let deadline = tokio::time::Instant::now() + run_for;
                while let Ok(got) = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                    if let Ok(n) = got {
                        answered.fetch_add(1, Ordering::Relaxed);
                        records.fetch_add(answers(&buf[..n]) as u64, Ordering::Relaxed);
                    }
                    let _ = sock.send(&ask(next)).await;
                    next += 1;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    let n = answered.load(Ordering::Relaxed);
    let per_answer = records.load(Ordering::Relaxed) as f64 / n.max(1) as f64;
    println!(
        "qps: {} names, {} registrations, responder on one core: {:.0} answers/s ({} in {:.1} s, {:.1} A records each)",
        NAMES,
        NAMES * PER_NAME,
        n as f64 / elapsed.as_secs_f64(),
        n,
        elapsed.as_secs_f64(),
        per_answer
    );
}

fn add_to_resolve() {
    use harness::cell::{CellOptions, Cni};
    use harness::lab::Netns;
    use harness::world::World;
    harness::lab::require_root();
    let tries = if quick() { 5 } else { 50 };
    let w = World::new(2, "c2c-bench-discovery");
    let cp = w.control_plane();
    // `cargo bench` builds no plugin binary: the plugin's own code runs in-process.
    let options = CellOptions { cni: Cni::InProcess, ..CellOptions::default() };
    let (a1, a2) = (w.agent(1, &cp, &options), w.agent(2, &cp, &options));
    w.overlay_ready();
    let client = Netns::new("ctr-client");
    a1.add_routed(w.cell(1), "client", &client, "app-client", "client.apps.internal");
    let mut times = Vec::new();
    for i in 0..tries {
        let ctr = Netns::new("ctr-new");
        let name = format!("new-{i}.apps.internal");
        let (path, asked) = (client.path(), name.clone());
        // The asker starts first and polls; the clock starts when the ADD does.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
        let asker = std::thread::spawn(move || {
            harness::lab::enter(&path);
            let sock = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            sock.connect((Ipv4Addr::new(169, 254, 0, 2), 53)).unwrap();
            sock.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            let started = go_rx.recv().unwrap();
            let mut buf = [0u8; 1500];
            for id in 0u16.. {
                let _ = sock.send(&query(&asked, id));
                if let Ok(n) = sock.recv(&mut buf)
                    && answers(&buf[..n]) > 0
                {
                    return started.elapsed();
                }
                std::thread::sleep(Duration::from_millis(2));
                if started.elapsed() > Duration::from_secs(30) {
                    break;
                }
            }
            panic!("{asked} never resolved");
        });
        go_tx.send(Instant::now()).unwrap();
        a2.add_routed(w.cell(2), &format!("n{i}"), &ctr, "app-new", &name);
        times.push(asker.join().unwrap());
        a2.del(w.cell(2), &format!("n{i}"), &ctr, "app-new").unwrap();
    }
    times.sort();
    println!(
        "add: CNI ADD on cell 2 to the name resolving on cell 1, {} tries: p50 {}, p99 {}, max {}",
        times.len(),
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap())
    );
}

fn main() {
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let wants = |part: &str| filter.is_empty() || filter.iter().any(|f| part.contains(f.as_str()));
    if wants("qps") {
        qps();
    }
    if wants("add") {
        add_to_resolve();
    }
}
