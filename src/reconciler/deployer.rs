//! [`Deployer`]: makes this node run its share of the lattice. Starts the replicas the plan
//! gives it (fetching the wasm, opening what the component's links grant, compiling or loading
//! the code), stops the ones it no longer names, installs every app's routes in one swap, and
//! keeps what could not start, with why, for the heartbeats and `app status`.
//!
//! Starts do not hold up an apply, nor each other: each runs as a task of its own, under a
//! deadline (`--start-timeout`), while the apply goes on with what runs; the host's code cache
//! bounds how many compile at once. When a start ends, the reconciler is woken
//! ([`Deployer::on_started`]) and the next apply routes to it. A slow or failing component so
//! delays no other app, e.g. the failover of one whose node was lost.
//!
//! What it does is counted per replica in `lattice_reconcile_actions_total{action}`: a start
//! that ends well is `start` for a component new here (or the replicas added to one),
//! `update` for a new version or artifact of one that ran here (as many as replaced old ones,
//! `min(was, now)`, the difference `start` or `stop`), a failed one
//! `failed` (its replicas); replicas the share no longer names, or removed from a running
//! component, are `stop`. `lattice_replicas` follows every change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::artifacts::Artifacts;
use super::deploy;
use super::manifest::{ComponentSpec, Image, Manifest};
use super::plan::{Failure, LocalReplicas};
use super::store::Desired;
use crate::admin::metrics::ReconcileAction;
use crate::host::{CodeSource, GrantedBucket, Grants, Host, HttpComponent};
use crate::lattice::membership::ComponentReplicas;
use crate::lattice::rpc::{Rpc, Serving};
use crate::providers::http::{HttpServer, ListenPolicy, RouteClaims, Router, RoutingTable};
use crate::providers::keyvalue::KeyValueProviders;

/// How long a replica that failed to start waits before it is tried again.
const RETRY_FAILED: Duration = Duration::from_secs(10);

/// A component with replicas on this node, taking lattice invocations while it lives.
struct LocalComponent {
    component: Arc<HttpComponent>,
    replicas: u32,
    version: String,
    /// Its queue-group subscription; `None` once the node stops taking invocations.
    serving: Option<Serving>,
}

/// A start in progress, as its own task.
struct Starting {
    version: String,
    digest: String,
    replicas: u32,
    /// Tells this start from a later one of the same component.
    id: u64,
    task: tokio::task::AbortHandle,
}

/// A start that failed, kept to report it and to wait before trying again.
struct FailedStart {
    version: String,
    digest: String,
    at: Instant,
    reason: String,
}

#[derive(Default)]
struct LocalState {
    components: BTreeMap<(String, String), LocalComponent>,
    starting: HashMap<(String, String), Starting>,
    /// The id of the next start.
    next_start: u64,
    /// Set when the node stops: no more starts.
    stopped: bool,
    failed: HashMap<(String, String), FailedStart>,
    /// The version of every app this node routes, to log deploys, updates and undeploys.
    versions: BTreeMap<String, String>,
    /// What the installed routing table was built from, to skip rebuilding an equal one.
    installed: Option<TableKey>,
    /// (app, component, version) already logged as having no replica here.
    noted: BTreeSet<(String, String, String)>,
    /// (app, address) already logged as outside `--allowed-listen`.
    listen_refused: BTreeSet<(String, SocketAddr)>,
}

/// The apps routed (`name@version`) and the local components behind them (app, component,
/// version, digest, replicas): a component replaced by a start changes one of the last three.
type TableKey = (Vec<String>, Vec<(String, String, String, String, u32)>);

/// Makes this node run its share of the lattice: one apply at a time, starts alongside.
pub struct Deployer {
    starter: Arc<Starter>,
    http: Arc<HttpServer>,
    rpc: Arc<Rpc>,
    /// Held by an apply, and by a start only to record how it ended.
    state: Arc<tokio::sync::Mutex<LocalState>>,
    /// What runs here and what failed, updated after every apply: read without waiting for an
    /// apply to finish.
    inventory: std::sync::Mutex<(Vec<ComponentReplicas>, Vec<Failure>)>,
    changed: Arc<Notify>,
    /// Told when a start ends (well or not).
    started: Arc<Notify>,
    /// Where apps may open listeners of their own (`--allowed-listen`).
    allowed_listen: ListenPolicy,
}

/// What a start needs: fetches, grants, compiles and subscribes one component.
struct Starter {
    host: Host,
    rpc: Arc<Rpc>,
    artifacts: Artifacts,
    keyvalue: KeyValueProviders,
    replica_concurrency: u32,
    start_timeout: Duration,
    /// One permit per start that may fetch (and hold its wasm) at once.
    fetching: Arc<tokio::sync::Semaphore>,
}

/// Starts that may fetch their artifact and wait to compile at once on a node: each holds its
/// whole wasm meanwhile, so a node joining a lattice of many large components holds a few of
/// them, not all. More than the compile gate's 2, so small components start beside large ones.
pub const MAX_CONCURRENT_STARTS: usize = 8;

impl Deployer {
    /// A deployer placing components with `host` (their bytes from `artifacts`, their
    /// keyvalue links' buckets from `keyvalue`), routes on `http` (every app's, also those with
    /// no replica here: `rpc` forwards their requests); each replica admits
    /// `replica_concurrency` concurrent requests. A start (fetch, grants, compile, subscribe)
    /// that takes longer than `start_timeout` fails and is retried like any failed start.
    pub fn new(
        host: Host,
        http: Arc<HttpServer>,
        rpc: Arc<Rpc>,
        artifacts: Artifacts,
        keyvalue: KeyValueProviders,
        replica_concurrency: u32,
        start_timeout: Duration,
    ) -> Deployer {
        Deployer {
            starter: Arc::new(Starter {
                host,
                rpc: rpc.clone(),
                artifacts,
                keyvalue,
                replica_concurrency,
                start_timeout,
                fetching: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_STARTS)),
            }),
            http,
            rpc,
            state: Arc::default(),
            inventory: std::sync::Mutex::new((Vec::new(), Vec::new())),
            changed: Arc::new(Notify::new()),
            started: Arc::new(Notify::new()),
            allowed_listen: ListenPolicy::loopback(),
        }
    }

    /// This deployer with `policy` as the node's `--allowed-listen` (the default is
    /// [`ListenPolicy::loopback`]): an app whose http link names an `address` outside it gets
    /// none of its routes on this node, and a failure with an empty `component` saying why.
    pub fn with_allowed_listen(mut self, policy: ListenPolicy) -> Deployer {
        self.allowed_listen = policy;
        self
    }

    /// Notified when a start ends, well or not: the next apply routes to it (or reports it).
    pub fn on_started(&self) -> Arc<Notify> {
        self.started.clone()
    }

    /// Notified after every change of the components running here or their failures.
    pub fn on_change(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    /// The components with replicas on this node, by app and component.
    pub fn inventory(&self) -> Vec<ComponentReplicas> {
        self.inventory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The replicas this node was given but could not start, with why.
    pub fn failures(&self) -> Vec<Failure> {
        self.inventory
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Abandons the starts in progress and leaves every component's queue group, so other
    /// replicas take new invocations; local requests are still served. For the node's stop.
    pub async fn stop_serving(&self) {
        let mut state = self.state.lock().await;
        state.stopped = true;
        for (_, start) in state.starting.drain() {
            start.task.abort();
        }
        for component in state.components.values_mut() {
            component.serving = None;
        }
    }

    /// Runs `share` here ((app, component) → version and replicas) and routes every app of
    /// `desired`: starts what is missing (a new version's replicas before the old ones stop),
    /// stops what `share` no longer names, installs the routes in one swap. Starts run on as
    /// tasks of their own (see the module doc); what cannot start is reported in
    /// [`Deployer::failures`] and keeps its previous version running.
    pub async fn apply(
        &self,
        desired: &Desired,
        share: &BTreeMap<(String, String), LocalReplicas>,
    ) {
        let mut state = self.state.lock().await;
        let now = Instant::now();
        // The starts this share still wants; any other in progress is abandoned below.
        let mut wanted: BTreeSet<(String, String)> = BTreeSet::new();
        for (key, want) in share {
            let Some(app) = desired.get(&key.0) else {
                continue;
            };
            if want.version != app.record.deployed {
                // Old replicas kept until their replacements run elsewhere: as they are.
                continue;
            }
            let Ok(manifest) = &app.manifest else {
                continue;
            };
            let Some(spec) = manifest.components.iter().find(|c| c.name == key.1) else {
                continue;
            };
            let Image::Artifact { digest } = &spec.image else {
                continue;
            };
            let current = state.components.get(key);
            if current.is_some_and(|c| {
                c.version == want.version
                    && c.component.digest() == digest
                    && c.replicas == want.replicas
            }) {
                continue;
            }
            if let Some(failed) = state.failed.get(key)
                && failed.version == want.version
                && failed.digest == *digest
                && now.duration_since(failed.at) < RETRY_FAILED
            {
                continue;
            }
            wanted.insert(key.clone());
            if state.starting.get(key).is_some_and(|s| {
                s.version == want.version && s.digest == *digest && s.replicas == want.replicas
            }) {
                continue;
            }
            if state.stopped {
                continue;
            }
            if let Some(previous) = state.starting.remove(key) {
                previous.task.abort();
            }
            let id = state.next_start;
            state.next_start += 1;
            tracing::debug!(
                app = key.0,
                component = key.1,
                version = want.version,
                replicas = want.replicas,
                "starting replicas here"
            );
            let task = tokio::spawn(run_start(
                self.starter.clone(),
                self.state.clone(),
                self.started.clone(),
                StartOf {
                    id,
                    key: key.clone(),
                    spec: spec.clone(),
                    digest: digest.clone(),
                    want: want.clone(),
                },
            ));
            state.starting.insert(
                key.clone(),
                Starting {
                    version: want.version.clone(),
                    digest: digest.clone(),
                    replicas: want.replicas,
                    id,
                    task: task.abort_handle(),
                },
            );
        }
        state.starting.retain(|key, start| {
            let keep = wanted.contains(key);
            if !keep {
                start.task.abort();
                tracing::debug!(app = key.0, component = key.1, "start abandoned");
            }
            keep
        });
        let stopped: Vec<(String, String)> = state
            .components
            .keys()
            .filter(|k| !share.contains_key(*k))
            .cloned()
            .collect();
        for key in stopped {
            if let Some(local) = state.components.remove(&key) {
                let metrics = local.component.metrics();
                metrics.replicas(0);
                crate::admin::metrics::get()
                    .reconcile_actions(ReconcileAction::Stop, u64::from(local.replicas));
            }
            tracing::info!(app = key.0, component = key.1, "replicas stopped here");
        }
        state.failed.retain(|k, _| share.contains_key(k));
        self.note_unplaced(&mut state, desired, share);

        let route_failures = self.install_routes(&mut state, desired).await;
        self.log_versions(&mut state, desired);

        let inventory: Vec<ComponentReplicas> = state
            .components
            .iter()
            .map(|((app, component), c)| ComponentReplicas {
                app: app.clone(),
                component: component.clone(),
                replicas: c.replicas,
                digest: c.component.digest().to_owned(),
                version: c.version.clone(),
            })
            .collect();
        let failures: Vec<Failure> = state
            .failed
            .iter()
            .map(|((app, component), f)| Failure {
                app: app.clone(),
                component: component.clone(),
                version: f.version.clone(),
                reason: f.reason.clone(),
            })
            .chain(route_failures)
            .collect();
        let mut current = self.inventory.lock().unwrap_or_else(|p| p.into_inner());
        if current.0 != inventory || current.1 != failures {
            *current = (inventory, failures);
            self.changed.notify_one();
        }
    }

    /// Logs, once per version, the components of `desired` with no replica here.
    fn note_unplaced(
        &self,
        state: &mut LocalState,
        desired: &Desired,
        share: &BTreeMap<(String, String), LocalReplicas>,
    ) {
        let mut noted = BTreeSet::new();
        for (name, app) in desired {
            let Ok(manifest) = &app.manifest else {
                continue;
            };
            for spec in &manifest.components {
                let key = (name.clone(), spec.name.clone());
                if share.contains_key(&key) {
                    continue;
                }
                let entry = (name.clone(), spec.name.clone(), app.record.deployed.clone());
                if !state.noted.contains(&entry) {
                    tracing::info!(
                        app = name,
                        component = spec.name,
                        version = app.record.deployed,
                        "no replica of this component belongs on this node"
                    );
                }
                noted.insert(entry);
            }
        }
        state.noted = noted;
    }

    /// Installs the routes of every app of `desired` (apps stored earlier keep a contested
    /// route, an app listening outside `--allowed-listen` gets none) with the local
    /// components; returns the apps whose routes could not be installed.
    async fn install_routes(&self, state: &mut LocalState, desired: &Desired) -> Vec<Failure> {
        let ingress = self.http.ingress_addr();
        let mut apps: Vec<(&String, &Arc<Manifest>, &str, u64)> = desired
            .iter()
            .filter_map(|(name, app)| {
                let manifest = app.manifest.as_ref().ok()?;
                Some((
                    name,
                    manifest,
                    app.record.deployed.as_str(),
                    app.first_stored_ms(),
                ))
            })
            .collect();
        apps.sort_by_key(|(name, _, _, first)| (*first, (*name).clone()));
        let components: Vec<(String, String, String, String, u32)> = state
            .components
            .iter()
            .map(|((a, c), l)| {
                (
                    a.clone(),
                    c.clone(),
                    l.version.clone(),
                    l.component.digest().to_owned(),
                    l.replicas,
                )
            })
            .collect();
        let mut excluded: BTreeMap<String, String> = BTreeMap::new();
        // An app's own listeners where the node's operator allows them, else none of its
        // routes here (the ingress is the operator's own choice).
        let mut refused = BTreeSet::new();
        for (name, manifest, _, _) in &apps {
            let why = deploy::routes_of(manifest, ingress)
                .iter()
                .map(|r| r.key.listener)
                .filter(|l| *l != ingress)
                .find_map(|l| Some((l, self.allowed_listen.refusal(l)?)));
            if let Some((listener, reason)) = why {
                if !state.listen_refused.contains(&((*name).clone(), listener)) {
                    tracing::warn!(app = name.as_str(), %listener, "app routes refused here: {reason}");
                }
                refused.insert(((*name).clone(), listener));
                excluded.insert((*name).clone(), reason);
            }
        }
        state.listen_refused = refused;
        loop {
            let mut routes = Vec::new();
            let mut included = Vec::new();
            let mut claims = RouteClaims::default();
            for (name, manifest, version, _) in &apps {
                if excluded.contains_key(*name) {
                    continue;
                }
                let mine = deploy::routes_of(manifest, ingress);
                match claims.claim(&mine) {
                    Ok(()) => {
                        routes.extend(mine);
                        included.push(format!("{name}@{version}"));
                    }
                    Err(conflict) => {
                        excluded.insert((*name).clone(), conflict.to_string());
                    }
                }
            }
            let failures: Vec<Failure> = apps
                .iter()
                .filter_map(|(name, _, version, _)| {
                    Some(Failure {
                        app: (*name).clone(),
                        component: String::new(),
                        version: (*version).to_owned(),
                        reason: excluded.get(*name)?.clone(),
                    })
                })
                .collect();
            let key: TableKey = (included, components.clone());
            if state.installed.as_ref() == Some(&key) {
                return failures;
            }
            let table = RoutingTable {
                router: match Router::build(routes) {
                    Ok(router) => router,
                    Err(e) => {
                        tracing::error!(error = %e, "routes that were checked one by one conflict");
                        return failures;
                    }
                },
                components: state
                    .components
                    .iter()
                    .map(|((a, c), l)| {
                        (
                            (Arc::from(a.as_str()), Arc::from(c.as_str())),
                            l.component.clone(),
                        )
                    })
                    .collect(),
                remote: Some(self.rpc.clone()),
            };
            match self.http.apply(table).await {
                Ok(()) => {
                    state.installed = Some(key);
                    return failures;
                }
                Err(e) => {
                    // An app address that cannot be bound: that app's routes stay out.
                    let culprits: Vec<String> = apps
                        .iter()
                        .filter(|(name, m, _, _)| {
                            !excluded.contains_key(*name)
                                && m.http_links.iter().any(|l| l.address == Some(e.addr))
                        })
                        .map(|(name, _, _, _)| (*name).clone())
                        .collect();
                    if culprits.is_empty() {
                        tracing::error!(error = %e, "installing routes");
                        return failures;
                    }
                    for name in culprits {
                        excluded.insert(name, e.to_string());
                    }
                }
            }
        }
    }

    /// Logs apps deployed, updated and undeployed on this node since the last apply.
    fn log_versions(&self, state: &mut LocalState, desired: &Desired) {
        let ingress = self.http.ingress_addr();
        let now: BTreeMap<String, String> = desired
            .iter()
            .map(|(name, app)| (name.clone(), app.record.deployed.clone()))
            .collect();
        for (name, version) in &now {
            let before = state.versions.get(name);
            if before == Some(version) {
                continue;
            }
            let routes: Vec<String> = desired[name]
                .manifest
                .as_ref()
                .map(|m| {
                    deploy::routes_of(m, ingress)
                        .iter()
                        .map(|r| r.key.to_string())
                        .collect()
                })
                .unwrap_or_default();
            tracing::info!(
                app = name,
                version,
                routes = ?routes,
                "{}",
                if before.is_some() { "app updated" } else { "app deployed" }
            );
        }
        for name in state.versions.keys().filter(|n| !now.contains_key(*n)) {
            tracing::info!(app = name, "app undeployed");
        }
        state.versions = now;
    }

    /// Whether no start is in progress.
    pub(super) async fn idle(&self) -> bool {
        self.state.lock().await.starting.is_empty()
    }

    /// What runs here: (app, component) → version and replicas.
    pub(super) async fn running(&self) -> BTreeMap<(String, String), (String, u32)> {
        self.state
            .lock()
            .await
            .components
            .iter()
            .map(|(k, c)| (k.clone(), (c.version.clone(), c.replicas)))
            .collect()
    }
}

/// What one start is of: (app, component), its spec and artifact, the replicas wanted.
struct StartOf {
    id: u64,
    key: (String, String),
    spec: ComponentSpec,
    digest: String,
    want: LocalReplicas,
}

/// One start, as a task of its own: [`Starter::start`] under the deadline, then what came of
/// it recorded in `state` (unless a later start or the node's stop replaced it meanwhile), and
/// `started` told.
async fn run_start(
    starter: Arc<Starter>,
    state: Arc<tokio::sync::Mutex<LocalState>>,
    started: Arc<Notify>,
    start: StartOf,
) {
    let StartOf {
        id,
        key,
        spec,
        digest,
        want,
    } = start;
    let timeout = starter.start_timeout;
    let result = tokio::time::timeout(timeout, starter.start(&key, &spec, &digest, &want))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "did not start within {} (fetching, compiling and subscribing the component, and waiting for its turn to; --start-timeout)",
                humantime::format_duration(timeout)
            ))
        });
    let mut state = state.lock().await;
    if state.starting.get(&key).is_none_or(|s| s.id != id) {
        // Replaced or abandoned while it ran: what it started is dropped here.
        return;
    }
    state.starting.remove(&key);
    match result {
        Ok(local) => {
            state.failed.remove(&key);
            tracing::info!(
                app = key.0,
                component = key.1,
                version = want.version,
                replicas = want.replicas,
                "replicas running here"
            );
            count_started(state.components.get(&key), &local);
            local
                .component
                .metrics()
                .replicas(u64::from(local.replicas));
            state.components.insert(key, local);
        }
        Err(reason) => {
            let repeated = state
                .failed
                .get(&key)
                .is_some_and(|f| f.version == want.version && f.reason == reason);
            if !repeated {
                tracing::error!(
                    app = key.0,
                    component = key.1,
                    version = want.version,
                    "cannot start replicas here: {reason}"
                );
            }
            crate::admin::metrics::get()
                .reconcile_actions(ReconcileAction::Failed, u64::from(want.replicas));
            state.failed.insert(
                key,
                FailedStart {
                    version: want.version,
                    digest,
                    at: Instant::now(),
                    reason,
                },
            );
        }
    }
    drop(state);
    started.notify_one();
}

/// Counts what a start that ended well did, `local` replacing `before` (if one ran here).
fn count_started(before: Option<&LocalComponent>, local: &LocalComponent) {
    let before = before.map(|old| {
        let changed =
            old.version != local.version || old.component.digest() != local.component.digest();
        (u64::from(old.replicas), changed)
    });
    let metrics = crate::admin::metrics::get();
    for (action, count) in started_actions(before, u64::from(local.replicas)) {
        metrics.reconcile_actions(action, count);
    }
}

/// The reconcile actions of `now` replicas replacing `before` (its replica count, and whether
/// its version or artifact differs), each with a count above 0: replicas of a new version or
/// artifact that take the place of old ones are updates, `min(was, now)` of them, and the
/// difference is started or stopped; with the same version and artifact only the difference
/// counts. v1×3 → v2×1 is 1 update and 2 stops; v1×1 → v2×3 is 1 update and 2 starts.
fn started_actions(before: Option<(u64, bool)>, now: u64) -> Vec<(ReconcileAction, u64)> {
    let (was, changed) = before.unwrap_or((0, false));
    let updated = if changed { was.min(now) } else { 0 };
    let actions = [
        (ReconcileAction::Update, updated),
        (ReconcileAction::Start, now.saturating_sub(was)),
        (ReconcileAction::Stop, was.saturating_sub(now)),
    ];
    actions.into_iter().filter(|(_, n)| *n > 0).collect()
}

impl Starter {
    /// Fetches, compiles (or loads from the code cache) and subscribes one component, with
    /// what `spec` grants it (its keyvalue links' buckets opened here).
    async fn start(
        &self,
        key: &(String, String),
        spec: &ComponentSpec,
        digest: &str,
        want: &LocalReplicas,
    ) -> Result<LocalComponent, String> {
        let (app, name) = key;
        let concurrency =
            usize::try_from(u64::from(want.replicas) * u64::from(self.replica_concurrency))
                .unwrap_or(usize::MAX);
        let grants = self.grants(app, spec).await?;
        // From the fetch until the component is compiled: the fetched bytes wait for the
        // compile gate under it.
        let fetching = self.fetching.acquire().await;
        let wasm = self
            .artifacts
            .fetch_component(digest, spec.oci_pin.as_ref())
            .await
            .map_err(|e| format!("{e:#}"))?;
        let prepared = self
            .host
            .prepare_http_component(Arc::new(grants), wasm, concurrency)
            .await
            .map_err(|e| e.to_string())?;
        drop(fetching);
        match prepared.code_source {
            CodeSource::Cache => {
                tracing::info!(
                    app,
                    component = name,
                    digest,
                    "component code loaded from cache (not compiled)"
                )
            }
            CodeSource::Compiled => {
                tracing::info!(app, component = name, digest, "component compiled")
            }
        }
        // Subscribed before the swap, so replicas elsewhere never miss this one.
        let serving = self
            .rpc
            .serve(prepared.component.clone())
            .await
            .map_err(|e| format!("cannot take lattice invocations: {e:#}"))?;
        Ok(LocalComponent {
            component: prepared.component,
            replicas: want.replicas,
            version: want.version.clone(),
            serving: Some(serving),
        })
    }

    /// What `spec` of app `app` grants: its config, its links' buckets (opened, or created when
    /// the link allows it), its allowed outgoing hosts.
    async fn grants(&self, app: &str, spec: &ComponentSpec) -> Result<Grants, String> {
        let mut grants = Grants::none(app.into(), spec.name.as_str().into());
        grants.config = spec.config.clone();
        grants.allowed_hosts = Arc::new(spec.allowed_hosts.clone());
        for (name, link) in &spec.keyvalue {
            let bucket = self
                .keyvalue
                .open(app, &link.bucket)
                .await
                .map_err(|e| format!("keyvalue link {name:?}: {e:#}"))?;
            let granted = GrantedBucket {
                bucket,
                interfaces: link.interfaces,
            };
            grants.buckets.insert(name.as_str().into(), granted);
        }
        Ok(grants)
    }
}

/// The listener of an http link's `address`: the shared ingress when the address is the
/// ingress's, or its port on every interface (`0.0.0.0:8000`, as wasmCloud's examples write it:
/// served by the ingress; the deploy warns where it listens); else an own listener.
pub(super) fn listener_for(address: Option<SocketAddr>, ingress: SocketAddr) -> SocketAddr {
    match address {
        Some(addr) if !(addr.ip().is_unspecified() && addr.port() == ingress.port()) => addr,
        _ => ingress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_version_updates_the_replicas_it_replaces_and_starts_or_stops_the_rest() {
        use ReconcileAction::{Start, Stop, Update};
        // First start here.
        assert_eq!(started_actions(None, 3), vec![(Start, 3)]);
        // v1×3 → v2×1: one replica updated, two stopped.
        assert_eq!(
            started_actions(Some((3, true)), 1),
            vec![(Update, 1), (Stop, 2)]
        );
        // v1×1 → v2×3: one updated, two started.
        assert_eq!(
            started_actions(Some((1, true)), 3),
            vec![(Update, 1), (Start, 2)]
        );
        // v1×2 → v2×2: two updated.
        assert_eq!(started_actions(Some((2, true)), 2), vec![(Update, 2)]);
        // Same version: only the difference.
        assert_eq!(started_actions(Some((1, false)), 3), vec![(Start, 2)]);
        assert_eq!(started_actions(Some((3, false)), 1), vec![(Stop, 2)]);
        assert_eq!(started_actions(Some((2, false)), 2), vec![]);
    }
}
