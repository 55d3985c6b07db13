//! Cluster-wide counting: what one node tells the others about a tenant, and how it adds
//! theirs to its own figures.
//!
//! Each node keeps counting in its own [`InProcessCounters`]; the SMTP path never waits for
//! another node. A background task (the binary's cluster module) exports, at most every
//! 100 ms, the *share* of every tenant the node counted since the last export: its bucket
//! rings (1 minute, 1 hour, 24 hours, with their absolute epochs) and its timestamped
//! distinct-count bitmaps, plus the two-bucket windows of the senders it counted. The shares
//! are absolute state, not deltas: a lost or repeated export never counts twice, and a node
//! that comes back after an outage only has to export everything once more.
//!
//! The task reads back the other nodes' shares of the same tenants and [`InProcessCounters::
//! import`]s them. From then on every snapshot of the tenant adds them up:
//! * counts: bucket by bucket (same epochs on every node; a bucket outside the window reads
//!   as zero, so a share that is not refreshed ages out by itself);
//! * distinct counts (domains, addresses): the 256-slot timestamped linear-counting bitmaps
//!   are merged slot by slot (the later stamp wins), and the union is counted as one bitmap.
//!   Merged bitmaps rather than HyperLogLog: the single-node detector already reads these
//!   bitmaps for every window up to 24 h from one array, the merge is exact (the union of
//!   what each node saw, not a second estimate of it), the same thresholds keep the same
//!   error (~5 % at 100 distinct values), and a share stays small (a few hundred bytes
//!   sparse);
//! * a sender's usage (per-minute messages, recipients per hour and day): its own windows
//!   plus each other node's windows for the same sender, evaluated at the reader's clock;
//! * the baseline: each completed clock hour is folded in with every node's count of it.
//!
//! Per-connector windows stay per node (a connector's traffic normally arrives at one node at
//! a time, and none of the blocking rules reads them across nodes).
//!
//! The slack is what the other nodes accepted since their last export plus what this node
//! read before it: at most two batch intervals (≤ 200 ms) of the cluster's traffic, stated in
//! the README's "Run a cluster" section. Hashes of domains and addresses are the same on
//! every node of one version (SipHash with fixed keys), which is why a cluster's nodes run
//! the same version; a share carries [`SHARE_FORMAT`] and one of another format is ignored.

use relayward_core::TenantId;

use super::blocks::*;
use super::in_process::InProcessCounters;
use super::tenant::TenantEntry;

/// Version of the encoding of a share (and of the hashes behind its bitmaps).
pub const SHARE_FORMAT: u8 = 1;

/// The distinct-count bitmaps of a tenant, in the order they are exported.
const STAMP_KINDS: usize = 5;

/// What other nodes counted for one tenant, added into its windows.
#[derive(Debug, Clone)]
pub(super) struct Remote {
    pub(super) minute: BucketRing<6, { 10 * super::SECOND_MS }>,
    pub(super) hour: BucketRing<12, { 5 * super::MINUTE_MS }>,
    pub(super) day: BucketRing<24, { super::HOUR_MS }>,
    /// In the local entry's frame (relative to its base tick, plus one; 0 = never).
    pub(super) stamps: [Stamps; STAMP_KINDS],
    /// Other nodes' windows of the tenant's senders, by sender key.
    pub(super) senders: std::collections::HashMap<Box<str>, Vec<Compact>>,
}

impl Remote {
    fn new() -> Self {
        Remote {
            minute: BucketRing::new(),
            hour: BucketRing::new(),
            day: BucketRing::new(),
            stamps: std::array::from_fn(|_| Stamps::new()),
            senders: Default::default(),
        }
    }

    pub(super) fn shift(&mut self, by: i64) {
        for s in &mut self.stamps {
            s.shift(by);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding: little-endian, sparse (only live buckets and stamped slots).

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn counts(&mut self, c: &Counts) {
        for v in c {
            self.u32(*v);
        }
    }
    fn ring<const B: usize, const WMS: i64>(&mut self, r: &BucketRing<B, WMS>) {
        let live: Vec<&Bucket> =
            r.b.iter()
                .filter(|b| b.epoch != BucketRing::<B, WMS>::EMPTY)
                .collect();
        self.u8(live.len() as u8);
        for b in live {
            self.u32(b.epoch);
            self.counts(&b.c);
        }
    }
    fn bits(&mut self, b: &[u64; 3]) {
        for v in b {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn pair<const WMS: i64>(&mut self, p: &Pair<WMS>) {
        self.i64(p.epoch);
        self.counts(&p.cur);
        self.counts(&p.prev);
        self.bits(&p.cur_bits);
        self.bits(&p.prev_bits);
    }
}

struct R<'a>(&'a [u8]);

impl R<'_> {
    fn take<const K: usize>(&mut self) -> Option<[u8; K]> {
        let (h, t) = self.0.split_first_chunk::<K>()?;
        self.0 = t;
        Some(*h)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }
    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }
    fn counts(&mut self) -> Option<Counts> {
        let mut c = [0u32; N];
        for v in &mut c {
            *v = self.u32()?;
        }
        Some(c)
    }
    /// Adds the encoded ring's buckets into `into` (bucket by bucket, by epoch).
    fn ring_into<const B: usize, const WMS: i64>(
        &mut self,
        into: &mut BucketRing<B, WMS>,
    ) -> Option<()> {
        let n = self.u8()? as usize;
        for _ in 0..n {
            let epoch = self.u32()?;
            let c = self.counts()?;
            if epoch == BucketRing::<B, WMS>::EMPTY {
                continue;
            }
            let slot = &mut into.b[epoch as usize % B];
            if slot.epoch != epoch {
                // The newer epoch wins the slot: an older one is outside the window anyway.
                if slot.epoch != BucketRing::<B, WMS>::EMPTY && slot.epoch > epoch {
                    continue;
                }
                *slot = Bucket { epoch, c: [0; N] };
            }
            for (a, b) in slot.c.iter_mut().zip(c) {
                *a = a.saturating_add(b);
            }
        }
        Some(())
    }
    fn bits(&mut self) -> Option<[u64; 3]> {
        Some([self.u64()?, self.u64()?, self.u64()?])
    }
    fn pair<const WMS: i64>(&mut self) -> Option<Pair<WMS>> {
        Some(Pair {
            epoch: self.i64()?,
            cur: self.counts()?,
            prev: self.counts()?,
            cur_bits: self.bits()?,
            prev_bits: self.bits()?,
        })
    }
}

fn encode_entry(e: &TenantEntry) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(1024));
    w.u8(SHARE_FORMAT);
    w.ring(&e.minute);
    w.ring(&e.hour);
    w.ring(&e.day);
    // Stamps as absolute ticks, so every node reads them in its own frame.
    let none = Stamps::new();
    let kinds: [&Stamps; STAMP_KINDS] = match &e.suspect {
        Some(s) => [
            &s.domains,
            &s.senders,
            &e.recipient_domains,
            &s.recipients,
            &s.dkim_domains,
        ],
        None => [&none, &none, &e.recipient_domains, &none, &none],
    };
    w.i64(e.base_tick);
    for s in kinds {
        let set: Vec<(usize, u16)> = s
            .slots
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0)
            .map(|(i, v)| (i, *v))
            .collect();
        w.u16(set.len() as u16);
        for (i, v) in set {
            w.u8(i as u8);
            w.u16(v);
        }
    }
    w.0
}

fn encode_sender(c: &Compact) -> Vec<u8> {
    let mut w = W(Vec::with_capacity(400));
    w.u8(SHARE_FORMAT);
    w.pair(&c.minute);
    w.pair(&c.hour);
    w.pair(&c.day);
    w.i64(c.last_seen_ms);
    w.0
}

fn decode_sender(b: &[u8]) -> Option<Compact> {
    let mut r = R(b);
    if r.u8()? != SHARE_FORMAT {
        return None;
    }
    let minute = r.pair()?;
    let hour = r.pair()?;
    let day = r.pair()?;
    let last_seen_ms = r.i64()?;
    Some(Compact {
        minute,
        hour,
        day,
        last_seen_ms,
        alerted_until_ms: i64::MIN,
        dirty: false,
    })
}

/// Adds one encoded tenant share into `remote`, its stamps moved into the frame whose base
/// tick is `base_tick`. `None` (and `remote` partly updated) on a malformed share.
fn add_share(remote: &mut Remote, base_tick: i64, b: &[u8]) -> Option<()> {
    let mut r = R(b);
    if r.u8()? != SHARE_FORMAT {
        return None;
    }
    r.ring_into(&mut remote.minute)?;
    r.ring_into(&mut remote.hour)?;
    r.ring_into(&mut remote.day)?;
    let their_base = r.i64()?;
    for kind in 0..STAMP_KINDS {
        let n = r.u16()? as usize;
        for _ in 0..n {
            let slot = r.u8()? as usize;
            let rel = r.u16()?;
            if rel == 0 {
                continue;
            }
            // Absolute tick, then ours: (tick - base + 1), 0 when older than our base.
            let tick = their_base + rel as i64 - 1;
            let ours = tick - base_tick + 1;
            if ours < 1 {
                continue;
            }
            let ours = ours.min(u16::MAX as i64) as u16;
            let s = &mut remote.stamps[kind].slots[slot];
            *s = (*s).max(ours);
        }
    }
    Some(())
}

/// One tenant's share, as exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantShare {
    pub tenant: TenantId,
    /// The tenant's windows and bitmaps.
    pub entry: Vec<u8>,
    /// The windows of the senders counted since the last export, by sender key.
    pub senders: Vec<(String, Vec<u8>)>,
}

/// Other nodes' shares of one tenant, as read back.
#[derive(Debug, Clone, Default)]
pub struct OtherShares {
    pub tenant: TenantId,
    /// Every other node's tenant share.
    pub entries: Vec<Vec<u8>>,
    /// Every other node's windows of the senders asked about.
    pub senders: Vec<(String, Vec<Vec<u8>>)>,
}

impl InProcessCounters {
    /// Shares of the tenants counted since the last call (every tenant held, with `all`),
    /// and forgets which they were.
    pub fn export(&self, all: bool) -> Vec<TenantShare> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for (tenant, entry) in shard.tenants.iter_mut() {
                if !entry.dirty && !all {
                    continue;
                }
                entry.dirty = false;
                let senders = entry
                    .senders
                    .iter_mut()
                    .filter(|(_, c)| c.dirty || all)
                    .map(|(k, c)| {
                        c.dirty = false;
                        (k.to_string(), encode_sender(c))
                    })
                    .collect();
                out.push(TenantShare {
                    tenant: *tenant,
                    entry: encode_entry(entry),
                    senders,
                });
            }
        }
        out
    }

    /// Replaces what other nodes counted for `shares.tenant` with `shares` (a tenant this
    /// node does not hold is taken in too, so its next message is judged on the cluster's
    /// figures). Returns `false` when a share was malformed (it is skipped).
    pub fn import(&self, now_ms: i64, shares: &OtherShares) -> bool {
        let mut shard = self.shard(shares.tenant);
        let entry = shard
            .tenants
            .entry(shares.tenant)
            .or_insert_with(|| TenantEntry::new(now_ms));
        entry.tick(now_ms);
        let mut remote = Remote::new();
        let mut ok = true;
        for b in &shares.entries {
            if add_share(&mut remote, entry.base_tick, b).is_none() {
                ok = false;
            }
        }
        // Senders read back this time replace theirs; the others' stay as they were.
        if let Some(prev) = entry.remote.take() {
            remote.senders = prev.senders;
        }
        for (sender, list) in &shares.senders {
            let decoded: Vec<Compact> = list.iter().filter_map(|b| decode_sender(b)).collect();
            ok &= decoded.len() == list.len();
            if decoded.is_empty() {
                remote.senders.remove(sender.as_str());
            } else {
                remote.senders.insert(Box::from(sender.as_str()), decoded);
            }
        }
        entry.remote = Some(Box::new(remote));
        ok
    }

    /// Forgets every other node's figures (the shared counter store is unreachable: each node
    /// counts on its own until it is back).
    pub fn forget_others(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            for entry in shard.tenants.values_mut() {
                entry.remote = None;
            }
        }
    }
}
