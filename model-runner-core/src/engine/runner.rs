//! [`Runner`]: a runner assembled in code, for embedding in an existing tokio application.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::chain::{BlockRange, Chain};
use crate::clock::{Clock, SystemClock};
use crate::engine::{
    BackfillRequest, CancellationToken, EngineDeps, EngineError, Enqueuer, EnqueuerConfig, Limits,
    RealtimeSubscription, Scheduler, SchedulerConfig, Worker, WorkerConfig, WorkerStats,
    submit_backfill,
};
use crate::memory::{MemoryRunQueue, MemoryRunStore, MemorySink};
use crate::model::{Model, ModelRegistry};
use crate::ports::{BlockSource, ProgressBoard, ResultSink, RunQueue, RunStore};
use crate::routing::Routing;
use crate::run::{ModelRun, RunId};

/// Which loops [`Runner::run`] runs in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// The [`Scheduler`]: realtime subscriptions, lease expiry, retries, reconciling.
    pub scheduler: bool,
    /// The [`Enqueuer`]: the outbox relay to the queues.
    pub enqueuer: bool,
    /// The [`Worker`]: claims runs, executes models, delivers records.
    pub worker: bool,
}

impl Parts {
    /// All three loops, as `model-runner all` runs them.
    pub const ALL: Parts = Parts {
        scheduler: true,
        enqueuer: true,
        worker: true,
    };
    /// Only a worker (scale workers out on their own).
    pub const WORKER: Parts = Parts {
        scheduler: false,
        enqueuer: false,
        worker: true,
    };
    /// The scheduler and the enqueuer, without workers.
    pub const CONTROL: Parts = Parts {
        scheduler: true,
        enqueuer: true,
        worker: false,
    };
    /// Only the scheduler (`model-runner scheduler`).
    pub const SCHEDULER: Parts = Parts {
        scheduler: true,
        enqueuer: false,
        worker: false,
    };
    /// Only the enqueuer (`model-runner enqueuer`).
    pub const ENQUEUER: Parts = Parts {
        scheduler: false,
        enqueuer: true,
        worker: false,
    };
}

/// Assembles a [`Runner`]. Every part has a default: in-memory
/// store, queue and sink, the built-in models, the default routing, limits and loop settings,
/// and a worker consuming every queue of the chains that have a source.
#[derive(Debug)]
pub struct RunnerBuilder {
    store: Option<Arc<dyn RunStore>>,
    queue: Option<Arc<dyn RunQueue>>,
    sink: Option<Arc<dyn ResultSink>>,
    sources: HashMap<Chain, Arc<dyn BlockSource>>,
    models: ModelRegistry,
    models_error: Option<EngineError>,
    routing: Routing,
    limits: Limits,
    worker: WorkerConfig,
    enqueuer: EnqueuerConfig,
    scheduler: SchedulerConfig,
    clock: Option<Arc<dyn Clock>>,
    progress_board: Option<Arc<dyn ProgressBoard>>,
}

impl RunnerBuilder {
    /// The wall clock the loops (and the default in-memory store) decide by (default:
    /// [`SystemClock`]). Tests give a [`TokioClock`](crate::clock::TokioClock) and pause tokio's
    /// time.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The run store (default: [`MemoryRunStore`]).
    pub fn store(mut self, store: impl RunStore + 'static) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The run store, shared.
    pub fn store_arc(mut self, store: Arc<dyn RunStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The queue (default: [`MemoryRunQueue`], which only works inside this process).
    pub fn queue(mut self, queue: impl RunQueue + 'static) -> Self {
        self.queue = Some(Arc::new(queue));
        self
    }

    /// The queue, shared.
    pub fn queue_arc(mut self, queue: Arc<dyn RunQueue>) -> Self {
        self.queue = Some(queue);
        self
    }

    /// The record sink (default: [`MemorySink`]).
    pub fn sink(mut self, sink: impl ResultSink + 'static) -> Self {
        self.sink = Some(Arc::new(sink));
        self
    }

    /// The record sink, shared (keep a clone to read a [`MemorySink`] back).
    pub fn sink_arc(mut self, sink: Arc<dyn ResultSink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// The block source of its chain ([`BlockSource::chain`]); a second source of the same
    /// chain replaces the first.
    pub fn source(self, source: impl BlockSource + 'static) -> Self {
        self.source_arc(Arc::new(source))
    }

    /// A block source, shared.
    pub fn source_arc(mut self, source: Arc<dyn BlockSource>) -> Self {
        self.sources.insert(source.chain().clone(), source);
        self
    }

    /// Registers a model beside those already registered (a name taken twice fails
    /// [`build`](Self::build)).
    pub fn model(mut self, model: impl Model + 'static) -> Self {
        if let Err(e) = self.models.register(Arc::new(model))
            && self.models_error.is_none()
        {
            self.models_error = Some(e.into());
        }
        self
    }

    /// Replaces the registry (default: [`builtin`](crate::models::builtin)).
    pub fn models(mut self, models: ModelRegistry) -> Self {
        self.models = models;
        self
    }

    /// Queue routing.
    pub fn routing(mut self, routing: Routing) -> Self {
        self.routing = routing;
        self
    }

    /// Limits every path that makes runs enforces.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Follows a chain's head with a model (run by the scheduler).
    pub fn subscribe(mut self, subscription: RealtimeSubscription) -> Self {
        self.scheduler.realtime.push(subscription);
        self
    }

    /// Worker settings. Left empty, `queues` becomes every queue of the chains with a source.
    pub fn worker_config(mut self, config: WorkerConfig) -> Self {
        self.worker = config;
        self
    }

    /// Where workers publish the live progress of their running runs (default: the
    /// [`WorkerConfig::progress_board`] of [`worker_config`](Self::worker_config), none unless
    /// given), e.g. a [`MemoryProgressBoard`](crate::memory::MemoryProgressBoard) shared with
    /// an API in the same process, or Redis for many processes. Given here, it wins over the
    /// worker config's, whichever is set first.
    pub fn progress_board(mut self, board: Arc<dyn ProgressBoard>) -> Self {
        self.progress_board = Some(board);
        self
    }

    /// Enqueuer settings.
    pub fn enqueuer_config(mut self, config: EnqueuerConfig) -> Self {
        self.enqueuer = config;
        self
    }

    /// Scheduler settings (its `realtime` list is kept alongside [`subscribe`](Self::subscribe)'s).
    pub fn scheduler_config(mut self, mut config: SchedulerConfig) -> Self {
        config.realtime.append(&mut self.scheduler.realtime);
        self.scheduler = config;
        self
    }

    /// The runner, or the first model registration that failed.
    pub fn build(self) -> Result<Runner, EngineError> {
        if let Some(e) = self.models_error {
            return Err(e);
        }
        let clock = self.clock.unwrap_or_else(SystemClock::shared);
        let mut worker = self.worker;
        if let Some(board) = self.progress_board {
            worker.progress_board = Some(board);
        }
        if worker.queues.is_empty() {
            let mut chains: Vec<&Chain> = self.sources.keys().collect();
            chains.sort();
            worker.queues = self.routing.all_queues(chains);
        }
        let deps = EngineDeps {
            // The default store stamps and ends locks on the runner's clock.
            store: self
                .store
                .unwrap_or_else(|| Arc::new(MemoryRunStore::with_clock(clock.clone()))),
            queue: self
                .queue
                .unwrap_or_else(|| Arc::new(MemoryRunQueue::new())),
            sink: self.sink.unwrap_or_else(|| Arc::new(MemorySink::new())),
            sources: self.sources,
            models: Arc::new(self.models),
            routing: self.routing,
            limits: self.limits,
            clock,
        };
        // Each subscription needs its chain's source and a model that serves the chain.
        for sub in &self.scheduler.realtime {
            deps.source(&sub.chain)?;
            deps.models.get_for(&sub.model, &sub.chain)?;
        }
        Ok(Runner {
            deps,
            worker,
            enqueuer: self.enqueuer,
            scheduler: self.scheduler,
            worker_stats: Arc::default(),
        })
    }
}

/// A runner: the ports, the models and the settings of the three loops, ready to run any of
/// them inside the caller's tokio runtime. Cheap to clone.
///
/// ```
/// use model_runner_core::prelude::*;
/// use model_runner_core::memory::MemoryBlockSource;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let chain = Chain::new("ethereum")?;
/// // Ten empty blocks; use a real source (files, JSON-RPC, devnet) from model-runner-adapters.
/// let source = MemoryBlockSource::with_empty_blocks(chain.clone(), 0..=9);
/// // In-memory store, queue and sink unless you give others; the built-in models are registered.
/// let runner = Runner::builder().source(source).build()?;
/// let created = runner.backfill("block_stats", &chain, BlockRange::new(0, 9)?, 5).await?;
/// let runs = runner.run_until_done(&created).await?;
/// assert!(runs.iter().all(|r| r.state == RunState::Succeeded));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Runner {
    deps: EngineDeps,
    worker: WorkerConfig,
    enqueuer: EnqueuerConfig,
    scheduler: SchedulerConfig,
    worker_stats: Arc<WorkerStats>,
}

impl Runner {
    /// A builder with every default.
    pub fn builder() -> RunnerBuilder {
        RunnerBuilder {
            store: None,
            queue: None,
            sink: None,
            sources: HashMap::new(),
            models: crate::models::builtin(),
            models_error: None,
            routing: Routing::default(),
            limits: Limits::default(),
            worker: WorkerConfig {
                queues: Vec::new(),
                ..Default::default()
            },
            enqueuer: EnqueuerConfig::default(),
            scheduler: SchedulerConfig::default(),
            clock: None,
            progress_board: None,
        }
    }

    /// A builder over ports and models already assembled (an application's own
    /// [`EngineDeps`], e.g. connected from URLs); the loop settings keep their defaults.
    pub fn builder_from(deps: EngineDeps) -> RunnerBuilder {
        let EngineDeps {
            store,
            queue,
            sink,
            sources,
            models,
            routing,
            limits,
            clock,
        } = deps;
        RunnerBuilder {
            store: Some(store),
            queue: Some(queue),
            sink: Some(sink),
            sources,
            models: (*models).clone(),
            routing,
            limits,
            clock: Some(clock),
            ..Self::builder()
        }
    }

    /// The ports and models, for the engine's free functions and the API.
    pub fn deps(&self) -> &EngineDeps {
        &self.deps
    }

    /// The worker's live counters (runs, blocks, records), summed over every [`run`](Self::run)
    /// of this runner and its clones.
    pub fn worker_stats(&self) -> Arc<WorkerStats> {
        self.worker_stats.clone()
    }

    /// Submits a backfill of `model` over `range` of `chain`, one run per `chunk_size` blocks
    /// ([`DEFAULT_MAX_ATTEMPTS`](crate::submission::DEFAULT_MAX_ATTEMPTS) attempts each); the runs are `pending` until the enqueuer publishes them.
    pub async fn backfill(
        &self,
        model: &str,
        chain: &Chain,
        range: BlockRange,
        chunk_size: u64,
    ) -> Result<Vec<RunId>, EngineError> {
        let created = submit_backfill(
            &self.deps,
            BackfillRequest::new(model, chain.clone(), range, chunk_size),
        )
        .await?;
        Ok(created.runs.iter().map(|r| r.id).collect())
    }

    /// Runs `parts` until `shutdown` is cancelled (the application's own signal), then waits for
    /// them to stop (the worker finishes or hands back its runs). Returns the worker's error if
    /// it could not start or stopped on one.
    pub async fn run(&self, parts: Parts, shutdown: CancellationToken) -> Result<(), EngineError> {
        let mut tasks = tokio::task::JoinSet::new();
        if parts.scheduler {
            let scheduler = Scheduler::new(self.deps.clone(), self.scheduler.clone());
            let stop = shutdown.clone();
            tasks.spawn(async move {
                scheduler.run(stop).await;
                Ok(())
            });
        }
        if parts.enqueuer {
            let enqueuer = Enqueuer::new(self.deps.clone(), self.enqueuer.clone());
            let stop = shutdown.clone();
            tasks.spawn(async move {
                enqueuer.run(stop).await;
                Ok(())
            });
        }
        if parts.worker {
            let worker = Worker::new(self.deps.clone(), self.worker.clone())
                .with_stats(self.worker_stats.clone());
            tasks.spawn(worker.run(shutdown.clone()));
        }
        let mut result = Ok(());
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = loop_result(joined) {
                // One loop failing stops the others: a runner half up is worse than none.
                shutdown.cancel();
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Runs every loop until each of `runs` is settled (succeeded, cancelled, or failed with
    /// no attempt left), then stops them; returns the runs as stored. For scripts, tests and
    /// one-off backfills.
    pub async fn run_until_done(&self, runs: &[RunId]) -> Result<Vec<ModelRun>, EngineError> {
        let stop = CancellationToken::new();
        let mut loops = {
            let (runner, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move { runner.run(Parts::ALL, stop).await })
        };
        let outcome = tokio::select! {
            r = self.wait_settled(runs) => r,
            // The loops ended before the runs did: a worker that could not start, say.
            r = &mut loops => {
                return Err(loop_result(r).err().unwrap_or_else(|| {
                    EngineError::InvalidInput("the runner stopped before its runs settled".into())
                }));
            }
        };
        stop.cancel();
        loop_result(loops.await)?;
        outcome
    }

    async fn wait_settled(&self, runs: &[RunId]) -> Result<Vec<ModelRun>, EngineError> {
        // A settled run stays settled: each pass fetches only the runs not yet seen settled.
        let mut out = Vec::with_capacity(runs.len());
        loop {
            for id in &runs[out.len()..] {
                let run = self.deps.store.get(*id).await?;
                if !run.is_settled() {
                    break;
                }
                out.push(run);
            }
            if out.len() == runs.len() {
                return Ok(out);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn loop_result(
    joined: Result<Result<(), EngineError>, tokio::task::JoinError>,
) -> Result<(), EngineError> {
    joined.unwrap_or_else(|e| {
        Err(EngineError::InvalidInput(format!(
            "a runner loop panicked: {e}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBlockSource;
    use crate::run::RunState;

    fn eth() -> Chain {
        Chain::new("ethereum").unwrap()
    }

    #[test]
    fn build_names_what_is_wrong() {
        let err = Runner::builder()
            .model(crate::models::Erc20Transfers)
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("erc20_transfers"), "{err}");
        let err = Runner::builder()
            .subscribe(RealtimeSubscription::new("block_stats", eth()))
            .build()
            .unwrap_err();
        assert!(
            err.to_string().contains("unknown chain \"ethereum\""),
            "{err}"
        );
        let err = Runner::builder()
            .source(MemoryBlockSource::with_empty_blocks(eth(), 0..=1))
            .subscribe(RealtimeSubscription::new("no_such_model", eth()))
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("no_such_model"), "{err}");
    }

    #[test]
    fn the_worker_consumes_every_queue_of_the_chains_with_a_source() {
        let runner = Runner::builder()
            .source(MemoryBlockSource::with_empty_blocks(eth(), 0..=1))
            .build()
            .unwrap();
        assert_eq!(
            runner.worker.queues,
            Routing::default().all_queues([&eth()])
        );
    }

    /// Fails the first attempt of every run, then counts its blocks.
    #[derive(Debug, Default)]
    struct FailsOnce(std::sync::Mutex<std::collections::HashSet<RunId>>);

    #[async_trait::async_trait]
    impl crate::model::Model for FailsOnce {
        fn spec(&self) -> crate::model::ModelSpec {
            crate::model::ModelSpec::new("fails_once", "1", crate::chain::ModelKind::Nonreads)
        }
        async fn run(
            &self,
            ctx: &crate::model::ModelContext,
            blocks: &[crate::data::Block],
        ) -> Result<Vec<crate::model::Record>, crate::model::ModelError> {
            if self.0.lock().unwrap().insert(ctx.run_id) {
                return Err(crate::model::ModelError::Failed("first attempt".into()));
            }
            Ok(blocks
                .iter()
                .map(|b| ctx.record(b, 0, serde_json::json!({ "n": b.number })))
                .collect())
        }
    }

    /// The retry waits its backoff (5 s by default) on the runner's clock: on paused time the
    /// run settles at once, five seconds later by the clock.
    #[tokio::test(start_paused = true)]
    async fn a_retry_waits_its_backoff_on_the_runners_clock() {
        let runner = Runner::builder()
            .clock(crate::clock::TokioClock::shared())
            .source(MemoryBlockSource::with_empty_blocks(eth(), 0..=9))
            .model(FailsOnce::default())
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let runs = runner
            .backfill("fails_once", &eth(), BlockRange::new(0, 9).unwrap(), 10)
            .await
            .unwrap();
        let done = runner.run_until_done(&runs).await.unwrap();
        assert_eq!((done[0].state, done[0].attempt), (RunState::Succeeded, 2));
        assert!(
            done[0].updated_at - done[0].created_at >= chrono::Duration::seconds(4),
            "the second attempt started after the backoff: {:?}",
            done[0]
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "without waiting for it"
        );
    }

    #[tokio::test]
    async fn run_stops_on_the_applications_signal_and_backfills_settle() {
        let sink = Arc::new(MemorySink::new());
        let runner = Runner::builder()
            .source(MemoryBlockSource::with_empty_blocks(eth(), 0..=49))
            .sink_arc(sink.clone())
            .build()
            .unwrap();
        let runs = runner
            .backfill("block_stats", &eth(), BlockRange::new(0, 49).unwrap(), 10)
            .await
            .unwrap();
        assert_eq!(runs.len(), 5);
        let done = runner.run_until_done(&runs).await.unwrap();
        assert!(done.iter().all(|r| r.state == RunState::Succeeded));
        assert_eq!(sink.records(&crate::topic_name("dev", &eth())).len(), 50);
        // Embedded: the loops run until the application's own shutdown signal.
        let stop = CancellationToken::new();
        let running = tokio::spawn({
            let (runner, stop) = (runner.clone(), stop.clone());
            async move { runner.run(Parts::ALL, stop).await }
        });
        stop.cancel();
        running.await.unwrap().unwrap();
    }
}
