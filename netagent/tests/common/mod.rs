//! Shared pieces of the kernel tests (the namespaces and probes are `netagent::lab`).
#![allow(dead_code)]

use std::process::Command;

pub use netagent::lab::*;

pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test builds network namespaces and needs root: run the test suite as root (CI does)"
    );
}

/// Runs a CNI plugin as a runtime would, inside `cell`'s namespace.
pub fn run_plugin(
    binary: &str,
    cell: &Netns,
    command: &str,
    container: &str,
    netns: &str,
    cni_args: &str,
    conf: &str,
) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &cell.0, binary])
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_ARGS", cni_args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}
