//! Egress rules as data: what a container may reach outside the overlay. Two sources give
//! them, in two formats, and both end here as [`EgressRule`]s, one destination range and one
//! port range each:
//!
//! - the runtime's `runtimeConfig.netOutRules` (Garden's `NetOutRule`: numeric protocol,
//!   `networks` and `ports` as `{start, end}` lists, `icmps`, `log`);
//! - application security groups from the cells' API (`rules` as a JSON string: `protocol`
//!   `tcp`/`udp`/`icmp`/`all`, `destination` as IPs, ranges and CIDRs separated by commas,
//!   `ports` as `80,443` or `8000-9000`, ICMP `type`/`code` where -1 is any, `log`).
//!
//! Which security groups a container gets follows upstream: staging containers the staging
//! groups (global and of their space), `app` and `task` containers the running ones, other
//! workloads none.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What an egress rule matches beyond the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "protocol")]
pub enum Matches {
    /// Every protocol and port.
    All,
    Tcp {
        start: u16,
        end: u16,
    },
    Udp {
        start: u16,
        end: u16,
    },
    /// ICMP of a type and code; `None` is any.
    Icmp {
        icmp_type: Option<u8>,
        code: Option<u8>,
    },
}

/// One allowed destination range with what it matches there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct EgressRule {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    #[serde(flatten)]
    pub matches: Matches,
    /// New connections it allows are logged.
    #[serde(default)]
    pub log: bool,
}

/// Which security groups a container gets (`container_workload`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    Staging,
    /// `app` and `task`.
    Running,
    /// Anything else: no security groups.
    Other,
}

impl Workload {
    pub fn parse(s: Option<&str>) -> Workload {
        match s {
            Some("staging") => Workload::Staging,
            Some("app") | Some("task") => Workload::Running,
            _ => Workload::Other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RuleError(pub String);

fn err(msg: impl Into<String>) -> RuleError {
    RuleError(msg.into())
}

/// A destination: `10.0.0.1`, `10.0.0.0/8` or `10.0.0.1-10.0.0.9`.
pub fn parse_destination(s: &str) -> Result<(Ipv4Addr, Ipv4Addr), RuleError> {
    let s = s.trim();
    let bad = || err(format!("destination {s:?} is not an IPv4 address, range or CIDR"));
    if let Some((a, b)) = s.split_once('-') {
        let (a, b): (Ipv4Addr, Ipv4Addr) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if a > b {
            return Err(err(format!("destination range {s:?} ends before it starts")));
        }
        return Ok((a, b));
    }
    if let Some((a, p)) = s.split_once('/') {
        let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
        let p: u32 = p.parse().ok().filter(|p| *p <= 32).ok_or_else(bad)?;
        let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
        let net = u32::from(a) & mask;
        return Ok((Ipv4Addr::from(net), Ipv4Addr::from(net | !mask)));
    }
    let a: Ipv4Addr = s.parse().map_err(|_| bad())?;
    Ok((a, a))
}

/// Ports: `443`, `8000-9000`, `80,443,8000-8080`.
pub fn parse_ports(s: &str) -> Result<Vec<(u16, u16)>, RuleError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let bad = || err(format!("ports {s:?}: {part:?} is not a port or a range of ports 1-65535"));
        let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad);
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(part)?, port(part)?),
        };
        if a > b {
            return Err(bad());
        }
        out.push((a, b));
    }
    Ok(out)
}

fn icmp_field(v: i64) -> Option<u8> {
    // Upstream reads these as uint8, so -1 (any) and 255 both mean any.
    if v < 0 || v == 255 { None } else { u8::try_from(v).ok() }
}

/// One security group rule (upstream's JSON object).
pub fn from_asg_rule(v: &Value) -> Result<Vec<EgressRule>, RuleError> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let log = v.get("log").and_then(Value::as_bool).unwrap_or(false);
    let destinations = s("destination")
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(parse_destination)
        .collect::<Result<Vec<_>, _>>()?;
    if destinations.is_empty() {
        return Err(err("the rule has no destination"));
    }
    let ports = s("ports");
    let matches: Vec<Matches> = match s("protocol") {
        "all" if ports.trim().is_empty() => vec![Matches::All],
        proto @ ("tcp" | "udp") => {
            if ports.trim().is_empty() {
                return Err(err(format!("a {proto} rule needs ports")));
            }
            parse_ports(ports)?
                .into_iter()
                .map(
                    |(start, end)| {
                        if proto == "tcp" { Matches::Tcp { start, end } } else { Matches::Udp { start, end } }
                    },
                )
                .collect()
        }
        "icmp" if ports.trim().is_empty() => {
            let i = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(-1);
            vec![Matches::Icmp { icmp_type: icmp_field(i("type")), code: icmp_field(i("code")) }]
        }
        "all" | "icmp" => return Err(err(format!("a {} rule takes no ports", s("protocol")))),
        other => return Err(err(format!("unknown protocol {other:?}"))),
    };
    Ok(expand(&destinations, &matches, log))
}

fn expand(destinations: &[(Ipv4Addr, Ipv4Addr)], matches: &[Matches], log: bool) -> Vec<EgressRule> {
    destinations
        .iter()
        .flat_map(|(first, last)| {
            matches.iter().map(move |m| EgressRule { first: *first, last: *last, matches: *m, log })
        })
        .collect()
}

/// A security group's `rules` string. Rules that cannot be read are skipped, each named in
/// the returned errors, as upstream drops them: one bad rule does not cost a space its
/// other rules.
pub fn from_asg_rules(rules: &str) -> (Vec<EgressRule>, Vec<RuleError>) {
    let list: Vec<Value> = match serde_json::from_str(rules) {
        Ok(Value::Array(list)) => list,
        _ => return (Vec::new(), vec![err("the group's rules are not a JSON list")]),
    };
    let (mut out, mut errors) = (Vec::new(), Vec::new());
    for rule in &list {
        match from_asg_rule(rule) {
            Ok(r) => out.extend(r),
            Err(e) => errors.push(e),
        }
    }
    (out, errors)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GardenRange<T> {
    start: Option<T>,
    end: Option<T>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GardenIcmp {
    #[serde(rename = "type")]
    icmp_type: u8,
    code: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GardenRule {
    #[serde(default)]
    protocol: u8,
    #[serde(default)]
    networks: Vec<GardenRange<Ipv4Addr>>,
    #[serde(default)]
    ports: Vec<GardenRange<u16>>,
    icmps: Option<GardenIcmp>,
    #[serde(default)]
    log: bool,
}

fn range<T: Copy + PartialOrd + std::fmt::Debug>(r: &GardenRange<T>, what: &str) -> Result<(T, T), RuleError> {
    let start = r.start.or(r.end).ok_or_else(|| err(format!("a {what} range needs start or end")))?;
    let end = r.end.unwrap_or(start);
    if start > end {
        return Err(err(format!("{what} range {start:?}-{end:?} ends before it starts")));
    }
    Ok((start, end))
}

/// `runtimeConfig.netOutRules` (Garden's `NetOutRule` list). Unlike security groups these
/// come from the runtime at ADD: a rule that cannot be read fails the ADD with the reason.
pub fn from_garden(v: &Value) -> Result<Vec<EgressRule>, RuleError> {
    let rules: Vec<GardenRule> =
        serde_json::from_value(v.clone()).map_err(|e| err(format!("runtimeConfig.netOutRules: {e}")))?;
    let mut out = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let at = |e: RuleError| err(format!("runtimeConfig.netOutRules[{i}]: {}", e.0));
        let networks = r.networks.iter().map(|n| range(n, "network")).collect::<Result<Vec<_>, _>>().map_err(at)?;
        let ports = r.ports.iter().map(|p| range(p, "port")).collect::<Result<Vec<_>, _>>().map_err(at)?;
        let networks = if networks.is_empty() { vec![(Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST)] } else { networks };
        let matches: Vec<Matches> = match r.protocol {
            0 if ports.is_empty() => vec![Matches::All],
            1 | 2 if !ports.is_empty() => ports
                .iter()
                .map(|(start, end)| {
                    let (start, end) = ((*start).max(1), *end);
                    if r.protocol == 1 { Matches::Tcp { start, end } } else { Matches::Udp { start, end } }
                })
                .collect(),
            1 | 2 => return Err(at(err("a tcp or udp rule needs ports"))),
            3 => {
                let icmp = r.icmps.as_ref().ok_or_else(|| at(err("an icmp rule needs icmps")))?;
                vec![Matches::Icmp {
                    icmp_type: icmp_field(icmp.icmp_type.into()),
                    code: icmp.code.and_then(|c| icmp_field(c.into())),
                }]
            }
            0 => return Err(at(err("a rule for all protocols takes no ports"))),
            p => return Err(at(err(format!("protocol {p} is not 0 (all), 1 (tcp), 2 (udp) or 3 (icmp)")))),
        };
        out.extend(expand(&networks, &matches, r.log));
    }
    Ok(out)
}

/// A security group as the cells' API gives it, reduced to what a cell needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub guid: String,
    pub rules: Vec<EgressRule>,
    pub staging_default: bool,
    pub running_default: bool,
    pub staging_spaces: BTreeSet<String>,
    pub running_spaces: BTreeSet<String>,
}

impl Group {
    /// Whether the group applies to a container of `workload` in `space`.
    pub fn applies(&self, workload: Workload, space: Option<&str>) -> bool {
        let bound = |spaces: &BTreeSet<String>| space.is_some_and(|s| spaces.contains(s));
        match workload {
            Workload::Staging => self.staging_default || bound(&self.staging_spaces),
            Workload::Running => self.running_default || bound(&self.running_spaces),
            Workload::Other => false,
        }
    }
}

/// Every rule a container gets: its runtime rules and those of the groups that apply,
/// without duplicates, in a stable order.
pub fn rules_for(groups: &[Group], workload: Workload, space: Option<&str>, runtime: &[EgressRule]) -> Vec<EgressRule> {
    let mut all: BTreeSet<EgressRule> = runtime.iter().copied().collect();
    for g in groups.iter().filter(|g| g.applies(workload, space)) {
        all.extend(g.rules.iter().copied());
    }
    all.into_iter().collect()
}

/// Which set an entry goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    All,
    Tcp,
    Udp,
    Icmp,
}

/// A kernel-ready egress allowance for every container of `class`: disjoint from every
/// other entry of the same class, kind and `log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EgressEntry {
    pub class: u32,
    pub kind: Kind,
    pub log: bool,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    /// tcp and udp: the ports; icmp: the types (0-255 for any).
    pub lo: u16,
    pub hi: u16,
    /// icmp: the codes.
    pub code_lo: u8,
    pub code_hi: u8,
}

/// The entries of one class for its rules.
pub fn entries(class: u32, rules: &[EgressRule]) -> Vec<EgressEntry> {
    let mut boxes: std::collections::BTreeMap<(Kind, bool), Vec<Bounds>> = Default::default();
    for r in rules {
        let ip = (u32::from(r.first), u32::from(r.last));
        let any = |v: Option<u8>| v.map_or((0, 255), |v| (u32::from(v), u32::from(v)));
        let (kind, b) = match r.matches {
            Matches::All => (Kind::All, vec![ip]),
            Matches::Tcp { start, end } => (Kind::Tcp, vec![ip, (start.into(), end.into())]),
            Matches::Udp { start, end } => (Kind::Udp, vec![ip, (start.into(), end.into())]),
            Matches::Icmp { icmp_type, code } => (Kind::Icmp, vec![ip, any(icmp_type), any(code)]),
        };
        boxes.entry((kind, r.log)).or_default().push(b);
    }
    let mut out = Vec::new();
    for ((kind, log), boxes) in boxes {
        for b in disjoint(&boxes) {
            let dim = |i: usize| b.get(i).copied().unwrap_or((0, 0));
            let (first, last) = (Ipv4Addr::from(b[0].0), Ipv4Addr::from(b[0].1));
            let (lo, hi) = (dim(1).0 as u16, dim(1).1 as u16);
            let (code_lo, code_hi) = (dim(2).0 as u8, dim(2).1 as u8);
            out.push(EgressEntry { class, kind, log, first, last, lo, hi, code_lo, code_hi });
        }
    }
    out
}

/// A box: one inclusive range per dimension.
type Bounds = Vec<(u32, u32)>;

/// The union of boxes as disjoint boxes, canonical: maximal ranges in the first dimension
/// with the same cross-section, and so on down. nf_tables refuses overlapping elements in a
/// set of concatenated ranges, and security groups overlap all the time (a wide group and a
/// narrow one for the same space).
pub fn disjoint(boxes: &[Bounds]) -> Vec<Bounds> {
    let Some(dims) = boxes.first().map(Vec::len) else { return Vec::new() };
    if dims == 0 {
        return vec![Vec::new()];
    }
    let mut points: Vec<u64> = boxes.iter().flat_map(|b| [u64::from(b[0].0), u64::from(b[0].1) + 1]).collect();
    points.sort_unstable();
    points.dedup();
    let mut out = Vec::new();
    // The run being built: its range in this dimension and its cross-section.
    let mut run: Option<(u32, u32, Vec<Bounds>)> = None;
    let flush = |run: &mut Option<(u32, u32, Vec<Bounds>)>, out: &mut Vec<Bounds>| {
        if let Some((lo, hi, rest)) = run.take() {
            for r in rest {
                let mut b = vec![(lo, hi)];
                b.extend(r);
                out.push(b);
            }
        }
    };
    for w in points.windows(2) {
        let (lo, hi) = (w[0] as u32, (w[1] - 1) as u32);
        let tails: Vec<Bounds> =
            boxes.iter().filter(|b| b[0].0 <= lo && b[0].1 >= hi).map(|b| b[1..].to_vec()).collect();
        if tails.is_empty() {
            flush(&mut run, &mut out);
            continue;
        }
        let rest = disjoint(&tails);
        match &mut run {
            Some((_, run_hi, run_rest)) if u64::from(*run_hi) + 1 == u64::from(lo) && *run_rest == rest => *run_hi = hi,
            _ => {
                flush(&mut run, &mut out);
                run = Some((lo, hi, rest));
            }
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn destinations() {
        assert_eq!(parse_destination("10.0.0.1").unwrap(), (ip("10.0.0.1"), ip("10.0.0.1")));
        assert_eq!(parse_destination("10.1.2.3/8").unwrap(), (ip("10.0.0.0"), ip("10.255.255.255")));
        assert_eq!(parse_destination("0.0.0.0/0").unwrap(), (ip("0.0.0.0"), ip("255.255.255.255")));
        assert_eq!(parse_destination(" 10.0.0.1 - 10.0.0.9 ").unwrap(), (ip("10.0.0.1"), ip("10.0.0.9")));
        for bad in ["", "10.0.0", "10.0.0.0/33", "10.0.0.9-10.0.0.1", "a-b", "::1", "10.0.0.0/x"] {
            assert!(parse_destination(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(parse_ports("80, 443,8000-8080").unwrap(), vec![(80, 80), (443, 443), (8000, 8080)]);
        for bad in ["", "0", "65536", "90-80", "a", "1-", "80,,81"] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn security_group_rules_like_upstream() {
        let (rules, errors) = from_asg_rules(
            &json!([
                {"protocol": "tcp", "destination": "10.0.0.1,10.1.0.0/16", "ports": "80,443", "log": true},
                {"protocol": "icmp", "destination": "0.0.0.0/0", "type": -1, "code": -1},
                {"protocol": "icmp", "destination": "10.0.0.1", "type": 8, "code": 0},
                {"protocol": "all", "destination": "10.9.0.1-10.9.0.3"},
                {"protocol": "tcp", "destination": "10.0.0.1"},
                {"protocol": "all", "destination": "10.0.0.1", "ports": "80"},
                {"protocol": "sctp", "destination": "10.0.0.1", "ports": "80"},
                {"protocol": "udp", "destination": "nope", "ports": "53"}
            ])
            .to_string(),
        );
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert_eq!(rules.len(), 4 + 1 + 1 + 1, "2 destinations × 2 ports, then one each");
        assert!(rules[..4].iter().all(|r| r.log && matches!(r.matches, Matches::Tcp { .. })));
        assert_eq!(rules[4].matches, Matches::Icmp { icmp_type: None, code: None });
        assert_eq!(rules[5].matches, Matches::Icmp { icmp_type: Some(8), code: Some(0) });
        assert_eq!((rules[6].first, rules[6].last, rules[6].matches), (ip("10.9.0.1"), ip("10.9.0.3"), Matches::All));
        assert_eq!(from_asg_rules("{").1.len(), 1);
    }

    #[test]
    fn garden_rules() {
        let rules = from_garden(&json!([
            {"protocol": 1, "networks": [{"start": "10.0.0.1", "end": "10.0.0.5"}], "ports": [{"start": 80, "end": 81}], "log": true},
            {"protocol": 2, "networks": [{"start": "8.8.8.8"}], "ports": [{"start": 53}]},
            {"protocol": 3, "networks": [{"start": "10.0.0.1"}], "icmps": {"type": 0, "code": 0}},
            {"networks": [{"start": "0.0.0.0", "end": "9.255.255.255"}]},
            {"protocol": 0}
        ]))
        .unwrap();
        assert_eq!(
            rules[0],
            EgressRule {
                first: ip("10.0.0.1"),
                last: ip("10.0.0.5"),
                matches: Matches::Tcp { start: 80, end: 81 },
                log: true
            }
        );
        assert_eq!(rules[1].matches, Matches::Udp { start: 53, end: 53 });
        assert_eq!(rules[2].matches, Matches::Icmp { icmp_type: Some(0), code: Some(0) });
        assert_eq!(rules[3].matches, Matches::All);
        assert_eq!(
            (rules[4].first, rules[4].last),
            (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST),
            "no networks: anywhere"
        );
        for bad in [
            json!({}),
            json!([{"protocol": 1, "networks": [{"start": "10.0.0.1"}]}]),
            json!([{"protocol": 9}]),
            json!([{"protocol": 0, "ports": [{"start": 80}]}]),
            json!([{"protocol": 1, "ports": [{"start": 90, "end": 80}]}]),
            json!([{"protocol": 3}]),
            json!([{"protocol": 1, "ports": [{"start": 80}], "extra": 1}]),
            json!([{"protocol": 1, "ports": [{"start": 70000}]}]),
        ] {
            assert!(from_garden(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn groups_apply_by_workload_and_space() {
        let g = |staging_default, running_default, staging: &[&str], running: &[&str]| Group {
            guid: "g".into(),
            rules: vec![],
            staging_default,
            running_default,
            staging_spaces: staging.iter().map(|s| s.to_string()).collect(),
            running_spaces: running.iter().map(|s| s.to_string()).collect(),
        };
        let global_running = g(false, true, &[], &[]);
        assert!(global_running.applies(Workload::Running, None));
        assert!(!global_running.applies(Workload::Staging, Some("s")));
        let bound = g(false, false, &["s1"], &["s2"]);
        assert!(bound.applies(Workload::Staging, Some("s1")) && !bound.applies(Workload::Running, Some("s1")));
        assert!(bound.applies(Workload::Running, Some("s2")) && !bound.applies(Workload::Staging, Some("s2")));
        assert!(!bound.applies(Workload::Other, Some("s2")), "other workloads get no groups");
        assert_eq!(Workload::parse(Some("task")), Workload::Running);
        assert_eq!(Workload::parse(None), Workload::Other);
    }

    fn covered(boxes: &[Bounds], p: &[u32]) -> usize {
        boxes.iter().filter(|b| b.iter().zip(p).all(|((lo, hi), x)| lo <= x && x <= hi)).count()
    }

    #[test]
    fn disjoint_boxes_cover_the_same_points_once() {
        let boxes = vec![vec![(0, 10), (5, 5)], vec![(5, 20), (1, 9)], vec![(30, 40), (0, 0)], vec![(31, 31), (0, 0)]];
        let out = disjoint(&boxes);
        for x in 0..45 {
            for y in 0..12 {
                let want = usize::from(covered(&boxes, &[x, y]) > 0);
                assert_eq!(covered(&out, &[x, y]), want, "({x}, {y}) in {out:?}");
            }
        }
        assert_eq!(disjoint(&[vec![(0, 5)], vec![(6, 9)], vec![(3, 4)]]), vec![vec![(0, 9)]], "adjacent ranges merge");
        assert_eq!(disjoint(&[vec![(0, u32::MAX)], vec![(7, 7)]]), vec![vec![(0, u32::MAX)]], "the whole range");
        assert!(disjoint(&[]).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn disjoint_is_an_exact_cover(raw in proptest::collection::vec((0u32..20, 0u32..6, 0u32..20, 0u32..6), 1..8)) {
            let boxes: Vec<Bounds> = raw.iter().map(|(a, la, b, lb)| vec![(*a, a + la), (*b, b + lb)]).collect();
            let out = disjoint(&boxes);
            for x in 0..27 {
                for y in 0..27 {
                    proptest::prop_assert_eq!(covered(&out, &[x, y]), usize::from(covered(&boxes, &[x, y]) > 0));
                }
            }
            proptest::prop_assert_eq!(disjoint(&out), out.clone(), "canonical");
        }
    }

    #[test]
    fn overlapping_rules_become_disjoint_entries_per_kind() {
        let r = |d: &str, m: Matches, log: bool| {
            let (first, last) = parse_destination(d).unwrap();
            EgressRule { first, last, matches: m, log }
        };
        let rules = [
            r("10.0.0.0/8", Matches::Tcp { start: 443, end: 443 }, false),
            r("0.0.0.0/0", Matches::Tcp { start: 1, end: 65535 }, false),
            r("10.1.0.0/16", Matches::Tcp { start: 80, end: 80 }, true),
            r("10.0.0.1", Matches::Udp { start: 53, end: 53 }, false),
            r("10.0.0.1", Matches::Icmp { icmp_type: Some(8), code: None }, false),
        ];
        let e = entries(7, &rules);
        let tcp: Vec<_> = e.iter().filter(|e| e.kind == Kind::Tcp && !e.log).collect();
        assert_eq!(tcp.len(), 1, "everything on tcp swallows the narrower rule: {tcp:?}");
        assert_eq!((tcp[0].first, tcp[0].last, tcp[0].lo, tcp[0].hi), (ip("0.0.0.0"), ip("255.255.255.255"), 1, 65535));
        assert_eq!(e.iter().filter(|e| e.kind == Kind::Tcp && e.log).count(), 1, "logged entries are kept apart");
        let icmp = e.iter().find(|e| e.kind == Kind::Icmp).unwrap();
        assert_eq!((icmp.lo, icmp.hi, icmp.code_lo, icmp.code_hi), (8, 8, 0, 255));
        assert!(e.iter().all(|e| e.class == 7));
    }

    #[test]
    fn rules_for_a_container_are_deduplicated() {
        let r = EgressRule { first: ip("1.1.1.1"), last: ip("1.1.1.1"), matches: Matches::All, log: false };
        let g = Group {
            guid: "g".into(),
            rules: vec![r, r],
            staging_default: false,
            running_default: true,
            staging_spaces: Default::default(),
            running_spaces: Default::default(),
        };
        assert_eq!(rules_for(std::slice::from_ref(&g), Workload::Running, None, &[r]), vec![r]);
        assert!(rules_for(&[g], Workload::Staging, None, &[]).is_empty());
    }
}
