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
    /// Container traffic to these destinations keeps its source address (upstream's
    /// `no_masquerade_cidr_range`); everything else leaving the overlay is masqueraded to
    /// `underlay_ip`. Empty: the overlay network.
    pub no_masquerade_cidr_range: String,
    /// Logs of accepted and denied traffic (off by default; switched at run time through
    /// the local API's `/traffic-logs`).
    pub traffic_logs: TrafficLogs,
}

/// Traffic logs: the kernel hands the packets to netagent over nflog; netagent writes one
/// JSON line per packet to `file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrafficLogs {
    /// New c2c connections a policy accepted (upstream's `iptables_c2c_logging`).
    pub c2c_accepted: bool,
    /// New connections to outside the overlay an egress rule accepted (upstream's
    /// `iptables_asg_logging`). Rules flagged `log` are logged regardless.
    pub egress_accepted: bool,
    /// Denied packets per second at most, c2c and egress each (upstream's
    /// `iptables_denied_logs_per_sec`); 0 logs none.
    pub denied_per_sec: u32,
    /// The nflog group the kernel sends logged packets to.
    pub nflog_group: u16,
    pub file: PathBuf,
}

impl Default for TrafficLogs {
    fn default() -> Self {
        TrafficLogs {
            c2c_accepted: false,
            egress_accepted: false,
            denied_per_sec: 0,
            nflog_group: 7301,
            file: "/var/vcap/sys/log/netagent/traffic.log".into(),
        }
    }
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
            no_masquerade_cidr_range: String::new(),
            traffic_logs: TrafficLogs::default(),
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
        if self.no_masquerade().is_none() {
            return Err(ConfigError::Invalid(format!(
                "no_masquerade_cidr_range {:?} is not an IPv4 CIDR",
                self.no_masquerade_cidr_range
            )));
        }
        if self.lease_poll_interval_ms == 0 {
            return Err(ConfigError::Invalid("lease_poll_interval_ms must be positive".into()));
        }
        Ok(())
    }

    /// The overlay network address and prefix.
    pub fn overlay(&self) -> Option<(Ipv4Addr, u8)> {
        cidr(&self.overlay_network)
    }

    /// The destinations not masqueraded.
    pub fn no_masquerade(&self) -> Option<(Ipv4Addr, u8)> {
        if self.no_masquerade_cidr_range.is_empty() { self.overlay() } else { cidr(&self.no_masquerade_cidr_range) }
    }

    /// The cell's edge as the planner sees it.
    pub fn edge(&self, logging: crate::enforcement::plan::Logging) -> Option<crate::enforcement::plan::Edge> {
        Some(crate::enforcement::plan::Edge {
            cell_ip: self.underlay_ip,
            overlay: self.overlay()?,
            no_masquerade: self.no_masquerade()?,
            vtep: self.vtep_name.clone(),
            logging,
        })
    }
}

/// `a.b.c.d/n`, the address reduced to its network.
fn cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let p: u8 = p.parse().ok().filter(|p| *p <= 32)?;
    let a: Ipv4Addr = a.parse().ok()?;
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    Some((Ipv4Addr::from(u32::from(a) & mask), p))
}

impl TrafficLogs {
    pub fn logging(&self) -> crate::enforcement::plan::Logging {
        crate::enforcement::plan::Logging {
            c2c_accepted: self.c2c_accepted,
            egress_accepted: self.egress_accepted,
            denied_per_sec: self.denied_per_sec,
        }
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
    fn masquerading_spares_the_overlay_unless_told_otherwise() {
        let c: Config = toml::from_str("underlay_ip = \"10.0.0.2\"").unwrap();
        assert_eq!(c.no_masquerade(), Some(("10.255.0.0".parse().unwrap(), 16)));
        let c: Config =
            toml::from_str("underlay_ip = \"10.0.0.2\"\nno_masquerade_cidr_range = \"10.0.0.7/8\"").unwrap();
        assert_eq!(c.no_masquerade(), Some(("10.0.0.0".parse().unwrap(), 8)));
        let c: Config = toml::from_str("underlay_ip = \"10.0.0.2\"\nno_masquerade_cidr_range = \"10.0.0.0\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("no_masquerade_cidr_range"));
        let edge = Config { underlay_ip: "10.0.0.2".parse().unwrap(), ..Config::default() }.edge(Default::default());
        assert_eq!(edge.unwrap().cell_ip, "10.0.0.2".parse::<Ipv4Addr>().unwrap());
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
