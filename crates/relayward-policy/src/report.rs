//! Reports that come back about mail the relay sent, both `multipart/report` messages (RFC
//! 6522): delivery status notifications (RFC 3464) and receiving providers' spam complaints in
//! the Abuse Reporting Format (RFC 5965). Parsing only, no I/O: the caller finds the message
//! a report is about by the relay's queue id (from the relay's own `Received:` header in the
//! returned copy) or its Message-ID, and counts, suppresses and classifies
//! ([`DsnRecipient::classify`]) from there.

use std::net::IpAddr;

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

use crate::bounce::{split_reply, BounceClassifier, Classified};

/// What the reporting MTA did with one recipient (RFC 3464 section 2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DsnAction {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
    /// Missing or not one of the above.
    Unknown,
}

impl DsnAction {
    fn parse(s: &str) -> DsnAction {
        // Values may carry a comment: "failed (bad mailbox)".
        let word = s.split([' ', '(']).next().unwrap_or("");
        match word.to_ascii_lowercase().as_str() {
            "failed" => DsnAction::Failed,
            "delayed" => DsnAction::Delayed,
            "delivered" => DsnAction::Delivered,
            "relayed" => DsnAction::Relayed,
            "expanded" => DsnAction::Expanded,
            _ => DsnAction::Unknown,
        }
    }
}

/// One recipient's fields of a DSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DsnRecipient {
    /// The address, its type (`rfc822;`) and angle brackets removed.
    pub final_recipient: String,
    pub original_recipient: Option<String>,
    pub action: DsnAction,
    /// RFC 3463 status, `5.1.1`; empty when the report has none.
    pub status: String,
    /// The Diagnostic-Code's type, lowercase: `smtp` when the text is the remote's reply.
    pub diagnostic_type: Option<String>,
    /// The Diagnostic-Code's text, unfolded: `550 5.1.1 <a@b>: Recipient address rejected ...`.
    pub diagnostic_code: Option<String>,
    /// The host of the Remote-MTA, without its type and comments.
    pub remote_mta: Option<String>,
}

impl DsnRecipient {
    /// The bounce class of this recipient: the remote's SMTP reply in the Diagnostic-Code when
    /// there is one, the Status otherwise (with the reply code its class implies, 550 for
    /// `5.x.x`, so that rules by reply code apply too).
    pub fn classify(&self, classifier: &BounceClassifier) -> Classified {
        let diagnostic = self.diagnostic_code.as_deref().unwrap_or("");
        let smtp = self.diagnostic_type.as_deref() == Some("smtp");
        let (code, text) = if smtp {
            split_reply(diagnostic)
        } else {
            (0, diagnostic)
        };
        let code = match (code, self.status.as_bytes().first()) {
            (0, Some(b'2')) => 250,
            (0, Some(b'4')) => 450,
            (0, Some(b'5')) => 550,
            (code, _) => code,
        };
        let own_status = text.split_ascii_whitespace().next().is_some_and(|w| {
            w.split('.').count() == 3 && w.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        });
        let status = if own_status { "" } else { &self.status };
        classifier.classify(code, status, text)
    }
}

/// A delivery status notification (RFC 3464).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReport {
    /// The host of the Reporting-MTA.
    pub reporting_mta: Option<String>,
    pub arrival_date: Option<String>,
    pub recipients: Vec<DsnRecipient>,
    /// The returned message's Message-ID, without angle brackets (as the trace records it).
    pub message_id: Option<String>,
    /// The relay's queue id of the returned message ([`relay_queue_id`]).
    pub queue_id: Option<String>,
}

/// A feedback report (RFC 5965): a receiving provider's user marked a message as spam.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedbackReport {
    /// Lowercase: `abuse`, `fraud`, `virus`, `other`, `not-spam`, `auth-failure`; empty when
    /// the report has none.
    pub feedback_type: String,
    pub user_agent: Option<String>,
    pub version: Option<String>,
    /// Without angle brackets.
    pub original_mail_from: Option<String>,
    /// Without angle brackets; the field may repeat.
    pub original_rcpt_to: Vec<String>,
    /// Arrival-Date, or Received-Date of older reports (Yahoo's still send it).
    pub arrival_date: Option<String>,
    pub source_ip: Option<IpAddr>,
    pub reported_domain: Vec<String>,
    /// The host of the Reporting-MTA.
    pub reporting_mta: Option<String>,
    /// The original message's Message-ID, without angle brackets (as the trace records it).
    pub message_id: Option<String>,
    /// The original's From address.
    pub from: Option<String>,
    /// The original's To addresses.
    pub to: Vec<String>,
    /// The relay's queue id of the original ([`relay_queue_id`]).
    pub queue_id: Option<String>,
}

impl FeedbackReport {
    /// Who complained: the Original-Rcpt-To addresses, else the original message's To.
    pub fn complained_recipients(&self) -> Vec<String> {
        if self.original_rcpt_to.is_empty() {
            self.to.clone()
        } else {
            self.original_rcpt_to.clone()
        }
    }
}

/// The relay's queue id in a message's header fields, given as (name, raw value) pairs in
/// order (`mail_parser::Message::headers_raw` gives them so): the topmost `Received:` field the
/// relay wrote ([`relayward_core::received`]), that is the last time the relay handled the
/// message, which is the delivery a report is about.
pub fn relay_queue_id<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<String> {
    headers
        .into_iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("Received"))
        .find_map(|(_, value)| relayward_core::received::queue_id(value))
        .map(str::to_string)
}

/// A DSN: a message with a `message/delivery-status` part that names at least one recipient.
pub fn parse_dsn(raw: &[u8]) -> Option<DeliveryReport> {
    let message = MessageParser::new().parse(raw)?;
    let status = report_part(&message, &["delivery-status", "global-delivery-status"])?;
    let blocks = field_blocks(&status);
    let mut report = DeliveryReport {
        reporting_mta: None,
        arrival_date: None,
        recipients: Vec::new(),
        message_id: None,
        queue_id: None,
    };
    for block in &blocks {
        let recipient =
            field(block, "final-recipient").or_else(|| field(block, "original-recipient"));
        let Some(recipient) = recipient else {
            report.reporting_mta = report
                .reporting_mta
                .or_else(|| field(block, "reporting-mta").and_then(host));
            report.arrival_date = report
                .arrival_date
                .or_else(|| field(block, "arrival-date").map(str::to_string));
            continue;
        };
        let diagnostic = field(block, "diagnostic-code").map(|d| match d.split_once(';') {
            Some((kind, text)) => (Some(kind.trim().to_ascii_lowercase()), text.trim()),
            None => (None, d),
        });
        report.recipients.push(DsnRecipient {
            final_recipient: typed_address(recipient),
            original_recipient: field(block, "original-recipient").map(typed_address),
            action: DsnAction::parse(field(block, "action").unwrap_or("")),
            status: field(block, "status")
                .and_then(|s| s.split_ascii_whitespace().next())
                .unwrap_or("")
                .to_string(),
            diagnostic_type: diagnostic.as_ref().and_then(|(kind, _)| kind.clone()),
            diagnostic_code: diagnostic.map(|(_, text)| text.to_string()),
            remote_mta: field(block, "remote-mta").and_then(host),
        });
    }
    if report.recipients.is_empty() {
        return None;
    }
    if let Some(original) = original(&message) {
        report.message_id = original.message_id;
        report.queue_id = original.queue_id;
    }
    Some(report)
}

/// An ARF report: a message with a `message/feedback-report` part.
pub fn parse_arf(raw: &[u8]) -> Option<FeedbackReport> {
    let message = MessageParser::new().parse(raw)?;
    let fields = report_part(&message, &["feedback-report"])?;
    let blocks = field_blocks(&fields);
    let all = || blocks.iter().flatten();
    let one = |name: &str| {
        all()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let many = |name: &str| -> Vec<String> {
        all()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| strip_angle(v).to_string())
            .filter(|v| !v.is_empty())
            .collect()
    };
    let original = original(&message).unwrap_or_default();
    Some(FeedbackReport {
        feedback_type: one("feedback-type").unwrap_or("").to_ascii_lowercase(),
        user_agent: one("user-agent").map(str::to_string),
        version: one("version").map(str::to_string),
        original_mail_from: one("original-mail-from").map(|v| strip_angle(v).to_string()),
        original_rcpt_to: many("original-rcpt-to"),
        arrival_date: one("arrival-date")
            .or_else(|| one("received-date"))
            .map(str::to_string),
        source_ip: one("source-ip").and_then(|v| {
            v.trim_matches(['[', ']'])
                .trim_start_matches("IPv6:")
                .parse()
                .ok()
        }),
        reported_domain: many("reported-domain"),
        reporting_mta: one("reporting-mta").and_then(host),
        message_id: original.message_id,
        from: original.from,
        to: original.to,
        queue_id: original.queue_id,
    })
}

/// The body of the first `message/<subtype>` part, for one of `subtypes`.
fn report_part(message: &Message<'_>, subtypes: &[&str]) -> Option<String> {
    message.parts.iter().find_map(|part| {
        let ct = part.content_type()?;
        let wanted = ct.ctype().eq_ignore_ascii_case("message")
            && ct
                .subtype()
                .is_some_and(|s| subtypes.iter().any(|w| s.eq_ignore_ascii_case(w)));
        if !wanted {
            return None;
        }
        let bytes: &[u8] = match &part.body {
            PartType::Binary(b) | PartType::InlineBinary(b) => b,
            PartType::Text(t) | PartType::Html(t) => t.as_bytes(),
            _ => return None,
        };
        Some(String::from_utf8_lossy(bytes).into_owned())
    })
}

/// What a returned copy of a message says about it.
#[derive(Default)]
struct Original {
    message_id: Option<String>,
    from: Option<String>,
    to: Vec<String>,
    queue_id: Option<String>,
}

impl Original {
    fn of(m: &Message<'_>) -> Original {
        let address = |a: &mail_parser::Addr<'_>| {
            a.address()
                .map(|s| s.trim().to_string())
                .filter(|s| s.contains('@'))
        };
        Original {
            message_id: m.message_id().map(str::to_string),
            from: m.from().and_then(|a| a.first()).and_then(address),
            to: m
                .to()
                .map(|a| a.iter().filter_map(address).collect())
                .unwrap_or_default(),
            queue_id: relay_queue_id(m.headers_raw()),
        }
    }
}

/// The returned message: a `message/rfc822` (or `message/global`) part, or its header block
/// as `text/rfc822-headers` (RFC 6522 section 4).
fn original(message: &Message<'_>) -> Option<Original> {
    let parser = MessageParser::new();
    message.parts.iter().skip(1).find_map(|part| {
        let ct = part.content_type()?;
        let (ctype, subtype) = (ct.ctype(), ct.subtype().unwrap_or(""));
        let whole = ctype.eq_ignore_ascii_case("message")
            && (subtype.eq_ignore_ascii_case("rfc822") || subtype.eq_ignore_ascii_case("global"));
        let headers = subtype.eq_ignore_ascii_case("rfc822-headers")
            || subtype.eq_ignore_ascii_case("global-headers");
        if !whole && !headers {
            return None;
        }
        match &part.body {
            PartType::Message(m) => Some(Original::of(m)),
            // Headers only, or a copy mail-parser could not take as a message.
            PartType::Text(t) | PartType::Html(t) => {
                parser.parse_headers(t.as_bytes()).map(|m| Original::of(&m))
            }
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                parser.parse_headers(b.as_ref()).map(|m| Original::of(&m))
            }
            PartType::Multipart(_) => None,
        }
    })
}

/// The field blocks of a `message/delivery-status` or `message/feedback-report` body (blank
/// lines separate them), names lowercase, values unfolded with whitespace runs made single
/// spaces. Written by hand: mail-parser reads one header block, not the several these bodies
/// hold.
fn field_blocks(body: &str) -> Vec<Vec<(String, String)>> {
    let mut blocks = Vec::new();
    let mut block: Vec<(String, String)> = Vec::new();
    for line in body.lines() {
        if line.trim().is_empty() {
            if !block.is_empty() {
                blocks.push(std::mem::take(&mut block));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = block.last_mut() {
                value.push(' ');
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            block.push((name.trim().to_ascii_lowercase(), value.to_string()));
        }
    }
    if !block.is_empty() {
        blocks.push(block);
    }
    for (_, value) in blocks.iter_mut().flatten() {
        *value = value.split_ascii_whitespace().collect::<Vec<_>>().join(" ");
    }
    blocks
}

fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
    block
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `rfc822; <a@b.example>` → `a@b.example` (a value without a type is taken whole).
fn typed_address(value: &str) -> String {
    let address = value.split_once(';').map_or(value, |(_, a)| a);
    strip_angle(address).to_string()
}

/// `dns; mx.example. (192.0.2.1, the server for ...)` → `mx.example`.
fn host(value: &str) -> Option<String> {
    let name = value.split_once(';').map_or(value, |(_, h)| h);
    let name = name.split_ascii_whitespace().next()?.trim_end_matches('.');
    (!name.is_empty()).then(|| name.to_string())
}

fn strip_angle(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(s)
        .trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounce::BounceClass;
    use relayward_testkit::fixture;

    #[test]
    fn rfc5965_example_is_attributed_to_the_relays_message() {
        let raw = fixture("arf-rfc5965.eml");
        let r = parse_arf(&raw).expect("an ARF report");
        assert_eq!(r.feedback_type, "abuse");
        assert_eq!(r.user_agent.as_deref(), Some("SomeGenerator/1.0"));
        assert_eq!(r.version.as_deref(), Some("1"));
        assert_eq!(
            r.original_mail_from.as_deref(),
            Some("SRS0=Vb8e=2D=example.net=somespammer@srs.relay.example.net")
        );
        assert_eq!(r.original_rcpt_to, ["user@example.com"]);
        assert_eq!(
            r.arrival_date.as_deref(),
            Some("Mon, 22 Sep 2025 10:05:11 +0200")
        );
        assert_eq!(r.source_ip, Some("192.0.2.10".parse().unwrap()));
        assert_eq!(r.reported_domain, ["example.net"]);
        assert_eq!(r.reporting_mta.as_deref(), Some("mail.example.com"));
        // The original's, never the report's own Received header (1HZBZFA84381VTPG) nor the
        // receiver's.
        assert_eq!(r.queue_id.as_deref(), Some("1HZBX3KTCQ01Y07G"));
        assert_eq!(
            r.message_id.as_deref(),
            Some("8787KJKJ3K4J3K4J3K4J3.mail@example.net")
        );
        assert_eq!(r.from.as_deref(), Some("somespammer@example.net"));
        // "<Undisclosed Recipients>" is no address.
        assert!(r.to.is_empty(), "{:?}", r.to);
        assert_eq!(r.complained_recipients(), ["user@example.com"]);
    }

    #[test]
    fn yahoo_feedback_loop_report() {
        let r = parse_arf(&fixture("arf-yahoo-cfl.eml")).expect("an ARF report");
        assert_eq!(r.feedback_type, "abuse");
        assert_eq!(r.user_agent.as_deref(), Some("Yahoo!-Mail-Feedback/2.0"));
        assert_eq!(r.version.as_deref(), Some("0.1"));
        assert_eq!(
            r.arrival_date.as_deref(),
            Some("Tue, 23 Sep 2025 07:01:04 +0000"),
            "Received-Date stands in for Arrival-Date"
        );
        assert_eq!(r.source_ip, None);
        assert_eq!(r.reported_domain, ["gardenshop.example"]);
        assert_eq!(r.queue_id.as_deref(), Some("1HZE9ZVMHW301AYD"));
        assert_eq!(
            r.message_id.as_deref(),
            Some("deals-2025-39.7f3a9c@news.gardenshop.example")
        );
        assert_eq!(r.from.as_deref(), Some("deals@gardenshop.example"));
        assert_eq!(r.to, ["pat.reader@yahoo.com"]);
        assert_eq!(r.complained_recipients(), ["pat.reader@yahoo.com"]);
    }

    #[test]
    fn without_original_rcpt_to_the_original_to_complained() {
        let raw = String::from_utf8(fixture("arf-yahoo-cfl.eml")).unwrap();
        let raw = raw.replace("Original-Rcpt-To: pat.reader@yahoo.com\r\n", "");
        let r = parse_arf(raw.as_bytes()).unwrap();
        assert!(r.original_rcpt_to.is_empty());
        assert_eq!(r.complained_recipients(), ["pat.reader@yahoo.com"]);
    }

    #[test]
    fn postfix_user_unknown() {
        let d = parse_dsn(&fixture("dsn-postfix-user-unknown.eml")).expect("a DSN");
        assert_eq!(d.reporting_mta.as_deref(), Some("mx.dest.example"));
        assert_eq!(
            d.arrival_date.as_deref(),
            Some("Mon, 12 May 2025 09:14:02 +0200 (CEST)")
        );
        assert_eq!(d.recipients.len(), 1);
        let r = &d.recipients[0];
        assert_eq!(r.final_recipient, "nobody@dest.example");
        assert_eq!(r.original_recipient.as_deref(), Some("nobody@dest.example"));
        assert_eq!(r.action, DsnAction::Failed);
        assert_eq!(r.status, "5.1.1");
        assert_eq!(r.diagnostic_type.as_deref(), Some("smtp"));
        assert_eq!(
            r.diagnostic_code.as_deref(),
            Some(
                "550 5.1.1 <nobody@dest.example>: Recipient address rejected: User unknown in \
                 local recipient table"
            )
        );
        assert_eq!(r.remote_mta.as_deref(), Some("mailstore1.dest.example"));
        // Below Postfix's own Received header (id 4ZwxKq3Y1Vz9dB) and not the DSN's arrival.
        assert_eq!(d.queue_id.as_deref(), Some("1HMXC7Q0W6G1NF6Y"));
        assert_eq!(
            d.message_id.as_deref(),
            Some("20250512071358.10442.orders@shop.example")
        );
        let c = r.classify(BounceClassifier::builtin());
        assert_eq!(
            (c.class, c.rule.as_str()),
            (BounceClass::Hard, "user-unknown")
        );
    }

    #[test]
    fn exchange_online_ndr_with_headers_only() {
        let d = parse_dsn(&fixture("dsn-exchange-online.eml")).expect("a DSN");
        assert_eq!(
            d.reporting_mta.as_deref(),
            Some("DM6PR04MB6554.namprd04.prod.outlook.com")
        );
        let r = &d.recipients[0];
        assert_eq!(r.final_recipient, "jdoe@contoso.example");
        assert_eq!(r.status, "5.1.10");
        assert_eq!(
            r.diagnostic_code.as_deref(),
            Some(
                "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient jdoe@contoso.example not \
                 found by SMTP address lookup"
            )
        );
        assert_eq!(r.remote_mta, None);
        // The relay's multi-recipient form: "id <queue id>;" with no "for".
        assert_eq!(d.queue_id.as_deref(), Some("1HPND9V4YF8J6HB7"));
        assert_eq!(
            d.message_id.as_deref(),
            Some("CAF7k2x9QeT1Invoice0611@mail.northwind.example")
        );
        let c = r.classify(BounceClassifier::builtin());
        assert_eq!(c.class, BounceClass::Hard, "{c:?}");
    }

    #[test]
    fn gmail_dsn_of_a_forwarded_message() {
        let d = parse_dsn(&fixture("dsn-gmail.eml")).expect("a DSN");
        assert_eq!(d.reporting_mta.as_deref(), Some("googlemail.com"));
        let r = &d.recipients[0];
        assert_eq!(r.final_recipient, "old.colleague@other.example");
        assert_eq!(r.original_recipient, None);
        assert_eq!(r.remote_mta.as_deref(), Some("mx.other.example"));
        assert_eq!(d.queue_id.as_deref(), Some("1HSYMJ5PT481APN5"));
        assert_eq!(
            d.message_id.as_deref(),
            Some("reminder-7781.20250715102139@lakeside-clinic.example")
        );
        assert!(r.classify(BounceClassifier::builtin()).class.is_hard());
    }

    #[test]
    fn one_kind_is_not_the_other() {
        assert!(parse_dsn(&fixture("arf-yahoo-cfl.eml")).is_none());
        assert!(parse_arf(&fixture("dsn-gmail.eml")).is_none());
        assert!(parse_arf(b"From: a@b.example\r\nSubject: hi\r\n\r\nplain mail\r\n").is_none());
        assert!(parse_dsn(b"").is_none());
    }

    #[test]
    fn status_alone_classifies() {
        let r = DsnRecipient {
            final_recipient: "a@b.example".into(),
            original_recipient: None,
            action: DsnAction::Delayed,
            status: "4.2.2".into(),
            diagnostic_type: Some("x-postfix".into()),
            diagnostic_code: Some("mailbox temporarily unavailable".into()),
            remote_mta: None,
        };
        assert_eq!(
            r.classify(BounceClassifier::builtin()).class,
            BounceClass::Soft
        );
        let r = DsnRecipient {
            status: "5.1.2".into(),
            diagnostic_code: None,
            ..r
        };
        assert_eq!(
            r.classify(BounceClassifier::builtin()).class,
            BounceClass::Hard
        );
        let r = DsnRecipient {
            status: "5.1.1".into(),
            diagnostic_type: Some("smtp".into()),
            // A reply without an enhanced code: the Status stands in.
            diagnostic_code: Some("550 Requested action not taken".into()),
            ..r
        };
        assert_eq!(
            r.classify(BounceClassifier::builtin()).class,
            BounceClass::Hard
        );
    }

    #[test]
    fn queue_id_from_headers() {
        let headers = [
            ("Received", " from x by mx.dest.example (Postfix) with ESMTPS id 4ZwxKq3Y1Vz9dB"),
            ("Subject", " by relay.example.net (relayward) with ESMTP id NOTTHIS"),
            ("received", " from h ([192.0.2.1])\r\n\tby relay.example.net (relayward) with ESMTP id 1HMXC7Q0W6G1NF6Y;\r\n\tdate"),
            ("Received", " from h by relay.example.net (relayward) with ESMTP id OLDERHOP; date"),
        ];
        assert_eq!(relay_queue_id(headers).as_deref(), Some("1HMXC7Q0W6G1NF6Y"));
        assert_eq!(
            relay_queue_id([("Received", " from a by b with SMTP id c")]),
            None
        );
    }
}
