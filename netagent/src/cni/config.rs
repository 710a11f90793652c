//! What a runtime gives `c2c-cni`: `CNI_*` environment variables and the network
//! configuration on stdin (with `runtimeConfig` and `args`).
//!
//! Container metadata is read from, in order: `args.cni.c2c` (an object), the top-level
//! `metadata` object Garden's external networker injects into every plugin, then `CNI_ARGS`
//! keys. Keys: `app_id`/`policy_group_id` (the app GUID), `space_id`, `org_id`, `ports`,
//! `container_workload`, `internal_routes` (comma-separated hostnames). `portMappings`
//! (CNI's `hostPort`/`containerPort`, or the networker's `host_port`/`container_port`) and
//! `netOutRules` (Garden's format) come from `runtimeConfig`.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::SUPPORTED_VERSIONS;
use super::error::{CniError, Code};
use crate::naming::valid_ifname;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// The `CNI_*` environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: BTreeMap<String, String>,
}

fn env_error(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidEnvironment, "invalid CNI environment", msg)
}

impl Env {
    /// From variables (`get("CNI_COMMAND")` …), so tests need not touch the process env.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("STATUS") => Command::Status,
            Some("GC") => Command::Gc,
            Some(other) => return Err(env_error(format!("unknown CNI_COMMAND {other:?}"))),
            None => return Err(env_error("CNI_COMMAND is not set")),
        };
        let needs_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let var = |name: &str| -> Result<String, CniError> {
            match get(name) {
                Some(v) if !v.is_empty() => Ok(v),
                _ if needs_container => Err(env_error(format!("{name} is required for this command"))),
                _ => Ok(String::new()),
            }
        };
        let container_id = var("CNI_CONTAINERID")?;
        let ifname = var("CNI_IFNAME")?;
        // DEL may come without a network namespace (the container is gone already).
        let netns = if command == Command::Del { get("CNI_NETNS").unwrap_or_default() } else { var("CNI_NETNS")? };
        if needs_container && !valid_ifname(&ifname) {
            return Err(env_error(format!("CNI_IFNAME {ifname:?} is not a valid interface name")));
        }
        let mut args = BTreeMap::new();
        for pair in get("CNI_ARGS").unwrap_or_default().split(';').filter(|s| !s.is_empty()) {
            let (k, v) =
                pair.split_once('=').ok_or_else(|| env_error(format!("CNI_ARGS entry {pair:?} is not KEY=VALUE")))?;
            args.insert(k.to_string(), v.to_string());
        }
        Ok(Env { command, container_id, netns, ifname, args })
    }
}

/// One port mapping, as CNI's `portMappings` capability writes it (`hostPort`,
/// `containerPort`) or as Garden's external networker passes its netin (`host_port`,
/// `container_port`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    #[serde(rename = "hostPort", alias = "host_port")]
    pub host_port: u16,
    #[serde(rename = "containerPort", alias = "container_port")]
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Option<String>,
    /// CNI's `hostIP`: mappings listen on the cell's underlay address whatever it says.
    #[serde(default, rename = "hostIP")]
    pub host_ip: Option<String>,
}

fn port_mappings(v: &Value) -> Result<Vec<PortMapping>, CniError> {
    let at = |e: String| conf_error(format!("runtimeConfig.portMappings: {e}"));
    let list: Vec<PortMapping> = serde_json::from_value(v.clone()).map_err(|e| at(e.to_string()))?;
    for m in &list {
        if m.host_port == 0 || m.container_port == 0 {
            return Err(at(format!(
                "ports must be 1-65535 (host {}, container {}); Garden's networker allocates host port 0 before it calls plugins",
                m.host_port, m.container_port
            )));
        }
        if m.protocol.as_deref().is_some_and(|p| !p.eq_ignore_ascii_case("tcp")) {
            return Err(at(format!("only tcp mappings are forwarded, not {:?}", m.protocol.as_deref().unwrap_or(""))));
        }
    }
    Ok(list)
}

/// Where netagent listens by default (its `listen`).
pub const DEFAULT_AGENT: &str = "http://127.0.0.1:23954";

/// The network configuration (stdin).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// Where the cell agent keeps its state (container store, IPAM); default
    /// `/var/vcap/data/c2c`.
    pub state_dir: String,
    /// netagent's local URL, asked to reconcile after ADD/DEL; default netagent's default
    /// listener, `http://127.0.0.1:23954`. Empty: do not ask (no enforcement guarantee).
    pub agent: String,
    /// Overrides the overlay MTU when non-zero.
    pub mtu: u32,
    pub port_mappings: Vec<PortMapping>,
    /// `runtimeConfig.netOutRules`.
    pub net_out_rules: Vec<crate::enforcement::egress::EgressRule>,
    pub metadata: Map<String, Value>,
    /// The previous plugin's result (when chained).
    pub prev_result: Option<Value>,
}

fn conf_error(msg: impl Into<String>) -> CniError {
    CniError::new(Code::InvalidConfig, "invalid network configuration", msg)
}

impl NetConf {
    pub fn parse(stdin: &[u8], env: &Env) -> Result<NetConf, CniError> {
        let v: Value = serde_json::from_slice(stdin)
            .map_err(|e| CniError::new(Code::Decode, "failed to decode network configuration", e.to_string()))?;
        let obj = v.as_object().ok_or_else(|| conf_error("the network configuration must be a JSON object"))?;
        let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        // Runtimes write it (a conflist's version is given to each plugin); a bare
        // configuration without one is taken as this plugin's own version.
        let cni_version = s("cniVersion").unwrap_or_else(|| "1.0.0".into());
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                "incompatible CNI version",
                format!("cniVersion {cni_version} is not one of {SUPPORTED_VERSIONS:?}"),
            ));
        }
        let name = s("name").ok_or_else(|| conf_error("name is missing"))?;
        let mtu = match obj.get("mtu") {
            None | Some(Value::Null) => 0,
            Some(v) => v
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .ok_or_else(|| conf_error("mtu must be a non-negative integer"))?,
        };
        let port_mappings = match v.pointer("/runtimeConfig/portMappings") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => port_mappings(v)?,
        };
        let net_out_rules = match v.pointer("/runtimeConfig/netOutRules") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => crate::enforcement::egress::from_garden(v).map_err(|e| conf_error(e.0))?,
        };
        let mut metadata: Map<String, Value> = match v.pointer("/args/cni/c2c") {
            Some(Value::Object(m)) => m.clone(),
            None | Some(Value::Null) => Map::new(),
            Some(_) => return Err(conf_error("args.cni.c2c must be an object")),
        };
        match obj.get("metadata") {
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    metadata.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            None | Some(Value::Null) => {}
            Some(_) => return Err(conf_error("metadata must be an object")),
        }
        for (k, v) in &env.args {
            metadata.entry(k.to_lowercase()).or_insert_with(|| Value::String(v.clone()));
        }
        if !metadata.contains_key("policy_group_id")
            && let Some(app) = metadata.get("app_id").cloned()
        {
            metadata.insert("policy_group_id".into(), app);
        }
        Ok(NetConf {
            cni_version,
            name,
            state_dir: s("stateDir").unwrap_or_else(|| "/var/vcap/data/c2c".into()),
            agent: s("agent").unwrap_or_else(|| DEFAULT_AGENT.into()),
            mtu,
            port_mappings,
            net_out_rules,
            metadata,
            prev_result: obj.get("prevResult").cloned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Env::from_vars(|k| map.get(k).cloned())
    }

    fn add_env() -> Env {
        env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;app_id=app-a;space_id=s1"),
        ])
        .unwrap()
    }

    #[test]
    fn environment() {
        let e = add_env();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.args["app_id"], "app-a");
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert_eq!(env(&[]).unwrap_err().code, 4);
        assert_eq!(env(&[("CNI_COMMAND", "ADD")]).unwrap_err().code, 4);
        assert!(
            env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c"), ("CNI_IFNAME", "eth0")]).is_ok(),
            "DEL without netns"
        );
        let bad = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c"), ("CNI_NETNS", "/n"), ("CNI_IFNAME", "a/b")]);
        assert_eq!(bad.unwrap_err().code, 4);
        let bad = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_NETNS", "/n"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "novalue"),
        ]);
        assert_eq!(bad.unwrap_err().code, 4);
    }

    #[test]
    fn network_configuration() {
        let conf = br#"{"cniVersion":"1.0.0","name":"c2c","type":"c2c-cni","mtu":1400,
            "runtimeConfig":{"portMappings":[{"hostPort":61000,"containerPort":8080,"protocol":"tcp"}]},
            "args":{"cni":{"c2c":{"policy_group_id":"app-b","internal_routes":"b.apps.internal"}}}}"#;
        let n = NetConf::parse(conf, &add_env()).unwrap();
        assert_eq!(n.mtu, 1400);
        assert_eq!(n.port_mappings[0].container_port, 8080);
        assert_eq!(n.metadata["policy_group_id"], "app-b", "args.cni.c2c wins over CNI_ARGS");
        assert_eq!(n.metadata["space_id"], "s1");
        let n = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"c2c"}"#, &add_env()).unwrap();
        assert_eq!(n.metadata["policy_group_id"], "app-a", "app_id from CNI_ARGS");
    }

    /// What Garden's external networker writes into each plugin of the list (spec §4.2).
    #[test]
    fn garden_external_networker_input() {
        let conf = br#"{"cniVersion":"1.0.0","name":"c2c","type":"c2c-cni",
            "metadata":{"policy_group_id":"app-g","app_id":"app-g","space_id":"space-1","org_id":"org-1",
                "ports":"8080","container_workload":"app"},
            "runtimeConfig":{"portMappings":[{"host_port":61000,"container_port":8080}],
                "netOutRules":[{"protocol":1,"networks":[{"start":"10.0.0.1","end":"10.0.0.9"}],"ports":[{"start":443,"end":443}]}]}}"#;
        let n = NetConf::parse(conf, &add_env()).unwrap();
        assert_eq!(n.metadata["policy_group_id"], "app-g", "the networker's metadata wins over CNI_ARGS");
        assert_eq!(n.metadata["space_id"], "space-1");
        assert_eq!(n.metadata["container_workload"], "app");
        assert_eq!((n.port_mappings[0].host_port, n.port_mappings[0].container_port), (61000, 8080));
        assert_eq!(n.net_out_rules.len(), 1);
        let both = br#"{"name":"c2c","runtimeConfig":{"portMappings":[{"hostPort":61001,"containerPort":8081,"protocol":"tcp","hostIP":""}]}}"#;
        assert_eq!(NetConf::parse(both, &add_env()).unwrap().port_mappings[0].host_port, 61001);
    }

    #[test]
    fn bad_runtime_config_is_refused_with_the_reason() {
        let e = add_env();
        for (conf, says) in [
            (r#"{"name":"x","runtimeConfig":{"portMappings":[{"host_port":0,"container_port":8080}]}}"#, "1-65535"),
            (
                r#"{"name":"x","runtimeConfig":{"portMappings":[{"hostPort":1,"containerPort":2,"protocol":"udp"}]}}"#,
                "only tcp",
            ),
            (r#"{"name":"x","runtimeConfig":{"portMappings":[{"container_port":8080}]}}"#, "missing field"),
            (r#"{"name":"x","runtimeConfig":{"netOutRules":[{"protocol":7}]}}"#, "netOutRules[0]"),
            (r#"{"name":"x","runtimeConfig":{"netOutRules":{}}}"#, "netOutRules"),
            (r#"{"name":"x","metadata":"app"}"#, "metadata must be an object"),
        ] {
            let err = NetConf::parse(conf.as_bytes(), &e).unwrap_err();
            assert_eq!(err.code, 7, "{conf}");
            assert!(err.to_json().contains(says), "{conf}: {}", err.to_json());
        }
    }

    #[test]
    fn bad_configurations_are_clear_errors() {
        let e = add_env();
        assert_eq!(NetConf::parse(b"{", &e).unwrap_err().code, 6);
        assert_eq!(NetConf::parse(b"[]", &e).unwrap_err().code, 7);
        assert_eq!(NetConf::parse(br#"{"name":"x"}"#, &e).unwrap().cni_version, "1.0.0", "a bare configuration");
        assert_eq!(NetConf::parse(br#"{"cniVersion":"0.1.0","name":"x"}"#, &e).unwrap_err().code, 1);
        assert_eq!(NetConf::parse(br#"{"cniVersion":"1.0.0","name":"x","mtu":-1}"#, &e).unwrap_err().code, 7);
        assert_eq!(
            NetConf::parse(
                br#"{"cniVersion":"1.0.0","name":"x","runtimeConfig":{"portMappings":[{"hostPort":"a"}]}}"#,
                &e
            )
            .unwrap_err()
            .code,
            7
        );
    }
}
