//! `batch-index run`: runs the map jobs then the reduce jobs locally, each as
//! a separate OS process of this binary configured only through the job
//! environment contract (`JOB_INDEX_ENV`, `FIRST_CHECKPOINT`, `BATCH_SIZE`,
//! ...), so a local run exercises exactly what Kubernetes Indexed Jobs or
//! AWS Batch array jobs do. One progress bar per phase.

use std::path::PathBuf;
use std::process::Stdio;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::source::{SourceConfig, open_source_url};

/// The variable the runner tells children to read their index from.
pub const LOCAL_INDEX_VAR: &str = "JOB_COMPLETION_INDEX";

/// Configuration of a local run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The `batch-index` executable to spawn.
    pub exe: PathBuf,
    /// `TXMETA_SOURCE`.
    pub source: String,
    /// `INDEX_TARGET` (map output and final index share it).
    pub target: String,
    /// Map jobs.
    pub map_jobs: u32,
    /// Reduce jobs.
    pub reduce_jobs: u32,
    /// Workers per job.
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

/// Runs all jobs; fails on the first failed job, with its exit status and
/// the tail of its stderr.
pub async fn run_local(cfg: &RunConfig) -> Result<()> {
    let source = open_source_url(&cfg.source, &cfg.source_cfg).await?;
    let (first, latest) = source.available().await?;
    let (first_cp, batch) = plan(first, latest, source.span().ledgers(), cfg.map_jobs);
    let common: Vec<(&str, String)> = vec![
        ("JOB_INDEX_ENV", LOCAL_INDEX_VAR.to_string()),
        ("WORKER_COUNT", cfg.workers.to_string()),
        ("CHAIN", cfg.source_cfg.chain.to_string()),
        (
            "NETWORK_PASSPHRASE",
            cfg.source_cfg.network_passphrase.clone(),
        ),
        ("CHECKPOINT_SPAN", cfg.source_cfg.ethereum_span.to_string()),
        ("REDUCE_JOB_COUNT", cfg.reduce_jobs.to_string()),
        // Map jobs are asked for FIRST_CHECKPOINT..=LAST_LEDGER, and reduce
        // checks they covered exactly that.
        ("FIRST_CHECKPOINT", first_cp.to_string()),
        ("LAST_LEDGER", latest.to_string()),
    ];
    let map_env: Vec<(&str, String)> = vec![
        ("TXMETA_SOURCE", cfg.source.clone()),
        ("INDEX_TARGET", cfg.target.clone()),
        ("BATCH_SIZE", batch.to_string()),
        ("MODULES", cfg.modules.clone()),
    ];
    let reduce_env: Vec<(&str, String)> = vec![
        ("INDEX_SOURCE_ROOT", cfg.target.clone()),
        ("INDEX_TARGET", cfg.target.clone()),
        ("MAP_JOB_COUNT", cfg.map_jobs.to_string()),
    ];
    run_phase(cfg, "map", cfg.map_jobs, &common, &map_env).await?;
    run_phase(cfg, "reduce", cfg.reduce_jobs, &common, &reduce_env).await
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
    fn plan_covers_source_in_whole_checkpoints() {
        assert_eq!(plan(1410048, 1410367, 64, 1), (1410048, 320));
        assert_eq!(plan(1410048, 1410367, 64, 3), (1410048, 128));
        assert_eq!(plan(1410048, 1410367, 64, 5), (1410048, 64));
        assert_eq!(plan(0, 10, 64, 4), (0, 64));
    }
}
