//! Cells fail closed, tried as an attacker would: a container with no policy tries to reach
//! every address of its own cell and of the others, to inject a hand-made VXLAN-GBP frame
//! carrying the tag of an app that *is* allowed to reach a victim, and to forge a co-located
//! container's source address. Each attempt is checked against a control that shows the
//! same packet does arrive when sent from where it is allowed. Both backends. Needs root,
//! nft, iptables and python3 (the attacker's packet tool, `tests/tests/support/forge.py`).

use std::net::Ipv4Addr;
use std::time::Duration;

use harness::cell::CellOptions;
use harness::lab::{Netns, attach, eventually, require_root, require_tool};
use harness::probes::{TcpServer, connects, exchange};
use harness::world::World;
use netagent::config::Enforcement;
use policy_client::types::{Policy, Protocol};

const PORT: u16 = 9000;
const HOST_SERVICE: u16 = 7777;

/// Runs the attacker's packet tool inside `ns`.
fn forge(ns: &Netns, args: &[&str]) {
    let tool = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/forge.py");
    let mut cmd = vec!["python3", tool];
    cmd.extend_from_slice(args);
    assert!(ns.exec(&cmd), "forge.py {args:?} failed in {}", ns.0);
}

/// Counts the TCP and UDP packets to `PORT` that reach a container (an nft counter inside
/// its own namespace, independent of the cell's enforcement backend).
struct Arrivals<'a>(&'a Netns);

impl<'a> Arrivals<'a> {
    fn install(ns: &'a Netns) -> Arrivals<'a> {
        let script = format!(
            "add table ip probe\nadd chain ip probe input {{ type filter hook input priority -300; }}\n\
             add rule ip probe input meta l4proto {{ tcp, udp }} th dport {PORT} counter\n"
        );
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.0, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "installing the arrival counter in {}", ns.0);
        Arrivals(ns)
    }

    fn count(&self) -> u64 {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.0.0, "nft", "list", "chain", "ip", "probe", "input"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let after = text.split("counter packets ").nth(1).unwrap_or("0");
        after.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0)
    }
}

/// The VTEP address of a cell (its subnet's first address) and the VTEP's MAC.
fn vtep(subnet: &str) -> (Ipv4Addr, String) {
    let ip: Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
    let o = ip.octets();
    (ip, format!("ee:ee:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]))
}

#[test]
fn containers_are_isolated_from_every_cell_with_nftables() {
    isolation(Enforcement::Nftables);
}

#[test]
fn containers_are_isolated_from_every_cell_with_iptables() {
    require_tool("iptables-restore", "iptables");
    isolation(Enforcement::Iptables);
}

fn isolation(enforcement: Enforcement) {
    require_root();
    require_tool("nft", "nftables");
    require_tool("python3", "python3");
    let w = World::new(2, "c2c-isolation");
    let f = &w.fabric;
    let (cell1, cell2) = (&f.cells[0], &f.cells[1]);
    // A host on the underlay (where the router and other cells are).
    let outside = Netns::new("outside");
    attach(&f.switch, &outside, 200);
    let cp = w.control_plane();
    let options = CellOptions { enforcement, ..CellOptions::default() };
    let a1 = w.agent(1, &cp, &options);
    let a2 = w.agent(2, &cp, &options);
    w.overlay_ready();

    // S may reach V (app-v, on both cells); X has no policy at all.
    let (s_ns, x_ns, v1_ns, v2_ns) = (Netns::new("s"), Netns::new("x"), Netns::new("v1"), Netns::new("v2"));
    let s = a1.add(cell1, "s", &s_ns, "app-s").unwrap();
    let _x = a1.add(cell1, "x", &x_ns, "app-x").unwrap();
    let v1 = a1.add(cell1, "v1", &v1_ns, "app-v").unwrap();
    let v2 = a2.add(cell2, "v2", &v2_ns, "app-v").unwrap();
    let port = i32::from(PORT);
    cp.create(vec![
        Policy::new("app-s", "app-v", Protocol::Tcp, port, port),
        Policy::new("app-s", "app-v", Protocol::Udp, port, port),
    ])
    .unwrap();
    eventually("S reaches V on both cells", || {
        exchange(&s_ns, &v1_ns, v1, PORT) == (true, true) && exchange(&s_ns, &v2_ns, v2, PORT) == (true, true)
    });
    assert_eq!(exchange(&x_ns, &v2_ns, v2, PORT), (false, false), "X has no policy");
    // S is the first source of the first policy: tag 1 (lowest free tag first). The
    // controls below prove it: frames carrying it are delivered from the underlay.
    let s_tag = "0x1";

    // 1. Nothing of any cell is reachable from a container.
    let underlay1 = Ipv4Addr::new(10, 254, 250, 1);
    let underlay2 = Ipv4Addr::new(10, 254, 250, 2);
    let (vtep1, mac1) = vtep(&a1.subnet);
    let (vtep2, mac2) = vtep(&a2.subnet);
    let _services = [cell1, cell2].map(|c| TcpServer::start(c, Ipv4Addr::UNSPECIFIED, HOST_SERVICE));
    assert!(connects(&outside, underlay1, HOST_SERVICE, Duration::from_secs(2)), "control: cell 1's service is up");
    assert!(connects(&outside, underlay2, HOST_SERVICE, Duration::from_secs(2)), "control: cell 2's service is up");
    for target in [underlay1, vtep1, Ipv4Addr::new(169, 254, 0, 1), underlay2, vtep2] {
        assert!(
            !connects(&x_ns, target, HOST_SERVICE, Duration::from_millis(500)),
            "a container reached a host service on {target}"
        );
    }

    // 2. Forged VXLAN-GBP frames with S's tag, from X, to every VTEP-ish address.
    let (in_v1, in_v2) = (Arrivals::install(&v1_ns), Arrivals::install(&v2_ns));
    let (s_ip, v1_ip, v2_ip) = (s.to_string(), v1.to_string(), v2.to_string());
    let port_arg = PORT.to_string();
    for (target, mac, victim) in [
        (underlay1, &mac1, &v1_ip),
        (vtep1, &mac1, &v1_ip),
        (Ipv4Addr::new(169, 254, 0, 1), &mac1, &v1_ip),
        (underlay2, &mac2, &v2_ip),
        (vtep2, &mac2, &v2_ip),
    ] {
        for proto in ["udp", "tcp"] {
            forge(&x_ns, &["vxlan", &target.to_string(), s_tag, mac, &s_ip, victim, proto, &port_arg]);
        }
    }
    // Control: the same frames from the underlay side are decapsulated and delivered (the
    // overlay trusts its underlay, as upstream's; docs/netagent.md says what to protect).
    for proto in ["udp", "tcp"] {
        forge(&outside, &["vxlan", &underlay2.to_string(), s_tag, &mac2, &s_ip, &v2_ip, proto, &port_arg]);
    }
    eventually("the control frames reach V on cell 2", || in_v2.count() >= 2);
    assert_eq!(in_v2.count(), 2, "only the two control frames reached V on cell 2");
    assert_eq!(in_v1.count(), 0, "no forged frame reached V on cell 1");

    // 3. X forges S's address (co-located on cell 1): no access that X's own app lacks.
    let before = in_v2.count();
    forge(&x_ns, &["spoof", &s_ip, &v2_ip, &port_arg]);
    // Control: S itself sends the same datagram, which its policy allows.
    forge(&s_ns, &["spoof", &s_ip, &v2_ip, &port_arg]);
    eventually("S's own datagram reaches V", || in_v2.count() > before);
    assert_eq!(in_v2.count(), before + 1, "the forged datagram did not get through");

    // Strict reverse-path filtering on the host end of every container veth, as upstream.
    for ip in [s, v1] {
        let veth = netagent::naming::host_veth(ip);
        // /proc/sys/net shows the namespace of the reader: read it inside the cell.
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &cell1.0, "cat", &format!("/proc/sys/net/ipv4/conf/{veth}/rp_filter")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "rp_filter on {veth}");
    }
    drop((a1, a2, cp));
}
