//! DATA: message reception (dot-unstuffing, line ends, limits), our Received header, header
//! checks (loop detection, From domain, Message-ID) and the hand-off to the spool.

use std::fmt::Write as _;
use std::io::Write;
use std::net::IpAddr;

use mail_parser::{HeaderName, MessageParser};
use relayward_core::{reply, Address, Reply, TraceEvent, TraceKind};
use tokio::io::{AsyncRead, AsyncWrite};

use super::session::{Session, Wait};
use super::{sender_text, Decision, Exit};
use crate::{BareLineEnds, IncomingMessage};

/// RFC 5321 section 4.5.3.1.6: 1000 octets with the CRLF.
const MAX_TEXT_LINE: usize = 998;
/// First allocation for a message without a SIZE hint.
const INITIAL_CAPACITY: usize = 64 * 1024;

/// Parses only what DATA needs; every other header is skipped (but still counted by name).
pub(crate) fn header_parser() -> MessageParser {
    MessageParser::new()
        .header_address(HeaderName::From)
        .header_id(HeaderName::MessageId)
        .default_header_ignore()
}

pub(super) struct Received {
    /// A text line was over 1000 octets.
    pub(super) too_long: bool,
    /// The message was over `max_message_size`.
    pub(super) too_big: bool,
    /// Bare CRs and LFs seen (each now a CRLF line end in the data).
    pub(super) bare_line_ends: usize,
}

/// What the header block says.
pub(super) struct HeaderFacts {
    pub(super) received: usize,
    pub(super) from_domain: Option<String>,
    pub(super) message_id: Option<String>,
}

/// What every received message is checked for before any policy, on every listener: text line
/// length, size, and a mail loop (too many Received headers). The refusal and its trace detail,
/// or the header facts.
pub(super) fn content_checks(
    parser: &MessageParser,
    received: &Received,
    message: &[u8],
    max_received_headers: usize,
    bare_line_ends: BareLineEnds,
) -> Result<HeaderFacts, (Reply, String)> {
    if received.too_long {
        return Err((reply::TEXT_LINE_TOO_LONG, "DATA".into()));
    }
    if received.too_big {
        return Err((reply::MESSAGE_TOO_BIG, "DATA".into()));
    }
    if received.bare_line_ends > 0 && bare_line_ends == BareLineEnds::Reject {
        let detail = format!("bare_line_ends={} policy=reject", received.bare_line_ends);
        return Err((reply::BARE_LINE_END, detail));
    }
    let facts = header_facts(parser, message);
    if facts.received > max_received_headers {
        let detail = format!("{} Received headers", facts.received);
        return Err((reply::LOOP_DETECTED, detail));
    }
    Ok(facts)
}

pub(super) fn header_facts(parser: &MessageParser, message: &[u8]) -> HeaderFacts {
    // Only the header block: the parser need not walk a large body.
    let end = if message.starts_with(b"\r\n") {
        0
    } else {
        memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 4)
    };
    let mut facts = HeaderFacts {
        received: 0,
        from_domain: None,
        message_id: None,
    };
    if end == 0 {
        return facts;
    }
    let Some(parsed) = parser.parse_headers(&message[..end]) else {
        return facts;
    };
    facts.received = parsed
        .headers()
        .iter()
        .filter(|h| h.name == HeaderName::Received)
        .count();
    facts.from_domain = parsed
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .and_then(|a| a.rsplit_once('@'))
        .map(|(_, d)| d.trim_end_matches('.').to_lowercase());
    facts.message_id = parsed.message_id().map(str::to_string);
    facts
}

/// `Received:` per RFC 5321 section 4.4, with-protocol per RFC 3848.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_received(
    out: &mut Vec<u8>,
    helo: &str,
    ip: IpAddr,
    tls_info: Option<&str>,
    hostname: &str,
    node: Option<&str>,
    protocol: &str,
    queue_id: &str,
    single_rcpt: Option<&Address>,
    date: &str,
) {
    let _ = match ip {
        IpAddr::V4(v4) => write!(out, "Received: from {helo} ([{v4}])"),
        IpAddr::V6(v6) => write!(out, "Received: from {helo} ([IPv6:{v6}])"),
    };
    if let Some(tls) = tls_info {
        let _ = write!(out, "\r\n\t(using {tls})");
    }
    let by = relayward_core::received::ByClause {
        hostname,
        protocol,
        queue_id,
        node,
    };
    let _ = write!(out, "\r\n\t{by}");
    let _ = match single_rcpt {
        Some(r) => write!(out, "\r\n\tfor <{r}>; {date}\r\n"),
        None => write!(out, ";\r\n\t{date}\r\n"),
    };
}

/// Append one content line (its line end stripped) with a CRLF. A bare CR inside becomes a
/// line end too: RFC 5321 section 2.3.8 allows CR only before LF, and leaving it would let a
/// client smuggle an end-of-data to a lenient server downstream. Returns the bare CRs seen.
fn push_line(data: &mut Vec<u8>, mut content: &[u8]) -> usize {
    let mut bare = 0;
    while let Some(i) = memchr::memchr(b'\r', content) {
        data.extend_from_slice(&content[..i]);
        data.extend_from_slice(b"\r\n");
        content = &content[i + 1..];
        bare += 1;
    }
    data.extend_from_slice(content);
    data.extend_from_slice(b"\r\n");
    bare
}

/// One line of message data as the DATA reader sees it.
#[derive(Debug, PartialEq, Eq)]
enum DataLine<'a> {
    /// The end of the data: "." CRLF right after a CRLF (RFC 5321 sections 2.3.8, 4.1.1.4).
    End,
    /// Content, line end stripped, dot-unstuffed; `bare` counts its bare CR and LF.
    Content { text: &'a [u8], bare: usize },
}

/// Classify one line, `line` ending with its LF; `after_crlf` says whether the line before it
/// (or the DATA command) ended with CRLF. A "." line that follows a bare LF or CR is a look-alike
/// of the end of data (the SMTP smuggling attack): content, never the end, and so never the
/// place where a pipelined command could start a second transaction.
fn classify_line(line: &[u8], after_crlf: bool) -> DataLine<'_> {
    if line == b".\r\n" && after_crlf {
        return DataLine::End;
    }
    let (content, mut bare) = match line.strip_suffix(b"\r\n") {
        Some(c) => (c, 0),
        None => (&line[..line.len() - 1], 1),
    };
    // A look-alike "." line stays visible as "." (dot-stuffed again on the way out).
    let text = if content == b"." {
        content
    } else {
        content.strip_prefix(b".").unwrap_or(content)
    };
    bare += memchr::memchr_iter(b'\r', text).count();
    DataLine::Content { text, bare }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// Answers 354 and reads the message after what `data` holds (the trace header the relay
    /// prepends). `Err`: the connection is gone.
    pub(super) async fn start_and_receive_data(
        &mut self,
        data: &mut Vec<u8>,
        limit: u64,
    ) -> Result<Received, ()> {
        self.st.write_reply(&reply::START_DATA);
        if self.flush().await.is_err() {
            return Err(());
        }
        self.receive_data(data, limit).await
    }

    /// Read message data up to the end of data ("." CRLF after CRLF) into `data`. `Err` means
    /// the connection is gone (a timeout has been answered already).
    pub(super) async fn receive_data(
        &mut self,
        data: &mut Vec<u8>,
        limit: u64,
    ) -> Result<Received, ()> {
        let start = data.len();
        let mut r = Received {
            too_long: false,
            too_big: false,
            bare_line_ends: 0,
        };
        // Inside a line already known to be too long, whose end we have not seen yet.
        let mut skipping = false;
        // The DATA command line ended with CRLF or LF; either way the data starts a line.
        let mut after_crlf = true;
        loop {
            let avail = &self.rbuf[self.rpos..self.rend];
            let Some(i) = memchr::memchr(b'\n', avail) else {
                if avail.len() > MAX_TEXT_LINE + 2 {
                    r.too_long = true;
                    skipping = true;
                    self.rpos = self.rend;
                }
                self.fill(Wait::Data).await?;
                continue;
            };
            let line = &avail[..=i];
            self.rpos += i + 1;
            let ends_crlf = line.ends_with(b"\r\n");
            if skipping {
                skipping = false;
                after_crlf = ends_crlf;
                continue;
            }
            let (text, bare) = match classify_line(line, after_crlf) {
                DataLine::End => return Ok(r),
                DataLine::Content { text, bare } => (text, bare),
            };
            after_crlf = ends_crlf;
            r.bare_line_ends += bare;
            if text.len() > MAX_TEXT_LINE {
                r.too_long = true;
            }
            if r.too_long || r.too_big {
                continue;
            }
            push_line(data, text);
            if (data.len() - start) as u64 > limit {
                r.too_big = true;
                data.truncate(start);
                data.shrink_to(start);
            }
        }
    }

    pub(crate) async fn data(&mut self) -> Option<Exit> {
        let st = &mut self.st;
        let Some(tx) = st.tx.as_ref() else {
            st.reply(&reply::BAD_SEQUENCE_MAIL_FIRST);
            return None;
        };
        if tx.recipients.is_empty() {
            // RFC 2920 section 3.1: never 354 when every RCPT of a pipelined group failed.
            let r = if tx.rcpt_attempts > 0 {
                reply::NO_VALID_RECIPIENTS
            } else {
                reply::BAD_SEQUENCE_RCPT_FIRST
            };
            st.reply(&r);
            return None;
        }
        if matches!(tx.decision, Decision::SrsReturn) {
            return self.srs_data().await;
        }
        let Decision::Accepted { attributed, class } = tx.decision.clone() else {
            // Recipients are only added once the transaction is attributed.
            st.reply(&reply::RELAY_DENIED);
            return None;
        };

        let server = st.server.clone();
        let config = &server.config;
        let queue_id = server.sink.new_queue_id();
        let received_at = relayward_core::now();
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        let protocol = match (st.esmtp, st.facts.tls, st.auth_user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        };
        let capacity = match tx.size_hint {
            0 => INITIAL_CAPACITY,
            n => n.min(config.max_message_size) as usize + 1024,
        };
        let mut data = Vec::with_capacity(capacity);
        write_received(
            &mut data,
            st.helo.as_deref().unwrap_or("unknown"),
            st.ip,
            st.tls_info.as_deref(),
            &config.hostname,
            config.node_name.as_deref(),
            protocol,
            &queue_id,
            match tx.recipients.as_slice() {
                [only] => Some(&only.address),
                _ => None,
            },
            &date,
        );
        let header_len = data.len();
        let received = match self
            .start_and_receive_data(&mut data, config.max_message_size)
            .await
        {
            Ok(r) => r,
            Err(()) => return Some(Exit::Close),
        };

        // Whatever happens next, the transaction is over (RFC 5321 section 4.1.1.4).
        let st = &mut self.st;
        let mut tx = st.tx.take()?;
        let sender = sender_text(tx.sender.as_ref());
        let refuse = |st: &mut super::State, r: &Reply, detail: &str| {
            // The transaction is gone from the state: put its tenant on the event ourselves.
            let mut ev = TraceEvent::new(TraceKind::Refused);
            ev.client_ip = Some(st.ip_text.clone());
            ev.reply = Some(r.to_string());
            ev.sender = Some(sender.clone());
            ev.tenant_id = Some(attributed.tenant_id);
            ev.connector_id = Some(attributed.connector_id);
            ev.sender_class = Some(class);
            ev.queue_id = Some(queue_id.clone());
            ev.detail = Some(detail.to_string());
            st.server.events.trace(ev);
            st.write_reply(r);
            if r.code >= 500 {
                st.errors += 1;
            }
        };
        let facts = match content_checks(
            &server.header_parser,
            &received,
            &data[header_len..],
            config.max_received_headers,
            config.bare_line_ends,
        ) {
            Ok(facts) => facts,
            Err((r, detail)) => {
                refuse(st, &r, &detail);
                return None;
            }
        };
        let dir = server.directory.current();
        let checked = relayward_policy::check_header_from(
            &dir,
            &attributed,
            class,
            facts.from_domain.as_deref(),
        );
        drop(dir);
        let mismatch = match checked {
            Ok(m) => m,
            Err(refusal) => {
                let mut detail = String::new();
                let dir = server.directory.current();
                let _ = write!(
                    detail,
                    "DATA {} header_from={}",
                    relayward_policy::explain(&dir, &st.facts, &refusal),
                    facts.from_domain.as_deref().unwrap_or("none")
                );
                drop(dir);
                tracing::info!(reply = %refusal.reply, sender = %sender, %detail, "refused");
                refuse(st, &refusal.reply, &detail);
                return None;
            }
        };

        let recipients: Vec<String> = tx
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        let size = data.len() - header_len;
        let msg = IncomingMessage {
            queue_id: queue_id.clone(),
            received_at: received_at.0,
            tenant_id: attributed.tenant_id,
            connector_id: attributed.connector_id,
            method: attributed.method,
            client_ip: st.ip,
            helo: st.helo.clone().unwrap_or_default(),
            auth_user: st.auth_user.clone(),
            tls: st.facts.tls,
            sender: tx.sender.take(),
            sender_class: class,
            header_from_mismatch: mismatch,
            header_from_domain: facts.from_domain.clone(),
            message_id: facts.message_id.clone(),
            body_8bit: tx.body_8bit,
            smtputf8: tx.smtputf8,
            dsn_ret: tx.dsn_ret.take(),
            dsn_envid: tx.dsn_envid.take(),
            recipients: std::mem::take(&mut tx.recipients),
            data,
        };
        let enqueued =
            tokio::time::timeout(config.timeouts.data_termination, server.sink.enqueue(msg)).await;
        let st = &mut self.st;
        match enqueued {
            Ok(Ok(())) => {
                let ok = reply::queued(&queue_id);
                st.write_reply(&ok);
                metrics::counter!(
                    "relayward_smtp_messages_accepted_total",
                    "sender_class" => class.as_str(),
                    "method" => attributed.method.as_str()
                )
                .increment(1);
                metrics::counter!("relayward_smtp_accepted_bytes_total").increment(size as u64);
                metrics::counter!("relayward_smtp_accepted_recipients_total")
                    .increment(recipients.len() as u64);
                let ok = ok.to_string();
                let mut detail = format!(
                    "method={} size={} header_from_mismatch={}",
                    attributed.method.as_str(),
                    size,
                    mismatch
                );
                if received.bare_line_ends > 0 {
                    let _ = write!(detail, " bare_line_ends={}", received.bare_line_ends);
                }
                for rcpt in recipients {
                    let mut ev = TraceEvent::new(TraceKind::Received);
                    ev.queue_id = Some(queue_id.clone());
                    ev.message_id = facts.message_id.clone();
                    ev.tenant_id = Some(attributed.tenant_id);
                    ev.connector_id = Some(attributed.connector_id);
                    ev.client_ip = Some(st.ip_text.clone());
                    ev.sender = Some(sender.clone());
                    ev.recipient = Some(rcpt);
                    ev.sender_class = Some(class);
                    ev.reply = Some(ok.clone());
                    ev.detail = Some(detail.clone());
                    server.events.trace(ev);
                }
                server.events.connector_used(attributed.connector_id);
            }
            Ok(Err(e)) => {
                let detail = match &e {
                    crate::EnqueueError::StorageFull(_) => {
                        "reason=storage_full enqueue failed".to_string()
                    }
                    crate::EnqueueError::Unavailable(_) => {
                        "reason=spool_unavailable enqueue failed".to_string()
                    }
                    crate::EnqueueError::Refused { detail, .. } => {
                        format!("reason=content_scan {detail}")
                    }
                };
                if matches!(e, crate::EnqueueError::Refused { .. }) {
                    tracing::info!(queue_id = %queue_id, %detail, "refused by the content scan");
                } else {
                    tracing::warn!(queue_id = %queue_id, error = %e, "enqueue failed");
                }
                refuse(st, &e.reply(), &detail);
            }
            Err(_) => {
                tracing::warn!(queue_id = %queue_id, "enqueue timed out");
                refuse(st, &reply::LOCAL_PROBLEM, "enqueue timed out");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_cr_becomes_line_end() {
        let mut v = Vec::new();
        assert_eq!(push_line(&mut v, b"a\r.\rb"), 2);
        assert_eq!(v, b"a\r\n.\r\nb\r\n");
    }

    #[test]
    fn only_crlf_dot_crlf_after_crlf_ends_data() {
        assert_eq!(classify_line(b".\r\n", true), DataLine::End);
        // After a bare LF (the previous line ended "\n"), "." CRLF is a look-alike.
        assert_eq!(
            classify_line(b".\r\n", false),
            DataLine::Content {
                text: b".",
                bare: 0
            }
        );
        assert_eq!(
            classify_line(b".\n", true),
            DataLine::Content {
                text: b".",
                bare: 1
            }
        );
        assert_eq!(
            classify_line(b".\r\r\n", true),
            DataLine::Content {
                text: b"\r",
                bare: 1
            }
        );
        assert_eq!(
            classify_line(b"..x\r\n", true),
            DataLine::Content {
                text: b".x",
                bare: 0
            }
        );
    }

    #[test]
    fn header_facts_from_and_id() {
        let p = header_parser();
        let m = b"Received: from a\r\nReceived: from b\r\nFrom: \"X\" <x@Alpha.Example>\r\nMessage-ID: <id1@alpha.example>\r\n\r\nReceived: body\r\n";
        let f = header_facts(&p, m);
        assert_eq!(f.received, 2);
        assert_eq!(f.from_domain.as_deref(), Some("alpha.example"));
        assert_eq!(f.message_id.as_deref(), Some("id1@alpha.example"));
        let f = header_facts(&p, b"\r\nbody only\r\n");
        assert_eq!((f.received, f.from_domain), (0, None));
    }

    /// Returned copies (DSNs, feedback reports) are matched to the message by this header.
    #[test]
    fn received_header_gives_back_its_queue_id() {
        let rcpt = Address::parse("r@dest.example", false).unwrap();
        for single in [Some(&rcpt), None] {
            let mut out = Vec::new();
            write_received(
                &mut out,
                "mx.alpha.example",
                "192.0.2.7".parse().unwrap(),
                Some("TLSv1.3 TLS13_AES_256_GCM_SHA384"),
                "relay.test",
                None,
                "ESMTPS",
                "0PQ3ZK8M2V4X1RTA",
                single,
                "Mon, 12 May 2025 07:14:01 +0000",
            );
            let field = std::str::from_utf8(&out).unwrap();
            let value = field.strip_prefix("Received:").unwrap();
            assert_eq!(
                relayward_core::received::queue_id(value),
                Some("0PQ3ZK8M2V4X1RTA"),
                "{field}"
            );
        }
    }
}
