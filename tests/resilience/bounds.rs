//! Tests: manifests that ask for unbounded work, and starts that must not block each other.

use std::time::Duration;

use crate::common::hub::Hub;
use crate::common::lattice::{
    HEARTBEAT, answers, eventually, join, standalone, start, state_is, write,
};
use crate::common::{Node, example_wasm, manifest_with};

/// The YAML path of the first component's scaler `instances`.
const INSTANCES_FIELD: &str = "spec.components[0].traits[0].properties.instances";

/// Issue 12's manifest: 4e9 instances over spread entries that all weigh 0 (before the bound,
/// every node spun a core on it on every tick).
fn spinning_manifest(app: &str, wasm: &std::path::Path) -> String {
    let scaler = "instances: 4000000000
            spread:
              - name: one
                weight: 0
              - name: two
                weight: 0";
    manifest_with(app, "web", wasm, &format!("/{app}"), scaler)
}

#[test]
fn a_manifest_asking_for_4e9_instances_is_refused_at_deploy_naming_the_field() {
    let node = standalone("solo");
    let wasm = example_wasm("http-hello");
    let file = write(
        node.config_dir.parent().unwrap(),
        "spin.yaml",
        &spinning_manifest("spin", &wasm),
    );

    // The CLI.
    let out = node.cli(&["app", "deploy", &file.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(INSTANCES_FIELD) && stderr.contains("100000"),
        "{stderr}"
    );

    // The node itself, asked by a client that does not validate first.
    let request = serde_json::json!({
        "manifest": spinning_manifest("spin", &wasm),
        "version": null,
        "images": {"web": "0".repeat(64)},
        "source": {"kind": "cli"},
    });
    let reply = crate::common::control_request(
        &node.data_dir,
        "app.deploy",
        serde_json::to_vec(&request).unwrap(),
    );
    assert_eq!(reply["success"], false, "{reply}");
    let message = reply["message"].as_str().unwrap_or_default();
    assert!(message.contains(INSTANCES_FIELD), "{reply}");

    // In the config dir: one error naming the field, nothing stored, the node keeps serving.
    std::fs::copy(&file, node.config_dir.join("spin.yaml")).unwrap();
    node.wait_for_log(&["spin.yaml", INSTANCES_FIELD], Duration::from_secs(10));
    let apps = node.app_names().unwrap();
    assert!(!apps.contains(&"spin".to_owned()), "{apps:?}");
    node.write_manifest("hello.yaml", "hello", "http-hello", "/hello");
    node.wait_for_status("/hello", 200, Duration::from_secs(20));
}

/// HELLO-like manifest of app `app` (component `web`, `wasm`) answering `path`, one replica
/// required in zone `zone`.
fn zoned_manifest(app: &str, wasm: &std::path::Path, path: &str, zone: &str) -> String {
    crate::common::manifest_with(
        app,
        "web",
        wasm,
        path,
        &format!(
            "instances: 1\n            spread:\n              - name: {zone}\n                requirements:\n                  zone: {zone}"
        ),
    )
}

/// Starts node `name` in zone `zone` joined to `hub` as [`join`] does, with `extra` flags.
fn join_with(hub: &Hub, dir: &std::path::Path, name: &str, zone: &str, extra: &[&str]) -> Node {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let creds = hub.user_creds(dir, "node.creds");
    let mut flags: Vec<String> = vec![
        "--creds".into(),
        creds.to_string_lossy().into_owned(),
        "--leaf-url".into(),
        hub.leaf_url(),
        "--js-domain".into(),
        Hub::JS_DOMAIN.into(),
        "--name".into(),
        name.into(),
        "--label".into(),
        format!("zone={zone}"),
        "--heartbeat-interval".into(),
        format!("{}ms", HEARTBEAT.as_millis()),
    ];
    flags.extend(extra.iter().map(|f| (*f).to_owned()));
    start(dir, &flags)
}

#[test]
fn a_slow_compile_holds_up_no_other_app_and_a_start_past_its_deadline_fails_saying_so() {
    let hub = Hub::start();
    let a = join(&hub, "node-a", "a");
    let b_dir = tempfile::tempdir().unwrap();
    let b = join_with(&hub, b_dir.path(), "node-b", "b", &[]);
    // node-c: a deadline no start can meet.
    let c_dir = tempfile::tempdir().unwrap();
    let c = join_with(
        &hub,
        c_dir.path(),
        "node-c",
        "c",
        &["--start-timeout", "1ms"],
    );
    eventually(
        "node-a to see the others",
        Duration::from_secs(15),
        &[&a],
        || {
            let names = a.host_names()?;
            (names == ["node-a", "node-b", "node-c"])
                .then_some(())
                .ok_or(format!("{names:?}"))
        },
    );

    // Deployed through node-a, which validates (compiles and caches) it there: node-b, where
    // it must run, compiles it anew, for seconds.
    let dir = a.config_dir.parent().unwrap();
    let large = write(
        dir,
        "large.yaml",
        &zoned_manifest("large", &example_wasm("http-large"), "/large", "b"),
    );
    a.deploy(&large);
    let hello = write(
        dir,
        "hello.yaml",
        &zoned_manifest("hello", &example_wasm("http-hello"), "/hello", "b"),
    );
    a.deploy(&hello);

    // hello is not queued behind large's compile on node-b: it answers before large runs.
    eventually(
        "hello to answer from node-b",
        Duration::from_secs(30),
        &[&a],
        || answers(&a, "/hello", "Hello from lattice"),
    );
    let running = "replicas running here app=\"large\"";
    assert!(
        !b.log().contains(running),
        "large ran on node-b before hello answered:\n{}",
        b.log()
    );
    eventually(
        "large to answer from node-b",
        Duration::from_secs(60),
        &[&a],
        || answers(&a, "/large", "Large from lattice"),
    );

    // On node-c, the deadline: the start fails, and says why.
    let late = write(
        dir,
        "late.yaml",
        &zoned_manifest("late", &example_wasm("http-hello"), "/late", "c"),
    );
    a.deploy(&late);
    let status = eventually(
        "late to fail on node-c",
        Duration::from_secs(30),
        &[&a],
        || state_is(&a, "late", "failed"),
    );
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("node-c") && reason.contains("did not start within 1ms"),
        "{status}"
    );
    assert!(c.log().contains("--start-timeout"), "{}", c.log());
}
