//! The whole system under load (not a test; run as root):
//!
//!     cargo bench -p system-tests --bench system                 # both backends
//!     cargo bench -p system-tests --bench system -- nftables     # one of them
//!
//! Builds the lab of the demo (a control plane, two cells running netagent, containers wired
//! by the CNI plugin) and, with 10,000 policies towards the apps on cell 2, measures for each
//! enforcement backend:
//!
//! - convergence: from the API's answer to a new policy (A on cell 1 → B on cell 2) to the
//!   first TCP connection it allows, and from the answer to its deletion to the first
//!   connection refused; 100 tries each, each from a settled state (both cells' agents
//!   report the policies they hold in their metrics);
//! - CNI ADD on cell 2 (the plugin's own code against the agent, which fetches the cell's
//!   10,000 policies and enforces them before answering); 20 tries;
//! - the CPU time cell 2's agent uses over a minute in which nothing changes;
//! - recovery: the control plane stops for 20 s and comes back on its port; from the API's
//!   answer to a new policy to the first connection it allows (3 outages).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use harness::cell::{CellAgent, CellOptions, Cni};
use harness::control_plane::ControlPlane;
use harness::cpu::thread_cpu;
use harness::lab::{Netns, attach, fabric, remove_namespaces};
use harness::probes::{TcpServer, connects};
use harness::scratch::{TempDir, clean_up_on_signal};
use netagent::config::Enforcement;
use policy_client::types::{Policy, Protocol};

#[path = "../../policy-api/benches/support/stats.rs"]
mod stats;
use stats::{ms, percentile};

const PORT: u16 = 8080;
const POLICIES: usize = 10_000;
const DESTINATIONS: usize = 5;
/// Tries, CNI ADDs and the idle period; `C2C_BENCH_QUICK=1` makes a short run for trying
/// the benchmark out.
fn sizes() -> (usize, usize, Duration) {
    if quick() { (10, 5, Duration::from_secs(5)) } else { (100, 20, Duration::from_secs(60)) }
}

fn quick() -> bool {
    std::env::var_os("C2C_BENCH_QUICK").is_some()
}

/// Outages of the control plane, and how long each lasts (upstream's cells and c2c's before
/// the capped back-off needed 4 s after a 20 s outage, 18 s after a 64 s one).
fn outages() -> (usize, Duration) {
    if quick() { (1, Duration::from_secs(5)) } else { (3, Duration::from_secs(20)) }
}

/// 10,000 policies from 2,000 source apps to the `DESTINATIONS` apps on cell 2, distinct by
/// port, half TCP and half UDP.
fn seed_policies() -> Vec<Policy> {
    (0..POLICIES)
        .map(|i| {
            let port = 1000 + (i / DESTINATIONS) as i32;
            let proto = if i % 2 == 0 { Protocol::Tcp } else { Protocol::Udp };
            Policy::new(&format!("src-{}", i % 2000), &format!("dst-{}", i % DESTINATIONS), proto, port, port)
        })
        .collect()
}

/// Waits until `want` holds, trying every few milliseconds; the time it took.
fn until(limit: Duration, mut want: impl FnMut() -> bool) -> anyhow::Result<Duration> {
    let t = Instant::now();
    while !want() {
        if t.elapsed() > limit {
            bail!("nothing changed within {limit:?}");
        }
    }
    Ok(t.elapsed())
}

/// Waits until `agent` has enforced exactly `policies` policies.
fn settle(agent: &CellAgent, cell: &Netns, policies: f64) -> anyhow::Result<()> {
    until(Duration::from_secs(30), || agent.metric(cell, "c2c_netagent_policies") == Some(policies))
        .map(|_| ())
        .context("a cell never applied the removal")
}

fn summary(name: &str, mut samples: Vec<Duration>) -> String {
    samples.sort();
    format!(
        "{name}: p50 {}, p90 {}, p99 {}, max {} ({} tries)",
        ms(percentile(&samples, 0.5)),
        ms(percentile(&samples, 0.9)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
        samples.len()
    )
}

fn run(backend: &str) -> anyhow::Result<Vec<String>> {
    let (tries, adds_wanted, idle) = sizes();
    let tmp = TempDir::new("c2c-bench");
    let dir = tmp.path().to_path_buf();
    let f = fabric(2);
    let ctl = Netns::new("ctl");
    attach(&f.switch, &ctl, 254);
    let ca = testkit::pki::TestCa::new(&dir, "ca");
    let mut cp = ControlPlane::start(&ctl, &ca, &dir)?;
    let (cell1, cell2) = (&f.cells[0], &f.cells[1]);
    // netagent's default settings, as a cell runs them in production.
    let enforcement = if backend == "iptables" { Enforcement::Iptables } else { Enforcement::Nftables };
    let options = CellOptions {
        enforcement,
        lease_poll_interval_ms: netagent::config::Config::default().lease_poll_interval_ms,
        // `cargo bench` builds this bench alone, not the `c2c-cni` binary.
        cni: Cni::InProcess,
        ..CellOptions::default()
    };
    let agent1 = CellAgent::start(cell1, 1, &cp.url(), &ca, &dir.join("cell1"), &options)?;
    let agent2 = CellAgent::start(cell2, 2, &cp.url(), &ca, &dir.join("cell2"), &options)?;

    // The destination apps on cell 2, then their 10,000 policies.
    let mut keep = Vec::new();
    for k in 0..DESTINATIONS {
        let ctr = Netns::new(&format!("dst{k}"));
        agent2.add(cell2, &format!("dst-{k}"), &ctr, &format!("dst-{k}"))?;
        keep.push(ctr);
    }
    let seed = seed_policies();
    for (n, chunk) in seed.chunks(1000).enumerate() {
        cp.create(chunk.to_vec()).context("seeding policies")?;
        eprint!("\r   {backend}: {} of {POLICIES} policies created", (n + 1) * 1000);
    }
    eprintln!();

    // The measured pair: A on cell 1, B (listening) on cell 2.
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    agent1.add(cell1, "a", &a, "bench-a")?;
    let ip_b: Ipv4Addr = agent2.add(cell2, "b", &b, "bench-b")?;
    let _server = TcpServer::start(&b, ip_b, PORT);
    let probe = || vec![Policy::new("bench-a", "bench-b", Protocol::Tcp, i32::from(PORT), i32::from(PORT))];
    // Warm up: the cells find each other on the overlay (within one lease poll), the
    // connections and caches on the way are made.
    cp.create(probe())?;
    until(Duration::from_secs(30), || connects(&a, ip_b, PORT, Duration::from_millis(5)))?;
    cp.delete(probe())?;
    until(Duration::from_secs(30), || !connects(&a, ip_b, PORT, Duration::from_millis(5)))?;
    settle(&agent1, cell1, 0.0)?;
    settle(&agent2, cell2, POLICIES as f64)?;
    let (mut allow, mut revoke) = (Vec::new(), Vec::new());
    for i in 0..tries {
        cp.create(probe())?;
        allow.push(until(Duration::from_secs(30), || connects(&a, ip_b, PORT, Duration::from_millis(5)))?);
        cp.delete(probe())?;
        revoke.push(until(Duration::from_secs(30), || !connects(&a, ip_b, PORT, Duration::from_millis(5)))?);
        // One cell refusing is enough to refuse; wait until both have applied the removal,
        // so that the next try starts from a settled state (an iptables rewrite of cell 2
        // takes a good part of a second).
        settle(&agent1, cell1, 0.0)?;
        settle(&agent2, cell2, POLICIES as f64)?;
        eprint!("\r   {backend}: convergence {}/{tries}", i + 1);
    }
    eprintln!();

    let mut adds = Vec::new();
    for i in 0..adds_wanted {
        let ctr = Netns::new("new");
        let name = format!("new-{i}");
        let app = format!("dst-{}", i % DESTINATIONS);
        let t = Instant::now();
        agent2.add(cell2, &name, &ctr, &app)?;
        adds.push(t.elapsed());
        agent2.del(cell2, &name, &ctr, &app)?;
    }

    eprintln!("   {backend}: measuring the agent's CPU over {idle:?} with nothing changing");
    let cpu = thread_cpu(&agent2.thread_name);
    std::thread::sleep(idle);
    let cpu = thread_cpu(&agent2.thread_name) - cpu;

    // Recovery: the control plane goes away, comes back on its port, and a policy is
    // created at once; how long until the cells enforce it.
    let (count, outage) = outages();
    let port = cp.port;
    let mut recover = Vec::new();
    for i in 0..count {
        eprintln!("   {backend}: control plane outage {}/{count} ({outage:?})", i + 1);
        drop(cp);
        std::thread::sleep(outage);
        cp = ControlPlane::start_on(&ctl, &ca, &dir, port)?;
        cp.create(probe())?;
        recover.push(until(Duration::from_secs(60), || connects(&a, ip_b, PORT, Duration::from_millis(5)))?);
        cp.delete(probe())?;
        until(Duration::from_secs(30), || !connects(&a, ip_b, PORT, Duration::from_millis(5)))?;
        settle(&agent1, cell1, 0.0)?;
        settle(&agent2, cell2, POLICIES as f64)?;
    }

    Ok(vec![
        summary("convergence, API answer → first allowed connection", allow),
        summary("removal, API answer → first refused connection", revoke),
        summary(&format!("CNI ADD with {POLICIES} policies on the cell"), adds),
        summary(&format!("after a {outage:?} control-plane outage, API answer → first allowed connection"), recover),
        format!(
            "agent CPU over {}s with {POLICIES} policies and no change: {:.2} s ({:.3}% of a core)",
            idle.as_secs(),
            cpu.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / idle.as_secs_f64()
        ),
    ])
}

fn main() -> std::process::ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the system benchmark builds network namespaces: run it as root");
        return std::process::ExitCode::from(2);
    }
    // Warnings from the parts under test (RUST_LOG=info shows what each reconcile did).
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    clean_up_on_signal(&["c2c-bench"]);
    let asked: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let mut failed = false;
    for backend in ["nftables", "iptables"] {
        if !asked.is_empty() && !asked.iter().any(|a| a == backend) {
            continue;
        }
        println!("== {backend} backend, two cells, {POLICIES} policies towards cell 2");
        match run(backend) {
            Ok(lines) => lines.iter().for_each(|l| println!("   {l}")),
            Err(e) => {
                eprintln!("   {backend}: failed: {e:#}");
                failed = true;
            }
        }
        remove_namespaces();
    }
    if failed { std::process::ExitCode::from(1) } else { std::process::ExitCode::SUCCESS }
}
