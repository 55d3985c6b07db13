//! The relay's in-memory view of the directory, indexed for the per-message path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use relayward_core::{Connector, ConnectorId, DirectoryData, Tenant, TenantId, TenantState};

/// Longest-prefix buckets: one hash map per prefix length present, so a lookup costs one
/// probe per distinct prefix length rather than one per connector range.
#[derive(Default, Debug, Clone)]
struct IpTable {
    v4: Vec<(u8, HashMap<u32, Vec<usize>>)>,
    v6: Vec<(u8, HashMap<u128, Vec<usize>>)>,
}

fn mask4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - len as u32))
    }
}

fn mask6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - len as u32))
    }
}

impl IpTable {
    fn insert(&mut self, net: &IpNet, idx: usize) {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                let key = mask4(u32::from(n.network()), len);
                let pos = match self.v4.iter().position(|(l, _)| *l == len) {
                    Some(p) => p,
                    None => {
                        self.v4.push((len, HashMap::new()));
                        self.v4.len() - 1
                    }
                };
                self.v4[pos].1.entry(key).or_default().push(idx);
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                let key = mask6(u128::from(n.network()), len);
                let pos = match self.v6.iter().position(|(l, _)| *l == len) {
                    Some(p) => p,
                    None => {
                        self.v6.push((len, HashMap::new()));
                        self.v6.len() - 1
                    }
                };
                self.v6[pos].1.entry(key).or_default().push(idx);
            }
        }
    }

    fn lookup(&self, ip: IpAddr, out: &mut Vec<usize>) {
        // An IPv4-mapped IPv6 peer (dual-stack listener) is the IPv4 client it maps.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                for (len, map) in &self.v4 {
                    if let Some(v) = map.get(&mask4(a, *len)) {
                        out.extend_from_slice(v);
                    }
                }
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                for (len, map) in &self.v6 {
                    if let Some(v) = map.get(&mask6(a, *len)) {
                        out.extend_from_slice(v);
                    }
                }
            }
        }
    }
}

/// A verified accepted domain as the relay sees it.
#[derive(Debug, Clone, Copy)]
struct DomainEntry {
    tenant_id: TenantId,
    match_subdomains: bool,
}

#[derive(Debug, Default, Clone)]
pub struct Directory {
    pub version: i64,
    tenants: HashMap<TenantId, Tenant>,
    /// Verified accepted domains only: pending ones do not count.
    domains: HashMap<String, Vec<DomainEntry>>,
    connectors: Vec<Connector>,
    by_id: HashMap<ConnectorId, usize>,
    by_cert: HashMap<String, Vec<usize>>,
    by_auth: HashMap<String, usize>,
    /// Connectors identified by source IP alone (no certificate, no AUTH user).
    ip_only: IpTable,
    /// Declared header From domains: (tenant, domain) -> the connectors it is declared for
    /// (`None`: any).
    header_from_allowed: HashMap<(TenantId, String), Vec<Option<ConnectorId>>>,
}

impl Directory {
    pub fn new(data: DirectoryData) -> Directory {
        let mut dir = Directory {
            version: data.version,
            ..Default::default()
        };
        for t in data.tenants {
            dir.tenants.insert(t.id, t);
        }
        for d in data.domains.into_iter().filter(|d| d.verified) {
            dir.domains.entry(d.domain).or_default().push(DomainEntry {
                tenant_id: d.tenant_id,
                match_subdomains: d.match_subdomains,
            });
        }
        for a in data.header_from_allowed {
            dir.header_from_allowed
                .entry((a.tenant_id, a.domain.to_lowercase()))
                .or_default()
                .push(a.connector_id);
        }
        for (idx, c) in data.connectors.into_iter().enumerate() {
            dir.by_id.insert(c.id, idx);
            if let Some(name) = &c.cert_name {
                dir.by_cert
                    .entry(name.to_lowercase())
                    .or_default()
                    .push(idx);
            }
            if let Some(user) = &c.auth_user {
                dir.by_auth.insert(user.clone(), idx);
            }
            if c.cert_name.is_none() && c.auth_user.is_none() {
                for net in &c.ip_ranges {
                    dir.ip_only.insert(net, idx);
                }
            }
            dir.connectors.push(c);
        }
        dir
    }

    pub fn tenant(&self, id: TenantId) -> Option<&Tenant> {
        self.tenants.get(&id)
    }

    pub fn connector(&self, id: ConnectorId) -> Option<&Connector> {
        self.by_id.get(&id).map(|&i| &self.connectors[i])
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// This snapshot with `tenant`'s restriction state set to `state`, keeping the version (the
    /// next reload from the store replaces it). `None` when the tenant is unknown. A copy of
    /// the whole index, so for rare events only: the abuse detector uses it so that a
    /// transition applies to the very next MAIL FROM, before the store has it.
    pub fn with_tenant_state(&self, tenant: TenantId, state: TenantState) -> Option<Directory> {
        let mut dir = self.clone();
        dir.tenants.get_mut(&tenant)?.state = state;
        Some(dir)
    }

    /// Every tenant of the snapshot.
    pub fn tenants(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.values()
    }

    /// Is `domain` (lowercase) a verified accepted domain of `tenant`, directly or as a
    /// subdomain of one with `match_subdomains`?
    pub fn is_registered(&self, tenant: TenantId, domain: &str) -> bool {
        if let Some(entries) = self.domains.get(domain) {
            if entries.iter().any(|e| e.tenant_id == tenant) {
                return true;
            }
        }
        let mut rest = domain;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(entries) = self.domains.get(rest) {
                if entries
                    .iter()
                    .any(|e| e.tenant_id == tenant && e.match_subdomains)
                {
                    return true;
                }
            }
        }
        false
    }

    /// Connectors identified by IP alone whose ranges contain `ip`, enabled or not.
    pub fn ip_candidates(&self, ip: IpAddr) -> Vec<&Connector> {
        let mut idx = Vec::new();
        self.ip_only.lookup(ip, &mut idx);
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| &self.connectors[i]).collect()
    }

    /// Did the tenant declare header From `domain` legitimate (for `connector`, or any)?
    pub fn header_from_allowed(
        &self,
        tenant: TenantId,
        connector: ConnectorId,
        domain: &str,
    ) -> bool {
        self.header_from_allowed
            .get(&(tenant, domain.to_string()))
            .is_some_and(|cs| cs.iter().any(|c| c.is_none_or(|c| c == connector)))
    }

    /// Enabled connectors identified by IP alone whose ranges contain `ip`.
    pub fn ip_connectors(&self, ip: IpAddr) -> Vec<&Connector> {
        let mut idx = Vec::new();
        self.ip_only.lookup(ip, &mut idx);
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .map(|i| &self.connectors[i])
            .filter(|c| c.enabled)
            .collect()
    }

    /// Enabled certificate connectors matching one of the verified certificate `names` (exactly,
    /// or by a one-label wildcard), whose name is under a verified accepted domain of their
    /// tenant, and whose IP ranges (if any) contain `ip`.
    pub fn cert_connectors(&self, names: &[String], ip: IpAddr) -> Vec<&Connector> {
        let mut out: Vec<&Connector> = Vec::new();
        for c in self.cert_candidates(names) {
            if c.enabled
                && c.cert_name
                    .as_deref()
                    .is_some_and(|n| self.cert_name_covered(c.tenant_id, n))
                && ip_allowed(c, ip)
                && !out.iter().any(|o| o.id == c.id)
            {
                out.push(c);
            }
        }
        out
    }

    /// Every connector whose certificate name matches one of `names`, whatever its state (for
    /// attribution, then filtered; and for explaining a refusal).
    pub fn cert_candidates(&self, names: &[String]) -> Vec<&Connector> {
        let mut out: Vec<&Connector> = Vec::new();
        for name in names {
            let name = name.to_lowercase();
            for key in crate::cert_name::lookup_keys(&name) {
                let Some(list) = self.by_cert.get(&key) else {
                    continue;
                };
                for &i in list {
                    let c = &self.connectors[i];
                    let hit = c
                        .cert_name
                        .as_deref()
                        .is_some_and(|n| crate::cert_name::matches(&name, &n.to_lowercase()));
                    if hit && !out.iter().any(|o| o.id == c.id) {
                        out.push(c);
                    }
                }
            }
        }
        out
    }

    /// Is the connector certificate name `name` (host, domain or `*.` wildcard) under a
    /// verified accepted domain of `tenant`? `match_subdomains` plays no part: this makes the
    /// name an identity of the tenant, not a sender domain.
    pub fn cert_name_covered(&self, tenant: TenantId, name: &str) -> bool {
        self.covering_tenants(name).any(|t| t == tenant)
    }

    /// Tenants with a verified accepted domain that `name` is equal to or under.
    fn covering_tenants<'a>(&'a self, name: &'a str) -> impl Iterator<Item = TenantId> + 'a {
        let base = crate::cert_name::base(name);
        let mut suffixes = vec![base];
        let mut rest = base;
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            suffixes.push(rest);
        }
        suffixes
            .into_iter()
            .filter_map(|d| self.domains.get(d))
            .flatten()
            .map(|e| e.tenant_id)
    }

    /// Why `tenant` may not give a connector the certificate name `name`, if it may not: another
    /// tenant's connector has it (or a wildcard covering it), or it is under another tenant's
    /// verified domain and none of `tenant`'s. `except` is the connector being changed.
    pub fn cert_name_conflict(
        &self,
        tenant: TenantId,
        name: &str,
        except: Option<ConnectorId>,
    ) -> Option<String> {
        let name = name.to_lowercase();
        for c in &self.connectors {
            if c.tenant_id == tenant || Some(c.id) == except {
                continue;
            }
            let Some(other) = c.cert_name.as_deref().map(str::to_lowercase) else {
                continue;
            };
            let overlap = other == name
                || crate::cert_name::matches(&name, &other)
                || crate::cert_name::matches(&other, &name);
            if overlap {
                let who = self
                    .tenants
                    .get(&c.tenant_id)
                    .map_or("another tenant", |t| t.name.as_str());
                return Some(format!(
                    "certificate name {name} is already claimed by a connector of tenant {who} ({other})"
                ));
            }
        }
        let mut others = self
            .covering_tenants(&name)
            .filter(|&t| t != tenant)
            .peekable();
        if others.peek().is_some() && !self.cert_name_covered(tenant, &name) {
            let who = others
                .next()
                .and_then(|t| self.tenants.get(&t))
                .map_or("another tenant", |t| t.name.as_str());
            return Some(format!(
                "certificate name {name} is under a verified accepted domain of tenant {who}"
            ));
        }
        None
    }

    /// The connector whose AUTH user is `user`, enabled or not.
    pub fn auth_connector(&self, user: &str) -> Option<&Connector> {
        self.by_auth.get(user).map(|&i| &self.connectors[i])
    }
}

/// A connector without IP ranges accepts any source address.
pub fn ip_allowed(c: &Connector, ip: IpAddr) -> bool {
    c.ip_ranges.is_empty() || ip_in_ranges(&c.ip_ranges, ip)
}

pub fn ip_in_ranges(ranges: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    ranges.iter().any(|n| n.contains(&ip))
}

/// The current directory, swapped as a whole when the store changes. Readers take an `Arc`
/// and keep a consistent snapshot for as long as they hold it.
#[derive(Debug, Default)]
pub struct SharedDirectory {
    current: RwLock<Arc<Directory>>,
}

impl SharedDirectory {
    pub fn new(dir: Directory) -> SharedDirectory {
        SharedDirectory {
            current: RwLock::new(Arc::new(dir)),
        }
    }

    pub fn current(&self) -> Arc<Directory> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn replace(&self, dir: Directory) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(dir);
    }

    /// Sets one tenant's restriction state in the current snapshot at once (see
    /// [`Directory::with_tenant_state`]). Readers are not held up while the copy is made; a
    /// snapshot swapped in meanwhile is copied again. Returns false when the tenant is unknown
    /// (or already in `state`).
    pub fn set_tenant_state(&self, tenant: TenantId, state: TenantState) -> bool {
        loop {
            let old = self.current();
            if old.tenant(tenant).is_none_or(|t| t.state == state) {
                return false;
            }
            let Some(new) = old.with_tenant_state(tenant, state) else {
                return false;
            };
            let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
            if Arc::ptr_eq(&cur, &old) {
                *cur = Arc::new(new);
                return true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_core::Timestamp;

    #[test]
    fn set_tenant_state_swaps_one_tenant() {
        let tenant = |id, name: &str| Tenant {
            id,
            name: name.into(),
            state: TenantState::Active,
            admin_emails: Vec::new(),
            created_at: Timestamp(0),
        };
        let shared = SharedDirectory::new(Directory::new(DirectoryData {
            version: 7,
            tenants: vec![tenant(TenantId(1), "a"), tenant(TenantId(2), "b")],
            ..Default::default()
        }));
        let before = shared.current();
        assert!(shared.set_tenant_state(TenantId(1), TenantState::BlockedUnregistered));
        let after = shared.current();
        assert_eq!(
            after.tenant(TenantId(1)).unwrap().state,
            TenantState::BlockedUnregistered
        );
        assert_eq!(
            after.tenant(TenantId(2)).unwrap().state,
            TenantState::Active
        );
        assert_eq!(after.version, 7);
        // Readers holding the old snapshot keep a consistent view.
        assert_eq!(
            before.tenant(TenantId(1)).unwrap().state,
            TenantState::Active
        );
        assert!(!shared.set_tenant_state(TenantId(1), TenantState::BlockedUnregistered));
        assert!(!shared.set_tenant_state(TenantId(9), TenantState::BlockedAll));
        assert_eq!(shared.current().tenants().count(), 2);
    }
}
