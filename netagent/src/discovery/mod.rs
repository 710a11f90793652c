//! apps.internal service discovery on the cell: the cell's own internal routes go to the
//! control plane ([`registrar`]), the whole table comes back through its watch
//! ([`follower`]), and a DNS responder answers containers from it ([`responder`], over the
//! pure [`table`]).

pub mod follower;
pub mod registrar;
pub mod responder;
pub mod table;

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[discovery]` in netagent's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Register this cell's internal routes and answer DNS for containers.
    pub enabled: bool,
    /// Where the responder listens (UDP and TCP). netagent adds the address to the cell's
    /// loopback interface when no interface has it; containers reach it through their
    /// gateway. It must be one of `container_dns_servers`.
    pub listen: Ipv4Addr,
    pub port: u16,
    /// Domains answered from the discovery table; any other name is forwarded or refused.
    pub internal_domains: Vec<String>,
    /// TTL of the A records (seconds). 0, as upstream: every lookup sees the current
    /// instances.
    pub ttl_secs: u32,
    /// Names outside the internal domains: `resolv_conf` forwards them to the nameservers
    /// in `resolv_conf_file`; `refuse` answers REFUSED.
    pub forward: Forward,
    pub resolv_conf_file: PathBuf,
    /// How long the control plane keeps this cell's routes without a refresh; they are
    /// sent again every third of it.
    pub registration_ttl_secs: u32,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            enabled: true,
            listen: Ipv4Addr::new(169, 254, 0, 2),
            port: 53,
            internal_domains: vec!["apps.internal.".into()],
            ttl_secs: 0,
            forward: Forward::ResolvConf,
            resolv_conf_file: "/etc/resolv.conf".into(),
            registration_ttl_secs: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Forward {
    ResolvConf,
    Refuse,
}
