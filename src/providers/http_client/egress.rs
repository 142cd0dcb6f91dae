//! How an allowed outgoing request goes out, in place of wasmtime-wasi-http's
//! `default_send_request`: a pooled hyper-util client per component whose connector resolves
//! the host itself, refuses the node's own networks ([`super::address`]) unless the allow-list
//! names the address or host literally, connects to exactly the address it checked (a second
//! lookup, as DNS rebinding would need, never happens) and speaks TLS with [`super::tls`].
//! HTTP/1.1 only, as `default_send_request`; redirects are not followed (wasi:http leaves them to
//! the guest, whose next request is checked the same way).
//!
//! What one component can hold of the node is bounded: every socket (in use, idle in the pool,
//! or still connecting in the background after its request gave up) holds a permit of its
//! component's [`MAX_COMPONENT_SOCKETS`] and of the node's [`MAX_NODE_SOCKETS`] until it closes;
//! name lookups run on tokio's blocking pool, each under a permit of its component's
//! [`MAX_COMPONENT_LOOKUPS`] and of the node's [`MAX_LOOKUPS`], so one component never holds
//! all of the node's; and no timeout a guest asks for is longer than the node's request timeout.
//! A request waits for the node's permits (and its component's lookups) up to its connect
//! timeout; one that finds its component's sockets all in use fails at once.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http::uri::Scheme;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::client::TlsStream;
use wasmtime_wasi_http::{RequestOptions, WasiBody};

use super::address::{Restricted, restriction};
use super::tls::{TlsError, client_config};
use super::{AllowedHosts, origin};

/// How long establishing a connection (lookup, TCP, TLS) may take when the guest sets no
/// `connect-timeout` (10 s, or the node's request timeout if shorter): a host that never
/// answers gets a `connection-timeout` it can handle rather than outliving the request's
/// deadline.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait for the first byte and between bytes of a response when the guest sets none
/// (600 s, as `default_send_request`), before it is clamped to the node's request timeout.
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(600);

/// How long an idle pooled connection is kept (30 s): while idle it holds its socket permits.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections kept per scheme and authority, per component.
const POOL_MAX_IDLE_PER_HOST: usize = 4;

/// Sockets one component may have open at once (64), all its instances together: connected,
/// idle in its pool, or still connecting. Past them a request that needs a new connection gets
/// `connection-limit-reached` at once, until one closes (an idle one within 30 s, the pool's idle
/// timeout): the component's own sockets are what it waits for, so waiting would not help.
/// hyper-util bounds idle connections per host only; a guest allowed `*` could otherwise
/// leave one idle socket per host and port it tries.
pub const MAX_COMPONENT_SOCKETS: usize = 64;

/// Sockets all components of the node may have open at once (512), counted as
/// [`MAX_COMPONENT_SOCKETS`] is: half the 1,024 file descriptors a process gets by default
/// (systemd's soft limit), so the ingress, NATS and sled keep theirs. A request that needs a new
/// connection while all are in use waits for one up to its connect timeout, then gets
/// `connection-limit-reached`.
pub const MAX_NODE_SOCKETS: usize = 512;

/// Name lookups (`getaddrinfo`, each on a thread of tokio's blocking pool) under way at once,
/// node-wide (32). A lookup holds its permit until `getaddrinfo` returns, even when its request
/// gave up (the thread cannot be stopped); a request that needs one while all are in use waits
/// for one up to its connect timeout, then gets `connection-limit-reached`, rather than queueing
/// on the pool that sled and compiles use too.
pub const MAX_LOOKUPS: usize = 32;

/// Name lookups one component may have under way at once (4), all its instances together,
/// taken before one of the node's [`MAX_LOOKUPS`] and held as long: a component looping over
/// names under a slow resolver holds at most these of the node's, the others keep the rest.
/// A request waits for one up to its connect timeout, then gets `connection-limit-reached`.
pub const MAX_COMPONENT_LOOKUPS: usize = 4;

/// The node's outgoing-HTTP settings: its TLS client configuration and the node-wide socket and
/// lookup limits every component's client shares. Cheap to clone.
#[derive(Clone)]
pub struct Egress {
    tls: Arc<rustls::ClientConfig>,
    /// The node's [`MAX_NODE_SOCKETS`].
    sockets: Arc<Semaphore>,
    /// The node's [`MAX_LOOKUPS`].
    lookups: Arc<Semaphore>,
    /// Sockets per component ([`MAX_COMPONENT_SOCKETS`]) and in all ([`MAX_NODE_SOCKETS`]).
    component_sockets: usize,
    node_sockets: usize,
    /// Lookups per component ([`MAX_COMPONENT_LOOKUPS`]) and in all ([`MAX_LOOKUPS`]).
    component_lookups: usize,
    node_lookups: usize,
}

impl Egress {
    /// Outgoing HTTP trusting the system's roots plus the certificates of `ca_files` (PEM;
    /// none: the system's roots only).
    ///
    /// # Errors
    /// [`TlsError`], naming a file that cannot be read or holds no usable CA certificate.
    pub fn new(ca_files: &[std::path::PathBuf]) -> Result<Egress, TlsError> {
        Ok(Egress {
            tls: client_config(ca_files)?,
            sockets: Arc::new(Semaphore::new(MAX_NODE_SOCKETS)),
            lookups: Arc::new(Semaphore::new(MAX_LOOKUPS)),
            component_sockets: MAX_COMPONENT_SOCKETS,
            node_sockets: MAX_NODE_SOCKETS,
            component_lookups: MAX_COMPONENT_LOOKUPS,
            node_lookups: MAX_LOOKUPS,
        })
    }

    /// This node's settings with other socket limits (tests).
    #[cfg(test)]
    fn with_socket_limits(mut self, node: usize, component: usize) -> Egress {
        self.sockets = Arc::new(Semaphore::new(node));
        self.node_sockets = node;
        self.component_sockets = component;
        self
    }

    /// This node's settings with other lookup limits (tests).
    #[cfg(test)]
    fn with_lookup_limits(mut self, node: usize, component: usize) -> Egress {
        self.lookups = Arc::new(Semaphore::new(node));
        self.node_lookups = node;
        self.component_lookups = component;
        self
    }

    /// The client of one component (`component` of app `app`, named in logs), reaching
    /// `allowed`: its connections are pooled for all its instances and shared with no other
    /// component; no connect, first-byte or between-bytes timeout is longer than `max_wait`
    /// (the node's request timeout).
    pub fn client(
        &self,
        allowed: Arc<AllowedHosts>,
        app: Arc<str>,
        component: Arc<str>,
        max_wait: Duration,
    ) -> EgressClient {
        EgressClient::over(self.connector(allowed, app, component, max_wait), max_wait)
    }

    /// The connector of one component's client (see [`Egress::client`]).
    fn connector(
        &self,
        allowed: Arc<AllowedHosts>,
        app: Arc<str>,
        component: Arc<str>,
        max_wait: Duration,
    ) -> Connector {
        Connector {
            inner: Arc::new(ConnectorInner {
                allowed,
                tls: tokio_rustls::TlsConnector::from(self.tls.clone()),
                app,
                component,
                refusal_logged: AtomicBool::new(false),
                limit_logged: AtomicBool::new(false),
                sockets: Arc::new(Semaphore::new(self.component_sockets)),
                node_sockets: self.sockets.clone(),
                socket_limit: self.component_sockets,
                node_socket_limit: self.node_sockets,
                lookups: Arc::new(Semaphore::new(self.component_lookups)),
                node_lookups: self.lookups.clone(),
                lookup_limit: self.component_lookups,
                node_lookup_limit: self.node_lookups,
                max_wait,
            }),
        }
    }
}

/// The pooled client of one component. Cheap to clone.
#[derive(Clone)]
pub struct EgressClient {
    client: Client<Connector, WasiBody>,
    /// The longest timeout a guest gets (the node's request timeout).
    max_wait: Duration,
}

/// What `WasiHttpHooks::send_request` returns.
pub(super) type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
>;

impl EgressClient {
    /// A pooled client connecting through `connector`, no timeout longer than `max_wait`.
    fn over(connector: Connector, max_wait: Duration) -> EgressClient {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .build(connector);
        EgressClient { client, max_wait }
    }
}

tokio::task_local! {
    /// The connect timeout of the request whose connection the connector is making.
    static CONNECT_TIMEOUT: Duration;
}

impl EgressClient {
    /// Sends `request` (absolute URI, allowed by the component's allow-list) with the guest's
    /// `options`: a new connection (lookup, TCP, TLS) within `connect_timeout` (default
    /// [`DEFAULT_CONNECT_TIMEOUT`]), the response head within `connect_timeout +
    /// first_byte_timeout` of the start (the pool does not say whether it connected, so a
    /// reused connection's first byte may take up to both), each body frame within
    /// `between_bytes_timeout` of the guest asking for it (default 600 s each, as
    /// `default_send_request`); each of the three at most the client's `max_wait`.
    /// `hold` is kept until the response body ends or is dropped.
    ///
    /// # Errors
    /// wasi:http's error codes: `destination-ip-prohibited` for an address of the node's own
    /// networks no entry names, `connection-limit-reached` when a new connection would pass
    /// [`MAX_COMPONENT_SOCKETS`], or no socket of [`MAX_NODE_SOCKETS`] or lookup of
    /// [`MAX_COMPONENT_LOOKUPS`] and [`MAX_LOOKUPS`] came free within the connect timeout,
    /// `DNS-error`, `connection-refused`, `connection-timeout`, `connection-read-timeout`, the
    /// `TLS-*` codes, `HTTP-protocol-error`.
    pub(super) async fn send<H: Send + Unpin + 'static>(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        hold: H,
    ) -> SendResult {
        let options = options.unwrap_or_default();
        let connect_timeout = options
            .connect_timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
            .min(self.max_wait);
        let first_byte_timeout = options
            .first_byte_timeout
            .unwrap_or(DEFAULT_READ_TIMEOUT)
            .min(self.max_wait);
        let between_bytes_timeout = options
            .between_bytes_timeout
            .unwrap_or(DEFAULT_READ_TIMEOUT)
            .min(self.max_wait)
            // A zero interval panics in tokio; 1 ns is as good as none.
            .max(Duration::from_nanos(1));
        // The connector reads the connect timeout when the client asks it for a connection,
        // which happens inside this future (a connection the pool gets back first is kept).
        let response = CONNECT_TIMEOUT.scope(connect_timeout, self.client.request(request));
        // The first byte's wait, after connecting: at most connect + first-byte in all.
        let response =
            match tokio::time::timeout(connect_timeout + first_byte_timeout, response).await {
                Err(_elapsed) => return Err(wasmtime_wasi_http::Error::ConnectionReadTimeout),
                Ok(Err(e)) => return Err(client_error(&e)),
                Ok(Ok(response)) => response,
            };
        let timeout = tokio::time::interval(between_bytes_timeout);
        let response = response.map(|incoming| {
            http_body_util::BodyExt::boxed_unsync(ResponseBody {
                incoming,
                timeout,
                restart: true,
                _hold: hold,
            })
        });
        // The pool's own task drives the connection: nothing is left to await here.
        Ok((
            response,
            Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
        ))
    }
}

/// A response body with the between-bytes timeout, holding what the request held.
struct ResponseBody<H> {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
    /// Whether the next `poll_frame` asks for a new frame (the first, or after one was
    /// returned): the timeout runs from then, not while the guest is not reading.
    restart: bool,
    _hold: H,
}

impl<H: Unpin> http_body::Body for ResponseBody<H> {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if std::mem::take(&mut self.restart) {
            self.timeout.reset();
        }
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) if e.is_timeout() => {
                Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => {
                self.restart = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(wasmtime_wasi_http::Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}

/// The wasi:http error for what the pooled client returned.
fn client_error(error: &hyper_util::client::legacy::Error) -> wasmtime_wasi_http::Error {
    use wasmtime_wasi_http::Error;
    let mut cause = std::error::Error::source(error);
    while let Some(e) = cause {
        if let Some(e) = e.downcast_ref::<ConnectError>() {
            return e.to_wasi();
        }
        if let Some(e) = e.downcast_ref::<hyper::Error>() {
            return hyper_error(e);
        }
        if let Some(e) = e.downcast_ref::<Error>() {
            // The guest's request body failed; its own stream reports the details.
            return match e {
                Error::HttpRequestBodySize(size) => Error::HttpRequestBodySize(*size),
                _ => Error::HttpProtocolError,
            };
        }
        cause = e.source();
    }
    if error.is_connect() {
        Error::ConnectionRefused
    } else {
        Error::InternalError(Some(error.to_string()))
    }
}

/// The wasi:http error for a hyper error while sending a request or reading its answer's head.
fn hyper_error(error: &hyper::Error) -> wasmtime_wasi_http::Error {
    use wasmtime_wasi_http::Error;
    if error.is_timeout() {
        Error::HttpResponseTimeout
    } else if error.is_incomplete_message() || error.is_closed() || error.is_canceled() {
        Error::ConnectionTerminated
    } else {
        tracing::debug!(error = %error, "outgoing HTTP request failed");
        Error::HttpProtocolError
    }
}

/// Why the connector made no connection.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// Every address the host has is one of the node's own networks and no entry names it.
    #[error("{host} resolves only to addresses of the node's own networks ({addr}: {why})")]
    Prohibited {
        host: String,
        addr: IpAddr,
        why: Restricted,
    },
    /// The name did not resolve.
    #[error("looking up {host}: {source}")]
    Lookup { host: String, source: io::Error },
    /// The name resolved to no address.
    #[error("{host} has no address")]
    NoAddress { host: String },
    /// Lookup, connect and TLS handshake took longer than the connect timeout.
    #[error("connecting took longer than {0:?}")]
    Timeout(Duration),
    /// TCP connect failed (the last address tried).
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    /// The TLS handshake failed.
    #[error("TLS with {host}: {source}")]
    Tls { host: String, source: io::Error },
    /// The host is no name a TLS certificate can be checked for.
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
    /// The URI has no host (the client checks it has one first).
    #[error("no host in {0}")]
    NoHost(String),
    /// The component's or the node's sockets or lookups are all in use (those the request may
    /// wait for: until its connect timeout).
    #[error("{limit} {what} are in use")]
    Limit { what: &'static str, limit: usize },
}

impl ConnectError {
    fn to_wasi(&self) -> wasmtime_wasi_http::Error {
        use wasmtime_wasi_http::Error;
        match self {
            ConnectError::Prohibited { .. } => Error::DestinationIpProhibited,
            ConnectError::Lookup { source, .. } => Error::DnsError {
                rcode: Some(source.to_string()),
                info_code: None,
            },
            ConnectError::NoAddress { .. } => Error::DnsError {
                rcode: Some("no address".to_owned()),
                info_code: None,
            },
            ConnectError::Timeout(_) => Error::ConnectionTimeout,
            ConnectError::Connect { source, .. } => match source.kind() {
                io::ErrorKind::ConnectionRefused => Error::ConnectionRefused,
                io::ErrorKind::TimedOut => Error::ConnectionTimeout,
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    Error::DestinationUnavailable
                }
                kind => Error::Connect(io::Error::new(kind, source.to_string())),
            },
            ConnectError::Tls { source, .. } => tls_error(source),
            ConnectError::ServerName { .. } | ConnectError::NoHost(_) => {
                Error::HttpRequestUriInvalid
            }
            ConnectError::Limit { .. } => Error::ConnectionLimitReached,
        }
    }
}

/// The wasi:http error for a failed TLS handshake: certificate, alert or protocol.
fn tls_error(error: &io::Error) -> wasmtime_wasi_http::Error {
    use wasmtime_wasi_http::Error;
    match error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            Error::TlsCertificateError
        }
        Some(rustls::Error::AlertReceived(alert)) => Error::TlsAlertReceived {
            alert_id: Some(u8::from(*alert)),
            alert_message: Some(format!("{alert:?}")),
        },
        Some(_) => Error::TlsProtocolError,
        None if error.kind() == io::ErrorKind::UnexpectedEof => Error::ConnectionTerminated,
        None => Error::TlsProtocolError,
    }
}

/// Resolve → check → connect → TLS, for the pooled client (a `tower::Service<Uri>`).
#[derive(Clone)]
struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    allowed: Arc<AllowedHosts>,
    tls: tokio_rustls::TlsConnector,
    app: Arc<str>,
    component: Arc<str>,
    /// Whether a refused address was logged at INFO already (later ones at DEBUG: a guest
    /// looping on a refused host does not flood the log).
    refusal_logged: AtomicBool,
    /// Whether a limit reached was logged at WARN already (later ones at DEBUG).
    limit_logged: AtomicBool,
    /// The component's sockets ([`MAX_COMPONENT_SOCKETS`]).
    sockets: Arc<Semaphore>,
    /// The node's sockets ([`MAX_NODE_SOCKETS`]).
    node_sockets: Arc<Semaphore>,
    /// How many permits `sockets` and `node_sockets` have in all (for errors).
    socket_limit: usize,
    node_socket_limit: usize,
    /// The component's lookups ([`MAX_COMPONENT_LOOKUPS`]).
    lookups: Arc<Semaphore>,
    /// The node's lookups ([`MAX_LOOKUPS`]).
    node_lookups: Arc<Semaphore>,
    /// How many permits `lookups` and `node_lookups` have in all (for errors).
    lookup_limit: usize,
    node_lookup_limit: usize,
    /// The longest connect timeout (the node's request timeout): also what a connection the
    /// pool dials in the background, after its request gave up, may take.
    max_wait: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let timeout = CONNECT_TIMEOUT
            .try_with(|t| *t)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
            .min(self.inner.max_wait);
        let inner = self.inner.clone();
        Box::pin(async move {
            // Waiting for permits counts against the connect timeout. A permit's wait ends at
            // the same deadline as the timeout around it, and is polled first: it reports the
            // limit rather than a connection timeout.
            let deadline = tokio::time::Instant::now() + timeout;
            // The socket's permits, taken before it exists and released when it closes:
            // whether it serves a request, idles in the pool or connects in the background.
            let result = match inner.socket_permits(deadline).await {
                Ok(permits) => {
                    match tokio::time::timeout_at(deadline, inner.connect(&uri, deadline)).await {
                        Ok(Ok(io)) => Ok(TokioIo::new(Stream {
                            io,
                            _permits: permits,
                        })),
                        Ok(Err(e)) => Err(e),
                        Err(_elapsed) => Err(ConnectError::Timeout(timeout)),
                    }
                }
                Err(e) => Err(e),
            };
            match &result {
                Err(e @ ConnectError::Prohibited { .. }) => inner.log_refusal(&uri, e),
                Err(e @ ConnectError::Limit { .. }) => inner.log_limit(&uri, e),
                _ => {}
            }
            result
        })
    }
}

impl ConnectorInner {
    /// A permit of the component's sockets (at once) and one of the node's (waiting for it
    /// until `deadline`).
    async fn socket_permits(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<[OwnedSemaphorePermit; 2], ConnectError> {
        let component =
            self.sockets
                .clone()
                .try_acquire_owned()
                .map_err(|_| ConnectError::Limit {
                    what: "sockets of the component",
                    limit: self.socket_limit,
                })?;
        let node = permit_by(
            &self.node_sockets,
            deadline,
            "outgoing-HTTP sockets of the node",
            self.node_socket_limit,
        )
        .await?;
        Ok([component, node])
    }

    /// A permit of the component's lookups, then one of the node's, waiting for each until
    /// `deadline`.
    async fn lookup_permits(
        &self,
        deadline: tokio::time::Instant,
    ) -> Result<[OwnedSemaphorePermit; 2], ConnectError> {
        let component = permit_by(
            &self.lookups,
            deadline,
            "name lookups of the component",
            self.lookup_limit,
        )
        .await?;
        let node = permit_by(
            &self.node_lookups,
            deadline,
            "name lookups of the node",
            self.node_lookup_limit,
        )
        .await?;
        Ok([component, node])
    }

    /// The addresses of `host` on `port`, looked up on the blocking pool under a permit of
    /// [`MAX_COMPONENT_LOOKUPS`] and one of [`MAX_LOOKUPS`] (waited for until `deadline`), which
    /// the lookup keeps until `getaddrinfo` returns.
    async fn lookup(
        &self,
        host: &str,
        port: u16,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<SocketAddr>, ConnectError> {
        let permits = self.lookup_permits(deadline).await?;
        let name = host.to_owned();
        let looked_up = tokio::task::spawn_blocking(move || {
            let _permits = permits;
            (name.as_str(), port)
                .to_socket_addrs()
                .map(Iterator::collect::<Vec<_>>)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("the lookup's thread failed: {e}"))));
        looked_up.map_err(|source| ConnectError::Lookup {
            host: host.to_owned(),
            source,
        })
    }

    /// A connection to `uri`'s host, its lookup's permits waited for until `deadline`.
    async fn connect(
        &self,
        uri: &Uri,
        deadline: tokio::time::Instant,
    ) -> Result<Transport, ConnectError> {
        let https = uri.scheme() == Some(&Scheme::HTTPS);
        let scheme = if https { Scheme::HTTPS } else { Scheme::HTTP };
        let host = uri
            .host()
            .ok_or_else(|| ConnectError::NoHost(uri.to_string()))?;
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => self.lookup(bare, port, deadline).await?,
        };
        let mut refused = None;
        let permitted: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|addr| match restriction(addr.ip()) {
                None => true,
                Some(_) if self.allowed.names_literally(&scheme, bare, addr.ip(), port) => true,
                Some(why) => {
                    refused.get_or_insert((addr.ip(), why));
                    false
                }
            })
            .collect();
        if permitted.is_empty() {
            return Err(match refused {
                Some((addr, why)) => ConnectError::Prohibited {
                    host: bare.to_owned(),
                    addr,
                    why,
                },
                None => ConnectError::NoAddress {
                    host: bare.to_owned(),
                },
            });
        }
        let tcp = connect_first(&permitted).await?;
        // Requests are small and interactive: no Nagle delay, as hyper's HttpConnector.
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Transport::Plain(tcp));
        }
        let name = rustls::pki_types::ServerName::try_from(bare)
            .map_err(|_| ConnectError::ServerName {
                host: bare.to_owned(),
            })?
            .to_owned();
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|source| ConnectError::Tls {
                host: bare.to_owned(),
                source,
            })?;
        Ok(Transport::Tls(Box::new(tls)))
    }

    fn log_limit(&self, uri: &Uri, error: &ConnectError) {
        // The origin only where it may be exported; the path (it may carry tokens) at DEBUG,
        // which is never exported.
        let (path, uri) = (uri.path(), origin(uri));
        let why = "outgoing HTTP request refused (connection-limit-reached)";
        if !self.limit_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(app = %self.app, component = %self.component, uri, reason = %error, "{why}");
        }
        tracing::debug!(app = %self.app, component = %self.component, uri, path, reason = %error, "{why}");
    }

    fn log_refusal(&self, uri: &Uri, error: &ConnectError) {
        let (path, uri) = (uri.path(), origin(uri));
        let why = "outgoing HTTP request refused (destination-ip-prohibited): only an \
                   allowed_hosts entry naming the address or host itself, not a wildcard, \
                   reaches the node's own networks";
        if !self.refusal_logged.swap(true, Ordering::Relaxed) {
            tracing::info!(app = %self.app, component = %self.component, uri, reason = %error, "{why}");
        }
        tracing::debug!(app = %self.app, component = %self.component, uri, path, reason = %error, "{why}");
    }
}

/// A permit of `semaphore` (`limit` permits of `what`), waiting for one until `deadline`
/// (`acquire_owned` is cancel-safe: a request that gives up leaves its place in the queue).
async fn permit_by(
    semaphore: &Arc<Semaphore>,
    deadline: tokio::time::Instant,
    what: &'static str,
    limit: usize,
) -> Result<OwnedSemaphorePermit, ConnectError> {
    match tokio::time::timeout_at(deadline, semaphore.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        // Elapsed, or closed (these semaphores never are).
        Err(_) | Ok(Err(_)) => Err(ConnectError::Limit { what, limit }),
    }
}

/// A TCP connection to the first of `addrs` (all checked) that accepts one.
async fn connect_first(addrs: &[SocketAddr]) -> Result<TcpStream, ConnectError> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(source) => {
                last = Some(ConnectError::Connect {
                    addr: *addr,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or_else(|| ConnectError::NoHost("no address to connect to".to_owned())))
}

/// A connection the pool keeps, with its socket permits (released when it closes).
struct Stream {
    io: Transport,
    _permits: [OwnedSemaphorePermit; 2],
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Plain TCP or TLS over it.
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A keep-alive HTTP/1.1 server on 127.0.0.1 answering `200 ok`; counts connections.
    async fn server() -> (u16, Arc<AtomicUsize>) {
        let (port, accepted, _open) = counting_server().await;
        (port, accepted)
    }

    /// [`server`], also counting the connections accepted and not yet closed by the client.
    async fn counting_server() -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let still_open = open.clone();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                still_open.fetch_add(1, Ordering::SeqCst);
                let closed = still_open.clone();
                tokio::spawn(async move {
                    let _closed = Decrement(closed);
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.clear();
                        let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if tcp.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (port, accepted, open)
    }

    /// Decrements its counter when dropped.
    struct Decrement(Arc<AtomicUsize>);

    impl Drop for Decrement {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits (up to 10 s) until `open` is `want`; its value then.
    async fn settle(open: &AtomicUsize, want: usize) -> usize {
        for _ in 0..200 {
            if open.load(Ordering::SeqCst) == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        open.load(Ordering::SeqCst)
    }

    async fn get(client: &EgressClient, uri: &str) -> Result<String, String> {
        get_with(client, uri, None).await
    }

    async fn get_with(
        client: &EgressClient,
        uri: &str,
        options: Option<RequestOptions>,
    ) -> Result<String, String> {
        let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
        let request = http::Request::get(uri).body(body).unwrap();
        let (response, _io) = client
            .send(request, options, ())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn client(allowed: &str) -> EgressClient {
        client_of(&Egress::new(&[]).unwrap(), allowed, Duration::from_secs(30))
    }

    fn client_of(egress: &Egress, allowed: &str, max_wait: Duration) -> EgressClient {
        let allowed = Arc::new(AllowedHosts::parse(allowed).unwrap());
        egress.client(allowed, "app".into(), "component".into(), max_wait)
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_named_and_connections_are_reused() {
        let (port, accepted) = server().await;
        let star = client("*");
        for uri in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://localhost:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
        ] {
            assert_eq!(
                get(&star, &uri).await,
                Err("DestinationIpProhibited".to_owned()),
                "{uri}"
            );
        }
        // Names the resolver reads as loopback or as a number (inet_aton's decimal, octal, hex
        // and short forms) are judged by the address they resolve to.
        for host in [
            "LOCALHOST",
            "2130706433",
            "0",
            "0177.0.0.1",
            "0x7f.1",
            "127.1",
        ] {
            assert_eq!(
                get(&star, &format!("http://{host}:{port}/")).await,
                Err("DestinationIpProhibited".to_owned()),
                "{host}"
            );
        }
        // `localhost.` resolves where the resolver answers it (RFC 6761, systemd-resolved) and is
        // prohibited then; glibc's hosts file matches no trailing dot: a DNS error here.
        let fqdn = get(&star, &format!("http://localhost.:{port}/")).await;
        assert!(
            fqdn.as_ref().is_err_and(|e| e == "DestinationIpProhibited")
                || fqdn.as_ref().is_err_and(|e| e.starts_with("DnsError")),
            "{fqdn:?}"
        );
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            0,
            "a refusal connects nowhere"
        );

        let named = client(&format!("127.0.0.1:{port}"));
        for _ in 0..5 {
            assert_eq!(
                get(&named, &format!("http://127.0.0.1:{port}/")).await,
                Ok("ok".into())
            );
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "five requests in a row share one pooled connection"
        );
        let by_name = client("localhost");
        assert_eq!(
            get(&by_name, &format!("http://localhost:{port}/")).await,
            Ok("ok".into())
        );
    }

    #[tokio::test]
    async fn a_public_name_that_does_not_resolve_is_a_dns_error() {
        let star = client("*");
        let got = get(&star, "http://no-such-host.invalid/").await;
        assert!(
            got.as_ref().is_err_and(|e| e.starts_with("DnsError")),
            "{got:?}"
        );
    }

    #[tokio::test]
    async fn sockets_are_capped_per_component_and_per_node_idle_ones_included() {
        let egress = Egress::new(&[]).unwrap().with_socket_limits(3, 2);
        let mut servers = Vec::new();
        for _ in 0..4 {
            servers.push(counting_server().await);
        }
        let open = |servers: &[(u16, Arc<AtomicUsize>, Arc<AtomicUsize>)]| {
            servers
                .iter()
                .map(|(_, _, open)| open.load(Ordering::SeqCst))
                .sum::<usize>()
        };
        let uri = |i: usize| format!("http://127.0.0.1:{}/", servers[i].0);
        // `127.0.0.1` (any port) names loopback literally: one component, a port after another.
        let a = client_of(&egress, "127.0.0.1", Duration::from_secs(30));
        assert_eq!(get(&a, &uri(0)).await, Ok("ok".into()));
        assert_eq!(get(&a, &uri(1)).await, Ok("ok".into()));
        // Two idle connections are the component's two sockets: a third port is refused …
        assert_eq!(
            get(&a, &uri(2)).await,
            Err("ConnectionLimitReached".to_owned())
        );
        assert_eq!(
            servers[2].1.load(Ordering::SeqCst),
            0,
            "no socket was opened"
        );
        // … while its idle connections still serve their hosts.
        assert_eq!(get(&a, &uri(0)).await, Ok("ok".into()));
        assert_eq!(open(&servers), 2);
        // Another component has the node's third socket, then the node has none: a request
        // waits for one up to its connect timeout.
        let b = client_of(&egress, "127.0.0.1", Duration::from_secs(30));
        assert_eq!(get(&b, &uri(2)).await, Ok("ok".into()));
        assert_eq!(
            get_with(
                &b,
                &uri(3),
                Some(connect_within(Duration::from_millis(200)))
            )
            .await,
            Err("ConnectionLimitReached".to_owned())
        );
        assert_eq!(open(&servers), 3);
        // When a component goes while a request waits, its sockets close and their permits
        // serve the waiting request.
        let waiting = {
            let (b, uri) = (b.clone(), uri(3));
            tokio::spawn(async move {
                get_with(&b, &uri, Some(connect_within(Duration::from_secs(20)))).await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "the request waits for a socket");
        drop(a);
        assert_eq!(waiting.await.unwrap(), Ok("ok".into()));
        for (_, _, open) in &servers[..2] {
            assert_eq!(settle(open, 0).await, 0, "the idle connections close");
        }
        assert_eq!(open(&servers), 2);
    }

    /// Options with only a connect timeout.
    fn connect_within(timeout: Duration) -> RequestOptions {
        RequestOptions {
            connect_timeout: Some(timeout),
            ..RequestOptions::default()
        }
    }

    #[tokio::test]
    async fn one_components_lookups_cannot_take_all_the_nodes() {
        let (port, _accepted) = server().await;
        let egress = Egress::new(&[]).unwrap();
        let allowed = Arc::new(AllowedHosts::parse("localhost").unwrap());
        let max_wait = Duration::from_secs(30);
        let a = egress.connector(allowed.clone(), "app".into(), "a".into(), max_wait);
        let a_client = EgressClient::over(a.clone(), max_wait);
        let b = client_of(&egress, "localhost", max_wait);
        // `a` holds all its lookups, as a guest looping over names under a slow resolver
        // would (each permit is held until `getaddrinfo` returns).
        let soon = || tokio::time::Instant::now() + Duration::from_millis(200);
        let mut held = Vec::new();
        for _ in 0..MAX_COMPONENT_LOOKUPS {
            held.push(a.inner.lookup_permits(soon()).await.unwrap());
        }
        assert!(matches!(
            a.inner.lookup_permits(soon()).await,
            Err(ConnectError::Limit {
                what: "name lookups of the component",
                limit: MAX_COMPONENT_LOOKUPS,
            })
        ));
        assert_eq!(
            egress.lookups.available_permits(),
            MAX_LOOKUPS - MAX_COMPONENT_LOOKUPS,
            "the node's other lookups are left to the other components"
        );
        // `a`'s next request that needs a lookup waits for one up to its connect timeout; `b`'s
        // looks its name up at once.
        let uri = format!("http://localhost:{port}/");
        let within = || Some(connect_within(Duration::from_millis(300)));
        assert_eq!(
            get_with(&a_client, &uri, within()).await,
            Err("ConnectionLimitReached".to_owned())
        );
        assert_eq!(get_with(&b, &uri, within()).await, Ok("ok".into()));
        drop(held);
        assert_eq!(get_with(&a_client, &uri, within()).await, Ok("ok".into()));
    }

    #[tokio::test]
    async fn a_lookup_waits_for_the_nodes_permit_up_to_its_deadline() {
        let egress = Egress::new(&[]).unwrap().with_lookup_limits(1, 4);
        let allowed = Arc::new(AllowedHosts::parse("localhost").unwrap());
        let max_wait = Duration::from_secs(30);
        let a = egress.connector(allowed.clone(), "app".into(), "a".into(), max_wait);
        let b = egress.connector(allowed, "app".into(), "b".into(), max_wait);
        let held = a
            .inner
            .lookup_permits(tokio::time::Instant::now())
            .await
            .unwrap();
        // The node's only lookup is `a`'s: `b` waits until its deadline, then is refused …
        let soon = tokio::time::Instant::now() + Duration::from_millis(200);
        assert!(matches!(
            b.inner.lookup_permits(soon).await,
            Err(ConnectError::Limit {
                what: "name lookups of the node",
                limit: 1,
            })
        ));
        // … or has it when `a`'s lookup ends before.
        let later = tokio::time::Instant::now() + Duration::from_secs(20);
        let waiting = tokio::spawn(async move { b.inner.lookup_permits(later).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !waiting.is_finished(),
            "the lookup waits for the node's permit"
        );
        drop(held);
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn a_name_lookup_past_the_nodes_limit_is_refused() {
        let (port, accepted) = server().await;
        let mut egress = Egress::new(&[]).unwrap();
        egress.lookups = Arc::new(Semaphore::new(0));
        let named = client_of(&egress, "localhost, 127.0.0.1", Duration::from_secs(30));
        // None comes free within the connect timeout.
        let uri = format!("http://localhost:{port}/");
        assert_eq!(
            get_with(
                &named,
                &uri,
                Some(connect_within(Duration::from_millis(200)))
            )
            .await,
            Err("ConnectionLimitReached".to_owned())
        );
        // An address needs no lookup.
        assert_eq!(
            get(&named, &format!("http://127.0.0.1:{port}/")).await,
            Ok("ok".into())
        );
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    /// A server on 127.0.0.1 that answers each connection's first request with a chunked
    /// `200` whose chunks (`one`, `two`) come `gap` apart; or, with `gap` of `None`, never.
    async fn slow_server(gap: Option<Duration>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let Some(gap) = gap else {
                        // Holds the connection without answering.
                        let _ = tcp.read(&mut chunk).await;
                        return;
                    };
                    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n";
                    let _ = tcp.write_all(head.as_bytes()).await;
                    tokio::time::sleep(gap).await;
                    let _ = tcp.write_all(b"3\r\ntwo\r\n0\r\n\r\n").await;
                    let _ = tcp.read(&mut chunk).await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn the_between_bytes_timeout_runs_while_the_guest_waits_for_a_frame_only() {
        let port = slow_server(Some(Duration::from_millis(1000))).await;
        let named = client(&format!("127.0.0.1:{port}"));
        let options = RequestOptions {
            between_bytes_timeout: Some(Duration::from_millis(600)),
            ..RequestOptions::default()
        };
        let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
        let request = http::Request::get(format!("http://127.0.0.1:{port}/"))
            .body(body)
            .unwrap();
        let (response, _io) = named.send(request, Some(options), ()).await.unwrap();
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "one");
        // The guest reads again 700 ms later (past the timeout), the second chunk comes 300 ms
        // after it asks (within it).
        tokio::time::sleep(Duration::from_millis(700)).await;
        let second = body.frame().await.unwrap();
        assert_eq!(
            second
                .map(|f| f.into_data().unwrap())
                .map_err(|e| e.to_string()),
            Ok(Bytes::from_static(b"two"))
        );

        // A server that stops sending does time out.
        let port = slow_server(Some(Duration::from_secs(5))).await;
        let named = client(&format!("127.0.0.1:{port}"));
        let options = RequestOptions {
            between_bytes_timeout: Some(Duration::from_millis(300)),
            ..RequestOptions::default()
        };
        let got = get_with(&named, &format!("http://127.0.0.1:{port}/"), Some(options)).await;
        assert_eq!(got, Err("ConnectionReadTimeout".to_owned()));
    }

    #[tokio::test]
    async fn no_timeout_is_longer_than_the_nodes_request_timeout() {
        let port = slow_server(None).await;
        let egress = Egress::new(&[]).unwrap();
        let named = client_of(
            &egress,
            &format!("127.0.0.1:{port}"),
            Duration::from_millis(300),
        );
        let options = RequestOptions {
            first_byte_timeout: Some(Duration::from_secs(3600)),
            ..RequestOptions::default()
        };
        // The guest asked for an hour; the node's 300 ms hold (a 20 s guard fails the test).
        let got = tokio::time::timeout(
            Duration::from_secs(20),
            get_with(&named, &format!("http://127.0.0.1:{port}/"), Some(options)),
        )
        .await;
        assert_eq!(got, Ok(Err("ConnectionReadTimeout".to_owned())));
    }
}
