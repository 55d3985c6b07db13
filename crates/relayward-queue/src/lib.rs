//! relayward-queue: spool, scheduler, outbound delivery, DSN, SRS.
//!
//! - [`spool`]: the durable on-disk queue; accepted mail goes through its journal
//!   ([`GroupCommitter`]).
//! - [`scheduler`]: which message is attempted when ([`Scheduler`]), with admin operations.
//! - [`routing`]: tenant route, smart host or MX (RFC 5321 section 5, RFC 7505 null MX).
//! - [`outbound`]: the SMTP client (STARTTLS, PIPELINING, SIZE, 8BITMIME, SMTPUTF8, AUTH PLAIN)
//!   and the idle connection pool.
//! - [`egress`]: which egress pool (source addresses) each attempt leaves from.
//! - [`dsn`]: RFC 3464 delivery status notifications.
//! - [`control`]: admin operations from another process (`<spool>/control/`) or without a server.

pub mod commit;
pub mod config;
pub mod control;
pub mod dkim;
pub mod dsn;
pub mod egress;
mod journal;
pub mod outbound;
pub mod routing;
pub mod scheduler;
pub mod spool;
pub mod srs;
pub mod throttle;

pub use commit::{CommitError, GroupCommitter};
pub use config::{DeliveryConfig, EgressPool, TenantRoute};
pub use control::{admin, apply_offline, request_control, AdminOutcome, ControlOp, DeliveryError};
pub use egress::{EgressRisk, PoolChoice, PoolRule};
pub use scheduler::{DeliveryEvents, NoEvents, Scheduler};
pub use spool::{Envelope, QueueId, Recipient, RecipientStatus, Spool, SpoolError};
