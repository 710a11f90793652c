//! `cf-c2c` run on its own, as a newcomer would: it says how it is meant to be used. (The
//! plugin against cf's side and a real server is in the system tests, `tests/`.)

use std::process::Command;

#[test]
fn without_cf_it_says_how_it_is_used() {
    let out = Command::new(env!("CARGO_BIN_EXE_cf-c2c")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("This cf CLI plugin is not intended to be run on its own\n\n"), "{err}");
    assert!(err.contains("cf install-plugin ./cf-c2c"), "{err}");
    assert!(err.contains("cf-c2c network-policies"), "{err}");
}
