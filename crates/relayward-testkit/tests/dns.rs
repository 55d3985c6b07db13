use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use hickory_resolver::config::ResolverOpts;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};
use relayward_testkit::{DnsServer, RData, RecordType};

fn mx_of(lookup: &hickory_resolver::lookup::Lookup) -> Vec<(u16, String)> {
    let mut mx: Vec<(u16, String)> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
            _ => None,
        })
        .collect();
    mx.sort();
    mx
}

fn txt_of(lookup: &hickory_resolver::lookup::Lookup) -> Vec<Vec<String>> {
    let mut txt: Vec<Vec<String>> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(t) => Some(
                t.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    txt.sort();
    txt
}

/// A resolver built the way relayward builds one: the server's address from `addr()` only.
fn quick_resolver(dns: &DnsServer, timeout: Duration) -> TokioResolver {
    let mut opts = ResolverOpts::default();
    opts.timeout = timeout;
    opts.attempts = 1;
    opts.cache_size = 0;
    Resolver::builder_with_config(dns.resolver_config(), TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .unwrap()
}

#[tokio::test]
async fn resolves_mx_a_aaaa_txt() {
    let dns = DnsServer::start().await;
    dns.add_mx("example.com", 10, "mx1.example.com");
    dns.add_mx("example.com", 20, "mx2.example.com.");
    dns.add_a("mx1.example.com", "127.0.0.2".parse().unwrap());
    dns.add_aaaa("mx1.example.com", "::1".parse().unwrap());
    dns.add_txt("_x.example.com", &["relayward-verification=abc"]);
    dns.add_txt("_x.example.com", &["v=spf1 ", "-all"]);
    let resolver = dns.resolver();

    let mx = resolver.mx_lookup("EXAMPLE.com.").await.unwrap();
    assert_eq!(
        mx_of(&mx),
        vec![
            (10, "mx1.example.com.".to_owned()),
            (20, "mx2.example.com.".to_owned())
        ]
    );

    let ips = resolver.lookup_ip("mx1.example.com.").await.unwrap();
    let mut ips: Vec<IpAddr> = ips.iter().collect();
    ips.sort();
    assert_eq!(
        ips,
        vec![
            "127.0.0.2".parse::<IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );

    let txt = resolver.txt_lookup("_x.example.com.").await.unwrap();
    assert_eq!(
        txt_of(&txt),
        vec![
            vec!["relayward-verification=abc".to_owned()],
            vec!["v=spf1 ".to_owned(), "-all".to_owned()],
        ]
    );

    let queries = dns.queries();
    assert!(queries.contains(&("example.com".to_owned(), RecordType::MX)));
    assert!(queries.contains(&("_x.example.com".to_owned(), RecordType::TXT)));
}

#[tokio::test]
async fn negative_answers_and_null_mx() {
    let dns = DnsServer::start().await;
    dns.add_a("host.example", Ipv4Addr::new(127, 0, 0, 9));
    dns.add_txt("_dmarc.sub.example", &["v=DMARC1; p=none"]);
    dns.add_mx("nullmx.example", 0, ".");
    let resolver = dns.resolver();

    let err = resolver.mx_lookup("missing.example.").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err}");

    let err = resolver.mx_lookup("host.example.").await.unwrap_err();
    assert!(err.is_no_records_found() && !err.is_nx_domain(), "{err}");

    // An empty non-terminal exists, it just has no records.
    let err = resolver.txt_lookup("sub.example.").await.unwrap_err();
    assert!(err.is_no_records_found() && !err.is_nx_domain(), "{err}");

    let mx = resolver.mx_lookup("nullmx.example.").await.unwrap();
    assert_eq!(mx_of(&mx), vec![(0, ".".to_owned())]);
}

#[tokio::test]
async fn servfail_delay_and_zone_changes() {
    let dns = DnsServer::start().await;
    dns.add_mx("broken.example", 10, "mx.broken.example");
    dns.set_servfail("Broken.Example");
    dns.add_mx("slow.example", 10, "mx.slow.example");
    dns.set_delay("slow.example", Duration::from_secs(5));
    let resolver = quick_resolver(&dns, Duration::from_millis(300));

    let err = resolver.mx_lookup("broken.example.").await.unwrap_err();
    assert!(!err.is_nx_domain() && !err.is_no_records_found(), "{err}");
    dns.clear_servfail("broken.example");
    assert_eq!(
        mx_of(&resolver.mx_lookup("broken.example.").await.unwrap()).len(),
        1
    );

    let started = Instant::now();
    let err = resolver.mx_lookup("slow.example.").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "{err}");
    assert!(!err.is_nx_domain(), "{err}");

    dns.remove_name("broken.example");
    let err = resolver.mx_lookup("broken.example.").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err}");
}

#[tokio::test]
async fn cname_and_long_txt_over_tcp() {
    let dns = DnsServer::start().await;
    dns.add_cname("alias.example", "target.example");
    dns.add_a("target.example", Ipv4Addr::new(127, 0, 0, 3));
    let key = "k".repeat(1200);
    dns.add_txt("sel._domainkey.example", &[&format!("v=DKIM1; p={key}")]);
    let resolver = dns.resolver();

    let ips: Vec<IpAddr> = resolver
        .lookup_ip("alias.example.")
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(ips, vec![IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))]);

    // 1200+ bytes does not fit a UDP answer: the server truncates and the resolver retries on TCP.
    let txt = resolver
        .txt_lookup("sel._domainkey.example.")
        .await
        .unwrap();
    let joined: Vec<String> = txt_of(&txt).into_iter().map(|s| s.concat()).collect();
    assert_eq!(joined, vec![format!("v=DKIM1; p={key}")]);
}

#[tokio::test]
async fn ptr_records() {
    let dns = DnsServer::start().await;
    dns.add_ptr("192.0.2.7".parse().unwrap(), "relay.example");
    let resolver = dns.resolver();
    let names: Vec<String> = resolver
        .reverse_lookup("192.0.2.7".parse::<IpAddr>().unwrap())
        .await
        .unwrap()
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::PTR(p) => Some(p.0.to_ascii()),
            _ => None,
        })
        .collect();
    assert_eq!(names, vec!["relay.example.".to_owned()]);
}
