//! Issue 14: a node as an operator runs it. Under systemd's environment (credentials,
//! notifications, watchdog), its admin endpoint (health, readiness, Prometheus metrics), its log
//! formats and its distributed traces. Real processes only: nats-server, `lattice up`, example
//! components, Prometheus, an OTLP receiver, HTTP on loopback. Each area is a module of its own
//! under `tests/service/`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

#[path = "service/admin.rs"]
mod admin;
#[path = "service/inner.rs"]
mod inner;
#[path = "service/logs.rs"]
mod logs;
#[path = "service/systemd.rs"]
mod systemd;
#[path = "service/traces.rs"]
mod traces;
