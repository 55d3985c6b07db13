//! Test harness: a directory fixture, an in-memory sink and event log, the testkit's PKI,
//! and a small line-oriented SMTP client that can bind to any 127.0.0.x source address.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use relayward_core::*;
use relayward_policy::{Directory, SharedDirectory};
use relayward_smtp::*;
use relayward_testkit::{IssuedCert, TestPki};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub const HOSTNAME: &str = "relay.test";
pub const GAMMA_USER: &str = "gamma-app";
pub const GAMMA_PASSWORD: &str = "gamma-secret";

// Source addresses and what they are in the fixture.
pub const ALPHA_IP: &str = "127.0.0.2"; // tenant 1 by IP (connector 1)
pub const DELTA_IP: &str = "127.0.0.4"; // tenant 4 by IP, require_tls (connector 4)
pub const SHARED_IP: &str = "127.0.1.7"; // tenants 1 (connector 5) and 5 (connector 6)
pub const STRANGER_IP: &str = "127.0.0.9"; // no connector at all

#[derive(Default)]
pub struct MemorySink {
    pub messages: Mutex<Vec<IncomingMessage>>,
    pub fail: AtomicBool,
    next: AtomicU64,
}

impl MemorySink {
    pub fn messages(&self) -> Vec<IncomingMessage> {
        self.messages.lock().unwrap().clone()
    }
    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }
}

#[async_trait]
impl MessageSink for MemorySink {
    fn new_queue_id(&self) -> String {
        format!("Q{:06}", self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }
    async fn enqueue(&self, msg: IncomingMessage) -> Result<(), relayward_smtp::EnqueueError> {
        if self.fail.load(Ordering::Relaxed) {
            return Err(relayward_smtp::EnqueueError::Unavailable(
                "spool unavailable".into(),
            ));
        }
        self.messages.lock().unwrap().push(msg);
        Ok(())
    }
}

#[derive(Default)]
pub struct MemoryEvents {
    pub events: Mutex<Vec<TraceEvent>>,
    pub used: Mutex<Vec<ConnectorId>>,
}

impl MemoryEvents {
    pub fn of_kind(&self, kind: TraceKind) -> Vec<TraceEvent> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.kind == kind)
            .cloned()
            .collect()
    }
}

impl Events for MemoryEvents {
    fn trace(&self, event: TraceEvent) {
        self.events.lock().unwrap().push(event);
    }
    fn connector_used(&self, connector: ConnectorId) {
        self.used.lock().unwrap().push(connector);
    }
}

pub fn tenant(id: i64, state: TenantState) -> Tenant {
    Tenant {
        id: TenantId(id),
        name: format!("tenant{id}"),
        state,
        admin_emails: vec![],
        created_at: Timestamp(0),
    }
}

pub fn domain(id: i64, tenant_id: i64, name: &str, verified: bool, subs: bool) -> AcceptedDomain {
    AcceptedDomain {
        id: DomainId(id),
        tenant_id: TenantId(tenant_id),
        domain: name.into(),
        kind: DomainKind::Authoritative,
        match_subdomains: subs,
        verified,
        verification_token: "token".into(),
        created_at: Timestamp(0),
        verified_at: None,
    }
}

pub fn connector(id: i64, tenant_id: i64, ips: &[&str]) -> Connector {
    Connector {
        id: ConnectorId(id),
        tenant_id: TenantId(tenant_id),
        name: format!("connector{id}"),
        kind: ConnectorKind::OnPremises,
        ip_ranges: ips.iter().map(|s| s.parse().unwrap()).collect(),
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
        created_by: "test".into(),
        updated_at: Timestamp(0),
        updated_by: "test".into(),
        last_used_at: None,
    }
}

fn gamma_hash() -> String {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| relayward_policy::auth::hash_password(GAMMA_PASSWORD).unwrap())
        .clone()
}

/// Tenants 1 alpha (IP), 2 beta (certificate mx.beta.example), 3 gamma (AUTH), 4 delta (IP,
/// require_tls), 5 epsilon (shares 127.0.1.7 with alpha, allow_unregistered).
pub fn fixture() -> DirectoryData {
    let mut cert = connector(2, 2, &[]);
    cert.cert_name = Some("mx.beta.example".into());
    let mut auth = connector(3, 3, &[]);
    auth.auth_user = Some(GAMMA_USER.into());
    auth.auth_password_hash = Some(gamma_hash());
    let mut tls_only = connector(4, 4, &[&format!("{DELTA_IP}/32")]);
    tls_only.require_tls = true;
    let mut shared_eps = connector(6, 5, &[&format!("{SHARED_IP}/32")]);
    shared_eps.allow_unregistered = true;
    DirectoryData {
        version: 1,
        tenants: (1..=5).map(|i| tenant(i, TenantState::Active)).collect(),
        domains: vec![
            domain(1, 1, "alpha.example", true, false),
            domain(2, 1, "pending.example", false, false),
            domain(3, 2, "beta.example", true, true),
            domain(4, 3, "gamma.example", true, false),
            domain(5, 4, "delta.example", true, false),
            domain(6, 5, "epsilon.example", true, false),
        ],
        connectors: vec![
            connector(1, 1, &[&format!("{ALPHA_IP}/32")]),
            cert,
            auth,
            tls_only,
            connector(5, 1, &[&format!("{SHARED_IP}/32")]),
            shared_eps,
        ],
        header_from_allowed: Vec::new(),
    }
}

pub fn test_config() -> SmtpConfig {
    SmtpConfig {
        hostname: HOSTNAME.into(),
        timeouts: Timeouts {
            command: Duration::from_secs(10),
            data_block: Duration::from_secs(10),
            data_termination: Duration::from_secs(10),
        },
        ..SmtpConfig::default()
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Arc<Server>,
    pub dir: Arc<SharedDirectory>,
    pub sink: Arc<MemorySink>,
    pub events: Arc<MemoryEvents>,
    pub shutdown: watch::Sender<bool>,
    pub task: JoinHandle<std::io::Result<()>>,
}

pub async fn start_with(config: SmtpConfig, listener: ListenerConfig) -> TestServer {
    let dir = Arc::new(SharedDirectory::new(Directory::new(fixture())));
    let sink = Arc::new(MemorySink::default());
    let events = Arc::new(MemoryEvents::default());
    let server = Server::new(config, dir.clone(), sink.clone(), events.clone());
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (shutdown, rx) = watch::channel(false);
    let task = tokio::spawn(server.clone().serve(tcp, listener, rx));
    TestServer {
        addr,
        server,
        dir,
        sink,
        events,
        shutdown,
        task,
    }
}

pub async fn start(config: SmtpConfig) -> TestServer {
    start_with(config, ListenerConfig::default()).await
}

/// A CA (the testkit's), a server certificate for relay.test and client certificates.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub ca_file: PathBuf,
}

pub type ClientCert = IssuedCert;

struct Issued {
    pki: TestPki,
    server: IssuedCert,
    beta_client: IssuedCert,
    cn_client: IssuedCert,
    rogue_client: IssuedCert,
}

/// Key generation is cheap but not free: one PKI per test binary.
fn issued() -> &'static Issued {
    static ISSUED: OnceLock<Issued> = OnceLock::new();
    ISSUED.get_or_init(|| {
        let pki = TestPki::new();
        Issued {
            server: pki.issue_server(&[HOSTNAME]),
            beta_client: pki.issue_client_named(&["mx.beta.example"], "Beta Mail Server"),
            // No SAN at all: the CN names the client.
            cn_client: pki.issue_client_named(&[], "mx.beta.example"),
            // Someone else's CA.
            rogue_client: TestPki::new().issue_client("mx.beta.example"),
            pki,
        }
    })
}

impl Pki {
    pub fn new() -> Pki {
        let issued = issued();
        let dir = tempfile::tempdir().unwrap();
        let server_cert = dir.path().join("server.pem");
        let server_key = dir.path().join("server.key");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&server_cert, &issued.server.cert_pem).unwrap();
        std::fs::write(&server_key, &issued.server.key_pem).unwrap();
        std::fs::write(&ca_file, issued.pki.ca_pem()).unwrap();
        Pki {
            dir,
            ca_pem: issued.pki.ca_pem().to_string(),
            ca_der: issued.pki.ca_der(),
            server_cert,
            server_key,
            ca_file,
        }
    }

    pub fn server_config(&self) -> Arc<relayward_smtp::ServerTls> {
        load_tls(&self.server_cert, &self.server_key, Some(&self.ca_file)).unwrap()
    }

    /// SAN mx.beta.example (CN "Beta Mail Server"), signed by the trusted CA.
    pub fn beta_client(&self) -> ClientCert {
        issued().beta_client.clone()
    }

    /// No SAN, CN mx.beta.example, signed by the trusted CA.
    pub fn cn_client(&self) -> ClientCert {
        issued().cn_client.clone()
    }

    /// SAN mx.beta.example, signed by a CA the relay does not trust.
    pub fn rogue_client(&self) -> ClientCert {
        issued().rogue_client.clone()
    }

    pub fn client_config(&self, cert: Option<ClientCert>) -> Arc<rustls::ClientConfig> {
        match cert {
            Some(c) => issued().pki.client_config_with_cert(&c),
            None => issued().pki.client_config(),
        }
    }
}

pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A deliberately small SMTP client: raw lines in, full replies out.
pub struct Client {
    conn: Option<Conn>,
    buf: Vec<u8>,
}

const READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Client {
    /// Connect from `src` (any 127.0.0.x) without reading the greeting.
    pub async fn connect_raw(addr: SocketAddr, src: &str) -> Client {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(src.parse().unwrap(), 0))
            .unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        Client {
            conn: Some(Conn::Plain(tcp)),
            buf: Vec::new(),
        }
    }

    /// Connect and expect a 220 greeting.
    pub async fn connect(addr: SocketAddr, src: &str) -> Client {
        let mut c = Client::connect_raw(addr, src).await;
        let greeting = c.reply().await;
        assert!(greeting.starts_with("220 "), "greeting: {greeting}");
        c
    }

    /// Connect with TLS from the first byte (implicit TLS listener).
    pub async fn connect_tls(
        addr: SocketAddr,
        src: &str,
        cfg: Arc<rustls::ClientConfig>,
    ) -> Client {
        let mut c = Client::connect_raw(addr, src).await;
        c.handshake(cfg).await.unwrap();
        let greeting = c.reply().await;
        assert!(greeting.starts_with("220 "), "greeting: {greeting}");
        c
    }

    async fn read_some(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 8192];
        let n = match self.conn.as_mut().unwrap() {
            Conn::Plain(s) => s.read(&mut tmp).await?,
            Conn::Tls(s) => s.read(&mut tmp).await?,
        };
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// One line without its CRLF; None at end of stream.
    pub async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let s = String::from_utf8_lossy(&line);
                return Some(s.trim_end_matches(['\r', '\n']).to_string());
            }
            match tokio::time::timeout(READ_TIMEOUT, self.read_some()).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(_)) => {}
                Err(_) => panic!("no reply within {READ_TIMEOUT:?}"),
            }
        }
    }

    /// A whole reply; multi-line replies are joined with '\n'.
    pub async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let line = self
                .line()
                .await
                .expect("connection closed while awaiting a reply");
            let last = line.len() < 4 || line.as_bytes()[3] == b' ';
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    pub async fn send(&mut self, data: &str) {
        self.send_bytes(data.as_bytes()).await;
    }

    pub async fn send_bytes(&mut self, data: &[u8]) {
        match self.conn.as_mut().unwrap() {
            Conn::Plain(s) => s.write_all(data).await.unwrap(),
            Conn::Tls(s) => {
                s.write_all(data).await.unwrap();
                s.flush().await.unwrap();
            }
        }
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }

    pub async fn ehlo(&mut self, name: &str) -> String {
        let r = self.cmd(&format!("EHLO {name}")).await;
        assert!(r.starts_with("250-"), "EHLO: {r}");
        r
    }

    /// The server closes the connection (nothing more but EOF).
    pub async fn expect_closed(&mut self) {
        let rest = self.line().await;
        assert!(rest.is_none(), "expected close, got {rest:?}");
    }

    pub async fn handshake(&mut self, cfg: Arc<rustls::ClientConfig>) -> std::io::Result<()> {
        let Some(Conn::Plain(tcp)) = self.conn.take() else {
            panic!("already TLS")
        };
        let name = rustls::pki_types::ServerName::try_from(HOSTNAME).unwrap();
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tcp)
            .await?;
        self.conn = Some(Conn::Tls(Box::new(tls)));
        Ok(())
    }

    /// STARTTLS then the handshake; the caller sends EHLO again.
    pub async fn starttls(&mut self, cfg: Arc<rustls::ClientConfig>) {
        let r = self.cmd("STARTTLS").await;
        assert_eq!(r, "220 2.0.0 Ready to start TLS");
        self.handshake(cfg).await.unwrap();
    }

    pub async fn auth_plain(&mut self, user: &str, password: &str) -> String {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        self.cmd(&format!("AUTH PLAIN {token}")).await
    }

    /// MAIL, RCPTs, DATA and the body; returns the final reply. Panics on an earlier refusal.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], body: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert!(r.starts_with("250 "), "MAIL FROM:<{from}>: {r}");
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            assert!(r.starts_with("250 "), "RCPT TO:<{rcpt}>: {r}");
        }
        let r = self.cmd("DATA").await;
        assert!(r.starts_with("354 "), "DATA: {r}");
        self.send(body).await;
        self.cmd(".").await
    }
}

pub fn simple_body(from: &str) -> String {
    format!("From: <{from}>\r\nTo: <r@dest.example>\r\nSubject: test\r\nMessage-ID: <m1@test>\r\n\r\nHello.\r\n")
}

pub fn plain_b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Poll until `f` holds (the server works concurrently with the test), at most 2 s.
pub async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in time");
}
