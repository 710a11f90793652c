//! The control plane's background jobs: the ASG sync from Cloud Controller, the pruning of
//! expired discovery registrations and the stale-policy cleanup, each on one timer helper.
//! The jobs sit here, above the snapshot, so that the modules they feed (`asgs`,
//! `discovery`, `cleanup`) stay plain data and logic and never import the snapshot.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::asgs::{self, SecurityGroup};
use crate::cleanup;
use crate::cloud_controller::{CcError, CloudController};
use crate::snapshot::Snapshots;
use crate::store::{Store, StoreError};

/// Runs `job` every `interval`, the first time after `first_after`, until the task is
/// aborted. A run that overruns delays the next instead of piling up.
fn every<F, Fut>(first_after: Duration, interval: Duration, mut job: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + first_after, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            job().await;
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    CloudController(#[from] CcError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// One ASG sync: read every security group from Cloud Controller and replace the table.
pub async fn sync_asgs_once(store: &Store, cc: &CloudController, snapshots: &Snapshots) -> Result<usize, SyncError> {
    let resources = cc.security_groups().await?;
    let groups: Vec<SecurityGroup> = resources.iter().filter_map(asgs::from_cc).collect();
    store.replace_security_groups(&groups).await?;
    snapshots.changed();
    Ok(groups.len())
}

/// Syncs ASGs every `interval`, at once on start, on whichever replica holds the
/// `asg-syncer` lock (a lease of three intervals, renewed by its holder at every run).
pub fn spawn_asg_sync(
    store: Store,
    cc: Arc<CloudController>,
    snapshots: Snapshots,
    interval: Duration,
) -> JoinHandle<()> {
    let me = uuid::Uuid::new_v4().to_string();
    every(Duration::ZERO, interval, move || {
        let (store, cc, snapshots, me) = (store.clone(), cc.clone(), snapshots.clone(), me.clone());
        async move {
            match store.try_lock("asg-syncer", &me, interval * 3).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => return tracing::error!(error = %e, "asg-syncer: lock check failed"),
            }
            let started = std::time::Instant::now();
            match sync_asgs_once(&store, &cc, &snapshots).await {
                Ok(n) => {
                    metrics::histogram!("c2c_asg_sync_duration_seconds").record(started.elapsed().as_secs_f64());
                    tracing::debug!(security_groups = n, "asg-syncer: synced");
                }
                Err(e) => tracing::error!(error = %e, "asg-syncer: sync failed, will retry"),
            }
        }
    })
}

/// Removes expired registrations every `interval`, so the table forgets cells that stopped
/// refreshing within `ttl + interval`.
pub fn spawn_registration_pruning(store: Store, snapshots: Snapshots, interval: Duration) -> JoinHandle<()> {
    every(Duration::ZERO, interval, move || {
        let (store, snapshots) = (store.clone(), snapshots.clone());
        async move {
            match store.prune_registrations().await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(expired = n, "pruned discovery registrations");
                    snapshots.changed();
                }
                Err(e) => tracing::warn!(error = %e, "pruning discovery registrations failed"),
            }
        }
    })
}

/// Runs the stale-policy cleanup every `interval`, first one interval after start, on
/// whichever replica holds the `policy-cleanup` lock (a lease of three intervals, renewed by
/// its holder at every run). Errors and refusals are logged; the next run tries again.
pub fn spawn_cleanup(
    store: Store,
    cc: Arc<CloudController>,
    interval: Duration,
    valve: cleanup::Valve,
) -> JoinHandle<()> {
    let me = uuid::Uuid::new_v4().to_string();
    every(interval, interval, move || {
        let (store, cc, me) = (store.clone(), cc.clone(), me.clone());
        async move {
            match store.try_lock("policy-cleanup", &me, interval * 3).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => return tracing::error!(error = %e, "poll-cycle: cleanup lock check failed"),
            }
            let run = cleanup::Run { dry_run: false, force: false };
            if let Err(e) = cleanup::run_once(&store, &cc, valve, run).await {
                tracing::error!(error = %e, "poll-cycle: stale policy cleanup failed");
            }
        }
    })
}
