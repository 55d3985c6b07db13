//! The admin command line against a real store: exit codes, validation, audit.

mod common;

use common::Relay;

#[test]
fn bad_usage_exits_2_and_failures_exit_1_with_one_line() {
    let relay = Relay::new("");
    let out = relay.cli(&["tenant", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));

    let out = relay.cli(&["tenant", "show", "nobody"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no tenant \"nobody\""), "{err}");
}

#[test]
fn tenant_domain_connector_lifecycle_is_audited() {
    let relay = Relay::new("");
    let id = relay.ok(&[
        "tenant",
        "add",
        "acme",
        "--admin-email",
        "admin@acme.example",
    ]);
    assert!(
        id.trim().parse::<i64>().is_ok(),
        "tenant add prints the id: {id:?}"
    );
    // duplicate name refused, nothing changed
    let out = relay.cli(&["tenant", "add", "acme"]);
    assert_eq!(out.status.code(), Some(1));

    let txt = relay.ok(&["domain", "add", "acme", "Acme.Example"]);
    assert!(
        txt.contains("acme.example. IN TXT \"relayward-verification="),
        "{txt}"
    );
    let list = relay.ok(&["domain", "list", "acme", "--json"]);
    let domains: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(domains[0]["domain"], "acme.example");
    assert_eq!(domains[0]["verified"], false);

    for bad in [
        "acme.example.",
        "x-.example",
        "localhost",
        "a b.example",
        "a..example",
    ] {
        let out = relay.cli(&["domain", "add", "acme", bad, "--verified"]);
        assert_eq!(out.status.code(), Some(1), "{bad} must be refused");
    }

    relay.ok(&[
        "connector",
        "add",
        "acme",
        "--name",
        "onprem",
        "--kind",
        "on-premises",
        "--ip",
        "192.0.2.0/24",
        "--ip",
        "2001:db8::/48",
    ]);
    for (args, why) in [
        (vec!["--ip", "192.0.2.1/24"], "host bits"),
        (vec!["--ip", "not-an-ip"], "bad CIDR"),
        (vec![], "no identification"),
        (
            vec!["--auth-user", "u", "--auth-password", "short"],
            "short password",
        ),
    ] {
        let mut cmd = vec![
            "connector",
            "add",
            "acme",
            "--name",
            "x",
            "--kind",
            "partner",
        ];
        cmd.extend(args);
        let out = relay.cli(&cmd);
        assert_eq!(out.status.code(), Some(1), "{why}: {out:?}");
    }
    relay.ok(&[
        "connector",
        "add",
        "acme",
        "--name",
        "app",
        "--kind",
        "partner",
        "--auth-user",
        "acme-app",
        "--auth-password",
        "correct horse battery",
    ]);
    let list = relay.ok(&["connector", "list", "acme", "--json"]);
    assert!(!list.contains("correct horse"), "password never shown");
    assert!(!list.contains("argon2"), "hash never shown");
    let conns: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(conns.as_array().unwrap().len(), 2);

    relay.ok(&["connector", "disable", "acme", "onprem"]);
    let audit = relay.ok(&["audit", "--json"]);
    assert!(!audit.contains("correct horse"));
    let entries: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let actions: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in [
        "tenant.create",
        "domain.add",
        "connector.create",
        "connector.update",
    ] {
        assert!(
            actions
                .iter()
                .any(|a| a.starts_with(want.split('.').next().unwrap())),
            "audit lacks {want}: {actions:?}"
        );
    }
    assert!(entries[0]["actor"].as_str().unwrap().starts_with("cli:"));

    let show = relay.ok(&["tenant", "show", "acme"]);
    assert!(show.contains("state: active"), "{show}");
    assert!(show.contains("disabled"), "{show}");
}

#[test]
fn domain_import_is_all_or_nothing_on_bad_lines() {
    let relay = Relay::new("");
    relay.ok(&["tenant", "add", "bulk"]);
    let file = relay.dir.path().join("domains.txt");
    std::fs::write(
        &file,
        "a.example\n# comment\nb.example\nbad_domain..example\n",
    )
    .unwrap();
    let out = relay.cli(&[
        "domain",
        "import",
        "bulk",
        file.to_str().unwrap(),
        "--verified",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("domains.txt:4"));
    assert_eq!(relay.ok(&["domain", "list", "bulk", "--json"]).trim(), "[]");

    std::fs::write(
        &file,
        "a.example\n# comment\nB.example  # trailing comment\n\nc.example\n",
    )
    .unwrap();
    let out = relay.ok(&[
        "domain",
        "import",
        "bulk",
        file.to_str().unwrap(),
        "--verified",
    ]);
    assert_eq!(out.trim(), "3 added, 0 already present");
    let out = relay.ok(&[
        "domain",
        "import",
        "bulk",
        file.to_str().unwrap(),
        "--verified",
    ]);
    assert_eq!(out.trim(), "0 added, 3 already present");
    let list: serde_json::Value =
        serde_json::from_str(&relay.ok(&["domain", "list", "bulk", "--json"])).unwrap();
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["verified"] == true));
}
