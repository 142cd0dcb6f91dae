//! Loads the compiled code of the config dir's components ahead of their deploy, while the
//! node's nats-server starts: from the code cache (read and mapped), or compiled (and cached)
//! where there is none. The host keeps what it loaded in memory for a while
//! ([`crate::host`]'s code cache), so the config dir's first pass and the first reconcile pass
//! that follow find it there instead of reading or compiling it themselves.
//!
//! Best effort: a manifest or component that cannot be read, parsed or compiled is skipped
//! (logged at debug); the watcher and the deployer meet the same problem again and report it
//! where it belongs (the file's or the app's status).

use std::path::{Path, PathBuf};

use super::artifacts::read_component_file;
use super::deploy::MAX_MANIFEST_BYTES;
use super::manifest::{self, Image};
use crate::host::{CodeSource, Host};

/// At most this many component files are loaded ahead: past them the deployer loads its own.
pub const MAX_PRELOAD_COMPONENTS: usize = 64;

/// At most this many bytes of component files (wasm, bytes) are loaded ahead, in all.
pub const MAX_PRELOAD_BYTES: u64 = 256 << 20;

/// Loads (or compiles) the code of every component file that the manifests (`*.yaml`,
/// `*.yml`) of `dir` name, each file once, one at a time (so that of the host's compile gate
/// one slot stays free for the deployer's own loads), at most [`MAX_PRELOAD_COMPONENTS`] files
/// and [`MAX_PRELOAD_BYTES`] of them. Returns how many components' code is now loaded; a
/// missing `dir` loads none. The caller drops the future once the deployer's first pass has
/// loaded what it needs (or at a signal).
pub async fn config_dir(dir: &Path, host: &Host) -> usize {
    let files = manifest_files(dir).await;
    let mut components = Vec::new();
    for file in files {
        components.extend(component_files(dir, &file).await);
    }
    // Two components of the same file are one load.
    let mut seen = std::collections::HashSet::new();
    components.retain(|(_, _, path)| seen.insert(path.clone()));
    let (mut loaded, mut bytes) = (0, 0u64);
    for (app, component, path) in components.into_iter().take(MAX_PRELOAD_COMPONENTS) {
        let size = tokio::fs::metadata(&path).await.map_or(0, |m| m.len());
        bytes += size;
        if bytes > MAX_PRELOAD_BYTES {
            tracing::debug!(
                limit = MAX_PRELOAD_BYTES,
                "config dir's components past the preload's bytes left to the deployer"
            );
            break;
        }
        if load(host, &app, &component, &path).await {
            loaded += 1;
        }
    }
    loaded
}

/// Loads (or compiles) the code of component `component` of app `app` from `path`; true if
/// it is loaded now.
async fn load(host: &Host, app: &str, component: &str, path: &Path) -> bool {
    let wasm = match read_component_file(path).await {
        Ok(wasm) => wasm,
        Err(reason) => {
            tracing::debug!(app, component, reason, "not loaded ahead of its deploy");
            return false;
        }
    };
    match host.check_http_component(wasm).await {
        Ok(checked) => {
            match checked.code_source {
                // Said so for the first start of a component: it compiled here.
                CodeSource::Compiled => tracing::info!(
                    app,
                    component,
                    "component compiled while the node starts (config dir)"
                ),
                CodeSource::Cache => tracing::debug!(
                    app,
                    component,
                    "component code loaded from cache while the node starts"
                ),
            }
            true
        }
        Err(e) => {
            tracing::debug!(app, component, error = %e, "not loaded ahead of its deploy");
            false
        }
    }
}

/// The manifest files of `dir`, as the watcher takes them: regular `*.yaml` and `*.yml` files
/// of at most [`MAX_MANIFEST_BYTES`].
async fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return Vec::new();
    };
    let mut files = Vec::new();
    while let Ok(Some(entry)) = entries.next_entry().await {
        let path = entry.path();
        let manifest = super::watcher::named_as_manifest(&path);
        let small = tokio::fs::metadata(&path)
            .await
            .is_ok_and(|m| m.is_file() && m.len() <= MAX_MANIFEST_BYTES as u64);
        if manifest && small {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// (app, component, wasm file) of each component of the manifest `file` whose image is a
/// file; none if the manifest does not parse.
async fn component_files(dir: &Path, file: &Path) -> Vec<(String, String, PathBuf)> {
    let text = match tokio::fs::read_to_string(file).await {
        Ok(text) => text,
        Err(e) => {
            tracing::debug!(file = %file.display(), error = %e, "manifest not read ahead of the watcher");
            return Vec::new();
        }
    };
    // Up to MAX_MANIFEST_BYTES of YAML: parsed off the runtime's workers.
    let parsed = {
        let dir = dir.to_owned();
        tokio::task::spawn_blocking(move || manifest::parse(&text, &dir)).await
    };
    let Ok(parsed) = parsed else {
        return Vec::new();
    };
    match parsed {
        Ok(manifest) => manifest
            .components
            .into_iter()
            .filter_map(|spec| match spec.image {
                Image::File(path) => Some((manifest.name.clone(), spec.name, path)),
                Image::Oci(_) | Image::Artifact { .. } => None,
            })
            .collect(),
        Err(e) => {
            tracing::debug!(file = %file.display(), error = %e, "manifest not parsed ahead of the watcher");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takes_the_manifest_files_the_watcher_takes() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a.yaml", "b.yml", "lattice.toml", "c.txt"] {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        std::fs::create_dir(dir.path().join("d.yaml")).unwrap();
        std::fs::write(
            dir.path().join("big.yaml"),
            vec![b' '; MAX_MANIFEST_BYTES + 1],
        )
        .unwrap();
        let names: Vec<String> = manifest_files(dir.path())
            .await
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a.yaml", "b.yml"]);
        assert!(manifest_files(&dir.path().join("none")).await.is_empty());
    }

    #[tokio::test]
    async fn names_the_file_images_of_a_manifest_and_skips_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("hello.yaml");
        std::fs::write(
            &good,
            "apiVersion: core.oam.dev/v1beta1\nkind: Application\nmetadata:\n  name: hello\nspec:\n  components:\n    - name: web\n      type: component\n      properties:\n        image: file://./hello.wasm\n",
        )
        .unwrap();
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "kind: [").unwrap();
        assert_eq!(
            component_files(dir.path(), &good).await,
            [(
                "hello".to_owned(),
                "web".to_owned(),
                dir.path().join("./hello.wasm")
            )]
        );
        assert!(component_files(dir.path(), &bad).await.is_empty());
    }
}
