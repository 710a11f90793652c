//! Running the policy server: listeners, background cleanup, graceful shutdown.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::state::{AppState, StartError};
use crate::{api, jobs};

/// The process-wide Prometheus recorder (metrics macros write to one global recorder).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
        })
        .clone()
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("external API TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "the cells' API must authenticate cells: set internal.tls.client_ca_file to the CA that signs cell certificates"
    )]
    InternalWithoutClientAuth,
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("route_emitter: {0}")]
    RouteEmitter(#[from] crate::route_emitter::RouteEmitterError),
}

/// A running policy server. Dropping it does not stop it; call [`Server::shutdown`].
pub struct Server {
    pub addr: SocketAddr,
    scheme: &'static str,
    pub metrics_addr: Option<SocketAddr>,
    /// The cells' API (mTLS), when configured.
    pub internal_addr: Option<SocketAddr>,
    pub state: AppState,
    stop: watch::Sender<bool>,
    shutdown_timeout: Duration,
    tasks: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Listen { addr, source })
}

impl Server {
    /// Connects to the database (running migrations), then serves the external API and the
    /// metrics listener, and starts the periodic stale-policy cleanup.
    pub async fn start(config: &Config) -> Result<Server, ServeError> {
        // Checked here too, not only in Config::validate, which an embedder may skip.
        if config.internal.tls.as_ref().is_some_and(|t| t.client_ca_file.is_none()) {
            return Err(ServeError::InternalWithoutClientAuth);
        }
        let listeners = 2 + u64::from(config.internal.tls.is_some());
        crate::listener::raise_open_files_limit(&config.limits, listeners, u64::from(config.database_max_connections));
        let handle = prometheus();
        let (state, workers) = AppState::from_config(config).await?;
        let (stop, stopped) = watch::channel(false);
        let shutdown_timeout = Duration::from_millis(config.shutdown_timeout_ms);
        let mut tasks = Vec::new();

        // Certificates are read before binding, so a bad file fails start-up at once.
        let tls = config.tls.as_ref().map(|t| t.server_config()).transpose()?;
        let listener = bind(config.listen).await?;
        let addr = listener.local_addr().map_err(|source| ServeError::Listen { addr: config.listen, source })?;
        let router = api::router(state.clone());
        let serve = |listener, tls, router, limits| {
            tokio::spawn(crate::listener::serve(listener, tls, router, limits, stopped.clone(), shutdown_timeout))
        };
        tasks.push(serve(listener, tls, router, config.limits.listener()));
        let scheme = if config.tls.is_some() { "https" } else { "http" };

        let mut metrics_addr = None;
        if let Some(m) = config.metrics_listen {
            let listener = bind(m).await?;
            metrics_addr = listener.local_addr().ok();
            tasks.push(serve(listener, None, api::metrics_router(handle), config.limits.listener()));
        }

        let mut background = workers;
        background.push(jobs::spawn_cleanup(
            state.store.clone(),
            state.cc.clone(),
            config.cleanup_interval(),
            config.cleanup_valve(),
        ));

        let mut internal_addr = None;
        if let Some(files) = &config.internal.tls {
            let tls = files.server_config()?;
            let listener = bind(config.internal.listen).await?;
            internal_addr = listener.local_addr().ok();
            let router = api::internal_router(state.clone());
            tasks.push(serve(listener, Some(tls), router, config.limits.cells_listener()));
            background.push(jobs::spawn_asg_sync(
                state.store.clone(),
                state.cc.clone(),
                state.snapshots.clone(),
                Duration::from_secs(config.internal.asg_sync_interval_secs),
            ));
            background.push(jobs::spawn_registration_pruning(
                state.store.clone(),
                state.snapshots.clone(),
                Duration::from_secs(config.internal.registration_prune_interval_secs),
            ));
            if config.route_emitter.enabled {
                let re = &config.route_emitter;
                let task = crate::route_emitter::spawn(re, state.store.clone(), state.snapshots.clone()).await?;
                tracing::info!(servers = ?re.servers, "following route-emitter's registrations over NATS");
                background.push(task);
            }
            tracing::info!(listen_address = ?internal_addr, "starting internal server");
        }
        tracing::info!(listen_address = %addr, metrics = ?metrics_addr, "starting external server");
        Ok(Server { addr, scheme, metrics_addr, internal_addr, state, stop, shutdown_timeout, tasks, background })
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Stops accepting at once, answers every open watch, lets in-flight requests (writes
    /// included) finish, and stops background work, all within `shutdown_timeout_ms`.
    /// Upstream waits up to a minute, on every long poll.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        self.state.snapshots.close();
        for task in &self.background {
            task.abort();
        }
        let deadline = tokio::time::Instant::now() + self.shutdown_timeout;
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout_at(deadline, task).await.is_err() {
                abort.abort();
            }
        }
    }

    /// Waits until the server stops (it only stops through [`Server::shutdown`] or an error).
    pub async fn wait(&mut self) {
        for task in self.tasks.iter_mut() {
            let _ = task.await;
        }
    }
}
