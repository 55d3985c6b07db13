use std::io::ErrorKind;
use std::net::IpAddr;
use std::time::Duration;

use relayward_testkit::{Extensions, Reply, SmtpClient, SmtpSink, TestPki};

const WAIT: Duration = Duration::from_secs(5);

async fn greeted(sink: &SmtpSink) -> SmtpClient {
    let mut client = SmtpClient::connect(sink.addr()).await.unwrap();
    assert_eq!(client.read_reply().await.unwrap().0, 220);
    assert_eq!(client.ehlo("client.test").await.unwrap().0, 250);
    client
}

#[tokio::test]
async fn sink_records_a_message() {
    let sink = SmtpSink::start("127.0.0.2:0").await;
    let mut client = SmtpClient::connect_from("127.0.0.5".parse().unwrap(), sink.addr())
        .await
        .unwrap();
    assert_eq!(client.read_reply().await.unwrap().0, 220);
    let (code, ehlo) = client.ehlo("client.test").await.unwrap();
    assert_eq!(code, 250);
    for ext in [
        "PIPELINING",
        "8BITMIME",
        "SMTPUTF8",
        "SIZE ",
        "ENHANCEDSTATUSCODES",
        "DSN",
    ] {
        assert!(ehlo.contains(ext), "{ext} missing from {ehlo}");
    }
    assert!(!ehlo.contains("STARTTLS"));

    let (code, _) = client
        .send_message(
            "sender@client.test",
            &["a@example.com", "b@example.com"],
            b"Subject: hi\n\n.leading dot\nbody\n",
        )
        .await
        .unwrap();
    assert_eq!(code, 250);
    let (code, _) = client
        .cmd("MAIL FROM:<> BODY=8BITMIME RET=HDRS")
        .await
        .unwrap();
    assert_eq!(code, 250);
    assert_eq!(
        client
            .cmd("RCPT TO:<c@example.com> NOTIFY=NEVER")
            .await
            .unwrap()
            .0,
        250
    );
    assert_eq!(client.quit().await.unwrap().0, 221);

    // Accepted synchronously: recorded before the 250 went out.
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.peer.ip(), "127.0.0.5".parse::<IpAddr>().unwrap());
    assert_eq!(m.local, sink.addr());
    assert_eq!(m.helo, "client.test");
    assert!(m.esmtp && m.tls.is_none());
    assert_eq!(m.mail_from, "sender@client.test");
    assert_eq!(m.recipients(), vec!["a@example.com", "b@example.com"]);
    assert_eq!(m.data, b"Subject: hi\r\n\r\n.leading dot\r\nbody\r\n");
    assert_eq!(m.header("subject").as_deref(), Some("hi"));

    // The abandoned second transaction is recorded too, with its parameters.
    let all = sink.wait_for_transactions(2, WAIT).await;
    assert_eq!(all[1].mail_from, "");
    assert_eq!(all[1].mail_params, vec!["BODY=8BITMIME", "RET=HDRS"]);
    assert_eq!(all[1].rcpts[0].params, vec!["NOTIFY=NEVER"]);
    assert!(!all[1].accepted());
    assert_eq!(sink.connections(), 1);
}

#[tokio::test]
async fn scripted_451_then_250() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    sink.reply_data_times("451 4.3.0 try later", 1);
    sink.reply_rcpt("bad@x.test", "550 5.1.1 No such user");
    let mut client = greeted(&sink).await;

    let (code, text) = client
        .send_message("s@x.test", &["ok@x.test", "bad@x.test"], b"one\r\n")
        .await
        .unwrap();
    assert_eq!((code, text.as_str()), (451, "451 4.3.0 try later"));
    let (code, _) = client
        .send_message("s@x.test", &["ok@x.test"], b"two\r\n")
        .await
        .unwrap();
    assert_eq!(code, 250);
    let (code, text) = client
        .send_message("s@x.test", &["BAD@x.test"], b"three\r\n")
        .await
        .unwrap();
    assert_eq!((code, text.as_str()), (550, "550 5.1.1 No such user"));

    let messages = sink.wait_for(1, WAIT).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].data, b"two\r\n");
    let all = sink.transactions();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].data_reply.as_deref(), Some("451 4.3.0 try later"));
    assert!(!all[0].rcpts[1].accepted());
    assert_eq!(all[0].recipients(), vec!["ok@x.test"]);
}

#[tokio::test]
async fn wait_for_sees_messages_from_other_tasks() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    let addr = sink.addr();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut client = SmtpClient::connect(addr).await.unwrap();
        client.read_reply().await.unwrap();
        client.ehlo("x").await.unwrap();
        for i in 0..2 {
            let body = format!("n{i}\r\n");
            client
                .send_message("a@b", &["c@d"], body.as_bytes())
                .await
                .unwrap();
        }
    });
    let messages = sink.wait_for(2, WAIT).await;
    assert_eq!(messages[0].connection, messages[1].connection);
}

#[tokio::test]
async fn greeting_mail_and_multiline_scripts() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    sink.reply_greeting_times("421 4.3.2 Too busy", 1);
    let mut client = SmtpClient::connect(sink.addr()).await.unwrap();
    assert_eq!(client.read_reply().await.unwrap().0, 421);
    let err = client.read_reply().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof);

    sink.reply_mail("550 5.7.1 Sender refused\nby policy");
    let mut client = greeted(&sink).await;
    let (code, text) = client.cmd("MAIL FROM:<a@b>").await.unwrap();
    assert_eq!(code, 550);
    assert_eq!(text, "550-5.7.1 Sender refused\n550 by policy");
    assert_eq!(client.cmd("RCPT TO:<c@d>").await.unwrap().0, 503);

    sink.reply_greeting("554 5.3.2 No service");
    let mut client = SmtpClient::connect(sink.addr()).await.unwrap();
    assert_eq!(client.read_reply().await.unwrap().0, 554);
    assert_eq!(client.ehlo("x").await.unwrap().0, 503);
    assert_eq!(client.quit().await.unwrap().0, 221);
    assert_eq!(sink.connections(), 3);
}

#[tokio::test]
async fn disconnect_after_data_records_the_content() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    sink.reply_data(Reply::delayed(Duration::from_millis(10), Reply::Disconnect));
    let mut client = greeted(&sink).await;
    let err = client
        .send_message("a@b", &["c@d"], b"x\r\n")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
    let all = sink.wait_for_transactions(1, WAIT).await;
    assert_eq!(all[0].data, b"x\r\n");
    assert_eq!(all[0].data_reply, None);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn plain_hop_refuses_8bit_and_utf8() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    sink.set_extensions(Extensions::none());
    let mut client = SmtpClient::connect(sink.addr()).await.unwrap();
    client.read_reply().await.unwrap();
    let (code, ehlo) = client.ehlo("client.test").await.unwrap();
    assert_eq!(code, 250);
    assert!(!ehlo.contains("8BITMIME") && !ehlo.contains("SMTPUTF8"));
    assert_eq!(
        client.cmd("MAIL FROM:<a@b> BODY=8BITMIME").await.unwrap().0,
        555
    );
    assert_eq!(client.cmd("MAIL FROM:<a@b> SMTPUTF8").await.unwrap().0, 555);
    assert_eq!(client.cmd("MAIL FROM:<jösé@b>").await.unwrap().0, 553);
    assert_eq!(client.cmd("MAIL FROM:<a@b> SIZE=10").await.unwrap().0, 555);
    assert_eq!(client.cmd("MAIL FROM:<a@b>").await.unwrap().0, 250);
    assert_eq!(
        client.cmd("RCPT TO:<c@d> NOTIFY=NEVER").await.unwrap().0,
        555
    );

    let sink = SmtpSink::start("127.0.0.1:0").await;
    sink.set_extensions(Extensions {
        size: Some(100),
        ..Extensions::default()
    });
    let mut client = greeted(&sink).await;
    assert_eq!(client.cmd("MAIL FROM:<a@b> SIZE=101").await.unwrap().0, 552);
    let (code, _) = client
        .send_message("a@b", &["c@d"], &[b'x'; 200])
        .await
        .unwrap();
    assert_eq!(code, 552);
    assert!(client
        .cmd("MAIL FROM:<jösé@b> SMTPUTF8")
        .await
        .unwrap()
        .0
        .eq(&250));
}

#[tokio::test]
async fn sinks_share_a_port_across_loopback_addresses() {
    let ips: Vec<IpAddr> = vec!["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()];
    let sinks = SmtpSink::start_group(&ips).await;
    assert_eq!(sinks[0].addr().port(), sinks[1].addr().port());
    assert_eq!(sinks[1].addr().ip(), ips[1]);
    let mut client = greeted(&sinks[1]).await;
    client.send_message("a@b", &["c@d"], b"x").await.unwrap();
    assert!(sinks[0].messages().is_empty());
    assert_eq!(sinks[1].messages().len(), 1);
}

#[tokio::test]
async fn starttls_with_client_certificate() {
    let pki = TestPki::new();
    let server_cert = pki.issue_server(&["mx.example.com"]);
    let client_cert = pki.issue_client("relay.example.net");
    assert!(server_cert
        .cert_pem
        .starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(client_cert.key_pem.contains("PRIVATE KEY"));
    assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));

    let sink = SmtpSink::start("127.0.0.1:0").await;
    sink.enable_starttls(pki.server_config_client_auth(&server_cert, true));
    sink.require_tls(true);
    let mut client = SmtpClient::connect(sink.addr()).await.unwrap();
    client.read_reply().await.unwrap();
    let (_, ehlo) = client.ehlo("relay.example.net").await.unwrap();
    assert!(ehlo.contains("STARTTLS"));
    assert_eq!(client.cmd("MAIL FROM:<a@b>").await.unwrap().0, 530);

    client
        .starttls(pki.client_config_with_cert(&client_cert), "mx.example.com")
        .await
        .unwrap();
    assert!(client.is_tls());
    assert_eq!(
        client.peer_certificates().unwrap()[0],
        server_cert.cert_der()
    );
    let (_, ehlo) = client.ehlo("relay.example.net").await.unwrap();
    assert!(!ehlo.contains("STARTTLS"));
    let (code, _) = client
        .send_message("a@b", &["c@d"], b"secret")
        .await
        .unwrap();
    assert_eq!(code, 250);

    let m = &sink.messages()[0];
    let tls = m.tls.as_ref().expect("TLS recorded");
    assert_eq!(tls.sni.as_deref(), Some("mx.example.com"));
    assert_eq!(tls.client_certs[0], client_cert.cert_der());
    assert!(tls.version.is_some() && tls.cipher_suite.is_some());
}

#[tokio::test]
async fn tls_failures_are_visible_on_both_sides() {
    let pki = TestPki::new();
    let other = TestPki::new();
    let sink = SmtpSink::start("127.0.0.1:0").await;
    sink.enable_starttls(pki.server_config());

    // Untrusted CA: the client refuses.
    let mut client = greeted(&sink).await;
    let err = client
        .starttls(other.client_config(), "localhost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    // Expired certificate: refused even though the CA is trusted.
    sink.enable_starttls(pki.server_config_for(&pki.issue_expired_server(&["localhost"])));
    let mut client = greeted(&sink).await;
    let err = client
        .starttls(pki.client_config(), "localhost")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    // An opportunistic client takes anything.
    let mut client = greeted(&sink).await;
    client
        .starttls(TestPki::insecure_client_config(), "localhost")
        .await
        .unwrap();

    // Mandatory client auth and no client certificate: the server refuses.
    sink.enable_starttls(pki.server_config_client_auth(&pki.server_cert(), true));
    let mut client = greeted(&sink).await;
    let result = async {
        client.starttls(pki.client_config(), "127.0.0.1").await?;
        client.ehlo("x").await
    }
    .await;
    assert!(result.is_err());
    tokio::time::timeout(WAIT, async {
        while sink.tls_errors().len() < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("tls errors: {:?}", sink.tls_errors()));
}

#[tokio::test]
async fn implicit_tls_client() {
    let pki = TestPki::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        tls.write_all(b"220 submissions ready\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"EHLO x\r\n");
        tls.write_all(b"250-hello\r\n250 AUTH PLAIN\r\n")
            .await
            .unwrap();
    });
    let mut client = SmtpClient::connect_tls(addr, pki.client_config(), "127.0.0.1")
        .await
        .unwrap();
    assert!(client.is_tls());
    assert_eq!(client.read_reply().await.unwrap().0, 220);
    let (code, text) = client.ehlo("x").await.unwrap();
    assert_eq!((code, text.as_str()), (250, "250-hello\n250 AUTH PLAIN"));
}
