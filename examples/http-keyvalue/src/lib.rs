//! `http-keyvalue`: a `wasi:http/proxy` component that exposes a `wasi:keyvalue` bucket over
//! HTTP, one request per keyvalue call, so every call of `store` and `batch` can be driven with
//! curl.
//!
//! The bucket is `store::open(<store>)`, `<store>` being the `store` query parameter (`default`
//! when absent); the key is the request path without its query, e.g. `/kv/a`.
//!
//! - `GET <key>`: `bucket.get`: `200` with the value as it is stored, `404` `absent\n`.
//! - `PUT <key>` with a body: `bucket.set` to the body: `200` `ok\n`.
//! - `DELETE <key>`: `bucket.delete`: `200` `ok\n`.
//! - `HEAD <key>`: `bucket.exists`: `200` or `404`, no body.
//! - `GET <any>?keys`: `bucket.list-keys`, following its cursor to the end: `200`, one key per
//!   line, with header `x-pages` (how many `list-keys` calls it took).
//! - `POST <any>?get-many`, body one key per line: `batch.get-many`: `200`, one line per key,
//!   `<key>=<value>` or `<key>` alone when absent.
//! - `POST <any>?set-many`, body `<key>=<value>` lines: `batch.set-many`: `200` `ok\n`.
//! - `POST <any>?delete-many`, body one key per line: `batch.delete-many`: `200` `ok\n`.
//! - Any keyvalue error: `500`, `keyvalue error: <what> (<error>)\n`; another method: `405`.
//!
//! Request bodies are read up to 16 MiB.

use example_http::respond;
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};
use wasi::io::streams::StreamError;

#[allow(missing_docs, clippy::all)]
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package lattice-examples:http-keyvalue;

            world keyvalue {
                import wasi:keyvalue/store@0.2.0-draft;
                import wasi:keyvalue/batch@0.2.0-draft;
            }
        "#,
        path: "../../wit",
        world: "keyvalue",
        generate_all,
    });
}

use bindings::wasi::keyvalue::{batch, store};

/// The most request-body bytes read.
const MAX_BODY: usize = 16 << 20;

struct HttpKeyvalue;

wasi::http::proxy::export!(HttpKeyvalue);

/// A response: status, extra headers, body.
type Answer = (u16, Vec<(String, Vec<u8>)>, Vec<u8>);

impl Guest for HttpKeyvalue {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let (key, query) = path_with_query
            .split_once('?')
            .unwrap_or((path_with_query.as_str(), ""));
        let flags: Vec<&str> = query.split('&').collect();
        let identifier = flags
            .iter()
            .find_map(|f| f.strip_prefix("store="))
            .unwrap_or("default");
        let has = |flag: &str| flags.contains(&flag);
        let method = request.method();
        let answer = match read_body(request) {
            Err(message) => Ok((400, Vec::new(), message.into_bytes())),
            Ok(body) => store::open(identifier)
                .map_err(|err| keyvalue_error(&format!("open {identifier:?}"), &err))
                .and_then(|bucket| match method {
                    Method::Get if has("keys") => list_keys(&bucket),
                    Method::Post if has("get-many") => get_many(&bucket, &body),
                    Method::Post if has("set-many") => set_many(&bucket, &body),
                    Method::Post if has("delete-many") => delete_many(&bucket, &body),
                    Method::Get => get(&bucket, key),
                    Method::Put => bucket
                        .set(key, &body)
                        .map(|()| ok())
                        .map_err(|err| keyvalue_error(&format!("set {key:?}"), &err)),
                    Method::Delete => bucket
                        .delete(key)
                        .map(|()| ok())
                        .map_err(|err| keyvalue_error(&format!("delete {key:?}"), &err)),
                    Method::Head => bucket
                        .exists(key)
                        .map(|found| (if found { 200 } else { 404 }, Vec::new(), Vec::new()))
                        .map_err(|err| keyvalue_error(&format!("exists {key:?}"), &err)),
                    _ => Ok((
                        405,
                        vec![(
                            "allow".to_string(),
                            b"GET, PUT, DELETE, HEAD, POST".to_vec(),
                        )],
                        b"method not allowed\n".to_vec(),
                    )),
                }),
        };
        let (status, headers, body) =
            answer.unwrap_or_else(|message| (500, Vec::new(), message.into_bytes()));
        respond(
            response_out,
            status,
            "application/octet-stream",
            &headers,
            &body,
        );
    }
}

fn ok() -> Answer {
    (200, Vec::new(), b"ok\n".to_vec())
}

fn get(bucket: &store::Bucket, key: &str) -> Result<Answer, String> {
    match bucket.get(key) {
        Ok(Some(value)) => Ok((200, Vec::new(), value)),
        Ok(None) => Ok((404, Vec::new(), b"absent\n".to_vec())),
        Err(err) => Err(keyvalue_error(&format!("get {key:?}"), &err)),
    }
}

fn list_keys(bucket: &store::Bucket) -> Result<Answer, String> {
    let mut keys = Vec::new();
    let mut cursor = None;
    let mut pages = 0u32;
    loop {
        let page = bucket
            .list_keys(cursor)
            .map_err(|err| keyvalue_error(&format!("list-keys at {cursor:?}"), &err))?;
        pages += 1;
        keys.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let body: String = keys.iter().map(|k| format!("{k}\n")).collect();
    let pages = vec![("x-pages".to_string(), pages.to_string().into_bytes())];
    Ok((200, pages, body.into_bytes()))
}

fn get_many(bucket: &store::Bucket, body: &[u8]) -> Result<Answer, String> {
    let keys: Vec<String> = lines(body).map(str::to_string).collect();
    let values = batch::get_many(bucket, &keys).map_err(|err| keyvalue_error("get-many", &err))?;
    let mut out = Vec::new();
    for (key, value) in keys.iter().zip(values) {
        out.extend_from_slice(key.as_bytes());
        if let Some((_, value)) = value {
            out.push(b'=');
            out.extend_from_slice(&value);
        }
        out.push(b'\n');
    }
    Ok((200, Vec::new(), out))
}

fn set_many(bucket: &store::Bucket, body: &[u8]) -> Result<Answer, String> {
    let pairs: Vec<(String, Vec<u8>)> = lines(body)
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            (key.to_string(), value.as_bytes().to_vec())
        })
        .collect();
    batch::set_many(bucket, &pairs)
        .map(|()| ok())
        .map_err(|err| keyvalue_error("set-many", &err))
}

fn delete_many(bucket: &store::Bucket, body: &[u8]) -> Result<Answer, String> {
    let keys: Vec<String> = lines(body).map(str::to_string).collect();
    batch::delete_many(bucket, &keys)
        .map(|()| ok())
        .map_err(|err| keyvalue_error("delete-many", &err))
}

/// The non-empty lines of `body` (none when it is not UTF-8).
fn lines(body: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(body)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.is_empty())
}

/// `wasi:keyvalue` error `err` of the call `what`, as the `500` body.
fn keyvalue_error(what: &str, err: &store::Error) -> String {
    let err = match err {
        store::Error::NoSuchStore => "no-such-store".to_string(),
        store::Error::AccessDenied => "access-denied".to_string(),
        store::Error::Other(text) => format!("other: {text}"),
    };
    format!("keyvalue error: {what} ({err})\n")
}

/// The request body, at most [`MAX_BODY`] bytes.
fn read_body(request: IncomingRequest) -> Result<Vec<u8>, String> {
    let body = request
        .consume()
        .map_err(|()| "request body was already consumed\n".to_string())?;
    let mut out = Vec::new();
    {
        let input = body
            .stream()
            .map_err(|()| "request body stream was already taken\n".to_string())?;
        loop {
            match input.blocking_read(64 * 1024) {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(err)) => {
                    return Err(format!("reading the body: {}\n", err.to_debug_string()));
                }
            }
            if out.len() > MAX_BODY {
                return Err(format!("the body is over {MAX_BODY} bytes\n"));
            }
        }
    }
    Ok(out)
}
