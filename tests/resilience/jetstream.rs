//! Tests: the hub's JetStream found without `--js-domain` (in domain `hub`, without a domain,
//! and when it appears later), with nodes started with nothing but `--creds` and `--leaf-url`.

use std::time::Duration;

use crate::common::hub::{Hub, HubJetStream};
use crate::common::lattice::{Member, answers, eventually, join, replicas_are, write};
use crate::common::{example_wasm, http_server_link, manifest_with};

/// A manifest of `app` (http-hello at `path`) whose one replica must run on a `zone=<zone>`
/// node.
fn hello_in_zone(app: &str, path: &str, zone: &str) -> String {
    let scaler = format!(
        "instances: 1\n            spread:\n              - name: {zone}\n                requirements:\n                  zone: {zone}"
    );
    manifest_with(app, "web", &example_wasm("http-hello"), path, &scaler)
}

/// The `get.config` answer of `member`'s node (lattice `default`), asked over its own NATS:
/// `{"lattice", "js_domain", "jetstream": {"state", …}, …}`.
fn lattice_config(member: &Member) -> serde_json::Value {
    let answer = crate::common::control_request(&member.data_dir, "get.config", Vec::new());
    assert_eq!(answer["success"], true, "{answer}");
    answer["response"].clone()
}

/// `Ok` when `member` logged that it found the JetStream through `api`.
fn found_through(member: &Member, api: &str) -> Result<(), String> {
    let log = member.log();
    let found = log
        .lines()
        .rfind(|l| l.contains("JetStream found"))
        .ok_or("no \"JetStream found\" line yet")?;
    if found.contains(&format!("api=\"{api}\"")) {
        Ok(())
    } else {
        Err(format!("found, but not through {api}: {found}"))
    }
}

/// Two nodes joined to a hub whose JetStream is as `js` says (reached through `api`): a
/// config-dir manifest of node A whose replica runs on node B answers through A's ingress, and
/// `lattice app deploy` through A (no `--js-domain` either) deploys another app lattice-wide.
fn deploys_lattice_wide(js: HubJetStream, api: &str) {
    let hub = Hub::start_with(js);
    let a = join(&hub, "node-a", "a");
    let b = join(&hub, "node-b", "b");
    for node in [&a, &b] {
        eventually(
            &format!("{} to find the hub's JetStream", node.name),
            Duration::from_secs(10),
            &[&a, &b],
            || found_through(node, api),
        );
    }

    // A config-dir manifest of A, placed on B only.
    write(
        &a.config_dir,
        "hello.yaml",
        &hello_in_zone("hello", "/hello", "b"),
    );
    eventually(
        "A's config-dir app to run its replica on B",
        Duration::from_secs(20),
        &[&a, &b],
        || replicas_are(&a, "hello", &[("node-a", 0), ("node-b", 1)]).map(drop),
    );
    eventually(
        "A's ingress to answer from B's replica",
        Duration::from_secs(10),
        &[&a, &b],
        || answers(&a, "/hello", "Hello from lattice: /hello"),
    );

    // The CLI learns the domain from the node (`get.config`): uploads and stores without flags.
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "greet.yaml",
        &hello_in_zone("greet", "/greet", "a"),
    );
    let outcome = a.deploy(&file);
    assert_eq!(outcome["name"], "greet", "{outcome}");
    eventually(
        "B's ingress to answer from A's replica of the deployed app",
        Duration::from_secs(20),
        &[&a, &b],
        || answers(&b, "/greet", "Hello from lattice: /greet"),
    );
    let config = lattice_config(&a);
    assert_eq!(config["jetstream"]["state"], "found", "{config}");
}

#[test]
fn nodes_find_a_hubs_jetstream_in_its_domain() {
    deploys_lattice_wide(HubJetStream::Domain("hub"), "$JS.hub.API");
}

#[test]
fn nodes_find_a_hubs_jetstream_without_a_domain() {
    deploys_lattice_wide(HubJetStream::NoDomain, "$JS.API");
}

#[test]
fn a_jetstream_that_appears_later_is_found_in_the_domain_it_comes_with() {
    let mut hub = Hub::start_with(HubJetStream::Off);
    let a = join(&hub, "node-a", "a");
    let line = a.wait_for_log(&["JetStream not reachable"], Duration::from_secs(15));
    assert!(line.contains("no JetStream answered"), "{line}");
    assert!(line.contains("runs no JetStream"), "{line}");
    let config = lattice_config(&a);
    assert_eq!(config["jetstream"]["state"], "unreachable", "{config}");

    hub.restart_with(HubJetStream::Domain("hub"));
    eventually(
        "A to find the JetStream the hub came back with",
        Duration::from_secs(20),
        &[&a],
        || found_through(&a, "$JS.hub.API"),
    );
    let config = lattice_config(&a);
    assert_eq!(config["js_domain"], "hub", "{config}");

    // And again without a domain: the node follows.
    hub.restart_with(HubJetStream::NoDomain);
    eventually(
        "A to find the hub's JetStream, now without a domain",
        Duration::from_secs(20),
        &[&a],
        || found_through(&a, "$JS.API"),
    );
}

/// The counter example (`POST /counter/<key>` increments, answers the new value) with a
/// keyvalue-nats bucket `bucket` (created when missing), one replica.
fn counter_on_nats(bucket: &str) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: kvcount
  annotations:
    version: v1
spec:
  components:
    - name: counter
      type: component
      properties:
        image: file://{wasm}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store, atomics]
            target:
              name: kvnats
              config:
                - name: kv-config
                  properties:
                    bucket: '{bucket}'
                    enable_bucket_auto_create: 'true'
    - name: kvnats
      type: capability
      properties:
        image: ghcr.io/wasmcloud/keyvalue-nats:0.3.1
{link}"#,
        wasm = example_wasm("http-keyvalue-counter").display(),
        link = http_server_link("counter", "/counter"),
    )
}

/// `Ok` when `POST /counter/x` through `member` answers 200 with `want`.
fn increments_to(member: &Member, want: &str) -> Result<(), String> {
    match crate::common::http_request(member.http, "POST", "/counter/x", None, b"") {
        Some((200, _, body)) if body == want.as_bytes() => Ok(()),
        other => Err(format!(
            "POST /counter/x: {:?}",
            other.map(|(s, _, b)| (s, String::from_utf8_lossy(&b).into_owned()))
        )),
    }
}

#[test]
fn a_keyvalue_nats_bucket_follows_the_jetstream_into_its_new_domain() {
    let mut hub = Hub::start_with(HubJetStream::Domain("hub"));
    let a = join(&hub, "node-a", "a");
    write(&a.config_dir, "kvcount.yaml", &counter_on_nats("jsmove"));
    eventually(
        "the first increment in domain hub",
        Duration::from_secs(20),
        &[&a],
        || increments_to(&a, "1\n"),
    );

    // The same JetStream (same store), now without a domain: the bucket opened through
    // `$JS.hub.API` must be opened again through `$JS.API`, and still hold the count.
    hub.restart_with(HubJetStream::NoDomain);
    eventually(
        "A to find the hub's JetStream without a domain",
        Duration::from_secs(20),
        &[&a],
        || found_through(&a, "$JS.API"),
    );
    eventually(
        "the next increment, through the new prefix",
        Duration::from_secs(20),
        &[&a],
        || increments_to(&a, "2\n"),
    );
    assert_eq!(
        a.count_log("keyvalue-nats bucket opened again in the JetStream domain now in use"),
        1
    );
}

#[test]
fn a_node_whose_hub_is_down_at_its_start_says_why_no_jetstream_is_reachable() {
    let mut hub = Hub::start_with(HubJetStream::Domain("hub"));
    hub.stop();
    let dir = tempfile::tempdir().unwrap();
    let creds = hub.user_creds(dir.path(), "node.creds");
    let creds = creds.to_string_lossy().into_owned();
    let leaf_url = hub.leaf_url();
    let node = crate::common::Node::start(&["--creds", &creds, "--leaf-url", &leaf_url]);
    let line = node.wait_for_log(&["JetStream not reachable"], Duration::from_secs(15));
    assert!(line.contains("does not stand (failed"), "{line}");
    assert!(line.contains("connection refused"), "{line}");

    // The hub comes up: found, in its domain, without a restart of the node.
    hub.restart();
    let line = node.wait_for_log(&["JetStream found"], Duration::from_secs(20));
    assert!(line.contains("api=\"$JS.hub.API\""), "{line}");
}
