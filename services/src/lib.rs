//! The services behind the `model-runner` binary, as library functions: build the engine from
//! adapter URLs ([`build_deps`]), run any subset of its loops ([`run_all`]) and report progress.
//! `main.rs` only parses flags and calls these.

pub mod api;
pub mod config;
#[cfg(feature = "sentry")]
pub mod error_reporting;
pub mod metrics;
/// The one set of submission defaults and caps, from core (the API, the CLI flags and the
/// config file use it).
pub use model_runner_core::submission;
#[cfg(feature = "otlp")]
pub mod trace_export;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use model_runner_adapters::connect::{
    queue_from_url, sink_from_url, source_from_url, store_from_url,
};
use model_runner_core::engine::{
    BackfillRequest, CancellationToken, EngineDeps, EnqueuerConfig, Parts, RealtimeSubscription,
    RetryPolicy, Runner, SchedulerConfig, WorkerConfig, WorkerStats, submit_backfill,
};
use model_runner_core::ports::{ProgressBoard, RunFilter, RunProgress, RunStore};
use model_runner_core::{BlockRange, Chain, ModelRun, Routing, RunId, RunMode, RunState};

/// `CHAIN:MODEL:START-END`, as given to `--backfill`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillSpec {
    /// Chain.
    pub chain: Chain,
    /// Model.
    pub model: String,
    /// Blocks.
    pub range: BlockRange,
}

/// Splits a flag's value `CHAIN<sep>REST` into the chain, checked, and the rest; `None` when
/// `sep` is missing.
fn chain_and_rest(s: &str, sep: char) -> Option<Result<(Chain, &str), String>> {
    let (chain, rest) = s.split_once(sep)?;
    Some(chain.parse().map(|c| (c, rest)).map_err(|e| format!("{e}")))
}

impl std::str::FromStr for BackfillSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let expected = || {
            format!(
                "invalid backfill {s:?}: expected CHAIN:MODEL:START-END, e.g. ethereum:erc20_transfers:0-20000"
            )
        };
        let (chain, rest) = chain_and_rest(s, ':').ok_or_else(expected)??;
        let (model, range) = rest.split_once(':').ok_or_else(expected)?;
        Ok(Self {
            chain,
            model: model.to_owned(),
            range: range.parse().map_err(|e| format!("{e}"))?,
        })
    }
}

/// `CHAIN:MODEL`, as given to `--realtime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealtimeSpec {
    /// Chain.
    pub chain: Chain,
    /// Model.
    pub model: String,
    /// Blocks to stay behind the head; `None`: the command's default.
    pub confirmations: Option<u64>,
    /// Deepest reorganisation followed; `None`: the command's default.
    pub max_reorg_depth: Option<u64>,
    /// Longest realtime run; `None`: the default.
    pub max_blocks_per_run: Option<u64>,
    /// Queue for its runs instead of the routed one; `None`: routed.
    pub queue: Option<String>,
}

impl std::str::FromStr for RealtimeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (chain, model) = chain_and_rest(s, ':').ok_or_else(|| {
            format!(
                "invalid realtime subscription {s:?}: expected CHAIN:MODEL, e.g. ethereum:block_stats"
            )
        })??;
        Ok(Self {
            chain,
            model: model.to_owned(),
            confirmations: None,
            max_reorg_depth: None,
            max_blocks_per_run: None,
            queue: None,
        })
    }
}

impl RealtimeSpec {
    /// The engine's subscription: this spec's settings where it has them, else
    /// `confirmations` and `max_reorg_depth` (the command's defaults), else the engine's.
    pub fn subscription(
        &self,
        confirmations: Option<u64>,
        max_reorg_depth: Option<u64>,
    ) -> RealtimeSubscription {
        let defaults = RealtimeSubscription::new(self.model.clone(), self.chain.clone());
        RealtimeSubscription {
            confirmations: self
                .confirmations
                .or(confirmations)
                .unwrap_or(defaults.confirmations),
            max_reorg_depth: self
                .max_reorg_depth
                .or(max_reorg_depth)
                .unwrap_or(defaults.max_reorg_depth),
            max_blocks_per_run: self
                .max_blocks_per_run
                .unwrap_or(defaults.max_blocks_per_run),
            queue: self.queue.clone(),
            ..defaults
        }
    }
}

/// `NAME=URL`, as given to `--chain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSpec {
    /// Chain.
    pub chain: Chain,
    /// Block source URL.
    pub url: String,
}

impl std::str::FromStr for ChainSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (chain, url) = chain_and_rest(s, '=').ok_or_else(|| {
            format!(
                "invalid chain {s:?}: expected NAME=URL, e.g. ethereum=devnet:// or ethereum=file://./blocks"
            )
        })??;
        Ok(Self {
            chain,
            url: url.to_owned(),
        })
    }
}

/// Where the adapters are.
#[derive(Debug, Clone)]
pub struct AdapterUrls {
    /// Run store.
    pub store: String,
    /// Queue.
    pub queue: String,
    /// Sink.
    pub sink: String,
    /// Block source per chain.
    pub chains: Vec<ChainSpec>,
    /// Apply store migrations on start.
    pub migrate: bool,
}

impl AdapterUrls {
    /// Refuses in-process adapters for a command that runs as one process of several
    /// (`scheduler`, `enqueuer`, `worker`, `backfill`): a `memory://` queue or a `memory://` /
    /// `sqlite::memory:` store lives and dies with this process, so the other processes would
    /// never see its runs or messages (an enqueuer would mark runs `queued` in a queue no worker
    /// can read). `queue` says whether the command uses the queue at all.
    pub fn require_shared(&self, command: &str, queue: bool) -> anyhow::Result<()> {
        let store = self.store.trim();
        if store.starts_with("memory:") || store.starts_with("sqlite::memory:") {
            bail!(
                "`model-runner {command}` runs as one process among several, but --store {store} \
                 (MODEL_RUNNER_STORE) lives only inside this process: give a store the other \
                 processes share, e.g. --store postgres://USER@HOST/DB or sqlite://PATH, or run \
                 everything in one process with `model-runner all`"
            );
        }
        if queue && self.queue.trim().starts_with("memory:") {
            bail!(
                "`model-runner {command}` runs as one process among several, but --queue {} \
                 (MODEL_RUNNER_QUEUE, the default) lives only inside this process, so no other \
                 process could read its messages: give a broker, e.g. --queue \
                 amqp://USER:PASS@HOST/%2f, or run everything in one process with \
                 `model-runner all`",
                self.queue.trim()
            );
        }
        Ok(())
    }
}

/// Builds the ports from URLs, with the built-in models (`abi_events` on the store's ABI
/// registry).
pub async fn build_deps(urls: &AdapterUrls) -> anyhow::Result<EngineDeps> {
    let routing = Routing::default();
    let mut sources = HashMap::new();
    for c in &urls.chains {
        let source = source_from_url(c.chain.clone(), &c.url)
            .with_context(|| format!("block source of {}", c.chain))?;
        if sources.insert(c.chain.clone(), source).is_some() {
            bail!("chain {} is configured twice", c.chain);
        }
    }
    let chains: Vec<&Chain> = sources.keys().collect();
    let topology = routing.all_queues(chains);
    let store = connect_store(urls).await?;
    Ok(EngineDeps {
        queue: queue_from_url(&urls.queue, &topology)
            .await
            .context("queue")?,
        sink: sink_from_url(&urls.sink).await.context("sink")?,
        sources,
        // `abi_events` reads the ABI registry of the same store.
        models: Arc::new(model_runner_core::models::builtin_with_store(store.clone())),
        store,
        routing,
        limits: Default::default(),
        clock: model_runner_core::clock::SystemClock::shared(),
    })
}

/// Connects only the run store, migrating it when `urls.migrate` says so: what `migrate`,
/// `runs`, `versions` and `abi` use, so they work while the broker, the sink or a block source
/// is down.
pub async fn connect_store(urls: &AdapterUrls) -> anyhow::Result<Arc<dyn RunStore>> {
    store_from_url(&urls.store, urls.migrate)
        .await
        .context("run store")
}

/// Puts the contract-call cache at `url` (`memory://`, `redis://...`) in front of every block
/// source of `deps`. Only workers call contracts, so only commands that run one connect it.
pub async fn cache_calls(deps: &mut EngineDeps, url: &str) -> anyhow::Result<()> {
    let cache = model_runner_adapters::connect::call_cache_from_url(url)
        .await
        .context("call cache")?;
    for source in deps.sources.values_mut() {
        *source = Arc::new(model_runner_core::ports::CachedCalls::new(
            source.clone(),
            cache.clone(),
        ));
    }
    Ok(())
}

/// Connects the board of live run progress at `url`: `memory://` (the workers and the API of
/// this process) or `redis://...` (every process; feature `redis`). Workers publish their
/// running runs' blocks done there; the API and `runs list/show` read it.
pub async fn connect_progress_board(url: &str) -> anyhow::Result<Arc<dyn ProgressBoard>> {
    model_runner_adapters::connect::progress_board_from_url(url)
        .await
        .context("progress board (--progress)")
}

/// `run` as a JSON object, with `progress` (blocks_done, blocks_total, updated_at, attempt)
/// set to `live` when given, as `runs list/show` print it.
pub fn run_json(run: &ModelRun, live: Option<RunProgress>) -> serde_json::Value {
    let mut value = serde_json::to_value(run).unwrap_or(serde_json::Value::Null);
    if let (Some(object), Some(live)) = (value.as_object_mut(), live) {
        object.insert(
            "progress".into(),
            serde_json::to_value(live).unwrap_or(serde_json::Value::Null),
        );
    }
    value
}

/// What `all` runs.
#[derive(Debug, Clone)]
pub struct AllConfig {
    /// Backfills to submit (idempotently: a restart resumes them).
    pub backfills: Vec<BackfillSpec>,
    /// Blocks per backfill run.
    pub chunk_size: u64,
    /// Realtime subscriptions.
    pub realtime: Vec<RealtimeSpec>,
    /// Blocks realtime stays behind the head where a subscription does not say; `None`: each
    /// chain's [`default_confirmations`](Chain::default_confirmations).
    pub confirmations: Option<u64>,
    /// Deepest chain reorganisation a --realtime subscription follows; `None`:
    /// [`DEFAULT_MAX_REORG_DEPTH`](model_runner_core::engine::DEFAULT_MAX_REORG_DEPTH).
    pub max_reorg_depth: Option<u64>,
    /// Worker settings (its queues default to every queue of the configured chains).
    pub worker: WorkerConfig,
    /// Scheduler tick.
    pub tick: Duration,
    /// Attempts per run.
    pub max_attempts: u32,
    /// Progress line interval; `None` for no progress output.
    pub progress: Option<Duration>,
    /// Keep the engine running after the backfills are done (e.g. while an API accepts new
    /// runs), until `shutdown`.
    pub keep_running: bool,
}

impl Default for AllConfig {
    fn default() -> Self {
        Self {
            backfills: Vec::new(),
            chunk_size: submission::DEFAULT_CHUNK_SIZE,
            realtime: Vec::new(),
            confirmations: None,
            max_reorg_depth: None,
            worker: WorkerConfig::default(),
            tick: Duration::from_millis(500),
            max_attempts: submission::DEFAULT_MAX_ATTEMPTS,
            progress: Some(Duration::from_secs(2)),
            keep_running: false,
        }
    }
}

/// The result of `all`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Runs of the submitted backfills by final state.
    pub backfill_runs: HashMap<RunState, u64>,
    /// Blocks of succeeded runs (all modes).
    pub blocks: u64,
    /// Records delivered.
    pub records: u64,
    /// Whether every backfill run succeeded.
    pub all_succeeded: bool,
}

/// Runs scheduler, enqueuer and worker in one process. With only backfills it returns once
/// every backfill run is settled ([`ModelRun::is_settled`](model_runner_core::ModelRun::is_settled):
/// succeeded, cancelled, or failed or expired with no attempt left); with realtime subscriptions or `keep_running` it runs until
/// `shutdown`.
pub async fn run_all(
    deps: EngineDeps,
    config: AllConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<Summary> {
    let started = Instant::now();
    // The worker declares them too; doing it first turns an invalid schema into an error here
    // instead of a worker that stops while this waits for its backfills.
    deps.declare_schemas()
        .await
        .context("declaring the models' record schemas to the sink")?;
    let mut outstanding: HashSet<RunId> = HashSet::new();
    let mut backfill_ids = Vec::new();
    for b in &config.backfills {
        let created = submit_backfill(
            &deps,
            BackfillRequest {
                model: b.model.clone(),
                chain: b.chain.clone(),
                range: b.range,
                chunk_size: config.chunk_size,
                mode: RunMode::Backfill,
                adhoc_queue: None,
                max_attempts: config.max_attempts,
                // The same backfill given again (e.g. after a restart) resumes its runs.
                idempotency_key: Some(format!(
                    "cli:{}:{}:{}:{}",
                    b.chain, b.model, b.range, config.chunk_size
                )),
            },
        )
        .await
        .with_context(|| format!("submitting backfill {}:{}:{}", b.chain, b.model, b.range))?;
        eprintln!(
            "backfill {}:{}:{} -> {} runs of up to {} blocks{}",
            b.chain,
            b.model,
            b.range,
            created.runs.len(),
            config.chunk_size,
            if created.created { "" } else { " (resumed)" }
        );
        for r in &created.runs {
            backfill_ids.push(r.id);
            if !r.is_settled() {
                outstanding.insert(r.id);
            }
        }
    }

    let realtime: Vec<RealtimeSubscription> = config
        .realtime
        .iter()
        .map(|r| RealtimeSubscription {
            max_attempts: config.max_attempts,
            ..r.subscription(config.confirmations, config.max_reorg_depth)
        })
        .collect();
    let follow = !realtime.is_empty() || config.keep_running;
    // The runner checks each subscription's model and source, and gives the worker every
    // queue of the chains with a source when none is configured.
    let runner = Runner::builder_from(deps.clone())
        .scheduler_config(SchedulerConfig {
            tick: config.tick,
            realtime,
            retry: config.worker.retry,
            ..Default::default()
        })
        .enqueuer_config(EnqueuerConfig::default())
        .worker_config(config.worker.clone())
        .build()?;
    let stats = runner.worker_stats();

    let loops = shutdown.child_token();
    let mut running = tokio::spawn({
        let (runner, loops) = (runner.clone(), loops.clone());
        async move { runner.run(Parts::ALL, loops).await }
    });

    let mut report = tokio::time::interval(config.progress.unwrap_or(Duration::from_secs(3600)));
    report.tick().await;
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    let mut last = (Instant::now(), 0u64);
    let stopped_early = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break None,
            // A loop that stops on its own (the worker could not start, or failed) ends `all`
            // with its error instead of waiting for runs nobody will execute.
            joined = &mut running => break Some(joined),
            _ = report.tick(), if config.progress.is_some() => {
                last = print_progress(&deps, &stats, started, last).await;
            }
            // A run recorded succeeded wakes the check at once; the poll catches the rest
            // (failures, runs finished by other processes).
            _ = stats.succeeded.notified(), if !follow => {
                if backfills_done(&*deps.store, &mut outstanding).await? {
                    break None;
                }
            }
            _ = poll.tick(), if !follow => {
                if backfills_done(&*deps.store, &mut outstanding).await? {
                    break None;
                }
            }
        }
    };
    loops.cancel();
    let joined = match stopped_early {
        Some(joined) => joined,
        None => running.await,
    };
    joined.context("the engine's loops")??;

    let mut summary = Summary {
        blocks: stats.blocks.load(Ordering::Relaxed),
        records: stats.records.load(Ordering::Relaxed),
        ..Default::default()
    };
    for id in &backfill_ids {
        let run = deps.store.get(*id).await?;
        *summary.backfill_runs.entry(run.state).or_default() += 1;
    }
    summary.all_succeeded = summary
        .backfill_runs
        .iter()
        .all(|(s, _)| *s == RunState::Succeeded);
    if config.progress.is_some() {
        print_summary(&summary, started.elapsed(), backfill_ids.len());
    }
    Ok(summary)
}

async fn backfills_done(
    store: &dyn RunStore,
    outstanding: &mut HashSet<RunId>,
) -> anyhow::Result<bool> {
    let ids: Vec<RunId> = outstanding.iter().copied().collect();
    for id in ids {
        // Settled, not merely idle: a failed run with attempts left may still be retried (by
        // the scheduler when it is due, or by a user when it has no retry time), so `all` waits.
        if store.get(id).await?.is_settled() {
            outstanding.remove(&id);
        } else {
            // Runs finish roughly in order: stop at the first unfinished one.
            return Ok(false);
        }
    }
    Ok(outstanding.is_empty())
}

async fn print_progress(
    deps: &EngineDeps,
    stats: &WorkerStats,
    started: Instant,
    (at, blocks_then): (Instant, u64),
) -> (Instant, u64) {
    let blocks = stats.blocks.load(Ordering::Relaxed);
    let rate = (blocks - blocks_then) as f64 / at.elapsed().as_secs_f64().max(1e-3);
    let counts = deps
        .store
        .count_by_state(&RunFilter::default())
        .await
        .unwrap_or_default();
    let states: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    eprintln!(
        "[{:>6.1}s] runs: {} | blocks modeled: {blocks} ({rate:.0}/s) | records: {}",
        started.elapsed().as_secs_f64(),
        if states.is_empty() {
            "none".into()
        } else {
            states.join(", ")
        },
        stats.records.load(Ordering::Relaxed),
    );
    (Instant::now(), blocks)
}

fn print_summary(s: &Summary, elapsed: Duration, runs: usize) {
    let mut states: Vec<String> = s
        .backfill_runs
        .iter()
        .map(|(st, n)| format!("{n} {st}"))
        .collect();
    states.sort();
    eprintln!(
        "done in {:.1}s: {runs} backfill runs ({}), {} blocks modeled ({:.0} blocks/s), {} records delivered",
        elapsed.as_secs_f64(),
        states.join(", "),
        s.blocks,
        s.blocks as f64 / elapsed.as_secs_f64().max(1e-3),
        s.records,
    );
}

/// The retry policy the CLI uses: quick first retries, as a local user expects.
pub fn cli_retry() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_secs(1),
        max: Duration::from_secs(300),
        jitter: 0.2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model_runner_core::ports::CreateRuns;
    use model_runner_core::ports::RunStoreExt;
    use model_runner_core::{ModelKind, NewRun, RunEvent};

    /// A run of `max_attempts` that failed its first attempt with no retry time: the worker
    /// could not say when to retry, yet attempts remain, so the scheduler will still retry it.
    async fn failed_without_retry_time(store: &dyn RunStore, max_attempts: u32) -> RunId {
        let created = store
            .create_runs(CreateRuns {
                runs: vec![NewRun {
                    model: "block_stats".into(),
                    model_version: "1".into(),
                    chain: "ethereum".parse().unwrap(),
                    range: BlockRange::new(0, 9).unwrap(),
                    mode: RunMode::Backfill,
                    kind: ModelKind::Nonreads,
                    queue: "q".into(),
                    max_attempts,
                }],
                idempotency_key: None,
            })
            .await
            .unwrap();
        let id = created.runs[0].id;
        let owner = "w".to_owned();
        let lease_until = chrono::Utc::now() + chrono::Duration::minutes(1);
        let steps = [
            (RunState::Pending, RunEvent::Enqueue),
            (
                RunState::Queued,
                RunEvent::Start {
                    owner: owner.clone(),
                    lease_until,
                },
            ),
            (
                RunState::Running,
                RunEvent::Fail {
                    owner,
                    error: "boom".into(),
                    retry_at: None,
                },
            ),
        ];
        let mut run = None;
        for (state, event) in steps {
            run = Some(store.transition(id, state, 1, event).await.unwrap());
        }
        let run = run.unwrap();
        assert_eq!((run.state, run.next_attempt_at), (RunState::Failed, None));
        id
    }

    /// `all` waits for a failed run that still has attempts, even without `next_attempt_at`;
    /// it stops waiting for one that has none left.
    #[tokio::test]
    async fn backfills_are_done_only_when_every_run_is_settled() {
        let store = model_runner_core::memory::MemoryRunStore::new();
        let retried = failed_without_retry_time(&store, 3).await;
        let mut outstanding = HashSet::from([retried]);
        assert!(
            !backfills_done(&store, &mut outstanding).await.unwrap(),
            "a failed run with attempts left is not done"
        );
        assert_eq!(outstanding.len(), 1);

        let last = failed_without_retry_time(&store, 1).await;
        let mut outstanding = HashSet::from([last]);
        assert!(backfills_done(&store, &mut outstanding).await.unwrap());
        assert!(outstanding.is_empty());
    }

    /// A queue that publishes but cannot be consumed: the worker stops at its start.
    #[derive(Debug, Default)]
    struct NoConsumers(model_runner_core::memory::MemoryRunQueue);

    #[async_trait::async_trait]
    impl model_runner_core::ports::RunQueue for NoConsumers {
        async fn publish(
            &self,
            queue: &str,
            messages: &[model_runner_core::ports::RunMessage],
        ) -> Result<(), model_runner_core::ports::QueueError> {
            self.0.publish(queue, messages).await
        }
        async fn consume(
            &self,
            queue: &str,
            _prefetch: u16,
        ) -> Result<Box<dyn model_runner_core::ports::Consumer>, model_runner_core::ports::QueueError>
        {
            Err(model_runner_core::ports::QueueError::InvalidQueue {
                name: queue.to_owned(),
                reason: "no consumer for it here".into(),
            })
        }
        fn is_durable(&self) -> bool {
            false
        }
    }

    /// A worker that stops on its own ends `all` with its error; `all` waited for the
    /// backfill's runs forever before, polling for runs no worker would execute.
    #[tokio::test]
    async fn all_ends_with_the_error_of_a_worker_that_stopped() {
        let chain = Chain::new("ethereum").unwrap();
        let deps = model_runner_core::engine::Runner::builder()
            .source(
                model_runner_core::memory::MemoryBlockSource::with_empty_blocks(
                    chain.clone(),
                    0..=9,
                ),
            )
            .queue(NoConsumers::default())
            .build()
            .unwrap()
            .deps()
            .clone();
        let config = AllConfig {
            backfills: vec!["ethereum:block_stats:0-9".parse().unwrap()],
            progress: None,
            ..Default::default()
        };
        let ended = tokio::time::timeout(
            Duration::from_secs(60),
            run_all(deps, config, CancellationToken::new()),
        )
        .await
        .expect("all returns when its worker stops");
        let err = format!("{:#}", ended.unwrap_err());
        assert!(err.contains("no consumer for it here"), "{err}");
    }

    #[test]
    fn specs_parse_with_clear_errors() {
        let b: BackfillSpec = "ethereum:erc20_transfers:0-20000".parse().unwrap();
        assert_eq!(b.range, BlockRange::new(0, 20000).unwrap());
        assert!(
            "ethereum:erc20"
                .parse::<BackfillSpec>()
                .unwrap_err()
                .contains("CHAIN:MODEL:START-END")
        );
        assert!(
            "Eth:m:1-2"
                .parse::<BackfillSpec>()
                .unwrap_err()
                .contains("invalid chain name")
        );
        assert!(
            "ethereum:m:9-1"
                .parse::<BackfillSpec>()
                .unwrap_err()
                .contains("start is after end")
        );
        assert!(
            "ethereum"
                .parse::<RealtimeSpec>()
                .unwrap_err()
                .contains("CHAIN:MODEL")
        );
        let c: ChainSpec = "matic=devnet://?seed=2".parse().unwrap();
        assert_eq!(c.url, "devnet://?seed=2");
        assert!("devnet://".parse::<ChainSpec>().is_err());
    }

    /// A subscription's own settings win over the command's, which win over the engine's.
    #[test]
    fn subscriptions_take_their_own_then_the_commands_then_the_engines_settings() {
        let spec: RealtimeSpec = "matic:block_stats".parse().unwrap();
        let engine = spec.subscription(None, None);
        assert_eq!((engine.confirmations, engine.max_reorg_depth), (128, 128));
        let command = spec.subscription(Some(5), Some(32));
        assert_eq!((command.confirmations, command.max_reorg_depth), (5, 32));
        let own = RealtimeSpec {
            confirmations: Some(7),
            max_reorg_depth: Some(9),
            ..spec
        }
        .subscription(Some(5), Some(32));
        assert_eq!((own.confirmations, own.max_reorg_depth), (7, 9));
    }
}
