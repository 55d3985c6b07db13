//! A scriptable SMTP server standing in for a remote MX. It records every transaction and
//! answers 250 unless the test scripted otherwise.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::{CipherSuite, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::io::BoxedIo;
use crate::reply::{code_of, to_wire};

/// Longest command line read before the sink gives up on the connection.
const MAX_LINE: usize = 64 * 1024;

/// A scripted answer. Strings convert into [`Reply::Text`]; several `\n`-separated lines make a
/// multiline reply. Any 421 reply closes the connection after it is sent, as RFC 5321 requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Text(String),
    /// Close the connection without answering.
    Disconnect,
    /// Wait, then answer (for client timeout tests).
    Delay(Duration, Box<Reply>),
}

impl Reply {
    pub fn delayed(delay: Duration, then: impl Into<Reply>) -> Self {
        Reply::Delay(delay, Box::new(then.into()))
    }

    fn code(&self) -> Option<u16> {
        match self {
            Reply::Text(t) => code_of(t),
            Reply::Disconnect => None,
            Reply::Delay(_, inner) => inner.code(),
        }
    }

    fn text(&self) -> Option<&str> {
        match self {
            Reply::Text(t) => Some(t),
            Reply::Disconnect => None,
            Reply::Delay(_, inner) => inner.text(),
        }
    }
}

impl From<&str> for Reply {
    fn from(s: &str) -> Self {
        Reply::Text(s.to_owned())
    }
}

impl From<String> for Reply {
    fn from(s: String) -> Self {
        Reply::Text(s)
    }
}

/// What the sink advertises in its EHLO reply. MAIL/RCPT parameters belonging to an extension
/// that is not advertised are refused with 555, and non-ASCII addresses without SMTPUTF8 with
/// 553, so a client that ignores the EHLO reply shows up as a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    /// `SIZE n`; larger declared or actual messages get 552.
    pub size: Option<usize>,
    pub enhanced_status_codes: bool,
    pub dsn: bool,
}

impl Default for Extensions {
    /// Everything on, SIZE 50 MiB.
    fn default() -> Self {
        Self {
            pipelining: true,
            eight_bit_mime: true,
            smtputf8: true,
            size: Some(50 * 1024 * 1024),
            enhanced_status_codes: true,
            dsn: true,
        }
    }
}

impl Extensions {
    /// Plain RFC 5321: no extensions at all.
    pub fn none() -> Self {
        Self {
            pipelining: false,
            eight_bit_mime: false,
            smtputf8: false,
            size: None,
            enhanced_status_codes: false,
            dsn: false,
        }
    }
}

/// TLS parameters of a session, as the sink saw them.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: Option<ProtocolVersion>,
    pub cipher_suite: Option<CipherSuite>,
    /// SNI the client sent.
    pub sni: Option<String>,
    /// Client certificate chain, empty if the client sent none.
    pub client_certs: Vec<CertificateDer<'static>>,
}

/// One RCPT TO command and how the sink answered it.
#[derive(Debug, Clone)]
pub struct Rcpt {
    /// Address without angle brackets.
    pub address: String,
    /// Parameters as sent, e.g. `NOTIFY=FAILURE`.
    pub params: Vec<String>,
    pub reply: String,
}

impl Rcpt {
    pub fn accepted(&self) -> bool {
        self.reply.starts_with('2')
    }
}

/// One transaction: from an accepted MAIL to the end of data, RSET, QUIT or disconnect.
#[derive(Debug, Clone)]
pub struct Received {
    /// Connection number on this sink, from 1; equal numbers mean the client reused a session.
    pub connection: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// EHLO/HELO argument.
    pub helo: String,
    /// True after EHLO, false after HELO.
    pub esmtp: bool,
    pub tls: Option<TlsInfo>,
    /// Reverse path without angle brackets (empty for the null sender).
    pub mail_from: String,
    /// MAIL parameters as sent, e.g. `BODY=8BITMIME`, `SIZE=1234`.
    pub mail_params: Vec<String>,
    /// Every RCPT in order, refused ones included.
    pub rcpts: Vec<Rcpt>,
    /// Message content after dot-unstuffing, line endings as received, without the final `.`.
    /// Empty if DATA never completed.
    pub data: Vec<u8>,
    /// The reply sent to the end of data; `None` if data never completed or the script
    /// disconnected instead of answering.
    pub data_reply: Option<String>,
}

impl Received {
    /// True if the end of data got a 2xx reply: the sink took responsibility for the message.
    pub fn accepted(&self) -> bool {
        self.data_reply
            .as_deref()
            .is_some_and(|r| r.starts_with('2'))
    }

    /// Addresses of the accepted recipients.
    pub fn recipients(&self) -> Vec<String> {
        self.rcpts
            .iter()
            .filter(|r| r.accepted())
            .map(|r| r.address.clone())
            .collect()
    }

    pub fn data_text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// First header field called `name` (case-insensitive), unfolded, value trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        let text = self.data_text();
        let head = text
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .split("\n\n")
            .next()
            .unwrap_or("");
        let mut found: Option<String> = None;
        for line in head.split('\n').map(|l| l.trim_end_matches('\r')) {
            if line.starts_with([' ', '\t']) {
                if let Some(v) = found.as_mut() {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                continue;
            }
            if found.is_some() {
                break;
            }
            if let Some((field, value)) = line.split_once(':') {
                if field.trim().eq_ignore_ascii_case(name) {
                    found = Some(value.trim().to_owned());
                }
            }
        }
        found
    }
}

#[derive(Debug, Clone)]
struct Rule {
    reply: Reply,
    /// `None`: for good; `Some(n)`: for the next n uses, then back to the default.
    remaining: Option<usize>,
}

fn take(slot: &mut Option<Rule>) -> Option<Reply> {
    let rule = slot.as_mut()?;
    let reply = rule.reply.clone();
    if let Some(n) = rule.remaining.as_mut() {
        *n -= 1;
        if *n == 0 {
            *slot = None;
        }
    }
    Some(reply)
}

fn rule(reply: impl Into<Reply>, times: Option<usize>) -> Option<Rule> {
    if times == Some(0) {
        return None;
    }
    Some(Rule {
        reply: reply.into(),
        remaining: times,
    })
}

struct Script {
    hostname: String,
    extensions: Extensions,
    tls: Option<Arc<ServerConfig>>,
    require_tls: bool,
    greeting: Option<Rule>,
    ehlo: Option<Rule>,
    mail: Option<Rule>,
    rcpt: HashMap<String, Option<Rule>>,
    data_command: Option<Rule>,
    data: Option<Rule>,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            hostname: "sink.test".to_owned(),
            extensions: Extensions::default(),
            tls: None,
            require_tls: false,
            greeting: None,
            ehlo: None,
            mail: None,
            rcpt: HashMap::new(),
            data_command: None,
            data: None,
        }
    }
}

#[derive(Default)]
struct Log {
    transactions: Vec<Received>,
    connections: u64,
    tls_errors: Vec<String>,
}

struct Shared {
    script: Mutex<Script>,
    log: Mutex<Log>,
    /// Bumped after every recorded transaction so waiters can re-check.
    changed: watch::Sender<u64>,
    queue_ids: AtomicU64,
}

impl Shared {
    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, txn: Received) {
        self.log().transactions.push(txn);
        self.changed.send_modify(|n| *n += 1);
    }
}

/// A recording, scriptable SMTP server. Dropping it stops the listener and open sessions.
pub struct SmtpSink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl SmtpSink {
    /// Listens on `addr`, e.g. `"127.0.0.2:0"` for an ephemeral port on 127.0.0.2.
    /// Panics if it cannot bind.
    pub async fn start(addr: impl ToSocketAddrs) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind SMTP sink");
        Self::from_listener(listener)
    }

    /// One sink per address in `ips`, all on the same port: several MXes that differ only by IP,
    /// reachable by a relay configured with a single outbound SMTP port.
    pub async fn start_group(ips: &[IpAddr]) -> Vec<SmtpSink> {
        let Some((first, rest)) = ips.split_first() else {
            return Vec::new();
        };
        'attempt: for _ in 0..50 {
            let lead = TcpListener::bind(SocketAddr::new(*first, 0))
                .await
                .expect("bind SMTP sink");
            let port = lead.local_addr().expect("local addr").port();
            let mut listeners = vec![lead];
            for ip in rest {
                match TcpListener::bind(SocketAddr::new(*ip, port)).await {
                    Ok(l) => listeners.push(l),
                    Err(_) => continue 'attempt,
                }
            }
            return listeners.into_iter().map(Self::from_listener).collect();
        }
        panic!("no port free on all of {ips:?}");
    }

    fn from_listener(listener: TcpListener) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared {
            script: Mutex::new(Script::default()),
            log: Mutex::new(Log::default()),
            changed: watch::channel(0).0,
            queue_ids: AtomicU64::new(1),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Self { addr, shared, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Name in the greeting and EHLO reply (default `sink.test`).
    pub fn set_hostname(&self, hostname: &str) {
        self.shared.script().hostname = hostname.to_owned();
    }

    pub fn set_extensions(&self, extensions: Extensions) {
        self.shared.script().extensions = extensions;
    }

    /// Offer STARTTLS with `config` (see [`TestPki`](crate::TestPki) for configs).
    pub fn enable_starttls(&self, config: Arc<ServerConfig>) {
        self.shared.script().tls = Some(config);
    }

    pub fn disable_starttls(&self) {
        self.shared.script().tls = None;
    }

    /// Refuse MAIL with 530 until STARTTLS has been done.
    pub fn require_tls(&self, required: bool) {
        self.shared.script().require_tls = required;
    }

    /// Greeting for every new connection, e.g. `"421 4.3.2 busy"` (then closes) or
    /// `"554 5.3.2 no service"` (then answers 503 to everything but QUIT).
    pub fn reply_greeting(&self, reply: impl Into<Reply>) {
        self.shared.script().greeting = rule(reply, None);
    }

    /// Greeting for the next `times` connections only.
    pub fn reply_greeting_times(&self, reply: impl Into<Reply>, times: usize) {
        self.shared.script().greeting = rule(reply, Some(times));
    }

    /// Replaces the EHLO reply (e.g. `"502 5.5.1 not implemented"` to force HELO).
    pub fn reply_ehlo(&self, reply: impl Into<Reply>) {
        self.shared.script().ehlo = rule(reply, None);
    }

    /// Reply to every MAIL FROM that passed syntax and parameter checks.
    pub fn reply_mail(&self, reply: impl Into<Reply>) {
        self.shared.script().mail = rule(reply, None);
    }

    pub fn reply_mail_times(&self, reply: impl Into<Reply>, times: usize) {
        self.shared.script().mail = rule(reply, Some(times));
    }

    /// Reply to RCPT TO for `rcpt` (case-insensitive), e.g. `"550 5.1.1 No such user"`.
    pub fn reply_rcpt(&self, rcpt: &str, reply: impl Into<Reply>) {
        self.shared
            .script()
            .rcpt
            .insert(rcpt.to_lowercase(), rule(reply, None));
    }

    pub fn reply_rcpt_times(&self, rcpt: &str, reply: impl Into<Reply>, times: usize) {
        self.shared
            .script()
            .rcpt
            .insert(rcpt.to_lowercase(), rule(reply, Some(times)));
    }

    /// Reply to the DATA command itself (default 354); anything but 354 refuses the data.
    pub fn reply_data_command(&self, reply: impl Into<Reply>) {
        self.shared.script().data_command = rule(reply, None);
    }

    /// Reply to the end of data, for every transaction.
    pub fn reply_data(&self, reply: impl Into<Reply>) {
        self.shared.script().data = rule(reply, None);
    }

    /// Reply to the end of data for the next `times` transactions, then 250 again:
    /// `sink.reply_data_times("451 4.3.0 try later", 1)`.
    pub fn reply_data_times(&self, reply: impl Into<Reply>, times: usize) {
        self.shared.script().data = rule(reply, Some(times));
    }

    /// Drops every scripted reply (greeting, EHLO, MAIL, RCPT, DATA); TLS and extensions stay.
    pub fn reset_replies(&self) {
        let mut script = self.shared.script();
        script.greeting = None;
        script.ehlo = None;
        script.mail = None;
        script.rcpt.clear();
        script.data_command = None;
        script.data = None;
    }

    /// Accepted messages (end of data answered 2xx), in order.
    pub fn messages(&self) -> Vec<Received> {
        self.transactions()
            .into_iter()
            .filter(Received::accepted)
            .collect()
    }

    /// Every transaction, including refused and abandoned ones.
    pub fn transactions(&self) -> Vec<Received> {
        self.shared.log().transactions.clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.log().connections
    }

    /// TLS handshakes that failed after STARTTLS, with rustls' reason.
    pub fn tls_errors(&self) -> Vec<String> {
        self.shared.log().tls_errors.clone()
    }

    /// Forgets recorded transactions, connection count and TLS errors.
    pub fn clear(&self) {
        *self.shared.log() = Log::default();
    }

    /// Waits until at least `n` messages have been accepted and returns them all.
    /// Panics after `timeout`, listing what did arrive.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_until(timeout, |_| self.messages().len() >= n)
            .await
            .map(|()| self.messages())
            .unwrap_or_else(|| {
                panic!(
                    "expected {n} accepted messages at {} within {timeout:?}; transactions: {:#?}",
                    self.addr,
                    self.transactions()
                )
            })
    }

    /// Waits until at least `n` transactions (accepted or not) have been recorded.
    /// Panics after `timeout`.
    pub async fn wait_for_transactions(&self, n: usize, timeout: Duration) -> Vec<Received> {
        self.wait_until(timeout, |_| self.transactions().len() >= n)
            .await
            .map(|()| self.transactions())
            .unwrap_or_else(|| {
                panic!(
                    "expected {n} transactions at {} within {timeout:?}; got: {:#?}",
                    self.addr,
                    self.transactions()
                )
            })
    }

    async fn wait_until(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Option<()> {
        let mut changes = self.shared.changed.subscribe();
        let wait = async {
            loop {
                changes.borrow_and_update();
                if done(self) {
                    return;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every session.
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let connection = {
                    let mut log = shared.log();
                    log.connections += 1;
                    log.connections
                };
                let session = Session::new(shared.clone(), connection, &stream, peer);
                sessions.spawn(session.run(stream));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

enum Flow {
    Continue,
    Close,
}

type Conn = BufReader<BoxedIo>;

struct Session {
    shared: Arc<Shared>,
    connection: u64,
    peer: SocketAddr,
    local: SocketAddr,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    txn: Option<Received>,
}

impl Session {
    fn new(shared: Arc<Shared>, connection: u64, stream: &TcpStream, peer: SocketAddr) -> Self {
        Self {
            shared,
            connection,
            peer,
            local: stream.local_addr().unwrap_or(peer),
            helo: None,
            esmtp: false,
            tls: None,
            txn: None,
        }
    }

    async fn run(mut self, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let mut conn: Conn = BufReader::new(Box::new(stream));
        let _ = self.serve(&mut conn).await;
        self.abandon_transaction();
    }

    async fn serve(&mut self, conn: &mut Conn) -> io::Result<()> {
        let (greeting, hostname) = {
            let mut script = self.shared.script();
            (take(&mut script.greeting), script.hostname.clone())
        };
        let greeting =
            greeting.unwrap_or_else(|| format!("220 {hostname} ESMTP relayward-testkit").into());
        let refused = greeting.code().is_some_and(|c| c / 100 != 2);
        if let Flow::Close = send(conn, greeting).await? {
            return Ok(());
        }

        loop {
            let Some(line) = read_line(conn).await? else {
                return Ok(());
            };
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let (verb, arg) = match text.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
                None => (text.to_ascii_uppercase(), ""),
            };

            if refused && verb != "QUIT" {
                send(conn, "503 5.5.1 No service".into()).await?;
                continue;
            }
            let flow = match verb.as_str() {
                "EHLO" | "HELO" => self.helo(conn, verb == "EHLO", arg).await?,
                "STARTTLS" => {
                    if let Some(upgraded) = self.starttls(conn, arg).await? {
                        *conn = upgraded;
                    }
                    Flow::Continue
                }
                "MAIL" => self.mail(conn, arg).await?,
                "RCPT" => self.rcpt(conn, arg).await?,
                "DATA" => self.data(conn, arg).await?,
                "RSET" => {
                    self.abandon_transaction();
                    send(conn, "250 2.0.0 Ok".into()).await?
                }
                "NOOP" => send(conn, "250 2.0.0 Ok".into()).await?,
                "VRFY" => send(conn, "252 2.5.2 Cannot VRFY user".into()).await?,
                "HELP" => send(conn, "214 2.0.0 relayward-testkit sink".into()).await?,
                "QUIT" => {
                    self.abandon_transaction();
                    send(conn, "221 2.0.0 Bye".into()).await?;
                    Flow::Close
                }
                _ => send(conn, "500 5.5.2 Command not recognized".into()).await?,
            };
            if let Flow::Close = flow {
                return Ok(());
            }
        }
    }

    async fn helo(&mut self, conn: &mut Conn, esmtp: bool, arg: &str) -> io::Result<Flow> {
        if arg.is_empty() {
            let verb = if esmtp { "EHLO" } else { "HELO" };
            return send(conn, format!("501 5.5.4 Syntax: {verb} hostname").into()).await;
        }
        self.abandon_transaction();
        let (scripted, hostname, ext, offer_tls) = {
            let mut script = self.shared.script();
            let scripted = if esmtp { take(&mut script.ehlo) } else { None };
            (
                scripted,
                script.hostname.clone(),
                script.extensions.clone(),
                script.tls.is_some() && self.tls.is_none(),
            )
        };
        let reply = match scripted {
            Some(reply) => reply,
            None if esmtp => {
                let mut lines = vec![format!("250-{hostname} greets {arg}")];
                if ext.pipelining {
                    lines.push("PIPELINING".into());
                }
                if ext.eight_bit_mime {
                    lines.push("8BITMIME".into());
                }
                if ext.smtputf8 {
                    lines.push("SMTPUTF8".into());
                }
                if let Some(size) = ext.size {
                    lines.push(format!("SIZE {size}"));
                }
                if ext.enhanced_status_codes {
                    lines.push("ENHANCEDSTATUSCODES".into());
                }
                if ext.dsn {
                    lines.push("DSN".into());
                }
                if offer_tls {
                    lines.push("STARTTLS".into());
                }
                lines.join("\n").into()
            }
            None => format!("250 {hostname}").into(),
        };
        if reply.code().is_some_and(|c| c / 100 == 2) {
            self.helo = Some(arg.to_owned());
            self.esmtp = esmtp;
        }
        send(conn, reply).await
    }

    /// Answers STARTTLS and returns the upgraded connection, or `None` if refused.
    async fn starttls(&mut self, conn: &mut Conn, arg: &str) -> io::Result<Option<Conn>> {
        let config = self.shared.script().tls.clone();
        let refusal = match (&config, &self.tls) {
            (None, _) => Some("502 5.5.1 STARTTLS not offered"),
            (Some(_), Some(_)) => Some("503 5.5.1 TLS already active"),
            _ if !arg.is_empty() => Some("501 5.5.4 Syntax: STARTTLS"),
            _ => None,
        };
        let (Some(config), None) = (config, refusal) else {
            send(conn, refusal.unwrap_or_default().into()).await?;
            return Ok(None);
        };
        send(conn, "220 2.0.0 Ready to start TLS".into()).await?;
        // Anything pipelined after STARTTLS arrived in plaintext and must not be acted on
        // (CVE-2011-0411 class); dropping the buffer discards it.
        let plain = std::mem::replace(conn, BufReader::new(Box::new(tokio::io::empty())));
        match TlsAcceptor::from(config).accept(plain.into_inner()).await {
            Ok(tls) => {
                let (_, session) = tls.get_ref();
                self.tls = Some(TlsInfo {
                    version: session.protocol_version(),
                    cipher_suite: session.negotiated_cipher_suite().map(|s| s.suite()),
                    sni: session.server_name().map(str::to_owned),
                    client_certs: session
                        .peer_certificates()
                        .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                        .unwrap_or_default(),
                });
                self.abandon_transaction();
                self.helo = None;
                self.esmtp = false;
                Ok(Some(BufReader::new(Box::new(tls))))
            }
            Err(e) => {
                self.shared.log().tls_errors.push(e.to_string());
                Err(e)
            }
        }
    }

    async fn mail(&mut self, conn: &mut Conn, arg: &str) -> io::Result<Flow> {
        if self.helo.is_none() {
            return send(conn, "503 5.5.1 EHLO/HELO first".into()).await;
        }
        if self.txn.is_some() {
            return send(conn, "503 5.5.1 Nested MAIL command".into()).await;
        }
        let Some((address, params)) = parse_path(arg, "FROM:") else {
            return send(conn, "501 5.5.4 Syntax: MAIL FROM:<address>".into()).await;
        };
        let (ext, require_tls) = {
            let script = self.shared.script();
            (script.extensions.clone(), script.require_tls)
        };
        if require_tls && self.tls.is_none() {
            return send(conn, "530 5.7.0 Must issue a STARTTLS command first".into()).await;
        }
        let mut smtputf8 = false;
        for param in &params {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let key = key.to_ascii_uppercase();
            let refusal = match key.as_str() {
                _ if !self.esmtp => Some("555 5.5.4 Parameters need EHLO".to_owned()),
                "SIZE" => match (ext.size, value.parse::<usize>()) {
                    (None, _) => Some("555 5.5.4 SIZE not supported".to_owned()),
                    (Some(_), Err(_)) => Some("501 5.5.4 Bad SIZE value".to_owned()),
                    (Some(max), Ok(n)) if n > max => {
                        Some("552 5.3.4 Message size exceeds fixed maximum message size".to_owned())
                    }
                    _ => None,
                },
                "BODY" => match value.to_ascii_uppercase().as_str() {
                    "7BIT" | "8BITMIME" if ext.eight_bit_mime => None,
                    _ => Some(format!("555 5.5.4 BODY={value} not supported")),
                },
                "SMTPUTF8" if ext.smtputf8 => {
                    smtputf8 = true;
                    None
                }
                "RET" | "ENVID" if ext.dsn => None,
                _ => Some(format!("555 5.5.4 Unsupported parameter {key}")),
            };
            if let Some(refusal) = refusal {
                return send(conn, refusal.into()).await;
            }
        }
        if !smtputf8 && !address.is_ascii() {
            return send(conn, "553 5.6.7 Non-ASCII address needs SMTPUTF8".into()).await;
        }
        let reply = take(&mut self.shared.script().mail).unwrap_or_else(|| "250 2.1.0 Ok".into());
        if reply.code().is_some_and(|c| c / 100 == 2) {
            self.txn = Some(Received {
                connection: self.connection,
                peer: self.peer,
                local: self.local,
                helo: self.helo.clone().unwrap_or_default(),
                esmtp: self.esmtp,
                tls: self.tls.clone(),
                mail_from: address,
                mail_params: params,
                rcpts: Vec::new(),
                data: Vec::new(),
                data_reply: None,
            });
        }
        send(conn, reply).await
    }

    async fn rcpt(&mut self, conn: &mut Conn, arg: &str) -> io::Result<Flow> {
        let Some(txn) = self.txn.as_mut() else {
            return send(conn, "503 5.5.1 Need MAIL command".into()).await;
        };
        let Some((address, params)) = parse_path(arg, "TO:") else {
            return send(conn, "501 5.5.4 Syntax: RCPT TO:<address>".into()).await;
        };
        let dsn = self.shared.script().extensions.dsn;
        for param in &params {
            let key = param.split('=').next().unwrap_or("").to_ascii_uppercase();
            if !(dsn && (key == "NOTIFY" || key == "ORCPT")) {
                return send(
                    conn,
                    format!("555 5.5.4 Unsupported parameter {key}").into(),
                )
                .await;
            }
        }
        let smtputf8 = txn
            .mail_params
            .iter()
            .any(|p| p.eq_ignore_ascii_case("SMTPUTF8"));
        if !smtputf8 && !address.is_ascii() {
            return send(conn, "553 5.6.7 Non-ASCII address needs SMTPUTF8".into()).await;
        }
        let scripted = {
            let mut script = self.shared.script();
            script.rcpt.get_mut(&address.to_lowercase()).and_then(take)
        };
        let reply = scripted.unwrap_or_else(|| "250 2.1.5 Ok".into());
        txn.rcpts.push(Rcpt {
            address,
            params,
            reply: reply.text().unwrap_or_default().to_owned(),
        });
        send(conn, reply).await
    }

    async fn data(&mut self, conn: &mut Conn, arg: &str) -> io::Result<Flow> {
        let Some(txn) = self.txn.as_ref() else {
            return send(conn, "503 5.5.1 Need MAIL command".into()).await;
        };
        if !arg.is_empty() {
            return send(conn, "501 5.5.4 Syntax: DATA".into()).await;
        }
        if !txn.rcpts.iter().any(Rcpt::accepted) {
            return send(conn, "554 5.5.1 No valid recipients".into()).await;
        }
        let (scripted, size_limit) = {
            let mut script = self.shared.script();
            (take(&mut script.data_command), script.extensions.size)
        };
        let go_ahead = scripted.unwrap_or_else(|| "354 End data with <CR><LF>.<CR><LF>".into());
        let proceed = go_ahead.code() == Some(354);
        if let Flow::Close = send(conn, go_ahead).await? {
            return Ok(Flow::Close);
        }
        if !proceed {
            return Ok(Flow::Continue);
        }

        let mut data = Vec::new();
        loop {
            let Some(line) = read_line(conn).await? else {
                // Disconnected mid-data: the transaction is recorded as abandoned by `run`.
                return Ok(Flow::Close);
            };
            if line == b".\r\n" || line == b".\n" {
                break;
            }
            let unstuffed = line.strip_prefix(b".").unwrap_or(&line);
            data.extend_from_slice(unstuffed);
        }

        let too_big = size_limit.is_some_and(|max| data.len() > max);
        let reply = if too_big {
            "552 5.3.4 Message too big".into()
        } else {
            let queue_id = self.shared.queue_ids.fetch_add(1, Ordering::Relaxed);
            take(&mut self.shared.script().data)
                .unwrap_or_else(|| format!("250 2.0.0 Ok: queued as {queue_id}").into())
        };
        let mut txn = self.txn.take().expect("transaction checked above");
        txn.data = data;
        txn.data_reply = reply.text().map(str::to_owned);
        // Recorded before replying so a client that has seen 250 can assert on it at once.
        self.shared.record(txn);
        send(conn, reply).await
    }

    fn abandon_transaction(&mut self) {
        if let Some(txn) = self.txn.take() {
            self.shared.record(txn);
        }
    }
}

/// Parses `FROM:<addr> PARAM=x ...` (prefix case-insensitive, space after the colon tolerated).
fn parse_path(arg: &str, prefix: &str) -> Option<(String, Vec<String>)> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    let address = rest[..end].to_owned();
    let params = rest[end + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Some((address, params))
}

async fn read_line(conn: &mut Conn) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let n = (&mut *conn)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if !line.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or connection closed mid-line",
        ));
    }
    Ok(Some(line))
}

async fn send(conn: &mut Conn, reply: Reply) -> io::Result<Flow> {
    let mut reply = reply;
    loop {
        match reply {
            Reply::Delay(delay, then) => {
                tokio::time::sleep(delay).await;
                reply = *then;
            }
            Reply::Disconnect => return Ok(Flow::Close),
            Reply::Text(text) => {
                let w = conn.get_mut();
                w.write_all(to_wire(&text).as_bytes()).await?;
                w.flush().await?;
                return Ok(if code_of(&text) == Some(421) {
                    Flow::Close
                } else {
                    Flow::Continue
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths() {
        assert_eq!(
            parse_path("FROM:<a@b> BODY=8BITMIME SIZE=10", "FROM:"),
            Some((
                "a@b".to_owned(),
                vec!["BODY=8BITMIME".to_owned(), "SIZE=10".to_owned()]
            ))
        );
        assert_eq!(
            parse_path("from: <>", "FROM:"),
            Some((String::new(), vec![]))
        );
        assert_eq!(parse_path("TO:a@b", "TO:"), None);
    }

    #[test]
    fn header_lookup_unfolds() {
        let r = Received {
            connection: 1,
            peer: "127.0.0.1:1".parse().unwrap(),
            local: "127.0.0.1:2".parse().unwrap(),
            helo: String::new(),
            esmtp: true,
            tls: None,
            mail_from: String::new(),
            mail_params: vec![],
            rcpts: vec![],
            data: b"Subject: one\r\n two\r\nFrom: a@b\r\n\r\nSubject: body\r\n".to_vec(),
            data_reply: None,
        };
        assert_eq!(r.header("subject").as_deref(), Some("one two"));
        assert_eq!(r.header("from").as_deref(), Some("a@b"));
        assert_eq!(r.header("to"), None);
    }
}
