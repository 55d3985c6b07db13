//! TLS configuration and what a session learns from the handshake.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, ServerConnection,
    SignatureScheme,
};
use tokio_rustls::TlsAcceptor;

use crate::SmtpError;

fn pem_error(path: &Path, e: rustls::pki_types::pem::Error) -> SmtpError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => SmtpError::Io {
            path: path.to_path_buf(),
            source,
        },
        other => SmtpError::Pem {
            path: path.to_path_buf(),
            what: other.to_string(),
        },
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, SmtpError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, e))?;
    if certs.is_empty() {
        return Err(SmtpError::Pem {
            path: path.to_path_buf(),
            what: "no CERTIFICATE in file".into(),
        });
    }
    Ok(certs)
}

/// A listener's TLS: the server certificate and key, and the CAs trusted for client
/// certificates, loaded from files and reloaded (on SIGHUP or when the files change) without
/// dropping sessions: each handshake takes the configuration current at that moment. A reload
/// that fails keeps the previous configuration.
pub struct ServerTls {
    files: Option<TlsFiles>,
    current: RwLock<Arc<LoadedTls>>,
    stamps: Mutex<Vec<Option<(u64, SystemTime)>>>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish()
    }
}

#[derive(Debug, Clone)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<&Path> {
        let mut v = vec![self.cert.as_path(), self.key.as_path()];
        v.extend(self.client_ca.as_deref());
        v
    }

    fn stamps(&self) -> Vec<Option<(u64, SystemTime)>> {
        self.paths()
            .into_iter()
            .map(|p| {
                std::fs::metadata(p)
                    .ok()
                    .and_then(|m| Some((m.len(), m.modified().ok()?)))
            })
            .collect()
    }
}

/// One loaded configuration.
pub(crate) struct LoadedTls {
    pub(crate) acceptor: TlsAcceptor,
    /// Verifies a presented client certificate's chain after the handshake. `None`: the TLS
    /// layer itself verified it (or requested none).
    pub(crate) chain: Option<Arc<dyn ClientCertVerifier>>,
}

impl ServerTls {
    /// From PEM files: cert chain, key, and the CA bundle trusted for client certificates
    /// (None => the system's roots via rustls-native-certs). Client certificates are requested
    /// and optional. A presented one that does not verify does not fail the handshake: it
    /// attributes nothing, and refusals say why it did not verify (unknown CA, expired, wrong
    /// key usage), which a tenant's admin can act on where a failed handshake tells nothing.
    pub fn from_files(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Result<Arc<ServerTls>, SmtpError> {
        let files = TlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: client_ca.map(Path::to_path_buf),
        };
        let stamps = files.stamps();
        let loaded = load(&files)?;
        Ok(Arc::new(ServerTls {
            files: Some(files),
            current: RwLock::new(Arc::new(loaded)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// A fixed configuration (tests, embedding): whatever client verifier it has decides at
    /// the handshake.
    pub fn fixed(config: Arc<ServerConfig>) -> Arc<ServerTls> {
        Arc::new(ServerTls {
            files: None,
            current: RwLock::new(Arc::new(LoadedTls {
                acceptor: TlsAcceptor::from(config),
                chain: None,
            })),
            stamps: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn current(&self) -> Arc<LoadedTls> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Load the files again. On error the previous configuration stays in use.
    pub fn reload(&self) -> Result<(), SmtpError> {
        let Some(files) = &self.files else {
            return Ok(());
        };
        let stamps = files.stamps();
        let loaded = load(files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = stamps;
        Ok(())
    }

    /// [`reload`](Self::reload) when a file's size or modification time changed since the last
    /// load attempt; `None` when nothing changed. A failed attempt is not retried until the
    /// files change again.
    pub fn reload_if_changed(&self) -> Option<Result<(), SmtpError>> {
        let files = self.files.as_ref()?;
        let now = files.stamps();
        {
            let mut last = self.stamps.lock().unwrap_or_else(|e| e.into_inner());
            if *last == now {
                return None;
            }
            *last = now;
        }
        Some(self.reload())
    }

    /// The certificate file, for log lines.
    pub fn cert_path(&self) -> Option<&Path> {
        self.files.as_ref().map(|f| f.cert.as_path())
    }
}

/// Build the TLS configuration of one listener from PEM files (see [`ServerTls::from_files`]).
pub fn load_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerTls>, SmtpError> {
    ServerTls::from_files(cert, key, client_ca)
}

fn load(files: &TlsFiles) -> Result<LoadedTls, SmtpError> {
    let chain = load_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| pem_error(&files.key, e))?;

    let mut roots = RootCertStore::empty();
    match &files.client_ca {
        Some(path) => {
            for ca in load_certs(path)? {
                roots.add(ca).map_err(|e| SmtpError::Pem {
                    path: path.to_path_buf(),
                    what: format!("unusable CA certificate: {e}"),
                })?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for e in &native.errors {
                tracing::warn!(error = %e, "loading system root certificates");
            }
            roots.add_parsable_certificates(native.certs);
        }
    }

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (verifier, chain_verifier): (Arc<dyn ClientCertVerifier>, _) = if roots.is_empty() {
        // No trust anchors at all (a minimal container): certificates cannot be verified, so
        // none is requested; attribution falls back to AUTH and IP.
        tracing::warn!("no CA trusted for client certificates; not requesting them");
        (WebPkiClientVerifier::no_client_auth(), None)
    } else {
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| SmtpError::Verifier(e.to_string()))?;
        (
            Arc::new(DeferredChainCheck {
                inner: inner.clone(),
            }),
            Some(inner),
        )
    };
    // TLS 1.2 and 1.3 only: older versions are off in rustls, and stated here so it stays so.
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(LoadedTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        chain: chain_verifier,
    })
}

/// Accepts any client certificate chain at the handshake, leaving the chain to be verified
/// afterwards by the session (with the same WebPKI verifier), so that a certificate that does
/// not verify gets an explained refusal instead of a bare TLS alert. The client must still
/// prove it holds the certificate's key: the handshake signatures are verified here as usual.
#[derive(Debug)]
struct DeferredChainCheck {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredChainCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What the client certificate of a finished handshake says: its names, and `Err(why)` when
/// it did not verify. `None`: no certificate.
pub(crate) fn client_certificate(
    conn: &ServerConnection,
    chain: Option<&Arc<dyn ClientCertVerifier>>,
) -> Option<(Vec<String>, Result<(), String>)> {
    let certs = conn.peer_certificates()?;
    let leaf = certs.first()?;
    let names = cert_names(leaf);
    let verdict = match chain {
        None => Ok(()),
        Some(v) => v
            .verify_client_cert(leaf, &certs[1..], UnixTime::now())
            .map(|_| ())
            .map_err(|e| describe_cert_error(&e)),
    };
    Some((names, verdict))
}

/// Why a client certificate did not verify, in the words an administrator searches for.
fn describe_cert_error(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "unknown CA (not issued by a CA in tls_client_ca)".into(),
            C::Expired | C::ExpiredContext { .. } => "expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "not valid yet".into(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "wrong key usage (not valid for TLS client authentication)".into()
            }
            C::Revoked => "revoked".into(),
            C::BadSignature => "bad signature".into(),
            C::BadEncoding => "malformed certificate".into(),
            other => format!("{other:?}"),
        },
        other => other.to_string(),
    }
}

/// DNS names of a certificate: its DNS SANs, or its CN when it has none.
fn cert_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            names.push(cn.to_ascii_lowercase());
        }
    }
    names
}

/// "TLSv1.3 TLS13_AES_256_GCM_SHA384" for the Received header's comment.
pub(crate) fn describe(conn: &ServerConnection) -> String {
    let version = conn
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS");
    match conn
        .negotiated_cipher_suite()
        .and_then(|s| s.suite().as_str())
    {
        Some(suite) => format!("{version} {suite}"),
        None => version.to_string(),
    }
}
