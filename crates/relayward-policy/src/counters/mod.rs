//! Sliding-window counters for the abuse detector and the per-sender limits.
//!
//! [`Counters`] is the seam between the per-message path and the counter store: every update
//! is one call that changes every window of the tenant, its connector and its sender at once
//! and answers with the [`Snapshot`] the detector needs, so the detector never reads half an
//! update. [`InProcessCounters`] is the
//! single-node implementation: sharded `Mutex<HashMap>`, no I/O, time passed in by the caller
//! (unix milliseconds) so tests drive a simulated clock.
//!
//! In a cluster, each node adds the other nodes' shares of a tenant to its own figures
//! (`share.rs`: what is exchanged, how it adds up, and the stated slack); the other nodes'
//! figures (their bucket rings and bitmaps, summed) take about 6 KB more per tenant counted on
//! more than one node, plus their windows of the senders this node counted too.
//!
//! # Layout and memory
//!
//! Counted per window: messages, recipients, external recipients, unregistered-sender messages
//! and recipients, null-sender messages, header/envelope mismatches, remote replies by
//! [`RemoteClass`] (delivered, spam/policy block, bad mailbox, other), unregistered messages
//! from familiar domains, DKIM results of unregistered mail (checked, pass) and messages
//! refused by the tenant's state, unregistered messages to a known recipient, and the content
//! scanner's verdicts (scanned, spam) — 18 `u32` fields.
//!
//! * **Tenant** (the detector's input, exact to the bucket): three rings of time buckets,
//!   1 minute = 6 × 10 s, 1 hour = 12 × 5 min, 24 hours = 24 × 1 h; 42 buckets × 76 bytes
//!   (18 `u32` counters + epoch) = 3,192 bytes. Distinct counts (recipient domains, and once
//!   the tenant sends unregistered mail, unregistered sender domains and addresses) are
//!   *timestamped linear-counting bitmaps*: 256 slots holding the `u16` tick (10 s) at which
//!   each was last set (512 bytes), so one array answers any window up to 24 h as a plain
//!   bitmap of that window would; the estimate `-m ln(zeros/m)` has a standard error of ~5 % at
//!   100 and ~7 % at 500 distinct values, and saturates at ~1,400 (reported as 1,420). With the
//!   baseline and bookkeeping (and, in a cluster, a pointer to the other nodes' share): about
//!   **3.9 KB** (`size_of::<TenantEntry>()`, at most 3,900 bytes, checked by the test
//!   `memory_layout`).
//! * **Suspect traffic** (allocated on a tenant's first unregistered, null-sender or
//!   mismatched message): three more bitmaps (domains, addresses, recipients), three
//!   space-saving top-k tables (unregistered domains, unregistered addresses, source IPs;
//!   k = 20, two 12-hour generations: 120 rows of 32 or 40 bytes), a ring of 16 sample
//!   messages (112 bytes + queue id and Message-ID cut at 128 bytes) and the 4 KB table of
//!   known recipients: 2,424 + 4,160 + 1,792 + 4,096 bytes + keys ≈ **16 KB** typical (keys
//!   of ~24 bytes), at most ≈ 41 KB with 256-byte keys. Remote spam blocks keep another ring
//!   of 16 (80 bytes + texts): ≈ 3 KB typical, 11.5 KB at most.
//! * **Connector and sender** entries (many per tenant, so kept compact): each of the three
//!   windows is the classic two-bucket sliding estimate (current and previous period, the
//!   previous weighted by how much of it still falls in the window) of the same 18 counters,
//!   plus 64-bit linear-counting bitmaps for three distinct counts, and a "counted since the
//!   last cluster export" flag: **624 bytes**; a sender
//!   costs ≈ 0.73 KB with its key and hash-map slot.
//!
//! So a tenant sending only registered mail through one connector from 20 active addresses
//! holds 3.8 + 0.6 + 20 × 0.73 ≈ 19 KB; unregistered traffic and spam blocks add ≈ 19 KB.
//! Bounded per tenant by `max_connectors_per_tenant` (32) and `max_senders_per_tenant`
//! (1,000; a new sender evicts the least recently seen, whose restriction — kept apart — stays):
//! at most 3.8 + 42 + 11.5 + 32 × 0.62 + 1,000 × 0.97 ≈ 1,050 KB with 256-byte keys everywhere.
//! Entries idle for `idle_expiry_secs` (48 h) are dropped by [`Counters::expire`], which the
//! caller runs every minute or so.

mod blocks;
mod config;
mod events;
mod in_process;
mod share;
mod tenant;

pub use crate::remote_reply::{classify_remote_reply, RemoteClass};
pub use config::CountersConfig;
pub use events::{
    effective_class, sender_key, Baseline, ConnectorWindows, Counters, DkimEvent, MessageEvent,
    RemoteReplyEvent, SenderUsage, SeriesPoint, Snapshot, WindowStats, Windows,
};
pub use in_process::InProcessCounters;
pub use share::{OtherShares, TenantShare, SHARE_FORMAT};

pub const SECOND_MS: i64 = 1_000;
pub const MINUTE_MS: i64 = 60 * SECOND_MS;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

#[cfg(test)]
mod tests;
