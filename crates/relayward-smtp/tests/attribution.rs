//! Attribution (IP, certificate, AUTH), the relay rule and open-relay attempts, over real SMTP.

mod common;

use common::*;
use relayward_core::{ConnectorId, SenderClass, TenantId, TenantState, TraceKind};
use relayward_policy::{Directory, Method};
use relayward_smtp::ListenerConfig;

const RELAY_DENIED: &str = "550 5.7.64 TenantAttribution; Relay Access Denied";

fn tls_listener(pki: &Pki) -> ListenerConfig {
    ListenerConfig {
        tls: Some(pki.server_config()),
        ..ListenerConfig::default()
    }
}

#[tokio::test]
async fn ip_attribution_registered_sender_is_queued() {
    let t = start(test_config()).await;
    let mut c = Client::connect(t.addr, ALPHA_IP).await;
    c.ehlo("mx.alpha.example").await;
    let r = c
        .send_mail(
            "a@alpha.example",
            &["r@dest.example"],
            &simple_body("a@alpha.example"),
        )
        .await;
    assert_eq!(r, "250 2.0.0 Ok: queued as Q000001");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
    c.expect_closed().await;

    let m = &t.sink.messages()[0];
    assert_eq!(
        (m.tenant_id, m.connector_id, m.method),
        (TenantId(1), ConnectorId(1), Method::Ip)
    );
    assert_eq!(m.sender_class, SenderClass::Registered);
    assert_eq!(m.sender.as_ref().unwrap().to_string(), "a@alpha.example");
    assert_eq!(m.helo, "mx.alpha.example");
    assert_eq!(m.client_ip.to_string(), ALPHA_IP);
    assert!(!m.tls && m.auth_user.is_none() && !m.header_from_mismatch);
    assert_eq!(m.message_id.as_deref(), Some("m1@test"));

    let received = t.events.of_kind(TraceKind::Received);
    assert_eq!(received.len(), 1);
    let ev = &received[0];
    assert_eq!(ev.queue_id.as_deref(), Some("Q000001"));
    assert_eq!(ev.message_id.as_deref(), Some("m1@test"));
    assert_eq!(
        (ev.tenant_id, ev.connector_id),
        (Some(TenantId(1)), Some(ConnectorId(1)))
    );
    assert_eq!(ev.recipient.as_deref(), Some("r@dest.example"));
    assert_eq!(ev.sender_class, Some(SenderClass::Registered));
    assert_eq!(*t.events.used.lock().unwrap(), vec![ConnectorId(1)]);
}

#[tokio::test]
async fn unregistered_and_null_senders_refused_on_ip_connector() {
    let t = start(test_config()).await;
    let mut c = Client::connect(t.addr, ALPHA_IP).await;
    c.ehlo("mx.alpha.example").await;
    assert_eq!(c.cmd("MAIL FROM:<x@gmail.example>").await, RELAY_DENIED);
    // an unverified (pending) domain does not count
    assert_eq!(c.cmd("MAIL FROM:<x@pending.example>").await, RELAY_DENIED);
    // another tenant's domain is not this tenant's
    assert_eq!(c.cmd("MAIL FROM:<x@beta.example>").await, RELAY_DENIED);
    assert_eq!(c.cmd("MAIL FROM:<>").await, RELAY_DENIED);
    // nothing was started: RCPT has no transaction
    assert_eq!(
        c.cmd("RCPT TO:<r@dest.example>").await,
        "503 5.5.1 Error: need MAIL command"
    );
    assert_eq!(t.sink.count(), 0);

    let refused = t.events.of_kind(TraceKind::Refused);
    let ev = refused
        .iter()
        .find(|e| e.sender.as_deref() == Some("x@gmail.example"))
        .unwrap();
    assert_eq!(ev.reply.as_deref(), Some(RELAY_DENIED));
    assert_eq!(ev.client_ip.as_deref(), Some(ALPHA_IP));
    assert_eq!(ev.tenant_id, Some(TenantId(1)));
    assert!(refused.iter().any(|e| e.sender.as_deref() == Some("<>")));
}

#[tokio::test]
async fn unattributed_client_never_relays() {
    let config = relayward_smtp::SmtpConfig {
        max_errors: 100,
        ..test_config()
    };
    let t = start(config).await;
    let mut c = Client::connect(t.addr, STRANGER_IP).await;
    c.ehlo("spammer.example").await;
    for from in [
        "a@alpha.example",
        "",
        "victim%alpha.example@evil.example",
        "@alpha.example:a@evil.example",
        "\"a@alpha.example\"@evil.example",
    ] {
        assert_eq!(
            c.cmd(&format!("MAIL FROM:<{from}>")).await,
            RELAY_DENIED,
            "{from}"
        );
    }
    for to in [
        "victim%evil.example@alpha.example",
        "evil.example!victim@alpha.example",
        "@alpha.example:victim@evil.example",
        "\"victim@evil.example\"@alpha.example",
        "victim@alpha.example.",
    ] {
        let r = c.cmd(&format!("RCPT TO:<{to}>")).await;
        assert!(r.starts_with("503 "), "{to}: {r}");
    }
    assert!(c.cmd("DATA").await.starts_with("503 "));
    assert_eq!(t.sink.count(), 0);
    assert!(t
        .events
        .of_kind(TraceKind::Refused)
        .iter()
        .all(|e| e.tenant_id.is_none()));
}

#[tokio::test]
async fn shared_ip_decided_by_recipient_domain_and_relay_tricks_fail() {
    let t = start(test_config()).await;
    let mut c = Client::connect(t.addr, SHARED_IP).await;
    c.ehlo("shared.hosting.example").await;
    // Neither tenant owns this sender: attribution waits for the recipient domain.
    assert_eq!(
        c.cmd("MAIL FROM:<x@unknown.example>").await,
        "250 2.1.0 Sender ok"
    );
    for to in [
        "r@nobody.example",
        "victim@evil.example",
        "@epsilon.example:victim@evil.example",
        "victim%epsilon.example@evil.example",
        "epsilon.example!victim@evil.example",
        "\"victim@epsilon.example\"@evil.example",
    ] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{to}>")).await,
            RELAY_DENIED,
            "{to}"
        );
    }
    assert_eq!(
        c.cmd("RCPT TO:<victim@epsilon.example.>").await,
        "501 5.1.3 Bad recipient address syntax"
    );
    // Refused recipients only: no 354.
    assert_eq!(c.cmd("DATA").await, "554 5.5.1 No valid recipients");
    // alpha's domain names alpha, whose IP connector refuses unregistered senders
    assert_eq!(c.cmd("RCPT TO:<r@alpha.example>").await, RELAY_DENIED);
    // epsilon's connector allows unregistered senders: the recipient domain decides
    assert_eq!(
        c.cmd("RCPT TO:<\"odd@local\"@epsilon.example>").await,
        "250 2.1.5 Recipient ok"
    );
    assert_eq!(
        c.cmd("RCPT TO:<r2@elsewhere.example>").await,
        "250 2.1.5 Recipient ok"
    );
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    c.send("Subject: x\r\n\r\nhi\r\n").await;
    assert!(c.cmd(".").await.starts_with("250 2.0.0 Ok: queued as"));
    let m = &t.sink.messages()[0];
    assert_eq!((m.tenant_id, m.connector_id), (TenantId(5), ConnectorId(6)));
    assert_eq!(m.sender_class, SenderClass::Unregistered);
    let domains: Vec<_> = m
        .recipients
        .iter()
        .map(|r| r.address.domain.as_str())
        .collect();
    assert_eq!(domains, ["epsilon.example", "elsewhere.example"]);
    assert_eq!(m.recipients[0].address.local, "\"odd@local\"");

    // The sender alone decides when it is one tenant's domain.
    assert_eq!(
        c.cmd("MAIL FROM:<a@alpha.example>").await,
        "250 2.1.0 Sender ok"
    );
    assert_eq!(
        c.cmd("RCPT TO:<r@epsilon.example>").await,
        "250 2.1.5 Recipient ok"
    );
    c.cmd("RSET").await;
}

#[tokio::test]
async fn certificate_attribution_relays_unregistered_sender() {
    let pki = Pki::new();
    let t = start_with(test_config(), tls_listener(&pki)).await;
    let mut c = Client::connect(t.addr, STRANGER_IP).await;
    let ehlo = c.ehlo("mx.beta.example").await;
    assert!(ehlo.contains("250-STARTTLS"), "{ehlo}");
    c.starttls(pki.client_config(Some(pki.beta_client()))).await;
    // RFC 3207: state is reset, EHLO again; STARTTLS no longer offered
    assert_eq!(
        c.cmd("MAIL FROM:<a@beta.example>").await,
        "503 5.5.1 Error: send HELO/EHLO first"
    );
    let ehlo = c.ehlo("mx.beta.example").await;
    assert!(!ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    let r = c
        .send_mail(
            "someone@gmail.example",
            &["r@dest.example"],
            "Subject: fwd\r\n\r\nx\r\n",
        )
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    let r = c
        .send_mail("", &["r@dest.example"], "Subject: bounce\r\n\r\nx\r\n")
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(c.cmd("STARTTLS").await, "503 5.5.1 TLS already active");

    let msgs = t.sink.messages();
    let m = &msgs[0];
    assert_eq!(
        (m.tenant_id, m.connector_id, m.method),
        (TenantId(2), ConnectorId(2), Method::Certificate)
    );
    assert_eq!(m.sender_class, SenderClass::Unregistered);
    assert!(m.tls);
    let data = String::from_utf8_lossy(&m.data);
    assert!(data.contains(" with ESMTPS id "), "{data}");
    assert_eq!(msgs[1].sender, None);
    assert_eq!(msgs[1].sender_class, SenderClass::Null);
}

#[tokio::test]
async fn certificate_without_san_uses_common_name() {
    let pki = Pki::new();
    let t = start_with(test_config(), tls_listener(&pki)).await;
    let mut c = Client::connect(t.addr, STRANGER_IP).await;
    c.ehlo("client").await;
    c.starttls(pki.client_config(Some(pki.cn_client()))).await;
    c.ehlo("client").await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@beta.example>").await,
        "250 2.1.0 Sender ok"
    );
}

#[test]
fn load_tls_reports_bad_files() {
    let pki = Pki::new();
    let missing = pki.dir.path().join("missing.pem");
    let err = relayward_smtp::load_tls(&missing, &pki.server_key, None).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    // a key file is no certificate chain
    assert!(relayward_smtp::load_tls(&pki.server_key, &pki.server_key, None).is_err());
    assert!(
        relayward_smtp::load_tls(&pki.server_cert, &pki.server_key, Some(&pki.server_key)).is_err()
    );
}

#[tokio::test]
async fn untrusted_client_certificate_attributes_nothing_and_says_why() {
    let pki = Pki::new();
    let t = start_with(test_config(), tls_listener(&pki)).await;
    let mut c = Client::connect(t.addr, STRANGER_IP).await;
    c.ehlo("client").await;
    // The handshake completes (the client proved it holds the key), but a certificate from a
    // CA the listener does not trust names nobody: the session stays unattributed.
    c.starttls(pki.client_config(Some(pki.rogue_client())))
        .await;
    c.ehlo("client").await;
    assert_eq!(c.cmd("MAIL FROM:<a@beta.example>").await, RELAY_DENIED);
    assert_eq!(t.sink.count(), 0);
    let events = t.events.events.lock().unwrap().clone();
    let refused = events
        .iter()
        .find(|e| e.reply.as_deref() == Some(RELAY_DENIED))
        .expect("refusal traced");
    let detail = refused.detail.as_deref().unwrap();
    assert!(
        detail.contains("reason=not_attributed")
            && detail.contains("cert=[mx.beta.example not verified: unknown CA"),
        "{detail}"
    );
    // It is shown to the tenant whose connector has that certificate name.
    assert_eq!(refused.tenant_id, Some(TenantId(2)));
}

#[tokio::test]
async fn tls_without_client_certificate_keeps_ip_attribution() {
    let pki = Pki::new();
    let t = start_with(test_config(), tls_listener(&pki)).await;
    let mut c = Client::connect(t.addr, STRANGER_IP).await;
    c.ehlo("client").await;
    c.starttls(pki.client_config(None)).await;
    c.ehlo("client").await;
    assert_eq!(c.cmd("MAIL FROM:<a@alpha.example>").await, RELAY_DENIED);

    let mut c = Client::connect(t.addr, ALPHA_IP).await;
    c.ehlo("client").await;
    c.starttls(pki.client_config(None)).await;
    c.ehlo("client").await;
    let r = c
        .send_mail("a@alpha.example", &["r@dest.example"], "S: x\r\n\r\nx\r\n")
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(t.sink.messages()[0].tls);
}

#[tokio::test]
async fn starttls_drops_pipelined_plaintext() {
    let pki = Pki::new();
    let t = start_with(test_config(), tls_listener(&pki)).await;
    let mut c = Client::connect(t.addr, STRANGER_IP).await;
    c.ehlo("client").await;
    // Command injection (CVE-2011-0411 style): the NOOP must not run inside TLS.
    c.send("STARTTLS\r\nNOOP injected\r\n").await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS");
    c.handshake(pki.client_config(None)).await.unwrap();
    let r = c.cmd("EHLO client").await;
    assert!(r.starts_with("250-relay.test"), "{r}");
}

#[tokio::test]
async fn auth_plain_after_starttls() {
    let pki = Pki::new();
    let t = start_with(test_config(), tls_listener(&pki)).await;
    let mut c = Client::connect(t.addr, STRANGER_IP).await;
    let ehlo = c.ehlo("app.gamma.example").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(
        c.auth_plain(GAMMA_USER, GAMMA_PASSWORD).await,
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    c.starttls(pki.client_config(None)).await;
    c.ehlo("app.gamma.example").await;
    assert_eq!(
        c.auth_plain(GAMMA_USER, "wrong").await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(
        c.auth_plain("nobody", GAMMA_PASSWORD).await,
        "535 5.7.8 Authentication credentials invalid"
    );
    assert_eq!(
        c.auth_plain(GAMMA_USER, GAMMA_PASSWORD).await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(
        c.auth_plain(GAMMA_USER, GAMMA_PASSWORD).await,
        "503 5.5.1 Already authenticated"
    );
    let r = c
        .send_mail(
            "app@gamma.example",
            &["r@dest.example"],
            "S: x\r\n\r\nx\r\n",
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let m = &t.sink.messages()[0];
    assert_eq!(
        (m.tenant_id, m.connector_id, m.method),
        (TenantId(3), ConnectorId(3), Method::Auth)
    );
    assert_eq!(m.auth_user.as_deref(), Some(GAMMA_USER));
    assert!(String::from_utf8_lossy(&m.data).contains(" with ESMTPSA id "));
    // the password appears in no event
    let events = t.events.events.lock().unwrap();
    assert!(!format!("{events:?}").contains(GAMMA_PASSWORD));
}

#[tokio::test]
async fn auth_login_with_challenges_initial_response_and_cancel() {
    let pki = Pki::new();
    let t = start_with(test_config(), tls_listener(&pki)).await;
    let mut c = Client::connect(t.addr, STRANGER_IP).await;
    c.ehlo("app").await;
    c.starttls(pki.client_config(None)).await;
    c.ehlo("app").await;

    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd("*").await, "501 5.0.0 Authentication cancelled");
    assert_eq!(c.cmd("AUTH PLAIN").await, "334 ");
    assert_eq!(
        c.cmd("!!!").await,
        "501 5.5.2 Cannot Base64-decode client response"
    );
    assert_eq!(
        c.cmd("AUTH CRAM-MD5").await,
        "504 5.5.4 Unrecognized authentication type"
    );

    assert_eq!(
        c.cmd(&format!("AUTH LOGIN {}", plain_b64(GAMMA_USER)))
            .await,
        "334 UGFzc3dvcmQ6"
    );
    assert_eq!(
        c.cmd(&plain_b64(GAMMA_PASSWORD)).await,
        "235 2.7.0 Authentication successful"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<app@gamma.example>").await,
        "250 2.1.0 Sender ok"
    );

    // the challenge form, on a new session
    let mut c = Client::connect(t.addr, STRANGER_IP).await;
    c.ehlo("app").await;
    c.starttls(pki.client_config(None)).await;
    c.ehlo("app").await;
    assert_eq!(c.cmd("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(c.cmd(&plain_b64(GAMMA_USER)).await, "334 UGFzc3dvcmQ6");
    assert_eq!(
        c.cmd(&plain_b64(GAMMA_PASSWORD)).await,
        "235 2.7.0 Authentication successful"
    );
}

#[tokio::test]
async fn auth_allowed_in_cleartext_when_listener_says_so() {
    let t = start_with(
        test_config(),
        ListenerConfig {
            auth_without_tls: true,
            ..ListenerConfig::default()
        },
    )
    .await;
    let mut c = Client::connect(t.addr, STRANGER_IP).await;
    let ehlo = c.ehlo("app").await;
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert_eq!(
        c.auth_plain(GAMMA_USER, GAMMA_PASSWORD).await,
        "235 2.7.0 Authentication successful"
    );
    let r = c
        .send_mail(
            "app@gamma.example",
            &["r@dest.example"],
            "S: x\r\n\r\nx\r\n",
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert!(String::from_utf8_lossy(&t.sink.messages()[0].data).contains(" with ESMTPA id "));
}

#[tokio::test]
async fn require_tls_connector_needs_starttls() {
    let pki = Pki::new();
    let t = start_with(test_config(), tls_listener(&pki)).await;
    let mut c = Client::connect(t.addr, DELTA_IP).await;
    c.ehlo("mx.delta.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@delta.example>").await,
        "530 5.7.0 Must issue a STARTTLS command first"
    );
    c.starttls(pki.client_config(None)).await;
    c.ehlo("mx.delta.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@delta.example>").await,
        "250 2.1.0 Sender ok"
    );
}

#[tokio::test]
async fn implicit_tls_listener() {
    let pki = Pki::new();
    let t = start_with(
        test_config(),
        ListenerConfig {
            tls: Some(pki.server_config()),
            implicit_tls: true,
            auth_without_tls: false,
        },
    )
    .await;
    let mut c = Client::connect_tls(
        t.addr,
        STRANGER_IP,
        pki.client_config(Some(pki.beta_client())),
    )
    .await;
    let ehlo = c.ehlo("mx.beta.example").await;
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    let r = c
        .send_mail("x@gmail.example", &["r@dest.example"], "S: x\r\n\r\nx\r\n")
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(t.sink.messages()[0].method, Method::Certificate);
}

#[tokio::test]
async fn directory_swap_applies_to_next_mail() {
    let t = start(test_config()).await;
    let mut c = Client::connect(t.addr, ALPHA_IP).await;
    c.ehlo("mx.alpha.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@alpha.example>").await,
        "250 2.1.0 Sender ok"
    );
    c.cmd("RSET").await;

    let mut data = fixture();
    data.version = 2;
    data.tenants[0].state = TenantState::BlockedAll;
    t.dir.replace(Directory::new(data.clone()));
    assert_eq!(
        c.cmd("MAIL FROM:<a@alpha.example>").await,
        "550 5.7.705 Access denied, tenant has exceeded threshold"
    );

    data.version = 3;
    data.tenants[0].state = TenantState::BlockedUnregistered;
    data.connectors[0].allow_unregistered = true;
    t.dir.replace(Directory::new(data.clone()));
    assert_eq!(
        c.cmd("MAIL FROM:<x@gmail.example>").await,
        "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@alpha.example>").await,
        "250 2.1.0 Sender ok"
    );
    c.cmd("RSET").await;

    // A connector added at runtime attributes a client that was a stranger at connect.
    let mut s = Client::connect(t.addr, STRANGER_IP).await;
    s.ehlo("new.alpha.example").await;
    assert_eq!(s.cmd("MAIL FROM:<a@alpha.example>").await, RELAY_DENIED);
    data.version = 4;
    data.connectors[0]
        .ip_ranges
        .push(format!("{STRANGER_IP}/32").parse().unwrap());
    t.dir.replace(Directory::new(data));
    assert_eq!(
        s.cmd("MAIL FROM:<a@alpha.example>").await,
        "250 2.1.0 Sender ok"
    );
}

#[tokio::test]
async fn header_from_outside_accepted_domains_is_marked() {
    let t = start(test_config()).await;
    let mut c = Client::connect(t.addr, ALPHA_IP).await;
    c.ehlo("mx.alpha.example").await;
    let r = c
        .send_mail(
            "a@alpha.example",
            &["r@dest.example"],
            &simple_body("ceo@paypal.example"),
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let r = c
        .send_mail(
            "a@alpha.example",
            &["r@dest.example"],
            &simple_body("b@ALPHA.example"),
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let msgs = t.sink.messages();
    assert!(msgs[0].header_from_mismatch);
    assert!(!msgs[1].header_from_mismatch);
}
