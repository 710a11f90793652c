//! Service discovery: cells register their containers' internal routes (hostname → overlay
//! IP); every cell's DNS responder answers `<route>.apps.internal` from the merged table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One internal route of one container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Registration {
    pub hostname: String,
    pub ip: String,
}

/// A cell's whole set, sent again before `ttl_seconds` runs out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellRegistrations {
    pub ttl_seconds: u64,
    pub registrations: Vec<Registration>,
}

/// Hostnames are case-insensitive and compared without a trailing dot.
pub fn normalize(hostname: &str) -> String {
    hostname.trim_end_matches('.').to_ascii_lowercase()
}

/// hostname → sorted, de-duplicated IPs.
pub fn table(registrations: impl IntoIterator<Item = Registration>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in registrations {
        out.entry(normalize(&r.hostname)).or_default().push(r.ip);
    }
    for ips in out.values_mut() {
        ips.sort();
        ips.dedup();
    }
    out
}

/// A hostname a cell may register: DNS labels of letters, digits and `-`, at most 253
/// characters.
pub fn valid_hostname(h: &str) -> bool {
    let h = h.trim_end_matches('.');
    !h.is_empty()
        && h.len() <= 253
        && h.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_merges_cells_and_normalises_names() {
        let r = |h: &str, ip: &str| Registration { hostname: h.into(), ip: ip.into() };
        let t = table(vec![
            r("App-B.apps.internal.", "10.255.2.2"),
            r("app-b.apps.internal", "10.255.1.2"),
            r("app-b.apps.internal", "10.255.1.2"),
        ]);
        assert_eq!(t.len(), 1);
        assert_eq!(t["app-b.apps.internal"], vec!["10.255.1.2", "10.255.2.2"]);
    }

    #[test]
    fn hostnames() {
        assert!(valid_hostname("app-b.apps.internal"));
        assert!(valid_hostname("0.app-b.apps.internal."));
        assert!(!valid_hostname(""));
        assert!(!valid_hostname("a..b"));
        assert!(!valid_hostname("a b.apps.internal"));
        assert!(!valid_hostname(&"a".repeat(64)));
    }
}
