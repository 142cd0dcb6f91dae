//! Component artifacts: the wasm of every deployed component, content-addressed in a JetStream
//! object store bucket of the lattice (`lattice_<lattice>_artifacts`, object name = sha256 of
//! the bytes, lowercase hex), so a manifest deployed from one machine runs on any node.
//!
//! A node fetches an artifact by digest, verifies it, and keeps it in `<data-dir>/artifacts/`
//! (the compiled code goes to the code cache as before). The same bytes are stored once however
//! many apps use them. Collection is mark and sweep: [`Artifacts::sweep`] (run by one node of
//! the lattice every [`GC_INTERVAL`]) deletes an artifact only when no stored version of any app
//! has named it for [`GC_GRACE`], read afresh from the KV at each sweep, so an upload whose
//! manifest is being stored is never taken.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use async_nats::jetstream;
use async_nats::jetstream::object_store::{self, ObjectStore};
use futures::TryStreamExt;
use tokio::io::AsyncReadExt;

use super::oci::{OciError, OciPin, Registry, RegistrySettings};
use crate::host::sha256_hex;
use crate::nats::{SharedJetStream, subjects};

/// Largest component accepted, in bytes.
pub const MAX_COMPONENT_BYTES: u64 = 256 * 1024 * 1024;

/// How long an artifact must have been named by no stored version before it is deleted: a
/// deploy uploads its artifacts before it stores the manifest naming them. Also the age a
/// node's cached artifact must have before an unused one is removed.
pub const GC_GRACE: Duration = Duration::from_secs(120);

/// How often the sweeping node looks for unused artifacts.
pub const GC_INTERVAL: Duration = Duration::from_secs(60);

/// Why [`Artifacts::fetch`] has no bytes to give: a caller pulls from a registry only when
/// the store lacks them or holds other bytes, not when it cannot be asked.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The object store does not hold the artifact.
    #[error("artifact sha256:{digest} is not in object store {bucket}")]
    NotFound {
        /// The artifact's digest (hex).
        digest: String,
        /// The object store bucket.
        bucket: String,
    },
    /// The object store holds bytes of another digest (or more than a component may have).
    #[error("artifact sha256:{digest} from the object store has digest {actual}; refused")]
    Corrupt {
        /// The digest asked for (hex).
        digest: String,
        /// The digest of the bytes read (hex).
        actual: String,
    },
    /// The object store cannot be reached or read.
    #[error("fetching artifact sha256:{digest}: {detail}")]
    Store {
        /// The artifact's digest (hex).
        digest: String,
        /// The store's error, with its causes.
        detail: String,
    },
}

/// The lattice's artifact store, seen from one node (or one CLI command).
#[derive(Clone)]
pub struct Artifacts {
    js: SharedJetStream,
    lattice: String,
    /// Local cache, `None` for the CLI.
    dir: Option<PathBuf>,
    /// Artifacts seen unused by a sweep, since when.
    unused_since: Arc<Mutex<BTreeMap<String, Instant>>>,
    /// Replicas of the object store when this node creates it (`--store-replicas`).
    replicas: usize,
    /// How components named by OCI reference are pulled; anonymous, HTTPS only, until
    /// [`Artifacts::with_registry`].
    registry: Arc<std::sync::OnceLock<Registry>>,
}

impl Artifacts {
    /// The artifacts of `lattice` through `js`, cached in `dir` (a node's
    /// `<data-dir>/artifacts`) when given.
    pub fn new(js: SharedJetStream, lattice: &str, dir: Option<PathBuf>) -> Artifacts {
        Artifacts {
            js,
            lattice: lattice.to_owned(),
            dir,
            unused_since: Arc::default(),
            replicas: 1,
            registry: Arc::default(),
        }
    }

    /// These artifacts, pulling components named by OCI reference through `registry`.
    pub fn with_registry(self, registry: Registry) -> Artifacts {
        let _ = self.registry.set(registry);
        self
    }

    /// The registry client: [`Artifacts::with_registry`]'s, else one made on first use with
    /// the default settings (HTTPS with the system's roots, credentials from
    /// `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`).
    ///
    /// # Errors
    /// No client was given and one cannot be made (TLS setup).
    pub fn registry(&self) -> anyhow::Result<&Registry> {
        if let Some(registry) = self.registry.get() {
            return Ok(registry);
        }
        let registry = Registry::new(&RegistrySettings::default())?;
        Ok(self.registry.get_or_init(|| registry))
    }

    /// Whether this node's cache holds `digest` (verified; read and hashed off the runtime's
    /// workers).
    pub async fn cached(&self, digest: &str) -> bool {
        let Some(dir) = &self.dir else {
            return false;
        };
        let path = dir.join(format!("{digest}.wasm"));
        let digest = digest.to_owned();
        tokio::task::spawn_blocking(move || {
            std::fs::read(path).is_ok_and(|bytes| sha256_hex(&bytes) == digest)
        })
        .await
        .unwrap_or(false)
    }

    /// The bytes of `digest` ([`Artifacts::fetch`]); when the store does not hold them and
    /// `pin` names the registry manifest they came from, pulled from the registry by that
    /// digest, verified against `digest`, then put back into the store (or, failing that,
    /// this node's cache).
    ///
    /// A store that cannot be reached is not a reason to pull: the error is the store's.
    ///
    /// # Errors
    /// As [`Artifacts::fetch`] without a pin; with one, [`FetchError::Store`], the pull's
    /// [`OciError`] (one line naming the pinned reference), or bytes of another digest.
    pub async fn fetch_component(
        &self,
        digest: &str,
        pin: Option<&OciPin>,
    ) -> anyhow::Result<Vec<u8>> {
        let Some(pin) = pin else {
            return Ok(self.fetch(digest).await?);
        };
        let why = match self.fetch(digest).await {
            Ok(bytes) => return Ok(bytes),
            Err(FetchError::NotFound { .. }) => "artifact not in the lattice store",
            Err(FetchError::Corrupt { .. }) => "the lattice store holds other bytes",
            Err(e @ FetchError::Store { .. }) => return Err(e.into()),
        };
        tracing::info!(
            digest,
            image = pin.reference,
            manifest = pin.digest,
            "{why}; pulling it from its registry by digest"
        );
        let pulled = self.registry()?.pull_pinned(pin).await?;
        let actual = sha256_hex(&pulled.wasm);
        if actual != digest {
            return Err(OciError::DigestMismatch {
                reference: pin.shown(),
                expected: format!("sha256:{digest}"),
                actual: format!("sha256:{actual}"),
            }
            .into());
        }
        if let Err(e) = self.upload(&pulled.wasm).await {
            tracing::warn!(
                digest,
                error = format!("{e:#}"),
                "cannot put the pulled artifact into the lattice store"
            );
            if self.dir.is_some() {
                let _ = self.keep_here(&pulled.wasm).await;
            }
        } else if let Some(dir) = &self.dir {
            let _ = write_atomically(&dir.join(format!("{digest}.wasm")), &pulled.wasm).await;
        }
        Ok(pulled.wasm)
    }

    /// These artifacts, the object store created with `replicas` replicas (`--store-replicas`)
    /// when this node creates it.
    pub fn with_replicas(mut self, replicas: usize) -> Artifacts {
        self.replicas = replicas;
        self
    }

    /// The object store's configuration when this node creates it.
    pub fn bucket_config(&self) -> object_store::Config {
        object_store::Config {
            bucket: subjects::artifacts_bucket(&self.lattice),
            description: Some(format!(
                "component artifacts of lattice {}, by sha256",
                self.lattice
            )),
            storage: jetstream::stream::StorageType::File,
            num_replicas: self.replicas,
            ..Default::default()
        }
    }

    /// The object store bucket, created when missing ([`Artifacts::bucket_config`]).
    ///
    /// # Errors
    /// JetStream cannot be reached or refuses to create the bucket (the message names the
    /// bucket, and `--store-replicas` when more than one replica was asked for).
    pub async fn bucket(&self) -> anyhow::Result<ObjectStore> {
        let name = subjects::artifacts_bucket(&self.lattice);
        let js = self.js.context();
        match js.get_object_store(&name).await {
            Ok(store) => Ok(store),
            Err(_) => js
                .create_object_store(self.bucket_config())
                .await
                .with_context(|| {
                    if self.replicas > 1 {
                        format!(
                            "opening object store {name} (created with {} replicas, --store-replicas)",
                            self.replicas
                        )
                    } else {
                        format!("opening object store {name}")
                    }
                }),
        }
    }

    /// Keeps `wasm` in this node's cache only (no lattice store reachable: it is uploaded when
    /// its app moves into the store); returns its digest.
    ///
    /// # Errors
    /// This is the CLI's handle (no cache), or the cache cannot be written.
    pub async fn keep_here(&self, wasm: &[u8]) -> anyhow::Result<String> {
        let digest = sha256_hex(wasm);
        let dir = self
            .dir
            .as_ref()
            .context("no artifact cache to keep a component in")?;
        let path = dir.join(format!("{digest}.wasm"));
        if tokio::fs::read(&path)
            .await
            .is_ok_and(|bytes| sha256_hex(&bytes) == digest)
        {
            return Ok(digest);
        }
        write_atomically(&path, wasm).await?;
        Ok(digest)
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
    /// Not in the cache and the store cannot be reached ([`FetchError::Store`]), does not hold
    /// it ([`FetchError::NotFound`]), or holds bytes of another digest ([`FetchError::Corrupt`]).
    pub async fn fetch(&self, digest: &str) -> Result<Vec<u8>, FetchError> {
        let cached = self.dir.as_ref().map(|d| d.join(format!("{digest}.wasm")));
        if let Some(path) = &cached
            && let Ok(bytes) = tokio::fs::read(path).await
        {
            if sha256_hex(&bytes) == digest {
                return Ok(bytes);
            }
            tracing::warn!(path = %path.display(), "cached artifact does not match its digest; fetching it again");
        }
        let store = |detail: String| FetchError::Store {
            digest: digest.to_owned(),
            detail,
        };
        let bucket = self.bucket().await.map_err(|e| store(format!("{e:#}")))?;
        let mut object = bucket.get(digest).await.map_err(|e| {
            if e.kind() == object_store::GetErrorKind::NotFound {
                FetchError::NotFound {
                    digest: digest.to_owned(),
                    bucket: subjects::artifacts_bucket(&self.lattice),
                }
            } else {
                store(format!("{:#}", anyhow::Error::from(e)))
            }
        })?;
        let mut bytes = Vec::new();
        (&mut object)
            .take(MAX_COMPONENT_BYTES + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| store(e.to_string()))?;
        let actual = sha256_hex(&bytes);
        if actual != digest {
            return Err(FetchError::Corrupt {
                digest: digest.to_owned(),
                actual,
            });
        }
        if let Some(path) = &cached
            && let Err(e) = write_atomically(path, &bytes).await
        {
            tracing::warn!(path = %path.display(), error = format!("{e:#}"), "cannot cache artifact");
        }
        Ok(bytes)
    }

    /// Lists the stored artifacts, asks `referenced` (read afresh after the listing) which are
    /// named by some stored version, and deletes those that no sweep has seen named for
    /// [`GC_GRACE`]. Returns how many went.
    ///
    /// # Errors
    /// The store cannot be reached, or `referenced` fails.
    pub async fn sweep<F>(&self, referenced: F) -> anyhow::Result<usize>
    where
        F: AsyncFnOnce() -> anyhow::Result<BTreeSet<String>>,
    {
        let bucket = self.bucket().await?;
        let objects: Vec<object_store::ObjectInfo> = bucket
            .list()
            .await
            .context("listing artifacts")?
            .try_collect()
            .await
            .context("listing artifacts")?;
        // Read after the listing: a manifest stored meanwhile names what it uploaded.
        let referenced = referenced().await?;
        let stored: Vec<String> = objects.into_iter().map(|o| o.name).collect();
        let due = {
            let mut unused = self.unused_since.lock().unwrap_or_else(|p| p.into_inner());
            collectable(&mut unused, &stored, &referenced, Instant::now())
        };
        let mut deleted = 0;
        for name in due {
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
            let old =
                modified.is_none_or(|at| now.duration_since(at).is_ok_and(|age| age > GC_GRACE));
            if referenced.contains(digest) || !old {
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

/// Marks the `stored` artifacts that `referenced` does not name in `unused` (since `now`),
/// unmarks the named ones, and returns those marked for [`GC_GRACE`] or longer.
pub fn collectable(
    unused: &mut BTreeMap<String, Instant>,
    stored: &[String],
    referenced: &BTreeSet<String>,
    now: Instant,
) -> Vec<String> {
    unused.retain(|digest, _| stored.contains(digest) && !referenced.contains(digest));
    for digest in stored.iter().filter(|d| !referenced.contains(*d)) {
        unused.entry(digest.clone()).or_insert(now);
    }
    unused
        .iter()
        .filter(|(_, since)| now.duration_since(**since) >= GC_GRACE)
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

    #[tokio::test]
    async fn the_object_store_gets_the_replicas_asked_for() {
        // Never connected: only the configuration is read.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:1")
            .await
            .unwrap();
        let js = SharedJetStream::fixed(client, None);
        let artifacts = Artifacts::new(js, "blue", None);
        assert_eq!(artifacts.bucket_config().num_replicas, 1);
        let config = artifacts.with_replicas(3).bucket_config();
        assert_eq!(config.num_replicas, 3);
        assert_eq!(config.bucket, "lattice_blue_artifacts");
    }

    #[test]
    fn only_artifacts_unused_for_the_grace_period_are_collected() {
        let start = Instant::now();
        let stored = ["a".to_owned(), "b".to_owned()];
        let mut unused = BTreeMap::new();
        let used = BTreeSet::from(["a".to_owned()]);
        assert!(collectable(&mut unused, &stored, &used, start).is_empty());
        // b unused for the whole grace period: due. a named again in between: not.
        let later = start + GC_GRACE;
        assert_eq!(collectable(&mut unused, &stored, &used, later), ["b"]);
        let none = BTreeSet::new();
        let mut unused = BTreeMap::new();
        collectable(&mut unused, &stored, &none, start);
        collectable(&mut unused, &stored, &used, start + GC_GRACE / 2);
        assert_eq!(collectable(&mut unused, &stored, &none, later), ["b"]);
        assert_eq!(
            collectable(&mut unused, &stored, &none, later + GC_GRACE),
            ["a", "b"]
        );
    }
}
