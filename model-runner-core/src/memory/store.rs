//! [`MemoryRunStore`]: run state in a mutex-guarded map.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use alloy_primitives::Address;
use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::chain::Chain;
use crate::clock::{Clock, SystemClock};
use crate::data::BlockRef;
use crate::ports::{
    ContractAbi, ContractRef, CreateRuns, CreatedRuns, CursorAdvance, CursorKey, CursorRewind,
    LockLease, OutboxQuery, RealtimeCursor, RunFilter, RunPage, RunStore, ScheduledBlocks,
    StoreError, StoreResult, Transition, cursor_conflict, idempotency_conflict, same_batch,
    state_conflict, validate_batch, validate_cursor_runs,
};
use crate::run::{ModelRun, NewRun, RunId, RunState};
use serde_json::Value;

/// A [`RunStore`] in memory. Not durable; every operation is atomic under one lock.
#[derive(Debug)]
pub struct MemoryRunStore {
    inner: Mutex<Inner>,
    /// Stamps runs, cursors and ABIs and ends locks; shared with the engine in tests that
    /// pause time, so both read the same (paused) time.
    clock: Arc<dyn Clock>,
}

impl Default for MemoryRunStore {
    fn default() -> Self {
        Self::with_clock(SystemClock::shared())
    }
}

#[derive(Debug, Default)]
struct Inner {
    runs: BTreeMap<RunId, ModelRun>,
    by_key: HashMap<String, Vec<RunId>>,
    cursors: BTreeMap<(String, Chain), (u64, DateTime<Utc>)>,
    /// The recorded last blocks of realtime runs, by (model, chain), by number.
    scheduled: BTreeMap<(String, Chain), BTreeMap<u64, BlockRef>>,
    locks: HashMap<String, (String, DateTime<Utc>)>,
    abis: BTreeMap<(Chain, Address), ContractAbi>,
}

impl MemoryRunStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that reads the time from `clock` (give it the engine's
    /// [`EngineDeps::clock`](crate::engine::EngineDeps::clock)).
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            inner: Mutex::default(),
            clock,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change: every mutation is
        // computed on a copy first, so the poisoned data is still consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn insert_all(
        &mut self,
        runs: Vec<NewRun>,
        key: Option<String>,
        now: DateTime<Utc>,
    ) -> Vec<ModelRun> {
        let created: Vec<ModelRun> = runs
            .into_iter()
            .map(|spec| ModelRun::new(spec, key.clone(), now))
            .collect();
        if let Some(k) = key {
            self.by_key
                .insert(k, created.iter().map(|r| r.id).collect());
        }
        for r in &created {
            self.runs.insert(r.id, r.clone());
        }
        created
    }
}

#[async_trait]
impl RunStore for MemoryRunStore {
    async fn create_runs(&self, batch: CreateRuns) -> StoreResult<CreatedRuns> {
        validate_batch(&batch.runs)?;
        let mut inner = self.lock();
        if let Some(key) = &batch.idempotency_key
            && let Some(ids) = inner.by_key.get(key)
        {
            let existing: Vec<ModelRun> = ids.iter().map(|id| inner.runs[id].clone()).collect();
            if !same_batch(&existing, &batch.runs) {
                return Err(idempotency_conflict(key));
            }
            return Ok(CreatedRuns {
                runs: existing,
                created: false,
            });
        }
        let runs = inner.insert_all(batch.runs, batch.idempotency_key, self.clock.now());
        Ok(CreatedRuns {
            runs,
            created: true,
        })
    }

    async fn get(&self, id: RunId) -> StoreResult<ModelRun> {
        self.lock()
            .runs
            .get(&id)
            .cloned()
            .ok_or(StoreError::NotFound { id })
    }

    async fn list(&self, filter: &RunFilter) -> StoreResult<RunPage> {
        let size = filter.page_size();
        let inner = self.lock();
        let start = filter
            .after
            .map(std::ops::Bound::Excluded)
            .unwrap_or(std::ops::Bound::Unbounded);
        let runs: Vec<ModelRun> = inner
            .runs
            .range((start, std::ops::Bound::Unbounded))
            .map(|(_, r)| r)
            .filter(|r| filter.matches(r))
            .take(size + 1)
            .cloned()
            .collect();
        Ok(RunPage::from_overfetched(runs, size))
    }

    async fn count_by_state(&self, filter: &RunFilter) -> StoreResult<BTreeMap<RunState, u64>> {
        let filter = RunFilter {
            state: None,
            after: None,
            ..filter.clone()
        };
        let mut out = BTreeMap::new();
        for r in self.lock().runs.values().filter(|r| filter.matches(r)) {
            *out.entry(r.state).or_insert(0) += 1;
        }
        Ok(out)
    }

    async fn apply(&self, t: Transition) -> StoreResult<ModelRun> {
        let (id, expected, expected_attempt, event) = t.into_parts();
        let mut inner = self.lock();
        let run = inner.runs.get_mut(&id).ok_or(StoreError::NotFound { id })?;
        if run.state != expected || run.attempt != expected_attempt {
            return Err(state_conflict(run.clone(), expected, expected_attempt));
        }
        let mut next = run.clone();
        next.apply(&event, self.clock.now())?;
        *run = next.clone();
        Ok(next)
    }

    async fn transitions(&self, batch: &[Transition]) -> StoreResult<Vec<StoreResult<ModelRun>>> {
        // Under one lock: the batch is applied at once, in order.
        let mut inner = self.lock();
        let now = self.clock.now();
        Ok(batch
            .iter()
            .map(|t| {
                let run = inner
                    .runs
                    .get_mut(&t.id)
                    .ok_or(StoreError::NotFound { id: t.id })?;
                if run.state != t.expected || run.attempt != t.expected_attempt {
                    return Err(state_conflict(run.clone(), t.expected, t.expected_attempt));
                }
                let mut next = run.clone();
                next.apply(&t.event, now)?;
                *run = next.clone();
                Ok(next)
            })
            .collect())
    }

    async fn expired_leases(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ModelRun>> {
        let inner = self.lock();
        let mut out: Vec<ModelRun> = inner
            .runs
            .values()
            .filter(|r| r.state == RunState::Running && r.lease_expires_at.is_some_and(|t| t < now))
            .cloned()
            .collect();
        out.sort_by_key(|r| (r.lease_expires_at, r.id));
        out.truncate(limit);
        Ok(out)
    }

    async fn outbox(&self, query: OutboxQuery<'_>) -> StoreResult<Vec<ModelRun>> {
        let (now, limit, skip_queues) = query.into_parts();
        let inner = self.lock();
        let skipped = |r: &ModelRun| skip_queues.contains(&r.queue);
        let mut pending: Vec<ModelRun> = inner
            .runs
            .values()
            .filter(|r| r.state == RunState::Pending && !skipped(r))
            .take(limit)
            .cloned()
            .collect();
        if pending.len() < limit {
            let mut retries: Vec<ModelRun> = inner
                .runs
                .values()
                .filter(|r| {
                    r.state != RunState::Pending && r.is_due_for_publish(now) && !skipped(r)
                })
                .cloned()
                .collect();
            retries.sort_by_key(|r| (r.next_attempt_at, r.id));
            retries.truncate(limit - pending.len());
            pending.extend(retries);
        }
        Ok(pending)
    }

    async fn cursor(&self, key: CursorKey<'_>) -> StoreResult<Option<u64>> {
        let (model, chain) = (key.model, key.chain);
        Ok(self
            .lock()
            .cursors
            .get(&(model.to_owned(), chain.clone()))
            .map(|(b, _)| *b))
    }

    async fn cursors(&self, chain: Option<&Chain>) -> StoreResult<Vec<RealtimeCursor>> {
        Ok(self
            .lock()
            .cursors
            .iter()
            .filter(|((_, c), _)| chain.is_none_or(|want| want == c))
            .map(|((model, chain), (block, at))| RealtimeCursor {
                model: model.clone(),
                chain: chain.clone(),
                block: *block,
                updated_at: *at,
            })
            .collect())
    }

    async fn advance_cursor(&self, advance: CursorAdvance<'_>) -> StoreResult<Vec<ModelRun>> {
        let (model, chain, expected, to, runs) = advance.into_parts();
        validate_cursor_runs(&runs)?;
        let mut inner = self.lock();
        let key = (model.to_owned(), chain.clone());
        let actual = inner.cursors.get(&key).map(|(b, _)| *b);
        if actual != expected {
            return Err(cursor_conflict(model, chain, expected, actual));
        }
        let now = self.clock.now();
        inner.cursors.insert(key, (to, now));
        Ok(inner.insert_all(runs, None, now))
    }

    async fn scheduled_blocks(&self, key: CursorKey<'_>) -> StoreResult<Vec<BlockRef>> {
        let (model, chain) = (key.model, key.chain);
        Ok(self
            .lock()
            .scheduled
            .get(&(model.to_owned(), chain.clone()))
            .map(|blocks| blocks.values().rev().copied().collect())
            .unwrap_or_default())
    }

    async fn record_scheduled_blocks(&self, record: ScheduledBlocks<'_>) -> StoreResult<()> {
        let (model, chain, blocks, keep_from) = record.into_parts();
        let mut inner = self.lock();
        let recorded = inner
            .scheduled
            .entry((model.to_owned(), chain.clone()))
            .or_default();
        recorded.extend(blocks.iter().map(|b| (b.number, *b)));
        recorded.retain(|n, _| *n >= keep_from);
        Ok(())
    }

    async fn rewind_cursor(&self, rewind: CursorRewind<'_>) -> StoreResult<()> {
        let (model, chain, expected, to) = rewind.into_parts();
        let mut inner = self.lock();
        let key = (model.to_owned(), chain.clone());
        let actual = inner.cursors.get(&key).map(|(b, _)| *b);
        if actual != Some(expected) && actual != Some(to) {
            return Err(cursor_conflict(model, chain, Some(expected), actual));
        }
        let now = self.clock.now();
        inner.cursors.insert(key.clone(), (to, now));
        if let Some(blocks) = inner.scheduled.get_mut(&key) {
            blocks.retain(|n, _| *n <= to);
        }
        Ok(())
    }

    async fn try_lock(&self, lease: LockLease<'_>) -> StoreResult<bool> {
        let (name, owner, until) = lease.into_parts();
        let now = self.clock.now();
        let mut inner = self.lock();
        match inner.locks.get(name) {
            Some((holder, end)) if holder != owner && *end > now => Ok(false),
            _ => {
                inner
                    .locks
                    .insert(name.to_owned(), (owner.to_owned(), until));
                Ok(true)
            }
        }
    }

    async fn put_abi(&self, contract: ContractRef<'_>, abi: Value) -> StoreResult<ContractAbi> {
        let stored = ContractAbi::validated(contract, abi, self.clock.now())?;
        self.lock()
            .abis
            .insert((stored.chain.clone(), stored.address), stored.clone());
        Ok(stored)
    }

    async fn abi(&self, contract: ContractRef<'_>) -> StoreResult<Option<ContractAbi>> {
        let (chain, address) = (contract.chain, contract.address);
        Ok(self.lock().abis.get(&(chain.clone(), address)).cloned())
    }

    async fn abis(&self, chain: Option<&Chain>) -> StoreResult<Vec<ContractAbi>> {
        Ok(self
            .lock()
            .abis
            .values()
            .filter(|a| chain.is_none_or(|c| c == &a.chain))
            .cloned()
            .collect())
    }

    async fn delete_abi(&self, contract: ContractRef<'_>) -> StoreResult<bool> {
        let (chain, address) = (contract.chain, contract.address);
        Ok(self.lock().abis.remove(&(chain.clone(), address)).is_some())
    }
}

#[cfg(all(test, feature = "conformance"))]
mod tests {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn conformance() {
        crate::conformance::store::run_all(|| async { super::MemoryRunStore::new() }).await;
    }
}
