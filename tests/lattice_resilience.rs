//! Issue 12: a node that joins with nothing but `--creds`, heals itself and bounds the work any
//! input can cause. Real processes only: hub and node nats-servers, `lattice up`, example
//! components, HTTP on loopback. One test binary; each area is a module of its own under
//! `tests/resilience/`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

#[path = "resilience/bounds.rs"]
mod bounds;
#[path = "resilience/jetstream.rs"]
mod jetstream;
#[path = "resilience/requests.rs"]
mod requests;
#[path = "resilience/store.rs"]
mod store;
#[path = "resilience/supervision.rs"]
mod supervision;
