//! Connector certificate names (DESIGN.md "Attribution").
//!
//! Hybrid servers present host certificates (`mail.contoso.example`, `*.contoso.example`),
//! rarely a bare domain. A connector's certificate name may be a verified accepted domain of its
//! tenant, a host name under one, or a wildcard `*.<name>` matching exactly one label. The name
//! is only an identity: it never makes a host name a sender domain (that is `match_subdomains`
//! on the accepted domain, and nothing else).

/// A connector name's base: `contoso.example` for `*.contoso.example`, itself otherwise.
pub fn base(name: &str) -> &str {
    name.strip_prefix("*.").unwrap_or(name)
}

/// Is `name` equal to `domain` or a name under it (label boundary)?
pub fn is_under(name: &str, domain: &str) -> bool {
    name == domain
        || (name.len() > domain.len()
            && name.ends_with(domain)
            && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
}

/// Is the connector name `name` under one of `verified` (a tenant's verified accepted domains)?
pub fn covered<'a>(name: &str, mut verified: impl Iterator<Item = &'a str>) -> bool {
    let b = base(name);
    verified.any(|d| is_under(b, d))
}

/// Does a presented (verified, lowercase) certificate name match a connector's name? Exact
/// match, or a connector wildcard `*.x` and a presented `label.x` with one label in place of
/// the `*` (RFC 6125 section 6.4.3: the wildcard covers one label only).
pub fn matches(presented: &str, connector_name: &str) -> bool {
    if presented == connector_name {
        return true;
    }
    match connector_name.strip_prefix("*.") {
        Some(rest) => presented
            .split_once('.')
            .is_some_and(|(label, parent)| !label.is_empty() && label != "*" && parent == rest),
        None => false,
    }
}

/// The connector names a presented certificate name could match: itself and the wildcard of
/// its parent (`mail.contoso.example` -> `*.contoso.example`).
pub fn lookup_keys(presented: &str) -> impl Iterator<Item = String> + '_ {
    let wildcard = presented
        .split_once('.')
        .filter(|(label, parent)| !label.is_empty() && *label != "*" && parent.contains('.'))
        .map(|(_, parent)| format!("*.{parent}"));
    std::iter::once(presented.to_string()).chain(wildcard)
}

/// Why a connector certificate name is refused; the text names it and says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertNameError {
    #[error("{name:?}: a wildcard is allowed only as the whole first label (*.example.com)")]
    MisplacedWildcard { name: String },
    #[error("{name:?}: needs at least two labels")]
    TooFewLabels { name: String },
    #[error("{name:?}: longer than 253 characters")]
    TooLong { name: String },
    #[error("{name:?}: {label:?} is not a DNS label (lowercase letters, digits, hyphens)")]
    BadLabel { name: String, label: String },
}

/// For callers that carry the reason as text (the admin API's validation details).
/// Syntax of a connector certificate name, lowercase: a DNS name of at least two labels,
/// optionally `*.` followed by one.
pub fn validate(name: &str) -> Result<(), CertNameError> {
    let b = base(name);
    if b.contains('*') {
        return Err(CertNameError::MisplacedWildcard { name: name.into() });
    }
    if !b.contains('.') {
        return Err(CertNameError::TooFewLabels { name: name.into() });
    }
    if b.len() > 253 {
        return Err(CertNameError::TooLong { name: name.into() });
    }
    for label in b.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(CertNameError::BadLabel {
                name: name.into(),
                label: label.into(),
            });
        }
    }
    Ok(())
}

/// Whether a tenant's connector may have a certificate name, as the CLI and the admin API check
/// it when a connector is created or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Under a verified accepted domain of the tenant: it attributes.
    Covered,
    /// Allowed, but under no verified accepted domain of the tenant yet: the connector does not
    /// attribute by certificate until one is verified. The text is the warning to show.
    Uncovered(String),
    /// Refused: another tenant has it, or it is under another tenant's domain.
    Conflict(String),
}

/// One definition of the rule for both admin surfaces. `except`: the connector being changed.
pub fn check_claim(
    dir: &crate::Directory,
    tenant: relayward_core::TenantId,
    name: &str,
    except: Option<relayward_core::ConnectorId>,
) -> Claim {
    if let Some(why) = dir.cert_name_conflict(tenant, name, except) {
        return Claim::Conflict(why);
    }
    if dir.cert_name_covered(tenant, name) {
        Claim::Covered
    } else {
        Claim::Uncovered(format!(
            "certificate name {name} is under no verified accepted domain of this tenant: the connector will not recognise servers by certificate until {} (or a domain it is under) is added and verified",
            base(name)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_and_wildcards() {
        assert!(matches("mail.contoso.example", "mail.contoso.example"));
        assert!(matches("mail.contoso.example", "*.contoso.example"));
        assert!(!matches("a.mail.contoso.example", "*.contoso.example"));
        assert!(!matches("contoso.example", "*.contoso.example"));
        assert!(!matches("*.contoso.example", "mail.contoso.example"));
        assert!(matches("*.contoso.example", "*.contoso.example"));
        assert!(!matches("mail.contoso.example.evil", "*.contoso.example"));
        assert!(is_under("mail.contoso.example", "contoso.example"));
        assert!(is_under("contoso.example", "contoso.example"));
        assert!(!is_under("evilcontoso.example", "contoso.example"));
        let keys: Vec<String> = lookup_keys("mail.contoso.example").collect();
        assert_eq!(keys, ["mail.contoso.example", "*.contoso.example"]);
        let keys: Vec<String> = lookup_keys("contoso.example").collect();
        assert_eq!(keys, ["contoso.example"]);
    }

    #[test]
    fn syntax() {
        assert!(validate("mail.contoso.example").is_ok());
        assert!(validate("*.contoso.example").is_ok());
        assert!(validate("m*.contoso.example").is_err());
        assert!(validate("*.*.contoso.example").is_err());
        assert!(validate("*.example").is_err());
        assert!(validate("localhost").is_err());
        assert!(validate("a_b.example").is_err());
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let text = |n: &str| validate(n).unwrap_err().to_string();
        assert_eq!(
            text("m*.contoso.example"),
            "\"m*.contoso.example\": a wildcard is allowed only as the whole first label \
             (*.example.com)"
        );
        assert_eq!(
            text("localhost"),
            "\"localhost\": needs at least two labels"
        );
        assert_eq!(
            text(&format!("{}.example", "a.".repeat(130))),
            format!(
                "{:?}: longer than 253 characters",
                format!("{}.example", "a.".repeat(130))
            )
        );
        assert_eq!(
            validate("a_b.example"),
            Err(CertNameError::BadLabel {
                name: "a_b.example".into(),
                label: "a_b".into()
            })
        );
        assert_eq!(
            text("a_b.example"),
            "\"a_b.example\": \"a_b\" is not a DNS label (lowercase letters, digits, hyphens)"
        );
    }
}
