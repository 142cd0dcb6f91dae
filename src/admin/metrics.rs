//! The node's metrics: one Prometheus registry (the `prometheus-client` crate), rendered in the
//! OpenMetrics text format by the admin endpoint's `/metrics`.
//!
//! One registry per process, installed by `lattice up` ([`install`]) when the admin endpoint is
//! on; until then, and with `--admin-addr none`, [`get`] returns a disabled [`Metrics`] whose
//! every record is a no-op (no atomic, no lock), which is what `bench/http.sh` compares against.
//!
//! Hot paths never look a series up: a component's handles ([`ComponentMetrics`]) are made once,
//! when it is deployed or routed, and recording is then an atomic add (a counter) or one short
//! mutex (a histogram). Label values come from a fixed set (status class, reason, task name,
//! backend) or from app and component names, and those series are bounded: past
//! [`MAX_COMPONENT_SERIES`] (app, component) pairs, further ones share the pair
//! `("(other)", "(other)")`, and requests no route took count under [`UNROUTED`]
//! (`("(none)", "(none)")`): neither sentinel is a valid app or component name (a name is
//! `[A-Za-z0-9_-]+`), so no app's series can merge with them. No label carries a path, a
//! header or any other request data.
//!
//! `lattice_http_requests_total{status_class}` takes one of six values: `1xx` … `5xx` for a
//! response head the ingress sent, and `cancelled` for a request whose client went away (closed
//! or reset its connection, or the listener's drain ran out) before the response head.
//!
//! Metric names follow Prometheus conventions (`_total` counters, `_seconds` histograms, base
//! units); see <https://prometheus.io/docs/practices/naming/>. README.md §Metrics lists them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// At most this many (app, component) label pairs get series of their own; the ones after share
/// `("(other)", "(other)")`, so a lattice with many apps cannot grow a node's `/metrics` without
/// bound.
pub const MAX_COMPONENT_SERIES: usize = 1_000;

/// The label value that stands for every (app, component) pair past [`MAX_COMPONENT_SERIES`].
/// Not a valid name (see the module docs), so no app's series merges with it.
pub const OTHER: &str = "(other)";

/// The app and component label of requests no route took (400 for a bad host, 404): one
/// bounded series, no host or path in it. Not a valid name, as [`OTHER`].
pub const UNROUTED: &str = "(none)";

/// `Content-Type` of [`Metrics::render`]'s text: OpenMetrics 1.0, which Prometheus scrapes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// Turns metrics on for this process (call once, at the start of `lattice up`, before any part
/// that records): later calls keep the first registry. Returns the installed [`Metrics`].
pub fn install() -> &'static Metrics {
    GLOBAL.get_or_init(Metrics::enabled)
}

/// The process's metrics: the registry [`install`] made, else a disabled one.
pub fn get() -> &'static Metrics {
    static DISABLED: Metrics = Metrics { inner: None };
    GLOBAL.get().unwrap_or(&DISABLED)
}

/// A registry of the node's metrics, or a disabled one (every method a no-op).
pub struct Metrics {
    inner: Option<Arc<Inner>>,
}

/// The `status_class` label: HTTP status classes `1xx` … `5xx`, and `cancelled` (the client
/// went away before the response head).
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "cancelled"];

/// Index of `cancelled` in [`STATUS_CLASSES`].
const CANCELLED: usize = 5;

/// Every [`InvocationResult`], in the order of [`ComponentInner::sent`] and `served`.
const INVOCATION_RESULTS: [InvocationResult; 5] = [
    InvocationResult::Ok,
    InvocationResult::Busy,
    InvocationResult::Timeout,
    InvocationResult::NoResponders,
    InvocationResult::Error,
];

/// Every [`Unavailable`] reason, in the order of `Inner::unavailable`.
const UNAVAILABLE_REASONS: [Unavailable; 4] = [
    Unavailable::Concurrency,
    Unavailable::Pool,
    Unavailable::NoReplica,
    Unavailable::Busy,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    app: String,
    component: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    app: String,
    component: String,
    /// `local`: a replica on this node served it; `forwarded`: one elsewhere, over NATS.
    served: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    app: String,
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InvocationLabels {
    app: String,
    component: String,
    result: InvocationResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: Unavailable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectionLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: ReconcileAction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyValueLabels {
    backend: KeyValueBackend,
    operation: &'static str,
    result: OpResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// Why a request got a 503 (`lattice_http_unavailable_total{reason}`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Unavailable {
    /// The component's concurrency bound on this node (replicas × `--replica-concurrency`),
    /// with no idle replica elsewhere.
    Concurrency,
    /// The pooling allocator had no free instance slot (`--max-instances`), with no idle
    /// replica elsewhere.
    Pool,
    /// No replica of the component runs anywhere the node can reach.
    NoReplica,
    /// Every replica elsewhere answered busy.
    Busy,
}

impl Unavailable {
    /// Its index in [`UNAVAILABLE_REASONS`].
    fn index(self) -> usize {
        self as usize
    }
}

impl InvocationResult {
    /// Its index in [`INVOCATION_RESULTS`].
    fn index(self) -> usize {
        self as usize
    }
}

/// The outcome of one cross-node invocation, sent or served
/// (`lattice_invocations_{sent,served}_total{result}`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum InvocationResult {
    /// The serving replica answered (any HTTP status of the component's).
    Ok,
    /// The serving node had no room (503 + `Retry-After`).
    Busy,
    /// No node answered in time.
    Timeout,
    /// No node serves the component (NATS: no responders).
    NoResponders,
    /// Anything else: the wire, a broken stream, a trap that ended the call.
    Error,
}

/// What one reconcile pass did to a replica here (`lattice_reconcile_actions_total{action}`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ReconcileAction {
    /// A replica started.
    Start,
    /// A replica stopped.
    Stop,
    /// A replica moved to a new version of its app.
    Update,
    /// A start that failed (it is retried).
    Failed,
}

/// The store behind a keyvalue operation (`lattice_keyvalue_operations_total{backend}`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum KeyValueBackend {
    /// `keyvalue-nats`: a JetStream KV bucket, lattice-wide.
    Nats,
    /// `keyvalue-sled`: the node's own database.
    Sled,
}

/// Whether an operation succeeded.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum OpResult {
    /// It did.
    Ok,
    /// It returned an error to its caller.
    Error,
}

/// Label values in Prometheus's style (`no_responders`, `sled`), not the variants' Rust names
/// (`NoResponders`, `Sled`) that `derive(EncodeLabelValue)` would write.
macro_rules! label_values {
    ($($ty:ty { $($variant:ident => $text:literal),+ $(,)? })+) => {$(
        impl $ty {
            /// The label value, as `/metrics` shows it.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl EncodeLabelValue for $ty {
            fn encode(
                &self,
                encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
            ) -> Result<(), std::fmt::Error> {
                self.as_str().encode(encoder)
            }
        }
    )+};
}

label_values! {
    Unavailable {
        Concurrency => "concurrency",
        Pool => "pool",
        NoReplica => "no_replica",
        Busy => "busy",
    }
    InvocationResult {
        Ok => "ok",
        Busy => "busy",
        Timeout => "timeout",
        NoResponders => "no_responders",
        Error => "error",
    }
    ReconcileAction {
        Start => "start",
        Stop => "stop",
        Update => "update",
        Failed => "failed",
    }
    KeyValueBackend {
        Nats => "nats",
        Sled => "sled",
    }
    OpResult {
        Ok => "ok",
        Error => "error",
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily<DurationLabels>,
    replicas: Family<ComponentLabels, Gauge>,
    instances: Family<ComponentLabels, Gauge>,
    sent: Family<InvocationLabels, Counter>,
    served: Family<InvocationLabels, Counter>,
    /// By reason, in the order of [`UNAVAILABLE_REASONS`]: made once, so that counting is an
    /// atomic add.
    unavailable: [Counter; 4],
    pool_slots_in_use: Gauge,
    pool_slots: Gauge,
    nats_server_restarts: Counter,
    uplink: Family<StateLabels, Gauge>,
    reconcile_passes: Counter,
    reconcile_actions: Family<ActionLabels, Counter>,
    compile_seconds: Histogram,
    task_restarts: Family<TaskLabels, Counter>,
    keyvalue: Family<KeyValueLabels, Counter>,
    membership_rejected: Family<RejectionLabels, Counter>,
    /// The (app, component) pairs that have series, for the [`MAX_COMPONENT_SERIES`] bound.
    components: Mutex<HashMap<(String, String), ComponentMetrics>>,
}

/// Request latencies: 0.5 ms to ~65 s, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_5, 2.0, 18))
}

/// Compile times: 10 ms to ~80 s, doubling.
fn compile_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

impl Metrics {
    fn enabled() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "lattice_http_requests",
            "HTTP requests the ingress answered, by app, component and status class",
            requests.clone(),
        );
        let durations: HistogramFamily<DurationLabels> =
            Family::new_with_constructor(duration_histogram);
        registry.register(
            "lattice_http_request_duration_seconds",
            "Time from a request's routing to its response head, by app, component and where it \
             was served (local, forwarded)",
            durations.clone(),
        );
        let replicas = Family::<ComponentLabels, Gauge>::default();
        registry.register(
            "lattice_replicas",
            "Replicas of each component this node runs",
            replicas.clone(),
        );
        let instances = Family::<ComponentLabels, Gauge>::default();
        registry.register(
            "lattice_instances",
            "Component instances alive now (requests being served, and idle ones kept for \
             reuse), by app and component",
            instances.clone(),
        );
        let sent = Family::<InvocationLabels, Counter>::default();
        registry.register(
            "lattice_invocations_sent",
            "Invocations this node sent to replicas on other nodes over NATS, by result",
            sent.clone(),
        );
        let served = Family::<InvocationLabels, Counter>::default();
        registry.register(
            "lattice_invocations_served",
            "Invocations from other nodes this node's replicas served, by result",
            served.clone(),
        );
        let unavailable = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "lattice_http_unavailable",
            "503 answers of the ingress, by reason",
            unavailable.clone(),
        );
        let unavailable = UNAVAILABLE_REASONS
            .map(|reason| unavailable.get_or_create_owned(&ReasonLabels { reason }));
        let pool_slots_in_use = Gauge::default();
        registry.register(
            "lattice_pool_slots_in_use",
            "Instance slots of the pooling allocator in use",
            pool_slots_in_use.clone(),
        );
        let pool_slots = Gauge::default();
        registry.register(
            "lattice_pool_slots",
            "Instance slots of the pooling allocator (--max-instances)",
            pool_slots.clone(),
        );
        let nats_server_restarts = Counter::default();
        registry.register(
            "lattice_nats_server_restarts",
            "Restarts of the supervised nats-server after it exited",
            nats_server_restarts.clone(),
        );
        let uplink = Family::<StateLabels, Gauge>::default();
        registry.register(
            "lattice_uplink_state",
            "1 for the leaf uplink's current state (none, external, connecting, connected, \
             failed, disconnected), 0 for the others",
            uplink.clone(),
        );
        let reconcile_passes = Counter::default();
        registry.register(
            "lattice_reconcile_passes",
            "Reconcile passes this node ran",
            reconcile_passes.clone(),
        );
        let reconcile_actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "lattice_reconcile_actions",
            "What reconcile passes did to replicas on this node, by action",
            reconcile_actions.clone(),
        );
        let compile_seconds = compile_histogram();
        registry.register(
            "lattice_component_compile_duration_seconds",
            "Time to compile a component (code-cache misses only)",
            compile_seconds.clone(),
        );
        let task_restarts = Family::<TaskLabels, Counter>::default();
        registry.register(
            "lattice_task_restarts",
            "Restarts of the node's supervised tasks, by task",
            task_restarts.clone(),
        );
        let keyvalue = Family::<KeyValueLabels, Counter>::default();
        registry.register(
            "lattice_keyvalue_operations",
            "wasi:keyvalue operations of components, by backend, operation and result",
            keyvalue.clone(),
        );
        let membership_rejected = Family::<RejectionLabels, Counter>::default();
        registry.register(
            "lattice_membership_rejected",
            "Host events this node refused, by reason",
            membership_rejected.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("lattice_build_info", "The lattice binary's version", build);
        Metrics {
            inner: Some(Arc::new(Inner {
                registry,
                requests,
                durations,
                replicas,
                instances,
                sent,
                served,
                unavailable,
                pool_slots_in_use,
                pool_slots,
                nats_server_restarts,
                uplink,
                reconcile_passes,
                reconcile_actions,
                compile_seconds,
                task_restarts,
                keyvalue,
                membership_rejected,
                components: Mutex::new(HashMap::new()),
            })),
        }
    }

    /// Whether this registry records (false: `--admin-addr none`, or before [`install`]).
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Everything recorded so far, in the OpenMetrics text format ([`CONTENT_TYPE`]); empty
    /// when disabled.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Some(inner) = &self.inner {
            // Writing into a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut text, &inner.registry);
        }
        text
    }

    /// The handles of component `component` of app `app`: make them once (at deploy or route
    /// time) and keep them. Past [`MAX_COMPONENT_SERIES`] pairs, the shared `_other` ones.
    pub fn component(&self, app: &str, component: &str) -> ComponentMetrics {
        let Some(inner) = &self.inner else {
            return ComponentMetrics { inner: None };
        };
        let mut components = inner
            .components
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let key = (app.to_owned(), component.to_owned());
        if let Some(found) = components.get(&key) {
            return found.clone();
        }
        let key = if components.len() < MAX_COMPONENT_SERIES {
            key
        } else {
            (OTHER.to_owned(), OTHER.to_owned())
        };
        components
            .entry(key.clone())
            .or_insert_with(|| ComponentMetrics::new(inner, &key.0, &key.1))
            .clone()
    }

    /// Counts a 503 of the ingress.
    pub fn unavailable(&self, reason: Unavailable) {
        if let Some(inner) = &self.inner {
            inner.unavailable[reason.index()].inc();
        }
    }

    /// Sets the pooling allocator's slots: `in_use` of `total`.
    pub fn pool_slots(&self, in_use: u64, total: u64) {
        if let Some(inner) = &self.inner {
            inner.pool_slots_in_use.set(gauge_value(in_use));
            inner.pool_slots.set(gauge_value(total));
        }
    }

    /// Counts a restart of the supervised nats-server.
    pub fn nats_server_restarted(&self) {
        if let Some(inner) = &self.inner {
            inner.nats_server_restarts.inc();
        }
    }

    /// Records the uplink's state: `state` (one of `none`, `external`, `connecting`,
    /// `connected`, `failed`, `disconnected`) becomes 1, the others 0.
    pub fn uplink_state(&self, state: &'static str) {
        const STATES: [&str; 6] = [
            "none",
            "external",
            "connecting",
            "connected",
            "failed",
            "disconnected",
        ];
        if let Some(inner) = &self.inner {
            for known in STATES {
                let value = i64::from(known == state);
                inner
                    .uplink
                    .get_or_create(&StateLabels { state: known })
                    .set(value);
            }
        }
    }

    /// Counts one reconcile pass.
    pub fn reconcile_pass(&self) {
        if let Some(inner) = &self.inner {
            inner.reconcile_passes.inc();
        }
    }

    /// Counts `count` reconcile actions of kind `action`.
    pub fn reconcile_actions(&self, action: ReconcileAction, count: u64) {
        if let Some(inner) = &self.inner
            && count > 0
        {
            inner
                .reconcile_actions
                .get_or_create(&ActionLabels { action })
                .inc_by(count);
        }
    }

    /// Records one component compile that took `took`.
    pub fn compiled(&self, took: Duration) {
        if let Some(inner) = &self.inner {
            inner.compile_seconds.observe(took.as_secs_f64());
        }
    }

    /// Counts a restart of supervised task `task` (one of the node's fixed task names).
    pub fn task_restarted(&self, task: &str) {
        if let Some(inner) = &self.inner {
            inner
                .task_restarts
                .get_or_create(&TaskLabels {
                    task: task.to_owned(),
                })
                .inc();
        }
    }

    /// Counts one keyvalue `operation` (a fixed name: `get`, `set`, `delete`, `exists`,
    /// `list-keys`, `increment`, `get-many`, `set-many`, `delete-many`) on `backend`.
    pub fn keyvalue(&self, backend: KeyValueBackend, operation: &'static str, result: OpResult) {
        if let Some(inner) = &self.inner {
            inner
                .keyvalue
                .get_or_create(&KeyValueLabels {
                    backend,
                    operation,
                    result,
                })
                .inc();
        }
    }

    /// Sets the count of host events refused for `reason` (a fixed name, as
    /// `Rejections::snapshot` gives them) to `total`, if it grew.
    pub fn membership_rejected(&self, reason: &'static str, total: u64) {
        if let Some(inner) = &self.inner {
            let counter = inner
                .membership_rejected
                .get_or_create(&RejectionLabels { reason });
            let now = counter.get();
            if total > now {
                counter.inc_by(total - now);
            }
        }
    }
}

fn gauge_value(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// One component's series, made by [`Metrics::component`]; cheap to clone, no-ops when metrics
/// are off.
#[derive(Clone)]
pub struct ComponentMetrics {
    inner: Option<Arc<ComponentInner>>,
}

struct ComponentInner {
    /// By status class: `1xx` at 0 … `5xx` at 4, `cancelled` at 5 ([`STATUS_CLASSES`]).
    requests: [Counter; 6],
    /// Invocations sent, by result ([`INVOCATION_RESULTS`]).
    sent: [Counter; 5],
    /// Invocations served, by result ([`INVOCATION_RESULTS`]).
    served: [Counter; 5],
    local: Histogram,
    forwarded: Histogram,
    replicas: Gauge,
    instances: Gauge,
}

impl ComponentMetrics {
    fn new(inner: &Arc<Inner>, app: &str, component: &str) -> ComponentMetrics {
        let labels = ComponentLabels {
            app: app.to_owned(),
            component: component.to_owned(),
        };
        let requests = STATUS_CLASSES.map(|status_class| {
            inner
                .requests
                .get_or_create_owned(&RequestLabels {
                    app: app.to_owned(),
                    component: component.to_owned(),
                    status_class,
                })
                .clone()
        });
        let duration = |served| {
            inner
                .durations
                .get_or_create_owned(&DurationLabels {
                    app: app.to_owned(),
                    component: component.to_owned(),
                    served,
                })
                .clone()
        };
        let invocations = |family: &Family<InvocationLabels, Counter>| {
            INVOCATION_RESULTS.map(|result| {
                family.get_or_create_owned(&InvocationLabels {
                    app: app.to_owned(),
                    component: component.to_owned(),
                    result,
                })
            })
        };
        ComponentMetrics {
            inner: Some(Arc::new(ComponentInner {
                requests,
                sent: invocations(&inner.sent),
                served: invocations(&inner.served),
                local: duration("local"),
                forwarded: duration("forwarded"),
                replicas: inner.replicas.get_or_create_owned(&labels),
                instances: inner.instances.get_or_create_owned(&labels),
            })),
        }
    }

    /// Counts one answered request with HTTP status `status` that took `took` from routing to
    /// the response head, answered by a replica elsewhere (`forwarded`: its response head
    /// came over the lattice) or by this node (its replica, or a 4xx/5xx the node decided).
    pub fn request(&self, status: u16, took: Duration, forwarded: bool) {
        let Some(inner) = &self.inner else { return };
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        inner.requests[class].inc();
        let histogram = if forwarded {
            &inner.forwarded
        } else {
            &inner.local
        };
        histogram.observe(took.as_secs_f64());
    }

    /// Counts one request whose client went away before its response head (status class
    /// `cancelled`; no duration is recorded).
    pub fn cancelled(&self) {
        if let Some(inner) = &self.inner {
            inner.requests[CANCELLED].inc();
        }
    }

    /// Sets the replicas of this component that this node runs.
    pub fn replicas(&self, count: u64) {
        if let Some(inner) = &self.inner {
            inner.replicas.set(gauge_value(count));
        }
    }

    /// One instance more alive (`true`) or one fewer (`false`).
    pub fn instance(&self, alive: bool) {
        if let Some(inner) = &self.inner {
            if alive {
                inner.instances.inc();
            } else {
                inner.instances.dec();
            }
        }
    }

    /// Counts one invocation this node sent to another node's replica.
    pub fn invocation_sent(&self, result: InvocationResult) {
        if let Some(inner) = &self.inner {
            inner.sent[result.index()].inc();
        }
    }

    /// Counts one invocation from another node that a replica here served.
    pub fn invocation_served(&self, result: InvocationResult) {
        if let Some(inner) = &self.inner {
            inner.served[result.index()].inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_records_nothing_and_renders_empty() {
        let metrics = Metrics { inner: None };
        metrics
            .component("a", "c")
            .request(200, Duration::ZERO, false);
        metrics.unavailable(Unavailable::Pool);
        assert!(!metrics.is_enabled());
        assert_eq!(metrics.render(), "");
    }

    #[test]
    fn requests_are_counted_by_status_class() {
        let metrics = Metrics::enabled();
        let component = metrics.component("shop", "front");
        component.request(200, Duration::from_millis(2), false);
        component.request(204, Duration::from_millis(2), true);
        component.request(503, Duration::from_millis(2), false);
        // The same handles for the same pair.
        metrics
            .component("shop", "front")
            .request(404, Duration::ZERO, false);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"lattice_http_requests_total{app="shop",component="front",status_class="2xx"} 2"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"status_class="4xx"} 1"#), "{text}");
        assert!(text.contains(r#"status_class="5xx"} 1"#), "{text}");
        assert!(
            text.contains(
                r#"lattice_http_request_duration_seconds_count{app="shop",component="front",served="forwarded"} 1"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn component_series_are_bounded() {
        let metrics = Metrics::enabled();
        for i in 0..MAX_COMPONENT_SERIES + 10 {
            metrics
                .component("app", &format!("c{i}"))
                .request(200, Duration::ZERO, false);
        }
        let text = metrics.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("lattice_http_requests_total{") && l.contains("2xx"))
            .count();
        assert_eq!(series, MAX_COMPONENT_SERIES + 1);
        assert!(
            text.contains(
                r#"lattice_http_requests_total{app="(other)",component="(other)",status_class="2xx"} 10"#
            ),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_lowercase() {
        let metrics = Metrics::enabled();
        metrics.keyvalue(KeyValueBackend::Sled, "get", OpResult::Ok);
        metrics.reconcile_actions(ReconcileAction::Start, 2);
        metrics.unavailable(Unavailable::NoReplica);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"lattice_keyvalue_operations_total{backend="sled",operation="get",result="ok"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"lattice_reconcile_actions_total{action="start"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"lattice_http_unavailable_total{reason="no_replica"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn cancelled_requests_and_invocations_count_in_their_series() {
        let metrics = Metrics::enabled();
        let component = metrics.component("shop", "front");
        component.cancelled();
        component.invocation_sent(InvocationResult::NoResponders);
        component.invocation_served(InvocationResult::Busy);
        metrics.unavailable(Unavailable::Busy);
        let text = metrics.render();
        for line in [
            r#"lattice_http_requests_total{app="shop",component="front",status_class="cancelled"} 1"#,
            r#"lattice_invocations_sent_total{app="shop",component="front",result="no_responders"} 1"#,
            r#"lattice_invocations_served_total{app="shop",component="front",result="busy"} 1"#,
            r#"lattice_invocations_served_total{app="shop",component="front",result="ok"} 0"#,
            r#"lattice_http_unavailable_total{reason="busy"} 1"#,
            r#"lattice_http_unavailable_total{reason="pool"} 0"#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }

    #[test]
    fn sentinels_are_no_valid_name() {
        for sentinel in [OTHER, UNROUTED] {
            assert!(
                crate::name::Name::check(sentinel).is_err(),
                "{sentinel} must not be a valid name"
            );
        }
    }

    #[test]
    fn uplink_state_is_one_hot() {
        let metrics = Metrics::enabled();
        metrics.uplink_state("connecting");
        metrics.uplink_state("connected");
        let text = metrics.render();
        assert!(
            text.contains(r#"lattice_uplink_state{state="connected"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"lattice_uplink_state{state="connecting"} 0"#),
            "{text}"
        );
    }
}
