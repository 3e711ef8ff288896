//! OpenTelemetry export (feature `otlp`): with OTEL_EXPORTER_OTLP_ENDPOINT set, the spans of a
//! run reach the collector over OTLP/HTTP, with the run's fields and the service name.
#![cfg(feature = "otlp")]

use std::process::Command;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_model-runner");

#[test]
fn run_spans_are_exported_over_otlp_http() {
    let (port, received) = support::collector::start();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args([
            "--store",
            &format!("sqlite://{}/runs.db", dir.path().display()),
            "all",
            "--backfill",
            "ethereum:block_stats:0-99",
        ])
        .current_dir(dir.path())
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        )
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The exporter flushes when the process ends.
    let received = received.lock().unwrap();
    let traces: Vec<&String> = received
        .iter()
        .filter(|(request, _)| request.starts_with("POST /v1/traces "))
        .map(|(_, body)| body)
        .collect();
    assert!(!traces.is_empty(), "no POST /v1/traces: {received:?}");
    let all = traces.iter().map(|b| b.as_str()).collect::<String>();
    for expected in ["model-runner", "run", "block_stats", "ethereum", "0-99"] {
        assert!(all.contains(expected), "{expected} not exported");
    }
}
