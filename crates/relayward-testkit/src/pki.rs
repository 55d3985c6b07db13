//! A throwaway certificate authority so tests can run verified TLS (and client certificates)
//! without touching the system trust store.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// The ring provider, named explicitly so tests do not depend on a process-wide default.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate issued by a [`TestPki`], with its private key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// Leaf certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// Leaf certificate followed by the CA certificate, PEM (what a server's cert file holds).
    pub chain_pem: String,
    cert_der: CertificateDer<'static>,
    ca_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl IssuedCert {
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// Leaf then CA, as a TLS peer presents it.
    pub fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert_der.clone(), self.ca_der.clone()]
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// A CA plus helpers to issue certificates and build rustls configs around them.
pub struct TestPki {
    ca_pem: String,
    ca_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// A fresh CA; each call is a different, mutually untrusted CA.
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        // A distinct subject per CA, so a peer trusting another TestPki reports an unknown
        // issuer rather than a bad signature from a same-named anchor.
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        params.distinguished_name = dn(&format!(
            "relayward test CA {}-{serial}",
            std::process::id()
        ));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        Self {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM (for a trust-anchor file).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).expect("add CA to root store");
        roots
    }

    /// Server certificate for `localhost`, `127.0.0.1` and `::1`.
    pub fn server_cert(&self) -> IssuedCert {
        self.issue_server(&["localhost", "127.0.0.1", "::1"])
    }

    /// Server certificate (serverAuth) whose SANs are `names`; IP literals become IP SANs.
    pub fn issue_server(&self, names: &[&str]) -> IssuedCert {
        self.issue(names, &[ExtendedKeyUsagePurpose::ServerAuth], false)
    }

    /// Server certificate for `names` that expired in 2001, for testing verification failures.
    pub fn issue_expired_server(&self, names: &[&str]) -> IssuedCert {
        self.issue(names, &[ExtendedKeyUsagePurpose::ServerAuth], true)
    }

    /// Client certificate (clientAuth) with one DNS SAN and that name as common name.
    pub fn issue_client(&self, dns_name: &str) -> IssuedCert {
        self.issue(&[dns_name], &[ExtendedKeyUsagePurpose::ClientAuth], false)
    }

    /// Host certificate (serverAuth and clientAuth) with one DNS SAN and that name as common
    /// name: what an MTA such as Postfix typically uses both for its smtpd and as the client
    /// certificate of its smtp client.
    pub fn issue_host(&self, dns_name: &str) -> IssuedCert {
        self.issue(
            &[dns_name],
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            false,
        )
    }

    /// Client certificate (clientAuth) with the DNS SANs `dns_names` (none at all: the common
    /// name alone names the client) and the common name `common_name`.
    pub fn issue_client_named(&self, dns_names: &[&str], common_name: &str) -> IssuedCert {
        self.issue_with_cn(
            dns_names,
            common_name,
            &[ExtendedKeyUsagePurpose::ClientAuth],
            false,
        )
    }

    fn issue(
        &self,
        names: &[&str],
        usages: &[ExtendedKeyUsagePurpose],
        expired: bool,
    ) -> IssuedCert {
        let cn = names.first().copied().unwrap_or("relayward test");
        self.issue_with_cn(names, cn, usages, expired)
    }

    fn issue_with_cn(
        &self,
        names: &[&str],
        common_name: &str,
        usages: &[ExtendedKeyUsagePurpose],
        expired: bool,
    ) -> IssuedCert {
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().expect("DNS SAN")),
            })
            .collect();
        params.distinguished_name = dn(common_name);
        // ECDSA keys only sign; KeyEncipherment would be wrong for them.
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        params.use_authority_key_identifier_extension = true;
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let cert_pem = cert.pem();
        IssuedCert {
            chain_pem: format!("{cert_pem}{}", self.ca_pem),
            cert_pem,
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            ca_der: self.ca_der(),
            key_der: key.serialize_der(),
        }
    }

    /// Server config presenting [`server_cert`](Self::server_cert), no client authentication.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server_config_for(&self.server_cert())
    }

    /// Server config presenting `cert`, no client authentication.
    pub fn server_config_for(&self, cert: &IssuedCert) -> Arc<ServerConfig> {
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(cert.cert_chain(), cert.key_der())
            .expect("server cert");
        Arc::new(config)
    }

    /// Server config presenting `cert` and verifying client certificates against this CA;
    /// with `mandatory` false a client without a certificate is still accepted.
    pub fn server_config_client_auth(
        &self,
        cert: &IssuedCert,
        mandatory: bool,
    ) -> Arc<ServerConfig> {
        let builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.root_store()), provider());
        let builder = if mandatory {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        let verifier = builder.build().expect("client verifier");
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert.cert_chain(), cert.key_der())
            .expect("server cert");
        Arc::new(config)
    }

    /// Client config trusting only this CA, no client certificate.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.root_store())
            .with_no_client_auth();
        Arc::new(config)
    }

    /// Client config trusting only this CA and presenting `cert`.
    pub fn client_config_with_cert(&self, cert: &IssuedCert) -> Arc<ClientConfig> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.root_store())
            .with_client_auth_cert(cert.cert_chain(), cert.key_der())
            .expect("client cert");
        Arc::new(config)
    }

    /// Client config that accepts any server certificate (opportunistic TLS, as most MTAs do).
    pub fn insecure_client_config() -> Arc<ClientConfig> {
        let verifier = Arc::new(AcceptAnyServerCert(provider()));
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Arc::new(config)
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

#[derive(Debug)]
struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServerCert {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
