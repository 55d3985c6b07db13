//! Per-destination throttling: when a receiving provider answers with rate-limit or reputation
//! replies (Gmail's `421 4.7.28`, Yahoo's `TSS04`, Microsoft's `4.7.650`), pushing on makes it
//! worse — each refused attempt counts against the relay's IPs. So delivery to that provider slows
//! down: its concurrency and its attempt rate are halved on every such reply, and doubled back
//! after each quiet period, until it runs unthrottled again.
//!
//! Providers are recognised by the suffix of their MX host names (`gmail-smtp-in.l.google.com`
//! and `alt1.gmail-smtp-in.l.google.com` are both `google.com`), so the many recipient domains a
//! provider hosts share one throttle, as they share the provider's limits. The scheduler learns
//! which destination key leads to which provider from the hosts that answered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Throttle settings (`[delivery]`).
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Attempts per minute to a throttled provider at factor 1/2 is half of this; unthrottled
    /// providers have no rate limit at all.
    pub rate_per_minute: u32,
    /// A quiet period this long (no rate-limit or reputation reply) doubles the factor back.
    pub restore_after: Duration,
    /// The factor never drops below 1/2^max_halvings.
    pub max_halvings: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            rate_per_minute: 120,
            restore_after: Duration::from_secs(300),
            max_halvings: 6,
        }
    }
}

#[derive(Debug, Clone)]
struct Group {
    /// Number of halvings in force (0: not throttled).
    halvings: u32,
    /// Last rate-limit or reputation reply, or the last restoring step (ms).
    since_ms: i64,
    /// Earliest start of the next attempt (ms).
    next_slot_ms: i64,
    /// The reply that last slowed the provider.
    reason: String,
}

/// The throttle's current settings for one provider, for the trace.
#[derive(Debug, Clone, PartialEq)]
pub struct ThrottleState {
    pub group: String,
    /// Concurrent deliveries allowed.
    pub concurrency: usize,
    pub per_minute: u32,
    pub reason: String,
}

impl std::fmt::Display for ThrottleState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "destination {} throttled to {} concurrent, {}/min after \"{}\"",
            self.group, self.concurrency, self.per_minute, self.reason
        )
    }
}

/// Whether an attempt may start now.
#[derive(Debug, Clone, PartialEq)]
pub enum Admit {
    Now,
    /// Not before this time (ms), because of this throttle.
    At(i64, ThrottleState),
}

#[derive(Default)]
struct Inner {
    groups: HashMap<String, Group>,
    /// Destination key -> provider group, learned from the hosts that answered.
    dests: HashMap<String, String>,
}

/// Shared by the scheduler's workers.
pub struct Throttle {
    config: ThrottleConfig,
    /// Concurrency of an unthrottled destination (`max_per_destination`).
    base_concurrency: usize,
    inner: Mutex<Inner>,
}

/// The provider a host belongs to: its last two labels, or three when the second-to-last is a
/// public second level such as `co.uk` or `com.au` (a short label under a two-letter country
/// code). An IP literal is its own group.
pub fn provider_group(host: &str) -> String {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host;
    }
    let labels: Vec<&str> = host.split('.').filter(|l| !l.is_empty()).collect();
    let n = labels.len();
    if n <= 2 {
        return labels.join(".");
    }
    let tld = labels[n - 1];
    let sld = labels[n - 2];
    let take = if tld.len() == 2 && sld.len() <= 3 {
        3
    } else {
        2
    };
    labels[n - take.min(n)..].join(".")
}

impl Throttle {
    pub fn new(config: ThrottleConfig, base_concurrency: usize) -> Throttle {
        Throttle {
            config,
            base_concurrency: base_concurrency.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Restores the factor by one step per quiet period since the last change.
    fn restore(&self, g: &mut Group, now_ms: i64) {
        let period = self.config.restore_after.as_millis().max(1) as i64;
        while g.halvings > 0 && now_ms - g.since_ms >= period {
            g.halvings -= 1;
            g.since_ms += period;
        }
    }

    fn concurrency_of(&self, halvings: u32) -> usize {
        (self.base_concurrency >> halvings.min(31)).max(1)
    }

    fn per_minute_of(&self, halvings: u32) -> u32 {
        (self.config.rate_per_minute >> halvings.min(31)).max(1)
    }

    fn state(&self, group: &str, g: &Group) -> ThrottleState {
        ThrottleState {
            group: group.to_string(),
            concurrency: self.concurrency_of(g.halvings),
            per_minute: self.per_minute_of(g.halvings),
            reason: g.reason.clone(),
        }
    }

    /// Records which provider answered for `dest`.
    pub fn learn(&self, dest: &str, host: &str) {
        let group = provider_group(host);
        let mut inner = self.lock();
        if inner.dests.get(dest) != Some(&group) {
            inner.dests.insert(dest.to_string(), group);
        }
    }

    /// A rate-limit or reputation reply from `host`: halves the provider's concurrency and rate.
    /// Returns the new setting.
    pub fn slow_down(&self, dest: &str, host: &str, reply: &str, now_ms: i64) -> ThrottleState {
        let group = provider_group(host);
        let max = self.config.max_halvings;
        let mut inner = self.lock();
        inner.dests.insert(dest.to_string(), group.clone());
        let g = inner.groups.entry(group.clone()).or_insert(Group {
            halvings: 0,
            since_ms: now_ms,
            next_slot_ms: now_ms,
            reason: String::new(),
        });
        self.restore(g, now_ms);
        g.halvings = (g.halvings + 1).min(max.max(1));
        g.since_ms = now_ms;
        g.reason = reply.chars().take(160).collect();
        let interval = 60_000 / i64::from(self.per_minute_of(g.halvings));
        g.next_slot_ms = g.next_slot_ms.max(now_ms + interval);
        let state = self.state(&group, g);
        tracing::warn!(destination = %group, concurrency = state.concurrency, per_minute = state.per_minute, reply = %state.reason, "destination throttled");
        state
    }

    /// Concurrency allowed for a destination key right now.
    pub fn concurrency(&self, dest: &str, now_ms: i64) -> usize {
        let mut inner = self.lock();
        let Some(group) = inner.dests.get(dest).cloned() else {
            return self.base_concurrency;
        };
        match inner.groups.get_mut(&group) {
            Some(g) => {
                self.restore(g, now_ms);
                self.concurrency_of(g.halvings)
            }
            None => self.base_concurrency,
        }
    }

    /// Takes an attempt slot for every destination in `dests` if all are free now; otherwise
    /// takes none and says when to come back.
    pub fn admit(&self, dests: &[String], now_ms: i64) -> Admit {
        let mut inner = self.lock();
        let Inner { groups, dests: map } = &mut *inner;
        let mut later: Option<(i64, ThrottleState)> = None;
        let mut take: Vec<String> = Vec::new();
        for d in dests {
            let Some(group) = map.get(d) else { continue };
            let Some(g) = groups.get_mut(group) else {
                continue;
            };
            self.restore(g, now_ms);
            if g.halvings == 0 {
                groups.remove(group);
                continue;
            }
            if g.next_slot_ms > now_ms {
                if later.as_ref().is_none_or(|(at, _)| g.next_slot_ms > *at) {
                    later = Some((g.next_slot_ms, self.state(group, g)));
                }
            } else {
                take.push(group.clone());
            }
        }
        if let Some((at, state)) = later {
            return Admit::At(at, state);
        }
        for group in take {
            if let Some(g) = groups.get_mut(&group) {
                let interval = 60_000 / i64::from(self.per_minute_of(g.halvings));
                g.next_slot_ms = now_ms.max(g.next_slot_ms) + interval;
            }
        }
        Admit::Now
    }

    /// The throttle in force for a destination key, if any.
    pub fn current(&self, dest: &str, now_ms: i64) -> Option<ThrottleState> {
        let mut inner = self.lock();
        let group = inner.dests.get(dest).cloned()?;
        let g = inner.groups.get_mut(&group)?;
        self.restore(g, now_ms);
        (g.halvings > 0).then(|| self.state(&group, g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_groups() {
        assert_eq!(provider_group("gmail-smtp-in.l.google.com"), "google.com");
        assert_eq!(
            provider_group("alt1.gmail-smtp-in.l.google.com."),
            "google.com"
        );
        assert_eq!(
            provider_group("example-com.mail.protection.outlook.com"),
            "outlook.com"
        );
        assert_eq!(provider_group("mx1.mail.example.co.uk"), "example.co.uk");
        assert_eq!(provider_group("mta5.am0.yahoodns.net"), "yahoodns.net");
        assert_eq!(provider_group("127.0.0.1"), "127.0.0.1");
        assert_eq!(provider_group("localhost"), "localhost");
    }

    #[test]
    fn halves_then_restores_gradually() {
        let t = Throttle::new(
            ThrottleConfig {
                rate_per_minute: 120,
                restore_after: Duration::from_secs(60),
                max_halvings: 3,
            },
            16,
        );
        let d = "mx:gmail.com".to_string();
        assert_eq!(t.concurrency(&d, 0), 16);
        assert_eq!(t.admit(std::slice::from_ref(&d), 0), Admit::Now);
        let s = t.slow_down(&d, "gmail-smtp-in.l.google.com", "421 4.7.28 slow down", 0);
        assert_eq!((s.concurrency, s.per_minute), (8, 60));
        // Another domain hosted by the same provider shares the throttle once learned.
        t.learn("mx:example.org", "alt2.aspmx.l.google.com");
        assert_eq!(t.concurrency("mx:example.org", 0), 8);
        // One attempt per second at 60/min: the slot after the reply is a second away.
        match t.admit(std::slice::from_ref(&d), 500) {
            Admit::At(at, state) => {
                assert_eq!(at, 1000);
                assert!(state.to_string().contains("google.com"), "{state}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(t.admit(std::slice::from_ref(&d), 1000), Admit::Now);
        assert!(matches!(
            t.admit(std::slice::from_ref(&d), 1500),
            Admit::At(2000, _)
        ));
        // Repeated replies keep halving, down to the floor.
        for i in 0..5 {
            t.slow_down(&d, "gmail-smtp-in.l.google.com", "421 4.7.28", 2000 + i);
        }
        assert_eq!(t.concurrency(&d, 2010), 2);
        assert_eq!(t.current(&d, 2010).unwrap().per_minute, 15);
        // Each quiet minute doubles back.
        assert_eq!(t.concurrency(&d, 2004 + 60_000), 4);
        assert_eq!(t.concurrency(&d, 2004 + 120_000), 8);
        assert_eq!(t.concurrency(&d, 2004 + 180_000), 16);
        assert!(t.current(&d, 2004 + 180_000).is_none());
        assert_eq!(
            t.admit(std::slice::from_ref(&d), 2004 + 180_000),
            Admit::Now
        );
    }

    #[test]
    fn unknown_destinations_are_free() {
        let t = Throttle::new(ThrottleConfig::default(), 4);
        assert_eq!(t.admit(&["mx:a.example".into()], 0), Admit::Now);
        assert_eq!(t.concurrency("mx:a.example", 0), 4);
        assert!(t.current("mx:a.example", 0).is_none());
    }
}
