//! `max_policies_per_app_source` for non-admins, exactly as upstream counts it.

use std::collections::HashMap;

use crate::policy::Policy;

/// Every app mentioned in the request (as source or destination), whose outbound policies
/// the check must count.
pub fn apps_to_count(request: &[Policy]) -> Vec<String> {
    crate::policy::apps_of(request)
}

/// True when, for some app in the request, existing outbound policies plus requested ones
/// exceed `max`. Like upstream, requested policies that already exist count again, and an
/// app already over the limit blocks any request that mentions it.
pub fn exceeded(existing: &HashMap<String, u64>, request: &[Policy], max: u64) -> bool {
    let mut requested: HashMap<&str, u64> = HashMap::new();
    for p in request {
        *requested.entry(p.source.as_str()).or_insert(0) += 1;
    }
    apps_to_count(request)
        .iter()
        .any(|app| existing.get(app).copied().unwrap_or(0) + requested.get(app.as_str()).copied().unwrap_or(0) > max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Protocol;

    fn p(s: &str, d: &str, port: u16) -> Policy {
        Policy::new(s, d, Protocol::Tcp, port, port)
    }

    #[test]
    fn within_and_over_the_limit() {
        let none = HashMap::new();
        assert!(!exceeded(&none, &[p("a", "b", 1), p("a", "b", 2)], 2));
        assert!(exceeded(&none, &[p("a", "b", 1), p("a", "b", 2), p("a", "c", 3)], 2));
        let existing = HashMap::from([("a".to_string(), 2)]);
        assert!(exceeded(&existing, &[p("a", "b", 1)], 2));
        assert!(!exceeded(&existing, &[p("b", "c", 1)], 2));
    }

    #[test]
    fn an_app_over_the_limit_blocks_requests_naming_it_as_destination() {
        let existing = HashMap::from([("a".to_string(), 3)]);
        assert!(exceeded(&existing, &[p("b", "a", 1)], 2));
    }
}
