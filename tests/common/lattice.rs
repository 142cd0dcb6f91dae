//! A lattice of `lattice up` nodes as tests drive it: [`Member`] nodes joined to a
//! [`Hub`](super::hub::Hub) (or standalone), the `lattice` CLI through a node (`-o json`), and
//! polling helpers that panic with every node's log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use super::Node;
use super::hub::{Hub, Permissions};

/// Heartbeat interval of test nodes.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// How long a node may take to say `lattice node is up`.
pub const UP_TIMEOUT: Duration = Duration::from_secs(20);

/// A lattice node in its own temp dir (config dir `config`, data dir `data`, its creds file),
/// joined to a hub as a leaf node (or standalone, with its own JetStream). It keeps its dirs and
/// flags so it can be started again.
pub struct Member {
    /// Its `--name`.
    pub name: String,
    /// The running (or killed) process.
    node: Node,
    /// The flags it was started with.
    flags: Vec<String>,
    /// Holds `config/`, `data/` and the creds file.
    dir: tempfile::TempDir,
}

impl std::ops::Deref for Member {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.node
    }
}

impl std::ops::DerefMut for Member {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.node
    }
}

/// Starts node `name` labelled `zone=<zone>` in lattice `default`, joined to `hub` as a leaf
/// node with a fresh user's creds (nothing else: the node finds the hub's JetStream itself) and
/// 1 s heartbeats; waits until it is up and its leaf uplink is connected.
pub fn join(hub: &Hub, name: &str, zone: &str) -> Member {
    join_as(hub, name, zone, &Permissions::default())
}

/// As [`join`], with `extra` flags (e.g. `--insecure-registry HOST`).
pub fn join_with(hub: &Hub, name: &str, zone: &str, extra: &[String]) -> Member {
    join_flags(hub, name, zone, &Permissions::default(), extra)
}

/// As [`join`], with a hub user whose JWT carries `permissions` (a role of PROTOCOL.md §Roles).
pub fn join_as(hub: &Hub, name: &str, zone: &str, permissions: &Permissions) -> Member {
    join_flags(hub, name, zone, permissions, &[])
}

fn join_flags(
    hub: &Hub,
    name: &str,
    zone: &str,
    permissions: &Permissions,
    extra: &[String],
) -> Member {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    let creds = hub.user_creds_with(dir.path(), "node.creds", permissions);
    let flags: Vec<String> = vec![
        "--creds".into(),
        creds.to_string_lossy().into_owned(),
        "--leaf-url".into(),
        hub.leaf_url(),
        "--name".into(),
        name.into(),
        "--label".into(),
        format!("zone={zone}"),
        "--lattice".into(),
        "default".into(),
        "--heartbeat-interval".into(),
        format!("{}ms", HEARTBEAT.as_millis()),
    ];
    let flags: Vec<String> = flags.into_iter().chain(extra.iter().cloned()).collect();
    let node = start(dir.path(), &flags);
    node.wait_for_log(&["leaf uplink connected"], Duration::from_secs(10));
    Member {
        name: name.into(),
        node,
        flags,
        dir,
    }
}

/// Starts a standalone node `name` (no creds: its own nats-server with JetStream on loopback,
/// its own lattice) with 1 s heartbeats; waits until it is up.
pub fn standalone(name: &str) -> Member {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("config")).unwrap();
    let flags: Vec<String> = vec![
        "--name".into(),
        name.into(),
        "--heartbeat-interval".into(),
        format!("{}ms", HEARTBEAT.as_millis()),
    ];
    let node = start(dir.path(), &flags);
    Member {
        name: name.into(),
        node,
        flags,
        dir,
    }
}

/// Starts `lattice up` on `dir/config` and `dir/data` with `flags`; waits until it is up.
pub fn start(dir: &Path, flags: &[String]) -> Node {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let node = Node::start_in(&dir.join("config"), &dir.join("data"), &flags);
    node.wait_for_log(&["lattice node is up"], UP_TIMEOUT);
    node
}

impl Member {
    /// Starts the node again on the same dirs with the same flags (the old process must have
    /// exited); waits until it is up, not for its uplink.
    pub fn restart(&mut self) {
        self.node = start(self.dir.path(), &self.flags);
    }

    /// SIGKILL: no `host_stopped`, the others must notice the missing heartbeats.
    pub fn sigkill(&self) {
        kill(Pid::from_raw(self.pid()), Signal::SIGKILL).unwrap();
    }

    /// As [`Node::try_json`], the error naming this node.
    pub fn try_json(&self, args: &[&str]) -> Result<Value, String> {
        self.node
            .try_json(args)
            .map_err(|e| format!("through {}: {e}", self.name))
    }

    /// As [`Member::try_json`], panicking with the error and this node's log.
    pub fn json(&self, args: &[&str]) -> Value {
        self.try_json(args)
            .unwrap_or_else(|e| panic!("{e}\n{}", logs(&[self])))
    }

    /// `lattice app deploy FILE -o json` through this node; panics unless it succeeds.
    pub fn deploy(&self, file: &Path) -> Value {
        let file = file.to_string_lossy();
        self.json(&["app", "deploy", &file])
    }

    /// `lattice app status APP -o json` through this node.
    pub fn status(&self, app: &str) -> Result<Value, String> {
        self.try_json(&["app", "status", app])
    }

    /// `lattice get inventory -o json` through this node: one entry per host.
    pub fn inventory(&self) -> Result<Vec<Value>, String> {
        array(self.try_json(&["get", "inventory"])?)
    }

    /// Names of the apps `lattice app list -o json` through this node lists.
    pub fn app_names(&self) -> Result<Vec<String>, String> {
        Ok(array(self.try_json(&["app", "list"])?)?
            .iter()
            .map(|a| a["name"].as_str().unwrap_or("?").to_owned())
            .collect())
    }

    /// Sorted names of the hosts `lattice get hosts -o json` through this node lists.
    pub fn host_names(&self) -> Result<Vec<String>, String> {
        let mut names: Vec<String> = array(self.try_json(&["get", "hosts"])?)?
            .iter()
            .map(|h| h["name"].as_str().unwrap_or("?").to_owned())
            .collect();
        names.sort();
        Ok(names)
    }
}

/// The elements of a JSON array, or an error naming what came instead.
pub fn array(value: Value) -> Result<Vec<Value>, String> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(format!("expected a JSON array, got {other}")),
    }
}

/// The logs of `members`, each under a header with its name.
pub fn logs(members: &[&Member]) -> String {
    members
        .iter()
        .map(|m| format!("---- log of {} ----\n{}", m.name, m.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Polls `check` every 100 ms until it returns `Ok`, and returns that. After `timeout` panics
/// naming `what`, the last `Err` (the state last seen) and the logs of `members`.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    members: &[&Member],
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(value) => return value,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}; last seen: {last}\n{}",
                logs(members)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until every one of `members` lists exactly `members` as the lattice's hosts.
pub fn see_each_other(members: &[&Member]) {
    let mut want: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    want.sort();
    for member in members {
        eventually(
            &format!("{} to list the hosts {want:?}", member.name),
            Duration::from_secs(15),
            members,
            || {
                let names = member.host_names()?;
                if names == want {
                    Ok(())
                } else {
                    Err(format!("hosts {names:?}"))
                }
            },
        );
    }
}

/// Writes `text` to `dir/file`; returns the path.
pub fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// Replicas of `app` (all components and versions) per host name in `inventory`: every listed
/// host, 0 when it runs none.
pub fn replicas(inventory: &[Value], app: &str) -> BTreeMap<String, u64> {
    inventory
        .iter()
        .map(|host| {
            let count: u64 = host["components"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["app"] == app)
                .map(|c| c["replicas"].as_u64().unwrap_or(0))
                .sum();
            (host["name"].as_str().unwrap_or("?").to_owned(), count)
        })
        .collect()
}

/// A map from host name to replicas.
pub fn counts(want: &[(&str, u64)]) -> BTreeMap<String, u64> {
    want.iter().map(|(n, r)| ((*n).to_owned(), *r)).collect()
}

/// `Ok(inventory)` when the inventory through `via` lists exactly the hosts of `want`, each
/// running that many replicas of `app`.
pub fn replicas_are(via: &Member, app: &str, want: &[(&str, u64)]) -> Result<Vec<Value>, String> {
    let inventory = via.inventory()?;
    let got = replicas(&inventory, app);
    let want = counts(want);
    if got == want {
        Ok(inventory)
    } else {
        Err(format!(
            "replicas of {app} per host {got:?}, want {want:?}; inventory {inventory:?}"
        ))
    }
}

/// `Ok(status)` when `app status` through `via` says `state`.
pub fn state_is(via: &Member, app: &str, state: &str) -> Result<Value, String> {
    let status = via.status(app)?;
    if status["state"] == state {
        Ok(status)
    } else {
        Err(format!("status {status}"))
    }
}

/// Component `name` of an `app status` answer.
pub fn component<'a>(status: &'a Value, name: &str) -> Result<&'a Value, String> {
    status["components"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .ok_or_else(|| format!("no component {name} in status {status}"))
}

/// `Ok` when `GET path` through `node` answers 200 with a body starting with `prefix`.
pub fn answers(node: &Member, path: &str, prefix: &str) -> Result<(), String> {
    match node.get(path) {
        Some((200, body)) if body.starts_with(prefix) => Ok(()),
        other => Err(format!(
            "GET {path} through {}: {other:?}, want 200 {prefix:?}…",
            node.name
        )),
    }
}

/// Polls until `GET path` through each of `members` answers 200 with a body starting with
/// `prefix`.
pub fn all_answer(members: &[&Member], path: &str, prefix: &str, timeout: Duration) {
    for member in members {
        eventually(
            &format!("{} to answer {path} with {prefix:?}", member.name),
            timeout,
            members,
            || answers(member, path, prefix),
        );
    }
}
