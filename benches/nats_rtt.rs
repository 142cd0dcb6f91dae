//! The floor under the lattice's cross-node hop: round-trip time of a bare async-nats
//! request/reply (no HTTP, no wasm) on one nats-server, and from one leaf node through a hub to
//! another leaf node, on loopback. `bench/lattice.sh` measures the whole HTTP hop; the
//! difference between the two is what our RPC adds.
//!
//! Then the throughput of the same request/reply with CONCURRENCY requests in flight (as wrk's
//! connections), payloads and headers the size of a forwarded hello request and its response:
//! the ceiling under `bench/lattice.sh`'s cross-node requests/s on this machine.
//!
//!     cargo bench --bench nats_rtt        (env: ROUNDTRIPS=5000 CONCURRENCY=32 RUN_SECONDS=5)
#![allow(clippy::unwrap_used)] // a benchmark: a panic is the failure report

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A nats-server with `config`, killed on drop; the temp dir holds its config file.
struct Server {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(config: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, config).unwrap();
        let binary = ["/usr/sbin/nats-server", "nats-server"]
            .into_iter()
            .find(|b| Command::new(b).arg("--version").output().is_ok())
            .expect("nats-server installed");
        let child = Command::new(binary)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Server { child, _dir: dir }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect(port: u16) -> async_nats::Client {
    for _ in 0..200 {
        if let Ok(client) = async_nats::connect(format!("nats://127.0.0.1:{port}")).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nats-server on {port} did not start");
}

/// p50 and p99 of `n` sequential requests from `requester` to a responder on `responder`.
async fn measure(
    responder: &async_nats::Client,
    requester: &async_nats::Client,
    n: usize,
) -> (f64, f64) {
    let mut subscriber = responder
        .queue_subscribe("rtt", "rtt".into())
        .await
        .unwrap();
    let reply_client = responder.clone();
    let task = tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            if let Some(reply) = message.reply {
                let _ = reply_client.publish(reply, message.payload).await;
            }
        }
    });
    // Until the interest has crossed the hub.
    while requester.request("rtt", "warm".into()).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        requester.request("rtt", "ping".into()).await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    task.abort();
    times.sort_by(f64::total_cmp);
    (times[n / 2], times[n * 99 / 100])
}

/// Requests/s of `concurrency` requesters, each sending one request at a time for `seconds`,
/// to a responder on `responder`, with a ~200-byte request and ~150-byte reply, each with one
/// NATS header (as a lattice `request` and `response` frame).
async fn throughput(
    responder: &async_nats::Client,
    requester: &async_nats::Client,
    concurrency: usize,
    seconds: u64,
) -> f64 {
    let mut subscriber = responder
        .queue_subscribe("tput", "tput".into())
        .await
        .unwrap();
    let reply_client = responder.clone();
    let task = tokio::spawn(async move {
        let reply_body = bytes::Bytes::from(vec![b'r'; 150]);
        while let Some(message) = subscriber.next().await {
            if let Some(reply) = message.reply {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Lattice-Rpc-Frame", "response");
                let _ = reply_client
                    .publish_with_headers(reply, headers, reply_body.clone())
                    .await;
            }
        }
    });
    while requester.request("tput", "warm".into()).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let requester = requester.clone();
            tokio::spawn(async move {
                let body = bytes::Bytes::from(vec![b'q'; 200]);
                let mut done = 0u64;
                while Instant::now() < until {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Lattice-Rpc-Frame", "request");
                    requester
                        .request_with_headers("tput", headers, body.clone())
                        .await
                        .unwrap();
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for worker in workers {
        total += worker.await.unwrap();
    }
    task.abort();
    total as f64 / started.elapsed().as_secs_f64()
}

/// The environment variable `name` parsed, or `default` when unset or unparsable.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let n: usize = env_or("ROUNDTRIPS", 5000);
    let (hub_port, leaf_port) = (free_port(), free_port());
    let _hub = Server::start(&format!(
        "listen: 127.0.0.1:{hub_port}\nserver_name: hub\nleafnodes {{ listen: 127.0.0.1:{leaf_port} }}\n"
    ));
    let ports = [free_port(), free_port()];
    let _leaves: Vec<Server> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            Server::start(&format!(
                "listen: 127.0.0.1:{port}\nserver_name: leaf{i}\nleafnodes {{ remotes [ {{ url: \"nats-leaf://127.0.0.1:{leaf_port}\" }} ] }}\n"
            ))
        })
        .collect();
    let a = connect(ports[0]).await;
    let a2 = connect(ports[0]).await;
    let b = connect(ports[1]).await;
    let (p50, p99) = measure(&a, &a2, n).await;
    println!("one server          p50 {p50:.3} ms  p99 {p99:.3} ms  ({n} round trips)");
    drop(a);
    let (p50, p99) = measure(&b, &a2, n).await;
    println!("leaf → hub → leaf   p50 {p50:.3} ms  p99 {p99:.3} ms  ({n} round trips)");
    let concurrency: usize = env_or("CONCURRENCY", 32);
    let seconds: u64 = env_or("RUN_SECONDS", 5);
    let rate = throughput(&b, &a2, concurrency, seconds).await;
    println!("leaf → hub → leaf   {rate:.0} req/s at {concurrency} in flight ({seconds} s)");
}
