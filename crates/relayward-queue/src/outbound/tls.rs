//! TLS for outbound STARTTLS.
//!
//! Opportunistic TLS (the default for MX delivery) does not verify the server certificate: MX
//! hosts commonly present self-signed or mismatched certificates, and RFC 7435 opportunistic
//! security says an unauthenticated encrypted session is better than the plaintext one a failed
//! verification would fall back to. The handshake signatures are still checked, so the session is
//! at least bound to the key the server presented. Only a route that asks for it (`require_tls` +
//! `verify_tls`) gets full chain and name verification; MTA-STS and DANE are not implemented.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// Accepts any certificate chain, checks handshake signatures.
#[derive(Debug)]
struct Unverified {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Client configuration for opportunistic STARTTLS.
pub fn opportunistic() -> Arc<ClientConfig> {
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Unverified { algorithms }))
        .with_no_client_auth();
    Arc::new(config)
}

/// Why a verifying client configuration cannot be built; deliveries that need it defer.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The CA file cannot be read, or holds something that is not a PEM certificate.
    #[error("{}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate of the CA file is not a usable trust anchor.
    #[error("{}: {source}", path.display())]
    CaCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("{}: no certificates", path.display())]
    NoCertificates { path: PathBuf },
    /// rustls refused the configuration itself.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// Client configuration that verifies the chain against `ca_file` (PEM) or the webpki roots.
pub fn verified(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let ca_file = |source| TlsConfigError::CaFile {
                path: path.to_path_buf(),
                source,
            };
            let certs = CertificateDer::pem_file_iter(path).map_err(ca_file)?;
            for cert in certs {
                let cert = cert.map_err(ca_file)?;
                roots
                    .add(cert)
                    .map_err(|source| TlsConfigError::CaCertificate {
                        path: path.to_path_buf(),
                        source,
                    })?;
            }
            if roots.is_empty() {
                return Err(TlsConfigError::NoCertificates {
                    path: path.to_path_buf(),
                });
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
