//! SMTP AUTH secrets: argon2id PHC strings, never the password.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand_core::OsRng;

/// The audit action of an AUTH lockout (password guessing); its object is
/// [`lockout_audit_object`]. Connector listings flag those of the last 24 hours.
pub const LOCKOUT_AUDIT_ACTION: &str = "auth.lockout";

/// The audit object of a lockout: the connector whose AUTH user was tried, or `auth`.
pub fn lockout_audit_object(connector: Option<relayward_core::ConnectorId>) -> String {
    match connector {
        Some(id) => format!("connector {id}"),
        None => "auth".to_string(),
    }
}

/// The connectors with an AUTH lockout at or after `since` among audit `entries`.
pub fn locked_connectors(
    entries: &[relayward_core::AuditEntry],
    since: relayward_core::Timestamp,
) -> std::collections::HashSet<relayward_core::ConnectorId> {
    entries
        .iter()
        .filter(|e| e.action == LOCKOUT_AUDIT_ACTION && e.at >= since)
        .filter_map(|e| e.object.strip_prefix("connector ")?.parse().ok())
        .collect()
}

/// Hashing a password failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// argon2 refused the input or its parameters; the text is argon2's.
    #[error(transparent)]
    Argon2(#[from] argon2::password_hash::Error),
}

/// An argon2id PHC string of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(HashError::from)
}

/// Constant-time verification against a stored PHC string. A missing or malformed hash never
/// verifies.
pub fn verify_password(hash: Option<&str>, password: &str) -> bool {
    let Some(hash) = hash else { return false };
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let h = hash_password("s3cret").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(!h.contains("s3cret"));
        assert!(verify_password(Some(&h), "s3cret"));
        assert!(!verify_password(Some(&h), "S3cret"));
        assert!(!verify_password(None, "s3cret"));
        assert!(!verify_password(Some("garbage"), "s3cret"));
    }
}
