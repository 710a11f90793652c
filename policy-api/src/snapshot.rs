//! The in-memory, versioned view of everything cells ask for (policies with tags, ASGs,
//! discovery registrations). Cells are answered from it, never from SQL per request.
//!
//! A local policy write is applied to it directly from what the write changed (when it is
//! the only write since the snapshot's version), so cells see it without a reload. A loader
//! keeps it current otherwise: it wakes at once after other local writes and checks the
//! database's version counters every `poll_interval`, so changes made through another
//! replica are seen within that interval (1 s by default) plus one reload. Each version is
//! published through a `watch` channel, which is also what wakes long-polling cells.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

pub use crate::answers::Answer;
use crate::answers::Answers;
use crate::asgs::SecurityGroup;
use crate::discovery;
use crate::mapper;
use crate::policy::{Policy, PolicyFilter, TaggedPolicy};
use crate::policy_set::PolicySet;
use crate::store::{PolicyChange, Store, StoreError, Versions, Written};

pub struct Snapshot {
    pub versions: Versions,
    /// Shared with the snapshots before and after it: a write changes only what it wrote.
    pub policies: PolicySet,
    pub security_groups: Arc<Vec<SecurityGroup>>,
    pub registrations: Arc<BTreeMap<String, Vec<String>>>,
    /// Answers already rendered at this version, by request key.
    answers: Answers,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("versions", &self.versions)
            .field("policies", &self.policies.len())
            .field("security_groups", &self.security_groups.len())
            .field("hostnames", &self.registrations.len())
            .finish()
    }
}

impl Snapshot {
    pub fn new(
        versions: Versions,
        policies: PolicySet,
        security_groups: Arc<Vec<SecurityGroup>>,
        registrations: Arc<BTreeMap<String, Vec<String>>>,
    ) -> Snapshot {
        Snapshot { versions, policies, security_groups, registrations, answers: Answers::default() }
    }

    /// Policies whose source or destination is one of `ids` (all with `None`), in creation
    /// order, each once.
    pub fn policies_for<'a>(&'a self, ids: Option<&[&str]>) -> Vec<&'a TaggedPolicy> {
        match ids {
            None => self.policies.iter().collect(),
            Some(ids) => self.policies.naming(ids),
        }
    }

    /// The policies a listing with `filter` selects, in creation order, found through the
    /// per-app index rather than a scan.
    pub fn select(&self, filter: &PolicyFilter) -> Vec<&TaggedPolicy> {
        let ids = match filter {
            PolicyFilter::All => return self.policies.iter().collect(),
            PolicyFilter::Any(ids)
            | PolicyFilter::Source(ids)
            | PolicyFilter::Destination(ids)
            | PolicyFilter::SourceAndDestination(ids, _) => ids,
        };
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.policies.naming(&ids).into_iter().filter(|t| filter.matches(&t.policy)).collect()
    }

    /// An answer rendered once per snapshot and `key`.
    pub fn rendered(&self, key: &str, render: impl FnOnce() -> Vec<u8>) -> Arc<Answer> {
        self.answers.get_or_render(key, render)
    }

    /// The answer for a raw query string of the internal policies endpoint, rendered once
    /// per version and query. Cells repeat the same query, so the raw string is the key and
    /// the hot path (a 304) decodes nothing.
    pub fn policies_answer_for_query(&self, raw_query: Option<&str>) -> Arc<Answer> {
        let raw = raw_query.unwrap_or("");
        self.answers.get_or_render(&format!("q:{raw}"), || {
            let id = url::form_urlencoded::parse(raw.as_bytes()).find(|(k, _)| k == "id").map(|(_, v)| v.into_owned());
            let ids: Option<Vec<&str>> = id.as_deref().map(|s| s.split(',').collect());
            mapper::list_v1_tagged(self.policies_for(ids.as_deref()))
        })
    }

    /// The discovery table answer.
    pub fn registrations_answer(&self) -> Arc<Answer> {
        self.answers.get_or_render("registrations", || {
            let table: Vec<serde_json::Value> =
                self.registrations.iter().map(|(h, ips)| serde_json::json!({"hostname": h, "ips": ips})).collect();
            serde_json::to_vec(&serde_json::json!({ "registrations": table })).expect("JSON")
        })
    }
}

/// Owns the current snapshot and the loader that refreshes it.
#[derive(Clone)]
pub struct Snapshots {
    rx: watch::Receiver<Arc<Snapshot>>,
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
    wake: Arc<Notify>,
    /// Turns true when the server shuts down: every open watch answers at once.
    closing: Arc<watch::Sender<bool>>,
    /// The open watches, by what they wait for.
    pub watchers: Arc<crate::watchers::Watchers>,
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots").field("current", &*self.rx.borrow()).finish()
    }
}

/// How a refresh read the policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyRead {
    /// They had not changed.
    Unchanged,
    /// What the writes since the last snapshot changed, from the change log.
    Changes,
    /// Every policy (at start, or when the log did not cover the versions between).
    All,
}

/// Loads the parts whose version differs from `previous` (everything without one). Also
/// returns the apps whose policies changed since `previous`, and how they were read.
async fn load(
    store: &Store,
    versions: Versions,
    previous: Option<&Snapshot>,
) -> Result<(Snapshot, Vec<String>, PolicyRead), StoreError> {
    let (policies, apps, read) = load_policies(store, &versions, previous).await?;
    let asgs = match previous {
        Some(p) if p.versions.asgs == versions.asgs => p.security_groups.clone(),
        _ => Arc::new(store.security_groups().await?),
    };
    let registrations = match previous {
        Some(p) if p.versions.discovery == versions.discovery => p.registrations.clone(),
        _ => Arc::new(discovery::table(store.live_registrations().await?)),
    };
    Ok((Snapshot::new(versions, policies, asgs, registrations), apps, read))
}

/// The policies at `versions`: `previous`'s with the changes the log has for the versions
/// between (another replica's writes cost what they changed), or, when it does not cover
/// them, every policy read again. With them, the apps whose policies changed.
async fn load_policies(
    store: &Store,
    versions: &Versions,
    previous: Option<&Snapshot>,
) -> Result<(PolicySet, Vec<String>, PolicyRead), StoreError> {
    let Some(previous) = previous else {
        return Ok((store.list(&PolicyFilter::All).await?.into_iter().collect(), Vec::new(), PolicyRead::All));
    };
    if previous.versions.policies == versions.policies {
        return Ok((previous.policies.clone(), Vec::new(), PolicyRead::Unchanged));
    }
    if let Some(changes) = store.changes_between(&previous.versions, versions).await? {
        metrics::counter!("c2c_snapshot_policy_loads_total", "read" => "changes").increment(1);
        let mut policies = previous.policies.clone();
        let mut apps = BTreeSet::new();
        for (_, change) in &changes {
            apps.extend(apply(&mut policies, change));
        }
        return Ok((policies, apps.into_iter().collect(), PolicyRead::Changes));
    }
    metrics::counter!("c2c_snapshot_policy_loads_total", "read" => "all").increment(1);
    let policies: PolicySet = store.list(&PolicyFilter::All).await?.into_iter().collect();
    let apps = previous.policies.changed_apps(&policies);
    Ok((policies, apps, PolicyRead::All))
}

/// Applies one write's change; returns the apps of the policies it added or removed
/// (re-creating a policy that exists, or deleting one that does not, changes nothing).
fn apply(policies: &mut PolicySet, change: &PolicyChange) -> Vec<String> {
    let changed: Vec<&Policy> = match change {
        PolicyChange::Created(created) => {
            created.iter().filter(|t| policies.insert((*t).clone())).map(|t| &t.policy).collect()
        }
        PolicyChange::Deleted(deleted) => deleted.iter().filter(|p| policies.remove(p)).collect(),
    };
    crate::policy::apps_of(changed)
}

impl Snapshots {
    /// Loads the first snapshot, then keeps it current in the background.
    pub async fn start(
        store: Store,
        poll_interval: Duration,
    ) -> Result<(Snapshots, tokio::task::JoinHandle<()>), StoreError> {
        let versions = store.versions().await?;
        let (first, ..) = load(&store, versions, None).await?;
        let (tx, rx) = watch::channel(Arc::new(first));
        let snapshots = Snapshots {
            rx,
            tx: Arc::new(tx),
            wake: Arc::new(Notify::new()),
            closing: Arc::new(watch::channel(false).0),
            watchers: Default::default(),
        };
        let loader = snapshots.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = loader.wake.notified() => {}
                    _ = tokio::time::sleep(poll_interval) => {}
                }
                if let Err(e) = loader.refresh(&store).await {
                    metrics::counter!("c2c_snapshot_errors_total").increment(1);
                    tracing::warn!(error = %e, "snapshot refresh failed; serving the last one");
                }
            }
        });
        Ok((snapshots, task))
    }

    /// Reloads what changed since the current snapshot, if anything did; says how it read
    /// the policies.
    pub async fn refresh(&self, store: &Store) -> Result<PolicyRead, StoreError> {
        let versions = store.versions().await?;
        let current = self.current();
        if versions == current.versions {
            return Ok(PolicyRead::Unchanged);
        }
        let started = std::time::Instant::now();
        let (next, apps, read) = load(store, versions, Some(&current)).await?;
        metrics::histogram!("c2c_snapshot_load_seconds").record(started.elapsed().as_secs_f64());
        metrics::gauge!("c2c_snapshot_policies").set(next.policies.len() as f64);
        // A local write may have published a newer snapshot while this one was loading:
        // never go back; look again instead.
        let (policies_moved, discovery_moved, asgs_moved) = (
            next.versions.policies != current.versions.policies,
            next.versions.discovery != current.versions.discovery,
            next.versions.asgs != current.versions.asgs,
        );
        let mut next = Some(Arc::new(next));
        let published = self.tx.send_if_modified(|cur| {
            let newer = next.as_ref().is_some_and(|n| not_older(&n.versions, &cur.versions));
            if newer {
                *cur = next.take().expect("once");
            }
            newer
        });
        if !published {
            self.changed();
            return Ok(read);
        }
        if policies_moved {
            // Only the watches whose answers another replica's write changed.
            self.watchers.wake(&crate::watchers::Touched::Apps(apps));
        }
        if discovery_moved {
            self.watchers.wake(&crate::watchers::Touched::Registrations);
        }
        if asgs_moved {
            self.watchers.wake(&crate::watchers::Touched::SecurityGroups);
        }
        Ok(read)
    }

    /// Publishes a local policy write at once, from what it changed (no reading back), when
    /// it is the only write since the current snapshot; otherwise the loader reads again.
    /// This is what takes a new policy to the cells' watches within milliseconds.
    pub fn written(&self, written: &Written) {
        let current = self.current();
        if current.versions.policies + 1 != written.version {
            self.changed();
            return;
        }
        // O(what the write changed): the policy set is persistent, so this shares all the
        // rest with the current snapshot.
        let mut policies = current.policies.clone();
        let apps = apply(&mut policies, &written.change);
        let versions = Versions {
            policies: written.version,
            logged_writes: written.logged_writes,
            last_updated_ns: written.last_updated_ns,
            ..current.versions
        };
        let next = Snapshot::new(versions, policies, current.security_groups.clone(), current.registrations.clone());
        metrics::gauge!("c2c_snapshot_policies").set(next.policies.len() as f64);
        let mut next = Some(Arc::new(next));
        let published = self.tx.send_if_modified(|cur| {
            let same = Arc::ptr_eq(cur, &current);
            if same {
                *cur = next.take().expect("once");
            }
            same
        });
        if !published {
            self.changed();
            return;
        }
        self.watchers.wake(&crate::watchers::Touched::Apps(apps));
    }

    /// The current snapshot once its policies are at least as new as the database's: one
    /// read of the version row, and when another replica wrote since, a wait for the loader
    /// (shared by every request that needs it). Gives read-your-writes across replicas.
    pub async fn as_of_database(&self, store: &Store) -> Result<Arc<Snapshot>, StoreError> {
        let version = store.version().await?.version;
        let current = self.current();
        if current.versions.policies >= version {
            return Ok(current);
        }
        let mut rx = self.subscribe();
        self.changed();
        let caught_up = async { rx.wait_for(|s| s.versions.policies >= version).await.map(|s| s.clone()) };
        // (The borrow of the channel ends before the fallback awaits: a held `Ref` is not Send.)
        let caught_up = tokio::time::timeout(Duration::from_secs(5), caught_up).await;
        match caught_up {
            Ok(Ok(snapshot)) => Ok(snapshot),
            // The loader is failing or stuck: load here, so the answer is right or an error.
            _ => {
                self.refresh(store).await?;
                Ok(self.current())
            }
        }
    }

    /// Answers every open watch now and every later one at once, so cells move to another
    /// replica instead of waiting on one that is going away.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Asks the loader to look now (after a local write).
    pub fn changed(&self) {
        self.wake.notify_one();
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.rx.borrow().clone()
    }

    /// A receiver that wakes on every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.rx.clone()
    }
}

/// Whether `a` is at least as new as `b` in every part.
fn not_older(a: &Versions, b: &Versions) -> bool {
    a.policies >= b.policies && a.asgs >= b.asgs && a.discovery >= b.discovery
}

/// Waits until `answer(snapshot)` has an entity tag other than `etag`, `wait` passes, or the
/// server shuts down. Returns the newest answer either way; the caller answers 304 if its
/// tag is still `etag`. The watch sleeps until a snapshot touches one of `keys` (see
/// [`crate::watchers`]); other changes do not wake it.
pub async fn watch_answer<F>(
    snapshots: &Snapshots,
    keys: impl FnOnce() -> Vec<String>,
    etag: Option<&str>,
    wait: Duration,
    answer: F,
) -> Arc<Answer>
where
    F: Fn(&Snapshot) -> Arc<Answer>,
{
    if wait.is_zero() || etag.is_none() {
        return answer(&snapshots.current());
    }
    // Registered before the first look: a change published in between is not missed.
    let watch = snapshots.watchers.register(keys());
    let mut closing = snapshots.closing.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    let _waiting = Waiting::new();
    loop {
        let current = answer(&snapshots.current());
        if etag != Some(current.etag.as_str()) || *closing.borrow() {
            return current;
        }
        tokio::select! {
            _ = watch.notify.notified() => continue,
            _ = tokio::time::sleep_until(deadline) => return current,
            _ = closing.wait_for(|c| *c) => return current,
        }
    }
}

/// Counts a watch in `c2c_watches_waiting` while it waits.
struct Waiting;

impl Waiting {
    fn new() -> Self {
        metrics::gauge!("c2c_watches_waiting").increment(1.0);
        Waiting
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        metrics::gauge!("c2c_watches_waiting").decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy_set::tests::tagged;

    fn snap(ps: Vec<TaggedPolicy>) -> Snapshot {
        Snapshot::new(Versions::default(), ps.into_iter().collect(), Arc::default(), Arc::default())
    }

    #[test]
    fn policies_for_ids_are_in_order_and_unique() {
        let s = snap(vec![tagged("a", "b", 1), tagged("c", "a", 2), tagged("b", "c", 3), tagged("a", "a", 4)]);
        let ports = |v: Vec<&TaggedPolicy>| v.iter().map(|t| t.policy.start).collect::<Vec<_>>();
        assert_eq!(ports(s.policies_for(Some(&["a"]))), vec![1, 2, 4]);
        assert_eq!(ports(s.policies_for(Some(&["a", "b"]))), vec![1, 2, 3, 4]);
        assert_eq!(ports(s.policies_for(Some(&[""]))), Vec::<u16>::new());
        assert_eq!(ports(s.policies_for(None)), vec![1, 2, 3, 4]);
    }

    #[test]
    fn etags_follow_content_not_version() {
        let a = snap(vec![tagged("a", "b", 1), tagged("c", "d", 2)]);
        let mut b = snap(vec![tagged("a", "b", 1), tagged("c", "d", 3)]);
        b.versions.policies = 7;
        let answer = |s: &Snapshot, q: &str| s.policies_answer_for_query(Some(q));
        assert_eq!(answer(&a, "id=a").etag, answer(&b, "id=a").etag);
        assert_ne!(answer(&a, "id=c").etag, answer(&b, "id=c").etag);
        assert_eq!(answer(&a, "wait=1s&id=a"), answer(&a, "id=a"), "other parameters change nothing");
        assert_eq!(
            &answer(&a, "id=a").body[..],
            br#"{"total_policies":1,"policies":[{"source":{"id":"a","tag":"0001"},"destination":{"id":"b","tag":"0002","protocol":"tcp","ports":{"start":1,"end":1}}}]}"#
        );
    }
}
