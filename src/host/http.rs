//! Serving one HTTP request with a fresh instance of a `wasi:http/proxy` component, as
//! `wasmtime serve` and Spin do: deadline by epoch interruption, memory cap, bounded concurrency.
//! With instance reuse on for the component (`reuse.rs`), an idle instance it kept serves the
//! request instead, with fresh per-request state, and goes back to be kept only when it answered
//! cleanly: no trap, within its deadline, and, once `handle` returned, nothing of the request
//! left in its store (`HostState::reusable`).
//! A request the node has no room for (the component's concurrency bound, or the pooling
//! allocator out of slots) is handed back untouched ([`Refused`]), so the ingress can try a
//! replica elsewhere before it answers 503.
//!
//! Each admitted instance's life, from its instantiation succeeding until after its store is
//! dropped, is counted in `lattice_instances{app, component}`, and the pool's slots in use are
//! written when it takes and gives back its slot. Its work is one `component_call` span (fields
//! `app`, `component`, `otel.kind = internal`, `refused`), a child of the span current where
//! the request is admitted: instantiation and the guest's run, host calls (keyvalue, outgoing
//! HTTP) and all, since the instance's run goes on inside it (on the request's task, or on a
//! task of its own once the response is known). A trap (its root cause, bounded), the
//! deadline, the memory cap or an error code of the guest is recorded on it as an error; a trap
//! is logged whole outside the span, since its text is partly the guest's. An instance the pool
//! had no slot for is `refused = "pool"` on the span, not an error: nothing of the guest ran,
//! and the request may be served elsewhere. A reused instance sets `reused` on the span to the
//! requests it served before. A kept idle instance stays counted in `lattice_instances` (it is
//! alive and holds its pool slot).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use tokio::sync::Semaphore;
use tokio::sync::oneshot::error::RecvError;
use tracing::Instrument;
use wasmtime::{Store, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};

use super::InstanceLimits;
use super::engine::PoolSlots;
use super::grants::Grants;
use super::reuse::{IdlePool, IdleRegistry, Reuse};
use super::state::HostState;
use crate::admin::metrics::ComponentMetrics;
use crate::admin::telemetry::LOG_ONLY;
use crate::admin::telemetry::record_error;
use crate::providers::http_client::EgressClient;

/// Body of every response the ingress sends: a component's streamed body or a short text.
pub type ResponseBody = wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Why a request could not start an instance here. Nothing of the request ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saturation {
    /// The component's concurrency bound on this node is reached.
    Concurrency {
        /// The bound: replicas here × `--replica-concurrency`.
        limit: usize,
    },
    /// The engine's pooling allocator has no free slot (`--max-instances`); the text is
    /// wasmtime's, naming the exhausted resource.
    Pool(String),
}

impl Saturation {
    /// What a client is told: the component, and which bound it met.
    pub fn message(&self, app: &str, component: &str) -> String {
        match self {
            Saturation::Concurrency { limit } => format!(
                "component {component} of app {app} is at its concurrency limit ({limit} requests)"
            ),
            Saturation::Pool(_) => {
                format!("no instance slot free on this node for component {component} of app {app}")
            }
        }
    }
}

/// A request this node did not run (see [`Saturation`]), handed back with its body unread.
pub struct Refused<B> {
    /// The request, as it came.
    pub request: hyper::Request<B>,
    /// Why.
    pub reason: Saturation,
}

impl<B> Refused<B> {
    /// The answer when no replica elsewhere takes the request either: 503 with `Retry-After`.
    pub fn response(&self, app: &str, component: &str) -> hyper::Response<ResponseBody> {
        busy_response(app, component, &self.reason)
    }
}

/// `503` with `Retry-After: 1` for a request `reason` kept from running.
pub fn busy_response(
    app: &str,
    component: &str,
    reason: &Saturation,
) -> hyper::Response<ResponseBody> {
    let text = format!("{}\n", reason.message(app, component));
    let mut response = text_response(StatusCode::SERVICE_UNAVAILABLE, text);
    response.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    response
}

/// Whether `error` is the pooling allocator being out of slots.
fn is_pool_exhausted(error: &wasmtime::Error) -> bool {
    error
        .chain()
        .any(|cause| cause.is::<wasmtime::PoolConcurrencyLimitError>())
}

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
    /// Outgoing HTTP of all its instances: one connection pool.
    egress: EgressClient,
    /// Its series (`lattice_instances`, `lattice_replicas`, …), made once.
    metrics: ComponentMetrics,
    /// The node's pool slots, written as its instances come and go.
    pool: PoolSlots,
    /// Its idle instances, when it reuses them.
    reuse: Option<Reuser>,
    /// The idle instances of all components of the node: evicted when the pool is full.
    registry: IdleRegistry,
}

/// A component's reuse bound and its idle instances.
#[derive(Clone)]
struct Reuser {
    /// Requests one instance serves before it is dropped.
    max_requests: u32,
    idle: Arc<IdlePool<Kept>>,
}

/// An idle instance kept for the next request.
struct Kept {
    store: Store<HostState>,
    proxy: wasmtime_wasi_http::p2::bindings::Proxy,
    /// Requests it has served.
    served: u32,
    /// After `store`.
    alive: Alive,
}

/// One instance alive, from before its store is made: counted in `lattice_instances` of its
/// component; uncounted when dropped, which is after its store (declare it first), and the
/// pool's slots written again then.
struct Alive {
    metrics: ComponentMetrics,
    pool: PoolSlots,
}

impl Alive {
    fn new(metrics: &ComponentMetrics, pool: &PoolSlots) -> Alive {
        metrics.instance(true);
        Alive {
            metrics: metrics.clone(),
            pool: pool.clone(),
        }
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.metrics.instance(false);
        self.pool.update();
    }
}

impl Drop for HttpComponent {
    fn drop(&mut self) {
        // Gone from the node: its idle instances give their pool slots back now, and an
        // instance still serving is dropped when done.
        if let Some(reuse) = &self.reuse {
            reuse.idle.close();
        }
    }
}

/// Where the node's instances come from, shared by all components: the pool's slots and the
/// idle instances kept for reuse.
pub(super) struct Slots {
    pub(super) pool: PoolSlots,
    pub(super) registry: IdleRegistry,
}

impl HttpComponent {
    /// `reuse`: whether and how its instances are reused (`None`: a fresh one per request).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        grants: Arc<Grants>,
        digest: String,
        pre: ProxyPre<HostState>,
        max_concurrency: usize,
        limits: InstanceLimits,
        egress: EgressClient,
        slots: Slots,
        reuse: Option<Reuse>,
    ) -> HttpComponent {
        let Slots { pool, registry } = slots;
        let reuse = reuse.map(|reuse| {
            let idle = IdlePool::new(reuse.idle_timeout);
            registry.register(&idle);
            Reuser {
                max_requests: reuse.max_requests,
                idle,
            }
        });
        HttpComponent {
            reuse,
            registry,
            metrics: crate::admin::metrics::get().component(&grants.app, &grants.component),
            pool,
            app: grants.app.clone(),
            name: grants.component.clone(),
            digest,
            grants,
            pre,
            permits: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            limits,
            egress,
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

    /// Its metrics handles (made once, when it was prepared).
    pub fn metrics(&self) -> &ComponentMetrics {
        &self.metrics
    }

    /// Serves `request` with a fresh instance (or a kept one, with reuse on). Never fails: the
    /// component's response, or 503 + `Retry-After` when the concurrency bound is reached or
    /// the pool has no free slot, 504 when the deadline passes, 500 when the instance traps or
    /// sets no response (logged with the cause).
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
        match self.try_handle_within(request, scheme, timeout).await {
            Ok(response) => response,
            Err(refused) => refused.response(&self.app, &self.name),
        }
    }

    /// As [`HttpComponent::handle`], but a request that finds no room here comes back unread
    /// (see [`HttpComponent::try_handle_within`]).
    ///
    /// # Errors
    /// [`Refused`], with the request and the [`Saturation`]; nothing of it ran.
    pub async fn try_handle<B>(
        &self,
        request: hyper::Request<B>,
        scheme: Scheme,
    ) -> Result<hyper::Response<ResponseBody>, Refused<B>>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        self.try_handle_within(request, scheme, self.limits.request_timeout)
            .await
    }

    /// As [`HttpComponent::handle_within`], but a request that finds no room here (the
    /// concurrency bound, or no free pool slot for its instance) comes back unread.
    ///
    /// # Errors
    /// [`Refused`], with the request and the [`Saturation`]; nothing of it ran.
    pub async fn try_handle_within<B>(
        &self,
        request: hyper::Request<B>,
        scheme: Scheme,
        timeout: std::time::Duration,
    ) -> Result<hyper::Response<ResponseBody>, Refused<B>>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        match self.admit(timeout).await {
            Ok(admitted) => Ok(admitted.serve(request, scheme).await),
            Err(NotAdmitted::Busy(reason)) => Err(Refused { request, reason }),
            Err(NotAdmitted::Failed(response)) => Ok(response),
        }
    }

    /// Takes a place in the component's concurrency bound and instantiates it for one request
    /// with the deadline `timeout` from now (capped by the node's request timeout), before the
    /// request is read: one that finds no room can go elsewhere. Opens the `component_call`
    /// span (a child of the current one) that [`Admitted::serve`] goes on in.
    ///
    /// # Errors
    /// [`NotAdmitted::Busy`] at the concurrency bound or with no free pool slot;
    /// [`NotAdmitted::Failed`] with the answer to send when instantiation trapped (500, logged)
    /// or ran past the deadline (504).
    pub async fn admit(&self, timeout: std::time::Duration) -> Result<Admitted, NotAdmitted> {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            tracing::debug!(
                limit = self.max_concurrency,
                "component at its concurrency limit"
            );
            return Err(NotAdmitted::Busy(Saturation::Concurrency {
                limit: self.max_concurrency,
            }));
        };
        let timeout = timeout.min(self.limits.request_timeout);
        let deadline = Instant::now() + timeout;
        // At DEBUG: free with traces off at the default log level (the request's span carries
        // app and component for the log); the trace layer records it at any level.
        let span = tracing::debug_span!(
            "component_call",
            app = %self.app,
            component = %self.name,
            otel.kind = "internal",
            refused = tracing::field::Empty,
            reused = tracing::field::Empty,
        );
        if let Some(reuse) = &self.reuse
            && let Some(mut kept) = reuse.idle.take()
        {
            // This request's own: wasi:http context, outgoing-HTTP hooks, deadline.
            kept.store.data_mut().next_request();
            set_deadline(&mut kept.store, deadline);
            span.record("reused", kept.served);
            return Ok(self.admitted(span, permit, kept, deadline, timeout));
        }
        // Before the store, so dropped after it: a slot given back by a failed instantiation
        // shows in the pool's gauge.
        let slots = SlotsUpdate(&self.pool);
        let (store, instantiated) = loop {
            let mut store = self.new_store(deadline);
            let instantiated =
                tokio::time::timeout_at(deadline.into(), self.pre.instantiate_async(&mut store))
                    .instrument(span.clone())
                    .await;
            if matches!(&instantiated, Ok(Err(e)) if is_pool_exhausted(e))
                && self.registry.evict_oldest()
            {
                // An idle instance (of any component) gave its slot back: kept instances never
                // starve a request of a slot. Once more, in a new store.
                drop(store);
                continue;
            }
            break (store, instantiated);
        };
        self.pool.update();
        let entered = span.enter();
        let proxy = match instantiated {
            Ok(Ok(proxy)) => proxy,
            Ok(Err(e)) if is_pool_exhausted(&e) => {
                // Not the component's failure, and not an error of the span: the request may
                // go elsewhere, and nothing of the guest ran.
                span.record("refused", "pool");
                tracing::debug!(error = %e, "no free pool slot for an instance");
                return Err(NotAdmitted::Busy(Saturation::Pool(e.to_string())));
            }
            Ok(Err(e)) if e.downcast_ref::<Trap>() != Some(&Trap::Interrupt) => {
                log_trap(
                    &self.app,
                    &self.name,
                    &e,
                    "component trapped while starting",
                );
                record_error(
                    &span,
                    &format_args!(
                        "component trapped while starting: {}",
                        Bounded(&e.root_cause().to_string())
                    ),
                );
                return Err(NotAdmitted::Failed(text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "component failed; see the node log\n".into(),
                )));
            }
            Ok(Err(_)) | Err(_) => {
                tracing::error!(
                    timeout_ms = timeout.as_millis() as u64,
                    "component exceeded the request deadline while starting"
                );
                record_error(&span, &DeadlineExceeded(timeout));
                return Err(NotAdmitted::Failed(deadline_response(timeout)));
            }
        };
        drop(entered);
        // Counted once the instance exists and the request is admitted: a refused one never
        // shows as an instance.
        let alive = Alive::new(&self.metrics, &self.pool);
        drop(slots);
        let fresh = Kept {
            store,
            proxy,
            served: 0,
            alive,
        };
        Ok(self.admitted(span, permit, fresh, deadline, timeout))
    }

    /// `instance` admitted for one request, in `span`, holding `permit`.
    fn admitted(
        &self,
        span: tracing::Span,
        permit: tokio::sync::OwnedSemaphorePermit,
        instance: Kept,
        deadline: Instant,
        timeout: std::time::Duration,
    ) -> Admitted {
        let Kept {
            store,
            proxy,
            served,
            alive,
        } = instance;
        Admitted {
            span,
            alive,
            app: self.app.clone(),
            name: self.name.clone(),
            permit,
            store,
            proxy,
            deadline,
            timeout,
            served,
            reuse: self.reuse.clone(),
        }
    }

    /// A store for a new instance: the component's grants, its memory cap, `deadline`.
    fn new_store(&self, deadline: Instant) -> Store<HostState> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(self.limits.max_memory_bytes).unwrap_or(usize::MAX))
            .build();
        let mut store = Store::new(
            self.pre.engine(),
            HostState::new(&self.grants, limits, &self.egress),
        );
        store.limiter(|state| &mut state.limits);
        set_deadline(&mut store, deadline);
        store
    }
}

/// Guest code yields to the runtime at every epoch tick and traps once `deadline` passed.
fn set_deadline(store: &mut Store<HostState>, deadline: Instant) {
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        Ok(if Instant::now() >= deadline {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Yield(1)
        })
    });
}

/// Why [`HttpComponent::admit`] did not start an instance.
pub enum NotAdmitted {
    /// No room: the request may go to a replica elsewhere; nothing ran.
    Busy(Saturation),
    /// Instantiation failed: the answer to send.
    Failed(hyper::Response<ResponseBody>),
}

/// An instance (fresh, or kept with reuse on) with its place in the component's concurrency
/// bound, for one request.
pub struct Admitted {
    /// The `component_call` span.
    span: tracing::Span,
    app: Arc<str>,
    name: Arc<str>,
    permit: tokio::sync::OwnedSemaphorePermit,
    store: Store<HostState>,
    proxy: wasmtime_wasi_http::p2::bindings::Proxy,
    deadline: Instant,
    timeout: std::time::Duration,
    /// Requests the instance served before this one.
    served: u32,
    /// Where it goes back to be kept, with reuse on.
    reuse: Option<Reuser>,
    /// After `store`: fields are dropped in declaration order.
    alive: Alive,
}

impl Admitted {
    /// Hands `request` to the instance and returns its response. Never fails: 504 when the
    /// deadline passes, 500 when the instance traps or sets no response (logged with the
    /// cause), 503 + `Retry-After` when the pool has no stack for the call. Runs in the
    /// `component_call` span [`HttpComponent::admit`] opened, and so does the instance's run.
    pub async fn serve<B>(
        self,
        request: hyper::Request<B>,
        scheme: Scheme,
    ) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let span = self.span.clone();
        self.run(request, scheme).instrument(span).await
    }

    async fn run<B>(
        self,
        request: hyper::Request<B>,
        scheme: Scheme,
    ) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let Admitted {
            span,
            app,
            name,
            permit,
            mut store,
            proxy,
            deadline,
            timeout,
            served,
            reuse,
            alive,
        } = self;
        let reuse_on = reuse.is_some();
        // With reuse on and requests left in the instance: whether the guest set a response,
        // told to the task as soon as it is known (the instance is kept only then).
        let (mut responded, keep) =
            match reuse.filter(|r| served.saturating_add(1) < r.max_requests) {
                Some(reuse) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    (Some(tx), Some((reuse, rx)))
                }
                None => (None, None),
            };
        let (sender, mut receiver) = tokio::sync::oneshot::channel();
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
                drop(store);
                drop(alive);
                return text_response(StatusCode::BAD_REQUEST, format!("bad request: {e}\n"));
            }
        };
        // The instance's run: the guest's `handle`, its deadline covering all of it (host calls
        // included), then the decision to keep it. Inside the `component_call` span.
        let run_span = span.clone();
        let (run_app, run_name) = (app.clone(), name.clone());
        // Set once `handle` returned: what is left of the run then is quick (the decision to
        // keep the instance), so the request's task finishes it instead of a new task.
        let returned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let run_returned = returned.clone();
        let run = async move {
            let _permit = permit;
            let call = proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out);
            let called = tokio::time::timeout_at(deadline.into(), call).await;
            run_returned.store(true, std::sync::atomic::Ordering::Release);
            let outcome = match called {
                Ok(Ok(())) => Outcome::Finished,
                Ok(Err(e)) if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) => {
                    Outcome::DeadlineExceeded
                }
                Ok(Err(e)) if is_pool_exhausted(&e) => {
                    // No stack for the call: the guest never ran.
                    run_span.record("refused", "pool");
                    tracing::debug!(error = %e, "no free pool slot for the call");
                    Outcome::PoolExhausted(e.to_string())
                }
                Ok(Err(e)) => {
                    log_trap(&run_app, &run_name, &e, "component trapped");
                    // The trap itself (a memory cap met shows as the guest's own trap),
                    // without the wasm backtrace the log has, and bounded.
                    record_error(
                        &run_span,
                        &format_args!(
                            "component trapped: {}",
                            Bounded(&e.root_cause().to_string())
                        ),
                    );
                    Outcome::Trapped
                }
                Err(_elapsed) => Outcome::DeadlineExceeded,
            };
            if outcome == Outcome::DeadlineExceeded {
                tracing::error!(
                    timeout_ms = timeout.as_millis() as u64,
                    "component exceeded the request deadline"
                );
                record_error(&run_span, &DeadlineExceeded(timeout));
            }
            // Judged from the store once `handle` returned, not from how the client read the
            // body: hyper drops a body with a declared length (or for HEAD, 204, 304) without
            // polling its end. What the guest finished is already in the body's channel, which
            // needs no store.
            if outcome == Outcome::Finished
                && let Some((reuse, set)) = keep
            {
                match store.data_mut().reusable() {
                    // A clean table means the outparam is gone, so `set` is told at once.
                    Ok(()) if matches!(set.await, Ok(true)) => {
                        tracing::debug!("instance kept for reuse");
                        reuse.idle.put(Kept {
                            store,
                            proxy,
                            served: served.saturating_add(1),
                            alive,
                        });
                        return outcome;
                    }
                    Ok(()) => tracing::debug!(
                        "instance not kept: it set no response, or its request was dropped"
                    ),
                    Err(why) => tracing::debug!(reason = %why, "instance not kept"),
                }
            } else if reuse_on {
                tracing::debug!("instance not kept");
            }
            // The instance is gone with its store; then it is uncounted.
            drop(store);
            drop(alive);
            outcome
        }
        .instrument(span.clone());

        // The run goes on here, on the request's own task, until the guest has set its
        // response: most guests set it, write their body and return within one poll, and then
        // no task is spawned and no other task woken for them. A run still going once the
        // response is known (a body streamed after the head, a slow host call), or whose
        // request is dropped (its client went away), goes on in a task of its own and ends by
        // the deadline; it drops the outparam with its store, so the wait for the response is
        // bounded too.
        let mut running = Running(Some(Box::pin(
            std::panic::AssertUnwindSafe(run).catch_unwind(),
        )));
        let first = match running.0.as_mut() {
            Some(run) => tokio::select! {
                biased;
                ended = run => First::Ended(ended),
                answered = &mut receiver => First::Answered(answered),
            },
            None => unreachable!("the run was just set"),
        };
        let (answered, mut ended) = match first {
            First::Ended(ended) => {
                running.0 = None;
                // The outparam is gone with the store: the response was sent, or never is.
                (receiver.await, Some(ended))
            }
            First::Answered(answered) => (answered, None),
        };
        if let Some(tx) = responded.take() {
            let _ = tx.send(answered.is_ok());
        }
        if ended.is_none() && returned.load(std::sync::atomic::Ordering::Acquire) {
            // A run whose `handle` returned ends now (kept for reuse, or dropped); one still in
            // the guest is detached below, so the response head waits for no guest code.
            ended = running.poll_once();
        }
        match answered {
            Ok(Ok(response)) => {
                running.detach();
                response
            }
            Ok(Err(code)) => {
                running.detach();
                tracing::warn!(error = ?code, "component answered with an error code");
                record_error(
                    &span,
                    &format_args!("component answered with an error code: {code:?}"),
                );
                text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("component error: {code:?}\n"),
                )
            }
            // `finish` waits only for a run that has not ended yet.
            Err(_) => match ended.or(running.finish().await) {
                Some(Ok(Outcome::DeadlineExceeded)) => deadline_response(timeout),
                Some(Ok(Outcome::Finished)) => {
                    tracing::error!("component returned without setting a response");
                    record_error(&span, &"component returned without setting a response");
                    text_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "component set no response\n".into(),
                    )
                }
                Some(Ok(Outcome::Trapped)) => text_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "component failed; see the node log\n".into(),
                ),
                Some(Ok(Outcome::PoolExhausted(reason))) => {
                    busy_response(&app, &name, &Saturation::Pool(reason))
                }
                None => {
                    // Not reached: a run that ended is in `ended`, else still in `running`.
                    tracing::error!("component run lost");
                    text_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "component failed; see the node log\n".into(),
                    )
                }
                Some(Err(panic)) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(panic = message, "component run panicked");
                    record_error(&span, &"component run panicked");
                    text_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "component failed; see the node log\n".into(),
                    )
                }
            },
        }
    }
}

/// An instance's run ([`Admitted::serve`]): how it ended, or the panic it ended with.
type Run = std::pin::Pin<Box<dyn Future<Output = std::thread::Result<Outcome>> + Send>>;

/// What the request's task saw first of its instance: the run's end, or the response.
enum First {
    Ended(std::thread::Result<Outcome>),
    Answered(Result<Result<hyper::Response<ResponseBody>, ErrorCode>, RecvError>),
}

/// A run polled by the request's task, `None` once it ended. Whatever is left of it when this
/// is dropped (or detached) goes on in a task of its own: a request's task dropped by hyper
/// (its client went away) never cuts its guest short.
struct Running(Option<Run>);

impl Running {
    /// Polls the run once, without waiting: its end when it ended.
    fn poll_once(&mut self) -> Option<std::thread::Result<Outcome>> {
        let ended = self.0.as_mut()?.as_mut().now_or_never();
        if ended.is_some() {
            self.0 = None;
        }
        ended
    }

    /// Waits for the run's end here; `None` when it had ended already. The run stays in
    /// `self` meanwhile, so a request dropped during the wait still detaches it.
    async fn finish(&mut self) -> Option<std::thread::Result<Outcome>> {
        let ended = self.0.as_mut()?.await;
        self.0 = None;
        Some(ended)
    }

    /// Leaves what is left of the run to a task of its own.
    fn detach(&mut self) {
        if let Some(run) = self.0.take() {
            // Outside a runtime (it is shutting down) there is nothing to run it on.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(run);
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Writes the pool's slots in use when dropped (after the store it was made before).
struct SlotsUpdate<'a>(&'a PoolSlots);

impl Drop for SlotsUpdate<'_> {
    fn drop(&mut self) {
        self.0.update();
    }
}

/// Logs the trap `error` of component `component` of app `app` at ERROR with its whole text
/// (the wasm backtrace, and whatever the guest put in its error), in the request's span but
/// under [`LOG_ONLY`]: the text is partly the guest's, so it stays in the node's log and is never
/// exported as a span event. The span gets a [`Bounded`] root cause instead.
fn log_trap(app: &str, component: &str, error: &wasmtime::Error, what: &str) {
    tracing::error!(target: LOG_ONLY, app, component, error = format!("{error:?}"), "{what}");
}

/// Text written with at most [`Bounded::MAX`] bytes of it (cut at a character boundary, `…`
/// after), for what a guest controls and a span records.
struct Bounded<'a>(&'a str);

impl Bounded<'_> {
    const MAX: usize = 256;
}

impl std::fmt::Display for Bounded<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.len() <= Self::MAX {
            return f.write_str(self.0);
        }
        let mut end = Self::MAX;
        while !self.0.is_char_boundary(end) {
            end -= 1;
        }
        write!(f, "{}… ({} bytes)", &self.0[..end], self.0.len())
    }
}

/// How an instance's run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// `handle` returned.
    Finished,
    /// It trapped (logged with the cause).
    Trapped,
    /// It ran past the request deadline and was stopped.
    DeadlineExceeded,
    /// The pool had no stack for the call: the guest never ran.
    PoolExhausted(String),
}

/// The error a deadline met is recorded as: the deadline, in humantime's form.
struct DeadlineExceeded(std::time::Duration);

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "component exceeded the request deadline of {}",
            humantime::format_duration(self.0)
        )
    }
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
