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

use super::egress::{EgressEntry, Kind};
use super::nf_netlink::{Element, NfNetlink, NfNetlinkError, SetChange};
use super::plan::{Allow, Edge, Forward, Ruleset, RulesetDiff};
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

/// `log group <g> prefix "<what>"`: hands the packet to netagent over nflog; the prefix
/// says which rule matched.
fn log(rs: &Ruleset, what: &str) -> String {
    format!("log group {} prefix \"{what}\" ", rs.log_group)
}

/// `limit rate N/second log ...` for denied packets, when they are logged at all.
fn log_denied(rs: &Ruleset, what: &str) -> Option<String> {
    let per_sec = rs.edge.as_ref()?.logging.denied_per_sec;
    (per_sec > 0).then(|| format!("limit rate {per_sec}/second burst {per_sec} packets {}", log(rs, what)))
}

/// The rules of the `forward` chain: anti-spoofing, no cell addresses, port mappings, then
/// the policies; with an edge, traffic leaving the overlay goes through `egress`.
fn forward_rules(rs: &Ruleset) -> Vec<String> {
    let allowed = |set: &str| {
        let logged = rs.edge.as_ref().is_some_and(|e| e.logging.c2c_accepted);
        let log = if logged { log(rs, LOG_C2C_ACCEPTED) } else { String::new() };
        format!("ip daddr @guarded ct state new ip daddr . meta l4proto . th dport . meta mark @{set} {log}accept")
    };
    let mut rules = vec![
        format!("{FROM_CONTAINER} iifname . ip saddr != @sources drop"),
        format!("{FROM_CONTAINER} ip daddr @cells drop"),
        "ct state established,related accept".into(),
    ];
    if rs.edge.is_some() {
        // Only what a mapping forwarded, only from outside the cell's containers: the
        // router's way in. Policies do not apply to it, as upstream.
        rules.push(format!("ct status dnat {NOT_FROM_CONTAINER} ip daddr . tcp dport @forwarded accept"));
    }
    rules.push("meta mark set ip saddr map @src_tags".into());
    rules.push(allowed("allow"));
    rules.push(allowed("allow_ranges"));
    rules.extend(log_denied(rs, LOG_C2C_DENIED).map(|l| format!("ip daddr @guarded {l}")));
    rules.push("ip daddr @guarded drop".into());
    if let Some(edge) = &rs.edge {
        let (net, prefix) = edge.overlay;
        rules.push(format!("{FROM_CONTAINER} ip daddr != {net}/{prefix} jump egress"));
    }
    rules
}

/// Log prefixes: what netagent's traffic log names as the rule that matched.
pub const LOG_C2C_ACCEPTED: &str = "c2c-accept";
pub const LOG_C2C_DENIED: &str = "c2c-deny";
pub const LOG_EGRESS_ACCEPTED: &str = "egress-accept";
pub const LOG_EGRESS_DENIED: &str = "egress-deny";

/// The egress sets, by kind and whether their entries are logged.
fn egress_set(e: &EgressEntry) -> &'static str {
    match (e.kind, e.log) {
        (Kind::All, false) => "egress_all",
        (Kind::All, true) => "egress_all_log",
        (Kind::Tcp | Kind::Udp, false) => "egress_ports",
        (Kind::Tcp | Kind::Udp, true) => "egress_ports_log",
        (Kind::Icmp, false) => "egress_icmp",
        (Kind::Icmp, true) => "egress_icmp_log",
    }
}

const EGRESS_SETS: [(&str, &str); 6] = [
    ("egress_ports", "mark . ipv4_addr . inet_proto . inet_service"),
    ("egress_ports_log", "mark . ipv4_addr . inet_proto . inet_service"),
    ("egress_icmp", "mark . ipv4_addr . icmp_type . icmp_code"),
    ("egress_icmp_log", "mark . ipv4_addr . icmp_type . icmp_code"),
    ("egress_all", "mark . ipv4_addr"),
    ("egress_all_log", "mark . ipv4_addr"),
];

/// The `egress` chain: a container's new connections out of the overlay, accepted when an
/// entry of its class allows them, rejected otherwise. Lookups are in sets, so the cost per
/// packet does not grow with the number of rules.
fn egress_rules(rs: &Ruleset, edge: &Edge) -> Vec<String> {
    let mut rules = Vec::new();
    if let Some(dns) = elements(rs.host.dns.iter().map(|ip| ip.to_string())) {
        rules.push(format!("ip daddr {{ {dns} }} meta l4proto {{ tcp, udp }} th dport 53 accept"));
    }
    rules.push("meta mark set 0".into());
    rules.push("meta mark set ip saddr map @egress_class".into());
    let always = log(rs, LOG_EGRESS_ACCEPTED);
    let unflagged = if edge.logging.egress_accepted { always.clone() } else { String::new() };
    for (set, log) in [("", &unflagged), ("_log", &always)] {
        rules.push(format!("meta mark . ip daddr . meta l4proto . th dport @egress_ports{set} {log}accept"));
        rules.push(format!(
            "meta l4proto icmp meta mark . ip daddr . icmp type . icmp code @egress_icmp{set} {log}accept"
        ));
        rules.push(format!("meta mark . ip daddr @egress_all{set} {log}accept"));
    }
    rules.extend(log_denied(rs, LOG_EGRESS_DENIED));
    rules.push("reject with icmp type port-unreachable".into());
    rules
}

/// Port mappings in (`prerouting`) and masquerading out (`postrouting`).
fn nat_rules(edge: &Edge) -> [Vec<String>; 2] {
    let (net, prefix) = edge.no_masquerade;
    [
        vec![format!("{NOT_FROM_CONTAINER} ip daddr {} dnat ip to tcp dport map @forwards", edge.cell_ip)],
        vec![format!(
            "ip saddr @guarded ip daddr != {net}/{prefix} oifname != \"{}\" oifname != \"s-*\" masquerade",
            edge.vtep
        )],
    ]
}

/// Matches packets that do not come from a container.
const NOT_FROM_CONTAINER: &str = "iifname != \"s-*\"";

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
    let mut chains = vec![
        ("input", Some("filter hook input priority -10"), input_rules(rs)),
        ("forward", Some("filter hook forward priority -10"), forward_rules(rs)),
    ];
    if let Some(edge) = &rs.edge {
        let _ = writeln!(s, "  map egress_class {{ type ipv4_addr : mark; }}");
        for (set, kind) in EGRESS_SETS {
            let _ = writeln!(s, "  set {set} {{ type {kind}; flags interval; }}");
        }
        let _ = writeln!(s, "  map forwards {{ type inet_service : ipv4_addr . inet_service; }}");
        let _ = writeln!(s, "  set forwarded {{ type ipv4_addr . inet_service; }}");
        let [pre, post] = nat_rules(edge);
        chains.push(("egress", None, egress_rules(rs, edge)));
        chains.push(("prerouting", Some("nat hook prerouting priority dstnat"), pre));
        chains.push(("postrouting", Some("nat hook postrouting priority srcnat"), post));
    }
    for (chain, hook, rules) in chains {
        let _ = writeln!(s, "  chain {chain} {{");
        if let Some(hook) = hook {
            let _ = writeln!(s, "    type {hook}; policy accept;");
        }
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
    if let Some(e) = elements(rs.egress_classes.iter().map(|(ip, class)| format!("{ip} : 0x{class:x}"))) {
        let _ = writeln!(s, "add element ip {TABLE} egress_class {{ {e} }}");
    }
    for (set, _) in EGRESS_SETS {
        if let Some(e) = elements(rs.egress.iter().filter(|e| egress_set(e) == set).map(egress_text)) {
            let _ = writeln!(s, "add element ip {TABLE} {set} {{ {e} }}");
        }
    }
    if let Some(e) = elements(rs.forwards.iter().map(|f| format!("{} : {} . {}", f.host_port, f.ip, f.port))) {
        let _ = writeln!(s, "add element ip {TABLE} forwards {{ {e} }}");
    }
    if let Some(e) = elements(rs.forwards.iter().map(|f| format!("{} . {}", f.ip, f.port))) {
        let _ = writeln!(s, "add element ip {TABLE} forwarded {{ {e} }}");
    }
    s
}

fn egress_text(e: &EgressEntry) -> String {
    let range = |lo: String, hi: String| if lo == hi { lo } else { format!("{lo}-{hi}") };
    let head = format!("0x{:x} . {}", e.class, range(e.first.to_string(), e.last.to_string()));
    match e.kind {
        Kind::All => head,
        Kind::Tcp | Kind::Udp => {
            let proto = if e.kind == Kind::Tcp { "tcp" } else { "udp" };
            format!("{head} . {proto} . {}", range(e.lo.to_string(), e.hi.to_string()))
        }
        Kind::Icmp => format!(
            "{head} . {} . {}",
            range(e.lo.to_string(), e.hi.to_string()),
            range(e.code_lo.to_string(), e.code_hi.to_string())
        ),
    }
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

/// Each field of a concatenation in its own 4-byte register.
fn register(bytes: &[u8]) -> [u8; 4] {
    let mut r = [0u8; 4];
    r[..bytes.len()].copy_from_slice(bytes);
    r
}

/// An egress entry: every field a range (the class and the kind's protocol exact), the
/// class compared in network order as in any interval set.
fn egress_element(e: &EgressEntry) -> (&'static str, Element) {
    let key = |ip: Ipv4Addr, a: u16, b: u8| {
        let mut k = Vec::with_capacity(16);
        k.extend_from_slice(&e.class.to_be_bytes());
        k.extend_from_slice(&ip.octets());
        match e.kind {
            Kind::All => {}
            Kind::Tcp | Kind::Udp => {
                k.extend_from_slice(&register(&[if e.kind == Kind::Tcp { 6 } else { 17 }]));
                k.extend_from_slice(&register(&a.to_be_bytes()));
            }
            Kind::Icmp => {
                k.extend_from_slice(&register(&[a as u8]));
                k.extend_from_slice(&register(&[b]));
            }
        }
        k
    };
    let element =
        Element { key: key(e.first, e.lo, e.code_lo), key_end: Some(key(e.last, e.hi, e.code_hi)), data: None };
    (egress_set(e), element)
}

fn class_element(ip: &Ipv4Addr, class: u32) -> Element {
    Element { key: ip.octets().to_vec(), key_end: None, data: Some(class.to_ne_bytes().to_vec()) }
}

/// `inet_service : ipv4_addr . inet_service`: the host port alone (2 bytes), the target in
/// two registers.
fn forward_element(f: &Forward) -> Element {
    let mut data = f.ip.octets().to_vec();
    data.extend_from_slice(&register(&f.port.to_be_bytes()));
    Element { key: f.host_port.to_be_bytes().to_vec(), key_end: None, data: Some(data) }
}

fn forwarded_element(f: &Forward) -> Element {
    let mut key = f.ip.octets().to_vec();
    key.extend_from_slice(&register(&f.port.to_be_bytes()));
    Element { key, key_end: None, data: None }
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
    let egress = |add: bool, list: &[EgressEntry]| {
        EGRESS_SETS.map(|(set, _)| {
            let mine = list.iter().map(egress_element).filter(|(s, _)| *s == set).map(|(_, e)| e).collect();
            change(set, add, mine)
        })
    };
    let edge = [
        egress(false, &d.remove_egress).to_vec(),
        vec![
            change("egress_class", false, d.remove_classes.iter().map(address).collect()),
            change(
                "forwards",
                false,
                d.remove_forwards
                    .iter()
                    .map(|f| Element { key: f.host_port.to_be_bytes().to_vec(), key_end: None, data: None })
                    .collect(),
            ),
            change("forwarded", false, d.remove_forwards.iter().map(forwarded_element).collect()),
            change("forwarded", true, d.add_forwards.iter().map(forwarded_element).collect()),
            change("forwards", true, d.add_forwards.iter().map(forward_element).collect()),
            change("egress_class", true, d.add_classes.iter().map(|(ip, c)| class_element(ip, *c)).collect()),
        ],
        egress(true, &d.add_egress).to_vec(),
    ]
    .concat();
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
    .chain(edge)
    .flatten()
    .collect()
}

/// Whether the kernel holds `rs` as far as counting tells: the table with its rules, and
/// as many elements in each set as `rs` puts there.
fn holds(nl: &mut NfNetlink, rs: &Ruleset) -> Result<bool, NfNetlinkError> {
    if nl.count_rules(TABLE, "forward")? != forward_rules(rs).len()
        || nl.count_rules(TABLE, "input")? != input_rules(rs).len()
    {
        return Ok(false);
    }
    let ranges = rs.allows.iter().filter(|a| a.start != a.end).count();
    let mut counts = vec![
        ("src_tags", rs.marks.len()),
        ("guarded", rs.guarded.len()),
        ("sources", rs.guarded.len()),
        ("cells", rs.cells.len()),
        ("allow", rs.allows.len() - ranges),
        ("allow_ranges", ranges),
    ];
    if let Some(edge) = &rs.edge {
        let [pre, post] = nat_rules(edge);
        if nl.count_rules(TABLE, "egress")? != egress_rules(rs, edge).len()
            || nl.count_rules(TABLE, "prerouting")? != pre.len()
            || nl.count_rules(TABLE, "postrouting")? != post.len()
        {
            return Ok(false);
        }
        counts.push(("egress_class", rs.egress_classes.len()));
        counts.push(("forwards", rs.forwards.len()));
        counts.push(("forwarded", rs.forwards.len()));
        for (set, _) in EGRESS_SETS {
            counts.push((set, rs.egress.iter().filter(|e| egress_set(e) == set).count()));
        }
    }
    for (set, n) in counts {
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
            if current.host != desired.host || current.edge != desired.edge || current.log_group != desired.log_group {
                // What containers may reach on the host, the cell's edge and logging are
                // written in rules, not sets.
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
