//! The cell's edge on the real kernel, with both backends: egress rules (ASGs and the
//! runtime's netOutRules) open exactly what they name, by workload; traffic out of the
//! overlay is masqueraded and its replies come back, c2c traffic is not; port mappings
//! take the router's traffic in from the underlay and are gone once removed. A cell
//! (`10.254.250.1`) and an "outside" host on the underlay (`10.254.250.2` and `.3`) that has
//! no route to the overlay. Needs root, `nft` and `iptables`.

use std::net::Ipv4Addr;

use netagent::config::Enforcement;
use netagent::enforcement::egress::{EgressRule, Group, Matches, Workload};
use netagent::enforcement::plan::{CellFacts, Edge, LocalContainer, Proto, Ruleset, TaggedPolicy, plan_cell};
use netagent::enforcement::{Applied, Enforce, backend};

use harness::lab::*;
use harness::probes::*;

const CELL: Ipv4Addr = Ipv4Addr::new(10, 254, 250, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 254, 250, 2);
const OUTSIDE_2: Ipv4Addr = Ipv4Addr::new(10, 254, 250, 3);

fn ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 255, 1, n)
}

fn wire(cell: &Netns, ctr: &Netns, ip: Ipv4Addr) {
    let path = ctr.path();
    cell.run(move || async move {
        let nl = netagent::netlink::Netlink::connect().unwrap();
        netagent::container_net::add(&nl, &path, "eth0", ip, 1450).await.unwrap();
    });
}

fn enforce(cell: &Netns, enforcer: Box<dyn Enforce>, rs: Ruleset) -> (Box<dyn Enforce>, Applied) {
    cell.run(move || async move {
        let mut e = enforcer;
        let applied = e.reconcile(&rs).unwrap_or_else(|e| panic!("the backend applies the ruleset: {e}"));
        (e, applied)
    })
}

/// What nflog group 7301 hands over in `cell` while `during` runs (and a moment after: the
/// kernel sends each packet as it is logged).
fn nflog_sees(cell: &Netns, during: impl FnOnce()) -> Vec<netagent::traffic_log::Logged> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let reader = cell.spawn(move || {
        let log = netagent::traffic_log::NfLog::open(7301).expect("nflog binds");
        ready_tx.send(()).unwrap();
        let mut seen = Vec::new();
        // Until the traffic is done, then one more read for what is still on its way.
        loop {
            let finished = done_rx.try_recv().is_ok();
            seen.extend(log.next().expect("nflog reads"));
            if finished {
                return seen;
            }
        }
    });
    ready_rx.recv().unwrap();
    during();
    done_tx.send(()).unwrap();
    reader.join().unwrap()
}

fn tcp(to: Ipv4Addr, port: u16) -> EgressRule {
    EgressRule { first: to, last: to, matches: Matches::Tcp { start: port, end: port }, log: false }
}

fn group(guid: &str, rules: Vec<EgressRule>, running: &[&str], staging: &[&str]) -> Group {
    Group {
        guid: guid.into(),
        rules,
        staging_default: false,
        running_default: false,
        staging_spaces: staging.iter().map(|s| s.to_string()).collect(),
        running_spaces: running.iter().map(|s| s.to_string()).collect(),
    }
}

fn facts(groups: Vec<Group>) -> CellFacts {
    CellFacts {
        edge: Some(Edge {
            cell_ip: CELL,
            overlay: (Ipv4Addr::new(10, 255, 0, 0), 16),
            no_masquerade: (Ipv4Addr::new(10, 255, 0, 0), 16),
            vtep: "c2c-vtep".into(),
            logging: Default::default(),
        }),
        groups,
        log_group: 7301,
        ..CellFacts::default()
    }
}

#[test]
fn the_edge_with_nftables() {
    require_tool("nft", "nftables");
    edge(Enforcement::Nftables);
}

#[test]
fn the_edge_with_iptables() {
    require_tool("iptables-restore", "iptables");
    edge(Enforcement::Iptables);
}

fn edge(setting: Enforcement) {
    require_root();
    require_tool("python3", "python3");
    let incremental = if setting == Enforcement::Nftables { Applied::Diff } else { Applied::Full };
    let f = fabric(2);
    let (cell, outside) = (&f.cells[0], &f.cells[1]);
    sh(&["ip", "-n", &outside.0, "addr", "add", "10.254.250.3/24", "dev", "u2"]);
    let (running, staging, other) = (Netns::new("run"), Netns::new("stage"), Netns::new("other"));
    wire(cell, &running, ip(2));
    wire(cell, &staging, ip(3));
    wire(cell, &other, ip(4));
    let mut containers = vec![
        LocalContainer {
            space: Some("s1".into()),
            workload: Workload::Running,
            port_mappings: vec![(61000, 8080)],
            ..LocalContainer::new(ip(2), Some("A"))
        },
        LocalContainer {
            space: Some("s1".into()),
            workload: Workload::Staging,
            ..LocalContainer::new(ip(3), Some("B"))
        },
        LocalContainer {
            net_out: vec![
                EgressRule {
                    first: OUTSIDE_2,
                    last: OUTSIDE_2,
                    matches: Matches::Udp { start: 53, end: 53 },
                    log: false,
                },
                EgressRule {
                    first: OUTSIDE,
                    last: OUTSIDE,
                    matches: Matches::Icmp { icmp_type: Some(8), code: Some(0) },
                    log: false,
                },
                // Logged: its connections reach nflog whatever the toggles say.
                EgressRule {
                    first: OUTSIDE,
                    last: OUTSIDE,
                    matches: Matches::Tcp { start: 7000, end: 7000 },
                    log: true,
                },
            ],
            ..LocalContainer::new(ip(4), None)
        },
    ];
    // Running containers of s1 may reach the outside host on 443, staging ones on 444; a
    // wide group for another space overlaps both and must change nothing here.
    let mut groups = vec![
        group("run", vec![tcp(OUTSIDE, 443)], &["s1"], &[]),
        group(
            "stage",
            vec![
                tcp(OUTSIDE, 444),
                EgressRule { first: OUTSIDE_2, last: OUTSIDE_2, matches: Matches::All, log: false },
            ],
            &[],
            &["s1"],
        ),
        group("wide", vec![tcp(OUTSIDE, 443), tcp(OUTSIDE, 444), tcp(OUTSIDE_2, 443)], &["s9"], &["s9"]),
    ];
    let policies = vec![TaggedPolicy {
        source: "A".into(),
        source_tag: 1,
        destination: "B".into(),
        destination_tag: 2,
        proto: Proto::Tcp,
        start: 9000,
        end: 9000,
    }];
    let (e, applied) = enforce(cell, backend(setting), plan_cell(&policies, &containers, &facts(groups.clone())));
    assert_eq!(applied, Applied::Full);

    let _servers = [
        PeerServer::start(outside, OUTSIDE, 443),
        PeerServer::start(outside, OUTSIDE, 444),
        PeerServer::start(outside, OUTSIDE_2, 443),
        PeerServer::start(&staging, ip(3), 9000),
        PeerServer::start(&running, ip(2), 8080),
    ];
    let cell_ip = Some(CELL.to_string());
    // Egress opens exactly the allowed destination and port, masqueraded, replies back.
    assert_eq!(seen_as(&running, OUTSIDE, 443), cell_ip, "running: its ASG, masqueraded to the cell");
    assert_eq!(seen_as(&running, OUTSIDE, 444), None, "running: not the staging group's port");
    assert_eq!(seen_as(&running, OUTSIDE_2, 443), None, "running: not another destination");
    assert_eq!(seen_as(&staging, OUTSIDE, 444), cell_ip, "staging: the staging group");
    assert_eq!(seen_as(&staging, OUTSIDE, 443), None, "staging: not the running group");
    assert_eq!(seen_as(&other, OUTSIDE, 443), None, "no space, no workload: no groups");
    assert_eq!(exchange(&other, outside, OUTSIDE_2, 53), (false, true), "the runtime's netOutRules: udp/53 only");
    assert_eq!(seen_as(&staging, OUTSIDE_2, 443), cell_ip, "staging: everything to the second address");
    assert!(other.reaches(&OUTSIDE.to_string()), "an icmp echo rule lets pings out");
    assert!(!running.exec(&["ping", "-c", "1", "-W", "1", &OUTSIDE.to_string()]), "and only that container's");
    // A rule flagged `log` hands its new connections to nflog, with the rule's prefix.
    let logged = nflog_sees(cell, || {
        let _server = PeerServer::start(outside, OUTSIDE, 7000);
        assert_eq!(seen_as(&other, OUTSIDE, 7000), cell_ip, "the logged rule allows");
    });
    assert!(
        logged.iter().any(|l| {
            let h = netagent::traffic_log::headers(&l.payload);
            l.prefix == "egress-accept" && h.is_some_and(|h| h.src == ip(4) && h.b == Some(7000))
        }),
        "{logged:?}"
    );
    // An attacker in the staging container takes the running container's address to borrow
    // its egress: the packet does not leave the staging container's interface.
    sh(&["ip", "-n", &staging.0, "addr", "add", &format!("{}/32", ip(2)), "dev", "eth0"]);
    let forged = format!(
        "import socket; s = socket.create_connection(('{OUTSIDE}', 443), timeout=1, source_address=('{}', 0)); print(s.recv(64).decode())",
        ip(2)
    );
    assert_eq!(staging.output(&["python3", "-c", &forged]), "", "a forged source borrows no egress");
    assert_eq!(running.output(&["python3", "-c", &forged]).trim(), CELL.to_string(), "the real one still works");
    sh(&["ip", "-n", &staging.0, "addr", "del", &format!("{}/32", ip(2)), "dev", "eth0"]);
    // c2c traffic is governed by policies and never masqueraded.
    assert_eq!(seen_as(&running, ip(3), 9000), Some(ip(2).to_string()), "c2c keeps its source");
    assert_eq!(seen_as(&other, ip(3), 9000), None, "no policy, no c2c");
    // The router's way in: the mapping, with the router's own address, no policy needed.
    assert_eq!(seen_as(outside, CELL, 61000), Some(OUTSIDE.to_string()), "a port mapping from the underlay");
    assert_eq!(seen_as(outside, ip(2), 8080), None, "not around the mapping");
    assert_eq!(seen_as(&other, CELL, 61000), None, "containers do not use the cell's mappings");

    // An ASG change applies to running containers as a difference, no restart.
    groups[0].rules.push(tcp(OUTSIDE, 444));
    let (e, applied) = enforce(cell, e, plan_cell(&policies, &containers, &facts(groups.clone())));
    assert_eq!(applied, incremental);
    assert_eq!(seen_as(&running, OUTSIDE, 444), cell_ip, "the new rule");
    // And a removed mapping is gone.
    containers[0].port_mappings.clear();
    let (e, applied) = enforce(cell, e, plan_cell(&policies, &containers, &facts(groups.clone())));
    assert_eq!(applied, incremental);
    assert_eq!(seen_as(outside, CELL, 61000), None, "the mapping is gone");
    groups.truncate(0);
    let (_e, _) = enforce(cell, e, plan_cell(&policies, &containers, &facts(groups)));
    assert_eq!(seen_as(&running, OUTSIDE, 443), None, "no groups, no egress");
}
