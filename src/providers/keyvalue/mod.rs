//! The keyvalue providers behind `wasi:keyvalue`: a small [`Bucket`] trait (as Spin's
//! key-value factor has), with two backends: `nats` (a JetStream KV bucket shared by the
//! lattice, wasmCloud's keyvalue-nats) and `sled` (a tree in the node's own database, per app
//! unless shared). Which buckets a link may name is `policy`'s: never the lattice's own, and
//! what the node's operator allows.
//!
//! Counters written by `increment` are decimal ASCII text (`b"1000"`), as wasmCloud's
//! keyvalue-nats provider writes them, so other NATS clients can read them.

mod nats;
mod policy;
mod sled;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;

pub use self::nats::NatsBucket;
pub use self::policy::{
    BucketPolicy, MAX_BUCKET_NAME, RESERVED_PREFIX, check_bucket_name, is_reserved,
};
pub use self::sled::{SledBucket, SledScope};

pub use crate::admin::metrics::KeyValueBackend;
use crate::name::Name;

/// Keys returned by one `list-keys` page at most.
pub const KEYS_PAGE: usize = 1000;

/// The longest key any backend takes, in bytes. A keyvalue-nats key travels in NATS subjects
/// (`$KV.<bucket>.<key>`), and nats-server closes a connection whose protocol line passes
/// `max_control_line` (4096 bytes): a longer key would cut the node's whole NATS connection.
/// keyvalue-sled takes the same limit, so a component behaves the same on both.
pub const MAX_KEY_BYTES: usize = 1024;

/// A failed bucket operation; the guest sees it as `wasi:keyvalue/store.error.other(text)`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KvError(pub String);

impl KvError {
    /// Operation `op` on `key` of `bucket` (e.g. `keyvalue-sled bucket counters`) failed
    /// because of `cause`. A key longer than 64 characters is shown by its start and length.
    pub fn of(bucket: &str, op: &str, key: &str, cause: impl std::fmt::Display) -> KvError {
        KvError(format!("{bucket}: {op} {}: {cause}", shown_key(key)))
    }

    /// Operation `op` of `bucket` as a whole (`list-keys`, `get-many`) failed because of `cause`.
    pub fn on_bucket(bucket: &str, op: &str, cause: impl std::fmt::Display) -> KvError {
        KvError(format!("{bucket}: {op}: {cause}"))
    }
}

/// `key` (or any other string a guest passed) quoted for a message: whole when short, else its
/// first 64 characters and its length in bytes; so at most a few hundred bytes, however long
/// `key` is.
pub fn shown_key(key: &str) -> String {
    const SHOWN: usize = 64;
    match key.char_indices().nth(SHOWN) {
        None => format!("{key:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &key[..end], key.len()),
    }
}

/// Checks a key a guest passed before it reaches a backend.
///
/// # Errors
/// The key is longer than [`MAX_KEY_BYTES`] (the reason, as text).
pub fn check_key(key: &str) -> Result<(), String> {
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the key is {} bytes long, at most {MAX_KEY_BYTES} are allowed",
            key.len()
        ));
    }
    Ok(())
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
pub fn page(keys: &[String], cursor: u64, limit: usize) -> KeysPage {
    let start = usize::try_from(cursor)
        .unwrap_or(usize::MAX)
        .min(keys.len());
    let end = start.saturating_add(limit).min(keys.len());
    let next = (end < keys.len()).then_some(end as u64);
    (keys[start..end].to_vec(), next)
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
    /// What the bucket is, for messages: `keyvalue-nats bucket counters`.
    fn label(&self) -> &str;
    /// The bucket's plain name (`counters`), for spans: no app, no key.
    fn name(&self) -> &str;
    /// The backend it lives in, for metrics and spans.
    fn backend(&self) -> KeyValueBackend;
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

/// The `wasi:keyvalue` interfaces a keyvalue link grants: its `interfaces` list (wadm). A call
/// through an interface the link does not list gets `access-denied`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KvInterfaces {
    /// `store`: get, set, delete, exists, list-keys.
    pub store: bool,
    /// `atomics`: increment.
    pub atomics: bool,
    /// `batch`: get-many, set-many, delete-many.
    pub batch: bool,
}

impl KvInterfaces {
    /// The interfaces named in a link's `interfaces` list.
    ///
    /// # Errors
    /// A name other than `store`, `atomics` or `batch`, returned as it is.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<KvInterfaces, &'a str> {
        let mut granted = KvInterfaces::default();
        for name in names {
            match name {
                "store" => granted.store = true,
                "atomics" => granted.atomics = true,
                "batch" => granted.batch = true,
                other => return Err(other),
            }
        }
        Ok(granted)
    }

    /// Whether no interface is granted.
    pub fn is_empty(&self) -> bool {
        *self == KvInterfaces::default()
    }
}

/// One keyvalue link of a component: its bucket, and the interfaces through which it is granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValueLink {
    /// The bucket.
    pub bucket: BucketSpec,
    /// The interfaces the link lists.
    pub interfaces: KvInterfaces,
}

/// Which bucket a keyvalue link grants, from the link's target capability and its config.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BucketSpec {
    /// A JetStream KV bucket of the lattice (wasmCloud's keyvalue-nats), by its plain name.
    Nats {
        /// The bucket's name.
        bucket: Name,
        /// Create it when missing (`enable_bucket_auto_create: 'true'`).
        auto_create: bool,
    },
    /// A tree in this node's sled database: node-local, the app's own unless the node shares
    /// the bucket ([`SledScope`]).
    Sled {
        /// The bucket's name.
        bucket: Name,
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
/// database for keyvalue-sled, as the node's [`BucketPolicy`] allows. Cheap to clone.
#[derive(Clone)]
pub struct KeyValueProviders {
    js: Option<crate::nats::SharedJetStream>,
    db: Option<::sled::Db>,
    policy: Arc<BucketPolicy>,
    /// Opened buckets by the app owning them (`None`: keyvalue-nats and shared keyvalue-sled
    /// buckets, one for every app) and spec.
    open: Arc<Mutex<HashMap<OpenKey, Arc<dyn Bucket>>>>,
}

/// An opened bucket's key: the app owning it (`None` when every app shares it) and its spec.
type OpenKey = (Option<Name>, BucketSpec);

impl KeyValueProviders {
    /// Providers over `js` (keyvalue-nats) and `db` (keyvalue-sled) under `policy`; a missing
    /// backend makes its buckets fail to open, with an error saying so.
    pub fn new(
        js: Option<crate::nats::SharedJetStream>,
        db: Option<::sled::Db>,
        policy: BucketPolicy,
    ) -> KeyValueProviders {
        let policy = Arc::new(policy);
        KeyValueProviders {
            js,
            db,
            policy,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The bucket `spec` names for app `app`, opened (or created, when the spec allows it) on
    /// first use: a keyvalue-nats bucket by its plain name, a keyvalue-sled bucket as the app's
    /// own tree unless the node shares it.
    ///
    /// # Errors
    /// The bucket is the lattice's own, or a keyvalue-nats bucket this node's `--allowed-buckets`
    /// does not allow; a keyvalue-nats bucket that does not exist without `auto_create`,
    /// JetStream unreachable, or the sled tree cannot be opened. The message names the bucket
    /// and the reason.
    pub async fn open(&self, app: &str, spec: &BucketSpec) -> anyhow::Result<Arc<dyn Bucket>> {
        let owner = match spec {
            BucketSpec::Nats { bucket, .. } => {
                self.policy
                    .check_nats(bucket.as_str())
                    .map_err(|reason| anyhow::anyhow!("{spec}: {reason}"))?;
                None
            }
            BucketSpec::Sled { bucket } if self.policy.is_shared(bucket.as_str()) => None,
            BucketSpec::Sled { .. } => {
                Some(Name::new(app).map_err(|e| anyhow::anyhow!("{spec}: app name {e}"))?)
            }
        };
        let key = (owner, spec.clone());
        if let Some(bucket) = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
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
                Arc::new(NatsBucket::open(js, bucket.as_str(), *auto_create).await?)
            }
            BucketSpec::Sled { bucket } => {
                let db = self
                    .db
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("{spec}: this node has no sled database"))?;
                // Opening a tree may read the disk: on a blocking thread, like every sled call.
                let (db, name, owner) = (db.clone(), bucket.clone(), key.0.clone());
                Arc::new(
                    tokio::task::spawn_blocking(move || {
                        let scope = match &owner {
                            Some(app) => SledScope::App(app.as_str()),
                            None => SledScope::Shared,
                        };
                        SledBucket::open(&db, name.as_str(), scope)
                    })
                    .await??,
                )
            }
        };
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, bucket.clone());
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
    fn long_keys_are_refused_and_shown_by_their_start() {
        assert!(check_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        let err = check_key(&"k".repeat(MAX_KEY_BYTES + 1)).unwrap_err();
        assert!(err.contains("1025 bytes"), "{err}");
        let e = KvError::of(
            "keyvalue-nats bucket b",
            "get",
            &"é".repeat(5000),
            "too long",
        );
        assert!(e.0.len() < 200, "{e}");
        assert!(e.0.contains("(10000 bytes)"), "{e}");
        assert_eq!(
            KvError::of("keyvalue-nats bucket b", "get", "k", "gone").0,
            "keyvalue-nats bucket b: get \"k\": gone"
        );
    }

    #[test]
    fn interfaces_are_read_from_the_links_list() {
        let granted = KvInterfaces::parse(["store", "atomics"]).unwrap();
        assert!(granted.store && granted.atomics && !granted.batch);
        assert_eq!(KvInterfaces::parse(["batch", "blobs"]), Err("blobs"));
        assert!(KvInterfaces::parse([]).unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_apps_old_default_bucket_is_its_own_unless_shared() {
        let dir = tempfile::tempdir().unwrap();
        let db = ::sled::open(dir.path()).unwrap();
        for bucket in ["shop", "common"] {
            db.open_tree(format!("keyvalue/{bucket}"))
                .unwrap()
                .insert("hits", "7")
                .unwrap();
        }
        let sled_bucket = |name: &str| BucketSpec::Sled {
            bucket: Name::new(name).unwrap(),
        };
        let providers = KeyValueProviders::new(None, Some(db.clone()), BucketPolicy::default());
        // App shop's default bucket is the old tree of its name. Another app naming it, or app
        // shop naming another old bucket, sees an empty bucket of its own.
        let own = providers.open("shop", &sled_bucket("shop")).await.unwrap();
        assert_eq!(own.get("hits").await.unwrap(), Some(Bytes::from("7")));
        let web = providers.open("web", &sled_bucket("shop")).await.unwrap();
        assert_eq!(web.get("hits").await.unwrap(), None);
        let common = providers
            .open("shop", &sled_bucket("common"))
            .await
            .unwrap();
        assert_eq!(common.get("hits").await.unwrap(), None);

        // A shared bucket is the old tree itself.
        let dir = tempfile::tempdir().unwrap();
        let db = ::sled::open(dir.path()).unwrap();
        db.open_tree("keyvalue/shop")
            .unwrap()
            .insert("hits", "7")
            .unwrap();
        let mut policy = BucketPolicy::default();
        policy.shared_sled.insert(Name::new("shop").unwrap());
        let providers = KeyValueProviders::new(None, Some(db.clone()), policy);
        let shared = providers.open("shop", &sled_bucket("shop")).await.unwrap();
        assert_eq!(shared.label(), "keyvalue-sled bucket shop (shared)");
        assert_eq!(shared.get("hits").await.unwrap(), Some(Bytes::from("7")));
    }

    #[test]
    fn pages_follow_the_cursor_to_the_end() {
        let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        assert_eq!(page(&keys, 0, 2), (vec!["k0".into(), "k1".into()], Some(2)));
        assert_eq!(page(&keys, 4, 2), (vec!["k4".into()], None));
        assert_eq!(page(&keys, 3, 2), (vec!["k3".into(), "k4".into()], None));
        assert_eq!(page(&keys, 9, 2), (Vec::<String>::new(), None));
    }
}
