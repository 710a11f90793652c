//! The control plane of a lab: `policy-server` on SQLite with the UAA and Cloud Controller
//! test doubles, in a namespace of its own on the fabric, the cells' API on
//! `10.254.250.254`. Policies go through the generated client as an admin, as a user's
//! would.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use policy_client::types::{Policies, Policy};

use crate::lab::{Netns, enter};

/// The control plane's underlay address on the fabric.
pub const ADDRESS: &str = "10.254.250.254";

enum Change {
    Create,
    Delete,
    /// Adds or replaces a security group in the Cloud Controller double (the ASG sync
    /// picks it up at its interval).
    PutGroup(Box<testkit::cloud_controller::SecurityGroup>),
}

type Request = (Change, Vec<Policy>, mpsc::Sender<Result<(), String>>);

/// A running control plane; dropping it stops the server (the cells then keep what they
/// have).
pub struct ControlPlane {
    /// The cells' API port on [`ADDRESS`].
    pub port: u16,
    requests: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlPlane {
    /// Starts it inside `ns` (attached to the fabric at [`ADDRESS`]) with a server
    /// certificate from `ca`; its database lives in `dir`. Returns once it listens.
    pub fn start(ns: &Netns, ca: &testkit::pki::TestCa, dir: &Path) -> anyhow::Result<ControlPlane> {
        Self::start_on(ns, ca, dir, 0)
    }

    /// [`ControlPlane::start`] on a given cells' API port (0: any), e.g. to bring a stopped
    /// control plane back where the cells look for it, on the same database.
    pub fn start_on(ns: &Netns, ca: &testkit::pki::TestCa, dir: &Path, port: u16) -> anyhow::Result<ControlPlane> {
        Self::start_with(ns, ca, dir, port, |_| {})
    }

    /// [`ControlPlane::start_on`] with a change to the server's configuration.
    pub fn start_with(
        ns: &Netns,
        ca: &testkit::pki::TestCa,
        dir: &Path,
        port: u16,
        tweak: impl FnOnce(&mut policy_api::config::Config) + Send + 'static,
    ) -> anyhow::Result<ControlPlane> {
        let server_cert = ca.server("policy-server", &[ADDRESS]);
        let path = ns.path();
        let db = format!("sqlite://{}?mode=rwc", dir.join("policy.db").display());
        let (ready_tx, ready_rx) = mpsc::channel::<Result<u16, String>>();
        let (req_tx, req_rx) = mpsc::channel::<Request>();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let cf = match testkit::Cf::start().await {
                    Ok(cf) => cf,
                    Err(e) => return drop(ready_tx.send(Err(format!("UAA and Cloud Controller doubles: {e}")))),
                };
                let mut config = policy_api::dev::config_for_doubles(&cf, &db);
                config.metrics_listen = None;
                config.internal.listen = format!("{ADDRESS}:{port}").parse().unwrap();
                config.internal.lease_expiration_secs = 120;
                config.internal.tls = Some(policy_api::tls::TlsFiles {
                    cert_file: server_cert.cert,
                    key_file: server_cert.key,
                    client_ca_file: Some(server_cert.ca),
                });
                tweak(&mut config);
                let server = match policy_api::Server::start(&config).await {
                    Ok(s) => s,
                    Err(e) => return drop(ready_tx.send(Err(format!("policy-server: {e}")))),
                };
                let admin = policy_client::Client::new_with_token(&server.url(), &cf.uaa.user_token("admin")).unwrap();
                let _ = ready_tx.send(Ok(server.internal_addr.expect("the cells' API listens").port()));
                // Requests come from blocking test code; the loop ends when the handle drops.
                let requests = std::sync::Arc::new(std::sync::Mutex::new(req_rx));
                loop {
                    let rx = requests.clone();
                    let next = tokio::task::spawn_blocking(move || rx.lock().unwrap().recv().ok()).await.unwrap();
                    let Some((change, policies, reply)) = next else { break };
                    let body = Policies { policies };
                    let r = match change {
                        Change::Create => admin.create_policies(&body).await.map(|_| ()),
                        Change::Delete => admin.delete_policies(&body).await.map(|_| ()),
                        Change::PutGroup(group) => {
                            cf.cc.put_security_group(*group);
                            Ok(())
                        }
                    };
                    let _ =
                        reply.send(r.map_err(|e| {
                            policy_client::error_message(&e).map_or_else(|| e.to_string(), str::to_string)
                        }));
                }
                server.shutdown().await;
            });
        });
        let port = ready_rx
            .recv_timeout(Duration::from_secs(120))
            .context("the control plane did not start")?
            .map_err(anyhow::Error::msg)?;
        Ok(ControlPlane { port, requests: Some(req_tx), thread: Some(thread) })
    }

    /// The cells' API URL, as cells reach it over the fabric.
    pub fn url(&self) -> String {
        format!("https://{ADDRESS}:{}", self.port)
    }

    fn ask(&self, change: Change, policies: Vec<Policy>) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel();
        let requests = self.requests.as_ref().context("the control plane stopped")?;
        requests.send((change, policies, tx)).context("the control plane stopped")?;
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

    /// Adds or replaces a security group in Cloud Controller.
    pub fn put_security_group(&self, group: testkit::cloud_controller::SecurityGroup) -> anyhow::Result<()> {
        self.ask(Change::PutGroup(Box::new(group)), Vec::new())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        drop(self.requests.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
