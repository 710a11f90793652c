//! Keeping the enforced ruleset in step with the control plane and the local containers:
//! a watch on the cells' API for the apps on this cell (ETag + `wait`), falling back to
//! polling, and an immediate reconcile when a container comes or goes. When the control
//! plane cannot be reached the last ruleset stays in force: nothing is opened or flushed.
//!
//! Fail static, everywhere: a container store that cannot be read keeps the last good
//! container set (and marks the agent degraded); the policies last enforced are kept in
//! `state_dir/policies.json`, so an agent restarted while the control plane is away covers
//! new containers with them, not with nothing.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use policy_client::{Watched, watched};
use tokio::sync::{Mutex, Notify};

use crate::backoff::Backoff;
use crate::containers::ContainerStore;
use crate::enforcement::plan::{CellFacts, LocalContainer, Proto, TaggedPolicy, parse_tag, plan_cell};
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
    facts: CellFacts,
    policies: Vec<TaggedPolicy>,
    /// What `policies.json` holds (written again only when the policies change).
    persisted: Vec<TaggedPolicy>,
    etag: Option<String>,
    ids: String,
    /// Whether this agent has enforced at least once (until then, there is nothing of its
    /// own in the kernel to repair).
    enforced: bool,
    /// The spaces `facts.groups` were fetched for (None: saved groups, or none yet).
    asg_spaces: Option<String>,
}

pub struct PolicySync {
    pub(crate) client: policy_client::Client,
    store: ContainerStore,
    policies_file: PathBuf,
    state: Mutex<State>,
    /// A container came or went: the watch asks again for the apps there are now.
    pub wake: Notify,
    /// The control plane answered something else (the lease renewal): a watch waiting out
    /// its back-off tries again at once.
    pub resume: Notify,
    /// App GUIDs by tag, for the traffic log (a c2c source on another cell is known by its
    /// tag only).
    tags: std::sync::Mutex<Arc<std::collections::HashMap<u16, String>>>,
    /// The containers' spaces may have changed: the security group watch asks again.
    pub asg_wake: Notify,
    groups_file: PathBuf,
    /// The last container set read from the store, kept when the store cannot be read.
    last_local: std::sync::Mutex<Option<(Vec<LocalContainer>, String)>>,
    store_failing: AtomicBool,
    telemetry: Arc<Telemetry>,
}

/// The policies last enforced, kept across restarts.
fn load_policies(path: &Path) -> Vec<TaggedPolicy> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "ignoring unreadable saved policies");
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

/// App GUIDs by tag, as the policies name them.
fn tags_of(policies: &[TaggedPolicy]) -> std::collections::HashMap<u16, String> {
    policies
        .iter()
        .flat_map(|p| [(p.source_tag, p.source.clone()), (p.destination_tag, p.destination.clone())])
        .collect()
}

/// Writes `policies` to `path` atomically (a temporary file, then a rename).
fn save_policies(path: &Path, policies: &[TaggedPolicy]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(policies).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, path)
}

/// Retries after a failed enforcement, and after the control plane could not be reached.
fn enforce_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(5))
}
/// Capped at one second: a cell is current within a second of the control plane's return.
fn watch_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(200), Duration::from_secs(1))
}

impl PolicySync {
    pub fn new(
        client: policy_client::Client,
        state_dir: PathBuf,
        enforcer: Box<dyn Enforce>,
        telemetry: Arc<Telemetry>,
        facts: CellFacts,
    ) -> Arc<PolicySync> {
        let policies_file = state_dir.join("policies.json");
        let groups_file = state_dir.join("security_groups.json");
        let saved = load_policies(&policies_file);
        let tags = std::sync::Mutex::new(Arc::new(tags_of(&saved)));
        let mut facts = facts;
        if facts.groups.is_empty() {
            facts.groups = crate::asg_sync::load(&groups_file);
        }
        if !saved.is_empty() {
            tracing::info!(policies = saved.len(), "enforcing the saved policies until the control plane answers");
        }
        Arc::new(PolicySync {
            client,
            store: ContainerStore::new(state_dir.join("containers.json")),
            policies_file,
            state: Mutex::new(State {
                enforcer,
                facts,
                policies: saved.clone(),
                persisted: saved,
                etag: None,
                ids: String::new(),
                enforced: false,
                asg_spaces: None,
            }),
            wake: Notify::new(),
            asg_wake: Notify::new(),
            tags,
            groups_file,
            resume: Notify::new(),
            last_local: std::sync::Mutex::new(None),
            store_failing: AtomicBool::new(false),
            telemetry,
        })
    }

    /// Whether the container store cannot be read (it is read again to tell).
    pub fn degraded(&self) -> bool {
        let _ = self.local();
        self.store_failing.load(Ordering::Relaxed)
    }

    /// The local containers and their apps' ids; on a store error, the last good ones. None
    /// when the store has never been read: then nothing may be enforced (an empty set would
    /// leave every existing container unguarded).
    pub(crate) fn local(&self) -> Option<(Vec<LocalContainer>, String)> {
        let mut last = self.last_local.lock().unwrap_or_else(|e| e.into_inner());
        match self.store.all() {
            Ok(all) => {
                let containers: Vec<LocalContainer> = all.values().filter_map(|c| c.local()).collect();
                let ids: BTreeSet<String> = containers.iter().filter_map(|c| c.app.clone()).collect();
                let ids = ids.into_iter().collect::<Vec<_>>().join(",");
                self.store_failing.store(false, Ordering::Relaxed);
                *last = Some((containers, ids));
            }
            Err(e) => {
                self.telemetry.store_errors.increment(1);
                if !self.store_failing.swap(true, Ordering::Relaxed) {
                    tracing::error!(error = %e, "cannot read the container store; keeping the last good containers and ruleset");
                }
            }
        }
        last.clone()
    }

    /// Every cell's underlay and VTEP address changed (cells came or went): enforce now.
    pub async fn set_cells(&self, cells: BTreeSet<Ipv4Addr>) {
        let mut state = self.state.lock().await;
        if state.facts.cells == cells {
            return;
        }
        state.facts.cells = cells;
        if let Some((containers, _)) = self.local() {
            self.enforce(&mut state, &containers);
        }
    }

    /// New security groups for the containers' `spaces`: enforce now, and keep them for a
    /// restart without the control plane.
    pub async fn set_groups(&self, spaces: &str, groups: Vec<crate::enforcement::egress::Group>) {
        let mut state = self.state.lock().await;
        state.asg_spaces = Some(spaces.to_string());
        if state.facts.groups == groups {
            return;
        }
        if let Err(e) = crate::asg_sync::save(&self.groups_file, &groups) {
            tracing::warn!(file = %self.groups_file.display(), error = %e, "cannot save the security groups");
        }
        tracing::info!(groups = groups.len(), "security groups changed");
        state.facts.groups = groups;
        if let Some((containers, _)) = self.local() {
            self.enforce(&mut state, &containers);
        }
    }

    /// What is logged changed (the local API's toggle): enforce now.
    pub async fn set_logging(&self, logging: crate::enforcement::plan::Logging) -> bool {
        let mut state = self.state.lock().await;
        let Some(edge) = state.facts.edge.as_mut() else { return false };
        edge.logging = logging;
        match self.local() {
            Some((containers, _)) => self.enforce(&mut state, &containers),
            None => true,
        }
    }

    /// The app a tag stands for, as far as this cell's policies tell.
    pub fn app_of_tag(&self, tag: u16) -> Option<String> {
        self.tags.lock().unwrap_or_else(|e| e.into_inner()).get(&tag).cloned()
    }

    /// What is logged now.
    pub async fn logging(&self) -> Option<crate::enforcement::plan::Logging> {
        self.state.lock().await.facts.edge.as_ref().map(|e| e.logging)
    }

    /// Plans and applies; false when the kernel refused (what was there stays in force).
    /// A failed round forgets the ETag, so the next watch request answers at once and the
    /// change is tried again rather than at the next quiet round.
    fn enforce(&self, state: &mut State, containers: &[LocalContainer]) -> bool {
        let started = std::time::Instant::now();
        let desired = plan_cell(&state.policies, containers, &state.facts);
        let planned = started.elapsed();
        let result = state.enforcer.reconcile(&desired);
        let applied_in = started.elapsed() - planned;
        let t = &self.telemetry;
        t.policies.set(state.policies.len() as f64);
        state.enforced |= result.is_ok();
        match result {
            Ok(Applied::Nothing) => {
                self.persist(state);
                true
            }
            Ok(applied) => {
                let counter = if applied == Applied::Full { &t.applies_full } else { &t.applies_diff };
                counter.increment(1);
                t.allow_entries.set(desired.allows.len() as f64);
                t.egress_entries.set(desired.egress.len() as f64);
                t.port_mappings.set(desired.forwards.len() as f64);
                t.security_groups.set(state.facts.groups.len() as f64);
                t.last_apply_seconds.set(applied_in.as_secs_f64());
                self.persist(state);
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

    /// Keeps the policies in force on disk, for a restart without the control plane.
    fn persist(&self, state: &mut State) {
        if state.persisted == state.policies {
            return;
        }
        *self.tags.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(tags_of(&state.policies));
        match save_policies(&self.policies_file, &state.policies) {
            Ok(()) => state.persisted = state.policies.clone(),
            Err(e) => {
                tracing::warn!(file = %self.policies_file.display(), error = %e, "cannot save the enforced policies")
            }
        }
    }

    /// Now: read the containers, ask for their policies (no wait), enforce. Used when a
    /// container comes or goes, before the CNI plugin returns: true only when the
    /// containers' rules are in the kernel.
    pub async fn reconcile_once(&self) -> bool {
        let Some((containers, ids)) = self.local() else { return false };
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
        // A container of a space new to this cell gets its space's groups before it runs
        // (upstream's force-asgs-for-container); when they cannot be fetched it gets what
        // the cell has, which denies more, never less.
        let spaces = crate::asg_sync::spaces(&containers);
        if state.facts.edge.is_some() && state.asg_spaces.as_deref() != Some(spaces.as_str()) {
            match crate::asg_sync::fetch(&self.client, &spaces).await {
                Ok(groups) => {
                    if state.facts.groups != groups
                        && let Err(e) = crate::asg_sync::save(&self.groups_file, &groups)
                    {
                        tracing::warn!(error = %e, "cannot save the security groups");
                    }
                    state.facts.groups = groups;
                    state.asg_spaces = Some(spaces);
                }
                Err(e) => tracing::warn!(error = %e, "cannot fetch security groups; enforcing the last known ones"),
            }
        }
        let enforced = self.enforce(&mut state, &containers);
        self.wake.notify_one();
        self.asg_wake.notify_one();
        enforced
    }

    /// Repairs the kernel as soon as anyone changes nf_tables (nftables, and iptables-nft): a thread
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
                let Some((containers, _)) = self.local() else { continue };
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
            let Some((containers, ids)) = self.local() else {
                // Nothing known of the containers yet: the kernel keeps what it has.
                tokio::select! {
                    _ = tokio::time::sleep(enforce_retry.next_wait()) => continue,
                    _ = self.wake.notified() => continue,
                    _ = stopped.changed() => return,
                }
            };
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
                        let Some((containers, now)) = self.local() else { continue };
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
                        let Some((containers, _)) = self.local() else { continue };
                        watch_retry.reset();
                        if self.enforce(&mut *self.state.lock().await, &containers) {
                            enforce_retry.reset();
                        }
                    }
                    Err(e) => {
                        let wait = watch_retry.next_wait_jittered();
                        tracing::warn!(error = %e, retry_in = ?wait, "policy watch failed; enforcing the last known policies");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = self.resume.notified() => watch_retry.reset(),
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
