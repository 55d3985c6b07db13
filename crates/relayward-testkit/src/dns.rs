//! An authoritative DNS server for one test: every name it is asked about is either in its zone
//! or does not exist, so a relay under test resolves only what the test put there.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// Longest CNAME chain followed inside the zone before giving up (loops end here too).
const MAX_CNAME_HOPS: usize = 8;
/// UDP answer size without EDNS (RFC 1035 §4.2.1).
const CLASSIC_UDP_LIMIT: usize = 512;
/// Largest UDP answer we send even when a client advertises more.
const EDNS_UDP_LIMIT: u16 = 4096;

#[derive(Default)]
struct Zone {
    records: HashMap<String, Vec<RData>>,
    delays: HashMap<String, Duration>,
    servfail: HashSet<String>,
    queries: Vec<(String, RecordType)>,
    ttl: u32,
}

/// Authoritative DNS server on `127.0.0.1`, UDP and TCP on the same ephemeral port.
///
/// Names are case-insensitive and a trailing dot is optional. A name absent from the zone gets
/// NXDOMAIN (unless it is an empty non-terminal such as `example.com` when only
/// `_dmarc.example.com` exists, which gets NOERROR), a present name without the asked type gets
/// NOERROR with an empty answer. Negative answers carry an SOA so resolvers can cache them.
/// Record TTLs default to 0 so a test that changes the zone sees the change at once.
///
/// Dropping the server stops it.
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    tasks: Vec<JoinHandle<()>>,
}

impl DnsServer {
    /// Starts a server on `127.0.0.1` (UDP and TCP, same port). Panics if it cannot bind.
    pub async fn start() -> Self {
        let (udp, tcp) = bind_udp_and_tcp(IpAddr::V4(Ipv4Addr::LOCALHOST)).await;
        let addr = udp.local_addr().expect("udp local addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let tasks = vec![
            tokio::spawn(serve_udp(Arc::new(udp), zone.clone())),
            tokio::spawn(serve_tcp(tcp, zone.clone())),
        ];
        Self { addr, zone, tasks }
    }

    /// Address to configure as the only name server (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A hickory resolver configuration with this server as its only name server.
    pub fn resolver_config(&self) -> ResolverConfig {
        let mut udp = ConnectionConfig::udp();
        udp.port = self.addr.port();
        let mut tcp = ConnectionConfig::tcp();
        tcp.port = self.addr.port();
        let ns = NameServerConfig::new(self.addr.ip(), true, vec![udp, tcp]);
        ResolverConfig::from_name_servers(vec![ns])
    }

    /// A resolver using only this server, with its cache disabled, a 1 s timeout and no retries,
    /// so tests of timeouts stay quick.
    pub fn resolver(&self) -> TokioResolver {
        let mut builder = TokioResolver::builder_with_config(
            self.resolver_config(),
            TokioRuntimeProvider::default(),
        );
        let opts = builder.options_mut();
        opts.cache_size = 0;
        opts.timeout = Duration::from_secs(1);
        opts.attempts = 1;
        builder.build().expect("build resolver")
    }

    /// TTL put on every answer from now on (default 0).
    pub fn set_ttl(&self, ttl: u32) {
        self.lock().ttl = ttl;
    }

    /// Adds an MX record. `add_mx("nullmx.example", 0, ".")` makes a null MX (RFC 7505).
    pub fn add_mx(&self, name: &str, preference: u16, exchange: &str) {
        self.add_record(name, RData::MX(MX::new(preference, to_name(exchange))));
    }

    pub fn add_a(&self, name: &str, ip: Ipv4Addr) {
        self.add_record(name, RData::A(A(ip)));
    }

    pub fn add_aaaa(&self, name: &str, ip: Ipv6Addr) {
        self.add_record(name, RData::AAAA(AAAA(ip)));
    }

    /// Adds an A or AAAA record depending on the address family.
    pub fn add_ip(&self, name: &str, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.add_a(name, v4),
            IpAddr::V6(v6) => self.add_aaaa(name, v6),
        }
    }

    /// Adds one TXT record made of `strings` (each a separate character-string). Strings longer
    /// than 255 bytes are split into 255-byte pieces, as zone files do for long DKIM keys.
    /// Call again to add a second TXT record for the same name.
    pub fn add_txt(&self, name: &str, strings: &[&str]) {
        let pieces: Vec<&[u8]> = strings
            .iter()
            .flat_map(|s| {
                let bytes = s.as_bytes();
                if bytes.is_empty() {
                    vec![bytes]
                } else {
                    bytes.chunks(255).collect()
                }
            })
            .collect();
        self.add_record(name, RData::TXT(TXT::from_bytes(pieces)));
    }

    /// Adds a CNAME. Queries for other types at `name` follow it within the zone.
    pub fn add_cname(&self, name: &str, target: &str) {
        self.add_record(name, RData::CNAME(CNAME(to_name(target))));
    }

    /// Adds a PTR record for `ip` under in-addr.arpa / ip6.arpa.
    pub fn add_ptr(&self, ip: IpAddr, target: &str) {
        let owner = Name::from(ip).to_ascii();
        self.add_record(&owner, RData::PTR(PTR(to_name(target))));
    }

    /// Adds any record hickory-proto can encode (TLSA, SRV, CAA, ...).
    pub fn add_record(&self, name: &str, rdata: RData) {
        self.lock()
            .records
            .entry(key(name))
            .or_default()
            .push(rdata);
    }

    /// Removes every record of `record_type` at `name`.
    pub fn remove_records(&self, name: &str, record_type: RecordType) {
        let mut zone = self.lock();
        let k = key(name);
        if let Some(records) = zone.records.get_mut(&k) {
            records.retain(|r| r.record_type() != record_type);
            if records.is_empty() {
                zone.records.remove(&k);
            }
        }
    }

    /// Removes `name` from the zone entirely (it becomes NXDOMAIN).
    pub fn remove_name(&self, name: &str) {
        self.lock().records.remove(&key(name));
    }

    /// Delays every answer for `name` by `delay`; longer than the client's timeout simulates a
    /// DNS timeout.
    pub fn set_delay(&self, name: &str, delay: Duration) {
        self.lock().delays.insert(key(name), delay);
    }

    pub fn clear_delay(&self, name: &str) {
        self.lock().delays.remove(&key(name));
    }

    /// Answers SERVFAIL for every query about `name`.
    pub fn set_servfail(&self, name: &str) {
        self.lock().servfail.insert(key(name));
    }

    pub fn clear_servfail(&self, name: &str) {
        self.lock().servfail.remove(&key(name));
    }

    /// Every question received so far, in order: lowercased name without the trailing dot.
    pub fn queries(&self) -> Vec<(String, RecordType)> {
        self.lock().queries.clone()
    }

    pub fn clear_queries(&self) {
        self.lock().queries.clear();
    }

    fn lock(&self) -> MutexGuard<'_, Zone> {
        lock(&self.zone)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn lock(zone: &Mutex<Zone>) -> MutexGuard<'_, Zone> {
    // A panicking test thread must not poison the zone for the server tasks.
    zone.lock().unwrap_or_else(|e| e.into_inner())
}

async fn bind_udp_and_tcp(ip: IpAddr) -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0))
            .await
            .expect("bind DNS UDP socket");
        let port = udp.local_addr().expect("udp local addr").port();
        if let Ok(tcp) = TcpListener::bind(SocketAddr::new(ip, port)).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on {ip}");
}

async fn serve_udp(socket: Arc<UdpSocket>, zone: Arc<Mutex<Zone>>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let packet = buf[..len].to_vec();
        let socket = socket.clone();
        let zone = zone.clone();
        // One task per query so a delayed name does not hold up the others.
        tokio::spawn(async move {
            if let Some((response, delay)) = respond(&packet, &zone, true) {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let _ = socket.send_to(&response, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_tcp_connection(stream, zone.clone()));
    }
}

async fn serve_tcp_connection(mut stream: TcpStream, zone: Arc<Mutex<Zone>>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut packet = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut packet).await.is_err() {
            return;
        }
        let Some((response, delay)) = respond(&packet, &zone, false) else {
            return;
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let Ok(len) = u16::try_from(response.len()) else {
            return;
        };
        let mut framed = Vec::with_capacity(response.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&response);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Builds the encoded answer to one query packet and how long to hold it back.
fn respond(packet: &[u8], zone: &Mutex<Zone>, udp: bool) -> Option<(Vec<u8>, Duration)> {
    let request = Message::from_vec(packet).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.metadata.authoritative = true;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_UDP_LIMIT);
        response.set_edns(edns);
    }

    let mut delay = Duration::ZERO;
    match (request.metadata.op_code, request.queries.as_slice()) {
        (OpCode::Query, [query]) => {
            let mut zone = lock(zone);
            let qname = key(&query.name().to_ascii());
            zone.queries.push((qname.clone(), query.query_type()));
            delay = zone.delays.get(&qname).copied().unwrap_or_default();
            answer(&zone, query, &qname, &mut response);
        }
        (OpCode::Query, _) => response.metadata.response_code = ResponseCode::FormErr,
        _ => response.metadata.response_code = ResponseCode::NotImp,
    }

    let mut encoded = response.to_vec().ok()?;
    if udp {
        let limit = match &request.edns {
            Some(edns) => usize::from(edns.max_payload().clamp(512, EDNS_UDP_LIMIT)),
            None => CLASSIC_UDP_LIMIT,
        };
        if encoded.len() > limit {
            // Signal truncation so the client retries over TCP, as a real server would.
            response.answers.clear();
            response.authorities.clear();
            response.additionals.clear();
            response.metadata.truncation = true;
            encoded = response.to_vec().ok()?;
        }
    }
    Some((encoded, delay))
}

fn answer(zone: &Zone, query: &Query, qname: &str, response: &mut Message) {
    if zone.servfail.contains(qname) {
        response.metadata.response_code = ResponseCode::ServFail;
        return;
    }
    let qtype = query.query_type();
    let mut current = qname.to_owned();
    let mut owner = query.name().clone();
    for _ in 0..MAX_CNAME_HOPS {
        let Some(records) = zone.records.get(&current) else {
            if !is_empty_non_terminal(zone, &current) {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            break;
        };
        let matching: Vec<&RData> = records
            .iter()
            .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
            .collect();
        if matching.is_empty() && qtype != RecordType::CNAME {
            if let Some(RData::CNAME(target)) = records
                .iter()
                .find(|r| r.record_type() == RecordType::CNAME)
            {
                response.add_answer(Record::from_rdata(
                    owner.clone(),
                    zone.ttl,
                    RData::CNAME(target.clone()),
                ));
                owner = target.0.clone();
                current = key(&owner.to_ascii());
                continue;
            }
        }
        for rdata in matching {
            response.add_answer(Record::from_rdata(owner.clone(), zone.ttl, rdata.clone()));
        }
        break;
    }
    let has_final_answer = response
        .answers
        .iter()
        .any(|r| qtype == RecordType::ANY || r.record_type() == qtype);
    if !has_final_answer {
        response.add_authority(negative_soa(&current, zone.ttl));
    }
}

fn is_empty_non_terminal(zone: &Zone, name: &str) -> bool {
    let suffix = format!(".{name}");
    name.is_empty() || zone.records.keys().any(|k| k.ends_with(&suffix))
}

/// An SOA for negative answers, owned by the last two labels of `name` (our guess at a zone apex:
/// the test zone has no real delegation structure).
fn negative_soa(name: &str, ttl: u32) -> Record {
    let labels: Vec<&str> = name.split('.').filter(|l| !l.is_empty()).collect();
    let apex = labels[labels.len().saturating_sub(2)..].join(".");
    let apex_name = to_name(&apex);
    let mname = to_name(&format!("ns.{apex}"));
    let rname = to_name(&format!("hostmaster.{apex}"));
    Record::from_rdata(
        apex_name,
        ttl,
        RData::SOA(SOA::new(mname, rname, 1, 3600, 600, 86400, ttl)),
    )
}

/// Zone key: lowercase ASCII (IDNs in punycode), no trailing dot; the root is "".
fn key(name: &str) -> String {
    to_name(name)
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

fn to_name(name: &str) -> Name {
    let trimmed = name.trim_end_matches('.');
    if trimmed.is_empty() {
        return Name::root();
    }
    // from_ascii keeps underscores (`_dmarc`, `_mta-sts`), which IDNA processing would reject.
    let parsed = if trimmed.is_ascii() {
        Name::from_ascii(trimmed)
    } else {
        Name::from_utf8(trimmed)
    };
    let mut name = parsed.unwrap_or_else(|e| panic!("invalid DNS name {name:?}: {e}"));
    name.set_fqdn(true);
    name
}
