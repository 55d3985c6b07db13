//! Sender Rewriting Scheme, interoperable with libsrs2 and postsrsd 1.x (which bundles libsrs2).
//!
//! A relayed message from a sender whose domain the tenant does not own leaves with its envelope
//! sender rewritten into the relay's SRS domain, so SPF at the receiver checks the relay's
//! domain, and a bounce comes back to the relay, which checks the hash and age and sends it on:
//!
//! ```text
//! forward  alice@example.com                 -> SRS0=HHHH=TT=example.com=alice@srs.relay.net
//! forward  SRS0=HHHH=TT=example.com=alice@fwd.example
//!                                            -> SRS1=GGGG=fwd.example==HHHH=TT=example.com=alice@srs.relay.net
//! reverse  SRS0=HHHH=TT=example.com=alice@…  -> alice@example.com
//! reverse  SRS1=GGGG=fwd.example==HHHH=…@…   -> SRS0=HHHH=TT=example.com=alice@fwd.example
//! ```
//!
//! Written by hand: interoperating with postsrsd (a relay and a Postfix box sharing one SRS
//! domain and secret, or replacing one with the other without breaking bounces in flight) needs
//! libsrs2's exact hash input, base64 truncation, base32 day stamp and its wrap-around rule, and
//! its case rules. The tests check this against vectors made by a real postsrsd. relayward is
//! stricter than libsrs2 only on degenerate input: an empty hash, stamp, host or user, or a
//! stamp that is not two characters, is `Malformed` (libsrs2 goes on to fail the hash or age).
//!
//! Pure: time is a parameter (seconds since the Unix epoch).

use ring::hmac;
use serde::Deserialize;

/// libsrs2's default hash length, in base64 characters.
pub const DEFAULT_HASH_LENGTH: usize = 4;
/// libsrs2's default maximum age of an SRS0 address, in days.
pub const DEFAULT_MAX_AGE_DAYS: u32 = 21;

/// Longest hash: base64 of a 20-byte HMAC-SHA1 without padding.
const MAX_HASH_LENGTH: usize = 27;
/// The stamp has two base32 characters: it counts days modulo 1024.
const STAMP_SLOTS: u64 = 1 << 10;
const SECONDS_PER_DAY: u64 = 24 * 60 * 60;
/// libsrs2's `SRS_TIME_BASECHARS`: RFC 4648 base32 letters, upper case.
const STAMP_CHARS: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Separators libsrs2 accepts right after `SRS0`/`SRS1`; the other separators are always `=`.
const FIRST_SEPARATORS: &[u8] = b"=-+";

/// `[srs]` in the configuration file.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SrsConfig {
    /// Domain of the rewritten addresses; the relay must be its MX so that bounces come back.
    pub domain: String,
    /// HMAC keys. The first signs; every one verifies, so a new secret is put first and the old
    /// one kept after it for `max_age_days` (the life of addresses already handed out).
    pub secrets: Vec<String>,
    /// Base64 characters of the HMAC kept in the address (libsrs2 `hashlength`).
    pub hash_length: usize,
    /// Reversal refuses SRS0 addresses stamped more than this many days ago.
    pub max_age_days: u32,
    /// Senders in these domains are never rewritten. `example.com` matches that domain only,
    /// `.example.com` its subdomains only (postsrsd's `-X` semantics).
    pub exclude_domains: Vec<String>,
}

impl Default for SrsConfig {
    fn default() -> Self {
        SrsConfig {
            domain: String::new(),
            secrets: Vec::new(),
            hash_length: DEFAULT_HASH_LENGTH,
            max_age_days: DEFAULT_MAX_AGE_DAYS,
            exclude_domains: Vec::new(),
        }
    }
}

// Secrets must not reach logs through `{:?}` of a configuration.
impl std::fmt::Debug for SrsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrsConfig")
            .field("domain", &self.domain)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("hash_length", &self.hash_length)
            .field("max_age_days", &self.max_age_days)
            .field("exclude_domains", &self.exclude_domains)
            .finish()
    }
}

/// Why an address could not be rewritten or reversed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrsError {
    /// The hash matches none of the secrets (forged, or signed with a secret since removed).
    #[error("SRS hash invalid")]
    BadHash,
    /// The SRS0 day stamp is older than `max_age_days`.
    #[error("SRS timestamp out of date")]
    Expired,
    /// An SRS address (or a sender to rewrite) that cannot be parsed.
    #[error("malformed address: {0}")]
    Malformed(&'static str),
    /// `reverse` was given an address that is not SRS0/SRS1.
    #[error("not an SRS address")]
    NotSrs,
    /// `Srs::new` refused the configuration.
    #[error("invalid SRS configuration: {0}")]
    Config(String),
}

/// The rewriter: a validated [`SrsConfig`] with its HMAC keys ready.
pub struct Srs {
    domain: String,
    keys: Vec<hmac::Key>,
    hash_length: usize,
    max_age_days: u64,
    exclude_domains: Vec<String>,
}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Srs")
            .field("domain", &self.domain)
            .field("secrets", &format_args!("[{} redacted]", self.keys.len()))
            .field("hash_length", &self.hash_length)
            .field("max_age_days", &self.max_age_days)
            .field("exclude_domains", &self.exclude_domains)
            .finish()
    }
}

impl Srs {
    pub fn new(config: &SrsConfig) -> Result<Self, SrsError> {
        let domain = normalize_domain(&config.domain);
        if domain.is_empty() || domain.contains(['@', ' ', '=']) {
            return Err(SrsError::Config(format!(
                "srs domain {:?} is not a domain name",
                config.domain
            )));
        }
        if config.secrets.is_empty() || config.secrets.iter().any(|s| s.is_empty()) {
            return Err(SrsError::Config(
                "at least one secret is needed, and none may be empty".into(),
            ));
        }
        if !(DEFAULT_HASH_LENGTH..=MAX_HASH_LENGTH).contains(&config.hash_length) {
            return Err(SrsError::Config(format!(
                "hash_length must be {DEFAULT_HASH_LENGTH} to {MAX_HASH_LENGTH}, not {}",
                config.hash_length
            )));
        }
        // The stamp wraps after 1024 days; an age near that would accept wrapped-around stamps.
        if config.max_age_days == 0 || u64::from(config.max_age_days) >= STAMP_SLOTS / 2 {
            return Err(SrsError::Config(format!(
                "max_age_days must be 1 to {}, not {}",
                STAMP_SLOTS / 2 - 1,
                config.max_age_days
            )));
        }
        Ok(Srs {
            domain,
            keys: config
                .secrets
                .iter()
                .map(|s| hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, s.as_bytes()))
                .collect(),
            hash_length: config.hash_length,
            max_age_days: u64::from(config.max_age_days),
            exclude_domains: config
                .exclude_domains
                .iter()
                .map(|d| normalize_domain(d))
                .filter(|d| !d.is_empty())
                .collect(),
        })
    }

    /// The SRS domain (lower case).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether `addr` (or a bare local part) has the SRS0/SRS1 shape. Says nothing of its hash.
    pub fn is_srs_address(addr: &str) -> bool {
        let b = addr.as_bytes();
        b.len() > 4
            && b[..3].eq_ignore_ascii_case(b"SRS")
            && (b[3] == b'0' || b[3] == b'1')
            && FIRST_SEPARATORS.contains(&b[4])
    }

    /// Rewrites an envelope sender into the SRS domain.
    ///
    /// Returned unchanged: senders in the SRS domain itself or in an excluded domain, and SRS
    /// addresses that already verify with our secrets (postsrsd's "Already rewritten"). An SRS0
    /// or SRS1 sender from another forwarder becomes SRS1 (libsrs2's "guarded" scheme), which
    /// keeps the first forwarder's domain so that the bounce skips the hops in between.
    ///
    /// The null sender has no address to rewrite: callers leave `<>` alone.
    pub fn forward(&self, addr: &str, now_secs: u64) -> Result<String, SrsError> {
        let (local, host) = split_address(addr)?;
        if host.eq_ignore_ascii_case(&self.domain) || self.is_excluded(host) {
            return Ok(addr.to_string());
        }
        if Self::is_srs_address(local) && self.reverse(addr, now_secs).is_ok() {
            return Ok(addr.to_string());
        }
        if Self::is_srs_address(local) && local.as_bytes()[3] == b'1' {
            // SRS1=hash=first-host=rest: re-sign first-host and rest, drop the old hash.
            let (_, first_host, rest) = split_srs1(&local[5..])?;
            let hash = self.hash(0, &[first_host, rest]);
            return Ok(format!(
                "SRS1={hash}={first_host}={rest}@{domain}",
                domain = self.domain
            ));
        }
        if Self::is_srs_address(local) {
            // SRS0<sep>…@host: the whole SRS0 part after the tag, separator included, rides along.
            let rest = &local[4..];
            let hash = self.hash(0, &[host, rest]);
            return Ok(format!(
                "SRS1={hash}={host}={rest}@{domain}",
                domain = self.domain
            ));
        }
        let stamp = timestamp(now_secs);
        let hash = self.hash(0, &[&stamp, host, local]);
        Ok(format!(
            "SRS0={hash}={stamp}={host}={local}@{domain}",
            domain = self.domain
        ))
    }

    /// Turns an SRS address back into the address it was made from: an SRS0 address into the
    /// original sender, an SRS1 address into the SRS0 address at the first forwarder.
    ///
    /// The domain part is not checked (as in libsrs2): routing mail for the SRS domain here is
    /// the caller's decision. The hash is compared case-insensitively, because some MTAs change
    /// the case of local parts; the stamp of an SRS0 address must be at most `max_age_days` old.
    pub fn reverse(&self, addr: &str, now_secs: u64) -> Result<String, SrsError> {
        let local = match addr.rfind('@') {
            Some(at) => &addr[..at],
            None => addr,
        };
        if !Self::is_srs_address(local) {
            return Err(SrsError::NotSrs);
        }
        if local.as_bytes()[3] == b'1' {
            let (hash, first_host, rest) = split_srs1(&local[5..])?;
            self.check_hash(hash, &[first_host, rest])?;
            return Ok(format!("SRS0{rest}@{first_host}"));
        }
        let mut parts = local[5..].splitn(4, '=');
        let hash = non_empty(parts.next(), "no hash in SRS0 address")?;
        let stamp = non_empty(parts.next(), "no timestamp in SRS0 address")?;
        let host = non_empty(parts.next(), "no host in SRS0 address")?;
        let user = non_empty(parts.next(), "no user in SRS0 address")?;
        // libsrs2's order: the stamp first, then the hash.
        self.check_stamp(stamp, now_secs)?;
        self.check_hash(hash, &[stamp, host, user])?;
        Ok(format!("{user}@{host}"))
    }

    fn is_excluded(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        let host = host.trim_end_matches('.');
        self.exclude_domains.iter().any(|ex| {
            if ex.starts_with('.') {
                host.ends_with(ex.as_str())
            } else {
                host == ex
            }
        })
    }

    fn check_stamp(&self, stamp: &str, now_secs: u64) -> Result<(), SrsError> {
        if stamp.len() != 2 {
            return Err(SrsError::Malformed("timestamp is not 2 characters"));
        }
        let mut then = 0u64;
        for c in stamp.bytes() {
            let value = STAMP_CHARS
                .iter()
                .position(|&s| s == c.to_ascii_uppercase())
                .ok_or(SrsError::Malformed("bad base32 character in timestamp"))?;
            then = (then << 5) | value as u64;
        }
        // Only the day modulo 1024 is known: take the most recent day with that residue.
        let mut now = (now_secs / SECONDS_PER_DAY) % STAMP_SLOTS;
        if now < then {
            now += STAMP_SLOTS;
        }
        if now <= then + self.max_age_days {
            Ok(())
        } else {
            Err(SrsError::Expired)
        }
    }

    fn check_hash(&self, given: &str, fields: &[&str]) -> Result<(), SrsError> {
        // libsrs2 accepts only hashes of exactly `hashlength` characters (a shorter one fails
        // its length check, a longer one its comparison).
        if given.len() != self.hash_length {
            return Err(SrsError::BadHash);
        }
        for idx in 0..self.keys.len() {
            let expected = self.hash(idx, fields);
            let diff = given
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| {
                    acc | (a.to_ascii_lowercase() ^ b.to_ascii_lowercase())
                });
            if diff == 0 {
                return Ok(());
            }
        }
        Err(SrsError::BadHash)
    }

    /// libsrs2's `srs_hash_create_v`: HMAC-SHA1 over the fields concatenated without separators,
    /// each lower-cased (ASCII only, as the C locale does), then the first `hash_length`
    /// characters of standard base64 of the MAC.
    fn hash(&self, key_idx: usize, fields: &[&str]) -> String {
        let mut ctx = hmac::Context::with_key(&self.keys[key_idx]);
        for field in fields {
            ctx.update(&field.as_bytes().to_ascii_lowercase());
        }
        let tag = ctx.sign();
        let mut b64 = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            tag.as_ref(),
        );
        b64.truncate(self.hash_length);
        b64
    }
}

/// libsrs2's `srs_timestamp_create`: the day number modulo 1024 in two base32 characters.
pub fn timestamp(now_secs: u64) -> String {
    let day = (now_secs / SECONDS_PER_DAY) % STAMP_SLOTS;
    let hi = STAMP_CHARS[(day >> 5) as usize & 31] as char;
    let lo = STAMP_CHARS[day as usize & 31] as char;
    [hi, lo].into_iter().collect()
}

/// `local@host`, split at the last `@` (a quoted local part may hold one).
fn split_address(addr: &str) -> Result<(&str, &str), SrsError> {
    let at = addr
        .rfind('@')
        .ok_or(SrsError::Malformed("no at sign in sender address"))?;
    let (local, host) = (&addr[..at], &addr[at + 1..]);
    if local.is_empty() {
        return Err(SrsError::Malformed("empty local part"));
    }
    if host.is_empty() {
        return Err(SrsError::Malformed("empty domain"));
    }
    Ok((local, host))
}

/// The part of an SRS1 local part after `SRS1<sep>`: `hash=first-host=rest`, where `rest` is the
/// SRS0 part after its tag (it starts with the SRS0 separator, hence `==` in SRS1 addresses).
fn split_srs1(s: &str) -> Result<(&str, &str, &str), SrsError> {
    let mut parts = s.splitn(3, '=');
    let hash = non_empty(parts.next(), "no hash in SRS1 address")?;
    let host = non_empty(parts.next(), "no host in SRS1 address")?;
    let rest = non_empty(parts.next(), "no user in SRS1 address")?;
    Ok((hash, host, rest))
}

fn non_empty<'a>(part: Option<&'a str>, reason: &'static str) -> Result<&'a str, SrsError> {
    part.filter(|p| !p.is_empty())
        .ok_or(SrsError::Malformed(reason))
}

fn normalize_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = SECONDS_PER_DAY;

    fn srs(secrets: &[&str]) -> Srs {
        Srs::new(&SrsConfig {
            domain: "srs.example.net".into(),
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            ..SrsConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn timestamp_is_libsrs2_base32_of_day_mod_1024() {
        assert_eq!(timestamp(0), "AA");
        assert_eq!(timestamp(DAY - 1), "AA");
        assert_eq!(timestamp(DAY), "AB");
        assert_eq!(timestamp(31 * DAY), "A7");
        assert_eq!(timestamp(32 * DAY), "BA");
        assert_eq!(timestamp(1023 * DAY), "77");
        assert_eq!(timestamp(1024 * DAY), "AA");
        // 2021-03-04 is day 18690, 18690 % 1024 = 258 = 8 * 32 + 2 (postsrsd under faketime
        // printed IC for that day).
        assert_eq!(timestamp(1_614_834_367), "IC");
    }

    #[test]
    fn stamp_age_wraps_like_libsrs2() {
        let s = srs(&["k"]);
        let made = 1023 * DAY + 5;
        let addr = s.forward("a@example.com", made).unwrap();
        assert!(addr.contains("=77="), "{addr}");
        // Two days later the day counter has wrapped to 1; still valid.
        assert_eq!(s.reverse(&addr, made + 2 * DAY).unwrap(), "a@example.com");
        assert_eq!(s.reverse(&addr, made + 21 * DAY).unwrap(), "a@example.com");
        assert_eq!(s.reverse(&addr, made + 22 * DAY), Err(SrsError::Expired));
        // A stamp from the future reads as one from ~1023 days ago.
        assert_eq!(s.reverse(&addr, made - DAY), Err(SrsError::Expired));
    }

    #[test]
    fn config_is_validated() {
        let bad = |c: SrsConfig| Srs::new(&c).unwrap_err();
        let good = SrsConfig {
            domain: "srs.example.net".into(),
            secrets: vec!["k".into()],
            ..SrsConfig::default()
        };
        assert!(matches!(
            bad(SrsConfig {
                secrets: vec![],
                ..good.clone()
            }),
            SrsError::Config(_)
        ));
        assert!(matches!(
            bad(SrsConfig {
                domain: String::new(),
                ..good.clone()
            }),
            SrsError::Config(_)
        ));
        assert!(matches!(
            bad(SrsConfig {
                hash_length: 3,
                ..good.clone()
            }),
            SrsError::Config(_)
        ));
        assert!(matches!(
            bad(SrsConfig {
                max_age_days: 600,
                ..good.clone()
            }),
            SrsError::Config(_)
        ));
        assert!(Srs::new(&good).is_ok());
    }

    #[test]
    fn debug_never_shows_secrets() {
        let config = SrsConfig {
            domain: "srs.example.net".into(),
            secrets: vec!["hunter2-secret".into()],
            ..SrsConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
        assert!(!format!("{:?}", Srs::new(&config).unwrap()).contains("hunter2"));
    }

    #[test]
    fn config_defaults_from_toml_shape() {
        let config: SrsConfig =
            serde_json::from_str(r#"{"domain":"srs.example.net","secrets":["a","b"]}"#).unwrap();
        assert_eq!(config.hash_length, 4);
        assert_eq!(config.max_age_days, 21);
        assert!(config.exclude_domains.is_empty());
    }

    #[test]
    fn malformed_addresses() {
        let s = srs(&["k"]);
        let now = 20_000 * DAY;
        for (addr, want) in [
            ("SRS0=@srs.example.net", "no hash in SRS0 address"),
            ("SRS0=abcd@srs.example.net", "no timestamp in SRS0 address"),
            ("SRS0=abcd=AA@srs.example.net", "no host in SRS0 address"),
            (
                "SRS0=abcd=AA=ex.com@srs.example.net",
                "no user in SRS0 address",
            ),
            (
                "SRS0=abcd=AA=ex.com=@srs.example.net",
                "no user in SRS0 address",
            ),
            (
                "SRS0=abcd=A1=ex.com=u@srs.example.net",
                "bad base32 character in timestamp",
            ),
            (
                "SRS0=abcd=AAA=ex.com=u@srs.example.net",
                "timestamp is not 2 characters",
            ),
            ("SRS1=abcd@srs.example.net", "no host in SRS1 address"),
            (
                "SRS1=abcd=fwd.example@srs.example.net",
                "no user in SRS1 address",
            ),
        ] {
            assert_eq!(
                s.reverse(addr, now),
                Err(SrsError::Malformed(want)),
                "{addr}"
            );
        }
        assert_eq!(s.reverse("alice@example.com", now), Err(SrsError::NotSrs));
        assert_eq!(s.reverse("SRS2=x=y=z=w@e", now), Err(SrsError::NotSrs));
        assert_eq!(s.reverse("SRS0", now), Err(SrsError::NotSrs));
        assert!(matches!(
            s.forward("nobody", now),
            Err(SrsError::Malformed(_))
        ));
        assert!(matches!(
            s.forward("@example.com", now),
            Err(SrsError::Malformed(_))
        ));
    }

    #[test]
    fn other_first_separators_are_accepted_on_reverse() {
        let s = srs(&["k"]);
        let now = 20_000 * DAY;
        let addr = s.forward("bob@example.org", now).unwrap();
        let plus = addr.replacen("SRS0=", "SRS0+", 1);
        assert_eq!(s.reverse(&plus, now).unwrap(), "bob@example.org");
    }
}
