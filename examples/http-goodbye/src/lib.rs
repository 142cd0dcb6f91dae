//! `http-goodbye`: a `wasi:http/proxy` component that says goodbye; an alternative to `http-hello`.
//!
//! Every request is answered with `200 OK`, `content-type: text/plain` and the
//! body `Goodbye from lattice: <path-with-query>\n`, so tests that swap a
//! manifest from `http-hello` to this component can tell which one answered.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

struct HttpGoodbye;

wasi::http::proxy::export!(HttpGoodbye);

impl Guest for HttpGoodbye {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let body = format!("Goodbye from lattice: {path}\n");
        respond_text(response_out, 200, body.as_bytes());
    }
}

/// Sends a complete `text/plain` response, or reports an internal error to the
/// host if the response cannot be built.
fn respond_text(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = match Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())]) {
        Ok(headers) => headers,
        Err(err) => {
            let message = format!("cannot build response headers: {err:?}");
            ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(message))));
            return;
        }
    };
    let response = OutgoingResponse::new(headers);
    response
        .set_status_code(status)
        .expect("status code is a valid HTTP status");
    let outgoing_body = response.body().expect("response body is taken only once");
    ResponseOutparam::set(response_out, Ok(response));

    {
        let stream = outgoing_body
            .write()
            .expect("response body stream is taken only once");
        // The body is far below the 4096-byte limit of a single
        // `blocking-write-and-flush` call.
        stream
            .blocking_write_and_flush(body)
            .expect("writing the response body");
        // `stream` is a child of `outgoing_body` and must be dropped before it
        // is finished; the end of this block does that.
    }
    OutgoingBody::finish(outgoing_body, None).expect("finishing the response body");
}
