//! Issue 13: signed membership. Host events forged by a plain NATS client of the hub's account
//! (unsigned, signed by another key, with a real signature over another body, with an interval
//! that never expires, of an invented node), each with a fresh sequence, change neither
//! `lattice get hosts` nor placement, and neither a captured heartbeat replayed nor fresh
//! forged heartbeats keep a killed node in the lattice.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt as _;
use serde_json::Value;

use crate::common::hub::Hub;
use crate::common::lattice::{Member, eventually, join, logs, replicas_are, see_each_other, write};
use crate::common::{example_wasm, manifest_with};

/// The NATS header that carries a host event's signature (PROTOCOL.md §Events).
const SIGNATURE_HEADER: &str = "Lattice-Signature";

/// How long forged events are published while the lattice is watched: several heartbeat
/// intervals of the test nodes (1 s), so an accepted forgery would have shown.
const FORGING: Duration = Duration::from_secs(6);

/// Host events of lattice `default`: `lattice.default.evt.v1.<event>`.
fn subject(event: &str) -> String {
    format!("lattice.default.evt.v1.{event}")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A plain NATS client of the hub's account (a fresh user's creds in `dir`) and the runtime it
/// runs on.
struct Outsider {
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
}

impl Outsider {
    fn connect(hub: &Hub, dir: &Path) -> Outsider {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let creds = hub.user_creds(dir, "outsider.creds");
        let url = hub.client_url();
        let client = runtime.block_on(async {
            async_nats::ConnectOptions::with_credentials_file(&creds)
                .await
                .unwrap()
                .connect(url)
                .await
                .unwrap()
        });
        Outsider { runtime, client }
    }

    /// The next heartbeat of the node named `name` as it was published: its payload and its
    /// signature header.
    fn capture_heartbeat(&self, name: &str) -> (Vec<u8>, String) {
        self.runtime.block_on(async {
            let mut beats = self
                .client
                .subscribe(subject("host_heartbeat"))
                .await
                .unwrap();
            let capture = async {
                while let Some(message) = beats.next().await {
                    let body: Value = serde_json::from_slice(&message.payload).unwrap();
                    if body["name"] == name {
                        let signature = message
                            .headers
                            .as_ref()
                            .and_then(|h| h.get(SIGNATURE_HEADER))
                            .map(|v| v.as_str().to_owned())
                            .expect("a heartbeat without a signature header");
                        return (message.payload.to_vec(), signature);
                    }
                }
                panic!("the heartbeat subscription ended");
            };
            tokio::time::timeout(Duration::from_secs(10), capture)
                .await
                .unwrap_or_else(|_| panic!("no heartbeat of {name} within 10 s"))
        })
    }

    /// Publishes the events `round()` makes (subject, payload, signature header if any),
    /// made anew every 100 ms (so forged sequences stay fresh), until the returned flag is set.
    fn keep_publishing<F>(&self, round: F) -> Arc<AtomicBool>
    where
        F: Fn() -> Vec<Event> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let (client, stopped) = (self.client.clone(), stop.clone());
        self.runtime.spawn(async move {
            while !stopped.load(Ordering::Relaxed) {
                for (subject, payload, signature) in &round() {
                    let mut headers = async_nats::HeaderMap::new();
                    if let Some(signature) = signature {
                        headers.insert(SIGNATURE_HEADER, signature.as_str());
                    }
                    client
                        .publish_with_headers(subject.clone(), headers, payload.clone().into())
                        .await
                        .unwrap();
                }
                client.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        stop
    }
}

/// A payload and its signature header, if any.
type Signed = (Vec<u8>, Option<String>);

/// A host event to publish: subject, payload, signature header if any.
type Event = (String, Vec<u8>, Option<String>);

/// `signed` on `subject`, as [`Outsider::keep_publishing`] takes it.
fn event(subject: String, (payload, signature): Signed) -> Event {
    (subject, payload, signature)
}

/// A heartbeat interval that would keep a host in the lattice for ~95 years.
fn never_expires() -> [(&'static str, Value); 1] {
    [("heartbeat_interval_ms", Value::from(1_000_000_000_000_u64))]
}

/// `body` as a JSON payload and its signature by `key` (as a node signs: ed25519 over the
/// payload bytes, unpadded base64url).
fn sign(key: &nkeys::KeyPair, body: &Value) -> (Vec<u8>, String) {
    let payload = serde_json::to_vec(body).unwrap();
    let signature = URL_SAFE_NO_PAD.encode(key.sign(&payload).unwrap());
    (payload, signature)
}

/// A copy of the host event `body` as `event` with a fresh sequence and `changes` applied.
fn forge(body: &Value, event: &str, changes: &[(&str, Value)]) -> Value {
    let mut forged = body.clone();
    forged["event"] = event.into();
    forged["seq"] = unix_ms().into();
    for (field, value) in changes {
        forged[*field] = value.clone();
    }
    forged
}

/// `body` unsigned.
fn unsigned(body: &Value) -> Signed {
    (serde_json::to_vec(body).unwrap(), None)
}

/// `body` signed by `key`.
fn signed_by(key: &nkeys::KeyPair, body: &Value) -> Signed {
    let (payload, signature) = sign(key, body);
    (payload, Some(signature))
}

/// Two nodes with a replica each of a two-replica app, seeing each other.
fn two_nodes_and_an_app(hub: &Hub, dir: &Path) -> (Member, Member) {
    let a = join(hub, "a", "a");
    let b = join(hub, "b", "b");
    see_each_other(&[&a, &b]);
    let manifest = manifest_with(
        "shield",
        "web",
        &example_wasm("http-hello"),
        "/shield",
        "instances: 2",
    );
    a.deploy(&write(dir, "shield.yaml", &manifest));
    eventually(
        "a replica of shield on each node",
        Duration::from_secs(30),
        &[&a, &b],
        || replicas_are(&a, "shield", &[("a", 1), ("b", 1)]),
    );
    (a, b)
}

#[test]
fn forged_host_events_change_neither_the_hosts_nor_placement() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_nodes_and_an_app(&hub, dir.path());
    let outsider = Outsider::connect(&hub, dir.path());
    let (real, real_signature) = outsider.capture_heartbeat("b");
    let real: Value = serde_json::from_slice(&real).unwrap();
    assert_eq!(real["event"], "host_heartbeat");
    assert!(real["seq"].as_u64().is_some(), "{real}");

    let intruder = nkeys::KeyPair::new_server();
    let ghost = nkeys::KeyPair::new_server();
    // Forged anew every round with the clock as sequence, newer than b's own, so only the
    // signature keeps them out.
    let round = move || {
        let stop_b = forge(&real, "host_stopped", &[]);
        let long_b = forge(&real, "host_heartbeat", &never_expires());
        let resigned_b = forge(&real, "host_heartbeat", &[]);
        let ghost_body = |changes: &[(&str, Value)]| {
            let mut all = vec![
                ("id", Value::from(ghost.public_key())),
                ("name", Value::from("ghost")),
            ];
            all.extend_from_slice(changes);
            forge(&real, "host_heartbeat", &all)
        };
        let ghost_beat = ghost_body(&[]);
        let ghost_forever = ghost_body(&never_expires());
        let with_real_signature = |body: &Value| {
            (
                serde_json::to_vec(body).unwrap(),
                Some(real_signature.clone()),
            )
        };
        vec![
            // A host_stopped of the live node b.
            event(subject("host_stopped"), unsigned(&stop_b)),
            event(subject("host_stopped"), with_real_signature(&stop_b)),
            event(subject("host_stopped"), signed_by(&intruder, &stop_b)),
            // A heartbeat of b that would never expire.
            event(subject("host_heartbeat"), unsigned(&long_b)),
            event(subject("host_heartbeat"), with_real_signature(&long_b)),
            event(subject("host_heartbeat"), signed_by(&intruder, &long_b)),
            // A heartbeat of b re-signed by another key.
            event(subject("host_heartbeat"), signed_by(&intruder, &resigned_b)),
            // b's real heartbeat, signature and all, published as a host_stopped.
            event(
                subject("host_stopped"),
                (
                    serde_json::to_vec(&real).unwrap(),
                    Some(real_signature.clone()),
                ),
            ),
            // An invented node: unsigned, signed by another key than its id's, and signed by
            // its own key with an interval that never expires.
            event(subject("host_heartbeat"), unsigned(&ghost_beat)),
            event(subject("host_heartbeat"), signed_by(&intruder, &ghost_beat)),
            event(subject("host_heartbeat"), signed_by(&ghost, &ghost_forever)),
        ]
    };
    let stop = outsider.keep_publishing(round);

    let until = Instant::now() + FORGING;
    let mut polls = 0;
    while Instant::now() < until {
        for via in [&a, &b] {
            let hosts = via.host_names().unwrap();
            assert_eq!(
                hosts,
                ["a", "b"],
                "hosts through {} under forged events\n{}",
                via.name,
                logs(&[&a, &b])
            );
        }
        if let Err(e) = replicas_are(&a, "shield", &[("a", 1), ("b", 1)]) {
            panic!("placement under forged events: {e}\n{}", logs(&[&a, &b]));
        }
        polls += 1;
    }
    stop.store(true, Ordering::Relaxed);
    assert!(polls >= 3, "{polls} polls in {FORGING:?}");
    let hosts = a.json(&["get", "hosts"]);
    let b_info = hosts
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "b")
        .unwrap();
    assert_eq!(b_info["heartbeat_interval_ms"], 1_000, "{b_info}");

    // Dropped and counted by reason, in a few lines rather than one per event: the first at
    // once, the counts since then 10 s later.
    for node in [&a, &b] {
        node.wait_for_log(
            &["host events dropped", "bad_signature="],
            Duration::from_secs(20),
        );
        let log = node.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("host events dropped"))
            .collect();
        let all = lines.join("\n");
        for reason in [
            "unsigned=",
            "bad_signature=",
            "wrong_subject=",
            "bad_interval=",
        ] {
            assert!(all.contains(reason), "no {reason} in {}:\n{all}", node.name);
        }
        // About 60 forged rounds of 11 events in FORGING: one line per 10 s at most.
        assert!(
            lines.len() <= 2,
            "{} lines in {}:\n{all}",
            lines.len(),
            node.name
        );
    }
}

#[test]
fn a_replayed_heartbeat_does_not_keep_a_killed_node() {
    let hub = Hub::start();
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b) = two_nodes_and_an_app(&hub, dir.path());
    let outsider = Outsider::connect(&hub, dir.path());
    let (payload, signature) = outsider.capture_heartbeat("b");
    let real: Value = serde_json::from_slice(&payload).unwrap();

    b.sigkill();
    // Its nats-server goes with it (SIGTERM on its parent's death); the data dir is free again
    // once the process is gone.
    let pid = b.pid();
    crate::common::wait_until("b to exit", Duration::from_secs(10), || {
        !crate::common::alive(pid)
    });
    // b's captured heartbeat replayed, and heartbeats of b forged with a fresh sequence
    // every round: unsigned, signed by another key, with an interval that never expires.
    let intruder = nkeys::KeyPair::new_server();
    let replay = outsider.keep_publishing(move || {
        let beat = forge(&real, "host_heartbeat", &[]);
        let forever = forge(&real, "host_heartbeat", &never_expires());
        vec![
            event(
                subject("host_heartbeat"),
                (payload.clone(), Some(signature.clone())),
            ),
            event(subject("host_heartbeat"), unsigned(&beat)),
            event(subject("host_heartbeat"), signed_by(&intruder, &beat)),
            event(subject("host_heartbeat"), unsigned(&forever)),
            event(subject("host_heartbeat"), signed_by(&intruder, &forever)),
        ]
    });
    // Three missed heartbeats (3 s) and b is gone, its replica re-placed on a, although its
    // own signed heartbeat and fresh forgeries of it arrive ten times a second.
    eventually(
        "b to leave the hosts of a",
        Duration::from_secs(15),
        &[&a],
        || match a.host_names()? {
            hosts if hosts == ["a"] => Ok(()),
            hosts => Err(format!("hosts {hosts:?}")),
        },
    );
    eventually(
        "both replicas of shield on a",
        Duration::from_secs(30),
        &[&a],
        || replicas_are(&a, "shield", &[("a", 2)]),
    );

    // b started again (same key, a new sequence by its clock) is a member at once, the replay
    // going on.
    b.restart();
    see_each_other(&[&a, &b]);
    eventually(
        "a replica of shield on each node again",
        Duration::from_secs(30),
        &[&a, &b],
        || replicas_are(&a, "shield", &[("a", 1), ("b", 1)]),
    );
    // Counted (the first line at once, the counts since then 10 s later).
    for reason in ["stale=", "unsigned=", "bad_signature="] {
        a.wait_for_log(&["host events dropped", reason], Duration::from_secs(20));
    }
    replay.store(true, Ordering::Relaxed);
}
