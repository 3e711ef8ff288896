//! The engine's metrics, recorded through the [`metrics`] facade: with no recorder installed
//! they cost next to nothing; a process that installs one (the `model-runner` binary installs a
//! Prometheus recorder) exports them. Every metric is named and documented here, once.
//!
//! Names and units follow Prometheus conventions (`_total` counters, `_seconds` histograms).
//! Label values are bounded: chain, model, queue, outcome and method names, never run ids.
//!
//! | metric | kind | labels | what |
//! |---|---|---|---|
//! | `model_runner_blocks_modeled_total` | counter | chain, model | blocks of succeeded runs |
//! | `model_runner_records_written_total` | counter | chain, model | records delivered by succeeded runs |
//! | `model_runner_run_duration_seconds` | histogram | chain, model, outcome | claim to outcome of one attempt |
//! | `model_runner_queue_wait_seconds` | histogram | chain, model | queued to claimed |
//! | `model_runner_attempts_failed_total` | counter | chain, model | failed attempts (retried or final) |
//! | `model_runner_messages_dead_lettered_total` | counter | queue | messages rejected to `<queue>.dead` |
//! | `model_runner_sink_send_seconds` | histogram | chain | delivering one run's records |
//! | `model_runner_source_request_seconds` | histogram | chain, method | block-source requests (`blocks`, and each JSON-RPC method) |
//! | `model_runner_source_errors_total` | counter | chain, method | failed block-source requests |
//! | `model_runner_enqueuer_publish_seconds` | histogram | queue | a confirmed publish of one batch |
//! | `model_runner_enqueuer_publish_errors_total` | counter | queue | failed publishes |
//! | `model_runner_runs_enqueued_total` | counter | queue | runs marked `queued` by the enqueuer |
//! | `model_runner_realtime_lag_blocks` | gauge | chain, model | confirmed head minus the realtime cursor |
//! | `model_runner_leases_expired_total` | counter | | runs whose worker's lease ran out |
//! | `model_runner_runs_republished_total` | counter | | stale `queued` runs republished by the reconciler |
//! | `model_runner_runs_superseded_total` | counter | | realtime runs superseded by a chain reorganisation |
//! | `model_runner_abi_mismatched_logs_total` | counter | chain, reason | logs of contracts with a registered ABI that `abi_events` could not decode (`unknown_event`, `undecodable`) |
//! | `model_runner_runs` | gauge | state | runs per state (set by the API on each scrape) |

use std::time::Duration;

use crate::run::ModelRun;

/// Every histogram of the engine ends in `_seconds`: exporters give them these buckets.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

fn labels(run: &ModelRun) -> [(&'static str, String); 2] {
    [
        ("chain", run.chain.to_string()),
        ("model", run.model.clone()),
    ]
}

/// A worker claimed `run`: how long it waited in its queue.
pub fn claimed(run: &ModelRun) {
    if let (Some(queued), Some(started)) = (run.queued_at, run.started_at) {
        let wait = (started - queued).to_std().unwrap_or_default();
        metrics::histogram!("model_runner_queue_wait_seconds", &labels(run)).record(wait);
    }
}

/// An attempt of `run` ended after `took`: `outcome` is `succeeded`, `failed`, `abandoned`,
/// `handed_back` or `passed_on`.
pub fn attempt_ended(run: &ModelRun, outcome: &'static str, took: Duration) {
    let [chain, model] = labels(run);
    metrics::histogram!(
        "model_runner_run_duration_seconds",
        &[chain, model, ("outcome", outcome.to_owned())]
    )
    .record(took);
}

/// `run` succeeded with `records` records.
pub fn succeeded(run: &ModelRun, records: u64) {
    let labels = labels(run);
    metrics::counter!("model_runner_blocks_modeled_total", &labels).increment(run.range.len());
    metrics::counter!("model_runner_records_written_total", &labels).increment(records);
}

/// An attempt of `run` failed.
pub fn failed(run: &ModelRun) {
    metrics::counter!("model_runner_attempts_failed_total", &labels(run)).increment(1);
}

/// A message of `queue` was rejected to its dead-letter queue.
pub fn dead_lettered(queue: &str) {
    metrics::counter!("model_runner_messages_dead_lettered_total", "queue" => queue.to_owned())
        .increment(1);
}

/// One run's records were delivered (or not) in `took`.
pub fn sink_sent(run: &ModelRun, took: Duration) {
    metrics::histogram!("model_runner_sink_send_seconds", "chain" => run.chain.to_string())
        .record(took);
}

/// A block-source request `method` on `run`'s chain took `took`; `ok` tells whether it
/// succeeded.
pub fn source_request(run: &ModelRun, method: &'static str, took: Duration, ok: bool) {
    source_method(run.chain.as_str(), method, took, ok);
}

/// A request `method` to the block source of `chain` (a JSON-RPC method such as `eth_call`, or
/// the port's `blocks`) took `took`; `ok` tells whether it succeeded.
pub fn source_method(chain: &str, method: &str, took: Duration, ok: bool) {
    let chain = chain.to_owned();
    let method = method.to_owned();
    metrics::histogram!(
        "model_runner_source_request_seconds",
        "chain" => chain.clone(),
        "method" => method.clone()
    )
    .record(took);
    if !ok {
        metrics::counter!("model_runner_source_errors_total", "chain" => chain, "method" => method)
            .increment(1);
    }
}

/// `abi_events` met `n` logs on `chain` that do not match their contract's ABI, for `reason`.
pub fn abi_mismatched_logs(chain: &crate::chain::Chain, reason: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!(
            "model_runner_abi_mismatched_logs_total",
            "chain" => chain.to_string(),
            "reason" => reason
        )
        .increment(n);
    }
}

/// The enqueuer published a batch to `queue` in `took`; `ok` tells whether it was confirmed.
pub fn published(queue: &str, took: Duration, ok: bool) {
    metrics::histogram!("model_runner_enqueuer_publish_seconds", "queue" => queue.to_owned())
        .record(took);
    if !ok {
        metrics::counter!("model_runner_enqueuer_publish_errors_total", "queue" => queue.to_owned())
            .increment(1);
    }
}

/// The enqueuer marked `n` runs of `queue` queued.
pub fn enqueued(queue: &str, n: usize) {
    metrics::counter!("model_runner_runs_enqueued_total", "queue" => queue.to_owned())
        .increment(n as u64);
}

/// The realtime subscription of `model` on `chain` is `lag` blocks behind the confirmed head.
pub fn realtime_lag(chain: &str, model: &str, lag: u64) {
    metrics::gauge!(
        "model_runner_realtime_lag_blocks",
        "chain" => chain.to_owned(),
        "model" => model.to_owned()
    )
    .set(lag as f64);
}

/// `n` leases expired.
pub fn leases_expired(n: usize) {
    metrics::counter!("model_runner_leases_expired_total").increment(n as u64);
}

/// The reconciler republished `n` runs.
pub fn republished(n: usize) {
    metrics::counter!("model_runner_runs_republished_total").increment(n as u64);
}

/// The scheduler superseded `n` realtime runs after a chain reorganisation.
pub fn superseded(n: usize) {
    metrics::counter!("model_runner_runs_superseded_total").increment(n as u64);
}

/// `count` runs are in `state` (all runs of the store), as the API sees on a scrape.
pub fn runs_in_state(state: &str, count: u64) {
    metrics::gauge!("model_runner_runs", "state" => state.to_owned()).set(count as f64);
}
