//! The relay's in-memory view of the directory, indexed for the per-message path.

use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use relayward_core::{
    Connector, ConnectorId, DirectoryData, DirectoryDelta, Tenant, TenantId, TenantPart,
    TenantState,
};

/// The snapshot's maps: a copy shares every shard, and a change copies only the shards it
/// touches, so a directory change makes a new snapshot beside the old one without copying the
/// whole directory (see [`Directory::apply`] and crate::cow_map).
type Map<K, V> = crate::cow_map::CowMap<K, V>;

/// Longest-prefix buckets: one hash map per prefix length present, so a lookup costs one
/// probe per distinct prefix length rather than one per connector range.
#[derive(Default, Debug, Clone)]
struct IpTable {
    v4: Vec<(u8, Map<u32, Vec<ConnectorId>>)>,
    v6: Vec<(u8, Map<u128, Vec<ConnectorId>>)>,
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

/// Adds (`add`) or removes `id` under `key` in the bucket of prefix length `len`.
fn ip_bucket<K: std::hash::Hash + Eq + Clone>(
    buckets: &mut Vec<(u8, Map<K, Vec<ConnectorId>>)>,
    len: u8,
    key: K,
    id: ConnectorId,
    add: bool,
) {
    let pos = match buckets.iter().position(|(l, _)| *l == len) {
        Some(p) => p,
        None if add => {
            buckets.push((len, Map::default()));
            buckets.len() - 1
        }
        None => return,
    };
    let map = &mut buckets[pos].1;
    if add {
        let list = map.get_or_default(key);
        if let Err(at) = list.binary_search(&id) {
            list.insert(at, id);
        }
    } else if let Some(list) = map.get_mut(&key) {
        list.retain(|c| *c != id);
        if list.is_empty() {
            map.remove(&key);
        }
    }
}

impl IpTable {
    fn set(&mut self, net: &IpNet, id: ConnectorId, add: bool) {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                let key = mask4(u32::from(n.network()), len);
                ip_bucket(&mut self.v4, len, key, id, add);
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                let key = mask6(u128::from(n.network()), len);
                ip_bucket(&mut self.v6, len, key, id, add);
            }
        }
    }

    fn lookup(&self, ip: IpAddr, out: &mut Vec<ConnectorId>) {
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
    tenants: Map<TenantId, Tenant>,
    /// Verified accepted domains only: pending ones do not count.
    domains: Map<Arc<str>, Vec<DomainEntry>>,
    connectors: Map<ConnectorId, Arc<Connector>>,
    by_cert: Map<String, Vec<ConnectorId>>,
    by_auth: Map<String, ConnectorId>,
    /// Connectors identified by source IP alone (no certificate, no AUTH user).
    ip_only: IpTable,
    /// Declared header From domains: (tenant, domain) -> the connectors it is declared for
    /// (`None`: any).
    header_from_allowed: Map<(TenantId, String), Vec<Option<ConnectorId>>>,
    /// What each tenant has in the maps above, so that a change replaces it.
    parts: Map<TenantId, PartKeys>,
}

/// A tenant's keys in the directory's maps.
#[derive(Debug, Default, Clone)]
struct PartKeys {
    domains: Vec<Arc<str>>,
    connectors: Vec<ConnectorId>,
    header_from: Vec<String>,
}

impl Directory {
    pub fn new(data: DirectoryData) -> Directory {
        let mut dir = Directory {
            version: data.version,
            ..Default::default()
        };
        // Grouped by tenant, then inserted as a change would insert them.
        let mut parts: std::collections::HashMap<TenantId, TenantPart> =
            std::collections::HashMap::new();
        fn part(
            parts: &mut std::collections::HashMap<TenantId, TenantPart>,
            id: TenantId,
        ) -> &mut TenantPart {
            parts.entry(id).or_insert_with(|| TenantPart {
                id,
                tenant: None,
                domains: Vec::new(),
                connectors: Vec::new(),
                header_from_allowed: Vec::new(),
            })
        }
        for t in data.tenants {
            let id = t.id;
            part(&mut parts, id).tenant = Some(t);
        }
        for d in data.domains {
            part(&mut parts, d.tenant_id).domains.push(d);
        }
        for c in data.connectors {
            part(&mut parts, c.tenant_id).connectors.push(c);
        }
        for a in data.header_from_allowed {
            part(&mut parts, a.tenant_id).header_from_allowed.push(a);
        }
        for (_, p) in parts {
            dir.insert_part(p);
        }
        dir
    }

    /// This snapshot with `delta` applied: each changed tenant's part replaced whole. The
    /// maps are persistent, so the unchanged rest is shared with this snapshot, not copied:
    /// the cost is that of the tenants changed, whatever the directory's size.
    pub fn apply(&self, delta: DirectoryDelta) -> Directory {
        let mut dir = self.clone();
        dir.version = delta.version;
        for part in delta.tenants {
            dir.remove_part(part.id);
            dir.insert_part(part);
        }
        dir
    }

    fn insert_part(&mut self, part: TenantPart) {
        let id = part.id;
        let mut keys = PartKeys::default();
        if let Some(t) = part.tenant {
            self.tenants.insert(id, t);
        }
        for d in part.domains.into_iter().filter(|d| d.verified) {
            let name: Arc<str> = Arc::from(d.domain);
            self.domains.get_or_default(name.clone()).push(DomainEntry {
                tenant_id: id,
                match_subdomains: d.match_subdomains,
            });
            keys.domains.push(name);
        }
        for a in part.header_from_allowed {
            let domain = a.domain.to_lowercase();
            self.header_from_allowed
                .get_or_default((id, domain.clone()))
                .push(a.connector_id);
            keys.header_from.push(domain);
        }
        for c in part.connectors {
            if let Some(name) = &c.cert_name {
                let list = self.by_cert.get_or_default(name.to_lowercase());
                if let Err(at) = list.binary_search(&c.id) {
                    list.insert(at, c.id);
                }
            }
            if let Some(user) = &c.auth_user {
                self.by_auth.insert(user.clone(), c.id);
            }
            if c.cert_name.is_none() && c.auth_user.is_none() {
                for net in &c.ip_ranges {
                    self.ip_only.set(net, c.id, true);
                }
            }
            keys.connectors.push(c.id);
            self.connectors.insert(c.id, Arc::new(c));
        }
        self.parts.insert(id, keys);
    }

    fn remove_part(&mut self, id: TenantId) {
        self.tenants.remove(&id);
        let Some(keys) = self.parts.remove(&id) else {
            return;
        };
        for name in keys.domains {
            if let Some(list) = self.domains.get_mut(&*name) {
                list.retain(|e| e.tenant_id != id);
                if list.is_empty() {
                    self.domains.remove(&*name);
                }
            }
        }
        for domain in keys.header_from {
            self.header_from_allowed.remove(&(id, domain));
        }
        for cid in keys.connectors {
            let Some(c) = self.connectors.remove(&cid) else {
                continue;
            };
            if let Some(name) = &c.cert_name {
                let key = name.to_lowercase();
                if let Some(list) = self.by_cert.get_mut(&key) {
                    list.retain(|x| *x != cid);
                    if list.is_empty() {
                        self.by_cert.remove(&key);
                    }
                }
            }
            if let Some(user) = &c.auth_user {
                if self.by_auth.get(user) == Some(&cid) {
                    self.by_auth.remove(user);
                }
            }
            if c.cert_name.is_none() && c.auth_user.is_none() {
                for net in &c.ip_ranges {
                    self.ip_only.set(net, cid, false);
                }
            }
        }
    }

    pub fn tenant(&self, id: TenantId) -> Option<&Tenant> {
        self.tenants.get(&id)
    }

    pub fn connector(&self, id: ConnectorId) -> Option<&Connector> {
        self.connectors.get(&id).map(|c| &**c)
    }

    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
    }

    /// This snapshot with `tenant`'s restriction state set to `state`, keeping the version (the
    /// next reload from the store replaces it). `None` when the tenant is unknown. The abuse
    /// detector uses it so that a transition applies to the very next MAIL FROM, before the
    /// store has it (a persistent-map copy: cheap).
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

    fn ip_only_ids(&self, ip: IpAddr) -> Vec<ConnectorId> {
        let mut ids = Vec::new();
        self.ip_only.lookup(ip, &mut ids);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Connectors identified by IP alone whose ranges contain `ip`, enabled or not; by id.
    pub fn ip_candidates(&self, ip: IpAddr) -> Vec<&Connector> {
        self.ip_only_ids(ip)
            .into_iter()
            .filter_map(|id| self.connector(id))
            .collect()
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

    /// Enabled connectors identified by IP alone whose ranges contain `ip`; by id.
    pub fn ip_connectors(&self, ip: IpAddr) -> Vec<&Connector> {
        self.ip_candidates(ip)
            .into_iter()
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
                for c in list.iter().filter_map(|id| self.connector(*id)) {
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
        // By id, so the answer does not depend on the map's order.
        let mut connectors: Vec<&Connector> = self.connectors.values().map(|c| &**c).collect();
        connectors.sort_unstable_by_key(|c| c.id);
        for c in connectors {
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
        self.by_auth.get(user).and_then(|id| self.connector(*id))
    }

    /// Every map, in a fixed order (tests compare a snapshot built whole with one changed
    /// incrementally).
    #[cfg(test)]
    fn canonical(&self) -> String {
        fn sorted<T: std::fmt::Debug>(items: impl Iterator<Item = T>) -> Vec<String> {
            let mut v: Vec<String> = items.map(|i| format!("{i:?}")).collect();
            v.sort();
            v
        }
        let domains = sorted(self.domains.iter().map(|(k, v)| {
            let mut v: Vec<(i64, bool)> = v
                .iter()
                .map(|e| (e.tenant_id.0, e.match_subdomains))
                .collect();
            v.sort();
            (k, v)
        }));
        let ip = |b: &[(u8, Map<u32, Vec<ConnectorId>>)]| {
            sorted(
                b.iter()
                    .flat_map(|(l, m)| m.iter().map(move |(k, v)| (*l, *k, v.clone()))),
            )
        };
        let ip6 = sorted(
            self.ip_only
                .v6
                .iter()
                .flat_map(|(l, m)| m.iter().map(move |(k, v)| (*l, *k, v.clone()))),
        );
        format!(
            "v{}\n{:?}\n{domains:?}\n{:?}\n{:?}\n{:?}\n{:?} {ip6:?}\n{:?}",
            self.version,
            sorted(self.tenants.values()),
            sorted(self.connectors.values()),
            sorted(self.by_cert.iter()),
            sorted(self.by_auth.iter()),
            ip(&self.ip_only.v4),
            sorted(self.header_from_allowed.iter()),
        )
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
    use relayward_core::{
        AcceptedDomain, ConnectorKind, DomainId, DomainKind, HeaderFromAllowed, Timestamp,
    };

    /// xorshift: the same sequence every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A random tenant part: domains (some pending, some with subdomains), connectors of each
    /// kind (some sharing domains, certificate names and ranges with other tenants'), header
    /// From declarations. Ids come from `next_id`, so a new part never reuses one.
    fn random_part(rng: &mut Rng, id: TenantId, next_id: &mut i64) -> TenantPart {
        let mut fresh = || {
            *next_id += 1;
            *next_id
        };
        let tenant = Tenant {
            id,
            name: format!("t{}", id.0),
            state: [TenantState::Active, TenantState::Warned][rng.below(2) as usize],
            admin_emails: Vec::new(),
            created_at: Timestamp(0),
        };
        let domains = (0..rng.below(4))
            .map(|_| AcceptedDomain {
                id: DomainId(fresh()),
                tenant_id: id,
                // Few names, so that tenants share some (only one can have it verified in a
                // real store; the directory must not care).
                domain: format!("d{}.example", rng.below(40)),
                kind: DomainKind::Authoritative,
                match_subdomains: rng.below(2) == 0,
                verified: rng.below(4) != 0,
                verification_token: String::new(),
                created_at: Timestamp(0),
                verified_at: None,
            })
            .collect();
        let connectors: Vec<Connector> = (0..rng.below(3))
            .map(|_| {
                let cid = ConnectorId(fresh());
                let kind = rng.below(3);
                Connector {
                    id: cid,
                    tenant_id: id,
                    name: format!("c{}", cid.0),
                    kind: ConnectorKind::OnPremises,
                    ip_ranges: vec![format!(
                        "10.{}.0.0/{}",
                        rng.below(4),
                        [16, 24][rng.below(2) as usize]
                    )
                    .parse()
                    .unwrap()],
                    cert_name: (kind == 1).then(|| format!("mail.d{}.example", rng.below(40))),
                    auth_user: (kind == 2).then(|| format!("user{}", cid.0)),
                    auth_password_hash: None,
                    require_tls: false,
                    enabled: rng.below(5) != 0,
                    allow_unregistered: false,
                    restrict_domains_to_ips: false,
                    restrict_domains_to_cert: false,
                    blocked: false,
                    created_at: Timestamp(0),
                    created_by: String::new(),
                    updated_at: Timestamp(0),
                    updated_by: String::new(),
                    last_used_at: None,
                }
            })
            .collect();
        let header_from_allowed = (0..rng.below(2))
            .map(|_| HeaderFromAllowed {
                tenant_id: id,
                domain: format!("Partner{}.example", rng.below(5)),
                connector_id: connectors
                    .first()
                    .map(|c| c.id)
                    .filter(|_| rng.below(2) == 0),
                declared_at: Timestamp(0),
                declared_by: String::new(),
            })
            .collect();
        TenantPart {
            id,
            tenant: Some(tenant),
            domains,
            connectors,
            header_from_allowed,
        }
    }

    fn data_of(
        version: i64,
        parts: &std::collections::BTreeMap<TenantId, TenantPart>,
    ) -> DirectoryData {
        let mut d = DirectoryData {
            version,
            ..Default::default()
        };
        for p in parts.values() {
            d.tenants.extend(p.tenant.clone());
            d.domains.extend(p.domains.iter().cloned());
            d.connectors.extend(p.connectors.iter().cloned());
            d.header_from_allowed
                .extend(p.header_from_allowed.iter().cloned());
        }
        d
    }

    /// A snapshot changed tenant by tenant answers exactly as one built whole from the same
    /// data, through 200 rounds of random changes (tenants added, changed, removed).
    #[test]
    fn applying_changes_equals_building_whole() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut next_id = 1000;
        let mut parts = std::collections::BTreeMap::new();
        for t in 1..=60 {
            parts.insert(
                TenantId(t),
                random_part(&mut rng, TenantId(t), &mut next_id),
            );
        }
        let mut dir = Directory::new(data_of(1, &parts));
        let first = dir.clone();
        for round in 0..200 {
            let mut changed = Vec::new();
            for _ in 0..=rng.below(5) {
                let id = TenantId(1 + rng.below(70) as i64);
                if rng.below(6) == 0 {
                    parts.remove(&id);
                    changed.push(TenantPart {
                        id,
                        tenant: None,
                        domains: Vec::new(),
                        connectors: Vec::new(),
                        header_from_allowed: Vec::new(),
                    });
                } else {
                    let p = random_part(&mut rng, id, &mut next_id);
                    parts.insert(id, p.clone());
                    changed.push(p);
                }
            }
            // A tenant changed twice in one delta comes once, as it is now.
            changed.reverse();
            let mut seen = std::collections::HashSet::new();
            changed.retain(|p| seen.insert(p.id));
            let version = 2 + round;
            dir = dir.apply(DirectoryDelta {
                version,
                tenants: changed,
            });
            let whole = Directory::new(data_of(version, &parts));
            assert_eq!(dir.canonical(), whole.canonical(), "round {round}");
            // And the lookups agree.
            for ip in ["10.0.0.1", "10.1.2.3", "10.3.0.9", "::ffff:10.2.0.1"] {
                let ip: IpAddr = ip.parse().unwrap();
                let ids =
                    |d: &Directory| d.ip_candidates(ip).iter().map(|c| c.id).collect::<Vec<_>>();
                assert_eq!(ids(&dir), ids(&whole));
            }
            for n in 0..40 {
                let names = [format!("mail.d{n}.example")];
                let ids = |d: &Directory| {
                    d.cert_candidates(&names)
                        .iter()
                        .map(|c| c.id)
                        .collect::<Vec<_>>()
                };
                assert_eq!(ids(&dir), ids(&whole));
                for t in 1..=70 {
                    let domain = format!("x.d{n}.example");
                    assert_eq!(
                        dir.is_registered(TenantId(t), &domain),
                        whole.is_registered(TenantId(t), &domain)
                    );
                }
            }
        }
        // The first snapshot, still held, never changed.
        assert_eq!(
            first.canonical(),
            Directory::new(data_of(1, &{
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
                let mut next_id = 1000;
                (1..=60)
                    .map(|t| {
                        (
                            TenantId(t),
                            random_part(&mut rng, TenantId(t), &mut next_id),
                        )
                    })
                    .collect()
            }))
            .canonical()
        );
    }

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
