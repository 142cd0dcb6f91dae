//! `http-config`: a `wasi:http/proxy` component that serves its own `wasi:config` configuration.
//!
//! - `GET /config/<key>`: `wasi:config/store.get(key)` (the key `%XX`-decoded);
//!   `200`, `text/plain`, body `<value>\n`, or `404` with `no config key <key>\n`
//!   when it is not set.
//! - `GET /config` or `GET /config/`: `200`, body one `key=value\n` line per
//!   key, sorted by key.
//! - Every read logs `read <key>` (`read *` for the whole listing) at info
//!   level, context `config`, through `wasi:logging`.
//! - Other paths: `404`; other methods: `405`; a config error: `500` with
//!   `config error: <error>\n`; a malformed `%XX` escape in the key: `400`.
//!
//! The query string is ignored. Beyond `wasi:http` it imports only
//! `wasi:config/store` and `wasi:logging/logging`.

use example_http::{percent_decode, respond_text};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

#[allow(missing_docs, clippy::all)]
mod bindings {
    // A world of its own so the component imports `store` only, not the
    // first draft's `runtime` as well.
    wit_bindgen::generate!({
        inline: r#"
            package lattice-examples:http-config;

            world config {
                import wasi:config/store@0.2.0-draft;
                import wasi:logging/logging@0.1.0-draft;
            }
        "#,
        path: "../../wit",
        world: "config",
        generate_all,
    });
}

use bindings::wasi::config::store;
use bindings::wasi::logging::logging::{self, Level};

/// The route the manifest links this component on; keys are what follows it.
const ROUTE: &str = "/config";

struct HttpConfig;

wasi::http::proxy::export!(HttpConfig);

impl Guest for HttpConfig {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        if !matches!(request.method(), Method::Get) {
            let allow = [("allow".to_string(), b"GET".to_vec())];
            return respond_text(response_out, 405, &allow, b"method not allowed\n");
        }
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let path = path_with_query
            .split_once('?')
            .map_or(path_with_query.as_str(), |(path, _)| path);
        // `/configuration` is not under `/config`, hence the check for a `/`
        // after the prefix.
        let key = match path.strip_prefix(ROUTE) {
            Some("" | "/") => None,
            Some(rest) if rest.starts_with('/') => Some(&rest[1..]),
            _ => {
                let body = format!("no route {path}\n");
                return respond_text(response_out, 404, &[], body.as_bytes());
            }
        };

        let (status, body) = match key.map(percent_decode).transpose() {
            Ok(Some(key)) => get(&key),
            Ok(None) => get_all(),
            Err(err) => (400, format!("bad config key: {err}\n")),
        };
        respond_text(response_out, status, &[], body.as_bytes());
    }
}

/// Status and body for one key.
fn get(key: &str) -> (u16, String) {
    logging::log(Level::Info, "config", &format!("read {key}"));
    match store::get(key) {
        Ok(Some(value)) => (200, format!("{value}\n")),
        Ok(None) => (404, format!("no config key {key}\n")),
        Err(err) => (500, config_error(&err)),
    }
}

/// Status and body for the whole configuration.
fn get_all() -> (u16, String) {
    logging::log(Level::Info, "config", "read *");
    match store::get_all() {
        Ok(mut pairs) => {
            // The host returns the pairs in no promised order; sorting makes
            // the listing stable across instances and restarts.
            pairs.sort();
            let body = pairs
                .iter()
                .map(|(key, value)| format!("{key}={value}\n"))
                .collect();
            (200, body)
        }
        Err(err) => (500, config_error(&err)),
    }
}

/// The `500` body for a failed config call, the variant spelled as in the WIT.
fn config_error(err: &store::Error) -> String {
    match err {
        store::Error::Upstream(text) => format!("config error: upstream: {text}\n"),
        store::Error::Io(text) => format!("config error: io: {text}\n"),
    }
}
