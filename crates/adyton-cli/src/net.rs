//! Serving axum over TCP or TLS until SIGINT or SIGTERM: shared by `adyton kbs serve`,
//! `adyton registry serve` and `adyton-server serve`.
//!
//! Connections are served by hyper directly rather than by `axum::serve`, which has no timeouts:
//! every connection holds one of `max_connections` slots from accept to close (the excess is
//! closed at accept, before a TLS handshake), and a client that sends its headers or its body
//! too slowly, or stops reading, is disconnected (docs/kbs-config.md, "Connections").

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections a service may be configured to hold (the slots are a semaphore's permits).
const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// The limits on a service's connections: `[connections]` in its configuration file, overridden
/// by flags (docs/kbs-config.md, docs/registry.md, docs/server-config.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections held at once, handshakes included; beyond it a connection is closed at accept.
    pub max_connections: usize,
    /// Connections held at once from one client address (an IPv6 client's /64); beyond it that
    /// address's new connections are closed at accept, so that one client cannot take every slot.
    pub max_connections_per_address: usize,
    /// Longest time for a request's whole head, from the moment the connection waits for it: just
    /// after the TLS handshake, or once the previous answer is sent. So it also closes a kept-alive
    /// connection that sends no next request.
    pub header_timeout: Duration,
    /// Longest pause between two pieces of a request body.
    pub body_timeout: Duration,
    /// Longest time a connection may move no byte either way while no request is being handled:
    /// a client that stops reading its answer.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// 1024 connections: each costs a descriptor and a few kilobytes, and the services admit far
    /// fewer requests at once than that (the inference server's workers and queue), so this only
    /// binds under a flood; 128 from one address, so that a flood needs nine addresses to fill it; it stays below the 1024 descriptors of a default `ulimit -n` only with
    /// headroom raised (systemd's default `LimitNOFILE` is 524288). 10 s for headers: a client
    /// sends its request head in one packet, even over a slow link. 30 s between pieces of a body:
    /// an upload over a congested link stalls for seconds, not half a minute. 60 s idle: a slow
    /// reader of a large answer (a model blob) makes some progress every minute.
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_address: 128,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// `[connections]` of a service's configuration file. Durations are humantime strings ("10s").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsSection {
    max_connections: Option<usize>,
    max_connections_per_address: Option<usize>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    idle_timeout: Option<String>,
}

/// The flags that override `[connections]`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectionArgs {
    /// Most connections held at once; more are closed as they arrive [default: 1024].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Most connections held at once from one client address (an IPv6 /64) [default: 128].
    #[arg(long, value_name = "N")]
    pub max_connections_per_address: Option<usize>,
    /// Longest wait for a request's headers, and for the next request on a kept-alive
    /// connection [default: 10s].
    #[arg(long, value_name = "DURATION")]
    pub header_timeout: Option<humantime::Duration>,
    /// Longest pause in a request body [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub body_timeout: Option<humantime::Duration>,
    /// Longest time a connection may move no byte while no request is handled [default: 60s].
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<humantime::Duration>,
}

impl ConnectionLimits {
    /// The defaults, overridden by the file's `[connections]`, overridden by the flags. `source`
    /// names the file in messages.
    pub fn resolve(
        file: Option<&ConnectionsSection>,
        flags: &ConnectionArgs,
        source: &str,
    ) -> Result<Self> {
        let defaults = Self::default();
        let file = file.cloned().unwrap_or_default();
        let duration = |flag: Option<humantime::Duration>,
                        text: Option<String>,
                        name: &str,
                        default: Duration|
         -> Result<Duration> {
            let value = match (flag, text) {
                (Some(flag), _) => flag.into(),
                (None, Some(text)) => humantime::parse_duration(&text).with_context(|| {
                    format!("{source}: [connections] `{name}` is not a duration (e.g. \"10s\")")
                })?,
                (None, None) => default,
            };
            if value.is_zero() {
                bail!("{name} must be longer than zero");
            }
            Ok(value)
        };
        let limits = Self {
            max_connections: flags
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
            max_connections_per_address: flags
                .max_connections_per_address
                .or(file.max_connections_per_address)
                .unwrap_or(defaults.max_connections_per_address),
            header_timeout: duration(
                flags.header_timeout,
                file.header_timeout,
                "header_timeout",
                defaults.header_timeout,
            )?,
            body_timeout: duration(
                flags.body_timeout,
                file.body_timeout,
                "body_timeout",
                defaults.body_timeout,
            )?,
            idle_timeout: duration(
                flags.idle_timeout,
                file.idle_timeout,
                "idle_timeout",
                defaults.idle_timeout,
            )?,
        };
        if limits.max_connections_per_address == 0 {
            bail!("max_connections_per_address must be at least 1");
        }
        if !(1..=MAX_CONNECTIONS_LIMIT).contains(&limits.max_connections) {
            bail!(
                "max_connections is {}; it is between 1 and {MAX_CONNECTIONS_LIMIT}",
                limits.max_connections
            );
        }
        Ok(limits)
    }
}

/// Binds `listen` and serves `router` on it, over TLS with `tls`, until SIGINT or SIGTERM.
/// `router` is made once the address is bound (port 0 picks a free port) and gets that address.
///
/// Prints `listening on http://ADDR` (or `https://ADDR`) once connections are accepted, and
/// `shut down` at the end: scripts and tests read the bound address from the first line.
pub fn serve(
    listen: impl tokio::net::ToSocketAddrs + fmt::Display,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
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
        let scheme = if tls.is_some() { "https" } else { "http" };
        eprintln!("listening on {scheme}://{addr}");
        serve_until(listener, tls, limits, router, shutdown_signal()).await;
        eprintln!("shut down");
        Ok(())
    })
}

/// Accepts connections until `shutdown` resolves, then lets those open finish their current
/// request (the timeouts still apply) and returns once all are closed.
async fn serve_until(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    router: axum::Router,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (stop, stopped) = watch::channel(false);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let mut refusing = false;
    let per_address = Arc::new(Mutex::new(HashMap::new()));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // As axum does: e.g. out of file descriptors; wait rather than spin.
                    eprintln!("warning: accept failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
        };
        // The slot is taken before anything else is spent on the connection: beyond the cap the
        // socket is closed at once, with no TLS handshake and no buffer.
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if !refusing {
                eprintln!(
                    "warning: {} connections open (max_connections): closing new ones until \
                     some close",
                    limits.max_connections
                );
                refusing = true;
            }
            drop(stream);
            continue;
        };
        refusing = false;
        let Some(address_slot) = AddressSlot::take(&per_address, peer.ip(), limits) else {
            drop(stream);
            continue;
        };
        // Small answers go out at once rather than waiting for Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            peer,
            acceptor.clone(),
            router.clone(),
            limits,
            stopped.clone(),
            (slot, address_slot),
        ));
    }
    // New connections are refused by the kernel from here on.
    drop(listener);
    let _ = stop.send(true);
    // Every connection holds a slot until it closes: once all are back, all are closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = slots.acquire_many(all).await;
}

/// A connection's share of its client address's limit, given back when dropped.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl AddressSlot {
    /// A slot for `peer`, or `None` when its address holds `max_connections_per_address` already.
    fn take(
        counts: &Arc<Mutex<HashMap<IpAddr, usize>>>,
        peer: IpAddr,
        limits: ConnectionLimits,
    ) -> Option<Self> {
        let key = address_key(peer);
        let mut map = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = map.entry(key).or_insert(0);
        if *count >= limits.max_connections_per_address {
            return None;
        }
        *count += 1;
        Some(Self {
            counts: Arc::clone(counts),
            key,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The address limits count under: IPv4 as it is, IPv6 by its /64 (one host usually holds a whole
/// /64), IPv4-mapped IPv6 as IPv4.
fn address_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// One connection, from the TLS handshake (if any) to its close; `_slots` are given back on return.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
    limits: ConnectionLimits,
    mut stopped: watch::Receiver<bool>,
    _slots: (OwnedSemaphorePermit, AddressSlot),
) {
    let Some(acceptor) = tls else {
        return serve_http(stream, peer, router, limits, stopped).await;
    };
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let tls = tokio::select! {
        done = handshake => done,
        _ = stopped.wait_for(|stop| *stop) => return,
    };
    // Failed handshakes (plain HTTP, scanners, timeouts) are dropped quietly.
    if let Ok(Ok(tls)) = tls {
        serve_http(tls, peer, router, limits, stopped).await;
    }
}

/// HTTP/1.1 on one connection, with the header, body and idle timeouts.
async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    router: axum::Router,
    limits: ConnectionLimits,
    mut stopped: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: io,
        activity: Arc::clone(&activity),
    });
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let handling = Handling::start(&activity);
            // Each wait for a piece of the body is bounded; a stall fails the body's read, which
            // the handler answers as a bad request.
            let mut request = request.map(|body| {
                axum::body::Body::new(tower_http::timeout::TimeoutBody::new(
                    limits.body_timeout,
                    body,
                ))
            });
            // The client's address, for handlers that limit per client (the KBS's logins).
            request
                .extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let answer = tower::Service::call(&mut router.clone(), request);
            async move {
                let answer = answer.await;
                drop(handling);
                answer
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let idle = activity.until_idle(limits.idle_timeout);
    tokio::pin!(idle);
    tokio::select! {
        // Errors here are the client's (a reset, a malformed request, a timeout): nothing to log.
        _ = connection.as_mut() => return,
        () = &mut idle => return,
        _ = stopped.wait_for(|stop| *stop) => connection.as_mut().graceful_shutdown(),
    }
    // Shutting down: the request in progress, if any, is answered, then the connection closes.
    tokio::select! {
        _ = connection.as_mut() => {}
        () = &mut idle => {}
    }
}

/// When a connection last moved a byte, and how many of its requests are being handled.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    /// Milliseconds from `opened` to the last byte read or written.
    last_io_ms: AtomicU64,
    handling: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_io_ms: AtomicU64::new(0),
            handling: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_io_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `idle` while no request was being handled. A handler
    /// that computes for long (an inference, a model load) moves no byte and is not idle.
    async fn until_idle(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last_io_ms.load(Ordering::Relaxed));
            let quiet = self.opened.elapsed().saturating_sub(last);
            if self.handling.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(idle).await;
            } else if quiet >= idle {
                return;
            } else {
                tokio::time::sleep(idle - quiet).await;
            }
        }
    }
}

/// A request being handled, from the call of the router to its answer's head.
#[derive(Debug)]
struct Handling(Arc<Activity>);

impl Handling {
    fn start(activity: &Arc<Activity>) -> Self {
        activity.handling.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(activity))
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        // The answer is being sent from here on: the idle clock starts afresh.
        self.0.touch();
        self.0.handling.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's stream that notes when bytes move.
#[derive(Debug)]
struct Tracked<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// `--listen`'s help in general. A server adds its default, and anything of its own, with clap's
/// `mut_arg("listen", ...)` on its arguments: the default cannot be clap's, since it applies only
/// when the configuration file sets no `listen` either.
pub const LISTEN_HELP: &str = "Address and port to listen on (port 0 picks a free port; the bound \
    address is printed as `listening on http://ADDR`, or `https://` with TLS)";

/// `--listen ADDR`, the address a server binds. `A` is what the server binds: a `String` (a host
/// name is resolved when binding) or a `SocketAddr`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ListenArgs<A = String>
where
    A: FromStr + Clone + Send + Sync + 'static,
    A::Err: std::error::Error + Send + Sync + 'static,
{
    #[arg(id = "listen", long = "listen", value_name = "ADDR", help = LISTEN_HELP)]
    pub address: Option<A>,
}

/// The flags of a server's own TLS identity (`adyton kbs serve`, `adyton registry serve`); the
/// inference server's identity is attested instead, made in the TEE.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// Serve HTTPS with this certificate chain (PEM, leaf first); needs --tls-private-key.
    #[arg(long, value_name = "FILE", requires = "tls_private_key")]
    pub tls_certificate: Option<PathBuf>,

    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1) of --tls-certificate.
    #[arg(long, value_name = "FILE", requires = "tls_certificate")]
    pub tls_private_key: Option<PathBuf>,
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

    /// From the flag group, when both flags are given.
    pub fn from_args(args: &TlsArgs) -> Option<Self> {
        Self::from_flags(args.tls_certificate.as_ref(), args.tls_private_key.as_ref())
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn section(text: &str) -> ConnectionsSection {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let none = ConnectionLimits::resolve(None, &ConnectionArgs::default(), "x").unwrap();
        assert_eq!(none, ConnectionLimits::default());
        let file = section("max_connections = 10\nheader_timeout = \"2s\"\nidle_timeout = \"1m\"");
        let flags = ConnectionArgs {
            header_timeout: Some(Duration::from_secs(5).into()),
            ..ConnectionArgs::default()
        };
        let limits = ConnectionLimits::resolve(Some(&file), &flags, "x").unwrap();
        assert_eq!(limits.max_connections, 10);
        assert_eq!(limits.header_timeout, Duration::from_secs(5));
        assert_eq!(limits.body_timeout, Duration::from_secs(30));
        assert_eq!(limits.idle_timeout, Duration::from_secs(60));
    }

    /// `--listen` parsed into `A` by a command `serve` that has only the listen group.
    fn listen<A>(argv: &[&str]) -> Result<Option<A>, clap::Error>
    where
        A: FromStr + Clone + Send + Sync + 'static,
        A::Err: std::error::Error + Send + Sync + 'static,
    {
        use clap::{Args as _, FromArgMatches as _};
        let serve = ListenArgs::<A>::augment_args(clap::Command::new("serve"));
        let matches = serve.try_get_matches_from(argv)?;
        Ok(ListenArgs::<A>::from_arg_matches(&matches)?.address)
    }

    #[test]
    fn listen_takes_host_names_or_only_socket_addresses_as_the_server_binds() {
        let name = listen::<String>(&["serve", "--listen", "localhost:8443"]).unwrap();
        assert_eq!(name.as_deref(), Some("localhost:8443"));
        assert_eq!(listen::<String>(&["serve"]).unwrap(), None);
        let addr = listen::<SocketAddr>(&["serve", "--listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(addr, Some(SocketAddr::from(([127, 0, 0, 1], 0))));
        let err = listen::<SocketAddr>(&["serve", "--listen", "localhost:8443"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("--listen <ADDR>"), "{err}");
    }

    #[test]
    fn nonsense_limits_are_refused() {
        let flags = ConnectionArgs::default();
        for (text, named) in [
            ("max_connections = 0", "max_connections"),
            ("body_timeout = \"0s\"", "body_timeout"),
            ("header_timeout = \"soon\"", "header_timeout"),
        ] {
            let e = ConnectionLimits::resolve(Some(&section(text)), &flags, "f.toml").unwrap_err();
            assert!(format!("{e:#}").contains(named), "{e:#}");
        }
        assert!(toml::from_str::<ConnectionsSection>("max_conections = 1").is_err());
    }

    /// One request on a new connection; whether an answer came before the close.
    fn answered(addr: SocketAddr, path: &str) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        answer.starts_with(b"HTTP/1.1 200")
    }

    #[test]
    fn a_client_that_stops_reading_is_disconnected_and_shutdown_waits_for_none() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        // An answer far larger than the socket buffers, so that its sending stalls.
        let router = axum::Router::new()
            .route("/big", axum::routing::get(|| async { vec![0u8; 64 << 20] }))
            .route("/small", axum::routing::get(|| async { "ok" }));
        let limits = ConnectionLimits {
            max_connections: 1,
            idle_timeout: Duration::from_secs(1),
            ..ConnectionLimits::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = runtime.spawn(serve_until(listener, None, limits, router, async {
            let _ = stopped.await;
        }));

        // The only slot is taken by a client that asks for the big answer and reads none of it.
        let mut reader = std::net::TcpStream::connect(addr).unwrap();
        std::io::Write::write_all(&mut reader, b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        // Others are closed at accept until the idle timeout frees the slot.
        let started = Instant::now();
        while !answered(addr, "/small") {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the stalled reader still holds the slot"
            );
            std::thread::sleep(Duration::from_millis(100));
        }

        // A connection left open (sending nothing) does not hold up the shutdown.
        let _idle = std::net::TcpStream::connect(addr).unwrap();
        stop.send(()).unwrap();
        runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), server).await })
            .expect("the shutdown finished")
            .unwrap();
        drop(reader);
    }
}
