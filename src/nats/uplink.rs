//! The state of the leaf node's uplink to its remote (the hub).
//!
//! What comes from where, in nats-server 2.9 and 2.15 alike:
//! - *Whether* the uplink stands comes from the monitoring port: `/leafz` lists the leaf
//!   connection once the remote accepted its CONNECT (credentials included), and no longer once
//!   it is gone. The supervisor polls it (every second; every 100 ms for 2 s after a leafnode
//!   log line) and feeds the answer here.
//! - *Why* an attempt failed or a connection dropped is in no monitoring endpoint of either
//!   version (`/leafz` and `/varz` carry no error of a remote), only in the log: `Leafnode Error
//!   '<reason>'` (the remote's `-ERR`, e.g. `Authorization Violation`), `Error trying to connect
//!   as leafnode to remote server …: <reason>` (dial, TLS) and `Leafnode connection closed:
//!   <reason>`. The supervisor forwards those lines here; they set the reason, and an error
//!   line while `/leafz` lists no connection makes the uplink [`UplinkState::Failed`].
//!
//! The remote URL is kept redacted ([`redact_url`]): a password or token in its userinfo never
//! reaches the log, a heartbeat or `lattice get hosts`, whoever built or sent the [`Uplink`].

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};

use super::redact::{redact_url, redact_urls_in};

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
    /// The remote URL (leaf mode) or server URL (external mode), redacted ([`redact_url`]):
    /// also when read from a peer's heartbeat.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "redacted"
    )]
    pub remote: Option<String>,
    /// Why it failed or dropped, in nats-server's words (URLs in it redacted: also when read
    /// from a peer's heartbeat).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "redacted_text"
    )]
    pub error: Option<String>,
}

impl Uplink {
    /// An uplink in `state` without error, to `remote` (stored redacted).
    pub fn fixed(state: UplinkState, remote: Option<String>) -> Uplink {
        Uplink {
            state,
            remote: remote.as_deref().map(redact_url),
            error: None,
        }
    }

    /// The uplink of a node whose state never changes (standalone: [`UplinkState::None`];
    /// external: [`UplinkState::External`]), as the node follows it; records the state in
    /// `lattice_uplink_state`.
    pub fn fixed_channel(state: UplinkState, remote: Option<String>) -> watch::Receiver<Uplink> {
        crate::admin::metrics::get().uplink_state(state.as_str());
        watch::channel(Uplink::fixed(state, remote)).1
    }
}

/// Reads an optional URL and redacts it: a peer that sends one with its password shows none.
fn redacted<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.as_deref().map(redact_url))
}

/// Reads optional free text and redacts the URLs in it ([`redact_urls_in`]).
fn redacted_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .as_deref()
        .map(redact_urls_in))
}

/// A leaf-connection line of nats-server's log, as far as the uplink cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafEvent {
    /// `Leafnode connection created …`: a handshake started (only a cue to look at `/leafz`).
    Created,
    /// `Leafnode Error '<reason>'`, or another leafnode error line.
    Error(String),
    /// `Leafnode connection closed: <reason>`.
    Closed(String),
    /// `Error trying to connect as leafnode to remote server …: <reason>`.
    DialFailed(String),
}

/// Reads a leaf-connection event from one log message (level already stripped); `is_error`
/// says whether nats-server logged it as an error. Formats: `server/client.go` (`Leafnode
/// Error %s`, `%s connection closed: %s account: %s` in 2.9, `… closed: %s - %s` in 2.15) and
/// `server/leafnode.go` (`Leafnode connection created`, `Error trying to connect as leafnode`).
pub fn parse_leaf_event(message: &str, is_error: bool) -> Option<LeafEvent> {
    if message.contains("Leafnode connection created") {
        return Some(LeafEvent::Created);
    }
    if let Some(at) = message.find("Leafnode connection closed: ") {
        let rest = &message[at + "Leafnode connection closed: ".len()..];
        let reason = rest
            .split(" account:")
            .next()
            .and_then(|r| r.split(" - ").next())
            .unwrap_or(rest)
            .trim();
        return Some(LeafEvent::Closed(reason.to_owned()));
    }
    if let Some(at) = message.find("Leafnode Error ") {
        let reason = message[at + "Leafnode Error ".len()..].trim_matches(['\'', ' ']);
        return Some(LeafEvent::Error(reason.to_owned()));
    }
    if message.starts_with("Error trying to connect as leafnode") {
        let reason = message
            .split_once("): ")
            .map_or(message, |(_, reason)| reason);
        return Some(LeafEvent::DialFailed(reason.to_owned()));
    }
    if is_error && message.to_ascii_lowercase().contains("leafnode") {
        return Some(LeafEvent::Error(message.to_owned()));
    }
    None
}

/// What the tracker is told.
#[derive(Debug)]
enum Input {
    /// A leafnode line of the log.
    Log(LeafEvent),
    /// `/leafz` answered: whether it lists a connection.
    Leafz(bool),
    /// The nats-server process exited: its connection is gone, and what its log said with it.
    ServerExited,
}

/// Feeds what the supervisor sees (monitoring answers, log lines, exits) into the uplink
/// state; cheap to clone.
#[derive(Debug, Clone)]
pub struct UplinkTracker {
    inputs: mpsc::UnboundedSender<Input>,
    look: Arc<Notify>,
}

impl UplinkTracker {
    /// Starts tracking the uplink to `remote`: returns the tracker the supervisor feeds and the
    /// state, which starts as [`UplinkState::Connecting`]. Changes are logged: connected at
    /// info, failures at error, a drop at warn; `remote` is logged and reported redacted.
    pub fn start(remote: String) -> (UplinkTracker, watch::Receiver<Uplink>) {
        let remote = redact_url(&remote);
        let (inputs, mut rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) =
            watch::channel(Uplink::fixed(UplinkState::Connecting, Some(remote.clone())));
        crate::admin::metrics::get().uplink_state(UplinkState::Connecting.as_str());
        tokio::spawn(async move {
            let mut machine = Machine::default();
            while let Some(input) = rx.recv().await {
                let before = state_tx.borrow().clone();
                let Some((state, error)) = machine.step(input, before.state) else {
                    continue;
                };
                let error = error.as_deref().map(redact_urls_in);
                if before.state == state && before.error == error {
                    continue;
                }
                match state {
                    UplinkState::Connected => tracing::info!(remote, "leaf uplink connected"),
                    UplinkState::Failed => tracing::error!(
                        remote,
                        error = error.as_deref().unwrap_or("-"),
                        "leaf uplink failed: the node has not joined the lattice"
                    ),
                    UplinkState::Disconnected => tracing::warn!(
                        remote,
                        reason = error.as_deref().unwrap_or("-"),
                        "leaf uplink disconnected; nats-server reconnects on its own"
                    ),
                    _ => {}
                }
                if before.state != state {
                    crate::admin::metrics::get().uplink_state(state.as_str());
                }
                state_tx.send_modify(|now| {
                    now.state = state;
                    now.error = error;
                });
            }
        });
        (
            UplinkTracker {
                inputs,
                look: Arc::new(Notify::new()),
            },
            state_rx,
        )
    }

    /// Tells that the nats-server process exited.
    pub fn server_exited(&self) {
        let _ = self.inputs.send(Input::ServerExited);
    }

    /// Tells what `/leafz` answered: whether it lists a leaf connection.
    pub fn leafz(&self, connected: bool) {
        let _ = self.inputs.send(Input::Leafz(connected));
    }

    /// Feeds one nats-server log message; a leafnode line also asks for a look at `/leafz`.
    pub fn observe(&self, message: &str, is_error: bool) {
        if let Some(event) = parse_leaf_event(message, is_error) {
            let _ = self.inputs.send(Input::Log(event));
            self.look.notify_one();
        }
    }

    /// Notified when the log says something about the leaf connection: `/leafz` is worth a
    /// look now.
    pub fn look_requests(&self) -> Arc<Notify> {
        self.look.clone()
    }
}

/// The uplink's state machine, apart from its channel (pure, so tests drive it directly).
#[derive(Debug, Default)]
struct Machine {
    /// The last `/leafz` answer since the server (re)started.
    listed: Option<bool>,
    /// The last error line since the uplink last stood (or was found gone).
    failure: Option<String>,
    /// The last close reason since the uplink last stood.
    closed: Option<String>,
}

impl Machine {
    /// The new state and error after `input`, from state `now`; `None` to keep both.
    fn step(&mut self, input: Input, now: UplinkState) -> Option<(UplinkState, Option<String>)> {
        match input {
            Input::ServerExited => {
                *self = Machine::default();
                return Some((UplinkState::Connecting, None));
            }
            Input::Log(LeafEvent::Created) => return None,
            Input::Log(LeafEvent::Closed(reason)) => {
                self.closed = Some(reason);
                return None;
            }
            Input::Log(LeafEvent::Error(reason) | LeafEvent::DialFailed(reason)) => {
                self.failure = Some(reason);
            }
            Input::Leafz(listed) => self.listed = Some(listed),
        }
        match (self.listed, now) {
            (Some(true), _) => {
                self.failure = None;
                self.closed = None;
                Some((UplinkState::Connected, None))
            }
            // Only `/leafz` says that a connection is gone: an error line may come while it
            // still stands (a permissions violation of one message does not close it).
            (Some(false), UplinkState::Connected) => {
                let reason = self.closed.take().or(self.failure.take());
                Some((
                    UplinkState::Disconnected,
                    Some(reason.unwrap_or_else(|| "the leaf connection is gone".to_owned())),
                ))
            }
            (_, UplinkState::Connected) => None,
            (_, _) => self
                .failure
                .clone()
                .map(|reason| (UplinkState::Failed, Some(reason))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_are_redacted_when_built_and_when_read() {
        let built = Uplink::fixed(
            UplinkState::External,
            Some("nats://u:secret@127.0.0.1:4222".into()),
        );
        assert_eq!(built.remote.as_deref(), Some("nats://u:***@127.0.0.1:4222"));
        let sent = r#"{"state":"connected","remote":"tls://tok3n@hub:7422"}"#;
        let read: Uplink = serde_json::from_str(sent).unwrap();
        assert_eq!(read.remote.as_deref(), Some("tls://***@hub:7422"));
        let none: Uplink = serde_json::from_str(r#"{"state":"none"}"#).unwrap();
        assert_eq!(none.remote, None);
        assert_eq!(none.error, None);
        let sent = r#"{"state":"failed","error":"cannot reach nats-leaf://u:secret@hub:7422 now"}"#;
        let read: Uplink = serde_json::from_str(sent).unwrap();
        assert_eq!(
            read.error.as_deref(),
            Some("cannot reach nats-leaf://u:***@hub:7422 now")
        );
    }

    #[test]
    fn reads_nats_server_leaf_lines() {
        assert_eq!(
            parse_leaf_event(
                "127.0.0.1:17422 - lid:4 - Leafnode connection created for account: $G ",
                false
            ),
            Some(LeafEvent::Created)
        );
        assert_eq!(
            parse_leaf_event(
                "127.0.0.1:17422 - lid:5 - Leafnode Error 'Authorization Violation'",
                true
            ),
            Some(LeafEvent::Error("Authorization Violation".into()))
        );
        // 2.9 and 2.15.
        for line in [
            "127.0.0.1:17422 - lid:5 - Leafnode connection closed: Client Closed account: $G",
            "127.0.0.1:17422 - lid:5 - Leafnode connection closed: Client Closed - Account: $G",
        ] {
            assert_eq!(
                parse_leaf_event(line, false),
                Some(LeafEvent::Closed("Client Closed".into())),
                "{line}"
            );
        }
        assert_eq!(
            parse_leaf_event(
                "Error trying to connect as leafnode to remote server \"127.0.0.1:17422\" (attempt 1): dial tcp 127.0.0.1:17422: connect: connection refused",
                true
            ),
            Some(LeafEvent::DialFailed(
                "dial tcp 127.0.0.1:17422: connect: connection refused".into()
            ))
        );
        assert_eq!(parse_leaf_event("Server is ready", false), None);
    }

    fn step(machine: &mut Machine, now: &mut UplinkState, input: Input) -> Option<String> {
        let (state, error) = machine.step(input, *now)?;
        *now = state;
        error
    }

    #[test]
    fn the_state_is_what_leafz_lists_and_the_reason_what_the_log_said() {
        let mut m = Machine::default();
        let mut now = UplinkState::Connecting;
        // A refusal: the connection is created, refused, closed, and never listed.
        step(&mut m, &mut now, Input::Log(LeafEvent::Created));
        step(&mut m, &mut now, Input::Leafz(false));
        assert_eq!(now, UplinkState::Connecting);
        let error = step(
            &mut m,
            &mut now,
            Input::Log(LeafEvent::Error("Authorization Violation".into())),
        );
        assert_eq!(now, UplinkState::Failed);
        assert_eq!(error.as_deref(), Some("Authorization Violation"));
        step(
            &mut m,
            &mut now,
            Input::Log(LeafEvent::Closed("Client Closed".into())),
        );
        assert_eq!(
            m.step(Input::Leafz(false), now),
            Some((UplinkState::Failed, Some("Authorization Violation".into())))
        );

        // Listed: connected; an error line alone does not undo that.
        step(&mut m, &mut now, Input::Leafz(true));
        assert_eq!(now, UplinkState::Connected);
        step(
            &mut m,
            &mut now,
            Input::Log(LeafEvent::Error("Permissions Violation".into())),
        );
        assert_eq!(now, UplinkState::Connected);
        step(&mut m, &mut now, Input::Leafz(true));
        assert_eq!(now, UplinkState::Connected);

        // Gone from /leafz: disconnected, with the close reason the log gave.
        step(
            &mut m,
            &mut now,
            Input::Log(LeafEvent::Closed("Server Shutdown".into())),
        );
        let reason = step(&mut m, &mut now, Input::Leafz(false));
        assert_eq!(now, UplinkState::Disconnected);
        assert_eq!(reason.as_deref(), Some("Server Shutdown"));
        // Reconnecting fails: failed, with why.
        let reason = step(
            &mut m,
            &mut now,
            Input::Log(LeafEvent::DialFailed("connection refused".into())),
        );
        assert_eq!(now, UplinkState::Failed);
        assert_eq!(reason.as_deref(), Some("connection refused"));

        // A restarted server starts over.
        step(&mut m, &mut now, Input::ServerExited);
        assert_eq!(now, UplinkState::Connecting);
        assert_eq!(m.step(Input::Leafz(false), now), None);
    }
}
