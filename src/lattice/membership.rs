//! Heartbeats and membership: every node publishes what it is and runs every few seconds
//! (`host_heartbeat`), and `host_started` / `host_stopped` once; every node keeps the hosts it
//! has heard from, and forgets one not heard from for [`MISSED_HEARTBEATS`] of its intervals.
//!
//! Every host event is signed with the node's key and carries a sequence (`PROTOCOL.md`
//! §Events): a node accepts only events whose signature verifies with the key their `id`
//! names, whose sequence is newer than the last it accepted of that id and within
//! [`SEQUENCE_WINDOW`] of its clock, and whose `heartbeat_interval_ms` is in
//! [`HEARTBEAT_INTERVAL_MS`]; it drops and counts the others ([`Rejections`]). The cheap
//! checks come first (size, signature header, JSON, subject, interval, window, sequence, the
//! [`MAX_HOSTS`] limit) and the ed25519 verification last, outside the membership's lock.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::lattice::identity;
use crate::lattice::probe::{self, Due, Marks, Probes, Round, Verdict};
use crate::nats::subjects;
use crate::nats::uplink::Uplink;
use crate::reconciler::plan::Failure;
use crate::supervisor::TaskHealth;

/// Heartbeats a host may miss before the others consider it gone.
pub const MISSED_HEARTBEATS: u32 = 3;

/// The `heartbeat_interval_ms` a host event may carry (and a node's own
/// `--heartbeat-interval`), in ms: 1 s to 60 s, so no host counts as live for more than 3 min
/// after its last heartbeat.
pub const HEARTBEAT_INTERVAL_MS: RangeInclusive<u64> = 1_000..=60_000;

/// How far a host event's sequence (ms since the Unix epoch, give or take) may lie from the
/// receiver's clock, either way. An older event is a replay (a receiver that just started
/// remembers no sequence); the nodes' clocks must agree within this.
pub const SEQUENCE_WINDOW: Duration = Duration::from_secs(60);

/// NATS header that carries a host event's signature: ed25519 by the node's key over the
/// exact payload bytes, unpadded base64url ([`identity::sign`]).
pub const SIGNATURE_HEADER: &str = "Lattice-Signature";

/// Largest host event payload taken in, in bytes (half of nats-server's default
/// `max_payload`); a larger one is dropped before it is parsed. A node with 1,000 components
/// and 100 failures, names of 32 characters, sends about 280 KB
/// (`tests::a_large_host_fits_the_event_limit`), and its failures are sent bounded
/// ([`bounded_failures`]); a node refuses to send a larger one (logged at error).
pub const MAX_EVENT_BYTES: usize = 512 * 1024;

/// Most ids a node keeps (hosts and the sequences of hosts that stopped within
/// [`SEQUENCE_WINDOW`]); an event of a new id beyond it is dropped ([`Rejected::TooManyHosts`]).
pub const MAX_HOSTS: usize = 10_000;

/// Expired hosts and sequences are forgotten at most this often (by the monotonic clock, so
/// a step of the wall clock does not stop it).
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// Ids whose out-of-window events are logged, at most, per [`REJECTIONS_LOG_EVERY`].
const OUT_OF_WINDOW_LOGGED: usize = 64;

/// Longest failure `reason` a node sends, in bytes; a longer one is cut on a character
/// boundary and ends with `REASON_CUT_MARKER`.
pub const MAX_FAILURE_REASON_BYTES: usize = 1024;

/// Appended to a failure `reason` cut to [`MAX_FAILURE_REASON_BYTES`].
const REASON_CUT_MARKER: &str = " [cut]";

/// Most failures a node lists in its host events; beyond them, one last entry with an empty
/// `app` says how many were left out ([`bounded_failures`]).
pub const MAX_FAILURES_LISTED: usize = 100;

/// How long publishing one host event may wait for the NATS client to take it, at most: no
/// longer than the event's heartbeat interval either, so a wait never spans a missed beat.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed signing of this node's host event is logged at error at most this often.
const SIGN_ERROR_LOG_EVERY: Duration = Duration::from_secs(60);

/// Dropped host events are logged at most this often, with counts.
const REJECTIONS_LOG_EVERY: Duration = Duration::from_secs(10);

/// A `host_started` is answered with a heartbeat at once, but at most this often (joins in
/// between are answered together at the end of it).
const JOIN_ANSWER_EVERY: Duration = Duration::from_secs(1);

/// "host joined/left" lines logged at info per [`REJECTIONS_LOG_EVERY`]; the others are
/// counted and reported in one line.
const CHANGE_LINES_PER_PERIOD: u32 = 20;

/// What a node says of itself: the payload of every host event (with `event` and `seq`
/// beside its fields) and an entry of `lattice get hosts` (`PROTOCOL.md` §Events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// Node id: the public nkeys server key (`N…`).
    pub id: String,
    /// Friendly name (`--name`).
    pub name: String,
    /// Lattice name.
    pub lattice: String,
    /// Labels: the user's plus `os`, `arch`, `hostname`.
    pub labels: BTreeMap<String, String>,
    /// Version of `lattice`.
    pub version: String,
    /// Time since the node started, in ms (when the event was sent).
    pub uptime_ms: u64,
    /// The node's heartbeat interval, in ms.
    pub heartbeat_interval_ms: u64,
    /// Its leaf uplink.
    pub uplink: Uplink,
    /// Address of its HTTP ingress.
    pub http_addr: String,
    /// Components with replicas on the node.
    pub components: Vec<ComponentReplicas>,
    /// Replicas or routes the node was given but could not start, with why.
    #[serde(default)]
    pub failures: Vec<Failure>,
    /// The node's own tasks: each one's state, and whether the node is degraded.
    #[serde(default)]
    pub health: NodeHealth,
    /// Whether the node answers probes on `lattice.<L>.node.v1.<id>.probe`
    /// ([`crate::lattice::probe`]), so that a probe nobody subscribes to says it is gone;
    /// false from nodes before probes (they are forgotten by their missed heartbeats only).
    #[serde(default)]
    pub probe: bool,
}

/// How a node's own tasks fare (DESIGN §2): part of every host event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHealth {
    /// Why the node is degraded (a task failing for longer than 60 s), `None` while it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Every supervised task, in start order.
    #[serde(default)]
    pub tasks: Vec<TaskHealth>,
}

/// A component's replicas on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentReplicas {
    /// App (manifest `metadata.name`).
    pub app: String,
    /// Component name in the manifest.
    pub component: String,
    /// Replicas on the node.
    pub replicas: u32,
    /// sha256 of the component's wasm, lowercase hex.
    pub digest: String,
    /// The app version they run.
    #[serde(default)]
    pub version: String,
}

/// The signed body of a host event: the node's [`HostInfo`] with the event's name and its
/// sequence as two more fields (`PROTOCOL.md` §Events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HostEvent {
    #[serde(flatten)]
    info: HostInfo,
    /// `host_started`, `host_heartbeat` or `host_stopped`: the same as the subject's last token,
    /// so one event's signature cannot pass for another's.
    event: String,
    /// Greater in every event of the node than in the one before, across restarts.
    seq: u64,
}

/// Why a host event was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// The payload is larger than [`MAX_EVENT_BYTES`] (dropped before it is parsed).
    #[error("larger than {MAX_EVENT_BYTES} bytes")]
    Oversized,
    /// No [`SIGNATURE_HEADER`] (nodes before signed membership send none).
    #[error("unsigned")]
    Unsigned,
    /// The payload is not a host event (JSON of a [`HostInfo`] with `event` and `seq`).
    #[error("not a host event")]
    Malformed,
    /// The body's `event` or `lattice` is not the subject's, or `event` names no host event.
    #[error("event or lattice differs from its subject")]
    WrongSubject,
    /// `heartbeat_interval_ms` outside [`HEARTBEAT_INTERVAL_MS`].
    #[error("heartbeat_interval_ms outside 1000..=60000")]
    BadInterval,
    /// The sequence is more than [`SEQUENCE_WINDOW`] from this node's clock, either way (an
    /// old replay, or a sender whose clock is off).
    #[error("sequence out of the window")]
    OutOfWindow,
    /// The sequence is not greater than the last accepted of that id (a replay).
    #[error("sequence replayed")]
    Stale,
    /// A new id while this node already knows [`MAX_HOSTS`] ids.
    #[error("too many hosts")]
    TooManyHosts,
    /// The `id` is not an nkeys server public key, so no signature can name it.
    #[error("id is not a node key")]
    BadId,
    /// The signature does not verify with the key the `id` names (forged, signed by another
    /// key, or the body changed).
    #[error("signature does not verify with the id's key")]
    BadSignature,
}

/// Counts of dropped host events, by reason, since the node started: what [`Rejections`]
/// holds, to log or to export as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RejectionCounts {
    /// [`Rejected::Oversized`].
    pub oversized: u64,
    /// [`Rejected::Unsigned`].
    pub unsigned: u64,
    /// [`Rejected::Malformed`].
    pub malformed: u64,
    /// [`Rejected::WrongSubject`].
    pub wrong_subject: u64,
    /// [`Rejected::BadInterval`].
    pub bad_interval: u64,
    /// [`Rejected::OutOfWindow`].
    pub out_of_window: u64,
    /// [`Rejected::Stale`].
    pub stale: u64,
    /// [`Rejected::TooManyHosts`].
    pub too_many_hosts: u64,
    /// [`Rejected::BadId`].
    pub bad_id: u64,
    /// [`Rejected::BadSignature`].
    pub bad_signature: u64,
}

impl RejectionCounts {
    fn fields(&self) -> [(&'static str, u64); 10] {
        [
            ("oversized", self.oversized),
            ("unsigned", self.unsigned),
            ("malformed", self.malformed),
            ("wrong_subject", self.wrong_subject),
            ("bad_interval", self.bad_interval),
            ("out_of_window", self.out_of_window),
            ("stale", self.stale),
            ("too_many_hosts", self.too_many_hosts),
            ("bad_id", self.bad_id),
            ("bad_signature", self.bad_signature),
        ]
    }

    /// Each reason's count, by the reason's fixed name (`oversized`, `unsigned`, `malformed`,
    /// `wrong_subject`, `bad_interval`, `out_of_window`, `stale`, `too_many_hosts`, `bad_id`,
    /// `bad_signature`): the `reason` label of `lattice_membership_rejected_total`.
    pub fn by_reason(&self) -> [(&'static str, u64); 10] {
        self.fields()
    }

    /// Every dropped event.
    pub fn total(&self) -> u64 {
        self.fields().iter().map(|(_, n)| n).sum()
    }

    /// The counts that grew from `earlier` to `self`.
    fn since(&self, earlier: &RejectionCounts) -> RejectionCounts {
        RejectionCounts {
            oversized: self.oversized.saturating_sub(earlier.oversized),
            unsigned: self.unsigned.saturating_sub(earlier.unsigned),
            malformed: self.malformed.saturating_sub(earlier.malformed),
            wrong_subject: self.wrong_subject.saturating_sub(earlier.wrong_subject),
            bad_interval: self.bad_interval.saturating_sub(earlier.bad_interval),
            out_of_window: self.out_of_window.saturating_sub(earlier.out_of_window),
            stale: self.stale.saturating_sub(earlier.stale),
            too_many_hosts: self.too_many_hosts.saturating_sub(earlier.too_many_hosts),
            bad_id: self.bad_id.saturating_sub(earlier.bad_id),
            bad_signature: self.bad_signature.saturating_sub(earlier.bad_signature),
        }
    }
}

/// `reason=count` for each reason with a count, e.g. `bad_signature=2 stale=14`.
impl fmt::Display for RejectionCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, count) in self.fields().into_iter().filter(|(_, n)| *n > 0) {
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "{name}={count}")?;
            first = false;
        }
        Ok(())
    }
}

/// Dropped host events counted by reason, readable at any time ([`Membership::rejections`]).
#[derive(Debug, Default)]
pub struct Rejections {
    oversized: AtomicU64,
    unsigned: AtomicU64,
    malformed: AtomicU64,
    wrong_subject: AtomicU64,
    bad_interval: AtomicU64,
    out_of_window: AtomicU64,
    stale: AtomicU64,
    too_many_hosts: AtomicU64,
    bad_id: AtomicU64,
    bad_signature: AtomicU64,
}

impl Rejections {
    fn count(&self, reason: Rejected) {
        let counter = match reason {
            Rejected::Oversized => &self.oversized,
            Rejected::Unsigned => &self.unsigned,
            Rejected::Malformed => &self.malformed,
            Rejected::WrongSubject => &self.wrong_subject,
            Rejected::BadInterval => &self.bad_interval,
            Rejected::OutOfWindow => &self.out_of_window,
            Rejected::Stale => &self.stale,
            Rejected::TooManyHosts => &self.too_many_hosts,
            Rejected::BadId => &self.bad_id,
            Rejected::BadSignature => &self.bad_signature,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> RejectionCounts {
        RejectionCounts {
            oversized: self.oversized.load(Ordering::Relaxed),
            unsigned: self.unsigned.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            wrong_subject: self.wrong_subject.load(Ordering::Relaxed),
            bad_interval: self.bad_interval.load(Ordering::Relaxed),
            out_of_window: self.out_of_window.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            too_many_hosts: self.too_many_hosts.load(Ordering::Relaxed),
            bad_id: self.bad_id.load(Ordering::Relaxed),
            bad_signature: self.bad_signature.load(Ordering::Relaxed),
        }
    }
}

/// What an accepted host event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// `host_started`: the host joined (or started again).
    Started(HostInfo),
    /// `host_heartbeat`.
    Heartbeat,
    /// `host_stopped`: the host left.
    Stopped(HostInfo),
}

/// Milliseconds since the Unix epoch by this machine's clock (0 before 1970).
fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// [`SEQUENCE_WINDOW`] in ms.
fn window_ms() -> u64 {
    u64::try_from(SEQUENCE_WINDOW.as_millis()).unwrap_or(u64::MAX)
}

/// The cheap checks of the host event `payload` received on `subject` with `signature` (the
/// [`SIGNATURE_HEADER`]), in this order: size, signature present, JSON, subject, interval.
/// The window, the sequence and the signature itself are checked next
/// ([`Membership::receive`]).
fn parse_event<'a>(
    subject: &str,
    signature: Option<&'a str>,
    payload: &[u8],
) -> Result<(HostEvent, &'a str), Rejected> {
    if payload.len() > MAX_EVENT_BYTES {
        return Err(Rejected::Oversized);
    }
    let signature = signature.ok_or(Rejected::Unsigned)?;
    let event: HostEvent = serde_json::from_slice(payload).map_err(|_| Rejected::Malformed)?;
    let host_events = [
        subjects::HOST_STARTED,
        subjects::HOST_HEARTBEAT,
        subjects::HOST_STOPPED,
    ];
    if !host_events.contains(&event.event.as_str())
        || subject != subjects::event(&event.info.lattice, &event.event)
    {
        return Err(Rejected::WrongSubject);
    }
    if !HEARTBEAT_INTERVAL_MS.contains(&event.info.heartbeat_interval_ms) {
        return Err(Rejected::BadInterval);
    }
    Ok((event, signature))
}

/// Whether `seq` is within [`SEQUENCE_WINDOW`] of `now_ms`, either way.
fn in_window(seq: u64, now_ms: u64) -> bool {
    let window = window_ms();
    (now_ms.saturating_sub(window)..=now_ms.saturating_add(window)).contains(&seq)
}

/// The hosts this node has heard from, by verified host events only.
pub struct Membership {
    state: Mutex<State>,
    changed: Notify,
    rejections: Rejections,
    /// Ids whose out-of-window events were logged (at most [`OUT_OF_WINDOW_LOGGED`]) since
    /// the instant beside them; cleared every [`REJECTIONS_LOG_EVERY`].
    out_of_window_logged: Mutex<(Instant, HashSet<String>)>,
}

impl Default for Membership {
    fn default() -> Membership {
        Membership::with_max_hosts(MAX_HOSTS)
    }
}

struct State {
    hosts: HashMap<String, Seen>,
    /// The last sequence accepted of each id, kept while it is within [`SEQUENCE_WINDOW`] of
    /// the clock, either way (an event older than that is refused by the window itself; one
    /// further ahead was accepted before this node's clock stepped back, and kept would hold
    /// the sender `stale` for the whole step), so a host that stopped or went silent is not
    /// brought back by its own events replayed.
    sequences: HashMap<String, u64>,
    /// When (monotonic) expired hosts and sequences were last forgotten.
    pruned_at: Option<Instant>,
    /// Whether hosts expired since [`Membership::changed`] was last woken for it.
    expired_untold: bool,
    /// [`MAX_HOSTS`], or fewer in tests.
    max_hosts: usize,
}

struct Seen {
    info: HostInfo,
    at: Instant,
    /// What this node's probes learned of it ([`Membership::probe_round`]).
    marks: Marks,
}

impl Seen {
    /// The host's own heartbeat interval (at least 100 ms: a test's fewer are taken as that).
    fn interval(&self) -> Duration {
        Duration::from_millis(self.info.heartbeat_interval_ms.max(100))
    }
}

impl State {
    /// Whether an event of `id` with `seq` may be taken in, before its signature is checked:
    /// [`Rejected::Stale`] unless `seq` is greater than the last accepted of `id`,
    /// [`Rejected::TooManyHosts`] for a new id while [`State::max_hosts`] ids are known.
    fn admits(&mut self, id: &str, seq: u64, now_ms: u64, at: Instant) -> Result<(), Rejected> {
        // First, so a sequence that left the window does not hold its sender stale.
        self.prune(now_ms, at);
        if let Some(last) = self.sequences.get(id) {
            return if seq > *last {
                Ok(())
            } else {
                Err(Rejected::Stale)
            };
        }
        if self.hosts.contains_key(id) {
            return Ok(());
        }
        if self.hosts.len().max(self.sequences.len()) >= self.max_hosts {
            return Err(Rejected::TooManyHosts);
        }
        Ok(())
    }

    /// Records `seq` as the last of `id` if [`State::admits`] it (checked again: another event
    /// of `id` may have been accepted while this one's signature was checked).
    fn accept_sequence(
        &mut self,
        id: &str,
        seq: u64,
        now_ms: u64,
        at: Instant,
    ) -> Result<(), Rejected> {
        self.admits(id, seq, now_ms, at)?;
        self.sequences.insert(id.to_owned(), seq);
        Ok(())
    }

    /// Forgets the sequences that left the window of `now_ms` (this node's clock, ms since the
    /// Unix epoch), either way, and the hosts that missed [`MISSED_HEARTBEATS`]: at most once
    /// every [`PRUNE_EVERY`] of the monotonic `at`, so a flood does not walk the maps on every
    /// event and a step back of the wall clock does not stop it.
    fn prune(&mut self, now_ms: u64, at: Instant) {
        if self
            .pruned_at
            .is_some_and(|last| at.saturating_duration_since(last) < PRUNE_EVERY)
        {
            return;
        }
        self.pruned_at = Some(at);
        self.sequences.retain(|_, last| in_window(*last, now_ms));
        // Told by the next `Membership::expire` or `hosts`.
        self.expired_untold = self.expire_hosts();
    }

    /// Forgets the hosts not heard from for [`MISSED_HEARTBEATS`] of their intervals; true
    /// when it forgot any.
    fn expire_hosts(&mut self) -> bool {
        let before = self.hosts.len();
        self.hosts
            .retain(|_, seen| seen.at.elapsed() <= seen.interval() * MISSED_HEARTBEATS);
        self.expired_untold |= self.hosts.len() != before;
        std::mem::take(&mut self.expired_untold)
    }

    /// Records a verified heartbeat or `host_started`; true when the host is new or its
    /// labels, components or failures changed (wake [`Membership::changed`]).
    fn observe(&mut self, info: HostInfo) -> bool {
        let old = self.hosts.get(&info.id);
        let same = old.is_some_and(|seen| {
            seen.info.labels == info.labels
                && seen.info.components == info.components
                && seen.info.failures == info.failures
        });
        // An event clears a first no-responders; a host earns its probes again after its
        // probe subject went away (its events said `probe: false`).
        let marks = old.map_or_else(Marks::default, |seen| Marks {
            sent: seen.marks.sent,
            earned: seen.marks.earned && seen.info.probe && info.probe,
            gone: None,
        });
        self.hosts.insert(
            info.id.clone(),
            Seen {
                info,
                at: Instant::now(),
                marks,
            },
        );
        !same
    }

    /// Forgets host `id` (a verified `host_stopped`); true when it was known.
    fn forget(&mut self, id: &str) -> bool {
        self.hosts.remove(id).is_some()
    }
}

impl Membership {
    /// A membership that keeps at most `max_hosts` ids ([`MAX_HOSTS`] by default).
    fn with_max_hosts(max_hosts: usize) -> Membership {
        Membership {
            state: Mutex::new(State {
                hosts: HashMap::new(),
                sequences: HashMap::new(),
                pruned_at: None,
                expired_untold: false,
                max_hosts,
            }),
            changed: Notify::new(),
            rejections: Rejections::default(),
            out_of_window_logged: Mutex::new((Instant::now(), HashSet::new())),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes in the host event `payload` received on `subject` (one of
    /// `lattice.<L>.evt.v1.host_*`) with `signature`, the value of its [`SIGNATURE_HEADER`]:
    /// verifies it, then records the host or forgets it. `now_ms` is this node's clock (ms
    /// since the Unix epoch).
    ///
    /// The cheap checks run first (size, signature present, JSON, subject, interval, window,
    /// then, under the lock, a sequence not newer than the last and the host limit), the
    /// ed25519 verification last and outside the lock, so forged events cost the readers of
    /// [`Membership::hosts`] little.
    ///
    /// # Errors
    /// Why the event was dropped (counted in [`Membership::rejections`]); the membership is
    /// unchanged then.
    pub fn receive(
        &self,
        subject: &str,
        signature: Option<&str>,
        payload: &[u8],
        now_ms: u64,
    ) -> Result<Accepted, Rejected> {
        self.receive_at(subject, signature, payload, now_ms, Instant::now())
    }

    /// [`Membership::receive`] at the monotonic instant `at` (when pruning and the
    /// out-of-window log are due).
    fn receive_at(
        &self,
        subject: &str,
        signature: Option<&str>,
        payload: &[u8],
        now_ms: u64,
        at: Instant,
    ) -> Result<Accepted, Rejected> {
        match self.take_in(subject, signature, payload, now_ms, at) {
            Ok((changed, accepted)) => {
                if changed {
                    self.changed.notify_one();
                }
                Ok(accepted)
            }
            Err(reason) => {
                self.rejections.count(reason);
                Err(reason)
            }
        }
    }

    /// [`Membership::receive`] but for counting and waking: what the event did, and whether
    /// the membership changed.
    fn take_in(
        &self,
        subject: &str,
        signature: Option<&str>,
        payload: &[u8],
        now_ms: u64,
        at: Instant,
    ) -> Result<(bool, Accepted), Rejected> {
        let (event, signature) = parse_event(subject, signature, payload)?;
        let id = &event.info.id;
        if !in_window(event.seq, now_ms) {
            self.log_out_of_window(id, event.seq, now_ms, at);
            return Err(Rejected::OutOfWindow);
        }
        self.state().admits(id, event.seq, now_ms, at)?;
        identity::verify(id, payload, signature).map_err(|e| match e {
            identity::VerifyError::NotAServerKey => Rejected::BadId,
            identity::VerifyError::BadSignature => Rejected::BadSignature,
        })?;
        // The sequence checked again and the host recorded under one lock, so events taken in
        // at once cannot record an older one last.
        let mut state = self.state();
        state.accept_sequence(id, event.seq, now_ms, at)?;
        Ok(match event.event.as_str() {
            subjects::HOST_STOPPED => (state.forget(id), Accepted::Stopped(event.info)),
            subjects::HOST_STARTED => (
                state.observe(event.info.clone()),
                Accepted::Started(event.info),
            ),
            _ => (state.observe(event.info), Accepted::Heartbeat),
        })
    }

    /// Logs an out-of-window event's id and how far its `seq` is from this node's clock, once
    /// per id and for at most [`OUT_OF_WINDOW_LOGGED`] ids per [`REJECTIONS_LOG_EVERY`] of the
    /// monotonic `at`, so forged ids cannot silence it for good (the id is as the event claims
    /// it: its signature was not checked). True when it logged.
    fn log_out_of_window(&self, id: &str, seq: u64, now_ms: u64, at: Instant) -> bool {
        let mut guard = self
            .out_of_window_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (since, logged) = &mut *guard;
        if at.saturating_duration_since(*since) >= REJECTIONS_LOG_EVERY {
            *since = at;
            logged.clear();
        }
        if logged.len() >= OUT_OF_WINDOW_LOGGED || logged.contains(id) {
            return false;
        }
        logged.insert(id.to_owned());
        let offset_ms = i128::from(seq) - i128::from(now_ms);
        tracing::warn!(
            unverified_id = id,
            offset_ms = i64::try_from(offset_ms).unwrap_or(i64::MAX),
            "host event with a sequence more than 60 s from this node's clock dropped (is one \
             of the clocks off? the id is unverified: its signature is not checked; logged \
             once per id, for at most 64 ids per 10 s)"
        );
        true
    }

    /// Dropped host events so far, by reason.
    pub fn rejections(&self) -> &Rejections {
        &self.rejections
    }

    /// Records a host as [`Membership::receive`] does once its event is verified (tests only).
    #[cfg(test)]
    fn observe(&self, info: HostInfo) {
        if self.state().observe(info) {
            self.changed.notify_one();
        }
    }

    /// Forgets host `id` as a verified `host_stopped` does (tests only).
    #[cfg(test)]
    fn forget(&self, id: &str) {
        if self.state().forget(id) {
            self.changed.notify_one();
        }
    }

    /// Completes when a host joins, leaves in order, or reports other labels, components or
    /// failures (hosts that go silent are noticed by the next [`Membership::hosts`]).
    ///
    /// # Cancel safety
    /// Cancel-safe: a change that happens while nobody waits is kept for the next call.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Forgets the hosts that missed [`MISSED_HEARTBEATS`] of their intervals now, not at
    /// the next prune or read, and wakes [`Membership::changed`] if it forgot any (so the
    /// reconciler re-places their replicas at once).
    pub fn expire(&self) {
        if self.state().expire_hosts() {
            self.changed.notify_one();
        }
    }

    /// The probes due at `now` ([`probe::due`]), at most `room` of them (second probes
    /// first, then first probes of silent hosts, then vetting probes), those marked sent; with
    /// the counts of hosts that answer probes and of those silent. No probe of a silent host
    /// is due while more than [`probe::few`] are silent: heartbeats late everywhere are a fault
    /// of the path, and probes would only add to it.
    pub fn probe_round(&self, room: usize, now: Instant) -> Round {
        let mut state = self.state();
        let mut round = Round::default();
        let mut due: Vec<Due> = Vec::new();
        for (id, seen) in &state.hosts {
            let interval = seen.interval();
            let silent = now.saturating_duration_since(seen.at);
            if !seen.info.probe {
                continue;
            }
            round.hosts += 1;
            if silent >= interval.mul_f64(probe::PROBE_AFTER) {
                round.silent += 1;
            }
            if let Some(kind) = probe::due(&seen.marks, true, interval, silent, now) {
                due.push(Due {
                    id: id.clone(),
                    kind,
                    silent_since: seen.at,
                    interval,
                });
            }
        }
        if round.silent > probe::few(round.hosts) {
            due.retain(|due| due.kind == probe::Kind::Vet);
        }
        due.sort_by_key(|due| due.kind);
        due.truncate(room);
        for due in &due {
            if let Some(seen) = state.hosts.get_mut(&due.id) {
                seen.marks.sent = Some(now);
            }
        }
        round.due = due;
        round
    }

    /// Host `id` answered a probe: its probe subject reaches it from here, and a first
    /// no-responders of it is void. Its name if it earned its probes just now.
    pub fn probe_answered(&self, id: &str) -> Option<String> {
        let mut state = self.state();
        let seen = state.hosts.get_mut(id).filter(|seen| seen.info.probe)?;
        seen.marks.gone = None;
        let earned = std::mem::replace(&mut seen.marks.earned, true);
        (!earned).then(|| seen.info.name.clone())
    }

    /// Voids the first no-responders of the hosts `only` names, or of all hosts.
    pub fn clear_gone(&self, only: Option<&[String]>) {
        let mut state = self.state();
        for (id, seen) in &mut state.hosts {
            if only.is_none_or(|ids| ids.contains(id)) {
                seen.marks.gone = None;
            }
        }
    }

    /// Takes in a no-responders at `now` of the probe of host `id` sent when its last event
    /// was that of `silent_since` ([`Due::silent_since`]): nothing if it was heard from since or
    /// never answered a probe; its first recorded; its second, at least half an interval
    /// later, forgets it and wakes [`Membership::changed`]. Its sequence is kept, so a replay
    /// of its last events cannot bring it back.
    pub fn probe_gone(&self, id: &str, silent_since: Instant, now: Instant) -> Verdict {
        let mut state = self.state();
        let Some(seen) = state
            .hosts
            .get_mut(id)
            .filter(|seen| seen.at == silent_since)
        else {
            return Verdict::Heard;
        };
        if !seen.marks.earned {
            return Verdict::Unearned;
        }
        let half = seen.interval().mul_f64(probe::CONFIRM_AFTER);
        match seen.marks.gone {
            Some(first) if now.saturating_duration_since(first) >= half => {}
            Some(_) => return Verdict::First,
            None => {
                seen.marks.gone = Some(now);
                return Verdict::First;
            }
        }
        let name = seen.info.name.clone();
        state.hosts.remove(id);
        drop(state);
        self.changed.notify_one();
        Verdict::Forgotten(name)
    }

    /// The live hosts, by name then id, with uptimes brought to now.
    pub fn hosts(&self) -> Vec<HostInfo> {
        let mut state = self.state();
        if state.expire_hosts() {
            self.changed.notify_one();
        }
        let mut live: Vec<HostInfo> = state
            .hosts
            .values()
            .map(|seen| {
                let mut info = seen.info.clone();
                info.uptime_ms = info
                    .uptime_ms
                    .saturating_add(seen.at.elapsed().as_millis() as u64);
                info
            })
            .collect();
        live.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        live
    }

    /// The live hosts with `me` (this node as it is now, fresher than its last heartbeat) in
    /// place of what was heard of it, by name then id.
    pub fn hosts_with(&self, me: HostInfo) -> Vec<HostInfo> {
        let mut hosts: Vec<HostInfo> = self.hosts().into_iter().filter(|h| h.id != me.id).collect();
        hosts.push(me);
        hosts.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        hosts
    }

    /// Subscribes to the host events of `lattice`, for [`Membership::follow`].
    ///
    /// The subscription buffers what the client's `subscription_capacity` allows (async-nats
    /// sets the capacity per connection, in `ConnectOptions`, not per subscription; the node's
    /// client keeps the default, 65,536 messages); when it is full nats messages are dropped
    /// and the client logs the slow consumer (`nats::connect`). What keeps a flood off this
    /// subject is NATS publish permission on it: only nodes may publish host events
    /// (`PROTOCOL.md` §Roles).
    ///
    /// # Errors
    /// The subscription cannot be made.
    pub async fn subscribe(
        client: &async_nats::Client,
        lattice: &str,
    ) -> anyhow::Result<async_nats::Subscriber> {
        let subject = subjects::events(lattice);
        client
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("subscribing to {subject}"))
    }

    /// Follows the host `events` (from [`Membership::subscribe`]) and runs `probes` (this
    /// node's answers and the probes of silent hosts, [`Probes::run`]) until `shutdown`; tells
    /// `on_join` when a host starts, at most once every `JOIN_ANSWER_EVERY` (joins in between
    /// are told together when it is over). Dropped events are logged at warn with their
    /// counts, at most every 10 s; joins and leaves at info, the first
    /// `CHANGE_LINES_PER_PERIOD` of every 10 s.
    ///
    /// # Errors
    /// The subscription ended (the client closed it) before `shutdown`, or the probe
    /// subject's could not be made or ended.
    pub async fn follow(
        &self,
        events: async_nats::Subscriber,
        probes: Probes,
        on_join: &Notify,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        tokio::select! {
            followed = self.follow_events(events, on_join, shutdown.clone()) => followed,
            probed = probes.run(self, shutdown.clone()) => probed,
        }
    }

    /// [`Membership::follow`] but for the probes.
    async fn follow_events(
        &self,
        mut events: async_nats::Subscriber,
        on_join: &Notify,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut log = RejectionLog::new(self.rejections.snapshot());
        let mut changes = ChangeLog::new(Instant::now());
        let mut flush = tokio::time::interval(REJECTIONS_LOG_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Joins are answered at most every JOIN_ANSWER_EVERY: the last answer, and whether a
        // join since waits for the next.
        let mut answered: Option<tokio::time::Instant> = None;
        let mut unanswered = false;
        loop {
            let next_answer =
                answered.map_or_else(tokio::time::Instant::now, |at| at + JOIN_ANSWER_EVERY);
            let message = tokio::select! {
                message = events.next() => match message {
                    Some(message) => message,
                    None => anyhow::bail!("the host events subscription ended"),
                },
                _ = flush.tick() => {
                    log.flush(&self.rejections);
                    changes.flush(Instant::now());
                    continue;
                }
                () = tokio::time::sleep_until(next_answer), if unanswered => {
                    unanswered = false;
                    answered = Some(tokio::time::Instant::now());
                    on_join.notify_one();
                    continue;
                }
                () = shutdown.cancelled() => return Ok(()),
            };
            let event = message.subject.rsplit('.').next().unwrap_or_default();
            if ![
                subjects::HOST_HEARTBEAT,
                subjects::HOST_STARTED,
                subjects::HOST_STOPPED,
            ]
            .contains(&event)
            {
                continue;
            }
            let signature = message
                .headers
                .as_ref()
                .and_then(|headers| headers.get(SIGNATURE_HEADER))
                .map(|value| value.as_str());
            match self.receive(&message.subject, signature, &message.payload, unix_ms()) {
                Ok(Accepted::Heartbeat) => {}
                Ok(Accepted::Started(info)) => {
                    if changes.admit(Instant::now()) {
                        tracing::info!(id = info.id, name = info.name, "host joined the lattice");
                    } else {
                        tracing::debug!(id = info.id, name = info.name, "host joined the lattice");
                    }
                    // The newcomer learns of this node at once, not a heartbeat later (once a
                    // second at most, however many join).
                    if answered.is_some_and(|at| at.elapsed() < JOIN_ANSWER_EVERY) {
                        unanswered = true;
                    } else {
                        answered = Some(tokio::time::Instant::now());
                        on_join.notify_one();
                    }
                }
                Ok(Accepted::Stopped(info)) => {
                    if changes.admit(Instant::now()) {
                        tracing::info!(id = info.id, name = info.name, "host left the lattice");
                    } else {
                        tracing::debug!(id = info.id, name = info.name, "host left the lattice");
                    }
                }
                Err(reason) => {
                    tracing::debug!(subject = %message.subject, %reason, "host event dropped");
                    log.flush(&self.rejections);
                }
            }
        }
    }
}

/// Logs dropped host events at warn, at most every [`REJECTIONS_LOG_EVERY`], with the counts
/// since the last line, so a flood of forged events makes one line per period.
struct RejectionLog {
    logged: RejectionCounts,
    at: Option<Instant>,
}

impl RejectionLog {
    fn new(logged: RejectionCounts) -> RejectionLog {
        RejectionLog { logged, at: None }
    }

    /// Logs what was dropped since the last line, if anything was and the period is over.
    fn flush(&mut self, rejections: &Rejections) {
        if self
            .at
            .is_some_and(|at| at.elapsed() < REJECTIONS_LOG_EVERY)
        {
            return;
        }
        let now = rejections.snapshot();
        let new = now.since(&self.logged);
        if new.total() == 0 {
            return;
        }
        tracing::warn!(
            dropped = %new,
            total = now.total(),
            "host events dropped (unsigned, forged, replayed or invalid; PROTOCOL.md §Events)"
        );
        self.logged = now;
        self.at = Some(Instant::now());
    }
}

/// Rate limit of the "host joined/left" lines: the first `CHANGE_LINES_PER_PERIOD` of each
/// [`REJECTIONS_LOG_EVERY`] at info, the others counted and reported in one line.
struct ChangeLog {
    since: Instant,
    logged: u32,
    suppressed: u64,
}

impl ChangeLog {
    fn new(now: Instant) -> ChangeLog {
        ChangeLog {
            since: now,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether a join or leave at `now` is logged at info; counts it if not.
    fn admit(&mut self, now: Instant) -> bool {
        self.flush(now);
        if self.logged < CHANGE_LINES_PER_PERIOD {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Ends the period if it is over at `now`, reporting the joins and leaves not logged.
    fn flush(&mut self, now: Instant) {
        if now.saturating_duration_since(self.since) < REJECTIONS_LOG_EVERY {
            return;
        }
        if self.suppressed > 0 {
            tracing::info!(
                count = self.suppressed,
                "more hosts joined or left than are logged one by one"
            );
        }
        *self = ChangeLog::new(now);
    }
}

/// `failures` as a node sends them: each `reason` cut to [`MAX_FAILURE_REASON_BYTES`] (on a
/// character boundary, ending with `REASON_CUT_MARKER`), and at most [`MAX_FAILURES_LISTED`]
/// of them; beyond that, one more entry with empty `app`, `component` and `version` and the
/// reason `<n> more failures not listed` (no app is named so: readers that match failures to an
/// app skip it).
pub fn bounded_failures(failures: &[Failure]) -> Vec<Failure> {
    let mut bounded: Vec<Failure> = failures
        .iter()
        .take(MAX_FAILURES_LISTED)
        .map(|f| Failure {
            reason: bounded_reason(&f.reason),
            ..f.clone()
        })
        .collect();
    let left_out = failures.len().saturating_sub(MAX_FAILURES_LISTED);
    if left_out > 0 {
        bounded.push(Failure {
            app: String::new(),
            component: String::new(),
            version: String::new(),
            reason: format!("{left_out} more failures not listed"),
        });
    }
    bounded
}

/// `reason` cut to [`MAX_FAILURE_REASON_BYTES`] with `REASON_CUT_MARKER` if longer.
fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_FAILURE_REASON_BYTES {
        return reason.to_owned();
    }
    let end = reason.floor_char_boundary(MAX_FAILURE_REASON_BYTES - REASON_CUT_MARKER.len());
    format!("{}{REASON_CUT_MARKER}", &reason[..end])
}

/// Signs this node's host events and numbers them: one per node, shared by everything that
/// publishes them, so the sequence grows across all of them.
pub struct Signer {
    key: nkeys::KeyPair,
    last: AtomicU64,
}

impl Signer {
    /// A signer with `key`, the node's key pair ([`identity::load_or_create`]).
    ///
    /// # Errors
    /// `key` is not a server key pair with its seed.
    pub fn new(key: nkeys::KeyPair) -> anyhow::Result<Signer> {
        anyhow::ensure!(
            key.key_pair_type() == nkeys::KeyPairType::Server && key.seed().is_ok(),
            "node key {}: a server key pair with its seed is needed to sign host events",
            key.public_key()
        );
        Ok(Signer {
            key,
            last: AtomicU64::new(0),
        })
    }

    /// The node id: the key's public key.
    pub fn id(&self) -> String {
        self.key.public_key()
    }

    /// The next sequence: `max(last + 1, now in ms since the Unix epoch)`, so it grows within
    /// a run and, with the clock, from one run to the next; if `last` is more than
    /// [`SEQUENCE_WINDOW`] ahead of the clock (the clock jumped forward, then back), every
    /// receiver would refuse it, so the sequence starts again from the clock (with a warning):
    /// a receiver that still holds a higher sequence of this node (accepted while its clock
    /// was within the window of it) drops the events as `stale` until its clock passes it,
    /// at most [`SEQUENCE_WINDOW`], or forgets it within a second once that sequence is
    /// more than the window ahead of its own clock.
    fn next_sequence(&self) -> u64 {
        self.next_sequence_at(unix_ms())
    }

    /// [`Signer::next_sequence`] with the clock at `now` (ms since the Unix epoch).
    fn next_sequence_at(&self, now: u64) -> u64 {
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let ahead = last > now.saturating_add(window_ms());
            let next = if ahead {
                now
            } else {
                now.max(last.saturating_add(1))
            };
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => {
                    if ahead {
                        tracing::warn!(
                            last,
                            now,
                            ahead_ms = last - now,
                            "the host event sequence was more than 60 s ahead of the clock (the \
                             clock stepped back): starting it again from the clock; a node \
                             that accepted a higher sequence drops this node's events as \
                             stale until its own clock passes it (at most 60 s)"
                        );
                    }
                    return next;
                }
                Err(actual) => last = actual,
            }
        }
    }

    /// The payload of host event `event` (one of the `subjects::HOST_*`) carrying `info`, and
    /// its signature (the [`SIGNATURE_HEADER`] value).
    ///
    /// `info.failures` are sent as [`bounded_failures`], so a node with many or long failures
    /// still fits [`MAX_EVENT_BYTES`].
    ///
    /// # Errors
    /// `info` cannot be serialized, is larger than [`MAX_EVENT_BYTES`] even so, or signing
    /// fails.
    fn sign(&self, event: &str, info: &HostInfo) -> anyhow::Result<(Vec<u8>, String)> {
        let mut info = info.clone();
        info.failures = bounded_failures(&info.failures);
        let body = HostEvent {
            info,
            event: event.to_owned(),
            seq: self.next_sequence(),
        };
        let payload = serde_json::to_vec(&body).context("encoding a host event")?;
        anyhow::ensure!(
            payload.len() <= MAX_EVENT_BYTES,
            "the host event is {} bytes, more than the {MAX_EVENT_BYTES} others take in",
            payload.len()
        );
        let signature = identity::sign(&self.key, &payload)?;
        Ok((payload, signature))
    }
}

/// Publishes host events of this node.
pub struct Heartbeat {
    client: async_nats::Client,
    lattice: String,
    signer: Arc<Signer>,
    /// When a failed signing was last logged, and how many failed since without a line.
    sign_errors: Mutex<(Option<Instant>, u64)>,
}

impl Heartbeat {
    /// Events of this node on `client`, for `lattice`, signed by `signer`.
    pub fn new(client: async_nats::Client, lattice: &str, signer: Arc<Signer>) -> Heartbeat {
        Heartbeat {
            client,
            lattice: lattice.to_owned(),
            signer,
            sign_errors: Mutex::new((None, 0)),
        }
    }

    /// Publishes `info` as `event` (one of the `subjects::HOST_*`), signed.
    pub async fn publish(&self, event: &str, info: &HostInfo) {
        let subject = subjects::event(&self.lattice, event);
        let (payload, signature) = match self.signer.sign(event, info) {
            Ok(signed) => signed,
            Err(e) => {
                let mut errors = self.sign_errors.lock().unwrap_or_else(|p| p.into_inner());
                let (logged, unlogged) = &mut *errors;
                if logged.is_some_and(|at| at.elapsed() < SIGN_ERROR_LOG_EVERY) {
                    *unlogged += 1;
                } else {
                    tracing::error!(
                        subject,
                        error = format!("{e:#}"),
                        not_logged_since = *unlogged,
                        "signing a host event failed: the others do not hear from this node \
                         (logged at most once a minute)"
                    );
                    *logged = Some(Instant::now());
                    *unlogged = 0;
                }
                return;
            }
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, signature.as_str());
        // Bounded: while the client is disconnected its command queue fills and a publish
        // waits, and the heartbeat's loop must go round anyway (the systemd watchdog reads its
        // beat; a node cut off from NATS is not a stuck node).
        let publish = self
            .client
            .publish_with_headers(subject.clone(), headers, payload.into());
        let bound = Duration::from_millis(info.heartbeat_interval_ms.max(100)).min(PUBLISH_TIMEOUT);
        match tokio::time::timeout(bound, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(subject, error = %e, "publishing a host event failed"),
            Err(_) => tracing::warn!(
                subject,
                "NATS did not take a host event within {bound:?} (disconnected?); dropped"
            ),
        }
    }

    /// Publishes a heartbeat from `info()` every `interval`, and at once whenever `now` is
    /// notified (the components changed), until `shutdown`.
    pub async fn run<F>(
        self,
        info: F,
        interval: Duration,
        now: Arc<Notify>,
        shutdown: CancellationToken,
    ) where
        F: Fn() -> HostInfo,
    {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = now.notified() => ticker.reset(),
                () = shutdown.cancelled() => return,
            }
            self.publish(subjects::HOST_HEARTBEAT, &info()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats::uplink::UplinkState;

    fn host(id: &str, interval_ms: u64) -> HostInfo {
        HostInfo {
            id: id.into(),
            name: format!("node-{id}"),
            lattice: "default".into(),
            labels: BTreeMap::new(),
            version: "0".into(),
            uptime_ms: 0,
            heartbeat_interval_ms: interval_ms,
            uplink: Uplink::fixed(UplinkState::None, None),
            http_addr: "127.0.0.1:8000".into(),
            components: Vec::new(),
            failures: Vec::new(),
            health: NodeHealth::default(),
            probe: true,
        }
    }

    #[test]
    fn hosts_expire_after_three_missed_heartbeats_and_leave_on_stop() {
        let members = Membership::default();
        members.observe(host("b", 60_000));
        members.observe(host("a", 100));
        members.observe(host("c", 60_000));
        let names: Vec<String> = members.hosts().into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["node-a", "node-b", "node-c"]);
        std::thread::sleep(Duration::from_millis(350));
        members.forget("c");
        let names: Vec<String> = members.hosts().into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["node-b"]);
    }

    /// A node's key and the host it says it is.
    fn node(name: &str) -> (nkeys::KeyPair, HostInfo) {
        let key = nkeys::KeyPair::new_server();
        let mut info = host(&key.public_key(), 1_000);
        info.name = name.into();
        (key, info)
    }

    /// `event` of `info` with sequence `seq`, signed by `key`: (subject, payload, signature).
    fn signed(
        key: &nkeys::KeyPair,
        event: &str,
        info: &HostInfo,
        seq: u64,
    ) -> (String, Vec<u8>, String) {
        let body = HostEvent {
            info: info.clone(),
            event: event.into(),
            seq,
        };
        let payload = serde_json::to_vec(&body).unwrap();
        let signature = identity::sign(key, &payload).unwrap();
        (subjects::event(&info.lattice, event), payload, signature)
    }

    fn receive(
        members: &Membership,
        (subject, payload, signature): &(String, Vec<u8>, String),
        now: u64,
    ) -> Result<Accepted, Rejected> {
        // The monotonic clock moves with `now` when it is ahead of the wall clock.
        let at = Instant::now() + Duration::from_millis(now.saturating_sub(unix_ms()));
        members.receive_at(subject, Some(signature), payload, now, at)
    }

    fn names(members: &Membership) -> Vec<String> {
        members.hosts().into_iter().map(|h| h.name).collect()
    }

    /// The ids and kinds of the probes of `members` due `after` from now, with `room`.
    fn round(members: &Membership, room: usize, after: Duration) -> Vec<(String, probe::Kind)> {
        let round = members.probe_round(room, Instant::now() + after);
        round
            .due
            .into_iter()
            .map(|due| (due.id, due.kind))
            .collect()
    }

    #[test]
    fn a_silent_host_is_forgotten_only_after_two_no_responders_half_an_interval_apart() {
        use probe::Kind;
        let members = Membership::default();
        let (key, info) = node("a");
        let mut old = host("old", 1_000);
        old.probe = false;
        members.observe(old);
        let now = unix_ms();
        let beat = signed(&key, subjects::HOST_HEARTBEAT, &info, now);
        receive(&members, &beat, now).unwrap();
        let id = info.id.clone();
        // A host that does not answer probes is never probed: its heartbeats alone count.
        // One that does is vetted first, however fresh.
        assert_eq!(
            round(&members, 16, Duration::ZERO),
            [(id.clone(), Kind::Vet)]
        );
        assert!(
            round(&members, 16, Duration::from_secs(2)).is_empty(),
            "vetted lately"
        );
        let silent_since = members.state().hosts[&id].at;

        // Not earned: its no-responders forgets nothing (its subject may not reach it from here).
        let t = Instant::now() + Duration::from_millis(1_300);
        assert_eq!(members.probe_gone(&id, silent_since, t), Verdict::Unearned);
        members.probe_answered(&id);
        let due = members.probe_round(16, t).due;
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].kind, Kind::Silent);
        assert_eq!(
            members.probe_gone(&id, due[0].silent_since, t),
            Verdict::First
        );
        assert!(
            round(&members, 16, Duration::from_millis(1_500)).is_empty(),
            "too soon"
        );
        // A heartbeat in between voids the first no-responders.
        let beat = signed(&key, subjects::HOST_HEARTBEAT, &info, now + 1);
        receive(&members, &beat, now + 1).unwrap();
        let t = Instant::now() + Duration::from_millis(2_500);
        assert_eq!(members.probe_gone(&id, silent_since, t), Verdict::Heard);
        let due = members.probe_round(16, t).due;
        assert_eq!(due[0].kind, Kind::Silent, "earned survives a heartbeat");
        assert_eq!(
            members.probe_gone(&id, due[0].silent_since, t),
            Verdict::First
        );
        let confirm = members.probe_round(16, t + Duration::from_millis(500)).due;
        assert_eq!(confirm[0].kind, Kind::Confirm);
        let t = t + Duration::from_millis(500);
        assert_eq!(
            members.probe_gone(&id, confirm[0].silent_since, t),
            Verdict::Forgotten("a".into())
        );
        assert_eq!(names(&members), ["node-old"]);
        // Its last heartbeat replayed does not bring it back; a new one does (to be vetted
        // again).
        assert_eq!(receive(&members, &beat, now + 2), Err(Rejected::Stale));
        assert_eq!(names(&members), ["node-old"]);
        let beat = signed(&key, subjects::HOST_HEARTBEAT, &info, now + 2);
        receive(&members, &beat, now + 2).unwrap();
        assert_eq!(names(&members), ["a", "node-old"]);
    }

    #[test]
    fn probing_is_earned_again_after_a_host_s_probe_subject_went_away() {
        let members = Membership::default();
        let (key, mut info) = node("a");
        let now = unix_ms();
        receive(
            &members,
            &signed(&key, subjects::HOST_HEARTBEAT, &info, now),
            now,
        )
        .unwrap();
        members.probe_answered(&info.id);
        assert!(members.state().hosts[&info.id].marks.earned);
        info.probe = false;
        receive(
            &members,
            &signed(&key, subjects::HOST_HEARTBEAT, &info, now + 1),
            now + 1,
        )
        .unwrap();
        info.probe = true;
        receive(
            &members,
            &signed(&key, subjects::HOST_HEARTBEAT, &info, now + 2),
            now + 2,
        )
        .unwrap();
        assert!(!members.state().hosts[&info.id].marks.earned);
        members.probe_answered(&info.id);
        members.state().hosts.get_mut(&info.id).unwrap().marks.gone = Some(Instant::now());
        members.clear_gone(Some(&[info.id.clone()]));
        assert!(members.state().hosts[&info.id].marks.gone.is_none());
    }

    #[test]
    fn a_round_sends_at_most_its_room_marking_only_those_and_none_while_many_are_silent() {
        use probe::Kind;
        let members = Membership::default();
        for name in ["a", "b", "c"] {
            members.observe(host(name, 1_000));
        }
        // Room for two: the third is left unmarked, due at the next tick.
        assert_eq!(round(&members, 2, Duration::ZERO).len(), 2);
        assert_eq!(round(&members, 16, Duration::ZERO).len(), 1);
        assert!(round(&members, 16, Duration::ZERO).is_empty());

        for name in ["a", "b", "c"] {
            members.probe_answered(name);
        }
        // Two silent hosts are probed, second probes first; three (more than a few) are not.
        let after = Duration::from_millis(1_300);
        members.state().hosts.get_mut("c").unwrap().at += after;
        let due = members.probe_round(16, Instant::now() + after);
        assert_eq!((due.hosts, due.silent, due.due.len()), (3, 2, 2));
        members.state().hosts.get_mut("a").unwrap().marks.gone = Some(Instant::now());
        members.state().hosts.get_mut("c").unwrap().at -= after;
        let due = members.probe_round(16, Instant::now() + Duration::from_secs(3));
        assert_eq!(due.silent, 3);
        assert!(due.due.is_empty());
        let d = Duration::from_millis(2_400);
        members.state().hosts.get_mut("b").unwrap().at += d;
        let kinds = round(&members, 16, d);
        assert_eq!(
            kinds.first().map(|(id, kind)| (id.as_str(), *kind)),
            Some(("a", Kind::Confirm))
        );
    }

    #[test]
    fn a_signed_event_is_accepted_once_and_counted_when_replayed() {
        let members = Membership::default();
        let (key, info) = node("a");
        let now = unix_ms();
        let beat = signed(&key, subjects::HOST_HEARTBEAT, &info, now);
        assert_eq!(receive(&members, &beat, now), Ok(Accepted::Heartbeat));
        assert_eq!(names(&members), ["a"]);
        assert_eq!(receive(&members, &beat, now + 10), Err(Rejected::Stale));
        let older = signed(&key, subjects::HOST_HEARTBEAT, &info, now - 1);
        assert_eq!(receive(&members, &older, now + 10), Err(Rejected::Stale));
        let next = signed(&key, subjects::HOST_HEARTBEAT, &info, now + 1);
        assert_eq!(receive(&members, &next, now + 10), Ok(Accepted::Heartbeat));
        let counts = members.rejections().snapshot();
        assert_eq!(counts.stale, 2);
        assert_eq!(counts.total(), 2);
        assert_eq!(counts.to_string(), "stale=2");
    }

    #[test]
    fn forged_events_change_nothing_and_are_counted_by_reason() {
        let members = Membership::default();
        let (key, info) = node("a");
        let now = unix_ms();
        let started = signed(&key, subjects::HOST_STARTED, &info, now);
        assert_eq!(
            receive(&members, &started, now),
            Ok(Accepted::Started(info.clone()))
        );
        let (intruder, _) = node("intruder");

        // A host_stopped of the live node: unsigned, signed by another key, or with the
        // signature of its own heartbeat.
        let (subject, stop, _) = signed(&key, subjects::HOST_STOPPED, &info, now + 1);
        assert_eq!(
            members.receive(&subject, None, &stop, now),
            Err(Rejected::Unsigned)
        );
        let resigned = signed(&intruder, subjects::HOST_STOPPED, &info, now + 1);
        assert_eq!(
            receive(&members, &resigned, now),
            Err(Rejected::BadSignature)
        );
        let beat = signed(&key, subjects::HOST_HEARTBEAT, &info, now + 2);
        assert_eq!(
            members.receive(&subject, Some(&beat.2), &stop, now),
            Err(Rejected::BadSignature)
        );
        // A real heartbeat published as host_stopped, or into another lattice.
        assert_eq!(
            members.receive(&subject, Some(&beat.2), &beat.1, now),
            Err(Rejected::WrongSubject)
        );
        let elsewhere = subjects::event("other", subjects::HOST_HEARTBEAT);
        assert_eq!(
            members.receive(&elsewhere, Some(&beat.2), &beat.1, now),
            Err(Rejected::WrongSubject)
        );
        // Signed, but no host event.
        let status = signed(&key, "app_status", &info, now + 3);
        assert_eq!(receive(&members, &status, now), Err(Rejected::WrongSubject));
        // A heartbeat that would never expire, even signed by the node's own key.
        let mut forever = info.clone();
        forever.heartbeat_interval_ms = 60_001;
        let forever = signed(&key, subjects::HOST_HEARTBEAT, &forever, now + 3);
        assert_eq!(receive(&members, &forever, now), Err(Rejected::BadInterval));
        let mut too_fast = info.clone();
        too_fast.heartbeat_interval_ms = 999;
        let too_fast = signed(&key, subjects::HOST_HEARTBEAT, &too_fast, now + 3);
        assert_eq!(
            receive(&members, &too_fast, now),
            Err(Rejected::BadInterval)
        );
        // An invented id: not a key, or a key whose holder did not sign.
        let mut invented = info.clone();
        invented.id = "Ninvented".into();
        let invented = signed(&key, subjects::HOST_HEARTBEAT, &invented, now + 3);
        assert_eq!(receive(&members, &invented, now), Err(Rejected::BadId));
        let (_, mut other) = node("ghost");
        other.name = "ghost".into();
        let ghost = signed(&intruder, subjects::HOST_HEARTBEAT, &other, now + 3);
        assert_eq!(receive(&members, &ghost, now), Err(Rejected::BadSignature));
        // A changed body under a real signature.
        let tampered = String::from_utf8(beat.1.clone())
            .unwrap()
            .replace(r#""name":"a""#, r#""name":"b""#);
        assert_ne!(tampered.as_bytes(), beat.1);
        let tampered = tampered.into_bytes();
        assert_eq!(
            members.receive(
                &elsewhere.replace("other", "default"),
                Some(&beat.2),
                &tampered,
                now
            ),
            Err(Rejected::BadSignature)
        );
        assert_eq!(
            members.receive(&subject, Some(&beat.2), b"{not json", now),
            Err(Rejected::Malformed)
        );
        // A node from before signed membership: its bare HostInfo, without a signature.
        let bare = serde_json::to_vec(&info).unwrap();
        let heartbeats = subjects::event("default", subjects::HOST_HEARTBEAT);
        assert_eq!(
            members.receive(&heartbeats, None, &bare, now),
            Err(Rejected::Unsigned)
        );
        // Too large to be parsed at all, signed or not.
        let mut huge = beat.1.clone();
        huge.resize(MAX_EVENT_BYTES + 1, b' ');
        assert_eq!(
            members.receive(&heartbeats, Some(&beat.2), &huge, now),
            Err(Rejected::Oversized)
        );

        assert_eq!(names(&members), ["a"]);
        let hosts = members.hosts();
        assert_eq!(hosts[0].heartbeat_interval_ms, 1_000);
        let counts = members.rejections().snapshot();
        assert_eq!(
            counts,
            RejectionCounts {
                oversized: 1,
                unsigned: 2,
                malformed: 1,
                wrong_subject: 3,
                bad_interval: 2,
                bad_id: 1,
                bad_signature: 4,
                ..RejectionCounts::default()
            }
        );
        assert_eq!(
            counts.to_string(),
            "oversized=1 unsigned=2 malformed=1 wrong_subject=3 bad_interval=2 bad_id=1 \
             bad_signature=4"
        );
        // The real node's own events still go through.
        assert_eq!(receive(&members, &beat, now), Ok(Accepted::Heartbeat));
    }

    #[test]
    fn a_replay_outside_the_window_is_refused_even_by_a_fresh_receiver() {
        let window = SEQUENCE_WINDOW.as_millis() as u64;
        let (key, info) = node("a");
        let now = unix_ms();
        let old = signed(&key, subjects::HOST_HEARTBEAT, &info, now - window - 1);
        let skewed = signed(&key, subjects::HOST_HEARTBEAT, &info, now - window + 1_000);
        let future = signed(&key, subjects::HOST_HEARTBEAT, &info, now + window + 1);
        let fresh = Membership::default();
        assert_eq!(receive(&fresh, &old, now), Err(Rejected::OutOfWindow));
        assert_eq!(receive(&fresh, &future, now), Err(Rejected::OutOfWindow));
        assert!(fresh.hosts().is_empty());
        assert_eq!(receive(&fresh, &skewed, now), Ok(Accepted::Heartbeat));
        let counts = fresh.rejections().snapshot();
        assert_eq!((counts.out_of_window, counts.stale), (2, 0));
        assert_eq!(
            fresh.out_of_window_logged.lock().unwrap().1.len(),
            1,
            "logged once for the id"
        );
    }

    #[test]
    fn a_stopped_host_stays_gone_under_replays_and_is_back_when_it_restarts() {
        let members = Membership::default();
        let (key, info) = node("a");
        let signer = Signer::new(key.clone()).unwrap();
        let (payload, signature) = signer.sign(subjects::HOST_HEARTBEAT, &info).unwrap();
        let beat = (
            subjects::event("default", subjects::HOST_HEARTBEAT),
            payload,
            signature,
        );
        let now = unix_ms();
        assert_eq!(receive(&members, &beat, now), Ok(Accepted::Heartbeat));
        let (payload, signature) = signer.sign(subjects::HOST_STOPPED, &info).unwrap();
        let stop = (
            subjects::event("default", subjects::HOST_STOPPED),
            payload,
            signature,
        );
        assert_eq!(
            receive(&members, &stop, now),
            Ok(Accepted::Stopped(info.clone()))
        );
        assert!(members.hosts().is_empty());
        assert_eq!(receive(&members, &beat, now), Err(Rejected::Stale));
        assert!(members.hosts().is_empty());

        // The same key in a new process: a new signer, whose sequence starts at the clock.
        std::thread::sleep(Duration::from_millis(5));
        let restarted = Signer::new(key).unwrap();
        let (payload, signature) = restarted.sign(subjects::HOST_STARTED, &info).unwrap();
        let started = (
            subjects::event("default", subjects::HOST_STARTED),
            payload,
            signature,
        );
        assert_eq!(
            receive(&members, &started, unix_ms()),
            Ok(Accepted::Started(info))
        );
        assert_eq!(names(&members), ["a"]);
    }

    #[test]
    fn sequences_grow_and_are_forgotten_only_outside_the_window() {
        let (key, info) = node("a");
        let signer = Signer::new(key.clone()).unwrap();
        let before = unix_ms();
        let seqs: Vec<u64> = (0..1_000).map(|_| signer.next_sequence()).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        assert!(seqs[0] >= before);
        assert!(Signer::new(nkeys::KeyPair::new_user()).is_err());
        let public_only = nkeys::KeyPair::from_public_key(&key.public_key()).unwrap();
        assert!(Signer::new(public_only).is_err());

        let members = Membership::default();
        let window = SEQUENCE_WINDOW.as_millis() as u64;
        let now = unix_ms();
        let beat = signed(&key, subjects::HOST_HEARTBEAT, &info, now);
        assert_eq!(receive(&members, &beat, now), Ok(Accepted::Heartbeat));
        let (other, other_info) = node("b");
        let later = now + window + 1;
        let theirs = signed(&other, subjects::HOST_HEARTBEAT, &other_info, later);
        assert_eq!(receive(&members, &theirs, later), Ok(Accepted::Heartbeat));
        let state = members.state();
        assert!(!state.sequences.contains_key(&info.id));
        assert!(state.sequences.contains_key(&other_info.id));
        drop(state);
        // Forgotten, yet refused: the window keeps it out.
        assert_eq!(receive(&members, &beat, later), Err(Rejected::OutOfWindow));
    }

    #[test]
    fn sequences_are_pruned_at_most_once_a_second() {
        let members = Membership::default();
        let window = SEQUENCE_WINDOW.as_millis() as u64;
        let now = unix_ms();
        let (key, info) = node("a");
        let beat = signed(&key, subjects::HOST_HEARTBEAT, &info, now);
        assert_eq!(receive(&members, &beat, now), Ok(Accepted::Heartbeat));
        // Out of the window now, but the last pruning was less than a second ago.
        let later = now + window + 1;
        let start = Instant::now();
        members.state().pruned_at = Some(start);
        let (other, other_info) = node("b");
        let theirs = signed(&other, subjects::HOST_HEARTBEAT, &other_info, later);
        let at = start + Duration::from_millis(990);
        let got = members.receive_at(&theirs.0, Some(&theirs.2), &theirs.1, later, at);
        assert_eq!(got, Ok(Accepted::Heartbeat));
        assert!(members.state().sequences.contains_key(&info.id));
        let again = signed(&other, subjects::HOST_HEARTBEAT, &other_info, later + 1);
        let at = start + PRUNE_EVERY;
        let got = members.receive_at(&again.0, Some(&again.2), &again.1, later + 1, at);
        assert_eq!(got, Ok(Accepted::Heartbeat));
        assert!(!members.state().sequences.contains_key(&info.id));
    }

    #[test]
    fn a_sequence_far_ahead_of_a_receiver_whose_clock_stepped_back_is_forgotten() {
        let members = Membership::default();
        let hour = 3_600_000;
        let now = unix_ms();
        let start = Instant::now();
        let (key, info) = node("a");
        // The receiver's clock (and the sender's) was an hour ahead: accepted.
        let ahead = signed(&key, subjects::HOST_HEARTBEAT, &info, now + hour);
        let got = members.receive_at(&ahead.0, Some(&ahead.2), &ahead.1, now + hour, start);
        assert_eq!(got, Ok(Accepted::Heartbeat));
        // Both clocks stepped back; the sender started its sequence again from its clock.
        let back = signed(&key, subjects::HOST_HEARTBEAT, &info, now + 5);
        let at = start + Duration::from_millis(500);
        let got = members.receive_at(&back.0, Some(&back.2), &back.1, now + 5, at);
        assert_eq!(got, Err(Rejected::Stale));
        // A second later (monotonic), though the wall clock is an hour behind the last
        // pruning, the sequence far ahead of it is forgotten and the sender accepted again.
        let back = signed(&key, subjects::HOST_HEARTBEAT, &info, now + 6);
        let at = start + PRUNE_EVERY;
        let got = members.receive_at(&back.0, Some(&back.2), &back.1, now + 6, at);
        assert_eq!(got, Ok(Accepted::Heartbeat));
        assert_eq!(members.state().sequences.get(&info.id), Some(&(now + 6)));
        // A sequence up to the window ahead is kept.
        let (other, other_info) = node("b");
        let window = SEQUENCE_WINDOW.as_millis() as u64;
        let edge = signed(&other, subjects::HOST_HEARTBEAT, &other_info, now + window);
        let at = start + PRUNE_EVERY * 2;
        let got = members.receive_at(&edge.0, Some(&edge.2), &edge.1, now, at);
        assert_eq!(got, Ok(Accepted::Heartbeat));
        let at = start + PRUNE_EVERY * 3;
        members.state().prune(now, at);
        assert!(members.state().sequences.contains_key(&other_info.id));
    }

    #[test]
    fn out_of_window_ids_are_logged_again_after_a_while() {
        let members = Membership::default();
        let start = Instant::now();
        let now = unix_ms();
        for i in 0..OUT_OF_WINDOW_LOGGED {
            assert!(members.log_out_of_window(&format!("forged-{i}"), 0, now, start));
        }
        assert!(!members.log_out_of_window("real", 0, now, start));
        assert!(!members.log_out_of_window("forged-0", 0, now, start));
        let later = start + REJECTIONS_LOG_EVERY;
        assert!(members.log_out_of_window("real", 0, now, later));
        assert!(!members.log_out_of_window("real", 0, now, later));
        assert!(members.log_out_of_window("forged-0", 0, now, later));
    }

    #[test]
    fn failures_are_bounded_in_number_and_length() {
        let failure = |i: usize, reason: String| Failure {
            app: format!("app-{i}"),
            component: "c".into(),
            version: "v1".into(),
            reason,
        };
        // A reason of 3-byte characters is cut on a character boundary, with the marker.
        let long = "é€".repeat(1_000);
        let few = bounded_failures(&[failure(0, long.clone()), failure(1, "short".into())]);
        assert_eq!(few.len(), 2);
        assert!(few[0].reason.len() <= MAX_FAILURE_REASON_BYTES);
        assert!(few[0].reason.ends_with(REASON_CUT_MARKER));
        let kept = few[0].reason.trim_end_matches(REASON_CUT_MARKER);
        assert!(long.starts_with(kept) && kept.len() > MAX_FAILURE_REASON_BYTES - 16);
        assert_eq!(few[1], failure(1, "short".into()));

        let many: Vec<Failure> = (0..1_000)
            .map(|i| failure(i, "x".repeat(100_000)))
            .collect();
        let bounded = bounded_failures(&many);
        assert_eq!(bounded.len(), MAX_FAILURES_LISTED + 1);
        assert_eq!(bounded[MAX_FAILURES_LISTED - 1].app, "app-99");
        let last = &bounded[MAX_FAILURES_LISTED];
        assert_eq!((last.app.as_str(), last.component.as_str()), ("", ""));
        assert_eq!(last.reason, "900 more failures not listed");
        assert_eq!(bounded_failures(&many[..MAX_FAILURES_LISTED]).len(), 100);

        // A node with 1,000 failures of 100 KB each still sends its heartbeat, readable as a
        // HostInfo whose failures are the bounded ones.
        let (key, mut info) = node("a");
        info.failures = many;
        let signer = Signer::new(key).unwrap();
        let (payload, _) = signer.sign(subjects::HOST_HEARTBEAT, &info).unwrap();
        assert!(payload.len() <= MAX_EVENT_BYTES, "{} bytes", payload.len());
        let back: HostInfo = serde_json::from_slice(&payload).unwrap();
        assert_eq!(back.failures, bounded);
    }

    #[test]
    fn a_replayed_sequence_is_refused_before_its_signature_is_checked() {
        let members = Membership::default();
        let (key, info) = node("a");
        let (intruder, _) = node("intruder");
        let now = unix_ms();
        let beat = signed(&key, subjects::HOST_HEARTBEAT, &info, now);
        assert_eq!(receive(&members, &beat, now), Ok(Accepted::Heartbeat));
        // Forged, but its sequence is no newer: refused as stale, no signature checked.
        let forged = signed(&intruder, subjects::HOST_STOPPED, &info, now);
        assert_eq!(receive(&members, &forged, now), Err(Rejected::Stale));
        let forged = signed(&intruder, subjects::HOST_STOPPED, &info, now + 1);
        assert_eq!(receive(&members, &forged, now), Err(Rejected::BadSignature));
        assert_eq!(names(&members), ["a"]);
    }

    #[test]
    fn new_ids_beyond_the_host_limit_are_refused() {
        let members = Membership::with_max_hosts(2);
        let now = unix_ms();
        let (a, b, c) = (node("a"), node("b"), node("c"));
        for (key, info) in [&a, &b] {
            let beat = signed(key, subjects::HOST_HEARTBEAT, info, now);
            assert_eq!(receive(&members, &beat, now), Ok(Accepted::Heartbeat));
        }
        let beat = signed(&c.0, subjects::HOST_HEARTBEAT, &c.1, now);
        assert_eq!(receive(&members, &beat, now), Err(Rejected::TooManyHosts));
        // Known ids go on; a host that stopped still holds its place while its sequence is
        // in the window (so its events cannot be replayed), and frees it after.
        let beat = signed(&a.0, subjects::HOST_HEARTBEAT, &a.1, now + 1);
        assert_eq!(receive(&members, &beat, now), Ok(Accepted::Heartbeat));
        let stop = signed(&b.0, subjects::HOST_STOPPED, &b.1, now + 1);
        assert_eq!(
            receive(&members, &stop, now),
            Ok(Accepted::Stopped(b.1.clone()))
        );
        let beat = signed(&c.0, subjects::HOST_HEARTBEAT, &c.1, now + 2);
        assert_eq!(receive(&members, &beat, now), Err(Rejected::TooManyHosts));
        let later = now + SEQUENCE_WINDOW.as_millis() as u64 + 10;
        let beat = signed(&c.0, subjects::HOST_HEARTBEAT, &c.1, later);
        assert_eq!(receive(&members, &beat, later), Ok(Accepted::Heartbeat));
        assert_eq!(names(&members), ["a", "c"]);
        assert_eq!(members.rejections().snapshot().too_many_hosts, 2);
    }

    #[test]
    fn a_sequence_far_ahead_of_the_clock_starts_again_from_the_clock() {
        let (key, _) = node("a");
        let signer = Signer::new(key).unwrap();
        let window = SEQUENCE_WINDOW.as_millis() as u64;
        let now = unix_ms();
        // The clock was an hour ahead, then stepped back.
        assert_eq!(signer.next_sequence_at(now + 3_600_000), now + 3_600_000);
        assert_eq!(signer.next_sequence_at(now), now);
        assert_eq!(signer.next_sequence_at(now), now + 1);
        // Within the window it keeps growing from the last.
        assert_eq!(signer.next_sequence_at(now + window), now + window);
        assert_eq!(signer.next_sequence_at(now + 5), now + window + 1);
    }

    #[test]
    fn joins_and_leaves_are_logged_one_by_one_only_up_to_a_rate() {
        let start = Instant::now();
        let mut log = ChangeLog::new(start);
        let admitted = (0..100).filter(|_| log.admit(start)).count();
        assert_eq!(admitted, CHANGE_LINES_PER_PERIOD as usize);
        assert_eq!(log.suppressed, 100 - u64::from(CHANGE_LINES_PER_PERIOD));
        assert!(log.admit(start + REJECTIONS_LOG_EVERY));
        assert_eq!(log.suppressed, 0);
    }

    #[test]
    fn a_large_host_fits_the_event_limit() {
        let (key, mut info) = node("a");
        let name = |kind: &str, i: usize| format!("{kind}-{i:0>28}");
        info.components = (0..1_000)
            .map(|i| ComponentReplicas {
                app: name("app", i),
                component: name("component", i),
                replicas: 100,
                digest: "0".repeat(64),
                version: name("v", i),
            })
            .collect();
        info.failures = (0..100)
            .map(|i| Failure {
                app: name("app", i),
                component: name("component", i),
                version: name("v", i),
                reason: "x".repeat(300),
            })
            .collect();
        info.labels = (0..50)
            .map(|i| (name("key", i), name("value", i)))
            .collect();
        let signer = Signer::new(key).unwrap();
        let (payload, _) = signer.sign(subjects::HOST_HEARTBEAT, &info).unwrap();
        assert!(
            payload.len() <= MAX_EVENT_BYTES,
            "{} bytes > {MAX_EVENT_BYTES}",
            payload.len()
        );
        assert!(payload.len() > 250_000, "{} bytes", payload.len());
        let more = info.components.clone();
        info.components.extend(more.clone());
        info.components.extend(more);
        assert!(signer.sign(subjects::HOST_HEARTBEAT, &info).is_err());
    }

    #[test]
    fn the_signed_body_is_host_info_with_event_and_seq() {
        let (key, info) = node("a");
        let signer = Signer::new(key.clone()).unwrap();
        let (payload, signature) = signer.sign(subjects::HOST_HEARTBEAT, &info).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(json["id"], key.public_key());
        assert_eq!(json["event"], "host_heartbeat");
        assert!(json["seq"].as_u64().unwrap() > 0);
        assert_eq!(json["heartbeat_interval_ms"], 1_000);
        let back: HostInfo = serde_json::from_slice(&payload).unwrap();
        assert_eq!(back, info);
        assert_eq!(
            identity::verify(&key.public_key(), &payload, &signature),
            Ok(())
        );
    }
}
