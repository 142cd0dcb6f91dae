//! Heartbeats and membership: every node publishes what it is and runs every few seconds
//! (`host_heartbeat`), and `host_started` / `host_stopped` once; every node keeps the hosts it
//! has heard from, and forgets one not heard from for [`MISSED_HEARTBEATS`] of its intervals.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::nats::subjects;
use crate::nats::uplink::Uplink;
use crate::reconciler::plan::Failure;
use crate::supervisor::TaskHealth;

/// Heartbeats a host may miss before the others consider it gone.
pub const MISSED_HEARTBEATS: u32 = 3;

/// What a node says of itself: the payload of every host event and an entry of
/// `lattice get hosts` (`PROTOCOL.md` §Events).
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

/// The hosts this node has heard from.
#[derive(Default)]
pub struct Membership {
    hosts: Mutex<HashMap<String, Seen>>,
    changed: Notify,
}

struct Seen {
    info: HostInfo,
    at: Instant,
}

impl Membership {
    /// Records a heartbeat or `host_started`; wakes [`Membership::changed`] when the host is
    /// new or its labels, components or failures changed.
    pub fn observe(&self, info: HostInfo) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let same = hosts.get(&info.id).is_some_and(|seen| {
            seen.info.labels == info.labels
                && seen.info.components == info.components
                && seen.info.failures == info.failures
        });
        hosts.insert(
            info.id.clone(),
            Seen {
                info,
                at: Instant::now(),
            },
        );
        if !same {
            self.changed.notify_one();
        }
    }

    /// Forgets host `id` (`host_stopped`).
    pub fn forget(&self, id: &str) {
        let removed = self
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if removed.is_some() {
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

    /// The live hosts, by name then id, with uptimes brought to now.
    pub fn hosts(&self) -> Vec<HostInfo> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.retain(|_, seen| {
            let interval = Duration::from_millis(seen.info.heartbeat_interval_ms.max(100));
            seen.at.elapsed() <= interval * MISSED_HEARTBEATS
        });
        let mut live: Vec<HostInfo> = hosts
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

    /// Follows the host `events` (from [`Membership::subscribe`]) until `shutdown`; tells
    /// `on_join` when a host starts.
    ///
    /// # Errors
    /// The subscription ended (the client closed it) before `shutdown`.
    pub async fn follow(
        &self,
        mut events: async_nats::Subscriber,
        on_join: &Notify,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        {
            loop {
                let message = tokio::select! {
                    message = events.next() => match message {
                        Some(message) => message,
                        None => anyhow::bail!("the host events subscription ended"),
                    },
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
                let info: HostInfo = match serde_json::from_slice(&message.payload) {
                    Ok(info) => info,
                    Err(e) => {
                        tracing::debug!(subject = %message.subject, error = %e, "malformed host event ignored");
                        continue;
                    }
                };
                match event {
                    subjects::HOST_HEARTBEAT => self.observe(info),
                    subjects::HOST_STARTED => {
                        tracing::info!(id = info.id, name = info.name, "host joined the lattice");
                        self.observe(info);
                        // The newcomer learns of this node at once, not a heartbeat later.
                        on_join.notify_one();
                    }
                    subjects::HOST_STOPPED => {
                        tracing::info!(id = info.id, name = info.name, "host left the lattice");
                        self.forget(&info.id);
                    }
                    _ => {}
                }
            }
        }
    }
}

/// Publishes host events of this node.
pub struct Heartbeat {
    client: async_nats::Client,
    lattice: String,
}

impl Heartbeat {
    /// Events of this node on `client`, for `lattice`.
    pub fn new(client: async_nats::Client, lattice: &str) -> Heartbeat {
        Heartbeat {
            client,
            lattice: lattice.to_owned(),
        }
    }

    /// Publishes `info` as `event` (one of the `subjects::HOST_*`).
    pub async fn publish(&self, event: &str, info: &HostInfo) {
        let subject = subjects::event(&self.lattice, event);
        let payload = serde_json::to_vec(info).unwrap_or_default();
        if let Err(e) = self.client.publish(subject.clone(), payload.into()).await {
            tracing::warn!(subject, error = %e, "publishing a host event failed");
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
}
