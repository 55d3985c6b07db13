//! `relayward serve`: wires the store, the directory snapshot, the spool and the SMTP
//! listeners together, and keeps the background tasks (directory reload, trace writer,
//! connector last-use) running.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use relayward_core::{reply, ConnectorId, TenantId, TraceEvent, TraceKind};
use relayward_policy::{Directory, SharedDirectory};
use relayward_queue::{
    Envelope, GroupCommitter, Recipient, RecipientStatus, Scheduler, Spool, TenantRoute,
};
use relayward_smtp::{IncomingMessage, ListenerConfig, MessageSink, Server, SmtpConfig, Timeouts};
use relayward_store::Store;
use tokio::sync::{mpsc, watch};

use crate::abuse::{Abuse, AcceptedMessage};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;

mod accept;
mod events;
use accept::SpoolSink;
pub use events::EventWriter;
use events::{DeliveryTap, SessionEvents};

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.server.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// `relayward serve`: start everything, run until SIGTERM or SIGINT, stop cleanly.
pub async fn run(config: Config) -> Result<()> {
    init_logging(&config);
    let relay = start(config).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    relay.shutdown().await;
    Ok(())
}

/// A running relay: its listeners' addresses and what tests and the admin side need to reach.
pub struct Running {
    pub smtp_addrs: Vec<SocketAddr>,
    /// Listeners in role `policy` (Postfix's `check_policy_service`).
    pub policy_addrs: Vec<SocketAddr>,
    /// The admin API's listener (`None`: `[admin] enabled = false`).
    pub admin_addr: Option<SocketAddr>,
    pub store: Arc<dyn Store>,
    pub directory: Arc<SharedDirectory>,
    pub spool: Arc<Spool>,
    pub scheduler: Arc<Scheduler>,
    /// The abuse detector (counters, restriction states, sender limits, alerts).
    pub abuse: Arc<Abuse>,
    /// SRS rewriting and DKIM signing of accepted mail.
    pub forwarding: Arc<crate::forwarding::Forwarding>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    events: Arc<EventWriter>,
}

impl Running {
    /// Stop accepting, let sessions finish, flush the trace.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.scheduler.stopped()).await;
        // Transitions on their way to the store; alert webhooks still retrying are cut short.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.abuse.idle()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.abuse.write_reputation()).await;
        self.events.flush().await;
    }
}

impl Running {
    /// Waits until every trace event recorded so far is in the store.
    pub async fn flush_trace(&self) {
        self.events.flush().await;
    }
}

/// What [`start_with`] may be given besides the configuration.
pub struct StartOptions {
    /// The abuse detector's clock (tests pass a simulated one).
    pub clock: Arc<dyn Clock>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            clock: Arc::new(SystemClock),
        }
    }
}

/// Open the store and spool, load the directory, start the background tasks and listeners.
pub async fn start(config: Config) -> Result<Running> {
    start_with(config, StartOptions::default()).await
}

/// [`start`] with options.
pub async fn start_with(config: Config, options: StartOptions) -> Result<Running> {
    if let Some(path) = &config.reputation.bounce_rules {
        let classifier = relayward_policy::bounce::BounceClassifier::with_extra_file(path)
            .map_err(|e| anyhow!("reputation.bounce_rules: {e}"))?;
        let rules = classifier.len();
        // One classifier per process: a second relay started in the same process (tests)
        // keeps the first one's rules.
        match classifier.install() {
            Ok(()) => tracing::info!(path = %path.display(), rules, "bounce rules loaded"),
            Err(e) => tracing::warn!(error = %e, "bounce rules not replaced"),
        }
    }
    std::fs::create_dir_all(&config.server.data_dir).with_context(|| {
        format!(
            "cannot create data_dir {}",
            config.server.data_dir.display()
        )
    })?;
    let store = relayward_store::open(&config.store_url())
        .await
        .map_err(|e| anyhow!("cannot open store: {e}"))?;
    // Before anything starts: a pin to a tenant that does not exist stops the start.
    let tenant_pools = crate::egress::tenant_pools(&config.egress_pools, &*store).await?;
    let spool = Arc::new(
        Spool::open(config.spool_dir())
            .map_err(|e| anyhow!("cannot open spool {}: {e}", config.spool_dir().display()))?,
    );
    let spooled = spool.scan().map_err(|e| anyhow!("spool scan: {e}"))?;
    tracing::info!(messages = spooled.len(), "spool scanned");

    let directory = Arc::new(SharedDirectory::new(Directory::new(
        store.load_directory().await?,
    )));
    // The rows it was built from are gone: their memory too.
    release_freed_memory();
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let abuse = Abuse::new(
        &config,
        store.clone(),
        directory.clone(),
        spool.clone(),
        options.clock.clone(),
    );
    abuse
        .sync()
        .await
        .context("cannot load the abuse detector's state")?;
    abuse.replay_pending();
    abuse.suppressions().refresh().await;
    abuse
        .load_reputation()
        .await
        .context("cannot load the reputation counts")?;
    let reload = Arc::new(DirectoryReload::new(
        store.clone(),
        directory.clone(),
        abuse.clone(),
    ));
    tokio::spawn(reload_directory(
        reload.clone(),
        Duration::from_millis(config.server.directory_poll_ms.max(100)),
        shutdown_rx.clone(),
    ));
    if let Some(cluster) = crate::cluster::Cluster::new(&config.counters, &config.node_name())? {
        tracing::info!(
            node = cluster.node(),
            "cluster mode: counts and state changes shared through Redis"
        );
        abuse.set_cluster(cluster.clone());
        tokio::spawn(cluster.clone().sync_counters(
            abuse.counters().clone(),
            options.clock.clone(),
            Duration::from_millis(config.counters.sync_ms.max(1)),
            shutdown_rx.clone(),
        ));
        let on_change = reload.clone();
        tokio::spawn(cluster.clone().listen(
            move || {
                let r = on_change.clone();
                async move { r.if_changed().await }
            },
            shutdown_rx.clone(),
        ));
    }
    tokio::spawn(detector_ticks(
        abuse.clone(),
        Duration::from_millis(config.server.detector_interval_ms.max(100)),
        shutdown_rx.clone(),
    ));
    // The metrics recorder, before anything counts.
    crate::metrics::handle();
    let node_name =
        (config.server.node_name.is_some() || config.clustered()).then(|| config.node_name());
    let events = Arc::new(EventWriter::start(
        store.clone(),
        node_name.clone(),
        Some(Arc::new(crate::spill::Spill::new(
            config.server.data_dir.join("trace.pending"),
            SPILL_MAX_BYTES,
        ))),
    ));

    let mut delivery = config.delivery();
    for route in &config.delivery.tenant_routes {
        let tenant = store
            .find_tenant(&route.tenant)
            .await?
            .ok_or_else(|| anyhow!("delivery.tenant_route: no tenant {:?}", route.tenant))?;
        delivery.tenant_routes.insert(
            tenant.id.0,
            TenantRoute {
                host: route.host.clone(),
                auth_user: route.auth_user.clone(),
                auth_password: route.auth_password.clone(),
                require_tls: route.require_tls,
                verify_tls: route.verify_tls,
                tls_ca_file: route.tls_ca_file.clone(),
            },
        );
    }
    delivery.tenant_pools = tenant_pools;
    crate::egress::log_pools(&config.egress_pools, &config.server.hostname);
    let tap = Arc::new(DeliveryTap {
        events: events.clone(),
        abuse: Arc::downgrade(&abuse),
    });
    let risk = Arc::new(crate::egress::TenantRisk(Arc::downgrade(&abuse)));
    let scheduler = Scheduler::start(
        spool.clone(),
        delivery,
        tap,
        Some(risk),
        shutdown_rx.clone(),
    );
    abuse.set_scheduler(scheduler.clone());
    let forwarding = crate::forwarding::Forwarding::start(
        &config,
        store.clone(),
        directory.clone(),
        events.clone(),
        shutdown_rx.clone(),
    )
    .await?;
    let sink = Arc::new(SpoolSink {
        spool: spool.clone(),
        commit: GroupCommitter::start(spool.clone()).context("cannot start the spool writer")?,
        scheduler: scheduler.clone(),
        abuse: Some(abuse.clone()),
        forwarding: Some(forwarding.clone()),
        per_tenant_metrics: config.metrics.per_tenant,
        scanner: crate::scan::Scanner::new(&config.scan).map(Arc::new),
        events: events.clone(),
    });

    let limits = &config.limits;
    let smtp_config = SmtpConfig {
        hostname: config.server.hostname.clone(),
        // Named in the Received header when named, or in a cluster, where it tells the nodes
        // apart.
        node_name: node_name.clone(),
        max_message_size: limits.max_message_size,
        max_recipients: limits.max_recipients,
        max_connections: limits.max_connections,
        max_connections_per_ip: limits.max_connections_per_ip,
        max_errors: limits.max_errors,
        max_received_headers: limits.max_received_headers,
        max_pipelined: limits.max_pipelined,
        bare_line_ends: limits.bare_line_ends,
        auth_lockout: relayward_smtp::AuthLockout {
            max_failures: limits.auth_max_failures,
            window: Duration::from_secs(limits.auth_lockout_secs),
        },
        timeouts: Timeouts {
            command: Duration::from_secs(limits.command_timeout_secs),
            data_block: Duration::from_secs(limits.data_block_timeout_secs),
            data_termination: Duration::from_secs(limits.data_termination_timeout_secs),
        },
    };
    let session_events = Arc::new(SessionEvents {
        events: events.clone(),
        abuse: Arc::downgrade(&abuse),
    });
    let server = Server::new(smtp_config, directory.clone(), sink, session_events.clone())
        .with_sender_guard(abuse.clone())
        .with_suppressions(abuse.suppressions().list());

    let mut tasks = Vec::new();
    let mut smtp_addrs = Vec::new();
    let mut listeners_up = Vec::new();
    let mut tls_all = Vec::new();
    let mut policy_addrs = Vec::new();
    for l in &config.listeners {
        if l.role == crate::forwarding::ListenerRole::Policy {
            let listener = tokio::net::TcpListener::bind(l.address)
                .await
                .with_context(|| format!("cannot listen on {} (policy service)", l.address))?;
            let local = listener.local_addr()?;
            tracing::info!(address = %local, "Postfix policy service ready ({})",
                crate::policy_service::describe(local));
            policy_addrs.push(local);
            let up = Arc::new(AtomicBool::new(true));
            listeners_up.push((local, up.clone()));
            let service = crate::policy_service::PolicyService::new(
                directory.clone(),
                abuse.clone(),
                session_events.clone(),
            );
            let stop = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                let r = service.serve(listener, stop).await;
                up.store(false, Ordering::SeqCst);
                r
            }));
            continue;
        }
        let tls = match (&l.tls_cert, &l.tls_key) {
            (Some(cert), Some(key)) => Some(
                relayward_smtp::load_tls(cert, key, l.tls_client_ca.as_deref())
                    .map_err(|e| anyhow!("listener {}: {e}", l.address))?,
            ),
            _ => None,
        };
        tls_all.extend(tls.clone());
        let listener = tokio::net::TcpListener::bind(l.address)
            .await
            .with_context(|| format!("cannot listen on {}", l.address))?;
        let local = listener.local_addr()?;
        tracing::info!(address = %local, tls = tls.is_some(), role = ?l.role, "SMTP listener ready");
        smtp_addrs.push(local);
        let cfg = ListenerConfig {
            tls,
            implicit_tls: l.implicit_tls,
            auth_without_tls: l.auth_without_tls,
        };
        // Up while its accept loop runs; `/readyz` reads it.
        let up = Arc::new(AtomicBool::new(true));
        listeners_up.push((local, up.clone()));
        let serving: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> =
            match l.role {
                crate::forwarding::ListenerRole::Relay => {
                    Box::pin(server.clone().serve(listener, cfg, shutdown_rx.clone()))
                }
                crate::forwarding::ListenerRole::Policy => unreachable!("served above"),
                crate::forwarding::ListenerRole::Srs => Box::pin(
                    server.clone().serve_srs(
                        listener,
                        cfg,
                        forwarding.srs_role(
                            spool.clone(),
                            scheduler.clone(),
                            Some(Arc::new(crate::feedback::FeedbackIntake::new(
                                config
                                    .srs
                                    .as_ref()
                                    .and_then(|s| s.feedback_address.as_deref()),
                                store.clone(),
                                Arc::downgrade(&abuse),
                            ))),
                        )?,
                        shutdown_rx.clone(),
                    ),
                ),
            };
        tasks.push(tokio::spawn(async move {
            let r = serving.await;
            up.store(false, Ordering::SeqCst);
            if let Err(e) = &r {
                tracing::error!(address = %local, error = %e, "SMTP listener stopped");
            }
            r
        }));
    }

    if !tls_all.is_empty() {
        tokio::spawn(reload_tls(tls_all, shutdown_rx.clone()));
    }

    let admin_addr = crate::admin::start(
        &config,
        crate::admin::Control::live(
            &config,
            store.clone(),
            spool.clone(),
            scheduler.clone(),
            abuse.clone(),
        )
        .with_ops(listeners_up, events.clone()),
        reload,
        shutdown_rx.clone(),
        &mut tasks,
    )
    .await?;

    tokio::spawn(heartbeat(
        store.clone(),
        scheduler.clone(),
        relayward_store::NodeRecord {
            name: config.node_name(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: relayward_core::Timestamp(unix_now()),
            last_seen: relayward_core::Timestamp(unix_now()),
            queue_depth: 0,
            smtp_addr: Some(
                smtp_addrs
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            api_addr: admin_addr.map(|a| a.to_string()),
        },
        shutdown_rx.clone(),
    ));

    Ok(Running {
        smtp_addrs,
        policy_addrs,
        admin_addr,
        store,
        directory,
        spool,
        scheduler,
        abuse,
        forwarding,
        shutdown_tx,
        tasks,
        events,
    })
}

/// Gives the memory of a replaced whole directory back to the system. The allocator keeps
/// freed memory in per-thread arenas; a whole reload frees hundreds of megabytes on a large
/// directory (100,000 tenants), and without this each reload on another thread's arena would
/// keep its own copy's worth resident.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bound of each file keeping what waits for an unreachable store (crate::spill).
pub(crate) const SPILL_MAX_BYTES: u64 = 64 * 1024 * 1024;

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Writes this node's heartbeat (`GET /v1/nodes`) every few seconds; a failed write is retried
/// at the next beat.
async fn heartbeat(
    store: Arc<dyn Store>,
    scheduler: Arc<Scheduler>,
    mut node: relayward_store::NodeRecord,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(relayward_admin::types::nodes::HEARTBEAT_SECS as u64);
    let mut tick = tokio::time::interval(every);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        node.last_seen = relayward_core::Timestamp(unix_now());
        node.queue_depth = scheduler.queued() as u64;
        match store.heartbeat_node(&node).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "node heartbeat not written");
            }
            Err(_) => {}
        }
    }
}

/// Certificates and keys are reloaded on SIGHUP and when their files change (checked every
/// few seconds), without dropping sessions; one that fails to load keeps the old one in use.
async fn reload_tls(tls: Vec<Arc<relayward_smtp::ServerTls>>, mut shutdown: watch::Receiver<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: TLS files reload only when they change");
            None
        }
    };
    let mut tick = tokio::time::interval(TLS_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
            _ = shutdown.changed() => return,
        };
        for t in &tls {
            let result = if forced {
                Some(t.reload())
            } else {
                t.reload_if_changed()
            };
            let file = t
                .cert_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            match result {
                Some(Ok(())) => tracing::info!(cert = %file, "TLS certificate and key reloaded"),
                Some(Err(e)) => tracing::error!(cert = %file, error = %e,
                    "TLS reload failed; the previous certificate stays in use"),
                None => {}
            }
        }
    }
}

const TLS_CHECK_EVERY: Duration = Duration::from_secs(2);

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Polls the store's directory version and swaps the snapshot when it changed, so a change made
/// with the CLI (another process) takes effect within one poll interval.
async fn reload_directory(
    reload: Arc<DirectoryReload>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        reload.if_changed().await;
    }
}

/// Brings the directory snapshot, the abuse detector's view and the suppression lists up to the
/// store's. The poll above runs it, and so does the admin API after each change, so that the
/// next SMTP command sees the change. One at a time: a slower load of an older version never
/// replaces a newer snapshot.
pub(crate) struct DirectoryReload {
    store: Arc<dyn Store>,
    directory: Arc<SharedDirectory>,
    abuse: Arc<Abuse>,
    running: tokio::sync::Mutex<()>,
}

impl DirectoryReload {
    fn new(
        store: Arc<dyn Store>,
        directory: Arc<SharedDirectory>,
        abuse: Arc<Abuse>,
    ) -> DirectoryReload {
        DirectoryReload {
            store,
            directory,
            abuse,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Tells the other nodes of a cluster about a change made here (admin API).
    pub(crate) fn announce(&self) {
        self.abuse.announce(self.directory.current().version);
    }

    /// The whole directory, read and built anew (at start, and when the change log cannot say
    /// what changed).
    async fn reload_whole(&self, started: std::time::Instant) {
        let (store, directory, abuse) = (&self.store, &self.directory, &self.abuse);
        match store.load_directory().await {
            Ok(mut data) => {
                let version = data.version;
                // Detector transitions the store does not have yet stay in force.
                abuse.overlay(&mut data);
                directory.replace(Directory::new(data));
                // ...including one made while this snapshot was being loaded.
                abuse.reapply();
                tracing::info!(
                    version,
                    micros = started.elapsed().as_micros() as u64,
                    "directory reloaded"
                );
                release_freed_memory();
                if let Err(e) = abuse.sync().await {
                    tracing::warn!(error = %e, "abuse detector state reload failed");
                }
            }
            Err(e) => tracing::warn!(error = %e, "directory reload failed"),
        }
    }

    pub(crate) async fn if_changed(&self) {
        let _one = self.running.lock().await;
        let (store, directory, abuse) = (&self.store, &self.directory, &self.abuse);
        let current = directory.current().version;
        let started = std::time::Instant::now();
        match store.directory_version().await {
            Ok(v) if v == current => {}
            // Only the tenants that changed, applied to the snapshot in place of theirs.
            Ok(_) => match store.directory_changes(current).await {
                Ok(Some(mut delta)) => {
                    let version = delta.version;
                    let tenants: Vec<TenantId> = delta.tenants.iter().map(|p| p.id).collect();
                    abuse.overlay_delta(&mut delta);
                    let next = directory.current().apply(delta);
                    directory.replace(next);
                    abuse.reapply();
                    tracing::info!(
                        version,
                        tenants = tenants.len(),
                        micros = started.elapsed().as_micros() as u64,
                        "directory changes applied"
                    );
                    if let Err(e) = abuse.sync_tenants(Some(&tenants)).await {
                        tracing::warn!(error = %e, "abuse detector state reload failed");
                    }
                }
                Ok(None) => self.reload_whole(started).await,
                Err(e) => tracing::warn!(error = %e, "directory changes not read"),
            },
            Err(e) => tracing::warn!(error = %e, "directory version check failed"),
        }
        // The suppression lists have their own version: bounces do not reload the directory.
        abuse.suppressions().refresh().await;
    }
}

/// Re-evaluates tenants that leave a state with time (warned, probation) and expires counters.
async fn detector_ticks(abuse: Arc<Abuse>, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => abuse.tick(),
            _ = shutdown.changed() => return,
        }
    }
}
