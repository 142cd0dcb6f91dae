//! The admin endpoint (`--admin-addr`, default `127.0.0.1:9464`): `/healthz` and `/metrics`
//! over plain HTTP/1.1 (hyper), for probes and Prometheus, on an address of its own so that no
//! app's route can shadow it.
//!
//! - `GET /healthz`: `200 ok` while the process answers.
//! - `GET /metrics`: [`crate::metrics`] in the OpenMetrics text format.
//!
//! Anything else is 404; a method other than GET or HEAD is 405.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The default `--admin-addr`: loopback, the port OpenTelemetry's Prometheus exporters use
/// (not Prometheus's own 9090).
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// How long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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

    /// Answers requests until `shutdown` fires; connections still open then are dropped.
    pub async fn serve(self, shutdown: CancellationToken) {
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = shutdown.cancelled() => break,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "admin endpoint: accept");
                    continue;
                }
            };
            connections.spawn(async move {
                let service = hyper::service::service_fn(|request| async move {
                    Ok::<_, Infallible>(answer(&request))
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "admin endpoint: connection");
                }
            });
            // Finished connections are reaped as new ones come.
            while connections.try_join_next().is_some() {}
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

fn answer<B>(request: &Request<B>) -> Response<Full<Bytes>> {
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
        "/metrics" => text(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            crate::metrics::get().render(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: /healthz, /metrics\n".to_owned(),
        ),
    }
}
