//! The config-dir watcher: `*.yaml`/`*.yml` files are application manifests, deployed into the
//! lattice's desired state as `lattice app deploy` would: a new file deploys lattice-wide, a
//! changed one updates, a removed one undeploys (if the app's deployed version came from it).
//! notify wakes it up; every pass re-reads the whole directory (level-triggered), and a timer
//! re-scans in case an event was lost, sooner while the desired-state store is unreachable.
//!
//! A file deploys when it changes: what this node last deployed from each file (content digest
//! and app) is kept in sled (tree `files`), so a restart neither deploys an unchanged file again
//! (which could roll the lattice back to it) nor forgets a file removed while the node was down.
//!
//! While no lattice store is reachable the files deploy into the node's node-local desired
//! state (they run on this node only; logged once: `no lattice store reachable: apps from <dir>
//! run on this node only`), and move into the store as soon as it is reachable. A file larger
//! than [`MAX_MANIFEST_BYTES`] is refused without being read; like any bad manifest it is tried
//! again when it changes or at the 30 s re-scan, never sooner.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::{RecursiveMode, Watcher as _};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::deploy::{
    self, AppStore, DeployError, DeployRequest, ImagesTo, MAX_MANIFEST_BYTES, ResolvedImages,
};
use super::manifest;
use super::store::Source;
use crate::nats::JetStreamState;

/// Quiet time after a file event before the directory is read, so editors' multi-step saves
/// are seen whole.
const SETTLE: Duration = Duration::from_millis(100);
/// Re-scan interval when no event arrives.
const RESCAN: Duration = Duration::from_secs(30);
/// Re-scan interval while a file waits for the desired-state store to be reachable.
const RESCAN_UNREACHABLE: Duration = Duration::from_secs(2);

/// What this node last deployed from a file, kept in sled across restarts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Deployed {
    /// sha256 of the file's content, hex.
    digest: String,
    /// The app it deployed.
    app: String,
    /// Deployed into the node-local desired state only: still to move into the store.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    local: bool,
}

/// What the watcher last saw of a manifest file.
struct FileState {
    digest: [u8; 32],
    /// The error of its last deploy, if it failed.
    error: Option<Failed>,
    /// The app it deployed.
    app: Option<String>,
    /// Deployed into the node-local desired state only.
    local: bool,
}

/// Why a file was not applied.
#[derive(Clone, PartialEq, Eq)]
struct Failed {
    text: String,
    /// The desired-state store could not be reached: retried soon.
    unreachable: bool,
}

/// This node, as the source of the manifests of its config dir.
#[derive(Clone)]
pub struct NodeRef {
    /// Node id.
    pub id: String,
    /// Node name.
    pub name: String,
}

impl NodeRef {
    fn source(&self, path: &Path) -> Source {
        Source::File {
            node_id: self.id.clone(),
            node: self.name.clone(),
            path: path.display().to_string(),
        }
    }
}

/// Watches `dir` (created if missing) and deploys its manifests into `store` as node `node`
/// until `shutdown`. `first_pass` is told when the manifests present at start have been
/// applied (or failed).
///
/// # Errors
/// The directory cannot be created or watched.
pub async fn run(
    dir: PathBuf,
    store: Arc<AppStore>,
    node: NodeRef,
    records: sled::Tree,
    shutdown: CancellationToken,
    first_pass: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir()
            .context("reading the current dir")?
            .join(dir)
    };
    let mut deployer = DirDeployer {
        store,
        node,
        dir: dir.clone(),
        records,
        pending: BTreeMap::new(),
        local_logged: false,
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating config dir {}", dir.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut notifier = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the directory is itself an event (open, access); only changes count.
        if event.as_ref().map_or(true, touches_manifests) {
            let _ = tx.send(event);
        }
    })
    .context("creating the config-dir watcher")?;
    notifier
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching config dir {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "watching the config dir for manifests");

    let mut store_state = Some(deployer.store.subscribe_store());
    let mut reachable = Reachability(
        store_state
            .as_mut()
            .is_some_and(|state| store_reachable(&state.borrow_and_update())),
    );
    let mut files: BTreeMap<PathBuf, FileState> = BTreeMap::new();
    deployer.find_orphans();
    deployer.scan(&mut files, false).await;
    if let Some(first_pass) = first_pass {
        let _ = first_pass.send(());
    }
    let mut next_rescan = tokio::time::Instant::now() + deployer.rescan_interval(&files);
    loop {
        tokio::select! {
            event = rx.recv() => {
                match event {
                    Some(Err(e)) => tracing::warn!(error = %e, "config-dir watcher error"),
                    Some(Ok(_)) => {}
                    None => anyhow::bail!("config-dir watcher stopped"),
                }
                tokio::time::sleep(SETTLE).await;
                while rx.try_recv().is_ok() {}
                deployer.scan(&mut files, false).await;
            }
            // The timer also retries manifests that failed: the wasm may exist now, the store
            // may be reachable again.
            () = tokio::time::sleep_until(next_rescan) => deployer.scan(&mut files, true).await,
            // Found or lost: node-local apps move into the store, or files go node-local. Only
            // a flip counts (not a new reason for being unreachable): each scan here retries
            // the manifests that failed, which otherwise wait for the timer.
            changed = async {
                match &mut store_state {
                    Some(state) => state.changed().await.map(|()| reachable.flipped(&state.borrow_and_update())),
                    None => std::future::pending().await,
                }
            } => {
                match changed {
                    Ok(true) => deployer.scan(&mut files, true).await,
                    Ok(false) => {}
                    Err(_) => store_state = None,
                }
            }
            () = shutdown.cancelled() => return Ok(()),
        }
        next_rescan = tokio::time::Instant::now() + deployer.rescan_interval(&files);
    }
}

/// Whether the lattice's store counts as reachable in `state` (as [`AppStore::no_store`] sees
/// it: only a JetStream known to be unreachable sends the config dir node-local).
fn store_reachable(state: &JetStreamState) -> bool {
    !matches!(state, JetStreamState::Unreachable { .. })
}

/// Whether the lattice's store was reachable at the last state seen.
struct Reachability(bool);

impl Reachability {
    /// Takes `state`; returns whether reachability flipped with it.
    fn flipped(&mut self, state: &JetStreamState) -> bool {
        let now = store_reachable(state);
        std::mem::replace(&mut self.0, now) != now
    }
}

/// Whether `event` creates, changes or removes something that may be a manifest.
fn touches_manifests(event: &notify::Event) -> bool {
    use notify::EventKind;
    use notify::event::ModifyKind;
    let kind_counts = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Name(_) | ModifyKind::Any)
            | EventKind::Any
            | EventKind::Other
    );
    kind_counts && (event.paths.is_empty() || event.paths.iter().any(|p| named_as_manifest(p)))
}

/// Whether `path` has a manifest's name, `*.yaml` or `*.yml` (the config dir's preload
/// takes the same files).
pub(super) fn named_as_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn is_manifest(path: &Path) -> bool {
    path.is_file() && named_as_manifest(path)
}

struct DirDeployer {
    store: Arc<AppStore>,
    node: NodeRef,
    dir: PathBuf,
    /// What this node deployed from each file (path → [`Deployed`]).
    records: sled::Tree,
    /// Files removed whose app still has to be undeployed (the store was unreachable).
    pending: BTreeMap<PathBuf, String>,
    /// Whether running from node-local desired state was logged (once per outage).
    local_logged: bool,
}

impl DirDeployer {
    /// Sooner while a file or an undeploy waits for a store that should answer (not while
    /// none is reachable at all: the store's state wakes the watcher when it is found).
    fn rescan_interval(&self, files: &BTreeMap<PathBuf, FileState>) -> Duration {
        if self.store.no_store().is_some() {
            return RESCAN;
        }
        let waiting = !self.pending.is_empty()
            || files
                .values()
                .any(|f| f.error.as_ref().is_some_and(|e| e.unreachable));
        if waiting { RESCAN_UNREACHABLE } else { RESCAN }
    }

    fn record(&self, path: &Path) -> Option<Deployed> {
        let bytes = self.records.get(path.to_string_lossy().as_bytes()).ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    fn set_record(&self, path: &Path, record: Option<&Deployed>) {
        let key = path.to_string_lossy();
        let result = match record {
            Some(record) => serde_json::to_vec(record)
                .map_err(anyhow::Error::from)
                .and_then(|v| Ok(self.records.insert(key.as_bytes(), v).map(drop)?)),
            None => self
                .records
                .remove(key.as_bytes())
                .map(drop)
                .map_err(Into::into),
        };
        if let Err(e) = result.and_then(|()| Ok(self.records.flush().map(drop)?)) {
            tracing::warn!(file = %path.display(), error = %e, "recording a deployed manifest file");
        }
    }

    /// Files of this dir this node deployed from that are gone (removed while the node was
    /// down): their apps are to be undeployed.
    fn find_orphans(&mut self) {
        for item in self.records.iter() {
            let Ok((key, value)) = item else { continue };
            let path = PathBuf::from(String::from_utf8_lossy(&key).into_owned());
            let Ok(record) = serde_json::from_slice::<Deployed>(&value) else {
                continue;
            };
            if path.parent() == Some(&self.dir) && !path.exists() {
                self.pending.insert(path, record.app);
            }
        }
    }

    /// Undeploys the apps of removed files (if their deployed version came from the file);
    /// keeps those the store could not be asked about for the next pass.
    async fn undeploy_pending(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for (path, app) in pending {
            let source = self.node.source(&path);
            match self.store.undeploy(&app, Some(&source)).await {
                Ok(true) => {
                    tracing::info!(file = %path.display(), app, "manifest file removed; app undeployed")
                }
                Ok(false) => {
                    tracing::info!(file = %path.display(), app, "manifest file removed; the app's deployed version came from elsewhere and stays")
                }
                Err(DeployError::NoSuchApp(_)) => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), app, "manifest file removed, but its app cannot be undeployed yet: {e}");
                    self.pending.insert(path, app);
                    continue;
                }
            }
            self.set_record(&path, None);
        }
    }

    /// One level-triggered pass over the directory.
    async fn scan(&mut self, files: &mut BTreeMap<PathBuf, FileState>, retry_failed: bool) {
        let dir = &self.dir;
        let present: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => {
                let mut paths: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .filter(|p| is_manifest(p))
                    .collect();
                paths.sort();
                paths
            }
            Err(e) => {
                tracing::error!(dir = %dir.display(), error = %e, "cannot read the config dir; keeping every app as it is");
                return;
            }
        };

        let mut changed = false;
        let removed: Vec<PathBuf> = files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in removed {
            let state = files.remove(&path);
            changed = true;
            if let Some(app) = state.and_then(|s| s.app) {
                self.pending.insert(path, app);
            }
        }
        self.undeploy_pending().await;

        let mut contents = Vec::new();
        for path in present {
            // Too large to be a manifest: refused from its size, never read.
            if let Ok(meta) = std::fs::metadata(&path)
                && meta.len() > MAX_MANIFEST_BYTES as u64
            {
                let stamp = format!("{} bytes, modified {:?}", meta.len(), meta.modified().ok());
                let digest: [u8; 32] = Sha256::digest(stamp.as_bytes()).into();
                let before = files.get(&path);
                if before.is_some_and(|f| f.digest == digest) {
                    continue;
                }
                changed = true;
                let error = Failed {
                    text: format!(
                        "{}: {} bytes is more than the {MAX_MANIFEST_BYTES} bytes a manifest may have (not read)",
                        path.display(),
                        meta.len()
                    ),
                    unreachable: false,
                };
                tracing::error!(file = %path.display(), "manifest not applied: {}; what was running keeps running", error.text);
                let app = before.and_then(|f| f.app.clone());
                let local = before.is_some_and(|f| f.local);
                files.insert(
                    path,
                    FileState {
                        digest,
                        error: Some(error),
                        app,
                        local,
                    },
                );
                continue;
            }
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let digest: [u8; 32] = Sha256::digest(&bytes).into();
                    let unchanged = files.get(&path).is_some_and(|f| f.digest == digest);
                    changed |= !unchanged;
                    contents.push((path, bytes, digest, unchanged));
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "cannot read manifest file")
                }
            }
        }
        // Unchanged files are applied again only if their last try failed, and then only when
        // something else changed (a conflicting app may be gone) or `retry_failed` says so.
        let retry_failed = retry_failed || changed;
        let reachable = self.store.no_store().is_none();
        for (path, bytes, digest, unchanged) in contents {
            let before = files.get(&path);
            let failed_before = before.and_then(|f| f.error.clone());
            // Node-local apps move into the store once it is reachable.
            let to_move = reachable && before.is_some_and(|f| f.local);
            if unchanged && !to_move && (failed_before.is_none() || !retry_failed) {
                continue;
            }
            let previous_app = before.and_then(|f| f.app.clone());
            // First seen since the node started, unchanged since this node deployed it.
            let hex = crate::host::hex(&digest);
            if before.is_none()
                && let Some(record) = self
                    .record(&path)
                    .filter(|r| r.digest == hex && (!r.local || !reachable))
            {
                files.insert(
                    path,
                    FileState {
                        digest,
                        error: None,
                        app: Some(record.app),
                        local: record.local,
                    },
                );
                continue;
            }
            let previous_local = before.is_some_and(|f| f.local);
            let result = self.apply_file(&path, &bytes).await;
            if let Ok((app, local)) = &result {
                self.set_record(
                    &path,
                    Some(&Deployed {
                        digest: hex,
                        app: app.clone(),
                        local: *local,
                    }),
                );
            }
            let (app, error, local) = match result {
                Ok((app, local)) => (Some(app), None, local),
                Err(e) => (previous_app, Some(e), previous_local),
            };
            // Log a failure once, not at every re-scan that retries it with the same result.
            if let Some(error) = error
                .as_ref()
                .filter(|e| failed_before.as_ref() != Some(*e) || !unchanged)
            {
                tracing::error!(file = %path.display(), "manifest not applied: {}; what was running keeps running", error.text);
            }
            files.insert(
                path,
                FileState {
                    digest,
                    error,
                    app,
                    local,
                },
            );
        }
        let local = files.values().any(|f| f.local);
        if local && !self.local_logged {
            self.local_logged = true;
            tracing::warn!(
                dir = %self.dir.display(),
                "no lattice store reachable: apps from {} run on this node only",
                self.dir.display()
            );
        } else if !local && self.local_logged && reachable {
            self.local_logged = false;
            tracing::info!(dir = %self.dir.display(), "lattice store reachable: the apps of the config dir are in it");
        }
    }

    /// Parses, uploads and deploys one file (into the node-local desired state while no store
    /// is reachable); returns its app and whether it went node-local. The error text names the
    /// file and the field.
    async fn apply_file(&self, path: &Path, bytes: &[u8]) -> Result<(String, bool), Failed> {
        let failed = |text: String| Failed {
            text,
            unreachable: false,
        };
        let in_file = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let text = std::str::from_utf8(bytes)
            .map_err(|e| failed(in_file(&format!("not UTF-8 text: {e}"))))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let manifest = manifest::parse(text, base).map_err(|e| failed(in_file(&e)))?;
        for warning in &manifest.warnings {
            tracing::warn!(file = %path.display(), app = manifest.name, "{warning}");
        }
        let name = manifest.name.clone();
        let source = self.node.source(path);
        let mirror = self.store.mirror().clone();
        let stored = mirror.record(&name);
        if let Some(record) = &stored {
            let deployed_source = record.deployed_version().map(|v| &v.source);
            if let Some(Source::File {
                node_id,
                path: other,
                ..
            }) = deployed_source
                && *node_id == self.node.id
                && Path::new(other) != path
                && Path::new(other).exists()
            {
                let e = DeployError::DuplicateApp {
                    app: name.clone(),
                    other: other.clone(),
                };
                return Err(failed(in_file(&format!("app {name:?}: {e}"))));
            }
        }
        let to_failure = |e: DeployError| Failed {
            unreachable: e.is_unreachable(),
            text: in_file(&format!("app {name:?}: {e}")),
        };
        let to = if self.store.no_store().is_some() {
            ImagesTo::ThisNode
        } else {
            ImagesTo::Lattice
        };
        // Tags resolve now, as the file deploys (not when the node restarts: an unchanged file
        // is not deployed again). A node-local app moving into the store unchanged keeps the
        // digests it ran with: a tag moved meanwhile changes nothing.
        let pinned = mirror.local(&name).and_then(|record| {
            record
                .deployed_version()
                .filter(|v| v.source == source && v.manifest == text)
                .map(ResolvedImages::of)
        });
        let resolved =
            deploy::resolve_images(&manifest, self.store.artifacts(), to, pinned.as_ref())
                .await
                .map_err(to_failure)?;
        let outcome = self
            .store
            .deploy_file(DeployRequest {
                manifest: text.to_owned(),
                version: None,
                images: resolved.images.clone(),
                oci: resolved.oci.clone(),
                source: source.clone(),
            })
            .await
            .map_err(to_failure)?;
        for warning in &outcome.warnings {
            tracing::warn!(file = %path.display(), app = name, "{warning}");
        }
        if outcome.changed && outcome.local {
            tracing::info!(file = %path.display(), app = name, version = outcome.version, "manifest deployed on this node only (no lattice store reachable)");
        } else if outcome.changed {
            tracing::info!(file = %path.display(), app = name, version = outcome.version, "manifest deployed to the lattice");
            // An artifact found already stored may have been collected between the upload and
            // the store (its last user undeployed meanwhile): put it back.
            deploy::resolve_images(
                &manifest,
                self.store.artifacts(),
                ImagesTo::Lattice,
                Some(&resolved),
            )
            .await
            .map_err(to_failure)?;
        }
        // The same file naming another app now: that app goes.
        let renamed: Vec<String> = mirror
            .desired()
            .iter()
            .filter(|(other, app)| {
                **other != name && app.record.deployed_version().map(|v| &v.source) == Some(&source)
            })
            .map(|(other, _)| other.clone())
            .collect();
        for old in renamed {
            match self.store.undeploy(&old, Some(&source)).await {
                Ok(true) => {
                    tracing::info!(app = old, file = %path.display(), "app undeployed: its manifest now names app {name}")
                }
                Ok(false) | Err(DeployError::NoSuchApp(_)) => {}
                Err(e) => {
                    tracing::warn!(app = old, error = %e, "undeploying the app this file named before")
                }
            }
        }
        Ok((name, outcome.local))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_flip_of_the_stores_reachability_counts() {
        let unreachable = |reason: &str| JetStreamState::Unreachable {
            reason: reason.into(),
        };
        let found = |domain: &str| JetStreamState::Found {
            domain: Some(domain.into()),
        };
        let mut reachable = Reachability(false);
        assert!(!reachable.flipped(&unreachable("a")));
        assert!(
            !reachable.flipped(&unreachable("b")),
            "a new reason is no flip"
        );
        assert!(reachable.flipped(&found("hub")));
        assert!(!reachable.flipped(&found("hub")));
        assert!(!reachable.flipped(&found("ngs")));
        assert!(!reachable.flipped(&JetStreamState::Searching));
        assert!(reachable.flipped(&unreachable("c")));
    }
}
