//! Desired state shared by the lattice: one record per app, with every version, in a JetStream
//! KV bucket (`lattice_<lattice>_apps`, key = app name, as wadm keeps a `StoredManifest` per
//! model), mirrored by every node into sled so it restarts, and keeps serving, from the same
//! state when the KV is out of reach (`PROTOCOL.md` §Desired state).
//!
//! The mirror follows the KV with a watch (every change, at once) and a full pass every
//! [`RESYNC`] (changes a watch may have missed while the hub was away). Each entry keeps its KV
//! revision, so an older value never replaces a newer one whatever order they arrive in.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use async_nats::jetstream::kv::{Operation, Store};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::manifest::{self, Manifest};
use crate::nats::subjects;

/// How often the mirror re-reads the whole KV bucket, besides following its watch.
pub const RESYNC: Duration = Duration::from_secs(15);

/// Delay before an unreachable KV is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// An app as the lattice stores it: every version given to it, and which one is deployed.
/// The value of key `<app>` in the apps bucket, JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredApp {
    /// App name (`metadata.name`).
    pub name: String,
    /// The version that runs.
    pub deployed: String,
    /// Every version stored, oldest first.
    pub versions: Vec<StoredVersion>,
}

impl StoredApp {
    /// The deployed version's record.
    pub fn deployed_version(&self) -> Option<&StoredVersion> {
        self.versions.iter().find(|v| v.version == self.deployed)
    }

    /// Every artifact digest any stored version names.
    pub fn digests(&self) -> impl Iterator<Item = &str> {
        self.versions
            .iter()
            .flat_map(|v| v.images.values().map(String::as_str))
    }
}

/// One version of an app's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    /// Version name: `--version`, else `metadata.annotations.version`, else `sha-<12 hex of the
    /// manifest's sha256>`.
    pub version: String,
    /// The manifest's YAML text as given.
    pub manifest: String,
    /// The artifact of each component: component name → sha256 of its wasm (lowercase hex).
    pub images: BTreeMap<String, String>,
    /// When this version was stored, in ms since the Unix epoch.
    pub stored_at_ms: u64,
    /// Where it came from.
    pub source: Source,
}

/// Where a manifest version came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// `lattice app deploy` (or the control API).
    Cli,
    /// A file in a node's config dir.
    File {
        /// The node's id.
        node_id: String,
        /// The node's name.
        node: String,
        /// The file.
        path: String,
    },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Cli => f.write_str("cli"),
            Source::File { node, path, .. } => write!(f, "file {node}:{path}"),
        }
    }
}

/// A deployed app as every node reads it: the record and its deployed manifest, parsed with
/// its artifacts bound (or why it cannot be, which should not happen: it was validated).
#[derive(Debug, Clone)]
pub struct DesiredApp {
    /// The stored record.
    pub record: StoredApp,
    /// The deployed version's manifest.
    pub manifest: Result<Arc<Manifest>, String>,
}

impl DesiredApp {
    fn new(record: StoredApp) -> DesiredApp {
        let manifest = match record.deployed_version() {
            Some(version) => parse_stored(version).map(Arc::new),
            None => Err(format!(
                "deployed version {:?} is not among the stored versions",
                record.deployed
            )),
        };
        DesiredApp { record, manifest }
    }

    /// When the app was first stored (its oldest version), in ms since the epoch: apps stored
    /// earlier keep a contested route.
    pub fn first_stored_ms(&self) -> u64 {
        self.record
            .versions
            .first()
            .map_or(u64::MAX, |v| v.stored_at_ms)
    }
}

/// Parses a stored version's manifest and binds its artifacts.
///
/// # Errors
/// The text does not parse or a component has no artifact (the message names the field).
pub fn parse_stored(version: &StoredVersion) -> Result<Manifest, String> {
    let mut manifest =
        manifest::parse(&version.manifest, Path::new("/")).map_err(|e| e.to_string())?;
    manifest
        .bind_artifacts(&version.images)
        .map_err(|e| e.to_string())?;
    Ok(manifest)
}

/// The desired state of the lattice: deployed apps by name.
pub type Desired = BTreeMap<String, DesiredApp>;

/// What the mirror keeps per key: the KV revision and the record, `None` once deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MirrorEntry {
    revision: u64,
    record: Option<StoredApp>,
}

/// The node's copy of the apps bucket, in sled (tree `apps` of `<data-dir>/state`), with the
/// parsed [`Desired`] state published on a watch channel.
pub struct Mirror {
    tree: sled::Tree,
    /// Which bucket the entries came from (`bucket` → its creation time), so a bucket created
    /// anew (wiped, restored, another JetStream) replaces the mirror instead of hiding behind
    /// its higher revisions.
    meta: sled::Tree,
    entries: Mutex<BTreeMap<String, MirrorEntry>>,
    desired: watch::Sender<Arc<Desired>>,
}

impl Mirror {
    /// Opens (or creates) the mirror in `db` and loads what it holds.
    ///
    /// # Errors
    /// sled cannot open the tree or read it.
    pub fn open(db: &sled::Db) -> anyhow::Result<Mirror> {
        let tree = db.open_tree("apps").context("opening the apps mirror")?;
        let meta = db
            .open_tree("apps_meta")
            .context("opening the apps mirror")?;
        let mut entries = BTreeMap::new();
        for item in tree.iter() {
            let (key, value) = item.context("reading the apps mirror")?;
            let key = String::from_utf8_lossy(&key).into_owned();
            match serde_json::from_slice::<MirrorEntry>(&value) {
                Ok(entry) => {
                    entries.insert(key, entry);
                }
                Err(e) => {
                    tracing::warn!(app = key, error = %e, "unreadable mirror entry ignored")
                }
            }
        }
        let desired = watch::Sender::new(Arc::new(build_desired(&entries)));
        Ok(Mirror {
            tree,
            meta,
            entries: Mutex::new(entries),
            desired,
        })
    }

    /// Follows the desired state: a new value after every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Desired>> {
        self.desired.subscribe()
    }

    /// The desired state now.
    pub fn desired(&self) -> Arc<Desired> {
        self.desired.borrow().clone()
    }

    /// The stored record of `app` (deployed or not: every app in the mirror is deployed).
    pub fn get(&self, app: &str) -> Option<(u64, StoredApp)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(app)?;
        Some((entry.revision, entry.record.clone()?))
    }

    /// Records `record` (or its deletion, `None`) for `key` at KV `revision`, unless the mirror
    /// already holds that key at a later revision.
    pub fn apply(&self, key: &str, revision: u64, record: Option<StoredApp>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.get(key).is_some_and(|e| e.revision >= revision) {
            return;
        }
        let entry = MirrorEntry { revision, record };
        self.persist(key, &entry);
        entries.insert(key.to_owned(), entry);
        self.desired.send_replace(Arc::new(build_desired(&entries)));
    }

    /// A full pass: `present` is every key of bucket `bucket_id` (its creation time) with its
    /// revision and record, read while the bucket's last revision was at least
    /// `last_revision`. Keys absent from it, and not changed since, are deleted. Entries of
    /// another bucket are dropped first.
    fn resync(&self, bucket_id: &str, last_revision: u64, present: Vec<(String, u64, StoredApp)>) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        let known = self.meta.get("bucket").ok().flatten();
        if known.as_deref() != Some(bucket_id.as_bytes()) {
            if known.is_some() && !entries.is_empty() {
                tracing::warn!(
                    bucket = bucket_id,
                    "the apps bucket is not the one mirrored (created anew or another JetStream); mirroring it afresh"
                );
                entries.clear();
                if let Err(e) = self.tree.clear() {
                    tracing::error!(error = %e, "clearing the apps mirror");
                }
                changed = true;
            }
            if let Err(e) = self.meta.insert("bucket", bucket_id.as_bytes()) {
                tracing::error!(error = %e, "writing the apps mirror");
            }
        }
        let keys: std::collections::BTreeSet<String> =
            present.iter().map(|(k, _, _)| k.clone()).collect();
        for (key, revision, record) in present {
            if entries.get(&key).is_some_and(|e| e.revision >= revision) {
                continue;
            }
            let entry = MirrorEntry {
                revision,
                record: Some(record),
            };
            self.persist(&key, &entry);
            entries.insert(key, entry);
            changed = true;
        }
        let gone: Vec<String> = entries
            .iter()
            .filter(|(k, e)| !keys.contains(*k) && e.revision <= last_revision)
            .filter(|(_, e)| e.record.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            let entry = MirrorEntry {
                revision: last_revision,
                record: None,
            };
            self.persist(&key, &entry);
            entries.insert(key, entry);
            changed = true;
        }
        if changed {
            self.desired.send_replace(Arc::new(build_desired(&entries)));
        }
    }

    fn persist(&self, key: &str, entry: &MirrorEntry) {
        let result = serde_json::to_vec(entry)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(self.tree.insert(key.as_bytes(), bytes)?))
            .and_then(|_| Ok(self.tree.flush()?));
        if let Err(e) = result {
            // The in-memory state still follows the lattice; only a restart would miss it.
            tracing::error!(app = key, error = %e, "writing the apps mirror");
        }
    }

    /// Keeps the mirror in step with the apps bucket of `lattice` through `js`, until
    /// `shutdown`: a watch for changes as they happen, and a full pass every [`RESYNC`] and
    /// after the KV comes back. While the KV cannot be reached the mirror keeps what it has.
    pub async fn follow(
        self: Arc<Self>,
        js: crate::nats::SharedJetStream,
        lattice: String,
        shutdown: CancellationToken,
    ) {
        let mut unreachable_logged = false;
        loop {
            let context = js.context();
            let outcome = tokio::select! {
                outcome = self.follow_once(&context, &lattice, &mut unreachable_logged) => outcome,
                () = shutdown.cancelled() => return,
            };
            if let Err(e) = outcome
                && !unreachable_logged
            {
                unreachable_logged = true;
                tracing::warn!(
                    bucket = subjects::apps_bucket(&lattice),
                    error = format!("{e:#}"),
                    "desired-state store unreachable; running from the local mirror"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn follow_once(
        &self,
        js: &jetstream::Context,
        lattice: &str,
        unreachable_logged: &mut bool,
    ) -> anyhow::Result<()> {
        let kv = apps_kv(js, lattice).await?;
        let mut watch = kv.watch_all().await.context("watching the apps bucket")?;
        self.full_pass(js, &kv).await?;
        if std::mem::take(unreachable_logged) {
            tracing::info!(
                bucket = subjects::apps_bucket(lattice),
                "desired-state store reachable again"
            );
        }
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
        loop {
            tokio::select! {
                entry = watch.next() => {
                    let entry = entry
                        .context("the apps bucket watch ended")?
                        .context("watching the apps bucket")?;
                    let record = match entry.operation {
                        Operation::Put => match serde_json::from_slice::<StoredApp>(&entry.value) {
                            Ok(record) => Some(record),
                            Err(e) => {
                                tracing::warn!(app = entry.key, error = %e, "malformed app record ignored");
                                continue;
                            }
                        },
                        Operation::Delete | Operation::Purge => None,
                    };
                    self.apply(&entry.key, entry.revision, record);
                }
                _ = resync.tick() => self.full_pass(js, &kv).await?,
            }
        }
    }

    async fn full_pass(&self, js: &jetstream::Context, kv: &Store) -> anyhow::Result<()> {
        // Fresh stream info: `Store::status` answers what was cached when the store was opened.
        let stream = js
            .get_stream(&kv.stream_name)
            .await
            .context("reading the apps bucket")?;
        let info = stream.cached_info();
        let last_revision = info.state.last_sequence;
        let bucket_id = format!("{}@{}", kv.stream_name, info.created);
        let keys: Vec<String> = kv
            .keys()
            .await
            .context("listing the apps bucket")?
            .try_collect()
            .await
            .context("listing the apps bucket")?;
        let mut present = Vec::new();
        for key in keys {
            let Some(entry) = kv
                .entry(key.clone())
                .await
                .context("reading an app record")?
            else {
                continue;
            };
            if entry.operation != Operation::Put {
                continue;
            }
            match serde_json::from_slice::<StoredApp>(&entry.value) {
                Ok(record) => present.push((key, entry.revision, record)),
                Err(e) => tracing::warn!(app = key, error = %e, "malformed app record ignored"),
            }
        }
        self.resync(&bucket_id, last_revision, present);
        Ok(())
    }
}

fn build_desired(entries: &BTreeMap<String, MirrorEntry>) -> Desired {
    entries
        .iter()
        .filter_map(|(k, e)| Some((k.clone(), DesiredApp::new(e.record.clone()?))))
        .collect()
}

/// The apps bucket of `lattice`, created when missing (history 1: the record holds every
/// version), by [`crate::nats::kv::open_bucket`].
///
/// # Errors
/// JetStream cannot be reached, or refuses to create the bucket.
pub async fn apps_kv(js: &jetstream::Context, lattice: &str) -> anyhow::Result<Store> {
    let bucket = subjects::apps_bucket(lattice);
    crate::nats::kv::open_bucket(
        js,
        &bucket,
        &format!("desired state (app manifests) of lattice {lattice}"),
        crate::nats::kv::IfMissing::Create,
    )
    .await
    .map_err(anyhow::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, version: &str) -> StoredApp {
        StoredApp {
            name: name.into(),
            deployed: version.into(),
            versions: vec![StoredVersion {
                version: version.into(),
                manifest: "not yaml: [".into(),
                images: BTreeMap::new(),
                stored_at_ms: 1,
                source: Source::Cli,
            }],
        }
    }

    #[test]
    fn the_mirror_keeps_the_latest_revision_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let mirror = Mirror::open(&db).unwrap();
            let seen = mirror.subscribe();
            mirror.apply("a", 5, Some(record("a", "v2")));
            mirror.apply("a", 3, Some(record("a", "v1")));
            assert_eq!(mirror.get("a").unwrap().1.deployed, "v2");
            assert!(seen.has_changed().unwrap());
            assert!(
                mirror.desired()["a"].manifest.is_err(),
                "bad text is reported"
            );
            mirror.apply("b", 6, Some(record("b", "v1")));
            mirror.apply("b", 7, None);
            // A stale put of a deleted key does not bring it back.
            mirror.apply("b", 6, Some(record("b", "v1")));
            assert!(mirror.get("b").is_none());
            // A full pass that no longer lists a key drops it, unless it changed since.
            mirror.apply("c", 9, Some(record("c", "v1")));
            mirror.resync("one", 8, vec![("a".into(), 5, record("a", "v2"))]);
            assert!(mirror.get("c").is_some());
            mirror.resync("one", 9, vec![("a".into(), 5, record("a", "v2"))]);
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
        // The bucket created anew: its revisions start again, and win.
        mirror.resync("two", 1, vec![("b".into(), 1, record("b", "v9"))]);
        assert!(mirror.get("a").is_none());
        assert_eq!(mirror.get("b").unwrap().1.deployed, "v9");
    }
}
