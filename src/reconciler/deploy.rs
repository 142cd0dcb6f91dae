//! Deploying into the lattice's desired state: a manifest is checked fully before it is stored
//! (schema, names, link targets, artifacts present and loadable as `wasi:http` components,
//! routes free lattice-wide, version naming), then stored as a new version of its app with a
//! compare-and-set on the app's KV record. A rejected manifest changes nothing.
//!
//! Two halves: [`upload_images`] runs where the manifest's files are (the CLI, or the node
//! whose config dir holds it) and puts their bytes into the artifact store; [`AppStore`] runs on
//! a node (the control API's `app.deploy`, the config-dir watcher) and validates and stores.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::nats::SharedJetStream;
use anyhow::Context as _;
use async_nats::jetstream::kv::{CreateErrorKind, UpdateErrorKind};
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::artifacts::{Artifacts, read_component_file};
use super::manifest::{self, FieldError, Image, Manifest};
use super::store::{Mirror, Source, StoredApp, StoredVersion, apps_kv};
use crate::host::{Host, hex};
use crate::lattice::rpc::Resend;
use crate::providers::http::{Route, RouteConflict, RouteKey, RouteTarget, Router};

/// Versions kept per app, newest; the record of an app is one KV value (NATS `max_payload`,
/// 1 MiB by default, bounds it).
pub const MAX_VERSIONS: usize = 100;

/// How often a deploy retries its compare-and-set when another writer changed the app between
/// its read and its write.
const CAS_ATTEMPTS: usize = 5;

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
    /// The desired-state store could not be read or written.
    #[error("desired-state store: {0}")]
    Store(String),
}

/// Uploads the wasm file of every component of `manifest` whose image is a file, and returns
/// component name → digest.
///
/// # Errors
/// A file cannot be read ([`FieldError`] on its `image`), or the artifact store cannot be
/// reached ([`DeployError::Store`]).
pub async fn upload_images(
    manifest: &Manifest,
    artifacts: &Artifacts,
) -> Result<BTreeMap<String, String>, DeployError> {
    let mut images = BTreeMap::new();
    for spec in &manifest.components {
        let Image::File(path) = &spec.image else {
            continue;
        };
        let wasm = read_component_file(path)
            .await
            .map_err(|reason| FieldError::new(&spec.image_field, reason))?;
        let digest = artifacts
            .upload(&wasm)
            .await
            .map_err(|e| DeployError::Store(format!("{e:#}")))?;
        images.insert(spec.name.clone(), digest);
    }
    Ok(images)
}

/// The version name of a manifest: `explicit`, else its `version` annotation, else
/// `sha-<first 12 hex of the text's sha256>` (deploying the same text twice is the same version).
pub fn version_of(explicit: Option<&str>, manifest: &Manifest, text: &str) -> String {
    explicit
        .map(str::to_owned)
        .or_else(|| manifest.version.clone())
        .unwrap_or_else(|| format!("sha-{}", hex(&Sha256::digest(text.as_bytes())[..6])))
}

/// The write side of the desired state, on a node.
pub struct AppStore {
    js: SharedJetStream,
    lattice: String,
    mirror: Arc<Mirror>,
    artifacts: Artifacts,
    host: Host,
    ingress: SocketAddr,
}

impl AppStore {
    /// Writes `lattice`'s desired state through `js`, keeping `mirror` in step at once; checks
    /// components with `host`, routes against the ingress at `ingress`.
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
        }
    }

    /// The node's mirror of the desired state.
    pub fn mirror(&self) -> &Arc<Mirror> {
        &self.mirror
    }

    /// The lattice's artifact store.
    pub fn artifacts(&self) -> &Artifacts {
        &self.artifacts
    }

    /// Validates `request` and stores it as the deployed version of its app.
    ///
    /// # Errors
    /// [`DeployError`], naming the field and the reason; nothing changed.
    pub async fn deploy(&self, request: DeployRequest) -> Result<DeployOutcome, DeployError> {
        let mut manifest = manifest::parse(&request.manifest, Path::new("/"))?;
        manifest.bind_artifacts(&request.images)?;
        let mut version = version_of(request.version.as_deref(), &manifest, &request.manifest);
        if version.is_empty() || version.chars().any(char::is_control) {
            return Err(FieldError::new(
                "metadata.annotations.version",
                format!("{version:?} is not a usable version name"),
            )
            .into());
        }
        // Already deployed as it is (a node restarting with its config dir, a repeated
        // deploy): nothing to check or write.
        if let Some((_, record)) = self.mirror.get(&manifest.name)
            && record.deployed == version
            && record
                .deployed_version()
                .is_some_and(|v| v.manifest == request.manifest && v.images == request.images)
        {
            return Ok(DeployOutcome {
                name: manifest.name,
                version,
                changed: false,
                warnings: Vec::new(),
            });
        }
        let warnings = self.check_components(&manifest).await?;
        self.check_routes(&manifest, &request.source)?;
        for link in &manifest.http_links {
            if let Some(addr) = link.address.filter(|a| {
                a.ip().is_unspecified() && a.port() == self.ingress.port() && *a != self.ingress
            }) {
                tracing::warn!(
                    app = manifest.name,
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
            stored_at_ms: now_ms(),
            source: request.source.clone(),
        };
        let kv = apps_kv(&self.js.context(), &self.lattice)
            .await
            .map_err(|e| DeployError::Store(format!("{e:#}")))?;
        for _ in 0..CAS_ATTEMPTS {
            let current = kv
                .entry(manifest.name.clone())
                .await
                .map_err(|e| DeployError::Store(format!("reading app {:?}: {e}", manifest.name)))?
                .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put);
            let (revision, mut record) = match &current {
                Some(entry) => (
                    Some(entry.revision),
                    serde_json::from_slice::<StoredApp>(&entry.value).map_err(|e| {
                        DeployError::Store(format!(
                            "app {:?}: malformed record: {e}",
                            manifest.name
                        ))
                    })?,
                ),
                None => (
                    None,
                    StoredApp {
                        name: manifest.name.clone(),
                        deployed: version.clone(),
                        versions: Vec::new(),
                    },
                ),
            };
            let same =
                |v: &StoredVersion| v.manifest == stored.manifest && v.images == stored.images;
            let taken = record
                .versions
                .iter()
                .any(|v| v.version == version && !same(v));
            if taken && request.version.is_none() && matches!(request.source, Source::File { .. }) {
                // A config-dir file edited in place keeps its annotation: its new content gets
                // the annotation with a content suffix, as users of such files expect an edit to
                // roll out.
                let mut hasher = Sha256::new();
                hasher.update(request.manifest.as_bytes());
                for (component, digest) in &request.images {
                    hasher.update(format!("\n{component}={digest}").as_bytes());
                }
                version = format!("{version}+sha-{}", hex(&hasher.finalize()[..6]));
                stored.version = version.clone();
            }
            if let Some(existing) = record.versions.iter().find(|v| v.version == version) {
                if !same(existing) {
                    return Err(FieldError::new(
                        "metadata.annotations.version",
                        DeployError::VersionExists {
                            app: manifest.name.clone(),
                            version,
                        }
                        .to_string(),
                    )
                    .into());
                }
                if revision.is_some() && record.deployed == version {
                    return Ok(DeployOutcome {
                        name: manifest.name,
                        version,
                        changed: false,
                        warnings,
                    });
                }
            } else {
                record.versions.push(stored.clone());
            }
            record.deployed = version.clone();
            // One KV value holds the record: the oldest versions go past MAX_VERSIONS.
            while record.versions.len() > MAX_VERSIONS {
                let Some(oldest) = record.versions.iter().position(|v| v.version != version) else {
                    break;
                };
                record.versions.remove(oldest);
            }
            let value =
                serde_json::to_vec(&record).map_err(|e| DeployError::Store(e.to_string()))?;
            let written = match revision {
                Some(revision) => kv
                    .update(&manifest.name, value.into(), revision)
                    .await
                    .map_err(|e| {
                        (
                            e.kind() == UpdateErrorKind::WrongLastRevision,
                            e.to_string(),
                        )
                    }),
                None => kv
                    .create(&manifest.name, value.into())
                    .await
                    .map_err(|e| (e.kind() == CreateErrorKind::AlreadyExists, e.to_string())),
            };
            match written {
                Ok(revision) => {
                    self.mirror.apply(&manifest.name, revision, Some(record));
                    return Ok(DeployOutcome {
                        name: manifest.name,
                        version,
                        changed: true,
                        warnings,
                    });
                }
                // Another writer got there first: read again.
                Err((true, _)) => continue,
                Err((false, e)) => {
                    return Err(DeployError::Store(format!(
                        "writing app {:?}: {e}",
                        manifest.name
                    )));
                }
            }
        }
        Err(DeployError::Store(format!(
            "app {:?} kept changing under this deploy; try again",
            manifest.name
        )))
    }

    /// Removes app `name` (every version) from the lattice, if `only_from` is `None` or its
    /// deployed version came from that source; then collects artifacts no app names.
    /// Returns whether it was removed.
    ///
    /// # Errors
    /// [`DeployError::NoSuchApp`], or the store cannot be written.
    pub async fn undeploy(
        &self,
        name: &str,
        only_from: Option<&Source>,
    ) -> Result<bool, DeployError> {
        let kv = apps_kv(&self.js.context(), &self.lattice)
            .await
            .map_err(|e| DeployError::Store(format!("{e:#}")))?;
        let entry = kv
            .entry(name.to_owned())
            .await
            .map_err(|e| DeployError::Store(format!("reading app {name:?}: {e}")))?
            .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
            .ok_or_else(|| DeployError::NoSuchApp(name.to_owned()))?;
        if let Some(source) = only_from {
            let record: StoredApp = serde_json::from_slice(&entry.value)
                .map_err(|e| DeployError::Store(format!("app {name:?}: malformed record: {e}")))?;
            if record.deployed_version().map(|v| &v.source) != Some(source) {
                return Ok(false);
            }
        }
        kv.delete_expect_revision(name, Some(entry.revision))
            .await
            .map_err(|e| DeployError::Store(format!("deleting app {name:?}: {e}")))?;
        // The delete marker's revision is not returned; one past the record's is a lower bound
        // that orders it after the record, and the watch brings the exact one.
        self.mirror.apply(name, entry.revision + 1, None);
        Ok(true)
    }

    /// One mark-and-sweep pass over the artifacts ([`Artifacts::sweep`]), with the digests every
    /// stored version names read afresh from the KV; failures are logged.
    pub async fn sweep_artifacts(&self) {
        let referenced = async || -> anyhow::Result<BTreeSet<String>> {
            let kv = apps_kv(&self.js.context(), &self.lattice).await?;
            let keys: Vec<String> = kv.keys().await?.try_collect().await?;
            let mut digests = BTreeSet::new();
            for key in keys {
                if let Some(value) = kv.get(key.clone()).await? {
                    let record: StoredApp = serde_json::from_slice(&value)
                        .with_context(|| format!("app {key:?}: malformed record"))?;
                    digests.extend(record.digests().map(str::to_owned));
                }
            }
            Ok(digests)
        };
        if let Err(e) = self.artifacts.sweep(referenced).await {
            tracing::warn!(error = format!("{e:#}"), "collecting unused artifacts");
        }
    }

    /// Every component's artifact exists and is a `wasi:http` component this node can link.
    /// Returns warnings: components importing `wasi:keyvalue` without a keyvalue link, which
    /// are stored but will not start (their status says why).
    async fn check_components(&self, manifest: &Manifest) -> Result<Vec<String>, DeployError> {
        let mut warnings = Vec::new();
        for spec in &manifest.components {
            let Image::Artifact { digest } = &spec.image else {
                continue;
            };
            let wasm = self
                .artifacts
                .fetch(digest)
                .await
                .map_err(|e| FieldError::new(&spec.image_field, format!("{e:#}")))?;
            let checked = self
                .host
                .check_http_component(wasm)
                .await
                .map_err(|e| FieldError::new(&spec.image_field, e.to_string()))?;
            if checked.code_source == crate::host::CodeSource::Compiled {
                tracing::info!(
                    app = manifest.name,
                    component = spec.name,
                    digest,
                    "component compiled (checked for the deploy)"
                );
            }
            let keyvalue = crate::host::keyvalue_imports(&checked.imports);
            if !keyvalue.is_empty() && spec.keyvalue.is_empty() {
                warnings.push(format!(
                    "component {:?} imports {} but has no keyvalue link: it will not start",
                    spec.name,
                    keyvalue.join(", ")
                ));
            }
        }
        Ok(warnings)
    }

    /// The manifest's routes are free: no other deployed app of the lattice holds one (an app
    /// deployed from the same file is being replaced and does not count).
    fn check_routes(&self, manifest: &Manifest, source: &Source) -> Result<(), DeployError> {
        let desired = self.mirror.desired();
        let mut routes = Vec::new();
        for (name, app) in desired.iter() {
            if *name == manifest.name {
                continue;
            }
            let same_file = matches!(source, Source::File { .. })
                && app.record.deployed_version().map(|v| &v.source) == Some(source);
            if same_file {
                continue;
            }
            if let Ok(other) = &app.manifest {
                routes.extend(routes_of(other, self.ingress));
            }
        }
        let held = routes.len();
        routes.extend(routes_of(manifest, self.ingress));
        Router::build(routes.clone()).map(drop).map_err(|conflict| {
            // Name the link that claims the route.
            let field = routes[held..]
                .iter()
                .zip(&manifest.http_links)
                .find(|(route, _)| route.key.to_string() == conflict.route)
                .map_or_else(|| "spec".to_owned(), |(_, link)| link.field.clone());
            FieldError::new(field, conflict.to_string()).into()
        })
    }
}

/// The routes of `manifest` on a node whose shared ingress is `ingress`.
pub fn routes_of(manifest: &Manifest, ingress: SocketAddr) -> Vec<Route> {
    let app: Arc<str> = manifest.name.as_str().into();
    manifest
        .http_links
        .iter()
        .map(|link| Route {
            key: RouteKey::new(
                super::deployer::listener_for(link.address, ingress),
                link.host.as_deref(),
                link.path.as_deref(),
            ),
            target: RouteTarget {
                app: app.clone(),
                component: link.target.as_str().into(),
                resend: manifest
                    .components
                    .iter()
                    .find(|c| c.name == link.target)
                    .map_or(Resend::Idempotent, |c| Resend::of_config(&c.config)),
            },
        })
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
