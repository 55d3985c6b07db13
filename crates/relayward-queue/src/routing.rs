//! Where a recipient's mail goes next (RFC 5321 section 5): a tenant route, the smart host, or
//! the recipient domain's MX hosts (A/AAAA when there is no MX; RFC 7505 null MX refuses mail).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use rand::seq::SliceRandom;

use crate::config::{DeliveryConfig, TenantRoute};
use crate::outbound::tls;

/// The unit of routing, connection pooling and per-destination concurrency.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// The recipient domain (lowercase) via its MX hosts.
    Mx(String),
    SmartHost,
    Tenant(i64),
}

impl Destination {
    /// Which destination a recipient of a message from `tenant` goes to.
    pub fn for_recipient(config: &DeliveryConfig, tenant: Option<i64>, rcpt: &str) -> Destination {
        if let Some(t) = tenant.filter(|t| config.tenant_routes.contains_key(t)) {
            return Destination::Tenant(t);
        }
        if config.smart_host.is_some() {
            return Destination::SmartHost;
        }
        Destination::Mx(recipient_domain(rcpt))
    }

    /// Stable text form, used as the concurrency and pool key.
    pub fn key(&self) -> String {
        match self {
            Destination::Mx(d) => format!("mx:{d}"),
            Destination::SmartHost => "smarthost".into(),
            Destination::Tenant(t) => format!("tenant:{t}"),
        }
    }
}

/// The lowercase domain of an address (`user@Example.COM` -> `example.com`).
pub fn recipient_domain(addr: &str) -> String {
    addr.rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or("")
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// One host to try, in order.
#[derive(Debug, Clone)]
pub struct Hop {
    /// MX exchange or configured host name; an IP literal for literal hops.
    pub name: String,
    pub port: u16,
    /// Known addresses (IP literals, A fallback); otherwise resolved at connect time.
    pub addrs: Option<Vec<IpAddr>>,
}

/// TLS policy of a route.
#[derive(Clone)]
pub enum TlsPolicy {
    /// STARTTLS when offered, certificate not verified; plaintext otherwise.
    Opportunistic,
    /// STARTTLS must succeed; `Some(config)` also verifies the certificate and name.
    Required(Option<Arc<rustls::ClientConfig>>),
}

/// The ordered next hops of a destination and how to talk to them.
#[derive(Clone)]
pub struct Route {
    pub destination: Destination,
    pub hops: Vec<Hop>,
    pub tls: TlsPolicy,
    pub auth: Option<(String, String)>,
}

/// A destination that cannot be routed now (`Temporary`) or ever (`Permanent`). `reply` is the
/// SMTP-style text quoted in the DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    Permanent { status: String, reply: String },
    Temporary { status: String, reply: String },
}

/// Routing with one DNS resolver (and its cache) for the scheduler's lifetime.
pub struct Router {
    /// An error when the resolver could not be built (no system configuration): every MX lookup
    /// then defers with that reason.
    resolver: Result<TokioResolver, ResolverError>,
    config: Arc<DeliveryConfig>,
    /// TLS client configurations of the tenant routes that verify, built once.
    verified_tls:
        std::collections::HashMap<i64, Result<Arc<rustls::ClientConfig>, tls::TlsConfigError>>,
}

/// Why no DNS resolver could be built; MX delivery then defers with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolverError {
    /// The system's resolver configuration (`/etc/resolv.conf`) cannot be read or used.
    #[error("system DNS configuration: {0}")]
    SystemConfig(String),
    /// The resolver refused its options.
    #[error("DNS resolver: {0}")]
    Build(String),
}

/// Why a `host:port` setting (a smart host, a tenant route) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostPortError {
    #[error("bad host {0:?}")]
    BadHost(String),
    #[error("bad port in {0:?}")]
    BadPort(String),
    #[error("empty host")]
    Empty,
}

/// Why a hop has no address to connect to; the text is the reply quoted in the DSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopAddressError {
    /// The host name has no A or AAAA records.
    #[error("{host}: host has no address records")]
    NoAddress { host: String },
    /// The lookup itself failed (time-out, server failure, no resolver).
    #[error("{host}: DNS lookup failed: {reason}")]
    LookupFailed { host: String, reason: String },
}

/// The resolver: `server` receives every query, or the system configuration is used.
pub fn build_resolver(server: Option<SocketAddr>) -> Result<TokioResolver, ResolverError> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    let builder = match server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => {
            Resolver::builder_tokio().map_err(|e| ResolverError::SystemConfig(e.to_string()))?
        }
    };
    builder
        .with_options(opts)
        .build()
        .map_err(|e| ResolverError::Build(e.to_string()))
}

/// Parses `host:port`, `[v6]:port`, `v4:port` or a bare host (port `default_port`).
pub fn parse_host_port(s: &str, default_port: u16) -> Result<(String, u16), HostPortError> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| HostPortError::BadHost(s.into()))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| HostPortError::BadPort(s.into()))?,
            None if after.is_empty() => default_port,
            None => return Err(HostPortError::BadHost(s.into())),
        };
        return Ok((host.to_string(), port));
    }
    if s.parse::<IpAddr>().is_ok() {
        return Ok((s.to_string(), default_port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.to_string(),
            port.parse().map_err(|_| HostPortError::BadPort(s.into()))?,
        )),
        None if !s.is_empty() => Ok((s.to_string(), default_port)),
        None => Err(HostPortError::Empty),
    }
}

fn temporary(status: &str, reply: String) -> RouteError {
    RouteError::Temporary {
        status: status.into(),
        reply,
    }
}

fn permanent(status: &str, reply: String) -> RouteError {
    RouteError::Permanent {
        status: status.into(),
        reply,
    }
}

fn literal_hop(host: &str, port: u16) -> Hop {
    let addrs = host.parse::<IpAddr>().ok().map(|ip| vec![ip]);
    Hop {
        name: host.to_string(),
        port,
        addrs,
    }
}

impl Router {
    pub fn new(config: Arc<DeliveryConfig>) -> Router {
        let resolver = build_resolver(config.dns_resolver);
        if let Err(e) = &resolver {
            tracing::error!(error = %e, "no DNS resolver: MX delivery will defer");
        }
        let verified_tls = config
            .tenant_routes
            .iter()
            .filter(|(_, r)| r.require_tls && r.verify_tls)
            .map(|(t, r)| (*t, tls::verified(r.tls_ca_file.as_deref())))
            .collect();
        Router {
            resolver,
            config,
            verified_tls,
        }
    }

    /// The hops for `dest`, in the order to try them.
    pub async fn route(&self, dest: &Destination) -> Result<Route, RouteError> {
        match dest {
            Destination::Tenant(t) => {
                let r: &TenantRoute = self.config.tenant_routes.get(t).ok_or_else(|| {
                    temporary("4.3.5", format!("no route configured for tenant {t}"))
                })?;
                let (host, port) = parse_host_port(&r.host, 25)
                    .map_err(|e| temporary("4.3.5", format!("tenant {t} route: {e}")))?;
                let tls = if r.require_tls {
                    match self.verified_tls.get(t) {
                        Some(Ok(config)) => TlsPolicy::Required(Some(config.clone())),
                        Some(Err(e)) => {
                            return Err(temporary("4.7.5", format!("tenant {t} route TLS: {e}")))
                        }
                        None => TlsPolicy::Required(None),
                    }
                } else {
                    TlsPolicy::Opportunistic
                };
                let auth = match (&r.auth_user, &r.auth_password) {
                    (Some(u), Some(p)) => Some((u.clone(), p.clone())),
                    _ => None,
                };
                Ok(Route {
                    destination: dest.clone(),
                    hops: vec![literal_hop(&host, port)],
                    tls,
                    auth,
                })
            }
            Destination::SmartHost => {
                let spec = self.config.smart_host.as_deref().unwrap_or_default();
                let (host, port) = parse_host_port(spec, 25)
                    .map_err(|e| temporary("4.3.5", format!("smart host: {e}")))?;
                Ok(Route {
                    destination: dest.clone(),
                    hops: vec![literal_hop(&host, port)],
                    tls: TlsPolicy::Opportunistic,
                    auth: None,
                })
            }
            Destination::Mx(domain) => Ok(Route {
                destination: dest.clone(),
                hops: self.mx_hops(domain).await?,
                tls: TlsPolicy::Opportunistic,
                auth: None,
            }),
        }
    }

    async fn mx_hops(&self, domain: &str) -> Result<Vec<Hop>, RouteError> {
        let port = self.config.mx_port;
        if domain.is_empty() {
            return Err(permanent(
                "5.1.2",
                "550 5.1.2 Recipient address has no domain".into(),
            ));
        }
        // Address literal: user@[192.0.2.1] or user@[IPv6:2001:db8::1].
        if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
            let ip = lit.strip_prefix("ipv6:").unwrap_or(lit);
            return match ip.parse::<IpAddr>() {
                Ok(ip) => Ok(vec![Hop {
                    name: ip.to_string(),
                    port,
                    addrs: Some(vec![ip]),
                }]),
                Err(_) => Err(permanent(
                    "5.1.2",
                    format!("550 5.1.2 Bad address literal [{lit}]"),
                )),
            };
        }
        let fqdn = format!("{domain}.");
        let resolver = self
            .resolver
            .as_ref()
            .map_err(|e| temporary("4.4.3", format!("451 4.4.3 {e}")))?;
        match resolver.mx_lookup(fqdn.as_str()).await {
            Ok(lookup) => {
                let mut mxs: Vec<(u16, String)> = Vec::new();
                let mut null_mx = false;
                for record in lookup.answers() {
                    if let RData::MX(mx) = &record.data {
                        if mx.exchange.is_root() {
                            null_mx = true;
                        } else {
                            let name = mx.exchange.to_ascii();
                            mxs.push((mx.preference, name.trim_end_matches('.').to_string()));
                        }
                    }
                }
                if mxs.is_empty() && null_mx {
                    // RFC 7505 section 4.2.
                    return Err(permanent(
                        "5.1.10",
                        format!("556 5.1.10 Recipient address rejected: domain {domain} does not accept mail (null MX)"),
                    ));
                }
                if mxs.is_empty() {
                    return self.implicit_mx(domain, port).await;
                }
                Ok(order_mx(mxs)
                    .into_iter()
                    .map(|name| Hop {
                        addrs: name.parse::<IpAddr>().ok().map(|ip| vec![ip]),
                        name,
                        port,
                    })
                    .collect())
            }
            Err(e) if e.is_nx_domain() => Err(permanent(
                "5.1.2",
                format!("550 5.1.2 Host or domain name not found: {domain} (NXDOMAIN)"),
            )),
            Err(e) if e.is_no_records_found() => self.implicit_mx(domain, port).await,
            Err(e) => Err(temporary(
                "4.4.3",
                format!("451 4.4.3 DNS lookup of MX for {domain} failed: {e}"),
            )),
        }
    }

    /// RFC 5321 5.1: no MX, so the domain itself is the only host.
    async fn implicit_mx(&self, domain: &str, port: u16) -> Result<Vec<Hop>, RouteError> {
        match self.addresses(domain).await {
            Ok(addrs) if !addrs.is_empty() => Ok(vec![Hop {
                name: domain.to_string(),
                port,
                addrs: Some(addrs),
            }]),
            Ok(_) => Err(permanent(
                "5.1.2",
                format!("550 5.1.2 Host or domain name not found: {domain} has no MX or address records"),
            )),
            Err(AddrError::NotFound) => Err(permanent(
                "5.1.2",
                format!("550 5.1.2 Host or domain name not found: {domain} has no MX or address records"),
            )),
            Err(AddrError::Failed(e)) => Err(temporary(
                "4.4.3",
                format!("451 4.4.3 DNS lookup of {domain} failed: {e}"),
            )),
        }
    }

    /// A/AAAA of a host name (IP literals returned as they are).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, AddrError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let resolver = self
            .resolver
            .as_ref()
            .map_err(|e| AddrError::Failed(e.to_string()))?;
        match resolver.lookup_ip(fqdn.as_str()).await {
            Ok(lookup) => Ok(lookup.iter().collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Err(AddrError::NotFound),
            Err(e) => Err(AddrError::Failed(e.to_string())),
        }
    }

    /// Socket addresses of one hop.
    pub async fn hop_addresses(&self, hop: &Hop) -> Result<Vec<SocketAddr>, HopAddressError> {
        let ips = match &hop.addrs {
            Some(ips) => ips.clone(),
            None => match self.addresses(&hop.name).await {
                Ok(ips) if !ips.is_empty() => ips,
                Ok(_) | Err(AddrError::NotFound) => {
                    return Err(HopAddressError::NoAddress {
                        host: hop.name.clone(),
                    })
                }
                Err(AddrError::Failed(reason)) => {
                    return Err(HopAddressError::LookupFailed {
                        host: hop.name.clone(),
                        reason,
                    })
                }
            },
        };
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, hop.port))
            .collect())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrError {
    NotFound,
    Failed(String),
}

/// By preference, lowest first; equal preferences in random order (RFC 5321 5.1).
fn order_mx(mut mxs: Vec<(u16, String)>) -> Vec<String> {
    mxs.sort_by_key(|(pref, _)| *pref);
    let mut rng = rand::thread_rng();
    let mut out = Vec::with_capacity(mxs.len());
    let mut i = 0;
    while i < mxs.len() {
        let pref = mxs[i].0;
        let mut j = i;
        while j < mxs.len() && mxs[j].0 == pref {
            j += 1;
        }
        let mut group: Vec<String> = mxs[i..j].iter().map(|(_, n)| n.clone()).collect();
        group.shuffle(&mut rng);
        for name in group {
            if !out.contains(&name) {
                out.push(name);
            }
        }
        i = j;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port() {
        assert_eq!(
            parse_host_port("mx.example:2525", 25).unwrap(),
            ("mx.example".into(), 2525)
        );
        assert_eq!(
            parse_host_port("mx.example", 25).unwrap(),
            ("mx.example".into(), 25)
        );
        assert_eq!(parse_host_port("[::1]:26", 25).unwrap(), ("::1".into(), 26));
        assert_eq!(parse_host_port("::1", 25).unwrap(), ("::1".into(), 25));
        assert_eq!(
            parse_host_port("127.0.0.1:26", 25).unwrap(),
            ("127.0.0.1".into(), 26)
        );
        assert_eq!(
            parse_host_port("a:b", 25),
            Err(HostPortError::BadPort("a:b".into()))
        );
        assert_eq!(
            parse_host_port("[::1]x", 25),
            Err(HostPortError::BadHost("[::1]x".into()))
        );
        assert_eq!(parse_host_port(" ", 25), Err(HostPortError::Empty));
        assert_eq!(
            parse_host_port("[::1", 25).unwrap_err().to_string(),
            "bad host \"[::1\""
        );
    }

    #[test]
    fn mx_order() {
        for _ in 0..20 {
            let order = order_mx(vec![
                (20, "c".into()),
                (10, "a".into()),
                (10, "b".into()),
                (30, "d".into()),
            ]);
            assert_eq!(order.len(), 4);
            assert!(order[..2].contains(&"a".to_string()));
            assert!(order[..2].contains(&"b".to_string()));
            assert_eq!(order[2..], ["c".to_string(), "d".to_string()]);
        }
    }

    #[test]
    fn destinations() {
        let mut config = DeliveryConfig::default();
        assert_eq!(
            Destination::for_recipient(&config, Some(1), "a@Example.COM"),
            Destination::Mx("example.com".into())
        );
        config.smart_host = Some("relay:25".into());
        assert_eq!(
            Destination::for_recipient(&config, Some(1), "a@example.com"),
            Destination::SmartHost
        );
        config.tenant_routes.insert(1, TenantRoute::default());
        assert_eq!(
            Destination::for_recipient(&config, Some(1), "a@example.com"),
            Destination::Tenant(1)
        );
        assert_eq!(
            Destination::for_recipient(&config, None, "a@example.com"),
            Destination::SmartHost
        );
    }
}
