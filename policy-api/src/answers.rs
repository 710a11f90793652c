//! Rendered answers and their entity tags, kept per snapshot: cells repeat the same query
//! until something changes, so each distinct query is rendered once per version.
//!
//! A snapshot starts with an empty cache and is replaced after every write, so the cache
//! needs no eviction, only bounds: past them an answer is rendered for its request and not
//! kept. A plain map under a mutex held only for the lookup and the insert (never while
//! rendering) costs a fraction of a general-purpose cache's bookkeeping, which showed up
//! when 10,000 watching cells were woken at once.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Most answers kept per snapshot (one per distinct query of a cell or an admin listing).
pub const MAX_ANSWERS: usize = 50_000;
/// Most bytes of answer bodies kept per snapshot.
pub const MAX_BYTES: usize = 256 << 20;

/// An answer with its entity tag (a hash of the body, so an unchanged answer keeps its tag
/// across versions and replicas, and a watcher whose answer did not change is not answered).
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

/// The answers rendered at one snapshot, by request key.
pub struct Answers {
    inner: Mutex<Kept>,
    max_answers: usize,
    max_bytes: usize,
}

impl Default for Answers {
    fn default() -> Self {
        Answers::with_bounds(MAX_ANSWERS, MAX_BYTES)
    }
}

#[derive(Default)]
struct Kept {
    by_key: HashMap<String, Arc<Answer>>,
    bytes: usize,
}

impl Answers {
    pub fn with_bounds(max_answers: usize, max_bytes: usize) -> Answers {
        Answers { inner: Mutex::default(), max_answers, max_bytes }
    }

    /// The answer kept under `key`, or `render`'s, kept when within the bounds. Two
    /// requests that miss at once both render; the first one kept is the one answered
    /// from then on (both bodies are the same).
    pub fn get_or_render(&self, key: &str, render: impl FnOnce() -> Vec<u8>) -> Arc<Answer> {
        if let Some(hit) = self.lock().by_key.get(key) {
            return hit.clone();
        }
        let answer = Arc::new(Answer::new(render()));
        let mut kept = self.lock();
        if kept.by_key.len() >= self.max_answers || kept.bytes + answer.body.len() > self.max_bytes {
            return answer;
        }
        if let Some(first) = kept.by_key.get(key) {
            return first.clone();
        }
        kept.bytes += answer.body.len();
        kept.by_key.insert(key.to_string(), answer.clone());
        answer
    }

    /// How many answers are kept.
    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        // A panic elsewhere while holding it cannot leave the map half-changed.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_rendered_once_per_key() {
        let answers = Answers::default();
        let mut renders = 0;
        for _ in 0..3 {
            let a = answers.get_or_render("q:id=a", || {
                renders += 1;
                b"{}".to_vec()
            });
            assert_eq!(&a.body[..], b"{}");
        }
        assert_eq!(renders, 1);
        let b = answers.get_or_render("q:id=b", || b"[]".to_vec());
        assert_ne!(b.etag, answers.get_or_render("q:id=a", || unreachable!()).etag);
        assert_eq!(answers.len(), 2);
    }

    #[test]
    fn tags_follow_the_body() {
        assert_eq!(Answer::new(b"x".to_vec()).etag, Answer::new(b"x".to_vec()).etag);
        assert_ne!(Answer::new(b"x".to_vec()).etag, Answer::new(b"y".to_vec()).etag);
        let tag = Answer::new(b"x".to_vec()).etag;
        assert!(tag.starts_with('"') && tag.ends_with('"') && tag.len() == 18, "{tag}");
    }

    #[test]
    fn past_the_bounds_answers_are_rendered_but_not_kept() {
        let answers = Answers::with_bounds(100, 1 << 20);
        for i in 0..110 {
            answers.get_or_render(&format!("k{i}"), || vec![b'x']);
        }
        assert_eq!(answers.len(), 100);
        let mut renders = 0;
        for _ in 0..2 {
            let a = answers.get_or_render("one more", || {
                renders += 1;
                b"late".to_vec()
            });
            assert_eq!(&a.body[..], b"late", "still answered right");
        }
        assert_eq!(renders, 2, "rendered each time, not kept");

        let big = Answers::with_bounds(100, 1000);
        big.get_or_render("big", || vec![0; 999]);
        big.get_or_render("small", || vec![0; 2]);
        assert_eq!(big.len(), 1, "the byte bound holds too");
    }
}
