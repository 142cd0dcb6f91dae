//! What the node hosts for components beyond wasi:http, each granted by the manifest: wasi:keyvalue
//! on JetStream KV (shared by the lattice) and on sled (node-local), wasi:config from the
//! component's `config`, wasi:logging into the node's log, and outgoing HTTP to the hosts an
//! http-client link allows. Real nodes (standalone, or leaf nodes of an operator-mode hub), real
//! example components, real HTTP over loopback.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::hub::Hub;
use common::lattice::{
    Member, component, eventually, join, logs, replicas_are, see_each_other, standalone, state_is,
    write,
};
use common::observe::{Recorder, http_client_link, keyvalue_link, unique};
use common::{example_wasm, http_request_within};
use serde_json::Value;

/// The image of the keyvalue-nats capability as wadm manifests name it.
const KEYVALUE_NATS: &str = "ghcr.io/wasmcloud/keyvalue-nats:0.3.1";

/// The built-in keyvalue-sled capability.
const KEYVALUE_SLED: &str = "wasmcloud+builtin://keyvalue-sled";

/// The image of the http-client capability as wadm manifests name it.
const HTTP_CLIENT: &str = "ghcr.io/wasmcloud/http-client:0.12.0";

/// How long an app may take to be deployed (compiling included) or to report a failure.
const SETTLE: Duration = Duration::from_secs(30);

/// A wadm manifest of one component routed on the shared ingress, with its traits and the
/// capabilities its links target.
struct App {
    /// `metadata.name`.
    name: String,
    /// `metadata.annotations.version`.
    version: String,
    /// The component's name.
    component: String,
    /// Its wasm.
    wasm: PathBuf,
    /// Its route on the shared ingress.
    path: String,
    /// `spreadscaler` or `daemonscaler`.
    scaler: &'static str,
    /// The scaler's `instances`.
    instances: u32,
    /// Named config entries `(name, [(key, value)])` of the component (wasi:config).
    config: Vec<(String, Vec<(String, String)>)>,
    /// Link traits of the component, as YAML list items indented by 8 spaces.
    links: Vec<String>,
    /// Capabilities `(name, image)` besides the http-server.
    capabilities: Vec<(String, String)>,
}

impl App {
    /// App `name` (version `v1`) running example `example` as component `component`, routed at
    /// `path`, one replica (spreadscaler), no config, links or other capabilities.
    fn new(name: &str, component: &str, example: &str, path: &str) -> App {
        App {
            name: name.into(),
            version: "v1".into(),
            component: component.into(),
            wasm: example_wasm(example),
            path: path.into(),
            scaler: "spreadscaler",
            instances: 1,
            config: Vec::new(),
            links: Vec::new(),
            capabilities: Vec::new(),
        }
    }

    /// One replica on every node (daemonscaler, 1 instance).
    fn on_every_node(mut self) -> App {
        self.scaler = "daemonscaler";
        self.instances = 1;
        self
    }

    /// Adds link trait `link` (from [`keyvalue_link`] and friends) and capability `target`
    /// (`image`) it points to.
    fn link(mut self, link: String, target: &str, image: &str) -> App {
        self.links.push(link);
        self.capabilities.push((target.into(), image.into()));
        self
    }

    /// Adds the named config entry `name` with `properties`.
    fn config(mut self, name: &str, properties: &[(&str, &str)]) -> App {
        let properties = properties
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.config.push((name.into(), properties));
        self
    }

    /// The manifest's YAML.
    fn yaml(&self) -> String {
        let mut config = String::new();
        if !self.config.is_empty() {
            config.push_str("        config:\n");
            for (name, properties) in &self.config {
                config.push_str(&format!(
                    "          - name: {name}\n            properties:\n"
                ));
                for (key, value) in properties {
                    config.push_str(&format!("              {key}: '{value}'\n"));
                }
            }
        }
        let links: String = self.links.concat();
        let capabilities: String = self
            .capabilities
            .iter()
            .map(|(name, image)| {
                format!(
                    "    - name: {name}\n      type: capability\n      properties:\n        image: {image}\n"
                )
            })
            .collect();
        format!(
            r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {app}
  annotations:
    version: {version}
spec:
  components:
    - name: {component}
      type: component
      properties:
        image: file://{wasm}
{config}      traits:
        - type: {scaler}
          properties:
            instances: {instances}
{links}{capabilities}    - name: httpserver
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.2
      traits:
        - type: link
          properties:
            target:
              name: {component}
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            source:
              config:
                - name: default-http
                  properties:
                    path: {path}
"#,
            app = self.name,
            version = self.version,
            component = self.component,
            wasm = self.wasm.display(),
            scaler = self.scaler,
            instances = self.instances,
            path = self.path,
        )
    }
}

/// A wasi:keyvalue link (store, atomics) to capability `target` in wadm's older form
/// (`target: NAME`, `target_config`), with `properties` as its target config.
fn keyvalue_link_old_form(target: &str, properties: &[(&str, &str)]) -> String {
    let mut link = format!(
        "        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store, atomics]
            target: {target}
            target_config:
              - name: kv-config
                properties:
"
    );
    for (key, value) in properties {
        link.push_str(&format!("                  {key}: '{value}'\n"));
    }
    link
}

/// The counter example as app `app`, component `counter`, routed at `/counter`.
fn counter(app: &str) -> App {
    App::new(app, "counter", "http-keyvalue-counter", "/counter")
}

/// Status and body of an HTTP answer; `None` when the connection failed or timed out.
type Reply = Option<(u16, String)>;

/// `method path` through `member`'s ingress with `timeout`.
fn call(member: &Member, method: &str, path: &str, timeout: Duration) -> Reply {
    let (status, _, body) = http_request_within(timeout, member.http, method, path, &[], b"")?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `POST path` through `member` (10 s limit).
fn post(member: &Member, path: &str) -> Reply {
    call(member, "POST", path, Duration::from_secs(10))
}

/// Polls `GET path` through `member` until it answers 200; returns the body. Other answers
/// (a replica still starting, a forward in flight) are waited out; the logs of `members` come
/// with the panic after `timeout`.
fn first_200(member: &Member, path: &str, timeout: Duration, members: &[&Member]) -> String {
    eventually(
        &format!("GET {path} through {} to answer 200", member.name),
        timeout,
        members,
        || match member.get(path) {
            Some((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        },
    )
}

/// What an `app status` answer says about component `name`: the app's reason when it names the
/// component, and the component's own message fields if it has any.
fn about(status: &Value, name: &str) -> String {
    let mut text = String::new();
    let reason = status["reason"].as_str().unwrap_or("");
    if reason.contains(&format!("component {name}")) {
        text.push_str(reason);
    }
    if let Ok(entry) = component(status, name) {
        for key in ["message", "reason", "error"] {
            if let Some(more) = entry[key].as_str() {
                text.push('\n');
                text.push_str(more);
            }
        }
    }
    text
}

/// Waits until `app status APP` through `via` says `failed` and what it says about component
/// `name` contains every one of `needles`; returns that text.
fn fails_naming(via: &Member, app: &str, name: &str, needles: &[&str]) -> String {
    eventually(
        &format!("{app} to be failed, its component {name} naming {needles:?}"),
        SETTLE,
        &[via],
        || {
            let status = state_is(via, app, "failed")?;
            let text = about(&status, name);
            if needles.iter().all(|n| text.contains(n)) {
                Ok(text)
            } else {
                Err(format!("status {status}"))
            }
        },
    )
}

/// Waits until `app` is deployed with `want` replicas per host (asked through `via`).
fn deployed_on(via: &Member, app: &str, want: &[(&str, u64)], members: &[&Member]) {
    eventually(
        &format!("{app} deployed with replicas {want:?}"),
        SETTLE,
        members,
        || {
            state_is(via, app, "deployed")?;
            replicas_are(via, app, want).map(drop)
        },
    );
}

#[test]
fn nats_kv_counts_1000_concurrent_increments_via_two_nodes_exactly_and_keeps_them_over_restarts() {
    let mut hub = Hub::start();
    let work = tempfile::tempdir().unwrap();
    let mut a = join(&hub, "node-a", "a");
    let mut b = join(&hub, "node-b", "b");
    see_each_other(&[&a, &b]);

    let bucket = unique("counters");
    let app = counter("kvcount").on_every_node().link(
        keyvalue_link(
            "kvnats",
            &[
                ("bucket", bucket.as_str()),
                ("enable_bucket_auto_create", "true"),
            ],
        ),
        "kvnats",
        KEYVALUE_NATS,
    );
    a.deploy(&write(work.path(), "kvcount.yaml", &app.yaml()));
    deployed_on(&b, "kvcount", &[("node-a", 1), ("node-b", 1)], &[&a, &b]);
    for node in [&a, &b] {
        let body = first_200(node, "/counter/x", SETTLE, &[&a, &b]);
        assert_eq!(body, "0\n", "a fresh bucket through {}", node.name);
    }

    // 1000 increments, 50 at a time, alternating between the two ingresses (each runs a local
    // replica). Every one answers 200 with the counter's new value: 1..=1000, each once.
    const REQUESTS: usize = 1000;
    const CONCURRENCY: usize = 50;
    let next = AtomicUsize::new(0);
    let nodes = [&a, &b];
    let answers: Mutex<Vec<(usize, Reply)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..CONCURRENCY {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= REQUESTS {
                        break;
                    }
                    let node = nodes[i % 2];
                    // Generous: 50 writers on one key retry their compare-and-swap in turns.
                    let answer = call(node, "POST", "/counter/x", Duration::from_secs(60));
                    answers.lock().unwrap().push((i, answer));
                }
            });
        }
    });
    let answers = answers.into_inner().unwrap();
    assert_eq!(answers.len(), REQUESTS);
    let failed: Vec<String> = answers
        .iter()
        .filter(|(_, answer)| !matches!(answer, Some((200, _))))
        .map(|(i, answer)| format!("request {i} through {}: {answer:?}", nodes[i % 2].name))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {REQUESTS} increments failed, e.g.:\n{}\n{}",
        failed.len(),
        failed[..failed.len().min(10)].join("\n"),
        logs(&[&a, &b])
    );
    let mut values: Vec<u64> = answers
        .iter()
        .map(|(i, answer)| {
            let body = &answer.as_ref().unwrap().1;
            body.strip_suffix('\n')
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("request {i}: body {body:?} is not `<n>\\n`"))
        })
        .collect();
    values.sort_unstable();
    let want: Vec<u64> = (1..=REQUESTS as u64).collect();
    if values != want {
        let mut duplicates: Vec<u64> = values
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        duplicates.dedup();
        let mut distinct = values.clone();
        distinct.dedup();
        panic!(
            "the increments did not return 1..={REQUESTS} once each: {} distinct values, \
             largest {:?}, values returned twice or more (first 20) {:?}",
            distinct.len(),
            values.last(),
            &duplicates[..duplicates.len().min(20)]
        );
    }
    for node in [&a, &b] {
        assert_eq!(
            node.get("/counter/x"),
            Some((200, "1000\n".to_owned())),
            "GET through {}\n{}",
            node.name,
            logs(&[&a, &b])
        );
    }

    // Both nodes stop and start again on the same dirs: the count is in the hub's JetStream.
    for node in [&mut a, &mut b] {
        let exit = node.terminate(Duration::from_secs(20));
        assert!(
            exit.is_some_and(|s| s.success()),
            "SIGTERM of {}: {exit:?}\n{}",
            node.name,
            logs(&[&*node])
        );
    }
    a.restart();
    b.restart();
    deployed_on(&a, "kvcount", &[("node-a", 1), ("node-b", 1)], &[&a, &b]);
    for node in [&a, &b] {
        let body = first_200(node, "/counter/x", SETTLE, &[&a, &b]);
        assert_eq!(
            body, "1000\n",
            "GET through {} after the restart",
            node.name
        );
    }

    // The hub goes away and node-a restarts without it: its replica starts all the same (the
    // bucket opens on first use), answers a keyvalue error while JetStream is out of reach, and
    // counts on from 1000 once the hub is back.
    hub.stop();
    a.wait_for_log(&["leaf uplink disconnected"], Duration::from_secs(10));
    let exit = a.terminate(Duration::from_secs(20));
    assert!(
        exit.is_some_and(|s| s.success()),
        "SIGTERM of node-a: {exit:?}\n{}",
        logs(&[&a])
    );
    a.restart();
    eventually(
        "node-a's replica answering without the hub",
        SETTLE,
        &[&a],
        || match call(&a, "POST", "/counter/x", Duration::from_secs(10)) {
            Some((500, body)) if body.contains("keyvalue error") => Ok(body),
            other => Err(format!("{other:?}")),
        },
    );
    hub.restart();
    let body = eventually(
        "POST through node-a to count on with the hub back",
        SETTLE,
        &[&a],
        || match post(&a, "/counter/x") {
            Some((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        },
    );
    assert_eq!(body, "1001\n", "the first increment after the outage");
}

#[test]
fn sled_counters_are_separate_on_each_node_and_survive_a_restart() {
    let hub = Hub::start();
    let work = tempfile::tempdir().unwrap();
    let mut a = join(&hub, "node-a", "a");
    let b = join(&hub, "node-b", "b");
    see_each_other(&[&a, &b]);

    let app = counter("kvsled").on_every_node().link(
        keyvalue_link("kvsled", &[]),
        "kvsled",
        KEYVALUE_SLED,
    );
    a.deploy(&write(work.path(), "kvsled.yaml", &app.yaml()));
    deployed_on(&a, "kvsled", &[("node-a", 1), ("node-b", 1)], &[&a, &b]);
    for node in [&a, &b] {
        let body = first_200(node, "/counter/x", SETTLE, &[&a, &b]);
        assert_eq!(body, "0\n", "a fresh sled tree on {}", node.name);
    }

    // Each ingress serves its own replica, which counts in its own node's sled.
    for (node, times) in [(&a, 3), (&b, 5)] {
        for n in 1..=times {
            assert_eq!(
                post(node, "/counter/x"),
                Some((200, format!("{n}\n"))),
                "POST {n} through {}\n{}",
                node.name,
                logs(&[&a, &b])
            );
        }
    }
    for (node, count) in [(&a, "3\n"), (&b, "5\n")] {
        assert_eq!(
            node.get("/counter/x"),
            Some((200, count.to_owned())),
            "GET through {}",
            node.name
        );
    }

    // node-a restarts on the same data dir: its count is still there once its replica runs.
    let exit = a.terminate(Duration::from_secs(20));
    assert!(
        exit.is_some_and(|s| s.success()),
        "SIGTERM: {exit:?}\n{}",
        logs(&[&a])
    );
    a.restart();
    deployed_on(&b, "kvsled", &[("node-a", 1), ("node-b", 1)], &[&a, &b]);
    let body = first_200(&a, "/counter/x", SETTLE, &[&a, &b]);
    assert_eq!(body, "3\n", "GET through node-a after its restart");
    assert_eq!(
        b.get("/counter/x"),
        Some((200, "5\n".to_owned())),
        "GET through node-b after node-a's restart"
    );
}

#[test]
fn keyvalue_is_denied_unless_linked_and_a_linked_counter_logs_with_its_app_and_component() {
    let node = standalone("solo");
    let work = tempfile::tempdir().unwrap();

    // No keyvalue link at all.
    let nolink = App::new("nolink", "counter", "http-keyvalue-counter", "/nolink");
    // A keyvalue-nats link (older wadm form) to a bucket that does not exist, no auto-create.
    let missing = unique("missing");
    let nobucket = App::new("nobucket", "counter", "http-keyvalue-counter", "/nobucket").link(
        keyvalue_link_old_form("kvnats", &[("bucket", missing.as_str())]),
        "kvnats",
        KEYVALUE_NATS,
    );
    // A proper link, default name `default`.
    let bucket = unique("counters");
    let linked = counter("kv").link(
        keyvalue_link(
            "kvnats",
            &[
                ("bucket", bucket.as_str()),
                ("enable_bucket_auto_create", "true"),
            ],
        ),
        "kvnats",
        KEYVALUE_NATS,
    );
    // A sled link granting atomics only: increments work, store calls are denied.
    let atomics_only = App::new("kvatomics", "counter", "http-keyvalue-counter", "/atomics").link(
        keyvalue_link("kvsled", &[]).replace("[store, atomics]", "[atomics]"),
        "kvsled",
        KEYVALUE_SLED,
    );
    for app in [&nolink, &nobucket, &linked, &atomics_only] {
        let file = write(work.path(), &format!("{}.yaml", app.name), &app.yaml());
        let out = node.cli(&["app", "deploy", &file.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "deploying {} must succeed ({}): {stderr}",
            app.name,
            out.status
        );
        eprintln!("deploy {}: stderr {stderr:?}", app.name);
        if app.name == "nolink" {
            assert!(
                stderr.contains("warning") && stderr.contains("wasi:keyvalue/"),
                "deploying a component without its keyvalue link warns, naming the import: \
                 {stderr}"
            );
        }
    }

    let text = fails_naming(&node, "nolink", "counter", &["wasi:keyvalue/"]);
    eprintln!("nolink: {text}");
    let text = fails_naming(&node, "nobucket", "counter", &[missing.as_str()]);
    eprintln!("nobucket: {text}");

    deployed_on(&node, "kv", &[("solo", 1)], &[&node]);
    assert_eq!(
        post(&node, "/counter/x"),
        Some((200, "1\n".to_owned())),
        "{}",
        logs(&[&node])
    );
    assert_eq!(node.get("/counter/x"), Some((200, "1\n".to_owned())));
    // `store=` picks the identifier for store.open: only the link's name (`default`) exists.
    assert_eq!(
        node.get("/counter/x?store=default"),
        Some((200, "1\n".to_owned()))
    );
    let answer = node.get("/counter/x?store=nope");
    assert!(
        matches!(&answer, Some((500, body)) if body.contains("no-such-store")),
        "GET ?store=nope: {answer:?}"
    );

    // The increment's wasi:logging line, with the app and component as fields.
    let line = node.wait_for_log(
        &[
            "incremented /counter/x to 1",
            "app=kv",
            "component=counter",
            "context=counter",
        ],
        Duration::from_secs(10),
    );
    eprintln!("{line}");

    // A key too long for a NATS subject is refused before it reaches NATS (nats-server would
    // close the node's connection over it), as is a key JetStream does not take; the node's
    // NATS connection is untouched, and the next increment counts on.
    let long = format!("/counter/{}", "k".repeat(5000));
    let answer = post(&node, &long);
    assert!(
        matches!(&answer, Some((500, body)) if body.contains("at most 1024")),
        "POST of a 5009-byte key: {answer:?}"
    );
    let answer = post(&node, "/counter/a%20b");
    assert!(
        matches!(&answer, Some((500, body)) if body.contains("ADR-8")),
        "POST of a key with '%': {answer:?}"
    );
    assert_eq!(
        post(&node, "/counter/x"),
        Some((200, "2\n".to_owned())),
        "{}",
        logs(&[&node])
    );
    let log = logs(&[&node]);
    assert!(
        !log.contains("maximum control line") && !log.contains("disconnected from nats-server"),
        "the node's NATS connection was cut:\n{log}"
    );

    // Calls through an interface the link does not list are access-denied.
    deployed_on(&node, "kvatomics", &[("solo", 1)], &[&node]);
    assert_eq!(post(&node, "/atomics/x"), Some((200, "1\n".to_owned())));
    assert_eq!(post(&node, "/atomics/x"), Some((200, "2\n".to_owned())));
    let answer = node.get("/atomics/x");
    assert!(
        matches!(&answer, Some((500, body)) if body.contains("access-denied")),
        "GET through a link without `store`: {answer:?}"
    );
    node.wait_for_log(
        &["wasi:keyvalue get denied", "app=kvatomics"],
        Duration::from_secs(10),
    );
}

/// `method path` with `body` through `member`: status, headers and body (lossy UTF-8).
fn send(
    member: &Member,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let (status, headers, body) = http_request_within(
        Duration::from_secs(30),
        member.http,
        method,
        path,
        &[],
        body.as_bytes(),
    )
    .unwrap_or_else(|| panic!("{method} {path}: no answer"));
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn every_store_and_batch_call_works_alike_on_nats_and_sled_and_an_increment_counts_from_a_delete() {
    let node = standalone("solo");
    let work = tempfile::tempdir().unwrap();
    let bucket = unique("kv");
    let nats_link = keyvalue_link(
        "kvnats",
        &[
            ("bucket", bucket.as_str()),
            ("enable_bucket_auto_create", "true"),
        ],
    );
    let kvn = App::new("kvn", "kv", "http-keyvalue", "/kvn").link(
        nats_link.replace("[store, atomics]", "[store, batch]"),
        "kvnats",
        KEYVALUE_NATS,
    );
    let kvs = App::new("kvs", "kv", "http-keyvalue", "/kvs").link(
        keyvalue_link("kvsled", &[]).replace("[store, atomics]", "[store, batch]"),
        "kvsled",
        KEYVALUE_SLED,
    );
    // The counter on the same JetStream bucket as kvn.
    let cnt = counter("cnt").link(nats_link, "kvnats", KEYVALUE_NATS);
    for app in [&kvn, &kvs, &cnt] {
        node.deploy(&write(
            work.path(),
            &format!("{}.yaml", app.name),
            &app.yaml(),
        ));
    }
    for app in ["kvn", "kvs", "cnt"] {
        deployed_on(&node, app, &[("solo", 1)], &[&node]);
    }

    for p in ["/kvn", "/kvs"] {
        let at = |key: &str| format!("{p}/{key}");
        let status = |method: &str, key: &str| send(&node, method, &at(key), "").0;
        let (code, _, body) = send(&node, "PUT", &at("a"), "1");
        assert_eq!(
            (code, body.as_str()),
            (200, "ok\n"),
            "PUT through {p}\n{}",
            logs(&[&node])
        );
        assert_eq!(send(&node, "GET", &at("a"), "").2, "1", "GET through {p}");
        assert_eq!(
            status("HEAD", "a"),
            200,
            "HEAD of a present key through {p}"
        );
        assert_eq!(
            status("HEAD", "none"),
            404,
            "HEAD of an absent key through {p}"
        );
        assert_eq!(
            status("GET", "none"),
            404,
            "GET of an absent key through {p}"
        );
        assert_eq!(status("DELETE", "a"), 200, "DELETE through {p}");
        assert_eq!(status("GET", "a"), 404, "GET after DELETE through {p}");
        assert_eq!(status("HEAD", "a"), 404, "HEAD after DELETE through {p}");
        assert_eq!(
            status("DELETE", "a"),
            200,
            "DELETE of an absent key through {p}"
        );

        // 1100 keys by set-many: list-keys takes two pages (1000 keys a page) and gives each
        // key once, sorted.
        let keys: Vec<String> = (0..1100).map(|i| at(&format!("k{i:04}"))).collect();
        let pairs: String = keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k}=v{i}\n"))
            .collect();
        let (code, _, body) = send(&node, "POST", &format!("{p}?set-many"), &pairs);
        assert_eq!((code, body.as_str()), (200, "ok\n"), "set-many through {p}");
        let (code, headers, body) = send(&node, "GET", &format!("{p}?keys"), "");
        assert_eq!(code, 200, "list-keys through {p}: {body}");
        let listed: Vec<&str> = body.lines().filter(|k| k.starts_with(&at("k"))).collect();
        assert_eq!(listed, keys, "list-keys through {p}");
        let pages = headers
            .iter()
            .find(|(n, _)| n == "x-pages")
            .map(|(_, v)| v.as_str());
        assert_eq!(pages, Some("2"), "list-keys pages through {p}");

        let ask = format!("{}\n{}\n{}\n", at("k0001"), at("none"), at("k1099"));
        let (code, _, body) = send(&node, "POST", &format!("{p}?get-many"), &ask);
        assert_eq!(code, 200, "get-many through {p}: {body}");
        assert_eq!(
            body,
            format!(
                "{}=v1\n{}\n{}=v1099\n",
                at("k0001"),
                at("none"),
                at("k1099")
            ),
            "get-many through {p}"
        );

        let (code, _, body) = send(&node, "POST", &format!("{p}?delete-many"), &keys.join("\n"));
        assert_eq!(
            (code, body.as_str()),
            (200, "ok\n"),
            "delete-many through {p}"
        );
        let (_, _, body) = send(&node, "GET", &format!("{p}?keys"), "");
        assert!(
            !body.lines().any(|k| k.starts_with(&at("k"))),
            "keys left after delete-many through {p}: {body}"
        );
    }

    // The counter's key deleted by the other app (a delete marker in JetStream): the next
    // increment starts again from 1.
    assert_eq!(post(&node, "/counter/x"), Some((200, "1\n".to_owned())));
    assert_eq!(post(&node, "/counter/x"), Some((200, "2\n".to_owned())));
    let (code, _, body) = send(&node, "POST", "/kvn?delete-many", "/counter/x\n");
    assert_eq!(
        (code, body.as_str()),
        (200, "ok\n"),
        "delete-many of the counter"
    );
    assert_eq!(node.get("/counter/x"), Some((200, "0\n".to_owned())));
    assert_eq!(
        post(&node, "/counter/x"),
        Some((200, "1\n".to_owned())),
        "the first increment after a delete\n{}",
        logs(&[&node])
    );
    assert_eq!(post(&node, "/counter/x"), Some((200, "2\n".to_owned())));
    // One JetStream bucket behind both apps.
    let (code, _, body) = send(&node, "GET", "/kvn?keys", "");
    assert!(
        code == 200 && body.contains("/counter/x"),
        "kvn lists the counter's key: {code} {body}"
    );
}

#[test]
fn outgoing_http_reaches_only_the_allowed_host_and_a_denied_call_opens_no_connection() {
    let allowed = Recorder::with_body("hello from the allowed upstream");
    let other = Recorder::with_body("hello from the other upstream");
    let node = standalone("solo");
    let work = tempfile::tempdir().unwrap();

    let app = App::new("fetch", "fetch", "http-fetch", "/fetch").link(
        http_client_link("httpclient", &allowed.addr.to_string()),
        "httpclient",
        HTTP_CLIENT,
    );
    node.deploy(&write(work.path(), "fetch.yaml", &app.yaml()));
    deployed_on(&node, "fetch", &[("solo", 1)], &[&node]);

    let answer = node.get(&format!("/fetch?url=http://{}/hi", allowed.addr));
    assert!(
        matches!(&answer, Some((200, body))
            if body.starts_with("200\n") && body.contains("hello from the allowed upstream")),
        "GET through the allowed host: {answer:?}\n{}",
        logs(&[&node])
    );
    assert!(
        allowed.connections() >= 1,
        "the allowed upstream saw no connection"
    );

    // Same address, another port: not on the list.
    let answer = node.get(&format!("/fetch?url=http://{}/hi", other.addr));
    assert!(
        matches!(&answer, Some((502, body)) if body.contains("HttpRequestDenied")),
        "GET through a host not on the list: {answer:?}"
    );
    // Another name for the allowed address: not on the list either.
    let before = allowed.connections();
    let answer = node.get(&format!(
        "/fetch?url=http://localhost:{}/hi",
        allowed.addr.port()
    ));
    assert!(
        matches!(&answer, Some((502, body)) if body.contains("HttpRequestDenied")),
        "GET through localhost: {answer:?}"
    );
    assert_eq!(
        other.connections(),
        0,
        "the denied upstream must see no connection"
    );
    assert_eq!(
        allowed.connections(),
        before,
        "a call denied by name must not connect"
    );
}

#[test]
fn a_config_value_changed_in_the_manifest_and_redeployed_changes_the_answer() {
    let node = standalone("solo");
    let work = tempfile::tempdir().unwrap();

    let v1 = App::new("cfg", "config", "http-config", "/config")
        .config("greetings", &[("greeting", "Hello")])
        .config("farewells", &[("farewell", "Goodbye")]);
    node.deploy(&write(work.path(), "v1.yaml", &v1.yaml()));
    deployed_on(&node, "cfg", &[("solo", 1)], &[&node]);
    assert_eq!(
        node.get("/config/greeting"),
        Some((200, "Hello\n".to_owned())),
        "{}",
        logs(&[&node])
    );
    assert_eq!(
        node.get("/config"),
        Some((200, "farewell=Goodbye\ngreeting=Hello\n".to_owned()))
    );
    assert_eq!(
        node.get("/config/nope"),
        Some((404, "no config key nope\n".to_owned()))
    );

    let mut v2 = App::new("cfg", "config", "http-config", "/config")
        .config("greetings", &[("greeting", "Bonjour")])
        .config("farewells", &[("farewell", "Goodbye")]);
    v2.version = "v2".into();
    let out = node.deploy(&write(work.path(), "v2.yaml", &v2.yaml()));
    assert_eq!(out["changed"], true, "{out}");
    // Every answer on the way is the old or the new value, until it is the new one.
    eventually(
        "GET /config/greeting to answer Bonjour",
        SETTLE,
        &[&node],
        || match node.get("/config/greeting") {
            Some((200, body)) if body == "Bonjour\n" => Ok(()),
            Some((200, body)) if body == "Hello\n" => Err("still Hello".to_owned()),
            other => panic!(
                "GET /config/greeting during the update: {other:?}\n{}",
                logs(&[&node])
            ),
        },
    );
    assert_eq!(
        node.get("/config"),
        Some((200, "farewell=Goodbye\ngreeting=Bonjour\n".to_owned()))
    );
}
