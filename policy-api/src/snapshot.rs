//! The in-memory, versioned view of everything cells ask for (policies with tags, ASGs,
//! discovery registrations). Cells are answered from it, never from SQL per request.
//!
//! A local policy write is applied to it directly from what the write changed (when it is
//! the only write since the snapshot's version), so cells see it without a reload. A loader
//! keeps it current otherwise: it wakes at once after other local writes and checks the
//! database's version counters every `poll_interval`, so changes made through another
//! replica are seen within that interval (1 s by default) plus one reload. Each version is
//! published through a `watch` channel, which is also what wakes long-polling cells.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, watch};

use crate::asgs::SecurityGroup;
use crate::discovery;
use crate::mapper;
use crate::policy::{PolicyFilter, TaggedPolicy};
use crate::policy_set::PolicySet;
use crate::store::{PolicyChange, Store, StoreError, Versions, Written};

/// An answer with its entity tag (a hash of the body, so an unchanged answer keeps its tag
/// across versions and watchers are not woken for changes that do not concern them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub etag: String,
    pub body: Bytes,
}

impl Answer {
    pub fn new(body: Vec<u8>) -> Answer {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        Answer { etag: format!("\"{:016x}\"", h.finish()), body: Bytes::from(body) }
    }
}

pub struct Snapshot {
    pub versions: Versions,
    /// Shared with the snapshots before and after it: a write changes only what it wrote.
    pub policies: PolicySet,
    pub security_groups: Arc<Vec<SecurityGroup>>,
    pub registrations: Arc<BTreeMap<String, Vec<String>>>,
    /// Answers already rendered at this version, by request key.
    answers: moka::sync::Cache<String, Arc<Answer>>,
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
        Snapshot {
            versions,
            policies,
            security_groups,
            registrations,
            answers: moka::sync::Cache::builder().max_capacity(20_000).build(),
        }
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
    pub fn rendered(&self, key: String, render: impl FnOnce() -> Vec<u8>) -> Arc<Answer> {
        self.answers.get_with(key, || Arc::new(Answer::new(render())))
    }

    /// The internal policies answer for the `id` parameter (`None`: no parameter), rendered
    /// once per version and request.
    pub fn policies_answer(&self, id_param: Option<&str>) -> Arc<Answer> {
        let key = match id_param {
            None => "*".to_string(),
            Some(ids) => format!("id={ids}"),
        };
        self.answers.get_with(key, || {
            let ids: Option<Vec<&str>> = id_param.map(|s| s.split(',').collect());
            Arc::new(Answer::new(mapper::list_v1_tagged(self.policies_for(ids.as_deref()))))
        })
    }

    /// The answer for a raw query string of the internal policies endpoint. Cells repeat
    /// the same query, so the raw string is the cache key and the hot path (a 304) decodes
    /// nothing.
    pub fn policies_answer_for_query(&self, raw_query: Option<&str>) -> Arc<Answer> {
        let key = format!("q:{}", raw_query.unwrap_or(""));
        if let Some(hit) = self.answers.get(&key) {
            return hit;
        }
        let mut id = None;
        for (k, v) in url::form_urlencoded::parse(raw_query.unwrap_or("").as_bytes()) {
            if k == "id" {
                id = Some(v.into_owned());
                break;
            }
        }
        let answer = self.policies_answer(id.as_deref());
        self.answers.insert(key, answer.clone());
        answer
    }

    /// The discovery table answer.
    pub fn registrations_answer(&self) -> Arc<Answer> {
        self.answers.get_with("registrations".into(), || {
            let table: Vec<serde_json::Value> =
                self.registrations.iter().map(|(h, ips)| serde_json::json!({"hostname": h, "ips": ips})).collect();
            Arc::new(Answer::new(serde_json::to_vec(&serde_json::json!({ "registrations": table })).expect("JSON")))
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

/// Loads the parts whose version differs from `previous` (everything without one).
async fn load(store: &Store, versions: Versions, previous: Option<&Snapshot>) -> Result<Snapshot, StoreError> {
    let policies = match previous {
        Some(p) if p.versions.policies == versions.policies => p.policies.clone(),
        _ => store.list(&crate::policy::PolicyFilter::All).await?.into_iter().collect(),
    };
    let asgs = match previous {
        Some(p) if p.versions.asgs == versions.asgs => p.security_groups.clone(),
        _ => Arc::new(store.security_groups().await?),
    };
    let registrations = match previous {
        Some(p) if p.versions.discovery == versions.discovery => p.registrations.clone(),
        _ => Arc::new(discovery::table(store.live_registrations().await?)),
    };
    Ok(Snapshot::new(versions, policies, asgs, registrations))
}

impl Snapshots {
    /// Loads the first snapshot, then keeps it current in the background.
    pub async fn start(
        store: Store,
        poll_interval: Duration,
    ) -> Result<(Snapshots, tokio::task::JoinHandle<()>), StoreError> {
        let versions = store.versions().await?;
        let first = load(&store, versions, None).await?;
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

    /// Reloads what changed since the current snapshot, if anything did.
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let versions = store.versions().await?;
        let current = self.current();
        if versions == current.versions {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let next = load(store, versions, Some(&current)).await?;
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
            return Ok(());
        }
        if policies_moved {
            // Only the watches whose answers another replica's write changed.
            let now = self.current();
            let apps = current.policies.changed_apps(&now.policies);
            self.watchers.wake(&crate::watchers::Touched::Apps(apps));
        }
        if discovery_moved {
            self.watchers.wake(&crate::watchers::Touched::Registrations);
        }
        if asgs_moved {
            self.watchers.wake(&crate::watchers::Touched::SecurityGroups);
        }
        Ok(())
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
        match &written.change {
            PolicyChange::Created(created) => {
                for t in created {
                    policies.insert(t.clone());
                }
            }
            PolicyChange::Deleted(deleted) => {
                for p in deleted {
                    policies.remove(p);
                }
            }
        }
        let versions =
            Versions { policies: written.version, last_updated_ns: written.last_updated_ns, ..current.versions };
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
        let apps = match &written.change {
            PolicyChange::Created(created) => crate::policy::apps_of(created.iter().map(|t| &t.policy)),
            PolicyChange::Deleted(deleted) => crate::policy::apps_of(deleted),
        };
        self.watchers.wake(&crate::watchers::Touched::Apps(apps));
    }

    /// The current snapshot once its policies are at least as new as the database's: one
    /// read of the version row, and when another replica wrote since, a wait for the loader
    /// (shared by every request that needs it). Gives read-your-writes across replicas.
    pub async fn as_of_database(&self, store: &Store) -> Result<Arc<Snapshot>, StoreError> {
        let (version, _) = store.version().await?;
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
        assert_eq!(a.policies_answer(Some("a")).etag, b.policies_answer(Some("a")).etag);
        assert_ne!(a.policies_answer(Some("c")).etag, b.policies_answer(Some("c")).etag);
        assert_eq!(
            &a.policies_answer(Some("a")).body[..],
            br#"{"total_policies":1,"policies":[{"source":{"id":"a","tag":"0001"},"destination":{"id":"b","tag":"0002","protocol":"tcp","ports":{"start":1,"end":1}}}]}"#
        );
    }
}
