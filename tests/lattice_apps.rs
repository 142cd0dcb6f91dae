//! The built-in reconciler across a lattice: an operator-mode hub nats-server and several
//! `lattice up` leaf nodes labelled by zone. Apps are deployed with `lattice app deploy` (or a
//! manifest dropped into one node's config dir) into the shared desired state in the hub's
//! JetStream; every node reconciles its replicas from its mirror of it, re-places replicas when
//! nodes die or join, rolls new versions out without failed requests and fetches the wasm it
//! needs by digest.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;
mod oci;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::example_wasm;
use common::hub::Hub;
use common::lattice::{
    HEARTBEAT, Member, all_answer, answers, array, component, counts, eventually, join, logs,
    replicas, replicas_are, see_each_other, state_is, write,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Spreadscaler (or daemonscaler) properties: `instances` and, unless empty, `spread` entries
/// `(name, zone, weight)` each requiring `zone=<zone>`; lines after the first indented by 12
/// spaces as [`common::manifest_with`] wants.
fn scaler(instances: u32, spread: &[(&str, &str, Option<u32>)]) -> String {
    let mut text = format!("instances: {instances}");
    if !spread.is_empty() {
        text.push_str("\n            spread:");
        for (name, zone, weight) in spread {
            text.push_str(&format!(
                "\n              - name: {name}\n                requirements:\n                  zone: {zone}"
            ));
            if let Some(weight) = weight {
                text.push_str(&format!("\n                weight: {weight}"));
            }
        }
    }
    text
}

/// A manifest (version `v1`) of app `app` whose component `web` (`wasm`) answers `path`, placed
/// by a spreadscaler with `properties`.
fn app_manifest(app: &str, wasm: &Path, path: &str, properties: &str) -> String {
    common::manifest_with(app, "web", wasm, path, properties)
}

/// The same manifest with a daemonscaler instead of the spreadscaler.
fn daemon(manifest: &str) -> String {
    let daemon = manifest.replace("type: spreadscaler", "type: daemonscaler");
    assert_ne!(daemon, manifest);
    daemon
}

/// Lowercase hex sha256 of `bytes`.
fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Replicas of `app` per version over every host in `inventory` (versions with replicas only).
fn versions(inventory: &[Value], app: &str) -> BTreeMap<String, u64> {
    let mut versions = BTreeMap::new();
    for component in inventory
        .iter()
        .flat_map(|host| host["components"].as_array().into_iter().flatten())
        .filter(|c| c["app"] == app)
    {
        *versions
            .entry(component["version"].as_str().unwrap_or("?").to_owned())
            .or_insert(0) += component["replicas"].as_u64().unwrap_or(0);
    }
    versions.retain(|_, replicas| *replicas > 0);
    versions
}

/// One request of a [`Load`].
struct Sample {
    /// The node whose ingress was asked.
    node: String,
    started: Instant,
    finished: Instant,
    /// Status and body; `None` when the connection failed or timed out.
    answer: Option<(u16, String)>,
}

impl Sample {
    fn ok(&self) -> bool {
        matches!(self.answer, Some((200, _)))
    }
}

/// A background thread sending sequential `GET path` requests through the ingress of each
/// target node in turn, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl Load {
    fn start(targets: &[&Member], path: &str) -> Load {
        let targets: Vec<(String, SocketAddr)> =
            targets.iter().map(|m| (m.name.clone(), m.http)).collect();
        let path = path.to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                for (node, addr) in &targets {
                    let started = Instant::now();
                    let answer = common::http_get(*addr, &path, None);
                    samples.push(Sample {
                        node: node.clone(),
                        started,
                        finished: Instant::now(),
                        answer,
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            samples
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread; every request it made, in order.
    fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Load {
    /// A test that panics leaves no thread hammering dead ports.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The longest run of consecutive failed requests (not 200, or no answer) through `node`: from
/// the start of the run's first request to the end of its last.
fn longest_outage(samples: &[Sample], node: &str) -> Duration {
    let mut longest = Duration::ZERO;
    let mut run_start = None;
    for sample in samples.iter().filter(|s| s.node == node) {
        if sample.ok() {
            run_start = None;
        } else {
            let start = *run_start.get_or_insert(sample.started);
            longest = longest.max(sample.finished - start);
        }
    }
    longest
}

/// Up to 20 of `samples` that match `bad`, with their start relative to `since`, for a panic
/// message.
fn describe(samples: &[Sample], since: Instant, bad: impl Fn(&Sample) -> bool) -> String {
    let bad: Vec<&Sample> = samples.iter().filter(|s| bad(s)).collect();
    let mut text = format!("{} of {} requests:", bad.len(), samples.len());
    for sample in bad.iter().take(20) {
        let at = sample.started.saturating_duration_since(since);
        text.push_str(&format!(
            "\n  {} at {at:?} (took {:?}): {:?}",
            sample.node,
            sample.finished - sample.started,
            sample.answer
        ));
    }
    text
}

#[test]
fn a_spread_follows_its_zones_as_nodes_die_and_join() {
    let hub = Hub::start();
    let work = tempfile::tempdir().unwrap();
    let a1 = join(&hub, "node-a1", "a");
    let a2 = join(&hub, "node-a2", "a");
    let b1 = join(&hub, "node-b1", "b");
    see_each_other(&[&a1, &a2, &b1]);

    let properties = scaler(4, &[("zone-a", "a", Some(50)), ("zone-b", "b", Some(50))]);
    let file = write(
        work.path(),
        "shop.yaml",
        &app_manifest("shop", &example_wasm("http-hello"), "/shop", &properties),
    );
    let out = a1.deploy(&file);
    assert_eq!(out["name"], "shop", "{out}");
    assert_eq!(out["version"], "v1", "{out}");
    assert_eq!(out["changed"], true, "{out}");

    // 4 replicas, weights 50/50: 2 on the one zone=b node, 1 on each zone=a node.
    let placed: [(&str, u64); 3] = [("node-a1", 1), ("node-a2", 1), ("node-b1", 2)];
    eventually(
        "shop deployed with 2 replicas on node-b1 and 1 on each zone=a node",
        Duration::from_secs(10),
        &[&a1, &a2, &b1],
        || {
            let status = state_is(&a1, "shop", "deployed")?;
            let web = component(&status, "web")?;
            if web["desired"] != 4 || web["running"] != 4 || status["version"] != "v1" {
                return Err(format!("status {status}"));
            }
            let on_nodes: BTreeMap<String, u64> = web["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    let name = n["name"].as_str().unwrap_or("?").to_owned();
                    (name, n["replicas"].as_u64().unwrap_or(0))
                })
                .filter(|(_, r)| *r > 0)
                .collect();
            if on_nodes != counts(&placed) {
                return Err(format!("nodes in status {status}"));
            }
            replicas_are(&a2, "shop", &placed).map(drop)
        },
    );
    all_answer(
        &[&a1, &a2, &b1],
        "/shop",
        "Hello from lattice: /shop",
        Duration::from_secs(10),
    );

    // The only zone=b node dies: its replicas have nowhere to go, the app says why, and the
    // zone=a replicas keep serving.
    let load = Load::start(&[&a1, &a2], "/shop");
    b1.sigkill();
    let killed = Instant::now();
    eventually(
        "shop to report that no node matches zone=b",
        HEARTBEAT * 3 + Duration::from_secs(5),
        &[&a1, &a2],
        || {
            let status = a1.status("shop")?;
            let state = status["state"].as_str().unwrap_or("");
            let reason = status["reason"].as_str().unwrap_or("");
            let running = component(&status, "web")?["running"].clone();
            if ["reconciling", "failed"].contains(&state)
                && reason.contains("no node matches")
                && reason.contains("zone=b")
                && running == 2
            {
                Ok(())
            } else {
                Err(format!("status {status}"))
            }
        },
    );
    eventually(
        "node-b1 to leave the inventory",
        Duration::from_secs(5),
        &[&a1, &a2],
        || replicas_are(&a1, "shop", &[("node-a1", 1), ("node-a2", 1)]),
    );
    // The zone-b share is not placed on zone=a nodes.
    std::thread::sleep(HEARTBEAT * 2);
    replicas_are(&a2, "shop", &[("node-a1", 1), ("node-a2", 1)])
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&[&a1, &a2])));
    let samples = load.stop();
    let late = killed + Duration::from_secs(1);
    for node in [&a1, &a2] {
        let after_kill = samples
            .iter()
            .filter(|s| s.node == node.name && s.started >= late)
            .count();
        assert!(
            after_kill > 0,
            "no requests through {} after the kill",
            node.name
        );
    }
    assert!(
        samples.iter().all(|s| s.ok() || s.started < late),
        "the zone=a nodes must keep answering 200 once node-b1 is gone: {}",
        describe(&samples, killed, |s| !s.ok())
    );

    // A new zone=b node takes the zone-b share.
    let b2 = join(&hub, "node-b2", "b");
    let placed: [(&str, u64); 3] = [("node-a1", 1), ("node-a2", 1), ("node-b2", 2)];
    eventually(
        "shop deployed again with 2 replicas on node-b2",
        Duration::from_secs(15),
        &[&a1, &a2, &b2],
        || {
            state_is(&a2, "shop", "deployed")?;
            replicas_are(&b2, "shop", &placed).map(drop)
        },
    );
    all_answer(
        &[&b2],
        "/shop",
        "Hello from lattice: /shop",
        Duration::from_secs(10),
    );

    // A zone=a node dies under load: its replica moves to the other zone=a node, and neither
    // surviving ingress fails for more than 3 s in a row.
    let load = Load::start(&[&a2, &b2], "/shop");
    std::thread::sleep(Duration::from_millis(300));
    a1.sigkill();
    let killed = Instant::now();
    eventually(
        "node-a1's replica to move to node-a2",
        HEARTBEAT * 3 + Duration::from_secs(10),
        &[&a2, &b2],
        || {
            state_is(&b2, "shop", "deployed")?;
            replicas_are(&a2, "shop", &[("node-a2", 2), ("node-b2", 2)]).map(drop)
        },
    );
    all_answer(
        &[&a2, &b2],
        "/shop",
        "Hello from lattice: /shop",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_secs(1));
    let samples = load.stop();
    for node in [&a2, &b2] {
        let ours: Vec<&Sample> = samples.iter().filter(|s| s.node == node.name).collect();
        assert!(
            ours.iter().any(|s| s.started > killed),
            "no requests through {} after the kill",
            node.name
        );
        let outage = longest_outage(&samples, &node.name);
        assert!(
            outage <= Duration::from_secs(3),
            "{} failed for {outage:?} in a row after node-a1 died: {}\n{}",
            node.name,
            describe(&samples, killed, |s| s.node == node.name && !s.ok()),
            logs(&[&a2, &b2])
        );
        assert!(
            ours.last().unwrap().ok(),
            "{}",
            describe(&samples, killed, |s| !s.ok())
        );
    }
}

#[test]
fn a_daemonscaler_runs_on_every_matching_node_including_one_that_joins_later() {
    let hub = Hub::start();
    let work = tempfile::tempdir().unwrap();
    let a1 = join(&hub, "node-a1", "a");
    let a2 = join(&hub, "node-a2", "a");
    let b1 = join(&hub, "node-b1", "b");
    see_each_other(&[&a1, &a2, &b1]);

    let properties = scaler(1, &[("zone-a", "a", None)]);
    let manifest = daemon(&app_manifest(
        "daemon",
        &example_wasm("http-hello"),
        "/daemon",
        &properties,
    ));
    let file = write(work.path(), "daemon.yaml", &manifest);
    let out = b1.deploy(&file);
    assert_eq!(out["changed"], true, "{out}");
    eventually(
        "one replica on each zone=a node, none on node-b1",
        Duration::from_secs(10),
        &[&a1, &a2, &b1],
        || {
            let status = state_is(&b1, "daemon", "deployed")?;
            if component(&status, "web")?["running"] != 2 {
                return Err(format!("status {status}"));
            }
            replicas_are(
                &a1,
                "daemon",
                &[("node-a1", 1), ("node-a2", 1), ("node-b1", 0)],
            )
            .map(drop)
        },
    );
    all_answer(
        &[&a1, &a2, &b1],
        "/daemon",
        "Hello from lattice: /daemon",
        Duration::from_secs(10),
    );

    let a3 = join(&hub, "node-a3", "a");
    eventually(
        "node-a3 to get its replica too",
        Duration::from_secs(15),
        &[&a1, &a2, &b1, &a3],
        || {
            let status = state_is(&a1, "daemon", "deployed")?;
            if component(&status, "web")?["running"] != 3 {
                return Err(format!("status {status}"));
            }
            replicas_are(
                &b1,
                "daemon",
                &[
                    ("node-a1", 1),
                    ("node-a2", 1),
                    ("node-a3", 1),
                    ("node-b1", 0),
                ],
            )
            .map(drop)
        },
    );
    all_answer(
        &[&a3],
        "/daemon",
        "Hello from lattice: /daemon",
        Duration::from_secs(10),
    );
}

#[test]
fn a_rolling_update_fails_no_request_a_bad_version_changes_nothing_and_undeploy_clears_every_node()
{
    let hub = Hub::start();
    let work = tempfile::tempdir().unwrap();
    let a1 = join(&hub, "node-a1", "a");
    let a2 = join(&hub, "node-a2", "a");
    let b1 = join(&hub, "node-b1", "b");
    let all = [&a1, &a2, &b1];
    see_each_other(&all);

    let hello = example_wasm("http-hello");
    let goodbye = example_wasm("http-goodbye");
    let v1 = write(
        work.path(),
        "v1.yaml",
        &app_manifest("roll", &hello, "/roll", "instances: 2"),
    );
    let out = a1.deploy(&v1);
    assert_eq!(
        (&out["name"], &out["version"], &out["changed"]),
        (&Value::from("roll"), &Value::from("v1"), &Value::from(true)),
        "{out}"
    );
    eventually(
        "v1 deployed with 2 replicas",
        Duration::from_secs(10),
        &all,
        || {
            state_is(&a1, "roll", "deployed")?;
            let inventory = a2.inventory()?;
            let got = versions(&inventory, "roll");
            if got == counts(&[("v1", 2)]) {
                Ok(())
            } else {
                Err(format!(
                    "replicas per version {got:?}; inventory {inventory:?}"
                ))
            }
        },
    );
    all_answer(
        &all,
        "/roll",
        "Hello from lattice: /roll",
        Duration::from_secs(10),
    );
    // The same content again changes nothing.
    let out = b1.deploy(&v1);
    assert_eq!(out["version"], "v1", "{out}");
    assert_eq!(out["changed"], false, "{out}");

    // v2 replaces v1 while requests keep coming through every node.
    let load = Load::start(&all, "/roll");
    std::thread::sleep(Duration::from_millis(500));
    let v2 = write(
        work.path(),
        "v2.yaml",
        &app_manifest("roll", &goodbye, "/roll", "instances: 2")
            .replace("version: v1", "version: v2"),
    );
    let rollout = Instant::now();
    let out = a2.deploy(&v2);
    assert_eq!(out["version"], "v2", "{out}");
    assert_eq!(out["changed"], true, "{out}");
    eventually(
        "v2 deployed in place of v1 and answering everywhere",
        Duration::from_secs(20),
        &all,
        || {
            let status = state_is(&b1, "roll", "deployed")?;
            if status["version"] != "v2" {
                return Err(format!("status {status}"));
            }
            let inventory = a1.inventory()?;
            let got = versions(&inventory, "roll");
            if got != counts(&[("v2", 2)]) {
                return Err(format!(
                    "replicas per version {got:?}; inventory {inventory:?}"
                ));
            }
            for node in all {
                answers(node, "/roll", "Goodbye from lattice: /roll")?;
            }
            Ok(())
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    let samples = load.stop();
    let good = |s: &Sample| {
        matches!(&s.answer, Some((200, body))
            if body.starts_with("Hello from lattice: /roll")
                || body.starts_with("Goodbye from lattice: /roll"))
    };
    assert!(
        samples.iter().all(good),
        "no request may fail during the rolling update: {}\n{}",
        describe(&samples, rollout, |s| !good(s)),
        logs(&all)
    );
    for node in all {
        let last = samples.iter().rfind(|s| s.node == node.name);
        assert!(
            last.is_some_and(|s| matches!(&s.answer, Some((200, b)) if b.starts_with("Goodbye"))),
            "the last answer through {} must be v2's: {:?}",
            node.name,
            last.map(|s| &s.answer)
        );
    }

    // A manifest whose link targets a component it does not have is refused; v2 stays.
    let bad = app_manifest("roll", &goodbye, "/roll", "instances: 2")
        .replace("version: v1", "version: v3");
    let nope = bad.replace(
        "target:\n              name: web",
        "target:\n              name: nope",
    );
    assert_ne!(bad, nope);
    let v3 = write(work.path(), "v3.yaml", &nope);
    let out = a1.cli(&["app", "deploy", &v3.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for needle in [
        "v3.yaml",
        "spec.components[1].traits[0].properties.target",
        "nope",
        "is not a component",
    ] {
        assert!(stderr.contains(needle), "stderr lacks {needle:?}: {stderr}");
    }
    let status = b1.status("roll").unwrap();
    assert_eq!(status["version"], "v2", "{status}");
    assert_eq!(status["state"], "deployed", "{status}");
    for node in all {
        answers(node, "/roll", "Goodbye from lattice: /roll")
            .unwrap_or_else(|e| panic!("after the refused v3: {e}\n{}", logs(&all)));
    }

    // History: v1 then v2, v2 deployed, each with the digest of its wasm; no v3.
    let history = array(b1.json(&["app", "history", "roll"])).unwrap();
    let names: Vec<&str> = history
        .iter()
        .map(|h| h["version"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(names, ["v1", "v2"], "{history:?}");
    assert_eq!(history[0]["deployed"], false, "{history:?}");
    assert_eq!(history[1]["deployed"], true, "{history:?}");
    for entry in &history {
        assert_eq!(entry["source"], "cli", "{entry}");
    }
    assert_eq!(
        history[0]["digests"]["web"],
        sha256(&std::fs::read(&hello).unwrap()),
        "{history:?}"
    );
    assert_eq!(
        history[1]["digests"]["web"],
        sha256(&std::fs::read(&goodbye).unwrap()),
        "{history:?}"
    );
    let (t1, t2) = (
        history[0]["deployed_at_ms"].as_u64(),
        history[1]["deployed_at_ms"].as_u64(),
    );
    assert!(t1.is_some() && t2.is_some() && t1 <= t2, "{history:?}");

    // Undeploy: gone from every node within 5 s.
    let out = a2.cli(&["app", "undeploy", "roll"]);
    assert!(
        out.status.success(),
        "undeploy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "roll to be gone from every node",
        Duration::from_secs(5),
        &all,
        || {
            replicas_are(
                &a1,
                "roll",
                &[("node-a1", 0), ("node-a2", 0), ("node-b1", 0)],
            )?;
            for node in all {
                match node.get("/roll") {
                    Some((404, body)) if body.contains("no route") => {}
                    other => return Err(format!("GET /roll through {}: {other:?}", node.name)),
                }
            }
            Ok(())
        },
    );
    assert!(
        !a1.app_names().unwrap().contains(&"roll".to_owned()),
        "roll is still listed"
    );
    let out = b1.cli(&["app", "undeploy", "roll"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "undeploying a missing app: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_node_restarted_while_the_hub_is_down_serves_its_app_from_its_mirror() {
    let mut hub = Hub::start();
    let work = tempfile::tempdir().unwrap();
    let a1 = join(&hub, "node-a1", "a");
    let mut b1 = join(&hub, "node-b1", "b");
    see_each_other(&[&a1, &b1]);

    // The replica belongs on node-b1 only.
    let properties = scaler(1, &[("zone-b", "b", None)]);
    let file = write(
        work.path(),
        "mirror.yaml",
        &app_manifest(
            "mirror",
            &example_wasm("http-hello"),
            "/mirror",
            &properties,
        ),
    );
    a1.deploy(&file);
    eventually(
        "mirror deployed on node-b1",
        Duration::from_secs(10),
        &[&a1, &b1],
        || {
            state_is(&a1, "mirror", "deployed")?;
            replicas_are(&a1, "mirror", &[("node-a1", 0), ("node-b1", 1)]).map(drop)
        },
    );
    all_answer(
        &[&b1, &a1],
        "/mirror",
        "Hello from lattice: /mirror",
        Duration::from_secs(10),
    );

    hub.stop();
    b1.wait_for_log(&["leaf uplink disconnected"], Duration::from_secs(10));
    let exit = b1.terminate(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|s| s.success()),
        "SIGTERM: {exit:?}\n{}",
        logs(&[&b1])
    );
    b1.restart();
    let body = b1.wait_for_status("/mirror", 200, Duration::from_secs(20));
    assert!(body.starts_with("Hello from lattice: /mirror"), "{body}");
    let inventory = b1
        .inventory()
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&[&b1])));
    assert_eq!(
        replicas(&inventory, "mirror").get("node-b1"),
        Some(&1),
        "{inventory:?}"
    );
}

#[test]
fn a_manifest_dropped_into_one_nodes_config_dir_deploys_lattice_wide() {
    let hub = Hub::start();
    let a1 = join(&hub, "node-a1", "a");
    let a2 = join(&hub, "node-a2", "a");
    let b1 = join(&hub, "node-b1", "b");
    let all = [&a1, &a2, &b1];
    see_each_other(&all);

    // Written into node-a1's config dir; its replicas belong on node-b1.
    let properties = scaler(2, &[("zone-b", "b", None)]);
    let file = write(
        &a1.config_dir,
        "dropped.yaml",
        &app_manifest(
            "dropped",
            &example_wasm("http-hello"),
            "/dropped",
            &properties,
        ),
    );
    eventually(
        "dropped deployed with both replicas on node-b1",
        Duration::from_secs(15),
        &all,
        || {
            let status = state_is(&a2, "dropped", "deployed")?;
            if status["version"] != "v1" {
                return Err(format!("status {status}"));
            }
            replicas_are(
                &a2,
                "dropped",
                &[("node-a1", 0), ("node-a2", 0), ("node-b1", 2)],
            )
            .map(drop)
        },
    );
    all_answer(
        &[&b1, &a2],
        "/dropped",
        "Hello from lattice: /dropped",
        Duration::from_secs(10),
    );
    let history = array(b1.json(&["app", "history", "dropped"])).unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    let source = history[0]["source"].as_str().unwrap_or("");
    assert!(
        source.starts_with("file node-a1:") && source.ends_with("dropped.yaml"),
        "{history:?}"
    );

    // Removing the file it came from undeploys it everywhere.
    std::fs::remove_file(&file).unwrap();
    eventually(
        "dropped to be undeployed everywhere",
        Duration::from_secs(10),
        &all,
        || {
            let apps = a2.app_names()?;
            if apps.contains(&"dropped".to_owned()) {
                return Err(format!("apps {apps:?}"));
            }
            replicas_are(
                &b1,
                "dropped",
                &[("node-a1", 0), ("node-a2", 0), ("node-b1", 0)],
            )?;
            match b1.get("/dropped") {
                Some((404, body)) if body.contains("no route") => Ok(()),
                other => Err(format!("GET /dropped through node-b1: {other:?}")),
            }
        },
    );
}

#[test]
fn artifacts_travel_with_the_deploy_and_follow_a_replica_to_a_new_node() {
    let hub = Hub::start();
    let work = tempfile::tempdir().unwrap();
    let a1 = join(&hub, "node-a1", "a");
    let a2 = join(&hub, "node-a2", "a");
    let b1 = join(&hub, "node-b1", "b");
    let all = [&a1, &a2, &b1];
    see_each_other(&all);

    // A copy of the wasm that only exists until the deploy returns.
    let copy = work.path().join("hello-copy.wasm");
    std::fs::copy(example_wasm("http-hello"), &copy).unwrap();
    let digest = sha256(&std::fs::read(&copy).unwrap());
    let file = write(
        work.path(),
        "art.yaml",
        &app_manifest("art", &copy, "/art", "instances: 2"),
    );
    let out = a1.deploy(&file);
    std::fs::remove_file(&copy).unwrap();
    assert_eq!(out["changed"], true, "{out}");

    // Is `node` running art, from the right wasm, cached under its digest?
    let cached = |node: &Member| {
        let path = node
            .data_dir
            .join("artifacts")
            .join(format!("{digest}.wasm"));
        match std::fs::read(&path) {
            Ok(bytes) if sha256(&bytes) == digest => Ok(()),
            Ok(_) => Err(format!("{} holds other bytes", path.display())),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    };
    let digests_match = |inventory: &[Value]| {
        let wrong: Vec<&Value> = inventory
            .iter()
            .flat_map(|h| h["components"].as_array().into_iter().flatten())
            .filter(|c| c["app"] == "art" && c["digest"] != digest.as_str())
            .collect();
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(format!("digests other than {digest}: {wrong:?}"))
        }
    };
    // Two replicas over three nodes: two nodes run one each.
    let runners: Vec<String> = eventually(
        "art deployed with one replica on each of two nodes",
        Duration::from_secs(15),
        &all,
        || {
            state_is(&b1, "art", "deployed")?;
            let inventory = b1.inventory()?;
            let got = replicas(&inventory, "art");
            let mut spread: Vec<u64> = got.values().copied().collect();
            spread.sort();
            if got.len() != 3 || spread != [0, 1, 1] {
                return Err(format!("replicas of art per host {got:?}"));
            }
            digests_match(&inventory)?;
            Ok(got
                .into_iter()
                .filter(|(_, r)| *r == 1)
                .map(|(name, _)| name)
                .collect())
        },
    );
    all_answer(
        &all,
        "/art",
        "Hello from lattice: /art",
        Duration::from_secs(10),
    );
    let by_name = |name: &str| *all.iter().find(|m| m.name == name).unwrap();
    for name in &runners {
        cached(by_name(name)).unwrap_or_else(|e| panic!("{e}\n{}", logs(&all)));
    }

    // The first runner dies: its replica goes to the node that had none, which fetches the
    // wasm by digest (the file is gone) and serves it.
    let victim = by_name(&runners[0]);
    let survivors: Vec<&Member> = all.into_iter().filter(|m| m.name != victim.name).collect();
    let spare = survivors
        .iter()
        .copied()
        .find(|m| !runners.contains(&m.name))
        .unwrap();
    victim.sigkill();
    let want: Vec<(&str, u64)> = survivors.iter().map(|m| (m.name.as_str(), 1)).collect();
    eventually(
        &format!("{}'s replica to move to {}", victim.name, spare.name),
        HEARTBEAT * 3 + Duration::from_secs(10),
        &survivors,
        || {
            state_is(survivors[0], "art", "deployed")?;
            let inventory = replicas_are(survivors[1], "art", &want)?;
            digests_match(&inventory)
        },
    );
    cached(spare).unwrap_or_else(|e| panic!("{e}\n{}", logs(&survivors)));
    all_answer(
        &survivors,
        "/art",
        "Hello from lattice: /art",
        Duration::from_secs(10),
    );
}
