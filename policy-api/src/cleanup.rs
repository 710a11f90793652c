//! Stale-policy cleanup: policies whose source or destination is no longer an app in Cloud
//! Controller are deleted, periodically and on demand (`POST .../policies/cleanup`).

use crate::cloud_controller::{CcError, CloudController};
use crate::policy::{Policy, PolicyFilter};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("database read failed for c2c policies: {0}")]
    Read(StoreError),
    #[error("get app guids from Cloud-Controller failed: {0}")]
    CloudController(#[from] CcError),
    #[error("database write failed: {0}")]
    Write(StoreError),
}

/// Deletes stale policies and returns them.
pub async fn run_once(store: &Store, cc: &CloudController) -> Result<Vec<Policy>, CleanupError> {
    let all: Vec<Policy> =
        store.list(&PolicyFilter::All).await.map_err(CleanupError::Read)?.into_iter().map(|t| t.policy).collect();
    let apps = crate::policy::apps_of(&all);
    let live = cc.app_spaces(&apps, true).await?;
    let stale: Vec<Policy> =
        all.iter().filter(|p| !live.contains_key(&p.source) || !live.contains_key(&p.destination)).cloned().collect();
    if !stale.is_empty() {
        store.delete(&stale).await.map_err(CleanupError::Write)?;
    }
    tracing::info!(total_c2c_policies = all.len(), stale_c2c_policies = stale.len(), "deleting stale policies");
    metrics::counter!("c2c_stale_policies_deleted_total").increment(stale.len() as u64);
    Ok(stale)
}
