//! Compiled-code cache: each component is compiled once; its native code is kept in the data dir
//! under the sha256 of its wasm and a hash of the engine's compatibility (wasmtime version and
//! settings), so a restart of the node loads it instead of compiling again.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// Where a component's native code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeSource {
    /// Compiled now (and stored in the cache).
    Compiled,
    /// Loaded from the cache.
    Cache,
}

/// The on-disk cache of compiled components, in `<data-dir>/cache/components/`.
#[derive(Debug, Clone)]
pub struct CodeCache {
    dir: PathBuf,
    engine_key: String,
}

impl CodeCache {
    /// A cache in `dir` for code compiled by `engine`.
    pub fn new(dir: PathBuf, engine: &Engine) -> CodeCache {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex(&hasher.0.finalize()[..8]);
        CodeCache { dir, engine_key }
    }

    /// Loads the compiled code of `wasm` (whose sha256 is `digest`, lowercase hex) from the
    /// cache, or compiles it and stores the result. Blocking: run it off the async runtime.
    ///
    /// # Errors
    /// `wasm` is not a valid component for this engine (the error says why).
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        digest: &str,
    ) -> anyhow::Result<(Component, CodeSource)> {
        let path = self.dir.join(format!("{digest}-{}.cwasm", self.engine_key));
        if path.is_file() {
            // SAFETY: the file was written by `Component::serialize` of an engine with the same
            // compatibility hash, into the node's own data dir; wasmtime checks the header too.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CodeSource::Cache)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = format!("{e:#}"), "discarding unusable compiled code")
                }
            }
        }
        let started = Instant::now();
        let component = Component::new(engine, wasm)?;
        tracing::debug!(
            digest,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compiled component"
        );
        if let Err(e) = store(&path, &component) {
            tracing::warn!(path = %path.display(), error = format!("{e:#}"), "cannot cache compiled code");
        }
        Ok((component, CodeSource::Compiled))
    }
}

/// Writes the serialized component next to `path` and renames it into place, so a reader never
/// sees half a file.
fn store(path: &Path, component: &Component) -> anyhow::Result<()> {
    let dir = path.parent().context("cache path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = component.serialize()?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} into place", tmp.display()))
}

/// Lowercase hex of the sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds `Hash` output into sha256, so the key is stable across Rust versions (unlike
/// `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}
