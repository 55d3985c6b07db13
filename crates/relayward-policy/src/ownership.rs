//! Who may name what: the rules for tenant names, and how a tenant proves it owns a domain (a
//! DNS TXT record `relayward-verification=<token>` at the domain itself).

/// What the TXT record's value starts with.
pub const VERIFICATION_PREFIX: &str = "relayward-verification=";

/// The TXT record value that proves ownership with `token`.
pub fn verification_value(token: &str) -> String {
    format!("{VERIFICATION_PREFIX}{token}")
}

/// What the domain's TXT records say about its ownership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxtCheck {
    /// The expected record is published.
    Verified,
    /// The domain has no TXT record at all.
    NotFound,
    /// TXT records, none of them the expected one; `other_token`: one of them is a
    /// verification record with another token (a copy-paste of another domain's, say).
    WrongToken { other_token: bool },
}

/// Judges the TXT `records` of a domain whose verification token is `token`. Each record's
/// strings are expected joined, as resolvers hand them; surrounding blanks are ignored.
pub fn check_txt(records: &[String], token: &str) -> TxtCheck {
    let expected = verification_value(token);
    if records.iter().any(|txt| txt.trim() == expected) {
        TxtCheck::Verified
    } else if records.is_empty() {
        TxtCheck::NotFound
    } else {
        TxtCheck::WrongToken {
            other_token: records
                .iter()
                .any(|txt| txt.trim().starts_with(VERIFICATION_PREFIX)),
        }
    }
}

/// Why a tenant name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TenantNameError {
    #[error("a tenant name must be 1 to 64 characters")]
    Length,
    #[error("a tenant name may contain only letters, digits, '-', '_' and '.'")]
    Characters,
    #[error("a tenant name cannot be all digits (it would read as an id)")]
    AllDigits,
}

/// A tenant name: 1 to 64 ASCII letters, digits, '-', '_' or '.', not all digits (commands
/// take a tenant's name or its id in the same place).
pub fn tenant_name(name: &str) -> Result<(), TenantNameError> {
    if name.is_empty() || name.len() > 64 {
        return Err(TenantNameError::Length);
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(TenantNameError::Characters);
    }
    if name.chars().all(|c| c.is_ascii_digit()) {
        return Err(TenantNameError::AllDigits);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records() {
        let t = "abc123";
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(check_txt(&[], t), TxtCheck::NotFound);
        assert_eq!(
            check_txt(&r(&["v=spf1 -all", " relayward-verification=abc123 "]), t),
            TxtCheck::Verified
        );
        assert_eq!(
            check_txt(&r(&["v=spf1 -all"]), t),
            TxtCheck::WrongToken { other_token: false }
        );
        assert_eq!(
            check_txt(&r(&["relayward-verification=other"]), t),
            TxtCheck::WrongToken { other_token: true }
        );
    }

    #[test]
    fn tenant_names() {
        assert_eq!(tenant_name("acme-eu.1"), Ok(()));
        assert_eq!(tenant_name(""), Err(TenantNameError::Length));
        assert_eq!(tenant_name(&"a".repeat(65)), Err(TenantNameError::Length));
        assert_eq!(tenant_name("a b"), Err(TenantNameError::Characters));
        assert_eq!(tenant_name("42"), Err(TenantNameError::AllDigits));
    }
}
