//! The netagent daemon: holds the cell's subnet lease, keeps the overlay converged with the
//! lease table, tells the CNI plugin about the cell, and serves health, reconcile and
//! metrics. Keeps what it has when the control plane is unreachable and retries with
//! backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use policy_client::types::{AcquireRequest, Lease as ApiLease};
use tokio::sync::watch;

use crate::backoff::Backoff;
use crate::cell_state::{self, CellInfo};
use crate::config::{Config, Enforcement};
use crate::enforcement::plan::{CellFacts, HostAccess};
use crate::netlink::{Netlink, converge};
use crate::overlay::{Lease, OverlaySettings, plan};

/// Every cell's underlay address and VTEP address (its subnet's first address): what no
/// container may reach.
fn cell_addresses(leases: &[Lease]) -> std::collections::BTreeSet<std::net::Ipv4Addr> {
    leases.iter().flat_map(|l| [l.underlay_ip, l.subnet]).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot read TLS file {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP client: {0}")]
    Http(String),
    #[error("the control plane refused the lease request: {0}")]
    Lease(String),
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error(transparent)]
    State(#[from] cell_state::StateError),
    #[error("cannot listen on {0}: {1}")]
    Listen(std::net::SocketAddr, std::io::Error),
}

/// The cells' API client with the cell's certificate (mTLS).
pub fn control_plane_client(config: &Config) -> Result<policy_client::Client, AgentError> {
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| AgentError::Tls(p.display().to_string(), e));
    let mut identity = read(&config.client_cert_file)?;
    identity.extend(read(&config.client_key_file)?);
    let ca = read(&config.ca_file)?;
    // The foundation's own CA only: a public CA must not be able to vouch for a control plane.
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).map_err(|e| AgentError::Http(e.to_string()))?)
        .identity(reqwest::Identity::from_pem(&identity).map_err(|e| AgentError::Http(e.to_string()))?)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| AgentError::Http(e.to_string()))?;
    Ok(policy_client::Client::new_with_client(&config.control_plane_url, http))
}

/// The VTEP's MAC, as silk derives it from the subnet's first address.
fn vtep_mac(subnet: &str) -> String {
    let ip: std::net::Ipv4Addr =
        subnet.split('/').next().and_then(|a| a.parse().ok()).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
    let o = ip.octets();
    format!("ee:ee:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn lease_of(l: &ApiLease) -> Option<Lease> {
    Lease::parse(&l.underlay_ip, &l.overlay_subnet)
}

struct Shared {
    converged: AtomicBool,
    /// Woken when containers come or go, so their internal routes are registered at once.
    routes_changed: Arc<tokio::sync::Notify>,
    enforcement: Enforcement,
    telemetry: Arc<crate::telemetry::Telemetry>,
    policies: Arc<crate::sync::PolicySync>,
}

/// A running agent.
pub struct Agent {
    pub lease: ApiLease,
    pub listen: std::net::SocketAddr,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// Acquires (or gets back) the cell's lease, creates the VTEP, writes the cell state,
    /// then keeps converging in the background.
    pub async fn start(config: Config) -> Result<Agent, AgentError> {
        let client = control_plane_client(&config)?;
        let (network, prefix) = config.overlay().unwrap_or((std::net::Ipv4Addr::new(10, 255, 0, 0), 16));
        let settings = OverlaySettings {
            vtep_name: config.vtep_name.clone(),
            vni: config.vni,
            port: config.vxlan_port,
            network,
            network_prefix: prefix,
        };
        if config.enforcement == Enforcement::None {
            tracing::warn!(
                "enforcement = \"none\": no network policy is enforced on this cell; every container reaches every other"
            );
        }
        // A restart while the control plane is away carries on with the lease the cell
        // already had (its containers are on that subnet); renewals re-create it there.
        let saved = cell_state::read_cell(&config.state_dir).ok().flatten().map(|cell| ApiLease {
            underlay_ip: config.underlay_ip.to_string(),
            overlay_hardware_addr: vtep_mac(&cell.subnet),
            overlay_subnet: cell.subnet,
        });
        let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
        let lease = loop {
            let req = AcquireRequest { underlay_ip: config.underlay_ip.to_string(), single_overlay_ip: None };
            match client.acquire_lease(&req).await {
                Ok(l) => break l.into_inner(),
                Err(e) if e.status().is_some_and(|s| s.as_u16() == 409) => {
                    return Err(AgentError::Lease(policy_client::error_message(&e).unwrap_or("conflict").to_string()));
                }
                Err(e) => {
                    if let Some(saved) = saved.clone().filter(|l| lease_of(l).is_some()) {
                        tracing::warn!(error = %e, overlay_subnet = %saved.overlay_subnet, "cannot reach the control plane; carrying on with the saved lease");
                        break saved;
                    }
                    let wait = retry.next_wait();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot reach the control plane to acquire a lease");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        let local = lease_of(&lease).ok_or_else(|| AgentError::Lease(format!("unusable lease {lease:?}")))?;
        tracing::info!(overlay_subnet = %lease.overlay_subnet, "lease acquired");
        let nl = Netlink::connect()?;
        let first = plan(&settings, &local, std::slice::from_ref(&local));
        nl.ensure_vtep(&first.vtep).await?;
        let mtu = nl.link_by_name(&config.vtep_name).await?.and_then(|l| {
            l.attributes.iter().find_map(|a| match a {
                netlink_packet_route::link::LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
        });
        let discovery = &config.discovery;
        let dns_servers = if discovery.enabled { vec![discovery.listen.to_string()] } else { Vec::new() };
        cell_state::write_cell(
            &config.state_dir,
            &CellInfo { subnet: lease.overlay_subnet.clone(), mtu: mtu.unwrap_or(1450), dns_servers },
        )?;

        let telemetry = Arc::new(crate::telemetry::Telemetry::new());
        telemetry.enforcement_disabled.set(if config.enforcement == Enforcement::None { 1.0 } else { 0.0 });
        let backend = crate::enforcement::backend(config.enforcement);
        let facts = CellFacts {
            cells: cell_addresses(std::slice::from_ref(&local)),
            host: HostAccess {
                dns: config.container_dns_servers.iter().copied().collect(),
                tcp_ports: config.container_host_tcp_ports.iter().copied().collect(),
            },
            edge: config.edge(config.traffic_logs.logging()),
            groups: Vec::new(),
            log_group: config.traffic_logs.nflog_group,
        };
        let policies =
            crate::sync::PolicySync::new(client.clone(), config.state_dir.clone(), backend, telemetry.clone(), facts);
        let routes_changed = Arc::new(tokio::sync::Notify::new());
        let shared = Arc::new(Shared {
            converged: AtomicBool::new(false),
            telemetry: telemetry.clone(),
            policies: policies.clone(),
            enforcement: config.enforcement,
            routes_changed: routes_changed.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let mut tasks = Vec::new();
        if discovery.enabled {
            tasks.extend(start_discovery(&config, &client, &nl, telemetry.clone(), routes_changed, &stopped).await);
        }
        // iptables on current distributions is iptables-nft: its commits are nf_tables
        // commits too, so the same notifications repair either backend within moments.
        // (With iptables-legacy nothing is heard, and drift waits for a quiet round.)
        if config.enforcement != Enforcement::None {
            match policies.clone().watch_kernel(stopped.clone()) {
                Ok(task) => tasks.push(task),
                Err(e) => tracing::warn!(error = %e, "cannot hear nftables changes; drift is repaired on quiet rounds"),
            }
        }
        tasks.push(tokio::spawn(policies.clone().run(stopped.clone())));
        if config.enforcement != Enforcement::None {
            tasks.push(tokio::spawn(crate::asg_sync::run(policies.clone(), stopped.clone())));
            let store = crate::containers::ContainerStore::new(config.state_dir.join("containers.json"));
            let done = Arc::new(AtomicBool::new(false));
            match crate::traffic_log::spawn(
                &config.traffic_logs,
                store,
                policies.clone(),
                telemetry.clone(),
                done.clone(),
            ) {
                Ok(_thread) => {
                    let mut stopped = stopped.clone();
                    tasks.push(tokio::spawn(async move {
                        let _ = stopped.changed().await;
                        done.store(true, Ordering::Relaxed);
                    }));
                }
                Err(e) => tracing::warn!(error = %e, "traffic logs are not available"),
            }
        }

        // The converge loop.
        {
            let shared = shared.clone();
            let client = client.clone();
            let lease = lease.clone();
            let mut stopped = stopped.clone();
            let interval = Duration::from_millis(config.lease_poll_interval_ms);
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Err(e) = cycle(&client, &nl, &settings, &local, &lease, &shared).await {
                        tracing::warn!(error = %e, "overlay cycle failed; keeping the current state");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = stopped.changed() => break,
                    }
                }
            }));
        }

        // Health, reconcile, metrics.
        let listener =
            tokio::net::TcpListener::bind(config.listen).await.map_err(|e| AgentError::Listen(config.listen, e))?;
        let listen = listener.local_addr().map_err(|e| AgentError::Listen(config.listen, e))?;
        let router = Router::new()
            .route("/health", get(health))
            .route("/reconcile", post(reconcile))
            .route("/metrics", get(metrics))
            .route("/traffic-logs", get(traffic_logs).put(set_traffic_logs))
            .with_state(shared.clone());
        let limits = crate::local_api::Limits::default();
        tasks.push(tokio::spawn(crate::local_api::serve(listener, router, limits, stopped.clone())));
        Ok(Agent { lease, listen, stop, tasks })
    }

    /// Stops the loops. With `release`, gives the lease back and removes the VTEP (the cell
    /// leaves the overlay); without, everything stays as it is (a restart keeps traffic).
    pub async fn stop(self, config: &Config, release: bool) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if release {
            if let Ok(client) = control_plane_client(config) {
                let req = policy_client::types::ReleaseRequest { underlay_ip: config.underlay_ip.to_string() };
                let _ = client.release_lease(&req).await;
            }
            if let Ok(nl) = Netlink::connect() {
                let _ = nl.delete_link(&config.vtep_name).await;
            }
        }
    }
}

/// Registration, the table follower and the DNS responder. A responder that cannot start
/// (another DNS server holds the address) is logged and left out; the rest runs.
async fn start_discovery(
    config: &Config,
    client: &policy_client::Client,
    nl: &Netlink,
    telemetry: Arc<crate::telemetry::Telemetry>,
    routes_changed: Arc<tokio::sync::Notify>,
    stopped: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    use crate::discovery::{follower, registrar, responder};
    let d = &config.discovery;
    let mut tasks = Vec::new();
    let store = crate::containers::ContainerStore::new(config.state_dir.join("containers.json"));
    let cell = config.underlay_ip.to_string();
    tasks.push(tokio::spawn(registrar::run(
        client.clone(),
        cell,
        store,
        d.registration_ttl_secs,
        routes_changed,
        stopped.clone(),
    )));
    let table: responder::SharedTable = Default::default();
    tasks.push(tokio::spawn(follower::run(
        client.clone(),
        d.internal_domains.clone(),
        table.clone(),
        telemetry,
        stopped.clone(),
    )));
    if let Err(e) = nl.ensure_local_address(d.listen).await {
        tracing::error!(error = %e, address = %d.listen, "cannot give the cell the DNS responder's address; containers get no apps.internal DNS");
        return tasks;
    }
    let server = match responder::Responder::new(d, table) {
        Ok(r) => r.serve(d).await,
        Err(e) => Err(e),
    };
    match server {
        Ok(mut server) => {
            tracing::info!(address = %d.listen, port = d.port, "DNS responder listening");
            let mut stopped = stopped.clone();
            tasks.push(tokio::spawn(async move {
                let _ = stopped.changed().await;
                let _ = server.shutdown_gracefully().await;
            }));
        }
        Err(e) => tracing::error!(error = %e, "the DNS responder did not start; containers get no apps.internal DNS"),
    }
    tasks
}

/// Renews the lease, reads the lease table, converges the VTEP.
async fn cycle(
    client: &policy_client::Client,
    nl: &Netlink,
    settings: &OverlaySettings,
    local: &Lease,
    lease: &ApiLease,
    shared: &Shared,
) -> Result<(), AgentError> {
    if let Err(e) = client.renew_lease(lease).await {
        shared.telemetry.renew_failures.increment(1);
        return Err(AgentError::Lease(e.to_string()));
    }
    // The control plane answers again: a policy watch waiting out its back-off resumes now.
    shared.policies.resume.notify_waiters();
    let leases = client.list_leases().await.map_err(|e| AgentError::Lease(e.to_string()))?.into_inner().leases;
    let leases: Vec<Lease> = leases.iter().filter_map(lease_of).collect();
    shared.policies.set_cells(cell_addresses(&leases)).await;
    let desired = plan(settings, local, &leases);
    let (added, removed) = converge(nl, &desired.vtep, &desired.remotes).await?;
    if added + removed > 0 {
        tracing::info!(added, removed, remote_cells = desired.remotes.len(), "overlay converged");
    }
    shared.telemetry.converges.increment(1);
    shared.converged.store(true, Ordering::Relaxed);
    Ok(())
}

/// 200 when the overlay is converged and the container store readable; 503 otherwise.
/// The body says which, and which enforcement runs (`none` is reported, never silent).
async fn health(State(shared): State<Arc<Shared>>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let converged = shared.converged.load(Ordering::Relaxed);
    let degraded = shared.policies.degraded();
    let status = if converged && !degraded { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = serde_json::json!({
        "overlay_converged": converged,
        "container_store_readable": !degraded,
        "enforcement": shared.enforcement.as_str(),
        "policies_enforced": shared.enforcement != Enforcement::None,
    });
    (status, axum::Json(body))
}

/// The CNI plugin's request: enforce policies for the containers as they are now, and
/// answer when they are in force. (The overlay does not change when a container comes or
/// goes: its cell's route is already there.)
/// Answers 503 when the containers' rules are not in the kernel, so the plugin fails the
/// ADD and rolls it back rather than start an unguarded container.
async fn reconcile(State(shared): State<Arc<Shared>>) -> StatusCode {
    let started = std::time::Instant::now();
    let enforced = shared.policies.reconcile_once().await;
    shared.routes_changed.notify_one();
    tracing::debug!(took_ms = started.elapsed().as_secs_f64() * 1e3, enforced, "reconciled for the CNI plugin");
    if enforced { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

/// What is logged now (`GET /traffic-logs`).
async fn traffic_logs(State(shared): State<Arc<Shared>>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match shared.policies.logging().await {
        Some(l) => axum::Json(l).into_response(),
        None => (StatusCode::CONFLICT, "enforcement is off: nothing is logged\n").into_response(),
    }
}

/// Switches logging at run time (`PUT /traffic-logs` with `{"c2c_accepted": true,
/// "egress_accepted": false, "denied_per_sec": 10}`); the rules change at once.
async fn set_traffic_logs(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> (StatusCode, String) {
    let logging: crate::enforcement::plan::Logging = match serde_json::from_slice(&body) {
        Ok(l) => l,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected {{\"c2c_accepted\": bool, \"egress_accepted\": bool, \"denied_per_sec\": n}}: {e}\n"),
            );
        }
    };
    if shared.policies.logging().await.is_none() {
        return (StatusCode::CONFLICT, "enforcement is off: nothing is logged\n".into());
    }
    if shared.policies.set_logging(logging).await {
        (StatusCode::OK, serde_json::to_string(&logging).unwrap_or_default())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the kernel refused the change; see the agent's log\n".into())
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> String {
    shared.telemetry.render()
}
