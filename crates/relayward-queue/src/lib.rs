//! relayward-queue: spool, scheduler, outbound delivery, DSN, SRS.

pub mod config;
pub mod control;
pub mod dsn;
pub mod outbound;
pub mod routing;
pub mod scheduler;
pub mod spool;

pub use config::{DeliveryConfig, TenantRoute};
pub use control::{
    admin, apply_offline, request_control, AdminOutcome, ControlOp, DeliveryError,
};
pub use scheduler::{DeliveryEvents, NoEvents, Scheduler};
pub use spool::{Envelope, QueueId, Recipient, RecipientStatus, Spool, SpoolError};
