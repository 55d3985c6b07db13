//! One delivery attempt of some recipients of one message to one destination: route, try the
//! hops in order (next one when a host is unreachable or refuses the session), run the
//! transaction, and classify each recipient's outcome.

use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::client::{Connection, Reply, SessionError, Timeouts, Transaction, TransactionResult};
use super::pool::{pool_key, ConnectionPool};
use super::tls;
use crate::config::DeliveryConfig;
use crate::routing::{Destination, Hop, Route, RouteError, Router, TlsPolicy};

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    Delivered {
        reply: String,
        remote: String,
    },
    /// Try again later.
    Deferred {
        status: String,
        reply: String,
        remote: Option<String>,
    },
    /// Permanent failure: bounce.
    Failed {
        status: String,
        reply: String,
        remote: Option<String>,
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

    fn from_reply(reply: &Reply, remote: &str) -> RcptResult {
        let remote = Some(remote.to_string());
        if reply.is_permanent() {
            RcptResult::Failed {
                status: reply.status(),
                reply: reply.to_string(),
                remote,
            }
        } else {
            RcptResult::Deferred {
                status: transient(&reply.status()),
                reply: reply.to_string(),
                remote,
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
        let needs_8bit = body.iter().any(|&b| b >= 0x80);
        let headers_8bit = crate::dsn::header_section(body).iter().any(|&b| b >= 0x80);
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

/// Everything outbound delivery shares across workers: resolver, connection pool, TLS configs.
pub struct Outbound {
    pub router: Router,
    pub pool: ConnectionPool,
    pub config: Arc<DeliveryConfig>,
    opportunistic: Arc<rustls::ClientConfig>,
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
                status: if *stage == "connect" {
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

    /// Delivers `msg` to `rcpts` (all routed to `dest`). Returns one result per recipient, in order.
    pub async fn deliver(
        &self,
        dest: &Destination,
        msg: &OutboundMessage<'_>,
        rcpts: &[&str],
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
                    })
                    .collect()
            }
        };
        let route_key = dest.key();
        let mut last_failure: Option<HopFailure> = None;
        for hop in &route.hops {
            let key = pool_key(&route_key, &hop.name);
            let mut conn = self.pooled(&key).await;
            if conn.is_none() {
                match self.open(&route, hop).await {
                    Ok(c) => conn = Some(c),
                    Err(failure) => {
                        tracing::debug!(host = %hop.name, reason = %failure.reply, "next hop unusable");
                        last_failure = Some(failure);
                        continue;
                    }
                }
            }
            let Some(mut conn) = conn else { continue };
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
    async fn open(&self, route: &Route, hop: &Hop) -> Result<Connection, HopFailure> {
        let addrs = self
            .router
            .hop_addresses(hop)
            .await
            .map_err(|e| HopFailure {
                status: "4.4.4".into(),
                reply: e,
                remote: None,
            })?;
        let mut last = None;
        for addr in addrs {
            match self.open_addr(route, hop, addr).await {
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
        addr: std::net::SocketAddr,
    ) -> Result<Connection, SessionError> {
        let timeouts = self.timeouts();
        let helo = self.config.hostname.as_str();
        let mut conn = Connection::connect(addr, &hop.name, timeouts).await?;
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
                            conn = Connection::connect(addr, &hop.name, timeouts).await?;
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
            });
        }
        if msg.needs_8bit && !conn.caps.eight_bit_mime {
            return all(RcptResult::Failed {
                status: "5.6.3".into(),
                reply: format!(
                    "554 5.6.3 Conversion required but not supported: 8-bit message, and {host} does not support 8BITMIME"
                ),
                remote: Some(host.clone()),
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
                        },
                        Some(d) => RcptResult::from_reply(d, &host),
                        None => RcptResult::Deferred {
                            status: "4.4.2".into(),
                            reply: "connection lost before DATA".into(),
                            remote: Some(host.clone()),
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
