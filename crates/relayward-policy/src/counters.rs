//! Sliding-window counters for the abuse detector and the per-sender limits.
//!
//! [`Counters`] is the seam between the per-message path and the counter store: every update
//! is one call that changes every window of the tenant, its connector and its sender at once
//! and answers with the [`Snapshot`] the detector needs, so a Redis implementation can do the
//! same in one script and the detector never reads half an update. [`InProcessCounters`] is the
//! single-node implementation: sharded `Mutex<HashMap>`, no I/O, time passed in by the caller
//! (unix milliseconds) so tests drive a simulated clock.
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
//!   baseline and bookkeeping: **3,848 bytes** (`size_of::<TenantEntry>()`, checked by the test
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
//!   plus 64-bit linear-counting bitmaps for three distinct counts: **616 bytes**; a sender
//!   costs ≈ 0.73 KB with its key and hash-map slot.
//!
//! So a tenant sending only registered mail through one connector from 20 active addresses
//! holds 3.8 + 0.6 + 20 × 0.73 ≈ 19 KB; unregistered traffic and spam blocks add ≈ 19 KB.
//! Bounded per tenant by `max_connectors_per_tenant` (32) and `max_senders_per_tenant`
//! (1,000; a new sender evicts the least recently seen, whose restriction — kept apart — stays):
//! at most 3.8 + 42 + 11.5 + 32 × 0.62 + 1,000 × 0.97 ≈ 1,050 KB with 256-byte keys everywhere.
//! Entries idle for `idle_expiry_secs` (48 h) are dropped by [`Counters::expire`], which the
//! caller runs every minute or so.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};

use relayward_core::{Address, ConnectorId, SenderClass, TenantId};
use serde::{Deserialize, Serialize};

use crate::evidence::{
    truncated, ConnectorActivity, Observations, RecentTopK, RejectionSample, Ring, Sample,
    MAX_SAMPLE_TEXT,
};
use crate::limits::SenderRestriction;

pub const SECOND_MS: i64 = 1_000;
pub const MINUTE_MS: i64 = 60 * SECOND_MS;
pub const HOUR_MS: i64 = 60 * MINUTE_MS;
pub const DAY_MS: i64 = 24 * HOUR_MS;

// ---------------------------------------------------------------------------------------------
// Remote replies

/// What a remote server's answer to a delivery attempt says about the tenant's mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteClass {
    Delivered,
    /// Refused as spam or by policy (block lists, reputation): the signal that a tenant is
    /// burning the relay's IPs.
    SpamBlock,
    /// The recipient does not exist (5.1.x): address-list harvesting shows up here.
    BadMailbox,
    Other,
}

/// Classify a remote server's reply to a delivery attempt for the detector. `enhanced` may be
/// empty, in which case a leading `x.y.z` token of `text` is used (many servers put it there).
/// The bounce classifier decides ([`crate::bounce::BounceClassifier::current`]), so the detector,
/// the metrics, delivery and the suppression list agree on every reply.
pub fn classify_remote_reply(code: u16, enhanced: &str, text: &str) -> RemoteClass {
    crate::bounce::BounceClassifier::current()
        .class_of(code, enhanced, text)
        .remote_class()
}

// ---------------------------------------------------------------------------------------------
// Events and what the counters answer

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

// ---------------------------------------------------------------------------------------------
// Configuration

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountersConfig {
    /// Lock shards; a power of two is not required.
    pub shards: usize,
    /// Tenant, connector and sender entries not updated for this long are dropped.
    pub idle_expiry_secs: u64,
    pub max_connectors_per_tenant: usize,
    /// Beyond this, a new sender evicts the tenant's least recently seen one.
    pub max_senders_per_tenant: usize,
    /// Weight of each completed hour in the baseline (0.05: about a day's memory).
    pub baseline_alpha: f64,
    /// An hour adds at most `max(floor, clip_factor × baseline)` to the unregistered and
    /// domain baselines, so a burst (or a slow ramp) cannot teach the detector that abuse is
    /// normal.
    pub baseline_clip_factor: f64,
    /// Rows of each top-k table (domains, addresses, source IPs).
    pub top_k: usize,
    /// Each top-k generation covers this long; the table reports one to two of them.
    pub top_k_period_secs: u64,
    /// Sample messages kept per tenant.
    pub samples: usize,
    /// Set from `[detector] floor_unregistered_per_hour`.
    #[serde(skip)]
    pub baseline_clip_min_unregistered: f64,
    /// Set from `[detector] floor_unregistered_domains_per_hour`.
    #[serde(skip)]
    pub baseline_clip_min_domains: f64,
}

impl Default for CountersConfig {
    fn default() -> Self {
        CountersConfig {
            shards: 64,
            idle_expiry_secs: 48 * 3600,
            max_connectors_per_tenant: 32,
            max_senders_per_tenant: 1000,
            baseline_alpha: 0.05,
            baseline_clip_factor: 3.0,
            top_k: 20,
            top_k_period_secs: 12 * 3600,
            samples: 16,
            baseline_clip_min_unregistered: 100.0,
            baseline_clip_min_domains: 5.0,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building blocks

const N: usize = 18;
const MESSAGES: usize = 0;
const RECIPIENTS: usize = 1;
const EXTERNAL: usize = 2;
const UNREG_MESSAGES: usize = 3;
const UNREG_RECIPIENTS: usize = 4;
const NULL_MESSAGES: usize = 5;
const MISMATCHES: usize = 6;
const R_DELIVERED: usize = 7;
const R_SPAM: usize = 8;
const R_BAD_MAILBOX: usize = 9;
const R_OTHER: usize = 10;
const UNREG_FAMILIAR: usize = 11;
const DKIM_CHECKED: usize = 12;
const DKIM_PASS: usize = 13;
const REFUSED: usize = 14;
const UNREG_KNOWN_RCPT: usize = 15;
const SCANNED: usize = 16;
const SCAN_SPAM: usize = 17;

type Counts = [u32; N];

// Indexes of the distinct counts.
const D_UNREG_DOMAINS: usize = 0;
const D_UNREG_SENDERS: usize = 1;
const D_RCPT_DOMAINS: usize = 2;
/// Tenant windows only (not kept per connector or sender).
const D_UNREG_RCPTS: usize = 3;
/// Tenant windows only: domains of unregistered mail with a DKIM signature that verified.
const D_DKIM_DOMAINS: usize = 4;

fn stats(c: &[u64; N], distinct: [u32; 5]) -> WindowStats {
    WindowStats {
        messages: c[MESSAGES],
        recipients: c[RECIPIENTS],
        external_recipients: c[EXTERNAL],
        unregistered_messages: c[UNREG_MESSAGES],
        unregistered_recipients: c[UNREG_RECIPIENTS],
        null_messages: c[NULL_MESSAGES],
        mismatches: c[MISMATCHES],
        remote_delivered: c[R_DELIVERED],
        remote_spam: c[R_SPAM],
        remote_bad_mailbox: c[R_BAD_MAILBOX],
        remote_other: c[R_OTHER],
        unregistered_familiar: c[UNREG_FAMILIAR],
        dkim_checked: c[DKIM_CHECKED],
        dkim_pass: c[DKIM_PASS],
        refused: c[REFUSED],
        unregistered_known_recipient: c[UNREG_KNOWN_RCPT],
        scanned: c[SCANNED],
        scan_spam: c[SCAN_SPAM],
        unregistered_domains: distinct[D_UNREG_DOMAINS],
        unregistered_senders: distinct[D_UNREG_SENDERS],
        recipient_domains: distinct[D_RCPT_DOMAINS],
        unregistered_recipient_addrs: distinct[D_UNREG_RCPTS],
        dkim_pass_domains: distinct[D_DKIM_DOMAINS],
    }
}

/// Stable within a process (SipHash with fixed keys).
fn hash_str(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Linear counting: distinct values estimated from a bitmap of `m` bits with `set` set.
fn linear_count(m: usize, set: usize) -> f64 {
    let m_f = m as f64;
    if set >= m {
        // Saturated: report the expected count at which the last bit fills.
        return m_f * m_f.ln();
    }
    -m_f * ((m - set) as f64 / m_f).ln()
}

fn lc64(bits: u64) -> f64 {
    linear_count(64, bits.count_ones() as usize)
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    epoch: u32,
    c: Counts,
}

/// `B` buckets of `W` milliseconds, indexed by `epoch % B`; a bucket whose epoch is not the
/// one expected is stale and reads as zero.
#[derive(Debug, Clone)]
struct BucketRing<const B: usize, const W: i64> {
    b: [Bucket; B],
}

impl<const B: usize, const W: i64> BucketRing<B, W> {
    const EMPTY: u32 = u32::MAX;

    fn new() -> Self {
        BucketRing {
            b: [Bucket {
                epoch: Self::EMPTY,
                c: [0; N],
            }; B],
        }
    }

    fn epoch(now_ms: i64) -> u32 {
        (now_ms.max(0) / W).min(u32::MAX as i64 - 1) as u32
    }

    fn add(&mut self, now_ms: i64, d: &Counts) {
        let e = Self::epoch(now_ms);
        let slot = &mut self.b[e as usize % B];
        if slot.epoch != e {
            *slot = Bucket {
                epoch: e,
                c: [0; N],
            };
        }
        for (c, d) in slot.c.iter_mut().zip(d) {
            *c = c.saturating_add(*d);
        }
    }

    fn live(e: u32, now_epoch: u32) -> bool {
        e != Self::EMPTY && e <= now_epoch && now_epoch - e < B as u32
    }

    fn sum(&self, now_ms: i64) -> [u64; N] {
        let now_e = Self::epoch(now_ms);
        let mut out = [0u64; N];
        for s in &self.b {
            if Self::live(s.epoch, now_e) {
                for (o, c) in out.iter_mut().zip(&s.c) {
                    *o += *c as u64;
                }
            }
        }
        out
    }

    fn bucket(&self, epoch: u32) -> Option<&Counts> {
        let s = &self.b[epoch as usize % B];
        (s.epoch == epoch).then_some(&s.c)
    }

    fn series(&self, now_ms: i64) -> Vec<SeriesPoint> {
        let now_e = Self::epoch(now_ms);
        (0..B as u32)
            .rev()
            .filter_map(|back| now_e.checked_sub(back))
            .map(|e| {
                let c = self.bucket(e).copied().unwrap_or([0; N]);
                SeriesPoint {
                    start_ms: e as i64 * W,
                    messages: c[MESSAGES],
                    recipients: c[RECIPIENTS],
                    unregistered_messages: c[UNREG_MESSAGES],
                    null_messages: c[NULL_MESSAGES],
                    mismatches: c[MISMATCHES],
                    remote_spam: c[R_SPAM],
                    remote_bad_mailbox: c[R_BAD_MAILBOX],
                }
            })
            .collect()
    }
}

/// Tick of the timestamped bitmaps.
const TICK_MS: i64 = 10 * SECOND_MS;
/// Ticks per window: 1 minute, 1 hour, 24 hours.
const WINDOW_TICKS: [i64; 3] = [MINUTE_MS / TICK_MS, HOUR_MS / TICK_MS, DAY_MS / TICK_MS];
/// Rebase the `u16` stamps before they overflow, keeping 25 hours.
const REBASE_AT: i64 = 60_000;
const KEEP_TICKS: i64 = 9_000;
const SLOTS: usize = 256;

/// Linear-counting bitmap whose slots hold the tick (relative to the tenant's base, plus one;
/// 0 = never) at which they were last set: the bitmap of any window is "slots set since".
#[derive(Debug, Clone)]
struct Stamps {
    slots: [u16; SLOTS],
}

impl Stamps {
    fn new() -> Self {
        Stamps { slots: [0; SLOTS] }
    }

    fn mark(&mut self, rel: u16, hash: u64) {
        self.slots[(hash % SLOTS as u64) as usize] = rel;
    }

    fn shift(&mut self, by: i64) {
        let by = by.clamp(0, u16::MAX as i64) as u16;
        for s in &mut self.slots {
            *s = s.saturating_sub(by);
        }
    }

    /// Estimates for the 1-minute, 1-hour and 24-hour windows ending at tick `rel`.
    fn counts(&self, rel: u16) -> [u32; 3] {
        let th: [u16; 3] =
            WINDOW_TICKS.map(|w| (rel as i64 - w + 1).clamp(1, u16::MAX as i64) as u16);
        let mut set = [0usize; 3];
        for &s in &self.slots {
            set[0] += (s >= th[0]) as usize;
            set[1] += (s >= th[1]) as usize;
            set[2] += (s >= th[2]) as usize;
        }
        set.map(|n| linear_count(SLOTS, n).round() as u32)
    }
}

/// Recipients of a tenant's unregistered mail by the clock hour they were last seen: a
/// direct-mapped table of 1,024 slots (4 KB), each a 16-bit fingerprint, a 15-bit hour and a
/// flag saying the recipient had been seen in an hour before that one. A slot is overwritten by
/// whichever recipient hashes to it last, so a spray pushes out some of the people forwarding
/// reaches; a false match needs the same 16-bit fingerprint.
#[derive(Debug, Clone)]
struct KnownRecipients {
    slots: Box<[u32; KNOWN_SLOTS]>,
}

const KNOWN_SLOTS: usize = 1024;
/// A recipient last seen longer ago than this is not known any more.
const KNOWN_FOR_HOURS: i64 = 14 * 24;
const HOUR_MOD: i64 = 0x7FFF;

impl KnownRecipients {
    fn new() -> Self {
        KnownRecipients {
            slots: Box::new([0; KNOWN_SLOTS]),
        }
    }

    /// Whether `hash` was seen in a clock hour before `hour` (and not too long ago); records
    /// it as seen in `hour`.
    fn seen(&mut self, hour: i64, hash: u64) -> bool {
        let slot = &mut self.slots[(hash % KNOWN_SLOTS as u64) as usize];
        let fingerprint = ((hash >> 48) as u32) << 16;
        // Hours modulo 2^15 - 1, plus one (0 = empty), in bits 1..16; bit 0 the flag.
        let stamp = (hour.rem_euclid(HOUR_MOD) + 1) as u32;
        let ours = *slot != 0 && (*slot & 0xFFFF_0000) == fingerprint;
        let then = ((*slot >> 1) & 0x7FFF) as i64;
        let flag = *slot & 1 == 1;
        let age = (stamp as i64 - then).rem_euclid(HOUR_MOD);
        let known = match ours {
            true if age == 0 => flag,
            true => (1..=KNOWN_FOR_HOURS).contains(&age),
            false => false,
        };
        *slot = fingerprint | (stamp << 1) | known as u32;
        known
    }
}

/// Two-bucket sliding estimate over windows of `W` ms.
#[derive(Debug, Clone, Copy)]
struct Pair<const W: i64> {
    epoch: i64,
    cur: Counts,
    prev: Counts,
    cur_bits: [u64; 3],
    prev_bits: [u64; 3],
}

impl<const W: i64> Pair<W> {
    const NEW: Self = Pair {
        epoch: i64::MIN,
        cur: [0; N],
        prev: [0; N],
        cur_bits: [0; 3],
        prev_bits: [0; 3],
    };

    fn add(&mut self, now_ms: i64, d: &Counts, bits: &[u64; 3]) {
        let e = now_ms.div_euclid(W);
        if e > self.epoch {
            if self.epoch.checked_add(1) == Some(e) {
                self.prev = self.cur;
                self.prev_bits = self.cur_bits;
            } else {
                self.prev = [0; N];
                self.prev_bits = [0; 3];
            }
            self.cur = [0; N];
            self.cur_bits = [0; 3];
            self.epoch = e;
        }
        // A clock that went back counts into the current period.
        for (c, d) in self.cur.iter_mut().zip(d) {
            *c = c.saturating_add(*d);
        }
        for (c, b) in self.cur_bits.iter_mut().zip(bits) {
            *c |= *b;
        }
    }

    fn estimate(&self, now_ms: i64) -> WindowStats {
        const ZERO: Counts = [0; N];
        let e = now_ms.div_euclid(W);
        let prev_weight = 1.0 - now_ms.rem_euclid(W) as f64 / W as f64;
        let (cur, prev, cb, pb) = if e <= self.epoch {
            (&self.cur, &self.prev, self.cur_bits, self.prev_bits)
        } else if self.epoch.checked_add(1) == Some(e) {
            (&ZERO, &self.cur, [0; 3], self.cur_bits)
        } else {
            return WindowStats::default();
        };
        let mut c = [0u64; N];
        for i in 0..N {
            c[i] = (prev[i] as f64 * prev_weight + cur[i] as f64).round() as u64;
        }
        let mut distinct = [0u32; 5];
        for j in 0..3 {
            let now_only = lc64(cb[j]);
            let both = lc64(cb[j] | pb[j]);
            distinct[j] = (now_only + (both - now_only) * prev_weight).round() as u32;
        }
        stats(&c, distinct)
    }
}

/// Windows of a connector or a sender.
#[derive(Debug, Clone)]
struct Compact {
    minute: Pair<MINUTE_MS>,
    hour: Pair<HOUR_MS>,
    day: Pair<DAY_MS>,
    last_seen_ms: i64,
    alerted_until_ms: i64,
}

impl Compact {
    fn new(now_ms: i64) -> Self {
        Compact {
            minute: Pair::NEW,
            hour: Pair::NEW,
            day: Pair::NEW,
            last_seen_ms: now_ms,
            alerted_until_ms: i64::MIN,
        }
    }

    fn add(&mut self, now_ms: i64, d: &Counts, bits: &[u64; 3]) {
        self.minute.add(now_ms, d, bits);
        self.hour.add(now_ms, d, bits);
        self.day.add(now_ms, d, bits);
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
    }

    fn windows(&self, now_ms: i64) -> Windows {
        Windows {
            minute: self.minute.estimate(now_ms),
            hour: self.hour.estimate(now_ms),
            day: self.day.estimate(now_ms),
        }
    }

    fn reset(&mut self) {
        self.minute = Pair::NEW;
        self.hour = Pair::NEW;
        self.day = Pair::NEW;
    }
}

#[derive(Debug, Clone, Copy)]
struct BaselineState {
    /// First clock hour not yet folded in.
    next_hour: i64,
    b: Baseline,
}

impl BaselineState {
    fn push(&mut self, messages: f64, unregistered: f64, domains: f64, cfg: &CountersConfig) {
        let b = &mut self.b;
        let alpha = cfg.baseline_alpha.max(1.0 / (b.hours as f64 + 1.0));
        let clip =
            |x: f64, current: f64, min: f64| x.min(min.max(cfg.baseline_clip_factor * current));
        let u = clip(
            unregistered,
            b.unregistered_per_hour,
            cfg.baseline_clip_min_unregistered,
        );
        let d = clip(
            domains,
            b.unregistered_domains_per_hour,
            cfg.baseline_clip_min_domains,
        );
        b.messages_per_hour += alpha * (messages - b.messages_per_hour);
        b.unregistered_per_hour += alpha * (u - b.unregistered_per_hour);
        b.unregistered_domains_per_hour += alpha * (d - b.unregistered_domains_per_hour);
        b.hours = b.hours.saturating_add(1);
    }
}

/// What a tenant's unregistered, null-sender and mismatched traffic leaves behind.
#[derive(Debug, Clone)]
struct Suspect {
    domains: Stamps,
    senders: Stamps,
    /// Recipient addresses of unregistered mail: forwarding reaches a few, spray many.
    recipients: Stamps,
    /// Domains of unregistered mail that passed DKIM.
    dkim_domains: Stamps,
    /// Which recipients of unregistered mail were seen in which clock hour.
    known_recipients: KnownRecipients,
    /// Distinct unregistered domains of the current clock hour, for the baseline.
    clock_hour: i64,
    clock_hour_domains: [u64; 4],
    top_domains: RecentTopK<Box<str>>,
    top_senders: RecentTopK<Box<str>>,
    top_ips: RecentTopK<IpAddr>,
    samples: Ring<Sample>,
    /// When each unregistered domain (P1, or P2 of a mismatch) was first and last seen, and in
    /// how many distinct hours: what the tenant's own traffic looks like, as against one-off
    /// spam domains. Bounded; the least recently seen is forgotten first.
    history: HashMap<Box<str>, DomainSeen>,
}

/// One domain of [`Suspect::history`].
#[derive(Debug, Clone, Copy)]
struct DomainSeen {
    first_ms: i64,
    last_hour: i64,
    hours: u32,
    messages: u32,
}

/// Domains remembered per tenant.
const HISTORY_DOMAINS: usize = 512;
/// A domain is part of the tenant's own traffic when first seen this long before the moment
/// asked about...
const FAMILIAR_BEFORE_MS: i64 = 2 * HOUR_MS;
/// ...and seen in at least this many distinct clock hours;
const FAMILIAR_HOURS: u32 = 2;
/// or it recurs: at least this many messages (a spray of random domains has one or two each).
const RECURRING_MESSAGES: u32 = 5;

impl Suspect {
    fn remember(&mut self, now_ms: i64, domain: &str) {
        let hour = now_ms.div_euclid(HOUR_MS);
        if let Some(d) = self.history.get_mut(domain) {
            d.messages = d.messages.saturating_add(1);
            if d.last_hour != hour {
                d.last_hour = hour;
                d.hours = d.hours.saturating_add(1);
            }
            return;
        }
        if self.history.len() >= HISTORY_DOMAINS {
            // Forget the stalest of a small sample: O(1) per insert, close to LRU.
            if let Some(k) = self
                .history
                .iter()
                .take(16)
                .min_by_key(|(_, d)| d.last_hour)
                .map(|(k, _)| k.clone())
            {
                self.history.remove(&k);
            }
        }
        self.history.insert(
            Box::from(domain),
            DomainSeen {
                first_ms: now_ms,
                last_hour: hour,
                hours: 1,
                messages: 1,
            },
        );
    }

    /// Whether `domain` was part of the tenant's traffic before now: first seen
    /// [`FAMILIAR_BEFORE_MS`] ago or more, in [`FAMILIAR_HOURS`] clock hours. Recurrence within
    /// the incident does not count here: a spammer rotating a few domains makes them recur.
    fn seen_before(&self, now_ms: i64, domain: &str) -> bool {
        self.history
            .get(domain)
            .is_some_and(|d| d.first_ms <= now_ms - FAMILIAR_BEFORE_MS && d.hours >= FAMILIAR_HOURS)
    }

    /// Domains that look like the tenant's own traffic as of `now_ms`: seen before the incident
    /// in more than one hour, or recurring.
    fn familiar(&self, now_ms: i64) -> Vec<String> {
        let mut v: Vec<String> = self
            .history
            .iter()
            .filter(|(_, d)| {
                (d.first_ms <= now_ms - FAMILIAR_BEFORE_MS && d.hours >= FAMILIAR_HOURS)
                    || d.messages >= RECURRING_MESSAGES
            })
            .map(|(k, _)| k.to_string())
            .collect();
        v.sort();
        v
    }

    fn new(cfg: &CountersConfig) -> Self {
        let period = cfg.top_k_period_secs.max(1) as i64 * SECOND_MS;
        Suspect {
            domains: Stamps::new(),
            senders: Stamps::new(),
            recipients: Stamps::new(),
            dkim_domains: Stamps::new(),
            known_recipients: KnownRecipients::new(),
            clock_hour: i64::MIN,
            clock_hour_domains: [0; 4],
            top_domains: RecentTopK::new(cfg.top_k, period),
            top_senders: RecentTopK::new(cfg.top_k, period),
            top_ips: RecentTopK::new(cfg.top_k, period),
            samples: Ring::new(cfg.samples),
            history: HashMap::new(),
        }
    }

    fn clock_hour_count(&self, hour: i64) -> f64 {
        if self.clock_hour != hour {
            return 0.0;
        }
        let set: u32 = self.clock_hour_domains.iter().map(|w| w.count_ones()).sum();
        linear_count(256, set as usize)
    }
}

#[derive(Debug, Clone)]
struct TenantEntry {
    last_seen_ms: i64,
    minute: BucketRing<6, { 10 * SECOND_MS }>,
    hour: BucketRing<12, { 5 * MINUTE_MS }>,
    day: BucketRing<24, HOUR_MS>,
    base_tick: i64,
    recipient_domains: Stamps,
    baseline: BaselineState,
    suspect: Option<Box<Suspect>>,
    rejections: Option<Box<Ring<RejectionSample>>>,
    connectors: Vec<(ConnectorId, Compact)>,
    senders: HashMap<Box<str>, Compact>,
}

impl TenantEntry {
    fn new(now_ms: i64) -> Self {
        TenantEntry {
            last_seen_ms: now_ms,
            minute: BucketRing::new(),
            hour: BucketRing::new(),
            day: BucketRing::new(),
            base_tick: now_ms.div_euclid(TICK_MS),
            recipient_domains: Stamps::new(),
            baseline: BaselineState {
                next_hour: now_ms.div_euclid(HOUR_MS),
                b: Baseline::default(),
            },
            suspect: None,
            rejections: None,
            connectors: Vec::new(),
            senders: HashMap::new(),
        }
    }

    /// The current tick relative to the base, rebasing the stamps when they near overflow.
    fn tick(&mut self, now_ms: i64) -> u16 {
        let tick = now_ms.div_euclid(TICK_MS).max(self.base_tick);
        if tick - self.base_tick + 1 > REBASE_AT {
            let new_base = tick - KEEP_TICKS;
            let shift = new_base - self.base_tick;
            self.recipient_domains.shift(shift);
            if let Some(s) = &mut self.suspect {
                s.domains.shift(shift);
                s.senders.shift(shift);
                s.recipients.shift(shift);
                s.dkim_domains.shift(shift);
            }
            self.base_tick = new_base;
        }
        (tick - self.base_tick + 1) as u16
    }

    /// Fold the clock hours completed since the last call into the baseline.
    fn fold_baseline(&mut self, now_ms: i64, cfg: &CountersConfig) {
        let current = now_ms.div_euclid(HOUR_MS);
        // After a long silence only the last week matters: older hours have decayed away.
        let mut h = self.baseline.next_hour.max(current - 24 * 7);
        while h < current {
            let (m, u) = match u32::try_from(h).ok().and_then(|e| self.day.bucket(e)) {
                Some(c) => (
                    c[MESSAGES] as f64,
                    (c[UNREG_MESSAGES] + c[NULL_MESSAGES]) as f64,
                ),
                None => (0.0, 0.0),
            };
            let d = self.suspect.as_ref().map_or(0.0, |s| s.clock_hour_count(h));
            self.baseline.push(m, u, d, cfg);
            h += 1;
        }
        self.baseline.next_hour = self.baseline.next_hour.max(current);
    }

    fn touch(&mut self, now_ms: i64, cfg: &CountersConfig) -> u16 {
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
        self.fold_baseline(now_ms, cfg);
        self.tick(now_ms)
    }

    fn add(&mut self, now_ms: i64, d: &Counts) {
        self.minute.add(now_ms, d);
        self.hour.add(now_ms, d);
        self.day.add(now_ms, d);
    }

    fn windows(&self, now_ms: i64, rel: u16) -> Windows {
        let rcpt = self.recipient_domains.counts(rel);
        let (dom, snd, urc, dkd) = match &self.suspect {
            Some(s) => (
                s.domains.counts(rel),
                s.senders.counts(rel),
                s.recipients.counts(rel),
                s.dkim_domains.counts(rel),
            ),
            None => ([0; 3], [0; 3], [0; 3], [0; 3]),
        };
        let d = |i: usize| [dom[i], snd[i], rcpt[i], urc[i], dkd[i]];
        Windows {
            minute: stats(&self.minute.sum(now_ms), d(0)),
            hour: stats(&self.hour.sum(now_ms), d(1)),
            day: stats(&self.day.sum(now_ms), d(2)),
        }
    }

    fn suspect(&mut self, cfg: &CountersConfig) -> &mut Suspect {
        self.suspect
            .get_or_insert_with(|| Box::new(Suspect::new(cfg)))
    }

    fn connector(&mut self, now_ms: i64, id: ConnectorId, cap: usize) -> &mut Compact {
        if let Some(i) = self.connectors.iter().position(|(c, _)| *c == id) {
            return &mut self.connectors[i].1;
        }
        if self.connectors.len() >= cap.max(1) {
            if let Some(i) =
                (0..self.connectors.len()).min_by_key(|&i| self.connectors[i].1.last_seen_ms)
            {
                self.connectors.swap_remove(i);
            }
        }
        self.connectors.push((id, Compact::new(now_ms)));
        let last = self.connectors.len() - 1;
        &mut self.connectors[last].1
    }

    fn sender(&mut self, now_ms: i64, key: &str, cap: usize) -> &mut Compact {
        if !self.senders.contains_key(key) {
            if self.senders.len() >= cap.max(1) {
                let oldest = self
                    .senders
                    .iter()
                    .min_by_key(|(_, c)| c.last_seen_ms)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    self.senders.remove(&k);
                }
            }
            self.senders.insert(Box::from(key), Compact::new(now_ms));
        }
        self.senders.get_mut(key).expect("inserted above")
    }
}

#[derive(Debug, Default)]
struct Shard {
    tenants: HashMap<TenantId, TenantEntry>,
    /// Kept apart from the tenant entries: a restriction outlives idle expiry and eviction.
    restrictions: HashMap<TenantId, HashMap<Box<str>, SenderRestriction>>,
}

/// The single-node [`Counters`].
#[derive(Debug)]
pub struct InProcessCounters {
    cfg: CountersConfig,
    shards: Box<[Mutex<Shard>]>,
}

impl InProcessCounters {
    pub fn new(cfg: CountersConfig) -> Self {
        let n = cfg.shards.max(1);
        InProcessCounters {
            cfg,
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
        }
    }

    pub fn config(&self) -> &CountersConfig {
        &self.cfg
    }

    fn shard(&self, tenant: TenantId) -> MutexGuard<'_, Shard> {
        // Fibonacci hashing spreads sequential ids over the shards.
        let h = (tenant as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let i = ((h >> 32) % self.shards.len() as u64) as usize;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `d` to the windows of a tenant and its connector, and lets `more` change the
    /// tenant's entry in the same step.
    fn count_with(
        &self,
        now_ms: i64,
        tenant: TenantId,
        connector: Option<ConnectorId>,
        d: &Counts,
        more: impl FnOnce(&mut TenantEntry, u16, &CountersConfig),
    ) -> Snapshot {
        let cfg = &self.cfg;
        let mut shard = self.shard(tenant);
        let entry = shard
            .tenants
            .entry(tenant)
            .or_insert_with(|| TenantEntry::new(now_ms));
        let rel = entry.touch(now_ms, cfg);
        entry.add(now_ms, d);
        more(entry, rel, cfg);
        if let Some(c) = connector {
            entry
                .connector(now_ms, c, cfg.max_connectors_per_tenant)
                .add(now_ms, d, &[0; 3]);
        }
        snapshot_of(entry, tenant, now_ms, rel, connector, None)
    }

    /// Sender restrictions standing at `now_ms`, over all tenants.
    pub fn restriction_count(&self, now_ms: i64) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .restrictions
                    .values()
                    .flat_map(|m| m.values())
                    .filter(|r| r.until_ms.is_none_or(|u| u > now_ms))
                    .count()
            })
            .sum()
    }

    /// Tenants currently held.
    pub fn tenant_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).tenants.len())
            .sum()
    }
}

fn snapshot_of(
    entry: &TenantEntry,
    tenant: TenantId,
    now_ms: i64,
    rel: u16,
    connector: Option<ConnectorId>,
    sender: Option<&str>,
) -> Snapshot {
    Snapshot {
        tenant,
        at_ms: now_ms,
        windows: entry.windows(now_ms, rel),
        baseline: entry.baseline.b,
        connector: connector.and_then(|id| {
            entry
                .connectors
                .iter()
                .find(|(c, _)| *c == id)
                .map(|(c, w)| ConnectorWindows {
                    connector: *c,
                    windows: w.windows(now_ms),
                })
        }),
        sender: sender.and_then(|k| entry.senders.get(k).map(|s| s.windows(now_ms))),
        connector_changed_ms: None,
    }
}

impl Counters for InProcessCounters {
    fn record(&self, now_ms: i64, ev: &MessageEvent<'_>) -> Snapshot {
        let cfg = &self.cfg;
        let mut shard = self.shard(ev.tenant);
        let entry = shard
            .tenants
            .entry(ev.tenant)
            .or_insert_with(|| TenantEntry::new(now_ms));
        let rel = entry.touch(now_ms, cfg);

        let n = ev.recipients.len().min(u32::MAX as usize) as u32;
        let mut d: Counts = [0; N];
        d[MESSAGES] = 1;
        d[RECIPIENTS] = n;
        d[EXTERNAL] = ev.external_recipients.min(n);
        // Recipients see the header From (P2): a registered envelope sender under a foreign
        // header From is unregistered mail for counting, as for enforcement.
        let effective = effective_class(ev.class, ev.mismatch);
        match effective {
            SenderClass::Unregistered => {
                d[UNREG_MESSAGES] = 1;
                d[UNREG_RECIPIENTS] = n;
            }
            SenderClass::Null => d[NULL_MESSAGES] = 1,
            SenderClass::Registered => {}
        }
        d[MISMATCHES] = ev.mismatch as u32;

        let mut bits = [0u64; 3];
        for r in ev.recipients {
            let h = hash_str(&r.domain);
            entry.recipient_domains.mark(rel, h);
            bits[D_RCPT_DOMAINS] |= 1 << (h % 64);
        }

        let key = ev.sender.map(sender_key);
        let suspicious = ev.class != SenderClass::Registered || ev.mismatch;
        if suspicious {
            let hour = now_ms.div_euclid(HOUR_MS);
            let s = entry.suspect(cfg);
            if effective == SenderClass::Unregistered {
                let mut known = false;
                for r in ev.recipients {
                    let h = hash_str(&sender_key(r));
                    s.recipients.mark(rel, h);
                    known |= s.known_recipients.seen(hour, h);
                }
                d[UNREG_KNOWN_RCPT] = known as u32;
            }
            // The domain the recipients see: P2 for a mismatch, else P1.
            let seen_domain = match (ev.mismatch, ev.header_from_domain, ev.sender) {
                (true, Some(d), _) => Some(d),
                (_, _, Some(a)) => Some(a.domain.as_str()),
                _ => None,
            };
            if let (SenderClass::Unregistered, Some(domain), Some(key)) =
                (effective, seen_domain, key.as_deref())
            {
                let hd = hash_str(domain);
                let hs = hash_str(key);
                s.domains.mark(rel, hd);
                s.senders.mark(rel, hs);
                bits[D_UNREG_DOMAINS] |= 1 << (hd % 64);
                bits[D_UNREG_SENDERS] |= 1 << (hs % 64);
                if s.clock_hour != hour {
                    s.clock_hour = hour;
                    s.clock_hour_domains = [0; 4];
                }
                let slot = (hd % 256) as usize;
                s.clock_hour_domains[slot / 64] |= 1 << (slot % 64);
                s.top_domains.add(now_ms, domain, 1, |k: &str| Box::from(k));
                if s.seen_before(now_ms, domain) {
                    d[UNREG_FAMILIAR] = 1;
                }
                s.remember(now_ms, domain);
                s.top_senders.add(now_ms, key, 1, |k: &str| Box::from(k));
            }
            if let Some(ip) = ev.client_ip {
                s.top_ips.add(now_ms, &ip, 1, |ip| *ip);
            }
            s.samples.push(Sample {
                at_ms: now_ms,
                class: ev.class,
                mismatch: ev.mismatch,
                connector: ev.connector,
                sender: key.as_deref().map(|k| truncated(k, MAX_SAMPLE_TEXT * 2)),
                client_ip: ev.client_ip,
                queue_id: ev.queue_id.map(|q| truncated(q, MAX_SAMPLE_TEXT)),
                message_id: ev.message_id.map(|m| truncated(m, MAX_SAMPLE_TEXT)),
            });
        }

        entry.add(now_ms, &d);
        entry
            .connector(now_ms, ev.connector, cfg.max_connectors_per_tenant)
            .add(now_ms, &d, &bits);
        if let Some(k) = key.as_deref() {
            entry
                .sender(now_ms, k, cfg.max_senders_per_tenant)
                .add(now_ms, &d, &bits);
        }
        snapshot_of(
            entry,
            ev.tenant,
            now_ms,
            rel,
            Some(ev.connector),
            key.as_deref(),
        )
    }

    fn record_dkim(&self, now_ms: i64, ev: &DkimEvent<'_>) -> Snapshot {
        let mut d: Counts = [0; N];
        d[DKIM_CHECKED] = 1;
        d[DKIM_PASS] = ev.pass as u32;
        let domain = ev.domain.filter(|_| ev.pass);
        self.count_with(now_ms, ev.tenant, ev.connector, &d, |entry, rel, cfg| {
            if let Some(domain) = domain {
                entry.suspect(cfg).dkim_domains.mark(rel, hash_str(domain));
            }
        })
    }

    fn record_scan(
        &self,
        now_ms: i64,
        tenant: TenantId,
        connector: Option<ConnectorId>,
        spam: bool,
    ) -> Snapshot {
        let mut d: Counts = [0; N];
        d[SCANNED] = 1;
        d[SCAN_SPAM] = spam as u32;
        self.count_with(now_ms, tenant, connector, &d, |_, _, _| {})
    }

    fn record_refused(&self, now_ms: i64, tenant: TenantId, connector: Option<ConnectorId>) {
        let mut d: Counts = [0; N];
        d[REFUSED] = 1;
        self.count_with(now_ms, tenant, connector, &d, |_, _, _| {});
    }

    fn record_remote_reply(&self, now_ms: i64, ev: &RemoteReplyEvent<'_>) -> Snapshot {
        let cfg = &self.cfg;
        let mut shard = self.shard(ev.tenant);
        let entry = shard
            .tenants
            .entry(ev.tenant)
            .or_insert_with(|| TenantEntry::new(now_ms));
        let rel = entry.touch(now_ms, cfg);
        let mut d: Counts = [0; N];
        d[match ev.class {
            RemoteClass::Delivered => R_DELIVERED,
            RemoteClass::SpamBlock => R_SPAM,
            RemoteClass::BadMailbox => R_BAD_MAILBOX,
            RemoteClass::Other => R_OTHER,
        }] = 1;
        entry.add(now_ms, &d);
        let key = ev.sender.map(sender_key);
        if ev.class == RemoteClass::SpamBlock {
            entry
                .rejections
                .get_or_insert_with(|| Box::new(Ring::new(cfg.samples)))
                .push(RejectionSample {
                    at_ms: now_ms,
                    sender: key.clone(),
                    queue_id: ev.queue_id.map(|q| truncated(q, MAX_SAMPLE_TEXT)),
                    reply: ev.reply.map(|r| truncated(r, MAX_SAMPLE_TEXT * 2)),
                });
        }
        if let Some(c) = ev.connector {
            entry
                .connector(now_ms, c, cfg.max_connectors_per_tenant)
                .add(now_ms, &d, &[0; 3]);
        }
        if let Some(k) = key.as_deref() {
            entry
                .sender(now_ms, k, cfg.max_senders_per_tenant)
                .add(now_ms, &d, &[0; 3]);
        }
        snapshot_of(entry, ev.tenant, now_ms, rel, ev.connector, key.as_deref())
    }

    fn snapshot(&self, now_ms: i64, tenant: TenantId) -> Snapshot {
        let mut shard = self.shard(tenant);
        match shard.tenants.get_mut(&tenant) {
            Some(entry) => {
                entry.fold_baseline(now_ms, &self.cfg);
                let rel = entry.tick(now_ms);
                snapshot_of(entry, tenant, now_ms, rel, None, None)
            }
            None => Snapshot {
                tenant,
                at_ms: now_ms,
                ..Snapshot::default()
            },
        }
    }

    fn observations(&self, now_ms: i64, tenant: TenantId) -> Observations {
        let mut shard = self.shard(tenant);
        let Some(entry) = shard.tenants.get_mut(&tenant) else {
            return Observations {
                tenant,
                at_ms: now_ms,
                ..Observations::default()
            };
        };
        entry.fold_baseline(now_ms, &self.cfg);
        let rel = entry.tick(now_ms);
        let mut obs = Observations {
            tenant,
            at_ms: now_ms,
            windows: entry.windows(now_ms, rel),
            baseline: entry.baseline.b,
            series_5min: entry.hour.series(now_ms),
            series_hourly: entry.day.series(now_ms),
            connectors: entry
                .connectors
                .iter()
                .map(|(c, w)| ConnectorActivity {
                    connector: *c,
                    windows: w.windows(now_ms),
                })
                .collect(),
            rejection_samples: entry.rejections.as_ref().map_or(Vec::new(), |r| r.to_vec()),
            ..Observations::default()
        };
        if let Some(s) = &entry.suspect {
            obs.top_unregistered_domains = s.top_domains.report(now_ms);
            obs.top_unregistered_senders = s.top_senders.report(now_ms);
            obs.top_source_ips = s.top_ips.report(now_ms);
            obs.samples = s.samples.to_vec();
            obs.familiar_domains = Some(s.familiar(now_ms));
        }
        obs
    }

    fn sender_usage(&self, now_ms: i64, tenant: TenantId, sender: &str) -> SenderUsage {
        let mut shard = self.shard(tenant);
        let mut usage = SenderUsage::default();
        if let Some(m) = shard.restrictions.get_mut(&tenant) {
            match m.get(sender) {
                Some(r) if r.until_ms.is_some_and(|u| u <= now_ms) => {
                    m.remove(sender);
                }
                Some(r) => usage.restriction = Some(r.clone()),
                None => {}
            }
        }
        if let Some(s) = shard
            .tenants
            .get(&tenant)
            .and_then(|e| e.senders.get(sender))
        {
            usage.messages_last_minute = s.minute.estimate(now_ms).messages;
            usage.external_recipients_last_hour = s.hour.estimate(now_ms).external_recipients;
            usage.recipients_last_day = s.day.estimate(now_ms).recipients;
            usage.alerted_until_ms = (s.alerted_until_ms > now_ms).then_some(s.alerted_until_ms);
        }
        usage
    }

    fn set_sender_restriction(
        &self,
        tenant: TenantId,
        sender: &str,
        restriction: Option<SenderRestriction>,
    ) -> Option<SenderRestriction> {
        let mut shard = self.shard(tenant);
        match restriction {
            Some(r) => {
                if let Some(s) = shard
                    .tenants
                    .get_mut(&tenant)
                    .and_then(|e| e.senders.get_mut(sender))
                {
                    s.reset();
                }
                shard
                    .restrictions
                    .entry(tenant)
                    .or_default()
                    .insert(Box::from(sender), r)
            }
            None => {
                let m = shard.restrictions.get_mut(&tenant)?;
                let prev = m.remove(sender);
                if m.is_empty() {
                    shard.restrictions.remove(&tenant);
                }
                prev
            }
        }
    }

    fn set_sender_alerted(&self, now_ms: i64, tenant: TenantId, sender: &str, until_ms: i64) {
        let cap = self.cfg.max_senders_per_tenant;
        let mut shard = self.shard(tenant);
        let entry = shard
            .tenants
            .entry(tenant)
            .or_insert_with(|| TenantEntry::new(now_ms));
        entry.sender(now_ms, sender, cap).alerted_until_ms = until_ms;
    }

    fn sender_restrictions(
        &self,
        now_ms: i64,
        tenant: TenantId,
    ) -> Vec<(String, SenderRestriction)> {
        let shard = self.shard(tenant);
        let mut out: Vec<(String, SenderRestriction)> = shard
            .restrictions
            .get(&tenant)
            .map(|m| {
                m.iter()
                    .filter(|(_, r)| r.until_ms.is_none_or(|u| u > now_ms))
                    .map(|(k, r)| (k.to_string(), r.clone()))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn expire(&self, now_ms: i64) -> usize {
        let idle = self.cfg.idle_expiry_secs as i64 * SECOND_MS;
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let before = shard.tenants.len();
            shard.tenants.retain(|_, e| {
                e.senders.retain(|_, s| now_ms - s.last_seen_ms < idle);
                e.connectors.retain(|(_, c)| now_ms - c.last_seen_ms < idle);
                now_ms - e.last_seen_ms < idle
            });
            dropped += before - shard.tenants.len();
            shard.restrictions.retain(|_, m| {
                m.retain(|_, r| r.until_ms.is_none_or(|u| u > now_ms));
                !m.is_empty()
            });
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s, false).unwrap()
    }

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    #[test]
    fn classifier() {
        use RemoteClass::*;
        let c = classify_remote_reply;
        assert_eq!(c(250, "2.0.0", "Ok: queued"), Delivered);
        assert_eq!(c(550, "5.7.1", "Message rejected"), SpamBlock);
        assert_eq!(
            c(
                550,
                "5.7.350",
                "Remote server returned message detected as spam"
            ),
            SpamBlock
        );
        assert_eq!(
            c(
                554,
                "",
                "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
            ),
            SpamBlock
        );
        assert_eq!(
            c(421, "4.7.0", "IP listed on a DNS block list, try later"),
            SpamBlock
        );
        assert_eq!(c(450, "4.7.1", "Greylisted, please try again later"), Other);
        assert_eq!(
            c(550, "5.7.26", "Unauthenticated email is not accepted"),
            Other
        );
        assert_eq!(
            c(550, "5.1.1", "The email account does not exist"),
            BadMailbox
        );
        assert_eq!(c(550, "", "5.1.10 Recipient not found"), BadMailbox);
        assert_eq!(
            c(550, "", "User unknown in local recipient table"),
            BadMailbox
        );
        assert_eq!(c(554, "", "Your IP is blacklisted"), SpamBlock);
        assert_eq!(c(451, "4.3.0", "Temporary local problem"), Other);
        assert_eq!(c(552, "5.2.2", "Mailbox full"), Other);
    }

    #[test]
    fn rings_slide() {
        let mut r: BucketRing<6, 10_000> = BucketRing::new();
        let mut d = [0; N];
        d[MESSAGES] = 1;
        for i in 0..60 {
            r.add(T0 + i * 1000, &d);
        }
        assert_eq!(r.sum(T0 + 59_000)[MESSAGES], 60);
        // 10 s later the first bucket has left the window.
        assert_eq!(r.sum(T0 + 60_000)[MESSAGES], 50);
        assert_eq!(r.sum(T0 + 120_000)[MESSAGES], 0);
        assert_eq!(r.series(T0 + 59_000).len(), 6);
    }

    #[test]
    fn stamps_count_distinct_per_window() {
        let mut s = Stamps::new();
        // 40 distinct values over the last hour, 5 of them in the last minute.
        for i in 0..40u64 {
            let rel = if i < 35 { 10 } else { 355 };
            s.mark(rel, hash_str(&format!("d{i}.example")));
        }
        let [m, h, d] = s.counts(360);
        assert!((4..=6).contains(&m), "{m}");
        assert!((36..=44).contains(&h), "{h}");
        assert_eq!(h, d);
        let mut big = Stamps::new();
        for i in 0..500u64 {
            big.mark(100, hash_str(&format!("x{i}")));
        }
        let est = big.counts(100)[0];
        assert!((430..=570).contains(&est), "{est}");
        // Rebasing keeps recent stamps and drops old ones.
        big.shift(50);
        assert_eq!(big.counts(50)[0], est);
        big.shift(60);
        assert_eq!(big.counts(50)[2], 0);
    }

    #[test]
    fn pair_windows_estimate() {
        let mut p: Pair<MINUTE_MS> = Pair::NEW;
        let mut d = [0; N];
        d[MESSAGES] = 1;
        for i in 0..30 {
            p.add(T0 + i * 1000, &d, &[1, 0, 0]);
        }
        assert_eq!(p.estimate(T0 + 30_000).messages, 30);
        // Half-way through the next minute, half of the last one still counts.
        assert_eq!(p.estimate(T0 + 90_000).messages, 15);
        assert_eq!(p.estimate(T0 + 90_000).unregistered_domains, 1);
        assert_eq!(p.estimate(T0 + 125_000).messages, 0);
    }

    fn msg<'a>(
        tenant: TenantId,
        class: SenderClass,
        sender: Option<&'a Address>,
        rcpts: &'a [Address],
    ) -> MessageEvent<'a> {
        MessageEvent {
            tenant,
            connector: 7,
            class,
            sender,
            mismatch: false,
            header_from_domain: None,
            recipients: rcpts,
            external_recipients: rcpts.len() as u32,
            client_ip: Some("192.0.2.10".parse().unwrap()),
            queue_id: Some("Q1"),
            message_id: Some("<m@x>"),
        }
    }

    #[test]
    fn record_counts_every_level_and_evidence() {
        let c = InProcessCounters::new(CountersConfig::default());
        let rcpts = [addr("a@ext.example"), addr("b@other.example")];
        let reg = addr("Alice@tenant.example");
        for i in 0..10 {
            c.record(
                T0 + i * 1000,
                &msg(1, SenderClass::Registered, Some(&reg), &rcpts),
            );
        }
        for i in 0..30 {
            let s = addr(&format!("x{i}@spam{}.example", i % 15));
            c.record(
                T0 + 10_000 + i * 100,
                &msg(1, SenderClass::Unregistered, Some(&s), &rcpts),
            );
        }
        let snap = c.record(T0 + 14_000, &msg(1, SenderClass::Null, None, &rcpts));
        let h = snap.windows.hour;
        assert_eq!(h.messages, 41);
        assert_eq!(h.recipients, 82);
        assert_eq!(h.unregistered_messages, 30);
        assert_eq!(h.null_messages, 1);
        assert_eq!(h.not_registered(), 31);
        assert!(
            (14..=16).contains(&h.unregistered_domains),
            "{}",
            h.unregistered_domains
        );
        assert!((28..=32).contains(&h.unregistered_senders));
        assert_eq!(h.recipient_domains, 2);
        assert_eq!(snap.windows.minute.messages, 41);
        assert_eq!(snap.connector.unwrap().windows.minute.messages, 41);
        assert!(snap.sender.is_none());

        let reg_usage = c.sender_usage(T0 + 15_000, 1, "alice@tenant.example");
        assert_eq!(reg_usage.messages_last_minute, 10);
        assert_eq!(reg_usage.recipients_last_day, 20);

        let obs = c.observations(T0 + 15_000, 1);
        assert_eq!(obs.top_unregistered_domains.len(), 15);
        assert_eq!(obs.top_unregistered_domains[0].count, 2);
        assert_eq!(obs.top_source_ips[0].key, "192.0.2.10");
        assert_eq!(obs.top_source_ips[0].count, 31);
        assert_eq!(obs.samples.len(), 16);
        assert_eq!(obs.series_5min.len(), 12);
        assert_eq!(obs.series_hourly.len(), 24);
        assert_eq!(obs.series_hourly.last().unwrap().unregistered_messages, 30);

        // Remote replies land in the tenant, connector and sender windows.
        let s = c.record_remote_reply(
            T0 + 16_000,
            &RemoteReplyEvent {
                tenant: 1,
                connector: Some(7),
                sender: Some(&reg),
                class: RemoteClass::SpamBlock,
                queue_id: Some("Q9"),
                reply: Some("550 5.7.1 blocked"),
            },
        );
        assert_eq!(s.windows.hour.remote_spam, 1);
        assert_eq!(s.sender.unwrap().hour.remote_spam, 1);
        assert_eq!(c.observations(T0 + 16_000, 1).rejection_samples.len(), 1);
    }

    #[test]
    fn baseline_learns_and_resists_bursts() {
        let c = InProcessCounters::new(CountersConfig::default());
        let rcpt = [addr("r@ext.example")];
        let reg = addr("a@tenant.example");
        let fwd = addr("f@forwarded.example");
        let mut t = T0;
        // Two days: 50 registered and 10 unregistered an hour.
        for _ in 0..48 {
            for i in 0..60 {
                let ev = if i < 10 {
                    msg(1, SenderClass::Unregistered, Some(&fwd), &rcpt)
                } else {
                    msg(1, SenderClass::Registered, Some(&reg), &rcpt)
                };
                c.record(t + i * MINUTE_MS, &ev);
            }
            t += HOUR_MS;
        }
        let b = c.snapshot(t, 1).baseline;
        assert_eq!(b.hours, 48);
        assert!((b.messages_per_hour - 60.0).abs() < 1.0, "{b:?}");
        assert!((b.unregistered_per_hour - 10.0).abs() < 0.5, "{b:?}");
        assert!((b.unregistered_domains_per_hour - 1.0).abs() < 0.1, "{b:?}");
        // One hour of 5,000 unregistered messages moves it by at most alpha × floor.
        for i in 0..5000 {
            c.record(
                t + i * 700,
                &msg(1, SenderClass::Unregistered, Some(&fwd), &rcpt),
            );
        }
        let b2 = c.snapshot(t + HOUR_MS, 1).baseline;
        assert!(b2.unregistered_per_hour < 15.0, "{b2:?}");
    }

    #[test]
    fn restrictions_outlive_expiry_and_idle_entries_go() {
        let c = InProcessCounters::new(CountersConfig::default());
        let rcpt = [addr("r@ext.example")];
        let a = addr("a@tenant.example");
        c.record(T0, &msg(1, SenderClass::Registered, Some(&a), &rcpt));
        c.set_sender_restriction(
            1,
            "a@tenant.example",
            Some(SenderRestriction {
                since_ms: T0,
                until_ms: None,
                limit: crate::limits::Limit::MessagesPerMinute,
                action: crate::limits::LimitAction::Block,
                reason: "test".into(),
            }),
        );
        assert_eq!(c.tenant_count(), 1);
        assert_eq!(c.expire(T0 + 49 * HOUR_MS), 1);
        assert_eq!(c.tenant_count(), 0);
        let u = c.sender_usage(T0 + 49 * HOUR_MS, 1, "a@tenant.example");
        assert!(u.restriction.is_some());
        assert_eq!(u.messages_last_minute, 0);
    }

    #[test]
    fn sender_cap_evicts_least_recent() {
        let cfg = CountersConfig {
            max_senders_per_tenant: 3,
            ..CountersConfig::default()
        };
        let c = InProcessCounters::new(cfg);
        let rcpt = [addr("r@ext.example")];
        for i in 0..5 {
            let s = addr(&format!("s{i}@tenant.example"));
            c.record(T0 + i, &msg(1, SenderClass::Registered, Some(&s), &rcpt));
        }
        assert_eq!(
            c.sender_usage(T0 + 10, 1, "s0@tenant.example")
                .messages_last_minute,
            0
        );
        assert_eq!(
            c.sender_usage(T0 + 10, 1, "s4@tenant.example")
                .messages_last_minute,
            1
        );
    }

    #[test]
    fn memory_layout() {
        use std::mem::size_of;
        let tenant = size_of::<TenantEntry>();
        let compact = size_of::<Compact>();
        let suspect = size_of::<Suspect>();
        println!(
            "size_of: TenantEntry {tenant} B, Compact (connector/sender) {compact} B, \
             Suspect {suspect} B, Sample {} B, RejectionSample {} B, top-k row (str) {} B, \
             top-k row (ip) {} B",
            size_of::<Sample>(),
            size_of::<RejectionSample>(),
            size_of::<(Box<str>, u64, u64)>(),
            size_of::<(IpAddr, u64, u64)>(),
        );
        // The doc comment of this module quotes these figures.
        assert!(tenant <= 3_900, "{tenant}");
        assert!(compact <= 620, "{compact}");
    }
}

#[cfg(test)]
mod known_recipient_tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s, false).unwrap()
    }

    #[test]
    fn a_recipient_of_an_earlier_hour_is_known() {
        let c = InProcessCounters::new(CountersConfig::default());
        let t0 = 1_767_225_600_000 + 10 * HOUR_MS;
        let rcpt = [addr("kid1@home.example")];
        let sender = addr("p@corr.example");
        let ev = |rcpts: &'static [Address]| MessageEvent {
            tenant: 1,
            connector: 1,
            class: SenderClass::Unregistered,
            sender: Some(&sender),
            mismatch: false,
            header_from_domain: None,
            recipients: rcpts,
            external_recipients: 1,
            client_ip: None,
            queue_id: None,
            message_id: None,
        };
        let rcpt: &'static [Address] = Box::leak(Box::new(rcpt));
        let s = c.record(t0, &ev(rcpt));
        assert_eq!(s.windows.hour.unregistered_known_recipient, 0);
        let s = c.record(t0 + 10 * MINUTE_MS, &ev(rcpt));
        assert_eq!(s.windows.hour.unregistered_known_recipient, 0, "same hour");
        let s = c.record(t0 + HOUR_MS, &ev(rcpt));
        assert_eq!(s.windows.hour.unregistered_known_recipient, 1, "next hour");
        let s = c.record(t0 + HOUR_MS + 5 * MINUTE_MS, &ev(rcpt));
        assert_eq!(
            s.windows.hour.unregistered_known_recipient, 2,
            "still known that hour"
        );
        let s = c.record(t0 + 20 * DAY_MS, &ev(rcpt));
        assert_eq!(
            s.windows.hour.unregistered_known_recipient, 0,
            "forgotten after 14 days"
        );
        let fresh: &'static [Address] = Box::leak(Box::new([addr("new@home.example")]));
        let s = c.record(t0 + 20 * DAY_MS + 1, &ev(fresh));
        assert_eq!(s.windows.hour.unregistered_known_recipient, 0);
    }
}
