//! Error reporting (feature `sentry`): a run whose attempt fails is reported to the Sentry DSN
//! with the run's fields, and its dead-lettering too. The DSN points at a small HTTP server in
//! this test that records what it receives.
#![cfg(feature = "sentry")]

use std::process::Command;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_model-runner");

#[test]
fn failed_attempts_and_dead_letters_are_reported_with_the_run() {
    let (port, received) = support::collector::start();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            // The chain's head is block 20: blocks 21-99 cannot be loaded, so the run fails.
            "--chain",
            "ethereum=devnet://?head=20&block_time_ms=3600000",
            "--store",
            &format!("sqlite://{}/runs.db", dir.path().display()),
            "all",
            "--backfill",
            "ethereum:block_stats:0-99",
            "--max-attempts",
            "1",
        ])
        .current_dir(dir.path())
        .env("SENTRY_DSN", format!("http://public@127.0.0.1:{port}/1"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the run was meant to fail: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The client flushes when the process ends, so everything has arrived by now.
    let bodies: String = received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| body.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(bodies.contains("run attempt failed"), "{bodies}");
    assert!(bodies.contains("dead-letter queue"), "{bodies}");
    for field in [
        "block_stats",
        "ethereum",
        "0-99",
        "ethereum_backfill_nonreads",
    ] {
        assert!(
            bodies.contains(field),
            "{field} missing from the report: {bodies}"
        );
    }
}
