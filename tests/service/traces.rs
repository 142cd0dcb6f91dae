//! Tests of issue 14: traces. A request with a client's W3C `traceparent` enters node A, which
//! runs no replica of the component, and is served by node B's replica over NATS; both nodes
//! export their spans over OTLP/HTTP to a receiver (`otlp_receiver.py`, decoding with PyPI's
//! `opentelemetry-proto`), which must hold one trace with the client's trace id and every
//! parent link intact across the two nodes. The request path's metrics are checked here too
//! (requests and invocations counted on both nodes, 503s by reason, unrouted requests), as
//! the same forwarding produces them. Also here: a request whose client hangs up before the
//! answer (counted `cancelled`, its span an error), a failed export (logged), and an `https://`
//! endpoint (the receiver over TLS with a test CA).
//!
//! The receiver runs in a venv: by default
//! `${XDG_CACHE_HOME:-~/.cache}/lattice-ci/otlp-receiver-<version>` ([`RECEIVER_VENV`]), or the
//! Python named by `$LATTICE_OTLP_RECEIVER_PYTHON`. `.ci/run` makes it (see
//! [`install_command`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::hub::Hub;
use crate::common::{Node, example_wasm, http_request_with, manifest_with, wait_until};

/// The `opentelemetry-proto` release the receiver's venv holds, and the `protobuf` runtime
/// under it.
const PROTO_VERSION: &str = "1.45.2";
const PROTOBUF_VERSION: &str = "7.36.2";

/// The receiver's venv, under the cache dir (`$XDG_CACHE_HOME`, else `~/.cache`).
const RECEIVER_VENV: &str = "lattice-ci/otlp-receiver-1.45.2";

/// Names the receiver's Python instead of the venv's.
const PYTHON_VAR: &str = "LATTICE_OTLP_RECEIVER_PYTHON";

/// The client's trace: its trace id and the span id of its own (the ingress span's parent).
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// A second client trace, for a request no replica serves.
const GHOST_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

/// How long spans may take to reach the receiver (the nodes export every 100 ms).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(20);

/// The shell command that makes the receiver's venv.
fn install_command() -> String {
    let venv = cache_dir().join(RECEIVER_VENV);
    let venv = venv.display();
    format!(
        "python3 -m venv {venv} && {venv}/bin/pip install --quiet \
         'opentelemetry-proto=={PROTO_VERSION}' 'protobuf=={PROTOBUF_VERSION}'"
    )
}

/// `$XDG_CACHE_HOME`, else `~/.cache`.
fn cache_dir() -> PathBuf {
    match std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(&std::env::var_os("HOME").expect("HOME is set")).join(".cache"),
    }
}

/// The Python that runs the receiver; panics with the install command when it is missing.
fn receiver_python() -> PathBuf {
    let python = match std::env::var_os(PYTHON_VAR) {
        Some(python) => PathBuf::from(python),
        None => cache_dir().join(RECEIVER_VENV).join("bin/python"),
    };
    assert!(
        python.is_file(),
        "{} missing: the OTLP receiver needs a venv with opentelemetry-proto; make it with\n  {}\n\
         (or name another Python with ${PYTHON_VAR})",
        python.display(),
        install_command()
    );
    python
}

/// The OTLP/HTTP receiver process; killed (by its pid) on drop.
struct Receiver {
    child: Child,
    port: u16,
    spans: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    fn start() -> Receiver {
        Receiver::start_with(None)
    }

    /// With `tls` (a certificate chain and its key, PEM files), over HTTPS.
    fn start_with(tls: Option<(&Path, &Path)>) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let spans = dir.path().join("spans.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/service/otlp_receiver.py");
        let mut command = Command::new(receiver_python());
        command.arg(&script).arg(&spans);
        if let Some((cert, key)) = tls {
            command.arg(cert).arg(key);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the OTLP receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the OTLP receiver did not start: {line:?}"));
        Receiver {
            child,
            port,
            spans,
            _dir: dir,
        }
    }

    /// The base URL nodes export to (`/v1/traces` is appended by the exporter), over HTTP.
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    fn spans(&self) -> Vec<Value> {
        let Ok(text) = std::fs::read_to_string(&self.spans) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The spans of trace `trace_id`, by span id.
    fn trace(&self, trace_id: &str) -> BTreeMap<String, Value> {
        self.spans()
            .into_iter()
            .filter(|s| s["trace_id"] == trace_id)
            .map(|s| (s["span_id"].as_str().unwrap().to_owned(), s))
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node labelled `role=<role>` joined to `hub`, with `manifests` in its config dir,
/// exporting its spans to `receiver` (if any) every 100 ms.
fn traced_node(
    hub: &Hub,
    name: &str,
    role: &str,
    manifests: &[(&str, String)],
    receiver: Option<&Receiver>,
) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    for (file, text) in manifests {
        std::fs::write(config.join(file), text).unwrap();
    }
    let creds = hub.user_creds(dir.path(), "node.creds");
    let creds = creds.to_string_lossy().into_owned();
    let leaf_url = hub.leaf_url();
    let label = format!("role={role}");
    let endpoint = receiver.map(Receiver::endpoint);
    let flags = [
        "--creds",
        &creds,
        "--leaf-url",
        &leaf_url,
        "--name",
        name,
        "--label",
        &label,
        "--lattice",
        "default",
        "--heartbeat-interval",
        "1000ms",
    ];
    let env = match &endpoint {
        Some(endpoint) => vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_SERVICE_NAME", "lattice-test"),
        ],
        None => Vec::new(),
    };
    let node = Node::start_with(&config, &dir.path().join("data"), &flags, &env, None);
    node.wait_for_log(&["lattice node is up"], Duration::from_secs(20));
    node.wait_for_log(&["leaf uplink connected"], Duration::from_secs(10));
    (node, dir)
}

/// App `app` whose component `web` (`example`) answers `path`, its replicas only on nodes
/// labelled `role=<role>`.
fn app_on(app: &str, example: &str, path: &str, role: &str) -> String {
    let scaler = format!(
        "instances: 1\n            spread:\n              - name: {role}-nodes\n                requirements:\n                  role: {role}"
    );
    manifest_with(app, "web", &example_wasm(example), path, &scaler)
}

/// The one span of `trace` named `name` on `node`; panics listing the trace.
fn only<'a>(trace: &'a BTreeMap<String, Value>, node: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = trace
        .values()
        .filter(|s| s["node"] == node && s["name"] == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} span of {node} wanted: {trace:#?}"
    );
    found[0]
}

/// Whether `span` descends from the span `ancestor` within `trace`.
fn descends(trace: &BTreeMap<String, Value>, span: &Value, ancestor: &str) -> bool {
    let mut at = span;
    for _ in 0..trace.len() {
        let parent = at["parent_span_id"].as_str().unwrap();
        if parent == ancestor {
            return true;
        }
        match trace.get(parent) {
            Some(next) => at = next,
            None => return false,
        }
    }
    false
}

#[test]
fn a_request_through_two_nodes_is_one_trace_continuing_the_clients() {
    let receiver = Receiver::start();
    let hub = Hub::start();
    let manifests = [
        ("echo.yaml", app_on("echo", "http-echo", "/echo", "b")),
        // Its replicas belong on nodes labelled role=c: there are none.
        ("ghost.yaml", app_on("ghost", "http-hello", "/ghost", "c")),
    ];
    let (a, _a_dir) = traced_node(&hub, "node-a", "a", &manifests, Some(&receiver));
    let (b, _b_dir) = traced_node(&hub, "node-b", "b", &manifests, Some(&receiver));
    a.wait_for_log(
        &["no replica of this component belongs on this node"],
        Duration::from_secs(10),
    );
    wait_until(
        "node A reaches B's replica",
        Duration::from_secs(15),
        || {
            http_request_with(a.http, "GET", "/echo/warm-up", &[], &[])
                .is_some_and(|(status, _, _)| status == 200)
        },
    );

    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let (status, headers, _) = http_request_with(
        a.http,
        "GET",
        "/echo/traced",
        &[("traceparent", &traceparent)],
        &[],
    )
    .expect("an answer from node A");
    assert_eq!(status, 200, "{}", a.log());
    // The request id is the trace id.
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("x-request-id").as_deref(), Some(CLIENT_TRACE));

    let wanted = |trace: &BTreeMap<String, Value>| {
        let names: Vec<(&str, &str)> = trace
            .values()
            .map(|s| (s["node"].as_str().unwrap(), s["name"].as_str().unwrap()))
            .collect();
        ["http_request", "route", "rpc_forward"]
            .iter()
            .all(|n| names.contains(&("node-a", n)))
            && names.contains(&("node-b", "rpc_invocation"))
    };
    let deadline = Instant::now() + EXPORT_TIMEOUT;
    let trace = loop {
        let trace = receiver.trace(CLIENT_TRACE);
        if wanted(&trace) {
            // Spans end in any order: give the last ones of the batch a moment.
            std::thread::sleep(Duration::from_millis(500));
            break receiver.trace(CLIENT_TRACE);
        }
        assert!(
            Instant::now() < deadline,
            "the receiver did not get both nodes' spans of trace {CLIENT_TRACE} within \
             {EXPORT_TIMEOUT:?}: {trace:#?}\nall spans: {:#?}\nnode A:\n{}\nnode B:\n{}",
            receiver.spans(),
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };

    // The ingress span continues the client's span.
    let ingress = only(&trace, "node-a", "http_request");
    assert_eq!(ingress["parent_span_id"], CLIENT_SPAN, "{trace:#?}");
    assert_eq!(ingress["kind"], "SPAN_KIND_SERVER", "{ingress}");
    assert_eq!(ingress["attributes"]["app"], "echo", "{ingress}");
    assert_eq!(ingress["attributes"]["component"], "web", "{ingress}");
    assert_eq!(
        ingress["attributes"]["http.request.method"], "GET",
        "{ingress}"
    );
    assert_eq!(
        ingress["attributes"]["http.response.status_code"], 200,
        "{ingress}"
    );
    assert_eq!(
        ingress["attributes"]["request_id"], CLIENT_TRACE,
        "{ingress}"
    );
    let ingress_id = ingress["span_id"].as_str().unwrap();
    let route = only(&trace, "node-a", "route");
    assert_eq!(route["parent_span_id"], ingress_id, "{trace:#?}");
    let forward = only(&trace, "node-a", "rpc_forward");
    assert_eq!(forward["parent_span_id"], ingress_id, "{trace:#?}");
    assert_eq!(forward["kind"], "SPAN_KIND_CLIENT", "{forward}");
    let forward_id = forward["span_id"].as_str().unwrap();
    // The serving node's spans join the trace below A's forwarding span.
    let invocation = only(&trace, "node-b", "rpc_invocation");
    assert_eq!(invocation["parent_span_id"], forward_id, "{trace:#?}");
    assert_eq!(invocation["kind"], "SPAN_KIND_SERVER", "{invocation}");
    for span in trace.values() {
        let parent = span["parent_span_id"].as_str().unwrap();
        assert!(
            parent == CLIENT_SPAN && span["span_id"] == ingress_id || trace.contains_key(parent),
            "span {span} has its parent outside the trace: {trace:#?}"
        );
        if span["node"] == "node-b" {
            assert!(descends(&trace, span, forward_id), "{span}: {trace:#?}");
        }
        assert_ne!(span["status"], "STATUS_CODE_ERROR", "{span}");
    }

    // A request no replica serves: the forwarding and the ingress span carry the error.
    let traceparent = format!("00-{GHOST_TRACE}-{CLIENT_SPAN}-01");
    let (status, _, _) = http_request_with(
        a.http,
        "GET",
        "/ghost",
        &[("traceparent", &traceparent)],
        &[],
    )
    .expect("an answer from node A");
    assert_eq!(status, 503);
    let mut trace = BTreeMap::new();
    wait_until("the 503's spans", EXPORT_TIMEOUT, || {
        trace = receiver.trace(GHOST_TRACE);
        trace.values().filter(|s| s["node"] == "node-a").count() >= 3
    });
    let forward = only(&trace, "node-a", "rpc_forward");
    assert_eq!(forward["status"], "STATUS_CODE_ERROR", "{forward}");
    assert_eq!(
        forward["status_message"], "no replica subscribed",
        "{forward}"
    );
    let ingress = only(&trace, "node-a", "http_request");
    assert_eq!(ingress["status"], "STATUS_CODE_ERROR", "{ingress}");
    assert_eq!(
        ingress["attributes"]["http.response.status_code"], 503,
        "{ingress}"
    );
}

/// The value of the samples of `metrics` (OpenMetrics text) named `name` whose labels include
/// every one of `labels` (`key="value"`), summed; 0 for none. Labels compare without case and
/// underscores: `reason="NoReplica"` matches `reason="no_replica"`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    let loose = |text: &str| text.to_lowercase().replace('_', "");
    metrics
        .lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            let rest = loose(rest);
            (series_name == name && labels.iter().all(|l| rest.contains(&loose(l))))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// `/metrics` of `node`'s admin endpoint.
fn metrics_of(node: &Node) -> String {
    let (status, text) = crate::common::http_get(node.admin, "/metrics", None).expect("/metrics");
    assert_eq!(status, 200, "{text}");
    text
}

#[test]
fn forwarded_requests_count_on_both_nodes_and_503s_by_reason() {
    // Traces off: metrics do not depend on them.
    let hub = Hub::start();
    let manifests = [
        ("echo.yaml", app_on("echo", "http-echo", "/echo", "b")),
        ("ghost.yaml", app_on("ghost", "http-hello", "/ghost", "c")),
    ];
    let (a, _a_dir) = traced_node(&hub, "node-a", "a", &manifests, None);
    let (b, _b_dir) = traced_node(&hub, "node-b", "b", &manifests, None);
    a.wait_for_log(
        &["no replica of this component belongs on this node"],
        Duration::from_secs(10),
    );
    wait_until(
        "node A reaches B's replica",
        Duration::from_secs(15),
        || {
            http_request_with(a.http, "GET", "/echo/warm-up", &[], &[])
                .is_some_and(|(status, _, _)| status == 200)
        },
    );
    // The warm-up may have met the route before B's replica subscribed (503s of no_replica, a
    // NoResponders attempt): every series is compared with what it was before.
    let (before_a, before_b) = (metrics_of(&a), metrics_of(&b));
    let echo = [r#"app="echo""#, r#"component="web""#];
    const SENT: usize = 5;
    for i in 0..SENT {
        let (status, _, _) =
            http_request_with(a.http, "GET", &format!("/echo/{i}"), &[], &[]).unwrap();
        assert_eq!(status, 200);
    }
    assert_eq!(a.get("/ghost").unwrap().0, 503);
    assert_eq!(a.get("/nowhere").unwrap().0, 404);

    let on_a = metrics_of(&a);
    let on_b = metrics_of(&b);
    let grew = |now: &str, before: &str, name: &str, labels: &[&str]| {
        sample(now, name, labels) - sample(before, name, labels)
    };
    let on_a_grew = |name: &str, labels: &[&str]| grew(&on_a, &before_a, name, labels);
    let two_xx = [echo[0], echo[1], r#"status_class="2xx""#];
    assert_eq!(
        on_a_grew("lattice_http_requests_total", &two_xx),
        SENT as f64,
        "{on_a}"
    );
    // Every request A forwarded was served by B, and counted as sent by A.
    let ok = [echo[0], echo[1], r#"result="Ok""#];
    let sent = on_a_grew("lattice_invocations_sent_total", &ok);
    let served = grew(&on_b, &before_b, "lattice_invocations_served_total", &ok);
    assert_eq!(sent, SENT as f64, "{on_a}");
    assert_eq!(sent, served, "A:\n{on_a}\nB:\n{on_b}");
    // Answered by B: forwarded.
    assert_eq!(
        on_a_grew(
            "lattice_http_request_duration_seconds_count",
            &[echo[0], echo[1], r#"served="forwarded""#]
        ),
        SENT as f64,
        "{on_a}"
    );
    // B's own ingress took none of them.
    assert_eq!(
        sample(&on_b, "lattice_http_requests_total", &[echo[0], echo[1]]),
        0.0,
        "{on_b}"
    );
    // The 503 of a component no node runs, and the 404, in bounded series. The 503 is A's own
    // answer: its duration counts as local, not forwarded.
    assert_eq!(
        on_a_grew("lattice_http_unavailable_total", &[r#"reason="NoReplica""#]),
        1.0,
        "{on_a}"
    );
    assert_eq!(
        on_a_grew(
            "lattice_invocations_sent_total",
            &[r#"app="ghost""#, r#"result="NoResponders""#]
        ),
        1.0,
        "{on_a}"
    );
    let ghost = [r#"app="ghost""#, r#"component="web""#];
    assert_eq!(
        on_a_grew(
            "lattice_http_request_duration_seconds_count",
            &[ghost[0], ghost[1], r#"served="local""#]
        ),
        1.0,
        "{on_a}"
    );
    assert_eq!(
        sample(
            &on_a,
            "lattice_http_request_duration_seconds_count",
            &[ghost[0], ghost[1], r#"served="forwarded""#]
        ),
        0.0,
        "{on_a}"
    );
    assert_eq!(
        on_a_grew(
            "lattice_http_requests_total",
            &[
                r#"app="(none)""#,
                r#"component="(none)""#,
                r#"status_class="4xx""#
            ]
        ),
        1.0,
        "{on_a}"
    );
    assert!(!on_a.contains("nowhere"), "no path in a label: {on_a}");
}

#[test]
fn a_request_a_full_replica_cannot_take_counts_as_unavailable_for_concurrency() {
    let node = Node::start(&["--replica-concurrency", "1"]);
    node.write_manifest("echo.yaml", "echo", "http-echo", "/echo");
    node.wait_for_status("/echo", 200, Duration::from_secs(15));
    // While the app was being deployed, probes may have met its route before its replica (a 503
    // of reason no_replica): only what follows counts.
    let before = metrics_of(&node);
    let unavailable_before = sample(
        &before,
        "lattice_http_unavailable_total",
        &[r#"reason="concurrency""#],
    );
    let errors_before = sample(
        &before,
        "lattice_http_requests_total",
        &[r#"app="echo""#, r#"status_class="5xx""#],
    );
    // One request holds the replica's one place for a while (tried again should a probe below
    // hold it at that moment); the next finds no room here and no replica elsewhere.
    let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = node.http;
    let holder = std::thread::spawn({
        let refused = refused.clone();
        move || loop {
            let (status, _, _) =
                http_request_with(addr, "GET", "/echo", &[("x-echo-sleep-ms", "3000")], &[])
                    .unwrap();
            if status != 503 {
                return status;
            }
            refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    wait_until(
        "a second request is refused",
        Duration::from_secs(10),
        || {
            let refused_now = node.get("/echo").unwrap().0 == 503;
            if refused_now {
                refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            refused_now
        },
    );
    assert_eq!(holder.join().unwrap(), 200);
    let refused = refused.load(std::sync::atomic::Ordering::Relaxed);
    let metrics = metrics_of(&node);
    assert_eq!(
        sample(
            &metrics,
            "lattice_http_unavailable_total",
            &[r#"reason="concurrency""#]
        ) - unavailable_before,
        refused as f64,
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "lattice_http_requests_total",
            &[r#"app="echo""#, r#"status_class="5xx""#]
        ) - errors_before,
        refused as f64,
        "{metrics}"
    );
}

#[test]
fn a_request_whose_client_goes_away_before_the_answer_counts_as_cancelled() {
    use std::io::Write as _;
    const DROPPED_TRACE: &str = "5bf92f3577b34da6a3ce929d0e0e4737";
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let node = Node::start_with(&config, &dir.path().join("data"), &[], &env, None);
    node.write_manifest("echo.yaml", "echo", "http-echo", "/echo");
    node.wait_for_status("/echo", 200, Duration::from_secs(15));
    let cancelled = [r#"app="echo""#, r#"status_class="cancelled""#];
    let answered = [r#"app="echo""#, r#"status_class="2xx""#];
    let before_metrics = metrics_of(&node);
    let before = sample(&before_metrics, "lattice_http_requests_total", &cancelled);
    let answered_before = sample(&before_metrics, "lattice_http_requests_total", &answered);
    // The replica holds the request for 3 s; the client hangs up long before.
    let mut client = std::net::TcpStream::connect(node.http).unwrap();
    client
        .write_all(
            format!(
                "GET /echo HTTP/1.1\r\nhost: localhost\r\nx-echo-sleep-ms: 3000\r\n\
                 traceparent: 00-{DROPPED_TRACE}-{CLIENT_SPAN}-01\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    wait_until("the replica serves it", Duration::from_secs(5), || {
        sample(&metrics_of(&node), "lattice_instances", &[r#"app="echo""#]) == 1.0
    });
    client.shutdown(std::net::Shutdown::Both).unwrap();
    drop(client);
    let mut metrics = String::new();
    wait_until(
        "the dropped request counts as cancelled",
        Duration::from_secs(10),
        || {
            metrics = metrics_of(&node);
            sample(&metrics, "lattice_http_requests_total", &cancelled) - before == 1.0
        },
    );
    // And once only, in no status class: no response head was sent (the replica's answer, 3 s
    // on, goes nowhere).
    std::thread::sleep(Duration::from_millis(3500));
    let after = metrics_of(&node);
    assert_eq!(
        sample(&after, "lattice_http_requests_total", &cancelled) - before,
        1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "lattice_http_requests_total", &answered),
        answered_before,
        "{after}"
    );
    // Its span ends with an error status.
    let mut trace = BTreeMap::new();
    wait_until("the dropped request's span", EXPORT_TIMEOUT, || {
        trace = receiver.trace(DROPPED_TRACE);
        trace.values().any(|s| s["name"] == "http_request")
    });
    let ingress = trace
        .values()
        .find(|s| s["name"] == "http_request")
        .unwrap();
    assert_eq!(ingress["status"], "STATUS_CODE_ERROR", "{ingress}");
    assert_eq!(
        ingress["status_message"], "the client went away before the response head",
        "{ingress}"
    );
}

#[test]
fn a_failed_trace_export_is_logged() {
    // Nothing listens there (the port was free a moment ago).
    let endpoint = format!("http://127.0.0.1:{}", crate::common::free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
    ];
    let node = Node::start_with(&config, &dir.path().join("data"), &[], &env, None);
    node.wait_for_log(&["lattice node is up"], Duration::from_secs(20));
    // An unsupported protocol is named at start.
    node.wait_for_log(
        &["WARN", "OTEL_EXPORTER_OTLP_PROTOCOL", "not supported"],
        Duration::from_secs(5),
    );
    // A span to export: a 404.
    assert_eq!(node.get("/nowhere").unwrap().0, 404);
    let line = node.wait_for_log(&["ExportError"], Duration::from_secs(20));
    assert!(
        line.contains("ERROR") || line.contains("WARN"),
        "logged at warn or above: {line}"
    );
}

/// Makes a CA and a certificate for `127.0.0.1` it signed (openssl's CLI) in `dir`: the CA's,
/// the leaf's and the leaf key's PEM files.
fn test_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
        "-out",
        "leaf.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    )
}

#[test]
fn spans_reach_an_https_endpoint() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_certificates(certs.path());
    let receiver = Receiver::start_with(Some((&cert, &key)));
    let endpoint = format!("https://127.0.0.1:{}", receiver.port);
    let ca = ca.to_string_lossy().into_owned();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // The system's roots, as rustls-native-certs finds them: here only the test's CA.
        ("SSL_CERT_FILE", ca.as_str()),
    ];
    let node = Node::start_with(&config, &dir.path().join("data"), &[], &env, None);
    node.wait_for_log(&["lattice node is up"], Duration::from_secs(20));
    let traceparent = format!("00-{GHOST_TRACE}-{CLIENT_SPAN}-01");
    let (status, _, _) = http_request_with(
        node.http,
        "GET",
        "/nowhere",
        &[("traceparent", &traceparent)],
        &[],
    )
    .unwrap();
    assert_eq!(status, 404);
    wait_until("the span over HTTPS", EXPORT_TIMEOUT, || {
        !receiver.trace(GHOST_TRACE).is_empty()
    });
    assert!(!node.log().contains("ExportError"), "{}", node.log());
}
