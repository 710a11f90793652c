//! Serving netagent's local API (`/health`, `/reconcile`, `/metrics`) with limits: HTTP/1.1
//! only (its only clients are the CNI plugin on this cell and a metrics scraper), a few
//! seconds to send the request headers, a deadline for the whole connection, and a cap on
//! open connections (high enough that thousands of idle clients, each closed after the
//! header timeout, leave room for the CNI plugin; bounded, so they cannot exhaust the
//! agent's file descriptors). A connection beyond the cap waits in the kernel's backlog.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// The limits of the local API.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    /// Everything a connection may take, its requests included (a reconcile takes
    /// milliseconds to a few seconds).
    pub connection_deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(2),
            connection_deadline: Duration::from_secs(30),
        }
    }
}

/// Raises this process's soft limit of open files to its hard limit, so the connection cap,
/// not the default soft limit (often 1024), is what bounds the local API.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit");
    }
}

/// Serves `router` on `listener` until `stopped` turns true.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits, mut stopped: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stopped.changed() => return,
        };
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "local API: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped.changed() => return,
        };
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(limits.connection_deadline, conn).await;
            drop(permit);
        });
    }
}
