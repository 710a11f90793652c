//! What netagent tells the CNI plugin about the cell (`<state_dir>/cell.json`: the cell's
//! subnet and the overlay MTU), and the address allocations the plugin keeps next to it
//! (`<state_dir>/ipam.json`, changed under `<state_dir>/ipam.lock`).

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ipam::{Allocations, IpamError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CellInfo {
    /// The cell's lease, e.g. `10.255.7.0/24`.
    pub subnet: String,
    /// The MTU for container interfaces (the VTEP's).
    pub mtu: u32,
    /// The nameservers the CNI result gives containers (the cell's DNS responder).
    #[serde(default)]
    pub dns_servers: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid JSON: {source}")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error(transparent)]
    Ipam(#[from] IpamError),
}

pub fn cell_file(state_dir: &Path) -> PathBuf {
    state_dir.join("cell.json")
}

pub fn read_cell(state_dir: &Path) -> Result<Option<CellInfo>, StateError> {
    let path = cell_file(state_dir);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|source| StateError::Corrupt { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io { path, source }),
    }
}

/// Written by netagent once the overlay is up (atomically: temporary file, then rename).
pub fn write_cell(state_dir: &Path, info: &CellInfo) -> Result<(), StateError> {
    let path = cell_file(state_dir);
    let io = |source| StateError::Io { path: path.clone(), source };
    std::fs::create_dir_all(state_dir).map_err(io)?;
    let tmp = state_dir.join(".cell.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(info).expect("serialisable")).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// Changes the allocations under the lock. Allocations of another subnet (the cell got a new
/// lease) are dropped: no container can keep an address outside the cell's subnet.
pub fn with_allocations<T>(
    state_dir: &Path,
    subnet: &str,
    change: impl FnOnce(&mut Allocations) -> Result<T, IpamError>,
) -> Result<T, StateError> {
    let lock_path = state_dir.join("ipam.lock");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Io { path, source }
    };
    std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
    lock.lock().map_err(io(&lock_path))?;
    let path = state_dir.join("ipam.json");
    let mut allocations = match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice::<Allocations>(&b)
            .map_err(|source| StateError::Corrupt { path: path.clone(), source })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Allocations::new(subnet)?,
        Err(e) => return Err(io(&path)(e)),
    };
    if allocations.subnet != subnet {
        allocations = Allocations::new(subnet)?;
    }
    let out = change(&mut allocations)?;
    let tmp = state_dir.join(".ipam.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&allocations).expect("serialisable")).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocations_persist_and_follow_the_subnet() {
        let dir = std::env::temp_dir().join(format!("c2c-ipam-{}", std::process::id()));
        let a = with_allocations(&dir, "10.255.7.0/24", |a| a.allocate("c1")).unwrap();
        let b = with_allocations(&dir, "10.255.7.0/24", |a| a.allocate("c2")).unwrap();
        assert_ne!(a, b);
        assert_eq!(with_allocations(&dir, "10.255.7.0/24", |a| a.allocate("c1")).unwrap(), a);
        let moved = with_allocations(&dir, "10.255.9.0/24", |a| a.allocate("c3")).unwrap();
        assert_eq!(moved.to_string(), "10.255.9.2");
        write_cell(&dir, &CellInfo { subnet: "10.255.9.0/24".into(), mtu: 1450, dns_servers: vec![] }).unwrap();
        assert_eq!(read_cell(&dir).unwrap().unwrap().mtu, 1450);
        let _ = std::fs::remove_dir_all(dir);
    }
}
