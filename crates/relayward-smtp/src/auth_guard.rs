//! AUTH failure lockout: password guessing is limited per client address and per user name,
//! across all sessions and listeners of the server.
//!
//! Failures are kept as timestamps in a sliding window. Once a key (address or user) has
//! `max_failures` failures inside the window it is locked until its oldest failure in the window
//! ages out; a locked AUTH is answered without checking any password, so guessing costs the
//! attacker the window, not our CPU. A successful login clears nothing: the address counter
//! stays (an attacker who knows one password must not reset its budget for guessing others).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use crate::AuthLockout;

/// Keys of the table above this many are pruned of expired entries first.
const PRUNE_AT: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// IPv4 address, or the /64 of an IPv6 address (one host usually holds a whole /64).
    Addr(IpAddr),
    User(String),
}

fn addr_key(ip: IpAddr) -> Key {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Key::Addr(IpAddr::V4(v4)),
            None => {
                let masked = u128::from(v6) & (u128::MAX << 64);
                Key::Addr(IpAddr::V6(masked.into()))
            }
        },
        v4 => Key::Addr(v4),
    }
}

/// A lock that has just begun: the caller audits and alerts it (once per lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLockoutEvent {
    pub client_ip: IpAddr,
    /// The user name tried (printable, at most 64 characters).
    pub user: String,
    /// What got locked: `"address"`, `"user"` or `"address and user"`.
    pub scope: &'static str,
    /// Failures inside the window that caused it.
    pub failures: usize,
    pub window_secs: u64,
}

#[derive(Debug)]
pub(crate) struct AuthGuard {
    config: AuthLockout,
    failures: Mutex<HashMap<Key, VecDeque<Instant>>>,
}

impl AuthGuard {
    pub(crate) fn new(config: AuthLockout) -> AuthGuard {
        AuthGuard {
            config,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn locked_key(
        &self,
        map: &mut HashMap<Key, VecDeque<Instant>>,
        key: &Key,
        now: Instant,
    ) -> bool {
        let Some(q) = map.get_mut(key) else {
            return false;
        };
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.config.window)
        {
            q.pop_front();
        }
        let locked = self.config.max_failures > 0 && q.len() >= self.config.max_failures;
        if q.is_empty() {
            map.remove(key);
        }
        locked
    }

    /// Is AUTH from `ip` locked?
    pub(crate) fn address_locked(&self, ip: IpAddr) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        self.locked_key(&mut map, &addr_key(ip), Instant::now())
    }

    /// Is AUTH for `user` locked?
    pub(crate) fn user_locked(&self, user: &str) -> bool {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        self.locked_key(&mut map, &Key::User(user.to_string()), Instant::now())
    }

    /// Count one failed AUTH; the lock it starts, if it starts one.
    pub(crate) fn failed(&self, ip: IpAddr, user: &str) -> Option<AuthLockoutEvent> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() > PRUNE_AT {
            let window = self.config.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let mut newly = Vec::new();
        let mut most = 0;
        for (key, what) in [
            (addr_key(ip), "address"),
            (Key::User(user.to_string()), "user"),
        ] {
            let was = self.locked_key(&mut map, &key, now);
            let q = map.entry(key.clone()).or_default();
            q.push_back(now);
            // Bounded: older entries beyond the limit add nothing to the decision.
            while q.len() > self.config.max_failures.max(1) {
                q.pop_front();
            }
            most = most.max(q.len());
            if !was && self.locked_key(&mut map, &key, now) {
                newly.push(what);
            }
        }
        let scope = match newly.as_slice() {
            [] => return None,
            [one] => *one,
            _ => "address and user",
        };
        Some(AuthLockoutEvent {
            client_ip: ip,
            user: user.to_string(),
            scope,
            failures: most,
            window_secs: self.config.window.as_secs(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn guard(window_ms: u64) -> AuthGuard {
        AuthGuard::new(AuthLockout {
            max_failures: 3,
            window: Duration::from_millis(window_ms),
        })
    }

    #[test]
    fn locks_address_and_user_at_the_limit_then_expires() {
        let g = guard(200);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(g.failed(ip, "a").is_none());
        assert!(g.failed(ip, "b").is_none());
        let ev = g.failed(ip, "c").expect("third failure locks the address");
        assert_eq!((ev.scope, ev.failures), ("address", 3));
        assert!(g.address_locked(ip));
        assert!(!g.user_locked("a"));
        assert!(!g.address_locked("192.0.2.2".parse().unwrap()));
        std::thread::sleep(Duration::from_millis(250));
        assert!(!g.address_locked(ip));
    }

    #[test]
    fn user_locked_from_many_addresses_and_v6_by_prefix() {
        let g = guard(10_000);
        for i in 1..=2 {
            assert!(g
                .failed(format!("192.0.2.{i}").parse().unwrap(), "u")
                .is_none());
        }
        let ev = g.failed("192.0.2.3".parse().unwrap(), "u").unwrap();
        assert_eq!(ev.scope, "user");
        assert!(g.user_locked("u"));
        for i in 1..=3 {
            g.failed(format!("2001:db8::{i}").parse().unwrap(), &format!("x{i}"));
        }
        assert!(g.address_locked("2001:db8::ffff".parse().unwrap()));
        assert!(!g.address_locked("2001:db8:0:1::1".parse().unwrap()));
    }
}
