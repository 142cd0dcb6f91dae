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

mod follow;
use follow::Listing;
pub mod layout;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::manifest::{self, Manifest};
use super::oci::OciPin;
use super::plan;
use crate::lattice::membership::HostInfo;
use layout::{Record, key_kind, parse_record};

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
    /// For each component whose `image` is an OCI reference: the registry manifest its
    /// artifact came from (the tag resolved at deploy); absent in records of earlier releases.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub oci: BTreeMap<String, OciPin>,
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
    manifest.bind_registry_pins(&version.oci);
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
                .filter_map(|v| match self.live(&head.key(v)) {
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

    /// A full pass: `listing` is every key of the bucket, read while the bucket's last
    /// revision was at least `last_revision`, with its revision and value unless the mirror's
    /// copy was taken as it is. Keys absent from it, and not changed since, are deleted. With
    /// `replace` (a bucket not mirrored before, whose revisions started again) every entry is
    /// taken from the listing, whatever its revision. The keys of the apps of `spared` (which
    /// could not be re-published into the bucket) are neither taken nor deleted: the mirror's
    /// copy of them stands.
    fn resync(
        &self,
        last_revision: u64,
        listing: Listing,
        replace: bool,
        spared: &BTreeSet<String>,
    ) {
        let mut state = self.lock();
        let mut touched = BTreeSet::new();
        let Listing { present, kept } = listing;
        let keys: BTreeSet<String> = present
            .iter()
            .map(|(k, _, _)| k.clone())
            .chain(kept)
            .collect();
        for (key, revision, value) in present {
            let Some(kind) = key_kind(&key) else { continue };
            // The mirror's copy of a spared app stands whole: the bucket's may be older.
            if spared.contains(kind.app()) {
                continue;
            }
            let known = state.entries.get(&key);
            // A bucket created anew numbers its revisions from 1 again: an equal revision
            // says nothing of its value then.
            if !replace && known.is_some_and(|e| e.revision >= revision) {
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
            .filter(|(k, e)| {
                !keys.contains(*k)
                    && (replace || e.revision <= last_revision)
                    && !key_kind(k).is_some_and(|kind| spared.contains(kind.app()))
            })
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
}

#[cfg(test)]
mod tests;
