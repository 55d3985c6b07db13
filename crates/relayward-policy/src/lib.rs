//! Attribution of sessions to tenants and the relay rule (DESIGN.md "Attribution", "Relay rule").
//! Pure decisions over an in-memory [`Directory`] snapshot: no sockets, no SQL.

pub mod auth;
pub mod bounce;
pub mod cert_name;
pub mod connector_audit;
pub mod counters;
mod cow_map;
pub mod detector;
pub mod diagnose;
pub mod directory;
pub mod evidence;
pub mod limits;
pub mod ownership;
pub mod relay;
pub mod remote_reply;
pub mod report;
pub mod reputation;
pub mod suppression;
pub mod unblock;

pub use directory::{Directory, SharedDirectory};
pub use relay::{
    attribute, check_header_from, check_mail, check_rcpt, explain, header_from_mismatch,
    refusal_owner, Attributed, Attribution, ClientFacts, MailOutcome, Method, Refusal,
    RefusalReason,
};
