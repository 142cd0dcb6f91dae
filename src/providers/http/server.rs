//! The HTTP listeners (hyper, HTTP/1.1 and h2c): the shared ingress plus one per app `address`,
//! each request routed by the current [`RoutingTable`] to a local component, or over the
//! lattice to a replica elsewhere.
//!
//! Each request is one `http_request` span (OpenTelemetry kind `server`, continuing the
//! client's W3C `traceparent`), with a `route` child for the route lookup, and is counted in
//! the node's metrics through handles made when the table is installed ([`HttpServer::apply`]):
//! recording is then an atomic add and one histogram observation, no map lookup.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::admin::metrics::{ComponentMetrics, Unavailable};
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

/// The app and component label of requests no route took (400 for a bad host, 404): one
/// bounded series, no host or path in it.
pub const UNROUTED: &str = "_none";

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

/// The HTTP server provider: owns the listeners and the current routing table.
pub struct HttpServer {
    ingress: SocketAddr,
    table: Arc<RwLock<Arc<Installed>>>,
    listeners: Mutex<BTreeMap<SocketAddr, Listener>>,
}

impl HttpServer {
    /// Binds the shared ingress on `ingress` (port 0 picks a free port) and starts serving it;
    /// every request gets 404 until [`HttpServer::apply`] installs routes.
    ///
    /// # Errors
    /// [`BindError`] when the address cannot be bound.
    pub async fn start(ingress: SocketAddr) -> Result<HttpServer, BindError> {
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
        };
        server.spawn_listener(ingress, listener);
        tracing::info!(addr = %ingress, "http ingress listening");
        Ok(server)
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
            self.spawn_listener(addr, listener);
        }
        let installed = Arc::new(Installed::new(table));
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = installed;
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

    fn spawn_listener(&self, addr: SocketAddr, listener: TcpListener) {
        let stop = CancellationToken::new();
        let (release, released) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(serve_listener(
            listener,
            addr,
            self.table.clone(),
            stop.clone(),
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

async fn serve_listener(
    listener: TcpListener,
    addr: SocketAddr,
    table: Arc<RwLock<Arc<Installed>>>,
    stop: CancellationToken,
    release: tokio::sync::oneshot::Sender<()>,
) {
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
            () = stop.cancelled() => break,
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

/// Requests this process has taken, for request ids when traces are off.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Routes one request: 400 for a bad `Host`, 404 when no route matches, else the answer of
/// the route's component, here or on a replica elsewhere.
async fn route_request(
    installed: &Installed,
    listener: SocketAddr,
    request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let started = Instant::now();
    let span = tracing::info_span!(
        "http_request",
        otel.kind = "server",
        http.request.method = %request.method(),
        url.path = request.uri().path(),
        http.route = tracing::field::Empty,
        app = tracing::field::Empty,
        component = tracing::field::Empty,
        request_id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    telemetry::continue_http(&span, request.headers());
    let request_id = match telemetry::trace_id(&span) {
        Some(trace) => RequestId::Trace(trace),
        None => RequestId::Seq(REQUESTS.fetch_add(1, Ordering::Relaxed) + 1),
    };
    span.record("request_id", tracing::field::display(&request_id));
    let (mut response, routed) = answer(installed, listener, request)
        .instrument(span.clone())
        .await;
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
    if let RequestId::Trace(trace) = request_id
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

/// The id of one request (see [`REQUEST_ID_HEADER`]).
enum RequestId {
    /// Its trace's id.
    Trace(opentelemetry::trace::TraceId),
    /// Its number among this process's requests, from 1.
    Seq(u64),
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RequestId::Trace(trace) => write!(f, "{trace}"),
            RequestId::Seq(n) => write!(f, "{n}"),
        }
    }
}

/// The answer to `request` (inside the request's span) and, when a route took it, the handles
/// it counts in and whether a replica elsewhere served it.
async fn answer(
    installed: &Installed,
    listener: SocketAddr,
    request: hyper::Request<Incoming>,
) -> (
    hyper::Response<ResponseBody>,
    Option<(&ComponentMetrics, bool)>,
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
    let found = tracing::debug_span!("route", otel.kind = "internal")
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
    span.record("http.route", route.key.path.as_str());
    span.record("app", &*route.target.app);
    span.record("component", &*route.target.component);
    let Target { local, metrics } = &installed.targets[id];
    let (app, component) = (&route.target.app, &route.target.component);
    let resend = route.target.resend;
    // A local replica first; else one elsewhere in the lattice.
    let (response, forwarded) = match (local, &table.remote) {
        (Some(local), remote) => match local.try_handle(request, Scheme::Http).await {
            Ok(response) => (response, false),
            // No room here: a replica elsewhere, if one is idle, before 503.
            Err(refused) => match remote {
                Some(rpc) => {
                    let response = rpc.overflow(app, component, resend, metrics, refused).await;
                    (response, true)
                }
                None => {
                    crate::admin::metrics::get().unavailable(rpc::unavailable_of(&refused.reason));
                    (refused.response(app, component), false)
                }
            },
        },
        (None, Some(rpc)) => (
            rpc.forward(app, component, resend, metrics, request).await,
            true,
        ),
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
