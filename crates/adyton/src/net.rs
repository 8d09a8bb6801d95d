//! Serving axum over TCP or TLS until SIGINT or SIGTERM: shared by `adyton kbs serve`,
//! `adyton registry serve` and `adyton server serve`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `listen` and serves `router` on it, over TLS with `tls`, until SIGINT or SIGTERM.
/// `router` is made once the address is bound (port 0 picks a free port) and gets that address.
///
/// Prints `listening on http://ADDR` (or `https://ADDR`) once connections are accepted, and
/// `shut down` at the end: scripts and tests read the bound address from the first line.
pub fn serve(
    listen: impl tokio::net::ToSocketAddrs + fmt::Display,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: impl FnOnce(SocketAddr) -> axum::Router,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        let router = router(addr);
        match tls {
            None => {
                eprintln!("listening on http://{addr}");
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown_signal())
                    .await
                    .context("the HTTP server failed")?;
            }
            Some(config) => {
                let (listener, acceptor) = TlsListener::new(listener, addr, config);
                eprintln!("listening on https://{addr}");
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown_signal())
                    .await;
                acceptor.abort();
                served.context("the HTTPS server failed")?;
            }
        }
        eprintln!("shut down");
        Ok(())
    })
}

/// The PEM files of a server's TLS identity: `[tls]` of a configuration file, or the flags
/// `--tls-certificate` and `--tls-private-key`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

impl TlsFiles {
    /// From the flags, when both are given (each flag requires the other).
    pub fn from_flags(
        certificate: Option<&PathBuf>,
        private_key: Option<&PathBuf>,
    ) -> Option<Self> {
        match (certificate, private_key) {
            (Some(certificate), Some(private_key)) => Some(Self {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
            }),
            _ => None,
        }
    }

    /// The rustls server configuration (aws-lc-rs) from the PEM files.
    pub fn load(&self) -> Result<Arc<rustls::ServerConfig>> {
        use rustls_pki_types::pem::PemObject as _;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};

        let cert_path = self.certificate.display();
        let certs = CertificateDer::pem_file_iter(&self.certificate)
            .with_context(|| format!("cannot read the TLS certificate {cert_path}"))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("cannot parse the TLS certificate {cert_path} (PEM)"))?;
        if certs.is_empty() {
            bail!("the TLS certificate {cert_path} holds no PEM CERTIFICATE block");
        }
        let key_path = self.private_key.display();
        let key = PrivateKeyDer::from_pem_file(&self.private_key).with_context(|| {
            format!(
                "cannot read the TLS private key {key_path} (PEM: PKCS#8, PKCS#1 or SEC1 PRIVATE KEY)"
            )
        })?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!("cannot use the TLS certificate {cert_path} with the key {key_path}")
        })?;
        Ok(Arc::new(config))
    }
}

/// A listener handing axum finished TLS connections. Handshakes run in their own tasks, so a slow
/// or silent client does not hold up the others.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    addr: SocketAddr,
}

impl TlsListener {
    pub fn new(
        tcp: tokio::net::TcpListener,
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // As axum does: e.g. out of file descriptors; wait rather than spin.
                        eprintln!("warning: accept failed: {e}");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                // Small answers go out at once rather than waiting for Nagle's algorithm.
                let _ = stream.set_nodelay(true);
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    // Failed handshakes (plain HTTP, scanners, timeouts) are dropped quietly.
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        (Self { ready, addr }, task)
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task is gone (only at shutdown): accept nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                eprintln!("warning: cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        result = interrupt => {
            if let Err(e) = result {
                eprintln!("warning: cannot listen for SIGINT: {e}");
                std::future::pending::<()>().await;
            }
        }
        () = terminate => {}
    }
    eprintln!("shutting down");
}
