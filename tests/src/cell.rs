//! A cell of the lab: netagent running in the cell's namespace (on threads named
//! `netagent-<i>`, so its CPU time can be told apart), and containers added and removed
//! through the CNI plugin.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use netagent::config::{Config, Enforcement};

use crate::cni::{Invocation, Outcome};
use crate::lab::{Netns, enter};

/// How a cell's containers are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cni {
    /// The real `c2c-cni` binary of this build, as a runtime runs it (the tests).
    Binary,
    /// The plugin's own code called in-process (the demo, which `cargo run` builds alone).
    InProcess,
}

/// How a lab cell runs.
#[derive(Debug, Clone)]
pub struct CellOptions {
    pub enforcement: Enforcement,
    /// How often the agent reads the lease table (the default is 5 s; labs want cells to
    /// find each other at once).
    pub lease_poll_interval_ms: u64,
    /// Whether stopping the agent gives its lease back (the cell leaves), or keeps
    /// everything (a restart).
    pub release_on_stop: bool,
    pub cni: Cni,
    /// apps.internal discovery. Labs refuse names outside the internal domains: the
    /// machine's own resolvers are outside the lab.
    pub discovery: netagent::discovery::DiscoveryConfig,
}

impl Default for CellOptions {
    fn default() -> Self {
        CellOptions {
            enforcement: Enforcement::Nftables,
            lease_poll_interval_ms: 200,
            release_on_stop: false,
            cni: Cni::Binary,
            discovery: netagent::discovery::DiscoveryConfig {
                forward: netagent::discovery::Forward::Refuse,
                ..Default::default()
            },
        }
    }
}

/// netagent's configuration for lab cell `i`: underlay `10.254.250.i`, the control plane at
/// `control_plane_url`, local endpoints on an ephemeral loopback port.
pub fn config(
    i: u8,
    control_plane_url: &str,
    cert: testkit::pki::CertFiles,
    state_dir: &Path,
    options: &CellOptions,
) -> Config {
    Config {
        control_plane_url: control_plane_url.to_string(),
        client_cert_file: cert.cert,
        client_key_file: cert.key,
        ca_file: cert.ca,
        underlay_ip: Ipv4Addr::new(10, 254, 250, i),
        vtep_name: "c2c-vtep".into(),
        state_dir: state_dir.to_path_buf(),
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        lease_poll_interval_ms: options.lease_poll_interval_ms,
        enforcement: options.enforcement,
        discovery: options.discovery.clone(),
        traffic_logs: netagent::config::TrafficLogs { file: state_dir.join("traffic.log"), ..Default::default() },
        ..Config::default()
    }
}

/// netagent running for a lab cell; dropping it stops the agent.
pub struct CellAgent {
    /// Where the CNI plugin reaches it.
    pub url: String,
    /// The cell's overlay subnet.
    pub subnet: String,
    pub state: PathBuf,
    pub thread_name: String,
    cni: Cni,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CellAgent {
    /// Starts netagent for cell `i` (at `10.254.250.i` on the fabric) in `cell`, with a
    /// certificate from `ca`; returns once it holds its lease and serves the CNI plugin.
    pub fn start(
        cell: &Netns,
        i: u8,
        control_plane_url: &str,
        ca: &testkit::pki::TestCa,
        state: &Path,
        options: &CellOptions,
    ) -> anyhow::Result<CellAgent> {
        // The certificate names the cell's underlay IP, as the cells' API requires by default.
        let cert = ca.client_for(&format!("cell-{i}"), &[&format!("10.254.250.{i}")]);
        let config = config(i, control_plane_url, cert, state, options);
        config.validate()?;
        let path = cell.path();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let thread_name = format!("netagent-{i}");
        let name = thread_name.clone();
        let release = options.release_on_stop;
        let thread = std::thread::Builder::new().name(thread_name.clone()).spawn(move || {
            enter(&path);
            let rt = tokio::runtime::Builder::new_current_thread().thread_name(name).enable_all().build().unwrap();
            rt.block_on(async move {
                match netagent::agent::Agent::start(config.clone()).await {
                    Ok(agent) => {
                        let _ =
                            ready_tx.send(Ok((format!("http://{}", agent.listen), agent.lease.overlay_subnet.clone())));
                        let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
                        agent.stop(&config, release).await;
                    }
                    Err(e) => drop(ready_tx.send(Err(e.to_string()))),
                }
            });
        })?;
        let (url, subnet) = ready_rx
            .recv_timeout(Duration::from_secs(120))
            .context("netagent did not start")?
            .map_err(anyhow::Error::msg)?;
        Ok(CellAgent {
            url,
            subnet,
            state: state.to_path_buf(),
            thread_name,
            cni: options.cni,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// This cell's CNI network configuration.
    pub fn conf(&self) -> String {
        crate::cni::conf(&self.state, &self.url)
    }

    fn plugin(&self, cell: &Netns, command: &'static str, name: &str, ctr: &Netns, app: &str) -> Outcome {
        self.plugin_with(cell, command, name, ctr, &format!("app_id={app}"))
    }

    fn plugin_with(&self, cell: &Netns, command: &'static str, name: &str, ctr: &Netns, args: &str) -> Outcome {
        let (conf, netns) = (self.conf(), ctr.path());
        let call = Invocation { command, container: name, netns: &netns, args, conf: &conf };
        match self.cni {
            Cni::Binary => crate::cni::run(&crate::cni::c2c_cni(), cell, &call),
            Cni::InProcess => in_process(cell, &call),
        }
    }

    /// CNI ADD of a container of `app` in `ctr`; returns its address.
    pub fn add(&self, cell: &Netns, name: &str, ctr: &Netns, app: &str) -> anyhow::Result<Ipv4Addr> {
        let out = self.plugin(cell, "ADD", name, ctr, app);
        anyhow::ensure!(out.code == 0, "CNI ADD for {name}: {}", out.stdout);
        let v = out.json();
        Ok(v["ips"][0]["address"].as_str().unwrap_or("").trim_end_matches("/32").parse()?)
    }

    /// CNI ADD of a container of `app` with internal routes (comma-separated hostnames);
    /// returns the CNI result.
    pub fn add_routed(&self, cell: &Netns, name: &str, ctr: &Netns, app: &str, routes: &str) -> serde_json::Value {
        let out = self.plugin_with(cell, "ADD", name, ctr, &format!("app_id={app};internal_routes={routes}"));
        assert_eq!(out.code, 0, "CNI ADD for {name}: {}", out.stdout);
        out.json()
    }

    /// CNI DEL of that container.
    pub fn del(&self, cell: &Netns, name: &str, ctr: &Netns, app: &str) -> anyhow::Result<()> {
        let out = self.plugin(cell, "DEL", name, ctr, app);
        anyhow::ensure!(out.code == 0, "CNI DEL for {name}: {}", out.stdout);
        Ok(())
    }

    /// The agent's `/metrics` text.
    pub fn metrics(&self, cell: &Netns) -> String {
        let url = format!("{}/metrics", self.url);
        cell.run(move || async move {
            match reqwest::get(url).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        })
    }

    /// `PUT` of a JSON body to the agent's local API; its status and body.
    pub fn put(&self, cell: &Netns, path: &str, body: serde_json::Value) -> (u16, String) {
        let url = format!("{}{path}", self.url);
        cell.run(move || async move {
            let r = reqwest::Client::new().put(url).json(&body).send().await.expect("the local API answers");
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        })
    }

    /// The cell's traffic log, one JSON value per line.
    pub fn traffic_log(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.state.join("traffic.log")).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).expect("each line is JSON")).collect()
    }

    /// A value from the agent's `/metrics`: the first sample whose line starts with `name`
    /// followed by a space or `{`.
    pub fn metric(&self, cell: &Netns, name: &str) -> Option<f64> {
        sample(&self.metrics(cell), name)
    }
}

impl Drop for CellAgent {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The first sample named `name` (exactly, or with labels when `name` holds them) in a
/// Prometheus text answer.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    let line = text.lines().find(|l| {
        l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || (!name.contains('{') && rest.starts_with('{')))
    })?;
    line.rsplit(' ').next()?.parse().ok()
}

/// The plugin's ADD/DEL run in-process inside the cell's namespace.
fn in_process(cell: &Netns, call: &Invocation) -> Outcome {
    use netagent::cni::config::{Command, Env, NetConf};
    let command = match call.command {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        other => panic!("in-process CNI runs ADD and DEL, not {other}"),
    };
    let env = Env {
        command,
        container_id: call.container.to_string(),
        netns: call.netns.to_string(),
        ifname: "eth0".into(),
        args: call.args.split(';').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect(),
    };
    let conf = match NetConf::parse(call.conf.as_bytes(), &env) {
        Ok(c) => c,
        Err(e) => return Outcome { code: 1, stdout: e.to_json() },
    };
    let result = cell.run(move || async move {
        match command {
            Command::Add => netagent::cni::plugin::add(&env, &conf).await,
            _ => netagent::cni::plugin::del(&env, &conf).await.map(|()| String::new()),
        }
    });
    match result {
        Ok(stdout) => Outcome { code: 0, stdout },
        Err(e) => Outcome { code: 1, stdout: e.to_json() },
    }
}
