//! Sends this cell's internal routes (the `internal_routes` of its containers' metadata) to
//! the control plane: the whole set, at once when a container comes or goes, and again
//! every third of the TTL so that a cell that dies is forgotten and a live one never is.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use policy_client::types::{CellRegistrations, Registration};

use crate::backoff::Backoff;
use crate::containers::{Container, ContainerStore};

/// The registrations for `containers`: one per (route, address), sorted, without routes
/// that are not hostnames.
pub fn registrations<'a>(containers: impl IntoIterator<Item = &'a Container>) -> Vec<Registration> {
    let mut set = BTreeSet::new();
    for c in containers {
        let Ok(ip) = c.ip.parse::<std::net::Ipv4Addr>() else { continue };
        for route in c.internal_routes() {
            let route = route.trim_end_matches('.').to_ascii_lowercase();
            if is_hostname(&route) {
                set.insert((route, ip.to_string()));
            }
        }
    }
    set.into_iter().map(|(hostname, ip)| Registration { hostname, ip }).collect()
}

/// RFC 1123 hostnames: labels of letters, digits and inner hyphens, 1–63 characters each,
/// 253 in all.
pub fn is_hostname(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

pub async fn run(
    client: policy_client::Client,
    cell: String,
    store: ContainerStore,
    ttl_secs: u32,
    wake: Arc<tokio::sync::Notify>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let refresh = Duration::from_secs(u64::from(ttl_secs.max(3)) / 3);
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    let mut sent: Option<Vec<Registration>> = None;
    loop {
        let wait = match store.all() {
            Ok(all) => {
                let body =
                    CellRegistrations { ttl_seconds: i64::from(ttl_secs), registrations: registrations(all.values()) };
                match client.register_cell(&cell, &body).await {
                    Ok(_) => {
                        if sent.as_ref() != Some(&body.registrations) {
                            tracing::info!(routes = body.registrations.len(), "internal routes registered");
                        }
                        sent = Some(body.registrations);
                        retry.reset();
                        refresh
                    }
                    Err(e) => {
                        let wait = retry.next_wait_jittered();
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot register internal routes");
                        wait
                    }
                }
            }
            // The store's own error is reported by the policy loop; try again soon.
            Err(_) => retry.next_wait_jittered(),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(ip: &str, routes: &str) -> Container {
        let mut meta = serde_json::Map::new();
        meta.insert("internal_routes".into(), routes.into());
        Container { handle: ip.into(), ip: ip.into(), metadata: Some(meta), ..Container::default() }
    }

    #[test]
    fn routes_become_registrations() {
        let cs = [
            container("10.255.1.2", "app-b.apps.internal, 0.app-b.apps.internal"),
            container("10.255.1.3", "App-B.apps.internal."),
            container("10.255.1.4", "bad_name.apps.internal,,-x.apps.internal"),
            container("not-an-ip", "c.apps.internal"),
        ];
        let got: Vec<(String, String)> = registrations(&cs).into_iter().map(|r| (r.hostname, r.ip)).collect();
        assert_eq!(
            got,
            [
                ("0.app-b.apps.internal".to_string(), "10.255.1.2".to_string()),
                ("app-b.apps.internal".into(), "10.255.1.2".into()),
                ("app-b.apps.internal".into(), "10.255.1.3".into()),
            ]
        );
    }

    #[test]
    fn hostnames() {
        assert!(is_hostname("a-b.apps.internal"));
        for bad in ["", "a..b", "-a.b", "a-.b", "a_b.c", "a b", &"a".repeat(64), &format!("{}.x", "a.".repeat(126))] {
            assert!(!is_hostname(bad), "{bad:?}");
        }
    }
}
