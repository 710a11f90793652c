//! Keeping the enforced ruleset in step with the control plane and the local containers:
//! a watch on the cells' API for the apps on this cell (ETag + `wait`), falling back to
//! polling, and an immediate reconcile when a container comes or goes. When the control
//! plane cannot be reached the last ruleset stays in force: nothing is opened or flushed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use policy_client::{Watched, watched};
use tokio::sync::{Mutex, Notify};

use crate::backoff::Backoff;
use crate::containers::ContainerStore;
use crate::enforcement::plan::{LocalContainer, Proto, TaggedPolicy, parse_tag, plan};
use crate::enforcement::{Applied, Enforce};
use crate::telemetry::Telemetry;

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
    enforcer: Box<dyn Enforce>,
    policies: Vec<TaggedPolicy>,
    etag: Option<String>,
    ids: String,
    /// Whether this agent has enforced at least once (until then, there is nothing of its
    /// own in the kernel to repair).
    enforced: bool,
}

pub struct PolicySync {
    client: policy_client::Client,
    store: ContainerStore,
    state: Mutex<State>,
    pub wake: Notify,
    telemetry: Arc<Telemetry>,
}

/// Retries after a failed enforcement, and after the control plane could not be reached.
fn enforce_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
}
fn watch_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(30))
}

impl PolicySync {
    pub fn new(
        client: policy_client::Client,
        state_dir: PathBuf,
        enforcer: Box<dyn Enforce>,
        telemetry: Arc<Telemetry>,
    ) -> Arc<PolicySync> {
        Arc::new(PolicySync {
            client,
            store: ContainerStore::new(state_dir.join("containers.json")),
            state: Mutex::new(State {
                enforcer,
                policies: Vec::new(),
                etag: None,
                ids: String::new(),
                enforced: false,
            }),
            wake: Notify::new(),
            telemetry,
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

    /// Plans and applies; false when the kernel refused (what was there stays in force).
    /// A failed round forgets the ETag, so the next watch request answers at once and the
    /// change is tried again rather than at the next quiet round.
    fn enforce(&self, state: &mut State, containers: &[LocalContainer]) -> bool {
        let started = std::time::Instant::now();
        let desired = plan(&state.policies, containers);
        let planned = started.elapsed();
        let result = state.enforcer.reconcile(&desired);
        let applied_in = started.elapsed() - planned;
        let t = &self.telemetry;
        t.policies.set(state.policies.len() as f64);
        state.enforced |= result.is_ok();
        match result {
            Ok(Applied::Nothing) => true,
            Ok(applied) => {
                let counter = if applied == Applied::Full { &t.applies_full } else { &t.applies_diff };
                counter.increment(1);
                t.allow_entries.set(desired.allows.len() as f64);
                t.last_apply_seconds.set(applied_in.as_secs_f64());
                tracing::info!(
                    ?applied,
                    allows = desired.allows.len(),
                    plan_ms = planned.as_secs_f64() * 1e3,
                    apply_ms = applied_in.as_secs_f64() * 1e3,
                    "policies enforced"
                );
                true
            }
            Err(e) => {
                t.apply_errors.increment(1);
                tracing::error!(error = %e, "enforcing policies failed; the previous ruleset stays");
                state.etag = None;
                false
            }
        }
    }

    /// Now: read the containers, ask for their policies (no wait), enforce. Used when a
    /// container comes or goes, before the CNI plugin returns.
    pub async fn reconcile_once(&self) {
        let (containers, ids) = self.local();
        let mut state = self.state.lock().await;
        if !ids.is_empty() {
            // A new instance of an app already here changes no policy: the server says so
            // with a 304 and nothing is downloaded or decoded again.
            let etag = if state.ids == ids { state.etag.clone() } else { None };
            let started = std::time::Instant::now();
            match watched(self.client.internal_policies(Some(&ids), None, etag.as_deref()).await) {
                Ok(Watched::Changed { value, etag }) => {
                    tracing::debug!(fetch_ms = started.elapsed().as_secs_f64() * 1e3, "policies fetched");
                    state.policies = tagged(&value);
                    state.ids = ids;
                    state.etag = etag;
                }
                Ok(Watched::NotModified) => {}
                Err(e) => tracing::warn!(error = %e, "cannot fetch policies; enforcing the last known ones"),
            }
        } else {
            state.policies.clear();
        }
        let _ = self.enforce(&mut state, &containers);
        self.wake.notify_one();
    }

    /// Repairs the kernel as soon as anyone changes nftables (nftables backend): a thread
    /// hears every commit in this network namespace and the ruleset is checked right away
    /// (a commit of our own costs one generation read). Without this, drift is repaired on
    /// the next quiet round of the watch, within 25 s.
    pub fn watch_kernel(
        self: Arc<Self>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, crate::enforcement::nf_netlink::NfNetlinkError> {
        use crate::enforcement::nf_netlink::{Heard, NfMonitor};
        // Opened here, in the agent's namespace; the thread inherits nothing else it needs.
        let monitor = NfMonitor::open()?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done_thread = done.clone();
        // Named after the agent's own thread, so that its time is counted with the agent's.
        let name = format!("{}-nft", std::thread::current().name().unwrap_or("netagent"));
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                while !done_thread.load(Ordering::Relaxed) {
                    match monitor.wait(Duration::from_secs(1)) {
                        Ok(Heard::Change) => {
                            // Let a burst of commits finish, then look once.
                            while let Ok(Heard::Change) = monitor.wait(Duration::from_millis(20)) {}
                            let _ = tx.try_send(());
                        }
                        Ok(Heard::Quiet) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot hear nftables changes; drift is repaired on quiet rounds");
                            return;
                        }
                    }
                }
            })
            .map_err(crate::enforcement::nf_netlink::NfNetlinkError::Socket)?;
        Ok(tokio::spawn(async move {
            loop {
                tokio::select! {
                    heard = rx.recv() => if heard.is_none() { break },
                    _ = stopped.changed() => break,
                }
                let (containers, _) = self.local();
                let mut state = self.state.lock().await;
                if state.enforced {
                    self.enforce(&mut state, &containers);
                }
            }
            done.store(true, Ordering::Relaxed);
        }))
    }

    /// The watch loop.
    pub async fn run(self: Arc<Self>, mut stopped: tokio::sync::watch::Receiver<bool>) {
        let mut enforce_retry = enforce_backoff();
        let mut watch_retry = watch_backoff();
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
                let _ = self.enforce(&mut *self.state.lock().await, &containers);
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
                        // The containers may have changed during the wait: enforce for
                        // those there are now, and when their apps changed, this answer is
                        // for the wrong apps: ask again at once.
                        let (containers, now) = self.local();
                        if now != ids {
                            continue;
                        }
                        let polling = etag.is_none();
                        let enforced = {
                            let mut state = self.state.lock().await;
                            state.policies = tagged(&value);
                            state.etag = etag;
                            self.enforce(&mut state, &containers)
                        };
                        // A server without the watch (upstream's) answers at once and sends
                        // no ETag: poll it at upstream's pace instead of hammering it. After
                        // a failed enforcement, wait a little before trying again.
                        watch_retry.reset();
                        if !enforced {
                            tokio::select! {
                                _ = tokio::time::sleep(enforce_retry.next_wait()) => {}
                                _ = stopped.changed() => return,
                            }
                            continue;
                        }
                        enforce_retry.reset();
                        if polling {
                            tokio::select! {
                                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                                _ = self.wake.notified() => {}
                                _ = stopped.changed() => return,
                            }
                        }
                    }
                    Ok(Watched::NotModified) => {
                        // A quiet round: repair whatever someone else changed in the kernel.
                        let (containers, _) = self.local();
                        watch_retry.reset();
                        if self.enforce(&mut *self.state.lock().await, &containers) {
                            enforce_retry.reset();
                        }
                    }
                    Err(e) => {
                        let wait = watch_retry.next_wait();
                        tracing::warn!(error = %e, retry_in = ?wait, "policy watch failed; enforcing the last known policies");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = stopped.changed() => return,
                        }
                    }
                },
                _ = self.wake.notified() => {}
                _ = stopped.changed() => return,
            }
        }
    }
}
