//! Tests of issue 14: `lattice up` in the environment a systemd unit gives it (the acceptance's
//! second way): its creds as a credential (`$CREDENTIALS_DIRECTORY`, a 0600 file owned by
//! another user than the node's), `$STATE_DIRECTORY`, `$CONFIGURATION_DIRECTORY`, a
//! `NOTIFY_SOCKET` the test binds and `WATCHDOG_USEC`. The node joins a real operator-mode hub,
//! says `READY=1` only once `/readyz` answers 200, pings the watchdog and says `STOPPING=1`.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::hub::Hub;
use crate::common::{Launch, Node, example_wasm, http_get, lattice_cli, manifest, wait_until};

/// The user the credential belongs to: `nobody`, not the node's (root).
const OTHER_UID: u32 = 65534;

/// One `/readyz` poll: when it was sent, when it was answered, the status (`None`: no answer).
type Poll = (Instant, Instant, Option<u16>);

/// Polls `/readyz` of `admin` back to back until `stop`, recording each poll.
fn poll_readyz(
    admin: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
) -> (std::thread::JoinHandle<()>, Arc<Mutex<Vec<Poll>>>) {
    let polls = Arc::new(Mutex::new(Vec::new()));
    let record = polls.clone();
    let handle = std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let sent = Instant::now();
            let status = http_get(admin, "/readyz", None).map(|(status, _)| status);
            record.lock().unwrap().push((sent, Instant::now(), status));
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    (handle, polls)
}

/// Receives datagrams on `socket` until one contains `line` (as a line of its own); returns
/// when it arrived and its text. Every datagram received is appended to `seen`. Panics after
/// `timeout` with what came and `node`'s log.
fn receive_until(
    socket: &UnixDatagram,
    line: &str,
    timeout: Duration,
    seen: &mut Vec<(Instant, String)>,
    node: &Node,
) -> (Instant, String) {
    let deadline = Instant::now() + timeout;
    let mut buffer = vec![0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "no {line} within {timeout:?}; received {seen:?}; log:\n{}",
            node.log()
        );
        match socket.recv(&mut buffer) {
            Ok(n) => {
                let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
                let at = Instant::now();
                seen.push((at, text.clone()));
                if text.lines().any(|l| l == line) {
                    return (at, text);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("receiving on the notify socket: {e}"),
        }
    }
}

#[test]
fn under_systemd_the_node_joins_the_hub_and_says_ready_only_once_readyz_is_200() {
    let hub = Hub::start();
    let tmp = tempfile::tempdir().unwrap();
    let (credentials, state, config) = (
        tmp.path().join("credentials"),
        tmp.path().join("state"),
        tmp.path().join("config"),
    );
    for dir in [&credentials, &state, &config] {
        std::fs::create_dir_all(dir).unwrap();
    }
    // As systemd lays out a credential: in a directory of the unit's own, here a 0600 file
    // owned by another user than the node's. The node runs as root, so this shows only that a
    // credential owned by another user is not refused (as a creds file by path would not be
    // either), not who can read it.
    std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o700)).unwrap();
    let source = hub.user_creds(tmp.path(), "node.creds");
    let credential = credentials.join("default.creds");
    std::fs::copy(&source, &credential).unwrap();
    std::fs::set_permissions(&credential, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&credential, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    std::fs::write(
        config.join("hello.yaml"),
        manifest("hello", &example_wasm("http-hello"), "/"),
    )
    .unwrap();
    let (socket, socket_s) = notify_socket(tmp.path());

    let leaf = hub.leaf_url();
    let (credentials_s, state_s, config_s) = (
        credentials.to_string_lossy().into_owned(),
        state.to_string_lossy().into_owned(),
        config.to_string_lossy().into_owned(),
    );
    let env = [
        ("CREDENTIALS_DIRECTORY", credentials_s.as_str()),
        ("STATE_DIRECTORY", state_s.as_str()),
        ("CONFIGURATION_DIRECTORY", config_s.as_str()),
        ("NOTIFY_SOCKET", socket_s.as_str()),
        // 2 s: a ping every second.
        ("WATCHDOG_USEC", "2000000"),
    ];
    let extra = [
        "--creds",
        "credential:default.creds",
        "--leaf-url",
        &leaf,
        "--name",
        "svc-node",
        "--heartbeat-interval",
        "1000ms",
    ];
    let mut node = Node::launch(&Launch {
        env: &env,
        extra: &extra,
        ..Launch::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let (poller, polls) = poll_readyz(node.admin, stop.clone());

    let mut seen = Vec::new();
    let (ready_at, ready) = receive_until(
        &socket,
        "READY=1",
        Duration::from_secs(40),
        &mut seen,
        &node,
    );
    // READY=1 (with STATUS=ready after a start slower than 5 s, which sent STATUS= lines
    // before it), and nothing else before it but watchdog pings.
    assert!(
        ready == "READY=1\n" || ready == "READY=1\nSTATUS=ready\n",
        "{ready:?}"
    );
    assert!(
        seen.iter().all(|(_, text)| text == &ready
            || text == "WATCHDOG=1\n"
            || text.starts_with("STATUS=not ready: ")),
        "{seen:?}"
    );
    // The watchdog pings every second while the loops are alive.
    let pings_from = seen.len();
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        let mut buffer = [0u8; 4096];
        if let Ok(n) = socket.recv(&mut buffer) {
            seen.push((
                Instant::now(),
                String::from_utf8_lossy(&buffer[..n]).into_owned(),
            ));
        }
    }
    stop.store(true, Ordering::SeqCst);
    poller.join().unwrap();
    let polls = polls.lock().unwrap().clone();

    // Before READY: /readyz said 503 first, and its last answer before READY was 200.
    let before: Vec<&Poll> = polls.iter().filter(|(_, end, _)| *end < ready_at).collect();
    assert!(
        before.iter().any(|(_, _, s)| *s == Some(503)),
        "no 503 before READY=1: the check would prove nothing; {before:?}"
    );
    let last = before
        .iter()
        .rev()
        .find(|(_, _, s)| s.is_some())
        .expect("no /readyz answer before READY=1");
    assert_eq!(
        last.2,
        Some(200),
        "READY=1 came while /readyz last said 503; log:\n{}",
        node.log()
    );
    // After READY: 200 throughout (nothing changed).
    let after: Vec<&Poll> = polls
        .iter()
        .filter(|(sent, _, _)| *sent > ready_at)
        .collect();
    assert!(!after.is_empty());
    assert!(after.iter().all(|(_, _, s)| *s == Some(200)), "{after:?}");
    let pings = seen[pings_from..]
        .iter()
        .filter(|(_, text)| text.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(pings >= 2, "{pings} WATCHDOG=1 in 4 s: {seen:?}");

    // It joined the hub: another user of the hub's account sees it, and the uplink stands.
    node.wait_for_log(&["leaf uplink connected"], Duration::from_secs(10));
    let viewer = hub.user_creds(tmp.path(), "viewer.creds");
    let viewer = viewer.to_string_lossy().into_owned();
    let url = hub.client_url();
    wait_until(
        "the node among the hub's hosts",
        Duration::from_secs(20),
        || {
            let out = lattice_cli(&[
                "get",
                "hosts",
                "--nats-url",
                &url,
                "--creds",
                &viewer,
                "-o",
                "json",
            ]);
            let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            hosts.as_array().is_some_and(|hosts| {
                hosts
                    .iter()
                    .any(|h| h["name"] == "svc-node" && h["uplink"]["state"] == "connected")
            })
        },
    );
    // Its state and config are where systemd's variables say.
    assert!(state.join("nats.url").is_file());
    assert_eq!(
        node.wait_for_status("/", 200, Duration::from_secs(10)),
        "Hello from lattice: /\n"
    );

    let status = node.terminate(Duration::from_secs(30));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let mut buffer = [0u8; 4096];
    let mut stopping = false;
    while let Ok(n) = socket.recv(&mut buffer) {
        stopping |= String::from_utf8_lossy(&buffer[..n])
            .lines()
            .any(|l| l == "STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1; log:\n{}", node.log());
}

/// Runs `lattice up ARGS` with `env` (and no inherited systemd variables) until it exits, at
/// most 30 s; returns its stderr and whether it succeeded.
fn up_fails(args: &[&str], env: &[(&str, &Path)]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lattice"))
        .arg("up")
        .arg("--config-dir")
        .arg(tmp.path().join("config"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .args(["--admin-addr", "none", "--http-addr", "127.0.0.1:0"])
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("LATTICE_CREDS")
        .env_remove("NOTIFY_SOCKET")
        .envs(env.iter().map(|(k, v)| (*k, v.as_os_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lattice up {args:?} did not fail within 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "lattice up {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_credential_that_cannot_be_had_is_named_with_the_reason() {
    let unset = up_fails(&["--creds", "credential:default.creds"], &[]);
    assert!(
        unset.contains("--creds credential:default.creds: $CREDENTIALS_DIRECTORY is not set"),
        "{unset}"
    );
    let dir = tempfile::tempdir().unwrap();
    let env = [("CREDENTIALS_DIRECTORY", dir.path())];
    let missing = up_fails(&["--creds", "credential:node.creds"], &env);
    assert!(
        missing.contains("no credential node.creds in $CREDENTIALS_DIRECTORY")
            && missing.contains("LoadCredential=node.creds:"),
        "{missing}"
    );
    for bad in ["../node.creds", "a/b", ".."] {
        let arg = format!("credential:{bad}");
        let err = up_fails(&["--creds", &arg], &env);
        assert!(
            err.contains("a credential's name is one file name"),
            "{bad}: {err}"
        );
    }
    // A credential that is no creds file, and the default credential is checked alike.
    std::fs::write(dir.path().join("default.creds"), "not a creds file").unwrap();
    let default = up_fails(&[], &env);
    assert!(
        default.contains("default.creds") && default.contains("not a NATS credentials file"),
        "{default}"
    );
    // A creds file given by path still must be its owner's only.
    let hub = Hub::start();
    let open = hub.user_creds(dir.path(), "open.creds");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).unwrap();
    let open_s = open.to_string_lossy().into_owned();
    let err = up_fails(&["--creds", &open_s], &[]);
    assert!(
        err.contains("group or others can access it (mode 640)"),
        "{err}"
    );
}

/// A node whose hub has no JetStream yet completes its first pass (it runs from its mirror)
/// but is not ready: `/readyz` names the store and no `READY=1` goes out, until the hub comes
/// back with JetStream.
#[test]
fn ready_waits_until_the_lattice_store_has_answered() {
    use crate::common::hub::HubJetStream;
    let mut hub = Hub::start_with(HubJetStream::Off);
    let tmp = tempfile::tempdir().unwrap();
    let creds = hub.user_creds(tmp.path(), "node.creds");
    let (socket, socket_s) = notify_socket(tmp.path());
    let (config, data) = (tmp.path().join("config"), tmp.path().join("data"));
    std::fs::create_dir_all(&config).unwrap();
    let (creds_s, leaf) = (creds.to_string_lossy().into_owned(), hub.leaf_url());
    let node = Node::launch(&Launch {
        dirs: Some((&config, &data)),
        extra: &["--creds", &creds_s, "--leaf-url", &leaf],
        env: &[("NOTIFY_SOCKET", &socket_s)],
        ..Launch::default()
    });
    node.wait_for_log(&["lattice node is up"], Duration::from_secs(30));
    // Up, but not ready: for 3 s, /readyz names the store and systemd hears no READY=1.
    let until = Instant::now() + Duration::from_secs(3);
    let mut buffer = [0u8; 4096];
    while Instant::now() < until {
        let (status, body) = node.admin_get("/readyz").unwrap();
        assert_eq!(status, 503, "{body}");
        assert!(
            body.contains("store: the lattice's store has not answered yet"),
            "{body}"
        );
        if let Ok(n) = socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            assert!(
                !text.lines().any(|l| l == "READY=1"),
                "READY=1 while not ready: {text}"
            );
        }
    }
    hub.restart_with(HubJetStream::Domain(Hub::JS_DOMAIN));
    let mut seen = Vec::new();
    receive_until(
        &socket,
        "READY=1",
        Duration::from_secs(40),
        &mut seen,
        &node,
    );
    assert_eq!(node.admin_get("/readyz"), Some((200, "ready\n".to_owned())));
}

/// The default credential alone (`$CREDENTIALS_DIRECTORY/default.creds`, no `--creds`) does not
/// choose a lattice: without `--leaf-url` or `--nats-url` the node refuses to start, naming the
/// credential, the unit's `LoadCredential=` and the missing key, rather than join the default
/// (public) leaf URL.
#[test]
fn the_default_credential_without_a_leaf_url_is_refused() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    hub.user_creds(dir.path(), "default.creds");
    let env = [("CREDENTIALS_DIRECTORY", dir.path())];
    let err = up_fails(&[], &env);
    assert!(
        err.contains("the default credential $CREDENTIALS_DIRECTORY/default.creds")
            && err.contains("LoadCredential=default.creds:")
            && err.contains("no leaf-url is given: set --leaf-url"),
        "{err}"
    );
}

/// A leaf node whose hub has no JetStream: after the grace (1 s here, through the test knob
/// `LATTICE_READY_GRACE_MS`) and its first pass, it tells systemd `READY=1` with a `STATUS=`
/// saying it serves from its mirror, while `/readyz` stays 503 naming the store; once the hub
/// comes back with JetStream, `STATUS=ready` and `/readyz` 200.
#[test]
fn after_the_grace_a_node_whose_store_is_out_of_reach_is_ready_serving_from_its_mirror() {
    use crate::common::hub::HubJetStream;
    let mut hub = Hub::start_with(HubJetStream::Off);
    let tmp = tempfile::tempdir().unwrap();
    let creds = hub.user_creds(tmp.path(), "node.creds");
    let (socket, socket_s) = notify_socket(tmp.path());
    let (config, data) = (tmp.path().join("config"), tmp.path().join("data"));
    std::fs::create_dir_all(&config).unwrap();
    let (creds_s, leaf) = (creds.to_string_lossy().into_owned(), hub.leaf_url());
    let node = Node::launch(&Launch {
        dirs: Some((&config, &data)),
        extra: &["--creds", &creds_s, "--leaf-url", &leaf],
        env: &[
            ("NOTIFY_SOCKET", &socket_s),
            ("LATTICE_READY_GRACE_MS", "1000"),
        ],
        ..Launch::default()
    });
    let mut seen = Vec::new();
    let (_, ready) = receive_until(
        &socket,
        "READY=1",
        Duration::from_secs(40),
        &mut seen,
        &node,
    );
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=ready, serving from the mirror: the lattice's store")),
        "{ready:?}"
    );
    let (status, body) = node.admin_get("/readyz").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("store: the lattice's store has not answered yet"),
        "{body}"
    );
    node.wait_for_log(
        &["lattice node is ready for systemd after the grace"],
        Duration::from_secs(5),
    );
    hub.restart_with(HubJetStream::Domain(Hub::JS_DOMAIN));
    receive_until(
        &socket,
        "STATUS=ready",
        Duration::from_secs(40),
        &mut seen,
        &node,
    );
    assert_eq!(node.admin_get("/readyz"), Some((200, "ready\n".to_owned())));
}

/// A datagram socket in `dir` for the node's sd_notify messages (`NOTIFY_SOCKET`), reads
/// timing out after 100 ms, and its path for the variable.
fn notify_socket(dir: &std::path::Path) -> (UnixDatagram, String) {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (socket, path.to_string_lossy().into_owned())
}

/// SIGCONTs a process stopped by the test when dropped, so no stopped nats-server outlives a
/// failed test.
struct Stopped(i32);

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGCONT,
        );
    }
}

/// A frozen nats-server (SIGSTOP) is not a stuck node: `/readyz` turns 503 naming it (its
/// monitoring port stops answering) while the node's own loops go on and the watchdog keeps
/// being pinged; after SIGCONT the node is ready again. (Withholding the ping for a loop that
/// is stuck is shown by `systemd::tests` in the library: nothing outside the process can make
/// one of its loops stop without stopping the whole process.)
#[test]
fn a_frozen_nats_server_makes_the_node_unready_but_not_stuck() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let tmp = tempfile::tempdir().unwrap();
    let (socket, socket_s) = notify_socket(tmp.path());
    let (config, data) = (tmp.path().join("config"), tmp.path().join("data"));
    std::fs::create_dir_all(&config).unwrap();
    let node = Node::launch(&Launch {
        dirs: Some((&config, &data)),
        env: &[("NOTIFY_SOCKET", &socket_s), ("WATCHDOG_USEC", "2000000")],
        ..Launch::default()
    });
    let mut seen = Vec::new();
    receive_until(
        &socket,
        "READY=1",
        Duration::from_secs(30),
        &mut seen,
        &node,
    );
    let pid = node.nats_pid();
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let frozen = Stopped(pid);
    let mut body = String::new();
    wait_until(
        "/readyz to name the frozen nats-server",
        Duration::from_secs(15),
        || {
            body = node
                .admin_get("/readyz")
                .map(|(_, b)| b)
                .unwrap_or_default();
            body.contains(&format!("nats-server: pid {pid} is not healthy: "))
        },
    );
    assert_eq!(node.admin_get("/readyz").unwrap().0, 503, "{body}");
    // The node's loops go on: the watchdog is pinged throughout.
    let from = seen.len();
    let until = Instant::now() + Duration::from_secs(3);
    let mut buffer = [0u8; 4096];
    while Instant::now() < until {
        if let Ok(n) = socket.recv(&mut buffer) {
            seen.push((
                Instant::now(),
                String::from_utf8_lossy(&buffer[..n]).into_owned(),
            ));
        }
    }
    let pings = seen[from..]
        .iter()
        .filter(|(_, t)| t.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(
        pings >= 2,
        "{pings} pings while nats-server was frozen: {seen:?}"
    );
    drop(frozen);
    wait_until("/readyz 200 after SIGCONT", Duration::from_secs(30), || {
        node.admin_get("/readyz").is_some_and(|(s, _)| s == 200)
    });
    assert_eq!(
        node.nats_pid(),
        pid,
        "the same nats-server, not a restarted one"
    );
}

/// A nats-server frozen for good (SIGSTOP, never continued) is taken for wedged after
/// failing its health checks for `RESTART_UNHEALTHY_AFTER` (30 s): the node kills it and starts
/// another, and is ready again; it does not stay unready forever.
#[test]
fn a_nats_server_frozen_for_good_is_restarted() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let node = Node::start(&[]);
    node.wait_for_log(&["lattice node is ready"], Duration::from_secs(30));
    let pid = node.nats_pid();
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    // Continued at the end whatever happens, should the node not have killed it.
    let _frozen = Stopped(pid);
    node.wait_for_log(
        &["failed every health check for 30s"],
        Duration::from_secs(90),
    );
    node.wait_for_log(
        &["nats-server restarted and ready"],
        Duration::from_secs(30),
    );
    assert_ne!(node.nats_pid(), pid, "a new nats-server");
    assert!(!crate::common::alive(pid), "the frozen one was killed");
    wait_until(
        "/readyz 200 after the restart",
        Duration::from_secs(30),
        || node.admin_get("/readyz").is_some_and(|(s, _)| s == 200),
    );
}
