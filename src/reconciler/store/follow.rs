//! The mirror following the apps bucket: a KV watch, full passes, and the re-publishing of
//! this node's apps into a bucket that lost them.

use std::collections::BTreeSet;
use std::sync::Arc;

use anyhow::Context;
use async_nats::jetstream;
use async_nats::jetstream::kv::Operation;
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;

use super::layout::{AppHead, AppsBucket, Record, WriteError, content_key, key_kind};
use super::{CAS_ATTEMPTS, Mirror, RESYNC, RETRY, SharedApp, StoredVersion};
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
            match outcome {
                // The bucket was created anew: a new watch of it at once.
                Ok(()) => continue,
                Err(e) if !unreachable_logged => {
                    unreachable_logged = true;
                    tracing::warn!(
                        bucket = subjects::apps_bucket(&lattice),
                        error = format!("{e:#}"),
                        "desired-state store unreachable; running from the local mirror"
                    );
                }
                Err(_) => {}
            }
            tokio::select! {
                () = tokio::time::sleep(RETRY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// Follows the bucket until it cannot be reached (an error) or it is found created anew
    /// (`Ok`: the watch follows the stream of the bucket it was opened on, and is to be opened
    /// again).
    async fn follow_once(
        &self,
        js: &jetstream::Context,
        lattice: &str,
        replicas: usize,
        unreachable_logged: &mut bool,
    ) -> anyhow::Result<()> {
        let bucket = AppsBucket::open(js, lattice, replicas).await?;
        let name = subjects::apps_bucket(lattice);
        let watched = bucket_id(js, &bucket, &name).await?;
        let mut watch = bucket
            .kv()
            .watch_all()
            .await
            .with_context(|| format!("watching {name}"))?;
        if self.full_pass(js, &bucket, &name).await? != watched {
            return Ok(());
        }
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
                _ = resync.tick() => {
                    if self.full_pass(js, &bucket, &name).await? != watched {
                        tracing::info!(bucket = name, "the apps bucket {name} was created anew: following it with a new watch");
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Reads the whole bucket into the mirror; returns the bucket's identity ([`bucket_id`]).
    /// A bucket other than the one mirrored (deleted and created anew, or another JetStream's)
    /// first gets this node's apps re-published into it; so do apps whose keys vanished without
    /// a delete marker. An app that cannot be re-published is logged and keeps its mirrored
    /// copy; it is tried again at the next pass.
    ///
    /// # Errors
    /// The bucket cannot be read.
    async fn full_pass(
        &self,
        js: &jetstream::Context,
        bucket: &AppsBucket,
        name: &str,
    ) -> anyhow::Result<String> {
        let bucket_id = bucket_id(js, bucket, name).await?;
        let mut spared = BTreeSet::new();
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
                let republished;
                (republished, spared) = self.republish(bucket, name, &apps).await;
                tracing::info!(
                    bucket = name,
                    republished,
                    failed = spared.len(),
                    "apps re-published into {name}"
                );
            }
        }
        // A version's key holds one content for good (the key hashes its name and content):
        // one the mirror holds is not read again, unless the bucket is new to it.
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
                (_, spared) = self.republish(bucket, name, &apps).await;
                (last_revision, listing) = list(js, bucket, name, &known).await?;
            }
        }
        self.resync(last_revision, listing, fresh, &spared);
        // A bucket into which an app could not be re-published stays new to the mirror: the
        // next pass tries again, and takes the bucket's revisions as they are.
        if fresh
            && spared.is_empty()
            && let Err(e) = self.meta.insert("bucket", bucket_id.as_bytes())
        {
            tracing::error!(error = %e, "writing the apps mirror");
        }
        Ok(bucket_id)
    }

    /// Writes this node's record of each of `apps` into `bucket` (named `name`), where the
    /// bucket holds none or an older one ([`AppHead::newer_than`]), and where the bucket's
    /// record is the newer one, the version keys it lists and lost. An app undeployed in the
    /// bucket (its head carries a delete marker, newer than any copy) is not re-published.
    /// Returns how many apps were written, and the apps that could not be (each logged).
    async fn republish(
        &self,
        bucket: &AppsBucket,
        name: &str,
        apps: &[String],
    ) -> (usize, BTreeSet<String>) {
        let mut written = 0;
        let mut failed = BTreeSet::new();
        for app in apps {
            let Some(mine) = self.lock().shared.get(app).cloned() else {
                continue;
            };
            match self.republish_app(bucket, &mine).await {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(
                        app,
                        bucket = name,
                        error = e,
                        "app {app:?} cannot be re-published into {name}: {e}; this node keeps running its copy and tries again at the next pass"
                    );
                    failed.insert(app.clone());
                }
            }
        }
        (written, failed)
    }

    /// [`Mirror::republish`] of one app; whether anything was written.
    async fn republish_app(&self, bucket: &AppsBucket, mine: &SharedApp) -> Result<bool, String> {
        let app = &mine.record.name;
        let head = AppHead {
            name: app.clone(),
            deployed: mine.record.deployed.clone(),
            versions: mine
                .record
                .versions
                .iter()
                .map(|v| v.version.clone())
                .collect(),
            keys: mine
                .record
                .versions
                .iter()
                .map(|v| (v.version.clone(), content_key(v)))
                .collect(),
            generation: mine.generation,
            updated_at_ms: mine.updated_at_ms,
        };
        for attempt in 1..=CAS_ATTEMPTS {
            if bucket.undeployed(app, mine.generation == 0).await? {
                tracing::info!(
                    app,
                    "app undeployed in the apps bucket since this node's copy: not re-published"
                );
                return Ok(false);
            }
            let current = bucket.read_app(app).await?;
            let (generation, updated_at_ms) = current.age();
            if current.exists() && !head.newer_than(generation, updated_at_ms) {
                // The bucket's record stands; the version keys it lists and lost come back
                // from this node's copy.
                let Some((_, theirs)) = &current.head else {
                    return Ok(false);
                };
                let lost: Vec<StoredVersion> = mine
                    .record
                    .versions
                    .iter()
                    // The very content the head names (a head that names no key for a
                    // version has it at the key of its name).
                    .filter(|v| {
                        theirs.versions.contains(&v.version)
                            && theirs
                                .keys
                                .get(&v.version)
                                .is_none_or(|hash| *hash == content_key(v))
                    })
                    .cloned()
                    .collect();
                let restored = bucket
                    .restore_versions(theirs, &lost)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(!restored.is_empty());
            }
            match bucket
                .write_app(&current, &head, &mine.record.versions)
                .await
            {
                Ok(_) => return Ok(true),
                Err(WriteError::Conflict(_)) if attempt < CAS_ATTEMPTS => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err(format!("app {app:?} kept changing under the re-publishing"))
    }
}

/// The identity of the bucket's stream: its name and creation time, so a bucket created anew
/// is told from the one before it.
///
/// # Errors
/// The stream cannot be read.
async fn bucket_id(
    js: &jetstream::Context,
    bucket: &AppsBucket,
    name: &str,
) -> anyhow::Result<String> {
    // Fresh stream info: `Store::status` answers what was cached when the store was opened.
    let stream = js
        .get_stream(&bucket.kv().stream_name)
        .await
        .with_context(|| format!("reading {name}"))?;
    Ok(format!(
        "{}@{}",
        bucket.kv().stream_name,
        stream.cached_info().created
    ))
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
