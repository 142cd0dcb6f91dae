//! `wasi:keyvalue@0.2.0-draft` (store, atomics, batch) as wasmCloud hosts it: `store.open`
//! takes the name of one of the component's keyvalue links (default `default`) and gives its
//! bucket; any other identifier is `no-such-store`. The buckets are the providers'
//! (`providers::keyvalue`); every call has a span named after it.

use std::sync::Arc;

use bytes::Bytes;
use wasmtime::component::Resource;

use super::bindings::keyvalue::{atomics, batch, store};
use super::state::HostState;
use crate::providers::keyvalue::{Bucket, KEYS_PAGE, KvError};

/// The concrete type behind a `wasi:keyvalue/store.bucket` resource: an open bucket of one of
/// the component's links.
pub struct BucketResource {
    /// The link name the guest opened it by.
    link: Arc<str>,
    bucket: Arc<dyn Bucket>,
}

/// What `batch.get-many` returns: each key's pair, or `none` when absent.
type ManyValues = Vec<Option<(String, Vec<u8>)>>;

impl HostState {
    /// The bucket behind `resource`, and a way to report its errors.
    fn bucket(&self, resource: &Resource<BucketResource>) -> wasmtime::Result<Opened> {
        let resource = self.table.get(resource)?;
        Ok(Opened {
            bucket: resource.bucket.clone(),
            link: resource.link.clone(),
            app: self.grants.app.clone(),
            component: self.grants.component.clone(),
        })
    }
}

/// An open bucket taken out of the table for one call.
struct Opened {
    bucket: Arc<dyn Bucket>,
    link: Arc<str>,
    app: Arc<str>,
    component: Arc<str>,
}

impl std::ops::Deref for Opened {
    type Target = dyn Bucket;

    fn deref(&self) -> &Self::Target {
        &*self.bucket
    }
}

impl Opened {
    /// `e` as the guest sees it (`other`), logged for the operator with where it happened.
    fn error(&self, e: KvError) -> store::Error {
        tracing::warn!(
            app = %self.app,
            component = %self.component,
            link = %self.link,
            "wasi:keyvalue call failed: {e}"
        );
        store::Error::Other(e.0)
    }
}

impl store::Host for HostState {
    #[tracing::instrument(name = "wasi_keyvalue.open", level = "debug", skip_all, fields(identifier = %identifier))]
    async fn open(
        &mut self,
        identifier: String,
    ) -> wasmtime::Result<Result<Resource<BucketResource>, store::Error>> {
        let Some((link, bucket)) = self.grants.buckets.get_key_value(identifier.as_str()) else {
            tracing::debug!(
                app = %self.grants.app,
                component = %self.grants.component,
                identifier,
                "store.open: no keyvalue link by this name"
            );
            return Ok(Err(store::Error::NoSuchStore));
        };
        let resource = BucketResource {
            link: link.clone(),
            bucket: bucket.clone(),
        };
        Ok(Ok(self.table.push(resource)?))
    }
}

impl store::HostBucket for HostState {
    #[tracing::instrument(name = "wasi_keyvalue.get", level = "debug", skip_all)]
    async fn get(
        &mut self,
        bucket: Resource<BucketResource>,
        key: String,
    ) -> wasmtime::Result<Result<Option<Vec<u8>>, store::Error>> {
        let bucket = self.bucket(&bucket)?;
        Ok(bucket
            .get(&key)
            .await
            .map(|v| v.map(Vec::from))
            .map_err(|e| bucket.error(e)))
    }

    #[tracing::instrument(name = "wasi_keyvalue.set", level = "debug", skip_all)]
    async fn set(
        &mut self,
        bucket: Resource<BucketResource>,
        key: String,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let bucket = self.bucket(&bucket)?;
        Ok(bucket
            .set(&key, Bytes::from(value))
            .await
            .map_err(|e| bucket.error(e)))
    }

    #[tracing::instrument(name = "wasi_keyvalue.delete", level = "debug", skip_all)]
    async fn delete(
        &mut self,
        bucket: Resource<BucketResource>,
        key: String,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let bucket = self.bucket(&bucket)?;
        Ok(bucket.delete(&key).await.map_err(|e| bucket.error(e)))
    }

    #[tracing::instrument(name = "wasi_keyvalue.exists", level = "debug", skip_all)]
    async fn exists(
        &mut self,
        bucket: Resource<BucketResource>,
        key: String,
    ) -> wasmtime::Result<Result<bool, store::Error>> {
        let bucket = self.bucket(&bucket)?;
        Ok(bucket.exists(&key).await.map_err(|e| bucket.error(e)))
    }

    #[tracing::instrument(name = "wasi_keyvalue.list_keys", level = "debug", skip_all)]
    async fn list_keys(
        &mut self,
        bucket: Resource<BucketResource>,
        cursor: Option<u64>,
    ) -> wasmtime::Result<Result<store::KeyResponse, store::Error>> {
        let bucket = self.bucket(&bucket)?;
        Ok(bucket
            .keys(cursor.unwrap_or(0), KEYS_PAGE)
            .await
            .map(|(keys, cursor)| store::KeyResponse { keys, cursor })
            .map_err(|e| bucket.error(e)))
    }

    async fn drop(&mut self, bucket: Resource<BucketResource>) -> wasmtime::Result<()> {
        let resource = self.table.delete(bucket)?;
        tracing::trace!(link = %resource.link, "keyvalue bucket closed");
        Ok(())
    }
}

impl atomics::Host for HostState {
    #[tracing::instrument(name = "wasi_keyvalue.increment", level = "debug", skip_all)]
    async fn increment(
        &mut self,
        bucket: Resource<BucketResource>,
        key: String,
        delta: u64,
    ) -> wasmtime::Result<Result<u64, store::Error>> {
        let bucket = self.bucket(&bucket)?;
        Ok(bucket
            .increment(&key, delta)
            .await
            .map_err(|e| bucket.error(e)))
    }
}

impl batch::Host for HostState {
    #[tracing::instrument(name = "wasi_keyvalue.get_many", level = "debug", skip_all)]
    async fn get_many(
        &mut self,
        bucket: Resource<BucketResource>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<ManyValues, store::Error>> {
        let bucket = self.bucket(&bucket)?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            match bucket.get(&key).await {
                Ok(value) => values.push(value.map(|v| (key, Vec::from(v)))),
                Err(e) => return Ok(Err(bucket.error(e))),
            }
        }
        Ok(Ok(values))
    }

    #[tracing::instrument(name = "wasi_keyvalue.set_many", level = "debug", skip_all)]
    async fn set_many(
        &mut self,
        bucket: Resource<BucketResource>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let bucket = self.bucket(&bucket)?;
        for (key, value) in key_values {
            if let Err(e) = bucket.set(&key, Bytes::from(value)).await {
                return Ok(Err(bucket.error(e)));
            }
        }
        Ok(Ok(()))
    }

    #[tracing::instrument(name = "wasi_keyvalue.delete_many", level = "debug", skip_all)]
    async fn delete_many(
        &mut self,
        bucket: Resource<BucketResource>,
        keys: Vec<String>,
    ) -> wasmtime::Result<Result<(), store::Error>> {
        let bucket = self.bucket(&bucket)?;
        for key in keys {
            if let Err(e) = bucket.delete(&key).await {
                return Ok(Err(bucket.error(e)));
            }
        }
        Ok(Ok(()))
    }
}
