//! The README's main job: the demo runs to the end, measures what the policies say, and
//! leaves no namespace behind. Needs root (CI runs as root).

#[test]
fn the_demo_runs_and_cleans_up() {
    harness::lab::require_root();
    let out = std::process::Command::new(harness::bins::path("demo")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("as the policies say"), "{stdout}");
    assert!(stdout.contains("first allowed connection"), "{stdout}");
    let pid_marker = "c2c-demo-";
    let left = std::process::Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(!left.lines().any(|l| l.starts_with(pid_marker)), "namespaces left behind: {left}");
}
