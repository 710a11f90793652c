//! Throwaway network namespaces and an underlay "switch" (a bridge in a namespace of its
//! own). It shells out to `ip` (this is test code, not the product) and needs root. Nothing
//! it creates is outside its namespaces; dropping a [`Netns`] deletes it, and
//! [`remove_namespaces`] removes whatever this process left after a panic or a signal.

use std::process::Command;
use std::time::{Duration, Instant};

/// Fails the test loudly when it does not run as root (CI does).
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test builds network namespaces and needs root: run the test suite as root (CI does)"
    );
}

/// Fails the test loudly when `tool` is missing, naming the Debian package to install.
pub fn require_tool(tool: &str, package: &str) {
    assert!(
        Command::new(tool).arg("--version").output().is_ok(),
        "this test needs `{tool}`: run `bash scripts/setup` or `apt-get install {package}`"
    );
}

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) {
    let status = Command::new(args[0]).args(&args[1..]).status().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(status.success(), "{args:?} failed");
}

/// Whether a command succeeds.
pub fn ok(args: &[&str]) -> bool {
    Command::new(args[0]).args(&args[1..]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// Polls `check` until it holds, for up to 15 s; panics naming `what` otherwise.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let fd = std::fs::File::open(path).unwrap_or_else(|e| panic!("namespace {path}: {e}"));
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("entering {path}: {e}"));
}

/// A network namespace, deleted when dropped. Its name carries this process's id, so
/// [`remove_namespaces`] finds what a crashed run left.
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

    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }

    /// Runs `f` on a thread inside this namespace, with a tokio runtime.
    pub fn run<T: Send + 'static, F, Fut>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
    {
        self.spawn(move || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f()))
            .join()
            .unwrap()
    }

    /// Runs blocking `f` on a new thread inside this namespace.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// Pings `ip`, allowing a few seconds for underlay links and ARP to settle.
    pub fn reaches(&self, ip: &str) -> bool {
        (0..5).any(|_| self.exec(&["ping", "-c", "1", "-W", "1", ip]))
    }

    /// The standard output of a command run inside this namespace (empty when it fails to
    /// start).
    pub fn output(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(["netns", "exec", &self.0]).args(args).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// Gives programs run with `ip netns exec` in this namespace their own resolv.conf
    /// (`ip` bind-mounts `/etc/netns/<name>/resolv.conf`), as a runtime writes the CNI
    /// result's nameservers into a container's.
    pub fn set_resolv_conf(&self, text: &str) {
        let dir = std::path::Path::new("/etc/netns").join(&self.0);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), text).unwrap();
    }

    /// Whether a command run inside this namespace succeeds.
    pub fn exec(&self, args: &[&str]) -> bool {
        let mut full = vec!["ip", "netns", "exec", &self.0];
        full.extend_from_slice(args);
        ok(&full)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(&self.0));
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
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

/// Attaches a namespace to the switch at `10.254.250.<host>`.
pub fn attach(switch: &Netns, ns: &Netns, host: u8) {
    let (a, b) = (format!("u{host}"), format!("p{host}"));
    sh(&["ip", "-n", &ns.0, "link", "add", &a, "type", "veth", "peer", "name", &b, "netns", &switch.0]);
    sh(&["ip", "-n", &switch.0, "link", "set", &b, "master", "br0", "up"]);
    sh(&["ip", "-n", &ns.0, "addr", "add", &format!("10.254.250.{host}/24"), "dev", &a]);
    sh(&["ip", "-n", &ns.0, "link", "set", &a, "up"]);
}

/// Removes every namespace this process created (on Ctrl-C and after a failure).
pub fn remove_namespaces() {
    let marker = format!("-{}-", std::process::id());
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with("c2c-") && name.contains(&marker) {
                let _ = Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }
}

/// Number of routes to remote cells on a cell's VTEP.
pub fn vtep_routes(cell: &Netns, vtep: &str) -> usize {
    let out = Command::new("ip").args(["-n", &cell.0, "route", "show", "dev", vtep]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.contains(" via ")).count()
}
