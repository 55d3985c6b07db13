//! One inbound SMTP session: the state shared by the phase handlers.

use std::net::IpAddr;
use std::sync::Arc;

use relayward_core::{Address, ConnectorId, Reply, SenderClass, TraceEvent, TraceKind};
use relayward_policy::{attribute, Attributed, Attribution, ClientFacts};
use tokio::sync::watch;

use crate::listener::ListenerCtx;
use crate::{IncomingRecipient, Server};

pub(crate) mod auth;
pub(crate) mod data;
pub(crate) mod ehlo;
pub(crate) mod mail;
pub(crate) mod rcpt;
pub(crate) mod session;
pub(crate) mod srs_role;
pub(crate) mod starttls;

pub(crate) use session::Session;

/// Why `Session::run` returned.
pub(crate) enum Exit {
    Close,
    /// 220 sent and flushed: the caller does the handshake and runs the session again.
    StartTls,
}

/// Who the transaction belongs to, as decided at MAIL (or at the first deciding RCPT).
#[derive(Debug, Clone)]
pub(crate) enum Decision {
    Accepted {
        attributed: Attributed,
        class: SenderClass,
    },
    /// Several tenants' IP connectors cover the client: the first RCPT TO domain decides.
    Pending(Vec<ConnectorId>),
    /// A bounce to the SRS domain on a listener in role `srs` (see `srs_role`): no tenant.
    SrsReturn,
}

/// MAIL FROM to end of DATA.
#[derive(Debug)]
pub(crate) struct Transaction {
    pub(crate) sender: Option<Address>,
    pub(crate) decision: Decision,
    pub(crate) size_hint: u64,
    pub(crate) body_8bit: bool,
    pub(crate) smtputf8: bool,
    pub(crate) dsn_ret: Option<String>,
    pub(crate) dsn_envid: Option<String>,
    pub(crate) recipients: Vec<IncomingRecipient>,
    /// RCPT commands seen, accepted or not (DATA after only refused ones gets 554, RFC 2920).
    pub(crate) rcpt_attempts: usize,
}

/// Everything about a session except its socket and read buffer, so the phase handlers can
/// write replies while a command line is borrowed.
pub(crate) struct State {
    pub(crate) server: Arc<Server>,
    pub(crate) ctx: Arc<ListenerCtx>,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) ip: IpAddr,
    pub(crate) ip_text: String,
    /// Replies not yet sent: flushed only when no further command is buffered (PIPELINING).
    pub(crate) wbuf: Vec<u8>,
    /// EHLO/HELO argument, made printable.
    pub(crate) helo: Option<String>,
    pub(crate) esmtp: bool,
    pub(crate) facts: ClientFacts,
    /// As of the last connect/STARTTLS/AUTH; MAIL recomputes it against the current directory.
    pub(crate) attribution: Attribution,
    pub(crate) auth_user: Option<String>,
    /// Protocol and cipher, for the Received header.
    pub(crate) tls_info: Option<String>,
    /// Class-5 replies (and locked AUTH attempts) so far.
    pub(crate) errors: usize,
    /// Commands answered since our replies were last sent (pipelined ahead of them).
    pub(crate) unanswered: usize,
    pub(crate) tx: Option<Transaction>,
}

impl State {
    pub(crate) fn new(
        server: Arc<Server>,
        ctx: Arc<ListenerCtx>,
        ip: IpAddr,
        shutdown: watch::Receiver<bool>,
    ) -> State {
        let facts = ClientFacts::new(ip);
        let attribution = attribution_for(&server, &ctx, &facts);
        State {
            server,
            ctx,
            shutdown,
            ip,
            ip_text: ip.to_string(),
            wbuf: Vec::with_capacity(1024),
            helo: None,
            esmtp: false,
            facts,
            attribution,
            auth_user: None,
            tls_info: None,
            errors: 0,
            unanswered: 0,
            tx: None,
        }
    }

    pub(crate) fn reattribute(&mut self) {
        self.attribution = attribution_for(&self.server, &self.ctx, &self.facts);
    }

    /// Queue a reply without any bookkeeping.
    pub(crate) fn write_reply(&mut self, r: &Reply) {
        metrics::counter!("relayward_smtp_replies_total", "code" => relayward_core::reply::code_label(r.code))
            .increment(1);
        let w = &mut self.wbuf;
        let code = r.code;
        w.extend_from_slice(&[
            b'0' + (code / 100 % 10) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
            b' ',
        ]);
        if !r.status.is_empty() {
            w.extend_from_slice(r.status.as_bytes());
            w.push(b' ');
        }
        w.extend_from_slice(r.text.as_bytes());
        w.extend_from_slice(b"\r\n");
    }

    /// Queue a reply; a negative one is traced (with the transaction's sender, if any) and a
    /// class-5 one counts towards `max_errors`.
    pub(crate) fn reply(&mut self, r: &Reply) {
        self.write_reply(r);
        if r.code >= 400 {
            let sender = self.tx.as_ref().map(|t| sender_text(t.sender.as_ref()));
            self.refused(r, sender, None, None);
        }
    }

    /// Queue a refusal and trace it with what is known about the message.
    pub(crate) fn refuse(
        &mut self,
        r: &Reply,
        sender: Option<String>,
        recipient: Option<String>,
        detail: Option<String>,
    ) {
        self.write_reply(r);
        self.refused(r, sender, recipient, detail);
    }

    /// Queue a refusal by the relay rule, traced and logged with its reason and the facts
    /// behind it, under the tenant it concerns.
    pub(crate) fn refuse_policy(
        &mut self,
        refusal: &relayward_policy::Refusal,
        command: &str,
        sender: Option<String>,
        recipient: Option<String>,
    ) {
        self.refuse_policy_with(refusal, command, sender, recipient, None)
    }

    /// [`State::refuse_policy`]; a refusal for a suppressed recipient names the entry.
    pub(crate) fn refuse_policy_with(
        &mut self,
        refusal: &relayward_policy::Refusal,
        command: &str,
        sender: Option<String>,
        recipient: Option<String>,
        suppressed: Option<&relayward_policy::suppression::Hit>,
    ) {
        let dir = self.server.directory.current();
        let explained = relayward_policy::explain(&dir, &self.facts, refusal);
        let detail = match suppressed {
            Some(hit) => format!("{command} {}", hit.explain(&explained)),
            None => format!("{command} {explained}"),
        };
        let owner = relayward_policy::refusal_owner(&dir, &self.facts, refusal);
        drop(dir);
        tracing::info!(reply = %refusal.reply, sender = sender.as_deref().unwrap_or(""),
            recipient = recipient.as_deref().unwrap_or(""), %detail, "refused");
        self.write_reply(&refusal.reply);
        if refusal.reply.code >= 500 {
            self.errors += 1;
        }
        let mut ev = TraceEvent::new(TraceKind::Refused);
        ev.client_ip = Some(self.ip_text.clone());
        ev.reply = Some(refusal.reply.to_string());
        ev.sender = sender;
        ev.recipient = recipient;
        ev.detail = Some(detail);
        ev.sender_class = refusal.class;
        if let Some((tenant, connector)) = owner {
            ev.tenant_id = Some(tenant);
            ev.connector_id = connector;
        }
        self.server.events.trace(ev);
    }

    fn refused(
        &mut self,
        r: &Reply,
        sender: Option<String>,
        recipient: Option<String>,
        detail: Option<String>,
    ) {
        if r.code >= 500 {
            self.errors += 1;
        }
        let mut ev = TraceEvent::new(TraceKind::Refused);
        ev.client_ip = Some(self.ip_text.clone());
        ev.reply = Some(r.to_string());
        ev.sender = sender;
        ev.recipient = recipient;
        ev.detail = detail;
        match self.tx.as_ref().map(|t| &t.decision) {
            Some(Decision::Accepted { attributed, class }) => {
                ev.tenant_id = Some(attributed.tenant_id);
                ev.connector_id = Some(attributed.connector_id);
                ev.sender_class = Some(*class);
            }
            _ => {
                if let Attribution::Attributed(a) = &self.attribution {
                    ev.tenant_id = Some(a.tenant_id);
                    ev.connector_id = Some(a.connector_id);
                }
            }
        }
        self.server.events.trace(ev);
    }
}

/// A listener in role `srs` attributes nobody: the bounces it takes are no tenant's mail.
fn attribution_for(server: &Server, ctx: &ListenerCtx, facts: &ClientFacts) -> Attribution {
    if ctx.srs.is_some() {
        return Attribution::Unattributed;
    }
    attribute(&server.directory.current(), facts)
}

/// The reverse-path as traces show it: `<>` for the null sender.
pub(crate) fn sender_text(sender: Option<&Address>) -> String {
    match sender {
        Some(a) => a.to_string(),
        None => "<>".to_string(),
    }
}
