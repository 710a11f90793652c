//! Cells catch up at once when the control plane comes back: the policy watch's back-off is
//! capped at a second, and any answer from the control plane (the lease renewal reaches it
//! first) ends the back-off. Measured with the real parts: a policy created right after the
//! control plane's return reaches the cells' kernels (upstream and c2c before: 4–18 s,
//! growing with the outage). Needs root and nft.

use std::time::{Duration, Instant};

use harness::cell::CellOptions;
use harness::control_plane::ControlPlane;
use harness::lab::{Netns, eventually, require_root, require_tool};
use harness::probes::{TcpServer, connects};
use harness::world::World;
use policy_client::types::{Policy, Protocol};

#[test]
fn cells_are_current_moments_after_the_control_plane_returns() {
    require_root();
    require_tool("nft", "nftables");
    let w = World::new(2, "c2c-recovery");
    let (f, ctl, dir, ca) = (&w.fabric, &w.ctl, &w.dir, &w.ca);
    let (cell1, cell2) = (&f.cells[0], &f.cells[1]);
    let cp = w.control_plane();
    let port = cp.port;
    let options = CellOptions::default();
    let a1 = w.agent(1, &cp, &options);
    let a2 = w.agent(2, &cp, &options);
    w.overlay_ready();
    let (a_ns, b_ns) = (Netns::new("a"), Netns::new("b"));
    a1.add(cell1, "a", &a_ns, "app-a").unwrap();
    let b = a2.add(cell2, "b", &b_ns, "app-b").unwrap();
    let _server = TcpServer::start(&b_ns, b, 8080);
    assert!(!connects(&a_ns, b, 8080, Duration::from_millis(300)), "denied without a policy");

    // An outage long enough for an uncapped back-off to grow to several seconds (the lease
    // renewal fails every 200 ms here; forty failures are some ten seconds).
    drop(cp);
    let failures = || a2.metric(cell2, "c2c_netagent_renew_failures_total").unwrap_or(0.0);
    eventually_long("a long outage", || failures() >= 40.0);

    let cp = ControlPlane::start_on(ctl, ca, dir.path(), port).unwrap();
    cp.create(vec![Policy::new("app-a", "app-b", Protocol::Tcp, 8080, 8080)]).unwrap();
    let answered = Instant::now();
    eventually("the policy reaches the cells", || connects(&a_ns, b, 8080, Duration::from_millis(20)));
    let took = answered.elapsed();
    eprintln!("after the control plane's return, the new policy was enforced {took:?} after the API answered");
    assert!(took < Duration::from_secs(4), "cells catch up at once, not after a grown back-off: {took:?}");
}

/// `eventually` for conditions that take longer than its 15 s (up to a minute).
fn eventually_long(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
