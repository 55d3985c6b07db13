//! Fuzz target bodies for relayward.
//!
//! Each `pub fn` takes the fuzzer's bytes, drives one parser (or the whole inbound SMTP session)
//! with them and panics when an invariant breaks. `fuzz/fuzz_targets/<name>.rs` wraps each in
//! libfuzzer-sys for `cargo fuzz run <name>`; `tests/replay.rs` replays every file of
//! `fuzz/corpus/<name>/` through the same function, so a normal `cargo nextest run` checks the
//! corpora on the stable toolchain. [`TARGETS`] lists them by name.
//!
//! There is no target for received DSNs: relayward does not parse the bounces it receives (the
//! SRS listener passes them on unchanged, `relayward_smtp::SrsRole`).

use std::sync::OnceLock;

use relayward_core::{normalize_domain, Address};
use relayward_queue::outbound::client::{read_reply, Capabilities, Reply};
use relayward_queue::srs::{Srs, SrsConfig, SrsError, DEFAULT_MAX_AGE_DAYS};
use smtp_proto::Request;

mod session;

pub use session::session;

/// A target body: the fuzzer's input in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("smtp_command", smtp_command),
    ("session", session),
    ("address", address),
    ("srs_reverse", srs_reverse),
    ("remote_reply", remote_reply),
    ("config", config),
];

/// One current-thread runtime per fuzzing thread: building one per input would dominate.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
    }
    RT.with(|rt| rt.block_on(f))
}

/// The SMTP command parser as `inbound/session.rs` calls it: on the whole input, and on each
/// line of it (the session hands the parser one LF-terminated line at a time), then the
/// mailbox parser on the paths of MAIL and RCPT as `inbound/mail.rs` and `rcpt.rs` do.
pub fn smtp_command(data: &[u8]) {
    parse_command(data);
    for line in data.split_inclusive(|&b| b == b'\n') {
        parse_command(line);
    }
}

fn parse_command(line: &[u8]) {
    let parsed = Request::parse(&mut line.iter());
    // Debug walks every field smtp-proto filled in.
    let _ = format!("{parsed:?}");
    match parsed {
        Ok(Request::Mail { from }) => {
            for utf8 in [false, true] {
                let _ = Address::parse(&from.address, utf8);
            }
        }
        Ok(Request::Rcpt { to }) => {
            for utf8 in [false, true] {
                let _ = Address::parse(&to.address, utf8);
            }
        }
        _ => {}
    }
}

/// `relayward_core::Address::parse` with and without SMTPUTF8. What it accepts must be a
/// well-formed, normalised mailbox that parses again to itself.
pub fn address(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    for utf8 in [false, true] {
        let Ok(a) = Address::parse(input, utf8) else {
            continue;
        };
        assert!(!a.local.is_empty() && !a.domain.is_empty(), "{a:?}");
        assert!(a.local.len() <= 64, "local part over 64 octets: {a:?}");
        assert!(
            utf8 || (a.local.is_ascii() && a.domain.is_ascii()),
            "non-ASCII without SMTPUTF8: {a:?}"
        );
        assert!(
            !a.local
                .chars()
                .chain(a.domain.chars())
                .any(char::is_control),
            "control character in an accepted address: {a:?} from {input:?}"
        );
        if !a.domain.starts_with('[') {
            assert_eq!(
                normalize_domain(&a.domain).ok().as_deref(),
                Some(a.domain.as_str()),
                "domain not normalised: {a:?}"
            );
        }
        if !utf8 {
            assert!(
                Address::parse(input, true).is_ok(),
                "ASCII-only accepts more"
            );
        }
        // Display is what goes on the wire (and into the spool): it must read back the same.
        // Lowercasing can lengthen a U-label past the 256-octet input limit; skip those.
        let shown = a.to_string();
        if shown.len() <= 256 {
            match Address::parse(&shown, utf8) {
                Ok(again) => assert_eq!(again, a, "{shown:?} reads back differently"),
                Err(e) => panic!("{shown:?} (from {input:?}) does not parse again: {e}"),
            }
        }
    }
}

const SRS_DOMAIN: &str = "srs.relay.example";
const DAY: u64 = 24 * 60 * 60;

fn srs() -> &'static Srs {
    static SRS: OnceLock<Srs> = OnceLock::new();
    SRS.get_or_init(|| {
        Srs::new(&SrsConfig {
            domain: SRS_DOMAIN.into(),
            secrets: vec!["fuzz-secret".into(), "older-secret".into()],
            exclude_domains: vec!["exact.example".into(), ".excluded.example".into()],
            ..SrsConfig::default()
        })
        .expect("SRS configuration")
    })
}

/// A clock that depends on the input's length, so that stamps are checked on many days
/// modulo 1024, and a seed can carry a valid stamp (its length fixes the day it is read on).
fn srs_now(data: &[u8]) -> u64 {
    let n = data.len() as u64;
    1_750_000_000 + (n * DAY * 37 + n * 3607) % (1024 * DAY)
}

/// `relayward_queue::srs::Srs::reverse` on anything (no panic), and on what `forward` made of
/// the input as a sender the relay would rewrite (a parsed address): reversal gives the sender
/// back (SRS0), or the first forwarder's SRS0 address (SRS1), until the stamp is too old.
pub fn srs_reverse(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let srs = srs();
    let now = srs_now(data);
    if let Ok(original) = srs.reverse(input, now) {
        assert!(original.contains('@'), "{input:?} reversed to {original:?}");
    }
    let _ = Srs::is_srs_address(input);
    for utf8 in [false, true] {
        let Ok(sender) = Address::parse(input, utf8) else {
            continue;
        };
        let sender = sender.to_string();
        let Ok(rewritten) = srs.forward(&sender, now) else {
            continue;
        };
        if rewritten == sender {
            // Our own domain, an excluded one, or already one of our SRS addresses.
            continue;
        }
        assert!(
            rewritten.ends_with(&format!("@{SRS_DOMAIN}")) && Srs::is_srs_address(&rewritten),
            "{sender:?} forwarded to {rewritten:?}"
        );
        let expected = expected_reverse(&sender);
        match srs.reverse(&rewritten, now) {
            Ok(back) => assert_eq!(back, expected, "{sender:?} -> {rewritten:?}"),
            Err(e) => panic!("{sender:?} -> {rewritten:?} does not reverse: {e}"),
        }
        // Some MTAs lowercase local parts: the hash and stamp are case-insensitive.
        assert!(
            srs.reverse(&rewritten.to_ascii_lowercase(), now).is_ok(),
            "{rewritten:?} lowercased does not reverse"
        );
        let max_age = u64::from(DEFAULT_MAX_AGE_DAYS);
        assert!(
            srs.reverse(&rewritten, now + max_age * DAY).is_ok(),
            "{rewritten:?} expired before {max_age} days"
        );
        if rewritten.starts_with("SRS0") {
            assert_eq!(
                srs.reverse(&rewritten, now + (max_age + 1) * DAY),
                Err(SrsError::Expired),
                "{rewritten:?} still valid after {max_age} days"
            );
        }
        assert_eq!(
            srs.forward(&rewritten, now).as_deref(),
            Ok(rewritten.as_str()),
            "our own SRS address is rewritten again"
        );
    }
}

/// What reversing `forward(sender)` must give: the sender itself; for a sender that is
/// another forwarder's SRS0 address, that address (tag in upper case); for an SRS1 address,
/// the SRS0 address at its first forwarder.
fn expected_reverse(sender: &str) -> String {
    let (local, host) = sender.rsplit_once('@').expect("a parsed address has '@'");
    if !Srs::is_srs_address(local) {
        return sender.to_string();
    }
    if local.as_bytes()[3] == b'0' {
        return format!("SRS0{}@{host}", &local[4..]);
    }
    let mut parts = local[5..].splitn(3, '=');
    let (_hash, first_host, rest) = (parts.next(), parts.next(), parts.next());
    format!(
        "SRS0{}@{}",
        rest.unwrap_or_default(),
        first_host.unwrap_or_default()
    )
}

/// The delivery client's reply reader (`outbound::client::read_reply`) over a stream of
/// replies from a next hop, then what the client and the DSN code take from each reply.
pub fn remote_reply(data: &[u8]) {
    block_on(async {
        let mut stream = data;
        while !stream.is_empty() {
            let before = stream.len();
            match read_reply(&mut stream).await {
                Ok(reply) => check_reply(&reply),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                // The client drops the connection here; read on to fuzz the rest.
                Err(_) => {}
            }
            assert!(stream.len() < before, "read_reply consumed nothing");
        }
    });
}

fn check_reply(reply: &Reply) {
    assert!(reply.code <= 999, "{reply:?}");
    assert!(
        !reply.lines.is_empty() && reply.lines.len() <= 128,
        "{reply:?}"
    );
    assert!(
        reply.lines.iter().all(|l| !l.contains('\n')),
        "LF inside a reply line: {reply:?}"
    );
    let _ = (
        reply.is_positive(),
        reply.is_transient(),
        reply.is_permanent(),
    );
    let status = reply.status();
    assert!(
        relayward_queue::dsn::status_of_reply(&format!("250 {status}")).is_some(),
        "status {status:?} of {reply:?} is not a status"
    );
    let shown = reply.to_string();
    if let Some(enhanced) = reply.enhanced_status() {
        assert_eq!(
            enhanced.as_bytes()[0],
            b'0' + (reply.code / 100) as u8,
            "{reply:?}"
        );
        // The DSN code reads the status back from the one-line form.
        assert_eq!(
            relayward_queue::dsn::status_of_reply(&shown).as_deref(),
            Some(enhanced.as_str()),
            "{shown:?}"
        );
    }
    let caps = Capabilities::from_ehlo(reply);
    if let Some(size) = caps.size {
        assert!(size > 0, "{caps:?}");
    }
}

/// `relayward.toml`: parse, validate, and derive what `serve` derives from a valid config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = toml::from_str::<relayward::config::Config>(text) else {
        return;
    };
    if config.validate().is_err() {
        return;
    }
    let _ = config.delivery();
    let _ = config.store_url();
    let _ = config.spool_dir();
    let _ = config.default_sender_limits();
    let _ = config.alerts_from();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `valid-*` SRS seeds carry hashes and stamps made for this target's secrets and
    /// clock, so that fuzzing starts from addresses that reverse.
    #[test]
    fn valid_srs_seeds_reverse() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz/corpus/srs_reverse");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("srs_reverse corpus") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let data = std::fs::read(&path).expect("seed");
            let text = std::str::from_utf8(&data).expect("UTF-8 seed");
            let reversed = srs().reverse(text, srs_now(&data));
            if name.starts_with("valid-") {
                assert!(reversed.is_ok(), "{name}: {reversed:?}");
                seen += 1;
            } else if name.starts_with("expired-") {
                assert_eq!(reversed, Err(SrsError::Expired), "{name}");
            }
        }
        assert!(seen >= 3, "only {seen} valid seeds");
    }
}
