//! The DSNs the relay builds, compared whole with the files under the testkit's `fixtures/`
//! (the Date header and the MIME boundaries, which change on every build, are put in as
//! placeholders first). Each is also read back by the relay's own DSN parser, as a remote's
//! would be. `RELAYWARD_BLESS_FIXTURES=1` rewrites the files from the builder, for review.

use relayward_core::SenderClass;
use relayward_queue::dsn::{self, DsnAction, DsnRecipient};
use relayward_queue::{Envelope, QueueId, Recipient};

const ORIGINAL: &[u8] = b"From: Alice <alice@acme.example>\r\n\
To: <bob@partner.example>\r\n\
Subject: Quarterly report\r\n\
Message-ID: <q3-report@acme.example>\r\n\
\r\n\
Hello Bob, the report is attached.\r\n";

fn original(ret: &str) -> Envelope {
    Envelope {
        queue_id: "0RW4B2K9Q7TX3MAB".parse().unwrap(),
        received_at: 1_796_000_000,
        tenant_id: Some(1),
        connector_id: Some(2),
        client_ip: "192.0.2.10".into(),
        helo: "mail.acme.example".into(),
        auth_user: None,
        tls: true,
        sender: "alice@acme.example".into(),
        original_sender: None,
        sender_class: SenderClass::Registered,
        header_from_mismatch: false,
        spam_verdict: false,
        message_id: Some("<q3-report@acme.example>".into()),
        size: ORIGINAL.len() as u64,
        body_8bit: false,
        smtputf8: false,
        dsn_ret: Some(ret.into()),
        dsn_envid: Some("acme-0042".into()),
        recipients: vec![Recipient {
            orcpt: Some("rfc822;bob@partner.example".into()),
            ..Recipient::new("bob@partner.example")
        }],
        held: false,
    }
}

fn recipient(action: DsnAction) -> DsnRecipient {
    DsnRecipient {
        address: "bob@partner.example".into(),
        orcpt: Some("rfc822;bob@partner.example".into()),
        action,
        status: if action == DsnAction::Failed {
            "5.1.1".into()
        } else {
            "4.4.1".into()
        },
        remote_mta: Some("mx.partner.example".into()),
        diagnostic: Some(if action == DsnAction::Failed {
            "550 5.1.1 <bob@partner.example>: Recipient address rejected: User unknown".into()
        } else {
            "421 4.4.1 Connection timed out".into()
        }),
        last_attempt: 1_796_003_600,
        will_retry_until: (action == DsnAction::Delayed).then_some(1_796_259_200),
    }
}

/// The built message with its Date and MIME boundaries replaced by placeholders.
fn normalized(raw: &[u8]) -> String {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let mut boundaries: Vec<String> = text
        .lines()
        .filter_map(|l| l.split("boundary=\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect();
    boundaries.dedup();
    let mut out = String::new();
    for line in text.split_inclusive("\r\n") {
        if line.starts_with("Date: ") {
            out.push_str("Date: <date>\r\n");
        } else {
            out.push_str(line);
        }
    }
    for (i, b) in boundaries.iter().enumerate() {
        out = out.replace(b.as_str(), &format!("<boundary-{i}>"));
    }
    out
}

fn check(name: &str, built: &[u8]) {
    let got = normalized(built);
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../relayward-testkit/fixtures")
        .join(name);
    if std::env::var_os("RELAYWARD_BLESS_FIXTURES").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = String::from_utf8(relayward_testkit::fixture(name)).unwrap();
    assert_eq!(got, want, "{name}: the built DSN differs from the fixture");
}

#[test]
fn a_failure_returns_the_headers_and_reads_back() {
    let env = original("HDRS");
    let id: QueueId = "0RW4B2K9Q7TX3MDS".parse().unwrap();
    let built = dsn::build(
        "relay.example",
        &id,
        "alice@acme.example",
        &env,
        ORIGINAL,
        &[recipient(DsnAction::Failed)],
    )
    .unwrap();
    check("dsn-built-failed.eml", &built);
    let report = relayward_policy::report::parse_dsn(&built).expect("a DSN");
    assert_eq!(report.reporting_mta.as_deref(), Some("relay.example"));
    assert_eq!(report.message_id.as_deref(), Some("q3-report@acme.example"));
    let r = &report.recipients[0];
    assert_eq!(r.final_recipient, "bob@partner.example");
    assert_eq!(r.status, "5.1.1");
    assert_eq!(r.remote_mta.as_deref(), Some("mx.partner.example"));
}

#[test]
fn a_delay_warning_says_until_when() {
    // RET=FULL: a delay still returns the headers only.
    let env = original("FULL");
    let id: QueueId = "0RW4B2K9Q7TX3MDW".parse().unwrap();
    let built = dsn::build(
        "relay.example",
        &id,
        "alice@acme.example",
        &env,
        ORIGINAL,
        &[recipient(DsnAction::Delayed)],
    )
    .unwrap();
    check("dsn-built-delayed.eml", &built);
    let report = relayward_policy::report::parse_dsn(&built).expect("a DSN");
    assert_eq!(report.recipients[0].status, "4.4.1");
}
