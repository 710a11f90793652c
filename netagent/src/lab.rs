//! A small lab for kernel tests and the demo: throwaway network namespaces, an underlay
//! "switch" (a bridge in a namespace of its own) and TCP/UDP echo probes. It shells out to
//! `ip` to build namespaces (it is not product code) and needs root. Nothing it creates is
//! outside its namespaces; dropping a `Netns` deletes it.

use std::net::Ipv4Addr;
use std::process::Command;

pub fn sh(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?} failed");
}

pub fn ok(args: &[&str]) -> bool {
    Command::new(args[0]).args(&args[1..]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// A network namespace, deleted when dropped.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("c2c-{tag}-{}-{n}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns(name)
    }

    /// Runs `f` on a thread inside this namespace, with a tokio runtime.
    pub fn run<T: Send + 'static, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        let path = format!("/var/run/netns/{}", self.0);
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f())
        })
        .join()
        .unwrap()
    }

    /// Pings `ip`, allowing a few seconds for underlay links and ARP to settle.
    pub fn reaches(&self, ip: &str) -> bool {
        (0..5).any(|_| self.exec(&["ping", "-c", "1", "-W", "1", ip]))
    }

    pub fn exec(&self, args: &[&str]) -> bool {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        ok(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

impl Netns {
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

/// `n` cells on one underlay "switch" (a bridge in its own namespace), cell `i` at
/// `10.254.250.i/24` on its interface `u<i>`.
pub struct Fabric {
    pub switch: Netns,
    pub cells: Vec<Netns>,
}

pub fn fabric(n: usize) -> Fabric {
    let switch = Netns::new("sw");
    sh(&["ip", "-n", &switch.0, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", &switch.0, "link", "set", "br0", "up"]);
    let mut cells = Vec::new();
    for i in 1..=n {
        let cell = Netns::new(&format!("cell{i}"));
        attach(&switch, &cell, i as u8);
        cells.push(cell);
    }
    Fabric { switch, cells }
}

/// A TCP echo and a UDP echo on `ip:port` inside `ns`, serving one exchange each (or giving
/// up after a few seconds when nothing comes), in the background.
pub fn echo_servers(ns: &Netns, ip: Ipv4Addr, port: u16) -> std::thread::JoinHandle<()> {
    let path = format!("/var/run/netns/{}", ns.0);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let tcp = std::net::TcpListener::bind((ip, port)).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let udp = std::net::UdpSocket::bind((ip, port)).unwrap();
        udp.set_read_timeout(Some(std::time::Duration::from_millis(100))).unwrap();
        ready_tx.send(()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(2500);
        let (mut tcp_done, mut udp_done) = (false, false);
        while std::time::Instant::now() < deadline && !(tcp_done && udp_done) {
            if !tcp_done && let Ok((mut conn, _)) = tcp.accept() {
                conn.set_nonblocking(false).unwrap();
                conn.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 5];
                if conn.read_exact(&mut buf).is_ok() {
                    let _ = conn.write_all(&buf);
                }
                tcp_done = true;
            }
            let mut buf = [0u8; 64];
            if !udp_done && let Ok((n, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..n], from);
                udp_done = true;
            }
        }
    });
    ready_rx.recv().unwrap();
    handle
}

/// From inside `ns`: a TCP exchange and a UDP exchange with `ip:port`.
pub fn talk(ns: &Netns, ip: Ipv4Addr, port: u16) -> (bool, bool) {
    let path = format!("/var/run/netns/{}", ns.0);
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let timeout = std::time::Duration::from_millis(1000);
        let tcp = std::net::TcpStream::connect_timeout(&(ip, port).into(), timeout).ok().and_then(|mut s| {
            s.set_read_timeout(Some(timeout)).ok()?;
            s.write_all(b"hello").ok()?;
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).ok()?;
            Some(&buf == b"hello")
        });
        let udp = std::net::UdpSocket::bind(("0.0.0.0", 0)).ok().and_then(|s| {
            s.set_read_timeout(Some(timeout)).ok()?;
            s.send_to(b"ping", (ip, port)).ok()?;
            let mut buf = [0u8; 16];
            let (n, _) = s.recv_from(&mut buf).ok()?;
            Some(&buf[..n] == b"ping")
        });
        (tcp == Some(true), udp == Some(true))
    })
    .join()
    .unwrap()
}

/// `talk` with an echo server started for it.
pub fn exchange(from: &Netns, to: &Netns, ip: Ipv4Addr, port: u16) -> (bool, bool) {
    let server = echo_servers(to, ip, port);
    let result = talk(from, ip, port);
    server.join().unwrap();
    result
}

/// Attaches a namespace to the switch at `10.254.250.<host>`.
pub fn attach(switch: &Netns, ns: &Netns, host: u8) {
    let (a, b) = (format!("u{host}"), format!("p{host}"));
    sh(&["ip", "-n", &ns.0, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &switch.0]);
    sh(&["ip", "-n", &switch.0, "link", "set", &b, "master", "br0", "up"]);
    sh(&["ip", "-n", &ns.0, "addr", "add", &format!("10.254.250.{host}/24"), "dev", &a]);
    sh(&["ip", "-n", &ns.0, "link", "set", &a, "up"]);
}

/// A TCP listener inside a namespace accepting (and closing) connections until dropped.
pub struct TcpServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TcpServer {
    pub fn start(ns: &Netns, ip: Ipv4Addr, port: u16) -> TcpServer {
        let path = ns.path();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = std::net::TcpListener::bind((ip, port)).unwrap();
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(2)),
                }
            }
        });
        ready_rx.recv().unwrap();
        TcpServer { stop, thread: Some(thread) }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Whether a TCP connection from inside `ns` to `ip:port` is established within `timeout`.
pub fn connects(ns: &Netns, ip: Ipv4Addr, port: u16, timeout: std::time::Duration) -> bool {
    let path = ns.path();
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpStream::connect_timeout(&(ip, port).into(), timeout).is_ok()
    })
    .join()
    .unwrap_or(false)
}

/// Certificate files of a lab cell (signed by the CA the lab's control plane trusts).
pub struct CellCert {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

/// netagent's configuration for lab cell `i`: underlay `10.254.250.i`, the control plane's
/// cells' API at `10.254.250.254:<port>`, health on an ephemeral loopback port.
pub fn cell_config(
    i: u8,
    port: u16,
    cert: CellCert,
    state_dir: &std::path::Path,
    enforcement: &str,
    lease_poll_interval_ms: u64,
) -> crate::config::Config {
    crate::config::Config {
        control_plane_url: format!("https://10.254.250.254:{port}"),
        client_cert_file: cert.cert,
        client_key_file: cert.key,
        ca_file: cert.ca,
        underlay_ip: Ipv4Addr::new(10, 254, 250, i),
        vtep_name: "c2c-vtep".into(),
        state_dir: state_dir.to_path_buf(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        lease_poll_interval_ms,
        enforcement: enforcement.to_string(),
        ..crate::config::Config::default()
    }
}
