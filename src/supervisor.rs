//! The node's supervision tree as data: named long-running tasks, each owned by one handle,
//! all restarted under one [`RestartPolicy`], with their health readable at any time.
//!
//! A task is a factory of attempts: every attempt is a future run on its own tokio task, so a
//! panic is caught like an error. Every task runs until the node stops it: an attempt that
//! fails (returns `Err`, panics, or returns `Ok` before it was told to stop) is logged with the
//! task's name and cause and started again after a backoff (250 ms doubling to 30 s; a run that
//! lasted [`RestartPolicy::stable`] starts the backoff over). A task whose attempts keep
//! failing for [`RestartPolicy::degraded_after`] makes the node degraded
//! ([`Health::degraded`]).
//!
//! Stopping is explicit and ordered: [`Supervisor::stop`] cancels one task's token and waits for
//! it (bounded), [`Supervisor::shutdown`] stops every task left in the reverse of the order they
//! were started in, so a task never outlives one it was started after.
//!
//! ```no_run
//! # async fn example() {
//! use std::time::Duration;
//! use lattice::supervisor::{RestartPolicy, Supervisor};
//!
//! let mut tasks = Supervisor::new(RestartPolicy::default());
//! tasks.spawn("ticker", |shutdown| async move {
//!     shutdown.cancelled().await;
//!     Ok(())
//! });
//! println!("{:?}", tasks.health().tasks());
//! tasks.shutdown(Duration::from_secs(5)).await;
//! # }
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// The least time a task gets to end once told to stop, whatever is left of a shared bound.
const STOP_GRACE: Duration = Duration::from_millis(200);

/// How long an attempt started after a failure must run before [`Health::failing`] no longer
/// lists its task.
pub const SETTLE: Duration = Duration::from_secs(5);

/// How failed tasks are restarted, and when failing makes the node degraded. One policy for
/// every task of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Delay before the first restart (250 ms); doubled after each failure in a row.
    pub initial_backoff: Duration,
    /// Longest delay between restarts (30 s).
    pub max_backoff: Duration,
    /// An attempt that ran this long (60 s) before it failed starts the backoff over, and a
    /// task running this long is no longer failing.
    pub stable: Duration,
    /// A task failing (no attempt lasting [`RestartPolicy::stable`]) for longer than this (60 s)
    /// makes the node degraded.
    pub degraded_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(30),
            stable: Duration::from_secs(60),
            degraded_after: Duration::from_secs(60),
        }
    }
}

/// What a task is doing now, as heartbeats and `lattice get hosts` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// An attempt runs.
    Running,
    /// The last attempt failed; the next one starts after the backoff.
    Restarting,
    /// Stopped by the node (shutdown).
    Stopped,
    /// A state this node does not know (sent by a newer one): heartbeats stay readable.
    #[serde(other)]
    Unknown,
}

impl TaskState {
    /// The state as JSON and the CLI write it: `running`, `restarting`, `stopped`
    /// (`unknown` for one a newer node sent).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Running => "running",
            TaskState::Restarting => "restarting",
            TaskState::Stopped => "stopped",
            TaskState::Unknown => "unknown",
        }
    }
}

/// One task's health: an entry of `tasks` in a node's heartbeat (`PROTOCOL.md` §Events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskHealth {
    /// The task's name, e.g. `reconciler`.
    pub name: String,
    /// What it does now.
    pub state: TaskState,
    /// How often it was restarted since the node started.
    pub restarts: u64,
    /// For how long it has been failing, in ms: since the first failure with no attempt
    /// lasting the policy's `stable` time after it; 0 while healthy.
    #[serde(default)]
    pub failing_for_ms: u64,
    /// The cause of its last failure, while it is failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The bookkeeping of one task, shared by its supervising loop and [`Health`].
#[derive(Debug)]
struct Record {
    name: &'static str,
    state: TaskState,
    restarts: u64,
    /// When the current attempt started.
    attempt_started: Instant,
    /// When the task began failing, while it is.
    failing_since: Option<Instant>,
    last_error: Option<String>,
}

impl Record {
    fn health(&self, policy: &RestartPolicy, now: Instant) -> TaskHealth {
        // A running attempt that has lasted the stable time ends the failing spell.
        let failing_since = self.failing_since.filter(|_| {
            !(self.state == TaskState::Running
                && now.duration_since(self.attempt_started) >= policy.stable)
        });
        TaskHealth {
            name: self.name.to_owned(),
            state: self.state,
            restarts: self.restarts,
            failing_for_ms: failing_since
                .map_or(0, |since| now.duration_since(since).as_millis() as u64),
            last_error: failing_since.and(self.last_error.clone()),
        }
    }
}

/// A cheap, cloneable view of every task's health.
#[derive(Debug, Clone)]
pub struct Health {
    policy: RestartPolicy,
    records: Arc<Mutex<Vec<Arc<Mutex<Record>>>>>,
}

impl Health {
    /// Every task's health, in start order.
    pub fn tasks(&self) -> Vec<TaskHealth> {
        let now = Instant::now();
        lock(&self.records)
            .iter()
            .map(|record| lock(record).health(&self.policy, now))
            .collect()
    }

    /// Why the node is degraded, if it is: each task failing for longer than the policy's
    /// `degraded_after`, with its cause, e.g. `reconciler failing for 75 s: …`.
    pub fn degraded(&self) -> Option<String> {
        degraded_reason(&self.tasks(), self.policy.degraded_after)
    }

    /// The tasks failing now, one line each with its cause: what `/readyz` reports
    /// ([`crate::admin::readiness::Condition::Tasks`]). A task is failing while its last attempt
    /// failed and the next one waits for its backoff (`reconciler restarting (3 restarts):
    /// …`), while an attempt started after a failure has not yet run [`SETTLE`]
    /// (`reconciler running again for 1200 ms after 3 restart(s); last: …`: an attempt that
    /// fails at once must not look healthy between two failures), and while it has been
    /// failing for longer than the policy's `degraded_after`. Empty while every task runs.
    pub fn failing(&self) -> Vec<String> {
        let now = Instant::now();
        lock(&self.records)
            .iter()
            .filter_map(|record| {
                let record = lock(record);
                let health = record.health(&self.policy, now);
                let cause = health.last_error.as_deref().unwrap_or("(no cause)");
                let running_for = now.duration_since(record.attempt_started);
                if health.state == TaskState::Restarting {
                    Some(format!(
                        "{} restarting ({} restarts): {cause}",
                        health.name, health.restarts
                    ))
                } else if health.failing_for_ms > self.policy.degraded_after.as_millis() as u64 {
                    Some(format!(
                        "{} failing for {} s: {cause}",
                        health.name,
                        health.failing_for_ms / 1000
                    ))
                } else if health.state == TaskState::Running
                    && health.failing_for_ms > 0
                    && running_for < SETTLE
                {
                    Some(format!(
                        "{} running again for {} ms after {} restart(s); last: {cause}",
                        health.name,
                        running_for.as_millis(),
                        health.restarts
                    ))
                } else {
                    None
                }
            })
            .collect()
    }
}

/// The reason a node with these `tasks` is degraded, if one fails for longer than `after`.
pub fn degraded_reason(tasks: &[TaskHealth], after: Duration) -> Option<String> {
    let failing: Vec<String> = tasks
        .iter()
        .filter(|t| t.failing_for_ms > after.as_millis() as u64)
        .map(|t| {
            format!(
                "{} failing for {} s: {}",
                t.name,
                t.failing_for_ms / 1000,
                t.last_error.as_deref().unwrap_or("(no cause)")
            )
        })
        .collect();
    (!failing.is_empty()).then(|| failing.join("; "))
}

/// A supervised task as its owner holds it.
struct Task {
    name: &'static str,
    stop: CancellationToken,
    handle: JoinHandle<()>,
    record: Arc<Mutex<Record>>,
}

/// The node's long-running tasks, in the order they were started.
pub struct Supervisor {
    policy: RestartPolicy,
    tasks: Vec<Task>,
    health: Health,
}

impl Supervisor {
    /// An empty supervisor restarting under `policy`.
    pub fn new(policy: RestartPolicy) -> Supervisor {
        Supervisor {
            policy,
            tasks: Vec::new(),
            health: Health {
                policy,
                records: Arc::default(),
            },
        }
    }

    /// Starts task `name`: `attempt(shutdown)` is called for its first run and again after each
    /// failure; `shutdown` is cancelled when the node stops the task, and an attempt should
    /// return soon after (its result then counts for nothing). An attempt that returns before
    /// that, even `Ok`, has failed.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, attempt: F)
    where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let record = Arc::new(Mutex::new(Record {
            name,
            state: TaskState::Running,
            restarts: 0,
            attempt_started: Instant::now(),
            failing_since: None,
            last_error: None,
        }));
        lock(&self.health.records).push(record.clone());
        let stop = CancellationToken::new();
        let handle = tokio::spawn(supervise(
            name,
            self.policy,
            attempt,
            record.clone(),
            stop.clone(),
        ));
        self.tasks.push(Task {
            name,
            stop,
            handle,
            record,
        });
    }

    /// The tasks' health, to read at any time (heartbeats, `lattice get hosts`).
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Stops task `name` (if it is still owned here): cancels its token and waits up to
    /// `within` for it to end, then aborts it. Returns whether it ended in time.
    pub async fn stop(&mut self, name: &str, within: Duration) -> bool {
        match self.tasks.iter().position(|t| t.name == name) {
            Some(index) => stop_task(self.tasks.remove(index), within).await,
            None => true,
        }
    }

    /// Stops, in the reverse of their start order, every task started after task `keep`,
    /// within `within` for them all (each gets what is left, at least 200 ms; one that does not
    /// end in its time is aborted); `keep` and the tasks before it go on (e.g. what the node still needs while it
    /// drains). Returns the names of those that had to be aborted.
    pub async fn shutdown_after(&mut self, keep: &str, within: Duration) -> Vec<&'static str> {
        let first = self
            .tasks
            .iter()
            .position(|t| t.name == keep)
            .map_or(0, |i| i + 1);
        self.stop_from(first, within).await
    }

    /// Stops every task left as [`Supervisor::shutdown_after`] does, within `within` for them
    /// all. Returns the names of those that had to be aborted.
    pub async fn shutdown(mut self, within: Duration) -> Vec<&'static str> {
        self.stop_from(0, within).await
    }

    /// Stops the tasks from index `first` on, last first, within `within` for them all.
    async fn stop_from(&mut self, first: usize, within: Duration) -> Vec<&'static str> {
        let deadline = tokio::time::Instant::now() + within;
        let mut aborted = Vec::new();
        while self.tasks.len() > first {
            let Some(task) = self.tasks.pop() else { break };
            let name = task.name;
            // Past the shared deadline a task still gets a moment to see its token: one held
            // up earlier must not get the others aborted unawares.
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(STOP_GRACE);
            if !stop_task(task, left).await {
                aborted.push(name);
            }
        }
        aborted
    }
}

/// Cancels `task`, waits up to `within` for it, aborts it past that.
async fn stop_task(task: Task, within: Duration) -> bool {
    task.stop.cancel();
    let mut handle = task.handle;
    let ended = tokio::time::timeout(within, &mut handle).await.is_ok();
    if !ended {
        tracing::warn!(
            task = task.name,
            "task did not stop within {within:?}; aborting it"
        );
        handle.abort();
    }
    lock(&task.record).state = TaskState::Stopped;
    ended
}

/// Runs attempts of task `name` until `stop` is cancelled, restarting each one that ends
/// before that after the policy's backoff.
async fn supervise<F, Fut>(
    name: &'static str,
    policy: RestartPolicy,
    mut attempt: F,
    record: Arc<Mutex<Record>>,
    stop: CancellationToken,
) where
    F: FnMut(CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut backoff = policy.initial_backoff;
    loop {
        let started = Instant::now();
        {
            let mut record = lock(&record);
            record.state = TaskState::Running;
            record.attempt_started = started;
        }
        // Its own tokio task: a panic ends the attempt, not the supervisor; and the attempt is
        // aborted with the supervisor when its owner gives up waiting.
        let mut run = AbortOnDropHandle::new(tokio::spawn(attempt(stop.child_token())));
        let outcome = tokio::select! {
            outcome = &mut run => outcome,
            () = stop.cancelled() => {
                // The attempt has its token: it ends on its own, and the owner bounds the wait.
                let _ = run.await;
                return;
            }
        };
        if stop.is_cancelled() {
            return;
        }
        let cause = match outcome {
            Ok(Ok(())) => "ended before the node stopped it".to_owned(),
            Ok(Err(error)) => format!("{error:#}"),
            Err(join) if join.is_panic() => {
                format!("panicked: {}", panic_message(&*join.into_panic()))
            }
            Err(join) => format!("aborted: {join}"),
        };
        let ran = started.elapsed();
        if ran >= policy.stable {
            backoff = policy.initial_backoff;
        }
        let restarts = {
            let mut record = lock(&record);
            record.state = TaskState::Restarting;
            record.restarts += 1;
            if ran >= policy.stable || record.failing_since.is_none() {
                record.failing_since = Some(started + ran);
            }
            record.last_error = Some(cause.clone());
            record.restarts
        };
        crate::admin::metrics::get().task_restarted(name);
        tracing::error!(
            task = name,
            error = cause,
            restarts,
            "task failed; restarting it in {backoff:?}"
        );
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

/// The text of a panic payload (`panic!("…")` gives a `&str` or a `String`).
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a non-text panic payload)".to_owned())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn fast() -> RestartPolicy {
        RestartPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(80),
            stable: Duration::from_secs(60),
            degraded_after: Duration::from_millis(200),
        }
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_task_that_panics_is_restarted_and_counted() {
        let mut tasks = Supervisor::new(fast());
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        tasks.spawn("flaky", move |shutdown| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if run == 0 {
                    panic!("boom on the first run");
                }
                shutdown.cancelled().await;
                Ok(())
            }
        });
        wait_for("the second run", || runs.load(Ordering::SeqCst) == 2).await;
        let health = tasks.health();
        wait_for("the running state", || {
            health.tasks()[0].state == TaskState::Running
        })
        .await;
        let task = &health.tasks()[0];
        assert_eq!(task.name, "flaky");
        assert_eq!(task.restarts, 1);
        assert_eq!(
            task.last_error.as_deref(),
            Some("panicked: boom on the first run")
        );
        assert!(health.degraded().is_none());
        // Running again, but not for long enough to count as healthy for readiness.
        let failing = health.failing();
        assert_eq!(failing.len(), 1, "{failing:?}");
        assert!(
            failing[0].starts_with("flaky running again for ")
                && failing[0]
                    .ends_with(" ms after 1 restart(s); last: panicked: boom on the first run"),
            "{failing:?}"
        );
        assert!(tasks.shutdown(Duration::from_secs(1)).await.is_empty());
        assert_eq!(health.tasks()[0].state, TaskState::Stopped);
    }

    #[tokio::test]
    async fn a_task_that_keeps_failing_backs_off_and_makes_the_node_degraded() {
        let mut tasks = Supervisor::new(fast());
        let starts = Arc::new(Mutex::new(Vec::new()));
        let log = starts.clone();
        tasks.spawn("broken", move |_| {
            lock(&log).push(Instant::now());
            async { anyhow::bail!("store unreachable") }
        });
        let health = tasks.health();
        wait_for("degraded", || health.degraded().is_some()).await;
        let reason = health.degraded().unwrap();
        assert!(reason.starts_with("broken failing for "), "{reason}");
        let failing = health.failing();
        assert_eq!(failing.len(), 1, "{failing:?}");
        assert!(failing[0].starts_with("broken "), "{failing:?}");
        assert!(failing[0].ends_with(": store unreachable"), "{failing:?}");
        assert!(reason.ends_with(": store unreachable"), "{reason}");
        let task = &health.tasks()[0];
        assert!(task.restarts >= 3, "{task:?}");
        assert!(task.failing_for_ms > 200, "{task:?}");
        // The gaps between attempts double up to the cap: 10, 20, 40, 80, 80 ms …
        let starts = lock(&starts).clone();
        let gaps: Vec<Duration> = starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.len() >= 3, "{gaps:?}");
        assert!(gaps[2] >= Duration::from_millis(40), "{gaps:?}");
        assert!(gaps[1] >= Duration::from_millis(20), "{gaps:?}");
        assert!(
            gaps.iter().all(|g| *g < Duration::from_millis(80 * 4)),
            "capped: {gaps:?}"
        );
        tasks.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_task_that_ends_before_it_is_stopped_has_failed_and_is_restarted() {
        let mut tasks = Supervisor::new(fast());
        let runs = Arc::new(AtomicU32::new(0));
        let counter = runs.clone();
        tasks.spawn("ends", move |shutdown| {
            let run = counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if run > 0 {
                    shutdown.cancelled().await;
                }
                Ok(())
            }
        });
        let health = tasks.health();
        wait_for("the second run", || runs.load(Ordering::SeqCst) == 2).await;
        let task = &health.tasks()[0];
        assert_eq!(task.restarts, 1);
        assert_eq!(
            task.last_error.as_deref(),
            Some("ended before the node stopped it")
        );
        tasks.shutdown(Duration::from_secs(1)).await;
    }

    #[test]
    fn a_task_state_of_a_newer_node_keeps_its_heartbeat_readable() {
        let task: TaskHealth =
            serde_json::from_str(r#"{"name":"x","state":"hibernating","restarts":0}"#).unwrap();
        assert_eq!(task.state, TaskState::Unknown);
    }

    #[tokio::test]
    async fn shutdown_stops_tasks_in_reverse_start_order_and_aborts_one_that_hangs() {
        let mut tasks = Supervisor::new(fast());
        let stopped = Arc::new(Mutex::new(Vec::new()));
        for name in ["nats", "membership", "reconciler", "heartbeat"] {
            let stopped = stopped.clone();
            tasks.spawn(name, move |shutdown| {
                let stopped = stopped.clone();
                async move {
                    shutdown.cancelled().await;
                    lock(&stopped).push(name);
                    Ok(())
                }
            });
        }
        tasks.spawn("stuck", |_| async {
            std::future::pending::<()>().await;
            Ok(())
        });
        let health = tasks.health();
        assert!(tasks.stop("heartbeat", Duration::from_secs(1)).await);
        assert_eq!(*lock(&stopped), ["heartbeat"]);
        let aborted = tasks
            .shutdown_after("membership", Duration::from_millis(100))
            .await;
        assert_eq!(aborted, ["stuck"]);
        assert_eq!(*lock(&stopped), ["heartbeat", "reconciler"]);
        assert!(tasks.shutdown(Duration::from_millis(100)).await.is_empty());
        assert_eq!(
            *lock(&stopped),
            ["heartbeat", "reconciler", "membership", "nats"]
        );
        assert!(health.tasks().iter().all(|t| t.state == TaskState::Stopped));
    }
}
