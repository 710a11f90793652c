//! Policy enforcement: the desired ruleset as data (`plan`), and the kernel backends that
//! install it: `nftables` (default; per-packet cost independent of the number of policies,
//! changes applied as differences) and `iptables` (upstream's layout, for hosts that need it).

pub mod iptables;
pub mod nf_netlink;
pub mod nftables;
pub mod plan;

use nftables::{Applied, NftError};

/// The configured backend.
#[derive(Debug)]
pub enum Backend {
    Nftables(nftables::Enforcer),
    Iptables(iptables::IptablesEnforcer),
}

impl Backend {
    /// `nftables` or `iptables`.
    pub fn named(name: &str) -> Option<Backend> {
        match name {
            "nftables" => Some(Backend::Nftables(nftables::Enforcer::new())),
            "iptables" => Some(Backend::Iptables(iptables::IptablesEnforcer::new())),
            _ => None,
        }
    }

    /// Brings the kernel to `desired`, repairing whatever someone else changed.
    pub fn reconcile(&mut self, desired: &plan::Ruleset) -> Result<Applied, NftError> {
        match self {
            Backend::Nftables(e) => e.reconcile(desired),
            Backend::Iptables(e) => e.reconcile(desired),
        }
    }
}
