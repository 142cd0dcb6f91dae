//! `http-keyvalue-counter`: a `wasi:http/proxy` component that counts hits per path in a `wasi:keyvalue` bucket.
//!
//! The bucket is `store::open(<store>)`, `<store>` being the `store` query
//! parameter (`default` when absent or empty); the key is the request path
//! without its query, e.g. `/counter/a`.
//!
//! - `POST`: `atomics::increment(bucket, key, 1)`, answers `200`, `text/plain`,
//!   body `<new value>\n`, and logs `incremented <key> to <n>` at info level
//!   (context `counter`) through `wasi:logging`.
//! - `GET`: `bucket.get(key)`, answers `200` with `<value>\n`, or `0\n` when
//!   the key is absent.
//! - Any other method: `405` with an `allow` header.
//! - Any keyvalue error: `500`, body `keyvalue error: <what> (<error>)\n`,
//!   e.g. `keyvalue error: open "x" (no-such-store)`.
//! - A malformed `%XX` escape in the `store` parameter: `400`.
//!
//! It imports only `wasi:keyvalue/store`, `wasi:keyvalue/atomics` and
//! `wasi:logging/logging` beyond `wasi:http`, so a node must link it to a
//! keyvalue capability before it starts.

use example_http::{percent_decode, respond_text};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

#[allow(missing_docs, clippy::all)]
mod bindings {
    // A world of its own rather than `wasi:keyvalue/imports`, which would also
    // import `batch`: a component should ask the node only for what it calls.
    wit_bindgen::generate!({
        inline: r#"
            package lattice-examples:http-keyvalue-counter;

            world counter {
                import wasi:keyvalue/store@0.2.0-draft;
                import wasi:keyvalue/atomics@0.2.0-draft;
                import wasi:logging/logging@0.1.0-draft;
            }
        "#,
        path: "../../wit",
        world: "counter",
        generate_all,
    });
}

use bindings::wasi::keyvalue::{atomics, store};
use bindings::wasi::logging::logging::{self, Level};

/// The bucket identifier used when the request names none; it is also the
/// link name a manifest gets when its keyvalue link has no `name`.
const DEFAULT_STORE: &str = "default";

struct HttpKeyvalueCounter;

wasi::http::proxy::export!(HttpKeyvalueCounter);

impl Guest for HttpKeyvalueCounter {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (key, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_with_query.as_str(), None),
        };
        let identifier = match store_parameter(query.unwrap_or_default()) {
            Ok(Some(name)) if !name.is_empty() => name,
            Ok(_) => DEFAULT_STORE.to_string(),
            Err(err) => {
                let body = format!("bad store parameter: {err}\n");
                return respond_text(response_out, 400, &[], body.as_bytes());
            }
        };

        let answer = match request.method() {
            Method::Post => increment(&identifier, key),
            Method::Get => get(&identifier, key),
            _ => {
                let allow = [("allow".to_string(), b"GET, POST".to_vec())];
                return respond_text(response_out, 405, &allow, b"method not allowed\n");
            }
        };
        match answer {
            Ok(body) => respond_text(response_out, 200, &[], body.as_bytes()),
            Err(body) => respond_text(response_out, 500, &[], body.as_bytes()),
        }
    }
}

/// Adds one to `key` in the bucket `identifier`; the body to send, or the
/// error body.
fn increment(identifier: &str, key: &str) -> Result<String, String> {
    let bucket = open(identifier)?;
    let value = atomics::increment(&bucket, key, 1)
        .map_err(|err| keyvalue_error(&format!("increment {key:?}"), &err))?;
    logging::log(
        Level::Info,
        "counter",
        &format!("incremented {key} to {value}"),
    );
    Ok(format!("{value}\n"))
}

/// Reads `key` from the bucket `identifier`, `0` when absent.
fn get(identifier: &str, key: &str) -> Result<String, String> {
    let bucket = open(identifier)?;
    let value = bucket
        .get(key)
        .map_err(|err| keyvalue_error(&format!("get {key:?}"), &err))?;
    // Counters are stored as decimal ASCII; anything else written to the key by
    // another client is shown as it is rather than refused.
    let value = value.map_or_else(
        || "0".to_string(),
        |bytes| String::from_utf8_lossy(&bytes).into_owned(),
    );
    Ok(format!("{value}\n"))
}

fn open(identifier: &str) -> Result<store::Bucket, String> {
    store::open(identifier).map_err(|err| keyvalue_error(&format!("open {identifier:?}"), &err))
}

/// The `500` body for a failed keyvalue call; the error is spelled as in the
/// WIT so that it can be matched against the interface.
fn keyvalue_error(what: &str, err: &store::Error) -> String {
    let err = match err {
        store::Error::NoSuchStore => "no-such-store".to_string(),
        store::Error::AccessDenied => "access-denied".to_string(),
        store::Error::Other(text) => format!("other: {text}"),
    };
    format!("keyvalue error: {what} ({err})\n")
}

/// The percent-decoded value of the first `store=` parameter of `query`,
/// `None` when there is none.
fn store_parameter(query: &str) -> Result<Option<String>, String> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("store="))
        .map(percent_decode)
        .transpose()
}
