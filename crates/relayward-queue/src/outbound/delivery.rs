//! One delivery attempt of some recipients of one message to one destination: route, try the
//! hops in order (next one when a host is unreachable or refuses the session), run the
//! transaction, and classify each recipient's outcome.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::client::{Connection, Reply, SessionError, Timeouts, Transaction, TransactionResult};
use super::pool::{pool_key, ConnectionPool};
use super::tls;
use crate::config::DeliveryConfig;
use crate::egress::{EgressUsed, PoolChoice, SourceAddresses};
use crate::routing::{Destination, Hop, Route, RouteError, Router, TlsPolicy};

/// What happened to one recipient in one attempt. `egress`: the pool and source address the
/// attempt used, when egress pools are configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    Delivered {
        reply: String,
        remote: String,
        egress: Option<EgressUsed>,
    },
    /// Try again later.
    Deferred {
        status: String,
        reply: String,
        remote: Option<String>,
        egress: Option<EgressUsed>,
    },
    /// Permanent failure: bounce.
    Failed {
        status: String,
        reply: String,
        remote: Option<String>,
        egress: Option<EgressUsed>,
    },
}

impl RcptResult {
    pub fn reply(&self) -> &str {
        match self {
            RcptResult::Delivered { reply, .. }
            | RcptResult::Deferred { reply, .. }
            | RcptResult::Failed { reply, .. } => reply,
        }
    }

    pub fn remote(&self) -> Option<&str> {
        match self {
            RcptResult::Delivered { remote, .. } => Some(remote),
            RcptResult::Deferred { remote, .. } | RcptResult::Failed { remote, .. } => {
                remote.as_deref()
            }
        }
    }

    pub fn egress(&self) -> Option<&EgressUsed> {
        match self {
            RcptResult::Delivered { egress, .. }
            | RcptResult::Deferred { egress, .. }
            | RcptResult::Failed { egress, .. } => egress.as_ref(),
        }
    }

    fn set_egress(&mut self, used: EgressUsed) {
        match self {
            RcptResult::Delivered { egress, .. }
            | RcptResult::Deferred { egress, .. }
            | RcptResult::Failed { egress, .. } => *egress = Some(used),
        }
    }

    /// The detail of the attempt's trace event: `remote host <name>` first when a remote host
    /// answered (the abuse detector and the metrics count only those), then the egress pool
    /// and source address, e.g. `remote host mx.example, pool high_risk (null sender) from
    /// 127.0.0.3`.
    pub fn attempt_detail(&self) -> Option<String> {
        match (self.remote(), self.egress()) {
            (Some(host), Some(egress)) => Some(format!("remote host {host}, {egress}")),
            (Some(host), None) => Some(format!("remote host {host}")),
            (None, Some(egress)) => Some(egress.to_string()),
            (None, None) => None,
        }
    }

    fn from_reply(reply: &Reply, remote: &str) -> RcptResult {
        let remote = Some(remote.to_string());
        if reply.is_permanent() {
            RcptResult::Failed {
                status: reply.status(),
                reply: reply.to_string(),
                remote,
                egress: None,
            }
        } else {
            RcptResult::Deferred {
                status: transient(&reply.status()),
                reply: reply.to_string(),
                remote,
                egress: None,
            }
        }
    }
}

/// A status of class 4 (what a deferral reports even when a host said 5xx to the session).
fn transient(status: &str) -> String {
    match status.split_once('.') {
        Some((_, rest)) => format!("4.{rest}"),
        None => "4.0.0".into(),
    }
}

/// The message as the client sends it.
pub struct OutboundMessage<'a> {
    pub sender: &'a str,
    pub body: &'a [u8],
    /// The body has 8-bit bytes: needs BODY=8BITMIME.
    pub needs_8bit: bool,
    /// Non-ASCII addresses, or 8-bit headers in a message received with SMTPUTF8.
    pub needs_smtputf8: bool,
    /// The message was received with SMTPUTF8 (announce it when the hop offers it).
    pub smtputf8: bool,
}

impl<'a> OutboundMessage<'a> {
    pub fn new(sender: &'a str, recipients: &[&str], body: &'a [u8], smtputf8: bool) -> Self {
        let needs_8bit = !body.is_ascii();
        let headers_8bit = needs_8bit && !crate::dsn::header_section(body).is_ascii();
        let needs_smtputf8 = !sender.is_ascii()
            || recipients.iter().any(|r| !r.is_ascii())
            || (smtputf8 && headers_8bit);
        OutboundMessage {
            sender,
            body,
            needs_8bit,
            needs_smtputf8,
            smtputf8,
        }
    }
}

/// Everything outbound delivery shares across workers: resolver, connection pool, TLS configs,
/// the egress pools' source addresses.
pub struct Outbound {
    pub router: Router,
    pub pool: ConnectionPool,
    pub config: Arc<DeliveryConfig>,
    opportunistic: Arc<rustls::ClientConfig>,
    sources: SourceAddresses,
}

/// The source of the connection an attempt used last, for its trace.
#[derive(Default)]
struct Source {
    ip: Option<IpAddr>,
    unbound: Option<String>,
}

/// Why a hop could not be used, kept to explain the deferral when every hop fails.
struct HopFailure {
    status: String,
    reply: String,
    remote: Option<String>,
}

impl HopFailure {
    fn from_session(e: &SessionError, host: &str) -> HopFailure {
        match e {
            SessionError::Io { stage, detail } => HopFailure {
                status: if *stage == "connect" || *stage == "bind" {
                    "4.4.1".into()
                } else {
                    "4.4.2".into()
                },
                reply: detail.clone(),
                remote: None,
            },
            SessionError::Reply { stage, reply } => HopFailure {
                status: transient(&reply.status()),
                reply: format!("{reply} (in reply to {stage})"),
                remote: Some(host.to_string()),
            },
            SessionError::Policy { detail } => HopFailure {
                status: "4.7.10".into(),
                reply: detail.clone(),
                remote: Some(host.to_string()),
            },
        }
    }
}

impl Outbound {
    pub fn new(config: Arc<DeliveryConfig>) -> Outbound {
        Outbound {
            router: Router::new(config.clone()),
            pool: ConnectionPool::default(),
            opportunistic: tls::opportunistic(),
            sources: SourceAddresses::new(&config.egress_pools),
            config,
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            connect: self.config.connect_timeout,
            command: self.config.command_timeout,
            data: self.config.data_timeout,
        }
    }

    /// Delivers `msg` to `rcpts` (all routed to `dest`), from the addresses of the `egress`
    /// pool when one is given. Returns one result per recipient, in order.
    pub async fn deliver(
        &self,
        dest: &Destination,
        egress: Option<&PoolChoice>,
        msg: &OutboundMessage<'_>,
        rcpts: &[&str],
    ) -> Vec<RcptResult> {
        let mut source = Source::default();
        let mut results = self.attempt(dest, egress, msg, rcpts, &mut source).await;
        if let Some(choice) = egress {
            let used = EgressUsed {
                choice: choice.clone(),
                source: source.ip,
                unbound: source.unbound,
            };
            for r in &mut results {
                r.set_egress(used.clone());
            }
        }
        results
    }

    async fn attempt(
        &self,
        dest: &Destination,
        egress: Option<&PoolChoice>,
        msg: &OutboundMessage<'_>,
        rcpts: &[&str],
        source: &mut Source,
    ) -> Vec<RcptResult> {
        let route = match self.router.route(dest).await {
            Ok(route) => route,
            Err(RouteError::Permanent { status, reply }) => {
                return rcpts
                    .iter()
                    .map(|_| RcptResult::Failed {
                        status: status.clone(),
                        reply: reply.clone(),
                        remote: None,
                        egress: None,
                    })
                    .collect()
            }
            Err(RouteError::Temporary { status, reply }) => {
                return rcpts
                    .iter()
                    .map(|_| RcptResult::Deferred {
                        status: status.clone(),
                        reply: reply.clone(),
                        remote: None,
                        egress: None,
                    })
                    .collect()
            }
        };
        let route_key = dest.key();
        let pool = egress.map(|c| c.pool.as_str());
        let mut last_failure: Option<HopFailure> = None;
        for hop in &route.hops {
            let key = pool_key(pool.unwrap_or(""), &route_key, &hop.name);
            let mut conn = self.pooled(&key).await;
            if conn.is_none() {
                match self.open(&route, hop, pool, source).await {
                    Ok(c) => conn = Some(c),
                    Err(failure) => {
                        tracing::debug!(host = %hop.name, reason = %failure.reply, "next hop unusable");
                        last_failure = Some(failure);
                        continue;
                    }
                }
            }
            let Some(mut conn) = conn else { continue };
            if let Some(pool) = pool {
                *source = Source {
                    ip: conn.source.or(conn.local.map(|l| l.ip())),
                    unbound: match conn.source {
                        Some(_) => None,
                        None => self.sources.unbound_reason(pool, conn.addr.ip()),
                    },
                };
            }
            let results = self.transact(&mut conn, msg, rcpts).await;
            if conn.broken || conn.transactions >= self.config.max_messages_per_connection {
                tokio::spawn(conn.quit());
            } else {
                self.pool.put(key, conn);
            }
            return results;
        }
        let failure = last_failure.unwrap_or(HopFailure {
            status: "4.4.4".into(),
            reply: "no usable next hop".into(),
            remote: None,
        });
        rcpts
            .iter()
            .map(|_| RcptResult::Deferred {
                status: failure.status.clone(),
                reply: failure.reply.clone(),
                remote: failure.remote.clone(),
                egress: None,
            })
            .collect()
    }

    /// An idle connection for `key` that still answers RSET.
    async fn pooled(&self, key: &str) -> Option<Connection> {
        while let Some(mut conn) = self.pool.take(key) {
            if conn.last_used.elapsed() >= self.config.idle_connection_timeout {
                tokio::spawn(conn.quit());
                continue;
            }
            match conn.rset().await {
                Ok(()) => return Some(conn),
                Err(e) => {
                    tracing::debug!(host = %conn.host, error = %e, "pooled connection unusable");
                    tokio::spawn(conn.quit());
                }
            }
        }
        None
    }

    /// A new session with `hop`, ready for MAIL FROM: each address in turn.
    async fn open(
        &self,
        route: &Route,
        hop: &Hop,
        pool: Option<&str>,
        source: &mut Source,
    ) -> Result<Connection, HopFailure> {
        let addrs = self
            .router
            .hop_addresses(hop)
            .await
            .map_err(|e| HopFailure {
                status: "4.4.4".into(),
                reply: e.to_string(),
                remote: None,
            })?;
        let mut last = None;
        for addr in addrs {
            match self.open_addr(route, hop, addr, pool, source).await {
                Ok(conn) => return Ok(conn),
                Err(e) => last = Some(HopFailure::from_session(&e, &hop.name)),
            }
        }
        Err(last.unwrap_or(HopFailure {
            status: "4.4.4".into(),
            reply: format!("{}: no addresses", hop.name),
            remote: None,
        }))
    }

    async fn open_addr(
        &self,
        route: &Route,
        hop: &Hop,
        addr: SocketAddr,
        pool: Option<&str>,
        source: &mut Source,
    ) -> Result<Connection, SessionError> {
        let timeouts = self.timeouts();
        let helo = pool
            .and_then(|p| self.sources.ehlo_hostname(p))
            .unwrap_or(&self.config.hostname);
        let mut conn = self.connect_from(addr, &hop.name, pool, source).await?;
        let bound = conn.source;
        conn.ehlo(helo).await?;
        let server_name = server_name(&hop.name, addr.ip());
        match &route.tls {
            TlsPolicy::Opportunistic => {
                if conn.caps.starttls {
                    match conn.starttls(self.opportunistic.clone(), server_name).await {
                        Ok(mut tls_conn) => {
                            tls_conn.ehlo(helo).await?;
                            conn = tls_conn;
                        }
                        Err(e) => {
                            // Opportunistic: a broken TLS stack must not stop mail. Plaintext it is.
                            tracing::info!(host = %hop.name, %addr, error = %e, "STARTTLS failed, retrying without TLS");
                            conn = Connection::connect(addr, &hop.name, bound, timeouts).await?;
                            conn.ehlo(helo).await?;
                        }
                    }
                }
            }
            TlsPolicy::Required(verified) => {
                if !conn.caps.starttls {
                    tokio::spawn(conn.quit());
                    return Err(SessionError::Policy {
                        detail: format!(
                            "TLS is required, but {}[{addr}] does not offer STARTTLS",
                            hop.name
                        ),
                    });
                }
                let config = verified
                    .clone()
                    .unwrap_or_else(|| self.opportunistic.clone());
                conn = conn.starttls(config, server_name).await?;
                conn.ehlo(helo).await?;
            }
        }
        if let Some((user, password)) = &route.auth {
            if !conn.tls {
                tokio::spawn(conn.quit());
                return Err(SessionError::Policy {
                    detail: format!(
                        "not sending credentials to {}[{addr}] without TLS",
                        hop.name
                    ),
                });
            }
            conn.auth_plain(user, password).await?;
        }
        Ok(conn)
    }

    /// Connects to `addr` from an address of `pool` (the next in turn; the pool's others when
    /// one cannot be bound), or unbound when there is no pool or it has no address of the
    /// target's family.
    async fn connect_from(
        &self,
        addr: SocketAddr,
        host: &str,
        pool: Option<&str>,
        source: &mut Source,
    ) -> Result<Connection, SessionError> {
        let timeouts = self.timeouts();
        let Some(pool) = pool else {
            return Connection::connect(addr, host, None, timeouts).await;
        };
        let candidates = match self.sources.for_target(pool, addr.ip()) {
            Ok(candidates) => candidates,
            Err(why) => {
                *source = Source {
                    ip: None,
                    unbound: Some(why.to_string()),
                };
                return Connection::connect(addr, host, None, timeouts).await;
            }
        };
        let mut last = None;
        for ip in candidates {
            *source = Source {
                ip: Some(ip),
                unbound: None,
            };
            match Connection::connect(addr, host, Some(ip), timeouts).await {
                Err(e @ SessionError::Io { stage: "bind", .. }) => {
                    tracing::warn!(pool, source = %ip, error = %e, "egress pool address unusable; trying the pool's next");
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or_else(|| SessionError::Io {
            stage: "bind",
            detail: format!("pool {pool} has no address to connect to {host}[{addr}] from"),
        }))
    }

    async fn transact(
        &self,
        conn: &mut Connection,
        msg: &OutboundMessage<'_>,
        rcpts: &[&str],
    ) -> Vec<RcptResult> {
        let host = conn.host.clone();
        let all = |r: RcptResult| rcpts.iter().map(|_| r.clone()).collect::<Vec<_>>();
        if let Some(limit) = conn.caps.size {
            if msg.body.len() as u64 > limit {
                return all(RcptResult::Failed {
                    status: "5.3.4".into(),
                    reply: format!(
                        "552 5.3.4 Message size ({} bytes) exceeds the limit of {host} ({limit} bytes)",
                        msg.body.len()
                    ),
                    remote: Some(host.clone()),
                    egress: None,
                });
            }
        }
        if msg.needs_smtputf8 && !conn.caps.smtputf8 {
            return all(RcptResult::Failed {
                status: "5.6.7".into(),
                reply: format!(
                    "553 5.6.7 Internationalized addresses or headers, but {host} does not support SMTPUTF8"
                ),
                remote: Some(host.clone()),
                egress: None,
            });
        }
        if msg.needs_8bit && !conn.caps.eight_bit_mime {
            return all(RcptResult::Failed {
                status: "5.6.3".into(),
                reply: format!(
                    "554 5.6.3 Conversion required but not supported: 8-bit message, and {host} does not support 8BITMIME"
                ),
                remote: Some(host.clone()),
                egress: None,
            });
        }
        let tx = Transaction {
            sender: msg.sender,
            recipients: rcpts.to_vec(),
            body_8bit: msg.needs_8bit && conn.caps.eight_bit_mime,
            smtputf8: msg.smtputf8 && conn.caps.smtputf8,
        };
        let result = conn.transaction(&tx, msg.body).await;
        let finished = matches!(
            &result,
            Ok(TransactionResult::Completed { finished: true, .. })
        );
        if result.is_ok() && !finished && !conn.broken {
            // Leave no half-open transaction behind on a connection that may be reused.
            let _ = conn.rset().await;
        }
        match result {
            Err(e) => {
                let failure = HopFailure::from_session(&e, &host);
                all(RcptResult::Deferred {
                    status: failure.status,
                    reply: failure.reply,
                    remote: Some(host.clone()),
                    egress: None,
                })
            }
            Ok(TransactionResult::MailRefused(reply)) => all(RcptResult::from_reply(&reply, &host)),
            Ok(TransactionResult::Completed { rcpt, data, .. }) => rcpt
                .iter()
                .map(|r| {
                    if !r.is_positive() {
                        return RcptResult::from_reply(r, &host);
                    }
                    match &data {
                        Some(d) if d.is_positive() => RcptResult::Delivered {
                            reply: d.to_string(),
                            remote: host.clone(),
                            egress: None,
                        },
                        Some(d) => RcptResult::from_reply(d, &host),
                        None => RcptResult::Deferred {
                            status: "4.4.2".into(),
                            reply: "connection lost before DATA".into(),
                            remote: Some(host.clone()),
                            egress: None,
                        },
                    }
                })
                .collect(),
        }
    }

    /// Closes every idle connection.
    pub async fn close_idle(&self) {
        for conn in self.pool.drain() {
            conn.quit().await;
        }
    }
}

fn server_name(host: &str, ip: IpAddr) -> ServerName<'static> {
    ServerName::try_from(host.to_string()).unwrap_or_else(|_| ServerName::IpAddress(ip.into()))
}
