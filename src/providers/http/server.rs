//! The HTTP listeners (hyper, HTTP/1.1 and h2c): the shared ingress plus one per app `address`,
//! each request routed by the current [`RoutingTable`] to a local component, or over the
//! lattice to a replica elsewhere. The shared ingress is bound before it accepts
//! ([`HttpServer::bind`]): while the node starts, a client's connection waits in the listen
//! backlog and is answered once every route on the ingress leads to a replica, instead of
//! being refused or told 404.
//!
//! Each request is one `http_request` span (OpenTelemetry kind `server`, continuing the
//! client's W3C `traceparent`), with a `route` child for the route lookup, and is counted in
//! the node's metrics through handles made when the table is installed ([`HttpServer::apply`]):
//! recording is then an atomic add and one histogram observation, no map lookup. A request
//! whose client goes away before its response head (hyper then drops its future) counts
//! under status class `cancelled`, and its span ends with an error status.
//!
//! With traces on, the component sees the `http_request` span as its caller: the request's
//! `traceparent` (and `tracestate`) are replaced by the span's context. With traces off they
//! reach it as the client sent them (PROTOCOL.md §Traces).

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hyper::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use super::authority;
use super::router::Router;
use crate::admin::metrics::{ComponentMetrics, UNROUTED, Unavailable};
use crate::admin::telemetry;
use crate::host::{HttpComponent, ResponseBody, text_response};
use crate::lattice::rpc::{self, Rpc};

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long open connections may take to finish their requests when a listener stops.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Routes plus the local components they lead to, swapped whole on every deploy.
#[derive(Default)]
pub struct RoutingTable {
    /// The route table.
    pub router: Router,
    /// Local components by (app, component).
    pub components: HashMap<(Arc<str>, Arc<str>), Arc<HttpComponent>>,
    /// Where requests for components with no local replica go.
    pub remote: Option<Arc<Rpc>>,
}

/// Response header carrying the request's id (the `request_id` of its log lines and spans)
/// when traces are on: its W3C trace id, so that a client can find its request's trace. With
/// traces off the id is a number counted per process, which stays in the log (a client would
/// learn from it how many requests the node served).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The table requests are served by: the routing table and, per route, what it leads to.
struct Installed {
    table: RoutingTable,
    /// Indexed by [`super::RouteId`].
    targets: Vec<Target>,
    /// Requests no route took.
    unrouted: ComponentMetrics,
}

/// What a route leads to, looked up once at install time.
struct Target {
    /// Its component's replica here, if any.
    local: Option<Arc<HttpComponent>>,
    /// Its component's metric handles.
    metrics: ComponentMetrics,
}

impl Installed {
    /// Finds every route's local component and makes its metric handles (a lock of the
    /// registry per route, at install time only).
    fn new(table: RoutingTable) -> Installed {
        let metrics = crate::admin::metrics::get();
        let targets = table
            .router
            .routes()
            .iter()
            .map(|route| {
                let key = (route.target.app.clone(), route.target.component.clone());
                Target {
                    local: table.components.get(&key).cloned(),
                    metrics: metrics.component(&route.target.app, &route.target.component),
                }
            })
            .collect();
        Installed {
            targets,
            unrouted: metrics.component(UNROUTED, UNROUTED),
            table,
        }
    }
}

/// A listener address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

struct Listener {
    stop: CancellationToken,
    /// Fires once the listening socket is closed (its address can be bound again).
    released: tokio::sync::oneshot::Receiver<()>,
    task: JoinHandle<()>,
}

/// Where the shared ingress stands ([`HttpServer::open_if_routed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// It accepts.
    Open,
    /// Closed: a route on it leads to no replica yet (here or known elsewhere).
    Unrouted,
    /// Closed: the table installed has no route on it.
    NoRoute,
}

/// The HTTP server provider: owns the listeners and the current routing table.
pub struct HttpServer {
    ingress: SocketAddr,
    table: Arc<RwLock<Arc<Installed>>>,
    listeners: Mutex<BTreeMap<SocketAddr, Listener>>,
    /// Whether the ingress accepts connections yet ([`HttpServer::open`]); until then they
    /// wait in its listen backlog.
    opened: tokio::sync::watch::Sender<bool>,
}

impl HttpServer {
    /// Binds the shared ingress on `ingress` (port 0 picks a free port) without accepting on
    /// it yet: connections made meanwhile wait in the socket's listen backlog (the kernel
    /// completes their handshakes), not refused, until every ingress route of the table
    /// installed leads to a replica ([`HttpServer::open_if_routed`], checked at each
    /// [`HttpServer::apply`]) or [`HttpServer::open`], whichever is first. From then on a request no route takes gets 404.
    ///
    /// # Errors
    /// [`BindError`] when the address cannot be bound.
    pub async fn bind(ingress: SocketAddr) -> Result<HttpServer, BindError> {
        let listener = TcpListener::bind(ingress)
            .await
            .map_err(|source| BindError {
                addr: ingress,
                source,
            })?;
        let ingress = listener.local_addr().map_err(|source| BindError {
            addr: ingress,
            source,
        })?;
        let server = HttpServer {
            ingress,
            table: Arc::new(RwLock::new(Arc::new(Installed::new(
                RoutingTable::default(),
            )))),
            listeners: Mutex::new(BTreeMap::new()),
            opened: tokio::sync::watch::Sender::new(false),
        };
        server.spawn_listener(ingress, listener, Some(server.opened.subscribe()));
        tracing::info!(addr = %ingress, "http ingress bound");
        Ok(server)
    }

    /// Binds the shared ingress on `ingress` and accepts on it at once ([`HttpServer::bind`]
    /// then [`HttpServer::open`]).
    ///
    /// # Errors
    /// [`BindError`] when the address cannot be bound.
    pub async fn start(ingress: SocketAddr) -> Result<HttpServer, BindError> {
        let server = HttpServer::bind(ingress).await?;
        server.open();
        Ok(server)
    }

    /// Starts accepting on the shared ingress (the connections waiting in its backlog first).
    /// Idempotent.
    pub fn open(&self) {
        if !self.opened.send_replace(true) {
            tracing::info!(addr = %self.ingress, "http ingress listening");
        }
    }

    /// Opens the shared ingress ([`HttpServer::open`]) if every route on it in the table now
    /// installed leads somewhere: to a replica here, or to one elsewhere that the lattice's
    /// membership knows of ([`Rpc::replicas_elsewhere`]). A table with no ingress route does
    /// not open it. Cheap once open; before, one look at the table (and at membership per
    /// route with no replica here).
    pub fn open_if_routed(&self) -> Ingress {
        if *self.opened.borrow() {
            return Ingress::Open;
        }
        let installed = self.table.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut ingress_routes = 0usize;
        for (route, target) in installed
            .table
            .router
            .routes()
            .iter()
            .zip(&installed.targets)
        {
            if route.key.listener != self.ingress {
                continue;
            }
            ingress_routes += 1;
            let elsewhere = || {
                installed.table.remote.as_ref().is_some_and(|rpc| {
                    !rpc.replicas_elsewhere(&route.target.app, &route.target.component)
                        .is_empty()
                })
            };
            if target.local.is_none() && !elsewhere() {
                return Ingress::Unrouted;
            }
        }
        if ingress_routes == 0 {
            return Ingress::NoRoute;
        }
        self.open();
        Ingress::Open
    }

    /// The bound address of the shared ingress.
    pub fn ingress_addr(&self) -> SocketAddr {
        self.ingress
    }

    /// Installs `table`: binds the listeners it needs that are not open yet, swaps the table in
    /// (requests in flight finish on the components they started with), and stops listeners no
    /// route uses any more (never the ingress).
    ///
    /// # Errors
    /// [`BindError`] for a new listener; then nothing changed.
    pub async fn apply(&self, table: RoutingTable) -> Result<(), BindError> {
        let wanted = table.router.listeners();
        let missing: Vec<SocketAddr> = {
            let open = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            wanted
                .iter()
                .filter(|a| !open.contains_key(a))
                .copied()
                .collect()
        };
        let mut bound = Vec::new();
        for addr in missing {
            match TcpListener::bind(addr).await {
                Ok(listener) => bound.push((addr, listener)),
                Err(source) => return Err(BindError { addr, source }),
            }
        }
        for (addr, listener) in bound {
            tracing::info!(%addr, "http listener for an app address opened");
            self.spawn_listener(addr, listener, None);
        }
        let installed = Arc::new(Installed::new(table));
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = installed;
        self.open_if_routed();
        let unused: Vec<Listener> = {
            let mut open = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
            let stale: Vec<SocketAddr> = open
                .keys()
                .filter(|a| **a != self.ingress && !wanted.contains(a))
                .copied()
                .collect();
            stale.iter().filter_map(|a| open.remove(a)).collect()
        };
        for listener in unused {
            listener.stop.cancel();
            // The socket closes right away; its connections drain in the background.
            let _ = listener.released.await;
        }
        Ok(())
    }

    /// Stops accepting on every listener and waits up to [`DRAIN_TIMEOUT`] for open
    /// connections to finish their requests.
    pub async fn shutdown(&self) {
        let listeners: Vec<Listener> =
            std::mem::take(&mut *self.listeners.lock().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .collect();
        for listener in &listeners {
            listener.stop.cancel();
        }
        for listener in listeners {
            let _ = listener.task.await;
        }
    }

    /// Serves `listener` on a task of its own; with `opened`, only once it says so.
    fn spawn_listener(
        &self,
        addr: SocketAddr,
        listener: TcpListener,
        opened: Option<tokio::sync::watch::Receiver<bool>>,
    ) {
        let stop = CancellationToken::new();
        let (release, released) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve_listener(
            listener,
            addr,
            self.table.clone(),
            (opened, stop.clone()),
            release,
        ));
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                addr,
                Listener {
                    stop,
                    released,
                    task,
                },
            );
    }
}

impl Drop for HttpServer {
    /// Stops every listener still running (a node whose start failed drops its server without
    /// [`HttpServer::shutdown`]): an ingress not open yet closes without accepting.
    fn drop(&mut self) {
        for listener in self
            .listeners
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            listener.stop.cancel();
        }
    }
}

/// Accepts on `listener` (once `opened`, if given, says so) until `stop`, then drains.
async fn serve_listener(
    listener: TcpListener,
    addr: SocketAddr,
    table: Arc<RwLock<Arc<Installed>>>,
    (opened, stop): (
        Option<tokio::sync::watch::Receiver<bool>>,
        CancellationToken,
    ),
    release: tokio::sync::oneshot::Sender<()>,
) {
    if let Some(mut opened) = opened {
        let open = tokio::select! {
            biased;
            () = stop.cancelled() => false,
            // An error: the server was dropped before it opened (the node's start failed).
            opened = opened.wait_for(|open| *open) => opened.is_ok(),
        };
        if !open {
            // Never accepted: closing the socket resets the connections waiting in its backlog
            // (their clients see a reset, not a 404 from an empty table).
            drop(listener);
            let _ = release.send(());
            tracing::debug!(%addr, "http ingress closed before it opened");
            return;
        }
    }
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        tokio::select! {
            // A stop wins over connections still queued: none is accepted once stopping.
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    let table = table.clone();
                    let service = hyper::service::service_fn(move |request| {
                        let table = table.read().unwrap_or_else(|p| p.into_inner()).clone();
                        async move { Ok::<_, Infallible>(route_request(&table, addr, request).await) }
                    });
                    let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
                    connections.spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!(error = %e, "http connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%addr, error = %e, "accepting an http connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = release.send(());
    tokio::select! {
        () = graceful.shutdown() => tracing::debug!(%addr, "http listener drained"),
        () = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!(%addr, open = connections.len(), "http connections still open after {DRAIN_TIMEOUT:?}; closing them");
            connections.abort_all();
        }
    }
}

/// Routes one request: 400 for a bad `Host`, 404 when no route matches, else the answer of
/// the route's component, here or on a replica elsewhere.
async fn route_request(
    installed: &Installed,
    listener: SocketAddr,
    request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let started = Instant::now();
    let traces = telemetry::traces_on();
    // With traces off: the id is known now, and the log gets no `otel.kind` (nothing reads it).
    let span = tracing::info_span!(
        "http_request",
        otel.kind = traces.then_some("server"),
        http.request.method = %request.method(),
        url.path = request.uri().path(),
        http.route = tracing::field::Empty,
        app = tracing::field::Empty,
        component = tracing::field::Empty,
        request_id = (!traces).then(telemetry::next_request_id),
        http.response.status_code = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    let mut trace_id = None;
    if traces {
        telemetry::continue_http(&span, request.headers());
        trace_id = telemetry::trace_id(&span);
        match trace_id {
            Some(trace) => span.record("request_id", tracing::field::display(trace)),
            // A span the trace layer does not record: a number, as with traces off.
            None => span.record("request_id", telemetry::next_request_id()),
        };
    }
    // Until the response head, a dropped future (the client went away) counts as cancelled.
    let mut pending = Pending {
        metrics: Some(&installed.unrouted),
        span: &span,
    };
    let (mut response, routed) = answer(installed, listener, request, &mut pending)
        .instrument(span.clone())
        .await;
    pending.metrics = None;
    let status = response.status().as_u16();
    span.record("http.response.status_code", i64::from(status));
    if status >= 500 {
        telemetry::record_error(&span, &format_args!("HTTP {status}"));
    }
    match routed {
        Some((metrics, forwarded)) => {
            metrics.request(status, started.elapsed(), forwarded);
            span.in_scope(|| tracing::debug!("served"));
        }
        None => installed.unrouted.request(status, started.elapsed(), false),
    }
    if let Some(trace) = trace_id
        && let Ok(value) = hyper::header::HeaderValue::try_from(trace.to_string())
    {
        // One the component set itself stands.
        response
            .headers_mut()
            .entry(REQUEST_ID_HEADER)
            .or_insert(value);
    }
    response
}

/// A request not answered yet: dropped so (hyper drops the request's future when its client
/// closes or resets the connection, or when the listener's drain runs out), it counts under
/// status class `cancelled` in the handles of the route it took (the unrouted ones before
/// routing) and its span gets an error status.
struct Pending<'a> {
    /// `None` once answered.
    metrics: Option<&'a ComponentMetrics>,
    span: &'a tracing::Span,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(metrics) = self.metrics.take() {
            metrics.cancelled();
            telemetry::record_error(self.span, &"the client went away before the response head");
            self.span
                .in_scope(|| tracing::debug!("request cancelled by its client"));
        }
    }
}

/// The answer to `request` (inside the request's span) and, when a route took it, the handles
/// it counts in and whether a replica elsewhere served it.
async fn answer<'i>(
    installed: &'i Installed,
    listener: SocketAddr,
    mut request: hyper::Request<Incoming>,
    pending: &mut Pending<'i>,
) -> (
    hyper::Response<ResponseBody>,
    Option<(&'i ComponentMetrics, bool)>,
) {
    let table = &installed.table;
    let host = match authority::request_host(request.version(), request.uri(), request.headers()) {
        Ok(host) => host,
        Err(e) => {
            tracing::debug!(error = %e, "bad host");
            let response = text_response(StatusCode::BAD_REQUEST, format!("{e}\n"));
            return (response, None);
        }
    };
    let path = request.uri().path();
    let found = tracing::debug_span!(
        "route",
        otel.kind = telemetry::traces_on().then_some("internal")
    )
    .in_scope(|| table.router.lookup_id(listener, host.as_deref(), path));
    let Some((id, route)) = found else {
        tracing::debug!("no route");
        let response = text_response(
            StatusCode::NOT_FOUND,
            format!("no route for {}{path}\n", host.as_deref().unwrap_or("")),
        );
        return (response, None);
    };
    let span = tracing::Span::current();
    // At once: the log formats the fields of each record call again.
    tracing::record_all!(
        span,
        http.route = route.key.path.as_str(),
        app = &*route.target.app,
        component = &*route.target.component
    );
    let Target { local, metrics } = &installed.targets[id];
    pending.metrics = Some(metrics);
    let (app, component) = (&route.target.app, &route.target.component);
    let resend = route.target.resend;
    // With traces on, the component's caller is this span, as behind a replica elsewhere it is
    // that node's `rpc_invocation`; the client's context is kept for a request the local
    // replica has no room for, which goes elsewhere as it came.
    let client_context = match local {
        Some(_) => telemetry::replace_http(&span, request.headers_mut()),
        None => telemetry::Replaced::default(),
    };
    // A local replica first; else one elsewhere in the lattice.
    let (response, forwarded) = match (local, &table.remote) {
        (Some(local), remote) => match local.try_handle(request, Scheme::Http).await {
            Ok(response) => (response, false),
            // No room here: a replica elsewhere, if one is idle, before 503.
            Err(mut refused) => match remote {
                Some(rpc) => {
                    client_context.restore(refused.request.headers_mut());
                    rpc.overflow(app, component, resend, metrics, refused).await
                }
                None => {
                    crate::admin::metrics::get().unavailable(rpc::unavailable_of(&refused.reason));
                    (refused.response(app, component), false)
                }
            },
        },
        (None, Some(rpc)) => rpc.forward(app, component, resend, metrics, request).await,
        (None, None) => {
            crate::admin::metrics::get().unavailable(Unavailable::NoReplica);
            let response = text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("component {component} of app {app} runs on no replica here\n"),
            );
            (response, false)
        }
    };
    (response, Some((metrics, forwarded)))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Sends one request on a connection made while the ingress is bound but not open, drops
    /// the server (as a node whose start failed does), and checks that the client read no
    /// answer: the end of the stream or a reset.
    async fn no_answer_after_drop(stop_first: bool) {
        let server = HttpServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.ingress_addr();
        let client = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")?;
            let mut read = Vec::new();
            stream.read_to_end(&mut read).map(|_| read)
        });
        // The connection is in the backlog (the kernel completed its handshake).
        tokio::time::sleep(Duration::from_millis(100)).await;
        if stop_first {
            server.shutdown().await;
        }
        drop(server);
        match client.await.unwrap() {
            Ok(read) => assert!(
                read.is_empty(),
                "got an answer: {}",
                String::from_utf8_lossy(&read)
            ),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }

    #[tokio::test]
    async fn a_server_dropped_before_it_opened_answers_no_queued_connection() {
        no_answer_after_drop(false).await;
    }

    #[tokio::test]
    async fn a_server_shut_down_before_it_opened_answers_no_queued_connection() {
        no_answer_after_drop(true).await;
    }
}
