//! Drift repair with the iptables backend: someone flushes netagent's chain; the agent hears
//! the nf_tables commit (iptables-nft) and puts the whole ruleset back at once, instead of at
//! its next quiet round (25 s). Needs root and iptables (nf_tables flavour, Debian's
//! default).

use std::time::{Duration, Instant};

use harness::cell::{CellAgent, CellOptions};
use harness::lab::{Netns, eventually, require_root, require_tool};
use harness::probes::exchange;
use harness::world::World;
use netagent::config::Enforcement;
use policy_client::types::{Policy, Protocol};

/// The `-A` rules of netagent's iptables chains on a cell.
fn our_rules(cell: &Netns) -> usize {
    let out =
        std::process::Command::new("ip").args(["netns", "exec", &cell.0, "iptables", "-w", "-S"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("-A vpa--") || l.starts_with("-A c2c-in--"))
        .count()
}

fn forward_chain(cell: &Netns) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &cell.0, "iptables", "-w", "-S", "FORWARD"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines().find_map(|l| l.strip_prefix("-A FORWARD -j vpa--")).map(|s| format!("vpa--{s}")).expect("hooked")
}

#[test]
fn iptables_drift_is_repaired_at_once() {
    require_root();
    require_tool("iptables-restore", "iptables");
    let w = World::new(1, "c2c-drift");
    let (f, _ctl, dir, ca) = (&w.fabric, &w.ctl, &w.dir, &w.ca);
    let cell = &f.cells[0];
    let cp = w.control_plane();
    let options = CellOptions { enforcement: Enforcement::Iptables, ..CellOptions::default() };
    let agent = CellAgent::start(cell, 1, &cp.url(), ca, &dir.join("cell1"), &options).unwrap();
    let (a_ns, b_ns, c_ns) = (Netns::new("a"), Netns::new("b"), Netns::new("c"));
    agent.add(cell, "a", &a_ns, "app-a").unwrap();
    let b = agent.add(cell, "b", &b_ns, "app-b").unwrap();
    let c = agent.add(cell, "c", &c_ns, "app-c").unwrap();
    cp.create(vec![Policy::new("app-a", "app-b", Protocol::Tcp, 8080, 8080)]).unwrap();
    eventually("A reaches B", || exchange(&a_ns, &b_ns, b, 8080).0);
    let installed = our_rules(cell);

    for _ in 0..3 {
        let chain = forward_chain(cell);
        assert!(cell.exec(&["iptables", "-w", "-F", &chain]), "flushing {chain}");
        let flushed = Instant::now();
        while our_rules(cell) < installed {
            assert!(
                flushed.elapsed() < Duration::from_secs(5),
                "the flushed chain was not repaired (quiet rounds are 25 s)"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("iptables ruleset repaired {:?} after the flush", flushed.elapsed());
    }
    assert!(exchange(&a_ns, &b_ns, b, 8080).0, "A reaches B after the repairs");
    assert_eq!(exchange(&a_ns, &c_ns, c, 8080), (false, false), "A still cannot reach C");
}
