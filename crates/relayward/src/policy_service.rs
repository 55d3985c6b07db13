//! `[[listener]] role = "policy"`: Postfix's SMTPD access policy delegation protocol
//! (`check_policy_service`), so an existing Postfix edge gets relayward's attribution, relay
//! rule, restriction states, sender limits and counting while Postfix keeps queueing and
//! delivering.
//!
//! The protocol (Postfix's SMTPD_POLICY_README): the client sends `name=value` lines ended by an
//! empty line; the server answers one `action=...` line and an empty line, and the connection
//! carries any number of requests. Actions here are Postfix access(5) results: `OK` at RCPT
//! when relayward relays it (so `smtpd_relay_restrictions = check_policy_service inet:HOST:PORT,
//! defer_unauth_destination` permits it and defers what the service could not decide), `NNN
//! X.Y.Z text` with relayward's exact reply (`550 5.7.750 Service unavailable. Client blocked
//! ...`), and `DUNNO` for what is only counted (END-OF-MESSAGE) or not yet decidable.
//!
//! What each request is checked with, the same functions as the SMTP listener
//! (`relayward_policy::relay`, the per-sender limits):
//! - attribution from `client_address`, `sasl_username` (a user Postfix authenticated, matched
//!   to an AUTH connector's user) and `ccert_subject` (the CN of a client certificate Postfix
//!   verified, matched as a certificate name); `encryption_protocol` says TLS;
//! - at `protocol_state=RCPT`: the relay rule for `sender` (empty: the null sender) and the
//!   recipient, the tenant's state, the sender's limits, the suppression lists;
//! - at `protocol_state=END-OF-MESSAGE` (`smtpd_end_of_data_restrictions`): the message is
//!   counted for the detector and the limits, with `recipient_count` recipients (the recipient
//!   addresses seen at RCPT for the same `instance`).
//!
//! Refusals are traced with their reason, as the SMTP listener traces them. A request without
//! `request=smtpd_access_policy`, or that is malformed, gets `action=DEFER_IF_PERMIT` (451) and
//! a log line: a broken client must not turn into an open relay, nor reject mail for good.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use relayward_core::{reply, Address, Reply, SenderClass, TraceEvent, TraceKind};
use relayward_policy::relay::{
    attribute, check_mail, check_rcpt, explain, Attributed, ClientFacts, MailOutcome, Refusal,
};
use relayward_policy::SharedDirectory;
use relayward_smtp::{Events, SenderGuard};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::abuse::{Abuse, AcceptedMessage};

/// A request longer than this (all its lines) is refused: Postfix's are a few hundred bytes.
const MAX_REQUEST: usize = 64 * 1024;
/// An idle policy connection is closed after this long (Postfix reconnects).
const IDLE: Duration = Duration::from_secs(300);
/// Transactions remembered per connection (by `instance`) between RCPT and END-OF-MESSAGE.
const MAX_INSTANCES: usize = 64;

pub struct PolicyService {
    directory: Arc<SharedDirectory>,
    abuse: Arc<Abuse>,
    events: Arc<dyn Events>,
}

/// One transaction's recipients, by Postfix's `instance`.
#[derive(Default)]
struct Instance {
    recipients: Vec<Address>,
}

impl PolicyService {
    pub fn new(
        directory: Arc<SharedDirectory>,
        abuse: Arc<Abuse>,
        events: Arc<dyn Events>,
    ) -> Arc<PolicyService> {
        Arc::new(PolicyService {
            directory,
            abuse,
            events,
        })
    }

    /// Serves `listener` until `shutdown`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        mut shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<()> {
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
                r = listener.accept() => r,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        if let Err(e) = me.connection(tcp).await {
                            tracing::debug!(peer = %peer, error = %e, "policy connection ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "policy listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection(&self, tcp: TcpStream) -> std::io::Result<()> {
        let (r, mut w) = tcp.into_split();
        let mut r = BufReader::new(r);
        let mut instances: HashMap<String, Instance> = HashMap::new();
        loop {
            let mut attrs: HashMap<String, String> = HashMap::new();
            let mut size = 0usize;
            let mut bad = None;
            loop {
                let mut line = String::new();
                let n = match tokio::time::timeout(IDLE, r.read_line(&mut line)).await {
                    Ok(n) => n?,
                    Err(_) => return Ok(()),
                };
                if n == 0 {
                    return Ok(());
                }
                size += n;
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    break;
                }
                if size > MAX_REQUEST {
                    bad = Some("request too long");
                    continue;
                }
                match line.split_once('=') {
                    Some((k, v)) => {
                        attrs.insert(k.to_string(), v.to_string());
                    }
                    None => bad = Some("a line without name=value"),
                }
            }
            let action = match bad {
                Some(why) => {
                    tracing::warn!(why, "malformed policy request");
                    "DEFER_IF_PERMIT 4.3.0 malformed policy request".to_string()
                }
                None => self.decide(&attrs, &mut instances),
            };
            w.write_all(format!("action={action}\n\n").as_bytes())
                .await?;
        }
    }

    /// The action for one request.
    fn decide(
        &self,
        attrs: &HashMap<String, String>,
        instances: &mut HashMap<String, Instance>,
    ) -> String {
        let get = |k: &str| attrs.get(k).map(String::as_str).unwrap_or("");
        if get("request") != "smtpd_access_policy" {
            return "DEFER_IF_PERMIT 4.3.0 unknown policy request".into();
        }
        let Ok(ip) = get("client_address").parse::<IpAddr>() else {
            return "DEFER_IF_PERMIT 4.3.0 policy request without a client address".into();
        };
        let ip = ip.to_canonical();
        let sender = match get("sender") {
            "" => None,
            s => match Address::parse(s, true) {
                Ok(a) => Some(a),
                Err(_) => return reply::BAD_SENDER_SYNTAX.to_string(),
            },
        };
        let dir = self.directory.current();
        let mut facts = ClientFacts::new(ip);
        facts.tls = !get("encryption_protocol").is_empty();
        if !get("ccert_subject").is_empty() {
            facts.cert_names = vec![get("ccert_subject").to_ascii_lowercase()];
        }
        if !get("sasl_username").is_empty() {
            facts.auth_connector = dir.auth_connector(get("sasl_username")).map(|c| c.id);
            if facts.auth_connector.is_none() {
                facts.auth_user_tried = Some(get("sasl_username").to_string());
            }
        }
        let attribution = attribute(&dir, &facts);
        let recipient = match get("recipient") {
            "" => None,
            r => Address::parse(r, true).ok(),
        };
        let outcome = match check_mail(&dir, &facts, &attribution, sender.as_ref()) {
            Ok(MailOutcome::PendingRcpt { candidates }) => match &recipient {
                Some(rcpt) => check_rcpt(&dir, &facts, &candidates, sender.as_ref(), rcpt),
                None => return "DUNNO".into(),
            },
            other => other,
        };
        let (attributed, class) = match outcome {
            Ok(MailOutcome::Accepted { attributed, class }) => (attributed, class),
            Ok(MailOutcome::PendingRcpt { .. }) => return "DUNNO".into(),
            Err(refusal) => return self.refuse(&dir, &facts, &refusal, attrs),
        };
        let state = get("protocol_state").to_ascii_uppercase();
        match state.as_str() {
            "RCPT" => {
                if let Some(s) = &sender {
                    let so_far = instances.get(get("instance")).map_or(0, |i| {
                        i.recipients
                            .iter()
                            .filter(|r| Some(*r) != recipient.as_ref())
                            .count()
                    });
                    if let Err(r) = self.abuse.check_rcpt(
                        attributed.tenant_id,
                        attributed.connector_id,
                        s,
                        recipient.as_ref().unwrap_or(s),
                        so_far + 1,
                    ) {
                        self.trace_refusal(&facts, &r, attrs, Some(&attributed), "sender_limit");
                        return r.to_string();
                    }
                }
                if let Some(rcpt) = &recipient {
                    let list = self.abuse.suppressions().list();
                    if let Some(hit) = list.check(attributed.tenant_id, rcpt, relayward_core::now())
                    {
                        let refusal = hit.refusal(attributed, Some(class));
                        let detail = hit.explain(&explain(&dir, &facts, &refusal));
                        self.trace_refusal(
                            &facts,
                            &refusal.reply,
                            attrs,
                            Some(&attributed),
                            &detail,
                        );
                        return refusal.reply.to_string();
                    }
                }
                if let Some(rcpt) = recipient {
                    if instances.len() >= MAX_INSTANCES && !instances.contains_key(get("instance"))
                    {
                        instances.clear();
                    }
                    // Asked from both smtpd_sender_restrictions and smtpd_relay_restrictions:
                    // each recipient counts once.
                    let seen = &mut instances
                        .entry(get("instance").to_string())
                        .or_default()
                        .recipients;
                    if !seen.contains(&rcpt) {
                        seen.push(rcpt);
                    }
                }
                // The relay decision is relayward's: permit it (Postfix's own restrictions
                // after `check_policy_service` then do not apply to this recipient).
                "OK".into()
            }
            "END-OF-MESSAGE" => {
                let recipients = instances
                    .remove(get("instance"))
                    .map(|i| i.recipients)
                    .unwrap_or_default();
                self.count(&attributed, class, sender, recipients, ip, attrs);
                "DUNNO".into()
            }
            _ => "DUNNO".into(),
        }
    }

    fn refuse(
        &self,
        dir: &relayward_policy::Directory,
        facts: &ClientFacts,
        refusal: &Refusal,
        attrs: &HashMap<String, String>,
    ) -> String {
        let detail = explain(dir, facts, refusal);
        self.trace_refusal(
            facts,
            &refusal.reply,
            attrs,
            refusal.attributed.as_ref(),
            &detail,
        );
        refusal.reply.to_string()
    }

    fn trace_refusal(
        &self,
        facts: &ClientFacts,
        r: &Reply,
        attrs: &HashMap<String, String>,
        attributed: Option<&Attributed>,
        detail: &str,
    ) {
        let mut ev = TraceEvent::new(TraceKind::Refused);
        ev.client_ip = Some(facts.ip.to_string());
        ev.reply = Some(r.to_string());
        ev.sender = attrs.get("sender").cloned();
        ev.recipient = attrs.get("recipient").cloned().filter(|r| !r.is_empty());
        ev.tenant_id = attributed.map(|a| a.tenant_id);
        ev.connector_id = attributed.map(|a| a.connector_id);
        ev.detail = Some(format!("policy service: {detail}"));
        tracing::info!(reply = %r, %detail, "policy service refused");
        self.events.trace(ev);
    }

    /// The message Postfix accepted, counted as the SMTP listener counts its own.
    fn count(
        &self,
        att: &Attributed,
        class: SenderClass,
        sender: Option<Address>,
        mut recipients: Vec<Address>,
        ip: IpAddr,
        attrs: &HashMap<String, String>,
    ) {
        let stated: usize = attrs
            .get("recipient_count")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if recipients.is_empty() {
            if let Some(r) = attrs
                .get("recipient")
                .and_then(|r| Address::parse(r, true).ok())
            {
                recipients.push(r);
            }
        }
        // Recipients Postfix counted but this connection did not see (another policy
        // connection, a restart): counted under a placeholder address.
        if recipients.len() < stated {
            if let Ok(placeholder) = Address::parse("unknown@invalid", true) {
                recipients.resize(stated, placeholder);
            }
        }
        let queue_id = attrs.get("queue_id").cloned().unwrap_or_default();
        let m = AcceptedMessage {
            tenant: att.tenant_id,
            connector: att.connector_id,
            class,
            sender,
            mismatch: false,
            header_from_domain: None,
            recipients,
            client_ip: ip,
            message_id: None,
            dkim_data: None,
        };
        self.events.connector_used(att.connector_id);
        self.abuse.accepted(&m, &queue_id);
    }
}

/// The address a policy listener is reachable at, for the log.
pub fn describe(addr: SocketAddr) -> String {
    format!("inet:{}:{}", addr.ip(), addr.port())
}
