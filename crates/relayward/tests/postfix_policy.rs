//! A real Postfix edge asking relayward's policy listener (`[[listener]] role = "policy"`)
//! through `check_policy_service`, as an operator who keeps Postfix in front would configure it:
//!
//! ```text
//! client (127.0.0.x) ──SMTP──► Postfix smtpd ──check_policy_service──► relayward (role policy)
//!                                  │ accepted mail: discarded here (Postfix would deliver it)
//! ```
//!
//! Postfix's replies are what the clients see: a registered sender of an attributed server
//! passes; an unattributed client gets 5.7.64; a blocked tenant's unregistered sender gets the
//! exact 5.7.750 text; a sender over its limit gets 5.1.8 once END-OF-MESSAGE has counted its
//! mail. Needs root (Postfix's master runs as root) and the Debian package `postfix`; without
//! it the test says SKIPPED, or fails under CI.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{postfix_or_skip, Relay};
use relayward_testkit::SmtpClient;

/// relayward's replies as Postfix gives them: code and status unchanged, the text after
/// Postfix's own "<sender>: Sender address rejected: " (it frames every restriction's answer).
fn postfix_says(code_status: &str, sender: &str, text: &str) -> String {
    format!("{code_status} <{sender}>: Sender address rejected: {text}")
}
const BLOCKED: (&str, &str) = (
    "550 5.7.750",
    "Service unavailable. Client blocked from sending from unregistered domains",
);
const NOT_ATTRIBUTED: (&str, &str) = ("550 5.7.64", "TenantAttribution; Relay Access Denied");
const RESTRICTED: (&str, &str) = ("550 5.1.8", "Access denied, bad outbound sender");

/// A Postfix instance with an smtpd on `smtpd` whose relay decision is relayward's.
struct Edge {
    dir: tempfile::TempDir,
    commands: PathBuf,
    smtpd: SocketAddr,
}

impl Edge {
    fn start(commands: PathBuf, policy: SocketAddr) -> Edge {
        let dir = tempfile::Builder::new()
            .prefix("relayward-postfix-edge-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let root = dir.path().to_path_buf();
        let etc = root.join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::create_dir(root.join("queue")).unwrap();
        let smtpd: SocketAddr = format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap();
        let write = |name: &str, text: &str| {
            let path = etc.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        };
        write(
            "main.cf",
            &format!(
                r#"# An edge Postfix delegating its relay decision to relayward
# (written by crates/relayward/tests/postfix_policy.rs).
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
myhostname = edge.relay.test
mydomain = relay.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
# Nobody is trusted by address: relayward attributes every client.
mynetworks =
# Sender refusals (attribution, relay rule, restriction states, sender limits) are answered in
# the sender's context, so Postfix keeps their status codes; the relay decision itself is
# relayward's OK.
smtpd_sender_restrictions = check_policy_service inet:{policy}
smtpd_relay_restrictions = check_policy_service inet:{policy}, defer_unauth_destination
smtpd_recipient_restrictions =
smtpd_end_of_data_restrictions = check_policy_service inet:{policy}
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_error_sleep_time = 0
# This test keeps nothing: accepted mail is discarded.
default_transport = discard
relay_transport = discard
"#,
                root = root.display(),
            ),
        );
        write(
            "master.cf",
            &format!(
                r#"# service type  private unpriv  chroot  wakeup  maxproc command
{smtpd} inet n  -       n       -       -       smtpd
{services}"#,
                services = common::POSTFIX_SERVICES
            ),
        );
        let edge = Edge {
            dir,
            commands,
            smtpd,
        };
        for action in ["check", "start"] {
            let out = edge.postfix(&[action]);
            assert!(
                out.status.success(),
                "postfix {action} failed: {}{}\n--- maillog\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                edge.log()
            );
        }
        edge
    }

    fn postfix(&self, args: &[&str]) -> Output {
        Command::new(self.commands.join("postfix"))
            .arg("-c")
            .arg(self.dir.path().join("etc"))
            .args(args)
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    /// An SMTP session with Postfix from `ip`, greeted and EHLO'd.
    async fn session(&self, ip: &str) -> SmtpClient {
        let ip: IpAddr = ip.parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match SmtpClient::connect_from(ip, self.smtpd).await {
                Ok(mut c) => {
                    let (code, text) =
                        tokio::time::timeout(Duration::from_secs(10), c.read_reply())
                            .await
                            .unwrap_or_else(|_| panic!("no greeting from Postfix\n{}", self.log()))
                            .unwrap();
                    assert_eq!(code, 220, "{text}");
                    c.ehlo("client.example").await.unwrap();
                    return c;
                }
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "Postfix smtpd: {e}\n{}",
                        self.log()
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let out = self.postfix(&["stop"]);
        if !out.status.success() {
            self.postfix(&["abort"]);
        }
    }
}

/// What Postfix answers to `RCPT TO` after `MAIL FROM:<sender>` (its MAIL reply when that
/// already refuses), as one line; the transaction is reset afterwards.
async fn rcpt_reply(c: &mut SmtpClient, sender: &str, rcpt: &str) -> String {
    let (code, text) = c.cmd(&format!("MAIL FROM:<{sender}>")).await.unwrap();
    let line = |code: u16, text: String| {
        if text.starts_with(&code.to_string()) {
            text
        } else {
            format!("{code} {text}")
        }
    };
    let out = if code != 250 {
        line(code, text)
    } else {
        let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}>")).await.unwrap();
        line(code, text)
    };
    c.cmd("RSET").await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_asks_relayward_and_answers_its_replies() {
    let Some(commands) = postfix_or_skip() else {
        return;
    };
    let policy: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let mut relay = Relay::new(&format!(
        "[[listener]]\naddress = \"{policy}\"\nrole = \"policy\"\n"
    ));
    for (tenant, ip) in [("contoso", "127.0.0.21"), ("fabrikam", "127.0.0.23")] {
        relay.ok(&[
            "tenant",
            "add",
            tenant,
            "--admin-email",
            &format!("admin@{tenant}.example"),
        ]);
        relay.ok(&[
            "domain",
            "add",
            tenant,
            &format!("{tenant}.example"),
            "--verified",
        ]);
        relay.ok(&[
            "connector",
            "add",
            tenant,
            "--name",
            "edge-clients",
            "--kind",
            "on-premises",
            "--ip",
            &format!("{ip}/32"),
            "--allow-unregistered",
        ]);
    }
    // Fabrikam is blocked from unregistered domains; contoso's senders may send one message a
    // minute each.
    relay.ok(&["tenant", "block", "--unregistered", "fabrikam"]);
    relay.ok(&[
        "tenant",
        "sender-limits",
        "contoso",
        "--messages-per-minute",
        "1",
    ]);
    relay.start();
    common::wait_for_port(policy, &relay.log_path());
    let edge = Edge::start(commands, policy);

    // A registered sender of an attributed server passes, and its message is accepted.
    let mut c = edge.session("127.0.0.21").await;
    let data = b"From: <alice@contoso.example>\r\nTo: <bob@outside.example>\r\nSubject: hi\r\n\r\nHello.\r\n";
    let (_, reply) = c
        .send_message("alice@contoso.example", &["bob@outside.example"], data)
        .await
        .unwrap();
    assert!(reply.starts_with("250 "), "{reply}\n{}", edge.log());
    // END-OF-MESSAGE counted it: alice is now over one message a minute.
    let r = rcpt_reply(&mut c, "alice@contoso.example", "carol@outside.example").await;
    assert_eq!(
        r,
        postfix_says(RESTRICTED.0, "alice@contoso.example", RESTRICTED.1),
        "{}",
        edge.log()
    );
    // Another sender of the same tenant still passes.
    let r = rcpt_reply(&mut c, "dave@contoso.example", "carol@outside.example").await;
    assert!(r.starts_with("250 "), "{r}");
    c.quit().await.ok();

    // An unattributed client is refused with relayward's 5.7.64.
    let mut c = edge.session("127.0.0.22").await;
    let r = rcpt_reply(&mut c, "x@contoso.example", "y@outside.example").await;
    assert_eq!(
        r,
        postfix_says(NOT_ATTRIBUTED.0, "x@contoso.example", NOT_ATTRIBUTED.1),
        "{}",
        edge.log()
    );
    c.quit().await.ok();

    // The blocked tenant: registered mail flows, unregistered gets the exact 5.7.750 text.
    let mut c = edge.session("127.0.0.23").await;
    let r = rcpt_reply(&mut c, "erin@fabrikam.example", "y@outside.example").await;
    assert!(r.starts_with("250 "), "{r}");
    let r = rcpt_reply(&mut c, "someone@elsewhere.example", "y@outside.example").await;
    assert_eq!(
        r,
        postfix_says(BLOCKED.0, "someone@elsewhere.example", BLOCKED.1),
        "{}",
        edge.log()
    );
    let r = rcpt_reply(&mut c, "", "y@outside.example").await;
    assert_eq!(
        r,
        postfix_says(BLOCKED.0, "", BLOCKED.1),
        "the null sender too"
    );
    c.quit().await.ok();

    // relayward traced its refusals with their reasons, as for its own listener.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let trace = relay.ok(&["trace", "--sender", "someone@elsewhere.example"]);
        if trace.contains("5.7.750") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no trace of the refusal: {trace}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
