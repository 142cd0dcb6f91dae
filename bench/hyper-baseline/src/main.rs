//! The physical upper bound of `bench/http.sh`: a plain hyper HTTP/1.1 server on tokio (no wasm,
//! no routing) answering every request as examples/http-hello does: `200`, `content-type:
//! text/plain`, body `Hello from lattice: <path-with-query>\n`. Serves until killed.
//!
//!     cargo run --release --manifest-path bench/hyper-baseline/Cargo.toml -- 127.0.0.1:18182
//!
//! A crate of its own (Cargo.toml says why), with the hyper and tokio versions lattice's
//! Cargo.lock holds; it never ships in the lattice binary.
#![allow(clippy::unwrap_used)] // a benchmark: a panic is the failure report

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// The answer of examples/http-hello to `request`.
async fn hello(
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(Full::new(Bytes::from(format!(
            "Hello from lattice: {path}\n"
        ))))
        .unwrap())
}

#[tokio::main]
async fn main() {
    // The address is the first argument that is not a flag.
    let addr: SocketAddr = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .unwrap_or_else(|| "127.0.0.1:18182".to_owned())
        .parse()
        .expect("the argument is a socket address, e.g. 127.0.0.1:18182");
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    eprintln!(
        "hyper baseline serving on http://{}",
        listener.local_addr().unwrap()
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        stream.set_nodelay(true).unwrap();
        tokio::spawn(async move {
            // A peer resetting its connection is wrk's way to end a run, not an error here.
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), hyper::service::service_fn(hello))
                .await;
        });
    }
}
