//! A deliberately dumb SMTP client: it sends exactly what the test says, so tests can also send
//! what a well-behaved client never would.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::ClientConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::io::BoxedIo;

/// SMTP client over TCP (optionally TLS). Connecting does not read the greeting: call
/// [`read_reply`](Self::read_reply) first.
pub struct SmtpClient {
    io: BufReader<BoxedIo>,
    local: SocketAddr,
    peer: SocketAddr,
    tls_peer_certs: Option<Vec<CertificateDer<'static>>>,
}

impl SmtpClient {
    pub async fn connect(server: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(server).await?;
        Self::from_tcp(stream)
    }

    /// Connects from `local_ip` (any port), e.g. `127.0.0.5` to look like a given tenant host.
    pub async fn connect_from(local_ip: IpAddr, server: SocketAddr) -> io::Result<Self> {
        let socket = match local_ip {
            IpAddr::V4(_) => TcpSocket::new_v4()?,
            IpAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.bind(SocketAddr::new(local_ip, 0))?;
        let stream = socket.connect(server).await?;
        Self::from_tcp(stream)
    }

    /// Connects with implicit TLS (submissions, port 465 style).
    pub async fn connect_tls(
        server: SocketAddr,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> io::Result<Self> {
        let mut client = Self::connect(server).await?;
        client.upgrade(config, server_name).await?;
        Ok(client)
    }

    fn from_tcp(stream: TcpStream) -> io::Result<Self> {
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let peer = stream.peer_addr()?;
        Ok(Self {
            io: BufReader::new(Box::new(stream)),
            local,
            peer,
            tls_peer_certs: None,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    pub fn is_tls(&self) -> bool {
        self.tls_peer_certs.is_some()
    }

    /// The server's certificate chain once TLS is up (empty if it sent none).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.tls_peer_certs.as_deref()
    }

    /// Sends `line` followed by CRLF.
    pub async fn send_line(&mut self, line: &str) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.send_raw(&bytes).await
    }

    /// Sends bytes exactly as given.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        let w = self.io.get_mut();
        w.write_all(bytes).await?;
        w.flush().await
    }

    /// Reads one (possibly multiline) reply: its code and all its lines joined by `\n`,
    /// codes included (`"250-mx.test\n250 PIPELINING"`). EOF gives `UnexpectedEof`.
    pub async fn read_reply(&mut self) -> io::Result<(u16, String)> {
        let mut lines = Vec::new();
        loop {
            let mut raw = Vec::new();
            if self.io.read_until(b'\n', &mut raw).await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed; partial reply {lines:?}"),
                ));
            }
            let line = String::from_utf8_lossy(&raw)
                .trim_end_matches(['\r', '\n'])
                .to_owned();
            let code = line
                .get(..3)
                .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|c| c.parse::<u16>().ok())
                .ok_or_else(|| bad_reply(&line))?;
            let last = match line.as_bytes().get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                Some(_) => return Err(bad_reply(&line)),
            };
            lines.push(line);
            if last {
                return Ok((code, lines.join("\n")));
            }
        }
    }

    /// Sends `line` and reads the reply.
    pub async fn cmd(&mut self, line: &str) -> io::Result<(u16, String)> {
        self.send_line(line).await?;
        self.read_reply().await
    }

    pub async fn ehlo(&mut self, name: &str) -> io::Result<(u16, String)> {
        self.cmd(&format!("EHLO {name}")).await
    }

    /// Sends STARTTLS, expects 220, then handshakes. EHLO again afterwards.
    pub async fn starttls(
        &mut self,
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> io::Result<()> {
        let (code, text) = self.cmd("STARTTLS").await?;
        if code != 220 {
            return Err(io::Error::other(format!("STARTTLS refused: {text}")));
        }
        if !self.io.buffer().is_empty() {
            // Plaintext that arrived after the 220 would be treated as if it came over TLS.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "server sent data after 220 to STARTTLS",
            ));
        }
        self.upgrade(config, server_name).await
    }

    async fn upgrade(&mut self, config: Arc<ClientConfig>, server_name: &str) -> io::Result<()> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let plain = std::mem::replace(&mut self.io, BufReader::new(Box::new(tokio::io::empty())));
        let tls = TlsConnector::from(config)
            .connect(name, plain.into_inner())
            .await?;
        self.tls_peer_certs = Some(
            tls.get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
                .unwrap_or_default(),
        );
        self.io = BufReader::new(Box::new(tls));
        Ok(())
    }

    /// Runs one transaction on a session that has already done EHLO: MAIL FROM:<from>, RCPT TO
    /// for each of `rcpts`, DATA, then `data` dot-stuffed with bare LFs turned into CRLF.
    ///
    /// Returns the first failing reply (MAIL refused, every RCPT refused, DATA refused) or the
    /// reply to the end of data. Refused recipients among accepted ones are skipped.
    pub async fn send_message(
        &mut self,
        from: &str,
        rcpts: &[&str],
        data: &[u8],
    ) -> io::Result<(u16, String)> {
        let reply = self.cmd(&format!("MAIL FROM:<{from}>")).await?;
        if reply.0 / 100 != 2 {
            return Ok(reply);
        }
        let mut last_refusal = None;
        let mut accepted = 0;
        for rcpt in rcpts {
            let reply = self.cmd(&format!("RCPT TO:<{rcpt}>")).await?;
            if reply.0 / 100 == 2 {
                accepted += 1;
            } else {
                last_refusal = Some(reply);
            }
        }
        if accepted == 0 {
            self.cmd("RSET").await?;
            return Ok(
                last_refusal.unwrap_or_else(|| (554, "554 5.5.1 no recipients given".to_owned()))
            );
        }
        let reply = self.cmd("DATA").await?;
        if reply.0 != 354 {
            return Ok(reply);
        }
        self.send_raw(&dot_stuff(data)).await?;
        self.read_reply().await
    }

    /// Sends QUIT and reads the reply.
    pub async fn quit(mut self) -> io::Result<(u16, String)> {
        self.cmd("QUIT").await
    }
}

fn bad_reply(line: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed SMTP reply line {line:?}"),
    )
}

/// CRLF line endings, leading dots doubled, terminated by `.CRLF`.
fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 8);
    let mut at_line_start = true;
    let mut prev = 0u8;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        at_line_start = b == b'\n';
        prev = b;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::dot_stuff;

    #[test]
    fn stuffs_dots_and_normalises_line_ends() {
        assert_eq!(dot_stuff(b"a\n.b\r\n..c"), b"a\r\n..b\r\n...c\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
        assert_eq!(dot_stuff(b".\r\n"), b"..\r\n.\r\n");
    }
}
