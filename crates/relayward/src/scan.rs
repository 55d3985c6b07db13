//! `[scan]`: outbound content scanning with rspamd, after DATA and before the 250.
//!
//! The message as received goes to rspamd's `/checkv2` with the envelope and attribution as
//! request headers (`IP`, `Helo`, `From`, one `Rcpt` per recipient, `User` for an AUTH user,
//! `Queue-Id`, and `X-Relayward-Tenant`, `X-Relayward-Connector` for rules that want them).
//! rspamd's action decides:
//!
//! | action | reply | message |
//! |---|---|---|
//! | `reject` | `550 5.7.1` with rspamd's `smtp_message` (else "Message rejected as spam") | not kept |
//! | `soft reject` | `451 4.7.1` likewise | not kept |
//! | `add header` | 250 | `X-Spam: Yes` and `X-Spam-Score:` added (or rspamd's own milter headers) |
//! | `rewrite subject` | 250 | Subject replaced by rspamd's `subject` |
//! | `greylist`, `no action` | 250 | unchanged |
//!
//! Every verdict goes to the trace (score, required score, symbols) and to the detector: the
//! spam verdicts (all but `greylist` and `no action`) feed its `spam_verdicts` rule. When rspamd
//! cannot be asked (down, timeout, a bad answer), `on_failure` decides: `tempfail` (default:
//! `451 4.7.1`, the tenant's server retries) or `accept` (logged and traced as unscanned).

use std::time::Duration;

use relayward_core::Reply;
use relayward_smtp::IncomingMessage;
use serde::Deserialize;

/// What to do when rspamd cannot be asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// `451 4.7.1 Content scan unavailable, try again later`.
    #[default]
    Tempfail,
    /// Accept the message unscanned (logged and traced).
    Accept,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    /// `http://host:port` of rspamd's normal worker. Unset: no scanning.
    pub rspamd_url: Option<String>,
    /// Per message. Default 10000.
    pub timeout_ms: u64,
    pub on_failure: OnFailure,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            rspamd_url: None,
            timeout_ms: 10_000,
            on_failure: OnFailure::Tempfail,
        }
    }
}

impl ScanConfig {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(u) = &self.rspamd_url {
            let ok = u
                .strip_prefix("http://")
                .or_else(|| u.strip_prefix("https://"))
                .is_some_and(|rest| !rest.is_empty());
            if !ok {
                return Err(format!(
                    "scan.rspamd_url must be http://host:port, not {u:?}"
                ));
            }
        }
        if self.timeout_ms == 0 {
            return Err("scan.timeout_ms must be > 0".into());
        }
        Ok(())
    }
}

pub const SCAN_UNAVAILABLE: Reply =
    Reply::new(451, "4.7.1", "Content scan unavailable, try again later");

#[derive(Debug, Deserialize)]
struct RspamdAnswer {
    action: String,
    #[serde(default)]
    score: f64,
    #[serde(default)]
    required_score: f64,
    #[serde(default)]
    symbols: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    messages: std::collections::BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    milter: Option<Milter>,
}

#[derive(Debug, Deserialize)]
struct Milter {
    #[serde(default)]
    add_headers: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The scanner's decision on one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Accept, with these header changes made to the message.
    Accept {
        spam: bool,
        /// `scan: rspamd action=... score=... symbols=...`, for the trace.
        detail: String,
    },
    /// Refuse with `reply`.
    Refuse {
        reply: Reply,
        spam: bool,
        detail: String,
    },
}

pub struct Scanner {
    http: reqwest::Client,
    url: String,
    on_failure: OnFailure,
}

impl Scanner {
    /// `None` without `rspamd_url`.
    pub fn new(cfg: &ScanConfig) -> Option<Scanner> {
        let url = cfg.rspamd_url.as_ref()?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .build()
            .ok()?;
        Some(Scanner {
            http,
            url: format!("{}/checkv2", url.trim_end_matches('/')),
            on_failure: cfg.on_failure,
        })
    }

    /// Scans `msg`, applying `add header` and `rewrite subject` to its data.
    pub async fn scan(&self, msg: &mut IncomingMessage) -> Verdict {
        let answer = match self.ask(msg).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(queue_id = %msg.queue_id, error = %e, "rspamd could not be asked");
                let detail = format!("scan: rspamd unavailable ({e})");
                return match self.on_failure {
                    OnFailure::Tempfail => Verdict::Refuse {
                        reply: SCAN_UNAVAILABLE,
                        spam: false,
                        detail,
                    },
                    OnFailure::Accept => Verdict::Accept {
                        spam: false,
                        detail: format!("{detail}, accepted unscanned"),
                    },
                };
            }
        };
        let mut symbols: Vec<&str> = answer.symbols.keys().map(String::as_str).collect();
        symbols.truncate(20);
        let detail = format!(
            "scan: rspamd action=[{}] score={:.2}/{:.2} symbols={}",
            answer.action,
            answer.score,
            answer.required_score,
            symbols.join(",")
        );
        let message = answer
            .messages
            .get("smtp_message")
            .and_then(|v| v.as_str())
            .map(clean_text);
        match answer.action.as_str() {
            "reject" => Verdict::Refuse {
                reply: Reply::dynamic(
                    550,
                    "5.7.1",
                    message.unwrap_or_else(|| "Message rejected as spam".into()),
                ),
                spam: true,
                detail,
            },
            "soft reject" => Verdict::Refuse {
                reply: Reply::dynamic(
                    451,
                    "4.7.1",
                    message.unwrap_or_else(|| "Try again later".into()),
                ),
                spam: true,
                detail,
            },
            "add header" => {
                let mut headers: Vec<(String, String)> = answer
                    .milter
                    .as_ref()
                    .map(|m| {
                        m.add_headers
                            .iter()
                            .filter_map(|(k, v)| {
                                let value = v
                                    .get("value")
                                    .and_then(|x| x.as_str())
                                    .or_else(|| v.as_str())?;
                                Some((k.clone(), value.to_string()))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if headers.is_empty() {
                    headers.push(("X-Spam".into(), "Yes".into()));
                    headers.push((
                        "X-Spam-Score".into(),
                        format!("{:.2} / {:.2}", answer.score, answer.required_score),
                    ));
                }
                msg.data = prepend_headers(&msg.data, &headers);
                Verdict::Accept { spam: true, detail }
            }
            "rewrite subject" => {
                if let Some(subject) = &answer.subject {
                    msg.data = replace_subject(&msg.data, &clean_text(subject));
                }
                Verdict::Accept { spam: true, detail }
            }
            _ => Verdict::Accept {
                spam: false,
                detail,
            },
        }
    }

    async fn ask(&self, msg: &IncomingMessage) -> Result<RspamdAnswer, String> {
        let mut req = self
            .http
            .post(&self.url)
            .header("IP", msg.client_ip.to_string())
            .header("Helo", header_value(&msg.helo))
            .header(
                "From",
                msg.sender
                    .as_ref()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
            )
            .header("Queue-Id", msg.queue_id.as_str())
            .header("X-Relayward-Tenant", msg.tenant_id.to_string())
            .header("X-Relayward-Connector", msg.connector_id.to_string());
        for r in &msg.recipients {
            req = req.header("Rcpt", r.address.to_string());
        }
        if let Some(u) = &msg.auth_user {
            req = req.header("User", header_value(u));
        }
        let resp = req
            .body(msg.data.clone())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        resp.json::<RspamdAnswer>()
            .await
            .map_err(|e| format!("bad answer: {e}"))
    }
}

/// A header value without control characters.
fn header_value(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// Text for a reply or a header: printable, one line, bounded.
fn clean_text(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    t.trim().to_string()
}

fn prepend_headers(data: &[u8], headers: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64 * headers.len());
    for (k, v) in headers {
        out.extend_from_slice(clean_text(k).as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(clean_text(v).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(data);
    out
}

/// `data` with its (unfolded) Subject header replaced, or one added when it had none.
fn replace_subject(data: &[u8], subject: &str) -> Vec<u8> {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(data.len(), |i| i + 2);
    let head = &data[..end];
    let mut out = Vec::with_capacity(data.len() + subject.len());
    let mut replaced = false;
    let mut skipping = false;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let folded = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if skipping && folded {
            continue;
        }
        skipping = false;
        if !replaced && line.len() >= 8 && line[..8].eq_ignore_ascii_case(b"subject:") {
            out.extend_from_slice(format!("Subject: {subject}\r\n").as_bytes());
            replaced = true;
            skipping = true;
            continue;
        }
        out.extend_from_slice(line);
    }
    if !replaced {
        let mut with = format!("Subject: {subject}\r\n").into_bytes();
        with.extend_from_slice(&out);
        out = with;
    }
    out.extend_from_slice(&data[end..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_is_replaced_with_its_folded_lines() {
        let m = b"Received: x\r\nSubject: old\r\n part\r\nTo: a@b\r\n\r\nbody Subject: no\r\n";
        let out = replace_subject(m, "***SPAM*** old part");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: x\r\nSubject: ***SPAM*** old part\r\nTo: a@b\r\n\r\nbody Subject: no\r\n"
        );
        let out = replace_subject(b"To: a@b\r\n\r\nx\r\n", "s");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Subject: s\r\nTo: a@b\r\n\r\nx\r\n"
        );
    }

    #[test]
    fn config_rejects_bad_urls() {
        let mut c = ScanConfig {
            rspamd_url: Some("127.0.0.1:11333".into()),
            ..ScanConfig::default()
        };
        assert!(c.validate().is_err());
        c.rspamd_url = Some("http://127.0.0.1:11333".into());
        assert!(c.validate().is_ok());
    }
}
