//! [`InProcessCounters`]: the single-node [`Counters`], sharded `Mutex<HashMap>`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use relayward_core::{ConnectorId, SenderClass, TenantId};

use crate::evidence::{
    truncated, ConnectorActivity, Observations, RejectionSample, Ring, Sample, MAX_SAMPLE_TEXT,
};
use crate::limits::SenderRestriction;
use crate::remote_reply::RemoteClass;

use super::blocks::*;
use super::config::CountersConfig;
use super::events::*;
use super::tenant::*;
use super::{HOUR_MS, SECOND_MS};

#[derive(Debug, Default)]
pub(super) struct Shard {
    pub(super) tenants: HashMap<TenantId, TenantEntry>,
    /// Kept apart from the tenant entries: a restriction outlives idle expiry and eviction.
    restrictions: HashMap<TenantId, HashMap<Box<str>, SenderRestriction>>,
}

/// The single-node [`Counters`].
#[derive(Debug)]
pub struct InProcessCounters {
    cfg: CountersConfig,
    pub(super) shards: Box<[Mutex<Shard>]>,
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

    pub(super) fn shard(&self, tenant: TenantId) -> MutexGuard<'_, Shard> {
        // Fibonacci hashing spreads sequential ids over the shards.
        let h = (tenant.0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
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
        let Some(entry) = shard.tenants.get(&tenant) else {
            return usage;
        };
        if let Some(s) = entry.senders.get(sender) {
            usage.alerted_until_ms = (s.alerted_until_ms > now_ms).then_some(s.alerted_until_ms);
        }
        // This node's windows of the sender, and in a cluster the other nodes'.
        let others = entry
            .remote
            .as_ref()
            .and_then(|r| r.senders.get(sender))
            .into_iter()
            .flatten();
        for s in entry.senders.get(sender).into_iter().chain(others) {
            usage.messages_last_minute += s.minute.estimate(now_ms).messages;
            usage.external_recipients_last_hour += s.hour.estimate(now_ms).external_recipients;
            usage.recipients_last_day += s.day.estimate(now_ms).recipients;
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
