//! MAIL FROM: sender syntax, extension parameters, attribution and the relay rule.

use std::borrow::Cow;

use relayward_core::{reply, Address, Reply};
use relayward_policy::{check_mail, MailOutcome};
use smtp_proto::MailFrom;

use super::{sender_text, Decision, State, Transaction};

/// MAIL parameters of the extensions we advertise (SIZE, 8BITMIME, SMTPUTF8, DSN); anything
/// else smtp-proto understands is still 555 here.
const MAIL_FLAGS_ALLOWED: u64 = smtp_proto::MAIL_BODY_7BIT
    | smtp_proto::MAIL_BODY_8BITMIME
    | smtp_proto::MAIL_RET_FULL
    | smtp_proto::MAIL_RET_HDRS
    | smtp_proto::MAIL_SMTPUTF8;

/// A refused MAIL or RCPT: a protocol reply, or the relay rule's refusal (explained), each with
/// the address it concerns.
pub(crate) enum Refused {
    Reply(Reply, Option<String>),
    Policy(relayward_policy::Refusal, Option<String>),
    /// A suppressed recipient, with the entry that matched.
    Suppressed(
        relayward_policy::Refusal,
        Box<relayward_policy::suppression::Hit>,
        Option<String>,
    ),
}

impl From<(Reply, Option<String>)> for Refused {
    fn from((r, a): (Reply, Option<String>)) -> Self {
        Refused::Reply(r, a)
    }
}

impl State {
    pub(crate) fn mail(&mut self, line: &[u8], from: MailFrom<Cow<'_, str>>) {
        match self.mail_inner(line, &from) {
            Ok(()) => self.reply(&reply::SENDER_OK),
            Err(Refused::Reply(r, sender)) => self.refuse(&r, sender, None, Some("MAIL".into())),
            Err(Refused::Policy(r, sender)) => self.refuse_policy(&r, "MAIL", sender, None),
            Err(Refused::Suppressed(r, hit, sender)) => {
                self.refuse_policy_with(&r, "MAIL", sender, None, Some(&hit))
            }
        }
    }

    fn mail_inner(&mut self, line: &[u8], from: &MailFrom<Cow<'_, str>>) -> Result<(), Refused> {
        if self.helo.is_none() {
            return Err(Refused::Reply(reply::BAD_SEQUENCE_EHLO_FIRST, None));
        }
        if self.tx.is_some() {
            return Err(Refused::Reply(reply::BAD_SEQUENCE_NESTED_MAIL, None));
        }
        let unsupported = from.flags & !MAIL_FLAGS_ALLOWED != 0
            || from.trans_id.is_some()
            || from.by != 0
            || from.solicit.is_some()
            || from.mtrk.is_some()
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mt_priority != 0;
        let any_param =
            from.flags != 0 || from.size != 0 || from.env_id.is_some() || from.auth.is_some();
        // HELO clients get no extensions, so no parameters either.
        if unsupported || (!self.esmtp && any_param) {
            return Err(Refused::Reply(reply::PARAM_NOT_RECOGNIZED, None));
        }

        let raw = extract_path(line).ok_or(Refused::Reply(reply::BAD_SENDER_SYNTAX, None))?;
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        let sender = if raw.is_empty() {
            None
        } else if !smtputf8 && !raw.is_ascii() {
            return Err(Refused::Reply(
                reply::SMTPUTF8_REQUIRED,
                Some(raw.to_string()),
            ));
        } else {
            match Address::parse(raw, smtputf8) {
                Ok(a) => Some(a),
                Err(_) => {
                    return Err(Refused::Reply(
                        reply::BAD_SENDER_SYNTAX,
                        Some(raw.to_string()),
                    ))
                }
            }
        };
        let shown = || Some(sender_text(sender.as_ref()));
        if from.size as u64 > self.server.config.max_message_size {
            return Err(Refused::Reply(reply::MESSAGE_TOO_BIG, shown()));
        }
        if self.ctx.srs.is_some() {
            return self.srs_mail(sender, from, smtputf8).map_err(Refused::from);
        }

        // The directory may have changed since connect: decide with the current one.
        let dir = self.server.directory.current();
        self.attribution = relayward_policy::attribute(&dir, &self.facts);
        let decision = match check_mail(&dir, &self.facts, &self.attribution, sender.as_ref()) {
            Ok(MailOutcome::Accepted { attributed, class }) => {
                // Per-sender limits, once the tenant is known (the null sender has none).
                if let (Some(guard), Some(s)) = (self.server.sender_guard(), sender.as_ref()) {
                    guard
                        .check_mail(attributed.tenant_id, attributed.connector_id, s)
                        .map_err(|r| Refused::Reply(r, shown()))?;
                }
                Decision::Accepted { attributed, class }
            }
            Ok(MailOutcome::PendingRcpt { candidates }) => Decision::Pending(candidates),
            Err(r) => return Err(Refused::Policy(r, shown())),
        };
        self.tx = Some(Transaction {
            sender,
            decision,
            size_hint: from.size as u64,
            body_8bit: from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0,
            smtputf8,
            dsn_ret: if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
                Some("FULL".into())
            } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
                Some("HDRS".into())
            } else {
                None
            },
            dsn_envid: from.env_id.as_ref().map(|e| e.to_string()),
            recipients: Vec::new(),
            rcpt_attempts: 0,
        });
        Ok(())
    }
}

/// The text between `<` and `>` of a MAIL FROM / RCPT TO line, exactly as sent (quotes and
/// source route included), for `Address::parse`. smtp-proto has already checked the overall
/// syntax but normalises the path (drops quotes and routes), and relay decisions must see the
/// domain exactly as our own parser reads it.
pub(crate) fn extract_path(line: &[u8]) -> Option<&str> {
    let colon = memchr::memchr(b':', line)?;
    let rest = &line[colon + 1..];
    let lt = rest.iter().position(|&b| b != b' ')?;
    if rest[lt] != b'<' {
        return None;
    }
    let rest = &rest[lt + 1..];
    let mut in_quote = false;
    let mut escaped = false;
    for (i, &b) in rest.iter().enumerate() {
        if in_quote {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_quote = false;
            }
        } else if b == b'"' {
            in_quote = true;
        } else if b == b'>' {
            return std::str::from_utf8(&rest[..i]).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::extract_path;

    #[test]
    fn paths() {
        assert_eq!(
            extract_path(b"MAIL FROM:<a@b.example>\r\n"),
            Some("a@b.example")
        );
        assert_eq!(extract_path(b"MAIL FROM:<>\r\n"), Some(""));
        assert_eq!(
            extract_path(b"RCPT TO:<\"x>y@z\"@b.example> NOTIFY=NEVER\r\n"),
            Some("\"x>y@z\"@b.example")
        );
        assert_eq!(
            extract_path(b"RCPT TO:<@r.example:u@b.example>\r\n"),
            Some("@r.example:u@b.example")
        );
        assert_eq!(extract_path(b"MAIL FROM:a@b.example\r\n"), None);
        assert_eq!(extract_path(b"MAIL FROM:<a@b.example\r\n"), None);
    }
}
