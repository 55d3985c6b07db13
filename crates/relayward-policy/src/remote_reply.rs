//! What a remote server's reply to a delivery attempt says about a tenant's mail, for the abuse
//! detector's counters and the metrics.

use serde::{Deserialize, Serialize};

/// What a remote server's answer to a delivery attempt says about the tenant's mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteClass {
    Delivered,
    /// Refused as spam or by policy (block lists, reputation): the signal that a tenant is
    /// burning the relay's IPs.
    SpamBlock,
    /// The recipient does not exist (5.1.x): address-list harvesting shows up here.
    BadMailbox,
    Other,
}

/// Classify a remote server's reply to a delivery attempt for the detector. `enhanced` may be
/// empty, in which case a leading `x.y.z` token of `text` is used (many servers put it there).
/// The bounce classifier decides ([`crate::bounce::BounceClassifier::current`]), so the detector,
/// the metrics, delivery and the suppression list agree on every reply.
pub fn classify_remote_reply(code: u16, enhanced: &str, text: &str) -> RemoteClass {
    crate::bounce::BounceClassifier::current()
        .class_of(code, enhanced, text)
        .remote_class()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifier() {
        use RemoteClass::*;
        let c = classify_remote_reply;
        assert_eq!(c(250, "2.0.0", "Ok: queued"), Delivered);
        assert_eq!(c(550, "5.7.1", "Message rejected"), SpamBlock);
        assert_eq!(
            c(
                550,
                "5.7.350",
                "Remote server returned message detected as spam"
            ),
            SpamBlock
        );
        assert_eq!(
            c(
                554,
                "",
                "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"
            ),
            SpamBlock
        );
        assert_eq!(
            c(421, "4.7.0", "IP listed on a DNS block list, try later"),
            SpamBlock
        );
        assert_eq!(c(450, "4.7.1", "Greylisted, please try again later"), Other);
        assert_eq!(
            c(550, "5.7.26", "Unauthenticated email is not accepted"),
            Other
        );
        assert_eq!(
            c(550, "5.1.1", "The email account does not exist"),
            BadMailbox
        );
        assert_eq!(c(550, "", "5.1.10 Recipient not found"), BadMailbox);
        assert_eq!(
            c(550, "", "User unknown in local recipient table"),
            BadMailbox
        );
        assert_eq!(c(554, "", "Your IP is blacklisted"), SpamBlock);
        assert_eq!(c(451, "4.3.0", "Temporary local problem"), Other);
        assert_eq!(c(552, "5.2.2", "Mailbox full"), Other);
    }
}
