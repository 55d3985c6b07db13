//! TLS configuration and what a session learns from the handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

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

/// Build the rustls ServerConfig from PEM files: cert chain, key, and the CA bundle trusted for
/// client certificates (None => the system's roots via rustls-native-certs). Client certificates
/// are requested but optional; one that is presented must verify, or the handshake fails.
pub fn load_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, SmtpError> {
    let chain = load_certs(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e))?;

    let mut roots = RootCertStore::empty();
    match client_ca {
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
    let verifier = if roots.is_empty() {
        // No trust anchors at all (a minimal container): certificates cannot be verified, so
        // none is requested; attribution falls back to AUTH and IP.
        tracing::warn!("no CA trusted for client certificates; not requesting them");
        WebPkiClientVerifier::no_client_auth()
    } else {
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(|e| SmtpError::Verifier(e.to_string()))?
    };
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// DNS names of the verified client certificate: its DNS SANs, or its CN when it has none.
/// Empty when the client presented no certificate.
pub(crate) fn peer_cert_names(conn: &ServerConnection) -> Vec<String> {
    let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Vec::new();
    };
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
