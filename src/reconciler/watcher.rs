//! The config-dir watcher: `*.yaml`/`*.yml` files are application manifests; a new file deploys,
//! a changed one updates, a removed one undeploys. notify wakes it up; every pass re-reads the
//! whole directory (level-triggered), and a timer re-scans in case an event was lost.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::{Deployer, manifest};

/// Quiet time after a file event before the directory is read, so editors' multi-step saves
/// are seen whole.
const SETTLE: Duration = Duration::from_millis(100);
/// Re-scan interval when no event arrives.
const RESCAN: Duration = Duration::from_secs(30);

/// What the watcher last saw of a manifest file.
struct FileState {
    digest: [u8; 32],
    /// The error of its last deploy, if it failed.
    error: Option<String>,
}

/// Watches `dir` (created if missing) and applies its manifests through `deployer` until
/// `shutdown`. `first_pass` is told when the manifests present at start have been applied.
///
/// # Errors
/// The directory cannot be created or watched.
pub async fn run(
    dir: PathBuf,
    deployer: Arc<Deployer>,
    shutdown: CancellationToken,
    first_pass: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating config dir {}", dir.display()))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the directory is itself an event (open, access); only changes count.
        if event.as_ref().map_or(true, touches_manifests) {
            let _ = tx.send(event);
        }
    })
    .context("creating the config-dir watcher")?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching config dir {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), "watching the config dir for manifests");

    let mut files: BTreeMap<PathBuf, FileState> = BTreeMap::new();
    scan(&dir, &deployer, &mut files, false).await;
    if let Some(first_pass) = first_pass {
        let _ = first_pass.send(());
    }
    let mut rescan = tokio::time::interval_at(tokio::time::Instant::now() + RESCAN, RESCAN);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                scan(&dir, &deployer, &mut files, false).await;
            }
            // The timer also retries manifests that failed: the wasm may exist now, a port may
            // be free.
            _ = rescan.tick() => scan(&dir, &deployer, &mut files, true).await,
            () = shutdown.cancelled() => return Ok(()),
        }
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
    kind_counts
        && (event.paths.is_empty()
            || event
                .paths
                .iter()
                .any(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))))
}

fn is_manifest(path: &Path) -> bool {
    path.is_file()
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        )
}

/// One level-triggered pass over the directory.
async fn scan(
    dir: &Path,
    deployer: &Deployer,
    files: &mut BTreeMap<PathBuf, FileState>,
    retry_failed: bool,
) {
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
        files.remove(&path);
        changed = true;
        if let Some(app) = deployer.app_from(&path).await {
            tracing::info!(file = %path.display(), app, "manifest file removed; undeploying");
            deployer.undeploy(&app).await;
        }
    }

    let mut contents = Vec::new();
    for path in present {
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
    for (path, bytes, digest, unchanged) in contents {
        let failed_before = files.get(&path).and_then(|f| f.error.clone());
        if unchanged && (failed_before.is_none() || !retry_failed) {
            continue;
        }
        let result = apply_file(&path, &bytes, deployer).await;
        let error = result.err();
        // Log a failure once, not at every re-scan that retries it with the same result.
        if let Some(error) = error
            .as_ref()
            .filter(|e| failed_before.as_ref() != Some(*e) || !unchanged)
        {
            tracing::error!(file = %path.display(), "manifest not applied: {error}; what was running keeps running");
        }
        files.insert(path, FileState { digest, error });
    }
}

/// Parses and deploys one file; the error text names the file and the field.
async fn apply_file(path: &Path, bytes: &[u8], deployer: &Deployer) -> Result<(), String> {
    let in_file = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let text = std::str::from_utf8(bytes).map_err(|e| in_file(&format!("not UTF-8 text: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let manifest = manifest::parse(text, base).map_err(|e| in_file(&e))?;
    for warning in &manifest.warnings {
        tracing::warn!(file = %path.display(), app = manifest.name, "{warning}");
    }
    let name = manifest.name.clone();
    deployer
        .deploy(path, manifest)
        .await
        .map_err(|e| in_file(&format!("app {name:?}: {e}")))
}
