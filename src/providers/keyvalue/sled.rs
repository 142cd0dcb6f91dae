//! keyvalue-sled: a bucket is a tree of the node's sled database, so its data stays on this node
//! and survives restarts. The tree of bucket `b` of app `a` is `keyvalue/a/b` (per app: two
//! apps naming one bucket see different data), except an app's default bucket, named like the
//! app, whose tree is `keyvalue/a`; a bucket the node's operator shares is the tree
//! `keyvalue/b` ([`super::BucketPolicy`]). `keyvalue/<name>` is the tree every keyvalue-sled
//! bucket had before buckets were per app: an app's default bucket (the common case) keeps its
//! data across that change with nothing moved, and the data of another old bucket is readable
//! by sharing it. Names have no `/`, so per-app trees never meet the others. Calls run on
//! tokio's blocking threads: sled may wait for I/O.

use bytes::Bytes;
use futures::future::BoxFuture;

use super::{Bucket, KeyValueBackend, KeysPage, KvError, add_counter, parse_counter};

/// Whose a keyvalue-sled bucket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SledScope<'a> {
    /// App `0`'s own: the tree `keyvalue/<app>/<bucket>`, or `keyvalue/<app>` for the app's
    /// default bucket (named like the app).
    App(&'a str),
    /// Shared by every app of the node (`--shared-bucket`): the tree `keyvalue/<bucket>`.
    Shared,
}

impl SledScope<'_> {
    /// The sled tree of `bucket` in this scope.
    pub fn tree(&self, bucket: &str) -> String {
        match self {
            SledScope::App(app) if *app != bucket => format!("{TREE_PREFIX}{app}/{bucket}"),
            SledScope::App(_) | SledScope::Shared => format!("{TREE_PREFIX}{bucket}"),
        }
    }
}

/// Prefix of every keyvalue-sled tree in the node's database.
const TREE_PREFIX: &str = "keyvalue/";

/// A node-local bucket in sled. Cheap to clone.
#[derive(Clone)]
pub struct SledBucket {
    label: String,
    name: std::sync::Arc<str>,
    tree: sled::Tree,
}

impl SledBucket {
    /// Opens (or creates) the tree of `bucket` in `scope` in `db`.
    ///
    /// # Errors
    /// sled cannot open the tree; the message names the bucket.
    pub fn open(db: &sled::Db, bucket: &str, scope: SledScope<'_>) -> anyhow::Result<SledBucket> {
        let label = match scope {
            SledScope::App(app) => format!("keyvalue-sled bucket {bucket} of app {app}"),
            SledScope::Shared => format!("keyvalue-sled bucket {bucket} (shared)"),
        };
        let tree = db
            .open_tree(scope.tree(bucket))
            .map_err(|e| anyhow::anyhow!("opening {label}: {e}"))?;
        Ok(SledBucket {
            label,
            name: bucket.into(),
            tree,
        })
    }

    fn error(&self, op: &str, key: &str, cause: impl std::fmt::Display) -> KvError {
        KvError::of(&self.label, op, key, cause)
    }

    /// Runs `f` on a clone of this bucket on a blocking thread.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&SledBucket) -> Result<T, KvError> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, KvError>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&this))
                .await
                .map_err(|e| KvError(format!("keyvalue-sled task failed: {e}")))?
        })
    }

    fn increment_now(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        // Compare-and-swap until no other writer came in between.
        loop {
            let current = self
                .tree
                .get(key)
                .map_err(|e| self.error("increment", key, e))?;
            let next = match &current {
                Some(value) => parse_counter(value).and_then(|c| add_counter(c, delta)),
                None => Ok(delta),
            }
            .map_err(|reason| self.error("increment", key, reason))?;
            let swapped = self
                .tree
                .compare_and_swap(key, current, Some(next.to_string().into_bytes()))
                .map_err(|e| self.error("increment", key, e))?;
            if swapped.is_ok() {
                return Ok(next);
            }
        }
    }
}

impl Bucket for SledBucket {
    fn label(&self) -> &str {
        &self.label
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> KeyValueBackend {
        KeyValueBackend::Sled
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, KvError>> {
        let key = key.to_owned();
        self.blocking(move |b| {
            b.tree
                .get(&key)
                .map(|v| v.map(|v| Bytes::copy_from_slice(&v)))
                .map_err(|e| b.error("get", &key, e))
        })
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<(), KvError>> {
        let key = key.to_owned();
        self.blocking(move |b| {
            b.tree
                .insert(&key, value.as_ref())
                .map(drop)
                .map_err(|e| b.error("set", &key, e))
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), KvError>> {
        let key = key.to_owned();
        self.blocking(move |b| {
            b.tree
                .remove(&key)
                .map(drop)
                .map_err(|e| b.error("delete", &key, e))
        })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>> {
        let key = key.to_owned();
        self.blocking(move |b| {
            b.tree
                .contains_key(&key)
                .map_err(|e| b.error("exists", &key, e))
        })
    }

    fn keys(&self, cursor: u64, limit: usize) -> BoxFuture<'_, Result<KeysPage, KvError>> {
        self.blocking(move |b| {
            // sled iterates in key order: the page is a slice of the sorted keys, read without
            // holding the keys before or after it.
            let failed = |e: sled::Error| KvError::on_bucket(&b.label, "list-keys", e);
            let start = usize::try_from(cursor).unwrap_or(usize::MAX);
            let mut iter = b.tree.iter().keys().skip(start);
            let mut page = Vec::with_capacity(limit.min(super::KEYS_PAGE));
            for key in iter.by_ref().take(limit) {
                page.push(String::from_utf8_lossy(&key.map_err(failed)?).into_owned());
            }
            let more = iter.next().transpose().map_err(failed)?.is_some();
            let next = more.then(|| cursor.saturating_add(page.len() as u64));
            Ok((page, next))
        })
    }

    fn increment<'a>(&'a self, key: &'a str, delta: u64) -> BoxFuture<'a, Result<u64, KvError>> {
        let key = key.to_owned();
        self.blocking(move |b| b.increment_now(&key, delta))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn increments_are_exact_under_concurrency_and_keys_page() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let bucket = SledBucket::open(&db, "counters", SledScope::App("shop")).unwrap();
        let mut threads = Vec::new();
        for _ in 0..8 {
            let bucket = bucket.clone();
            threads.push(std::thread::spawn(move || {
                for _ in 0..250 {
                    bucket.increment_now("hits", 1).unwrap();
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            bucket.get("hits").await.unwrap().unwrap(),
            Bytes::from("2000")
        );
        for i in 0..5 {
            bucket
                .set(&format!("k{i}"), Bytes::from("v"))
                .await
                .unwrap();
        }
        let (page, next) = bucket.keys(0, 4).await.unwrap();
        assert_eq!(page, ["hits", "k0", "k1", "k2"]);
        let (rest, last) = bucket.keys(next.unwrap(), 4).await.unwrap();
        assert_eq!(rest, ["k3", "k4"]);
        assert_eq!(last, None);
        bucket.set("word", Bytes::from("abc")).await.unwrap();
        let err = bucket.increment("word", 1).await.unwrap_err().to_string();
        assert!(
            err.contains("keyvalue-sled bucket counters of app shop"),
            "{err}"
        );
        bucket.delete("word").await.unwrap();
        assert!(!bucket.exists("word").await.unwrap());
    }

    #[tokio::test]
    async fn apps_see_their_own_trees_and_shared_ones_are_the_old_layout() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        // What a node wrote before buckets were per app: the tree `keyvalue/<bucket>`.
        db.open_tree("keyvalue/counters")
            .unwrap()
            .insert("hits", "7")
            .unwrap();
        let a = SledBucket::open(&db, "counters", SledScope::App("a")).unwrap();
        let b = SledBucket::open(&db, "counters", SledScope::App("b")).unwrap();
        a.set("hits", Bytes::from("1")).await.unwrap();
        assert_eq!(b.get("hits").await.unwrap(), None);
        assert_eq!(a.get("hits").await.unwrap(), Some(Bytes::from("1")));
        let shared = SledBucket::open(&db, "counters", SledScope::Shared).unwrap();
        assert_eq!(shared.get("hits").await.unwrap(), Some(Bytes::from("7")));
    }

    #[tokio::test]
    async fn an_apps_default_bucket_is_the_tree_of_its_name_and_no_other_apps() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        // As a node wrote app shop's default bucket before buckets were per app.
        db.open_tree("keyvalue/shop")
            .unwrap()
            .insert("hits", "7")
            .unwrap();
        assert_eq!(SledScope::App("shop").tree("shop"), "keyvalue/shop");
        assert_eq!(SledScope::App("web").tree("shop"), "keyvalue/web/shop");
        let own = SledBucket::open(&db, "shop", SledScope::App("shop")).unwrap();
        assert_eq!(own.get("hits").await.unwrap(), Some(Bytes::from("7")));
        let other = SledBucket::open(&db, "shop", SledScope::App("web")).unwrap();
        assert_eq!(other.get("hits").await.unwrap(), None);
        other.set("hits", Bytes::from("1")).await.unwrap();
        assert_eq!(own.get("hits").await.unwrap(), Some(Bytes::from("7")));
    }
}
