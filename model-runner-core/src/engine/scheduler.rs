//! The scheduler: follows chain heads, splits backfills, and sends runs whose worker vanished
//! back for another attempt.

use std::time::Duration;

use chrono::Utc;
use tracing::{debug, info, warn};

use super::{CancellationToken, EngineDeps, EngineError, RetryPolicy};
use crate::chain::{BlockRange, Chain, RunMode};
use crate::ports::{CreateRuns, CreatedRuns, StoreError};
use crate::run::{NewRun, RunEvent, RunState};

/// Follow `chain`'s head with `model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealtimeSubscription {
    /// Model name.
    pub model: String,
    /// Chain.
    pub chain: Chain,
    /// Blocks to stay behind the head (reorg safety).
    pub confirmations: u64,
    /// Longest run; a larger gap becomes several runs.
    pub max_blocks_per_run: u64,
    /// First block when no cursor exists yet; `None` starts at the confirmed head.
    pub start: Option<u64>,
    /// Attempts per run.
    pub max_attempts: u32,
}

impl RealtimeSubscription {
    /// A subscription with production defaults: 0 confirmations, up to 100 blocks a run, start
    /// at the head, 3 attempts.
    pub fn new(model: impl Into<String>, chain: Chain) -> Self {
        Self {
            model: model.into(),
            chain,
            confirmations: 0,
            max_blocks_per_run: 100,
            start: None,
            max_attempts: 3,
        }
    }
}

/// A backfill or adhoc request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillRequest {
    /// Model name.
    pub model: String,
    /// Chain.
    pub chain: Chain,
    /// Blocks.
    pub range: BlockRange,
    /// Blocks per run.
    pub chunk_size: u64,
    /// `Backfill` or `Adhoc`.
    pub mode: RunMode,
    /// For adhoc runs: the `backfill_N` pool (1-based); `None` spreads over all pools.
    pub adhoc_queue: Option<u32>,
    /// Attempts per run.
    pub max_attempts: u32,
    /// Makes a resubmission return the same runs.
    pub idempotency_key: Option<String>,
}

/// The most runs one backfill may create, so a typo cannot flood the store.
pub const MAX_RUNS_PER_BACKFILL: u64 = 1_000_000;

/// Creates one `pending` run per chunk of the request, atomically.
pub async fn submit_backfill(
    deps: &EngineDeps,
    req: BackfillRequest,
) -> Result<CreatedRuns, EngineError> {
    if req.mode == RunMode::Realtime {
        return Err(EngineError::InvalidInput(
            "a backfill's mode is `backfill` or `adhoc`, not `realtime`".into(),
        ));
    }
    if req.chunk_size == 0 {
        return Err(EngineError::InvalidInput(
            "chunk_size must be at least 1 block".into(),
        ));
    }
    if req.max_attempts == 0 {
        return Err(EngineError::InvalidInput(
            "max_attempts must be at least 1".into(),
        ));
    }
    let model = deps.models.get_for(&req.model, &req.chain)?;
    deps.source(&req.chain)?;
    let runs_needed = req.range.len().div_ceil(req.chunk_size);
    if runs_needed > MAX_RUNS_PER_BACKFILL {
        return Err(EngineError::InvalidInput(format!(
            "range {} in chunks of {} makes {runs_needed} runs, more than {MAX_RUNS_PER_BACKFILL}; use larger chunks",
            req.range, req.chunk_size
        )));
    }
    let mut runs = Vec::with_capacity(runs_needed as usize);
    for (i, chunk) in req
        .range
        .chunks(req.chunk_size)
        .expect("chunk_size checked above")
        .enumerate()
    {
        let queue = deps.routing.queue_for(
            &req.chain,
            req.mode,
            model.kind(),
            req.adhoc_queue,
            i as u64,
        )?;
        runs.push(NewRun {
            model: req.model.clone(),
            model_version: model.version().to_owned(),
            chain: req.chain.clone(),
            range: chunk,
            mode: req.mode,
            kind: model.kind(),
            queue,
            max_attempts: req.max_attempts,
        });
    }
    Ok(deps
        .store
        .create_runs(CreateRuns {
            runs,
            idempotency_key: req.idempotency_key,
        })
        .await?)
}

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// This scheduler's identity for the leadership lock.
    pub owner: String,
    /// Time between ticks.
    pub tick: Duration,
    /// How long leadership lasts without renewal.
    pub leadership: Duration,
    /// Realtime subscriptions.
    pub realtime: Vec<RealtimeSubscription>,
    /// Backoff for runs whose lease expired.
    pub retry: RetryPolicy,
    /// Most runs created per subscription per tick (catching up after downtime).
    pub max_runs_per_tick: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            owner: format!("scheduler-{}", uuid::Uuid::now_v7().simple()),
            tick: Duration::from_secs(1),
            leadership: Duration::from_secs(15),
            realtime: Vec::new(),
            retry: RetryPolicy::default(),
            max_runs_per_tick: 100,
        }
    }
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Whether this scheduler held the leadership lock.
    pub leader: bool,
    /// Realtime runs created.
    pub created: usize,
    /// Runs whose lease had expired.
    pub expired: usize,
}

/// The scheduler loop. Several may run; a store lock lets one act at a time.
#[derive(Debug, Clone)]
pub struct Scheduler {
    deps: EngineDeps,
    config: SchedulerConfig,
}

/// Name of the leadership lock in the store.
pub const SCHEDULER_LOCK: &str = "scheduler";

impl Scheduler {
    /// A scheduler over `deps`.
    pub fn new(deps: EngineDeps, config: SchedulerConfig) -> Self {
        Self { deps, config }
    }

    /// One pass: take leadership, schedule realtime runs, expire dead leases.
    pub async fn tick(&self) -> Result<TickReport, EngineError> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(self.config.leadership).unwrap_or_default();
        let mut report = TickReport::default();
        if !self
            .deps
            .store
            .try_lock(SCHEDULER_LOCK, &self.config.owner, until)
            .await?
        {
            return Ok(report);
        }
        report.leader = true;
        for sub in &self.config.realtime {
            match self.schedule_realtime(sub).await {
                Ok(n) => report.created += n,
                Err(e) => {
                    warn!(model = %sub.model, chain = %sub.chain, error = %e, "realtime scheduling failed; will retry")
                }
            }
        }
        report.expired = self.expire_leases().await?;
        Ok(report)
    }

    async fn schedule_realtime(&self, sub: &RealtimeSubscription) -> Result<usize, EngineError> {
        let model = self.deps.models.get_for(&sub.model, &sub.chain)?;
        let head = self.deps.source(&sub.chain)?.head().await?;
        let Some(confirmed) = head.number.checked_sub(sub.confirmations) else {
            return Ok(0);
        };
        let cursor = self.deps.store.cursor(&sub.model, &sub.chain).await?;
        let from = match cursor {
            Some(c) => c + 1,
            None => sub.start.unwrap_or(confirmed),
        };
        if from > confirmed {
            return Ok(0);
        }
        let span = sub.max_blocks_per_run.max(1);
        let last = confirmed
            .min(from.saturating_add(span.saturating_mul(self.config.max_runs_per_tick) - 1));
        let range =
            BlockRange::new(from, last).map_err(|e| EngineError::InvalidInput(e.to_string()))?;
        let queue =
            self.deps
                .routing
                .queue_for(&sub.chain, RunMode::Realtime, model.kind(), None, 0)?;
        let runs: Vec<NewRun> = range
            .chunks(span)
            .expect("span >= 1")
            .map(|chunk| NewRun {
                model: sub.model.clone(),
                model_version: model.version().to_owned(),
                chain: sub.chain.clone(),
                range: chunk,
                mode: RunMode::Realtime,
                kind: model.kind(),
                queue: queue.clone(),
                max_attempts: sub.max_attempts,
            })
            .collect();
        match self
            .deps
            .store
            .advance_cursor(&sub.model, &sub.chain, cursor, last, runs)
            .await
        {
            Ok(created) => {
                debug!(model = %sub.model, chain = %sub.chain, %range, runs = created.len(), "scheduled realtime runs");
                Ok(created.len())
            }
            // Another scheduler advanced it first: nothing to do.
            Err(StoreError::Conflict { .. }) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    async fn expire_leases(&self) -> Result<usize, EngineError> {
        let now = Utc::now();
        let mut n = 0;
        for run in self.deps.store.expired_leases(now, 1000).await? {
            let retry_at = Some(self.config.retry.retry_at(run.attempt, now));
            match self
                .deps
                .store
                .transition(
                    run.id,
                    RunState::Running,
                    run.attempt,
                    RunEvent::Expire { retry_at },
                )
                .await
            {
                Ok(r) => {
                    n += 1;
                    info!(run = %r.id, attempt = r.attempt, owner = ?run.lease_owner, retry = r.next_attempt_at.is_some(), "lease expired");
                }
                Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    /// Ticks until `shutdown` is cancelled. Errors are logged and the next tick retries.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.config.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if let Err(e) = self.tick().await {
                warn!(error = %e, "scheduler tick failed; retrying next tick");
            }
        }
    }
}
