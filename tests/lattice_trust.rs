//! Issue 13: trust boundaries. Who may steer the lattice (the node's own NATS, roles by NATS
//! permissions), who may speak for a node (signed membership), and what a component may reach
//! (buckets, outgoing HTTP, listeners, logs). Real processes only: hub and node nats-servers,
//! `lattice up`, example components, HTTP on loopback. One test binary; each area is a module
//! of its own under `tests/trust/`.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

#[path = "trust/auth.rs"]
mod auth;
#[path = "trust/buckets.rs"]
mod buckets;
#[path = "trust/egress.rs"]
mod egress;
#[path = "trust/listen.rs"]
mod listen;
#[path = "trust/membership.rs"]
mod membership;
#[path = "trust/roles.rs"]
mod roles;
#[path = "trust/secrets.rs"]
mod secrets;
