//! TLS for the gRPC and admin listeners (rustls with the ring provider).
//!
//! `tls_cert` / `tls_key` are PEM files: the certificate chain (leaf first) and its private key
//! (PKCS#8, PKCS#1 or SEC1). gRPC gets them through tonic's `ServerTlsConfig` (ALPN h2); the admin
//! HTTP server through a [`TlsListener`] that performs handshakes off the accept loop (ALPN http/1.1).

use crate::config::Config;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A TLS handshake on the admin port must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes ring the process's rustls provider (tonic's server uses the process default).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The server's certificate and key, read once at startup.
pub struct TlsFiles {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl TlsFiles {
    /// `Ok(None)` when TLS is not configured. Checks that both files parse and match.
    pub fn load(config: &Config) -> Result<Option<TlsFiles>, String> {
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
            return Ok(None);
        };
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
        };
        let files = TlsFiles {
            cert_pem: read(cert, "tls_cert")?,
            key_pem: read(key, "tls_key")?,
        };
        files.server_config(Vec::new()).map_err(|e| {
            format!(
                "tls_cert {} / tls_key {}: {e}",
                cert.display(),
                key.display()
            )
        })?;
        Ok(Some(files))
    }

    /// tonic's TLS settings for the gRPC listener.
    pub fn grpc(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            &self.cert_pem,
            &self.key_pem,
        ))
    }

    /// The acceptor of the admin listener.
    pub fn admin_acceptor(&self) -> Result<TlsAcceptor, String> {
        let config = self.server_config(vec![b"http/1.1".to_vec()])?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }

    fn server_config(&self, alpn: Vec<Vec<u8>>) -> Result<rustls::ServerConfig, String> {
        let certs = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("reading the certificate PEM: {e}"))?;
        if certs.is_empty() {
            return Err("no CERTIFICATE in the certificate file".into());
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| format!("reading the private key PEM: {e}"))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit together: {e}"))?;
        config.alpn_protocols = alpn;
        Ok(config)
    }
}

/// A listener for `axum::serve` that yields connections whose TLS handshake completed. Handshakes
/// run in their own tasks, so a slow or broken client never holds up the others.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if tx.is_closed() {
                    return;
                }
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            metrics::counter!("croupier_admin_tls_handshake_failures_total")
                                .increment(1);
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("croupier_admin_tls_handshake_failures_total")
                                .increment(1);
                            tracing::debug!(%peer, "admin TLS handshake timed out");
                        }
                    }
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop never ends while this listener exists.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
