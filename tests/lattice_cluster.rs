//! Many machines, one lattice: an operator-mode hub nats-server and several `lattice up` nodes
//! on loopback, each with its own supervised leaf nats-server, data dir and config dir. Nodes
//! join with a creds file the test mints; HTTP requests cross nodes over NATS.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::hub::Hub;
use common::{Node, example_wasm, http_request_with, lattice_cli, wait_until};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Heartbeat interval of test nodes.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The flags that give a node [`HEARTBEAT`] (whatever the default is).
const HEARTBEAT_FLAGS: [&str; 2] = ["--heartbeat-interval", "1s"];

/// A manifest for one example component at `path`, whose replicas go only to nodes labelled
/// `role=<role>` (a spread requirement), so other nodes know the route but run no replica.
fn app_manifest(app: &str, example: &str, path: &str, role: &str, instances: u32) -> String {
    let scaler = format!(
        "instances: {instances}\n            spread:\n              - name: {role}-nodes\n                requirements:\n                  role: {role}"
    );
    common::manifest_with(app, "web", &example_wasm(example), path, &scaler)
}

/// A lattice node in its own temp dir, joined to `hub` as a leaf node.
struct Member {
    node: Node,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Member {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl std::ops::DerefMut for Member {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

/// Starts node `name` with label `role=<role>` in lattice `lattice`, its config dir holding
/// `manifests` (file name, text), joined to `hub` with `creds` (a fresh user's when `None`).
fn join(
    hub: &Hub,
    name: &str,
    role: &str,
    lattice: &str,
    manifests: &[(&str, String)],
    creds: Option<PathBuf>,
) -> Member {
    join_with(hub, name, role, lattice, manifests, creds, &HEARTBEAT_FLAGS)
}

/// As [`join`], with `extra` flags only: without `--heartbeat-interval` among them, the
/// node's default.
fn join_with(
    hub: &Hub,
    name: &str,
    role: &str,
    lattice: &str,
    manifests: &[(&str, String)],
    creds: Option<PathBuf>,
    extra: &[&str],
) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    for (file, text) in manifests {
        std::fs::write(config.join(file), text).unwrap();
    }
    let creds = creds.unwrap_or_else(|| hub.user_creds(dir.path(), "node.creds"));
    let creds = creds.to_string_lossy().into_owned();
    let leaf_url = hub.leaf_url();
    let label = format!("role={role}");
    let mut flags = vec![
        "--creds",
        &creds,
        "--leaf-url",
        &leaf_url,
        "--name",
        name,
        "--label",
        &label,
        "--lattice",
        lattice,
        // No --js-domain: the node finds the hub's JetStream (domain `hub`) itself.
    ];
    flags.extend_from_slice(extra);
    let node = Node::start_in(&config, &dir.path().join("data"), &flags);
    node.wait_for_log(&["lattice node is up"], Duration::from_secs(20));
    Member { node, _dir: dir }
}

/// Waits until `node` says its leaf uplink is connected.
fn joined(node: &Node) {
    node.wait_for_log(&["leaf uplink connected"], Duration::from_secs(10));
}

/// `lattice get <what…> -o json` through `node`'s NATS: the parsed array.
fn get_json(node: &Node, lattice: &str, what: &[&str]) -> Vec<Value> {
    let data = node.data_dir.to_string_lossy().into_owned();
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json", "--data-dir", &data, "--lattice", lattice]);
    let out = lattice_cli(&args);
    assert!(
        out.status.success(),
        "lattice {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn host_names(hosts: &[Value]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| h["name"].as_str().unwrap().to_owned())
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

#[test]
fn nodes_join_with_creds_and_see_each_other_come_and_go() {
    let hub = Hub::start();
    let started = Instant::now();
    let a = join(&hub, "node-a", "a", "default", &[], None);
    let b = join(&hub, "node-b", "b", "default", &[], None);
    let c = join(&hub, "node-c", "c", "default", &[], None);
    for node in [&a, &b, &c] {
        joined(node);
    }
    let mut hosts = Vec::new();
    wait_until("node A lists A, B and C", Duration::from_secs(10), || {
        hosts = get_json(&a, "default", &["hosts"]);
        host_names(&hosts) == ["node-a", "node-b", "node-c"]
    });
    assert!(started.elapsed() < Duration::from_secs(30));
    for (host, role) in hosts.iter().zip(["a", "b", "c"]) {
        let id = host["id"].as_str().unwrap();
        assert!(id.starts_with('N') && id.len() == 56, "{host}");
        assert_eq!(host["labels"]["role"], role, "{host}");
        assert_eq!(host["labels"]["os"], std::env::consts::OS, "{host}");
        assert!(host["labels"]["hostname"].is_string(), "{host}");
        assert!(host["uptime_ms"].as_u64().is_some(), "{host}");
        assert_eq!(host["uplink"]["state"], "connected", "{host}");
    }

    // The table names the same hosts.
    let data = a.data_dir.to_string_lossy().into_owned();
    let out = lattice_cli(&["get", "hosts", "--data-dir", &data]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID"), "{table}");
    for name in ["node-a", "node-b", "node-c"] {
        assert!(table.contains(name), "{table}");
    }

    // SIGKILL: no host_stopped, so C must age out of A's view within 3 heartbeats.
    kill(Pid::from_raw(c.pid()), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    wait_until("node A drops node C", HEARTBEAT * 5, || {
        host_names(&get_json(&a, "default", &["hosts"])) == ["node-a", "node-b"]
    });
    // Each poll runs the CLI (a process and a NATS connection): allow it one second.
    let gone_after = killed.elapsed();
    assert!(
        gone_after <= HEARTBEAT * 3 + Duration::from_secs(1),
        "C dropped after {gone_after:?}, more than 3 heartbeats"
    );

    // A stop in order is seen at once (host_stopped).
    let mut b = b;
    assert!(b.terminate(Duration::from_secs(5)).unwrap().success());
    a.wait_for_log(&["host left the lattice", "node-b"], HEARTBEAT);
    assert_eq!(host_names(&get_json(&a, "default", &["hosts"])), ["node-a"]);
}

#[test]
fn a_node_with_wrong_creds_reports_an_authorization_failure() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let foreign = hub.foreign_creds(dir.path(), "foreign.creds");
    let stranger = join(&hub, "stranger", "x", "default", &[], Some(foreign));
    let line = stranger.wait_for_log(&["leaf uplink failed"], Duration::from_secs(10));
    assert!(line.contains("Authorization Violation"), "{line}");
    let hosts = get_json(&stranger, "default", &["hosts"]);
    assert_eq!(host_names(&hosts), ["stranger"]);
    assert_eq!(hosts[0]["uplink"]["state"], "failed");
    assert_eq!(hosts[0]["uplink"]["error"], "Authorization Violation");
    // It never claims to have joined, however long it tries.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(stranger.count_log("leaf uplink connected"), 0);

    // A remote that refuses connections is an error too.
    let port = common::free_port();
    let nowhere = format!("nats-leaf://127.0.0.1:{port}");
    let lonely = Node::start(&["--leaf-url", &nowhere, "--name", "lonely"]);
    let line = lonely.wait_for_log(&["leaf uplink failed"], Duration::from_secs(10));
    assert!(line.contains("connection refused"), "{line}");

    // A member of the account does join, and does not see the stranger.
    let member = join(&hub, "member", "m", "default", &[], None);
    joined(&member);
    std::thread::sleep(HEARTBEAT * 2);
    assert_eq!(
        host_names(&get_json(&member, "default", &["hosts"])),
        ["member"]
    );
}

#[test]
fn a_component_on_node_b_answers_requests_made_to_node_a() {
    let hub = Hub::start();
    let manifest = [(
        "echo.yaml",
        app_manifest("echo", "http-echo", "/echo", "b", 1),
    )];
    let a = join(&hub, "node-a", "a", "default", &manifest, None);
    let b = join(&hub, "node-b", "b", "default", &manifest, None);
    joined(&a);
    joined(&b);
    a.wait_for_log(
        &["no replica of this component belongs on this node"],
        Duration::from_secs(5),
    );

    let body: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let headers = [
        ("x-trace", "abc"),
        ("content-type", "application/octet-stream"),
    ];
    let try_send =
        |node: &Node| http_request_with(node.http, "POST", "/echo/upload?x=1", &headers, &body);
    let send = |node: &Node| try_send(node).expect("an answer");
    wait_until(
        "node A reaches B's replica",
        Duration::from_secs(10),
        || try_send(&a).is_some_and(|(status, _, _)| status == 200),
    );
    let (status_a, headers_a, body_a) = send(&a);
    let (status_b, headers_b, body_b) = send(&b);
    assert_eq!(status_a, 200);
    assert_eq!(status_a, status_b);
    let without_date = |h: &[(String, String)]| {
        let mut h: Vec<(String, String)> = h.iter().filter(|(k, _)| k != "date").cloned().collect();
        h.sort();
        h
    };
    assert_eq!(without_date(&headers_a), without_date(&headers_b));
    assert!(
        headers_a.contains(&("x-trace".into(), "abc".into())),
        "{headers_a:?}"
    );
    assert!(
        headers_a.contains(&("x-echo-path".into(), "/echo/upload?x=1".into()))
            || headers_a
                .iter()
                .any(|(k, v)| k == "x-echo-path" && v.starts_with("/echo/upload")),
        "{headers_a:?}"
    );
    assert_eq!(body_a.len(), body.len());
    assert_eq!(sha256(&body_a), sha256(&body));
    assert_eq!(sha256(&body_a), sha256(&body_b));
    // B served A's request: the invocation crossed the lattice.
    assert!(b.count_log("lattice invocation served") >= 2, "{}", b.log());

    // A large response to a small request (the replica streams what it generates).
    let size = 6 * 1024 * 1024 + 7;
    let generate = size.to_string();
    let ask = |node: &Node| {
        http_request_with(
            node.http,
            "GET",
            "/echo/big",
            &[("x-echo-generate", &generate)],
            &[],
        )
        .expect("an answer")
    };
    let (status_a, headers_a, body_a) = ask(&a);
    let (_, headers_b, body_b) = ask(&b);
    assert_eq!(status_a, 200);
    assert_eq!(without_date(&headers_a), without_date(&headers_b));
    let expected: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    assert_eq!(body_a.len(), size);
    assert_eq!(sha256(&body_a), sha256(&expected));
    assert_eq!(sha256(&body_b), sha256(&expected));

    // Inventory: the replica is on B only.
    let inventory = get_json(&a, "default", &["inventory"]);
    let by_name = |name: &str| {
        inventory
            .iter()
            .find(|h| h["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {inventory:?}"))
            .clone()
    };
    assert_eq!(by_name("node-a")["components"].as_array().unwrap().len(), 0);
    let on_b = by_name("node-b")["components"][0].clone();
    assert_eq!(on_b["app"], "echo");
    assert_eq!(on_b["component"], "web");
    assert_eq!(on_b["replicas"], 1);
    let only_b = get_json(&a, "default", &["inventory", "node-b"]);
    assert_eq!(host_names(&only_b), ["node-b"]);
}

#[test]
fn replicas_on_two_nodes_share_requests_and_survive_the_loss_of_one() {
    let hub = Hub::start();
    let manifest = [(
        "hello.yaml",
        // Two replicas over the two worker nodes: one each.
        app_manifest("hello", "http-hello", "/hello", "worker", 2),
    )];
    let a = join(&hub, "node-a", "worker", "default", &manifest, None);
    let b = join(&hub, "node-b", "worker", "default", &manifest, None);
    let c = join(&hub, "node-c", "front", "default", &manifest, None);
    for node in [&a, &b, &c] {
        joined(node);
    }
    let get = |node: &Node| node.get("/hello").map(|(s, _)| s);
    wait_until("C reaches a replica", Duration::from_secs(10), || {
        get(&c) == Some(200)
    });
    // Both replicas run (the second may still be starting when the first answers).
    wait_until(
        "A and B run a replica each",
        Duration::from_secs(10),
        || {
            let inventory = get_json(&c, "default", &["inventory"]);
            ["node-a", "node-b"].iter().all(|name| {
                inventory.iter().any(|host| {
                    host["name"] == *name
                        && host["components"]
                            .as_array()
                            .is_some_and(|c| c.iter().any(|c| c["replicas"].as_u64() >= Some(1)))
                })
            })
        },
    );
    let (served_a, served_b) = (
        a.count_log("lattice invocation served"),
        b.count_log("lattice invocation served"),
    );
    for i in 0..200 {
        assert_eq!(get(&c), Some(200), "request {i}");
    }
    // Logs arrive a moment after the answers.
    std::thread::sleep(Duration::from_millis(300));
    let on_a = a.count_log("lattice invocation served") - served_a;
    let on_b = b.count_log("lattice invocation served") - served_b;
    assert_eq!(on_a + on_b, 200, "a {on_a}, b {on_b}");
    assert!(
        on_a > 0 && on_b > 0,
        "both replicas serve: a {on_a}, b {on_b}"
    );

    // A replica that takes requests and never accepts them (stopped, its connections open):
    // the requests it swallows are sent again after a second, to a replica that answers.
    kill(Pid::from_raw(b.pid()), Signal::SIGSTOP).unwrap();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        assert_eq!(get(&c), Some(200), "request {i} with B stopped");
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest >= Duration::from_secs(1),
        "no request went to the stopped replica and was resent (slowest {slowest:?})"
    );
    assert!(c.count_log("sending it again") > 0, "{}", c.log());
    kill(Pid::from_raw(b.pid()), Signal::SIGCONT).unwrap();

    kill(Pid::from_raw(b.pid()), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let mut failures_after_first_second = Vec::new();
    while killed.elapsed() < Duration::from_secs(4) {
        let status = get(&c);
        if status != Some(200) && killed.elapsed() > Duration::from_secs(1) {
            failures_after_first_second.push((killed.elapsed(), status));
        }
    }
    assert!(
        failures_after_first_second.is_empty(),
        "{failures_after_first_second:?}\n{}",
        c.log()
    );
}

#[test]
fn a_killed_nodes_replica_answers_elsewhere_within_3_s_with_the_default_heartbeat() {
    let hub = Hub::start();
    let manifests = [
        (
            "hello.yaml",
            app_manifest("hello", "http-hello", "/hello", "worker", 1),
        ),
        // The same component on both workers: the survivor has it compiled before the kill,
        // so the time measured is the failover's, not a first compile's.
        (
            "warm.yaml",
            app_manifest("warm", "http-hello", "/warm", "worker", 2),
        ),
    ];
    // No --heartbeat-interval: the nodes' default.
    let a = join_with(&hub, "node-a", "worker", "default", &manifests, None, &[]);
    let b = join_with(&hub, "node-b", "worker", "default", &manifests, None, &[]);
    let c = join_with(&hub, "node-c", "front", "default", &manifests, None, &[]);
    for node in [&a, &b, &c] {
        joined(node);
    }
    let get = |node: &Node, path: &str| node.get(path).map(|(s, _)| s);
    wait_until("C reaches the replica", Duration::from_secs(10), || {
        get(&c, "/hello") == Some(200)
    });
    // Which worker runs `hello`, once C has heard so, and that both run `warm`.
    let runs = |inventory: &[Value], name: &str, app: &str| {
        inventory.iter().any(|h| {
            h["name"] == name
                && h["components"]
                    .as_array()
                    .is_some_and(|c| c.iter().any(|c| c["app"] == app))
        })
    };
    let mut on_a = None;
    wait_until(
        "C's inventory lists the replicas",
        Duration::from_secs(20),
        || {
            let inventory = get_json(&c, "default", &["inventory"]);
            let warm = ["node-a", "node-b"]
                .iter()
                .all(|name| runs(&inventory, name, "warm"));
            on_a = match (
                runs(&inventory, "node-a", "hello"),
                runs(&inventory, "node-b", "hello"),
            ) {
                (true, false) if warm => Some(true),
                (false, true) if warm => Some(false),
                _ => None,
            };
            on_a.is_some()
        },
    );
    let (victim, survivor) = if on_a == Some(true) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    // Every node has vetted the probes of the two others (they answered one).
    for node in [survivor, &c] {
        wait_until(
            "the nodes answer each other's probes",
            Duration::from_secs(10),
            || node.count_log("host answers probes") >= 2,
        );
    }

    kill(Pid::from_raw(victim.pid()), Signal::SIGKILL).unwrap();
    let killed = Instant::now();
    let mut statuses = Vec::new();
    let answered = loop {
        let status = get(&c, "/hello");
        if status == Some(200) {
            break killed.elapsed();
        }
        statuses.push(status);
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no answer 10 s after the kill: {statuses:?}\n{}\n{}",
            c.log(),
            survivor.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("the replica answered on the other node {answered:?} after the SIGKILL");
    assert!(
        answered <= Duration::from_secs(3),
        "answered {answered:?} after the kill: {statuses:?}\n{}\n{}",
        c.log(),
        survivor.log()
    );
    assert!(survivor.count_log("lattice invocation served") > 0);
    // Forgotten by its probes, not by its missed heartbeats.
    assert!(
        survivor.count_log("twice nothing subscribed to its probe subject") > 0,
        "{}",
        survivor.log()
    );
}

#[test]
fn nodes_keep_serving_their_own_components_while_the_hub_is_down() {
    let mut hub = Hub::start();
    let manifests = [
        (
            "one.yaml",
            app_manifest("one", "http-hello", "/one", "a", 1),
        ),
        (
            "two.yaml",
            app_manifest("two", "http-goodbye", "/two", "b", 1),
        ),
    ];
    let a = join(&hub, "node-a", "a", "default", &manifests, None);
    let b = join(&hub, "node-b", "b", "default", &manifests, None);
    joined(&a);
    joined(&b);
    a.wait_for_status("/two", 200, Duration::from_secs(10));

    hub.stop();
    a.wait_for_log(&["leaf uplink disconnected"], Duration::from_secs(10));
    for _ in 0..20 {
        assert_eq!(a.get("/one").map(|(s, _)| s), Some(200));
        assert_eq!(b.get("/two").map(|(s, _)| s), Some(200));
    }
    // Across the missing hub: an answer, not a hang.
    let (status, _) = a.get("/two").expect("an answer");
    assert_eq!(status, 503);

    hub.restart();
    a.wait_for_status("/two", 200, Duration::from_secs(15));
    b.wait_for_status("/one", 200, Duration::from_secs(15));
    assert!(alive_node(&a) && alive_node(&b));
}

fn alive_node(node: &Node) -> bool {
    common::alive(node.pid())
}

#[test]
fn two_lattices_on_one_account_do_not_see_each_other() {
    let hub = Hub::start();
    // The same app and route in both lattices; the replica runs only in green.
    let manifest = [(
        "hello.yaml",
        app_manifest("hello", "http-hello", "/hello", "green", 1),
    )];
    let blue = join(&hub, "blue-1", "blue", "blue", &manifest, None);
    let green = join(&hub, "green-1", "green", "green", &manifest, None);
    joined(&blue);
    joined(&green);
    green.wait_for_status("/hello", 200, Duration::from_secs(10));
    std::thread::sleep(HEARTBEAT * 2);
    assert_eq!(host_names(&get_json(&blue, "blue", &["hosts"])), ["blue-1"]);
    assert_eq!(
        host_names(&get_json(&green, "green", &["hosts"])),
        ["green-1"]
    );
    // Blue's ingress does not reach green's replica.
    let (status, body) = blue.get("/hello").unwrap();
    assert_eq!(status, 503, "{body}");
    // The lattice name, not the connection, selects: through blue's NATS, green is green alone.
    assert_eq!(
        host_names(&get_json(&blue, "green", &["hosts"])),
        ["green-1"]
    );
}

#[test]
fn bad_creds_files_are_refused_before_anything_starts() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let good = hub.user_creds(dir.path(), "good.creds");
    let not_creds = dir.path().join("notes.creds");
    std::fs::write(&not_creds, "hello\n").unwrap();
    set_mode(&not_creds, 0o600);
    let shared = dir.path().join("shared.creds");
    std::fs::copy(&good, &shared).unwrap();
    set_mode(&shared, 0o644);
    let missing = dir.path().join("missing.creds");
    for (path, reason) in [
        (&missing, "cannot read it"),
        (&not_creds, "not a NATS credentials file"),
        (&shared, "group or others can access it"),
    ] {
        let data = dir.path().join("data");
        let creds = path.to_string_lossy();
        let started = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lattice"))
            .args(["up", "--creds", &creds, "--leaf-url", &hub.leaf_url()])
            .arg("--config-dir")
            .arg(dir.path())
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&*creds) && stderr.contains(reason),
            "{stderr}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            !data.exists(),
            "nothing may start: {} exists",
            data.display()
        );
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn an_unreachable_lattice_is_a_clear_error() {
    let port = common::free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let started = Instant::now();
    let out = lattice_cli(&["get", "hosts", "--nats-url", &url]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&url), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // A standalone node answers for itself; another lattice name finds nobody.
    let node = Node::start(&[]);
    node.wait_for_log(&["lattice node is up"], Duration::from_secs(20));
    let hosts = get_json(&node, "default", &["hosts"]);
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0]["uplink"]["state"], "none");
    let data = node.data_dir.to_string_lossy().into_owned();
    let started = Instant::now();
    let out = lattice_cli(&[
        "get",
        "hosts",
        "--data-dir",
        &data,
        "--lattice",
        "elsewhere",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no node of lattice \"elsewhere\""),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_remote_runaway_component_gets_504_and_a_missing_one_503() {
    let hub = Hub::start();
    let manifests = [
        (
            "loop.yaml",
            app_manifest("spin", "http-loop", "/loop", "b", 1),
        ),
        (
            "gone.yaml",
            app_manifest("gone", "http-hello", "/gone", "nobody", 1),
        ),
    ];
    let timeout = [&HEARTBEAT_FLAGS[..], &["--request-timeout", "1s"]].concat();
    let a = join_with(&hub, "node-a", "a", "default", &manifests, None, &timeout);
    let b = join_with(&hub, "node-b", "b", "default", &manifests, None, &timeout);
    joined(&a);
    joined(&b);
    b.wait_for_log(&["app deployed", "spin"], Duration::from_secs(10));
    // Until B's queue subscription has reached A through the hub, A answers 503.
    let mut answer = (0, String::new());
    wait_until(
        "A reaches B's runaway replica",
        Duration::from_secs(10),
        || {
            let started = Instant::now();
            answer = a.get("/loop").expect("an answer");
            assert!(started.elapsed() < Duration::from_secs(5));
            answer.0 != 503
        },
    );
    assert_eq!(answer.0, 504, "{}", answer.1);
    b.wait_for_log(
        &["component exceeded the request deadline"],
        Duration::from_secs(5),
    );
    let (status, body) = a.get("/gone").expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("runs on no node"), "{body}");
}
