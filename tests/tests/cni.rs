//! `c2c-cni` as a container runtime runs it: environment, configuration on stdin, a result a
//! standard chained plugin (`tuning`, from Debian's containernetworking-plugins) accepts,
//! errors as CNI error JSON, ADD rolled back when it cannot finish, idempotent DEL. Needs
//! root and the Debian package (CI installs it).

use std::path::Path;
use std::process::Command;

use harness::cni::{Invocation, Outcome, c2c_cni as c2c_cni_binary, run};
use harness::lab::{Netns, require_root};

/// Runs a CNI plugin inside the cell's namespace (where a runtime would run it).
fn plugin(binary: &Path, cell: &Netns, command: &str, container: &str, netns: &str, conf: &str) -> Outcome {
    let args = "IgnoreUnknown=1;app_id=app-a;space_id=space-1";
    run(binary, cell, &Invocation { command, container, netns, args, conf })
}

fn c2c_cni(cell: &Netns, command: &str, container: &str, netns: &str, conf: &str) -> Outcome {
    plugin(&c2c_cni_binary(), cell, command, container, netns, conf)
}

#[test]
fn add_check_chain_del() {
    require_root();
    assert!(
        std::path::Path::new("/usr/lib/cni/tuning").exists(),
        "Debian's containernetworking-plugins is required (apt-get install containernetworking-plugins)"
    );
    let cell = Netns::new("cell");
    let ctr = Netns::new("ctr");
    let dir = harness::scratch::TempDir::new("c2c-cni-state");
    let state = dir.path().to_path_buf();
    let conf = harness::cni::conf(&state, "");

    // Before netagent wrote the cell's state: try again later.
    let out = c2c_cni(&cell, "ADD", "c1", &ctr.path(), &conf);
    assert_eq!(out.code, 1);
    let err: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(err["code"], 11, "{}", out.stdout);

    netagent::cell_state::write_cell(
        &state,
        &netagent::cell_state::CellInfo { subnet: "10.255.1.0/24".into(), mtu: 1450, dns_servers: vec![] },
    )
    .unwrap();
    let out = c2c_cni(&cell, "ADD", "c1", &ctr.path(), &conf);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let result: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["ips"][0]["address"], "10.255.1.2/32");
    assert_eq!(result["interfaces"][0]["name"], "s-010255001002");
    let link = Command::new("ip").args(["-n", &ctr.0, "-d", "link", "show", "eth0"]).output().unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("mtu 1450") && link.contains("ee:ee:0a:ff:01:02"), "{link}");

    // The store records the container with its metadata.
    let store = netagent::containers::ContainerStore::new(state.join("containers.json"));
    let all = store.all().unwrap();
    assert_eq!(all["c1"].ip, "10.255.1.2");
    assert_eq!(all["c1"].policy_group_id(), Some("app-a"));

    // A standard plugin chained after ours accepts our result.
    let chained = format!(
        r#"{{"cniVersion":"1.0.0","name":"c2c","type":"tuning","sysctl":{{"net.ipv4.conf.eth0.log_martians":"1"}},"prevResult":{}}}"#,
        out.stdout.trim()
    );
    let tuned = plugin(Path::new("/usr/lib/cni/tuning"), &cell, "ADD", "c1", &ctr.path(), &chained);
    assert_eq!(tuned.code, 0, "tuning refused our result: {}", tuned.stdout);

    let out = c2c_cni(&cell, "CHECK", "c1", &ctr.path(), &conf);
    assert_eq!(out.code, 0, "{}", out.stdout);

    // ADD of a second container, and one into a namespace that does not exist: rolled back.
    let ctr2 = Netns::new("ctr2");
    assert_eq!(c2c_cni(&cell, "ADD", "c2", &ctr2.path(), &conf).code, 0);
    let out = c2c_cni(&cell, "ADD", "c3", "/var/run/netns/nope", &conf);
    assert_eq!(out.code, 1);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap()["code"], 5);
    assert!(!store.all().unwrap().contains_key("c3"), "nothing recorded for a failed ADD");

    // DEL: interface and record gone, address free; DEL again and DEL of unknowns succeed.
    assert_eq!(c2c_cni(&cell, "DEL", "c1", &ctr.path(), &conf).code, 0);
    assert!(!Command::new("ip").args(["-n", &ctr.0, "link", "show", "eth0"]).output().unwrap().status.success());
    assert!(
        !Command::new("ip").args(["-n", &cell.0, "link", "show", "s-010255001002"]).output().unwrap().status.success()
    );
    assert!(!store.all().unwrap().contains_key("c1"));
    assert_eq!(c2c_cni(&cell, "DEL", "c1", &ctr.path(), &conf).code, 0);
    assert_eq!(c2c_cni(&cell, "DEL", "never-added", "", &conf).code, 0);

    // Bad input: clear CNI errors.
    let out = c2c_cni(&cell, "ADD", "c9", &ctr.path(), "{not json");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out.stdout).unwrap()["code"], 6);
    let out = c2c_cni(&cell, "VERSION", "", "", "");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(v["supportedVersions"].as_array().unwrap().iter().any(|x| x == "1.0.0"));
}
