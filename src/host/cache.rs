//! Compiled-code cache: each component is compiled once; its native code is kept in the data dir
//! under the sha256 of its wasm and a hash of the engine's compatibility (wasmtime version and
//! settings), so a restart of the node loads it instead of compiling again.
//!
//! Compiles are gated node-wide: at most [`MAX_CONCURRENT_COMPILES`] run at once (each uses
//! every core wasmtime's parallel compilation can get, and memory in proportion to the wasm),
//! and a wasm being compiled is not compiled a second time meanwhile: the second caller waits
//! and loads the first one's code. Loading cached code does not wait for the gate. Each
//! compile runs its functions on a rayon pool of its own (wasmtime's parallel compilation uses
//! the current rayon pool): in one shared pool a small component's functions would queue
//! behind the thousands of a large one, and its start wait for the large one's compile.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
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

/// Compiles that run at once on a node; more wait (cache loads do not).
pub const MAX_CONCURRENT_COMPILES: usize = 2;

/// The on-disk cache of compiled components, in `<data-dir>/cache/components/`. Clones share
/// one compile gate.
#[derive(Debug, Clone)]
pub struct CodeCache {
    dir: PathBuf,
    engine_key: String,
    gate: Arc<CompileGate>,
}

/// Admits [`MAX_CONCURRENT_COMPILES`] compiles at once, one per digest.
#[derive(Debug, Default)]
struct CompileGate {
    /// The digests being compiled now.
    compiling: Mutex<HashSet<String>>,
    /// Told when a compile ends.
    ended: Condvar,
}

/// A compile admitted by the [`CompileGate`]; leaves it when dropped.
struct CompileSlot<'a> {
    gate: &'a CompileGate,
    digest: String,
}

impl CompileGate {
    /// Waits (blocking) until fewer than [`MAX_CONCURRENT_COMPILES`] compiles run and none of
    /// `digest`.
    fn enter(&self, digest: &str) -> CompileSlot<'_> {
        let mut compiling = self
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while compiling.len() >= MAX_CONCURRENT_COMPILES || compiling.contains(digest) {
            compiling = self
                .ended
                .wait(compiling)
                .unwrap_or_else(PoisonError::into_inner);
        }
        compiling.insert(digest.to_owned());
        CompileSlot {
            gate: self,
            digest: digest.to_owned(),
        }
    }
}

impl Drop for CompileSlot<'_> {
    fn drop(&mut self) {
        self.gate
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.digest);
        self.gate.ended.notify_all();
    }
}

impl CodeCache {
    /// A cache in `dir` for code compiled by `engine`.
    pub fn new(dir: PathBuf, engine: &Engine) -> CodeCache {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex(&hasher.0.finalize()[..8]);
        CodeCache {
            dir,
            engine_key,
            gate: Arc::default(),
        }
    }

    /// Loads the compiled code of `wasm` (whose sha256 is `digest`, lowercase hex) from the
    /// cache, or compiles it and stores the result. Blocking: run it off the async runtime. A
    /// compile first waits for the node's compile gate (see the module doc); a caller that
    /// gives up waiting for this function leaves it to finish, so the code is cached for the
    /// next attempt.
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
        if let Some(component) = load(engine, &path) {
            return Ok((component, CodeSource::Cache));
        }
        let waiting = Instant::now();
        let _slot = self.gate.enter(digest);
        // Compiled by another caller while this one waited.
        if let Some(component) = load(engine, &path) {
            return Ok((component, CodeSource::Cache));
        }
        let started = Instant::now();
        let component = match rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("compile-{i}"))
            .build()
        {
            Ok(pool) => pool.install(|| Component::new(engine, wasm))?,
            Err(e) => {
                tracing::warn!(error = %e, "no compile threads of its own; compiling on the shared ones");
                Component::new(engine, wasm)?
            }
        };
        tracing::debug!(
            digest,
            waited_ms = started.duration_since(waiting).as_millis() as u64,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compiled component"
        );
        if let Err(e) = store(&path, &component) {
            tracing::warn!(path = %path.display(), error = format!("{e:#}"), "cannot cache compiled code");
        }
        Ok((component, CodeSource::Compiled))
    }
}

/// The cached code at `path`, if there is usable code there.
fn load(engine: &Engine, path: &Path) -> Option<Component> {
    if !path.is_file() {
        return None;
    }
    // SAFETY: the file was written by `Component::serialize` of an engine with the same
    // compatibility hash, into the node's own data dir; wasmtime checks the header too.
    match unsafe { Component::deserialize_file(engine, path) } {
        Ok(component) => Some(component),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = format!("{e:#}"), "discarding unusable compiled code");
            None
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    /// Runs `digests` through the gate on threads at once, each holding its slot for 50 ms;
    /// returns the most held at once.
    fn most_at_once(digests: &[&str]) -> usize {
        let gate = Arc::new(CompileGate::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = digests
            .iter()
            .map(|d| {
                let (gate, inside, most, d) =
                    (gate.clone(), inside.clone(), most.clone(), d.to_string());
                std::thread::spawn(move || {
                    let _slot = gate.enter(&d);
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        most.load(Ordering::SeqCst)
    }

    #[test]
    fn the_gate_admits_two_compiles_and_one_per_digest() {
        assert_eq!(
            most_at_once(&["a", "b", "c", "d", "e"]),
            MAX_CONCURRENT_COMPILES
        );
        assert_eq!(most_at_once(&["a", "a", "a"]), 1);
    }
}
