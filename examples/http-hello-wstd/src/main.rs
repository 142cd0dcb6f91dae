//! `http-hello-wstd`: http-hello (the same answer, byte for byte) written with the Bytecode
//! Alliance's `wstd` crate, as a user outside this project would write one.
//!
//! Every request is answered with `200 OK`, `content-type: text/plain` and the body
//! `Hello from lattice: <path-with-query>\n`. The benchmarks (bench/http.sh) serve this one
//! component from lattice and from `wasmtime serve`, so neither runtime is measured on a guest
//! written for it.

use wstd::http::body::Body;
use wstd::http::{Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |path| path.as_str());
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(format!("Hello from lattice: {path}\n").into())?)
}
