//! `relayward.toml`. Every key has a default, so no file at all is needed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use relayward_policy::detector::DetectorConfig;
use relayward_policy::limits::SenderLimits;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    pub store: StoreConfig,
    pub delivery: DeliveryConfig,
    /// Source addresses of outbound mail by kind of mail (crate::egress); none: the system's.
    #[serde(rename = "egress_pool")]
    pub egress_pools: Vec<crate::egress::EgressPoolConfig>,
    pub limits: LimitsConfig,
    /// The abuse detector's rules (relayward_policy::detector::DetectorConfig documents every
    /// key and its default).
    pub detector: DetectorConfig,
    /// Default per-sender outbound limits (`[detector.sender_limits]` may be used instead, not
    /// both); tenants may have their own (`relayward tenant sender-limits`).
    pub sender_limits: Option<SenderLimits>,
    pub alerts: AlertsConfig,
    pub admin: AdminConfig,
    /// SRS rewriting of relayed unregistered-sender mail (crate::forwarding); none without it.
    pub srs: Option<crate::forwarding::SrsSection>,
    /// DKIM signing (crate::dkim).
    pub dkim: crate::dkim::DkimSection,
    pub metrics: MetricsConfig,
    /// Content scanning with rspamd (crate::scan); none without `rspamd_url`.
    pub scan: crate::scan::ScanConfig,
    /// Per-tenant bounce and complaint rates and what they call for, and how long hard-bounced
    /// recipients stay suppressed (relayward_policy::reputation::ReputationConfig has every key
    /// and its default).
    pub reputation: relayward_policy::reputation::ReputationConfig,
    /// Cluster-wide counting and state changes through Redis (crate::cluster); none: this
    /// node counts on its own.
    pub counters: CountersSection,
}

/// `[counters]`: where the nodes of a cluster share their counts and announce state changes.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CountersSection {
    /// `redis://host[:port][/db]` (or `rediss://`). Unset: counts and limits are this node's.
    #[serde(serialize_with = "redacted_url")]
    pub url: Option<String>,
    /// How often a node merges its counts with the cluster's, at most. Default 100.
    pub sync_ms: u64,
    /// Prefix of every key and channel, so that several clusters can share one Redis.
    /// Default `relayward:`.
    pub key_prefix: String,
}

impl Default for CountersSection {
    fn default() -> Self {
        CountersSection {
            url: None,
            sync_ms: 100,
            key_prefix: "relayward:".into(),
        }
    }
}

/// `[metrics]`: what `GET /metrics` on the admin listener shows (crate::metrics).
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Count accepted messages per tenant too (`relayward_tenant_messages_accepted_total`,
    /// at most 1,000 tenants labelled, the rest as `other`). Default false.
    pub per_tenant: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig::default(),
            listeners: vec![ListenerConfig::default()],
            store: StoreConfig::default(),
            delivery: DeliveryConfig::default(),
            egress_pools: Vec::new(),
            limits: LimitsConfig::default(),
            detector: DetectorConfig::default(),
            sender_limits: None,
            alerts: AlertsConfig::default(),
            admin: AdminConfig::default(),
            srs: None,
            reputation: Default::default(),
            dkim: crate::dkim::DkimSection::default(),
            metrics: MetricsConfig::default(),
            scan: crate::scan::ScanConfig::default(),
            counters: CountersSection::default(),
        }
    }
}

/// `[admin]`: the admin HTTP API (JSON under `/v1`, its OpenAPI document at `/openapi.json`)
/// on its own listener. Domain verification asks `delivery.dns_resolver` when it is set.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Default true.
    pub enabled: bool,
    /// Default `127.0.0.1:8025`: loopback only; put a TLS proxy in front to reach it from
    /// elsewhere.
    pub address: SocketAddr,
    /// `GET /metrics` without a token (for a scraper on a trusted network). Default false: an
    /// operator token is needed.
    pub metrics_public: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            address: "127.0.0.1:8025".parse().expect("literal address"),
            metrics_public: false,
        }
    }
}

/// `[alerts]`: where the abuse detector's alerts go, besides the log. Each alert is sent once
/// per transition (or per sender restriction): a webhook POST and an email to the tenant's
/// admin contacts, queued through the relay itself.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// `http://host[:port]/path` receiving a JSON POST per alert. Unset: no webhook.
    pub webhook_url: Option<String>,
    /// When set, each POST carries `X-Relayward-Signature: sha256=<hex HMAC-SHA256 of the
    /// body>` keyed with this secret.
    #[serde(serialize_with = "redacted_opt")]
    pub webhook_secret: Option<String>,
    /// Attempts per alert before giving up (a 2xx answer ends them). Default 6.
    pub webhook_max_attempts: u32,
    /// Wait before the first retry; doubled after each (at most 5 minutes). Default 1000.
    pub webhook_backoff_ms: u64,
    /// Per-attempt timeout. Default 10.
    pub webhook_timeout_secs: u64,
    /// Sender of alert emails. Default `postmaster@<server.hostname>`.
    pub from: Option<String>,
    /// Email the tenant's admin contacts. Default true.
    pub email_tenant_admins: bool,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook_url: None,
            webhook_secret: None,
            webhook_max_attempts: 6,
            webhook_backoff_ms: 1000,
            webhook_timeout_secs: 10,
            from: None,
            email_tenant_admins: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// EHLO name, Received "by", Reporting-MTA of DSNs.
    pub hostname: String,
    /// The SQLite database and the spool live here by default.
    pub data_dir: PathBuf,
    /// How often the relay checks the store for directory changes.
    pub directory_poll_ms: u64,
    /// Log format: "text" or "json".
    pub log_format: String,
    /// This node's name in a cluster: trace events, `Received:` headers, `GET /v1/nodes`.
    /// Default: the host name. `relayward serve --node-name` overrides it.
    pub node_name: Option<String>,
    /// How often the abuse detector re-evaluates tenants without traffic (warned and probation
    /// tenants return to active only on such a pass) and expires idle counters.
    pub detector_interval_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "relay.example.net".into(),
            data_dir: PathBuf::from("./relayward-data"),
            directory_poll_ms: 1000,
            log_format: "text".into(),
            node_name: None,
            detector_interval_ms: 5000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CAs trusted for client certificates (default: the system's roots).
    pub tls_client_ca: Option<PathBuf>,
    pub implicit_tls: bool,
    /// Allow AUTH on a connection without TLS (default: no; passwords never cross in clear).
    pub auth_without_tls: bool,
    /// "relay" (default), or "srs": the MX of the SRS domain, taking bounces only.
    pub role: crate::forwarding::ListenerRole,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            address: "127.0.0.1:2525".parse().expect("literal address"),
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            implicit_tls: false,
            auth_without_tls: false,
            role: crate::forwarding::ListenerRole::Relay,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH`, or `postgres://user@host/db` for cluster mode (README "Run a
    /// cluster"). Default: `sqlite://<data_dir>/relayward.db`.
    #[serde(serialize_with = "redacted_url")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Send everything to this next hop (`host:port`) instead of looking up MX records.
    pub smart_host: Option<String>,
    pub mx_port: u16,
    /// Use this DNS server instead of the system's.
    pub dns_resolver: Option<SocketAddr>,
    /// Delay before each retry, in seconds; the last one repeats until `max_lifetime_secs`.
    pub retry_schedule_secs: Vec<u64>,
    /// Undelivered this long after acceptance: bounced with 4.4.7.
    pub max_lifetime_secs: u64,
    /// One "delayed" DSN after this long undelivered; 0 = never.
    pub delay_warning_secs: u64,
    pub connect_timeout_secs: u64,
    pub command_timeout_secs: u64,
    pub data_timeout_secs: u64,
    /// Messages being delivered at once, in total and per destination.
    pub max_workers: usize,
    pub max_per_destination: usize,
    /// Where DSNs go that cannot reach their own recipient; unset: dropped with a log line.
    pub postmaster: Option<String>,
    /// One tenant's mail to its own next hop.
    #[serde(rename = "tenant_route")]
    pub tenant_routes: Vec<TenantRouteConfig>,
    /// A provider that answers with rate-limit or reputation replies gets half the
    /// concurrency and half this many attempts per minute, halved again on each such reply.
    pub throttle_rate_per_minute: u32,
    /// Each quiet period this long doubles a throttled provider's allowance back.
    pub throttle_restore_secs: u64,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantRouteConfig {
    /// Tenant name or id.
    pub tenant: String,
    /// `host:port` of the next hop.
    pub host: String,
    pub auth_user: Option<String>,
    pub auth_password: Option<String>,
    pub require_tls: bool,
    pub verify_tls: bool,
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for DeliveryConfig {
    /// The queue's own defaults, in the file's units: one table of them.
    fn default() -> Self {
        let q = relayward_queue::DeliveryConfig::default();
        DeliveryConfig {
            smart_host: None,
            mx_port: q.mx_port,
            dns_resolver: None,
            retry_schedule_secs: q.retry_schedule.iter().map(|d| d.as_secs()).collect(),
            max_lifetime_secs: q.max_lifetime.as_secs(),
            delay_warning_secs: q.delay_warning.map_or(0, |d| d.as_secs()),
            connect_timeout_secs: q.connect_timeout.as_secs(),
            command_timeout_secs: q.command_timeout.as_secs(),
            data_timeout_secs: q.data_timeout.as_secs(),
            max_workers: q.max_workers,
            max_per_destination: q.max_per_destination,
            postmaster: None,
            tenant_routes: Vec::new(),
            throttle_rate_per_minute: q.throttle.rate_per_minute,
            throttle_restore_secs: q.throttle.restore_after.as_secs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_message_size: u64,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_errors: usize,
    pub max_received_headers: usize,
    /// Commands sent ahead of our replies before 421 and close.
    pub max_pipelined: usize,
    /// `normalize` (default) or `reject`: CR or LF in message data outside a CRLF.
    pub bare_line_ends: relayward_smtp::BareLineEnds,
    /// Failed AUTH attempts from one address or for one user before AUTH is locked.
    pub auth_max_failures: usize,
    /// The window those failures are counted in, and how long the lock lasts.
    pub auth_lockout_secs: u64,
    pub command_timeout_secs: u64,
    pub data_block_timeout_secs: u64,
    pub data_termination_timeout_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        // The SMTP layer's own defaults, in the file's units: one table of them.
        let d = relayward_smtp::SmtpConfig::default();
        LimitsConfig {
            max_message_size: d.max_message_size,
            max_recipients: d.max_recipients,
            max_connections: d.max_connections,
            max_connections_per_ip: d.max_connections_per_ip,
            max_errors: d.max_errors,
            max_received_headers: d.max_received_headers,
            max_pipelined: d.max_pipelined,
            bare_line_ends: d.bare_line_ends,
            auth_max_failures: d.auth_lockout.max_failures,
            auth_lockout_secs: d.auth_lockout.window.as_secs(),
            command_timeout_secs: d.timeouts.command.as_secs(),
            data_block_timeout_secs: d.timeouts.data_block.as_secs(),
            data_termination_timeout_secs: d.timeouts.data_termination.as_secs(),
        }
    }
}

impl Config {
    /// `--config FILE`, else `./relayward.toml` if present, else the embedded defaults.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let p = PathBuf::from("relayward.toml");
                p.exists().then_some(p)
            }
        };
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration in force, every default written out, as TOML (`check-config`).
    /// Secrets appear as `"<set>"`.
    pub fn effective_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("cannot print the configuration")
    }

    pub fn validate(&self) -> Result<()> {
        self.detector.validate().map_err(anyhow::Error::msg)?;
        self.reputation.validate().map_err(anyhow::Error::msg)?;
        self.scan.validate().map_err(anyhow::Error::msg)?;
        if self.sender_limits.is_some() && self.detector.sender_limits != SenderLimits::default() {
            anyhow::bail!("give the sender limits in [sender_limits] or in [detector.sender_limits], not both");
        }
        if let Some(url) = &self.alerts.webhook_url {
            if !url.starts_with("http://") {
                anyhow::bail!("alerts.webhook_url must be an http:// URL (https is not supported yet), not {url:?}");
            }
        }
        if let Some(from) = &self.alerts.from {
            relayward_core::Address::parse(from, true)
                .map_err(|e| anyhow::anyhow!("alerts.from: {e}"))?;
        }
        if self.listeners.is_empty() {
            anyhow::bail!("at least one [[listener]] is needed");
        }
        if self.delivery.retry_schedule_secs.is_empty() {
            anyhow::bail!("delivery.retry_schedule_secs needs at least one delay");
        }
        for l in &self.listeners {
            if l.tls_cert.is_some() != l.tls_key.is_some() {
                anyhow::bail!("listener {}: tls_cert and tls_key go together", l.address);
            }
            if l.implicit_tls && l.tls_cert.is_none() {
                anyhow::bail!(
                    "listener {}: implicit_tls needs tls_cert and tls_key",
                    l.address
                );
            }
        }
        if let Some(url) = &self.counters.url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                anyhow::bail!(
                    "counters.url must be a redis:// or rediss:// URL, not {:?}",
                    redact_url(url)
                );
            }
            if self.counters.sync_ms == 0 || self.counters.sync_ms > 1000 {
                anyhow::bail!("counters.sync_ms must be between 1 and 1000");
            }
        }
        if let Some(name) = &self.server.node_name {
            crate::cluster::check_node_name(name)
                .map_err(|e| anyhow::anyhow!("server.node_name: {e}"))?;
        }
        crate::forwarding::validate(self)?;
        crate::egress::validate(&self.egress_pools)?;
        Ok(())
    }

    /// One of several nodes: a shared store (PostgreSQL) or shared counters (Redis).
    pub fn clustered(&self) -> bool {
        self.counters.url.is_some() || !self.store_url().starts_with("sqlite:")
    }

    /// This node's name: `[server] node_name`, else the host name, else `relayward`.
    pub fn node_name(&self) -> String {
        if let Some(n) = self.server.node_name.as_deref().filter(|n| !n.is_empty()) {
            return n.to_string();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "relayward".into())
    }

    pub fn store_url(&self) -> String {
        match &self.store.url {
            Some(u) => u.clone(),
            None => format!(
                "sqlite://{}",
                self.server.data_dir.join("relayward.db").display()
            ),
        }
    }

    /// The scheduler's settings; tenant routes and egress pool pins are resolved by the caller
    /// (names need the store).
    pub fn delivery(&self) -> relayward_queue::DeliveryConfig {
        let d = &self.delivery;
        let secs = Duration::from_secs;
        relayward_queue::DeliveryConfig {
            hostname: self.server.hostname.clone(),
            smart_host: d.smart_host.clone(),
            mx_port: d.mx_port,
            dns_resolver: d.dns_resolver,
            retry_schedule: d.retry_schedule_secs.iter().map(|s| secs(*s)).collect(),
            max_lifetime: secs(d.max_lifetime_secs),
            delay_warning: (d.delay_warning_secs > 0).then(|| secs(d.delay_warning_secs)),
            connect_timeout: secs(d.connect_timeout_secs),
            command_timeout: secs(d.command_timeout_secs),
            data_timeout: secs(d.data_timeout_secs),
            max_workers: d.max_workers.max(1),
            max_per_destination: d.max_per_destination.max(1),
            postmaster: d.postmaster.clone(),
            egress_pools: crate::egress::queue_pools(&self.egress_pools),
            throttle: relayward_queue::throttle::ThrottleConfig {
                rate_per_minute: d.throttle_rate_per_minute.max(1),
                restore_after: secs(d.throttle_restore_secs.max(1)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.server.data_dir.join("spool")
    }

    /// The default per-sender limits: `[sender_limits]`, else `[detector.sender_limits]`.
    pub fn default_sender_limits(&self) -> SenderLimits {
        self.sender_limits.unwrap_or(self.detector.sender_limits)
    }

    /// The sender of alert emails.
    pub fn alerts_from(&self) -> String {
        self.alerts
            .from
            .clone()
            .unwrap_or_else(|| format!("postmaster@{}", self.server.hostname))
    }
}

/// A secret in `relayward check-config`'s output: whether it is set, never its value.
pub fn redacted_opt<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("<set>"),
        None => s.serialize_none(),
    }
}

/// A URL without the password of its user part (`redis://:secret@host` shows as
/// `redis://<set>@host`).
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://<set>@{host}{path}"),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

pub fn redacted_url<S: serde::Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(u) => s.serialize_str(&redact_url(u)),
        None => s.serialize_none(),
    }
}

/// Secrets listed in `relayward check-config`'s output: how many, never their values.
pub fn redacted_list<S: serde::Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for _ in v {
        seq.serialize_element("<set>")?;
    }
    seq.end()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_file() {
        let c = Config::default();
        assert_eq!(c.listeners[0].address.to_string(), "127.0.0.1:2525");
        assert_eq!(c.store_url(), "sqlite://./relayward-data/relayward.db");
    }

    #[test]
    fn parses_design_example_and_rejects_typos() {
        let c: Config = toml::from_str(
            r#"
            [server]
            hostname = "relay.test"
            data_dir = "/tmp/x"
            [[listener]]
            address = "127.0.0.1:2526"
            [store]
            url = "sqlite:///tmp/x/db"
            [delivery]
            smart_host = "127.0.0.1:2527"
            mx_port = 2525
            dns_resolver = "127.0.0.1:5353"
            "#,
        )
        .unwrap();
        assert_eq!(c.delivery.mx_port, 2525);
        assert_eq!(c.listeners.len(), 1);
        assert!(toml::from_str::<Config>("[server]\nhostnme = \"x\"").is_err());
    }

    #[test]
    fn example_file_parses_with_the_defaults() {
        let c: Config = toml::from_str(include_str!("../../../relayward.example.toml")).unwrap();
        c.validate().unwrap();
        assert_eq!(c.detector, DetectorConfig::default());
        assert_eq!(c.default_sender_limits(), SenderLimits::default());
        assert_eq!(c.server.detector_interval_ms, 5000);
    }

    #[test]
    fn detector_sender_limits_and_alerts() {
        let c: Config = toml::from_str(
            r#"
            [detector]
            burst_budget = 300
            [detector.unregistered_domains]
            warn_factor = 4.0
            [sender_limits]
            messages_per_minute = 10
            action = "block"
            [alerts]
            webhook_url = "http://127.0.0.1:9/hook"
            webhook_secret = "s3cret"
            from = "abuse@relay.test"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.detector.burst_budget, 300);
        assert_eq!(c.detector.floor_unregistered_per_hour, 100);
        let l = c.default_sender_limits();
        assert_eq!(l.messages_per_minute, 10);
        assert_eq!(l.recipients_per_day, 10_000);
        assert_eq!(l.action, relayward_policy::limits::LimitAction::Block);
        assert_eq!(c.alerts_from(), "abuse@relay.test");
        assert_eq!(c.alerts.webhook_max_attempts, 6);

        let d = Config::default();
        assert_eq!(d.alerts_from(), "postmaster@relay.example.net");
        assert_eq!(d.default_sender_limits().messages_per_minute, 30);
        d.validate().unwrap();

        let both: Config = toml::from_str(
            "[sender_limits]\nmessages_per_minute = 5\n[detector.sender_limits]\nmessages_per_minute = 6\n",
        )
        .unwrap();
        assert!(both
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not both"));
        let https: Config =
            toml::from_str("[alerts]\nwebhook_url = \"https://x.example/\"\n").unwrap();
        assert!(https.validate().is_err());
        let bad: Config = toml::from_str("[detector]\nburst_budget = 10\n").unwrap();
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("burst_budget"));
        assert!(toml::from_str::<Config>("[alerts]\nwebhok_url = \"x\"\n").is_err());
    }
}
