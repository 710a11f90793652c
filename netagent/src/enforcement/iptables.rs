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

use super::plan::Ruleset;
use super::{Applied, EnforceError};
use crate::naming::host_veth;

pub const PREFIX: &str = "vpa--";
pub const INPUT_PREFIX: &str = "c2c-in--";

/// Our chains jumped from the built-in chain `hook` (`FORWARD` or `INPUT`).
fn chains_in(hook: &str) -> Vec<String> {
    let Ok(out) = Command::new("iptables").args(["-w", "-S", hook]).output() else { return Vec::new() };
    let jump = format!("-A {hook} -j ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix(jump.as_str()))
        .filter(|c| c.starts_with(PREFIX) || c.starts_with(INPUT_PREFIX))
        .map(str::to_string)
        .collect()
}

/// Every chain of ours in the filter table, hooked or not.
fn all_chains() -> Vec<String> {
    let Ok(out) = Command::new("iptables").args(["-w", "-S"]).output() else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("-N "))
        .filter(|c| c.starts_with(PREFIX) || c.starts_with(INPUT_PREFIX))
        .map(str::to_string)
        .collect()
}

/// A packet from a container's interface that does not carry the container's address.
fn spoof_drops(chain: &str, rs: &Ruleset) -> Vec<String> {
    rs.guarded.iter().map(|ip| format!("-A {chain} -i {} ! -s {ip}/32 -j DROP", host_veth(*ip))).collect()
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
    let mut out = spoof_drops(chain, rs);
    for ip in &rs.cells {
        out.push(format!("-A {chain} -i {FROM_CONTAINERS} -d {ip}/32 -j DROP"));
    }
    out.push(format!("-A {chain} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"));
    for (ip, tag) in &rs.marks {
        out.push(format!("-A {chain} -i {} -s {ip}/32 -j MARK --set-xmark 0x{tag:x}/0xffffffff", host_veth(*ip)));
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

/// The rules of the input chain: what containers may reach on the cell itself.
pub fn input_rules(chain: &str, rs: &Ruleset) -> Vec<String> {
    let mut out = spoof_drops(chain, rs);
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

/// New forward and input chains with the rules, each jumped to first, old chains unhooked
/// and removed — one transaction.
pub fn restore_input(stamp: u128, rs: &Ruleset, old: &[String], hooked: &[(String, &str)]) -> String {
    let (forward, input) = (format!("{PREFIX}{stamp}"), format!("{INPUT_PREFIX}{stamp}"));
    let mut s = String::from("*filter\n");
    s.push_str(&format!(":{forward} - [0:0]\n:{input} - [0:0]\n"));
    for r in rules(&forward, rs).into_iter().chain(input_rules(&input, rs)) {
        s.push_str(&r);
        s.push('\n');
    }
    s.push_str(&format!("-I FORWARD 1 -j {forward}\n-I INPUT 1 -j {input}\n"));
    for o in old {
        for (chain, hook) in hooked {
            if chain == o {
                s.push_str(&format!("-D {hook} -j {o}\n"));
            }
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
    /// The stamp of the installed chains and what they hold.
    installed: Option<(u128, Ruleset)>,
}

impl IptablesEnforcer {
    pub fn new() -> Self {
        IptablesEnforcer::default()
    }

    pub fn reconcile(&mut self, desired: &Ruleset) -> Result<Applied, EnforceError> {
        if let Some((stamp, current)) = &self.installed {
            let (forward, input) = (format!("{PREFIX}{stamp}"), format!("{INPUT_PREFIX}{stamp}"));
            let intact = chains_in("FORWARD").contains(&forward)
                && chains_in("INPUT").contains(&input)
                && rule_count(&forward) == Some(rules(&forward, desired).len())
                && rule_count(&input) == Some(input_rules(&input, desired).len());
            if current == desired && intact {
                return Ok(Applied::Nothing);
            }
        }
        let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros()).unwrap_or(0);
        // Every older chain goes in the same transaction, also ones someone unhooked.
        let old = all_chains();
        let hooked: Vec<(String, &str)> = ["FORWARD", "INPUT"]
            .into_iter()
            .flat_map(|hook| chains_in(hook).into_iter().map(move |c| (c, hook)))
            .collect();
        restore(&restore_input(stamp, desired, &old, &hooked))?;
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
        let r = rules("vpa--1", &rs);
        assert!(
            r.contains(&"-A vpa--1 -i s-010255001002 -s 10.255.1.2/32 -j MARK --set-xmark 0x1/0xffffffff".to_string()),
            "{r:?}"
        );
        assert_eq!(r[0], "-A vpa--1 -i s-010255001002 ! -s 10.255.1.2/32 -j DROP", "anti-spoofing first");
        assert!(r.contains(
            &"-A vpa--1 -d 10.255.1.3/32 -p tcp -m tcp --dport 7000:8000 -m mark --mark 0x1 -j ACCEPT".to_string()
        ));
        let old = ["vpa--1".to_string(), "c2c-in--1".to_string()];
        let hooked = [("vpa--1".to_string(), "FORWARD"), ("c2c-in--1".to_string(), "INPUT")];
        let input = restore_input(2, &rs, &old, &hooked);
        assert!(input.contains("-I FORWARD 1 -j vpa--2\n-I INPUT 1 -j c2c-in--2\n"), "{input}");
        assert!(input.contains("-D FORWARD -j vpa--1\n-F vpa--1\n-X vpa--1\n"), "{input}");
        assert!(input.contains("-D INPUT -j c2c-in--1\n-F c2c-in--1\n-X c2c-in--1\n"), "{input}");
        assert!(input.starts_with("*filter\n:vpa--2 - [0:0]\n:c2c-in--2 - [0:0]\n") && input.ends_with("COMMIT\n"));
        assert!(
            input.contains("-A c2c-in--2 -i s-+ -j DROP\nCOMMIT") || input.contains("-A c2c-in--2 -i s-+ -j DROP\n-I"),
            "{input}"
        );
    }
}
