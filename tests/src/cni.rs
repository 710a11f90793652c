//! Running a CNI plugin as a container runtime does: environment variables, the network
//! configuration on stdin, the result (or a CNI error) on stdout, inside the cell's
//! namespace.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::lab::Netns;

/// What a plugin run printed and how it exited.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
}

impl Outcome {
    /// The result or error as JSON (panics on anything else: a plugin must print JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("plugin output is not JSON ({e}): {}", self.stdout))
    }
}

/// One plugin invocation.
pub struct Invocation<'a> {
    pub command: &'a str,
    pub container: &'a str,
    pub netns: &'a str,
    pub args: &'a str,
    pub conf: &'a str,
}

/// Runs `binary` in `cell`'s namespace.
pub fn run(binary: &Path, cell: &Netns, call: &Invocation) -> Outcome {
    run_with(&["ip", "netns", "exec", &cell.0], binary, call)
}

/// Runs `binary` through `launcher` (the command that puts it in the cell's namespaces).
pub fn run_with(launcher: &[&str], binary: &Path, call: &Invocation) -> Outcome {
    let mut child = Command::new(launcher[0])
        .args(&launcher[1..])
        .arg(binary)
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.container)
        .env("CNI_NETNS", call.netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_ARGS", call.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {}: {e}", binary.display()));
    // A plugin may exit before reading all of stdin (bad input): ignore a broken pipe.
    let _ = child.stdin.take().unwrap().write_all(call.conf.as_bytes());
    let out = child.wait_with_output().unwrap();
    Outcome { code: out.status.code().unwrap_or(-1), stdout: String::from_utf8_lossy(&out.stdout).into_owned() }
}

/// The real `c2c-cni` binary of this build.
pub fn c2c_cni() -> PathBuf {
    crate::bins::path("c2c-cni")
}

/// c2c's network configuration for a cell whose state is in `state_dir` and whose agent
/// listens at `agent` (a URL; empty for none).
pub fn conf(state_dir: &Path, agent: &str) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "c2c",
        "type": "c2c-cni",
        "stateDir": state_dir,
        "agent": agent,
    })
    .to_string()
}
