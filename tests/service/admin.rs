//! Tests of issue 14: the admin endpoint. `/readyz` through a node's start and a nats-server
//! killed under it; `/metrics` scraped by a real Prometheus (Debian's `prometheus` package),
//! whose HTTP API must count the requests the test sent, by status class.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::common::{
    Dirs, Node, example_wasm, free_port, http_get, http_request_with, manifest, wait_until,
};

/// Polls `/readyz` every few ms until `want` (status) answers; returns every answer seen on
/// the way (status, body), the last one included. Panics after `timeout` with the node's log.
fn poll_readyz(node: &Node, want: u16, timeout: Duration) -> Vec<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        if let Some(answer) = node.admin_get("/readyz") {
            let done = answer.0 == want;
            seen.push(answer);
            if done {
                return seen;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz: no {want} within {timeout:?}; answers: {:?}; log:\n{}",
            seen.last(),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn readyz_is_503_with_reasons_before_the_first_pass_and_while_nats_server_is_down() {
    let dirs = Dirs::with_hello();
    let node = Node::start_in(&dirs.config, &dirs.data, &[]);
    // The endpoint is bound before anything else, and the first pass waits for the other
    // hosts for at least 0.5 s: the first answers are 503.
    let start = poll_readyz(&node, 200, Duration::from_secs(30));
    let (status, body) = &start[0];
    assert_eq!(*status, 503, "first answer: {body}");
    assert!(
        start
            .iter()
            .any(|(s, b)| *s == 503 && b.contains("first reconcile pass: not completed yet")),
        "no 503 naming the first pass: {start:?}"
    );
    for (status, body) in &start {
        if *status == 503 {
            assert!(
                body.lines().all(|l| l.contains(": ")),
                "one `<condition>: <why>` a line: {body:?}"
            );
        }
    }
    assert_eq!(start.last().unwrap().1, "ready\n");
    // Ready means serving: the config dir's app answers.
    node.wait_for_status("/", 200, Duration::from_secs(10));
    assert_eq!(node.admin_get("/healthz"), Some((200, "ok\n".to_owned())));

    // nats-server SIGKILLed: 503 naming it (or the connection it took down) until the
    // supervisor has it back.
    let pid = node.nats_pid();
    kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    let down = poll_readyz(&node, 503, Duration::from_secs(10));
    let reasons = &down.last().unwrap().1;
    assert!(
        reasons.contains("nats-server: restarting") || reasons.contains("nats connection: "),
        "{reasons}"
    );
    let back = poll_readyz(&node, 200, Duration::from_secs(30));
    let named_server = back
        .iter()
        .chain(&down)
        .any(|(_, body)| body.contains("nats-server: restarting: pid "));
    assert!(
        named_server,
        "no 503 naming the killed nats-server: {back:?}"
    );
    wait_until("a new nats-server", Duration::from_secs(10), || {
        node.nats_pid() != pid
    });
    node.wait_for_status("/", 200, Duration::from_secs(10));
    let (_, metrics) = node.admin_get("/metrics").unwrap();
    assert!(
        metrics.contains("lattice_nats_server_restarts_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lattice_uplink_state{state=\"none\"} 1\n"),
        "{metrics}"
    );
}

/// A Prometheus server started by the test; killed (by pid) when dropped.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `/usr/bin/prometheus` on a free loopback port, scraping `target` every second,
    /// with its store in a temp dir. Panics, saying how to install it, when it is missing.
    fn start(target: SocketAddr) -> Prometheus {
        let binary = Path::new("/usr/bin/prometheus");
        assert!(
            binary.is_file(),
            "{} is missing: install Debian's Prometheus with \
             `apt-get install -y --no-install-recommends prometheus` (and keep its own service \
             stopped: `service prometheus stop`)",
            binary.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: lattice\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        let prometheus = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        wait_until("prometheus to be ready", Duration::from_secs(30), || {
            http_get(prometheus.addr, "/-/ready", None).is_some_and(|(s, _)| s == 200)
        });
        prometheus
    }

    /// `lattice_http_requests_total` as Prometheus's query API answers it now: the value of
    /// each series by (app, component, status_class).
    fn requests(&self) -> BTreeMap<(String, String, String), u64> {
        let Some((200, body)) = http_get(
            self.addr,
            "/api/v1/query?query=lattice_http_requests_total",
            None,
        ) else {
            return BTreeMap::new();
        };
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["status"], "success", "{body}");
        answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|series| {
                let label = |name: &str| series["metric"][name].as_str().unwrap().to_owned();
                let value: f64 = series["value"][1].as_str().unwrap().parse().unwrap();
                (
                    (label("app"), label("component"), label("status_class")),
                    value as u64,
                )
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_request_counts_equal_to_those_sent_by_status_class() {
    let dirs = Dirs::with_manifest(
        "hello.yaml",
        &manifest("hello", &example_wasm("http-hello"), "/hello"),
    );
    for (file, app, example, path) in [
        ("config.yaml", "config", "http-config", "/config"),
        ("echo.yaml", "echo", "http-echo", "/echo"),
    ] {
        std::fs::write(
            dirs.config.join(file),
            manifest(app, &example_wasm(example), path),
        )
        .unwrap();
    }
    let node = Node::start_in(&dirs.config, &dirs.data, &[]);
    node.wait_for_log(&["lattice node is ready"], Duration::from_secs(30));
    let prometheus = Prometheus::start(node.admin);

    // Known status classes: 200s from http-hello, 404s that http-config answers for a key it
    // does not have, 500s of http-echo trapping; the ingress's own 404s (no route) belong to
    // no app: they count under app and component `_none`.
    let send = |path: &str, headers: &[(&str, &str)], want: u16| {
        let (status, _, body) = http_request_with(node.http, "GET", path, headers, b"")
            .unwrap_or_else(|| panic!("GET {path}: no answer"));
        assert_eq!(
            status,
            want,
            "GET {path}: {}",
            String::from_utf8_lossy(&body)
        );
    };
    for _ in 0..7 {
        send("/hello", &[], 200);
    }
    for _ in 0..4 {
        send("/config/no-such-key", &[], 404);
    }
    for _ in 0..3 {
        send("/echo", &[("x-echo-trap", "on purpose")], 500);
    }
    for _ in 0..2 {
        send("/nowhere", &[], 404);
    }
    let want: BTreeMap<(String, String, String), u64> = [
        ("hello", "2xx", 7),
        ("config", "4xx", 4),
        ("echo", "5xx", 3),
    ]
    .into_iter()
    .map(|(app, class, n)| {
        (
            (app.to_owned(), format!("{app}-component"), class.to_owned()),
            n,
        )
    })
    .chain([(
        ("(none)".to_owned(), "(none)".to_owned(), "4xx".to_owned()),
        2,
    )])
    .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = prometheus.requests();
        let nonzero: BTreeMap<_, _> = seen
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        if nonzero == want {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus's counts {nonzero:?} never became {want:?}; /metrics:\n{}",
            node.admin_get("/metrics")
                .map(|(_, m)| m)
                .unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    // Every class of each component is exported (zero until counted), and nothing else.
    assert_eq!(seen.len(), 4 * 6, "{seen:?}");
    assert!(
        seen.keys()
            .all(|(app, _, _)| ["hello", "config", "echo", "(none)"].contains(&app.as_str())),
        "{seen:?}"
    );
}

/// A task that keeps failing (the config-dir watcher, whose dir is a symlink to nowhere) makes
/// `/readyz` 503 naming it, and its restarts are counted; once it runs again and stays up,
/// `/readyz` is 200.
#[test]
fn readyz_is_503_while_a_supervised_task_is_failing() {
    let dirs = tempfile::tempdir().unwrap();
    let target = dirs.path().join("manifests");
    let config_dir = dirs.path().join("config");
    std::os::unix::fs::symlink(&target, &config_dir).unwrap();
    let node = Node::start_in(&config_dir, &dirs.path().join("data"), &[]);
    node.wait_for_log(&["lattice node is up"], Duration::from_secs(30));
    let seen = poll_readyz(&node, 503, Duration::from_secs(10));
    let mut body = seen.last().unwrap().1.clone();
    wait_until(
        "/readyz to name the failing watcher",
        Duration::from_secs(10),
        || {
            body = node.admin_get("/readyz").unwrap().1;
            body.contains("tasks: config-watcher ")
        },
    );
    assert!(
        body.contains("config-watcher restarting (")
            || body.contains("config-watcher running again for "),
        "{body}"
    );
    let (_, metrics) = node.admin_get("/metrics").unwrap();
    let restarts: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lattice_task_restarts_total{task=\"config-watcher\"} "))
        .unwrap_or_else(|| panic!("no restarts of config-watcher counted:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(restarts >= 1, "{metrics}");

    // The dir can be made now: the next attempt runs, and once it has run a while the node is
    // ready.
    std::fs::create_dir_all(&target).unwrap();
    poll_readyz(&node, 200, Duration::from_secs(60));
}

/// Local users cannot starve the admin endpoint: with the node's open-files limit clamped to
/// what it uses plus 100 (`prlimit`), 400 idle connections to the admin port (more than that
/// limit) neither run the node out of descriptors (no accept error in its log) nor keep
/// `/readyz` from answering 200 while they are held open; the app still answers.
#[test]
fn many_idle_connections_do_not_stop_readyz_from_answering() {
    let dirs = Dirs::with_hello();
    let node = Node::start_in(&dirs.config, &dirs.data, &[]);
    poll_readyz(&node, 200, Duration::from_secs(30));
    let pid = node.pid();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = open + 100;
    let clamp = Command::new("prlimit")
        .arg(format!("--pid={pid}"))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .unwrap();
    assert!(clamp.success(), "prlimit: {clamp:?}");
    let idle: Vec<std::net::TcpStream> = (0..400)
        .filter_map(|_| std::net::TcpStream::connect(node.admin).ok())
        .collect();
    assert!(idle.len() > limit, "only {} connections", idle.len());
    poll_readyz(&node, 200, Duration::from_secs(30));
    assert_eq!(
        node.wait_for_status("/", 200, Duration::from_secs(10)),
        "Hello from lattice: /\n"
    );
    let log = node.log();
    assert!(
        !log.contains("admin endpoint: accept"),
        "the node ran out of descriptors:\n{log}"
    );
    drop(idle);
}
