//! DKIM signing at delivery (RFC 6376; Ed25519 per RFC 8463), on mail-auth's signer.
//!
//! Keys are PKCS#8. Ed25519 keys come from ring; RSA keys from the `rsa` crate, because ring
//! cannot generate RSA keys (it signs with them, and does here). The DNS record publishes the
//! raw 32-byte key for Ed25519 (RFC 8463) and a SubjectPublicKeyInfo for RSA, the form
//! `opendkim-genkey` publishes and every verifier reads.
//!
//! A private key never goes to a log: [`DkimPrivateKey`]'s `Debug` is redacted, and on disk it
//! lives in a file of mode 0600 (see [`save_key`]); [`load_key`] refuses a file that group or
//! others can read, as ssh does, so a leaked permission is noticed rather than carried on.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, Done};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// Headers signed when present. Absent ones are signed too (as empty, which mail-auth does for
/// every listed name it does not find), so they cannot be added after signing.
const SIGNED_HEADERS: &[&str] = &[
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-Disposition",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Listed a second time: a second From/Subject/Date/To prepended in transit (which some MUAs
/// show instead of the signed one) then breaks the signature (RFC 6376 section 8.15).
const OVERSIGNED_HEADERS: &[&str] = &["From", "Subject", "Date", "To"];

const RSA_BITS: usize = 2048;
const PEM_LABEL: &str = "PRIVATE KEY";

/// Key algorithm for new keys (`--algorithm ed25519|rsa2048`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    Ed25519,
    Rsa2048,
}

impl DkimAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            DkimAlgorithm::Ed25519 => "ed25519",
            DkimAlgorithm::Rsa2048 => "rsa2048",
        }
    }
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DkimAlgorithm {
    type Err = DkimError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ed25519" => Ok(DkimAlgorithm::Ed25519),
            "rsa2048" | "rsa" => Ok(DkimAlgorithm::Rsa2048),
            _ => Err(DkimError::UnknownAlgorithm(s.to_string())),
        }
    }
}

/// The kind of a loaded key (an imported RSA key may have another size than 2048 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DkimKeyType {
    Ed25519,
    Rsa,
}

impl DkimKeyType {
    /// The `k=` tag of the DNS record.
    pub fn dns_k(self) -> &'static str {
        match self {
            DkimKeyType::Ed25519 => "ed25519",
            DkimKeyType::Rsa => "rsa",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("unknown DKIM key algorithm {0:?} (expected ed25519 or rsa2048)")]
    UnknownAlgorithm(String),
    #[error("cannot generate DKIM key: {0}")]
    Generate(String),
    /// The bytes are not a PKCS#8 (or PKCS#1 RSA) Ed25519 or RSA private key ring can sign with.
    #[error("invalid DKIM private key: {0}")]
    InvalidKey(String),
    #[error("DKIM key file I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "DKIM key file {} has mode {mode:o}: group and others must have no access (chmod 600)",
        path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },
    #[error("invalid DKIM {what} {value:?}")]
    InvalidName { what: &'static str, value: String },
    /// RFC 6376 section 5.4: From is the one header a signature must cover.
    #[error("message has no From header")]
    NoFromHeader,
    #[error("DKIM signing failed: {0}")]
    Sign(String),
}

/// A DKIM private key, held as PKCS#8 DER. `Debug` does not show it.
#[derive(Clone)]
pub struct DkimPrivateKey {
    key_type: DkimKeyType,
    pkcs8_der: Vec<u8>,
    /// `p=` of the DNS record, before base64.
    public_key: Vec<u8>,
}

impl fmt::Debug for DkimPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimPrivateKey")
            .field("key_type", &self.key_type)
            .field("pkcs8_der", &"[redacted]")
            .finish()
    }
}

/// Creates a key pair and the TXT record value to publish at `<selector>._domainkey.<domain>`.
pub fn generate_key(algorithm: DkimAlgorithm) -> Result<(DkimPrivateKey, String), DkimError> {
    let key = DkimPrivateKey::generate(algorithm)?;
    let txt = key.dns_txt_record();
    Ok((key, txt))
}

/// Writes `key` to `path` as a PKCS#8 PEM file of mode 0600 (see [`DkimPrivateKey::save`]).
pub fn save_key(path: &Path, key: &DkimPrivateKey) -> Result<(), DkimError> {
    key.save(path)
}

/// Reads a key written by [`save_key`] (or any PKCS#8 / PKCS#1 RSA PEM or DER key file).
pub fn load_key(path: &Path) -> Result<DkimPrivateKey, DkimError> {
    DkimPrivateKey::load(path)
}

impl DkimPrivateKey {
    pub fn generate(algorithm: DkimAlgorithm) -> Result<Self, DkimError> {
        let der = match algorithm {
            DkimAlgorithm::Ed25519 => {
                Ed25519Key::generate_pkcs8().map_err(|e| DkimError::Generate(e.to_string()))?
            }
            DkimAlgorithm::Rsa2048 => {
                let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, RSA_BITS)
                    .map_err(|e| DkimError::Generate(e.to_string()))?;
                key.to_pkcs8_der()
                    .map_err(|e| DkimError::Generate(e.to_string()))?
                    .as_bytes()
                    .to_vec()
            }
        };
        Self::from_pkcs8_der(&der)
    }

    /// Accepts PKCS#8 Ed25519 (v1 as `openssl genpkey` writes, or v2) and PKCS#8 RSA.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, DkimError> {
        if let Ok(ed) = Ed25519Key::from_pkcs8_maybe_unchecked_der(der) {
            return Ok(DkimPrivateKey {
                key_type: DkimKeyType::Ed25519,
                pkcs8_der: der.to_vec(),
                public_key: ed.public_key(),
            });
        }
        // ring decides whether it can sign with it (size, exponent); rsa gives the SPKI.
        rsa_signing_key(der)?;
        let rsa_key = rsa::RsaPrivateKey::from_pkcs8_der(der)
            .map_err(|e| DkimError::InvalidKey(e.to_string()))?;
        let spki = rsa_key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| DkimError::InvalidKey(e.to_string()))?;
        Ok(DkimPrivateKey {
            key_type: DkimKeyType::Rsa,
            pkcs8_der: der.to_vec(),
            public_key: spki.as_bytes().to_vec(),
        })
    }

    /// PEM `PRIVATE KEY` (PKCS#8) or `RSA PRIVATE KEY` (PKCS#1, as `opendkim-genkey` writes;
    /// converted to PKCS#8).
    pub fn from_pem(pem: &str) -> Result<Self, DkimError> {
        match PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| DkimError::InvalidKey(e.to_string()))?
        {
            PrivateKeyDer::Pkcs8(der) => Self::from_pkcs8_der(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => {
                let key = rsa::RsaPrivateKey::from_pkcs1_der(der.secret_pkcs1_der())
                    .map_err(|e| DkimError::InvalidKey(e.to_string()))?;
                let pkcs8 = key
                    .to_pkcs8_der()
                    .map_err(|e| DkimError::InvalidKey(e.to_string()))?;
                Self::from_pkcs8_der(pkcs8.as_bytes())
            }
            _ => Err(DkimError::InvalidKey(
                "not an Ed25519 or RSA private key".into(),
            )),
        }
    }

    pub fn key_type(&self) -> DkimKeyType {
        self.key_type
    }

    /// The secret PKCS#8 DER, for a caller that stores keys encrypted. Never log it.
    pub fn secret_pkcs8_der(&self) -> &[u8] {
        &self.pkcs8_der
    }

    /// The secret key as PKCS#8 PEM, the content of the file [`save`](Self::save) writes.
    /// Never log it.
    pub fn to_secret_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8_der);
        let mut pem = format!("-----BEGIN {PEM_LABEL}-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
        pem
    }

    /// The value of the TXT record `<selector>._domainkey.<domain>`:
    /// `v=DKIM1; k=ed25519|rsa; p=<base64>`. Longer than 255 bytes for RSA: publish it as
    /// several character-strings of one record (zone files and DNS APIs split it).
    pub fn dns_txt_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.key_type.dns_k(),
            base64::engine::general_purpose::STANDARD.encode(&self.public_key)
        )
    }

    /// Writes the key as PKCS#8 PEM with mode 0600, replacing `path` atomically (a temporary
    /// file beside it, fsynced, then renamed), so a crash leaves the old key or the new one.
    pub fn save(&self, path: &Path) -> Result<(), DkimError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DkimError::Io { path, source }
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| DkimError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
            })?
            .to_string_lossy();
        let tmp = dir.join(format!(
            ".{file_name}.tmp-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let result = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io_err(&tmp))?;
            // The mode above is filtered by the umask; make sure it is exactly 0600.
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(io_err(&tmp))?;
            file.write_all(self.to_secret_pem().as_bytes())
                .map_err(io_err(&tmp))?;
            file.sync_all().map_err(io_err(&tmp))?;
            fs::rename(&tmp, path).map_err(io_err(path))?;
            fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Reads a key file; refuses one that group or others may access.
    pub fn load(path: &Path) -> Result<Self, DkimError> {
        let io_err = |source| DkimError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mode = fs::metadata(path).map_err(io_err)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(DkimError::InsecurePermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
        let bytes = fs::read(path).map_err(io_err)?;
        if bytes.starts_with(b"-----BEGIN") {
            let pem = std::str::from_utf8(&bytes)
                .map_err(|_| DkimError::InvalidKey("PEM file is not UTF-8".into()))?;
            Self::from_pem(pem)
        } else {
            Self::from_pkcs8_der(&bytes)
        }
    }
}

enum SigningKey {
    Ed25519(mail_auth::dkim::DkimSigner<Ed25519Key, Done>),
    Rsa(mail_auth::dkim::DkimSigner<RsaKey<Sha256>, Done>),
}

/// Signs messages for one domain and selector with relaxed/relaxed canonicalisation.
pub struct DkimSigner {
    domain: String,
    selector: String,
    key: SigningKey,
}

impl fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimSigner")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

impl DkimSigner {
    /// `domain` is the `d=` tag (the header From domain, for DMARC alignment); the public key
    /// must be published at `<selector>._domainkey.<domain>`.
    pub fn new(domain: &str, selector: &str, key: &DkimPrivateKey) -> Result<Self, DkimError> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        if !is_dns_name(&domain) {
            return Err(DkimError::InvalidName {
                what: "domain",
                value: domain,
            });
        }
        if !is_dns_name(selector) {
            return Err(DkimError::InvalidName {
                what: "selector",
                value: selector.to_string(),
            });
        }
        let headers = SIGNED_HEADERS.iter().chain(OVERSIGNED_HEADERS).copied();
        let key = match key.key_type {
            DkimKeyType::Ed25519 => SigningKey::Ed25519(
                mail_auth::dkim::DkimSigner::from_key(
                    Ed25519Key::from_pkcs8_maybe_unchecked_der(&key.pkcs8_der)
                        .map_err(|e| DkimError::InvalidKey(e.to_string()))?,
                )
                .domain(domain.clone())
                .selector(selector)
                .headers(headers)
                .header_canonicalization(Canonicalization::Relaxed)
                .body_canonicalization(Canonicalization::Relaxed),
            ),
            DkimKeyType::Rsa => SigningKey::Rsa(
                mail_auth::dkim::DkimSigner::from_key(rsa_signing_key(&key.pkcs8_der)?)
                    .domain(domain.clone())
                    .selector(selector)
                    .headers(headers)
                    .header_canonicalization(Canonicalization::Relaxed)
                    .body_canonicalization(Canonicalization::Relaxed),
            ),
        };
        Ok(DkimSigner {
            domain,
            selector: selector.to_string(),
            key,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// Signs `message` (headers and body as they will be sent) and returns the
    /// `DKIM-Signature: …\r\n` header field (folded, CRLF-terminated) to prepend to it.
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        if !has_from_header(message) {
            return Err(DkimError::NoFromHeader);
        }
        let signature = match &self.key {
            SigningKey::Ed25519(signer) => signer.sign(message),
            SigningKey::Rsa(signer) => signer.sign(message),
        }
        .map_err(|e| DkimError::Sign(e.to_string()))?;
        Ok(signature.to_header())
    }
}

fn rsa_signing_key(pkcs8_der: &[u8]) -> Result<RsaKey<Sha256>, DkimError> {
    RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8_der)))
        .map_err(|e| DkimError::InvalidKey(e.to_string()))
}

/// Letters, digits, `-`, `_` and dots between non-empty labels.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Whether the header section has a `From:` field (names are case-insensitive; continuation
/// lines start with white space).
fn has_from_header(message: &[u8]) -> bool {
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return false;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = &line[..colon];
            let name = name.trim_ascii_end();
            if name.eq_ignore_ascii_case(b"From") {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_header_detection() {
        assert!(has_from_header(b"Subject: x\r\nFrom: a@b\r\n\r\nbody"));
        assert!(has_from_header(b"fRoM : a@b\n\nbody"));
        assert!(!has_from_header(b"Subject: x\r\n\r\nFrom: in body\r\n"));
        assert!(!has_from_header(b"Subject: x\r\n From: folded\r\n\r\n"));
        assert!(!has_from_header(b"X-From: a@b\r\n\r\n"));
    }

    #[test]
    fn algorithm_names() {
        assert_eq!(
            "ed25519".parse::<DkimAlgorithm>().unwrap(),
            DkimAlgorithm::Ed25519
        );
        assert_eq!(
            "RSA2048".parse::<DkimAlgorithm>().unwrap(),
            DkimAlgorithm::Rsa2048
        );
        assert!("dsa".parse::<DkimAlgorithm>().is_err());
        assert_eq!(DkimAlgorithm::Rsa2048.to_string(), "rsa2048");
    }

    #[test]
    fn names_are_checked() {
        assert!(is_dns_name("sel-2024._domainkey.example.com"));
        assert!(!is_dns_name("a..b"));
        assert!(!is_dns_name("a b"));
        assert!(!is_dns_name(""));
    }

    #[test]
    fn ed25519_key_round_trips_through_pem_and_hides_in_debug() {
        let (key, txt) = generate_key(DkimAlgorithm::Ed25519).unwrap();
        assert!(txt.starts_with("v=DKIM1; k=ed25519; p="), "{txt}");
        let again = DkimPrivateKey::from_pem(&key.to_secret_pem()).unwrap();
        assert_eq!(again.dns_txt_record(), txt);
        let debug = format!("{key:?}");
        assert!(debug.contains("redacted"));
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.secret_pkcs8_der());
        assert!(!debug.contains(&b64[..16]));
    }

    #[test]
    fn signer_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<DkimSigner>();
        assert_send_sync::<DkimPrivateKey>();
    }
}
