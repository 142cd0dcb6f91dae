//! The state of the leaf node's uplink to its remote (the hub), read from nats-server's own log
//! lines, which the supervisor forwards here.
//!
//! nats-server 2.9 logs `Leafnode connection created` as soon as the TCP (and TLS) connection
//! stands, *before* the remote has checked the credentials; a refusal follows within a round
//! trip as `Leafnode Error '…'` and `Leafnode connection closed`. A connection counts as joined
//! when the server, past authentication, logs its JetStream deny rule for the connection
//! (`… adding deny [$JS.API.> $KV.> $OBJ.>] …`, printed by 2.9 on every successful leaf
//! connection), or once it has stood for [`SETTLE`] without an error.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// How long a new leaf connection must stand without an error to count as connected.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Whether this node reaches the rest of the lattice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UplinkState {
    /// Standalone node: there is no uplink.
    None,
    /// Connected to an external NATS (`--nats-url`): the node has no leaf of its own.
    External,
    /// Leaf node, not connected yet.
    Connecting,
    /// Leaf node, joined to its remote.
    Connected,
    /// Leaf node whose connection attempts fail (refused, TLS, authorization).
    Failed,
    /// Leaf node that was connected and lost the connection.
    Disconnected,
}

impl UplinkState {
    /// The state as JSON and the CLI write it: `none`, `external`, `connecting`, `connected`,
    /// `failed`, `disconnected`.
    pub fn as_str(self) -> &'static str {
        match self {
            UplinkState::None => "none",
            UplinkState::External => "external",
            UplinkState::Connecting => "connecting",
            UplinkState::Connected => "connected",
            UplinkState::Failed => "failed",
            UplinkState::Disconnected => "disconnected",
        }
    }
}

/// The uplink as reported in the log, heartbeats and `lattice get hosts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uplink {
    /// State.
    pub state: UplinkState,
    /// The remote URL (leaf mode) or server URL (external mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Why it failed or dropped, in nats-server's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Uplink {
    /// An uplink in `state` without remote or error.
    pub fn fixed(state: UplinkState, remote: Option<String>) -> Uplink {
        Uplink {
            state,
            remote,
            error: None,
        }
    }
}

/// A leaf-connection event in nats-server's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafEvent {
    /// `lid:N - Leafnode connection created`.
    Created(u64),
    /// `lid:N - … adding deny [$JS.API.> …]`: the remote accepted the connection.
    Established(u64),
    /// `lid:N - Leafnode Error '…'`, or another leafnode error line (no lid).
    Error(Option<u64>, String),
    /// `lid:N - Leafnode connection closed: …`.
    Closed(u64, String),
    /// `Error trying to connect as leafnode to remote server …: reason`.
    DialFailed(String),
    /// The nats-server process exited (the supervisor restarts it): its connections are gone
    /// and the next one counts connection ids from the start again.
    ServerExited,
}

/// Reads a leaf-connection event from one log message (level already stripped); `is_error`
/// says whether nats-server logged it as an error.
pub fn parse_leaf_event(message: &str, is_error: bool) -> Option<LeafEvent> {
    let lid = message.find("lid:").and_then(|at| {
        message[at + 4..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    });
    if message.contains("Leafnode connection created") {
        return lid.map(LeafEvent::Created);
    }
    if message
        .to_ascii_lowercase()
        .contains("adding deny [$js.api.>")
    {
        return lid.map(LeafEvent::Established);
    }
    if let Some(at) = message.find("Leafnode connection closed: ") {
        let rest = &message[at + "Leafnode connection closed: ".len()..];
        let reason = rest.split(" account:").next().unwrap_or(rest).trim();
        return lid.map(|lid| LeafEvent::Closed(lid, reason.to_owned()));
    }
    if let Some(at) = message.find("Leafnode Error ") {
        let reason = message[at + "Leafnode Error ".len()..].trim_matches(['\'', ' ']);
        return Some(LeafEvent::Error(lid, reason.to_owned()));
    }
    if message.starts_with("Error trying to connect as leafnode") {
        let reason = message
            .split_once("): ")
            .map_or(message, |(_, reason)| reason);
        return Some(LeafEvent::DialFailed(reason.to_owned()));
    }
    if is_error && message.to_ascii_lowercase().contains("leafnode") {
        return Some(LeafEvent::Error(lid, message.to_owned()));
    }
    None
}

/// Feeds leaf events into the uplink state; cheap to clone.
#[derive(Debug, Clone)]
pub struct UplinkTracker {
    events: mpsc::UnboundedSender<LeafEvent>,
}

impl UplinkTracker {
    /// Starts tracking the uplink to `remote`: returns the tracker the supervisor feeds and the
    /// state, which starts as [`UplinkState::Connecting`]. Changes are logged: connected at
    /// info, failures at error, a drop at warn.
    pub fn start(remote: String) -> (UplinkTracker, watch::Receiver<Uplink>) {
        let (events, mut rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) =
            watch::channel(Uplink::fixed(UplinkState::Connecting, Some(remote.clone())));
        tokio::spawn(async move {
            let mut pending: Option<(u64, Instant)> = None;
            let mut current: Option<u64> = None;
            let set = |state: UplinkState, error: Option<String>| {
                state_tx.send_if_modified(|now| {
                    let changed = now.state != state || now.error != error;
                    now.state = state;
                    now.error = error;
                    changed
                })
            };
            let failed = |reason: String| {
                if set(UplinkState::Failed, Some(reason.clone())) {
                    tracing::error!(
                        remote,
                        error = reason,
                        "leaf uplink failed: the node has not joined the lattice"
                    );
                }
            };
            let connected = || {
                if set(UplinkState::Connected, None) {
                    tracing::info!(remote, "leaf uplink connected");
                }
            };
            loop {
                let settle = pending.map(|(_, at)| at);
                let event = tokio::select! {
                    // Lines already logged count before the settle timer.
                    biased;
                    event = rx.recv() => match event {
                        Some(event) => event,
                        None => return,
                    },
                    () = sleep_until(settle), if settle.is_some() => {
                        current = pending.take().map(|(lid, _)| lid);
                        connected();
                        continue;
                    }
                };
                match event {
                    LeafEvent::Created(lid) => pending = Some((lid, Instant::now() + SETTLE)),
                    LeafEvent::Established(lid) => {
                        pending = None;
                        current = Some(lid);
                        connected();
                    }
                    // An error of a connection (pending or already counted as joined: the
                    // remote may answer after the settle time) fails the uplink; a leafnode
                    // error naming no connection does so only while none stands.
                    LeafEvent::Error(Some(lid), reason) => {
                        if pending.is_some_and(|(p, _)| p == lid) {
                            pending = None;
                        }
                        if current == Some(lid) {
                            current = None;
                        }
                        if current.is_none() {
                            failed(reason);
                        }
                    }
                    LeafEvent::Error(None, reason) => {
                        if current.is_none() {
                            pending = None;
                            failed(reason);
                        }
                    }
                    LeafEvent::ServerExited => {
                        pending = None;
                        current = None;
                        set(UplinkState::Connecting, None);
                    }
                    LeafEvent::DialFailed(reason) => {
                        pending = None;
                        failed(reason);
                    }
                    LeafEvent::Closed(lid, reason) => {
                        if pending.is_some_and(|(p, _)| p == lid) {
                            pending = None;
                        }
                        if current == Some(lid) {
                            current = None;
                            if set(UplinkState::Disconnected, Some(reason.clone())) {
                                tracing::warn!(
                                    remote,
                                    reason,
                                    "leaf uplink disconnected; nats-server reconnects on its own"
                                );
                            }
                        }
                    }
                }
            }
        });
        (UplinkTracker { events }, state_rx)
    }

    /// Tells that the nats-server process exited.
    pub fn server_exited(&self) {
        let _ = self.events.send(LeafEvent::ServerExited);
    }

    /// Feeds one nats-server log message.
    pub fn observe(&self, message: &str, is_error: bool) {
        if let Some(event) = parse_leaf_event(message, is_error) {
            let _ = self.events.send(event);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_nats_server_2_9_leaf_lines() {
        assert_eq!(
            parse_leaf_event(
                "127.0.0.1:17422 - lid:4 - Leafnode connection created for account: $G ",
                false
            ),
            Some(LeafEvent::Created(4))
        );
        assert_eq!(
            parse_leaf_event(
                "127.0.0.1:17422 - lid:5 - Leafnode Error 'Authorization Violation'",
                true
            ),
            Some(LeafEvent::Error(Some(5), "Authorization Violation".into()))
        );
        assert_eq!(
            parse_leaf_event(
                "127.0.0.1:17422 - lid:5 - Leafnode connection closed: Client Closed account: $G",
                false
            ),
            Some(LeafEvent::Closed(5, "Client Closed".into()))
        );
        assert_eq!(
            parse_leaf_event(
                "Error trying to connect as leafnode to remote server \"127.0.0.1:17422\" (attempt 1): dial tcp 127.0.0.1:17422: connect: connection refused",
                true
            ),
            Some(LeafEvent::DialFailed(
                "dial tcp 127.0.0.1:17422: connect: connection refused".into()
            ))
        );
        assert_eq!(
            parse_leaf_event(
                "127.0.0.1:17422 - lid:6 - JetStream Not Extended, adding deny [$JS.API.> $KV.> $OBJ.>] for account \"$G\"",
                false
            ),
            Some(LeafEvent::Established(6))
        );
        assert_eq!(parse_leaf_event("Server is ready", false), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_connection_never_counts_as_connected() {
        let (tracker, mut state) = UplinkTracker::start("nats-leaf://hub:7422".into());
        tracker.observe(
            "x - lid:4 - Leafnode connection created for account: $G",
            false,
        );
        tracker.observe("x - lid:4 - Leafnode Error 'Authorization Violation'", true);
        tracker.observe(
            "x - lid:4 - Leafnode connection closed: Client Closed account: $G",
            false,
        );
        state.changed().await.unwrap();
        assert_eq!(state.borrow().state, UplinkState::Failed);
        tokio::time::sleep(SETTLE * 3).await;
        let now = state.borrow().clone();
        assert_eq!(now.state, UplinkState::Failed);
        assert_eq!(now.error.as_deref(), Some("Authorization Violation"));

        tracker.observe(
            "x - lid:5 - Leafnode connection created for account: $G",
            false,
        );
        tokio::time::sleep(SETTLE * 2).await;
        assert_eq!(state.borrow().state, UplinkState::Connected);
        tracker.observe(
            "x - lid:5 - Leafnode connection closed: Server Shutdown account: $G",
            false,
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(state.borrow().state, UplinkState::Disconnected);

        // A refusal that comes after the settle time still fails the uplink.
        tracker.observe(
            "x - lid:6 - Leafnode connection created for account: $G",
            false,
        );
        tokio::time::sleep(SETTLE * 2).await;
        assert_eq!(state.borrow().state, UplinkState::Connected);
        tracker.observe("x - lid:6 - Leafnode Error 'Authorization Violation'", true);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(state.borrow().state, UplinkState::Failed);

        // A restarted server starts over.
        tracker.server_exited();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(state.borrow().state, UplinkState::Connecting);
    }
}
