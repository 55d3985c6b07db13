//! The per-message policy path with a large directory loaded: 100,000 tenants, 1,000,000 verified
//! accepted domains, one IP connector per tenant. One iteration = what the relay does for a
//! message: attribute the session, MAIL FROM (sender class, restriction state, relay rule), then
//! record the accepted message in the counters and evaluate the detector.
//!
//! `cargo bench -p relayward-policy --bench policy_path` prints criterion's estimate and, from a
//! separate timed loop, the p50/p99/p999 of single iterations.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::Criterion;
use relayward_core::*;
use relayward_policy::counters::{Counters, CountersConfig, InProcessCounters, MessageEvent};
use relayward_policy::detector::{Detector, DetectorConfig, TenantStatus};
use relayward_policy::{attribute, check_mail, ClientFacts, Directory, MailOutcome};

const TENANTS: i64 = 100_000;
const DOMAINS_PER_TENANT: i64 = 10;

fn tenant_ip(t: i64) -> IpAddr {
    // 10.x.y.z: one /32 per tenant
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32 + t as u32))
}

fn directory() -> Directory {
    let mut data = DirectoryData {
        version: 1,
        ..Default::default()
    };
    for t in 1..=TENANTS {
        data.tenants.push(Tenant {
            id: TenantId(t),
            name: format!("tenant{t}"),
            state: TenantState::Active,
            admin_emails: vec![],
            created_at: Timestamp(0),
        });
        for d in 0..DOMAINS_PER_TENANT {
            data.domains.push(AcceptedDomain {
                id: DomainId(t * DOMAINS_PER_TENANT + d),
                tenant_id: TenantId(t),
                domain: format!("d{d}.tenant{t}.example"),
                kind: DomainKind::Authoritative,
                match_subdomains: d == 0,
                verified: true,
                verification_token: String::new(),
                created_at: Timestamp(0),
                verified_at: Some(Timestamp(0)),
            });
        }
        data.connectors.push(Connector {
            id: ConnectorId(t),
            tenant_id: TenantId(t),
            name: "onprem".into(),
            kind: ConnectorKind::OnPremises,
            ip_ranges: vec![ipnet::IpNet::from(tenant_ip(t))],
            cert_name: None,
            auth_user: None,
            auth_password_hash: None,
            require_tls: false,
            enabled: true,
            allow_unregistered: false,
            restrict_domains_to_ips: false,
            restrict_domains_to_cert: false,
            blocked: false,
            created_at: Timestamp(0),
            created_by: String::new(),
            updated_at: Timestamp(0),
            updated_by: String::new(),
            last_used_at: None,
        });
    }
    Directory::new(data)
}

struct Fixture {
    dir: Directory,
    counters: InProcessCounters,
    detector: Detector,
    senders: Vec<Address>,
    rcpts: Vec<Address>,
}

impl Fixture {
    fn new() -> Fixture {
        let started = Instant::now();
        let dir = directory();
        eprintln!(
            "directory: {} tenants, {} domains loaded in {:.1} s",
            TENANTS,
            TENANTS * DOMAINS_PER_TENANT,
            started.elapsed().as_secs_f64()
        );
        let cfg = DetectorConfig::default();
        Fixture {
            dir,
            counters: InProcessCounters::new(CountersConfig::default()),
            detector: Detector::new(cfg),
            senders: (1..=TENANTS)
                .map(|t| Address::parse(&format!("user@d3.tenant{t}.example"), false).unwrap())
                .collect(),
            rcpts: vec![Address::parse("someone@dest.example", false).unwrap()],
        }
    }

    /// One message through the policy path; `i` picks the tenant.
    /// (The fixture takes a second to build, so `main` builds it once rather than per benchmark
    /// group, which criterion's macros would do.)
    fn one(&self, i: u64, now_ms: i64) {
        let t = (i % TENANTS as u64) as i64 + 1;
        let facts = ClientFacts::new(tenant_ip(t));
        let att = attribute(&self.dir, &facts);
        let sender = &self.senders[(t - 1) as usize];
        let Ok(MailOutcome::Accepted { attributed, class }) =
            check_mail(&self.dir, &facts, &att, Some(sender))
        else {
            panic!("tenant {t} refused");
        };
        let snapshot = self.counters.record(
            now_ms,
            &MessageEvent {
                tenant: attributed.tenant_id,
                connector: attributed.connector_id,
                class,
                sender: Some(sender),
                mismatch: false,
                header_from_domain: None,
                recipients: &self.rcpts,
                external_recipients: 1,
                client_ip: Some(facts.ip),
                queue_id: None,
                message_id: None,
            },
        );
        let status = TenantStatus::active(0);
        std::hint::black_box(
            self.detector
                .evaluate(now_ms, TenantId(t), &status, &snapshot),
        );
    }
}

fn bench(c: &mut Criterion, f: &Fixture) {
    let mut i = 0u64;
    let base = 1_800_000_000_000i64;
    c.bench_function("policy_path/100k_tenants_1M_domains", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            f.one(i, base + (i / 1000) as i64);
        })
    });
}

fn percentiles(f: &Fixture) {
    let n = 1_000_000u64;
    let base = 1_900_000_000_000i64;
    let mut samples = Vec::with_capacity(n as usize);
    for i in 0..n {
        let k = i.wrapping_mul(7919);
        let t0 = Instant::now();
        f.one(k, base + (i / 1000) as i64);
        samples.push(t0.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let p = |q: f64| {
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)] as f64 / 1000.0
    };
    println!(
        "policy path, {n} messages over {TENANTS} tenants: p50 {:.2} us, p99 {:.2} us, p99.9 {:.2} us, max {:.2} us",
        p(0.50),
        p(0.99),
        p(0.999),
        *samples.last().unwrap() as f64 / 1000.0
    );
}

fn main() {
    let f = Fixture::new();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &f);
    percentiles(&f);
    c.final_summary();
}
