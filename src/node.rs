//! `lattice up`: the node's supervision tree — start order, signals, shutdown order.
//!
//! Start: data dir → nats-server (supervised) → NATS client → host → HTTP ingress → config-dir
//! watcher. Stop (SIGINT/SIGTERM): watcher → HTTP (drain in-flight requests) → NATS client →
//! nats-server last.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::config::NodeConfig;
use crate::host::{Host, InstanceLimits};
use crate::nats::server_config::ServerSettings;
use crate::nats::{self, NatsSupervisor};
use crate::providers::http::HttpServer;
use crate::reconciler::{Deployer, watcher};

/// Delay before a failed config-dir watcher is started again.
const WATCHER_RESTART_DELAY: Duration = Duration::from_secs(1);

/// Name of the file in the data dir that records the URL of this node's NATS, for CLI commands.
pub const NATS_URL_FILE: &str = "nats.url";

/// Runs the node until SIGINT or SIGTERM, then stops it in order.
///
/// # Errors
/// A part that cannot start: data dir, nats-server (missing binary, no readiness), the NATS
/// connection, the engine, the HTTP ingress address, the config dir.
pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tracing::info!(
        name = config.name,
        lattice = config.lattice,
        version = env!("CARGO_PKG_VERSION"),
        labels = ?config.labels,
        "starting lattice node"
    );
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;

    let nats_dir = config.data_dir.join("nats");
    let binary = nats::find_nats_server(config.nats_server.as_deref())?;
    let port = match config.nats_port {
        Some(port) => port,
        None => nats::supervisor::free_loopback_port()?,
    };
    let settings = ServerSettings {
        server_name: config.name.clone(),
        client_port: port,
        jetstream_store_dir: Some(nats_dir.join("jetstream")),
    };
    let supervisor =
        NatsSupervisor::start(binary, nats_dir.join("nats-server.conf"), &settings).await?;
    let url_file = config.data_dir.join(NATS_URL_FILE);
    std::fs::write(&url_file, format!("{}\n", supervisor.url()))
        .with_context(|| format!("writing {}", url_file.display()))?;

    let result = run_with_nats(&config, supervisor.url(), &mut sigterm, &mut sigint).await;
    supervisor.stop().await;
    let _ = std::fs::remove_file(&url_file);
    match &result {
        Ok(()) => tracing::info!("lattice node stopped"),
        Err(e) => tracing::error!(error = format!("{e:#}"), "lattice node failed"),
    }
    result
}

/// The parts that run on top of a ready nats-server.
async fn run_with_nats(
    config: &NodeConfig,
    nats_url: &str,
    sigterm: &mut tokio::signal::unix::Signal,
    sigint: &mut tokio::signal::unix::Signal,
) -> anyhow::Result<()> {
    let client = nats::connect(nats_url, &config.name).await?;
    let host = Host::new(
        &config.data_dir,
        InstanceLimits {
            request_timeout: config.request_timeout,
            max_memory_bytes: config.max_instance_memory_bytes,
        },
    )?;
    tracing::info!(allocator = ?host.allocator(), "component host ready");
    let http = Arc::new(HttpServer::start(config.http_addr).await.with_context(|| {
        format!(
            "starting the http ingress (--http-addr {})",
            config.http_addr
        )
    })?);
    let deployer = Arc::new(Deployer::new(
        host,
        http.clone(),
        config.labels.clone(),
        config.replica_concurrency,
    ));

    let shutdown = CancellationToken::new();
    let (first_pass_done, first_pass) = tokio::sync::oneshot::channel();
    let watcher_task = tokio::spawn(supervise_watcher(
        config.config_dir.clone(),
        deployer.clone(),
        shutdown.clone(),
        first_pass_done,
    ));
    let signal = async {
        tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        }
    };
    tokio::pin!(signal);
    // Up (and READY for systemd) once the manifests present at start are applied; a watcher
    // that fails before that does not hold the node back.
    let early = tokio::select! {
        _ = first_pass => None,
        name = &mut signal => Some(name),
    };
    let received = match early {
        Some(name) => name,
        None => {
            tracing::info!(ingress = %http.ingress_addr(), nats = nats_url, "lattice node is up");
            // Under systemd (Type=notify) this marks the unit started; elsewhere a no-op.
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                tracing::warn!(error = %e, "telling systemd the node is ready");
            }
            signal.await
        }
    };
    tracing::info!("{received} received; stopping");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    let _ = watcher_task.await;
    http.shutdown().await;
    if let Err(e) = client.drain().await {
        tracing::debug!(error = %e, "draining the nats client");
    }
    Ok(())
}

/// Keeps the config-dir watcher running: an error or panic is logged and it starts again.
async fn supervise_watcher(
    dir: std::path::PathBuf,
    deployer: Arc<Deployer>,
    shutdown: CancellationToken,
    first_pass_done: tokio::sync::oneshot::Sender<()>,
) {
    let mut first_pass_done = Some(first_pass_done);
    while !shutdown.is_cancelled() {
        let task = tokio::spawn(watcher::run(
            dir.clone(),
            deployer.clone(),
            shutdown.clone(),
            first_pass_done.take(),
        ));
        match task.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => tracing::error!(
                error = format!("{e:#}"),
                "config-dir watcher failed; restarting it"
            ),
            Err(e) => tracing::error!(error = %e, "config-dir watcher panicked; restarting it"),
        }
        tokio::select! {
            () = tokio::time::sleep(WATCHER_RESTART_DELAY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
