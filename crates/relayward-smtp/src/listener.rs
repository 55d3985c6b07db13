//! Accept loop, connection limits and the life of one connection (greeting, optional TLS
//! upgrade, session).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relayward_core::{reply, Reply, TraceEvent, TraceKind};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;

use crate::inbound::srs_role::SrsCtx;
use crate::inbound::{Exit, Session, State};
use crate::{ListenerConfig, Server, SrsRole};

/// Global and per-address session counts.
#[derive(Default)]
pub(crate) struct ConnLimiter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnLimiter {
    pub(crate) fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// Holds one slot of the limiter until the session ends.
pub(crate) struct ConnGuard {
    server: Arc<Server>,
    ip: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let limiter = &self.server.limiter;
        limiter.total.fetch_sub(1, Ordering::Relaxed);
        let mut map = limiter.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

fn acquire(server: &Arc<Server>, ip: IpAddr) -> Option<ConnGuard> {
    let limiter = &server.limiter;
    let mut map = limiter.per_ip.lock().unwrap_or_else(|e| e.into_inner());
    if limiter.total.load(Ordering::Relaxed) >= server.config.max_connections {
        return None;
    }
    let n = map.entry(ip).or_insert(0);
    if *n >= server.config.max_connections_per_ip {
        return None;
    }
    *n += 1;
    limiter.total.fetch_add(1, Ordering::Relaxed);
    Some(ConnGuard {
        server: server.clone(),
        ip,
    })
}

/// What every session of one listener shares.
pub(crate) struct ListenerCtx {
    pub(crate) tls: Option<Arc<crate::ServerTls>>,
    pub(crate) implicit_tls: bool,
    pub(crate) auth_without_tls: bool,
    /// Role `srs`: the SRS domain's MX, taking bounces only (see `inbound::srs_role`).
    pub(crate) srs: Option<SrsCtx>,
}

/// Sessions of one listener still running, so `serve` can wait for them.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        metrics::gauge!("relayward_smtp_sessions_active").decrement(1.0);
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Resolves once shutdown is requested: the value becomes `true` or the sender is dropped.
pub(crate) async fn shutdown_requested(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

impl Server {
    /// Accept loop for one listener until `shutdown` fires (its value becomes `true`, or its
    /// sender is dropped).
    ///
    /// On shutdown the listener stops accepting; sessions waiting for a command get
    /// `421 4.3.2` and close, sessions inside DATA finish their message first. Returns once
    /// every session of this listener has ended.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        cfg: ListenerConfig,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        self.serve_role(listener, cfg, None, shutdown).await
    }

    /// [`Server::serve`] for a listener in role `srs`: the MX of the relay's SRS domain, which
    /// takes bounces to valid SRS addresses and nothing else (see [`SrsRole`]).
    pub async fn serve_srs(
        self: Arc<Self>,
        listener: TcpListener,
        cfg: ListenerConfig,
        role: SrsRole,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        self.serve_role(listener, cfg, Some(role), shutdown).await
    }

    async fn serve_role(
        self: Arc<Self>,
        listener: TcpListener,
        cfg: ListenerConfig,
        srs: Option<SrsRole>,
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        if cfg.implicit_tls && cfg.tls.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "implicit_tls needs a TLS configuration",
            ));
        }
        let ctx = Arc::new(ListenerCtx {
            tls: cfg.tls,
            implicit_tls: cfg.implicit_tls,
            auth_without_tls: cfg.auth_without_tls,
            srs: srs.map(SrsCtx::new),
        });
        let in_flight = Arc::new(InFlight::default());
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown_requested(&mut shutdown) => break,
                r = listener.accept() => r,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let ip = peer.ip().to_canonical();
            let guard = acquire(&self, ip);
            let role = if ctx.srs.is_some() { "srs" } else { "relay" };
            let outcome = if guard.is_some() { "served" } else { "refused" };
            metrics::counter!("relayward_smtp_connections_total", "role" => role, "outcome" => outcome)
                .increment(1);
            metrics::gauge!("relayward_smtp_sessions_active").increment(1.0);
            in_flight.count.fetch_add(1, Ordering::AcqRel);
            let in_flight_guard = InFlightGuard(in_flight.clone());
            let server = self.clone();
            let ctx = ctx.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _in_flight = in_flight_guard;
                match guard {
                    Some(guard) => connection(server, ctx, tcp, ip, shutdown, guard).await,
                    None => refuse_connection(server, tcp, ip).await,
                }
            });
        }
        drop(listener);
        loop {
            let idle = in_flight.idle.notified();
            if in_flight.count.load(Ordering::Acquire) == 0 {
                return Ok(());
            }
            idle.await;
        }
    }
}

impl Server {
    /// One session over an already connected stream from `peer`, as [`Server::serve`] runs it
    /// for each TCP connection: the connection limits, the greeting, then the session until
    /// the client quits or the stream ends. For in-memory streams (fuzzing, tests).
    ///
    /// Cleartext only: a `cfg` with TLS is refused (`InvalidInput`), so STARTTLS is answered
    /// as on a listener without TLS.
    pub async fn serve_stream<S>(
        self: Arc<Self>,
        io: S,
        peer: IpAddr,
        cfg: ListenerConfig,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        if cfg.tls.is_some() || cfg.implicit_tls {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "serve_stream has no TLS upgrade",
            ));
        }
        let ctx = Arc::new(ListenerCtx {
            tls: None,
            implicit_tls: false,
            auth_without_tls: cfg.auth_without_tls,
            srs: None,
        });
        let ip = peer.to_canonical();
        let Some(_guard) = acquire(&self, ip) else {
            // As `refuse_connection`, over any stream.
            let mut io = io;
            let r = reply::TOO_MANY_CONNECTIONS;
            let mut ev = TraceEvent::new(TraceKind::Refused);
            ev.client_ip = Some(ip.to_string());
            ev.reply = Some(r.to_string());
            ev.detail = Some("connect".into());
            self.events.trace(ev);
            let _ = tokio::time::timeout(Duration::from_secs(5), async {
                io.write_all(r.to_wire().as_bytes()).await?;
                io.shutdown().await
            })
            .await;
            return Ok(());
        };
        let state = State::new(self, ctx, ip, shutdown);
        let greeting: Reply = reply::greeting(&state.server.config.hostname);
        let mut session = Session::new(io, state);
        session.st.write_reply(&greeting);
        // Without TLS, STARTTLS gets 502 and the session never asks for the upgrade.
        if let Exit::Close = session.run().await {
            session.close().await;
        }
        Ok(())
    }
}

/// Over a connection limit: 421 as the greeting, then close (RFC 5321 section 3.1).
async fn refuse_connection(server: Arc<Server>, mut tcp: TcpStream, ip: IpAddr) {
    let r = reply::TOO_MANY_CONNECTIONS;
    let mut ev = TraceEvent::new(TraceKind::Refused);
    ev.client_ip = Some(ip.to_string());
    ev.reply = Some(r.to_string());
    ev.detail = Some("connect".into());
    server.events.trace(ev);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        tcp.write_all(r.to_wire().as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

async fn connection(
    server: Arc<Server>,
    ctx: Arc<ListenerCtx>,
    tcp: TcpStream,
    ip: IpAddr,
    shutdown: watch::Receiver<bool>,
    _guard: ConnGuard,
) {
    let handshake_timeout = server.config.timeouts.command;
    let state = State::new(server, ctx.clone(), ip, shutdown);
    let greeting: Reply = reply::greeting(&state.server.config.hostname);

    // The TLS sessions are boxed: a session future is as large as its largest state, and
    // every idle plaintext session would otherwise carry room for a TLS stream.
    if ctx.implicit_tls {
        Box::pin(implicit_tls(ctx, tcp, state, greeting, handshake_timeout)).await;
        return;
    }

    let mut session = Session::new(tcp, state);
    session.st.write_reply(&greeting);
    match session.run().await {
        Exit::Close => session.close().await,
        Exit::StartTls => Box::pin(starttls(ctx, session, handshake_timeout)).await,
    }
}

async fn implicit_tls(
    ctx: Arc<ListenerCtx>,
    tcp: TcpStream,
    mut state: State,
    greeting: Reply,
    handshake_timeout: Duration,
) {
    let Some(loaded) = ctx.tls.as_ref().map(|t| t.current()) else {
        return;
    };
    let Some(tls) = handshake(&loaded.acceptor, tcp, handshake_timeout, &state).await else {
        return;
    };
    state.tls_established(tls.get_ref().1, loaded.chain.as_ref());
    let mut session = Session::new(tls, state);
    session.st.write_reply(&greeting);
    session.run().await;
    session.close().await;
}

async fn starttls(ctx: Arc<ListenerCtx>, session: Session<TcpStream>, handshake_timeout: Duration) {
    let Some(loaded) = ctx.tls.as_ref().map(|t| t.current()) else {
        return;
    };
    let (tcp, mut state, bufs) = session.into_parts();
    let Some(tls) = handshake(&loaded.acceptor, tcp, handshake_timeout, &state).await else {
        return;
    };
    state.tls_established(tls.get_ref().1, loaded.chain.as_ref());
    let mut session = Session::from_parts(tls, state, bufs);
    // Only one upgrade: a TLS session answers STARTTLS with 503.
    if let Exit::Close = session.run().await {
        session.close().await;
    }
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
    state: &State,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(e)) => {
            tracing::info!(client_ip = %state.ip_text, error = %e, "TLS handshake failed");
            let mut ev = TraceEvent::new(TraceKind::Refused);
            ev.client_ip = Some(state.ip_text.clone());
            ev.detail = Some(format!("reason=tls_handshake_failed error=[{e}]"));
            state.server.events.trace(ev);
            None
        }
        Err(_) => None,
    }
}
