//! Accepted mail through the group commit and the spool's journal, delivered by the scheduler:
//! what a message delivered at once leaves behind, what a deferred one becomes, and a restart
//! with messages still in the journal.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{body, config, wait_until, Relay};
use relayward_core::TraceKind;
use relayward_queue::{Envelope, GroupCommitter, QueueId, Recipient, RecipientStatus, Spool};
use relayward_testkit::{DnsServer, SmtpSink};

const T: Duration = Duration::from_secs(5);

fn envelope(id: QueueId, rcpt: &str, size: usize) -> Envelope {
    Envelope {
        queue_id: id,
        received_at: relayward_core::now().0,
        tenant_id: Some(1),
        connector_id: Some(1),
        client_ip: "192.0.2.10".into(),
        helo: "client.test".into(),
        auth_user: None,
        tls: false,
        sender: "alice@origin.test".into(),
        original_sender: None,
        sender_class: relayward_core::SenderClass::Registered,
        header_from_mismatch: false,
        spam_verdict: false,
        message_id: None,
        size: size as u64,
        body_8bit: false,
        smtputf8: false,
        dsn_ret: None,
        dsn_envid: None,
        recipients: vec![Recipient::new(rcpt)],
        held: false,
    }
}

/// Message files in the spool's queue directories (the journal aside).
fn message_files(root: &std::path::Path) -> usize {
    std::fs::read_dir(root.join("queue"))
        .unwrap()
        .flatten()
        .map(|shard| std::fs::read_dir(shard.path()).unwrap().count())
        .sum()
}

async fn accept(gc: &GroupCommitter, spool: &Spool, subject: &str) -> QueueId {
    let id = spool.new_queue_id();
    let data = body(subject);
    gc.store(id, envelope(id, "bob@example.com", data.len()), data)
        .await
        .unwrap();
    id
}

async fn mx() -> (SmtpSink, DnsServer) {
    let sink = SmtpSink::start_group(&[IpAddr::from([127, 0, 0, 2])])
        .await
        .remove(0);
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx.example.com");
    dns.add_a("mx.example.com", [127, 0, 0, 2].into());
    (sink, dns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_at_once_it_never_gets_a_message_file() {
    let (sink, dns) = mx().await;
    let relay = Relay::start(config(&dns, sink.addr().port()));
    let gc = GroupCommitter::start(relay.spool.clone()).unwrap();
    let mut ids = Vec::new();
    for i in 0..20 {
        let id = accept(&gc, &relay.spool, &format!("at-once-{i}")).await;
        assert!(relay.spool.in_journal(&id));
        relay.scheduler.submit(id);
        ids.push(id);
    }
    let got = sink.wait_for(20, T).await;
    assert_eq!(got.len(), 20);
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
    assert_eq!(message_files(relay.dir.path()), 0);
    for id in &ids {
        assert!(!relay.spool.in_journal(id));
    }
    // The scheduler traces a delivery just after it records the removal.
    assert!(wait_until(T, || relay.events.count(TraceKind::Delivered) == 20).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_message_moves_to_a_file_with_its_new_envelope() {
    let (sink, dns) = mx().await;
    sink.reply_data_times("451 4.3.0 Try again later", 1);
    let relay = Relay::start(config(&dns, sink.addr().port()));
    let gc = GroupCommitter::start(relay.spool.clone()).unwrap();
    let id = accept(&gc, &relay.spool, "deferred").await;
    relay.scheduler.submit(id);
    assert!(
        wait_until(T, || relay
            .spool
            .read_envelope(&id)
            .map(|e| e.recipients[0].status == RecipientStatus::Deferred)
            .unwrap_or(false))
        .await,
        "the deferral is recorded"
    );
    assert!(!relay.spool.in_journal(&id));
    assert_eq!(message_files(relay.dir.path()), 1);
    assert_eq!(relay.spool.read_body(&id).unwrap(), body("deferred"));
    // The retry reads it back from its file and finishes it.
    let got = sink.wait_for(1, T).await;
    assert_eq!(got[0].header("subject").unwrap().trim(), "deferred");
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
    assert_eq!(message_files(relay.dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_left_in_the_journal_are_delivered_after_a_restart() {
    let (sink, dns) = mx().await;
    let dir = Arc::new(tempfile::tempdir().unwrap());
    {
        // Accepted, never attempted: the relay stops before its scheduler sees them.
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let gc = GroupCommitter::start(spool.clone()).unwrap();
        for i in 0..5 {
            accept(&gc, &spool, &format!("restart-{i}")).await;
        }
    }
    // The writer thread lets go of its clone of the spool (and so of the lock) once the
    // committer is gone.
    let spool = loop {
        match Spool::open(dir.path()) {
            Ok(s) => break Arc::new(s),
            Err(relayward_queue::SpoolError::Locked(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(spool.scan().unwrap().len(), 5);
    let relay = Relay::start_on(dir, spool, config(&dns, sink.addr().port()));
    let got = sink.wait_for(5, T).await;
    let mut subjects: Vec<String> = got
        .iter()
        .map(|m| m.header("subject").unwrap().trim().to_string())
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        (0..5).map(|i| format!("restart-{i}")).collect::<Vec<_>>()
    );
    assert!(wait_until(T, || relay.in_spool().is_empty()).await);
}
