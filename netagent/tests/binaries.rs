//! The two binaries as a newcomer meets them, without root: help, the default
//! configuration, clear errors for bad configuration and bad CNI input. (The system tests in
//! `tests/` run them against the kernel.)

use std::io::Write;
use std::process::{Command, Stdio};

fn cni(command: &str, stdin: &str) -> (i32, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_c2c-cni"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", "/var/run/netns/none")
        .env("CNI_IFNAME", "eth0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")))
}

#[test]
fn the_cni_plugin_answers_version_and_refuses_bad_input_with_cni_errors() {
    let (code, v) = cni("VERSION", "");
    assert_eq!(code, 0);
    assert!(v["supportedVersions"].as_array().unwrap().iter().any(|x| x == "1.0.0"), "{v}");
    let (code, v) = cni("ADD", "{not json");
    assert_eq!((code, v["code"].as_i64()), (1, Some(6)), "{v}");
    assert!(v["msg"].as_str().unwrap().contains("decode"), "{v}");
}

#[test]
fn netagent_explains_itself_and_its_configuration() {
    let help = Command::new(env!("CARGO_BIN_EXE_netagent")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--config") && help.contains("--print-default-config"), "{help}");

    let defaults = Command::new(env!("CARGO_BIN_EXE_netagent")).arg("--print-default-config").output().unwrap();
    let defaults = String::from_utf8_lossy(&defaults.stdout);
    assert!(defaults.contains("enforcement = \"nftables\""), "enforcement is on by default:\n{defaults}");

    let dir = std::env::temp_dir().join(format!("c2c-netagent-conf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("netagent.toml");
    std::fs::write(&file, "underlay_ip = \"10.0.0.1\"\nenforcement = \"ebpf\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_netagent")).arg("--config").arg(&file).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("enforcement") && err.contains("nftables"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
