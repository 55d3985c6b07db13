//! What the spool keeps next to a message body: its envelope and the state of each recipient.

use serde::{Deserialize, Serialize};

use super::QueueId;

/// Delivery state of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecipientStatus {
    Queued,
    Deferred,
    Delivered,
    Bounced,
    Held,
}

impl RecipientStatus {
    /// Delivered or bounced: nothing more will be attempted for this recipient.
    pub fn is_final(self) -> bool {
        matches!(self, RecipientStatus::Delivered | RecipientStatus::Bounced)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipient {
    pub address: String,
    #[serde(default)]
    pub orcpt: Option<String>,
    /// DSN NOTIFY keywords: NEVER, SUCCESS, FAILURE, DELAY. Empty when not given.
    #[serde(default)]
    pub notify: Vec<String>,
    pub status: RecipientStatus,
    #[serde(default)]
    pub attempts: u32,
    /// Unix seconds.
    #[serde(default)]
    pub next_attempt_at: i64,
    #[serde(default)]
    pub last_reply: Option<String>,
}

impl Recipient {
    /// A queued recipient without DSN parameters.
    pub fn new(address: impl Into<String>) -> Recipient {
        Recipient {
            address: address.into(),
            orcpt: None,
            notify: Vec::new(),
            status: RecipientStatus::Queued,
            attempts: 0,
            next_attempt_at: 0,
            last_reply: None,
        }
    }
}

/// Everything known about a message besides its body. Stored as JSON; fields added later must be
/// `#[serde(default)]` so that spools written by older versions still load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub queue_id: QueueId,
    /// Unix seconds.
    pub received_at: i64,
    #[serde(default)]
    pub tenant_id: Option<i64>,
    #[serde(default)]
    pub connector_id: Option<i64>,
    pub client_ip: String,
    pub helo: String,
    #[serde(default)]
    pub auth_user: Option<String>,
    #[serde(default)]
    pub tls: bool,
    /// "" for the null sender.
    pub sender: String,
    /// The envelope sender as received when `sender` is its SRS rewriting (relayed mail of an
    /// unregistered sender): the trace and DSNs use it.
    #[serde(default)]
    pub original_sender: Option<String>,
    /// Stored as `registered`, `unregistered` or `null`.
    pub sender_class: relayward_core::SenderClass,
    #[serde(default)]
    pub header_from_mismatch: bool,
    /// The content scanner accepted the message with a spam verdict (a header added or the
    /// subject rewritten): it leaves from the high-risk egress pool.
    #[serde(default)]
    pub spam_verdict: bool,
    #[serde(default)]
    pub message_id: Option<String>,
    pub size: u64,
    /// BODY=8BITMIME
    #[serde(default)]
    pub body_8bit: bool,
    #[serde(default)]
    pub smtputf8: bool,
    /// FULL | HDRS
    #[serde(default)]
    pub dsn_ret: Option<String>,
    #[serde(default)]
    pub dsn_envid: Option<String>,
    pub recipients: Vec<Recipient>,
    #[serde(default)]
    pub held: bool,
}
