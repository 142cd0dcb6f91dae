//! `http-large`: a `wasi:http/proxy` component with a lot of code (thousands of functions its
//! build script generates), so that compiling it takes seconds: for tests and benchmarks of
//! slow starts (`bench/slow-start.sh`).
//!
//! Every request is answered with `200 OK`, `text/plain`, body `Large from lattice: <path>
//! <n>\n`, where `<n>` is the path's bytes run through one of the generated functions (chosen
//! by the path's length), in hex.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

include!(concat!(env!("OUT_DIR"), "/generated.rs"));

struct HttpLarge;

wasi::http::proxy::export!(HttpLarge);

impl Guest for HttpLarge {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let seed = path
            .bytes()
            .fold(0u64, |a, b| a.rotate_left(8) ^ u64::from(b));
        let mixed = MIXERS[path.len() % MIXERS.len()](seed);
        let body = format!("Large from lattice: {path} {mixed:016x}\n");
        example_http::respond_text(response_out, 200, &[], body.as_bytes());
    }
}
