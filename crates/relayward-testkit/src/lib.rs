//! Test kit for relayward integration tests: the pieces of the outside world a relay talks to,
//! running in-process on loopback so a test controls every answer.
//!
//! - [`DnsServer`]: authoritative DNS over UDP and TCP from a mutable in-memory zone.
//! - [`SmtpSink`]: a scriptable MX that records every transaction.
//! - [`SmtpClient`]: a line-level SMTP client for driving the relay's listeners.
//! - [`TestPki`]: a throwaway CA issuing server and client certificates.
//!
//! Everything here panics on setup failure (bind errors, certificate generation) because a test
//! that cannot build its fixture has nothing useful to report beyond the panic.

mod client;
mod dns;
mod io;
mod pki;
mod reply;
mod sink;

pub use client::SmtpClient;
pub use dns::DnsServer;
pub use pki::{IssuedCert, TestPki};
pub use sink::{Extensions, Rcpt, Received, Reply, SmtpSink, TlsInfo};

pub use hickory_proto;
pub use hickory_proto::rr::{RData, RecordType};
pub use rustls;
