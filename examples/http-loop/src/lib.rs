//! `http-loop`: a deliberately misbehaving `wasi:http/proxy` component for testing request deadlines.
//!
//! Every request makes the guest spin forever: it never returns from `handle`
//! and never sets a response, so only the host's deadline (epoch or fuel
//! interruption) can end the request.

use std::hint::black_box;

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct HttpLoop;

wasi::http::proxy::export!(HttpLoop);

impl Guest for HttpLoop {
    fn handle(_request: IncomingRequest, _response_out: ResponseOutparam) {
        let mut counter: u64 = 0;
        loop {
            // `black_box` makes the counter observable, so the optimizer can
            // neither remove the loop nor turn it into something cheaper.
            counter = black_box(counter).wrapping_add(1);
        }
    }
}
