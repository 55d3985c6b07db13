//! Forwarding done right: SRS rewriting of relayed mail from unregistered senders, the SRS
//! domain's listener that sends their bounces back, and DKIM signing, all applied to a message
//! between its acceptance and its spooling.
//!
//! - `[srs]`: relayed mail whose envelope sender is unregistered (never a registered sender,
//!   never the null sender) leaves with that sender rewritten into the SRS domain
//!   (`SRS0=HHHH=TT=domain=local@srs-domain`, [`relayward_queue::srs`]), so SPF at the receiver
//!   checks the relay's domain. Headers are untouched. The original sender stays in the
//!   envelope (`original_sender`), the trace and the relay's own DSNs. Without `[srs]` such mail
//!   keeps its sender (and fails SPF wherever the sender's domain publishes a strict record);
//!   `serve` says so when it starts.
//! - `[[listener]] role = "srs"`: the relay as the SRS domain's MX (see
//!   [`relayward_smtp::SrsRole`]): bounces to valid SRS addresses are reversed and queued to
//!   the original sender with the null sender; nothing else is accepted.
//! - DKIM ([`crate::dkim`]): mail whose header From domain is a verified accepted domain of its
//!   tenant with a key is signed (relaxed/relaxed); with `[dkim] sign_srs`, SRS-rewritten mail
//!   is signed with the SRS domain's key.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use clap::Subcommand;
use mail_parser::{HeaderName, MessageParser};
use relayward_core::{normalize_domain, TenantId, TraceEvent, TraceKind};
use relayward_policy::SharedDirectory;
use relayward_queue::srs::{Srs, SrsConfig, DEFAULT_HASH_LENGTH, DEFAULT_MAX_AGE_DAYS};
use relayward_queue::{Envelope, Recipient, RecipientStatus, Scheduler, Spool};
use relayward_smtp::{ReturnedMessage, SrsReturn, SrsRole};
use relayward_store::Store;
use serde::Deserialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::dkim::{DkimKeys, DomainKey};

/// Messages larger than this are signed on the blocking pool (hashing a large body takes a
/// while), smaller ones in place.
const SIGN_INLINE_MAX: usize = 256 * 1024;

/// `[[listener]] role`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerRole {
    /// Tenants' servers relay through it (attribution, relay rule).
    #[default]
    Relay,
    /// The MX of the SRS domain: bounces to valid SRS addresses only.
    Srs,
    /// Postfix's policy delegation protocol (`check_policy_service`), crate::policy_service.
    Policy,
}

/// `[srs]` in the configuration file. Absent: no rewriting.
#[derive(Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SrsSection {
    /// Domain of the rewritten addresses; its MX must be a listener with `role = "srs"`.
    pub domain: String,
    /// HMAC secrets: the first signs, all verify (put a new one first, keep the old one for
    /// `max_age_days`). Prefer `secrets_file`, which keeps them out of this file.
    #[serde(serialize_with = "crate::config::redacted_list")]
    pub secrets: Vec<String>,
    /// A file of secrets, one per line (blank lines and `#` comments skipped), readable by its
    /// owner only (mode 0600 or stricter). A postsrsd secrets file works as it is.
    pub secrets_file: Option<PathBuf>,
    /// Base64 characters of the hash (libsrs2 `hashlength`). Default 4.
    pub hash_length: usize,
    /// Bounces to SRS addresses older than this are refused. Default 21.
    pub max_age_days: u32,
    /// Senders never rewritten: `example.com` is that domain, `.example.com` its subdomains.
    pub exclude_domains: Vec<String>,
    /// The SRS listener takes at most this many messages per source address (IPv6: per /64) a
    /// minute; more get `451 4.7.500`. 0: no limit. Default 30.
    pub max_returns_per_ip_per_minute: u32,
    /// Where receiving providers send spam complaints (ARF feedback reports, RFC 5965) on the
    /// SRS listener, e.g. `fbl@<srs domain>`; each counts against the tenant whose message it
    /// names and suppresses the complaining recipient. None: no feedback address.
    pub feedback_address: Option<String>,
}

impl Default for SrsSection {
    fn default() -> Self {
        SrsSection {
            domain: String::new(),
            secrets: Vec::new(),
            secrets_file: None,
            hash_length: DEFAULT_HASH_LENGTH,
            max_age_days: DEFAULT_MAX_AGE_DAYS,
            exclude_domains: Vec::new(),
            max_returns_per_ip_per_minute: 30,
            feedback_address: None,
        }
    }
}

// Secrets never reach a log through `{:?}` of the configuration.
impl std::fmt::Debug for SrsSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrsSection")
            .field("domain", &self.domain)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("secrets_file", &self.secrets_file)
            .field("hash_length", &self.hash_length)
            .field("max_age_days", &self.max_age_days)
            .field("exclude_domains", &self.exclude_domains)
            .field(
                "max_returns_per_ip_per_minute",
                &self.max_returns_per_ip_per_minute,
            )
            .field("feedback_address", &self.feedback_address)
            .finish()
    }
}

impl SrsSection {
    /// The rewriter, with the secrets from the file when one is given.
    pub fn srs(&self) -> Result<Srs> {
        let secrets = match (&self.secrets_file, self.secrets.is_empty()) {
            (Some(_), false) => bail!("srs: give secrets or secrets_file, not both"),
            (Some(path), true) => read_secrets(path)?,
            (None, _) => self.secrets.clone(),
        };
        Srs::new(&SrsConfig {
            domain: self.domain.clone(),
            secrets,
            hash_length: self.hash_length,
            max_age_days: self.max_age_days,
            exclude_domains: self.exclude_domains.clone(),
        })
        .map_err(|e| anyhow!("srs: {e}"))
    }
}

fn read_secrets(path: &PathBuf) -> Result<Vec<String>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("srs.secrets_file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "srs.secrets_file {} has mode {mode:o}: group and others must have no access (chmod 600)",
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("srs.secrets_file {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// The configuration checks of this module (called by `Config::validate`).
pub fn validate(config: &Config) -> Result<()> {
    if let Some(srs) = &config.srs {
        srs.srs()?;
        if let Some(a) = &srs.feedback_address {
            let ok = a
                .rsplit_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && normalize_domain(d).is_ok());
            if !ok {
                bail!("srs.feedback_address must be an address (local@domain), not {a:?}");
            }
        }
    }
    if config.srs.is_none() && config.listeners.iter().any(|l| l.role == ListenerRole::Srs) {
        bail!("a listener with role = \"srs\" needs an [srs] section");
    }
    Ok(())
}

fn now_secs() -> u64 {
    relayward_core::now().0.max(0) as u64
}

/// SRS and DKIM for the relay: applied to each accepted message before it is spooled.
pub struct Forwarding {
    srs: Option<Srs>,
    max_returns_per_ip_per_minute: u32,
    dkim: DkimKeys,
    sign_srs: bool,
    directory: Arc<SharedDirectory>,
    events: Arc<dyn relayward_smtp::Events>,
    header_parser: MessageParser,
}

impl Forwarding {
    /// Loads the DKIM keys and keeps them current (they are reloaded when the store's
    /// directory version changes, which recording a key does).
    pub async fn start(
        config: &Config,
        store: Arc<dyn Store>,
        directory: Arc<SharedDirectory>,
        events: Arc<dyn relayward_smtp::Events>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Forwarding>> {
        let srs = match &config.srs {
            Some(s) => {
                let srs = s.srs()?;
                tracing::info!(
                    domain = srs.domain(),
                    "SRS: relayed mail of unregistered senders is rewritten"
                );
                Some(srs)
            }
            None => {
                tracing::info!("no [srs] section: relayed mail of unregistered senders keeps its envelope sender (no SRS rewriting)");
                None
            }
        };
        let dkim = DkimKeys::new(crate::dkim::key_dir(config));
        dkim.refresh(&*store)
            .await
            .context("cannot load the DKIM keys")?;
        let f = Arc::new(Forwarding {
            srs,
            max_returns_per_ip_per_minute: config
                .srs
                .as_ref()
                .map_or(0, |s| s.max_returns_per_ip_per_minute),
            dkim,
            sign_srs: config.dkim.sign_srs,
            directory,
            events,
            header_parser: MessageParser::new()
                .header_address(HeaderName::From)
                .default_header_ignore(),
        });
        tokio::spawn(reload_keys(
            f.clone(),
            store,
            Duration::from_millis(config.server.directory_poll_ms.max(100)),
            shutdown,
        ));
        Ok(f)
    }

    pub fn srs(&self) -> Option<&Srs> {
        self.srs.as_ref()
    }

    /// Domains whose mail is signed (their key loaded), sorted.
    pub fn dkim_domains(&self) -> Vec<String> {
        self.dkim.domains()
    }

    /// SRS-rewrites the envelope sender and DKIM-signs the message as the module documentation
    /// says. Returns what it did as a `queued` trace event (carrying the original sender), for
    /// [`Forwarding::trace`] once the message is spooled.
    pub async fn prepare(&self, env: &mut Envelope, data: &mut Vec<u8>) -> Option<TraceEvent> {
        let mut notes = Vec::new();
        if let Some(srs) = &self.srs {
            if env.sender_class == relayward_core::SenderClass::Unregistered
                && !env.sender.is_empty()
            {
                match srs.forward(&env.sender, now_secs()) {
                    Ok(rewritten) if rewritten != env.sender => {
                        notes.push(format!("srs: envelope sender rewritten to {rewritten}"));
                        env.original_sender = Some(std::mem::replace(&mut env.sender, rewritten));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(queue_id = %env.queue_id, sender = %env.sender, error = %e, "SRS rewriting failed: sender kept");
                        notes.push(format!("srs: not rewritten ({e})"));
                    }
                }
            }
        }
        if let Some(key) = self.signing_key(env, data) {
            match sign(&key, data).await {
                Ok(header) => {
                    let mut signed = Vec::with_capacity(header.len() + data.len());
                    signed.extend_from_slice(header.as_bytes());
                    signed.append(data);
                    *data = signed;
                    env.size = data.len() as u64;
                    notes.push(format!(
                        "dkim: signed d={} s={}",
                        key.signer.domain(),
                        key.signer.selector()
                    ));
                }
                Err(e) => {
                    tracing::warn!(queue_id = %env.queue_id, domain = key.signer.domain(), error = %e, "DKIM signing failed: sent unsigned");
                    notes.push(format!("dkim: not signed ({e})"));
                }
            }
        }
        if notes.is_empty() {
            return None;
        }
        let mut ev = relayward_queue::control::trace_event(TraceKind::Queued, env, None);
        ev.detail = Some(notes.join("; "));
        Some(ev)
    }

    /// Records an event from [`Forwarding::prepare`].
    pub fn trace(&self, ev: TraceEvent) {
        self.events.trace(ev);
    }

    fn signing_key(&self, env: &Envelope, data: &[u8]) -> Option<Arc<DomainKey>> {
        if let (Some(tenant), Some(from)) = (env.tenant_id, self.header_from_domain(data)) {
            let dir = self.directory.current();
            if let Some(k) = self.dkim.for_tenant(&dir, TenantId(tenant), &from) {
                return Some(k);
            }
        }
        match &self.srs {
            Some(srs) if self.sign_srs && env.original_sender.is_some() => {
                self.dkim.get(srs.domain()).filter(|k| k.tenant.is_none())
            }
            _ => None,
        }
    }

    fn header_from_domain(&self, data: &[u8]) -> Option<String> {
        let end = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(data.len(), |i| i + 4);
        let parsed = self.header_parser.parse_headers(&data[..end])?;
        parsed
            .from()?
            .first()?
            .address()?
            .rsplit_once('@')
            .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
    }

    /// The role of a listener with `role = "srs"`. Needs `[srs]` (checked by `validate`).
    pub fn srs_role(
        self: &Arc<Self>,
        spool: Arc<Spool>,
        scheduler: Arc<Scheduler>,
        feedback: Option<Arc<crate::feedback::FeedbackIntake>>,
    ) -> Result<SrsRole> {
        if self.srs.is_none() {
            bail!("a listener with role = \"srs\" needs an [srs] section");
        }
        Ok(SrsRole {
            handler: Arc::new(ReturnSink {
                forwarding: self.clone(),
                spool,
                scheduler,
                feedback,
            }),
            max_messages_per_ip_per_minute: self.max_returns_per_ip_per_minute,
        })
    }
}

async fn sign(key: &Arc<DomainKey>, data: &mut Vec<u8>) -> Result<String> {
    if data.len() <= SIGN_INLINE_MAX {
        return Ok(key.signer.sign(data)?);
    }
    let key = key.clone();
    let owned = std::mem::take(data);
    let (owned, header) = tokio::task::spawn_blocking(move || {
        let header = key.signer.sign(&owned);
        (owned, header)
    })
    .await
    .map_err(|e| anyhow!("signing task: {e}"))?;
    *data = owned;
    Ok(header?)
}

/// Reloads the DKIM keys when the directory version moves.
async fn reload_keys(
    f: Arc<Forwarding>,
    store: Arc<dyn Store>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen = store.directory_version().await.ok();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match store.directory_version().await {
            Ok(v) if Some(v) == seen => {}
            Ok(v) => match f.dkim.refresh(&*store).await {
                Ok(()) => seen = Some(v),
                Err(e) => tracing::warn!(error = %e, "DKIM key reload failed"),
            },
            Err(e) => tracing::warn!(error = %e, "directory version check failed"),
        }
    }
}

/// How much of a returned DSN is read for the bounce rates and suppression.
const RETURNED_REPORT_MAX: usize = 256 * 1024;

/// Where the SRS listener's bounces go: the spool, addressed to the original senders, with the
/// null sender (so that a return that cannot be delivered never bounces again).
struct ReturnSink {
    forwarding: Arc<Forwarding>,
    spool: Arc<Spool>,
    scheduler: Arc<Scheduler>,
    feedback: Option<Arc<crate::feedback::FeedbackIntake>>,
}

impl ReturnSink {
    fn srs(&self) -> &Srs {
        self.forwarding
            .srs
            .as_ref()
            .expect("checked by Forwarding::srs_role")
    }
}

#[async_trait]
impl SrsReturn for ReturnSink {
    fn domain(&self) -> &str {
        self.srs().domain()
    }

    fn reverse(&self, address: &str) -> Result<String, relayward_smtp::SrsReverseError> {
        use relayward_queue::srs::SrsError as E;
        use relayward_smtp::SrsReverseError as R;
        self.srs()
            .reverse(address, now_secs())
            .map_err(|e| match e {
                E::BadHash => R::BadHash,
                E::Expired => R::Expired,
                E::Malformed(what) => R::Malformed(what.into()),
                E::NotSrs => R::NotSrs,
                E::Config(why) => R::Config(why),
            })
    }

    fn feedback_address(&self) -> Option<&str> {
        self.feedback.as_deref().and_then(|f| f.address())
    }

    async fn feedback(
        &self,
        report: relayward_smtp::FeedbackMessage,
    ) -> Result<String, relayward_smtp::FeedbackError> {
        match &self.feedback {
            Some(f) => f.take(report).await,
            None => Err(relayward_smtp::FeedbackError::NotTaken),
        }
    }

    async fn enqueue(&self, msg: ReturnedMessage) -> Result<(), relayward_smtp::EnqueueError> {
        let now = relayward_core::now();
        let envelope = Envelope {
            queue_id: msg.queue_id.parse().map_err(|e| {
                relayward_smtp::EnqueueError::Unavailable(format!("bad queue id: {e}"))
            })?,
            received_at: msg.received_at,
            tenant_id: None,
            connector_id: None,
            client_ip: msg.client_ip.to_string(),
            helo: msg.helo,
            auth_user: None,
            tls: msg.tls,
            sender: String::new(),
            original_sender: None,
            sender_class: relayward_core::SenderClass::Null,
            header_from_mismatch: false,
            spam_verdict: false,
            message_id: msg.message_id,
            size: msg.data.len() as u64,
            body_8bit: msg.body_8bit,
            smtputf8: msg.smtputf8,
            dsn_ret: None,
            dsn_envid: None,
            recipients: msg
                .recipients
                .into_iter()
                .map(|r| Recipient {
                    orcpt: Some(format!("rfc822;{}", r.srs_address)),
                    status: RecipientStatus::Queued,
                    next_attempt_at: now.0,
                    ..Recipient::new(r.address)
                })
                .collect(),
            held: false,
        };
        let id = envelope.queue_id;
        // What the DSN reports is read after the 250, from a copy of its first part (the
        // report itself comes before any returned content).
        let report = self.feedback.clone().map(|f| {
            let head = msg.data[..msg.data.len().min(RETURNED_REPORT_MAX)].to_vec();
            (f, head)
        });
        self.spool
            .store_async(id, envelope, msg.data)
            .await
            .map_err(|e| {
                // A full file system is 452 4.3.1 here too, as on the DATA path.
                if e.is_storage_full() {
                    relayward_smtp::EnqueueError::StorageFull(e.to_string())
                } else {
                    relayward_smtp::EnqueueError::Unavailable(e.to_string())
                }
            })?;
        self.scheduler.submit(id);
        if let Some((intake, head)) = report {
            tokio::spawn(async move { intake.returned(&head).await });
        }
        Ok(())
    }
}

/// `relayward srs ...`
#[derive(Subcommand, Debug)]
pub enum SrsCmd {
    /// Create a DKIM key for the SRS domain (used with `[dkim] sign_srs = true`); prints the
    /// TXT record to publish
    DkimKey {
        #[arg(long, default_value = "ed25519", value_parser = ["ed25519", "rsa2048"])]
        algorithm: String,
        /// Default: `[dkim] selector` ("relayward")
        #[arg(long)]
        selector: Option<String>,
    },
    /// Print the SRS address an envelope sender is rewritten to now
    Forward { address: String },
    /// Print the address an SRS address stands for (or why it is refused)
    Reverse { address: String },
}

pub async fn srs_command(config: &Config, cmd: SrsCmd) -> Result<()> {
    let srs = config
        .srs
        .as_ref()
        .ok_or_else(|| anyhow!("no [srs] section in the configuration"))?
        .srs()?;
    match cmd {
        SrsCmd::DkimKey {
            algorithm,
            selector,
        } => {
            let store = crate::cli::open_store(config).await?;
            crate::dkim::create_key(
                config,
                &*store,
                srs.domain(),
                None,
                &algorithm,
                selector.as_deref(),
            )
            .await
        }
        SrsCmd::Forward { address } => {
            println!("{}", srs.forward(&address, now_secs())?);
            Ok(())
        }
        SrsCmd::Reverse { address } => {
            println!("{}", srs.reverse(&address, now_secs())?);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_file_must_be_private_and_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("srs.secrets");
        std::fs::write(
            &path,
            "# rotation: newest first\nnew-secret\n\nold-secret\n",
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut s = SrsSection {
            domain: "srs.relay.example".into(),
            secrets_file: Some(path.clone()),
            ..SrsSection::default()
        };
        assert!(s.srs().unwrap_err().to_string().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secrets(&path).unwrap(), ["new-secret", "old-secret"]);
        let srs = s.srs().unwrap();
        let fwd = srs.forward("alice@orig.example", 1_700_000_000).unwrap();
        assert!(fwd.starts_with("SRS0=") && fwd.ends_with("@srs.relay.example"));
        s.secrets = vec!["inline".into()];
        assert!(s.srs().unwrap_err().to_string().contains("not both"));
        let debug = format!("{s:?}");
        assert!(!debug.contains("inline"), "{debug}");
    }
}
