//! The whole of part 1 on the real kernel: a policy server (cells' API over mTLS) in its own
//! namespace, cells running netagent, containers created through `c2c-cni`. Containers on
//! different cells talk TCP and UDP; a cell that joins later is reached without restarting
//! the others; a cell that leaves is removed from their tables. Needs root.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Something running on a thread inside a namespace until told to stop.
struct InNetns<T> {
    value: T,
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T> Drop for InNetns<T> {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the policy server inside `ns`, listening on 10.254.250.254 for cells.
fn control_plane(ns: &Netns, ca: &testkit::pki::TestCa, pki: &std::path::Path) -> InNetns<u16> {
    let server = ca.server("policy-server", &["10.254.250.254"]);
    let path = ns.path();
    let db = format!("sqlite://{}/cp.db?mode=rwc", pki.display());
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let mut config = policy_api::Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                metrics_listen: None,
                database_url: db,
                ..Default::default()
            };
            config.internal.listen = "10.254.250.254:0".parse().unwrap();
            config.internal.tls = Some(policy_api::tls::TlsFiles {
                cert_file: server.cert,
                key_file: server.key,
                client_ca_file: Some(server.ca),
            });
            config.internal.lease_expiration_secs = 120;
            let server = policy_api::Server::start(&config).await.unwrap();
            port_tx.send(server.internal_addr.unwrap().port()).unwrap();
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            server.shutdown().await;
        });
    });
    let port = port_rx.recv_timeout(Duration::from_secs(30)).expect("control plane starts");
    InNetns { value: port, stop: Some(stop_tx), thread: Some(thread) }
}

struct AgentInfo {
    listen: std::net::SocketAddr,
    subnet: String,
}

/// Runs netagent for cell `i` inside its namespace.
fn agent(
    cell: &Netns,
    i: u8,
    port: u16,
    ca: &testkit::pki::TestCa,
    state: &std::path::Path,
    release_on_stop: bool,
    enforcement: &str,
) -> InNetns<AgentInfo> {
    // Cell certificates come from the CA the control plane trusts.
    let cert = ca.client(&format!("cell-{i}"));
    let cert = CellCert { cert: cert.cert, key: cert.key, ca: cert.ca };
    let config = cell_config(i, port, cert, state, enforcement, 200);
    config.validate().unwrap();
    let path = cell.path();
    let (info_tx, info_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let agent = netagent::agent::Agent::start(config.clone()).await.unwrap();
            info_tx.send(AgentInfo { listen: agent.listen, subnet: agent.lease.overlay_subnet.clone() }).unwrap();
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            agent.stop(&config, release_on_stop).await;
        });
    });
    let value = info_rx.recv_timeout(Duration::from_secs(30)).expect("netagent starts");
    InNetns { value, stop: Some(stop_tx), thread: Some(thread) }
}

/// ADD through the CNI plugin, in the cell's namespace; returns the container's address.
fn cni_add(
    cell: &Netns,
    ctr: &Netns,
    id: &str,
    app: &str,
    state: &std::path::Path,
    agent: std::net::SocketAddr,
) -> Ipv4Addr {
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"c2c","type":"c2c-cni","stateDir":"{}","agent":"http://{agent}"}}"#,
        state.display()
    );
    let (code, text) =
        run_plugin(env!("CARGO_BIN_EXE_c2c-cni"), cell, "ADD", id, &ctr.path(), &format!("app_id={app}"), &conf);
    assert_eq!(code, 0, "ADD failed: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32").parse().unwrap()
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

fn vtep_routes(cell: &Netns) -> usize {
    let out = Command::new("ip").args(["-n", &cell.0, "route", "show", "dev", "c2c-vtep"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" via ")).count()
}

#[test]
fn cells_and_containers_with_netagent() {
    require_root();
    let f = fabric(3);
    let ctl = Netns::new("ctl");
    attach(&f.switch, &ctl, 254);
    let pki = std::env::temp_dir().join(format!("c2c-cells-{}", std::process::id()));
    std::fs::create_dir_all(&pki).unwrap();
    let ca = testkit::pki::TestCa::new(&pki, "ca");
    let cp = control_plane(&ctl, &ca, &pki);

    let states: Vec<std::path::PathBuf> = (1..=3).map(|i| pki.join(format!("state{i}"))).collect();
    let a1 = agent(&f.cells[0], 1, cp.value, &ca, &states[0], false, "none");
    let a2 = agent(&f.cells[1], 2, cp.value, &ca, &states[1], false, "none");
    assert_ne!(a1.value.subnet, a2.value.subnet, "two cells never share a subnet");
    eventually("both cells know each other", || vtep_routes(&f.cells[0]) == 1 && vtep_routes(&f.cells[1]) == 1);

    let (ca_ns, cb_ns) = (Netns::new("ctr-a"), Netns::new("ctr-b"));
    let ip_a = cni_add(&f.cells[0], &ca_ns, "a", "app-a", &states[0], a1.value.listen);
    let ip_b = cni_add(&f.cells[1], &cb_ns, "b", "app-b", &states[1], a2.value.listen);
    let s = echo_servers(&cb_ns, ip_b, 8080);
    assert_eq!(talk(&ca_ns, ip_b, 8080), (true, true), "TCP and UDP from cell 1's container to cell 2's");
    s.join().unwrap();
    let s = echo_servers(&ca_ns, ip_a, 8081);
    assert_eq!(talk(&cb_ns, ip_a, 8081), (true, true), "and back");
    s.join().unwrap();

    // A third cell joins; the others learn it without a restart.
    let a3 = agent(&f.cells[2], 3, cp.value, &ca, &states[2], true, "none");
    let cc_ns = Netns::new("ctr-c");
    let ip_c = cni_add(&f.cells[2], &cc_ns, "c", "app-c", &states[2], a3.value.listen);
    eventually("cells 1 and 2 learn cell 3", || vtep_routes(&f.cells[0]) == 2 && vtep_routes(&f.cells[1]) == 2);
    let s = echo_servers(&cc_ns, ip_c, 8082);
    assert_eq!(talk(&ca_ns, ip_c, 8082), (true, true), "cell 1's container reaches the new cell's");
    s.join().unwrap();

    // Cell 3 leaves (releases its lease): it disappears from the others' tables.
    drop(a3);
    eventually("cell 3 removed from the others", || vtep_routes(&f.cells[0]) == 1 && vtep_routes(&f.cells[1]) == 1);

    // The control plane goes away: the cells keep what they have and traffic still flows.
    drop(cp);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(vtep_routes(&f.cells[0]), 1, "nothing is flushed while the control plane is away");
    let s = echo_servers(&cb_ns, ip_b, 8083);
    assert_eq!(talk(&ca_ns, ip_b, 8083), (true, true), "traffic flows without the control plane");
    s.join().unwrap();
    drop((a1, a2));
    let _ = std::fs::remove_dir_all(&pki);
}

/// Policies from the control plane enforced by netagent (nftables): denied until a policy
/// exists, allowed within moments of its creation, denied again after its deletion.
#[test]
fn policies_flow_from_the_control_plane_to_the_kernel() {
    require_root();
    let f = fabric(2);
    let ctl = Netns::new("ctl");
    attach(&f.switch, &ctl, 254);
    let pki = std::env::temp_dir().join(format!("c2c-policies-{}", std::process::id()));
    std::fs::create_dir_all(&pki).unwrap();
    let ca = testkit::pki::TestCa::new(&pki, "ca");
    let cp = control_plane(&ctl, &ca, &pki);
    let states: Vec<std::path::PathBuf> = (1..=2).map(|i| pki.join(format!("state{i}"))).collect();
    let a1 = agent(&f.cells[0], 1, cp.value, &ca, &states[0], false, "nftables");
    let a2 = agent(&f.cells[1], 2, cp.value, &ca, &states[1], false, "nftables");
    eventually("both cells know each other", || vtep_routes(&f.cells[0]) == 1 && vtep_routes(&f.cells[1]) == 1);
    let (ca_ns, cb_ns) = (Netns::new("ctr-a"), Netns::new("ctr-b"));
    let ip_a = cni_add(&f.cells[0], &ca_ns, "a", "app-a", &states[0], a1.value.listen);
    let ip_b = cni_add(&f.cells[1], &cb_ns, "b", "app-b", &states[1], a2.value.listen);
    assert_eq!(exchange(&ca_ns, &cb_ns, ip_b, 8080), (false, false), "denied without a policy");

    // The policy is written to the control plane's database (as its API would).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("sqlite://{}/cp.db?mode=rwc", pki.display());
    let store = rt.block_on(policy_api::store::Store::connect(&url, &Default::default())).unwrap();
    let policy = policy_api::policy::Policy::new("app-a", "app-b", policy_api::policy::Protocol::Tcp, 8080, 8080);
    let created = Instant::now();
    rt.block_on(store.create(std::slice::from_ref(&policy))).unwrap();
    eventually("the policy allows A to reach B", || exchange(&ca_ns, &cb_ns, ip_b, 8080).0);
    eprintln!("policy enforced {:?} after it was written", created.elapsed());
    assert_eq!(exchange(&ca_ns, &cb_ns, ip_b, 8080), (true, false), "TCP only");
    // What the agent did shows in its metrics.
    let listen = a2.value.listen;
    let metrics = f.cells[1].run(move || async move {
        reqwest::get(format!("http://{listen}/metrics")).await.unwrap().text().await.unwrap()
    });
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name} in {metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("c2c_netagent_policies "), 1.0, "{metrics}");
    assert_eq!(value("c2c_netagent_allow_entries "), 1.0, "{metrics}");
    assert!(value("c2c_netagent_policy_applies_total{kind=\"diff\"}") >= 1.0, "{metrics}");
    assert_eq!(value("c2c_netagent_policy_apply_errors_total "), 0.0, "{metrics}");

    // Someone deletes the table, twice: the agent hears it from the kernel and puts it back
    // each time at once. (Its quiet rounds are 25 s apart: two repairs within a few seconds
    // of each deletion can only come from hearing the kernel.)
    for _ in 0..2 {
        assert!(f.cells[1].exec(&["nft", "delete", "table", "ip", "c2c"]));
        let deleted = Instant::now();
        while !f.cells[1].exec(&["nft", "list", "table", "ip", "c2c"]) {
            assert!(deleted.elapsed() < Duration::from_secs(5), "the table was not put back when it went");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(exchange(&ca_ns, &cb_ns, ip_b, 8080), (true, false), "enforcing again: A reaches B over TCP");
    assert_eq!(exchange(&cb_ns, &ca_ns, ip_a, 8080), (false, false), "and B cannot reach A");

    // B is restarted: its container goes, a new one of the same app comes with a new address,
    // and the same policy covers it as soon as the CNI plugin returns.
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"c2c","type":"c2c-cni","stateDir":"{}","agent":"http://{}"}}"#,
        states[1].display(),
        a2.value.listen
    );
    let (code, out) = run_plugin(env!("CARGO_BIN_EXE_c2c-cni"), &f.cells[1], "DEL", "b", &cb_ns.path(), "", &conf);
    assert_eq!(code, 0, "{out}");
    let cb2_ns = Netns::new("ctr-b2");
    let ip_b2 = cni_add(&f.cells[1], &cb2_ns, "b2", "app-b", &states[1], a2.value.listen);
    assert_ne!(ip_b2, ip_b, "a new address");
    assert_eq!(exchange(&ca_ns, &cb2_ns, ip_b2, 8080), (true, false), "the restarted instance is covered at once");

    // netagent restarts on cell 2: an established connection survives it.
    let (to_client, from_test) = std::sync::mpsc::channel::<()>();
    let (to_test, from_client) = std::sync::mpsc::channel::<bool>();
    let server = {
        let path = cb2_ns.path();
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let fd = std::fs::File::open(&path).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let l = std::net::TcpListener::bind((ip_b2, 8080)).unwrap();
            let (conn, _) = l.accept().unwrap();
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            let mut w = conn;
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                let _ = w.write_all(line.as_bytes());
                line.clear();
            }
        })
    };
    let client = {
        let path = ca_ns.path();
        std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let fd = std::fs::File::open(&path).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let s = std::net::TcpStream::connect((ip_b2, 8080)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut w = s;
            let mut line = String::new();
            let mut round = |msg: &str| {
                line.clear();
                w.write_all(msg.as_bytes()).is_ok() && r.read_line(&mut line).is_ok() && line == msg
            };
            let first = round("before\n");
            to_test.send(first).unwrap();
            from_test.recv().unwrap();
            to_test.send(round("after\n")).unwrap();
        })
    };
    assert!(from_client.recv().unwrap(), "the long-lived connection works");
    drop(a2);
    let a2 = agent(&f.cells[1], 2, cp.value, &ca, &states[1], false, "nftables");
    // Let the new agent enforce again (it replaces the table in one transaction).
    std::thread::sleep(Duration::from_millis(1500));
    to_client.send(()).unwrap();
    assert!(from_client.recv().unwrap(), "the established connection survived the agent's restart");
    client.join().unwrap();
    server.join().unwrap();

    rt.block_on(store.delete(std::slice::from_ref(&policy))).unwrap();
    eventually("the deleted policy stops new connections", || !exchange(&ca_ns, &cb2_ns, ip_b2, 8080).0);

    // The control plane goes away: the cells keep enforcing what they last had. Nothing is
    // opened and nothing is flushed, however long it stays away.
    rt.block_on(store.create(std::slice::from_ref(&policy))).unwrap();
    eventually("the policy is back", || exchange(&ca_ns, &cb2_ns, ip_b2, 8080).0);
    drop(cp);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(exchange(&ca_ns, &cb2_ns, ip_b2, 8080), (true, false), "still allowed over TCP only");
    assert_eq!(exchange(&cb2_ns, &ca_ns, ip_a, 8080), (false, false), "still denied the other way");
    drop((a1, a2));
    let _ = std::fs::remove_dir_all(&pki);
}
