//! Compiled-code cache: each component is compiled once; its native code is kept in the data dir
//! under the sha256 of its wasm and a hash of the engine's compatibility (wasmtime version and
//! settings), so a restart of the node loads it instead of compiling again.
//!
//! Compiles are gated node-wide: at most [`MAX_CONCURRENT_COMPILES`] run at once (each uses
//! every core wasmtime's parallel compilation can get, and memory in proportion to the wasm),
//! and a wasm being compiled is not compiled a second time meanwhile: the second caller waits
//! and loads the first one's code. Loading cached code does not wait for the gate, and waiting
//! for the gate holds no thread: a start abandoned before its turn (a newer version, its
//! deadline) leaves the queue, while one whose compile has begun finishes it. Each
//! compile runs its functions on a rayon pool of its own (wasmtime's parallel compilation uses
//! the current rayon pool): in one shared pool a small component's functions would queue
//! behind the thousands of a large one, and its start wait for the large one's compile.
//!
//! Code just compiled or read from disk is also kept in memory for [`KEEP_FOR`], so the loads
//! that follow (a deploy's check, then its start; a load ahead of the deploy while the node
//! starts) read and map the file once.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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

/// How long code compiled or loaded stays in memory after its last load (forgotten at a load
/// after that): longer than a deploy's check takes to reach its start, or a node's start to
/// reach its first pass.
pub const KEEP_FOR: Duration = Duration::from_secs(10);

/// The on-disk cache of compiled components, in `<data-dir>/cache/components/`, with the code
/// used in the last [`KEEP_FOR`] in memory. Clones share one compile gate and one memory.
#[derive(Debug, Clone)]
pub struct CodeCache {
    dir: PathBuf,
    engine_key: String,
    gate: Arc<CompileGate>,
    recent: Arc<Mutex<Recent>>,
}

/// Code by digest, with when it was last loaded.
#[derive(Debug, Default)]
struct Recent(HashMap<String, (Component, Instant)>);

impl Recent {
    /// `digest`'s code, if kept (its time renewed).
    fn take(&mut self, digest: &str) -> Option<Component> {
        self.forget_old();
        let (component, at) = self.0.get_mut(digest)?;
        *at = Instant::now();
        Some(component.clone())
    }

    fn keep(&mut self, digest: &str, component: &Component) {
        self.forget_old();
        self.0
            .insert(digest.to_owned(), (component.clone(), Instant::now()));
    }

    /// Forgets the code not used for [`KEEP_FOR`] (its replicas, if any, hold it on).
    fn forget_old(&mut self) {
        let now = Instant::now();
        self.0
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < KEEP_FOR);
    }
}

/// Admits [`MAX_CONCURRENT_COMPILES`] compiles at once, one per digest. Waiting is async and
/// cancel-safe: a caller that gives up before its turn leaves the queue (and holds no thread).
#[derive(Debug)]
struct CompileGate {
    /// The digests admitted (waiting for a permit, or compiling).
    compiling: Mutex<HashSet<String>>,
    /// Told when a digest leaves `compiling`.
    left: tokio::sync::Notify,
    /// One permit per compile that may run.
    permits: Arc<tokio::sync::Semaphore>,
}

impl Default for CompileGate {
    fn default() -> CompileGate {
        CompileGate {
            compiling: Mutex::default(),
            left: tokio::sync::Notify::new(),
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_COMPILES)),
        }
    }
}

/// A compile admitted by the [`CompileGate`]; leaves it when dropped. Moved into the blocking
/// task that compiles, so a compile that has begun ends (and is cached) even if its caller
/// gives up.
pub struct CompileSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    _digest: DigestClaim,
}

/// `digest` in the gate's `compiling` set, until dropped.
struct DigestClaim {
    gate: Arc<CompileGate>,
    digest: String,
}

impl Drop for DigestClaim {
    fn drop(&mut self) {
        self.gate
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.digest);
        self.gate.left.notify_waiters();
    }
}

impl CompileGate {
    /// Waits until no compile of `digest` is admitted, then for one of the permits.
    ///
    /// # Cancel safety
    /// Dropped before it resolves, it leaves the gate as it found it.
    async fn enter(self: &Arc<Self>, digest: &str) -> CompileSlot {
        let claim = loop {
            // Registered before the check, so a digest leaving in between is not missed.
            let left = self.left.notified();
            {
                let mut compiling = self
                    .compiling
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if compiling.insert(digest.to_owned()) {
                    break DigestClaim {
                        gate: self.clone(),
                        digest: digest.to_owned(),
                    };
                }
            }
            left.await;
        };
        let permit = match self.permits.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => unreachable!("the compile gate's semaphore is never closed"),
        };
        CompileSlot {
            _permit: permit,
            _digest: claim,
        }
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
            recent: Arc::default(),
        }
    }

    /// The cached compiled code of the wasm whose sha256 is `digest` (lowercase hex), if there
    /// is usable code: from memory if it was used in the last [`KEEP_FOR`], else from disk.
    /// Blocking (a file read): run it off the async runtime.
    pub fn load(&self, engine: &Engine, digest: &str) -> Option<Component> {
        if let Some(component) = self.recent().take(digest) {
            return Some(component);
        }
        let component = load(engine, &self.path(digest))?;
        self.recent().keep(digest, &component);
        Some(component)
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the node's compile gate (see the module doc) to admit a compile of `digest`.
    ///
    /// # Cancel safety
    /// Dropped before it resolves, it leaves the gate as it found it.
    pub async fn admit(&self, digest: &str) -> CompileSlot {
        self.gate.enter(digest).await
    }

    /// Compiles `wasm` (whose sha256 is `digest`) under `slot`, unless another caller cached it
    /// while this one waited for the gate, and stores the result; a compile that succeeds is
    /// timed in `lattice_component_compile_duration_seconds`. Blocking: run it off the async
    /// runtime; the slot is given back when it returns.
    ///
    /// # Errors
    /// `wasm` is not a valid component for this engine (the error says why).
    pub fn compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        digest: &str,
        slot: CompileSlot,
    ) -> anyhow::Result<(Component, CodeSource)> {
        let _slot = slot;
        if let Some(component) = self.load(engine, digest) {
            return Ok((component, CodeSource::Cache));
        }
        let path = self.path(digest);
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
        let took = started.elapsed();
        crate::admin::metrics::get().compiled(took);
        tracing::debug!(
            digest,
            elapsed_ms = took.as_millis() as u64,
            "compiled component"
        );
        if let Err(e) = store(&path, &component) {
            tracing::warn!(path = %path.display(), error = format!("{e:#}"), "cannot cache compiled code");
        }
        self.recent().keep(digest, &component);
        Ok((component, CodeSource::Compiled))
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}-{}.cwasm", self.engine_key))
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

    /// Runs `digests` through the gate at once, each holding its slot for 50 ms; returns the
    /// most held at once.
    async fn most_at_once(digests: &[&str]) -> usize {
        let gate = Arc::new(CompileGate::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = digests
            .iter()
            .map(|d| {
                let (gate, inside, most, d) =
                    (gate.clone(), inside.clone(), most.clone(), d.to_string());
                tokio::spawn(async move {
                    let _slot = gate.enter(&d).await;
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        most.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn the_gate_admits_two_compiles_and_one_per_digest() {
        assert_eq!(
            most_at_once(&["a", "b", "c", "d", "e"]).await,
            MAX_CONCURRENT_COMPILES
        );
        assert_eq!(most_at_once(&["a", "a", "a"]).await, 1);
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_waiting_leaves_the_gate() {
        let gate = Arc::new(CompileGate::default());
        let first = gate.enter("a").await;
        let second = gate.enter("b").await;
        // Both permits taken: these wait, then give up.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), gate.enter("c")).await;
        assert!(gave_up.is_err());
        let same = tokio::time::timeout(Duration::from_millis(20), gate.enter("a")).await;
        assert!(same.is_err());
        drop((first, second));
        // Nothing of the two is left behind: "c" and "a" get in at once.
        let c = tokio::time::timeout(Duration::from_millis(100), gate.enter("c")).await;
        let a = tokio::time::timeout(Duration::from_millis(100), gate.enter("a")).await;
        assert!(c.is_ok() && a.is_ok());
    }
}
