//! Egress pools: which source addresses each delivery attempt leaves from.
//!
//! Receivers judge mail by the address it comes from, so the relay keeps its riskiest mail off
//! the addresses everyone else's mail uses. A message's pool is chosen at each attempt, not at
//! acceptance, because a tenant's standing changes while its mail waits in the queue. The
//! rules, first match wins:
//!
//! 1. **pinned**: the operator put the tenant on a pool (its dedicated addresses, say). An
//!    explicit decision about one tenant outranks the general rules below, and whatever that
//!    tenant sends can only hurt the addresses it was given.
//! 2. **null sender** -> `high_risk`: DSNs and other bounces go to addresses that often do not
//!    exist or never sent the mail (backscatter); receivers count that against the source.
//! 3. **spam verdict** -> `high_risk`: the content scanner marked the message and let it pass.
//! 4. **tenant risk** -> `high_risk`: the tenant is under watch ([`EgressRisk`]).
//! 5. **srs** -> `forwarding`: relayed mail of an unregistered sender, rewritten with SRS. It
//!    comes after the risk rules: forwarded mail from a tenant at risk, or with a spam verdict,
//!    is risky mail first and forwarded mail second.
//! 6. **default** -> `default`.
//!
//! A rule whose pool is not configured falls back to `default`. A `default` that is not
//! configured, like a pool without an address of the target's family, leaves the connection
//! unbound (the system picks the source address), and the trace says so. With no pool
//! configured at all nothing is bound and the trace is as it always was.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::{DeliveryConfig, EgressPool};
use crate::spool::Envelope;

pub const DEFAULT_POOL: &str = "default";
pub const HIGH_RISK_POOL: &str = "high_risk";
pub const FORWARDING_POOL: &str = "forwarding";

/// The names the rules route to; a pool by another name carries only pinned tenants' mail.
pub const ROUTED_POOLS: [&str; 3] = [DEFAULT_POOL, HIGH_RISK_POOL, FORWARDING_POOL];

/// What the queue asks the relay about a tenant's standing, at each attempt.
pub trait EgressRisk: Send + Sync {
    /// The tenant's mail must leave from the high-risk pool now.
    fn high_risk(&self, tenant: i64) -> bool;
}

/// The rule that chose a message's pool (module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRule {
    Pinned,
    NullSender,
    SpamVerdict,
    TenantRisk,
    Srs,
    Default,
}

impl PoolRule {
    pub fn as_str(&self) -> &'static str {
        match self {
            PoolRule::Pinned => "pinned",
            PoolRule::NullSender => "null sender",
            PoolRule::SpamVerdict => "spam verdict",
            PoolRule::TenantRisk => "tenant risk",
            PoolRule::Srs => "srs",
            PoolRule::Default => "default",
        }
    }
}

/// The pool one attempt of a message uses, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolChoice {
    /// The pool whose addresses the attempt's connections bind.
    pub pool: String,
    pub rule: PoolRule,
    /// The pool `rule` asked for when none by that name is configured (`pool` is then
    /// `default`).
    pub missing: Option<String>,
}

/// `pool high_risk (null sender)`, `pool default`, `pool default (srs; no pool forwarding)`.
impl fmt::Display for PoolChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pool {}", self.pool)?;
        match (&self.missing, self.rule) {
            (Some(missing), rule) => write!(f, " ({}; no pool {missing})", rule.as_str()),
            (None, PoolRule::Default) => Ok(()),
            (None, rule) => write!(f, " ({})", rule.as_str()),
        }
    }
}

/// The pool for the next attempt of `env`; `None` when no pool is configured.
pub fn choose(
    config: &DeliveryConfig,
    env: &Envelope,
    risk: Option<&dyn EgressRisk>,
) -> Option<PoolChoice> {
    if config.egress_pools.is_empty() {
        return None;
    }
    let (rule, wanted) = rule_for(config, env, risk);
    let configured = wanted == DEFAULT_POOL || config.egress_pools.iter().any(|p| p.name == wanted);
    Some(PoolChoice {
        pool: if configured { wanted } else { DEFAULT_POOL }.to_string(),
        rule,
        missing: (!configured).then(|| wanted.to_string()),
    })
}

fn rule_for<'a>(
    config: &'a DeliveryConfig,
    env: &Envelope,
    risk: Option<&dyn EgressRisk>,
) -> (PoolRule, &'a str) {
    if let Some(pool) = env.tenant_id.and_then(|t| config.tenant_pools.get(&t)) {
        return (PoolRule::Pinned, pool);
    }
    if env.sender.is_empty() {
        return (PoolRule::NullSender, HIGH_RISK_POOL);
    }
    if env.spam_verdict {
        return (PoolRule::SpamVerdict, HIGH_RISK_POOL);
    }
    if let (Some(tenant), Some(risk)) = (env.tenant_id, risk) {
        if risk.high_risk(tenant) {
            return (PoolRule::TenantRisk, HIGH_RISK_POOL);
        }
    }
    if env.original_sender.is_some() {
        return (PoolRule::Srs, FORWARDING_POOL);
    }
    (PoolRule::Default, DEFAULT_POOL)
}

/// The pool and source address of one attempt, as its trace event shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressUsed {
    pub choice: PoolChoice,
    /// The address the connection left from: the pool's, or the system's choice when unbound.
    /// `None` when no connection was made.
    pub source: Option<IpAddr>,
    /// Why the connection was not bound to one of the pool's addresses.
    pub unbound: Option<String>,
}

/// `pool high_risk (null sender) from 127.0.0.3`,
/// `pool default from ::1 (unbound: no IPv6 address in pool default)`.
impl fmt::Display for EgressUsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.choice)?;
        if let Some(ip) = self.source {
            write!(f, " from {ip}")?;
        }
        if let Some(why) = &self.unbound {
            write!(f, " (unbound: {why})")?;
        }
        Ok(())
    }
}

/// Why a connection leaves unbound (from any local address) instead of from its egress pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnboundReason {
    /// No pool of that name is configured.
    #[error("no pool named {0}")]
    NoPool(String),
    /// The pool has no address of the target's family (`"IPv4"` or `"IPv6"`).
    #[error("no {family} address in pool {pool}")]
    NoAddressOfFamily { pool: String, family: &'static str },
}

/// The configured pools' addresses, handed out in turn per pool and address family.
#[derive(Debug, Default)]
pub struct SourceAddresses {
    pools: HashMap<String, PoolAddresses>,
}

#[derive(Debug)]
struct PoolAddresses {
    v4: Vec<IpAddr>,
    v6: Vec<IpAddr>,
    next_v4: AtomicUsize,
    next_v6: AtomicUsize,
    ehlo_hostname: Option<String>,
}

impl SourceAddresses {
    pub fn new(pools: &[EgressPool]) -> SourceAddresses {
        let pools = pools
            .iter()
            .map(|p| {
                let (v4, v6) = p.source_addresses.iter().partition(|ip| ip.is_ipv4());
                let addresses = PoolAddresses {
                    v4,
                    v6,
                    next_v4: AtomicUsize::new(0),
                    next_v6: AtomicUsize::new(0),
                    ehlo_hostname: p.ehlo_hostname.clone(),
                };
                (p.name.clone(), addresses)
            })
            .collect();
        SourceAddresses { pools }
    }

    /// The addresses of `pool` to bind for a connection to `target`: the next in turn first,
    /// then the others (tried when one cannot be bound). `Err`: the connection stays unbound,
    /// and why.
    pub fn for_target(&self, pool: &str, target: IpAddr) -> Result<Vec<IpAddr>, UnboundReason> {
        let (list, next) = self.family(pool, target)?;
        let start = next.fetch_add(1, Ordering::Relaxed) % list.len();
        Ok(list[start..]
            .iter()
            .chain(&list[..start])
            .copied()
            .collect())
    }

    /// Why a connection from `pool` to `target` is not bound, if it is not.
    pub fn unbound_reason(&self, pool: &str, target: IpAddr) -> Option<String> {
        self.family(pool, target).err().map(|e| e.to_string())
    }

    fn family(
        &self,
        pool: &str,
        target: IpAddr,
    ) -> Result<(&[IpAddr], &AtomicUsize), UnboundReason> {
        let Some(p) = self.pools.get(pool) else {
            return Err(UnboundReason::NoPool(pool.into()));
        };
        let (list, next, family) = if target.is_ipv4() {
            (&p.v4, &p.next_v4, "IPv4")
        } else {
            (&p.v6, &p.next_v6, "IPv6")
        };
        if list.is_empty() {
            return Err(UnboundReason::NoAddressOfFamily {
                pool: pool.into(),
                family,
            });
        }
        Ok((list, next))
    }

    /// The EHLO name of `pool`'s connections, when it has its own.
    pub fn ehlo_hostname(&self, pool: &str) -> Option<&str> {
        self.pools.get(pool)?.ehlo_hostname.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::QueueId;

    struct Risky(Vec<i64>);

    impl EgressRisk for Risky {
        fn high_risk(&self, tenant: i64) -> bool {
            self.0.contains(&tenant)
        }
    }

    fn pool(name: &str, addrs: &[&str]) -> EgressPool {
        EgressPool {
            name: name.into(),
            source_addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ehlo_hostname: None,
        }
    }

    fn config(pools: &[&str]) -> DeliveryConfig {
        DeliveryConfig {
            egress_pools: pools.iter().map(|p| pool(p, &["127.0.0.2"])).collect(),
            ..DeliveryConfig::default()
        }
    }

    /// A registered sender's message from tenant 7.
    fn env() -> Envelope {
        let id = QueueId::generate();
        let mut e = crate::dsn::envelope(id, "relay.test", "bob@dest.example", b"x");
        e.tenant_id = Some(7);
        e.sender = "alice@acme.example".into();
        e.sender_class = relayward_core::SenderClass::Registered;
        e
    }

    fn chosen(config: &DeliveryConfig, env: &Envelope, risk: &Risky) -> (String, PoolRule) {
        let c = choose(config, env, Some(risk)).expect("pools configured");
        (c.pool, c.rule)
    }

    fn p(name: &str, rule: PoolRule) -> (String, PoolRule) {
        (name.to_string(), rule)
    }

    #[test]
    fn each_rule_routes_to_its_pool() {
        let all = config(&["default", "high_risk", "forwarding"]);
        let calm = Risky(vec![]);
        assert_eq!(chosen(&all, &env(), &calm), p("default", PoolRule::Default));

        let mut null = env();
        null.sender = String::new();
        null.tenant_id = None; // a DSN of the relay's own
        assert_eq!(
            chosen(&all, &null, &calm),
            p("high_risk", PoolRule::NullSender)
        );

        let mut spam = env();
        spam.spam_verdict = true;
        assert_eq!(
            chosen(&all, &spam, &calm),
            p("high_risk", PoolRule::SpamVerdict)
        );

        assert_eq!(
            chosen(&all, &env(), &Risky(vec![7])),
            p("high_risk", PoolRule::TenantRisk)
        );
        // Another tenant's standing is not this one's.
        assert_eq!(
            chosen(&all, &env(), &Risky(vec![8])),
            p("default", PoolRule::Default)
        );

        let mut srs = env();
        srs.original_sender = Some("alice@orig.example".into());
        srs.sender = "SRS0=abcd=TT=orig.example=alice@srs.relay.test".into();
        assert_eq!(chosen(&all, &srs, &calm), p("forwarding", PoolRule::Srs));

        let mut pinned = config(&["default", "high_risk", "forwarding", "acme"]);
        pinned.tenant_pools.insert(7, "acme".into());
        assert_eq!(chosen(&pinned, &env(), &calm), p("acme", PoolRule::Pinned));
    }

    #[test]
    fn precedence_pin_then_null_spam_risk_then_srs() {
        let mut all = config(&["default", "high_risk", "forwarding", "acme"]);
        let risky = Risky(vec![7]);
        let mut e = env();
        e.original_sender = Some("alice@orig.example".into());
        e.spam_verdict = true;
        // A risky tenant's forwarded mail with a spam verdict, from the null sender.
        e.sender = String::new();
        all.tenant_pools.insert(7, "acme".into());
        assert_eq!(chosen(&all, &e, &risky), p("acme", PoolRule::Pinned));
        all.tenant_pools.clear();
        assert_eq!(
            chosen(&all, &e, &risky),
            p("high_risk", PoolRule::NullSender)
        );
        e.sender = "SRS0=abcd=TT=orig.example=alice@srs.relay.test".into();
        assert_eq!(
            chosen(&all, &e, &risky),
            p("high_risk", PoolRule::SpamVerdict)
        );
        e.spam_verdict = false;
        assert_eq!(
            chosen(&all, &e, &risky),
            p("high_risk", PoolRule::TenantRisk)
        );
        assert_eq!(
            chosen(&all, &e, &Risky(vec![])),
            p("forwarding", PoolRule::Srs)
        );
        // Without the hook, tenant risk never applies.
        assert_eq!(choose(&all, &e, None).unwrap().rule, PoolRule::Srs);
    }

    #[test]
    fn absent_pools_fall_back_to_default_and_none_configured_means_no_choice() {
        let only_default = config(&["default"]);
        let mut null = env();
        null.sender = String::new();
        let c = choose(&only_default, &null, None).unwrap();
        assert_eq!(
            (c.pool.as_str(), c.rule, c.missing.as_deref()),
            ("default", PoolRule::NullSender, Some("high_risk"))
        );
        assert_eq!(
            c.to_string(),
            "pool default (null sender; no pool high_risk)"
        );
        // `default` itself need not be configured: the choice names it, the connection is
        // then unbound.
        let c = choose(&config(&["high_risk"]), &env(), None).unwrap();
        assert_eq!((c.pool.as_str(), c.missing.as_deref()), ("default", None));
        assert_eq!(c.to_string(), "pool default");
        assert_eq!(choose(&DeliveryConfig::default(), &null, None), None);
    }

    #[test]
    fn addresses_in_turn_per_family_and_unbound_reasons() {
        let sources = SourceAddresses::new(&[
            pool("default", &["127.0.0.2", "::1", "127.0.0.3"]),
            pool("high_risk", &["127.0.0.4"]),
        ]);
        let v4: IpAddr = "127.0.0.9".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            sources.for_target("default", v4).unwrap(),
            [ip("127.0.0.2"), ip("127.0.0.3")]
        );
        // Asking why a connection is unbound does not take a turn.
        assert_eq!(sources.unbound_reason("default", v4), None);
        assert_eq!(
            sources.for_target("default", v4).unwrap(),
            [ip("127.0.0.3"), ip("127.0.0.2")]
        );
        // The IPv6 turn is its own: IPv4 connections did not advance it.
        assert_eq!(sources.for_target("default", v6).unwrap(), [ip("::1")]);
        assert_eq!(
            sources.for_target("default", v4).unwrap(),
            [ip("127.0.0.2"), ip("127.0.0.3")]
        );
        assert_eq!(
            sources.for_target("high_risk", v6),
            Err(UnboundReason::NoAddressOfFamily {
                pool: "high_risk".into(),
                family: "IPv6"
            })
        );
        assert_eq!(
            sources.unbound_reason("high_risk", v6).as_deref(),
            Some("no IPv6 address in pool high_risk")
        );
        assert_eq!(
            sources.for_target("default", v6).map(|_| ()),
            Ok(()),
            "a pool with both families binds IPv6 for an IPv6 target"
        );
        assert_eq!(
            sources.for_target("forwarding", v4),
            Err(UnboundReason::NoPool("forwarding".into()))
        );
        assert_eq!(
            sources.unbound_reason("forwarding", v4).as_deref(),
            Some("no pool named forwarding")
        );
    }

    #[test]
    fn trace_text() {
        let used = EgressUsed {
            choice: PoolChoice {
                pool: "high_risk".into(),
                rule: PoolRule::NullSender,
                missing: None,
            },
            source: Some("127.0.0.3".parse().unwrap()),
            unbound: None,
        };
        assert_eq!(
            used.to_string(),
            "pool high_risk (null sender) from 127.0.0.3"
        );
        let unbound = EgressUsed {
            choice: PoolChoice {
                pool: "default".into(),
                rule: PoolRule::Default,
                missing: None,
            },
            source: Some("::1".parse().unwrap()),
            unbound: Some("no IPv6 address in pool default".into()),
        };
        assert_eq!(
            unbound.to_string(),
            "pool default from ::1 (unbound: no IPv6 address in pool default)"
        );
    }
}
