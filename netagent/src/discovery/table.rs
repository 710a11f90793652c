//! The discovery table as the responder reads it: hostnames (lower case, no trailing dot)
//! to the overlay addresses of their instances, and what a query for a name gets.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// What the table says of a name.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// An internal name with instances.
    Found(&'a [Ipv4Addr]),
    /// An internal domain itself: it exists, with no address of its own.
    Apex,
    /// Under an internal domain, but no instance has it: NXDOMAIN.
    Unknown,
    /// Not under any internal domain: someone else's to answer.
    External,
}

/// `name` in the table's form: lower case, without the root's trailing dot.
pub fn normalise(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Table {
    domains: Vec<String>,
    names: HashMap<String, Vec<Ipv4Addr>>,
}

impl Table {
    /// A table for `domains` from `(hostname, addresses)` pairs. Hostnames outside the
    /// domains, and addresses that are not IPv4, are left out: they cannot be answered.
    pub fn new<'a>(domains: &[String], entries: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Table {
        let domains: Vec<String> = domains.iter().map(|d| normalise(d)).filter(|d| !d.is_empty()).collect();
        let mut names: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        for (host, ips) in entries {
            let host = normalise(host);
            if !under(&domains, &host) || host.len() > 253 {
                continue;
            }
            let entry = names.entry(host).or_default();
            entry.extend(ips.iter().filter_map(|ip| ip.parse::<Ipv4Addr>().ok()));
            entry.sort();
            entry.dedup();
        }
        names.retain(|_, ips| !ips.is_empty());
        Table { domains, names }
    }

    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        let name = normalise(name);
        if self.domains.contains(&name) {
            return Lookup::Apex;
        }
        if !under(&self.domains, &name) {
            return Lookup::External;
        }
        match self.names.get(&name) {
            Some(ips) => Lookup::Found(ips),
            None => Lookup::Unknown,
        }
    }

    /// Names with at least one instance.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

fn under(domains: &[String], name: &str) -> bool {
    domains
        .iter()
        .any(|d| name.len() > d.len() + 1 && name.ends_with(d.as_str()) && name[..name.len() - d.len()].ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Table {
        let a = ["10.255.1.2".to_string(), "10.255.2.2".into(), "10.255.1.2".into(), "not-an-ip".into()];
        let b = ["10.255.3.4".to_string()];
        let outside = ["10.255.9.9".to_string()];
        Table::new(
            &["apps.internal.".into(), "Mesh.Example".into()],
            [("App-A.apps.internal", &a[..]), ("b.mesh.example.", &b[..]), ("evil.example.com", &outside[..])],
        )
    }

    #[test]
    fn lookups() {
        let t = table();
        let a = [Ipv4Addr::new(10, 255, 1, 2), Ipv4Addr::new(10, 255, 2, 2)];
        assert_eq!(t.lookup("app-a.apps.internal."), Lookup::Found(&a));
        assert_eq!(t.lookup("APP-A.APPS.INTERNAL"), Lookup::Found(&a));
        assert_eq!(t.lookup("b.mesh.example."), Lookup::Found(&[Ipv4Addr::new(10, 255, 3, 4)]));
        assert_eq!(t.lookup("apps.internal."), Lookup::Apex);
        assert_eq!(t.lookup("nobody.apps.internal."), Lookup::Unknown);
        assert_eq!(t.lookup("0.app-a.apps.internal."), Lookup::Unknown);
        assert_eq!(t.lookup("evil.example.com."), Lookup::External);
        assert_eq!(t.lookup("xapps.internal."), Lookup::External, "a suffix is not a subdomain");
        assert_eq!(t.lookup("."), Lookup::External);
        assert_eq!(t.len(), 2, "names outside the internal domains are not kept");
    }
}
