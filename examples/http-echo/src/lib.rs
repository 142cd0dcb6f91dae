//! `http-echo`: a `wasi:http/proxy` component that streams the request body back as the response.
//!
//! Every request is answered with `200 OK` and a body that is exactly the
//! request body (possibly empty), streamed chunk by chunk so large bodies never
//! sit in guest memory as a whole. Response headers:
//!
//! - `content-type: application/octet-stream`
//! - `x-echo-method: <METHOD>`
//! - `x-echo-path: <path-with-query>`
//! - every request header whose name starts with `x-`, copied verbatim
//!   (except request headers named `x-echo-method` or `x-echo-path`, which
//!   would clash with the two above).
//!
//! With a request header `x-echo-generate: N` the body is instead N generated
//! bytes (byte i is `i % 251`) with `content-length: N`, written without
//! reading the request body: a large response to a small request.
//!
//! Headers for testing the host: `x-echo-sleep-ms: N` holds the instance N ms (a
//! clock wait, no CPU) before answering, `x-echo-spin-ms: N` keeps the CPU busy
//! N ms (so only epoch interruption can stop it early), and
//! `x-echo-trap: <message>` makes the guest trap (a Rust panic, which aborts)
//! before it sets a response, and `x-echo-stash-body: on` returns with the
//! response body written but neither finished nor dropped (its handle leaked,
//! as a garbage-collected guest may leave it).
//!
//! Every response also carries `x-echo-served: N`, the requests this instance
//! has handled, this one included (a counter in a static): `1` on every request
//! when each gets a fresh instance, growing when the host reuses instances.
//!
//! Two more for testing the host's handling of guest logs: `x-echo-log: <text>` logs `<text>`
//! (`%XX`-decoded, so `%0A` is a newline) before answering, `x-echo-log-count: N` times
//! (default 1), through `x-echo-log-to`: `logging` (the default: `wasi:logging` at info level,
//! context `echo`, one call per line), `stdout` or `stderr` (one `println!`/`eprintln!` per
//! line). A malformed escape answers `400`.
//!
//! Beyond `wasi:http` it imports only `wasi:logging/logging` (and the WASI 0.2 basics); built
//! without its default feature `logging`, not even that (`x-echo-log` then goes to stderr).

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::StreamError;

#[cfg(feature = "logging")]
#[allow(missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package lattice-examples:http-echo;

            world echo {
                import wasi:logging/logging@0.1.0-draft;
            }
        "#,
        path: "../../wit",
        world: "echo",
        generate_all,
    });
}

#[cfg(feature = "logging")]
use bindings::wasi::logging::logging::{self, Level};

/// Largest number of bytes asked for in one read of the request body.
const READ_CHUNK: u64 = 64 * 1024;

/// Requests this instance has handled: its linear memory outlives a request only when the host
/// reuses the instance.
static SERVED: AtomicU64 = AtomicU64::new(0);

struct HttpEcho;

wasi::http::proxy::export!(HttpEcho);

impl Guest for HttpEcho {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(message) = header_text(&request, "x-echo-trap") {
            panic!("x-echo-trap: {message}");
        }
        if let Some(ms) = header_text(&request, "x-echo-sleep-ms").and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        if let Some(ms) = header_text(&request, "x-echo-spin-ms").and_then(|v| v.parse().ok()) {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            while std::time::Instant::now() < until {
                std::hint::spin_loop();
            }
        }
        if let Some(text) = header_text(&request, "x-echo-log") {
            let text = match example_http::percent_decode(&text) {
                Ok(text) => text,
                Err(err) => {
                    let body = format!("x-echo-log: {err}\n");
                    return example_http::respond_text(response_out, 400, &[], body.as_bytes());
                }
            };
            let count: u64 = header_text(&request, "x-echo-log-count")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            let to = header_text(&request, "x-echo-log-to");
            for _ in 0..count {
                match to.as_deref() {
                    Some("stdout") => println!("{text}"),
                    Some("stderr") => eprintln!("{text}"),
                    #[cfg(feature = "logging")]
                    _ => logging::log(Level::Info, "echo", &text),
                    #[cfg(not(feature = "logging"))]
                    _ => eprintln!("{text}"),
                }
            }
        }
        let method = method_name(&request.method());
        let path = request.path_with_query().unwrap_or_else(|| "/".to_string());

        let generate = request
            .headers()
            .get("x-echo-generate")
            .first()
            .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse::<u64>().ok());

        let mut entries = vec![
            (
                "content-type".to_string(),
                b"application/octet-stream".to_vec(),
            ),
            ("x-echo-method".to_string(), method.into_bytes()),
            ("x-echo-path".to_string(), path.into_bytes()),
            ("x-echo-served".to_string(), served.to_string().into_bytes()),
        ];
        // A generated body's length is known: declared, as most components do.
        if let Some(len) = generate {
            entries.push(("content-length".to_string(), len.to_string().into_bytes()));
        }
        entries.extend(request.headers().entries().into_iter().filter(|(name, _)| {
            let name = name.to_ascii_lowercase();
            name.starts_with("x-") && name != "x-echo-method" && name != "x-echo-path" && name != "x-echo-served"
        }));
        let headers = match Fields::from_list(&entries) {
            Ok(headers) => headers,
            Err(err) => {
                let message = format!("cannot build response headers: {err:?}");
                ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(message))));
                return;
            }
        };

        let stash_body = header_text(&request, "x-echo-stash-body").is_some();

        let Ok(incoming_body) = request.consume() else {
            let message = "request body was already consumed".to_string();
            ResponseOutparam::set(response_out, Err(ErrorCode::InternalError(Some(message))));
            return;
        };

        let response = OutgoingResponse::new(headers);
        let outgoing_body = response.body().expect("response body is taken only once");
        // Send the head now so the body can be streamed while the request is
        // still arriving.
        ResponseOutparam::set(response_out, Ok(response));

        let copied = {
            let input = incoming_body
                .stream()
                .expect("request body stream is taken only once");
            let mut output = outgoing_body
                .write()
                .expect("response body stream is taken only once");
            match generate {
                Some(len) => write_generated(len, &mut output),
                None => copy(&input, &mut output),
            }
            // `input` and `output` are children of the two bodies and are
            // dropped here, before the bodies themselves.
        };
        drop(incoming_body);

        match copied {
            Ok(()) if stash_body => std::mem::forget(outgoing_body),
            Ok(()) => {
                OutgoingBody::finish(outgoing_body, None).expect("finishing the response body");
            }
            Err(err) => {
                // The status line is already sent; dropping the body without
                // finishing it tells the host the response is incomplete, so
                // the client sees an aborted body rather than a short one.
                eprintln!("http-echo: {err}");
                drop(outgoing_body);
            }
        }
    }
}

/// Copies `input` to `output` until the input ends, then flushes the output.
///
/// Writes go through `std::io::Write`, which never writes more than the
/// stream's `check-write` budget allows and waits for it when it is zero.
fn copy(
    input: &wasi::io::streams::InputStream,
    output: &mut wasi::io::streams::OutputStream,
) -> Result<(), String> {
    loop {
        let chunk = match input.blocking_read(READ_CHUNK) {
            Ok(chunk) => chunk,
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(err)) => {
                return Err(format!("reading request body: {}", err.to_debug_string()));
            }
        };
        output
            .write_all(&chunk)
            .map_err(|err| format!("writing response body: {err}"))?;
    }
    output
        .flush()
        .map_err(|err| format!("flushing response body: {err}"))
}

/// Writes `len` bytes, byte i being `i % 251`, then flushes.
fn write_generated(len: u64, output: &mut wasi::io::streams::OutputStream) -> Result<(), String> {
    let pattern: Vec<u8> = (0..251u32 * 256).map(|i| (i % 251) as u8).collect();
    let mut left = len;
    while left > 0 {
        // Whole multiples of 251 keep the pattern continuous across writes.
        let n = left.min(pattern.len() as u64) as usize;
        output
            .write_all(&pattern[..n])
            .map_err(|err| format!("writing response body: {err}"))?;
        left -= n as u64;
    }
    output
        .flush()
        .map_err(|err| format!("flushing response body: {err}"))
}

/// The first value of header `name`, trimmed, if it is UTF-8.
fn header_text(request: &IncomingRequest, name: &str) -> Option<String> {
    let values = request.headers().get(name);
    let value = std::str::from_utf8(values.first()?).ok()?;
    Some(value.trim().to_string())
}

/// The HTTP method as it appears on the request line.
fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other.as_str(),
    }
    .to_string()
}
