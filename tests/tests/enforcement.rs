//! Policy enforcement with the nftables backend on the real kernel: the seed scenario on two
//! cells joined by the GBP overlay. Needs root and the `nft` binary.

use std::net::Ipv4Addr;
use std::process::Command;

use netagent::config::Enforcement;
use netagent::enforcement::plan::{LocalContainer, Proto, Ruleset, TaggedPolicy, plan};
use netagent::enforcement::{Applied, Enforce, backend};
use netagent::netlink::{Netlink, converge};
use netagent::overlay::{Lease, OverlaySettings};

use harness::lab::*;
use harness::probes::*;

fn lease(i: u8) -> Lease {
    Lease { underlay_ip: Ipv4Addr::new(10, 254, 250, i), subnet: Ipv4Addr::new(10, 255, i, 0), prefix: 24 }
}

fn overlay(cell: &Netns, me: u8) {
    let settings = OverlaySettings {
        vtep_name: "c2c-vtep".into(),
        vni: 1,
        port: 4789,
        network: Ipv4Addr::new(10, 255, 0, 0),
        network_prefix: 16,
    };
    let desired = netagent::overlay::plan(&settings, &lease(me), &[lease(1), lease(2)]);
    cell.run(move || async move {
        let nl = Netlink::connect().unwrap();
        converge(&nl, &desired.vtep, &desired.remotes).await.unwrap();
    });
}

fn container(cell: &Netns, ctr: &Netns, ip: Ipv4Addr) {
    let path = ctr.path();
    cell.run(move || async move {
        let nl = Netlink::connect().unwrap();
        netagent::container_net::add(&nl, &path, "eth0", ip, 1450).await.unwrap();
    });
}

/// Reconciles the cell's ruleset with its enforcer; returns the enforcer and what it did.
fn enforce(cell: &Netns, enforcer: Box<dyn Enforce>, rs: Ruleset) -> (Box<dyn Enforce>, Applied) {
    cell.run(move || async move {
        let mut e = enforcer;
        let applied = e.reconcile(&rs).expect("nft applies the ruleset");
        (e, applied)
    })
}

fn pol(s: &str, st: u16, d: &str, dt: u16, proto: Proto, start: u16, end: u16) -> TaggedPolicy {
    TaggedPolicy { source: s.into(), source_tag: st, destination: d.into(), destination_tag: dt, proto, start, end }
}

#[test]
fn seed_scenario_with_nftables() {
    require_tool("nft", "nftables");
    seed_scenario(Enforcement::Nftables);
}

#[test]
fn seed_scenario_with_iptables() {
    require_tool("iptables-restore", "iptables");
    seed_scenario(Enforcement::Iptables);
}

fn seed_scenario(setting: Enforcement) {
    require_root();
    let new = || backend(setting);
    // nftables applies differences; iptables rewrites the whole chain as upstream does.
    let incremental = if setting == Enforcement::Nftables { Applied::Diff } else { Applied::Full };
    let f = fabric(2);
    let (c1, c2) = (&f.cells[0], &f.cells[1]);
    overlay(c1, 1);
    overlay(c2, 2);
    // A on both cells, B on cell 2, C on cell 1 (same cell as one A).
    let (a1, a2, b, c) = (Netns::new("a1"), Netns::new("a2"), Netns::new("b"), Netns::new("c"));
    let ip = |cell: u8, n: u8| Ipv4Addr::new(10, 255, cell, n);
    container(c1, &a1, ip(1, 2));
    container(c2, &a2, ip(2, 2));
    container(c2, &b, ip(2, 3));
    container(c1, &c, ip(1, 3));
    let cell1 = vec![LocalContainer::new(ip(1, 2), Some("A")), LocalContainer::new(ip(1, 3), Some("C"))];
    let cell2 = vec![LocalContainer::new(ip(2, 2), Some("A")), LocalContainer::new(ip(2, 3), Some("B"))];
    let mut policies = vec![pol("A", 1, "B", 2, Proto::Tcp, 8080, 8080), pol("A", 1, "C", 3, Proto::Udp, 5353, 5353)];
    let (e1, applied) = enforce(c1, new(), plan(&policies, &cell1));
    assert_eq!(applied, Applied::Full);
    let (e2, _) = enforce(c2, new(), plan(&policies, &cell2));

    // A reaches B over TCP 8080 (across cells, and from the A on B's own cell); not over UDP.
    assert_eq!(exchange(&a1, &b, ip(2, 3), 8080), (true, false), "A→B tcp/8080 across cells only over TCP");
    assert!(exchange(&a2, &b, ip(2, 3), 8080).0, "same cell is enforced the same way");
    // A reaches C over UDP 5353 only.
    assert_eq!(exchange(&a1, &c, ip(1, 3), 5353), (false, true), "A→C udp/5353 on the same cell");
    assert_eq!(exchange(&a2, &c, ip(1, 3), 5353), (false, true), "and across cells");
    // Everything else is refused.
    assert_eq!(exchange(&a1, &b, ip(2, 3), 9090), (false, false), "a port outside the policy");
    assert_eq!(exchange(&b, &c, ip(1, 3), 5353), (false, false), "B cannot reach C");
    assert_eq!(exchange(&b, &a1, ip(1, 2), 8080), (false, false), "B cannot open connections to A");
    assert_eq!(exchange(&c, &a1, ip(1, 2), 8080), (false, false), "C cannot open connections to A");

    // A policy added later works at once; only the difference is applied.
    policies.push(pol("C", 3, "B", 2, Proto::Tcp, 9000, 9100));
    let (e1, applied) = enforce(c1, e1, plan(&policies, &cell1));
    assert_eq!(applied, incremental);
    let (e2, applied) = enforce(c2, e2, plan(&policies, &cell2));
    assert_eq!(applied, incremental);
    assert!(exchange(&c, &b, ip(2, 3), 9050).0, "C→B tcp/9000-9100");
    // And a removed one stops new connections.
    policies.retain(|p| p.source != "C");
    let (e1, _) = enforce(c1, e1, plan(&policies, &cell1));
    let (e2, _) = enforce(c2, e2, plan(&policies, &cell2));
    assert!(!exchange(&c, &b, ip(2, 3), 9050).0);

    // Someone removes our rules (the table, or the jump from FORWARD): the next reconcile
    // puts them back whole.
    let sabotage: &[&str] = if setting == Enforcement::Nftables {
        &["nft", "delete", "table", "ip", "c2c"]
    } else {
        &["iptables", "-w", "-F", "FORWARD"]
    };
    let mut cmd = vec!["netns", "exec", c2.0.as_str()];
    cmd.extend_from_slice(sabotage);
    assert!(Command::new("ip").args(&cmd).status().unwrap().success());
    let (_e2, applied) = enforce(c2, e2, plan(&policies, &cell2));
    assert_eq!(applied, Applied::Full);
    assert!(exchange(&a1, &b, ip(2, 3), 8080).0, "enforcing again after the repair");
    if setting == Enforcement::Iptables {
        let out = Command::new("ip").args(["netns", "exec", &c2.0, "iptables", "-w", "-S"]).output().unwrap();
        let chains = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("-N vpa--")).count();
        assert_eq!(chains, 1, "make-before-break leaves exactly one chain");
    }
    let _ = e1;
}

fn nft(cell: &Netns, args: &[&str]) -> String {
    let mut cmd = vec!["netns", "exec", cell.0.as_str(), "nft"];
    cmd.extend_from_slice(args);
    let out = Command::new("ip").args(&cmd).output().unwrap();
    assert!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Changes go over netlink as set elements; nft reads them back exactly as if it had written
/// them; a change to another table costs nothing; an element someone deleted is put back.
#[test]
fn nftables_changes_over_netlink_read_back_and_drift_is_repaired() {
    require_root();
    let cell = Netns::new("nlcell");
    let containers = [
        LocalContainer::new(Ipv4Addr::new(10, 255, 1, 2), Some("A")),
        LocalContainer::new(Ipv4Addr::new(10, 255, 1, 3), Some("B")),
    ];
    let mut policies = vec![pol("A", 1, "B", 2, Proto::Tcp, 8080, 8080)];
    let (e, applied) = enforce(&cell, backend(Enforcement::Nftables), plan(&policies, &containers));
    assert_eq!(applied, Applied::Full, "first install replaces the table");

    // A single port, a range over UDP, and a new source mark, all as one netlink batch.
    policies.push(pol("B", 0xfde8, "B", 2, Proto::Tcp, 9999, 9999));
    policies.push(pol("A", 1, "B", 2, Proto::Udp, 9000, 9100));
    let (e, applied) = enforce(&cell, e, plan(&policies, &containers));
    assert_eq!(applied, Applied::Diff);
    let allow = nft(&cell, &["list", "set", "ip", "c2c", "allow"]);
    assert!(allow.contains("10.255.1.3 . tcp . 9999 . 0x0000fde8"), "{allow}");
    assert!(allow.contains("10.255.1.3 . tcp . 8080 . 0x00000001"), "{allow}");
    let ranges = nft(&cell, &["list", "set", "ip", "c2c", "allow_ranges"]);
    assert!(ranges.contains("10.255.1.3 . udp . 9000-9100 . 0x00000001"), "{ranges}");
    let marks = nft(&cell, &["list", "map", "ip", "c2c", "src_tags"]);
    assert!(marks.contains("10.255.1.3 : 0x0000fde8") && marks.contains("10.255.1.2 : 0x00000001"), "{marks}");

    // Nothing to do; and a change to someone else's table is not ours to repair.
    let (e, applied) = enforce(&cell, e, plan(&policies, &containers));
    assert_eq!(applied, Applied::Nothing);
    nft(&cell, &["add", "table", "ip", "someone-else"]);
    let (e, applied) = enforce(&cell, e, plan(&policies, &containers));
    assert_eq!(applied, Applied::Nothing, "our table still holds what we put there");

    // Someone deletes one element: the next round notices and puts the table back whole.
    nft(&cell, &["delete", "element", "ip", "c2c", "allow", "{ 10.255.1.3 . tcp . 9999 . 0xfde8 }"]);
    let (e, applied) = enforce(&cell, e, plan(&policies, &containers));
    assert_eq!(applied, Applied::Full);
    assert!(nft(&cell, &["list", "set", "ip", "c2c", "allow"]).contains("10.255.1.3 . tcp . 9999 . 0x0000fde8"));

    // Removing policies removes their elements.
    policies.truncate(1);
    let (_e, applied) = enforce(&cell, e, plan(&policies, &containers));
    assert_eq!(applied, Applied::Diff);
    let all = nft(&cell, &["list", "table", "ip", "c2c"]);
    assert!(!all.contains("9999") && !all.contains("9000-9100") && !all.contains("0x0000fde8"), "{all}");
}
