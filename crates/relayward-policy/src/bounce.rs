//! Bounce classification: what a remote server's reply to a delivery attempt, or a recipient of
//! a returned DSN, says about the mail ([`BounceClass`]). One classifier serves delivery (which
//! destinations to slow down), the suppression list (hard bounces), the tenants' reputation and
//! the abuse detector ([`crate::remote_reply::classify_remote_reply`] delegates here).
//!
//! The rules are data: `contrib/bounce-rules.toml` at the top of the source tree is the
//! built-in set, compiled in; an operator's file of the same form is tried before it. A rule
//! names a class and any of: reply codes (`"4xx"`), enhanced status codes as the IANA registry
//! writes them (`"5.1.1"`, `"5.1."`, `"X.7.26"`, `"5.7.606-649"`) and a case-insensitive
//! regular expression over the reply text; the first rule whose conditions all hold wins.
//!
//! Classification runs on every delivery attempt, so the code and status conditions are
//! checked first and all the rules' regular expressions run as one [`RegexSet`], once per
//! reply and only when a rule with a text condition is reached.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::{RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Deserializer, Serialize};

use crate::remote_reply::RemoteClass;

/// The built-in rules (one definition: the file operators read and copy from).
const BUILTIN_RULES: &str = include_str!("../../../contrib/bounce-rules.toml");

/// The rule name reported when no rule matched (the class is then [`BounceClass::Other`]).
pub const UNMATCHED: &str = "unmatched";

/// The longest stretch of reply text the regular expressions look at. Providers put what
/// matters in the first lines; a pathological multi-kilobyte reply must not cost more.
const MAX_TEXT: usize = 2048;

/// What a remote reply says about the mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BounceClass {
    Delivered,
    /// The recipient address does not exist: suppressed, and counted as a bounce.
    Hard,
    /// A temporary problem of the recipient or the receiving system (mailbox full, greylisting).
    Soft,
    /// Refused as spam or by the receiver's policy.
    SpamPolicy,
    /// The receiver throttles the sending IP or domain.
    RateLimit,
    /// Refused or deferred for the sending IP's or domain's reputation or a block-list listing.
    Reputation,
    /// SPF, DKIM, DMARC, reverse DNS or SMTP AUTH did not pass.
    AuthFailure,
    /// The message itself: size, format, content, virus.
    MessageRejected,
    Other,
}

impl BounceClass {
    pub const ALL: [BounceClass; 9] = [
        BounceClass::Delivered,
        BounceClass::Hard,
        BounceClass::Soft,
        BounceClass::SpamPolicy,
        BounceClass::RateLimit,
        BounceClass::Reputation,
        BounceClass::AuthFailure,
        BounceClass::MessageRejected,
        BounceClass::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BounceClass::Delivered => "delivered",
            BounceClass::Hard => "hard",
            BounceClass::Soft => "soft",
            BounceClass::SpamPolicy => "spam_policy",
            BounceClass::RateLimit => "rate_limit",
            BounceClass::Reputation => "reputation",
            BounceClass::AuthFailure => "auth_failure",
            BounceClass::MessageRejected => "message_rejected",
            BounceClass::Other => "other",
        }
    }

    /// The abuse detector's coarser view of the same reply.
    pub fn remote_class(self) -> RemoteClass {
        match self {
            BounceClass::Delivered => RemoteClass::Delivered,
            BounceClass::Hard => RemoteClass::BadMailbox,
            BounceClass::SpamPolicy | BounceClass::Reputation => RemoteClass::SpamBlock,
            _ => RemoteClass::Other,
        }
    }

    /// The recipient does not exist: it goes on the tenant's suppression list.
    pub fn is_hard(self) -> bool {
        self == BounceClass::Hard
    }

    /// The destination asked the relay to send less.
    pub fn slows_destination(self) -> bool {
        matches!(self, BounceClass::RateLimit | BounceClass::Reputation)
    }
}

impl fmt::Display for BounceClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classification and the name of the rule that made it ([`UNMATCHED`] when none did).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classified {
    pub class: BounceClass,
    pub rule: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BounceRulesError {
    #[error("cannot read bounce rules {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bounce rules {origin}: {source}")]
    Syntax {
        origin: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("bounce rules {origin}, rule {rule:?}: {reason}")]
    InvalidRule {
        origin: String,
        rule: String,
        reason: String,
    },
    #[error("a bounce classifier is already installed")]
    AlreadyInstalled,
}

/// Reply-code condition: each digit, or any (`x`).
#[derive(Debug, Clone, Copy)]
struct CodePattern([Option<u8>; 3]);

impl CodePattern {
    fn parse(s: &str) -> Option<CodePattern> {
        let b = s.as_bytes();
        if b.len() != 3 || !(b'2'..=b'5').contains(&b[0]) {
            return None;
        }
        let mut digits = [None; 3];
        for (d, &c) in digits.iter_mut().zip(b) {
            *d = match c {
                b'0'..=b'9' => Some(c - b'0'),
                b'x' | b'X' => None,
                _ => return None,
            };
        }
        Some(CodePattern(digits))
    }

    fn matches(&self, code: u16) -> bool {
        let digits = [
            (code / 100) as u8,
            (code / 10 % 10) as u8,
            (code % 10) as u8,
        ];
        code < 1000
            && self
                .0
                .iter()
                .zip(digits)
                .all(|(p, d)| p.is_none_or(|p| p == d))
    }
}

/// An RFC 3463 status as found in a reply: class, subject, detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Status {
    class: u8,
    subject: u16,
    detail: u16,
}

impl Status {
    fn parse(s: &str) -> Option<Status> {
        let mut it = s.split('.');
        let class = it.next()?;
        let subject = it.next()?;
        let detail = it.next()?;
        let number = |p: &str| -> Option<u16> {
            ((1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())?
        };
        let class = match class {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        if it.next().is_some() {
            return None;
        }
        Some(Status {
            class,
            subject: number(subject)?,
            detail: number(detail)?,
        })
    }
}

/// Status condition in the IANA registry's notation: `5.1.1`, `5.1.` (any detail), `X.7.26`
/// (any class), `5.7.606-649` (a detail range).
#[derive(Debug, Clone, Copy)]
struct StatusPattern {
    class: Option<u8>,
    subject: u16,
    detail: Option<(u16, u16)>,
}

impl StatusPattern {
    fn parse(s: &str) -> Option<StatusPattern> {
        let mut it = s.split('.');
        let class = match it.next()? {
            "X" | "x" => None,
            "2" => Some(2),
            "4" => Some(4),
            "5" => Some(5),
            _ => return None,
        };
        let number = |p: &str| -> Option<u16> {
            ((1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
                .then(|| p.parse().ok())?
        };
        let subject = number(it.next()?)?;
        let detail = match it.next()? {
            "" => None,
            d => match d.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (number(lo)?, number(hi)?);
                    if lo > hi {
                        return None;
                    }
                    Some((lo, hi))
                }
                None => {
                    let d = number(d)?;
                    Some((d, d))
                }
            },
        };
        if it.next().is_some() {
            return None;
        }
        Some(StatusPattern {
            class,
            subject,
            detail,
        })
    }

    fn matches(&self, s: Status) -> bool {
        self.class.is_none_or(|c| c == s.class)
            && self.subject == s.subject
            && self
                .detail
                .is_none_or(|(lo, hi)| (lo..=hi).contains(&s.detail))
    }
}

#[derive(Debug)]
struct Rule {
    name: Box<str>,
    class: BounceClass,
    codes: Box<[CodePattern]>,
    statuses: Box<[StatusPattern]>,
    /// Index of the rule's expression in the classifier's [`RegexSet`].
    text: Option<usize>,
}

/// A rules file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    class: BounceClass,
    #[serde(default, deserialize_with = "one_or_many")]
    code: Vec<String>,
    #[serde(default, deserialize_with = "one_or_many")]
    status: Vec<String>,
    #[serde(default)]
    text: Option<String>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

fn parse_rules(toml_text: &str, origin: &str) -> Result<Vec<RuleSpec>, BounceRulesError> {
    let file: RulesFile = toml::from_str(toml_text).map_err(|e| BounceRulesError::Syntax {
        origin: origin.to_string(),
        source: Box::new(e),
    })?;
    let mut seen = std::collections::HashSet::new();
    for spec in &file.rule {
        let invalid = |reason: String| BounceRulesError::InvalidRule {
            origin: origin.to_string(),
            rule: spec.name.clone(),
            reason,
        };
        if spec.name.trim().is_empty() {
            return Err(invalid("the name is empty".into()));
        }
        if !seen.insert(spec.name.as_str()) {
            return Err(invalid("the name is used twice".into()));
        }
        if spec.code.is_empty() && spec.status.is_empty() && spec.text.is_none() {
            return Err(invalid(
                "no condition: give code, status or text (or several)".into(),
            ));
        }
        if let Some(c) = spec.code.iter().find(|c| CodePattern::parse(c).is_none()) {
            return Err(invalid(format!(
                "code {c:?} is not a reply code pattern such as \"550\", \"55x\" or \"4xx\""
            )));
        }
        if let Some(s) = spec
            .status
            .iter()
            .find(|s| StatusPattern::parse(s).is_none())
        {
            return Err(invalid(format!(
                "status {s:?} is not an enhanced status code pattern such as \"5.1.1\", \
                 \"5.1.\", \"X.7.26\" or \"5.7.606-649\""
            )));
        }
        if let Some(t) = &spec.text {
            // Compiled alone here so that an error names its rule; the set is built later.
            RegexBuilder::new(t)
                .case_insensitive(true)
                .build()
                .map_err(|e| invalid(format!("text: {e}")))?;
        }
    }
    Ok(file.rule)
}

/// Classifies remote replies with an ordered list of rules.
pub struct BounceClassifier {
    rules: Vec<Rule>,
    texts: RegexSet,
}

impl fmt::Debug for BounceClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BounceClassifier")
            .field("rules", &self.rules.len())
            .finish()
    }
}

static BUILTIN: OnceLock<BounceClassifier> = OnceLock::new();
static INSTALLED: OnceLock<BounceClassifier> = OnceLock::new();

impl BounceClassifier {
    /// The built-in rules (`contrib/bounce-rules.toml`).
    pub fn builtin() -> &'static BounceClassifier {
        BUILTIN.get_or_init(|| {
            BounceClassifier::from_toml(BUILTIN_RULES)
                .unwrap_or_else(|e| panic!("the built-in bounce rules are invalid: {e}"))
        })
    }

    /// The classifier installed for this process with [`BounceClassifier::install`] (the
    /// operator's rules before the built-in ones), else the built-in one.
    pub fn current() -> &'static BounceClassifier {
        INSTALLED.get().unwrap_or_else(BounceClassifier::builtin)
    }

    /// Makes this the classifier of [`BounceClassifier::current`], once per process (at
    /// start, after reading the configuration), so everything that classifies agrees.
    pub fn install(self) -> Result<(), BounceRulesError> {
        INSTALLED
            .set(self)
            .map_err(|_| BounceRulesError::AlreadyInstalled)
    }

    /// A classifier of the given rules only.
    pub fn from_toml(toml_text: &str) -> Result<BounceClassifier, BounceRulesError> {
        BounceClassifier::compile(parse_rules(toml_text, "(inline)")?)
    }

    /// The operator's rules from `path`, tried before the built-in ones.
    pub fn with_extra_file(path: impl AsRef<Path>) -> Result<BounceClassifier, BounceRulesError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| BounceRulesError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut specs = parse_rules(&text, &path.display().to_string())?;
        specs.extend(parse_rules(BUILTIN_RULES, "(built-in)")?);
        BounceClassifier::compile(specs)
    }

    fn compile(specs: Vec<RuleSpec>) -> Result<BounceClassifier, BounceRulesError> {
        let mut patterns = Vec::new();
        let rules = specs
            .into_iter()
            .map(|spec| Rule {
                name: spec.name.into(),
                class: spec.class,
                codes: spec
                    .code
                    .iter()
                    .filter_map(|c| CodePattern::parse(c))
                    .collect(),
                statuses: spec
                    .status
                    .iter()
                    .filter_map(|s| StatusPattern::parse(s))
                    .collect(),
                text: spec.text.map(|t| {
                    patterns.push(t);
                    patterns.len() - 1
                }),
            })
            .collect();
        let texts = RegexSetBuilder::new(&patterns)
            .case_insensitive(true)
            .build()
            .map_err(|e| BounceRulesError::InvalidRule {
                origin: "(all rules)".into(),
                rule: String::new(),
                reason: format!("the expressions do not compile together: {e}"),
            })?;
        Ok(BounceClassifier { rules, texts })
    }

    /// How many rules there are.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Classifies one reply: basic `code`, `enhanced` status code (empty when the caller did
    /// not split it off: a leading `x.y.z` of `text` is then used) and `text`.
    pub fn classify(&self, code: u16, enhanced: &str, text: &str) -> Classified {
        match self.find(code, enhanced, text) {
            Some(rule) => Classified {
                class: rule.class,
                rule: rule.name.to_string(),
            },
            None => Classified {
                class: BounceClass::Other,
                rule: UNMATCHED.to_string(),
            },
        }
    }

    /// The class alone, without naming the rule.
    pub fn class_of(&self, code: u16, enhanced: &str, text: &str) -> BounceClass {
        self.find(code, enhanced, text)
            .map_or(BounceClass::Other, |r| r.class)
    }

    /// Classifies a reply as logged or quoted: `"550 5.1.1 text"`, `"550-5.1.1 text"`, or a
    /// multi-line reply joined on one line (`"421-4.7.28 line1 421-4.7.28 line2 421 4.7.28
    /// line3"`); the first line's codes count. Without a leading reply code the text is
    /// classified as it is.
    pub fn classify_reply(&self, reply: &str) -> Classified {
        let (code, text) = split_reply(reply);
        self.classify(code, "", text)
    }

    fn find(&self, code: u16, enhanced: &str, text: &str) -> Option<&Rule> {
        let (status_text, text) = split_status(enhanced, text);
        let status = Status::parse(status_text);
        let text = rule_text(code, status.map_or("", |_| status_text), text);
        let mut matched = None;
        self.rules.iter().find(|rule| {
            if !rule.codes.is_empty() && !rule.codes.iter().any(|c| c.matches(code)) {
                return false;
            }
            if !rule.statuses.is_empty()
                && !status.is_some_and(|s| rule.statuses.iter().any(|p| p.matches(s)))
            {
                return false;
            }
            rule.text.is_none_or(|i| {
                matched
                    .get_or_insert_with(|| self.texts.matches(&text))
                    .matched(i)
            })
        })
    }
}

/// `"550 5.1.1 text"` → `(550, "5.1.1 text")`; no leading code → `(0, reply)`.
pub(crate) fn split_reply(reply: &str) -> (u16, &str) {
    let reply = reply.trim_start();
    let b = reply.as_bytes();
    let coded = b.len() >= 3
        && b[..3].iter().all(u8::is_ascii_digit)
        && (b'2'..=b'5').contains(&b[0])
        && b.get(3).is_none_or(|&c| matches!(c, b' ' | b'-' | b'\t'));
    if !coded {
        return (0, reply);
    }
    let code = u16::from(b[0] - b'0') * 100 + u16::from(b[1] - b'0') * 10 + u16::from(b[2] - b'0');
    (code, reply.get(4..).unwrap_or(""))
}

/// The enhanced status and the text after it: `enhanced` when given, else a leading `x.y.z`
/// word of `text`.
fn split_status<'a>(enhanced: &'a str, text: &'a str) -> (&'a str, &'a str) {
    let enhanced = enhanced.trim();
    let text = text.trim();
    if !enhanced.is_empty() {
        return (enhanced, text);
    }
    let first = text.split_ascii_whitespace().next().unwrap_or("");
    if Status::parse(first).is_some() {
        (first, text[first.len()..].trim_start())
    } else {
        ("", text)
    }
}

/// The text the expressions see: the codes that start each line of a joined multi-line reply
/// (`550-5.7.1`, `550 5.7.1`, `5.7.1`) dropped and whitespace runs made single spaces, so
/// that a phrase broken over lines still reads as one; at most [`MAX_TEXT`] bytes. Borrowed
/// when there is nothing to drop.
fn rule_text<'a>(code: u16, status: &str, text: &'a str) -> Cow<'a, str> {
    let code_buf = [
        b'0' + (code / 100 % 10) as u8,
        b'0' + (code / 10 % 10) as u8,
        b'0' + (code % 10) as u8,
    ];
    let code_str = if (200..600).contains(&code) {
        std::str::from_utf8(&code_buf).unwrap_or("")
    } else {
        ""
    };
    let mut spaces = text
        .as_bytes()
        .windows(2)
        .any(|w| w[0] == b' ' && w[1] == b' ');
    spaces |= text.bytes().any(|b| matches!(b, b'\t' | b'\r' | b'\n'));
    let repeats = (!status.is_empty() && text.contains(status))
        || (!code_str.is_empty()
            && text.split_ascii_whitespace().any(|w| {
                w == code_str || w.strip_prefix(code_str).is_some_and(|r| r.starts_with('-'))
            }));
    if !spaces && !repeats {
        return Cow::Borrowed(cut(text, MAX_TEXT));
    }
    let mut out = String::with_capacity(text.len().min(MAX_TEXT));
    for mut word in text.split_ascii_whitespace() {
        if out.len() >= MAX_TEXT {
            break;
        }
        if !code_str.is_empty() {
            if word == code_str {
                // "550 5.7.1 last line", or a bare code opening a line without a status.
                continue;
            }
            if let Some(rest) = word
                .strip_prefix(code_str)
                .and_then(|r| r.strip_prefix('-'))
            {
                if rest.is_empty() || rest == status {
                    continue;
                }
                word = rest;
            }
        }
        if !status.is_empty() && word == status {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    let n = cut(&out, MAX_TEXT).len();
    out.truncate(n);
    Cow::Owned(out)
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real replies, as providers document them or as they were seen in bounces, with the
    /// class each must get.
    const REPLIES: &[(&str, BounceClass)] = &[
        // Google
        (
            "421-4.7.28 [192.0.2.10      15] Our system has detected an unusual rate of \
             421-4.7.28 unsolicited mail originating from your IP address. To protect our \
             421-4.7.28 users from spam, mail sent from your IP address has been temporarily \
             421-4.7.28 rate limited. Please visit \
             421-4.7.28  https://support.google.com/mail/?p=UnsolicitedRateLimitError to \
             421 4.7.28 review our Bulk Email Senders Guidelines. a1si123 - gsmtp",
            BounceClass::RateLimit,
        ),
        (
            "421 4.7.28 Gmail has detected an unusual rate of mail originating from your \
             SPF domain example.org. To protect our users from spam, mail has been \
             temporarily rate limited. - gsmtp",
            BounceClass::RateLimit,
        ),
        (
            "421-4.7.0 [192.0.2.10 15] Our system has detected an unusual rate of\n\
             421-4.7.0 unsolicited mail originating from your IP address. To protect our\n\
             421 4.7.0 users from spam, mail sent from your IP address has been temporarily rate limited.",
            BounceClass::RateLimit,
        ),
        (
            "550-5.7.28 [192.0.2.10] There is an unusual rate of unsolicited mail \
             550-5.7.28 originating from your IP address. To protect our users from spam, \
             550 5.7.28 mail sent from your IP address has been blocked. - gsmtp",
            BounceClass::Reputation,
        ),
        (
            "421 4.7.0 This message is suspicious due to the very low reputation of the \
             sending IP address. To protect our users from spam, mail sent from your IP \
             address has been temporarily rate limited.",
            BounceClass::Reputation,
        ),
        (
            "550-5.7.1 [192.0.2.10 12] Our system has detected that this message is \
             550-5.7.1 likely unsolicited mail. To reduce the amount of spam sent to Gmail, \
             550-5.7.1 this message has been blocked. Please visit \
             550 5.7.1 https://support.google.com/mail/?p=UnsolicitedMessageError dh9si2656259wib.8 - gsmtp",
            BounceClass::SpamPolicy,
        ),
        (
            "550-5.7.26 This mail has been blocked because the sender is unauthenticated. \
             550-5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM. \
             550 5.7.26 Authentication results: DKIM = did not pass - gsmtp",
            BounceClass::AuthFailure,
        ),
        (
            "550-5.7.1 Unauthenticated email from example.org is not accepted due to domain's \
             550-5.7.1 DMARC policy. Please contact the administrator of example.org domain if \
             550 5.7.1 this was a legitimate mail. g197si21529171qhc.129 - gsmtp",
            BounceClass::AuthFailure,
        ),
        (
            "421-4.7.27 Your email has been rate limited because SPF authentication didn't \
             421 4.7.27 pass for this message. Gmail requires all bulk email senders to \
             authenticate their email with SPF.",
            BounceClass::AuthFailure,
        ),
        (
            "550-5.7.25 The IP address sending this message does not have a PTR record setup, \
             550 5.7.25 or the corresponding forward DNS entry does not point to the sending IP.",
            BounceClass::AuthFailure,
        ),
        (
            "550-5.1.1 The email account that you tried to reach does not exist. Please try \
             550-5.1.1 double-checking the recipient's email address for typos or \
             550-5.1.1 unnecessary spaces. For more information, go to \
             550 5.1.1  https://support.google.com/mail/?p=NoSuchUser 41be03b00d2f7-b4c - gsmtp",
            BounceClass::Hard,
        ),
        (
            "550-5.2.1 The email account that you tried to reach is inactive. For more \
             550 5.2.1 information, go to https://support.google.com/mail/?p=DisabledUser",
            BounceClass::Hard,
        ),
        (
            "452-4.2.2 The recipient's inbox is out of storage space. Please direct the \
             452 4.2.2 recipient to https://support.google.com/mail/?p=OverQuotaTemp",
            BounceClass::Soft,
        ),
        (
            "450-4.2.1 The user you are trying to contact is receiving mail too quickly. \
             450 4.2.1 Please resend your message at a later time.",
            BounceClass::Soft,
        ),
        (
            "552-5.7.0 This message was blocked because its content presents a potential \
             552 5.7.0 security issue. Please visit https://support.google.com/mail/?p=BlockedMessage",
            BounceClass::MessageRejected,
        ),
        (
            "552-5.3.4 Your message exceeded Google's message size limits. Please visit \
             552 5.3.4 https://support.google.com/mail/?p=MaxSizeError",
            BounceClass::MessageRejected,
        ),
        (
            "550-5.7.1 This message is not RFC 5322 compliant because it has duplicate \
             550-5.7.1 headers. To reduce the amount of spam sent to Gmail, this message \
             550 5.7.1 has been blocked.",
            BounceClass::MessageRejected,
        ),
        (
            "421-4.7.0 Try again later, closing connection. (EHLO) For more information, go \
             421 4.7.0 to About SMTP error messages.",
            BounceClass::RateLimit,
        ),
        // Microsoft
        (
            "550 5.7.1 Unfortunately, messages from [192.0.2.10] weren't sent. Please contact \
             your Internet service provider since part of their network is on our block list \
             (S3150). You can also refer your provider to \
             http://mail.live.com/mail/troubleshooting.aspx#errors. [DB5EUR03FT012.eop-EUR03.prod.protection.outlook.com]",
            BounceClass::Reputation,
        ),
        (
            "550 5.7.511 Access denied, banned sender[192.0.2.10]. To request removal from \
             this list please forward this message to delist@messaging.microsoft.com.",
            BounceClass::Reputation,
        ),
        (
            "550 5.7.606 Access denied, banned sending IP [192.0.2.10]. To request removal from \
             this list please visit https://sender.office.com/",
            BounceClass::Reputation,
        ),
        (
            "451 4.7.650 The mail server [192.0.2.10] has been temporarily rate limited due to \
             IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775)",
            BounceClass::Reputation,
        ),
        (
            "451 4.7.500 Server busy. Please try again later from [192.0.2.10]. (AS761)",
            BounceClass::RateLimit,
        ),
        (
            "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient nobody@contoso.example not \
             found by SMTP address lookup",
            BounceClass::Hard,
        ),
        (
            "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) \
             [BN8NAM12FT064.eop-nam12.prod.protection.outlook.com]",
            BounceClass::Hard,
        ),
        (
            "550 5.5.0 Requested action not taken: mailbox unavailable. \
             [AM2PEPF0001C713.eurprd05.prod.outlook.com]",
            BounceClass::Hard,
        ),
        (
            "554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded",
            BounceClass::Soft,
        ),
        (
            "550 5.7.509 Access denied, sending domain example.org does not pass DMARC \
             verification and has a DMARC policy of reject.",
            BounceClass::AuthFailure,
        ),
        (
            "550 5.7.515 Access denied, sending domain EXAMPLE.ORG doesn't meet the required \
             authentication level.",
            BounceClass::AuthFailure,
        ),
        (
            "550 5.7.23 The message was rejected because of Sender Policy Framework violation",
            BounceClass::AuthFailure,
        ),
        // Yahoo, AOL
        (
            "421 4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected \
             volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
            BounceClass::RateLimit,
        ),
        (
            "553 5.7.2 [TSS09] All messages from 192.0.2.10 will be permanently deferred; \
             Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes",
            BounceClass::Reputation,
        ),
        (
            "553 5.7.1 [BL21] Connections will not be accepted from 192.0.2.10, because the ip \
             is in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
            BounceClass::Reputation,
        ),
        (
            "554 5.7.9 Message not accepted for policy reasons.  See \
             https://postmaster.yahooinc.com/error-codes",
            BounceClass::SpamPolicy,
        ),
        (
            "550 5.7.9 This mail has been blocked because the sender is unauthenticated. Yahoo \
             requires all senders to authenticate with either SPF or DKIM.",
            BounceClass::AuthFailure,
        ),
        (
            "554 delivery error: dd This user doesn't have a yahoo.com account \
             (nobody@yahoo.com) [0] - mta1234.mail.ne1.yahoo.com",
            BounceClass::Hard,
        ),
        (
            "552 1 Requested mail action aborted, mailbox not found",
            BounceClass::Hard,
        ),
        // Block lists and other receivers
        (
            "554 5.7.1 Service unavailable; Client host [192.0.2.10] blocked using \
             zen.spamhaus.org; https://www.spamhaus.org/query/ip/192.0.2.10",
            BounceClass::Reputation,
        ),
        (
            "554 resimta-ch2-18v.sys.comcast.net resimta-ch2-18v.sys.comcast.net 192.0.2.10 \
             found on one or more DNSBLs, see http://postmaster.comcast.net/smtp-error-codes.php#BL000001",
            BounceClass::Reputation,
        ),
        (
            "554 5.7.0 Blocked - see https://ipcheck.proofpoint.com/?ip=192.0.2.10",
            BounceClass::Reputation,
        ),
        (
            "550 5.7.0 Blocked - see https://support.apple.com/en-us/HT204137",
            BounceClass::Reputation,
        ),
        // Postfix, Exim, Sendmail, qmail and friends
        (
            "550 5.1.1 <nobody@dest.example>: Recipient address rejected: User unknown in \
             local recipient table",
            BounceClass::Hard,
        ),
        ("550 Unrouteable address", BounceClass::Hard),
        ("550 No Such User Here", BounceClass::Hard),
        (
            "550 Sorry, no mailbox here by that name. (#5.1.1)",
            BounceClass::Hard,
        ),
        (
            "450 4.1.1 <nobody@dest.example>: Recipient address rejected: unverified address: \
             host mx.dest.example said: 550 5.1.1 User unknown",
            BounceClass::Soft,
        ),
        (
            "450 4.2.0 <r@dest.example>: Recipient address rejected: Greylisted, see \
             http://postgrey.schweikert.ch/help/dest.example.html",
            BounceClass::Soft,
        ),
        (
            "451-192.0.2.10 is not yet authorized to deliver mail from \
             451 <a@tenant.example> to <r@dest.example>. Please try later.",
            BounceClass::Soft,
        ),
        (
            "552 5.2.2 <r@dest.example>: user's mailbox is full",
            BounceClass::Soft,
        ),
        ("452 4.3.1 Insufficient system storage", BounceClass::Soft),
        (
            "554 5.7.1 <r@partner.example>: Relay access denied",
            BounceClass::Other,
        ),
        (
            "550 5.7.1 <r@dest.example>: Recipient address rejected: Message rejected due to: \
             SPF fail - not authorized.",
            BounceClass::AuthFailure,
        ),
        (
            "553 5.1.8 <a@nx.tenant.example>: Sender address rejected: Domain not found",
            BounceClass::Other,
        ),
        (
            "554 5.7.1 Spam message rejected",
            BounceClass::SpamPolicy,
        ),
        (
            "550 5.7.1 Message rejected due to content restrictions",
            BounceClass::MessageRejected,
        ),
        (
            "554 5.7.0 Reject, id=12345-01 - INFECTED: Eicar-Signature",
            BounceClass::MessageRejected,
        ),
        (
            "552 5.3.4 Message size exceeds fixed limit",
            BounceClass::MessageRejected,
        ),
        (
            "421 4.7.0 mx.dest.example Error: too many connections from 192.0.2.10",
            BounceClass::RateLimit,
        ),
        (
            "451 4.7.1 Rate limit exceeded, try again later",
            BounceClass::RateLimit,
        ),
        ("530 5.7.0 Must issue a STARTTLS command first", BounceClass::Other),
        ("451 4.3.0 Temporary local problem", BounceClass::Soft),
        ("250 2.0.0 Ok: queued as 4Zx1Kq3Y1Vz9dB", BounceClass::Delivered),
        ("250 OK id=1rVYva-0000000129G-3sbJ", BounceClass::Delivered),
    ];

    #[test]
    fn real_world_replies() {
        let c = BounceClassifier::builtin();
        let mut wrong = Vec::new();
        for (reply, want) in REPLIES {
            let got = c.classify_reply(reply);
            if got.class != *want {
                wrong.push(format!(
                    "{reply:?}: got {} by {}, want {want}",
                    got.class, got.rule
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{} wrong:\n{}",
            wrong.len(),
            wrong.join("\n")
        );
        assert!(REPLIES.len() >= 30);
    }

    #[test]
    fn names_the_rule() {
        let c = BounceClassifier::builtin();
        let got = c.classify_reply("421 4.7.28 Gmail has detected an unusual rate of mail");
        assert_eq!(got.rule, "gmail-unusual-rate-deferred");
        assert_eq!(got.class, BounceClass::RateLimit);
        assert!(got.class.slows_destination());
        let got = c.classify_reply("550 5.1.1 No such user");
        assert_eq!(
            (got.class, got.rule.as_str()),
            (BounceClass::Hard, "user-unknown")
        );
        // Only the code rules can say anything about this one.
        let got = c.classify(550, "5.1.1", "");
        assert_eq!(got.rule, "bad-destination-address");
        assert_eq!(c.classify(550, "", "").rule, UNMATCHED);
        assert_eq!(c.classify(550, "", "").class, BounceClass::Other);
    }

    #[test]
    fn enhanced_code_from_the_argument_or_the_text() {
        let c = BounceClassifier::builtin();
        assert_eq!(c.class_of(550, "5.1.2", "Host unknown"), BounceClass::Hard);
        assert_eq!(c.class_of(550, "", "5.1.2 Host unknown"), BounceClass::Hard);
        // A sender problem is no verdict on the recipient.
        assert_eq!(
            c.class_of(553, "5.1.8", "Domain of sender unknown"),
            BounceClass::Other
        );
        assert_eq!(c.class_of(452, "4.2.2", ""), BounceClass::Soft);
        assert_eq!(c.class_of(421, "4.7.28", ""), BounceClass::RateLimit);
        assert_eq!(c.class_of(550, "5.7.28", ""), BounceClass::Reputation);
        assert_eq!(c.class_of(550, "5.7.606", ""), BounceClass::Reputation);
        assert_eq!(c.class_of(550, "5.7.650", ""), BounceClass::SpamPolicy);
        assert_eq!(c.class_of(451, "4.7.601", ""), BounceClass::RateLimit);
        assert_eq!(c.class_of(550, "5.7.26", ""), BounceClass::AuthFailure);
        assert_eq!(c.class_of(550, "5.6.0", ""), BounceClass::MessageRejected);
    }

    #[test]
    fn reply_splitting() {
        assert_eq!(split_reply("550 5.1.1 x"), (550, "5.1.1 x"));
        assert_eq!(split_reply("550-5.1.1 x"), (550, "5.1.1 x"));
        assert_eq!(split_reply("421"), (421, ""));
        assert_eq!(split_reply("5501 x"), (0, "5501 x"));
        assert_eq!(split_reply("+50 x"), (0, "+50 x"));
        assert_eq!(split_reply("User unknown"), (0, "User unknown"));
        assert_eq!(
            rule_text(421, "4.7.28", "a b 421-4.7.28 c  421 4.7.28 d\r\n 4.7.28 e"),
            "a b c d e"
        );
        assert_eq!(rule_text(550, "", "x 550-y 550 z"), "x y z");
        assert!(matches!(
            rule_text(550, "5.1.1", "plain text"),
            Cow::Borrowed(_)
        ));
        let long = "é".repeat(MAX_TEXT);
        assert!(rule_text(550, "", &long).len() <= MAX_TEXT);
        assert!(rule_text(550, "", &format!("{long}  x")).len() <= MAX_TEXT);
    }

    #[test]
    fn remote_classes_and_names() {
        use RemoteClass as R;
        let want = [
            (BounceClass::Delivered, R::Delivered, "delivered"),
            (BounceClass::Hard, R::BadMailbox, "hard"),
            (BounceClass::Soft, R::Other, "soft"),
            (BounceClass::SpamPolicy, R::SpamBlock, "spam_policy"),
            (BounceClass::RateLimit, R::Other, "rate_limit"),
            (BounceClass::Reputation, R::SpamBlock, "reputation"),
            (BounceClass::AuthFailure, R::Other, "auth_failure"),
            (BounceClass::MessageRejected, R::Other, "message_rejected"),
            (BounceClass::Other, R::Other, "other"),
        ];
        assert_eq!(want.len(), BounceClass::ALL.len());
        for (class, remote, name) in want {
            assert_eq!(class.remote_class(), remote, "{class}");
            assert_eq!(class.as_str(), name);
            assert_eq!(serde_json::to_value(class).unwrap(), name);
            assert_eq!(class.is_hard(), class == BounceClass::Hard);
            assert_eq!(
                class.slows_destination(),
                matches!(class, BounceClass::RateLimit | BounceClass::Reputation)
            );
        }
    }

    #[test]
    fn operator_rules_come_first() {
        let dir = std::env::temp_dir().join(format!("relayward-bounce-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.toml");
        std::fs::write(
            &path,
            r#"
[[rule]]
name = "acme-mailbox-moved"
code = "55x"
text = 'mailbox has moved to'
class = "hard"

[[rule]]
name = "acme-greylisting-as-rate"
status = ["4.7.1"]
text = 'greylisted'
class = "rate_limit"
"#,
        )
        .unwrap();
        let c = BounceClassifier::with_extra_file(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.len(), BounceClassifier::builtin().len() + 2);
        let got = c.classify_reply("551 Mailbox has moved to r@new.example");
        assert_eq!(
            (got.class, got.rule.as_str()),
            (BounceClass::Hard, "acme-mailbox-moved")
        );
        // The operator's rule wins over the built-in greylisting one...
        let got = c.classify_reply("450 4.7.1 Greylisted, come back later");
        assert_eq!(got.class, BounceClass::RateLimit);
        // ...and the built-in rules still answer everything else.
        let builtin = BounceClassifier::builtin();
        assert_eq!(
            builtin
                .classify_reply("450 4.7.1 Greylisted, come back later")
                .class,
            BounceClass::Soft
        );
        assert_eq!(c.class_of(550, "5.1.1", "No such user"), BounceClass::Hard);
    }

    #[test]
    fn bad_rules_are_refused_with_their_name() {
        let missing = BounceClassifier::with_extra_file("/nonexistent/bounce-rules.toml");
        assert!(matches!(missing, Err(BounceRulesError::Io { .. })));
        let cases = [
            ("[[rule]]\nname = \"a\"\nclass = \"hard\"\n", "no condition"),
            (
                "[[rule]]\nname = \"a\"\nclass = \"hard\"\ncode = \"5x\"\n",
                "code",
            ),
            (
                "[[rule]]\nname = \"a\"\nclass = \"hard\"\nstatus = \"5.1\"\n",
                "status",
            ),
            (
                "[[rule]]\nname = \"a\"\nclass = \"hard\"\nstatus = \"5.7.9-1\"\n",
                "status",
            ),
            (
                "[[rule]]\nname = \"a\"\nclass = \"hard\"\ntext = \"(\"\n",
                "text",
            ),
            (
                "[[rule]]\nname = \"a\"\nclass = \"hard\"\ncode = \"550\"\n\
                 [[rule]]\nname = \"a\"\nclass = \"soft\"\ncode = \"450\"\n",
                "twice",
            ),
        ];
        for (toml_text, what) in cases {
            match BounceClassifier::from_toml(toml_text) {
                Err(BounceRulesError::InvalidRule { rule, reason, .. }) => {
                    assert_eq!(rule, "a");
                    assert!(reason.contains(what), "{reason}");
                }
                other => panic!("{toml_text}: {other:?}"),
            }
        }
        for syntax in [
            "[[rule]]\nname = \"a\"\nclass = \"bogus\"\ncode = \"550\"\n",
            "[[rule]]\nname = \"a\"\nclass = \"hard\"\ncodes = \"550\"\n",
        ] {
            assert!(
                matches!(
                    BounceClassifier::from_toml(syntax),
                    Err(BounceRulesError::Syntax { .. })
                ),
                "{syntax}"
            );
        }
    }

    #[test]
    fn status_patterns() {
        let p = |s| StatusPattern::parse(s).unwrap();
        let st = |s| Status::parse(s).unwrap();
        assert!(p("5.1.1").matches(st("5.1.1")));
        assert!(!p("5.1.1").matches(st("4.1.1")));
        assert!(!p("5.1.1").matches(st("5.1.10")));
        assert!(p("X.7.26").matches(st("4.7.26")));
        assert!(p("5.1.").matches(st("5.1.10")));
        assert!(p("5.7.606-649").matches(st("5.7.649")));
        assert!(!p("5.7.606-649").matches(st("5.7.650")));
        for bad in ["5", "5.1", "6.1.1", "5.a.1", "5.1.1.1", "5.1.1000"] {
            assert!(StatusPattern::parse(bad).is_none(), "{bad}");
        }
        for bad in ["5.1", "5.1.1.", "3.0.0", "5..1", "5.1.1234"] {
            assert!(Status::parse(bad).is_none(), "{bad}");
        }
    }
}
