//! The keys of the apps bucket (`PROTOCOL.md` §Desired state): per app a head record
//! (`app.<app>`: the deployed version, the names of all versions and their keys) and one key
//! per version (`ver.<app>.<32 hex of the sha256 of the version's name and content>`), so an
//! app's history is not bounded by one value's `max_payload`, and a version key holds one
//! content for good (a version undeployed and deployed again with other content gets another
//! key). Heads written before keys named the content list no keys: their versions' keys hash
//! the name alone ([`version_key`]), and are read as they are. Buckets written by earlier
//! releases hold one record per app with every version (key `<app>`); they are read as they
//! are and rewritten in this layout by the next deploy of the app.
//!
//! [`AppsBucket`] reads and writes whole apps in this layout with compare-and-set on the head.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream;
use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{StoredApp, StoredVersion};
use crate::host::hex;
use crate::nats::subjects;

/// The head record of an app: value of key `app.<app>`, JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppHead {
    /// App name.
    pub name: String,
    /// The version that runs.
    pub deployed: String,
    /// The names of the versions kept, oldest first.
    pub versions: Vec<String>,
    /// The key of each version listed: version name → the 32 hex of its key
    /// ([`content_key`]). Versions it does not name (every one, in heads written before keys
    /// named the content) are at [`version_key`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, String>,
    /// One more at every write of the head: the newest record of an app is the one with the
    /// highest generation (then the latest `updated_at_ms`).
    pub generation: u64,
    /// When the head was written, in ms since the Unix epoch.
    pub updated_at_ms: u64,
}

impl AppHead {
    /// The key of version `version` of this head's app.
    pub fn key(&self, version: &str) -> String {
        match self.keys.get(version) {
            Some(hash) => format!("ver.{}.{hash}", self.name),
            None => version_key(&self.name, version),
        }
    }

    /// Every key this head lists.
    pub fn listed_keys(&self) -> BTreeSet<String> {
        self.versions.iter().map(|v| self.key(v)).collect()
    }

    /// Whether this head is newer than one of `generation` written at `updated_at_ms`.
    pub fn newer_than(&self, generation: u64, updated_at_ms: u64) -> bool {
        (self.generation, self.updated_at_ms) > (generation, updated_at_ms)
    }
}

/// What a key of the apps bucket holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `<app>`: the one-value record of earlier releases, every version in it.
    Legacy(StoredApp),
    /// `app.<app>`.
    Head(AppHead),
    /// `ver.<app>.<hash>`.
    Version(StoredVersion),
}

/// Which app a key of the apps bucket belongs to, and what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// `<app>` (earlier releases).
    Legacy(&'a str),
    /// `app.<app>`.
    Head(&'a str),
    /// `ver.<app>.<hash>`.
    Version(&'a str),
}

impl<'a> KeyKind<'a> {
    /// The app of the key.
    pub fn app(self) -> &'a str {
        match self {
            KeyKind::Legacy(app) | KeyKind::Head(app) | KeyKind::Version(app) => app,
        }
    }
}

/// Parses a key of the apps bucket; `None` for keys of no known shape (ignored).
pub fn key_kind(key: &str) -> Option<KeyKind<'_>> {
    let mut parts = key.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(app), None, None, None) if !app.is_empty() => Some(KeyKind::Legacy(app)),
        (Some("app"), Some(app), None, None) if !app.is_empty() => Some(KeyKind::Head(app)),
        (Some("ver"), Some(app), Some(hash), None) if !app.is_empty() && !hash.is_empty() => {
            Some(KeyKind::Version(app))
        }
        _ => None,
    }
}

/// Key of the head record of `app`.
pub fn head_key(app: &str) -> String {
    format!("app.{app}")
}

/// Key of version `version` of `app` in heads that list no keys: the version name's sha256, 16
/// bytes in hex (version names may hold any character; keys only `[-/_=.a-zA-Z0-9]`).
pub fn version_key(app: &str, version: &str) -> String {
    format!(
        "ver.{app}.{}",
        hex(&Sha256::digest(version.as_bytes())[..16])
    )
}

/// The 32 hex of the key of `version` as written now (the key is `ver.<app>.<these>`): the
/// first 16 bytes of the sha256 of its name, a 0 byte, its manifest, a 0 byte, then each image
/// in component order as the component's name, a 0 byte, the digest, a 0 byte.
pub fn content_key(version: &StoredVersion) -> String {
    let mut hasher = Sha256::new();
    hasher.update(version.version.as_bytes());
    hasher.update([0]);
    hasher.update(version.manifest.as_bytes());
    hasher.update([0]);
    for (component, digest) in &version.images {
        hasher.update(component.as_bytes());
        hasher.update([0]);
        hasher.update(digest.as_bytes());
        hasher.update([0]);
    }
    hex(&hasher.finalize()[..16])
}

/// Parses the value of `key`.
///
/// # Errors
/// The value is not the JSON its key's shape calls for; `Ok(None)` for unknown keys.
pub fn parse_record(key: &str, value: &[u8]) -> Result<Option<Record>, String> {
    let parsed = match key_kind(key) {
        None => return Ok(None),
        Some(KeyKind::Legacy(_)) => serde_json::from_slice(value).map(Record::Legacy),
        Some(KeyKind::Head(_)) => serde_json::from_slice(value).map(Record::Head),
        Some(KeyKind::Version(_)) => serde_json::from_slice(value).map(Record::Version),
    };
    parsed.map(Some).map_err(|e| e.to_string())
}

/// An app as the bucket holds it now: its head, or the record of an earlier release.
#[derive(Debug, Clone, Default)]
pub struct Current {
    /// `app.<app>` and its revision.
    pub head: Option<(u64, AppHead)>,
    /// `<app>` and its revision (read only when there is no head).
    pub legacy: Option<(u64, StoredApp)>,
}

impl Current {
    /// Whether the bucket holds the app.
    pub fn exists(&self) -> bool {
        self.head.is_some() || self.legacy.is_some()
    }

    /// The deployed version's name.
    pub fn deployed(&self) -> Option<&str> {
        match (&self.head, &self.legacy) {
            (Some((_, head)), _) => Some(&head.deployed),
            (None, Some((_, legacy))) => Some(&legacy.deployed),
            (None, None) => None,
        }
    }

    /// Names of the versions kept, oldest first.
    pub fn version_names(&self) -> Vec<String> {
        match (&self.head, &self.legacy) {
            (Some((_, head)), _) => head.versions.clone(),
            (None, Some((_, legacy))) => {
                legacy.versions.iter().map(|v| v.version.clone()).collect()
            }
            (None, None) => Vec::new(),
        }
    }

    /// Generation and write time of the record (an earlier release's: 0 and its newest
    /// version's time).
    pub fn age(&self) -> (u64, u64) {
        match (&self.head, &self.legacy) {
            (Some((_, head)), _) => (head.generation, head.updated_at_ms),
            (None, Some((_, legacy))) => (
                0,
                legacy
                    .versions
                    .iter()
                    .map(|v| v.stored_at_ms)
                    .max()
                    .unwrap_or(0),
            ),
            (None, None) => (0, 0),
        }
    }
}

/// Why a write of an app did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Another writer changed the app since it was read: read again.
    #[error("app {0:?} changed meanwhile")]
    Conflict(String),
    /// A value is larger than the server takes in one message.
    #[error(
        "{what} is {bytes} bytes, more than the {max} bytes NATS takes in one message (max_payload)"
    )]
    TooLarge {
        /// The value.
        what: String,
        /// Its size.
        bytes: usize,
        /// The server's `max_payload`.
        max: usize,
    },
    /// The store did not answer, or refused.
    #[error("{0}")]
    Store(String),
}

/// What a write stored: every key written with its revision and value, for the mirror.
pub type Written = Vec<(String, u64, Option<Vec<u8>>)>;

/// The apps bucket of a lattice, opened.
#[derive(Clone)]
pub struct AppsBucket {
    kv: Store,
    max_payload: usize,
}

impl AppsBucket {
    /// Opens the apps bucket of `lattice` in `js`, creating it (with `replicas` replicas, the
    /// node's `--store-replicas`) when missing.
    ///
    /// # Errors
    /// JetStream cannot be reached or refuses the bucket (the message names the bucket, and
    /// the flag when replicas were asked for).
    pub async fn open(
        js: &jetstream::Context,
        lattice: &str,
        replicas: usize,
    ) -> anyhow::Result<AppsBucket> {
        let bucket = subjects::apps_bucket(lattice);
        let kv = crate::nats::kv::open_bucket_with_replicas(
            js,
            &bucket,
            &format!("desired state (app manifests) of lattice {lattice}"),
            crate::nats::kv::IfMissing::Create,
            replicas,
        )
        .await
        .map_err(|e| {
            if replicas > 1 {
                anyhow::anyhow!("{e} (created with {replicas} replicas, --store-replicas)")
            } else {
                anyhow::Error::from(e)
            }
        })?;
        let max_payload = js.client().server_info().max_payload;
        Ok(AppsBucket {
            kv,
            max_payload: if max_payload == 0 {
                1024 * 1024
            } else {
                max_payload
            },
        })
    }

    /// The KV store.
    pub fn kv(&self) -> &Store {
        &self.kv
    }

    /// The app `app` as stored now.
    ///
    /// # Errors
    /// The store cannot be read, or a record is malformed.
    pub async fn read_app(&self, app: &str) -> Result<Current, String> {
        let mut current = Current::default();
        if let Some((revision, value)) = self.read(&head_key(app)).await? {
            let head = serde_json::from_slice(&value)
                .map_err(|e| format!("app {app:?}: malformed head record: {e}"))?;
            current.head = Some((revision, head));
            return Ok(current);
        }
        if let Some((revision, value)) = self.read(app).await? {
            let legacy = serde_json::from_slice(&value)
                .map_err(|e| format!("app {app:?}: malformed record: {e}"))?;
            current.legacy = Some((revision, legacy));
        }
        Ok(current)
    }

    /// Version `version` of `app` as `current` holds it (`None` when not listed there).
    ///
    /// # Errors
    /// The store cannot be read, or the record is malformed.
    pub async fn read_version(
        &self,
        current: &Current,
        app: &str,
        version: &str,
    ) -> Result<Option<StoredVersion>, String> {
        if let Some((_, legacy)) = &current.legacy {
            return Ok(legacy
                .versions
                .iter()
                .find(|v| v.version == version)
                .cloned());
        }
        let Some((_, head)) = current
            .head
            .as_ref()
            .filter(|(_, h)| h.versions.iter().any(|v| v == version))
        else {
            return Ok(None);
        };
        match self.read(&head.key(version)).await? {
            Some((_, value)) => serde_json::from_slice::<StoredVersion>(&value)
                .map(Some)
                .map_err(|e| format!("app {app:?} version {version:?}: malformed record: {e}")),
            None => Ok(None),
        }
    }

    /// Every key of `app` as the bucket holds it now, with its revision and value, for the
    /// mirror: the head and each version it lists, or the record of an earlier release.
    ///
    /// # Errors
    /// The store cannot be read, or the head is malformed.
    pub async fn snapshot(&self, app: &str) -> Result<Written, String> {
        let mut written = Written::new();
        let key = head_key(app);
        if let Some((revision, value)) = self.read(&key).await? {
            let head: AppHead = serde_json::from_slice(&value)
                .map_err(|e| format!("app {app:?}: malformed head record: {e}"))?;
            written.push((key, revision, Some(value)));
            for key in head.listed_keys() {
                if let Some((revision, value)) = self.read(&key).await? {
                    written.push((key, revision, Some(value)));
                }
            }
        } else if let Some((revision, value)) = self.read(app).await? {
            written.push((app.to_owned(), revision, Some(value)));
        }
        Ok(written)
    }

    /// Whether `app` was undeployed in this bucket: its head carries a delete (or purge)
    /// marker, or, with no head at all and `mine_is_old` (this node's copy is itself of the
    /// earlier release's one-value layout), that record does. A copy with a head was written
    /// after the move to heads, whose own delete of the old record is no undeploy.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn undeployed(&self, app: &str, mine_is_old: bool) -> Result<bool, String> {
        let marker = async |key: String| -> Result<Option<bool>, String> {
            let entry = self
                .kv
                .entry(key.clone())
                .await
                .map_err(|e| format!("reading {key}: {e}"))?;
            Ok(entry.map(|e| e.operation != Operation::Put))
        };
        Ok(match marker(head_key(app)).await? {
            Some(deleted) => deleted,
            None => mine_is_old && marker(app.to_owned()).await? == Some(true),
        })
    }

    /// Writes each of `versions` (listed by `head`) whose key is absent from the bucket (no
    /// value and no delete marker: lost, as in a purged stream), leaving every key that is
    /// there as it is.
    ///
    /// # Errors
    /// [`WriteError::TooLarge`]; [`WriteError::Store`].
    pub async fn restore_versions(
        &self,
        head: &AppHead,
        versions: &[StoredVersion],
    ) -> Result<Written, WriteError> {
        let app = &head.name;
        let mut written = Written::new();
        for version in versions {
            let key = head.key(&version.version);
            let there = self
                .kv
                .entry(key.clone())
                .await
                .map_err(|e| WriteError::Store(format!("reading {key}: {e}")))?;
            if there.is_some() {
                continue;
            }
            let value = self.value(
                || format!("app {app:?} version {:?}", version.version),
                version,
            )?;
            match self.kv.create(&key, value.clone().into()).await {
                Ok(revision) => written.push((key, revision, Some(value))),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(WriteError::Store(format!("writing {key}: {e}"))),
            }
        }
        Ok(written)
    }

    /// The value and revision of `key`, `None` when absent or deleted.
    async fn read(&self, key: &str) -> Result<Option<(u64, Vec<u8>)>, String> {
        let entry = self
            .kv
            .entry(key.to_owned())
            .await
            .map_err(|e| format!("reading {key}: {e}"))?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .map(|e| (e.revision, e.value.to_vec())))
    }

    /// Writes `head` over `current` (compare-and-set on the head's revision), after the records
    /// of `versions` (each written unless the bucket holds it with the same content). Then
    /// removes the keys of versions `head` no longer lists, and the earlier release's record.
    ///
    /// # Errors
    /// [`WriteError::Conflict`] when the app changed since `current` was read (nothing the head
    /// lists was overwritten); [`WriteError::TooLarge`]; [`WriteError::Store`].
    pub async fn write_app(
        &self,
        current: &Current,
        head: &AppHead,
        versions: &[StoredVersion],
    ) -> Result<Written, WriteError> {
        let app = &head.name;
        let listed: BTreeSet<String> = current
            .head
            .iter()
            .flat_map(|(_, h)| h.listed_keys())
            .collect();
        let mut written = Written::new();
        let mut values = Vec::new();
        for version in versions {
            let key = head.key(&version.version);
            let value = self.value(
                || format!("app {app:?} version {:?}", version.version),
                version,
            )?;
            values.push((key.clone(), value.clone()));
            match self.kv.create(&key, value.clone().into()).await {
                Ok(revision) => written.push((key, revision, Some(value))),
                Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {
                    let there = self.read(&key).await.map_err(WriteError::Store)?;
                    match there {
                        Some((_, bytes))
                            if serde_json::from_slice::<StoredVersion>(&bytes)
                                .is_ok_and(|v| same_content(&v, version)) => {}
                        // Listed by the head with other content: not ours to replace.
                        Some(_) if listed.contains(&key) => {
                            return Err(WriteError::Conflict(app.clone()));
                        }
                        // Left by a write that lost its race, or malformed: replaced.
                        Some((revision, _)) => {
                            let revision = self
                                .kv
                                .update(&key, value.clone().into(), revision)
                                .await
                                .map_err(|e| match e.kind() {
                                    UpdateErrorKind::WrongLastRevision => {
                                        WriteError::Conflict(app.clone())
                                    }
                                    _ => WriteError::Store(format!("writing {key}: {e}")),
                                })?;
                            written.push((key, revision, Some(value)));
                        }
                        None => return Err(WriteError::Conflict(app.clone())),
                    }
                }
                Err(e) => return Err(WriteError::Store(format!("writing {key}: {e}"))),
            }
        }
        let key = head_key(app);
        let value = self.value(|| format!("app {app:?} head record"), head)?;
        let revision = match &current.head {
            Some((revision, _)) => self
                .kv
                .update(&key, value.clone().into(), *revision)
                .await
                .map_err(|e| match e.kind() {
                    UpdateErrorKind::WrongLastRevision => WriteError::Conflict(app.clone()),
                    _ => WriteError::Store(format!("writing {key}: {e}")),
                })?,
            None => self
                .kv
                .create(&key, value.clone().into())
                .await
                .map_err(|e| match e.kind() {
                    CreateErrorKind::AlreadyExists => WriteError::Conflict(app.clone()),
                    _ => WriteError::Store(format!("writing {key}: {e}")),
                })?,
        };
        written.push((key, revision, Some(value)));
        let head_revision = revision;
        // A writer that lost its race to this head, or an undeploy before it, may have
        // deleted a key it lists (the version of a rollback, one the writer dropped): written
        // again, as long as this head is still the app's (a later write or undeploy may have
        // dropped that key on purpose).
        for (key, value) in values {
            let there = self
                .kv
                .entry(key.clone())
                .await
                .map_err(|e| WriteError::Store(format!("reading {key}: {e}")))?;
            if there.is_none_or(|e| e.operation != Operation::Put) {
                let head_now =
                    self.kv.entry(head_key(app)).await.map_err(|e| {
                        WriteError::Store(format!("reading {}: {e}", head_key(app)))
                    })?;
                if !head_now
                    .is_some_and(|e| e.operation == Operation::Put && e.revision == head_revision)
                {
                    break;
                }
                tracing::warn!(
                    app,
                    key,
                    "a version key deleted by a concurrent write: written again"
                );
                let revision = self
                    .kv
                    .put(&key, value.clone().into())
                    .await
                    .map_err(|e| WriteError::Store(format!("writing {key}: {e}")))?;
                written.push((key, revision, Some(value)));
            }
        }
        // Only now: a reader following the head finds every version it lists.
        let keep = head.listed_keys();
        for key in listed.iter().filter(|k| !keep.contains(*k)) {
            if let Err(e) = self.kv.delete(key).await {
                tracing::warn!(app, key, error = %e, "removing a version past the history's length");
            }
        }
        if let Some((revision, _)) = &current.legacy {
            match self.kv.delete_expect_revision(app, Some(*revision)).await {
                Ok(()) => tracing::info!(
                    app,
                    "app record of an earlier release rewritten as one key per version"
                ),
                Err(e) => {
                    tracing::warn!(app, error = %e, "removing the app record of an earlier release")
                }
            }
        }
        Ok(written)
    }

    /// Deletes app `app` as `current` holds it: the head first (compare-and-set), then every
    /// version's key and an earlier release's record. Returns the keys deleted, for the mirror
    /// (the revisions of delete markers are not returned by NATS; each is one past the key's
    /// last known revision at least, and the watch brings the exact one).
    ///
    /// # Errors
    /// [`WriteError::Conflict`] when it changed meanwhile; [`WriteError::Store`].
    pub async fn delete_app(&self, app: &str, current: &Current) -> Result<Written, WriteError> {
        let mut written = Written::new();
        let conflict_or = |key: &str, e: &dyn std::fmt::Display, wrong_revision: bool| {
            if wrong_revision {
                WriteError::Conflict(app.to_owned())
            } else {
                WriteError::Store(format!("deleting {key}: {e}"))
            }
        };
        if let Some((revision, head)) = &current.head {
            let key = head_key(app);
            self.kv
                .delete_expect_revision(&key, Some(*revision))
                .await
                .map_err(|e| {
                    let wrong = e.to_string().contains("wrong last sequence");
                    conflict_or(&key, &e, wrong)
                })?;
            written.push((key, revision + 1, None));
            for key in head.listed_keys() {
                match self.kv.delete(&key).await {
                    Ok(()) => written.push((key, revision + 1, None)),
                    Err(e) => {
                        tracing::warn!(app, key, error = %e, "removing a version of an undeployed app")
                    }
                }
            }
        }
        if let Some((revision, _)) = &current.legacy {
            self.kv
                .delete_expect_revision(app, Some(*revision))
                .await
                .map_err(|e| {
                    let wrong = e.to_string().contains("wrong last sequence");
                    conflict_or(app, &e, wrong)
                })?;
            written.push((app.to_owned(), revision + 1, None));
        }
        Ok(written)
    }

    /// `value` as JSON, unless larger than the server's `max_payload` (less room for the
    /// message's headers).
    fn value<T: Serialize>(
        &self,
        what: impl FnOnce() -> String,
        value: &T,
    ) -> Result<Vec<u8>, WriteError> {
        let bytes = serde_json::to_vec(value).map_err(|e| WriteError::Store(e.to_string()))?;
        let max = self.max_payload.saturating_sub(1024);
        if bytes.len() > max {
            return Err(WriteError::TooLarge {
                what: what(),
                bytes: bytes.len(),
                max,
            });
        }
        Ok(bytes)
    }
}

/// Whether two versions hold the same manifest and artifacts.
pub fn same_content(a: &StoredVersion, b: &StoredVersion) -> bool {
    a.manifest == b.manifest && a.images == b.images
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_app_and_shape() {
        assert_eq!(key_kind("shop"), Some(KeyKind::Legacy("shop")));
        assert_eq!(key_kind(&head_key("shop")), Some(KeyKind::Head("shop")));
        let key = version_key("shop", "v1.2 (rc/1)");
        assert_eq!(key_kind(&key), Some(KeyKind::Version("shop")));
        assert_eq!(key.len(), "ver.shop.".len() + 32);
        // Every `.`-separated token of a key is a subject token of the one name rule.
        assert!(
            key.split('.').all(|t| crate::name::Name::check(t).is_ok()),
            "{key}"
        );
        assert_ne!(version_key("shop", "v1"), version_key("shop", "v2"));
        assert_eq!(key_kind("a.b.c.d"), None);
        assert_eq!(key_kind("other.x"), None);
    }

    fn version(name: &str, manifest: &str, digest: &str, at: u64) -> StoredVersion {
        StoredVersion {
            version: name.into(),
            manifest: manifest.into(),
            images: BTreeMap::from([("web".to_owned(), digest.to_owned())]),
            oci: BTreeMap::new(),
            stored_at_ms: at,
            source: super::super::Source::Cli,
        }
    }

    #[test]
    fn a_version_key_names_the_content_so_it_never_holds_another() {
        let v1 = version("v1", "a: 1", "aa", 1);
        assert_eq!(
            content_key(&v1),
            content_key(&version("v1", "a: 1", "aa", 2)),
            "when it was stored is not content"
        );
        assert_ne!(
            content_key(&v1),
            content_key(&version("v1", "a: 2", "aa", 1))
        );
        assert_ne!(
            content_key(&v1),
            content_key(&version("v1", "a: 1", "ab", 1))
        );
        assert_ne!(
            content_key(&v1),
            content_key(&version("v2", "a: 1", "aa", 1))
        );
        // No shifting of bytes between the name and the manifest gives the same key.
        assert_ne!(
            content_key(&version("v1a", ": 1", "aa", 1)),
            content_key(&version("v1", "a: 1", "aa", 1))
        );
        let key = format!("ver.shop.{}", content_key(&v1));
        assert_eq!(key_kind(&key), Some(KeyKind::Version("shop")));
    }

    #[test]
    fn a_head_names_its_versions_keys_and_one_without_keys_is_read_by_name() {
        let v2 = version("v2", "a: 2", "aa", 1);
        let head = AppHead {
            name: "shop".into(),
            deployed: "v2".into(),
            versions: vec!["v1".into(), "v2".into()],
            keys: BTreeMap::from([("v2".to_owned(), content_key(&v2))]),
            generation: 2,
            updated_at_ms: 5,
        };
        assert_eq!(head.key("v1"), version_key("shop", "v1"));
        assert_eq!(head.key("v2"), format!("ver.shop.{}", content_key(&v2)));
        assert_eq!(head.listed_keys().len(), 2);
        let json = serde_json::to_string(&head).unwrap();
        assert_eq!(serde_json::from_str::<AppHead>(&json).unwrap(), head);
        // A head of the layout before keys named the content.
        let older: AppHead = serde_json::from_str(
            r#"{"name":"shop","deployed":"v1","versions":["v1"],"generation":1,"updated_at_ms":1}"#,
        )
        .unwrap();
        assert_eq!(older.key("v1"), version_key("shop", "v1"));
        assert!(!serde_json::to_string(&older).unwrap().contains("keys"));
    }

    #[test]
    fn the_apps_bucket_gets_the_replicas_asked_for() {
        let config = crate::nats::kv::stream_config("lattice_blue_apps", "apps", 3);
        assert_eq!(config.num_replicas, 3);
        assert_eq!(config.name, "KV_lattice_blue_apps");
        assert_eq!(config.max_messages_per_subject, 1);
    }

    #[test]
    fn the_newest_head_has_the_highest_generation_then_the_latest_write() {
        let head = AppHead {
            name: "a".into(),
            deployed: "v1".into(),
            versions: vec!["v1".into()],
            keys: BTreeMap::new(),
            generation: 3,
            updated_at_ms: 10,
        };
        assert!(head.newer_than(2, 99));
        assert!(head.newer_than(3, 9));
        assert!(!head.newer_than(3, 10));
        assert!(!head.newer_than(4, 0));
    }
}
