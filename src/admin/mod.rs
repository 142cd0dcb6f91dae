//! The admin endpoint (`--admin-addr`, default `127.0.0.1:9464`): `/healthz`, `/readyz` and
//! `/metrics` over plain HTTP/1.1 (hyper), for probes and Prometheus, on an address of its own
//! so that no app's route can shadow it.
//!
//! - `GET /healthz`: `200 ok` while the process answers.
//! - `GET /readyz`: `200 ready` while the node is ready ([`crate::admin::readiness`]), else `503` with
//!   the reasons, one line each (`<condition>: <why>`), plain text.
//! - `GET /metrics`: [`crate::admin::metrics`] in the OpenMetrics text format, after the refreshers
//!   handed to [`AdminState::before_metrics`] ran (counts kept elsewhere, read at scrape time).
//!
//! Anything else is 404; a method other than GET or HEAD is 405.
//!
//! The folder is the node's side that faces its operator (DESIGN.md §2, `admin`): this endpoint,
//! what it reports ([`readiness`], [`metrics`]), the log and trace export ([`telemetry`]), and
//! systemd's service protocol ([`systemd`] with its [`liveness`] beats, [`credentials`]). It
//! imports nothing from the other top-level folders: they record into it.

pub mod credentials;
pub mod liveness;
pub mod metrics;
pub mod readiness;
pub mod systemd;
pub mod telemetry;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::readiness::Readiness;

/// The default `--admin-addr`: loopback, the port OpenTelemetry's Prometheus exporters use
/// (not Prometheus's own 9090).
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// How long a client may take to send a request's headers (an idle keep-alive connection
/// included): a probe or a scrape sends them at once.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The most connections the endpoint serves at once; one beyond is closed at once. Probes and
/// a Prometheus or two need a handful; the cap keeps local users from holding the node's file
/// descriptors.
pub const MAX_CONNECTIONS: usize = 64;

/// A connection's read buffer, at most: a request of the admin endpoint is a line and a few
/// headers (hyper's smallest allowed is 8 KiB).
const MAX_BUF_SIZE: usize = 16 * 1024;

/// How long the accept loop pauses after an error (EMFILE, ENFILE, ENOBUFS: resources that a
/// retry at once would not find either).
const ACCEPT_ERROR_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// What the admin endpoint answers from; cheap to clone, every clone sees the same state.
#[derive(Clone)]
pub struct AdminState {
    readiness: Readiness,
    refreshers: Arc<Mutex<Vec<Refresher>>>,
}

/// Brings one part of the metrics up to date (e.g. copies counts kept elsewhere into the
/// registry); called right before `/metrics` renders.
pub type Refresher = Arc<dyn Fn() + Send + Sync>;

impl AdminState {
    /// The state of a node whose readiness is `readiness`, with no refresher yet.
    pub fn new(readiness: Readiness) -> AdminState {
        AdminState {
            readiness,
            refreshers: Arc::default(),
        }
    }

    /// Runs `refresh` before every `/metrics` render from now on. It must be cheap and must not
    /// block: it runs on the endpoint's connection task.
    pub fn before_metrics(&self, refresh: impl Fn() + Send + Sync + 'static) {
        self.refreshers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::new(refresh));
    }

    fn refresh(&self) {
        let refreshers = self
            .refreshers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for refresh in refreshers {
            refresh();
        }
    }
}

/// A bound admin endpoint; [`AdminServer::serve`] answers on it.
pub struct AdminServer {
    listener: TcpListener,
    addr: SocketAddr,
}

/// The admin address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (--admin-addr; `none` turns the admin endpoint off): {source}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// [`BindError`] when the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> Result<AdminServer, BindError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| BindError { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| BindError { addr, source })?;
        Ok(AdminServer { listener, addr })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers requests from `state` until `shutdown` fires; connections still open then are
    /// dropped. At most [`MAX_CONNECTIONS`] at once (one beyond is closed as soon as it is
    /// accepted), each given 2 s to send its request's headers and a 16 KiB read buffer; after
    /// an accept error (e.g. out of file descriptors) the loop pauses 100 ms and logs at warn.
    pub async fn serve(self, state: AdminState, shutdown: CancellationToken) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        addr = %self.addr,
                        "admin endpoint: accepting a connection; pausing {ACCEPT_ERROR_PAUSE:?}"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            };
            // Finished connections are reaped as new ones come.
            while connections.try_join_next().is_some() {}
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(
                    %peer,
                    "admin endpoint: {MAX_CONNECTIONS} connections open; closing this one"
                );
                drop(stream);
                continue;
            };
            let state = state.clone();
            connections.spawn(async move {
                let _slot = slot;
                let service = hyper::service::service_fn(|request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&request, &state)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .max_buf_size(MAX_BUF_SIZE)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "admin endpoint: connection");
                }
            });
        }
        connections.shutdown().await;
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

fn answer<B>(request: &Request<B>, state: &AdminState) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET and HEAD\n".to_owned(),
        );
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".to_owned()),
        "/readyz" => {
            let reasons = state.readiness.reasons();
            if reasons.is_empty() {
                text(StatusCode::OK, PLAIN, "ready\n".to_owned())
            } else {
                let mut body = reasons.join("\n");
                body.push('\n');
                text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, body)
            }
        }
        "/metrics" => {
            state.refresh();
            text(
                StatusCode::OK,
                crate::admin::metrics::CONTENT_TYPE,
                crate::admin::metrics::get().render(),
            )
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: /healthz, /readyz, /metrics\n".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::readiness::Condition;

    fn get(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    fn body(response: Response<Full<Bytes>>) -> (StatusCode, String) {
        use http_body_util::BodyExt as _;
        let status = response.status();
        let bytes = futures::executor::block_on(response.into_body().collect())
            .unwrap()
            .to_bytes();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn readyz_lists_the_reasons_until_the_node_is_ready() {
        let readiness = Readiness::new();
        let state = AdminState::new(readiness.clone());
        let (status, text) = body(answer(&get("/readyz"), &state));
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(text.lines().count(), Condition::ALL.len(), "{text}");
        assert!(
            text.contains("first reconcile pass: not completed yet\n"),
            "{text}"
        );
        for condition in Condition::ALL {
            readiness.met(condition);
        }
        assert_eq!(
            body(answer(&get("/readyz"), &state)),
            (StatusCode::OK, "ready\n".to_owned())
        );
    }

    #[test]
    fn metrics_run_the_refreshers_first() {
        let state = AdminState::new(Readiness::new());
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = runs.clone();
        state.before_metrics(move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let (status, _) = body(answer(&get("/metrics"), &state));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        let (status, _) = body(answer(&get("/nope"), &state));
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
}
