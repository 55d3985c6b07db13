//! `relayward domain verify` against a DNS server on loopback.

mod common;

use std::time::Duration;

use common::Relay;
use relayward_testkit::DnsServer;

async fn cli(relay: &std::sync::Arc<Relay>, args: &[&str]) -> std::process::Output {
    let relay = relay.clone();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        relay.cli(&a)
    })
    .await
    .unwrap()
}

fn token_of(relay: &Relay) -> String {
    let list = relay.ok(&["domain", "list", "acme", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let record = v[0]["verification_record"]["value"].as_str().unwrap();
    record
        .strip_prefix("relayward-verification=")
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_by_dns_txt() {
    let dns = DnsServer::start().await;
    let relay = std::sync::Arc::new(Relay::new(&format!(
        "[delivery]\ndns_resolver = \"{}\"\n",
        dns.addr()
    )));
    relay.ok(&["tenant", "add", "acme"]);
    relay.ok(&["domain", "add", "acme", "acme.example"]);
    let token = token_of(&relay);
    let verified = |relay: &Relay| {
        let v: serde_json::Value =
            serde_json::from_str(&relay.ok(&["domain", "list", "acme", "--json"])).unwrap();
        v[0]["verified"].as_bool().unwrap()
    };

    // missing record
    let out = cli(&relay, &["domain", "verify", "acme", "acme.example"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no TXT record found"), "{err}");
    assert!(!verified(&relay));

    // wrong token
    dns.add_txt("acme.example", &["relayward-verification=wrongtoken"]);
    let out = cli(&relay, &["domain", "verify", "acme", "acme.example"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("none is"));
    assert!(!verified(&relay));

    // DNS timeout: "could not check", not "not verified"
    dns.set_delay("slow.example", Duration::from_secs(30));
    relay.ok(&["domain", "add", "acme", "slow.example"]);
    let out = cli(&relay, &["domain", "verify", "acme", "slow.example"]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not check"), "{err}");

    // right token among many TXT strings
    dns.add_txt("acme.example", &["v=spf1 -all"]);
    dns.add_txt(
        "acme.example",
        &[&format!("relayward-verification={token}")],
    );
    let out = cli(&relay, &["domain", "verify", "acme", "acme.example"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(verified(&relay));
    let audit = relay.ok(&["audit", "--json"]);
    assert!(audit.contains("domain.verify"), "{audit}");
}
