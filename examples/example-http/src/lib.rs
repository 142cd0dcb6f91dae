//! `example-http`: what the example components share, so each of them shows only its own
//! interface calls: sending a complete `wasi:http` response, and `%XX` decoding of query
//! parameters.

use std::io::Write as _;

use wasi::http::types::{ErrorCode, Fields, OutgoingBody, OutgoingResponse, ResponseOutparam};

/// Sends a complete `text/plain` response with `extra_headers`; see [`respond`].
pub fn respond_text(
    response_out: ResponseOutparam,
    status: u16,
    extra_headers: &[(String, Vec<u8>)],
    body: &[u8],
) {
    respond(response_out, status, "text/plain", extra_headers, body);
}

/// Sends a complete response: `status`, `content-type`, `extra_headers` and `body` (of any
/// length), or reports an internal error to the host if the response cannot be built.
pub fn respond(
    response_out: ResponseOutparam,
    status: u16,
    content_type: &str,
    extra_headers: &[(String, Vec<u8>)],
    body: &[u8],
) {
    let mut entries = vec![("content-type".to_string(), content_type.as_bytes().to_vec())];
    entries.extend_from_slice(extra_headers);
    let response = Fields::from_list(&entries)
        .map_err(|err| format!("cannot build response headers: {err:?}"))
        .and_then(|headers| {
            let response = OutgoingResponse::new(headers);
            response
                .set_status_code(status)
                .map_err(|()| format!("invalid status code {status}"))?;
            Ok(response)
        });
    let response = match response {
        Ok(response) => response,
        Err(message) => {
            ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(message))));
            return;
        }
    };
    let Ok(outgoing_body) = response.body() else {
        let message = "response body was already taken".to_string();
        ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(message))));
        return;
    };
    ResponseOutparam::set(response_out, Ok(response));

    let written = match outgoing_body.write() {
        // `write_all` respects the stream's `check-write` budget, so bodies of
        // any length are fine.
        Ok(mut stream) => stream
            .write_all(body)
            .and_then(|()| std::io::Write::flush(&mut stream))
            .is_ok(),
        Err(()) => false,
    };
    if written {
        // A failed finish means the client is gone; nobody is left to tell.
        let _ = OutgoingBody::finish(outgoing_body, None);
    }
    // Otherwise the body is dropped unfinished, so the host aborts the
    // response instead of passing on a truncated one as complete.
}

/// Decodes `%XX` escapes of a query parameter.
///
/// # Errors
/// A malformed escape, or bytes that are not UTF-8; the message quotes `text`.
pub fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("bad %-escape in {text:?}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{text:?} does not decode to UTF-8"))
}
