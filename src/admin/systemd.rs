//! The node under systemd (`Type=notify`, `WatchdogSec=`): what it tells the service manager
//! over `$NOTIFY_SOCKET` (sd_notify(3), through the `sd-notify` crate). Outside systemd
//! (`NOTIFY_SOCKET` unset) every message is a no-op and only the log lines remain.
//!
//! - `READY=1`, once, when the node is ready as `/readyz` says ([`crate::admin::readiness`]): its
//!   nats-server runs, its NATS connection stands, the lattice's store answered, the first
//!   reconcile pass completed and no task is failing. Readiness is read every 100 ms and must
//!   hold at two reads in a row, so `/readyz` has answered 200 for at least that long when
//!   systemd hears of it. Logged as `lattice node is ready`.
//! - `STATUS=not ready: <reasons>` (for `systemctl status`) while a start takes longer than
//!   5 s, as the reasons change, and after `READY=1` whenever readiness changes
//!   (`STATUS=ready` once back). A quick start sends `READY=1` alone.
//! - `WATCHDOG=1` every half of `$WATCHDOG_USEC` (sd_watchdog_enabled(3)), but only while every
//!   loop in the [`Liveness`] registry beat within its allowance: a node whose loops are stuck
//!   stops pinging, and systemd restarts it after `WatchdogSec=`. Each withheld ping is logged
//!   (warn) with the loops that are stuck.
//! - `STOPPING=1` when the node begins to stop ([`stopping`]).
//!
//! # Which loops prove the node alive
//! The node registers its important loops (see `node.rs`) and each one beats from inside its
//! own round, so a beat means that loop's task was polled and went round, not that a timer
//! fired somewhere:
//! - `nats-supervisor`: the loop watching, restarting and stopping nats-server
//!   ([`crate::nats::supervisor`]), through the [`crate::admin::liveness::Beat`] it is given; it beats
//!   every second while it watches and while it waits out a restart's backoff.
//! - `reconciler`: the reconciler's pass loop calls the node's description of itself
//!   (`Reconciler::local`) on every pass (at least every tick, ≤ 1 s); the node hands it one
//!   that beats. This is observed from `node.rs` because the reconciler's files belong to
//!   another part: once merged, a beat passed to `Reconciler::run` and beaten at the top of its
//!   loop would say the same more directly.
//! - `heartbeat`: the heartbeat loop calls its `info()` closure before each heartbeat (every
//!   `--heartbeat-interval`); the node hands it one that beats.
//! - The HTTP ingress's accept loop is not registered: its file belongs to another part and
//!   nothing of it can be observed from `node.rs` without a request. After the merge,
//!   `HttpServer::start` would take a `Beat` and beat on every accept and on a 1 s tick in its
//!   select.
//!
//! A loop that has not begun (the reconciler before the config dir's first pass) is not held
//! against the node: readiness covers the start, and systemd's watchdog only runs once the
//! unit is started (`READY=1`).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::admin::liveness::Liveness;
use crate::admin::readiness::Readiness;

/// How often readiness is read until `READY=1` went out.
const STARTING_POLL: Duration = Duration::from_millis(100);

/// How often readiness is read after that, for `STATUS=`.
const READY_POLL: Duration = Duration::from_secs(1);

/// A start not ready after this long says why in `STATUS=` lines.
const SLOW_START: Duration = Duration::from_secs(5);

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

/// Talks to systemd until `shutdown`: `READY=1` once `readiness` holds, `STATUS=` as it
/// changes, and `WATCHDOG=1` every half watchdog interval while every loop of `liveness` is
/// alive (module docs).
///
/// # Cancel safety
/// Meant to run as its own task until `shutdown`; nothing is left half-sent when it is dropped.
pub async fn run(readiness: Readiness, liveness: Liveness, shutdown: CancellationToken) {
    let send = |states: &[NotifyState<'_>], what: &str| notify(states, what);
    run_with(readiness, liveness, watchdog_interval(), &send, shutdown).await;
}

/// What [`run`] does, sending each message through `send` (the message, and what it tells
/// for the log) with the watchdog interval `watchdog`.
async fn run_with(
    readiness: Readiness,
    liveness: Liveness,
    watchdog: Option<Duration>,
    send: &(dyn Fn(&[NotifyState<'_>], &str) + Sync),
    shutdown: CancellationToken,
) {
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
        let reasons = readiness.reasons();
        let status = if reasons.is_empty() {
            "ready".to_owned()
        } else {
            format!("not ready: {}", reasons.join("; "))
        };
        ready_reads = if reasons.is_empty() {
            ready_reads + 1
        } else {
            0
        };
        if !ready_sent {
            if ready_reads >= 2 {
                // The STATUS= of a slow start is replaced; a quick start sends READY=1 alone.
                let ready = [NotifyState::Ready, NotifyState::Status(&status)];
                let count = if status_sent { 2 } else { 1 };
                send(&ready[..count], "the node is ready");
                tracing::info!("lattice node is ready");
                ready_sent = true;
                poll = tokio::time::interval(READY_POLL);
                poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                poll.reset();
                last_status = status;
            } else if !reasons.is_empty()
                && started.elapsed() >= SLOW_START
                && status != last_status
            {
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
    use std::time::Instant;

    use super::*;
    use crate::admin::readiness::Condition;

    /// Runs the notifier with a 200 ms watchdog (a ping every 100 ms) and one loop allowed
    /// 300 ms, beating every 20 ms for 600 ms and then no more; returns what was sent, when.
    async fn run_for(duration: Duration) -> Vec<(Duration, String)> {
        let readiness = Readiness::new();
        for condition in Condition::ALL {
            readiness.met(condition);
        }
        let liveness = Liveness::new();
        let beat = liveness.register("reconciler", Duration::from_millis(300));
        let sent = Arc::new(Mutex::new(Vec::new()));
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
            async move {
                run_with(
                    readiness,
                    liveness,
                    Some(Duration::from_millis(200)),
                    &send,
                    shutdown,
                )
                .await;
            }
        });
        while start.elapsed() < Duration::from_millis(600) {
            beat.beat();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(duration.saturating_sub(start.elapsed())).await;
        shutdown.cancel();
        notifier.await.unwrap();
        sent.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn the_watchdog_pings_while_the_loops_beat_and_withholds_once_one_is_stuck() {
        let sent = run_for(Duration::from_millis(1500)).await;
        let pings: Vec<Duration> = sent
            .iter()
            .filter(|(_, text)| text == "WATCHDOG=1")
            .map(|(at, _)| *at)
            .collect();
        assert!(
            pings
                .iter()
                .filter(|at| **at < Duration::from_millis(600))
                .count()
                >= 3,
            "{sent:?}"
        );
        // The loop's last beat was at about 600 ms, its allowance 300 ms: nothing after
        // 1000 ms (one ping period of slack).
        assert!(
            pings.iter().all(|at| *at < Duration::from_millis(1000)),
            "{sent:?}"
        );
        assert!(sent.iter().any(|(_, text)| text == "READY=1"), "{sent:?}");
    }
}
