//! What the per-message path tells the counters, and what they answer.

use std::net::IpAddr;

use relayward_core::{Address, ConnectorId, SenderClass, TenantId};
use serde::{Deserialize, Serialize};

use crate::evidence::Observations;
use crate::limits::SenderRestriction;
use crate::remote_reply::RemoteClass;

/// One accepted message, as the DATA phase knows it.
#[derive(Debug, Clone)]
pub struct MessageEvent<'a> {
    pub tenant: TenantId,
    pub connector: ConnectorId,
    pub class: SenderClass,
    /// P1 sender; `None` for the null reverse-path.
    pub sender: Option<&'a Address>,
    /// Header From is not an accepted domain while P1 is (DESIGN.md "Sender class").
    pub mismatch: bool,
    /// The header From domain (lowercase), when there is one.
    pub header_from_domain: Option<&'a str>,
    pub recipients: &'a [Address],
    /// How many of `recipients` are outside the tenant's accepted domains.
    pub external_recipients: u32,
    pub client_ip: Option<IpAddr>,
    pub queue_id: Option<&'a str>,
    pub message_id: Option<&'a str>,
}

/// The class a message counts and is enforced as: unregistered when its P1 domain is, or when P1
/// is registered but the header From (what recipients see) is not an accepted domain of the
/// tenant.
pub fn effective_class(class: SenderClass, mismatch: bool) -> SenderClass {
    match class {
        SenderClass::Registered if mismatch => SenderClass::Unregistered,
        c => c,
    }
}

/// The outcome of one delivery attempt to one recipient.
#[derive(Debug, Clone)]
pub struct RemoteReplyEvent<'a> {
    pub tenant: TenantId,
    pub connector: Option<ConnectorId>,
    pub sender: Option<&'a Address>,
    pub class: RemoteClass,
    pub queue_id: Option<&'a str>,
    /// The reply as received, kept (cut) in the evidence of spam blocks.
    pub reply: Option<&'a str>,
}

/// The DKIM verdict on one accepted unregistered or null-sender message.
#[derive(Debug, Clone, Copy)]
pub struct DkimEvent<'a> {
    pub tenant: TenantId,
    pub connector: Option<ConnectorId>,
    /// A signature verified whose `d=` is the header From domain or a parent of it.
    pub pass: bool,
    /// The domain the message was counted under (P2 of a mismatch, else P1), lowercase.
    pub domain: Option<&'a str>,
}

/// Totals over one window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WindowStats {
    pub messages: u64,
    pub recipients: u64,
    pub external_recipients: u64,
    pub unregistered_messages: u64,
    pub unregistered_recipients: u64,
    pub null_messages: u64,
    pub mismatches: u64,
    pub remote_delivered: u64,
    pub remote_spam: u64,
    pub remote_bad_mailbox: u64,
    pub remote_other: u64,
    /// Unregistered messages whose domain (P1, or P2 of a mismatch) the tenant had already
    /// sent from before: first seen two hours earlier or more, in more than one clock hour.
    pub unregistered_familiar: u64,
    /// DKIM results of unregistered and null-sender messages, verified after acceptance.
    pub dkim_checked: u64,
    /// ...of which a signature verified for the header From domain (or a parent of it).
    pub dkim_pass: u64,
    /// Messages refused because of the tenant's restriction state (5.7.750, 5.7.705).
    pub refused: u64,
    /// Unregistered messages with a recipient that already got unregistered mail of the tenant
    /// in an earlier clock hour (within two weeks): forwarding reaches the same people again,
    /// spray reaches new ones.
    pub unregistered_known_recipient: u64,
    /// Messages the content scanner (rspamd) judged, and those it judged spam (reject, soft
    /// reject, add header, rewrite subject).
    pub scanned: u64,
    pub scan_spam: u64,
    /// Approximate distinct counts (linear counting).
    pub unregistered_domains: u32,
    pub unregistered_senders: u32,
    pub recipient_domains: u32,
    /// Distinct recipient addresses of unregistered mail (tenant windows only).
    pub unregistered_recipient_addrs: u32,
    /// Distinct domains of unregistered mail whose DKIM signature verified for them (tenant
    /// windows only): real senders' domains, as forwarded originals carry.
    pub dkim_pass_domains: u32,
}

impl WindowStats {
    /// Messages the relay rule treats alike: unregistered plus null senders.
    pub fn not_registered(&self) -> u64 {
        self.unregistered_messages + self.null_messages
    }

    pub fn registered_messages(&self) -> u64 {
        self.messages.saturating_sub(self.not_registered())
    }

    pub fn remote_total(&self) -> u64 {
        self.remote_delivered + self.remote_spam + self.remote_bad_mailbox + self.remote_other
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Windows {
    pub minute: WindowStats,
    pub hour: WindowStats,
    pub day: WindowStats,
}

/// The tenant's usual hourly volumes: exponentially weighted moving averages of completed
/// clock hours (bias-corrected while young, so the first day is not read as silence).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Completed hours folded in.
    pub hours: u32,
    pub messages_per_hour: f64,
    /// Unregistered plus null-sender messages.
    pub unregistered_per_hour: f64,
    pub unregistered_domains_per_hour: f64,
}

impl Baseline {
    pub fn unregistered_share(&self) -> f64 {
        if self.messages_per_hour > 0.0 {
            (self.unregistered_per_hour / self.messages_per_hour).min(1.0)
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConnectorWindows {
    pub connector: ConnectorId,
    pub windows: Windows,
}

/// What the detector needs after an update.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub tenant: TenantId,
    pub at_ms: i64,
    pub windows: Windows,
    pub baseline: Baseline,
    /// The connector of the event, when there was one.
    pub connector: Option<ConnectorWindows>,
    /// The sender of the event, when there was one.
    pub sender: Option<Windows>,
    /// When the event's connector was created or last changed (unix ms). The counters do not
    /// know it: the caller sets it from the directory before evaluating.
    #[serde(default)]
    pub connector_changed_ms: Option<i64>,
}

/// One bucket of a tenant's series, for the evidence.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesPoint {
    pub start_ms: i64,
    pub messages: u32,
    pub recipients: u32,
    pub unregistered_messages: u32,
    pub null_messages: u32,
    pub mismatches: u32,
    pub remote_spam: u32,
    pub remote_bad_mailbox: u32,
}

/// A sender's usage against its limits, and its standing restriction if any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SenderUsage {
    pub messages_last_minute: u64,
    pub external_recipients_last_hour: u64,
    pub recipients_last_day: u64,
    pub restriction: Option<SenderRestriction>,
    /// An alert about this sender was already raised; do not repeat it before then.
    pub alerted_until_ms: Option<i64>,
}

/// The counter store. Implementations must make each method one atomic step.
pub trait Counters: Send + Sync {
    /// Count one accepted message in every window of its tenant, connector and sender.
    fn record(&self, now_ms: i64, event: &MessageEvent<'_>) -> Snapshot;
    /// Count one remote reply to a delivery attempt.
    fn record_remote_reply(&self, now_ms: i64, event: &RemoteReplyEvent<'_>) -> Snapshot;
    /// Count the DKIM result of an unregistered or null-sender message, verified after it was
    /// accepted.
    fn record_dkim(&self, now_ms: i64, event: &DkimEvent<'_>) -> Snapshot;
    /// Count a content scanner's verdict on one message of the tenant.
    fn record_scan(
        &self,
        now_ms: i64,
        tenant: TenantId,
        connector: Option<ConnectorId>,
        spam: bool,
    ) -> Snapshot;
    /// Count a message refused because of the tenant's restriction state.
    fn record_refused(&self, now_ms: i64, tenant: TenantId, connector: Option<ConnectorId>);
    /// The tenant's windows without counting anything (periodic re-evaluation).
    fn snapshot(&self, now_ms: i64, tenant: TenantId) -> Snapshot;
    /// Windows, series, top talkers and samples for the evidence of a transition.
    fn observations(&self, now_ms: i64, tenant: TenantId) -> Observations;
    /// `sender` is a [`sender_key`].
    fn sender_usage(&self, now_ms: i64, tenant: TenantId, sender: &str) -> SenderUsage;
    /// Set (`Some`) or lift (`None`) a sender restriction; returns the previous one. Setting
    /// one starts the sender's windows afresh, so that when it ends the sender is not
    /// restricted again at once by the traffic that caused it.
    fn set_sender_restriction(
        &self,
        tenant: TenantId,
        sender: &str,
        restriction: Option<SenderRestriction>,
    ) -> Option<SenderRestriction>;
    /// Remember that an alert was raised about `sender` until `until_ms`.
    fn set_sender_alerted(&self, now_ms: i64, tenant: TenantId, sender: &str, until_ms: i64);
    /// Standing restrictions of a tenant's senders.
    fn sender_restrictions(
        &self,
        now_ms: i64,
        tenant: TenantId,
    ) -> Vec<(String, SenderRestriction)>;
    /// Drop idle entries and ended restrictions; returns how many tenants were dropped.
    fn expire(&self, now_ms: i64) -> usize;
}

/// The key of a sender address in the counters and restrictions: lowercase `local@domain`
/// (local parts are case-insensitive in practice, and a spammer must not reset its limits by
/// changing case).
pub fn sender_key(addr: &Address) -> String {
    let mut s = String::with_capacity(addr.local.len() + 1 + addr.domain.len());
    s.extend(addr.local.chars().flat_map(char::to_lowercase));
    s.push('@');
    s.push_str(&addr.domain);
    s
}
