//! Test support: a [`MemoryRunStore`] with hooks on the two calls engine tests need to bend.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::MemoryRunStore;
use crate::chain::Chain;
use crate::data::BlockRef;
use crate::ports::{
    ContractAbi, ContractRef, CreateRuns, CreatedRuns, CursorAdvance, CursorKey, CursorRewind,
    LockLease, OutboxQuery, RealtimeCursor, RunFilter, RunPage, RunStore, ScheduledBlocks,
    StoreResult, Transition,
};
use crate::run::{ModelRun, RunEvent, RunId, RunState};
use serde_json::Value;

/// Decides a transition instead of the store: given the run as stored and the call's
/// arguments, `Some(answer)` is returned without touching the store.
pub(crate) type TransitionHook =
    Box<dyn Fn(&ModelRun, RunState, u32, &RunEvent) -> Option<StoreResult<ModelRun>> + Send + Sync>;

/// A [`MemoryRunStore`] whose `apply` asks a hook first, whose `transitions` records each
/// batch's size and may wait for a gate, and whose `cursor` may yield to other tasks after
/// reading (so two callers' reads interleave). Everything else is the store's.
#[derive(Default)]
pub(crate) struct HookedStore {
    pub(crate) inner: MemoryRunStore,
    pub(crate) on_transition: Option<TransitionHook>,
    pub(crate) yield_after_cursor: bool,
    /// Each `transitions` call takes a permit first (and keeps it).
    pub(crate) transitions_gate: Option<tokio::sync::Semaphore>,
    /// The size of every `transitions` batch, in call order.
    pub(crate) transitions_sizes: std::sync::Mutex<Vec<usize>>,
}

impl std::fmt::Debug for HookedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookedStore").finish_non_exhaustive()
    }
}

#[async_trait]
impl RunStore for HookedStore {
    async fn create_runs(&self, batch: CreateRuns) -> StoreResult<CreatedRuns> {
        self.inner.create_runs(batch).await
    }
    async fn get(&self, id: RunId) -> StoreResult<ModelRun> {
        self.inner.get(id).await
    }
    async fn list(&self, filter: &RunFilter) -> StoreResult<RunPage> {
        self.inner.list(filter).await
    }
    async fn count_by_state(&self, filter: &RunFilter) -> StoreResult<BTreeMap<RunState, u64>> {
        self.inner.count_by_state(filter).await
    }
    async fn apply(&self, t: Transition) -> StoreResult<ModelRun> {
        if let Some(hook) = &self.on_transition {
            let stored = self.inner.get(t.id).await?;
            if let Some(answer) = hook(&stored, t.expected, t.expected_attempt, &t.event) {
                return answer;
            }
        }
        self.inner.apply(t).await
    }
    async fn transitions(&self, batch: &[Transition]) -> StoreResult<Vec<StoreResult<ModelRun>>> {
        if let Some(gate) = &self.transitions_gate {
            gate.acquire().await.expect("never closed").forget();
        }
        self.transitions_sizes.lock().unwrap().push(batch.len());
        if self.on_transition.is_none() {
            return self.inner.transitions(batch).await;
        }
        // Item by item, through the hook.
        let mut out = Vec::with_capacity(batch.len());
        for t in batch {
            out.push(self.apply(t.clone()).await);
        }
        Ok(out)
    }
    async fn expired_leases(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ModelRun>> {
        self.inner.expired_leases(now, limit).await
    }
    async fn outbox(&self, query: OutboxQuery<'_>) -> StoreResult<Vec<ModelRun>> {
        self.inner.outbox(query).await
    }
    async fn cursor(&self, key: CursorKey<'_>) -> StoreResult<Option<u64>> {
        let cursor = self.inner.cursor(key).await;
        if self.yield_after_cursor {
            tokio::task::yield_now().await;
        }
        cursor
    }
    async fn cursors(&self, chain: Option<&Chain>) -> StoreResult<Vec<RealtimeCursor>> {
        self.inner.cursors(chain).await
    }
    async fn advance_cursor(&self, advance: CursorAdvance<'_>) -> StoreResult<Vec<ModelRun>> {
        self.inner.advance_cursor(advance).await
    }
    async fn scheduled_blocks(&self, key: CursorKey<'_>) -> StoreResult<Vec<BlockRef>> {
        self.inner.scheduled_blocks(key).await
    }
    async fn record_scheduled_blocks(&self, record: ScheduledBlocks<'_>) -> StoreResult<()> {
        self.inner.record_scheduled_blocks(record).await
    }
    async fn rewind_cursor(&self, rewind: CursorRewind<'_>) -> StoreResult<()> {
        self.inner.rewind_cursor(rewind).await
    }
    async fn try_lock(&self, lease: LockLease<'_>) -> StoreResult<bool> {
        self.inner.try_lock(lease).await
    }
    async fn put_abi(&self, contract: ContractRef<'_>, abi: Value) -> StoreResult<ContractAbi> {
        self.inner.put_abi(contract, abi).await
    }
    async fn abi(&self, contract: ContractRef<'_>) -> StoreResult<Option<ContractAbi>> {
        self.inner.abi(contract).await
    }
    async fn abis(&self, chain: Option<&Chain>) -> StoreResult<Vec<ContractAbi>> {
        self.inner.abis(chain).await
    }
    async fn delete_abi(&self, contract: ContractRef<'_>) -> StoreResult<bool> {
        self.inner.delete_abi(contract).await
    }
}
