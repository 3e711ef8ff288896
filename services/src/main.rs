//! `model-runner`: schedule, queue and execute models over chain data.
//!
//! This file only parses flags, sets up logging and calls the library (`model_runner::*`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use model_runner::api::{ApiAuth, ApiConfig, ApiState};
use model_runner::config::ConfigFile;
use model_runner::submission;
use model_runner::{
    AdapterUrls, AllConfig, BackfillSpec, ChainSpec, RealtimeSpec, build_deps, cache_calls,
    cli_retry, connect_progress_board, connect_store, run_all, run_json,
};
use model_runner_core::engine::{
    BackfillRequest, CancellationToken, Parts, Runner, SchedulerConfig, WorkerConfig,
    submit_backfill,
};
use model_runner_core::ports::{ContractRef, ProgressBoard, ProgressBoardExt, RunFilter};
use model_runner_core::{Chain, ModelRun, RunId, RunMode, RunState};

/// Schedule, queue and execute models over blockchain data.
///
/// Every component can run alone (`scheduler`, `enqueuer`, `worker`) against shared servers,
/// or all together in one process (`all`). Adapters are chosen by URL; the defaults are embedded
/// (SQLite file, in-process queue, JSON-lines files, the devnet demo chain), so
///
///   model-runner all --backfill ethereum:erc20_transfers:0-20000
///
/// works with no server at all.
///
/// Every flag also reads the environment variable shown next to it ([env: ...]); a flag given on
/// the command line wins. The adapter flags (--store, --queue, --sink, --chain, --env,
/// --no-migrate) apply to every command and may come before or after it.
#[derive(Debug, Parser)]
#[command(
    name = "model-runner",
    version,
    about,
    long_about,
    verbatim_doc_comment,
    after_help = EXAMPLES
)]
struct Cli {
    #[command(flatten)]
    adapters: AdapterFlags,
    #[command(flatten)]
    ops: OpsFlags,
    #[command(subcommand)]
    command: Command,
}

const EXAMPLES: &str = "\
Examples:
  # Backfill 20,000 devnet blocks in one process (SQLite file, JSON-lines sink), then exit
  model-runner all --backfill ethereum:erc20_transfers:0-20000

  # Follow the head and serve the HTTP API until Ctrl-C
  MODEL_RUNNER_API_TOKENS=secret model-runner all --realtime ethereum:block_stats --api-addr 127.0.0.1:8080

  # Distributed: one component per process against shared servers
  export MODEL_RUNNER_STORE=postgres://runner@db/runs MODEL_RUNNER_QUEUE=amqp://runner:secret@mq/%2f
  model-runner migrate
  model-runner scheduler --realtime ethereum:block_stats
  model-runner enqueuer
  model-runner worker --concurrency 8
  model-runner backfill ethereum:erc20_transfers:17000000-17100000 --chunk-size 500

  # Inspect runs
  model-runner runs list --state failed --of-chain ethereum
  model-runner runs show 0192f5c4-7a1e-7cc0-9a5e-3f3b1c2d4e5f

Run `model-runner <COMMAND> --help` for a command's flags and examples.";

#[derive(Debug, Args)]
#[command(next_help_heading = "Adapters (every command)")]
struct AdapterFlags {
    /// Run store: sqlite://PATH (created if missing), sqlite::memory:, memory:// (both
    /// throw-away) or postgres://USER[:PASS]@HOST[:PORT]/DB (feature `postgres`).
    ///
    /// E.g. --store sqlite:///var/lib/model-runner/runs.db, --store postgres://runner@db/runs
    #[arg(
        long,
        env = "MODEL_RUNNER_STORE",
        default_value = "sqlite://model-runner.db",
        global = true
    )]
    store: String,
    /// Queue: memory:// (in-process: shared only by components of one process, as in `all`) or
    /// amqp[s]://USER:PASS@HOST[:PORT]/VHOST
    /// (RabbitMQ; feature `rabbitmq`).
    ///
    /// E.g. --queue amqp://runner:secret@mq/%2f
    #[arg(
        long,
        env = "MODEL_RUNNER_QUEUE",
        default_value = "memory://",
        global = true
    )]
    queue: String,
    /// Record sink: file://DIR (one JSON-lines file per topic), memory://,
    /// kafka://HOST:PORT[,HOST:PORT][?librdkafka.setting=value] (feature `kafka`),
    /// s3://BUCKET/PREFIX or parquet+file:///DIR (one Parquet file per run; feature `parquet`).
    ///
    /// E.g. --sink kafka://broker1:9092,broker2:9092, --sink s3://lake/model-runner,
    /// --sink parquet+file:///data/records
    #[arg(
        long,
        env = "MODEL_RUNNER_SINK",
        default_value = "file://sink",
        global = true
    )]
    sink: String,
    /// Block source of a chain, NAME=URL; repeat (or separate with commas) for several chains.
    /// URLs: devnet://[?block_time_ms=..&head=..&seed=..&txs=..&logs=..&delay_ms=..] (a generated
    /// demo chain; delay_ms slows every load), file://PATH
    /// (JSON-RPC responses or ethereum-etl exports) or http(s)://NODE (an Ethereum JSON-RPC
    /// node; feature `jsonrpc`). Several nodes of a chain: URL|URL|... (tried in order, failing
    /// over to the next); settings of a node after `#`, never sent to it:
    /// #rps=25&concurrency=4&batch=25&timeout_ms=30000 (the defaults).
    ///
    /// E.g. --chain ethereum=https://eth-node:8545 --chain matic=devnet://?seed=2,
    /// --chain 'ethereum=https://mainnet.infura.io/v3/KEY#rps=10|https://eth-node:8545'
    #[arg(
        long = "chain",
        env = "MODEL_RUNNER_CHAINS",
        value_delimiter = ',',
        default_value = "ethereum=devnet://",
        global = true
    )]
    chains: Vec<ChainSpec>,
    /// Environment prefix of sink topics: records of ethereum go to `<env>-ethereum-sink`.
    #[arg(long, env = "MODEL_RUNNER_ENV", default_value = "dev", global = true)]
    env: String,
    /// Do not apply store migrations on start; apply them with `model-runner migrate` (which
    /// migrates even with this flag). A SQLite store must then exist with its schema up to date.
    #[arg(long, env = "MODEL_RUNNER_NO_MIGRATE", global = true)]
    no_migrate: bool,
    /// The most blocks one run may cover: backfills whose chunks would be larger are refused
    /// (by this CLI and by the API alike), realtime runs are cut at this size. A worker holds a
    /// run's records until it sends them.
    #[arg(
        long,
        env = "MODEL_RUNNER_MAX_BLOCKS_PER_RUN",
        default_value_t = model_runner_core::engine::DEFAULT_MAX_BLOCKS_PER_RUN,
        global = true
    )]
    max_blocks_per_run: u64,
    /// Cache of workers' contract calls (`eth_call` pinned to a block hash): memory:// (this
    /// process, bounded to 64 MiB) or redis://[USER:PASS@]HOST[:PORT][/DB][?prefix=..&ttl_s=..]
    /// (shared by every worker; feature `redis`).
    ///
    /// E.g. --call-cache redis://cache:6379/0
    #[arg(
        long,
        env = "MODEL_RUNNER_CALL_CACHE",
        default_value = "memory://",
        global = true
    )]
    call_cache: String,
    /// Board of live run progress, shared across processes: workers (`worker`, `all`) publish
    /// each running run's blocks done there as its batches complete (at most every 250 ms per
    /// run, kept for a lease), and the API and `runs list` / `runs show` add it to running
    /// runs as `progress`. redis://[USER:PASS@]HOST[:PORT][/DB][?prefix=..] (feature `redis`)
    /// or memory:// (this process only: `all`; a lone `worker` or `api` refuses it). Without
    /// it, `all` keeps one in memory for its own API; other commands show the store's progress
    /// only (updated with each heartbeat). The store stays the source of truth. (Not the
    /// progress lines `all` prints to stderr.)
    ///
    /// E.g. --progress redis://cache:6379/0
    #[arg(
        long = "progress",
        env = "MODEL_RUNNER_PROGRESS",
        value_name = "URL",
        global = true
    )]
    progress: Option<String>,
}

impl AdapterFlags {
    fn urls(&self) -> AdapterUrls {
        AdapterUrls {
            store: self.store.clone(),
            queue: self.queue.clone(),
            sink: self.sink.clone(),
            chains: self.chains.clone(),
            migrate: !self.no_migrate,
        }
    }
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Operations (every command)")]
struct OpsFlags {
    /// Log lines as human-readable text (the default; colours only on a terminal) or as JSON
    /// objects, one per line, for log shippers. The level comes from RUST_LOG (default warn).
    #[arg(
        long,
        env = "MODEL_RUNNER_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text,
        global = true
    )]
    log_format: LogFormat,
    /// Serve Prometheus metrics at http://ADDR/metrics (the API serves /metrics itself).
    #[arg(long, env = "MODEL_RUNNER_METRICS_ADDR", global = true)]
    metrics_addr: Option<SocketAddr>,
    /// A model-runner.toml with the long-lived settings (store, queue, sink, chains with their
    /// confirmations, realtime subscriptions, retry policy, worker settings, caps, API tokens;
    /// `${VAR}` reads an environment variable). Flags and MODEL_RUNNER_* variables override
    /// it. `model-runner config check FILE` validates one.
    #[arg(long, env = "MODEL_RUNNER_CONFIG", global = true, value_name = "FILE")]
    config: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

impl OpsFlags {
    /// Logs to stderr in the chosen format.
    /// Logs to stderr in the chosen format (and exports spans / reports errors when built with
    /// `otlp` / `sentry` and configured); the returned guard flushes the span export on drop.
    fn init_logging(&self) -> Option<Box<dyn std::any::Any>> {
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let fmt = match self.log_format {
            LogFormat::Text => fmt
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .boxed(),
            LogFormat::Json => fmt.json().with_current_span(true).boxed(),
        };
        let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
        #[cfg(feature = "sentry")]
        let registry = registry.with(model_runner::error_reporting::layer());
        #[cfg(feature = "otlp")]
        {
            match model_runner::trace_export::layer() {
                Ok(Some((export, layer))) => {
                    registry.with(layer).init();
                    return Some(Box::new(export));
                }
                Ok(None) => {}
                Err(e) => eprintln!("warning: {e:#}; spans are not exported"),
            }
        }
        registry.init();
        None
    }
}

#[derive(Debug, Args, Clone)]
struct WorkerFlags {
    /// Runs executed at once.
    #[arg(long, env = "MODEL_RUNNER_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,
    /// Worker lease in seconds: a run whose worker stops heartbeating is retried after this.
    #[arg(long, env = "MODEL_RUNNER_LEASE_SECS", default_value_t = 60)]
    lease_secs: u64,
    /// Attempts per run before it ends `failed` and its message is dead-lettered.
    #[arg(long, env = "MODEL_RUNNER_MAX_ATTEMPTS", default_value_t = submission::DEFAULT_MAX_ATTEMPTS, value_parser = max_attempts_flag)]
    max_attempts: u32,
    /// On SIGTERM or Ctrl-C, seconds in-flight runs may take to finish before they are
    /// handed back (to `queued` on the same attempt, their messages requeued for another
    /// worker). Keep it under your orchestrator's kill timeout.
    #[arg(long, env = "MODEL_RUNNER_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    shutdown_grace_secs: u64,
}

impl WorkerFlags {
    fn config(
        &self,
        env: &str,
        queues: Vec<String>,
        retry: model_runner_core::engine::RetryPolicy,
    ) -> WorkerConfig {
        WorkerConfig {
            queues,
            concurrency: self.concurrency.max(1),
            prefetch: (self.concurrency * 2).clamp(1, u16::MAX as usize) as u16,
            lease: Duration::from_secs(self.lease_secs.max(2)),
            heartbeat: Duration::from_secs((self.lease_secs / 4).max(1)),
            retry,
            env: env.to_owned(),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            ..Default::default()
        }
    }
}

/// What a submission (`backfill`, `rerun`) asks for, by the rules of `model_runner::submission`.
#[derive(Debug, Args, Clone)]
struct SubmissionFlags {
    /// Blocks per run.
    #[arg(long, env = "MODEL_RUNNER_CHUNK_SIZE", default_value_t = submission::DEFAULT_CHUNK_SIZE, value_parser = chunk_size_flag)]
    chunk_size: u64,
    /// Attempts per run (at most 100).
    #[arg(long, env = "MODEL_RUNNER_MAX_ATTEMPTS", default_value_t = submission::DEFAULT_MAX_ATTEMPTS, value_parser = max_attempts_flag)]
    max_attempts: u32,
}

/// `--chunk-size`, checked by the rule the API applies.
fn chunk_size_flag(value: &str) -> Result<u64, String> {
    let n = value.parse().map_err(|e| format!("{e}"))?;
    submission::chunk_size(Some(n)).map_err(|e| e.to_string())
}

/// `--max-attempts`, checked by the rule the API applies.
fn max_attempts_flag(value: &str) -> Result<u32, String> {
    let n = value.parse().map_err(|e| format!("{e}"))?;
    submission::max_attempts(Some(n)).map_err(|e| e.to_string())
}

/// The realtime subscriptions `all` and `scheduler` follow.
#[derive(Debug, Args, Clone)]
struct RealtimeFlags {
    /// Follow the head of CHAIN with MODEL, as CHAIN:MODEL; repeatable.
    #[arg(long, env = "MODEL_RUNNER_REALTIME", value_delimiter = ',')]
    realtime: Vec<RealtimeSpec>,
    /// Blocks to stay behind the head (reorg safety) for every --realtime subscription
    /// (default: the chain's own: 12 for ethereum and unknown chains, 128 for
    /// matic/polygon, 15 for bsc; a chain's `confirmations` in the config file too).
    #[arg(long, env = "MODEL_RUNNER_CONFIRMATIONS")]
    confirmations: Option<u64>,
    /// The deepest chain reorganisation a --realtime subscription follows (default 128
    /// blocks; a chain's `max_reorg_depth` in the config file too): the scheduler walks
    /// back over a reorganisation, supersedes the runs of the replaced blocks and models
    /// the new branch; a deeper one stops the subscription with an error instead.
    #[arg(long, env = "MODEL_RUNNER_MAX_REORG_DEPTH")]
    max_reorg_depth: Option<u64>,
}

#[derive(Debug, Args, Clone)]
struct ApiFlags {
    /// Let reads (GET) through without a token. Writes always need a write token: the
    /// comma-separated MODEL_RUNNER_API_TOKENS (read-only tokens: MODEL_RUNNER_API_READ_TOKENS).
    #[arg(long, env = "MODEL_RUNNER_API_OPEN_READS")]
    api_open_reads: bool,
    /// Also serve the account index built by `batch-index` at this root (a directory or
    /// s3://bucket/prefix) under GET /v1/index/accounts/{account} and /v1/index/transactions/{hash}.
    #[arg(long, env = "MODEL_RUNNER_INDEX_ROOT")]
    index_root: Option<String>,
}

impl ApiFlags {
    /// Tokens from the environment, plus the config file's write tokens.
    fn config(&self, write_tokens: Option<&str>) -> ApiConfig {
        let auth = ApiAuth::from_env(self.api_open_reads);
        ApiConfig {
            auth: match write_tokens {
                Some(t) => auth.with_write_tokens(t),
                None => auth,
            },
            ..Default::default()
        }
    }

    async fn state(
        &self,
        deps: model_runner_core::engine::EngineDeps,
        write_tokens: Option<&str>,
    ) -> anyhow::Result<ApiState> {
        let state = ApiState::new(deps, self.config(write_tokens));
        let Some(root) = &self.index_root else {
            return Ok(state);
        };
        let root = batch_index::store::StoreRoot::open(root).context("--index-root")?;
        let reader = batch_index::IndexReader::open(root)
            .await
            .context("opening the account index at --index-root")?;
        Ok(state.with_index(reader))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Everything in one process: submit backfills, follow heads, enqueue and execute.
    ///
    /// With only --backfill it exits once every run is done and prints a summary; with
    /// --realtime it keeps following the chain head until stopped (Ctrl-C / SIGTERM).
    #[command(after_help = "\
Examples:
  model-runner all --backfill ethereum:erc20_transfers:0-20000 --chunk-size 500
  model-runner all --realtime ethereum:block_stats --realtime ethereum:erc20_transfers
  model-runner all --api-addr 127.0.0.1:8080 --api-open-reads")]
    All {
        /// Backfill CHAIN:MODEL:START-END (inclusive); repeatable. Given again after a restart,
        /// the same backfill resumes instead of starting over.
        #[arg(long, env = "MODEL_RUNNER_BACKFILL", value_delimiter = ',')]
        backfill: Vec<BackfillSpec>,
        #[command(flatten)]
        realtime: RealtimeFlags,
        /// Blocks per backfill run.
        #[arg(long, env = "MODEL_RUNNER_CHUNK_SIZE", default_value_t = submission::DEFAULT_CHUNK_SIZE, value_parser = chunk_size_flag)]
        chunk_size: u64,
        #[command(flatten)]
        worker: WorkerFlags,
        /// Also serve the HTTP API on this address; the process then keeps running until stopped.
        #[arg(long, env = "MODEL_RUNNER_API_ADDR")]
        api_addr: Option<SocketAddr>,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Serve the HTTP API (runs, backfills, models, progress; OpenAPI at /openapi.json).
    ///
    /// Writes need a bearer token from MODEL_RUNNER_API_TOKENS (comma-separated); reads also
    /// accept MODEL_RUNNER_API_READ_TOKENS, or no token with --api-open-reads.
    #[command(after_help = "\
Examples:
  MODEL_RUNNER_API_TOKENS=secret model-runner api --api-addr 0.0.0.0:8080
  model-runner api --api-open-reads --index-root s3://indexes/stellar")]
    Api {
        /// Address to listen on.
        #[arg(long, env = "MODEL_RUNNER_API_ADDR", default_value = "127.0.0.1:8080")]
        api_addr: SocketAddr,
        #[command(flatten)]
        api: ApiFlags,
    },
    /// Follow chain heads (realtime runs) and retry runs whose worker vanished.
    #[command(after_help = "\
Example:
  model-runner scheduler --realtime ethereum:block_stats --confirmations 12")]
    Scheduler {
        #[command(flatten)]
        realtime: RealtimeFlags,
        /// Seconds between scheduling passes.
        #[arg(long, env = "MODEL_RUNNER_TICK_SECS", default_value_t = 1)]
        tick_secs: u64,
        /// Seconds a run may stay `queued` before the reconciler publishes its message again
        /// (a message lost to a broker fault or a dead channel would strand it otherwise).
        /// Set it above the longest wait a message may have in a queue behind others: each
        /// republish of a run still waiting adds a duplicate message, which workers drop.
        #[arg(
            long,
            env = "MODEL_RUNNER_RECONCILE_AFTER_SECS",
            default_value_t = 3600
        )]
        reconcile_after_secs: u64,
    },
    /// Publish pending runs to their queues (the outbox relay).
    Enqueuer,
    /// Execute runs from queues.
    #[command(after_help = "\
Example:
  model-runner worker --queues ethereum_realtime_nonreads,ethereum_backfill_nonreads --concurrency 8")]
    Worker {
        /// Queues to consume (default: every queue of the configured chains and backfill_1..4).
        #[arg(long, env = "MODEL_RUNNER_QUEUES", value_delimiter = ',')]
        queues: Vec<String>,
        #[command(flatten)]
        worker: WorkerFlags,
    },
    /// Submit a backfill (or adhoc run set) and print the created run ids.
    ///
    /// Prints one line per run: id, blocks, queue. The runs are executed by workers (`worker`
    /// or `all`) reading the same store and queue.
    #[command(after_help = "\
Examples:
  model-runner backfill ethereum:erc20_transfers:17000000-17100000 --chunk-size 500
  model-runner backfill ethereum:block_stats:0-999 --adhoc --adhoc-queue 2 --idempotency-key fix-42")]
    Backfill {
        /// CHAIN:MODEL:START-END (inclusive), e.g. ethereum:erc20_transfers:0-20000.
        spec: BackfillSpec,
        #[command(flatten)]
        submission: SubmissionFlags,
        /// Submit as adhoc runs to the shared backfill_N pools.
        #[arg(long, env = "MODEL_RUNNER_ADHOC")]
        adhoc: bool,
        /// For adhoc runs, the pool N of backfill_N (default: spread over all).
        #[arg(long, env = "MODEL_RUNNER_ADHOC_QUEUE", requires = "adhoc")]
        adhoc_queue: Option<u32>,
        /// Resubmitting with the same key returns the same runs.
        #[arg(long, env = "MODEL_RUNNER_IDEMPOTENCY_KEY")]
        idempotency_key: Option<String>,
    },
    /// Rerun, with a model's registered version, every block an older version produced.
    ///
    /// After a model's code (and version) changed: creates runs of the registered version over
    /// the ranges the older version's succeeded runs covered, merged (each block once) and less
    /// what the registered version already covers or is about to, in chunks of --chunk-size,
    /// through the normal outbox; records say the version that made them. Prints one line per
    /// run: id, blocks, queue. `versions` shows what each version covers.
    #[command(after_help = "\
Example:
  model-runner rerun --model erc20_transfers --from-version 1.0.0 --chunk-size 500")]
    Rerun {
        /// Model name.
        #[arg(long, env = "MODEL_RUNNER_RERUN_MODEL")]
        model: String,
        /// The older version whose ranges are rerun.
        #[arg(long, env = "MODEL_RUNNER_RERUN_FROM_VERSION")]
        from_version: String,
        /// Only this chain (default: every chain the older version ran on).
        #[arg(
            long = "of-chain",
            env = "MODEL_RUNNER_RERUN_CHAIN",
            value_name = "CHAIN"
        )]
        of_chain: Option<Chain>,
        #[command(flatten)]
        submission: SubmissionFlags,
    },
    /// Which versions of a model cover which blocks: one JSON line per chain and version, with
    /// the merged ranges of its succeeded runs. Only the run store is used.
    Versions {
        /// Model name.
        #[arg(long, env = "MODEL_RUNNER_VERSIONS_MODEL")]
        model: String,
    },
    /// List or show runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Register, list, show or remove contract ABIs (the `abi_events` model's registry).
    ///
    /// Only the run store is used: no broker, sink or chain is connected.
    Abi {
        #[command(subcommand)]
        command: AbiCommand,
    },
    /// Apply the run store's schema migrations and exit.
    ///
    /// Services started with --no-migrate (MODEL_RUNNER_NO_MIGRATE) leave the schema alone;
    /// this applies it, even when that flag is set.
    #[command(after_help = "\
Example:
  model-runner --store postgres://runner@db/runs migrate")]
    Migrate,
    /// Validate a config file, or show the effective configuration (secrets redacted).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Parse and check FILE; every error names its line and column, or the key.
    #[command(after_help = "\
Example:
  model-runner config check deploy/model-runner.toml")]
    Check { file: std::path::PathBuf },
    /// Print the configuration in effect (the file given with --config, overridden by flags and
    /// MODEL_RUNNER_* variables) as TOML, with passwords, keys and tokens replaced by ***.
    #[command(after_help = "\
Example:
  model-runner --config model-runner.toml config show")]
    Show,
}

/// Fills every setting that was left at its default (not given as a flag or environment
/// variable) from the config file.
fn apply_config(cli: &mut Cli, m: &ArgMatches, file: &ConfigFile) {
    let unset = |m: &ArgMatches, id: &str| {
        matches!(
            m.try_get_raw(id).map(|_| m.value_source(id)),
            Ok(None | Some(ValueSource::DefaultValue))
        )
    };
    let a = &mut cli.adapters;
    for (id, slot, value) in [
        ("store", &mut a.store, &file.store),
        ("queue", &mut a.queue, &file.queue),
        ("sink", &mut a.sink, &file.sink),
        ("env", &mut a.env, &file.env),
    ] {
        if unset(m, id)
            && let Some(v) = value
        {
            *slot = v.clone();
        }
    }
    if unset(m, "max_blocks_per_run")
        && let Some(v) = file.max_blocks_per_run
    {
        a.max_blocks_per_run = v;
    }
    if unset(m, "progress")
        && let Some(v) = &file.progress
    {
        a.progress = Some(v.clone());
    }
    if unset(m, "chains") && !file.chains.is_empty() {
        a.chains = file
            .chains
            .iter()
            .filter_map(|(name, c)| format!("{name}={}", c.url).parse().ok())
            .collect();
    }
    let sub = m.subcommand().map(|(_, sm)| sm);
    let realtime_of_file = |confirmations_given: bool, depth_given: bool| -> Vec<RealtimeSpec> {
        file.realtime
            .iter()
            .filter_map(|r| {
                let mut spec: RealtimeSpec = format!("{}:{}", r.chain, r.model).parse().ok()?;
                spec.max_blocks_per_run = r.max_blocks_per_run;
                spec.queue = r.queue.clone();
                if !confirmations_given {
                    spec.confirmations = file.chains.get(&r.chain).and_then(|c| c.confirmations);
                }
                if !depth_given {
                    spec.max_reorg_depth =
                        file.chains.get(&r.chain).and_then(|c| c.max_reorg_depth);
                }
                Some(spec)
            })
            .collect()
    };
    let worker_of_file = |w: &mut WorkerFlags, sm: &ArgMatches| {
        let Some(f) = &file.worker else { return };
        if unset(sm, "concurrency")
            && let Some(v) = f.concurrency
        {
            w.concurrency = v;
        }
        if unset(sm, "lease_secs")
            && let Some(v) = f.lease_secs
        {
            w.lease_secs = v;
        }
        if unset(sm, "shutdown_grace_secs")
            && let Some(v) = f.shutdown_grace_secs
        {
            w.shutdown_grace_secs = v;
        }
        if unset(sm, "max_attempts")
            && let Some(v) = f.max_attempts
        {
            w.max_attempts = v;
        }
    };
    let Some(sm) = sub else { return };
    match &mut cli.command {
        Command::All {
            realtime,
            worker,
            api,
            ..
        } => {
            if unset(sm, "realtime") {
                realtime.realtime =
                    realtime_of_file(!unset(sm, "confirmations"), !unset(sm, "max_reorg_depth"));
            }
            worker_of_file(worker, sm);
            if unset(sm, "api_open_reads")
                && let Some(open) = file.api.as_ref().and_then(|a| a.open_reads)
            {
                api.api_open_reads = open;
            }
        }
        Command::Scheduler { realtime, .. } if unset(sm, "realtime") => {
            realtime.realtime =
                realtime_of_file(!unset(sm, "confirmations"), !unset(sm, "max_reorg_depth"));
        }
        Command::Worker { queues, worker } => {
            if unset(sm, "queues")
                && let Some(q) = file.worker.as_ref().and_then(|w| w.queues.clone())
            {
                *queues = q;
            }
            worker_of_file(worker, sm);
        }
        Command::Api { api, .. } => {
            if unset(sm, "api_open_reads")
                && let Some(open) = file.api.as_ref().and_then(|a| a.open_reads)
            {
                api.api_open_reads = open;
            }
        }
        Command::Backfill { submission, .. } => {
            if unset(sm, "max_attempts")
                && let Some(v) = file.worker.as_ref().and_then(|w| w.max_attempts)
            {
                submission.max_attempts = v;
            }
        }
        _ => {}
    }
}

/// The retry policy: the config file's `[retry]` over the CLI default.
fn retry_policy(file: Option<&ConfigFile>) -> model_runner_core::engine::RetryPolicy {
    let mut policy = cli_retry();
    if let Some(r) = file.and_then(|f| f.retry.as_ref()) {
        if let Some(b) = r.base_secs {
            policy.base = Duration::from_secs_f64(b);
        }
        if let Some(m) = r.max_secs {
            policy.max = Duration::from_secs_f64(m);
        }
        if let Some(j) = r.jitter {
            policy.jitter = j;
        }
    }
    policy
}

/// A contract: its chain and address. `--of-chain` because `--chain` configures block sources.
#[derive(Debug, Args)]
struct ContractFlags {
    /// Chain of the contract, e.g. ethereum.
    #[arg(
        long = "of-chain",
        env = "MODEL_RUNNER_ABI_CHAIN",
        value_name = "CHAIN"
    )]
    of_chain: Chain,
    /// Contract address, 0x and 40 hex digits.
    #[arg(long, env = "MODEL_RUNNER_ABI_ADDRESS", value_parser = parse_address)]
    address: alloy_primitives::Address,
}

fn parse_address(text: &str) -> Result<alloy_primitives::Address, String> {
    model_runner_core::ports::parse_address(text).map_err(|e| match e {
        model_runner_core::ports::StoreError::InvalidInput(m) => m,
        other => other.to_string(),
    })
}

#[derive(Debug, Subcommand)]
enum AbiCommand {
    /// Register (or replace) a contract's JSON ABI from a file; prints the events it decodes.
    #[command(after_help = "\
Example:
  model-runner abi put --of-chain ethereum --address 0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48 --file erc20.json")]
    Put {
        #[command(flatten)]
        contract: ContractFlags,
        /// The JSON ABI (the array solc and Etherscan emit).
        #[arg(long, env = "MODEL_RUNNER_ABI_FILE")]
        file: std::path::PathBuf,
    },
    /// Registered ABIs as JSON lines (chain, address, events, updated_at), by chain then address.
    #[command(after_help = "\
Example:
  model-runner abi list --of-chain ethereum")]
    List {
        /// Only this chain.
        #[arg(
            long = "of-chain",
            env = "MODEL_RUNNER_ABI_CHAIN",
            value_name = "CHAIN"
        )]
        of_chain: Option<Chain>,
    },
    /// One contract's registered JSON ABI.
    #[command(after_help = "\
Example:
  model-runner abi get --of-chain ethereum --address 0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48")]
    Get {
        #[command(flatten)]
        contract: ContractFlags,
    },
    /// Remove a contract's ABI: `abi_events` stops decoding its logs.
    #[command(after_help = "\
Example:
  model-runner abi rm --of-chain ethereum --address 0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48")]
    Rm {
        #[command(flatten)]
        contract: ContractFlags,
    },
}

/// Runs an `abi` command against `store`; fails naming the contract or file at fault.
async fn abi_command(
    store: &dyn model_runner_core::ports::RunStore,
    command: AbiCommand,
) -> anyhow::Result<std::process::ExitCode> {
    let events = model_runner::api::abis::event_signatures;
    match command {
        AbiCommand::Put { contract, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading the ABI file {}", file.display()))?;
            let abi: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let stored = store
                .put_abi(ContractRef::new(&contract.of_chain, contract.address), abi)
                .await
                .with_context(|| {
                    format!(
                        "registering {} for {:#x} on {}",
                        file.display(),
                        contract.address,
                        contract.of_chain
                    )
                })?;
            let events = events(&stored);
            eprintln!(
                "registered the ABI of {:#x} on {}: {} events",
                stored.address,
                stored.chain,
                events.len()
            );
            for e in events {
                println!("{e}");
            }
        }
        AbiCommand::List { of_chain } => {
            for abi in store.abis(of_chain.as_ref()).await? {
                println!(
                    "{}",
                    serde_json::json!({
                        "chain": abi.chain,
                        "address": format!("{:#x}", abi.address),
                        "events": events(&abi),
                        "updated_at": abi.updated_at,
                    })
                );
            }
        }
        AbiCommand::Get { contract } => {
            match store
                .abi(ContractRef::new(&contract.of_chain, contract.address))
                .await?
            {
                Some(abi) => println!("{}", serde_json::to_string_pretty(&abi.abi)?),
                None => anyhow::bail!(
                    "no ABI is registered for {:#x} on {}",
                    contract.address,
                    contract.of_chain
                ),
            }
        }
        AbiCommand::Rm { contract } => {
            if !store
                .delete_abi(ContractRef::new(&contract.of_chain, contract.address))
                .await?
            {
                anyhow::bail!(
                    "no ABI is registered for {:#x} on {}",
                    contract.address,
                    contract.of_chain
                );
            }
            eprintln!(
                "removed the ABI of {:#x} on {}",
                contract.address, contract.of_chain
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// Runs as JSON lines, oldest first.
    ///
    /// When more runs match, the flag for the next page is printed to stderr
    /// (`more: --after ID`).
    #[command(after_help = "\
Examples:
  model-runner runs list --state failed --of-chain ethereum --limit 20
  model-runner runs list --model erc20_transfers --after 0192f5c4-7a1e-7cc0-9a5e-3f3b1c2d4e5f")]
    List {
        /// Only this model.
        #[arg(long, env = "MODEL_RUNNER_RUNS_MODEL")]
        model: Option<String>,
        /// Only runs of this chain (`--chain` configures block sources).
        #[arg(
            long = "of-chain",
            env = "MODEL_RUNNER_RUNS_CHAIN",
            value_name = "CHAIN"
        )]
        of_chain: Option<Chain>,
        /// Only this state (pending, queued, running, succeeded, failed, expired, cancelled).
        #[arg(long, env = "MODEL_RUNNER_RUNS_STATE")]
        state: Option<RunState>,
        /// Page size (at most 1000).
        #[arg(long, env = "MODEL_RUNNER_RUNS_LIMIT", default_value_t = 100)]
        limit: u32,
        /// Continue after this run id (the `next` of the previous page).
        #[arg(long, env = "MODEL_RUNNER_RUNS_AFTER")]
        after: Option<RunId>,
    },
    /// One run as JSON.
    #[command(after_help = "\
Example:
  model-runner runs show 0192f5c4-7a1e-7cc0-9a5e-3f3b1c2d4e5f")]
    Show {
        /// Run id.
        id: RunId,
    },
}

fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("installing the SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        eprintln!("shutting down: finishing in-flight runs");
        t.cancel();
    });
    token
}

/// mimalloc rather than glibc malloc: workers allocate and free millions of small record
/// payloads, and glibc spent about a fifth of the pipeline's CPU consolidating them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Reports to Sentry while this guard lives, when built with `sentry` and SENTRY_DSN is set.
    #[cfg(feature = "sentry")]
    let _reporting = model_runner::error_reporting::init();
    let _span_export = cli.ops.init_logging();
    let file = match &cli.ops.config {
        Some(path) => match ConfigFile::load(path) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        },
        None => None,
    };
    if let Some(file) = &file {
        apply_config(&mut cli, &matches, file);
    }
    match run(cli, file).await {
        Ok(code) => code,
        Err(e) => {
            // The adapters redact the URLs they name; this keeps any that slipped through safe.
            let message = format!("{e:#}");
            eprintln!(
                "error: {}",
                model_runner_core::redact::redact_urls_in(&message)
            );
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, file: Option<ConfigFile>) -> anyhow::Result<std::process::ExitCode> {
    // Config commands connect nothing.
    if let Command::Config { command } = &cli.command {
        match command {
            ConfigCommand::Check { file } => {
                let config = ConfigFile::load(file)?;
                println!(
                    "{} is valid: {} chains, {} realtime subscriptions",
                    file.display(),
                    config.chains.len(),
                    config.realtime.len()
                );
            }
            ConfigCommand::Show => {
                let mut shown = file.clone().unwrap_or_default();
                let a = &cli.adapters;
                shown.env = Some(a.env.clone());
                shown.store = Some(a.store.clone());
                shown.queue = Some(a.queue.clone());
                shown.sink = Some(a.sink.clone());
                shown.max_blocks_per_run = Some(a.max_blocks_per_run);
                shown.progress = a.progress.clone();
                let of_file = |name: &str| shown.chains.get(name).cloned();
                shown.chains = a
                    .chains
                    .iter()
                    .map(|c| {
                        (
                            c.chain.to_string(),
                            model_runner::config::ChainConfig {
                                url: c.url.clone(),
                                confirmations: of_file(c.chain.as_str())
                                    .and_then(|f| f.confirmations),
                                max_reorg_depth: of_file(c.chain.as_str())
                                    .and_then(|f| f.max_reorg_depth),
                            },
                        )
                    })
                    .collect();
                print!("{}", shown.redacted_toml());
            }
        }
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let retry = retry_policy(file.as_ref());
    let write_tokens = file
        .as_ref()
        .and_then(|f| f.api.as_ref())
        .and_then(|a| a.write_tokens.clone());
    let mut urls = cli.adapters.urls();
    // `migrate` migrates even when MODEL_RUNNER_NO_MIGRATE is set for the services.
    urls.migrate |= matches!(cli.command, Command::Migrate);
    match &cli.command {
        Command::Scheduler { .. } => urls.require_shared("scheduler", true)?,
        Command::Enqueuer => urls.require_shared("enqueuer", true)?,
        Command::Worker { .. } => urls.require_shared("worker", true)?,
        Command::Backfill { .. } => urls.require_shared("backfill", false)?,
        Command::Rerun { .. } => urls.require_shared("rerun", false)?,
        _ => {}
    }
    let metrics = model_runner::metrics::install()?;
    if let Some(addr) = cli.ops.metrics_addr {
        let listener = model_runner::metrics::bind(addr).await?;
        let serving =
            model_runner::metrics::serve(listener, metrics.clone(), CancellationToken::new());
        tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(error = %format!("{e:#}"), "metrics endpoint stopped");
            }
        });
    }
    // `abi`, `runs` and `migrate` need only the run store: no broker, sink or block source is
    // connected, so they work while those are down.
    let command = match cli.command {
        Command::Abi { command } => {
            return abi_command(&*connect_store(&urls).await?, command).await;
        }
        Command::Runs { command } => {
            let store = connect_store(&urls).await?;
            // The board only adds live progress: listing runs works while it is down.
            let board = match &cli.adapters.progress {
                Some(url) => match connect_progress_board(url).await {
                    Ok(board) => Some(board),
                    Err(e) => {
                        eprintln!("warning: {e:#}; showing the store's progress only");
                        None
                    }
                },
                None => None,
            };
            runs_command(&*store, board.as_deref(), command).await?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Command::Versions { model } => {
            let store = connect_store(&urls).await?;
            for v in model_runner_core::engine::version_coverage(&*store, &model).await? {
                println!("{}", serde_json::to_string(&v)?);
            }
            return Ok(std::process::ExitCode::SUCCESS);
        }
        Command::Migrate => {
            connect_store(&urls).await?;
            eprintln!("store migrated");
            return Ok(std::process::ExitCode::SUCCESS);
        }
        other => other,
    };
    let mut deps = build_deps(&urls).await?;
    // Only workers call contracts: other commands do not connect to the cache.
    if matches!(command, Command::Worker { .. } | Command::All { .. }) {
        cache_calls(&mut deps, &cli.adapters.call_cache).await?;
    }
    deps.limits.max_blocks_per_run = cli.adapters.max_blocks_per_run.max(1);
    // Only workers publish progress and only the API reads it: other commands do not connect.
    let progress = match (&command, &cli.adapters.progress) {
        // An in-process board of a lone worker is read by no API, and a lone API's is empty.
        (Command::Worker { .. } | Command::Api { .. }, Some(url))
            if url.trim().starts_with("memory:") =>
        {
            anyhow::bail!(
                "--progress {} (MODEL_RUNNER_PROGRESS) lives only inside this process, so no other \
                 process could see it: give a board the workers and the API share, e.g. \
                 --progress redis://HOST:6379/0, or run everything in one process with \
                 `model-runner all`",
                url.trim()
            )
        }
        (Command::Worker { .. } | Command::All { .. } | Command::Api { .. }, Some(url)) => {
            Some(connect_progress_board(url).await?)
        }
        // `all` runs its workers and its API in one process: an in-process board lets the
        // API show what the workers are doing.
        (Command::All { .. }, None) => Some(connect_progress_board("memory://").await?),
        _ => None,
    };
    let env = cli.adapters.env.clone();
    match command {
        Command::All {
            backfill,
            realtime:
                RealtimeFlags {
                    realtime,
                    confirmations,
                    max_reorg_depth,
                },
            chunk_size,
            worker,
            api_addr,
            api,
        } => {
            if backfill.is_empty() && realtime.is_empty() && api_addr.is_none() {
                anyhow::bail!(
                    "nothing to do: give --backfill CHAIN:MODEL:START-END, --realtime CHAIN:MODEL and/or --api-addr ADDR"
                );
            }
            let config = AllConfig {
                backfills: backfill,
                chunk_size,
                realtime,
                confirmations,
                max_reorg_depth,
                max_attempts: worker.max_attempts,
                worker: WorkerConfig {
                    progress_board: progress.clone(),
                    ..worker.config(&env, Vec::new(), retry)
                },
                // Runs submitted through the API must still be executed.
                keep_running: api_addr.is_some(),
                ..Default::default()
            };
            let shutdown = shutdown_signal();
            let server = match api_addr {
                Some(addr) => {
                    let mut state = api
                        .state(deps.clone(), write_tokens.as_deref())
                        .await?
                        .with_metrics(metrics.clone());
                    if let Some(board) = progress {
                        state = state.with_progress(board);
                    }
                    Some(tokio::spawn(model_runner::api::serve(
                        addr,
                        state,
                        shutdown.clone(),
                    )))
                }
                None => None,
            };
            let summary = run_all(deps, config, shutdown.clone()).await?;
            if let Some(server) = server {
                server.await.context("API task")??;
            }
            if !summary.all_succeeded {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Scheduler {
            realtime:
                RealtimeFlags {
                    realtime,
                    confirmations,
                    max_reorg_depth,
                },
            tick_secs,
            reconcile_after_secs,
        } => {
            let subs = realtime
                .iter()
                .map(|r| r.subscription(confirmations, max_reorg_depth))
                .collect();
            Runner::builder_from(deps)
                .scheduler_config(SchedulerConfig {
                    tick: Duration::from_secs(tick_secs.max(1)),
                    realtime: subs,
                    retry,
                    reconcile_after: Duration::from_secs(reconcile_after_secs.max(1)),
                    ..Default::default()
                })
                .build()?
                .run(Parts::SCHEDULER, shutdown_signal())
                .await?;
        }
        Command::Enqueuer => {
            Runner::builder_from(deps)
                .build()?
                .run(Parts::ENQUEUER, shutdown_signal())
                .await?;
        }
        Command::Worker { queues, worker } => {
            // No --queues: every queue of the configured chains (the runner's default).
            Runner::builder_from(deps)
                .worker_config(WorkerConfig {
                    progress_board: progress,
                    ..worker.config(&env, queues, retry)
                })
                .build()?
                .run(Parts::WORKER, shutdown_signal())
                .await?;
        }
        Command::Backfill {
            spec,
            submission:
                SubmissionFlags {
                    chunk_size,
                    max_attempts,
                },
            adhoc,
            adhoc_queue,
            idempotency_key,
        } => {
            let created = submit_backfill(
                &deps,
                BackfillRequest {
                    model: spec.model,
                    chain: spec.chain,
                    range: spec.range,
                    chunk_size,
                    mode: if adhoc {
                        RunMode::Adhoc
                    } else {
                        RunMode::Backfill
                    },
                    adhoc_queue,
                    max_attempts,
                    idempotency_key,
                },
            )
            .await?;
            eprintln!(
                "{} {} runs",
                if created.created {
                    "created"
                } else {
                    "already submitted:"
                },
                created.runs.len()
            );
            for r in created.runs {
                println!("{}\t{}\t{}", r.id, r.range, r.queue);
            }
        }
        Command::Rerun {
            model,
            from_version,
            of_chain,
            submission:
                SubmissionFlags {
                    chunk_size,
                    max_attempts,
                },
        } => {
            let created = model_runner_core::engine::rerun(
                &deps,
                model_runner_core::engine::RerunRequest {
                    model,
                    from_version,
                    chain: of_chain,
                    chunk_size,
                    max_attempts,
                },
            )
            .await?;
            eprintln!("created {} runs", created.runs.len());
            for r in created.runs {
                println!("{}\t{}\t{}", r.id, r.range, r.queue);
            }
        }
        Command::Api { api_addr, api } => {
            eprintln!(
                "API listening on http://{api_addr} (OpenAPI at /openapi.json, docs at /docs)"
            );
            let mut state = api
                .state(deps, write_tokens.as_deref())
                .await?
                .with_metrics(metrics);
            if let Some(board) = progress {
                state = state.with_progress(board);
            }
            model_runner::api::serve(api_addr, state, shutdown_signal()).await?;
        }
        Command::Config { .. } => unreachable!("config commands return before connecting"),
        Command::Abi { .. }
        | Command::Runs { .. }
        | Command::Versions { .. }
        | Command::Migrate => {
            unreachable!("store-only commands return after connecting the store")
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `runs list` / `runs show`; with a progress board, running runs carry their live
/// `progress`.
async fn runs_command(
    store: &dyn model_runner_core::ports::RunStore,
    board: Option<&dyn ProgressBoard>,
    command: RunsCommand,
) -> anyhow::Result<()> {
    let live = |runs: Vec<ModelRun>| async move {
        let progress = match board {
            Some(board) => board.live(&runs).await.unwrap_or_else(|e| {
                eprintln!("warning: reading live progress: {e}; showing the store's progress only");
                Vec::new()
            }),
            None => Vec::new(),
        };
        let mut progress = progress.into_iter();
        runs.into_iter()
            .map(|r| run_json(&r, progress.next().flatten()))
            .collect::<Vec<_>>()
    };
    match command {
        RunsCommand::List {
            model,
            of_chain: chain,
            state,
            limit,
            after,
        } => {
            let page = store
                .list(&RunFilter {
                    model,
                    chain,
                    state,
                    after,
                    limit,
                    ..Default::default()
                })
                .await?;
            for r in live(page.runs).await {
                println!("{}", serde_json::to_string(&r)?);
            }
            if let Some(next) = page.next {
                eprintln!("more: --after {next}");
            }
        }
        RunsCommand::Show { id } => {
            let run = store.get(id).await.context("showing run")?;
            for r in live(vec![run]).await {
                println!("{}", serde_json::to_string_pretty(&r)?);
            }
        }
    }
    Ok(())
}
