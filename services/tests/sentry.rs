//! Error reporting (feature `sentry`): a run whose attempt fails is reported to the Sentry DSN
//! with the run's fields, and its dead-lettering too. The DSN points at a small HTTP server in
//! this test that records what it receives.
#![cfg(feature = "sentry")]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;
use std::sync::{Arc, Mutex};

const BIN: &str = env!("CARGO_BIN_EXE_model-runner");

/// Accepts HTTP requests on 127.0.0.1 and keeps their bodies.
fn collector() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok() {
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
        }
    });
    (port, bodies)
}

#[test]
fn failed_attempts_and_dead_letters_are_reported_with_the_run() {
    let (port, bodies) = collector();
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
    let bodies = bodies.lock().unwrap().join("\n");
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
