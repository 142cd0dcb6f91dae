//! Issue 13: listeners only where the node's operator allows (`--allowed-listen`). An app's
//! own `address` on every interface is refused by a node with the default rules (loopback
//! only), with the reason in `lattice app status`, and served by a node of the same lattice
//! whose operator allows it.

use std::net::SocketAddr;
use std::time::Duration;

use crate::common::hub::Hub;
use crate::common::lattice::{self, HEARTBEAT, eventually};
use crate::common::{self, Node, example_wasm, http_get, manifest};

/// Starts node `name` of `hub`'s lattice as a leaf node in `dir` (config dir `dir/config`),
/// with `extra` flags; waits until it is up and its uplink stands.
fn leaf_node(hub: &Hub, dir: &std::path::Path, name: &str, extra: &[String]) -> Node {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let creds = hub.user_creds(dir, "node.creds");
    let mut flags: Vec<String> = vec![
        "--creds".into(),
        creds.to_string_lossy().into_owned(),
        "--leaf-url".into(),
        hub.leaf_url(),
        "--name".into(),
        name.into(),
        "--heartbeat-interval".into(),
        format!("{}ms", HEARTBEAT.as_millis()),
    ];
    flags.extend_from_slice(extra);
    let node = lattice::start(dir, &flags);
    node.wait_for_log(&["leaf uplink connected"], Duration::from_secs(10));
    node
}

#[test]
fn an_address_on_every_interface_is_refused_by_default_and_served_where_allowed() {
    let hub = Hub::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let strict = leaf_node(&hub, dir_a.path(), "strict", &[]);
    let port = common::free_port();
    let open = leaf_node(
        &hub,
        dir_b.path(),
        "open",
        &["--allowed-listen".into(), format!("0.0.0.0:{port}")],
    );

    let app = manifest("everywhere", &example_wasm("http-hello"), "/")
        .replace("path: /\n", &format!("address: 0.0.0.0:{port}\n"));
    let file = dir_a.path().join("everywhere.yaml");
    std::fs::write(&file, app).unwrap();
    strict
        .try_json(&["app", "deploy", &file.to_string_lossy()])
        .unwrap_or_else(|e| panic!("deploy: {e}\n{}", strict.log()));

    // Served by the node that allows it, on every interface (loopback among them).
    let own: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    common::wait_until(
        "the allowing node to answer on 0.0.0.0:PORT",
        Duration::from_secs(20),
        || http_get(own, "/x", None).is_some_and(|(s, b)| s == 200 && b.starts_with("Hello")),
    );
    open.wait_for_log(&["http listener for an app address opened"], HEARTBEAT);

    // Refused by the default node, with the reason in `app status`, whichever node answers.
    let reason = eventually(
        "app status to name the strict node's refusal",
        Duration::from_secs(15),
        &[],
        || {
            let status = open.try_json(&["app", "status", "everywhere"])?;
            let reason = status["reason"].as_str().unwrap_or_default().to_owned();
            if status["state"] == "failed" && reason.contains("on node strict") {
                Ok(reason)
            } else {
                Err(format!("status {status}"))
            }
        },
    );
    assert!(
        reason.contains(&format!("address 0.0.0.0:{port} (every interface)"))
            && reason.contains("--allowed-listen (127.0.0.0/8, [::1])"),
        "{reason}"
    );
    assert!(
        !reason.contains("on node open"),
        "the allowing node reports nothing: {reason}"
    );
    strict.wait_for_log(&["app routes refused here", "everywhere"], HEARTBEAT);
    assert!(
        !strict
            .log()
            .contains("http listener for an app address opened"),
        "the strict node opened no listener:\n{}",
        strict.log()
    );
}

#[test]
fn every_ipv6_interface_is_refused_unless_every_ipv4_one_is_allowed_too() {
    // On Linux a socket on [::]:PORT also accepts IPv4 on every interface: a rule for [::]
    // alone does not allow it.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    let port = common::free_port();
    let node = lattice::start(
        dir.path(),
        &[
            "--name".into(),
            "v6only".into(),
            "--allowed-listen".into(),
            format!("[::]:{port}"),
        ],
    );
    let app = manifest("dualstack", &example_wasm("http-hello"), "/")
        .replace("path: /\n", &format!("address: '[::]:{port}'\n"));
    let file = dir.path().join("dualstack.yaml");
    std::fs::write(&file, app).unwrap();
    node.try_json(&["app", "deploy", &file.to_string_lossy()])
        .unwrap_or_else(|e| panic!("deploy: {e}\n{}", node.log()));
    let reason = eventually(
        "app status to name the refusal",
        Duration::from_secs(30),
        &[],
        || {
            let status = node.try_json(&["app", "status", "dualstack"])?;
            let reason = status["reason"].as_str().unwrap_or_default().to_owned();
            if status["state"] == "failed" && reason.contains("on node v6only") {
                Ok(reason)
            } else {
                Err(format!("status {status}"))
            }
        },
    );
    assert!(
        reason.contains(&format!(
            "address [::]:{port} (every interface, IPv4 included: a socket on [::] also \
             accepts IPv4, so 0.0.0.0:{port} must be allowed too)"
        )),
        "{reason}"
    );
    let own: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(http_get(own, "/x", None).is_none(), "nothing listens");
    assert!(
        !node
            .log()
            .contains("http listener for an app address opened"),
        "{}",
        node.log()
    );
}
