//! A cell set up from the documented defaults, as a new operator would: netagent (the real
//! binary, its own process) with only the required keys, and `c2c-cni` with a
//! configuration holding only `type` and `name`. The container it creates is enforced. And
//! when the rules cannot be put in the kernel, the plugin says so and leaves nothing behind.
//! Needs root and nft.

use harness::cni::Invocation;
use harness::lab::{Netns, eventually, require_root, require_tool};
use harness::probes::exchange;
use harness::process::AgentProcess;
use harness::scratch::TempDir;
use harness::world::World;
use policy_client::types::{Policy, Protocol};

/// netagent's configuration with only the keys it requires.
fn minimal_config(dir: &TempDir, ca: &testkit::pki::TestCa, url: &str) -> std::path::PathBuf {
    let cert = ca.client_for("cell-1", &["10.254.250.1"]);
    let text = format!(
        "underlay_ip = \"10.254.250.1\"\ncontrol_plane_url = \"{url}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\nca_file = \"{}\"\n",
        cert.cert.display(),
        cert.key.display(),
        cert.ca.display()
    );
    let path = dir.join("netagent.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const MINIMAL_CNI: &str = r#"{"type":"c2c-cni","name":"c2c"}"#;

fn add(agent: &AgentProcess, id: &str, ctr: &Netns, app: &str) -> harness::cni::Outcome {
    let (netns, args) = (ctr.path(), format!("app_id={app}"));
    agent.cni(&Invocation { command: "ADD", container: id, netns: &netns, args: &args, conf: MINIMAL_CNI })
}

#[test]
fn a_cell_from_the_documented_defaults_enforces() {
    require_root();
    require_tool("nft", "nftables");
    let w = World::new(1, "c2c-defaults");
    let (f, dir, ca) = (&w.fabric, &w.dir, &w.ca);
    let cell = &f.cells[0];
    let cp = w.control_plane();
    // Containers' namespaces exist before the agent's private mount namespace is made, so
    // that their files are in it (as a runtime's are on a real cell).
    let (a_ns, b_ns) = (Netns::new("a"), Netns::new("b"));
    let agent = AgentProcess::start(cell, &minimal_config(dir, ca, &cp.url()), None, "127.0.0.1:23954");

    let a = add(&agent, "a", &a_ns, "app-a");
    assert_eq!(a.code, 0, "ADD with the default agent: {}", a.stdout);
    let b = add(&agent, "b", &b_ns, "app-b");
    assert_eq!(b.code, 0, "{}", b.stdout);
    let ip_b = b.json()["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32").parse().unwrap();
    assert_eq!(exchange(&a_ns, &b_ns, ip_b, 8080), (false, false), "denied without a policy");
    cp.create(vec![Policy::new("app-a", "app-b", Protocol::Tcp, 8080, 8080)]).unwrap();
    eventually("allowed with one", || exchange(&a_ns, &b_ns, ip_b, 8080).0);
    assert!(cell.exec(&["nft", "list", "table", "ip", "c2c"]), "nftables is the default backend");
    assert!(agent.exists("/var/vcap/data/c2c/containers.json"), "the default state_dir");
}

#[test]
fn cni_add_fails_and_rolls_back_when_the_rules_cannot_be_installed() {
    require_root();
    let w = World::new(1, "c2c-truthful");
    let (f, dir, ca) = (&w.fabric, &w.dir, &w.ca);
    let cell = &f.cells[0];
    let cp = w.control_plane();
    let ctr = Netns::new("ctr");
    // No `nft` for netagent: the table cannot be created.
    let agent = AgentProcess::start(cell, &minimal_config(dir, ca, &cp.url()), Some("/var/empty"), "127.0.0.1:23954");

    let out = add(&agent, "c1", &ctr, "app-a");
    assert_eq!(out.code, 1, "ADD must fail: {}", out.stdout);
    let err = out.json();
    assert!(err["msg"].as_str().unwrap_or("").contains("netagent"), "{err}");
    assert!(!ctr.exec(&["ip", "link", "show", "eth0"]), "no interface left in the container");
    let links = std::process::Command::new("ip").args(["-n", &cell.0, "-o", "link"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains(" s-"), "no container veth left on the cell");
    let store = agent.read("/var/vcap/data/c2c/containers.json");
    assert!(!store.contains("c1"), "nothing recorded: {store}");
    drop(cp);
}

/// netagent's local API keeps answering the CNI plugin while thousands of clients hold idle
/// connections to it (each is closed after the header timeout; the connection cap bounds
/// the agent's file descriptors).
#[test]
fn idle_connections_do_not_stop_reconcile() {
    require_root();
    require_tool("nft", "nftables");
    let w = World::new(1, "c2c-idle");
    let (f, dir, ca) = (&w.fabric, &w.dir, &w.ca);
    let cell = &f.cells[0];
    let cp = w.control_plane();
    let agent =
        harness::cell::CellAgent::start(cell, 1, &cp.url(), ca, &dir.join("cell1"), &Default::default()).unwrap();
    netagent::local_api::raise_open_files_limit();
    let addr: std::net::SocketAddr = agent.url.trim_start_matches("http://").parse().unwrap();
    let url = format!("{}/reconcile", agent.url);
    let (status, idle, took) = cell.run(move || async move {
        let connects = (0..2000)
            .map(|_| tokio::time::timeout(std::time::Duration::from_secs(3), tokio::net::TcpStream::connect(addr)));
        let idle: Vec<_> = futures::future::join_all(connects).await.into_iter().filter_map(|r| r.ok()?.ok()).collect();
        let started = std::time::Instant::now();
        let client = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap();
        let status = client.post(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
        (status, idle.len(), started.elapsed())
    });
    assert!(idle >= 1900, "the idle connections were made ({idle})");
    assert_eq!(status, 200, "/reconcile answered with {idle} idle connections open");
    eprintln!("/reconcile answered in {took:?} with {idle} idle connections open");
}
