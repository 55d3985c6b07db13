//! DKIM signing checked the way a receiver checks it: mail-auth's verifier, fetching the public
//! key from an in-test DNS server that serves the TXT record relayward printed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use mail_auth::dkim::DkimError as MailAuthDkimError;
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use relayward_queue::dkim::{
    generate_key, load_key, save_key, DkimAlgorithm, DkimError, DkimKeyType, DkimPrivateKey,
    DkimSigner,
};
use relayward_testkit::DnsServer;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;

const DOMAIN: &str = "example.com";
const SELECTOR: &str = "sel";

fn fixture() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim-message.eml"))
        .expect("read dkim-message.eml")
}

/// A DNS server publishing `txt` at `sel._domainkey.example.com`, and a verifier using only it.
async fn verifier(txt: &str) -> (DnsServer, MessageAuthenticator) {
    let dns = DnsServer::start().await;
    dns.add_txt(&format!("{SELECTOR}._domainkey.{DOMAIN}"), &[txt]);
    let auth = MessageAuthenticator(dns.resolver());
    (dns, auth)
}

/// The result of the one DKIM signature on `message`.
async fn verify(auth: &MessageAuthenticator, message: &[u8]) -> DkimResult {
    let parsed = AuthenticatedMessage::parse(message).expect("parse signed message");
    let outputs = auth.verify_dkim(&parsed).await;
    assert_eq!(outputs.len(), 1, "one signature expected");
    outputs[0].result().clone()
}

fn signed(header: &str, message: &[u8]) -> Vec<u8> {
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

fn replace(message: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(message.to_vec()).unwrap();
    assert!(text.contains(from), "{from:?} not in message");
    text.replacen(from, to, 1).into_bytes()
}

async fn sign_and_verify(algorithm: DkimAlgorithm) {
    let dir = tempfile::tempdir().unwrap();
    let (key, txt) = generate_key(algorithm).unwrap();
    let k = match algorithm {
        DkimAlgorithm::Ed25519 => "ed25519",
        DkimAlgorithm::Rsa2048 => "rsa",
    };
    assert!(txt.starts_with(&format!("v=DKIM1; k={k}; p=")), "{txt}");

    // The caller keeps the key on disk; sign with what comes back from there.
    let path = dir.path().join("example.com.sel.key");
    save_key(&path, &key).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let key = load_key(&path).unwrap();
    assert_eq!(key.dns_txt_record(), txt);

    let signer = DkimSigner::new(DOMAIN, SELECTOR, &key).unwrap();
    let message = fixture();
    let header = signer.sign(&message).unwrap();
    assert!(header.starts_with("DKIM-Signature: v=1; a="), "{header}");
    assert!(header.ends_with("\r\n"));
    let unfolded = header.replace("\r\n\t", " ");
    let a = match algorithm {
        DkimAlgorithm::Ed25519 => "a=ed25519-sha256",
        DkimAlgorithm::Rsa2048 => "a=rsa-sha256",
    };
    assert!(unfolded.contains(a), "{unfolded}");
    assert!(unfolded.contains("s=sel; d=example.com"), "{unfolded}");
    assert!(unfolded.contains("c=relaxed/relaxed"), "{unfolded}");
    let h = unfolded
        .split("; ")
        .find_map(|t| t.trim().strip_prefix("h="))
        .expect("h= tag")
        .to_ascii_lowercase();
    for name in [
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
    ] {
        assert!(h.split(':').any(|n| n == name), "{name} not in h={h}");
    }
    // From is signed once more than it occurs, so a second From cannot be slipped in.
    assert_eq!(h.split(':').filter(|n| *n == "from").count(), 2, "h={h}");

    let (_dns, auth) = verifier(&txt).await;
    let good = signed(&header, &message);
    assert_eq!(verify(&auth, &good).await, DkimResult::Pass);

    // Relaxed/relaxed survives what forwarders do to whitespace.
    let rewrapped = replace(&good, "Subject: Quarterly", "Subject:   Quarterly");
    let rewrapped = replace(&rewrapped, "Regards,\r\n", "Regards,   \r\n");
    assert_eq!(verify(&auth, &rewrapped).await, DkimResult::Pass);

    // A changed body, a changed header or an added From breaks it.
    // (mail-auth reports a body hash mismatch as neutral, RFC 6376's "body hash did not verify".)
    let tampered = replace(&good, "Numbers are up", "Numbers are down");
    assert_eq!(
        verify(&auth, &tampered).await,
        DkimResult::Neutral(mail_auth::Error::Dkim(
            MailAuthDkimError::FailedBodyHashMatch
        ))
    );
    let tampered = replace(&good, "Subject: Quarterly", "Subject: Urgent quarterly");
    assert!(matches!(
        verify(&auth, &tampered).await,
        DkimResult::Fail(_)
    ));
    let tampered = replace(
        &good,
        "From: Alice Example",
        "From: ceo@example.com\r\nFrom: Alice Example",
    );
    assert!(!matches!(verify(&auth, &tampered).await, DkimResult::Pass));

    // Signed with another key than the one published: fails.
    let (other, _) = generate_key(DkimAlgorithm::Ed25519).unwrap();
    let other_header = DkimSigner::new(DOMAIN, SELECTOR, &other)
        .unwrap()
        .sign(&message)
        .unwrap();
    assert!(!matches!(
        verify(&auth, &signed(&other_header, &message)).await,
        DkimResult::Pass
    ));
}

#[tokio::test]
async fn ed25519_signature_verifies() {
    sign_and_verify(DkimAlgorithm::Ed25519).await;
}

#[tokio::test]
async fn rsa2048_signature_verifies() {
    sign_and_verify(DkimAlgorithm::Rsa2048).await;
}

/// Keys made elsewhere: PKCS#1 RSA as `opendkim-genkey` writes it, and Ed25519 PKCS#8 v1 as
/// `openssl genpkey` writes it, sign like keys made here.
#[tokio::test]
async fn imported_keys_sign() {
    let (rsa_key, rsa_txt) = generate_key(DkimAlgorithm::Rsa2048).unwrap();
    let pkcs1_pem = rsa::RsaPrivateKey::from_pkcs8_der(rsa_key.secret_pkcs8_der())
        .unwrap()
        .to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
        .unwrap();
    assert!(pkcs1_pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let imported = DkimPrivateKey::from_pem(&pkcs1_pem).unwrap();
    assert_eq!(imported.key_type(), DkimKeyType::Rsa);
    assert_eq!(imported.dns_txt_record(), rsa_txt);

    let (ed_key, ed_txt) = generate_key(DkimAlgorithm::Ed25519).unwrap();
    // PKCS#8 v2 from ring: 16-byte prefix, 32-byte seed, then the public key. v1 is prefix+seed.
    let v2 = ed_key.secret_pkcs8_der();
    let mut v1 = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    v1.extend_from_slice(&v2[16..48]);
    let imported_ed = DkimPrivateKey::from_pkcs8_der(&v1).unwrap();
    assert_eq!(imported_ed.key_type(), DkimKeyType::Ed25519);
    assert_eq!(imported_ed.dns_txt_record(), ed_txt);

    let message = fixture();
    for (key, txt) in [(imported, rsa_txt), (imported_ed, ed_txt)] {
        let header = DkimSigner::new(DOMAIN, SELECTOR, &key)
            .unwrap()
            .sign(&message)
            .unwrap();
        let (_dns, auth) = verifier(&txt).await;
        assert_eq!(
            verify(&auth, &signed(&header, &message)).await,
            DkimResult::Pass
        );
    }
}

#[test]
fn key_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let (key, txt) = generate_key(DkimAlgorithm::Ed25519).unwrap();
    let path = dir.path().join("k.pem");

    // Replacing a world-readable file leaves a 0600 one.
    std::fs::write(&path, "old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    key.save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert_eq!(DkimPrivateKey::load(&path).unwrap().dns_txt_record(), txt);
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // Readable by group or others: refused, and the message says what to do.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = load_key(&path).unwrap_err();
    assert!(matches!(
        err,
        DkimError::InsecurePermissions { mode: 0o640, .. }
    ));
    assert!(err.to_string().contains("chmod 600"), "{err}");

    // Garbage is not a key.
    let junk = dir.path().join("junk");
    std::fs::write(
        &junk,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::set_permissions(&junk, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(load_key(&junk), Err(DkimError::InvalidKey(_))));
    assert!(matches!(
        load_key(&dir.path().join("missing")),
        Err(DkimError::Io { .. })
    ));

    // The private key shows up in no Debug output or error.
    let secret_line = pem.lines().nth(1).unwrap();
    assert!(!format!("{key:?}").contains(secret_line));
    let signer = DkimSigner::new(DOMAIN, SELECTOR, &key).unwrap();
    assert!(!format!("{signer:?}").contains(secret_line));
}

#[test]
fn signing_needs_a_from_header_and_valid_names() {
    let (key, _) = generate_key(DkimAlgorithm::Ed25519).unwrap();
    let signer = DkimSigner::new("Example.COM.", SELECTOR, &key).unwrap();
    assert_eq!(signer.domain(), "example.com");
    assert!(matches!(
        signer.sign(b"Subject: no sender\r\n\r\nbody\r\n"),
        Err(DkimError::NoFromHeader)
    ));
    assert!(matches!(
        DkimSigner::new("exa mple.com", SELECTOR, &key),
        Err(DkimError::InvalidName { .. })
    ));
    assert!(matches!(
        DkimSigner::new(DOMAIN, "bad selector", &key),
        Err(DkimError::InvalidName { .. })
    ));
}
