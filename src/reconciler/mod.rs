//! Desired state → running components on this node: manifests (from the config-dir watcher)
//! are validated, their components prepared and their routes installed, atomically per app.
//!
//! A manifest that fails anywhere (YAML, a field, a missing or non-component wasm, a route
//! another app holds, an address that cannot be bound) changes nothing: the app's previous
//! version, and every other app, keep serving.

pub mod manifest;
pub mod watcher;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Notify;

use crate::host::{CodeSource, Host, HttpComponent};
use crate::lattice::membership::ComponentReplicas;
use crate::lattice::rpc::{Rpc, Serving};
use crate::providers::http::{
    HttpServer, Route, RouteConflict, RouteKey, RouteTarget, Router, RoutingTable,
};
pub use manifest::{FieldError, Manifest};

/// Why a deploy was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A manifest field is wrong, or what it names (wasm file, address) is unusable.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// A route is held by another app.
    #[error(transparent)]
    RouteConflict(#[from] RouteConflict),
    /// A component could not join its lattice queue group (NATS refused the subscription).
    #[error("app {app:?}, component {component:?}: cannot take lattice invocations: {reason}")]
    Serve {
        /// App name.
        app: String,
        /// Component name.
        component: String,
        /// Why.
        reason: String,
    },
    /// The app is deployed from another manifest file.
    #[error("app {app:?} is already deployed from {other}; an app comes from one file")]
    DuplicateApp {
        /// App name.
        app: String,
        /// The file it is deployed from.
        other: PathBuf,
    },
}

/// An app running on this node.
pub struct DeployedApp {
    /// The manifest it runs.
    pub manifest: Manifest,
    /// The file it came from.
    pub source: PathBuf,
    /// Its components with replicas here.
    pub components: Vec<LocalComponent>,
    routes: Vec<Route>,
}

/// A component with replicas on this node, taking lattice invocations while it lives.
pub struct LocalComponent {
    /// The component.
    pub component: Arc<HttpComponent>,
    /// Its replicas here.
    pub replicas: u32,
    /// Its queue-group subscription; `None` once the node stops taking invocations.
    serving: Option<Serving>,
}

/// Applies manifests to this node: one deploy, update or undeploy at a time.
pub struct Deployer {
    host: Host,
    http: Arc<HttpServer>,
    rpc: Arc<Rpc>,
    labels: BTreeMap<String, String>,
    replica_concurrency: u32,
    apps: tokio::sync::Mutex<BTreeMap<String, DeployedApp>>,
    /// What runs here, updated after every change: read without waiting for a deploy (which
    /// may be compiling) to finish.
    inventory: std::sync::Mutex<Vec<ComponentReplicas>>,
    changed: Arc<Notify>,
}

impl Deployer {
    /// A deployer placing components with `host`, routes on `http` (every app's, also those
    /// with no replica here: `rpc` forwards their requests), replicas by `labels`; each replica
    /// admits `replica_concurrency` concurrent requests.
    pub fn new(
        host: Host,
        http: Arc<HttpServer>,
        rpc: Arc<Rpc>,
        labels: BTreeMap<String, String>,
        replica_concurrency: u32,
    ) -> Deployer {
        Deployer {
            host,
            http,
            rpc,
            labels,
            replica_concurrency,
            apps: tokio::sync::Mutex::new(BTreeMap::new()),
            inventory: std::sync::Mutex::new(Vec::new()),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Notified after every change of the components running here.
    pub fn on_change(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// The components with replicas on this node, by app and component.
    pub fn inventory(&self) -> Vec<ComponentReplicas> {
        self.inventory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records the inventory of `apps` and wakes the heartbeat.
    fn changed(&self, apps: &BTreeMap<String, DeployedApp>) {
        let inventory = apps
            .values()
            .flat_map(|a| &a.components)
            .map(|c| ComponentReplicas {
                app: c.component.app().to_owned(),
                component: c.component.name().to_owned(),
                replicas: c.replicas,
                digest: c.component.digest().to_owned(),
            })
            .collect();
        *self.inventory.lock().unwrap_or_else(|p| p.into_inner()) = inventory;
        self.changed.notify_one();
    }

    /// Leaves every component's queue group, so other replicas take new invocations; local
    /// requests are still served. For the node's stop.
    pub async fn stop_serving(&self) {
        let mut apps = self.apps.lock().await;
        for app in apps.values_mut() {
            for component in &mut app.components {
                component.serving = None;
            }
        }
    }

    /// Deploys `manifest` (read from `source`), replacing the running version of the same app
    /// once the new one is ready. Requests in flight finish on the version they started with.
    ///
    /// # Errors
    /// [`DeployError`]; then nothing changed.
    pub async fn deploy(&self, source: &Path, manifest: Manifest) -> Result<(), DeployError> {
        let mut apps = self.apps.lock().await;
        let held_elsewhere = apps
            .get(&manifest.name)
            .filter(|a| a.source != source && a.source.exists());
        if let Some(existing) = held_elsewhere {
            return Err(DeployError::DuplicateApp {
                app: manifest.name.clone(),
                other: existing.source.clone(),
            });
        }
        let app: Arc<str> = manifest.name.as_str().into();
        let mut components = Vec::new();
        for spec in &manifest.components {
            let replicas = spec.scaler.replicas_on(&self.labels);
            if replicas == 0 {
                tracing::info!(app = %app, component = %spec.name, "no replica of this component belongs on this node");
                continue;
            }
            let wasm = read_component_file(&spec.image)
                .await
                .map_err(|reason| FieldError::new(&spec.image_field, reason))?;
            let concurrency =
                usize::try_from(u64::from(replicas) * u64::from(self.replica_concurrency))
                    .unwrap_or(usize::MAX);
            let prepared = self
                .host
                .prepare_http_component(app.clone(), spec.name.as_str().into(), wasm, concurrency)
                .await
                .map_err(|e| {
                    FieldError::new(&spec.image_field, format!("{}: {e}", spec.image.display()))
                })?;
            match prepared.code_source {
                CodeSource::Cache => {
                    tracing::info!(app = %app, component = %spec.name, digest = prepared.component.digest(), "component code loaded from cache (not compiled)")
                }
                CodeSource::Compiled => {
                    tracing::info!(app = %app, component = %spec.name, digest = prepared.component.digest(), "component compiled")
                }
            }
            // Subscribed before the swap, so replicas elsewhere never miss this one.
            let serving = self
                .rpc
                .serve(prepared.component.clone())
                .await
                .map_err(|e| DeployError::Serve {
                    app: app.to_string(),
                    component: spec.name.clone(),
                    reason: format!("{e:#}"),
                })?;
            components.push(LocalComponent {
                component: prepared.component,
                replicas,
                serving: Some(serving),
            });
        }
        let ingress = self.http.ingress_addr();
        let routes: Vec<Route> = manifest
            .http_links
            .iter()
            .map(|link| Route {
                key: RouteKey::new(
                    listener_for(link.address, ingress, &app),
                    link.host.as_deref(),
                    link.path.as_deref(),
                ),
                target: RouteTarget {
                    app: app.clone(),
                    component: link.target.as_str().into(),
                },
            })
            .collect();

        // The same file naming another app now: that app goes in the same swap.
        let renamed_from = apps
            .values()
            .find(|a| a.source == source && a.manifest.name != manifest.name)
            .map(|a| a.manifest.name.clone());
        let others = apps.values().filter(|a| {
            a.manifest.name != manifest.name && Some(&a.manifest.name) != renamed_from.as_ref()
        });
        let table = self.routing_table(
            others
                .map(|a| (&a.routes, &a.components))
                .chain([(&routes, &components)]),
        )?;
        self.http.apply(table).await.map_err(|e| {
            let field = manifest
                .http_links
                .iter()
                .find(|l| l.address == Some(e.addr))
                .map_or_else(
                    || "spec".to_owned(),
                    |l| format!("{}.source.config.address", l.field),
                );
            FieldError::new(field, e.to_string())
        })?;
        let previous = apps.insert(
            manifest.name.clone(),
            DeployedApp {
                manifest,
                source: source.to_path_buf(),
                components,
                routes,
            },
        );
        if let Some(old) = renamed_from {
            apps.remove(&old);
            tracing::info!(app = old, source = %source.display(), "app undeployed: its manifest now names app {app}");
        }
        let deployed = &apps[&*app];
        let routes: Vec<String> = deployed.routes.iter().map(|r| r.key.to_string()).collect();
        tracing::info!(
            app = %app,
            version = deployed.manifest.version.as_deref().unwrap_or("-"),
            source = %source.display(),
            routes = ?routes,
            "{}",
            if previous.is_some() { "app updated" } else { "app deployed" }
        );
        self.changed(&apps);
        Ok(())
    }

    /// Stops serving app `name`; `false` if it was not deployed. Requests in flight finish.
    pub async fn undeploy(&self, name: &str) -> bool {
        let mut apps = self.apps.lock().await;
        let Some(removed) = apps.remove(name) else {
            return false;
        };
        let table = self
            .routing_table(apps.values().map(|a| (&a.routes, &a.components)))
            .expect("routes that coexisted still coexist without one app");
        if let Err(e) = self.http.apply(table).await {
            // Only new listeners can fail to bind; removing an app opens none.
            tracing::error!(error = %e, "updating listeners after undeploy");
        }
        tracing::info!(app = name, source = %removed.source.display(), "app undeployed");
        self.changed(&apps);
        true
    }

    /// The app deployed from `source`, if any.
    pub async fn app_from(&self, source: &Path) -> Option<String> {
        self.apps
            .lock()
            .await
            .values()
            .find(|a| a.source == source)
            .map(|a| a.manifest.name.clone())
    }
}

/// Largest component file accepted, in bytes.
const MAX_COMPONENT_BYTES: u64 = 256 * 1024 * 1024;

/// Reads a component's wasm: a regular file of at most [`MAX_COMPONENT_BYTES`].
async fn read_component_file(path: &Path) -> Result<Vec<u8>, String> {
    let cannot = |e: &dyn std::fmt::Display| format!("cannot read {}: {e}", path.display());
    let meta = tokio::fs::metadata(path).await.map_err(|e| cannot(&e))?;
    if !meta.is_file() {
        return Err(cannot(&"not a regular file"));
    }
    if meta.len() > MAX_COMPONENT_BYTES {
        return Err(cannot(&format!(
            "{} bytes is more than the {MAX_COMPONENT_BYTES} bytes allowed",
            meta.len()
        )));
    }
    tokio::fs::read(path).await.map_err(|e| cannot(&e))
}

/// The listener of an http link's `address`: the shared ingress when the address is the
/// ingress's, or its port on every interface (`0.0.0.0:8000`, as wasmCloud's examples write it:
/// served by the ingress, with a warning saying where it listens); else an own listener.
fn listener_for(address: Option<SocketAddr>, ingress: SocketAddr, app: &str) -> SocketAddr {
    match address {
        None => ingress,
        Some(addr) if addr == ingress => ingress,
        Some(addr) if addr.ip().is_unspecified() && addr.port() == ingress.port() => {
            tracing::warn!(
                app,
                %addr,
                "address is the ingress's port on every interface: served by the shared ingress on {ingress} \
                 (start the node with --http-addr {addr} to listen on every interface)"
            );
            ingress
        }
        Some(addr) => addr,
    }
}

impl Deployer {
    /// Builds the table from apps' routes and components; the earlier app holds a contested
    /// route.
    fn routing_table<'a>(
        &self,
        apps: impl Iterator<Item = (&'a Vec<Route>, &'a Vec<LocalComponent>)>,
    ) -> Result<RoutingTable, RouteConflict> {
        let mut routes = Vec::new();
        let mut components = HashMap::new();
        for (app_routes, app_components) in apps {
            routes.extend(app_routes.iter().cloned());
            for c in app_components {
                let c = &c.component;
                components.insert((Arc::from(c.app()), Arc::from(c.name())), c.clone());
            }
        }
        Ok(RoutingTable {
            router: Router::build(routes)?,
            components,
            remote: Some(self.rpc.clone()),
        })
    }
}
