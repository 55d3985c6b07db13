//! Integration tests of the admin API: a real server on a loopback port, a real SQLite store,
//! an in-test DNS server, and a fake relay behind `RelayControl`. One test binary (modules
//! below) so the suite links once.

mod access;
mod common;
mod connectors;
mod domains;
mod openapi;
mod relay;
mod tokens;
mod trace;
mod traffic;
mod validation;
mod web;
