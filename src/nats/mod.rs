//! The node's NATS: a supervised `nats-server` child process and the client connection to it.
//!
//! `server_config` renders nats-server's config file (pure), `supervisor` finds the binary,
//! spawns it, forwards its log into tracing, reads its readiness and leaf connection from its
//! monitoring port (`monitor`) and restarts it with backoff when it exits, `uplink` keeps the
//! leaf uplink's state, `discovery` finds the lattice's JetStream (`jetstream`: the handle on
//! it), `subjects` builds every subject we use, `kv` opens JetStream KV buckets, `local_auth`
//! keeps the nkey the node's own nats-server admits, `permissions` reads nats-server's
//! permission errors, `user_permissions` what a creds file's JWT allows, `redact` hides the
//! passwords and tokens of URLs wherever they are shown, `urls` checks the URLs given to the
//! node before anything starts.

pub mod discovery;
pub mod jetstream;
pub mod kv;
pub mod local_auth;
pub mod local_peer;
pub mod monitor;
pub mod permissions;
pub mod redact;
pub mod server_config;
pub mod subjects;
pub mod supervisor;
pub mod uplink;
pub mod urls;
pub mod user_permissions;

pub use discovery::{Discovery, Reach, watch_jetstream};
pub use jetstream::{JetStreamState, SharedJetStream};
pub use supervisor::{NatsSupervisor, ServerState, find_nats_server};

use std::time::Duration;

use anyhow::Context;

/// How a client authenticates to NATS.
#[derive(Debug, Clone, Copy)]
pub enum ClientAuth<'a> {
    /// Anonymously (an external NATS that needs nothing).
    None,
    /// With a NATS user credentials file (JWT and seed).
    Creds(&'a std::path::Path),
    /// As the local user of the node's own nats-server ([`local_auth`]).
    Local(&'a local_auth::LocalUser),
}

/// How often, at most, dropped messages of full subscriptions are logged.
const SLOW_CONSUMER_LOG_EVERY: Duration = Duration::from_secs(10);

/// Notes a message async-nats dropped because subscription `sid`'s buffer was full (a slow
/// consumer: its reader falls behind, e.g. under a flood of host events); logs the count at
/// warn at most every [`SLOW_CONSUMER_LOG_EVERY`].
fn slow_consumer(sid: u64) {
    static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static LOGGED: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut logged = LOGGED.lock().unwrap_or_else(|p| p.into_inner());
    if logged.is_some_and(|at| at.elapsed() < SLOW_CONSUMER_LOG_EVERY) {
        return;
    }
    *logged = Some(std::time::Instant::now());
    let dropped = DROPPED.swap(0, std::sync::atomic::Ordering::Relaxed);
    tracing::warn!(
        subscription = sid,
        dropped,
        "nats messages dropped: a subscription's buffer was full (a slow consumer)"
    );
}

/// Connects the node's client to `url` as `auth` says (the node's own nats-server: its local
/// user; external mode: `--creds`, if any, and the user and password or token of `url`'s
/// userinfo), logging connection events (disconnect, reconnect)
/// and the server's errors (a permission violation names the subject this node's NATS user may
/// not use: [`permissions`]).
///
/// The client reconnects on its own, forever, when the server goes away (as when the supervisor
/// restarts it); requests made meanwhile fail fast instead of hanging.
///
/// `url` appears in errors with its password or token redacted ([`redact::redact_url`]).
///
/// # Errors
/// The first connection attempt did not succeed within 10 s.
pub async fn connect(
    url: &str,
    node_name: &str,
    auth: ClientAuth<'_>,
) -> anyhow::Result<async_nats::Client> {
    // The node's own server: its sockets must be this user's before the nonce is signed.
    let base = match auth {
        ClientAuth::Local(user) => local_peer::options(user, url, nix::unistd::geteuid().as_raw()),
        _ => async_nats::ConnectOptions::new(),
    };
    let mut options = base
        .name(format!("lattice node {node_name}"))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to nats-server"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from nats-server"),
                async_nats::Event::ServerError(error) => match permissions::denied(&error) {
                    Some(denied) => tracing::warn!(
                        subject = denied.subject,
                        operation = denied.operation.as_str(),
                        "permission denied: this node's NATS user may not {} {}",
                        denied.operation.as_str(),
                        denied.subject
                    ),
                    None => tracing::warn!(error = %error, "nats-server reported an error"),
                },
                async_nats::Event::SlowConsumer(sid) => slow_consumer(sid),
                other => tracing::debug!(event = %other, "nats client event"),
            }
        });
    // async-nats does not send a URL's user and password (or token) itself.
    options = redact::with_url_credentials(options, url);
    match auth {
        ClientAuth::None => {}
        ClientAuth::Creds(creds) => {
            options = options
                .credentials_file(creds)
                .await
                .with_context(|| format!("--creds {}", creds.display()))?;
        }
        ClientAuth::Local(_) => {}
    }
    let shown = redact::redact_url(url);
    // Without its userinfo (sent above): async-nats logs the server's `url::Url` at debug
    // with `Debug`, which prints the password.
    let bare = redact::without_userinfo(url);
    tokio::time::timeout(Duration::from_secs(10), options.connect(bare))
        .await
        .with_context(|| format!("connecting to nats at {shown}: timed out after 10 s"))?
        .map_err(|e| anyhow::anyhow!("{}", redact::redact_urls_in(&e.to_string())))
        .with_context(|| format!("connecting to nats at {shown}"))
}
