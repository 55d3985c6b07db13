//! A listener in role `srs`: the relay as MX of its SRS domain, taking back the bounces of mail
//! it forwarded with a rewritten envelope sender and sending them on to the original sender.
//!
//! It is not a relay and attributes nobody. It accepts a transaction only when:
//! - MAIL FROM is the null sender or a postmaster-style address (`postmaster@`,
//!   `mailer-daemon@`): bounces, not mail (`550 5.7.1` otherwise);
//! - the source IP is under its per-minute message rate (`451 4.7.500` otherwise);
//! - each RCPT TO is an SRS address in the SRS domain that the relay made: the hash verifies
//!   with one of its secrets and the stamp is young enough (`550 5.1.1` otherwise; any other
//!   domain is a relay attempt, `550 5.7.64`).
//!
//! The recipients are replaced by the addresses they stand for (the SRS address is kept as
//! the ORCPT) and the message goes to the [`SrsReturn`] handler unchanged, apart from our
//! Received header. So a valid SRS address, which only the relay's own forwarded mail carries,
//! is the only way in, and the way out leads to the sender of that mail and nobody else.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use relayward_core::{normalize_domain, reply, Address, Reply, TraceEvent, TraceKind};
use smtp_proto::{MailFrom, RcptTo};
use tokio::io::{AsyncRead, AsyncWrite};

use super::data::{content_checks, write_received};
use super::mail::extract_path;
use super::session::Session;
use super::{sender_text, Decision, Exit, State, Transaction};
use crate::{EnqueueError, IncomingRecipient};

/// Local parts of the senders a bounce may come from besides the null sender (RFC 3464 DSNs
/// are sent with `MAIL FROM:<>`; some MTAs use their postmaster address instead).
const BOUNCE_SENDERS: &[&str] = &["postmaster", "mailer-daemon", "mailer_daemon", "mdaemon"];

/// Sources tracked by the rate limiter before stale entries are swept.
const RATE_SWEEP_AT: usize = 4096;

const NOTIFY_FLAGS: u64 = smtp_proto::RCPT_NOTIFY_SUCCESS
    | smtp_proto::RCPT_NOTIFY_FAILURE
    | smtp_proto::RCPT_NOTIFY_DELAY
    | smtp_proto::RCPT_NOTIFY_NEVER;

/// What a listener in role `srs` needs from the relay: the SRS domain and secrets, and the spool.
#[async_trait]
pub trait SrsReturn: Send + Sync + 'static {
    /// The SRS domain, lowercase: the only domain RCPT TO may name.
    fn domain(&self) -> &str;
    /// The address an SRS address (as received, `local@domain`) stands for; `Err` when it is
    /// forged, expired, malformed or not an SRS address at all (the reason goes to the trace,
    /// never to the client).
    fn reverse(&self, address: &str) -> Result<String, SrsReverseError>;
    /// Spools the returned message. Ok only once it is durably on disk.
    async fn enqueue(&self, msg: ReturnedMessage) -> Result<(), EnqueueError>;
    /// The feedback-loop address (lowercase `local@domain`) where receiving providers send
    /// spam complaints as ARF reports (RFC 5965); `None`: none taken here.
    fn feedback_address(&self) -> Option<&str> {
        None
    }
    /// Takes one feedback report. `Ok(detail)` once what it reports is recorded (the detail
    /// goes to the trace: which tenant, which message, or why it could not be attributed).
    async fn feedback(&self, _report: FeedbackMessage) -> Result<String, FeedbackError> {
        Err(FeedbackError::NotTaken)
    }
}

/// Why an address in the SRS domain does not lead back to a sender. The text goes to the
/// trace; the client only learns that the address is not a valid SRS address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrsReverseError {
    /// The hash matches none of the relay's secrets (forged, or signed with a secret since
    /// removed).
    #[error("SRS hash invalid")]
    BadHash,
    /// The SRS0 day stamp is older than the relay keeps its addresses valid.
    #[error("SRS timestamp out of date")]
    Expired,
    /// An SRS address that cannot be parsed; the text says what is missing.
    #[error("malformed address: {0}")]
    Malformed(String),
    /// Not an SRS0/SRS1 address at all.
    #[error("not an SRS address")]
    NotSrs,
    /// The relay's SRS configuration refused it.
    #[error("invalid SRS configuration: {0}")]
    Config(String),
}

impl SrsReverseError {
    /// The reply to the RCPT TO that named the address: the same for every kind, so that a
    /// prober learns nothing about the relay's secrets or clock.
    pub fn reply(&self) -> Reply {
        match self {
            SrsReverseError::BadHash
            | SrsReverseError::Expired
            | SrsReverseError::Malformed(_)
            | SrsReverseError::NotSrs
            | SrsReverseError::Config(_) => reply::SRS_BAD_RECIPIENT,
        }
    }
}

/// A message to the feedback address, as received (our Received header first).
#[derive(Debug, Clone)]
pub struct FeedbackMessage {
    pub queue_id: String,
    pub client_ip: IpAddr,
    /// MAIL FROM as received; `None` for the null sender.
    pub sender: Option<String>,
    pub data: Vec<u8>,
}

/// Why a feedback report was not taken.
#[derive(Debug, thiserror::Error)]
pub enum FeedbackError {
    #[error("feedback reports are not taken here")]
    NotTaken,
    /// The store could not record it: the sender should try again.
    #[error("cannot record the report: {0}")]
    Unavailable(String),
}

/// A listener's role `srs`: see the module documentation.
#[derive(Clone)]
pub struct SrsRole {
    pub handler: Arc<dyn SrsReturn>,
    /// Transactions (MAIL commands) per source per minute; IPv6 sources count per /64. 0: no
    /// limit.
    pub max_messages_per_ip_per_minute: u32,
}

impl std::fmt::Debug for SrsRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrsRole")
            .field("domain", &self.handler.domain())
            .field(
                "max_messages_per_ip_per_minute",
                &self.max_messages_per_ip_per_minute,
            )
            .finish()
    }
}

/// One recipient of a [`ReturnedMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnRecipient {
    /// The SRS address as the client gave it.
    pub srs_address: String,
    /// What it stands for: the original sender (or, for SRS1, the first forwarder's SRS0
    /// address).
    pub address: String,
}

/// A bounce accepted by a listener in role `srs`, on its way back to the original sender.
#[derive(Debug, Clone)]
pub struct ReturnedMessage {
    pub queue_id: String,
    /// Unix seconds.
    pub received_at: i64,
    pub client_ip: IpAddr,
    pub helo: String,
    pub tls: bool,
    /// MAIL FROM as received: `None` for the null sender, else a postmaster-style address.
    /// The message goes on with the null sender either way, so it can never bounce again.
    pub sender: Option<String>,
    pub message_id: Option<String>,
    pub body_8bit: bool,
    pub smtputf8: bool,
    pub recipients: Vec<ReturnRecipient>,
    /// The message with our Received header prepended, dot-unstuffed, CRLF line ends.
    pub data: Vec<u8>,
}

/// Per-listener state of role `srs`.
pub(crate) struct SrsCtx {
    pub(crate) role: SrsRole,
    /// Source -> (minute, transactions in it).
    rate: Mutex<HashMap<IpAddr, (u64, u32)>>,
}

impl SrsCtx {
    pub(crate) fn new(role: SrsRole) -> SrsCtx {
        SrsCtx {
            role,
            rate: Mutex::default(),
        }
    }

    /// Counts one transaction from `ip`; false when it is over the per-minute limit.
    fn admit(&self, ip: IpAddr) -> bool {
        let limit = self.role.max_messages_per_ip_per_minute;
        if limit == 0 {
            return true;
        }
        let minute = relayward_core::now().0.max(0) as u64 / 60;
        // An IPv6 client has a /64 to pick addresses from.
        let key = match ip {
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::V6(o.into())
            }
            v4 => v4,
        };
        let mut map = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= RATE_SWEEP_AT {
            map.retain(|_, (m, _)| *m == minute);
        }
        let entry = map.entry(key).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        if entry.1 >= limit {
            return false;
        }
        entry.1 += 1;
        true
    }
}

/// Is `sender` acceptable as the reverse-path of a bounce?
fn is_bounce_sender(sender: Option<&Address>) -> bool {
    match sender {
        None => true,
        Some(a) => BOUNCE_SENDERS
            .iter()
            .any(|l| a.local.eq_ignore_ascii_case(l)),
    }
}

/// `local@domain` of an RCPT path, without a source route. Not [`Address::parse`]: SRS local
/// parts may be longer than RFC 5321's 64 octets (libsrs2 and postsrsd make them so), and a
/// bounce to one must still come back.
fn split_path(raw: &str) -> Option<(&str, String)> {
    let path = match raw.strip_prefix('@') {
        Some(_) => &raw[raw.find(':')? + 1..],
        None => raw,
    };
    let at = path.rfind('@')?;
    let (local, domain) = (&path[..at], &path[at + 1..]);
    if local.is_empty()
        || local.starts_with('"')
        || !local
            .chars()
            .all(|c| c.is_ascii_graphic() && !"<>()[]\\,;:@\"".contains(c))
    {
        return None;
    }
    Some((local, normalize_domain(domain).ok()?))
}

impl State {
    /// MAIL FROM on a listener in role `srs`, once the syntax and SIZE are checked.
    pub(crate) fn srs_mail(
        &mut self,
        sender: Option<Address>,
        from: &MailFrom<Cow<'_, str>>,
        smtputf8: bool,
    ) -> Result<(), (Reply, Option<String>)> {
        let shown = Some(sender_text(sender.as_ref()));
        // Feedback reports come from the provider's own address, not the null sender: with a
        // feedback address, a sender that is not a bounce's may name only that address (the
        // check moves to RCPT).
        let feedback = self
            .ctx
            .srs
            .as_ref()
            .is_some_and(|s| s.role.handler.feedback_address().is_some());
        if !feedback && !is_bounce_sender(sender.as_ref()) {
            return Err((reply::SRS_NOT_A_BOUNCE, shown));
        }
        let admitted = self.ctx.srs.as_ref().is_some_and(|s| s.admit(self.ip));
        if !admitted {
            return Err((reply::RATE_LIMITED, shown));
        }
        self.tx = Some(Transaction {
            sender,
            decision: Decision::SrsReturn,
            size_hint: from.size as u64,
            body_8bit: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
            smtputf8,
            dsn_ret: None,
            dsn_envid: None,
            recipients: Vec::new(),
            rcpt_attempts: 0,
        });
        Ok(())
    }

    /// RCPT TO on a listener in role `srs`: only the relay's own, valid SRS addresses.
    pub(crate) fn srs_rcpt(&mut self, line: &[u8], to: &RcptTo<Cow<'_, str>>) {
        match self.srs_rcpt_inner(line, to) {
            Ok(()) => self.reply(&reply::RECIPIENT_OK),
            Err((r, rcpt, why)) => {
                // The trace says why; the client only learns that it is no address of ours.
                let sender = self.tx.as_ref().map(|t| sender_text(t.sender.as_ref()));
                let detail = match why {
                    Some(why) => format!("RCPT (srs: {why})"),
                    None => "RCPT".into(),
                };
                self.refuse(&r, sender, rcpt, Some(detail));
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn srs_rcpt_inner(
        &mut self,
        line: &[u8],
        to: &RcptTo<Cow<'_, str>>,
    ) -> Result<(), (Reply, Option<String>, Option<String>)> {
        let max_recipients = self.server.config.max_recipients;
        let ctx = self.ctx.clone();
        let Some(srs) = ctx.srs.as_ref() else {
            return Err((reply::RELAY_DENIED, None, None));
        };
        let Some(tx) = self.tx.as_mut() else {
            return Err((reply::BAD_SEQUENCE_MAIL_FIRST, None, None));
        };
        tx.rcpt_attempts += 1;
        // DSN parameters are accepted and ignored: the return goes on with the null sender,
        // which nobody notifies.
        if to.flags & !NOTIFY_FLAGS != 0
            || to.rrvs != 0
            || (!self.esmtp && (to.flags != 0 || to.orcpt.is_some()))
        {
            return Err((reply::PARAM_NOT_RECOGNIZED, None, None));
        }
        let raw = extract_path(line).ok_or((reply::BAD_RECIPIENT_SYNTAX, None, None))?;
        let shown = || Some(raw.to_string());
        let Some((local, domain)) = split_path(raw) else {
            return Err((reply::SRS_BAD_RECIPIENT, shown(), Some("malformed".into())));
        };
        let is_feedback = |r: &IncomingRecipient| r.orcpt.is_none();
        if let Some(fbl) = srs.role.handler.feedback_address() {
            if format!("{}@{domain}", local.to_ascii_lowercase()) == fbl {
                // A report is a transaction of its own: it is read, not forwarded.
                if tx.recipients.iter().any(|r| !is_feedback(r)) {
                    return Err((reply::TOO_MANY_RECIPIENTS, shown(), None));
                }
                if tx.recipients.is_empty() {
                    let (l, d) = fbl.rsplit_once('@').unwrap_or((fbl, ""));
                    tx.recipients.push(IncomingRecipient {
                        address: Address {
                            local: l.to_string(),
                            domain: d.to_string(),
                        },
                        orcpt: None,
                        notify: Vec::new(),
                    });
                }
                return Ok(());
            }
        }
        if !is_bounce_sender(tx.sender.as_ref()) {
            let sender = Some(sender_text(tx.sender.as_ref()));
            return Err((reply::SRS_NOT_A_BOUNCE, sender, Some("not a bounce".into())));
        }
        if tx.recipients.iter().any(is_feedback) {
            return Err((reply::TOO_MANY_RECIPIENTS, shown(), None));
        }
        if domain != srs.role.handler.domain() {
            return Err((
                reply::RELAY_DENIED,
                shown(),
                Some("not the SRS domain".into()),
            ));
        }
        let srs_address = format!("{local}@{domain}");
        let original = srs
            .role
            .handler
            .reverse(&srs_address)
            .map_err(|why| (why.reply(), shown(), Some(why.to_string())))?;
        // The original sender as it was received (a quoted local part included).
        let o_split = original.rsplit_once('@').and_then(|(l, d)| {
            let d = normalize_domain(d).ok()?;
            (!l.is_empty()).then_some((l, d))
        });
        let Some((o_local, o_domain)) = o_split else {
            return Err((
                reply::SRS_BAD_RECIPIENT,
                shown(),
                Some(format!("reverses to a bad address {original:?}")),
            ));
        };
        if !tx.smtputf8 && !original.is_ascii() {
            return Err((reply::SMTPUTF8_REQUIRED, shown(), None));
        }
        if tx.recipients.len() >= max_recipients {
            return Err((reply::TOO_MANY_RECIPIENTS, shown(), None));
        }
        let orcpt = Some(format!("rfc822;{srs_address}"));
        if !tx.recipients.iter().any(|r| r.orcpt == orcpt) {
            tx.recipients.push(IncomingRecipient {
                address: Address {
                    local: o_local.to_string(),
                    domain: o_domain,
                },
                orcpt,
                notify: Vec::new(),
            });
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    /// DATA on a listener in role `srs` (recipients are known to be there).
    pub(crate) async fn srs_data(&mut self) -> Option<Exit> {
        let st = &mut self.st;
        let handler = st.ctx.srs.as_ref()?.role.handler.clone();
        let server = st.server.clone();
        let config = &server.config;
        let queue_id = server.sink.new_queue_id();
        let received_at = relayward_core::now();
        let date = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc2822)
            .unwrap_or_default();
        let tx = st.tx.as_ref()?;
        let protocol = match (st.esmtp, st.facts.tls) {
            (false, _) => "SMTP",
            (true, false) => "ESMTP",
            (true, true) => "ESMTPS",
        };
        let mut data = Vec::with_capacity(match tx.size_hint {
            0 => 16 * 1024,
            n => n.min(config.max_message_size) as usize + 1024,
        });
        write_received(
            &mut data,
            st.helo.as_deref().unwrap_or("unknown"),
            st.ip,
            st.tls_info.as_deref(),
            &config.hostname,
            config.node_name.as_deref(),
            protocol,
            &queue_id,
            None,
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

        let st = &mut self.st;
        let mut tx = st.tx.take()?;
        let sender = sender_text(tx.sender.as_ref());
        let refuse = |st: &mut State, r: &Reply, detail: &str| {
            let mut ev = TraceEvent::new(TraceKind::Refused);
            ev.client_ip = Some(st.ip_text.clone());
            ev.reply = Some(r.to_string());
            ev.sender = Some(sender.clone());
            ev.queue_id = Some(queue_id.clone());
            ev.detail = Some(format!("srs return: {detail}"));
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
        if tx.recipients.iter().all(|r| r.orcpt.is_none()) {
            let report = FeedbackMessage {
                queue_id: queue_id.clone(),
                client_ip: st.ip,
                sender: tx.sender.as_ref().map(|a| a.to_string()),
                data,
            };
            let taken =
                tokio::time::timeout(config.timeouts.data_termination, handler.feedback(report))
                    .await;
            let st = &mut self.st;
            match taken {
                Ok(Ok(detail)) => {
                    let ok = reply::queued(&queue_id);
                    st.write_reply(&ok);
                    let mut ev = TraceEvent::new(TraceKind::Received);
                    ev.queue_id = Some(queue_id.clone());
                    ev.message_id = facts.message_id.clone();
                    ev.client_ip = Some(st.ip_text.clone());
                    ev.sender = Some(sender.clone());
                    ev.recipient = handler.feedback_address().map(str::to_string);
                    ev.reply = Some(ok.to_string());
                    ev.detail = Some(format!("feedback report: {detail}"));
                    server.events.trace(ev);
                }
                Ok(Err(e)) => {
                    tracing::warn!(queue_id = %queue_id, error = %e, "feedback report not taken");
                    refuse(st, &reply::LOCAL_PROBLEM, "feedback report not recorded");
                }
                Err(_) => refuse(st, &reply::LOCAL_PROBLEM, "feedback report timed out"),
            }
            return None;
        }
        let recipients: Vec<ReturnRecipient> = tx
            .recipients
            .drain(..)
            .map(|r| ReturnRecipient {
                srs_address: r
                    .orcpt
                    .as_deref()
                    .and_then(|o| o.strip_prefix("rfc822;"))
                    .unwrap_or_default()
                    .to_string(),
                address: r.address.to_string(),
            })
            .collect();
        let msg = ReturnedMessage {
            queue_id: queue_id.clone(),
            received_at: received_at.0,
            client_ip: st.ip,
            helo: st.helo.clone().unwrap_or_default(),
            tls: st.facts.tls,
            sender: tx.sender.as_ref().map(|a| a.to_string()),
            message_id: facts.message_id.clone(),
            body_8bit: tx.body_8bit,
            smtputf8: tx.smtputf8,
            recipients: recipients.clone(),
            data,
        };
        let enqueued =
            tokio::time::timeout(config.timeouts.data_termination, handler.enqueue(msg)).await;
        let st = &mut self.st;
        match enqueued {
            Ok(Ok(())) => {
                let ok = reply::queued(&queue_id);
                st.write_reply(&ok);
                let ok = ok.to_string();
                for r in recipients {
                    let mut ev = TraceEvent::new(TraceKind::Received);
                    ev.queue_id = Some(queue_id.clone());
                    ev.message_id = facts.message_id.clone();
                    ev.client_ip = Some(st.ip_text.clone());
                    ev.sender = Some(sender.clone());
                    ev.recipient = Some(r.address);
                    ev.sender_class = Some(relayward_core::SenderClass::Null);
                    ev.reply = Some(ok.clone());
                    ev.detail = Some(format!("srs return to {}", r.srs_address));
                    server.events.trace(ev);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(queue_id = %queue_id, error = %e, "enqueue of an SRS return failed");
                refuse(st, &e.reply(), "enqueue failed");
            }
            Err(_) => {
                tracing::warn!(queue_id = %queue_id, "enqueue of an SRS return timed out");
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
    fn bounce_senders() {
        assert!(is_bounce_sender(None));
        let a = |s: &str| Address::parse(s, false).unwrap();
        assert!(is_bounce_sender(Some(&a("postmaster@mx.example"))));
        assert!(is_bounce_sender(Some(&a("MAILER-DAEMON@mx.example"))));
        assert!(!is_bounce_sender(Some(&a("alice@mx.example"))));
        assert!(!is_bounce_sender(Some(&a("postmaster.x@mx.example"))));
    }

    #[test]
    fn paths_allow_long_srs_local_parts() {
        let long = format!(
            "SRS0=abcd=TT={}.example=someone@srs.example",
            "x".repeat(60)
        );
        let (local, domain) = split_path(&long).unwrap();
        assert!(local.len() > 64);
        assert_eq!(domain, "srs.example");
        assert_eq!(
            split_path("@relay.example:SRS0=a=b=c=d@SRS.Example"),
            Some(("SRS0=a=b=c=d", "srs.example".to_string()))
        );
        assert_eq!(split_path("\"SRS0=a\"@srs.example"), None);
        assert_eq!(split_path("no-at-sign"), None);
        assert_eq!(split_path("@srs.example"), None);
    }

    #[test]
    fn every_reverse_failure_is_the_same_refusal() {
        for e in [
            SrsReverseError::BadHash,
            SrsReverseError::Expired,
            SrsReverseError::Malformed("no hash in SRS0 address".into()),
            SrsReverseError::NotSrs,
            SrsReverseError::Config("no secret".into()),
        ] {
            assert_eq!(e.reply(), reply::SRS_BAD_RECIPIENT, "{e}");
        }
        assert_eq!(
            SrsReverseError::Malformed("no host in SRS0 address".into()).to_string(),
            "malformed address: no host in SRS0 address"
        );
    }

    #[test]
    fn rate_is_per_source_and_minute() {
        struct Nothing;
        #[async_trait]
        impl SrsReturn for Nothing {
            fn domain(&self) -> &str {
                "srs.example"
            }
            fn reverse(&self, _: &str) -> Result<String, SrsReverseError> {
                Err(SrsReverseError::NotSrs)
            }
            async fn enqueue(&self, _: ReturnedMessage) -> Result<(), EnqueueError> {
                Ok(())
            }
        }
        let ctx = SrsCtx::new(SrsRole {
            handler: Arc::new(Nothing),
            max_messages_per_ip_per_minute: 2,
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b2: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(ctx.admit(a) && ctx.admit(a));
        assert!(!ctx.admit(a));
        assert!(ctx.admit(b) && ctx.admit(b2));
        assert!(!ctx.admit(b));
    }
}
