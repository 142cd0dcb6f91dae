//! Component artifacts: the wasm of every deployed component, content-addressed in a JetStream
//! object store bucket of the lattice (`lattice_<lattice>_artifacts`, object name = sha256 of
//! the bytes, lowercase hex), so a manifest deployed from one machine runs on any node.
//!
//! A node fetches an artifact by digest, verifies it, and keeps it in `<data-dir>/artifacts/`
//! (the compiled code goes to the code cache as before). The same bytes are stored once however
//! many apps use them; [`collectable`] picks the ones no stored version names any more.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use async_nats::jetstream;
use async_nats::jetstream::object_store::{self, ObjectStore};
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;

use crate::host::sha256_hex;
use crate::nats::subjects;

/// Largest component accepted, in bytes.
pub const MAX_COMPONENT_BYTES: u64 = 256 * 1024 * 1024;

/// An unreferenced artifact younger than this is kept: a deploy uploads its artifacts before it
/// stores the manifest naming them.
pub const GC_GRACE: Duration = Duration::from_secs(120);

/// The lattice's artifact store, seen from one node (or one CLI command).
#[derive(Clone)]
pub struct Artifacts {
    js: jetstream::Context,
    lattice: String,
    /// Local cache, `None` for the CLI.
    dir: Option<PathBuf>,
}

impl Artifacts {
    /// The artifacts of `lattice` through `js`, cached in `dir` (a node's
    /// `<data-dir>/artifacts`) when given.
    pub fn new(js: jetstream::Context, lattice: &str, dir: Option<PathBuf>) -> Artifacts {
        Artifacts {
            js,
            lattice: lattice.to_owned(),
            dir,
        }
    }

    /// The object store bucket, created when missing.
    ///
    /// # Errors
    /// JetStream cannot be reached or refuses to create the bucket.
    pub async fn bucket(&self) -> anyhow::Result<ObjectStore> {
        let name = subjects::artifacts_bucket(&self.lattice);
        match self.js.get_object_store(&name).await {
            Ok(store) => Ok(store),
            Err(_) => self
                .js
                .create_object_store(object_store::Config {
                    bucket: name.clone(),
                    description: Some(format!(
                        "component artifacts of lattice {}, by sha256",
                        self.lattice
                    )),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .with_context(|| format!("opening object store {name}")),
        }
    }

    /// Stores `wasm` under its digest unless the store already has it; returns the digest.
    ///
    /// # Errors
    /// The store cannot be reached or the upload fails.
    pub async fn upload(&self, wasm: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_hex(wasm);
        let bucket = self.bucket().await?;
        match bucket.info(&digest).await {
            Ok(info) if info.size == wasm.len() => return Ok(digest),
            Ok(_) => {}
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("looking up artifact {digest}")),
        }
        let mut reader = wasm;
        bucket
            .put(digest.as_str(), &mut reader)
            .await
            .with_context(|| format!("uploading artifact {digest} ({} bytes)", wasm.len()))?;
        tracing::debug!(digest, bytes = wasm.len(), "artifact uploaded");
        Ok(digest)
    }

    /// Whether the store holds `digest`.
    ///
    /// # Errors
    /// The store cannot be reached.
    pub async fn exists(&self, digest: &str) -> anyhow::Result<bool> {
        match self.bucket().await?.info(digest).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == object_store::InfoErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("looking up artifact {digest}")),
        }
    }

    /// The bytes of `digest`: from the local cache, else fetched from the store, verified and
    /// cached.
    ///
    /// # Errors
    /// Not in the cache and the store cannot be reached, does not hold it, or holds bytes of
    /// another digest (the message says which).
    pub async fn fetch(&self, digest: &str) -> anyhow::Result<Vec<u8>> {
        let cached = self.dir.as_ref().map(|d| d.join(format!("{digest}.wasm")));
        if let Some(path) = &cached
            && let Ok(bytes) = tokio::fs::read(path).await
        {
            if sha256_hex(&bytes) == digest {
                return Ok(bytes);
            }
            tracing::warn!(path = %path.display(), "cached artifact does not match its digest; fetching it again");
        }
        let bucket = self.bucket().await?;
        let mut object = bucket.get(digest).await.map_err(|e| {
            if e.kind() == object_store::GetErrorKind::NotFound {
                anyhow::anyhow!(
                    "artifact sha256:{digest} is not in object store {}",
                    subjects::artifacts_bucket(&self.lattice)
                )
            } else {
                anyhow::Error::from(e).context(format!("fetching artifact sha256:{digest}"))
            }
        })?;
        let mut bytes = Vec::new();
        (&mut object)
            .take(MAX_COMPONENT_BYTES + 1)
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("fetching artifact sha256:{digest}"))?;
        let actual = sha256_hex(&bytes);
        anyhow::ensure!(
            actual == digest,
            "artifact sha256:{digest} from the object store has digest {actual}; refused"
        );
        if let Some(path) = &cached
            && let Err(e) = write_atomically(path, &bytes).await
        {
            tracing::warn!(path = %path.display(), error = format!("{e:#}"), "cannot cache artifact");
        }
        Ok(bytes)
    }

    /// Deletes the artifacts that `referenced` does not name and that were stored more than
    /// [`GC_GRACE`] ago. Returns how many went.
    ///
    /// # Errors
    /// The store cannot be reached.
    pub async fn collect_garbage(&self, referenced: &BTreeSet<String>) -> anyhow::Result<usize> {
        let bucket = self.bucket().await?;
        let objects: Vec<object_store::ObjectInfo> = bucket
            .list()
            .await
            .context("listing artifacts")?
            .try_collect()
            .await
            .context("listing artifacts")?;
        let now = SystemTime::now();
        let stored: Vec<(String, Option<SystemTime>)> = objects
            .into_iter()
            .map(|o| (o.name, o.modified.map(SystemTime::from)))
            .collect();
        let mut deleted = 0;
        for name in collectable(&stored, referenced, now) {
            match bucket.delete(&name).await {
                Ok(()) => {
                    deleted += 1;
                    tracing::info!(digest = name, "artifact no app uses any more deleted");
                }
                Err(e) => tracing::warn!(digest = name, error = %e, "deleting an artifact"),
            }
        }
        Ok(deleted)
    }

    /// Removes cached artifacts of this node that `referenced` does not name and that are older
    /// than [`GC_GRACE`], with their compiled code in `code_cache`.
    pub fn prune_cache(&self, referenced: &BTreeSet<String>, code_cache: &Path) {
        let Some(dir) = &self.dir else { return };
        let now = SystemTime::now();
        let files = |dir: &Path| -> Vec<(PathBuf, Option<SystemTime>)> {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .map(|e| (e.path(), e.metadata().and_then(|m| m.modified()).ok()))
                        .collect()
                })
                .unwrap_or_default()
        };
        for (path, modified) in files(dir).into_iter().chain(files(code_cache)) {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            // `<digest>.wasm` here, `<digest>-<engine>.cwasm` in the code cache.
            let digest = name.split(['.', '-']).next().unwrap_or_default();
            if digest.len() != 64 {
                continue;
            }
            let entry = [(digest.to_owned(), modified)];
            if collectable(&entry, referenced, now).is_empty() {
                continue;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(path = %path.display(), "unused cached artifact removed"),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "removing a cached artifact")
                }
            }
        }
    }
}

/// Of `stored` artifacts (digest, when stored), those `referenced` does not name and that are
/// older than [`GC_GRACE`] at `now`. One with no time is treated as old.
pub fn collectable(
    stored: &[(String, Option<SystemTime>)],
    referenced: &BTreeSet<String>,
    now: SystemTime,
) -> Vec<String> {
    stored
        .iter()
        .filter(|(digest, _)| !referenced.contains(digest))
        .filter(|(_, at)| {
            at.is_none_or(|at| now.duration_since(at).is_ok_and(|age| age > GC_GRACE))
        })
        .map(|(digest, _)| digest.clone())
        .collect()
}

async fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("artifact path has no parent")?;
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    tokio::fs::write(&tmp, bytes)
        .await
        .with_context(|| format!("writing {}", tmp.display()))?;
    tokio::fs::rename(&tmp, path)
        .await
        .with_context(|| format!("renaming {} into place", tmp.display()))
}

/// Reads a component's wasm file: a regular file of at most [`MAX_COMPONENT_BYTES`].
///
/// # Errors
/// The text says why, naming the file.
pub async fn read_component_file(path: &Path) -> Result<Vec<u8>, String> {
    let cannot = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", path.display());
    let meta = tokio::fs::metadata(path).await.map_err(|e| cannot(&e))?;
    if !meta.is_file() {
        return Err(cannot(&"not a regular file"));
    }
    if meta.len() > MAX_COMPONENT_BYTES {
        return Err(cannot(&format!(
            "{} bytes is more than the {MAX_COMPONENT_BYTES} bytes allowed",
            meta.len()
        )));
    }
    tokio::fs::read(path).await.map_err(|e| cannot(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unreferenced_artifacts_past_the_grace_period_are_collected() {
        let now = SystemTime::now();
        let old = now - GC_GRACE - Duration::from_secs(1);
        let fresh = now - Duration::from_secs(5);
        let stored = vec![
            ("used".to_owned(), Some(old)),
            ("unused-old".to_owned(), Some(old)),
            ("unused-fresh".to_owned(), Some(fresh)),
            ("unused-untimed".to_owned(), None),
        ];
        let referenced = BTreeSet::from(["used".to_owned()]);
        assert_eq!(
            collectable(&stored, &referenced, now),
            ["unused-old", "unused-untimed"]
        );
    }
}
