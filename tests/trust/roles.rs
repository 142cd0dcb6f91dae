//! Issue 13: roles by NATS permissions (PROTOCOL.md §Roles). An operator-mode hub mints users
//! whose JWTs carry exactly the subjects PROTOCOL.md lists for each role: a *node*, a
//! *serve-only node* (cannot write the desired state), an *operator* (deploys) and a *viewer*
//! (reads). A wrong list makes these tests fail.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::common::hub::{Hub, Permissions};
use crate::common::lattice::{
    Member, all_answer, array, eventually, join_as, logs, replicas_are, see_each_other, write,
};
use crate::common::{example_wasm, lattice_cli, manifest_with};

/// The lattice of these tests.
const L: &str = "default";

/// PROTOCOL.md §Roles: the inboxes of a CLI user, `_INBOX.cli.<its public key>.>`, as a
/// nats-server permission template.
const CLI_INBOXES: &str = "_INBOX.cli.{{subject()}}.>";

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.replace("<L>", L)).collect()
}

/// PROTOCOL.md §Roles, *node*: everything of its lattice, the JetStream API in any domain, the
/// KV and object store subjects (keyvalue-nats buckets are the apps' own names), inboxes and
/// the service API.
fn node() -> Permissions {
    let both = strings(&[
        "lattice.<L>.>",
        "_INBOX.>",
        "$SRV.>",
        "$JS.API.>",
        "$JS.*.API.>",
        "$JS.ACK.>",
        "$JS.FC.>",
        "$KV.>",
        "$O.>",
    ]);
    Permissions {
        pub_allow: both.clone(),
        sub_allow: both,
        ..Permissions::default()
    }
}

/// PROTOCOL.md §Roles, *serve-only node*: its lattice's subjects but deploy and undeploy
/// (a full node answering one would store it with its own authority), and of the JetStream API
/// only the reading verbs on the lattice's two streams: an allow-list, because a deny list
/// cannot see a `STREAM.CREATE` body that republishes into the apps bucket.
fn serve_only() -> Permissions {
    let mut publish = strings(&[
        "lattice.<L>.>",
        "_INBOX.>",
        "$SRV.>",
        "$JS.ACK.>",
        "$JS.FC.>",
    ]);
    for js in ["$JS.API", "$JS.*.API"] {
        publish.push(format!("{js}.INFO"));
        for stream in ["KV_lattice_<L>_apps", "OBJ_lattice_<L>_artifacts"] {
            let stream = stream.replace("<L>", L);
            publish.extend([
                format!("{js}.STREAM.INFO.{stream}"),
                format!("{js}.STREAM.MSG.GET.{stream}"),
                format!("{js}.DIRECT.GET.{stream}"),
                format!("{js}.DIRECT.GET.{stream}.>"),
                format!("{js}.CONSUMER.CREATE.{stream}"),
                format!("{js}.CONSUMER.CREATE.{stream}.>"),
                format!("{js}.CONSUMER.INFO.{stream}.*"),
                format!("{js}.CONSUMER.DELETE.{stream}.*"),
            ]);
        }
    }
    let control = strings(&[
        "lattice.<L>.ctl.v1.app.deploy",
        "lattice.<L>.ctl.v1.app.undeploy",
    ]);
    Permissions {
        pub_allow: publish,
        pub_deny: control.clone(),
        sub_allow: strings(&["lattice.<L>.>", "_INBOX.>", "$SRV.>"]),
        sub_deny: control,
    }
}

/// PROTOCOL.md §Roles, *viewer*: the control API's reading endpoints only.
fn viewer() -> Permissions {
    Permissions {
        pub_allow: strings(&[
            "lattice.<L>.ctl.v1.get.*",
            "lattice.<L>.ctl.v1.app.list",
            "lattice.<L>.ctl.v1.app.status",
            "lattice.<L>.ctl.v1.app.history",
        ]),
        sub_allow: vec![CLI_INBOXES.to_owned()],
        ..Permissions::default()
    }
}

/// PROTOCOL.md §Roles, *operator*: every control endpoint, and uploading artifacts into the
/// object store, through the JetStream API of domain `domain` (as the nodes found it).
/// Both API prefixes are listed: a server in a domain checks a client's `$JS.<domain>.API`
/// request after mapping it onto `$JS.API`, a leaf server before.
fn operator(domain: &str) -> Permissions {
    let bucket = format!("lattice_{L}_artifacts");
    let mut pub_allow = vec![format!("lattice.{L}.ctl.v1.>"), format!("$O.{bucket}.>")];
    for js in ["$JS.API".to_owned(), format!("$JS.{domain}.API")] {
        pub_allow.extend([
            format!("{js}.STREAM.INFO.OBJ_{bucket}"),
            format!("{js}.STREAM.CREATE.OBJ_{bucket}"),
            format!("{js}.STREAM.MSG.GET.OBJ_{bucket}"),
            format!("{js}.DIRECT.GET.OBJ_{bucket}.>"),
            format!("{js}.STREAM.PURGE.OBJ_{bucket}"),
        ]);
    }
    Permissions {
        pub_allow,
        sub_allow: vec![CLI_INBOXES.to_owned()],
        ..Permissions::default()
    }
}

/// A manifest of `app` (http-hello at `path`) whose one replica must run on a `zone=<zone>`
/// node.
fn hello_in_zone(app: &str, path: &str, zone: &str) -> String {
    let scaler = format!(
        "instances: 1\n            spread:\n              - name: {zone}\n                requirements:\n                  zone: {zone}"
    );
    manifest_with(app, "web", &example_wasm("http-hello"), path, &scaler)
}

/// `lattice ARGS -o json` connected to the hub as the user of `creds`.
fn as_user(hub: &Hub, creds: &Path, args: &[&str]) -> Output {
    let (url, creds) = (hub.client_url(), creds.to_string_lossy().into_owned());
    let mut all = args.to_vec();
    all.extend_from_slice(&["--nats-url", &url, "--creds", &creds, "-o", "json"]);
    lattice_cli(&all)
}

/// The JSON of a successful [`as_user`] run, else what went wrong.
fn json_as(hub: &Hub, creds: &Path, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = as_user(hub, creds, args);
    if !out.status.success() {
        return Err(format!(
            "`lattice {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

fn app_names(hub: &Hub, creds: &Path, members: &[&Member]) -> Vec<String> {
    let list =
        json_as(hub, creds, &["app", "list"]).unwrap_or_else(|e| panic!("{e}\n{}", logs(members)));
    array(list)
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// What nats-server answers a plain client of `hub`, connected as the user of `creds`, that
/// publishes to (or, with `subscribe`, subscribes to) `subject`: the text of the
/// `Permissions Violation` it reports, `None` if it reports none within 3 s.
fn violation(hub: &Hub, creds: &Path, subject: &str, subscribe: bool) -> Option<String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (errors, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_credentials_file(creds)
            .await
            .unwrap()
            .event_callback(move |event| {
                let errors = errors.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = errors.send(e.to_string());
                    }
                }
            })
            .connect(hub.client_url())
            .await
            .unwrap();
        // Held until the server answered (or not).
        let _subscription = if subscribe {
            Some(client.subscribe(subject.to_owned()).await.unwrap())
        } else {
            client
                .publish(subject.to_owned(), "{}".into())
                .await
                .unwrap();
            None
        };
        client.flush().await.unwrap();
        let wait = async {
            while let Some(error) = seen.recv().await {
                if error.contains("Permissions Violation") {
                    return Some(error);
                }
            }
            None
        };
        tokio::time::timeout(Duration::from_secs(3), wait)
            .await
            .ok()
            .flatten()
    })
}

#[test]
fn a_viewer_reads_an_operator_deploys_and_a_serve_only_node_runs_its_share() {
    let hub = Hub::start();
    let a = join_as(&hub, "node-a", "a", &node());
    let b = join_as(&hub, "serve-b", "b", &serve_only());
    b.wait_for_log(
        &["serve-only node", "$KV.lattice_default_apps.app"],
        Duration::from_secs(1),
    );
    assert_eq!(a.count_log("serve-only node"), 0, "{}", a.log());
    see_each_other(&[&a, &b]);
    let work = tempfile::tempdir().unwrap();
    let viewer = hub.user_creds_with(work.path(), "viewer.creds", &viewer());
    let operator = hub.user_creds_with(work.path(), "operator.creds", &operator(Hub::JS_DOMAIN));
    let file = write(
        work.path(),
        "hello.yaml",
        &hello_in_zone("hello", "/hello", "b"),
    );
    let file = file.to_string_lossy().into_owned();

    // The viewer sees the hosts and the apps, but cannot deploy: permission denied, exit 1,
    // nothing stored.
    let hosts = eventually(
        "the viewer to list both hosts",
        Duration::from_secs(15),
        &[&a, &b],
        || {
            let hosts = array(json_as(&hub, &viewer, &["get", "hosts"])?)?;
            if hosts.len() == 2 {
                Ok(hosts)
            } else {
                Err(format!("hosts {hosts:?}"))
            }
        },
    );
    assert_eq!(hosts.len(), 2);
    // Nor see other clients' inboxes (nodes' watch deliveries, RPC exchanges).
    let refused = violation(&hub, &viewer, "_INBOX.>", true);
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("Subscription to \"_INBOX.>\"")),
        "{refused:?}"
    );
    assert!(app_names(&hub, &viewer, &[&a, &b]).is_empty());
    let started = std::time::Instant::now();
    let out = as_user(&hub, &viewer, &["app", "deploy", &file]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("viewer's deploy, {:?}: {stderr}", started.elapsed());
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Its first step past `get.config` is the artifact upload, which it may not make.
    assert!(
        stderr.contains("permission denied: $JS.API.STREAM.INFO.OBJ_lattice_default_artifacts"),
        "{stderr}"
    );
    let out = as_user(&hub, &viewer, &["app", "undeploy", "hello"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "permission denied: lattice.{L}.ctl.v1.app.undeploy"
        )),
        "{stderr}"
    );
    assert!(app_names(&hub, &viewer, &[&a, &b]).is_empty());

    // The operator deploys; the serve-only node runs the replica placed on it.
    let outcome = json_as(&hub, &operator, &["app", "deploy", &file])
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&[&a, &b])));
    assert_eq!(outcome["name"], "hello", "{outcome}");
    eventually(
        "the replica on serve-b",
        Duration::from_secs(30),
        &[&a, &b],
        || replicas_are(&a, "hello", &[("node-a", 0), ("serve-b", 1)]),
    );
    all_answer(
        &[&a, &b],
        "/hello",
        "Hello from lattice: /hello",
        Duration::from_secs(20),
    );
    assert_eq!(app_names(&hub, &viewer, &[&a, &b]), ["hello"]);

    // A serve-only node's user cannot have the full node undeploy (or deploy) for it.
    let serve_only = hub.user_creds_with(work.path(), "serve-only.creds", &serve_only());
    let out = as_user(&hub, &serve_only, &["app", "undeploy", "hello"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "permission denied: lattice.{L}.ctl.v1.app.undeploy"
        )),
        "{stderr}"
    );
    assert_eq!(app_names(&hub, &viewer, &[&a, &b]), ["hello"]);
    // Nor create or update streams (one republishing into the apps bucket would write it).
    for subject in [
        "$JS.API.STREAM.CREATE.X".to_owned(),
        format!("$JS.{}.API.STREAM.CREATE.X", Hub::JS_DOMAIN),
        "$JS.API.STREAM.UPDATE.X".to_owned(),
    ] {
        let refused = violation(&hub, &serve_only, &subject, false);
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("STREAM.") && e.contains(".X")),
            "{subject}: {refused:?}"
        );
    }
    let status = json_as(&hub, &viewer, &["app", "status", "hello"]).unwrap();
    assert_eq!(status["state"], "deployed", "{status}");
    let history = array(json_as(&hub, &viewer, &["app", "history", "hello"]).unwrap()).unwrap();
    assert_eq!(history.len(), 1);

    // The serve-only node's config dir cannot write the desired state: it says why, keeps
    // serving, and nothing is stored.
    let local = hello_in_zone("local", "/local", "b");
    write(&b.config_dir, "local.yaml", &local);
    b.wait_for_log(
        &["manifest not applied", "local.yaml", "desired-state store"],
        Duration::from_secs(20),
    );
    assert!(
        crate::common::alive(b.pid()),
        "serve-b exited:\n{}",
        b.log()
    );
    all_answer(
        &[&a, &b],
        "/hello",
        "Hello from lattice: /hello",
        Duration::from_secs(5),
    );
    assert_eq!(app_names(&hub, &viewer, &[&a, &b]), ["hello"]);
}
