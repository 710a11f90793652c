//! CNI errors: JSON on stdout with a code, a message and details, and a non-zero exit.

use serde::Serialize;

/// Well-known CNI error codes (CNI spec "Error" section); 100+ are the plugin's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// The cell agent could not be reached or refused.
    Agent = 100,
    /// No address left on this cell.
    AddressExhausted = 101,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: Code, msg: &str, details: impl Into<String>) -> CniError {
        CniError { cni_version: "1.0.0".into(), code: code as u32, msg: msg.into(), details: details.into() }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("errors serialise")
    }
}
