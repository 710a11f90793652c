//! Data-path benchmark (not a test; run as root): the nftables backend with 10k and 50k
//! policies on a cell with 250 containers.
//!
//!     cargo bench -p netagent --bench dataplane
//!
//! Measures, in throwaway namespaces: applying the full ruleset; applying one added policy
//! with 10k installed; and through the cell (container → container, forwarded and checked
//! against the ruleset) the TCP connect rate and bulk throughput with 0, 10k and 50k
//! policies installed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use netagent::enforcement::nftables::Enforcer;
use netagent::enforcement::plan::{LocalContainer, Proto, Ruleset, TaggedPolicy, plan};
use netagent::lab::Netns;
use netagent::netlink::Netlink;

const PORT: u16 = 8080;

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
    plan(&policies, containers)
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

fn connect_rate(client: &Netns, server: &Netns, ip: Ipv4Addr) -> f64 {
    let listener_ns = server.path();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = std::thread::spawn(move || {
        let fd = std::fs::File::open(&listener_ns).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind((ip, PORT)).unwrap();
        l.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            if l.accept().is_err() {
                std::thread::yield_now();
            }
        }
    });
    ready_rx.recv().unwrap();
    let rate = in_ns(client, move || {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_secs(2) {
            if TcpStream::connect_timeout(&(ip, PORT).into(), Duration::from_secs(1)).is_ok() {
                n += 1;
            }
        }
        n as f64 / t.elapsed().as_secs_f64()
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    srv.join().unwrap();
    rate
}

fn throughput(client: &Netns, server: &Netns, ip: Ipv4Addr) -> f64 {
    const BYTES: usize = 256 << 20;
    let listener_ns = server.path();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let srv = std::thread::spawn(move || {
        let fd = std::fs::File::open(&listener_ns).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind((ip, PORT)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
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
    ready_rx.recv().unwrap();
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
        (0..248).map(|i| LocalContainer { ip: Ipv4Addr::new(10, 255, 1, 2 + i as u8), app: Some(app(i)) }).collect();
    containers.push(LocalContainer { ip: ip_a, app: Some("bench-a".into()) });
    containers.push(LocalContainer { ip: ip_b, app: Some("bench-b".into()) });

    println!("nftables backend, one cell, {} containers", containers.len());
    for n in [0usize, 10_000, 50_000] {
        let rs = ruleset(n, &containers, None);
        let allows = rs.allows.len();
        let (enforcer, full) = cell.run(move || async move {
            let mut e = Enforcer::new();
            let t = Instant::now();
            e.reconcile(&rs).unwrap();
            (e, t.elapsed())
        });
        let mut line =
            format!("{n:>6} policies ({allows} allow entries): full apply {:>7.1} ms", full.as_secs_f64() * 1e3);
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
            let rs2 = ruleset(n, &containers, Some(&one));
            let one_added = cell.run(move || async move {
                let mut e = enforcer;
                let t = Instant::now();
                e.reconcile(&rs2).unwrap();
                t.elapsed()
            });
            line.push_str(&format!(", one added policy {:>5.1} ms", one_added.as_secs_f64() * 1e3));
        }
        let rate = connect_rate(&a, &b, ip_b);
        let mbps = throughput(&a, &b, ip_b);
        println!("{line}; through the cell: {rate:>7.0} connects/s, {mbps:>6.0} MiB/s");
    }
}
