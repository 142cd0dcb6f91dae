//! Desired state of the lattice: apps and every version of them in a JetStream KV bucket
//! (`lattice_<lattice>_apps`, a head record per app and one key per version: [`layout`]),
//! mirrored by every node into sled so it restarts, and keeps serving, from the same state when
//! the KV is out of reach; beside it, node-local desired state: the apps of this node's config
//! dir while no lattice store is reachable, run on this node only until they move into the
//! store (`PROTOCOL.md` §Desired state).
//!
//! The mirror follows the KV with a watch (every change, at once) and a full pass every
//! [`RESYNC`] (changes a watch may have missed while the hub was away). Each key keeps its KV
//! revision, so an older value never replaces a newer one whatever order they arrive in. A
//! bucket that vanished or was created anew never empties the mirror: the node keeps running
//! what it has, logs an error naming the bucket and re-publishes its apps into the new bucket
//! (the newest record of each app wins: [`layout::AppHead::newer_than`]); keys that vanish from
//! the bucket without a delete marker (a purged stream) are re-published likewise.

pub mod layout;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use async_nats::jetstream::kv::Operation;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::manifest::{self, Manifest};
use super::plan;
use crate::lattice::membership::HostInfo;
use crate::nats::subjects;
use layout::{AppHead, AppsBucket, Record, WriteError, key_kind, parse_record};

/// How often the mirror re-reads the whole KV bucket, besides following its watch.
pub const RESYNC: Duration = Duration::from_secs(15);

/// Delay before an unreachable KV is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// How often a write of an app is tried again when another writer changed the app between its
/// read and its write.
pub const CAS_ATTEMPTS: usize = 5;

/// An app as the lattice stores it: every version given to it, and which one is deployed.
/// Assembled from the app's head and version keys ([`layout`]); the value of key `<app>` in
/// buckets written by earlier releases, JSON.
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
    /// From this node's node-local desired state (its config dir while no lattice store is
    /// reachable): placed on this node only.
    pub local: bool,
}

impl DesiredApp {
    /// The desired app of `record`, its deployed manifest parsed; `local` for node-local
    /// desired state.
    pub fn new(record: StoredApp, local: bool) -> DesiredApp {
        let manifest = match record.deployed_version() {
            Some(version) => parse_stored(version).map(Arc::new),
            None => Err(format!(
                "deployed version {:?} is not among the stored versions",
                record.deployed
            )),
        };
        DesiredApp {
            record,
            manifest,
            local,
        }
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

/// Places `desired` on `hosts` ([`plan::place`]), node-local apps on this node (`me`) only.
pub fn place(desired: &Desired, hosts: &[HostInfo], me: &str) -> plan::Placement {
    let mut placement = plan::place(desired, hosts);
    let local: Desired = desired
        .iter()
        .filter(|(_, app)| app.local)
        .map(|(name, app)| (name.clone(), app.clone()))
        .collect();
    if !local.is_empty() {
        let mine: Vec<HostInfo> = hosts.iter().filter(|h| h.id == me).cloned().collect();
        placement.extend(plan::place(&local, &mine));
    }
    placement
}

/// What the mirror keeps per KV key in sled: the revision and the value (JSON text), no value
/// once deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MirrorEntry {
    revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    /// Mirrors written by releases before one key per version: the record of key `<app>`.
    #[serde(default, skip_serializing)]
    record: Option<StoredApp>,
}

/// A KV key as the mirror holds it in memory.
#[derive(Debug, Clone)]
struct Entry {
    revision: u64,
    /// `None` once deleted.
    record: Option<Record>,
}

/// An app of the bucket as the mirror assembles it from its keys.
#[derive(Debug, Clone)]
struct SharedApp {
    record: StoredApp,
    generation: u64,
    updated_at_ms: u64,
    /// Revision of its head (or earlier release's record).
    revision: u64,
}

/// The mirror in memory.
#[derive(Default)]
struct State {
    /// Every key of the bucket seen, deleted ones included.
    entries: BTreeMap<String, Entry>,
    /// The apps of the bucket.
    shared: BTreeMap<String, SharedApp>,
    /// Node-local desired state: app → record.
    local: BTreeMap<String, StoredApp>,
    /// What runs: local apps over shared ones of the same name.
    desired: Desired,
}

impl State {
    fn live(&self, key: &str) -> Option<(u64, &Record)> {
        let entry = self.entries.get(key)?;
        Some((entry.revision, entry.record.as_ref()?))
    }

    fn assemble(&self, app: &str) -> Option<SharedApp> {
        if let Some((revision, Record::Head(head))) = self.live(&layout::head_key(app)) {
            let versions = head
                .versions
                .iter()
                .filter_map(|v| match self.live(&layout::version_key(app, v)) {
                    Some((_, Record::Version(version))) if version.version == *v => {
                        Some(version.clone())
                    }
                    _ => None,
                })
                .collect();
            return Some(SharedApp {
                record: StoredApp {
                    name: app.to_owned(),
                    deployed: head.deployed.clone(),
                    versions,
                },
                generation: head.generation,
                updated_at_ms: head.updated_at_ms,
                revision,
            });
        }
        if let Some((revision, Record::Legacy(record))) = self.live(app) {
            return Some(SharedApp {
                record: record.clone(),
                generation: 0,
                updated_at_ms: record
                    .versions
                    .iter()
                    .map(|v| v.stored_at_ms)
                    .max()
                    .unwrap_or(0),
                revision,
            });
        }
        None
    }

    /// Assembles `app` again; returns whether what runs of it changed.
    fn refresh(&mut self, app: &str) -> bool {
        match self.assemble(app) {
            Some(shared) => self.shared.insert(app.to_owned(), shared),
            None => self.shared.remove(app),
        };
        let want = match self.local.get(app) {
            Some(record) => Some((record, true)),
            None => self.shared.get(app).map(|s| (&s.record, false)),
        };
        match want {
            None => self.desired.remove(app).is_some(),
            Some((record, local)) => {
                if self
                    .desired
                    .get(app)
                    .is_some_and(|d| d.local == local && d.record == *record)
                {
                    return false;
                }
                let desired = DesiredApp::new(record.clone(), local);
                self.desired.insert(app.to_owned(), desired);
                true
            }
        }
    }
}

/// The node's copy of the apps bucket, in sled (tree `apps` of `<data-dir>/state`, per KV key),
/// with its node-local desired state (tree `apps_local`), and the parsed [`Desired`] state of
/// both published on a watch channel.
pub struct Mirror {
    tree: sled::Tree,
    /// Which bucket the entries came from (`bucket` → stream name and creation time), so a
    /// bucket created anew is told from the one mirrored: its revisions start again.
    meta: sled::Tree,
    local_tree: sled::Tree,
    state: Mutex<State>,
    desired: watch::Sender<Arc<Desired>>,
}

impl Mirror {
    /// Opens (or creates) the mirror in `db` and loads what it holds (mirrors of earlier
    /// releases included).
    ///
    /// # Errors
    /// sled cannot open the trees or read them.
    pub fn open(db: &sled::Db) -> anyhow::Result<Mirror> {
        let tree = db.open_tree("apps").context("opening the apps mirror")?;
        let meta = db
            .open_tree("apps_meta")
            .context("opening the apps mirror")?;
        let local_tree = db
            .open_tree("apps_local")
            .context("opening the node-local desired state")?;
        let mut state = State::default();
        for item in tree.iter() {
            let (key, value) = item.context("reading the apps mirror")?;
            let key = String::from_utf8_lossy(&key).into_owned();
            let entry = match serde_json::from_slice::<MirrorEntry>(&value) {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!(key, error = %e, "unreadable mirror entry ignored");
                    continue;
                }
            };
            let record = match (entry.value, entry.record) {
                (Some(value), _) => match parse_record(&key, value.as_bytes()) {
                    Ok(record) => record,
                    Err(e) => {
                        tracing::warn!(key, error = e, "unreadable mirror entry ignored");
                        continue;
                    }
                },
                (None, Some(record)) => Some(Record::Legacy(record)),
                (None, None) => None,
            };
            state.entries.insert(
                key,
                Entry {
                    revision: entry.revision,
                    record,
                },
            );
        }
        for item in local_tree.iter() {
            let (key, value) = item.context("reading the node-local desired state")?;
            let app = String::from_utf8_lossy(&key).into_owned();
            match serde_json::from_slice::<StoredApp>(&value) {
                Ok(record) => {
                    state.local.insert(app, record);
                }
                Err(e) => tracing::warn!(app, error = %e, "unreadable node-local app ignored"),
            }
        }
        let apps: BTreeSet<String> = state
            .entries
            .keys()
            .filter_map(|k| key_kind(k).map(|k| k.app().to_owned()))
            .chain(state.local.keys().cloned())
            .collect();
        for app in &apps {
            state.refresh(app);
        }
        let desired = watch::Sender::new(Arc::new(state.desired.clone()));
        Ok(Mirror {
            tree,
            meta,
            local_tree,
            state: Mutex::new(state),
            desired,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, state: &State) {
        self.desired.send_replace(Arc::new(state.desired.clone()));
    }

    /// Follows the desired state: a new value after every change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Desired>> {
        self.desired.subscribe()
    }

    /// The desired state now: the apps of the lattice's store, and this node's node-local ones
    /// (which take the place of a stored app of the same name).
    pub fn desired(&self) -> Arc<Desired> {
        self.desired.borrow().clone()
    }

    /// The record of `app` in the lattice's store, with its head's revision.
    pub fn get(&self, app: &str) -> Option<(u64, StoredApp)> {
        let state = self.lock();
        let shared = state.shared.get(app)?;
        Some((shared.revision, shared.record.clone()))
    }

    /// The generation of `app`'s head in the store as this node last saw it (0 for none).
    pub fn generation(&self, app: &str) -> u64 {
        self.lock().shared.get(app).map_or(0, |s| s.generation)
    }

    /// The record of `app` that runs: node-local, else the store's.
    pub fn record(&self, app: &str) -> Option<StoredApp> {
        self.lock().desired.get(app).map(|d| d.record.clone())
    }

    /// The node-local record of `app`.
    pub fn local(&self, app: &str) -> Option<StoredApp> {
        self.lock().local.get(app).cloned()
    }

    /// Sets (or with `None` drops) the node-local record of `app`, kept in sled.
    pub fn set_local(&self, app: &str, record: Option<StoredApp>) {
        let mut state = self.lock();
        let result = match &record {
            Some(record) => serde_json::to_vec(record)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Ok(self.local_tree.insert(app.as_bytes(), bytes).map(drop)?)),
            None => self
                .local_tree
                .remove(app.as_bytes())
                .map(drop)
                .map_err(Into::into),
        };
        if let Err(e) = result.and_then(|()| Ok(self.local_tree.flush().map(drop)?)) {
            tracing::error!(app, error = %e, "writing the node-local desired state");
        }
        match record {
            Some(record) => state.local.insert(app.to_owned(), record),
            None => state.local.remove(app),
        };
        if state.refresh(app) {
            self.publish(&state);
        }
    }

    /// Records the value of KV key `key` (or its deletion, `None`) at KV `revision`, unless
    /// the mirror already holds that key at that revision or a later one. Values that do not
    /// parse, and keys of no known shape, are ignored.
    pub fn apply(&self, key: &str, revision: u64, value: Option<&[u8]>) {
        let Some(kind) = key_kind(key) else { return };
        let record = match value.map(|v| parse_record(key, v)) {
            Some(Ok(record)) => record,
            Some(Err(e)) => {
                tracing::warn!(key, error = e, "malformed app record ignored");
                return;
            }
            None => None,
        };
        let mut state = self.lock();
        if state
            .entries
            .get(key)
            .is_some_and(|e| e.revision >= revision)
        {
            return;
        }
        self.persist(key, revision, value);
        self.flush();
        state
            .entries
            .insert(key.to_owned(), Entry { revision, record });
        if state.refresh(kind.app()) {
            self.publish(&state);
        }
    }

    /// [`Mirror::apply`] of every key a write stored.
    pub fn apply_written(&self, written: &layout::Written) {
        for (key, revision, value) in written {
            self.apply(key, *revision, value.as_deref());
        }
    }

    /// A full pass: `present` is every key of the bucket with its revision and value, read
    /// while the bucket's last revision was at least `last_revision`. Keys absent from it, and
    /// not changed since, are deleted. With `replace` (a bucket not mirrored before, whose
    /// revisions started again) every entry is taken from `present`, whatever its revision.
    fn resync(&self, last_revision: u64, present: Vec<(String, u64, Vec<u8>)>, replace: bool) {
        let mut state = self.lock();
        let mut touched = BTreeSet::new();
        let keys: BTreeSet<String> = present.iter().map(|(k, _, _)| k.clone()).collect();
        for (key, revision, value) in present {
            let Some(kind) = key_kind(&key) else { continue };
            let known = state.entries.get(&key);
            if known.is_some_and(|e| e.revision == revision && e.record.is_some())
                || (!replace && known.is_some_and(|e| e.revision >= revision))
            {
                continue;
            }
            let record = match parse_record(&key, &value) {
                Ok(record) => record,
                Err(e) => {
                    tracing::warn!(key, error = e, "malformed app record ignored");
                    continue;
                }
            };
            self.persist(&key, revision, Some(&value));
            touched.insert(kind.app().to_owned());
            state.entries.insert(key, Entry { revision, record });
        }
        let absent: Vec<(String, bool)> = state
            .entries
            .iter()
            .filter(|(k, e)| !keys.contains(*k) && (replace || e.revision <= last_revision))
            .map(|(k, e)| (k.clone(), e.record.is_some()))
            .collect();
        for (key, live) in absent {
            if let Some(kind) = key_kind(&key) {
                touched.insert(kind.app().to_owned());
            }
            if replace && !live {
                // A deletion in a bucket that is gone: nothing to order against any more.
                state.entries.remove(&key);
                if let Err(e) = self.tree.remove(key.as_bytes()) {
                    tracing::error!(key, error = %e, "writing the apps mirror");
                }
            } else if live {
                self.persist(&key, last_revision, None);
                state.entries.insert(
                    key,
                    Entry {
                        revision: last_revision,
                        record: None,
                    },
                );
            }
        }
        self.flush();
        let mut changed = false;
        for app in touched {
            changed |= state.refresh(&app);
        }
        if changed {
            self.publish(&state);
        }
    }

    fn persist(&self, key: &str, revision: u64, value: Option<&[u8]>) {
        let entry = MirrorEntry {
            revision,
            value: value.map(|v| String::from_utf8_lossy(v).into_owned()),
            record: None,
        };
        let result = serde_json::to_vec(&entry)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(self.tree.insert(key.as_bytes(), bytes)?));
        if let Err(e) = result {
            // The in-memory state still follows the lattice; only a restart would miss it.
            tracing::error!(key, error = %e, "writing the apps mirror");
        }
    }

    fn flush(&self) {
        if let Err(e) = self.tree.flush() {
            tracing::error!(error = %e, "writing the apps mirror");
        }
    }

    /// Keeps the mirror in step with the apps bucket of `lattice` through `js` (creating it,
    /// with `replicas` replicas, when missing), until `shutdown`: a watch for changes as they
    /// happen, and a full pass every [`RESYNC`] and after the KV comes back. While the KV cannot
    /// be reached the mirror keeps what it has.
    pub async fn follow(
        self: Arc<Self>,
        js: crate::nats::SharedJetStream,
        lattice: String,
        replicas: usize,
        shutdown: CancellationToken,
    ) {
        let mut unreachable_logged = false;
        loop {
            let context = js.context();
            let outcome = tokio::select! {
                outcome = self.follow_once(&context, &lattice, replicas, &mut unreachable_logged) => outcome,
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
        replicas: usize,
        unreachable_logged: &mut bool,
    ) -> anyhow::Result<()> {
        let bucket = AppsBucket::open(js, lattice, replicas).await?;
        let name = subjects::apps_bucket(lattice);
        let mut watch = bucket
            .kv()
            .watch_all()
            .await
            .with_context(|| format!("watching {name}"))?;
        self.full_pass(js, &bucket, &name).await?;
        if std::mem::take(unreachable_logged) {
            tracing::info!(bucket = name, "desired-state store reachable again");
        }
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
        loop {
            tokio::select! {
                entry = watch.next() => {
                    let entry = entry
                        .with_context(|| format!("the watch of {name} ended"))?
                        .with_context(|| format!("watching {name}"))?;
                    let value = match entry.operation {
                        Operation::Put => Some(&entry.value[..]),
                        Operation::Delete | Operation::Purge => None,
                    };
                    self.apply(&entry.key, entry.revision, value);
                }
                _ = resync.tick() => self.full_pass(js, &bucket, &name).await?,
            }
        }
    }

    /// Reads the whole bucket into the mirror. A bucket other than the one mirrored (deleted
    /// and created anew, or another JetStream's) first gets this node's apps re-published into
    /// it; so do apps whose keys vanished without a delete marker.
    async fn full_pass(
        &self,
        js: &jetstream::Context,
        bucket: &AppsBucket,
        name: &str,
    ) -> anyhow::Result<()> {
        // Fresh stream info: `Store::status` answers what was cached when the store was opened.
        let stream = js
            .get_stream(&bucket.kv().stream_name)
            .await
            .with_context(|| format!("reading {name}"))?;
        let info = stream.cached_info();
        let bucket_id = format!("{}@{}", bucket.kv().stream_name, info.created);
        let fresh = self.meta.get("bucket").ok().flatten().as_deref() != Some(bucket_id.as_bytes());
        if fresh {
            let apps: Vec<String> = self.lock().shared.keys().cloned().collect();
            if !apps.is_empty() {
                tracing::error!(
                    bucket = name,
                    apps = apps.len(),
                    "the apps bucket {name} is not the one this node mirrored (deleted and created anew, or another JetStream's): \
                     this node keeps running its apps and re-publishes them into it"
                );
                let republished = self.republish(bucket, &apps).await?;
                tracing::info!(bucket = name, republished, "apps re-published into {name}");
            }
        }
        let (mut last_revision, mut present) = list(js, bucket, name).await?;
        if !fresh {
            let listed: BTreeSet<&str> = present.iter().map(|(k, _, _)| k.as_str()).collect();
            let missing: Vec<String> = self
                .lock()
                .entries
                .iter()
                .filter(|(k, e)| e.record.is_some() && !listed.contains(k.as_str()))
                .map(|(k, _)| k.clone())
                .collect();
            let mut vanished = BTreeSet::new();
            for key in missing {
                // A deletion leaves a marker; no trace at all is a loss.
                let trace = bucket
                    .kv()
                    .entry(key.clone())
                    .await
                    .with_context(|| format!("reading {name}"))?;
                if trace.is_none()
                    && let Some(kind) = key_kind(&key)
                {
                    vanished.insert(kind.app().to_owned());
                }
            }
            if !vanished.is_empty() {
                let apps: Vec<String> = vanished.into_iter().collect();
                tracing::error!(
                    bucket = name,
                    apps = ?apps,
                    "records vanished from the apps bucket {name} without being deleted: re-publishing them"
                );
                self.republish(bucket, &apps).await?;
                (last_revision, present) = list(js, bucket, name).await?;
            }
        }
        self.resync(last_revision, present, fresh);
        if fresh && let Err(e) = self.meta.insert("bucket", bucket_id.as_bytes()) {
            tracing::error!(error = %e, "writing the apps mirror");
        }
        Ok(())
    }

    /// Writes this node's record of each of `apps` into `bucket`, where the bucket holds none
    /// or an older one ([`AppHead::newer_than`]). Returns how many were written.
    ///
    /// # Errors
    /// The store cannot be written.
    async fn republish(&self, bucket: &AppsBucket, apps: &[String]) -> anyhow::Result<usize> {
        let mut written = 0;
        for app in apps {
            let Some(mine) = self.lock().shared.get(app).cloned() else {
                continue;
            };
            let head = AppHead {
                name: app.clone(),
                deployed: mine.record.deployed.clone(),
                versions: mine
                    .record
                    .versions
                    .iter()
                    .map(|v| v.version.clone())
                    .collect(),
                generation: mine.generation,
                updated_at_ms: mine.updated_at_ms,
            };
            for attempt in 1..=CAS_ATTEMPTS {
                let current = bucket.read_app(app).await.map_err(anyhow::Error::msg)?;
                let (generation, updated_at_ms) = current.age();
                if current.exists() && !head.newer_than(generation, updated_at_ms) {
                    break;
                }
                match bucket
                    .write_app(&current, &head, &mine.record.versions)
                    .await
                {
                    Ok(_) => {
                        written += 1;
                        break;
                    }
                    Err(WriteError::Conflict(_)) if attempt < CAS_ATTEMPTS => {}
                    Err(e) => anyhow::bail!("re-publishing app {app:?}: {e}"),
                }
            }
        }
        Ok(written)
    }
}

/// Every key of the bucket with its revision and value, and the bucket's last revision when
/// the listing started.
async fn list(
    js: &jetstream::Context,
    bucket: &AppsBucket,
    name: &str,
) -> anyhow::Result<(u64, Vec<(String, u64, Vec<u8>)>)> {
    let kv = bucket.kv();
    let last_revision = js
        .get_stream(&kv.stream_name)
        .await
        .with_context(|| format!("reading {name}"))?
        .cached_info()
        .state
        .last_sequence;
    let keys: Vec<String> = kv
        .keys()
        .await
        .with_context(|| format!("listing {name}"))?
        .try_collect()
        .await
        .with_context(|| format!("listing {name}"))?;
    let mut present = Vec::new();
    for key in keys {
        if key_kind(&key).is_none() {
            continue;
        }
        let Some(entry) = kv
            .entry(key.clone())
            .await
            .with_context(|| format!("reading {key} of {name}"))?
        else {
            continue;
        };
        if entry.operation == Operation::Put {
            present.push((key, entry.revision, entry.value.to_vec()));
        }
    }
    Ok((last_revision, present))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(version: &str, at: u64) -> StoredVersion {
        StoredVersion {
            version: version.into(),
            manifest: "not yaml: [".into(),
            images: BTreeMap::new(),
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

    fn json<T: Serialize>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).unwrap()
    }

    fn head(name: &str, deployed: &str, versions: &[&str], generation: u64) -> AppHead {
        AppHead {
            name: name.into(),
            deployed: deployed.into(),
            versions: versions.iter().map(|v| (*v).to_owned()).collect(),
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
            mirror.resync(8, vec![("a".into(), 5, json(&record("a", "v2")))], false);
            assert!(mirror.get("c").is_some());
            mirror.resync(9, vec![("a".into(), 5, json(&record("a", "v2")))], false);
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
            vec![
                ("a".into(), 1, json(&record("a", "v3"))),
                ("b".into(), 2, json(&record("b", "v9"))),
            ],
            true,
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
}
