//! The whole inbound SMTP session, fed from bytes: greeting, EHLO, AUTH, MAIL, RCPT, DATA
//! (dot-unstuffing, bare CR/LF, line and size limits), pipelining and error limits.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use relayward_core::{
    AcceptedDomain, Connector, ConnectorId, ConnectorKind, DirectoryData, DomainId, DomainKind,
    Tenant, TenantId, TenantState, Timestamp, TraceEvent,
};
use relayward_policy::{Directory, SharedDirectory};
use relayward_smtp::{
    BareLineEnds, Events, IncomingMessage, ListenerConfig, MessageSink, Server, SmtpConfig,
    Timeouts,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

pub(crate) const AUTH_USER: &str = "fuzz-user";
pub(crate) const AUTH_PASSWORD: &str = "fuzz-secret";
const MAX_MESSAGE_SIZE: u64 = 16 * 1024;
const MAX_RECIPIENTS: usize = 5;

#[derive(Default)]
struct Sink {
    next: AtomicU64,
    messages: Mutex<Vec<IncomingMessage>>,
}

#[async_trait]
impl MessageSink for Sink {
    fn new_queue_id(&self) -> String {
        format!("FUZZ{:06}", self.next.fetch_add(1, Ordering::Relaxed))
    }
    async fn enqueue(&self, msg: IncomingMessage) -> Result<(), relayward_smtp::EnqueueError> {
        self.messages
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(msg);
        Ok(())
    }
}

struct NoEvents;

impl Events for NoEvents {
    fn trace(&self, _event: TraceEvent) {}
    fn connector_used(&self, _connector: ConnectorId) {}
}

/// argon2id with the smallest parameters: verification reads them from the PHC string, and
/// the default ones would make each AUTH attempt cost tens of milliseconds.
fn cheap_hash() -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    use argon2::{Algorithm, Argon2, Params, Version};
    let params = Params::new(8, 1, 1, None).expect("argon2 parameters");
    let salt = SaltString::from_b64("cmVsYXl3YXJkZnV6eg").expect("salt");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(AUTH_PASSWORD.as_bytes(), &salt)
        .expect("argon2 hash")
        .to_string()
}

fn connector(id: i64, tenant_id: i64, ip: Option<&str>) -> Connector {
    Connector {
        id: ConnectorId(id),
        tenant_id: TenantId(tenant_id),
        name: format!("connector{id}"),
        kind: ConnectorKind::OnPremises,
        ip_ranges: ip.iter().map(|s| s.parse().expect("CIDR")).collect(),
        cert_name: None,
        auth_user: None,
        auth_password_hash: None,
        require_tls: false,
        enabled: true,
        allow_unregistered: false,
        restrict_domains_to_ips: false,
        restrict_domains_to_cert: false,
        blocked: false,
        created_at: Timestamp(0),
        created_by: "fuzz".into(),
        updated_at: Timestamp(0),
        updated_by: "fuzz".into(),
        last_used_at: None,
    }
}

fn domain(id: i64, tenant_id: i64, name: &str, verified: bool) -> AcceptedDomain {
    AcceptedDomain {
        id: DomainId(id),
        tenant_id: TenantId(tenant_id),
        domain: name.into(),
        kind: DomainKind::Authoritative,
        match_subdomains: false,
        verified,
        verification_token: "token".into(),
        created_at: Timestamp(0),
        verified_at: None,
    }
}

/// Tenant 1 owns alpha.example (verified) and pending.example (not), and is recognised by an
/// IP connector for 127.0.0.1 and by AUTH as `fuzz-user` / `fuzz-secret`. Tenant 2 shares the
/// IP (so the MAIL FROM domain has to decide), owns beta.example and may relay unregistered
/// senders.
fn directory() -> Arc<SharedDirectory> {
    static DIR: OnceLock<Arc<SharedDirectory>> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut auth = connector(2, 1, None);
        auth.auth_user = Some(AUTH_USER.into());
        auth.auth_password_hash = Some(cheap_hash());
        let mut shared = connector(3, 2, Some("127.0.0.1/32"));
        shared.allow_unregistered = true;
        let tenant = |id: i64| Tenant {
            id: TenantId(id),
            name: format!("tenant{id}"),
            state: TenantState::Active,
            admin_emails: vec![],
            created_at: Timestamp(0),
        };
        let data = DirectoryData {
            version: 1,
            tenants: vec![tenant(1), tenant(2)],
            domains: vec![
                domain(1, 1, "alpha.example", true),
                domain(2, 1, "pending.example", false),
                domain(3, 2, "beta.example", true),
            ],
            connectors: vec![connector(1, 1, Some("127.0.0.1/32")), auth, shared],
            header_from_allowed: Vec::new(),
        };
        Arc::new(SharedDirectory::new(Directory::new(data)))
    })
    .clone()
}

fn smtp_config(data: &[u8]) -> SmtpConfig {
    SmtpConfig {
        hostname: "relay.test".into(),
        max_message_size: MAX_MESSAGE_SIZE,
        max_recipients: MAX_RECIPIENTS,
        max_received_headers: 5,
        max_pipelined: 50,
        // Both policies, chosen by the input so that a corpus file always replays the same.
        bare_line_ends: if data.len().is_multiple_of(2) {
            BareLineEnds::Normalize
        } else {
            BareLineEnds::Reject
        },
        timeouts: Timeouts {
            command: Duration::from_secs(30),
            data_block: Duration::from_secs(30),
            data_termination: Duration::from_secs(30),
        },
        ..SmtpConfig::default()
    }
}

/// Runs one session from 127.0.0.1 over an in-memory stream: the client writes `data` and
/// closes its side, and reads everything the server says. Then:
/// - every reply line is `ddd` + ` ` or `-` + printable text + CRLF;
/// - every message the spool received has CRLF line ends only (no bare CR or LF, the SMTP
///   smuggling invariant), ends with CRLF and is within the size limit;
/// - the spool received at most as many messages as the input has `CRLF . CRLF` sequences
///   (plus `DATA` LF `.` CRLF, see [`lf_data_then_dot`]), each with 1 to `max_recipients`
///   recipients.
pub fn session(data: &[u8]) {
    let (output, messages) = run(data);
    check_replies(&output);
    let ends = count_non_overlapping(data, b"\r\n.\r\n") + lf_data_then_dot(data);
    assert!(
        messages.len() <= ends,
        "{} messages spooled from input with {ends} CRLF.CRLF",
        messages.len()
    );
    for m in messages.iter() {
        if let Some(at) = bare_line_end(&m.data) {
            panic!(
                "message {} has a bare CR or LF at offset {at}: {:?}",
                m.queue_id,
                String::from_utf8_lossy(&m.data)
            );
        }
        assert!(m.data.ends_with(b"\r\n"), "message does not end with CRLF");
        assert!(
            m.data.len() as u64 <= MAX_MESSAGE_SIZE + 4096,
            "message of {} octets over the limit",
            m.data.len()
        );
        assert!(
            (1..=MAX_RECIPIENTS).contains(&m.recipients.len()),
            "{} recipients",
            m.recipients.len()
        );
    }
}

/// The session itself: what the server wrote, and what it spooled.
fn run(data: &[u8]) -> (Vec<u8>, Vec<IncomingMessage>) {
    let sink = Arc::new(Sink::default());
    let server = Server::new(
        smtp_config(data),
        directory(),
        sink.clone(),
        Arc::new(NoEvents),
    );
    let (client, server_io) = tokio::io::duplex(64 * 1024);
    let (_shutdown, shutdown_rx) = watch::channel(false);
    let listener = ListenerConfig {
        auth_without_tls: true,
        ..ListenerConfig::default()
    };
    let output = crate::block_on(async {
        let (mut rd, mut wr) = tokio::io::split(client);
        let serve = server.serve_stream(
            server_io,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            listener,
            shutdown_rx,
        );
        let write = async {
            // The server may close first (QUIT, too many errors): the rest is not read.
            let _ = wr.write_all(data).await;
            let _ = wr.shutdown().await;
        };
        let read = async {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        let (served, (), out) = tokio::join!(serve, write, read);
        served.expect("serve_stream");
        out
    });

    let messages = std::mem::take(&mut *sink.messages.lock().unwrap_or_else(|e| e.into_inner()));
    (output, messages)
}

/// Offset of the first CR not followed by LF, or LF not preceded by CR.
pub(crate) fn bare_line_end(data: &[u8]) -> Option<usize> {
    data.iter().enumerate().find_map(|(i, &b)| {
        let bare = match b {
            b'\r' => data.get(i + 1) != Some(&b'\n'),
            b'\n' => i == 0 || data[i - 1] != b'\r',
            _ => false,
        };
        bare.then_some(i)
    })
}

/// `DATA` LF `.` CRLF: the session takes commands ended by a bare LF, and the data after
/// DATA starts a line however the command ended, so this is an (empty) message without any
/// CRLF.CRLF in the input. Lines starting with `DATA` whose bare LF is followed by `.` CRLF.
fn lf_data_then_dot(data: &[u8]) -> usize {
    let mut n = 0;
    for (i, w) in data.windows(4).enumerate() {
        if w != b"\n.\r\n" || (i > 0 && data[i - 1] == b'\r') {
            continue;
        }
        let start = data[..i]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |j| j + 1);
        let line = &data[start..i];
        if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"DATA") {
            n += 1;
        }
    }
    n
}

fn count_non_overlapping(haystack: &[u8], needle: &[u8]) -> usize {
    let mut n = 0;
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        if &haystack[i..i + needle.len()] == needle {
            n += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    n
}

fn check_replies(output: &[u8]) {
    assert!(output.starts_with(b"220 "), "no greeting: {output:?}");
    assert!(
        output.ends_with(b"\r\n"),
        "output ends mid-line: {output:?}"
    );
    assert_eq!(bare_line_end(output), None, "bare CR or LF in replies");
    for line in output[..output.len() - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let shown = String::from_utf8_lossy(line);
        assert!(
            line.len() >= 4
                && line[..3].iter().all(u8::is_ascii_digit)
                && matches!(line[3], b' ' | b'-'),
            "malformed reply line {shown:?}"
        );
        assert!(
            line.iter().all(|&b| (0x20..0x7f).contains(&b)),
            "reply line with a control or non-ASCII octet: {shown:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../fuzz/corpus/session/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn replies(output: &[u8]) -> String {
        String::from_utf8_lossy(output).into_owned()
    }

    /// The harness really relays: otherwise the invariants would hold vacuously.
    #[test]
    fn full_session_spools_one_message() {
        let (output, messages) = run(&seed("full"));
        assert_eq!(messages.len(), 1, "{}", replies(&output));
        assert!(replies(&output).ends_with("221 2.0.0 Bye\r\n"));
        let data = String::from_utf8_lossy(&messages[0].data);
        assert!(data.starts_with("Received: from client.alpha.example"));
        assert!(
            data.ends_with("\r\n.a dot-stuffed line\r\n\r\nBye.\r\n"),
            "{data}"
        );
    }

    #[test]
    fn auth_plain_seed_authenticates() {
        let (output, messages) = run(&seed("auth-plain"));
        assert!(
            replies(&output).contains("\r\n235 "),
            "{}",
            replies(&output)
        );
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].auth_user.as_deref(), Some(AUTH_USER));
    }

    /// Each smuggling seed hides a second transaction behind an end-of-data look-alike: one
    /// message only, and the look-alike stays inside it.
    #[test]
    fn smuggling_seeds_spool_one_message() {
        for name in [
            "lf-dot-lf",
            "crlf-dot-cr",
            "lf-dot-crlf",
            "cr-dot-crlf",
            "crlf-dot-lf",
            "cr-dot-cr",
            "lf-dot-cr",
            "crlf-dot-null",
        ] {
            let (output, messages) = run(&seed(&format!("smuggle-{name}")));
            assert!(messages.len() <= 1, "{name}: {}", replies(&output));
            if let Some(m) = messages.first() {
                assert!(
                    String::from_utf8_lossy(&m.data).contains("MAIL FROM:<admin@alpha.example>"),
                    "{name}"
                );
            }
        }
    }
}
