//! `c2c-cni` driven exactly as Garden's external networker drives a plugin (spec §4.2 step
//! 4): the conflist's plugin config with the networker's top-level `metadata` and its
//! `runtimeConfig` (`portMappings` as `host_port`/`container_port`, Garden `netOutRules`)
//! injected, `CNI_CONTAINERID` the handle, `CNI_IFNAME=eth0`, no `CNI_ARGS`. Then the whole
//! cell, with netagent and the control plane, on both backends: the metadata makes policies
//! apply, the space's ASGs open egress (and a change reaches the running container without
//! a restart), the netin mapping takes the router's traffic in from the underlay, survives
//! a netagent restart and drift, and is gone after DEL. Needs root.

use std::net::Ipv4Addr;
use std::time::Instant;

use harness::cell::CellOptions;
use harness::cni::{Invocation, Outcome, c2c_cni, run};
use harness::lab::{Netns, eventually, require_root, require_tool, sh};
use harness::probes::{EchoServer, PeerServer, seen_as, talk};
use harness::world::World;
use netagent::config::Enforcement;
use policy_client::types::{Destination, Policy, Ports, Protocol, Source};
use serde_json::json;

const CELL: Ipv4Addr = Ipv4Addr::new(10, 254, 250, 1);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(10, 254, 250, 2);

fn group(ports: &str) -> testkit::SecurityGroup {
    testkit::SecurityGroup {
        guid: "sg-public".into(),
        name: "public".into(),
        rules: vec![json!({"protocol": "tcp", "destination": OUTSIDE.to_string(), "ports": ports})],
        running_spaces: vec!["space-1".into()],
        ..Default::default()
    }
}

/// The networker's plugin input: the conflist's plugin entry, then `metadata` and
/// `runtimeConfig` as it injects them.
fn networker_conf(state: &std::path::Path, agent: &str, app: &str, netin: serde_json::Value) -> String {
    json!({
        "cniVersion": "1.0.0",
        "name": "c2c",
        "type": "c2c-cni",
        "stateDir": state,
        "agent": agent,
        "metadata": {
            "policy_group_id": app,
            "app_id": app,
            "space_id": "space-1",
            "org_id": "org-1",
            "ports": "8080",
            "container_workload": "app"
        },
        "runtimeConfig": {
            "portMappings": netin,
            "netOutRules": [{"protocol": 2, "networks": [{"start": OUTSIDE.to_string(), "end": OUTSIDE.to_string()}],
                "ports": [{"start": 53, "end": 53}]}]
        }
    })
    .to_string()
}

fn networker(cell: &Netns, command: &str, handle: &str, ctr: &Netns, conf: &str) -> Outcome {
    let netns = ctr.path();
    run(&c2c_cni(), cell, &Invocation { command, container: handle, netns: &netns, args: "", conf })
}

fn policy(src: &str, dst: &str, port: i32) -> Policy {
    Policy {
        source: Source { id: src.into(), tag: None },
        destination: Destination {
            id: dst.into(),
            ports: Ports { start: port, end: port },
            protocol: Protocol::Tcp,
            tag: None,
        },
    }
}

#[test]
fn garden_networker_on_a_cell_with_nftables() {
    require_tool("nft", "nftables");
    garden_cell(Enforcement::Nftables);
}

#[test]
fn garden_networker_on_a_cell_with_iptables() {
    require_tool("iptables-restore", "iptables");
    garden_cell(Enforcement::Iptables);
}

fn garden_cell(setting: Enforcement) {
    require_root();
    let w = World::new(2, "c2c-garden");
    let (cell, outside) = (w.cell(1), w.cell(2));
    let cp = harness::control_plane::ControlPlane::start_with(&w.ctl, &w.ca, w.dir.path(), 0, |c| {
        c.internal.asg_sync_interval_secs = 1;
    })
    .expect("the control plane starts");
    cp.put_security_group(group("443")).unwrap();
    let options = CellOptions { enforcement: setting, ..CellOptions::default() };
    let agent = w.agent(1, &cp, &options);
    let state = w.dir.join("cell1");

    let (web, worker) = (Netns::new("garden-web"), Netns::new("garden-worker"));
    let netin = json!([{"host_port": 61000, "container_port": 8080}]);
    let add = networker(cell, "ADD", "web-handle", &web, &networker_conf(&state, &agent.url, "app-g", netin.clone()));
    assert_eq!(add.code, 0, "ADD as the networker calls it: {}", add.stdout);
    let result = add.json();
    let web_ip: Ipv4Addr = result["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32").parse().unwrap();
    assert_eq!(result["dns"]["nameservers"], json!(["169.254.0.2"]), "what the networker reports to Garden");
    let store: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("containers.json")).unwrap()).unwrap();
    assert_eq!(store["web-handle"]["metadata"]["policy_group_id"], "app-g", "the networker's metadata is kept");
    assert_eq!(store["web-handle"]["metadata"]["container_workload"], "app");
    let add = networker(cell, "ADD", "worker-handle", &worker, &networker_conf(&state, &agent.url, "app-w", json!([])));
    assert_eq!(add.code, 0, "{}", add.stdout);
    let taken =
        networker(cell, "ADD", "third", &Netns::new("garden-3"), &networker_conf(&state, &agent.url, "x", netin));
    assert_ne!(taken.code, 0, "a host port is one container's");
    assert!(taken.stdout.contains("host port 61000 is already mapped to container web-handle"), "{}", taken.stdout);

    let _servers = [
        PeerServer::start(outside, OUTSIDE, 443),
        PeerServer::start(outside, OUTSIDE, 444),
        PeerServer::start(&web, web_ip, 8080),
        PeerServer::start(&web, web_ip, 9000),
    ];
    let cell_ip = Some(CELL.to_string());
    // The space's running ASG (once the control plane's first sync has it) and the
    // runtime's netOutRules, nothing else.
    eventually("the ASG's port, masqueraded to the cell", || seen_as(&web, OUTSIDE, 443) == cell_ip);
    assert_eq!(seen_as(&web, OUTSIDE, 444), None, "not another port");
    let echo = EchoServer::start(outside, OUTSIDE, 53);
    assert_eq!(talk(&worker, OUTSIDE, 53), (false, true), "netOutRules: udp/53");
    drop(echo);
    // The router's way in, from the underlay.
    assert_eq!(seen_as(outside, CELL, 61000), Some(OUTSIDE.to_string()), "netin from the underlay");

    // The metadata makes policies apply: worker → web once a policy exists.
    assert_eq!(seen_as(&worker, web_ip, 9000), None, "no policy yet");
    cp.create(vec![policy("app-w", "app-g", 9000)]).unwrap();
    eventually("the policy reaches the container", || seen_as(&worker, web_ip, 9000).is_some());

    // Traffic logs, switched on at run time: one JSON line per logged event.
    let logging = json!({"c2c_accepted": true, "egress_accepted": true, "denied_per_sec": 100});
    let (status, body) = agent.put(cell, "/traffic-logs", logging.clone());
    assert_eq!((status, serde_json::from_str::<serde_json::Value>(&body).unwrap()), (200, logging.clone()));
    assert_eq!(agent.put(cell, "/traffic-logs", json!({"c2c": 1})).0, 400, "a bad toggle changes nothing");
    assert!(seen_as(&worker, web_ip, 9000).is_some());
    assert_eq!(seen_as(&worker, web_ip, 9001), None);
    assert_eq!(seen_as(&web, OUTSIDE, 443), cell_ip);
    assert_eq!(seen_as(&web, OUTSIDE, 444), None);
    let find =
        |rule: &str, port: u16| agent.traffic_log().into_iter().find(|l| l["rule"] == rule && l["dst_port"] == port);
    eventually("a line for each logged event", || {
        find("c2c-accept", 9000).is_some()
            && find("c2c-deny", 9001).is_some()
            && find("egress-accept", 443).is_some()
            && find("egress-deny", 444).is_some()
    });
    assert!(agent.metric(cell, "c2c_netagent_traffic_log_lines_total").unwrap_or(0.0) >= 4.0);
    assert_eq!(agent.metric(cell, "c2c_netagent_port_mappings"), Some(1.0));
    assert_eq!(agent.metric(cell, "c2c_netagent_security_groups"), Some(1.0));
    let accepted = find("c2c-accept", 9000).unwrap();
    assert_eq!(accepted["verdict"], "accept");
    assert_eq!(accepted["source"]["app_guid"], "app-w");
    assert_eq!(accepted["source"]["container_handle"], "worker-handle");
    assert_eq!(accepted["destination"]["app_guid"], "app-g");
    assert_eq!(accepted["dst_ip"], web_ip.to_string());
    let denied = find("egress-deny", 444).unwrap();
    assert_eq!((denied["verdict"].as_str(), denied["protocol"].as_str()), (Some("deny"), Some("tcp")));
    assert_eq!(denied["source"]["space_guid"], "space-1");
    // Off is off: a denial while off leaves no line, though one after it, back on, does.
    let off = json!({"c2c_accepted": false, "egress_accepted": false, "denied_per_sec": 0});
    assert_eq!(agent.put(cell, "/traffic-logs", off).0, 200);
    assert_eq!(seen_as(&web, OUTSIDE, 445), None);
    assert_eq!(agent.put(cell, "/traffic-logs", logging).0, 200);
    assert_eq!(seen_as(&web, OUTSIDE, 446), None);
    eventually("the line of the denial after logging is back", || find("egress-deny", 446).is_some());
    assert!(find("egress-deny", 445).is_none(), "nothing was logged while off");

    // An ASG change reaches the running container without a restart.
    cp.put_security_group(group("443-444")).unwrap();
    let changed = Instant::now();
    eventually("the ASG change reaches the container", || seen_as(&web, OUTSIDE, 444) == cell_ip);
    println!("ASG change in Cloud Controller → open on the cell: {:?} (sync interval 1 s)", changed.elapsed());

    // Mappings survive a netagent restart and are repaired after drift.
    drop(agent);
    let agent = w.agent(1, &cp, &options);
    assert_eq!(seen_as(outside, CELL, 61000), Some(OUTSIDE.to_string()), "after a restart");
    let sabotage: Vec<&str> = if setting == Enforcement::Nftables {
        vec!["nft", "flush", "chain", "ip", "c2c", "prerouting"]
    } else {
        vec!["iptables", "-w", "-t", "nat", "-F", "PREROUTING"]
    };
    let mut cmd = vec!["ip", "netns", "exec", &cell.0];
    cmd.extend(sabotage);
    sh(&cmd);
    eventually("the mapping is repaired", || seen_as(outside, CELL, 61000) == Some(OUTSIDE.to_string()));

    // DEL as the networker calls it: the mapping is gone.
    let conf = networker_conf(&state, &agent.url, "app-g", json!([{"host_port": 61000, "container_port": 8080}]));
    let del = networker(cell, "DEL", "web-handle", &web, &conf);
    assert_eq!(del.code, 0, "{}", del.stdout);
    assert_eq!(seen_as(outside, CELL, 61000), None, "gone after DEL");
}
