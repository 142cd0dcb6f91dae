//! `lattice up`: the node's supervision tree — start order, signals, shutdown order.
//!
//! Start: data dir and node key → HTTP ingress bound (not accepting yet: a connection waits in
//! its backlog) → host (engine and linker, built on a blocking thread) and, once it is there,
//! the config dir's components loaded from the code cache or compiled ([`preload`]), both
//! while nats-server starts (supervised; none in external mode) → NATS client → lattice RPC →
//! desired-state mirror (sled) → the supervised tasks ([`crate::supervisor`]): membership,
//! control API, JetStream watch, mirror follower, `host_started`, config-dir watcher (its first
//! pass writes into the lattice's store), artifact sweeper, reconciler (its first pass makes
//! the node up; standalone at once, else after listening up to [`DISCOVERY`] for the other
//! hosts), heartbeat. The ingress accepts from the first routing table with a replica here,
//! or from the node's up, whichever is first. Stop
//! (SIGINT/SIGTERM): heartbeat → `host_stopped` (others re-place at once) → the other tasks in
//! reverse start order, each bounded → HTTP and RPC (drain in-flight requests) → NATS client →
//! nats-server last.
//!
//! Before all of it: the open-files limit raised to its hard limit, the node's [`Readiness`] (fed from here as the parts come up: nats-server,
//! the connection, the store, the first pass, the tasks' health), its [`Liveness`] registry
//! (the nats supervisor, the reconciler and the heartbeat beat in it), the admin endpoint that
//! serves them, and the systemd notifier ([`crate::admin::systemd`]: `READY=1` once ready, the
//! watchdog while the loops are alive).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::admin::liveness::{Beat, Liveness};
use crate::admin::readiness::{Condition, Readiness};
use crate::config::{NatsMode, NodeConfig};
use crate::control;
use crate::host::{Host, InstanceLimits};
use crate::lattice::identity;
use crate::lattice::membership::{Heartbeat, HostInfo, Membership, NodeHealth, Signer};
use crate::lattice::probe::{ProbeState, Probes};
use crate::lattice::rpc::{Peers, Rpc};
use crate::nats::server_config::{LeafRemote, ServerSettings};
use crate::nats::subjects;
use crate::nats::uplink::{Uplink, UplinkState, UplinkTracker};
use crate::nats::{self, NatsSupervisor};
use crate::providers::http::HttpServer;
use crate::providers::http::server::Ingress;
use crate::providers::http_client::Egress;
use crate::providers::keyvalue::KeyValueProviders;
use crate::reconciler::artifacts::{Artifacts, GC_INTERVAL};
use crate::reconciler::store::Mirror;
use crate::reconciler::{AppStore, Deployer, Reconciler, watcher};
use crate::reconciler::{plan, preload};
use crate::supervisor::{Health, RestartPolicy, Supervisor};

/// How long a starting node in leaf or external mode listens for the other hosts (who answer
/// its `host_started` with a heartbeat at once) before it places replicas, at most. A
/// standalone node does not wait: its own nats-server has no leafnode or cluster link and
/// admits the node's local user only, so no other host can be there to answer. Nothing tells
/// how many hosts will answer (host events carry no count of the lattice's hosts), so the wait
/// cannot end at the last answer.
const DISCOVERY: Duration = Duration::from_millis(500);

/// How long a starting node waits for its config dir's first pass (which writes to the
/// lattice's store) before it runs its share from its mirror.
/// Longer than [`UPLINK_WAIT`] and one store attempt, so that a leaf node whose hub is down
/// places its config dir's apps (node-local) before it says it is up.
const FIRST_PASS_WAIT: Duration = Duration::from_secs(10);

/// How long a starting leaf node waits for its uplink before it writes its config dir's
/// manifests to the lattice's store (they are retried after, every 2 s).
const UPLINK_WAIT: Duration = Duration::from_secs(5);

/// How long in-flight lattice invocations get to finish at the node's stop.
const DRAIN_TIMEOUT: Duration = crate::providers::http::server::DRAIN_TIMEOUT;

/// How long the node waits for NATS to take its `host_stopped` and drain at its stop.
const NATS_GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the supervised tasks get, all together, to end at the node's stop before the ones
/// left are aborted (the heartbeat and RPC replies have [`HEARTBEAT_STOP_TIMEOUT`] each). With
/// the other steps of the stop the whole takes at most about 17 s (the systemd unit allows 30).
const TASKS_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the heartbeat (before `host_stopped`) and the RPC replies (after the drain) get to
/// end at the node's stop.
const HEARTBEAT_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// The node's supervised tasks (DESIGN §2), in start order: at stop the heartbeat goes first
/// (then `host_stopped`), the rest in reverse order, the RPC replies after the drain.
const TASK_RPC: &str = "rpc-replies";
const TASK_MEMBERSHIP: &str = "membership";
const TASK_CONTROL: &str = "control-api";
const TASK_JETSTREAM: &str = "jetstream";
const TASK_MIRROR: &str = "mirror";
const TASK_WATCHER: &str = "config-watcher";
const TASK_SWEEPER: &str = "artifact-sweeper";
const TASK_RECONCILER: &str = "reconciler";
const TASK_HEARTBEAT: &str = "heartbeat";

/// Name of the file in the data dir that records the URL of this node's NATS, for CLI commands.
pub const NATS_URL_FILE: &str = "nats.url";

/// The longest a reconcile pass (with the supervisor's longest restart backoff, 30 s, before
/// a restarted one) may rightly keep the reconciler from beating.
const RECONCILER_ALLOWANCE: Duration = Duration::from_secs(60);

/// Beyond three heartbeat intervals, how long the heartbeat may rightly go without beating
/// (a publish held up, the supervisor's longest restart backoff).
const HEARTBEAT_SLACK: Duration = Duration::from_secs(30);

/// Runs the node until SIGINT or SIGTERM, then stops it in order.
///
/// # Errors
/// A part that cannot start: data dir, node key, nats-server (missing binary, no readiness),
/// the NATS connection, the engine, the HTTP ingress address, the config dir.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    raise_fd_limit();
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Its owner's only (mode 0700): it holds the keys the node's NATS admits.
    nats::local_auth::prepare_data_dir(&config.data_dir)?;
    let key = identity::load_or_create(&config.data_dir)?;
    // Host events are signed with the node's key (PROTOCOL.md §Events).
    let signer = Arc::new(Signer::new(key)?);
    let id = signer.id();
    tracing::info!(
        id,
        name = config.name,
        lattice = config.lattice,
        version = env!("CARGO_PKG_VERSION"),
        labels = ?config.labels,
        nats = %config.nats_mode,
        js_domain = config.js_domain.as_deref().unwrap_or("-"),
        "starting lattice node"
    );
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    // First, so that probes get answers while the rest starts.
    let readiness = Readiness::new();
    let liveness = Liveness::new();
    let admin_state = crate::admin::AdminState::new(readiness.clone());
    let admin_stop = CancellationToken::new();
    let admin = match config.admin_addr {
        Some(addr) => {
            crate::admin::metrics::install();
            let server = crate::admin::AdminServer::bind(addr).await?;
            tracing::info!(addr = %server.addr(), "admin endpoint listening");
            if !addr.ip().is_loopback() {
                tracing::warn!(
                    addr = %server.addr(),
                    "the admin endpoint listens on a non-loopback address: /readyz and /metrics \
                     (task errors, app and component names) are readable from the network; \
                     --admin-addr 127.0.0.1:PORT keeps them local"
                );
            }
            Some(tokio::spawn(
                server.serve(admin_state.clone(), admin_stop.clone()),
            ))
        }
        None => None,
    };
    let systemd = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
        crate::admin::systemd::run(readiness.clone(), liveness.clone(), admin_stop.clone()),
    ));

    if let NatsMode::Leaf {
        creds: Some(creds), ..
    } = &config.nats_mode
    {
        nats::user_permissions::warn_if_serve_only(
            creds,
            &config.lattice,
            config.js_domain.as_deref(),
        );
    }
    // Bound before nats-server starts: a client's first connection waits in the backlog
    // instead of being refused, and is answered once its routes lead to replicas.
    let http = Arc::new(HttpServer::bind(config.http_addr).await.with_context(|| {
        format!(
            "starting the http ingress (--http-addr {})",
            config.http_addr
        )
    })?);
    // Built, and the config dir's code loaded, while nats-server starts.
    let host = start_host(&config);
    // The one client identity the node's own nats-server admits (none in external mode).
    let local_user = match &config.nats_mode {
        NatsMode::External { .. } => {
            nats::local_auth::remove(&config.data_dir)?;
            None
        }
        _ => Some(nats::local_auth::load_or_create(&config.data_dir)?),
    };
    let nats_beat = liveness.register("nats-supervisor", nats::supervisor::BEAT_ALLOWANCE);
    let (supervisor, url, uplink) = start_nats(&config, local_user.as_ref(), nats_beat).await?;
    match &supervisor {
        Some(supervisor) => {
            let state = supervisor.state();
            readiness.probe(Condition::NatsServer, move || match &*state.borrow() {
                nats::ServerState::Running { .. } => None,
                nats::ServerState::Unhealthy { pid, why } => {
                    Some(format!("pid {pid} is not healthy: {why}"))
                }
                nats::ServerState::Restarting { why } => Some(format!("restarting: {why}")),
                nats::ServerState::Stopped => Some("stopped".to_owned()),
            });
        }
        // External mode: there is none to wait for.
        None => readiness.met(Condition::NatsServer),
    }
    let url_file = config.data_dir.join(NATS_URL_FILE);
    // Private: an external URL may carry a user and password.
    crate::private_file::write(&url_file, format!("{url}\n").as_bytes(), false)
        .with_context(|| format!("writing {}", url_file.display()))?;

    let auth = match (&config.nats_mode, &local_user) {
        (_, Some(user)) => nats::ClientAuth::Local(user),
        (
            NatsMode::External {
                creds: Some(creds), ..
            },
            None,
        ) => nats::ClientAuth::Creds(creds),
        _ => nats::ClientAuth::None,
    };
    let result = match host.await.context("the component host's start task") {
        Ok(Ok((host, preload))) => {
            run_with_nats(
                &config,
                &url,
                auth,
                uplink,
                (&mut sigterm, &mut sigint),
                Parts {
                    signer,
                    host,
                    http,
                    preload,
                },
                Watch {
                    readiness,
                    liveness,
                    admin: admin_state,
                },
            )
            .await
        }
        Ok(Err(e)) | Err(e) => Err(e),
    };
    if let Some(supervisor) = supervisor {
        supervisor.stop().await;
    }
    let _ = std::fs::remove_file(&url_file);
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    let _ = systemd.await;
    // A failure is logged by the caller (`lattice::run`), with the failures before this point.
    if result.is_ok() {
        tracing::info!("lattice node stopped");
    }
    result
}

/// How long after the NATS connect the shared ingress stays closed at most while a route on
/// it leads to no replica yet ([`open_ingress`]): from then on such a route answers 503 (and
/// forwards once a replica elsewhere is known) instead of holding its clients until up.
const INGRESS_CLOSED_AT_MOST: Duration = Duration::from_secs(2);

/// How often [`open_ingress`] looks at the routing table and membership.
const INGRESS_OPEN_POLL: Duration = Duration::from_millis(20);

/// Opens the shared ingress once every route on it leads to a replica, here or elsewhere as
/// membership tells ([`HttpServer::open_if_routed`]; a table install checks the same), or at
/// `deadline` if the table has a route on it by then; without any route it waits for the node's
/// up (which opens it: a 404 for everything helps no client starting with the node).
async fn open_ingress(http: Arc<HttpServer>, deadline: Instant) {
    loop {
        match http.open_if_routed() {
            Ingress::Open => return,
            Ingress::Unrouted if Instant::now() >= deadline => {
                tracing::debug!("ingress opened with routes whose replicas are not known yet");
                http.open();
                return;
            }
            Ingress::Unrouted | Ingress::NoRoute => {}
        }
        tokio::time::sleep(INGRESS_OPEN_POLL).await;
    }
}

/// Raises the soft limit of open files (`RLIMIT_NOFILE`) to the hard limit: the ingress, the
/// admin endpoint, NATS and sled all need descriptors, and the usual soft limit (1024) is low
/// for a server. Logged at debug; a failure is logged at warn and the node goes on under the
/// limit it has.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open files limit"),
            Err(e) => tracing::warn!(
                error = %e,
                soft,
                hard,
                "cannot raise the open files limit (RLIMIT_NOFILE) to its hard limit"
            ),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open files limit"),
        Err(e) => tracing::warn!(error = %e, "reading the open files limit (RLIMIT_NOFILE)"),
    }
}

/// Builds the component host (engine, linker, code cache, and the egress's TLS roots) on a
/// blocking thread, then starts loading the config dir's components' code in the background
/// ([`preload::config_dir`]): the returned handle aborts that load when dropped.
///
/// # Errors
/// (Of the task) the outgoing HTTPS settings are bad (`--ca-file`), or the engine or linker
/// cannot be created.
fn start_host(
    config: &NodeConfig,
) -> tokio::task::JoinHandle<anyhow::Result<(Host, tokio_util::task::AbortOnDropHandle<()>)>> {
    let (data_dir, ca_files, config_dir) = (
        config.data_dir.clone(),
        config.ca_files.clone(),
        config.config_dir.clone(),
    );
    let limits = InstanceLimits {
        request_timeout: config.request_timeout,
        max_memory_bytes: config.max_instance_memory_bytes,
        pool_instances: config.max_instances,
    };
    tokio::spawn(async move {
        let host = tokio::task::spawn_blocking(move || {
            let egress = Egress::new(&ca_files).context("outgoing HTTPS settings")?;
            Host::new(&data_dir, limits, egress)
        })
        .await
        .context("the component host's build task")??;
        tracing::info!(allocator = ?host.allocator(), "component host ready");
        let preload = tokio::spawn({
            let host = host.clone();
            async move {
                let loaded = preload::config_dir(&config_dir, &host).await;
                tracing::debug!(components = loaded, "config dir's code loaded ahead");
            }
        });
        Ok((host, tokio_util::task::AbortOnDropHandle::new(preload)))
    })
}

/// Starts the node's own nats-server (standalone or leaf mode), or nothing (external mode).
/// Returns the supervisor, the URL the node connects to, and the uplink state.
async fn start_nats(
    config: &NodeConfig,
    local_user: Option<&nats::local_auth::LocalUser>,
    beat: Beat,
) -> anyhow::Result<(Option<NatsSupervisor>, String, watch::Receiver<Uplink>)> {
    let (leaf_remote, uplink) = match &config.nats_mode {
        NatsMode::External { url, .. } => {
            let uplink = Uplink::fixed_channel(UplinkState::External, Some(url.clone()));
            return Ok((None, url.clone(), uplink));
        }
        NatsMode::Standalone => (None, None),
        NatsMode::Leaf { url, creds } => (
            Some(LeafRemote {
                url: url.clone(),
                credentials: creds.clone(),
            }),
            Some(UplinkTracker::start(url.clone())),
        ),
    };
    let client_nkey = local_user
        .context("the node's own nats-server needs its local user")?
        .public_key()
        .to_owned();
    let nats_dir = config.data_dir.join("nats");
    let binary = nats::find_nats_server(config.nats_server.as_deref())?;
    let (tracker, uplink) = match uplink {
        Some((tracker, state)) => (Some(tracker), state),
        None => (None, Uplink::fixed_channel(UplinkState::None, None)),
    };
    // The ports picked here are free when picked, but another socket may take one before
    // nats-server binds it (a port got by binding port 0 may also become an outgoing
    // connection's source port): a start that fails on that is tried again with fresh ports.
    let mut attempt = 1;
    let supervisor = loop {
        let settings = ServerSettings {
            server_name: config.name.clone(),
            client_port: match config.nats_port {
                Some(port) => port,
                None => nats::supervisor::free_loopback_port()?,
            },
            monitor_port: nats::supervisor::free_loopback_port()?,
            // A leaf node uses the hub's JetStream (DESIGN.md §4), so it runs none of its own.
            jetstream_store_dir: leaf_remote.is_none().then(|| nats_dir.join("jetstream")),
            leaf_remote: leaf_remote.clone(),
            client_nkey: client_nkey.clone(),
        };
        match NatsSupervisor::start(
            binary.clone(),
            nats_dir.join("nats-server.conf"),
            &settings,
            tracker.clone(),
            beat.clone(),
        )
        .await
        {
            Ok(supervisor) => break supervisor,
            Err(e) if attempt < NATS_START_ATTEMPTS && is_port_taken(&e) => {
                tracing::warn!(
                    error = format!("{e:#}"),
                    attempt,
                    "a port picked for nats-server was taken before it bound it; starting it again with others"
                );
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let url = supervisor.url().to_owned();
    Ok((Some(supervisor), url, uplink))
}

/// Starts of the node's nats-server tried when the ports picked for it were taken meanwhile.
const NATS_START_ATTEMPTS: u32 = 3;

/// Whether nats-server's start failed because a port it was given was in use.
fn is_port_taken(error: &anyhow::Error) -> bool {
    format!("{error:#}").contains("address already in use")
}

/// What this node says of itself in its host events.
struct LocalHost {
    id: String,
    config: NodeConfig,
    started: Instant,
    http_addr: String,
    uplink: watch::Receiver<Uplink>,
    deployer: Arc<Deployer>,
    health: Health,
    /// Whether the membership task's probe subscription is up.
    probe: ProbeState,
}

impl LocalHost {
    fn info(&self) -> HostInfo {
        let components = self.deployer.inventory();
        HostInfo {
            id: self.id.clone(),
            name: self.config.name.clone(),
            lattice: self.config.lattice.clone(),
            labels: self.config.labels.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            heartbeat_interval_ms: self.config.heartbeat_interval.as_millis() as u64,
            uplink: self.uplink.borrow().clone(),
            http_addr: self.http_addr.clone(),
            components,
            failures: self.deployer.failures(),
            health: NodeHealth {
                degraded: self.health.degraded(),
                tasks: self.health.tasks(),
            },
            probe: self.probe.answering(),
        }
    }
}

/// What the node reports about itself while it runs: readiness, the liveness of its loops,
/// and the admin endpoint's refreshers.
struct Watch {
    readiness: Readiness,
    liveness: Liveness,
    admin: crate::admin::AdminState,
}

/// What the node made before NATS: its signer (node key), component host and HTTP ingress.
struct Parts {
    signer: Arc<Signer>,
    host: Host,
    http: Arc<HttpServer>,
    /// The config dir's code loading ahead ([`preload`]): aborted at the first pass or a
    /// signal, whichever is first.
    preload: tokio_util::task::AbortOnDropHandle<()>,
}

/// Replaces the [`Condition::Connection`] probe (and the NATS client it holds) when dropped.
struct ConnectionProbe(Readiness);

impl Drop for ConnectionProbe {
    fn drop(&mut self) {
        self.0
            .waiting(Condition::Connection, "closed: the node is stopping");
    }
}

/// The parts that run on top of a ready NATS.
async fn run_with_nats(
    config: &NodeConfig,
    nats_url: &str,
    auth: nats::ClientAuth<'_>,
    uplink: watch::Receiver<Uplink>,
    (sigterm, sigint): (
        &mut tokio::signal::unix::Signal,
        &mut tokio::signal::unix::Signal,
    ),
    parts: Parts,
    watch: Watch,
) -> anyhow::Result<()> {
    let Watch {
        readiness,
        liveness,
        admin,
    } = watch;
    let Parts {
        signer,
        host,
        http,
        preload,
    } = parts;
    let id = signer.id();
    let started = Instant::now();
    let client = nats::connect(nats_url, &config.name, auth).await?;
    // The probe holds a clone of the client: replaced when this function returns, however it
    // returns, so that no clone outlives the node (reconnecting to a nats-server stopped next,
    // its warnings burying the error the node stops for).
    let _connection_probe = ConnectionProbe(readiness.clone());
    readiness.probe(Condition::Connection, {
        let client = client.clone();
        move || match client.connection_state() {
            async_nats::connection::State::Connected => None,
            async_nats::connection::State::Pending => Some("connecting".to_owned()),
            async_nats::connection::State::Disconnected => {
                Some("disconnected; reconnecting".to_owned())
            }
        }
    });
    let membership = Arc::new(Membership::default());
    admin.before_metrics({
        let membership = membership.clone();
        move || {
            let metrics = crate::admin::metrics::get();
            for (reason, total) in membership.rejections().snapshot().by_reason() {
                metrics.membership_rejected(reason, total);
            }
        }
    });
    let peers = Peers {
        node: id.clone(),
        membership: membership.clone(),
    };
    let rpc = Arc::new(
        Rpc::start(
            client.clone(),
            &config.lattice,
            config.request_timeout,
            peers,
        )
        .await?,
    );
    let _ingress_opener = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(open_ingress(
        http.clone(),
        Instant::now() + INGRESS_CLOSED_AT_MOST,
    )));
    let heartbeat_now = Arc::new(Notify::new());
    let db = sled::open(config.data_dir.join("state"))
        .with_context(|| format!("opening {}", config.data_dir.join("state").display()))?;
    let mirror = Arc::new(Mirror::open(&db)?);
    let file_records = db
        .open_tree("files")
        .context("opening the config-dir records")?;
    let (js, js_state) = nats::SharedJetStream::new(client.clone(), config.js_domain.clone());
    follow_store(&js, &readiness);
    let artifacts = Artifacts::new(
        js.clone(),
        &config.lattice,
        Some(config.data_dir.join("artifacts")),
    )
    .with_replicas(config.store_replicas)
    .with_registry(crate::reconciler::oci::Registry::new(&config.registry)?);
    // keyvalue-nats buckets live in the same JetStream as the apps; keyvalue-sled trees in the
    // node's own database.
    let keyvalue =
        KeyValueProviders::new(Some(js.clone()), Some(db.clone()), config.buckets.clone());
    let deployer = Arc::new(
        Deployer::new(
            host.clone(),
            http.clone(),
            rpc.clone(),
            artifacts.clone(),
            keyvalue,
            config.replica_concurrency,
            config.start_timeout,
        )
        .with_allowed_listen(config.allowed_listen.clone()),
    );
    let apps = Arc::new(
        AppStore::new(
            js.clone(),
            &config.lattice,
            mirror.clone(),
            artifacts.clone(),
            host,
            http.ingress_addr(),
        )
        .with_config_dir(config.config_dir.clone())
        .with_replicas(config.store_replicas),
    );

    // Subscribed before host_started goes out, so the others' answers are heard; a restarted
    // attempt subscribes anew. Before any task is spawned: from there on nothing returns early,
    // so no task (each holding a clone of the client) outlives this function.
    let mut events = Some(Membership::subscribe(&client, &config.lattice).await?);
    let mut tasks = Supervisor::new(RestartPolicy::default());
    readiness.probe(Condition::Tasks, {
        let health = tasks.health();
        move || {
            let failing = health.failing();
            (!failing.is_empty()).then(|| failing.join("; "))
        }
    });
    let probe_state = ProbeState::default();
    let local = Arc::new(LocalHost {
        id: id.clone(),
        config: config.clone(),
        started,
        http_addr: http.ingress_addr().to_string(),
        uplink: uplink.clone(),
        deployer: deployer.clone(),
        health: tasks.health(),
        probe: probe_state.clone(),
    });
    let info_source = local.clone();
    let local_info: Arc<dyn Fn() -> HostInfo + Send + Sync> = Arc::new(move || info_source.info());

    tasks.spawn(TASK_RPC, {
        let rpc = rpc.clone();
        move |shutdown| {
            let rpc = rpc.clone();
            async move { rpc.route_replies(shutdown).await }
        }
    });
    tasks.spawn(TASK_MEMBERSHIP, {
        let (membership, client, lattice, on_join, id, uplink) = (
            membership.clone(),
            client.clone(),
            config.lattice.clone(),
            heartbeat_now.clone(),
            id.clone(),
            uplink.clone(),
        );
        move |shutdown| {
            let (membership, client, lattice, on_join) = (
                membership.clone(),
                client.clone(),
                lattice.clone(),
                on_join.clone(),
            );
            let probes = Probes::new(client.clone(), &lattice, &id, uplink.clone())
                .reporting(probe_state.clone());
            let first = events.take();
            async move {
                let events = match first {
                    Some(events) => events,
                    None => Membership::subscribe(&client, &lattice).await?,
                };
                membership.follow(events, probes, &on_join, shutdown).await
            }
        }
    });
    let control = Arc::new(control::ControlContext {
        lattice: config.lattice.clone(),
        jetstream: js.clone(),
        membership: membership.clone(),
        local: local_info.clone(),
        apps: apps.clone(),
    });
    tasks.spawn(TASK_CONTROL, {
        let client = client.clone();
        move |shutdown| {
            let (client, control) = (client.clone(), control.clone());
            async move {
                // Aborted with the attempt, so an abandoned attempt leaves no endpoint behind.
                let serving = control::serve(client, control, shutdown).await?;
                tokio_util::task::AbortOnDropHandle::new(serving)
                    .await
                    .context("the control API task")
            }
        }
    });
    let discovery = nats::Discovery {
        configured: config.js_domain.clone(),
        reach: match &config.nats_mode {
            NatsMode::Standalone => nats::Reach::Standalone,
            NatsMode::Leaf { url, .. } => nats::Reach::Leaf {
                remote: url.clone(),
                uplink: uplink.clone(),
            },
            NatsMode::External { .. } => nats::Reach::External,
        },
    };
    // The hub's INFO read first (1 s at most), so the first store requests use its domain.
    discovery.prime(&js).await;
    tasks.spawn(TASK_JETSTREAM, {
        let js = js.clone();
        move |shutdown| {
            let watch =
                nats::watch_jetstream(js.clone(), js_state.clone(), discovery.clone(), shutdown);
            async move {
                watch.await;
                Ok(())
            }
        }
    });
    tasks.spawn(TASK_MIRROR, {
        let (mirror, js, lattice) = (mirror.clone(), js.clone(), config.lattice.clone());
        let replicas = config.store_replicas;
        move |shutdown| {
            let follow = mirror
                .clone()
                .follow(js.clone(), lattice.clone(), replicas, shutdown);
            async move {
                follow.await;
                Ok(())
            }
        }
    });

    // Others answer host_started with a heartbeat: this node learns of them before it places.
    let events = Heartbeat::new(client.clone(), &config.lattice, signer.clone());
    events.publish(subjects::HOST_STARTED, &local.info()).await;
    let listen_for = match config.nats_mode {
        NatsMode::Standalone => Duration::ZERO,
        _ => DISCOVERY.min(config.heartbeat_interval),
    };
    let discovered = tokio::time::Instant::now() + listen_for;

    let (watcher_done, watcher_first_pass) = tokio::sync::oneshot::channel();
    tasks.spawn(TASK_WATCHER, {
        let mut first_pass_done = Some(watcher_done);
        let dir = config.config_dir.clone();
        let apps = apps.clone();
        let node = watcher::NodeRef {
            id: id.clone(),
            name: config.name.clone(),
        };
        let uplink = matches!(config.nats_mode, NatsMode::Leaf { .. }).then(|| uplink.clone());
        move |shutdown| {
            let first_pass_done = first_pass_done.take();
            watch_config_dir(
                dir.clone(),
                apps.clone(),
                node.clone(),
                file_records.clone(),
                uplink.clone(),
                shutdown,
                first_pass_done,
            )
        }
    });
    tasks.spawn(TASK_SWEEPER, {
        let (apps, membership, local) = (apps.clone(), membership.clone(), local_info.clone());
        move |shutdown| {
            let sweep = sweep_artifacts(apps.clone(), membership.clone(), local.clone(), shutdown);
            async move {
                sweep.await;
                Ok(())
            }
        }
    });
    let (reconciled, first_pass) = tokio::sync::oneshot::channel();
    let reconciler_beat = liveness.register("reconciler", RECONCILER_ALLOWANCE);
    let reconciler = Reconciler {
        me: id,
        deployer: deployer.clone(),
        mirror,
        membership,
        local: local_info.clone(),
        client: client.clone(),
        lattice: config.lattice.clone(),
        tick: config.heartbeat_interval.min(Duration::from_secs(1)),
        code_cache: config.data_dir.join("cache").join("components"),
        artifacts,
    };
    tasks.spawn(TASK_RECONCILER, {
        let mut watcher_first_pass = Some(watcher_first_pass);
        // Told by whichever attempt completes a pass first: an attempt that fails before its
        // first pass does not make the node ready.
        let reconciled = Arc::new(std::sync::Mutex::new(Some(reconciled)));
        move |shutdown| {
            let reconciler = reconciler.clone();
            let beat = reconciler_beat.clone();
            let watcher_first_pass = watcher_first_pass.take();
            let reconciled = reconciled.clone();
            async move {
                // The config dir's changes first, but a store that does not answer holds the
                // node back no longer than FIRST_PASS_WAIT: it then runs from its mirror. A
                // restarted reconciler starts at once.
                if let Some(watcher_first_pass) = watcher_first_pass {
                    tokio::select! {
                        _ = tokio::time::timeout(FIRST_PASS_WAIT, watcher_first_pass) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                    tokio::time::sleep_until(discovered).await;
                }
                let (start, started) = tokio::sync::oneshot::channel();
                let _ = start.send(());
                let (passed, first_pass) = tokio::sync::oneshot::channel();
                let tell = async {
                    if first_pass.await.is_ok()
                        && let Some(ready) =
                            reconciled.lock().unwrap_or_else(|p| p.into_inner()).take()
                    {
                        let _ = ready.send(());
                    }
                    std::future::pending::<()>().await;
                };
                tokio::select! {
                    () = reconciler.run(started, passed, beat, shutdown) => {}
                    () = tell => {}
                }
                Ok(())
            }
        }
    });
    tasks.spawn(TASK_HEARTBEAT, {
        let (client, lattice, local) = (client.clone(), config.lattice.clone(), local.clone());
        let (interval, now) = (config.heartbeat_interval, heartbeat_now.clone());
        let signer = signer.clone();
        // The heartbeat describes this node before each heartbeat: that call is its beat.
        let beat = liveness.register("heartbeat", interval * 3 + HEARTBEAT_SLACK);
        move |shutdown| {
            let heartbeat = Heartbeat::new(client.clone(), &lattice, signer.clone());
            let local = local.clone();
            let wake = wake_heartbeat(
                local.deployer.on_change(),
                local.uplink.clone(),
                now.clone(),
            );
            let beat = beat.clone();
            let info = move || {
                beat.beat();
                local.info()
            };
            let run = heartbeat.run(info, interval, now.clone(), shutdown);
            async move {
                tokio::select! {
                    () = run => {}
                    () = wake => {}
                }
                Ok(())
            }
        }
    });

    let signal = async {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    };
    tokio::pin!(signal);
    // Up once this node runs its share of the lattice, the config dir's manifests included; a
    // watcher that fails before that does not hold the node back. READY for systemd follows
    // once every readiness condition holds (crate::admin::systemd).
    let early = tokio::select! {
        _ = first_pass => None,
        name = &mut signal => Some(name),
    };
    // From here the deployer loads what it needs itself (or nothing: stopping).
    drop(preload);
    let received = match early {
        Some(name) => name,
        None => {
            readiness.met(Condition::FirstPass);
            // Already open if its routes lead to replicas; else it answers 404s from now on.
            http.open();
            tracing::info!(ingress = %http.ingress_addr(), nats = %crate::nats::redact::redact_url(nats_url), "lattice node is up");
            signal.await
        }
    };
    tracing::info!("{received} received; stopping");
    crate::admin::systemd::stopping();
    tasks.stop(TASK_HEARTBEAT, HEARTBEAT_STOP_TIMEOUT).await;
    // host_stopped first: the others re-place this node's replicas at once, while it finishes
    // what it serves. NATS may be unreachable now (external mode, a restarting nats-server):
    // never wait long.
    let goodbye = async {
        events.publish(subjects::HOST_STOPPED, &local.info()).await;
        client.flush().await
    };
    match tokio::time::timeout(NATS_GOODBYE_TIMEOUT, goodbye).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "sending host_stopped"),
        Err(_) => tracing::warn!(
            "NATS did not take host_stopped within {NATS_GOODBYE_TIMEOUT:?}; others will see this node expire"
        ),
    }
    // The reconciler and watcher first (nothing new starts), membership last; the RPC replies
    // are routed on while in-flight requests drain.
    let mut aborted = tasks.shutdown_after(TASK_RPC, TASKS_STOP_TIMEOUT).await;
    // New invocations go to replicas elsewhere; the ones in flight here finish.
    deployer.stop_serving().await;
    tokio::join!(http.shutdown(), rpc.drain(DRAIN_TIMEOUT));
    aborted.extend(tasks.shutdown(HEARTBEAT_STOP_TIMEOUT).await);
    if !aborted.is_empty() {
        tracing::warn!(?aborted, "tasks aborted at stop");
    }
    // keyvalue-sled writes of the last requests are on disk before the process exits.
    if let Err(e) = db.flush_async().await {
        tracing::warn!(error = %e, "flushing {}", config.data_dir.join("state").display());
    }
    match tokio::time::timeout(NATS_GOODBYE_TIMEOUT, client.drain()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "draining the nats client"),
        Err(_) => tracing::debug!("the nats client did not drain within {NATS_GOODBYE_TIMEOUT:?}"),
    }
    Ok(())
}

/// Makes [`Condition::Store`] follow `js`: unmet with the discovery's reason until the lattice's
/// JetStream (the desired-state store) answers, met for good from then on.
fn follow_store(js: &nats::SharedJetStream, readiness: &Readiness) {
    let state = js.subscribe();
    readiness.probe(Condition::Store, move || match &*state.borrow() {
        nats::JetStreamState::Found { .. } => None,
        nats::JetStreamState::Searching => {
            Some("the lattice's store has not answered yet: looking for its JetStream".to_owned())
        }
        nats::JetStreamState::Unreachable { reason } => Some(format!(
            "the lattice's store has not answered yet: {reason}"
        )),
    });
    let mut state = js.subscribe();
    let readiness = readiness.clone();
    // Ends with the node (the state's sender is dropped).
    tokio::spawn(async move {
        if state
            .wait_for(|s| matches!(s, nats::JetStreamState::Found { .. }))
            .await
            .is_ok()
        {
            readiness.met(Condition::Store);
        }
    });
}

/// Every [`GC_INTERVAL`], if this node is the one of the lattice that sweeps (by rendezvous over
/// the live hosts), collects the artifacts no app uses any more.
async fn sweep_artifacts(
    apps: Arc<AppStore>,
    membership: Arc<Membership>,
    local: Arc<dyn Fn() -> HostInfo + Send + Sync>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(GC_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let me = local();
        let id = me.id.clone();
        let hosts = membership.hosts_with(me);
        if plan::reporter("artifacts", &hosts).is_some_and(|h| h.id == id) {
            apps.sweep_artifacts().await;
        }
    }
}

/// Wakes the heartbeat (`now`) whenever the node's components (`inventory`) or its uplink
/// change, so others see it at once. Runs until the uplink's sender is gone.
async fn wake_heartbeat(
    inventory: Arc<Notify>,
    mut uplink: watch::Receiver<Uplink>,
    now: Arc<Notify>,
) {
    loop {
        tokio::select! {
            () = inventory.notified() => {}
            changed = uplink.changed() => if changed.is_err() {
                // No uplink changes any more: the inventory alone.
                loop {
                    inventory.notified().await;
                    now.notify_one();
                }
            },
        }
        now.notify_one();
    }
}

/// The config-dir watcher, one attempt: a leaf node first waits (up to [`UPLINK_WAIT`]) for its
/// uplink, through which the store is reached; `first_pass_done` is told after the first pass.
///
/// # Errors
/// The watcher's: the directory cannot be created or watched.
async fn watch_config_dir(
    dir: std::path::PathBuf,
    apps: Arc<AppStore>,
    node: watcher::NodeRef,
    records: sled::Tree,
    uplink: Option<watch::Receiver<Uplink>>,
    shutdown: CancellationToken,
    first_pass_done: Option<tokio::sync::oneshot::Sender<()>>,
) -> anyhow::Result<()> {
    if let Some(mut uplink) = uplink {
        let connected = uplink.wait_for(|u| u.state == UplinkState::Connected);
        tokio::select! {
            _ = tokio::time::timeout(UPLINK_WAIT, connected) => {}
            () = shutdown.cancelled() => return Ok(()),
        }
    }
    watcher::run(dir, apps, node, records, shutdown, first_pass_done).await
}
