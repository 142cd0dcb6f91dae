//! Opt-in instance reuse: the component config keys that turn it on and bound it
//! ([`Reuse::from_config`], named after `wasmtime serve`'s flags), and the idle instances a
//! component keeps between requests ([`IdlePool`]), dropped after their idle timeout, when the
//! component goes away, or when another component finds the node's pooling allocator full
//! ([`IdleRegistry::evict_oldest`]).
//!
//! Off by default: every request gets a fresh instance. With reuse on, an instance that
//! answered cleanly goes back to its component's idle instances and serves a later request,
//! until it has served its [`Reuse::max_requests`]. An instance that trapped, ran past its
//! deadline, set no response or whose response body did not reach its end is dropped, never
//! kept (`http.rs` decides; this file only keeps what it is given).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

// tokio's: the same clock as its timers (and their paused clock in the unit tests).
use tokio::time::Instant;

/// Component config key: requests one instance serves before it is dropped, `1` to
/// [`MAX_REUSE_COUNT`]; `1` (the default) is a fresh instance per request. As `wasmtime serve
/// --max-instance-reuse-count`.
pub const REUSE_COUNT_KEY: &str = "lattice.max-instance-reuse-count";
/// Component config key: requests one instance serves at once. Only `1` is accepted: a
/// `wasi:http@0.2` `incoming-handler.handle` is a synchronous export, so an instance runs one
/// request at a time (concurrent calls would queue behind it, not run beside it). As
/// `wasmtime serve --max-instance-concurrent-reuse-count`, whose default for WASIp2 is 1 too.
pub const CONCURRENT_REUSE_KEY: &str = "lattice.max-instance-concurrent-reuse-count";
/// Component config key: how long an idle kept instance waits for a request before it is
/// dropped and its pool slot freed, humantime (`500ms`, `5s`), more than 0 and at most
/// [`MAX_IDLE_TIMEOUT`]; default [`DEFAULT_IDLE_TIMEOUT`]. As `wasmtime serve
/// --idle-instance-timeout`.
pub const IDLE_TIMEOUT_KEY: &str = "lattice.idle-instance-timeout";

/// Most requests [`REUSE_COUNT_KEY`] may allow one instance.
pub const MAX_REUSE_COUNT: u32 = 1_000_000;
/// Longest [`IDLE_TIMEOUT_KEY`].
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// [`IDLE_TIMEOUT_KEY`] when it is not set (`wasmtime serve`'s and Spin's default).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(1);

/// The config keys lattice reads from a component's config (all others are only the
/// component's `wasi:config`).
pub const REUSE_KEYS: [&str; 3] = [REUSE_COUNT_KEY, CONCURRENT_REUSE_KEY, IDLE_TIMEOUT_KEY];

/// How a component's instances are reused, when they are ([`Reuse::from_config`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reuse {
    /// Requests one instance serves before it is dropped, at least 2.
    pub max_requests: u32,
    /// How long an idle instance is kept.
    pub idle_timeout: Duration,
}

/// A reuse key of a component's config has a value lattice refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config key {key} = {value:?}: {reason}")]
pub struct ReuseConfigError {
    /// The key, one of [`REUSE_KEYS`].
    pub key: &'static str,
    /// Its value, as given.
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

impl Reuse {
    /// The reuse `config` (a component's config properties) asks for; `None` when reuse is
    /// off ([`REUSE_COUNT_KEY`] absent or `1`). Every reuse key is checked, whether reuse is on
    /// or not.
    ///
    /// # Errors
    /// [`ReuseConfigError`] for the first key whose value is not a number, out of range, or
    /// not a humantime duration.
    pub fn from_config(
        config: &BTreeMap<String, String>,
    ) -> Result<Option<Reuse>, ReuseConfigError> {
        let refuse = |key: &'static str, value: &str, reason: String| ReuseConfigError {
            key,
            value: value.to_owned(),
            reason,
        };
        let max_requests = match config.get(REUSE_COUNT_KEY) {
            None => 1,
            Some(value) => match value.trim().parse::<u32>() {
                Ok(n @ 1..=MAX_REUSE_COUNT) => n,
                Ok(_) => {
                    return Err(refuse(
                        REUSE_COUNT_KEY,
                        value,
                        format!(
                            "must be from 1 (a fresh instance per request) to {MAX_REUSE_COUNT}"
                        ),
                    ));
                }
                Err(e) => {
                    return Err(refuse(
                        REUSE_COUNT_KEY,
                        value,
                        format!("not a whole number of requests ({e})"),
                    ));
                }
            },
        };
        if let Some(value) = config.get(CONCURRENT_REUSE_KEY)
            && value.trim() != "1"
        {
            return Err(refuse(
                CONCURRENT_REUSE_KEY,
                value,
                "only 1 is supported: a wasi:http@0.2 component's handler is a synchronous \
                 export, so one instance serves one request at a time (more requests at once \
                 get more instances, within the component's concurrency)"
                    .to_owned(),
            ));
        }
        let idle_timeout = match config.get(IDLE_TIMEOUT_KEY) {
            None => DEFAULT_IDLE_TIMEOUT,
            Some(value) => match humantime::parse_duration(value.trim()) {
                Ok(d) if !d.is_zero() && d <= MAX_IDLE_TIMEOUT => d,
                Ok(_) => {
                    return Err(refuse(
                        IDLE_TIMEOUT_KEY,
                        value,
                        format!(
                            "must be more than 0 and at most {}",
                            humantime::format_duration(MAX_IDLE_TIMEOUT)
                        ),
                    ));
                }
                Err(e) => {
                    return Err(refuse(
                        IDLE_TIMEOUT_KEY,
                        value,
                        format!("not a duration such as 500ms or 5s ({e})"),
                    ));
                }
            },
        };
        Ok((max_requests > 1).then_some(Reuse {
            max_requests,
            idle_timeout,
        }))
    }
}

/// The idle instances of one component, most recently used taken first (its memory is the
/// warmest), oldest evicted first. Each is dropped once idle for the timeout (a task sleeps
/// until the oldest is due while any are kept), when the pool is closed, or when
/// [`IdleRegistry::evict_oldest`] picks it.
pub(super) struct IdlePool<T> {
    idle_timeout: Duration,
    state: Mutex<PoolState<T>>,
}

struct PoolState<T> {
    /// Oldest at the front; each with when it became idle.
    idle: VecDeque<(Instant, T)>,
    /// Whether the task dropping timed-out instances runs.
    reaper: bool,
    /// The component is gone: nothing is kept any more.
    closed: bool,
}

impl<T: Send + 'static> IdlePool<T> {
    /// An empty pool keeping instances `idle_timeout` at most.
    pub(super) fn new(idle_timeout: Duration) -> Arc<IdlePool<T>> {
        Arc::new(IdlePool {
            idle_timeout,
            state: Mutex::new(PoolState {
                idle: VecDeque::new(),
                reaper: false,
                closed: false,
            }),
        })
    }

    /// The most recently kept instance not yet timed out, if any.
    pub(super) fn take(&self) -> Option<T> {
        let mut state = self.lock();
        let (since, instance) = state.idle.pop_back()?;
        if since.elapsed() < self.idle_timeout {
            return Some(instance);
        }
        // All others are older still: the reaper is about to drop them anyway.
        let expired: Vec<_> = state.idle.drain(..).collect();
        drop(state);
        drop((instance, expired));
        None
    }

    /// Keeps `instance` for a later request, unless the pool is closed (then it is dropped).
    /// Must run inside a tokio runtime: it may start the task that drops timed-out instances.
    pub(super) fn put(self: &Arc<Self>, instance: T) {
        let mut state = self.lock();
        if state.closed {
            drop(state);
            drop(instance);
            return;
        }
        state.idle.push_back((Instant::now(), instance));
        if !state.reaper {
            state.reaper = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }

    /// Drops every idle instance, and every one offered later.
    pub(super) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let idle: Vec<_> = state.idle.drain(..).collect();
        drop(state);
        drop(idle);
    }

    /// Idle instances kept now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().idle.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState<T>> {
        // A panic while holding the lock leaves nothing half-done: the queue is always whole.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drops the instances idle for the timeout; when the next one is due, or `None` (and the
    /// reaper marked stopped) when none is left.
    fn drop_expired(&self) -> Option<Instant> {
        let mut state = self.lock();
        let now = Instant::now();
        let mut expired = Vec::new();
        while let Some((since, _)) = state.idle.front() {
            if now.duration_since(*since) < self.idle_timeout {
                break;
            }
            expired.extend(state.idle.pop_front());
        }
        let next = state
            .idle
            .front()
            .map(|(since, _)| *since + self.idle_timeout);
        if next.is_none() {
            state.reaper = false;
        }
        drop(state);
        drop(expired);
        next
    }
}

/// Drops `pool`'s instances as they time out, until none is kept or the pool is gone.
async fn reap<T: Send + 'static>(pool: Weak<IdlePool<T>>) {
    loop {
        let Some(next) = pool.upgrade().and_then(|pool| pool.drop_expired()) else {
            return;
        };
        tokio::time::sleep_until(next).await;
    }
}

/// What [`IdleRegistry`] needs of a pool, whatever it keeps.
trait Evict: Send + Sync {
    /// When its oldest idle instance became idle.
    fn oldest(&self) -> Option<Instant>;
    /// Drops its oldest idle instance; whether there was one.
    fn evict_oldest(&self) -> bool;
}

impl<T: Send + 'static> Evict for IdlePool<T> {
    fn oldest(&self) -> Option<Instant> {
        self.lock().idle.front().map(|(since, _)| *since)
    }

    fn evict_oldest(&self) -> bool {
        let oldest = self.lock().idle.pop_front();
        let evicted = oldest.is_some();
        drop(oldest);
        evicted
    }
}

/// The idle pools of all components of the node, so that a component finding the pooling
/// allocator full can take a slot an idle instance holds: kept instances never starve other
/// components of pool slots. Cheap to clone.
#[derive(Clone, Default)]
pub(super) struct IdleRegistry {
    pools: Arc<Mutex<Vec<Weak<dyn Evict>>>>,
}

impl IdleRegistry {
    /// Adds `pool`; it leaves the registry when dropped.
    pub(super) fn register<T: Send + 'static>(&self, pool: &Arc<IdlePool<T>>) {
        let pool: Arc<dyn Evict> = pool.clone();
        let mut pools = self.lock();
        pools.retain(|p| p.strong_count() > 0);
        pools.push(Arc::downgrade(&pool));
    }

    /// Drops the node's oldest idle instance, of any component; whether there was one. The
    /// pools are picked under the registry's lock and evicted after it (dropping a store is
    /// slow, and every component's admission may need the lock); a pool emptied meanwhile (its
    /// instance taken or timed out) gives way to the next oldest.
    pub(super) fn evict_oldest(&self) -> bool {
        let pools: Vec<Arc<dyn Evict>> = {
            let mut pools = self.lock();
            pools.retain(|p| p.strong_count() > 0);
            pools.iter().filter_map(Weak::upgrade).collect()
        };
        let mut candidates: Vec<_> = pools
            .into_iter()
            .filter_map(|pool| Some((pool.oldest()?, pool)))
            .collect();
        candidates.sort_by_key(|(since, _)| *since);
        candidates.into_iter().any(|(_, pool)| pool.evict_oldest())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn Evict>>> {
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reuse_is_off_unless_asked_for() {
        assert_eq!(Reuse::from_config(&config(&[])), Ok(None));
        assert_eq!(
            Reuse::from_config(&config(&[("greeting", "hi"), (REUSE_COUNT_KEY, "1")])),
            Ok(None)
        );
        // The other keys alone turn nothing on, but are checked.
        assert_eq!(
            Reuse::from_config(&config(&[(IDLE_TIMEOUT_KEY, "5s")])),
            Ok(None)
        );
        assert_eq!(
            Reuse::from_config(&config(&[(IDLE_TIMEOUT_KEY, "soon")]))
                .unwrap_err()
                .key,
            IDLE_TIMEOUT_KEY
        );
    }

    #[test]
    fn the_keys_bound_reuse() {
        assert_eq!(
            Reuse::from_config(&config(&[(REUSE_COUNT_KEY, "128")])),
            Ok(Some(Reuse {
                max_requests: 128,
                idle_timeout: DEFAULT_IDLE_TIMEOUT
            }))
        );
        assert_eq!(
            Reuse::from_config(&config(&[
                (REUSE_COUNT_KEY, " 2 "),
                (CONCURRENT_REUSE_KEY, "1"),
                (IDLE_TIMEOUT_KEY, "250ms"),
            ])),
            Ok(Some(Reuse {
                max_requests: 2,
                idle_timeout: Duration::from_millis(250)
            }))
        );
    }

    #[test]
    fn bad_values_are_refused_naming_the_key_and_reason() {
        let cases = [
            (REUSE_COUNT_KEY, "0", "must be from 1"),
            (REUSE_COUNT_KEY, "1000001", "to 1000000"),
            (REUSE_COUNT_KEY, "-3", "not a whole number"),
            (REUSE_COUNT_KEY, "many", "not a whole number"),
            (CONCURRENT_REUSE_KEY, "16", "only 1 is supported"),
            (CONCURRENT_REUSE_KEY, "0", "only 1 is supported"),
            (IDLE_TIMEOUT_KEY, "0s", "more than 0"),
            (IDLE_TIMEOUT_KEY, "2h", "at most 1h"),
            (IDLE_TIMEOUT_KEY, "5", "not a duration"),
        ];
        for (key, value, reason) in cases {
            let error =
                Reuse::from_config(&config(&[(REUSE_COUNT_KEY, "8"), (key, value)])).unwrap_err();
            assert_eq!((error.key, error.value.as_str()), (key, value));
            let text = error.to_string();
            assert!(
                text.contains(key) && text.contains(value) && text.contains(reason),
                "{text}"
            );
        }
    }

    /// An instance that says when it is dropped.
    struct Probe(Arc<std::sync::atomic::AtomicUsize>);

    impl Drop for Probe {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_instances_are_taken_newest_first_and_dropped_after_the_timeout() {
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = || dropped.load(std::sync::atomic::Ordering::SeqCst);
        let pool = IdlePool::new(Duration::from_secs(5));
        pool.put((1, Probe(dropped.clone())));
        tokio::time::advance(Duration::from_secs(1)).await;
        pool.put((2, Probe(dropped.clone())));
        let (newest, probe) = pool.take().unwrap();
        assert_eq!(newest, 2);
        pool.put((newest, probe));
        assert_eq!(pool.len(), 2);
        // The first is due 5 s after it was kept, the second a second later.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(count(), 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!((count(), pool.len()), (1, 1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!((count(), pool.len()), (2, 0));
        assert!(pool.take().is_none());
        // Kept again after the reaper stopped: a new one starts.
        pool.put((3, Probe(dropped.clone())));
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!((count(), pool.len()), (3, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_pool_keeps_nothing() {
        let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let pool = IdlePool::new(Duration::from_secs(5));
        pool.put(Probe(dropped.clone()));
        pool.close();
        pool.put(Probe(dropped.clone()));
        assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert!(pool.take().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_registry_evicts_the_oldest_idle_instance_of_any_component() {
        let registry = IdleRegistry::default();
        let (a, b) = (
            IdlePool::new(Duration::from_secs(60)),
            IdlePool::new(Duration::from_secs(60)),
        );
        registry.register(&a);
        registry.register(&b);
        a.put("a1");
        tokio::time::advance(Duration::from_secs(1)).await;
        b.put("b1");
        tokio::time::advance(Duration::from_secs(1)).await;
        a.put("a2");
        assert!(registry.evict_oldest());
        assert_eq!((a.len(), b.len()), (1, 1));
        assert!(registry.evict_oldest());
        assert_eq!((a.len(), b.len()), (1, 0));
        assert_eq!(a.take(), Some("a2"));
        assert!(!registry.evict_oldest());
        drop(a);
        assert!(
            !registry.evict_oldest(),
            "a dropped pool leaves the registry"
        );
    }
}
