//! apps.internal service discovery across three cells: containers register their internal
//! routes through the CNI plugin, every cell's DNS responder answers from the control
//! plane's table, and apps connect by name (policies still decide). Needs root, `dig`
//! (Debian `dnsutils`) and python3 (a client that resolves through libc).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use harness::cell::CellOptions;
use harness::lab::*;
use harness::probes::TcpServer;
use harness::world::World;
use policy_client::types::{Policy, Protocol};

const NAME: &str = "app-b.apps.internal";
const DNS: &str = "169.254.0.2";

/// The A records `dig` gets for `name` from inside `ns`, over UDP or TCP.
fn dig(ns: &Netns, name: &str, tcp: bool) -> BTreeSet<Ipv4Addr> {
    let transport = if tcp { "+tcp" } else { "+notcp" };
    let out = ns.output(&["dig", &format!("@{DNS}"), name, "A", "+short", "+time=2", "+tries=1", transport]);
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The status `dig` reports for `name` (`NOERROR`, `NXDOMAIN`, `REFUSED`, ...).
fn status(ns: &Netns, name: &str) -> String {
    let out = ns.output(&["dig", &format!("@{DNS}"), name, "A", "+time=2", "+tries=1"]);
    out.split("status: ").nth(1).and_then(|s| s.split(',').next()).unwrap_or("no answer").to_string()
}

/// What the libc resolver (getent, through the container's resolv.conf) finds for `name`.
fn getent(ns: &Netns, name: &str) -> BTreeSet<Ipv4Addr> {
    let out = ns.output(&["getent", "ahostsv4", name]);
    out.lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect()
}

/// Whether a program that resolves `name` through libc connects to `name:port`.
fn connects_by_name(ns: &Netns, name: &str, port: u16) -> bool {
    let code = format!("import socket; socket.create_connection(('{name}', {port}), timeout=2).close()");
    ns.exec(&["python3", "-c", &code])
}

#[test]
fn apps_resolve_each_other_by_name_across_cells() {
    require_root();
    require_tool("dig", "dnsutils");
    require_tool("python3", "python3");
    let w = World::new(3, "c2c-discovery");
    let cp = w.control_plane();
    let options = CellOptions::default();
    let agents: Vec<_> = (1..=3).map(|i| w.agent(i, &cp, &options)).collect();
    w.overlay_ready();

    // The client on cell 1; two instances of app-b on cells 2 and 3.
    let (client, b2, b3) = (Netns::new("ctr-a"), Netns::new("ctr-b2"), Netns::new("ctr-b3"));
    let added = agents[0].add_routed(w.cell(1), "a", &client, "app-a", "app-a.apps.internal");
    assert_eq!(added["dns"]["nameservers"], serde_json::json!([DNS]), "the CNI result names the cell's responder");
    client.set_resolv_conf(&format!("nameserver {DNS}\n"));
    let ip = |v: serde_json::Value| -> Ipv4Addr {
        v["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32").parse().unwrap()
    };
    let ip2 = ip(agents[1].add_routed(w.cell(2), "b2", &b2, "app-b", &format!("{NAME},0.{NAME}")));
    let ip3 = ip(agents[2].add_routed(w.cell(3), "b3", &b3, "app-b", &format!("{NAME},1.{NAME}")));
    let both: BTreeSet<Ipv4Addr> = [ip2, ip3].into();

    eventually("cell 1 resolves app-b to both instances", || dig(&client, NAME, false) == both);
    assert_eq!(dig(&client, NAME, true), both, "over TCP too");
    assert_eq!(dig(&client, "APP-B.Apps.Internal.", false), both, "names are case-insensitive");
    assert_eq!(dig(&client, &format!("1.{NAME}"), false), [ip3].into(), "an instance by its own route");
    assert_eq!(getent(&client, NAME), both, "the libc resolver, through the container's resolv.conf");
    assert_eq!(status(&client, "nobody.apps.internal"), "NXDOMAIN");
    assert_eq!(status(&client, "example.com"), "REFUSED", "the lab forwards nothing outside");
    // The answer's order changes between queries (clients that take the first spread out).
    let firsts: BTreeSet<String> = (0..40)
        .map(|_| client.output(&["dig", &format!("@{DNS}"), NAME, "+short"]).lines().next().unwrap_or("").to_string())
        .collect();
    assert_eq!(firsts.len(), 2, "both instances come first at times: {firsts:?}");

    // A connection by name: refused without a policy, made with one.
    let _servers = (TcpServer::start(&b2, ip2, 8080), TcpServer::start(&b3, ip3, 8080));
    assert!(!connects_by_name(&client, NAME, 8080), "no policy: the name resolves but nothing connects");
    cp.create(vec![Policy::new("app-a", "app-b", Protocol::Tcp, 8080, 8080)]).unwrap();
    eventually("a connection by name once the policy is in force", || connects_by_name(&client, NAME, 8080));

    // The instance on cell 3 stops: its address is gone everywhere.
    agents[2].del(w.cell(3), "b3", &b3, "app-b").unwrap();
    eventually("cell 1 forgets the stopped instance", || dig(&client, NAME, false) == [ip2].into());
    assert_eq!(status(&client, &format!("1.{NAME}")), "NXDOMAIN");
    assert_eq!(dig(&b2, NAME, false), [ip2].into(), "and so does cell 2");
}

/// Garbage and oversized packets get no crash and no answer that is not DNS; the responder
/// keeps answering.
#[test]
fn the_responder_survives_bad_packets() {
    require_root();
    require_tool("dig", "dnsutils");
    let w = World::new(1, "c2c-dns-fuzz");
    let cp = w.control_plane();
    let agent = w.agent(1, &cp, &CellOptions::default());
    let ctr = Netns::new("ctr");
    agent.add_routed(w.cell(1), "x", &ctr, "app-x", "x.apps.internal");
    eventually("the responder answers", || !dig(&ctr, "x.apps.internal", false).is_empty());

    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff; 3],
        vec![0u8; 12],
        // A header that promises 50 questions and carries none.
        vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x32, 0, 0, 0, 0, 0, 0],
        // A name whose compression pointer points at itself.
        vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01],
        (0..65_000u32).map(|i| (i % 251) as u8).collect(),
    ];
    let answers = ctr.run(move || async move {
        let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
        sock.connect((DNS, 53)).await.unwrap();
        let mut answers = Vec::new();
        for g in &garbage {
            let _ = sock.send(g).await;
            let mut buf = vec![0u8; 65_535];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), sock.recv(&mut buf)).await {
                answers.push(buf[..n].to_vec());
            }
        }
        // Over TCP: a length prefix that promises more than ever comes, then a close.
        if let Ok(mut s) = tokio::net::TcpStream::connect((DNS, 53)).await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(&[0xff, 0xff, 1, 2, 3]).await;
        }
        answers
    });
    for a in &answers {
        assert!(a.len() >= 12 && a[2] & 0x80 != 0, "anything sent back is a DNS response: {a:?}");
    }
    assert_eq!(dig(&ctr, "x.apps.internal", false).len(), 1, "still answering after the garbage");
    assert_eq!(dig(&ctr, "x.apps.internal", true).len(), 1, "over TCP too");
}

/// The drop-in for CF's route-emitter: registrations published on NATS resolve on the
/// cells; unregistering removes them; malformed messages change nothing.
#[test]
fn route_emitter_registrations_over_nats_resolve() {
    require_root();
    require_tool("dig", "dnsutils");
    let w = World::new(1, "c2c-nats");
    let nats = harness::nats::NatsServer::start(&w.ctl);
    let cp = harness::control_plane::ControlPlane::start_with(&w.ctl, &w.ca, w.dir.path(), 0, |c| {
        c.route_emitter.enabled = true;
    })
    .unwrap();
    let agent = w.agent(1, &cp, &CellOptions::default());
    let ctr = Netns::new("ctr");
    agent.add_routed(w.cell(1), "x", &ctr, "app-x", "x.apps.internal");

    let legacy: Ipv4Addr = "10.255.77.7".parse().unwrap();
    nats.publish(
        "service-discovery.register",
        r#"{"host":"10.255.77.7","uris":["legacy.apps.internal","0.legacy.apps.internal"],"endpoint_updated_at_ns":1}"#,
    );
    eventually("a route-emitter registration resolves", || dig(&ctr, "legacy.apps.internal", false) == [legacy].into());
    assert_eq!(dig(&ctr, "0.legacy.apps.internal", false), [legacy].into());

    // Bad messages first, then a good one on the same subject: once the good one resolves,
    // the bad ones have been handled (one subscription delivers in order).
    for bad in [
        r#"{"host":"not-an-ip","uris":["bad1.apps.internal"]}"#,
        r#"{"host":"10.255.77.8","uris":["bad2.apps.internal","not a hostname"]}"#,
        r#"{"host":"10.255.77.8","uris":[]}"#,
        "\u{1}garbage",
    ] {
        nats.publish("service-discovery.register", bad);
    }
    nats.publish("service-discovery.register", r#"{"host":"10.255.77.9","uris":["sentinel.apps.internal"]}"#);
    eventually("the sentinel resolves", || !dig(&ctr, "sentinel.apps.internal", false).is_empty());
    assert_eq!(status(&ctr, "bad1.apps.internal"), "NXDOMAIN");
    assert_eq!(status(&ctr, "bad2.apps.internal"), "NXDOMAIN", "a message with one bad uri changes nothing");

    nats.publish("service-discovery.unregister", r#"{"host":"10.255.77.7","uris":["legacy.apps.internal"]}"#);
    eventually("unregistering removes the name", || status(&ctr, "legacy.apps.internal") == "NXDOMAIN");
    assert_eq!(dig(&ctr, "0.legacy.apps.internal", false), [legacy].into(), "only the route named goes");
}

/// Names outside the internal domains go to the cell's resolvers (its resolv.conf): here a
/// resolver of the lab's own on the cell, at 127.0.0.2, answering `outside.test`.
#[test]
fn other_names_are_forwarded_to_the_cells_resolvers() {
    use netagent::discovery::responder::{Responder, SharedTable};
    use netagent::discovery::table::Table;
    use netagent::discovery::{DiscoveryConfig, Forward};
    require_root();
    require_tool("dig", "dnsutils");
    let w = World::new(1, "c2c-dns-forward");
    let cp = w.control_plane();

    // The cell's "upstream" resolver: authoritative for outside.test, refusing the rest.
    let upstream_config = DiscoveryConfig {
        listen: Ipv4Addr::new(127, 0, 0, 2),
        internal_domains: vec!["outside.test.".into()],
        forward: Forward::Refuse,
        ..Default::default()
    };
    let ips = ["192.0.2.10".to_string()];
    let table: SharedTable = std::sync::Arc::new(std::sync::RwLock::new(std::sync::Arc::new(Table::new(
        &upstream_config.internal_domains,
        [("www.outside.test", &ips[..])],
    ))));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let upstream = w.cell(1).spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut server = Responder::new(&upstream_config, table).unwrap().serve(&upstream_config).await.unwrap();
            ready_tx.send(()).unwrap();
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
            let _ = server.shutdown_gracefully().await;
        })
    });
    ready_rx.recv_timeout(Duration::from_secs(30)).expect("the upstream resolver listens");

    let resolv = w.dir.join("cell-resolv.conf");
    std::fs::write(&resolv, format!("nameserver 127.0.0.2\nnameserver {DNS}\n")).unwrap();
    let mut options = CellOptions::default();
    options.discovery.forward = Forward::ResolvConf;
    options.discovery.resolv_conf_file = resolv;
    let agent = w.agent(1, &cp, &options);
    let ctr = Netns::new("ctr");
    agent.add_routed(w.cell(1), "x", &ctr, "app-x", "x.apps.internal");
    eventually("internal names still answered locally", || !dig(&ctr, "x.apps.internal", false).is_empty());
    assert_eq!(dig(&ctr, "www.outside.test", false), ["192.0.2.10".parse().unwrap()].into(), "forwarded");
    assert_eq!(dig(&ctr, "www.outside.test", true), ["192.0.2.10".parse().unwrap()].into(), "over TCP too");
    assert_eq!(status(&ctr, "nobody.outside.test"), "NXDOMAIN", "the upstream's NXDOMAIN comes through");
    drop(stop_tx);
    upstream.join().unwrap();
}
