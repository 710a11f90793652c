//! Keeping the enforced ruleset in step with the control plane and the local containers:
//! a watch on the cells' API for the apps on this cell (ETag + `wait`), falling back to
//! polling, and an immediate reconcile when a container comes or goes. When the control
//! plane cannot be reached the last ruleset stays in force: nothing is opened or flushed.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use policy_client::{Watched, watched};
use tokio::sync::{Mutex, Notify};

use crate::containers::ContainerStore;
use crate::enforcement::Applied;
use crate::enforcement::Backend;
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
    /// Whether this agent has enforced at least once (until then, there is nothing of its
    /// own in the kernel to repair).
    enforced: bool,
}

pub struct PolicySync {
    client: policy_client::Client,
    store: ContainerStore,
    state: Mutex<State>,
    pub wake: Notify,
    stats: Stats,
}

/// What enforcement has done, for `/metrics`.
#[derive(Debug, Default)]
struct Stats {
    diffs: AtomicU64,
    full: AtomicU64,
    errors: AtomicU64,
    policies: AtomicU64,
    allow_entries: AtomicU64,
    last_apply_us: AtomicU64,
}

impl PolicySync {
    pub fn new(client: policy_client::Client, state_dir: PathBuf, backend: Backend) -> Arc<PolicySync> {
        Arc::new(PolicySync {
            client,
            store: ContainerStore::new(state_dir.join("containers.json")),
            state: Mutex::new(State {
                enforcer: backend,
                policies: Vec::new(),
                etag: None,
                ids: String::new(),
                enforced: false,
            }),
            wake: Notify::new(),
            stats: Stats::default(),
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
        let stats = &self.stats;
        stats.policies.store(state.policies.len() as u64, Ordering::Relaxed);
        state.enforced |= result.is_ok();
        match result {
            Ok(Applied::Nothing) => true,
            Ok(applied) => {
                let counter = if applied == Applied::Full { &stats.full } else { &stats.diffs };
                counter.fetch_add(1, Ordering::Relaxed);
                stats.allow_entries.store(desired.allows.len() as u64, Ordering::Relaxed);
                stats.last_apply_us.store(applied_in.as_micros() as u64, Ordering::Relaxed);
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
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "enforcing policies failed; the previous ruleset stays");
                state.etag = None;
                false
            }
        }
    }

    /// Enforcement metrics in Prometheus' text format (see docs/metrics.md).
    pub fn metrics(&self) -> String {
        let s = &self.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# HELP c2c_netagent_policy_applies_total Changes applied to the kernel, by kind.\n\
             # TYPE c2c_netagent_policy_applies_total counter\n\
             c2c_netagent_policy_applies_total{{kind=\"diff\"}} {}\n\
             c2c_netagent_policy_applies_total{{kind=\"full\"}} {}\n\
             # HELP c2c_netagent_policy_apply_errors_total Changes the kernel refused.\n\
             # TYPE c2c_netagent_policy_apply_errors_total counter\n\
             c2c_netagent_policy_apply_errors_total {}\n\
             # HELP c2c_netagent_policies Policies concerning this cell's apps.\n\
             # TYPE c2c_netagent_policies gauge\n\
             c2c_netagent_policies {}\n\
             # HELP c2c_netagent_allow_entries Allow entries installed.\n\
             # TYPE c2c_netagent_allow_entries gauge\n\
             c2c_netagent_allow_entries {}\n\
             # HELP c2c_netagent_last_apply_seconds Time the last change took in the kernel.\n\
             # TYPE c2c_netagent_last_apply_seconds gauge\n\
             c2c_netagent_last_apply_seconds {}\n",
            get(&s.diffs),
            get(&s.full),
            get(&s.errors),
            get(&s.policies),
            get(&s.allow_entries),
            get(&s.last_apply_us) as f64 / 1e6,
        )
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
                        if !enforced {
                            tokio::select! {
                                _ = tokio::time::sleep(backoff) => {}
                                _ = stopped.changed() => return,
                            }
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            continue;
                        }
                        backoff = Duration::from_millis(200);
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
                        if self.enforce(&mut *self.state.lock().await, &containers) {
                            backoff = Duration::from_millis(200);
                        }
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
