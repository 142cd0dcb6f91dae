//! Tests: every task of a node supervised: restarts, degraded state in the heartbeat.

use std::time::Duration;

use serde_json::Value;

use crate::common::{Node, lattice_cli, wait_until};

/// `lattice get hosts` through `node`'s data dir, as JSON, or `None` while it fails.
fn hosts(node: &Node, table: bool) -> Option<String> {
    let data = node.data_dir.to_string_lossy().into_owned();
    let mut args = vec!["get", "hosts", "--data-dir", &data];
    if !table {
        args.extend(["-o", "json"]);
    }
    let out = lattice_cli(&args);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The config-dir watcher of a node fails at every attempt (its config dir is a symlink to
/// nowhere, so it cannot be created): the node still comes up and serves, the watcher is
/// restarted with a growing backoff, its failures are in the heartbeat, and after 60 s of
/// failing the node reports itself degraded in `lattice get hosts`. When the dir can be made,
/// the next attempt runs the watcher and deploys the dir's manifest.
#[test]
fn a_task_that_keeps_failing_is_restarted_with_backoff_and_the_node_reports_itself_degraded() {
    let dirs = tempfile::tempdir().unwrap();
    let target = dirs.path().join("manifests");
    let config_dir = dirs.path().join("config");
    std::os::unix::fs::symlink(&target, &config_dir).unwrap();
    let node = Node::start_in(&config_dir, &dirs.path().join("data"), &[]);
    node.wait_for_log(&["lattice node is up"], Duration::from_secs(30));
    node.wait_for_log(
        &["task failed; restarting it", "task=\"config-watcher\""],
        Duration::from_secs(10),
    );

    let mut host = Value::Null;
    wait_until(
        "the watcher's failures in the heartbeat",
        Duration::from_secs(20),
        || {
            let Some(json) = hosts(&node, false) else {
                return false;
            };
            host = serde_json::from_str::<Vec<Value>>(&json).unwrap()[0].clone();
            host["health"]["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["name"] == "config-watcher" && t["restarts"].as_u64() >= Some(2))
        },
    );
    let tasks = host["health"]["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks.iter().map(|t| t["name"].as_str().unwrap()).collect();
    for name in [
        "membership",
        "control-api",
        "mirror",
        "reconciler",
        "heartbeat",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let watcher = tasks
        .iter()
        .find(|t| t["name"] == "config-watcher")
        .unwrap();
    let error = watcher["last_error"].as_str().unwrap();
    assert!(error.contains("creating config dir"), "{watcher}");
    assert!(host["health"]["degraded"].is_null(), "not yet: {host}");
    for task in tasks.iter().filter(|t| t["name"] != "config-watcher") {
        assert_eq!(task["restarts"], 0, "{task}");
    }

    wait_until(
        "degraded after 60 s of failing",
        Duration::from_secs(75),
        || {
            hosts(&node, true)
                .is_some_and(|table| table.contains("degraded (config-watcher failing for"))
        },
    );
    // Backoff: 250 ms doubling, so within 60 s about 8 attempts, not hundreds.
    let restarts = node.count_log("task failed; restarting it");
    assert!((5..=12).contains(&restarts), "{restarts} restarts in ~60 s");

    // The cause goes away: the next attempt (≤ 30 s later) watches the dir and deploys.
    std::fs::create_dir_all(&target).unwrap();
    node.write_manifest("hello.yaml", "hello", "http-hello", "/hello");
    node.wait_for_status("/hello", 200, Duration::from_secs(45));
}
