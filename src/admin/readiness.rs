//! Whether the node is ready to serve its share of the lattice: what `/readyz` answers
//! ([`crate::admin`]) and when systemd is told `READY=1` ([`crate::admin::systemd`], which after
//! a grace also says `READY=1` while only [`Condition::Store`] or [`Condition::Tasks`] are
//! unmet).
//!
//! The node is ready while every [`Condition`] holds:
//! - [`Condition::NatsServer`]: its own nats-server child runs (not restarting) and answers
//!   `ok` on its monitoring port's `/healthz` ([`crate::nats::ServerState`]); met at once in
//!   external mode, which has none.
//! - [`Condition::Connection`]: its NATS connection is connected (async-nats'
//!   `Client::connection_state`).
//! - [`Condition::Store`]: the lattice's store (the shared JetStream that holds the desired
//!   state) has answered at least once since the node started. Sticky: a store lost later does
//!   not make the node unready, since it then serves from its mirror (DESIGN.md §4).
//! - [`Condition::FirstPass`]: the reconciler's first pass has completed. Sticky.
//! - [`Condition::Tasks`]: no supervised task is failing ([`crate::supervisor::Health::failing`]).
//!
//! Each condition starts unmet with a reason of its own; the node then hands each one either a
//! live probe ([`Readiness::probe`], asked on every [`Readiness::reasons`]) or marks it met
//! for good ([`Readiness::met`]). The state is built before any part of the node, so the admin
//! endpoint, bound first, answers `/readyz` with the right reasons from the start. This module
//! depends on nothing of the node's but [`crate::supervisor`]'s health, so the admin endpoint
//! and the systemd notifier can use it without knowing the node.
//!
//! ```
//! use lattice::admin::readiness::{Condition, Readiness};
//!
//! let readiness = Readiness::new();
//! assert_eq!(readiness.reasons().len(), 5);
//! readiness.met(Condition::NatsServer);
//! readiness.probe(Condition::Connection, || None);
//! readiness.met(Condition::Store);
//! readiness.met(Condition::FirstPass);
//! readiness.probe(Condition::Tasks, || Some("reconciler restarting: boom".to_owned()));
//! assert_eq!(readiness.reasons(), ["tasks: reconciler restarting: boom"]);
//! ```

use std::sync::{Arc, Mutex};

/// One thing the node needs before it is ready; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// The node's nats-server child runs.
    NatsServer,
    /// The node's NATS connection is connected.
    Connection,
    /// The lattice's store answered at least once.
    Store,
    /// The reconciler's first pass completed.
    FirstPass,
    /// No supervised task is failing.
    Tasks,
}

impl Condition {
    /// Every condition, in the order `/readyz` lists them.
    pub const ALL: [Condition; 5] = [
        Condition::NatsServer,
        Condition::Connection,
        Condition::Store,
        Condition::FirstPass,
        Condition::Tasks,
    ];

    /// Its name, as the reasons start: `nats-server`, `nats connection`, `store`,
    /// `first reconcile pass`, `tasks`.
    pub fn name(self) -> &'static str {
        match self {
            Condition::NatsServer => "nats-server",
            Condition::Connection => "nats connection",
            Condition::Store => "store",
            Condition::FirstPass => "first reconcile pass",
            Condition::Tasks => "tasks",
        }
    }

    /// Why it is unmet before the node handed it a probe or marked it met.
    fn initial(self) -> &'static str {
        match self {
            Condition::NatsServer => "not started yet",
            Condition::Connection => "not connected yet",
            Condition::Store => "the lattice's store has not answered yet",
            Condition::FirstPass => "not completed yet",
            Condition::Tasks => "not started yet",
        }
    }

    fn index(self) -> usize {
        match self {
            Condition::NatsServer => 0,
            Condition::Connection => 1,
            Condition::Store => 2,
            Condition::FirstPass => 3,
            Condition::Tasks => 4,
        }
    }
}

/// A live check: `None` while the condition holds, else why not (one line).
pub type Probe = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Where one condition stands.
#[derive(Clone)]
enum Slot {
    /// Unmet, for this reason, until the node hands a probe or marks it met.
    Waiting(String),
    /// Asked on every read.
    Probe(Probe),
    /// Met for good.
    Met,
}

/// The node's readiness; cheap to clone, every clone sees the same state.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
}

struct Inner {
    slots: Mutex<[Slot; 5]>,
}

impl Default for Readiness {
    fn default() -> Readiness {
        Readiness::new()
    }
}

impl Readiness {
    /// Every condition unmet, each with its initial reason.
    pub fn new() -> Readiness {
        Readiness {
            inner: Arc::new(Inner {
                slots: Mutex::new(Condition::ALL.map(|c| Slot::Waiting(c.initial().to_owned()))),
            }),
        }
    }

    fn set(&self, condition: Condition, slot: Slot) {
        self.lock()[condition.index()] = slot;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Slot; 5]> {
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `condition` met for good (a probe it had is dropped).
    pub fn met(&self, condition: Condition) {
        self.set(condition, Slot::Met);
    }

    /// Leaves `condition` unmet for `reason` (one line) until it is handed a probe or met.
    pub fn waiting(&self, condition: Condition, reason: impl Into<String>) {
        self.set(condition, Slot::Waiting(reason.into()));
    }

    /// Makes `probe` decide `condition` from now on: it is asked on every read, so it must be
    /// cheap and must not block (a lock, an atomic, a `watch` borrow).
    pub fn probe(
        &self,
        condition: Condition,
        probe: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) {
        self.set(condition, Slot::Probe(Arc::new(probe)));
    }

    /// The unmet conditions with why each is unmet (one line), in [`Condition::ALL`]'s
    /// order; empty when the node is ready.
    pub fn unmet(&self) -> Vec<(Condition, String)> {
        // The probes run outside the lock: one may read state that is slow to lock.
        let slots = self.lock().clone();
        Condition::ALL
            .iter()
            .zip(slots)
            .filter_map(|(condition, slot)| {
                let why = match slot {
                    Slot::Waiting(why) => Some(why),
                    Slot::Probe(probe) => probe(),
                    Slot::Met => None,
                }?;
                Some((*condition, one_line(&why)))
            })
            .collect()
    }

    /// Why the node is not ready, one line per unmet condition (`<condition>: <why>`, in
    /// [`Condition::ALL`]'s order); empty when it is ready.
    pub fn reasons(&self) -> Vec<String> {
        self.unmet()
            .into_iter()
            .map(|(condition, why)| format!("{}: {why}", condition.name()))
            .collect()
    }

    /// Whether every condition holds now.
    pub fn is_ready(&self) -> bool {
        self.reasons().is_empty()
    }
}

/// `text` on one line: line breaks become spaces, so each reason is one line of `/readyz`.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn unmet_conditions_are_listed_in_order_with_their_reasons() {
        let readiness = Readiness::new();
        assert_eq!(
            readiness.reasons(),
            [
                "nats-server: not started yet",
                "nats connection: not connected yet",
                "store: the lattice's store has not answered yet",
                "first reconcile pass: not completed yet",
                "tasks: not started yet",
            ]
        );
        assert!(!readiness.is_ready());
    }

    #[test]
    fn probes_decide_at_every_read_and_met_is_for_good() {
        let readiness = Readiness::new();
        for condition in [Condition::NatsServer, Condition::Store, Condition::Tasks] {
            readiness.met(condition);
        }
        readiness.met(Condition::FirstPass);
        let up = Arc::new(AtomicBool::new(false));
        let probe = up.clone();
        readiness.probe(Condition::Connection, move || {
            (!probe.load(Ordering::SeqCst)).then(|| "disconnected\nsince 3 s".to_owned())
        });
        assert_eq!(
            readiness.reasons(),
            ["nats connection: disconnected since 3 s"]
        );
        up.store(true, Ordering::SeqCst);
        assert!(readiness.is_ready());
        up.store(false, Ordering::SeqCst);
        assert!(!readiness.is_ready());
        readiness.waiting(Condition::Store, "searching");
        up.store(true, Ordering::SeqCst);
        assert_eq!(readiness.reasons(), ["store: searching"]);
    }
}
