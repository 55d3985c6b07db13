//! DKIM signing of relayed mail: the `[dkim]` settings, the signers of the domains that have a
//! key, and `relayward domain dkim-key` / `relayward srs dkim-key`.
//!
//! Mail is signed when it is accepted, before it is spooled, not at each delivery attempt:
//! the signature is made once and kept with the message, so retries, restarts and the queue
//! tools all see the bytes that will go out (size included), a key that becomes unreadable
//! later cannot leave queued mail unsigned, and the delivery side stays free of tenants,
//! directories and key stores. What that asks of the operator: when a key is rotated, keep the
//! old selector's DNS record published for as long as mail can stay queued
//! (`delivery.max_lifetime_secs`, 3 days by default).
//!
//! Keys: the store records which selector signs for which domain (and whose domain it is);
//! the private key lives only in `<data_dir>/dkim/<domain>.<selector>.key`, mode 0600, written
//! by [`relayward_queue::dkim::save_key`] and never printed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use relayward_core::{normalize_domain, TenantId};
use relayward_policy::Directory;
use relayward_queue::dkim::{save_key, DkimAlgorithm, DkimPrivateKey, DkimSigner};
use relayward_store::Store;
use serde::Deserialize;

use crate::config::Config;

/// `[dkim]` in the configuration file.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkimSection {
    /// Selector of new keys when `--selector` is not given.
    pub selector: String,
    /// Also sign mail whose envelope sender was rewritten with SRS (relayed mail of unregistered
    /// senders) with the SRS domain's key, when it has one (`relayward srs dkim-key`). Such a
    /// signature does not align with the header From, but it vouches for the relay.
    pub sign_srs: bool,
    /// Where the private keys live. Default `<data_dir>/dkim`. In a cluster, a path every node
    /// reads (a shared mount, or files your configuration management puts on each node): the
    /// store says which selector signs for which domain, the key itself never enters the
    /// database, whose backups and replicas more people can read than a 0600 file.
    pub key_dir: Option<PathBuf>,
}

impl Default for DkimSection {
    fn default() -> Self {
        DkimSection {
            selector: "relayward".into(),
            sign_srs: false,
            key_dir: None,
        }
    }
}

/// Where the private keys live.
pub fn key_dir(config: &Config) -> PathBuf {
    match &config.dkim.key_dir {
        Some(d) => d.clone(),
        None => config.server.data_dir.join("dkim"),
    }
}

/// `<data_dir>/dkim/<domain>.<selector>.key`
pub fn key_path(dir: &Path, domain: &str, selector: &str) -> PathBuf {
    dir.join(format!("{domain}.{selector}.key"))
}

/// A domain's signer.
#[derive(Debug)]
pub struct DomainKey {
    /// The tenant the domain belongs to; `None` for the SRS domain.
    pub tenant: Option<TenantId>,
    pub signer: DkimSigner,
}

/// The signers of every domain with a key, loaded from the store's records and the key files
/// once, then only when the records change.
pub struct DkimKeys {
    dir: PathBuf,
    keys: RwLock<HashMap<String, Arc<DomainKey>>>,
}

impl DkimKeys {
    pub fn new(dir: PathBuf) -> DkimKeys {
        DkimKeys {
            dir,
            keys: RwLock::default(),
        }
    }

    /// Reloads the key records; signers whose selector did not change are kept as they are.
    /// A key file that cannot be used leaves its domain unsigned, with a warning.
    pub async fn refresh(&self, store: &dyn Store) -> Result<()> {
        let records = store.list_dkim_keys().await?;
        let current = self.keys.read().unwrap_or_else(|e| e.into_inner()).clone();
        let dir = self.dir.clone();
        let next = tokio::task::spawn_blocking(move || {
            let mut next = HashMap::new();
            for r in records {
                if let Some(k) = current.get(&r.domain) {
                    if k.signer.selector() == r.selector && k.tenant == r.tenant_id {
                        next.insert(r.domain, k.clone());
                        continue;
                    }
                }
                let path = key_path(&dir, &r.domain, &r.selector);
                let loaded = relayward_queue::dkim::load_key(&path)
                    .and_then(|key| DkimSigner::new(&r.domain, &r.selector, &key));
                match loaded {
                    Ok(signer) => {
                        tracing::info!(domain = %r.domain, selector = %r.selector, "DKIM key loaded");
                        next.insert(
                            r.domain,
                            Arc::new(DomainKey {
                                tenant: r.tenant_id,
                                signer,
                            }),
                        );
                    }
                    Err(e) => {
                        tracing::warn!(domain = %r.domain, selector = %r.selector, error = %e, "DKIM key unusable: the domain's mail goes out unsigned");
                    }
                }
            }
            next
        })
        .await
        .map_err(|e| anyhow!("DKIM key loading: {e}"))?;
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    pub fn get(&self, domain: &str) -> Option<Arc<DomainKey>> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(domain)
            .cloned()
    }

    /// Domains with a usable key, sorted.
    pub fn domains(&self) -> Vec<String> {
        let mut d: Vec<String> = self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        d.sort();
        d
    }

    /// The key that signs `tenant`'s message whose header From is in `from_domain`: that of the
    /// From domain itself, or of the accepted domain that covers it (`match_subdomains`), as
    /// long as the From domain is a verified accepted domain of the tenant and the key is the
    /// tenant's.
    pub fn for_tenant(
        &self,
        dir: &Directory,
        tenant: TenantId,
        from_domain: &str,
    ) -> Option<Arc<DomainKey>> {
        if !dir.is_registered(tenant, from_domain) {
            return None;
        }
        let mut candidate = from_domain;
        loop {
            if let Some(k) = self.get(candidate) {
                if k.tenant == Some(tenant) && dir.is_registered(tenant, candidate) {
                    return Some(k);
                }
            }
            match candidate.find('.') {
                Some(dot) if candidate[dot + 1..].contains('.') => {
                    candidate = &candidate[dot + 1..]
                }
                _ => return None,
            }
        }
    }
}

/// `relayward domain dkim-key TENANT DOMAIN`
#[derive(Args, Debug)]
pub struct DkimKeyArgs {
    pub tenant: String,
    pub domain: String,
    #[arg(long, default_value = "ed25519", value_parser = ["ed25519", "rsa2048"])]
    pub algorithm: String,
    /// Default: `[dkim] selector` ("relayward")
    #[arg(long)]
    pub selector: Option<String>,
}

/// `relayward domain dkim-key`: a new key for a tenant's accepted domain.
pub async fn domain_dkim_key(config: &Config, store: &dyn Store, a: DkimKeyArgs) -> Result<()> {
    let t = store
        .find_tenant(&a.tenant)
        .await?
        .ok_or_else(|| anyhow!("no tenant {:?}", a.tenant))?;
    let domain = normalize_domain(&a.domain)?;
    let d = store.get_domain(t.id, &domain).await?.ok_or_else(|| {
        anyhow!(
            "tenant {} has no domain {domain}: `relayward domain add` it first",
            t.name
        )
    })?;
    if !d.verified {
        eprintln!("note: {domain} is not verified yet; its mail is signed once it is");
    }
    create_key(
        config,
        store,
        &domain,
        Some(t.id),
        &a.algorithm,
        a.selector.as_deref(),
    )
    .await
}

/// Makes a key for `domain`, saves it (mode 0600), records it and prints the TXT record to
/// publish, and only that (the private key is never printed).
pub async fn create_key(
    config: &Config,
    store: &dyn Store,
    domain: &str,
    tenant: Option<TenantId>,
    algorithm: &str,
    selector: Option<&str>,
) -> Result<()> {
    let algorithm: DkimAlgorithm = algorithm.parse()?;
    let selector = selector
        .unwrap_or(&config.dkim.selector)
        .trim()
        .to_ascii_lowercase();
    if !valid_selector(&selector) {
        bail!("selector {selector:?} is not a DNS name (letters, digits, '-', '_', dots)");
    }
    let dir = key_dir(config);
    create_private_dir(&dir)?;
    let path = key_path(&dir, domain, &selector);
    if path.exists() {
        bail!(
            "{} exists: a new key for {domain} needs a new selector (--selector), so that mail \
             signed with the old one still verifies; remove the file to start over",
            path.display()
        );
    }
    let key = tokio::task::spawn_blocking(move || DkimPrivateKey::generate(algorithm))
        .await
        .map_err(|e| anyhow!("key generation: {e}"))??;
    save_key(&path, &key)?;
    if let Err(e) = store
        .set_dkim_key(
            domain,
            tenant,
            &selector,
            algorithm.as_str(),
            &crate::cli::actor(),
        )
        .await
    {
        // Unrecorded, the file would only block the selector.
        let _ = std::fs::remove_file(&path);
        return Err(e.into());
    }
    println!("{}", txt_record(domain, &selector, &key.dns_txt_record()));
    Ok(())
}

/// `<selector>._domainkey.<domain> IN TXT "..."`, the value cut into character-strings of at
/// most 255 bytes (RFC 1035 section 3.3.14; an RSA key does not fit in one).
pub fn txt_record(domain: &str, selector: &str, value: &str) -> String {
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{domain} IN TXT {}",
        strings.join(" ")
    )
}

fn valid_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The key directory, readable by the relay's user only.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {}", dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_records_are_split_at_255_bytes() {
        let short = txt_record("acme.example", "relayward", "v=DKIM1; k=ed25519; p=abc");
        assert_eq!(
            short,
            "relayward._domainkey.acme.example IN TXT \"v=DKIM1; k=ed25519; p=abc\""
        );
        let value = "x".repeat(400);
        let long = txt_record("acme.example", "s", &value);
        let parts: Vec<&str> = long.split(" IN TXT ").nth(1).unwrap().split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].len(), 257);
        assert_eq!(parts[1].len(), 147);
    }

    #[test]
    fn selectors() {
        assert!(valid_selector("relayward"));
        assert!(valid_selector("2024-01.eu"));
        assert!(!valid_selector("a b"));
        assert!(!valid_selector(""));
        assert!(!valid_selector("a..b"));
    }
}
