//! The policy model: source app → destination app, protocol, port range.

use std::fmt;

/// The protocols a c2c policy can allow. ICMP and `all` exist only for ASGs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// Exactly `tcp` or `udp`, case-sensitive, as upstream validates.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One allow rule. `start..=end` is within 1..=65535 once validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Policy {
    pub source: String,
    pub destination: String,
    pub protocol: Protocol,
    pub start: u16,
    pub end: u16,
}

impl Policy {
    pub fn new(source: &str, destination: &str, protocol: Protocol, start: u16, end: u16) -> Self {
        Policy { source: source.to_string(), destination: destination.to_string(), protocol, start, end }
    }

    /// Upstream's legacy `port` column: the port of a single-port policy, 0 for a range.
    pub fn legacy_port(&self) -> i32 {
        if self.start == self.end { i32::from(self.start) } else { 0 }
    }
}

/// A policy as stored, with the tags of its two apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedPolicy {
    pub policy: Policy,
    pub source_tag: String,
    pub destination_tag: String,
}

/// Which policies a listing asks for (`id`, `source_id`, `dest_id`), already split on `,`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PolicyFilter {
    #[default]
    All,
    /// Source or destination in the list.
    Any(Vec<String>),
    Source(Vec<String>),
    Destination(Vec<String>),
    /// Source in the first list and destination in the second.
    SourceAndDestination(Vec<String>, Vec<String>),
}

impl PolicyFilter {
    /// Upstream's precedence: `id` wins over `source_id`/`dest_id`. Values are split on `,`
    /// without trimming, so an empty value is one empty id and matches nothing.
    pub fn from_query(id: Option<&str>, source_id: Option<&str>, dest_id: Option<&str>) -> Self {
        let split = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
        match (id, source_id, dest_id) {
            (Some(ids), _, _) => PolicyFilter::Any(split(ids)),
            (None, Some(s), Some(d)) => PolicyFilter::SourceAndDestination(split(s), split(d)),
            (None, Some(s), None) => PolicyFilter::Source(split(s)),
            (None, None, Some(d)) => PolicyFilter::Destination(split(d)),
            (None, None, None) => PolicyFilter::All,
        }
    }

    pub fn matches(&self, p: &Policy) -> bool {
        let has = |list: &Vec<String>, id: &String| list.contains(id);
        match self {
            PolicyFilter::All => true,
            PolicyFilter::Any(ids) => has(ids, &p.source) || has(ids, &p.destination),
            PolicyFilter::Source(ids) => has(ids, &p.source),
            PolicyFilter::Destination(ids) => has(ids, &p.destination),
            PolicyFilter::SourceAndDestination(s, d) => has(s, &p.source) && has(d, &p.destination),
        }
    }
}

/// Every app a set of policies names, as source or destination: distinct, sorted.
pub fn apps_of<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Vec<String> {
    let apps: std::collections::BTreeSet<&str> =
        policies.into_iter().flat_map(|p| [p.source.as_str(), p.destination.as_str()]).collect();
    apps.into_iter().map(str::to_string).collect()
}

/// Renders a tag as upstream does: upper-case hex, zero-padded to `2 × tag_length` digits.
pub fn format_tag(id: i64, tag_length: u8) -> String {
    format!("{:0width$X}", id, width = usize::from(tag_length) * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_upper_hex_padded_to_the_tag_length() {
        assert_eq!(format_tag(1, 2), "0001");
        assert_eq!(format_tag(255, 2), "00FF");
        assert_eq!(format_tag(65535, 2), "FFFF");
        assert_eq!(format_tag(2, 1), "02");
        assert_eq!(format_tag(171, 1), "AB");
    }

    #[test]
    fn filter_precedence_follows_upstream() {
        assert_eq!(PolicyFilter::from_query(None, None, None), PolicyFilter::All);
        assert_eq!(
            PolicyFilter::from_query(Some("a,b"), Some("x"), Some("y")),
            PolicyFilter::Any(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            PolicyFilter::from_query(None, Some("x"), Some("y")),
            PolicyFilter::SourceAndDestination(vec!["x".into()], vec!["y".into()])
        );
        assert_eq!(PolicyFilter::from_query(Some(""), None, None), PolicyFilter::Any(vec!["".into()]));
    }

    #[test]
    fn filter_matches() {
        let p = Policy::new("a", "b", Protocol::Tcp, 1, 1);
        assert!(PolicyFilter::All.matches(&p));
        assert!(PolicyFilter::Any(vec!["b".into()]).matches(&p));
        assert!(!PolicyFilter::Any(vec!["".into()]).matches(&p));
        assert!(PolicyFilter::Source(vec!["a".into()]).matches(&p));
        assert!(!PolicyFilter::Source(vec!["b".into()]).matches(&p));
        assert!(PolicyFilter::Destination(vec!["b".into()]).matches(&p));
        assert!(PolicyFilter::SourceAndDestination(vec!["a".into()], vec!["b".into()]).matches(&p));
        assert!(!PolicyFilter::SourceAndDestination(vec!["a".into()], vec!["a".into()]).matches(&p));
    }

    #[test]
    fn legacy_port_is_zero_for_ranges() {
        assert_eq!(Policy::new("a", "b", Protocol::Tcp, 80, 80).legacy_port(), 80);
        assert_eq!(Policy::new("a", "b", Protocol::Tcp, 80, 90).legacy_port(), 0);
    }
}
