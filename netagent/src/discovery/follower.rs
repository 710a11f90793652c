//! Keeps the cell's discovery table current by following the control plane's watch on
//! `/v1/registrations` (an answer as soon as the table changes, or a 304 after the wait).
//! On errors the last table stays: names keep resolving while the control plane is away.

use std::sync::Arc;
use std::time::Duration;

use policy_client::{Watched, watched};

use super::responder::SharedTable;
use super::table::Table;
use crate::backoff::Backoff;

pub async fn run(
    client: policy_client::Client,
    domains: Vec<String>,
    table: SharedTable,
    telemetry: Arc<crate::telemetry::Telemetry>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut etag: Option<String> = None;
    let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
    loop {
        let request = client.list_registrations(Some("25s"), etag.as_deref());
        tokio::select! {
            answer = request => match watched(answer) {
                Ok(Watched::Changed { value, etag: new }) => {
                    retry.reset();
                    let entries = value.registrations.iter().map(|r| (r.hostname.as_str(), r.ips.as_slice()));
                    let next = Table::new(&domains, entries);
                    telemetry.discovery_names.set(next.len() as f64);
                    *table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
                    // A server without the watch answers at once with no ETag: poll gently.
                    if new.is_none() {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                            _ = stopped.changed() => return,
                        }
                    }
                    etag = new;
                }
                Ok(Watched::NotModified) => retry.reset(),
                Err(e) => {
                    let wait = retry.next_wait_jittered();
                    tracing::warn!(error = %e, retry_in = ?wait, "discovery watch failed; answering from the last table");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stopped.changed() => return,
                    }
                }
            },
            _ = stopped.changed() => return,
        }
    }
}
