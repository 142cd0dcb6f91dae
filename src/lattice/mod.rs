//! The node as a member of the lattice: its identity, its heartbeats and the membership it
//! derives from everyone's, and RPC that carries HTTP invocations between nodes over NATS.

pub mod identity;
pub mod membership;
pub mod probe;
pub mod rpc;
