//! A foundation's policies as a YAML file, and the changes that make another foundation hold
//! exactly them: what a platform team scripts with the generated client.
//!
//! ```yaml
//! policies:
//!   - source: 3b1e5c1c-0000-4000-8000-000000000001
//!     destination: 3b1e5c1c-0000-4000-8000-000000000002
//!     protocol: tcp
//!     ports: 8080          # or "8080-8090"
//! ```
//!
//! Ids are what the policy server stores: app GUIDs on Cloud Foundry (the same app keeps its
//! GUID across a restored or migrated Cloud Controller), free-form ids elsewhere.

use std::collections::BTreeSet;

use policy_client::types::{Policies, Policy, Protocol};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("not a policy file: {0} (expected `policies:` with source, destination, protocol and ports)")]
    Parse(String),
    #[error("policy {index} ({source_id} -> {destination_id}): {problem}")]
    Invalid { index: usize, source_id: String, destination_id: String, problem: String },
    #[error("the policy server answered: {0}")]
    Api(String),
}

/// One policy as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub source: String,
    pub destination: String,
    pub protocol: String,
    /// `8080` or `"8080-8090"`.
    pub ports: Ports,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ports {
    One(u16),
    Range(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub policies: Vec<Entry>,
}

/// A policy reduced to what identifies it (tags are the server's business).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub source: String,
    pub destination: String,
    pub protocol: Protocol,
    pub start: u16,
    pub end: u16,
}

impl Key {
    pub fn of(p: &Policy) -> Option<Key> {
        Some(Key {
            source: p.source.id.clone(),
            destination: p.destination.id.clone(),
            protocol: p.destination.protocol,
            start: u16::try_from(p.destination.ports.start).ok()?,
            end: u16::try_from(p.destination.ports.end).ok()?,
        })
    }

    pub fn policy(&self) -> Policy {
        Policy::new(&self.source, &self.destination, self.protocol, i32::from(self.start), i32::from(self.end))
    }

    fn entry(&self) -> Entry {
        let ports = if self.start == self.end {
            Ports::One(self.start)
        } else {
            Ports::Range(format!("{}-{}", self.start, self.end))
        };
        Entry {
            source: self.source.clone(),
            destination: self.destination.clone(),
            protocol: self.protocol.to_string(),
            ports,
        }
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ports =
            if self.start == self.end { self.start.to_string() } else { format!("{}-{}", self.start, self.end) };
        write!(f, "{} -> {} {} {ports}", self.source, self.destination, self.protocol)
    }
}

impl PolicyFile {
    /// The file of a foundation's policies, sorted so that two exports of the same
    /// policies are the same bytes.
    pub fn from_policies(policies: &[Policy]) -> PolicyFile {
        let keys: BTreeSet<Key> = policies.iter().filter_map(Key::of).collect();
        PolicyFile { policies: keys.iter().map(Key::entry).collect() }
    }

    pub fn parse(text: &str) -> Result<PolicyFile, FileError> {
        serde_norway::from_str(text).map_err(|e| FileError::Parse(e.to_string()))
    }

    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("a policy file always serialises")
    }

    /// The policies the file asks for, each checked as the server would.
    pub fn keys(&self) -> Result<BTreeSet<Key>, FileError> {
        let mut out = BTreeSet::new();
        for (index, e) in self.policies.iter().enumerate() {
            let invalid = |problem: &str| FileError::Invalid {
                index,
                source_id: e.source.clone(),
                destination_id: e.destination.clone(),
                problem: problem.to_string(),
            };
            if e.source.is_empty() || e.destination.is_empty() {
                return Err(invalid("source and destination must be non-empty ids"));
            }
            let protocol = match e.protocol.as_str() {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return Err(invalid("protocol must be tcp or udp")),
            };
            let (start, end) = match &e.ports {
                Ports::One(p) => (*p, *p),
                Ports::Range(r) => {
                    let (a, b) = r.split_once('-').unwrap_or((r, r));
                    match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                        (Ok(a), Ok(b)) => (a, b),
                        _ => return Err(invalid("ports must be a port or a range such as \"8080-8090\"")),
                    }
                }
            };
            if start == 0 || start > end {
                return Err(invalid("ports must be between 1 and 65535, the start not above the end"));
            }
            out.insert(Key { source: e.source.clone(), destination: e.destination.clone(), protocol, start, end });
        }
        Ok(out)
    }
}

/// What applying a file changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub create: Vec<Key>,
    /// Only with `prune`: policies the foundation holds that the file does not.
    pub delete: Vec<Key>,
    pub unchanged: usize,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.delete.is_empty()
    }

    /// One line per change and a count, as `policy-sync apply` prints them.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for k in &self.create {
            out.push_str(&format!("+ {k}\n"));
        }
        for k in &self.delete {
            out.push_str(&format!("- {k}\n"));
        }
        out.push_str(&format!(
            "{} to create, {} to delete, {} unchanged\n",
            self.create.len(),
            self.delete.len(),
            self.unchanged
        ));
        out
    }
}

/// The pure part of `apply`: the changes that take `existing` to `wanted`.
pub fn plan(wanted: &BTreeSet<Key>, existing: &BTreeSet<Key>, prune: bool) -> Changes {
    Changes {
        create: wanted.difference(existing).cloned().collect(),
        delete: if prune { existing.difference(wanted).cloned().collect() } else { Vec::new() },
        unchanged: wanted.intersection(existing).count(),
    }
}

fn api_error(e: &policy_client::Error<policy_client::types::Error>) -> FileError {
    FileError::Api(policy_client::error_message(e).map_or_else(|| e.to_string(), str::to_string))
}

/// Every policy the caller can see (all of them for an admin).
pub async fn export(client: &policy_client::Client) -> Result<PolicyFile, FileError> {
    let list = client.list_policies(None, None, None).await.map_err(|e| api_error(&e))?.into_inner();
    Ok(PolicyFile::from_policies(&list.policies))
}

/// Makes the foundation hold the file's policies (and, with `prune`, no others). With
/// `dry_run` nothing is changed. The creates go in one request and the deletes in another,
/// each one transaction on the server.
pub async fn apply(
    client: &policy_client::Client,
    file: &PolicyFile,
    prune: bool,
    dry_run: bool,
) -> Result<Changes, FileError> {
    let wanted = file.keys()?;
    let list = client.list_policies(None, None, None).await.map_err(|e| api_error(&e))?.into_inner();
    let existing: BTreeSet<Key> = list.policies.iter().filter_map(Key::of).collect();
    let changes = plan(&wanted, &existing, prune);
    if dry_run {
        return Ok(changes);
    }
    if !changes.create.is_empty() {
        let body = Policies { policies: changes.create.iter().map(Key::policy).collect() };
        client.create_policies(&body).await.map_err(|e| api_error(&e))?;
    }
    if !changes.delete.is_empty() {
        let body = Policies { policies: changes.delete.iter().map(Key::policy).collect() };
        client.delete_policies(&body).await.map_err(|e| api_error(&e))?;
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str, d: &str, start: u16, end: u16) -> Key {
        Key { source: s.into(), destination: d.into(), protocol: Protocol::Tcp, start, end }
    }

    #[test]
    fn a_file_round_trips_and_is_sorted() {
        let policies = vec![key("b", "c", 9000, 9100).policy(), key("a", "b", 8080, 8080).policy()];
        let file = PolicyFile::from_policies(&policies);
        let yaml = file.to_yaml();
        assert!(yaml.find("source: a").unwrap() < yaml.find("source: b").unwrap(), "{yaml}");
        assert!(yaml.contains("ports: 8080") && yaml.contains("ports: 9000-9100"), "{yaml}");
        let back = PolicyFile::parse(&yaml).unwrap();
        assert_eq!(back, file);
        assert_eq!(back.keys().unwrap(), [key("a", "b", 8080, 8080), key("b", "c", 9000, 9100)].into());
    }

    #[test]
    fn bad_files_say_what_is_wrong() {
        assert!(matches!(PolicyFile::parse("nope: 1"), Err(FileError::Parse(_))));
        let bad = |entry: &str| {
            PolicyFile::parse(&format!("policies:\n  - {entry}")).unwrap().keys().unwrap_err().to_string()
        };
        assert!(bad("{source: a, destination: b, protocol: icmp, ports: 1}").contains("tcp or udp"));
        assert!(bad("{source: a, destination: b, protocol: tcp, ports: \"9-8\"}").contains("start not above"));
        assert!(bad("{source: a, destination: b, protocol: tcp, ports: \"x\"}").contains("a range such as"));
        assert!(bad("{source: '', destination: b, protocol: tcp, ports: 1}").contains("non-empty"));
        assert!(PolicyFile::parse("policies:\n  - {source: a, destination: b, protocol: tcp, ports: 70000}").is_err());
    }

    #[test]
    fn plans_are_idempotent_and_prune_only_when_asked() {
        let wanted: BTreeSet<Key> = [key("a", "b", 1, 1), key("a", "c", 2, 2)].into();
        let existing: BTreeSet<Key> = [key("a", "b", 1, 1), key("x", "y", 3, 3)].into();
        let c = plan(&wanted, &existing, false);
        assert_eq!((c.create.clone(), c.delete.len(), c.unchanged), (vec![key("a", "c", 2, 2)], 0, 1));
        assert_eq!(c.summary(), "+ a -> c tcp 2\n1 to create, 0 to delete, 1 unchanged\n");
        let c = plan(&wanted, &existing, true);
        assert_eq!(c.delete, vec![key("x", "y", 3, 3)]);
        assert!(plan(&wanted, &wanted, true).is_empty());
    }
}
