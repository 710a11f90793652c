//! The desired ruleset, a pure function of (policies with tags, local containers, the
//! cell's facts): mark packets leaving each local container with its app's tag; accept new
//! connections to a local container's address, protocol and port range only when the mark
//! is the tag of an allowed source; everything else addressed to a local container is
//! dropped (replies of allowed flows pass by connection tracking).
//!
//! Containers are trusted with nothing else: a packet from a container's interface must
//! carry that container's address (anti-spoofing, so the tag follows interface and address
//! together); it may not reach its own cell (only DNS to the cell's resolvers and the host
//! ports the operator lists), nor any cell's underlay or VTEP address, so a hand-made VXLAN
//! datagram never reaches a VTEP.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

pub use super::egress::EgressEntry;
use super::egress::{self, EgressRule, Group, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn parse(s: &str) -> Option<Proto> {
        match s {
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A policy as the cells' API gives it (app GUIDs and their tags).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaggedPolicy {
    pub source: String,
    pub source_tag: u16,
    pub destination: String,
    pub destination_tag: u16,
    pub proto: Proto,
    pub start: u16,
    pub end: u16,
}

/// A container on this cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalContainer {
    pub ip: Ipv4Addr,
    /// The app GUID; containers without one get no policies (and no mark).
    pub app: Option<String>,
    /// Its space, for security groups bound to spaces.
    pub space: Option<String>,
    pub workload: Workload,
    /// The runtime's `netOutRules`.
    pub net_out: Vec<EgressRule>,
    /// TCP host port → container port (`runtimeConfig.portMappings`).
    pub port_mappings: Vec<(u16, u16)>,
}

impl LocalContainer {
    /// A container of `app` with nothing else: no space, no runtime rules, no mappings.
    pub fn new(ip: Ipv4Addr, app: Option<&str>) -> LocalContainer {
        LocalContainer {
            ip,
            app: app.map(str::to_string),
            space: None,
            workload: Workload::Other,
            net_out: Vec::new(),
            port_mappings: Vec::new(),
        }
    }
}

/// An IPv4 network: address and prefix length.
pub type Cidr = (Ipv4Addr, u8);

/// What traffic is logged (upstream's `iptables_c2c_logging`, `iptables_asg_logging` and
/// `iptables_denied_logs_per_sec`), through nflog to netagent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    /// New c2c connections a policy accepted.
    pub c2c_accepted: bool,
    /// New connections every egress rule accepted (rules flagged `log` always are).
    pub egress_accepted: bool,
    /// Denied packets, at most this many per second (0: none).
    pub denied_per_sec: u32,
}

/// The cell's edge: where the overlay ends and the underlay begins. With it, containers
/// reach outside the overlay only through their egress rules, masqueraded to the cell's
/// address, and port mappings are forwarded to them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Edge {
    /// The cell's underlay address: port mappings listen there.
    pub cell_ip: Ipv4Addr,
    /// Traffic to it is c2c traffic, governed by policies, not egress rules.
    pub overlay: Cidr,
    /// Destinations not masqueraded (upstream's `no_masquerade_cidr_range`).
    pub no_masquerade: Cidr,
    /// Traffic leaving through the VTEP is never masqueraded.
    pub vtep: String,
    pub logging: Logging,
}

/// A port mapping: TCP `cell_ip:host_port` is forwarded to `ip:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Forward {
    pub host_port: u16,
    pub ip: Ipv4Addr,
    pub port: u16,
}

/// An allow entry: new connections to `dst` on `proto` `start..=end` from packets marked
/// `tag`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Allow {
    pub dst: Ipv4Addr,
    pub proto: Proto,
    pub start: u16,
    pub end: u16,
    pub tag: u16,
}

/// What containers may reach on their own cell (everything else there is dropped).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct HostAccess {
    /// The cell's resolvers containers use (TCP and UDP port 53).
    pub dns: BTreeSet<Ipv4Addr>,
    /// Host TCP ports the operator opens to containers.
    pub tcp_ports: BTreeSet<u16>,
}

/// What the planner knows of the cell beyond its containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CellFacts {
    /// Every cell's underlay and VTEP address (this one's included): no container reaches
    /// them.
    pub cells: BTreeSet<Ipv4Addr>,
    pub host: HostAccess,
    /// None: no edge rules at all (egress open, no NAT, no port mappings).
    pub edge: Option<Edge>,
    /// Security groups for the spaces on this cell.
    pub groups: Vec<Group>,
    /// The nflog group logged packets go to.
    pub log_group: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Local container address → the tag its packets carry.
    pub marks: BTreeMap<Ipv4Addr, u16>,
    pub allows: BTreeSet<Allow>,
    /// Every local container address: traffic to them is denied unless allowed, and traffic
    /// from their interface must carry them as source.
    pub guarded: BTreeSet<Ipv4Addr>,
    /// Addresses no container may reach (every cell's underlay and VTEP address).
    pub cells: BTreeSet<Ipv4Addr>,
    pub host: HostAccess,
    pub edge: Option<Edge>,
    /// Local container address → its egress class: containers with the same egress rules
    /// share a class, named by the lowest address among them, so rules are held once per
    /// class rather than once per container.
    pub egress_classes: BTreeMap<Ipv4Addr, u32>,
    pub egress: BTreeSet<EgressEntry>,
    pub forwards: BTreeSet<Forward>,
    /// The nflog group logged packets go to.
    pub log_group: u16,
}

/// Parses an upstream tag (`"0001"`, upper-case hex).
pub fn parse_tag(s: &str) -> Option<u16> {
    u16::from_str_radix(s, 16).ok().filter(|t| *t != 0)
}

/// The ruleset for policies and containers alone (no cell facts): what the backends' tests
/// and benchmarks install.
pub fn plan(policies: &[TaggedPolicy], containers: &[LocalContainer]) -> Ruleset {
    plan_cell(policies, containers, &CellFacts::default())
}

pub fn plan_cell(policies: &[TaggedPolicy], containers: &[LocalContainer], facts: &CellFacts) -> Ruleset {
    let mut rs = Ruleset {
        cells: facts.cells.clone(),
        host: facts.host.clone(),
        edge: facts.edge.clone(),
        log_group: facts.log_group,
        ..Ruleset::default()
    };
    if facts.edge.is_some() {
        plan_edge(&mut rs, containers, &facts.groups);
    }
    let mut by_app: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
    for c in containers {
        rs.guarded.insert(c.ip);
        if let Some(app) = c.app.as_deref() {
            by_app.entry(app).or_default().push(c.ip);
        }
    }
    for p in policies {
        if let Some(ips) = by_app.get(p.source.as_str()) {
            for ip in ips {
                rs.marks.insert(*ip, p.source_tag);
            }
        }
        if let Some(ips) = by_app.get(p.destination.as_str()) {
            for ip in ips {
                rs.allows.insert(Allow { dst: *ip, proto: p.proto, start: p.start, end: p.end, tag: p.source_tag });
            }
        }
    }
    rs
}

/// Egress classes and entries, and port mappings. A host port is forwarded to one
/// container only (the CNI plugin refuses a second); were two to claim it anyway, the
/// lowest address keeps it.
fn plan_edge(rs: &mut Ruleset, containers: &[LocalContainer], groups: &[Group]) {
    let mut classes: BTreeMap<Vec<EgressRule>, u32> = BTreeMap::new();
    let mut sorted: Vec<&LocalContainer> = containers.iter().collect();
    sorted.sort_by_key(|c| c.ip);
    for c in sorted {
        let rules = egress::rules_for(groups, c.workload, c.space.as_deref(), &c.net_out);
        if !rules.is_empty() {
            let class = *classes.entry(rules).or_insert(u32::from(c.ip));
            rs.egress_classes.insert(c.ip, class);
        }
        for (host_port, port) in &c.port_mappings {
            if !rs.forwards.iter().any(|f| f.host_port == *host_port) {
                rs.forwards.insert(Forward { host_port: *host_port, ip: c.ip, port: *port });
            }
        }
    }
    for (rules, class) in classes {
        rs.egress.extend(egress::entries(class, &rules));
    }
}

/// What to change to go from `current` to `desired`, set by set. (A change of
/// [`HostAccess`] changes rules, not sets: backends replace the whole ruleset for it.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesetDiff {
    pub add_marks: Vec<(Ipv4Addr, u16)>,
    pub remove_marks: Vec<Ipv4Addr>,
    pub add_allows: Vec<Allow>,
    pub remove_allows: Vec<Allow>,
    pub add_guarded: Vec<Ipv4Addr>,
    pub remove_guarded: Vec<Ipv4Addr>,
    pub add_cells: Vec<Ipv4Addr>,
    pub remove_cells: Vec<Ipv4Addr>,
    pub add_classes: Vec<(Ipv4Addr, u32)>,
    pub remove_classes: Vec<Ipv4Addr>,
    pub add_egress: Vec<EgressEntry>,
    pub remove_egress: Vec<EgressEntry>,
    pub add_forwards: Vec<Forward>,
    pub remove_forwards: Vec<Forward>,
}

impl RulesetDiff {
    pub fn is_empty(&self) -> bool {
        self.add_marks.is_empty()
            && self.remove_marks.is_empty()
            && self.add_allows.is_empty()
            && self.remove_allows.is_empty()
            && self.add_guarded.is_empty()
            && self.remove_guarded.is_empty()
            && self.add_cells.is_empty()
            && self.remove_cells.is_empty()
            && self.add_classes.is_empty()
            && self.remove_classes.is_empty()
            && self.add_egress.is_empty()
            && self.remove_egress.is_empty()
            && self.add_forwards.is_empty()
            && self.remove_forwards.is_empty()
    }
}

/// Changes between two maps: keys whose value changed are removed and added again.
fn map_diff<V: PartialEq + Copy>(
    current: &BTreeMap<Ipv4Addr, V>,
    desired: &BTreeMap<Ipv4Addr, V>,
) -> (Vec<(Ipv4Addr, V)>, Vec<Ipv4Addr>) {
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    for (ip, v) in desired {
        if current.get(ip) != Some(v) {
            if current.contains_key(ip) {
                remove.push(*ip);
            }
            add.push((*ip, *v));
        }
    }
    remove.extend(current.keys().filter(|ip| !desired.contains_key(ip)));
    (add, remove)
}

pub fn diff(current: &Ruleset, desired: &Ruleset) -> RulesetDiff {
    let mut d = RulesetDiff::default();
    (d.add_marks, d.remove_marks) = map_diff(&current.marks, &desired.marks);
    (d.add_classes, d.remove_classes) = map_diff(&current.egress_classes, &desired.egress_classes);
    d.add_egress = desired.egress.difference(&current.egress).copied().collect();
    d.remove_egress = current.egress.difference(&desired.egress).copied().collect();
    d.add_forwards = desired.forwards.difference(&current.forwards).copied().collect();
    d.remove_forwards = current.forwards.difference(&desired.forwards).copied().collect();
    d.add_allows = desired.allows.difference(&current.allows).copied().collect();
    d.remove_allows = current.allows.difference(&desired.allows).copied().collect();
    d.add_guarded = desired.guarded.difference(&current.guarded).copied().collect();
    d.remove_guarded = current.guarded.difference(&desired.guarded).copied().collect();
    d.add_cells = desired.cells.difference(&current.cells).copied().collect();
    d.remove_cells = current.cells.difference(&desired.cells).copied().collect();
    d
}

/// A→B on tcp `start..=end`, with one container of each on the cell (10.255.1.2 is A,
/// 10.255.1.3 is B): the ruleset the backends' unit tests render.
#[cfg(test)]
pub(crate) fn a_to_b(start: u16, end: u16) -> Ruleset {
    plan(
        &[TaggedPolicy {
            source: "A".into(),
            source_tag: 1,
            destination: "B".into(),
            destination_tag: 2,
            proto: Proto::Tcp,
            start,
            end,
        }],
        &[
            LocalContainer::new([10, 255, 1, 2].into(), Some("A")),
            LocalContainer::new([10, 255, 1, 3].into(), Some("B")),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str, st: u16, d: &str, dt: u16, proto: Proto, start: u16, end: u16) -> TaggedPolicy {
        TaggedPolicy { source: s.into(), source_tag: st, destination: d.into(), destination_tag: dt, proto, start, end }
    }

    fn c(ip: [u8; 4], app: &str) -> LocalContainer {
        LocalContainer::new(ip.into(), Some(app))
    }

    #[test]
    fn seed_scenario() {
        // A→B and A→C; instances of A and B on this cell.
        let policies = vec![p("A", 1, "B", 2, Proto::Tcp, 8080, 8080), p("A", 1, "C", 3, Proto::Udp, 53, 53)];
        let containers = vec![c([10, 255, 1, 2], "A"), c([10, 255, 1, 3], "B"), c([10, 255, 1, 4], "X")];
        let rs = plan(&policies, &containers);
        assert_eq!(rs.marks, BTreeMap::from([(Ipv4Addr::new(10, 255, 1, 2), 1)]), "only sources are marked");
        assert_eq!(
            rs.allows,
            BTreeSet::from([Allow {
                dst: Ipv4Addr::new(10, 255, 1, 3),
                proto: Proto::Tcp,
                start: 8080,
                end: 8080,
                tag: 1
            }])
        );
        assert_eq!(rs.guarded.len(), 3, "every local container is guarded");
    }

    #[test]
    fn every_instance_of_an_app_is_covered_and_unlabelled_containers_get_nothing() {
        let policies = vec![p("A", 1, "B", 2, Proto::Tcp, 1, 65535)];
        let containers =
            vec![c([10, 255, 1, 2], "B"), c([10, 255, 1, 3], "B"), LocalContainer::new([10, 255, 1, 4].into(), None)];
        let rs = plan(&policies, &containers);
        assert_eq!(rs.allows.len(), 2);
        assert!(rs.marks.is_empty());
        assert!(rs.guarded.contains(&Ipv4Addr::new(10, 255, 1, 4)));
    }

    #[test]
    fn cell_facts_pass_through_to_the_ruleset() {
        let facts = CellFacts {
            cells: [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 255, 1, 0)].into(),
            host: HostAccess { dns: [Ipv4Addr::new(169, 254, 0, 2)].into(), tcp_ports: [8853].into() },
            ..CellFacts::default()
        };
        let rs = plan_cell(&[], &[c([10, 255, 1, 2], "A")], &facts);
        assert_eq!((rs.cells, rs.host), (facts.cells, facts.host));
        assert!(plan(&[], &[]).cells.is_empty(), "no facts, no cells");
    }

    fn edge() -> Edge {
        Edge {
            cell_ip: Ipv4Addr::new(10, 0, 0, 1),
            overlay: (Ipv4Addr::new(10, 255, 0, 0), 16),
            no_masquerade: (Ipv4Addr::new(10, 255, 0, 0), 16),
            vtep: "silk-vtep".into(),
            logging: Logging::default(),
        }
    }

    fn rule(o: u8, log: bool) -> EgressRule {
        let ip = Ipv4Addr::new(192, 0, 2, o);
        EgressRule { first: ip, last: ip, matches: egress::Matches::Tcp { start: 443, end: 443 }, log }
    }

    fn group(guid: &str, rules: Vec<EgressRule>, running: &[&str], staging: &[&str]) -> Group {
        Group {
            guid: guid.into(),
            rules,
            staging_default: false,
            running_default: false,
            staging_spaces: staging.iter().map(|s| s.to_string()).collect(),
            running_spaces: running.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn ctr(o: u8, space: &str, workload: Workload) -> LocalContainer {
        LocalContainer {
            space: Some(space.into()),
            workload,
            ..LocalContainer::new(Ipv4Addr::new(10, 255, 1, o), Some("A"))
        }
    }

    #[test]
    fn containers_with_the_same_egress_rules_share_a_class() {
        let facts = CellFacts {
            edge: Some(edge()),
            groups: vec![
                group("g1", vec![rule(1, false)], &["s1"], &[]),
                group("g2", vec![rule(2, true)], &["s2"], &["s1"]),
            ],
            ..CellFacts::default()
        };
        let containers = vec![
            ctr(3, "s1", Workload::Running),
            ctr(2, "s1", Workload::Running),
            ctr(4, "s2", Workload::Running),
            ctr(5, "s1", Workload::Staging),
            ctr(6, "s1", Workload::Other),
            ctr(7, "s3", Workload::Running),
            LocalContainer { net_out: vec![rule(9, false)], ..ctr(8, "s3", Workload::Other) },
        ];
        let rs = plan_cell(&[], &containers, &facts);
        let class = |o: u8| rs.egress_classes.get(&Ipv4Addr::new(10, 255, 1, o)).copied();
        let named = |o: u8| Some(u32::from(Ipv4Addr::new(10, 255, 1, o)));
        assert_eq!((class(2), class(3)), (named(2), named(2)), "one class, named by the lowest address");
        assert_eq!(class(4), named(4));
        assert_eq!(class(5), named(4), "staging in s1 gets g2 as running in s2 does");
        assert_eq!((class(6), class(7)), (None, None), "no rules, no class: everything denied");
        assert_eq!(class(8), named(8), "the runtime's own rules");
        assert_eq!(rs.egress.len(), 3);
        let of = |class: Option<u32>| rs.egress.iter().filter(|e| Some(e.class) == class).collect::<Vec<_>>();
        assert_eq!(of(named(2)).len(), 1);
        assert_eq!((of(named(2))[0].first, of(named(2))[0].log), (Ipv4Addr::new(192, 0, 2, 1), false));
        assert_eq!((of(named(4))[0].first, of(named(4))[0].log), (Ipv4Addr::new(192, 0, 2, 2), true));
        let mut without_edge = facts.clone();
        without_edge.edge = None;
        let rs = plan_cell(&[], &containers, &without_edge);
        assert!(rs.egress_classes.is_empty() && rs.egress.is_empty() && rs.edge.is_none());
    }

    #[test]
    fn a_host_port_goes_to_one_container() {
        let facts = CellFacts { edge: Some(edge()), ..CellFacts::default() };
        let containers = vec![
            LocalContainer { port_mappings: vec![(61000, 8080), (61001, 2222)], ..ctr(3, "s", Workload::Running) },
            LocalContainer { port_mappings: vec![(61000, 9090)], ..ctr(2, "s", Workload::Running) },
        ];
        let rs = plan_cell(&[], &containers, &facts);
        let f: Vec<(u16, u8, u16)> = rs.forwards.iter().map(|f| (f.host_port, f.ip.octets()[3], f.port)).collect();
        assert_eq!(f, vec![(61000, 2, 9090), (61001, 3, 2222)]);
    }

    #[test]
    fn tags() {
        assert_eq!(parse_tag("0001"), Some(1));
        assert_eq!(parse_tag("FFFF"), Some(65535));
        assert_eq!(parse_tag("0000"), None);
        assert_eq!(parse_tag("zz"), None);
    }

    fn ruleset() -> impl Strategy<Value = Ruleset> {
        let ip = (2u8..20).prop_map(|o| Ipv4Addr::new(10, 255, 1, o));
        let marks = proptest::collection::btree_map(ip.clone(), 1u16..10, 0..10);
        let allow =
            (ip.clone(), any::<bool>(), 1u16..100, 0u16..10, 1u16..10).prop_map(|(dst, tcp, start, len, tag)| Allow {
                dst,
                proto: if tcp { Proto::Tcp } else { Proto::Udp },
                start,
                end: start + len,
                tag,
            });
        let allows = proptest::collection::btree_set(allow, 0..20);
        let guarded = proptest::collection::btree_set(ip.clone(), 0..10);
        let cells = proptest::collection::btree_set((1u8..20).prop_map(|o| Ipv4Addr::new(10, 0, 0, o)), 0..10);
        let classes = proptest::collection::btree_map(ip.clone(), 1u32..5, 0..10);
        let entry = (1u32..5, 1u8..10, any::<bool>()).prop_map(|(class, o, log)| {
            let ip = Ipv4Addr::new(192, 0, 2, o);
            egress::entries(class, &[EgressRule { first: ip, last: ip, matches: egress::Matches::All, log }])[0]
        });
        let egress = proptest::collection::btree_set(entry, 0..10);
        let forward =
            (61000u16..61010, ip.clone(), 1u16..3).prop_map(|(host_port, ip, port)| Forward { host_port, ip, port });
        let forwards = proptest::collection::btree_set(forward, 0..5);
        ((marks, allows, guarded, cells), (classes, egress, forwards)).prop_map(
            |((marks, allows, guarded, cells), (egress_classes, egress, forwards))| Ruleset {
                marks,
                allows,
                guarded,
                cells,
                egress_classes,
                egress,
                forwards,
                ..Ruleset::default()
            },
        )
    }

    proptest! {
        #[test]
        fn applying_the_diff_reaches_the_desired_ruleset(current in ruleset(), desired in ruleset()) {
            let d = diff(&current, &desired);
            let mut state = current.clone();
            for ip in &d.remove_marks { state.marks.remove(ip); }
            for (ip, tag) in &d.add_marks { state.marks.insert(*ip, *tag); }
            for a in &d.remove_allows { state.allows.remove(a); }
            for a in &d.add_allows { state.allows.insert(*a); }
            for ip in &d.remove_guarded { state.guarded.remove(ip); }
            for ip in &d.add_guarded { state.guarded.insert(*ip); }
            for ip in &d.remove_cells { state.cells.remove(ip); }
            for ip in &d.add_cells { state.cells.insert(*ip); }
            for ip in &d.remove_classes { state.egress_classes.remove(ip); }
            for (ip, class) in &d.add_classes { state.egress_classes.insert(*ip, *class); }
            for e in &d.remove_egress { state.egress.remove(e); }
            for e in &d.add_egress { state.egress.insert(*e); }
            for f in &d.remove_forwards { state.forwards.remove(f); }
            for f in &d.add_forwards { state.forwards.insert(*f); }
            prop_assert_eq!(&state, &desired);
            prop_assert!(diff(&desired, &desired).is_empty());
        }
    }
}
