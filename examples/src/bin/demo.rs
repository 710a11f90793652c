//! The local demo of the whole system (run as root):
//!
//!     sudo cargo run --release -p examples --bin demo
//!
//! It builds, in throwaway network namespaces on this machine: an underlay switch, a control
//! plane (policy-server on SQLite with the UAA and Cloud Controller test doubles), two cells
//! running netagent with nftables enforcement, and the apps of the seed scenario as
//! containers wired by the CNI plugin: A on both cells, B on cell 2, C on cell 1. It applies
//! the policies A→B and A→C (tcp 8080) through the generated client, measures who can reach
//! whom with real TCP connections, prints the matrix, and removes everything it created,
//! also on Ctrl-C or failure.

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use netagent::cni::config::{Env, NetConf};
use netagent::lab::{Netns, TcpServer, attach, connects, fabric};
use policy_client::types::{Policies, Policy, Protocol};

const PORT: u16 = 8080;

/// A thread inside a namespace running something until it is told to stop.
struct Background {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn enter(ns_path: &str) {
    let fd = std::fs::File::open(ns_path).expect("namespace exists");
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter namespace");
}

/// A batch of policies to create, and where to send the outcome.
type PolicyRequest = (Vec<Policy>, mpsc::Sender<String>);

/// The control plane in the `ctl` namespace; answers policy requests sent to it.
fn control_plane(
    ctl: &Netns,
    ca: &testkit::pki::TestCa,
    dir: &std::path::Path,
) -> anyhow::Result<(Background, u16, mpsc::Sender<PolicyRequest>)> {
    let server_cert = ca.server("policy-server", &["10.254.250.254"]);
    let path = ctl.path();
    let db = format!("sqlite://{}/policy.db?mode=rwc", dir.display());
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let (cmd_tx, cmd_rx) = mpsc::channel::<PolicyRequest>();
    let thread = std::thread::spawn(move || {
        enter(&path);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let cf = testkit::Cf::start().await.expect("UAA and Cloud Controller doubles");
            let mut config = policy_api::dev::config_for_doubles(&cf, &db);
            config.metrics_listen = None;
            config.internal.listen = "10.254.250.254:0".parse().unwrap();
            config.internal.tls = Some(policy_api::tls::TlsFiles {
                cert_file: server_cert.cert,
                key_file: server_cert.key,
                client_ca_file: Some(server_cert.ca),
            });
            let server = policy_api::Server::start(&config).await.expect("policy-server starts");
            let admin = policy_client::Client::new_with_token(&server.url(), &cf.uaa.user_token("admin")).unwrap();
            ready_tx.send(server.internal_addr.unwrap().port()).unwrap();
            // The demo sends one batch of policies.
            let request = tokio::task::spawn_blocking(move || cmd_rx.recv().ok()).await.unwrap();
            if let Some((policies, reply)) = request {
                let r = admin.create_policies(&Policies { policies }).await;
                let _ = reply.send(match r {
                    Ok(_) => "ok".into(),
                    Err(e) => e.to_string(),
                });
            }
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            server.shutdown().await;
        });
    });
    let port = ready_rx.recv_timeout(Duration::from_secs(60)).context("the control plane did not start")?;
    Ok((Background { stop: Some(stop_tx), thread: Some(thread) }, port, cmd_tx))
}

/// netagent for cell `i`; returns its reconcile address.
fn cell_agent(
    cell: &Netns,
    i: u8,
    port: u16,
    ca: &testkit::pki::TestCa,
    state: &std::path::Path,
) -> anyhow::Result<(Background, String)> {
    let cert = ca.client(&format!("cell-{i}"));
    let cert = netagent::lab::CellCert { cert: cert.cert, key: cert.key, ca: cert.ca };
    let config = netagent::lab::cell_config(i, port, cert, state, "nftables", 500);
    config.validate()?;
    let path = cell.path();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        enter(&path);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            match netagent::agent::Agent::start(config.clone()).await {
                Ok(agent) => {
                    ready_tx.send(Ok(format!("http://{}", agent.listen))).unwrap();
                    let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                    agent.stop(&config, true).await;
                }
                Err(e) => ready_tx.send(Err(e.to_string())).unwrap(),
            }
        });
    });
    let agent = ready_rx
        .recv_timeout(Duration::from_secs(60))
        .context("netagent did not start")?
        .map_err(anyhow::Error::msg)?;
    Ok((Background { stop: Some(stop_tx), thread: Some(thread) }, agent))
}

/// A container of `app`, wired by the CNI plugin's own code inside the cell's namespace.
fn container(
    cell: &Netns,
    name: &str,
    app: &str,
    state: &std::path::Path,
    agent: &str,
) -> anyhow::Result<(Netns, Ipv4Addr)> {
    let ctr = Netns::new(&format!("demo-{name}"));
    let env = Env {
        command: netagent::cni::config::Command::Add,
        container_id: name.to_string(),
        netns: ctr.path(),
        ifname: "eth0".into(),
        args: [("app_id".to_string(), app.to_string())].into_iter().collect(),
    };
    let conf_json = format!(
        r#"{{"cniVersion":"1.0.0","name":"c2c","type":"c2c-cni","stateDir":"{}","agent":"{agent}"}}"#,
        state.display()
    );
    let conf = NetConf::parse(conf_json.as_bytes(), &env).map_err(|e| anyhow::anyhow!(e.to_json()))?;
    let result = cell.run(move || async move { netagent::cni::plugin::add(&env, &conf).await });
    let result = result.map_err(|e| anyhow::anyhow!("CNI ADD for {name}: {}", e.to_json()))?;
    let v: serde_json::Value = serde_json::from_str(&result)?;
    let ip = v["ips"][0]["address"].as_str().unwrap_or("").trim_end_matches("/32").parse()?;
    Ok((ctr, ip))
}

fn run() -> anyhow::Result<bool> {
    let dir = std::env::temp_dir().join(format!("c2c-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = TempDir(dir.clone());
    println!("== building the lab: an underlay switch, a control plane, two cells");
    let f = fabric(2);
    let ctl = Netns::new("ctl");
    attach(&f.switch, &ctl, 254);
    let ca = testkit::pki::TestCa::new(&dir, "ca");
    let (cp, port, policies_tx) = control_plane(&ctl, &ca, &dir)?;
    println!("   policy-server up (SQLite, test UAA and Cloud Controller), cells' API on 10.254.250.254:{port}");
    let states = [dir.join("cell1"), dir.join("cell2")];
    let (agent1, url1) = cell_agent(&f.cells[0], 1, port, &ca, &states[0])?;
    let (agent2, url2) = cell_agent(&f.cells[1], 2, port, &ca, &states[1])?;
    println!("   netagent on cell 1 and cell 2 (VXLAN with GBP, nftables enforcement)");

    println!("== starting the apps as containers through the CNI plugin");
    let (a1, ip_a1) = container(&f.cells[0], "a1", "app-a", &states[0], &url1)?;
    let (c1, ip_c1) = container(&f.cells[0], "c1", "app-c", &states[0], &url1)?;
    let (a2, ip_a2) = container(&f.cells[1], "a2", "app-a", &states[1], &url2)?;
    let (b2, ip_b2) = container(&f.cells[1], "b2", "app-b", &states[1], &url2)?;
    for (n, ip, cell) in [("A", ip_a1, 1), ("C", ip_c1, 1), ("A", ip_a2, 2), ("B", ip_b2, 2)] {
        println!("   app {n} at {ip} on cell {cell}");
    }

    println!("== applying policies A→B and A→C (tcp {PORT}) through the generated client");
    let (reply_tx, reply_rx) = mpsc::channel();
    let policies = vec![
        Policy::new("app-a", "app-b", Protocol::Tcp, i32::from(PORT), i32::from(PORT)),
        Policy::new("app-a", "app-c", Protocol::Tcp, i32::from(PORT), i32::from(PORT)),
    ];
    let servers: Vec<TcpServer> = [(&a1, ip_a1), (&a2, ip_a2), (&b2, ip_b2), (&c1, ip_c1)]
        .iter()
        .map(|(ns, ip)| TcpServer::start(ns, *ip, PORT))
        .collect();
    policies_tx.send((policies, reply_tx))?;
    let reply = reply_rx.recv_timeout(Duration::from_secs(30))?;
    let applied = Instant::now();
    if reply != "ok" {
        bail!("creating the policies failed: {reply}");
    }
    while !connects(&a1, ip_b2, PORT, Duration::from_millis(20)) {
        if applied.elapsed() > Duration::from_secs(20) {
            bail!("the policy never reached the cells");
        }
    }
    println!("   first allowed connection {:.0?} after the API answered", applied.elapsed());

    println!("== measuring with real TCP connections to port {PORT} (✓ connects, · refused)");
    let members: [(&str, &Netns, Ipv4Addr); 4] =
        [("A@cell1", &a1, ip_a1), ("A@cell2", &a2, ip_a2), ("B@cell2", &b2, ip_b2), ("C@cell1", &c1, ip_c1)];
    let expected = |src: &str, dst: &str| src.starts_with('A') && (dst.starts_with('B') || dst.starts_with('C'));
    print!("{:>10}", "from \\ to");
    for (dst, _, _) in &members {
        print!("{dst:>10}");
    }
    println!();
    let mut all_as_expected = true;
    for (src, src_ns, _) in &members {
        print!("{src:>10}");
        for (dst, dst_ns, dst_ip) in &members {
            if src == dst {
                print!("{:>10}", "-");
                continue;
            }
            let _ = dst_ns;
            let ok = connects(src_ns, *dst_ip, PORT, Duration::from_millis(500));
            all_as_expected &= ok == expected(src, dst);
            print!("{:>10}", if ok { "✓" } else { "·" });
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        println!();
    }
    println!(
        "{}",
        if all_as_expected {
            "== as the policies say: A reaches B and C; B and C reach nobody; nothing reaches A"
        } else {
            "== MISMATCH: the measured matrix differs from what the policies allow"
        }
    );
    println!("== cleaning up");
    drop(servers);
    drop((a1, a2, b2, c1, agent1, agent2, cp, ctl, f));
    Ok(all_as_expected)
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes every namespace this process created (used on Ctrl-C).
fn remove_namespaces() {
    let pid = std::process::id();
    if let Ok(out) = std::process::Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with("c2c-") && name.contains(&format!("-{pid}-")) {
                let _ = std::process::Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }
    let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("c2c-demo-{pid}")));
}

fn main() -> std::process::ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("The demo builds network namespaces, VXLAN devices and nftables tables, so it needs root.");
        eprintln!("Run it as root, e.g.:  sudo -E cargo run --release -p examples --bin demo");
        return std::process::ExitCode::from(2);
    }
    for tool in ["ip", "nft"] {
        if std::process::Command::new(tool).arg("-V").output().is_err() {
            eprintln!("The demo needs `{tool}` (apt-get install iproute2 nftables).");
            return std::process::ExitCode::from(2);
        }
    }
    // Ctrl-C or SIGTERM: remove what was built, then leave.
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("\ninterrupted: cleaning up");
        remove_namespaces();
        std::process::exit(130);
    });
    let outcome = std::panic::catch_unwind(run);
    remove_namespaces();
    match outcome {
        Ok(Ok(true)) => std::process::ExitCode::SUCCESS,
        Ok(Ok(false)) => std::process::ExitCode::from(1),
        Ok(Err(e)) => {
            eprintln!("demo failed: {e:#}");
            std::process::ExitCode::from(1)
        }
        Err(_) => {
            eprintln!("demo failed (see the message above); everything it built was removed");
            std::process::ExitCode::from(1)
        }
    }
}
