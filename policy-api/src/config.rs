//! `policy-server` configuration: a TOML file whose every key has a default (see
//! `docs/policy-server-config.md`), overridden by command-line flags and `C2C_*` variables.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A value that must not appear in logs or `Debug` output.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"<redacted>\"" })
    }
}

pub use crate::database_url::{DatabaseUrl, redact_url};

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum TokenVerification {
    /// Verify JWT signatures locally against UAA's `/token_keys` (default; no UAA call per
    /// request).
    #[default]
    Jwt,
    /// Ask UAA's `/check_token` about every token (upstream behaviour; revocation takes effect
    /// at once, at the cost of one UAA round trip per request).
    CheckToken,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UaaConfig {
    /// Base URL of UAA, e.g. `https://uaa.service.cf.internal:8443`.
    pub url: String,
    /// Expected `iss` claim; default `<url>/oauth/token`.
    pub issuer: Option<String>,
    /// The server's own OAuth client (needs `uaa.resource` and
    /// `cloud_controller.admin_read_only`).
    pub client_id: String,
    pub client_secret: Secret,
    /// PEM file of CAs to trust for UAA, in addition to the system roots.
    pub ca_file: Option<PathBuf>,
    pub skip_tls_verify: bool,
    pub verification: TokenVerification,
    /// Least time between two `/token_keys` fetches caused by tokens with unknown key ids.
    pub key_refetch_min_interval_secs: u64,
    /// UAA's keys are fetched again after this long, so a key withdrawn from UAA stops being
    /// accepted (if UAA cannot be reached then, the last keys stay in use).
    pub key_cache_ttl_secs: u64,
    /// When set, tokens must carry this audience (`aud`), e.g. `network`.
    pub audience: Option<String>,
    pub request_timeout_secs: u64,
}

impl Default for UaaConfig {
    fn default() -> Self {
        UaaConfig {
            url: "https://uaa.service.cf.internal:8443".into(),
            issuer: None,
            client_id: "network-policy".into(),
            client_secret: Secret::default(),
            ca_file: None,
            skip_tls_verify: false,
            verification: TokenVerification::Jwt,
            key_refetch_min_interval_secs: 30,
            key_cache_ttl_secs: 600,
            audience: None,
            request_timeout_secs: 10,
        }
    }
}

impl UaaConfig {
    pub fn issuer(&self) -> String {
        self.issuer.clone().unwrap_or_else(|| format!("{}/oauth/token", self.url.trim_end_matches('/')))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CloudControllerConfig {
    /// Base URL of Cloud Controller's API.
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub skip_tls_verify: bool,
    /// How long app → space and user → spaces answers are reused.
    pub cache_ttl_secs: u64,
    pub request_timeout_secs: u64,
}

impl Default for CloudControllerConfig {
    fn default() -> Self {
        CloudControllerConfig {
            url: "https://cloud-controller-ng.service.cf.internal:9024".into(),
            ca_file: None,
            skip_tls_verify: false,
            cache_ttl_secs: 10,
            request_timeout_secs: 30,
        }
    }
}

/// Limits of every listener (external, cells' and metrics), each on its own.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open connections per listener; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time to send request headers (and to finish a TLS handshake); also how long an
    /// HTTP/1 connection may sit idle between requests.
    pub header_read_timeout_secs: u64,
    /// Time to send a request body.
    pub body_read_timeout_secs: u64,
    /// Requests in progress per listener, watches excepted; 503 above.
    pub max_concurrent_requests: usize,
    /// Watches (the cells' long-polling requests) waiting on the cells' API; 503 above. A
    /// cell running netagent holds three (policies, security groups, discovery).
    pub max_watches: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams_per_connection: u32,
    /// Everything a request may take (watches excepted: they wait as asked), database calls
    /// included; past it the answer is a 503 and nothing of the request is committed.
    pub request_timeout_secs: u64,
    /// `/health`'s own deadline for its database check, so it cannot queue behind a busy
    /// connection pool.
    pub health_database_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 16_384,
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            max_concurrent_requests: 20_000,
            max_watches: 50_000,
            max_streams_per_connection: 1_000,
            request_timeout_secs: 15,
            health_database_timeout_ms: 2_000,
        }
    }
}

impl LimitsConfig {
    /// The limits of the external and metrics listeners, which serve no watches; the cells'
    /// API takes [`LimitsConfig::cells_listener`].
    pub fn listener(&self) -> crate::listener::Limits {
        crate::listener::Limits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_secs(self.header_read_timeout_secs),
            max_streams_per_connection: self.max_streams_per_connection,
            max_concurrent_requests: self.max_concurrent_requests,
            max_watches: 0,
            body_read_timeout: Duration::from_secs(self.body_read_timeout_secs),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
        }
    }

    /// The limits of the cells' API.
    pub fn cells_listener(&self) -> crate::listener::Limits {
        crate::listener::Limits { max_watches: self.max_watches, ..self.listener() }
    }
}

/// The cells' API: mTLS only (a client certificate from `tls.client_ca_file` is required).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct InternalConfig {
    pub listen: SocketAddr,
    /// Server certificate, key and the CA that signed the cells' client certificates.
    pub tls: Option<crate::tls::TlsFiles>,
    /// How often the database's version counters are checked for changes made through other
    /// replicas (local changes are picked up at once).
    pub snapshot_poll_interval_ms: u64,
    /// Longest `wait` a watching cell may ask for.
    pub max_watch_secs: u64,
    /// The overlay network cut into per-cell subnets.
    pub overlay_network: String,
    pub subnet_prefix_length: u8,
    /// A lease not renewed for this long may be given to another cell.
    pub lease_expiration_secs: u64,
    /// How often expired discovery registrations are removed.
    pub registration_prune_interval_secs: u64,
    /// How often security groups are read from Cloud Controller (by one replica).
    pub asg_sync_interval_secs: u64,
    /// Which cell a client certificate acts for: `underlay_ip_san` (the default: the
    /// certificate must name the cell's underlay IP) or `any_client_certificate`
    /// (upstream's: any certificate of the CA acts for any cell).
    pub cell_identity: crate::cell_identity::CellIdentity,
}

impl Default for InternalConfig {
    fn default() -> Self {
        InternalConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 4003)),
            tls: None,
            snapshot_poll_interval_ms: 1000,
            max_watch_secs: 60,
            overlay_network: "10.255.0.0/16".into(),
            subnet_prefix_length: 24,
            lease_expiration_secs: 7 * 24 * 3600,
            registration_prune_interval_secs: 10,
            asg_sync_interval_secs: 60,
            cell_identity: crate::cell_identity::CellIdentity::UnderlayIpSan,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// External API listen address.
    pub listen: SocketAddr,
    /// Serve the external API over HTTPS with these files (adds HSTS, as upstream's
    /// `enable_tls`). Without it the API is plain HTTP, for TLS terminated in front.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Prometheus `/metrics` listen address; keep it on loopback or a
    /// management network.
    pub metrics_listen: Option<SocketAddr>,
    /// `sqlite://PATH?mode=rwc` (default), `postgres://user@host/db` or `mysql://user@host/db`.
    pub database_url: DatabaseUrl,
    /// Accept a database URL off loopback whose TLS mode is opportunistic (PostgreSQL
    /// `sslmode=prefer`/`allow` or none given, MySQL `ssl-mode=PREFERRED` or none given): a
    /// man in the middle can strip such TLS unseen. Off by default; use `verify-full` /
    /// `VERIFY_IDENTITY`, or say `disable` / `DISABLED` outright.
    pub database_allow_opportunistic_tls: bool,
    pub database_max_connections: u32,
    pub database_connect_timeout_secs: u64,
    /// Longest a statement may run or wait for a lock on PostgreSQL and MySQL/MariaDB.
    pub database_statement_timeout_secs: u64,
    /// Bytes per tag: 2 (65,535 apps, the VXLAN GBP maximum) or 1 (255 apps).
    pub tag_length: u8,
    /// Most policies one app may be the source of, for non-admins.
    pub max_policies_per_app_source: u64,
    /// Most apps one non-admin caller may give a new tag per hour (per replica). Tags are a
    /// foundation-wide pool of 65,535.
    pub max_new_apps_per_caller_per_hour: u64,
    /// Most distinct apps one non-admin request may name (each costs Cloud Controller
    /// lookups).
    pub max_apps_per_request: usize,
    /// Let any authenticated user manage policies of apps in spaces where they are a space
    /// developer, without `network.write`.
    pub enable_space_developer_self_service: bool,
    /// Origins allowed by CORS (`*` for any).
    pub allowed_cors_domains: Vec<String>,
    /// On SIGTERM: how long in-flight requests may take to finish after the listeners
    /// close and every open watch is answered (milliseconds).
    pub shutdown_timeout_ms: u64,
    /// Minutes between stale-policy cleanups (at least 1).
    pub cleanup_interval_minutes: u64,
    /// The cleanup refuses to delete more than this share of all policies in one run (runs
    /// of 10 or fewer excepted), unless an admin forces it.
    pub cleanup_max_delete_percent: u32,
    /// ... or more than this many policies.
    pub cleanup_max_delete_policies: usize,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter.
    pub log_level: String,
    pub log_format: LogFormat,
    pub uaa: UaaConfig,
    pub cloud_controller: CloudControllerConfig,
    /// The cells' API; served only when `internal.tls` is set.
    pub internal: InternalConfig,
    pub limits: LimitsConfig,
    /// CF route-emitter's registrations over NATS (off by default).
    pub route_emitter: crate::route_emitter::RouteEmitterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 4002)),
            tls: None,
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 31821))),
            database_url: DatabaseUrl("sqlite:///var/vcap/store/c2c/policy-server.db?mode=rwc".into()),
            database_allow_opportunistic_tls: false,
            database_max_connections: 20,
            database_connect_timeout_secs: 30,
            database_statement_timeout_secs: 10,
            tag_length: 2,
            max_policies_per_app_source: 150,
            max_new_apps_per_caller_per_hour: 1000,
            max_apps_per_request: 1000,
            enable_space_developer_self_service: false,
            allowed_cors_domains: Vec::new(),
            shutdown_timeout_ms: 2000,
            cleanup_interval_minutes: 60,
            cleanup_max_delete_percent: 25,
            cleanup_max_delete_policies: 1000,
            log_level: "info".into(),
            log_format: LogFormat::Json,
            uaa: UaaConfig::default(),
            cloud_controller: CloudControllerConfig::default(),
            internal: InternalConfig::default(),
            limits: LimitsConfig::default(),
            route_emitter: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source: Box::new(source) })
    }

    /// Checks what serde cannot; call after all overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if !(1..=2).contains(&self.tag_length) {
            return bad("tag_length must be 1 or 2 (VXLAN GBP carries 16 bits)");
        }
        if self.cleanup_interval_minutes < 1 {
            return bad("cleanup_interval_minutes must be at least 1");
        }
        if self.cleanup_max_delete_percent > 100 {
            return bad("cleanup_max_delete_percent is a percentage: 0 to 100");
        }
        if self.max_policies_per_app_source < 1 {
            return bad("max_policies_per_app_source must be at least 1");
        }
        let l = &self.limits;
        if l.max_connections < 1
            || l.header_read_timeout_secs < 1
            || l.body_read_timeout_secs < 1
            || l.max_concurrent_requests < 1
            || l.max_streams_per_connection < 1
            || l.health_database_timeout_ms < 1
            || l.request_timeout_secs < 1
        {
            return bad("every [limits] value must be positive");
        }
        match crate::database_url::tls_posture(&self.database_url.0) {
            Err(e) => return Err(ConfigError::Invalid(e)),
            Ok(crate::database_url::TlsPosture::Opportunistic) if !self.database_allow_opportunistic_tls => {
                return bad(
                    "the database URL asks for opportunistic TLS (sslmode=prefer/allow or ssl-mode=PREFERRED, \
                     also the default when the URL names none), which anyone on the path can strip; \
                     use sslmode=verify-full&sslrootcert=CA (PostgreSQL) or ssl-mode=VERIFY_IDENTITY&ssl-ca=CA \
                     (MySQL/MariaDB), say sslmode=disable / ssl-mode=DISABLED outright, \
                     or set database_allow_opportunistic_tls = true",
                );
            }
            Ok(_) => {}
        }
        if self.database_max_connections < 1 {
            return bad("database_max_connections must be at least 1");
        }
        if let Some(tls) = &self.internal.tls
            && tls.client_ca_file.is_none()
        {
            return bad("internal.tls.client_ca_file is required: the cells' API accepts only client certificates");
        }
        if let Err(e) = crate::leases::Pool::new(&self.internal.overlay_network, self.internal.subnet_prefix_length) {
            return Err(ConfigError::Invalid(format!("internal.overlay_network: {e}")));
        }
        if self.internal.snapshot_poll_interval_ms == 0 || self.internal.asg_sync_interval_secs == 0 {
            return bad("internal.snapshot_poll_interval_ms and internal.asg_sync_interval_secs must be positive");
        }
        if self.route_emitter.enabled && self.route_emitter.staleness_threshold_secs < 1 {
            return bad("route_emitter.staleness_threshold_secs must be positive");
        }
        for (name, url) in [("uaa.url", &self.uaa.url), ("cloud_controller.url", &self.cloud_controller.url)] {
            if url::Url::parse(url).is_err() {
                return Err(ConfigError::Invalid(format!("{name} is not a URL: {url:?}")));
            }
        }
        Ok(())
    }

    pub fn cleanup_interval(&self) -> Duration {
        Duration::from_secs(self.cleanup_interval_minutes * 60)
    }

    pub fn cleanup_valve(&self) -> crate::cleanup::Valve {
        crate::cleanup::Valve {
            max_percent: self.cleanup_max_delete_percent,
            max_policies: self.cleanup_max_delete_policies,
        }
    }

    /// The documented default file, generated from the defaults so it cannot drift.
    pub fn default_toml() -> String {
        toml::to_string_pretty(&Config::default()).expect("defaults serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_validate() {
        let text = Config::default_toml();
        let parsed: Config = toml::from_str(&text).unwrap();
        assert_eq!(parsed, Config::default());
        parsed.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("listen_port = 4002").is_err());
        let c: Config = toml::from_str("tag_length = 3").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("tag_length"));
        let c: Config = toml::from_str("cleanup_interval_minutes = 0").unwrap();
        assert!(c.validate().is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let mut c = Config::default();
        c.uaa.client_secret = Secret("hunter2".into());
        c.database_url = "postgres://policy:s3cr3t@db.internal:5432/policy".into();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("postgres://policy:***@db.internal:5432/policy"), "{shown}");
        assert_eq!(redact_url("mysql://root@127.0.0.1/x"), "mysql://root@127.0.0.1/x");
        assert_eq!(redact_url("postgres:user:pw@host/db"), "***@host/db");
        assert_eq!(redact_url("not a url, pw@host"), "***@host");
    }

    #[test]
    fn opportunistic_database_tls_is_refused_off_loopback() {
        let mut c = Config::default();
        for url in [
            "postgres://policy@db.internal/policy",
            "postgres://policy@db.internal/policy?sslmode=prefer",
            "mysql://policy@10.0.0.9/policy?ssl-mode=PREFERRED",
        ] {
            c.database_url = url.into();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains("opportunistic") && e.contains("database_allow_opportunistic_tls"), "{url}: {e}");
        }
        c.database_allow_opportunistic_tls = true;
        c.validate().unwrap();
        c.database_allow_opportunistic_tls = false;
        for url in [
            "postgres://policy@db.internal/policy?sslmode=verify-full&sslrootcert=/ca.pem",
            "postgres://policy@db.internal/policy?sslmode=disable",
            "postgres://policy@127.0.0.1/policy",
            "mysql://root@127.0.0.1:3306/policy",
        ] {
            c.database_url = url.into();
            c.validate().unwrap();
        }
        c.database_url = "postgres://policy@db.internal/policy?sslmode=sometimes".into();
        assert!(c.validate().unwrap_err().to_string().contains("sslmode"));
    }
}
