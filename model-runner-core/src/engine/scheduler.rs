//! The scheduler: follows chain heads, splits backfills, and sends runs whose worker vanished
//! back for another attempt.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, info, warn};

use super::{CancellationToken, EngineDeps, EngineError, RetryPolicy, instruments};
use crate::chain::{BlockRange, Chain, RunMode};
use crate::ports::{CreateRuns, CreatedRuns, RunMessage, RunStoreExt, StoreError};
use crate::ports::{CursorAdvance, CursorKey, CursorRewind, LockLease, ScheduledBlocks};
use crate::run::{ModelRun, NewRun, RunEvent, RunState};

/// Follow `chain`'s head with `model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealtimeSubscription {
    /// Model name.
    pub model: String,
    /// Chain.
    pub chain: Chain,
    /// Blocks to stay behind the head, so most reorganisations happen before a block is
    /// modelled.
    pub confirmations: u64,
    /// The deepest reorganisation followed: when the node's chain no longer holds the blocks of
    /// this many recent blocks' runs, the subscription stops with
    /// [`EngineError::ReorgTooDeep`] instead of rewriting that much history. Counted from the
    /// cursor down to the newest recorded run end the node still has.
    pub max_reorg_depth: u64,
    /// Longest run; a larger gap becomes several runs.
    pub max_blocks_per_run: u64,
    /// First block when no cursor exists yet; `None` starts at the confirmed head.
    pub start: Option<u64>,
    /// Attempts per run.
    pub max_attempts: u32,
    /// The queue its runs go to instead of the routed `<chain>_realtime_<kind>` (e.g. a
    /// dedicated worker group); workers must consume it (`--queues`).
    pub queue: Option<String>,
}

impl RealtimeSubscription {
    /// The store's key of this subscription's realtime cursor.
    pub fn cursor_key(&self) -> CursorKey<'_> {
        CursorKey::new(&self.model, &self.chain)
    }

    /// A subscription with production defaults: the chain's
    /// [`default_confirmations`](Chain::default_confirmations), up to
    /// [`DEFAULT_CHUNK_SIZE`](crate::submission::DEFAULT_CHUNK_SIZE) blocks a run, start at the
    /// head, [`DEFAULT_MAX_ATTEMPTS`](crate::submission::DEFAULT_MAX_ATTEMPTS) attempts.
    pub fn new(model: impl Into<String>, chain: Chain) -> Self {
        Self {
            model: model.into(),
            confirmations: chain.default_confirmations(),
            chain,
            max_reorg_depth: DEFAULT_MAX_REORG_DEPTH,
            max_blocks_per_run: crate::submission::DEFAULT_CHUNK_SIZE,
            start: None,
            max_attempts: crate::submission::DEFAULT_MAX_ATTEMPTS,
            queue: None,
        }
    }
}

/// The default of [`RealtimeSubscription::max_reorg_depth`]: 128 blocks, above every default
/// run length (100) and the deepest confirmation default (128 on Polygon).
pub const DEFAULT_MAX_REORG_DEPTH: u64 = 128;

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

impl BackfillRequest {
    /// A backfill of `model` over `range` of `chain`, one run per `chunk_size` blocks,
    /// [`DEFAULT_MAX_ATTEMPTS`](crate::submission::DEFAULT_MAX_ATTEMPTS) attempts each, without an idempotency key; change the other fields with struct update
    /// syntax (`BackfillRequest { mode: RunMode::Adhoc, ..BackfillRequest::new(..) }`).
    pub fn new(model: impl Into<String>, chain: Chain, range: BlockRange, chunk_size: u64) -> Self {
        Self {
            model: model.into(),
            chain,
            range,
            chunk_size,
            mode: RunMode::Backfill,
            adhoc_queue: None,
            max_attempts: crate::submission::DEFAULT_MAX_ATTEMPTS,
            idempotency_key: None,
        }
    }
}

/// The default of [`Limits::max_runs_per_backfill`](super::Limits::max_runs_per_backfill).
pub const DEFAULT_MAX_RUNS_PER_BACKFILL: u64 = 100_000;

/// The default of [`Limits::max_blocks_per_run`](super::Limits::max_blocks_per_run).
pub const DEFAULT_MAX_BLOCKS_PER_RUN: u64 = 100_000;

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
    let max = deps.limits.max_blocks_per_run;
    if req.chunk_size.min(req.range.len()) > max {
        return Err(EngineError::InvalidInput(format!(
            "chunk_size {} makes runs of more than {max} blocks, the limit per run; use smaller chunks (more runs)",
            req.chunk_size
        )));
    }
    if req.max_attempts == 0 {
        return Err(EngineError::InvalidInput(
            "max_attempts must be at least 1".into(),
        ));
    }
    let model = deps.models.get_for(&req.model, &req.chain)?;
    deps.source(&req.chain)?;
    let runs_needed = req.range.len().div_ceil(req.chunk_size);
    let max_runs = deps.limits.max_runs_per_backfill;
    if runs_needed > max_runs {
        return Err(EngineError::InvalidInput(format!(
            "range {} in chunks of {} makes {runs_needed} runs, more than the {max_runs} allowed per backfill; use larger chunks or split the range",
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
            model.spec().kind(),
            req.adhoc_queue,
            i as u64,
        )?;
        runs.push(NewRun {
            model: req.model.clone(),
            model_version: model.spec().version().to_owned(),
            chain: req.chain.clone(),
            range: chunk,
            mode: req.mode,
            kind: model.spec().kind(),
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
    /// A run `queued` longer than this has its message published again by the reconciler
    /// (whatever lost it: a broker that dropped it, a requeue on a dead channel). Set it above
    /// the longest time a message may legitimately wait in a queue behind others: each
    /// republish of a waiting run adds a duplicate message, which the worker's claim drops.
    pub reconcile_after: Duration,
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
            reconcile_after: Duration::from_secs(3600),
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
    /// Stale `queued` runs whose message was published again.
    pub republished: usize,
    /// Realtime runs superseded because a reorganisation replaced their blocks.
    pub superseded: usize,
}

/// What the reorganisation check found for one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChainCheck {
    /// The node still holds the newest scheduled block (or nothing is recorded yet).
    Same,
    /// The node has not reached the newest scheduled block: a lagging node; wait.
    Behind,
    /// The node's chain forked below the newest scheduled block; `ancestor` is the newest
    /// recorded run end it still holds.
    Reorganised { ancestor: u64 },
}

/// The scheduler loop. Several may run; a store lock lets one act at a time.
#[derive(Debug, Clone)]
pub struct Scheduler {
    deps: EngineDeps,
    config: SchedulerConfig,
    /// When the reconciler last looked for stale `queued` runs (it looks every tenth of the
    /// reconcile age, not every tick: the look scans the queued runs).
    last_reconcile: Arc<Mutex<Option<tokio::time::Instant>>>,
    /// Subscriptions stopped by a reorganisation deeper than their limit, with the error. A
    /// restarted scheduler finds the same reorganisation (the records are in the store) and
    /// stops them again.
    stopped: Arc<Mutex<BTreeMap<(String, Chain), String>>>,
}

/// Name of the leadership lock in the store.
pub const SCHEDULER_LOCK: &str = "scheduler";

impl Scheduler {
    /// A scheduler over `deps`.
    pub fn new(deps: EngineDeps, config: SchedulerConfig) -> Self {
        Self {
            deps,
            config,
            last_reconcile: Arc::default(),
            stopped: Arc::default(),
        }
    }

    /// Why `sub` is stopped, if a reorganisation deeper than its limit stopped it.
    pub fn stopped(&self, sub: &RealtimeSubscription) -> Option<String> {
        self.stopped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(sub.model.clone(), sub.chain.clone()))
            .cloned()
    }

    /// One pass: take leadership, schedule realtime runs, expire dead leases.
    pub async fn tick(&self) -> Result<TickReport, EngineError> {
        let now = self.deps.clock.now();
        let until = now + chrono::Duration::from_std(self.config.leadership).unwrap_or_default();
        let mut report = TickReport::default();
        if !self
            .deps
            .store
            .try_lock(LockLease {
                name: SCHEDULER_LOCK,
                owner: &self.config.owner,
                until,
            })
            .await?
        {
            return Ok(report);
        }
        report.leader = true;
        for sub in &self.config.realtime {
            if let Some(error) = self.stopped(sub) {
                debug!(model = %sub.model, chain = %sub.chain, %error, "realtime subscription stopped");
                continue;
            }
            match self.schedule_realtime(sub, &mut report).await {
                Ok(n) => report.created += n,
                Err(e @ EngineError::ReorgTooDeep { .. }) => {
                    tracing::error!(model = %sub.model, chain = %sub.chain, error = %e, "realtime subscription stopped: the reorganisation is deeper than its limit");
                    self.stopped
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((sub.model.clone(), sub.chain.clone()), e.to_string());
                }
                Err(e) => {
                    warn!(model = %sub.model, chain = %sub.chain, error = %e, "realtime scheduling failed; will retry")
                }
            }
        }
        report.expired = self.expire_leases().await?;
        instruments::leases_expired(report.expired);
        report.republished = self.reconcile().await?;
        instruments::republished(report.republished);
        Ok(report)
    }

    /// Publishes again the message of every run `queued` for longer than the reconcile age,
    /// then marks it republished (which restarts its queue time). Duplicates are harmless: the
    /// worker's claim drops all but one. One failing queue does not stop the others.
    async fn reconcile(&self) -> Result<usize, EngineError> {
        let age = self.config.reconcile_after;
        {
            let mut last = self
                .last_reconcile
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = tokio::time::Instant::now();
            if last.is_some_and(|t| now.duration_since(t) < age / 10) {
                return Ok(0);
            }
            *last = Some(now);
        }
        let now = self.deps.clock.now();
        let before = now - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        let stale = self.deps.store.stale_queued(before, 1000).await?;
        let mut by_queue: BTreeMap<&str, Vec<&ModelRun>> = BTreeMap::new();
        for run in &stale {
            by_queue.entry(run.queue.as_str()).or_default().push(run);
        }
        let mut republished = 0;
        for (queue, runs) in by_queue {
            let messages: Vec<RunMessage> = runs
                .iter()
                .map(|r| RunMessage {
                    run_id: r.id,
                    attempt: r.attempt,
                })
                .collect();
            if let Err(e) = self.deps.queue.publish(queue, &messages).await {
                warn!(%queue, runs = runs.len(), error = %e, "reconciler could not republish stale queued runs; next look retries");
                continue;
            }
            for run in runs {
                let Some(queued_at) = run.queued_at else {
                    continue;
                };
                match self
                    .deps
                    .store
                    .transition(
                        run.id,
                        RunState::Queued,
                        run.attempt,
                        RunEvent::Republish { queued_at },
                    )
                    .await
                {
                    Ok(r) => {
                        republished += 1;
                        info!(run = %r.id, %queue, attempt = r.attempt, queued_since = %queued_at, republished = r.republished, "reconciler republished a stale queued run");
                    }
                    // Claimed, cancelled or queued anew since it was listed.
                    Err(StoreError::Conflict { .. } | StoreError::Transition(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        if republished > 0 {
            warn!(
                runs = republished,
                age_secs = age.as_secs(),
                "reconciler republished runs queued longer than the reconcile age: their messages were lost, or still wait behind others (the workers then drop the copies; if this repeats, raise --reconcile-after-secs above the longest queue wait)"
            );
        }
        Ok(republished)
    }

    /// Compares the newest recorded run end of `sub` with the node's chain and, when they
    /// differ, walks back over the older records to the newest one the node still holds.
    async fn check_chain(
        &self,
        sub: &RealtimeSubscription,
        source: &dyn crate::ports::BlockSource,
        head: u64,
        cursor: u64,
    ) -> Result<ChainCheck, EngineError> {
        let recorded = self.deps.store.scheduled_blocks(sub.cursor_key()).await?;
        // A record above the cursor is of an advance that did not happen (recorded, then the
        // scheduler stopped); the next advance records that number again.
        let mut recorded = recorded.into_iter().filter(|b| b.number <= cursor);
        let Some(newest) = recorded.next() else {
            return Ok(ChainCheck::Same);
        };
        if head < newest.number {
            return Ok(ChainCheck::Behind);
        }
        let on_node = match source.block_ref(newest.number).await {
            Ok(b) => b,
            Err(crate::ports::SourceError::BlockNotFound { .. }) => return Ok(ChainCheck::Behind),
            Err(e) => return Err(e.into()),
        };
        if on_node.hash == newest.hash {
            return Ok(ChainCheck::Same);
        }
        warn!(model = %sub.model, chain = %sub.chain, block = newest.number, scheduled = %newest.hash, now = %on_node.hash, "chain reorganisation: a scheduled block's hash changed; walking back");
        for older in recorded {
            if cursor - older.number > sub.max_reorg_depth {
                break;
            }
            let on_node = source.block_ref(older.number).await?;
            if on_node.hash == older.hash {
                return Ok(ChainCheck::Reorganised {
                    ancestor: older.number,
                });
            }
        }
        Err(EngineError::ReorgTooDeep {
            model: sub.model.clone(),
            chain: sub.chain.to_string(),
            block: newest.number,
            max_depth: sub.max_reorg_depth,
        })
    }

    /// Supersedes the realtime runs of `sub` past `ancestor` and moves its cursor back, so the
    /// next scheduling covers the new branch. Returns the new cursor and the runs superseded.
    /// Idempotent: a scheduler that stops half way finds the same reorganisation next tick.
    async fn follow_reorg(
        &self,
        sub: &RealtimeSubscription,
        cursor: u64,
        ancestor: u64,
    ) -> Result<(u64, usize), EngineError> {
        let store = &self.deps.store;
        let runs = store
            .realtime_runs_after(sub.cursor_key(), ancestor)
            .await?;
        // Runs are whole: one reaching below the ancestor (none should, every recorded block is
        // a run's last) is superseded whole and its blocks scheduled again.
        let to = runs
            .iter()
            .map(|r| r.range.start().saturating_sub(1))
            .fold(ancestor, u64::min);
        let reason = format!(
            "chain reorganisation: blocks after {ancestor} of {} were replaced",
            sub.chain
        );
        let mut superseded = 0;
        for run in runs {
            let mut current = run;
            // A run moves on its own (claimed, finished) between the read and the write: read
            // it again and retry, a few times. One still moving after that fails the tick
            // before the cursor moves back, so no replaced run is left live beside the new
            // branch; the next tick finds the same reorganisation and tries again.
            let mut tries = 0;
            loop {
                match store
                    .transition(
                        current.id,
                        current.state,
                        current.attempt,
                        RunEvent::Supersede {
                            reason: reason.clone(),
                        },
                    )
                    .await
                {
                    Ok(r) => {
                        superseded += 1;
                        info!(run = %r.id, range = %r.range, "run superseded by a chain reorganisation");
                        break;
                    }
                    Err(e @ StoreError::Conflict { .. }) => {
                        tries += 1;
                        if tries == 5 {
                            instruments::superseded(superseded);
                            return Err(e.into());
                        }
                        current = store.get(current.id).await?;
                    }
                    // Cancelled or superseded since it was listed.
                    Err(StoreError::Transition(_)) => break,
                    Err(e) => return Err(e.into()),
                }
            }
        }
        store
            .rewind_cursor(CursorRewind {
                key: sub.cursor_key(),
                expected: cursor,
                to,
            })
            .await?;
        instruments::superseded(superseded);
        warn!(model = %sub.model, chain = %sub.chain, from = cursor, to, runs = superseded, "realtime cursor moved back over a chain reorganisation; the new branch is scheduled next");
        Ok((to, superseded))
    }

    async fn schedule_realtime(
        &self,
        sub: &RealtimeSubscription,
        report: &mut TickReport,
    ) -> Result<usize, EngineError> {
        let model = self.deps.models.get_for(&sub.model, &sub.chain)?;
        let source = self.deps.source(&sub.chain)?;
        let head = source.head().await?;
        let mut cursor = self.deps.store.cursor(sub.cursor_key()).await?;
        if let Some(c) = cursor {
            match self
                .check_chain(sub, source.as_ref(), head.number, c)
                .await?
            {
                ChainCheck::Same => {}
                ChainCheck::Behind => {
                    debug!(model = %sub.model, chain = %sub.chain, head = head.number, cursor = c, "the node is behind the scheduled blocks; waiting");
                    return Ok(0);
                }
                ChainCheck::Reorganised { ancestor } => {
                    let (to, superseded) = self.follow_reorg(sub, c, ancestor).await?;
                    report.superseded += superseded;
                    cursor = Some(to);
                }
            }
        }
        let Some(confirmed) = head.number.checked_sub(sub.confirmations) else {
            return Ok(0);
        };
        let from = match cursor {
            Some(c) => c + 1,
            None => sub.start.unwrap_or(confirmed),
        };
        if from > confirmed {
            instruments::realtime_lag(sub.chain.as_str(), &sub.model, 0);
            return Ok(0);
        }
        let span = sub
            .max_blocks_per_run
            .clamp(1, self.deps.limits.max_blocks_per_run.max(1));
        let last = confirmed
            .min(from.saturating_add(span.saturating_mul(self.config.max_runs_per_tick) - 1));
        let range =
            BlockRange::new(from, last).map_err(|e| EngineError::InvalidInput(e.to_string()))?;
        let queue = match &sub.queue {
            Some(queue) => queue.clone(),
            None => self.deps.routing.queue_for(
                &sub.chain,
                RunMode::Realtime,
                model.spec().kind(),
                None,
                0,
            )?,
        };
        let chunks: Vec<BlockRange> = range.chunks(span).expect("span >= 1").collect();
        // Record where each new run's last block sits before the cursor moves over it, so a
        // later reorganisation below it is seen and the walk back stops at a run boundary.
        // Only the runs within the reorganisation limit of the end: older ones are never
        // compared.
        let keep_from = last.saturating_sub(sub.max_reorg_depth);
        let mut ends = Vec::new();
        // The subscription's first runs: also the block it starts after, so a reorganisation
        // of every block it has scheduled still has an ancestor to walk back to.
        if cursor.is_none() && from > keep_from {
            ends.push(source.block_ref(from - 1).await?);
        }
        for chunk in chunks.iter().filter(|c| c.end() >= keep_from) {
            ends.push(source.block_ref(chunk.end()).await?);
        }
        self.deps
            .store
            .record_scheduled_blocks(ScheduledBlocks {
                key: sub.cursor_key(),
                blocks: &ends,
                keep_from,
            })
            .await?;
        let runs: Vec<NewRun> = chunks
            .into_iter()
            .map(|chunk| NewRun {
                model: sub.model.clone(),
                model_version: model.spec().version().to_owned(),
                chain: sub.chain.clone(),
                range: chunk,
                mode: RunMode::Realtime,
                kind: model.spec().kind(),
                queue: queue.clone(),
                max_attempts: sub.max_attempts,
            })
            .collect();
        match self
            .deps
            .store
            .advance_cursor(CursorAdvance {
                key: sub.cursor_key(),
                expected: cursor,
                to: last,
                runs,
            })
            .await
        {
            Ok(created) => {
                instruments::realtime_lag(sub.chain.as_str(), &sub.model, confirmed - last);
                debug!(model = %sub.model, chain = %sub.chain, %range, runs = created.len(), "scheduled realtime runs");
                Ok(created.len())
            }
            // Another scheduler advanced it first: nothing to do.
            Err(StoreError::Conflict { .. }) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    async fn expire_leases(&self) -> Result<usize, EngineError> {
        let now = self.deps.clock.now();
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
                    RunEvent::Expire { at: now, retry_at },
                )
                .await
            {
                Ok(r) => {
                    n += 1;
                    info!(run = %r.id, attempt = r.attempt, owner = ?run.lease_owner, retry = r.next_attempt_at.is_some(), "lease expired");
                }
                // Finished, or its lease renewed, since it was listed.
                Err(StoreError::Conflict { .. } | StoreError::Transition(_)) => {}
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::chain::ModelKind;
    use crate::clock::TokioClock;
    use crate::memory::{MemoryBlockSource, MemoryRunQueue, MemoryRunStore, MemorySink};
    use crate::ports::{BlockSource, RunFilter, RunQueue, RunStore, RunStoreExt};
    use crate::routing::{Routing, queue_name};
    use crate::run::ModelRun;

    fn chain() -> Chain {
        Chain::new("ethereum").unwrap()
    }

    /// Deps over a chain whose head is `head`, with the built-in models.
    fn setup(head: u64) -> (EngineDeps, Arc<MemoryBlockSource>) {
        let source = Arc::new(MemoryBlockSource::new(
            chain(),
            crate::models::tests::blocks(0, head),
        ));
        // The store and the engine read one clock, which follows tokio's: tests that pause
        // time move both with `tokio::time::advance`.
        let clock = TokioClock::shared();
        let deps = EngineDeps {
            store: Arc::new(MemoryRunStore::with_clock(clock.clone())),
            queue: Arc::new(MemoryRunQueue::new()),
            sink: Arc::new(MemorySink::new()),
            sources: HashMap::from([(chain(), source.clone() as _)]),
            models: Arc::new(crate::models::builtin()),
            routing: Routing::default(),
            limits: Default::default(),
            clock,
        };
        (deps, source)
    }

    /// Grows the chain to `head`.
    async fn grow(source: &MemoryBlockSource, head: u64) {
        let from = source.head().await.unwrap().number + 1;
        for b in crate::models::tests::blocks(from, head) {
            source.push(b);
        }
    }

    fn sub(
        start: Option<u64>,
        confirmations: u64,
        max_blocks_per_run: u64,
    ) -> RealtimeSubscription {
        RealtimeSubscription {
            start,
            confirmations,
            max_blocks_per_run,
            ..RealtimeSubscription::new("block_stats", chain())
        }
    }

    fn scheduler(deps: &EngineDeps, owner: &str, subs: Vec<RealtimeSubscription>) -> Scheduler {
        Scheduler::new(
            deps.clone(),
            SchedulerConfig {
                owner: owner.into(),
                realtime: subs,
                ..Default::default()
            },
        )
    }

    /// Every run in the store, by range.
    async fn all_runs(deps: &EngineDeps) -> Vec<ModelRun> {
        let mut filter = RunFilter {
            limit: 1000,
            ..Default::default()
        };
        let mut out = Vec::new();
        loop {
            let page = deps.store.list(&filter).await.unwrap();
            out.extend(page.runs);
            match page.next {
                Some(n) => filter.after = Some(n),
                None => break,
            }
        }
        out.sort_by_key(|r| r.range.start());
        out
    }

    fn ranges(runs: &[ModelRun]) -> Vec<(u64, u64)> {
        runs.iter()
            .map(|r| (r.range.start(), r.range.end()))
            .collect()
    }

    /// The runs cover `start..=end` exactly once: contiguous, no overlap, no gap.
    fn assert_tiles(runs: &[ModelRun], start: u64, end: u64) {
        let mut next = start;
        for r in runs {
            assert_eq!(
                r.range.start(),
                next,
                "gap or overlap at {}: {:?}",
                next,
                ranges(runs)
            );
            next = r.range.end() + 1;
        }
        assert_eq!(next, end + 1, "{:?}", ranges(runs));
    }

    /// A `queued` run whose message is gone (acked by a consumer without running it, as a
    /// requeue on a dead channel loses it) is republished once it is older than the reconcile
    /// age, and marked so; a run queued recently is left alone.
    #[tokio::test(start_paused = true)]
    async fn the_reconciler_republishes_runs_stranded_in_queued() {
        let (deps, _source) = setup(100);
        let queue = Arc::new(MemoryRunQueue::new());
        let deps = EngineDeps {
            queue: queue.clone(),
            ..deps
        };
        let created = submit_backfill(
            &deps,
            BackfillRequest::new("block_stats", chain(), BlockRange::new(0, 9).unwrap(), 10),
        )
        .await
        .unwrap();
        let run = &created.runs[0];
        let enqueuer = crate::engine::Enqueuer::new(deps.clone(), Default::default());
        assert_eq!(enqueuer.pass().await.unwrap(), 1);
        // The message is lost.
        let mut consumer = queue.consume(&run.queue, 1).await.unwrap();
        consumer.next().await.unwrap().unwrap().ack().await.unwrap();
        assert_eq!(queue.ready_len(&run.queue), 0);
        let queued = deps.store.get(run.id).await.unwrap();

        let scheduler = Scheduler::new(
            deps.clone(),
            SchedulerConfig {
                owner: "s1".into(),
                reconcile_after: Duration::from_secs(3600),
                ..Default::default()
            },
        );
        assert_eq!(
            scheduler.tick().await.unwrap().republished,
            0,
            "queued just now"
        );
        // Time is paused: the run's queue time passes the reconcile age at once.
        tokio::time::advance(Duration::from_secs(3601)).await;
        let report = scheduler.tick().await.unwrap();
        assert_eq!(report.republished, 1);
        assert_eq!(queue.ready_len(&run.queue), 1, "its message is back");
        let after = deps.store.get(run.id).await.unwrap();
        assert_eq!(
            (after.state, after.attempt, after.republished),
            (RunState::Queued, 1, 1)
        );
        assert!(
            after.queued_at > queued.queued_at,
            "its queue time restarts"
        );
        // Not again before another reconcile age has passed.
        assert_eq!(scheduler.tick().await.unwrap().republished, 0);
        let d = consumer.next().await.unwrap().unwrap();
        assert_eq!((d.message.run_id, d.message.attempt), (run.id, 1));
    }

    /// Blocks `from..=to` of another branch: the same numbers as `blocks`, other hashes, the
    /// first one's parent still on the main chain (it forks after `from - 1`).
    fn branch(from: u64, to: u64) -> Vec<crate::data::Block> {
        let fork = |mut h: alloy_primitives::B256| {
            h.0[0] = 0xF0;
            h
        };
        crate::models::tests::blocks(from, to)
            .into_iter()
            .map(|mut b| {
                b.hash = fork(b.hash);
                if b.number > from {
                    b.parent_hash = fork(b.parent_hash);
                }
                b
            })
            .collect()
    }

    fn in_state(runs: &[ModelRun], state: RunState) -> Vec<(u64, u64)> {
        ranges(
            &runs
                .iter()
                .filter(|r| r.state == state)
                .cloned()
                .collect::<Vec<_>>(),
        )
    }

    /// After a reorganisation, the runs whose blocks were replaced are superseded (whatever
    /// their state, succeeded included), the cursor walks back to the newest run end the node
    /// still has, and the new branch is scheduled: the live runs tile the chain once.
    #[tokio::test]
    async fn a_reorg_supersedes_the_replaced_runs_and_schedules_the_new_branch() {
        let (deps, source) = setup(20);
        let s = scheduler(&deps, "s1", vec![sub(Some(0), 0, 5)]);
        assert_eq!(s.tick().await.unwrap().created, 5, "0-4 5-9 10-14 15-19 20");
        // One of the runs to be replaced has already succeeded.
        let runs = all_runs(&deps).await;
        let done = runs.iter().find(|r| r.range.start() == 15).unwrap();
        for event in [
            RunEvent::Enqueue,
            RunEvent::Start {
                owner: "w".into(),
                lease_until: deps.clock.now() + chrono::Duration::seconds(60),
            },
            RunEvent::Succeed {
                owner: "w".into(),
                blocks_done: 5,
                records_written: 5,
                notes: Default::default(),
            },
        ] {
            let r = deps.store.get(done.id).await.unwrap();
            deps.store
                .transition(r.id, r.state, r.attempt, event)
                .await
                .unwrap();
        }

        // Blocks 17.. are replaced by another branch, one block longer.
        source.replace_from(17, branch(17, 21));
        let report = s.tick().await.unwrap();
        assert_eq!(report.superseded, 2, "15-19 and 20: {report:?}");
        assert_eq!(report.created, 2, "15-19 20-21 on the new branch");
        let runs = all_runs(&deps).await;
        assert_eq!(
            in_state(&runs, RunState::Superseded),
            vec![(15, 19), (20, 20)]
        );
        let superseded = runs.iter().find(|r| r.id == done.id).unwrap();
        assert_eq!(superseded.state, RunState::Superseded);
        assert!(
            superseded
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("blocks after 14")),
            "{:?}",
            superseded.last_error
        );
        let live: Vec<ModelRun> = runs
            .into_iter()
            .filter(|r| r.state != RunState::Superseded)
            .collect();
        assert_tiles(&live, 0, 21);
        assert_eq!(
            deps.store
                .cursor(CursorKey::new("block_stats", &chain()))
                .await
                .unwrap(),
            Some(21)
        );
        // The records now follow the new branch: a second tick finds nothing to do.
        let report = s.tick().await.unwrap();
        assert_eq!((report.created, report.superseded), (0, 0));
    }

    /// A reorganisation that replaces every block the subscription scheduled walks back to the
    /// block it started after.
    #[tokio::test]
    async fn a_reorg_of_every_scheduled_block_walks_back_to_the_start() {
        let (deps, source) = setup(20);
        let s = scheduler(&deps, "s1", vec![sub(Some(10), 0, 5)]);
        assert_eq!(s.tick().await.unwrap().created, 3, "10-14 15-19 20");
        source.replace_from(10, branch(10, 22));
        let report = s.tick().await.unwrap();
        assert_eq!((report.superseded, report.created), (3, 3));
        let runs = all_runs(&deps).await;
        assert_eq!(
            in_state(&runs, RunState::Superseded),
            vec![(10, 14), (15, 19), (20, 20)]
        );
        let live: Vec<ModelRun> = runs
            .into_iter()
            .filter(|r| r.state != RunState::Superseded)
            .collect();
        assert_tiles(&live, 10, 22);
    }

    /// A reorganisation deeper than the limit stops the subscription with an error naming the
    /// limit, and supersedes nothing; the scheduler's other work goes on.
    #[tokio::test]
    async fn a_reorg_deeper_than_the_limit_stops_the_subscription() {
        let (deps, source) = setup(20);
        let shallow = RealtimeSubscription {
            max_reorg_depth: 3,
            ..sub(Some(0), 0, 5)
        };
        let s = scheduler(&deps, "s1", vec![shallow.clone()]);
        assert_eq!(s.tick().await.unwrap().created, 5);
        source.replace_from(8, branch(8, 30));
        let report = s.tick().await.unwrap();
        assert!(report.leader);
        assert_eq!((report.created, report.superseded), (0, 0));
        let error = s.stopped(&shallow).expect("stopped");
        assert!(error.contains("deeper than the limit"), "{error}");
        assert!(error.contains("within 3 blocks"), "{error}");
        // It stays stopped while the chain grows, and no run was touched.
        assert_eq!(s.tick().await.unwrap().created, 0);
        let runs = all_runs(&deps).await;
        assert_eq!(in_state(&runs, RunState::Superseded), vec![]);
        assert_tiles(&runs, 0, 20);
        // A scheduler started afresh (e.g. after a restart) finds the same and stops too.
        let again = scheduler(&deps, "s1", vec![shallow.clone()]);
        assert_eq!(again.tick().await.unwrap().created, 0);
        assert!(again.stopped(&shallow).is_some());
    }

    /// A node that has not reached the scheduled blocks (a lagging node behind a load balancer)
    /// is not a reorganisation: nothing is superseded or created until it catches up.
    #[tokio::test]
    async fn a_lagging_node_is_waited_for_not_taken_for_a_reorg() {
        let (deps, source) = setup(20);
        let s = scheduler(&deps, "s1", vec![sub(Some(0), 0, 5)]);
        assert_eq!(s.tick().await.unwrap().created, 5);
        source.replace_from(18, Vec::new());
        let report = s.tick().await.unwrap();
        assert_eq!((report.created, report.superseded), (0, 0));
        source.replace_from(18, crate::models::tests::blocks(18, 25));
        let report = s.tick().await.unwrap();
        assert_eq!((report.created, report.superseded), (1, 0), "21-25");
        assert_tiles(&all_runs(&deps).await, 0, 25);
    }

    /// A subscription's queue override sends its runs to that queue instead of the routed one.
    #[tokio::test]
    async fn a_subscription_queue_override_routes_its_runs() {
        let (deps, _source) = setup(24);
        let overridden = RealtimeSubscription {
            queue: Some("ethereum_realtime_hot".into()),
            ..sub(Some(0), 0, 10)
        };
        let s = scheduler(&deps, "s1", vec![overridden]);
        assert_eq!(s.tick().await.unwrap().created, 3);
        let runs = all_runs(&deps).await;
        assert!(
            runs.iter().all(|r| r.queue == "ethereum_realtime_hot"),
            "{:?}",
            runs.iter().map(|r| &r.queue).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn two_schedulers_sharing_the_store_lock_create_each_range_once() {
        let (deps, source) = setup(24);
        let subs = vec![sub(Some(0), 0, 10)];
        let a = scheduler(&deps, "a", subs.clone());
        let b = scheduler(&deps, "b", subs.clone());

        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(ra.leader ^ rb.leader, "exactly one leads: {ra:?} {rb:?}");
        assert_eq!(ra.created + rb.created, 3);
        let (leader, follower) = if ra.leader { (&a, &b) } else { (&b, &a) };

        // The follower does nothing while the leader's lock lasts, even with new blocks.
        grow(&source, 40).await;
        assert_eq!(
            follower.tick().await.unwrap(),
            TickReport {
                leader: false,
                created: 0,
                expired: 0,
                republished: 0,
                superseded: 0,
            }
        );
        assert_eq!(all_runs(&deps).await.len(), 3);
        let r = leader.tick().await.unwrap();
        assert_eq!((r.leader, r.created), (true, 2));

        let runs = all_runs(&deps).await;
        assert_eq!(
            ranges(&runs),
            [(0, 9), (10, 19), (20, 24), (25, 34), (35, 40)]
        );
        assert_tiles(&runs, 0, 40);
        assert_eq!(
            deps.store
                .cursor(CursorKey::new("block_stats", &chain()))
                .await
                .unwrap(),
            Some(40)
        );
        for r in &runs {
            assert_eq!(r.mode, RunMode::Realtime);
            assert_eq!(r.state, RunState::Pending);
            assert_eq!(r.max_attempts, 3);
            assert_eq!(
                r.queue,
                queue_name(&chain(), RunMode::Realtime, ModelKind::Nonreads)
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_passes_on_when_the_leader_stops_renewing() {
        let (deps, source) = setup(9);
        let subs = vec![sub(Some(0), 0, 10)];
        let short = |owner: &str| {
            Scheduler::new(
                deps.clone(),
                SchedulerConfig {
                    owner: owner.into(),
                    realtime: subs.clone(),
                    leadership: Duration::from_millis(300),
                    ..Default::default()
                },
            )
        };
        let (a, b) = (short("a"), short("b"));
        assert_eq!(a.tick().await.unwrap().created, 1);
        assert!(!b.tick().await.unwrap().leader);
        grow(&source, 19).await;
        tokio::time::advance(Duration::from_millis(299)).await;
        assert!(!b.tick().await.unwrap().leader, "`a`'s lock still lasts");
        tokio::time::advance(Duration::from_millis(2)).await;
        // `a` is gone; `b` takes over from the cursor `a` left.
        let r = b.tick().await.unwrap();
        assert_eq!((r.leader, r.created), (true, 1));
        assert!(!a.tick().await.unwrap().leader, "`b` holds it now");
        let runs = all_runs(&deps).await;
        assert_eq!(ranges(&runs), [(0, 9), (10, 19)]);
    }

    /// Even two schedulers that both believe they lead (a lock lost to a pause) create no
    /// duplicate range: both read the same cursor, and its compare-and-set lets one win.
    /// A replaced run that keeps moving while the scheduler supersedes it (every try
    /// conflicts) fails the tick before the cursor moves back: nothing of the new branch is
    /// scheduled beside a live run of the old one. Once it holds still, the next tick finishes
    /// the reorganisation. (The tick used to go on, leaving that run live.)
    #[tokio::test]
    async fn a_reorg_waits_for_a_run_that_keeps_moving_before_it_moves_the_cursor() {
        let (mut deps, source) = setup(20);
        let busy = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let moving = busy.clone();
        deps.store = Arc::new(crate::memory::HookedStore {
            on_transition: Some(Box::new(move |stored, _, _, event| {
                let keeps_moving = matches!(event, RunEvent::Supersede { .. })
                    && stored.range.start() == 15
                    && moving.load(std::sync::atomic::Ordering::SeqCst);
                keeps_moving.then(|| {
                    Err(StoreError::Conflict {
                        message: "the run moved on".into(),
                        current: Some(Box::new(stored.clone())),
                    })
                })
            })),
            ..Default::default()
        });
        let s = scheduler(&deps, "s1", vec![sub(Some(0), 0, 5)]);
        assert_eq!(s.tick().await.unwrap().created, 5, "0-4 5-9 10-14 15-19 20");
        source.replace_from(17, branch(17, 21));
        busy.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut report = TickReport::default();
        let sub = sub(Some(0), 0, 5);
        assert!(
            matches!(
                s.schedule_realtime(&sub, &mut report).await,
                Err(EngineError::Store(StoreError::Conflict { .. }))
            ),
            "{report:?}"
        );
        let runs = all_runs(&deps).await;
        assert_eq!(runs.len(), 5, "nothing of the new branch is scheduled yet");
        assert!(
            runs.iter()
                .any(|r| r.range.start() == 15 && r.state != RunState::Superseded)
        );
        assert_eq!(
            deps.store
                .cursor(CursorKey::new("block_stats", &chain()))
                .await
                .unwrap(),
            Some(20),
            "the cursor has not moved back"
        );
        busy.store(false, std::sync::atomic::Ordering::SeqCst);
        let report = s.tick().await.unwrap();
        assert_eq!(
            report.created, 2,
            "15-19 20-21 on the new branch: {report:?}"
        );
        let runs = all_runs(&deps).await;
        assert_eq!(
            in_state(&runs, RunState::Superseded),
            vec![(15, 19), (20, 20)]
        );
        let live: Vec<ModelRun> = runs
            .into_iter()
            .filter(|r| r.state != RunState::Superseded)
            .collect();
        assert_tiles(&live, 0, 21);
    }

    #[tokio::test]
    async fn racing_schedulers_are_kept_apart_by_the_cursor() {
        let (mut deps, source) = setup(24);
        // Each cursor read yields, so the two schedulers' reads interleave.
        deps.store = Arc::new(crate::memory::HookedStore {
            yield_after_cursor: true,
            ..Default::default()
        });
        let s = sub(Some(0), 0, 10);
        let a = scheduler(&deps, "a", vec![s.clone()]);
        let b = scheduler(&deps, "b", vec![s.clone()]);
        for head in [24, 30, 31, 55] {
            grow(&source, head).await;
            let (mut ra, mut rb) = (TickReport::default(), TickReport::default());
            let (x, y) = tokio::join!(
                a.schedule_realtime(&s, &mut ra),
                b.schedule_realtime(&s, &mut rb)
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            assert!(
                (x == 0) != (y == 0),
                "the first to advance the cursor wins, the other creates nothing: {x} {y}"
            );
        }
        let runs = all_runs(&deps).await;
        assert_tiles(&runs, 0, 55);
        assert!(runs.iter().all(|r| r.range.len() <= 10));
    }

    #[tokio::test]
    async fn realtime_stays_confirmations_behind_the_head() {
        let (deps, source) = setup(100);
        let s = scheduler(&deps, "a", vec![sub(None, 6, 10)]);
        // No cursor and no start: begin at the confirmed head, 100 - 6.
        assert_eq!(s.tick().await.unwrap().created, 1);
        assert_eq!(ranges(&all_runs(&deps).await), [(94, 94)]);
        // Nothing new is confirmed until the head moves.
        assert_eq!(s.tick().await.unwrap().created, 0);
        grow(&source, 103).await;
        assert_eq!(s.tick().await.unwrap().created, 1);
        assert_eq!(ranges(&all_runs(&deps).await), [(94, 94), (95, 97)]);
        assert_eq!(
            deps.store
                .cursor(CursorKey::new("block_stats", &chain()))
                .await
                .unwrap(),
            Some(97)
        );

        // A chain shorter than the confirmations schedules nothing.
        let (deps, _) = setup(4);
        let s = scheduler(&deps, "a", vec![sub(Some(0), 6, 10)]);
        assert_eq!(s.tick().await.unwrap().created, 0);
        assert!(all_runs(&deps).await.is_empty());
        assert_eq!(
            deps.store
                .cursor(CursorKey::new("block_stats", &chain()))
                .await
                .unwrap(),
            None
        );

        // A start beyond the confirmed head waits for it.
        let (deps, source) = setup(20);
        let s = scheduler(&deps, "a", vec![sub(Some(18), 3, 10)]);
        assert_eq!(s.tick().await.unwrap().created, 0);
        grow(&source, 22).await;
        assert_eq!(s.tick().await.unwrap().created, 1);
        assert_eq!(ranges(&all_runs(&deps).await), [(18, 19)]);
    }

    #[tokio::test]
    async fn catching_up_is_limited_per_tick_and_per_run() {
        let (deps, _) = setup(999);
        let s = Scheduler::new(
            deps.clone(),
            SchedulerConfig {
                owner: "a".into(),
                realtime: vec![sub(Some(0), 0, 10)],
                max_runs_per_tick: 5,
                ..Default::default()
            },
        );
        assert_eq!(s.tick().await.unwrap().created, 5);
        let runs = all_runs(&deps).await;
        assert_tiles(&runs, 0, 49);
        assert!(runs.iter().all(|r| r.range.len() == 10));
        assert_eq!(
            deps.store
                .cursor(CursorKey::new("block_stats", &chain()))
                .await
                .unwrap(),
            Some(49)
        );
        assert_eq!(s.tick().await.unwrap().created, 5);
        assert_tiles(&all_runs(&deps).await, 0, 99);

        // max_blocks_per_run 0 is taken as 1.
        let (deps, _) = setup(3);
        let s = scheduler(&deps, "a", vec![sub(Some(0), 0, 0)]);
        assert_eq!(s.tick().await.unwrap().created, 4);
        assert_eq!(
            ranges(&all_runs(&deps).await),
            [(0, 0), (1, 1), (2, 2), (3, 3)]
        );
    }

    #[tokio::test]
    async fn a_failing_subscription_does_not_stop_the_others() {
        let (deps, _) = setup(9);
        let s = scheduler(
            &deps,
            "a",
            vec![
                RealtimeSubscription::new("no_such_model", chain()),
                RealtimeSubscription::new("block_stats", Chain::new("polygon").unwrap()),
                sub(Some(0), 0, 100),
            ],
        );
        let r = s.tick().await.unwrap();
        assert_eq!((r.leader, r.created), (true, 1));
        assert_eq!(ranges(&all_runs(&deps).await), [(0, 9)]);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_leases_are_sent_back_for_retry() {
        let (deps, _) = setup(9);
        let created = submit_backfill(&deps, backfill(0, 19, 10)).await.unwrap();
        let now = deps.clock.now();
        for (i, r) in created.runs.iter().enumerate() {
            deps.store
                .transition(r.id, RunState::Pending, 1, RunEvent::Enqueue)
                .await
                .unwrap();
            let until = now + chrono::Duration::seconds(if i == 0 { 10 } else { 60 });
            deps.store.claim(r.id, 1, "w", until).await.unwrap();
        }
        let s = scheduler(&deps, "a", vec![]);
        assert_eq!(s.tick().await.unwrap().expired, 0, "every lease still runs");
        // The first run's worker vanished: its lease ends without a heartbeat; the second's
        // still runs.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(s.tick().await.unwrap().expired, 1);
        let gone = deps.store.get(created.runs[0].id).await.unwrap();
        assert_eq!(gone.state, RunState::Expired);
        assert!(gone.next_attempt_at.is_some(), "it will be retried");
        assert_eq!(gone.lease_owner, None);
        let alive = deps.store.get(created.runs[1].id).await.unwrap();
        assert_eq!(alive.state, RunState::Running);
        // A follower expires nothing.
        let b = scheduler(&deps, "b", vec![]);
        assert_eq!(b.tick().await.unwrap(), TickReport::default());
    }

    fn backfill(start: u64, end: u64, chunk_size: u64) -> BackfillRequest {
        BackfillRequest {
            max_attempts: 2,
            ..BackfillRequest::new(
                "block_stats",
                chain(),
                BlockRange::new(start, end).unwrap(),
                chunk_size,
            )
        }
    }

    #[tokio::test]
    async fn backfills_are_cut_into_chunks() {
        let (deps, _) = setup(9);
        let created = submit_backfill(&deps, backfill(5, 29, 10)).await.unwrap();
        assert!(created.created);
        assert_eq!(ranges(&created.runs), [(5, 14), (15, 24), (25, 29)]);
        for r in &created.runs {
            assert_eq!(
                (r.state, r.attempt, r.max_attempts),
                (RunState::Pending, 1, 2)
            );
            assert_eq!(r.mode, RunMode::Backfill);
            assert_eq!(r.model_version, "1.0.0");
            assert_eq!(
                r.queue,
                queue_name(&chain(), RunMode::Backfill, ModelKind::Nonreads)
            );
        }
        // One block per run, and a chunk larger than the range.
        let one = submit_backfill(&deps, backfill(0, 2, 1)).await.unwrap();
        assert_eq!(ranges(&one.runs), [(0, 0), (1, 1), (2, 2)]);
        let whole = submit_backfill(&deps, backfill(0, 2, 1000)).await.unwrap();
        assert_eq!(ranges(&whole.runs), [(0, 2)]);

        // Adhoc runs spread over the pools unless a pool is named.
        let routing = Routing::new(2).unwrap();
        let deps = EngineDeps { routing, ..deps };
        let adhoc = BackfillRequest {
            mode: RunMode::Adhoc,
            ..backfill(0, 29, 10)
        };
        let spread = submit_backfill(&deps, adhoc.clone()).await.unwrap();
        let queues: Vec<_> = spread.runs.iter().map(|r| r.queue.as_str()).collect();
        assert_eq!(
            queues,
            [
                crate::routing::adhoc_queue_name(1),
                crate::routing::adhoc_queue_name(2),
                crate::routing::adhoc_queue_name(1)
            ]
        );
        let pinned = BackfillRequest {
            adhoc_queue: Some(2),
            ..adhoc.clone()
        };
        let pinned = submit_backfill(&deps, pinned).await.unwrap();
        assert!(
            pinned
                .runs
                .iter()
                .all(|r| r.queue == crate::routing::adhoc_queue_name(2))
        );

        // The same idempotency key returns the same runs.
        let keyed = BackfillRequest {
            idempotency_key: Some("k".into()),
            ..backfill(0, 19, 10)
        };
        let first = submit_backfill(&deps, keyed.clone()).await.unwrap();
        let again = submit_backfill(&deps, keyed).await.unwrap();
        assert!(first.created && !again.created);
        assert_eq!(first.runs, again.runs);
    }

    #[tokio::test]
    async fn bad_backfills_are_refused_before_any_run_is_created() {
        let (deps, _) = setup(9);
        let bad = [
            (
                BackfillRequest {
                    mode: RunMode::Realtime,
                    ..backfill(0, 9, 5)
                },
                "not `realtime`",
            ),
            (backfill(0, 9, 0), "chunk_size must be at least 1"),
            (
                BackfillRequest {
                    max_attempts: 0,
                    ..backfill(0, 9, 5)
                },
                "max_attempts must be at least 1",
            ),
            (
                backfill(0, DEFAULT_MAX_RUNS_PER_BACKFILL, 1),
                "more than the 100000 allowed per backfill",
            ),
            (
                BackfillRequest {
                    model: "nope".into(),
                    ..backfill(0, 9, 5)
                },
                "unknown model",
            ),
            (
                BackfillRequest {
                    chain: Chain::new("polygon").unwrap(),
                    ..backfill(0, 9, 5)
                },
                "polygon",
            ),
        ];
        for (req, want) in bad {
            let err = submit_backfill(&deps, req.clone()).await.unwrap_err();
            assert!(err.to_string().contains(want), "{req:?}: {err}");
        }
        assert!(all_runs(&deps).await.is_empty());
        // Exactly the limit is fine.
        let ok = submit_backfill(&deps, backfill(0, DEFAULT_MAX_RUNS_PER_BACKFILL - 1, 100)).await;
        assert_eq!(ok.unwrap().runs.len(), 1000);
    }
}
