//! JetStream KV buckets opened, or created, without async-nats's `create_key_value`: that call
//! first queries the account, and async-nats 0.51 cannot parse nats-server 2.9's account info
//! (it lacks `reserved_memory`/`reserved_storage`). The stream is created with the KV
//! conventions of NATS ADR-8 instead, which is what `create_key_value` sends.

use async_nats::jetstream;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::kv::Store;

/// The stream of KV bucket `bucket` as NATS ADR-8 lays it out (history 1, file storage), with
/// `replicas` replicas.
pub fn stream_config(
    bucket: &str,
    description: &str,
    replicas: usize,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// How a missing bucket is handled by [`open_bucket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Create it (history 1, file storage, one replica).
    Create,
    /// Fail with [`OpenBucketError::Missing`].
    Fail,
}

/// Why a KV bucket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenBucketError {
    /// The name is not a valid bucket name ([`crate::name::Name`]'s rule, NATS ADR-8's).
    #[error("JetStream KV bucket name {0:?}: {1}")]
    InvalidName(String, crate::name::NameError),
    /// JetStream answered that the bucket does not exist.
    #[error("JetStream KV bucket {0} does not exist")]
    Missing(String),
    /// JetStream did not answer, or refused the request.
    #[error("JetStream KV bucket {bucket}: {reason}")]
    Unavailable {
        /// The bucket's name.
        bucket: String,
        /// What JetStream said, or that it did not answer.
        reason: String,
    },
}

/// Opens the KV bucket `bucket` in `js`'s JetStream (domain included), creating it as ADR-8
/// describes when it is missing and `if_missing` says so; `description` describes a created one.
///
/// # Errors
/// [`OpenBucketError`]: a bad name, the bucket missing (with [`IfMissing::Fail`]), or JetStream
/// unreachable or refusing the stream.
pub async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    if_missing: IfMissing,
) -> Result<Store, OpenBucketError> {
    open_bucket_with_replicas(js, bucket, description, if_missing, 1).await
}

/// [`open_bucket`], a created bucket having `replicas` replicas (1..=5; more than 1 needs a
/// JetStream cluster).
///
/// # Errors
/// As [`open_bucket`]; a server refusing the replicas is [`OpenBucketError::Unavailable`] with
/// its reason.
pub async fn open_bucket_with_replicas(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    if_missing: IfMissing,
    replicas: usize,
) -> Result<Store, OpenBucketError> {
    if let Err(e) = crate::name::Name::check(bucket) {
        return Err(OpenBucketError::InvalidName(bucket.to_owned(), e));
    }
    let unavailable = |reason: String| OpenBucketError::Unavailable {
        bucket: bucket.to_owned(),
        reason,
    };
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => {
            return js
                .get_key_value(bucket)
                .await
                .map_err(|e| unavailable(e.to_string()));
        }
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(err)
                if err.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {}
            _ => return Err(unavailable(e.to_string())),
        },
    }
    if if_missing == IfMissing::Fail {
        return Err(OpenBucketError::Missing(bucket.to_owned()));
    }
    let created = js
        .create_stream(stream_config(bucket, description, replicas))
        .await;
    // Another node may have created it meanwhile: open it either way.
    match js.get_key_value(bucket).await {
        Ok(kv) => Ok(kv),
        Err(e) => Err(unavailable(match created {
            Err(create) => format!("creating it: {create}"),
            Ok(_) => e.to_string(),
        })),
    }
}
