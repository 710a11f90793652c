//! The set of stored policies as a persistent (structurally shared) collection, so that a
//! new snapshot after a write costs O(what changed · log n), not a copy of every policy.
//!
//! Policies keep creation order, which is the order every listing answers in (as the
//! database's row ids do): each policy gets the next sequence number when it is added.

use std::sync::Arc;

use imbl::{HashMap, OrdMap, OrdSet};

use crate::policy::{Policy, TaggedPolicy};

#[derive(Clone, Default)]
pub struct PolicySet {
    next: u64,
    by_seq: OrdMap<u64, Arc<TaggedPolicy>>,
    seq_of: HashMap<Policy, u64>,
    /// app id → sequence numbers of the policies naming it as source or destination.
    by_app: HashMap<String, OrdSet<u64>>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet").field("len", &self.len()).finish()
    }
}

impl FromIterator<TaggedPolicy> for PolicySet {
    /// In the given order; repeats after the first are ignored.
    fn from_iter<I: IntoIterator<Item = TaggedPolicy>>(iter: I) -> Self {
        let mut set = PolicySet::default();
        for t in iter {
            set.insert(t);
        }
        set
    }
}

impl PolicySet {
    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    pub fn contains(&self, policy: &Policy) -> bool {
        self.seq_of.contains_key(policy)
    }

    /// Every policy, in creation order.
    pub fn iter(&self) -> impl Iterator<Item = &TaggedPolicy> {
        self.by_seq.values().map(|t| &**t)
    }

    /// Adds `t` after every other policy; false when it is there already.
    pub fn insert(&mut self, t: TaggedPolicy) -> bool {
        if self.seq_of.contains_key(&t.policy) {
            return false;
        }
        let seq = self.next;
        self.next += 1;
        for app in apps(&t.policy) {
            self.by_app.entry(app.to_string()).or_default().insert(seq);
        }
        self.seq_of.insert(t.policy.clone(), seq);
        self.by_seq.insert(seq, Arc::new(t));
        true
    }

    /// Removes `policy`; false when it was not there.
    pub fn remove(&mut self, policy: &Policy) -> bool {
        let Some(seq) = self.seq_of.remove(policy) else { return false };
        self.by_seq.remove(&seq);
        for app in apps(policy) {
            if let Some(seqs) = self.by_app.get_mut(app) {
                seqs.remove(&seq);
                if seqs.is_empty() {
                    self.by_app.remove(app);
                }
            }
        }
        true
    }

    fn get(&self, policy: &Policy) -> Option<&TaggedPolicy> {
        self.by_seq.get(self.seq_of.get(policy)?).map(|t| &**t)
    }

    /// The apps named by a policy in one set and not (or with other tags) in the other:
    /// whose answers another replica's write may have changed. O(n log n), no more than
    /// reading the table that gave `other`.
    pub fn changed_apps(&self, other: &PolicySet) -> Vec<String> {
        let mut apps_changed = std::collections::BTreeSet::new();
        for (a, b) in [(self, other), (other, self)] {
            for t in a.iter() {
                if b.get(&t.policy) != Some(t) {
                    apps_changed.extend(apps(&t.policy).map(str::to_string));
                }
            }
        }
        apps_changed.into_iter().collect()
    }

    /// Policies whose source or destination is one of `ids`, in creation order, each once.
    pub fn naming(&self, ids: &[&str]) -> Vec<&TaggedPolicy> {
        let mut seqs: Vec<u64> = ids.iter().filter_map(|id| self.by_app.get(*id)).flatten().copied().collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.iter().filter_map(|s| self.by_seq.get(s)).map(|t| &**t).collect()
    }
}

/// The apps a policy names, each once.
fn apps(p: &Policy) -> impl Iterator<Item = &str> {
    let destination = (p.destination != p.source).then_some(p.destination.as_str());
    std::iter::once(p.source.as_str()).chain(destination)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::Protocol;
    use proptest::prelude::*;

    pub(crate) fn tagged(s: &str, d: &str, port: u16) -> TaggedPolicy {
        TaggedPolicy {
            policy: Policy::new(s, d, Protocol::Tcp, port, port),
            source_tag: "0001".into(),
            destination_tag: "0002".into(),
        }
    }

    #[test]
    fn keeps_creation_order_and_indexes_both_ends() {
        let mut set: PolicySet =
            vec![tagged("a", "b", 1), tagged("c", "a", 2), tagged("a", "b", 1)].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert!(set.insert(tagged("b", "c", 3)));
        assert!(!set.insert(tagged("c", "a", 2)));
        let ports = |v: Vec<&TaggedPolicy>| v.iter().map(|t| t.policy.start).collect::<Vec<_>>();
        assert_eq!(ports(set.naming(&["a"])), vec![1, 2]);
        assert_eq!(ports(set.naming(&["c", "b"])), vec![1, 2, 3]);
        let before = set.clone();
        assert!(set.remove(&tagged("a", "b", 1).policy));
        assert!(!set.remove(&tagged("a", "b", 1).policy));
        assert_eq!(ports(set.naming(&["b"])), vec![3]);
        assert_eq!(ports(before.naming(&["b"])), vec![1, 3], "an older version is untouched");
        // Re-adding goes to the end, as a new database row would.
        assert!(set.insert(tagged("a", "b", 1)));
        assert_eq!(set.iter().map(|t| t.policy.start).collect::<Vec<_>>(), vec![2, 3, 1]);
    }

    #[test]
    fn changed_apps_are_those_of_policies_added_removed_or_retagged() {
        let old: PolicySet = vec![tagged("a", "b", 1), tagged("c", "d", 2), tagged("e", "f", 3)].into_iter().collect();
        let mut retagged = tagged("e", "f", 3);
        retagged.source_tag = "0009".into();
        let new: PolicySet = vec![tagged("c", "d", 2), tagged("g", "a", 4), retagged].into_iter().collect();
        assert_eq!(old.changed_apps(&new), vec!["a", "b", "e", "f", "g"]);
        assert!(old.changed_apps(&old.clone()).is_empty());
    }

    proptest! {
        /// Against a plain list, for any sequence of adds and removes over a few apps.
        #[test]
        fn matches_a_plain_list(ops in prop::collection::vec((any::<bool>(), 0u8..4, 0u8..4, 1u16..4), 0..80)) {
            let mut set = PolicySet::default();
            let mut list: Vec<TaggedPolicy> = Vec::new();
            let name = |i: u8| format!("app-{i}");
            for (add, s, d, port) in ops {
                let t = tagged(&name(s), &name(d), port);
                if add {
                    let fresh = !list.iter().any(|x| x.policy == t.policy);
                    prop_assert_eq!(set.insert(t.clone()), fresh);
                    if fresh { list.push(t); }
                } else {
                    let present = list.iter().any(|x| x.policy == t.policy);
                    prop_assert_eq!(set.remove(&t.policy), present);
                    list.retain(|x| x.policy != t.policy);
                }
            }
            prop_assert_eq!(set.iter().cloned().collect::<Vec<_>>(), list.clone());
            for i in 0..4 {
                let id = name(i);
                let want: Vec<&TaggedPolicy> =
                    list.iter().filter(|t| t.policy.source == id || t.policy.destination == id).collect();
                prop_assert_eq!(set.naming(&[id.as_str()]), want);
            }
        }
    }
}
