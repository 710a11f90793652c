//! Keeping the enforced ruleset in step with the control plane and the local containers:
//! a watch on the cells' API for the apps on this cell (ETag + `wait`), falling back to
//! polling, and an immediate reconcile when a container comes or goes. When the control
//! plane cannot be reached the last ruleset stays in force: nothing is opened or flushed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use policy_client::{Watched, watched};
use tokio::sync::{Mutex, Notify};

use crate::containers::ContainerStore;
use crate::enforcement::Backend;
use crate::enforcement::nftables::Applied;
use crate::enforcement::plan::{LocalContainer, Proto, TaggedPolicy, parse_tag, plan};

/// Converts the cells' API answer.
pub fn tagged(list: &policy_client::types::PolicyList) -> Vec<TaggedPolicy> {
    list.policies
        .iter()
        .filter_map(|p| {
            Some(TaggedPolicy {
                source: p.source.id.clone(),
                source_tag: parse_tag(p.source.tag.as_deref()?)?,
                destination: p.destination.id.clone(),
                destination_tag: parse_tag(p.destination.tag.as_deref()?)?,
                proto: Proto::parse(&p.destination.protocol.to_string())?,
                start: u16::try_from(p.destination.ports.start).ok()?,
                end: u16::try_from(p.destination.ports.end).ok()?,
            })
        })
        .collect()
}

/// How often a control plane without the watch is asked (upstream agents: 5 s).
const POLL_INTERVAL: Duration = Duration::from_secs(5);

struct State {
    enforcer: Backend,
    policies: Vec<TaggedPolicy>,
    etag: Option<String>,
    ids: String,
}

pub struct PolicySync {
    client: policy_client::Client,
    store: ContainerStore,
    state: Mutex<State>,
    pub wake: Notify,
}

impl PolicySync {
    pub fn new(client: policy_client::Client, state_dir: PathBuf, backend: Backend) -> Arc<PolicySync> {
        Arc::new(PolicySync {
            client,
            store: ContainerStore::new(state_dir.join("containers.json")),
            state: Mutex::new(State { enforcer: backend, policies: Vec::new(), etag: None, ids: String::new() }),
            wake: Notify::new(),
        })
    }

    fn local(&self) -> (Vec<LocalContainer>, String) {
        let containers: Vec<LocalContainer> = self
            .store
            .all()
            .map(|all| {
                all.values()
                    .filter_map(|c| {
                        Some(LocalContainer { ip: c.ip.parse().ok()?, app: c.policy_group_id().map(str::to_string) })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut ids: Vec<String> = containers.iter().filter_map(|c| c.app.clone()).collect();
        ids.sort();
        ids.dedup();
        (containers, ids.join(","))
    }

    fn enforce(state: &mut State, containers: &[LocalContainer]) {
        Self::enforce_checked(state, containers, false)
    }

    fn enforce_checked(state: &mut State, containers: &[LocalContainer], deep: bool) {
        let desired = plan(&state.policies, containers);
        match state.enforcer.reconcile_checked(&desired, deep) {
            Ok(Applied::Nothing) => {}
            Ok(applied) => tracing::info!(?applied, allows = desired.allows.len(), "policies enforced"),
            Err(e) => tracing::error!(error = %e, "enforcing policies failed; the previous ruleset stays"),
        }
    }

    /// Now: read the containers, ask for their policies (no wait), enforce. Used when a
    /// container comes or goes, before the CNI plugin returns.
    pub async fn reconcile_once(&self) {
        let (containers, ids) = self.local();
        let mut state = self.state.lock().await;
        if !ids.is_empty() {
            match self.client.internal_policies(Some(&ids), None, None).await {
                Ok(list) => {
                    state.policies = tagged(&list.into_inner());
                    state.ids = ids;
                    state.etag = None;
                }
                Err(e) => tracing::warn!(error = %e, "cannot fetch policies; enforcing the last known ones"),
            }
        } else {
            state.policies.clear();
        }
        Self::enforce(&mut state, &containers);
        self.wake.notify_one();
    }

    /// The watch loop.
    pub async fn run(self: Arc<Self>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let (containers, ids) = self.local();
            let etag = {
                let mut state = self.state.lock().await;
                if state.ids != ids {
                    state.etag = None;
                    state.ids = ids.clone();
                }
                state.etag.clone()
            };
            if ids.is_empty() {
                Self::enforce(&mut *self.state.lock().await, &containers);
                tokio::select! {
                    _ = self.wake.notified() => continue,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = stopped.changed() => return,
                }
            }
            let request = self.client.internal_policies(Some(&ids), Some("25s"), etag.as_deref());
            tokio::select! {
                r = request => match watched(r) {
                    Ok(Watched::Changed { value, etag }) => {
                        backoff = Duration::from_millis(200);
                        let polling = etag.is_none();
                        {
                            let mut state = self.state.lock().await;
                            state.policies = tagged(&value);
                            state.etag = etag;
                            Self::enforce(&mut state, &containers);
                        }
                        // A server without the watch (upstream's) answers at once and sends
                        // no ETag: poll it at upstream's pace instead of hammering it.
                        if polling {
                            tokio::select! {
                                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                                _ = self.wake.notified() => {}
                                _ = stopped.changed() => return,
                            }
                        }
                    }
                    Ok(Watched::NotModified) => {
                        backoff = Duration::from_millis(200);
                        // A quiet round: check every element in the kernel (drift repair).
                        Self::enforce_checked(&mut *self.state.lock().await, &containers, true);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?backoff, "policy watch failed; enforcing the last known policies");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stopped.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                },
                _ = self.wake.notified() => {}
                _ = stopped.changed() => return,
            }
        }
    }
}
