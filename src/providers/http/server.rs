//! The HTTP listeners (hyper, HTTP/1.1 and h2c): the shared ingress plus one per app `address`,
//! each request routed by the current [`RoutingTable`] to a local component.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

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
use crate::host::{HttpComponent, ResponseBody, text_response};
use crate::lattice::rpc::Rpc;

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
    table: Arc<RwLock<Arc<RoutingTable>>>,
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
            table: Arc::new(RwLock::new(Arc::new(RoutingTable::default()))),
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
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
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
    table: Arc<RwLock<Arc<RoutingTable>>>,
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

/// Routes one request: 404 when no route matches, else the component's answer.
async fn route_request(
    table: &RoutingTable,
    listener: SocketAddr,
    request: hyper::Request<Incoming>,
) -> hyper::Response<ResponseBody> {
    let host = authority::request_host(request.version(), request.uri(), request.headers());
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!(
        "http_request",
        method = %request.method(),
        path = %path,
        app = tracing::field::Empty,
        component = tracing::field::Empty,
        route = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    async move {
        let host = match host {
            Ok(host) => host,
            Err(e) => {
                tracing::Span::current().record("status", 400);
                tracing::debug!(error = %e, "bad host");
                return text_response(StatusCode::BAD_REQUEST, format!("{e}\n"));
            }
        };
        let Some(route) = table.router.lookup(listener, host.as_deref(), &path) else {
            tracing::Span::current().record("status", 404);
            tracing::debug!("no route");
            return text_response(
                StatusCode::NOT_FOUND,
                format!("no route for {}{path}\n", host.as_deref().unwrap_or("")),
            );
        };
        let span = tracing::Span::current();
        span.record("app", &*route.target.app);
        span.record("component", &*route.target.component);
        span.record("route", tracing::field::display(&route.key));
        let key = (route.target.app.clone(), route.target.component.clone());
        let started = std::time::Instant::now();
        let mut forwarded = false;
        // A local replica first; else one elsewhere in the lattice.
        let response = match (table.components.get(&key), &table.remote) {
            (Some(component), remote) => match component.try_handle(request, Scheme::Http).await {
                Ok(response) => response,
                // No room here: a replica elsewhere, if one is idle, before 503.
                Err(refused) => match remote {
                    Some(rpc) => {
                        forwarded = true;
                        rpc.overflow(&key.0, &key.1, route.target.resend, refused)
                            .await
                    }
                    None => refused.response(&key.0, &key.1),
                },
            },
            (None, Some(rpc)) => {
                forwarded = true;
                rpc.forward(&key.0, &key.1, route.target.resend, request)
                    .await
            }
            (None, None) => text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "component {} of app {} runs on no replica here\n",
                    key.1, key.0
                ),
            ),
        };
        span.record("status", response.status().as_u16());
        crate::metrics::get().component(&key.0, &key.1).request(
            response.status().as_u16(),
            started.elapsed(),
            forwarded,
        );
        tracing::debug!("served");
        response
    }
    .instrument(span)
    .await
}
