//! The HTTP server provider (ingress): listeners, a pure route table, and the hand-off of each
//! request to the component its route names.

pub mod authority;
pub mod router;
pub mod server;

pub use router::{Route, RouteConflict, RouteKey, RouteTarget, Router};
pub use server::{BindError, HttpServer, RoutingTable};
