//! The iptables backend, for hosts that must use iptables: upstream's layout (a timestamped
//! `vpa--<µs>` chain in `filter`, jumped from position 1 of `FORWARD`; MARK rules for local
//! sources, then ACCEPT rules by destination, protocol, port range and mark), written as a
//! whole new chain make-before-break in one `iptables-restore --noflush` transaction, as the
//! upstream agent does. Established flows are accepted first and everything else addressed
//! to a local container is dropped, the same behaviour as the nftables backend. In front of
//! the policies: a packet from a container's interface must carry its address, and may not
//! go to any cell's underlay or VTEP address. A second chain, `c2c-in--<µs>`, jumped from
//! `INPUT`, keeps containers off their own cell but for DNS and the operator's host ports
//! (upstream's `input--<handle>` chains). Both chains change in one transaction.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use super::egress::{EgressEntry, Kind};
use super::nftables::{LOG_C2C_ACCEPTED, LOG_C2C_DENIED, LOG_EGRESS_ACCEPTED, LOG_EGRESS_DENIED};
use super::plan::{Edge, Ruleset};
use super::{Applied, EnforceError};
use crate::naming::host_veth;

pub const PREFIX: &str = "vpa--";
pub const INPUT_PREFIX: &str = "c2c-in--";
/// Containers' traffic out of the overlay (filter), port mappings (nat, from PREROUTING)
/// and masquerading (nat, from POSTROUTING).
pub const EGRESS_PREFIX: &str = "c2c-out--";
pub const DNAT_PREFIX: &str = "c2c-dnat--";
pub const SNAT_PREFIX: &str = "c2c-snat--";
/// Anti-spoofing and the cell addresses, each in a chain only container traffic jumps to:
/// everything else (replies from the underlay, traffic the router sends in) skips their
/// thousands of rules in one, and the cell addresses are looked at for new connections only.
pub const GUARD_PREFIX: &str = "c2c-guard--";
pub const CELLS_PREFIX: &str = "c2c-cells--";

fn ours(chain: &str) -> bool {
    [PREFIX, INPUT_PREFIX, EGRESS_PREFIX, DNAT_PREFIX, SNAT_PREFIX, GUARD_PREFIX, CELLS_PREFIX]
        .iter()
        .any(|p| chain.starts_with(p))
}

/// The names of one installation's chains.
struct Chains {
    forward: String,
    input: String,
    guard: String,
    cells: String,
    egress: String,
}

impl Chains {
    fn of(stamp: u128) -> Chains {
        Chains {
            forward: format!("{PREFIX}{stamp}"),
            input: format!("{INPUT_PREFIX}{stamp}"),
            guard: format!("{GUARD_PREFIX}{stamp}"),
            cells: format!("{CELLS_PREFIX}{stamp}"),
            egress: format!("{EGRESS_PREFIX}{stamp}"),
        }
    }
}

/// Our chains jumped from the built-in chain `hook` of `table`.
fn chains_in(table: &str, hook: &str) -> Vec<String> {
    let Ok(out) = Command::new("iptables").args(["-w", "-t", table, "-S", hook]).output() else { return Vec::new() };
    let jump = format!("-A {hook} -j ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(jump.as_str()))
        .filter(|c| ours(c))
        .map(str::to_string)
        .collect()
}

/// Every chain of ours in `table`, hooked or not.
fn all_chains(table: &str) -> Vec<String> {
    let Ok(out) = Command::new("iptables").args(["-w", "-t", table, "-S"]).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| ours(c))
        .map(str::to_string)
        .collect()
}

fn nflog(rs: &Ruleset, prefix: &str) -> String {
    format!("-j NFLOG --nflog-group {} --nflog-prefix {prefix}", rs.log_group)
}

fn limited(per_sec: u32) -> String {
    format!("-m limit --limit {per_sec}/sec --limit-burst {per_sec}")
}

/// The match of an egress entry.
fn egress_matches(e: &EgressEntry) -> Vec<String> {
    let dst = format!("-m iprange --dst-range {}-{}", e.first, e.last);
    match e.kind {
        Kind::All => vec![dst],
        Kind::Tcp | Kind::Udp => {
            let p = if e.kind == Kind::Tcp { "tcp" } else { "udp" };
            vec![format!("{dst} -p {p} -m {p} --dport {}:{}", e.lo, e.hi)]
        }
        Kind::Icmp if e.lo == 0 && e.hi == 255 => vec![format!("{dst} -p icmp")],
        Kind::Icmp if e.code_lo == 0 && e.code_hi == 255 => {
            (e.lo..=e.hi).map(|t| format!("{dst} -p icmp -m icmp --icmp-type {t}")).collect()
        }
        Kind::Icmp => (e.lo..=e.hi)
            .flat_map(|t| (e.code_lo..=e.code_hi).map(move |c| (t, c)))
            .map(|(t, c)| format!("{dst} -p icmp -m icmp --icmp-type {t}/{c}"))
            .collect(),
    }
}

/// The egress chain: per container, the entries of its class; then the reject.
pub fn egress_rules(chain: &str, rs: &Ruleset, edge: &Edge) -> Vec<String> {
    let mut out = Vec::new();
    for ip in &rs.host.dns {
        for proto in ["udp", "tcp"] {
            out.push(format!("-A {chain} -d {ip}/32 -p {proto} -m {proto} --dport 53 -j ACCEPT"));
        }
    }
    for (ip, class) in &rs.egress_classes {
        for e in rs.egress.iter().filter(|e| e.class == *class) {
            for m in egress_matches(e) {
                if e.log || edge.logging.egress_accepted {
                    out.push(format!("-A {chain} -s {ip}/32 {m} {}", nflog(rs, LOG_EGRESS_ACCEPTED)));
                }
                out.push(format!("-A {chain} -s {ip}/32 {m} -j ACCEPT"));
            }
        }
    }
    if edge.logging.denied_per_sec > 0 {
        out.push(format!("-A {chain} {} {}", limited(edge.logging.denied_per_sec), nflog(rs, LOG_EGRESS_DENIED)));
    }
    out.push(format!("-A {chain} -j REJECT --reject-with icmp-port-unreachable"));
    out
}

/// The nat chains: port mappings, and masquerading each container.
pub fn nat_rules(dnat: &str, snat: &str, rs: &Ruleset, edge: &Edge) -> Vec<String> {
    let mut out: Vec<String> = rs
        .forwards
        .iter()
        .map(|f| {
            format!(
                "-A {dnat} ! -i {FROM_CONTAINERS} -d {}/32 -p tcp -m tcp --dport {} -j DNAT --to-destination {}:{}",
                edge.cell_ip, f.host_port, f.ip, f.port
            )
        })
        .collect();
    let (net, prefix) = edge.no_masquerade;
    // Container to container on this cell keeps its source, whatever the range says.
    out.push(format!("-A {snat} -o {FROM_CONTAINERS} -j RETURN"));
    // Only this cell's containers send from the overlay out of this cell: one rule.
    let (overlay, overlay_prefix) = edge.overlay;
    out.push(format!("-A {snat} -s {overlay}/{overlay_prefix} ! -d {net}/{prefix} ! -o {} -j MASQUERADE", edge.vtep));
    out
}

/// A packet from a container's interface that does not carry the container's address.
fn spoof_drops(chain: &str, rs: &Ruleset) -> Vec<String> {
    rs.guarded.iter().map(|ip| format!("-A {chain} -i {} ! -s {ip}/32 -j DROP", host_veth(*ip))).collect()
}

/// A container's new connection to any cell's underlay or VTEP address.
fn cell_drops(chain: &str, rs: &Ruleset) -> Vec<String> {
    rs.cells.iter().map(|ip| format!("-A {chain} -d {ip}/32 -j DROP")).collect()
}

fn rule_count(table: &str, chain: &str) -> Option<usize> {
    let out = Command::new("iptables").args(["-w", "-t", table, "-S", chain]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("-A ")).count())
}

/// The rules of the forward chain: the guard, the established accept, the cell addresses,
/// then upstream's order (marks, then accepts) and the drops.
fn rules(names: &Chains, rs: &Ruleset) -> Vec<String> {
    let chain = &names.forward;
    let mut out = vec![format!("-A {chain} -i {FROM_CONTAINERS} -j {}", names.guard)];
    out.push(format!("-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"));
    out.push(format!("-A {chain} -i {FROM_CONTAINERS} -j {}", names.cells));
    for f in &rs.forwards {
        out.push(format!(
            "-A {chain} ! -i {FROM_CONTAINERS} -d {}/32 -p tcp -m tcp --dport {} -m conntrack --ctstate DNAT -j ACCEPT",
            f.ip, f.port
        ));
    }
    for (ip, tag) in &rs.marks {
        out.push(format!("-A {chain} -i {} -s {ip}/32 -j MARK --set-xmark 0x{tag:x}/0xffffffff", host_veth(*ip)));
    }
    let logging = rs.edge.as_ref().map(|e| e.logging).unwrap_or_default();
    for a in &rs.allows {
        let proto = a.proto.as_str();
        let m =
            format!("-d {}/32 -p {proto} -m {proto} --dport {}:{} -m mark --mark 0x{:x}", a.dst, a.start, a.end, a.tag);
        if logging.c2c_accepted {
            out.push(format!("-A {chain} {m} -m conntrack --ctstate NEW {}", nflog(rs, LOG_C2C_ACCEPTED)));
        }
        out.push(format!("-A {chain} {m} -j ACCEPT"));
    }
    if logging.denied_per_sec > 0 && !rs.guarded.is_empty() {
        out.push(format!(
            "-A {chain} -o {FROM_CONTAINERS} {} {}",
            limited(logging.denied_per_sec),
            nflog(rs, LOG_C2C_DENIED)
        ));
    }
    for ip in &rs.guarded {
        out.push(format!("-A {chain} -d {ip}/32 -j DROP"));
    }
    out
}

/// The rules of the input chain: what containers may reach on the cell itself.
fn input_rules(names: &Chains, rs: &Ruleset) -> Vec<String> {
    let chain = &names.input;
    let mut out = vec![format!("-A {chain} -i {FROM_CONTAINERS} -j {}", names.guard)];
    out.push(format!("-A {chain} -i {FROM_CONTAINERS} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"));
    for ip in &rs.host.dns {
        for proto in ["udp", "tcp"] {
            out.push(format!("-A {chain} -i {FROM_CONTAINERS} -d {ip}/32 -p {proto} -m {proto} --dport 53 -j ACCEPT"));
        }
    }
    for port in &rs.host.tcp_ports {
        out.push(format!("-A {chain} -i {FROM_CONTAINERS} -p tcp -m tcp --dport {port} -j ACCEPT"));
    }
    out.push(format!("-A {chain} -i {FROM_CONTAINERS} -j DROP"));
    out
}

/// The host ends of container veths.
const FROM_CONTAINERS: &str = "s-+";

/// Our chains in one table: the old ones (and which built-in chain jumps to each).
#[derive(Debug, Default, Clone)]
pub struct Existing {
    pub old: Vec<String>,
    pub hooked: Vec<(String, &'static str)>,
}

impl Existing {
    fn read(table: &str, hooks: &[&'static str]) -> Existing {
        Existing {
            old: all_chains(table),
            hooked: hooks.iter().flat_map(|hook| chains_in(table, hook).into_iter().map(move |c| (c, *hook))).collect(),
        }
    }

    /// Unhooks and flushes every old chain before deleting any: one old chain jumps to
    /// another, and a chain still jumped to cannot be deleted.
    fn remove(&self, s: &mut String) {
        for o in &self.old {
            for (chain, hook) in &self.hooked {
                if chain == o {
                    s.push_str(&format!("-D {hook} -j {o}\n"));
                }
            }
            s.push_str(&format!("-F {o}\n"));
        }
        for o in &self.old {
            s.push_str(&format!("-X {o}\n"));
        }
    }
}

/// The whole table section: new chains with their rules, each jumped to first from its
/// built-in chain, the old chains unhooked and removed.
fn section(table: &str, chains: &[(String, &str, Vec<String>)], existing: &Existing) -> String {
    let mut s = format!("*{table}\n");
    for (chain, _, _) in chains {
        s.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for (_, _, rules) in chains {
        for r in rules {
            s.push_str(r);
            s.push('\n');
        }
    }
    for (chain, hook, _) in chains {
        if !hook.is_empty() {
            s.push_str(&format!("-I {hook} 1 -j {chain}\n"));
        }
    }
    existing.remove(&mut s);
    s.push_str("COMMIT\n");
    s
}

/// The filter chains of a stamp: those jumped to from the built-in chains first (a chain
/// must exist before a rule jumps to it; all are declared before any rule anyway).
fn filter_chains(stamp: u128, rs: &Ruleset) -> Vec<(String, &'static str, Vec<String>)> {
    let names = Chains::of(stamp);
    let mut forward_rules = rules(&names, rs);
    let mut chains = vec![
        (names.guard.clone(), "", spoof_drops(&names.guard, rs)),
        (names.cells.clone(), "", cell_drops(&names.cells, rs)),
    ];
    if let Some(edge) = &rs.edge {
        let (net, prefix) = edge.overlay;
        forward_rules
            .push(format!("-A {} -i {FROM_CONTAINERS} ! -d {net}/{prefix} -j {}", names.forward, names.egress));
        chains.push((names.egress.clone(), "", egress_rules(&names.egress, rs, edge)));
    }
    let input_rules = input_rules(&names, rs);
    chains.insert(0, (names.input, "INPUT", input_rules));
    chains.insert(0, (names.forward, "FORWARD", forward_rules));
    chains
}

/// The nat chains of a stamp (none without an edge).
fn nat_chains(stamp: u128, rs: &Ruleset) -> Vec<(String, &'static str, Vec<String>)> {
    let Some(edge) = &rs.edge else { return Vec::new() };
    let (dnat, snat) = (format!("{DNAT_PREFIX}{stamp}"), format!("{SNAT_PREFIX}{stamp}"));
    let all = nat_rules(&dnat, &snat, rs, edge);
    let (d, s): (Vec<String>, Vec<String>) = all.into_iter().partition(|r| r.starts_with(&format!("-A {dnat} ")));
    vec![(dnat, "PREROUTING", d), (snat, "POSTROUTING", s)]
}

/// New chains with the rules, each jumped to first, old chains unhooked and removed: the
/// filter table, then the nat table.
pub fn restore_input(stamp: u128, rs: &Ruleset, filter: &Existing, nat: &Existing) -> String {
    let mut s = section("filter", &filter_chains(stamp, rs), filter);
    let nat_chains = nat_chains(stamp, rs);
    if !nat_chains.is_empty() || !nat.old.is_empty() {
        s.push_str(&section("nat", &nat_chains, nat));
    }
    s
}

fn restore(input: &str) -> Result<(), EnforceError> {
    super::feed("iptables-restore", &["-w", "--noflush"], "iptables", input)
}

#[derive(Debug, Default)]
pub struct IptablesEnforcer {
    /// The stamp of the installed chains and what they hold.
    installed: Option<(u128, Ruleset)>,
}

impl IptablesEnforcer {
    pub fn new() -> Self {
        IptablesEnforcer::default()
    }

    pub fn reconcile(&mut self, desired: &Ruleset) -> Result<Applied, EnforceError> {
        if let Some((stamp, current)) = &self.installed {
            let intact = |table: &str, chains: Vec<(String, &str, Vec<String>)>| {
                chains.iter().all(|(chain, hook, rules)| {
                    (hook.is_empty() || chains_in(table, hook).contains(chain))
                        && rule_count(table, chain) == Some(rules.len())
                })
            };
            if current == desired
                && intact("filter", filter_chains(*stamp, desired))
                && intact("nat", nat_chains(*stamp, desired))
            {
                return Ok(Applied::Nothing);
            }
        }
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        // Every older chain goes in the same transaction, also ones someone unhooked.
        let filter = Existing::read("filter", &["FORWARD", "INPUT"]);
        let nat = Existing::read("nat", &["PREROUTING", "POSTROUTING"]);
        restore(&restore_input(stamp, desired, &filter, &nat))?;
        self.installed = Some((stamp, desired.clone()));
        Ok(Applied::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_rule_shapes() {
        let rs = crate::enforcement::plan::a_to_b(7000, 8000);
        let r = rules(&Chains::of(1), &rs);
        assert!(
            r.contains(&"-A vpa--1 -i s-010255001002 -s 10.255.1.2/32 -j MARK --set-xmark 0x1/0xffffffff".to_string()),
            "{r:?}"
        );
        assert_eq!(r[0], "-A vpa--1 -i s-+ -j c2c-guard--1", "anti-spoofing first");
        assert_eq!(r[2], "-A vpa--1 -i s-+ -j c2c-cells--1", "then, for new connections, the cells");
        assert_eq!(spoof_drops("g", &rs)[0], "-A g -i s-010255001002 ! -s 10.255.1.2/32 -j DROP");
        assert!(r.contains(
            &"-A vpa--1 -d 10.255.1.3/32 -p tcp -m tcp --dport 7000:8000 -m mark --mark 0x1 -j ACCEPT".to_string()
        ));
        let filter = Existing {
            old: vec!["vpa--1".to_string(), "c2c-in--1".to_string()],
            hooked: vec![("vpa--1".to_string(), "FORWARD"), ("c2c-in--1".to_string(), "INPUT")],
        };
        let input = restore_input(2, &rs, &filter, &Existing::default());
        assert!(!input.contains("*nat"), "no edge, no nat: {input}");
        assert!(input.contains("-I FORWARD 1 -j vpa--2\n-I INPUT 1 -j c2c-in--2\n"), "{input}");
        assert!(
            input.contains(
                "-D FORWARD -j vpa--1\n-F vpa--1\n-D INPUT -j c2c-in--1\n-F c2c-in--1\n-X vpa--1\n-X c2c-in--1\n"
            ),
            "{input}"
        );
        assert!(input.starts_with("*filter\n:vpa--2 - [0:0]\n:c2c-in--2 - [0:0]\n") && input.ends_with("COMMIT\n"));
        assert!(input.contains("-A c2c-in--2 -i s-+ -j DROP\n-A c2c-guard--2 "), "input ends in the drop: {input}");
        assert!(input.contains(":c2c-guard--2 - [0:0]\n:c2c-cells--2 - [0:0]\n"), "{input}");
    }
}
