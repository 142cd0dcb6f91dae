//! Lattice RPC for HTTP: a request for a component with no replica on this node travels over
//! NATS to the component's queue group, one replica somewhere in the lattice serves it, and the
//! response streams back. NATS picks the replica, so load balancing and failover are NATS's.
//!
//! The exchange (`PROTOCOL.md` §RPC): the requester publishes `request` (head + first body bytes)
//! to `lattice.<L>.rpc.v1.http.<app>.<component>` with its exchange subject as reply. The
//! replica answers `accept` (at once when the body did not fit: the requester then streams
//! `data` frames to it; else only when its response takes more than 50 ms). The replica
//! answers `response` (head + first bytes), then `data` frames when the body did not fit, then
//! `end`. Each `data` frame is acknowledged; at most
//! [`stream::WINDOW`] are in flight. A request no replica accepts within [`ACCEPT_TIMEOUT`]
//! (one that died or stalled with it in flight) is sent again, to whichever replica NATS picks
//! then, only when running it twice does no harm ([`Resend`]): an idempotent method (RFC 9110
//! §9.2.2), or a component that declares its requests safe to resend. A `POST` is otherwise
//! never sent twice: it waits for its one replica until the deadline.
//!
//! A replica with no room for a request (or that stopped serving) answers `error` with
//! `busy` before running anything; the requester then tries the component's replicas on other
//! nodes through their node subjects (`…<component>.<node-id>`), as a node whose own replica
//! is saturated does ([`Rpc::overflow`]), and answers 503 + `Retry-After` when all are busy.
//!
//! Traces: a forwarded request is an `rpc_forward` span (kind `client`) whose W3C context
//! travels in the `request` message's NATS headers (`traceparent`, `tracestate`); the serving
//! node's `rpc_invocation` span (kind `server`) continues it, and the component's call runs
//! inside that span (with traces on, the `traceparent` the component gets is that span's; the
//! request head carries the client's own unchanged). Metrics: each attempt counts in `lattice_invocations_sent_total`, each
//! invocation served here in `lattice_invocations_served_total`, and the 503s decided here in
//! `lattice_http_unavailable_total`.

pub mod mux;
pub mod stream;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use hyper::StatusCode;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::Instrument;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

use crate::admin::metrics::{ComponentMetrics, InvocationResult, Unavailable};
use crate::admin::telemetry;
use crate::host::{HttpComponent, NotAdmitted, Refused, ResponseBody, Saturation, text_response};
use crate::lattice::membership::Membership;
use crate::nats::subjects;
use mux::Mux;
use stream::{Chunker, Peer, complete_body, streamed_body};
use wire::{ErrorBody, FrameKind, RequestHead, ResponseHead};

/// How long a replica may take to accept (or answer) a request before it is sent again, if
/// [`Resend`] allows. A replica accepts within 50 ms, so only a lost message (its node died or
/// stalled) or a very slow link takes this long; a replica that answers late is then ignored in
/// favour of the first one.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a replica may work on a request whose body came whole before it sends `accept`;
/// a response sent earlier stands for it. Far below [`ACCEPT_TIMEOUT`], so a resend needs a
/// link or node that takes more than 950 ms to pass the accept on.
const ACCEPT_DELAY: Duration = Duration::from_millis(50);

/// How long a replica that stops serving answers what NATS delivered before its unsubscribe.
const LEAVE_DRAIN: Duration = Duration::from_secs(1);

/// Least time between two warnings about requests turned away for want of room.
const SATURATION_WARN_INTERVAL: Duration = Duration::from_secs(10);

/// When the node last warned of turning requests away, and how many it turned away since.
#[derive(Default)]
struct SaturationLog {
    warned: Option<Instant>,
    refused: u64,
}

/// Replicas on other nodes a saturated node tries, one after another, before it answers 503.
pub const MAX_OVERFLOW_TARGETS: usize = 3;

/// Bytes allowed for a JSON head growing after it was measured (the `streamed` flag).
const HEAD_SLACK: usize = 64;

/// Whether a request no replica accepted within [`ACCEPT_TIMEOUT`] may be sent again. A
/// replica that stalled (not one that died) runs it when it wakes up, so a resent request may
/// run twice: only one that does no harm twice is resent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resend {
    /// Resend whatever the method: the component declared its requests safe to run twice
    /// (component config key [`RETRY_SAFE_KEY`] set to `true`).
    Any,
    /// Resend only idempotent methods: `GET`, `HEAD`, `OPTIONS`, `TRACE`, `PUT`, `DELETE`
    /// (RFC 9110 §9.2.2).
    Idempotent,
}

/// Component config key (`properties.config` of a `type: component` entry) by which a
/// component declares that its requests may be sent to a replica again when none accepted
/// them within [`ACCEPT_TIMEOUT`], whatever their method: value `true`. Without it only
/// idempotent methods are resent.
pub const RETRY_SAFE_KEY: &str = "lattice.retry-safe";

impl Resend {
    /// The policy for a component whose config is `config`.
    pub fn of_config(config: &std::collections::BTreeMap<String, String>) -> Resend {
        match config.get(RETRY_SAFE_KEY) {
            Some(value) if value.trim().eq_ignore_ascii_case("true") => Resend::Any,
            _ => Resend::Idempotent,
        }
    }

    /// Whether a request with `method` may be sent again.
    pub fn allows(self, method: &hyper::Method) -> bool {
        use hyper::Method;
        self == Resend::Any
            || [
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::TRACE,
                Method::PUT,
                Method::DELETE,
            ]
            .contains(method)
    }
}

/// One forwarded request's exchange, across its attempts.
struct Forwarding<B> {
    exchange: mux::Exchange,
    /// The rest of the request body, until a replica accepts it.
    chunker: Option<Chunker<B>>,
    /// The exchange subject of the replica that answered first.
    replica: Option<String>,
    /// Whether the body goes on after the first message.
    streamed: bool,
}

impl<B> Forwarding<B> {
    /// Hands the incoming frames over to a response body.
    fn take_frames(
        &mut self,
    ) -> (
        tokio::sync::mpsc::Receiver<mux::Inbound>,
        Arc<mux::RouteGuard>,
    ) {
        let (_, closed) = tokio::sync::mpsc::channel(1);
        (
            std::mem::replace(&mut self.exchange.frames, closed),
            self.exchange.guard.clone(),
        )
    }
}

/// The reason label of a 503 for want of room here.
pub fn unavailable_of(reason: &Saturation) -> Unavailable {
    match reason {
        Saturation::Concurrency { .. } => Unavailable::Concurrency,
        Saturation::Pool(_) => Unavailable::Pool,
    }
}

/// How one attempt of a forwarded request ended.
enum Reply {
    /// The answer to send, and how the invocation went.
    Done(hyper::Response<ResponseBody>, InvocationResult),
    /// No replica accepted it in time, and it may be sent again.
    Resend,
    /// The replica did not run it: the answer to send unless another target takes it.
    NotRun {
        /// 503, with `Retry-After` when busy.
        response: hyper::Response<ResponseBody>,
        /// The replica said it had no room (else: no subscriber at all).
        busy: bool,
    },
}

/// What one attempt of a forwarded request is about.
#[derive(Clone, Copy)]
struct Attempt<'a> {
    subject: &'a str,
    app: &'a str,
    component: &'a str,
    deadline: Instant,
    /// Whether the request may be sent again when no replica accepts it in time.
    resendable: bool,
}

/// This node among the others: where [`Rpc::overflow`] finds replicas elsewhere.
pub struct Peers {
    /// This node's id.
    pub node: String,
    /// The live hosts and what they run, from their heartbeats.
    pub membership: Arc<Membership>,
}

/// The node's RPC endpoint: forwards requests to other nodes and serves its own replicas.
pub struct Rpc {
    client: async_nats::Client,
    lattice: String,
    mux: Mux,
    peers: Peers,
    /// Where the next overflow starts among the replicas elsewhere.
    turn: AtomicUsize,
    /// Requests turned away for want of room, for a rate-limited warning.
    saturation: std::sync::Mutex<SaturationLog>,
    /// Upper bound of a served invocation's deadline (the node's `--request-timeout`).
    max_timeout: Duration,
    /// Invocations being served here.
    serving: tokio_util::task::TaskTracker,
}

/// What a forwarded request is for: the component, its resend policy and its metric handles.
#[derive(Clone, Copy)]
struct Call<'a> {
    app: &'a str,
    component: &'a str,
    resend: Resend,
    metrics: &'a ComponentMetrics,
}

/// How [`Rpc::forward_to`] ended, for the 503 reasons and the span's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// A replica (or the exchange) gave the answer: how the last invocation went, `None`
    /// when none was sent (the request could not be read or sent).
    Answered(Option<InvocationResult>),
    /// No target ran it; `busy` when one of them said it had no room.
    NotRun { busy: bool },
}

impl Ending {
    /// Whether a replica elsewhere sent the response head (the `served="forwarded"` of the
    /// request's duration); a 503, 504 or 502 this node made itself is not.
    fn answered_elsewhere(self) -> bool {
        self == Ending::Answered(Some(InvocationResult::Ok))
    }
}

/// What [`Rpc::forward_to`] falls back on when its targets are busy or gone.
enum Fallback {
    /// A busy answer when no target is left brings in the replicas elsewhere
    /// ([`Rpc::replicas_elsewhere`]) once: the queue group's pick was busy, another may not be.
    Spill,
    /// This node's own answer, its replica being full (503 with Retry-After): it outranks a
    /// target with no subscriber (heartbeats may still list a node that died or dropped it).
    FullHere(hyper::Response<ResponseBody>),
}

/// Serving a component's invocations; dropping it unsubscribes.
pub struct Serving {
    _stop: DropGuard,
}

impl Rpc {
    /// Starts the endpoint on `client` for lattice `lattice`, as node `peers.node`.
    ///
    /// # Errors
    /// The reply subscription cannot be made.
    pub async fn start(
        client: async_nats::Client,
        lattice: &str,
        max_timeout: Duration,
        peers: Peers,
    ) -> anyhow::Result<Rpc> {
        let mux = Mux::start(&client).await?;
        Ok(Rpc {
            client,
            lattice: lattice.to_owned(),
            mux,
            peers,
            turn: AtomicUsize::new(0),
            saturation: std::sync::Mutex::default(),
            max_timeout,
            serving: tokio_util::task::TaskTracker::new(),
        })
    }

    /// Routes the replies to this node's requests (and the frames of the exchanges it serves)
    /// until `shutdown`: a long-running task of the node.
    ///
    /// # Errors
    /// The reply subscription ended or cannot be made again: see [`Mux::route`].
    pub async fn route_replies(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.mux.route(shutdown).await
    }

    /// Waits up to `within` for the invocations being served here to finish (after the
    /// components left their queue groups, at the node's stop).
    pub async fn drain(&self, within: Duration) {
        self.serving.close();
        if tokio::time::timeout(within, self.serving.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.serving.len(),
                "lattice invocations still running after {within:?}; stopping anyway"
            );
        }
    }

    /// Sends `request` for component `component` of `app` to a replica elsewhere and returns its
    /// response, streaming both bodies; a request no replica accepts within
    /// [`ACCEPT_TIMEOUT`] is sent again only if `resend` allows its method. Never fails: 503
    /// when no replica runs anywhere (NATS reports no responders), 504 when none answers within
    /// the request timeout, 502 when the exchange breaks before the response head. Each
    /// attempt counts in `metrics` (the component's handles), a 503 in the node's
    /// unavailable count (no replica, or all busy). The flag is true when the response head
    /// came from a replica elsewhere (the invocation's result is `ok`), false for an answer
    /// this node made itself (503, 504, 502).
    pub async fn forward<B>(
        &self,
        app: &str,
        component: &str,
        resend: Resend,
        metrics: &ComponentMetrics,
        request: hyper::Request<B>,
    ) -> (hyper::Response<ResponseBody>, bool)
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let subject = subjects::http_invoke(&self.lattice, app, component);
        let call = Call {
            app,
            component,
            resend,
            metrics,
        };
        let (response, ending) = self
            .forward_to(call, request, vec![subject], Fallback::Spill)
            .await;
        match ending {
            Ending::Answered(_) => {}
            Ending::NotRun { busy: true } => {
                crate::admin::metrics::get().unavailable(Unavailable::Busy)
            }
            Ending::NotRun { busy: false } => {
                crate::admin::metrics::get().unavailable(Unavailable::NoReplica)
            }
        }
        (response, ending.answered_elsewhere())
    }

    /// The invocation subjects of the replicas of component `component` of `app` on other
    /// nodes, as their heartbeats tell, at most [`MAX_OVERFLOW_TARGETS`], starting at a
    /// different node each call so that overflow spreads over them.
    pub fn replicas_elsewhere(&self, app: &str, component: &str) -> Vec<String> {
        let mut subjects: Vec<String> = self
            .peers
            .membership
            .hosts()
            .into_iter()
            .filter(|host| {
                host.id != self.peers.node
                    && host
                        .components
                        .iter()
                        .any(|c| c.app == app && c.component == component && c.replicas > 0)
            })
            .map(|host| subjects::http_invoke_on(&self.lattice, app, component, &host.id))
            .collect();
        if !subjects.is_empty() {
            let turn = self.turn.fetch_add(1, Ordering::Relaxed) % subjects.len();
            subjects.rotate_left(turn);
        }
        subjects.truncate(MAX_OVERFLOW_TARGETS);
        subjects
    }

    /// Serves a request the local replica had no room for ([`Refused`]) on a replica of
    /// another node: each is asked in turn, a busy one answering at once without running it;
    /// 503 + `Retry-After` when none runs elsewhere or every one is busy too (counted with the
    /// reason this node had no room: concurrency or pool). Attempts count in `metrics`. The
    /// flag is as [`Rpc::forward`]'s: false for this node's own 503.
    pub async fn overflow<B>(
        &self,
        app: &str,
        component: &str,
        resend: Resend,
        metrics: &ComponentMetrics,
        refused: Refused<B>,
    ) -> (hyper::Response<ResponseBody>, bool)
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let targets = self.replicas_elsewhere(app, component);
        let reason = unavailable_of(&refused.reason);
        if targets.is_empty() {
            self.saturated(app, component, &refused.reason, "runs nowhere else");
            crate::admin::metrics::get().unavailable(reason);
            return (refused.response(app, component), false);
        }
        tracing::debug!(reason = ?refused.reason, replicas = targets.len(), "component saturated here; trying its replicas elsewhere");
        // Should every replica elsewhere be busy or gone, the answer is this one's: full (503
        // with Retry-After), not "runs on no node".
        let full_here = refused.response(app, component);
        let call = Call {
            app,
            component,
            resend,
            metrics,
        };
        let (response, ending) = self
            .forward_to(
                call,
                refused.request,
                targets,
                Fallback::FullHere(full_here),
            )
            .await;
        if matches!(ending, Ending::NotRun { .. }) {
            self.saturated(app, component, &refused.reason, "and elsewhere");
            crate::admin::metrics::get().unavailable(reason);
        }
        (response, ending.answered_elsewhere())
    }

    /// Logs a 503 for want of room: at debug level each time, at warn level at most once per
    /// [`SATURATION_WARN_INTERVAL`] with the count since, so an overloaded node does not log a
    /// line per request it turns away.
    fn saturated(&self, app: &str, component: &str, reason: &Saturation, where_: &str) {
        tracing::debug!(?reason, "component saturated here {where_}; answering 503");
        let mut log = self.saturation.lock().unwrap_or_else(|p| p.into_inner());
        log.refused += 1;
        if log
            .warned
            .is_some_and(|at| at.elapsed() < SATURATION_WARN_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            app,
            component,
            refused = log.refused,
            "component saturated here {where_} ({}); answering 503 + Retry-After",
            reason.message(app, component),
        );
        *log = SaturationLog {
            warned: Some(Instant::now()),
            refused: 0,
        };
    }

    /// Sends `request` to the first of `targets` (invocation subjects) that takes it: one
    /// that is busy or has no subscriber passes it to the next; the last one's answer stands,
    /// except that a busy answer outranks a later "no subscriber". `fallback` says what comes
    /// after the last target. All of it is one `rpc_forward` span (kind `client`), whose
    /// context every attempt's `request` message carries; each attempt counts in the call's
    /// metrics.
    async fn forward_to<B>(
        &self,
        call: Call<'_>,
        request: hyper::Request<B>,
        targets: Vec<String>,
        fallback: Fallback,
    ) -> (hyper::Response<ResponseBody>, Ending)
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let span = tracing::info_span!(
            "rpc_forward",
            otel.kind = telemetry::traces_on().then_some("client"),
            messaging.system = "nats",
            messaging.destination.name = targets.first().map(String::as_str),
            app = call.app,
            component = call.component,
            attempts = 0i64,
            http.response.status_code = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let (response, ending) = self
            .forward_attempts(call, request, targets, fallback)
            .instrument(span.clone())
            .await;
        let status = response.status().as_u16();
        span.record("http.response.status_code", i64::from(status));
        match ending {
            Ending::NotRun { busy: true } => {
                telemetry::record_error(&span, &"every replica tried was busy");
            }
            Ending::NotRun { busy: false } => {
                telemetry::record_error(&span, &"no replica subscribed");
            }
            Ending::Answered(Some(InvocationResult::Timeout)) => {
                telemetry::record_error(&span, &"no replica answered within the request deadline");
            }
            Ending::Answered(Some(InvocationResult::Error)) => {
                telemetry::record_error(
                    &span,
                    &format_args!("the exchange with the replica failed (HTTP {status})"),
                );
            }
            Ending::Answered(_) if status >= 500 => {
                telemetry::record_error(&span, &format_args!("HTTP {status}"));
            }
            Ending::Answered(_) => {}
        }
        (response, ending)
    }

    /// [`Rpc::forward_to`] inside its span.
    async fn forward_attempts<B>(
        &self,
        call: Call<'_>,
        request: hyper::Request<B>,
        targets: Vec<String>,
        fallback: Fallback,
    ) -> (hyper::Response<ResponseBody>, Ending)
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let Call {
            app,
            component,
            resend,
            metrics,
        } = call;
        let timeout = self.max_timeout;
        let deadline = Instant::now() + timeout;
        let mut targets = targets.into_iter();
        let (mut spill, mut kept) = match fallback {
            Fallback::Spill => (true, None),
            Fallback::FullHere(response) => (false, Some(response)),
        };
        let Some(mut subject) = targets.next() else {
            let response = text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("component {component} of app {app} runs on no node of the lattice\n"),
            );
            return (response, Ending::NotRun { busy: false });
        };
        let span = tracing::Span::current();
        // The request's own `traceparent` travels unchanged: the serving node sets the one its
        // component sees (PROTOCOL.md §Traces).
        let (parts, body) = request.into_parts();
        let resendable = resend.allows(&parts.method);
        let mut chunker = Chunker::new(body);
        let mut head = RequestHead {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            scheme: "http".to_owned(),
            headers: wire::fields_of(&parts.headers),
            streamed: false,
            trailers: None,
            timeout_ms: timeout.as_millis() as u64,
        };
        let head_len = serde_json::to_vec(&head).map_or(0, |h| h.len()) + HEAD_SLACK;
        let limit = stream::chunk_limit(&self.client);
        let Some(room) = limit.checked_sub(head_len) else {
            let response = text_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!(
                    "request headers of {head_len} bytes do not fit the lattice's {limit}-byte messages\n"
                ),
            );
            return (response, Ending::Answered(None));
        };
        // What the client has sent by now (a slow upload is not waited for) goes with the head.
        let first = match chunker.first(room).await {
            Ok(first) => first,
            Err(e) => {
                let response = text_response(StatusCode::BAD_REQUEST, format!("{e}\n"));
                return (response, Ending::Answered(None));
            }
        };
        let mut headers = wire::frame_headers(FrameKind::Request, None);
        telemetry::inject_nats(&span, &mut headers);
        let mut attempts = 0i64;
        let mut any_busy = false;
        let first_subject = subject.clone();
        let mut resent_to: Vec<String> = Vec::new();
        (head.streamed, head.trailers) = (first.streamed, first.trailers);
        let first = first.data;
        let mut exchange = Forwarding {
            exchange: self.mux.open(),
            chunker: Some(chunker),
            replica: None,
            streamed: head.streamed,
        };
        loop {
            // Every attempt gets what is left of the deadline, and replies to the same
            // exchange: whichever replica accepts first is the one the exchange follows.
            head.timeout_ms = deadline
                .saturating_duration_since(Instant::now())
                .as_millis() as u64;
            attempts += 1;
            span.record("attempts", attempts);
            if let Err(e) = self
                .client
                .publish_with_reply_and_headers(
                    subject.clone(),
                    exchange.exchange.subject.clone(),
                    headers.clone(),
                    wire::encode_with_head(&head, &first),
                )
                .await
            {
                metrics.invocation_sent(InvocationResult::Error);
                let response = text_response(
                    StatusCode::BAD_GATEWAY,
                    format!("cannot send the request over NATS: {e}\n"),
                );
                return (response, Ending::Answered(Some(InvocationResult::Error)));
            }
            let attempt = Attempt {
                subject: &subject,
                app,
                component,
                deadline,
                resendable,
            };
            match self.await_reply(&attempt, &mut exchange).await {
                Reply::Done(response, result) => {
                    metrics.invocation_sent(result);
                    return (response, Ending::Answered(Some(result)));
                }
                Reply::Resend => {
                    metrics.invocation_sent(InvocationResult::Timeout);
                    let next =
                        self.resend_to(app, component, &subject, &first_subject, &mut resent_to);
                    tracing::warn!(
                        subject,
                        next,
                        "no replica accepted the request within {ACCEPT_TIMEOUT:?}; sending it again"
                    );
                    subject = next;
                }
                Reply::NotRun { response, busy } => {
                    metrics.invocation_sent(if busy {
                        InvocationResult::Busy
                    } else {
                        InvocationResult::NoResponders
                    });
                    any_busy |= busy;
                    if busy && spill && targets.len() == 0 {
                        spill = false;
                        targets = self.replicas_elsewhere(app, component).into_iter();
                    }
                    // A busy answer (503, Retry-After) outranks a later target's "runs
                    // nowhere": a replica exists, it is only full (heartbeats may still list a
                    // node that died or dropped the component).
                    let response = match kept.take() {
                        Some(earlier) if !busy => earlier,
                        _ => response,
                    };
                    // Nothing ran: the next replica may take it, whatever the method. A resend
                    // that found no subscriber went to a node that died (its heartbeats list it
                    // still) and goes on as resends do, ending with the first subject again,
                    // while the deadline lasts. A busy one ends it: every replica asked is full,
                    // and the answer is 503 + Retry-After at once, not another round.
                    let next = match targets.next() {
                        Some(next) => Some(next),
                        None if !busy && !resent_to.is_empty() && Instant::now() < deadline => {
                            Some(self.resend_to(
                                app,
                                component,
                                &subject,
                                &first_subject,
                                &mut resent_to,
                            ))
                        }
                        None => None,
                    };
                    match next {
                        Some(next) => {
                            tracing::debug!(subject, next, "replica busy or gone; trying the next");
                            exchange.replica = None;
                            subject = next;
                            kept = Some(response);
                        }
                        None => return (response, Ending::NotRun { busy: any_busy }),
                    }
                }
            }
        }
    }

    /// Where a request no replica accepted from `subject` goes next. The queue group may hand
    /// it to the same stalled replica again and again (nats-server 2.15 did so ten times in a
    /// row across leaf nodes): each replica elsewhere (by the heartbeats) is asked by its own
    /// subject once, recorded in `resent_to`, then `first_subject` again with `resent_to`
    /// cleared, so a live replica gets it within a second per replica.
    fn resend_to(
        &self,
        app: &str,
        component: &str,
        subject: &str,
        first_subject: &str,
        resent_to: &mut Vec<String>,
    ) -> String {
        let next = self
            .replicas_elsewhere(app, component)
            .into_iter()
            .find(|s| s != subject && !resent_to.contains(s));
        match next {
            Some(next) => {
                resent_to.push(next.clone());
                next
            }
            None => {
                resent_to.clear();
                first_subject.to_owned()
            }
        }
    }

    /// Waits for the replies to one attempt.
    async fn await_reply<B>(&self, attempt: &Attempt<'_>, forwarding: &mut Forwarding<B>) -> Reply
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let Attempt {
            subject,
            app,
            component,
            deadline,
            resendable,
        } = *attempt;
        let timeout = self.max_timeout;
        let mut accept_by = Some((Instant::now() + ACCEPT_TIMEOUT).min(deadline));
        loop {
            let accepted = forwarding.replica.is_some();
            let wait_until = match accept_by {
                Some(by) if !accepted => by,
                _ => deadline,
            };
            let frames = &mut forwarding.exchange.frames;
            let message = match tokio::time::timeout_at(wait_until.into(), frames.recv()).await {
                Ok(Some(message)) => *message,
                Ok(None) => {
                    return Reply::Done(
                        text_response(
                            StatusCode::BAD_GATEWAY,
                            "the lattice rpc exchange closed\n".into(),
                        ),
                        InvocationResult::Error,
                    );
                }
                Err(_) if !accepted && accept_by.is_some() && Instant::now() < deadline => {
                    accept_by = None;
                    if resendable && Instant::now() + ACCEPT_TIMEOUT < deadline {
                        return Reply::Resend;
                    }
                    // A stalled replica runs what it was sent when it wakes: sent again, this
                    // request could run twice. Its one replica gets until the deadline.
                    if !resendable {
                        tracing::warn!(
                            subject,
                            "no replica accepted the request within {ACCEPT_TIMEOUT:?}; not \
                             sending it again (its method is not idempotent and the component \
                             does not declare {RETRY_SAFE_KEY}), waiting for its replica"
                        );
                    }
                    continue;
                }
                Err(_) => {
                    tracing::warn!(subject, "no replica answered within the request deadline");
                    return Reply::Done(
                        text_response(
                            StatusCode::GATEWAY_TIMEOUT,
                            format!(
                                "no replica of component {component} of app {app} answered within {}\n",
                                humantime::format_duration(timeout)
                            ),
                        ),
                        InvocationResult::Timeout,
                    );
                }
            };
            if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                if accepted {
                    continue;
                }
                tracing::debug!(subject, "no replica subscribed");
                return Reply::NotRun {
                    response: text_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "component {component} of app {app} runs on no node of the lattice\n"
                        ),
                    ),
                    busy: false,
                };
            }
            let Some(from) = message.reply.as_ref().map(|r| r.to_string()) else {
                continue;
            };
            // A resent request may reach a second replica: the exchange follows the first one
            // that answers and ignores the other.
            match &forwarding.replica {
                Some(replica) if *replica != from => {
                    tracing::debug!(
                        subject,
                        "a second replica answered a resent request; ignored"
                    );
                    continue;
                }
                Some(_) => {}
                None => forwarding.replica = Some(from.clone()),
            }
            match FrameKind::of(&message) {
                Some(FrameKind::Accept) => {
                    if forwarding.streamed {
                        self.spawn_request_body(forwarding, from);
                    }
                }
                Some(FrameKind::Response) => {
                    let (head, first): (ResponseHead, Bytes) =
                        match wire::decode_with_head(message.payload) {
                            Ok(decoded) => decoded,
                            Err(e) => {
                                return Reply::Done(
                                    text_response(StatusCode::BAD_GATEWAY, format!("{e}\n")),
                                    InvocationResult::Error,
                                );
                            }
                        };
                    let (frames, guard) = forwarding.take_frames();
                    let source = BodySource {
                        first,
                        frames,
                        client: self.client.clone(),
                        peer: from,
                        idle: timeout,
                        guard,
                    };
                    return match build_response(&head, source) {
                        Ok(response) => Reply::Done(response, InvocationResult::Ok),
                        Err(e) => Reply::Done(
                            text_response(StatusCode::BAD_GATEWAY, format!("{e}\n")),
                            InvocationResult::Error,
                        ),
                    };
                }
                Some(FrameKind::Error) => {
                    let error: ErrorBody =
                        serde_json::from_slice(&message.payload).unwrap_or(ErrorBody {
                            status: 502,
                            message: "malformed error frame".into(),
                            busy: false,
                        });
                    let status =
                        StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_GATEWAY);
                    let mut response = text_response(status, format!("{}\n", error.message));
                    if !error.busy {
                        return Reply::Done(response, InvocationResult::Error);
                    }
                    response.headers_mut().insert(
                        hyper::header::RETRY_AFTER,
                        hyper::header::HeaderValue::from_static("1"),
                    );
                    return Reply::NotRun {
                        response,
                        busy: true,
                    };
                }
                other => tracing::debug!(kind = ?other, "unexpected rpc frame ignored"),
            }
        }
    }

    /// Streams the rest of the request body to the replica that accepted it.
    fn spawn_request_body<B>(&self, forwarding: &mut Forwarding<B>, replica: String)
    where
        B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let (Some(mut chunker), Some(mut acks)) =
            (forwarding.chunker.take(), forwarding.exchange.acks.take())
        else {
            return;
        };
        let peer = Peer {
            client: self.client.clone(),
            to: replica,
            reply: forwarding.exchange.subject.clone(),
            idle: self.max_timeout,
        };
        let keep = forwarding.exchange.guard.clone();
        tokio::spawn(
            async move {
                let _keep = keep;
                if let Err(e) = peer.send_body(&mut chunker, &mut acks).await {
                    tracing::warn!(
                        error = e,
                        "sending the request body over the lattice failed"
                    );
                }
            }
            .in_current_span(),
        );
    }

    /// Subscribes `component`'s replicas here to its queue group, and to this node's own
    /// subject of it (overflow from saturated nodes), and serves each invocation, until the
    /// returned [`Serving`] is dropped. One it has no room for is answered `busy` at once.
    /// Each invocation is an `rpc_invocation` span continuing the trace context of its
    /// message's headers, and counts in the component's `lattice_invocations_served_total`.
    ///
    /// # Errors
    /// A subscription cannot be made.
    pub async fn serve(self: &Arc<Self>, component: Arc<HttpComponent>) -> anyhow::Result<Serving> {
        let subject = subjects::http_invoke(&self.lattice, component.app(), component.name());
        let queue = subjects::replica_queue(component.app(), component.name());
        let direct = subjects::http_invoke_on(
            &self.lattice,
            component.app(),
            component.name(),
            &self.peers.node,
        );
        let mut subscriber = self
            .client
            .queue_subscribe(subject.clone(), queue.clone())
            .await
            .with_context(|| format!("subscribing to {subject} in queue group {queue}"))?;
        // In the same queue group too: while a start replaces this component, the old and the
        // new subscription share each message instead of both running it.
        let mut overflow = self
            .client
            .queue_subscribe(direct.clone(), queue.clone())
            .await
            .with_context(|| format!("subscribing to {direct} in queue group {queue}"))?;
        let stop = CancellationToken::new();
        let rpc = self.clone();
        let cancelled = stop.clone();
        let metrics = crate::admin::metrics::get().component(component.app(), component.name());
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = subscriber.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    message = overflow.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    () = cancelled.cancelled() => break,
                };
                let rpc = rpc.clone();
                let component = component.clone();
                let metrics = metrics.clone();
                // With traces off, the id is this node's own count (the requester's log has
                // another number for the same request); with traces on, both nodes log the
                // trace id.
                let traces = telemetry::traces_on();
                let span = tracing::info_span!(
                    "rpc_invocation",
                    otel.kind = traces.then_some("server"),
                    messaging.system = "nats",
                    app = component.app(),
                    component = component.name(),
                    request_id = (!traces).then(telemetry::next_request_id),
                    http.response.status_code = tracing::field::Empty,
                    error = tracing::field::Empty,
                );
                if traces {
                    telemetry::extract_nats(&span, message.headers.as_ref());
                    match telemetry::trace_id(&span) {
                        Some(trace) => span.record("request_id", tracing::field::display(trace)),
                        // A span the trace layer does not record: a number, as traces off.
                        None => span.record("request_id", telemetry::next_request_id()),
                    };
                }
                let tasks = rpc.serving.clone();
                tasks.spawn(
                    async move {
                        let result = rpc.serve_one(&component, message).await;
                        if let Some(result) = result {
                            metrics.invocation_served(result);
                        }
                    }
                    .instrument(span),
                );
            }
            // What NATS delivered before it took the unsubscribe would be lost, and a request
            // that may not be resent would wait for its deadline: each requester is told at
            // once that nothing ran here, so it goes elsewhere (a POST too).
            let _ = subscriber.drain().await;
            let _ = overflow.drain().await;
            let mut left = futures::stream::select(subscriber, overflow);
            let turned_away = async {
                while let Some(message) = left.next().await {
                    // Not a 503 of this node's ingress: the requester tries its next target.
                    if rpc.turn_away(&component, &message).await {
                        metrics.invocation_served(InvocationResult::Busy);
                    }
                }
            };
            let _ = tokio::time::timeout(LEAVE_DRAIN, turned_away).await;
        });
        tracing::debug!(subject, queue, "serving lattice invocations");
        Ok(Serving {
            _stop: stop.drop_guard(),
        })
    }

    /// A new exchange of this node, and the peer that answers the requester at `reply` from
    /// it.
    fn answer_to(&self, reply: &async_nats::Subject) -> (mux::Exchange, Peer) {
        let exchange = self.mux.open();
        let peer = Peer {
            client: self.client.clone(),
            to: reply.to_string(),
            reply: exchange.subject.clone(),
            idle: self.max_timeout,
        };
        (exchange, peer)
    }

    /// Answers an invocation delivered after `component` stopped serving here `busy`: it did
    /// not run. False when it had no reply subject (nothing answered).
    async fn turn_away(&self, component: &HttpComponent, message: &async_nats::Message) -> bool {
        let Some(reply) = &message.reply else {
            return false;
        };
        // The requester follows frames by their reply subject: this one needs one.
        let (_exchange, peer) = self.answer_to(reply);
        tracing::debug!(
            app = component.app(),
            component = component.name(),
            "invocation arrived as the replica stopped; answered busy"
        );
        peer.send_busy(&format!(
            "component {} of app {} stopped on this node",
            component.name(),
            component.app()
        ))
        .await;
        true
    }

    /// Serves one invocation (inside its span); `None` when it had no reply subject (nothing
    /// to answer), else how it went.
    async fn serve_one(
        &self,
        component: &HttpComponent,
        message: async_nats::Message,
    ) -> Option<InvocationResult> {
        let reply = message.reply.clone()?;
        let span = tracing::Span::current();
        let (exchange, peer) = self.answer_to(&reply);
        let (head, first): (RequestHead, Bytes) = match wire::decode_with_head(message.payload) {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::warn!(error = %e, "malformed invocation");
                telemetry::record_error(&span, &e);
                peer.send_error(400, &e.to_string()).await;
                return Some(InvocationResult::Error);
            }
        };
        let timeout = Duration::from_millis(head.timeout_ms).min(self.max_timeout);
        let mux::Exchange {
            acks,
            frames,
            guard,
            ..
        } = exchange;
        let Some(mut acks) = acks else {
            return Some(InvocationResult::Error);
        };
        // The route lives until the response is sent: its acks come back through it.
        let _route = guard.clone();
        let source = BodySource {
            first,
            frames,
            client: self.client.clone(),
            peer: peer.to.clone(),
            idle: timeout,
            guard,
        };
        let mut request = match build_request(&head, source) {
            Ok(request) => request,
            Err(e) => {
                telemetry::record_error(&span, &e);
                peer.send_error(400, &e).await;
                return Some(InvocationResult::Error);
            }
        };
        // With traces on, the component sees this invocation's span as its caller, as a
        // component behind the ingress sees `http_request` (PROTOCOL.md §Traces).
        telemetry::replace_http(&span, request.headers_mut());
        // Room first: a request this node cannot run now is refused before anything of it
        // ran, so the requester may take it elsewhere.
        let response = match component.admit(timeout).await {
            Err(NotAdmitted::Busy(reason)) => {
                tracing::debug!(?reason, "no room for a lattice invocation; answered busy");
                let message = reason.message(component.app(), component.name());
                span.record("http.response.status_code", 503i64);
                telemetry::record_error(&span, &message);
                peer.send_busy(&message).await;
                return Some(InvocationResult::Busy);
            }
            Err(NotAdmitted::Failed(response)) => response,
            Ok(admitted) => {
                // The requester resends what no replica accepts within ACCEPT_TIMEOUT (if it
                // may). A streamed body needs the accept at once (it says where to send the
                // rest); otherwise a response ready within ACCEPT_DELAY stands for it: one
                // message less per quick request.
                if head.streamed
                    && peer
                        .send(FrameKind::Accept, None, Bytes::new())
                        .await
                        .is_err()
                {
                    return Some(InvocationResult::Error);
                }
                let handling = admitted.serve(request, Scheme::Http);
                tokio::pin!(handling);
                tokio::select! {
                    response = &mut handling => response,
                    () = tokio::time::sleep(ACCEPT_DELAY), if !head.streamed => {
                        // The guest runs inside `handling`: it goes on while the accept is sent.
                        let accept = peer.send(FrameKind::Accept, None, Bytes::new());
                        tokio::pin!(accept);
                        let mut accepted = false;
                        loop {
                            tokio::select! {
                                response = &mut handling => break response,
                                _ = &mut accept, if !accepted => accepted = true,
                            }
                        }
                    }
                }
            }
        };
        let status = response.status().as_u16();
        span.record("http.response.status_code", i64::from(status));
        if status >= 500 {
            telemetry::record_error(&span, &format_args!("HTTP {status}"));
        }
        tracing::debug!("lattice invocation served");

        let (parts, body) = response.into_parts();
        let mut head = ResponseHead {
            status: parts.status.as_u16(),
            headers: wire::fields_of(&parts.headers),
            streamed: false,
            trailers: None,
        };
        let head_len = serde_json::to_vec(&head).map_or(0, |h| h.len()) + HEAD_SLACK;
        let room = stream::chunk_limit(&self.client)
            .saturating_sub(head_len)
            .max(1);
        let mut chunker = Chunker::new(body);
        // The head goes out with what the body has by now; a slow (or endless) body follows.
        let first = match chunker.first(room).await {
            Ok(first) => first,
            Err(e) => {
                telemetry::record_error(&span, &e);
                peer.send_error(502, &e).await;
                return Some(InvocationResult::Error);
            }
        };
        (head.streamed, head.trailers) = (first.streamed, first.trailers);
        let first = first.data;
        if let Err(e) = peer
            .send(
                FrameKind::Response,
                None,
                wire::encode_with_head(&head, &first),
            )
            .await
        {
            tracing::warn!(
                error = e,
                "sending the response head over the lattice failed"
            );
            telemetry::record_error(&span, &e);
            peer.send_error(
                502,
                &format!("the replica could not send its response: {e}"),
            )
            .await;
            return Some(InvocationResult::Error);
        }
        if !head.streamed {
            return Some(InvocationResult::Ok);
        }
        if let Err(e) = peer.send_body(&mut chunker, &mut acks).await {
            tracing::warn!(
                error = e,
                "streaming the response body over the lattice failed"
            );
            telemetry::record_error(&span, &e);
            return Some(InvocationResult::Error);
        }
        Some(InvocationResult::Ok)
    }
}

/// The first body bytes of a `request` or `response` frame, and where the rest arrives.
struct BodySource {
    first: Bytes,
    frames: tokio::sync::mpsc::Receiver<mux::Inbound>,
    client: async_nats::Client,
    /// The exchange subject of the side sending the body.
    peer: String,
    idle: Duration,
    guard: Arc<mux::RouteGuard>,
}

impl BodySource {
    /// `first` with `trailers` when the frame held the whole body, else `first` followed by
    /// the `data` frames to come.
    fn into_body(
        self,
        streamed: bool,
        trailers: Option<&[wire::Field]>,
    ) -> Result<ResponseBody, String> {
        if streamed {
            return Ok(streamed_body(
                self.client,
                self.peer,
                self.first,
                self.frames,
                self.idle,
                self.guard,
            ));
        }
        let trailers = trailers
            .map(wire::header_map)
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(complete_body(self.first, trailers))
    }
}

/// The request a replica hands its component.
fn build_request(
    head: &RequestHead,
    source: BodySource,
) -> Result<hyper::Request<ResponseBody>, String> {
    let body = source.into_body(head.streamed, head.trailers.as_deref())?;
    let mut request = hyper::Request::builder()
        .method(head.method.as_str())
        .uri(head.uri.as_str())
        .body(body)
        .map_err(|e| format!("invalid request line: {e}"))?;
    *request.headers_mut() = wire::header_map(&head.headers).map_err(|e| e.to_string())?;
    Ok(request)
}

/// The response the ingress returns from a replica's `response` frame.
fn build_response(
    head: &ResponseHead,
    source: BodySource,
) -> Result<hyper::Response<ResponseBody>, String> {
    let body = source.into_body(head.streamed, head.trailers.as_deref())?;
    let mut response = hyper::Response::new(body);
    *response.status_mut() =
        StatusCode::from_u16(head.status).map_err(|_| format!("invalid status {}", head.status))?;
    *response.headers_mut() = wire::header_map(&head.headers).map_err(|e| e.to_string())?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::Method;

    #[test]
    fn only_idempotent_methods_are_resent_unless_the_component_declares_it_safe() {
        for method in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(Resend::Idempotent.allows(&method), "{method}");
        }
        for method in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!Resend::Idempotent.allows(&method), "{method}");
            assert!(Resend::Any.allows(&method), "{method}");
        }
        let config = |value: &str| {
            std::collections::BTreeMap::from([(RETRY_SAFE_KEY.to_owned(), value.to_owned())])
        };
        assert_eq!(Resend::of_config(&config("true")), Resend::Any);
        assert_eq!(Resend::of_config(&config(" TRUE ")), Resend::Any);
        assert_eq!(Resend::of_config(&config("false")), Resend::Idempotent);
        assert_eq!(Resend::of_config(&config("yes")), Resend::Idempotent);
        assert_eq!(
            Resend::of_config(&std::collections::BTreeMap::new()),
            Resend::Idempotent
        );
    }
}
