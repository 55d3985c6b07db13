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
    /// A client certificate that was presented but did not verify: its names and why. It
    /// attributes nothing; refusals name it so the tenant can fix it.
    pub cert_unverified: Option<(Vec<String>, String)>,
    /// The last AUTH user name tried without success (never the password).
    pub auth_user_tried: Option<String>,
}

impl ClientFacts {
    /// A client known by its address only.
    pub fn new(ip: IpAddr) -> ClientFacts {
        ClientFacts {
            ip,
            tls: false,
            cert_names: Vec::new(),
            auth_connector: None,
            cert_unverified: None,
            auth_user_tried: None,
        }
    }
}

/// Why the relay rule refused a transaction: a stable, machine-readable code, given with the
/// reply in trace events, logs and `diagnose`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// No connector recognised the session (certificate, AUTH or address).
    NotAttributed,
    /// Several tenants' address connectors cover the client and neither the MAIL FROM nor the
    /// RCPT TO domain is an accepted domain of exactly one of them.
    AmbiguousAttribution,
    ConnectorDisabled,
    ConnectorBlocked,
    TlsRequired,
    TenantBlockedAll,
    /// The tenant is blocked from unregistered domains and the sender is unregistered or null.
    BlockedUnregistered,
    /// An unregistered or null sender through a connector that is neither a certificate
    /// connector nor marked `allow_unregistered`.
    UnregisteredNotAllowed,
    /// `restrict_domains_to_ips`: a registered sender from outside the connector's ranges.
    RegisteredOutsideConnectorIps,
    /// `restrict_domains_to_cert`: a registered sender without certificate attribution.
    RegisteredNeedsCertificate,
    /// The tenant is blocked from unregistered domains, the envelope sender is registered but
    /// the header From (what recipients see) is not an accepted domain of the tenant.
    BlockedUnregisteredHeaderFrom,
    /// The recipient is on the tenant's suppression list or the operator's global one.
    Suppressed,
}

impl RefusalReason {
    /// Every reason, for reports and metrics labels.
    pub const ALL: &'static [RefusalReason] = &[
        RefusalReason::NotAttributed,
        RefusalReason::AmbiguousAttribution,
        RefusalReason::ConnectorDisabled,
        RefusalReason::ConnectorBlocked,
        RefusalReason::TlsRequired,
        RefusalReason::TenantBlockedAll,
        RefusalReason::BlockedUnregistered,
        RefusalReason::UnregisteredNotAllowed,
        RefusalReason::RegisteredOutsideConnectorIps,
        RefusalReason::RegisteredNeedsCertificate,
        RefusalReason::BlockedUnregisteredHeaderFrom,
        RefusalReason::Suppressed,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            RefusalReason::NotAttributed => "not_attributed",
            RefusalReason::AmbiguousAttribution => "ambiguous_attribution",
            RefusalReason::ConnectorDisabled => "connector_disabled",
            RefusalReason::ConnectorBlocked => "connector_blocked",
            RefusalReason::TlsRequired => "tls_required",
            RefusalReason::TenantBlockedAll => "tenant_blocked_all",
            RefusalReason::BlockedUnregistered => "blocked_unregistered",
            RefusalReason::UnregisteredNotAllowed => "unregistered_sender_not_allowed",
            RefusalReason::RegisteredOutsideConnectorIps => {
                "registered_sender_outside_connector_ips"
            }
            RefusalReason::RegisteredNeedsCertificate => "registered_sender_needs_certificate",
            RefusalReason::BlockedUnregisteredHeaderFrom => "blocked_unregistered_header_from",
            RefusalReason::Suppressed => "suppressed",
        }
    }

    /// The reply this reason is answered with (DESIGN.md "Replies").
    pub fn reply(&self) -> Reply {
        match self {
            RefusalReason::ConnectorBlocked => reply::CONNECTOR_BLOCKED,
            RefusalReason::TlsRequired => reply::MUST_STARTTLS,
            RefusalReason::TenantBlockedAll => reply::TENANT_BLOCKED,
            RefusalReason::BlockedUnregistered | RefusalReason::BlockedUnregisteredHeaderFrom => {
                reply::BLOCKED_UNREGISTERED
            }
            RefusalReason::Suppressed => reply::RECIPIENT_SUPPRESSED,
            RefusalReason::NotAttributed
            | RefusalReason::AmbiguousAttribution
            | RefusalReason::ConnectorDisabled
            | RefusalReason::UnregisteredNotAllowed
            | RefusalReason::RegisteredOutsideConnectorIps
            | RefusalReason::RegisteredNeedsCertificate => reply::RELAY_DENIED,
        }
    }
}

/// A refused MAIL FROM or RCPT TO: the reply, the reason, and what was known when deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reply: Reply,
    pub reason: RefusalReason,
    /// The tenant and connector, when attribution got that far.
    pub attributed: Option<Attributed>,
    pub class: Option<SenderClass>,
}

impl Refusal {
    pub(crate) fn new(
        reason: RefusalReason,
        attributed: Option<Attributed>,
        class: Option<SenderClass>,
    ) -> Self {
        Refusal {
            reply: reason.reply(),
            reason,
            attributed,
            class,
        }
    }
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
) -> Result<MailOutcome, Refusal> {
    let attributed = match attribution {
        Attribution::Unattributed => {
            return Err(Refusal::new(RefusalReason::NotAttributed, None, None))
        }
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
) -> Result<MailOutcome, Refusal> {
    let attributed = resolve(dir, candidates, &recipient.domain)
        .ok_or_else(|| Refusal::new(RefusalReason::AmbiguousAttribution, None, None))?;
    let class = sender_rule(dir, facts, &attributed, sender)?;
    Ok(MailOutcome::Accepted { attributed, class })
}

/// Connector state, tenant state and the relay rule for one sender.
fn sender_rule(
    dir: &Directory,
    facts: &ClientFacts,
    att: &Attributed,
    sender: Option<&Address>,
) -> Result<SenderClass, Refusal> {
    let refuse = |reason, class| Err(Refusal::new(reason, Some(*att), class));
    let Some(connector) = dir.connector(att.connector_id) else {
        return refuse(RefusalReason::NotAttributed, None);
    };
    if !connector.enabled {
        return refuse(RefusalReason::ConnectorDisabled, None);
    }
    if connector.blocked {
        return refuse(RefusalReason::ConnectorBlocked, None);
    }
    if connector.require_tls && !facts.tls {
        return refuse(RefusalReason::TlsRequired, None);
    }
    let Some(tenant) = dir.tenant(att.tenant_id) else {
        return refuse(RefusalReason::NotAttributed, None);
    };
    if tenant.state.blocks_all() {
        return refuse(RefusalReason::TenantBlockedAll, None);
    }
    let class = classify(dir, att.tenant_id, sender);
    match class {
        SenderClass::Registered => {
            if connector.restrict_domains_to_ips && !ip_in_ranges(&connector.ip_ranges, facts.ip) {
                return refuse(RefusalReason::RegisteredOutsideConnectorIps, Some(class));
            }
            if connector.restrict_domains_to_cert && att.method != Method::Certificate {
                return refuse(RefusalReason::RegisteredNeedsCertificate, Some(class));
            }
        }
        SenderClass::Unregistered | SenderClass::Null => {
            if tenant.state.blocks_unregistered() {
                return refuse(RefusalReason::BlockedUnregistered, Some(class));
            }
            if att.method != Method::Certificate && !connector.allow_unregistered {
                return refuse(RefusalReason::UnregisteredNotAllowed, Some(class));
            }
        }
    }
    Ok(class)
}

/// The facts behind a refusal, one `key=value` line (values with spaces quoted by brackets), for
/// the trace event's detail, the log and `diagnose`: client address, TLS, the certificate
/// presented and whether it verified, the AUTH user tried, every connector considered and why
/// it was passed over, the sender class. Never a secret. Computed only when refusing.
pub fn explain(dir: &Directory, facts: &ClientFacts, refusal: &Refusal) -> String {
    let mut out = format!(
        "reason={} ip={} tls={}",
        refusal.reason.as_str(),
        facts.ip,
        if facts.tls { "yes" } else { "no" }
    );
    match (&facts.cert_unverified, facts.cert_names.is_empty()) {
        (Some((names, why)), _) => {
            out.push_str(&format!(" cert=[{} not verified: {why}]", names.join(",")))
        }
        (None, false) => out.push_str(&format!(" cert=[{} verified]", facts.cert_names.join(","))),
        (None, true) => out.push_str(" cert=none"),
    }
    match (&facts.auth_connector, &facts.auth_user_tried) {
        (Some(id), _) => out.push_str(&format!(" auth=connector#{id}")),
        (None, Some(u)) => out.push_str(&format!(" auth=[{u} failed]")),
        (None, None) => out.push_str(" auth=none"),
    }
    if let Some(a) = refusal.attributed {
        let tenant = dir.tenant(a.tenant_id).map_or("?", |t| t.name.as_str());
        out.push_str(&format!(
            " tenant={tenant} connector=#{} method={}",
            a.connector_id,
            a.method.as_str()
        ));
    }
    if let Some(class) = refusal.class {
        out.push_str(&format!(" sender_class={}", class.as_str()));
    }
    let mut considered = considered(dir, facts);
    if considered.len() > MAX_CONSIDERED {
        let more = considered.len() - MAX_CONSIDERED;
        considered.truncate(MAX_CONSIDERED);
        considered.push(format!("and {more} more"));
    }
    if !considered.is_empty() {
        out.push_str(&format!(" considered=[{}]", considered.join("; ")));
    }
    out
}

/// Connectors named in one explanation at most (a shared range can cover hundreds).
const MAX_CONSIDERED: usize = 12;

/// Whose refusal this is, for the trace: the attributed tenant and connector; else the one
/// tenant whose connectors have a certificate name the client presented (verified or not) or
/// the AUTH user it tried, so that tenant's admin sees why its server is refused.
pub fn refusal_owner(
    dir: &Directory,
    facts: &ClientFacts,
    refusal: &Refusal,
) -> Option<(TenantId, Option<ConnectorId>)> {
    if let Some(a) = refusal.attributed {
        return Some((a.tenant_id, Some(a.connector_id)));
    }
    let mut names = facts.cert_names.clone();
    if let Some((presented, _)) = &facts.cert_unverified {
        names.extend(presented.iter().cloned());
    }
    let mut found: Vec<&relayward_core::Connector> = dir.cert_candidates(&names);
    if let Some(c) = facts
        .auth_user_tried
        .as_deref()
        .and_then(|u| dir.auth_connector(u))
    {
        found.push(c);
    }
    let first = found.first()?;
    if found.iter().all(|c| c.tenant_id == first.tenant_id) {
        let connector = (found.len() == 1).then_some(first.id);
        return Some((first.tenant_id, connector));
    }
    None
}

/// Each connector that could have recognised the session, and why it did or did not.
fn considered(dir: &Directory, facts: &ClientFacts) -> Vec<String> {
    let mut out = Vec::new();
    let label = |c: &relayward_core::Connector| {
        let tenant = dir.tenant(c.tenant_id).map_or("?", |t| t.name.as_str());
        format!("#{} {} of {tenant}", c.id, c.name)
    };
    if !facts.cert_names.is_empty() {
        let found = dir.cert_candidates(&facts.cert_names);
        if found.is_empty() {
            out.push(format!(
                "no connector has certificate name {}",
                facts.cert_names.join(",")
            ));
        }
        let usable = dir.cert_connectors(&facts.cert_names, facts.ip);
        let tenants: std::collections::HashSet<TenantId> =
            usable.iter().map(|c| c.tenant_id).collect();
        for c in found {
            let name = c.cert_name.as_deref().unwrap_or("");
            let why = if !c.enabled {
                "disabled".to_string()
            } else if !dir.cert_name_covered(c.tenant_id, name) {
                format!(
                    "certificate name {name} is under no verified accepted domain of its tenant"
                )
            } else if !crate::directory::ip_allowed(c, facts.ip) {
                "client address not in its IP ranges".to_string()
            } else if tenants.len() > 1 {
                "connectors of several tenants match this certificate".to_string()
            } else {
                format!("matched by certificate {name}")
            };
            out.push(format!("{} (certificate {name}): {why}", label(c)));
        }
    }
    if let Some(user) = &facts.auth_user_tried {
        match dir.auth_connector(user) {
            Some(c) => out.push(format!(
                "{} (AUTH user {user}): authentication failed",
                label(c)
            )),
            None => out.push(format!("no connector has AUTH user {user}")),
        }
    }
    if let Some(c) = facts.auth_connector.and_then(|id| dir.connector(id)) {
        let why = if !c.enabled {
            "disabled"
        } else if !crate::directory::ip_allowed(c, facts.ip) {
            "client address not in its IP ranges"
        } else {
            "matched by AUTH"
        };
        out.push(format!("{} (AUTH): {why}", label(c)));
    }
    let by_ip = dir.ip_candidates(facts.ip);
    if by_ip.is_empty() && facts.cert_names.is_empty() && facts.auth_connector.is_none() {
        out.push(format!("no connector covers client address {}", facts.ip));
    }
    let tenants: std::collections::HashSet<TenantId> = by_ip
        .iter()
        .filter(|c| c.enabled)
        .map(|c| c.tenant_id)
        .collect();
    for c in by_ip {
        let why = if !c.enabled {
            "disabled"
        } else if tenants.len() > 1 {
            "address connectors of several tenants cover this client; the MAIL FROM or RCPT TO domain decides"
        } else {
            "matched by client address"
        };
        out.push(format!("{} (address): {why}", label(c)));
    }
    out
}

/// End of DATA, where only the header From can decide: a tenant blocked from unregistered
/// domains may not send under a header From that is none of its accepted domains, even with a
/// registered envelope sender (recipients see P2). `Ok(mismatch)` otherwise.
pub fn check_header_from(
    dir: &Directory,
    attributed: &Attributed,
    class: SenderClass,
    header_from_domain: Option<&str>,
) -> Result<bool, Refusal> {
    let mismatch = header_from_mismatch(dir, attributed, class, header_from_domain);
    let blocked = dir
        .tenant(attributed.tenant_id)
        .is_some_and(|t| t.state.blocks_unregistered());
    if mismatch && blocked {
        return Err(Refusal::new(
            RefusalReason::BlockedUnregisteredHeaderFrom,
            Some(*attributed),
            Some(class),
        ));
    }
    Ok(mismatch)
}

/// DATA: is the header From (P2) domain outside the tenant's accepted domains while the
/// envelope sender (P1) is registered, and not declared legitimate for the connector? A missing
/// or unparsable From counts as a mismatch.
pub fn header_from_mismatch(
    dir: &Directory,
    attributed: &Attributed,
    class: SenderClass,
    header_from_domain: Option<&str>,
) -> bool {
    if class != SenderClass::Registered {
        return false;
    }
    match header_from_domain {
        Some(d) => {
            let d = d.to_lowercase();
            !dir.is_registered(attributed.tenant_id, &d)
                && !dir.header_from_allowed(attributed.tenant_id, attributed.connector_id, &d)
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use relayward_core::*;

    fn check_mail(
        dir: &Directory,
        facts: &ClientFacts,
        attribution: &Attribution,
        sender: Option<&Address>,
    ) -> Result<MailOutcome, Reply> {
        super::check_mail(dir, facts, attribution, sender).map_err(|r| r.reply)
    }

    fn check_rcpt(
        dir: &Directory,
        facts: &ClientFacts,
        candidates: &[ConnectorId],
        sender: Option<&Address>,
        recipient: &Address,
    ) -> Result<MailOutcome, Reply> {
        super::check_rcpt(dir, facts, candidates, sender, recipient).map_err(|r| r.reply)
    }

    fn tenant(id: i64, state: TenantState) -> Tenant {
        Tenant {
            id: TenantId(id),
            name: format!("t{id}"),
            state,
            admin_emails: vec![],
            created_at: Timestamp(0),
        }
    }

    fn domain(id: i64, tenant_id: i64, d: &str, verified: bool, subs: bool) -> AcceptedDomain {
        AcceptedDomain {
            id: DomainId(id),
            tenant_id: TenantId(tenant_id),
            domain: d.into(),
            kind: DomainKind::Authoritative,
            match_subdomains: subs,
            verified,
            verification_token: "x".into(),
            created_at: Timestamp(0),
            verified_at: None,
        }
    }

    fn connector(id: i64, tenant_id: i64, ips: &[&str]) -> Connector {
        Connector {
            id: ConnectorId(id),
            tenant_id: TenantId(tenant_id),
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
            created_at: Timestamp(0),
            created_by: "test".into(),
            updated_at: Timestamp(0),
            updated_by: "test".into(),
            last_used_at: None,
        }
    }

    fn facts(ip: &str) -> ClientFacts {
        ClientFacts::new(ip.parse().unwrap())
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
            header_from_allowed: Vec::new(),
        })
    }

    #[test]
    fn ip_attribution_v4_v6_and_mapped() {
        let d = dir();
        for ip in ["127.0.0.2", "2001:db8::5", "::ffff:127.0.0.2"] {
            match attribute(&d, &facts(ip)) {
                Attribution::Attributed(a) => {
                    assert_eq!(
                        (a.tenant_id, a.connector_id, a.method),
                        (TenantId(1), ConnectorId(1), Method::Ip)
                    )
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
                tenant_id: TenantId(2),
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
                attributed: Attributed {
                    tenant_id: TenantId(3),
                    ..
                },
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
            header_from_allowed: Vec::new(),
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
            header_from_allowed: Vec::new(),
        };
        data.connectors[0].auth_user = Some("app".into());
        data.connectors[0].restrict_domains_to_ips = true;
        data.connectors[0].ip_ranges = vec![];
        let d = Directory::new(data);
        let mut f = facts("203.0.113.9");
        f.auth_connector = Some(ConnectorId(1));
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
    fn explanations_name_the_facts_and_stay_bounded() {
        let tenants: Vec<Tenant> = (1..=30).map(|i| tenant(i, TenantState::Active)).collect();
        let connectors: Vec<Connector> = (1..=30)
            .map(|i| connector(i, i, &["192.0.2.0/24"]))
            .collect();
        let d = Directory::new(DirectoryData {
            version: 1,
            tenants,
            domains: vec![domain(1, 1, "alpha.example", true, false)],
            connectors,
            header_from_allowed: Vec::new(),
        });
        let mut f = facts("192.0.2.9");
        f.cert_unverified = Some((vec!["mx.alpha.example".into()], "expired".into()));
        f.auth_user_tried = Some("printer".into());
        let a = attribute(&d, &f);
        let out = super::check_rcpt(
            &d,
            &f,
            match &a {
                Attribution::Candidates(c) => c,
                other => panic!("{other:?}"),
            },
            Some(&addr("x@outside.example")),
            &addr("r@dest.example"),
        );
        let refusal = out.unwrap_err();
        assert_eq!(refusal.reason, RefusalReason::AmbiguousAttribution);
        let text = explain(&d, &f, &refusal);
        assert!(
            text.starts_with("reason=ambiguous_attribution ip=192.0.2.9 tls=no"),
            "{text}"
        );
        assert!(
            text.contains("cert=[mx.alpha.example not verified: expired]"),
            "{text}"
        );
        assert!(text.contains("auth=[printer failed]"), "{text}");
        assert!(
            text.contains("no connector has AUTH user printer"),
            "{text}"
        );
        assert!(text.contains("and 19 more"), "{text}");
        assert!(text.len() < 2000, "{}", text.len());
    }

    #[test]
    fn header_mismatch() {
        let mut data = DirectoryData {
            version: 1,
            tenants: vec![tenant(1, TenantState::Active)],
            domains: vec![domain(1, 1, "alpha.example", true, false)],
            connectors: vec![connector(1, 1, &["127.0.0.2/32"]), connector(2, 1, &[])],
            header_from_allowed: Vec::new(),
        };
        let via = |c: i64| Attributed {
            tenant_id: TenantId(1),
            connector_id: ConnectorId(c),
            method: Method::Ip,
        };
        let d = Directory::new(data.clone());
        let reg = SenderClass::Registered;
        assert!(!header_from_mismatch(
            &d,
            &via(1),
            reg,
            Some("Alpha.Example")
        ));
        assert!(header_from_mismatch(
            &d,
            &via(1),
            reg,
            Some("partner.example")
        ));
        assert!(header_from_mismatch(&d, &via(1), reg, None));
        let unreg = SenderClass::Unregistered;
        assert!(!header_from_mismatch(
            &d,
            &via(1),
            unreg,
            Some("evil.example")
        ));
        // Declared for connector 1 only: aligned there, a mismatch elsewhere.
        data.header_from_allowed.push(HeaderFromAllowed {
            tenant_id: TenantId(1),
            domain: "partner.example".into(),
            connector_id: Some(ConnectorId(1)),
            declared_at: Timestamp(0),
            declared_by: "t".into(),
        });
        let d = Directory::new(data);
        assert!(!header_from_mismatch(
            &d,
            &via(1),
            reg,
            Some("Partner.example")
        ));
        assert!(header_from_mismatch(
            &d,
            &via(2),
            reg,
            Some("partner.example")
        ));
    }
}
