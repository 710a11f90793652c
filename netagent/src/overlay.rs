//! The overlay a cell should have, as data: its VTEP, and for every other cell's lease a
//! route, a permanent ARP entry and an FDB entry (what silk-daemon converges to). A pure
//! function of the leases; the netlink layer applies the difference.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use crate::naming::container_mac;

/// A lease as the control plane lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Lease {
    pub underlay_ip: Ipv4Addr,
    /// The subnet's first address (the VTEP's).
    pub subnet: Ipv4Addr,
    pub prefix: u8,
}

impl Lease {
    /// Parses the control plane's `{underlay_ip, overlay_subnet}`.
    pub fn parse(underlay_ip: &str, overlay_subnet: &str) -> Option<Lease> {
        let (addr, len) = overlay_subnet.split_once('/')?;
        Some(Lease { underlay_ip: underlay_ip.parse().ok()?, subnet: addr.parse().ok()?, prefix: len.parse().ok()? })
    }
}

/// The local VTEP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vtep {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub underlay_ip: Ipv4Addr,
    /// The cell subnet's first address, with the overlay network's prefix (`10.255.7.0/16`).
    pub address: Ipv4Addr,
    pub overlay_prefix: u8,
    pub mac: [u8; 6],
}

/// One remote cell, as three kernel objects on the VTEP.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Remote {
    /// Route: `subnet/prefix via gateway dev <vtep> src <local vtep address>`.
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    /// The remote VTEP's address: route gateway and ARP entry.
    pub gateway: Ipv4Addr,
    /// ARP: gateway → mac (permanent); FDB: mac → underlay (permanent, self).
    pub mac: [u8; 6],
    pub underlay_ip: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredOverlay {
    pub vtep: Vtep,
    pub remotes: BTreeSet<Remote>,
    /// Leases outside the overlay network, left out (counted for the operator).
    pub non_routable: usize,
}

/// Settings of the overlay that every cell shares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySettings {
    pub vtep_name: String,
    pub vni: u32,
    pub port: u16,
    pub network: Ipv4Addr,
    pub network_prefix: u8,
}

/// The first and last address a lease covers.
fn range(l: &Lease) -> (u32, u32) {
    let size = if l.prefix >= 32 { 1 } else { 1u32 << (32 - u32::from(l.prefix)) };
    let start = u32::from(l.subnet) & !(size - 1);
    (start, start + (size - 1))
}

fn overlaps(a: &Lease, b: &Lease) -> bool {
    let (a, b) = (range(a), range(b));
    a.0 <= b.1 && b.0 <= a.1
}

fn inside(network: Ipv4Addr, prefix: u8, addr: Ipv4Addr) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
    u32::from(addr) & mask == u32::from(network) & mask
}

/// What the cell should have, given its own lease and every lease of the overlay.
pub fn plan(settings: &OverlaySettings, local: &Lease, leases: &[Lease]) -> DesiredOverlay {
    let vtep = Vtep {
        name: settings.vtep_name.clone(),
        vni: settings.vni,
        port: settings.port,
        underlay_ip: local.underlay_ip,
        address: local.subnet,
        overlay_prefix: settings.network_prefix,
        mac: container_mac(local.subnet),
    };
    let mut remotes = BTreeSet::new();
    let mut non_routable = 0;
    let mut candidates: Vec<&Lease> = Vec::new();
    for lease in leases {
        if lease.underlay_ip == local.underlay_ip || lease.subnet == local.subnet {
            continue;
        }
        if !inside(settings.network, settings.network_prefix, lease.subnet)
            || lease.prefix < settings.network_prefix
            || lease.prefix > 32
            || overlaps(lease, local)
        {
            non_routable += 1;
            continue;
        }
        candidates.push(lease);
    }
    // Two leases that overlap cannot both be right (the control plane never hands such
    // out): neither is routed, rather than send one cell's traffic to the other.
    candidates.sort_by_key(|l| range(l));
    let mut clash = vec![false; candidates.len()];
    let mut reach: Option<(u32, usize)> = None;
    for (i, l) in candidates.iter().enumerate() {
        let (start, end) = range(l);
        if let Some((furthest, j)) = reach
            && start <= furthest
        {
            clash[i] = true;
            clash[j] = true;
        }
        if reach.is_none_or(|(furthest, _)| end > furthest) {
            reach = Some((end, i));
        }
    }
    for (lease, clashes) in candidates.into_iter().zip(clash) {
        if clashes {
            non_routable += 1;
            continue;
        }
        remotes.insert(Remote {
            subnet: lease.subnet,
            prefix: lease.prefix,
            gateway: lease.subnet,
            mac: container_mac(lease.subnet),
            underlay_ip: lease.underlay_ip,
        });
    }
    DesiredOverlay { vtep, remotes, non_routable }
}

/// What to change so that `current` becomes `desired`: remotes to add and to remove. A
/// remote whose details changed (a cell re-leased) is removed and added.
pub fn diff(current: &BTreeSet<Remote>, desired: &BTreeSet<Remote>) -> (Vec<Remote>, Vec<Remote>) {
    let add = desired.difference(current).cloned().collect();
    let remove = current.difference(desired).cloned().collect();
    (add, remove)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn settings() -> OverlaySettings {
        OverlaySettings {
            vtep_name: "silk-vtep".into(),
            vni: 1,
            port: 4789,
            network: Ipv4Addr::new(10, 255, 0, 0),
            network_prefix: 16,
        }
    }

    fn lease(u: u8, s: u8) -> Lease {
        Lease { underlay_ip: Ipv4Addr::new(10, 0, 0, u), subnet: Ipv4Addr::new(10, 255, s, 0), prefix: 24 }
    }

    #[test]
    fn one_remote_per_other_cell() {
        let local = lease(1, 7);
        let leases = vec![local.clone(), lease(2, 8), lease(3, 9)];
        let d = plan(&settings(), &local, &leases);
        assert_eq!(d.vtep.address, Ipv4Addr::new(10, 255, 7, 0));
        assert_eq!(d.vtep.mac, [0xee, 0xee, 10, 255, 7, 0]);
        assert_eq!(d.remotes.len(), 2);
        let r = d.remotes.iter().next().unwrap();
        assert_eq!(
            (r.gateway, r.underlay_ip, r.mac),
            (Ipv4Addr::new(10, 255, 8, 0), Ipv4Addr::new(10, 0, 0, 2), [0xee, 0xee, 10, 255, 8, 0])
        );
    }

    #[test]
    fn leases_outside_the_overlay_are_left_out() {
        let local = lease(1, 7);
        let outside =
            Lease { underlay_ip: Ipv4Addr::new(10, 0, 0, 9), subnet: Ipv4Addr::new(10, 254, 1, 0), prefix: 24 };
        let d = plan(&settings(), &local, &[local.clone(), outside]);
        assert!(d.remotes.is_empty());
        assert_eq!(d.non_routable, 1);
    }

    #[test]
    fn overlapping_leases_are_left_out() {
        let local = lease(1, 7);
        let half_of_mine =
            Lease { underlay_ip: Ipv4Addr::new(10, 0, 0, 66), subnet: Ipv4Addr::new(10, 255, 7, 128), prefix: 25 };
        let half_of_eight =
            Lease { underlay_ip: Ipv4Addr::new(10, 0, 0, 67), subnet: Ipv4Addr::new(10, 255, 8, 128), prefix: 25 };
        let d = plan(&settings(), &local, &[local.clone(), half_of_mine, lease(2, 8), half_of_eight, lease(3, 9)]);
        let subnets: Vec<u8> = d.remotes.iter().map(|r| r.subnet.octets()[2]).collect();
        assert_eq!(subnets, [9], "only the lease that overlaps nothing is routed");
        assert_eq!(d.non_routable, 3);
    }

    #[test]
    fn diff_adds_removes_and_replaces() {
        let s = settings();
        let local = lease(1, 7);
        let before = plan(&s, &local, &[lease(2, 8), lease(3, 9)]).remotes;
        let after = plan(&s, &local, &[lease(2, 8), lease(4, 9), lease(5, 10)]).remotes;
        let (add, remove) = diff(&before, &after);
        assert_eq!(add.len(), 2, "cell 4 took subnet 9; cell 5 is new");
        assert_eq!(remove.len(), 1, "cell 3's entry for subnet 9 goes");
        let (add, remove) = diff(&after, &after);
        assert!(add.is_empty() && remove.is_empty(), "converged state changes nothing");
    }

    proptest! {
        #[test]
        fn applying_the_diff_reaches_the_plan(cur in proptest::collection::btree_set((1u8..50, 1u8..50), 0..20), want in proptest::collection::btree_set((1u8..50, 1u8..50), 0..20)) {
            let s = settings();
            let local = lease(200, 200);
            let mk = |set: &std::collections::BTreeSet<(u8, u8)>| plan(&s, &local, &set.iter().map(|(u, n)| lease(*u, *n)).collect::<Vec<_>>()).remotes;
            let (current, desired) = (mk(&cur), mk(&want));
            let (add, remove) = diff(&current, &desired);
            let mut state = current.clone();
            for r in &remove { state.remove(r); }
            for r in add { state.insert(r); }
            prop_assert_eq!(state, desired);
            prop_assert!(remove.iter().all(|r| current.contains(r)));
        }
    }
}
