//! Test kit for relayward integration tests: the pieces of the outside world a relay talks to,
//! running in-process on loopback so a test controls every answer.
//!
//! - [`DnsServer`]: authoritative DNS over UDP and TCP from a mutable in-memory zone.
//! - [`SmtpSink`]: a scriptable MX that records every transaction.
//! - [`SmtpClient`]: a line-level SMTP client for driving the relay's listeners.
//! - [`TestPki`]: a throwaway CA issuing server and client certificates.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use relayward_testkit::{DnsServer, SmtpClient, SmtpSink, TestPki};
//!
//! let pki = TestPki::new();
//! let mx = SmtpSink::start("127.0.0.2:0").await;
//! mx.enable_starttls(pki.server_config_for(&pki.issue_server(&["mx1.example.com"])));
//! mx.reply_rcpt("bad@example.com", "550 5.1.1 No such user");
//! mx.reply_data_times("451 4.3.0 try later", 1);
//!
//! let dns = DnsServer::start().await;
//! dns.add_mx("example.com", 10, "mx1.example.com");
//! dns.add_a("mx1.example.com", "127.0.0.2".parse()?);
//! // ... point the relay at dns.addr() and outbound port mx.addr().port() ...
//!
//! let mut client = SmtpClient::connect_from("127.0.0.5".parse()?, mx.addr()).await?;
//! client.read_reply().await?;
//! client.ehlo("client.test").await?;
//! client.starttls(pki.client_config(), "mx1.example.com").await?;
//! client.ehlo("client.test").await?;
//! let (code, _text) = client.send_message("a@client.test", &["b@example.com"], b"Subject: x\n\nhi\n").await?;
//! assert_eq!(code, 451);
//! client.send_message("a@client.test", &["b@example.com"], b"Subject: x\n\nhi\n").await?;
//! let received = mx.wait_for(1, Duration::from_secs(5)).await;
//! assert!(received[0].tls.is_some());
//! # Ok(()) }
//! ```
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

/// The bytes of `fixtures/<name>` in this crate: messages shaped like real ones (DSNs, feedback
/// reports) kept as files, so a test reads what arrives on the wire. Panics when it is missing.
pub fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}
