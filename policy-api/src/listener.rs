//! Serving one listener (external API, cells' API, metrics) with limits, over TLS or plain
//! TCP: a cap on open connections, a deadline for the TLS handshake and for the first bytes,
//! a header-read timeout that also closes idle HTTP/1 keep-alive connections, HTTP/2
//! keep-alive pings and a cap on streams per connection, and a graceful stop.
//!
//! A connection beyond the cap waits in the kernel's backlog, so half-sent requests (a
//! slowloris) can hold at most `max_connections` sockets, each for at most the header
//! timeout, and cannot exhaust the server's file descriptors.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, HttpBody};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time to send a request's headers, and the longest an HTTP/1 connection may sit idle
    /// between requests. Also bounds the TLS handshake and the wait for the first bytes.
    pub header_read_timeout: Duration,
    /// Concurrent HTTP/2 streams (requests) per connection.
    pub max_streams_per_connection: u32,
    /// Requests in progress on this listener, watches excepted; 503 above.
    pub max_concurrent_requests: usize,
    /// Watches (long-polling requests of the cells' API, see
    /// [`crate::api::is_watch`]) waiting on this listener; 503 above. 0: this listener
    /// has none, and a `wait=` parameter makes no request a watch.
    pub max_watches: usize,
    /// Time to send a request body, from the start of the request.
    pub body_read_timeout: Duration,
    /// Everything a request may take, except a watch (`wait=`), which waits as asked.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16_384,
            header_read_timeout: Duration::from_secs(10),
            max_streams_per_connection: 1_000,
            max_concurrent_requests: 20_000,
            max_watches: 0,
            body_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// Serves `router` until `stopped` turns true, then stops accepting at once, lets open
/// connections finish for up to `grace`, and closes the rest. With `tls`, handshake failures
/// (no or a wrong client certificate, plain HTTP) close that connection and are logged and
/// counted by reason.
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerConfig>,
    router: Router,
    limits: Limits,
    mut stopped: watch::Receiver<bool>,
    grace: Duration,
) {
    let acceptor = tls.map(|config| TlsAcceptor::from(Arc::new(config)));
    let guard_state = Arc::new(Guard {
        in_progress: Semaphore::new(limits.max_concurrent_requests),
        watches: (limits.max_watches > 0).then(|| Semaphore::new(limits.max_watches)),
        body_read_timeout: limits.body_read_timeout,
        request_timeout: limits.request_timeout,
    });
    let router = router.layer(axum::middleware::from_fn_with_state(guard_state, guard));
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = async { drop(stopped.wait_for(|s| *s).await) } => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, peer): (TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of file descriptors: wait a little instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { drop(stopped.wait_for(|s| *s).await) } => break,
        };
        // Answers are small writes (headers, then body frames): without this, Nagle holds
        // one back until the peer's delayed ACK, some 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let (acceptor, router, watcher) = (acceptor.clone(), router.clone(), graceful.watcher());
        // The task holds little of its own: the handshake and the connection are boxed, so
        // an idle connection keeps only the connection's state (the handshake's is freed),
        // which is what 10,000 parked cells cost (docs/benchmarks.md).
        connections.spawn(async move {
            let _permit = permit;
            match acceptor {
                None => {
                    // Nothing sent at all: auto-detection of HTTP/1 or HTTP/2 would wait.
                    if tokio::time::timeout(limits.header_read_timeout, tcp.readable()).await.is_err() {
                        return;
                    }
                    Box::pin(serve_connection(TokioIo::new(tcp), router, None, limits, watcher, peer)).await;
                }
                Some(acceptor) => {
                    let Some((tls, cert)) = Box::pin(handshake(&acceptor, tcp, limits, peer)).await else { return };
                    Box::pin(serve_connection(TokioIo::new(tls), router, Some(cert), limits, watcher, peer)).await;
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
    connections.abort_all();
}

/// The TLS handshake within the header timeout; a refusal is logged and counted by reason.
/// Returns the stream and the verified client certificate.
async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    limits: Limits,
    peer: SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<TcpStream>, crate::cell_identity::ClientCert)> {
    let tls = match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let reason = refusal_reason(&e);
            metrics::counter!("c2c_tls_handshake_failures_total", "reason" => reason).increment(1);
            tracing::warn!(%peer, reason, error = %e, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            metrics::counter!("c2c_tls_handshake_failures_total", "reason" => "timeout").increment(1);
            tracing::warn!(%peer, "TLS handshake refused: not completed within the header timeout");
            return None;
        }
    };
    // The verified client certificate goes with every request of the connection, so the
    // cells' API knows which cell is asking.
    let cert = crate::cell_identity::ClientCert(
        tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.clone().into_owned())),
    );
    Some((tls, cert))
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    router: Router,
    cert: Option<crate::cell_identity::ClientCert>,
    limits: Limits,
    watcher: hyper_util::server::graceful::Watcher,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The certificate goes into each request's extensions. (`Router::layer` per connection
    // would rebuild every route for each connection: kilobytes per idle cell, and a
    // noticeable cost when thousands connect or leave at once.)
    let service = router.map_request(move |mut req: Request<hyper::body::Incoming>| {
        if let Some(cert) = &cert {
            req.extensions_mut().insert(cert.clone());
        }
        req
    });
    // Built in a block so that the builder is not kept beside the connection it made.
    let conn = {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        configure(&mut builder, limits);
        builder.serve_connection_with_upgrades(io, TowerToHyperService::new(service)).into_owned()
    };
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

fn configure(builder: &mut auto::Builder<TokioExecutor>, limits: Limits) {
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        // Pings find peers that vanished without closing (a cell that lost power).
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
}

/// What [`guard`] enforces around every request of a listener.
struct Guard {
    in_progress: Semaphore,
    /// On a listener that serves watches.
    watches: Option<Semaphore>,
    body_read_timeout: Duration,
    request_timeout: Duration,
}

/// Around every request, in one layer (each layer costs every parked watch a boxed future):
/// answers 503 at once when the listener already has `max_concurrent_requests` in progress
/// (or `max_watches` waiting, for a watch), instead of queueing without bound; makes a body
/// that stops arriving fail at `body_read_timeout` after the request started, so a client
/// cannot hold a handler by trickling it; and ends a request that takes longer than
/// `request_timeout` (a database that stopped answering) with a 503, which drops its
/// transaction uncommitted. Watches are exempt from the last: they wait as asked. Parked
/// watches take no request slot, so thousands of waiting cells leave room for the rest.
async fn guard(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let watches = guard.watches.as_ref().filter(|_| crate::api::is_watch(req.uri()));
    let (slots, what) = match watches {
        Some(w) => (w, "watches"),
        None => (&guard.in_progress, "requests in progress"),
    };
    let Ok(_slot) = slots.try_acquire() else {
        metrics::counter!("c2c_requests_shed_total").increment(1);
        return crate::api::error::ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many {what} on this listener; retry shortly"),
        )
        .into_response();
    };
    let req = with_body_deadline(req, guard.body_read_timeout);
    if watches.is_some() {
        return next.run(req).await;
    }
    match tokio::time::timeout(guard.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            metrics::counter!("c2c_requests_timed_out_total").increment(1);
            tracing::error!(timeout = ?guard.request_timeout, "request timed out");
            crate::api::error::ApiError::timed_out().into_response()
        }
    }
}

/// The request with a body that fails once `timeout` has passed since now.
fn with_body_deadline(req: Request, timeout: Duration) -> Request {
    use futures::StreamExt;
    if HttpBody::is_end_stream(req.body()) {
        return req;
    }
    let deadline = tokio::time::Instant::now() + timeout;
    let (parts, body) = req.into_parts();
    let chunks = futures::stream::unfold(Some(body.into_data_stream()), move |stream| async move {
        let mut stream = stream?;
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(chunk)) => Some((chunk, Some(stream))),
            Ok(None) => None,
            Err(_) => {
                let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "request body not received in time");
                Some((Err(axum::Error::new(late)), None))
            }
        }
    });
    Request::from_parts(parts, Body::from_stream(chunks))
}

/// A short label for why a handshake failed, for the metric (the log has the full error).
fn refusal_reason(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::NoCertificatesPresented) => "no_certificate",
        Some(rustls::Error::InvalidCertificate(_)) => "bad_certificate",
        Some(rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateHandshakeMessage { .. }) => "not_tls",
        Some(rustls::Error::PeerIncompatible(_)) => "incompatible",
        Some(_) => "tls_error",
        None => "io_error",
    }
}

/// Raises the soft open-files limit so the listeners' connection caps, not the system's
/// default soft limit (often 1,024), bound what the server accepts: every listener's
/// `max_connections`, the database pool and some slack. Warns when the hard limit is lower.
pub fn raise_open_files_limit(limits: &crate::config::LimitsConfig, listeners: u64, database: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = (limits.max_connections as u64).saturating_mul(listeners).saturating_add(database).saturating_add(256);
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return };
    let target = wanted.min(hard);
    if soft < target
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard)
    {
        tracing::warn!(error = %e, soft, hard, "cannot raise the open-files limit");
    }
    if hard < wanted {
        tracing::warn!(
            hard,
            wanted,
            "the hard open-files limit is below what the connection limits allow; raise it (LimitNOFILE, ulimit -Hn) or lower limits.max_connections"
        );
    }
}
