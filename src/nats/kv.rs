//! JetStream KV buckets opened, or created, without async-nats's `create_key_value`: that call
//! first queries the account, and async-nats 0.51 cannot parse nats-server 2.9's account info
//! (it lacks `reserved_memory`/`reserved_storage`). The stream is created with the KV
//! conventions of NATS ADR-8 instead, which is what `create_key_value` sends.

use anyhow::Context;
use async_nats::jetstream;
use async_nats::jetstream::kv::Store;

/// How a missing bucket is handled by [`open_bucket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfMissing {
    /// Create it (history 1, file storage, one replica).
    Create,
    /// Fail with an error naming the bucket.
    Fail,
}

/// Opens the KV bucket `bucket` in `js`'s JetStream (domain included), creating it as ADR-8
/// describes when it is missing and `if_missing` says so; `description` describes a created one.
///
/// # Errors
/// The bucket is missing and `if_missing` is [`IfMissing::Fail`]; the name is not a valid bucket
/// name (letters, digits, `-`, `_`); JetStream is unreachable or refuses the stream.
pub async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    if_missing: IfMissing,
) -> anyhow::Result<Store> {
    if bucket.is_empty()
        || !bucket
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        anyhow::bail!(
            "{bucket:?} is not a valid JetStream KV bucket name (letters, digits, '-' and '_')"
        );
    }
    let first = match js.get_key_value(bucket).await {
        Ok(kv) => return Ok(kv),
        Err(e) => e,
    };
    if if_missing == IfMissing::Fail {
        return Err(first).with_context(|| format!("opening JetStream KV bucket {bucket}"));
    }
    let created = js
        .create_stream(jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(description.to_owned()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: jetstream::stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: jetstream::stream::DiscardPolicy::New,
            num_replicas: 1,
            ..Default::default()
        })
        .await;
    // Another node may have created it meanwhile: open it either way.
    match js.get_key_value(bucket).await {
        Ok(kv) => Ok(kv),
        Err(e) => match created {
            Err(create) => {
                Err(create).with_context(|| format!("creating JetStream KV bucket {bucket}"))
            }
            Ok(_) => Err(e).with_context(|| format!("opening JetStream KV bucket {bucket}")),
        },
    }
}
