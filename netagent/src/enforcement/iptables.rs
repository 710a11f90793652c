//! The iptables backend, for hosts that must use iptables: upstream's layout (a timestamped
//! `vpa--<µs>` chain in `filter`, jumped from position 1 of `FORWARD`; MARK rules for local
//! sources, then ACCEPT rules by destination, protocol, port range and mark), written as a
//! whole new chain make-before-break in one `iptables-restore --noflush` transaction, as the
//! upstream agent does. Established flows are accepted first and everything else addressed
//! to a local container is dropped, the same behaviour as the nftables backend.

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use super::plan::Ruleset;
use super::{Applied, EnforceError};

pub const PREFIX: &str = "vpa--";

fn chains_in_forward() -> Vec<String> {
    let Ok(out) = Command::new("iptables").args(["-w", "-S", "FORWARD"]).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("-A FORWARD -j "))
        .filter(|c| c.starts_with(PREFIX))
        .map(str::to_string)
        .collect()
}

/// Every `vpa--` chain of the filter table, hooked or not.
fn all_chains() -> Vec<String> {
    let Ok(out) = Command::new("iptables").args(["-w", "-S"]).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| c.starts_with(PREFIX))
        .map(str::to_string)
        .collect()
}

fn rule_count(chain: &str) -> Option<usize> {
    let out = Command::new("iptables").args(["-w", "-S", chain]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("-A ")).count())
}

/// The rules of the chain, in upstream's order (marks, then accepts), after the established
/// accept and before the drops.
pub fn rules(chain: &str, rs: &Ruleset) -> Vec<String> {
    let mut out = vec![format!("-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")];
    for (ip, tag) in &rs.marks {
        out.push(format!("-A {chain} -s {ip}/32 -j MARK --set-xmark 0x{tag:x}/0xffffffff"));
    }
    for a in &rs.allows {
        let proto = a.proto.as_str();
        out.push(format!(
            "-A {chain} -d {}/32 -p {proto} -m {proto} --dport {}:{} -m mark --mark 0x{:x} -j ACCEPT",
            a.dst, a.start, a.end, a.tag
        ));
    }
    for ip in &rs.guarded {
        out.push(format!("-A {chain} -d {ip}/32 -j DROP"));
    }
    out
}

/// A new chain with the rules, jumped to first, old chains unhooked and removed — one
/// transaction.
pub fn restore_input(chain: &str, rs: &Ruleset, old: &[String], hooked: &[String]) -> String {
    let mut s = String::from("*filter\n");
    s.push_str(&format!(":{chain} - [0:0]\n"));
    for r in rules(chain, rs) {
        s.push_str(&r);
        s.push('\n');
    }
    s.push_str(&format!("-I FORWARD 1 -j {chain}\n"));
    for o in old {
        if hooked.contains(o) {
            s.push_str(&format!("-D FORWARD -j {o}\n"));
        }
        s.push_str(&format!("-F {o}\n-X {o}\n"));
    }
    s.push_str("COMMIT\n");
    s
}

fn restore(input: &str) -> Result<(), EnforceError> {
    super::feed("iptables-restore", &["-w", "--noflush"], "iptables", input)
}

#[derive(Debug, Default)]
pub struct IptablesEnforcer {
    installed: Option<(String, Ruleset)>,
}

impl IptablesEnforcer {
    pub fn new() -> Self {
        IptablesEnforcer::default()
    }

    pub fn reconcile(&mut self, desired: &Ruleset) -> Result<Applied, EnforceError> {
        if let Some((chain, current)) = &self.installed {
            let hooked = chains_in_forward().iter().any(|c| c == chain);
            if current == desired && hooked && rule_count(chain) == Some(rules(chain, desired).len()) {
                return Ok(Applied::Nothing);
            }
        }
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        let chain = format!("{PREFIX}{micros}");
        // Every older chain goes in the same transaction, also ones someone unhooked.
        let old: Vec<String> = all_chains().into_iter().filter(|c| *c != chain).collect();
        restore(&restore_input(&chain, desired, &old, &chains_in_forward()))?;
        self.installed = Some((chain, desired.clone()));
        Ok(Applied::Full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_rule_shapes() {
        let rs = crate::enforcement::plan::a_to_b(7000, 8000);
        let r = rules("vpa--1", &rs);
        assert!(r.contains(&"-A vpa--1 -s 10.255.1.2/32 -j MARK --set-xmark 0x1/0xffffffff".to_string()), "{r:?}");
        assert!(r.contains(
            &"-A vpa--1 -d 10.255.1.3/32 -p tcp -m tcp --dport 7000:8000 -m mark --mark 0x1 -j ACCEPT".to_string()
        ));
        let input = restore_input("vpa--2", &rs, &["vpa--1".to_string()], &["vpa--1".to_string()]);
        assert!(input.contains("-I FORWARD 1 -j vpa--2\n-D FORWARD -j vpa--1\n-F vpa--1\n-X vpa--1\n"), "{input}");
        assert!(input.starts_with("*filter\n:vpa--2 - [0:0]\n") && input.ends_with("COMMIT\n"));
    }
}
