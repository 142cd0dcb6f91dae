//! Probes: how a node learns within a heartbeat or so, not three, that a silent host is gone.
//! Every node answers requests on its probe subject (`lattice.<L>.node.v1.<id>.probe`, an
//! empty reply); a host silent for [`PROBE_AFTER`] of its heartbeat interval is sent one probe
//! (again each interval while it stays silent). NATS answers a request that nobody subscribes
//! to with a no-responders status at once: the host's connection is gone (its process died and
//! its nats-server dropped its subscriptions, or its leaf connection to the hub dropped), and
//! it is forgotten then, as `host_stopped` would. An answer or a timeout (a stopped process
//! keeps its subscriptions) says nothing: such a host is forgotten after
//! [`MISSED_HEARTBEATS`](super::membership::MISSED_HEARTBEATS) as before.
//!
//! A no-responders status is evidence only while this node's own path to the others is whole:
//! a leaf node whose uplink is down (or came up less than [`UPLINK_SETTLED`] ago, while the
//! hub's interest may still be arriving) hears no-responders for every remote subject, so its
//! probes are not sent then, and a probe whose uplink changed before its answer counts for
//! nothing. An answer is never evidence of life (it is not signed): only heartbeats keep a
//! host, so a forged or replayed answer cannot keep a killed node alive.

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

/// How often silent hosts are looked for (and expired hosts forgotten, waking the reconciler).
const PROBE_TICK: Duration = Duration::from_millis(100);

/// How long a probe waits for NATS: a no-responders status comes back within a round trip.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long this node's leaf uplink must have been connected before a no-responders counts.
pub const UPLINK_SETTLED: Duration = Duration::from_secs(1);

/// Most probes in flight; the others are sent at a later tick.
const MAX_PROBES_IN_FLIGHT: usize = 256;

/// This node's side of the probes: it answers its own probe subject and probes silent hosts.
pub struct Probes {
    client: async_nats::Client,
    lattice: String,
    /// This node's id.
    me: String,
    uplink: watch::Receiver<Uplink>,
}

/// What a probe found.
enum Outcome {
    /// No-responders: nothing subscribes to the host's probe subject.
    Gone,
    /// An answer, a timeout or another error: nothing to conclude.
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
        }
    }

    /// Answers this node's probes and probes the silent hosts of `membership` until
    /// `shutdown`; forgets the hosts found gone (logged at info) and expires silent ones
    /// every [`PROBE_TICK`].
    ///
    /// # Errors
    /// The probe subject cannot be subscribed to, or its subscription ended before `shutdown`.
    pub async fn run(
        mut self,
        membership: &Membership,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let subject = subjects::probe(&self.lattice, &self.me);
        let mut asked = self
            .client
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("subscribing to {subject}"))?;
        let mut tick = tokio::time::interval(PROBE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reach = Reach::new(self.uplink.borrow_and_update().state);
        let mut in_flight = FuturesUnordered::new();
        loop {
            tokio::select! {
                message = asked.next() => {
                    let Some(message) = message else {
                        anyhow::bail!("the probe subscription ended");
                    };
                    if let Some(reply) = message.reply {
                        // Best effort: a lost answer only makes the prober wait for heartbeats.
                        let _ = self.client.publish(reply, Bytes::new()).await;
                    }
                }
                _ = tick.tick() => {
                    membership.expire();
                    reach.update(&mut self.uplink);
                    if !reach.trusted() {
                        continue;
                    }
                    let room = MAX_PROBES_IN_FLIGHT.saturating_sub(in_flight.len());
                    let due = membership.due_probes(PROBE_AFTER, Instant::now());
                    for (id, silent_since) in due.into_iter().take(room) {
                        let subject = subjects::probe(&self.lattice, &id);
                        let (client, epoch) = (self.client.clone(), reach.epoch);
                        in_flight.push(async move {
                            let outcome = probe(&client, subject).await;
                            (id, silent_since, epoch, outcome)
                        });
                    }
                }
                Some((id, silent_since, epoch, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                    reach.update(&mut self.uplink);
                    if !matches!(outcome, Outcome::Gone) || epoch != reach.epoch || !reach.trusted() {
                        continue;
                    }
                    if let Some(host) = membership.forget_unreachable(&id, silent_since) {
                        tracing::info!(
                            id,
                            name = host.name,
                            "host left the lattice: silent, and nothing subscribes to its probe \
                             subject (its NATS connection is gone)"
                        );
                    }
                }
                () = shutdown.cancelled() => return Ok(()),
            }
        }
    }
}

/// Sends one probe to `subject`.
async fn probe(client: &async_nats::Client, subject: String) -> Outcome {
    match tokio::time::timeout(PROBE_TIMEOUT, client.request(subject, Bytes::new())).await {
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Outcome::Gone,
        _ => Outcome::Unknown,
    }
}

/// Whether this node's no-responders statuses speak for the rest of the lattice.
struct Reach {
    state: UplinkState,
    /// When the uplink was last seen to change.
    since: Instant,
    /// Counts the uplink's changes: a probe sent in another epoch proves nothing.
    epoch: u64,
}

impl Reach {
    fn new(state: UplinkState) -> Reach {
        Reach {
            state,
            since: Instant::now(),
            epoch: 0,
        }
    }

    /// Takes in a change of the uplink, if any.
    fn update(&mut self, uplink: &mut watch::Receiver<Uplink>) {
        if uplink.has_changed().unwrap_or(false) {
            let state = uplink.borrow_and_update().state;
            if state != self.state {
                *self = Reach {
                    state,
                    since: Instant::now(),
                    epoch: self.epoch + 1,
                };
            }
        }
    }

    /// True for a standalone node or one on an external NATS (its server has every
    /// subscription), and for a leaf node connected for [`UPLINK_SETTLED`].
    fn trusted(&self) -> bool {
        match self.state {
            UplinkState::None | UplinkState::External => true,
            UplinkState::Connected => self.since.elapsed() >= UPLINK_SETTLED,
            UplinkState::Connecting | UplinkState::Failed | UplinkState::Disconnected => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_trusts_no_responders_only_once_its_uplink_has_settled() {
        let (tx, mut rx) = watch::channel(Uplink::fixed(UplinkState::Connecting, None));
        let mut reach = Reach::new(rx.borrow_and_update().state);
        assert!(!reach.trusted());
        tx.send(Uplink::fixed(UplinkState::Connected, None))
            .unwrap();
        reach.update(&mut rx);
        assert_eq!(reach.epoch, 1);
        assert!(!reach.trusted(), "connected just now");
        reach.since -= UPLINK_SETTLED;
        assert!(reach.trusted());
        tx.send(Uplink::fixed(UplinkState::Disconnected, None))
            .unwrap();
        reach.update(&mut rx);
        assert_eq!(reach.epoch, 2);
        assert!(!reach.trusted());
        assert!(Reach::new(UplinkState::None).trusted());
        assert!(Reach::new(UplinkState::External).trusted());
    }
}
