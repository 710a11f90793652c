//! The CNI 1.0 result of ADD: interfaces, addresses, routes.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::naming::{GATEWAY, container_mac, format_mac, host_mac, host_veth};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpConfig {
    pub address: String,
    pub interface: usize,
    pub gateway: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub dst: String,
    pub gw: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: serde_json::Value,
}

/// The result for a container at `ip`, wired as `ifname` inside `netns`, told to resolve
/// names with `nameservers` (the cell's DNS responder; runtimes write it into the
/// container's resolv.conf).
pub fn for_container(cni_version: &str, ip: Ipv4Addr, ifname: &str, netns: &str, nameservers: &[String]) -> CniResult {
    CniResult {
        cni_version: cni_version.to_string(),
        interfaces: vec![
            Interface { name: host_veth(ip), mac: format_mac(host_mac(ip)), sandbox: None },
            Interface {
                name: ifname.to_string(),
                mac: format_mac(container_mac(ip)),
                sandbox: Some(netns.to_string()),
            },
        ],
        ips: vec![IpConfig { address: format!("{ip}/32"), interface: 1, gateway: GATEWAY.to_string() }],
        routes: vec![Route { dst: "0.0.0.0/0".into(), gw: GATEWAY.to_string() }],
        dns: if nameservers.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::json!({ "nameservers": nameservers })
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_shape() {
        let r =
            for_container("1.0.0", Ipv4Addr::new(10, 255, 7, 2), "eth0", "/var/run/netns/c1", &["169.254.0.2".into()]);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["interfaces"][0]["name"], "s-010255007002");
        assert!(v["interfaces"][0].get("sandbox").is_none());
        assert_eq!(v["interfaces"][1]["sandbox"], "/var/run/netns/c1");
        assert_eq!(v["ips"][0]["address"], "10.255.7.2/32");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["routes"][0]["gw"], "169.254.0.1");
        assert_eq!(v["dns"]["nameservers"], serde_json::json!(["169.254.0.2"]));
        let none = for_container("1.0.0", Ipv4Addr::new(10, 255, 7, 2), "eth0", "/n", &[]);
        assert_eq!(serde_json::to_value(&none).unwrap()["dns"], serde_json::json!({}));
    }
}
