//! Data-path benchmark (not a test; run as root): both enforcement backends with 0, 10k and
//! 50k policies on a cell with 250 containers, in a foundation of 1,000 cells (the cell's
//! isolation rules check every packet from a container against their addresses).
//!
//!     cargo bench -p system-tests --bench dataplane              # both backends
//!     cargo bench -p system-tests --bench dataplane -- nftables  # one of them
//!     cargo bench -p system-tests --bench dataplane -- egress    # ASGs only (and a backend)
//!
//! Measures, in throwaway namespaces: applying the full ruleset; applying one added policy
//! with 10k installed (median of 20); and through the cell (container → container,
//! forwarded and checked against the ruleset) the TCP connect rate and connect latency
//! (new connections, which the policies decide), the round trip of a request on an
//! established connection, and bulk throughput. Then egress: a container's connect rate to
//! a host outside the overlay (masqueraded) with 1,000 ASG rules over 100 spaces installed,
//! against only the one group that allows it.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use harness::lab::Netns;
use netagent::config::Enforcement;
use netagent::enforcement::plan::{CellFacts, HostAccess, LocalContainer, Proto, Ruleset, TaggedPolicy, plan_cell};
use netagent::netlink::Netlink;

const PORT: u16 = 8080;

fn setting(backend: &str) -> Enforcement {
    if backend == "iptables" { Enforcement::Iptables } else { Enforcement::Nftables }
}

fn app(i: usize) -> String {
    format!("app-{i}")
}

/// `n` policies onto the 250 local containers' apps (plus the measured A→B one), from 2,000
/// source apps.
fn ruleset(n: usize, containers: &[LocalContainer], extra: Option<&TaggedPolicy>) -> Ruleset {
    let mut policies: Vec<TaggedPolicy> = (0..n)
        .map(|i| TaggedPolicy {
            source: app(1000 + i % 2000),
            source_tag: (1000 + i % 2000) as u16,
            destination: app(i % 250),
            destination_tag: (i % 250 + 1) as u16,
            proto: if i % 2 == 0 { Proto::Tcp } else { Proto::Udp },
            start: 1000 + (i / 250) as u16 % 50_000,
            end: 1000 + (i / 250) as u16 % 50_000,
        })
        .collect();
    policies.push(TaggedPolicy {
        source: "bench-a".into(),
        source_tag: 60_000,
        destination: "bench-b".into(),
        destination_tag: 60_001,
        proto: Proto::Tcp,
        start: PORT,
        end: PORT,
    });
    if let Some(p) = extra {
        policies.push(p.clone());
    }
    plan_cell(&policies, containers, &facts())
}

/// A foundation of 1,000 cells: their 2,000 underlay and VTEP addresses, which every packet
/// from a container is checked against, and the default resolver.
fn facts() -> CellFacts {
    let cells = (0..1000u32).flat_map(|i| {
        let (hi, lo) = ((i / 250) as u8, (i % 250) as u8 + 1);
        [Ipv4Addr::new(10, 254, hi, lo), Ipv4Addr::new(10, 255, hi, lo)]
    });
    CellFacts {
        cells: cells.collect(),
        host: HostAccess { dns: [Ipv4Addr::new(169, 254, 0, 2)].into(), ..HostAccess::default() },
        ..CellFacts::default()
    }
}

fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = ns.path();
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// New connections per second over one second, and the median connect latency.
fn connect_rate(client: &Netns, server: &Netns, ip: Ipv4Addr) -> (f64, Duration) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let srv = listen_in(server, ip, move |l| {
        // Blocking accepts: a spinning server would take a core from the kernel's
        // forwarding, which is what is measured. The client's last connection wakes it.
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = l.accept();
        }
    });
    let rate = in_ns(client, move || {
        let mut latencies = Vec::new();
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(1) {
            let c = Instant::now();
            if TcpStream::connect_timeout(&(ip, PORT).into(), Duration::from_secs(1)).is_ok() {
                latencies.push(c.elapsed());
            }
        }
        latencies.sort();
        (
            latencies.len() as f64 / t.elapsed().as_secs_f64(),
            latencies.get(latencies.len() / 2).copied().unwrap_or_default(),
        )
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    in_ns(client, move || {
        let _ = TcpStream::connect_timeout(&(ip, PORT).into(), Duration::from_secs(1));
    });
    srv.join().unwrap();
    rate
}

/// A server thread in `server`'s namespace listening on `ip`, handing the listener to
/// `serve`; returns once it listens.
fn listen_in(
    server: &Netns,
    ip: Ipv4Addr,
    serve: impl FnOnce(TcpListener) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let listener_ns = server.path();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = std::thread::spawn(move || {
        let fd = std::fs::File::open(&listener_ns).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind((ip, PORT)).unwrap();
        ready_tx.send(()).unwrap();
        serve(l);
    });
    ready_rx.recv().unwrap();
    srv
}

/// Like `listen_in`, serving the first connection only.
fn serve_one(
    server: &Netns,
    ip: Ipv4Addr,
    serve: impl FnOnce(TcpStream) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    listen_in(server, ip, move |l| serve(l.accept().unwrap().0))
}

/// The median round trip of a one-byte request and its answer on an established connection.
fn round_trip(client: &Netns, server: &Netns, ip: Ipv4Addr) -> Duration {
    const ROUNDS: usize = 2_000;
    let srv = serve_one(server, ip, |mut s| {
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            if s.write_all(&b).is_err() {
                break;
            }
        }
    });
    let rtt = in_ns(client, move || {
        let mut s = TcpStream::connect((ip, PORT)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [1u8; 1];
        let mut samples = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let t = Instant::now();
            s.write_all(&b).unwrap();
            s.read_exact(&mut b).unwrap();
            samples.push(t.elapsed());
        }
        samples.sort();
        samples[ROUNDS / 2]
    });
    srv.join().unwrap();
    rtt
}

fn throughput(client: &Netns, server: &Netns, ip: Ipv4Addr) -> f64 {
    const BYTES: usize = 128 << 20;
    let srv = serve_one(server, ip, |mut s| {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        while total < BYTES {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
    });
    let mbps = in_ns(client, move || {
        let mut s = TcpStream::connect((ip, PORT)).unwrap();
        let buf = vec![7u8; 1 << 16];
        let t = Instant::now();
        let mut sent = 0;
        while sent < BYTES {
            s.write_all(&buf).unwrap();
            sent += buf.len();
        }
        drop(s);
        (BYTES as f64 / (1 << 20) as f64) / t.elapsed().as_secs_f64()
    });
    srv.join().unwrap();
    mbps
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the data-path benchmark builds network namespaces: run it as root");
        std::process::exit(2);
    }
    let cell = Netns::new("bench-cell");
    let (a, b) = (Netns::new("bench-a"), Netns::new("bench-b"));
    // Many short connections: let the client reuse ports in TIME_WAIT, or later rounds
    // would measure port exhaustion instead of the data path.
    for ns in [&a, &b] {
        for (k, v) in [("net.ipv4.tcp_tw_reuse", "1"), ("net.ipv4.ip_local_port_range", "1024 65000")] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "exec", &ns.0, "sysctl", "-qw", &format!("{k}={v}")])
                .status();
        }
    }
    let (ip_a, ip_b) = (Ipv4Addr::new(10, 255, 1, 252), Ipv4Addr::new(10, 255, 1, 253));
    for (ns, ip) in [(&a, ip_a), (&b, ip_b)] {
        let path = ns.path();
        cell.run(move || async move {
            let nl = Netlink::connect().unwrap();
            netagent::container_net::add(&nl, &path, "eth0", ip, 1450).await.unwrap();
        });
    }
    // 250 containers on the cell: the two measured ones and 248 others (addresses only).
    let mut containers: Vec<LocalContainer> =
        (0..248).map(|i| LocalContainer::new(Ipv4Addr::new(10, 255, 1, 2 + i as u8), Some(&app(i)))).collect();
    containers.push(LocalContainer::new(ip_a, Some("bench-a")));
    containers.push(LocalContainer::new(ip_b, Some("bench-b")));

    let asked: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let egress_only = asked.iter().any(|a| a == "egress");
    for backend in ["nftables", "iptables"] {
        let named = asked.iter().any(|a| a == "nftables" || a == "iptables");
        if named && !asked.iter().any(|a| a == backend) {
            continue;
        }
        println!("{backend} backend, one cell, {} containers", containers.len());
        if !egress_only {
            programming(&cell, backend, &containers);
            per_packet(&cell, (&a, &b, ip_b), backend, &containers);
        }
        egress(&cell, &a, ip_a, backend);
        // Leave the cell clean for the next backend.
        for cmd in [&["nft", "flush", "ruleset"][..], &["iptables", "-F"], &["iptables", "-t", "nat", "-F"]] {
            let _ = std::process::Command::new("ip").args(["netns", "exec", &cell.0]).args(cmd).status();
        }
    }
}

/// The host outside the overlay: 192.0.2.2, the cell 192.0.2.1 on a veth between them.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// The egress rulesets: 250 containers in 100 spaces (A in its own), and either only A's
/// group (tcp to the outside host) or that and 100 groups of 10 rules, one per space.
fn egress_rulesets(ip_a: Ipv4Addr) -> [(String, Ruleset); 2] {
    use netagent::enforcement::egress::{EgressRule, Group, Matches, Workload};
    use netagent::enforcement::plan::Edge;
    let mut containers: Vec<LocalContainer> = (0..248)
        .map(|i| LocalContainer {
            space: Some(format!("space-{}", i % 100)),
            workload: Workload::Running,
            ..LocalContainer::new(Ipv4Addr::new(10, 255, 1, 2 + i as u8), Some(&app(i)))
        })
        .collect();
    containers.push(LocalContainer {
        space: Some("space-a".into()),
        workload: Workload::Running,
        ..LocalContainer::new(ip_a, Some("bench-a"))
    });
    let group = |guid: String, space: String, rules: Vec<EgressRule>| Group {
        guid,
        rules,
        staging_default: false,
        running_default: false,
        staging_spaces: Default::default(),
        running_spaces: [space].into(),
    };
    let tcp = |first: Ipv4Addr, last: Ipv4Addr, start: u16, end: u16| EgressRule {
        first,
        last,
        matches: Matches::Tcp { start, end },
        log: false,
    };
    let mine = group("a".into(), "space-a".into(), vec![tcp(OUTSIDE, OUTSIDE, PORT, PORT)]);
    // Ten rules per space, each a /24 somewhere in 172.16/12 and a port range.
    let many: Vec<Group> = (0..100u32)
        .map(|k| {
            let rules = (0..10u32)
                .map(|r| {
                    let net = u32::from(Ipv4Addr::new(172, 16, 0, 0)) + ((k * 10 + r) << 8);
                    let port = 1000 + (k * 10 + r) as u16;
                    tcp(Ipv4Addr::from(net), Ipv4Addr::from(net + 255), port, port + 10)
                })
                .collect();
            group(format!("g{k}"), format!("space-{k}"), rules)
        })
        .collect();
    let facts = |groups: Vec<Group>| CellFacts {
        edge: Some(Edge {
            cell_ip: Ipv4Addr::new(192, 0, 2, 1),
            overlay: (Ipv4Addr::new(10, 255, 0, 0), 16),
            no_masquerade: (Ipv4Addr::new(10, 255, 0, 0), 16),
            vtep: "c2c-vtep".into(),
            logging: Default::default(),
        }),
        groups,
        ..facts()
    };
    let one = plan_cell(&[], &containers, &facts(vec![mine.clone()]));
    let all = plan_cell(&[], &containers, &facts([vec![mine], many].concat()));
    let rules = all.egress.len();
    [("1 ASG rule".into(), one), (format!("{rules} ASG rules"), all)]
}

/// A's connect rate to the outside host through the cell's egress rules and NAT, with one
/// rule and with 1,000, in seven interleaved rounds: the best of each and the ratio.
fn egress(cell: &Netns, a: &Netns, ip_a: Ipv4Addr, backend: &'static str) {
    const ROUNDS: usize = 7;
    let outside = Netns::new("bench-out");
    let run = |args: &[&str]| {
        let _ = std::process::Command::new("ip").args(args).status();
    };
    run(&["-n", &cell.0, "link", "add", "u0", "type", "veth", "peer", "name", "o0", "netns", &outside.0]);
    run(&["-n", &cell.0, "addr", "add", "192.0.2.1/24", "dev", "u0"]);
    run(&["-n", &cell.0, "link", "set", "u0", "up"]);
    run(&["-n", &outside.0, "addr", "add", "192.0.2.2/24", "dev", "o0"]);
    run(&["-n", &outside.0, "link", "set", "o0", "up"]);
    let rulesets = egress_rulesets(ip_a);
    let mut enforcer = Some(netagent::enforcement::backend(setting(backend)));
    let mut best = [0.0f64; 2];
    for round in 0..ROUNDS {
        for k in 0..2 {
            let i = (k + round) % 2;
            let rs = rulesets[i].1.clone();
            let e = enforcer.take().unwrap();
            enforcer = Some(cell.run(move || async move {
                let mut e = e;
                e.reconcile(&rs).unwrap();
                e
            }));
            short_conntrack(cell);
            let (rate, _) = connect_rate(a, &outside, OUTSIDE);
            best[i] = best[i].max(rate);
        }
        eprint!("\r  egress round {}/{ROUNDS}", round + 1);
    }
    eprintln!();
    for (i, (name, _)) in rulesets.iter().enumerate() {
        println!("  egress with {name:>15} over 100 spaces: {:>6.0} connects/s ({:.2}×)", best[i], best[i] / best[0]);
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Installing the whole ruleset at 0, 10k and 50k policies, and changing one policy with
/// 10k installed (added, then removed again, 10 times each: the median).
fn programming(cell: &Netns, backend: &'static str, containers: &[LocalContainer]) {
    for n in [0usize, 10_000, 50_000] {
        let rs = ruleset(n, containers, None);
        let allows = rs.allows.len();
        let (enforcer, full) = cell.run(move || async move {
            let mut e = netagent::enforcement::backend(setting(backend));
            let t = Instant::now();
            e.reconcile(&rs).unwrap();
            (e, t.elapsed())
        });
        let mut line = format!("  {n:>6} policies ({allows:>5} allow entries): full apply {:>7.1} ms", ms(full));
        if n == 10_000 {
            let one = TaggedPolicy {
                source: "new-src".into(),
                source_tag: 65_000,
                destination: app(7),
                destination_tag: 8,
                proto: Proto::Tcp,
                start: 9999,
                end: 9999,
            };
            let with = ruleset(n, containers, Some(&one));
            let without = ruleset(n, containers, None);
            let mut samples = cell.run(move || async move {
                let mut e = enforcer;
                let mut samples = Vec::new();
                for _ in 0..10 {
                    for rs in [&with, &without] {
                        let t = Instant::now();
                        e.reconcile(rs).unwrap();
                        samples.push(t.elapsed());
                    }
                }
                samples
            });
            samples.sort();
            line.push_str(&format!(", one policy added or removed {:.2} ms", ms(samples[samples.len() / 2])));
        }
        println!("{line}");
    }
}

/// Each round opens tens of thousands of connections through the cell: let their conntrack
/// entries go soon after they close, or the table fills up and later rounds measure that.
fn short_conntrack(cell: &Netns) {
    for (k, v) in [("nf_conntrack_tcp_timeout_time_wait", "1"), ("nf_conntrack_tcp_timeout_close", "1")] {
        let _ = std::process::Command::new("ip")
            .args(["netns", "exec", &cell.0, "sysctl", "-qw", &format!("net.netfilter.{k}={v}")])
            .status();
    }
}

/// Through the cell with 0, 10k and 50k policies installed, in seven interleaved rounds (a
/// 2-core VM drifts; interleaving keeps the comparison fair): the best rate and throughput
/// and the median latencies of each size, and the ratios to the figures with no policies.
fn per_packet(
    cell: &Netns,
    (a, b, ip_b): (&Netns, &Netns, Ipv4Addr),
    backend: &'static str,
    containers: &[LocalContainer],
) {
    const SIZES: [usize; 3] = [0, 10_000, 50_000];
    const ROUNDS: usize = 7;
    let rulesets: Vec<Ruleset> = SIZES.iter().map(|n| ruleset(*n, containers, None)).collect();
    let mut enforcer = Some(netagent::enforcement::backend(setting(backend)));
    // (connects/s, connect latency, round trip, MiB/s) per size.
    let mut samples: Vec<Vec<(f64, Duration, Duration, f64)>> = vec![Vec::new(); SIZES.len()];
    for round in 0..ROUNDS {
        // Each round starts with another size, so no size is always measured first or last.
        for k in 0..SIZES.len() {
            let i = (k + round) % SIZES.len();
            let rs = rulesets[i].clone();
            let e = enforcer.take().unwrap();
            enforcer = Some(cell.run(move || async move {
                let mut e = e;
                e.reconcile(&rs).unwrap();
                e
            }));
            short_conntrack(cell);
            let (rate, latency) = connect_rate(a, b, ip_b);
            let rtt = round_trip(a, b, ip_b);
            let mbps = throughput(a, b, ip_b);
            samples[i].push((rate, latency, rtt, mbps));
        }
        eprint!("\r  per-packet round {}/{ROUNDS}", round + 1);
    }
    eprintln!();
    fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
        v.sort_by(|x, y| x.partial_cmp(y).unwrap());
        v[v.len() / 2]
    }
    fn best(v: impl Iterator<Item = f64>) -> f64 {
        v.fold(0.0, f64::max)
    }
    // Rates: the best round (the one least disturbed by everything else sharing two cores is
    // the closest to what the data path itself allows); latencies: the median.
    let medians: Vec<(f64, Duration, Duration, f64)> = samples
        .into_iter()
        .map(|s| {
            (
                best(s.iter().map(|x| x.0)),
                median(s.iter().map(|x| x.1).collect()),
                median(s.iter().map(|x| x.2).collect()),
                best(s.iter().map(|x| x.3)),
            )
        })
        .collect();
    let base = medians[0];
    for (n, (rate, latency, rtt, mbps)) in SIZES.iter().zip(&medians) {
        println!(
            "  {n:>6} policies, through the cell: {rate:>6.0} connects/s ({:.2}×), connect {:>4.0} µs, request round trip {:>3.0} µs, {mbps:>5.0} MiB/s ({:.2}×)",
            rate / base.0,
            latency.as_secs_f64() * 1e6,
            rtt.as_secs_f64() * 1e6,
            mbps / base.3
        );
    }
}
