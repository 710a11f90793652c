//! Stale-policy cleanup: policies whose source or destination is no longer an app in Cloud
//! Controller are deleted, periodically and on demand (`POST .../policies/cleanup`).
//!
//! Upstream deletes whatever Cloud Controller does not list, so one bad answer (an empty
//! list from a broken Cloud Controller, or a client token without admin read access, which
//! sees no apps) wipes every policy of the foundation. Here a run refuses to start without
//! admin read access, and refuses to delete more than the safety valve allows unless an
//! admin forces it; a refusal changes nothing, is logged, and raises `c2c_cleanup_refused`.

use crate::cloud_controller::{CcError, CloudController};
use crate::policy::{Policy, PolicyFilter};
use crate::store::{Store, StoreError};

/// Runs that delete this many policies or fewer are never refused by the percentage.
const SMALL_RUN: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error("database read failed for c2c policies: {0}")]
    Read(StoreError),
    #[error("get app guids from Cloud-Controller failed: {0}")]
    CloudController(#[from] CcError),
    #[error(
        "cleanup refused: the policy server's UAA client lacks cloud_controller.admin_read_only (or cloud_controller.admin), so Cloud Controller would hide apps and every policy would look stale; grant the scope"
    )]
    NoAdminRead,
    #[error(
        "cleanup refused: it would delete {stale} of {total} policies, over the safety valve ({max_percent} % or {max_policies} policies); check Cloud Controller, then run it with force=true as an admin if this is right"
    )]
    TooMany { stale: usize, total: usize, max_percent: u32, max_policies: usize },
    #[error("database write failed: {0}")]
    Write(StoreError),
}

/// The safety valve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Valve {
    pub max_percent: u32,
    pub max_policies: usize,
}

impl Valve {
    /// Whether deleting `stale` of `total` policies needs an admin's explicit override.
    pub fn refuses(&self, stale: usize, total: usize) -> bool {
        stale > self.max_policies || (stale > SMALL_RUN && stale * 100 > total * self.max_percent as usize)
    }
}

/// How a run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Only report what would be deleted.
    pub dry_run: bool,
    /// Delete even beyond the safety valve (an admin asked for it).
    pub force: bool,
}

/// Finds the stale policies and, unless refused or a dry run, deletes them. Returns them.
pub async fn run_once(
    store: &Store,
    cc: &CloudController,
    valve: Valve,
    run: Run,
) -> Result<Vec<Policy>, CleanupError> {
    let result = run_checked(store, cc, valve, run).await;
    match &result {
        Err(CleanupError::NoAdminRead | CleanupError::TooMany { .. }) => {
            metrics::gauge!("c2c_cleanup_refused").set(1.0);
            metrics::counter!("c2c_cleanup_refusals_total").increment(1);
        }
        Ok(_) if !run.dry_run => metrics::gauge!("c2c_cleanup_refused").set(0.0),
        _ => {}
    }
    result
}

async fn run_checked(store: &Store, cc: &CloudController, valve: Valve, run: Run) -> Result<Vec<Policy>, CleanupError> {
    if !cc.has_admin_read().await? {
        return Err(CleanupError::NoAdminRead);
    }
    let all: Vec<Policy> =
        store.list(&PolicyFilter::All).await.map_err(CleanupError::Read)?.into_iter().map(|t| t.policy).collect();
    let apps = crate::policy::apps_of(&all);
    let live = cc.app_spaces(&apps, true).await?;
    let stale: Vec<Policy> =
        all.iter().filter(|p| !live.contains_key(&p.source) || !live.contains_key(&p.destination)).cloned().collect();
    if !run.force && valve.refuses(stale.len(), all.len()) {
        return Err(CleanupError::TooMany {
            stale: stale.len(),
            total: all.len(),
            max_percent: valve.max_percent,
            max_policies: valve.max_policies,
        });
    }
    if run.dry_run {
        tracing::info!(total_c2c_policies = all.len(), stale_c2c_policies = stale.len(), "stale policies (dry run)");
        return Ok(stale);
    }
    if !stale.is_empty() {
        store.delete(&stale).await.map_err(CleanupError::Write)?;
    }
    tracing::info!(total_c2c_policies = all.len(), stale_c2c_policies = stale.len(), "deleting stale policies");
    metrics::counter!("c2c_stale_policies_deleted_total").increment(stale.len() as u64);
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_valve_lets_small_and_partial_runs_through() {
        let valve = Valve { max_percent: 25, max_policies: 1000 };
        assert!(!valve.refuses(0, 0));
        assert!(!valve.refuses(2, 2), "a run of 10 or fewer is never refused by the percentage");
        assert!(!valve.refuses(10, 10));
        assert!(valve.refuses(11, 11));
        assert!(!valve.refuses(25, 100));
        assert!(valve.refuses(26, 100));
        assert!(valve.refuses(1001, 1_000_000), "the count holds whatever the table");
        assert!(!valve.refuses(1000, 1_000_000));
    }
}
