//! Outbound SMTP: the client session, TLS, the idle connection pool and one delivery attempt.

pub mod client;
pub mod delivery;
pub mod pool;
pub mod tls;

pub use delivery::{Outbound, OutboundMessage, RcptResult};
