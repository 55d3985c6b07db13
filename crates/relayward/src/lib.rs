//! The `relayward` binary's library: configuration, the admin commands and `serve`, kept in a
//! library so integration tests can run the whole relay in-process (e.g. with a test clock).

pub mod abuse;
pub mod admin;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dkim;
pub mod egress;
pub mod feedback;
pub mod forwarding;
pub mod metrics;
pub mod policy_service;
pub mod scan;
pub mod serve;
pub mod spill;
pub mod suppression;
mod table;
