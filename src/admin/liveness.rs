//! Which of the node's loops are alive: a registry where each important loop records a beat
//! as it goes round, read by the systemd watchdog ([`crate::admin::systemd`]), which pings systemd
//! only while every loop beat within its allowance.
//!
//! A loop [`Liveness::register`]s once, with a name and an allowance (the longest time one of
//! its rounds may rightly take, waits included), and calls [`Beat::beat`] on every round. A
//! loop counts from its first beat on: one that has not started yet (the reconciler waits for
//! the config dir's first pass, a bounded wait readiness already covers) is not held against
//! the node. A beat is one relaxed atomic store, cheap enough for any loop.
//!
//! ```
//! use std::time::Duration;
//! use lattice::admin::liveness::Liveness;
//!
//! let liveness = Liveness::new();
//! let heartbeat = liveness.register("heartbeat", Duration::from_secs(15));
//! assert!(liveness.stuck().is_empty()); // not started: not checked
//! heartbeat.beat();
//! assert!(liveness.stuck().is_empty());
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// tokio's clock: the same as std's in the node, and paused with the tests' runtime.
use tokio::time::Instant;

/// No beat yet.
const NEVER: u64 = u64::MAX;

/// The registry of the node's loops; cheap to clone, every clone sees the same loops.
#[derive(Clone)]
pub struct Liveness {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the beats count from.
    origin: Instant,
    loops: Mutex<Vec<Arc<Loop>>>,
}

struct Loop {
    name: &'static str,
    allowance: Duration,
    /// Milliseconds from `origin` to the last beat; [`NEVER`] before the first.
    last_ms: AtomicU64,
}

/// The handle a loop beats with; cheap to clone (clones beat for the same loop).
#[derive(Clone)]
pub struct Beat {
    origin: Instant,
    entry: Arc<Loop>,
}

impl std::fmt::Debug for Beat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Beat")
            .field("name", &self.entry.name)
            .field("allowance", &self.entry.allowance)
            .finish_non_exhaustive()
    }
}

impl Beat {
    /// Records that the loop went round now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(NEVER - 1);
        self.entry.last_ms.store(ms, Ordering::Relaxed);
    }

    /// The loop's name.
    pub fn name(&self) -> &'static str {
        self.entry.name
    }
}

/// A loop that has not beaten within its allowance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    /// The loop's name, as registered.
    pub name: &'static str,
    /// Time since its last beat.
    pub silent_for: Duration,
    /// Its allowance.
    pub allowance: Duration,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} silent for {} ms (allowed {} ms)",
            self.name,
            self.silent_for.as_millis(),
            self.allowance.as_millis()
        )
    }
}

impl Default for Liveness {
    fn default() -> Liveness {
        Liveness::new()
    }
}

impl Liveness {
    /// An empty registry.
    pub fn new() -> Liveness {
        Liveness {
            inner: Arc::new(Inner {
                origin: Instant::now(),
                loops: Mutex::default(),
            }),
        }
    }

    /// Registers loop `name`, which must beat at least every `allowance` once it has started;
    /// returns its handle.
    pub fn register(&self, name: &'static str, allowance: Duration) -> Beat {
        let entry = Arc::new(Loop {
            name,
            allowance,
            last_ms: AtomicU64::new(NEVER),
        });
        self.inner
            .loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(entry.clone());
        Beat {
            origin: self.inner.origin,
            entry,
        }
    }

    /// The loops that started and have not beaten within their allowance, now.
    pub fn stuck(&self) -> Vec<Stuck> {
        self.stuck_at(self.inner.origin.elapsed())
    }

    /// As [`Liveness::stuck`], at `now` (time since the registry was made).
    fn stuck_at(&self, now: Duration) -> Vec<Stuck> {
        let now_ms = u64::try_from(now.as_millis()).unwrap_or(NEVER - 1);
        self.inner
            .loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|entry| {
                let last = entry.last_ms.load(Ordering::Relaxed);
                if last == NEVER {
                    return None;
                }
                let silent_for = Duration::from_millis(now_ms.saturating_sub(last));
                (silent_for > entry.allowance).then_some(Stuck {
                    name: entry.name,
                    silent_for,
                    allowance: entry.allowance,
                })
            })
            .collect()
    }

    /// The names of the loops registered, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.inner
            .loops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|entry| entry.name)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_silent_past_its_allowance_is_stuck_and_one_not_started_is_not() {
        let liveness = Liveness::new();
        let fast = liveness.register("reconciler", Duration::from_millis(100));
        let _idle = liveness.register("never-started", Duration::from_millis(1));
        let slow = liveness.register("heartbeat", Duration::from_secs(60));
        fast.beat();
        slow.beat();
        let now = liveness.inner.origin.elapsed();
        assert!(liveness.stuck_at(now).is_empty());
        let later = now + Duration::from_millis(500);
        let stuck = liveness.stuck_at(later);
        assert_eq!(stuck.len(), 1, "{stuck:?}");
        assert_eq!(stuck[0].name, "reconciler");
        assert!(
            stuck[0].silent_for >= Duration::from_millis(500),
            "{stuck:?}"
        );
        assert!(stuck[0].to_string().starts_with("reconciler silent for "));
        assert_eq!(
            liveness.names(),
            ["reconciler", "never-started", "heartbeat"]
        );
    }
}
