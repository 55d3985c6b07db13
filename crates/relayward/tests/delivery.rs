//! Accept -> spool -> scheduler -> next hop, through the real binary; a crash mid-delivery.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{message, provision_acme, Relay};
use relayward_testkit::{Reply, SmtpClient, SmtpSink};

fn relay_with_sink(sink: &SmtpSink, extra: &str) -> Relay {
    Relay::new(&format!(
        "[delivery]\nsmart_host = \"{}\"\nretry_schedule_secs = [1]\n{extra}",
        sink.addr()
    ))
}

async fn submit(relay_addr: std::net::SocketAddr, n: usize, tag: &str) -> Vec<String> {
    let mut c = SmtpClient::connect(relay_addr).await.unwrap();
    c.read_reply().await.unwrap();
    c.ehlo("client.test").await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let subject = format!("{tag}-{i}");
        let (code, text) = c
            .send_message(
                "user@acme.example",
                &["rcpt@dest.example"],
                message("user@acme.example", "rcpt@dest.example", &subject).as_bytes(),
            )
            .await
            .unwrap();
        assert_eq!(code, 250, "{text}");
        ids.push(text.rsplit(' ').next().unwrap().to_string());
    }
    ids
}

async fn cli(relay: &std::sync::Arc<Relay>, args: &[&str]) -> String {
    let relay = relay.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        relay.ok(&a)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_and_bounced_messages_have_a_whole_trace() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    sink.reply_rcpt("nobody@dest.example", "550 5.1.1 No such user");
    let mut relay = relay_with_sink(&sink, "");
    provision_acme(&relay);
    relay.start();
    let relay = std::sync::Arc::new(relay);

    let mut c = SmtpClient::connect(relay.addr).await.unwrap();
    c.read_reply().await.unwrap();
    c.ehlo("client.test").await.unwrap();
    let (code, _) = c
        .send_message(
            "user@acme.example",
            &["rcpt@dest.example"],
            message("user@acme.example", "rcpt@dest.example", "good1").as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(code, 250);
    let (code, _) = c
        .send_message(
            "user@acme.example",
            &["nobody@dest.example"],
            message("user@acme.example", "nobody@dest.example", "bad1").as_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(code, 250);

    // The good message and the DSN for the bad one reach the next hop.
    let got = sink.wait_for(2, Duration::from_secs(10)).await;
    let delivered = got
        .iter()
        .find(|m| m.recipients() == ["rcpt@dest.example"])
        .expect("delivered message");
    assert!(delivered
        .data_text()
        .contains("Message-ID: <good1@test.example>"));
    assert!(delivered
        .data_text()
        .starts_with("Received: from client.test"));
    let dsn = got
        .iter()
        .find(|m| m.recipients() == ["user@acme.example"])
        .expect("DSN to the sender");
    assert_eq!(dsn.mail_from, "");
    assert!(dsn.data_text().contains("multipart/report"));
    assert!(dsn.data_text().contains("550 5.1.1 No such user"));

    let kinds = |out: &str| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(out).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap().to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let good = kinds(
            &cli(
                &relay,
                &["trace", "--message-id", "<good1@test.example>", "--json"],
            )
            .await,
        );
        let bad = kinds(
            &cli(
                &relay,
                &["trace", "--message-id", "bad1@test.example", "--json"],
            )
            .await,
        );
        let complete = good.contains(&"received".into())
            && good.contains(&"attempt".into())
            && good.contains(&"delivered".into())
            && bad.contains(&"received".into())
            && bad.contains(&"attempt".into())
            && bad.contains(&"bounced".into())
            && bad.contains(&"dsn_sent".into());
        if complete {
            // a story reads in order
            assert_eq!(
                good.first().map(String::as_str),
                Some("received"),
                "{good:?}"
            );
            assert_eq!(
                good.last().map(String::as_str),
                Some("delivered"),
                "{good:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trace incomplete: good {good:?} bad {bad:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let human = cli(&relay, &["trace", "--message-id", "bad1@test.example"]).await;
    assert!(human.contains("550 5.1.1 No such user"), "{human}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_in_the_middle_of_delivery_loses_nothing() {
    const N: usize = 60;
    let sink = SmtpSink::start("127.0.0.1:0").await;
    // Slow next hop: every DATA takes 150 ms, so the kill lands while a batch is in flight.
    sink.reply_data(Reply::delayed(Duration::from_millis(150), "250 2.0.0 Ok"));
    // One sender, 60 messages at once: per-sender limits are not what this test is about.
    let mut relay = relay_with_sink(
        &sink,
        "max_workers = 8\n[sender_limits]\nmessages_per_minute = 0\n",
    );
    provision_acme(&relay);
    relay.start();
    let ids = submit(relay.addr, N, "batch").await;
    assert_eq!(ids.len(), N);

    // Let part of the batch through, then crash.
    let deadline = Instant::now() + Duration::from_secs(20);
    while sink.messages().len() < N / 4 {
        assert!(Instant::now() < deadline, "delivery did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.kill();
    let before = sink.messages().len();
    assert!(
        before < N,
        "the crash came too late to test anything ({before} delivered)"
    );

    sink.reset_replies();
    relay.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen: HashSet<String> = sink
            .messages()
            .iter()
            .filter_map(|m| m.header("subject"))
            .map(|s| s.trim().to_string())
            .collect();
        if (0..N).all(|i| seen.contains(&format!("batch-{i}"))) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after restart only {} of {N} distinct messages reached the sink",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // and the queue drains
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let relay_ref = &relay;
        let list = relay_ref.ok(&["queue", "list", "--json"]);
        if list.trim() == "[]" {
            break;
        }
        assert!(Instant::now() < deadline, "queue not drained: {list}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_hold_and_release_from_the_cli_while_running() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    sink.reply_data("451 4.3.0 try later");
    let mut relay = relay_with_sink(&sink, "");
    provision_acme(&relay);
    relay.start();
    let relay = std::sync::Arc::new(relay);
    let id = submit(relay.addr, 1, "held").await.remove(0);
    sink.wait_for_transactions(1, Duration::from_secs(5)).await;

    let out = cli(&relay, &["queue", "hold", &id]).await;
    assert!(out.contains("hold"), "{out}");
    sink.reset_replies();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let show = cli(&relay, &["queue", "show", &id, "--json"]).await;
        let v: serde_json::Value = serde_json::from_str(&show).unwrap();
        if v["held"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "not held: {show}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // held: no delivery even though the next hop now accepts and retries are 1 s apart
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(sink.messages().is_empty(), "a held message was delivered");

    cli(&relay, &["queue", "release", &id]).await;
    let got = sink.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].header("subject").unwrap().trim(), "held-0");

    let bad = {
        let relay = relay.clone();
        tokio::task::spawn_blocking(move || relay.cli(&["queue", "hold", "NOTAQUEUEID"]))
            .await
            .unwrap()
    };
    assert_eq!(bad.status.code(), Some(1));
}
