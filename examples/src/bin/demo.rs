//! The local demo of the whole system (run as root):
//!
//!     bash scripts/demo        # installs what it needs, then runs:
//!     cargo run --release -p examples --bin demo
//!
//! It builds, in throwaway network namespaces on this machine: an underlay switch, a control
//! plane (policy-server on SQLite with the UAA and Cloud Controller test doubles), two cells
//! running netagent with nftables enforcement, and the apps of the seed scenario as
//! containers wired by the CNI plugin: A on both cells, B on cell 2, C on cell 1. It applies
//! the policies A→B and A→C (tcp 8080) through the generated client, measures who can reach
//! whom with real TCP connections, prints the matrix, and removes everything it created,
//! also on Ctrl-C or failure.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::bail;
use harness::cell::{CellAgent, CellOptions, Cni};
use harness::control_plane::ControlPlane;
use harness::lab::{Netns, attach, fabric, remove_namespaces};
use harness::probes::{TcpServer, connects};
use harness::scratch::{TempDir, clean_up_on_signal};
use policy_client::types::{Policy, Protocol};

const PORT: u16 = 8080;

fn run() -> anyhow::Result<bool> {
    let tmp = TempDir::new("c2c-demo");
    let dir = tmp.path().to_path_buf();
    println!("== building the lab: an underlay switch, a control plane, two cells");
    let f = fabric(2);
    let ctl = Netns::new("ctl");
    attach(&f.switch, &ctl, 254);
    let ca = testkit::pki::TestCa::new(&dir, "ca");
    let cp = ControlPlane::start(&ctl, &ca, &dir)?;
    println!("   policy-server up (SQLite, test UAA and Cloud Controller), cells' API on {}", cp.url());
    let states = [dir.join("cell1"), dir.join("cell2")];
    // Cells look for each other every half second (the default is 5 s), so the demo's
    // second cell is known to the first one at once. `cargo run` builds the demo alone, so
    // the plugin's code runs in-process rather than as the `c2c-cni` binary.
    let options = CellOptions { lease_poll_interval_ms: 500, cni: Cni::InProcess, ..CellOptions::default() };
    let agent1 = CellAgent::start(&f.cells[0], 1, &cp.url(), &ca, &states[0], &options)?;
    let agent2 = CellAgent::start(&f.cells[1], 2, &cp.url(), &ca, &states[1], &options)?;
    println!("   netagent on cell 1 and cell 2 (VXLAN with GBP, nftables enforcement)");

    println!("== starting the apps as containers through the CNI plugin");
    let container = |agent: &CellAgent, cell: &Netns, name: &str, app: &str| -> anyhow::Result<(Netns, Ipv4Addr)> {
        let ctr = Netns::new(&format!("demo-{name}"));
        let ip = agent.add(cell, name, &ctr, app)?;
        Ok((ctr, ip))
    };
    let (a1, ip_a1) = container(&agent1, &f.cells[0], "a1", "app-a")?;
    let (c1, ip_c1) = container(&agent1, &f.cells[0], "c1", "app-c")?;
    let (a2, ip_a2) = container(&agent2, &f.cells[1], "a2", "app-a")?;
    let (b2, ip_b2) = container(&agent2, &f.cells[1], "b2", "app-b")?;
    for (n, ip, cell) in [("A", ip_a1, 1), ("C", ip_c1, 1), ("A", ip_a2, 2), ("B", ip_b2, 2)] {
        println!("   app {n} at {ip} on cell {cell}");
    }

    println!("== applying policies A→B and A→C (tcp {PORT}) through the generated client");
    let policies = vec![
        Policy::new("app-a", "app-b", Protocol::Tcp, i32::from(PORT), i32::from(PORT)),
        Policy::new("app-a", "app-c", Protocol::Tcp, i32::from(PORT), i32::from(PORT)),
    ];
    let servers: Vec<TcpServer> = [(&a1, ip_a1), (&a2, ip_a2), (&b2, ip_b2), (&c1, ip_c1)]
        .iter()
        .map(|(ns, ip)| TcpServer::start(ns, *ip, PORT))
        .collect();
    if let Err(e) = cp.create(policies) {
        bail!("creating the policies failed: {e:#}");
    }
    let applied = Instant::now();
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
        for (dst, _, dst_ip) in &members {
            if src == dst {
                print!("{:>10}", "-");
                continue;
            }
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

fn main() -> std::process::ExitCode {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("The demo builds network namespaces, VXLAN devices and nftables tables, so it needs root.");
        eprintln!("Run it as root, e.g.:  sudo -E cargo run --release -p examples --bin demo");
        return std::process::ExitCode::from(2);
    }
    for (tool, package) in [("ip", "iproute2"), ("nft", "nftables")] {
        if std::process::Command::new(tool).arg("-V").output().is_err() {
            eprintln!(
                "The demo needs `{tool}`: run `bash scripts/demo`, which installs it, or `apt-get install {package}`."
            );
            return std::process::ExitCode::from(2);
        }
    }
    clean_up_on_signal(&["c2c-demo"]);
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
