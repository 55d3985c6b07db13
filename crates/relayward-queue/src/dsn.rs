//! Delivery status notifications (RFC 3464, RFC 3461 NOTIFY/RET/ENVID/ORCPT).
//!
//! A DSN is an ordinary spooled message: MAIL FROM:<>, no tenant, one recipient (the original
//! P1 sender), delivered by the same scheduler. A DSN that cannot be delivered is not answered with
//! another DSN; it goes to the postmaster when one is configured.

use std::borrow::Cow;

use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::raw::Raw;
use mail_builder::mime::{BodyPart, MimePart};
use mail_builder::MessageBuilder;

use crate::spool::{Envelope, QueueId, Recipient, RecipientStatus};

/// RFC 3464 `Action` of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    Failed,
    Delayed,
    Delivered,
}

impl DsnAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
        }
    }
}

/// One recipient's entry in a DSN.
#[derive(Debug, Clone)]
pub struct DsnRecipient {
    pub address: String,
    pub orcpt: Option<String>,
    pub action: DsnAction,
    /// RFC 3463 status, e.g. "5.1.1".
    pub status: String,
    /// Host that gave `diagnostic`, when it came from a remote server.
    pub remote_mta: Option<String>,
    /// The remote reply (`smtp;` diagnostic) or, without `remote_mta`, a local explanation.
    pub diagnostic: Option<String>,
    /// Unix seconds.
    pub last_attempt: i64,
    /// For `delayed`: when the relay gives up (Unix seconds).
    pub will_retry_until: Option<i64>,
}

/// Does `notify` (RCPT NOTIFY=, empty when absent) ask for a DSN with `action`? Without NOTIFY,
/// RFC 3461 4.1 leaves it to the MTA; like Postfix we report failures and delays.
pub fn wanted(notify: &[String], action: DsnAction) -> bool {
    let has = |k: &str| notify.iter().any(|n| n.eq_ignore_ascii_case(k));
    if has("NEVER") {
        return false;
    }
    if notify.is_empty() {
        return matches!(action, DsnAction::Failed | DsnAction::Delayed);
    }
    match action {
        DsnAction::Failed => has("FAILURE"),
        DsnAction::Delayed => has("DELAY"),
        DsnAction::Delivered => has("SUCCESS"),
    }
}

fn rfc822_date(ts: i64) -> String {
    Date::new(ts).to_rfc822()
}

/// Keeps header field values on one line and free of characters that would end the field.
fn field_value(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

/// The header section of a message (up to and including the blank line, or everything).
pub fn header_section(body: &[u8]) -> &[u8] {
    if let Some(pos) = body.windows(4).position(|w| w == b"\r\n\r\n") {
        return &body[..pos + 4];
    }
    if let Some(pos) = body.windows(2).position(|w| w == b"\n\n") {
        return &body[..pos + 2];
    }
    body
}

/// The message/delivery-status body.
pub fn delivery_status(hostname: &str, original: &Envelope, recipients: &[DsnRecipient]) -> String {
    let mut s = String::new();
    s.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    if let Some(envid) = &original.dsn_envid {
        s.push_str(&format!("Original-Envelope-Id: {}\r\n", field_value(envid)));
    }
    s.push_str(&format!(
        "Arrival-Date: {}\r\n",
        rfc822_date(original.received_at)
    ));
    for r in recipients {
        s.push_str("\r\n");
        if let Some(orcpt) = &r.orcpt {
            let orcpt = field_value(orcpt);
            if orcpt.contains(';') {
                s.push_str(&format!("Original-Recipient: {orcpt}\r\n"));
            } else {
                s.push_str(&format!("Original-Recipient: rfc822; {orcpt}\r\n"));
            }
        }
        s.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\n",
            field_value(&r.address)
        ));
        s.push_str(&format!("Action: {}\r\n", r.action.as_str()));
        s.push_str(&format!("Status: {}\r\n", r.status));
        if let Some(remote) = &r.remote_mta {
            s.push_str(&format!("Remote-MTA: dns; {}\r\n", field_value(remote)));
        }
        if let Some(diag) = &r.diagnostic {
            let kind = if r.remote_mta.is_some() {
                "smtp"
            } else {
                "X-Relayward"
            };
            s.push_str(&format!(
                "Diagnostic-Code: {kind}; {}\r\n",
                field_value(diag)
            ));
        }
        s.push_str(&format!(
            "Last-Attempt-Date: {}\r\n",
            rfc822_date(r.last_attempt)
        ));
        if let Some(until) = r.will_retry_until {
            s.push_str(&format!("Will-Retry-Until: {}\r\n", rfc822_date(until)));
        }
    }
    s
}

fn human_text(hostname: &str, recipients: &[DsnRecipient], original: &Envelope) -> String {
    let action = recipients
        .first()
        .map(|r| r.action)
        .unwrap_or(DsnAction::Failed);
    let mut s = format!("This is the mail system at host {hostname}.\r\n\r\n");
    match action {
        DsnAction::Failed => s.push_str(
            "I'm sorry to have to inform you that your message could not\r\n\
             be delivered to one or more recipients. The reasons are given below.\r\n",
        ),
        DsnAction::Delayed => {
            // As of the attempt that found the delay (the notice is built right after it).
            let at = recipients
                .iter()
                .map(|r| r.last_attempt)
                .max()
                .unwrap_or_else(|| relayward_core::now().0);
            let hours = (at - original.received_at).max(0) / 3600;
            s.push_str(&format!(
                "Your message could not be delivered for {hours} hour(s).\r\n\
                 It will be retried; you do not need to send it again yet.\r\n"
            ));
        }
        DsnAction::Delivered => s.push_str(
            "Your message was successfully delivered to the destination(s)\r\n\
             listed below.\r\n",
        ),
    }
    s.push_str("\r\n");
    for r in recipients {
        match &r.diagnostic {
            Some(d) => s.push_str(&format!("<{}>: {}\r\n", r.address, field_value(d))),
            None => s.push_str(&format!("<{}>: {}\r\n", r.address, r.action.as_str())),
        }
    }
    s
}

/// The complete DSN message to `to`, with Message-ID `<dsn_id@hostname>`.
pub fn build(
    hostname: &str,
    dsn_id: &QueueId,
    to: &str,
    original: &Envelope,
    original_body: &[u8],
    recipients: &[DsnRecipient],
) -> std::io::Result<Vec<u8>> {
    let action = recipients
        .first()
        .map(|r| r.action)
        .unwrap_or(DsnAction::Failed);
    let subject = match action {
        DsnAction::Failed => "Undelivered Mail Returned to Sender",
        DsnAction::Delayed => "Delayed Mail (still being retried)",
        DsnAction::Delivered => "Successful Mail Delivery Report",
    };
    let full = original
        .dsn_ret
        .as_deref()
        .is_some_and(|r| r.eq_ignore_ascii_case("FULL"))
        && action != DsnAction::Delayed;
    let returned: &[u8] = if full {
        original_body
    } else {
        header_section(original_body)
    };
    let encoding = if returned.iter().any(|&b| b >= 0x80) {
        "8bit"
    } else {
        "7bit"
    };
    let returned_part = MimePart::new(
        ContentType::new(if full {
            "message/rfc822"
        } else {
            "text/rfc822-headers"
        }),
        BodyPart::Binary(Cow::Borrowed(returned)),
    )
    .transfer_encoding(encoding);
    let status_part = MimePart::new(
        ContentType::new("message/delivery-status"),
        BodyPart::Binary(Cow::Owned(
            delivery_status(hostname, original, recipients).into_bytes(),
        )),
    )
    .transfer_encoding("7bit");
    let human = MimePart::new(
        ContentType::new("text/plain").attribute("charset", "utf-8"),
        BodyPart::Text(human_text(hostname, recipients, original).into()),
    );
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        BodyPart::Multipart(vec![human, status_part, returned_part]),
    );
    let from = format!("MAILER-DAEMON@{hostname}");
    MessageBuilder::new()
        .from(("Mail Delivery System", from.as_str()))
        .to(to)
        .subject(subject)
        .date(relayward_core::now().0)
        .message_id(format!("{dsn_id}@{hostname}"))
        .header("Auto-Submitted", Raw::new("auto-replied"))
        .body(report)
        .write_to_vec()
}

/// The spool envelope of a DSN (or postmaster notice): null sender, no tenant, `to` as the only
/// recipient with NOTIFY=NEVER.
pub fn envelope(id: QueueId, hostname: &str, to: &str, body: &[u8]) -> Envelope {
    let now = relayward_core::now();
    let mut rcpt = Recipient::new(to);
    rcpt.notify = vec!["NEVER".into()];
    rcpt.next_attempt_at = now.0;
    Envelope {
        queue_id: id,
        received_at: now.0,
        tenant_id: None,
        connector_id: None,
        client_ip: "127.0.0.1".into(),
        helo: hostname.to_string(),
        auth_user: None,
        tls: false,
        sender: String::new(),
        original_sender: None,
        sender_class: relayward_core::SenderClass::Null,
        header_from_mismatch: false,
        spam_verdict: false,
        message_id: Some(format!("<{id}@{hostname}>")),
        size: body.len() as u64,
        body_8bit: body.iter().any(|&b| b >= 0x80),
        smtputf8: !to.is_ascii(),
        dsn_ret: None,
        dsn_envid: None,
        recipients: vec![rcpt],
        held: false,
    }
}

/// Where a DSN about `original` goes: its sender, or for a message with the null sender (a DSN
/// itself) the postmaster, unless that message was already addressed to the postmaster.
///
/// A sender rewritten with SRS gets the DSN straight at its original address: the SRS address
/// would only bring it back here to be reversed.
pub fn recipient_for(original: &Envelope, postmaster: Option<&str>) -> Option<String> {
    if !original.sender.is_empty() {
        return Some(
            original
                .original_sender
                .clone()
                .unwrap_or_else(|| original.sender.clone()),
        );
    }
    let pm = postmaster?;
    let to_postmaster = original
        .recipients
        .iter()
        .any(|r| r.address.eq_ignore_ascii_case(pm));
    (!to_postmaster).then(|| pm.to_string())
}

/// The enhanced status in a one-line reply such as "550 5.1.1 No such user".
pub fn status_of_reply(reply: &str) -> Option<String> {
    let mut words = reply.split_whitespace();
    let code = words.next()?;
    let status = words.next()?;
    let parts: Vec<&str> = status.split('.').collect();
    (code.len() == 3
        && parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        && matches!(parts[0], "2" | "4" | "5"))
    .then(|| status.to_string())
}

/// Is this recipient still waiting for delivery?
pub fn pending(r: &Recipient) -> bool {
    matches!(
        r.status,
        RecipientStatus::Queued | RecipientStatus::Deferred | RecipientStatus::Held
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_rules() {
        let n = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(wanted(&[], DsnAction::Failed));
        assert!(wanted(&[], DsnAction::Delayed));
        assert!(!wanted(&[], DsnAction::Delivered));
        assert!(!wanted(&n(&["NEVER"]), DsnAction::Failed));
        assert!(wanted(&n(&["SUCCESS"]), DsnAction::Delivered));
        assert!(!wanted(&n(&["SUCCESS"]), DsnAction::Failed));
        assert!(wanted(&n(&["failure", "delay"]), DsnAction::Delayed));
    }

    #[test]
    fn reply_status() {
        assert_eq!(
            status_of_reply("550 5.1.1 No such user").as_deref(),
            Some("5.1.1")
        );
        assert_eq!(
            status_of_reply("556 5.1.10 null MX").as_deref(),
            Some("5.1.10")
        );
        assert_eq!(status_of_reply("550 No such user"), None);
    }

    #[test]
    fn headers_only() {
        assert_eq!(header_section(b"A: b\r\n\r\nbody"), b"A: b\r\n\r\n");
        assert_eq!(header_section(b"A: b\r\n"), b"A: b\r\n");
    }
}
