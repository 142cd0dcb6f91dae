//! Instance reuse, end to end: `examples/http-echo` answers `x-echo-served: N`, the requests its
//! instance has handled (a static), so what the node reused shows in each answer.

use std::time::Duration;

use crate::common::{Node, example_wasm, http_request_with, manifest, wait_until};

/// A manifest of app `app` whose http-echo component answers `path`, with the component config
/// `config` (`key: value` pairs).
fn echo_manifest(app: &str, path: &str, config: &[(&str, &str)]) -> String {
    let wasm = example_wasm("http-echo");
    let text = manifest(app, &wasm, path);
    if config.is_empty() {
        return text;
    }
    let image = format!("        image: file://{}\n", wasm.display());
    let properties: String = config
        .iter()
        .map(|(k, v)| format!("              {k}: \"{v}\"\n"))
        .collect();
    let with = text.replace(
        &image,
        &format!(
            "{image}        config:\n          - name: reuse\n            properties:\n{properties}"
        ),
    );
    assert_ne!(
        with, text,
        "the manifest no longer names its image as expected"
    );
    with
}

/// The status and `x-echo-served` of one request to `path` with `headers`. With
/// `x-echo-generate: N` among them, the answer declares `content-length: N`.
fn served(node: &Node, path: &str, headers: &[(&str, &str)]) -> (u16, Option<u64>) {
    let (status, answer_headers, _) =
        http_request_with(node.http, "GET", path, headers, b"").expect("an answer");
    if let Some((_, n)) = headers.iter().find(|(k, _)| *k == "x-echo-generate") {
        let length = answer_headers.iter().find(|(k, _)| k == "content-length");
        assert_eq!(
            length.map(|(_, v)| v.as_str()),
            Some(*n),
            "{answer_headers:?}"
        );
    }
    let count = answer_headers
        .iter()
        .find(|(k, _)| k == "x-echo-served")
        .and_then(|(_, v)| v.parse().ok());
    (status, count)
}

/// The `x-echo-served` of `n` requests to `path` with `headers`, one after another (each
/// `200`). After each, until its instance's task logged whether it is kept: the instance goes
/// back to be kept as `handle` returns, which the next request on a new connection could
/// otherwise outrun. `reuse`: whether the component reuses instances (only then it logs that).
fn counts_with(
    node: &Node,
    path: &str,
    headers: &[(&str, &str)],
    n: usize,
    reuse: bool,
) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let settled =
                || node.count_log("instance kept for reuse") + node.count_log("instance not kept");
            let before = settled();
            let (status, count) = served(node, path, headers);
            assert_eq!(status, 200, "{path}");
            if reuse {
                wait_until(
                    "the instance kept or dropped",
                    Duration::from_secs(10),
                    || settled() > before,
                );
            }
            count.expect("x-echo-served")
        })
        .collect()
}

/// [`counts_with`] no headers, of a component that reuses instances.
fn counts(node: &Node, path: &str, n: usize) -> Vec<u64> {
    counts_with(node, path, &[], n, true)
}

#[test]
fn reuse_is_opt_in_bounded_and_never_keeps_a_failed_instance() {
    let node = Node::start(&[]);
    let write =
        |file: &str, text: String| std::fs::write(node.config_dir.join(file), text).unwrap();
    write("fresh.yaml", echo_manifest("fresh", "/fresh", &[]));
    write(
        "reuse.yaml",
        echo_manifest(
            "reuse",
            "/reuse",
            &[("lattice.max-instance-reuse-count", "3")],
        ),
    );
    write(
        "trap.yaml",
        echo_manifest(
            "trap",
            "/trap",
            &[
                ("lattice.max-instance-reuse-count", "100"),
                ("lattice.max-instance-concurrent-reuse-count", "1"),
            ],
        ),
    );
    let idle = |timeout: &str| {
        echo_manifest(
            "idle",
            "/idle",
            &[
                ("lattice.max-instance-reuse-count", "100"),
                ("lattice.idle-instance-timeout", timeout),
            ],
        )
    };
    write("idle.yaml", idle("300ms"));
    for path in ["/fresh", "/reuse", "/trap", "/idle"] {
        node.wait_for_status(path, 200, Duration::from_secs(20));
    }
    // Whatever the probes above left kept: gone after the idle timeout (default 1 s).
    std::thread::sleep(Duration::from_millis(1500));

    // Off by default: a fresh instance every request.
    assert_eq!(counts_with(&node, "/fresh", &[], 4, false), [1, 1, 1, 1]);
    // Reuse 3: each instance serves three requests, then a fresh one.
    assert_eq!(counts(&node, "/reuse", 7), [1, 2, 3, 1, 2, 3, 1]);

    // A response with a declared length (hyper never polls such a body's end) is reused too.
    let length = [("x-echo-generate", "5000")];
    assert_eq!(counts_with(&node, "/reuse", &length, 3, true), [2, 3, 1]);

    // A trap: that instance is dropped, the next request gets a fresh one.
    assert_eq!(counts(&node, "/trap", 2), [1, 2]);
    let (status, _) = served(&node, "/trap", &[("x-echo-trap", "on purpose")]);
    assert_eq!(status, 500);
    assert_eq!(counts(&node, "/trap", 2), [1, 2]);
    // A guest returning with its response body neither finished nor dropped: the client gets
    // the whole answer as `handle` returns (not at the 30 s deadline, past the client's 10 s),
    // and the instance is not kept.
    let stash = [("x-echo-stash-body", "on")];
    assert_eq!(counts_with(&node, "/trap", &stash, 1, true), [3]);
    assert_eq!(counts(&node, "/trap", 1), [1]);
    // HEAD: hyper drops the body unread; the instance is kept all the same.
    let before = node.count_log("instance kept for reuse");
    let (status, headers, _) =
        http_request_with(node.http, "HEAD", "/trap", &[], b"").expect("an answer");
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "x-echo-served" && v == "2")
    );
    wait_until("the instance kept", Duration::from_secs(10), || {
        node.count_log("instance kept for reuse") > before
    });
    assert_eq!(counts(&node, "/trap", 1), [3]);

    // Idle past the timeout: dropped.
    assert_eq!(counts(&node, "/idle", 2), [1, 2]);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(counts(&node, "/idle", 2), [1, 2]);

    // A bad value is refused at deploy, naming app, component, key and reason; the version
    // deployed keeps serving.
    write(
        "reuse.yaml",
        echo_manifest(
            "reuse",
            "/reuse",
            &[("lattice.max-instance-reuse-count", "0")],
        ),
    );
    node.wait_for_log(
        &[
            "reuse.yaml",
            "manifest not applied",
            "app reuse",
            "component reuse-component",
            "lattice.max-instance-reuse-count",
            "must be from 1",
        ],
        Duration::from_secs(10),
    );
    write("idle.yaml", idle("soon"));
    node.wait_for_log(
        &[
            "idle.yaml",
            "manifest not applied",
            "lattice.idle-instance-timeout",
            "not a duration",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(counts(&node, "/reuse", 2), [1, 2]);
    // The known keys are not warned about by anything.
    let log = node.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("lattice.max-instance-reuse-count")
                && !l.contains("manifest not applied")),
        "{log}"
    );
}

#[test]
fn an_instance_past_its_deadline_is_not_reused() {
    let node = Node::start(&["--request-timeout", "1s"]);
    std::fs::write(
        node.config_dir.join("reuse.yaml"),
        echo_manifest(
            "reuse",
            "/reuse",
            &[("lattice.max-instance-reuse-count", "100")],
        ),
    )
    .unwrap();
    node.wait_for_status("/reuse", 200, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(1500));

    // Spinning past the deadline: stopped by epoch interruption.
    assert_eq!(counts(&node, "/reuse", 2), [1, 2]);
    let (status, _) = served(&node, "/reuse", &[("x-echo-spin-ms", "3000")]);
    assert!(status == 504 || status == 500, "{status}");
    assert_eq!(counts(&node, "/reuse", 2), [1, 2]);

    // Waiting past the deadline in a host call: its call is dropped.
    let (status, _) = served(&node, "/reuse", &[("x-echo-sleep-ms", "3000")]);
    assert_eq!(status, 504);
    assert_eq!(counts(&node, "/reuse", 3), [1, 2, 3]);
    node.wait_for_log(
        &["exceeded the request deadline", "reuse"],
        Duration::from_secs(1),
    );
}
