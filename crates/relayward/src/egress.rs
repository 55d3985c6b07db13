//! `[[egress_pool]]`: the source addresses outbound mail leaves from, by kind of mail
//! (relayward_queue::egress has the rules and their order).
//!
//! ```toml
//! [[egress_pool]]
//! name = "high_risk"
//! source_addresses = ["192.0.2.30", "2001:db8::30"]
//! ehlo_hostname = "bulk.relay.example.net"
//!
//! [[egress_pool]]
//! name = "acme"                 # acme's own addresses
//! source_addresses = ["192.0.2.40"]
//! tenants = ["acme"]
//! ```
//!
//! An operator pins tenants in the pool (`tenants`) rather than naming a pool in each tenant's
//! settings: a pool and the tenants whose reputation lives on its addresses are one decision,
//! read and changed in one place.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Weak;

use anyhow::{anyhow, bail, Result};
use relayward_core::TenantId;
use relayward_queue::egress::ROUTED_POOLS;
use relayward_queue::{EgressPool, EgressRisk};
use relayward_store::Store;
use serde::Deserialize;

use crate::abuse::Abuse;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressPoolConfig {
    /// `default`, `high_risk` (null senders, spam verdicts, tenants at risk), `forwarding`
    /// (SRS-rewritten mail), or a name of your own for pinned tenants only.
    pub name: String,
    /// Addresses of this host, IPv4 and IPv6, used in turn.
    pub source_addresses: Vec<IpAddr>,
    /// EHLO name on this pool's connections (match the addresses' PTR records). Default: the
    /// server's hostname.
    pub ehlo_hostname: Option<String>,
    /// Tenants (names or ids) whose mail always leaves from this pool, whatever it is.
    pub tenants: Vec<String>,
}

/// What can be checked without the store; tenant names are resolved by [`tenant_pools`].
pub fn validate(pools: &[EgressPoolConfig]) -> Result<()> {
    let mut names = HashSet::new();
    let mut addresses: HashMap<IpAddr, &str> = HashMap::new();
    let mut tenants: HashMap<&str, &str> = HashMap::new();
    for p in pools {
        let name = p.name.as_str();
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            bail!("egress_pool name {name:?}: 1 to 64 letters, digits, '_' or '-'");
        }
        if !names.insert(name) {
            bail!("egress_pool {name:?} is defined twice");
        }
        if p.source_addresses.is_empty() {
            bail!("egress_pool {name:?}: source_addresses is empty");
        }
        for ip in &p.source_addresses {
            if ip.is_unspecified() || ip.is_multicast() || *ip == IpAddr::from([255, 255, 255, 255])
            {
                bail!("egress_pool {name:?}: {ip} is not an address to send from");
            }
            // Shared addresses would share the reputation the pools are there to keep apart.
            if let Some(other) = addresses.insert(*ip, name) {
                bail!("egress_pool {name:?}: {ip} is also in egress_pool {other:?}");
            }
        }
        if let Some(h) = &p.ehlo_hostname {
            let ok = !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                bail!("egress_pool {name:?}: ehlo_hostname {h:?} is not a host name");
            }
        }
        for t in &p.tenants {
            if t.is_empty() {
                bail!("egress_pool {name:?}: an empty tenant name");
            }
            if let Some(other) = tenants.insert(t, name) {
                bail!("tenant {t:?} is pinned to egress_pool {other:?} and {name:?}");
            }
        }
        if p.tenants.is_empty() && !ROUTED_POOLS.contains(&name) {
            bail!(
                "egress_pool {name:?}: no mail would leave from it; name it one of {} or pin \
                 tenants to it (tenants = [...])",
                ROUTED_POOLS.join(", ")
            );
        }
    }
    Ok(())
}

/// The queue's view of the pools.
pub fn queue_pools(pools: &[EgressPoolConfig]) -> Vec<EgressPool> {
    pools
        .iter()
        .map(|p| EgressPool {
            name: p.name.clone(),
            source_addresses: p.source_addresses.clone(),
            ehlo_hostname: p.ehlo_hostname.clone(),
        })
        .collect()
}

/// Tenant id -> pool, for the tenants the pools pin (names or ids looked up in the store).
pub async fn tenant_pools(
    pools: &[EgressPoolConfig],
    store: &dyn Store,
) -> Result<HashMap<i64, String>> {
    let mut pinned: HashMap<i64, String> = HashMap::new();
    for p in pools {
        for t in &p.tenants {
            let tenant = store
                .find_tenant(t)
                .await?
                .ok_or_else(|| anyhow!("egress_pool {:?}: no tenant {t:?}", p.name))?;
            if let Some(other) = pinned.insert(tenant.id.0, p.name.clone()) {
                if other != p.name {
                    bail!(
                        "tenant {} is pinned to egress_pool {other:?} and {:?}",
                        tenant.name,
                        p.name
                    );
                }
            }
        }
    }
    Ok(pinned)
}

/// The pools as `serve` starts, in its log.
pub fn log_pools(pools: &[EgressPoolConfig], hostname: &str) {
    if pools.is_empty() {
        tracing::info!(
            "no [[egress_pool]]: outbound connections leave from the system's choice of address"
        );
    }
    for p in pools {
        let addresses: Vec<String> = p.source_addresses.iter().map(IpAddr::to_string).collect();
        tracing::info!(
            pool = %p.name,
            source_addresses = %addresses.join(","),
            ehlo = %p.ehlo_hostname.as_deref().unwrap_or(hostname),
            tenants = %p.tenants.join(","),
            "egress pool"
        );
    }
}

/// The abuse runtime's view of tenants, for the queue. Weak: the runtime holds the scheduler.
pub struct TenantRisk(pub Weak<Abuse>);

impl EgressRisk for TenantRisk {
    fn high_risk(&self, tenant: i64) -> bool {
        self.0
            .upgrade()
            .is_some_and(|abuse| abuse.high_risk_routing(TenantId(tenant)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, addrs: &[&str]) -> EgressPoolConfig {
        EgressPoolConfig {
            name: name.into(),
            source_addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ..EgressPoolConfig::default()
        }
    }

    fn error(pools: &[EgressPoolConfig]) -> String {
        validate(pools).unwrap_err().to_string()
    }

    #[test]
    fn valid_pools() {
        let mut acme = pool("acme", &["192.0.2.40"]);
        acme.tenants = vec!["acme".into(), "7".into()];
        let mut hr = pool("high_risk", &["192.0.2.30", "2001:db8::30"]);
        hr.ehlo_hostname = Some("bulk.relay.example.net".into());
        validate(&[pool("default", &["192.0.2.20"]), hr, acme]).unwrap();
        validate(&[]).unwrap();
    }

    #[test]
    fn read_from_the_configuration_file() {
        let c: crate::config::Config = toml::from_str(
            r#"
            [[egress_pool]]
            name = "default"
            source_addresses = ["192.0.2.20", "2001:db8::20"]

            [[egress_pool]]
            name = "acme"
            source_addresses = ["192.0.2.40"]
            ehlo_hostname = "acme-out.relay.example.net"
            tenants = ["acme"]
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let pools = c.delivery().egress_pools;
        assert_eq!(pools.len(), 2);
        assert_eq!(
            pools[0].source_addresses[1],
            "2001:db8::20".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            pools[1].ehlo_hostname.as_deref(),
            Some("acme-out.relay.example.net")
        );
        let typo = "[[egress_pool]]\nname = \"default\"\nsource_address = [\"192.0.2.1\"]\n";
        assert!(toml::from_str::<crate::config::Config>(typo).is_err());
    }

    #[test]
    fn invalid_pools_say_what_is_wrong() {
        let d = pool("default", &["192.0.2.20"]);
        assert!(error(&[d.clone(), pool("default", &["192.0.2.21"])]).contains("defined twice"));
        assert!(error(&[pool("default", &[])]).contains("source_addresses is empty"));
        assert!(error(&[pool("high-risk", &["192.0.2.30"])]).contains("no mail would leave"));
        assert!(error(&[pool("", &["192.0.2.30"])]).contains("name"));
        assert!(error(&[pool("default", &["0.0.0.0"])]).contains("not an address"));
        assert!(error(&[pool("default", &["::"])]).contains("not an address"));
        assert!(
            error(&[d.clone(), pool("high_risk", &["192.0.2.20"])]).contains("also in egress_pool")
        );
        let mut bad_ehlo = d.clone();
        bad_ehlo.ehlo_hostname = Some("not a host".into());
        assert!(error(&[bad_ehlo]).contains("ehlo_hostname"));
        let mut a = pool("a", &["192.0.2.40"]);
        a.tenants = vec!["acme".into()];
        let mut b = pool("b", &["192.0.2.41"]);
        b.tenants = vec!["acme".into()];
        assert!(error(&[a, b]).contains("pinned to egress_pool \"a\" and \"b\""));
    }
}
