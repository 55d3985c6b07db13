//! RFC 5321 mailbox syntax (section 4.1.2), written by hand: the SMTP parser hands us the text
//! between `<` and `>`, and relay decisions depend on exactly which domain we take from it.

use std::fmt;

use crate::Error;

/// A mailbox `local@domain`; `domain` is lowercase without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    pub local: String,
    pub domain: String,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
}

impl Address {
    /// Parse a path's mailbox. A source route (`@a,@b:user@c`) is accepted and ignored
    /// (RFC 5321 section 4.1.1.3 / appendix C). Non-ASCII is only allowed with `utf8`.
    pub fn parse(input: &str, utf8: bool) -> Result<Address, Error> {
        let bad = |why| Error::InvalidAddress(input.to_string(), why);
        if input.is_empty() {
            return Err(bad("empty"));
        }
        if input.len() > 256 {
            return Err(bad("longer than 256 octets"));
        }
        if !utf8 && !input.is_ascii() {
            return Err(bad("non-ASCII without SMTPUTF8"));
        }
        if input.chars().any(|c| c.is_control() || c == ' ') && !input.starts_with('"') {
            return Err(bad("control character or space"));
        }
        let mut rest = input;
        if rest.starts_with('@') {
            // A-d-l ":" — validate each hop, then drop it.
            let colon = rest
                .find(':')
                .ok_or_else(|| bad("source route without ':'"))?;
            for hop in rest[..colon].split(',') {
                let hop = hop
                    .strip_prefix('@')
                    .ok_or_else(|| bad("malformed source route"))?;
                normalize_domain(hop).map_err(|_| bad("malformed source route"))?;
            }
            rest = &rest[colon + 1..];
        }
        let (local, domain) = if let Some(stripped) = rest.strip_prefix('"') {
            // Quoted-string: find the closing quote, honouring backslash escapes.
            let mut escaped = false;
            let mut end = None;
            for (i, c) in stripped.char_indices() {
                if c.is_control() {
                    // Escaped or not: RFC 5321 quoted-pairs take printable characters only.
                    return Err(bad("control character in quoted local part"));
                }
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = Some(i);
                    break;
                }
            }
            let end = end.ok_or_else(|| bad("unterminated quoted local part"))?;
            let local = &rest[..end + 2];
            let after = &stripped[end + 1..];
            let domain = after
                .strip_prefix('@')
                .ok_or_else(|| bad("missing '@domain'"))?;
            (local, domain)
        } else {
            let at = rest.rfind('@').ok_or_else(|| bad("missing '@domain'"))?;
            let local = &rest[..at];
            if local.is_empty() {
                return Err(bad("empty local part"));
            }
            if local
                .split('.')
                .any(|atom| atom.is_empty() || !atom.chars().all(is_atext))
            {
                return Err(bad("local part is not a dot-string"));
            }
            (local, &rest[at + 1..])
        };
        if local.len() > 64 {
            return Err(bad("local part longer than 64 octets"));
        }
        let domain = if domain.starts_with('[') {
            parse_address_literal(domain).ok_or_else(|| bad("malformed address literal"))?
        } else {
            normalize_domain(domain).map_err(|e| match e {
                Error::InvalidDomain(_, why) => bad(why),
                other => other,
            })?
        };
        Ok(Address {
            local: local.to_string(),
            domain,
        })
    }

    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

fn parse_address_literal(s: &str) -> Option<String> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        let ip: std::net::Ipv6Addr = v6.parse().ok()?;
        return Some(format!("[IPv6:{ip}]"));
    }
    let ip: std::net::Ipv4Addr = inner.parse().ok()?;
    Some(format!("[{ip}]"))
}

/// Lowercase a domain and check its syntax: LDH labels of 1..=63 octets, at most 253 octets,
/// at least two labels, no trailing dot. Non-ASCII labels (U-labels) are kept as given,
/// lowercased; they only reach here under SMTPUTF8.
pub fn normalize_domain(input: &str) -> Result<String, Error> {
    let bad = |why| Error::InvalidDomain(input.to_string(), why);
    if input.is_empty() {
        return Err(bad("empty domain"));
    }
    if input.ends_with('.') {
        return Err(bad("trailing dot"));
    }
    let d = input.to_lowercase();
    if d.len() > 253 {
        return Err(bad("longer than 253 octets"));
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err(bad("not a fully qualified domain"));
    }
    for label in &labels {
        if label.is_empty() {
            return Err(bad("empty label"));
        }
        if label.len() > 63 {
            return Err(bad("label longer than 63 octets"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("label starts or ends with '-'"));
        }
        // Non-ASCII (a U-label) passes, but never a control (C1 included) or space character.
        if !label.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || c == '-'
                || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
        }) {
            return Err(bad(
                "label has a character other than letters, digits and '-'",
            ));
        }
    }
    if labels
        .last()
        .is_some_and(|l| l.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(bad("top-level label is numeric"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_case() {
        let a = Address::parse("John.Doe@Example.COM", false).unwrap();
        assert_eq!(a.local, "John.Doe");
        assert_eq!(a.domain, "example.com");
    }

    #[test]
    fn source_route_is_ignored() {
        let a = Address::parse("@relay.example,@b.example:user@c.example", false).unwrap();
        assert_eq!(a.to_string(), "user@c.example");
        assert!(Address::parse("@relay.example user@c.example", false).is_err());
    }

    #[test]
    fn control_characters_in_utf8_domains_are_refused() {
        assert!(Address::parse("a@pxea\u{8f}\u{473}e.example", true).is_err());
        assert!(Address::parse("a@b\u{a0}c.example", true).is_err());
        assert!(normalize_domain("b\u{85}.example").is_err());
        assert!(Address::parse("a\u{85}b@example.org", true).is_err());
        assert!(Address::parse("a@b\u{e9}b\u{e9}.example", true).is_ok());
    }

    #[test]
    fn escaped_control_characters_are_refused() {
        for bad in [
            "\"ck\\\u{1c}hsl\"@x.example",
            "\"a\\\u{0}\"@x.example",
            "\"a\\\r\"@x.example",
        ] {
            assert!(Address::parse(bad, false).is_err(), "{bad:?}");
            assert!(Address::parse(bad, true).is_err(), "{bad:?}");
        }
        assert!(Address::parse("\"a\\\\b\"@x.example", false).is_ok());
    }

    #[test]
    fn quoted_local_part_with_at() {
        let a = Address::parse("\"a@b.example\"@c.example", false).unwrap();
        assert_eq!(a.domain, "c.example");
        assert_eq!(a.local, "\"a@b.example\"");
    }

    #[test]
    fn percent_and_bang_stay_in_local_part() {
        let a = Address::parse("user%victim.example@c.example", false).unwrap();
        assert_eq!(a.domain, "c.example");
        let a = Address::parse("victim.example!user@c.example", false).unwrap();
        assert_eq!(a.domain, "c.example");
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "",
            "user",
            "user@",
            "@example.com",
            "user@example.com.",
            "user@localhost",
            "us..er@example.com",
            ".user@example.com",
            "user@-bad.example",
            "user@exa_mple.com",
            "user@[300.1.1.1]",
            "\"unterminated@example.com",
            "user name@example.com",
            "user@example.123",
        ] {
            assert!(
                Address::parse(bad, false).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn address_literals() {
        assert_eq!(
            Address::parse("u@[192.0.2.1]", false).unwrap().domain,
            "[192.0.2.1]"
        );
        assert_eq!(
            Address::parse("u@[IPv6:2001:db8::1]", false)
                .unwrap()
                .domain,
            "[IPv6:2001:db8::1]"
        );
    }

    #[test]
    fn utf8_needs_smtputf8() {
        assert!(Address::parse("jörg@exämple.de", false).is_err());
        assert_eq!(
            Address::parse("jörg@EXÄMPLE.de", true).unwrap().domain,
            "exämple.de"
        );
    }
}
