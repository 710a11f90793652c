//! Policy enforcement: the desired ruleset as data (`plan`), and the kernel backends that
//! install it: `nftables` (default; per-packet cost independent of the number of policies,
//! changes applied as differences) and `iptables` (upstream's layout, for hosts that need it).

pub mod egress;
pub mod iptables;
pub mod nf_netlink;
pub mod nftables;
pub mod plan;

/// How a reconcile went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The kernel already held the desired ruleset.
    Nothing,
    /// Only the difference was applied.
    Diff,
    /// The whole ruleset was (re)installed.
    Full,
}

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("cannot run {tool} (install the {package} package): {source}")]
    Spawn { tool: &'static str, package: &'static str, source: std::io::Error },
    #[error("{tool} refused the change: {stderr}")]
    Refused { tool: &'static str, stderr: String },
    #[error(transparent)]
    Netlink(#[from] nf_netlink::NfNetlinkError),
}

/// Runs `tool args` with `input` on its standard input (one transaction for `nft -f -` and
/// `iptables-restore`); `package` is what to install when the tool is missing.
fn feed(tool: &'static str, args: &[&str], package: &'static str, input: &str) -> Result<(), EnforceError> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let spawn = |source| EnforceError::Spawn { tool, package, source };
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn)?;
    // stdin is written from its own thread while wait_with_output drains stderr, so a tool
    // that reports a flood of errors before reading all its input cannot deadlock us.
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().map_err(spawn)?;
    let written = writer.join().unwrap_or_else(|_| Err(std::io::Error::other("stdin writer panicked")));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match (out.status.success(), written) {
        (true, Ok(())) => Ok(()),
        // The tool stopped reading (EPIPE): its own error says why, when it gave one.
        (_, Err(e)) if stderr.is_empty() => {
            Err(EnforceError::Refused { tool, stderr: format!("stopped reading its input: {e}") })
        }
        _ => Err(EnforceError::Refused { tool, stderr }),
    }
}

/// A kernel backend: brings the kernel to a desired ruleset. Behind this trait so that the
/// sync logic is testable without root, and so that `enforcement = "none"` is one more
/// backend rather than a special case.
pub trait Enforce: Send + std::fmt::Debug {
    /// Brings the kernel to `desired`, repairing whatever someone else changed.
    fn reconcile(&mut self, desired: &plan::Ruleset) -> Result<Applied, EnforceError>;
}

impl Enforce for nftables::Enforcer {
    fn reconcile(&mut self, desired: &plan::Ruleset) -> Result<Applied, EnforceError> {
        nftables::Enforcer::reconcile(self, desired)
    }
}

impl Enforce for iptables::IptablesEnforcer {
    fn reconcile(&mut self, desired: &plan::Ruleset) -> Result<Applied, EnforceError> {
        iptables::IptablesEnforcer::reconcile(self, desired)
    }
}

/// `enforcement = "none"`: plans are computed (and counted) but nothing is installed.
#[derive(Debug, Default)]
pub struct Disabled {
    last: Option<plan::Ruleset>,
}

impl Enforce for Disabled {
    fn reconcile(&mut self, desired: &plan::Ruleset) -> Result<Applied, EnforceError> {
        if self.last.as_ref() == Some(desired) {
            return Ok(Applied::Nothing);
        }
        self.last = Some(desired.clone());
        Ok(Applied::Full)
    }
}

/// The backend for a setting.
pub fn backend(setting: crate::config::Enforcement) -> Box<dyn Enforce> {
    match setting {
        crate::config::Enforcement::Nftables => Box::new(nftables::Enforcer::new()),
        crate::config::Enforcement::Iptables => Box::new(iptables::IptablesEnforcer::new()),
        crate::config::Enforcement::None => Box::new(Disabled::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_errors_name_the_tool_and_what_to_install() {
        let missing = feed("c2c-no-such-tool", &[], "iptables", "").unwrap_err().to_string();
        assert!(missing.starts_with("cannot run c2c-no-such-tool (install the iptables package)"), "{missing}");
        let refused = feed("sh", &["-c", "echo bad rule >&2; exit 1"], "dash", "").unwrap_err().to_string();
        assert_eq!(refused, "sh refused the change: bad rule\n");
        assert!(feed("sh", &["-c", "cat >/dev/null"], "dash", "*filter\nCOMMIT\n").is_ok());
    }

    #[test]
    fn a_tool_that_floods_stderr_before_reading_cannot_deadlock_the_feed() {
        // Far more than a pipe buffer each way: 1 MiB of errors before reading 4 MiB.
        let input = "x".repeat(4 << 20);
        let script = "head -c 1048576 /dev/zero | tr '\\0' e >&2; cat >/dev/null; exit 1";
        let err = feed("sh", &["-c", script], "dash", &input).unwrap_err().to_string();
        assert!(err.starts_with("sh refused the change: eeee"), "{}", &err[..80.min(err.len())]);
    }

    #[test]
    fn a_tool_that_stops_reading_is_reported_truthfully() {
        let input = "x".repeat(4 << 20);
        let err = feed("sh", &["-c", "exec 0<&-; exit 0"], "dash", &input).unwrap_err().to_string();
        assert!(err.starts_with("sh refused the change: stopped reading its input"), "{err}");
        let err =
            feed("sh", &["-c", "exec 0<&-; echo no such chain >&2; exit 1"], "dash", &input).unwrap_err().to_string();
        assert_eq!(err, "sh refused the change: no such chain\n");
    }

    #[test]
    fn the_disabled_backend_installs_nothing_and_reports_changes() {
        let mut b = Disabled::default();
        let empty = plan::plan(&[], &[]);
        assert_eq!(b.reconcile(&empty).unwrap(), Applied::Full);
        assert_eq!(b.reconcile(&empty).unwrap(), Applied::Nothing);
    }
}
