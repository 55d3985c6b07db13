//! Attribution (which tenant a session belongs to) and the relay rule (which senders it may
//! relay), with the exact replies of DESIGN.md.
//!
//! Order of attribution: verified TLS client certificate name, then SMTP AUTH identity, then
//! IP-range connectors; when several tenants' IP connectors cover the client, the P1 MAIL FROM
//! domain decides, then the RCPT TO domain. Nothing matching means 5.7.64: never an open relay.
//!
//! `restrict_domains_to_ips` / `restrict_domains_to_cert` limit where a tenant's *registered*
//! domains may come from through that connector: a session attributed to the connector by AUTH
//! from another address (a leaked password) cannot send as the tenant's domains.

use std::net::IpAddr;

use relayward_core::{reply, Address, ConnectorId, Reply, SenderClass, TenantId};

use crate::directory::{ip_in_ranges, Directory};

/// What the session knows about the client, as attribution needs it.
#[derive(Debug, Clone)]
pub struct ClientFacts {
    pub ip: IpAddr,
    pub tls: bool,
    /// DNS names (SANs, or CN when there are none) of a client certificate that verified.
    pub cert_names: Vec<String>,
    /// Connector whose AUTH credentials the client presented successfully.
    pub auth_connector: Option<ConnectorId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Certificate,
    Auth,
    Ip,
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Certificate => "certificate",
            Method::Auth => "auth",
            Method::Ip => "ip",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attributed {
    pub tenant_id: TenantId,
    pub connector_id: ConnectorId,
    pub method: Method,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    Attributed(Attributed),
    /// IP connectors of several tenants cover the client: MAIL FROM or RCPT TO domain decides.
    Candidates(Vec<ConnectorId>),
    Unattributed,
}

/// Attribute a session from what is known before MAIL FROM.
pub fn attribute(dir: &Directory, facts: &ClientFacts) -> Attribution {
    if !facts.cert_names.is_empty() {
        let found = dir.cert_connectors(&facts.cert_names, facts.ip);
        if let Some(first) = found.first() {
            if found.iter().all(|c| c.tenant_id == first.tenant_id) {
                return Attribution::Attributed(Attributed {
                    tenant_id: first.tenant_id,
                    connector_id: first.id,
                    method: Method::Certificate,
                });
            }
        }
    }
    if let Some(id) = facts.auth_connector {
        if let Some(c) = dir.connector(id) {
            if c.enabled && crate::directory::ip_allowed(c, facts.ip) {
                return Attribution::Attributed(Attributed {
                    tenant_id: c.tenant_id,
                    connector_id: c.id,
                    method: Method::Auth,
                });
            }
        }
    }
    let found = dir.ip_connectors(facts.ip);
    match found.first() {
        None => Attribution::Unattributed,
        Some(first) if found.iter().all(|c| c.tenant_id == first.tenant_id) => {
            Attribution::Attributed(Attributed {
                tenant_id: first.tenant_id,
                connector_id: first.id,
                method: Method::Ip,
            })
        }
        Some(_) => Attribution::Candidates(found.iter().map(|c| c.id).collect()),
    }
}

/// Among IP candidates, the one connector whose tenant has `domain` as an accepted domain.
fn resolve(dir: &Directory, candidates: &[ConnectorId], domain: &str) -> Option<Attributed> {
    let mut hit: Option<Attributed> = None;
    for &id in candidates {
        let c = dir.connector(id)?;
        if dir.is_registered(c.tenant_id, domain) {
            match hit {
                Some(h) if h.tenant_id != c.tenant_id => return None,
                Some(_) => {}
                None => {
                    hit = Some(Attributed {
                        tenant_id: c.tenant_id,
                        connector_id: c.id,
                        method: Method::Ip,
                    })
                }
            }
        }
    }
    hit
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailOutcome {
    /// The transaction belongs to this tenant and the sender may relay.
    Accepted {
        attributed: Attributed,
        class: SenderClass,
    },
    /// Still ambiguous: the first RCPT TO domain decides.
    PendingRcpt { candidates: Vec<ConnectorId> },
}

pub fn classify(dir: &Directory, tenant: TenantId, sender: Option<&Address>) -> SenderClass {
    match sender {
        None => SenderClass::Null,
        Some(a) if dir.is_registered(tenant, &a.domain) => SenderClass::Registered,
        Some(_) => SenderClass::Unregistered,
    }
}

/// MAIL FROM: attribution (if still open), restriction states and the relay rule.
/// `sender` is `None` for the null reverse-path.
pub fn check_mail(
    dir: &Directory,
    facts: &ClientFacts,
    attribution: &Attribution,
    sender: Option<&Address>,
) -> Result<MailOutcome, Reply> {
    let attributed = match attribution {
        Attribution::Unattributed => return Err(reply::RELAY_DENIED),
        Attribution::Attributed(a) => *a,
        Attribution::Candidates(candidates) => {
            match sender.and_then(|s| resolve(dir, candidates, &s.domain)) {
                Some(a) => a,
                None => {
                    return Ok(MailOutcome::PendingRcpt {
                        candidates: candidates.clone(),
                    })
                }
            }
        }
    };
    let class = sender_rule(dir, facts, &attributed, sender)?;
    Ok(MailOutcome::Accepted { attributed, class })
}

/// RCPT TO while attribution is still pending: the recipient domain decides the tenant, then
/// the relay rule applies to the MAIL FROM sender given earlier.
pub fn check_rcpt(
    dir: &Directory,
    facts: &ClientFacts,
    candidates: &[ConnectorId],
    sender: Option<&Address>,
    recipient: &Address,
) -> Result<MailOutcome, Reply> {
    let attributed = resolve(dir, candidates, &recipient.domain).ok_or(reply::RELAY_DENIED)?;
    let class = sender_rule(dir, facts, &attributed, sender)?;
    Ok(MailOutcome::Accepted { attributed, class })
}

/// Connector state, tenant state and the relay rule for one sender.
fn sender_rule(
    dir: &Directory,
    facts: &ClientFacts,
    att: &Attributed,
    sender: Option<&Address>,
) -> Result<SenderClass, Reply> {
    let connector = dir.connector(att.connector_id).ok_or(reply::RELAY_DENIED)?;
    if !connector.enabled {
        return Err(reply::RELAY_DENIED);
    }
    if connector.blocked {
        return Err(reply::CONNECTOR_BLOCKED);
    }
    if connector.require_tls && !facts.tls {
        return Err(reply::MUST_STARTTLS);
    }
    let tenant = dir.tenant(att.tenant_id).ok_or(reply::RELAY_DENIED)?;
    if tenant.state.blocks_all() {
        return Err(reply::TENANT_BLOCKED);
    }
    let class = classify(dir, att.tenant_id, sender);
    match class {
        SenderClass::Registered => {
            if connector.restrict_domains_to_ips && !ip_in_ranges(&connector.ip_ranges, facts.ip) {
                return Err(reply::RELAY_DENIED);
            }
            if connector.restrict_domains_to_cert && att.method != Method::Certificate {
                return Err(reply::RELAY_DENIED);
            }
        }
        SenderClass::Unregistered | SenderClass::Null => {
            if tenant.state.blocks_unregistered() {
                return Err(reply::BLOCKED_UNREGISTERED);
            }
            if att.method != Method::Certificate && !connector.allow_unregistered {
                return Err(reply::RELAY_DENIED);
            }
        }
    }
    Ok(class)
}

/// DATA: is the header From (P2) domain outside the tenant's accepted domains while the
/// envelope sender (P1) is registered? A missing or unparsable From counts as a mismatch.
pub fn header_from_mismatch(
    dir: &Directory,
    tenant: TenantId,
    class: SenderClass,
    header_from_domain: Option<&str>,
) -> bool {
    if class != SenderClass::Registered {
        return false;
    }
    match header_from_domain {
        Some(d) => !dir.is_registered(tenant, &d.to_lowercase()),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_core::*;

    fn tenant(id: i64, state: TenantState) -> Tenant {
        Tenant {
            id,
            name: format!("t{id}"),
            state,
            admin_emails: vec![],
            created_at: 0,
        }
    }

    fn domain(id: i64, tenant_id: i64, d: &str, verified: bool, subs: bool) -> AcceptedDomain {
        AcceptedDomain {
            id,
            tenant_id,
            domain: d.into(),
            kind: DomainKind::Authoritative,
            match_subdomains: subs,
            verified,
            verification_token: "x".into(),
            created_at: 0,
            verified_at: None,
        }
    }

    fn connector(id: i64, tenant_id: i64, ips: &[&str]) -> Connector {
        Connector {
            id,
            tenant_id,
            name: format!("c{id}"),
            kind: ConnectorKind::OnPremises,
            ip_ranges: ips.iter().map(|s| s.parse().unwrap()).collect(),
            cert_name: None,
            auth_user: None,
            auth_password_hash: None,
            require_tls: false,
            enabled: true,
            allow_unregistered: false,
            restrict_domains_to_ips: false,
            restrict_domains_to_cert: false,
            blocked: false,
            created_at: 0,
            created_by: "test".into(),
            updated_at: 0,
            updated_by: "test".into(),
            last_used_at: None,
        }
    }

    fn facts(ip: &str) -> ClientFacts {
        ClientFacts {
            ip: ip.parse().unwrap(),
            tls: false,
            cert_names: vec![],
            auth_connector: None,
        }
    }

    fn addr(s: &str) -> Address {
        Address::parse(s, false).unwrap()
    }

    fn dir() -> Directory {
        let mut cert = connector(3, 2, &[]);
        cert.cert_name = Some("mx.beta.example".into());
        let mut auth = connector(4, 1, &["192.0.2.0/24"]);
        auth.auth_user = Some("alpha-app".into());
        auth.ip_ranges = vec![];
        Directory::new(DirectoryData {
            version: 1,
            tenants: vec![
                tenant(1, TenantState::Active),
                tenant(2, TenantState::Active),
                tenant(3, TenantState::Active),
            ],
            domains: vec![
                domain(1, 1, "alpha.example", true, false),
                domain(2, 2, "beta.example", true, true),
                domain(3, 1, "pending.example", false, false),
                domain(4, 3, "gamma.example", true, false),
            ],
            connectors: vec![
                connector(1, 1, &["127.0.0.2/32", "2001:db8::/48"]),
                connector(2, 2, &["127.0.0.3/32"]),
                cert,
                auth,
                // shared hosting address: tenants 1 and 3 both send from it
                connector(5, 1, &["127.0.1.0/24"]),
                connector(6, 3, &["127.0.1.7/32"]),
            ],
        })
    }

    #[test]
    fn ip_attribution_v4_v6_and_mapped() {
        let d = dir();
        for ip in ["127.0.0.2", "2001:db8::5", "::ffff:127.0.0.2"] {
            match attribute(&d, &facts(ip)) {
                Attribution::Attributed(a) => {
                    assert_eq!((a.tenant_id, a.connector_id, a.method), (1, 1, Method::Ip))
                }
                other => panic!("{ip}: {other:?}"),
            }
        }
        assert_eq!(
            attribute(&d, &facts("127.0.0.9")),
            Attribution::Unattributed
        );
        assert_eq!(
            attribute(&d, &facts("2001:db9::1")),
            Attribution::Unattributed
        );
    }

    #[test]
    fn cert_attribution_needs_an_accepted_domain() {
        let d = dir();
        let mut f = facts("198.51.100.1");
        f.cert_names = vec!["MX.beta.example".into()];
        assert!(matches!(
            attribute(&d, &f),
            Attribution::Attributed(Attributed {
                tenant_id: 2,
                method: Method::Certificate,
                ..
            })
        ));
        f.cert_names = vec!["mx.other.example".into()];
        assert_eq!(attribute(&d, &f), Attribution::Unattributed);
    }

    #[test]
    fn registered_relays_unregistered_refused_on_ip_connector() {
        let d = dir();
        let f = facts("127.0.0.2");
        let a = attribute(&d, &f);
        let ok = check_mail(&d, &f, &a, Some(&addr("a@alpha.example"))).unwrap();
        assert!(matches!(
            ok,
            MailOutcome::Accepted {
                class: SenderClass::Registered,
                ..
            }
        ));
        assert_eq!(
            check_mail(&d, &f, &a, Some(&addr("a@pending.example"))),
            Err(reply::RELAY_DENIED)
        );
        assert_eq!(check_mail(&d, &f, &a, None), Err(reply::RELAY_DENIED));
        // another tenant's domain is not registered for this one
        assert_eq!(
            check_mail(&d, &f, &a, Some(&addr("a@beta.example"))),
            Err(reply::RELAY_DENIED)
        );
    }

    #[test]
    fn cert_connector_relays_unregistered_with_class() {
        let d = dir();
        let mut f = facts("198.51.100.1");
        f.cert_names = vec!["mx.beta.example".into()];
        f.tls = true;
        let a = attribute(&d, &f);
        let out = check_mail(&d, &f, &a, Some(&addr("x@gmail.example"))).unwrap();
        assert!(matches!(
            out,
            MailOutcome::Accepted {
                class: SenderClass::Unregistered,
                ..
            }
        ));
        let out = check_mail(&d, &f, &a, Some(&addr("x@sub.beta.example"))).unwrap();
        assert!(matches!(
            out,
            MailOutcome::Accepted {
                class: SenderClass::Registered,
                ..
            }
        ));
        let out = check_mail(&d, &f, &a, None).unwrap();
        assert!(matches!(
            out,
            MailOutcome::Accepted {
                class: SenderClass::Null,
                ..
            }
        ));
    }

    #[test]
    fn shared_ip_disambiguated_by_mail_then_rcpt() {
        let d = dir();
        let f = facts("127.0.1.7");
        let a = attribute(&d, &f);
        assert!(matches!(a, Attribution::Candidates(_)));
        let out = check_mail(&d, &f, &a, Some(&addr("x@gamma.example"))).unwrap();
        assert!(matches!(
            out,
            MailOutcome::Accepted {
                attributed: Attributed { tenant_id: 3, .. },
                ..
            }
        ));
        let MailOutcome::PendingRcpt { candidates } =
            check_mail(&d, &f, &a, Some(&addr("x@elsewhere.example"))).unwrap()
        else {
            panic!()
        };
        // recipient domain of tenant 1 decides; the sender is still unregistered for it
        assert_eq!(
            check_rcpt(
                &d,
                &f,
                &candidates,
                Some(&addr("x@elsewhere.example")),
                &addr("r@alpha.example")
            ),
            Err(reply::RELAY_DENIED)
        );
        assert_eq!(
            check_rcpt(
                &d,
                &f,
                &candidates,
                Some(&addr("x@elsewhere.example")),
                &addr("r@nobody.example")
            ),
            Err(reply::RELAY_DENIED)
        );
    }

    #[test]
    fn states_and_flags() {
        let mut data = DirectoryData {
            version: 1,
            tenants: vec![tenant(1, TenantState::BlockedUnregistered)],
            domains: vec![domain(1, 1, "alpha.example", true, false)],
            connectors: vec![connector(1, 1, &["127.0.0.2/32"])],
        };
        data.connectors[0].allow_unregistered = true;
        let d = Directory::new(data.clone());
        let f = facts("127.0.0.2");
        let a = attribute(&d, &f);
        assert!(check_mail(&d, &f, &a, Some(&addr("a@alpha.example"))).is_ok());
        assert_eq!(
            check_mail(&d, &f, &a, Some(&addr("a@x.example"))),
            Err(reply::BLOCKED_UNREGISTERED)
        );
        assert_eq!(
            check_mail(&d, &f, &a, None),
            Err(reply::BLOCKED_UNREGISTERED)
        );

        data.tenants[0].state = TenantState::Active;
        let d2 = Directory::new(data.clone());
        assert!(matches!(
            check_mail(&d2, &f, &a, Some(&addr("a@x.example"))).unwrap(),
            MailOutcome::Accepted {
                class: SenderClass::Unregistered,
                ..
            }
        ));

        data.tenants[0].state = TenantState::BlockedAll;
        let d3 = Directory::new(data.clone());
        assert_eq!(
            check_mail(&d3, &f, &a, Some(&addr("a@alpha.example"))),
            Err(reply::TENANT_BLOCKED)
        );

        data.tenants[0].state = TenantState::Active;
        data.connectors[0].blocked = true;
        let d4 = Directory::new(data.clone());
        assert_eq!(
            check_mail(&d4, &f, &a, Some(&addr("a@alpha.example"))),
            Err(reply::CONNECTOR_BLOCKED)
        );

        data.connectors[0].blocked = false;
        data.connectors[0].require_tls = true;
        let d5 = Directory::new(data.clone());
        assert_eq!(
            check_mail(&d5, &f, &a, Some(&addr("a@alpha.example"))),
            Err(reply::MUST_STARTTLS)
        );
        let mut tls = f.clone();
        tls.tls = true;
        assert!(check_mail(&d5, &tls, &a, Some(&addr("a@alpha.example"))).is_ok());

        data.connectors[0].require_tls = false;
        data.connectors[0].enabled = false;
        let d6 = Directory::new(data);
        assert_eq!(attribute(&d6, &f), Attribution::Unattributed);
    }

    #[test]
    fn restrict_domains_to_ips_stops_leaked_auth() {
        let mut data = DirectoryData {
            version: 1,
            tenants: vec![tenant(1, TenantState::Active)],
            domains: vec![domain(1, 1, "alpha.example", true, false)],
            connectors: vec![connector(1, 1, &[])],
        };
        data.connectors[0].auth_user = Some("app".into());
        data.connectors[0].restrict_domains_to_ips = true;
        data.connectors[0].ip_ranges = vec![];
        let d = Directory::new(data);
        let mut f = facts("203.0.113.9");
        f.auth_connector = Some(1);
        let a = attribute(&d, &f);
        assert!(matches!(
            a,
            Attribution::Attributed(Attributed {
                method: Method::Auth,
                ..
            })
        ));
        assert_eq!(
            check_mail(&d, &f, &a, Some(&addr("a@alpha.example"))),
            Err(reply::RELAY_DENIED)
        );
    }

    #[test]
    fn header_mismatch() {
        let d = dir();
        assert!(!header_from_mismatch(
            &d,
            1,
            SenderClass::Registered,
            Some("Alpha.Example")
        ));
        assert!(header_from_mismatch(
            &d,
            1,
            SenderClass::Registered,
            Some("evil.example")
        ));
        assert!(header_from_mismatch(&d, 1, SenderClass::Registered, None));
        assert!(!header_from_mismatch(
            &d,
            1,
            SenderClass::Unregistered,
            Some("evil.example")
        ));
    }
}
