//! Single-process build: reads the whole source in one process and writes
//! the same final shards as map + reduce, without partial files. It is the
//! reference the distributed runs are compared with byte for byte, manifests
//! included (they state what the generation holds, not how it was built).
//!
//! Like reduce, it writes a new generation directory (named by a hash of
//! its shards, [`files_generation`]) and publishes it last with one atomic
//! put of the root `layout.json`, so rebuilding into the root a running
//! [`crate::IndexReader`] serves is safe.

use std::sync::Arc;

use crate::account::Owner;
use crate::error::Result;
use crate::extract::Modules;
use crate::manifest::{LedgerRange, REDUCE_FORMAT, ReduceManifest, to_json};
use crate::map::collect;
use crate::reduce::{
    WorkerData, encode_shards, files_generation, publish, reduce_success, write_shards,
};
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
    let covered = Some(LedgerRange {
        first,
        last: latest,
    });
    let mut encoded = Vec::with_capacity(shards.len());
    for (job, w) in shards.into_iter().enumerate() {
        encoded.push(encode_shards(job as u32, w).await?);
    }
    let all: Vec<_> = encoded.iter().flatten().map(|(e, _)| e.clone()).collect();
    let generation = files_generation(&all, covered);
    let gen_root = target.child(&generation);
    for (job, shards) in encoded.into_iter().enumerate() {
        let files = write_shards(&gen_root, reduce_jobs, workers, shards).await?;
        let manifest = ReduceManifest {
            format: REDUCE_FORMAT.into(),
            job: job as u32,
            worker_count: workers,
            files,
            covered,
        };
        gen_root
            .put(&reduce_success(job as u32), to_json(&manifest))
            .await?;
    }
    publish(target, &generation, reduce_jobs, workers).await?;
    Ok(())
}
