//! Building blocks of the in-process counters: the counter indexes, bucket rings, timestamped
//! bitmaps, the known-recipients table, two-bucket sliding estimates and the baseline.

use std::hash::{DefaultHasher, Hash, Hasher};

use super::config::CountersConfig;
use super::events::{Baseline, SeriesPoint, WindowStats, Windows};
use super::{DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS};

pub(super) const N: usize = 18;
pub(super) const MESSAGES: usize = 0;
pub(super) const RECIPIENTS: usize = 1;
pub(super) const EXTERNAL: usize = 2;
pub(super) const UNREG_MESSAGES: usize = 3;
pub(super) const UNREG_RECIPIENTS: usize = 4;
pub(super) const NULL_MESSAGES: usize = 5;
pub(super) const MISMATCHES: usize = 6;
pub(super) const R_DELIVERED: usize = 7;
pub(super) const R_SPAM: usize = 8;
pub(super) const R_BAD_MAILBOX: usize = 9;
pub(super) const R_OTHER: usize = 10;
pub(super) const UNREG_FAMILIAR: usize = 11;
pub(super) const DKIM_CHECKED: usize = 12;
pub(super) const DKIM_PASS: usize = 13;
pub(super) const REFUSED: usize = 14;
pub(super) const UNREG_KNOWN_RCPT: usize = 15;
pub(super) const SCANNED: usize = 16;
pub(super) const SCAN_SPAM: usize = 17;

pub(super) type Counts = [u32; N];

// Indexes of the distinct counts.
pub(super) const D_UNREG_DOMAINS: usize = 0;
pub(super) const D_UNREG_SENDERS: usize = 1;
pub(super) const D_RCPT_DOMAINS: usize = 2;
/// Tenant windows only (not kept per connector or sender).
pub(super) const D_UNREG_RCPTS: usize = 3;
/// Tenant windows only: domains of unregistered mail with a DKIM signature that verified.
pub(super) const D_DKIM_DOMAINS: usize = 4;

pub(super) fn stats(c: &[u64; N], distinct: [u32; 5]) -> WindowStats {
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
pub(super) fn hash_str(s: &str) -> u64 {
    let mut h = DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

/// Linear counting: distinct values estimated from a bitmap of `m` bits with `set` set.
pub(super) fn linear_count(m: usize, set: usize) -> f64 {
    let m_f = m as f64;
    if set >= m {
        // Saturated: report the expected count at which the last bit fills.
        return m_f * m_f.ln();
    }
    -m_f * ((m - set) as f64 / m_f).ln()
}

pub(super) fn lc64(bits: u64) -> f64 {
    linear_count(64, bits.count_ones() as usize)
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    pub(super) epoch: u32,
    pub(super) c: Counts,
}

/// `B` buckets of `W` milliseconds, indexed by `epoch % B`; a bucket whose epoch is not the
/// one expected is stale and reads as zero.
#[derive(Debug, Clone)]
pub(super) struct BucketRing<const B: usize, const W: i64> {
    pub(super) b: [Bucket; B],
}

impl<const B: usize, const W: i64> BucketRing<B, W> {
    pub(super) const EMPTY: u32 = u32::MAX;

    pub(super) fn new() -> Self {
        BucketRing {
            b: [Bucket {
                epoch: Self::EMPTY,
                c: [0; N],
            }; B],
        }
    }

    pub(super) fn epoch(now_ms: i64) -> u32 {
        (now_ms.max(0) / W).min(u32::MAX as i64 - 1) as u32
    }

    pub(super) fn add(&mut self, now_ms: i64, d: &Counts) {
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

    pub(super) fn live(e: u32, now_epoch: u32) -> bool {
        e != Self::EMPTY && e <= now_epoch && now_epoch - e < B as u32
    }

    pub(super) fn sum(&self, now_ms: i64) -> [u64; N] {
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

    pub(super) fn bucket(&self, epoch: u32) -> Option<&Counts> {
        let s = &self.b[epoch as usize % B];
        (s.epoch == epoch).then_some(&s.c)
    }

    pub(super) fn series(&self, now_ms: i64) -> Vec<SeriesPoint> {
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
pub(super) const TICK_MS: i64 = 10 * SECOND_MS;
/// Ticks per window: 1 minute, 1 hour, 24 hours.
pub(super) const WINDOW_TICKS: [i64; 3] =
    [MINUTE_MS / TICK_MS, HOUR_MS / TICK_MS, DAY_MS / TICK_MS];
/// Rebase the `u16` stamps before they overflow, keeping 25 hours.
pub(super) const REBASE_AT: i64 = 60_000;
pub(super) const KEEP_TICKS: i64 = 9_000;
pub(super) const SLOTS: usize = 256;

/// Linear-counting bitmap whose slots hold the tick (relative to the tenant's base, plus one;
/// 0 = never) at which they were last set: the bitmap of any window is "slots set since".
#[derive(Debug, Clone)]
pub(super) struct Stamps {
    pub(super) slots: [u16; SLOTS],
}

impl Stamps {
    pub(super) fn new() -> Self {
        Stamps { slots: [0; SLOTS] }
    }

    pub(super) fn mark(&mut self, rel: u16, hash: u64) {
        self.slots[(hash % SLOTS as u64) as usize] = rel;
    }

    pub(super) fn shift(&mut self, by: i64) {
        let by = by.clamp(0, u16::MAX as i64) as u16;
        for s in &mut self.slots {
            *s = s.saturating_sub(by);
        }
    }

    /// Estimates for the 1-minute, 1-hour and 24-hour windows ending at tick `rel`.
    pub(super) fn counts(&self, rel: u16) -> [u32; 3] {
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

impl Stamps {
    /// [`Stamps::counts`] of the union of `self` and `other` (same frame): the later stamp of
    /// each slot.
    pub(super) fn union_counts(&self, other: &Stamps, rel: u16) -> [u32; 3] {
        let mut u = Stamps::new();
        for ((o, a), b) in u.slots.iter_mut().zip(&self.slots).zip(&other.slots) {
            *o = (*a).max(*b);
        }
        u.counts(rel)
    }
}

/// Recipients of a tenant's unregistered mail by the clock hour they were last seen: a
/// direct-mapped table of 1,024 slots (4 KB), each a 16-bit fingerprint, a 15-bit hour and a
/// flag saying the recipient had been seen in an hour before that one. A slot is overwritten by
/// whichever recipient hashes to it last, so a spray pushes out some of the people forwarding
/// reaches; a false match needs the same 16-bit fingerprint.
#[derive(Debug, Clone)]
pub(super) struct KnownRecipients {
    pub(super) slots: Box<[u32; KNOWN_SLOTS]>,
}

pub(super) const KNOWN_SLOTS: usize = 1024;
/// A recipient last seen longer ago than this is not known any more.
pub(super) const KNOWN_FOR_HOURS: i64 = 14 * 24;
pub(super) const HOUR_MOD: i64 = 0x7FFF;

impl KnownRecipients {
    pub(super) fn new() -> Self {
        KnownRecipients {
            slots: Box::new([0; KNOWN_SLOTS]),
        }
    }

    /// Whether `hash` was seen in a clock hour before `hour` (and not too long ago); records
    /// it as seen in `hour`.
    pub(super) fn seen(&mut self, hour: i64, hash: u64) -> bool {
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
pub(super) struct Pair<const W: i64> {
    pub(super) epoch: i64,
    pub(super) cur: Counts,
    pub(super) prev: Counts,
    pub(super) cur_bits: [u64; 3],
    pub(super) prev_bits: [u64; 3],
}

impl<const W: i64> Pair<W> {
    pub(super) const NEW: Self = Pair {
        epoch: i64::MIN,
        cur: [0; N],
        prev: [0; N],
        cur_bits: [0; 3],
        prev_bits: [0; 3],
    };

    pub(super) fn add(&mut self, now_ms: i64, d: &Counts, bits: &[u64; 3]) {
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

    pub(super) fn estimate(&self, now_ms: i64) -> WindowStats {
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
pub(super) struct Compact {
    pub(super) minute: Pair<MINUTE_MS>,
    pub(super) hour: Pair<HOUR_MS>,
    pub(super) day: Pair<DAY_MS>,
    pub(super) last_seen_ms: i64,
    pub(super) alerted_until_ms: i64,
    /// Counted since the last export of the cluster share.
    pub(super) dirty: bool,
}

impl Compact {
    pub(super) fn new(now_ms: i64) -> Self {
        Compact {
            minute: Pair::NEW,
            hour: Pair::NEW,
            day: Pair::NEW,
            last_seen_ms: now_ms,
            alerted_until_ms: i64::MIN,
            dirty: false,
        }
    }

    pub(super) fn add(&mut self, now_ms: i64, d: &Counts, bits: &[u64; 3]) {
        self.minute.add(now_ms, d, bits);
        self.hour.add(now_ms, d, bits);
        self.day.add(now_ms, d, bits);
        self.last_seen_ms = self.last_seen_ms.max(now_ms);
        self.dirty = true;
    }

    pub(super) fn windows(&self, now_ms: i64) -> Windows {
        Windows {
            minute: self.minute.estimate(now_ms),
            hour: self.hour.estimate(now_ms),
            day: self.day.estimate(now_ms),
        }
    }

    pub(super) fn reset(&mut self) {
        self.minute = Pair::NEW;
        self.hour = Pair::NEW;
        self.day = Pair::NEW;
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct BaselineState {
    /// First clock hour not yet folded in.
    pub(super) next_hour: i64,
    pub(super) b: Baseline,
}

impl BaselineState {
    pub(super) fn push(
        &mut self,
        messages: f64,
        unregistered: f64,
        domains: f64,
        cfg: &CountersConfig,
    ) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

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
}
