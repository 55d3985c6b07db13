//! Every reply text relayward sends that tenants' runbooks or monitoring may search for.
//! DESIGN.md "Replies" is the contract: change a text here and nowhere else.

use std::fmt;

/// An SMTP reply: basic code, RFC 3463 enhanced status code and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: &'static str,
    pub text: std::borrow::Cow<'static, str>,
}

impl Reply {
    pub const fn new(code: u16, status: &'static str, text: &'static str) -> Self {
        Reply {
            code,
            status,
            text: std::borrow::Cow::Borrowed(text),
        }
    }

    pub fn dynamic(code: u16, status: &'static str, text: impl Into<String>) -> Self {
        Reply {
            code,
            status,
            text: std::borrow::Cow::Owned(text.into()),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply as it goes on the wire, CRLF-terminated.
    pub fn to_wire(&self) -> String {
        format!("{self}\r\n")
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.status.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.status, self.text)
        }
    }
}

/// Policy refusals (DESIGN.md "Replies").
pub const BLOCKED_UNREGISTERED: Reply = Reply::new(
    550,
    "5.7.750",
    "Service unavailable. Client blocked from sending from unregistered domains",
);
pub const TENANT_BLOCKED: Reply = Reply::new(
    550,
    "5.7.705",
    "Access denied, tenant has exceeded threshold",
);
pub const CONNECTOR_BLOCKED: Reply =
    Reply::new(550, "5.7.711", "Access denied, bad inbound connector");
pub const SENDER_RESTRICTED: Reply = Reply::new(550, "5.1.8", "Access denied, bad outbound sender");
pub const RELAY_DENIED: Reply = Reply::new(550, "5.7.64", "TenantAttribution; Relay Access Denied");
pub const MUST_STARTTLS: Reply = Reply::new(530, "5.7.0", "Must issue a STARTTLS command first");
pub const AUTH_REQUIRED: Reply = Reply::new(530, "5.7.57", "Client was not authenticated");
pub const AUTH_INVALID: Reply = Reply::new(535, "5.7.8", "Authentication credentials invalid");
pub const RATE_LIMITED: Reply = Reply::new(451, "4.7.500", "Access denied, please try again later");
pub const LOCAL_PROBLEM: Reply =
    Reply::new(451, "4.3.0", "Temporary local problem, try again later");
pub const STORAGE_FULL: Reply = Reply::new(452, "4.3.1", "Insufficient system storage");
pub const AUTH_LOCKED: Reply = Reply::new(
    454,
    "4.7.0",
    "Too many authentication failures, try again later",
);
/// A recipient on the tenant's (or the operator's global) suppression list: an earlier message
/// to it hard-bounced, was complained about, or an administrator listed it. The relay's own
/// code and text, not the remote's (that one is kept in the suppression entry), so a tenant can
/// tell the relay's refusal from the remote mailbox's.
pub const RECIPIENT_SUPPRESSED: Reply = Reply::new(
    550,
    "5.1.10",
    "Recipient address suppressed after a hard bounce",
);
/// `[limits] bare_line_ends = "reject"`: the data held a CR or LF that was not part of a CRLF.
pub const BARE_LINE_END: Reply = Reply::new(550, "5.5.2", "Bare CR or LF not allowed");

/// The SRS listener (the relay as MX of its SRS domain): an address there that is not one the
/// relay made (bad hash, expired, malformed, not SRS), and a sender that is not a bounce.
pub const SRS_BAD_RECIPIENT: Reply = Reply::new(
    550,
    "5.1.1",
    "Recipient address rejected: not a valid SRS address",
);
pub const SRS_NOT_A_BOUNCE: Reply = Reply::new(
    550,
    "5.7.1",
    "Only delivery status notifications (null or postmaster sender) are accepted here",
);

/// Protocol replies (RFC 5321, RFC 3463 and the extension RFCs).
pub const OK: Reply = Reply::new(250, "2.0.0", "Ok");
pub const SENDER_OK: Reply = Reply::new(250, "2.1.0", "Sender ok");
pub const RECIPIENT_OK: Reply = Reply::new(250, "2.1.5", "Recipient ok");
pub const START_DATA: Reply = Reply::new(354, "", "End data with <CR><LF>.<CR><LF>");
pub const BYE: Reply = Reply::new(221, "2.0.0", "Bye");
pub const RESET_OK: Reply = Reply::new(250, "2.0.0", "Reset state");
pub const NOOP_OK: Reply = Reply::new(250, "2.0.0", "Ok");
pub const VRFY_CANNOT: Reply = Reply::new(
    252,
    "2.5.0",
    "Cannot VRFY user, but will accept message and attempt delivery",
);
pub const READY_TLS: Reply = Reply::new(220, "2.0.0", "Ready to start TLS");
pub const AUTH_OK: Reply = Reply::new(235, "2.7.0", "Authentication successful");
pub const SYNTAX_ERROR: Reply = Reply::new(500, "5.5.2", "Syntax error, command unrecognized");
pub const CONTROL_BYTES: Reply = Reply::new(
    500,
    "5.5.2",
    "Syntax error, control characters not allowed in commands",
);
pub const TOO_MANY_PIPELINED: Reply = Reply::new(
    421,
    "4.7.0",
    "Too many pipelined commands, closing connection",
);
pub const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.6", "Line too long");
pub const BAD_ARGUMENTS: Reply =
    Reply::new(501, "5.5.4", "Syntax error in parameters or arguments");
pub const BAD_SENDER_SYNTAX: Reply = Reply::new(501, "5.1.7", "Bad sender address syntax");
pub const BAD_RECIPIENT_SYNTAX: Reply = Reply::new(501, "5.1.3", "Bad recipient address syntax");
pub const NOT_IMPLEMENTED: Reply = Reply::new(502, "5.5.1", "Command not implemented");
pub const BAD_SEQUENCE_MAIL_FIRST: Reply = Reply::new(503, "5.5.1", "Error: need MAIL command");
pub const BAD_SEQUENCE_RCPT_FIRST: Reply = Reply::new(503, "5.5.1", "Error: need RCPT command");
pub const BAD_SEQUENCE_NESTED_MAIL: Reply = Reply::new(503, "5.5.1", "Error: nested MAIL command");
pub const BAD_SEQUENCE_EHLO_FIRST: Reply = Reply::new(503, "5.5.1", "Error: send HELO/EHLO first");
pub const ALREADY_TLS: Reply = Reply::new(503, "5.5.1", "TLS already active");
pub const ALREADY_AUTH: Reply = Reply::new(503, "5.5.1", "Already authenticated");
pub const AUTH_NEEDS_TLS: Reply = Reply::new(
    538,
    "5.7.11",
    "Encryption required for requested authentication mechanism",
);
pub const AUTH_MECH_UNKNOWN: Reply = Reply::new(504, "5.5.4", "Unrecognized authentication type");
pub const AUTH_CANCELLED: Reply = Reply::new(501, "5.0.0", "Authentication cancelled");
pub const PARAM_NOT_RECOGNIZED: Reply = Reply::new(
    555,
    "5.5.4",
    "MAIL FROM/RCPT TO parameters not recognized or not implemented",
);
pub const MESSAGE_TOO_BIG: Reply = Reply::new(
    552,
    "5.3.4",
    "Message size exceeds fixed maximum message size",
);
pub const TOO_MANY_RECIPIENTS: Reply = Reply::new(452, "4.5.3", "Too many recipients");
pub const LOOP_DETECTED: Reply = Reply::new(554, "5.4.6", "Too many hops, mail loop detected");
pub const TEXT_LINE_TOO_LONG: Reply = Reply::new(
    500,
    "5.5.6",
    "Text line too long, maximum is 998 characters",
);
pub const TOO_MANY_CONNECTIONS: Reply =
    Reply::new(421, "4.7.0", "Too many connections, try again later");
pub const TOO_MANY_ERRORS: Reply = Reply::new(421, "4.7.0", "Too many errors, closing connection");
pub const TIMEOUT: Reply = Reply::new(421, "4.4.2", "Timeout exceeded, closing connection");
pub const SHUTTING_DOWN: Reply = Reply::new(421, "4.3.2", "Service shutting down, try again later");
pub const SMTPUTF8_REQUIRED: Reply =
    Reply::new(553, "5.6.7", "Non-ASCII address requires SMTPUTF8");
pub const NO_VALID_RECIPIENTS: Reply = Reply::new(554, "5.5.1", "No valid recipients");
pub const TLS_NOT_AVAILABLE: Reply = Reply::new(454, "4.7.0", "TLS not available");

// Inbound SMTP session replies (relayward-smtp).
pub const HELP: Reply = Reply::new(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
);
pub const AUTH_CHALLENGE_EMPTY: Reply = Reply::new(334, "", "");
/// Base64 of "Username:" (the AUTH LOGIN prompt every client expects).
pub const AUTH_CHALLENGE_USERNAME: Reply = Reply::new(334, "", "VXNlcm5hbWU6");
/// Base64 of "Password:".
pub const AUTH_CHALLENGE_PASSWORD: Reply = Reply::new(334, "", "UGFzc3dvcmQ6");
pub const AUTH_BAD_ENCODING: Reply =
    Reply::new(501, "5.5.2", "Cannot Base64-decode client response");
pub const AUTH_IN_TRANSACTION: Reply = Reply::new(
    503,
    "5.5.1",
    "Error: AUTH not permitted during a mail transaction",
);

/// `220 <hostname> ESMTP relayward`: no enhanced code, none is negotiated yet (RFC 2034).
pub fn greeting(hostname: &str) -> Reply {
    Reply::dynamic(220, "", format!("{hostname} ESMTP relayward"))
}

/// `250 2.0.0 Ok: queued as <id>`, only once the message is durably spooled.
pub fn queued(queue_id: &str) -> Reply {
    Reply::dynamic(250, "2.0.0", format!("Ok: queued as {queue_id}"))
}

/// A reply code as a metrics label: the codes an SMTP server sends, else "other" (the label
/// set stays bounded whatever a bug might send).
pub fn code_label(code: u16) -> &'static str {
    match code {
        211 => "211",
        214 => "214",
        220 => "220",
        221 => "221",
        235 => "235",
        250 => "250",
        251 => "251",
        252 => "252",
        334 => "334",
        354 => "354",
        421 => "421",
        450 => "450",
        451 => "451",
        452 => "452",
        454 => "454",
        455 => "455",
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        521 => "521",
        530 => "530",
        534 => "534",
        535 => "535",
        538 => "538",
        550 => "550",
        551 => "551",
        552 => "552",
        553 => "553",
        554 => "554",
        555 => "555",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_texts_are_exact() {
        assert_eq!(
            BLOCKED_UNREGISTERED.to_wire(),
            "550 5.7.750 Service unavailable. Client blocked from sending from unregistered domains\r\n"
        );
        assert_eq!(
            RELAY_DENIED.to_string(),
            "550 5.7.64 TenantAttribution; Relay Access Denied"
        );
        assert_eq!(
            RECIPIENT_SUPPRESSED.to_wire(),
            "550 5.1.10 Recipient address suppressed after a hard bounce\r\n"
        );
        assert_eq!(
            START_DATA.to_string(),
            "354 End data with <CR><LF>.<CR><LF>"
        );
    }
}
