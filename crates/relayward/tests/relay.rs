//! The relay as a newcomer runs it: the real binary, real SMTP on loopback, the CLI changing
//! the directory while it runs, and a crash right after a 250.

mod common;

use std::time::{Duration, Instant};

use common::{message, provision_acme, Client, Relay};

#[test]
fn cli_changes_take_effect_without_restart() {
    let mut relay = Relay::new("");
    relay.start();
    let mut c = Client::connect(relay.addr);
    assert!(c.cmd("EHLO client.test").starts_with("250"));
    let r = c.cmd("MAIL FROM:<user@acme.example>");
    assert_eq!(r, "550 5.7.64 TenantAttribution; Relay Access Denied");

    provision_acme(&relay);
    let changed = Instant::now();
    let deadline = changed + Duration::from_secs(2);
    loop {
        let mut c = Client::connect(relay.addr);
        c.cmd("EHLO client.test");
        let r = c.cmd("MAIL FROM:<user@acme.example>");
        if r.starts_with("250") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused 2 s after the change: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // and back: blocking the connector is refused with 5.7.711 within two seconds
    relay.ok(&["connector", "block", "acme", "onprem"]);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let mut c = Client::connect(relay.addr);
        c.cmd("EHLO client.test");
        let r = c.cmd("MAIL FROM:<user@acme.example>");
        if r == "550 5.7.711 Access denied, bad inbound connector" {
            break;
        }
        assert!(Instant::now() < deadline, "block not applied in 2 s: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn message_survives_sigkill_right_after_250() {
    // Delivery goes to a closed port: the message stays queued.
    let mut relay = Relay::new(&format!(
        "[delivery]\nsmart_host = \"127.0.0.1:{}\"\n",
        common::free_port()
    ));
    provision_acme(&relay);
    relay.start();
    let mut c = Client::connect(relay.addr);
    c.cmd("EHLO client.test");
    let r = c.send(
        "user@acme.example",
        &["someone@dest.example"],
        &message("user@acme.example", "someone@dest.example", "crash1"),
    );
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let id = r.rsplit(' ').next().unwrap().to_string();
    relay.kill();

    let list = relay.ok(&["queue", "list", "--json"]);
    let queued: serde_json::Value = serde_json::from_str(&list).unwrap();
    let entry = queued
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["queue_id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not in queue after SIGKILL: {list}"));
    assert_eq!(entry["sender"], "user@acme.example");
    assert_eq!(entry["sender_class"], "registered");

    let show = relay.ok(&["queue", "show", &id]);
    assert!(show.contains("someone@dest.example"), "{show}");

    // The restarted relay still has it.
    relay.start();
    let list = relay.ok(&["queue", "list"]);
    assert!(list.contains(&id), "{list}");
}

#[test]
fn trace_records_accepts_and_refusals() {
    let mut relay = Relay::new(&format!(
        "[delivery]\nsmart_host = \"127.0.0.1:{}\"\n",
        common::free_port()
    ));
    provision_acme(&relay);
    relay.start();
    let mut c = Client::connect(relay.addr);
    c.cmd("EHLO client.test");
    let r = c.send(
        "user@acme.example",
        &["someone@dest.example"],
        &message("user@acme.example", "someone@dest.example", "traced1"),
    );
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("MAIL FROM:<spam@unregistered.example>");
    assert!(r.starts_with("550 5.7.64"), "{r}");
    c.cmd("QUIT");

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = relay.ok(&["trace", "--message-id", "traced1@test.example", "--json"]);
        let refused = relay.ok(&["trace", "--sender", "spam@unregistered.example", "--json"]);
        let ev: serde_json::Value = serde_json::from_str(&out).unwrap();
        let rf: serde_json::Value = serde_json::from_str(&refused).unwrap();
        let has_received = ev
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "received");
        let has_refused = rf.as_array().unwrap().iter().any(|e| {
            e["kind"] == "refused" && e["reply"].as_str().unwrap_or("").contains("5.7.64")
        });
        if has_received && has_refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "trace incomplete: {out} / {refused}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn embedded_default_needs_no_config() {
    // The README's first command: no config file at all, SMTP on 127.0.0.1:2525.
    let dir = tempfile::tempdir().unwrap();
    if std::net::TcpStream::connect("127.0.0.1:2525").is_ok() {
        eprintln!("127.0.0.1:2525 is taken on this machine; skipping the default-port check");
        return;
    }
    let mut child = std::process::Command::new(common::BIN)
        .arg("serve")
        .current_dir(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr = "127.0.0.1:2525".parse().unwrap();
    common::wait_for_port(addr, std::path::Path::new("/dev/null"));
    let mut c = Client::connect(addr);
    let ehlo = c.cmd("EHLO newcomer.test");
    assert!(ehlo.contains("PIPELINING"), "{ehlo}");
    child.kill().ok();
    child.wait().ok();
    assert!(dir.path().join("relayward-data/relayward.db").exists());
    assert!(dir.path().join("relayward-data/spool").is_dir());
}
