//! Issue 13, outgoing HTTP: a component reaches the node's own networks (here loopback) only
//! through an `allowed_hosts` entry naming the address or host literally, never through a
//! wildcard, a name resolving there or a redirect; HTTPS trusts `--ca-file`; connections are
//! pooled. Real `lattice up`, the real http-fetch component, upstream servers on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::certs::ca_and_server_cert;
use crate::common::{Dirs, Node, example_wasm, http_server_link};

/// How long a node may take to deploy its config dir's apps.
const DEPLOYED: Duration = Duration::from_secs(60);

/// A keep-alive HTTP/1.1 server on 127.0.0.1 (a free port), plain or TLS, counting the
/// connections it accepts. `GET <path>` answers `200` `hello from upstream <path>`, unless
/// `<path>` is one of its redirects: then `302` to the redirect's `location`. Its threads end
/// with the test process.
struct Upstream {
    port: u16,
    connections: Arc<AtomicUsize>,
    /// Connections accepted and not closed yet.
    open: Arc<AtomicUsize>,
}

impl Upstream {
    /// A plain HTTP upstream with `redirects` (`(path, location)`).
    fn start(redirects: &[(&str, String)]) -> Upstream {
        Upstream::start_with(redirects, None)
    }

    /// An HTTPS upstream with `tls` (no redirects).
    fn start_tls(tls: Arc<rustls::ServerConfig>) -> Upstream {
        Upstream::start_with(&[], Some(tls))
    }

    fn start_with(
        redirects: &[(&str, String)],
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let open = Arc::new(AtomicUsize::new(0));
        let still_open = open.clone();
        let redirects: Arc<Vec<(String, String)>> = Arc::new(
            redirects
                .iter()
                .map(|(p, l)| (p.to_string(), l.clone()))
                .collect(),
        );
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                still_open.fetch_add(1, Ordering::SeqCst);
                tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let redirects = redirects.clone();
                let tls = tls.clone();
                let closed = still_open.clone();
                std::thread::spawn(move || {
                    match tls {
                        None => serve(tcp, &redirects),
                        Some(config) => {
                            if let Ok(conn) = rustls::ServerConnection::new(config) {
                                serve(rustls::StreamOwned::new(conn, tcp), &redirects)
                            }
                        }
                    }
                    closed.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            port,
            connections,
            open,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

/// Answers requests on `stream` until the peer closes it (or 30 s of silence).
fn serve(mut stream: impl Read + Write, redirects: &[(String, String)]) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let answer = match redirects.iter().find(|(p, _)| *p == path) {
            Some((_, location)) => {
                format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\n\r\n")
            }
            None => {
                let body = format!("hello from upstream {path}");
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
            }
        };
        if stream.write_all(answer.as_bytes()).is_err() || stream.flush().is_err() {
            return;
        }
    }
}

/// A manifest of app `app` whose http-fetch component `fetch` answers `path` and may call
/// `allowed_hosts`.
fn fetch_app(app: &str, path: &str, allowed_hosts: &str) -> String {
    format!(
        r#"apiVersion: core.oam.dev/v1beta1
kind: Application
metadata:
  name: {app}
  annotations:
    version: v1
spec:
  components:
    - name: fetch
      type: component
      properties:
        image: file://{wasm}
      traits:
        - type: spreadscaler
          properties:
            instances: 1
        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [outgoing-handler]
            target: httpclient
            target_config:
              - name: client
                properties:
                  allowed_hosts: '{allowed_hosts}'
    - name: httpclient
      type: capability
      properties:
        image: ghcr.io/wasmcloud/http-client:0.12.0
{server}"#,
        wasm = example_wasm("http-fetch").display(),
        server = http_server_link("fetch", path),
    )
}

/// Starts a node with `flags` whose config dir holds `apps` (`(file, manifest)`); waits until
/// each app's `path` answers (400 for a fetch without `url`).
fn node_with(apps: &[(&str, String)], paths: &[&str], flags: &[&str]) -> (Node, Dirs) {
    let dirs = Dirs::with_manifest(apps[0].0, &apps[0].1);
    for (file, manifest) in &apps[1..] {
        std::fs::write(dirs.config.join(file), manifest).unwrap();
    }
    let node = Node::start_in(&dirs.config, &dirs.data, flags);
    for path in paths {
        node.wait_for_status(path, 400, DEPLOYED);
    }
    (node, dirs)
}

/// `GET path` on `node`, panicking with its log when there is no answer.
fn get(node: &Node, path: &str) -> (u16, String) {
    node.get(path)
        .unwrap_or_else(|| panic!("GET {path}: no answer\n{}", node.log()))
}

/// Whether `answer` is http-fetch's report of `destination-ip-prohibited`.
fn prohibited(answer: &(u16, String)) -> bool {
    answer.0 == 502
        && answer
            .1
            .contains("outgoing request failed: ErrorCode::DestinationIpProhibited")
}

#[test]
fn a_wildcard_reaches_no_loopback_address_a_literal_entry_does_and_a_redirect_is_checked_again() {
    let other = Upstream::start(&[]);
    let named = Upstream::start(&[
        ("/to-localhost", format!("http://localhost:{}/", other.port)),
        ("/to-itself", "/hi".to_owned()),
    ]);
    let (node, _dirs) = node_with(
        &[
            ("star.yaml", fetch_app("egress-star", "/star", "*")),
            (
                "literal.yaml",
                fetch_app(
                    "egress-literal",
                    "/literal",
                    &format!("*, 127.0.0.1:{}", named.port),
                ),
            ),
        ],
        &["/star", "/literal"],
        &[],
    );

    // `*` matches every name, but loopback only through an entry naming it.
    for url in [
        format!("http://127.0.0.1:{}/hi", other.port),
        format!("http://localhost:{}/hi", other.port),
        format!("http://[::1]:{}/hi", other.port),
        format!("http://127.0.0.1:{}/hi", named.port),
    ] {
        let answer = get(&node, &format!("/star?url={url}"));
        assert!(prohibited(&answer), "{url} with `*`: {answer:?}");
    }
    assert_eq!(
        named.connections() + other.connections(),
        0,
        "a prohibited address was connected to"
    );
    node.wait_for_log(
        &[
            "destination-ip-prohibited",
            "app=egress-star",
            "component=fetch",
        ],
        Duration::from_secs(5),
    );

    // The literal entry grants its address, on its port.
    let answer = get(
        &node,
        &format!("/literal?url=http://127.0.0.1:{}/hi", named.port),
    );
    assert_eq!(
        answer,
        (200, "200\nhello from upstream /hi".to_owned()),
        "{}",
        node.log()
    );
    // Followed redirects work (here to the same allowed host) …
    let answer = get(
        &node,
        &format!(
            "/literal?follow=3&url=http://127.0.0.1:{}/to-itself",
            named.port
        ),
    );
    assert_eq!(answer, (200, "200\nhello from upstream /hi".to_owned()));
    // … not followed, the guest sees the 302 …
    let answer = get(
        &node,
        &format!("/literal?url=http://127.0.0.1:{}/to-localhost", named.port),
    );
    assert_eq!(answer, (200, "302\n".to_owned()));
    // … and followed to loopback elsewhere, the next hop is refused like a first request.
    let answer = get(
        &node,
        &format!(
            "/literal?follow=3&url=http://127.0.0.1:{}/to-localhost",
            named.port
        ),
    );
    assert!(prohibited(&answer), "redirect to localhost: {answer:?}");
    assert_eq!(
        other.connections(),
        0,
        "the redirect's target was connected to"
    );
}

#[test]
fn connections_of_a_component_are_reused_across_its_requests() {
    let upstream = Upstream::start(&[]);
    let (node, _dirs) = node_with(
        &[(
            "pool.yaml",
            fetch_app(
                "egress-pool",
                "/pool",
                &format!("127.0.0.1:{}", upstream.port),
            ),
        )],
        &["/pool"],
        &[],
    );
    const REQUESTS: usize = 10;
    for i in 0..REQUESTS {
        let answer = get(
            &node,
            &format!("/pool?url=http://127.0.0.1:{}/{i}", upstream.port),
        );
        assert_eq!(answer, (200, format!("200\nhello from upstream /{i}")));
    }
    // Each request is a fresh instance; the pool is the component's. A connection put back
    // while the next request already dials may add one, not one per request.
    let connections = upstream.connections();
    eprintln!("{REQUESTS} sequential requests used {connections} upstream connection(s)");
    assert!(
        (1..=REQUESTS / 2).contains(&connections),
        "{REQUESTS} requests opened {connections} connections"
    );
}

/// The sockets one component may hold (`MAX_COMPONENT_SOCKETS` of the http-client provider).
const COMPONENT_SOCKETS: usize = 64;

#[test]
fn a_component_holds_at_most_64_sockets_idle_ones_included() {
    // One more keep-alive upstream than the component may hold sockets.
    let upstreams: Vec<Upstream> = (0..=COMPONENT_SOCKETS)
        .map(|_| Upstream::start(&[]))
        .collect();
    // `127.0.0.1` names loopback literally, on any port: as `*` would a public host.
    let (node, _dirs) = node_with(
        &[(
            "ports.yaml",
            fetch_app("egress-ports", "/ports", "127.0.0.1"),
        )],
        &["/ports"],
        &[],
    );
    let open = || upstreams.iter().map(Upstream::open).sum::<usize>();
    // The pool closes a connection idle for 30 s: the checks below hold while none has been.
    let first = Instant::now();
    for (i, upstream) in upstreams[..COMPONENT_SOCKETS].iter().enumerate() {
        let answer = get(
            &node,
            &format!("/ports?url=http://127.0.0.1:{}/{i}", upstream.port),
        );
        assert_eq!(
            answer,
            (200, format!("200\nhello from upstream /{i}")),
            "port {i}: {}",
            node.log()
        );
    }
    // Each connection stays idle in the component's pool, holding its socket.
    let open_after_last = open();
    // One port more, right after: refused, with no connection.
    let last = &upstreams[COMPONENT_SOCKETS];
    let answer = get(
        &node,
        &format!("/ports?url=http://127.0.0.1:{}/", last.port),
    );
    let elapsed = first.elapsed();
    assert_eq!(
        open_after_last, COMPONENT_SOCKETS,
        "connections open at the upstreams ({elapsed:?} after the first request; the pool \
         closes one idle for 30 s)"
    );
    assert!(
        answer.0 == 502
            && answer
                .1
                .contains("outgoing request failed: ErrorCode::ConnectionLimitReached"),
        "port {} past the limit ({elapsed:?} after the first request; the pool closes a \
         connection idle for 30 s): {answer:?}",
        COMPONENT_SOCKETS + 1
    );
    assert_eq!(
        last.connections(),
        0,
        "the port past the limit was connected to"
    );
    assert_eq!(open(), COMPONENT_SOCKETS);
    node.wait_for_log(
        &[
            "connection-limit-reached",
            "app=egress-ports",
            "component=fetch",
        ],
        Duration::from_secs(5),
    );
    // The idle connections still serve their own hosts.
    let answer = get(
        &node,
        &format!("/ports?url=http://127.0.0.1:{}/again", upstreams[0].port),
    );
    assert_eq!(answer, (200, "200\nhello from upstream /again".to_owned()));
    assert_eq!(upstreams[0].connections(), 1);
}

/// A rustls server configuration presenting `cert` (PEM) with `key`.
fn server_tls(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    Arc::new(config)
}

#[test]
fn https_trusts_the_ca_file_and_only_it_besides_the_system_roots() {
    let certs = tempfile::tempdir().unwrap();
    let (ca, cert, key) = ca_and_server_cert(certs.path(), "trusted");
    let (_, other_cert, other_key) = ca_and_server_cert(certs.path(), "untrusted");
    let trusted = Upstream::start_tls(server_tls(&cert, &key));
    let untrusted = Upstream::start_tls(server_tls(&other_cert, &other_key));
    let allowed = format!(
        "127.0.0.1:{}, 127.0.0.1:{}, localhost:{}",
        trusted.port, untrusted.port, trusted.port
    );
    let ca = ca.to_str().unwrap().to_owned();
    let (node, _dirs) = node_with(
        &[("tls.yaml", fetch_app("egress-tls", "/tls", &allowed))],
        &["/tls"],
        &["--ca-file", &ca],
    );
    for i in 0..3 {
        let answer = get(
            &node,
            &format!("/tls?url=https://127.0.0.1:{}/{i}", trusted.port),
        );
        assert_eq!(
            answer,
            (200, format!("200\nhello from upstream /{i}")),
            "{}",
            node.log()
        );
    }
    assert!(
        trusted.connections() < 3,
        "3 https requests opened {} connections",
        trusted.connections()
    );
    let answer = get(
        &node,
        &format!("/tls?url=https://127.0.0.1:{}/", untrusted.port),
    );
    assert!(
        answer.0 == 502 && answer.1.contains("TlsCertificateError"),
        "a certificate of a CA not trusted: {answer:?}"
    );
    // A trusted certificate for another name: `localhost` is allowed literally, the
    // certificate names only IP 127.0.0.1.
    let answer = get(
        &node,
        &format!("/tls?url=https://localhost:{}/", trusted.port),
    );
    assert!(
        answer.0 == 502 && answer.1.contains("TlsCertificateError"),
        "a certificate for 127.0.0.1 presented as localhost: {answer:?}"
    );
}

#[test]
fn a_bad_ca_file_stops_the_node_at_start_naming_the_file() {
    let dirs = Dirs::with_hello();
    let bad = dirs.config.join("not-a-ca.pem");
    std::fs::write(&bad, "no certificate here\n").unwrap();
    let mut node = Node::start_in(
        &dirs.config,
        &dirs.data,
        &["--ca-file", bad.to_str().unwrap()],
    );
    let line = node.wait_for_log(&["lattice node failed"], Duration::from_secs(30));
    assert!(line.contains("not-a-ca.pem"), "{line}");
    let status = node.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| !s.success()),
        "the node exits with an error: {status:?}"
    );
}
