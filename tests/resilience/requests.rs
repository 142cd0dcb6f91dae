//! Tests: requests run once, pool exhaustion is 503, Host headers are checked, traps cost the same.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::hub::Hub;
use crate::common::lattice::{
    HEARTBEAT, all_answer, eventually, join, logs, replicas, replicas_are, see_each_other, write,
};
use crate::common::{
    Dirs, Node, example_wasm, http_request_with, http_server_link, manifest, manifest_with,
};

/// How long a deploy may take to be served.
const SETTLE: Duration = Duration::from_secs(30);

/// One raw HTTP exchange over a fresh connection: `request` as bytes, the status of the answer
/// (`None` when the connection failed or the answer has no status line).
fn raw_status(addr: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream.write_all(request).ok()?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.")?.get(2..5)?.parse().ok()
}

/// The status of a GET of `/` over HTTP/2 (h2c, prior knowledge) to `addr`, with `host` as the
/// `Host` header if given (`:authority` is `addr`).
fn h2_status(addr: SocketAddr, host: Option<&str>) -> Option<u16> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // reqwest 0.13 without a TLS provider of its own: the process's (ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest_otlp::Client::builder()
            .no_proxy()
            .http2_prior_knowledge()
            .timeout(Duration::from_secs(10))
            .build()
            .ok()?;
        let mut request = client.get(format!("http://{addr}/"));
        if let Some(host) = host {
            request = request.header("host", host);
        }
        let response = request.send().await.ok()?;
        assert_eq!(response.version(), reqwest_otlp::Version::HTTP_2);
        Some(response.status().as_u16())
    })
}

#[test]
fn duplicate_missing_and_invalid_host_headers_get_400() {
    let dirs = Dirs::with_hello();
    let node = Node::start_in(&dirs.config, &dirs.data, &[]);
    node.wait_for_status("/", 200, SETTLE);
    let cases: [(&str, &[u8], u16); 7] = [
        (
            "one valid Host",
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            200,
        ),
        (
            "a Host with a port",
            b"GET / HTTP/1.1\r\nHost: 127.0.0.1:80\r\nConnection: close\r\n\r\n",
            200,
        ),
        (
            "two Host lines",
            b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "two different Host lines",
            b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "Host: bad host",
            b"GET / HTTP/1.1\r\nHost: bad host\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "Host: ../../etc/passwd",
            b"GET / HTTP/1.1\r\nHost: ../../etc/passwd\r\nConnection: close\r\n\r\n",
            400,
        ),
        (
            "HTTP/1.1 without Host",
            b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
            400,
        ),
    ];
    for (what, request, want) in cases {
        assert_eq!(
            raw_status(node.http, request),
            Some(want),
            "{what}; log:\n{}",
            node.log()
        );
    }
    // HTTP/2: `:authority` alone, or with a Host that agrees, is fine; one that differs is not.
    let authority = node.http.to_string();
    assert_eq!(h2_status(node.http, None), Some(200), "{}", node.log());
    assert_eq!(
        h2_status(node.http, Some(&authority)),
        Some(200),
        "{}",
        node.log()
    );
    assert_eq!(
        h2_status(node.http, Some("other.example")),
        Some(400),
        "{}",
        node.log()
    );
}

/// The lines `node` logged within the span of requests to `path`, and its components' stderr,
/// since byte `from` of its log; timestamps cut off, the ingress address as `<ingress>`, each
/// request's id as `request_id=<id>`.
fn request_lines(node: &Node, from: usize, path: &str) -> Vec<String> {
    let span = format!("url.path=\"{path}\"");
    let ingress = node.http.to_string();
    node.log()[from..]
        .lines()
        .filter(|line| {
            (line.contains("http_request{") && line.contains(&span))
                || line.contains("stream=\"stderr\"")
        })
        .map(|line| {
            let line = line
                .split_once(' ')
                .map_or(line, |(_, rest)| rest)
                .trim()
                .replace(&ingress, "<ingress>");
            match line.split_once("request_id=") {
                Some((before, after)) => {
                    let rest = after.trim_start_matches(|c: char| c.is_ascii_alphanumeric());
                    format!("{before}request_id=<id>{rest}")
                }
                None => line,
            }
        })
        .collect()
}

/// VmRSS of process `pid`, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn a_trap_logs_the_same_with_and_without_rust_backtrace() {
    let echo = manifest("echo", &example_wasm("http-echo"), "/echo");
    let plain_dirs = Dirs::with_manifest("echo.yaml", &echo);
    let traced_dirs = Dirs::with_manifest("echo.yaml", &echo);
    let plain = Node::start_with(
        &plain_dirs.config,
        &plain_dirs.data,
        &[],
        &[("RUST_BACKTRACE", "0")],
        None,
    );
    let traced = Node::start_with(
        &traced_dirs.config,
        &traced_dirs.data,
        &[],
        &[("RUST_BACKTRACE", "1")],
        None,
    );
    let mut seen = Vec::new();
    for node in [&plain, &traced] {
        node.wait_for_status("/echo", 200, SETTLE);
        let rss_before = rss_kib(node.pid());
        let from = node.log().len();
        let answer =
            http_request_with(node.http, "GET", "/echo/t", &[("x-echo-trap", "boom")], b"");
        assert_eq!(
            answer.as_ref().map(|a| a.0),
            Some(500),
            "{answer:?}\n{}",
            node.log()
        );
        node.wait_for_log(
            &["component trapped", "url.path=\"/echo/t\""],
            Duration::from_secs(10),
        );
        // Whatever else the request logs comes with or before the trap line; a moment more
        // for lines still in the pipe.
        std::thread::sleep(Duration::from_millis(300));
        let lines = request_lines(node, from, "/echo/t");
        let bytes: usize = lines.iter().map(String::len).sum();
        eprintln!(
            "trap: {} log lines, {bytes} bytes; RSS {rss_before} KiB before the first trap, {} KiB after",
            lines.len(),
            rss_kib(node.pid())
        );
        seen.push(lines);
    }
    let (without, with) = (&seen[0], &seen[1]);
    assert!(
        without.iter().any(|l| l.contains("component trapped")),
        "{without:#?}"
    );
    assert_eq!(
        without, with,
        "a trap logs other lines with RUST_BACKTRACE=1 than without"
    );
    assert!(
        !with.iter().any(|l| l.contains("Stack backtrace")),
        "a host backtrace was logged: {with:#?}"
    );
}

#[test]
fn requests_past_the_instance_pool_get_200_or_503_with_retry_after() {
    const REQUESTS: usize = 2000;
    let echo = manifest("echo", &example_wasm("http-echo"), "/echo");
    let dirs = Dirs::with_manifest("echo.yaml", &echo);
    // A pool of 8 instances and a concurrency bound far above it: the pool runs out first.
    let node = Node::start_in(
        &dirs.config,
        &dirs.data,
        &["--max-instances", "8", "--replica-concurrency", "5000"],
    );
    node.wait_for_status("/echo", 200, SETTLE);
    let addr = node.http;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let answers: Vec<Result<(u16, bool), String>> = runtime.block_on(async move {
        // reqwest 0.13 without a TLS provider of its own: the process's (ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest_otlp::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(REQUESTS));
        let tasks: Vec<_> = (0..REQUESTS)
            .map(|i| {
                let client = client.clone();
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    let response = client
                        .get(format!("http://{addr}/echo/{i}"))
                        .header("x-echo-sleep-ms", "50")
                        .send()
                        .await
                        .map_err(|e| format!("request {i}: {e}"))?;
                    let retry_after = response.headers().contains_key("retry-after");
                    Ok((response.status().as_u16(), retry_after))
                })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        answers
    });
    let count = |status: u16| {
        answers
            .iter()
            .filter(|a| matches!(a, Ok((s, _)) if *s == status))
            .count()
    };
    let (ok, busy) = (count(200), count(503));
    eprintln!("{REQUESTS} concurrent requests, pool of 8: {ok} × 200, {busy} × 503");
    let other: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((200 | 503, _))))
        .take(10)
        .collect();
    assert!(
        other.is_empty(),
        "answers other than 200 or 503, e.g. {other:?}; log:\n{}",
        node.log()
    );
    assert!(
        ok > 0 && busy > 0,
        "{ok} × 200, {busy} × 503: the pool was never exhausted?"
    );
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok((200, _)) | Ok((503, true)))),
        "a 503 without Retry-After"
    );
    assert_eq!(node.count_log("component trapped"), 0, "{}", node.log());
    // The node serves on once the burst is over.
    node.wait_for_status("/echo", 200, Duration::from_secs(5));
}

/// A manifest of app `app`: the sled counter example at `path`, one replica on the node
/// labelled `zone=<zone>`, with `lattice.retry-safe: "true"` in its config if `retry_safe`.
fn sled_counter_on(app: &str, zone: &str, path: &str, retry_safe: bool) -> String {
    let config = if retry_safe {
        "
        config:
          - name: rpc
            properties:
              lattice.retry-safe: \"true\""
    } else {
        ""
    };
    let wasm = example_wasm("http-keyvalue-counter");
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {app}
  annotations:
    version: v1
spec:
  components:
    - name: counter
      type: component
      properties:
        image: file://{wasm}{config}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
            spread:
              - name: only-{zone}
                requirements:
                  zone: {zone}
        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store, atomics]
            target:
              name: kvsled
    - name: kvsled
      type: capability
      properties:
        image: wasmcloud+builtin://keyvalue-sled
{link}"#,
        wasm = wasm.display(),
        link = http_server_link("counter", path),
    )
}

/// Status and body of a POST to `path` through `node`.
fn post(node: &Node, path: &str) -> Option<(u16, String)> {
    http_request_with(node.http, "POST", path, &[], b"")
        .map(|(status, _, body)| (status, String::from_utf8_lossy(&body).into_owned()))
}

#[test]
fn a_post_to_a_stalled_replica_runs_once_unless_its_component_declares_it_retry_safe() {
    let _hub = Hub::start();
    let hub = &_hub;
    let work = tempfile::tempdir().unwrap();
    let a = join(hub, "node-a", "a");
    let b = join(hub, "node-b", "b");
    see_each_other(&[&a, &b]);
    a.deploy(&write(
        work.path(),
        "once.yaml",
        &sled_counter_on("once", "b", "/counter", false),
    ));
    a.deploy(&write(
        work.path(),
        "twice.yaml",
        &sled_counter_on("twice", "b", "/twice", true),
    ));
    for app in ["once", "twice"] {
        eventually(&format!("{app} on node-b only"), SETTLE, &[&a, &b], || {
            replicas_are(&a, app, &[("node-a", 0), ("node-b", 1)])
        });
    }
    // Through node-a, which has no replica: every request travels to node-b.
    all_answer(&[&a], "/counter/x", "0\n", SETTLE);
    all_answer(&[&a], "/twice/x", "0\n", SETTLE);

    // node-b's process stalls (its nats-server does not) with the POST in flight: its
    // replica takes the request when it wakes, 2 s later, well past the 1 s accept timeout.
    kill(Pid::from_raw(b.pid()), Signal::SIGSTOP).unwrap();
    let (posted, resent) = std::thread::scope(|scope| {
        let once = scope.spawn(|| post(&a, "/counter/x"));
        let twice = scope.spawn(|| post(&a, "/twice/x"));
        std::thread::sleep(Duration::from_secs(2));
        kill(Pid::from_raw(b.pid()), Signal::SIGCONT).unwrap();
        (once.join().unwrap(), twice.join().unwrap())
    });
    assert_eq!(
        posted,
        Some((200, "1\n".to_owned())),
        "the POST through node-a\n{}",
        logs(&[&a, &b])
    );
    // A second run would come right after the first, when node-b works off what queued up.
    std::thread::sleep(HEARTBEAT * 2);
    assert_eq!(
        a.get("/counter/x"),
        Some((200, "1\n".to_owned())),
        "the counter after one POST\n{}",
        logs(&[&a, &b])
    );
    assert_eq!(
        b.count_log("incremented /counter/x to"),
        1,
        "the POST ran more than once\n{}",
        logs(&[&a, &b])
    );
    // The component that declared itself retry-safe got the POST again after 1 s without an
    // accept: it ran on each copy once node-b woke up.
    assert_eq!(resent.as_ref().map(|r| r.0), Some(200), "{resent:?}");
    assert!(
        b.count_log("incremented /twice/x to") >= 2,
        "a retry-safe component's POST was not resent\n{}",
        logs(&[&a, &b])
    );
}

/// Starts node `name` in `zone` joined to `hub`, with `extra` flags, its config dir holding
/// `manifests` (file name, text); waits until it is up. Returns the node and its dir.
fn join_with(
    hub: &Hub,
    name: &str,
    zone: &str,
    extra: &[&str],
    manifests: &[(&str, &str)],
) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    for (file, text) in manifests {
        std::fs::write(config.join(file), text).unwrap();
    }
    let creds = hub.user_creds(dir.path(), "node.creds");
    let creds = creds.to_string_lossy().into_owned();
    let leaf = hub.leaf_url();
    let label = format!("zone={zone}");
    let heartbeat = format!("{}ms", HEARTBEAT.as_millis());
    let mut flags = vec![
        "--creds",
        &creds,
        "--leaf-url",
        &leaf,
        "--js-domain",
        Hub::JS_DOMAIN,
        "--name",
        name,
        "--label",
        &label,
        "--heartbeat-interval",
        &heartbeat,
    ];
    flags.extend_from_slice(extra);
    let node = Node::start_in(&config, &dir.path().join("data"), &flags);
    node.wait_for_log(&["lattice node is up"], SETTLE);
    (node, dir)
}

/// Replicas of `app` per host, from `lattice get inventory` through the node with data dir
/// `data`.
fn inventory_of(data: &Path, app: &str) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let data = data.to_string_lossy();
    let out = crate::common::lattice_cli(&["get", "inventory", "--data-dir", &data, "-o", "json"]);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stderr)))?;
    let hosts = crate::common::lattice::array(value)?;
    Ok(replicas(&hosts, app))
}

/// Sends a GET for `path` to `node` that holds its instance `ms` milliseconds, in a thread.
fn slow_get<'s>(
    scope: &'s std::thread::Scope<'s, '_>,
    node: &'s Node,
    path: &'s str,
    ms: &'s str,
) -> std::thread::ScopedJoinHandle<'s, Option<u16>> {
    scope.spawn(move || {
        http_request_with(node.http, "GET", path, &[("x-echo-sleep-ms", ms)], b"").map(|a| a.0)
    })
}

#[test]
fn a_saturated_replica_passes_requests_to_an_idle_one_elsewhere_before_503() {
    let hub = Hub::start();
    let scaler = "instances: 2
            spread:
              - name: a
                requirements:
                  zone: a
                weight: 1
              - name: b
                requirements:
                  zone: b
                weight: 1";
    let echo = manifest_with("spill", "echo", &example_wasm("http-echo"), "/echo", scaler);
    // One request at a time per replica.
    let one = ["--replica-concurrency", "1"];
    let (a, a_dir) = join_with(&hub, "node-a", "a", &one, &[("spill.yaml", &echo)]);
    let (b, _b_dir) = join_with(&hub, "node-b", "b", &one, &[]);
    // node-c runs no replica: it forwards through the queue group.
    let (c, _c_dir) = join_with(&hub, "node-c", "c", &one, &[]);
    let want: std::collections::BTreeMap<String, u64> =
        [("node-a", 1), ("node-b", 1), ("node-c", 0)]
            .map(|(n, r)| (n.to_owned(), r))
            .into();
    let deadline = Instant::now() + SETTLE;
    loop {
        let got = inventory_of(&a_dir.path().join("data"), "spill");
        if got.as_ref() == Ok(&want) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas of spill: {got:?}\n{}\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    a.wait_for_status("/echo", 200, SETTLE);
    b.wait_for_status("/echo", 200, SETTLE);
    c.wait_for_status("/echo", 200, SETTLE);

    let statuses = Mutex::new(Vec::new());
    let via_c = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        // node-a's one place is taken for 3 s: what it gets meanwhile goes to node-b.
        let slow = slow_get(scope, &a, "/echo/slow", "3000");
        // Nothing is logged while it runs: time for it to arrive.
        std::thread::sleep(Duration::from_millis(500));
        for _ in 0..3 {
            statuses
                .lock()
                .unwrap()
                .push(a.get("/echo/fast").map(|a| a.0));
        }
        // Through node-c, NATS picks node-a or node-b; a busy node-a passes it on to node-b.
        for _ in 0..6 {
            via_c
                .lock()
                .unwrap()
                .push(c.get("/echo/via-c").map(|a| a.0));
        }
        // Now node-b's place is taken too: node-a answers 503 with Retry-After.
        let slow_b = slow_get(scope, &b, "/echo/slow-b", "2000");
        std::thread::sleep(Duration::from_millis(500));
        let busy = http_request_with(a.http, "GET", "/echo/busy", &[], b"");
        let (status, headers) = busy.map(|(s, h, _)| (s, h)).unwrap();
        assert_eq!(status, 503, "{}\n{}", a.log(), b.log());
        assert!(
            headers.iter().any(|(k, _)| k == "retry-after"),
            "503 without Retry-After: {headers:?}"
        );
        assert_eq!(slow.join().unwrap(), Some(200));
        assert_eq!(slow_b.join().unwrap(), Some(200));
    });
    assert_eq!(
        statuses.into_inner().unwrap(),
        [Some(200); 3],
        "requests to the saturated node-a while node-b was idle\n{}\n{}",
        a.log(),
        b.log()
    );
    assert_eq!(
        via_c.into_inner().unwrap(),
        [Some(200); 6],
        "requests through node-c while node-a was saturated\n{}\n{}\n{}",
        a.log(),
        b.log(),
        c.log()
    );
    assert!(
        b.count_log("lattice invocation served") >= 9,
        "node-b did not serve node-a's overflow and node-c's requests\n{}",
        b.log()
    );
}
