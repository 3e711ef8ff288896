//! `batch-index`: command line of the map/reduce account indexer.
//!
//! Every flag can also be set through the environment variable shown in
//! `--help`; map and reduce use lighthorizon's variable names so existing
//! Kubernetes / AWS Batch job definitions carry over.

use std::process::ExitCode;

use batch_index::extract::Modules;
use batch_index::map::{MapConfig, MapOutcome, run_map};
use batch_index::reduce::{ReduceConfig, ReduceOutcome, run_reduce};
use batch_index::runner::{ExtendOutcome, RunConfig, extend_local, run_local};
use batch_index::source::{ChainKind, SourceConfig, open_source_url};
use batch_index::stellar::PUBNET_PASSPHRASE;
use batch_index::store::StoreRoot;
use batch_index::{Error, IndexReader, Result};
use clap::{Args, Parser, Subcommand};

/// Map/reduce account indexer over Stellar ledgers and Ethereum blocks.
///
/// The index says, for every account, in which checkpoints (64 Stellar
/// ledgers, or a configurable number of Ethereum blocks) it took part.
/// Typical flow: `map` as an array job of M tasks, then `reduce` as an array
/// job of R tasks, then `query`; or `run` to do both locally. When the chain
/// has grown, `extend` (or map jobs over the new ledgers and `reduce
/// --extend`) adds the new ledgers to the index without rebuilding it.
#[derive(Debug, Parser)]
#[command(name = "batch-index", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Index one checkpoint range (job i of an array job) into INDEX_TARGET/job_<i>/.
    Map(MapArgs),
    /// Merge one partition of every map job into final shards.
    Reduce(ReduceArgs),
    /// Run all map then all reduce jobs locally, as separate processes.
    Run(RunArgs),
    /// Extend the published index to the source's new ledgers, locally.
    #[command(long_about = EXTEND_ABOUT)]
    Extend(ExtendArgs),
    /// Build the final index in this one process (reference for `run`).
    Build(BuildArgs),
    /// Look up an account's checkpoints or a transaction's position.
    Query(QueryArgs),
    /// Delete finished generations the index root no longer publishes.
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
struct JobIndexArgs {
    /// Name of the environment variable holding this job's index, e.g.
    /// AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch) or JOB_COMPLETION_INDEX (Kubernetes).
    #[arg(
        long,
        env = "JOB_INDEX_ENV",
        default_value = "AWS_BATCH_JOB_ARRAY_INDEX"
    )]
    job_index_env: String,
    /// Job index; overrides the variable named by --job-index-env.
    #[arg(long)]
    job_index: Option<u32>,
}

impl JobIndexArgs {
    fn resolve(&self) -> Result<u32> {
        if let Some(i) = self.job_index {
            return Ok(i);
        }
        let name = &self.job_index_env;
        let raw = std::env::var(name).map_err(|_| {
            Error::invalid(format!(
                "JOB_INDEX_ENV names `{name}` but that variable is not set (or pass --job-index)"
            ))
        })?;
        raw.trim().parse().map_err(|_| {
            Error::invalid(format!(
                "`{name}`=`{raw}` is not a job index (non-negative integer)"
            ))
        })
    }
}

#[derive(Debug, Args)]
struct SourceArgs {
    /// Chain of the source: `stellar` or `ethereum`.
    #[arg(long, env = "CHAIN", default_value = "stellar")]
    chain: ChainKind,
    /// Stellar network passphrase (checked against transaction hashes).
    #[arg(long, env = "NETWORK_PASSPHRASE", default_value = PUBNET_PASSPHRASE)]
    network_passphrase: String,
    /// Blocks per checkpoint for Ethereum (Stellar always uses 64 ledgers).
    #[arg(long, env = "CHECKPOINT_SPAN", default_value_t = 64)]
    checkpoint_span: u32,
}

impl SourceArgs {
    fn config(&self) -> SourceConfig {
        SourceConfig {
            chain: self.chain,
            network_passphrase: self.network_passphrase.clone(),
            ethereum_span: self.checkpoint_span,
        }
    }
}

#[derive(Debug, Args)]
struct MapArgs {
    /// Ledger source URL. Stellar: file:///dir or s3://bucket/prefix
    /// (meta-archive with `ledgers/<seq>` + `latest`, or a data lake of
    /// `*.xdr.zstd`). Ethereum (--chain ethereum): file:///dir or s3://... of
    /// JSON-RPC / ethereum-etl `.json` files, or a runner block source:
    /// `devnet://?head=199&seed=1` (deterministic devnet), `runner+file:///dir`
    /// (the runner's file source: JSON-RPC responses or ethereum-etl exports
    /// with blocks) or `http(s)://node` (JSON-RPC, build feature `jsonrpc`).
    #[arg(long, env = "TXMETA_SOURCE")]
    source: String,
    /// Index root URL; this job writes INDEX_TARGET/job_<i>/.
    #[arg(long, env = "INDEX_TARGET")]
    target: String,
    /// First ledger (block) of job 0.
    #[arg(long, env = "FIRST_CHECKPOINT")]
    first_checkpoint: u32,
    /// Ledgers (blocks) per job; a multiple of the checkpoint span.
    #[arg(long, env = "BATCH_SIZE")]
    batch_size: u32,
    /// Last ledger (block) of the index: job ranges are capped at it. Without
    /// it every job is asked for its whole BATCH_SIZE ledgers, and a job whose
    /// range reaches past the source's latest ledger is incomplete (reduce
    /// refuses it) until a rerun after the source grew.
    #[arg(long, env = "LAST_LEDGER")]
    last_ledger: Option<u32>,
    /// Checkpoints processed concurrently by this job.
    #[arg(long, env = "WORKER_COUNT", default_value_t = 1)]
    workers: u32,
    /// Number of reduce jobs the partial indexes are partitioned for.
    #[arg(long, env = "REDUCE_JOB_COUNT", default_value_t = 1)]
    reduce_jobs: u32,
    /// Comma-separated outputs: `accounts` (all/all, all/payments) and/or `transactions`.
    #[arg(long, env = "MODULES", default_value = "accounts,transactions")]
    modules: String,
    /// Redo the job even if its _SUCCESS manifest exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    job: JobIndexArgs,
    #[command(flatten)]
    source_args: SourceArgs,
}

#[derive(Debug, Args)]
struct ReduceArgs {
    /// Root holding the map outputs (job_<i>/).
    #[arg(long, env = "INDEX_SOURCE_ROOT")]
    source_root: String,
    /// Final index root URL.
    #[arg(long, env = "INDEX_TARGET")]
    target: String,
    /// Number of map jobs to merge.
    #[arg(long, env = "MAP_JOB_COUNT")]
    map_jobs: u32,
    /// Number of reduce jobs.
    #[arg(long, env = "REDUCE_JOB_COUNT")]
    reduce_jobs: u32,
    /// Workers (final shards) per reduce job.
    #[arg(long, env = "WORKER_COUNT", default_value_t = 1)]
    workers: u32,
    /// If set, the map jobs must start at this ledger (block), their
    /// FIRST_CHECKPOINT.
    #[arg(long, env = "FIRST_CHECKPOINT")]
    first_checkpoint: Option<u32>,
    /// If set, the index must end at this ledger (block): reduce refuses map
    /// jobs that stop short of it (MAP_JOB_COUNT too small).
    #[arg(long, env = "LAST_LEDGER")]
    last_ledger: Option<u32>,
    /// Extend the index INDEX_TARGET publishes instead of building one from
    /// the map jobs alone: merge its shards with the map jobs, which must
    /// cover the ledgers right after its range (map them with
    /// FIRST_CHECKPOINT = its last ledger + 1, into another root than its
    /// first build's). Keep its REDUCE_JOB_COUNT and WORKER_COUNT. The new
    /// generation is byte-identical to a full rebuild over the whole range.
    /// A gap or an overlap is refused, naming it; a rerun once the extension
    /// is published is a no-op.
    #[arg(long, env = "EXTEND_INDEX")]
    extend: bool,
    /// Redo the job even if its _SUCCESS manifest exists.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    job: JobIndexArgs,
}

const EXTEND_ABOUT: &str = "\
Extend the published index to the source's new ledgers, locally, without rebuilding it.

The index at --target states the ledgers it covers, A..B. `extend` runs map jobs over only
B+1..C (C = --to, default the source's latest ledger) into TARGET/extend-<B+1>-<C>/, then
reduce jobs that merge them into the index's shards (`reduce --extend`), and publishes a new
generation covering A..C with one atomic put of TARGET/layout.json. Readers switch to it
whole, as after any rebuild. Every object of the new generation has the bytes a full rebuild
over A..C writes (only the generation's name differs); the index keeps its reduce jobs and
shards per job. Nothing is done when the index already reaches C.

Each job is a separate process configured through the job environment, as in `run`; on
Kubernetes or AWS Batch run the same two phases yourself: map with FIRST_CHECKPOINT=B+1,
LAST_LEDGER=C and INDEX_TARGET=<a new root>, then reduce with EXTEND_INDEX=true,
INDEX_SOURCE_ROOT=<that root>, INDEX_TARGET=<the index>, and the index's REDUCE_JOB_COUNT
and WORKER_COUNT.

Example: /tmp/idx was built (`run`) while the source ended at ledger 1410200; it now ends at
1410367:
  batch-index extend --source tests/fixtures/stellar/testnet-lighthorizon --target /tmp/idx \\
    --map-jobs 2 --network-passphrase 'Test SDF Network ; September 2015'
  extended ledgers 1410048-1410200 to 1410048-1410367: generation gen-<16 hex digits> (map
  outputs in /tmp/idx/extend-1410201-1410367)";

#[derive(Debug, Args)]
struct ExtendArgs {
    #[command(flatten)]
    jobs: LocalJobs,
    /// Last ledger (block) to index (default: the source's latest).
    #[arg(long, env = "LAST_LEDGER")]
    to: Option<u32>,
    /// Map jobs over the new ledgers.
    #[arg(long, env = "MAP_JOB_COUNT", default_value_t = 1)]
    map_jobs: u32,
    /// Checkpoints in flight per map job (the reduce jobs keep the index's
    /// shards per job).
    #[arg(long, default_value_t = 1)]
    workers: u32,
}

/// What `run` and `extend` share: the source, the index, the modules, and how their job
/// processes start on this machine.
#[derive(Debug, Args)]
struct LocalJobs {
    /// Ledger source URL: file://, s3://, or for Ethereum also devnet://,
    /// runner+file:// and http(s):// (see `map --help`). For `extend`, it must
    /// hold the ledgers after the index's range.
    #[arg(long, env = "TXMETA_SOURCE")]
    source: String,
    /// Index root URL (map outputs and final index). For `extend`, the index
    /// to extend (its layout.json names the generation).
    #[arg(long, env = "INDEX_TARGET")]
    target: String,
    /// Comma-separated modules (see `map --help`). For `extend`, the ones the
    /// index was built with.
    #[arg(long, env = "MODULES", default_value = "accounts,transactions")]
    modules: String,
    /// Jobs running at the same time (default: CPU count).
    #[arg(long, env = "BATCH_INDEX_PARALLEL")]
    parallel: Option<u32>,
    /// Pass --force to every job.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    source_args: SourceArgs,
}

impl LocalJobs {
    /// The [`RunConfig`] `run` and `extend` start: this executable's jobs over the source into
    /// the target, with progress bars. The job counts are the caller's to set; they are 0 here
    /// (an extension keeps `reduce_jobs` at 0: it uses the index's).
    fn run_config(self) -> Result<RunConfig> {
        Ok(RunConfig {
            exe: own_exe()?,
            source: self.source,
            target: self.target,
            map_jobs: 0,
            reduce_jobs: 0,
            workers: 0,
            parallel: parallel(self.parallel),
            source_cfg: self.source_args.config(),
            modules: self.modules,
            force: self.force,
            progress: true,
        })
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    jobs: LocalJobs,
    /// Number of map jobs.
    #[arg(long, env = "MAP_JOB_COUNT", default_value_t = 1)]
    map_jobs: u32,
    /// Number of reduce jobs.
    #[arg(long, env = "REDUCE_JOB_COUNT", default_value_t = 1)]
    reduce_jobs: u32,
    /// Workers per job.
    #[arg(long, env = "WORKER_COUNT", default_value_t = 1)]
    workers: u32,
}

#[derive(Debug, Args)]
struct BuildArgs {
    /// Ledger source URL (see `map --help`; e.g. `devnet://?head=199` with
    /// `--chain ethereum --checkpoint-span 64`).
    #[arg(long, env = "TXMETA_SOURCE")]
    source: String,
    /// Final index root URL.
    #[arg(long, env = "INDEX_TARGET")]
    target: String,
    /// Reduce jobs of the layout to produce.
    #[arg(long, env = "REDUCE_JOB_COUNT", default_value_t = 1)]
    reduce_jobs: u32,
    /// Workers per reduce job of the layout to produce.
    #[arg(long, env = "WORKER_COUNT", default_value_t = 1)]
    workers: u32,
    /// Comma-separated modules.
    #[arg(long, env = "MODULES", default_value = "accounts,transactions")]
    modules: String,
    #[command(flatten)]
    source_args: SourceArgs,
}

#[derive(Debug, Args)]
struct QueryArgs {
    /// Final index root URL.
    #[arg(long, env = "INDEX_TARGET")]
    target: String,
    /// Account (G..., M... or 0x...) to look up.
    #[arg(long, conflicts_with = "transaction")]
    account: Option<String>,
    /// Index name.
    #[arg(long, default_value = "all/all")]
    index: String,
    /// Only print the first active checkpoint at or after this one.
    #[arg(long)]
    from: Option<u32>,
    /// Transaction hash (hex) to look up.
    #[arg(long)]
    transaction: Option<String>,
}

#[derive(Debug, Args)]
struct PruneArgs {
    /// Final index root URL.
    #[arg(long, env = "INDEX_TARGET")]
    target: String,
    /// Seconds the pointer must have been in place before older generations
    /// are deleted: more than the readers' refresh interval (5 s by default)
    /// plus the longest request.
    #[arg(long, default_value_t = 600)]
    grace_secs: u64,
}

fn own_exe() -> Result<std::path::PathBuf> {
    std::env::current_exe().map_err(|e| Error::invalid(format!("cannot find own executable: {e}")))
}

fn parallel(flag: Option<u32>) -> u32 {
    flag.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get() as u32))
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Map(a) => {
            let job = a.job.resolve()?;
            let source = open_source_url(&a.source, &a.source_args.config()).await?;
            let target = StoreRoot::open(&a.target)?;
            let cfg = MapConfig {
                job,
                first_ledger: a.first_checkpoint,
                batch_size: a.batch_size,
                last_ledger: a.last_ledger,
                workers: a.workers,
                reduce_jobs: a.reduce_jobs,
                modules: Modules::parse(&a.modules)?,
                force: a.force,
                chain: a.source_args.chain.to_string(),
            };
            match run_map(source, &target, &cfg).await? {
                MapOutcome::AlreadyDone => {
                    eprintln!("map job {job}: already done (use --force to redo)")
                }
                MapOutcome::StillIncomplete(m) => eprintln!(
                    "map job {job}: INCOMPLETE and the source has not grown: covered {} of {}; \
                     rerun once the source holds ledger {}",
                    m.covered_range()
                        .map_or("nothing".into(), |r| r.to_string()),
                    m.requested_range()
                        .map_or("nothing".into(), |r| r.to_string()),
                    m.requested_range().map_or(0, |r| r.last),
                ),
                MapOutcome::Done(m) => {
                    eprintln!(
                        "map job {job}: {} ledgers, {} accounts, {} transactions",
                        m.ledgers_read, m.accounts, m.transactions
                    );
                    if !m.is_complete() {
                        eprintln!(
                            "map job {job}: INCOMPLETE: asked for {}, covered {} (the source ends earlier); \
                             reduce refuses it until a rerun after the source grew",
                            m.requested_range()
                                .map_or("nothing".into(), |r| r.to_string()),
                            m.covered_range()
                                .map_or("nothing".into(), |r| r.to_string()),
                        );
                    }
                }
            }
        }
        Command::Reduce(a) => {
            let job = a.job.resolve()?;
            let cfg = ReduceConfig {
                job,
                map_jobs: a.map_jobs,
                reduce_jobs: a.reduce_jobs,
                workers: a.workers,
                force: a.force,
                first_ledger: a.first_checkpoint,
                last_ledger: a.last_ledger,
                extend: a.extend,
            };
            let out = run_reduce(
                &StoreRoot::open(&a.source_root)?,
                &StoreRoot::open(&a.target)?,
                &cfg,
            )
            .await?;
            match out {
                ReduceOutcome::AlreadyDone if a.extend => eprintln!(
                    "reduce job {job}: already done (the extension, or an index holding its \
                     ledgers, is published, or this job finished: use --force to redo)"
                ),
                ReduceOutcome::AlreadyDone => {
                    eprintln!("reduce job {job}: already done (use --force to redo)")
                }
                ReduceOutcome::Done(m) => {
                    eprintln!("reduce job {job}: wrote {} shard files", m.files.len())
                }
            }
        }
        Command::Run(a) => {
            Modules::parse(&a.jobs.modules)?;
            let cfg = RunConfig {
                map_jobs: a.map_jobs,
                reduce_jobs: a.reduce_jobs,
                workers: a.workers,
                ..a.jobs.run_config()?
            };
            if cfg.map_jobs == 0 || cfg.reduce_jobs == 0 || cfg.workers == 0 {
                return Err(Error::invalid(
                    "--map-jobs, --reduce-jobs and --workers must be at least 1",
                ));
            }
            run_local(&cfg).await?;
        }
        Command::Extend(a) => {
            Modules::parse(&a.jobs.modules)?;
            if a.map_jobs == 0 || a.workers == 0 {
                return Err(Error::invalid(
                    "--map-jobs and --workers must be at least 1",
                ));
            }
            let cfg = RunConfig {
                map_jobs: a.map_jobs,
                workers: a.workers,
                ..a.jobs.run_config()?
            };
            match extend_local(&cfg, a.to).await? {
                ExtendOutcome::UpToDate { covered } => {
                    eprintln!("the index already covers ledgers {covered}: nothing to extend")
                }
                ExtendOutcome::Extended {
                    from,
                    covered,
                    generation,
                    map_root,
                } => eprintln!(
                    "extended ledgers {from} to {covered}: generation {generation} \
                     (map outputs in {})",
                    batch_index::store::redact_url(&map_root)
                ),
            }
        }
        Command::Build(a) => {
            let source = open_source_url(&a.source, &a.source_args.config()).await?;
            batch_index::local_build::build_single_process(
                source,
                &StoreRoot::open(&a.target)?,
                a.reduce_jobs,
                a.workers,
                Modules::parse(&a.modules)?,
            )
            .await?;
        }
        Command::Prune(a) => {
            let deleted = batch_index::reduce::prune_generations(
                &StoreRoot::open(&a.target)?,
                std::time::Duration::from_secs(a.grace_secs),
                std::time::SystemTime::now(),
            )
            .await?;
            eprintln!("pruned {} generation(s): {deleted:?}", deleted.len());
        }
        Command::Query(a) => {
            let reader = IndexReader::open(StoreRoot::open(&a.target)?).await?;
            match (a.account, a.transaction) {
                (Some(acc), None) => match a.from {
                    Some(from) => match reader.next_active(&acc, &a.index, from).await? {
                        Some(c) => println!("{c}"),
                        None => println!("none"),
                    },
                    None => {
                        let set = reader.checkpoints(&acc, &a.index).await?;
                        let list: Vec<String> = set.iter().map(|c| c.to_string()).collect();
                        println!("{}", list.join(" "));
                    }
                },
                (None, Some(h)) => match reader.transaction(&h).await? {
                    Some(p) => println!(
                        "toid={} ledger={} tx_index={} op_index={}",
                        p.0,
                        p.ledger(),
                        p.tx_index(),
                        p.op_index()
                    ),
                    None => println!("not found"),
                },
                _ => {
                    return Err(Error::invalid(
                        "pass exactly one of --account or --transaction",
                    ));
                }
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("batch-index: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("batch-index: error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                eprintln!("  caused by: {s}");
                src = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_jobs_run_config_carries_the_shared_flags() {
        let cli = Cli::parse_from([
            "batch-index",
            "extend",
            "--source",
            "file:///src",
            "--target",
            "file:///idx",
            "--modules",
            "accounts",
            "--parallel",
            "3",
            "--force",
            "--chain",
            "ethereum",
        ]);
        let Command::Extend(a) = cli.command else {
            panic!("not extend: {:?}", cli.command)
        };
        let cfg = a.jobs.run_config().unwrap();
        assert_eq!(cfg.source, "file:///src");
        assert_eq!(cfg.target, "file:///idx");
        assert_eq!(cfg.modules, "accounts");
        assert_eq!(cfg.parallel, 3);
        assert!(cfg.force);
        assert!(cfg.progress);
        assert_eq!(cfg.source_cfg.chain, ChainKind::Ethereum);
        assert_eq!((cfg.map_jobs, cfg.reduce_jobs, cfg.workers), (0, 0, 0));
    }
}
