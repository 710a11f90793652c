//! The control plane and cells on the real kernel: a policy server (cells' API over mTLS) in
//! its own namespace, cells running netagent, containers created through `c2c-cni`.
//! Containers on different cells talk TCP and UDP; a cell that joins later is reached
//! without restarting the others; a cell that leaves is removed from their tables; policies
//! written through the API are enforced, survive an agent restart and outlive the control
//! plane. Needs root.

use std::time::{Duration, Instant};

use harness::cell::{CellAgent, CellOptions};
use harness::lab::{Netns, eventually, require_root, require_tool, vtep_routes};
use harness::probes::{EchoServer, LineConnection, exchange, talk};
use harness::world::World;
use netagent::config::Enforcement;
use policy_client::types::{Policy, Protocol};

fn routes(cell: &Netns) -> usize {
    vtep_routes(cell, "c2c-vtep")
}

#[test]
fn cells_and_containers_with_netagent() {
    require_root();
    let w = World::new(3, "c2c-cells");
    let (f, _ctl, dir, ca) = (&w.fabric, &w.ctl, &w.dir, &w.ca);
    let cp = w.control_plane();

    let states: Vec<_> = (1..=3).map(|i| dir.join(&format!("state{i}"))).collect();
    let open = CellOptions { enforcement: Enforcement::None, ..CellOptions::default() };
    let a1 = CellAgent::start(&f.cells[0], 1, &cp.url(), ca, &states[0], &open).unwrap();
    let a2 = CellAgent::start(&f.cells[1], 2, &cp.url(), ca, &states[1], &open).unwrap();
    assert_ne!(a1.subnet, a2.subnet, "two cells never share a subnet");
    eventually("both cells know each other", || routes(&f.cells[0]) == 1 && routes(&f.cells[1]) == 1);

    let (ca_ns, cb_ns) = (Netns::new("ctr-a"), Netns::new("ctr-b"));
    let ip_a = a1.add(&f.cells[0], "a", &ca_ns, "app-a").unwrap();
    let ip_b = a2.add(&f.cells[1], "b", &cb_ns, "app-b").unwrap();
    let s = EchoServer::start(&cb_ns, ip_b, 8080);
    assert_eq!(talk(&ca_ns, ip_b, 8080), (true, true), "TCP and UDP from cell 1's container to cell 2's");
    drop(s);
    assert_eq!(exchange(&cb_ns, &ca_ns, ip_a, 8081), (true, true), "and back");

    // A third cell joins; the others learn it without a restart.
    let leaving = CellOptions { release_on_stop: true, ..open.clone() };
    let a3 = CellAgent::start(&f.cells[2], 3, &cp.url(), ca, &states[2], &leaving).unwrap();
    let cc_ns = Netns::new("ctr-c");
    let ip_c = a3.add(&f.cells[2], "c", &cc_ns, "app-c").unwrap();
    eventually("cells 1 and 2 learn cell 3", || routes(&f.cells[0]) == 2 && routes(&f.cells[1]) == 2);
    assert_eq!(exchange(&ca_ns, &cc_ns, ip_c, 8082), (true, true), "cell 1's container reaches the new cell's");

    // Cell 3 leaves (releases its lease): it disappears from the others' tables.
    drop(a3);
    eventually("cell 3 removed from the others", || routes(&f.cells[0]) == 1 && routes(&f.cells[1]) == 1);

    // The control plane goes away: the cells keep what they have and traffic still flows.
    // (Several lease rounds pass before the check: nothing may be flushed meanwhile.)
    drop(cp);
    let rounds_before = a1.metric(&f.cells[0], "c2c_netagent_renew_failures_total").unwrap_or(0.0);
    eventually("cell 1 notices the control plane is gone", || {
        a1.metric(&f.cells[0], "c2c_netagent_renew_failures_total").unwrap_or(0.0) >= rounds_before + 3.0
    });
    assert_eq!(routes(&f.cells[0]), 1, "nothing is flushed while the control plane is away");
    assert_eq!(exchange(&ca_ns, &cb_ns, ip_b, 8083), (true, true), "traffic flows without the control plane");
}

/// Policies from the control plane enforced by netagent (nftables): denied until a policy
/// exists, allowed within moments of its creation, denied again after its deletion.
#[test]
fn policies_flow_from_the_control_plane_to_the_kernel() {
    require_root();
    require_tool("nft", "nftables");
    let w = World::new(2, "c2c-policies");
    let (f, _ctl, dir, ca) = (&w.fabric, &w.ctl, &w.dir, &w.ca);
    let cp = w.control_plane();
    let states: Vec<_> = (1..=2).map(|i| dir.join(&format!("state{i}"))).collect();
    let options = CellOptions::default();
    let a1 = CellAgent::start(&f.cells[0], 1, &cp.url(), ca, &states[0], &options).unwrap();
    let a2 = CellAgent::start(&f.cells[1], 2, &cp.url(), ca, &states[1], &options).unwrap();
    eventually("both cells know each other", || routes(&f.cells[0]) == 1 && routes(&f.cells[1]) == 1);
    let (ca_ns, cb_ns) = (Netns::new("ctr-a"), Netns::new("ctr-b"));
    let ip_a = a1.add(&f.cells[0], "a", &ca_ns, "app-a").unwrap();
    let ip_b = a2.add(&f.cells[1], "b", &cb_ns, "app-b").unwrap();
    assert_eq!(exchange(&ca_ns, &cb_ns, ip_b, 8080), (false, false), "denied without a policy");

    // The policy is created through the API, as an admin.
    let policy = Policy::new("app-a", "app-b", Protocol::Tcp, 8080, 8080);
    cp.create(vec![policy.clone()]).unwrap();
    let created = Instant::now();
    eventually("the policy allows A to reach B", || exchange(&ca_ns, &cb_ns, ip_b, 8080).0);
    eprintln!("policy enforced {:?} after the API answered", created.elapsed());
    assert_eq!(exchange(&ca_ns, &cb_ns, ip_b, 8080), (true, false), "TCP only");
    // What the agent did shows in its metrics.
    let metrics = a2.metrics(&f.cells[1]);
    let value = |name: &str| harness::cell::sample(&metrics, name).unwrap_or_else(|| panic!("{name} in {metrics}"));
    assert_eq!(value("c2c_netagent_policies"), 1.0, "{metrics}");
    assert_eq!(value("c2c_netagent_allow_entries"), 1.0, "{metrics}");
    assert!(value("c2c_netagent_policy_applies_total{kind=\"diff\"}") >= 1.0, "{metrics}");
    assert_eq!(value("c2c_netagent_policy_apply_errors_total"), 0.0, "{metrics}");
    assert_eq!(value("c2c_netagent_enforcement_disabled"), 0.0, "{metrics}");

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
    a2.del(&f.cells[1], "b", &cb_ns, "app-b").unwrap();
    let cb2_ns = Netns::new("ctr-b2");
    let ip_b2 = a2.add(&f.cells[1], "b2", &cb2_ns, "app-b").unwrap();
    assert_ne!(ip_b2, ip_b, "a new address");
    assert_eq!(exchange(&ca_ns, &cb2_ns, ip_b2, 8080), (true, false), "the restarted instance is covered at once");

    // netagent restarts on cell 2: an established connection survives it, before and after
    // the new agent has enforced (it replaces the table in one transaction).
    let mut conn = LineConnection::open(&ca_ns, &cb2_ns, ip_b2, 8080);
    assert!(conn.round_trip("before"), "the long-lived connection works");
    drop(a2);
    let a2 = CellAgent::start(&f.cells[1], 2, &cp.url(), ca, &states[1], &options).unwrap();
    eventually("the restarted agent enforces", || a2.metric(&f.cells[1], "c2c_netagent_allow_entries") == Some(1.0));
    assert!(conn.round_trip("after"), "the established connection survived the agent's restart");
    drop(conn);

    cp.delete(vec![policy.clone()]).unwrap();
    eventually("the deleted policy stops new connections", || !exchange(&ca_ns, &cb2_ns, ip_b2, 8080).0);

    // The control plane goes away: the cells keep enforcing what they last had. Nothing is
    // opened and nothing is flushed, however long it stays away.
    cp.create(vec![policy]).unwrap();
    eventually("the policy is back", || exchange(&ca_ns, &cb2_ns, ip_b2, 8080).0);
    drop(cp);
    let failures_before = a2.metric(&f.cells[1], "c2c_netagent_renew_failures_total").unwrap_or(0.0);
    eventually("cell 2 notices the control plane is gone", || {
        a2.metric(&f.cells[1], "c2c_netagent_renew_failures_total").unwrap_or(0.0) >= failures_before + 3.0
    });
    assert_eq!(exchange(&ca_ns, &cb2_ns, ip_b2, 8080), (true, false), "still allowed over TCP only");
    assert_eq!(exchange(&cb2_ns, &ca_ns, ip_a, 8080), (false, false), "still denied the other way");
}
