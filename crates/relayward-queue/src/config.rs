//! Outbound delivery settings. Every field has a default, so `DeliveryConfig::default()` is a
//! working production configuration (MX delivery on port 25, system resolvers).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// How the scheduler delivers.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// EHLO name and `Reporting-MTA` of DSNs.
    pub hostname: String,
    /// `host:port` (an IP literal, `[v6]:port`, or a name resolved by A/AAAA) that receives every
    /// message instead of the recipients' MX hosts. Tenant routes still take precedence.
    pub smart_host: Option<String>,
    /// Port used for MX and A-record delivery.
    pub mx_port: u16,
    /// Send every DNS query to this server instead of the system's resolvers.
    pub dns_resolver: Option<SocketAddr>,
    /// Delay before the n-th retry; the last entry repeats until `max_lifetime`.
    pub retry_schedule: Vec<Duration>,
    /// A message still undelivered this long after it was received is bounced (4.4.7).
    pub max_lifetime: Duration,
    /// After this long undelivered, the sender gets one "delayed" DSN. `None`: never.
    pub delay_warning: Option<Duration>,
    pub connect_timeout: Duration,
    /// Greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET and the DATA command.
    pub command_timeout: Duration,
    /// Sending the message content and waiting for the reply to the final dot.
    pub data_timeout: Duration,
    /// Messages being delivered at once, in total.
    pub max_workers: usize,
    /// Messages being delivered at once to one destination (a recipient domain, the smart host, or
    /// one tenant route).
    pub max_per_destination: usize,
    /// Tenant id -> next hop for all of that tenant's mail.
    pub tenant_routes: HashMap<i64, TenantRoute>,
    /// Where DSNs go that cannot be delivered to their own recipient (double bounces). `None`:
    /// such DSNs are dropped with a log line.
    pub postmaster: Option<String>,
    /// How long an idle outbound connection is kept for the next message to the same host.
    pub idle_connection_timeout: Duration,
    /// Transactions on one connection before it is closed and a new one opened.
    pub max_messages_per_connection: u32,
    /// How often the control directory (`<spool>/control`) is checked for admin requests.
    pub control_poll_interval: Duration,
    /// Source addresses outbound connections leave from, by kind of mail ([`crate::egress`]).
    /// Empty: connections are not bound; the system picks the source address.
    pub egress_pools: Vec<EgressPool>,
    /// Tenant id -> the egress pool all of that tenant's mail leaves from (an operator's pin).
    pub tenant_pools: HashMap<i64, String>,
    /// Slowing down providers that answer with rate-limit or reputation replies.
    pub throttle: crate::throttle::ThrottleConfig,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            hostname: "localhost".into(),
            smart_host: None,
            mx_port: 25,
            dns_resolver: None,
            retry_schedule: vec![
                Duration::from_secs(60),
                Duration::from_secs(5 * 60),
                Duration::from_secs(15 * 60),
                Duration::from_secs(30 * 60),
                Duration::from_secs(3600),
                Duration::from_secs(2 * 3600),
                Duration::from_secs(4 * 3600),
            ],
            max_lifetime: Duration::from_secs(3 * 24 * 3600),
            delay_warning: Some(Duration::from_secs(4 * 3600)),
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(10 * 60),
            max_workers: 64,
            max_per_destination: 16,
            tenant_routes: HashMap::new(),
            postmaster: None,
            idle_connection_timeout: Duration::from_secs(5),
            max_messages_per_connection: 1000,
            control_poll_interval: Duration::from_secs(1),
            egress_pools: Vec::new(),
            tenant_pools: HashMap::new(),
            throttle: crate::throttle::ThrottleConfig::default(),
        }
    }
}

impl DeliveryConfig {
    /// Delay before the retry that follows the `attempts`-th failed attempt (1-based).
    pub fn retry_delay(&self, attempts: u32) -> Duration {
        let n = self.retry_schedule.len();
        if n == 0 {
            return Duration::from_secs(60);
        }
        self.retry_schedule[(attempts.max(1) as usize - 1).min(n - 1)]
    }
}

/// A tenant's own next hop (e.g. its provider's submission server).
#[derive(Debug, Clone, Default)]
pub struct TenantRoute {
    /// `host:port`: IP literal or a name resolved by A/AAAA.
    pub host: String,
    /// AUTH PLAIN credentials. Only ever sent inside TLS.
    pub auth_user: Option<String>,
    pub auth_password: Option<String>,
    /// Defer rather than deliver without STARTTLS.
    pub require_tls: bool,
    /// With `require_tls`: also verify the server certificate against `tls_ca_file` (PEM) or, when
    /// that is unset, the webpki root set, and the name in `host`.
    pub verify_tls: bool,
    pub tls_ca_file: Option<PathBuf>,
}

/// A named set of source addresses (`[[egress_pool]]`); see [`crate::egress`] for which mail
/// uses which pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressPool {
    pub name: String,
    /// IPv4 and IPv6 addresses of this host, used in turn; a connection binds one of the
    /// target's family.
    pub source_addresses: Vec<IpAddr>,
    /// EHLO name on this pool's connections (it should match the addresses' PTR records).
    /// `None`: the server's hostname.
    pub ehlo_hostname: Option<String>,
}
