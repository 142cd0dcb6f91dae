//! keyvalue-sled: a bucket is a tree of the node's sled database, so its data stays on this node
//! and survives restarts. The tree of bucket `b` of app `a` is `keyvalue/a/b` (per app: two
//! apps naming one bucket see different data); a bucket the node's operator shares is the tree
//! `keyvalue/b`, which every keyvalue-sled bucket was before buckets were per app
//! ([`super::BucketPolicy`]). Names have no `/`, so the two forms never meet. Calls run on
//! tokio's blocking threads: sled may wait for I/O.
//!
//! Data of an app's default bucket (its own name) stored before buckets were per app is moved
//! into the app's own tree when the app first opens it ([`adopt_old_default`]): the owner of
//! the old tree `keyvalue/<app>` is known then. Other old trees stay where they are.

use bytes::Bytes;
use futures::future::BoxFuture;

use super::{Bucket, KeysPage, KvError, add_counter, parse_counter};

/// Whose a keyvalue-sled bucket is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SledScope<'a> {
    /// App `0`'s own: the tree `keyvalue/<app>/<bucket>`.
    App(&'a str),
    /// Shared by every app of the node (`--shared-bucket`): the tree `keyvalue/<bucket>`.
    Shared,
}

impl SledScope<'_> {
    /// The sled tree of `bucket` in this scope.
    pub fn tree(&self, bucket: &str) -> String {
        match self {
            SledScope::App(app) => format!("{TREE_PREFIX}{app}/{bucket}"),
            SledScope::Shared => format!("{TREE_PREFIX}{bucket}"),
        }
    }
}

/// Prefix of every keyvalue-sled tree in the node's database.
const TREE_PREFIX: &str = "keyvalue/";

/// The buckets of `db` that hold data in the shared form `keyvalue/<bucket>`: listed as shared,
/// or stored before keyvalue-sled buckets were per app; sorted. Blocking (opens each such
/// tree): call it on a blocking thread.
///
/// # Errors
/// sled cannot open one of them.
pub fn shared_form_buckets(db: &sled::Db) -> sled::Result<Vec<String>> {
    let mut found = Vec::new();
    for tree in db.tree_names() {
        let Some(bucket) = tree
            .strip_prefix(TREE_PREFIX.as_bytes())
            .filter(|b| !b.is_empty() && !b.contains(&b'/'))
        else {
            continue;
        };
        if !db.open_tree(&tree)?.is_empty() {
            found.push(String::from_utf8_lossy(bucket).into_owned());
        }
    }
    found.sort();
    Ok(found)
}

/// Moves the data of app `app`'s default bucket stored before buckets were per app (the old
/// tree `keyvalue/<app>`) into the app's own tree `keyvalue/<app>/<app>`, when `bucket` is
/// `app` (the default bucket: its owner is known), the app's own tree is empty and the old
/// tree holds data. The caller makes sure the bucket is not shared (a shared bucket *is* the
/// old tree). Returns how many keys were moved (0: nothing to do).
///
/// The keys are copied in one sled batch, flushed, then the old tree is cleared: after a crash
/// in between, the app's tree is not empty, so the data is never moved twice (the old tree
/// keeps a copy, which the start warning names). Blocking: call it on a blocking thread.
///
/// # Errors
/// sled cannot read or write one of the two trees.
pub fn adopt_old_default(db: &sled::Db, app: &str, bucket: &str) -> sled::Result<usize> {
    if app != bucket {
        return Ok(0);
    }
    let old_name = SledScope::Shared.tree(bucket);
    // Look it up by name first: opening it would create an empty tree.
    if !db.tree_names().iter().any(|t| t == old_name.as_bytes()) {
        return Ok(0);
    }
    let own = db.open_tree(SledScope::App(app).tree(bucket))?;
    if !own.is_empty() {
        return Ok(0);
    }
    let old = db.open_tree(&old_name)?;
    let mut batch = sled::Batch::default();
    let mut moved = 0;
    for entry in old.iter() {
        let (key, value) = entry?;
        batch.insert(key, value);
        moved += 1;
    }
    if moved == 0 {
        return Ok(0);
    }
    own.apply_batch(batch)?;
    own.flush()?;
    old.clear()?;
    old.flush()?;
    Ok(moved)
}

/// A node-local bucket in sled. Cheap to clone.
#[derive(Clone)]
pub struct SledBucket {
    label: String,
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
        Ok(SledBucket { label, tree })
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
        assert_eq!(shared_form_buckets(&db).unwrap(), ["counters"]);
    }

    #[tokio::test]
    async fn an_apps_old_default_bucket_is_moved_into_its_own_tree_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let old = db.open_tree("keyvalue/shop").unwrap();
        old.insert("hits", "7").unwrap();
        old.insert("name", "x").unwrap();
        db.open_tree("keyvalue/other")
            .unwrap()
            .insert("k", "v")
            .unwrap();
        // Not the app's default bucket, or no old tree: nothing moves, nothing is created.
        assert_eq!(adopt_old_default(&db, "web", "shop").unwrap(), 0);
        assert_eq!(adopt_old_default(&db, "shop", "other").unwrap(), 0);
        assert_eq!(adopt_old_default(&db, "new", "new").unwrap(), 0);
        assert!(
            !db.tree_names()
                .iter()
                .any(|t| t.as_ref() == b"keyvalue/new")
        );
        assert_eq!(shared_form_buckets(&db).unwrap(), ["other", "shop"]);

        assert_eq!(adopt_old_default(&db, "shop", "shop").unwrap(), 2);
        let own = SledBucket::open(&db, "shop", SledScope::App("shop")).unwrap();
        assert_eq!(own.get("hits").await.unwrap(), Some(Bytes::from("7")));
        assert_eq!(own.get("name").await.unwrap(), Some(Bytes::from("x")));
        assert!(old.is_empty());
        assert_eq!(shared_form_buckets(&db).unwrap(), ["other"]);

        // Once only: the app's tree is not empty any more, whatever the old one holds.
        old.insert("hits", "99").unwrap();
        own.set("hits", Bytes::from("8")).await.unwrap();
        assert_eq!(adopt_old_default(&db, "shop", "shop").unwrap(), 0);
        assert_eq!(own.get("hits").await.unwrap(), Some(Bytes::from("8")));
    }
}
