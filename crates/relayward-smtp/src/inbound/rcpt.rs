//! RCPT TO: recipient syntax, DSN parameters, recipient limit, attribution by recipient
//! domain while MAIL FROM left it open, and the tenant's and the global suppression lists.

use std::borrow::Cow;

use relayward_core::{now, reply, Address};
use relayward_policy::{check_rcpt, MailOutcome};
use smtp_proto::RcptTo;

use super::mail::{extract_path, Refused};
use super::{sender_text, Decision, State};
use crate::IncomingRecipient;

const NOTIFY_FLAGS: u64 = smtp_proto::RCPT_NOTIFY_SUCCESS
    | smtp_proto::RCPT_NOTIFY_FAILURE
    | smtp_proto::RCPT_NOTIFY_DELAY
    | smtp_proto::RCPT_NOTIFY_NEVER;

impl State {
    pub(crate) fn rcpt(&mut self, line: &[u8], to: RcptTo<Cow<'_, str>>) {
        if self.ctx.srs.is_some() {
            return self.srs_rcpt(line, &to);
        }
        match self.rcpt_inner(line, &to) {
            Ok(()) => self.reply(&reply::RECIPIENT_OK),
            Err(Refused::Reply(r, rcpt)) => {
                let sender = self.tx.as_ref().map(|t| sender_text(t.sender.as_ref()));
                self.refuse(&r, sender, rcpt, Some("RCPT".into()));
            }
            Err(Refused::Policy(r, rcpt)) => {
                let sender = self.tx.as_ref().map(|t| sender_text(t.sender.as_ref()));
                self.refuse_policy(&r, "RCPT", sender, rcpt);
            }
            Err(Refused::Suppressed(r, hit, rcpt)) => {
                let sender = self.tx.as_ref().map(|t| sender_text(t.sender.as_ref()));
                self.refuse_policy_with(&r, "RCPT", sender, rcpt, Some(&hit));
            }
        }
    }

    fn rcpt_inner(&mut self, line: &[u8], to: &RcptTo<Cow<'_, str>>) -> Result<(), Refused> {
        let max_recipients = self.server.config.max_recipients;
        let Some(tx) = self.tx.as_mut() else {
            return Err(Refused::Reply(reply::BAD_SEQUENCE_MAIL_FIRST, None));
        };
        tx.rcpt_attempts += 1;
        if to.flags & !NOTIFY_FLAGS != 0
            || to.rrvs != 0
            || (!self.esmtp && to.flags != 0)
            || (!self.esmtp && to.orcpt.is_some())
        {
            return Err(Refused::Reply(reply::PARAM_NOT_RECOGNIZED, None));
        }
        let raw = extract_path(line).ok_or(Refused::Reply(reply::BAD_RECIPIENT_SYNTAX, None))?;
        let shown = || Some(raw.to_string());
        if !tx.smtputf8 && !raw.is_ascii() {
            return Err(Refused::Reply(reply::SMTPUTF8_REQUIRED, shown()));
        }
        let address = Address::parse(raw, tx.smtputf8)
            .map_err(|_| Refused::Reply(reply::BAD_RECIPIENT_SYNTAX, shown()))?;
        if tx.recipients.len() >= max_recipients {
            return Err(Refused::Reply(reply::TOO_MANY_RECIPIENTS, shown()));
        }
        if let Decision::Pending(candidates) = &tx.decision {
            let dir = self.server.directory.current();
            match check_rcpt(&dir, &self.facts, candidates, tx.sender.as_ref(), &address) {
                Ok(MailOutcome::Accepted { attributed, class }) => {
                    // The tenant is known only now: the sender's MAIL-time check happens here.
                    if let (Some(guard), Some(s)) = (self.server.sender_guard(), tx.sender.as_ref())
                    {
                        guard
                            .check_mail(attributed.tenant_id, attributed.connector_id, s)
                            .map_err(|r| Refused::Reply(r, shown()))?;
                    }
                    tx.decision = Decision::Accepted { attributed, class }
                }
                Ok(MailOutcome::PendingRcpt { .. }) => {
                    return Err(Refused::Reply(reply::RELAY_DENIED, shown()))
                }
                Err(r) => return Err(Refused::Policy(r, shown())),
            }
        }
        // A repeated recipient is accepted once: delivering it twice helps nobody.
        if !tx.recipients.iter().any(|r| r.address == address) {
            // Before the sender's limits: a refused recipient is not one more for them.
            if let (Some(list), Decision::Accepted { attributed, class }) =
                (self.server.suppressions.get(), &tx.decision)
            {
                if let Some(hit) = list.check(attributed.tenant_id, &address, now()) {
                    return Err(Refused::Suppressed(
                        hit.refusal(*attributed, Some(*class)),
                        Box::new(hit),
                        shown(),
                    ));
                }
            }
            if let (Some(guard), Some(s), Decision::Accepted { attributed, .. }) =
                (self.server.sender_guard(), tx.sender.as_ref(), &tx.decision)
            {
                guard
                    .check_rcpt(
                        attributed.tenant_id,
                        attributed.connector_id,
                        s,
                        &address,
                        tx.recipients.len() + 1,
                    )
                    .map_err(|r| Refused::Reply(r, shown()))?;
            }
            let mut notify = Vec::new();
            for (flag, name) in [
                (smtp_proto::RCPT_NOTIFY_SUCCESS, "SUCCESS"),
                (smtp_proto::RCPT_NOTIFY_FAILURE, "FAILURE"),
                (smtp_proto::RCPT_NOTIFY_DELAY, "DELAY"),
                (smtp_proto::RCPT_NOTIFY_NEVER, "NEVER"),
            ] {
                if to.flags & flag != 0 {
                    notify.push(name.to_string());
                }
            }
            tx.recipients.push(IncomingRecipient {
                address,
                orcpt: to.orcpt.as_ref().map(|o| format!("rfc822;{o}")),
                notify,
            });
        }
        Ok(())
    }
}
