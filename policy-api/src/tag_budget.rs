//! How many apps one non-admin caller may give a new tag per hour.
//!
//! Tags are a foundation-wide pool of 65,535. Every id a non-admin names must already be one
//! of their Cloud Controller apps, so this budget is a second line: one compromised developer
//! account cannot drain the pool quickly. A caller's creates run one at a time while the
//! budget is held, so concurrent requests cannot overspend it. The window is per replica.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;
use tokio::sync::{Mutex, OwnedMutexGuard};

const WINDOW: Duration = Duration::from_secs(3600);

#[derive(Debug)]
struct Window {
    started: Instant,
    used: u64,
}

pub struct TagBudget {
    per_hour: u64,
    windows: Cache<String, Arc<Mutex<Window>>>,
}

/// One caller's budget, held until dropped.
pub struct Held {
    window: OwnedMutexGuard<Window>,
    per_hour: u64,
}

impl Held {
    /// New tags this caller may still allocate in the current window.
    pub fn remaining(&self) -> u64 {
        self.per_hour.saturating_sub(self.window.used)
    }

    pub fn spend(&mut self, tags: u64) {
        self.window.used = self.window.used.saturating_add(tags);
    }
}

impl TagBudget {
    pub fn new(per_hour: u64) -> Self {
        TagBudget { per_hour, windows: Cache::builder().max_capacity(100_000).time_to_idle(WINDOW).build() }
    }

    /// Waits for the caller's other creates to finish, then holds their budget.
    pub async fn hold(&self, caller: &str) -> Held {
        let window = self
            .windows
            .get_with(caller.to_string(), async { Arc::new(Mutex::new(Window { started: Instant::now(), used: 0 })) })
            .await;
        let mut window = window.lock_owned().await;
        if window.started.elapsed() >= WINDOW {
            *window = Window { started: Instant::now(), used: 0 };
        }
        Held { window, per_hour: self.per_hour }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spending_is_per_caller_and_bounded() {
        let budget = TagBudget::new(3);
        let mut alice = budget.hold("alice").await;
        assert_eq!(alice.remaining(), 3);
        alice.spend(2);
        drop(alice);
        assert_eq!(budget.hold("alice").await.remaining(), 1);
        assert_eq!(budget.hold("carol").await.remaining(), 3);
        let mut alice = budget.hold("alice").await;
        alice.spend(5);
        assert_eq!(alice.remaining(), 0);
    }

    #[tokio::test]
    async fn one_callers_creates_take_turns() {
        let budget = Arc::new(TagBudget::new(3));
        let held = budget.hold("alice").await;
        let other = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.hold("alice").await.remaining() })
        };
        tokio::task::yield_now().await;
        assert!(!other.is_finished(), "a second create of the same caller waits");
        drop(held);
        assert_eq!(other.await.unwrap(), 3);
    }
}
