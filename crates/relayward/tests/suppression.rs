//! Suppression lists end to end, on the real `relayward serve`: real SMTP sessions from 127.0.0.x,
//! delivery to an in-test next hop that hard-bounces one recipient, the admin API over HTTP, the
//! CLI on the relay's store and through `--server`, and the Postfix policy protocol.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use relayward_testkit::{SmtpClient, SmtpSink};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SUPPRESSED: &str = "550 5.1.10 Recipient address suppressed after a hard bounce";
const UNKNOWN: &str =
    "550 5.1.1 <gone@dest.example>: Recipient address rejected: User unknown in virtual mailbox table";
const DAY: i64 = 86_400;

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    async fn get(&self, path: &str, token: &str) -> Value {
        let (status, v) = self.call(reqwest::Method::GET, path, token, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
        v
    }
}

/// Runs a CLI command on the relay's own store (another process than the relay).
fn local(relay: &common::Relay, args: &[&str]) -> String {
    tokio::task::block_in_place(|| relay.ok(args))
}

/// The same command through the admin API.
fn remote(relay: &common::Relay, token: &str, args: &[&str]) -> String {
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(common::BIN)
            .arg("--server")
            .arg(format!("http://{}", relay.admin_addr))
            .arg("--token")
            .arg(token)
            .args(args)
            .env_remove("RELAYWARD_URL")
            .env_remove("RELAYWARD_TOKEN")
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "relayward --server {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap().to_string()
}

async fn session(relay: SocketAddr, ip: &str) -> SmtpClient {
    let ip: IpAddr = ip.parse().unwrap();
    let mut c = SmtpClient::connect_from(ip, relay).await.unwrap();
    let (code, _) = c.read_reply().await.unwrap();
    assert_eq!(code, 220);
    c.ehlo("mail.test").await.unwrap();
    c
}

/// One transaction by hand: MAIL, each RCPT's reply, then DATA when one was accepted.
async fn transaction(
    c: &mut SmtpClient,
    from: &str,
    to: &[&str],
    subject: &str,
) -> (Vec<String>, Option<String>) {
    let (code, text) = c.cmd(&format!("MAIL FROM:<{from}>")).await.unwrap();
    assert_eq!(code, 250, "{text}");
    let mut replies = Vec::new();
    for rcpt in to {
        replies.push(c.cmd(&format!("RCPT TO:<{rcpt}>")).await.unwrap().1);
    }
    if !replies.iter().any(|r| r.starts_with("250")) {
        c.cmd("RSET").await.unwrap();
        return (replies, None);
    }
    let (code, text) = c.cmd("DATA").await.unwrap();
    assert_eq!(code, 354, "{text}");
    let data = format!(
        "From: <{from}>\r\nTo: <{}>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@test.example>\r\n\r\nHello.\r\n.\r\n",
        to[0]
    );
    c.send_raw(data.as_bytes()).await.unwrap();
    let (_, end) = c.read_reply().await.unwrap();
    (replies, Some(end))
}

/// Polls `f` until it gives `Some` (or panics with `what` after 20 s).
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One Postfix policy delegation request at RCPT; the `action=` it gets.
async fn policy_rcpt(addr: SocketAddr, sender: &str, recipient: &str) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = tcp.into_split();
    let request = format!(
        "request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address=127.0.0.1\nclient_name=localhost\nhelo_name=mail.test\nsender={sender}\nrecipient={recipient}\ninstance=1.2.3\n\n"
    );
    w.write_all(request.as_bytes()).await.unwrap();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.unwrap();
    line.trim_end()
        .strip_prefix("action=")
        .unwrap_or(&line)
        .to_string()
}

fn entries(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_bounce_suppresses_the_recipient_until_an_administrator_removes_it() {
    let sink = SmtpSink::start("127.0.0.1:0").await;
    sink.reply_rcpt("gone@dest.example", UNKNOWN);
    let policy_addr: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let mut relay = common::Relay::new(&format!(
        "[[listener]]\naddress = \"{policy_addr}\"\nrole = \"policy\"\n\n[delivery]\nsmart_host = \"{}\"\nretry_schedule_secs = [3600]\n",
        sink.addr()
    ));
    relay.start();
    common::wait_for_port(relay.admin_addr, &relay.log_path());
    common::provision_acme(&relay);
    local(&relay, &["tenant", "add", "beta"]);
    local(
        &relay,
        &["domain", "add", "beta", "beta.example", "--verified"],
    );
    local(
        &relay,
        &[
            "connector",
            "add",
            "beta",
            "--name",
            "onprem",
            "--kind",
            "on-premises",
            "--ip",
            "127.0.0.2/32",
        ],
    );
    let tenants: Value =
        serde_json::from_str(&local(&relay, &["tenant", "list", "--json"])).unwrap();
    let acme = tenants
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "acme")
        .and_then(|t| t["id"].as_i64())
        .unwrap();
    let op = last_line(&local(
        &relay,
        &["token", "create", "--operator", "--label", "ops"],
    ));
    let acme_token = last_line(&local(&relay, &["token", "create", "--tenant", "acme"]));
    let beta_token = last_line(&local(&relay, &["token", "create", "--tenant", "beta"]));
    let api = Api {
        base: format!("http://{}", relay.admin_addr),
        http: reqwest::Client::new(),
    };
    let acme_list = format!("/v1/tenants/{acme}/suppressions");

    // The remote hard-bounces the first message to gone@: the recipient lands on acme's list.
    let mut c = session(relay.addr, "127.0.0.1").await;
    let (rcpts, end) = transaction(
        &mut c,
        "staff@acme.example",
        &["gone@dest.example"],
        "first",
    )
    .await;
    assert!(rcpts[0].starts_with("250"), "{rcpts:?}");
    assert!(end.unwrap().starts_with("250 2.0.0 Ok: queued as "));
    let listed = eventually("the hard bounce on acme's list", || async {
        let l = api.get(&acme_list, &acme_token).await;
        (!l.as_array().unwrap().is_empty()).then_some(l)
    })
    .await;
    let entry = &listed[0];
    assert_eq!(entry["address"], "gone@dest.example");
    assert_eq!(entry["tenant_id"], acme);
    assert_eq!(entry["source"], "hard_bounce");
    assert_eq!(entry["reason"], UNKNOWN);
    assert_eq!(entry["created_by"], "relay");
    assert_eq!(
        entry["expires_at"].as_i64().unwrap() - entry["created_at"].as_i64().unwrap(),
        14 * DAY
    );

    // The next message: 5.1.10 for gone@ (whatever its case), 250 for the other recipient,
    // which is delivered alone.
    sink.clear();
    let (rcpts, end) = transaction(
        &mut c,
        "staff@acme.example",
        &["gone@dest.example", "ok@dest.example", "Gone@DEST.example"],
        "second",
    )
    .await;
    assert_eq!(rcpts[0], SUPPRESSED);
    assert!(rcpts[1].starts_with("250"), "{rcpts:?}");
    assert_eq!(rcpts[2], SUPPRESSED);
    assert!(end.unwrap().starts_with("250 2.0.0 Ok: queued as "));
    let got = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].recipients(), ["ok@dest.example"]);
    assert_eq!(got[0].rcpts.len(), 1, "gone@ never reached the remote");

    // Another tenant's mail to the address is not refused (nothing sent: the remote would
    // bounce it for beta too).
    let mut b = session(relay.addr, "127.0.0.2").await;
    assert_eq!(
        b.cmd("MAIL FROM:<staff@beta.example>").await.unwrap().0,
        250
    );
    let (code, text) = b.cmd("RCPT TO:<gone@dest.example>").await.unwrap();
    assert_eq!(code, 250, "{text}");
    assert_eq!(b.cmd("RSET").await.unwrap().0, 250);

    // The refusal is traced with its reason and the entry, and counted.
    let trace = eventually("the refusal in the trace", || async {
        let page = api
            .get(
                &format!("/v1/trace?tenant_id={acme}&recipient=gone@dest.example"),
                &op,
            )
            .await;
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == "refused")
            .cloned()
    })
    .await;
    assert_eq!(trace["reply"], SUPPRESSED);
    let detail = trace["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("RCPT reason=suppressed list=tenant source=hard_bounce since="),
        "{detail}"
    );
    // diagnose agrees with the session, on the store and through the running relay.
    let ask = |to: &[&str]| {
        let mut a = vec![
            "diagnose",
            "--ip",
            "127.0.0.1",
            "--from",
            "staff@acme.example",
        ];
        for t in to {
            a.extend(["--to", t]);
        }
        a.push("--json");
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    for args in [
        ask(&["gone@dest.example"]),
        ask(&["gone@dest.example", "ok@dest.example"]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let here: Value = serde_json::from_str(&local(&relay, &args)).unwrap();
        let there: Value = serde_json::from_str(&remote(&relay, &op, &args)).unwrap();
        for d in [&here, &there] {
            let step = d["steps"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["step"] == "suppression")
                .unwrap_or_else(|| panic!("{d:#}"));
            assert!(
                step["detail"]
                    .as_str()
                    .unwrap()
                    .contains("gone@dest.example (list=tenant source=hard_bounce"),
                "{d:#}"
            );
            if args.len() == 8 {
                assert_eq!(d["reply"], SUPPRESSED, "{d:#}");
                assert_eq!(d["at"], "RCPT", "{d:#}");
                assert_eq!(d["reason"], "suppressed", "{d:#}");
            } else {
                assert!(d["reply"].as_str().unwrap().starts_with("250"), "{d:#}");
            }
        }
    }
    let (_, metrics) = api.call(reqwest::Method::GET, "/metrics", &op, None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("relayward_smtp_refusals_total{code=\"550\",reason=\"suppressed\"} 2"),
        "{metrics}"
    );

    // Tenant tokens: acme's admin sees its list; beta's sees neither acme's nor the global one.
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let path = match method {
            reqwest::Method::GET => acme_list.clone(),
            _ => format!("{acme_list}/gone@dest.example"),
        };
        let (code, p) = api.call(method.clone(), &path, &beta_token, None).await;
        assert_eq!(code, 404, "{method} {path}: {p}");
    }
    let (code, _) = api
        .call(reqwest::Method::GET, "/v1/suppressions", &beta_token, None)
        .await;
    assert_eq!(code, 403);
    let (code, _) = api
        .call(
            reqwest::Method::POST,
            "/v1/suppressions",
            &acme_token,
            Some(json!({"address": "x@dest.example"})),
        )
        .await;
    assert_eq!(code, 403);
    let (code, p) = api
        .call(
            reqwest::Method::POST,
            &acme_list,
            &acme_token,
            Some(json!({"address": "not an address"})),
        )
        .await;
    assert_eq!((code, p["field"].as_str()), (422, Some("address")), "{p}");
    let (code, p) = api
        .call(
            reqwest::Method::POST,
            &acme_list,
            &acme_token,
            Some(json!({"address": "a@dest.example", "days": 0})),
        )
        .await;
    assert_eq!((code, p["field"].as_str()), (422, Some("days")), "{p}");

    // The CLI: a list must be named (bad usage, exit 2); removing what is not listed fails
    // with one line (exit 1).
    let out = tokio::task::block_in_place(|| relay.cli(&["suppression", "add", "x@dest.example"]));
    assert_eq!(out.status.code(), Some(2));
    let out = tokio::task::block_in_place(|| {
        relay.cli(&["suppression", "remove", "acme", "nobody@dest.example"])
    });
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "relayward: nobody@dest.example is not on tenant acme's list"
    );

    // The CLI lists the same entries on the store and through the API.
    let on_store: Value =
        serde_json::from_str(&local(&relay, &["suppression", "list", "acme", "--json"])).unwrap();
    let through_api: Value = serde_json::from_str(&remote(
        &relay,
        &acme_token,
        &["suppression", "list", "acme", "--json"],
    ))
    .unwrap();
    assert_eq!(on_store, through_api);
    assert_eq!(entries(&on_store), ["gone@dest.example"]);
    let table = local(&relay, &["suppression", "list", "acme"]);
    assert_eq!(table, remote(&relay, &op, &["suppression", "list", "acme"]));
    assert!(
        table.contains("gone@dest.example") && table.contains("hard_bounce"),
        "{table}"
    );

    // Removal through the API lets the next message through to the remote.
    sink.reset_replies();
    sink.clear();
    let (code, p) = api
        .call(
            reqwest::Method::DELETE,
            &format!("{acme_list}/Gone@dest.example"),
            &acme_token,
            None,
        )
        .await;
    assert_eq!(code, 204, "{p}");
    let (code, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("{acme_list}/gone@dest.example"),
            &acme_token,
            None,
        )
        .await;
    assert_eq!(code, 404);
    let (rcpts, end) = transaction(
        &mut c,
        "staff@acme.example",
        &["gone@dest.example"],
        "third",
    )
    .await;
    assert!(rcpts[0].starts_with("250"), "{rcpts:?}");
    assert!(end.unwrap().starts_with("250 2.0.0 Ok: queued as "));
    let got = sink.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0].recipients(), ["gone@dest.example"]);

    // A global entry refuses every tenant, here and in the policy service.
    let (code, added) = api
        .call(
            reqwest::Method::POST,
            "/v1/suppressions",
            &op,
            Some(json!({"address": "Trap@Dest.example", "reason": "spam trap"})),
        )
        .await;
    assert_eq!(code, 201, "{added}");
    assert_eq!(
        (added["address"].as_str(), added["expires_at"].is_null()),
        (Some("trap@dest.example"), true)
    );
    for (client, from) in [
        (&mut c, "staff@acme.example"),
        (&mut b, "staff@beta.example"),
    ] {
        let (rcpts, _) = transaction(client, from, &["trap@dest.example"], "trap").await;
        assert_eq!(rcpts[0], SUPPRESSED, "{from}");
    }
    assert_eq!(
        policy_rcpt(policy_addr, "staff@acme.example", "trap@dest.example").await,
        SUPPRESSED
    );
    assert_eq!(
        policy_rcpt(policy_addr, "staff@acme.example", "fine@dest.example").await,
        "OK"
    );

    // A change on the store by another process (the CLI) reaches the relay within the poll.
    local(
        &relay,
        &[
            "suppression",
            "add",
            "--global",
            "late@dest.example",
            "--days",
            "3",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (rcpts, _) =
            transaction(&mut c, "staff@acme.example", &["late@dest.example"], "late").await;
        if rcpts[0] == SUPPRESSED {
            break;
        }
        assert!(Instant::now() < deadline, "the CLI's entry is not in force");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let global = remote(&relay, &op, &["suppression", "list", "--global", "--json"]);
    assert_eq!(
        entries(&serde_json::from_str(&global).unwrap()),
        ["late@dest.example", "trap@dest.example"]
    );
    remote(
        &relay,
        &op,
        &["suppression", "remove", "--global", "late@dest.example"],
    );
    let (rcpts, _) = transaction(
        &mut c,
        "staff@acme.example",
        &["late@dest.example"],
        "late2",
    )
    .await;
    assert!(rcpts[0].starts_with("250"), "{rcpts:?}");

    // People's changes are audited with who made them; the automatic entry is not.
    let audit = api.get("/v1/audit?limit=500", &op).await;
    let sup: Vec<(String, Option<i64>, String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"].as_str().unwrap().starts_with("suppression."))
        .map(|a| {
            (
                a["action"].as_str().unwrap().to_string(),
                a["tenant_id"].as_i64(),
                a["actor"].as_str().unwrap().to_string(),
                a["object"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let acme_actor = sup
        .iter()
        .find(|a| a.0 == "suppression.remove" && a.1 == Some(acme))
        .map(|a| a.2.clone())
        .expect("acme's removal audited");
    assert!(
        acme_actor.ends_with(&format!("/tenant:{acme}")),
        "{acme_actor}"
    );
    assert!(
        sup.contains(&(
            "suppression.add".into(),
            None,
            format!("token:{}/operator", op.split('_').nth(1).unwrap()),
            "trap@dest.example".into()
        )),
        "{sup:?}"
    );
    assert!(
        sup.iter().any(|a| a.0 == "suppression.add"
            && a.1.is_none()
            && a.2.starts_with("cli:")
            && a.3 == "late@dest.example"),
        "{sup:?}"
    );
    assert!(
        sup.iter()
            .any(|a| a.0 == "suppression.remove" && a.1.is_none() && a.3 == "late@dest.example"),
        "{sup:?}"
    );
    assert!(
        !sup.iter()
            .any(|a| a.0 == "suppression.add" && a.1 == Some(acme)),
        "automatic entries are not audited: {sup:?}"
    );

    relay.stop();
}
