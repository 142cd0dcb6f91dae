//! The node under systemd (`Type=notify`, `WatchdogSec=`): what it tells the service manager
//! over `$NOTIFY_SOCKET` (sd_notify(3), through the `sd-notify` crate). Outside systemd
//! (`NOTIFY_SOCKET` unset) every message is a no-op and only the log lines remain.
//!
//! - `READY=1`, once, when the node is ready as `/readyz` says ([`crate::admin::readiness`]): its
//!   nats-server runs, its NATS connection stands, the lattice's store answered, the first
//!   reconcile pass completed and no task is failing. Readiness is read every 100 ms and must
//!   hold at two reads in a row (about 100 ms apart) before `READY=1` goes out: `/readyz` was
//!   seen ready at both reads, which does not say it answered 200 at every instant between.
//!   Logged as `lattice node is ready`.
//! - `READY=1` after a bounded grace ([`READY_GRACE`], 60 s from the notifier's start) even
//!   though the node is not ready, when what holds it back is only the lattice's store
//!   (unreachable: a leaf whose hub or its JetStream is out of reach, the node serving its share
//!   from its mirror) and/or a supervised task that is failing (it is being restarted; the
//!   watchdog and `Restart=` deal with a node that really hangs). It comes with
//!   `STATUS=ready, serving from the mirror: <why>` (or `…, a task is failing: <which>`) and is
//!   logged at warn. `/readyz` stays 503 with those reasons until they are met: `READY=1` then
//!   means "started, serving what it can", which is what systemd's start ordering (boot,
//!   `systemctl start`, a package's `try-restart`) waits for, so that a hub out of reach cannot
//!   hold a machine's boot or an upgrade for longer than the grace. A nats-server that does not
//!   run, a NATS connection that does not stand and a first pass that does not complete are
//!   never graced: systemd's `TimeoutStartSec=` then fails the start.
//! - `STATUS=not ready: <reasons>` (for `systemctl status`) while a start takes longer than
//!   5 s, as the reasons change, and after `READY=1` whenever readiness changes
//!   (`STATUS=ready` once back). A quick start sends `READY=1` alone.
//! - `WATCHDOG=1` every half of `$WATCHDOG_USEC` (sd_watchdog_enabled(3)), but only while every
//!   loop in the [`Liveness`] registry beat within its allowance: a node whose loops are stuck
//!   stops pinging, and systemd restarts it after `WatchdogSec=`. Each withheld ping is logged
//!   (warn) with the loops that are stuck.
//! - `STOPPING=1` when the node begins to stop ([`stopping`]).
//!
//! The grace can be shortened for tests with the environment variable [`READY_GRACE_VAR`]
//! (`LATTICE_READY_GRACE_MS`, milliseconds): a test knob, not an operator's setting.
//!
//! # Which loops prove the node alive
//! The node registers its important loops (see `node.rs`) and each one beats from inside its
//! own round, so a beat means that loop's task was polled and went round, not that a timer
//! fired somewhere:
//! - `nats-supervisor`: the loop watching, restarting and stopping nats-server
//!   ([`crate::nats::supervisor`]), through the [`crate::admin::liveness::Beat`] it is given; it beats
//!   every second while it watches and while it waits out a restart's backoff.
//! - `reconciler`: the reconciler's pass loop (`Reconciler::run`) is given a
//!   [`crate::admin::liveness::Beat`] and beats at the top of every round of its loop (at least
//!   every tick, ≤ 1 s, and after every pass).
//! - `heartbeat`: the heartbeat loop calls its `info()` closure before each heartbeat (every
//!   `--heartbeat-interval`); the node hands it one that beats.
//!
//! Not covered: the HTTP ingress's accept loop and the connection tasks it spawns, the RPC
//! reply routing, the control API, the config-dir watcher and the mirror follower. A hang
//! there (e.g. the ingress no longer accepting) does not stop the pings; the supervisor sees
//! tasks that end, and `/readyz` names a failing one, but a task that hangs without ending is
//! not detected.
//!
//! A loop that has not begun (the reconciler before the config dir's first pass) is not held
//! against the node: readiness covers the start, and systemd's watchdog only runs once the
//! unit is started (`READY=1`).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::admin::liveness::Liveness;
use crate::admin::readiness::{Condition, Readiness};

/// How often readiness is read until `READY=1` went out.
const STARTING_POLL: Duration = Duration::from_millis(100);

/// How often readiness is read after that, for `STATUS=`.
const READY_POLL: Duration = Duration::from_secs(1);

/// A start not ready after this long says why in `STATUS=` lines.
const SLOW_START: Duration = Duration::from_secs(5);

/// How long after the notifier starts the node says `READY=1` although the lattice's store has
/// not answered or a task is failing (module docs). Well inside the 5 min `TimeoutStartSec=`
/// of the shipped unit, well beyond a normal start (a leaf node whose hub answers is ready in
/// a few seconds; one whose hub is out of reach is "up" from its mirror after about 10 s).
pub const READY_GRACE: Duration = Duration::from_secs(60);

/// The environment variable that replaces [`READY_GRACE`] (milliseconds), for tests.
pub const READY_GRACE_VAR: &str = "LATTICE_READY_GRACE_MS";

/// The conditions that the grace lets `READY=1` go out without.
const GRACED: [Condition; 2] = [Condition::Store, Condition::Tasks];

/// Sends `states`; a failure is logged at warn (once per kind of message is enough for the
/// reader: the next ones would fail alike), never fatal.
fn notify(states: &[NotifyState<'_>], what: &str) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "telling systemd {what}");
    }
}

/// Tells systemd the node is stopping (`STOPPING=1`).
pub fn stopping() {
    notify(&[NotifyState::Stopping], "the node is stopping");
}

/// The watchdog interval systemd asks for (`$WATCHDOG_USEC`, for this process), if any.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero())
}

/// The grace before a `READY=1` without the store: [`READY_GRACE`], or [`READY_GRACE_VAR`]'s
/// milliseconds when set (a value that is not a number is logged and ignored).
pub fn ready_grace() -> Duration {
    match std::env::var(READY_GRACE_VAR) {
        Ok(ms) => match ms.trim().parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms),
            Err(e) => {
                tracing::warn!(
                    value = ms,
                    error = %e,
                    "{READY_GRACE_VAR} is not a number of milliseconds; using {READY_GRACE:?}"
                );
                READY_GRACE
            }
        },
        Err(_) => READY_GRACE,
    }
}

/// Talks to systemd until `shutdown`: `READY=1` once `readiness` holds (or after the grace,
/// module docs), `STATUS=` as it changes, and `WATCHDOG=1` every half watchdog interval while
/// every loop of `liveness` is alive.
///
/// # Cancel safety
/// Meant to run as its own task until `shutdown`; nothing is left half-sent when it is dropped.
pub async fn run(readiness: Readiness, liveness: Liveness, shutdown: CancellationToken) {
    let send = |states: &[NotifyState<'_>], what: &str| notify(states, what);
    let timing = Timing {
        watchdog: watchdog_interval(),
        grace: ready_grace(),
    };
    run_with(readiness, liveness, timing, &send, shutdown).await;
}

/// The notifier's intervals.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// `$WATCHDOG_USEC`, if set.
    watchdog: Option<Duration>,
    /// [`ready_grace`].
    grace: Duration,
}

/// The `STATUS=` text for `unmet`, and whether `READY=1` may go out with it: `ready` when
/// nothing is unmet; after the grace, when only [`GRACED`] conditions are, `ready, serving
/// from the mirror: <why>` (the store) and/or `a task is failing: <which>` (the tasks);
/// otherwise `not ready: <reasons>`.
fn status(unmet: &[(Condition, String)], after_grace: bool) -> (String, bool) {
    if unmet.is_empty() {
        return ("ready".to_owned(), true);
    }
    if after_grace
        && unmet
            .iter()
            .all(|(condition, _)| GRACED.contains(condition))
    {
        let parts: Vec<String> = unmet
            .iter()
            .map(|(condition, why)| match condition {
                Condition::Store => format!("serving from the mirror: {why}"),
                _ => format!("a task is failing: {why}"),
            })
            .collect();
        return (format!("ready, {}", parts.join("; ")), true);
    }
    let reasons: Vec<String> = unmet
        .iter()
        .map(|(condition, why)| format!("{}: {why}", condition.name()))
        .collect();
    (format!("not ready: {}", reasons.join("; ")), false)
}

/// What [`run`] does, sending each message through `send` (the message, and what it tells
/// for the log) with the intervals of `timing`.
async fn run_with(
    readiness: Readiness,
    liveness: Liveness,
    timing: Timing,
    send: &(dyn Fn(&[NotifyState<'_>], &str) + Sync),
    shutdown: CancellationToken,
) {
    let Timing { watchdog, grace } = timing;
    if let Some(interval) = watchdog {
        tracing::info!(
            interval_ms = interval.as_millis() as u64,
            loops = ?liveness.names(),
            "systemd watchdog enabled: pinging every half interval while the node's loops are alive"
        );
    }
    // A disabled watchdog never ticks.
    let mut pings =
        tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |interval| interval / 2));
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll = tokio::time::interval(STARTING_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = tokio::time::Instant::now();
    let mut ready_sent = false;
    let mut status_sent = false;
    let mut ready_reads = 0;
    let mut last_status = String::new();
    let mut withheld = false;
    loop {
        tokio::select! {
            _ = poll.tick() => {}
            _ = pings.tick(), if watchdog.is_some() => {
                let stuck = liveness.stuck();
                if stuck.is_empty() {
                    send(&[NotifyState::Watchdog], "the node is alive");
                    if std::mem::take(&mut withheld) {
                        tracing::info!("every loop is alive again: WATCHDOG=1 resumed");
                    }
                } else {
                    withheld = true;
                    let loops: Vec<String> = stuck.iter().map(ToString::to_string).collect();
                    tracing::warn!(
                        stuck = loops.join("; "),
                        "withholding WATCHDOG=1 from systemd: a loop of the node is stuck"
                    );
                }
                continue;
            }
            () = shutdown.cancelled() => return,
        }
        let unmet = readiness.unmet();
        let after_grace = started.elapsed() >= grace;
        let (status, may_be_ready) = status(&unmet, after_grace);
        ready_reads = if may_be_ready { ready_reads + 1 } else { 0 };
        if !ready_sent {
            if ready_reads >= 2 {
                if unmet.is_empty() {
                    // The STATUS= of a slow start is replaced; a quick start sends READY=1
                    // alone.
                    let ready = [NotifyState::Ready, NotifyState::Status(&status)];
                    let count = if status_sent { 2 } else { 1 };
                    send(&ready[..count], "the node is ready");
                    tracing::info!("lattice node is ready");
                } else {
                    send(
                        &[NotifyState::Ready, NotifyState::Status(&status)],
                        "the node is ready (after the grace)",
                    );
                    tracing::warn!(
                        status,
                        grace_ms = grace.as_millis() as u64,
                        "lattice node is ready for systemd after the grace, though /readyz is 503"
                    );
                }
                ready_sent = true;
                poll = tokio::time::interval(READY_POLL);
                poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                poll.reset();
                last_status = status;
            } else if !may_be_ready && started.elapsed() >= SLOW_START && status != last_status {
                send(&[NotifyState::Status(&status)], "why the node is not ready");
                status_sent = true;
                last_status = status;
            }
            continue;
        }
        if status != last_status {
            // Logged when it flips, not at every change of a reason's wording.
            if (status == "ready") != (last_status == "ready") {
                tracing::info!(status, "readiness changed");
            }
            send(&[NotifyState::Status(&status)], "the node's status");
            last_status = status;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;

    /// What the notifier sent, each message with when (time since the start).
    type Sent = Arc<Mutex<Vec<(Duration, String)>>>;

    /// Runs the notifier on `readiness` with `timing`, calling `drive` (which moves the paused
    /// clock along) and stopping it after; returns what was sent, when.
    async fn notifier<F: std::future::Future<Output = ()>>(
        readiness: Readiness,
        liveness: Liveness,
        timing: Timing,
        drive: F,
    ) -> Vec<(Duration, String)> {
        let sent: Sent = Arc::default();
        let start = Instant::now();
        let record = sent.clone();
        let send = move |states: &[NotifyState<'_>], _: &str| {
            let text: Vec<String> = states.iter().map(ToString::to_string).collect();
            record
                .lock()
                .unwrap()
                .push((start.elapsed(), text.join(",")));
        };
        let shutdown = CancellationToken::new();
        let notifier = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { run_with(readiness, liveness, timing, &send, shutdown).await }
        });
        drive.await;
        shutdown.cancel();
        notifier.await.unwrap();
        sent.lock().unwrap().clone()
    }

    fn all_met() -> Readiness {
        let readiness = Readiness::new();
        for condition in Condition::ALL {
            readiness.met(condition);
        }
        readiness
    }

    /// A 200 ms watchdog (a ping every 100 ms) and one loop allowed 300 ms, beating every
    /// 20 ms for 600 ms and then no more, on tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn the_watchdog_pings_while_the_loops_beat_and_withholds_once_one_is_stuck() {
        let liveness = Liveness::new();
        let beat = liveness.register("reconciler", Duration::from_millis(300));
        let timing = Timing {
            watchdog: Some(Duration::from_millis(200)),
            grace: READY_GRACE,
        };
        let start = Instant::now();
        let sent = notifier(all_met(), liveness, timing, async move {
            while start.elapsed() < Duration::from_millis(600) {
                beat.beat();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep_until(start + Duration::from_millis(1500)).await;
        })
        .await;
        let pings: Vec<Duration> = sent
            .iter()
            .filter(|(_, text)| text == "WATCHDOG=1")
            .map(|(at, _)| *at)
            .collect();
        // Pings at 0, 100, …, 900 ms: the last beat at about 600 ms, the allowance 300 ms.
        assert!(
            pings
                .iter()
                .filter(|at| **at < Duration::from_millis(600))
                .count()
                >= 5,
            "{sent:?}"
        );
        assert!(
            pings.iter().any(|at| *at >= Duration::from_millis(800)),
            "{sent:?}"
        );
        assert!(
            pings.iter().all(|at| *at <= Duration::from_millis(1000)),
            "{sent:?}"
        );
        assert_eq!(
            sent.iter()
                .filter(|(_, text)| text != "WATCHDOG=1")
                .map(|(_, text)| text.as_str())
                .collect::<Vec<_>>(),
            ["READY=1"]
        );
    }

    /// The store has not answered: no READY=1 until the grace, then READY=1 with a STATUS=
    /// that says so; once the store answers, STATUS=ready.
    #[tokio::test(start_paused = true)]
    async fn after_the_grace_a_node_without_its_store_is_ready_serving_from_the_mirror() {
        let readiness = all_met();
        readiness.waiting(Condition::Store, "no JetStream");
        let timing = Timing {
            watchdog: None,
            grace: Duration::from_secs(8),
        };
        let store = readiness.clone();
        let sent = notifier(readiness, Liveness::new(), timing, async move {
            tokio::time::sleep(Duration::from_secs(12)).await;
            store.met(Condition::Store);
            tokio::time::sleep(Duration::from_secs(3)).await;
        })
        .await;
        let texts: Vec<&str> = sent.iter().map(|(_, text)| text.as_str()).collect();
        // STATUS= from 5 s (a slow start), READY=1 right after the grace.
        assert_eq!(
            texts,
            [
                "STATUS=not ready: store: no JetStream",
                "READY=1,STATUS=ready, serving from the mirror: no JetStream",
                "STATUS=ready",
            ],
            "{sent:?}"
        );
        assert!(sent[0].0 >= SLOW_START, "{sent:?}");
        assert!(sent[1].0 >= Duration::from_secs(8), "{sent:?}");
    }

    /// What the grace never excuses: a nats-server (or connection, first pass) that is not up.
    #[tokio::test(start_paused = true)]
    async fn the_grace_does_not_excuse_a_nats_server_that_does_not_run() {
        let readiness = all_met();
        readiness.waiting(Condition::Store, "no JetStream");
        readiness.waiting(Condition::NatsServer, "restarting: exited");
        let timing = Timing {
            watchdog: None,
            grace: Duration::from_secs(1),
        };
        let sent = notifier(readiness, Liveness::new(), timing, async {
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        assert!(
            sent.iter().all(|(_, text)| !text.contains("READY=1")),
            "{sent:?}"
        );
    }

    #[test]
    fn a_failing_task_after_the_grace_is_named_in_the_status() {
        let unmet = [
            (Condition::Store, "unreachable".to_owned()),
            (Condition::Tasks, "mirror restarting: boom".to_owned()),
        ];
        assert_eq!(
            status(&unmet, true),
            (
                "ready, serving from the mirror: unreachable; a task is failing: mirror \
                 restarting: boom"
                    .to_owned(),
                true
            )
        );
        assert_eq!(
            status(&unmet, false),
            (
                "not ready: store: unreachable; tasks: mirror restarting: boom".to_owned(),
                false
            )
        );
        assert_eq!(status(&[], false), ("ready".to_owned(), true));
    }
}
