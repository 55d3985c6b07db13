//! DNS lookups the binary needs itself (domain verification). `delivery.dns_resolver` points
//! every lookup at one server (tests run theirs on loopback); otherwise the system's resolvers.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Result};
use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};

pub fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver> {
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_secs(3);
    opts.attempts = 2;
    let builder = match server {
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
        None => Resolver::builder_tokio().map_err(|e| anyhow!("system DNS configuration: {e}"))?,
    };
    builder
        .with_options(opts)
        .build()
        .map_err(|e| anyhow!("DNS resolver: {e}"))
}

/// The TXT strings published at `domain`, each record's strings joined. An empty list means the
/// name has no TXT record; an error means the DNS could not be asked (not "not verified").
pub async fn lookup_txt(server: Option<SocketAddr>, domain: &str) -> Result<Vec<String>> {
    let resolver = resolver(server)?;
    let name = format!("{domain}.");
    match resolver.txt_lookup(name.as_str()).await {
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
        Err(e) => Err(anyhow!("could not check {domain}: DNS lookup failed: {e}")),
    }
}
