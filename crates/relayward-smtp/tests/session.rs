//! Protocol behaviour, limits and DATA handling, over real SMTP.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use relayward_core::{TenantId, TraceKind};
use relayward_smtp::SmtpConfig;

async fn alpha_session(t: &TestServer) -> Client {
    let mut c = Client::connect(t.addr, ALPHA_IP).await;
    c.ehlo("mx.alpha.example").await;
    c
}

#[tokio::test]
async fn greeting_ehlo_and_simple_commands() {
    let t = start(test_config()).await;
    let mut c = Client::connect_raw(t.addr, ALPHA_IP).await;
    assert_eq!(c.reply().await, "220 relay.test ESMTP relayward");
    let ehlo = c.cmd("EHLO mx.alpha.example").await;
    assert_eq!(
        ehlo,
        "250-relay.test\n250-PIPELINING\n250-SIZE 36700160\n250-8BITMIME\n250-SMTPUTF8\n\
         250-ENHANCEDSTATUSCODES\n250 DSN"
    );
    assert_eq!(c.cmd("HELO mx.alpha.example").await, "250 relay.test");
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
    assert_eq!(c.cmd("noop lower case").await, "250 2.0.0 Ok");
    // HELO negotiates no extension, so no parameters
    assert!(c
        .cmd("MAIL FROM:<a@alpha.example> BODY=8BITMIME")
        .await
        .starts_with("555 5.5.4"));
    assert_eq!(
        c.cmd("mail from:<a@alpha.example>").await,
        "250 2.1.0 Sender ok"
    );
    assert_eq!(c.cmd("rset").await, "250 2.0.0 Reset state");
    assert!(c.cmd("HELP").await.starts_with("214 2.0.0 "));
    assert_eq!(
        c.cmd("VRFY postmaster").await,
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery"
    );
    assert_eq!(
        c.cmd("EXPN list").await,
        "502 5.5.1 Command not implemented"
    );
    assert_eq!(
        c.cmd("BDAT 10 LAST").await,
        "502 5.5.1 Command not implemented"
    );
    // no TLS configured on this listener
    assert_eq!(c.cmd("STARTTLS").await, "502 5.5.1 Command not implemented");
    assert_eq!(
        c.cmd("FROB").await,
        "500 5.5.2 Syntax error, command unrecognized"
    );
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 Reset state");
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
    c.expect_closed().await;
}

#[tokio::test]
async fn command_sequence_errors_change_nothing() {
    let t = start(test_config()).await;
    let mut c = Client::connect(t.addr, ALPHA_IP).await;
    assert_eq!(
        c.cmd("MAIL FROM:<a@alpha.example>").await,
        "503 5.5.1 Error: send HELO/EHLO first"
    );
    c.ehlo("mx.alpha.example").await;
    assert_eq!(
        c.cmd("RCPT TO:<r@dest.example>").await,
        "503 5.5.1 Error: need MAIL command"
    );
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 Error: need MAIL command");
    assert_eq!(
        c.cmd("MAIL FROM:<a@alpha.example>").await,
        "250 2.1.0 Sender ok"
    );
    assert_eq!(c.cmd("DATA").await, "503 5.5.1 Error: need RCPT command");
    assert_eq!(
        c.cmd("MAIL FROM:<b@alpha.example>").await,
        "503 5.5.1 Error: nested MAIL command"
    );
    assert_eq!(
        c.cmd("RCPT TO:<r@dest.example> FOO=bar").await,
        "555 5.5.4 MAIL FROM/RCPT TO parameters not recognized or not implemented"
    );
    assert_eq!(
        c.cmd("RCPT TO:<r@dest.example.>").await,
        "501 5.1.3 Bad recipient address syntax"
    );
    assert_eq!(
        c.cmd("RCPT TO:<r@dest.example>").await,
        "250 2.1.5 Recipient ok"
    );
    assert_eq!(
        c.cmd("RCPT TO:<>").await,
        "501 5.1.3 Bad recipient address syntax"
    );
    assert_eq!(c.cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    c.send("Subject: t\r\n\r\nbody\r\n").await;
    assert!(c.cmd(".").await.starts_with("250 2.0.0 Ok: queued as "));
    let m = &t.sink.messages()[0];
    assert_eq!(m.sender.as_ref().unwrap().to_string(), "a@alpha.example");
    assert_eq!(m.recipients.len(), 1);
    assert_eq!(m.recipients[0].address.to_string(), "r@dest.example");
    // after DATA the transaction is over
    assert_eq!(
        c.cmd("RCPT TO:<r@dest.example>").await,
        "503 5.5.1 Error: need MAIL command"
    );
}

#[tokio::test]
async fn bad_mail_syntax_and_parameters() {
    let config = SmtpConfig {
        max_errors: 100,
        ..test_config()
    };
    let t = start(config).await;
    let mut c = alpha_session(&t).await;
    for (cmd, want) in [
        ("MAIL FROM:<a@alpha.example> FOO=bar", "555 5.5.4"),
        ("MAIL FROM:<a@alpha.example> REQUIRETLS", "555 5.5.4"),
        ("MAIL FROM:<a@alpha.example> MT-PRIORITY=3", "555 5.5.4"),
        ("MAIL FROM:<a@alpha.example> SIZE=abc", "501 5.5.4"),
        ("MAIL FROM:<a@alpha.example> BODY=9BIT", "501 5.5.4"),
        ("MAIL FROM:<a@alpha.example.>", "501 5.1.7"),
        ("MAIL FROM:<a..b@alpha.example>", "501 5.1.7"),
        ("MAIL FROM:<a@alpha>", "501 5.1.7"),
        ("MAIL FROM:<a@@alpha.example>", "501 5.1.7"),
        ("MAIL FROM:a@alpha.example", "501 5.1.7"),
        ("MAIL FROM:<a@alpha.example", "501 5.1.7"),
        ("MAIL FROM:<jörg@alpha.example>", "553 5.6.7"),
    ] {
        let r = c.cmd(cmd).await;
        assert!(r.starts_with(want), "{cmd}: {r}");
    }
    // none of them started a transaction
    assert_eq!(
        c.cmd("MAIL FROM:<a@alpha.example> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=env+2B1")
            .await,
        "250 2.1.0 Sender ok"
    );
    assert_eq!(
        c.cmd("RCPT TO:<r@dest.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;r+40dest.example")
            .await,
        "250 2.1.5 Recipient ok"
    );
    let r = c.cmd("DATA").await;
    assert!(r.starts_with("354"));
    c.send("Subject: 8bit\r\n\r\nbody\r\n").await;
    assert!(c.cmd(".").await.starts_with("250 2.0.0"));
    let m = &t.sink.messages()[0];
    assert!(m.body_8bit && !m.smtputf8);
    assert_eq!(m.dsn_ret.as_deref(), Some("HDRS"));
    assert_eq!(m.dsn_envid.as_deref(), Some("env+1"));
    assert_eq!(m.recipients[0].notify, ["SUCCESS", "FAILURE"]);
    assert_eq!(
        m.recipients[0].orcpt.as_deref(),
        Some("rfc822;r@dest.example")
    );

    // SMTPUTF8 permits non-ASCII addresses
    let r = c.cmd("MAIL FROM:<jörg@alpha.example> SMTPUTF8").await;
    assert_eq!(r, "250 2.1.0 Sender ok");
    assert_eq!(
        c.cmd("RCPT TO:<ü@dest.example>").await,
        "250 2.1.5 Recipient ok"
    );
}

#[tokio::test]
async fn source_route_accepted_and_ignored() {
    let t = start(test_config()).await;
    let mut c = alpha_session(&t).await;
    let r = c
        .send_mail(
            "@hop.example:a@alpha.example",
            &["@hop1.example,@hop2.example:r@dest.example"],
            "S: x\r\n\r\nx\r\n",
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let m = &t.sink.messages()[0];
    assert_eq!(m.sender.as_ref().unwrap().to_string(), "a@alpha.example");
    assert_eq!(m.recipients[0].address.to_string(), "r@dest.example");
}

#[tokio::test]
async fn command_line_too_long() {
    let t = start(test_config()).await;
    let mut c = alpha_session(&t).await;
    let long = format!("NOOP {}", "x".repeat(600));
    assert_eq!(c.cmd(&long).await, "500 5.5.6 Line too long");
    // MAIL may be longer (extension parameters)...
    let padded = format!("MAIL FROM:<a@alpha.example>{}", " ".repeat(1000));
    assert_eq!(c.cmd(&padded).await, "250 2.1.0 Sender ok");
    // ...but not without bound; a line larger than any buffer is consumed and refused
    let huge = format!("RCPT TO:<r@dest.example> {}", "y".repeat(40_000));
    assert_eq!(c.cmd(&huge).await, "500 5.5.6 Line too long");
    assert_eq!(
        c.cmd("RCPT TO:<r@dest.example>").await,
        "250 2.1.5 Recipient ok"
    );
}

#[tokio::test]
async fn text_line_too_long_queues_nothing() {
    let t = start(test_config()).await;
    let mut c = alpha_session(&t).await;
    c.cmd("MAIL FROM:<a@alpha.example>").await;
    c.cmd("RCPT TO:<r@dest.example>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    // 998 is the limit; 999 octets before the CRLF is one too many
    c.send(&format!(
        "Subject: x\r\n\r\n{}\r\n{}\r\nend\r\n",
        "a".repeat(998),
        "b".repeat(999)
    ))
    .await;
    assert_eq!(
        c.cmd(".").await,
        "500 5.5.6 Text line too long, maximum is 998 characters"
    );
    // a line far larger than the read buffer
    c.cmd("MAIL FROM:<a@alpha.example>").await;
    c.cmd("RCPT TO:<r@dest.example>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(&format!("Subject: x\r\n\r\n{}\r\n", "c".repeat(100_000)))
        .await;
    assert_eq!(
        c.cmd(".").await,
        "500 5.5.6 Text line too long, maximum is 998 characters"
    );
    assert_eq!(t.sink.count(), 0);
    // 998 exactly is fine
    let r = c
        .send_mail(
            "a@alpha.example",
            &["r@dest.example"],
            &format!("S: x\r\n\r\n{}\r\n", "a".repeat(998)),
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
}

#[tokio::test]
async fn size_limits() {
    let config = SmtpConfig {
        max_message_size: 10_000,
        ..test_config()
    };
    let t = start(config).await;
    let mut c = alpha_session(&t).await;
    let ehlo = c.cmd("EHLO again").await;
    assert!(ehlo.contains("250-SIZE 10000"), "{ehlo}");
    assert_eq!(
        c.cmd("MAIL FROM:<a@alpha.example> SIZE=20000").await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@alpha.example> SIZE=9000").await,
        "250 2.1.0 Sender ok"
    );
    c.cmd("RCPT TO:<r@dest.example>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    let line = format!("{}\r\n", "z".repeat(98));
    c.send(&format!("Subject: big\r\n\r\n{}", line.repeat(200)))
        .await;
    assert_eq!(
        c.cmd(".").await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    assert_eq!(t.sink.count(), 0);
    let r = c
        .send_mail(
            "a@alpha.example",
            &["r@dest.example"],
            &format!("S: x\r\n\r\n{}", line.repeat(50)),
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
}

#[tokio::test]
async fn too_many_recipients() {
    let config = SmtpConfig {
        max_recipients: 3,
        ..test_config()
    };
    let t = start(config).await;
    let mut c = alpha_session(&t).await;
    c.cmd("MAIL FROM:<a@alpha.example>").await;
    for i in 0..3 {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<r{i}@dest.example>")).await,
            "250 2.1.5 Recipient ok"
        );
    }
    assert_eq!(
        c.cmd("RCPT TO:<r3@dest.example>").await,
        "452 4.5.3 Too many recipients"
    );
    // the limit is checked before duplicates
    assert_eq!(
        c.cmd("RCPT TO:<r0@dest.example>").await,
        "452 4.5.3 Too many recipients"
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("S: x\r\n\r\nx\r\n").await;
    assert!(c.cmd(".").await.starts_with("250 2.0.0"));
    assert_eq!(t.sink.messages()[0].recipients.len(), 3);

    c.cmd("MAIL FROM:<a@alpha.example>").await;
    c.cmd("RCPT TO:<x@dest.example>").await;
    assert_eq!(
        c.cmd("RCPT TO:<X@DEST.example>").await,
        "250 2.1.5 Recipient ok"
    );
    assert_eq!(
        c.cmd("RCPT TO:<x@DEST.example>").await,
        "250 2.1.5 Recipient ok"
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("S: x\r\n\r\nx\r\n").await;
    assert!(c.cmd(".").await.starts_with("250 2.0.0"));
    // local parts are case-sensitive, domains are not
    assert_eq!(t.sink.messages()[1].recipients.len(), 2);
}

#[tokio::test]
async fn per_ip_connection_limit() {
    let config = SmtpConfig {
        max_connections_per_ip: 2,
        ..test_config()
    };
    let t = start(config).await;
    let a = Client::connect(t.addr, ALPHA_IP).await;
    let _b = Client::connect(t.addr, ALPHA_IP).await;
    let mut third = Client::connect_raw(t.addr, ALPHA_IP).await;
    assert_eq!(
        third.reply().await,
        "421 4.7.0 Too many connections, try again later"
    );
    third.expect_closed().await;
    // another address is not affected
    let _other = Client::connect(t.addr, STRANGER_IP).await;
    let refused = t.events.of_kind(TraceKind::Refused);
    assert!(refused
        .iter()
        .any(|e| e.client_ip.as_deref() == Some(ALPHA_IP)
            && e.reply.as_deref() == Some("421 4.7.0 Too many connections, try again later")));
    // a slot frees up when a session ends
    drop(a);
    let server = t.server.clone();
    eventually(|| server.active_connections() == 2).await;
    let _c = Client::connect(t.addr, ALPHA_IP).await;
}

#[tokio::test]
async fn total_connection_limit() {
    let config = SmtpConfig {
        max_connections: 2,
        ..test_config()
    };
    let t = start(config).await;
    let _a = Client::connect(t.addr, ALPHA_IP).await;
    let _b = Client::connect(t.addr, DELTA_IP).await;
    let mut c = Client::connect_raw(t.addr, STRANGER_IP).await;
    assert_eq!(
        c.reply().await,
        "421 4.7.0 Too many connections, try again later"
    );
    c.expect_closed().await;
}

#[tokio::test]
async fn too_many_errors_closes() {
    let config = SmtpConfig {
        max_errors: 3,
        ..test_config()
    };
    let t = start(config).await;
    let mut c = alpha_session(&t).await;
    assert!(c.cmd("FROB").await.starts_with("500"));
    assert!(c.cmd("RCPT TO:<r@dest.example>").await.starts_with("503"));
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
    c.send("MAIL FROM:<x@gmail.example>\r\n").await;
    assert_eq!(
        c.reply().await,
        "550 5.7.64 TenantAttribution; Relay Access Denied"
    );
    assert_eq!(
        c.reply().await,
        "421 4.7.0 Too many errors, closing connection"
    );
    c.expect_closed().await;
}

#[tokio::test]
async fn idle_timeout_closes_with_421() {
    let mut config = test_config();
    config.timeouts.command = Duration::from_millis(300);
    let t = start(config).await;
    let mut c = alpha_session(&t).await;
    assert_eq!(
        c.reply().await,
        "421 4.4.2 Timeout exceeded, closing connection"
    );
    c.expect_closed().await;
}

#[tokio::test]
async fn data_block_timeout_closes_with_421() {
    let mut config = test_config();
    config.timeouts.data_block = Duration::from_millis(300);
    let t = start(config).await;
    let mut c = alpha_session(&t).await;
    c.cmd("MAIL FROM:<a@alpha.example>").await;
    c.cmd("RCPT TO:<r@dest.example>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send("Subject: slow\r\n").await;
    assert_eq!(
        c.reply().await,
        "421 4.4.2 Timeout exceeded, closing connection"
    );
    c.expect_closed().await;
    assert_eq!(t.sink.count(), 0);
}

#[tokio::test]
async fn pipelined_transactions() {
    let t = start(test_config()).await;
    let mut c = Client::connect(t.addr, ALPHA_IP).await;
    // EHLO and a whole first transaction up to DATA in one write
    c.send(
        "EHLO mx.alpha.example\r\nMAIL FROM:<a@alpha.example>\r\nRCPT TO:<r1@dest.example>\r\n\
         RCPT TO:<r2@dest.example>\r\nRCPT TO:<bad@dest.example.>\r\nDATA\r\n",
    )
    .await;
    assert!(c.reply().await.contains("250 DSN"));
    assert_eq!(c.reply().await, "250 2.1.0 Sender ok");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient ok");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient ok");
    assert_eq!(c.reply().await, "501 5.1.3 Bad recipient address syntax");
    assert_eq!(c.reply().await, "354 End data with <CR><LF>.<CR><LF>");
    // each message's end, the next transaction and its DATA in one write
    for i in 1..=5 {
        c.send(&format!(
            "Subject: {i}\r\n\r\nbody {i}\r\n.\r\nMAIL FROM:<a@alpha.example>\r\n\
             RCPT TO:<n{i}@dest.example>\r\nDATA\r\n"
        ))
        .await;
        assert_eq!(c.reply().await, format!("250 2.0.0 Ok: queued as Q{i:06}"));
        assert_eq!(c.reply().await, "250 2.1.0 Sender ok");
        assert_eq!(c.reply().await, "250 2.1.5 Recipient ok");
        assert!(c.reply().await.starts_with("354 "));
    }
    c.send("Subject: last\r\n\r\nbye\r\n.\r\nQUIT\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 Ok: queued as Q000006");
    assert_eq!(c.reply().await, "221 2.0.0 Bye");
    c.expect_closed().await;
    let msgs = t.sink.messages();
    assert_eq!(msgs.len(), 6);
    assert_eq!(msgs[0].recipients.len(), 2);
    assert!(String::from_utf8_lossy(&msgs[2].data).ends_with("\r\n\r\nbody 3\r\n"));
}

#[tokio::test]
async fn received_header_and_dot_unstuffing() {
    let t = start(test_config()).await;
    let mut c = alpha_session(&t).await;
    let body = "From: a@alpha.example\r\nSubject: dots\r\n\r\n..leading dot\r\n...\r\n\
                bare lf\nnext\r\n.\n.x\r\nlast";
    let r = c
        .send_mail(
            "a@alpha.example",
            &["r@dest.example"],
            &format!("{body}\r\n"),
        )
        .await;
    assert_eq!(r, "250 2.0.0 Ok: queued as Q000001");
    let m = &t.sink.messages()[0];
    let data = String::from_utf8(m.data.clone()).unwrap();
    let (received, rest) = data.split_once("\r\nFrom: ").unwrap();
    assert!(
        received.starts_with(
            "Received: from mx.alpha.example ([127.0.0.2])\r\n\tby relay.test (relayward) \
             with ESMTP id Q000001\r\n\tfor <r@dest.example>; "
        ),
        "{received}"
    );
    assert!(received.ends_with(" +0000"), "{received}");
    assert_eq!(
        rest,
        "a@alpha.example\r\nSubject: dots\r\n\r\n.leading dot\r\n..\r\nbare lf\r\nnext\r\n.\r\nx\r\nlast\r\n"
    );

    // several recipients: no "for"
    let r = c
        .send_mail(
            "a@alpha.example",
            &["r1@dest.example", "r2@dest.example"],
            "S: x\r\n\r\nx\r\n",
        )
        .await;
    assert!(r.starts_with("250"));
    let data = String::from_utf8(t.sink.messages()[1].data.clone()).unwrap();
    assert!(data.contains("with ESMTP id Q000002;\r\n\t"), "{data}");
    assert!(!data.contains("for <"));

    // HELO clients are SMTP; an empty message is still a message
    c.cmd("HELO old.alpha.example").await;
    let r = c
        .send_mail("a@alpha.example", &["r@dest.example"], "")
        .await;
    assert!(r.starts_with("250"));
    let data = String::from_utf8(t.sink.messages()[2].data.clone()).unwrap();
    assert!(data.starts_with("Received: from old.alpha.example ([127.0.0.2])"));
    assert!(data.contains(" with SMTP id "));
    assert!(data.ends_with("\r\n") && !data.contains("\r\n\r\n"));
}

#[tokio::test]
async fn mail_loop_detected() {
    let config = SmtpConfig {
        max_received_headers: 5,
        ..test_config()
    };
    let t = start(config).await;
    let mut c = alpha_session(&t).await;
    let hops = |n: usize| {
        let mut s = String::new();
        for i in 0..n {
            s.push_str(&format!(
                "Received: from hop{i}.example by hop{}.example; now\r\n",
                i + 1
            ));
        }
        s.push_str("Subject: loop\r\n\r\nReceived: in the body does not count\r\n");
        s
    };
    let r = c
        .send_mail("a@alpha.example", &["r@dest.example"], &hops(5))
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    let r = c
        .send_mail("a@alpha.example", &["r@dest.example"], &hops(6))
        .await;
    assert_eq!(r, "554 5.4.6 Too many hops, mail loop detected");
    assert_eq!(t.sink.count(), 1);
    let refused = t.events.of_kind(TraceKind::Refused);
    let ev = refused.last().unwrap();
    assert_eq!(
        ev.reply.as_deref(),
        Some("554 5.4.6 Too many hops, mail loop detected")
    );
    assert_eq!(ev.tenant_id, Some(TenantId(1)));
    assert_eq!(ev.sender.as_deref(), Some("a@alpha.example"));
}

#[tokio::test]
async fn enqueue_failure_is_451_and_nothing_accepted() {
    let t = start(test_config()).await;
    t.sink.fail.store(true, Ordering::Relaxed);
    let mut c = alpha_session(&t).await;
    let r = c
        .send_mail("a@alpha.example", &["r@dest.example"], "S: x\r\n\r\nx\r\n")
        .await;
    assert_eq!(r, "451 4.3.0 Temporary local problem, try again later");
    assert_eq!(t.sink.count(), 0);
    assert!(t.events.of_kind(TraceKind::Received).is_empty());
    assert!(t.events.used.lock().unwrap().is_empty());
    // the session goes on, and the next attempt can succeed
    t.sink.fail.store(false, Ordering::Relaxed);
    let r = c
        .send_mail("a@alpha.example", &["r@dest.example"], "S: x\r\n\r\nx\r\n")
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
}

#[tokio::test]
async fn shutdown_stops_listener_and_idle_sessions() {
    let t = start(test_config()).await;
    let mut c = alpha_session(&t).await;
    t.shutdown.send(true).unwrap();
    assert_eq!(
        c.reply().await,
        "421 4.3.2 Service shutting down, try again later"
    );
    c.expect_closed().await;
    tokio::time::timeout(Duration::from_secs(2), t.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
