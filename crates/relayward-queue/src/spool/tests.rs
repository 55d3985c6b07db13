use super::*;
use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn envelope(id: QueueId, recipients: usize) -> Envelope {
    Envelope {
        queue_id: id,
        received_at: 1_700_000_000,
        tenant_id: Some(7),
        connector_id: Some(3),
        client_ip: "192.0.2.10".into(),
        helo: "mail.example.com".into(),
        auth_user: Some("printer@example.com".into()),
        tls: true,
        sender: "alice@example.com".into(),
        original_sender: None,
        sender_class: relayward_core::SenderClass::Registered,
        header_from_mismatch: false,
        spam_verdict: false,
        message_id: Some("<abc@example.com>".into()),
        size: 0,
        body_8bit: true,
        smtputf8: false,
        dsn_ret: Some("HDRS".into()),
        dsn_envid: Some("env-1".into()),
        recipients: (0..recipients)
            .map(|i| Recipient {
                orcpt: Some(format!("rfc822;r{i}@example.net")),
                notify: vec!["FAILURE".into(), "DELAY".into()],
                ..Recipient::new(format!("r{i}@example.net"))
            })
            .collect(),
        held: false,
    }
}

fn store_one(spool: &Spool, body: &[u8]) -> QueueId {
    let id = spool.new_queue_id();
    let mut env = envelope(id, 2);
    env.size = body.len() as u64;
    spool.store(&id, &env, body).unwrap();
    id
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn store_read_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"Subject: hi\r\n\r\nhello\r\n".to_vec(),
        (0..=255u8).cycle().take(300_000).collect(),
    ];
    for body in &bodies {
        let id = spool.new_queue_id();
        let mut env = envelope(id, 3);
        env.size = body.len() as u64;
        env.sender = String::new();
        env.sender_class = relayward_core::SenderClass::Null;
        spool.store(&id, &env, body).unwrap();
        assert_eq!(spool.read_envelope(&id).unwrap(), env);
        assert_eq!(&spool.read_body(&id).unwrap(), body);
        let (mut reader, len) = spool.open_body(&id).unwrap();
        assert_eq!(len, body.len() as u64);
        let mut streamed = Vec::new();
        reader.read_to_end(&mut streamed).unwrap();
        assert_eq!(&streamed, body);
        assert!(spool.body_path(&id).is_file());
        assert!(!spool.env_path(&id).exists(), "store writes one file");
    }
    assert!(dir_names(&dir.path().join("tmp")).is_empty());

    let id = spool.new_queue_id();
    let other = spool.new_queue_id();
    assert!(matches!(
        spool.store(&id, &envelope(other, 1), b"x"),
        Err(SpoolError::IdMismatch { .. })
    ));
    let first = spool.scan().unwrap()[0];
    assert!(matches!(
        spool.store(&first, &envelope(first, 1), b"x"),
        Err(SpoolError::AlreadyExists(_))
    ));
    assert!(matches!(
        spool.read_envelope(&id),
        Err(SpoolError::NotFound(_))
    ));
    assert!(matches!(spool.read_body(&id), Err(SpoolError::NotFound(_))));
}

#[test]
fn envelope_json_is_readable() {
    let id: QueueId = "01HZY3V5K8Q2W7XA".parse().unwrap();
    let mut env = envelope(id, 1);
    env.recipients[0].status = RecipientStatus::Delivered;
    let json = serde_json::to_value(&env).unwrap();
    assert_eq!(json["queue_id"], "01HZY3V5K8Q2W7XA");
    assert_eq!(json["recipients"][0]["status"], "delivered");
    let back: Envelope = serde_json::from_value(json).unwrap();
    assert_eq!(back, env);
}

#[test]
fn scan_after_reopen_is_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let ids: Vec<QueueId> = (0..100).map(|_| spool.new_queue_id()).collect();
    // Store newest first, so that order on disk or of writing cannot explain the result.
    for id in ids.iter().rev() {
        spool
            .store(id, &envelope(*id, 1), id.as_str().as_bytes())
            .unwrap();
    }
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.scan().unwrap(), ids);
    for id in &ids {
        assert_eq!(spool.read_body(id).unwrap(), id.as_str().as_bytes());
    }
    let times: Vec<u64> = ids.iter().map(|id| id.timestamp_micros()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert!(now.abs_diff(times[0]) < 60_000_000);
}

#[test]
fn tmp_leftovers_are_ignored_and_cleaned_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let kept = store_one(&spool, b"kept");
    let tmp = dir.path().join("tmp");
    let junk_id = spool.new_queue_id();
    fs::write(tmp.join(junk_id.as_str()), b"RWSPOOL\x01partial").unwrap();
    fs::write(tmp.join(format!("{junk_id}.env.0")), b"{\"queue_id\":").unwrap();
    fs::write(tmp.join("whatever"), b"").unwrap();
    fs::create_dir(tmp.join("subdir")).unwrap();
    assert_eq!(spool.scan().unwrap(), vec![kept]);
    assert!(matches!(
        spool.read_envelope(&junk_id),
        Err(SpoolError::NotFound(_))
    ));
    drop(spool);

    let spool = Spool::open(dir.path()).unwrap();
    assert!(dir_names(&tmp).is_empty());
    assert_eq!(spool.scan().unwrap(), vec![kept]);
    assert_eq!(spool.read_body(&kept).unwrap(), b"kept");
}

#[test]
fn truncated_write_never_shows_up() {
    // Build a real message file elsewhere, then leave a truncated copy in tmp/ as a crash before
    // the rename would.
    let scratch = tempfile::tempdir().unwrap();
    let other = Spool::open(scratch.path()).unwrap();
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let id = store_one(&other, &body);
    let image = fs::read(other.body_path(&id)).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    for cut in [
        0,
        5,
        HEADER_LEN as usize,
        300,
        image.len() / 2,
        image.len() - 1,
    ] {
        fs::write(dir.path().join("tmp").join(id.as_str()), &image[..cut]).unwrap();
        assert!(spool.scan().unwrap().is_empty());
        assert!(matches!(spool.read_body(&id), Err(SpoolError::NotFound(_))));
    }
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert!(spool.scan().unwrap().is_empty());
    assert!(dir_names(&dir.path().join("tmp")).is_empty());

    // A complete message file stores fine afterwards under the same id.
    spool.store(&id, &envelope(id, 2), &body).unwrap();
    assert_eq!(spool.read_body(&id).unwrap(), body);

    // Belt and braces: should a filesystem ever hand back a short file despite the fsync, reads
    // report it instead of returning a partial message.
    let path = spool.body_path(&id);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(image.len() as u64 - 10).unwrap();
    assert!(matches!(
        spool.read_body(&id),
        Err(SpoolError::Corrupt { .. })
    ));
    fs::write(&path, b"garbage").unwrap();
    assert!(matches!(
        spool.read_envelope(&id),
        Err(SpoolError::Corrupt { .. })
    ));
}

#[test]
fn update_envelope_is_atomic_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let body = b"body stays put".to_vec();
    let id = store_one(&spool, &body);
    let original = spool.read_envelope(&id).unwrap();
    let body_file = spool.body_path(&id);
    let body_mtime = fs::metadata(&body_file).unwrap().modified().unwrap();

    // Two versions of very different sizes, so a torn write would be visible.
    let small = {
        let mut e = original.clone();
        e.recipients.truncate(1);
        e.recipients[0].status = RecipientStatus::Deferred;
        e.recipients[0].attempts = 1;
        e.recipients[0].last_reply = Some("451 4.7.1 try later".into());
        e
    };
    let big = {
        let mut e = envelope(id, 500);
        for r in &mut e.recipients {
            r.status = RecipientStatus::Delivered;
            r.last_reply = Some("250 2.0.0 Ok ".repeat(20));
        }
        e
    };
    spool.update_envelope(&id, &small).unwrap();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (spool, stop) = (spool.clone(), stop.clone());
            let (small, big) = (small.clone(), big.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) || reads == 0 {
                    let got = spool.read_envelope(&id).unwrap();
                    assert!(got == small || got == big, "torn envelope read");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let spool = spool.clone();
            let (small, big) = (small.clone(), big.clone());
            std::thread::spawn(move || {
                for i in 0..100 {
                    let e = if (i + w) % 2 == 0 { &big } else { &small };
                    spool.update_envelope(&id, e).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.join().unwrap() > 0);
    }

    spool.update_envelope(&id, &big).unwrap();
    assert_eq!(
        fs::metadata(&body_file).unwrap().modified().unwrap(),
        body_mtime
    );
    assert!(dir_names(&dir.path().join("tmp")).is_empty());
    drop(spool);

    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.read_envelope(&id).unwrap(), big);
    assert_eq!(spool.read_body(&id).unwrap(), body);
    assert_eq!(spool.scan().unwrap(), vec![id]);

    let missing = spool.new_queue_id();
    assert!(matches!(
        spool.update_envelope(&missing, &envelope(missing, 1)),
        Err(SpoolError::NotFound(_))
    ));
    assert!(!spool.env_path(&missing).exists());
}

#[test]
fn remove_deletes_message_and_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let a = store_one(&spool, b"a");
    let b = store_one(&spool, b"b");
    let mut env = spool.read_envelope(&a).unwrap();
    env.recipients[0].status = RecipientStatus::Delivered;
    spool.update_envelope(&a, &env).unwrap();

    spool.remove(&a).unwrap();
    assert!(!spool.body_path(&a).exists());
    assert!(!spool.env_path(&a).exists());
    assert_eq!(spool.scan().unwrap(), vec![b]);
    assert!(matches!(
        spool.read_envelope(&a),
        Err(SpoolError::NotFound(_))
    ));
    assert!(matches!(spool.read_body(&a), Err(SpoolError::NotFound(_))));
    assert!(matches!(spool.remove(&a), Err(SpoolError::NotFound(_))));

    // A crash between the two unlinks of remove() leaves an orphan .env: it is not a message,
    // and scan cleans it up.
    spool.update_envelope(&b, &envelope(b, 1)).unwrap();
    fs::remove_file(spool.body_path(&b)).unwrap();
    assert!(matches!(
        spool.read_envelope(&b),
        Err(SpoolError::NotFound(_))
    ));
    assert!(spool.scan().unwrap().is_empty());
    assert!(!spool.env_path(&b).exists());
}

#[test]
fn queue_ids_are_unique_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let spool = spool.clone();
            std::thread::spawn(move || (0..1250).map(|_| spool.new_queue_id()).collect::<Vec<_>>())
        })
        .collect();
    let mut all = HashSet::new();
    for t in threads {
        let ids = t.join().unwrap();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids increase per thread"
        );
        for id in ids {
            assert_eq!(id.as_str().len(), QUEUE_ID_LEN);
            assert!(id.as_str().bytes().all(|c| c.is_ascii_alphanumeric()));
            assert_eq!(id.as_str().parse::<QueueId>().unwrap(), id);
            assert!(all.insert(id), "duplicate id {id}");
        }
    }
    assert_eq!(all.len(), 10_000);
    let shards: HashSet<&str> = all.iter().map(|id| id.shard()).collect();
    assert_eq!(shards.len(), 32, "random part spreads over all shards");
}

#[test]
fn lock_and_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = store_one(&spool, b"x");
    assert!(matches!(
        Spool::open(dir.path()),
        Err(SpoolError::Locked(_))
    ));
    let ro = Spool::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.scan().unwrap(), vec![id]);
    assert_eq!(ro.read_body(&id).unwrap(), b"x");
    assert!(matches!(ro.remove(&id), Err(SpoolError::ReadOnly)));
    assert!(matches!(
        ro.store(&ro.new_queue_id(), &envelope(id, 1), b""),
        Err(SpoolError::ReadOnly)
    ));
    drop(spool);
    Spool::open(dir.path()).unwrap();
    let missing = dir.path().join("nope");
    assert!(Spool::open_read_only(&missing).is_err());
}

#[test]
fn store_many_commits_all() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let ids: Vec<QueueId> = (0..40).map(|_| spool.new_queue_id()).collect();
    let envs: Vec<Envelope> = ids.iter().map(|id| envelope(*id, 1)).collect();
    spool
        .store_many(ids.iter().zip(&envs).map(|(id, e)| (id, e, id.as_str())))
        .unwrap();
    assert_eq!(spool.scan().unwrap(), ids);

    // One bad item: the ones already renamed into place are taken back.
    let more: Vec<QueueId> = (0..3).map(|_| spool.new_queue_id()).collect();
    let mut envs: Vec<Envelope> = more.iter().map(|id| envelope(*id, 1)).collect();
    envs[2].queue_id = ids[0];
    let err = spool
        .store_many(
            more.iter()
                .zip(&envs)
                .map(|(id, e)| (id, e, b"x".as_slice())),
        )
        .unwrap_err();
    assert!(matches!(err, SpoolError::IdMismatch { .. }));
    assert_eq!(spool.scan().unwrap(), ids);
}

#[tokio::test]
async fn async_wrappers() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = spool.new_queue_id();
    let env = Arc::new(envelope(id, 1));
    spool
        .store_async(id, env.clone(), b"async body".to_vec())
        .await
        .unwrap();
    assert_eq!(spool.read_envelope(&id).unwrap(), *env);
    let mut updated = (*env).clone();
    updated.held = true;
    spool
        .update_envelope_async(id, updated.clone())
        .await
        .unwrap();
    let read = spool.blocking(move |s| s.read_envelope(&id)).await.unwrap();
    assert_eq!(read, updated);
    spool.remove_async(id).await.unwrap();
    assert!(spool.scan().unwrap().is_empty());
}

// ---- crash test: a child process stores messages and is SIGKILLed at random points ----

const CRASH_DIR_ENV: &str = "RELAYWARD_SPOOL_CRASH_CHILD_DIR";
const MARK: &str = "@@spool ";

fn fnv(id: &QueueId) -> u64 {
    id.as_str().bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn crash_len(id: &QueueId) -> usize {
    // Up to 256 KiB, so that kills land in the middle of writes, not only between them.
    100 + (fnv(id) % (256 * 1024)) as usize
}

fn crash_body(id: &QueueId) -> Vec<u8> {
    let seed = id.as_str().as_bytes();
    (0..crash_len(id))
        .map(|i| seed[i % seed.len()].wrapping_add((i / seed.len()) as u8))
        .collect()
}

fn crash_envelope(id: &QueueId) -> Envelope {
    let mut env = envelope(*id, 1 + (fnv(id) % 5) as usize);
    env.size = crash_len(id) as u64;
    env
}

fn crash_updated(id: &QueueId) -> Envelope {
    let mut env = crash_envelope(id);
    for r in &mut env.recipients {
        r.status = RecipientStatus::Deferred;
        r.attempts = 1;
        r.last_reply = Some("421 4.4.2 timeout".into());
    }
    env
}

fn crash_will_update(id: &QueueId) -> bool {
    fnv(id).is_multiple_of(3)
}

/// After a crash: nothing acknowledged is lost, nothing removed comes back, and everything
/// in the spool, acknowledged or not, is complete and consistent. Returns what is there.
fn check_after_crash(
    spool: &Spool,
    round: usize,
    stored: &HashSet<QueueId>,
    removed: &HashSet<QueueId>,
    updated: &HashSet<QueueId>,
) -> HashSet<QueueId> {
    let present: HashSet<QueueId> = spool.scan().unwrap().into_iter().collect();
    for id in stored {
        if removed.contains(id) {
            assert!(
                !present.contains(id),
                "round {round}: {id} removed yet present"
            );
        } else if !crash_will_remove(id) {
            assert!(present.contains(id), "round {round}: stored {id} lost");
        }
    }
    for id in &present {
        let body = spool.read_body(id).unwrap();
        assert_eq!(body, crash_body(id), "round {round}: body of {id}");
        let env = spool.read_envelope(id).unwrap();
        if updated.contains(id) {
            assert_eq!(env, crash_updated(id), "round {round}: update of {id} lost");
        } else {
            assert!(env == crash_envelope(id) || env == crash_updated(id));
        }
    }
    present
}

fn crash_will_remove(id: &QueueId) -> bool {
    (fnv(id) >> 8).is_multiple_of(5)
}

/// The child side; does nothing in a normal test run.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    SLOW_MOTION.store(
        std::env::var_os("RELAYWARD_SPOOL_SLOW").is_some(),
        Ordering::Relaxed,
    );
    let spool = Spool::open(dir).unwrap();
    // Straight to fd 1, not through the test harness's capture.
    let mut out = io::stdout().lock();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let id = spool.new_queue_id();
        spool
            .store(&id, &crash_envelope(&id), &crash_body(&id))
            .unwrap();
        writeln!(out, "\n{MARK}stored {id}").unwrap();
        out.flush().unwrap();
        if crash_will_update(&id) {
            spool.update_envelope(&id, &crash_updated(&id)).unwrap();
            writeln!(out, "\n{MARK}updated {id}").unwrap();
            out.flush().unwrap();
        }
        if crash_will_remove(&id) {
            spool.remove(&id).unwrap();
            writeln!(out, "\n{MARK}removed {id}").unwrap();
            out.flush().unwrap();
        }
    }
}

#[test]
fn survives_sigkill_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut stored = HashSet::new();
    let mut updated = HashSet::new();
    let mut removed = HashSet::new();
    for round in 0..12 {
        let mut child = Command::new(&exe)
            .args([
                "spool::tests::crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_DIR_ENV, dir.path())
            .env("RELAYWARD_SPOOL_SLOW", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        let delay = 20 + rand::random::<u64>() % 250;
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut this_round = 0;
        for line in &lines {
            let Some(pos) = line.find(MARK) else { continue };
            let mut parts = line[pos + MARK.len()..].split(' ');
            let (Some(what), Some(id)) = (parts.next(), parts.next()) else {
                continue;
            };
            let Ok(id) = id.parse::<QueueId>() else {
                continue; // line cut by the kill
            };
            match what {
                "stored" => {
                    stored.insert(id);
                    this_round += 1;
                }
                "updated" => {
                    updated.insert(id);
                }
                "removed" => {
                    removed.insert(id);
                }
                _ => {}
            }
        }

        let leftovers = dir_names(&dir.path().join("tmp")).len();
        let spool = Spool::open(dir.path()).unwrap();
        assert!(dir_names(&dir.path().join("tmp")).is_empty());
        let present = check_after_crash(&spool, round, &stored, &removed, &updated);
        eprintln!(
            "round {round}: killed after {delay} ms, {this_round} stored this round, \
             {leftovers} tmp leftovers, {} in spool",
            present.len()
        );
    }
    assert!(!stored.is_empty(), "child never stored anything");
}

// ---- the journal ----

/// The journal's segments, spares left out.
fn journal_names(root: &Path) -> Vec<String> {
    let mut names = dir_names(&root.join("journal"));
    names.retain(|n| n.ends_with(".seg"));
    names
}

/// Where a message's record starts in a segment, and its envelope and body lengths.
fn record_of(segment: &[u8], id: &QueueId) -> (usize, usize, usize) {
    let id = id.as_str().as_bytes();
    let header = segment.windows(id.len()).position(|w| w == id).unwrap() - 8;
    let field = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&segment[header + r.start..header + r.end]);
        u64::from_le_bytes(b) as usize
    };
    (header, field(24..28), field(32..40))
}

fn journaled(spool: &Spool, n: usize, len: usize) -> Vec<QueueId> {
    let ids: Vec<QueueId> = (0..n).map(|_| spool.new_queue_id()).collect();
    spool
        .store_journaled(
            ids.iter()
                .map(|id| {
                    let mut env = envelope(*id, 2);
                    env.size = len as u64;
                    let body: Vec<u8> = id.as_str().bytes().cycle().take(len).collect();
                    (*id, env, Arc::new(body))
                })
                .collect(),
        )
        .unwrap();
    ids
}

fn body_of(id: &QueueId, len: usize) -> Vec<u8> {
    id.as_str().bytes().cycle().take(len).collect()
}

#[test]
fn journaled_messages_are_read_removed_moved_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let ids = journaled(&spool, 10, 5000);
    assert_eq!(spool.scan().unwrap(), ids);
    for id in &ids {
        assert!(spool.in_journal(id));
        assert_eq!(spool.read_body(id).unwrap(), body_of(id, 5000));
        let (env, body) = spool.cached(id).unwrap();
        assert_eq!(env, spool.read_envelope(id).unwrap());
        assert_eq!(*body, body_of(id, 5000));
        let (mut reader, len) = spool.open_body(id).unwrap();
        let mut streamed = Vec::new();
        reader.read_to_end(&mut streamed).unwrap();
        assert_eq!((streamed, len), (body_of(id, 5000), 5000));
    }
    assert!(matches!(
        spool.store_journaled(vec![(ids[0], envelope(ids[0], 1), Arc::new(Vec::new()))]),
        Err(SpoolError::AlreadyExists(_))
    ));
    assert!(matches!(
        spool.check_new(&ids[0], &envelope(ids[0], 1)),
        Err(SpoolError::AlreadyExists(_))
    ));

    // Finished: gone at once, and after a restart.
    spool.remove_finished(&ids[0]).unwrap();
    spool.remove(&ids[1]).unwrap();
    assert!(matches!(
        spool.remove(&ids[1]),
        Err(SpoolError::NotFound(_))
    ));
    // A new envelope moves the message to a message file written with it.
    let mut updated = envelope(ids[2], 2);
    updated.size = 5000;
    updated.recipients[0].status = RecipientStatus::Delivered;
    spool.update_envelope(&ids[2], &updated).unwrap();
    assert!(!spool.in_journal(&ids[2]));
    assert!(spool.body_path(&ids[2]).exists());
    assert!(!spool.env_path(&ids[2]).exists());
    assert_eq!(spool.read_envelope(&ids[2]).unwrap(), updated);
    assert_eq!(spool.read_body(&ids[2]).unwrap(), body_of(&ids[2], 5000));

    // Another process reading the spool sees what the owner sees.
    let ro = Spool::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.scan().unwrap(), ids[2..]);
    assert_eq!(ro.read_body(&ids[5]).unwrap(), body_of(&ids[5], 5000));
    assert!(ro.cached(&ids[5]).is_none());
    drop(ro);

    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.scan().unwrap(), ids[2..]);
    assert_eq!(spool.read_envelope(&ids[2]).unwrap(), updated);
    for id in &ids[3..] {
        assert!(spool.in_journal(id));
        assert!(spool.cached(id).is_none(), "replayed from disk, not memory");
        assert_eq!(spool.read_body(id).unwrap(), body_of(id, 5000));
        assert_eq!(spool.read_envelope(id).unwrap().queue_id, *id);
        spool.remove_finished(id).unwrap();
    }
    spool.remove_finished(&ids[2]).unwrap();
    spool.maintain_journal();
    assert!(spool.scan().unwrap().is_empty());
    assert!(
        journal_names(dir.path()).len() <= 1,
        "{:?}",
        journal_names(dir.path())
    );
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert!(spool.scan().unwrap().is_empty());
    assert!(journal_names(dir.path()).is_empty());
}

#[test]
fn a_torn_journal_tail_loses_only_the_unflushed_batch() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let first = journaled(&spool, 2, 3000);
    let second = journaled(&spool, 2, 3000);
    drop(spool);
    let names = journal_names(dir.path());
    assert_eq!(names.len(), 1);
    let seg = dir.path().join("journal").join(&names[0]);
    // The last record's end never written, as a crash inside its write leaves it.
    let mut bytes = fs::read(&seg).unwrap();
    let (header, env_len, body_len) = record_of(&bytes, &second[1]);
    let end = header + 48 + env_len + body_len;
    bytes[end - 10..end].fill(0);
    fs::write(&seg, &bytes).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.scan().unwrap(), vec![first[0], first[1], second[0]]);
    // New batches go to a new segment, never behind the torn record.
    let third = journaled(&spool, 1, 3000);
    assert_eq!(journal_names(dir.path()).len(), 2);
    drop(spool);

    // A flipped byte in a body fails its record's check: it and what follows are not read.
    let mut bytes = fs::read(&seg).unwrap();
    let (header, env_len, _) = record_of(&bytes, &second[0]);
    bytes[header + 48 + env_len + 100] ^= 0x55;
    fs::write(&seg, &bytes).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.scan().unwrap(), vec![first[0], first[1], third[0]]);
    for id in [first[0], first[1]] {
        assert_eq!(spool.read_body(&id).unwrap(), body_of(&id, 3000));
    }
}

#[test]
fn old_journal_segments_are_retired_and_their_stragglers_moved() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    // 300 KB messages, one per batch: a new segment every few messages.
    let straggler = journaled(&spool, 1, 300_000)[0];
    let mut rest = Vec::new();
    for _ in 0..20 {
        rest.extend(journaled(&spool, 1, 300_000));
    }
    assert!(journal_names(dir.path()).len() >= 5);
    for id in &rest {
        spool.remove_finished(id).unwrap();
    }
    // The straggler holds its segment, and so every later one, until it is moved.
    spool.maintain_journal();
    assert!(!spool.in_journal(&straggler));
    assert!(spool.body_path(&straggler).exists());
    assert_eq!(journal_names(dir.path()).len(), 1);
    assert_eq!(spool.scan().unwrap(), vec![straggler]);
    assert_eq!(
        spool.read_body(&straggler).unwrap(),
        body_of(&straggler, 300_000)
    );
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.scan().unwrap(), vec![straggler]);
}

#[test]
fn a_reused_segment_never_replays_its_old_records() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let spares = || -> HashSet<String> {
        dir_names(&dir.path().join("journal"))
            .into_iter()
            .filter(|n| n.ends_with(".spare"))
            .collect()
    };
    let mut old = Vec::new();
    for _ in 0..12 {
        old.extend(journaled(&spool, 1, 300_000));
    }
    for id in &old {
        spool.remove_finished(id).unwrap();
    }
    spool.maintain_journal();
    let kept = spares();
    assert_eq!(kept.len(), 2, "finished segments are kept for reuse");
    // New mail until a spare is taken: it gets one record of the same size as its old
    // ones, so the old records behind it start where a next record would, and the "done"
    // records that cancelled them are gone with the segment that held them.
    let mut new = Vec::new();
    while kept.is_subset(&spares()) {
        new.extend(journaled(&spool, 1, 300_000));
    }
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.scan().unwrap(), new);
    for id in &new {
        assert_eq!(spool.read_body(id).unwrap(), body_of(id, 300_000));
    }
}

#[test]
fn a_message_finished_while_being_moved_does_not_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let id = journaled(&spool, 1, 100)[0];
    let journal = &spool.inner.journal;
    let claimed = journal.begin_move(&id).unwrap().unwrap();
    spool.remove_finished(&id).unwrap();
    spool.store(&id, &claimed.envelope, &claimed.body).unwrap();
    assert!(
        journal.end_move(&id, true),
        "the mover learns of the removal"
    );
    assert!(!spool.in_journal(&id));
    drop(spool);
    // The mover deletes its copy; even if it did not get to, the journal says "done".
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.scan().unwrap(), vec![id]);
    spool.remove(&id).unwrap();
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert!(spool.scan().unwrap().is_empty());
}

const JOURNAL_CRASH_DIR_ENV: &str = "RELAYWARD_JOURNAL_CRASH_CHILD_DIR";

/// The child side; does nothing in a normal test run.
#[test]
fn journal_crash_child() {
    let Some(dir) = std::env::var_os(JOURNAL_CRASH_DIR_ENV) else {
        return;
    };
    SLOW_MOTION.store(true, Ordering::Relaxed);
    let spool = Spool::open(dir).unwrap();
    let mut out = io::stdout().lock();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        let ids: Vec<QueueId> = (0..1 + round % 4).map(|_| spool.new_queue_id()).collect();
        spool
            .store_journaled(
                ids.iter()
                    .map(|id| (*id, crash_envelope(id), Arc::new(crash_body(id))))
                    .collect(),
            )
            .unwrap();
        for id in &ids {
            writeln!(out, "\n{MARK}stored {id}").unwrap();
        }
        out.flush().unwrap();
        for id in &ids {
            if crash_will_update(id) {
                spool.update_envelope(id, &crash_updated(id)).unwrap();
                writeln!(out, "\n{MARK}updated {id}").unwrap();
                out.flush().unwrap();
            }
            if crash_will_remove(id) {
                spool.remove_finished(id).unwrap();
                writeln!(out, "\n{MARK}removed {id}").unwrap();
                out.flush().unwrap();
            }
        }
        if round.is_multiple_of(5) {
            spool.maintain_journal();
        }
    }
}

/// SIGKILL right after a batch is acknowledged loses none of it; what was finished does not
/// come back; a replay is complete and consistent, kill after kill on the same spool.
#[test]
fn the_journal_survives_sigkill_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut stored = HashSet::new();
    let mut updated = HashSet::new();
    let mut removed = HashSet::new();
    for round in 0..12 {
        let mut child = Command::new(&exe)
            .args([
                "spool::tests::journal_crash_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(JOURNAL_CRASH_DIR_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        let delay = 20 + rand::random::<u64>() % 250;
        std::thread::sleep(Duration::from_millis(delay));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let mut this_round = 0;
        for line in reader.join().unwrap() {
            let Some(pos) = line.find(MARK) else { continue };
            let mut parts = line[pos + MARK.len()..].split(' ');
            let (Some(what), Some(Ok(id))) =
                (parts.next(), parts.next().map(str::parse::<QueueId>))
            else {
                continue; // line cut by the kill
            };
            match what {
                "stored" => {
                    stored.insert(id);
                    this_round += 1;
                }
                "updated" => {
                    updated.insert(id);
                }
                "removed" => {
                    removed.insert(id);
                }
                _ => {}
            }
        }

        let spool = Spool::open(dir.path()).unwrap();
        let present = check_after_crash(&spool, round, &stored, &removed, &updated);
        eprintln!(
            "round {round}: killed after {delay} ms, {this_round} stored this round, {} in \
             spool, {} journal segments",
            present.len(),
            journal_names(dir.path()).len()
        );
    }
    assert!(!stored.is_empty(), "child never stored anything");
}

/// `cargo test -p relayward-queue --release -- --ignored bench_store --nocapture`
/// Runs next to the test binary (not in /tmp, which may be tmpfs) unless
/// RELAYWARD_BENCH_DIR says otherwise.
#[test]
#[ignore]
fn bench_store_5k() {
    let base = std::env::var_os("RELAYWARD_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::current_exe().unwrap().parent().unwrap().into());
    let dir = tempfile::tempdir_in(&base).unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let body: Vec<u8> = (0..5 * 1024).map(|i| b"abcdefghij\r\n"[i % 12]).collect();
    let n = 500;

    let mut times = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let id = spool.new_queue_id();
        let mut env = envelope(id, 2);
        env.size = body.len() as u64;
        let t = Instant::now();
        spool.store(&id, &env, &body).unwrap();
        times.push(t.elapsed());
        ids.push(id);
    }
    times.sort();
    let total: Duration = times.iter().sum();
    eprintln!(
        "store 5 KiB in {}: mean {:?}, p50 {:?}, p99 {:?} ({} stores)",
        dir.path().display(),
        total / n as u32,
        times[n / 2],
        times[n * 99 / 100],
        n
    );

    let t = Instant::now();
    for id in &ids {
        let mut env = envelope(*id, 2);
        env.recipients[0].status = RecipientStatus::Delivered;
        spool.update_envelope(id, &env).unwrap();
    }
    eprintln!("update_envelope: mean {:?}", t.elapsed() / n as u32);

    let t = Instant::now();
    for id in &ids {
        spool.remove(id).unwrap();
    }
    eprintln!("remove: mean {:?}", t.elapsed() / n as u32);

    let threads = 8;
    let per_thread = n / threads;
    let t = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (spool, body) = (spool.clone(), body.clone());
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    let id = spool.new_queue_id();
                    spool.store(&id, &envelope(id, 2), &body).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let elapsed = t.elapsed();
    eprintln!(
        "store from {threads} threads: {:?} per message, {:.0} messages/s",
        elapsed / (threads * per_thread) as u32,
        (threads * per_thread) as f64 / elapsed.as_secs_f64()
    );

    let batch = 32;
    let ids: Vec<QueueId> = (0..n).map(|_| spool.new_queue_id()).collect();
    let envs: Vec<Envelope> = ids.iter().map(|id| envelope(*id, 2)).collect();
    let t = Instant::now();
    for (ids, envs) in ids.chunks(batch).zip(envs.chunks(batch)) {
        spool
            .store_many(ids.iter().zip(envs).map(|(id, e)| (id, e, &body)))
            .unwrap();
    }
    eprintln!(
        "store_many (batches of {batch}): mean {:?} per message",
        t.elapsed() / n as u32
    );

    // The same batches through the journal, alternating with store_many so that both see
    // the same disk.
    let body = Arc::new(body);
    for round in 0..2 {
        for batch in [1, 8, 32] {
            let mut files = Duration::ZERO;
            let mut journal = Duration::ZERO;
            for _ in 0..n / batch {
                let ids: Vec<QueueId> = (0..batch).map(|_| spool.new_queue_id()).collect();
                let envs: Vec<Envelope> = ids.iter().map(|id| envelope(*id, 2)).collect();
                let t = Instant::now();
                spool
                    .store_many(ids.iter().zip(&envs).map(|(id, e)| (id, e, &body[..])))
                    .unwrap();
                files += t.elapsed();
                let items = ids
                    .iter()
                    .map(|_| {
                        let id = spool.new_queue_id();
                        (id, envelope(id, 2), body.clone())
                    })
                    .collect();
                let t = Instant::now();
                spool.store_journaled(items).unwrap();
                journal += t.elapsed();
            }
            let per = |d: Duration| d / (n / batch * batch) as u32;
            eprintln!(
                "round {round}, batches of {batch}: message files {:?}, journal {:?} per message",
                per(files),
                per(journal)
            );
        }
    }
}

#[test]
fn sender_class_is_spooled_in_its_stored_words() {
    use relayward_core::SenderClass;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    for (class, word) in [
        (SenderClass::Registered, "registered"),
        (SenderClass::Unregistered, "unregistered"),
        (SenderClass::Null, "null"),
    ] {
        let mut env = envelope(spool.new_queue_id(), 1);
        env.sender_class = class;
        let json = serde_json::to_value(&env).unwrap();
        assert_eq!(json["sender_class"], word);
        // An envelope written before the class was typed reads back the same.
        let back: Envelope = serde_json::from_value(json).unwrap();
        assert_eq!(back.sender_class, class);
    }
    let mut json = serde_json::to_value(envelope(spool.new_queue_id(), 1)).unwrap();
    json["sender_class"] = "unknown".into();
    assert!(serde_json::from_value::<Envelope>(json).is_err());
}
