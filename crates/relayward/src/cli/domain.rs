//! `relayward domain`: accepted domains, their DNS verification, header From declarations.

use anyhow::{anyhow, bail, Context, Result};
use clap::Subcommand;
use relayward_client::types::*;

use super::{print, print_json, Admin};

#[derive(Subcommand, Debug)]
pub enum DomainCmd {
    /// Register a domain; prints the TXT record to publish
    Add {
        tenant: String,
        domain: String,
        #[arg(long, default_value = "authoritative", value_parser = ["authoritative", "internal-relay"])]
        kind: String,
        #[arg(long)]
        match_subdomains: bool,
        /// The operator attests ownership (audited); no DNS check
        #[arg(long)]
        verified: bool,
    },
    /// Check the domain's DNS TXT record and mark it verified when it is there
    Verify { tenant: String, domain: String },
    /// Register many domains from a file (one per line; '#' comments); prints a summary
    Import {
        tenant: String,
        file: std::path::PathBuf,
        #[arg(long, default_value = "authoritative", value_parser = ["authoritative", "internal-relay"])]
        kind: String,
        #[arg(long)]
        match_subdomains: bool,
        /// The operator attests ownership of every domain in the file (audited)
        #[arg(long)]
        verified: bool,
    },
    /// List a tenant's domains
    List {
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove an accepted domain
    Remove { tenant: String, domain: String },
    /// Create a DKIM signing key for an accepted domain; prints the TXT record to publish
    /// (the private key stays in <data_dir>/dkim, mode 0600)
    DkimKey(crate::dkim::DkimKeyArgs),
    /// Declare a header From domain legitimate with the tenant's registered envelope senders
    /// (a service sending for a partner): such mail is not a header From mismatch
    AllowHeaderFrom {
        tenant: String,
        domain: String,
        /// Only through this connector (default: any of the tenant's)
        #[arg(long)]
        connector: Option<String>,
    },
    /// Withdraw such a declaration
    DisallowHeaderFrom {
        tenant: String,
        domain: String,
        #[arg(long)]
        connector: Option<String>,
    },
    /// List the tenant's declared header From domains
    HeaderFrom {
        tenant: String,
        #[arg(long)]
        json: bool,
    },
}

/// The id of the tenant's connector called `name`, if one is named.
async fn connector_id(admin: &Admin, t: &TenantView, name: Option<&str>) -> Result<Option<i64>> {
    Ok(match name {
        Some(name) => Some(admin.connector_named(t, name).await?.id),
        None => None,
    })
}

pub async fn run(admin: &Admin, cmd: DomainCmd) -> Result<()> {
    match cmd {
        DomainCmd::DkimKey(_) => unreachable!("answered on the local host"),
        DomainCmd::Add {
            tenant,
            domain,
            kind,
            match_subdomains,
            verified,
        } => {
            let t = admin.tenant_named(&tenant).await?;
            let d = admin
                .add_domain(
                    t.id,
                    &AddDomain {
                        domain,
                        kind: Some(kind),
                        match_subdomains,
                        verified,
                    },
                )
                .await?;
            if d.verified {
                println!("{} verified (operator attestation)", d.domain);
            } else {
                println!("publish this TXT record, then run `relayward domain verify`:");
                println!("{}. IN TXT \"{}\"", d.domain, d.verification_record.value);
            }
        }
        DomainCmd::Verify { tenant, domain } => {
            let t = admin.tenant_named(&tenant).await?;
            let r = admin.verify_domain(t.id, &domain).await?;
            let (domain, wanted) = (&r.domain, &r.expected_record.value);
            match r.status {
                VerifyStatus::Verified => println!("{domain} verified"),
                VerifyStatus::NotFound => {
                    bail!("{domain} not verified: no TXT record found; publish \"{wanted}\"")
                }
                VerifyStatus::WrongToken => bail!(
                    "{domain} not verified: {} TXT record(s) found, none is \"{wanted}\"",
                    r.records_found
                ),
                VerifyStatus::Unchecked => bail!("could not check {domain}: {}", r.detail),
            }
        }
        DomainCmd::Import {
            tenant,
            file,
            kind,
            match_subdomains,
            verified,
        } => {
            let t = admin.tenant_named(&tenant).await?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            // Validate everything first: a bad line changes nothing.
            let mut domains = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or("").trim();
                if line.is_empty() {
                    continue;
                }
                let d = relayward_core::normalize_domain(line)
                    .map_err(|e| anyhow!("{}:{}: {e}", file.display(), n + 1))?;
                domains.push(d);
            }
            let present: std::collections::HashSet<String> = admin
                .domains(t.id)
                .await?
                .into_iter()
                .map(|d| d.domain)
                .collect();
            let (mut added, mut existing) = (0, 0);
            for domain in domains {
                if present.contains(&domain) {
                    existing += 1;
                    continue;
                }
                admin
                    .add_domain(
                        t.id,
                        &AddDomain {
                            domain,
                            kind: Some(kind.clone()),
                            match_subdomains,
                            verified,
                        },
                    )
                    .await?;
                added += 1;
            }
            println!("{added} added, {existing} already present");
        }
        DomainCmd::List { tenant, json } => {
            let t = admin.tenant_named(&tenant).await?;
            let domains = admin.domains(t.id).await?;
            if json {
                return print_json(&domains);
            }
            print::domains(&domains);
        }
        DomainCmd::Remove { tenant, domain } => {
            let t = admin.tenant_named(&tenant).await?;
            admin.remove_domain(t.id, &domain).await?;
            println!("{} removed", domain.trim().to_lowercase());
        }
        DomainCmd::AllowHeaderFrom {
            tenant,
            domain,
            connector,
        } => {
            let t = admin.tenant_named(&tenant).await?;
            let connector_id = connector_id(admin, &t, connector.as_deref()).await?;
            admin
                .declare_header_from(
                    t.id,
                    &DeclareHeaderFrom {
                        domain: domain.clone(),
                        connector_id,
                    },
                )
                .await?;
            println!(
                "header From {} allowed with {}'s registered senders",
                domain.trim().to_lowercase(),
                t.name
            );
        }
        DomainCmd::DisallowHeaderFrom {
            tenant,
            domain,
            connector,
        } => {
            let t = admin.tenant_named(&tenant).await?;
            let connector_id = connector_id(admin, &t, connector.as_deref()).await?;
            admin
                .withdraw_header_from(t.id, &domain, connector_id)
                .await?;
            println!(
                "header From {} no longer allowed",
                domain.trim().to_lowercase()
            );
        }
        DomainCmd::HeaderFrom { tenant, json } => {
            let t = admin.tenant_named(&tenant).await?;
            let declared = admin.header_from(t.id).await?;
            if json {
                return print_json(&declared);
            }
            let connectors = admin.connectors(t.id).await?;
            print::header_from(&declared, &connectors);
        }
    }
    Ok(())
}
