//! The per-sender limits hook: consulted at MAIL FROM and RCPT TO once the tenant is known.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use relayward_core::{reply, Address, ConnectorId, Reply, TenantId};
use relayward_smtp::SenderGuard;

/// Refuses `blocked@...` at MAIL and more than two recipients at RCPT; records every call.
#[derive(Default)]
struct Guard {
    calls: Mutex<Vec<String>>,
}

impl SenderGuard for Guard {
    fn check_mail(
        &self,
        tenant: TenantId,
        connector: ConnectorId,
        sender: &Address,
    ) -> Result<(), Reply> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("mail {tenant}/{connector} {sender}"));
        if sender.local == "blocked" {
            return Err(reply::SENDER_RESTRICTED);
        }
        Ok(())
    }

    fn check_rcpt(
        &self,
        tenant: TenantId,
        connector: ConnectorId,
        sender: &Address,
        recipient: &Address,
        recipients: usize,
    ) -> Result<(), Reply> {
        self.calls.lock().unwrap().push(format!(
            "rcpt {tenant}/{connector} {sender} {recipient} {recipients}"
        ));
        if recipients > 2 {
            return Err(reply::SENDER_RESTRICTED);
        }
        Ok(())
    }
}

const REFUSED: &str = "550 5.1.8 Access denied, bad outbound sender";

#[tokio::test]
async fn guard_refuses_at_mail_and_rcpt() {
    let t = start(test_config()).await;
    let guard = Arc::new(Guard::default());
    t.server.clone().with_sender_guard(guard.clone());
    let mut c = Client::connect(t.addr, ALPHA_IP).await;
    c.ehlo("mx.alpha.example").await;

    assert_eq!(c.cmd("MAIL FROM:<blocked@alpha.example>").await, REFUSED);
    assert_eq!(
        c.cmd("MAIL FROM:<ok@alpha.example>").await,
        "250 2.1.0 Sender ok"
    );
    assert!(c.cmd("RCPT TO:<a@dest.example>").await.starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@dest.example>").await.starts_with("250"));
    // A repeated recipient is no new recipient.
    assert!(c.cmd("RCPT TO:<b@dest.example>").await.starts_with("250"));
    assert_eq!(c.cmd("RCPT TO:<c@dest.example>").await, REFUSED);
    c.cmd("RSET").await;

    let calls = guard.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            "mail 1/1 blocked@alpha.example",
            "mail 1/1 ok@alpha.example",
            "rcpt 1/1 ok@alpha.example a@dest.example 1",
            "rcpt 1/1 ok@alpha.example b@dest.example 2",
            "rcpt 1/1 ok@alpha.example c@dest.example 3",
        ]
    );
    // Refusals are traced like any other.
    let refused = t.events.of_kind(relayward_core::TraceKind::Refused);
    assert!(refused.iter().any(|e| e.reply.as_deref() == Some(REFUSED)
        && e.sender.as_deref() == Some("blocked@alpha.example")));
}

#[tokio::test]
async fn guard_consulted_when_the_recipient_decides_the_tenant() {
    let t = start(test_config()).await;
    let guard = Arc::new(Guard::default());
    t.server.clone().with_sender_guard(guard.clone());
    // 127.0.1.7 is shared by alpha (connector 5) and epsilon (connector 6, allow_unregistered):
    // an unregistered sender's tenant is known at the first RCPT.
    let mut c = Client::connect(t.addr, SHARED_IP).await;
    c.ehlo("shared.hosting.example").await;
    assert_eq!(
        c.cmd("MAIL FROM:<blocked@elsewhere.example>").await,
        "250 2.1.0 Sender ok"
    );
    assert_eq!(c.cmd("RCPT TO:<x@epsilon.example>").await, REFUSED);
    c.cmd("RSET").await;
    // The null sender has no per-sender limits.
    assert_eq!(c.cmd("MAIL FROM:<>").await, "250 2.1.0 Sender ok");
    assert!(c
        .cmd("RCPT TO:<x@epsilon.example>")
        .await
        .starts_with("250"));
    let calls = guard.calls.lock().unwrap().clone();
    assert_eq!(calls, ["mail 5/6 blocked@elsewhere.example"]);
}
