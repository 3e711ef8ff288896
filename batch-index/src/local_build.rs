//! Single-process build: reads the whole source in one process and writes
//! the same final shards as map + reduce, without partial files. It is the
//! reference the distributed runs are compared with byte for byte. Its
//! reduce manifests record `map_job_count: 0`.

use std::sync::Arc;

use crate::account::Owner;
use crate::error::Result;
use crate::extract::Modules;
use crate::manifest::{LedgerRange, REDUCE_FORMAT, ReduceManifest, to_json};
use crate::map::collect;
use crate::reduce::{WorkerData, reduce_success, write_shards};
use crate::source::LedgerSource;
use crate::store::StoreRoot;

/// Builds the final index for `reduce_jobs` × `workers` shards.
pub async fn build_single_process(
    source: Arc<dyn LedgerSource>,
    target: &StoreRoot,
    reduce_jobs: u32,
    workers: u32,
    modules: Modules,
) -> Result<()> {
    let (first, latest) = source.available().await?;
    let collected = collect(&source, first, latest, 2, modules, |_| {}).await?;
    let (accounts, txs) = collected.into_account_sets();
    let mut shards = vec![vec![WorkerData::default(); workers as usize]; reduce_jobs as usize];
    for (text, sets) in accounts {
        let o = Owner::of_account(&text, reduce_jobs, workers);
        shards[o.job as usize][o.worker as usize]
            .accounts
            .insert(text, sets);
    }
    for (h, p) in txs {
        let o = Owner::of_transaction(&h, reduce_jobs, workers);
        shards[o.job as usize][o.worker as usize]
            .transactions
            .insert(h, p);
    }
    for (job, w) in shards.into_iter().enumerate() {
        let files = write_shards(target, job as u32, reduce_jobs, w).await?;
        let manifest = ReduceManifest {
            format: REDUCE_FORMAT.into(),
            job: job as u32,
            map_job_count: 0,
            worker_count: workers,
            files,
            covered: Some(LedgerRange {
                first,
                last: latest,
            }),
        };
        target
            .put(&reduce_success(job as u32), to_json(&manifest))
            .await?;
    }
    Ok(())
}
