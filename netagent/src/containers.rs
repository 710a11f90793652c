//! The cell's container store: one JSON object keyed by container handle, in upstream's
//! format (`/var/vcap/data/container-metadata/store.json`), so upstream tools that read it
//! keep working. Writers take an exclusive lock on `<path>_lock` around every
//! read-modify-write and bump the integer in `<path>_version`; readers skip re-reading
//! while the version is unchanged.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub handle: String,
    pub ip: String,
    /// What the runtime passed: `policy_group_id` (the app GUID), `space_id`, `org_id`,
    /// `ports`, `container_workload`, and ours, `internal_routes`.
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    /// TCP port mappings, `[host port, container port]` (ours: upstream keeps them in
    /// iptables only; readers of upstream's format ignore the key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<(u16, u16)>,
    /// The runtime's egress rules (ours, as above).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub net_out_rules: Vec<crate::enforcement::egress::EgressRule>,
}

impl Container {
    fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.as_ref()?.get(key)?.as_str()
    }

    /// The app GUID policies are keyed by.
    pub fn policy_group_id(&self) -> Option<&str> {
        self.meta("policy_group_id").filter(|s| !s.is_empty())
    }

    pub fn space_id(&self) -> Option<&str> {
        self.meta("space_id").filter(|s| !s.is_empty())
    }

    /// `container_workload`: `app`, `task` or `staging`.
    pub fn workload(&self) -> Option<&str> {
        self.meta("container_workload")
    }

    /// As the planner sees it; None when the address is unreadable.
    pub fn local(&self) -> Option<crate::enforcement::plan::LocalContainer> {
        use crate::enforcement::{egress::Workload, plan::LocalContainer};
        Some(LocalContainer {
            ip: self.ip.parse().ok()?,
            app: self.policy_group_id().map(str::to_string),
            space: self.space_id().map(str::to_string),
            workload: Workload::parse(self.workload()),
            net_out: self.net_out_rules.clone(),
            port_mappings: self.port_mappings.clone(),
        })
    }

    /// Internal routes (`app-b.apps.internal`), comma-separated in the metadata.
    pub fn internal_routes(&self) -> Vec<String> {
        self.meta("internal_routes")
            .map(|s| s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("container store {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("host port {port} is already mapped to container {handle}")]
    PortTaken { port: u16, handle: String },
    #[error("container store {path} is not valid JSON ({source}); move it aside to start empty")]
    Corrupt { path: PathBuf, source: serde_json::Error },
}

pub struct ContainerStore {
    path: PathBuf,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl ContainerStore {
    pub fn new(path: impl Into<PathBuf>) -> ContainerStore {
        ContainerStore { path: path.into() }
    }

    fn io(&self, source: std::io::Error) -> StoreError {
        StoreError::Io { path: self.path.clone(), source }
    }

    fn lock(&self) -> Result<File, StoreError> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(sibling(&self.path, "_lock"))
            .map_err(|e| self.io(e))?;
        lock.lock().map_err(|e| self.io(e))?;
        Ok(lock)
    }

    fn read_unlocked(&self) -> Result<BTreeMap<String, Container>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(BTreeMap::new()),
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt { path: self.path.clone(), source })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// The write counter (1 when never written).
    pub fn version(&self) -> u64 {
        std::fs::read_to_string(sibling(&self.path, "_version")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1)
    }

    /// Every container, read under the lock.
    pub fn all(&self) -> Result<BTreeMap<String, Container>, StoreError> {
        let _lock = self.lock()?;
        self.read_unlocked()
    }

    /// Applies `change` to the whole store under the lock and writes it back atomically
    /// (temporary file, then rename), bumping the version.
    pub fn update<T>(&self, change: impl FnOnce(&mut BTreeMap<String, Container>) -> T) -> Result<T, StoreError> {
        let _lock = self.lock()?;
        let mut all = self.read_unlocked()?;
        let out = change(&mut all);
        let tmp = sibling(&self.path, ".tmp");
        let mut f = File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(&serde_json::to_vec(&all).expect("containers serialise")).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        let version = self.version() + 1;
        std::fs::write(sibling(&self.path, "_version"), version.to_string()).map_err(|e| self.io(e))?;
        Ok(out)
    }

    /// Adds (or replaces) a container, unless another container already has one of its
    /// host ports: then nothing changes and the error names that container.
    pub fn add(&self, c: Container) -> Result<(), StoreError> {
        self.update(|all| {
            for (port, _) in &c.port_mappings {
                if let Some(other) =
                    all.values().find(|o| o.handle != c.handle && o.port_mappings.iter().any(|(p, _)| p == port))
                {
                    return Err(StoreError::PortTaken { port: *port, handle: other.handle.clone() });
                }
            }
            all.insert(c.handle.clone(), c);
            Ok(())
        })?
    }

    /// Removes a container; unknown handles are fine.
    pub fn remove(&self, handle: &str) -> Result<Option<Container>, StoreError> {
        self.update(|all| all.remove(handle))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "c2c-store-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn container(handle: &str, ip: &str, app: &str) -> Container {
        let mut m = Map::new();
        m.insert("policy_group_id".into(), Value::String(app.into()));
        m.insert("internal_routes".into(), Value::String("app-b.apps.internal, 0.app-b.apps.internal".into()));
        Container { handle: handle.into(), ip: ip.into(), metadata: Some(m), ..Container::default() }
    }

    #[test]
    fn a_host_port_belongs_to_one_container() {
        let d = dir();
        let store = ContainerStore::new(d.join("store.json"));
        let mapped = |handle: &str, ip: &str, port: u16| Container {
            port_mappings: vec![(port, 8080)],
            ..container(handle, ip, "app")
        };
        store.add(mapped("h1", "10.255.7.2", 61000)).unwrap();
        let err = store.add(mapped("h2", "10.255.7.3", 61000)).unwrap_err().to_string();
        assert_eq!(err, "host port 61000 is already mapped to container h1");
        assert_eq!(store.all().unwrap().len(), 1, "nothing changed");
        store.add(mapped("h1", "10.255.7.2", 61000)).unwrap();
        store.add(mapped("h2", "10.255.7.3", 61001)).unwrap();
        let raw: Value = serde_json::from_slice(&std::fs::read(d.join("store.json")).unwrap()).unwrap();
        assert_eq!(raw["h2"]["port_mappings"], serde_json::json!([[61001, 8080]]));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn add_remove_and_upstream_format() {
        let d = dir();
        let store = ContainerStore::new(d.join("store.json"));
        assert!(store.all().unwrap().is_empty());
        assert_eq!(store.version(), 1);
        store.add(container("h1", "10.255.7.2", "app-a")).unwrap();
        store.add(container("h2", "10.255.7.3", "app-b")).unwrap();
        assert_eq!(store.version(), 3);
        let raw: Value = serde_json::from_slice(&std::fs::read(d.join("store.json")).unwrap()).unwrap();
        assert_eq!(raw["h1"]["ip"], "10.255.7.2");
        assert_eq!(raw["h1"]["metadata"]["policy_group_id"], "app-a");
        let all = store.all().unwrap();
        assert_eq!(all["h2"].policy_group_id(), Some("app-b"));
        assert_eq!(all["h2"].internal_routes(), vec!["app-b.apps.internal", "0.app-b.apps.internal"]);
        assert_eq!(store.remove("h1").unwrap().map(|c| c.ip), Some("10.255.7.2".into()));
        assert_eq!(store.remove("h1").unwrap(), None);
        assert_eq!(store.all().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn reads_upstream_files_and_refuses_garbage() {
        let d = dir();
        let path = d.join("store.json");
        std::fs::write(&path, r#"{"53069156":{"handle":"53069156","ip":"10.255.82.67","metadata":{"app_id":"x","policy_group_id":"x","ports":"8080, 2222"}},"n":{"handle":"n","ip":"10.255.82.68","metadata":null}}"#).unwrap();
        let store = ContainerStore::new(&path);
        let all = store.all().unwrap();
        assert_eq!(all["53069156"].policy_group_id(), Some("x"));
        assert_eq!(all["n"].policy_group_id(), None);
        std::fs::write(&path, "{nope").unwrap();
        assert!(matches!(store.all(), Err(StoreError::Corrupt { .. })));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let d = dir();
        let path = d.join("store.json");
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let store = ContainerStore::new(path);
                    for i in 0..20 {
                        store.add(container(&format!("h{t}-{i}"), "10.255.7.2", "a")).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ContainerStore::new(&path).all().unwrap().len(), 160);
        let _ = std::fs::remove_dir_all(d);
    }
}
