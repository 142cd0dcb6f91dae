//! The node's NATS: a supervised `nats-server` child process and the client connection to it.
//!
//! `server_config` renders nats-server's config file (pure), `supervisor` finds the binary,
//! spawns it, forwards its log into tracing and restarts it with backoff when it exits,
//! `uplink` follows the leaf connection in that log, `subjects` builds every subject we use,
//! `kv` opens JetStream KV buckets.

pub mod jetstream;
pub mod kv;
pub mod server_config;
pub mod subjects;
pub mod supervisor;
pub mod uplink;

pub use jetstream::{JetStreamState, SharedJetStream};
pub use supervisor::{NatsSupervisor, find_nats_server};

use std::time::Duration;

use anyhow::Context;

/// Connects the node's client to `url` (with the credentials file `creds`, in external mode),
/// logging connection events (disconnect, reconnect).
///
/// The client reconnects on its own, forever, when the server goes away (as when the supervisor
/// restarts it); requests made meanwhile fail fast instead of hanging.
///
/// # Errors
/// The first connection attempt did not succeed within 10 s.
pub async fn connect(
    url: &str,
    node_name: &str,
    creds: Option<&std::path::Path>,
) -> anyhow::Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("lattice node {node_name}"))
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("connected to nats-server"),
                async_nats::Event::Disconnected => tracing::warn!("disconnected from nats-server"),
                other => tracing::debug!(event = %other, "nats client event"),
            }
        });
    if let Some(creds) = creds {
        options = options
            .credentials_file(creds)
            .await
            .with_context(|| format!("--creds {}", creds.display()))?;
    }
    tokio::time::timeout(Duration::from_secs(10), options.connect(url))
        .await
        .with_context(|| format!("connecting to nats at {url}: timed out after 10 s"))?
        .with_context(|| format!("connecting to nats at {url}"))
}

/// How often an unreachable JetStream is asked again.
const JETSTREAM_RETRY: Duration = Duration::from_secs(5);

/// Asks JetStream for the account's info until it answers (every 5 s, until `shutdown`), logs
/// the outcome (info once reachable, a warning saying what to do while it is not) and sets
/// `state` accordingly.
pub async fn watch_jetstream(
    shared: SharedJetStream,
    state: tokio::sync::watch::Sender<JetStreamState>,
    domain: Option<String>,
    leaf: bool,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let domain_text = domain.as_deref().unwrap_or("(default)");
    let mut warned = false;
    loop {
        // The raw `$JS.API.INFO` answer: async-nats's `query_account` expects fields that
        // nats-server 2.9 does not send.
        let js = shared.context();
        let info = js.request::<_, _, serde_json::Value>("INFO", &());
        match tokio::time::timeout(JETSTREAM_RETRY, info).await {
            Ok(Ok(account)) if account.get("error").is_none() => {
                tracing::info!(
                    domain = domain_text,
                    streams = account["streams"].as_u64().unwrap_or(0),
                    "JetStream reachable"
                );
                state.send_replace(JetStreamState::Found {
                    domain: domain.clone(),
                });
                return;
            }
            outcome => {
                let error = match outcome {
                    Ok(Ok(answer)) => answer["error"]["description"]
                        .as_str()
                        .unwrap_or("an error")
                        .to_owned(),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer".to_owned(),
                };
                state.send_replace(JetStreamState::Unreachable {
                    reason: error.clone(),
                });
                if !warned {
                    warned = true;
                    let hint = if leaf && domain.is_none() {
                        "; a leaf node has no JetStream of its own and nats-server keeps $JS.API \
                         local to the leaf: pass --js-domain with the hub's JetStream domain"
                    } else {
                        ""
                    };
                    tracing::warn!(domain = domain_text, error, "JetStream not reachable{hint}");
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(JETSTREAM_RETRY) => {}
            () = shutdown.cancelled() => return,
        }
    }
}
