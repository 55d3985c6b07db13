//! Input rules. Each check names the request field it judged; the same rules as the CLI.

use ipnet::IpNet;
use relayward_core::{normalize_domain, Address, ConnectorKind, DomainKind};

use crate::problem::ApiError;

/// A domain as the store keeps it: IDNA (UTS 46) to A-labels, lowercase, LDH labels, no
/// trailing dot.
pub fn domain(field: &str, input: &str) -> Result<String, ApiError> {
    let input = input.trim();
    if input.is_empty() {
        return Err(ApiError::invalid(field, "the domain is empty"));
    }
    if input.len() > 1024 {
        return Err(ApiError::invalid(field, "the domain is too long"));
    }
    if input.ends_with('.') {
        return Err(ApiError::invalid(
            field,
            format!("{input:?}: write the domain without the trailing dot"),
        ));
    }
    let ascii = idna::domain_to_ascii(input).map_err(|_| {
        ApiError::invalid(
            field,
            format!("{input:?} is not a valid internationalized domain name"),
        )
    })?;
    let normalized = normalize_domain(&ascii).map_err(|e| match e {
        relayward_core::Error::InvalidDomain(_, why) => {
            ApiError::invalid(field, format!("{input:?} is not a valid domain: {why}"))
        }
        other => ApiError::invalid(field, other.to_string()),
    })?;
    if !normalized.is_ascii() {
        return Err(ApiError::invalid(
            field,
            format!("{input:?} is not a valid domain"),
        ));
    }
    Ok(normalized)
}

/// A CIDR range without host bits, or a single address (taken as /32 or /128).
pub fn cidr(field: &str, input: &str) -> Result<IpNet, ApiError> {
    let s = input.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(ApiError::invalid(
                field,
                format!("{s}: host bits are set (did you mean {}?)", net.trunc()),
            ));
        }
        return Ok(net);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(ApiError::invalid(
        field,
        format!("{s:?} is not a CIDR range or an IP address"),
    ))
}

/// An email address (RFC 5321 mailbox); returned with its domain lowercased.
pub fn email(field: &str, input: &str) -> Result<String, ApiError> {
    Address::parse(input.trim(), true)
        .map(|a| a.to_string())
        .map_err(|e| match e {
            relayward_core::Error::InvalidAddress(value, why) => ApiError::invalid(
                field,
                format!("{value:?} is not a valid email address: {why}"),
            ),
            other => ApiError::invalid(field, other.to_string()),
        })
}

pub fn tenant_name(field: &str, name: &str) -> Result<String, ApiError> {
    relayward_policy::ownership::tenant_name(name)
        .map_err(|e| ApiError::invalid(field, e.to_string()))?;
    Ok(name.to_string())
}

/// A free-form name or label: 1 to `max` characters, none of them control characters, not
/// only spaces. Returned trimmed.
pub fn text(field: &str, input: &str, max: usize) -> Result<String, ApiError> {
    let t = input.trim();
    if t.is_empty() || t.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if t.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(t.to_string())
}

/// An optional comment: at most `max` characters; blank is none.
pub fn comment(field: &str, input: Option<&str>, max: usize) -> Result<Option<String>, ApiError> {
    match input.map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) if t.chars().count() > max => Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        )),
        Some(t) if t.chars().any(|c| c.is_control() && c != '\n') => Err(ApiError::invalid(
            field,
            "must not contain control characters",
        )),
        Some(t) => Ok(Some(t.to_string())),
    }
}

/// SMTP AUTH user name: 1 to 128 characters, no spaces or control characters.
pub fn auth_user(field: &str, input: &str) -> Result<String, ApiError> {
    if input.is_empty()
        || input.chars().count() > 128
        || input.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ApiError::invalid(
            field,
            "an auth user must be 1 to 128 characters without spaces",
        ));
    }
    Ok(input.to_string())
}

pub fn auth_password(field: &str, input: &str) -> Result<(), ApiError> {
    let n = input.chars().count();
    if n < 12 {
        return Err(ApiError::invalid(
            field,
            "the password must be at least 12 characters",
        ));
    }
    if n > 1024 {
        return Err(ApiError::invalid(
            field,
            "the password must be at most 1024 characters",
        ));
    }
    Ok(())
}

/// `internal-relay` as in the CLI; `internal_relay` (the model's serde spelling) too.
pub fn domain_kind(field: &str, input: &str) -> Result<DomainKind, ApiError> {
    input
        .replace('_', "-")
        .parse()
        .map_err(|_| ApiError::invalid(field, "must be authoritative or internal-relay"))
}

/// `on-premises` as in the CLI; `on_premises` too.
pub fn connector_kind(field: &str, input: &str) -> Result<ConnectorKind, ApiError> {
    input
        .replace('_', "-")
        .parse()
        .map_err(|_| ApiError::invalid(field, "must be on-premises or partner"))
}

/// A queue id as the spool writes them (letters and digits).
pub fn queue_id(field: &str, input: &str) -> Result<String, ApiError> {
    if input.is_empty()
        || input.len() > 64
        || !input
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(ApiError::bad_request(
            field,
            format!("{input:?} is not a queue id"),
        ));
    }
    Ok(input.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains() {
        assert_eq!(domain("d", "Example.COM").unwrap(), "example.com");
        assert_eq!(
            domain("d", "bücher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(
            domain("d", "BÜCHER.example").unwrap(),
            "xn--bcher-kva.example"
        );
        for bad in [
            "",
            "example.com.",
            "localhost",
            "exa mple.com",
            "a_b.example",
            "-a.example",
            "a..example",
            "1.2.3.4",
        ] {
            let e = domain("domain", bad).unwrap_err();
            assert_eq!(e.field(), Some("domain"), "{bad}");
            assert_eq!(e.status().as_u16(), 422, "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(
            cidr("ip", "192.0.2.0/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(cidr("ip", "192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(
            cidr("ip", "2001:db8::/48").unwrap().to_string(),
            "2001:db8::/48"
        );
        let e = cidr("ip_ranges[0]", "192.0.2.1/24").unwrap_err();
        assert!(e.detail().contains("192.0.2.0/24"), "{}", e.detail());
        assert_eq!(e.field(), Some("ip_ranges[0]"));
        assert!(cidr("ip", "192.0.2.0/33").is_err());
        assert!(cidr("ip", "example.com").is_err());
    }

    #[test]
    fn names_and_addresses() {
        assert!(tenant_name("name", "acme-1.corp_x").is_ok());
        assert!(tenant_name("name", "123").is_err());
        assert!(tenant_name("name", "a b").is_err());
        assert!(tenant_name("name", &"a".repeat(65)).is_err());
        assert_eq!(
            email("e", "Admin@Example.COM").unwrap(),
            "Admin@example.com"
        );
        assert!(email("e", "not an address").is_err());
        assert!(text("label", "  ", 10).is_err());
        assert!(text("label", "a\u{7}", 10).is_err());
        assert_eq!(text("label", " ok ", 10).unwrap(), "ok");
        assert_eq!(
            domain_kind("k", "internal_relay").unwrap(),
            DomainKind::InternalRelay
        );
        assert_eq!(
            connector_kind("k", "on-premises").unwrap(),
            ConnectorKind::OnPremises
        );
        assert!(connector_kind("k", "cloud").is_err());
    }
}
