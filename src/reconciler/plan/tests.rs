//! Unit tests of placement, status and the rolling hand-over.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::lattice::membership::ComponentReplicas;
use crate::nats::uplink::{Uplink, UplinkState};
use crate::reconciler::manifest::{ComponentSpec, Image, Manifest};
use crate::reconciler::store::{DesiredApp, Source, StoredApp, StoredVersion};

fn spread(name: &str, zone: Option<&str>, weight: Option<u32>) -> Spread {
    Spread {
        name: name.into(),
        requirements: zone
            .map(|z| BTreeMap::from([("zone".to_owned(), z.to_owned())]))
            .unwrap_or_default(),
        weight,
    }
}

fn host(id: &str, zone: &str) -> HostInfo {
    HostInfo {
        id: id.into(),
        name: format!("node-{id}"),
        lattice: "default".into(),
        labels: BTreeMap::from([("zone".to_owned(), zone.to_owned())]),
        version: "0".into(),
        uptime_ms: 0,
        heartbeat_interval_ms: 1000,
        uplink: Uplink::fixed(UplinkState::None, None),
        http_addr: "127.0.0.1:8000".into(),
        components: Vec::new(),
        failures: Vec::new(),
        health: Default::default(),
        probe: true,
    }
}

fn running(mut h: HostInfo, app: &str, version: &str, replicas: u32) -> HostInfo {
    h.components.push(ComponentReplicas {
        app: app.into(),
        component: "web".into(),
        replicas,
        digest: "d".into(),
        version: version.into(),
    });
    h
}

fn desired(app: &str, version: &str, scaler: Scaler) -> Desired {
    let manifest = Manifest {
        name: app.into(),
        version: Some(version.into()),
        components: vec![ComponentSpec {
            name: "web".into(),
            image: Image::Artifact { digest: "d".into() },
            image_field: "spec.components[0].properties.image".into(),
            oci_pin: None,
            scaler,
            config: BTreeMap::new(),
            keyvalue: BTreeMap::new(),
            allowed_hosts: Default::default(),
        }],
        http_links: Vec::new(),
        warnings: Vec::new(),
    };
    let record = StoredApp {
        name: app.into(),
        deployed: version.into(),
        versions: vec![StoredVersion {
            version: version.into(),
            manifest: String::new(),
            images: BTreeMap::new(),
            oci: BTreeMap::new(),
            stored_at_ms: 0,
            source: Source::Cli,
        }],
    };
    Desired::from([(
        app.to_owned(),
        DesiredApp {
            record,
            manifest: Ok(Arc::new(manifest)),
            local: false,
        },
    )])
}

fn counts(spread: &[Spread], instances: u32) -> Vec<(String, u32)> {
    spread_counts(instances, spread)
        .into_iter()
        .map(|(s, c)| (s.name, c))
        .collect()
}

#[test]
fn spread_counts_follow_wadm() {
    let two = [
        spread("one", None, Some(100)),
        spread("two", None, Some(100)),
    ];
    assert_eq!(counts(&two, 10), [("one".into(), 5), ("two".into(), 5)]);
    assert_eq!(counts(&two, 7), [("one".into(), 4), ("two".into(), 3)]);
    let uneven = [spread("one", None, Some(30)), spread("two", None, Some(40))];
    assert_eq!(counts(&uneven, 7), [("two".into(), 4), ("one".into(), 3)]);
    // wadm's own complex case: 103 over weights 42, 3, 37, 384.
    let complex = [
        spread("c1", None, Some(42)),
        spread("c2", None, Some(3)),
        spread("c3", None, Some(37)),
        spread("c4", None, Some(384)),
    ];
    assert_eq!(
        counts(&complex, 103),
        [
            ("c4".into(), 85),
            ("c1".into(), 10),
            ("c3".into(), 8),
            ("c2".into(), 0)
        ]
    );
    assert_eq!(counts(&[], 12), [("default".into(), 12)]);
}

#[test]
fn a_spread_over_zones_is_even_within_each_zone_and_stable() {
    let scaler = Scaler::Spread {
        instances: 4,
        spread: vec![
            spread("a", Some("a"), Some(50)),
            spread("b", Some("b"), Some(50)),
        ],
    };
    let hosts = [host("a1", "a"), host("a2", "a"), host("b1", "b")];
    let p = place_component("shop", "web", &scaler, &hosts);
    assert_eq!(p.desired, 4);
    assert_eq!(
        p.hosts,
        BTreeMap::from([("a1".into(), 1), ("a2".into(), 1), ("b1".into(), 2)])
    );
    assert!(p.unplaced.is_empty());
    // The same answer whatever order the hosts are listed in.
    let reversed: Vec<HostInfo> = hosts.iter().rev().cloned().collect();
    assert_eq!(place_component("shop", "web", &scaler, &reversed), p);

    // zone=b gone: its share is not moved to zone=a, and the reason says why.
    let p = place_component("shop", "web", &scaler, &hosts[..2]);
    assert_eq!(
        p.hosts,
        BTreeMap::from([("a1".into(), 1), ("a2".into(), 1)])
    );
    assert_eq!(p.unplaced.len(), 1);
    assert!(
        p.unplaced[0].contains("no node matches requirement zone=b"),
        "{:?}",
        p.unplaced
    );
    // One zone=a node gone: the other takes the zone's share.
    let p = place_component(
        "shop",
        "web",
        &scaler,
        &[hosts[1].clone(), hosts[2].clone()],
    );
    assert_eq!(
        p.hosts,
        BTreeMap::from([("a2".into(), 2), ("b1".into(), 2)])
    );
}

#[test]
fn an_odd_share_goes_to_the_same_host_on_every_node() {
    let scaler = Scaler::Spread {
        instances: 3,
        spread: Vec::new(),
    };
    let hosts = [host("x", "a"), host("y", "a")];
    let p = place_component("shop", "web", &scaler, &hosts);
    assert_eq!(p.hosts.values().sum::<u32>(), 3);
    assert_eq!(p.hosts.len(), 2);
    let again = place_component(
        "shop",
        "web",
        &scaler,
        &[hosts[1].clone(), hosts[0].clone()],
    );
    assert_eq!(again, p);
}

#[test]
fn a_daemonscaler_runs_on_every_matching_host() {
    let scaler = Scaler::Daemon {
        instances: 1,
        spread: vec![spread("a", Some("a"), None)],
    };
    let hosts = [host("a1", "a"), host("a2", "a"), host("b1", "b")];
    let p = place_component("shop", "web", &scaler, &hosts);
    assert_eq!(
        p.hosts,
        BTreeMap::from([("a1".into(), 1), ("a2".into(), 1)])
    );
    assert_eq!(p.desired, 2);
    let p = place_component("shop", "web", &scaler, &hosts[2..]);
    assert!(p.hosts.is_empty());
    assert!(p.unplaced[0].contains("no node matches requirement zone=a"));
}

#[test]
fn status_is_deployed_reconciling_or_failed() {
    let scaler = Scaler::Spread {
        instances: 2,
        spread: vec![spread("b", Some("b"), None)],
    };
    let want = desired("shop", "v2", scaler);
    let hosts = vec![host("b1", "b")];
    let placement = place(&want, &hosts);

    let s = status("shop", &want, &placement, &hosts).unwrap();
    assert_eq!(s.state, AppState::Reconciling);
    assert!(s.reason.contains("0 of 2"), "{}", s.reason);

    let hosts = vec![running(host("b1", "b"), "shop", "v2", 2)];
    let s = status("shop", &want, &placement, &hosts).unwrap();
    assert_eq!((s.state, s.reason.as_str()), (AppState::Deployed, ""));
    assert_eq!(s.components[0].running, 2);
    assert_eq!(s.components[0].nodes[0].name, "node-b1");

    // An old version still running somewhere: not settled.
    let hosts = vec![
        running(host("b1", "b"), "shop", "v2", 2),
        running(host("a1", "a"), "shop", "v1", 1),
    ];
    let s = status("shop", &want, &place(&want, &hosts), &hosts).unwrap();
    assert_eq!(s.state, AppState::Reconciling);

    // No zone=b node: failed, naming the requirement.
    let hosts = vec![host("a1", "a")];
    let s = status("shop", &want, &place(&want, &hosts), &hosts).unwrap();
    assert_eq!(s.state, AppState::Failed);
    assert!(
        s.reason.contains("no node matches requirement zone=b"),
        "{}",
        s.reason
    );

    // A node that cannot start it says why.
    let mut b1 = host("b1", "b");
    b1.failures.push(Failure {
        app: "shop".into(),
        component: "web".into(),
        version: "v2".into(),
        reason: "import wasi:keyvalue not granted".into(),
    });
    let hosts = vec![b1];
    let s = status("shop", &want, &place(&want, &hosts), &hosts).unwrap();
    assert_eq!(s.state, AppState::Failed);
    assert!(
        s.reason.contains("on node node-b1: import wasi:keyvalue"),
        "{}",
        s.reason
    );
    assert!(status("other", &want, &placement, &hosts).is_none());
}

#[test]
fn moved_replicas_stay_until_their_replacements_run() {
    let scaler = Scaler::Spread {
        instances: 1,
        spread: vec![spread("b", Some("b"), None)],
    };
    let want = desired("shop", "v1", scaler);
    let key = ("shop".to_owned(), "web".to_owned());
    // This node (a1, zone=a) runs a replica the placement now gives to b1.
    let since = Instant::now();
    let here = BTreeMap::from([(
        key.clone(),
        Running {
            version: "v1".into(),
            replicas: 1,
            surplus_since: Some(since),
        },
    )]);
    let hosts = vec![host("a1", "a"), host("b1", "b")];
    let placement = place(&want, &hosts);
    let share = local_share("a1", &want, &placement, &hosts, &here, since);
    assert_eq!(share[&key].replicas, 1, "kept until b1 runs it");

    let hosts = vec![host("a1", "a"), running(host("b1", "b"), "shop", "v1", 1)];
    let share = local_share("a1", &want, &placement, &hosts, &here, since);
    assert!(share.is_empty(), "handed over");

    let hosts = vec![host("a1", "a"), host("b1", "b")];
    let later = since + HANDOVER_TIMEOUT + Duration::from_secs(1);
    assert!(local_share("a1", &want, &placement, &hosts, &here, later).is_empty());
    // Undeployed: nothing, at once.
    assert!(
        local_share(
            "a1",
            &Desired::new(),
            &Placement::new(),
            &hosts,
            &here,
            since
        )
        .is_empty()
    );
}

#[test]
fn a_shrinking_share_waits_for_the_rest_and_a_failing_target_holds_the_old_replicas() {
    let scaler = Scaler::Spread {
        instances: 2,
        spread: Vec::new(),
    };
    let want = desired("shop", "v1", scaler);
    let key = ("shop".to_owned(), "web".to_owned());
    let now = Instant::now();
    // a1 runs both replicas; a2 joined and is placed for one of them.
    let here = BTreeMap::from([(
        key.clone(),
        Running {
            version: "v1".into(),
            replicas: 2,
            surplus_since: None,
        },
    )]);
    let hosts = vec![running(host("a1", "a"), "shop", "v1", 2), host("a2", "a")];
    let placement = place(&want, &hosts);
    assert_eq!(placement[&key].hosts.len(), 2, "{placement:?}");
    let share = local_share("a1", &want, &placement, &hosts, &here, now);
    assert_eq!(share[&key].replicas, 2, "both kept until a2 runs its one");
    let hosts = vec![
        running(host("a1", "a"), "shop", "v1", 2),
        running(host("a2", "a"), "shop", "v1", 1),
    ];
    let share = local_share("a1", &want, &placement, &hosts, &here, now);
    assert_eq!(share[&key].replicas, 1);

    // Moved away to a node that cannot start it: kept past the timeout.
    let scaler = Scaler::Spread {
        instances: 1,
        spread: vec![spread("b", Some("b"), None)],
    };
    let want = desired("shop", "v1", scaler);
    let here = BTreeMap::from([(
        key.clone(),
        Running {
            version: "v1".into(),
            replicas: 1,
            surplus_since: Some(now),
        },
    )]);
    let mut b1 = host("b1", "b");
    b1.failures.push(Failure {
        app: "shop".into(),
        component: "web".into(),
        version: "v1".into(),
        reason: "cannot fetch".into(),
    });
    let hosts = vec![host("a1", "a"), b1];
    let placement = place(&want, &hosts);
    let later = now + HANDOVER_TIMEOUT * 2;
    let share = local_share("a1", &want, &placement, &hosts, &here, later);
    assert_eq!(share[&key].replicas, 1);
}

#[test]
fn zero_weights_and_zero_instances_place_sensibly() {
    let zero = [spread("one", None, Some(0)), spread("two", None, Some(0))];
    assert_eq!(counts(&zero, 4), [("one".into(), 2), ("two".into(), 2)]);
    let scaler = Scaler::Daemon {
        instances: 0,
        spread: Vec::new(),
    };
    let p = place_component("shop", "web", &scaler, &[host("a1", "a")]);
    assert!(p.hosts.is_empty() && p.unplaced.is_empty(), "{p:?}");
}

#[test]
fn placement_costs_do_not_grow_with_instances() {
    // Beyond the manifest's bound (a scaler built in code): still one pass per entry, not one
    // per replica; the even split of every-weight-0 is computed at once.
    let zero = [spread("one", None, Some(0)), spread("two", None, Some(0))];
    assert_eq!(
        counts(&zero, u32::MAX),
        [
            ("one".into(), u32::MAX / 2 + 1),
            ("two".into(), u32::MAX / 2)
        ]
    );
    let three = [
        spread("a", None, Some(0)),
        spread("b", None, Some(0)),
        spread("c", None, Some(0)),
    ];
    assert_eq!(
        counts(&three, 4_000_000_000),
        [
            ("a".into(), 1_333_333_334),
            ("b".into(), 1_333_333_333),
            ("c".into(), 1_333_333_333)
        ]
    );
    let scaler = Scaler::Spread {
        instances: u32::MAX,
        spread: zero.to_vec(),
    };
    let hosts = [host("a1", "a"), host("a2", "a"), host("b1", "b")];
    let p = place_component("shop", "web", &scaler, &hosts);
    assert_eq!(p.desired, u64::from(u32::MAX));
    assert_eq!(
        p.hosts.values().map(|n| u64::from(*n)).sum::<u64>(),
        u64::from(u32::MAX)
    );
}

#[test]
fn desired_and_running_sums_do_not_overflow() {
    // A daemonscaler's desired count is summed over the hosts: beyond u32 here.
    let scaler = Scaler::Daemon {
        instances: u32::MAX,
        spread: Vec::new(),
    };
    let hosts: Vec<HostInfo> = (0..3)
        .map(|i| running(host(&format!("h{i}"), "a"), "shop", "v1", u32::MAX))
        .collect();
    let p = place_component("shop", "web", &scaler, &hosts);
    assert_eq!(p.desired, 3 * u64::from(u32::MAX));
    let d = desired("shop", "v1", scaler);
    let placement = place(&d, &hosts);
    let s = status("shop", &d, &placement, &hosts).unwrap();
    assert_eq!(s.components[0].desired, 3 * u64::from(u32::MAX));
    assert_eq!(s.components[0].running, 3 * u64::from(u32::MAX));
    assert_eq!(s.state, AppState::Deployed, "{s:?}");
    // And this node's share is computed without overflowing either.
    let share = local_share(
        "h0",
        &d,
        &placement,
        &hosts,
        &BTreeMap::new(),
        Instant::now(),
    );
    assert_eq!(
        share[&("shop".to_owned(), "web".to_owned())].replicas,
        u32::MAX
    );
}

#[test]
fn a_stored_manifest_beyond_the_bounds_is_failed_not_placed() {
    // Stored before the bound existed (or written to the bucket by hand): every node parses
    // it again, refuses it and places nothing for it.
    let text = "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata:\n  name: spin\nspec:\n  components:\n    - name: web\n      type: component\n      properties:\n        image: ./web.wasm\n      traits:\n        - type: spreadscaler\n          properties:\n            instances: 4000000000\n            spread:\n              - name: a\n                weight: 0\n";
    let version = StoredVersion {
        version: "v1".into(),
        manifest: text.into(),
        images: BTreeMap::from([("web".to_owned(), "0".repeat(64))]),
        oci: BTreeMap::new(),
        stored_at_ms: 0,
        source: Source::Cli,
    };
    let manifest = crate::reconciler::store::parse_stored(&version).map(Arc::new);
    let reason = manifest.as_ref().unwrap_err().clone();
    assert!(
        reason.contains("spec.components[0].traits[0].properties.instances"),
        "{reason}"
    );
    let record = StoredApp {
        name: "spin".into(),
        deployed: "v1".into(),
        versions: vec![version],
    };
    let d = Desired::from([(
        "spin".to_owned(),
        DesiredApp {
            record,
            manifest,
            local: false,
        },
    )]);
    let hosts = [host("a1", "a")];
    assert!(place(&d, &hosts).is_empty());
    let s = status("spin", &d, &place(&d, &hosts), &hosts).unwrap();
    assert_eq!((s.state, s.reason), (AppState::Failed, reason));
}
