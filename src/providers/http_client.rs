//! The http-client provider: which hosts a component may call with
//! `wasi:http/outgoing-handler`, from its http-client links' `allowed_hosts` (default: none,
//! DESIGN.md §5), and the wasi:http hooks that enforce it. A denied host gets the
//! `HTTP-request-denied` error code, never a connection. Allowed requests go out through
//! [`egress`]: the host is resolved by the node, addresses of the node's own networks
//! ([`address`]) get `destination-ip-prohibited` unless an entry names them literally, and
//! connections are pooled per component, with TLS by rustls on the system's roots plus
//! `--ca-file` ([`tls`]). What a component holds is bounded: 32 requests in flight per
//! instance, [`egress::MAX_COMPONENT_SOCKETS`] sockets per component and
//! [`egress::MAX_NODE_SOCKETS`] per node, [`egress::MAX_COMPONENT_LOOKUPS`] name lookups per
//! component and [`egress::MAX_LOOKUPS`] per node (the node's waited for up to the connect
//! timeout), no timeout longer than the node's request timeout.
//!
//! Each request that goes out is a client span `http_client.request` (exported under the
//! method's name, as OpenTelemetry's HTTP conventions name client spans:
//! <https://opentelemetry.io/docs/specs/semconv/http/http-spans/>), a child of the component
//! call, with `http.request.method`, `server.address`, `server.port` and, once the head is in,
//! `http.response.status_code`; a failure or a status of 400 or more is its error. When traces
//! are on, a request whose component set a valid W3C `traceparent` goes out with it and its
//! `tracestate` untouched (a guest's tracing SDK, a stored job's context, a signed request):
//! the server continues the component's trace. Otherwise it carries that span's `traceparent`
//! (and `tracestate` when not empty), replacing what the component set, so the server
//! continues the node's trace. With traces off the component's headers go out as it set them.
//! Logs name a destination by its origin (`scheme://host[:port]`); its path only at DEBUG
//! (never exported: the trace layer takes warnings and errors only).

pub mod address;
pub mod egress;
pub mod tls;

use std::net::IpAddr;
use std::sync::Arc;

use wasmtime_wasi_http::{WasiBody, WasiHttpHooks};

pub use egress::{Egress, EgressClient};

/// One `allowed_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: every host.
    Any,
    /// `host` or `host:port`; `*.domain` when `suffix` (subdomains of `domain`, not itself);
    /// with `scheme` (`https://host`) only that scheme, on its default port unless one is given.
    Host {
        scheme: Option<http::uri::Scheme>,
        name: String,
        suffix: bool,
        port: Option<u16>,
    },
}

/// The hosts a component may send outgoing HTTP requests to. Empty: none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    patterns: Vec<HostPattern>,
}

impl AllowedHosts {
    /// Parses `allowed_hosts`: comma-separated entries, each `*` (any host), `host` (any port,
    /// http or https), `host:port`, `*.domain` (its subdomains) or `*.domain:port`, optionally
    /// behind `http://` or `https://` (then only that scheme, on its default port 80 or 443
    /// unless a port is given); IPv6 addresses in brackets (`[::1]:8080`). Names compare
    /// case-insensitively.
    ///
    /// # Errors
    /// An empty entry or a port that is not a number in 1..=65535; the message names the entry.
    pub fn parse(text: &str) -> Result<AllowedHosts, String> {
        let mut patterns = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                patterns.push(HostPattern::Any);
                continue;
            }
            let (scheme, rest) = if let Some(rest) = entry.strip_prefix("https://") {
                (Some(http::uri::Scheme::HTTPS), rest)
            } else if let Some(rest) = entry.strip_prefix("http://") {
                (Some(http::uri::Scheme::HTTP), rest)
            } else {
                (None, entry)
            };
            let rest = rest.trim_end_matches('/');
            let (host, port) = split_port(rest).ok_or_else(|| {
                format!("{entry:?}: expected host or host:port, with a port in 1..=65535")
            })?;
            let port = port.or(match &scheme {
                Some(s) if *s == http::uri::Scheme::HTTPS => Some(443),
                Some(_) => Some(80),
                None => None,
            });
            let (name, suffix) = match host.strip_prefix("*.") {
                Some(domain) => (domain, true),
                None => (host, false),
            };
            if name.contains('*') {
                return Err(format!(
                    "{entry:?}: expected host, host:port, *.domain or * (a '*' only as the first label)"
                ));
            }
            let name = canonical_host(name).ok_or_else(|| {
                format!(
                    "{entry:?}: {name:?} is neither a host name (letters, digits, '-', '_' and \
                     dots; international names in their xn-- form) nor an IP address"
                )
            })?;
            patterns.push(HostPattern::Host {
                scheme,
                name,
                suffix,
                port,
            });
        }
        Ok(AllowedHosts { patterns })
    }

    /// Joins two allow-lists (a component with several http-client links).
    pub fn extend(&mut self, other: AllowedHosts) {
        self.patterns.extend(other.patterns);
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether a request with `scheme` (http or https) to `host` on `port` is allowed.
    pub fn allows(&self, scheme: &http::uri::Scheme, host: &str, port: u16) -> bool {
        let Some(host) = canonical_request_host(host) else {
            return false;
        };
        self.patterns.iter().any(|p| match p {
            HostPattern::Any => true,
            HostPattern::Host {
                scheme: want_scheme,
                name,
                suffix,
                port: want,
            } => {
                if want_scheme.as_ref().is_some_and(|s| s != scheme) {
                    return false;
                }
                let name_ok = if *suffix {
                    host.strip_suffix(name.as_str())
                        .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.'))
                } else {
                    host == *name
                };
                name_ok && want.is_none_or(|w| w == port)
            }
        })
    }

    /// Whether `uri` (absolute, as the guest built it) is allowed; its port defaults to 443 for
    /// https and 80 otherwise. An authority with user info (`user@host`) is never allowed: the
    /// client would dial the whole authority, not the host checked here.
    pub fn allows_uri(&self, uri: &http::Uri) -> bool {
        let (Some(host), Some(authority)) = (uri.host(), uri.authority()) else {
            return false;
        };
        if authority.as_str().contains('@') {
            return false;
        }
        let scheme = uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP);
        let default = if scheme == http::uri::Scheme::HTTPS {
            443
        } else {
            80
        };
        self.allows(&scheme, host, uri.port_u16().unwrap_or(default))
    }

    /// Whether an entry without a wildcard names `host` or the address `ip` it resolved to, for
    /// a request with `scheme` on `port`: what lets a request reach an address of the node's own
    /// networks ([`address::restriction`]). `*` and `*.domain` never do, so `127.0.0.1:8080`,
    /// `localhost` or `[::1]:9000` must be listed as such.
    pub fn names_literally(
        &self,
        scheme: &http::uri::Scheme,
        host: &str,
        ip: IpAddr,
        port: u16,
    ) -> bool {
        let host = canonical_request_host(host);
        let ip = ip.to_canonical().to_string();
        self.patterns.iter().any(|p| match p {
            HostPattern::Any => false,
            HostPattern::Host {
                scheme: want_scheme,
                name,
                suffix,
                port: want,
            } => {
                !*suffix
                    && want_scheme.as_ref().is_none_or(|s| s == scheme)
                    && want.is_none_or(|w| w == port)
                    && (*name == ip || host.as_ref() == Some(name))
            }
        })
    }
}

impl std::fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.patterns.is_empty() {
            return f.write_str("(none)");
        }
        for (i, p) in self.patterns.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match p {
                HostPattern::Any => f.write_str("*")?,
                HostPattern::Host {
                    scheme,
                    name,
                    suffix,
                    port,
                } => {
                    if let Some(scheme) = scheme {
                        write!(f, "{scheme}://")?;
                    }
                    if *suffix {
                        f.write_str("*.")?;
                    }
                    if name.contains(':') {
                        write!(f, "[{name}]")?;
                    } else {
                        f.write_str(name)?;
                    }
                    if let Some(port) = port {
                        write!(f, ":{port}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// A request's `host` (an IPv6 address in brackets, as `http::Uri::host` gives it) in the form
/// of [`canonical_host`].
fn canonical_request_host(host: &str) -> Option<String> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    canonical_host(bare)
}

/// `host` in the one form entries and requests are compared in: a name lowercased and without
/// a trailing dot (`Example.COM.` → `example.com`), an IPv6 address in its canonical text
/// (`0:0::1` → `::1`). `None` for anything else (spaces, `@`, `?`, empty labels, non-ASCII),
/// which can name no host a request reaches.
fn canonical_host(host: &str) -> Option<String> {
    if host.contains(':') {
        return host
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(|ip| ip.to_string());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    // A DNS label (LDH, plus `_` as in service names): a host name, not a lattice name, so not
    // `crate::name::Name` even though the characters agree today.
    let label_ok = |label: &str| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    };
    name.split('.')
        .all(label_ok)
        .then(|| name.to_ascii_lowercase())
}

/// `host`, `host:port`, `[v6]` or `[v6]:port` → (host, port); `None` for a bad port.
fn split_port(entry: &str) -> Option<(&str, Option<u16>)> {
    let parse = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    if let Some(rest) = entry.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) => Some((host, Some(parse(port)?))),
            None if after.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match entry.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, Some(parse(port)?))),
        // A bare IPv6 address without brackets: no port.
        Some(_) => Some((entry, None)),
        None => Some((entry, None)),
    }
}

/// `uri`'s origin for the log, `scheme://host[:port]` (the port when the URI has one): no user
/// info (`user:pass@`), path or query, which carry credentials and tokens (webhook URLs have
/// them in their paths). The path goes to the log at DEBUG only, which is never exported.
fn origin(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or_default();
    match uri.port_u16() {
        Some(port) => format!("{scheme}://{host}:{port}"),
        None => format!("{scheme}://{host}"),
    }
}

/// Outgoing requests one instance may have in flight at once; past that `handle` returns
/// `connection-limit-reached`, so one request cannot use up the node's sockets.
const MAX_IN_FLIGHT: usize = 32;

/// The wasi:http hooks of one component instance: outgoing requests only to its allowed hosts,
/// through its component's pooled [`EgressClient`].
pub struct OutgoingHttp {
    allowed: Arc<AllowedHosts>,
    client: EgressClient,
    app: Arc<str>,
    component: Arc<str>,
    /// Requests of this instance in flight: each holds a permit until its response body ends.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Whether a denial was logged at WARN already (later ones at DEBUG: a guest looping on a
    /// denied host does not flood the log).
    denial_logged: bool,
}

impl OutgoingHttp {
    /// Hooks allowing `allowed` for component `component` of app `app` (named in denial logs),
    /// sending through `client` (the component's, [`Egress::client`]).
    pub fn new(
        allowed: Arc<AllowedHosts>,
        client: EgressClient,
        app: Arc<str>,
        component: Arc<str>,
    ) -> OutgoingHttp {
        OutgoingHttp {
            allowed,
            client,
            app,
            component,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            denial_logged: false,
        }
    }

    /// For the next request of a reused instance: its first denial is logged at WARN again.
    /// The in-flight budget is the instance's and stays (outgoing requests a guest kept from
    /// an earlier request still count).
    pub fn next_request(&mut self) {
        self.denial_logged = false;
    }

    /// Whether no outgoing request of the instance holds a permit (all responses ended).
    pub fn all_returned(&self) -> bool {
        self.in_flight.available_permits() == MAX_IN_FLIGHT
    }
}

use egress::SendResult;
use tracing::Instrument as _;

/// The client span of `request` (an allowed one, so its URI is absolute, without user info):
/// see the module doc. Neither the path nor the query: they may carry user data.
/// The guest sets the method and the host: an extension method is `_OTHER` (exported as
/// `HTTP`), as OpenTelemetry's HTTP conventions have it, and the host is cut to 255 bytes (a DNS
/// name has at most 253), so a span holds no long string of the guest's.
fn client_span(request: &http::Request<WasiBody>) -> tracing::Span {
    use http::Method;
    let uri = request.uri();
    let known = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];
    let (method, name) = if known.contains(request.method()) {
        (request.method().as_str(), request.method().as_str())
    } else {
        ("_OTHER", "HTTP")
    };
    let host = uri.host().unwrap_or_default();
    let host = host.get(..255).unwrap_or(host);
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    });
    // At DEBUG, as the component call: free with traces off at the default log level.
    tracing::debug_span!(
        "http_client.request",
        otel.name = name,
        otel.kind = "client",
        http.request.method = method,
        server.address = host,
        server.port = port,
        http.response.status_code = tracing::field::Empty,
    )
}

/// The W3C trace context an outgoing request carries: a valid `traceparent` the component set
/// is left as it is, with its `tracestate` (a guest's tracing SDK, a stored job's context, a
/// signed request: the server continues the component's trace, and the node's client span
/// stays a child of the component call); else `span`'s context replaces whatever the
/// component set. An empty `tracestate` is never sent. No-op when traces are off.
fn carry_trace(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if !crate::admin::telemetry::traces_on() {
        return;
    }
    if !has_valid_traceparent(headers) {
        crate::admin::telemetry::inject_http(span, headers);
    }
    let tracestate = http::header::HeaderName::from_static("tracestate");
    let empty = headers
        .get_all(&tracestate)
        .iter()
        .all(|value| value.as_bytes().iter().all(u8::is_ascii_whitespace));
    if empty {
        headers.remove(&tracestate);
    }
}

/// Whether `headers` hold one `traceparent` that W3C Trace Context accepts
/// (<https://www.w3.org/TR/trace-context/#traceparent-header>): version `00` (or a later one,
/// read as `00`), a non-zero trace id and parent id.
fn has_valid_traceparent(headers: &http::HeaderMap) -> bool {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    if headers.get_all("traceparent").iter().count() != 1 {
        return false;
    }
    // Against an empty context: `extract` falls back to the current one (the component call's).
    let context = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract_with_context(
            &opentelemetry::Context::new(),
            &opentelemetry_http::HeaderExtractor(headers),
        );
    context.span().span_context().is_valid()
}

impl WasiHttpHooks for OutgoingHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        if !self.allowed.allows_uri(request.uri()) {
            let uri = origin(request.uri());
            let path = request.uri().path();
            let why = "outgoing HTTP request denied: its host is not in the allowed_hosts of an http-client link";
            if !std::mem::replace(&mut self.denial_logged, true) {
                tracing::warn!(app = %self.app, component = %self.component, uri, allowed_hosts = %self.allowed, "{why}");
            }
            tracing::debug!(app = %self.app, component = %self.component, uri, path, "{why}");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::warn!(
                app = %self.app,
                component = %self.component,
                "outgoing HTTP request refused: {MAX_IN_FLIGHT} of this instance's requests are in flight"
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::ConnectionLimitReached) });
        };
        tracing::debug!(app = %self.app, component = %self.component, uri = origin(request.uri()), path = request.uri().path(), "outgoing HTTP request");
        let span = client_span(&request);
        let mut request = request;
        carry_trace(&span, request.headers_mut());
        let client = self.client.clone();
        let within = span.clone();
        Box::new(
            async move {
                let result = client.send(request, options, permit).await;
                match &result {
                    Ok((response, _)) => {
                        let status = response.status();
                        span.record("http.response.status_code", status.as_u16());
                        if status.as_u16() >= 400 {
                            crate::admin::telemetry::record_error(&span, &status);
                        }
                    }
                    Err(e) => crate::admin::telemetry::record_error(&span, e),
                }
                result
            }
            .instrument(within),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_match_hosts_ports_and_subdomains() {
        let allowed = AllowedHosts::parse(
            "127.0.0.1:8080, Example.com, *.svc.local, [::1]:9000, https://api.test/",
        )
        .unwrap();
        let http = http::uri::Scheme::HTTP;
        assert!(allowed.allows(&http, "127.0.0.1", 8080));
        assert!(!allowed.allows(&http, "127.0.0.1", 8081));
        assert!(allowed.allows(&http, "example.com", 443));
        assert!(allowed.allows(&http, "EXAMPLE.com", 80));
        assert!(!allowed.allows(&http, "www.example.com", 443));
        assert!(allowed.allows(&http, "a.svc.local", 1));
        assert!(!allowed.allows(&http, "svc.local", 1));
        assert!(!allowed.allows(&http, "evilsvc.local", 1));
        assert!(allowed.allows(&http, "[::1]", 9000));
        let uri = |u: &str| u.parse::<http::Uri>().unwrap();
        assert!(allowed.allows_uri(&uri("https://example.com/x")));
        assert!(allowed.allows_uri(&uri("http://127.0.0.1:8080/")));
        assert!(!allowed.allows_uri(&uri("http://127.0.0.1/")));
        assert!(allowed.allows_uri(&uri("https://api.test/v1")));
        assert!(!allowed.allows_uri(&uri("http://api.test/v1")));
        assert!(!allowed.allows_uri(&uri("https://api.test:8443/v1")));
        assert!(!allowed.allows_uri(&uri("http://user@127.0.0.1:8080/")));
        assert_eq!(
            allowed.to_string(),
            "127.0.0.1:8080,example.com,*.svc.local,[::1]:9000,https://api.test:443"
        );
    }

    #[tokio::test]
    async fn an_instance_has_at_most_32_requests_in_flight() {
        use http_body_util::{BodyExt, Empty};

        // A loopback port nothing listens on: a request that goes out is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let uri = format!("http://127.0.0.1:{port}/");
        let allowed = Arc::new(AllowedHosts::parse(&format!("127.0.0.1:{port}")).unwrap());
        let client = Egress::new(&[]).unwrap().client(
            allowed.clone(),
            "app".into(),
            "c".into(),
            std::time::Duration::from_secs(30),
        );
        let mut hooks = OutgoingHttp::new(allowed, client, "app".into(), "component".into());
        let mut send = |uri: &str| {
            let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
            let request = http::Request::get(uri).body(body).unwrap();
            Box::into_pin(hooks.send_request(request, None, Box::new(async { Ok(()) })))
        };
        async fn outcome(
            fut: std::pin::Pin<Box<dyn Future<Output = SendResult> + Send>>,
        ) -> Option<String> {
            fut.await.err().map(|e| e.to_string())
        }
        // Futures not yet polled hold their permits, as requests under way do.
        let in_flight: Vec<_> = (0..MAX_IN_FLIGHT).map(|_| send(&uri)).collect();
        assert_eq!(
            outcome(send(&uri)).await.as_deref(),
            Some("connection limit reached")
        );
        // A denied host is denied, whatever the limit.
        assert_eq!(
            outcome(send(&format!("http://127.0.0.2:{port}/")))
                .await
                .as_deref(),
            Some("HTTP request denied")
        );
        // Once they end, a request goes out again (and is refused).
        drop(in_flight);
        assert_ne!(
            outcome(send(&uri)).await.as_deref(),
            Some("connection limit reached"),
            "a request ended gives its place back"
        );
    }

    /// Sends one request with `headers` set by "the component", inside a `component_call`
    /// span with traces on, and returns the trace headers the server got (name, value) and
    /// that span.
    async fn trace_headers_sent(
        headers: &[(&str, &str)],
    ) -> (Vec<(String, String)>, tracing::Span) {
        use http_body_util::{BodyExt, Empty};
        use opentelemetry::trace::TracerProvider as _;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        use tracing_subscriber::layer::SubscriberExt as _;

        // Traces on, as `telemetry::init` turns them on, for this thread.
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _default = tracing::subscriber::set_default(subscriber);
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        crate::admin::telemetry::turn_traces_on_for_tests();

        // An upstream that hands over the head of the one request it answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (head_tx, head_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut chunk = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the request ended before its head did");
                head.extend_from_slice(&chunk[..n]);
            }
            let _ = head_tx.send(String::from_utf8_lossy(&head).into_owned());
            let answer = "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n";
            stream.write_all(answer.as_bytes()).await.unwrap();
        });

        let allowed = Arc::new(AllowedHosts::parse(&format!("127.0.0.1:{port}")).unwrap());
        let client = Egress::new(&[]).unwrap().client(
            allowed.clone(),
            "app".into(),
            "c".into(),
            std::time::Duration::from_secs(30),
        );
        let mut hooks = OutgoingHttp::new(allowed, client, "app".into(), "c".into());
        let body = Empty::new().map_err(|never| match never {}).boxed_unsync();
        let mut request = http::Request::get(format!("http://127.0.0.1:{port}/x"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(body).unwrap();
        let call = tracing::info_span!("component_call");
        let sent = {
            let _entered = call.enter();
            Box::into_pin(hooks.send_request(request, None, Box::new(async { Ok(()) })))
        };
        let (response, _) = sent.await.unwrap();
        assert_eq!(response.status(), 204);

        let head = head_rx.await.unwrap();
        let sent = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(name, _)| {
                name.eq_ignore_ascii_case("traceparent") || name.eq_ignore_ascii_case("tracestate")
            })
            .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        (sent, call)
    }

    #[tokio::test]
    async fn a_valid_traceparent_of_the_component_goes_out_untouched() {
        let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let (sent, _) =
            trace_headers_sent(&[("traceparent", theirs), ("tracestate", "vendor=abc")]).await;
        assert_eq!(
            sent,
            vec![
                ("traceparent".to_owned(), theirs.to_owned()),
                ("tracestate".to_owned(), "vendor=abc".to_owned())
            ]
        );
    }

    /// Asserts that `sent` is one `traceparent`, the client span's in `call`'s trace.
    fn assert_the_client_spans_own(sent: &[(String, String)], call: &tracing::Span) {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        assert_eq!(
            sent.len(),
            1,
            "one traceparent, no empty tracestate: {sent:?}"
        );
        let (name, value) = &sent[0];
        assert_eq!(name, "traceparent");
        let parts: Vec<&str> = value.split('-').collect();
        let context = call.context();
        let trace_id = context.span().span_context().trace_id().to_string();
        assert_eq!(parts[1], trace_id, "the component call's trace: {sent:?}");
        let call_id = context.span().span_context().span_id().to_string();
        assert_ne!(
            parts[2], call_id,
            "the client span's own id, not its parent's: {sent:?}"
        );
    }

    #[tokio::test]
    async fn without_a_traceparent_the_client_span_sends_its_own_and_no_empty_tracestate() {
        let (sent, call) = trace_headers_sent(&[]).await;
        assert_the_client_spans_own(&sent, &call);
    }

    #[tokio::test]
    async fn an_invalid_traceparent_of_the_component_is_replaced() {
        // An all-zero trace id is invalid; an empty tracestate is never sent.
        let zeros = "00-00000000000000000000000000000000-b7ad6b7169203331-01";
        let (sent, call) = trace_headers_sent(&[("traceparent", zeros), ("tracestate", "")]).await;
        assert_the_client_spans_own(&sent, &call);
    }

    #[test]
    fn only_entries_without_a_wildcard_name_addresses_literally() {
        let http = http::uri::Scheme::HTTP;
        let https = http::uri::Scheme::HTTPS;
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        let allowed = AllowedHosts::parse(
            "*, *.internal, 127.0.0.1:8080, localhost, [::1]:9000, https://10.0.0.5",
        )
        .unwrap();
        // The address, on its port.
        assert!(allowed.names_literally(&http, "127.0.0.1", lo, 8080));
        assert!(!allowed.names_literally(&http, "127.0.0.1", lo, 8081));
        // Another name for it, on the port the entry names: the entry names the address.
        assert!(allowed.names_literally(&http, "api.test", lo, 8080));
        // The host literally, any port (its entry has none).
        assert!(allowed.names_literally(&http, "LocalHost.", lo, 1));
        assert!(allowed.names_literally(&http, "localhost", v6, 1));
        // IPv6 in its canonical form, with or without brackets; IPv4-mapped as IPv4.
        assert!(allowed.names_literally(&http, "[::1]", v6, 9000));
        assert!(allowed.names_literally(&http, "[0::1]", v6, 9000));
        assert!(!allowed.names_literally(&http, "[::1]", v6, 9001));
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(allowed.names_literally(&http, "x", mapped, 8080));
        // A scheme-bound entry: only that scheme and its default port.
        let private: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(allowed.names_literally(&https, "10.0.0.5", private, 443));
        assert!(!allowed.names_literally(&http, "10.0.0.5", private, 443));
        // Wildcards never do.
        assert!(!allowed.names_literally(&http, "db.internal", private, 5432));
        let star = AllowedHosts::parse("*, *.example.com").unwrap();
        assert!(!star.names_literally(&http, "localhost", lo, 80));
        assert!(!star.names_literally(&http, "a.example.com", lo, 80));
    }

    #[test]
    fn logged_uris_are_origins_without_credentials_path_or_query() {
        let uri = "https://user:pass@api.test:8443/hooks/T0KEN/x?token=secret"
            .parse()
            .unwrap();
        assert_eq!(origin(&uri), "https://api.test:8443");
        let uri = "http://me@[::1]/a".parse().unwrap();
        assert_eq!(origin(&uri), "http://[::1]");
    }

    #[test]
    fn nothing_is_allowed_by_default_and_star_allows_all() {
        let none = AllowedHosts::default();
        assert!(!none.allows_uri(&"https://example.com/".parse().unwrap()));
        assert!(AllowedHosts::parse("").unwrap().is_empty());
        assert!(
            AllowedHosts::parse("*")
                .unwrap()
                .allows(&http::uri::Scheme::HTTPS, "anything", 1)
        );
    }

    #[test]
    fn names_and_addresses_compare_in_one_canonical_form() {
        let allowed = AllowedHosts::parse("api.test., [0:0::1]:8080, *.Svc.Local").unwrap();
        let http = http::uri::Scheme::HTTP;
        assert!(allowed.allows(&http, "api.test", 80));
        assert!(allowed.allows(&http, "API.test.", 80));
        assert!(allowed.allows(&http, "[::1]", 8080));
        assert!(allowed.allows(&http, "[0000::0001]", 8080));
        assert!(allowed.allows(&http, "a.svc.local.", 1));
        assert!(!allowed.allows(&http, "api..test", 80));
        assert!(!allowed.allows(&http, "[::2]", 8080));
        assert_eq!(allowed.to_string(), "api.test,[::1]:8080,*.svc.local");
    }

    #[test]
    fn bad_entries_are_refused_with_the_entry_named() {
        for bad in [
            "a b.com",
            "user@host",
            "x?y",
            ".example.com",
            "a..b",
            "bücher.de",
            "[::g]",
        ] {
            let err = AllowedHosts::parse(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
        for bad in ["host:0", "host:99999", "host:x", "a*.b", "*.", "[::1"] {
            let err = AllowedHosts::parse(bad).unwrap_err();
            assert!(
                err.contains(bad.trim_start_matches('*').trim_start_matches('.'))
                    || err.contains(bad),
                "{bad}: {err}"
            );
        }
    }
}
