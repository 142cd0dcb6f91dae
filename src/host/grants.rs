//! What a component is granted by its manifest (DESIGN.md §5): its `config`, the buckets of
//! its keyvalue links (by link name) and the hosts of its http-client links. Granted only by
//! links; an import of `wasi:keyvalue` with no keyvalue link keeps the component from starting.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::logging::GuestLogLimiter;
use crate::providers::http_client::AllowedHosts;
use crate::providers::keyvalue::{Bucket, KvInterfaces};

/// A bucket of a keyvalue link, opened, and the interfaces the link grants it through.
#[derive(Clone)]
pub struct GrantedBucket {
    /// The open bucket.
    pub bucket: Arc<dyn Bucket>,
    /// What the link's `interfaces` list grants; other calls get `access-denied`.
    pub interfaces: KvInterfaces,
}

/// The grants of one component of one app, shared by all its instances.
pub struct Grants {
    /// App name, for logs.
    pub app: Arc<str>,
    /// Component name, for logs.
    pub component: Arc<str>,
    /// `wasi:config` values: the component's `config` properties.
    pub config: BTreeMap<String, String>,
    /// `wasi:keyvalue` buckets by the link name `store.open` takes.
    pub buckets: BTreeMap<Arc<str>, GrantedBucket>,
    /// Hosts `wasi:http/outgoing-handler` may reach; empty: none.
    pub allowed_hosts: Arc<AllowedHosts>,
    /// The rate limit of its log lines (`wasi:logging`, stdout, stderr), all instances together.
    pub log_limiter: GuestLogLimiter,
}

impl Grants {
    /// Nothing granted: no config, no bucket, no outgoing host.
    pub fn none(app: Arc<str>, component: Arc<str>) -> Grants {
        Grants {
            log_limiter: GuestLogLimiter::new(app.clone(), component.clone()),
            app,
            component,
            config: BTreeMap::new(),
            buckets: BTreeMap::new(),
            allowed_hosts: Arc::new(AllowedHosts::default()),
        }
    }

    /// Why a component with `imports` (interface names such as
    /// `wasi:keyvalue/store@0.2.0-draft`) may not start with these grants, naming the imports;
    /// `None` when it may.
    pub fn refusal(&self, imports: &[String]) -> Option<String> {
        let keyvalue = keyvalue_imports(imports);
        (!keyvalue.is_empty() && self.buckets.is_empty()).then(|| {
            format!(
                "the component imports {} but has no keyvalue link (add a `link` trait with \
                 namespace wasi, package keyvalue to a keyvalue-nats or keyvalue-sled capability)",
                keyvalue.join(", ")
            )
        })
    }
}

/// The `wasi:keyvalue` interfaces among `imports`: granted only by a keyvalue link.
pub fn keyvalue_imports(imports: &[String]) -> Vec<&str> {
    imports
        .iter()
        .map(String::as_str)
        .filter(|i| i.starts_with("wasi:keyvalue/"))
        .collect()
}
