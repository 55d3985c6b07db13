//! Idle outbound connections, kept a few seconds so that the next message to the same host skips
//! connect, greeting, EHLO, STARTTLS and AUTH.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::client::Connection;

/// Keyed by egress pool, route and host: a connection authenticated for one tenant route is
/// never handed to another route that happens to use the same host, and mail never leaves from
/// another egress pool's address because a connection from there was idle.
#[derive(Default)]
pub struct ConnectionPool {
    idle: Mutex<HashMap<String, Vec<Connection>>>,
}

/// `egress_pool` is "" when no egress pools are configured.
pub fn pool_key(egress_pool: &str, route: &str, host: &str) -> String {
    format!("{egress_pool}|{route}|{host}")
}

impl ConnectionPool {
    /// The most recently used idle connection for `key`.
    pub fn take(&self, key: &str) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conns = idle.get_mut(key)?;
        let conn = conns.pop();
        if conns.is_empty() {
            idle.remove(key);
        }
        conn
    }

    pub fn put(&self, key: String, mut conn: Connection) {
        conn.last_used = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.entry(key).or_default().push(conn);
    }

    /// Removes and returns the connections idle for longer than `max_idle`.
    pub fn expire(&self, max_idle: Duration) -> Vec<Connection> {
        let mut expired = Vec::new();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|_, conns| {
            let mut i = 0;
            while i < conns.len() {
                if conns[i].last_used.elapsed() >= max_idle {
                    expired.push(conns.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            !conns.is_empty()
        });
        expired
    }

    /// Every idle connection (for shutdown).
    pub fn drain(&self) -> Vec<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.drain().flat_map(|(_, c)| c).collect()
    }

    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
    }
}
