//! `batch-index run` and `batch-index extend`: run the map jobs then the
//! reduce jobs locally, each as a separate OS process of this binary
//! configured only through the job environment contract (`JOB_INDEX_ENV`,
//! `FIRST_CHECKPOINT`, `BATCH_SIZE`, ...), so a local run exercises exactly
//! what Kubernetes Indexed Jobs or AWS Batch array jobs do. One progress bar
//! per phase.
//!
//! `run` maps the whole source into `TARGET/job_<i>/` and reduces it into a
//! new generation. `extend` ([`extend_local`]) maps only the ledgers after
//! the range the published index covers, into
//! `TARGET/extend-<first>-<last>/job_<i>/`, and reduces them with
//! `EXTEND_INDEX` into a generation covering both (see [`crate::extend`]).

use std::path::PathBuf;
use std::process::Stdio;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::manifest::LedgerRange;
use crate::reader::Generation;
use crate::source::{SourceConfig, open_source_url};
use crate::store::StoreRoot;

/// The variable the runner tells children to read their index from.
pub const LOCAL_INDEX_VAR: &str = "JOB_COMPLETION_INDEX";

/// Configuration of a local run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The `batch-index` executable to spawn.
    pub exe: PathBuf,
    /// `TXMETA_SOURCE`.
    pub source: String,
    /// `INDEX_TARGET` (the final index; map outputs go under it).
    pub target: String,
    /// Map jobs.
    pub map_jobs: u32,
    /// Reduce jobs of a full run ([`run_local`]); an extension keeps the
    /// index's and ignores this.
    pub reduce_jobs: u32,
    /// Map: checkpoints in flight per job. Reduce of a full run: shards per
    /// job (an extension keeps the index's).
    pub workers: u32,
    /// Jobs running at once.
    pub parallel: u32,
    /// Source settings.
    pub source_cfg: SourceConfig,
    /// `MODULES`.
    pub modules: String,
    /// Pass `--force` to every job.
    pub force: bool,
    /// Show progress bars.
    pub progress: bool,
}

/// Computes `(FIRST_CHECKPOINT, BATCH_SIZE)` so `map_jobs` jobs cover the
/// whole source, each a whole number of checkpoints.
pub fn plan(first: u32, latest: u32, span: u32, map_jobs: u32) -> (u32, u32) {
    let total = u64::from(latest - first) + 1;
    let per_job = total.div_ceil(u64::from(map_jobs.max(1)));
    let batch = per_job.div_ceil(u64::from(span)) * u64::from(span);
    (
        first,
        batch.max(u64::from(span)).min(u64::from(u32::MAX)) as u32,
    )
}

/// The variables both phases of a run over `first..=last` share.
fn common_env(
    cfg: &RunConfig,
    reduce_jobs: u32,
    first: u32,
    last: u32,
) -> Vec<(&'static str, String)> {
    vec![
        ("JOB_INDEX_ENV", LOCAL_INDEX_VAR.to_string()),
        ("CHAIN", cfg.source_cfg.chain.to_string()),
        (
            "NETWORK_PASSPHRASE",
            cfg.source_cfg.network_passphrase.clone(),
        ),
        ("CHECKPOINT_SPAN", cfg.source_cfg.ethereum_span.to_string()),
        ("REDUCE_JOB_COUNT", reduce_jobs.to_string()),
        // Map jobs are asked for FIRST_CHECKPOINT..=LAST_LEDGER, and reduce
        // checks they covered exactly that.
        ("FIRST_CHECKPOINT", first.to_string()),
        ("LAST_LEDGER", last.to_string()),
    ]
}

/// Runs all jobs; fails on the first failed job, with its exit status and
/// the tail of its stderr.
pub async fn run_local(cfg: &RunConfig) -> Result<()> {
    let source = open_source_url(&cfg.source, &cfg.source_cfg).await?;
    let (first, latest) = source.available().await?;
    let (first_cp, batch) = plan(first, latest, source.span().ledgers(), cfg.map_jobs);
    let common = common_env(cfg, cfg.reduce_jobs, first_cp, latest);
    let map_env: Vec<(&str, String)> = vec![
        ("TXMETA_SOURCE", cfg.source.clone()),
        ("INDEX_TARGET", cfg.target.clone()),
        ("BATCH_SIZE", batch.to_string()),
        ("MODULES", cfg.modules.clone()),
        ("WORKER_COUNT", cfg.workers.to_string()),
    ];
    let reduce_env: Vec<(&str, String)> = vec![
        ("INDEX_SOURCE_ROOT", cfg.target.clone()),
        ("INDEX_TARGET", cfg.target.clone()),
        ("MAP_JOB_COUNT", cfg.map_jobs.to_string()),
        ("WORKER_COUNT", cfg.workers.to_string()),
    ];
    run_phase(cfg, "map", cfg.map_jobs, &common, &map_env).await?;
    run_phase(cfg, "reduce", cfg.reduce_jobs, &common, &reduce_env).await
}

/// What [`extend_local`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtendOutcome {
    /// The index already holds every ledger up to the requested end.
    UpToDate {
        /// The range the index covers.
        covered: LedgerRange,
    },
    /// A generation covering `covered` was built and published.
    Extended {
        /// The range the index covered before.
        from: LedgerRange,
        /// The range it covers now.
        covered: LedgerRange,
        /// The generation published.
        generation: String,
        /// Where the new map jobs wrote (`TARGET/extend-<first>-<last>`).
        map_root: String,
    },
}

/// Extends the index published at `cfg.target` to ledger `to` (default: the
/// source's latest): map jobs over only the ledgers after the range it
/// covers, then reduce jobs with `EXTEND_INDEX` merging them into its
/// shards. The index keeps its layout (`cfg.reduce_jobs` is not used).
pub async fn extend_local(cfg: &RunConfig, to: Option<u32>) -> Result<ExtendOutcome> {
    let target = StoreRoot::open(&cfg.target)?;
    let base = Generation::published(&target).await?;
    let Some(from) = base.covered else {
        return Err(Error::invalid(format!(
            "the index at {} states no covered range: it cannot be extended; build it in full",
            target.describe("")
        )));
    };
    let source = open_source_url(&cfg.source, &cfg.source_cfg).await?;
    let latest = source.latest().await?;
    let last = to.unwrap_or(latest);
    if last > latest {
        return Err(Error::invalid(format!(
            "cannot extend to ledger {last}: the source ends at {latest}"
        )));
    }
    if last <= from.last {
        return Ok(ExtendOutcome::UpToDate { covered: from });
    }
    let first = from.last + 1;
    let (first_cp, batch) = plan(first, last, source.span().ledgers(), cfg.map_jobs);
    let (reduce_jobs, shards) = (base.layout.reduce_job_count, base.layout.worker_count);
    let map_root = child_url(&cfg.target, &format!("extend-{first}-{last}"));
    let common = common_env(cfg, reduce_jobs, first_cp, last);
    let map_env: Vec<(&str, String)> = vec![
        ("TXMETA_SOURCE", cfg.source.clone()),
        ("INDEX_TARGET", map_root.clone()),
        ("BATCH_SIZE", batch.to_string()),
        ("MODULES", cfg.modules.clone()),
        ("WORKER_COUNT", cfg.workers.to_string()),
    ];
    let reduce_env: Vec<(&str, String)> = vec![
        ("INDEX_SOURCE_ROOT", map_root.clone()),
        ("INDEX_TARGET", cfg.target.clone()),
        ("MAP_JOB_COUNT", cfg.map_jobs.to_string()),
        ("WORKER_COUNT", shards.to_string()),
        ("EXTEND_INDEX", "true".to_string()),
    ];
    run_phase(cfg, "map", cfg.map_jobs, &common, &map_env).await?;
    run_phase(cfg, "reduce", reduce_jobs, &common, &reduce_env).await?;
    let published = Generation::published(&target).await?;
    let covered = LedgerRange {
        first: from.first,
        last,
    };
    if published.covered != Some(covered) {
        return Err(Error::JobFailed(format!(
            "the reduce jobs finished but the index at {} covers {} instead of {covered} \
             (another build published meanwhile?)",
            target.describe(""),
            published
                .covered
                .map_or("nothing".into(), |c| c.to_string())
        )));
    }
    Ok(ExtendOutcome::Extended {
        from,
        covered,
        generation: published.name,
        map_root,
    })
}

/// `url` one directory deeper (`name`), for a store URL or a plain path.
pub fn child_url(url: &str, name: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.scheme().len() > 1 && !u.cannot_be_a_base() => {
            if let Ok(mut segments) = u.path_segments_mut() {
                segments.pop_if_empty().push(name);
            }
            u.to_string()
        }
        _ => std::path::Path::new(url)
            .join(name)
            .to_string_lossy()
            .into_owned(),
    }
}

async fn run_phase(
    cfg: &RunConfig,
    phase: &'static str,
    jobs: u32,
    common: &[(&str, String)],
    extra: &[(&str, String)],
) -> Result<()> {
    let bar = if cfg.progress {
        ProgressBar::new(u64::from(jobs))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>7} [{bar:30}] {pos}/{len} jobs {elapsed}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(phase);
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(cfg.parallel.max(1) as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for job in 0..jobs {
        let mut cmd = tokio::process::Command::new(&cfg.exe);
        cmd.arg(phase);
        if cfg.force {
            cmd.arg("--force");
        }
        for (k, v) in common.iter().chain(extra) {
            cmd.env(k, v);
        }
        cmd.env(LOCAL_INDEX_VAR, job.to_string());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.kill_on_drop(true);
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let mut child = cmd
                .spawn()
                .map_err(|e| Error::JobFailed(format!("{phase} job {job}: cannot spawn: {e}")))?;
            let mut err = String::new();
            if let Some(mut s) = child.stderr.take() {
                let _ = s.read_to_string(&mut err).await;
            }
            let status = child
                .wait()
                .await
                .map_err(|e| Error::JobFailed(format!("{phase} job {job}: {e}")))?;
            if status.success() {
                Ok(job)
            } else {
                let tail: Vec<&str> = err.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                Err(Error::JobFailed(format!(
                    "{phase} job {job} exited with {status}: {}",
                    tail.join(" | ")
                )))
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        match r.map_err(|e| Error::JobFailed(format!("{phase}: {e}")))? {
            Ok(_) => bar.inc(1),
            Err(e) => {
                bar.abandon();
                return Err(e);
            }
        }
    }
    bar.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_urls_keep_scheme_bucket_and_credentials() {
        assert_eq!(
            child_url("s3://b/idx", "extend-5-9"),
            "s3://b/idx/extend-5-9"
        );
        assert_eq!(child_url("s3://b/idx/", "x"), "s3://b/idx/x");
        assert_eq!(child_url("s3://b", "x"), "s3://b/x");
        assert_eq!(child_url("file:///tmp/idx", "x"), "file:///tmp/idx/x");
        assert_eq!(child_url("/tmp/idx", "x"), "/tmp/idx/x");
        assert_eq!(child_url("rel/idx", "x"), "rel/idx/x");
        assert_eq!(child_url("memory:///idx", "x"), "memory:///idx/x");
    }

    #[test]
    fn plan_covers_source_in_whole_checkpoints() {
        assert_eq!(plan(1410048, 1410367, 64, 1), (1410048, 320));
        assert_eq!(plan(1410048, 1410367, 64, 3), (1410048, 128));
        assert_eq!(plan(1410048, 1410367, 64, 5), (1410048, 64));
        assert_eq!(plan(0, 10, 64, 4), (0, 64));
    }
}
