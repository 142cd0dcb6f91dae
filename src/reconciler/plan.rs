//! Placement without a leader: a pure function of (desired state, live hosts) that every node
//! computes alike, so each starts and stops only its own replicas (DESIGN.md §4).
//!
//! Scalers keep wadm's semantics (`crates/wadm/src/scaler/spreadscaler/mod.rs`): a
//! `spreadscaler` gives each `spread` entry `floor(instances × weight / Σweights)` replicas and
//! hands the remainder out one by one to the entries in order of descending weight; an entry
//! with no eligible host is not placed elsewhere, and the app fails with the reason. Within an
//! entry the replicas are spread evenly over the hosts matching all its requirements, the order
//! of hosts chosen by rendezvous hashing so it stays stable as hosts come and go. A
//! `daemonscaler` runs `instances` replicas on every host matching any entry (every host
//! without entries).
//!
//! The cost is O(spread entries × hosts) per component whatever `instances` says (the
//! manifest bounds both, `manifest::MAX_INSTANCES` and `MAX_SPREAD_ENTRIES`), and counts are
//! summed in `u64`, so no manifest or heartbeat can make a node spin or overflow here.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::{Scaler, Spread};
use super::store::Desired;
use crate::lattice::membership::HostInfo;

/// Default `weight` of a spread entry (wadm's `DEFAULT_SPREAD_WEIGHT`).
pub const DEFAULT_WEIGHT: u32 = 100;

/// Where one component's replicas go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ComponentPlacement {
    /// Replicas the scaler asks for in all (placed or not); a daemonscaler's summed over the
    /// hosts, hence `u64`.
    pub desired: u64,
    /// Replicas per host id.
    pub hosts: BTreeMap<String, u32>,
    /// Why some replicas have no host, one line per spread entry.
    pub unplaced: Vec<String>,
}

/// Placement of every component of every app: (app, component) → placement.
pub type Placement = BTreeMap<(String, String), ComponentPlacement>;

/// Places every component of `desired` on `hosts`.
pub fn place(desired: &Desired, hosts: &[HostInfo]) -> Placement {
    let mut placement = Placement::new();
    for (app, entry) in desired {
        let Ok(manifest) = &entry.manifest else {
            continue;
        };
        for spec in &manifest.components {
            placement.insert(
                (app.clone(), spec.name.clone()),
                place_component(app, &spec.name, &spec.scaler, hosts),
            );
        }
    }
    placement
}

/// Places one component's replicas on `hosts`.
pub fn place_component(
    app: &str,
    component: &str,
    scaler: &Scaler,
    hosts: &[HostInfo],
) -> ComponentPlacement {
    let mut out = ComponentPlacement::default();
    match scaler {
        Scaler::Spread { instances, spread } => {
            out.desired = u64::from(*instances);
            for (entry, count) in spread_counts(*instances, spread) {
                if count == 0 {
                    continue;
                }
                let mut eligible: Vec<&HostInfo> =
                    hosts.iter().filter(|h| matches(&entry, h)).collect();
                if eligible.is_empty() {
                    out.unplaced.push(format!(
                        "component {component}: {} (spread {}; {count} replicas unplaced)",
                        no_match(&entry),
                        entry.name
                    ));
                    continue;
                }
                let key = format!("{app}/{component}/{}", entry.name);
                eligible.sort_by_cached_key(|h| std::cmp::Reverse(rendezvous(&key, &h.id)));
                let n = eligible.len() as u32;
                for (i, host) in eligible.iter().enumerate() {
                    let share = count / n + u32::from((i as u32) < count % n);
                    if share > 0 {
                        *out.hosts.entry(host.id.clone()).or_default() += share;
                    }
                }
            }
        }
        Scaler::Daemon { instances, spread } => {
            for host in hosts {
                if *instances > 0 && (spread.is_empty() || spread.iter().any(|s| matches(s, host)))
                {
                    out.hosts.insert(host.id.clone(), *instances);
                    out.desired += u64::from(*instances);
                }
            }
            if out.hosts.is_empty() && *instances > 0 {
                let reasons: Vec<String> = spread.iter().map(no_match).collect();
                out.unplaced.push(format!(
                    "component {component}: {}",
                    if reasons.is_empty() {
                        "no node in the lattice".to_owned()
                    } else {
                        reasons.join(" or ")
                    }
                ));
            }
        }
    }
    out
}

/// wadm's `compute_spread`: the replicas of each entry, entries by descending weight.
pub fn spread_counts(instances: u32, spread: &[Spread]) -> Vec<(Spread, u32)> {
    if spread.is_empty() {
        let anywhere = Spread {
            name: "default".to_owned(),
            requirements: BTreeMap::new(),
            weight: None,
        };
        return vec![(anywhere, instances)];
    }
    let mut entries: Vec<Spread> = spread.to_vec();
    // A stable sort: equal weights keep the manifest's order.
    entries.sort_by_key(|s| std::cmp::Reverse(s.weight.unwrap_or(DEFAULT_WEIGHT)));
    let total: u64 = entries
        .iter()
        .map(|s| u64::from(s.weight.unwrap_or(DEFAULT_WEIGHT)))
        .sum();
    let mut counts: Vec<(Spread, u32)> = entries
        .into_iter()
        .map(|s| {
            let share = (u64::from(instances) * u64::from(s.weight.unwrap_or(DEFAULT_WEIGHT)))
                .checked_div(total)
                .unwrap_or(0);
            (s, u32::try_from(share).unwrap_or(u32::MAX))
        })
        .collect();
    // The remainder, one each by descending weight: fewer than the entries, unless every
    // weight is 0 (then wadm goes round and round, i.e. an even split, computed here at once).
    let assigned: u64 = counts.iter().map(|(_, c)| u64::from(*c)).sum();
    let left = u64::from(instances).saturating_sub(assigned);
    let n = counts.len() as u64;
    for (i, (_, count)) in counts.iter_mut().enumerate() {
        let extra = left / n + u64::from((i as u64) < left % n);
        *count = u32::try_from(u64::from(*count) + extra).unwrap_or(u32::MAX);
    }
    counts
}

fn matches(spread: &Spread, host: &HostInfo) -> bool {
    spread
        .requirements
        .iter()
        .all(|(k, v)| host.labels.get(k) == Some(v))
}

fn no_match(spread: &Spread) -> String {
    let requirements: Vec<String> = spread
        .requirements
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    match requirements.len() {
        0 => "no node in the lattice".to_owned(),
        1 => format!("no node matches requirement {}", requirements[0]),
        _ => format!("no node matches requirements {}", requirements.join(", ")),
    }
}

/// Rendezvous (highest random weight) score of `host` for `key`: sha256, so every node and
/// every version of lattice computes the same.
fn rendezvous(key: &str, host: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(key.as_bytes());
    hasher.update([0]);
    hasher.update(host.as_bytes());
    hasher.finalize().into()
}

/// The host that does lattice-wide chore `task` (report an app's state changes, sweep the
/// artifacts): the live host with the highest rendezvous score for it, so exactly one does
/// while the hosts agree on who is live.
pub fn reporter<'a>(task: &str, hosts: &'a [HostInfo]) -> Option<&'a HostInfo> {
    hosts
        .iter()
        .max_by_key(|h| rendezvous(&format!("chore/{task}"), &h.id))
}

/// A component replica set that failed on a node, as the node reports it in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// App.
    pub app: String,
    /// Component, or empty for the app's routes.
    #[serde(default)]
    pub component: String,
    /// The app version it was for.
    pub version: String,
    /// Why.
    pub reason: String,
}

/// An app's state (`lattice app status`, `app_status` events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    /// App name.
    pub name: String,
    /// Deployed version.
    pub version: String,
    /// `deployed`, `reconciling` or `failed`.
    pub state: AppState,
    /// Why it is not `deployed`; empty when it is.
    pub reason: String,
    /// Per component: desired and running replicas, and where they run.
    pub components: Vec<ComponentStatus>,
}

/// The state of an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppState {
    /// Every component runs its desired replicas of the deployed version.
    Deployed,
    /// On its way: replicas starting, stopping or being replaced.
    Reconciling,
    /// Something cannot be done until the lattice changes (no eligible node, a replica that
    /// does not start): the reason says what.
    Failed,
    /// Removed from the lattice (in `app_status` events only).
    Undeployed,
}

impl AppState {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AppState::Deployed => "deployed",
            AppState::Reconciling => "reconciling",
            AppState::Failed => "failed",
            AppState::Undeployed => "undeployed",
        }
    }
}

/// One component's part of an [`AppStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// Component name.
    pub name: String,
    /// Replicas the scaler asks for.
    pub desired: u64,
    /// Replicas of the deployed version running on live nodes.
    pub running: u64,
    /// The nodes running them.
    pub nodes: Vec<NodeReplicas>,
}

/// Replicas on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReplicas {
    /// Node id.
    pub id: String,
    /// Node name.
    pub name: String,
    /// Replicas there.
    pub replicas: u64,
}

/// The state of app `name` from the desired state, its placement and what the live `hosts`
/// report.
pub fn status(
    name: &str,
    desired: &Desired,
    placement: &Placement,
    hosts: &[HostInfo],
) -> Option<AppStatus> {
    let app = desired.get(name)?;
    let version = app.record.deployed.clone();
    let manifest = match &app.manifest {
        Ok(manifest) => manifest,
        Err(reason) => {
            return Some(AppStatus {
                name: name.to_owned(),
                version,
                state: AppState::Failed,
                reason: reason.clone(),
                components: Vec::new(),
            });
        }
    };
    let mut failed = Vec::new();
    let mut pending = Vec::new();
    let mut components = Vec::new();
    for spec in &manifest.components {
        let key = (name.to_owned(), spec.name.clone());
        let place = placement.get(&key).cloned().unwrap_or_default();
        failed.extend(place.unplaced.iter().cloned());
        let mut nodes = Vec::new();
        let mut running: u64 = 0;
        let mut settled = true;
        for host in hosts {
            // u64: heartbeats say what they like, their sum must not overflow.
            let mut current: u64 = 0;
            let mut other: u64 = 0;
            for c in host
                .components
                .iter()
                .filter(|c| c.app == name && c.component == spec.name)
            {
                if c.version == version {
                    current += u64::from(c.replicas);
                } else {
                    other += u64::from(c.replicas);
                }
            }
            if current > 0 {
                nodes.push(NodeReplicas {
                    id: host.id.clone(),
                    name: host.name.clone(),
                    replicas: current,
                });
            }
            running += current;
            let wanted = u64::from(place.hosts.get(&host.id).copied().unwrap_or(0));
            settled &= current == wanted && other == 0;
        }
        for f in hosts.iter().flat_map(|h| {
            h.failures
                .iter()
                .filter(|f| f.app == name && f.version == version && f.component == spec.name)
                .map(move |f| (h, f))
        }) {
            failed.push(format!(
                "component {} on node {}: {}",
                spec.name, f.0.name, f.1.reason
            ));
        }
        if !settled || running != place.desired {
            pending.push(format!(
                "component {}: {running} of {} replicas running",
                spec.name, place.desired
            ));
        }
        components.push(ComponentStatus {
            name: spec.name.clone(),
            desired: place.desired,
            running,
            nodes,
        });
    }
    for f in hosts.iter().flat_map(|h| {
        h.failures
            .iter()
            .filter(|f| f.app == name && f.version == version && f.component.is_empty())
            .map(move |f| (h, f))
    }) {
        failed.push(format!("on node {}: {}", f.0.name, f.1.reason));
    }
    let (state, reason) = if !failed.is_empty() {
        (AppState::Failed, failed.join("; "))
    } else if !pending.is_empty() {
        (AppState::Reconciling, pending.join("; "))
    } else {
        (AppState::Deployed, String::new())
    };
    Some(AppStatus {
        name: name.to_owned(),
        version,
        state,
        reason,
        components,
    })
}

/// What this node should run of one component: the replicas and the version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReplicas {
    /// App version.
    pub version: String,
    /// Replicas here.
    pub replicas: u32,
}

/// What runs here now of one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// App version.
    pub version: String,
    /// Replicas here.
    pub replicas: u32,
    /// Since when the placement no longer gives this component any replica here (they are kept
    /// only until their replacements run); `None` while it does.
    pub surplus_since: Option<std::time::Instant>,
}

/// How long replicas that the placement moved away are kept at most, waiting for their
/// replacements to run elsewhere.
pub const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// This node's share: (app, component) → replicas to run here, from the placement, keeping
/// replicas the placement moved elsewhere (or that run an old version) until their
/// replacements run (rolling: new replicas start before old ones stop). The wait ends after
/// [`HANDOVER_TIMEOUT`] unless a node placed for them reports that it cannot start them: then
/// they stay. Undeployed apps get nothing; apps whose manifest this node cannot read keep what
/// runs.
pub fn local_share(
    me: &str,
    desired: &Desired,
    placement: &Placement,
    hosts: &[HostInfo],
    running: &BTreeMap<(String, String), Running>,
    now: std::time::Instant,
) -> BTreeMap<(String, String), LocalReplicas> {
    let mut share = BTreeMap::new();
    for (key, here) in running {
        if desired.get(&key.0).is_some_and(|a| a.manifest.is_err()) {
            share.insert(
                key.clone(),
                LocalReplicas {
                    version: here.version.clone(),
                    replicas: here.replicas,
                },
            );
        }
    }
    for (key, place) in placement {
        let Some(app) = desired.get(&key.0) else {
            continue;
        };
        let version = &app.record.deployed;
        let mine = place.hosts.get(me).copied().unwrap_or(0);
        let here = running.get(key);
        // Replicas of the deployed version elsewhere, on the hosts placed for them (u64: the
        // sums of heartbeats' and of a daemonscaler's counts must not overflow).
        let elsewhere: u64 = hosts
            .iter()
            .filter(|h| h.id != me)
            .map(|h| {
                let ran: u64 = h
                    .components
                    .iter()
                    .filter(|c| c.app == key.0 && c.component == key.1 && &c.version == version)
                    .map(|c| u64::from(c.replicas))
                    .sum();
                ran.min(u64::from(place.hosts.get(&h.id).copied().unwrap_or(0)))
            })
            .sum();
        let placed_elsewhere: u64 =
            place.hosts.values().map(|n| u64::from(*n)).sum::<u64>() - u64::from(mine);
        let handed_over = elsewhere >= placed_elsewhere;
        let target_failed = hosts.iter().any(|h| {
            place.hosts.contains_key(&h.id)
                && h.failures
                    .iter()
                    .any(|f| f.app == key.0 && f.component == key.1 && &f.version == version)
        });
        let timed_out = here
            .and_then(|h| h.surplus_since)
            .is_some_and(|since| now.duration_since(since) >= HANDOVER_TIMEOUT);
        let hold = !handed_over && (!timed_out || target_failed);
        match here {
            // Placed here: the deployed version, and no fewer than run now until the rest
            // runs elsewhere.
            Some(here) if mine > 0 => {
                let keep = here.version == *version && here.replicas > mine && hold;
                share.insert(
                    key.clone(),
                    LocalReplicas {
                        version: version.clone(),
                        replicas: if keep { here.replicas } else { mine },
                    },
                );
            }
            None if mine > 0 => {
                share.insert(
                    key.clone(),
                    LocalReplicas {
                        version: version.clone(),
                        replicas: mine,
                    },
                );
            }
            // Moved away: kept as they are until the replacements run.
            Some(here) if hold => {
                share.insert(
                    key.clone(),
                    LocalReplicas {
                        version: here.version.clone(),
                        replicas: here.replicas,
                    },
                );
            }
            _ => {}
        }
    }
    share
}

/// Every artifact digest any stored version of `desired` names.
pub fn referenced_digests(desired: &Desired) -> BTreeSet<String> {
    desired
        .values()
        .flat_map(|a| a.record.digests().map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

#[cfg(test)]
mod tests;
