//! keyvalue-nats: a bucket is a JetStream KV bucket of the lattice (wasmCloud's keyvalue-nats
//! provider, built in), reached through the node's NATS connection and JetStream domain, so
//! every node sees the same data.
//!
//! The bucket is opened lazily: a node whose JetStream is out of reach (the hub down) still
//! starts its components, whose calls fail with an error until JetStream answers again. The
//! opened store is kept with the JetStream domain it was opened in: when the node finds the
//! lattice's JetStream in another domain (a hub that came back with one), the next call opens
//! the bucket again there instead of addressing the old domain's prefix.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{Operation, Store, UpdateErrorKind};

use crate::nats::SharedJetStream;
use bytes::Bytes;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use tokio::sync::Mutex;

use super::{Bucket, KeyValueBackend, KeysPage, KvError, add_counter, parse_counter};
use crate::nats::kv::{IfMissing, OpenBucketError, open_bucket};

/// Compare-and-swap attempts of one `increment` before it gives up. Each failed attempt means
/// another writer succeeded, so the lattice as a whole always progresses.
const MAX_INCREMENT_ATTEMPTS: u32 = 10_000;

/// Increments of this node that run one at a time per stripe (keys hash onto stripes): they
/// would only make each other retry, so only other nodes' writes race with them.
const INCREMENT_STRIPES: usize = 64;

/// How long the keys read for the first page of a `list-keys` listing serve its later pages
/// (30 s); past that a page reads them again.
const LISTING_KEPT: Duration = Duration::from_secs(30);

/// How long a bucket that could not be opened for want of JetStream fails calls at once before
/// the next attempt.
const REOPEN_AFTER: Duration = Duration::from_secs(1);

const DESCRIPTION: &str = "wasi:keyvalue bucket (lattice keyvalue-nats)";

/// A JetStream KV bucket.
pub struct NatsBucket {
    js: SharedJetStream,
    name: String,
    label: String,
    auto_create: bool,
    /// The opened bucket and the JetStream domain it was opened in.
    kv: Mutex<Option<(Option<String>, Store)>>,
    /// The sorted keys of the last `list-keys` that started a listing, and when they were read:
    /// the pages after the first one are cut from it instead of reading every key again.
    listing: Mutex<Option<(Instant, Arc<Vec<String>>)>>,
    /// When opening last failed for want of JetStream, and why.
    last_failure: Mutex<Option<(Instant, String)>>,
    stripes: Vec<Mutex<()>>,
    hasher: RandomState,
}

impl NatsBucket {
    /// The KV bucket `bucket`, created when missing if `auto_create`. When JetStream does not
    /// answer, the bucket is returned unopened (and a warning logged): its calls open it.
    ///
    /// # Errors
    /// A bad name, or the bucket does not exist and `auto_create` is false (the message says
    /// how to allow it).
    pub async fn open(
        js: &SharedJetStream,
        bucket: &str,
        auto_create: bool,
    ) -> anyhow::Result<NatsBucket> {
        let this = NatsBucket {
            js: js.clone(),
            name: bucket.to_owned(),
            label: format!("keyvalue-nats bucket {bucket}"),
            auto_create,
            kv: Mutex::new(None),
            last_failure: Mutex::new(None),
            listing: Mutex::new(None),
            stripes: (0..INCREMENT_STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: RandomState::new(),
        };
        match this.store().await {
            Ok(_) => Ok(this),
            Err(OpenBucketError::Unavailable { reason, .. }) => {
                tracing::warn!(
                    bucket,
                    "keyvalue-nats bucket not opened yet ({reason}); its calls fail until JetStream answers"
                );
                Ok(this)
            }
            Err(e @ OpenBucketError::Missing(_)) => Err(anyhow::anyhow!(
                "{e}; create it (`nats kv add {bucket}`) or set enable_bucket_auto_create: 'true' \
                 in the link's target config"
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// The bucket opened in the JetStream domain the node uses now (opened again when that
    /// changed). While JetStream does not answer, one attempt per [`REOPEN_AFTER`] goes to it;
    /// the calls in between fail at once with the last reason, instead of queueing behind each
    /// other's timeouts.
    async fn store(&self) -> Result<Store, OpenBucketError> {
        let if_missing = if self.auto_create {
            IfMissing::Create
        } else {
            IfMissing::Fail
        };
        let domain = self.js.domain();
        let mut kv = self.kv.lock().await;
        if let Some((opened_in, store)) = &*kv
            && *opened_in == domain
        {
            return Ok(store.clone());
        }
        if let Some((at, reason)) = &*self.last_failure.lock().await
            && at.elapsed() < REOPEN_AFTER
        {
            return Err(OpenBucketError::Unavailable {
                bucket: self.name.clone(),
                reason: reason.clone(),
            });
        }
        let context = self.js.context();
        match open_bucket(&context, &self.name, DESCRIPTION, if_missing).await {
            Ok(store) => {
                if kv.is_some() {
                    tracing::info!(
                        bucket = self.name,
                        domain = domain.as_deref().unwrap_or("(none)"),
                        "keyvalue-nats bucket opened again in the JetStream domain now in use"
                    );
                }
                *kv = Some((domain, store.clone()));
                Ok(store)
            }
            Err(e) => {
                if let OpenBucketError::Unavailable { reason, .. } = &e {
                    *self.last_failure.lock().await = Some((Instant::now(), reason.clone()));
                }
                Err(e)
            }
        }
    }

    /// The listing a page at `cursor` continues: the last one read, when `cursor` is past the
    /// first page and it was read less than [`LISTING_KEPT`] ago.
    async fn listing(&self, cursor: u64) -> Option<Arc<Vec<String>>> {
        if cursor == 0 {
            return None;
        }
        let listing = self.listing.lock().await;
        let (at, keys) = listing.as_ref()?;
        (at.elapsed() < LISTING_KEPT).then(|| keys.clone())
    }

    /// Every key of the bucket, sorted. JetStream lists keys in the order of their last write,
    /// which moves under concurrent writes: sorted, a cursor is a stable position.
    async fn sorted_keys(&self) -> Result<Vec<String>, KvError> {
        let failed = |e: &dyn std::fmt::Display| KvError::on_bucket(&self.label, "list-keys", e);
        let kv = self.store().await.map_err(|e| failed(&e))?;
        let mut keys: Vec<String> = kv
            .keys()
            .await
            .map_err(|e| failed(&e))?
            .try_collect()
            .await
            .map_err(|e| failed(&e))?;
        keys.sort_unstable();
        Ok(keys)
    }

    fn error(&self, op: &str, key: &str, cause: impl std::fmt::Display) -> KvError {
        KvError::of(&self.label, op, key, cause)
    }

    /// The opened store, for operation `op` on `key`, once `key` is checked to be one JetStream
    /// KV takes (async-nats would refuse it too, with a reason that misleads).
    async fn kv(&self, op: &str, key: &str) -> Result<Store, KvError> {
        check_nats_key(key).map_err(|reason| self.error(op, key, reason))?;
        self.store().await.map_err(|e| self.error(op, key, e))
    }
}

/// Checks that JetStream KV takes `key` (NATS ADR-8: letters, digits and `-/_=.`, not starting
/// or ending with `.`; a key is one or more subject tokens). Not [`crate::name::Name`]'s rule on
/// purpose: a key is data of the guest's, several tokens long, where a name is one token.
///
/// # Errors
/// The reason, naming the rule.
fn check_nats_key(key: &str) -> Result<(), &'static str> {
    let chars_ok = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'/' | b'_' | b'=' | b'.'));
    if key.is_empty() || !chars_ok || key.starts_with('.') || key.ends_with('.') {
        return Err(
            "keyvalue-nats keys are made of letters, digits and - / _ = . (NATS ADR-8) and \
             neither start nor end with '.'",
        );
    }
    Ok(())
}

impl Bucket for NatsBucket {
    fn label(&self) -> &str {
        &self.label
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> KeyValueBackend {
        KeyValueBackend::Nats
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, KvError>> {
        Box::pin(async move {
            let kv = self.kv("get", key).await?;
            kv.get(key).await.map_err(|e| self.error("get", key, e))
        })
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<(), KvError>> {
        Box::pin(async move {
            let kv = self.kv("set", key).await?;
            kv.put(key, value)
                .await
                .map(drop)
                .map_err(|e| self.error("set", key, e))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), KvError>> {
        Box::pin(async move {
            let kv = self.kv("delete", key).await?;
            kv.delete(key)
                .await
                .map_err(|e| self.error("delete", key, e))
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(async move {
            let kv = self.kv("exists", key).await?;
            let entry = kv
                .entry(key)
                .await
                .map_err(|e| self.error("exists", key, e))?;
            Ok(entry.is_some_and(|e| e.operation == Operation::Put))
        })
    }

    fn keys(&self, cursor: u64, limit: usize) -> BoxFuture<'_, Result<KeysPage, KvError>> {
        Box::pin(async move {
            let keys = match self.listing(cursor).await {
                Some(keys) => keys,
                None => {
                    let keys = Arc::new(self.sorted_keys().await?);
                    *self.listing.lock().await = Some((Instant::now(), keys.clone()));
                    keys
                }
            };
            Ok(super::page(&keys, cursor, limit))
        })
    }

    fn increment<'a>(&'a self, key: &'a str, delta: u64) -> BoxFuture<'a, Result<u64, KvError>> {
        Box::pin(async move {
            let kv = self.kv("increment", key).await?;
            let stripe =
                usize::try_from(self.hasher.hash_one(key) % INCREMENT_STRIPES as u64).unwrap_or(0);
            let _turn = self.stripes[stripe].lock().await;
            // Compare-and-swap on the key's revision: a write that lost the race is retried
            // against the new value, so concurrent increments from every node all count.
            for _ in 0..MAX_INCREMENT_ATTEMPTS {
                let entry = kv
                    .entry(key)
                    .await
                    .map_err(|e| self.error("increment", key, e))?;
                // An absent key is written against revision 0, a deleted one against its
                // delete marker: never with `create`, which after a lost acknowledgement would
                // find this very write and report the key as taken (one increment counted twice).
                let (next, revision) = match entry {
                    Some(entry) if entry.operation == Operation::Put => {
                        let next = parse_counter(&entry.value)
                            .and_then(|current| add_counter(current, delta))
                            .map_err(|reason| self.error("increment", key, reason))?;
                        (next, entry.revision)
                    }
                    Some(marker) => (delta, marker.revision),
                    None => (delta, 0),
                };
                let written = match kv.update(key, next.to_string().into(), revision).await {
                    Ok(_) => Some(next),
                    Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => None,
                    Err(e) => return Err(self.error("increment", key, e)),
                };
                if let Some(value) = written {
                    return Ok(value);
                }
            }
            Err(self.error(
                "increment",
                key,
                format!("lost the race {MAX_INCREMENT_ATTEMPTS} times in a row"),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_jetstream_refuses_are_refused_with_the_rule() {
        for good in ["counter/x", "a.b", "A-z_0=9"] {
            assert!(check_nats_key(good).is_ok(), "{good}");
        }
        for bad in ["", ".a", "a.", "a b", "a*", "a>", "é"] {
            let reason = check_nats_key(bad).unwrap_err();
            assert!(reason.contains("ADR-8"), "{bad}: {reason}");
        }
    }
}
