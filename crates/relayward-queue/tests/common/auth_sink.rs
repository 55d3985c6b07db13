//! A minimal submission-style server: STARTTLS, then AUTH PLAIN, then one or more transactions.
//! relayward-testkit's SmtpSink has no AUTH; this is the small piece the tenant-route test needs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, Clone, Default)]
pub struct AuthReceived {
    pub tls: bool,
    /// (authzid, user, password) from AUTH PLAIN.
    pub auth: Option<(String, String, String)>,
    pub mail_from: String,
    pub rcpts: Vec<String>,
    pub data: Vec<u8>,
}

pub struct AuthSink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<AuthReceived>>>,
    task: JoinHandle<()>,
}

impl Drop for AuthSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AuthSink {
    /// Listens on `addr`; requires STARTTLS before AUTH and AUTH (as `user`/`password`) before
    /// MAIL.
    pub async fn start(
        addr: SocketAddr,
        tls: Arc<rustls::ServerConfig>,
        user: &str,
        password: &str,
    ) -> AuthSink {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<Mutex<Vec<AuthReceived>>> = Arc::default();
        let log = received.clone();
        let creds = (user.to_string(), password.to_string());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = TlsAcceptor::from(tls.clone());
                let log = log.clone();
                let creds = creds.clone();
                tokio::spawn(async move {
                    let mut plain = BufReader::new(stream);
                    plain
                        .get_mut()
                        .write_all(b"220 auth.test ESMTP\r\n")
                        .await
                        .ok();
                    // Plaintext phase: EHLO then STARTTLS.
                    loop {
                        let mut line = String::new();
                        if plain.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let cmd = line.trim_end().to_ascii_uppercase();
                        let s = plain.get_mut();
                        if cmd.starts_with("EHLO") {
                            s.write_all(b"250-auth.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n")
                                .await
                                .ok();
                        } else if cmd == "STARTTLS" {
                            s.write_all(b"220 2.0.0 go ahead\r\n").await.ok();
                            break;
                        } else if cmd == "QUIT" {
                            s.write_all(b"221 bye\r\n").await.ok();
                            return;
                        } else {
                            s.write_all(b"530 5.7.0 Must issue a STARTTLS command first\r\n")
                                .await
                                .ok();
                        }
                    }
                    let Ok(tls) = acceptor.accept(plain.into_inner()).await else {
                        return;
                    };
                    session(BufReader::new(tls), log, creds).await;
                });
            }
        });
        AuthSink {
            addr,
            received,
            task,
        }
    }

    pub fn received(&self) -> Vec<AuthReceived> {
        self.received.lock().unwrap().clone()
    }
}

async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: BufReader<S>,
    log: Arc<Mutex<Vec<AuthReceived>>>,
    creds: (String, String),
) {
    let mut auth: Option<(String, String, String)> = None;
    let mut txn: Option<AuthReceived> = None;
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end().to_string();
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-auth.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 AUTH PLAIN".into()
        } else if upper.starts_with("AUTH PLAIN ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(line[11..].trim())
                .unwrap_or_default();
            let parts: Vec<String> = decoded
                .split(|&b| b == 0)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            if parts.len() == 3 && parts[1] == creds.0 && parts[2] == creds.1 {
                auth = Some((parts[0].clone(), parts[1].clone(), parts[2].clone()));
                "235 2.7.0 Authentication successful".into()
            } else {
                "535 5.7.8 Authentication credentials invalid".into()
            }
        } else if upper.starts_with("MAIL FROM:") {
            if auth.is_none() {
                "530 5.7.57 Client was not authenticated".into()
            } else {
                let from = line[10..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .trim_matches(|c| c == '<' || c == '>')
                    .to_string();
                txn = Some(AuthReceived {
                    tls: true,
                    auth: auth.clone(),
                    mail_from: from,
                    ..Default::default()
                });
                "250 2.1.0 Ok".into()
            }
        } else if upper.starts_with("RCPT TO:") {
            match txn.as_mut() {
                Some(t) => {
                    t.rcpts.push(
                        line[8..]
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .trim_matches(|c| c == '<' || c == '>')
                            .to_string(),
                    );
                    "250 2.1.5 Ok".into()
                }
                None => "503 5.5.1 MAIL first".into(),
            }
        } else if upper == "DATA" {
            if txn.is_none() {
                "503 5.5.1 MAIL first".into()
            } else {
                conn.get_mut().write_all(b"354 go ahead\r\n").await.ok();
                conn.get_mut().flush().await.ok();
                let mut data = Vec::new();
                loop {
                    let mut l = Vec::new();
                    if conn.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    if l.starts_with(b"..") {
                        l.remove(0);
                    }
                    data.extend_from_slice(&l);
                }
                let mut t = txn.take().unwrap();
                t.data = data;
                log.lock().unwrap().push(t);
                "250 2.0.0 Ok: queued".into()
            }
        } else if upper == "RSET" {
            txn = None;
            "250 2.0.0 Ok".into()
        } else if upper == "QUIT" {
            conn.get_mut().write_all(b"221 2.0.0 bye\r\n").await.ok();
            conn.get_mut().flush().await.ok();
            return;
        } else {
            "502 5.5.2 not implemented".into()
        };
        let s = conn.get_mut();
        if s.write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
        s.flush().await.ok();
    }
}
