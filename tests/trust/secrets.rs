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
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let config = format!(
            "listen: 127.0.0.1:{port}\nauthorization {{\n  user: u\n  password: \"{SECRET}\"\n}}\n\
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
/// client of `nats` (user `u`).
fn host_events(nats: &GuardedNats, window: Duration) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use futures::StreamExt as _;
        let client = async_nats::ConnectOptions::with_user_and_password("u".into(), SECRET.into())
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
