//! The component host: one wasmtime `Engine`, the compiled-code cache, the `Linker` with the
//! interfaces we host (DESIGN.md §5), and [`HttpComponent`]s ready to serve requests.
//!
//! Beyond WASI 0.2 and wasi:http, one `bindgen!` (`bindings`) covers `wit/`: one file per
//! interface implements it on [`HostState`] (`keyvalue`, `wasi_config`, `logging`), reading the
//! component's [`Grants`].
//!
//! ```no_run
//! # async fn example(wasm: Vec<u8>) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use lattice::host::{Grants, Host, InstanceLimits};
//! use lattice::providers::http_client::Egress;
//! let egress = Egress::new(&[])?;
//! let host = Host::new(std::path::Path::new("/tmp/data"), InstanceLimits::default(), egress)?;
//! let grants = Arc::new(Grants::none("hello".into(), "http-hello".into()));
//! let prepared = host.prepare_http_component(grants, wasm, 64).await?;
//! // prepared.component.handle(request).await answers one hyper request with a fresh instance.
//! # Ok(()) }
//! ```

mod bindings;
mod cache;
mod engine;
mod grants;
mod http;
mod keyvalue;
mod logging;
mod reuse;
mod state;
mod wasi_config;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use wasmtime::Engine;
use wasmtime::component::Linker;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::providers::http_client::Egress;

pub use cache::{CodeSource, hex, sha256_hex};
pub use engine::{Allocator, DEFAULT_POOL_INSTANCES};
pub use grants::{GrantedBucket, Grants, keyvalue_imports};
pub use http::{
    Admitted, HttpComponent, NotAdmitted, Refused, ResponseBody, Saturation, busy_response,
    text_response,
};
pub use keyvalue::BucketResource;
pub use logging::{GuestLogLimiter, MAX_LINE_BYTES, escape_control, one_line};
pub use reuse::{
    CONCURRENT_REUSE_KEY, DEFAULT_IDLE_TIMEOUT, IDLE_TIMEOUT_KEY, MAX_IDLE_TIMEOUT,
    MAX_REUSE_COUNT, REUSE_COUNT_KEY, REUSE_KEYS, Reuse, ReuseConfigError,
};
pub use state::HostState;

/// Limits applied to every component instance.
#[derive(Debug, Clone, Copy)]
pub struct InstanceLimits {
    /// Deadline of one request, enforced by epoch interruption (guest code) and a timer (host).
    pub request_timeout: Duration,
    /// Linear-memory cap of one instance, in bytes.
    pub max_memory_bytes: u64,
    /// Component instances the node's pooling allocator holds at once, all components
    /// together (`--max-instances`); a request past them gets 503 + `Retry-After`.
    pub pool_instances: u32,
}

impl Default for InstanceLimits {
    fn default() -> Self {
        InstanceLimits {
            request_timeout: Duration::from_secs(30),
            max_memory_bytes: 128 * 1024 * 1024,
            pool_instances: engine::DEFAULT_POOL_INSTANCES,
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
    /// The component imports an interface granted only by a link it does not have.
    #[error("{0}")]
    NotGranted(String),
    /// A config key lattice reads (instance reuse) has a value it refuses.
    #[error(transparent)]
    Config(#[from] ReuseConfigError),
}

/// A component compiled, linked and pre-instantiated, with where its code came from.
pub struct PreparedComponent {
    /// The component, ready to serve.
    pub component: Arc<HttpComponent>,
    /// Whether its native code was compiled now or loaded from the cache.
    pub code_source: CodeSource,
}

/// A component checked to compile, link and export wasi:http, not made ready to serve.
pub struct CheckedComponent {
    /// The interfaces it imports, e.g. `wasi:keyvalue/store@0.2.0-draft`.
    pub imports: Vec<String>,
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
    egress: Egress,
    pool: engine::PoolSlots,
    /// The idle instances of all its components kept for reuse.
    registry: reuse::IdleRegistry,
}

impl Host {
    /// Creates the engine (pooling allocator, or on-demand where the pool cannot be reserved),
    /// the linker and the code cache in `<data_dir>/cache/components`; the components it
    /// prepares send outgoing HTTP with `egress` (the node's roots, `--ca-file`s and limits).
    ///
    /// # Errors
    /// The engine cannot be created or an interface cannot be added to the linker.
    pub fn new(data_dir: &Path, limits: InstanceLimits, egress: Egress) -> anyhow::Result<Host> {
        let (engine, allocator) = engine::build(limits.max_memory_bytes, limits.pool_instances)?;
        let mut linker = Linker::new(&engine);
        // Like `wasmtime serve -Scli`: all of WASI 0.2 (cli, clocks, random, io, filesystem
        // without preopens, sockets denying every address), plus wasi:http.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI 0.2")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;
        // wasi:keyvalue, wasi:config, wasi:logging: each call reads the instance's grants.
        bindings::Capabilities::add_to_linker::<_, wasmtime::component::HasSelf<HostState>>(
            &mut linker,
            |state| state,
        )
        .map_err(anyhow::Error::from)
        .context("linking wasi:keyvalue, wasi:config and wasi:logging")?;
        let cache = cache::CodeCache::new(data_dir.join("cache").join("components"), &engine);
        let pool = engine::PoolSlots::new(&engine, limits.pool_instances);
        Ok(Host {
            pool,
            registry: reuse::IdleRegistry::default(),
            engine,
            linker: Arc::new(linker),
            cache,
            limits,
            allocator,
            egress,
        })
    }

    /// The instance allocator in use.
    pub fn allocator(&self) -> Allocator {
        self.allocator
    }

    /// Compiles `wasm` (or loads its code from the cache), links it and pre-instantiates it as a
    /// `wasi:http/proxy` component with `grants` (its app and component names included),
    /// admitting `max_concurrency` requests at once; its instances are reused as its config's
    /// reuse keys say ([`Reuse::from_config`]; by default a fresh instance per request).
    ///
    /// # Errors
    /// [`ComponentError`]: a reuse key with a bad value, not a component, an import the node
    /// does not host, an import its grants do not allow (`wasi:keyvalue` without a keyvalue
    /// link), or no `wasi:http/incoming-handler` export.
    pub async fn prepare_http_component(
        &self,
        grants: Arc<Grants>,
        wasm: Vec<u8>,
        max_concurrency: usize,
    ) -> Result<PreparedComponent, ComponentError> {
        let reuse = Reuse::from_config(&grants.config)?;
        let digest = sha256_hex(&wasm);
        let (component, code_source) = self.compile(wasm, digest.clone()).await?;
        // Linked first: an import the node does not host is named as such, not as ungranted.
        let pre = self.link(&component)?;
        if let Some(reason) = grants.refusal(&self.imports(&component)) {
            return Err(ComponentError::NotGranted(reason));
        }
        let egress = self.egress.client(
            grants.allowed_hosts.clone(),
            grants.app.clone(),
            grants.component.clone(),
            self.limits.request_timeout,
        );
        let component = HttpComponent::new(
            grants,
            digest,
            pre,
            max_concurrency,
            self.limits,
            egress,
            http::Slots {
                pool: self.pool.clone(),
                registry: self.registry.clone(),
            },
            reuse,
        );
        Ok(PreparedComponent {
            component: Arc::new(component),
            code_source,
        })
    }

    /// Checks that `wasm` compiles, links with what this node hosts and exports wasi:http, as
    /// [`Host::prepare_http_component`] does, without looking at grants; returns its imports.
    ///
    /// # Errors
    /// [`ComponentError`] but `NotGranted`.
    pub async fn check_http_component(
        &self,
        wasm: Vec<u8>,
    ) -> Result<CheckedComponent, ComponentError> {
        let digest = sha256_hex(&wasm);
        let (component, code_source) = self.compile(wasm, digest).await?;
        self.link(&component)?;
        Ok(CheckedComponent {
            imports: self.imports(&component),
            code_source,
        })
    }

    async fn compile(
        &self,
        wasm: Vec<u8>,
        digest: String,
    ) -> Result<(wasmtime::component::Component, CodeSource), ComponentError> {
        let host = self.clone();
        let looked = digest.clone();
        let cached = tokio::task::spawn_blocking(move || host.cache.load(&host.engine, &looked))
            .await
            .map_err(|e| ComponentError::Invalid(format!("compiler task failed: {e}")))?;
        if let Some(component) = cached {
            return Ok((component, CodeSource::Cache));
        }
        // Waiting for the gate holds no thread; once admitted, the compile runs to its end
        // (and is cached) even if this caller gives up.
        let waiting = std::time::Instant::now();
        let slot = self.cache.admit(&digest).await;
        tracing::debug!(
            digest,
            waited_ms = waiting.elapsed().as_millis() as u64,
            "compile admitted"
        );
        let host = self.clone();
        tokio::task::spawn_blocking(move || host.cache.compile(&host.engine, &wasm, &digest, slot))
            .await
            .map_err(|e| ComponentError::Invalid(format!("compiler task failed: {e}")))?
            .map_err(|e| ComponentError::Invalid(format!("{e:#}")))
    }

    fn link(
        &self,
        component: &wasmtime::component::Component,
    ) -> Result<ProxyPre<HostState>, ComponentError> {
        let instance_pre = self
            .linker
            .instantiate_pre(component)
            .map_err(|e| ComponentError::Link(format!("{e:#}")))?;
        ProxyPre::new(instance_pre).map_err(|e| ComponentError::NotHttp(format!("{e:#}")))
    }

    /// The names of the interfaces `component` imports.
    fn imports(&self, component: &wasmtime::component::Component) -> Vec<String> {
        component
            .component_type()
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect()
    }
}
