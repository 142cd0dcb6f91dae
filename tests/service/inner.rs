//! Issue 14, inside the node: what `/metrics` shows of its components (instances, pool slots,
//! replicas, compiles), its reconciler (passes, actions) and keyvalue operations by backend;
//! the W3C `traceparent` an outgoing request of a component carries when traces are on; and
//! that no key of a failed keyvalue call or text of a guest's panic is exported in a span.
//! Real `lattice up`, the real http-keyvalue-counter and http-fetch components, keyvalue on
//! sled and on the node's JetStream, upstream servers on 127.0.0.1.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::observe::{Recorder, http_client_link, keyvalue_link, unique};
use crate::common::{Dirs, Node, example_wasm, free_port, http_get, http_request, wait_until};

/// How long a node may take to deploy its config dir's apps (compiling included).
const DEPLOYED: Duration = Duration::from_secs(60);

/// How long a gauge may take to settle after the answers (an instance's task ends after its
/// response has gone out).
const SETTLED: Duration = Duration::from_secs(10);

/// The built-in keyvalue-sled capability.
const KEYVALUE_SLED: &str = "wasmcloud+builtin://keyvalue-sled";

/// The keyvalue-nats capability, as wadm manifests name it.
const KEYVALUE_NATS: &str = "ghcr.io/wasmcloud/keyvalue-nats:0.3.1";

/// The http-client capability, as wadm manifests name it.
const HTTP_CLIENT: &str = "ghcr.io/wasmcloud/http-client:0.12.0";

/// A manifest of app `app`: example `example` as component `component` with `instances`
/// replicas (spreadscaler) routed at `path`, with link `link` (YAML list items indented by 8
/// spaces) to capability `target` of image `image`.
fn app_yaml(
    app: &str,
    component: &str,
    example: &str,
    path: &str,
    instances: u32,
    (link, target, image): (&str, &str, &str),
) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {app}
  annotations:
    version: v1
spec:
  components:
    - name: {component}
      type: component
      properties:
        image: file://{wasm}
      traits:
        - type: spreadscaler
          properties:
            instances: {instances}
{link}    - name: {target}
      type: capability
      properties:
        image: {image}
{http}"#,
        wasm = example_wasm(example).display(),
        http = crate::common::http_server_link(component, path),
    )
}

/// The node's `/metrics` text.
fn metrics(node: &Node) -> String {
    match http_get(node.admin, "/metrics", None) {
        Some((200, text)) => text,
        other => panic!("GET /metrics: {other:?}\n{}", node.log()),
    }
}

/// The value of series `series` (name and labels, as `/metrics` writes them) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `value`, 0 when the series is absent.
fn value_or_0(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or(0.0)
}

/// Polls `GET path` on the node's ingress until it answers 200; returns the body.
fn first_200(node: &Node, path: &str) -> String {
    node.wait_for_status(path, 200, DEPLOYED)
}

/// `POST path` on the node's ingress: status and body.
fn post(node: &Node, path: &str) -> Option<(u16, String)> {
    let (status, _, body) = http_request(node.http, "POST", path, None, &[])?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

#[test]
fn metrics_count_keyvalue_operations_instances_replicas_compiles_and_reconcile_actions() {
    let bucket = unique("inner");
    let sled = app_yaml(
        "kvsled",
        "counter",
        "http-keyvalue-counter",
        "/counter",
        2,
        (&keyvalue_link("kvsled", &[]), "kvsled", KEYVALUE_SLED),
    );
    let nats = app_yaml(
        "kvnats",
        "counter",
        "http-keyvalue-counter",
        "/ncounter",
        1,
        (
            &keyvalue_link(
                "kvnats",
                &[
                    ("bucket", bucket.as_str()),
                    ("enable_bucket_auto_create", "true"),
                ],
            ),
            "kvnats",
            KEYVALUE_NATS,
        ),
    );
    // A bucket that does not exist and may not be created: its start fails (and is retried).
    let missing = app_yaml(
        "kvmissing",
        "counter",
        "http-keyvalue-counter",
        "/missing",
        1,
        (
            &keyvalue_link("kvnats", &[("bucket", &unique("absent"))]),
            "kvnats",
            KEYVALUE_NATS,
        ),
    );
    let dirs = Dirs::with_manifest("kvsled.yaml", &sled);
    std::fs::write(dirs.config.join("kvnats.yaml"), &nats).unwrap();
    std::fs::write(dirs.config.join("kvmissing.yaml"), &missing).unwrap();
    // A component that spins until the deadline: one instance alive for that long.
    std::fs::write(
        dirs.config.join("spin.yaml"),
        crate::common::manifest_with(
            "spin",
            "spin",
            &example_wasm("http-loop"),
            "/loop",
            "instances: 1",
        ),
    )
    .unwrap();
    // A fresh data dir: a cold code cache.
    let node = Node::start_in(
        &dirs.config,
        &dirs.data,
        &["--max-instances", "40", "--request-timeout", "4s"],
    );

    node.wait_for_log(&["admin endpoint listening"], DEPLOYED);
    // While a request spins, its instance is alive and holds a pool slot.
    std::thread::scope(|scope| {
        let spinning = scope.spawn(|| node.wait_for_status("/loop", 504, DEPLOYED));
        wait_until("spin's instance alive in /metrics", DEPLOYED, || {
            let text = metrics(&node);
            value(&text, r#"lattice_instances{app="spin",component="spin"}"#) == Some(1.0)
                && value(&text, "lattice_pool_slots_in_use") == Some(1.0)
        });
        spinning.join().unwrap();
    });

    assert_eq!(first_200(&node, "/counter/x"), "0\n");
    assert_eq!(first_200(&node, "/ncounter/x"), "0\n");
    for n in 1..=3 {
        assert_eq!(
            post(&node, "/counter/x"),
            Some((200, format!("{n}\n"))),
            "POST {n} to the sled counter\n{}",
            node.log()
        );
    }
    for n in 1..=2 {
        assert_eq!(
            post(&node, "/ncounter/x"),
            Some((200, format!("{n}\n"))),
            "POST {n} to the nats counter\n{}",
            node.log()
        );
    }
    node.wait_for_log(&["cannot start replicas here", "kvmissing"], DEPLOYED);

    let kv = |text: &str, backend: &str, op: &str, result: &str| {
        value_or_0(
            text,
            &format!(
                r#"lattice_keyvalue_operations_total{{backend="{backend}",operation="{op}",result="{result}"}}"#
            ),
        )
    };
    // Instances end (and give back their slots) just after their answers: wait for that.
    let mut text = String::new();
    wait_until("instances and pool slots back to 0", SETTLED, || {
        text = metrics(&node);
        let alive = |app: &str, component: &str| {
            value(
                &text,
                &format!(r#"lattice_instances{{app="{app}",component="{component}"}}"#),
            )
        };
        alive("kvsled", "counter") == Some(0.0)
            && alive("kvnats", "counter") == Some(0.0)
            && alive("spin", "spin") == Some(0.0)
            && value(&text, "lattice_pool_slots_in_use") == Some(0.0)
    });

    assert_eq!(kv(&text, "sled", "increment", "ok"), 3.0, "{text}");
    assert_eq!(kv(&text, "nats", "increment", "ok"), 2.0, "{text}");
    assert!(kv(&text, "sled", "get", "ok") >= 1.0, "{text}");
    assert!(kv(&text, "nats", "get", "ok") >= 1.0, "{text}");
    assert_eq!(kv(&text, "sled", "increment", "error"), 0.0, "{text}");
    assert_eq!(value(&text, "lattice_pool_slots"), Some(40.0), "{text}");

    assert_eq!(
        value(
            &text,
            r#"lattice_replicas{app="kvsled",component="counter"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"lattice_replicas{app="kvnats",component="counter"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value_or_0(
            &text,
            r#"lattice_replicas{app="kvmissing",component="counter"}"#
        ),
        0.0,
        "{text}"
    );

    // One example, compiled once (the other starts load its code or wait for it).
    let compiles = value_or_0(&text, "lattice_component_compile_duration_seconds_count");
    assert!(compiles >= 1.0, "a cold cache compiles: {text}");
    assert!(
        value_or_0(&text, "lattice_reconcile_passes_total") > 0.0,
        "{text}"
    );
    assert_eq!(
        value_or_0(&text, r#"lattice_reconcile_actions_total{action="start"}"#),
        4.0,
        "2 sled replicas, 1 nats and 1 spin replica started: {text}"
    );
    assert!(
        value_or_0(&text, r#"lattice_reconcile_actions_total{action="failed"}"#) >= 1.0,
        "kvmissing's start failed: {text}"
    );

    // An app removed: its replicas stop, and its gauge goes to 0.
    std::fs::remove_file(dirs.config.join("kvnats.yaml")).unwrap();
    wait_until("kvnats's replicas gone from /metrics", DEPLOYED, || {
        text = metrics(&node);
        value(
            &text,
            r#"lattice_replicas{app="kvnats",component="counter"}"#,
        ) == Some(0.0)
    });
    assert_eq!(
        value_or_0(&text, r#"lattice_reconcile_actions_total{action="stop"}"#),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"lattice_replicas{app="kvsled",component="counter"}"#
        ),
        Some(2.0),
        "{text}"
    );

    // A new version of an app: its replicas are updated, not started again.
    std::fs::write(
        dirs.config.join("kvsled.yaml"),
        sled.replace("version: v1", "version: v2"),
    )
    .unwrap();
    wait_until("kvsled's update counted", DEPLOYED, || {
        text = metrics(&node);
        value_or_0(&text, r#"lattice_reconcile_actions_total{action="update"}"#) == 2.0
    });
    assert_eq!(
        value_or_0(&text, r#"lattice_reconcile_actions_total{action="start"}"#),
        4.0,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            r#"lattice_replicas{app="kvsled",component="counter"}"#
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        post(&node, "/counter/x"),
        Some((200, "4\n".to_owned())),
        "v2 counts on in the same bucket\n{}",
        node.log()
    );
}

/// The `traceparent` header values of `head`.
fn traceparents(head: &str) -> Vec<String> {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(name, _)| name.trim().eq_ignore_ascii_case("traceparent"))
        .map(|(_, value)| value.trim().to_owned())
        .collect()
}

/// Whether `value` is a W3C traceparent of version 00 with a trace and a parent id that are not
/// all zeros: `00-<32 hex>-<16 hex>-<2 hex>`.
fn is_traceparent(value: &str) -> bool {
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let parts: Vec<&str> = value.split('-').collect();
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if *version == "00" && hex(trace, 32) && hex(parent, 16) && hex(flags, 2)
            && trace.bytes().any(|b| b != b'0') && parent.bytes().any(|b| b != b'0'))
}

/// A node running http-fetch (allowed to reach `upstream` only) at `/fetch`, with `env`.
fn fetch_node(work: &Path, upstream: SocketAddr, env: &[(&str, &str)]) -> Node {
    let config = work.join("config");
    std::fs::create_dir_all(&config).unwrap();
    let fetch = app_yaml(
        "fetch",
        "fetch",
        "http-fetch",
        "/fetch",
        1,
        (
            &http_client_link("httpclient", &upstream.to_string()),
            "httpclient",
            HTTP_CLIENT,
        ),
    );
    std::fs::write(config.join("fetch.yaml"), fetch).unwrap();
    Node::start_with(&config, &work.join("data"), &[], env, None)
}

#[test]
fn an_outgoing_request_carries_a_traceparent_when_traces_are_on_and_none_when_off() {
    let upstream = Recorder::start();
    let work = tempfile::tempdir().unwrap();
    // Traces on, to an OTLP endpoint where nothing listens: the spans are dropped on export.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let on = fetch_node(
        &work.path().join("on"),
        upstream.addr,
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", closed.as_str())],
    );
    let off = fetch_node(&work.path().join("off"), upstream.addr, &[]);

    let url = |which: &str| format!("/fetch?url=http://{}/{which}", upstream.addr);
    for (node, which) in [(&on, "on"), (&off, "off")] {
        let body = node.wait_for_status(&url(which), 200, DEPLOYED);
        assert_eq!(
            body,
            "200\nok",
            "through the node with traces {which}\n{}",
            node.log()
        );
    }
    let heads = upstream.heads();
    let head = |which: &str| {
        heads
            .iter()
            .find(|h| h.starts_with(&format!("GET /{which} ")))
            .unwrap_or_else(|| panic!("no GET /{which} reached the upstream: {heads:?}"))
            .clone()
    };
    let sent = traceparents(&head("on"));
    assert_eq!(sent.len(), 1, "one traceparent with traces on: {sent:?}");
    assert!(is_traceparent(&sent[0]), "not a W3C traceparent: {sent:?}");
    assert_eq!(
        traceparents(&head("off")),
        Vec::<String>::new(),
        "no traceparent with traces off"
    );

    // Each request is its own trace, sent from a client span of its own.
    let again = on.get(&url("again"));
    assert_eq!(again, Some((200, "200\nok".to_owned())), "{}", on.log());
    let heads = upstream.heads();
    let second = heads
        .iter()
        .find(|h| h.starts_with("GET /again "))
        .map(|h| traceparents(h))
        .unwrap_or_default();
    assert_eq!(second.len(), 1, "{heads:?}");
    assert!(is_traceparent(&second[0]), "{second:?}");
    assert_ne!(
        second[0].split('-').nth(2),
        sent[0].split('-').nth(2),
        "two requests, two client spans"
    );
}

/// One span as the node exported it.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    /// OTLP's `SpanKind`: 1 internal, 2 server, 3 client.
    kind: i32,
    /// OTLP's status code (2: error) and message.
    status: (i32, String),
    /// Attributes, their values as text.
    attributes: Vec<(String, String)>,
    /// Events: each one's name and attributes, values as text.
    events: Vec<(String, Vec<(String, String)>)>,
}

impl Exported {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// An OTLP/HTTP receiver on 127.0.0.1 (a free port): takes `POST /v1/traces` (protobuf,
/// keep-alive), keeps every span. Its threads end with the test process.
struct Receiver {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Exported>>>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let kept = kept.clone();
                std::thread::spawn(move || receive(stream, &kept));
            }
        });
        Receiver { addr, spans }
    }

    fn spans(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }
}

/// Serves export requests on `stream` until it closes, adding their spans to `kept`.
fn receive(mut stream: TcpStream, kept: &Mutex<Vec<Exported>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;

    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buffer.len() < end + length {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buffer.drain(..end + length).skip(end).collect();
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let mut spans = kept.lock().unwrap();
        for span in request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            let texts = |attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
                attributes
                    .iter()
                    .map(|kv| {
                        let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(Value::StringValue(s)) => s.clone(),
                            Some(Value::IntValue(i)) => i.to_string(),
                            Some(Value::BoolValue(b)) => b.to_string(),
                            Some(Value::DoubleValue(d)) => d.to_string(),
                            other => format!("{other:?}"),
                        };
                        (kv.key.clone(), value)
                    })
                    .collect::<Vec<_>>()
            };
            let attributes = texts(&span.attributes);
            let events = span
                .events
                .iter()
                .map(|e| (e.name.clone(), texts(&e.attributes)))
                .collect();
            let status = span
                .status
                .as_ref()
                .map(|s| (s.code, s.message.clone()))
                .unwrap_or_default();
            spans.push(Exported {
                name: span.name.clone(),
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                kind: span.kind,
                status,
                attributes,
                events,
            });
        }
        drop(spans);
        let answer =
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if stream.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// The names of the spans above `span` in `spans`, nearest first.
fn ancestors(spans: &[Exported], span: &Exported) -> Vec<String> {
    let mut names = Vec::new();
    let mut parent = span.parent.clone();
    while let Some(up) = spans
        .iter()
        .find(|s| s.span_id == parent && s.trace_id == span.trace_id)
    {
        names.push(up.name.clone());
        parent = up.parent.clone();
    }
    names
}

#[test]
fn keyvalue_and_outgoing_http_spans_are_children_of_the_component_call_which_records_a_deadline() {
    let receiver = Receiver::start();
    let upstream = Recorder::start();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    let apps = [
        (
            "kvsled",
            app_yaml(
                "kvsled",
                "counter",
                "http-keyvalue-counter",
                "/counter",
                1,
                (&keyvalue_link("kvsled", &[]), "kvsled", KEYVALUE_SLED),
            ),
        ),
        (
            "fetch",
            app_yaml(
                "fetch",
                "fetch",
                "http-fetch",
                "/fetch",
                1,
                (
                    &http_client_link("httpclient", &upstream.addr.to_string()),
                    "httpclient",
                    HTTP_CLIENT,
                ),
            ),
        ),
        (
            "spin",
            crate::common::manifest_with(
                "spin",
                "spin",
                &example_wasm("http-loop"),
                "/loop",
                "instances: 1",
            ),
        ),
    ];
    for (name, yaml) in &apps {
        std::fs::write(config.join(format!("{name}.yaml")), yaml).unwrap();
    }
    let endpoint = format!("http://{}", receiver.addr);
    let node = Node::start_with(
        &config,
        &work.path().join("data"),
        &["--request-timeout", "3s"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
        None,
    );

    assert_eq!(first_200(&node, "/counter/secret-key"), "0\n");
    assert_eq!(
        post(&node, "/counter/secret-key"),
        Some((200, "1\n".to_owned()))
    );
    let fetched = node.wait_for_status(
        &format!("/fetch?url=http://{}/up", upstream.addr),
        200,
        DEPLOYED,
    );
    assert_eq!(fetched, "200\nok");
    node.wait_for_status("/loop", 504, DEPLOYED);

    // The batch exporter sends every few seconds.
    let mut spans = Vec::new();
    let call_of = |spans: &[Exported], app: &str| {
        spans
            .iter()
            .filter(|s| s.name == "component_call" && s.attribute("app") == Some(app))
            .cloned()
            .collect::<Vec<_>>()
    };
    wait_until(
        "the spans of the three calls",
        Duration::from_secs(60),
        || {
            spans = receiver.spans();
            spans.iter().any(|s| s.name == "keyvalue.increment")
                && spans.iter().any(|s| s.name == "GET")
                && !call_of(&spans, "spin").is_empty()
        },
    );
    let report = || {
        spans
            .iter()
            .filter(|s| !s.name.starts_with("wit-bindgen"))
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // keyvalue: a client span with its backend and bucket, under the counter's call; the key
    // is in none of its attributes.
    let increment = spans
        .iter()
        .find(|s| s.name == "keyvalue.increment")
        .unwrap();
    assert_eq!(increment.kind, 3, "{increment:?}");
    assert_eq!(
        increment.attribute("backend"),
        Some("sled"),
        "{increment:?}"
    );
    assert_eq!(
        increment.attribute("bucket"),
        Some("kvsled"),
        "{increment:?}"
    );
    assert!(
        increment
            .attributes
            .iter()
            .all(|(_, v)| !v.contains("secret-key")),
        "the key is user data: {increment:?}"
    );
    let above = ancestors(&spans, increment);
    assert_eq!(
        above.first().map(String::as_str),
        Some("component_call"),
        "{above:?}\n{}",
        report()
    );
    let counter_call = spans
        .iter()
        .find(|s| s.span_id == increment.parent)
        .unwrap();
    assert_eq!(counter_call.attribute("app"), Some("kvsled"));
    assert_eq!(counter_call.attribute("component"), Some("counter"));
    assert_eq!(counter_call.kind, 1, "{counter_call:?}");
    assert!(
        above.len() >= 2,
        "the component call is a child of the request's span: {above:?}\n{}",
        report()
    );

    // Outgoing HTTP: a client span under the fetch's call, whose id the upstream got as the
    // parent in its traceparent.
    let get = spans.iter().find(|s| s.name == "GET").unwrap();
    assert_eq!(get.kind, 3, "{get:?}");
    assert_eq!(get.attribute("http.request.method"), Some("GET"), "{get:?}");
    assert_eq!(
        get.attribute("server.address"),
        Some("127.0.0.1"),
        "{get:?}"
    );
    assert_eq!(
        get.attribute("server.port"),
        Some(upstream.addr.port().to_string().as_str()),
        "{get:?}"
    );
    assert_eq!(
        get.attribute("http.response.status_code"),
        Some("200"),
        "{get:?}"
    );
    assert!(
        ancestors(&spans, get).iter().any(|n| n == "component_call"),
        "{:?}\n{}",
        ancestors(&spans, get),
        report()
    );
    let head = upstream
        .heads()
        .into_iter()
        .find(|h| h.starts_with("GET /up "))
        .unwrap();
    assert_eq!(
        traceparents(&head),
        vec![format!("00-{}-{}-01", get.trace_id, get.span_id)],
        "{head}"
    );

    // The runaway component: its call ends in the deadline, recorded as the span's error.
    let spin = &call_of(&spans, "spin")[0];
    assert_eq!(spin.status.0, 2, "an error status: {spin:?}");
    assert!(spin.status.1.contains("deadline of 3s"), "{spin:?}");
}

#[test]
fn a_failed_keyvalue_call_exports_its_key_nowhere_and_a_trapped_instance_is_uncounted() {
    let receiver = Receiver::start();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    // First http-keyvalue, to store a value that is not a number; then the counter in its
    // place (same app, link and bucket), whose increment of that key fails.
    let kv = |example: &str, version: &str| {
        app_yaml(
            "kverr",
            "kv",
            example,
            "/k",
            1,
            (&keyvalue_link("kvsled", &[]), "kvsled", KEYVALUE_SLED),
        )
        .replace("version: v1", &format!("version: {version}"))
    };
    std::fs::write(config.join("kverr.yaml"), kv("http-keyvalue", "v1")).unwrap();
    std::fs::write(
        config.join("echo.yaml"),
        crate::common::manifest_with(
            "echo",
            "echo",
            &example_wasm("http-echo"),
            "/echo",
            "instances: 1",
        ),
    )
    .unwrap();
    let endpoint = format!("http://{}", receiver.addr);
    let node = Node::start_with(
        &config,
        &work.path().join("data"),
        &[],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
        None,
    );

    let key = "/k/secret-key";
    // 404 `absent` from the component (a 404 before is the ingress's: no route yet).
    wait_until("http-keyvalue deployed", DEPLOYED, || {
        node.get(key) == Some((404, "absent\n".to_owned()))
    });
    let put = http_request(node.http, "PUT", key, None, b"not-a-number");
    assert_eq!(put.map(|(status, ..)| status), Some(200), "{}", node.log());
    std::fs::write(config.join("kverr.yaml"), kv("http-keyvalue-counter", "v2")).unwrap();
    let mut answer = None;
    wait_until("the counter in http-keyvalue's place", DEPLOYED, || {
        answer = post(&node, key);
        answer
            .as_ref()
            .is_some_and(|(_, body)| body.starts_with("keyvalue error"))
    });
    assert_eq!(
        answer.as_ref().map(|(status, _)| *status),
        Some(500),
        "{answer:?}"
    );
    // The node's log has the reason, key included.
    node.wait_for_log(&["wasi:keyvalue call failed", "secret-key"], SETTLED);

    // A guest that traps: its instance is counted while it runs and uncounted after.
    let trapped = crate::common::http_request_with(
        node.http,
        "GET",
        "/echo/x",
        &[("x-echo-trap", "guest-panic-text")],
        b"",
    );
    assert_eq!(
        trapped.map(|(status, ..)| status),
        Some(500),
        "{}",
        node.log()
    );
    wait_until("echo's instance uncounted after its trap", SETTLED, || {
        let text = metrics(&node);
        value(&text, r#"lattice_instances{app="echo",component="echo"}"#) == Some(0.0)
            && value(&text, "lattice_pool_slots_in_use") == Some(0.0)
    });

    let mut spans = Vec::new();
    wait_until(
        "the failed increment's and the trap's spans",
        Duration::from_secs(60),
        || {
            spans = receiver.spans();
            spans
                .iter()
                .any(|s| s.name == "keyvalue.increment" && s.status.0 == 2)
                && spans
                    .iter()
                    .any(|s| s.name == "component_call" && s.attribute("app") == Some("echo"))
        },
    );
    let increment = spans
        .iter()
        .find(|s| s.name == "keyvalue.increment" && s.status.0 == 2)
        .unwrap();
    assert!(
        increment.status.1.contains("increment failed"),
        "the error, without the key: {increment:?}"
    );
    // Nowhere in any span: attributes, events, status; but for the request's own path (which
    // is the key here: the counter counts by path) on the ingress's span.
    for span in &spans {
        let texts = span
            .attributes
            .iter()
            .filter(|(k, _)| !(span.name == "http_request" && k == "url.path"))
            .chain(span.events.iter().flat_map(|(_, a)| a))
            .map(|(_, v)| v.as_str())
            .chain(span.events.iter().map(|(name, _)| name.as_str()))
            .chain([span.status.1.as_str()]);
        for text in texts {
            assert!(
                !text.contains("secret-key") && !text.contains("guest-panic-text"),
                "user data exported in {span:?}"
            );
        }
    }
    let echo = spans
        .iter()
        .find(|s| s.name == "component_call" && s.attribute("app") == Some("echo"))
        .unwrap();
    assert_eq!(echo.status.0, 2, "a trap is the call's error: {echo:?}");
    assert!(echo.status.1.contains("component trapped"), "{echo:?}");
}

#[test]
fn an_instance_the_pool_had_no_slot_for_is_a_refusal_on_its_span_not_an_error() {
    let receiver = Receiver::start();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("spin.yaml"),
        crate::common::manifest_with(
            "spin",
            "spin",
            &example_wasm("http-loop"),
            "/loop",
            "instances: 1",
        ),
    )
    .unwrap();
    let endpoint = format!("http://{}", receiver.addr);
    // One pool slot: while one request spins, the next finds the pool full.
    let node = Node::start_with(
        &config,
        &work.path().join("data"),
        &["--max-instances", "1", "--request-timeout", "3s"],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())],
        None,
    );
    node.wait_for_status("/loop", 504, DEPLOYED);
    std::thread::scope(|scope| {
        let spinning = scope.spawn(|| node.get("/loop"));
        wait_until("spin's instance alive", DEPLOYED, || {
            value(
                &metrics(&node),
                r#"lattice_instances{app="spin",component="spin"}"#,
            ) == Some(1.0)
        });
        let refused = node.get("/loop");
        assert_eq!(refused.as_ref().map(|(s, _)| *s), Some(503), "{refused:?}");
        assert_eq!(
            value(
                &metrics(&node),
                r#"lattice_instances{app="spin",component="spin"}"#,
            ),
            Some(1.0),
            "the refused instance was never counted"
        );
        assert_eq!(spinning.join().unwrap().map(|(s, _)| s), Some(504));
    });
    let text = metrics(&node);
    assert_eq!(
        value_or_0(&text, r#"lattice_http_unavailable_total{reason="pool"}"#),
        1.0,
        "{text}"
    );

    let mut spans = Vec::new();
    wait_until("the refused call's span", Duration::from_secs(60), || {
        spans = receiver.spans();
        spans
            .iter()
            .any(|s| s.name == "component_call" && s.attribute("refused") == Some("pool"))
    });
    let refused = spans
        .iter()
        .find(|s| s.name == "component_call" && s.attribute("refused") == Some("pool"))
        .unwrap();
    assert_ne!(
        refused.status.0, 2,
        "a refusal is not an error: {refused:?}"
    );
}
