//! The enqueuer: the transactional outbox relay from the store to the queues.
//!
//! Runs are created `pending` in the store; the enqueuer publishes each due run to its queue,
//! waits for the broker's confirmation, and only then marks it `queued`. A crash between the two
//! publishes the run again on restart: a duplicate message, which the worker's claim makes
//! harmless. A run is never lost, because it stays in the outbox until marked.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use tracing::{info, warn};

use super::{CancellationToken, EngineDeps, EngineError};
use crate::ports::{RunFilter, RunMessage, StoreError};
use crate::run::{ModelRun, RunEvent, RunState};

/// Enqueuer settings.
#[derive(Debug, Clone)]
pub struct EnqueuerConfig {
    /// Runs taken from the outbox per pass.
    pub batch: usize,
    /// Wait after a pass that found nothing.
    pub idle: Duration,
}

impl Default for EnqueuerConfig {
    fn default() -> Self {
        Self {
            batch: 500,
            idle: Duration::from_millis(100),
        }
    }
}

/// The outbox relay.
#[derive(Debug, Clone)]
pub struct Enqueuer {
    deps: EngineDeps,
    config: EnqueuerConfig,
}

impl Enqueuer {
    /// An enqueuer over `deps`.
    pub fn new(deps: EngineDeps, config: EnqueuerConfig) -> Self {
        Self { deps, config }
    }

    /// Publishes one batch of due runs and marks them queued; returns how many were marked.
    pub async fn pass(&self) -> Result<usize, EngineError> {
        let due = self
            .deps
            .store
            .outbox(Utc::now(), self.config.batch)
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut by_queue: BTreeMap<&str, Vec<&ModelRun>> = BTreeMap::new();
        for run in &due {
            by_queue.entry(run.queue.as_str()).or_default().push(run);
        }
        let mut marked = 0;
        for (queue, runs) in by_queue {
            let messages: Vec<RunMessage> = runs
                .iter()
                .map(|r| RunMessage {
                    run_id: r.id,
                    attempt: r.publish_attempt(),
                })
                .collect();
            // Confirmed by the broker before any run is marked.
            self.deps.queue.publish(queue, &messages).await?;
            for run in runs {
                match self
                    .deps
                    .store
                    .transition(run.id, run.state, run.attempt, RunEvent::Enqueue)
                    .await
                {
                    Ok(_) => marked += 1,
                    // Cancelled or changed meanwhile: the message will be dropped by the worker.
                    Err(StoreError::Conflict { .. } | StoreError::Transition(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(marked)
    }

    /// Publishes every `queued` run again: used at start with a queue that lost its messages
    /// (not durable), so no queued run waits forever.
    pub async fn republish_queued(&self) -> Result<usize, EngineError> {
        let mut filter = RunFilter {
            state: Some(RunState::Queued),
            limit: 1000,
            ..Default::default()
        };
        let mut n = 0;
        loop {
            let page = self.deps.store.list(&filter).await?;
            let mut by_queue: BTreeMap<&str, Vec<RunMessage>> = BTreeMap::new();
            for r in &page.runs {
                by_queue
                    .entry(r.queue.as_str())
                    .or_default()
                    .push(RunMessage {
                        run_id: r.id,
                        attempt: r.attempt,
                    });
            }
            for (queue, messages) in by_queue {
                self.deps.queue.publish(queue, &messages).await?;
                n += messages.len();
            }
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        Ok(n)
    }

    /// Relays until `shutdown` is cancelled; failures are logged and retried after a pause.
    pub async fn run(self, shutdown: CancellationToken) {
        if !self.deps.queue.is_durable() {
            match self.republish_queued().await {
                Ok(0) => {}
                Ok(n) => info!(runs = n, "republished queued runs to a non-durable queue"),
                Err(e) => warn!(error = %e, "could not republish queued runs"),
            }
        }
        let mut failures = 0u32;
        loop {
            let wait = match self.pass().await {
                Ok(n) if n > 0 => {
                    failures = 0;
                    Duration::ZERO
                }
                Ok(_) => {
                    failures = 0;
                    self.config.idle
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, failures, "enqueuer pass failed; retrying");
                    Duration::from_millis(200 * u64::from(failures.min(25)))
                }
            };
            if wait.is_zero() {
                if shutdown.is_cancelled() {
                    break;
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
