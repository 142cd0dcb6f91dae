//! Helpers of tests that look at what a node does for its components: names unique to a run,
//! the wadm link snippets of keyvalue and outgoing HTTP, and an upstream HTTP server that
//! keeps the heads of the requests it gets.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `prefix` made unique to this test run (for JetStream bucket names: a bucket left by another
/// run is never found by accident).
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// A wasi:keyvalue link (store, atomics) to capability `target` in wadm's current form
/// (`target: {name, config}`), with `properties` as its target config; YAML list items
/// indented by 8 spaces, as a component's `traits`.
pub fn keyvalue_link(target: &str, properties: &[(&str, &str)]) -> String {
    let mut link = format!(
        "        - type: link
          properties:
            namespace: wasi
            package: keyvalue
            interfaces: [store, atomics]
            target:
              name: {target}
"
    );
    if !properties.is_empty() {
        link.push_str(
            "              config:\n                - name: kv-config\n                  properties:\n",
        );
        for (key, value) in properties {
            link.push_str(&format!("                    {key}: '{value}'\n"));
        }
    }
    link
}

/// A wasi:http/outgoing-handler link to capability `target` in wadm's older form
/// (`target: NAME`, `target_config`), allowing `allowed_hosts`.
pub fn http_client_link(target: &str, allowed_hosts: &str) -> String {
    format!(
        "        - type: link
          properties:
            namespace: wasi
            package: http
            interfaces: [outgoing-handler]
            target: {target}
            target_config:
              - name: client
                properties:
                  allowed_hosts: '{allowed_hosts}'
"
    )
}

/// An HTTP/1.1 server on 127.0.0.1 (a free port) answering every request `200` with a fixed
/// body and closing, keeping the head of each (its lines, as sent) and counting the
/// connections it accepts. Its threads end with the test process.
pub struct Recorder {
    /// Where it listens.
    pub addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl Recorder {
    /// A recorder answering `ok`.
    pub fn start() -> Recorder {
        Recorder::with_body("ok")
    }

    /// A recorder answering `body`.
    pub fn with_body(body: &'static str) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (kept, counted) = (heads.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let kept = kept.clone();
                std::thread::spawn(move || answer(stream, &kept, body));
            }
        });
        Recorder {
            addr,
            heads,
            connections,
        }
    }

    /// The heads received so far.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    /// The connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Reads one request head from `stream`, adds it to `kept`, then answers `200` with `body` and
/// closes (kept first: whoever got the answer finds the head).
fn answer(mut stream: TcpStream, kept: &Mutex<Vec<String>>, body: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    kept.lock()
        .unwrap()
        .push(String::from_utf8_lossy(&head).into_owned());
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes());
}
