//! `policy-sync` as a newcomer meets it, without a server: help, and a bad file refused
//! before anything is sent. (Export and apply against real servers: `tests/tests/policy_sync.rs`.)

use std::process::Command;

#[test]
fn it_explains_itself_and_refuses_a_bad_file_before_sending_anything() {
    let help = Command::new(env!("CARGO_BIN_EXE_policy-sync")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("export") && help.contains("apply"), "{help}");

    let dir = std::env::temp_dir().join(format!("c2c-policy-sync-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "policies:\n  - {source: a, destination: b, protocol: icmp, ports: 1}\n").unwrap();
    // Port 9 of loopback: nothing is there, and nothing must be asked.
    let out = Command::new(env!("CARGO_BIN_EXE_policy-sync"))
        .args(["--api", "http://127.0.0.1:9", "--token", "t", "apply"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("protocol must be tcp or udp"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}
