//! The nftables backend: one table of its own (`ip c2c`) with a verdict on a concatenated
//! set, so the cost per packet does not grow with the number of policies. Every change is
//! one transaction: the added and removed set elements only, committed over netlink (see
//! `nf_netlink`), or an atomic replacement of the whole table through `nft -f` when it was
//! never installed or someone changed it (drift repair).
//!
//! nft's text syntax is used for the table rather than its JSON: concatenations with
//! intervals and verdict rules are far clearer in it, and `nft -f` applies a script as one
//! transaction either way.

use std::fmt::Write as _;

use std::net::Ipv4Addr;

use super::nf_netlink::{Element, NfNetlink, NfNetlinkError, SetChange};
use super::plan::{Allow, Ruleset, RulesetDiff};
use super::{Applied, EnforceError};
use crate::naming::host_veth;

pub const TABLE: &str = "c2c";

fn allow_text(a: &Allow) -> String {
    let ports = if a.start == a.end { a.start.to_string() } else { format!("{}-{}", a.start, a.end) };
    format!("{} . {} . {} . 0x{:x}", a.dst, a.proto.as_str(), ports, a.tag)
}

/// Single-port entries go to a hash set (constant cost per packet, whatever its size); only
/// real ranges go to the interval set.
fn set_of(a: &Allow) -> &'static str {
    if a.start == a.end { "allow" } else { "allow_ranges" }
}

fn allow_lines(verb: &str, allows: &[Allow]) -> String {
    let mut s = String::new();
    for set in ["allow", "allow_ranges"] {
        if let Some(e) = elements(allows.iter().filter(|a| set_of(a) == set).map(allow_text)) {
            let _ = writeln!(s, "{verb} element ip {TABLE} {set} {{ {e} }}");
        }
    }
    s
}

fn elements<I: IntoIterator<Item = String>>(items: I) -> Option<String> {
    let v: Vec<String> = items.into_iter().collect();
    if v.is_empty() { None } else { Some(v.join(", ")) }
}

/// Matches packets that come from a container (the host ends of container veths).
const FROM_CONTAINER: &str = "iifname \"s-*\"";

/// The rules of the `input` chain: what containers may reach on the cell itself.
fn input_rules(rs: &Ruleset) -> Vec<String> {
    let mut rules = vec![
        format!("{FROM_CONTAINER} iifname . ip saddr != @sources drop"),
        format!("{FROM_CONTAINER} ct state established,related accept"),
    ];
    if let Some(dns) = elements(rs.host.dns.iter().map(|ip| ip.to_string())) {
        rules.push(format!("{FROM_CONTAINER} ip daddr {{ {dns} }} meta l4proto {{ tcp, udp }} th dport 53 accept"));
    }
    if let Some(ports) = elements(rs.host.tcp_ports.iter().map(|p| p.to_string())) {
        rules.push(format!("{FROM_CONTAINER} tcp dport {{ {ports} }} accept"));
    }
    rules.push(format!("{FROM_CONTAINER} drop"));
    rules
}

/// The rules of the `forward` chain: anti-spoofing, no cell addresses, then the policies.
fn forward_rules() -> Vec<String> {
    vec![
        format!("{FROM_CONTAINER} iifname . ip saddr != @sources drop"),
        format!("{FROM_CONTAINER} ip daddr @cells drop"),
        "ct state established,related accept".into(),
        "meta mark set ip saddr map @src_tags".into(),
        "ip daddr @guarded ct state new ip daddr . meta l4proto . th dport . meta mark @allow accept".into(),
        "ip daddr @guarded ct state new ip daddr . meta l4proto . th dport . meta mark @allow_ranges accept".into(),
        "ip daddr @guarded drop".into(),
    ]
}

/// The whole table, replacing any previous one in the same transaction.
pub fn full_script(rs: &Ruleset) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "add table ip {TABLE}");
    let _ = writeln!(s, "delete table ip {TABLE}");
    let _ = writeln!(s, "table ip {TABLE} {{");
    let _ = writeln!(s, "  map src_tags {{ type ipv4_addr : mark; }}");
    let _ = writeln!(s, "  set guarded {{ type ipv4_addr; }}");
    let _ = writeln!(s, "  set sources {{ type ifname . ipv4_addr; }}");
    let _ = writeln!(s, "  set cells {{ type ipv4_addr; }}");
    let _ = writeln!(s, "  set allow {{ type ipv4_addr . inet_proto . inet_service . mark; }}");
    let _ = writeln!(s, "  set allow_ranges {{ type ipv4_addr . inet_proto . inet_service . mark; flags interval; }}");
    for (chain, hook, rules) in [("input", "input", input_rules(rs)), ("forward", "forward", forward_rules())] {
        let _ = writeln!(s, "  chain {chain} {{");
        let _ = writeln!(s, "    type filter hook {hook} priority -10; policy accept;");
        for rule in rules {
            let _ = writeln!(s, "    {rule}");
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(s, "}}");
    if let Some(e) = elements(rs.marks.iter().map(|(ip, tag)| format!("{ip} : 0x{tag:x}"))) {
        let _ = writeln!(s, "add element ip {TABLE} src_tags {{ {e} }}");
    }
    if let Some(e) = elements(rs.guarded.iter().map(|ip| ip.to_string())) {
        let _ = writeln!(s, "add element ip {TABLE} guarded {{ {e} }}");
    }
    if let Some(e) = elements(rs.guarded.iter().map(|ip| format!("\"{}\" . {ip}", host_veth(*ip)))) {
        let _ = writeln!(s, "add element ip {TABLE} sources {{ {e} }}");
    }
    if let Some(e) = elements(rs.cells.iter().map(|ip| ip.to_string())) {
        let _ = writeln!(s, "add element ip {TABLE} cells {{ {e} }}");
    }
    let allows: Vec<Allow> = rs.allows.iter().copied().collect();
    s.push_str(&allow_lines("add", &allows));
    s
}

/// Runs a script through `nft -f -` (one transaction).
pub fn run(script: &str) -> Result<(), EnforceError> {
    if script.is_empty() {
        return Ok(());
    }
    super::feed("nft", &["-f", "-"], "nftables", script)
}

/// Key bytes as nf_tables lays out `ipv4_addr . inet_proto . inet_service . mark`: each
/// field in its own 4-byte register, the address and port in network order. The mark is a
/// host-order integer, except in an interval set, where nft compares it in network order
/// (its rule converts the packet's mark before the lookup).
fn allow_key(a: &Allow, port: u16, interval: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&a.dst.octets());
    k.extend_from_slice(&[a.proto.number(), 0, 0, 0]);
    k.extend_from_slice(&port.to_be_bytes());
    k.extend_from_slice(&[0, 0]);
    let mark = u32::from(a.tag);
    k.extend_from_slice(&if interval { mark.to_be_bytes() } else { mark.to_ne_bytes() });
    k
}

fn allow_element(a: &Allow) -> (&'static str, Element) {
    if a.start == a.end {
        ("allow", Element { key: allow_key(a, a.start, false), key_end: None, data: None })
    } else {
        let key_end = Some(allow_key(a, a.end, true));
        ("allow_ranges", Element { key: allow_key(a, a.start, true), key_end, data: None })
    }
}

fn address(ip: &Ipv4Addr) -> Element {
    Element { key: ip.octets().to_vec(), key_end: None, data: None }
}

/// `ifname . ipv4_addr`: the name NUL-padded to IFNAMSIZ (16 bytes, four registers), then
/// the address.
fn source(ip: &Ipv4Addr) -> Element {
    let mut key = host_veth(*ip).into_bytes();
    key.resize(16, 0);
    key.extend_from_slice(&ip.octets());
    Element { key, key_end: None, data: None }
}

fn mark(ip: &Ipv4Addr, tag: u16) -> Element {
    Element { key: ip.octets().to_vec(), key_end: None, data: Some(u32::from(tag).to_ne_bytes().to_vec()) }
}

/// The difference as set-element changes, in the order `diff_script` uses.
pub fn changes(d: &RulesetDiff) -> Vec<SetChange> {
    fn change(set: &'static str, add: bool, elements: Vec<Element>) -> Option<SetChange> {
        (!elements.is_empty()).then_some(SetChange { set, add, elements })
    }
    let allows = |add: bool, list: &[Allow]| {
        ["allow", "allow_ranges"].map(|set| {
            change(set, add, list.iter().map(allow_element).filter(|(s, _)| *s == set).map(|(_, e)| e).collect())
        })
    };
    let [remove_single, remove_ranges] = allows(false, &d.remove_allows);
    let [add_single, add_ranges] = allows(true, &d.add_allows);
    [
        remove_single,
        remove_ranges,
        change("src_tags", false, d.remove_marks.iter().map(address).collect()),
        change("guarded", false, d.remove_guarded.iter().map(address).collect()),
        change("sources", false, d.remove_guarded.iter().map(source).collect()),
        change("cells", false, d.remove_cells.iter().map(address).collect()),
        change("cells", true, d.add_cells.iter().map(address).collect()),
        change("sources", true, d.add_guarded.iter().map(source).collect()),
        change("guarded", true, d.add_guarded.iter().map(address).collect()),
        change("src_tags", true, d.add_marks.iter().map(|(ip, tag)| mark(ip, *tag)).collect()),
        add_single,
        add_ranges,
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Whether the kernel holds `rs` as far as counting tells: the table with its rules, and
/// as many elements in each set as `rs` puts there.
fn holds(nl: &mut NfNetlink, rs: &Ruleset) -> Result<bool, NfNetlinkError> {
    if nl.count_rules(TABLE, "forward")? != forward_rules().len()
        || nl.count_rules(TABLE, "input")? != input_rules(rs).len()
    {
        return Ok(false);
    }
    let ranges = rs.allows.iter().filter(|a| a.start != a.end).count();
    for (set, n) in [
        ("src_tags", rs.marks.len()),
        ("guarded", rs.guarded.len()),
        ("sources", rs.guarded.len()),
        ("cells", rs.cells.len()),
        ("allow", rs.allows.len() - ranges),
        ("allow_ranges", ranges),
    ] {
        if nl.count_elements(TABLE, set)? != Some(n) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Keeps the kernel equal to the desired ruleset with as little work as possible.
///
/// What is installed is trusted while the kernel's ruleset generation stays where this
/// enforcer left it (no one changed any table since), so a round with nothing to do costs
/// one netlink request. When the generation moved, the table is counted first; when it no
/// longer holds what was installed, it is replaced whole.
#[derive(Debug, Default)]
pub struct Enforcer {
    installed: Option<Ruleset>,
    /// The generation at which the kernel was known to hold `installed`.
    verified: Option<u32>,
    /// Kept open: closing a nf_tables netlink socket can wait for an RCU grace period
    /// (measured: up to 11 ms), twice the cost of the change itself.
    socket: Option<NfNetlink>,
}

impl Enforcer {
    pub fn new() -> Self {
        Enforcer::default()
    }

    /// Brings the kernel to `desired`. The first call fixes the network namespace the
    /// enforcer works in (the calling thread's).
    pub fn reconcile(&mut self, desired: &Ruleset) -> Result<Applied, EnforceError> {
        let mut nl = match self.socket.take() {
            Some(nl) => nl,
            None => NfNetlink::open()?,
        };
        let result = self.reconcile_with(&mut nl, desired);
        // A socket that failed may hold stray replies: start afresh next time.
        if !matches!(result, Err(EnforceError::Netlink(_))) {
            self.socket = Some(nl);
        }
        result
    }

    fn reconcile_with(&mut self, nl: &mut NfNetlink, desired: &Ruleset) -> Result<Applied, EnforceError> {
        // A change someone else commits between our check and our batch makes the kernel
        // refuse the batch; then look again (a few times at most).
        for _ in 0..3 {
            let generation = nl.generation()?;
            let Some(current) = &self.installed else { break };
            if self.verified != Some(generation) && !holds(nl, current)? {
                break;
            }
            self.verified = Some(generation);
            if current.host != desired.host {
                // What containers may reach on the host is written in rules, not sets.
                break;
            }
            let d = super::plan::diff(current, desired);
            if d.is_empty() {
                return Ok(Applied::Nothing);
            }
            match nl.commit(TABLE, &changes(&d), Some(generation)) {
                Ok(()) => {
                    self.installed = Some(desired.clone());
                    self.verified = Some(generation.wrapping_add(1)).filter(|g| nl.generation().ok() == Some(*g));
                    return Ok(Applied::Diff);
                }
                Err(NfNetlinkError::GenerationMoved) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "applying the difference failed; replacing the table");
                    break;
                }
            }
        }
        let before = nl.generation()?;
        run(&full_script(desired))?;
        self.installed = Some(desired.clone());
        self.verified = Some(before.wrapping_add(1)).filter(|g| nl.generation().ok() == Some(*g));
        Ok(Applied::Full)
    }

    /// Removes the table (the cell stops enforcing).
    pub fn remove(&mut self) -> Result<(), EnforceError> {
        self.installed = None;
        self.verified = None;
        run(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforcement::plan::Proto;

    #[test]
    fn scripts() {
        let rs = crate::enforcement::plan::a_to_b(8080, 8090);
        let full = full_script(&rs);
        assert!(full.contains("add element ip c2c src_tags { 10.255.1.2 : 0x1 }"), "{full}");
        assert!(full.contains("add element ip c2c allow_ranges { 10.255.1.3 . tcp . 8080-8090 . 0x1 }"), "{full}");
        assert!(full.starts_with("add table ip c2c\ndelete table ip c2c\n"), "atomic replacement");
        assert!(full.contains("add element ip c2c sources { \"s-010255001002\" . 10.255.1.2, "), "{full}");
        assert!(full.contains("    iifname \"s-*\" iifname . ip saddr != @sources drop\n"), "{full}");
        assert!(full.contains("    iifname \"s-*\" drop\n  }"), "containers reach nothing else of the cell: {full}");
        assert!(!full.contains("th dport 53"), "no resolver configured, no DNS: {full}");
        let mut rs = rs;
        rs.host.dns.insert(Ipv4Addr::new(169, 254, 0, 2));
        rs.host.tcp_ports.insert(8853);
        rs.cells.insert(Ipv4Addr::new(10, 0, 0, 1));
        let full = full_script(&rs);
        assert!(full.contains("ip daddr { 169.254.0.2 } meta l4proto { tcp, udp } th dport 53 accept"), "{full}");
        assert!(full.contains("tcp dport { 8853 } accept"), "{full}");
        assert!(full.contains("add element ip c2c cells { 10.0.0.1 }"), "{full}");
    }

    fn allow(port: u16, end: u16, tag: u16) -> Allow {
        Allow { dst: Ipv4Addr::new(10, 255, 1, 9), proto: Proto::Tcp, start: port, end, tag }
    }

    /// The bytes `nft --debug=netlink add element ...` sends for the same elements.
    #[test]
    #[cfg(target_endian = "little")]
    fn element_layout_matches_nft() {
        let (set, e) = allow_element(&allow(9999, 9999, 0xfde8));
        assert_eq!(set, "allow");
        assert_eq!(e.key, [10, 255, 1, 9, 6, 0, 0, 0, 0x27, 0x0f, 0, 0, 0xe8, 0xfd, 0, 0]);
        assert_eq!(e.key_end, None);
        let (set, e) = allow_element(&Allow { proto: Proto::Udp, ..allow(9000, 9999, 0x12) });
        assert_eq!(set, "allow_ranges");
        assert_eq!(e.key, [10, 255, 1, 9, 17, 0, 0, 0, 0x23, 0x28, 0, 0, 0, 0, 0, 0x12]);
        assert_eq!(e.key_end.unwrap(), [10, 255, 1, 9, 17, 0, 0, 0, 0x27, 0x0f, 0, 0, 0, 0, 0, 0x12]);
        let m = mark(&Ipv4Addr::new(10, 255, 1, 9), 0x1234);
        assert_eq!((m.key, m.data.unwrap()), (vec![10, 255, 1, 9], vec![0x34, 0x12, 0, 0]));
        let src = source(&Ipv4Addr::new(10, 255, 1, 9));
        assert_eq!(&src.key[..14], b"s-010255001009");
        assert_eq!(src.key[14..], [0, 0, 10, 255, 1, 9]);
    }

    #[test]
    fn changes_remove_before_they_add_and_skip_empty_sets() {
        let ip = Ipv4Addr::new(10, 255, 1, 9);
        let d = RulesetDiff {
            add_marks: vec![(ip, 2)],
            remove_marks: vec![ip],
            add_allows: vec![allow(80, 80, 2), allow(80, 90, 2)],
            remove_allows: vec![allow(81, 81, 1)],
            ..RulesetDiff::default()
        };
        let order: Vec<(&str, bool, usize)> = changes(&d).iter().map(|c| (c.set, c.add, c.elements.len())).collect();
        assert_eq!(
            order,
            [
                ("allow", false, 1),
                ("src_tags", false, 1),
                ("src_tags", true, 1),
                ("allow", true, 1),
                ("allow_ranges", true, 1)
            ]
        );
        assert!(changes(&RulesetDiff::default()).is_empty());
    }
}
