//! `lattice up` end to end: the real binary, its real nats-server, real components built from
//! `examples/`, real HTTP over loopback.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

#[path = "node/init.rs"]
mod init;
#[path = "node/reuse.rs"]
mod reuse;

use std::time::{Duration, Instant};

use common::{Node, alive, example_wasm, http_request, manifest};

/// The example manifest, with its image made absolute so it works from a temp config dir.
fn example_manifest() -> String {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/http-hello/wadm.yaml"
    ))
    .unwrap();
    let wasm = example_wasm("http-hello");
    let replaced = text.replace(
        "file://../target/wasm32-wasip2/release/http_hello.wasm",
        &format!("file://{}", wasm.display()),
    );
    assert_ne!(
        replaced, text,
        "examples/http-hello/wadm.yaml no longer names its wasm as expected"
    );
    replaced
}

#[test]
fn serves_the_example_manifest_within_5_seconds() {
    let dirs = common::Dirs::with_manifest("wadm.yaml", &example_manifest());
    let started = Instant::now();
    let node = Node::start_in(&dirs.config, &dirs.data, &[]);
    let body = node.wait_for_status("/hello", 200, Duration::from_secs(5));
    assert!(
        body.contains("Hello from lattice") && body.contains("/hello"),
        "{body}"
    );
    eprintln!("first 200 after {:?}", started.elapsed());
    // The answer names the full path with its query.
    let (status, body) = node.get("/a/b?c=d").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("/a/b?c=d"), "{body}");

    // HTTP/2 without TLS (h2c, prior knowledge) is served too.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (version, body) = runtime.block_on(async {
        // reqwest 0.13 without a TLS provider of its own: the process's (ring).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest_otlp::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let response = client
            .get(format!("http://{}/h2", node.http))
            .send()
            .await
            .unwrap();
        (response.version(), response.text().await.unwrap())
    });
    assert_eq!(version, reqwest_otlp::Version::HTTP_2);
    assert!(body.contains("/h2"), "{body}");
}

#[test]
fn manifests_deploy_update_and_undeploy_while_the_node_runs() {
    let node = Node::start(&[]);
    let hello = example_wasm("http-hello");
    let goodbye = example_wasm("http-goodbye");
    std::fs::write(
        node.config_dir.join("first.yaml"),
        manifest("first", &hello, "/first"),
    )
    .unwrap();
    node.wait_for_status("/first", 200, Duration::from_secs(10));
    assert_eq!(
        node.get("/second").unwrap().0,
        404,
        "no app holds /second yet"
    );

    let second = node.config_dir.join("second.yml");
    std::fs::write(&second, manifest("second", &hello, "/second")).unwrap();
    let body = node.wait_for_status("/second", 200, Duration::from_secs(10));
    assert!(body.starts_with("Hello from lattice"), "{body}");

    std::fs::write(&second, manifest("second", &goodbye, "/second")).unwrap();
    common::wait_until(
        "the edited manifest to apply",
        Duration::from_secs(10),
        || {
            let (status, body) = node.get("/second/x").unwrap();
            assert_eq!(status, 200, "{body}");
            let switched = body.starts_with("Goodbye from lattice");
            assert!(!switched || body.contains("/second/x"), "{body}");
            switched
        },
    );
    node.wait_for_log(&["app updated", "second"], Duration::from_secs(1));

    std::fs::remove_file(&second).unwrap();
    let body = node.wait_for_status("/second", 404, Duration::from_secs(10));
    assert!(body.contains("no route"), "{body}");
    let (status, body) = node.get("/first").unwrap();
    assert_eq!(status, 200, "the first app must keep answering: {body}");
}

#[test]
fn invalid_manifests_are_reported_and_the_good_version_keeps_serving() {
    let node = Node::start(&[]);
    let goodbye = example_wasm("http-goodbye");
    let file = node.write_manifest("app.yaml", "app", "http-goodbye", "/app");
    node.wait_for_status("/app", 200, Duration::from_secs(10));
    node.write_manifest("other.yaml", "other", "http-hello", "/other");
    node.wait_for_status("/other", 200, Duration::from_secs(10));

    let wasm = |name: &str, bytes: &[u8]| {
        let path = node.config_dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    };
    let image = "spec.components[0].properties.image";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "bad YAML",
            "apiVersion: core.oam.dev/v1beta1\nkind: [Application\n".into(),
            vec!["invalid YAML"],
        ),
        (
            "a wasm file that does not exist",
            manifest("app", &node.config_dir.join("missing.wasm"), "/app"),
            vec![image, "cannot read", "missing.wasm"],
        ),
        (
            "a core module, not a component",
            manifest("app", &wasm("core.wasm", b"\0asm\x01\0\0\0"), "/app"),
            vec![image, "not a valid WebAssembly component"],
        ),
        (
            "a component without wasi:http/incoming-handler (an empty one)",
            manifest("app", &wasm("empty.wasm", b"\0asm\x0d\0\x01\0"), "/app"),
            vec![image, "not a wasi:http component"],
        ),
        (
            "a missing required field",
            manifest("app", &goodbye, "/app").replace("  name: app\n", ""),
            vec!["metadata", "missing field `name`"],
        ),
    ];
    for (case, text, expected) in cases {
        std::fs::write(&file, text).unwrap();
        let needles: Vec<&str> = ["app.yaml", "manifest not applied"]
            .into_iter()
            .chain(expected)
            .collect();
        let line = node.wait_for_log(&needles, Duration::from_secs(10));
        eprintln!("{case}: {line}");
        let (status, body) = node.get("/app").unwrap();
        assert!(
            status == 200 && body.starts_with("Goodbye"),
            "{case}: the good version must keep serving: {body}"
        );
    }

    let (status, body) = node.get("/app").unwrap();
    assert_eq!(
        (status, body.starts_with("Goodbye")),
        (200, true),
        "the good version must keep serving: {body}"
    );
    assert_eq!(
        node.get("/other").unwrap().0,
        200,
        "other apps are untouched"
    );
}

#[test]
fn a_route_held_by_one_app_is_refused_to_another() {
    let node = Node::start(&[]);
    node.write_manifest("a.yaml", "holder", "http-hello", "/shared");
    node.wait_for_status("/shared", 200, Duration::from_secs(10));
    node.write_manifest("b.yaml", "claimant", "http-goodbye", "/shared");
    let line = node.wait_for_log(&["b.yaml", "manifest not applied"], Duration::from_secs(10));
    assert!(
        line.contains("\\\"holder\\\"") || line.contains("\"holder\""),
        "{line}"
    );
    assert!(line.contains("claimant"), "{line}");
    let body = node.wait_for_status("/shared", 200, Duration::from_secs(1));
    assert!(
        body.starts_with("Hello"),
        "the first app keeps its route: {body}"
    );

    // Once the holder is gone, the claimant's manifest applies.
    std::fs::remove_file(node.config_dir.join("a.yaml")).unwrap();
    common::wait_until(
        "the claimant to take the freed route",
        Duration::from_secs(10),
        || {
            node.get("/shared")
                .is_some_and(|(s, b)| s == 200 && b.starts_with("Goodbye"))
        },
    );
}

#[test]
fn http_keeps_answering_while_nats_server_is_killed_and_restarted() {
    let node = Node::start(&[]);
    node.write_manifest("hello.yaml", "hello", "http-hello", "/");
    node.wait_for_status("/", 200, Duration::from_secs(10));
    let first = node.nats_pid();
    assert!(alive(first));

    // A load loop before, during and after the restart.
    let statuses = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (statuses, stop, addr) = (statuses.clone(), stop.clone(), node.http);
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = common::http_get(addr, "/", None).map(|r| r.0);
                statuses.lock().unwrap().push(status);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let made = || statuses.lock().unwrap().len();
    common::wait_until(
        "10 requests before the kill",
        Duration::from_secs(20),
        || made() >= 10,
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let during = made();
    node.wait_for_log(
        &["nats-server exited unexpectedly", "signal: 9"],
        Duration::from_secs(5),
    );
    node.wait_for_log(
        &["nats-server restarted and ready"],
        Duration::from_secs(10),
    );
    common::wait_until("the client reconnects", Duration::from_secs(10), || {
        node.count_log("connected to nats-server") >= 2
    });
    let after = made();
    common::wait_until(
        "10 requests after the reconnect",
        Duration::from_secs(20),
        || made() >= after + 10,
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().unwrap();
    let statuses = statuses.lock().unwrap().clone();
    assert!(
        after > during,
        "no request was made while nats-server was down and restarting"
    );
    assert!(
        statuses.iter().all(|s| *s == Some(200)),
        "every request must be answered 200: {statuses:?}"
    );
    let second = node.nats_pid();
    assert_ne!(first, second);
    assert!(alive(second), "the restarted nats-server runs");
}

#[test]
fn a_runaway_component_hits_the_deadline_and_others_keep_answering() {
    let node = Node::start(&["--request-timeout", "1s", "--replica-concurrency", "1"]);
    node.write_manifest("loop.yaml", "spin", "http-loop", "/loop");
    node.write_manifest("hello.yaml", "hello", "http-hello", "/hello");
    node.wait_for_status("/hello", 200, Duration::from_secs(10));
    node.wait_for_log(&["app deployed", "spin"], Duration::from_secs(10));

    let addr = node.http;
    // The runaway request: retried until it gets the component's one slot (a probe below may
    // have it for a moment).
    let runaway = std::thread::spawn(move || {
        loop {
            let started = Instant::now();
            let answer = common::http_get(addr, "/loop", None);
            if answer.as_ref().is_none_or(|(status, _)| *status != 503) {
                return (answer, started.elapsed());
            }
        }
    });
    // While a runaway instance spins, the component's one slot is taken (503 + Retry-After)
    // and other components still answer.
    let mut saturated = None;
    common::wait_until(
        "a second /loop request is refused with 503",
        Duration::from_secs(10),
        || {
            let answer = http_request(node.http, "GET", "/loop", None, b"").unwrap();
            let refused = answer.0 == 503;
            saturated = Some(answer);
            refused
        },
    );
    let (_, headers, _) = saturated.unwrap();
    assert!(
        headers.iter().any(|(k, v)| k == "retry-after" && v == "1"),
        "{headers:?}"
    );
    assert_eq!(node.get("/hello").unwrap().0, 200);

    let (result, elapsed) = runaway.join().unwrap();
    let (status, body) = result.expect("the runaway request gets an answer");
    assert!(status == 504 || status == 500, "{status} {body}");
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
    node.wait_for_log(
        &["exceeded the request deadline", "spin"],
        Duration::from_secs(1),
    );
    let (status, body) = node.get("/hello").unwrap();
    assert_eq!(status, 200, "{body}");
    // The slot is free again.
    assert_ne!(node.get("/loop").unwrap().0, 503);
}

#[test]
fn sigterm_stops_the_node_and_its_nats_server() {
    let mut node = Node::start(&[]);
    node.write_manifest("hello.yaml", "hello", "http-hello", "/");
    node.wait_for_status("/", 200, Duration::from_secs(10));
    let nats = node.nats_pid();
    let started = Instant::now();
    let status = node
        .terminate(Duration::from_secs(5))
        .expect("the node must exit within 5 s of SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status:?}; log:\n{}",
        node.log()
    );
    eprintln!("stopped in {:?}", started.elapsed());
    assert!(
        !alive(nats),
        "nats-server {nats} still runs after the node stopped"
    );
    node.wait_for_log(&["nats-server stopped"], Duration::from_secs(2));
}

#[test]
fn systemd_is_told_when_the_node_is_ready_and_when_it_stops() {
    let dirs = common::Dirs::with_hello();
    let (config, data) = (&dirs.config, &dirs.data);
    let socket_path = dirs.config.join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut node = Node::start_with(
        config,
        data,
        &[],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
        None,
    );
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within 10 s");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap().trim(), "READY=1");
    node.wait_for_log(&["lattice node is up"], Duration::from_secs(2));
    let (status, body) = node.get("/ready").unwrap();
    assert_eq!(
        status, 200,
        "apps present at start answer once systemd hears READY: {body}"
    );
    node.terminate(Duration::from_secs(5)).unwrap();
    let n = socket.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(std::str::from_utf8(&buf[..n]).unwrap().trim(), "STOPPING=1");
}

#[test]
fn a_second_start_with_the_same_data_dir_does_not_recompile() {
    let dirs = common::Dirs::with_hello();
    let (config, data) = (&dirs.config, &dirs.data);

    let mut first = Node::start_in(config, data, &[]);
    first.wait_for_status("/", 200, Duration::from_secs(10));
    first.wait_for_log(&["component compiled", "hello"], Duration::from_secs(1));
    assert_eq!(
        first
            .terminate(Duration::from_secs(5))
            .and_then(|s| s.code()),
        Some(0)
    );

    let second = Node::start_in(config, data, &[]);
    second.wait_for_status("/", 200, Duration::from_secs(10));
    second.wait_for_log(
        &["component code loaded from cache", "hello"],
        Duration::from_secs(1),
    );
    assert_eq!(
        second.count_log("component compiled"),
        0,
        "log:\n{}",
        second.log()
    );
}

#[test]
fn with_little_virtual_memory_the_host_falls_back_to_on_demand_allocation() {
    let dirs = common::Dirs::with_hello();
    let (config, data) = (&dirs.config, &dirs.data);
    // 3 GiB of address space: far less than the pool's reservation (thousands of linear-memory
    // slots of 4 GiB each), as on a small VM.
    let node = Node::start_with(config, data, &[], &[], Some(3 << 30));
    node.wait_for_log(
        &["falling back to on-demand instance allocation"],
        Duration::from_secs(10),
    );
    node.wait_for_log(
        &["component host ready", "OnDemand"],
        Duration::from_secs(10),
    );
    let body = node.wait_for_status("/limited", 200, Duration::from_secs(10));
    assert!(body.contains("/limited"), "{body}");
    // Several instances at once still fit.
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let addr = node.http;
            std::thread::spawn(move || common::http_get(addr, "/x", None).map(|r| r.0))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), Some(200));
    }
}

#[test]
fn without_limits_the_pooling_allocator_is_used() {
    let node = Node::start(&[]);
    node.wait_for_log(
        &["component host ready", "Pooling"],
        Duration::from_secs(10),
    );
}

#[test]
fn address_and_host_routes_and_an_app_renamed_in_its_file() {
    let node = Node::start(&[]);
    let hello = example_wasm("http-hello");
    let goodbye = example_wasm("http-goodbye");
    // wasmCloud's own form: an address on the ingress port on every interface is the ingress.
    let on_ingress = manifest("everywhere", &hello, "/").replace(
        "path: /\n",
        &format!("address: 0.0.0.0:{}\n", node.http.port()),
    );
    std::fs::write(node.config_dir.join("everywhere.yaml"), on_ingress).unwrap();
    node.wait_for_status("/anything", 200, Duration::from_secs(10));

    // An address of its own: a second listener, closed again when the app goes.
    let own: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let own_file = node.config_dir.join("own.yaml");
    let own_manifest =
        manifest("own", &goodbye, "/").replace("path: /\n", &format!("address: {own}\n"));
    std::fs::write(&own_file, &own_manifest).unwrap();
    common::wait_until(
        "the app's own listener answers",
        Duration::from_secs(10),
        || {
            common::http_get(own, "/x", None)
                .is_some_and(|(s, b)| s == 200 && b.starts_with("Goodbye"))
        },
    );

    // A host route beats the host-less one on the ingress.
    let by_host =
        manifest("by-host", &goodbye, "/").replace("path: /\n", "host: api.example.com\n");
    std::fs::write(node.config_dir.join("by-host.yaml"), by_host).unwrap();
    common::wait_until("the host route answers", Duration::from_secs(10), || {
        common::http_get(node.http, "/h", Some("API.example.com:1234"))
            .is_some_and(|(s, b)| s == 200 && b.starts_with("Goodbye"))
    });
    assert!(
        node.get("/h").unwrap().1.starts_with("Hello"),
        "other hosts still reach the ingress app"
    );

    // The same file naming another app: the old app goes, the new one takes its routes.
    std::fs::write(
        &own_file,
        own_manifest.replace("name: own\n", "name: own-renamed\n"),
    )
    .unwrap();
    node.wait_for_log(
        &["app undeployed: its manifest now names app own-renamed"],
        Duration::from_secs(10),
    );
    assert_eq!(common::http_get(own, "/x", None).map(|r| r.0), Some(200));

    std::fs::remove_file(&own_file).unwrap();
    common::wait_until("the own listener closes", Duration::from_secs(10), || {
        common::http_get(own, "/x", None).is_none()
    });
    assert_eq!(node.get("/still").unwrap().0, 200);
}

#[test]
fn bodies_and_headers_stream_through_a_component() {
    let node = Node::start(&[]);
    node.write_manifest("echo.yaml", "echo", "http-echo", "/echo");
    node.wait_for_status("/echo", 200, Duration::from_secs(10));
    // 10 MiB of non-repeating bytes, echoed back unchanged.
    let body: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let (status, headers, echoed) =
        http_request(node.http, "POST", "/echo/big?x=1", None, &body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the echoed body differs");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(header("x-echo-method"), Some("POST"));
    assert_eq!(header("x-echo-path"), Some("/echo/big?x=1"));
}

#[test]
fn a_restart_neither_rolls_back_a_newer_version_nor_forgets_a_file_removed_meanwhile() {
    let dirs = common::Dirs::with_manifest(
        "app.yaml",
        &manifest("app", &example_wasm("http-hello"), "/app"),
    );
    let (config, data) = (&dirs.config, &dirs.data);
    let mut node = Node::start_in(config, data, &[]);
    assert!(
        node.wait_for_status("/app", 200, Duration::from_secs(10))
            .starts_with("Hello")
    );
    std::fs::write(
        config.join("other.yaml"),
        manifest("other", &example_wasm("http-hello"), "/other"),
    )
    .unwrap();
    node.wait_for_status("/other", 200, Duration::from_secs(10));

    // v2 of the app from the CLI, from a file outside the config dir.
    let outside = tempfile::tempdir().unwrap();
    let v2 = outside.path().join("app-v2.yaml");
    std::fs::write(
        &v2,
        manifest("app", &example_wasm("http-goodbye"), "/app")
            .replace("version: v1", "version: v2"),
    )
    .unwrap();
    let data_arg = data.to_string_lossy().into_owned();
    let out = common::lattice_cli(&[
        "app",
        "deploy",
        v2.to_str().unwrap(),
        "--data-dir",
        &data_arg,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::wait_until("v2 answers", Duration::from_secs(10), || {
        node.get("/app")
            .is_some_and(|(s, b)| s == 200 && b.starts_with("Goodbye"))
    });
    assert!(node.terminate(Duration::from_secs(5)).unwrap().success());

    // While the node is down, other.yaml goes; app.yaml (v1) stays as it was.
    std::fs::remove_file(config.join("other.yaml")).unwrap();
    let node = Node::start_in(config, data, &[]);
    node.wait_for_status("/other", 404, Duration::from_secs(10));
    node.wait_for_log(&["manifest file removed", "other"], Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = node.get("/app").unwrap();
    assert!(
        status == 200 && body.starts_with("Goodbye"),
        "the unchanged app.yaml must not roll v2 back: {status} {body}\n{}",
        node.log()
    );
    let out = common::lattice_cli(&[
        "app",
        "status",
        "app",
        "--data-dir",
        &data_arg,
        "-o",
        "json",
    ]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["version"], "v2", "{status}");

    // An edit of the file is a change: it rolls out.
    std::fs::write(
        config.join("app.yaml"),
        manifest("app", &example_wasm("http-hello"), "/app").replace("version: v1", "version: v3"),
    )
    .unwrap();
    common::wait_until("v3 answers", Duration::from_secs(10), || {
        node.get("/app")
            .is_some_and(|(s, b)| s == 200 && b.starts_with("Hello"))
    });
}
