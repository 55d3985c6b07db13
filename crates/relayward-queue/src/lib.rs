//! relayward-queue: spool, scheduler, outbound delivery, DSN, SRS.

pub mod spool;

pub use spool::{Envelope, QueueId, Recipient, RecipientStatus, Spool, SpoolError};
