//! Issue 13: buckets are scoped. A link naming the lattice's own bucket is refused at deploy;
//! keyvalue-sled buckets are per app unless the node shares them (`--shared-bucket`), which is
//! also how data stored before buckets were per app stays readable; keyvalue-nats buckets
//! outside a node's `--allowed-buckets` are refused on that node only, with the reason in
//! `lattice app status`.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::hub::Hub;
use crate::common::lattice::{self as cluster, write};
use crate::common::observe::unique;
use crate::common::{Node, example_wasm, http_request_with};

/// How long an app may take to be deployed (compiling included) or to report a failure.
const SETTLE: Duration = Duration::from_secs(60);

/// A manifest of app `app`: the keyvalue counter as component `counter` on `scaler` (1
/// instance), routed at `/counter` for requests to host `host`, its `default` keyvalue link
/// going to capability `image` with target config `properties`.
fn counter_app(
    app: &str,
    host: &str,
    scaler: &str,
    image: &str,
    properties: &[(&str, &str)],
) -> String {
    let wasm = example_wasm("http-keyvalue-counter");
    let mut config = String::new();
    if !properties.is_empty() {
        config.push_str(
            "              config:\n                - name: kv\n                  properties:\n",
        );
        for (key, value) in properties {
            config.push_str(&format!("                    {key}: '{value}'\n"));
        }
    }
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {app}
  annotations:
    version: v1
spec:
  components:
    - name: counter
      type: component
      properties:
        image: file://{wasm}
      traits:
        - type: {scaler}
          properties:
            instances: 1
        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store, atomics]
            target:
              name: kv
{config}    - name: kv
      type: capability
      properties:
        image: {image}
    - name: httpserver
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-server:0.23.2
      traits:
        - type: link
          properties:
            target:
              name: counter
            namespace: wasi
            package: http
            interfaces: [incoming-handler]
            source:
              config:
                - name: route
                  properties:
                    path: /counter
                    host: {host}
"#,
        wasm = wasm.display(),
    )
}

const KEYVALUE_SLED: &str = "wasmcloud+builtin://keyvalue-sled";
const KEYVALUE_NATS: &str = "ghcr.io/wasmcloud/keyvalue-nats:0.3.1";

/// Deploys `file` through `node`; panics unless it succeeds.
fn deploy(node: &Node, file: &Path) {
    let out = node.cli(&["app", "deploy", &file.to_string_lossy()]);
    assert!(
        out.status.success(),
        "deploying {} failed: {}\n{}",
        file.display(),
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
}

/// `method /counter/x` for host `host` through `node`'s ingress: status and body.
fn count(node: &Node, method: &str, host: &str) -> Option<(u16, String)> {
    let (status, _, body) =
        http_request_with(node.http, method, "/counter/x", &[("host", host)], b"")?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `check` every 100 ms until it returns `Ok`, and returns that; after [`SETTLE`] panics
/// naming `what`, the last `Err` and the logs of `nodes`.
fn until<T>(what: &str, nodes: &[&Node], mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        let last = match check() {
            Ok(value) => return value,
            Err(e) => e,
        };
        if std::time::Instant::now() >= deadline {
            let logs: Vec<String> = nodes.iter().map(|n| n.log()).collect();
            panic!(
                "timed out after {SETTLE:?} waiting for {what}; last seen: {last}\n{}",
                logs.join("\n----\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `GET /counter/x` for `host` answers 200 through `node`; returns the body.
fn first_200(node: &Node, host: &str) -> String {
    until(
        &format!("GET /counter/x for {host}"),
        &[node],
        || match count(node, "GET", host) {
            Some((200, body)) => Ok(body),
            other => Err(format!("{other:?}")),
        },
    )
}

/// A standalone node on `dir` (config `dir/config`, data `dir/data`) with `extra` flags, up.
fn standalone(dir: &Path, extra: &[&str]) -> Node {
    let mut flags = vec!["--name".to_owned(), "solo".to_owned()];
    flags.extend(extra.iter().map(|f| (*f).to_owned()));
    cluster::start(dir, &flags)
}

/// Writes what a node wrote before keyvalue-sled buckets were per app: the tree
/// `keyvalue/<bucket>` of its database, holding `key` = `value`.
fn seed_old_layout(dir: &Path, bucket: &str, key: &str, value: &str) {
    let db = sled::open(dir.join("data/state")).unwrap();
    db.open_tree(format!("keyvalue/{bucket}"))
        .unwrap()
        .insert(key, value)
        .unwrap();
    db.flush().unwrap();
}

#[test]
fn a_link_to_the_lattices_apps_bucket_is_refused_at_deploy_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    let node = standalone(dir.path(), &[]);
    let work = tempfile::tempdir().unwrap();
    for (app, image) in [("steal", KEYVALUE_NATS), ("stealsled", KEYVALUE_SLED)] {
        let file = write(
            work.path(),
            &format!("{app}.yaml"),
            &counter_app(
                app,
                "steal.test",
                "spreadscaler",
                image,
                &[("bucket", "lattice_default_apps")],
            ),
        );
        let out = node.cli(&["app", "deploy", &file.to_string_lossy()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{app}: deploy must fail: {stderr}");
        eprintln!("deploy {app}: exit {}, stderr: {stderr}", out.status);
        for needle in [
            file.to_string_lossy().as_ref(),
            "spec.components[0].traits[1].properties.target.config.bucket",
            &format!("app \"{app}\""),
            "component \"counter\"",
            "keyvalue link \"default\"",
            "\"lattice_default_apps\"",
            "reserved for the lattice's own buckets",
        ] {
            assert!(stderr.contains(needle), "{app}: no {needle:?} in: {stderr}");
        }
    }
    // Nothing changed: no app was stored.
    let apps = node.try_json(&["app", "list"]).unwrap();
    assert_eq!(apps, Value::Array(Vec::new()), "{apps}");
}

#[test]
fn sled_buckets_are_per_app_unless_shared_and_old_data_stays_readable_when_shared() {
    let work = tempfile::tempdir().unwrap();
    let apps: Vec<_> = [("kva", "a.test"), ("kvb", "b.test")]
        .into_iter()
        .map(|(app, host)| {
            let yaml = counter_app(
                app,
                host,
                "spreadscaler",
                KEYVALUE_SLED,
                &[("bucket", "common")],
            );
            (write(work.path(), &format!("{app}.yaml"), &yaml), host)
        })
        .collect();

    // Per app: the same bucket name, different data; the old layout's data of a bucket named
    // like no app is not seen.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    seed_old_layout(dir.path(), "common", "/counter/x", "41");
    let mut node = standalone(dir.path(), &[]);
    for (file, _) in &apps {
        deploy(&node, file);
    }
    assert_eq!(first_200(&node, "a.test"), "0\n", "{}", node.log());
    assert_eq!(first_200(&node, "b.test"), "0\n");
    for n in 1..=3 {
        assert_eq!(
            count(&node, "POST", "a.test"),
            Some((200, format!("{n}\n")))
        );
    }
    assert_eq!(
        count(&node, "POST", "b.test"),
        Some((200, "1\n".to_owned()))
    );
    assert_eq!(count(&node, "GET", "a.test"), Some((200, "3\n".to_owned())));
    assert_eq!(count(&node, "GET", "b.test"), Some((200, "1\n".to_owned())));
    assert!(node.terminate(Duration::from_secs(20)).is_some());

    // Shared on another node: both apps see one bucket, which holds the old layout's data.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    seed_old_layout(dir.path(), "common", "/counter/x", "41");
    let node = standalone(dir.path(), &["--shared-bucket", "common"]);
    for (file, _) in &apps {
        deploy(&node, file);
    }
    assert_eq!(first_200(&node, "a.test"), "41\n", "{}", node.log());
    assert_eq!(first_200(&node, "b.test"), "41\n");
    assert_eq!(
        count(&node, "POST", "a.test"),
        Some((200, "42\n".to_owned()))
    );
    assert_eq!(
        count(&node, "POST", "b.test"),
        Some((200, "43\n".to_owned()))
    );
    assert_eq!(
        count(&node, "GET", "a.test"),
        Some((200, "43\n".to_owned()))
    );
}

#[test]
fn an_apps_default_bucket_keeps_what_it_stored_before_buckets_were_per_app() {
    // App kvown's default bucket (its own name) as a node wrote it before buckets were per app.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    seed_old_layout(dir.path(), "kvown", "/counter/x", "41");
    let work = tempfile::tempdir().unwrap();
    let own = write(
        work.path(),
        "kvown.yaml",
        &counter_app("kvown", "own.test", "spreadscaler", KEYVALUE_SLED, &[]),
    );
    // Another app naming the same bucket gets one of its own.
    let other = write(
        work.path(),
        "kvother.yaml",
        &counter_app(
            "kvother",
            "other.test",
            "spreadscaler",
            KEYVALUE_SLED,
            &[("bucket", "kvown")],
        ),
    );
    let mut node = standalone(dir.path(), &[]);
    deploy(&node, &own);
    deploy(&node, &other);
    assert_eq!(first_200(&node, "own.test"), "41\n", "{}", node.log());
    assert_eq!(first_200(&node, "other.test"), "0\n", "{}", node.log());
    assert_eq!(
        count(&node, "POST", "own.test"),
        Some((200, "42\n".to_owned()))
    );
    assert_eq!(
        count(&node, "POST", "other.test"),
        Some((200, "1\n".to_owned()))
    );
    assert!(node.terminate(Duration::from_secs(20)).is_some());

    // After a restart each still reads its own.
    let node = standalone(dir.path(), &[]);
    assert_eq!(first_200(&node, "own.test"), "42\n", "{}", node.log());
    assert_eq!(first_200(&node, "other.test"), "1\n", "{}", node.log());
}

/// Starts node `name` joined to `hub` as a leaf node with `extra` flags, in `dir`; waits until
/// it is up and its uplink connected.
fn join_with(hub: &Hub, dir: &Path, name: &str, extra: &[&str]) -> Node {
    std::fs::create_dir_all(dir.join("config")).unwrap();
    let creds = hub.user_creds(dir, "node.creds");
    let mut flags: Vec<String> = [
        "--creds",
        &creds.to_string_lossy(),
        "--leaf-url",
        &hub.leaf_url(),
        "--name",
        name,
        "--heartbeat-interval",
        "1s",
    ]
    .iter()
    .map(|f| (*f).to_owned())
    .collect();
    flags.extend(extra.iter().map(|f| (*f).to_owned()));
    let node = cluster::start(dir, &flags);
    node.wait_for_log(&["leaf uplink connected"], Duration::from_secs(20));
    node
}

#[test]
fn a_nats_bucket_outside_allowed_buckets_is_refused_on_that_node_only() {
    let hub = Hub::start();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = join_with(
        &hub,
        dir_a.path(),
        "node-a",
        &["--allowed-buckets", "app_*"],
    );
    let b = join_with(&hub, dir_b.path(), "node-b", &[]);
    let members = || -> Result<Vec<String>, String> {
        let hosts = a.try_json(&["get", "hosts"])?;
        Ok(hosts
            .as_array()
            .ok_or("not an array")?
            .iter()
            .map(|h| h["name"].as_str().unwrap_or("?").to_owned())
            .collect())
    };
    until("node-a to list both nodes", &[&a, &b], || {
        match members()? {
            names if names.len() == 2 => Ok(()),
            names => Err(format!("{names:?}")),
        }
    });

    let work = tempfile::tempdir().unwrap();
    let allowed = unique("app_counters").replace('-', "_");
    let other = unique("counters");
    for (app, host, bucket) in [
        ("kvallowed", "allowed.test", allowed.as_str()),
        ("kvother", "other.test", other.as_str()),
    ] {
        let yaml = counter_app(
            app,
            host,
            "daemonscaler",
            KEYVALUE_NATS,
            &[("bucket", bucket), ("enable_bucket_auto_create", "true")],
        );
        deploy(&a, &write(work.path(), &format!("{app}.yaml"), &yaml));
    }

    // The bucket the pattern allows runs on both nodes.
    let nodes_of = |status: &Value| -> Vec<String> {
        let mut names: Vec<String> = status["components"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|c| c["nodes"].as_array().cloned().unwrap_or_default())
            .map(|n| n["name"].as_str().unwrap_or("?").to_owned())
            .collect();
        names.sort();
        names
    };
    until("kvallowed deployed on both nodes", &[&a, &b], || {
        let status = a.try_json(&["app", "status", "kvallowed"])?;
        (status["state"] == "deployed" && nodes_of(&status) == ["node-a", "node-b"])
            .then_some(())
            .ok_or(format!("{status}"))
    });

    // The other one: refused on node-a, with the reason in `app status`; node-b runs it.
    let status = until("kvother refused on node-a", &[&a, &b], || {
        let status = a.try_json(&["app", "status", "kvother"])?;
        let reason = status["reason"].as_str().unwrap_or("");
        (status["state"] == "failed"
            && reason.contains("on node node-a")
            && nodes_of(&status) == ["node-b"])
        .then_some(status.clone())
        .ok_or(format!("{status}"))
    });
    let reason = status["reason"].as_str().unwrap();
    eprintln!("kvother status reason: {reason}");
    for needle in [
        "component counter on node node-a",
        "keyvalue link \"default\"",
        other.as_str(),
        "--allowed-buckets: app_*",
    ] {
        assert!(reason.contains(needle), "no {needle:?} in {reason}");
    }
    assert!(!reason.contains("node-b"), "{reason}");
    assert_eq!(first_200(&b, "other.test"), "0\n");
    assert_eq!(
        count(&b, "POST", "other.test"),
        Some((200, "1\n".to_owned()))
    );
}
