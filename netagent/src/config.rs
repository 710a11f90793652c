//! netagent's configuration file (TOML); every key has a default (docs/netagent.md).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The control plane's cells' API, e.g. `https://policy-server.service.cf.internal:4003`.
    pub control_plane_url: String,
    /// This cell's client certificate and key, and the CA of the control plane's certificate.
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    pub ca_file: PathBuf,
    /// The cell's underlay address (an address of one of its interfaces).
    pub underlay_ip: Ipv4Addr,
    /// Must match the control plane's `internal.overlay_network`.
    pub overlay_network: String,
    pub vtep_name: String,
    pub vni: u32,
    pub vxlan_port: u16,
    /// Container store, IPAM and cell state; the CNI plugin's `stateDir`.
    pub state_dir: PathBuf,
    /// Health (`/health`), reconcile (`/reconcile`, used by the CNI plugin) and metrics.
    pub listen: SocketAddr,
    /// How often the lease table is read and the own lease renewed.
    pub lease_poll_interval_ms: u64,
    /// Enforcement backend: `nftables` (the default), `iptables` (upstream's layout), or
    /// `none` (no policy enforcement at all: every container reaches every other).
    pub enforcement: Enforcement,
    /// The resolvers containers may reach on this cell (TCP and UDP port 53); nothing else
    /// of the cell is reachable from a container but `container_host_tcp_ports`.
    pub container_dns_servers: Vec<Ipv4Addr>,
    /// Host TCP ports containers may reach on this cell (none by default).
    pub container_host_tcp_ports: Vec<u16>,
    /// netagent's local API answers on loopback only; set this to listen elsewhere (it has
    /// no authentication: anyone who reaches it can ask for reconciles and read metrics).
    pub allow_non_loopback_listen: bool,
    pub log_level: String,
    /// apps.internal service discovery: registration and the DNS responder.
    pub discovery: crate::discovery::DiscoveryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            control_plane_url: "https://policy-server.service.cf.internal:4003".into(),
            client_cert_file: "/var/vcap/jobs/netagent/config/certs/client.crt".into(),
            client_key_file: "/var/vcap/jobs/netagent/config/certs/client.key".into(),
            ca_file: "/var/vcap/jobs/netagent/config/certs/ca.crt".into(),
            underlay_ip: Ipv4Addr::UNSPECIFIED,
            overlay_network: "10.255.0.0/16".into(),
            vtep_name: "silk-vtep".into(),
            vni: 1,
            vxlan_port: 4789,
            state_dir: "/var/vcap/data/c2c".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 23954)),
            lease_poll_interval_ms: 5000,
            enforcement: Enforcement::Nftables,
            container_dns_servers: vec![Ipv4Addr::new(169, 254, 0, 2)],
            container_host_tcp_ports: Vec::new(),
            allow_non_loopback_listen: false,
            log_level: "info".into(),
            discovery: Default::default(),
        }
    }
}

/// Which kernel backend enforces policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// One nftables table; per-packet cost independent of the number of policies.
    Nftables,
    /// Upstream's iptables layout, for hosts that need it.
    Iptables,
    /// No enforcement: only for an operator who says so explicitly.
    None,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Nftables => "nftables",
            Enforcement::Iptables => "iptables",
            Enforcement::None => "none",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("invalid config file {0}: {1}")]
    Parse(PathBuf, Box<toml::de::Error>),
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.into(), Box::new(e)))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.underlay_ip.is_unspecified() {
            return Err(ConfigError::Invalid(
                "underlay_ip is required: the cell's address on the underlay network".into(),
            ));
        }
        if self.overlay().is_none() {
            return Err(ConfigError::Invalid(format!(
                "overlay_network {:?} is not an IPv4 CIDR",
                self.overlay_network
            )));
        }
        if !crate::naming::valid_ifname(&self.vtep_name) {
            return Err(ConfigError::Invalid(format!("vtep_name {:?} is not a valid interface name", self.vtep_name)));
        }
        if !self.listen.ip().is_loopback() && !self.allow_non_loopback_listen {
            return Err(ConfigError::Invalid(format!(
                "listen {} is not a loopback address: netagent's local API has no authentication; keep it on 127.0.0.1 or set allow_non_loopback_listen = true",
                self.listen
            )));
        }
        let d = &self.discovery;
        if d.enabled && !self.container_dns_servers.contains(&d.listen) {
            return Err(ConfigError::Invalid(format!(
                "discovery.listen {} must be one of container_dns_servers {:?}: containers may reach no other address of the cell",
                d.listen, self.container_dns_servers
            )));
        }
        if d.enabled && !(3..=3600).contains(&d.registration_ttl_secs) {
            return Err(ConfigError::Invalid("discovery.registration_ttl_secs must be 3 to 3600".into()));
        }
        if self.lease_poll_interval_ms == 0 {
            return Err(ConfigError::Invalid("lease_poll_interval_ms must be positive".into()));
        }
        Ok(())
    }

    /// The overlay network address and prefix.
    pub fn overlay(&self) -> Option<(Ipv4Addr, u8)> {
        let (a, p) = self.overlay_network.split_once('/')?;
        let p: u8 = p.parse().ok().filter(|p| *p <= 32)?;
        Some((a.parse().ok()?, p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_an_underlay_ip() {
        let c = Config::default();
        assert!(c.validate().unwrap_err().to_string().contains("underlay_ip"));
        let c = Config { underlay_ip: "10.0.0.1".parse().unwrap(), ..Config::default() };
        c.validate().unwrap();
        assert_eq!(c.overlay(), Some(("10.255.0.0".parse().unwrap(), 16)));
        assert!(toml::from_str::<Config>("unknown = 1").is_err());
        let c: Config = toml::from_str("underlay_ip = \"10.0.0.2\"\nvtep_name = \"a b\"").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn the_local_api_stays_on_loopback_unless_allowed() {
        let c: Config = toml::from_str("underlay_ip = \"10.0.0.2\"\nlisten = \"0.0.0.0:23954\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("allow_non_loopback_listen"));
        let c = Config { allow_non_loopback_listen: true, ..c };
        c.validate().unwrap();
    }

    #[test]
    fn enforcement_is_on_unless_switched_off_by_name() {
        assert_eq!(Config::default().enforcement, Enforcement::Nftables);
        let c: Config = toml::from_str("enforcement = \"iptables\"").unwrap();
        assert_eq!(c.enforcement, Enforcement::Iptables);
        let c: Config = toml::from_str("enforcement = \"none\"").unwrap();
        assert_eq!(c.enforcement, Enforcement::None);
        let err = toml::from_str::<Config>("enforcement = \"ebpf\"").unwrap_err().to_string();
        assert!(err.contains("nftables") && err.contains("iptables") && err.contains("none"), "{err}");
    }
}
