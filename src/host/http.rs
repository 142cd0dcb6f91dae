//! Serving one HTTP request with a fresh instance of a `wasi:http/proxy` component, as
//! `wasmtime serve` and Spin do: deadline by epoch interruption, memory cap, bounded concurrency.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use tokio::sync::Semaphore;
use tracing::Instrument;
use wasmtime::{Store, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use super::InstanceLimits;
use super::grants::Grants;
use super::state::HostState;

/// Body of every response the ingress sends: a component's streamed body or a short text.
pub type ResponseBody = wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A deployed `wasi:http` component of an app, ready to serve requests on this node.
pub struct HttpComponent {
    app: Arc<str>,
    name: Arc<str>,
    digest: String,
    grants: Arc<Grants>,
    pre: ProxyPre<HostState>,
    permits: Arc<Semaphore>,
    max_concurrency: usize,
    limits: InstanceLimits,
}

impl HttpComponent {
    pub(super) fn new(
        grants: Arc<Grants>,
        digest: String,
        pre: ProxyPre<HostState>,
        max_concurrency: usize,
        limits: InstanceLimits,
    ) -> HttpComponent {
        HttpComponent {
            app: grants.app.clone(),
            name: grants.component.clone(),
            digest,
            grants,
            pre,
            permits: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            limits,
        }
    }

    /// Name of the app this component belongs to.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// Name of the component in its manifest.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// sha256 of the component's wasm, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Serves `request` with a fresh instance. Never fails: the component's response, or
    /// 503 + `Retry-After` when the concurrency bound is reached, 504 when the deadline passes,
    /// 500 when the instance traps or sets no response (logged with the cause).
    pub async fn handle<B>(
        &self,
        request: hyper::Request<B>,
        scheme: Scheme,
    ) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        self.handle_within(request, scheme, self.limits.request_timeout)
            .await
    }

    /// As [`HttpComponent::handle`], with the deadline `timeout` from now when that is sooner
    /// than the node's request timeout (a forwarded request brings what is left of its own).
    pub async fn handle_within<B>(
        &self,
        request: hyper::Request<B>,
        scheme: Scheme,
        timeout: std::time::Duration,
    ) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = self.max_concurrency,
                "component saturated; answering 503"
            );
            let mut response = text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "component {} of app {} is at its concurrency limit\n",
                    self.name, self.app
                ),
            );
            response.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from_static("1"),
            );
            return response;
        };
        let timeout = timeout.min(self.limits.request_timeout);
        let deadline = Instant::now() + timeout;
        let limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(self.limits.max_memory_bytes).unwrap_or(usize::MAX))
            .build();
        let mut store = Store::new(self.pre.engine(), HostState::new(&self.grants, limits));
        store.limiter(|state| &mut state.limits);
        // Guest code yields to the runtime at every epoch tick and traps once the deadline passed.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            Ok(if Instant::now() >= deadline {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });

        let (sender, receiver) = tokio::sync::oneshot::channel();
        let resources: wasmtime::Result<_> = (|| {
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(scheme, request)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            wasmtime::Result::Ok((req, out))
        })();
        let (req, out) = match resources {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand the request to the component");
                return text_response(StatusCode::BAD_REQUEST, format!("bad request: {e}\n"));
            }
        };
        let pre = self.pre.clone();
        // The instance runs in its own task, which may outlive the response headers while it
        // streams the body; the deadline covers all of it, host calls included.
        let task = tokio::spawn(
            async move {
                let _permit = permit;
                let run = async {
                    let proxy = pre.instantiate_async(&mut store).await?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, req, out)
                        .await
                };
                let outcome = match tokio::time::timeout_at(deadline.into(), run).await {
                    Ok(Ok(())) => return Outcome::Finished,
                    Ok(Err(e)) if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => {
                        Outcome::DeadlineExceeded
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = format!("{e:?}"), "component trapped");
                        Outcome::Trapped
                    }
                    Err(_elapsed) => Outcome::DeadlineExceeded,
                };
                if outcome == Outcome::DeadlineExceeded {
                    tracing::error!(
                        timeout_ms = timeout.as_millis() as u64,
                        "component exceeded the request deadline"
                    );
                }
                outcome
            }
            .in_current_span(),
        );

        // The task ends by the deadline and drops the outparam with its store, so this wait is
        // bounded too.
        match receiver.await {
            Ok(Ok(response)) => response,
            Ok(Err(code)) => {
                tracing::warn!(error = ?code, "component answered with an error code");
                text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("component error: {code:?}\n"),
                )
            }
            Err(_) => match task.await {
                Ok(Outcome::DeadlineExceeded) => deadline_response(timeout),
                Ok(Outcome::Finished) => {
                    tracing::error!("component returned without setting a response");
                    text_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "component set no response\n".into(),
                    )
                }
                Ok(Outcome::Trapped) => text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "component failed; see the node log\n".into(),
                ),
                Err(e) => {
                    tracing::error!(error = %e, "component task failed");
                    text_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "component failed; see the node log\n".into(),
                    )
                }
            },
        }
    }
}

/// How an instance's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// `handle` returned.
    Finished,
    /// It trapped (logged with the cause).
    Trapped,
    /// It ran past the request deadline and was stopped.
    DeadlineExceeded,
}

fn deadline_response(timeout: std::time::Duration) -> hyper::Response<ResponseBody> {
    text_response(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "component did not answer within the request deadline of {}\n",
            humantime::format_duration(timeout)
        ),
    )
}

/// A short `text/plain` response.
pub fn text_response(status: StatusCode, text: String) -> hyper::Response<ResponseBody> {
    let body = Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
