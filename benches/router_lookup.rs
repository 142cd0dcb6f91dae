//! Routing cost against the number of routes (issue 15's density goal: flat from 1 to 10,000):
//! builds a [`Router`] of N apps on the shared ingress, one path each (`/app-<i>`, as
//! bench/density.sh deploys them) plus a host-bound half (`app-<i>.example` on `/`), and times
//! lookups of request paths spread over every route. Prints one line per N:
//! `routes N ns_per_lookup X`, the median of five timed passes.
//!
//!     cargo bench --bench router_lookup        (env: ROUTES="1 10 100 1000 10000")
#![allow(clippy::unwrap_used)] // a benchmark: a panic is the failure report

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lattice::lattice::rpc::Resend;
use lattice::providers::http::{Route, RouteKey, RouteTarget, Router};

fn route(listener: SocketAddr, app: &str, host: Option<&str>, path: &str) -> Route {
    Route {
        key: RouteKey::new(listener, host, Some(path)),
        target: RouteTarget {
            app: app.into(),
            component: "c".into(),
            resend: Resend::Idempotent,
        },
    }
}

/// Nanoseconds per lookup over `requests` (host, path), at least `min` of wall time.
fn time_lookups(
    router: &Router,
    listener: SocketAddr,
    requests: &[(Option<String>, String)],
    min: Duration,
) -> f64 {
    let start = Instant::now();
    let mut lookups = 0u64;
    while start.elapsed() < min {
        for (host, path) in requests {
            let found = router.lookup(listener, host.as_deref(), path);
            assert!(black_box(found).is_some(), "no route for {host:?} {path}");
        }
        lookups += requests.len() as u64;
    }
    start.elapsed().as_nanos() as f64 / lookups as f64
}

fn main() {
    let listener: SocketAddr = "127.0.0.1:8000".parse().unwrap();
    let counts = std::env::var("ROUTES").unwrap_or_else(|_| "1 10 100 1000 10000".to_owned());
    for n in counts
        .split_whitespace()
        .map(|n| n.parse::<usize>().unwrap())
    {
        let mut routes = Vec::with_capacity(n);
        for i in 0..n {
            let app = format!("app-{i}");
            if i % 2 == 1 {
                routes.push(route(listener, &app, Some(&format!("{app}.example")), "/"));
            } else {
                routes.push(route(listener, &app, None, &format!("/{app}")));
            }
        }
        let router = Router::build(routes).unwrap();
        // At most 1,000 distinct requests, spread evenly over the routes.
        let step = n.div_ceil(1000).max(1);
        let requests: Vec<(Option<String>, String)> = (0..n)
            .step_by(step)
            .map(|i| {
                if i % 2 == 1 {
                    (
                        Some(format!("App-{i}.example:8000")),
                        "/index.html".to_owned(),
                    )
                } else {
                    (
                        Some("other.example".to_owned()),
                        format!("/app-{i}/index.html"),
                    )
                }
            })
            .collect();
        let mut passes: Vec<f64> = (0..5)
            .map(|_| time_lookups(&router, listener, &requests, Duration::from_millis(200)))
            .collect();
        passes.sort_by(f64::total_cmp);
        println!("routes {n} ns_per_lookup {:.1}", passes[2]);
    }
}
