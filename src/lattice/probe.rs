//! Probes: how a node learns within two heartbeats or so, not three, that a silent host is gone.
//! Every node answers requests on its probe subject (`lattice.<L>.node.v1.<id>.probe`, an
//! empty reply). NATS answers a request that nobody subscribes to with a no-responders status
//! at once: the host's connection is gone (its process died and its nats-server dropped its
//! subscriptions, or its leaf connection to the hub dropped). A host is forgotten, as
//! `host_stopped` would, only when all of these hold:
//!
//! - it has *earned* it: it once answered a probe from this node (a vetting probe, sent once
//!   to every host whose events say `probe`, again every [`VET_AGAIN`] intervals until it
//!   answers), so its probe subject does reach it from here (NATS permissions narrower than
//!   `lattice.<L>.>` give no-responders for a live host: nats-server PR #3585);
//! - it has been silent for [`PROBE_AFTER`] of its heartbeat interval, and two probes at least
//!   half an interval apart both came back no-responders, with no event of it in between (one
//!   status can come from a short outage or its membership task restarting);
//! - this node's own path to the lattice was whole all along ([`Reach`]): its client connected
//!   and its leaf uplink (if any) up for [`SETTLED`], both probes sent and answered in the same
//!   epoch of that path, and the host heard from since that epoch began (heartbeats missed
//!   while this node was cut off prove nothing, and after a hub or cluster restart the others'
//!   interest comes back one by one);
//! - few hosts came back gone together: more than [`few`] within one interval is a fault of
//!   the path, not of hosts, and those results are dropped (the correlation guard).
//!
//! Otherwise, and always for an answer or a timeout (a stopped process keeps its
//! subscriptions), a host is forgotten after
//! [`MISSED_HEARTBEATS`](super::membership::MISSED_HEARTBEATS) as before. An answer is never
//! evidence of life (it is not signed): only heartbeats keep a host, so a forged or replayed
//! answer cannot keep a killed node alive. Each node sends at most [`PROBES_PER_ROUND`]
//! probes a second, and none while more than [`few`] hosts are silent at once.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::lattice::membership::Membership;
use crate::nats::subjects;
use crate::nats::uplink::{Uplink, UplinkState};

/// A host is probed once it has been silent for this fraction of its own heartbeat interval
/// (1.25 s at the default 1 s): later than a heartbeat's usual delay, well before the three
/// missed intervals that expire it.
pub const PROBE_AFTER: f64 = 1.25;

/// The second probe of a silent host goes out this fraction of its interval after the first
/// one's no-responders (0.5 s at the default 1 s).
pub const CONFIRM_AFTER: f64 = 0.5;

/// A host that has not answered a vetting probe is vetted again after this many of its
/// intervals.
pub const VET_AGAIN: u32 = 10;

/// How often silent hosts are looked for (and expired hosts forgotten, waking the reconciler).
const PROBE_TICK: Duration = Duration::from_millis(100);

/// How long a probe waits for NATS: a no-responders status comes back within a round trip.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long this node's client connection (and its leaf uplink, if any) must have been up
/// before a no-responders counts.
pub const SETTLED: Duration = Duration::from_secs(1);

/// Most probes a node sends per [`ROUND`] (the shortest heartbeat interval): a lattice of
/// N nodes sends at most 16 × N probes a second, however many hosts are late.
pub const PROBES_PER_ROUND: usize = 16;

/// The period of [`PROBES_PER_ROUND`], each one stretched by up to a tenth at random so the
/// nodes' rounds drift apart.
const ROUND: Duration = Duration::from_secs(1);

/// Most probes in flight.
const MAX_PROBES_IN_FLIGHT: usize = 256;

/// Most answers to others' probes being handed to the client; a request beyond them is not
/// answered (its prober times out, which proves nothing).
const MAX_ANSWERS_IN_FLIGHT: usize = 64;

/// The reply subjects answered: the inboxes of the nodes' clients (async-nats' default prefix,
/// which `nats::connect` keeps).
const INBOX_PREFIX: &str = "_INBOX.";

/// More than this many of `hosts` (the hosts that answer probes) gone or silent together is a
/// fault of this node's path, not of the hosts: max(2, 10 %).
pub fn few(hosts: usize) -> usize {
    (hosts / 10).max(2)
}

/// Whether this node's probe subscription is up (subscribed and flushed), for the `probe`
/// field of its host events: false before [`Probes::run`] subscribed and after it ended.
/// Cloneable; all clones share one flag.
#[derive(Debug, Clone, Default)]
pub struct ProbeState(Arc<AtomicBool>);

impl ProbeState {
    /// True while this node answers its probe subject.
    pub fn answering(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }
}

/// Clears a [`ProbeState`] when [`Probes::run`] ends, however it ends.
struct Answering(ProbeState);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

/// What this node learned of one host by its probes; kept in the membership with the host.
#[derive(Debug, Clone, Copy, Default)]
pub struct Marks {
    /// When it was last sent a probe.
    pub sent: Option<Instant>,
    /// It answered a probe since its events last said `probe: true` after not saying it.
    pub earned: bool,
    /// When its first no-responders since its last event came back.
    pub gone: Option<Instant>,
}

/// Why a host is probed, in the order of their claim on a round's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The second probe of a silent host whose first found no responders.
    Confirm,
    /// The first probe of a silent host.
    Silent,
    /// Whether the host answers probes from here at all ([`Marks::earned`]).
    Vet,
}

/// Whether a host with `marks`, whose events say `probe`, with heartbeat `interval`, silent
/// for `silent`, is due a probe at `now`, and of which kind.
pub fn due(
    marks: &Marks,
    probe: bool,
    interval: Duration,
    silent: Duration,
    now: Instant,
) -> Option<Kind> {
    if !probe {
        return None;
    }
    let since = |at: Option<Instant>| at.map(|at| now.saturating_duration_since(at));
    let sent = since(marks.sent);
    let sent_before = |gap: Duration| sent.is_none_or(|ago| ago >= gap);
    if !marks.earned {
        return sent_before(interval * VET_AGAIN).then_some(Kind::Vet);
    }
    if silent < interval.mul_f64(PROBE_AFTER) {
        return None;
    }
    let half = interval.mul_f64(CONFIRM_AFTER);
    match since(marks.gone) {
        Some(ago) => (ago >= half && sent_before(half)).then_some(Kind::Confirm),
        None => sent_before(interval).then_some(Kind::Silent),
    }
}

/// A probe to send: which host, why, and the instant of its last event then.
#[derive(Debug, Clone)]
pub struct Due {
    /// The host's id.
    pub id: String,
    /// Why.
    pub kind: Kind,
    /// When its last event was heard (monotonic), for [`Membership::probe_gone`].
    pub silent_since: Instant,
    /// Its heartbeat interval.
    pub interval: Duration,
}

/// One tick's probes ([`Membership::probe_round`]).
#[derive(Debug, Default)]
pub struct Round {
    /// The probes to send, at most the room asked for, marked sent.
    pub due: Vec<Due>,
    /// Hosts whose events say `probe`.
    pub hosts: usize,
    /// Those of them silent for [`PROBE_AFTER`] of their interval.
    pub silent: usize,
}

/// What a no-responders did to a host ([`Membership::probe_gone`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Heard from since the probe went out, or unknown: nothing.
    Heard,
    /// It never answered a probe from here: nothing.
    Unearned,
    /// Its first no-responders: recorded, confirmed by the next.
    First,
    /// Its second: forgotten (the host's name).
    Forgotten(String),
}

/// This node's side of the probes: it answers its own probe subject and probes silent hosts.
pub struct Probes {
    client: async_nats::Client,
    lattice: String,
    /// This node's id.
    me: String,
    uplink: watch::Receiver<Uplink>,
    state: ProbeState,
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// No-responders: nothing subscribes to the host's probe subject.
    Gone,
    /// An answer: its probe subject reaches it from here.
    Answered,
    /// A timeout or another error: nothing to conclude.
    Unknown,
}

impl Probes {
    /// Probes for node `me` of `lattice` on `client`; `uplink` is this node's uplink.
    pub fn new(
        client: async_nats::Client,
        lattice: &str,
        me: &str,
        uplink: watch::Receiver<Uplink>,
    ) -> Probes {
        Probes {
            client,
            lattice: lattice.to_owned(),
            me: me.to_owned(),
            uplink,
            state: ProbeState::default(),
        }
    }

    /// These probes with `state` set while this node answers its probe subject (for its host
    /// events' `probe`), in place of a flag of their own.
    pub fn reporting(mut self, state: ProbeState) -> Probes {
        self.state = state;
        self
    }

    /// Answers this node's probes and probes the hosts of `membership` until `shutdown`;
    /// forgets the hosts found gone (logged at info) and expires silent ones every
    /// [`PROBE_TICK`].
    ///
    /// # Errors
    /// The probe subject cannot be subscribed to, or its subscription ended before `shutdown`.
    pub async fn run(
        mut self,
        membership: &Membership,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let subject = subjects::probe(&self.lattice, &self.me);
        let _answering = Answering(self.state.clone());
        let mut asked = self
            .client
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("subscribing to {subject}"))?;
        self.client
            .flush()
            .await
            .with_context(|| format!("flushing the subscription to {subject}"))?;
        self.state.set(true);
        let mut tick = tokio::time::interval(PROBE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let uplink = self.uplink.borrow_and_update().state;
        let mut reach = Reach::new(uplink, self.link());
        let mut budget = Budget::new(Instant::now());
        let mut guard = Guard::default();
        let mut in_flight = FuturesUnordered::new();
        let mut answers = FuturesUnordered::new();
        loop {
            tokio::select! {
                message = asked.next() => {
                    let Some(message) = message else {
                        anyhow::bail!("the probe subscription ended");
                    };
                    // Best effort, and never awaited here: a lost answer only makes the
                    // prober wait for heartbeats.
                    if let Some(reply) = message.reply
                        && reply.starts_with(INBOX_PREFIX)
                        && answers.len() < MAX_ANSWERS_IN_FLIGHT
                    {
                        let client = self.client.clone();
                        answers.push(async move { client.publish(reply, Bytes::new()).await });
                    }
                }
                Some(_) = answers.next(), if !answers.is_empty() => {}
                _ = tick.tick() => {
                    membership.expire();
                    if self.update(&mut reach) {
                        membership.clear_gone(None);
                    }
                    if !reach.trusted() {
                        continue;
                    }
                    let now = Instant::now();
                    let room = budget
                        .room(now)
                        .min(MAX_PROBES_IN_FLIGHT.saturating_sub(in_flight.len()));
                    let round = membership.probe_round(room, now);
                    for due in round.due {
                        budget.spend();
                        let subject = subjects::probe(&self.lattice, &due.id);
                        let (client, epoch) = (self.client.clone(), reach.epoch);
                        in_flight.push(async move {
                            let outcome = probe(&client, subject).await;
                            (due, epoch, outcome)
                        });
                    }
                    guard.hosts = round.hosts;
                }
                Some((due, epoch, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    self.update(&mut reach);
                    if epoch != reach.epoch || !reach.trusted() {
                        continue;
                    }
                    match outcome {
                        Outcome::Unknown => {}
                        Outcome::Answered => {
                            if let Some(name) = membership.probe_answered(&due.id) {
                                tracing::debug!(id = due.id, name, "host answers probes");
                            }
                        }
                        // Missed heartbeats from before this epoch prove nothing.
                        Outcome::Gone if due.silent_since < reach.since => {}
                        Outcome::Gone if due.kind == Kind::Vet => {}
                        Outcome::Gone => {
                            if let Some(suspects) = guard.gone(&due, Instant::now()) {
                                tracing::warn!(
                                    hosts = suspects.len(),
                                    "many hosts found gone by probes within one interval: \
                                     taken as a fault of this node's path, not believed (they \
                                     expire by missed heartbeats)"
                                );
                                membership.clear_gone(Some(&suspects));
                                continue;
                            }
                            if let Verdict::Forgotten(name) =
                                membership.probe_gone(&due.id, due.silent_since, Instant::now())
                            {
                                tracing::info!(
                                    id = due.id,
                                    name,
                                    "host left the lattice: silent, and twice nothing \
                                     subscribed to its probe subject (its NATS connection is \
                                     gone)"
                                );
                            }
                        }
                    }
                }
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }

    /// This node's client connection: whether it is connected, and how many times it has
    /// connected (a reconnect between two looks changes it).
    fn link(&self) -> (bool, u64) {
        (
            self.client.connection_state() == async_nats::connection::State::Connected,
            self.client.statistics().connects.load(Ordering::Relaxed),
        )
    }

    /// Takes in changes of the uplink and of the client's connection; true when the epoch
    /// moved on.
    fn update(&mut self, reach: &mut Reach) -> bool {
        let uplink = self
            .uplink
            .has_changed()
            .unwrap_or(false)
            .then(|| self.uplink.borrow_and_update().state);
        reach.update(uplink, self.link())
    }
}

/// Sends one probe to `subject`.
async fn probe(client: &async_nats::Client, subject: String) -> Outcome {
    match tokio::time::timeout(PROBE_TIMEOUT, client.request(subject, Bytes::new())).await {
        Ok(Ok(_)) => Outcome::Answered,
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Outcome::Gone,
        _ => Outcome::Unknown,
    }
}

/// Whether this node's no-responders statuses speak for the rest of the lattice.
struct Reach {
    state: UplinkState,
    /// The client's connection: connected, and its count of connects.
    link: (bool, u64),
    /// When the current epoch began.
    since: Instant,
    /// Counts the changes of the uplink and of the client's connection: a probe sent in
    /// another epoch proves nothing.
    epoch: u64,
}

impl Reach {
    fn new(state: UplinkState, link: (bool, u64)) -> Reach {
        Reach {
            state,
            link,
            since: Instant::now(),
            epoch: 0,
        }
    }

    /// Takes in the uplink's state if it was sent again (`uplink`, even the same state: it
    /// may have flapped in between) and the client's `link`; true when the epoch moved on.
    fn update(&mut self, uplink: Option<UplinkState>, link: (bool, u64)) -> bool {
        if uplink.is_none() && link == self.link {
            return false;
        }
        *self = Reach {
            state: uplink.unwrap_or(self.state),
            link,
            since: Instant::now(),
            epoch: self.epoch + 1,
        };
        true
    }

    /// True once the client has been connected for [`SETTLED`] and the uplink is up: none
    /// (standalone), external (its server has every subscription) or connected that long.
    fn trusted(&self) -> bool {
        let uplink = match self.state {
            UplinkState::None | UplinkState::External | UplinkState::Connected => true,
            UplinkState::Connecting | UplinkState::Failed | UplinkState::Disconnected => false,
        };
        uplink && self.link.0 && self.since.elapsed() >= SETTLED
    }
}

/// How many probes this node may still send in the current [`ROUND`].
struct Budget {
    left: usize,
    next: Instant,
}

impl Budget {
    fn new(now: Instant) -> Budget {
        Budget { left: 0, next: now }
    }

    /// The probes left at `now`, a new round's [`PROBES_PER_ROUND`] if one began.
    fn room(&mut self, now: Instant) -> usize {
        if now >= self.next {
            let jitter = std::collections::hash_map::RandomState::new().hash_one(now) % 100;
            self.left = PROBES_PER_ROUND;
            self.next = now + ROUND + ROUND * jitter as u32 / 1_000;
        }
        self.left
    }

    fn spend(&mut self) {
        self.left = self.left.saturating_sub(1);
    }
}

/// The correlation guard: the hosts found gone lately, each kept for its own interval.
#[derive(Default)]
struct Guard {
    recent: VecDeque<(Instant, Duration, String)>,
    /// Hosts that answer probes, as of the last round.
    hosts: usize,
}

impl Guard {
    /// Takes in `due`'s no-responders at `now`: the hosts found gone within their interval
    /// if they are more than [`few`] (none of their results to be believed), else `None`.
    fn gone(&mut self, due: &Due, now: Instant) -> Option<Vec<String>> {
        self.recent
            .retain(|(at, interval, _)| now.saturating_duration_since(*at) < *interval);
        if !self.recent.iter().any(|(_, _, id)| *id == due.id) {
            self.recent.push_back((now, due.interval, due.id.clone()));
        }
        let ids: HashMap<&str, ()> = self
            .recent
            .iter()
            .map(|(_, _, id)| (id.as_str(), ()))
            .collect();
        (ids.len() > few(self.hosts)).then(|| ids.into_keys().map(str::to_owned).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn no_responders_count_only_once_the_client_and_the_uplink_have_settled() {
        let mut reach = Reach::new(UplinkState::Connecting, (true, 1));
        reach.since -= SETTLED;
        assert!(!reach.trusted(), "the uplink is not up");
        assert!(reach.update(Some(UplinkState::Connected), (true, 1)));
        assert_eq!(reach.epoch, 1);
        assert!(!reach.trusted(), "connected just now");
        reach.since -= SETTLED;
        assert!(reach.trusted());
        assert!(!reach.update(None, (true, 1)), "nothing changed");

        // The client reconnected between two looks (external mode: another cluster member,
        // whose routes may not be up yet): a new epoch, not trusted until it settles.
        assert!(reach.update(None, (true, 2)));
        assert_eq!(reach.epoch, 2);
        assert!(!reach.trusted());
        reach.since -= SETTLED;
        assert!(reach.update(None, (false, 2)));
        reach.since -= SETTLED;
        assert!(!reach.trusted(), "disconnected");

        // The uplink sent again with the same state: it flapped in between.
        let mut reach = Reach::new(UplinkState::Connected, (true, 1));
        assert!(reach.update(Some(UplinkState::Connected), (true, 1)));
        assert_eq!(reach.epoch, 1);
        for state in [UplinkState::None, UplinkState::External] {
            let mut reach = Reach::new(state, (true, 1));
            reach.since -= SETTLED;
            assert!(reach.trusted());
        }
    }

    #[test]
    fn a_host_is_vetted_first_then_probed_when_silent_then_confirmed_half_an_interval_later() {
        let now = Instant::now() + 100 * SECOND;
        let mut marks = Marks::default();
        assert_eq!(
            due(&marks, false, SECOND, 10 * SECOND, now),
            None,
            "no probe subject"
        );
        assert_eq!(
            due(&marks, true, SECOND, Duration::ZERO, now),
            Some(Kind::Vet)
        );
        marks.sent = Some(now);
        let later = now + SECOND * VET_AGAIN;
        assert_eq!(
            due(&marks, true, SECOND, 5 * SECOND, now + 5 * SECOND),
            None,
            "vetted lately"
        );
        assert_eq!(
            due(&marks, true, SECOND, Duration::ZERO, later),
            Some(Kind::Vet)
        );

        marks.earned = true;
        let silent = SECOND.mul_f64(PROBE_AFTER);
        assert_eq!(
            due(&marks, true, SECOND, silent - PROBE_TICK, later),
            None,
            "not silent yet"
        );
        assert_eq!(due(&marks, true, SECOND, silent, later), Some(Kind::Silent));
        marks.sent = Some(later);
        assert_eq!(
            due(&marks, true, SECOND, silent, later + SECOND / 2),
            None,
            "once an interval"
        );
        marks.gone = Some(later);
        assert_eq!(due(&marks, true, SECOND, silent, later + SECOND / 4), None);
        assert_eq!(
            due(&marks, true, SECOND, silent, later + SECOND / 2),
            Some(Kind::Confirm)
        );
    }

    fn gone(id: &str) -> Due {
        Due {
            id: id.to_owned(),
            kind: Kind::Silent,
            silent_since: Instant::now(),
            interval: SECOND,
        }
    }

    #[test]
    fn more_than_a_few_hosts_gone_within_an_interval_are_not_believed() {
        let mut guard = Guard {
            hosts: 20,
            ..Guard::default()
        };
        let now = Instant::now();
        assert_eq!(few(20), 2);
        assert_eq!(few(100), 10);
        assert!(guard.gone(&gone("a"), now).is_none());
        assert!(
            guard.gone(&gone("a"), now).is_none(),
            "the same host twice is one"
        );
        assert!(guard.gone(&gone("b"), now).is_none());
        let mut suspects = guard.gone(&gone("c"), now + SECOND / 2).unwrap();
        suspects.sort();
        assert_eq!(suspects, ["a", "b", "c"]);
        // An interval later the first two have left the window.
        assert!(guard.gone(&gone("d"), now + SECOND).is_none());
    }

    #[test]
    fn a_round_has_at_most_its_probes_and_a_new_round_comes_after_about_a_second() {
        let now = Instant::now();
        let mut budget = Budget::new(now);
        assert_eq!(budget.room(now), PROBES_PER_ROUND);
        for _ in 0..PROBES_PER_ROUND + 1 {
            budget.spend();
        }
        assert_eq!(budget.room(now + ROUND / 2), 0);
        assert_eq!(budget.room(now + ROUND * 11 / 10), PROBES_PER_ROUND);
    }

    #[test]
    fn the_state_is_cleared_when_the_probes_end() {
        let state = ProbeState::default();
        let answering = Answering(state.clone());
        state.set(true);
        assert!(state.answering());
        drop(answering);
        assert!(!state.answering());
    }
}
