//! The CNI 1.0 protocol as `c2c-cni` speaks it: the environment and network configuration it
//! is given, the result and the error it prints.

pub mod config;
pub mod error;
pub mod plugin;
pub mod result;

/// Versions `c2c-cni` accepts in `cniVersion` (what `VERSION` reports).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

/// The answer to `VERSION`.
pub fn version_info() -> serde_json::Value {
    serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS})
}
