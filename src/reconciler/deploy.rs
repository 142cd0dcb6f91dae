//! Deploying into the lattice's desired state: a manifest is checked fully before it is stored
//! (size, schema, names, link targets, artifacts present and loadable as `wasi:http`
//! components, routes free lattice-wide, version naming), then stored as a new version of its
//! app: its own KV key, then the app's head with a compare-and-set (`store::layout`). A
//! rejected manifest changes nothing.
//!
//! Two halves: [`resolve_images`] runs where the manifest's files are (the CLI, or the node
//! whose config dir holds it) and puts their bytes into the artifact store; [`AppStore`] runs on
//! a node (the control API's `app.deploy`, the config-dir watcher) and validates and stores.
//! While no lattice store is reachable the config dir's manifests go into the node's node-local
//! desired state instead ([`AppStore::deploy_file`]), their wasm into its artifact cache
//! ([`ImagesTo::ThisNode`]), and move into the store when it appears; `app.deploy` fails meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

mod checks;
mod prepare;

pub use checks::routes_of;
use prepare::{Prepared, prepare, version_exists};
pub use prepare::{suffixed, version_of};

use super::artifacts::{Artifacts, read_component_file};
use super::manifest::{FieldError, Image, Manifest};
use super::oci::{OciError, OciPin};
use super::store::layout::{self, AppHead, AppsBucket, WriteError, same_content};
use super::store::{CAS_ATTEMPTS, Mirror, Source, StoredApp, StoredVersion};
use crate::host::{Host, sha256_hex};
use crate::nats::{JetStreamState, SharedJetStream};
use crate::providers::http::RouteConflict;

/// Versions kept per app, newest (older ones are removed from the store as new ones come).
pub const MAX_VERSIONS: usize = 100;

/// Largest manifest accepted, in bytes of YAML: a version's record is one NATS message (1 MiB
/// `max_payload` by default) holding the manifest JSON-escaped. Larger config-dir files are
/// refused before they are read.
pub const MAX_MANIFEST_BYTES: usize = 512 * 1024;

/// Longest version name accepted, in bytes (the head record lists every version's name).
pub const MAX_VERSION_BYTES: usize = 256;

/// A manifest to deploy, as the control API's `app.deploy` takes it (`PROTOCOL.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRequest {
    /// The manifest's YAML text.
    pub manifest: String,
    /// The version to store it as; default `metadata.annotations.version`, else a name made
    /// from its content (`sha-<12 hex>`).
    #[serde(default)]
    pub version: Option<String>,
    /// Component name → sha256 of its wasm (lowercase hex), already in the artifact store.
    pub images: BTreeMap<String, String>,
    /// Component name → the registry manifest its wasm came from, for components whose `image`
    /// is an OCI reference (resolved by the deployer: [`resolve_images`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub oci: BTreeMap<String, OciPin>,
    /// Where the manifest comes from.
    pub source: Source,
}

/// What a deploy did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployOutcome {
    /// App name.
    pub name: String,
    /// The version now deployed.
    pub version: String,
    /// `false` when that version was deployed already.
    pub changed: bool,
    /// Stored in this node's node-local desired state only (no lattice store reachable): it
    /// runs on this node until it moves into the store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    /// What the deploying node found questionable but accepted (e.g. a component that will not
    /// start for want of a link).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Why a deploy or undeploy was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A manifest field is wrong, or what it names is unusable (the field's YAML path).
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A route is held by another app of the lattice.
    #[error(transparent)]
    RouteConflict(#[from] RouteConflict),
    /// The version exists with other content.
    #[error(
        "app {app:?} already has a version {version:?} with other content; give the new one another version"
    )]
    VersionExists {
        /// App.
        app: String,
        /// Version.
        version: String,
    },
    /// The app is deployed from another manifest file of this node's config dir.
    #[error("app {app:?} is already deployed from {other}; an app comes from one file")]
    DuplicateApp {
        /// App.
        app: String,
        /// The other file.
        other: String,
    },
    /// No such app.
    #[error("no app {0:?} in the lattice")]
    NoSuchApp(String),
    /// A component's OCI image cannot be pulled: unknown tag, unauthorized, registry
    /// unreachable, wrong media type, digest mismatch, too large.
    #[error("{field}: {source}")]
    Image {
        /// YAML path of the component's `image`.
        field: String,
        /// Why, naming the reference.
        source: OciError,
    },
    /// The desired-state store could not be read or written.
    #[error("desired-state store: {0}")]
    Store(String),
    /// No lattice store is reachable: this node runs its config dir's apps itself, and nothing
    /// else can be deployed meanwhile.
    #[error("no lattice store reachable: apps from {dir} run on this node only")]
    NoStore {
        /// The node's config dir.
        dir: String,
    },
}

impl DeployError {
    /// Whether the store could not be reached (worth trying again soon), as opposed to a
    /// refusal of the manifest.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, DeployError::Store(_) | DeployError::NoStore { .. })
    }
}

/// Where [`resolve_images`] puts the bytes of a manifest's component files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImagesTo {
    /// The lattice's artifact store.
    Lattice,
    /// This node's artifact cache only: no lattice store is reachable.
    ThisNode,
}

/// What [`resolve_images`] made of a manifest's images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedImages {
    /// Component name → sha256 of its wasm (lowercase hex), in the artifact store (or cache).
    pub images: BTreeMap<String, String>,
    /// Component name → the registry manifest its wasm came from (OCI images only).
    pub oci: BTreeMap<String, OciPin>,
}

impl ResolvedImages {
    /// The images of a stored version.
    pub fn of(version: &StoredVersion) -> ResolvedImages {
        ResolvedImages {
            images: version.images.clone(),
            oci: version.oci.clone(),
        }
    }
}

/// Puts the wasm of every component of `manifest` where `to` says: a file's bytes; an OCI
/// image's, pulled from its registry (the tag resolved to a digest now), unless `pinned` (the
/// app's deployed version, or what an earlier call gave) already resolved the same reference
/// for that component: then its pinned digest is kept (and pulled by that digest only if the
/// store lacks its bytes). Returns what each component got.
///
/// # Errors
/// A file cannot be read ([`FieldError`] on its `image`), a pull fails ([`DeployError::Image`],
/// one line naming the field and the reference), or the artifact store (or cache) cannot be
/// written ([`DeployError::Store`]).
pub async fn resolve_images(
    manifest: &Manifest,
    artifacts: &Artifacts,
    to: ImagesTo,
    pinned: Option<&ResolvedImages>,
) -> Result<ResolvedImages, DeployError> {
    let mut resolved = ResolvedImages::default();
    let store = |e: anyhow::Error| DeployError::Store(format!("{e:#}"));
    let put = async |wasm: &[u8]| match to {
        ImagesTo::Lattice => artifacts.upload(wasm).await,
        ImagesTo::ThisNode => artifacts.keep_here(wasm).await,
    };
    for spec in &manifest.components {
        let image_error = |source: OciError| DeployError::Image {
            field: spec.image_field.clone(),
            source,
        };
        let registry = |reference: &str| {
            artifacts.registry().map_err(|e| {
                image_error(OciError::Registry {
                    reference: reference.to_owned(),
                    detail: format!("{e:#}"),
                })
            })
        };
        match &spec.image {
            Image::File(path) => {
                let wasm = read_component_file(path)
                    .await
                    .map_err(|reason| FieldError::new(&spec.image_field, reason))?;
                let digest = put(&wasm).await.map_err(store)?;
                resolved.images.insert(spec.name.clone(), digest);
            }
            Image::Oci(reference) => {
                let kept = pinned.and_then(|p| {
                    let pin = p
                        .oci
                        .get(&spec.name)
                        .filter(|pin| pin.reference == *reference)?;
                    Some((pin.clone(), p.images.get(&spec.name)?.clone()))
                });
                let (pin, digest) = match kept {
                    Some((pin, digest)) => {
                        let present = match to {
                            ImagesTo::Lattice => artifacts.exists(&digest).await.map_err(store)?,
                            ImagesTo::ThisNode => artifacts.cached(&digest).await,
                        };
                        if !present {
                            let pulled = registry(reference)?
                                .pull_pinned(&pin)
                                .await
                                .map_err(|e| match e {
                                    // The pinned manifest is gone (the tag was probably
                                    // moved and the old one deleted).
                                    OciError::NotFound { reference } => OciError::NotFound {
                                        reference: format!(
                                            "{reference} (the version's pin; `lattice app deploy --refresh` resolves the tag again)"
                                        ),
                                    },
                                    e => e,
                                })
                                .map_err(image_error)?;
                            // Compared before it is stored: other bytes never enter the store.
                            let actual = sha256_hex(&pulled.wasm);
                            if actual != digest {
                                return Err(image_error(OciError::DigestMismatch {
                                    reference: pin.shown(),
                                    expected: format!("sha256:{digest}"),
                                    actual: format!("sha256:{actual}"),
                                }));
                            }
                            put(&pulled.wasm).await.map_err(store)?;
                        }
                        (pin, digest)
                    }
                    None => {
                        let pulled = registry(reference)?
                            .pull(reference)
                            .await
                            .map_err(image_error)?;
                        let digest = put(&pulled.wasm).await.map_err(store)?;
                        tracing::info!(
                            image = reference,
                            manifest = pulled.pin.digest,
                            digest,
                            "component pulled from its registry"
                        );
                        (pulled.pin, digest)
                    }
                };
                resolved.images.insert(spec.name.clone(), digest);
                resolved.oci.insert(spec.name.clone(), pin);
            }
            Image::Artifact { digest } => {
                resolved.images.insert(spec.name.clone(), digest.clone());
            }
        }
    }
    Ok(resolved)
}

/// The write side of the desired state, on a node.
pub struct AppStore {
    js: SharedJetStream,
    lattice: String,
    mirror: Arc<Mirror>,
    artifacts: Artifacts,
    host: Host,
    ingress: SocketAddr,
    /// The node's config dir, named when no store is reachable.
    config_dir: PathBuf,
    /// Replicas of the apps bucket when this node creates it (`--store-replicas`).
    replicas: usize,
}

impl AppStore {
    /// Writes `lattice`'s desired state through `js`, keeping `mirror` in step at once; checks
    /// components with `host`, routes against the ingress at `ingress`. The apps bucket is
    /// created with one replica unless [`AppStore::with_replicas`] says otherwise.
    pub fn new(
        js: SharedJetStream,
        lattice: &str,
        mirror: Arc<Mirror>,
        artifacts: Artifacts,
        host: Host,
        ingress: SocketAddr,
    ) -> AppStore {
        AppStore {
            js,
            lattice: lattice.to_owned(),
            mirror,
            artifacts,
            host,
            ingress,
            config_dir: PathBuf::new(),
            replicas: 1,
        }
    }

    /// This store with `dir` as the node's config dir (named by [`DeployError::NoStore`], made
    /// absolute as the config-dir watcher names it).
    pub fn with_config_dir(mut self, dir: PathBuf) -> AppStore {
        self.config_dir = std::path::absolute(&dir).unwrap_or(dir);
        self
    }

    /// This store creating the apps bucket with `replicas` replicas (`--store-replicas`).
    pub fn with_replicas(mut self, replicas: usize) -> AppStore {
        self.replicas = replicas;
        self
    }

    /// Replicas of the buckets when this node creates them (`--store-replicas`).
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The node's mirror of the desired state.
    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.mirror
    }

    /// The lattice's artifact store.
    pub fn artifacts(&self) -> &Artifacts {
        &self.artifacts
    }

    /// [`DeployError::NoStore`] while the lattice's JetStream is known to be unreachable.
    pub fn no_store(&self) -> Option<DeployError> {
        match self.js.state() {
            JetStreamState::Unreachable { .. } => Some(DeployError::NoStore {
                dir: self.config_dir.display().to_string(),
            }),
            JetStreamState::Searching | JetStreamState::Found { .. } => None,
        }
    }

    /// Follows whether the lattice's JetStream is reachable.
    pub fn subscribe_store(&self) -> watch::Receiver<JetStreamState> {
        self.js.subscribe()
    }

    /// Validates `request` and stores it as the deployed version of its app (the control
    /// API's `app.deploy`).
    ///
    /// # Errors
    /// [`DeployError`], naming the field and the reason, or [`DeployError::NoStore`]; nothing
    /// changed.
    pub async fn deploy(&self, request: DeployRequest) -> Result<DeployOutcome, DeployError> {
        if let Some(e) = self.no_store() {
            return Err(e);
        }
        let prepared = prepare(&request)?;
        self.deploy_shared(&request, prepared, None).await
    }

    /// Deploys a manifest of this node's config dir: into the lattice's store, else (none
    /// reachable) into the node-local desired state. A node-local app of the same name moves
    /// into the store: written there (unless the store holds a version stored after it, which
    /// then stays) and dropped here, the same version and artifacts, so its replicas run on.
    ///
    /// # Errors
    /// As [`AppStore::deploy`], never [`DeployError::NoStore`].
    pub async fn deploy_file(&self, request: DeployRequest) -> Result<DeployOutcome, DeployError> {
        let prepared = prepare(&request)?;
        if self.no_store().is_some() {
            return self.deploy_local(&request, prepared).await;
        }
        let local = self.mirror.local(&prepared.manifest.name);
        self.deploy_shared(&request, prepared, local).await
    }

    async fn deploy_local(
        &self,
        request: &DeployRequest,
        prepared: Prepared,
    ) -> Result<DeployOutcome, DeployError> {
        let Prepared {
            manifest,
            mut version,
        } = prepared;
        let name = manifest.name.clone();
        let mut stored = StoredVersion {
            version: version.clone(),
            manifest: request.manifest.clone(),
            images: request.images.clone(),
            oci: request.oci.clone(),
            stored_at_ms: now_ms(),
            source: request.source.clone(),
        };
        let known: Vec<StoredVersion> = self
            .mirror
            .local(&name)
            .into_iter()
            .chain(self.mirror.get(&name).map(|(_, r)| r))
            .flat_map(|r| r.versions)
            .collect();
        if let Some(existing) = known.iter().find(|v| v.version == version)
            && !same_content(existing, &stored)
        {
            if request.version.is_some() || !matches!(request.source, Source::File { .. }) {
                return Err(version_exists(&name, version));
            }
            version = suffixed(&version, request);
            stored.version = version.clone();
        }
        if let Some(local) = self.mirror.local(&name)
            && local.deployed == version
            && local
                .deployed_version()
                .is_some_and(|v| same_content(v, &stored))
        {
            return Ok(DeployOutcome {
                name,
                version,
                changed: false,
                local: true,
                warnings: Vec::new(),
            });
        }
        let warnings = self.check_components(&manifest).await?;
        self.check_routes(&manifest, &request.source)?;
        self.mirror.set_local(
            &name,
            Some(StoredApp {
                name: name.clone(),
                deployed: version.clone(),
                versions: vec![stored],
            }),
        );
        Ok(DeployOutcome {
            name,
            version,
            changed: true,
            local: true,
            warnings,
        })
    }

    /// Stores a prepared request in the lattice's store; `local` is the node-local record of
    /// the app, moving into the store.
    async fn deploy_shared(
        &self,
        request: &DeployRequest,
        prepared: Prepared,
        local: Option<StoredApp>,
    ) -> Result<DeployOutcome, DeployError> {
        let Prepared {
            manifest,
            mut version,
        } = prepared;
        let name = manifest.name.clone();
        // The caller hands a node-local app over to the store's copy first.
        let unchanged = |version: String, warnings: Vec<String>| {
            Ok(DeployOutcome {
                name: name.clone(),
                version,
                changed: false,
                local: false,
                warnings,
            })
        };
        // Already deployed as it is (a node restarting with its config dir, a repeated
        // deploy): nothing to check or write.
        if let Some((_, record)) = self.mirror.get(&name)
            && record.deployed == version
            && record
                .deployed_version()
                .is_some_and(|v| v.manifest == request.manifest && v.images == request.images)
        {
            if local.is_some() {
                self.mirror.set_local(&name, None);
            }
            return unchanged(version, Vec::new());
        }
        let warnings = self.check_components(&manifest).await?;
        self.check_routes(&manifest, &request.source)?;
        for link in &manifest.http_links {
            if let Some(addr) = link.address.filter(|a| {
                a.ip().is_unspecified() && a.port() == self.ingress.port() && *a != self.ingress
            }) {
                tracing::warn!(
                    app = name,
                    %addr,
                    "address is the ingress's port on every interface: served by each node's shared ingress \
                     (start nodes with --http-addr {addr} to listen on every interface)"
                );
            }
        }

        let mut stored = StoredVersion {
            version: version.clone(),
            manifest: request.manifest.clone(),
            images: request.images.clone(),
            oci: request.oci.clone(),
            stored_at_ms: now_ms(),
            source: request.source.clone(),
        };
        // Moving from the node-local state: the very version that runs here, its time kept.
        let local_version = local
            .as_ref()
            .and_then(|l| l.deployed_version().filter(|v| same_content(v, &stored)))
            .cloned();
        if let Some(local) = &local_version {
            version = local.version.clone();
            stored.version = version.clone();
            stored.stored_at_ms = local.stored_at_ms;
        }
        let store = |e: String| DeployError::Store(e);
        let bucket = AppsBucket::open(&self.js.context(), &self.lattice, self.replicas)
            .await
            .map_err(|e| store(format!("{e:#}")))?;
        for _ in 0..CAS_ATTEMPTS {
            let current = bucket.read_app(&name).await.map_err(store)?;
            if let Some(local) = &local_version
                && let Some(deployed) = current.deployed()
                && deployed != version
                && current.age().1 > local.stored_at_ms
            {
                tracing::info!(
                    app = name,
                    version = deployed,
                    "the lattice store holds a version of the app stored after this node's config-dir version; it stays"
                );
                self.hand_over(&bucket, &name).await?;
                return unchanged(
                    deployed.to_owned(),
                    vec![format!(
                        "app {name:?}: the lattice store holds version {deployed:?}, stored after this node ran {version:?} from its config dir; the store's version stays"
                    )],
                );
            }
            let mut existing = bucket
                .read_version(&current, &name, &version)
                .await
                .map_err(store)?;
            if existing.as_ref().is_some_and(|v| !same_content(v, &stored))
                && request.version.is_none()
                && matches!(request.source, Source::File { .. })
            {
                // A config-dir file edited in place keeps its annotation: its new content gets
                // the annotation with a content suffix, as users of such files expect an edit to
                // roll out.
                version = suffixed(&version, request);
                stored.version = version.clone();
                existing = bucket
                    .read_version(&current, &name, &version)
                    .await
                    .map_err(store)?;
            }
            let mut versions = current.version_names();
            let mut write = Vec::new();
            match &existing {
                Some(existing) if !same_content(existing, &stored) => {
                    return Err(version_exists(&name, version));
                }
                Some(_) if current.deployed() == Some(version.as_str()) => {
                    if local.is_some() {
                        self.hand_over(&bucket, &name).await?;
                    }
                    return unchanged(version, warnings);
                }
                Some(_) => {}
                None => {
                    versions.retain(|v| *v != version);
                    versions.push(version.clone());
                    write.push(stored.clone());
                }
            }
            // The history is bounded: the oldest versions go past MAX_VERSIONS.
            while versions.len() > MAX_VERSIONS {
                let Some(oldest) = versions.iter().position(|v| *v != version) else {
                    break;
                };
                versions.remove(oldest);
            }
            // A record of an earlier release is rewritten, one key per version: every version
            // the head lists gets its key (the one deployed too, when it is an existing one).
            if let Some((_, legacy)) = &current.legacy {
                let rewrite: Vec<StoredVersion> = legacy
                    .versions
                    .iter()
                    .filter(|v| {
                        versions.contains(&v.version)
                            && !write.iter().any(|w| w.version == v.version)
                    })
                    .cloned()
                    .collect();
                write.extend(rewrite);
            }
            // Each version keeps its key; those written now are at the key of their content.
            let mut keys = current
                .head
                .as_ref()
                .map(|(_, head)| head.keys.clone())
                .unwrap_or_default();
            keys.extend(
                write
                    .iter()
                    .map(|v| (v.version.clone(), layout::content_key(v))),
            );
            keys.retain(|v, _| versions.contains(v));
            let (generation, _) = current.age();
            let head = AppHead {
                name: name.clone(),
                deployed: version.clone(),
                versions,
                keys,
                generation: generation.max(self.mirror.generation(&name)) + 1,
                updated_at_ms: now_ms(),
            };
            match bucket.write_app(&current, &head, &write).await {
                Ok(written) => {
                    self.mirror.apply_written(&written);
                    if local.is_some() {
                        self.hand_over(&bucket, &name).await?;
                    }
                    return Ok(DeployOutcome {
                        name,
                        version,
                        changed: true,
                        local: false,
                        warnings,
                    });
                }
                // Another writer got there first: read again.
                Err(WriteError::Conflict(_)) => continue,
                Err(e @ WriteError::TooLarge { .. }) => {
                    return Err(FieldError::new("spec", e.to_string()).into());
                }
                Err(WriteError::Store(e)) => {
                    return Err(DeployError::Store(format!("writing app {name:?}: {e}")));
                }
            }
        }
        Err(DeployError::Store(format!(
            "app {name:?} kept changing under this deploy; try again"
        )))
    }

    /// Drops the node-local record of `name` in favour of the store's copy, once the mirror
    /// holds that copy whole (its deployed version among its versions): the store's keys of
    /// the app are read into the mirror first, as the mirror's watch may not have brought them
    /// yet. Until then the app would drop out of the desired state and its replicas stop.
    ///
    /// # Errors
    /// [`DeployError::Store`]: the store cannot be read, or its copy lacks the deployed
    /// version (changing meanwhile); the node-local record stays, and the move is tried again.
    async fn hand_over(&self, bucket: &AppsBucket, name: &str) -> Result<(), DeployError> {
        let written = bucket.snapshot(name).await.map_err(|e| {
            DeployError::Store(format!(
                "reading app {name:?} to move it into the store: {e}"
            ))
        })?;
        self.mirror.apply_written(&written);
        if self
            .mirror
            .get(name)
            .is_none_or(|(_, record)| record.deployed_version().is_none())
        {
            return Err(DeployError::Store(format!(
                "app {name:?}: the lattice store's copy lacks its deployed version (changing meanwhile); \
                 the node-local copy runs on until the move is tried again"
            )));
        }
        self.mirror.set_local(name, None);
        Ok(())
    }

    /// Removes app `name` (every version) from the lattice, if `only_from` is `None` or its
    /// deployed version came from that source; a node-local app of that source goes at once.
    /// Returns whether it was removed. Unused artifacts are collected by the sweep.
    ///
    /// # Errors
    /// [`DeployError::NoSuchApp`], [`DeployError::NoStore`] (the control API's undeploy while
    /// no store is reachable), or the store cannot be written.
    pub async fn undeploy(
        &self,
        name: &str,
        only_from: Option<&Source>,
    ) -> Result<bool, DeployError> {
        let from = |record: &StoredApp| {
            only_from.is_none_or(|s| record.deployed_version().map(|v| &v.source) == Some(s))
        };
        let no_store = self.no_store();
        if only_from.is_none()
            && let Some(e) = no_store
        {
            return Err(e);
        }
        let mut removed = false;
        if let Some(local) = self.mirror.local(name)
            && from(&local)
        {
            self.mirror.set_local(name, None);
            removed = true;
        }
        if let Some(e) = no_store {
            return match self.mirror.get(name) {
                // Stored from this file too: that waits for the store.
                Some((_, record)) if from(&record) => Err(e),
                _ if removed => Ok(true),
                Some(_) => Ok(false),
                None => Err(DeployError::NoSuchApp(name.to_owned())),
            };
        }
        let store = |e: String| DeployError::Store(e);
        let bucket = AppsBucket::open(&self.js.context(), &self.lattice, self.replicas)
            .await
            .map_err(|e| store(format!("{e:#}")))?;
        for _ in 0..CAS_ATTEMPTS {
            let current = bucket.read_app(name).await.map_err(store)?;
            let Some(deployed) = current.deployed() else {
                return if removed {
                    Ok(true)
                } else {
                    Err(DeployError::NoSuchApp(name.to_owned()))
                };
            };
            if let Some(source) = only_from {
                let version = bucket
                    .read_version(&current, name, deployed)
                    .await
                    .map_err(store)?;
                if version.map(|v| v.source).as_ref() != Some(source) {
                    return Ok(removed);
                }
            }
            match bucket.delete_app(name, &current).await {
                Ok(written) => {
                    self.mirror.apply_written(&written);
                    return Ok(true);
                }
                Err(WriteError::Conflict(_)) => continue,
                Err(e) => return Err(DeployError::Store(format!("deleting app {name:?}: {e}"))),
            }
        }
        Err(DeployError::Store(format!(
            "app {name:?} kept changing under this undeploy; try again"
        )))
    }

    /// One mark-and-sweep pass over the artifacts ([`Artifacts::sweep`]), with the digests every
    /// stored version names (every version key, listed by a head or not) read afresh from the
    /// KV; failures are logged.
    pub async fn sweep_artifacts(&self) {
        if self.no_store().is_some() {
            return;
        }
        let referenced = async || -> anyhow::Result<BTreeSet<String>> {
            let bucket = AppsBucket::open(&self.js.context(), &self.lattice, self.replicas).await?;
            let kv = bucket.kv();
            let keys: Vec<String> = kv.keys().await?.try_collect().await?;
            let mut digests = BTreeSet::new();
            for key in keys {
                let Some(value) = kv.get(key.clone()).await? else {
                    continue;
                };
                match layout::parse_record(&key, &value).map_err(anyhow::Error::msg)? {
                    Some(layout::Record::Legacy(record)) => {
                        digests.extend(record.digests().map(str::to_owned));
                    }
                    Some(layout::Record::Version(version)) => {
                        digests.extend(version.images.into_values());
                    }
                    Some(layout::Record::Head(_)) | None => {}
                }
            }
            Ok(digests)
        };
        if let Err(e) = self.artifacts.sweep(referenced).await {
            tracing::warn!(error = format!("{e:#}"), "collecting unused artifacts");
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
