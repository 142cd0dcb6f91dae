//! The mirror following the apps bucket: a KV watch, full passes, and the re-publishing of
//! this node's apps into a bucket that lost them.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use async_nats::jetstream;
use async_nats::jetstream::kv::Operation;
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::layout::{AppHead, AppsBucket, Record, WriteError, key_kind};
use super::{CAS_ATTEMPTS, Mirror, RESYNC, RETRY};
use crate::nats::subjects;

impl Mirror {
    /// Keeps the mirror in step with the apps bucket of `lattice` through `js` (creating it,
    /// with `replicas` replicas, when missing), until `shutdown`: a watch for changes as they
    /// happen, and a full pass every [`RESYNC`] and after the KV comes back. While the KV cannot
    /// be reached the mirror keeps what it has.
    pub async fn follow(
        self: Arc<Self>,
        js: crate::nats::SharedJetStream,
        lattice: String,
        replicas: usize,
        shutdown: CancellationToken,
    ) {
        let mut unreachable_logged = false;
        loop {
            let context = js.context();
            let outcome = tokio::select! {
                outcome = self.follow_once(&context, &lattice, replicas, &mut unreachable_logged) => outcome,
                () = shutdown.cancelled() => return,
            };
            if let Err(e) = outcome
                && !unreachable_logged
            {
                unreachable_logged = true;
                tracing::warn!(
                    bucket = subjects::apps_bucket(&lattice),
                    error = format!("{e:#}"),
                    "desired-state store unreachable; running from the local mirror"
                );
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn follow_once(
        &self,
        js: &jetstream::Context,
        lattice: &str,
        replicas: usize,
        unreachable_logged: &mut bool,
    ) -> anyhow::Result<()> {
        let bucket = AppsBucket::open(js, lattice, replicas).await?;
        let name = subjects::apps_bucket(lattice);
        let mut watch = bucket
            .kv()
            .watch_all()
            .await
            .with_context(|| format!("watching {name}"))?;
        self.full_pass(js, &bucket, &name).await?;
        if std::mem::take(unreachable_logged) {
            tracing::info!(bucket = name, "desired-state store reachable again");
        }
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
        loop {
            tokio::select! {
                entry = watch.next() => {
                    let entry = entry
                        .with_context(|| format!("the watch of {name} ended"))?
                        .with_context(|| format!("watching {name}"))?;
                    let value = match entry.operation {
                        Operation::Put => Some(&entry.value[..]),
                        Operation::Delete | Operation::Purge => None,
                    };
                    self.apply(&entry.key, entry.revision, value);
                }
                _ = resync.tick() => self.full_pass(js, &bucket, &name).await?,
            }
        }
    }

    /// Reads the whole bucket into the mirror. A bucket other than the one mirrored (deleted
    /// and created anew, or another JetStream's) first gets this node's apps re-published into
    /// it; so do apps whose keys vanished without a delete marker.
    async fn full_pass(
        &self,
        js: &jetstream::Context,
        bucket: &AppsBucket,
        name: &str,
    ) -> anyhow::Result<()> {
        // Fresh stream info: `Store::status` answers what was cached when the store was opened.
        let stream = js
            .get_stream(&bucket.kv().stream_name)
            .await
            .with_context(|| format!("reading {name}"))?;
        let info = stream.cached_info();
        let bucket_id = format!("{}@{}", bucket.kv().stream_name, info.created);
        let fresh = self.meta.get("bucket").ok().flatten().as_deref() != Some(bucket_id.as_bytes());
        if fresh {
            let apps: Vec<String> = self.lock().shared.keys().cloned().collect();
            if !apps.is_empty() {
                tracing::error!(
                    bucket = name,
                    apps = apps.len(),
                    "the apps bucket {name} is not the one this node mirrored (deleted and created anew, or another JetStream's): \
                     this node keeps running its apps and re-publishes them into it"
                );
                let republished = self.republish(bucket, &apps).await?;
                tracing::info!(bucket = name, republished, "apps re-published into {name}");
            }
        }
        // A version's key holds one content for good (its name is the key): one the mirror
        // holds is not read again, unless the bucket is new to it.
        let known: BTreeSet<String> = if fresh {
            BTreeSet::new()
        } else {
            self.lock()
                .entries
                .iter()
                .filter(|(_, e)| matches!(e.record, Some(Record::Version(_))))
                .map(|(k, _)| k.clone())
                .collect()
        };
        let (mut last_revision, mut listing) = list(js, bucket, name, &known).await?;
        if !fresh {
            let listed: BTreeSet<&str> = listing
                .present
                .iter()
                .map(|(k, _, _)| k.as_str())
                .chain(listing.kept.iter().map(String::as_str))
                .collect();
            let missing: Vec<String> = self
                .lock()
                .entries
                .iter()
                .filter(|(k, e)| e.record.is_some() && !listed.contains(k.as_str()))
                .map(|(k, _)| k.clone())
                .collect();
            let mut vanished = BTreeSet::new();
            for key in missing {
                // A deletion leaves a marker; no trace at all is a loss.
                let trace = bucket
                    .kv()
                    .entry(key.clone())
                    .await
                    .with_context(|| format!("reading {name}"))?;
                if trace.is_none()
                    && let Some(kind) = key_kind(&key)
                {
                    vanished.insert(kind.app().to_owned());
                }
            }
            if !vanished.is_empty() {
                let apps: Vec<String> = vanished.into_iter().collect();
                tracing::error!(
                    bucket = name,
                    apps = ?apps,
                    "records vanished from the apps bucket {name} without being deleted: re-publishing them"
                );
                self.republish(bucket, &apps).await?;
                (last_revision, listing) = list(js, bucket, name, &known).await?;
            }
        }
        self.resync(last_revision, listing, fresh);
        if fresh && let Err(e) = self.meta.insert("bucket", bucket_id.as_bytes()) {
            tracing::error!(error = %e, "writing the apps mirror");
        }
        Ok(())
    }

    /// Writes this node's record of each of `apps` into `bucket`, where the bucket holds none
    /// or an older one ([`AppHead::newer_than`]). Returns how many were written.
    ///
    /// # Errors
    /// The store cannot be written.
    async fn republish(&self, bucket: &AppsBucket, apps: &[String]) -> anyhow::Result<usize> {
        let mut written = 0;
        for app in apps {
            let Some(mine) = self.lock().shared.get(app).cloned() else {
                continue;
            };
            let head = AppHead {
                name: app.clone(),
                deployed: mine.record.deployed.clone(),
                versions: mine
                    .record
                    .versions
                    .iter()
                    .map(|v| v.version.clone())
                    .collect(),
                generation: mine.generation,
                updated_at_ms: mine.updated_at_ms,
            };
            for attempt in 1..=CAS_ATTEMPTS {
                let current = bucket.read_app(app).await.map_err(anyhow::Error::msg)?;
                let (generation, updated_at_ms) = current.age();
                if current.exists() && !head.newer_than(generation, updated_at_ms) {
                    break;
                }
                match bucket
                    .write_app(&current, &head, &mine.record.versions)
                    .await
                {
                    Ok(_) => {
                        written += 1;
                        break;
                    }
                    Err(WriteError::Conflict(_)) if attempt < CAS_ATTEMPTS => {}
                    Err(e) => anyhow::bail!("re-publishing app {app:?}: {e}"),
                }
            }
        }
        Ok(written)
    }
}

/// The keys of the bucket as a full pass read them.
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// Keys read: revision and value.
    pub(super) present: Vec<(String, u64, Vec<u8>)>,
    /// Keys listed and not read (the mirror's copy stands).
    pub(super) kept: BTreeSet<String>,
}

/// Every key of the bucket with its revision and value (keys of `known` only listed), and the
/// bucket's last revision when the listing started.
async fn list(
    js: &jetstream::Context,
    bucket: &AppsBucket,
    name: &str,
    known: &BTreeSet<String>,
) -> anyhow::Result<(u64, Listing)> {
    let kv = bucket.kv();
    let last_revision = js
        .get_stream(&kv.stream_name)
        .await
        .with_context(|| format!("reading {name}"))?
        .cached_info()
        .state
        .last_sequence;
    let keys: Vec<String> = kv
        .keys()
        .await
        .with_context(|| format!("listing {name}"))?
        .try_collect()
        .await
        .with_context(|| format!("listing {name}"))?;
    let mut listing = Listing::default();
    for key in keys {
        if key_kind(&key).is_none() {
            continue;
        }
        if known.contains(&key) {
            listing.kept.insert(key);
            continue;
        }
        let Some(entry) = kv
            .entry(key.clone())
            .await
            .with_context(|| format!("reading {key} of {name}"))?
        else {
            continue;
        };
        if entry.operation == Operation::Put {
            listing
                .present
                .push((key, entry.revision, entry.value.to_vec()));
        }
    }
    Ok((last_revision, listing))
}
