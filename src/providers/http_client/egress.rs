//! How an allowed outgoing request goes out, in place of wasmtime-wasi-http's
//! `default_send_request`: a pooled hyper-util client per component whose connector resolves
//! the host itself, refuses the node's own networks ([`super::address`]) unless the allow-list
//! names the address or host literally, connects to exactly the address it checked (a second
//! lookup, as DNS rebinding would need, never happens) and speaks TLS with [`super::tls`].
//! HTTP/1.1 only, as `default_send_request`; redirects are not followed (wasi:http leaves them to
//! the guest, whose next request is checked the same way).

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
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
use tokio_rustls::client::TlsStream;
use wasmtime_wasi_http::{RequestOptions, WasiBody};

use super::address::{Restricted, restriction};
use super::tls::{TlsError, client_config};
use super::{AllowedHosts, without_query};

/// How long establishing a connection (lookup, TCP, TLS) may take when the guest sets no
/// `connect-timeout` (10 s): a host that never answers gets a `connection-timeout` it can
/// handle rather than outliving the request's deadline.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait for the first byte and between bytes of a response when the guest sets none
/// (600 s, as `default_send_request`; the request deadline is shorter anyway).
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(600);

/// How long an idle pooled connection is kept (90 s, hyper-util's default).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Idle connections kept per scheme and authority, per component.
const POOL_MAX_IDLE_PER_HOST: usize = 8;

/// The node's outgoing-HTTP settings: its TLS client configuration. Cheap to clone.
#[derive(Clone)]
pub struct Egress {
    tls: Arc<rustls::ClientConfig>,
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
        })
    }

    /// The client of one component (`component` of app `app`, named in logs), reaching
    /// `allowed`: its connections are pooled for all its instances and shared with no other
    /// component.
    pub fn client(
        &self,
        allowed: Arc<AllowedHosts>,
        app: Arc<str>,
        component: Arc<str>,
    ) -> EgressClient {
        let connector = Connector {
            inner: Arc::new(ConnectorInner {
                allowed,
                tls: tokio_rustls::TlsConnector::from(self.tls.clone()),
                app,
                component,
                refusal_logged: AtomicBool::new(false),
            }),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .build(connector);
        EgressClient { client }
    }
}

/// The pooled client of one component. Cheap to clone.
#[derive(Clone)]
pub struct EgressClient {
    client: Client<Connector, WasiBody>,
}

/// What `WasiHttpHooks::send_request` returns.
pub(super) type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
>;

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
    /// `between_bytes_timeout` of the last (default 600 s each, as `default_send_request`).
    /// `hold` is kept until the response body ends or is dropped.
    ///
    /// # Errors
    /// wasi:http's error codes: `destination-ip-prohibited` for an address of the node's own
    /// networks no entry names, `DNS-error`, `connection-refused`, `connection-timeout`,
    /// `connection-read-timeout`, the `TLS-*` codes, `HTTP-protocol-error`.
    pub(super) async fn send<H: Send + Unpin + 'static>(
        &self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        hold: H,
    ) -> SendResult {
        let options = options.unwrap_or_default();
        let connect_timeout = options.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let first_byte_timeout = options.first_byte_timeout.unwrap_or(DEFAULT_READ_TIMEOUT);
        let between_bytes_timeout = options
            .between_bytes_timeout
            .unwrap_or(DEFAULT_READ_TIMEOUT)
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
        let mut timeout = tokio::time::interval(between_bytes_timeout);
        timeout.reset();
        let response = response.map(|incoming| {
            http_body_util::BodyExt::boxed_unsync(ResponseBody {
                incoming,
                timeout,
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
    _hold: H,
}

impl<H: Unpin> http_body::Body for ResponseBody<H> {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) if e.is_timeout() => {
                Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
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
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let inner = self.inner.clone();
        Box::pin(async move {
            match tokio::time::timeout(timeout, inner.connect(&uri)).await {
                Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
                Ok(Err(e)) => {
                    if let ConnectError::Prohibited { .. } = e {
                        inner.log_refusal(&uri, &e);
                    }
                    Err(e)
                }
                Err(_elapsed) => Err(ConnectError::Timeout(timeout)),
            }
        })
    }
}

impl ConnectorInner {
    async fn connect(&self, uri: &Uri) -> Result<Stream, ConnectError> {
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
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|source| ConnectError::Lookup {
                    host: bare.to_owned(),
                    source,
                })?
                .collect(),
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
            return Ok(Stream::Plain(tcp));
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
        Ok(Stream::Tls(Box::new(tls)))
    }

    fn log_refusal(&self, uri: &Uri, error: &ConnectError) {
        let uri = without_query(uri);
        let why = "outgoing HTTP request refused (destination-ip-prohibited): only an \
                   allowed_hosts entry naming the address or host itself, not a wildcard, \
                   reaches the node's own networks";
        if self.refusal_logged.swap(true, Ordering::Relaxed) {
            tracing::debug!(app = %self.app, component = %self.component, uri, reason = %error, "{why}");
        } else {
            tracing::info!(app = %self.app, component = %self.component, uri, reason = %error, "{why}");
        }
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

/// A connection the pool keeps: plain TCP or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
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
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
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
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
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
        (port, accepted)
    }

    async fn get(client: &EgressClient, uri: &str) -> Result<String, String> {
        let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
        let request = http::Request::get(uri).body(body).unwrap();
        let (response, _io) = client
            .send(request, None, ())
            .await
            .map_err(|e| format!("{e:?}"))?;
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn client(allowed: &str) -> EgressClient {
        let allowed = Arc::new(AllowedHosts::parse(allowed).unwrap());
        Egress::new(&[])
            .unwrap()
            .client(allowed, "app".into(), "component".into())
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
        // A name the resolver reads as a number is judged by the address it resolves to.
        let numeric = get(&star, &format!("http://2130706433:{port}/")).await;
        assert!(numeric.is_err(), "{numeric:?}");
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
}
