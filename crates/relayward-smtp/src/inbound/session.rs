//! The session loop: buffered command reading, reply batching (PIPELINING), timeouts and
//! dispatch to the phase handlers.

use std::time::Duration;

use relayward_core::{reply, Reply};
use smtp_proto::Request;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Exit, State};
use crate::listener::shutdown_requested;

/// Enough for many pipelined commands or a large slice of message data per read.
/// Read buffer while waiting for commands: an idle session should cost little (10,000 of them
/// are held open by busy relays), and command lines are short.
const READ_BUF: usize = 2 * 1024;
/// Read buffer while receiving message data, where fewer, larger reads pay off.
const DATA_READ_BUF: usize = 16 * 1024;
/// RFC 5321 section 4.5.3.1.4, CRLF included.
pub(crate) const MAX_COMMAND_LINE: usize = 512;
/// MAIL and RCPT may carry extension parameters (RFC 5321 section 4.5.3.1.4 allows more).
pub(crate) const MAX_PARAM_LINE: usize = 2048;
/// Writing our replies to a client that does not read: give up after this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a read is waiting for (which timeout applies).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Next command or AUTH continuation: command timeout, shutdown ends the wait.
    Command,
    /// Message data: data-block timeout, shutdown does not interrupt.
    Data,
}

pub(crate) enum LineRead {
    /// The line, CRLF (or LF) included, is in `Session::line`.
    Line,
    /// Longer than allowed: consumed up to its LF and dropped.
    TooLong,
    /// Connection gone (or timed out, after the 421).
    Closed,
}

/// The socket-independent leftovers carried across a STARTTLS upgrade.
pub(crate) struct Buffers {
    rbuf: Vec<u8>,
    line: Vec<u8>,
}

pub(crate) struct Session<S> {
    pub(crate) io: S,
    pub(crate) rbuf: Vec<u8>,
    pub(crate) rpos: usize,
    pub(crate) rend: usize,
    pub(crate) line: Vec<u8>,
    pub(crate) st: State,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(crate) fn new(io: S, st: State) -> Self {
        Session {
            io,
            rbuf: vec![0; READ_BUF],
            rpos: 0,
            rend: 0,
            line: Vec::with_capacity(256),
            st,
        }
    }

    /// Split for the TLS upgrade. Anything the client pipelined after STARTTLS is dropped here
    /// (RFC 3207 section 4.2: plaintext must not leak into the TLS session).
    pub(crate) fn into_parts(self) -> (S, State, Buffers) {
        (
            self.io,
            self.st,
            Buffers {
                rbuf: self.rbuf,
                line: self.line,
            },
        )
    }

    pub(crate) fn from_parts(io: S, st: State, bufs: Buffers) -> Self {
        Session {
            io,
            rbuf: bufs.rbuf,
            rpos: 0,
            rend: 0,
            line: bufs.line,
            st,
        }
    }

    pub(crate) async fn flush(&mut self) -> Result<(), ()> {
        if self.st.wbuf.is_empty() {
            return Ok(());
        }
        let io = &mut self.io;
        let wbuf = &self.st.wbuf;
        let r = tokio::time::timeout(WRITE_TIMEOUT, async {
            io.write_all(wbuf).await?;
            io.flush().await
        })
        .await;
        self.st.wbuf.clear();
        self.st.unanswered = 0;
        match r {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// Send what is pending and close our side (TLS close_notify included).
    pub(crate) async fn close(&mut self) {
        if self.flush().await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), self.io.shutdown()).await;
        }
    }

    /// Read more input. Pending replies go out first: we are about to wait for the client,
    /// which may be waiting for them.
    pub(crate) async fn fill(&mut self, wait: Wait) -> Result<(), ()> {
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
            if wait == Wait::Command && self.rbuf.len() > READ_BUF {
                self.rbuf.truncate(READ_BUF);
                self.rbuf.shrink_to_fit();
            }
        }
        if wait == Wait::Data && self.rbuf.len() < DATA_READ_BUF {
            self.rbuf.resize(DATA_READ_BUF, 0);
        }
        if self.rend == self.rbuf.len() && self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.rpos = 0;
        }
        if self.rend == self.rbuf.len() && self.rbuf.len() < DATA_READ_BUF {
            // A partial line (e.g. MAIL with long parameters) fills the small buffer.
            let grown = (self.rbuf.len() * 2).min(DATA_READ_BUF);
            self.rbuf.resize(grown, 0);
        }
        self.flush().await?;

        enum Got {
            Read(std::io::Result<usize>),
            TimedOut,
            Shutdown,
        }
        let timeouts = &self.st.server.config.timeouts;
        let limit = match wait {
            Wait::Command => timeouts.command,
            Wait::Data => timeouts.data_block,
        };
        let read = tokio::time::timeout(limit, self.io.read(&mut self.rbuf[self.rend..]));
        let got = if wait == Wait::Command {
            tokio::select! {
                r = read => r.map_or(Got::TimedOut, Got::Read),
                _ = shutdown_requested(&mut self.st.shutdown) => Got::Shutdown,
            }
        } else {
            read.await.map_or(Got::TimedOut, Got::Read)
        };
        match got {
            Got::Read(Ok(0)) | Got::Read(Err(_)) => Err(()),
            Got::Read(Ok(n)) => {
                self.rend += n;
                Ok(())
            }
            Got::TimedOut => {
                self.st.reply(&reply::TIMEOUT);
                let _ = self.flush().await;
                Err(())
            }
            Got::Shutdown => {
                self.st.write_reply(&reply::SHUTTING_DOWN);
                let _ = self.flush().await;
                Err(())
            }
        }
    }

    /// Next line into `self.line`, at most `max` octets with its line end.
    pub(crate) async fn read_line(&mut self, max: usize, wait: Wait) -> LineRead {
        let mut discarding = false;
        loop {
            let avail = &self.rbuf[self.rpos..self.rend];
            if let Some(i) = memchr::memchr(b'\n', avail) {
                let start = self.rpos;
                self.rpos += i + 1;
                if discarding || i + 1 > max {
                    return LineRead::TooLong;
                }
                self.line.clear();
                self.line.extend_from_slice(&self.rbuf[start..self.rpos]);
                return LineRead::Line;
            }
            if avail.len() > max {
                discarding = true;
                self.rpos = self.rend;
            }
            if self.fill(wait).await.is_err() {
                return LineRead::Closed;
            }
        }
    }

    pub(crate) async fn run(&mut self) -> Exit {
        loop {
            match self.read_line(MAX_PARAM_LINE, Wait::Command).await {
                LineRead::Closed => return Exit::Close,
                LineRead::TooLong => self.st.reply(&reply::LINE_TOO_LONG),
                LineRead::Line => {
                    let line = std::mem::take(&mut self.line);
                    // RCPTs of one transaction count once: a pipelined group of many
                    // recipients is what PIPELINING is for (RFC 2920), a flood of other
                    // commands is not.
                    let counts = !(is_rcpt(&line)
                        && self.st.tx.as_ref().is_some_and(|t| t.rcpt_attempts > 0));
                    if counts {
                        if self.st.unanswered >= self.st.server.config.max_pipelined {
                            self.st.reply(&reply::TOO_MANY_PIPELINED);
                            return Exit::Close;
                        }
                        self.st.unanswered += 1;
                    }
                    let exit = self.command(&line).await;
                    self.line = line;
                    if let Some(exit) = exit {
                        return exit;
                    }
                }
            }
            if self.st.errors >= self.st.server.config.max_errors {
                self.st.reply(&reply::TOO_MANY_ERRORS);
                return Exit::Close;
            }
        }
    }

    async fn command(&mut self, line: &[u8]) -> Option<Exit> {
        if line.len() > MAX_COMMAND_LINE && !is_mail_or_rcpt(line) {
            self.st.reply(&reply::LINE_TOO_LONG);
            return None;
        }
        let st = &mut self.st;
        if has_control_bytes(line) {
            st.refuse(
                &reply::CONTROL_BYTES,
                None,
                None,
                Some("reason=control_bytes_in_command".into()),
            );
            return None;
        }
        match Request::parse(&mut line.iter()) {
            Ok(Request::Ehlo { host }) => st.ehlo(&host, true),
            Ok(Request::Helo { host }) => st.ehlo(&host, false),
            Ok(Request::Mail { from }) => st.mail(line, from),
            Ok(Request::Rcpt { to }) => st.rcpt(line, to),
            // Boxed, as AUTH below: the session future is as large as its largest state,
            // and idle sessions (10,000 on a busy relay) need not carry room for these.
            Ok(Request::Data) => return Box::pin(self.data()).await,
            Ok(Request::Rset) => {
                st.tx = None;
                st.reply(&reply::RESET_OK);
            }
            Ok(Request::Noop { .. }) => st.reply(&reply::NOOP_OK),
            Ok(Request::Quit) => {
                st.reply(&reply::BYE);
                return Some(Exit::Close);
            }
            Ok(Request::Vrfy { .. }) => st.reply(&reply::VRFY_CANNOT),
            Ok(Request::Help { .. }) => st.reply(&reply::HELP),
            Ok(Request::StartTls) => {
                if st.starttls() {
                    if self.flush().await.is_err() {
                        return Some(Exit::Close);
                    }
                    return Some(Exit::StartTls);
                }
            }
            Ok(Request::Auth {
                mechanism,
                initial_response,
            }) => return Box::pin(self.auth(mechanism, initial_response)).await,
            Ok(Request::Lhlo { .. }) => st.reply(&reply::SYNTAX_ERROR),
            Ok(
                Request::Expn { .. }
                | Request::Etrn { .. }
                | Request::Atrn { .. }
                | Request::Burl { .. }
                | Request::Bdat { .. },
            ) => st.reply(&reply::NOT_IMPLEMENTED),
            Err(e) => st.reply(&parse_error_reply(&e)),
        }
        None
    }
}

/// NUL, other C0 controls (TAB aside), bare CR and DEL have no place in a command line
/// (RFC 5321 section 4.1.2): refusing them keeps them out of our logs, traces and headers.
fn has_control_bytes(line: &[u8]) -> bool {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

fn is_rcpt(line: &[u8]) -> bool {
    line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"RCPT ")
}

fn is_mail_or_rcpt(line: &[u8]) -> bool {
    line.len() >= 5
        && (line[..5].eq_ignore_ascii_case(b"MAIL ") || line[..5].eq_ignore_ascii_case(b"RCPT "))
}

fn parse_error_reply(e: &smtp_proto::Error) -> Reply {
    use smtp_proto::Error;
    match e {
        Error::UnknownCommand => reply::SYNTAX_ERROR,
        Error::InvalidSenderAddress => reply::BAD_SENDER_SYNTAX,
        Error::InvalidRecipientAddress => reply::BAD_RECIPIENT_SYNTAX,
        Error::SyntaxError { syntax } if syntax.starts_with("MAIL") => reply::BAD_SENDER_SYNTAX,
        Error::SyntaxError { syntax } if syntax.starts_with("RCPT") => reply::BAD_RECIPIENT_SYNTAX,
        Error::SyntaxError { .. } | Error::InvalidParameter { .. } => reply::BAD_ARGUMENTS,
        Error::UnsupportedParameter { .. } => reply::PARAM_NOT_RECOGNIZED,
        _ => reply::SYNTAX_ERROR,
    }
}

/// The text of an AUTH initial response or continuation line.
pub(crate) fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
