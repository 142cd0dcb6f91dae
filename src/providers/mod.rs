//! Built-in providers: the capabilities the node offers components without a separate process.
//! `http` is the ingress, `http_client` the outgoing-HTTP policy, `keyvalue` the buckets behind
//! `wasi:keyvalue`.

pub mod http;
pub mod http_client;
pub mod keyvalue;
