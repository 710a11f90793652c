//! The overlay against the real kernel: cells are network namespaces joined by an underlay
//! veth; each converges its VTEP and remote entries through netlink; traffic crosses the
//! VXLAN. Needs root (CI runs as root); fails, not skips, without it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use netagent::netlink::{Netlink, converge};
use netagent::overlay::{Lease, OverlaySettings, plan};

use harness::lab::*;
use harness::probes::*;

fn settings() -> OverlaySettings {
    OverlaySettings {
        vtep_name: "c2c-vtep".into(),
        vni: 1,
        port: 4789,
        network: Ipv4Addr::new(10, 255, 0, 0),
        network_prefix: 16,
    }
}

fn lease(i: u8) -> Lease {
    Lease { underlay_ip: Ipv4Addr::new(10, 254, 250, i), subnet: Ipv4Addr::new(10, 255, i, 0), prefix: 24 }
}

fn converge_cell(cell: &Netns, me: u8, all: &[u8]) -> (usize, usize) {
    let leases: Vec<Lease> = all.iter().map(|i| lease(*i)).collect();
    let desired = plan(&settings(), &lease(me), &leases);
    cell.run(move || async move {
        let nl = Netlink::connect().unwrap();
        converge(&nl, &desired.vtep, &desired.remotes).await.unwrap()
    })
}

fn remotes_of(cell: &Netns) -> BTreeSet<netagent::overlay::Remote> {
    cell.run(|| async {
        let nl = Netlink::connect().unwrap();
        let link = nl.link_by_name("c2c-vtep").await.unwrap().unwrap();
        nl.remotes(link.header.index).await.unwrap()
    })
}

/// What the kernel holds, for failure messages.
fn dump(cell: &Netns) -> String {
    let mut out = String::new();
    for args in [
        vec!["ip", "-n", &cell.0, "-d", "link", "show", "c2c-vtep"],
        vec!["ip", "-n", &cell.0, "addr"],
        vec!["ip", "-n", &cell.0, "route"],
        vec!["ip", "-n", &cell.0, "neigh"],
        vec!["bridge", "-n", &cell.0, "fdb", "show", "dev", "c2c-vtep"],
    ] {
        let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
        out.push_str(&format!(
            "$ {}\n{}{}\n",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    out
}

#[test]
fn cells_reach_each_other_over_the_overlay() {
    require_root();
    let f = fabric(3);
    let (c1, c2, c3) = (&f.cells[0], &f.cells[1], &f.cells[2]);

    assert_eq!(converge_cell(c1, 1, &[1, 2]), (1, 0));
    assert_eq!(converge_cell(c2, 2, &[1, 2]), (1, 0));
    assert!(c1.reaches("10.255.2.0"), "cell 1 reaches cell 2's VTEP over VXLAN:\n{}", dump(c1));
    assert!(c2.reaches("10.255.1.0"), "and back");

    // Converging again changes nothing.
    let read_back = remotes_of(c1);
    assert_eq!(converge_cell(c1, 1, &[1, 2]), (0, 0), "read back: {read_back:?}");
    assert_eq!(remotes_of(c1).len(), 1);
    let details = Command::new("ip").args(["-n", &c1.0, "-d", "link", "show", "c2c-vtep"]).output().unwrap();
    let details = String::from_utf8_lossy(&details.stdout);
    assert!(details.contains("vxlan id 1"), "{details}");
    assert!(details.contains("gbp"), "GBP is on: {details}");
    assert!(details.contains("nolearning"), "{details}");
    assert!(details.contains("dstport 4789"), "{details}");
    assert!(details.contains("ee:ee:0a:ff:01:00"), "MAC from the subnet: {details}");

    // A third cell joins: the others learn it without a restart.
    assert_eq!(converge_cell(c3, 3, &[1, 2, 3]), (2, 0));
    assert_eq!(converge_cell(c1, 1, &[1, 2, 3]), (1, 0));
    assert_eq!(converge_cell(c2, 2, &[1, 2, 3]), (1, 0));
    assert!(c1.reaches("10.255.3.0"));
    assert!(c3.reaches("10.255.2.0"));

    // Cell 3 leaves: its entries disappear from the others.
    assert_eq!(converge_cell(c1, 1, &[1, 2]), (0, 1));
    assert_eq!(remotes_of(c1).len(), 1);
    assert!(!c1.reaches("10.255.3.0"));
    assert!(c1.reaches("10.255.2.0"), "the remaining cell is unaffected");
}

fn add_container(cell: &Netns, ctr: &Netns, ip: Ipv4Addr) {
    let path = format!("/var/run/netns/{}", ctr.0);
    cell.run(move || async move {
        let nl = Netlink::connect().unwrap();
        netagent::container_net::add(&nl, &path, "eth0", ip, 1450).await.unwrap();
    });
}

#[test]
fn containers_on_two_cells_talk_tcp_and_udp() {
    require_root();
    let f = fabric(2);
    let (c1, c2) = (&f.cells[0], &f.cells[1]);
    converge_cell(c1, 1, &[1, 2]);
    converge_cell(c2, 2, &[1, 2]);
    let a = Netns::new("ctr-a");
    let b = Netns::new("ctr-b");
    let local = Netns::new("ctr-c");
    let (ip_a, ip_b, ip_c) = (Ipv4Addr::new(10, 255, 1, 2), Ipv4Addr::new(10, 255, 2, 2), Ipv4Addr::new(10, 255, 1, 3));
    add_container(c1, &a, ip_a);
    add_container(c2, &b, ip_b);
    add_container(c1, &local, ip_c);

    assert_eq!(exchange(&a, &b, ip_b, 8080), (true, true), "cell 1 container reaches cell 2 container:\n{}", dump(c1));
    assert_eq!(exchange(&b, &a, ip_a, 9090), (true, true), "and back");
    assert_eq!(exchange(&a, &local, ip_c, 7070), (true, true), "two containers on one cell");

    // The container side looks like Silk's.
    let out = Command::new("ip").args(["-n", &a.0, "-4", "addr", "show", "eth0"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("inet 10.255.1.2 peer 169.254.0.1/32"), "{text}");
    let out = Command::new("ip").args(["-n", &a.0, "route"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("default via 169.254.0.1 dev eth0"));
    assert!(netagent::container_net::check(&format!("/var/run/netns/{}", a.0), "eth0", ip_a).unwrap());

    // DEL removes both ends; a second DEL, or one for a namespace that is gone, succeeds.
    let path = format!("/var/run/netns/{}", a.0);
    c1.run(move || async move {
        let nl = Netlink::connect().unwrap();
        netagent::container_net::del(&nl, &path, "eth0", Some(ip_a)).await.unwrap();
        netagent::container_net::del(&nl, &path, "eth0", Some(ip_a)).await.unwrap();
        netagent::container_net::del(&nl, "/var/run/netns/does-not-exist", "eth0", None).await.unwrap();
        assert!(nl.link_by_name("s-010255001002").await.unwrap().is_none());
    });
}
