//! The nftables backend: one table of its own (`ip c2c`) with a verdict on a concatenated
//! set, so the cost per packet does not grow with the number of policies. Every change is
//! one `nft -f` transaction: element additions and deletions only, or an atomic replacement
//! of the whole table when it was never installed or someone changed it (drift repair).
//!
//! nft's text syntax is used rather than its JSON: concatenations with intervals and verdict
//! rules are far clearer in it, and `nft -f` applies a script as one transaction either way.

use std::fmt::Write as _;
use std::io::Write;
use std::process::{Command, Stdio};

use super::plan::{Allow, Ruleset, RulesetDiff};

pub const TABLE: &str = "c2c";

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("cannot run nft (install the nftables package): {0}")]
    Spawn(std::io::Error),
    #[error("nft refused the change: {0}")]
    Refused(String),
}

fn allow_element(a: &Allow) -> String {
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
        if let Some(e) = elements(allows.iter().filter(|a| set_of(a) == set).map(allow_element)) {
            let _ = writeln!(s, "{verb} element ip {TABLE} {set} {{ {e} }}");
        }
    }
    s
}

fn elements<I: IntoIterator<Item = String>>(items: I) -> Option<String> {
    let v: Vec<String> = items.into_iter().collect();
    if v.is_empty() { None } else { Some(v.join(", ")) }
}

/// The whole table, replacing any previous one in the same transaction.
pub fn full_script(rs: &Ruleset) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "add table ip {TABLE}");
    let _ = writeln!(s, "delete table ip {TABLE}");
    let _ = writeln!(s, "table ip {TABLE} {{");
    let _ = writeln!(s, "  map src_tags {{ type ipv4_addr : mark; }}");
    let _ = writeln!(s, "  set guarded {{ type ipv4_addr; }}");
    let _ = writeln!(s, "  set allow {{ type ipv4_addr . inet_proto . inet_service . mark; }}");
    let _ = writeln!(s, "  set allow_ranges {{ type ipv4_addr . inet_proto . inet_service . mark; flags interval; }}");
    let _ = writeln!(s, "  chain forward {{");
    let _ = writeln!(s, "    type filter hook forward priority -10; policy accept;");
    let _ = writeln!(s, "    ct state established,related accept");
    let _ = writeln!(s, "    meta mark set ip saddr map @src_tags");
    let _ =
        writeln!(s, "    ip daddr @guarded ct state new ip daddr . meta l4proto . th dport . meta mark @allow accept");
    let _ = writeln!(
        s,
        "    ip daddr @guarded ct state new ip daddr . meta l4proto . th dport . meta mark @allow_ranges accept"
    );
    let _ = writeln!(s, "    ip daddr @guarded drop");
    let _ = writeln!(s, "  }}");
    let _ = writeln!(s, "}}");
    if let Some(e) = elements(rs.marks.iter().map(|(ip, tag)| format!("{ip} : 0x{tag:x}"))) {
        let _ = writeln!(s, "add element ip {TABLE} src_tags {{ {e} }}");
    }
    if let Some(e) = elements(rs.guarded.iter().map(|ip| ip.to_string())) {
        let _ = writeln!(s, "add element ip {TABLE} guarded {{ {e} }}");
    }
    let allows: Vec<Allow> = rs.allows.iter().copied().collect();
    s.push_str(&allow_lines("add", &allows));
    s
}

/// Only the difference. Deletions come first, so a changed mark is replaced in place.
pub fn diff_script(d: &RulesetDiff) -> String {
    let mut s = String::new();
    s.push_str(&allow_lines("delete", &d.remove_allows));
    if let Some(e) = elements(d.remove_marks.iter().map(|ip| ip.to_string())) {
        let _ = writeln!(s, "delete element ip {TABLE} src_tags {{ {e} }}");
    }
    if let Some(e) = elements(d.remove_guarded.iter().map(|ip| ip.to_string())) {
        let _ = writeln!(s, "delete element ip {TABLE} guarded {{ {e} }}");
    }
    if let Some(e) = elements(d.add_guarded.iter().map(|ip| ip.to_string())) {
        let _ = writeln!(s, "add element ip {TABLE} guarded {{ {e} }}");
    }
    if let Some(e) = elements(d.add_marks.iter().map(|(ip, tag)| format!("{ip} : 0x{tag:x}"))) {
        let _ = writeln!(s, "add element ip {TABLE} src_tags {{ {e} }}");
    }
    s.push_str(&allow_lines("add", &d.add_allows));
    s
}

/// Runs a script through `nft -f -` (one transaction).
pub fn run(script: &str) -> Result<(), NftError> {
    if script.is_empty() {
        return Ok(());
    }
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Spawn)?;
    child.stdin.take().expect("piped").write_all(script.as_bytes()).map_err(NftError::Spawn)?;
    let out = child.wait_with_output().map_err(NftError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Refused(String::from_utf8_lossy(&out.stderr).into_owned()))
    }
}

/// The number of rules in the forward chain (`None` when the table or chain is missing):
/// the cheap check made before every change (`-t`: set elements are not listed).
pub fn installed_rules() -> Option<usize> {
    let out = Command::new("nft").args(["-t", "-j", "list", "chain", "ip", TABLE, "forward"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(v.get("nftables")?.as_array()?.iter().filter(|i| i.get("rule").is_some()).count())
}

/// Rules of the forward chain (see `full_script`).
const RULES: usize = 5;

/// Counts of what the kernel holds: (rules in the forward chain, marks, guarded, allows);
/// `None` when the table is missing.
pub fn installed_counts() -> Option<(usize, usize, usize, usize)> {
    let out = Command::new("nft").args(["-j", "list", "table", "ip", TABLE]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let items = v.get("nftables")?.as_array()?;
    let mut rules = 0;
    let mut sizes = std::collections::HashMap::new();
    for item in items {
        if item.get("rule").is_some() {
            rules += 1;
        }
        for kind in ["set", "map"] {
            if let Some(set) = item.get(kind) {
                let name = set.get("name").and_then(|n| n.as_str()).unwrap_or("").to_string();
                let n = set.get("elem").and_then(|e| e.as_array()).map(|e| e.len()).unwrap_or(0);
                sizes.insert(name, n);
            }
        }
    }
    let get = |k: &str| sizes.get(k).copied().unwrap_or(0);
    Some((rules, get("src_tags"), get("guarded"), get("allow") + get("allow_ranges")))
}

/// Keeps the kernel equal to the desired ruleset with as little work as possible.
#[derive(Debug, Default)]
pub struct Enforcer {
    installed: Option<Ruleset>,
}

/// How a reconcile went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    Nothing,
    Diff,
    Full,
}

impl Enforcer {
    pub fn new() -> Self {
        Enforcer::default()
    }

    /// Whether the kernel still holds what was installed. The cheap check (table and rules)
    /// runs before every change; `deep` also counts every element (someone may have deleted
    /// some), which lists the whole table and is done on quiet rounds.
    fn intact(&self, rs: &Ruleset, deep: bool) -> bool {
        if deep {
            installed_counts() == Some((RULES, rs.marks.len(), rs.guarded.len(), count_allow_elements(rs)))
        } else {
            installed_rules() == Some(RULES)
        }
    }

    /// Brings the kernel to `desired` (cheap drift check).
    pub fn reconcile(&mut self, desired: &Ruleset) -> Result<Applied, NftError> {
        self.reconcile_checked(desired, false)
    }

    /// Like `reconcile`, verifying every element first (`deep`).
    pub fn reconcile_checked(&mut self, desired: &Ruleset, deep: bool) -> Result<Applied, NftError> {
        match &self.installed {
            Some(current) if self.intact(current, deep) => {
                let d = super::plan::diff(current, desired);
                if d.is_empty() {
                    return Ok(Applied::Nothing);
                }
                run(&diff_script(&d))?;
                self.installed = Some(desired.clone());
                Ok(Applied::Diff)
            }
            _ => {
                run(&full_script(desired))?;
                self.installed = Some(desired.clone());
                Ok(Applied::Full)
            }
        }
    }

    /// Removes the table (the cell stops enforcing).
    pub fn remove(&mut self) -> Result<(), NftError> {
        self.installed = None;
        run(&format!("add table ip {TABLE}\ndelete table ip {TABLE}\n"))
    }
}

/// nft lists interval sets with one element per range, as given.
fn count_allow_elements(rs: &Ruleset) -> usize {
    rs.allows.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enforcement::plan::{LocalContainer, Proto, TaggedPolicy, plan as make_plan};

    #[test]
    fn scripts() {
        let rs = make_plan(
            &[TaggedPolicy {
                source: "A".into(),
                source_tag: 1,
                destination: "B".into(),
                destination_tag: 2,
                proto: Proto::Tcp,
                start: 8080,
                end: 8090,
            }],
            &[
                LocalContainer { ip: [10, 255, 1, 2].into(), app: Some("A".into()) },
                LocalContainer { ip: [10, 255, 1, 3].into(), app: Some("B".into()) },
            ],
        );
        let full = full_script(&rs);
        assert!(full.contains("add element ip c2c src_tags { 10.255.1.2 : 0x1 }"), "{full}");
        assert!(full.contains("add element ip c2c allow_ranges { 10.255.1.3 . tcp . 8080-8090 . 0x1 }"), "{full}");
        assert!(full.starts_with("add table ip c2c\ndelete table ip c2c\n"), "atomic replacement");
        let d = crate::enforcement::plan::diff(&rs, &Ruleset::default());
        let script = diff_script(&d);
        assert!(
            script.contains("delete element ip c2c allow_ranges { 10.255.1.3 . tcp . 8080-8090 . 0x1 }"),
            "{script}"
        );
        assert!(diff_script(&RulesetDiff::default()).is_empty());
    }
}
