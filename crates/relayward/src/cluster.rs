//! Cluster mode: several relay nodes on one PostgreSQL store and one Redis.
//!
//! PostgreSQL holds the directory, the restriction states, the audit log and the trace (the
//! store); each node keeps its own spool. Redis carries what must be shared faster than a
//! store round trip per message:
//! - **counts**: every [`CountersSection::sync_ms`] (100 ms) at most, a node writes the
//!   shares of the tenants it counted since the last time and reads back the other nodes'
//!   shares of the same tenants, in one `MULTI` round trip
//!   (relayward_policy::counters::share explains what a share is and how they add up). The
//!   SMTP path never waits for it: it reads the in-process counters, which hold the others'
//!   shares as last read.
//! - **state changes**: a node that changed the directory (admin API, detector transition,
//!   sender restriction) publishes the new version on `<prefix>directory`; every node reloads
//!   its snapshot when it hears one. A message lost on the way is repaired by the periodic
//!   version check (`[server] directory_poll_ms`, 1 s).
//!
//! Redis down: each node counts on its own (the others' shares are dropped at once, not kept
//! stale), logs it once, shows it in `/readyz` (not failing readiness: mail keeps flowing)
//! and in `relayward_shared_counters_up`, and retries every second; when Redis is back it
//! writes every share it holds once more, so counting is cluster-wide again at the next read.
//!
//! Keys (`<prefix>` is `relayward:` by default): `<prefix>ct:<tenant>` a hash of node name to
//! tenant share; `<prefix>cs:<tenant>:<sender>` a hash of node name to the sender's windows.
//! Both expire 25 hours after their last write (a share is about the last 24 hours).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use relayward_policy::counters::{InProcessCounters, OtherShares, TenantShare};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::{redact_url, CountersSection};

/// How long the shares live in Redis after their last write.
const SHARE_TTL_MS: i64 = 25 * 3600 * 1000;
/// Per command, and per connection attempt: a slow Redis must not hold a batch for long.
const REDIS_TIMEOUT: Duration = Duration::from_millis(1000);
/// Between attempts while Redis is unreachable.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// A node name: 1 to 64 of `A-Z a-z 0-9 . - _`, as it appears in headers and URLs.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("{name:?}: 1 to 64 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err(format!("{name:?}: letters, digits, '.', '-' and '_' only"));
    }
    Ok(())
}

/// This node's link to the cluster's Redis.
pub struct Cluster {
    node: String,
    prefix: String,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    up: AtomicBool,
    /// An outage was logged (once per outage, the first at start included).
    logged_down: AtomicBool,
    /// The last error while down, for `/readyz`.
    last_error: Mutex<Option<String>>,
}

impl Cluster {
    /// Checks the URL; connects in the background (a node starts while Redis is down).
    pub fn new(section: &CountersSection, node: &str) -> anyhow::Result<Option<Arc<Cluster>>> {
        let Some(url) = &section.url else {
            return Ok(None);
        };
        let client = redis::Client::open(url.as_str())
            .map_err(|e| anyhow::anyhow!("counters.url {}: {e}", redact_url(url)))?;
        Ok(Some(Arc::new(Cluster {
            node: node.to_string(),
            prefix: section.key_prefix.clone(),
            client,
            conn: tokio::sync::Mutex::new(None),
            up: AtomicBool::new(false),
            logged_down: AtomicBool::new(false),
            last_error: Mutex::new(Some("not connected yet".into())),
        })))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the last exchange with Redis worked.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// Why Redis is not up, when it is not.
    pub fn problem(&self) -> Option<String> {
        if self.is_up() {
            return None;
        }
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn channel(&self) -> String {
        format!("{}directory", self.prefix)
    }

    async fn connection(&self) -> redis::RedisResult<ConnectionManager> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_TIMEOUT))
            .set_response_timeout(Some(REDIS_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(RETRY_EVERY);
        let c = ConnectionManager::new_with_config(self.client.clone(), cfg).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    fn went_down(&self, counters: &InProcessCounters, e: &redis::RedisError) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
        self.up.store(false, Ordering::SeqCst);
        if !self.logged_down.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                error = %e,
                "shared counters unreachable: this node counts and enforces on its own until they are back"
            );
        }
        counters.forget_others();
        metrics::gauge!("relayward_shared_counters_up").set(0.0);
    }

    fn came_up(&self) {
        if !self.up.swap(true, Ordering::SeqCst) {
            self.logged_down.store(false, Ordering::SeqCst);
            tracing::info!("shared counters reachable: counting cluster-wide");
        }
        metrics::gauge!("relayward_shared_counters_up").set(1.0);
    }

    /// Tells the other nodes the directory changed (fire and forget; the periodic version
    /// check catches a lost one).
    pub fn announce(self: &Arc<Self>, version: i64) {
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(mut c) = me.connection().await else {
                return;
            };
            let r: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(me.channel())
                .arg(format!("{version} {}", me.node))
                .query_async(&mut c)
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "directory change not announced");
            }
        });
    }

    /// One exchange: writes `shares`, reads back the other nodes' shares of the same tenants
    /// and senders.
    async fn exchange(&self, shares: &[TenantShare]) -> redis::RedisResult<Vec<OtherShares>> {
        let mut c = self.connection().await?;
        let mut pipe = redis::pipe();
        pipe.atomic();
        let tenant_key = |s: &TenantShare| format!("{}ct:{}", self.prefix, s.tenant.0);
        let sender_key =
            |s: &TenantShare, k: &str| format!("{}cs:{}:{}", self.prefix, s.tenant.0, k);
        for s in shares {
            let key = tenant_key(s);
            pipe.hset(&key, &self.node, &s.entry)
                .ignore()
                .pexpire(&key, SHARE_TTL_MS)
                .ignore();
            for (k, b) in &s.senders {
                let key = sender_key(s, k);
                pipe.hset(&key, &self.node, b)
                    .ignore()
                    .pexpire(&key, SHARE_TTL_MS)
                    .ignore();
            }
        }
        for s in shares {
            pipe.hgetall(tenant_key(s));
            for (k, _) in &s.senders {
                pipe.hgetall(sender_key(s, k));
            }
        }
        let mut replies: std::vec::IntoIter<HashMap<String, Vec<u8>>> = pipe
            .query_async::<Vec<HashMap<String, Vec<u8>>>>(&mut c)
            .await?
            .into_iter();
        let others = |r: Option<HashMap<String, Vec<u8>>>| -> Vec<Vec<u8>> {
            r.unwrap_or_default()
                .into_iter()
                .filter(|(node, _)| *node != self.node)
                .map(|(_, b)| b)
                .collect()
        };
        let mut out = Vec::with_capacity(shares.len());
        for s in shares {
            let entries = others(replies.next());
            let senders = s
                .senders
                .iter()
                .map(|(k, _)| (k.clone(), others(replies.next())))
                .collect();
            out.push(OtherShares {
                tenant: s.tenant,
                entries,
                senders,
            });
        }
        Ok(out)
    }

    /// Merges this node's counts with the cluster's until shutdown.
    pub async fn sync_counters(
        self: Arc<Self>,
        counters: Arc<InProcessCounters>,
        clock: Arc<dyn Clock>,
        every: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Everything once at the start and after each outage: shares are absolute, so writing
        // one again never counts twice.
        let mut all = true;
        let mut last_try: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            // While Redis is unreachable, one attempt a second.
            if !self.is_up() && last_try.is_some_and(|t| t.elapsed() < RETRY_EVERY) {
                continue;
            }
            let shares = counters.export(all);
            if shares.is_empty() && self.is_up() {
                continue;
            }
            match self.exchange(&shares).await {
                Ok(others) => {
                    let now = clock.now_ms();
                    for o in &others {
                        if !counters.import(now, o) {
                            tracing::warn!(
                                tenant = o.tenant.0,
                                "a node's counter share was not understood (another version?)"
                            );
                        }
                    }
                    all = false;
                    self.came_up();
                }
                Err(e) => {
                    self.went_down(&counters, &e);
                    all = true;
                }
            }
            last_try = Some(tokio::time::Instant::now());
        }
    }

    /// Calls `changed` whenever another node announces a directory change, until shutdown;
    /// resubscribes by itself after Redis comes back.
    pub async fn listen<F, Fut>(self: Arc<Self>, changed: F, mut shutdown: watch::Receiver<bool>)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(self.channel()).await?;
                redis::RedisResult::Ok(pubsub)
            };
            let pubsub = tokio::select! {
                r = tokio::time::timeout(REDIS_TIMEOUT, subscribed) => r,
                _ = shutdown.changed() => return,
            };
            match pubsub {
                Ok(Ok(pubsub)) => {
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            m = messages.next() => match m {
                                Some(m) => {
                                    let from: String = m.get_payload().unwrap_or_default();
                                    if from.split(' ').nth(1) != Some(self.node.as_str()) {
                                        changed().await;
                                    }
                                }
                                None => break,
                            },
                            _ = shutdown.changed() => return,
                        }
                    }
                    tracing::debug!("directory announcements: subscription lost");
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "directory announcements: cannot subscribe")
                }
                Err(_) => tracing::debug!("directory announcements: subscribe timed out"),
            }
            tokio::select! {
                _ = tokio::time::sleep(RETRY_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names() {
        assert!(check_node_name("relay-a.dc1_2").is_ok());
        assert!(check_node_name("").is_err());
        assert!(check_node_name("a b").is_err());
        assert!(check_node_name("a;b").is_err());
        assert!(check_node_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn urls_lose_their_password() {
        assert_eq!(
            redact_url("redis://:s3cret@10.0.0.5:6379/2"),
            "redis://<set>@10.0.0.5:6379/2"
        );
        assert_eq!(redact_url("redis://127.0.0.1/"), "redis://127.0.0.1/");
        assert_eq!(
            redact_url("postgres://relay:pw@db/relayward"),
            "postgres://<set>@db/relayward"
        );
    }
}
