//! Build hygiene: one reqwest and one rustls in the dependency tree.

#[test]
fn no_duplicate_http_or_tls_stacks() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--workspace", "--duplicates", "--edges", "normal", "--offline", "--prefix", "none"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo tree runs");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["reqwest", "rustls", "hyper", "axum", "sqlx-core", "tokio"] {
        let versions: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{name} v")))
            .map(|l| l.split_whitespace().next().unwrap_or(""))
            .collect();
        assert!(versions.len() <= 1, "{name} appears in several versions: {versions:?}");
    }
}
