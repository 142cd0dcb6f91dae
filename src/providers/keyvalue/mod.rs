//! The keyvalue providers behind `wasi:keyvalue`: a small [`Bucket`] trait (as Spin's
//! key-value factor has), with two backends: `nats` (a JetStream KV bucket shared by the
//! lattice, wasmCloud's keyvalue-nats) and `sled` (a tree in the node's own database).
//!
//! Counters written by `increment` are decimal ASCII text (`b"1000"`), as wasmCloud's
//! keyvalue-nats provider writes them, so other NATS clients can read them.

mod nats;
mod sled;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;

pub use self::nats::NatsBucket;
pub use self::sled::SledBucket;

/// Keys returned by one `list-keys` page at most.
pub const KEYS_PAGE: usize = 1000;

/// A failed bucket operation; the guest sees it as `wasi:keyvalue/store.error.other(text)`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KvError(pub String);

impl KvError {
    /// Operation `op` on `key` of `bucket` (e.g. `keyvalue-sled bucket counters`) failed
    /// because of `cause`.
    pub fn of(bucket: &str, op: &str, key: &str, cause: impl std::fmt::Display) -> KvError {
        KvError(format!("{bucket}: {op} {key:?}: {cause}"))
    }
}

/// Reads the decimal counter `value` (what `increment` writes); an empty value counts as 0, as
/// in wasmCloud's keyvalue-nats.
///
/// # Errors
/// The value is not a decimal u64 (the reason, as text).
pub fn parse_counter(value: &[u8]) -> Result<u64, &'static str> {
    let text = std::str::from_utf8(value)
        .map_err(|_| NOT_A_COUNTER)?
        .trim();
    if text.is_empty() {
        return Ok(0);
    }
    text.parse::<u64>().map_err(|_| NOT_A_COUNTER)
}

const NOT_A_COUNTER: &str =
    "the value is not a decimal number (counters are stored as decimal text)";

/// Adds `delta` to `current`.
///
/// # Errors
/// The sum overflows u64 (the reason, as text).
pub fn add_counter(current: u64, delta: u64) -> Result<u64, &'static str> {
    current
        .checked_add(delta)
        .ok_or("the counter would overflow u64")
}

/// The page of sorted `keys` starting at position `cursor`, at most `limit` long, and the
/// cursor of the next page (`None` after the last).
pub fn page(keys: Vec<String>, cursor: u64, limit: usize) -> KeysPage {
    let start = usize::try_from(cursor)
        .unwrap_or(usize::MAX)
        .min(keys.len());
    let end = start.saturating_add(limit).min(keys.len());
    let next = (end < keys.len()).then_some(end as u64);
    let page = keys.into_iter().skip(start).take(end - start).collect();
    (page, next)
}

/// One page of keys and the cursor of the next page (`None` after the last).
pub type KeysPage = (Vec<String>, Option<u64>);

/// One bucket of a keyvalue backend: what `wasi:keyvalue` store, atomics and batch need.
///
/// # Errors
/// Every method fails with a [`KvError`] naming the bucket, the operation and the key: the
/// backend did not answer or refused (JetStream unreachable, a key JetStream does not accept,
/// sled I/O), or `increment` found a value that is not a decimal counter or would overflow.
pub trait Bucket: Send + Sync {
    /// The value of `key`, `None` when absent.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, KvError>>;
    /// Sets `key` to `value`.
    fn set<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<(), KvError>>;
    /// Removes `key` (nothing when absent).
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), KvError>>;
    /// Whether `key` is present.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>>;
    /// Up to `limit` keys starting at position `cursor` of the bucket's key order, and the
    /// cursor of the next page (`None` after the last).
    fn keys(&self, cursor: u64, limit: usize) -> BoxFuture<'_, Result<KeysPage, KvError>>;
    /// Adds `delta` to the decimal counter at `key` (created as `delta`), atomically: exact
    /// under concurrent increments from any node. Returns the new value.
    fn increment<'a>(&'a self, key: &'a str, delta: u64) -> BoxFuture<'a, Result<u64, KvError>>;
}

/// Which bucket a keyvalue link grants, from the link's target capability and its config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BucketSpec {
    /// A JetStream KV bucket of the lattice (wasmCloud's keyvalue-nats).
    Nats {
        /// The bucket's name.
        bucket: String,
        /// Create it when missing (`enable_bucket_auto_create: 'true'`).
        auto_create: bool,
    },
    /// A tree in this node's sled database, `keyvalue/<bucket>`: node-local.
    Sled {
        /// The bucket's name.
        bucket: String,
    },
}

impl std::fmt::Display for BucketSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BucketSpec::Nats { bucket, .. } => write!(f, "keyvalue-nats bucket {bucket}"),
            BucketSpec::Sled { bucket } => write!(f, "keyvalue-sled bucket {bucket}"),
        }
    }
}

/// Opens the buckets links grant, once each: the node's JetStream for keyvalue-nats, its sled
/// database for keyvalue-sled. Cheap to clone.
#[derive(Clone)]
pub struct KeyValueProviders {
    js: Option<async_nats::jetstream::Context>,
    db: Option<::sled::Db>,
    open: Arc<Mutex<HashMap<BucketSpec, Arc<dyn Bucket>>>>,
}

impl KeyValueProviders {
    /// Providers over `js` (keyvalue-nats) and `db` (keyvalue-sled); a missing one makes its
    /// buckets fail to open, with an error saying so.
    pub fn new(
        js: Option<async_nats::jetstream::Context>,
        db: Option<::sled::Db>,
    ) -> KeyValueProviders {
        KeyValueProviders {
            js,
            db,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The bucket `spec` names, opened (or created, when the spec allows it) on first use.
    ///
    /// # Errors
    /// A keyvalue-nats bucket that does not exist without `auto_create`, JetStream unreachable, a
    /// bad bucket name, or the sled tree cannot be opened. The message names the bucket.
    pub async fn open(&self, spec: &BucketSpec) -> anyhow::Result<Arc<dyn Bucket>> {
        if let Some(bucket) = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(spec)
        {
            return Ok(bucket.clone());
        }
        let bucket: Arc<dyn Bucket> = match spec {
            BucketSpec::Nats {
                bucket,
                auto_create,
            } => {
                let js = self
                    .js
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("{spec}: this node has no JetStream"))?;
                Arc::new(NatsBucket::open(js, bucket, *auto_create).await?)
            }
            BucketSpec::Sled { bucket } => {
                let db = self
                    .db
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("{spec}: this node has no sled database"))?;
                Arc::new(SledBucket::open(db, bucket)?)
            }
        };
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.clone(), bucket.clone());
        Ok(bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_decimal_text_and_overflow_is_an_error() {
        assert_eq!(parse_counter(b"1000").unwrap(), 1000);
        assert_eq!(parse_counter(b" 7\n").unwrap(), 7);
        assert_eq!(parse_counter(b"").unwrap(), 0);
        assert!(parse_counter(b"abc").is_err());
        assert!(parse_counter(&[0xff]).is_err());
        assert_eq!(add_counter(1, 2).unwrap(), 3);
        assert!(add_counter(u64::MAX, 1).unwrap_err().contains("overflow"));
    }

    #[test]
    fn pages_follow_the_cursor_to_the_end() {
        let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        assert_eq!(
            page(keys.clone(), 0, 2),
            (vec!["k0".into(), "k1".into()], Some(2))
        );
        assert_eq!(page(keys.clone(), 4, 2), (vec!["k4".into()], None));
        assert_eq!(
            page(keys.clone(), 3, 2),
            (vec!["k3".into(), "k4".into()], None)
        );
        assert_eq!(page(keys, 9, 2), (Vec::<String>::new(), None));
    }
}
