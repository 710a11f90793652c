//! Cells fail static: an error anywhere keeps the last good ruleset, never an empty one. A
//! container store that cannot be read keeps the last good containers (and says so in
//! `/health` and the metrics); an agent restarted while the control plane is away enforces
//! the policies it last had for containers added meanwhile. Needs root and nft.

use harness::cell::{CellAgent, CellOptions};
use harness::lab::{Netns, eventually, require_root, require_tool};
use harness::probes::exchange;
use harness::world::World;
use policy_client::types::{Policy, Protocol};

/// GET `/health` of an agent: status and body.
fn health(cell: &Netns, agent: &CellAgent) -> (u16, serde_json::Value) {
    let url = format!("{}/health", agent.url);
    cell.run(move || async move {
        let r = reqwest::get(url).await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or_default())
    })
}

#[test]
fn a_corrupt_container_store_keeps_the_last_good_ruleset() {
    require_root();
    require_tool("nft", "nftables");
    let w = World::new(2, "c2c-fail-static");
    let f = &w.fabric;
    let (cell1, cell2) = (&f.cells[0], &f.cells[1]);
    let cp = w.control_plane();
    let options = CellOptions::default();
    let a1 = w.agent(1, &cp, &options);
    let a2 = w.agent(2, &cp, &options);
    w.overlay_ready();
    let (a_ns, b_ns, c_ns) = (Netns::new("a"), Netns::new("b"), Netns::new("c"));
    a1.add(cell1, "a", &a_ns, "app-a").unwrap();
    let b = a2.add(cell2, "b", &b_ns, "app-b").unwrap();
    let c = a2.add(cell2, "c", &c_ns, "app-c").unwrap();
    cp.create(vec![Policy::new("app-a", "app-b", Protocol::Tcp, 8080, 8080)]).unwrap();
    eventually("A reaches B", || exchange(&a_ns, &b_ns, b, 8080).0);
    assert!(!exchange(&a_ns, &c_ns, c, 8080).0, "A cannot reach C");
    assert_eq!(health(cell2, &a2).0, 200);

    // The store is corrupted; then someone removes the table, so the agent must rebuild
    // the ruleset at once, from what it knows.
    let store = a2.state.join("containers.json");
    let good = std::fs::read(&store).unwrap();
    std::fs::write(&store, b"{nope").unwrap();
    assert!(cell2.exec(&["nft", "delete", "table", "ip", "c2c"]));
    eventually("the table is back", || cell2.exec(&["nft", "list", "table", "ip", "c2c"]));
    eventually("the agent reports the store", || health(cell2, &a2).0 == 503);
    let (_, body) = health(cell2, &a2);
    assert_eq!(body["container_store_readable"], false, "{body}");
    assert!(a2.metric(cell2, "c2c_netagent_container_store_errors_total").unwrap_or(0.0) >= 1.0);
    let guarded = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "exec", &cell2.0, "nft", "list", "set", "ip", "c2c", "guarded"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(guarded.contains(&b.to_string()) && guarded.contains(&c.to_string()), "still guarded: {guarded}");
    assert!(exchange(&a_ns, &b_ns, b, 8080).0, "the allowed flow stays allowed");
    assert_eq!(exchange(&a_ns, &c_ns, c, 8080), (false, false), "the denied pair stays denied");

    // The store is readable again: healthy.
    std::fs::write(&store, good).unwrap();
    eventually("healthy again", || health(cell2, &a2).0 == 200);
}

#[test]
fn a_restart_without_the_control_plane_enforces_the_saved_policies() {
    require_root();
    require_tool("nft", "nftables");
    let w = World::new(2, "c2c-restart");
    let (f, dir, ca) = (&w.fabric, &w.dir, &w.ca);
    let (cell1, cell2) = (&f.cells[0], &f.cells[1]);
    let cp = w.control_plane();
    let url = cp.url();
    let options = CellOptions::default();
    let a1 = w.agent(1, &cp, &options);
    let a2 = w.agent(2, &cp, &options);
    w.overlay_ready();
    let (a_ns, b_ns) = (Netns::new("a"), Netns::new("b"));
    a1.add(cell1, "a", &a_ns, "app-a").unwrap();
    let b = a2.add(cell2, "b", &b_ns, "app-b").unwrap();
    cp.create(vec![Policy::new("app-a", "app-b", Protocol::Tcp, 8080, 8080)]).unwrap();
    eventually("A reaches B", || exchange(&a_ns, &b_ns, b, 8080).0);
    assert!(a2.state.join("policies.json").exists(), "the enforced policies are saved");

    // The control plane goes, then cell 2's agent restarts: it cannot get its lease from
    // the control plane and carries on with the one it had.
    drop(cp);
    let subnet = a2.subnet.clone();
    drop(a2);
    let a2 = CellAgent::start(cell2, 2, &url, ca, &dir.join("cell2"), &options).unwrap();
    assert_eq!(a2.subnet, subnet, "the same subnet");

    // New containers: another instance of B (the saved policy covers it at once) and an app
    // with no policy (nothing opens for it).
    let (b2_ns, x_ns) = (Netns::new("b2"), Netns::new("x"));
    let b2 = a2.add(cell2, "b2", &b2_ns, "app-b").unwrap();
    let x = a2.add(cell2, "x", &x_ns, "app-x").unwrap();
    assert_eq!(exchange(&a_ns, &b2_ns, b2, 8080), (true, false), "the saved policy covers the new instance");
    assert_eq!(exchange(&a_ns, &x_ns, x, 8080), (false, false), "nothing else opens");
    assert_eq!(exchange(&a_ns, &b_ns, b, 8080), (true, false), "the old instance stays reachable");
}
