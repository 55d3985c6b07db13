//! Connecting tenants' servers: certificate names under accepted domains (host names and
//! one-label wildcards), what is refused at creation, explained refusals, `diagnose` against
//! live sessions, and connector last use. Clients are Python's smtplib over STARTTLS with the
//! test PKI's certificates, as a tenant's server would connect.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Relay;
use relayward_testkit::{IssuedCert, SmtpSink, TestPki};
use serde_json::{json, Value};

/// Runs the transactions described in argv[1] (JSON list) and prints, per case, where the
/// transaction ended and the reply there.
const CLIENT: &str = r#"
import json, smtplib, ssl, sys
out = []
for c in json.loads(sys.argv[1]):
    s = smtplib.SMTP("127.0.0.1", c["port"], source_address=(c.get("src", "127.0.0.1"), 0), timeout=20)
    s.ehlo("client.test")
    if c.get("tls"):
        ctx = ssl._create_unverified_context()
        if c.get("cert"):
            ctx.load_cert_chain(c["cert"], c["key"])
        s.starttls(context=ctx)
        s.ehlo("client.test")
    if c.get("auth"):
        s.user, s.password = c["auth"]
        try:
            s.auth("PLAIN", s.auth_plain)
        except smtplib.SMTPException:
            pass
    def reply(at, code, msg):
        return {"at": at, "reply": "%d %s" % (code, msg.decode())}
    code, msg = s.docmd("MAIL FROM:<%s>" % c["from"])
    res = reply("MAIL", code, msg)
    if code == 250:
        for r in c["to"]:
            code, msg = s.docmd("RCPT TO:<%s>" % r)
            if code != 250:
                res = reply("RCPT", code, msg)
                break
        else:
            code, msg = s.docmd("DATA")
            if code == 354:
                hf = c.get("header_from", c["from"]) or "postmaster@relay.test"
                s.send(("From: <%s>\r\nSubject: t\r\n\r\nhello\r\n.\r\n" % hf).encode())
                code, msg = s.getreply()
            res = reply("DATA", code, msg)
    out.append(res)
    try:
        s.quit()
    except smtplib.SMTPException:
        pass
print(json.dumps(out))
"#;

fn python(args: &[&str]) -> Option<String> {
    common::python(CLIENT, args)
}

struct Setup {
    relay: Relay,
    tls_port: u16,
    dir: tempfile::TempDir,
    _sink: SmtpSink,
}

impl Setup {
    fn write_cert(&self, name: &str, c: &IssuedCert) -> (PathBuf, PathBuf) {
        let cert = self.dir.path().join(format!("{name}.pem"));
        let key = self.dir.path().join(format!("{name}.key"));
        std::fs::write(&cert, &c.chain_pem).unwrap();
        std::fs::write(&key, &c.key_pem).unwrap();
        (cert, key)
    }

    /// Runs `cases` through the relay's TLS listener; one `{at, reply}` per case.
    fn run(&self, cases: &[Value]) -> Option<Vec<Value>> {
        let cases: Vec<Value> = cases
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c["port"] = json!(self.tls_port);
                c
            })
            .collect();
        let out = python(&[&serde_json::to_string(&cases).unwrap()])?;
        Some(serde_json::from_str(out.trim()).unwrap())
    }

    fn trace(&self) -> Vec<Value> {
        serde_json::from_str(&self.relay.ok(&["trace", "--limit", "1000", "--json"])).unwrap()
    }
}

fn tls_relay(pki: &TestPki, sink: SmtpSink) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server = pki.issue_server(&["relay.test"]);
    let write = |name: &str, text: &str| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let cert = write("server.pem", &server.chain_pem);
    let key = write("server.key", &server.key_pem);
    let ca = write("ca.pem", pki.ca_pem());
    let tls_port = common::free_port();
    let relay = Relay::new(&format!(
        "[delivery]\nsmart_host = \"{}\"\n\n[[listener]]\naddress = \"127.0.0.1:{tls_port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
        sink.addr(),
        cert.display(),
        key.display(),
        ca.display()
    ));
    Setup {
        relay,
        tls_port,
        dir,
        _sink: sink,
    }
}

fn start(s: &mut Setup) {
    s.relay.start();
    common::wait_for_port(
        format!("127.0.0.1:{}", s.tls_port).parse().unwrap(),
        &s.relay.log_path(),
    );
}

fn case(cert: Option<&(PathBuf, PathBuf)>, from: &str, to: &str) -> Value {
    let mut c = json!({"tls": true, "from": from, "to": [to]});
    if let Some((cert, key)) = cert {
        c["cert"] = json!(cert.display().to_string());
        c["key"] = json!(key.display().to_string());
    }
    c
}

fn reply(v: &Value) -> &str {
    v["reply"].as_str().unwrap()
}

fn refusal_with<'a>(trace: &'a [Value], needle: &str) -> Option<&'a Value> {
    trace.iter().find(|e| {
        e["kind"] == "refused" && e["detail"].as_str().is_some_and(|d| d.contains(needle))
    })
}

const RELAY_DENIED: &str = "550 5.7.64 TenantAttribution; Relay Access Denied";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_wildcard_certificate_names_and_what_is_refused() {
    let pki = TestPki::new();
    let sink = SmtpSink::start("127.0.0.1:0").await;
    let mut s = tls_relay(&pki, sink);
    let r = &s.relay;
    let contoso_id: i64 = r.ok(&["tenant", "add", "contoso"]).trim().parse().unwrap();
    r.ok(&["domain", "add", "contoso", "contoso.example", "--verified"]);
    r.ok(&["tenant", "add", "fabrikam"]);
    r.ok(&[
        "domain",
        "add",
        "fabrikam",
        "fabrikam.example",
        "--verified",
    ]);
    let add = |tenant: &str, name: &str, cert: &str| {
        r.cli(&[
            "connector",
            "add",
            tenant,
            "--name",
            name,
            "--kind",
            "on-premises",
            "--cert-name",
            cert,
        ])
    };
    let out = add("contoso", "hybrid", "mail.contoso.example");
    assert!(out.status.success());
    assert!(out.stderr.is_empty(), "no warning for a covered name");
    assert!(add("fabrikam", "edge", "*.fabrikam.example")
        .status
        .success());
    // A name under an unverified domain: allowed, with a warning, flagged.
    r.ok(&["domain", "add", "contoso", "later.example"]);
    let out = add("contoso", "later", "mx.later.example");
    assert!(out.status.success());
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains("warning:") && warning.contains("under no verified accepted domain"),
        "{warning}"
    );
    // Another tenant's name, or a name under another tenant's domain: refused.
    for (name, why) in [
        ("mail.contoso.example", "already claimed"),
        (
            "smtp.contoso.example",
            "under a verified accepted domain of tenant contoso",
        ),
        ("*.contoso.example", "already claimed"),
    ] {
        let out = add("fabrikam", "steal", name);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{name}: {err}");
    }
    assert!(add("contoso", "bad", "m*.contoso.example").status.code() == Some(1));
    let list = r.ok(&["connector", "list", "contoso"]);
    let later = list.lines().find(|l| l.contains("later")).unwrap();
    assert!(later.contains("cert-name-unverified"), "{list}");
    let hybrid = list.lines().find(|l| l.contains("hybrid")).unwrap();
    assert!(!hybrid.contains("cert-name-unverified"), "{list}");

    start(&mut s);
    let mail = s.write_cert("mail", &pki.issue_host("mail.contoso.example"));
    let smtp_fab = s.write_cert("fab", &pki.issue_host("smtp.fabrikam.example"));
    let deep_fab = s.write_cert("deep", &pki.issue_host("a.b.fabrikam.example"));
    let later = s.write_cert("later", &pki.issue_host("mx.later.example"));
    let Some(got) = s.run(&[
        case(Some(&mail), "alice@contoso.example", "bob@dest.example"),
        case(Some(&smtp_fab), "ann@fabrikam.example", "bob@dest.example"),
        case(Some(&deep_fab), "ann@fabrikam.example", "bob@dest.example"),
        case(Some(&later), "x@later.example", "bob@dest.example"),
        // The host name is an identity, not a sender domain.
        case(Some(&mail), "cron@mail.contoso.example", "bob@dest.example"),
    ]) else {
        return;
    };
    assert!(reply(&got[0]).starts_with("250 2.0.0"), "{got:?}");
    assert!(reply(&got[1]).starts_with("250 2.0.0"), "{got:?}");
    assert_eq!(reply(&got[2]), RELAY_DENIED);
    assert_eq!(reply(&got[3]), RELAY_DENIED);
    assert!(reply(&got[4]).starts_with("250 2.0.0"), "{got:?}");
    // The trace is written in batches off the SMTP path.
    std::thread::sleep(Duration::from_millis(1500));
    let trace = s.trace();
    let received = |sender: &str| {
        trace
            .iter()
            .find(|e| e["kind"] == "received" && e["sender"] == sender)
            .cloned()
            .unwrap_or_else(|| panic!("{sender} not received: {trace:?}"))
    };
    assert!(received("alice@contoso.example")["detail"]
        .as_str()
        .unwrap()
        .contains("method=certificate"));
    assert_eq!(
        received("alice@contoso.example")["sender_class"],
        "registered"
    );
    assert_eq!(
        received("cron@mail.contoso.example")["sender_class"],
        "unregistered"
    );
    let deep = refusal_with(&trace, "a.b.fabrikam.example").expect("deep refusal");
    assert!(
        deep["detail"]
            .as_str()
            .unwrap()
            .contains("no connector has certificate name a.b.fabrikam.example"),
        "{deep}"
    );
    let uncovered = refusal_with(&trace, "mx.later.example").expect("later refusal");
    assert!(
        uncovered["detail"]
            .as_str()
            .unwrap()
            .contains("is under no verified accepted domain of its tenant"),
        "{uncovered}"
    );
    // Shown to the tenant whose connector has that name.
    assert_eq!(uncovered["tenant_id"], contoso_id);

    // Verifying the domain clears the flag by itself and the connector starts to attribute.
    s.relay
        .ok(&["domain", "remove", "contoso", "later.example"]);
    s.relay
        .ok(&["domain", "add", "contoso", "later.example", "--verified"]);
    let list = s.relay.ok(&["connector", "list", "contoso"]);
    assert!(!list.contains("cert-name-unverified"), "{list}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = s
            .run(&[case(Some(&later), "x@later.example", "bob@dest.example")])
            .unwrap();
        if reply(&got[0]).starts_with("250 2.0.0") {
            break;
        }
        assert!(Instant::now() < deadline, "{got:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_explains_itself_and_diagnose_agrees() {
    let pki = TestPki::new();
    let rogue = TestPki::new();
    let sink = SmtpSink::start("127.0.0.1:0").await;
    let mut s = tls_relay(&pki, sink);
    let r = &s.relay;
    r.ok(&["tenant", "add", "contoso"]);
    r.ok(&["domain", "add", "contoso", "contoso.example", "--verified"]);
    r.ok(&[
        "connector",
        "add",
        "contoso",
        "--name",
        "hybrid",
        "--kind",
        "on-premises",
        "--cert-name",
        "mail.contoso.example",
    ]);
    r.ok(&[
        "connector",
        "add",
        "contoso",
        "--name",
        "office",
        "--kind",
        "on-premises",
        "--ip",
        "127.0.0.2/32",
    ]);
    r.ok(&[
        "connector",
        "add",
        "contoso",
        "--name",
        "secure",
        "--kind",
        "on-premises",
        "--ip",
        "127.0.0.3/32",
        "--require-tls",
    ]);
    r.ok(&[
        "connector",
        "add",
        "contoso",
        "--name",
        "old",
        "--kind",
        "on-premises",
        "--ip",
        "127.0.0.4/32",
    ]);
    r.ok(&["connector", "disable", "contoso", "old"]);
    r.ok(&["tenant", "add", "tailspin"]);
    r.ok(&[
        "domain",
        "add",
        "tailspin",
        "tailspin.example",
        "--verified",
    ]);
    r.ok(&[
        "connector",
        "add",
        "tailspin",
        "--name",
        "apps",
        "--kind",
        "on-premises",
        "--auth-user",
        "apps",
        "--auth-password",
        "a long enough secret",
    ]);
    r.ok(&[
        "connector",
        "add",
        "tailspin",
        "--name",
        "shared",
        "--kind",
        "partner",
        "--ip",
        "127.0.0.5/32",
    ]);
    r.ok(&["tenant", "add", "wingtip"]);
    r.ok(&["domain", "add", "wingtip", "wingtip.example", "--verified"]);
    r.ok(&[
        "connector",
        "add",
        "wingtip",
        "--name",
        "shared",
        "--kind",
        "partner",
        "--ip",
        "127.0.0.5/32",
    ]);
    r.ok(&["tenant", "add", "blocked"]);
    r.ok(&["domain", "add", "blocked", "blocked.example", "--verified"]);
    r.ok(&[
        "connector",
        "add",
        "blocked",
        "--name",
        "srv",
        "--kind",
        "on-premises",
        "--cert-name",
        "srv.blocked.example",
    ]);
    r.ok(&["tenant", "block", "blocked", "--unregistered"]);
    start(&mut s);

    let mail = s.write_cert("mail", &pki.issue_host("mail.contoso.example"));
    let srv = s.write_cert("srv", &pki.issue_host("srv.blocked.example"));
    let untrusted = s.write_cert("rogue", &rogue.issue_host("mail.contoso.example"));
    let expired = s.write_cert(
        "expired",
        &pki.issue_expired_server(&["mail.contoso.example"]),
    );
    let server_only = s.write_cert("serveronly", &pki.issue_server(&["mail.contoso.example"]));
    let plain = |src: &str, from: &str, to: &str| json!({"src": src, "tls": false, "from": from, "to": [to]});
    let mut auth = case(None, "app@tailspin.example", "bob@dest.example");
    auth["auth"] = json!(["apps", "a long enough secret"]);
    let mut bad_auth = case(None, "app@tailspin.example", "bob@dest.example");
    bad_auth["auth"] = json!(["apps", "not the secret"]);
    bad_auth["src"] = json!("127.0.0.9");
    // (case, expected reason in the trace, diagnose arguments)
    let cases: Vec<(Value, Option<&str>, Vec<String>)> = vec![
        (
            case(Some(&mail), "alice@contoso.example", "bob@dest.example"),
            None,
            args(
                "127.0.0.1",
                Some("mail.contoso.example"),
                None,
                "alice@contoso.example",
            ),
        ),
        (
            case(Some(&mail), "x@outside.example", "bob@dest.example"),
            None,
            args(
                "127.0.0.1",
                Some("mail.contoso.example"),
                None,
                "x@outside.example",
            ),
        ),
        (
            plain("127.0.0.2", "alice@contoso.example", "bob@dest.example"),
            None,
            args("127.0.0.2", None, None, "alice@contoso.example"),
        ),
        (
            plain("127.0.0.2", "x@outside.example", "bob@dest.example"),
            Some("reason=unregistered_sender_not_allowed"),
            args("127.0.0.2", None, None, "x@outside.example"),
        ),
        (
            plain("127.0.0.3", "alice@contoso.example", "bob@dest.example"),
            Some("reason=tls_required"),
            args("127.0.0.3", None, None, "alice@contoso.example"),
        ),
        (
            plain("127.0.0.4", "alice@contoso.example", "bob@dest.example"),
            Some("reason=not_attributed"),
            args("127.0.0.4", None, None, "alice@contoso.example"),
        ),
        (
            plain("127.0.0.6", "alice@contoso.example", "bob@dest.example"),
            Some("no connector covers client address 127.0.0.6"),
            args("127.0.0.6", None, None, "alice@contoso.example"),
        ),
        (
            auth.clone(),
            None,
            args("127.0.0.1", None, Some("apps"), "app@tailspin.example"),
        ),
        (
            plain("127.0.0.5", "x@wingtip.example", "bob@dest.example"),
            None,
            args("127.0.0.5", None, None, "x@wingtip.example"),
        ),
        (
            plain("127.0.0.5", "x@outside.example", "bob@nowhere.example"),
            Some("reason=ambiguous_attribution"),
            args("127.0.0.5", None, None, "x@outside.example"),
        ),
        (
            case(Some(&srv), "x@outside.example", "bob@dest.example"),
            Some("reason=blocked_unregistered"),
            args(
                "127.0.0.1",
                Some("srv.blocked.example"),
                None,
                "x@outside.example",
            ),
        ),
        (
            case(Some(&srv), "ops@blocked.example", "bob@dest.example"),
            None,
            args(
                "127.0.0.1",
                Some("srv.blocked.example"),
                None,
                "ops@blocked.example",
            ),
        ),
    ];
    let live: Vec<Value> = cases.iter().map(|c| c.0.clone()).collect();
    let Some(got) = s.run(&live) else { return };
    for ((_, _, dargs), live) in cases.iter().zip(&got) {
        let mut full = vec!["diagnose".to_string()];
        full.extend(dargs.iter().cloned());
        full.push("--json".into());
        let a: Vec<&str> = full.iter().map(String::as_str).collect();
        let d: Value = serde_json::from_str(&s.relay.ok(&a)).unwrap();
        let live_reply = reply(live);
        let want = d["reply"].as_str().unwrap();
        assert!(
            live_reply.starts_with(want) && live["at"] == d["at"],
            "diagnose {dargs:?} says {} {want}, the live session got {live}",
            d["at"]
        );
    }
    // Refusals only TLS can explain, and AUTH.
    let bad = s
        .run(&[
            case(
                Some(&untrusted),
                "alice@contoso.example",
                "bob@dest.example",
            ),
            case(Some(&expired), "alice@contoso.example", "bob@dest.example"),
            case(
                Some(&server_only),
                "alice@contoso.example",
                "bob@dest.example",
            ),
            bad_auth,
        ])
        .unwrap();
    for b in &bad {
        assert_eq!(reply(b), RELAY_DENIED, "{bad:?}");
    }
    // Give the trace writer a moment.
    std::thread::sleep(Duration::from_millis(1500));
    let trace = s.trace();
    let log = s.relay.log();
    let mut expected: Vec<&str> = cases.iter().filter_map(|c| c.1).collect();
    expected.extend([
        "not verified: unknown CA",
        "not verified: expired",
        "not verified: wrong key usage",
        "auth=[apps failed]",
    ]);
    for needle in expected {
        let ev = refusal_with(&trace, needle)
            .unwrap_or_else(|| panic!("no refusal with {needle:?} in the trace: {trace:#?}"));
        assert!(
            ev["detail"].as_str().unwrap().contains("ip=127.0.0."),
            "{ev}"
        );
        assert!(
            log.lines()
                .any(|l| l.contains("refused") && l.contains(needle)),
            "no log line with {needle:?}: {log}"
        );
    }
    assert!(!log.contains("a long enough secret") && !log.contains("not the secret"));
}

fn args(ip: &str, cert: Option<&str>, auth: Option<&str>, from: &str) -> Vec<String> {
    let mut v = vec!["--ip".to_string(), ip.to_string()];
    if let Some(c) = cert {
        v.extend(["--cert-name".to_string(), c.to_string()]);
    }
    if let Some(a) = auth {
        v.extend(["--auth-user".to_string(), a.to_string()]);
    }
    v.extend([
        "--from".to_string(),
        from.to_string(),
        "--to".to_string(),
        "bob@dest.example".to_string(),
    ]);
    v
}

#[test]
fn connector_used_once_shows_its_last_use_within_seconds() {
    let mut relay = Relay::new("");
    common::provision_acme(&relay);
    relay.start();
    let mut c = common::Client::connect(relay.addr);
    c.cmd("EHLO client.test");
    let r = c.send(
        "user@acme.example",
        &["rcpt@dest.example"],
        &common::message("user@acme.example", "rcpt@dest.example", "once"),
    );
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT");
    let start = Instant::now();
    loop {
        let list: Value =
            serde_json::from_str(&relay.ok(&["connector", "list", "acme", "--json"])).unwrap();
        if list[0]["last_used_at"].is_i64() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "last_used_at not set after 10 s: {list}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    println!(
        "last_used_at stored {:?} after the message",
        start.elapsed()
    );
}

#[test]
fn declared_header_from_domain_is_aligned_while_others_are_refused_when_blocked() {
    let mut relay =
        Relay::new("[delivery]\nsmart_host = \"127.0.0.1:9\"\nretry_schedule_secs = [3600]\n");
    common::provision_acme(&relay);
    relay.ok(&[
        "domain",
        "allow-header-from",
        "acme",
        "Partner.Example",
        "--connector",
        "onprem",
    ]);
    let listed = relay.ok(&["domain", "header-from", "acme"]);
    assert!(
        listed.contains("partner.example") && listed.contains("onprem"),
        "{listed}"
    );
    relay.ok(&["tenant", "block", "acme", "--unregistered"]);
    relay.start();
    let mut c = common::Client::connect(relay.addr);
    c.cmd("EHLO client.test");
    let with_from = |from: &str, subject: &str| {
        format!("From: <{from}>\r\nTo: <r@dest.example>\r\nSubject: {subject}\r\n\r\nHello.\r\n")
    };
    let r = c.send(
        "billing@acme.example",
        &["r@dest.example"],
        &with_from("invoices@partner.example", "declared"),
    );
    assert!(r.starts_with("250 2.0.0"), "declared pair: {r}");
    let r = c.send(
        "billing@acme.example",
        &["r@dest.example"],
        &with_from("ceo@bank.example", "spoofed"),
    );
    assert_eq!(
        r,
        "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains"
    );
    let r = c.send(
        "billing@acme.example",
        &["r@dest.example"],
        &with_from("billing@acme.example", "aligned"),
    );
    assert!(r.starts_with("250 2.0.0"), "aligned: {r}");
    let audit = relay.ok(&["audit", "--tenant", "acme"]);
    assert!(audit.contains("header_from.allow"), "{audit}");
    relay.ok(&[
        "domain",
        "disallow-header-from",
        "acme",
        "partner.example",
        "--connector",
        "onprem",
    ]);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = c.send(
            "billing@acme.example",
            &["r@dest.example"],
            &with_from("invoices@partner.example", "withdrawn"),
        );
        if r.starts_with("550 5.7.750") {
            break;
        }
        assert!(Instant::now() < deadline, "still accepted: {r}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The same through the admin API, with the CLI speaking to the running relay.
    let out = relay.ok(&["token", "create", "--operator", "--label", "ops"]);
    let token = out.lines().last().unwrap().trim().to_string();
    let url = format!("http://{}", relay.admin_addr);
    let api = |args: &[&str]| {
        let mut all = vec!["--server", url.as_str(), "--token", token.as_str()];
        all.extend_from_slice(args);
        relay.ok(&all)
    };
    api(&[
        "domain",
        "allow-header-from",
        "acme",
        "other-partner.example",
    ]);
    let listed = api(&["domain", "header-from", "acme", "--json"]);
    assert!(listed.contains("other-partner.example"), "{listed}");
    api(&[
        "domain",
        "disallow-header-from",
        "acme",
        "other-partner.example",
    ]);
    assert!(!api(&["domain", "header-from", "acme"]).contains("other-partner"));
}
