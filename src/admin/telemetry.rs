//! The node's log and traces: the global `tracing` subscriber (text or JSON lines on stderr) and,
//! when configured, an OpenTelemetry layer that exports spans over OTLP/HTTP (protobuf).
//!
//! Traces follow the OpenTelemetry specification's environment variables
//! (<https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/>):
//! they are on when `--otlp-endpoint`, `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set and `OTEL_SDK_DISABLED` is not `true` nor
//! `OTEL_TRACES_EXPORTER` `none`; `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the
//! service (default `lattice`). The exporter speaks OTLP/HTTP with protobuf only: a
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (or `…_TRACES_PROTOCOL`) other than `http/protobuf` is warned
//! about and not followed. `https://` endpoints work (rustls on the ring provider, the system's
//! roots). The SDK's own warnings (a failed export, a full queue) go to the log under targets
//! `opentelemetry*`, never into the traces. Context travels as W3C Trace Context
//! (<https://www.w3.org/TR/trace-context/>): the `traceparent` and `tracestate` headers of HTTP
//! requests, and the same names as NATS message headers between nodes ([`inject_nats`],
//! [`extract_nats`]). With traces off, injecting and extracting do nothing (one relaxed atomic
//! load: no lock, no allocation), so the request path pays nothing for them. An incoming
//! `traceparent` longer than [`MAX_TRACEPARENT`] bytes is ignored, and a `tracestate` longer
//! than [`MAX_TRACESTATE`] dropped (W3C Trace Context §3.3.1.5 lets a vendor truncate it), so a
//! client cannot make the node parse or carry more than that.
//!
//! The node continues a client's trace: its trace id and sampled flag come from the client's
//! `traceparent`. A node behind an edge it does not trust should have that edge strip the
//! header (README.md §"Spans of a request, across nodes").
//!
//! Only the `lattice` crate's own spans, at `debug` level and above, are exported, with its
//! warnings and errors as span events; nothing of hyper, h2, async-nats or wasmtime. One trace
//! per request holds the ingress (`http_request`), its routing (`route`), the forwarding over
//! NATS (`rpc_forward`), the serving node's invocation (`rpc_invocation`) and what the
//! component did inside it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, the event's fields (`message`
    /// among them) and `span` / `spans` with the fields of the spans it is in.
    Json,
}

/// Whether [`init`] turned traces on: the propagation helpers do nothing until then.
static TRACES_ON: AtomicBool = AtomicBool::new(false);

/// Longest incoming `traceparent` handed to the propagator, in bytes (version 00's is 55;
/// later versions may append fields).
pub const MAX_TRACEPARENT: usize = 128;

/// Longest incoming `tracestate` kept, in bytes; a longer one is dropped whole. W3C Trace
/// Context §3.3.1.5 asks vendors to propagate at least 512 bytes.
pub const MAX_TRACESTATE: usize = 512;

/// Requests this process has taken, ingress and served invocations alike: the `request_id`
/// of their spans when traces are off.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// The next request id of this process (from 1), for spans when traces are off: one relaxed
/// atomic add.
pub fn next_request_id() -> u64 {
    REQUESTS.fetch_add(1, Ordering::Relaxed) + 1
}

/// Whether spans are exported (see the module docs).
pub fn traces_on() -> bool {
    TRACES_ON.load(Ordering::Relaxed)
}

/// Unit tests that install a trace layer of their own turn propagation on with this, as
/// [`init`] does (nextest runs each test in a process of its own).
#[cfg(test)]
pub(crate) fn turn_traces_on_for_tests() {
    TRACES_ON.store(true, Ordering::Relaxed);
}

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// tracing EnvFilter directive of the log (`info`, `lattice=debug,info`).
    pub filter: String,
    /// `--log-format`.
    pub format: LogFormat,
    /// `--otlp-endpoint`: the OTLP/HTTP base URL (`/v1/traces` is appended).
    pub otlp_endpoint: Option<String>,
    /// The node's name, the `service.instance.id` of its spans.
    pub node_name: String,
}

/// Keeps the trace exporter running; dropping it flushes the spans not yet sent (waiting up
/// to the batch processor's export timeout) and stops the exporter.
#[must_use = "dropping it stops the trace exporter"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("lattice: flushing traces: {e}");
        }
    }
}

/// Whether the environment turns traces on (see the module docs), given `--otlp-endpoint`.
fn traces_wanted(endpoint: Option<&str>) -> bool {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return false;
    }
    endpoint.is_some()
        || var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
}

/// The tracer provider exporting to `endpoint` (else where the `OTEL_*` variables say).
///
/// # Errors
/// The endpoint is not a URL, or the exporter's HTTP client cannot be built.
fn tracer_provider(settings: &Settings) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    // The exporter's reqwest is built with rustls but no crypto provider of its own: ring, as
    // the rest of the node's TLS. Fails only when a provider is already installed, which stands.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
    if let Some(endpoint) = &settings.otlp_endpoint {
        let endpoint = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        exporter = exporter.with_endpoint(endpoint);
    }
    // The exporter's blocking HTTP client is built here, before the node's runtime exists (it
    // runs one of its own), and sends from the batch processor's thread.
    let exporter = exporter
        .build()
        .map_err(|e| anyhow::anyhow!("the OTLP trace exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name("lattice");
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            settings.node_name.clone(),
        ))
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The warning for an `OTEL_EXPORTER_OTLP_PROTOCOL` or `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`
/// this exporter does not speak (it speaks `http/protobuf` only), if one is set.
fn protocol_warning() -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|name| {
        let value = std::env::var(name).ok()?;
        let value = value.trim();
        (!value.is_empty() && value != "http/protobuf").then(|| {
            format!(
                "{name}={value:?} is not supported: traces are exported over OTLP/HTTP \
                     with protobuf (http/protobuf) only; grpc and http/json are not"
            )
        })
    })
}

/// The target of events that stay in the node's log, inside the spans they happen in (so they
/// carry the request's fields), and are never exported: what they say quotes a guest or its data
/// (a trap's text, a keyvalue key). `tracing::warn!(target: LOG_ONLY, …)`; the log's filter
/// sees them under this name (`--log lattice_log=off` silences them).
pub const LOG_ONLY: &str = "lattice_log";

/// What the trace layer records: this crate's spans at `debug` and above, and its warnings and
/// errors (as events of the span they happen in); nothing of other crates, nor [`LOG_ONLY`]
/// events.
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    let ours = meta.target() == "lattice" || meta.target().starts_with("lattice::");
    let level = if meta.is_span() {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    ours && *meta.level() <= level
}

/// Whether stderr is the journal stream systemd connected: `JOURNAL_STREAM` holds that stream's
/// `DEVICE:INODE`, to be compared with fd 2's, since children and shells started from a unit
/// inherit the variable with another stderr (systemd.exec(5), §Environment variables).
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var("JOURNAL_STREAM").ok() else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    // Linux: the magic link stats what fd 2 is (a socket, pipe or file) whatever its name.
    std::fs::metadata("/proc/self/fd/2").is_ok_and(|meta| {
        dev.parse::<u64>().is_ok_and(|dev| dev == meta.dev())
            && ino.parse::<u64>().is_ok_and(|ino| ino == meta.ino())
    })
}

/// A text line for the journal: `<N>` first, the syslog priority of the event's level
/// (error 3, warn 4, info 6, debug and trace 7), which journald reads off stderr lines
/// (`SyslogLevelPrefix=`, on by default: sd-daemon(3)), so `journalctl -p warning` finds the
/// node's warnings; the rest as the inner format writes it.
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            tracing::Level::ERROR => 3,
            tracing::Level::WARN => 4,
            tracing::Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// Installs the global subscriber: the log on stderr in `settings.format`, filtered by
/// `settings.filter`, and the trace exporter when traces are on. Text has ANSI colours only
/// when stderr is a terminal and `NO_COLOR` is unset; when stderr is systemd's journal stream
/// ([`stderr_is_journal`]) it has no colours, no timestamps (the journal stamps each line) and
/// a `<N>` priority before each line ([`JournalPriority`]).
///
/// # Errors
/// A bad filter, a bad OTLP endpoint, or a subscriber already installed.
pub fn init(settings: &Settings) -> anyhow::Result<Guard> {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(&settings.filter)
        .map_err(|e| anyhow::anyhow!("--log {:?}: {e}", settings.filter))?;
    let journal = stderr_is_journal();
    let ansi =
        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none() && !journal;
    let log = match settings.format {
        LogFormat::Text if journal => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .event_format(JournalPriority(
                tracing_subscriber::fmt::format().without_time(),
            ))
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let provider = if traces_wanted(settings.otlp_endpoint.as_deref()) {
        Some(tracer_provider(settings)?)
    } else {
        None
    };
    let traces = provider.as_ref().map(|provider| {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("lattice"))
            .with_location(false)
            // Decided once per callsite (the filter reads only its metadata).
            .with_filter(
                tracing_subscriber::filter::filter_fn(exported)
                    .with_max_level_hint(tracing::level_filters::LevelFilter::DEBUG),
            )
    });
    tracing_subscriber::registry()
        .with(log.with_filter(filter))
        .with(traces)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    TRACES_ON.store(provider.is_some(), Ordering::Relaxed);
    if provider.is_some()
        && let Some(warning) = protocol_warning()
    {
        tracing::warn!("{warning}");
    }
    Ok(Guard { provider })
}

/// Makes the trace context `headers` carry (`traceparent`, `tracestate`) the parent of `span`.
/// No-op when the headers carry none or traces are off.
pub fn continue_http(span: &tracing::Span, headers: &http::HeaderMap) {
    if !traces_on() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Bounded(opentelemetry_http::HeaderExtractor(headers)))
    });
    set_parent(span, parent);
}

/// Makes `span`'s trace context the one `headers` carry, in place of theirs: the request a
/// component gets names the node's span as its caller. Returns what it replaced, for
/// [`Replaced::restore`]. No-op when traces are off (the client's `traceparent` and
/// `tracestate` stay as they came).
pub fn replace_http(span: &tracing::Span, headers: &mut http::HeaderMap) -> Replaced {
    if !traces_on() {
        return Replaced::default();
    }
    let replaced = Replaced {
        replaced: true,
        traceparent: headers.remove(TRACEPARENT),
        tracestate: headers.remove(TRACESTATE),
    };
    inject_http(span, headers);
    replaced
}

/// The trace context headers [`replace_http`] replaced (none when it did nothing).
#[derive(Debug, Default)]
pub struct Replaced {
    replaced: bool,
    traceparent: Option<http::HeaderValue>,
    tracestate: Option<http::HeaderValue>,
}

impl Replaced {
    /// Puts the headers back as they were before [`replace_http`]; no-op if it did nothing.
    pub fn restore(self, headers: &mut http::HeaderMap) {
        if !self.replaced {
            return;
        }
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        if let Some(value) = self.traceparent {
            headers.insert(TRACEPARENT, value);
        }
        if let Some(value) = self.tracestate {
            headers.insert(TRACESTATE, value);
        }
    }
}

/// Writes `span`'s trace context into `headers` (`traceparent`, `tracestate`), for an
/// outgoing HTTP request. No-op when traces are off.
pub fn inject_http(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if !traces_on() {
        return;
    }
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(
            &context,
            &mut NonEmpty(opentelemetry_http::HeaderInjector(headers)),
        );
    });
}

/// Writes `span`'s trace context into NATS message headers, under the W3C names. No-op when
/// traces are off.
pub fn inject_nats(span: &tracing::Span, headers: &mut async_nats::HeaderMap) {
    if !traces_on() {
        return;
    }
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut NonEmpty(NatsHeaders(headers)));
    });
}

/// Makes the trace context NATS message `headers` carry the parent of `span`. No-op when
/// they carry none or traces are off.
pub fn extract_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    let Some(headers) = headers.filter(|_| traces_on()) else {
        return;
    };
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Bounded(NatsHeadersRef(headers)))
    });
    set_parent(span, parent);
}

/// Records `error` on `span`: the `error` field (for the log, and an attribute of the exported
/// span, if the span declared the field) and OpenTelemetry's error status with `error` as its
/// description (tracing-opentelemetry's `OpenTelemetrySpanExt::set_status`).
pub fn record_error(span: &tracing::Span, error: &dyn std::fmt::Display) {
    span.record("error", tracing::field::display(error));
    if traces_on() {
        span.set_status(opentelemetry::trace::Status::error(error.to_string()));
    }
}

/// The W3C trace id of `span` (32 lowercase hex digits), when traces are on and the span is
/// recorded. Starts the span's OpenTelemetry side: set its parent ([`continue_http`],
/// [`extract_nats`]) first.
pub fn trace_id(span: &tracing::Span) -> Option<opentelemetry::trace::TraceId> {
    use opentelemetry::trace::TraceContextExt as _;
    if !traces_on() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id())
}

fn set_parent(span: &tracing::Span, parent: opentelemetry::Context) {
    use opentelemetry::trace::TraceContextExt as _;
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled (no subscriber layer records it).
        let _ = span.set_parent(parent);
    }
}

const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

/// An extractor that hides a `traceparent` over [`MAX_TRACEPARENT`] bytes and a `tracestate`
/// over [`MAX_TRACESTATE`] from the propagator.
struct Bounded<E>(E);

impl<E: Extractor> Extractor for Bounded<E> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key)?;
        let limit = if key.eq_ignore_ascii_case(TRACEPARENT) {
            MAX_TRACEPARENT
        } else if key.eq_ignore_ascii_case(TRACESTATE) {
            MAX_TRACESTATE
        } else {
            usize::MAX
        };
        (value.len() <= limit).then_some(value)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }
}

/// An injector that skips empty values (a `tracestate` with no entries is not sent).
struct NonEmpty<I>(I);

impl<I: Injector> Injector for NonEmpty<I> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.set(key, value);
        }
    }
}

struct NatsHeaders<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct NatsHeadersRef<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|value| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_ref()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    http::HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn an_oversized_tracestate_is_dropped_and_an_oversized_traceparent_ignored() {
        let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
        let traceparent = format!("00-{TRACE}-{PARENT}-01");
        let extract = |headers: &http::HeaderMap| {
            propagator.extract(&Bounded(opentelemetry_http::HeaderExtractor(headers)))
        };
        let kept = extract(&headers(&[
            ("traceparent", &traceparent),
            ("tracestate", "a=1"),
        ]));
        assert_eq!(kept.span().span_context().trace_id().to_string(), TRACE);
        assert_eq!(kept.span().span_context().trace_state().header(), "a=1");

        let long_state = format!("a={}", "x".repeat(MAX_TRACESTATE));
        let dropped = extract(&headers(&[
            ("traceparent", &traceparent),
            ("tracestate", &long_state),
        ]));
        assert!(dropped.span().span_context().is_valid());
        assert_eq!(dropped.span().span_context().trace_state().header(), "");

        let long_parent = format!("{traceparent}-{}", "0".repeat(MAX_TRACEPARENT));
        let ignored = extract(&headers(&[("traceparent", &long_parent)]));
        assert!(!ignored.span().span_context().is_valid());
    }

    #[test]
    fn the_component_sees_the_nodes_span_and_no_empty_tracestate() {
        use opentelemetry::trace::TracerProvider as _;
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _default = tracing::subscriber::set_default(subscriber);
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        turn_traces_on_for_tests();

        let mut request = headers(&[("traceparent", &format!("00-{TRACE}-{PARENT}-01"))]);
        let span = tracing::info_span!("http_request");
        continue_http(&span, &request);
        replace_http(&span, &mut request);
        let seen = request["traceparent"].to_str().unwrap().to_owned();
        let own = span.context().span().span_context().span_id().to_string();
        assert_eq!(seen, format!("00-{TRACE}-{own}-01"));
        assert_ne!(own, PARENT);
        assert!(!request.contains_key("tracestate"), "{request:?}");
        // What it replaced comes back as it was (a request going elsewhere).
        let client = headers(&[
            ("traceparent", &format!("00-{TRACE}-{PARENT}-01")),
            ("tracestate", "a=1"),
        ]);
        let mut request = client.clone();
        let saved = replace_http(&span, &mut request);
        assert_ne!(request, client);
        saved.restore(&mut request);
        assert_eq!(request, client);

        // A client's tracestate goes on with the trace; an empty one is not sent.
        let mut nats = async_nats::HeaderMap::new();
        inject_nats(&span, &mut nats);
        assert!(nats.get("traceparent").is_some());
        assert!(nats.get("tracestate").is_none());
    }

    #[test]
    fn only_http_protobuf_is_a_supported_protocol() {
        // SAFETY: nextest runs each test in a process of its own: no other thread reads the
        // environment.
        unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") };
        assert_eq!(protocol_warning(), None);
        unsafe { std::env::set_var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc") };
        let warning = protocol_warning().unwrap();
        assert!(
            warning.contains("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") && warning.contains("grpc"),
            "{warning}"
        );
    }
}
