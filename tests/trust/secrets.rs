//! Issue 13: nothing secret in logs or heartbeats, and guest logs that cannot forge lines or
//! flood the node's log. A node on an external NATS whose URL carries a password shows it
//! nowhere (log, heartbeats, `lattice get hosts`, CLI errors); a component's log calls and
//! stdout lines are escaped, and 100,000 of them in one request give a bounded number of lines
//! and a count of the dropped ones.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, Node, example_wasm, manifest};

/// The password of the test's nats-server user `u`.
const SECRET: &str = "s3cret-Passw0rd";

/// A nats-server with JetStream on 127.0.0.1 that accepts only user `u` with password
/// [`SECRET`] (its `authorization` block); killed by its pid on drop.
struct GuardedNats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl GuardedNats {
    fn start() -> GuardedNats {
        GuardedNats::start_with(SECRET)
    }

    /// As [`GuardedNats::start`], user `u` with `password` (no `"` or `\\` in it).
    fn start_with(password: &str) -> GuardedNats {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let config = format!(
            "listen: 127.0.0.1:{port}\nauthorization {{\n  user: u\n  password: \"{password}\"\n}}\n\
             jetstream {{\n  store_dir: {:?}\n}}\n",
            dir.path().join("js")
        );
        let file = dir.path().join("nats.conf");
        std::fs::write(&file, config).unwrap();
        let child = Command::new("/usr/sbin/nats-server")
            .arg("-c")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        common::wait_until("nats-server to accept TCP", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        GuardedNats {
            child,
            port,
            _dir: dir,
        }
    }

    /// `nats://u:<password>@127.0.0.1:PORT`.
    fn url_with(&self, password: &str) -> String {
        format!("nats://u:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for GuardedNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The payloads of the host events of lattice `default` published within `window`, through a
/// client of `nats` (user `u`, password [`SECRET`]).
fn host_events(nats: &GuardedNats, window: Duration) -> Vec<String> {
    host_events_as(nats, SECRET, window)
}

/// [`host_events`] as user `u` with `password`.
fn host_events_as(nats: &GuardedNats, password: &str, window: Duration) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use futures::StreamExt as _;
        let client =
            async_nats::ConnectOptions::with_user_and_password("u".into(), password.into())
                .connect(format!("nats://127.0.0.1:{}", nats.port))
                .await
                .unwrap();
        let mut events = client.subscribe("lattice.default.evt.v1.*").await.unwrap();
        let mut payloads = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(message)) = tokio::time::timeout_at(deadline, events.next()).await {
            payloads.push(String::from_utf8_lossy(&message.payload).into_owned());
        }
        payloads
    })
}

#[test]
fn a_password_in_the_nats_url_shows_in_no_log_heartbeat_or_cli_output() {
    let nats = GuardedNats::start();
    let url = nats.url_with(SECRET);
    let node = Node::start(&["--nats-url", &url, "--heartbeat-interval", "1s"]);
    node.wait_for_log(&["lattice node is up"], Duration::from_secs(20));

    let events = host_events(&nats, Duration::from_secs(3));
    assert!(
        events.iter().any(|e| e.contains("\"uplink\"")),
        "no heartbeat within 3 s: {events:?}"
    );
    for event in &events {
        assert!(
            !event.contains(SECRET),
            "a host event carries the password: {event}"
        );
    }
    assert!(
        events.iter().any(|e| e.contains("nats://u:***@127.0.0.1")),
        "the heartbeat names the server, redacted: {events:?}"
    );

    let data = node.data_dir.to_string_lossy().into_owned();
    for args in [
        &["get", "hosts", "--data-dir", &data][..],
        &["get", "hosts", "--data-dir", &data, "-o", "json"],
        &["get", "hosts", "--nats-url", &url, "-o", "json"],
    ] {
        let out = common::lattice_cli(args);
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "lattice {args:?}: {stderr}");
        assert!(stdout.contains("test-node"), "lattice {args:?}: {stdout}");
        assert!(
            !stdout.contains(SECRET) && !stderr.contains(SECRET),
            "lattice {args:?} shows the password:\n{stdout}\n{stderr}"
        );
    }

    // A refused password is not echoed in the CLI's error either.
    let wrong = nats.url_with("Wr0ng-Passw0rd");
    let out = common::lattice_cli(&["get", "hosts", "--nats-url", &wrong, "--timeout", "2s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a wrong password connects: {stderr}");
    assert!(
        stderr.contains("nats://u:***@127.0.0.1") && !stderr.contains("Wr0ng-Passw0rd"),
        "{stderr}"
    );

    let log = node.log();
    assert!(
        log.contains("nats://u:***@127.0.0.1"),
        "the log names the server, redacted:\n{log}"
    );
    assert!(
        !log.contains(SECRET),
        "the node's log shows the password:\n{log}"
    );
    // Given on the command line: said once, with what to do instead.
    assert_eq!(
        node.count_log("--nats-url nats://u:***@127.0.0.1"),
        1,
        "one warning about the password in argv:\n{log}"
    );
    let warning = node.wait_for_log(&["visible in the process list"], Duration::ZERO);
    assert!(
        warning.contains("WARN") && warning.contains("LATTICE_NATS_URL"),
        "{warning}"
    );
}

#[test]
fn a_url_nats_server_cannot_parse_is_refused_without_its_password() {
    // nats-server would quote it whole in its log; the node refuses it first.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("up")
        .arg("--config-dir")
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--leaf-url", "nats-leaf://u:se cret@127.0.0.1:7422"])
        .env_remove("LATTICE_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--leaf-url nats-leaf://u:***@127.0.0.1:7422") && !stderr.contains("cret"),
        "{stderr}"
    );
}

/// `lattice up --nats-url URL --log debug` (which [`Node`] cannot do: it sets `--log` itself),
/// its stderr collected; killed by its pid on drop.
struct DebugNode {
    child: Child,
    log: std::sync::Arc<std::sync::Mutex<String>>,
    data_dir: std::path::PathBuf,
    _dirs: tempfile::TempDir,
}

impl DebugNode {
    fn start(url: &str) -> DebugNode {
        use std::io::BufRead as _;
        let dirs = tempfile::tempdir().unwrap();
        let (config_dir, data_dir) = (dirs.path().join("config"), dirs.path().join("data"));
        std::fs::create_dir_all(&config_dir).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_lattice"))
            .arg("up")
            .arg("--config-dir")
            .arg(&config_dir)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--http-addr", &format!("127.0.0.1:{}", common::free_port())])
            .args(["--name", "test-node", "--heartbeat-interval", "1s"])
            .args(["--log", "debug", "--nats-url", url, "--admin-addr", "none"])
            .env_remove("LATTICE_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning lattice");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        DebugNode {
            child,
            log,
            data_dir,
            _dirs: dirs,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for DebugNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks, once a node on `nats` (user `u`, `password`) is up (`log` gives its log so far,
/// `data_dir` is its data dir), that `secrets` (the password, or pieces of it) appear nowhere:
/// its log, its heartbeats, `lattice get hosts`, while heartbeats name the server as `shown`.
fn shows_no_secret(
    nats: &GuardedNats,
    password: &str,
    (log, data_dir): (&dyn Fn() -> String, &std::path::Path),
    secrets: &[&str],
    shown: &str,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !log().contains("lattice node is up") {
        assert!(Instant::now() < deadline, "the node is not up:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = host_events_as(nats, password, Duration::from_secs(3));
    assert!(
        events.iter().any(|e| e.contains(shown)),
        "no heartbeat naming {shown} within 3 s: {events:?}"
    );
    let data = data_dir.to_string_lossy().into_owned();
    let out = common::lattice_cli(&["get", "hosts", "--data-dir", &data]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "lattice get hosts: {stderr}");
    let log = log();
    for secret in secrets {
        for (what, text) in [
            ("the node's log", &log),
            ("get hosts", &stdout),
            ("get hosts' stderr", &stderr),
        ] {
            assert!(!text.contains(secret), "{what} shows {secret:?}:\n{text}");
        }
        for event in &events {
            assert!(
                !event.contains(secret),
                "a host event shows {secret:?}: {event}"
            );
        }
    }
}

#[test]
fn at_debug_level_the_nats_client_logs_no_password() {
    let nats = GuardedNats::start();
    // async-nats logs the server's `url::Url` with `Debug` at every connect.
    let node = DebugNode::start(&nats.url_with(SECRET));
    shows_no_secret(
        &nats,
        SECRET,
        (&|| node.log(), &node.data_dir),
        &[SECRET],
        "nats://u:***@127.0.0.1",
    );
    assert!(
        node.log().contains("async_nats"),
        "not at debug:\n{}",
        node.log()
    );
}

#[test]
fn a_schemeless_url_with_quotes_and_spaces_in_its_password_shows_nowhere() {
    // What a Debug-printed config quotes, escapes or ends a URL word at.
    let password = "s3cret'Pa ss<w0rd>";
    let nats = GuardedNats::start_with(password);
    let url = format!("u:{password}@127.0.0.1:{}", nats.port);
    let node = Node::start(&["--nats-url", &url, "--heartbeat-interval", "1s"]);
    shows_no_secret(
        &nats,
        password,
        (&|| node.log(), &node.data_dir),
        &["s3cret", "ss<w0rd"],
        "u:***@127.0.0.1",
    );
}

/// A node serving http-echo on `/echo`.
fn echo_node() -> Node {
    let node = Node::start(&[]);
    let file = node.config_dir.join("echo.yaml");
    std::fs::write(&file, manifest("echo", &example_wasm("http-echo"), "/echo")).unwrap();
    node.wait_for_status("/echo", 200, Duration::from_secs(20));
    node
}

/// `GET /echo` on `node` with `headers`; panics unless it answers 200.
fn echo(node: &Node, headers: &[(&str, &str)]) {
    let answer = common::http_request_within(
        Duration::from_secs(60),
        node.http,
        "GET",
        "/echo",
        headers,
        b"",
    );
    assert_eq!(
        answer.as_ref().map(|a| a.0),
        Some(200),
        "GET /echo {headers:?}; log:\n{}",
        node.log()
    );
}

#[test]
fn a_guest_log_line_with_a_newline_is_one_escaped_line() {
    let node = echo_node();
    echo(&node, &[("x-echo-log", "line one%0AINFO forged")]);
    let line = node.wait_for_log(&["INFO forged"], Duration::from_secs(5));
    assert!(
        line.contains("line one\\nINFO forged") && line.contains("component=echo-component"),
        "{line}"
    );
    echo(
        &node,
        &[
            ("x-echo-log", "stdout one%0D%1B[31mINFO stdout forged"),
            ("x-echo-log-to", "stdout"),
        ],
    );
    let line = node.wait_for_log(&["INFO stdout forged"], Duration::from_secs(5));
    assert!(
        line.contains("stdout one\\r\\u{1b}[31mINFO stdout forged") && line.contains("stdout"),
        "{line}"
    );
    // Let the log settle: each message is on the one line found, never at a line's start.
    std::thread::sleep(Duration::from_millis(200));
    let log = node.log();
    assert_eq!(node.count_log("INFO forged"), 1, "{log}");
    assert_eq!(node.count_log("INFO stdout forged"), 1, "{log}");
    assert!(
        !log.lines()
            .any(|l| l.starts_with("INFO") || l.contains('\u{1b}')),
        "a forged line or a raw escape:\n{log}"
    );

    // Longer than 4 KiB: cut, with the count.
    let long = "x".repeat(5000);
    echo(&node, &[("x-echo-log", &format!("long-{long}"))]);
    let line = node.wait_for_log(&["long-xxx"], Duration::from_secs(5));
    assert!(line.contains("…[909 bytes cut]"), "{}", line.len());
}

/// The dropped-line counts the node's `dropped N guest log lines` warnings add up to.
fn dropped(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("dropped ").nth(1)?;
            let (n, after) = rest.split_once(' ')?;
            after
                .starts_with("guest log lines")
                .then(|| n.parse::<u64>().ok())?
        })
        .sum()
}

#[test]
fn a_flood_of_guest_log_calls_is_bounded_and_counted() {
    let node = echo_node();
    let calls: u64 = 100_000;
    let started = Instant::now();
    echo(
        &node,
        &[
            ("x-echo-log", "flood-logging"),
            ("x-echo-log-count", &calls.to_string()),
        ],
    );
    echo(
        &node,
        &[
            ("x-echo-log", "flood-stdout"),
            ("x-echo-log-count", &calls.to_string()),
            ("x-echo-log-to", "stdout"),
        ],
    );
    let elapsed = started.elapsed();
    // Every call either logged or counted as dropped, the count reported within ~1 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (logged, reported) = loop {
        let log = node.log();
        let logged =
            (log.matches("flood-logging").count() + log.matches("flood-stdout").count()) as u64;
        let reported = dropped(&log);
        if logged + reported == 2 * calls || Instant::now() > deadline {
            break (logged, reported);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        logged + reported,
        2 * calls,
        "lines logged {logged} and reported dropped {reported}"
    );
    eprintln!(
        "{} calls: {logged} lines logged, {reported} reported dropped, in {elapsed:?}",
        2 * calls
    );
    // The burst (500) and 100 lines/s while the requests ran, with room for the rounding.
    let bound = 500 + 100 * (elapsed.as_secs() + 2);
    assert!(
        logged <= bound,
        "{logged} lines logged in {elapsed:?}, more than {bound}"
    );
    assert!(
        node.log()
            .lines()
            .filter(|l| l.contains("guest log lines"))
            .count() as u64
            <= elapsed.as_secs() + 12,
        "the dropped lines are reported at most once a second"
    );
}
