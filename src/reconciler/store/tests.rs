//! Tests of the mirror: revisions, the layouts, node-local apps, placement.

use super::layout::AppHead;
use super::*;

fn version(version: &str, at: u64) -> StoredVersion {
    StoredVersion {
        version: version.into(),
        manifest: "not yaml: [".into(),
        images: BTreeMap::new(),
        oci: BTreeMap::new(),
        stored_at_ms: at,
        source: Source::Cli,
    }
}

fn record(name: &str, deployed: &str) -> StoredApp {
    StoredApp {
        name: name.into(),
        deployed: deployed.into(),
        versions: vec![version(deployed, 1)],
    }
}

fn listing(present: Vec<(String, u64, Vec<u8>)>) -> Listing {
    Listing {
        present,
        kept: BTreeSet::new(),
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn head(name: &str, deployed: &str, versions: &[&str], generation: u64) -> AppHead {
    AppHead {
        name: name.into(),
        deployed: deployed.into(),
        versions: versions.iter().map(|v| (*v).to_owned()).collect(),
        keys: BTreeMap::new(),
        generation,
        updated_at_ms: generation,
    }
}

#[test]
fn the_mirror_keeps_the_latest_revision_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let mirror = Mirror::open(&db).unwrap();
        let seen = mirror.subscribe();
        mirror.apply("a", 5, Some(&json(&record("a", "v2"))));
        mirror.apply("a", 3, Some(&json(&record("a", "v1"))));
        assert_eq!(mirror.get("a").unwrap().1.deployed, "v2");
        assert!(seen.has_changed().unwrap());
        assert!(
            mirror.desired()["a"].manifest.is_err(),
            "bad text is reported"
        );
        mirror.apply("b", 6, Some(&json(&record("b", "v1"))));
        mirror.apply("b", 7, None);
        // A stale put of a deleted key does not bring it back.
        mirror.apply("b", 6, Some(&json(&record("b", "v1"))));
        assert!(mirror.get("b").is_none());
        // A full pass that no longer lists a key drops it, unless it changed since.
        mirror.apply("c", 9, Some(&json(&record("c", "v1"))));
        mirror.resync(
            8,
            listing(vec![("a".into(), 5, json(&record("a", "v2")))]),
            false,
            &BTreeSet::new(),
        );
        assert!(mirror.get("c").is_some());
        mirror.resync(
            9,
            listing(vec![("a".into(), 5, json(&record("a", "v2")))]),
            false,
            &BTreeSet::new(),
        );
        assert!(mirror.get("c").is_none());
    }
    let db = sled::open(dir.path()).unwrap();
    let mirror = Mirror::open(&db).unwrap();
    assert_eq!(mirror.get("a").unwrap().1.deployed, "v2");
    assert_eq!(
        mirror.desired().keys().collect::<Vec<_>>(),
        ["a"],
        "deleted apps stay deleted after a restart"
    );
    // A bucket created anew: its revisions start again, and win; what it does not list
    // goes only with `replace` (after this node re-published its apps into it).
    mirror.resync(
        1,
        listing(vec![
            ("a".into(), 1, json(&record("a", "v3"))),
            ("b".into(), 2, json(&record("b", "v9"))),
        ]),
        true,
        &BTreeSet::new(),
    );
    assert_eq!(mirror.get("a").unwrap().1.deployed, "v3");
    assert_eq!(mirror.get("b").unwrap().1.deployed, "v9");
    mirror.apply("b", 3, None);
    assert!(
        mirror.get("b").is_none(),
        "revisions of the new bucket count"
    );
}

#[test]
fn a_mirror_written_by_an_earlier_release_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let tree = db.open_tree("apps").unwrap();
    let old = serde_json::json!({"revision": 4, "record": record("shop", "v1")});
    tree.insert("shop", json(&old)).unwrap();
    let mirror = Mirror::open(&db).unwrap();
    assert_eq!(mirror.get("shop").unwrap(), (4, record("shop", "v1")));
}

#[test]
fn an_app_is_its_head_and_the_versions_it_lists() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let mirror = Mirror::open(&db).unwrap();
    // An earlier release's record, then the same app in the new layout: the head wins.
    mirror.apply("shop", 1, Some(&json(&record("shop", "v1"))));
    mirror.apply(
        &layout::version_key("shop", "v1"),
        2,
        Some(&json(&version("v1", 1))),
    );
    mirror.apply(
        &layout::version_key("shop", "v2"),
        3,
        Some(&json(&version("v2", 2))),
    );
    mirror.apply(
        &layout::head_key("shop"),
        4,
        Some(&json(&head("shop", "v2", &["v1", "v2"], 7))),
    );
    let (revision, app) = mirror.get("shop").unwrap();
    assert_eq!(revision, 4);
    assert_eq!(app.deployed, "v2");
    assert_eq!(
        app.versions
            .iter()
            .map(|v| v.version.as_str())
            .collect::<Vec<_>>(),
        ["v1", "v2"]
    );
    assert_eq!(mirror.generation("shop"), 7);
    // A full pass that took the versions from the mirror (not read again) keeps them.
    let kept = Listing {
        present: vec![(
            layout::head_key("shop"),
            4,
            json(&head("shop", "v2", &["v1", "v2"], 7)),
        )],
        kept: BTreeSet::from([
            layout::version_key("shop", "v1"),
            layout::version_key("shop", "v2"),
        ]),
    };
    mirror.resync(4, kept, false, &BTreeSet::new());
    assert_eq!(mirror.get("shop").unwrap().1.versions.len(), 2);
    // Versions the head no longer lists are not part of the app.
    mirror.apply(
        &layout::head_key("shop"),
        5,
        Some(&json(&head("shop", "v2", &["v2"], 8))),
    );
    assert_eq!(mirror.get("shop").unwrap().1.versions.len(), 1);
    // The head deleted: the app is gone, whatever keys remain.
    mirror.apply(&layout::head_key("shop"), 6, None);
    mirror.apply("shop", 7, None);
    assert!(mirror.get("shop").is_none());
    assert!(mirror.desired().is_empty());
}

#[test]
fn node_local_apps_run_over_stored_ones_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let mirror = Mirror::open(&db).unwrap();
        mirror.apply("shop", 1, Some(&json(&record("shop", "v1"))));
        mirror.set_local("shop", Some(record("shop", "v2")));
        mirror.set_local("blog", Some(record("blog", "v1")));
        let desired = mirror.desired();
        assert!(desired["shop"].local && desired["blog"].local);
        assert_eq!(desired["shop"].record.deployed, "v2");
        assert_eq!(mirror.get("shop").unwrap().1.deployed, "v1");
    }
    let db = sled::open(dir.path()).unwrap();
    let mirror = Mirror::open(&db).unwrap();
    assert_eq!(mirror.local("blog"), Some(record("blog", "v1")));
    // Moved into the store: the same record, no longer local.
    let receiver = mirror.subscribe();
    mirror.set_local("shop", None);
    assert!(receiver.has_changed().unwrap());
    let desired = mirror.desired();
    assert!(!desired["shop"].local);
    assert_eq!(desired["shop"].record.deployed, "v1");
    // The same record from the store: the same version runs, now placed lattice-wide.
    mirror.apply("blog", 2, Some(&json(&record("blog", "v1"))));
    mirror.set_local("blog", None);
    let desired = mirror.desired();
    assert!(!desired["blog"].local);
    assert_eq!(desired["blog"].record, record("blog", "v1"));
}

fn host(id: &str) -> HostInfo {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": id, "lattice": "default", "labels": {}, "version": "0",
        "uptime_ms": 0, "heartbeat_interval_ms": 1000,
        "uplink": {"state": "none"}, "http_addr": "127.0.0.1:1", "components": []
    }))
    .unwrap()
}

#[test]
fn node_local_apps_are_placed_on_this_node_only() {
    let manifest = "apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: shop
spec:
  components:
    - name: web
      type: component
      properties:
        image: file:///web.wasm
      traits:
        - type: spreadscaler
          properties:
            instances: 4
";
    let mut stored = version("v1", 1);
    stored.manifest = manifest.into();
    stored.images = BTreeMap::from([("web".to_owned(), "ab".repeat(32))]);
    let app = StoredApp {
        name: "shop".into(),
        deployed: "v1".into(),
        versions: vec![stored],
    };
    let hosts = [host("a"), host("b")];
    let shared = Desired::from([("shop".to_owned(), DesiredApp::new(app.clone(), false))]);
    assert!(
        shared["shop"].manifest.is_ok(),
        "{:?}",
        shared["shop"].manifest
    );
    let spread = place(&shared, &hosts, "a");
    assert_eq!(
        spread[&("shop".to_owned(), "web".to_owned())].hosts.len(),
        2
    );
    let local = Desired::from([("shop".to_owned(), DesiredApp::new(app, true))]);
    let here = place(&local, &hosts, "a");
    assert_eq!(
        here[&("shop".to_owned(), "web".to_owned())].hosts,
        BTreeMap::from([("a".to_owned(), 4)])
    );
}

#[test]
fn a_bucket_created_anew_replaces_a_value_of_the_same_revision() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let mirror = Mirror::open(&db).unwrap();
    mirror.apply("a", 1, Some(&json(&record("a", "v1"))));
    // The new bucket's revision 1 holds another value.
    mirror.resync(
        1,
        listing(vec![("a".into(), 1, json(&record("a", "v2")))]),
        true,
        &BTreeSet::new(),
    );
    assert_eq!(mirror.get("a").unwrap().1.deployed, "v2");
}

#[test]
fn an_app_that_could_not_be_re_published_keeps_its_mirrored_copy() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let mirror = Mirror::open(&db).unwrap();
    mirror.apply("a", 4, Some(&json(&record("a", "v1"))));
    mirror.apply("b", 5, Some(&json(&record("b", "v1"))));
    // A new bucket holding only `a`: `b` failed to be written into it.
    mirror.resync(
        1,
        listing(vec![("a".into(), 1, json(&record("a", "v1")))]),
        true,
        &BTreeSet::from(["b".to_owned()]),
    );
    assert!(mirror.get("a").is_some());
    assert_eq!(mirror.get("b").unwrap().1.deployed, "v1");
    assert!(mirror.desired().contains_key("b"));
    // Without it spared, a new bucket's listing is the whole truth.
    mirror.resync(1, listing(vec![]), true, &BTreeSet::new());
    assert!(mirror.get("b").is_none());
}

#[test]
fn a_version_is_read_at_the_key_its_head_names() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let mirror = Mirror::open(&db).unwrap();
    let old = version("v1", 1);
    let mut edited = version("v1", 2);
    edited.manifest = "edited: [".into();
    // v1 as first deployed (key of its content), undeployed, then deployed again with other
    // content: another key, which the new head names.
    let old_key = format!("ver.shop.{}", layout::content_key(&old));
    let new_key = format!("ver.shop.{}", layout::content_key(&edited));
    assert_ne!(old_key, new_key);
    mirror.apply(&old_key, 1, Some(&json(&old)));
    let mut second = head("shop", "v1", &["v1"], 3);
    second.keys = BTreeMap::from([("v1".to_owned(), layout::content_key(&edited))]);
    mirror.apply(&new_key, 5, Some(&json(&edited)));
    mirror.apply(&layout::head_key("shop"), 6, Some(&json(&second)));
    let (_, app) = mirror.get("shop").unwrap();
    assert_eq!(app.versions, [edited]);
}
