//! The mini reconciler (wadm's job, built in, without a leader): desired state (manifests in
//! the lattice's KV bucket, mirrored in sled) and observed state (heartbeats) → this node's
//! share of the replicas, started and stopped here, and every app's routes on the ingress.
//!
//! `manifest` parses wadm manifests; `deploy` validates and stores them (the control API's
//! `app.deploy`, the config-dir `watcher`); `preload` loads the config dir's code while the
//! node starts; `store` mirrors the KV; `artifacts` moves component bytes by digest; `plan` is
//! the pure placement every node computes alike; [`Deployer`] makes this node run its share;
//! [`Reconciler`] loops over all of it, level-triggered.
//!
//! Metrics: the loop counts its passes (`lattice_reconcile_passes_total`); the [`Deployer`]
//! counts what it did to replicas here (`lattice_reconcile_actions_total{action}`: started,
//! stopped, updated, failed to start, as each start ends) and sets `lattice_replicas` of each
//! component whenever its replicas here change (0 once it goes).

pub mod artifacts;
pub mod deploy;
mod deployer;
pub mod manifest;
pub mod oci;
pub mod plan;
pub mod preload;
pub mod store;
pub mod watcher;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::lattice::membership::{HostInfo, Membership};
use crate::nats::subjects;
use artifacts::Artifacts;
pub use deploy::{AppStore, DeployError, DeployOutcome, DeployRequest};
pub use deployer::Deployer;
pub use manifest::{FieldError, Manifest};
use plan::{AppStatus, Running};
use store::{Desired, Mirror};

/// The reconcile loop of one node.
#[derive(Clone)]
pub struct Reconciler {
    /// This node's id.
    pub me: String,
    /// Runs this node's share.
    pub deployer: Arc<Deployer>,
    /// The desired state.
    pub mirror: Arc<Mirror>,
    /// The live hosts.
    pub membership: Arc<Membership>,
    /// This node as it describes itself now.
    pub local: Arc<dyn Fn() -> HostInfo + Send + Sync>,
    /// Publishes `app_status` events.
    pub client: async_nats::Client,
    /// Lattice name.
    pub lattice: String,
    /// Interval of the level-triggered pass when nothing wakes it earlier.
    pub tick: Duration,
    /// Code cache dir, pruned of unused artifacts' code.
    pub code_cache: std::path::PathBuf,
    /// This node's artifact cache.
    pub artifacts: Artifacts,
}

impl Reconciler {
    /// The live hosts: those heard from, with this node as it is now.
    pub fn hosts(&self) -> Vec<HostInfo> {
        self.membership.hosts_with((self.local)())
    }

    /// Reconciles until `shutdown`: after `start` (the config dir's first pass) and a short
    /// wait to hear from the other hosts, then whenever the desired state or a host changes,
    /// and every `tick`. `first_pass` is told once the starts of the first pass have ended.
    /// `beat` beats at the top of every round of the loop (the systemd watchdog's proof that
    /// the reconciler goes round, [`crate::admin::systemd`]).
    pub async fn run(
        self,
        start: tokio::sync::oneshot::Receiver<()>,
        first_pass: tokio::sync::oneshot::Sender<()>,
        beat: crate::admin::liveness::Beat,
        shutdown: CancellationToken,
    ) {
        tokio::select! {
            _ = start => {}
            () = shutdown.cancelled() => return,
        }
        let mut desired_rx = self.mirror.subscribe();
        let mut surplus: BTreeMap<(String, String), Instant> = BTreeMap::new();
        let mut statuses: BTreeMap<String, AppStatus> = BTreeMap::new();
        let mut first_pass = Some(first_pass);
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = true;
        // A start that ends (they run on their own, see `Deployer`) wakes the next pass, which
        // routes to it.
        let started = self.deployer.on_started();
        loop {
            beat.beat();
            let desired = self.mirror.desired();
            desired_rx.mark_unchanged();
            let hosts = self.hosts();
            let placement = store::place(&desired, &hosts, &self.me);
            let now = Instant::now();
            let running: BTreeMap<(String, String), Running> = self
                .deployer
                .running()
                .await
                .into_iter()
                .map(|(key, (version, replicas))| {
                    let placed_here = placement
                        .get(&key)
                        .is_some_and(|p| p.hosts.contains_key(&self.me));
                    let surplus_since = if placed_here {
                        surplus.remove(&key);
                        None
                    } else {
                        Some(*surplus.entry(key.clone()).or_insert(now))
                    };
                    (
                        key,
                        Running {
                            version,
                            replicas,
                            surplus_since,
                        },
                    )
                })
                .collect();
            surplus.retain(|k, _| running.contains_key(k));
            let share = plan::local_share(&self.me, &desired, &placement, &hosts, &running, now);
            self.deployer.apply(&desired, &share).await;
            crate::admin::metrics::get().reconcile_pass();
            // The first pass is done once the starts it began have ended (each under its
            // deadline), so the node is up with its share running; later passes go on meanwhile.
            if first_pass.is_some()
                && self.deployer.idle().await
                && let Some(done) = first_pass.take()
            {
                let _ = done.send(());
            }
            // Hosts read again: this node's own inventory has just changed.
            self.report(&desired, &placement, &mut statuses).await;
            if std::mem::take(&mut prune) {
                let referenced = plan::referenced_digests(&desired);
                self.artifacts.prune_cache(&referenced, &self.code_cache);
            }
            tokio::select! {
                changed = desired_rx.changed() => {
                    if changed.is_err() { return; }
                    prune = true;
                }
                () = self.membership.changed() => {}
                () = started.notified() => {}
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Publishes the state of every app whose state changed, for the apps this node reports.
    async fn report(
        &self,
        desired: &Desired,
        placement: &plan::Placement,
        last: &mut BTreeMap<String, AppStatus>,
    ) {
        let hosts = &self.hosts();
        let gone: Vec<String> = last
            .keys()
            .filter(|name| !desired.contains_key(*name))
            .cloned()
            .collect();
        for name in gone {
            if let Some(mut status) = last.remove(&name) {
                status.state = plan::AppState::Undeployed;
                status.reason.clear();
                status.components.clear();
                self.publish_status(hosts, &status).await;
            }
        }
        for name in desired.keys() {
            let Some(status) = plan::status(name, desired, placement, hosts) else {
                continue;
            };
            if last.get(name) == Some(&status) {
                continue;
            }
            self.publish_status(hosts, &status).await;
            last.insert(name.clone(), status);
        }
    }

    /// Publishes `status` as an `app_status` event if this node reports for its app.
    async fn publish_status(&self, hosts: &[HostInfo], status: &AppStatus) {
        let reporter = plan::reporter(&status.name, hosts).map(|h| h.id.as_str());
        if reporter != Some(self.me.as_str()) {
            return;
        }
        tracing::info!(
            app = status.name,
            version = status.version,
            state = status.state.as_str(),
            reason = status.reason,
            "app status"
        );
        let subject = subjects::event(&self.lattice, subjects::APP_STATUS);
        match serde_json::to_vec(status) {
            Ok(payload) => {
                if let Err(e) = self.client.publish(subject, payload.into()).await {
                    tracing::debug!(error = %e, "publishing app status");
                }
            }
            Err(e) => tracing::debug!(error = %e, "encoding app status"),
        }
    }
}
