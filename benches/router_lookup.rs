//! Routing cost against the number of routes (issue 15's density goal: flat from 1 to 10,000),
//! for the two kinds of route, each in a [`Router`] of N apps on the shared ingress:
//! - `path`: one path each (`/app-<i>`, as bench/density.sh deploys them), looked up by
//!   requests spread over them (an odd step), half with a deep path (`/app-<i>/` and 16 more
//!   segments), from hosts no route names;
//! - `host`: one host each (`app-<i>.example` on `/`), looked up by requests naming them as
//!   clients do (any case, with a port).
//!
//! Prints one line per kind and N: `routes N path|host ns_per_lookup X`, the median of five
//! timed passes, each reading the clock once per 1,000 lookups or more whatever N (at N = 1 a
//! clock read per lookup would be most of what is measured).
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

/// Lookups between two reads of the clock, at least.
const BATCH: usize = 1000;

/// Nanoseconds per lookup over `requests` (host, path; at least [`BATCH`] of them), at least
/// `min` of wall time.
fn time_lookups(
    router: &Router,
    listener: SocketAddr,
    requests: &[(Option<String>, String)],
    min: Duration,
) -> f64 {
    assert!(requests.len() >= BATCH);
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
        // At most 1,000 distinct requests, spread evenly over the routes.
        let step = n.div_ceil(BATCH).max(1) | 1;
        let paths = Router::build((0..n).map(|i| {
            let app = format!("app-{i}");
            route(listener, &app, None, &format!("/{app}"))
        }))
        .unwrap();
        let path_requests: Vec<(Option<String>, String)> = (0..n)
            .step_by(step)
            .enumerate()
            .flat_map(|(k, i)| {
                let host = Some(format!("other-{}.example", k % 7));
                [
                    (
                        host.clone(),
                        format!("/app-{i}/{}index.html", "deep/".repeat(16)),
                    ),
                    (host, format!("/app-{i}/index.html")),
                ]
            })
            .collect();
        let hosts = Router::build((0..n).map(|i| {
            let app = format!("app-{i}");
            route(listener, &app, Some(&format!("{app}.example")), "/")
        }))
        .unwrap();
        let host_requests: Vec<(Option<String>, String)> = (0..n)
            .step_by(step)
            .map(|i| {
                (
                    Some(format!("App-{i}.example:8000")),
                    "/index.html".to_owned(),
                )
            })
            .collect();
        for (kind, router, distinct) in [
            ("path", &paths, &path_requests),
            ("host", &hosts, &host_requests),
        ] {
            // Repeated up to one batch, so that small N read the clock as rarely as large N.
            let requests: Vec<(Option<String>, String)> = distinct
                .iter()
                .cycle()
                .take(distinct.len().max(BATCH))
                .cloned()
                .collect();
            let mut passes: Vec<f64> = (0..5)
                .map(|_| time_lookups(router, listener, &requests, Duration::from_millis(200)))
                .collect();
            passes.sort_by(f64::total_cmp);
            println!("routes {n} {kind} ns_per_lookup {:.1}", passes[2]);
        }
    }
}
