//! Names and MAC addresses derived from a container's overlay address, as Silk derives them,
//! so an operator reading `ip link` on a cell knows which container a device belongs to.

use std::net::Ipv4Addr;

/// Host side of a container's veth: `s-` and each octet zero-padded to three digits
/// (`10.255.73.3` → `s-010255073003`, 14 characters, within the 15 the kernel allows).
pub fn host_veth(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("s-{:03}{:03}{:03}{:03}", o[0], o[1], o[2], o[3])
}

/// The container end's name before it is moved into the container and renamed.
pub fn temporary_container_veth(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("c-{:03}{:03}{:03}{:03}", o[0], o[1], o[2], o[3])
}

/// Host side MAC: `aa:aa` and the address bytes.
pub fn host_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0xaa, 0xaa, o[0], o[1], o[2], o[3]]
}

/// Container side MAC (and a VTEP's MAC for its subnet address): `ee:ee` and the bytes.
pub fn container_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0xee, 0xee, o[0], o[1], o[2], o[3]]
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The link-local address every container's default route goes through.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);

/// Interface names the kernel accepts: 1–15 bytes, no `/`, no whitespace, not `.`/`..`.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.bytes().any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs_follow_silk() {
        let ip = Ipv4Addr::new(10, 255, 73, 3);
        assert_eq!(host_veth(ip), "s-010255073003");
        assert_eq!(temporary_container_veth(ip), "c-010255073003");
        assert_eq!(format_mac(host_mac(ip)), "aa:aa:0a:ff:49:03");
        assert_eq!(format_mac(container_mac(ip)), "ee:ee:0a:ff:49:03");
        assert!(valid_ifname(&host_veth(Ipv4Addr::new(255, 255, 255, 255))));
    }

    #[test]
    fn interface_names() {
        assert!(valid_ifname("eth0"));
        assert!(!valid_ifname(""));
        assert!(!valid_ifname("a-name-that-is-too-long"));
        assert!(!valid_ifname("a/b"));
        assert!(!valid_ifname(".."));
        assert!(!valid_ifname("a b"));
    }
}
