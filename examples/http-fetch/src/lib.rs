//! `http-fetch`: a `wasi:http/proxy` component that fetches a URL with `wasi:http/outgoing-handler`.
//!
//! `GET /fetch?url=<absolute URL>` makes a `GET` to that URL and answers
//! `200`, `text/plain`, body `<upstream status>\n<upstream body>`.
//!
//! - The URL is everything after `url=` in the query, `%XX`-decoded, so an
//!   upstream URL with a query of its own may be passed unescaped; `http` and
//!   `https` are accepted, the `#fragment` is dropped.
//! - `wasi:http` does not follow redirects. With `follow=N` before `url=`
//!   (`/fetch?follow=3&url=…`) the component does, up to `N` times: on a
//!   `301`, `302`, `303`, `307` or `308` with a `location` (absolute, or a
//!   path on the same host) it makes a new `GET` there, which the host checks
//!   like the first. The answer is the last response's; a redirect past `N`
//!   is answered as it came.
//! - An error code from `outgoing-handler.handle`, from the response future or
//!   while reading the upstream body: `502`, body
//!   `outgoing request failed: <ErrorCode as Debug>\n`. A host not allowing the
//!   host thus gives `outgoing request failed: ErrorCode::HttpRequestDenied`,
//!   an address of the node's own networks no entry names
//!   `ErrorCode::DestinationIpProhibited`.
//! - A `location` this component cannot send to (not http/https, user info):
//!   `400`.
//! - Missing or invalid `url`: `400`; a method other than `GET`: `405`.
//!
//! The upstream body is read whole before answering, so a failure half-way
//! still gets a `502` rather than a truncated `200`; bodies above
//! [`MAX_UPSTREAM_BODY`] are refused with `HttpResponseBodySize`.
//!
//! It uses only `wasi:http` (`outgoing-handler` and `types`), so it needs an
//! http-client link and nothing else.

use example_http::{percent_decode, respond_text};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, IncomingResponse, Method, OutgoingRequest,
    ResponseOutparam, Scheme,
};
use wasi::io::streams::StreamError;

/// Largest upstream body passed on; the whole body sits in guest memory.
const MAX_UPSTREAM_BODY: u64 = 16 * 1024 * 1024;

/// Largest number of bytes asked for in one read of the upstream body.
const READ_CHUNK: u64 = 64 * 1024;

struct HttpFetch;

wasi::http::proxy::export!(HttpFetch);

impl Guest for HttpFetch {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        if !matches!(request.method(), Method::Get) {
            let allow = [("allow".to_string(), b"GET".to_vec())];
            return respond_text(response_out, 405, &allow, b"method not allowed\n");
        }
        let path_with_query = request.path_with_query().unwrap_or_default();
        let target = match url_parameter(&path_with_query).and_then(|url| Target::parse(&url)) {
            Ok(target) => target,
            Err(err) => {
                let body = format!("{err}\n");
                return respond_text(response_out, 400, &[], body.as_bytes());
            }
        };
        let follow = match follow_parameter(&path_with_query) {
            Ok(follow) => follow,
            Err(err) => {
                let body = format!("{err}\n");
                return respond_text(response_out, 400, &[], body.as_bytes());
            }
        };
        match fetch_following(target, follow) {
            Ok(Ok((status, upstream_body))) => {
                let mut body = format!("{status}\n").into_bytes();
                body.extend_from_slice(&upstream_body);
                respond_text(response_out, 200, &[], &body);
            }
            Ok(Err(code)) => {
                let body = format!("outgoing request failed: {code:?}\n");
                respond_text(response_out, 502, &[], body.as_bytes());
            }
            Err(err) => {
                let body = format!("{err}\n");
                respond_text(response_out, 400, &[], body.as_bytes());
            }
        }
    }
}

/// What one `GET` answered: status, `location` (if any) and body.
struct Fetched {
    status: u16,
    location: Option<String>,
    body: Vec<u8>,
}

/// `GET target`, following up to `follow` redirects; the outer error is a URL
/// this component cannot send (the first, or a `location`), the inner one the
/// host's error code for a request.
fn fetch_following(
    mut target: Target,
    follow: u32,
) -> Result<Result<(u16, Vec<u8>), ErrorCode>, String> {
    let mut left = follow;
    loop {
        let fetched = match fetch(target.request()?) {
            Ok(fetched) => fetched,
            Err(code) => return Ok(Err(code)),
        };
        let redirect = matches!(fetched.status, 301 | 302 | 303 | 307 | 308);
        match fetched.location {
            Some(location) if redirect && left > 0 => {
                left -= 1;
                target = target.join(&location)?;
            }
            _ => return Ok(Ok((fetched.status, fetched.body))),
        }
    }
}

/// Sends `request` and reads the whole answer: its status, `location` and body.
fn fetch(request: OutgoingRequest) -> Result<Fetched, ErrorCode> {
    let future = outgoing_handler::handle(request, None)?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(result)) => result?,
        // After `block` the response is ready, and it is taken only here.
        Some(Err(())) | None => {
            return Err(internal("response future already taken or not ready"));
        }
    };
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .first()
        .and_then(|value| String::from_utf8(value.clone()).ok());
    let body = read_body(&response)?;
    Ok(Fetched {
        status,
        location,
        body,
    })
}

/// The whole body of `response`, at most [`MAX_UPSTREAM_BODY`] bytes.
fn read_body(response: &IncomingResponse) -> Result<Vec<u8>, ErrorCode> {
    let incoming_body = response
        .consume()
        .map_err(|()| internal("upstream body already consumed"))?;
    let mut body = Vec::new();
    {
        let stream = incoming_body
            .stream()
            .map_err(|()| internal("upstream body stream already taken"))?;
        loop {
            match stream.blocking_read(READ_CHUNK) {
                Ok(chunk) => body.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(err)) => {
                    return Err(wasi::http::types::http_error_code(&err)
                        .unwrap_or_else(|| internal(&err.to_debug_string())));
                }
            }
            if body.len() as u64 > MAX_UPSTREAM_BODY {
                return Err(ErrorCode::HttpResponseBodySize(Some(MAX_UPSTREAM_BODY)));
            }
        }
        // `stream` is a child of `incoming_body` and must go first.
    }
    drop(incoming_body);
    Ok(body)
}

fn internal(message: &str) -> ErrorCode {
    ErrorCode::InternalError(Some(message.to_string()))
}

/// The `%XX`-decoded text after `url=` in the query of `path_with_query`.
///
/// The value runs to the end of the query rather than to the next `&`, so
/// that `?url=http://host/p?a=1&b=2` fetches `http://host/p?a=1&b=2`.
fn url_parameter(path_with_query: &str) -> Result<String, String> {
    let query = path_with_query
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or_default();
    let raw = match query.strip_prefix("url=") {
        Some(raw) => raw,
        None => match query.find("&url=") {
            Some(at) => &query[at + "&url=".len()..],
            None => return Err("missing url query parameter".to_string()),
        },
    };
    if raw.is_empty() {
        return Err("missing url query parameter".to_string());
    }
    percent_decode(raw).map_err(|err| format!("invalid url: {err}"))
}

/// The `N` of `follow=N` in the query of `path_with_query` (before `url=`,
/// which takes the rest of the query); `0` without it.
fn follow_parameter(path_with_query: &str) -> Result<u32, String> {
    let query = path_with_query
        .split_once('?')
        .map(|(_, query)| query)
        .unwrap_or_default();
    for pair in query.split('&') {
        if pair.starts_with("url=") {
            break;
        }
        if let Some(n) = pair.strip_prefix("follow=") {
            return n
                .parse()
                .map_err(|_| format!("invalid follow={n}: expected a number of redirects"));
        }
    }
    Ok(0)
}

/// The parts of an absolute URL that `wasi:http` wants one by one.
struct Target {
    scheme: Scheme,
    authority: String,
    path_with_query: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let invalid = |why: &str| format!("invalid url {url:?}: {why}");
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("contains whitespace or control characters"));
        }
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("not an absolute URL"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(invalid("scheme is not http or https")),
        };
        let rest = rest.split_once('#').map_or(rest, |(rest, _)| rest);
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_with_query) = rest.split_at(end);
        if authority.is_empty() {
            return Err(invalid("no host"));
        }
        // The host's allow-list matches on the host; credentials would only
        // blur what it is compared with.
        if authority.contains('@') {
            return Err(invalid("user info is not supported"));
        }
        let path_with_query = if path_with_query.starts_with('/') {
            path_with_query.to_string()
        } else {
            format!("/{path_with_query}")
        };
        Ok(Target {
            scheme,
            authority: authority.to_string(),
            path_with_query,
        })
    }

    /// Where a `location` header of this target's response points: an
    /// absolute URL, or a path (`/…`) on this target's scheme and authority.
    fn join(&self, location: &str) -> Result<Target, String> {
        if location.starts_with('/') && !location.starts_with("//") {
            let path_with_query = location.split_once('#').map_or(location, |(p, _)| p);
            return Ok(Target {
                scheme: self.scheme.clone(),
                authority: self.authority.clone(),
                path_with_query: path_with_query.to_string(),
            });
        }
        Target::parse(location).map_err(|err| format!("redirect location: {err}"))
    }

    /// A `GET` request for this target; the host rejects parts it cannot
    /// parse, which is the authoritative check of the URL.
    fn request(&self) -> Result<OutgoingRequest, String> {
        let request = OutgoingRequest::new(Fields::new());
        let invalid = |part: &str, value: &str| format!("invalid url: bad {part} {value:?}");
        request
            .set_method(&Method::Get)
            .map_err(|()| "cannot set method GET".to_string())?;
        request
            .set_scheme(Some(&self.scheme))
            .map_err(|()| invalid("scheme", &format!("{:?}", self.scheme)))?;
        request
            .set_authority(Some(&self.authority))
            .map_err(|()| invalid("authority", &self.authority))?;
        request
            .set_path_with_query(Some(&self.path_with_query))
            .map_err(|()| invalid("path", &self.path_with_query))?;
        Ok(request)
    }
}
