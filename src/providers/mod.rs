//! Built-in providers: the capabilities the node offers components without a separate process.

pub mod http;
