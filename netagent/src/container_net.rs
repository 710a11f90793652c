//! Wiring a container into the cell as Silk does: a veth pair, host side `s-<ip digits>`
//! holding `169.254.0.1/32 peer <ip>/32`, container side renamed to the CNI interface name
//! holding `<ip>/32 peer 169.254.0.1/32`, ARP off on both ends with permanent neighbours,
//! MACs derived from the address, a default route via `169.254.0.1`, the overlay MTU.
//! Everything over netlink; the container side from a thread inside its namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::neighbour::NeighbourState;
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::naming::{GATEWAY, container_mac, host_mac, host_veth, temporary_container_veth};
use crate::netlink::{Netlink, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("cannot open network namespace {path}: {source}")]
    Netns { path: String, source: std::io::Error },
    #[error("cannot enter network namespace {path}: {source}")]
    Setns { path: String, source: nix::Error },
    #[error("a thread working in a network namespace failed")]
    Thread,
    #[error("cannot set {key}: {source}")]
    Sysctl { key: String, source: std::io::Error },
}

fn nl_err(what: &str) -> impl FnOnce(rtnetlink::Error) -> WireError + '_ {
    move |source| WireError::Netlink(NetlinkError::Request { what: what.to_string(), source })
}

/// Writes a sysctl of the calling thread's network namespace.
fn sysctl(key: &str, value: &str) -> Result<(), WireError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|source| WireError::Sysctl { key: key.to_string(), source })
}

/// Runs `f` on a new thread inside the network namespace at `path`, with its own runtime
/// (netlink sockets belong to the namespace of the thread that opens them).
pub fn in_netns<T, F, Fut>(path: &str, f: F) -> Result<T, WireError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, WireError>>,
{
    let file = std::fs::File::open(path).map_err(|source| WireError::Netns { path: path.to_string(), source })?;
    let path = path.to_string();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|source| WireError::Setns { path: path.clone(), source })?;
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|_| WireError::Thread)?.block_on(f())
    })
    .join()
    .map_err(|_| WireError::Thread)?
}

/// Adds `local/32 peer peer/32` to a link.
async fn add_peer_address(nl: &Netlink, index: u32, local: Ipv4Addr, peer: Ipv4Addr) -> Result<(), WireError> {
    let mut req = nl.handle().address().add(index, IpAddr::V4(local), 32);
    let msg = req.message_mut();
    msg.attributes.retain(|a| !matches!(a, AddressAttribute::Address(_) | AddressAttribute::Local(_)));
    msg.attributes.push(AddressAttribute::Local(IpAddr::V4(local)));
    msg.attributes.push(AddressAttribute::Address(IpAddr::V4(peer)));
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if matches!(&e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -17) => Ok(()),
        Err(e) => Err(nl_err("add address")(e)),
    }
}

async fn permanent_neighbour(nl: &Netlink, index: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<(), WireError> {
    nl.handle()
        .neighbours()
        .add(index, IpAddr::V4(ip))
        .link_layer_address(&mac)
        .state(NeighbourState::Permanent)
        .replace()
        .execute()
        .await
        .map_err(nl_err("add neighbour"))
}

async fn index_of(nl: &Netlink, name: &str) -> Result<u32, WireError> {
    Ok(nl.link_by_name(name).await?.ok_or_else(|| NetlinkError::NoLink(name.to_string()))?.header.index)
}

/// Wires a container at `ip` into the namespace at `netns` as `ifname`. Runs in the host
/// namespace (the caller's). On failure, what was created is removed again.
pub async fn add(nl: &Netlink, netns: &str, ifname: &str, ip: Ipv4Addr, mtu: u32) -> Result<(), WireError> {
    let result = add_inner(nl, netns, ifname, ip, mtu).await;
    if result.is_err() {
        let _ = nl.delete_link(&host_veth(ip)).await;
    }
    result
}

async fn add_inner(nl: &Netlink, netns: &str, ifname: &str, ip: Ipv4Addr, mtu: u32) -> Result<(), WireError> {
    let (host, temp) = (host_veth(ip), temporary_container_veth(ip));
    // A leftover of an earlier, interrupted ADD for this address goes first.
    nl.delete_link(&host).await?;
    let veth = LinkVeth::new(&host, &temp).mtu(mtu).address(host_mac(ip).to_vec()).build();
    nl.handle().link().add(veth).execute().await.map_err(nl_err("create veth"))?;
    let host_index = index_of(nl, &host).await?;
    let temp_index = index_of(nl, &temp).await?;
    let netns_file =
        std::fs::File::open(netns).map_err(|source| WireError::Netns { path: netns.to_string(), source })?;
    let peer = LinkUnspec::new_with_index(temp_index)
        .address(container_mac(ip).to_vec())
        .mtu(mtu)
        .setns_by_fd(netns_file.as_raw_fd())
        .build();
    nl.handle().link().set(peer).execute().await.map_err(nl_err("move veth into the container"))?;
    drop(netns_file);

    sysctl("net.ipv4.ip_forward", "1")?;
    let _ = sysctl(&format!("net.ipv6.conf.{host}.disable_ipv6"), "1");
    // Strict reverse-path filtering, as upstream: a packet whose source does not route back
    // through this veth is dropped (the ruleset checks interface and source too).
    sysctl(&format!("net.ipv4.conf.{host}.rp_filter"), "1")?;
    let host_link = LinkUnspec::new_with_index(host_index).arp(false).up().build();
    nl.handle().link().set(host_link).execute().await.map_err(nl_err("bring the host veth up"))?;
    add_peer_address(nl, host_index, GATEWAY, ip).await?;
    permanent_neighbour(nl, host_index, ip, container_mac(ip)).await?;

    let ifname = ifname.to_string();
    in_netns(netns, move || async move {
        let nl = Netlink::connect()?;
        let index = index_of(&nl, &temp).await?;
        let rename = LinkUnspec::new_with_index(index).name(ifname.clone()).arp(false).build();
        nl.handle().link().set(rename).execute().await.map_err(nl_err("rename the container veth"))?;
        let _ = sysctl(&format!("net.ipv6.conf.{ifname}.disable_ipv6"), "1");
        let up = LinkUnspec::new_with_index(index).up().build();
        nl.handle().link().set(up).execute().await.map_err(nl_err("bring the container veth up"))?;
        if let Some(lo) = nl.link_by_name("lo").await? {
            let up = LinkUnspec::new_with_index(lo.header.index).up().build();
            nl.handle().link().set(up).execute().await.map_err(nl_err("bring lo up"))?;
        }
        add_peer_address(&nl, index, ip, GATEWAY).await?;
        permanent_neighbour(&nl, index, GATEWAY, host_mac(ip)).await?;
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(GATEWAY)
            .output_interface(index)
            .pref_source(ip)
            .build();
        nl.handle().route().add(default).replace().execute().await.map_err(nl_err("add the default route"))?;
        Ok(())
    })
}

/// Removes a container's interface (the kernel removes the host end with it). A missing
/// namespace or interface is not an error: DEL must succeed for containers already gone.
pub async fn del(nl: &Netlink, netns: &str, ifname: &str, ip: Option<Ipv4Addr>) -> Result<(), WireError> {
    if !netns.is_empty() && Path::new(netns).exists() {
        let ifname = ifname.to_string();
        let result = in_netns(netns, move || async move {
            let nl = Netlink::connect()?;
            nl.delete_link(&ifname).await?;
            Ok(())
        });
        match result {
            Ok(()) | Err(WireError::Netns { .. }) | Err(WireError::Setns { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if let Some(ip) = ip {
        nl.delete_link(&host_veth(ip)).await?;
    }
    Ok(())
}

/// Whether the container's interface exists in its namespace with its address (CHECK).
pub fn check(netns: &str, ifname: &str, ip: Ipv4Addr) -> Result<bool, WireError> {
    let ifname = ifname.to_string();
    in_netns(netns, move || async move {
        let nl = Netlink::connect()?;
        let Some(link) = nl.link_by_name(&ifname).await? else { return Ok(false) };
        let mut addrs = nl.handle().address().get().set_link_index_filter(link.header.index).execute();
        while let Some(msg) = addrs.try_next().await.map_err(nl_err("list addresses"))? {
            if msg.attributes.iter().any(|a| matches!(a, AddressAttribute::Local(IpAddr::V4(a)) if *a == ip)) {
                return Ok(true);
            }
        }
        Ok(false)
    })
}
