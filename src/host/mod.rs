//! The component host: one wasmtime `Engine`, the compiled-code cache, the `Linker` with the
//! interfaces we host (DESIGN.md §5), and [`HttpComponent`]s ready to serve requests.
//!
//! ```no_run
//! # async fn example(wasm: Vec<u8>) -> anyhow::Result<()> {
//! use lattice::host::{Host, InstanceLimits};
//! let host = Host::new(std::path::Path::new("/tmp/data"), InstanceLimits::default())?;
//! let prepared = host.prepare_http_component("hello".into(), "http-hello".into(), wasm, 64).await?;
//! // prepared.component.handle(request).await answers one hyper request with a fresh instance.
//! # Ok(()) }
//! ```

mod cache;
mod engine;
mod http;
mod state;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wasmtime::Engine;
use wasmtime::component::Linker;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

pub use cache::{CodeSource, hex, sha256_hex};
pub use engine::Allocator;
pub use http::{HttpComponent, ResponseBody, text_response};
pub use state::HostState;

/// Limits applied to every component instance.
#[derive(Debug, Clone, Copy)]
pub struct InstanceLimits {
    /// Deadline of one request, enforced by epoch interruption (guest code) and a timer (host).
    pub request_timeout: Duration,
    /// Linear-memory cap of one instance, in bytes.
    pub max_memory_bytes: u64,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        InstanceLimits {
            request_timeout: Duration::from_secs(30),
            max_memory_bytes: 128 * 1024 * 1024,
        }
    }
}

/// Why a component could not be made ready to serve.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// The bytes are not a WebAssembly component this engine can compile.
    #[error("not a valid WebAssembly component: {0}")]
    Invalid(String),
    /// The component imports something this node does not host.
    #[error("cannot link the component: {0}")]
    Link(String),
    /// The component does not export `wasi:http/incoming-handler@0.2.x`.
    #[error("not a wasi:http component (it must export wasi:http/incoming-handler@0.2.x): {0}")]
    NotHttp(String),
}

/// A component compiled, linked and pre-instantiated, with where its code came from.
pub struct PreparedComponent {
    /// The component, ready to serve.
    pub component: Arc<HttpComponent>,
    /// Whether its native code was compiled now or loaded from the cache.
    pub code_source: CodeSource,
}

/// The node's component host. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: cache::CodeCache,
    limits: InstanceLimits,
    allocator: Allocator,
}

impl Host {
    /// Creates the engine (pooling allocator, or on-demand where the pool cannot be reserved),
    /// the linker and the code cache in `<data_dir>/cache/components`.
    ///
    /// # Errors
    /// The engine cannot be created or an interface cannot be added to the linker.
    pub fn new(data_dir: &Path, limits: InstanceLimits) -> anyhow::Result<Host> {
        let (engine, allocator) = engine::build(limits.max_memory_bytes)?;
        let mut linker = Linker::new(&engine);
        // Like `wasmtime serve -Scli`: all of WASI 0.2 (cli, clocks, random, io, filesystem
        // without preopens, sockets denying every address), plus wasi:http.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI 0.2")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;
        let cache = cache::CodeCache::new(data_dir.join("cache").join("components"), &engine);
        Ok(Host {
            engine,
            linker: Arc::new(linker),
            cache,
            limits,
            allocator,
        })
    }

    /// The instance allocator in use.
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// Compiles `wasm` (or loads its code from the cache), links it and pre-instantiates it as a
    /// `wasi:http/proxy` component of app `app`, admitting `max_concurrency` requests at once.
    ///
    /// # Errors
    /// [`ComponentError`]: not a component, an import the node does not host, or no
    /// `wasi:http/incoming-handler` export.
    pub async fn prepare_http_component(
        &self,
        app: Arc<str>,
        name: Arc<str>,
        wasm: Vec<u8>,
        max_concurrency: usize,
    ) -> Result<PreparedComponent, ComponentError> {
        let host = self.clone();
        let digest = sha256_hex(&wasm);
        let key = digest.clone();
        let (component, code_source) = tokio::task::spawn_blocking(move || {
            host.cache.load_or_compile(&host.engine, &wasm, &key)
        })
        .await
        .map_err(|e| ComponentError::Invalid(format!("compiler task failed: {e}")))?
        .map_err(|e| ComponentError::Invalid(format!("{e:#}")))?;
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| ComponentError::Link(format!("{e:#}")))?;
        let pre =
            ProxyPre::new(instance_pre).map_err(|e| ComponentError::NotHttp(format!("{e:#}")))?;
        let component = HttpComponent::new(app, name, digest, pre, max_concurrency, self.limits);
        Ok(PreparedComponent {
            component: Arc::new(component),
            code_source,
        })
    }
}
