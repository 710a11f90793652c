//! The workspace's own binaries, as the system tests run them: built by the same cargo
//! invocation (`cargo nextest run --workspace` builds every binary of the workspace before
//! it runs a test) and found beside the test executable.

use std::path::PathBuf;

/// The path of workspace binary `name` (`c2c-cni`, `netagent`, `policy-server`, `cf-c2c`,
/// `demo`), or a panic that says how to build it.
pub fn path(name: &str) -> PathBuf {
    // Test and bench executables live in `<target>/<profile>/deps/`, binaries one level up.
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("a cargo target directory");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} is not built: run the system tests through `cargo nextest run --workspace` (or `cargo build --workspace`) so that every binary is built first",
        bin.display()
    );
    bin
}
