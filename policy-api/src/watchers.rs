//! Who waits for what. A watch registers under the keys its answer depends on (the app ids
//! of a cell's query, or every policy, or the discovery table), and a new snapshot wakes
//! only the watches under the keys it touched: with 10,000 cells watching, a policy between
//! two apps wakes the cells that run them, not all 10,000.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The key of watches on every policy (a cell that names no ids).
pub const ALL_POLICIES: &str = "policies";
/// The key of watches on the discovery table.
pub const REGISTRATIONS: &str = "registrations";
/// The key of watches on security groups.
pub const SECURITY_GROUPS: &str = "security_groups";

/// The key of watches that name app `id`.
pub fn app(id: &str) -> String {
    format!("app:{id}")
}

/// What a new snapshot changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// Policies naming these apps (their watches and those on every policy).
    Apps(Vec<String>),
    Registrations,
    SecurityGroups,
}

#[derive(Default)]
pub struct Watchers {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    by_key: HashMap<String, HashMap<u64, Arc<Notify>>>,
}

/// A registered watch; unregistered when dropped.
pub struct Watch {
    watchers: Arc<Watchers>,
    id: u64,
    keys: Vec<String>,
    pub notify: Arc<Notify>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut inner = self.watchers.inner.lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.keys {
            if let Some(set) = inner.by_key.get_mut(key) {
                set.remove(&self.id);
                if set.is_empty() {
                    inner.by_key.remove(key);
                }
            }
        }
    }
}

impl Watchers {
    /// Registers a watch under `keys`. Register before reading the answer to compare: a
    /// change published in between then leaves a wake-up behind instead of being missed.
    pub fn register(self: &Arc<Self>, keys: Vec<String>) -> Watch {
        let notify = Arc::new(Notify::new());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.next += 1;
        let id = inner.next;
        for key in &keys {
            inner.by_key.entry(key.clone()).or_default().insert(id, notify.clone());
        }
        drop(inner);
        Watch { watchers: self.clone(), id, keys, notify }
    }

    /// Wakes the watches `touched` concerns; returns how many.
    pub fn wake(&self, touched: &Touched) -> usize {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut woken: HashMap<u64, &Arc<Notify>> = HashMap::new();
        let mut add = |key: &str| {
            for (id, n) in inner.by_key.get(key).into_iter().flatten() {
                woken.insert(*id, n);
            }
        };
        match touched {
            Touched::Apps(ids) => {
                add(ALL_POLICIES);
                for id in ids {
                    add(&app(id));
                }
            }
            Touched::Registrations => add(REGISTRATIONS),
            Touched::SecurityGroups => add(SECURITY_GROUPS),
        }
        for n in woken.values() {
            n.notify_one();
        }
        metrics::counter!("c2c_watch_wakeups_total").increment(woken.len() as u64);
        woken.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_wakes_only_the_watches_it_concerns() {
        let w = Arc::new(Watchers::default());
        let a = w.register(vec![app("a"), app("b")]);
        let c = w.register(vec![app("c")]);
        let all = w.register(vec![ALL_POLICIES.into()]);
        let dns = w.register(vec![REGISTRATIONS.into()]);
        let asgs = w.register(vec![SECURITY_GROUPS.into()]);
        assert_eq!(w.wake(&Touched::SecurityGroups), 1);
        assert_eq!(w.wake(&Touched::Apps(vec!["b".into()])), 2, "the watch on b and the one on everything");
        assert_eq!(w.wake(&Touched::Apps(vec!["a".into(), "b".into()])), 2, "a watch is woken once");
        assert_eq!(w.wake(&Touched::Apps(vec!["z".into()])), 1);
        assert_eq!(w.wake(&Touched::Apps(vec!["a".into(), "c".into()])), 3);
        assert_eq!(w.wake(&Touched::Registrations), 1);
        drop(c);
        assert_eq!(w.wake(&Touched::Apps(vec!["a".into(), "c".into()])), 2, "a dropped watch is gone");
        drop((a, all, dns, asgs));
        assert!(w.inner.lock().unwrap().by_key.is_empty(), "nothing left behind");
    }

    #[tokio::test]
    async fn a_wake_between_register_and_wait_is_not_lost() {
        let w = Arc::new(Watchers::default());
        let watch = w.register(vec![app("a")]);
        w.wake(&Touched::Apps(vec!["a".into()]));
        tokio::time::timeout(std::time::Duration::from_secs(1), watch.notify.notified()).await.unwrap();
    }
}
