//! What an operator installs: `relayward check-config` on good and bad files, and the systemd
//! unit in `contrib/systemd/`, checked by `systemd-analyze verify`.

mod common;

use std::path::Path;
use std::process::Command;

use common::BIN;

fn check_config(text: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relayward.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("check-config")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_config_prints_the_effective_configuration_without_secrets() {
    let (code, out, err) = check_config(
        "[server]\nhostname = \"mx.example.net\"\n\n[alerts]\nwebhook_url = \"http://127.0.0.1:9/hook\"\nwebhook_secret = \"hunter2-very-secret\"\n\n[srs]\ndomain = \"srs.example.net\"\nsecrets = [\"srs-secret-one\"]\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("is valid"), "{err}");
    // What was given, and the defaults that were not.
    assert!(out.contains("hostname = \"mx.example.net\""), "{out}");
    assert!(out.contains("burst_budget = 200"), "{out}");
    assert!(out.contains("[detector.forwarding]"), "{out}");
    assert!(out.contains("max_allowance = 8.0"), "{out}");
    // Secrets: said to be set, never shown.
    assert!(
        !out.contains("hunter2") && !out.contains("srs-secret-one"),
        "{out}"
    );
    assert!(out.contains("webhook_secret = \"<set>\""), "{out}");
    // The output is itself a valid configuration file.
    let (code, again, err) = check_config(&out.replace("\"<set>\"", "\"x\""));
    assert_eq!(code, 0, "{err}\n{out}");
    assert!(again.contains("hostname = \"mx.example.net\""));
}

#[test]
fn check_config_names_what_is_wrong() {
    let (code, out, err) = check_config("[detector]\nburst_budget = 50\n");
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("burst_budget"), "{err}");
    let (code, _, err) = check_config("[delivery]\nno_such_key = 1\n");
    assert_eq!(code, 1);
    assert!(err.contains("no_such_key"), "{err}");
    let (code, _, err) = check_config("[scan]\nrspamd_url = \"127.0.0.1:11333\"\n");
    assert_eq!(code, 1);
    assert!(err.contains("scan.rspamd_url"), "{err}");
}

/// `systemd-analyze verify` in a scratch root holding the unit, a stand-in binary at its
/// `ExecStart` path and systemd's own units; any output is a finding (unknown keys only warn).
#[test]
fn systemd_unit_verifies() {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var_os("CI").is_none(),
            "systemd-analyze is missing (apt-get install systemd)"
        );
        println!("SKIPPED: systemd-analyze not available");
        return;
    }
    let unit =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/systemd/relayward.service");
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    for d in ["usr/bin", "bin", "usr/lib/systemd", "etc/systemd/system"] {
        std::fs::create_dir_all(r.join(d)).unwrap();
    }
    let system_units = ["/usr/lib/systemd/system", "/lib/systemd/system"]
        .into_iter()
        .find(|p| Path::new(p).is_dir())
        .expect("systemd's units");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(system_units)
        .arg(r.join("usr/lib/systemd/"))
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(r.join("usr/bin/relayward"), "#!/bin/sh\n").unwrap();
    std::fs::copy("/bin/kill", r.join("bin/kill")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        r.join("usr/bin/relayward"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::copy(&unit, r.join("etc/systemd/system/relayward.service")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", r.display()))
        .arg("relayward.service")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}

/// Every metric the Grafana dashboard queries is one the relay defines (a name in its source),
/// so a renamed metric cannot leave a dashboard panel silently empty.
#[test]
fn grafana_dashboard_queries_only_metrics_the_relay_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dashboard = std::fs::read_to_string(root.join("contrib/grafana/relayward.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert_eq!(v["uid"], "relayward");
    let mut source = String::new();
    for dir in [
        "crates/relayward/src",
        "crates/relayward/src/abuse",
        "crates/relayward-smtp/src",
        "crates/relayward-smtp/src/inbound",
        "crates/relayward-queue/src",
    ] {
        for e in std::fs::read_dir(root.join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "rs") {
                source.push_str(&std::fs::read_to_string(p).unwrap());
            }
        }
    }
    let mut names: Vec<String> = Vec::new();
    let b = dashboard.as_bytes();
    let mut i = 0;
    while let Some(at) = dashboard[i..].find("relayward_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end] == b'_') {
            end += 1;
        }
        let mut name = &dashboard[start..end];
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(n) = name.strip_suffix(suffix) {
                if source.contains(&format!("\"{n}\"")) {
                    name = n;
                }
            }
        }
        names.push(name.to_string());
        i = end;
    }
    names.sort();
    names.dedup();
    assert!(names.len() >= 15, "{names:?}");
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !source.contains(&format!("\"{n}\"")))
        .collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries unknown metrics: {unknown:?}"
    );
}

/// The configuration the Debian package installs is valid as it is.
#[test]
fn packaged_configuration_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("contrib/debian/relayward.toml")).unwrap();
    let (code, out, err) = check_config(&text);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("data_dir = \"/var/lib/relayward\""), "{out}");
}
