//! Container addresses from the cell's subnet: `.2`–`.254` of a /24 (`.0` is the VTEP's, `.1`
//! is kept unused as upstream's host-local does). The pure allocator is here; the file-backed
//! store that persists it under a lock is in `ipam_store`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("no free address left in {0}: every .2-.254 address is in use on this cell")]
    Exhausted(String),
    #[error("invalid cell subnet {0:?}: expected an IPv4 /24 such as 10.255.7.0/24")]
    Subnet(String),
}

/// The cell's subnet and the addresses in use (address → container handle).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Allocations {
    pub subnet: String,
    pub used: BTreeMap<Ipv4Addr, String>,
    /// The last address handed out; the next search starts after it, so a just-freed address
    /// is not reused at once (as host-local does).
    pub last: Option<Ipv4Addr>,
}

fn base(subnet: &str) -> Result<Ipv4Addr, IpamError> {
    let bad = || IpamError::Subnet(subnet.to_string());
    let (addr, len) = subnet.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    if len != "24" || addr.octets()[3] != 0 {
        return Err(bad());
    }
    Ok(addr)
}

impl Allocations {
    pub fn new(subnet: &str) -> Result<Allocations, IpamError> {
        base(subnet)?;
        Ok(Allocations { subnet: subnet.to_string(), ..Default::default() })
    }

    /// The address of `handle`, allocating one if it has none (ADD is retried by runtimes).
    pub fn allocate(&mut self, handle: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some((ip, _)) = self.used.iter().find(|(_, h)| h.as_str() == handle) {
            return Ok(*ip);
        }
        let b = base(&self.subnet)?.octets();
        let start = self.last.map(|l| l.octets()[3]).unwrap_or(1);
        let candidates = (start + 1..=254).chain(2..=start.min(254));
        for last_octet in candidates {
            if last_octet < 2 {
                continue;
            }
            let ip = Ipv4Addr::new(b[0], b[1], b[2], last_octet);
            if let std::collections::btree_map::Entry::Vacant(slot) = self.used.entry(ip) {
                slot.insert(handle.to_string());
                self.last = Some(ip);
                return Ok(ip);
            }
        }
        Err(IpamError::Exhausted(self.subnet.clone()))
    }

    /// Frees the address of `handle`; unknown handles are fine (DEL is idempotent).
    pub fn release(&mut self, handle: &str) -> Option<Ipv4Addr> {
        let ip = self.used.iter().find(|(_, h)| h.as_str() == handle).map(|(ip, _)| *ip)?;
        self.used.remove(&ip);
        Some(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hands_out_2_to_254_round_robin() {
        let mut a = Allocations::new("10.255.7.0/24").unwrap();
        assert_eq!(a.allocate("c1").unwrap(), Ipv4Addr::new(10, 255, 7, 2));
        assert_eq!(a.allocate("c2").unwrap(), Ipv4Addr::new(10, 255, 7, 3));
        assert_eq!(a.allocate("c1").unwrap(), Ipv4Addr::new(10, 255, 7, 2), "same handle, same address");
        assert_eq!(a.release("c1"), Some(Ipv4Addr::new(10, 255, 7, 2)));
        assert_eq!(a.allocate("c3").unwrap(), Ipv4Addr::new(10, 255, 7, 4), "a freed address is not reused at once");
        assert_eq!(a.release("nobody"), None);
    }

    #[test]
    fn exhaustion_and_wraparound() {
        let mut a = Allocations::new("10.255.7.0/24").unwrap();
        for i in 0..253 {
            a.allocate(&format!("c{i}")).unwrap();
        }
        assert!(matches!(a.allocate("one-too-many"), Err(IpamError::Exhausted(_))));
        a.release("c10");
        assert_eq!(a.allocate("again").unwrap(), Ipv4Addr::new(10, 255, 7, 12));
    }

    #[test]
    fn subnets_must_be_slash_24() {
        assert!(Allocations::new("10.255.7.0/16").is_err());
        assert!(Allocations::new("10.255.7.1/24").is_err());
        assert!(Allocations::new("nope").is_err());
    }

    proptest! {
        #[test]
        fn never_two_containers_with_one_address(ops in proptest::collection::vec((any::<bool>(), 0u8..40), 0..300)) {
            let mut a = Allocations::new("10.255.1.0/24").unwrap();
            for (add, h) in ops {
                let handle = format!("h{h}");
                if add {
                    let _ = a.allocate(&handle);
                } else {
                    a.release(&handle);
                }
                let handles: std::collections::HashSet<&String> = a.used.values().collect();
                prop_assert_eq!(handles.len(), a.used.len());
                for ip in a.used.keys() {
                    let last = ip.octets()[3];
                    prop_assert!((2..=254).contains(&last));
                }
            }
        }
    }
}
