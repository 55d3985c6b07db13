//! Accepted domains and their verification against the in-test DNS server.

use relayward_store::Store;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::common::Api;

#[tokio::test]
async fn add_returns_the_record_and_verify_reports_what_dns_shows() {
    let api = Api::start().await;
    let a = api.a.id;
    let tok = api.a_admin.token.clone();
    let base = format!("/v1/tenants/{a}/domains");

    let r = api
        .post(
            &base,
            &tok,
            json!({"domain": "Mail.Example.COM", "match_subdomains": true}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["domain"], "mail.example.com");
    assert_eq!(r.body["kind"], "authoritative");
    assert_eq!(r.body["status"], "pending");
    assert_eq!(r.body["verified"], false);
    let record = &r.body["verification_record"];
    assert_eq!(record["name"], "mail.example.com");
    assert_eq!(record["type"], "TXT");
    let wanted = record["value"].as_str().unwrap().to_string();
    assert!(wanted.starts_with("relayward-verification="), "{wanted}");
    assert_eq!(
        r.header("location"),
        Some(format!("{base}/mail.example.com").as_str())
    );
    let verify = format!("{base}/mail.example.com/verify");

    // No TXT record at all.
    let r = api.send(Method::POST, &verify, Some(&tok), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "not_found");
    assert_eq!(r.body["verified"], false);
    assert_eq!(r.body["records_found"], 0);
    assert_eq!(r.body["expected_record"]["value"], wanted.as_str());
    assert!(r.body["detail"].as_str().unwrap().contains(&wanted));

    // Unrelated TXT records, then a verification record with another token.
    api.dns.add_txt("mail.example.com", &["v=spf1 -all"]);
    let r = api.send(Method::POST, &verify, Some(&tok), None).await;
    assert_eq!(r.body["status"], "wrong_token", "{}", r.text);
    assert_eq!(r.body["records_found"], 1);
    api.dns.add_txt(
        "mail.example.com",
        &["relayward-verification=someoneelsestoken"],
    );
    let r = api.send(Method::POST, &verify, Some(&tok), None).await;
    assert_eq!(r.body["status"], "wrong_token");
    assert_eq!(r.body["records_found"], 2);
    assert!(
        r.body["detail"].as_str().unwrap().contains("another token"),
        "{}",
        r.text
    );
    assert!(
        !api.store
            .get_domain(a, "mail.example.com")
            .await
            .unwrap()
            .unwrap()
            .verified
    );

    // The right record among many, split into two strings the way long records are.
    let (head, tail) = wanted.split_at(10);
    api.dns
        .add_txt("mail.example.com", &["google-site-verification=abc"]);
    api.dns.add_txt("mail.example.com", &[head, tail]);
    api.dns.add_txt("mail.example.com", &["MS=ms12345"]);
    let audit_before = api.audit_len().await;
    let r = api.send(Method::POST, &verify, Some(&tok), None).await;
    assert_eq!(r.body["status"], "verified", "{}", r.text);
    assert_eq!(r.body["verified"], true);
    assert_eq!(r.body["records_found"], 5);
    let d = api
        .store
        .get_domain(a, "mail.example.com")
        .await
        .unwrap()
        .unwrap();
    assert!(d.verified && d.verified_at.is_some());
    assert_eq!(api.audit_len().await, audit_before + 1);
    let entry = api.store.list_audit(None, 1).await.unwrap().remove(0);
    assert_eq!(entry.action, "domain.verify");
    assert_eq!(entry.actor, format!("token:{}/tenant:{a}", api.a_admin.id));

    // Verified stays verified when the record is gone later.
    api.dns.remove_name("mail.example.com");
    let r = api.send(Method::POST, &verify, Some(&tok), None).await;
    assert_eq!(r.body["status"], "not_found");
    assert_eq!(r.body["verified"], true);
    assert!(
        api.store
            .get_domain(a, "mail.example.com")
            .await
            .unwrap()
            .unwrap()
            .verified
    );

    let r = api.get(&format!("{base}/MAIL.example.com"), &tok).await;
    assert_eq!(r.body["status"], "verified", "{}", r.text);
    api.stop().await;
}

#[tokio::test]
async fn dns_failure_or_timeout_is_could_not_check() {
    let api = Api::start().await;
    let a = api.a.id;
    let tok = api.a_admin.token.clone();
    api.add_domain(a, "slow.example", false).await;
    api.add_domain(a, "broken.example", false).await;
    let d = api
        .store
        .get_domain(a, "slow.example")
        .await
        .unwrap()
        .unwrap();
    // The right record is there, but the answer comes too late.
    api.dns.add_txt(
        "slow.example",
        &[&format!("relayward-verification={}", d.verification_token)],
    );
    api.dns.set_delay("slow.example", Duration::from_secs(5));
    let audit_before = api.audit_len().await;
    let started = Instant::now();
    let r = api
        .send(
            Method::POST,
            &format!("/v1/tenants/{a}/domains/slow.example/verify"),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "unchecked");
    assert_eq!(r.body["verified"], false);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .starts_with("could not check"),
        "{}",
        r.text
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    api.dns.set_servfail("broken.example");
    let r = api
        .send(
            Method::POST,
            &format!("/v1/tenants/{a}/domains/broken.example/verify"),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!(r.body["status"], "unchecked", "{}", r.text);

    assert!(
        !api.store
            .get_domain(a, "slow.example")
            .await
            .unwrap()
            .unwrap()
            .verified
    );
    assert_eq!(api.audit_len().await, audit_before);

    // Once DNS answers, the same request verifies.
    api.dns.clear_delay("slow.example");
    let r = api
        .send(
            Method::POST,
            &format!("/v1/tenants/{a}/domains/slow.example/verify"),
            Some(&tok),
            None,
        )
        .await;
    assert_eq!(r.body["status"], "verified", "{}", r.text);
    api.stop().await;
}

#[tokio::test]
async fn idna_conflicts_attestation_and_removal() {
    let api = Api::start().await;
    let (a, b) = (api.a.id, api.b.id);
    let a_tok = api.a_admin.token.clone();

    // Internationalized names are stored and found by their A-labels.
    let r = api
        .post(
            &format!("/v1/tenants/{a}/domains"),
            &a_tok,
            json!({"domain": "Bücher.example", "kind": "internal-relay"}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["domain"], "xn--bcher-kva.example");
    assert_eq!(r.body["kind"], "internal-relay");
    let r = api
        .get(
            &format!("/v1/tenants/{a}/domains/b%C3%BCcher.example"),
            &a_tok,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["domain"], "xn--bcher-kva.example");

    // Twice for one tenant: 409.
    api.post(
        &format!("/v1/tenants/{a}/domains"),
        &a_tok,
        json!({"domain": "xn--bcher-kva.example"}),
    )
    .await
    .assert_problem(409);

    // A tenant admin cannot attest ownership; the operator can (audited).
    let r = api
        .post(
            &format!("/v1/tenants/{a}/domains"),
            &a_tok,
            json!({"domain": "attested.example", "verified": true}),
        )
        .await;
    r.assert_problem(403);
    assert!(api
        .store
        .get_domain(a, "attested.example")
        .await
        .unwrap()
        .is_none());
    let r = api
        .post(
            &format!("/v1/tenants/{b}/domains"),
            &api.op.token,
            json!({"domain": "attested.example", "verified": true}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.body["status"], "verified");

    // Tenant a proves the same domain in DNS, but b has it: 409, and a stays pending.
    api.add_domain(a, "attested.example", false).await;
    let d = api
        .store
        .get_domain(a, "attested.example")
        .await
        .unwrap()
        .unwrap();
    api.dns.add_txt(
        "attested.example",
        &[&format!("relayward-verification={}", d.verification_token)],
    );
    let r = api
        .send(
            Method::POST,
            &format!("/v1/tenants/{a}/domains/attested.example/verify"),
            Some(&a_tok),
            None,
        )
        .await;
    r.assert_problem(409);
    assert!(
        !api.store
            .get_domain(a, "attested.example")
            .await
            .unwrap()
            .unwrap()
            .verified
    );

    // Removal.
    let r = api
        .delete(&format!("/v1/tenants/{a}/domains/attested.example"), &a_tok)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(api
        .store
        .get_domain(a, "attested.example")
        .await
        .unwrap()
        .is_none());
    let entry = api.store.list_audit(Some(a), 1).await.unwrap().remove(0);
    assert_eq!(entry.action, "domain.remove");
    assert_eq!(entry.actor, format!("token:{}/tenant:{a}", api.a_admin.id));
    api.delete(&format!("/v1/tenants/{a}/domains/attested.example"), &a_tok)
        .await
        .assert_problem(404);
    api.stop().await;
}
