//! The worker: consumes queues, claims runs, executes models, delivers records.
//!
//! For each delivery: claim the run (a lease in the store), load its blocks (in batches of
//! [`WorkerConfig::batch_blocks`]), run the model
//! (a panic is caught and fails the attempt), send the records to `<env>-<chain>-sink`, mark the
//! run `succeeded`, then ack. The lease is renewed by heartbeats while the run executes; if the
//! run is cancelled or its lease is taken meanwhile, the work is abandoned (the model's task is
//! aborted). Heartbeats carry the run's progress: the blocks loaded and handed to the model.
//! With a [`ProgressBoard`] ([`WorkerConfig::progress_board`]) the progress is also published
//! there as it grows (at most every [`PROGRESS_PUBLISH_EVERY`] per run, at every heartbeat to
//! keep the entry alive, and once at the end), kept for a lease, so the API and the CLI of
//! other processes show it live; a publish that fails is logged now and then, never fails the
//! run.
//!
//! The model and the sending of its records (encoding included) run on a runtime of their own
//! ("the model pool"), so CPU-heavy work never starves the heartbeats, and the whole execution
//! runs in a task of its own, so a panic anywhere in it (source, model, sink) fails the attempt
//! with the panic's message.
//!
//! On shutdown, runs still executing after `shutdown_grace` are handed back: the run goes back
//! to `queued` on the same attempt ([`RunEvent::Release`], no attempt spent) and its message is
//! requeued, so another worker picks it up.
//!
//! A message whose run is no longer claimable (done, cancelled, a stale attempt, held by
//! another worker) is acked and dropped; one whose run is not claimable *yet* (the enqueuer has
//! published but not yet marked it) is held while the claim is retried with backoff (up to
//! [`WorkerConfig::unmarked_wait`]), never spun through the broker, whose quorum queues count
//! every requeue toward their delivery limit. A failed attempt is retried through the outbox
//! with backoff; the last one's message is rejected to the dead-letter queue.
//!
//! A failed attempt and a dead-lettered run are logged with `report = true` and the run's
//! fields, so an error-reporting layer (the binary's Sentry feature) can send exactly those.
//!
//! Models that declare a [`RecordSchema`](crate::model::RecordSchema) have it declared to the
//! sink when the worker starts, and every payload of theirs is checked against it before the
//! run's records are sent: a mismatch fails the attempt like a model error, and nothing of the
//! run is sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{OnceCell, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, warn};

use super::group_commit::GroupCommit;
use super::settlement::{
    ClaimFound, ClaimStep, Ended, Recorded, Settle, after_claim, after_outcome, claim_lost,
};
use super::{CancellationToken, EngineDeps, EngineError, RetryPolicy, instruments};
use crate::model::{ModelContext, RegisteredModel};
use crate::ports::{
    BlockSource, Delivery, ProgressBoard, RunMessage, RunOutput, RunProgress, RunStoreExt,
    SourceError, StoreError, Transition, check_whole_range,
};
use crate::routing::topic_name;
use crate::run::{ModelRun, RunEvent, RunState};

/// Calls the tracing macro `$mac` with `$head`, the fields that name a run (id, model, version,
/// chain, range, attempt), then `$tail`: the run span's fields, which every line of a run's
/// execution carries, stated once for the span and for the Sentry reports, which need them on
/// the event itself.
macro_rules! with_run_fields {
    ($($mac:ident)::+, [$($head:tt)*], $run:expr $(, $($tail:tt)+)?) => {
        $($mac)::+!(
            $($head)*,
            run = %$run.id,
            model = %$run.model,
            version = %$run.model_version,
            chain = %$run.chain,
            range = %$run.range,
            attempt = $run.attempt
            $(, $($tail)+)?
        )
    };
}

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Identity, recorded as the lease owner.
    pub id: String,
    /// Queues to consume.
    pub queues: Vec<String>,
    /// Runs executed at once (across all queues).
    pub concurrency: usize,
    /// Unsettled deliveries per queue.
    pub prefetch: u16,
    /// Lease length; renewed every `heartbeat`.
    pub lease: Duration,
    /// Heartbeat interval; keep it well under `lease`.
    pub heartbeat: Duration,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// Environment prefix of sink topics (`prod` in `prod-ethereum-sink`).
    pub env: String,
    /// On shutdown, how long in-flight runs may take to finish before they are handed back.
    pub shutdown_grace: Duration,
    /// How long a delivery whose run is published but not yet marked `queued` (the enqueuer
    /// marks right after the broker confirms) is held while the claim is retried, before its
    /// message is requeued.
    pub unmarked_wait: Duration,
    /// How long a run this worker cannot serve (no block source for its chain, no such model)
    /// waits before its message goes back to the queue for another worker.
    pub pass_on_pause: Duration,
    /// Blocks loaded and handed to the model at a time: a run of more blocks is fed to the
    /// model in several calls, so its memory is bounded by one batch of blocks (and the run's
    /// records).
    pub batch_blocks: u64,
    /// Where the live progress of this worker's running runs is published, for the API and
    /// the CLI of every process (`None`: only the heartbeats carry it, to the store). A run's
    /// blocks done are published when it starts, as they grow (at most every 250 ms), at every
    /// `heartbeat` (so the entry lives while a long batch runs) and once when the attempt
    /// ends, each kept for `lease`: a worker that dies leaves nothing behind after its lease.
    /// A failed publish is logged at warn at most once a minute and never fails the run.
    pub progress_board: Option<Arc<dyn ProgressBoard>>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: format!("worker-{}", uuid::Uuid::now_v7().simple()),
            queues: Vec::new(),
            concurrency: 4,
            prefetch: 8,
            lease: Duration::from_secs(60),
            heartbeat: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            env: "dev".into(),
            shutdown_grace: Duration::from_secs(30),
            unmarked_wait: Duration::from_secs(30),
            pass_on_pause: Duration::from_millis(500),
            batch_blocks: 1000,
            progress_board: None,
        }
    }
}

/// The least time between two publishes of one run's progress to the
/// [`ProgressBoard`]: a run of many small batches does not flood the board.
const PROGRESS_PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// The longest an attempt's last progress publish may hold up recording its outcome.
const PROGRESS_FINAL_WAIT: Duration = Duration::from_secs(1);

/// The least time between two warnings about failed progress publishes, per worker: a board
/// that is down is said once in a while, not once per run and batch.
const PROGRESS_WARN_EVERY: Duration = Duration::from_secs(60);

/// The most run transitions (claims, outcomes) a worker writes to the store in one group.
const GROUP_COMMIT_MAX: usize = 256;

/// Counters of one worker, readable while it runs.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Runs that succeeded.
    pub runs_succeeded: AtomicU64,
    /// Attempts that failed.
    pub runs_failed: AtomicU64,
    /// Blocks of succeeded runs.
    pub blocks: AtomicU64,
    /// Records delivered by succeeded runs.
    pub records: AtomicU64,
    /// Messages dropped because their run was no longer claimable.
    pub dropped: AtomicU64,
    /// Notified (one stored permit) each time a run this worker executed is recorded
    /// succeeded, so a caller waiting for runs to finish (`all`) looks at once instead of at
    /// its next poll.
    pub succeeded: tokio::sync::Notify,
}

enum Outcome {
    /// Records written, and what the model counted.
    Succeeded(u64, crate::run::RunNotes),
    Failed(String),
    LeaseLost(String),
    /// The store shows the run `queued` again on the attempt we claimed: our claim was lost (a
    /// store may commit claims asynchronously, and a crash can undo the last ones).
    ClaimLost,
    HandedBack,
}

/// The worker loop.
#[derive(Debug, Clone)]
pub struct Worker {
    deps: EngineDeps,
    config: Arc<WorkerConfig>,
    /// Claims and outcomes of the runs executing at once, written to the store in groups.
    writes: Arc<GroupCommit>,
    stats: Arc<WorkerStats>,
    /// Set once every model's record schema was declared to the sink.
    schemas_declared: Arc<OnceCell<()>>,
    /// When a failed progress publish was last logged at warn, and how many failed since.
    progress_warned: Arc<std::sync::Mutex<(Option<tokio::time::Instant>, u64)>>,
}

impl Worker {
    /// A worker over `deps`.
    pub fn new(deps: EngineDeps, config: WorkerConfig) -> Self {
        Self {
            writes: Arc::new(GroupCommit::new(deps.store.clone(), GROUP_COMMIT_MAX)),
            deps,
            config: Arc::new(config),
            stats: Arc::default(),
            schemas_declared: Arc::default(),
            progress_warned: Arc::default(),
        }
    }

    /// Declares the models' record schemas to the sink once per worker
    /// ([`EngineDeps::declare_schemas`]); a failed declaration is tried again on the next call.
    async fn declare_schemas(&self) -> Result<(), EngineError> {
        self.schemas_declared
            .get_or_try_init(|| async {
                let n = self.deps.declare_schemas().await?;
                debug!(worker = %self.config.id, schemas = n, "record schemas declared to the sink");
                Ok::<_, EngineError>(())
            })
            .await
            .map(|_| ())
    }

    /// Live counters.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Counts into `stats` instead of its own (a [`Runner`](super::Runner) keeps one set
    /// across the workers it starts).
    pub(crate) fn with_stats(mut self, stats: Arc<WorkerStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Declares the models' record schemas to the sink (an invalid schema or a refusal stops
    /// the worker before it consumes anything), consumes the configured queues until
    /// `shutdown` is cancelled, then stops consuming, gives in-flight runs `shutdown_grace` to
    /// finish (handing back the rest), and flushes the sink.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), EngineError> {
        if self.config.queues.is_empty() {
            return Err(EngineError::InvalidInput(
                "a worker needs at least one queue to consume".into(),
            ));
        }
        self.declare_schemas().await?;
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let hand_back = CancellationToken::new();
        let mut loops = JoinSet::new();
        for queue in &self.config.queues {
            let consumer = self.deps.queue.consume(queue, self.config.prefetch).await?;
            let (w, permits, shutdown, hand_back) = (
                self.clone(),
                permits.clone(),
                shutdown.clone(),
                hand_back.clone(),
            );
            let queue = queue.clone();
            loops.spawn(async move {
                w.consume_loop(queue, consumer, permits, shutdown, hand_back)
                    .await
            });
        }
        info!(worker = %self.config.id, queues = ?self.config.queues, "worker started");
        shutdown.cancelled().await;
        let grace = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                joined = loops.join_next() => if joined.is_none() { break },
                _ = &mut grace, if !hand_back.is_cancelled() => {
                    warn!(worker = %self.config.id, "shutdown grace elapsed; handing back in-flight runs");
                    hand_back.cancel();
                }
            }
        }
        if let Err(e) = self.deps.sink.flush().await {
            warn!(error = %e, "sink flush at shutdown failed");
        }
        info!(worker = %self.config.id, "worker stopped");
        Ok(())
    }

    async fn consume_loop(
        self,
        queue: String,
        mut consumer: Box<dyn crate::ports::Consumer>,
        permits: Arc<Semaphore>,
        shutdown: CancellationToken,
        hand_back: CancellationToken,
    ) {
        let mut inflight = JoinSet::new();
        let mut failures = 0u32;
        loop {
            // Take a delivery first, then wait for a slot: waiting for a slot first would let
            // idle queues hold every slot while a busy one starves.
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                d = consumer.next() => d,
            };
            match next {
                Ok(Some(delivery)) => {
                    failures = 0;
                    let permit = tokio::select! {
                        // Unsettled: the broker gives it to another consumer.
                        _ = shutdown.cancelled() => break,
                        p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                    };
                    let (w, hb) = (self.clone(), hand_back.clone());
                    inflight.spawn(async move {
                        w.handle(delivery, hb).await;
                        drop(permit);
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    failures += 1;
                    warn!(%queue, error = %e, "consume failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100 * u64::from(failures.min(50)))) => {}
                    }
                }
            }
            // Reap finished runs so the set does not grow.
            while inflight.try_join_next().is_some() {}
        }
        // Stop deliveries but keep the channel open until every delivery in flight is settled:
        // dropping the consumer now would close its channel, the broker would hand the
        // in-flight messages to another worker (which finds the run still `running` here and
        // drops them), and a run handed back after the grace could not be requeued on the
        // closed channel: it would wait `queued` with no message.
        if let Err(e) = consumer.cancel().await {
            warn!(%queue, error = %e, "cancelling the consumer failed; in-flight messages may be redelivered early");
        }
        while inflight.join_next().await.is_some() {}
        drop(consumer);
    }

    /// Processes one delivery to the end: claim, execute, record the outcome, settle the
    /// message. `hand_back` abandons the run (shutdown).
    pub async fn handle(&self, delivery: Delivery, hand_back: CancellationToken) {
        let msg = delivery.message;
        // The enqueuer marks a run `queued` just after publishing it (one store write away):
        // look again soon, then back off.
        let mut wait = Duration::from_millis(1);
        let waiting_since = tokio::time::Instant::now();
        let run = loop {
            let lease_until = self.deps.clock.now() + chrono_dur(self.config.lease);
            let claim = Transition {
                id: msg.run_id,
                expected: RunState::Queued,
                expected_attempt: msg.attempt,
                event: RunEvent::Start {
                    owner: self.config.id.clone(),
                    lease_until,
                },
            };
            let result = self.writes.submit(claim).await;
            let found = match &result {
                Ok(_) => ClaimFound::Claimed,
                Err(StoreError::Conflict {
                    current: Some(current),
                    ..
                }) if not_yet_claimable(&msg, current) => ClaimFound::NotYetMarked {
                    gave_up: waiting_since.elapsed() >= self.config.unmarked_wait,
                    shutting_down: hand_back.is_cancelled(),
                },
                Err(StoreError::Conflict { .. } | StoreError::Transition(_)) => {
                    ClaimFound::NoLongerClaimable
                }
                Err(StoreError::NotFound { .. }) => ClaimFound::UnknownRun,
                Err(_) => ClaimFound::StoreFailed,
            };
            match (after_claim(found), result) {
                (ClaimStep::Execute, Ok(run)) => break run,
                (ClaimStep::WaitAndRetry, _) => {
                    // Published but not yet marked `queued`: wait here, holding the delivery.
                    debug!(run = %msg.run_id, "run not yet marked queued; waiting");
                    tokio::select! {
                        _ = hand_back.cancelled() => {
                            let shutting_down = ClaimFound::NotYetMarked { gave_up: false, shutting_down: true };
                            if let ClaimStep::Settle(how) = after_claim(shutting_down) {
                                apply(delivery, how).await;
                                return;
                            }
                        }
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_millis(500));
                }
                (ClaimStep::Settle(how), result) => {
                    match (found, result) {
                        (ClaimFound::NotYetMarked { .. }, _) => {
                            warn!(run = %msg.run_id, waited_ms = waiting_since.elapsed().as_millis() as u64, "run not marked queued in time (or shutting down); requeueing its message");
                        }
                        (ClaimFound::NoLongerClaimable, _) => {
                            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                            debug!(run = %msg.run_id, attempt = msg.attempt, "run no longer claimable; dropping its message");
                        }
                        (ClaimFound::UnknownRun, _) => {
                            warn!(run = %msg.run_id, "message for an unknown run; dead-lettering it");
                        }
                        (_, Err(e)) => {
                            warn!(run = %msg.run_id, error = %e, "claim failed; requeueing");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        (_, Ok(_)) => {}
                    }
                    apply(delivery, how).await;
                    return;
                }
                (ClaimStep::Execute, Err(_)) => {
                    unreachable!("a claim is executed only when it succeeded")
                }
            }
        };

        // One span per run: every log line of its execution carries the run's fields.
        let span = with_run_fields!(tracing::info_span, ["run"], run);
        self.process(run, delivery, hand_back)
            .instrument(span)
            .await;
    }

    /// Executes a claimed run to its outcome, records it and settles the delivery.
    async fn process(&self, run: ModelRun, delivery: Delivery, hand_back: CancellationToken) {
        instruments::claimed(&run);
        let started = std::time::Instant::now();
        let (model, source) = match self.serving(&run) {
            Ok(found) => found,
            Err(reason) => {
                instruments::attempt_ended(&run, "passed_on", started.elapsed());
                self.pass_on(run, delivery, reason, hand_back).await;
                return;
            }
        };
        let outcome = tokio::select! {
            o = self.execute_with_heartbeat(&run, model, source) => o,
            _ = hand_back.cancelled() => Outcome::HandedBack,
        };
        // The run's outcome, written in a group with the other runs' claims and outcomes.
        let record = |event: RunEvent| {
            self.writes.submit(Transition {
                id: run.id,
                expected: RunState::Running,
                expected_attempt: run.attempt,
                event,
            })
        };
        match outcome {
            Outcome::Succeeded(records, notes) => {
                if !notes.is_empty() {
                    info!(?notes, "the model counted skipped input");
                }
                let event = RunEvent::Succeed {
                    owner: self.config.id.clone(),
                    blocks_done: run.range.len(),
                    records_written: records,
                    notes,
                };
                let result = record(event).await;
                let recorded = Recorded::of(&result, &run);
                match (recorded, result) {
                    (Recorded::Yes, _) => {
                        debug!(records, "run succeeded");
                        instruments::succeeded(&run, records);
                        instruments::attempt_ended(&run, "succeeded", started.elapsed());
                        self.stats.runs_succeeded.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .blocks
                            .fetch_add(run.range.len(), Ordering::Relaxed);
                        self.stats.records.fetch_add(records, Ordering::Relaxed);
                        self.stats.succeeded.notify_one();
                    }
                    (Recorded::ClaimLost, _) => {
                        warn!(run = %run.id, "records delivered but the claim on the run was lost (store crash?); requeueing its message so it runs again");
                    }
                    (_, result) => {
                        let e = result.err().map(|e| e.to_string()).unwrap_or_default();
                        warn!(run = %run.id, error = %e, "records delivered but the run could not be marked succeeded; it will run again")
                    }
                }
                apply(delivery, after_outcome(Ended::Succeeded, recorded)).await;
            }
            Outcome::Failed(error) => {
                instruments::failed(&run);
                instruments::attempt_ended(&run, "failed", started.elapsed());
                self.stats.runs_failed.fetch_add(1, Ordering::Relaxed);
                let retry_at = Some(
                    self.config
                        .retry
                        .retry_at(run.attempt, self.deps.clock.now()),
                );
                let last = run.attempt >= run.max_attempts;
                report(&run, Some(&error), "run attempt failed");
                let result = record(RunEvent::Fail {
                    owner: self.config.id.clone(),
                    error,
                    retry_at,
                })
                .await;
                let recorded = Recorded::of(&result, &run);
                let how = after_outcome(Ended::Failed { last_attempt: last }, recorded);
                if let Err(e) = result {
                    if recorded == Recorded::ClaimLost {
                        warn!(run = %run.id, "the claim on the run was lost (store crash?); requeueing its message");
                    } else {
                        warn!(run = %run.id, error = %e, "could not record the failure; the lease will expire and the run will be retried");
                    }
                }
                if how == Settle::Reject {
                    report(
                        &run,
                        None,
                        "run failed its last attempt; its message goes to the dead-letter queue",
                    );
                    instruments::dead_lettered(&run.queue);
                }
                apply(delivery, how).await;
            }
            Outcome::LeaseLost(reason) => {
                instruments::attempt_ended(&run, "abandoned", started.elapsed());
                info!(run = %run.id, %reason, "run abandoned");
                apply(delivery, after_outcome(Ended::LeaseLost, Recorded::Yes)).await;
            }
            Outcome::ClaimLost => {
                warn!(run = %run.id, "the claim on the run was lost (store crash?); requeueing its message");
                apply(delivery, after_outcome(Ended::ClaimLost, Recorded::Yes)).await;
            }
            Outcome::HandedBack => {
                instruments::attempt_ended(&run, "handed_back", started.elapsed());
                // Back to `queued` on the same attempt (no attempt spent), and the message back
                // to the queue for another worker.
                let event = RunEvent::Release {
                    owner: self.config.id.clone(),
                    reason: format!("worker {} shut down before finishing", self.config.id),
                };
                let result = record(event).await;
                let recorded = Recorded::of(&result, &run);
                match (recorded, result) {
                    (Recorded::Yes, _) => {
                        info!(run = %run.id, attempt = run.attempt, "run handed back at shutdown")
                    }
                    // Queued on our attempt already: our claim was undone.
                    (Recorded::ClaimLost, _) => {}
                    (Recorded::MovedOn, Err(e)) => {
                        info!(run = %run.id, error = %e, "run moved on before it was handed back; dropping its message")
                    }
                    (_, result) => {
                        let e = result.err().map(|e| e.to_string()).unwrap_or_default();
                        warn!(run = %run.id, error = %e, "could not hand back the run; its lease will expire")
                    }
                }
                apply(delivery, after_outcome(Ended::HandedBack, recorded)).await;
            }
        }
    }

    /// Whether this worker has the run's model (for its chain) and a block source for its
    /// chain. Workers of one fleet may differ (adhoc pools `backfill_N` are consumed by every
    /// worker, whatever chains it serves), so a run this worker cannot serve is not a failure
    /// of the run.
    /// Returns the model and the block source to execute it with.
    fn serving(&self, run: &ModelRun) -> Result<ModelAndSource, String> {
        let model = self
            .deps
            .models
            .get_for(&run.model, &run.chain)
            .map_err(|e| e.to_string())?;
        let source = self.deps.source(&run.chain).map_err(|e| e.to_string())?;
        Ok((model, source.clone()))
    }

    /// Hands a run this worker cannot serve back to its queue for a worker that can: the run
    /// goes back to `queued` on the same attempt ([`RunEvent::Release`], no attempt spent),
    /// and after a pause (so a fleet where no worker serves it does not spin) a fresh copy of
    /// its message is published and this delivery acked. A fresh copy rather than a requeue:
    /// quorum queues count requeues toward their delivery limit, and passing a run along
    /// several workers must not dead-letter it.
    async fn pass_on(
        &self,
        run: ModelRun,
        delivery: Delivery,
        reason: String,
        hand_back: CancellationToken,
    ) {
        let event = RunEvent::Release {
            owner: self.config.id.clone(),
            reason: format!("worker {} cannot run it: {reason}", self.config.id),
        };
        if let Err(e) = self
            .deps
            .store
            .transition(run.id, RunState::Running, run.attempt, event)
            .await
        {
            // Taken from us meanwhile (cancelled, expired): nothing left for this message. A
            // store failure: the lease expires and the scheduler retries the run.
            warn!(run = %run.id, error = %e, "could not hand back a run this worker cannot serve");
            settle(delivery.ack().await);
            return;
        }
        info!(run = %run.id, model = %run.model, chain = %run.chain, %reason, "run passed on to a worker that can serve it");
        tokio::select! {
            _ = hand_back.cancelled() => {}
            _ = tokio::time::sleep(self.config.pass_on_pause) => {}
        }
        let message = RunMessage {
            run_id: run.id,
            attempt: run.attempt,
        };
        match self.deps.queue.publish(&run.queue, &[message]).await {
            Ok(()) => settle(delivery.ack().await),
            Err(e) => {
                warn!(run = %run.id, error = %e, "republishing a passed-on run failed; requeueing its message");
                settle(delivery.nack_requeue().await);
            }
        }
    }

    async fn execute_with_heartbeat(
        &self,
        run: &ModelRun,
        model: Arc<RegisteredModel>,
        source: Arc<dyn BlockSource>,
    ) -> Outcome {
        // Blocks done: set by the execution, read by the heartbeats and the progress publisher.
        let (progress, watching) = watch::channel(0u64);
        let progress = Arc::new(progress);
        let heartbeat = async {
            let mut tick = tokio::time::interval(self.config.heartbeat);
            tick.tick().await;
            loop {
                tick.tick().await;
                let until = self.deps.clock.now() + chrono_dur(self.config.lease);
                // Read before the call: the watch's guard must not be held across an await.
                let done = *progress.borrow();
                match self
                    .deps
                    .store
                    .heartbeat(run.id, run.attempt, &self.config.id, until, done)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if claim_lost(&e, run) => return Outcome::ClaimLost,
                    Err(
                        e @ (StoreError::Conflict { .. }
                        | StoreError::Transition(_)
                        | StoreError::NotFound { .. }),
                    ) => {
                        return Outcome::LeaseLost(e.to_string());
                    }
                    Err(e) => warn!(run = %run.id, error = %e, "heartbeat failed; retrying"),
                }
            }
        };
        // The whole execution (source, model, sink) in a task of its own, so that a panic
        // anywhere in it fails this attempt with its message instead of killing the delivery's
        // task and leaving the run `running` until its lease expires. Aborted when dropped.
        let execution = {
            let (worker, run, progress) = (self.clone(), run.clone(), progress.clone());
            AbortOnDrop(tokio::spawn(
                async move { worker.execute(&run, model, source, &progress).await }
                    .in_current_span(),
            ))
        };
        let board = self.config.progress_board.as_deref();
        let publishing = async {
            match board {
                Some(board) => self.publish_progress(board, run, watching).await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            o = execution.join() => o.unwrap_or_else(|join| Outcome::Failed(format!(
                "executing the run panicked: {}",
                panic_message(join)
            ))),
            o = heartbeat => o,
            never = publishing => match never {},
        };
        // Once at the end of an attempt that ran its course, so the board shows where it
        // stopped (all of it when it succeeded). Not when the run was taken from us: another
        // attempt may be publishing by now. Bounded, so a board that does not answer cannot
        // hold up the run's outcome.
        if let Some(board) = board
            && matches!(outcome, Outcome::Succeeded(..) | Outcome::Failed(_))
        {
            let done = *progress.borrow();
            let last = self.publish_once(board, run, done);
            if tokio::time::timeout(PROGRESS_FINAL_WAIT, last)
                .await
                .is_err()
            {
                debug!(run = %run.id, "the last progress publish took too long; left behind");
            }
        }
        outcome
    }

    /// Publishes the run's progress to `board` for as long as it executes: at once, then on
    /// every change at most every [`PROGRESS_PUBLISH_EVERY`], and at every heartbeat interval
    /// even when nothing changed, so the entry (kept for a lease) lives while a long batch
    /// runs. Never returns: dropped when the execution ends.
    async fn publish_progress(
        &self,
        board: &dyn ProgressBoard,
        run: &ModelRun,
        mut done: watch::Receiver<u64>,
    ) -> std::convert::Infallible {
        loop {
            let now = *done.borrow_and_update();
            self.publish_once(board, run, now).await;
            let next = tokio::time::Instant::now() + PROGRESS_PUBLISH_EVERY;
            tokio::select! {
                changed = done.changed() => {
                    if changed.is_err() {
                        // The execution is over (its sender dropped): nothing more to show.
                        return std::future::pending().await;
                    }
                }
                _ = tokio::time::sleep(self.config.heartbeat) => {}
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// Publishes `blocks_done` of `run` to `board`, kept for a lease; a failure is logged at
    /// warn at most every [`PROGRESS_WARN_EVERY`] (at debug otherwise), never returned.
    async fn publish_once(&self, board: &dyn ProgressBoard, run: &ModelRun, blocks_done: u64) {
        let progress = RunProgress {
            attempt: run.attempt,
            blocks_done,
            blocks_total: run.range.len(),
            updated_at: self.deps.clock.now(),
        };
        let Err(e) = board
            .publish(&[(run.id, progress)], self.config.lease)
            .await
        else {
            return;
        };
        let suppressed = {
            let mut warned = self
                .progress_warned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = tokio::time::Instant::now();
            match warned.0 {
                Some(at) if now.duration_since(at) < PROGRESS_WARN_EVERY => {
                    warned.1 += 1;
                    None
                }
                _ => {
                    let since = std::mem::take(&mut warned.1);
                    warned.0 = Some(now);
                    Some(since)
                }
            }
        };
        match suppressed {
            Some(earlier) => warn!(
                run = %run.id,
                error = %e,
                failed_since_last_warning = earlier,
                "publishing live progress failed; the run goes on (the store still gets its progress with the heartbeats)"
            ),
            None => debug!(run = %run.id, error = %e, "publishing live progress failed"),
        }
    }

    /// Executes the run; `progress` is set to the blocks done so far (loaded and handed to the
    /// model), for the heartbeats and the progress board. Dropping the future aborts the
    /// model's task.
    async fn execute(
        &self,
        run: &ModelRun,
        model: Arc<RegisteredModel>,
        source: Arc<dyn BlockSource>,
        progress: &watch::Sender<u64>,
    ) -> Outcome {
        let transient = Outcome::Failed;
        // Normally done at start; this covers `handle` driven directly and a failed first try.
        if let Err(e) = self.declare_schemas().await {
            return transient(format!("declaring record schemas to the sink: {e}"));
        }
        let ctx = Arc::new(ModelContext {
            run_id: run.id,
            model: run.model.clone(),
            model_version: run.model_version.clone(),
            chain: run.chain.clone(),
            range: run.range,
            source: source.clone(),
            notes: Default::default(),
        });
        let name = run.model.clone();
        let mut records = Vec::new();
        // Blocks are loaded and handed to the model in batches of at most `batch_blocks`, so
        // a long run holds one batch of blocks in memory, not all of them.
        for batch in run
            .range
            .chunks(self.config.batch_blocks.max(1))
            .expect("batch size is at least 1")
        {
            let requested = std::time::Instant::now();
            // An answer that is not the batch's blocks counts as a failed request.
            let loaded = source
                .blocks(batch)
                .await
                .and_then(|b| check_whole_range(batch, &b).map(|()| b));
            instruments::source_request(run, "blocks", requested.elapsed(), loaded.is_ok());
            let blocks = match loaded {
                Ok(b) => b,
                Err(e @ SourceError::RangeMismatch { .. }) => return transient(e.to_string()),
                Err(e) => return transient(format!("loading blocks {batch}: {e}")),
            };
            progress.send_modify(|done| *done += batch.len());
            let (model, ctx) = (model.clone(), ctx.clone());
            // On the model pool, not this runtime: a model that computes for seconds (or
            // blocks a thread) must not starve the heartbeats, or its lease expires and the run
            // executes twice. The record schema check runs there too. Aborted if this future is
            // dropped (lease lost, run handed back): a hung model must not run on, detached.
            let task = AbortOnDrop(model_runtime().spawn(tracing::Instrument::in_current_span(
                async move {
                    let records = model.run(&ctx, &blocks).await?;
                    if let Some(schema) = model.spec().record_schema() {
                        for r in &records {
                            if let Err(e) = schema.check_payload(&r.payload) {
                                return Err(ModelOutputError::Schema(format!(
                                    "record {}: {e}",
                                    r.key
                                )));
                            }
                        }
                    }
                    Ok(records)
                },
            )));
            match task.join().await {
                // The first batch's records are the run's (a run of one batch is not copied).
                Ok(Ok(batch_records)) if records.is_empty() => records = batch_records,
                Ok(Ok(batch_records)) => records.extend(batch_records),
                Ok(Err(ModelOutputError::Model(e))) => {
                    return transient(format!("model {name} failed: {e}"));
                }
                Ok(Err(ModelOutputError::Schema(e))) => {
                    return transient(format!(
                        "model {name} emitted a record that does not match its record schema: {e}"
                    ));
                }
                Err(join) => {
                    return transient(format!("model {name} panicked: {}", panic_message(join)));
                }
            }
        }
        let topic = topic_name(&self.config.env, &run.chain);
        let output = RunOutput {
            topic: topic.clone(),
            run_id: run.id,
            model: run.model.clone(),
            model_version: run.model_version.clone(),
            chain: run.chain.clone(),
            range: run.range,
        };
        let count = records.len();
        // On the model pool too: encoding (Parquet, JSON) is CPU work that must not starve the
        // heartbeats on this runtime.
        let sink = self.deps.sink.clone();
        let send = AbortOnDrop(
            model_runtime()
                .spawn(async move { sink.send_run(&output, &records).await }.in_current_span()),
        );
        let sending = std::time::Instant::now();
        let sent = send.join().await;
        instruments::sink_sent(run, sending.elapsed());
        match sent {
            Ok(Ok(())) => Outcome::Succeeded(count as u64, ctx.notes.snapshot()),
            Ok(Err(e)) => transient(format!("sending {count} records to {topic}: {e}")),
            Err(join) => transient(format!(
                "sending {count} records to {topic} panicked: {}",
                panic_message(join)
            )),
        }
    }
}

/// What can go wrong in the model task: the model's own error, or a record that breaks the
/// model's record schema.
enum ModelOutputError {
    Model(crate::model::ModelError),
    Schema(String),
}

impl From<crate::model::ModelError> for ModelOutputError {
    fn from(e: crate::model::ModelError) -> Self {
        Self::Model(e)
    }
}

/// The message of a panicked task (or "task cancelled").
fn panic_message(join: tokio::task::JoinError) -> String {
    match join.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".into()),
        Err(_) => "task cancelled".into(),
    }
}

/// The runtime models run on, with threads of its own (as many as the machine has cores, at
/// least four), so
/// a model that computes for long or blocks its thread cannot starve the worker's heartbeats,
/// consumers and store calls. Created on first use; it lives as long as the process (a
/// runtime cannot be dropped from async code, and a model's I/O handles may be bound to it).
fn model_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            // At least four, so a few models that block their thread (synchronous I/O) do not
            // hold up every other run on a small machine.
            .worker_threads(
                std::thread::available_parallelism()
                    .map(usize::from)
                    .unwrap_or(2)
                    .max(4),
            )
            .thread_name("model-runner-model")
            .enable_all()
            .build()
            .expect("starting the model runtime's threads")
    })
}

/// What executes a run: its model and its chain's block source.
type ModelAndSource = (Arc<RegisteredModel>, Arc<dyn BlockSource>);

/// A task aborted when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether a claim that lost to `current` should be retried later rather than dropped: the
/// enqueuer has published the message but not yet marked the run `queued`.
fn not_yet_claimable(msg: &RunMessage, current: &ModelRun) -> bool {
    match current.state {
        RunState::Pending => msg.attempt == current.attempt,
        RunState::Failed | RunState::Expired => {
            msg.attempt == current.attempt + 1 && current.attempt < current.max_attempts
        }
        _ => false,
    }
}

/// Settles `delivery` as decided.
async fn apply(delivery: Delivery, how: Settle) {
    settle(match how {
        Settle::Ack => delivery.ack().await,
        Settle::Requeue => delivery.nack_requeue().await,
        Settle::Reject => delivery.reject().await,
    });
}

fn settle(result: Result<(), crate::ports::QueueError>) {
    if let Err(e) = result {
        // The broker will redeliver; the claim makes that harmless.
        warn!(error = %e, "settling a delivery failed");
    }
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Logs `message` about `run` at warn with `report = true`, which an error-reporting layer
/// (Sentry) sends as an event, and the run's fields: id, model, version, chain, range, attempt,
/// attempts allowed, queue, and `error` where there is one.
fn report(run: &ModelRun, error: Option<&str>, message: &str) {
    with_run_fields!(
        warn,
        [report = true],
        run,
        max_attempts = run.max_attempts,
        queue = %run.queue,
        error,
        "{message}"
    );
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use std::collections::HashMap;

    use async_trait::async_trait;
    use serde_json::json;

    use super::*;
    use crate::chain::{BlockRange, Chain, RunMode};
    use crate::data::Block;
    use crate::engine::{BackfillRequest, Enqueuer, EnqueuerConfig, submit_backfill};
    use crate::memory::{MemoryBlockSource, MemoryRunQueue, MemoryRunStore, MemorySink};
    use crate::model::{FieldType, ModelError, ModelRegistry, Record, RecordSchema};
    use crate::models::tests::TestModel;
    use crate::ports::{RunStore, RunStoreExt};
    use crate::routing::Routing;
    use crate::run::RunId;

    /// `{block_number: uint64, label: string, note: string?}`.
    fn labels_schema() -> RecordSchema {
        RecordSchema::new()
            .required("block_number", FieldType::UInt64, "")
            .required("label", FieldType::String, "")
            .nullable("note", FieldType::String, "")
    }

    /// The model `labels` (version 2): declares [`labels_schema`]; at block `bad_block` (if
    /// any) it emits `label` as a number.
    fn labels(bad_block: Option<u64>) -> TestModel {
        TestModel::new("labels", "2")
            .schema(labels_schema())
            .payload(move |b| {
                let label = if Some(b.number) == bad_block {
                    json!(b.number)
                } else {
                    json!(format!("block {}", b.number))
                };
                json!({"block_number": b.number, "label": label})
            })
    }

    fn chain() -> Chain {
        Chain::new("ethereum").unwrap()
    }

    /// In-memory ports over blocks 0-24 of `chain()`, with `store`, `sink` and `models`.
    fn memory_deps(
        store: Arc<MemoryRunStore>,
        sink: Arc<dyn crate::ports::ResultSink>,
        models: ModelRegistry,
    ) -> EngineDeps {
        EngineDeps {
            store,
            queue: Arc::new(MemoryRunQueue::new()),
            sink,
            sources: HashMap::from([(
                chain(),
                Arc::new(MemoryBlockSource::new(
                    chain(),
                    crate::models::tests::blocks(0, 24),
                )) as _,
            )]),
            models: Arc::new(models),
            routing: Routing::default(),
            limits: Default::default(),
            clock: crate::clock::SystemClock::shared(),
        }
    }

    /// A registry of `model` alone.
    fn only(model: TestModel) -> ModelRegistry {
        ModelRegistry::new().with(Arc::new(model)).unwrap()
    }

    /// [`memory_deps`] with `model` and a new sink, on one clock for the store and the engine
    /// that follows tokio's (paused in these tests).
    fn deps(model: TestModel) -> (EngineDeps, Arc<MemorySink>) {
        let sink = Arc::new(MemorySink::new());
        let clock = crate::clock::TokioClock::shared();
        let store = Arc::new(MemoryRunStore::with_clock(clock.clone()));
        let deps = EngineDeps {
            clock,
            ..memory_deps(store, sink.clone(), only(model))
        };
        (deps, sink)
    }

    /// Submits `request`, which makes one run, and queues it (one enqueuer pass).
    async fn queued(deps: &EngineDeps, request: BackfillRequest) -> ModelRun {
        let created = submit_backfill(deps, request).await.unwrap();
        let enqueuer = Enqueuer::new(deps.clone(), EnqueuerConfig::default());
        assert_eq!(enqueuer.pass().await.unwrap(), 1);
        let [run] = <[ModelRun; 1]>::try_from(created.runs).unwrap();
        run
    }

    /// Spawns an enqueuer of `deps` that looks for pending runs every 5 ms until `stop`.
    fn spawn_enqueuer(deps: &EngineDeps, stop: &CancellationToken) -> tokio::task::JoinHandle<()> {
        let config = EnqueuerConfig {
            idle: Duration::from_millis(5),
            ..Default::default()
        };
        tokio::spawn(Enqueuer::new(deps.clone(), config).run(stop.clone()))
    }

    /// Backfills blocks 0-19 in runs of 10 (two attempts each) and waits until every run is
    /// final with no attempt left.
    async fn backfill(deps: &EngineDeps) -> Vec<ModelRun> {
        let created = submit_backfill(
            deps,
            BackfillRequest {
                max_attempts: 2,
                ..BackfillRequest::new("labels", chain(), BlockRange::new(0, 19).unwrap(), 10)
            },
        )
        .await
        .unwrap();
        let stop = CancellationToken::new();
        let enqueuer = spawn_enqueuer(deps, &stop);
        let worker = Worker::new(
            deps.clone(),
            WorkerConfig {
                queues: deps.routing.all_queues([&chain()]),
                retry: RetryPolicy {
                    base: Duration::from_millis(5),
                    max: Duration::from_millis(20),
                    jitter: 0.0,
                },
                env: "test".into(),
                ..Default::default()
            },
        );
        let worker = tokio::spawn(worker.run(stop.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let runs = loop {
            let mut runs = Vec::new();
            for r in &created.runs {
                runs.push(deps.store.get(r.id).await.unwrap());
            }
            let settled = runs.iter().all(|r| {
                r.state == RunState::Succeeded
                    || (r.state == RunState::Failed && r.attempt == r.max_attempts)
            });
            if settled {
                break runs;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "runs did not settle: {runs:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        stop.cancel();
        enqueuer.await.unwrap();
        worker.await.unwrap().unwrap();
        runs
    }

    #[tokio::test(start_paused = true)]
    async fn conforming_records_are_sent_and_the_schema_is_declared_to_the_sink() {
        let (deps, sink) = deps(labels(None));
        let runs = backfill(&deps).await;
        assert!(runs.iter().all(|r| r.state == RunState::Succeeded));
        assert_eq!(sink.records("test-ethereum-sink").len(), 20);
        assert_eq!(sink.declared_schema("labels", "2"), Some(labels_schema()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_record_that_breaks_the_schema_fails_the_attempt_naming_model_key_and_field() {
        let (deps, sink) = deps(labels(Some(13)));
        let mut runs = backfill(&deps).await;
        runs.sort_by_key(|r| r.range.start());
        assert_eq!(runs[0].state, RunState::Succeeded);
        // Retried like a model error, then failed.
        assert_failed(
            &runs[1],
            2,
            "model labels emitted a record that does not match its record schema: record \
             labels:ethereum:13:0: field \"label\": expected a string, found number 13",
        );
        // Nothing of the failed run reached the sink: only the first run's ten records.
        let sent = sink.records("test-ethereum-sink");
        assert_eq!(sent.len(), 10);
        assert!(sent.iter().all(|r| r.key.block_number < 10));
    }

    #[tokio::test]
    async fn an_invalid_schema_stops_the_worker_before_it_consumes() {
        let model = labels(None).schema(labels_schema().required("Label", FieldType::String, ""));
        let (deps, sink) = deps(model);
        let worker = Worker::new(
            deps.clone(),
            WorkerConfig {
                queues: deps.routing.all_queues([&chain()]),
                ..Default::default()
            },
        );
        let err = worker.run(CancellationToken::new()).await.unwrap_err();
        assert!(
            matches!(&err, EngineError::InvalidSchema { model, error } if model == "labels" && error.field() == "Label"),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "model labels: invalid record schema: field \"Label\" (#3): not a column identifier: \
             use lowercase letters, digits and '_', starting with a letter or '_'"
        );
        assert_eq!(sink.declared_schema("labels", "2"), None);
    }

    #[tokio::test]
    async fn a_lost_claim_sends_the_message_back_so_the_run_still_runs() {
        let (mut deps, sink) = deps(labels(None));
        // The first claim is "lost", as a PostgreSQL store with asynchronous claims can lose
        // one in a server crash: answered as if it landed, while the run stays `queued`.
        let lost = Arc::new(std::sync::Mutex::new(None::<RunId>));
        let first = lost.clone();
        deps.store = Arc::new(crate::memory::HookedStore {
            on_transition: Some(Box::new(move |stored, expected, attempt, event| {
                if !matches!(event, RunEvent::Start { .. }) {
                    return None;
                }
                let mut first = first.lock().unwrap();
                if first.is_some() {
                    return None;
                }
                *first = Some(stored.id);
                assert_eq!((stored.state, stored.attempt), (expected, attempt));
                let mut run = stored.clone();
                run.apply(event, Utc::now()).unwrap();
                Some(Ok(run))
            })),
            ..Default::default()
        });
        // Without the requeue, the run whose claim was lost would wait in `queued` with no
        // message, and `backfill` would time out.
        let runs = backfill(&deps).await;
        let lost = lost.lock().unwrap().expect("a claim was lost");
        for r in &runs {
            assert_eq!((r.state, r.attempt), (RunState::Succeeded, 1), "{r:?}");
        }
        // The lost run executed twice (at least once): its records were sent twice, with the
        // same keys, so a consumer deduplicating by key sees each of the 20 records once.
        let sent = sink.records("test-ethereum-sink");
        assert_eq!(sent.len(), 30);
        let keys: std::collections::BTreeSet<_> = sent.iter().map(|r| r.key.clone()).collect();
        assert_eq!(keys.len(), 20);
        assert!(runs.iter().any(|r| r.id == lost));
    }

    /// Makes the model `blocker` wait at each batch while `block` is set; counts its
    /// executions and how many were dropped before they finished.
    #[derive(Debug, Default)]
    struct Blocker {
        block: std::sync::atomic::AtomicBool,
        started: AtomicU64,
        dropped: Arc<AtomicU64>,
    }

    impl Blocker {
        /// Waits until an execution was dropped before it finished (the worker aborted it).
        async fn aborted(&self) {
            crate::engine::eventually(
                Duration::from_secs(5),
                "the model task to be aborted",
                || {
                    let aborted = self.dropped.load(Ordering::SeqCst) >= 1;
                    async move { aborted }
                },
            )
            .await;
        }

        /// The model `blocker` (version 1), waiting on `self` at each batch.
        fn model(self: &Arc<Self>) -> TestModel {
            let blocker = self.clone();
            TestModel::new("blocker", "1").hook(move |_, _| {
                let blocker = blocker.clone();
                Box::pin(async move {
                    blocker.started.fetch_add(1, Ordering::SeqCst);
                    let mut guard = CountDrop(blocker.dropped.clone(), false);
                    while blocker.block.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    guard.1 = true;
                    Ok(())
                })
            })
        }
    }

    struct CountDrop(Arc<AtomicU64>, bool);

    impl Drop for CountDrop {
        fn drop(&mut self) {
            if !self.1 {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// Deps with the blocker model, and one pending run of blocks 0-9 with `max_attempts`.
    async fn blocker_deps(
        max_attempts: u32,
    ) -> (EngineDeps, Arc<Blocker>, Arc<MemoryRunQueue>, ModelRun) {
        let model = Arc::new(Blocker::default());
        model.block.store(true, Ordering::SeqCst);
        let queue = Arc::new(MemoryRunQueue::new());
        let deps = EngineDeps {
            queue: queue.clone(),
            ..memory_deps(
                Arc::new(MemoryRunStore::new()),
                Arc::new(MemorySink::new()),
                only(model.model()),
            )
        };
        let request = BackfillRequest {
            max_attempts,
            ..BackfillRequest::new("blocker", chain(), BlockRange::new(0, 9).unwrap(), 10)
        };
        let run = queued(&deps, request).await;
        (deps, model, queue, run)
    }

    fn blocker_worker(deps: &EngineDeps, id: &str) -> Worker {
        Worker::new(
            deps.clone(),
            WorkerConfig {
                id: id.into(),
                queues: deps.routing.all_queues([&chain()]),
                lease: Duration::from_secs(30),
                heartbeat: Duration::from_millis(10),
                shutdown_grace: Duration::from_millis(20),
                env: "test".into(),
                ..Default::default()
            },
        )
    }

    async fn wait_for(
        deps: &EngineDeps,
        id: RunId,
        what: &str,
        done: impl Fn(&ModelRun) -> bool,
    ) -> ModelRun {
        wait_within(Duration::from_secs(10), deps, id, what, done).await
    }

    /// [`wait_for`] with a deadline of `limit`.
    async fn wait_within(
        limit: Duration,
        deps: &EngineDeps,
        id: RunId,
        what: &str,
        done: impl Fn(&ModelRun) -> bool,
    ) -> ModelRun {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let run = deps.store.get(id).await.unwrap();
            if done(&run) {
                return run;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {run:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A worker running on its own task.
    struct Spawned {
        stop: CancellationToken,
        task: tokio::task::JoinHandle<Result<(), EngineError>>,
    }

    impl Spawned {
        fn new(worker: Worker) -> Self {
            let stop = CancellationToken::new();
            let task = tokio::spawn(worker.run(stop.clone()));
            Self { stop, task }
        }

        /// Shuts the worker down and waits until it returned, without an error.
        async fn stop(self) {
            self.stop.cancel();
            self.task.await.unwrap().unwrap();
        }

        /// Waits until run `id` is idle (the wait is for `what`), then stops the worker;
        /// returns the run as it ended.
        async fn finish(self, deps: &EngineDeps, id: RunId, what: &str) -> ModelRun {
            let done = wait_for(deps, id, what, |r| r.state.is_idle()).await;
            self.stop().await;
            done
        }
    }

    /// Spawns [`blocker_worker`] `id` and waits until `run` is running (claimed by it).
    async fn claimed_by(deps: &EngineDeps, run: RunId, id: &str) -> Spawned {
        let worker = Spawned::new(blocker_worker(deps, id));
        wait_for(deps, run, &format!("{id} to claim the run"), |r| {
            r.state == RunState::Running
        })
        .await;
        worker
    }

    #[tokio::test]
    async fn a_run_handed_back_at_shutdown_keeps_its_attempt_and_another_worker_finishes_it() {
        let (deps, model, queue, run) = blocker_deps(1).await;
        let w1 = claimed_by(&deps, run.id, "w1").await;
        assert_eq!(queue.ready_len(&run.queue), 0);
        w1.stop().await;

        let back = deps.store.get(run.id).await.unwrap();
        assert_eq!(
            (back.state, back.attempt, back.max_attempts),
            (RunState::Queued, 1, 1),
            "handed back on the same attempt: {back:?}"
        );
        assert_eq!(back.lease_owner, None);
        assert_eq!(
            back.last_error.as_deref(),
            Some("handed back: worker w1 shut down before finishing")
        );
        assert_eq!(
            queue.ready_len(&run.queue),
            1,
            "its message is back in the queue"
        );
        assert_eq!(
            queue.ready_len(&crate::routing::dead_letter_queue_name(&run.queue)),
            0
        );
        // The abandoned execution was aborted, not left running.
        model.aborted().await;

        // A second worker picks the run up on the same attempt and completes it.
        model.block.store(false, Ordering::SeqCst);
        let w2 = blocker_worker(&deps, "w2");
        let stats = w2.stats();
        let done = Spawned::new(w2)
            .finish(&deps, run.id, "w2 to finish the run")
            .await;
        assert_eq!(
            (done.state, done.attempt),
            (RunState::Succeeded, 1),
            "{done:?}"
        );
        assert_eq!(done.records_written, 10);
        assert_eq!(done.last_error, None);
        assert_eq!(stats.runs_succeeded.load(Ordering::Relaxed), 1);
        assert_eq!(model.started.load(Ordering::SeqCst), 2);
        assert_eq!(queue.ready_len(&run.queue), 0);
    }

    /// A worker is stopped while another one runs, holding a run that outlasts its grace.
    /// Its consumer must stay open until the hand-back is settled: with the consumer dropped
    /// at once (as before), the broker gave the message to the other worker, which found the
    /// run `running` and dropped it, and the hand-back's requeue then failed on the closed
    /// channel, leaving the run `queued` with no message.
    #[tokio::test]
    async fn a_run_handed_back_while_another_worker_runs_is_finished_by_it() {
        let (deps, model, queue, run) = blocker_deps(1).await;
        let w1 = claimed_by(&deps, run.id, "w1").await;
        let w2 = blocker_worker(&deps, "w2");
        let stats2 = w2.stats();
        let w2 = Spawned::new(w2);
        w1.stop().await;
        // w2 takes the handed-back run on the same attempt (the model still blocks).
        wait_for(&deps, run.id, "w2 to claim the handed-back run", |r| {
            r.state == RunState::Running && r.lease_owner.as_deref() == Some("w2")
        })
        .await;
        model.block.store(false, Ordering::SeqCst);
        let done = w2.finish(&deps, run.id, "w2 to finish the run").await;
        assert_eq!(
            (done.state, done.attempt),
            (RunState::Succeeded, 1),
            "{done:?}"
        );
        assert_eq!(stats2.runs_succeeded.load(Ordering::Relaxed), 1);
        assert_eq!(
            stats2.dropped.load(Ordering::Relaxed),
            0,
            "w2 never saw the message while w1 held the run"
        );
        assert_eq!(queue.ready_len(&run.queue), 0);
    }

    /// Every worker consumes the adhoc pools `backfill_1..4`, whatever chains it serves. A run
    /// of a chain this worker has no source for goes back to the queue for a worker that has
    /// one; it used to be failed permanently on attempt 1 ("unknown chain").
    #[tokio::test]
    async fn adhoc_runs_go_to_a_worker_that_serves_their_chain() {
        let matic = Chain::new("matic").unwrap();
        let eth_source: Arc<dyn crate::ports::BlockSource> = Arc::new(MemoryBlockSource::new(
            chain(),
            crate::models::tests::blocks(0, 199),
        ));
        let matic_source: Arc<dyn crate::ports::BlockSource> = Arc::new(MemoryBlockSource::new(
            matic.clone(),
            crate::models::tests::blocks(0, 199),
        ));
        let api = EngineDeps {
            sources: HashMap::from([
                (chain(), eth_source.clone()),
                (matic.clone(), matic_source.clone()),
            ]),
            ..memory_deps(
                Arc::new(MemoryRunStore::new()),
                Arc::new(MemorySink::new()),
                crate::models::builtin(),
            )
        };
        let created = submit_backfill(
            &api,
            BackfillRequest {
                mode: RunMode::Adhoc,
                max_attempts: 1,
                ..BackfillRequest::new(
                    "block_stats",
                    matic.clone(),
                    BlockRange::new(0, 199).unwrap(),
                    10,
                )
            },
        )
        .await
        .unwrap();
        let stop = CancellationToken::new();
        let enqueuer = spawn_enqueuer(&api, &stop);
        let worker_of = |id: &str, c: &Chain, source: &Arc<dyn crate::ports::BlockSource>| {
            let deps = EngineDeps {
                sources: HashMap::from([(c.clone(), source.clone())]),
                ..api.clone()
            };
            let w = Worker::new(
                deps.clone(),
                WorkerConfig {
                    id: id.into(),
                    queues: deps.routing.all_queues([c]),
                    pass_on_pause: Duration::from_millis(5),
                    env: "test".into(),
                    ..Default::default()
                },
            );
            (w.stats(), tokio::spawn(w.run(stop.clone())))
        };
        let (eth_stats, eth) = worker_of("w-eth", &chain(), &eth_source);
        let (matic_stats, matic_worker) = worker_of("w-matic", &matic, &matic_source);
        for r in &created.runs {
            // Generous: the runs bounce between the workers, and CI machines are busy.
            let done = wait_within(
                Duration::from_secs(60),
                &api,
                r.id,
                "the run to finish",
                |r| r.state.is_idle(),
            )
            .await;
            assert_eq!(
                (done.state, done.attempt),
                (RunState::Succeeded, 1),
                "{done:?}"
            );
        }
        stop.cancel();
        eth.await.unwrap().unwrap();
        matic_worker.await.unwrap().unwrap();
        enqueuer.await.unwrap();
        assert_eq!(eth_stats.runs_failed.load(Ordering::Relaxed), 0);
        assert_eq!(eth_stats.runs_succeeded.load(Ordering::Relaxed), 0);
        assert_eq!(matic_stats.runs_succeeded.load(Ordering::Relaxed), 20);
    }

    /// The model `hog` (version 1): at each batch it blocks its thread (no `.await`) until it
    /// sees a heartbeat of its run in `store`, as a CPU-heavy model would hold its thread;
    /// gives up after two seconds.
    fn hog(store: Arc<MemoryRunStore>) -> TestModel {
        TestModel::new("hog", "1").hook(move |ctx, _| {
            let start = std::time::Instant::now();
            let mut seen = Err(ModelError::Failed(
                "no heartbeat while the model held its thread".into(),
            ));
            while start.elapsed() < Duration::from_secs(2) {
                let run = futures::executor::block_on(store.get(ctx.run_id)).unwrap();
                if run.blocks_done > 0 {
                    seen = Ok(());
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Box::pin(std::future::ready(seen))
        })
    }

    /// A sink that holds its thread (as a CPU-heavy encoder does) until the run's lease was
    /// renewed while it held it; gives up after two seconds.
    #[derive(Debug)]
    struct HogSink {
        store: Arc<MemoryRunStore>,
        inner: MemorySink,
    }

    #[async_trait]
    impl crate::ports::ResultSink for HogSink {
        async fn send(
            &self,
            topic: &str,
            records: &[Record],
        ) -> Result<(), crate::ports::SinkError> {
            let run = records.first().map(|r| r.run_id).expect("records");
            let lease = |store: &MemoryRunStore| {
                futures::executor::block_on(store.get(run))
                    .unwrap()
                    .lease_expires_at
            };
            let at_start = lease(&self.store);
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_secs(2) {
                if lease(&self.store) != at_start {
                    return self.inner.send(topic, records).await;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(crate::ports::SinkError::Backend {
                adapter: "test",
                source: "no heartbeat while the sink held its thread".into(),
            })
        }
        async fn flush(&self) -> Result<(), crate::ports::SinkError> {
            Ok(())
        }
    }

    /// Sending (encoding) runs off the worker's runtime as well: a sink that holds its thread
    /// does not stop the heartbeats.
    #[tokio::test]
    async fn a_sink_holding_its_thread_does_not_starve_the_heartbeats() {
        let store = Arc::new(MemoryRunStore::new());
        let sink = HogSink {
            store: store.clone(),
            inner: MemorySink::new(),
        };
        let deps = memory_deps(store, Arc::new(sink), crate::models::builtin());
        let run = one_run(&deps, "block_stats").await;
        let done = Spawned::new(blocker_worker(&deps, "w1"))
            .finish(&deps, run.id, "the run to finish")
            .await;
        assert_eq!(done.state, RunState::Succeeded, "{done:?}");
    }

    /// Source whose `blocks` panics.
    #[derive(Debug)]
    struct PanickySource;

    #[async_trait]
    impl crate::ports::BlockSource for PanickySource {
        fn chain(&self) -> &Chain {
            static C: std::sync::OnceLock<Chain> = std::sync::OnceLock::new();
            C.get_or_init(chain)
        }
        async fn head(&self) -> Result<crate::data::BlockHead, crate::ports::SourceError> {
            panic!("head is not used here")
        }
        async fn blocks(
            &self,
            _range: BlockRange,
        ) -> Result<Vec<Block>, crate::ports::SourceError> {
            panic!("attempt to subtract with overflow")
        }
    }

    /// Asserts that `run` failed for good on `attempt`, with `error`.
    fn assert_failed(run: &ModelRun, attempt: u32, error: &str) {
        assert_eq!(
            (run.state, run.attempt, run.last_error.as_deref()),
            (RunState::Failed, attempt, Some(error)),
            "{run:?}"
        );
    }

    /// One queued run of `model` over blocks 0-9, with one attempt.
    async fn one_run(deps: &EngineDeps, model: &str) -> ModelRun {
        let request = BackfillRequest {
            max_attempts: 1,
            ..BackfillRequest::new(model, chain(), BlockRange::new(0, 9).unwrap(), 10)
        };
        queued(deps, request).await
    }

    /// One `block_stats` run over blocks 0-9 from `source`, with one attempt, run to its end.
    async fn block_stats_from(source: Arc<dyn crate::ports::BlockSource>) -> ModelRun {
        let deps = EngineDeps {
            sources: HashMap::from([(chain(), source)]),
            ..memory_deps(
                Arc::new(MemoryRunStore::new()),
                Arc::new(MemorySink::new()),
                crate::models::builtin(),
            )
        };
        let run = one_run(&deps, "block_stats").await;
        Spawned::new(blocker_worker(&deps, "w1"))
            .finish(&deps, run.id, "the attempt to end")
            .await
    }

    /// On a single-threaded runtime a model that holds its thread used to starve the
    /// heartbeats (its lease then expires and the run executes twice); models now run on their
    /// own pool, so the heartbeat lands while the model still holds its thread.
    #[tokio::test]
    async fn a_model_holding_its_thread_does_not_starve_the_heartbeats() {
        let store = Arc::new(MemoryRunStore::new());
        let deps = memory_deps(store.clone(), Arc::new(MemorySink::new()), only(hog(store)));
        let run = one_run(&deps, "hog").await;
        let done = Spawned::new(blocker_worker(&deps, "w1"))
            .finish(&deps, run.id, "the run to finish")
            .await;
        assert_eq!(done.state, RunState::Succeeded, "{done:?}");
    }

    /// A panic in the block source (or the sink) fails the attempt with the panic's message;
    /// it used to kill the delivery's task and leave the run `running`.
    #[tokio::test]
    async fn a_panicking_source_fails_the_attempt_with_its_message() {
        assert_failed(
            &block_stats_from(Arc::new(PanickySource)).await,
            1,
            "executing the run panicked: attempt to subtract with overflow",
        );
    }

    /// Source that answers as many blocks as asked for, but the last is a copy of the first:
    /// a node serving a stale block in place of the range's last.
    #[derive(Debug)]
    struct StaleSource(MemoryBlockSource);

    #[async_trait]
    impl crate::ports::BlockSource for StaleSource {
        fn chain(&self) -> &Chain {
            self.0.chain()
        }
        async fn head(&self) -> Result<crate::data::BlockHead, crate::ports::SourceError> {
            self.0.head().await
        }
        async fn blocks(&self, range: BlockRange) -> Result<Vec<Block>, crate::ports::SourceError> {
            let mut blocks = self.0.blocks(range).await?;
            let first = blocks[0].clone();
            *blocks.last_mut().expect("the range has blocks") = first;
            Ok(blocks)
        }
    }

    /// An answer of the right length that is not the range's blocks fails the attempt: the
    /// worker used to count the blocks only, and wrote block 0's records twice and none of
    /// block 9's.
    #[tokio::test]
    async fn an_answer_that_is_not_the_ranges_blocks_fails_the_attempt() {
        let source = MemoryBlockSource::new(chain(), crate::models::tests::blocks(0, 24));
        assert_failed(
            &block_stats_from(Arc::new(StaleSource(source))).await,
            1,
            "blocks 0-9: the source answered 10 blocks (block 0 first, block 0 last), not exactly \
             the range's blocks in order",
        );
    }

    /// Counts the calls of the model `batches` and the largest batch it was given.
    #[derive(Debug, Default)]
    struct Batches {
        calls: AtomicU64,
        largest: AtomicU64,
    }

    impl Batches {
        /// The model `batches` (version 1), counting into `self`.
        fn model(self: &Arc<Self>) -> TestModel {
            let counts = self.clone();
            TestModel::new("batches", "1").hook(move |_, blocks| {
                counts.calls.fetch_add(1, Ordering::SeqCst);
                counts
                    .largest
                    .fetch_max(blocks.len() as u64, Ordering::SeqCst);
                Box::pin(std::future::ready(Ok(())))
            })
        }
    }

    /// A run of 25 blocks with batches of 10 reaches the model as 10 + 10 + 5 blocks (memory
    /// bounded by one batch) and still delivers every record, once.
    #[tokio::test]
    async fn blocks_reach_the_model_in_bounded_batches() {
        let model = Arc::new(Batches::default());
        let sink = Arc::new(MemorySink::new());
        let deps = memory_deps(
            Arc::new(MemoryRunStore::new()),
            sink.clone(),
            only(model.model()),
        );
        let request = BackfillRequest {
            max_attempts: 1,
            ..BackfillRequest::new("batches", chain(), BlockRange::new(0, 24).unwrap(), 25)
        };
        let run = queued(&deps, request).await;
        let w = Worker::new(
            deps.clone(),
            WorkerConfig {
                queues: deps.routing.all_queues([&chain()]),
                batch_blocks: 10,
                env: "test".into(),
                ..Default::default()
            },
        );
        let done = Spawned::new(w).finish(&deps, run.id, "the run").await;
        assert_eq!(
            (done.state, done.records_written),
            (RunState::Succeeded, 25)
        );
        assert_eq!(model.calls.load(Ordering::SeqCst), 3);
        assert_eq!(model.largest.load(Ordering::SeqCst), 10);
        assert_eq!(sink.records("test-ethereum-sink").len(), 25);
        // And a run larger than the configured cap is refused where runs are made.
        let capped = EngineDeps {
            limits: crate::engine::Limits {
                max_blocks_per_run: 20,
                ..Default::default()
            },
            ..deps.clone()
        };
        let err = submit_backfill(
            &capped,
            BackfillRequest {
                max_attempts: 1,
                ..BackfillRequest::new("batches", chain(), BlockRange::new(0, 30).unwrap(), 30)
            },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("the limit per run"), "{err}");
    }

    #[tokio::test]
    async fn heartbeats_report_progress_while_the_model_runs() {
        let (deps, model, _queue, run) = blocker_deps(3).await;
        let w = Spawned::new(blocker_worker(&deps, "w1"));
        let running = wait_for(&deps, run.id, "progress in the store", |r| {
            r.state == RunState::Running && r.blocks_done > 0
        })
        .await;
        assert_eq!(running.blocks_done, 10, "the run's blocks are loaded");
        assert_eq!(model.started.load(Ordering::SeqCst), 1);
        model.block.store(false, Ordering::SeqCst);
        let done = w.finish(&deps, run.id, "the run to finish").await;
        assert_eq!((done.state, done.blocks_done), (RunState::Succeeded, 10));
    }

    /// A worker publishing to `board`, feeding the model `batch_blocks` at a time.
    fn publishing_worker(deps: &EngineDeps, board: Arc<dyn ProgressBoard>) -> Worker {
        Worker::new(
            deps.clone(),
            WorkerConfig {
                id: "w1".into(),
                queues: deps.routing.all_queues([&chain()]),
                lease: Duration::from_secs(30),
                heartbeat: Duration::from_millis(10),
                env: "test".into(),
                batch_blocks: 4,
                progress_board: Some(board),
                ..Default::default()
            },
        )
    }

    /// While the model works on a run's first batch, the board shows that batch done (attempt,
    /// blocks done, blocks total); when the attempt ends it shows every block.
    #[tokio::test]
    async fn running_runs_publish_their_progress_to_the_board() {
        use crate::ports::ProgressBoardExt;
        let (deps, model, _queue, run) = blocker_deps(3).await;
        let board = Arc::new(crate::memory::MemoryProgressBoard::new());
        let w = Spawned::new(publishing_worker(&deps, board.clone()));
        crate::engine::eventually(
            Duration::from_secs(10),
            "the first batch's progress on the board",
            || {
                let board = board.clone();
                async move {
                    let read = board.read(&[run.id]).await.unwrap();
                    read[0].is_some_and(|p| p.blocks_done == 4)
                }
            },
        )
        .await;
        let live = board.read(&[run.id]).await.unwrap()[0].unwrap();
        assert_eq!((live.attempt, live.blocks_total), (1, 10), "{live:?}");
        assert_eq!(
            model.started.load(Ordering::SeqCst),
            1,
            "the model holds batch 1"
        );
        // What the API shows: the store's run is running on the attempt that published.
        let stored = wait_for(&deps, run.id, "the claim", |r| r.state == RunState::Running).await;
        // (Its time moves: the entry is published again at every heartbeat to stay alive.)
        let shown = board.live(&[stored]).await.unwrap()[0].expect("live progress");
        assert_eq!((shown.attempt, shown.blocks_done), (1, 4));
        assert!(shown.updated_at >= live.updated_at);

        model.block.store(false, Ordering::SeqCst);
        let done = w.finish(&deps, run.id, "the run to finish").await;
        assert_eq!(done.state, RunState::Succeeded);
        let last = board.read(&[run.id]).await.unwrap()[0].expect("the last publish");
        assert_eq!(
            (last.attempt, last.blocks_done, last.blocks_total),
            (1, 10, 10)
        );
        assert_eq!(
            board.live(&[done]).await.unwrap(),
            vec![None],
            "a finished run shows no live progress"
        );
    }

    /// A board that refuses every publish.
    #[derive(Debug, Default)]
    struct BrokenBoard {
        publishes: AtomicU64,
    }

    #[async_trait]
    impl ProgressBoard for BrokenBoard {
        async fn publish(
            &self,
            _entries: &[(RunId, RunProgress)],
            _ttl: Duration,
        ) -> Result<(), crate::ports::ProgressError> {
            self.publishes.fetch_add(1, Ordering::SeqCst);
            Err(crate::ports::ProgressError::Unavailable {
                adapter: "broken",
                message: "connection refused".into(),
            })
        }
        async fn read(
            &self,
            runs: &[RunId],
        ) -> Result<Vec<Option<RunProgress>>, crate::ports::ProgressError> {
            Ok(vec![None; runs.len()])
        }
    }

    /// Publishing is best effort: a board that fails every publish never fails the run.
    #[tokio::test]
    async fn a_failing_board_never_fails_the_run() {
        let (deps, model, _queue, run) = blocker_deps(1).await;
        model.block.store(false, Ordering::SeqCst);
        let board = Arc::new(BrokenBoard::default());
        let done = Spawned::new(publishing_worker(&deps, board.clone()))
            .finish(&deps, run.id, "the run to finish")
            .await;
        assert_eq!((done.state, done.blocks_done), (RunState::Succeeded, 10));
        assert!(
            board.publishes.load(Ordering::SeqCst) >= 2,
            "published at the start and at the end"
        );
    }

    #[tokio::test]
    async fn losing_the_lease_aborts_the_model() {
        let (deps, model, queue, run) = blocker_deps(3).await;
        let w = claimed_by(&deps, run.id, "w1").await;
        // A user cancels the run: the next heartbeat finds it gone and abandons the work.
        deps.store
            .transition(
                run.id,
                RunState::Running,
                1,
                RunEvent::Cancel { reason: None },
            )
            .await
            .unwrap();
        model.aborted().await;
        w.stop().await;
        assert_eq!(model.started.load(Ordering::SeqCst), 1);
        assert_eq!(queue.ready_len(&run.queue), 0, "the message was acked");
        assert_eq!(
            deps.store.get(run.id).await.unwrap().state,
            RunState::Cancelled
        );
    }
}
