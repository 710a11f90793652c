//! Policy creates go through one writer per replica that groups the creates waiting at the
//! same moment into one transaction and one snapshot step.
//!
//! Every create locks the version row, so creates run one at a time across all replicas;
//! with one transaction each, sixteen clients get no more than one. Grouped, a burst of
//! single-policy creates (what the cf CLI sends) costs one transaction for all of them. Each
//! request keeps its own limits and its own answer.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::policy::Policy;
use crate::snapshot::Snapshots;
use crate::store::{CreateLimits, Store, StoreError, Written};

/// Most policies grouped into one transaction.
const MAX_BATCH_POLICIES: usize = 1000;

struct Job {
    policies: Vec<Policy>,
    limits: CreateLimits,
    reply: oneshot::Sender<Result<Written, StoreError>>,
}

/// The handle requests send their creates through.
#[derive(Clone)]
pub struct Writes {
    tx: mpsc::Sender<Job>,
}

impl Writes {
    /// Starts the writer; it publishes every committed create to `snapshots`. A
    /// transaction not committed within `deadline` is dropped (rolled back); keep it below
    /// the requests' own deadline, so a request answered 503 has changed nothing.
    pub fn start(store: Store, snapshots: Snapshots, deadline: Duration) -> (Writes, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(4096);
        (Writes { tx }, tokio::spawn(writer(store, snapshots, rx, deadline)))
    }

    /// Creates `policies` within `limits`, possibly in one transaction with other requests.
    /// The snapshot has the result when this returns.
    pub async fn create(&self, policies: Vec<Policy>, limits: CreateLimits) -> Result<Written, StoreError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Stopped;
        self.tx.send(Job { policies, limits, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn writer(store: Store, snapshots: Snapshots, mut rx: mpsc::Receiver<Job>, deadline: Duration) {
    let late = || StoreError::Deadline(deadline);
    while let Some(first) = rx.recv().await {
        let mut size = first.policies.len();
        let mut jobs = vec![first];
        while size < MAX_BATCH_POLICIES {
            match rx.try_recv() {
                Ok(job) => {
                    size += job.policies.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // A request that gave up (its deadline passed) is not written.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        metrics::histogram!("c2c_create_batch_requests").record(jobs.len() as f64);
        if jobs.len() > 1 {
            let requests: Vec<(Vec<Policy>, CreateLimits)> =
                jobs.iter().map(|j| (j.policies.clone(), j.limits)).collect();
            match tokio::time::timeout(deadline, store.create_batch(&requests)).await.unwrap_or_else(|_| Err(late())) {
                Ok((written, outcomes)) => {
                    snapshots.written(&written);
                    for (job, outcome) in jobs.into_iter().zip(outcomes) {
                        let _ = job.reply.send(outcome.map(|new_tags| Written { new_tags, ..written.clone() }));
                    }
                    continue;
                }
                // One request's id may fail them all (a type or case conflict): each on its own.
                Err(e) => tracing::debug!(error = %e, "grouped create failed; running its requests one by one"),
            }
        }
        for job in jobs {
            if job.reply.is_closed() {
                continue;
            }
            let result = tokio::time::timeout(deadline, store.create(&job.policies, job.limits))
                .await
                .unwrap_or_else(|_| Err(late()));
            if let Ok(written) = &result {
                snapshots.written(written);
            }
            let _ = job.reply.send(result);
        }
    }
}
