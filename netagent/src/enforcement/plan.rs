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
    let mut rs = Ruleset { cells: facts.cells.clone(), host: facts.host.clone(), ..Ruleset::default() };
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
    }
}

pub fn diff(current: &Ruleset, desired: &Ruleset) -> RulesetDiff {
    let mut d = RulesetDiff::default();
    for (ip, tag) in &desired.marks {
        if current.marks.get(ip) != Some(tag) {
            if current.marks.contains_key(ip) {
                d.remove_marks.push(*ip);
            }
            d.add_marks.push((*ip, *tag));
        }
    }
    for ip in current.marks.keys() {
        if !desired.marks.contains_key(ip) {
            d.remove_marks.push(*ip);
        }
    }
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
            LocalContainer { ip: [10, 255, 1, 2].into(), app: Some("A".into()) },
            LocalContainer { ip: [10, 255, 1, 3].into(), app: Some("B".into()) },
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
        LocalContainer { ip: ip.into(), app: Some(app.into()) }
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
        let containers = vec![
            c([10, 255, 1, 2], "B"),
            c([10, 255, 1, 3], "B"),
            LocalContainer { ip: [10, 255, 1, 4].into(), app: None },
        ];
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
        };
        let rs = plan_cell(&[], &[c([10, 255, 1, 2], "A")], &facts);
        assert_eq!((rs.cells, rs.host), (facts.cells, facts.host));
        assert!(plan(&[], &[]).cells.is_empty(), "no facts, no cells");
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
        let guarded = proptest::collection::btree_set(ip, 0..10);
        let cells = proptest::collection::btree_set((1u8..20).prop_map(|o| Ipv4Addr::new(10, 0, 0, o)), 0..10);
        (marks, allows, guarded, cells).prop_map(|(marks, allows, guarded, cells)| Ruleset {
            marks,
            allows,
            guarded,
            cells,
            host: HostAccess::default(),
        })
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
            prop_assert_eq!(&state, &desired);
            prop_assert!(diff(&desired, &desired).is_empty());
        }
    }
}
