//! Applying the overlay plan to the kernel over rtnetlink (no `ip` or `bridge` processes):
//! the VTEP (VXLAN with GBP, learning off), and per remote cell a route, a permanent ARP
//! entry and a permanent FDB entry. Reads back what is on the VTEP so that only the
//! difference is written, and running it again on a configured cell changes nothing.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
use rtnetlink::{Handle, LinkUnspec, LinkVxlan, RouteMessageBuilder};

use crate::naming::container_mac;
use crate::overlay::{Remote, Vtep};

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    #[error("netlink: {what}: {source}")]
    Request { what: String, source: rtnetlink::Error },
    #[error("no network interface carries the underlay address {0}; set underlay_ip to an address of this cell")]
    NoUnderlay(Ipv4Addr),
    #[error("interface {0} does not exist")]
    NoLink(String),
}

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request { what, source }
}

/// Whether an error is "already exists" / "does not exist", which the idempotent paths
/// tolerate.
fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// A netlink connection in the network namespace of the thread that created it.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Opens a connection; must be called inside a tokio runtime.
    pub fn connect() -> Result<Netlink, NetlinkError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if is_errno(&e, libc_enodev()) => Ok(None),
            Err(e) => Err(req(format!("get link {name}"))(e)),
        }
    }

    /// The interface holding `addr` (the underlay NIC).
    pub async fn link_with_address(&self, addr: Ipv4Addr) -> Result<u32, NetlinkError> {
        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await.map_err(req("list addresses"))? {
            let has = msg.attributes.iter().any(|a| {
                matches!(a, netlink_packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) if *ip == addr)
            });
            if has {
                return Ok(msg.header.index);
            }
        }
        Err(NetlinkError::NoUnderlay(addr))
    }

    /// Makes `addr` local to the cell: added to `lo` as a /32 unless an interface has it.
    /// Containers reach it through their gateway (the DNS responder's address).
    pub async fn ensure_local_address(&self, addr: Ipv4Addr) -> Result<(), NetlinkError> {
        if self.link_with_address(addr).await.is_ok() {
            return Ok(());
        }
        let lo = self.link_by_name("lo").await?.ok_or(NetlinkError::NoUnderlay(addr))?;
        self.handle
            .address()
            .add(lo.header.index, IpAddr::V4(addr), 32)
            .execute()
            .await
            .map_err(req(format!("add {addr}/32 to lo")))
    }

    async fn mtu_of(&self, index: u32) -> Result<u32, NetlinkError> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let link = links.try_next().await.map_err(req("get underlay link"))?;
        Ok(link
            .and_then(|l| l.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None }))
            .unwrap_or(1500))
    }

    /// Creates the VTEP if it is missing (VNI, port, local underlay address, GBP, learning
    /// off, MAC from the subnet, MTU = underlay − 50), gives it the subnet's first address
    /// with the overlay prefix, and brings it up. Returns its index.
    pub async fn ensure_vtep(&self, vtep: &Vtep) -> Result<u32, NetlinkError> {
        let underlay = self.link_with_address(vtep.underlay_ip).await?;
        if self.link_by_name(&vtep.name).await?.is_none() {
            let mtu = self.mtu_of(underlay).await?.saturating_sub(50);
            let msg = LinkVxlan::new(&vtep.name, vtep.vni)
                .dev(underlay)
                .local(vtep.underlay_ip)
                .port(vtep.port)
                .learning(false)
                .gbp()
                .address(vtep.mac.to_vec())
                .mtu(mtu)
                .build();
            self.handle.link().add(msg).execute().await.map_err(req(format!("create {}", vtep.name)))?;
        }
        let link = self.link_by_name(&vtep.name).await?.ok_or_else(|| NetlinkError::NoLink(vtep.name.clone()))?;
        let index = link.header.index;
        let mut has_addr = false;
        let mut addrs = self.handle.address().get().set_link_index_filter(index).execute();
        while let Some(msg) = addrs.try_next().await.map_err(req("list VTEP addresses"))? {
            has_addr |= msg.attributes.iter().any(|a| {
                matches!(a, netlink_packet_route::address::AddressAttribute::Address(IpAddr::V4(ip)) if *ip == vtep.address)
            });
        }
        if !has_addr {
            match self.handle.address().add(index, IpAddr::V4(vtep.address), vtep.overlay_prefix).execute().await {
                Ok(()) => {}
                Err(e) if is_errno(&e, 17) => {}
                Err(e) => return Err(req("address the VTEP")(e)),
            }
        }
        if !link.header.flags.contains(LinkFlags::Up) {
            let up = LinkUnspec::new_with_index(index).up().build();
            self.handle.link().set(up).execute().await.map_err(req("bring the VTEP up"))?;
        }
        Ok(index)
    }

    /// Deletes the VTEP (with everything on it); fine if it is gone.
    pub async fn delete_link(&self, name: &str) -> Result<(), NetlinkError> {
        if let Some(link) = self.link_by_name(name).await? {
            self.handle.link().del(link.header.index).execute().await.map_err(req(format!("delete {name}")))?;
        }
        Ok(())
    }

    /// The remotes currently on the VTEP, read back from its routes and FDB entries.
    pub async fn remotes(&self, vtep_index: u32) -> Result<BTreeSet<Remote>, NetlinkError> {
        let mut fdb: HashMap<[u8; 6], Ipv4Addr> = HashMap::new();
        let mut bridge = {
            let mut r = self.handle.neighbours().get();
            r.message_mut().header.family = AddressFamily::Bridge;
            r.execute()
        };
        while let Some(n) = bridge.try_next().await.map_err(req("list FDB"))? {
            if n.header.ifindex != vtep_index {
                continue;
            }
            let mac = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(m) if m.len() == 6 => Some([m[0], m[1], m[2], m[3], m[4], m[5]]),
                _ => None,
            });
            // Bridge-family entries carry the IPv4 destination as raw bytes.
            let dst = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                    Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                }
                _ => None,
            });
            if let (Some(mac), Some(dst)) = (mac, dst) {
                fdb.insert(mac, dst);
            }
        }
        let mut out = BTreeSet::new();
        let mut routes = self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(r) = routes.try_next().await.map_err(req("list routes"))? {
            let oif = r.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None });
            if oif != Some(vtep_index) {
                continue;
            }
            let dst = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let gw = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            });
            let (Some(subnet), Some(gateway)) = (dst, gw) else { continue };
            let mac = container_mac(gateway);
            out.insert(Remote {
                subnet,
                prefix: r.header.destination_prefix_length,
                gateway,
                mac,
                underlay_ip: fdb.get(&mac).copied().unwrap_or(Ipv4Addr::UNSPECIFIED),
            });
        }
        Ok(out)
    }

    /// FDB (MAC → underlay), ARP (gateway → MAC), then the route through the gateway.
    pub async fn add_remote(&self, vtep_index: u32, local: Ipv4Addr, r: &Remote) -> Result<(), NetlinkError> {
        self.handle
            .neighbours()
            .add_bridge(vtep_index, &r.mac)
            .destination(IpAddr::V4(r.underlay_ip))
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(req(format!("FDB entry for {}", r.underlay_ip)))?;
        self.handle
            .neighbours()
            .add(vtep_index, IpAddr::V4(r.gateway))
            .link_layer_address(&r.mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(req(format!("ARP entry for {}", r.gateway)))?;
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.subnet, r.prefix)
            .gateway(r.gateway)
            .output_interface(vtep_index)
            .pref_source(local)
            .scope(RouteScope::Universe)
            .onlink()
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(req(format!("route to {}/{}", r.subnet, r.prefix)))?;
        Ok(())
    }

    /// Removes the route, ARP and FDB entries of a remote; missing ones are fine.
    pub async fn remove_remote(&self, vtep_index: u32, r: &Remote) -> Result<(), NetlinkError> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.subnet, r.prefix)
            .gateway(r.gateway)
            .output_interface(vtep_index)
            .build();
        tolerate_missing(self.handle.route().del(route).execute().await, "delete route")?;
        let mut arp = NeighbourMessage::default();
        arp.header.family = AddressFamily::Inet;
        arp.header.ifindex = vtep_index;
        arp.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(r.gateway)));
        tolerate_missing(self.handle.neighbours().del(arp).execute().await, "delete ARP entry")?;
        let mut fdb = NeighbourMessage::default();
        fdb.header.family = AddressFamily::Bridge;
        fdb.header.ifindex = vtep_index;
        fdb.header.flags = NeighbourFlags::Own;
        fdb.header.state = NeighbourState::Permanent;
        fdb.attributes.push(NeighbourAttribute::LinkLayerAddress(r.mac.to_vec()));
        fdb.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(r.underlay_ip)));
        tolerate_missing(self.handle.neighbours().del(fdb).execute().await, "delete FDB entry")?;
        Ok(())
    }
}

fn tolerate_missing(result: Result<(), rtnetlink::Error>, what: &str) -> Result<(), NetlinkError> {
    match result {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, 2) || is_errno(&e, 3) || is_errno(&e, 19) => Ok(()),
        Err(e) => Err(req(what)(e)),
    }
}

const fn libc_enodev() -> i32 {
    19
}

/// Brings the VTEP to `desired` and returns what changed (added, removed).
pub async fn converge(nl: &Netlink, vtep: &Vtep, desired: &BTreeSet<Remote>) -> Result<(usize, usize), NetlinkError> {
    let index = nl.ensure_vtep(vtep).await?;
    let current = nl.remotes(index).await?;
    let (add, remove) = crate::overlay::diff(&current, desired);
    for r in &remove {
        nl.remove_remote(index, r).await?;
    }
    for r in &add {
        nl.add_remote(index, vtep.address, r).await?;
    }
    Ok((add.len(), remove.len()))
}
