//! The whole system in throwaway namespaces, for the demo and the system benchmark: a
//! control plane (policy-server on SQLite with the UAA and Cloud Controller test doubles)
//! answering policy requests, cells running netagent, and containers wired by the CNI
//! plugin's own code.

use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use netagent::cni::config::{Command, Env, NetConf};
use netagent::lab::Netns;
use policy_client::types::{Policies, Policy};

/// A thread inside a namespace running something until it is told to stop.
pub struct Background {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Background {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn enter(ns_path: &str) {
    let fd = std::fs::File::open(ns_path).expect("namespace exists");
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("enter namespace");
}

enum Change {
    Create,
    Delete,
}

type Request = (Change, Vec<Policy>, mpsc::Sender<Result<(), String>>);

/// The control plane, listening for cells on 10.254.250.254 inside its namespace.
pub struct ControlPlane {
    /// The cells' API port.
    pub port: u16,
    requests: mpsc::Sender<Request>,
    _thread: Background,
}

impl ControlPlane {
    pub fn start(ctl: &Netns, ca: &testkit::pki::TestCa, dir: &std::path::Path) -> anyhow::Result<ControlPlane> {
        let server_cert = ca.server("policy-server", &["10.254.250.254"]);
        let path = ctl.path();
        let db = format!("sqlite://{}/policy.db?mode=rwc", dir.display());
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let (req_tx, req_rx) = mpsc::channel::<Request>();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let cf = testkit::Cf::start().await.expect("UAA and Cloud Controller doubles");
                let mut config = policy_api::dev::config_for_doubles(&cf, &db);
                config.metrics_listen = None;
                config.internal.listen = "10.254.250.254:0".parse().unwrap();
                config.internal.tls = Some(policy_api::tls::TlsFiles {
                    cert_file: server_cert.cert,
                    key_file: server_cert.key,
                    client_ca_file: Some(server_cert.ca),
                });
                let server = policy_api::Server::start(&config).await.expect("policy-server starts");
                let admin = policy_client::Client::new_with_token(&server.url(), &cf.uaa.user_token("admin")).unwrap();
                ready_tx.send(server.internal_addr.unwrap().port()).unwrap();
                let requests = std::sync::Arc::new(std::sync::Mutex::new(req_rx));
                loop {
                    let rx = requests.clone();
                    let next = tokio::task::spawn_blocking(move || rx.lock().unwrap().recv().ok()).await.unwrap();
                    let Some((change, policies, reply)) = next else { break };
                    let body = Policies { policies };
                    let r = match change {
                        Change::Create => admin.create_policies(&body).await.map(|_| ()),
                        Change::Delete => admin.delete_policies(&body).await.map(|_| ()),
                    };
                    let _ =
                        reply.send(r.map_err(|e| {
                            policy_client::error_message(&e).map_or_else(|| e.to_string(), str::to_string)
                        }));
                }
                let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                server.shutdown().await;
            });
        });
        let port = ready_rx.recv_timeout(Duration::from_secs(60)).context("the control plane did not start")?;
        Ok(ControlPlane { port, requests: req_tx, _thread: Background { stop: Some(stop_tx), thread: Some(thread) } })
    }

    fn ask(&self, change: Change, policies: Vec<Policy>) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel();
        self.requests.send((change, policies, tx)).context("the control plane stopped")?;
        rx.recv_timeout(Duration::from_secs(60))
            .context("the control plane did not answer")?
            .map_err(anyhow::Error::msg)
    }

    /// Creates policies through the generated client, as an admin; returns when the API
    /// has answered.
    pub fn create(&self, policies: Vec<Policy>) -> anyhow::Result<()> {
        self.ask(Change::Create, policies)
    }

    pub fn delete(&self, policies: Vec<Policy>) -> anyhow::Result<()> {
        self.ask(Change::Delete, policies)
    }
}

/// netagent running for lab cell `i` in its namespace, on threads named `netagent-<i>` (so
/// its CPU time can be told apart).
pub struct CellAgent {
    /// Where the CNI plugin reaches it.
    pub url: String,
    pub state: std::path::PathBuf,
    pub thread_name: String,
    _thread: Background,
}

impl CellAgent {
    pub fn start(
        cell: &Netns,
        i: u8,
        port: u16,
        ca: &testkit::pki::TestCa,
        state: &std::path::Path,
        enforcement: &str,
        lease_poll_interval_ms: u64,
    ) -> anyhow::Result<CellAgent> {
        let cert = ca.client(&format!("cell-{i}"));
        let cert = netagent::lab::CellCert { cert: cert.cert, key: cert.key, ca: cert.ca };
        let config = netagent::lab::cell_config(i, port, cert, state, enforcement, lease_poll_interval_ms);
        config.validate()?;
        let path = cell.path();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread_name = format!("netagent-{i}");
        let name = thread_name.clone();
        let thread = std::thread::Builder::new().name(thread_name.clone()).spawn(move || {
            enter(&path);
            let rt = tokio::runtime::Builder::new_current_thread().thread_name(name).enable_all().build().unwrap();
            rt.block_on(async move {
                match netagent::agent::Agent::start(config.clone()).await {
                    Ok(agent) => {
                        ready_tx.send(Ok(format!("http://{}", agent.listen))).unwrap();
                        let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                        agent.stop(&config, true).await;
                    }
                    Err(e) => ready_tx.send(Err(e.to_string())).unwrap(),
                }
            });
        })?;
        let url = ready_rx
            .recv_timeout(Duration::from_secs(60))
            .context("netagent did not start")?
            .map_err(anyhow::Error::msg)?;
        Ok(CellAgent {
            url,
            state: state.to_path_buf(),
            thread_name,
            _thread: Background { stop: Some(stop_tx), thread: Some(thread) },
        })
    }

    fn cni(&self, command: Command, name: &str, ctr: &Netns, app: &str) -> (Env, NetConf) {
        let env = Env {
            command,
            container_id: name.to_string(),
            netns: ctr.path(),
            ifname: "eth0".into(),
            args: [("app_id".to_string(), app.to_string())].into_iter().collect(),
        };
        let conf_json = format!(
            r#"{{"cniVersion":"1.0.0","name":"c2c","type":"c2c-cni","stateDir":"{}","agent":"{}"}}"#,
            self.state.display(),
            self.url
        );
        let conf = NetConf::parse(conf_json.as_bytes(), &env).expect("a valid network configuration");
        (env, conf)
    }

    /// CNI ADD of a container of `app` in `ctr`, run inside the cell's namespace; returns
    /// its address.
    pub fn add(&self, cell: &Netns, name: &str, ctr: &Netns, app: &str) -> anyhow::Result<Ipv4Addr> {
        let (env, conf) = self.cni(Command::Add, name, ctr, app);
        let result = cell.run(move || async move { netagent::cni::plugin::add(&env, &conf).await });
        let result = result.map_err(|e| anyhow::anyhow!("CNI ADD for {name}: {}", e.to_json()))?;
        let v: serde_json::Value = serde_json::from_str(&result)?;
        Ok(v["ips"][0]["address"].as_str().unwrap_or("").trim_end_matches("/32").parse()?)
    }

    /// A value from the agent's `/metrics` (the first sample whose line starts with `name`).
    pub fn metric(&self, cell: &Netns, name: &str) -> Option<f64> {
        let url = format!("{}/metrics", self.url);
        let text = cell.run(move || async move { reqwest::get(url).await.ok()?.text().await.ok() })?;
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.rsplit(' ').next()?.parse().ok()
    }

    /// CNI DEL of that container.
    pub fn del(&self, cell: &Netns, name: &str, ctr: &Netns, app: &str) -> anyhow::Result<()> {
        let (env, conf) = self.cni(Command::Del, name, ctr, app);
        let result = cell.run(move || async move { netagent::cni::plugin::del(&env, &conf).await });
        result.map_err(|e| anyhow::anyhow!("CNI DEL for {name}: {}", e.to_json()))
    }
}

/// CPU time (user + system) used so far by this process's threads whose name starts with
/// `name` (an agent's runtime and the threads it starts).
pub fn thread_cpu(name: &str) -> Duration {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as f64;
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        // `pid (comm) state ...`: comm may hold spaces, so split after its closing parenthesis.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with(name) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of the whole line (11 and 12 after comm).
        total += fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Duration::from_secs_f64(total as f64 / ticks)
}

/// A directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes every namespace this process created (used on Ctrl-C and after a failure).
pub fn remove_namespaces() {
    let pid = std::process::id();
    if let Ok(out) = std::process::Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with("c2c-") && name.contains(&format!("-{pid}-")) {
                let _ = std::process::Command::new("ip").args(["netns", "del", name]).output();
            }
        }
    }
}

/// On Ctrl-C or SIGTERM: removes what this process built (namespaces, and `dirs`), then
/// exits.
pub fn clean_up_on_signal(dirs: Vec<std::path::PathBuf>) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        eprintln!("\ninterrupted: cleaning up");
        remove_namespaces();
        for dir in &dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        std::process::exit(130);
    });
}
