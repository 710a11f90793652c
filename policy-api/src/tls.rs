//! Serving HTTPS, optionally with client certificates (mTLS), with rustls.
//!
//! Like upstream: TLS 1.2 and 1.3 only, and for TLS 1.2 only
//! `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256` (plus its ECDSA twin for ECDSA server keys).
//! axum's own `serve` speaks plain TCP only, so this owns the accept loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {message}")]
    File { what: &'static str, path: PathBuf, message: String },
    #[error("TLS configuration refused: {0}")]
    Config(String),
}

/// Certificate files of a TLS listener. With `client_ca_file`, clients must present a
/// certificate signed by that CA.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |message: String| TlsError::File { what, path: path.into(), message };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Upstream's cipher policy on aws-lc-rs.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = vec![
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    Arc::new(provider)
}

impl TlsFiles {
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let certs = read_certs("certificate", &self.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&self.key_file).map_err(|e| TlsError::File {
            what: "private key",
            path: self.key_file.clone(),
            message: e.to_string(),
        })?;
        let provider = provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match &self.client_ca_file {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in read_certs("client CA", ca)? {
                    roots.add(cert).map_err(|e| TlsError::Config(format!("client CA {}: {e}", ca.display())))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_single_cert(certs, key).map_err(|e| TlsError::Config(format!("certificate and key: {e}")))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
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

/// Serves `router` over TLS until `stopped` turns true, then lets open connections finish
/// for up to `grace` and closes the rest. Handshake failures (no client certificate, wrong
/// CA, plain HTTP) close that connection and are counted, nothing more.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    router: Router,
    mut stopped: watch::Receiver<bool>,
    grace: std::time::Duration,
) {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { drop(stopped.wait_for(|s| *s).await) } => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        // Answers are small writes (headers, then body frames): without this, Nagle holds
        // one back until the peer's delayed ACK, some 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let reason = refusal_reason(&e);
                    metrics::counter!("c2c_tls_handshake_failures_total", "reason" => reason).increment(1);
                    tracing::warn!(%peer, reason, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    metrics::counter!("c2c_tls_handshake_failures_total", "reason" => "timeout").increment(1);
                    tracing::warn!(%peer, "TLS handshake refused: no handshake within 10 s");
                    return;
                }
            };
            // The verified client certificate goes with every request of the connection, so
            // the cells' API knows which cell is asking.
            let cert = crate::cell_identity::ClientCert(
                tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| Arc::new(c.clone().into_owned())),
            );
            let router =
                tower::ServiceExt::map_request(router, move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(cert.clone());
                    req
                });
            let service = TowerToHyperService::new(router);
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    // Stop accepting at once (the listener closes here), tell HTTP/2 peers to go away, and
    // give what is in flight `grace` to finish.
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
    connections.abort_all();
}
