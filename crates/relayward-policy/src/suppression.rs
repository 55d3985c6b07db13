//! Suppression lists on the SMTP path: recipients a tenant's mail may not go to (an earlier
//! message hard-bounced or was complained about, or an administrator listed them), and the
//! operator's global list, which applies to every tenant. Refused at RCPT with
//! `550 5.1.10 Recipient address suppressed after a hard bounce`.
//!
//! The relay keeps every active entry in memory, keyed by address, and brings it up to the
//! store's with [`SuppressionList::apply`]; a hard bounce seen by this process is put in at once
//! with [`SuppressionList::insert`], before the store has it, so the very next message to the
//! address is refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::RwLock;

use relayward_core::{
    Address, SenderClass, Suppression, SuppressionSource, SuppressionUpdates, TenantId, Timestamp,
};

use crate::relay::{Attributed, Refusal, RefusalReason};

/// The longest a person may suppress an address for by days (the admin API's and the CLI's
/// `days`); without days it is until removed.
pub const MAX_DAYS: u32 = 36_500;

/// The reason recorded for an entry a person adds without giving one.
pub const MANUAL_REASON: &str = "manual";

/// The key of a recipient on the lists: lowercase `local@domain`, as for senders, so that a
/// change of case does not get mail past a suppression.
pub fn address_key(addr: &Address) -> String {
    crate::counters::sender_key(addr)
}

/// [`address_key`] of an address given as text (the store, the admin API, the CLI); `None`
/// when it is not an RFC 5321 mailbox.
pub fn parse_address_key(input: &str) -> Option<String> {
    Address::parse(input.trim().trim_matches(['<', '>']), true)
        .ok()
        .map(|a| address_key(&a))
}

/// Why a recipient was refused: the entry that matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// `None`: the operator's global list.
    pub tenant: Option<TenantId>,
    pub source: SuppressionSource,
    pub since: Timestamp,
    pub expires_at: Option<Timestamp>,
}

impl Hit {
    /// The refusal traced for it (reason `suppressed`, reply 5.1.10).
    pub fn refusal(&self, attributed: Attributed, class: Option<SenderClass>) -> Refusal {
        Refusal::new(RefusalReason::Suppressed, Some(attributed), class)
    }

    /// `explained` (the refusal's [`crate::explain`]) with the entry right after the reason,
    /// so a reader sees which list and why before the session's facts.
    pub fn explain(&self, explained: &str) -> String {
        match explained.split_once(' ') {
            Some((reason, rest)) => format!("{reason} {} {rest}", self.describe()),
            None => format!("{explained} {}", self.describe()),
        }
    }

    /// The entry: `list=tenant source=hard_bounce since=1718000000 until=1719209600` (Unix
    /// seconds; `until=removed` when it never expires).
    pub fn describe(&self) -> String {
        format!(
            "list={} source={} since={} until={}",
            if self.tenant.is_some() {
                "tenant"
            } else {
                "global"
            },
            self.source,
            self.since,
            self.expires_at
                .map_or_else(|| "removed".to_string(), |e| e.to_string())
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    tenant: Option<TenantId>,
    source: SuppressionSource,
    since: Timestamp,
    expires_at: Option<Timestamp>,
}

impl Entry {
    fn of(s: &Suppression) -> Entry {
        Entry {
            tenant: s.tenant_id,
            source: s.source,
            since: s.created_at,
            expires_at: s.expires_at,
        }
    }

    fn active(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|e| e > now)
    }
}

/// `a` keeps the address suppressed at least as long as `b` (`None` is for ever).
fn lasts_as_long(a: Option<Timestamp>, b: Option<Timestamp>) -> bool {
    match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a >= b,
    }
}

/// Every active suppression, tenant and global, by address: one hash lookup per recipient.
#[derive(Debug, Default)]
pub struct SuppressionList {
    /// Address key -> the entries for it (one per tenant that has it listed, and the global
    /// one); almost always one.
    by_address: RwLock<HashMap<String, Vec<Entry>>>,
    /// The store's suppression version this list reflects.
    version: AtomicI64,
}

impl SuppressionList {
    pub fn new() -> SuppressionList {
        SuppressionList::default()
    }

    /// The entry that refuses `recipient` for `tenant`'s mail at `now`: the tenant's own, else
    /// the global one.
    pub fn check(&self, tenant: TenantId, recipient: &Address, now: Timestamp) -> Option<Hit> {
        let key = address_key(recipient);
        let map = self.by_address.read().unwrap_or_else(|e| e.into_inner());
        let entries = map.get(&key)?;
        let active =
            |scope: Option<TenantId>| entries.iter().find(|e| e.tenant == scope && e.active(now));
        active(Some(tenant)).or_else(|| active(None)).map(|e| Hit {
            tenant: e.tenant,
            source: e.source,
            since: e.since,
            expires_at: e.expires_at,
        })
    }

    /// Adds an entry this process decided on before the store has it. Of an entry already there
    /// for the same tenant (or global) and address, the one that lasts longer stays.
    pub fn insert(&self, s: &Suppression) {
        let new = Entry::of(s);
        let mut map = self.by_address.write().unwrap_or_else(|e| e.into_inner());
        let entries = map.entry(s.address.clone()).or_default();
        match entries.iter_mut().find(|e| e.tenant == new.tenant) {
            Some(old) if lasts_as_long(old.expires_at, new.expires_at) => {}
            Some(old) => *old = new,
            None => entries.push(new),
        }
    }

    /// Brings the list up to the store's `updates`: the store's entries replace what is here.
    pub fn apply(&self, updates: &SuppressionUpdates) {
        {
            let mut map = self.by_address.write().unwrap_or_else(|e| e.into_inner());
            for (tenant, address) in &updates.removed {
                if let Some(entries) = map.get_mut(address) {
                    entries.retain(|e| e.tenant != *tenant);
                    if entries.is_empty() {
                        map.remove(address);
                    }
                }
            }
            for s in &updates.changed {
                let new = Entry::of(s);
                let entries = map.entry(s.address.clone()).or_default();
                match entries.iter_mut().find(|e| e.tenant == new.tenant) {
                    Some(old) => *old = new,
                    None => entries.push(new),
                }
            }
        }
        self.version.store(updates.version, Ordering::SeqCst);
    }

    /// The store version [`SuppressionList::apply`] last brought the list to.
    pub fn version(&self) -> i64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Drops the entries expired at `now` (they no longer refuse anything; this only frees
    /// their memory).
    pub fn prune(&self, now: Timestamp) {
        let mut map = self.by_address.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, entries| {
            entries.retain(|e| e.active(now));
            !entries.is_empty()
        });
    }

    /// Entries held, active or not yet pruned.
    pub fn len(&self) -> usize {
        self.by_address
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_core::ConnectorId;

    fn addr(s: &str) -> Address {
        Address::parse(s, true).unwrap()
    }

    fn entry(tenant: Option<TenantId>, address: &str, expires_at: Option<i64>) -> Suppression {
        Suppression {
            tenant_id: tenant,
            address: address.into(),
            source: SuppressionSource::HardBounce,
            reason: "550 5.1.1 User unknown".into(),
            created_at: Timestamp(100),
            created_by: "relay".into(),
            expires_at: expires_at.map(Timestamp),
        }
    }

    #[test]
    fn tenant_entries_refuse_only_their_tenant_and_global_ones_everyone() {
        let list = SuppressionList::new();
        list.apply(&SuppressionUpdates {
            version: 3,
            changed: vec![
                entry(Some(TenantId(1)), "gone@example.org", Some(1000)),
                entry(None, "trap@example.org", None),
            ],
            removed: vec![],
        });
        assert_eq!(list.version(), 3);
        let hit = list
            .check(TenantId(1), &addr("Gone@Example.ORG"), Timestamp(500))
            .unwrap();
        assert_eq!(hit.tenant, Some(TenantId(1)));
        assert_eq!(
            hit.describe(),
            "list=tenant source=hard_bounce since=100 until=1000"
        );
        assert!(list
            .check(TenantId(2), &addr("gone@example.org"), Timestamp(500))
            .is_none());
        assert!(list
            .check(TenantId(1), &addr("gone@example.org"), Timestamp(1000))
            .is_none());
        let global = list
            .check(TenantId(2), &addr("trap@example.org"), Timestamp(10_000))
            .unwrap();
        assert_eq!(global.tenant, None);
        assert!(global.describe().starts_with("list=global "));
        assert_eq!(
            global.explain("reason=suppressed ip=127.0.0.1 tls=no"),
            "reason=suppressed list=global source=hard_bounce since=100 until=removed \
             ip=127.0.0.1 tls=no"
        );
        assert!(list
            .check(TenantId(1), &addr("other@example.org"), Timestamp(500))
            .is_none());
        assert_eq!(
            global
                .refusal(
                    Attributed {
                        tenant_id: TenantId(2),
                        connector_id: ConnectorId(7),
                        method: crate::Method::Ip
                    },
                    Some(SenderClass::Registered)
                )
                .reply
                .to_string(),
            "550 5.1.10 Recipient address suppressed after a hard bounce"
        );
    }

    #[test]
    fn the_store_replaces_and_removes_while_local_inserts_keep_the_longer_entry() {
        let list = SuppressionList::new();
        list.insert(&entry(Some(TenantId(1)), "a@example.org", Some(1000)));
        list.insert(&entry(Some(TenantId(1)), "a@example.org", Some(500)));
        assert!(list
            .check(TenantId(1), &addr("a@example.org"), Timestamp(800))
            .is_some());
        list.insert(&entry(Some(TenantId(1)), "a@example.org", Some(2000)));
        assert!(list
            .check(TenantId(1), &addr("a@example.org"), Timestamp(1500))
            .is_some());
        list.insert(&entry(Some(TenantId(2)), "a@example.org", Some(2000)));
        assert_eq!(list.len(), 2);

        // The store's word is final, shorter or not.
        list.apply(&SuppressionUpdates {
            version: 5,
            changed: vec![entry(Some(TenantId(1)), "a@example.org", Some(600))],
            removed: vec![(Some(TenantId(2)), "a@example.org".into())],
        });
        assert!(list
            .check(TenantId(1), &addr("a@example.org"), Timestamp(700))
            .is_none());
        assert!(list
            .check(TenantId(2), &addr("a@example.org"), Timestamp(100))
            .is_none());
        assert_eq!(list.len(), 1);

        list.prune(Timestamp(600));
        assert!(list.is_empty());
    }

    #[test]
    fn address_keys_are_lowercase_mailboxes() {
        assert_eq!(
            parse_address_key(" <Bob.Smith@Example.ORG> ").as_deref(),
            Some("bob.smith@example.org")
        );
        assert_eq!(parse_address_key("not an address"), None);
    }
}
