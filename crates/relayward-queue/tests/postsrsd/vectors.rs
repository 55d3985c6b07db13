//! The recorded vectors: their file format, and how they are made from postsrsd.
//!
//! postsrsd stamps addresses with the day it runs, so each block of vectors is made by its own
//! postsrsd run under libfaketime at a fixed date (the block's `now`), and regenerating gives the
//! same file.

use std::path::{Path, PathBuf};

use relayward_queue::srs::{Srs, SrsConfig};

use super::{time_of, DaemonSpec, Outcome, PostSrsd, DAY};

pub const FIXTURE: &str = "tests/fixtures/postsrsd-vectors.txt";

pub fn fixture_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub reverse: bool,
    pub input: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub name: String,
    pub secrets: Vec<String>,
    pub domain: String,
    pub hash_length: usize,
    pub exclude: Vec<String>,
    pub now: u64,
    pub queries: Vec<Query>,
}

impl Block {
    pub fn srs(&self) -> Srs {
        Srs::new(&SrsConfig {
            domain: self.domain.clone(),
            secrets: self.secrets.clone(),
            hash_length: self.hash_length,
            exclude_domains: self.exclude.clone(),
            ..SrsConfig::default()
        })
        .expect("fixture config is valid")
    }
}

pub fn parse_fixture(text: &str) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let key = words.next().unwrap();
        let rest: Vec<&str> = words.collect();
        let bad = || panic!("{FIXTURE}:{}: cannot parse {line:?}", n + 1);
        if key == "block" {
            blocks.push(Block {
                name: rest.join(" "),
                secrets: vec![],
                domain: String::new(),
                hash_length: 4,
                exclude: vec![],
                now: 0,
                queries: vec![],
            });
            continue;
        }
        let Some(block) = blocks.last_mut() else {
            bad()
        };
        match key {
            "secrets" => block.secrets = rest.iter().map(|s| s.to_string()).collect(),
            "domain" => block.domain = rest.first().unwrap_or_else(|| bad()).to_string(),
            "hash_length" => block.hash_length = rest[0].parse().unwrap_or_else(|_| bad()),
            "exclude" => block.exclude = rest.iter().map(|s| s.to_string()).collect(),
            "now" => block.now = rest[0].parse().unwrap_or_else(|_| bad()),
            "forward" | "reverse" => {
                let outcome = match rest.get(1) {
                    Some(&"!") => Outcome::Refused(rest[2..].join(" ")),
                    Some(out) if rest.len() == 2 => Outcome::Ok(out.to_string()),
                    _ => bad(),
                };
                block.queries.push(Query {
                    reverse: key == "reverse",
                    input: rest[0].to_string(),
                    outcome,
                });
            }
            _ => bad(),
        }
    }
    blocks
}

pub fn format_fixture(header: &str, blocks: &[Block]) -> String {
    let mut out = String::from(header);
    for b in blocks {
        out.push_str(&format!("\nblock {}\n", b.name));
        out.push_str(&format!("secrets {}\n", b.secrets.join(" ")));
        out.push_str(&format!("domain {}\n", b.domain));
        out.push_str(&format!("hash_length {}\n", b.hash_length));
        if !b.exclude.is_empty() {
            out.push_str(&format!("exclude {}\n", b.exclude.join(" ")));
        }
        let date = time_of(b.now);
        out.push_str(&format!("now {}  # {date} UTC\n", b.now));
        for q in &b.queries {
            let kind = if q.reverse { "reverse" } else { "forward" };
            match &q.outcome {
                Outcome::Ok(v) => out.push_str(&format!("{kind} {} {v}\n", q.input)),
                Outcome::Refused(m) => out.push_str(&format!("{kind} {} ! {m}\n", q.input)),
            }
        }
    }
    out
}

pub const SECRET_1: &str = "relayward-test-secret-1";
pub const SECRET_2: &str = "relayward-test-secret-2";
pub const SRS_DOMAIN: &str = "srs.example.net";
/// 2021-03-04 05:06:07 UTC, day 18690 (stamp IC).
pub const BASE_NOW: u64 = 1_614_834_367;
/// Day 20479, the last of a 1024-day stamp cycle (stamp 77): 2026-01-26 13:00 UTC.
pub const WRAP_NOW: u64 = 20_479 * DAY + 13 * 3600;

pub const SENDERS: &[&str] = &[
    "alice@example.com",
    "Bob.Smith+tag@Example.ORG",
    "user=with=equals@example.com",
    "x@sub.domain.example.co.uk",
    "o'brien@example.ie",
    "UPPER@EXAMPLE.COM",
];

/// SRS addresses made by other forwarders (their hashes are not ours).
pub const FOREIGN_SRS: &[&str] = &[
    "SRS0=abcd=IC=example.com=alice@fwd.example",
    "srs0=abcd=IC=example.com=alice@fwd.example",
    "SRS0+abcd=IC=example.com=alice@fwd.example",
    "SRS1=wxyz=first.example==abcd=IC=example.com=alice@second.example",
    "SRS1=abcd@fwd.example",
    "SRS1=abcd=fwd.example@second.example",
];

pub const MALFORMED: &[&str] = &[
    "SRS0=abcd=IC=example.com@srs.example.net",
    "SRS0=abcd=IC@srs.example.net",
    "SRS0=abcd@srs.example.net",
    "SRS0=@srs.example.net",
    "SRS0=abcd=I1=example.com=alice@srs.example.net",
    "SRS1=abcd=host.example@srs.example.net",
    "SRS1=abcd@srs.example.net",
    "alice@example.com",
    "SRS2=abcd=IC=example.com=alice@srs.example.net",
];

/// One postsrsd run under libfaketime at `block.now`, each answer recorded into the block.
struct Recording {
    daemon: PostSrsd,
    block: Block,
}

impl Recording {
    fn start(binary: &Path, block: Block) -> Recording {
        let daemon = PostSrsd::start(
            binary,
            &DaemonSpec {
                secrets: &block.secrets,
                domain: &block.domain,
                hash_length: block.hash_length,
                exclude: &block.exclude,
                fake_now: Some(block.now),
            },
        );
        Recording { daemon, block }
    }

    /// Asks the forward table; returns the SRS addresses it made.
    fn forward(&mut self, inputs: &[String]) -> Vec<String> {
        let mut made = Vec::new();
        for input in inputs {
            let outcome = self.daemon.forward(input);
            if let Outcome::Ok(out) = &outcome {
                if out != input {
                    made.push(out.clone());
                }
            }
            self.block.queries.push(Query {
                reverse: false,
                input: input.clone(),
                outcome,
            });
        }
        made
    }

    fn reverse(&mut self, inputs: &[String]) {
        for input in inputs {
            let outcome = self.daemon.reverse(input);
            self.block.queries.push(Query {
                reverse: true,
                input: input.clone(),
                outcome,
            });
        }
    }

    fn finish(self) -> Block {
        self.block
    }
}

fn new_block(name: &str, secrets: &[&str], now: u64) -> Block {
    Block {
        name: name.into(),
        secrets: strings(secrets),
        domain: SRS_DOMAIN.into(),
        hash_length: 4,
        exclude: vec![],
        now,
        queries: vec![],
    }
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Asks only `reverses` of a fresh daemon for `block`.
fn reverse_only(binary: &Path, block: Block, reverses: &[String]) -> Block {
    let mut rec = Recording::start(binary, block);
    rec.reverse(reverses);
    rec.finish()
}

pub fn generate_vectors(binary: &Path) -> Vec<Block> {
    let mut blocks = Vec::new();

    // Every kind of sender, SRS addresses from other forwarders, and an address already in the
    // SRS domain; then what came out, given back to the forward table ("already rewritten") and
    // to the reverse table as is and with its case changed; then forgeries and malformed ones.
    let mut base = Recording::start(binary, new_block("base", &[SECRET_1], BASE_NOW));
    let mut forwards = strings(SENDERS);
    forwards.extend(strings(FOREIGN_SRS));
    forwards.push(format!("bounce@{SRS_DOMAIN}"));
    let made = base.forward(&forwards);
    base.forward(&made[..2]);
    let mut reverses = made.clone();
    reverses.extend(made.iter().map(|a| a.to_lowercase()));
    reverses.extend(made.iter().map(|a| a.to_uppercase()));
    let first = &made[0];
    reverses.push(first.replacen(&first[5..9], "AAAA", 1));
    reverses.push(first.replace("=alice@", "=mallory@"));
    reverses.extend(strings(FOREIGN_SRS));
    reverses.extend(strings(MALFORMED));
    base.reverse(&reverses);
    blocks.push(base.finish());

    // Age: 21 days later still valid, 22 days later out of date, and a stamp from tomorrow
    // (read as ~1023 days old) out of date too. SRS1 has no stamp.
    for (name, now) in [
        ("base+21d", BASE_NOW + 21 * DAY),
        ("base+22d", BASE_NOW + 22 * DAY),
        ("base-1d", BASE_NOW - DAY),
    ] {
        blocks.push(reverse_only(
            binary,
            new_block(name, &[SECRET_1], now),
            &made,
        ));
    }

    // Rotation: a new first secret signs, the old one still verifies; then the old one dropped.
    let mut rotated = Recording::start(
        binary,
        new_block("rotated", &[SECRET_2, SECRET_1], BASE_NOW),
    );
    rotated.forward(&strings(SENDERS));
    rotated.reverse(&made);
    blocks.push(rotated.finish());
    blocks.push(reverse_only(
        binary,
        new_block("old-secret-dropped", &[SECRET_2], BASE_NOW),
        &made,
    ));

    // The stamp cycle: made on day 1023 of a cycle, reversed two days later (day 1).
    let mut wrap = Recording::start(binary, new_block("wrap-day-1023", &[SECRET_1], WRAP_NOW));
    let wrap_made = wrap.forward(&strings(SENDERS));
    blocks.push(wrap.finish());
    blocks.push(reverse_only(
        binary,
        new_block("wrap-plus-2d", &[SECRET_1], WRAP_NOW + 2 * DAY),
        &wrap_made,
    ));

    // A longer hash; a 4-character one is then too short.
    let mut long_block = new_block("hash-length-8", &[SECRET_1], BASE_NOW);
    long_block.hash_length = 8;
    let mut long = Recording::start(binary, long_block);
    let mut long_made = long.forward(&strings(SENDERS));
    long_made.push(made[0].clone());
    long.reverse(&long_made);
    blocks.push(long.finish());

    // Excluded domains (postsrsd -X): exact domain, and subdomains with a leading dot.
    let mut excl_block = new_block("excludes", &[SECRET_1], BASE_NOW);
    excl_block.exclude = strings(&["partner.example", ".internal.example"]);
    let mut excl = Recording::start(binary, excl_block);
    excl.forward(&strings(&[
        "a@partner.example",
        "a@PARTNER.EXAMPLE",
        "a@sub.partner.example",
        "a@mx.internal.example",
        "a@internal.example",
    ]));
    blocks.push(excl.finish());

    blocks
}

pub const HEADER: &str = "\
# SRS vectors recorded from a real postsrsd (Debian postsrsd 1.10, libsrs2 bundled) by
# crates/relayward-queue/tests/srs.rs (regenerate_postsrsd_vectors), with libfaketime giving
# postsrsd the time on each block's `now` line (UTC) so that the day stamps are reproducible.
#
# block NAME            one postsrsd run: postsrsd -s<file with the secrets, one a line>
# secrets S1 [S2...]      -d<domain> -n<hash_length> -N<hash_length> [-X<exclude,...>]
# domain D
# hash_length N
# exclude D [D...]
# now UNIX_SECONDS
# forward IN OUT        postsrsd's forward table (tcp_table `get IN`) answered `200 OUT`
# forward IN ! MESSAGE  ... answered `500 MESSAGE`
# reverse IN OUT | reverse IN ! MESSAGE   the same for the reverse table
";

pub fn generate_fixture(binary: &Path) -> String {
    format_fixture(HEADER, &generate_vectors(binary))
}
