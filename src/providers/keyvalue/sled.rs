//! keyvalue-sled: a bucket is the tree `keyvalue/<bucket>` of the node's sled database, so its
//! data stays on this node and survives restarts.

use bytes::Bytes;
use futures::future::BoxFuture;

use super::{Bucket, KeysPage, KvError, add_counter, parse_counter};

/// A node-local bucket in sled.
pub struct SledBucket {
    tree: sled::Tree,
}

impl SledBucket {
    /// Opens (or creates) the tree of `bucket` in `db`.
    ///
    /// # Errors
    /// sled cannot open the tree; the message names the bucket.
    pub fn open(db: &sled::Db, bucket: &str) -> anyhow::Result<SledBucket> {
        let tree = db
            .open_tree(format!("keyvalue/{bucket}"))
            .map_err(|e| anyhow::anyhow!("opening keyvalue-sled bucket {bucket}: {e}"))?;
        Ok(SledBucket { tree })
    }

    fn increment_now(&self, key: &str, delta: u64) -> Result<u64, KvError> {
        // Compare-and-swap until no other writer came in between.
        loop {
            let current = self
                .tree
                .get(key)
                .map_err(|e| KvError::of("increment", key, e))?;
            let next = match &current {
                Some(value) => add_counter(key, parse_counter(key, value)?, delta)?,
                None => delta,
            };
            let swapped = self
                .tree
                .compare_and_swap(key, current, Some(next.to_string().into_bytes()))
                .map_err(|e| KvError::of("increment", key, e))?;
            if swapped.is_ok() {
                return Ok(next);
            }
        }
    }
}

impl Bucket for SledBucket {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, KvError>> {
        let result = self
            .tree
            .get(key)
            .map(|v| v.map(|v| Bytes::copy_from_slice(&v)))
            .map_err(|e| KvError::of("get", key, e));
        Box::pin(async move { result })
    }

    fn set<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<(), KvError>> {
        let result = self
            .tree
            .insert(key, value.as_ref())
            .map(drop)
            .map_err(|e| KvError::of("set", key, e));
        Box::pin(async move { result })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), KvError>> {
        let result = self
            .tree
            .remove(key)
            .map(drop)
            .map_err(|e| KvError::of("delete", key, e));
        Box::pin(async move { result })
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, KvError>> {
        let result = self
            .tree
            .contains_key(key)
            .map_err(|e| KvError::of("exists", key, e));
        Box::pin(async move { result })
    }

    fn keys(&self, cursor: u64, limit: usize) -> BoxFuture<'_, Result<KeysPage, KvError>> {
        let skip = usize::try_from(cursor).unwrap_or(usize::MAX);
        let result = (|| {
            let mut keys = Vec::new();
            let mut more = false;
            for key in self.tree.iter().keys().skip(skip) {
                let key = key.map_err(|e| KvError(format!("list-keys: {e}")))?;
                if keys.len() == limit {
                    more = true;
                    break;
                }
                keys.push(String::from_utf8_lossy(&key).into_owned());
            }
            let next = more.then(|| cursor + keys.len() as u64);
            Ok((keys, next))
        })();
        Box::pin(async move { result })
    }

    fn increment<'a>(&'a self, key: &'a str, delta: u64) -> BoxFuture<'a, Result<u64, KvError>> {
        let result = self.increment_now(key, delta);
        Box::pin(async move { result })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn increments_are_exact_under_concurrency_and_keys_page() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let bucket = std::sync::Arc::new(SledBucket::open(&db, "counters").unwrap());
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
        assert_eq!(page.len(), 4);
        let (rest, last) = bucket.keys(next.unwrap(), 4).await.unwrap();
        assert_eq!(rest.len(), 2);
        assert_eq!(last, None);
        bucket.set("word", Bytes::from("abc")).await.unwrap();
        assert!(bucket.increment("word", 1).await.is_err());
        bucket.delete("word").await.unwrap();
        assert!(!bucket.exists("word").await.unwrap());
    }
}
