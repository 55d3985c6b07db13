//! The SMTP client side of one connection: greeting, EHLO (HELO fallback), STARTTLS, AUTH PLAIN,
//! the MAIL/RCPT/DATA transaction (pipelined when offered), RSET and QUIT.
//!
//! Written by hand on tokio: mail-send would pull a second copy of mail-auth/mail-builder, and the
//! client needs per-command timeouts and per-recipient replies that it does not expose.
//! smtp-proto parses the EHLO capabilities.
//!
//! Replies and how they are read off the wire are in `reply`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use rustls::pki_types::ServerName;
use smtp_proto::{EhloResponse, EXT_8BIT_MIME, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8};
use smtp_proto::{EXT_AUTH, EXT_START_TLS};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

mod reply;

pub use reply::{read_reply, Reply};

/// Why a session step failed.
#[derive(Debug, Clone)]
pub enum SessionError {
    /// Network error or timeout: the connection is gone.
    Io { stage: &'static str, detail: String },
    /// The server answered the step with a non-success reply.
    Reply { stage: &'static str, reply: Reply },
    /// The session cannot meet the route's requirements (TLS required but unavailable, ...).
    Policy { detail: String },
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::Io { stage, detail } => write!(f, "{detail} (during {stage})"),
            SessionError::Reply { stage, reply } => write!(f, "{reply} (in reply to {stage})"),
            SessionError::Policy { detail } => f.write_str(detail),
        }
    }
}

/// What the next hop announced in its EHLO reply.
#[derive(Debug, Clone, Default)]
pub struct Capabilities {
    pub esmtp: bool,
    pub pipelining: bool,
    /// SIZE limit; `None` when not announced or announced without a number.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub auth_plain: bool,
}

impl Capabilities {
    /// What an EHLO reply announces.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        // smtp-proto wants the reply as received; rebuild it.
        let mut raw = Vec::new();
        for (i, line) in reply.lines.iter().enumerate() {
            let sep = if i + 1 == reply.lines.len() { ' ' } else { '-' };
            raw.extend_from_slice(format!("{}{sep}{line}\r\n", reply.code).as_bytes());
        }
        let Ok(ehlo) = EhloResponse::parse(&mut raw.iter()) else {
            return Capabilities {
                esmtp: true,
                ..Default::default()
            };
        };
        Capabilities {
            esmtp: true,
            pipelining: ehlo.has_capability(EXT_PIPELINING),
            size: (ehlo.has_capability(EXT_SIZE) && ehlo.size > 0).then_some(ehlo.size as u64),
            eight_bit_mime: ehlo.has_capability(EXT_8BIT_MIME),
            smtputf8: ehlo.has_capability(EXT_SMTP_UTF8),
            starttls: ehlo.has_capability(EXT_START_TLS),
            auth_plain: ehlo.has_capability(EXT_AUTH)
                && (ehlo.auth_mechanisms & smtp_proto::AUTH_PLAIN) != 0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub data: Duration,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// An open SMTP session with one server.
pub struct Connection {
    stream: BufReader<Stream>,
    /// The host name this connection was opened for (MX name or smart host), for Remote-MTA.
    pub host: String,
    pub addr: SocketAddr,
    /// The egress pool address the connection was bound to; `None`: the system chose.
    pub source: Option<IpAddr>,
    /// This end of the connection.
    pub local: Option<SocketAddr>,
    pub caps: Capabilities,
    pub tls: bool,
    pub authenticated: bool,
    /// Completed MAIL transactions on this connection.
    pub transactions: u32,
    /// Set once the connection must not be used again (I/O error, 421).
    pub broken: bool,
    pub last_used: Instant,
    timeouts: Timeouts,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("host", &self.host)
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("transactions", &self.transactions)
            .finish()
    }
}

/// The envelope of one transaction.
#[derive(Debug, Clone)]
pub struct Transaction<'a> {
    pub sender: &'a str,
    pub recipients: Vec<&'a str>,
    /// Announce BODY=8BITMIME.
    pub body_8bit: bool,
    /// Announce SMTPUTF8.
    pub smtputf8: bool,
}

/// What the server said to each step of a transaction.
#[derive(Debug, Clone)]
pub enum TransactionResult {
    /// MAIL FROM refused: applies to every recipient.
    MailRefused(Reply),
    /// Per-recipient RCPT replies (same order as given) and, when at least one was accepted, the
    /// reply to DATA (or to the final dot).
    Completed {
        rcpt: Vec<Reply>,
        data: Option<Reply>,
        /// The content was sent and the final reply read: the server's transaction is over.
        /// Otherwise it may still be open (send RSET before reusing the connection).
        finished: bool,
    },
}

impl Connection {
    /// Opens the TCP connection, from `source` when given, and reads the greeting. A non-2xx
    /// greeting is an error; so is a `source` this host cannot bind (stage `bind`).
    pub async fn connect(
        addr: SocketAddr,
        host: &str,
        source: Option<IpAddr>,
        timeouts: Timeouts,
    ) -> Result<Connection, SessionError> {
        let socket = match source {
            Some(ip) => Some(bound_socket(ip, addr).map_err(|e| SessionError::Io {
                stage: "bind",
                detail: format!(
                    "cannot bind source address {ip} to connect to {host}[{addr}]: {e}"
                ),
            })?),
            None => None,
        };
        let connecting = async {
            match socket {
                Some(socket) => socket.connect(addr).await,
                None => TcpStream::connect(addr).await,
            }
        };
        let tcp = match tokio::time::timeout(timeouts.connect, connecting).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                return Err(SessionError::Io {
                    stage: "connect",
                    detail: format!("connect to {host}[{addr}]: {e}"),
                })
            }
            Err(_) => {
                return Err(SessionError::Io {
                    stage: "connect",
                    detail: format!("connect to {host}[{addr}]: timed out"),
                })
            }
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        let mut conn = Connection {
            stream: BufReader::with_capacity(8192, Stream::Plain(tcp)),
            host: host.to_string(),
            addr,
            source,
            local,
            caps: Capabilities::default(),
            tls: false,
            authenticated: false,
            transactions: 0,
            broken: false,
            last_used: Instant::now(),
            timeouts,
        };
        let greeting = conn.read_reply("greeting").await?;
        if !greeting.is_positive() {
            conn.broken = true;
            return Err(SessionError::Reply {
                stage: "greeting",
                reply: greeting,
            });
        }
        Ok(conn)
    }

    /// EHLO, or HELO when EHLO is refused with 5xx.
    pub async fn ehlo(&mut self, name: &str) -> Result<(), SessionError> {
        let reply = self.command(format!("EHLO {name}\r\n"), "EHLO").await?;
        if reply.is_positive() {
            self.caps = Capabilities::from_ehlo(&reply);
            return Ok(());
        }
        if reply.is_permanent() {
            let reply = self.command(format!("HELO {name}\r\n"), "HELO").await?;
            if reply.is_positive() {
                self.caps = Capabilities::default();
                return Ok(());
            }
            return Err(SessionError::Reply {
                stage: "HELO",
                reply,
            });
        }
        Err(SessionError::Reply {
            stage: "EHLO",
            reply,
        })
    }

    /// STARTTLS and the handshake. EHLO must be sent again afterwards (RFC 3207).
    pub async fn starttls(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Result<Connection, SessionError> {
        let reply = self.command("STARTTLS\r\n".to_string(), "STARTTLS").await?;
        if !reply.is_positive() {
            return Err(SessionError::Reply {
                stage: "STARTTLS",
                reply,
            });
        }
        if !self.stream.buffer().is_empty() {
            // Data after the 220 would be injected into the TLS session (CVE-2011-0411 style).
            return Err(SessionError::Io {
                stage: "STARTTLS",
                detail: format!("{} sent data after 220 to STARTTLS", self.host),
            });
        }
        let Stream::Plain(tcp) = self.stream.into_inner() else {
            return Err(SessionError::Policy {
                detail: "STARTTLS inside TLS".into(),
            });
        };
        let connector = TlsConnector::from(config);
        let tls =
            match tokio::time::timeout(self.timeouts.command, connector.connect(server_name, tcp))
                .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    return Err(SessionError::Io {
                        stage: "TLS handshake",
                        detail: format!("TLS handshake with {}[{}]: {e}", self.host, self.addr),
                    })
                }
                Err(_) => {
                    return Err(SessionError::Io {
                        stage: "TLS handshake",
                        detail: format!(
                            "TLS handshake with {}[{}]: timed out",
                            self.host, self.addr
                        ),
                    })
                }
            };
        Ok(Connection {
            stream: BufReader::with_capacity(8192, Stream::Tls(Box::new(tls))),
            host: self.host,
            addr: self.addr,
            source: self.source,
            local: self.local,
            caps: Capabilities::default(),
            tls: true,
            authenticated: false,
            transactions: 0,
            broken: false,
            last_used: Instant::now(),
            timeouts: self.timeouts,
        })
    }

    /// AUTH PLAIN with an initial response (RFC 4954, RFC 4616).
    pub async fn auth_plain(&mut self, user: &str, password: &str) -> Result<(), SessionError> {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        let reply = self
            .command(format!("AUTH PLAIN {token}\r\n"), "AUTH")
            .await?;
        if reply.is_positive() {
            self.authenticated = true;
            Ok(())
        } else {
            Err(SessionError::Reply {
                stage: "AUTH",
                reply,
            })
        }
    }

    /// RSET; used before reusing a pooled connection, which also proves it is still alive.
    pub async fn rset(&mut self) -> Result<(), SessionError> {
        let reply = self.command("RSET\r\n".to_string(), "RSET").await?;
        if reply.is_positive() {
            Ok(())
        } else {
            self.broken = true;
            Err(SessionError::Reply {
                stage: "RSET",
                reply,
            })
        }
    }

    /// QUIT, best effort.
    pub async fn quit(mut self) {
        if !self.broken {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                let _ = self.write(b"QUIT\r\n", "QUIT").await;
                let _ = self.read_reply("QUIT").await;
            })
            .await;
        }
        let _ =
            tokio::time::timeout(Duration::from_secs(1), self.stream.get_mut().shutdown()).await;
    }

    /// One mail transaction. `body` is the message as stored (CRLF lines); it is dot-stuffed here.
    /// I/O errors are returned as `Err`: nothing can be assumed about any recipient then.
    pub async fn transaction(
        &mut self,
        tx: &Transaction<'_>,
        body: &[u8],
    ) -> Result<TransactionResult, SessionError> {
        let mut mail = format!("MAIL FROM:<{}>", tx.sender);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={}", body.len()));
        }
        if tx.body_8bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if tx.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let rcpts: Vec<String> = tx
            .recipients
            .iter()
            .map(|r| format!("RCPT TO:<{r}>\r\n"))
            .collect();

        let mut rcpt_replies = Vec::with_capacity(rcpts.len());
        if self.caps.pipelining {
            // RFC 2920: MAIL and every RCPT in one write, then the replies in order.
            let mut batch = mail.into_bytes();
            for r in &rcpts {
                batch.extend_from_slice(r.as_bytes());
            }
            self.write(&batch, "MAIL FROM").await?;
            let mail_reply = self.read_reply("MAIL FROM").await?;
            // A server that answers 421 (to MAIL or to a RCPT) closes the connection without
            // answering the rest of the batch: its 421 stands for them, and is what the trace,
            // the DSN and the bounce classifier must see (a rate limit, say), not the close.
            let mut closing = (mail_reply.code == 421).then(|| mail_reply.clone());
            for _ in &rcpts {
                match self.read_reply("RCPT TO").await {
                    Ok(reply) => {
                        if reply.code == 421 && closing.is_none() {
                            closing = Some(reply.clone());
                        }
                        rcpt_replies.push(reply);
                    }
                    Err(_) if closing.is_some() => {
                        self.broken = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if let Some(last) = closing {
                while rcpt_replies.len() < rcpts.len() {
                    rcpt_replies.push(last.clone());
                }
                self.broken = true;
            }
            if !mail_reply.is_positive() {
                self.note_reply(&mail_reply);
                return Ok(TransactionResult::MailRefused(mail_reply));
            }
        } else {
            let mail_reply = self.command(mail, "MAIL FROM").await?;
            if !mail_reply.is_positive() {
                return Ok(TransactionResult::MailRefused(mail_reply));
            }
            for r in rcpts {
                let reply = self.command(r, "RCPT TO").await?;
                let closing = reply.code == 421;
                rcpt_replies.push(reply);
                if closing {
                    break;
                }
            }
            // After a 421 the server is gone: the rest are deferred like it.
            while rcpt_replies.len() < tx.recipients.len() {
                let last = rcpt_replies.last().cloned().expect("at least one reply");
                rcpt_replies.push(last);
            }
        }
        for r in &rcpt_replies {
            self.note_reply(r);
        }
        if self.broken || !rcpt_replies.iter().any(Reply::is_positive) {
            return Ok(TransactionResult::Completed {
                rcpt: rcpt_replies,
                data: None,
                finished: false,
            });
        }

        let reply = self.command("DATA\r\n".to_string(), "DATA").await?;
        if reply.code != 354 {
            return Ok(TransactionResult::Completed {
                rcpt: rcpt_replies,
                data: Some(reply),
                finished: false,
            });
        }
        let payload = dot_stuff(body);
        let data_timeout = self.timeouts.data;
        let final_reply = match tokio::time::timeout(data_timeout, async {
            self.write_raw(&payload).await?;
            self.read_line_reply().await
        })
        .await
        {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                self.broken = true;
                return Err(SessionError::Io {
                    stage: "end of data",
                    detail: format!("{} [{}]: {e}", self.host, self.addr),
                });
            }
            Err(_) => {
                self.broken = true;
                return Err(SessionError::Io {
                    stage: "end of data",
                    detail: format!("{} [{}]: timed out sending message", self.host, self.addr),
                });
            }
        };
        self.note_reply(&final_reply);
        self.transactions += 1;
        self.last_used = Instant::now();
        Ok(TransactionResult::Completed {
            rcpt: rcpt_replies,
            data: Some(final_reply),
            finished: true,
        })
    }

    fn note_reply(&mut self, reply: &Reply) {
        if reply.code == 421 {
            self.broken = true;
        }
    }

    async fn command(&mut self, line: String, stage: &'static str) -> Result<Reply, SessionError> {
        self.write(line.as_bytes(), stage).await?;
        let reply = self.read_reply(stage).await?;
        self.note_reply(&reply);
        Ok(reply)
    }

    async fn write(&mut self, bytes: &[u8], stage: &'static str) -> Result<(), SessionError> {
        match tokio::time::timeout(self.timeouts.command, self.write_raw(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.broken = true;
                Err(SessionError::Io {
                    stage,
                    detail: format!("{} [{}]: {e}", self.host, self.addr),
                })
            }
            Err(_) => {
                self.broken = true;
                Err(SessionError::Io {
                    stage,
                    detail: format!("{} [{}]: timed out writing", self.host, self.addr),
                })
            }
        }
    }

    async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await
    }

    async fn read_reply(&mut self, stage: &'static str) -> Result<Reply, SessionError> {
        match tokio::time::timeout(self.timeouts.command, self.read_line_reply()).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => {
                self.broken = true;
                Err(SessionError::Io {
                    stage,
                    detail: format!("{} [{}]: {e}", self.host, self.addr),
                })
            }
            Err(_) => {
                self.broken = true;
                Err(SessionError::Io {
                    stage,
                    detail: format!("{} [{}]: timed out waiting for reply", self.host, self.addr),
                })
            }
        }
    }

    async fn read_line_reply(&mut self) -> std::io::Result<Reply> {
        read_reply(&mut self.stream).await
    }
}

/// A socket bound to `source`, for a connection to `target`.
fn bound_socket(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    bind_address_no_port(&socket);
    socket.bind(SocketAddr::new(source, 0))?;
    Ok(socket)
}

/// A plain bind reserves an ephemeral port of the source address before the destination is
/// known, so all of a pool address's connections together could use each port only once; with
/// this option the port is picked at connect, per destination. Best effort: without it (kernels
/// before 4.2) connections still work, only fewer at once.
#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a descriptor owned by `socket`, and an int option value of the length given.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_socket: &TcpSocket) {}

/// The DATA payload: dot-stuffed (RFC 5321 4.5.2), bare LFs and bare CRs turned into CRLF
/// (nothing we send can end a lenient next hop's data early: SMTP smuggling), ending in
/// CRLF.CRLF.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 8);
    // Line by line (a line end is CRLF, a bare CR or a bare LF), copying whole lines: a 1 MB
    // message is a few thousand lines, not a million bytes to look at one by one.
    let mut rest = body;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            out.push(b'.');
        }
        match memchr::memchr2(b'\r', b'\n', rest) {
            Some(end) => {
                out.extend_from_slice(&rest[..end]);
                out.extend_from_slice(b"\r\n");
                let crlf = rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n');
                rest = &rest[end + if crlf { 2 } else { 1 }..];
            }
            None => {
                out.extend_from_slice(rest);
                out.extend_from_slice(b"\r\n");
                rest = &[];
            }
        }
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\nb"), b"a\r\nb\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\r.\rb\r"), b"a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(dot_stuff(b"a\n.\n"), b"a\r\n..\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b"\r\n.\r\n"), b"\r\n..\r\n.\r\n");
        assert_eq!(
            dot_stuff(b"a\r\r\n.\n\r."),
            b"a\r\n\r\n..\r\n\r\n..\r\n.\r\n"
        );
    }

    /// The rules of `dot_stuff` one byte at a time, as RFC 5321 4.5.2 states them.
    fn dot_stuff_bytewise(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at_line_start = true;
        let mut prev = 0u8;
        for (i, &b) in body.iter().enumerate() {
            if at_line_start && b == b'.' {
                out.push(b'.');
            }
            match b {
                b'\n' if prev != b'\r' => out.extend_from_slice(b"\r\n"),
                b'\r' if body.get(i + 1) != Some(&b'\n') => out.extend_from_slice(b"\r\n"),
                _ => out.push(b),
            }
            at_line_start = b == b'\n' || (b == b'\r' && body.get(i + 1) != Some(&b'\n'));
            prev = b;
        }
        if !body.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn dot_stuffing_matches_the_bytewise_rules() {
        for _ in 0..20_000 {
            let len = rand::random::<usize>() % 24;
            let body: Vec<u8> = (0..len)
                .map(|_| b".\r\nab"[rand::random::<usize>() % 5])
                .collect();
            assert_eq!(dot_stuff(&body), dot_stuff_bytewise(&body), "{body:?}");
        }
    }

    #[test]
    fn ehlo_capabilities() {
        let reply = Reply {
            code: 250,
            lines: vec![
                "mx.example".into(),
                "PIPELINING".into(),
                "SIZE 1000".into(),
                "8BITMIME".into(),
                "STARTTLS".into(),
                "AUTH LOGIN PLAIN".into(),
            ],
        };
        let caps = Capabilities::from_ehlo(&reply);
        assert!(caps.pipelining && caps.eight_bit_mime && caps.starttls && caps.auth_plain);
        assert!(!caps.smtputf8);
        assert_eq!(caps.size, Some(1000));
    }
}
