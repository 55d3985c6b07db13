//! The DNS TXT lookup behind domain verification (the API's verify route, which the CLI's
//! `domain verify` calls too): one configured server (tests run theirs on loopback) or the
//! system's.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

/// How to reach DNS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsSettings {
    /// `None`: the system's resolvers.
    pub server: Option<SocketAddr>,
    /// Per attempt.
    pub timeout: Duration,
    pub attempts: usize,
}

/// Why DNS said nothing about the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    /// No resolver could be set up (the system's configuration, or the configured server).
    #[error("{0}")]
    Resolver(String),
    #[error("DNS lookup of {0} TXT timed out")]
    Timeout(String),
    #[error("DNS lookup of {domain} TXT failed: {detail}")]
    Failed { domain: String, detail: String },
}

fn resolver(settings: &DnsSettings) -> Result<TokioResolver, DnsError> {
    let mut opts = ResolverOpts::default();
    opts.timeout = settings.timeout;
    opts.attempts = settings.attempts;
    // A verification must see the record published a moment ago.
    opts.cache_size = 0;
    let builder = match settings.server {
        Some(addr) => {
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                TokioRuntimeProvider::default(),
            )
        }
        None => Resolver::builder_tokio()
            .map_err(|e| DnsError::Resolver(format!("system DNS configuration: {e}")))?,
    };
    builder
        .with_options(opts)
        .build()
        .map_err(|e| DnsError::Resolver(format!("DNS resolver: {e}")))
}

/// The TXT strings published at `domain` (A-labels), each record's strings joined. `Ok` with an
/// empty list: the name has no TXT record (or does not exist). `Err`: DNS could not be asked or
/// did not answer in time, which says nothing about the record.
pub async fn lookup_txt(settings: &DnsSettings, domain: &str) -> Result<Vec<String>, DnsError> {
    let resolver = resolver(settings)?;
    let name = format!("{domain}.");
    // Hickory's own timeouts apply per attempt; this bounds the whole lookup whatever happens.
    let budget = settings.timeout * (settings.attempts.max(1) as u32 + 1);
    let lookup = match tokio::time::timeout(budget, resolver.txt_lookup(name.as_str())).await {
        Ok(result) => result,
        Err(_) => return Err(DnsError::Timeout(domain.to_string())),
    };
    match lookup {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect()),
        Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(Vec::new()),
        Err(e) => Err(DnsError::Failed {
            domain: domain.to_string(),
            detail: e.to_string(),
        }),
    }
}
