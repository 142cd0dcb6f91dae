//! Supervises the node's `nats-server` child: spawn (async-process), log forwarding into tracing,
//! readiness and the leaf uplink from its monitoring port ([`super::monitor`]), restart with
//! exponential backoff, and an orderly stop.
//!
//! What it reports: whether the child runs and its `/healthz` says so (checked every second:
//! [`ServerState`], for the node's readiness), each
//! restart after an exit (`lattice_nats_server_restarts_total`), and its own liveness (a
//! [`Beat`] at least every [`BEAT_EVERY`] while it watches, waits or restarts, for the systemd
//! watchdog: [`crate::admin::liveness`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_process::{Child, Command};
use futures::StreamExt;
use futures::io::{AsyncBufReadExt, AsyncRead, BufReader};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::liveness::Beat;

use super::discovery::read_remote_info;
use super::monitor::Monitor;
use super::redact::redact_urls_in;
use super::server_config::{ServerSettings, render};
use super::uplink::UplinkTracker;

/// How long a fresh nats-server may take to report itself healthy before the start counts as
/// failed.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a starting nats-server's `/varz` and `/healthz` are asked (counted from the start
/// of the previous ask): sooner after a line it logs (the last of its start is `Server is
/// ready`), but never sooner than [`READY_POLL_AFTER_LOG`] after the previous ask. Loopback
/// requests, refused at once while the port is not bound yet.
const READY_POLL: Duration = Duration::from_millis(5);
/// The least time between two asks of a starting nats-server, a burst of log lines included
/// (each line only stores a wake-up: a burst makes one ask per this time at most).
const READY_POLL_AFTER_LOG: Duration = Duration::from_millis(1);
/// How often `/leafz` is read while nothing happens.
const LEAFZ_POLL: Duration = Duration::from_secs(1);
/// How often `/leafz` is read for a while after a leafnode line in the log.
const LEAFZ_FAST_POLL: Duration = Duration::from_millis(100);
/// How long the fast polling lasts after a leafnode line.
const LEAFZ_FAST_FOR: Duration = Duration::from_secs(2);
/// How long a (re)start waits for the hub's leafnode INFO at most (it starts without it).
const INFO_TIMEOUT: Duration = Duration::from_secs(1);
/// First restart delay; doubled after each failed or short-lived run.
const BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// Longest restart delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run this long resets the backoff to its initial delay.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// How long nats-server gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// Log lines of the current child kept to explain a failed start.
const KEPT_LOG_LINES: usize = 20;
/// How often the supervising loop beats while nothing else happens.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// The longest the supervising loop may rightly go without a beat: a (re)start's wait for the
/// hub's INFO and for readiness, or a stop's grace, with room to spare.
pub const BEAT_ALLOWANCE: Duration = Duration::from_secs(30);

/// How many `/healthz` checks in a row (one every [`BEAT_EVERY`], each bounded by the
/// monitor's request timeout) must fail before a running server counts as
/// [`ServerState::Unhealthy`].
pub const UNHEALTHY_AFTER: u32 = 2;

/// How long a running nats-server may fail its `/healthz` checks, every one in a row, before it
/// is taken for wedged (frozen, deadlocked) and restarted like one that exited.
pub const RESTART_UNHEALTHY_AFTER: Duration = Duration::from_secs(30);

/// Whether the supervised nats-server runs, as the node's readiness reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerState {
    /// It runs (it reported itself healthy when it started), as process `pid`.
    Running {
        /// Its process id.
        pid: u32,
    },
    /// It runs as process `pid` but its monitoring port has not said it is healthy for
    /// [`UNHEALTHY_AFTER`] checks in a row (a frozen or overloaded server, JetStream not
    /// current): `why`, as the last check saw it.
    Unhealthy {
        /// Its process id.
        pid: u32,
        /// Why, one line.
        why: String,
    },
    /// It is being restarted: `why` (it exited, how; or it is reconfigured).
    Restarting {
        /// Why, one line.
        why: String,
    },
    /// The node stopped it.
    Stopped,
}

/// Finds the `nats-server` executable: `explicit` (flag or `LATTICE_NATS_SERVER`), next to the
/// running executable, on `$PATH`, then `/usr/sbin` and `/usr/local/sbin` (Debian installs it
/// in `/usr/sbin`, which is not on a normal user's `$PATH`).
///
/// # Errors
/// The explicit path is not a file, or no candidate exists: the message says how to install it.
pub fn find_nats_server(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("--nats-server {}: no such file", path.display());
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join("nats-server"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("nats-server")));
    }
    candidates.push(PathBuf::from("/usr/sbin/nats-server"));
    candidates.push(PathBuf::from("/usr/local/sbin/nats-server"));
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "nats-server not found (looked next to lattice, on $PATH, in /usr/sbin and /usr/local/sbin). \
         Install it with `sudo apt-get install nats-server` (Debian, Ubuntu) or from \
         https://github.com/nats-io/nats-server/releases, or pass --nats-server PATH"
    )
}

/// Picks a free TCP port on 127.0.0.1 by binding port 0 and releasing it.
///
/// # Errors
/// Binding a loopback socket failed.
pub fn free_loopback_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A running supervised nats-server. Dropping it without [`NatsSupervisor::stop`] still kills
/// the child (kill-on-drop), but without a graceful shutdown.
pub struct NatsSupervisor {
    url: String,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    state: watch::Receiver<ServerState>,
}

/// How to start one nats-server process.
#[derive(Debug, Clone)]
struct Launch {
    binary: PathBuf,
    config_path: PathBuf,
    settings: ServerSettings,
    /// In leaf mode: whether the config lets the hub's JetStream without a domain through
    /// ([`render`]), as the hub's leafnode INFO last said.
    hub_js_without_domain: Arc<AtomicBool>,
    port: u16,
    /// Its `server_name`, as `/varz` must say.
    server_name: String,
    /// Its monitoring endpoint.
    monitor: Monitor,
    /// Told what `/leafz` lists and the leaf connection lines of the log, in leaf mode.
    uplink: Option<UplinkTracker>,
    /// The supervising loop's liveness.
    beat: Beat,
}

impl NatsSupervisor {
    /// Writes the config for `settings` to `config_path` (in leaf mode, for the hub's
    /// JetStream as the hub's leafnode INFO says: [`render`]; rewritten, and nats-server
    /// restarted, when that changes at a reconnection), starts `binary` with it, waits until
    /// its monitoring port says it is healthy, and keeps it running in a background task until
    /// [`NatsSupervisor::stop`]. `uplink`, in leaf mode, is fed what `/leafz` lists (polled
    /// every second, every 100 ms for 2 s after a leafnode log line) and the log lines about
    /// the leaf connection. `beat` is beaten by the supervising loop (see the module docs),
    /// from this start on.
    ///
    /// # Errors
    /// The config cannot be written, the process cannot be spawned, or it does not report
    /// itself healthy on `/healthz` within 10 s (the error quotes its last log lines).
    pub async fn start(
        binary: PathBuf,
        config_path: PathBuf,
        settings: &ServerSettings,
        uplink: Option<UplinkTracker>,
        beat: Beat,
    ) -> anyhow::Result<Self> {
        if let Some(dir) = config_path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if let Some(store) = &settings.jetstream_store_dir {
            std::fs::create_dir_all(store)
                .with_context(|| format!("creating {}", store.display()))?;
        }
        let launch = Launch {
            binary,
            config_path,
            settings: settings.clone(),
            hub_js_without_domain: Arc::new(AtomicBool::new(false)),
            port: settings.client_port,
            server_name: settings.server_name.clone(),
            monitor: Monitor::new(settings.monitor_port),
            uplink,
            beat,
        };
        let (child, version) = launch.spawn_ready().await?;
        tracing::info!(
            pid = child.id(),
            port = launch.port,
            monitor_port = launch.monitor.port(),
            version,
            binary = %launch.binary.display(),
            "nats-server is ready"
        );
        let shutdown = CancellationToken::new();
        let (state_tx, state) = watch::channel(ServerState::Running { pid: child.id() });
        let task = tokio::spawn(supervise(launch.clone(), child, shutdown.clone(), state_tx));
        Ok(NatsSupervisor {
            url: format!("nats://127.0.0.1:{}", launch.port),
            shutdown,
            task,
            state,
        })
    }

    /// Whether the server runs now, and as it changes.
    pub fn state(&self) -> watch::Receiver<ServerState> {
        self.state.clone()
    }

    /// The client URL of the supervised server, `nats://127.0.0.1:PORT` (stable across restarts).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Stops supervising and stops the server: SIGTERM, then SIGKILL after 3 s.
    pub async fn stop(self) {
        self.shutdown.cancel();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "nats supervisor task failed");
        }
    }
}

impl Launch {
    /// In leaf mode, whether the hub's leafnode INFO says it runs JetStream without a domain;
    /// `None` when not in leaf mode or the INFO could not be read.
    async fn hub_js_without_domain(&self) -> Option<bool> {
        let remote = self.settings.leaf_remote.as_ref()?;
        let read = tokio::time::timeout(INFO_TIMEOUT, read_remote_info(&remote.url)).await;
        match read.unwrap_or_else(|_| Err(format!("no INFO within {INFO_TIMEOUT:?}"))) {
            Ok(info) => Some(info.jetstream && info.domain().is_none()),
            Err(e) => {
                tracing::debug!(
                    remote = %crate::nats::redact::redact_url(&remote.url),
                    error = e,
                    "reading the hub's leafnode INFO"
                );
                None
            }
        }
    }

    /// Writes the config, for the hub's JetStream as its INFO says now (as last seen when it
    /// cannot be read), spawns nats-server and waits until it is ready; returns it and its
    /// version.
    async fn spawn_ready(&self) -> anyhow::Result<(Child, String)> {
        if let Some(open) = self.hub_js_without_domain().await {
            self.hub_js_without_domain.store(open, Ordering::Relaxed);
        }
        let text = render(
            &self.settings,
            self.hub_js_without_domain.load(Ordering::Relaxed),
        );
        // Mode 0600: it can name the leaf remote's URL.
        crate::private_file::write(&self.config_path, text.as_bytes(), false).with_context(
            || format!("writing nats-server config {}", self.config_path.display()),
        )?;
        let mut command = std::process::Command::new(&self.binary);
        command.arg("-c").arg(&self.config_path);
        // systemd's notification socket and watchdog are the node's: nats-server must neither
        // report for the unit nor be taken for it.
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            command.env_remove(var);
        }
        // If this node dies without stopping its child (SIGKILL, crash), the kernel stops the child
        // too, so no orphaned nats-server keeps the port.
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt as _;
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        let mut command = Command::from(command);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().with_context(|| {
            format!(
                "spawning {} -c {}",
                self.binary.display(),
                self.config_path.display()
            )
        })?;
        let recent = Arc::new(Mutex::new(VecDeque::new()));
        let logged = Arc::new(tokio::sync::Notify::new());
        if let Some(out) = child.stdout.take() {
            let log = (recent.clone(), logged.clone());
            tokio::spawn(forward_log(out, log, self.uplink.clone()));
        }
        if let Some(err) = child.stderr.take() {
            let log = (recent.clone(), logged.clone());
            tokio::spawn(forward_log(err, log, self.uplink.clone()));
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::from("no answer yet");
        loop {
            let asked = tokio::time::Instant::now();
            match self.ready().await {
                // Ours, healthy, and still running: another process holding the ports would
                // answer too, but not with our name and client port, or not while ours runs.
                Ok(version) if child.try_status()?.is_none() => return Ok((child, version)),
                Ok(_) => {}
                Err(why) => last = why,
            }
            if let Some(status) = child.try_status()? {
                bail!(
                    "nats-server exited during start ({status}); its last log lines:\n{}",
                    tail(&recent)
                );
            }
            self.beat.beat();
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not report itself ready on 127.0.0.1:{}/healthz within {READY_TIMEOUT:?} ({last}); its last log lines:\n{}",
                    self.monitor.port(),
                    tail(&recent)
                );
            }
            tokio::select! {
                () = tokio::time::sleep_until(asked + READY_POLL) => {}
                () = async {
                    logged.notified().await;
                    tokio::time::sleep_until(asked + READY_POLL_AFTER_LOG).await;
                } => {}
            }
        }
    }

    /// Whether the server on the monitoring port is ours and healthy: `/varz` names our server
    /// and client port, `/healthz` says `ok`. Returns its version, else why not.
    async fn ready(&self) -> Result<String, String> {
        let varz = self.monitor.varz().await.map_err(|e| e.to_string())?;
        if varz.server_name != self.server_name || varz.port != self.port {
            return Err(format!(
                "the monitoring port answers for server {:?} on client port {}, not ours",
                varz.server_name, varz.port
            ));
        }
        let health = self.monitor.healthz().await.map_err(|e| e.to_string())?;
        if !health.is_ok() {
            return Err(format!(
                "/healthz says {}: {}",
                health.status,
                health.error.unwrap_or_default()
            ));
        }
        Ok(varz.version)
    }

    /// The running nats-server is lost (`why`) and will be started again: `state` says so, the
    /// restart is counted, and the uplink tracker hears that the server is gone.
    fn lost(&self, state: &watch::Sender<ServerState>, why: String) {
        state.send_replace(ServerState::Restarting { why });
        crate::admin::metrics::get().nats_server_restarted();
        if let Some(uplink) = &self.uplink {
            uplink.server_exited();
        }
    }

    /// Runs until `child` exits, `shutdown`, or its config no longer fits the hub: in leaf
    /// mode, meanwhile, tells the uplink tracker what `/leafz` lists, every [`LEAFZ_POLL`], and
    /// every [`LEAFZ_FAST_POLL`] for [`LEAFZ_FAST_FOR`] after a leafnode line in the log; each
    /// time the uplink (re)connects, reads the hub's INFO again.
    ///
    /// Meanwhile it asks `/healthz` every [`BEAT_EVERY`] (one request at a time, on a task of its
    /// own so that a server that does not answer holds nothing up) and keeps `state` at
    /// [`ServerState::Unhealthy`] while [`UNHEALTHY_AFTER`] answers in a row or more were not
    /// `ok`, [`ServerState::Running`] otherwise.
    async fn watch(
        &self,
        child: &mut Child,
        shutdown: &CancellationToken,
        state: &watch::Sender<ServerState>,
    ) -> Stop {
        let pid = child.id();
        let mut check: Option<tokio_util::task::AbortOnDropHandle<Result<(), String>>> = None;
        let mut failed_checks = 0;
        let mut failing_since: Option<tokio::time::Instant> = None;
        let look = self.uplink.as_ref().map(UplinkTracker::look_requests);
        let mut next_poll = tokio::time::Instant::now();
        let mut fast_until = next_poll;
        let mut listed = false;
        let mut beat = tokio::time::interval(BEAT_EVERY);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    self.beat.beat();
                    if check.is_none() {
                        let monitor = self.monitor;
                        check = Some(tokio_util::task::AbortOnDropHandle::new(tokio::spawn(
                            async move {
                                match monitor.healthz().await {
                                    Ok(health) if health.is_ok() => Ok(()),
                                    Ok(health) => Err(format!(
                                        "/healthz says {}: {}",
                                        health.status,
                                        health.error.unwrap_or_default()
                                    )),
                                    Err(e) => Err(e.to_string()),
                                }
                            },
                        )));
                    }
                }
                checked = health_checked(&mut check) => {
                    check = None;
                    match checked {
                        Ok(()) => {
                            failed_checks = 0;
                            failing_since = None;
                            state.send_if_modified(|now| {
                                let changed = *now != ServerState::Running { pid };
                                *now = ServerState::Running { pid };
                                changed
                            });
                        }
                        Err(why) => {
                            failed_checks += 1;
                            let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                            if since.elapsed() >= RESTART_UNHEALTHY_AFTER {
                                return Stop::Wedged(why);
                            }
                            if failed_checks >= UNHEALTHY_AFTER {
                                if failed_checks == UNHEALTHY_AFTER {
                                    tracing::warn!(pid, error = why, "nats-server is not healthy");
                                }
                                state.send_replace(ServerState::Unhealthy { pid, why });
                            }
                        }
                    }
                }
                status = child.status() => {
                    return Stop::Exited(status.map_or_else(|e| e.to_string(), |s| s.to_string()));
                }
                () = shutdown.cancelled() => return Stop::Shutdown,
                () = notified(look.as_deref()) => {
                    let now = tokio::time::Instant::now();
                    fast_until = now + LEAFZ_FAST_FOR;
                    next_poll = next_poll.min(now + LEAFZ_FAST_POLL);
                }
                () = tokio::time::sleep_until(next_poll), if self.uplink.is_some() => {
                    if let Some(uplink) = &self.uplink {
                        match self.monitor.leafz().await {
                            Ok(leafz) => {
                                uplink.leafz(leafz.count > 0);
                                let joined = leafz.count > 0 && !listed;
                                listed = leafz.count > 0;
                                let now = self.hub_js_without_domain.load(Ordering::Relaxed);
                                if joined
                                    && let Some(open) = self.hub_js_without_domain().await
                                    && open != now
                                {
                                    return Stop::Reconfigure(open);
                                }
                            }
                            Err(e) => tracing::debug!(error = %e, "reading /leafz"),
                        }
                    }
                    let now = tokio::time::Instant::now();
                    next_poll = now + if now < fast_until { LEAFZ_FAST_POLL } else { LEAFZ_POLL };
                }
            }
        }
    }
}

/// Why [`Launch::watch`] returned.
enum Stop {
    /// The child exited, how.
    Exited(String),
    /// The node stops.
    Shutdown,
    /// The child runs but has failed every `/healthz` check for [`RESTART_UNHEALTHY_AFTER`]
    /// (the last one's reason): it is restarted.
    Wedged(String),
    /// The hub's JetStream now has no domain (`true`) or has one (`false`), so the config must
    /// change (and nats-server cannot reload this part of it).
    Reconfigure(bool),
}

/// The outcome of the `/healthz` check under way; forever without one.
async fn health_checked(
    check: &mut Option<tokio_util::task::AbortOnDropHandle<Result<(), String>>>,
) -> Result<(), String> {
    match check {
        Some(handle) => handle.await.unwrap_or_else(|e| Err(e.to_string())),
        None => std::future::pending().await,
    }
}

/// Waits for `notify`, or forever without one.
async fn notified(notify: Option<&tokio::sync::Notify>) {
    match notify {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    }
}

/// Sleeps `duration`, beating `beat` at least every [`BEAT_EVERY`]: the loop waits, it is not
/// stuck.
async fn sleep_beating(duration: Duration, beat: &Beat) {
    let until = tokio::time::Instant::now() + duration;
    loop {
        beat.beat();
        let now = tokio::time::Instant::now();
        if now >= until {
            return;
        }
        tokio::time::sleep_until(until.min(now + BEAT_EVERY)).await;
    }
}

/// Restarts the child with backoff whenever it exits, until `shutdown`; keeps `state` current
/// and counts each restart after an exit.
async fn supervise(
    launch: Launch,
    mut child: Child,
    shutdown: CancellationToken,
    state: watch::Sender<ServerState>,
) {
    let mut backoff = BACKOFF_INITIAL;
    let mut started = Instant::now();
    let mut last_reconfigure: Option<Instant> = None;
    let mut reconfigure_backoff = BACKOFF_INITIAL;
    let stopped = |child| {
        let state = state.clone();
        async move {
            terminate(child).await;
            state.send_replace(ServerState::Stopped);
        }
    };
    loop {
        let pid = child.id();
        match launch.watch(&mut child, &shutdown, &state).await {
            Stop::Exited(status) => {
                tracing::error!(pid, %status, "nats-server exited unexpectedly; restarting it");
                launch.lost(&state, format!("pid {pid} exited ({status})"));
            }
            Stop::Shutdown => {
                stopped(child).await;
                return;
            }
            Stop::Wedged(why) => {
                tracing::error!(
                    pid,
                    error = why,
                    "nats-server failed every health check for {RESTART_UNHEALTHY_AFTER:?} \
                     (frozen?); restarting it"
                );
                launch.lost(
                    &state,
                    format!("pid {pid} stopped answering its health checks ({why})"),
                );
                // A stopped (SIGSTOP) process takes no SIGTERM: terminate's SIGKILL ends it.
                terminate(child).await;
            }
            Stop::Reconfigure(open) => {
                // A hub that keeps changing its mind (or servers behind one name that differ)
                // restarts the leaf with the same backoff as exits do.
                if last_reconfigure.is_some_and(|last| last.elapsed() < STABLE_RUN) {
                    let wait = reconfigure_backoff;
                    reconfigure_backoff = (reconfigure_backoff * 2).min(BACKOFF_MAX);
                    tracing::warn!(
                        wait_ms = wait.as_millis() as u64,
                        "the hub's JetStream domain changed again; waiting before restarting nats-server"
                    );
                    tokio::select! {
                        () = sleep_beating(wait, &launch.beat) => {}
                        () = shutdown.cancelled() => {
                            stopped(child).await;
                            return;
                        }
                    }
                }
                if last_reconfigure.is_none_or(|last| last.elapsed() >= STABLE_RUN) {
                    reconfigure_backoff = BACKOFF_INITIAL;
                }
                last_reconfigure = Some(Instant::now());
                tracing::info!(
                    pid,
                    hub_jetstream = if open {
                        "without a domain"
                    } else {
                        "in a domain, or none"
                    },
                    "the hub's JetStream changed: restarting nats-server with the leaf config for it"
                );
                state.send_replace(ServerState::Restarting {
                    why: "reconfigured for the hub's JetStream".to_owned(),
                });
                terminate(child).await;
                if let Some(uplink) = &launch.uplink {
                    uplink.server_exited();
                }
                launch.hub_js_without_domain.store(open, Ordering::Relaxed);
                match launch.spawn_ready().await {
                    Ok((new_child, version)) => {
                        child = new_child;
                        started = Instant::now();
                        state.send_replace(ServerState::Running { pid: child.id() });
                        tracing::info!(
                            pid = child.id(),
                            version,
                            "nats-server restarted and ready"
                        );
                        continue;
                    }
                    Err(e) => {
                        state.send_replace(ServerState::Restarting {
                            why: format!(
                                "restarting failed: {}",
                                format!("{e:#}").lines().next().unwrap_or_default()
                            ),
                        });
                        tracing::error!(error = format!("{e:#}"), "restarting nats-server failed")
                    }
                }
            }
        }
        if started.elapsed() >= STABLE_RUN {
            backoff = BACKOFF_INITIAL;
        }
        loop {
            tracing::info!(
                delay_ms = backoff.as_millis() as u64,
                "restarting nats-server after backoff"
            );
            tokio::select! {
                () = sleep_beating(backoff, &launch.beat) => {}
                () = shutdown.cancelled() => {
                    state.send_replace(ServerState::Stopped);
                    return;
                }
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let spawned = tokio::select! {
                spawned = launch.spawn_ready() => spawned,
                () = shutdown.cancelled() => {
                    state.send_replace(ServerState::Stopped);
                    return;
                }
            };
            match spawned {
                Ok((new_child, version)) => {
                    child = new_child;
                    started = Instant::now();
                    state.send_replace(ServerState::Running { pid: child.id() });
                    tracing::info!(
                        pid = child.id(),
                        port = launch.port,
                        version,
                        "nats-server restarted and ready"
                    );
                    break;
                }
                Err(e) => {
                    state.send_replace(ServerState::Restarting {
                        why: format!(
                            "restarting failed: {}",
                            format!("{e:#}").lines().next().unwrap_or_default()
                        ),
                    });
                    tracing::error!(error = format!("{e:#}"), "restarting nats-server failed")
                }
            }
        }
    }
}

/// SIGTERM (nats-server's graceful stop, flushing JetStream), then SIGKILL after the grace time.
async fn terminate(mut child: Child) {
    let pid = child.id();
    if let Err(e) = kill(Pid::from_raw(pid as i32), Signal::SIGTERM) {
        tracing::warn!(pid, error = %e, "sending SIGTERM to nats-server");
    }
    match tokio::time::timeout(STOP_GRACE, child.status()).await {
        Ok(Ok(status)) => tracing::info!(pid, %status, "nats-server stopped"),
        Ok(Err(e)) => tracing::warn!(pid, error = %e, "waiting for nats-server to stop"),
        Err(_) => {
            tracing::warn!(
                pid,
                "nats-server did not stop within {STOP_GRACE:?} of SIGTERM; killing it"
            );
            let _ = child.kill();
            let _ = child.status().await;
        }
    }
}

/// The warning nats-server logs at every start for the `default_js_domain` the leaf config
/// sets on purpose ([`super::server_config::render`]): forwarded at debug, not as a warning the
/// user can do nothing about.
const DEFAULT_DOMAIN_WARNING: &str = "The option `default_js_domain` is a temporary backwards compatibility measure and will be removed";

/// Forwards the child's log lines into tracing at their own level, keeping the last few (for
/// startup errors) in `recent` and telling `logged` after each, and shows `uplink` every line;
/// each line with its URLs redacted
/// ([`redact_urls_in`]) first: nats-server quotes a leaf URL it cannot parse whole, password
/// included (`error parsing leafnode url [%q]`).
async fn forward_log(
    stream: impl AsyncRead + Unpin,
    (recent, logged): (Arc<Mutex<VecDeque<String>>>, Arc<tokio::sync::Notify>),
    uplink: Option<UplinkTracker>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Some(Ok(line)) = lines.next().await {
        let line = redact_urls_in(&line);
        let (mut level, message) = parse_log_line(&line);
        if message == DEFAULT_DOMAIN_WARNING {
            level = LogLevel::Debug;
        }
        if let Some(uplink) = &uplink {
            uplink.observe(message, level == LogLevel::Error);
        }
        match level {
            LogLevel::Error => tracing::error!(target: "nats_server", "{message}"),
            LogLevel::Warn => tracing::warn!(target: "nats_server", "{message}"),
            LogLevel::Info => tracing::info!(target: "nats_server", "{message}"),
            LogLevel::Debug => tracing::debug!(target: "nats_server", "{message}"),
            LogLevel::Trace => tracing::trace!(target: "nats_server", "{message}"),
        }
        if let Ok(mut recent) = recent.lock() {
            if recent.len() == KEPT_LOG_LINES {
                recent.pop_front();
            }
            recent.push_back(line);
        }
        logged.notify_one();
    }
}

/// The kept log lines, one per line (their URLs were redacted when kept, line by line).
fn tail(recent: &Mutex<VecDeque<String>>) -> String {
    recent
        .lock()
        .map(|r| r.iter().cloned().collect::<Vec<_>>().join("\n"))
        .unwrap_or_default()
}

/// Level of a nats-server log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Splits `[PID] DATE TIME [LVL] message` (nats-server's log format) into level and message;
/// a line in another shape is logged whole at info.
fn parse_log_line(line: &str) -> (LogLevel, &str) {
    const TAGS: [(&str, LogLevel); 6] = [
        ("[FTL] ", LogLevel::Error),
        ("[ERR] ", LogLevel::Error),
        ("[WRN] ", LogLevel::Warn),
        ("[INF] ", LogLevel::Info),
        ("[DBG] ", LogLevel::Debug),
        ("[TRC] ", LogLevel::Trace),
    ];
    for (tag, level) in TAGS {
        if let Some(at) = line.find(tag) {
            return (level, &line[at + tag.len()..]);
        }
    }
    (LogLevel::Info, line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nats_server_log_levels() {
        let line = "[4711] 2026/11/22 00:50:01.123456 [WRN] Plaintext passwords detected";
        assert_eq!(
            parse_log_line(line),
            (LogLevel::Warn, "Plaintext passwords detected")
        );
        assert_eq!(
            parse_log_line("[1] x [FTL] boom"),
            (LogLevel::Error, "boom")
        );
        assert_eq!(parse_log_line("plain"), (LogLevel::Info, "plain"));
    }

    #[tokio::test]
    async fn forwarded_lines_and_the_tail_have_their_urls_redacted() {
        let log = "[1] 2026/12/01 13:00:00.000000 [ERR] error parsing leafnode url \
                   [\"nats-leaf://u:se cr\\\"et@hub:7422\"]\n\
                   [1] 2026/12/01 13:00:00.000001 [INF] token tls://s3cret@hub here\n";
        let recent = Arc::new(Mutex::new(VecDeque::new()));
        forward_log(
            futures::io::Cursor::new(log.as_bytes()),
            (recent.clone(), Arc::default()),
            None,
        )
        .await;
        let tail = tail(&recent);
        assert!(
            !tail.contains("se cr") && !tail.contains("s3cret"),
            "{tail}"
        );
        assert!(
            tail.contains("[\"nats-leaf://u:***@hub:7422\"]") && tail.contains("tls://***@hub"),
            "{tail}"
        );
    }

    #[test]
    fn missing_explicit_binary_is_named() {
        let err = find_nats_server(Some(Path::new("/nonexistent/nats-server"))).unwrap_err();
        assert!(
            err.to_string()
                .contains("--nats-server /nonexistent/nats-server"),
            "{err}"
        );
    }
}
