//! Reports that come back to the SRS listener about mail the relay sent:
//!
//! - spam complaints from receiving providers' feedback loops, ARF reports (RFC 5965) sent to
//!   the feedback address (`[srs] feedback_address`);
//! - delivery status notifications (RFC 3464) of forwarded mail, which its SRS envelope sender
//!   brings back here after the receiver first accepted it.
//!
//! Each report is matched to the message it is about — by the relay's queue id in the
//! original's `Received:` header, else by its Message-ID — through the message trace. A
//! complaint counts against that message's tenant (its reputation) and suppresses the
//! complaining recipient for the tenant; a hard bounce counts towards the tenant's bounce rate
//! and suppresses the bounced recipient.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};

use relayward_core::{SuppressionSource, TenantId, TraceQuery};
use relayward_policy::bounce::BounceClassifier;
use relayward_policy::report::{parse_arf, parse_dsn, DsnAction};
use relayward_smtp::{FeedbackError, FeedbackMessage};
use relayward_store::Store;

use crate::abuse::Abuse;

pub struct FeedbackIntake {
    /// The feedback address, lowercase; `None`: only returned DSNs are read.
    address: Option<String>,
    store: Arc<dyn Store>,
    abuse: Weak<Abuse>,
    /// (queue id, complaining recipient) already counted: a report sent again (providers
    /// resend, and anyone can send one) counts once.
    seen: Mutex<HashSet<(String, String)>>,
}

/// The message a report complains about, as the trace knows it.
struct Original {
    tenant: TenantId,
    queue_id: Option<String>,
    /// Its recipients (lowercase), to check the complainer was one.
    recipients: HashSet<String>,
}

/// Complaints remembered for de-duplication before the set starts afresh.
const SEEN_MAX: usize = 100_000;
/// Trace events read to learn a message's recipients.
const EVENTS_MAX: u32 = 5_000;

impl FeedbackIntake {
    pub fn new(address: Option<&str>, store: Arc<dyn Store>, abuse: Weak<Abuse>) -> FeedbackIntake {
        FeedbackIntake {
            address: address.map(|a| a.trim().to_ascii_lowercase()),
            store,
            abuse,
            seen: Mutex::new(HashSet::new()),
        }
    }

    /// Whether this complaint is new (and remembers it).
    fn first_time(&self, queue_id: &str, recipient: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= SEEN_MAX {
            seen.clear();
        }
        seen.insert((queue_id.to_string(), recipient.to_ascii_lowercase()))
    }

    pub fn address(&self) -> Option<&str> {
        self.address.as_deref()
    }

    /// The message the relay's queue id or the Message-ID names, through the trace.
    async fn find(
        &self,
        queue_id: Option<&str>,
        message_id: Option<&str>,
    ) -> Result<Option<Original>, FeedbackError> {
        let mut queries = Vec::new();
        if let Some(q) = queue_id {
            queries.push(TraceQuery {
                queue_id: Some(q.to_string()),
                limit: EVENTS_MAX,
                ..TraceQuery::default()
            });
        }
        if let Some(m) = message_id {
            queries.push(TraceQuery {
                message_id: Some(m.to_string()),
                limit: EVENTS_MAX,
                ..TraceQuery::default()
            });
        }
        for q in queries {
            let events = self
                .store
                .search_trace(&q)
                .await
                .map_err(|e| FeedbackError::Unavailable(e.to_string()))?;
            if let Some(ev) = events.iter().find(|e| e.tenant_id.is_some()) {
                let recipients = events
                    .iter()
                    .filter(|e| e.queue_id == ev.queue_id)
                    .filter_map(|e| e.recipient.as_deref())
                    .map(str::to_ascii_lowercase)
                    .collect();
                return Ok(Some(Original {
                    tenant: ev.tenant_id.unwrap_or_default(),
                    queue_id: ev.queue_id.clone(),
                    recipients,
                }));
            }
        }
        Ok(None)
    }

    /// Takes one report; the detail says what came of it, for the trace.
    pub async fn take(&self, msg: FeedbackMessage) -> Result<String, FeedbackError> {
        let Some(report) = parse_arf(&msg.data) else {
            tracing::info!(queue_id = %msg.queue_id, "message to the feedback address is no ARF report; ignored");
            return Ok("not an ARF feedback report (RFC 5965); nothing counted".into());
        };
        let kind = report.feedback_type.clone();
        let found = self
            .find(report.queue_id.as_deref(), report.message_id.as_deref())
            .await?;
        let Some(original) = found else {
            tracing::warn!(
                queue_id = %msg.queue_id,
                original_queue_id = report.queue_id.as_deref().unwrap_or("-"),
                message_id = report.message_id.as_deref().unwrap_or("-"),
                "feedback report about a message the trace does not know"
            );
            return Ok(format!(
                "{kind} report about a message not in the trace (queue id {}, Message-ID {}); nothing counted",
                report.queue_id.as_deref().unwrap_or("none"),
                report.message_id.as_deref().unwrap_or("none")
            ));
        };
        let Some(abuse) = self.abuse.upgrade() else {
            return Err(FeedbackError::Unavailable("the relay is stopping".into()));
        };
        // Only complaints count against the tenant; other feedback types (fraud, virus, opt-out)
        // are recorded in the trace for people to read.
        let is_complaint = matches!(kind.as_str(), "abuse" | "");
        let qid = original.queue_id.clone().unwrap_or_default();
        // The complainer must be one of the message's recipients; a provider that redacts the
        // recipient is taken at its word, once per message.
        let named = report.complained_recipients();
        let (known, strangers): (Vec<String>, Vec<String>) = named
            .into_iter()
            .partition(|r| original.recipients.contains(&r.to_ascii_lowercase()));
        let counted = if !is_complaint {
            false
        } else if known.is_empty() && strangers.is_empty() {
            self.first_time(&qid, "")
        } else {
            known.iter().any(|r| self.first_time(&qid, r))
        };
        if counted {
            abuse.complaint(original.tenant);
        }
        let mut suppressed = Vec::new();
        if is_complaint {
            for rcpt in known {
                abuse
                    .suppress(
                        Some(original.tenant),
                        &rcpt,
                        SuppressionSource::Complaint,
                        &format!("spam complaint ({kind} report)"),
                    )
                    .await
                    .map_err(|e| FeedbackError::Unavailable(e.to_string()))?;
                suppressed.push(rcpt);
            }
        }
        tracing::info!(
            tenant = original.tenant.0,
            original_queue_id = original.queue_id.as_deref().unwrap_or("-"),
            feedback_type = %kind,
            counted,
            "feedback report taken"
        );
        let verdict = if counted {
            ": counted as a complaint".to_string()
        } else if !is_complaint {
            ": not a complaint, not counted".to_string()
        } else if !strangers.is_empty() && suppressed.is_empty() {
            format!(
                ": {} did not receive that message, not counted",
                strangers.join(", ")
            )
        } else {
            ": already counted".to_string()
        };
        Ok(format!(
            "{kind} report about queue id {} of tenant {}{}{}",
            original.queue_id.as_deref().unwrap_or("-"),
            original.tenant,
            verdict,
            if suppressed.is_empty() {
                String::new()
            } else {
                format!("; suppressed {}", suppressed.join(", "))
            }
        ))
    }
}

impl FeedbackIntake {
    /// A DSN returned through an SRS address (already on its way to the original sender):
    /// each recipient it reports as a hard bounce counts towards the bounce rate of the
    /// tenant whose message it was, and is suppressed for that tenant. Runs after the 250.
    pub async fn returned(&self, data: &[u8]) {
        let Some(report) = parse_dsn(data) else {
            return;
        };
        let classifier = BounceClassifier::current();
        let hard: Vec<String> = report
            .recipients
            .iter()
            .filter(|r| r.action == DsnAction::Failed)
            .filter(|r| r.classify(classifier).class.is_hard())
            .map(|r| r.final_recipient.clone())
            .collect();
        if hard.is_empty() {
            return;
        }
        let original = match self
            .find(report.queue_id.as_deref(), report.message_id.as_deref())
            .await
        {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "returned DSN not attributed");
                return;
            }
        };
        let Some(abuse) = self.abuse.upgrade() else {
            return;
        };
        let qid = original.queue_id.clone().unwrap_or_default();
        for rcpt in hard {
            // A bounce of someone the message never went to, or one already counted, is not.
            let key = rcpt.to_ascii_lowercase();
            if !original.recipients.contains(&key)
                || !self.first_time(&qid, &format!("bounce {key}"))
            {
                continue;
            }
            abuse.returned_hard_bounce(original.tenant);
            if let Err(e) = abuse
                .suppress(
                    Some(original.tenant),
                    &rcpt,
                    SuppressionSource::HardBounce,
                    "hard bounce in a returned delivery status notification",
                )
                .await
            {
                tracing::warn!(tenant = original.tenant.0, error = %e, "bounced recipient not suppressed");
            }
        }
    }
}
