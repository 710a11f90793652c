//! Everything a request handler needs, built once from the configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::{Introspection, JwksVerifier, Verifier};
use crate::cloud_controller::{ClientToken, CloudController};
use crate::config::{Config, TokenVerification};
use crate::store::{Store, StoreError, StoreOptions};

/// Settings handlers consult on every request.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_policies_per_app_source: u64,
    pub max_apps_per_request: usize,
    pub health_database_timeout: Duration,
    pub cleanup_valve: crate::cleanup::Valve,
    pub self_service: bool,
    pub allowed_cors_domains: Vec<String>,
    pub tls: bool,
}

/// Settings of the cells' API.
#[derive(Debug, Clone)]
pub struct InternalSettings {
    pub pool: crate::leases::Pool,
    pub lease_expiration: Duration,
    pub max_watch: Duration,
    pub identity: crate::cell_identity::CellIdentity,
}

pub struct Inner {
    pub store: Store,
    pub snapshots: crate::snapshot::Snapshots,
    pub writes: crate::write_batch::Writes,
    pub internal: InternalSettings,
    pub verifier: Verifier,
    pub cc: Arc<CloudController>,
    pub tag_budget: crate::tag_budget::TagBudget,
    pub settings: Settings,
    pub started: Instant,
}

/// Cheap to clone; shared by every request.
#[derive(Clone)]
pub struct AppState(pub Arc<Inner>);

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("internal API: {0}")]
    Internal(String),
    #[error("HTTP client for {what}: {message}")]
    Http { what: &'static str, message: String },
}

/// An HTTP client for UAA or Cloud Controller. With `ca_file`, it trusts that CA only, not
/// the platform's roots as well: a foundation's UAA and Cloud Controller certificates come
/// from its own CA, and any public CA could otherwise vouch for an impostor.
pub fn http_client(
    what: &'static str,
    ca_file: Option<&std::path::Path>,
    skip_verify: bool,
    timeout: Duration,
) -> Result<reqwest::Client, StartError> {
    let err = |message: String| StartError::Http { what, message };
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        // A redirect would carry a token or the client secret somewhere else; neither UAA's
        // token endpoint nor Cloud Controller's v3 API redirects.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("c2c-policy-server/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| err(format!("cannot read CA file {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| err(format!("CA file {} is not PEM: {e}", path.display())))?;
        builder = builder.tls_certs_only(certs);
    }
    if skip_verify {
        builder = builder.danger_accept_invalid_certs(true);
    }
    builder.build().map_err(|e| err(e.to_string()))
}

impl AppState {
    /// Builds the state and starts the snapshot loader (returned, to stop it on shutdown) and
    /// the policy writer, which runs while any request can still send it a create and stops
    /// once the state is dropped, so a shutdown finishes the creates in flight.
    pub async fn from_config(config: &Config) -> Result<(AppState, Vec<tokio::task::JoinHandle<()>>), StartError> {
        let store = Store::connect(
            &config.database_url.0,
            &StoreOptions {
                max_connections: config.database_max_connections,
                connect_timeout: Duration::from_secs(config.database_connect_timeout_secs),
                tag_length: config.tag_length,
                statement_timeout: Duration::from_secs(config.database_statement_timeout_secs),
            },
        )
        .await?;
        let uaa = &config.uaa;
        let uaa_http = http_client(
            "UAA",
            uaa.ca_file.as_deref(),
            uaa.skip_tls_verify,
            Duration::from_secs(uaa.request_timeout_secs),
        )?;
        let verifier = match uaa.verification {
            TokenVerification::Jwt => Verifier::Jwks(Arc::new(JwksVerifier::new(
                uaa_http.clone(),
                &uaa.url,
                &uaa.issuer(),
                crate::auth::JwksSettings {
                    min_refetch: Duration::from_secs(uaa.key_refetch_min_interval_secs),
                    key_ttl: Duration::from_secs(uaa.key_cache_ttl_secs),
                    audience: uaa.audience.clone(),
                },
            ))),
            TokenVerification::CheckToken => Verifier::Introspection(Arc::new(Introspection::new(
                uaa_http.clone(),
                &uaa.url,
                &uaa.client_id,
                &uaa.client_secret.0,
            ))),
        };
        let cc_config = &config.cloud_controller;
        let cc_http = http_client(
            "Cloud Controller",
            cc_config.ca_file.as_deref(),
            cc_config.skip_tls_verify,
            Duration::from_secs(cc_config.request_timeout_secs),
        )?;
        let token = ClientToken::new(uaa_http, &uaa.url, &uaa.client_id, &uaa.client_secret.0)
            .map_err(|e| StartError::Http { what: "UAA", message: e.to_string() })?;
        let cc = Arc::new(CloudController::new(
            cc_http,
            &cc_config.url,
            token,
            Duration::from_secs(cc_config.cache_ttl_secs),
        ));
        let internal = &config.internal;
        let pool = crate::leases::Pool::new(&internal.overlay_network, internal.subnet_prefix_length)
            .map_err(|e| StartError::Internal(e.to_string()))?;
        let (snapshots, loader) =
            crate::snapshot::Snapshots::start(store.clone(), Duration::from_millis(internal.snapshot_poll_interval_ms))
                .await?;
        // Three quarters of the request deadline: a write either commits before its request
        // gives up, or not at all.
        let write_deadline = Duration::from_secs(config.limits.request_timeout_secs) * 3 / 4;
        let (writes, _writer) = crate::write_batch::Writes::start(store.clone(), snapshots.clone(), write_deadline);
        let state = AppState(Arc::new(Inner {
            store,
            snapshots,
            writes,
            internal: InternalSettings {
                pool,
                lease_expiration: Duration::from_secs(internal.lease_expiration_secs),
                max_watch: Duration::from_secs(internal.max_watch_secs),
                identity: internal.cell_identity,
            },
            verifier,
            cc,
            tag_budget: crate::tag_budget::TagBudget::new(config.max_new_apps_per_caller_per_hour),
            settings: Settings {
                max_policies_per_app_source: config.max_policies_per_app_source,
                max_apps_per_request: config.max_apps_per_request,
                health_database_timeout: Duration::from_millis(config.limits.health_database_timeout_ms),
                cleanup_valve: config.cleanup_valve(),
                self_service: config.enable_space_developer_self_service,
                allowed_cors_domains: config.allowed_cors_domains.clone(),
                tls: config.tls.is_some(),
            },
            started: Instant::now(),
        }));
        Ok((state, vec![loader]))
    }
}
