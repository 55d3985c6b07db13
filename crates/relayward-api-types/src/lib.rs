//! The admin API's request and response bodies (serde, with their OpenAPI schemas): what the
//! API answers and reads, what the CLI and any other client send and print. One definition of
//! each, used on both sides.

pub mod audit;
pub mod connectors;
pub mod diagnose;
pub mod domains;
pub mod header_from;
pub mod me;
pub mod nodes;
pub mod problem;
pub mod schema;
pub mod sender_limits;
pub mod status;
pub mod suppressions;
pub mod tenants;
pub mod tokens;
pub mod trace;
pub mod traffic;

pub use audit::*;
pub use connectors::*;
pub use diagnose::*;
pub use domains::*;
pub use header_from::*;
pub use me::*;
pub use nodes::*;
pub use problem::*;
pub use sender_limits::*;
pub use status::*;
pub use suppressions::*;
pub use tenants::*;
pub use tokens::*;
pub use trace::*;
pub use traffic::*;
