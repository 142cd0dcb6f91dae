//! Supervises the node's `nats-server` child: spawn (async-process), log forwarding into tracing,
//! readiness, restart with exponential backoff, and an orderly stop.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_process::{Child, Command};
use futures::StreamExt;
use futures::io::{AsyncBufReadExt, AsyncRead, BufReader};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::server_config::{ServerSettings, render};
use super::uplink::UplinkTracker;

/// How long a fresh nats-server may take to accept clients before the start counts as failed.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
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
}

/// How to start one nats-server process.
#[derive(Debug, Clone)]
struct Launch {
    binary: PathBuf,
    config_path: PathBuf,
    port: u16,
    /// Told about the leaf connection lines of the log, in leaf mode.
    uplink: Option<UplinkTracker>,
}

impl NatsSupervisor {
    /// Writes the config for `settings` to `config_path`, starts `binary` with it, waits until it
    /// accepts clients, and keeps it running in a background task until [`NatsSupervisor::stop`].
    /// `uplink`, in leaf mode, is fed the log lines about the leaf connection.
    ///
    /// # Errors
    /// The config cannot be written, the process cannot be spawned, or it does not accept
    /// clients within 10 s (the error quotes its last log lines).
    pub async fn start(
        binary: PathBuf,
        config_path: PathBuf,
        settings: &ServerSettings,
        uplink: Option<UplinkTracker>,
    ) -> anyhow::Result<Self> {
        if let Some(dir) = config_path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if let Some(store) = &settings.jetstream_store_dir {
            std::fs::create_dir_all(store)
                .with_context(|| format!("creating {}", store.display()))?;
        }
        std::fs::write(&config_path, render(settings))
            .with_context(|| format!("writing nats-server config {}", config_path.display()))?;
        let launch = Launch {
            binary,
            config_path,
            port: settings.client_port,
            uplink,
        };
        let child = launch.spawn_ready().await?;
        tracing::info!(pid = child.id(), port = launch.port, binary = %launch.binary.display(), "nats-server is ready");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(supervise(launch.clone(), child, shutdown.clone()));
        Ok(NatsSupervisor {
            url: format!("nats://127.0.0.1:{}", launch.port),
            shutdown,
            task,
        })
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
    /// Spawns nats-server and waits until its client port accepts connections.
    async fn spawn_ready(&self) -> anyhow::Result<Child> {
        let mut command = std::process::Command::new(&self.binary);
        command.arg("-c").arg(&self.config_path);
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
        let (said_ready, says_ready) = tokio::sync::watch::channel(false);
        let said_ready = Arc::new(said_ready);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(forward_log(
                out,
                recent.clone(),
                said_ready.clone(),
                self.uplink.clone(),
            ));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(forward_log(
                err,
                recent.clone(),
                said_ready,
                self.uplink.clone(),
            ));
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            // Ready means: our child says so and the port accepts, while our child still runs
            // (another process holding the port would accept too).
            if *says_ready.borrow()
                && tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .is_ok()
                && child.try_status()?.is_none()
            {
                return Ok(child);
            }
            if let Some(status) = child.try_status()? {
                bail!(
                    "nats-server exited during start ({status}); its last log lines:\n{}",
                    tail(&recent)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not accept clients on 127.0.0.1:{} within {READY_TIMEOUT:?}; its last log lines:\n{}",
                    self.port,
                    tail(&recent)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Restarts the child with backoff whenever it exits, until `shutdown`.
async fn supervise(launch: Launch, mut child: Child, shutdown: CancellationToken) {
    let mut backoff = BACKOFF_INITIAL;
    let mut started = Instant::now();
    loop {
        let pid = child.id();
        tokio::select! {
            status = child.status() => {
                let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                tracing::error!(pid, %status, "nats-server exited unexpectedly; restarting it");
                if let Some(uplink) = &launch.uplink {
                    uplink.server_exited();
                }
            }
            () = shutdown.cancelled() => {
                terminate(child).await;
                return;
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
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
            let spawned = tokio::select! {
                spawned = launch.spawn_ready() => spawned,
                () = shutdown.cancelled() => return,
            };
            match spawned {
                Ok(new_child) => {
                    child = new_child;
                    started = Instant::now();
                    tracing::info!(
                        pid = child.id(),
                        port = launch.port,
                        "nats-server restarted and ready"
                    );
                    break;
                }
                Err(e) => {
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

/// nats-server's log line once it accepts clients.
const READY_LINE: &str = "Server is ready";

/// Forwards the child's log lines into tracing at their own level, keeping the last few, sets
/// `said_ready` at nats-server's ready line and shows `uplink` every line.
async fn forward_log(
    stream: impl AsyncRead + Unpin,
    recent: Arc<Mutex<VecDeque<String>>>,
    said_ready: Arc<tokio::sync::watch::Sender<bool>>,
    uplink: Option<UplinkTracker>,
) {
    let mut lines = BufReader::new(stream).lines();
    while let Some(Ok(line)) = lines.next().await {
        let (level, message) = parse_log_line(&line);
        if message == READY_LINE {
            said_ready.send_replace(true);
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
    }
}

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
