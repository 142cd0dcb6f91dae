//! Components from OCI registries (issue 16) against a real registry on loopback: `lattice push`
//! then a manifest naming the component by tag on a 2-node lattice; the digest pinned at deploy
//! (a moved tag changes nothing until `app deploy --refresh`); the registry gone after deploy;
//! htpasswd auth through a docker `config.json`; layouts `skopeo` copied in; each error naming
//! the reference.

mod registry;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::common::example_wasm;
use crate::common::hub::Hub;
use crate::common::lattice::{Member, all_answer, eventually, join_with, logs, write};
use registry::{Blob, Registry, digest, docker_config, lattice, skopeo_copy, write_layout};

const TIMEOUT: Duration = Duration::from_secs(30);

/// A manifest of app `app` whose component `web` is `image`, answering `path`, one replica on
/// every node (daemonscaler).
fn manifest(app: &str, image: &str, path: &str) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {app}
  annotations:
    version: v1
spec:
  components:
    - name: web
      type: component
      properties:
        image: {image}
      traits:
        - type: daemonscaler
          properties:
            instances: 1
{link}"#,
        link = crate::common::http_server_link("web", path),
    )
}

/// `lattice push REF FILE` to `registry` (plain HTTP), with the docker config `docker`; the
/// printed digest, or the failed run's stderr.
fn push(
    registry: &Registry,
    reference: &str,
    file: &Path,
    docker: Option<&Path>,
) -> Result<String, String> {
    push_with(
        reference,
        file,
        &["--insecure-registry", &registry.host],
        docker,
    )
}

/// `lattice push REF FILE FLAGS`, with the docker config `docker`; the printed digest, or the
/// failed run's stderr.
fn push_with(
    reference: &str,
    file: &Path,
    flags: &[&str],
    docker: Option<&Path>,
) -> Result<String, String> {
    let file = file.to_string_lossy();
    let env: Vec<(&str, &Path)> = docker.map(|d| ("DOCKER_CONFIG", d)).into_iter().collect();
    let mut args = vec!["push", reference, &file];
    args.extend_from_slice(flags);
    let out = lattice(&args, &env);
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `lattice app deploy FILE -o json --insecure-registry <registry> [flags]` through `via`,
/// with the docker config `docker`: the outcome, or the failed run's stderr.
fn deploy(
    via: &Member,
    registry: &Registry,
    file: &Path,
    flags: &[&str],
    docker: Option<&Path>,
) -> Result<Value, String> {
    let mut all = vec!["--insecure-registry", registry.host.as_str()];
    all.extend_from_slice(flags);
    deploy_with(via, file, &all, docker)
}

/// `lattice app deploy FILE -o json [flags]` through `via`, with the docker config `docker`:
/// the outcome, or the failed run's stderr.
fn deploy_with(
    via: &Member,
    file: &Path,
    flags: &[&str],
    docker: Option<&Path>,
) -> Result<Value, String> {
    let file = file.to_string_lossy();
    let data = via.data_dir.to_string_lossy();
    let mut args = vec!["app", "deploy", &file, "--data-dir", &data, "-o", "json"];
    args.extend_from_slice(flags);
    let env: Vec<(&str, &Path)> = docker.map(|d| ("DOCKER_CONFIG", d)).into_iter().collect();
    let out = lattice(&args, &env);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The deployed entry of `lattice app history APP -o json` through `via`.
fn deployed(via: &Member, app: &str) -> Value {
    let history = via.json(&["app", "history", app]);
    history
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["deployed"] == true)
        .cloned()
        .unwrap_or_else(|| panic!("no deployed version in {history}"))
}

/// Deletes artifact `digest` (hex) from the lattice's artifact store, as a hub user whose
/// credentials go into `dir`.
fn delete_artifact(hub: &Hub, dir: &Path, digest: &str) {
    let store_creds = hub.user_creds(dir, "test.creds");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = crate::common::nats_connect(
            &hub.client_url(),
            &crate::common::NatsLogin::Creds(store_creds),
        )
        .await
        .unwrap();
        let js = async_nats::jetstream::new(client);
        let store = js
            .get_object_store("lattice_default_artifacts")
            .await
            .unwrap();
        store.delete(digest).await.unwrap();
    });
}

fn wasm_digest(file: &Path) -> String {
    digest(&std::fs::read(file).unwrap())
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned()
}

#[test]
fn oci_a_pushed_component_named_by_tag_runs_on_two_nodes_and_history_shows_its_digest() {
    let registry = Registry::start();
    let hello = example_wasm("http-hello");
    let reference = format!("{}/components/hello:v1", registry.host);
    let pushed = push(&registry, &reference, &hello, None).unwrap();
    assert!(
        pushed.starts_with("sha256:") && pushed.len() == 71,
        "{pushed}"
    );

    let hub = Hub::start();
    let a = join_with(&hub, "a", "z1", &registry.insecure());
    let b = join_with(&hub, "b", "z2", &registry.insecure());
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "app.yaml",
        &manifest("pulled", &reference, "/pulled"),
    );
    let outcome = deploy(&a, &registry, &file, &[], None).unwrap();
    assert_eq!(outcome["changed"], true, "{outcome}");
    all_answer(&[&a, &b], "/pulled", "Hello from lattice", TIMEOUT);

    let entry = deployed(&a, "pulled");
    assert_eq!(entry["oci"]["web"]["digest"], pushed.as_str(), "{entry}");
    assert_eq!(
        entry["oci"]["web"]["reference"],
        reference.as_str(),
        "{entry}"
    );
    assert_eq!(
        entry["digests"]["web"],
        wasm_digest(&hello).as_str(),
        "{entry}"
    );
    // The table shows it too.
    let data = a.data_dir.to_string_lossy();
    let table = lattice(&["app", "history", "pulled", "--data-dir", &data], &[]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains(&format!("{reference}@{pushed}")), "{table}");
}

#[test]
fn oci_a_moved_tag_changes_nothing_until_deploy_refresh() {
    let registry = Registry::start();
    let (hello, goodbye) = (example_wasm("http-hello"), example_wasm("http-goodbye"));
    let reference = format!("{}/moving:latest", registry.host);
    let first = push(&registry, &reference, &hello, None).unwrap();
    let hub = Hub::start();
    let a = join_with(&hub, "a", "z1", &registry.insecure());
    let mut b = join_with(&hub, "b", "z2", &registry.insecure());
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "app.yaml",
        &manifest("moving", &reference, "/moving"),
    );
    deploy(&a, &registry, &file, &[], None).unwrap();
    all_answer(&[&a, &b], "/moving", "Hello", TIMEOUT);

    // The tag moves to another component.
    let second = push(&registry, &reference, &goodbye, None).unwrap();
    assert_ne!(first, second);
    b.terminate(Duration::from_secs(10));
    b.restart();
    all_answer(&[&a, &b], "/moving", "Hello", TIMEOUT);
    // Deploying the same manifest again keeps the pinned digest: nothing new is stored, so
    // there is nothing for the nodes to change to.
    let again = deploy(&a, &registry, &file, &[], None).unwrap();
    assert_eq!(again["changed"], false, "{again}");
    all_answer(&[&a, &b], "/moving", "Hello", TIMEOUT);
    assert_eq!(
        deployed(&a, "moving")["oci"]["web"]["digest"],
        first.as_str()
    );

    // --refresh resolves the tag again.
    let refreshed = deploy(&a, &registry, &file, &["--refresh"], None).unwrap();
    assert_eq!(refreshed["changed"], true, "{refreshed}");
    all_answer(&[&a, &b], "/moving", "Goodbye", TIMEOUT);
    let entry = deployed(&a, "moving");
    assert_eq!(entry["oci"]["web"]["digest"], second.as_str(), "{entry}");
    assert_eq!(
        entry["digests"]["web"],
        wasm_digest(&goodbye).as_str(),
        "{entry}"
    );
    let refreshed_version = entry["version"].as_str().unwrap().to_owned();
    assert!(refreshed_version.starts_with("v1+sha-"), "{entry}");

    // The same manifest deployed again after the refresh (pins kept), and refreshed again
    // with the tag where it is: the refreshed version, unchanged.
    for flags in [&[][..], &["--refresh"][..]] {
        let again = deploy(&a, &registry, &file, flags, None).unwrap();
        assert_eq!(again["changed"], false, "{flags:?}: {again}");
        assert_eq!(
            deployed(&a, "moving")["version"],
            refreshed_version.as_str(),
            "{flags:?}"
        );
    }
    all_answer(&[&a, &b], "/moving", "Goodbye", TIMEOUT);
}

#[test]
fn oci_a_node_started_after_the_registry_stopped_runs_the_app_from_the_artifact_store() {
    let mut registry = Registry::start();
    let reference = format!("{}/kept:v1", registry.host);
    push(&registry, &reference, &example_wasm("http-hello"), None).unwrap();
    let hub = Hub::start();
    let a = join_with(&hub, "a", "z1", &registry.insecure());
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "app.yaml",
        &manifest("kept", &reference, "/kept"),
    );
    deploy(&a, &registry, &file, &[], None).unwrap();
    all_answer(&[&a], "/kept", "Hello", TIMEOUT);

    registry.stop();
    let c = join_with(&hub, "c", "z2", &registry.insecure());
    all_answer(&[&a, &c], "/kept", "Hello", TIMEOUT);
    let log = c.log();
    assert!(!log.contains("pulling it from its registry"), "{log}");
}

#[test]
fn oci_basic_auth_pulls_with_a_docker_config_and_says_unauthorized_without() {
    let registry = Registry::start_with(Some(("ann", "s3cret")), None);
    let reference = format!("{}/private/hello:v1", registry.host);
    let hello = example_wasm("http-hello");
    let creds = docker_config(&registry.host, "ann", "s3cret");
    let wrong = docker_config(&registry.host, "ann", "wrong");
    let e = push(&registry, &reference, &hello, None).unwrap_err();
    assert!(e.contains(&format!("{reference}: unauthorized")), "{e}");
    let e = push(&registry, &reference, &hello, Some(wrong.path())).unwrap_err();
    assert!(e.contains(&format!("{reference}: unauthorized")), "{e}");
    let pushed = push(&registry, &reference, &hello, Some(creds.path())).unwrap();

    let hub = Hub::start();
    let a = join_with(&hub, "a", "z1", &registry.insecure());
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "app.yaml",
        &manifest("private", &reference, "/private"),
    );
    // Without credentials: one line naming the reference; nothing stored.
    let e = deploy(&a, &registry, &file, &[], None).unwrap_err();
    assert!(e.contains(&format!("{reference}: unauthorized")), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    assert!(a.try_json(&["app", "status", "private"]).is_err());
    deploy(&a, &registry, &file, &[], Some(creds.path())).unwrap();
    all_answer(&[&a], "/private", "Hello", TIMEOUT);

    // The artifact store loses the bytes: a new node pulls them by digest from the registry,
    // which it may not without credentials; the status says so, naming the reference.
    let digest = deployed(&a, "private")["digests"]["web"]
        .as_str()
        .unwrap()
        .to_owned();
    delete_artifact(&hub, dir.path(), &digest);
    let b = join_with(&hub, "b", "z2", &registry.insecure());
    let status = eventually("b's start to fail unauthorized", TIMEOUT, &[&a, &b], || {
        let status = a.status("private")?;
        let reason = status["reason"].as_str().unwrap_or_default();
        if status["state"] == "failed" && reason.contains("unauthorized") {
            Ok(status)
        } else {
            Err(format!("status {status}"))
        }
    });
    let reason = status["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("{reference}@{pushed}: unauthorized")),
        "{reason}"
    );
    assert!(
        b.log()
            .contains(&format!("{reference}@{pushed}: unauthorized")),
        "{}",
        logs(&[&b])
    );
    // The running replica on a keeps running.
    all_answer(&[&a], "/private", "Hello", TIMEOUT);
    // A node with the docker config as --registry-creds pulls it and runs it.
    let mut flags = registry.insecure();
    flags.extend([
        "--registry-creds".to_owned(),
        creds
            .path()
            .join("config.json")
            .to_string_lossy()
            .into_owned(),
    ]);
    let c = join_with(&hub, "c", "z3", &flags);
    all_answer(&[&c], "/private", "Hello", TIMEOUT);
    assert!(
        c.log().contains("pulling it from its registry by digest"),
        "{}",
        logs(&[&c])
    );
}

#[test]
fn oci_layouts_skopeo_copied_in_are_pulled_and_run() {
    let registry = Registry::start();
    let hello = std::fs::read(example_wasm("http-hello")).unwrap();
    let goodbye = std::fs::read(example_wasm("http-goodbye")).unwrap();
    let echo = std::fs::read(example_wasm("http-echo")).unwrap();
    let layouts = tempfile::tempdir().unwrap();
    // The CNCF wasm artifact, as another tool writes it.
    let cncf = layouts.path().join("cncf");
    write_layout(
        &cncf,
        "1",
        &Blob {
            media_type: "application/vnd.wasm.config.v0+json",
            bytes: br#"{"architecture":"wasm","os":"wasip2","layerDigests":[]}"#.to_vec(),
        },
        &[Blob {
            media_type: "application/wasm",
            bytes: hello,
        }],
    );
    // wasmCloud's layer type (`wash push`).
    let wasmcloud = layouts.path().join("wasmcloud");
    write_layout(
        &wasmcloud,
        "1",
        &Blob {
            media_type: "application/vnd.wasmcloud.actor.archive.config",
            bytes: b"{}".to_vec(),
        },
        &[Blob {
            media_type: "application/vnd.module.wasm.content.layer.v1+wasm",
            bytes: goodbye,
        }],
    );
    // A plain single-layer image whose layer is a component.
    let single = layouts.path().join("single");
    write_layout(
        &single,
        "1",
        &Blob {
            media_type: "application/vnd.oci.image.config.v1+json",
            bytes:
                br#"{"architecture":"wasm","os":"wasip2","rootfs":{"type":"layers","diff_ids":[]}}"#
                    .to_vec(),
        },
        &[Blob {
            media_type: "application/vnd.oci.image.layer.v1.tar",
            bytes: echo,
        }],
    );
    let hub = Hub::start();
    let a = join_with(&hub, "a", "z1", &registry.insecure());
    let dir = tempfile::tempdir().unwrap();
    for (name, layout, answer) in [
        ("cncf", &cncf, "Hello"),
        ("wasmcloud", &wasmcloud, "Goodbye"),
        ("single", &single, ""),
    ] {
        let reference = format!("{}/copied/{name}:1", registry.host);
        skopeo_copy(layout, "1", &reference);
        let file = write(
            dir.path(),
            &format!("{name}.yaml"),
            &manifest(name, &format!("oci://{reference}"), &format!("/{name}")),
        );
        deploy(&a, &registry, &file, &[], None).unwrap_or_else(|e| panic!("{name}: {e}"));
        all_answer(&[&a], &format!("/{name}"), answer, TIMEOUT);
    }
    // http-echo's own answer, not just any 200: the body asked for, its path header.
    let (status, headers, body) = crate::common::http_request_with(
        a.http,
        "GET",
        "/single",
        &[("x-echo-generate", "3")],
        b"",
    )
    .expect("GET /single");
    assert_eq!((status, body), (200, vec![0, 1, 2]), "{headers:?}");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "x-echo-path" && v == "/single"),
        "{headers:?}"
    );
}

#[test]
fn oci_wrong_media_type_digest_mismatch_and_unknown_tag_each_give_their_error() {
    let registry = Registry::start();
    let hub = Hub::start();
    let a = join_with(&hub, "a", "z1", &registry.insecure());
    let dir = tempfile::tempdir().unwrap();
    // A running version, which no failed deploy below replaces.
    let good = format!("{}/good:v1", registry.host);
    push(&registry, &good, &example_wasm("http-hello"), None).unwrap();
    let file = write(dir.path(), "app.yaml", &manifest("errs", &good, "/errs"));
    deploy(&a, &registry, &file, &[], None).unwrap();
    all_answer(&[&a], "/errs", "Hello", TIMEOUT);

    // Wrong media type: an image of two tar layers (no lattice code wrote it).
    let layout = dir.path().join("tar");
    write_layout(
        &layout,
        "1",
        &Blob {
            media_type: "application/vnd.oci.image.config.v1+json",
            bytes: b"{}".to_vec(),
        },
        &[
            Blob {
                media_type: "application/vnd.oci.image.layer.v1.tar",
                bytes: b"not a component".to_vec(),
            },
            Blob {
                media_type: "application/vnd.oci.image.layer.v1.tar",
                bytes: b"nor this".to_vec(),
            },
        ],
    );
    let container = format!("{}/container:1", registry.host);
    skopeo_copy(&layout, "1", &container);
    let bad = write(
        dir.path(),
        "bad.yaml",
        &manifest("errs", &container, "/errs"),
    );
    let e = deploy(&a, &registry, &bad, &[], None).unwrap_err();
    assert!(e.contains(&format!("{container}: wrong media type")), "{e}");
    assert!(
        e.contains(
            "application/vnd.oci.image.layer.v1.tar, application/vnd.oci.image.layer.v1.tar"
        ),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    // Digest mismatch: a manifest pinning @sha256: of a manifest whose layer's bytes the
    // registry now serves otherwise (same size, one byte changed in its storage).
    let pinned = format!("{}/tampered:v1", registry.host);
    let manifest_digest = push(&registry, &pinned, &example_wasm("http-goodbye"), None).unwrap();
    let layer = digest(&std::fs::read(example_wasm("http-goodbye")).unwrap());
    let blob = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let by_digest = format!("{}/tampered@{manifest_digest}", registry.host);
    let bad = write(
        dir.path(),
        "bad.yaml",
        &manifest("errs", &by_digest, "/errs"),
    );
    let e = deploy(&a, &registry, &bad, &[], None).unwrap_err();
    assert!(e.contains(&format!("{by_digest}: digest mismatch")), "{e}");
    assert!(e.contains(&layer), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    // Unknown tag.
    let unknown = format!("{}/good:nope", registry.host);
    let bad = write(dir.path(), "bad.yaml", &manifest("errs", &unknown, "/errs"));
    let e = deploy(&a, &registry, &bad, &[], None).unwrap_err();
    assert!(e.contains(&format!("{unknown}: unknown tag")), "{e}");

    // Unreachable: a registry port nothing listens on.
    let gone = format!("127.0.0.1:{}/x:1", crate::common::free_port());
    let bad = write(dir.path(), "bad.yaml", &manifest("errs", &gone, "/errs"));
    let e = deploy(&a, &registry, &bad, &[], None).unwrap_err();
    assert!(e.contains(&format!("{gone}: registry unreachable")), "{e}");

    // The same from a config-dir manifest: the node's log names the reference.
    write(
        &a.config_dir,
        "container.yaml",
        &manifest("fromdir", &container, "/fromdir"),
    );
    a.wait_for_log(&[&format!("{container}: wrong media type")], TIMEOUT);

    // Nothing replaced the running version.
    all_answer(&[&a], "/errs", "Hello", TIMEOUT);
    let history = a.json(&["app", "history", "errs"]);
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
}

#[test]
fn oci_https_registries_are_trusted_through_ca_file_and_plain_http_only_when_listed() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = crate::common::certs::ca_and_server_cert(certs.path(), "registry");
    let tls = Registry::start_with(None, Some((&cert, &key)));
    let hello = example_wasm("http-hello");
    let reference = format!("{}/tls/hello:v1", tls.host);
    // An unknown CA: refused, naming the reference.
    let e = push_with(&reference, &hello, &[], None).unwrap_err();
    assert!(
        e.contains(&format!("{reference}: registry unreachable")),
        "{e}"
    );
    let ca_flag = ca.to_string_lossy().into_owned();
    let pushed = push_with(&reference, &hello, &["--ca-file", &ca_flag], None).unwrap();
    assert!(pushed.starts_with("sha256:"), "{pushed}");

    let hub = Hub::start();
    let a = join_with(&hub, "a", "z1", &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "app.yaml", &manifest("tls", &reference, "/tls"));
    let e = deploy_with(&a, &file, &[], None).unwrap_err();
    assert!(
        e.contains(&format!("{reference}: registry unreachable")),
        "{e}"
    );
    deploy_with(&a, &file, &["--ca-file", &ca_flag], None).unwrap();
    all_answer(&[&a], "/tls", "Hello", TIMEOUT);
    assert_eq!(deployed(&a, "tls")["oci"]["web"]["digest"], pushed.as_str());

    // A plain-HTTP registry on loopback is reached only when listed.
    let plain = Registry::start();
    let reference = format!("{}/plain/hello:v1", plain.host);
    push(&plain, &reference, &hello, None).unwrap();
    let file = write(
        dir.path(),
        "plain.yaml",
        &manifest("plain", &reference, "/plain"),
    );
    let e = deploy_with(&a, &file, &[], None).unwrap_err();
    assert!(
        e.contains(&format!("{reference}: registry unreachable")),
        "{e}"
    );
    deploy(&a, &plain, &file, &[], None).unwrap();
    all_answer(&[&a], "/plain", "Hello", TIMEOUT);
}

#[test]
fn oci_a_config_dir_tag_is_not_resolved_again_when_the_node_restarts() {
    let registry = Registry::start();
    let reference = format!("{}/confdir:latest", registry.host);
    let first = push(&registry, &reference, &example_wasm("http-hello"), None).unwrap();
    let dirs = tempfile::tempdir().unwrap();
    let (config, data) = (dirs.path().join("config"), dirs.path().join("data"));
    std::fs::create_dir_all(&config).unwrap();
    write(
        &config,
        "app.yaml",
        &manifest("confdir", &reference, "/confdir"),
    );
    let flags = ["--insecure-registry", registry.host.as_str()];
    let mut node = crate::common::Node::start_in(&config, &data, &flags);
    let body = node.wait_for_status("/confdir", 200, TIMEOUT);
    assert!(body.starts_with("Hello"), "{body}");

    push(&registry, &reference, &example_wasm("http-goodbye"), None).unwrap();
    node.terminate(Duration::from_secs(10));
    let node = crate::common::Node::start_in(&config, &data, &flags);
    let body = node.wait_for_status("/confdir", 200, TIMEOUT);
    assert!(body.starts_with("Hello"), "{body}");
    // A file written after the restart is deployed by a later scan than the first: once it
    // answers, the first scan has passed app.yaml by.
    node.write_manifest("later.yaml", "later", "http-goodbye", "/later");
    node.wait_for_status("/later", 200, TIMEOUT);
    let body = node.wait_for_status("/confdir", 200, TIMEOUT);
    assert!(body.starts_with("Hello"), "{body}");
    let history = node.try_json(&["app", "history", "confdir"]).unwrap();
    let history = history.as_array().unwrap();
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["oci"]["web"]["digest"], first.as_str());
}

#[test]
fn oci_a_node_pulls_only_from_its_allowed_registries() {
    let registry = Registry::start();
    let reference = format!("{}/allowed/hello:v1", registry.host);
    push(&registry, &reference, &example_wasm("http-hello"), None).unwrap();
    let hub = Hub::start();
    let a = join_with(&hub, "a", "z1", &registry.insecure());
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "app.yaml",
        &manifest("allowed", &reference, "/allowed"),
    );
    deploy(&a, &registry, &file, &[], None).unwrap();
    all_answer(&[&a], "/allowed", "Hello", TIMEOUT);

    // The store loses the bytes; a node allowed another registry only does not pull them.
    let digest = deployed(&a, "allowed")["digests"]["web"]
        .as_str()
        .unwrap()
        .to_owned();
    delete_artifact(&hub, dir.path(), &digest);
    let mut flags = registry.insecure();
    flags.extend(["--allowed-registry".to_owned(), "ghcr.io".to_owned()]);
    let b = join_with(&hub, "b", "z2", &flags);
    eventually("b's start to fail: not allowed", TIMEOUT, &[&a, &b], || {
        let status = a.status("allowed")?;
        let reason = status["reason"].as_str().unwrap_or_default();
        if reason.contains(&format!("registry {} is not allowed", registry.host)) {
            Ok(status)
        } else {
            Err(format!("status {status}"))
        }
    });
    // A node allowed that registry pulls it.
    let mut flags = registry.insecure();
    flags.extend(["--allowed-registry".to_owned(), registry.host.clone()]);
    let c = join_with(&hub, "c", "z3", &flags);
    all_answer(&[&a, &c], "/allowed", "Hello", TIMEOUT);
    assert!(
        c.log().contains("pulling it from its registry by digest"),
        "{}",
        logs(&[&c])
    );
}

#[test]
fn oci_a_node_pull_whose_wasm_is_not_the_versions_is_refused() {
    let registry = Registry::start();
    let hello_ref = format!("{}/pair/hello:v1", registry.host);
    let goodbye_ref = format!("{}/pair/goodbye:v1", registry.host);
    push(&registry, &hello_ref, &example_wasm("http-hello"), None).unwrap();
    let goodbye_pin = push(&registry, &goodbye_ref, &example_wasm("http-goodbye"), None).unwrap();
    let hub = Hub::start();
    let a = join_with(&hub, "a", "z1", &registry.insecure());
    let dir = tempfile::tempdir().unwrap();
    // Puts hello's wasm into the artifact store.
    let file = write(
        dir.path(),
        "hello.yaml",
        &manifest("hello", &hello_ref, "/hello"),
    );
    deploy(&a, &registry, &file, &[], None).unwrap();
    all_answer(&[&a], "/hello", "Hello", TIMEOUT);
    let hello = wasm_digest(&example_wasm("http-hello"));

    // A client that does not resolve images itself: hello's wasm pinned to goodbye's manifest.
    let request = serde_json::json!({
        "manifest": manifest("mixed", &goodbye_ref, "/mixed"),
        "version": null,
        "images": {"web": hello},
        "oci": {"web": {"reference": goodbye_ref, "digest": goodbye_pin}},
        "source": {"kind": "cli"},
    });
    let reply = crate::common::control_request(
        &a.data_dir,
        "app.deploy",
        serde_json::to_vec(&request).unwrap(),
    );
    assert_eq!(reply["success"], true, "{reply}");
    all_answer(&[&a], "/mixed", "Hello", TIMEOUT);

    // Without hello's wasm in the store, a new node pulls the pin and gets goodbye's: refused.
    delete_artifact(&hub, dir.path(), &hello);
    let b = join_with(&hub, "b", "z2", &registry.insecure());
    let status = eventually(
        "b's start to fail: digest mismatch",
        TIMEOUT,
        &[&a, &b],
        || {
            let status = a.status("mixed")?;
            let reason = status["reason"].as_str().unwrap_or_default();
            if reason.contains("digest mismatch") {
                Ok(status)
            } else {
                Err(format!("status {status}"))
            }
        },
    );
    let reason = status["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("{goodbye_ref}@{goodbye_pin}: digest mismatch"))
            && reason.contains(&format!("expected sha256:{hello}")),
        "{reason}"
    );
    // Nothing of goodbye's runs in its place; a keeps answering.
    all_answer(&[&a], "/mixed", "Hello", TIMEOUT);
}
