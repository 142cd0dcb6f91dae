//! keyvalue-nats: a bucket is a JetStream KV bucket of the lattice (wasmCloud's keyvalue-nats
//! provider, built in), reached through the node's NATS connection and JetStream domain, so
//! every node sees the same data.

use async_nats::jetstream;
use async_nats::jetstream::kv::{CreateErrorKind, Operation, Store, UpdateErrorKind};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};

use super::{Bucket, KeysPage, KvError, add_counter, parse_counter};
use crate::nats::kv::{IfMissing, open_bucket};

/// Compare-and-swap attempts of one `increment` before it gives up. Each failed attempt means
/// another writer succeeded, so the lattice as a whole always progresses.
const MAX_INCREMENT_ATTEMPTS: u32 = 10_000;

/// A JetStream KV bucket.
pub struct NatsBucket {
    kv: Store,
}

impl NatsBucket {
    /// Opens the KV bucket `bucket`, creating it when missing if `auto_create`.
    ///
    /// # Errors
    /// The bucket does not exist and `auto_create` is false (the message says how to allow it),
    /// a bad name, or JetStream unreachable.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        auto_create: bool,
    ) -> anyhow::Result<NatsBucket> {
        let if_missing = if auto_create {
            IfMissing::Create
        } else {
            IfMissing::Fail
        };
        let kv = open_bucket(js, bucket, "wasi:keyvalue bucket (lattice keyvalue-nats)", if_missing)
            .await
            .map_err(|e| {
                if auto_create {
                    e
                } else {
                    e.context(format!(
                        "keyvalue-nats bucket {bucket} cannot be opened; create it (`nats kv add {bucket}`) \
                         or set enable_bucket_auto_create: 'true' in the link's target config"
                    ))
                }
            })?;
        Ok(NatsBucket { kv })
    }
}

impl Bucket for NatsBucket {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, KvError>> {
        Box::pin(async move {
            self.kv
                .get(key)
                .await
                .map_err(|e| KvError::of("get", key, e))
        })
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<(), KvError>> {
        Box::pin(async move {
            self.kv
                .put(key, value)
                .await
                .map(drop)
                .map_err(|e| KvError::of("set", key, e))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), KvError>> {
        Box::pin(async move {
            self.kv
                .delete(key)
                .await
                .map_err(|e| KvError::of("delete", key, e))
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>> {
        Box::pin(async move {
            let entry = self
                .kv
                .entry(key)
                .await
                .map_err(|e| KvError::of("exists", key, e))?;
            Ok(entry.is_some_and(|e| e.operation == Operation::Put))
        })
    }

    fn keys(&self, cursor: u64, limit: usize) -> BoxFuture<'_, Result<KeysPage, KvError>> {
        Box::pin(async move {
            let skip = usize::try_from(cursor).unwrap_or(usize::MAX);
            let mut keys: Vec<String> = self
                .kv
                .keys()
                .await
                .map_err(|e| KvError(format!("list-keys: {e}")))?
                .skip(skip)
                .take(limit + 1)
                .try_collect()
                .await
                .map_err(|e| KvError(format!("list-keys: {e}")))?;
            let more = keys.len() > limit;
            keys.truncate(limit);
            let next = more.then(|| cursor + keys.len() as u64);
            Ok((keys, next))
        })
    }

    fn increment<'a>(&'a self, key: &'a str, delta: u64) -> BoxFuture<'a, Result<u64, KvError>> {
        Box::pin(async move {
            // Compare-and-swap on the key's revision: a write that lost the race is retried
            // against the new value, so concurrent increments from every node all count.
            for _ in 0..MAX_INCREMENT_ATTEMPTS {
                let entry = self
                    .kv
                    .entry(key)
                    .await
                    .map_err(|e| KvError::of("increment", key, e))?;
                match entry.filter(|e| e.operation == Operation::Put) {
                    Some(entry) => {
                        let next = add_counter(key, parse_counter(key, &entry.value)?, delta)?;
                        match self
                            .kv
                            .update(key, next.to_string().into(), entry.revision)
                            .await
                        {
                            Ok(_) => return Ok(next),
                            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                            Err(e) => return Err(KvError::of("increment", key, e)),
                        }
                    }
                    None => match self.kv.create(key, delta.to_string().into()).await {
                        Ok(_) => return Ok(delta),
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(KvError::of("increment", key, e)),
                    },
                }
            }
            Err(KvError::of(
                "increment",
                key,
                format!("lost the race {MAX_INCREMENT_ATTEMPTS} times in a row"),
            ))
        })
    }
}
