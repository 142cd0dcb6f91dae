//! `wasi:keyvalue@0.2.0-draft` (store, atomics, batch) as wasmCloud hosts it: `store.open`
//! takes the name of one of the component's keyvalue links (default `default`) and gives its
//! bucket; any other identifier is `no-such-store`. A call through an interface the link does
//! not list is `access-denied`; a key over `MAX_KEY_BYTES` is refused before it reaches the
//! backend. The buckets are the providers' (`providers::keyvalue`).
//!
//! Every call on a bucket has a span named after it (`keyvalue.get`, `keyvalue.set`,
//! `keyvalue.increment`, `keyvalue.get_many`, …) with the fields `backend` (`nats`, `sled`)
//! and `bucket` (its plain name), a child of the component call; the key and the value are
//! user data and are never a field. Each is counted once in
//! `lattice_keyvalue_operations_total{backend, operation, result}` (a batch call is one
//! operation), a call refused here (`access-denied`, a key too long) as an error, and so is a
//! call the request deadline cut off (its span ends with that error). `keyvalue.open` has the
//! field `link`: the link's name once the identifier matched one, else `unknown` (the
//! identifier is the guest's). Warnings that quote a key are logged outside the span, so they
//! are never exported as its events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt, stream};
use tracing::field::Empty;
use wasmtime::component::Resource;

use super::bindings::keyvalue::{atomics, batch, store};
use super::grants::GrantedBucket;
use super::state::HostState;
use crate::admin::metrics::OpResult;
use crate::providers::keyvalue::{Bucket, KEYS_PAGE, KvError, check_key};

/// Calls of one batch operation in flight at once: a batch over a leaf connection costs a few
/// round trips, not one per key.
const BATCH_CONCURRENCY: usize = 16;

/// The most value bytes one `get-many` gathers in the host before handing them to the guest
/// (64 MiB): a guest repeating one large key cannot make the node hold more.
const MAX_GET_MANY_BYTES: usize = 64 << 20;

/// The concrete type behind a `wasi:keyvalue/store.bucket` resource: an open bucket of one of
/// the component's links.
pub struct BucketResource {
    /// The link name the guest opened it by.
    link: Arc<str>,
    granted: GrantedBucket,
}

/// What `batch.get-many` returns: each key's pair, or `none` when absent.
type ManyValues = Vec<Option<(String, Vec<u8>)>>;

/// The interface a call comes through, checked against the link's `interfaces`.
#[derive(Debug, Clone, Copy)]
enum Via {
    Store,
    Atomics,
    Batch,
}

impl HostState {
    /// The bucket behind `resource` for operation `op` (its name in the metrics: `get`,
    /// `list-keys`, `get-many`, …), and a way to report its errors. Records its backend and
    /// name on the current span (the call's).
    fn bucket(
        &self,
        resource: &Resource<BucketResource>,
        op: &'static str,
    ) -> wasmtime::Result<Opened> {
        let resource = self.table.get(resource)?;
        let span = tracing::Span::current();
        span.record("backend", resource.granted.bucket.backend().as_str());
        span.record("bucket", resource.granted.bucket.name());
        Ok(Opened {
            granted: resource.granted.clone(),
            link: resource.link.clone(),
            app: self.grants.app.clone(),
            component: self.grants.component.clone(),
            op,
            span,
            finished: AtomicBool::new(false),
        })
    }
}

/// An open bucket taken out of the table for one call of operation `op`, in `span`. A call
/// dropped before [`Opened::finish`] ran (the request deadline cut it off: wasmtime drops the
/// host call's future) is counted as an error and ends its span with an error when this is
/// dropped.
struct Opened {
    granted: GrantedBucket,
    link: Arc<str>,
    app: Arc<str>,
    component: Arc<str>,
    op: &'static str,
    span: tracing::Span,
    /// Whether [`Opened::finish`] counted the call.
    finished: AtomicBool,
}

impl Drop for Opened {
    fn drop(&mut self) {
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        let backend = self.backend();
        crate::admin::metrics::get().keyvalue(backend, self.op, OpResult::Error);
        crate::admin::telemetry::record_error(
            &self.span,
            &format_args!(
                "keyvalue-{} bucket {}: {} cut off before it ended (the request deadline?)",
                backend.as_str(),
                self.name(),
                self.op
            ),
        );
    }
}

impl std::ops::Deref for Opened {
    type Target = dyn Bucket;

    fn deref(&self) -> &Self::Target {
        &*self.granted.bucket
    }
}

impl Opened {
    /// Counts the operation by how it ended, records an error on the call's span (without
    /// the key: the node's log has the whole message), and returns `result`.
    fn finish<T>(&self, result: Result<T, store::Error>) -> Result<T, store::Error> {
        self.finished.store(true, Ordering::Relaxed);
        let op = self.op;
        let backend = self.backend();
        let outcome = if result.is_ok() {
            OpResult::Ok
        } else {
            OpResult::Error
        };
        crate::admin::metrics::get().keyvalue(backend, op, outcome);
        if let Err(e) = &result {
            let kind = match e {
                store::Error::NoSuchStore => "no-such-store",
                store::Error::AccessDenied => "access-denied",
                store::Error::Other(_) => "other (the node's log has the reason)",
            };
            crate::admin::telemetry::record_error(
                &self.span,
                &format_args!(
                    "keyvalue-{} bucket {}: {op} failed: {kind}",
                    backend.as_str(),
                    self.name()
                ),
            );
        }
        result
    }

    /// `e` as the guest sees it (`other`), logged for the operator with where it happened. The
    /// text may quote the key (user data), so the warning is [`LOG_ONLY`]: it stays in the
    /// node's log and is never exported as an event of the call's span.
    fn error(&self, e: KvError) -> store::Error {
        tracing::warn!(
            target: crate::admin::telemetry::LOG_ONLY,
            app = %self.app,
            component = %self.component,
            link = %self.link,
            "wasi:keyvalue call failed: {e}"
        );
        store::Error::Other(e.0)
    }

    /// The values of `keys`, in order, [`BATCH_CONCURRENCY`] reads at a time; `none` for an
    /// absent key. Fails once the values add up to more than [`MAX_GET_MANY_BYTES`].
    async fn get_many(&self, keys: Vec<String>) -> Result<ManyValues, store::Error> {
        let mut gets = stream::iter(keys)
            .map(|key| async move {
                let value = self.get(&key).await;
                (key, value)
            })
            .buffered(BATCH_CONCURRENCY);
        let mut values = Vec::new();
        let mut total = 0usize;
        while let Some((key, value)) = gets.next().await {
            let Some(value) = value.map_err(|e| self.error(e))? else {
                values.push(None);
                continue;
            };
            total = total.saturating_add(value.len());
            if total > MAX_GET_MANY_BYTES {
                let reason = format!(
                    "the values add up to more than {} MiB; ask for fewer keys at a time",
                    MAX_GET_MANY_BYTES >> 20
                );
                return Err(self.error(KvError::on_bucket(self.label(), "get-many", reason)));
            }
            values.push(Some((key, Vec::from(value))));
        }
        Ok(values)
    }

    /// Runs `call` on every item, [`BATCH_CONCURRENCY`] at a time; the first error ends the
    /// batch (calls already made stay made: batches are not atomic, as the WIT allows).
    async fn each<T, F, Fut>(&self, items: Vec<T>, call: F) -> Result<(), store::Error>
    where
        F: FnMut(T) -> Fut,
        Fut: Future<Output = Result<(), KvError>>,
    {
        stream::iter(items)
            .map(call)
            .buffered(BATCH_CONCURRENCY)
            .try_for_each(|()| async { Ok(()) })
            .await
            .map_err(|e| self.error(e))
    }

    /// Whether the link grants `via` and takes `keys`: `access-denied` for an interface the
    /// link does not list, `other` for a key over `MAX_KEY_BYTES`.
    fn admit<'k>(
        &self,
        op: &str,
        via: Via,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), store::Error> {
        let granted = self.granted.interfaces;
        let allowed = match via {
            Via::Store => granted.store,
            Via::Atomics => granted.atomics,
            Via::Batch => granted.batch,
        };
        if !allowed {
            tracing::warn!(
                app = %self.app,
                component = %self.component,
                link = %self.link,
                "wasi:keyvalue {op} denied: the link's interfaces do not list {via:?}"
            );
            return Err(store::Error::AccessDenied);
        }
        for key in keys {
            if let Err(reason) = check_key(key) {
                let e = KvError::of(self.label(), op, key, reason);
                tracing::debug!(app = %self.app, component = %self.component, link = %self.link, "{e}");
                return Err(store::Error::Other(e.0));
            }
        }
        Ok(())
    }
}

impl store::Host for HostState {
    /// The span's `link` is the link's name once one matched, else `unknown`: the identifier is
    /// the guest's, of any length, and is never a field (the log has its first 64 bytes).
    #[tracing::instrument(name = "keyvalue.open", level = "debug", skip_all, fields(link = Empty))]
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<BucketResource>, store::Error>> {
        let span = tracing::Span::current();
        let Some((link, bucket)) = self.grants.buckets.get_key_value(identifier.as_str()) else {
            span.record("link", "unknown");
            tracing::debug!(
                app = %self.grants.app,
                component = %self.grants.component,
                identifier = crate::providers::keyvalue::shown_key(&identifier),
                "store.open: no keyvalue link by this name"
            );
            return Ok(Err(store::Error::NoSuchStore));
        };
        span.record("link", &**link);
        let resource = BucketResource {
            link: link.clone(),
            granted: bucket.clone(),
        };
        Ok(Ok(self.table.push(resource)?))
    }
}

impl store::HostBucket for HostState {
    #[tracing::instrument(name = "keyvalue.get", level = "debug", skip_all, fields(backend = Empty, bucket = Empty, otel.kind = "client"))]
    async fn get(
        &mut self,
        bucket: Resource<BucketResource>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let b = self.bucket(&bucket, "get")?;
        let result = async {
            b.admit("get", Via::Store, [key.as_str()])?;
            let value = b.get(&key).await.map_err(|e| b.error(e))?;
            Ok(value.map(Vec::from))
        }
        .await;
        Ok(b.finish(result))
    }

    #[tracing::instrument(name = "keyvalue.set", level = "debug", skip_all, fields(backend = Empty, bucket = Empty, otel.kind = "client"))]
    async fn set(
        &mut self,
        bucket: Resource<BucketResource>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let b = self.bucket(&bucket, "set")?;
        let result = async {
            b.admit("set", Via::Store, [key.as_str()])?;
            b.set(&key, Bytes::from(value))
                .await
                .map_err(|e| b.error(e))
        }
        .await;
        Ok(b.finish(result))
    }

    #[tracing::instrument(name = "keyvalue.delete", level = "debug", skip_all, fields(backend = Empty, bucket = Empty, otel.kind = "client"))]
    async fn delete(
        &mut self,
        bucket: Resource<BucketResource>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let b = self.bucket(&bucket, "delete")?;
        let result = async {
            b.admit("delete", Via::Store, [key.as_str()])?;
            b.delete(&key).await.map_err(|e| b.error(e))
        }
        .await;
        Ok(b.finish(result))
    }

    #[tracing::instrument(name = "keyvalue.exists", level = "debug", skip_all, fields(backend = Empty, bucket = Empty, otel.kind = "client"))]
    async fn exists(
        &mut self,
        bucket: Resource<BucketResource>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        let b = self.bucket(&bucket, "exists")?;
        let result = async {
            b.admit("exists", Via::Store, [key.as_str()])?;
            b.exists(&key).await.map_err(|e| b.error(e))
        }
        .await;
        Ok(b.finish(result))
    }

    #[tracing::instrument(name = "keyvalue.list_keys", level = "debug", skip_all, fields(backend = Empty, bucket = Empty, otel.kind = "client"))]
    async fn list_keys(
        &mut self,
        bucket: Resource<BucketResource>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let b = self.bucket(&bucket, "list-keys")?;
        let result = async {
            b.admit("list-keys", Via::Store, [])?;
            let (keys, cursor) = b
                .keys(cursor.unwrap_or(0), KEYS_PAGE)
                .await
                .map_err(|e| b.error(e))?;
            Ok(store::KeyResponse { keys, cursor })
        }
        .await;
        Ok(b.finish(result))
    }

    async fn drop(&mut self, bucket: Resource<BucketResource>) -> wasmtime::Result<()> {
        let resource = self.table.delete(bucket)?;
        tracing::trace!(link = %resource.link, "keyvalue bucket closed");
        Ok(())
    }
}

impl atomics::Host for HostState {
    #[tracing::instrument(name = "keyvalue.increment", level = "debug", skip_all, fields(backend = Empty, bucket = Empty, otel.kind = "client"))]
    async fn increment(
        &mut self,
        bucket: Resource<BucketResource>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, store::Error>> {
        let b = self.bucket(&bucket, "increment")?;
        let result = async {
            b.admit("increment", Via::Atomics, [key.as_str()])?;
            b.increment(&key, delta).await.map_err(|e| b.error(e))
        }
        .await;
        Ok(b.finish(result))
    }
}

impl batch::Host for HostState {
    #[tracing::instrument(name = "keyvalue.get_many", level = "debug", skip_all, fields(backend = Empty, bucket = Empty, otel.kind = "client"))]
    async fn get_many(
        &mut self,
        bucket: Resource<BucketResource>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<ManyValues, store::Error>> {
        let b = self.bucket(&bucket, "get-many")?;
        let result = async {
            b.admit("get-many", Via::Batch, keys.iter().map(String::as_str))?;
            b.get_many(keys).await
        }
        .await;
        Ok(b.finish(result))
    }

    #[tracing::instrument(name = "keyvalue.set_many", level = "debug", skip_all, fields(backend = Empty, bucket = Empty, otel.kind = "client"))]
    async fn set_many(
        &mut self,
        bucket: Resource<BucketResource>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let b = self.bucket(&bucket, "set-many")?;
        let result = async {
            b.admit(
                "set-many",
                Via::Batch,
                key_values.iter().map(|(k, _)| k.as_str()),
            )?;
            let b = &b;
            b.each(key_values, |(key, value)| async move {
                b.set(&key, Bytes::from(value)).await
            })
            .await
        }
        .await;
        Ok(b.finish(result))
    }

    #[tracing::instrument(name = "keyvalue.delete_many", level = "debug", skip_all, fields(backend = Empty, bucket = Empty, otel.kind = "client"))]
    async fn delete_many(
        &mut self,
        bucket: Resource<BucketResource>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let b = self.bucket(&bucket, "delete-many")?;
        let result = async {
            b.admit("delete-many", Via::Batch, keys.iter().map(String::as_str))?;
            let b = &b;
            b.each(keys, |key| async move { b.delete(&key).await })
                .await
        }
        .await;
        Ok(b.finish(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::keyvalue::{KvInterfaces, MAX_KEY_BYTES, SledBucket, SledScope};

    /// A sled bucket in a temporary directory, opened through a link granting `interfaces`.
    fn opened(interfaces: KvInterfaces) -> (tempfile::TempDir, Opened) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let bucket = Arc::new(SledBucket::open(&db, "batch", SledScope::App("app")).unwrap());
        let opened = Opened {
            granted: GrantedBucket { bucket, interfaces },
            link: "default".into(),
            app: "app".into(),
            component: "component".into(),
            op: "get",
            span: tracing::Span::none(),
            finished: AtomicBool::new(true),
        };
        (dir, opened)
    }

    #[tokio::test]
    async fn a_call_dropped_before_it_finished_counts_as_an_error() {
        let metrics = crate::admin::metrics::install();
        let count = |result: &str| {
            let series = format!(
                r#"lattice_keyvalue_operations_total{{backend="sled",operation="get",result="{result}"}} "#
            );
            let text = metrics.render();
            text.lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .map_or(0, |v| v.trim().parse::<u64>().unwrap())
        };
        let (_dir, b) = opened(KvInterfaces::default());
        // One that ends: counted once, by how it ended.
        b.finished.store(false, Ordering::Relaxed);
        assert!(b.finish(Ok::<(), store::Error>(())).is_ok());
        drop(b);
        assert_eq!((count("ok"), count("error")), (1, 0));
        // One cut off (its future dropped, as the request deadline drops it): an error.
        let (_dir, b) = opened(KvInterfaces::default());
        b.finished.store(false, Ordering::Relaxed);
        let call = async move {
            let _b = b;
            std::future::pending::<()>().await;
        };
        let cut = tokio::time::timeout(std::time::Duration::from_millis(1), call).await;
        assert!(cut.is_err());
        assert_eq!((count("ok"), count("error")), (1, 1));
    }

    #[tokio::test]
    async fn batches_keep_their_order_and_stop_at_the_byte_cap() {
        let (_dir, b) = opened(KvInterfaces {
            store: true,
            atomics: true,
            batch: true,
        });
        let pairs: Vec<(String, Vec<u8>)> =
            (0..40).map(|i| (format!("k{i}"), vec![b'v'; i])).collect();
        b.each(pairs, |(key, value)| {
            let b = &b;
            async move { b.set(&key, Bytes::from(value)).await }
        })
        .await
        .unwrap();
        let keys: Vec<String> = (0..42).rev().map(|i| format!("k{i}")).collect();
        let values = b.get_many(keys).await.unwrap();
        assert_eq!(values.len(), 42);
        assert_eq!(values[0], None, "k41 was never set");
        assert_eq!(values[1], None, "k40 was never set");
        assert_eq!(values[2], Some(("k39".to_owned(), vec![b'v'; 39])));
        assert_eq!(values[41], Some(("k0".to_owned(), Vec::new())));

        b.each((0..40).map(|i| format!("k{i}")).collect(), |key| {
            let b = &b;
            async move { b.delete(&key).await }
        })
        .await
        .unwrap();
        assert!(!b.exists("k39").await.unwrap());

        // One 1 MiB value asked for 65 times passes the 64 MiB cap: an error, not 65 MiB held.
        b.set("big", Bytes::from(vec![0u8; 1 << 20])).await.unwrap();
        let err = b.get_many(vec!["big".to_owned(); 65]).await.unwrap_err();
        assert!(
            matches!(&err, store::Error::Other(text) if text.contains("more than 64 MiB")),
            "{err:?}"
        );
        assert_eq!(
            b.get_many(vec!["big".to_owned(); 64]).await.unwrap().len(),
            64
        );
    }

    #[test]
    fn calls_outside_the_links_interfaces_are_denied_and_long_keys_refused() {
        let (_dir, b) = opened(KvInterfaces {
            atomics: true,
            ..KvInterfaces::default()
        });
        assert!(b.admit("increment", Via::Atomics, ["k"]).is_ok());
        for via in [Via::Store, Via::Batch] {
            assert!(matches!(
                b.admit("get", via, ["k"]),
                Err(store::Error::AccessDenied)
            ));
        }
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        let err = b.admit("increment", Via::Atomics, ["k", long.as_str()]);
        assert!(
            matches!(&err, Err(store::Error::Other(text)) if text.contains("keyvalue-sled bucket batch of app app: increment") && text.contains("at most 1024")),
            "{err:?}"
        );
    }
}
