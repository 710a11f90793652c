//! The drop-in for CF's service-discovery-controller: route-emitter's
//! `service-discovery.register` / `.unregister` messages over NATS become discovery
//! registrations, served like the cells' own (every cell's DNS, `/v1/registration/{name}`).
//! Off by default (`[route_emitter]`). Replicas share the work through a NATS queue group,
//! so each message is written once.

use std::net::Ipv4Addr;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::config::Secret;
use crate::discovery::{Registration, valid_hostname};
use crate::snapshot::Snapshots;
use crate::store::Store;

/// Registrations made from NATS are stored under this source name.
pub const SOURCE: &str = "route-emitter";

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteEmitterConfig {
    /// Subscribe to route-emitter's messages.
    pub enabled: bool,
    /// NATS servers (`nats://host:4222`; `tls://` for TLS).
    pub servers: Vec<String>,
    pub user: String,
    pub password: Secret,
    /// CA of the NATS servers' certificates (TLS is then required).
    pub ca_file: Option<std::path::PathBuf>,
    /// A registration not refreshed for this long is dropped (upstream's
    /// `staleness_threshold_seconds`; route-emitter refreshes every 60 s).
    pub staleness_threshold_secs: u64,
}

impl Default for RouteEmitterConfig {
    fn default() -> Self {
        RouteEmitterConfig {
            enabled: false,
            servers: vec!["nats://127.0.0.1:4222".into()],
            user: String::new(),
            password: Secret::default(),
            ca_file: None,
            staleness_threshold_secs: 180,
        }
    }
}

/// A register or unregister message (spec: `{"host": "10.255.12.5", "uris": [...]}`).
#[derive(Debug, Deserialize)]
struct RouteMessage {
    #[serde(default)]
    host: String,
    #[serde(default)]
    uris: Vec<String>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("not a route message: {0}")]
    Json(String),
    #[error("host {0:?} is not an IPv4 address")]
    Host(String),
    #[error("no uris")]
    NoUris,
    #[error("{0:?} is not a hostname")]
    Hostname(String),
}

/// The registrations a message names; refused whole if any part is wrong, so a bad message
/// changes nothing.
pub fn parse(payload: &[u8]) -> Result<Vec<Registration>, MessageError> {
    let m: RouteMessage = serde_json::from_slice(payload).map_err(|e| MessageError::Json(e.to_string()))?;
    let host: Ipv4Addr = m.host.parse().map_err(|_| MessageError::Host(m.host.clone()))?;
    if m.uris.is_empty() {
        return Err(MessageError::NoUris);
    }
    m.uris
        .into_iter()
        .map(|uri| match valid_hostname(&uri) {
            true => Ok(Registration { hostname: uri, ip: host.to_string() }),
            false => Err(MessageError::Hostname(uri)),
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum RouteEmitterError {
    #[error("NATS: {0}")]
    Nats(String),
}

/// Connects (retrying in the background while NATS is down) and subscribes; the returned
/// task applies messages until aborted.
pub async fn spawn(
    config: &RouteEmitterConfig,
    store: Store,
    snapshots: Snapshots,
) -> Result<tokio::task::JoinHandle<()>, RouteEmitterError> {
    let nats = |e: &dyn std::fmt::Display| RouteEmitterError::Nats(e.to_string());
    let mut options = async_nats::ConnectOptions::new()
        .name("policy-server")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5));
    if !config.user.is_empty() {
        options = options.user_and_password(config.user.clone(), config.password.0.clone());
    }
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let servers: Vec<async_nats::ServerAddr> =
        config.servers.iter().map(|s| s.parse()).collect::<Result<_, _>>().map_err(|e| nats(&e))?;
    let client = options.connect(servers).await.map_err(|e| nats(&e))?;
    let group = "policy-server".to_string();
    let mut register =
        client.queue_subscribe("service-discovery.register", group.clone()).await.map_err(|e| nats(&e))?;
    let mut unregister = client.queue_subscribe("service-discovery.unregister", group).await.map_err(|e| nats(&e))?;
    let ttl = Duration::from_secs(config.staleness_threshold_secs);
    Ok(tokio::spawn(async move {
        // Keep the client (and its connection) alive with the task.
        let _client = client;
        loop {
            let (kind, message) = tokio::select! {
                Some(m) = register.next() => ("register", m),
                Some(m) = unregister.next() => ("unregister", m),
                else => return,
            };
            let regs = match parse(&message.payload) {
                Ok(regs) => regs,
                Err(e) => {
                    metrics::counter!("c2c_route_emitter_messages_total", "kind" => kind, "outcome" => "refused")
                        .increment(1);
                    tracing::warn!(error = %e, subject = %message.subject, "refused a route-emitter message");
                    continue;
                }
            };
            let written = match kind {
                "register" => store.upsert_registrations(SOURCE, &regs, ttl).await,
                _ => store.remove_registrations(SOURCE, &regs).await,
            };
            let outcome = match written {
                Ok(()) => {
                    snapshots.changed();
                    "applied"
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not store a route-emitter message; route-emitter will send it again");
                    "failed"
                }
            };
            metrics::counter!("c2c_route_emitter_messages_total", "kind" => kind, "outcome" => outcome).increment(1);
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        let regs = parse(
            br#"{"host":"10.255.12.5","uris":["app.apps.internal","0.app.apps.internal"],"endpoint_updated_at_ns":1}"#,
        )
        .unwrap();
        assert_eq!(regs.len(), 2);
        assert_eq!(regs[1], Registration { hostname: "0.app.apps.internal".into(), ip: "10.255.12.5".into() });
        assert_eq!(parse(br#"{"host":"","uris":["a.apps.internal"]}"#), Err(MessageError::Host(String::new())));
        assert_eq!(parse(br#"{"host":"10.0.0.1","uris":[]}"#), Err(MessageError::NoUris));
        assert_eq!(
            parse(br#"{"host":"10.0.0.1","uris":["ok.apps.internal","bad name"]}"#),
            Err(MessageError::Hostname("bad name".into()))
        );
        assert!(matches!(parse(b"\xff not json"), Err(MessageError::Json(_))));
        assert!(matches!(parse(br#"{"host":"::1","uris":["a.b"]}"#), Err(MessageError::Host(_))));
    }
}
