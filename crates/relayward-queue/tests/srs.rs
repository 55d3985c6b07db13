//! SRS against the reference implementation: vectors recorded from a real postsrsd (Debian's
//! postsrsd 1.10, which bundles libsrs2) in `fixtures/postsrsd-vectors.txt`, and a live round
//! trip with postsrsd in both directions.
//!
//! The live test installs postsrsd (and libfaketime) with apt when they are missing and it runs
//! as root; elsewhere it says it skipped, and the recorded vectors still run. Regenerate the
//! vectors after changing the set in `postsrsd/vectors.rs`:
//!
//! ```text
//! cargo test -p relayward-queue --test srs -- --ignored --exact regenerate_postsrsd_vectors
//! ```

mod postsrsd;

use std::time::{SystemTime, UNIX_EPOCH};

use postsrsd::vectors::{
    fixture_path, generate_fixture, parse_fixture, strings, Block, Query, BASE_NOW, FIXTURE,
    FOREIGN_SRS, SENDERS, SRS_DOMAIN, WRAP_NOW,
};
use postsrsd::{faketime_lib, postsrsd_binary, time_of, DaemonSpec, Outcome, PostSrsd, DAY};
use relayward_queue::srs::{Srs, SrsConfig, SrsError};

#[test]
fn time_of_formats_utc() {
    assert_eq!(time_of(0), "1970-01-01 00:00:00");
    assert_eq!(time_of(BASE_NOW), "2021-03-04 05:06:07");
    assert_eq!(time_of(951_782_400), "2000-02-29 00:00:00");
    assert_eq!(time_of(WRAP_NOW), "2026-01-26 13:00:00");
}

/// What relayward must answer where postsrsd gave `outcome`.
fn check(srs: &Srs, block: &str, q: &Query, now: u64) {
    let got = if q.reverse {
        srs.reverse(&q.input, now)
    } else {
        srs.forward(&q.input, now)
    };
    let what = format!(
        "[{block}] {} {}",
        if q.reverse { "reverse" } else { "forward" },
        q.input
    );
    match &q.outcome {
        Outcome::Ok(want) => assert_eq!(got.as_deref(), Ok(want.as_str()), "{what}"),
        Outcome::Refused(msg) => match msg.as_str() {
            // postsrsd's forward table refuses these; relayward hands the address back as is.
            "Already rewritten" | "Domain excluded py policy" if !q.reverse => {
                assert_eq!(got.as_deref(), Ok(q.input.as_str()), "{what}")
            }
            "Hash invalid in SRS address." | "Hash too short in SRS address." => {
                assert_eq!(got, Err(SrsError::BadHash), "{what}")
            }
            "Time stamp out of date." => assert_eq!(got, Err(SrsError::Expired), "{what}"),
            "Not an SRS address." => assert_eq!(got, Err(SrsError::NotSrs), "{what}"),
            // libsrs2's syntax errors; relayward's reasons are the same words.
            m => {
                let reason = m.trim_end_matches('.');
                match got {
                    Err(SrsError::Malformed(r)) => {
                        assert!(r.eq_ignore_ascii_case(reason), "{what}: {r:?} vs {m:?}")
                    }
                    other => panic!("{what}: postsrsd said {m:?}, relayward {other:?}"),
                }
            }
        },
    }
}

fn fixture_blocks() -> Vec<Block> {
    let text = std::fs::read_to_string(fixture_path()).expect("read postsrsd vectors");
    let blocks = parse_fixture(&text);
    assert!(blocks.len() >= 8, "fixture has {} blocks", blocks.len());
    blocks
}

// ---------------------------------------------------------------------------------------------
// Tests on the recorded vectors (no postsrsd needed)
// ---------------------------------------------------------------------------------------------

#[test]
fn postsrsd_vectors_match() {
    let mut checked = 0;
    for block in fixture_blocks() {
        let srs = block.srs();
        for q in &block.queries {
            check(&srs, &block.name, q, block.now);
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} vectors");
}

/// The same secret gives the same forward address as postsrsd, on the day postsrsd made it.
#[test]
fn forward_equals_postsrsd() {
    let blocks = fixture_blocks();
    let b = blocks.iter().find(|b| b.name == "base").unwrap();
    let q = b
        .queries
        .iter()
        .find(|q| !q.reverse && q.input == "alice@example.com")
        .unwrap();
    let Outcome::Ok(want) = &q.outcome else {
        panic!()
    };
    assert!(want.starts_with("SRS0=") && want.ends_with("@srs.example.net"));
    assert_eq!(&b.srs().forward("alice@example.com", b.now).unwrap(), want);
    // Any second of the same day gives the same address; the next day another stamp.
    let midnight = b.now - b.now % DAY;
    assert_eq!(
        &b.srs().forward("alice@example.com", midnight).unwrap(),
        want
    );
    assert_ne!(
        &b.srs()
            .forward("alice@example.com", midnight + DAY)
            .unwrap(),
        want
    );
}

fn base_block_srs0() -> (Block, String) {
    let blocks = fixture_blocks();
    let b = blocks.into_iter().find(|b| b.name == "base").unwrap();
    let addr = match &b
        .queries
        .iter()
        .find(|q| !q.reverse && q.input == "alice@example.com")
        .unwrap()
        .outcome
    {
        Outcome::Ok(a) => a.clone(),
        o => panic!("{o:?}"),
    };
    (b, addr)
}

#[test]
fn hash_check_is_case_insensitive() {
    let (b, addr) = base_block_srs0();
    let srs = b.srs();
    let (local, domain) = addr.split_once('@').unwrap();
    // Flip the case of the hash only, then of the whole address.
    let mut parts: Vec<String> = local.split('=').map(str::to_string).collect();
    parts[1] = parts[1]
        .chars()
        .map(|c| {
            if c.is_ascii_uppercase() {
                c.to_ascii_lowercase()
            } else {
                c.to_ascii_uppercase()
            }
        })
        .collect();
    let flipped = format!("{}@{domain}", parts.join("="));
    assert_ne!(flipped, addr);
    assert_eq!(srs.reverse(&flipped, b.now).unwrap(), "alice@example.com");
    assert_eq!(
        srs.reverse(&addr.to_lowercase(), b.now).unwrap(),
        "alice@example.com"
    );
    assert_eq!(
        srs.reverse(&addr.to_uppercase(), b.now).unwrap(),
        "ALICE@EXAMPLE.COM"
    );
}

#[test]
fn expired_address_is_refused() {
    let (b, addr) = base_block_srs0();
    let srs = b.srs();
    assert!(srs.reverse(&addr, b.now + 21 * DAY).is_ok());
    assert_eq!(srs.reverse(&addr, b.now + 22 * DAY), Err(SrsError::Expired));
    let short = Srs::new(&SrsConfig {
        max_age_days: 3,
        ..config_of(&b)
    })
    .unwrap();
    assert!(short.reverse(&addr, b.now + 3 * DAY).is_ok());
    assert_eq!(
        short.reverse(&addr, b.now + 4 * DAY),
        Err(SrsError::Expired)
    );
}

#[test]
fn forged_hash_is_refused() {
    let (b, addr) = base_block_srs0();
    let srs = b.srs();
    let (local, domain) = addr.split_once('@').unwrap();
    let mut parts: Vec<&str> = local.split('=').collect();
    // Same address, another sender: the hash no longer matches.
    let forged_user = format!("{}@{domain}", {
        parts[4] = "mallory";
        parts.join("=")
    });
    assert_eq!(srs.reverse(&forged_user, b.now), Err(SrsError::BadHash));
    let forged_hash = addr.replacen(parts[1], "AAAA", 1);
    assert_eq!(srs.reverse(&forged_hash, b.now), Err(SrsError::BadHash));
    let short_hash = addr.replacen(&format!("={}=", parts[1]), "=AAA=", 1);
    assert_eq!(srs.reverse(&short_hash, b.now), Err(SrsError::BadHash));
    // Another secret did not make it.
    let other = Srs::new(&SrsConfig {
        secrets: vec!["not-the-secret".into()],
        ..config_of(&b)
    })
    .unwrap();
    assert_eq!(other.reverse(&addr, b.now), Err(SrsError::BadHash));
}

#[test]
fn malformed_and_non_srs() {
    let (b, _) = base_block_srs0();
    let srs = b.srs();
    assert_eq!(
        srs.reverse("alice@example.com", b.now),
        Err(SrsError::NotSrs)
    );
    assert!(matches!(
        srs.reverse("SRS0=abcd=IC@srs.example.net", b.now),
        Err(SrsError::Malformed(_))
    ));
    assert!(matches!(
        srs.reverse("SRS1=abcd=host.example@srs.example.net", b.now),
        Err(SrsError::Malformed(_))
    ));
}

#[test]
fn srs1_multi_hop_round_trip() {
    let now = 1_700_000_000;
    let hop = |domain: &str, secret: &str| {
        Srs::new(&SrsConfig {
            domain: domain.into(),
            secrets: vec![secret.into()],
            ..SrsConfig::default()
        })
        .unwrap()
    };
    let (first, second, third) = (
        hop("fwd1.example", "s1"),
        hop("fwd2.example", "s2"),
        hop("fwd3.example", "s3"),
    );
    let a1 = first.forward("alice@example.com", now).unwrap();
    assert!(
        a1.starts_with("SRS0=") && a1.ends_with("@fwd1.example"),
        "{a1}"
    );
    let a2 = second.forward(&a1, now).unwrap();
    let srs0_part = a1.split_once('@').unwrap().0.strip_prefix("SRS0").unwrap();
    assert!(a2.starts_with("SRS1="), "{a2}");
    assert!(
        a2.ends_with(&format!("=fwd1.example={srs0_part}@fwd2.example")),
        "{a2}"
    );
    // A third hop re-signs but still points at the first forwarder.
    let a3 = third.forward(&a2, now).unwrap();
    assert!(
        a3.ends_with(&format!("=fwd1.example={srs0_part}@fwd3.example")),
        "{a3}"
    );
    // A bounce to the third hop goes straight back to the first, which finds the sender.
    let back = third.reverse(&a3, now + DAY).unwrap();
    assert_eq!(back, a1);
    assert_eq!(
        first.reverse(&back, now + DAY).unwrap(),
        "alice@example.com"
    );
    assert_eq!(second.reverse(&a2, now).unwrap(), a1);
    // Only the hop that signed an SRS1 address accepts it.
    assert_eq!(second.reverse(&a3, now), Err(SrsError::BadHash));
}

#[test]
fn secret_rotation_old_secret_still_verifies() {
    let (b, addr) = base_block_srs0();
    let rotated = Srs::new(&SrsConfig {
        secrets: vec!["a-brand-new-secret".into(), b.secrets[0].clone()],
        ..config_of(&b)
    })
    .unwrap();
    assert_eq!(rotated.reverse(&addr, b.now).unwrap(), "alice@example.com");
    // New addresses are signed with the new secret: the old configuration refuses them.
    let fresh = rotated.forward("alice@example.com", b.now).unwrap();
    assert_ne!(fresh, addr);
    assert_eq!(b.srs().reverse(&fresh, b.now), Err(SrsError::BadHash));
    // Once the old secret is dropped, its addresses stop verifying.
    let dropped = Srs::new(&SrsConfig {
        secrets: vec!["a-brand-new-secret".into()],
        ..config_of(&b)
    })
    .unwrap();
    assert_eq!(dropped.reverse(&addr, b.now), Err(SrsError::BadHash));
}

#[test]
fn forward_leaves_own_and_excluded_domains_alone() {
    let srs = Srs::new(&SrsConfig {
        domain: "SRS.Example.NET".into(),
        secrets: vec!["k".into()],
        exclude_domains: vec!["partner.example".into(), ".internal.example".into()],
        ..SrsConfig::default()
    })
    .unwrap();
    let now = 1_700_000_000;
    for addr in [
        "bounce@srs.example.net",
        "x@SRS.EXAMPLE.NET",
        "a@partner.example",
        "a@PARTNER.example",
        "a@mx.internal.example",
    ] {
        assert_eq!(srs.forward(addr, now).unwrap(), addr);
    }
    for addr in ["a@sub.partner.example", "a@internal.example"] {
        assert!(
            srs.forward(addr, now).unwrap().starts_with("SRS0="),
            "{addr}"
        );
    }
    // Our own SRS address arriving under another name is not wrapped again.
    let ours = srs.forward("a@example.com", now).unwrap();
    let alias = ours.replace("@srs.example.net", "@other-name.example");
    assert_eq!(srs.forward(&alias, now).unwrap(), alias);
}

fn config_of(b: &Block) -> SrsConfig {
    SrsConfig {
        domain: b.domain.clone(),
        secrets: b.secrets.clone(),
        hash_length: b.hash_length,
        exclude_domains: b.exclude.clone(),
        ..SrsConfig::default()
    }
}

/// Writes the fixture from postsrsd. Ignored: run it by hand when the vector set changes.
#[test]
#[ignore = "regenerates tests/fixtures/postsrsd-vectors.txt from a real postsrsd"]
fn regenerate_postsrsd_vectors() {
    let binary = postsrsd_binary().expect("postsrsd is needed to regenerate the vectors");
    assert!(faketime_lib().is_some(), "libfaketime is needed");
    let text = generate_fixture(&binary);
    std::fs::create_dir_all(fixture_path().parent().unwrap()).unwrap();
    std::fs::write(fixture_path(), &text).unwrap();
    eprintln!("wrote {}", fixture_path().display());
}

// ---------------------------------------------------------------------------------------------
// Live, both ways
// ---------------------------------------------------------------------------------------------

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// With postsrsd running on the real clock: both make the same addresses today, each reverses
/// the other's, and (with libfaketime) the committed fixture is exactly what postsrsd says.
#[test]
fn live_interop_with_postsrsd() {
    let Some(binary) = postsrsd_binary() else {
        eprintln!(
            "SKIPPED live_interop_with_postsrsd: postsrsd is not installed and apt-get cannot \
             install it here (needs root); the recorded vectors still ran"
        );
        return;
    };
    let secrets = vec![format!("live-{}-{}", std::process::id(), unix_now())];
    let mut daemon = PostSrsd::start(
        &binary,
        &DaemonSpec {
            secrets: &secrets,
            domain: SRS_DOMAIN,
            hash_length: 4,
            exclude: &[],
            fake_now: None,
        },
    );
    let srs = Srs::new(&SrsConfig {
        domain: SRS_DOMAIN.into(),
        secrets: secrets.clone(),
        ..SrsConfig::default()
    })
    .unwrap();

    let mut inputs = strings(SENDERS);
    inputs.extend(strings(FOREIGN_SRS).into_iter().take(4));
    for input in &inputs {
        // Retry when the day turns between postsrsd's clock reading and ours.
        let (theirs, ours) = loop {
            let before = unix_now() / DAY;
            let theirs = daemon.forward(input);
            let now = unix_now();
            if now / DAY == before {
                break (theirs, srs.forward(input, now));
            }
        };
        let Outcome::Ok(theirs) = theirs else {
            panic!("postsrsd refused {input}: {theirs:?}")
        };
        let ours = ours.unwrap();
        assert_eq!(ours, theirs, "forward {input}");

        // relayward reverses postsrsd's address, and postsrsd relayward's.
        let now = unix_now();
        let expected = if input.to_ascii_uppercase().starts_with("SRS") {
            let local = input.split_once('@').unwrap().0;
            let host = input.rsplit_once('@').unwrap().1;
            if local.to_ascii_uppercase().starts_with("SRS1") {
                let mut p = local[5..].splitn(3, '=');
                let (_h, first, rest) = (p.next(), p.next().unwrap(), p.next().unwrap());
                format!("SRS0{rest}@{first}")
            } else {
                format!("SRS0{}@{host}", &local[4..])
            }
        } else {
            input.clone()
        };
        assert_eq!(srs.reverse(&theirs, now).unwrap(), expected, "{theirs}");
        assert_eq!(
            daemon.reverse(&ours),
            Outcome::Ok(expected.clone()),
            "{ours}"
        );
        // libsrs2 writes the SRS0 tag of a reversed SRS1 address in upper case.
        let lower_expected = match expected.strip_prefix("SRS0") {
            Some(rest) => format!("SRS0{}", rest.to_lowercase()),
            None => expected.to_lowercase(),
        };
        assert_eq!(
            daemon.reverse(&ours.to_lowercase()),
            Outcome::Ok(lower_expected.clone())
        );
        assert_eq!(
            srs.reverse(&ours.to_lowercase(), now).unwrap(),
            lower_expected
        );
    }
    // A forgery is refused by both.
    let ours = srs.forward("carol@example.com", unix_now()).unwrap();
    let forged = ours.replace("=carol@", "=mallory@");
    assert_eq!(srs.reverse(&forged, unix_now()), Err(SrsError::BadHash));
    assert_eq!(
        daemon.reverse(&forged),
        Outcome::Refused("Hash invalid in SRS address.".into())
    );
    drop(daemon);

    if faketime_lib().is_some() {
        let fresh = generate_fixture(&binary);
        let committed = std::fs::read_to_string(fixture_path()).unwrap();
        assert!(
            fresh == committed,
            "postsrsd now answers differently from {FIXTURE}; regenerate it \
             (see the top of tests/srs.rs) and review the diff"
        );
    } else {
        eprintln!("libfaketime missing: the fixture was not re-checked against postsrsd");
    }
}
