//! DKIM verification of accepted unregistered mail, for the detector's forwarding signals.
//!
//! Runs after the 250, off the SMTP path: [`Abuse::accepted`](super::Abuse::accepted) hands a
//! copy of the message as received (before SRS or the relay's own signature) to a task that
//! verifies its signatures with mail-auth and reports whether one verified for the header
//! From domain (its `d=` is that domain or a parent of it). Key records are cached per
//! `selector._domainkey.domain` for their TTL, so a forwarder's usual correspondents cost one
//! lookup each. Bounded: at most `max_queued` messages wait and `concurrency` verify at once; a
//! message beyond the bound is counted as not verified (the shares only ever err towards
//! spray). The resolver is `delivery.dns_resolver` when set, so tests use their own DNS server.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mail_auth::{
    AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
};
use relayward_policy::detector::DkimVerifyConfig;
use tokio::sync::Semaphore;

/// A bounded TTL cache of DKIM key records.
pub struct TxtCache {
    entries: Mutex<HashMap<Box<str>, (Txt, Instant)>>,
    max: usize,
}

impl TxtCache {
    pub fn new(max: usize) -> TxtCache {
        TxtCache {
            entries: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, (Txt, Instant)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ResolverCache<Box<str>, Txt> for TxtCache {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut m = self.lock();
        match m.get(name) {
            Some((v, until)) if *until > Instant::now() => Some(v.clone()),
            Some(_) => {
                m.remove(name);
                None
            }
            None => None,
        }
    }

    fn remove<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock().remove(name).map(|(v, _)| v)
    }

    fn insert(&self, key: Box<str>, value: Txt, valid_until: Instant) {
        let mut m = self.lock();
        if m.len() >= self.max && !m.contains_key(&key) {
            let now = Instant::now();
            m.retain(|_, (_, until)| *until > now);
            if m.len() >= self.max {
                // Still full of live entries: drop an arbitrary one.
                if let Some(k) = m.keys().next().cloned() {
                    m.remove(&k);
                }
            }
        }
        m.insert(key, (value, valid_until));
    }
}

/// Whether `d` (a signature's domain) covers `from` (the header From domain): equal, or a
/// parent of it.
pub fn aligned(d: &str, from: &str) -> bool {
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    let from = from.trim_end_matches('.').to_ascii_lowercase();
    relayward_policy::cert_name::is_under(&from, &d)
}

/// Whether the header section of `data` has a DKIM-Signature field (a cheap test before
/// copying the message for verification).
pub fn has_signature(data: &[u8]) -> bool {
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(data.len());
    let head = &data[..end];
    let name = b"dkim-signature:";
    head.split(|&b| b == b'\n')
        .any(|line| line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name))
}

pub struct DkimCheck {
    auth: MessageAuthenticator,
    cache: TxtCache,
    permits: Semaphore,
    queued: AtomicUsize,
    max_queued: usize,
    timeout: Duration,
}

impl DkimCheck {
    pub fn new(cfg: &DkimVerifyConfig, resolver: Option<SocketAddr>) -> Result<DkimCheck, String> {
        let resolver =
            relayward_queue::routing::build_resolver(resolver).map_err(|e| e.to_string())?;
        Ok(DkimCheck {
            auth: MessageAuthenticator(resolver),
            cache: TxtCache::new(cfg.cache_entries),
            permits: Semaphore::new(cfg.concurrency.max(1)),
            queued: AtomicUsize::new(0),
            max_queued: cfg.max_queued,
            timeout: Duration::from_millis(cfg.timeout_ms.max(1)),
        })
    }

    /// Takes a place in the queue, or says there is none.
    pub fn reserve(&self) -> bool {
        self.queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_queued).then_some(n + 1)
            })
            .is_ok()
    }

    /// Verifies `data` (after [`DkimCheck::reserve`] succeeded) and frees its place: true when
    /// a signature verified whose `d=` covers `header_from`.
    pub async fn verify(&self, data: &[u8], header_from: &str) -> bool {
        let pass = async {
            let _permit = self.permits.acquire().await.ok()?;
            let message = AuthenticatedMessage::parse(data)?;
            let params = Parameters::new(&message).with_txt_cache(&self.cache);
            let outputs = tokio::time::timeout(self.timeout, self.auth.verify_dkim(params))
                .await
                .ok()?;
            Some(outputs.iter().any(|o| {
                *o.result() == DkimResult::Pass
                    && o.signature().is_some_and(|s| aligned(&s.d, header_from))
            }))
        }
        .await
        .unwrap_or(false);
        self.queued.fetch_sub(1, Ordering::SeqCst);
        pass
    }

    pub fn cached_keys(&self) -> usize {
        self.cache.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_is_the_domain_or_a_parent() {
        assert!(aligned("example.org", "example.org"));
        assert!(aligned("Example.ORG", "mail.example.org"));
        assert!(!aligned("example.org", "badexample.org"));
        assert!(!aligned("mail.example.org", "example.org"));
    }

    #[test]
    fn signature_header_is_found_in_the_header_section_only() {
        assert!(has_signature(
            b"Received: x\r\nDKIM-Signature: v=1; d=a.example\r\n\r\nbody\r\n"
        ));
        assert!(has_signature(b"dkim-signature: v=1\r\n\r\n"));
        assert!(!has_signature(
            b"From: a@b.example\r\n\r\nDKIM-Signature: in the body\r\n"
        ));
        assert!(!has_signature(b"X-DKIM-Signature: no\r\n\r\n"));
    }
}
