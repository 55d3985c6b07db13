//! Replays every file of `fuzz/corpus/<target>/` through its target, so the corpora (seeds,
//! inputs the fuzzer found interesting, minimised crashes) are checked by the normal test run.

use std::path::{Path, PathBuf};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target)
}

fn replay(target: &str) {
    let (_, run) = relayward_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no target {target}"));
    let dir = corpus_dir(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} is empty", dir.display());
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // Printed first: the output of a failing test names the input that failed.
        println!("{}", file.display());
        run(&data);
    }
    println!("{target}: {} inputs", files.len());
}

#[test]
fn every_target_has_a_corpus() {
    for (name, _) in relayward_fuzz::TARGETS {
        assert!(corpus_dir(name).is_dir(), "fuzz/corpus/{name} is missing");
    }
}

#[test]
fn smtp_command() {
    replay("smtp_command");
}

#[test]
fn session() {
    replay("session");
}

#[test]
fn address() {
    replay("address");
}

#[test]
fn srs_reverse() {
    replay("srs_reverse");
}

#[test]
fn remote_reply() {
    replay("remote_reply");
}

#[test]
fn config() {
    replay("config");
}

/// Minimised crashes whose fix has not landed yet, `fuzz/regressions/<target>/`: run with
/// `cargo nextest run -p relayward-fuzz --run-ignored all` to check a fix, then move the files
/// to `fuzz/corpus/<target>/`.
#[test]
#[ignore = "known crashes, not fixed yet (fuzz/regressions)"]
fn known_crashes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions");
    let mut failed = Vec::new();
    for (name, run) in relayward_fuzz::TARGETS {
        let Ok(entries) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "still crashing: {failed:#?}");
}
