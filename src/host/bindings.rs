//! The one `bindgen!` of the interfaces we host beyond WASI 0.2 and wasi:http (`wit/`, world
//! `lattice:host/capabilities`): wasi:keyvalue, wasi:config, wasi:logging. Only what the
//! interface files (`keyvalue.rs`, `wasi_config.rs`, `logging.rs`) need is re-exported.

#[allow(missing_docs, reason = "bindgen-generated code")]
mod generated {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "lattice:host/capabilities",
        // No `tracing` of arguments and results for wasi:config (its values may be secrets),
        // wasi:logging (its messages are logged once already, by the interface itself) or
        // wasi:keyvalue (keys and values are user data, which would become events of the
        // exported spans; each call has a span of its own, `keyvalue.rs`).
        imports: {
            "wasi:keyvalue": async | trappable,
            "wasi:config": trappable,
            "wasi:logging": trappable,
            default: tracing | trappable,
        },
        with: {
            "wasi:keyvalue/store.bucket": crate::host::keyvalue::BucketResource,
        },
    });
}

pub use self::generated::Capabilities;
pub use self::generated::wasi::{config, keyvalue, logging};
