//! Overlay subnet leases, silk-controller compatible: each cell (by underlay IP) holds one
//! block of the overlay network; the first block is kept for single-IP leases. Pure
//! computation here; the store applies it.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A lease as silk-controller's API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    pub underlay_ip: String,
    pub overlay_subnet: String,
    pub overlay_hardware_addr: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    #[error("invalid overlay network {0}: use an IPv4 CIDR such as 10.255.0.0/16")]
    Network(String),
    #[error("subnet prefix length {prefix} must be longer than the network's /{network} and at most 30")]
    Prefix { prefix: u8, network: u8 },
}

/// The overlay network and how it is cut into per-cell blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    network: u32,
    network_prefix: u8,
    prefix: u8,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
}

impl Pool {
    pub fn new(network: &str, prefix: u8) -> Result<Pool, LeaseError> {
        let bad = || LeaseError::Network(network.to_string());
        let (addr, len) = network.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        if len > 32 {
            return Err(bad());
        }
        if prefix <= len || prefix > 30 {
            return Err(LeaseError::Prefix { prefix, network: len });
        }
        Ok(Pool { network: u32::from(addr) & mask(len), network_prefix: len, prefix })
    }

    fn block_size(&self) -> u32 {
        1 << (32 - u32::from(self.prefix))
    }

    /// Every block but the first, in order.
    pub fn blocks(&self) -> impl Iterator<Item = String> + '_ {
        let count = 1u32 << (self.prefix - self.network_prefix);
        (1..count).map(move |i| format!("{}/{}", Ipv4Addr::from(self.network + i * self.block_size()), self.prefix))
    }

    /// `/32`s inside the first block (for cells that ask for a single overlay IP).
    pub fn single_ips(&self) -> impl Iterator<Item = String> + '_ {
        (1..self.block_size()).map(move |i| format!("{}/32", Ipv4Addr::from(self.network + i)))
    }

    pub fn block_count(&self) -> usize {
        (1usize << (self.prefix - self.network_prefix)) - 1
    }

    /// Whether `subnet` is one this pool hands out (blocks or single IPs).
    pub fn contains(&self, subnet: &str) -> bool {
        let Some((addr, len)) = subnet.split_once('/') else { return false };
        let (Ok(addr), Ok(len)) = (addr.parse::<Ipv4Addr>(), len.parse::<u8>()) else { return false };
        let a = u32::from(addr);
        if a & mask(self.network_prefix) != self.network {
            return false;
        }
        let offset = a - self.network;
        if len == self.prefix {
            offset.is_multiple_of(self.block_size()) && offset >= self.block_size()
        } else if len == 32 {
            offset >= 1 && offset < self.block_size()
        } else {
            false
        }
    }

    /// A free subnet chosen at random among those not in `taken` (random, as silk does, so
    /// replicas racing for leases rarely pick the same one).
    pub fn pick_free(&self, taken: &HashSet<String>, single_ip: bool, random: u64) -> Option<String> {
        let free: Vec<String> = if single_ip {
            self.single_ips().filter(|s| !taken.contains(s)).collect()
        } else {
            self.blocks().filter(|s| !taken.contains(s)).collect()
        };
        if free.is_empty() { None } else { Some(free[(random % free.len() as u64) as usize].clone()) }
    }
}

/// Whether `ip` lies in `subnet` (a CIDR).
pub fn subnet_contains(subnet: &str, ip: &str) -> bool {
    let Some((base, len)) = subnet.split_once('/') else { return false };
    let (Ok(base), Ok(len), Ok(ip)) = (base.parse::<Ipv4Addr>(), len.parse::<u8>(), ip.parse::<Ipv4Addr>()) else {
        return false;
    };
    len <= 32 && u32::from(ip) & mask(len) == u32::from(base) & mask(len)
}

/// The VTEP MAC of a subnet: `ee:ee` and the four bytes of its first address.
pub fn hardware_addr(subnet: &str) -> Option<String> {
    let addr: Ipv4Addr = subnet.split('/').next()?.parse().ok()?;
    let o = addr.octets();
    Some(format!("ee:ee:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]))
}

/// The checks of a renew request (silk answers 409 for each).
pub fn validate(lease: &Lease) -> Result<(), String> {
    lease.underlay_ip.parse::<Ipv4Addr>().map_err(|_| format!("invalid underlay ip {:?}", lease.underlay_ip))?;
    let (addr, len) = lease.overlay_subnet.split_once('/').ok_or_else(|| "invalid overlay subnet".to_string())?;
    addr.parse::<Ipv4Addr>().map_err(|_| "invalid overlay subnet".to_string())?;
    len.parse::<u8>().ok().filter(|l| *l <= 32).ok_or_else(|| "invalid overlay subnet".to_string())?;
    let mac_ok = lease.overlay_hardware_addr.split(':').count() == 6
        && lease.overlay_hardware_addr.split(':').all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok());
    if !mac_ok {
        return Err(format!("invalid hardware address {:?}", lease.overlay_hardware_addr));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pool_has_255_blocks_after_the_first() {
        let pool = Pool::new("10.255.0.0/16", 24).unwrap();
        let blocks: Vec<String> = pool.blocks().collect();
        assert_eq!(blocks.len(), 255);
        assert_eq!(pool.block_count(), 255);
        assert_eq!(blocks[0], "10.255.1.0/24");
        assert_eq!(blocks[254], "10.255.255.0/24");
        assert_eq!(pool.single_ips().count(), 255);
        assert!(pool.contains("10.255.7.0/24"));
        assert!(!pool.contains("10.255.0.0/24"));
        assert!(!pool.contains("10.254.7.0/24"));
        assert!(!pool.contains("10.255.7.1/24"));
        assert!(pool.contains("10.255.0.9/32"));
        assert!(!pool.contains("10.255.0.0/32"));
    }

    #[test]
    fn bad_networks_are_refused() {
        assert!(Pool::new("10.255.0.0", 24).is_err());
        assert!(Pool::new("10.255.0.0/16", 16).is_err());
        assert!(Pool::new("10.255.0.0/16", 31).is_err());
        assert!(Pool::new("nope/16", 24).is_err());
    }

    #[test]
    fn picks_only_free_subnets() {
        let pool = Pool::new("10.255.0.0/22", 24).unwrap();
        let mut taken: HashSet<String> = ["10.255.1.0/24", "10.255.2.0/24"].iter().map(|s| s.to_string()).collect();
        for r in 0..10 {
            assert_eq!(pool.pick_free(&taken, false, r).as_deref(), Some("10.255.3.0/24"));
        }
        taken.insert("10.255.3.0/24".into());
        assert_eq!(pool.pick_free(&taken, false, 0), None);
    }

    #[test]
    fn mac_from_subnet() {
        assert_eq!(hardware_addr("10.255.23.0/24").as_deref(), Some("ee:ee:0a:ff:17:00"));
    }

    #[test]
    fn renew_validation() {
        let ok = Lease {
            underlay_ip: "10.0.0.1".into(),
            overlay_subnet: "10.255.1.0/24".into(),
            overlay_hardware_addr: "ee:ee:0a:ff:01:00".into(),
        };
        assert!(validate(&ok).is_ok());
        assert!(validate(&Lease { underlay_ip: "x".into(), ..ok.clone() }).is_err());
        assert!(validate(&Lease { overlay_subnet: "10.255.1.0".into(), ..ok.clone() }).is_err());
        assert!(validate(&Lease { overlay_hardware_addr: "ee:ee".into(), ..ok }).is_err());
    }
}
