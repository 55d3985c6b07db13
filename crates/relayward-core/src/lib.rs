//! The relayward domain model. No I/O lives here.

pub mod address;
pub mod model;
pub mod received;
pub mod reply;

pub use address::{normalize_domain, Address};
pub use model::*;
pub use reply::Reply;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid {field}: {value:?} (expected one of: {expected})")]
    InvalidValue {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("invalid domain {0:?}: {1}")]
    InvalidDomain(String, &'static str),
    #[error("invalid address {0:?}: {1}")]
    InvalidAddress(String, &'static str),
}
