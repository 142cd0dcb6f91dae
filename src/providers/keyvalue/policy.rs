//! Which buckets a keyvalue link may name: never the lattice's own (checked when a manifest is
//! validated, and again when a bucket is opened), and on each node what its operator allows:
//! the keyvalue-sled buckets every app shares (`--shared-bucket`), the keyvalue-nats buckets
//! links may name (`--allowed-buckets`).

use std::collections::BTreeSet;

use crate::name::Name;

/// Bucket names starting with this (in any case) are the lattice's own and refused in links:
/// the JetStream KV bucket `lattice_<lattice>_apps` holds every app's manifest (config values
/// included) and is the lattice's desired state; the object store `lattice_<lattice>_artifacts`
/// holds every component's wasm (`nats::subjects`).
pub const RESERVED_PREFIX: &str = "lattice_";

/// The longest keyvalue bucket name, in characters: the name appears twice in the NATS subject
/// of a KV read (`$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>`), which with a key of
/// `MAX_KEY_BYTES` must stay well under nats-server's 4096-byte `max_control_line`.
pub const MAX_BUCKET_NAME: usize = 128;

/// Checks the bucket name a link gives (`bucket` of its target config).
///
/// # Errors
/// The reason, as text: not a [`Name`], longer than [`MAX_BUCKET_NAME`], or starting with
/// [`RESERVED_PREFIX`].
pub fn check_bucket_name(bucket: &str) -> Result<Name, String> {
    let name = Name::new(bucket).map_err(|e| e.to_string())?;
    if bucket.len() > MAX_BUCKET_NAME {
        return Err(format!(
            "{bucket:?}: {} characters, at most {MAX_BUCKET_NAME} are allowed",
            bucket.len()
        ));
    }
    if is_reserved(bucket) {
        return Err(format!(
            "{bucket:?}: names starting with {RESERVED_PREFIX:?} are reserved for the lattice's own \
             buckets (lattice_<lattice>_apps holds every app's manifest and the desired state, \
             lattice_<lattice>_artifacts every component's wasm); choose another name"
        ));
    }
    Ok(name)
}

/// Whether `bucket` starts with [`RESERVED_PREFIX`], ignoring ASCII case.
pub fn is_reserved(bucket: &str) -> bool {
    bucket
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(RESERVED_PREFIX))
}

/// What a node's operator allows of keyvalue buckets on this node (`NodeConfig::buckets`).
///
/// keyvalue-sled buckets are per app: the tree of bucket `b` of app `a` is `keyvalue/a/b` (and
/// `keyvalue/a` for the app's default bucket, named like it), so two apps naming the same
/// bucket see different data, unless `b` is in [`BucketPolicy::shared_sled`]: then every app
/// naming it opens the tree `keyvalue/b`. That is the tree every keyvalue-sled bucket had
/// before buckets were per app: an app's default bucket keeps its data as it was, and the data
/// of another bucket stored then is readable by listing it as shared. Sharing a bucket named
/// like an app shares that app's default bucket.
///
/// keyvalue-nats buckets keep their plain names (wasmCloud compatibility: other NATS clients
/// share them); with [`BucketPolicy::allowed_nats`] set, a link may name only those matching
/// one of its patterns on this node, and a replica linking another fails to start here.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BucketPolicy {
    /// keyvalue-sled buckets every app on this node shares (`--shared-bucket`).
    pub shared_sled: BTreeSet<Name>,
    /// Glob patterns (`app_*`) of the keyvalue-nats buckets links may name (`--allowed-buckets`),
    /// matched case-sensitively (JetStream bucket names are); `None`: any bucket but the
    /// lattice's own; empty (`allowed-buckets = []` in `lattice.toml`): none.
    pub allowed_nats: Option<Vec<glob::Pattern>>,
}

impl BucketPolicy {
    /// Reads one `--shared-bucket` value.
    ///
    /// # Errors
    /// The reason, as text: not a bucket name a link could give ([`check_bucket_name`]).
    pub fn parse_shared(text: &str) -> Result<Name, String> {
        check_bucket_name(text)
    }

    /// Reads one `--allowed-buckets` glob pattern (`*`, `?`, `[...]` as the `glob` crate reads
    /// them; bucket names have no `/`).
    ///
    /// # Errors
    /// The reason, as text: empty, or not a glob pattern.
    pub fn parse_pattern(text: &str) -> Result<glob::Pattern, String> {
        if text.is_empty() {
            return Err("an empty pattern matches no bucket".to_owned());
        }
        glob::Pattern::new(text).map_err(|e| format!("{text:?} is not a glob pattern: {e}"))
    }

    /// Whether every app on this node shares keyvalue-sled bucket `bucket`.
    pub fn is_shared(&self, bucket: &str) -> bool {
        self.shared_sled.contains(bucket)
    }

    /// Whether a link may name keyvalue-nats bucket `bucket` on this node.
    ///
    /// # Errors
    /// The reason, as text: the bucket is the lattice's own, or matches none of
    /// [`BucketPolicy::allowed_nats`] (the patterns are listed).
    pub fn check_nats(&self, bucket: &str) -> Result<(), String> {
        check_bucket_name(bucket)?;
        match &self.allowed_nats {
            Some(patterns) if patterns.is_empty() => Err(
                "this node's operator allows links to name no keyvalue-nats bucket \
                 (--allowed-buckets: none)"
                    .to_owned(),
            ),
            Some(patterns) if !patterns.iter().any(|p| p.matches(bucket)) => Err(format!(
                "this node's operator does not allow links to name it (--allowed-buckets: {})",
                patterns
                    .iter()
                    .map(glob::Pattern::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lattices_own_buckets_are_refused_with_the_reason() {
        for reserved in [
            "lattice_default_apps",
            "lattice_blue_artifacts",
            "LATTICE_x",
        ] {
            let reason = check_bucket_name(reserved).unwrap_err();
            assert!(reason.contains("reserved"), "{reserved}: {reason}");
        }
        assert!(check_bucket_name("latticex").is_ok());
        assert!(check_bucket_name("my_lattice_apps").is_ok());
        assert!(check_bucket_name("a.b").unwrap_err().contains("'.'"));
        assert!(
            check_bucket_name(&"b".repeat(129))
                .unwrap_err()
                .contains("128")
        );
    }

    #[test]
    fn allowed_patterns_restrict_nats_buckets() {
        let open = BucketPolicy::default();
        assert!(open.check_nats("anything").is_ok());
        assert!(open.check_nats("lattice_default_apps").is_err());
        let policy = BucketPolicy {
            allowed_nats: Some(vec![
                BucketPolicy::parse_pattern("app_*").unwrap(),
                BucketPolicy::parse_pattern("exact").unwrap(),
            ]),
            ..BucketPolicy::default()
        };
        assert!(policy.check_nats("app_counters").is_ok());
        assert!(policy.check_nats("exact").is_ok());
        let reason = policy.check_nats("other").unwrap_err();
        assert!(
            reason.contains("--allowed-buckets: app_*, exact"),
            "{reason}"
        );
        // Case-sensitive, as JetStream bucket names are.
        assert!(policy.check_nats("APP_counters").is_err());
        assert!(policy.check_nats("Exact").is_err());
        // An empty list allows none.
        let none = BucketPolicy {
            allowed_nats: Some(Vec::new()),
            ..BucketPolicy::default()
        };
        let reason = none.check_nats("anything").unwrap_err();
        assert!(reason.contains("--allowed-buckets: none"), "{reason}");
        assert!(BucketPolicy::parse_pattern("").is_err());
        assert!(BucketPolicy::parse_pattern("a[").is_err());
    }
}
