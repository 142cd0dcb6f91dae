//! The HTTP server provider (ingress): listeners, a pure route table, the operator's rules of
//! where apps may listen (`listen`), and the hand-off of each request to the component its
//! route names.

pub mod authority;
pub mod listen;
pub mod router;
pub mod server;

pub use listen::{ListenPolicy, ListenRule, ListenRuleError};
pub use router::{Route, RouteClaims, RouteConflict, RouteId, RouteKey, RouteTarget, Router};
pub use server::{BindError, HttpServer, RoutingTable};
