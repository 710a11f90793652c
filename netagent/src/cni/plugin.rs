//! The CNI commands themselves, as a library: the `c2c-cni` binary is a thin wrapper, and
//! the demo wires containers through the very same code.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::config::{Command, Env, NetConf};
use super::error::{CniError, Code};
use super::{result, version_info};
use crate::cell_state::{self, CellInfo};
use crate::containers::{Container, ContainerStore};
use crate::ipam::IpamError;
use crate::netlink::Netlink;

fn io_error(msg: &str, e: impl std::fmt::Display) -> CniError {
    CniError::new(Code::Io, msg, e.to_string())
}

fn state_error(e: cell_state::StateError) -> CniError {
    match e {
        cell_state::StateError::Ipam(IpamError::Exhausted(s)) => {
            CniError::new(Code::AddressExhausted, "no address left on this cell", s)
        }
        other => io_error("cell state", other),
    }
}

fn cell(state_dir: &std::path::Path) -> Result<CellInfo, CniError> {
    cell_state::read_cell(state_dir).map_err(state_error)?.ok_or_else(|| {
        CniError::new(
            Code::TryAgainLater,
            "the cell is not on the overlay yet",
            format!("{} is missing: is netagent running?", cell_state::cell_file(state_dir).display()),
        )
    })
}

/// Asks netagent to reconcile now and waits for it (bounded), so policies for the new
/// container are in place when the runtime starts it.
async fn reconcile(agent: &str) -> Result<(), CniError> {
    if agent.is_empty() {
        return Ok(());
    }
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| CniError::new(Code::Agent, "cannot reach netagent", e.to_string()))?;
    let resp = client
        .post(format!("{}/reconcile", agent.trim_end_matches('/')))
        .send()
        .await
        .map_err(|e| CniError::new(Code::Agent, "cannot reach netagent", e.to_string()))?;
    if !resp.status().is_success() {
        return Err(CniError::new(Code::Agent, "netagent could not reconcile", format!("answered {}", resp.status())));
    }
    Ok(())
}

pub async fn add(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    let state_dir = PathBuf::from(&conf.state_dir);
    let info = cell(&state_dir)?;
    let ip: Ipv4Addr = cell_state::with_allocations(&state_dir, &info.subnet, |a| a.allocate(&env.container_id))
        .map_err(state_error)?;
    let mtu = if conf.mtu > 0 { conf.mtu } else { info.mtu };
    let rollback = |state_dir: &PathBuf| {
        let _ = cell_state::with_allocations(state_dir, &info.subnet, |a| Ok(a.release(&env.container_id)));
    };
    let nl = Netlink::connect().map_err(|e| io_error("netlink", e))?;
    if let Err(e) = crate::container_net::add(&nl, &env.netns, &env.ifname, ip, mtu).await {
        rollback(&state_dir);
        return Err(io_error("wiring the container failed", e));
    }
    let store = ContainerStore::new(state_dir.join("containers.json"));
    let record = Container {
        handle: env.container_id.clone(),
        ip: ip.to_string(),
        metadata: Some(conf.metadata.clone()),
        port_mappings: conf.port_mappings.iter().map(|m| (m.host_port, m.container_port)).collect(),
        net_out_rules: conf.net_out_rules.clone(),
    };
    let undo = |e: CniError| async {
        let _ = crate::container_net::del(&nl, &env.netns, &env.ifname, Some(ip)).await;
        let _ = store.remove(&env.container_id);
        rollback(&state_dir);
        e
    };
    if let Err(e) = store.add(record) {
        let e = match e {
            taken @ crate::containers::StoreError::PortTaken { .. } => {
                CniError::new(Code::InvalidConfig, "invalid network configuration", taken.to_string())
            }
            e => io_error("container store", e),
        };
        return Err(undo(e).await);
    }
    if let Err(e) = reconcile(&conf.agent).await {
        return Err(undo(e).await);
    }
    let out = result::for_container(&conf.cni_version, ip, &env.ifname, &env.netns, &info.dns_servers);
    Ok(serde_json::to_string(&out).expect("results serialise"))
}

pub async fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let state_dir = PathBuf::from(&conf.state_dir);
    let store = ContainerStore::new(state_dir.join("containers.json"));
    let removed = store.remove(&env.container_id).map_err(|e| io_error("container store", e))?;
    let mut ip = removed.and_then(|c| c.ip.parse::<Ipv4Addr>().ok());
    if let Some(info) = cell_state::read_cell(&state_dir).map_err(state_error)? {
        let released = cell_state::with_allocations(&state_dir, &info.subnet, |a| Ok(a.release(&env.container_id)))
            .map_err(state_error)?;
        ip = ip.or(released);
    }
    let nl = Netlink::connect().map_err(|e| io_error("netlink", e))?;
    crate::container_net::del(&nl, &env.netns, &env.ifname, ip)
        .await
        .map_err(|e| io_error("unwiring the container failed", e))?;
    reconcile(&conf.agent).await.or(Ok(()))
}

pub fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let store = ContainerStore::new(PathBuf::from(&conf.state_dir).join("containers.json"));
    let all = store.all().map_err(|e| io_error("container store", e))?;
    let container = all.get(&env.container_id).ok_or_else(|| {
        CniError::new(
            Code::UnknownContainer,
            "unknown container",
            format!("{} is not in the container store", env.container_id),
        )
    })?;
    let ip: Ipv4Addr = container.ip.parse().map_err(|e| io_error("container store", e))?;
    match crate::container_net::check(&env.netns, &env.ifname, ip) {
        Ok(true) => Ok(()),
        Ok(false) => Err(CniError::new(
            Code::Agent,
            "container interface is missing",
            format!("{} has no {ip} on {}", env.netns, env.ifname),
        )),
        Err(e) => Err(io_error("checking the container", e)),
    }
}

/// Runs the command the environment names, reading the configuration from stdin.
pub async fn run() -> Result<Option<String>, CniError> {
    let env = Env::from_vars(|k| std::env::var(k).ok())?;
    if env.command == Command::Version {
        return Ok(Some(version_info().to_string()));
    }
    let mut stdin = Vec::new();
    std::io::stdin().read_to_end(&mut stdin).map_err(|e| io_error("reading stdin", e))?;
    let conf = NetConf::parse(&stdin, &env)?;
    match env.command {
        Command::Add => add(&env, &conf).await.map(Some),
        Command::Del => del(&env, &conf).await.map(|_| None),
        Command::Check => check(&env, &conf).map(|_| None),
        Command::Status => cell(std::path::Path::new(&conf.state_dir)).map(|_| None).map_err(|mut e| {
            e.code = 50;
            e
        }),
        Command::Gc | Command::Version => Ok(None),
    }
}
