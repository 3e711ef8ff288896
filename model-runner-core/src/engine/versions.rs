//! Model versions: which version of a model covers which blocks, and reruns of the ranges an
//! older version produced when the model changes.
//!
//! A run carries the model version it was scheduled with, and so does every record it makes.
//! When a model's code changes, bump its [`ModelSpec`](crate::ModelSpec)'s version and
//! [`rerun`] the older version's ranges: the new runs go through the normal outbox, cover every
//! block the old version covered exactly once (overlapping old runs are merged, blocks the new
//! version already covers or is about to are left out), and their records say the new version.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::chain::{BlockRange, Chain, RunMode};
use crate::engine::{EngineDeps, EngineError};
use crate::ports::{CreateRuns, CreatedRuns, RunFilter, RunStore};
use crate::run::{ModelRun, NewRun, RunState};

/// The blocks one version of a model has produced records for, on one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionCoverage {
    /// Chain.
    pub chain: Chain,
    /// Model version.
    pub version: String,
    /// Disjoint, ascending ranges covered by its succeeded runs.
    pub ranges: Vec<BlockRange>,
    /// Blocks in them.
    pub blocks: u64,
}

/// A rerun of the ranges an older version of a model produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RerunRequest {
    /// Model name.
    pub model: String,
    /// The version whose ranges are rerun with the registered (current) version.
    pub from_version: String,
    /// Only this chain; `None` for every chain.
    pub chain: Option<Chain>,
    /// Blocks per new run.
    pub chunk_size: u64,
    /// Attempts per new run.
    pub max_attempts: u32,
}

/// Every run of `model` (all pages), optionally on one chain.
async fn runs_of(
    store: &dyn RunStore,
    model: &str,
    chain: Option<&Chain>,
) -> Result<Vec<ModelRun>, EngineError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(&RunFilter {
                model: Some(model.to_owned()),
                chain: chain.cloned(),
                after,
                limit: 1000,
                ..Default::default()
            })
            .await?;
        out.extend(page.runs);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(out),
        }
    }
}

/// Sorted, merged (overlapping or adjacent joined) ranges.
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// `from` minus `minus`; both merged.
fn subtract(from: &[(u64, u64)], minus: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(lo, hi) in from {
        let mut start = lo;
        for &(mlo, mhi) in minus.iter().filter(|(mlo, mhi)| *mlo <= hi && *mhi >= lo) {
            if mlo > start {
                out.push((start, mlo - 1));
            }
            match mhi.checked_add(1) {
                Some(next) => start = start.max(next),
                None => return out,
            }
        }
        if start <= hi {
            out.push((start, hi));
        }
    }
    out
}

/// Whether `run`'s blocks are, or will be, modeled by it (not cancelled, not failed for good).
fn covers_or_will(run: &ModelRun) -> bool {
    run.state == RunState::Succeeded || !run.is_settled()
}

/// Which versions of `model` cover which blocks (succeeded runs), by chain then version.
pub async fn version_coverage(
    store: &dyn RunStore,
    model: &str,
) -> Result<Vec<VersionCoverage>, EngineError> {
    let mut by: BTreeMap<(Chain, String), Vec<(u64, u64)>> = BTreeMap::new();
    for run in runs_of(store, model, None).await? {
        if run.state == RunState::Succeeded {
            by.entry((run.chain, run.model_version))
                .or_default()
                .push((run.range.start(), run.range.end()));
        }
    }
    Ok(by
        .into_iter()
        .map(|((chain, version), ranges)| {
            let ranges = merge(ranges);
            VersionCoverage {
                chain,
                version,
                blocks: ranges.iter().map(|(lo, hi)| hi - lo + 1).sum(),
                ranges: ranges
                    .into_iter()
                    .map(|(lo, hi)| BlockRange::new(lo, hi).expect("lo <= hi"))
                    .collect(),
            }
        })
        .collect())
}

/// Creates `pending` runs of the registered version of `req.model` over every block its
/// `from_version` produced (succeeded runs), per chain, in chunks of `chunk_size`, leaving out
/// blocks the registered version already covers or is about to. Refuses a `from_version` equal
/// to the registered one, a version that covers nothing, and nothing left to rerun, naming why.
pub async fn rerun(deps: &EngineDeps, req: RerunRequest) -> Result<CreatedRuns, EngineError> {
    if req.chunk_size == 0 {
        return Err(EngineError::InvalidInput(
            "chunk_size must be at least 1".into(),
        ));
    }
    if req.max_attempts == 0 {
        return Err(EngineError::InvalidInput(
            "max_attempts must be at least 1".into(),
        ));
    }
    let model = deps.models.get(&req.model)?;
    let current = model.spec().version().to_owned();
    if req.from_version == current {
        return Err(EngineError::InvalidInput(format!(
            "model {} is at version {current} already: give the older version to rerun",
            req.model
        )));
    }
    let max_block = deps.limits.max_blocks_per_run;
    if req.chunk_size > max_block {
        return Err(EngineError::InvalidInput(format!(
            "chunk_size {} makes runs of more than {max_block} blocks, the limit per run",
            req.chunk_size
        )));
    }
    let mut old: BTreeMap<Chain, Vec<(u64, u64)>> = BTreeMap::new();
    let mut new: BTreeMap<Chain, Vec<(u64, u64)>> = BTreeMap::new();
    for run in runs_of(&*deps.store, &req.model, req.chain.as_ref()).await? {
        let range = (run.range.start(), run.range.end());
        if run.model_version == req.from_version && run.state == RunState::Succeeded {
            old.entry(run.chain).or_default().push(range);
        } else if run.model_version == current && covers_or_will(&run) {
            new.entry(run.chain).or_default().push(range);
        }
    }
    if old.is_empty() {
        return Err(EngineError::InvalidInput(format!(
            "no succeeded runs of model {} version {}{}: nothing to rerun",
            req.model,
            req.from_version,
            req.chain
                .as_ref()
                .map(|c| format!(" on chain {c}"))
                .unwrap_or_default()
        )));
    }
    let mut runs = Vec::new();
    for (chain, ranges) in old {
        deps.source(&chain)?;
        let covered = merge(new.remove(&chain).unwrap_or_default());
        for (lo, hi) in subtract(&merge(ranges), &covered) {
            let range = BlockRange::new(lo, hi).expect("lo <= hi");
            for chunk in range
                .chunks(req.chunk_size)
                .expect("chunk_size checked above")
            {
                let queue = deps.routing.queue_for(
                    &chain,
                    RunMode::Backfill,
                    model.spec().kind(),
                    None,
                    runs.len() as u64,
                )?;
                runs.push(NewRun {
                    model: req.model.clone(),
                    model_version: current.clone(),
                    chain: chain.clone(),
                    range: chunk,
                    mode: RunMode::Backfill,
                    kind: model.spec().kind(),
                    queue,
                    max_attempts: req.max_attempts,
                });
            }
        }
    }
    if runs.is_empty() {
        return Err(EngineError::InvalidInput(format!(
            "every block version {} of model {} produced is already covered by version {current}: nothing to rerun",
            req.from_version, req.model
        )));
    }
    let max_runs = deps.limits.max_runs_per_backfill;
    if runs.len() as u64 > max_runs {
        return Err(EngineError::InvalidInput(format!(
            "the rerun makes {} runs, more than the {max_runs} allowed per backfill; use larger chunks or one chain at a time",
            runs.len()
        )));
    }
    Ok(deps
        .store
        .create_runs(CreateRuns {
            runs,
            idempotency_key: None,
        })
        .await?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::Runner;
    use crate::memory::{MemoryBlockSource, MemoryRunQueue, MemoryRunStore, MemorySink};
    use crate::model::ModelRegistry;
    use crate::models::tests::TestModel;
    use crate::ports::{ResultSink, RunQueue};
    use crate::topic_name;

    fn eth() -> Chain {
        Chain::new("ethereum").unwrap()
    }

    struct Ports {
        store: Arc<dyn RunStore>,
        queue: Arc<dyn RunQueue>,
        sink: Arc<MemorySink>,
    }

    fn runner(ports: &Ports, version: &'static str) -> Runner {
        let mut models = ModelRegistry::new();
        // One record per block, at `version`.
        models
            .register(Arc::new(TestModel::new("per_block", version)))
            .unwrap();
        Runner::builder()
            .store_arc(ports.store.clone())
            .queue_arc(ports.queue.clone())
            .sink_arc(ports.sink.clone() as Arc<dyn ResultSink>)
            .source(MemoryBlockSource::with_empty_blocks(eth(), 0..=999))
            .models(models)
            .build()
            .unwrap()
    }

    fn req(from: &str) -> RerunRequest {
        RerunRequest {
            model: "per_block".into(),
            from_version: from.into(),
            chain: None,
            chunk_size: 100,
            max_attempts: 3,
        }
    }

    #[test]
    fn range_arithmetic() {
        assert_eq!(
            merge(vec![(5, 9), (0, 3), (4, 4), (20, 30), (25, 26)]),
            vec![(0, 9), (20, 30)]
        );
        assert_eq!(
            subtract(&[(0, 99), (200, 299)], &[(10, 19), (90, 210), (299, 400)]),
            vec![(0, 9), (20, 89), (211, 298)]
        );
        assert_eq!(subtract(&[(0, 9)], &[(0, u64::MAX)]), vec![]);
    }

    #[tokio::test]
    async fn a_new_version_reruns_every_range_of_the_old_exactly_once() {
        let ports = Ports {
            store: Arc::new(MemoryRunStore::new()),
            queue: Arc::new(MemoryRunQueue::new()),
            sink: Arc::new(MemorySink::new()),
        };
        // v1 backfilled 0-299 in runs of 100, and again 150-349 in runs of 50 (overlapping).
        let v1 = runner(&ports, "1");
        let mut ids = v1
            .backfill("per_block", &eth(), BlockRange::new(0, 299).unwrap(), 100)
            .await
            .unwrap();
        ids.extend(
            v1.backfill("per_block", &eth(), BlockRange::new(150, 349).unwrap(), 50)
                .await
                .unwrap(),
        );
        v1.run_until_done(&ids).await.unwrap();
        let deps = v1.deps();
        // Registered at v1: nothing to rerun from v1.
        let err = rerun(deps, req("1")).await.unwrap_err();
        assert!(err.to_string().contains("already"), "{err}");

        // v2 registered: the rerun covers 0-349 once, in chunks of 100.
        let v2 = runner(&ports, "2");
        let created = rerun(v2.deps(), req("1")).await.unwrap();
        let ranges: Vec<String> = created.runs.iter().map(|r| r.range.to_string()).collect();
        assert_eq!(ranges, ["0-99", "100-199", "200-299", "300-349"]);
        assert!(created.runs.iter().all(|r| r.model_version == "2"));
        let ids: Vec<_> = created.runs.iter().map(|r| r.id).collect();
        v2.run_until_done(&ids).await.unwrap();

        // A second rerun finds everything covered by v2.
        let err = rerun(v2.deps(), req("1")).await.unwrap_err();
        assert!(err.to_string().contains("already covered"), "{err}");
        let err = rerun(v2.deps(), req("0.9")).await.unwrap_err();
        assert!(err.to_string().contains("no succeeded runs"), "{err}");

        // Coverage: both versions over 0-349; v2's records are exactly one per block.
        let coverage = version_coverage(&*ports.store, "per_block").await.unwrap();
        assert_eq!(coverage.len(), 2);
        for c in &coverage {
            assert_eq!(c.ranges, vec![BlockRange::new(0, 349).unwrap()], "{c:?}");
            assert_eq!(c.blocks, 350);
        }
        let records = ports.sink.records(&topic_name("dev", &eth()));
        let v2_records: Vec<_> = records.iter().filter(|r| r.model_version == "2").collect();
        let mut blocks: Vec<u64> = v2_records.iter().map(|r| r.key.block_number).collect();
        blocks.sort_unstable();
        assert_eq!(blocks, (0..=349).collect::<Vec<_>>());
    }
}
