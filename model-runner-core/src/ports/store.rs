//! [`RunStore`]: where run state lives.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use alloy_dyn_abi::Specifier;
use alloy_json_abi::JsonAbi;
use alloy_primitives::Address;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chain::{Chain, RunMode};
use crate::data::BlockRef;
use crate::run::{ModelRun, NewRun, RunEvent, RunId, RunState, TransitionError};

/// A store failure a caller can act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No run with that id.
    #[error("run {id} not found")]
    NotFound {
        /// The id asked for.
        id: RunId,
    },
    /// The run is not in the state/attempt the caller expected (someone else moved it), or an
    /// idempotency key / cursor does not match. `current` is the run as stored, when there is one.
    #[error("conflict: {message}")]
    Conflict {
        /// What did not match.
        message: String,
        /// The run as it is now.
        current: Option<Box<ModelRun>>,
    },
    /// The state machine refused the event.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// Bad input (e.g. an empty batch, a malformed cursor).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The backend is unreachable or overloaded; the operation may be retried.
    #[error("store unavailable ({adapter}): {message}")]
    Unavailable {
        /// Adapter name.
        adapter: &'static str,
        /// What happened (no secrets).
        message: String,
    },
    /// Any other backend failure.
    #[error("store backend {adapter}: {source}")]
    Backend {
        /// Adapter name.
        adapter: &'static str,
        /// The cause.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StoreError {
    /// Whether retrying the same call may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    /// The stored run carried by a [`StoreError::Conflict`].
    pub fn current(&self) -> Option<&ModelRun> {
        match self {
            StoreError::Conflict { current, .. } => current.as_deref(),
            _ => None,
        }
    }
}

/// A batch of runs to create atomically.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRuns {
    /// Runs, in order.
    pub runs: Vec<NewRun>,
    /// A resubmission with the same key returns the first submission's runs.
    pub idempotency_key: Option<String>,
}

/// Result of [`RunStore::create_runs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedRuns {
    /// The runs, in submission order.
    pub runs: Vec<ModelRun>,
    /// `false` when an earlier submission with the same idempotency key was returned.
    pub created: bool,
}

/// One compare-and-set ([`RunStore::apply`], or one item of [`RunStore::transitions`]):
/// apply `event` to run `id` if it is still in `expected` state on `expected_attempt`.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The run.
    pub id: RunId,
    /// The state the caller saw.
    pub expected: RunState,
    /// The attempt the caller saw.
    pub expected_attempt: u32,
    /// What happened.
    pub event: RunEvent,
}

impl Transition {
    /// The run, the state and attempt the caller saw, and the event, in that order.
    pub fn into_parts(self) -> (RunId, RunState, u32, RunEvent) {
        (self.id, self.expected, self.expected_attempt, self.event)
    }
}

/// Filter and page of [`RunStore::list`]. Fields left `None` match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFilter {
    /// Model name.
    pub model: Option<String>,
    /// Chain.
    pub chain: Option<Chain>,
    /// State.
    pub state: Option<RunState>,
    /// Mode.
    pub mode: Option<RunMode>,
    /// Created at or after.
    pub since: Option<DateTime<Utc>>,
    /// Only runs with an id greater than this (the previous page's `next`).
    pub after: Option<RunId>,
    /// Page size; adapters cap it at 1000. `0` means the default of 100.
    pub limit: u32,
}

impl RunFilter {
    /// The effective page size.
    pub fn page_size(&self) -> usize {
        match self.limit {
            0 => 100,
            n => n.min(1000) as usize,
        }
    }

    /// Whether `run` matches every field but the page bounds.
    pub fn matches(&self, run: &ModelRun) -> bool {
        self.model.as_ref().is_none_or(|m| &run.model == m)
            && self.chain.as_ref().is_none_or(|c| &run.chain == c)
            && self.state.is_none_or(|s| run.state == s)
            && self.mode.is_none_or(|m| run.mode == m)
            && self.since.is_none_or(|t| run.created_at >= t)
            && self.after.is_none_or(|a| run.id > a)
    }
}

/// One page of runs, ascending by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPage {
    /// The runs.
    pub runs: Vec<ModelRun>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<RunId>,
}

impl RunPage {
    /// A page from up to `size + 1` matching runs fetched in id order: the extra run, if any,
    /// only tells that another page follows. Adapters fetch one more than the page size and
    /// call this, so every store pages the same way.
    pub fn from_overfetched(mut runs: Vec<ModelRun>, size: usize) -> Self {
        let next = if runs.len() > size {
            runs.truncate(size);
            runs.last().map(|r| r.id)
        } else {
            None
        };
        Self { runs, next }
    }
}

/// What a [`RunStore`] answers: a value or a [`StoreError`].
pub type StoreResult<T> = Result<T, StoreError>;

/// Which realtime cursor: that of `model` on `chain` (the cursor methods of [`RunStore`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorKey<'a> {
    /// Model.
    pub model: &'a str,
    /// Chain.
    pub chain: &'a Chain,
}

impl<'a> CursorKey<'a> {
    /// The cursor of `model` on `chain`.
    pub fn new(model: &'a str, chain: &'a Chain) -> Self {
        Self { model, chain }
    }
}

/// A cursor moving forward from `expected` (`None`: no cursor yet) to `to`, creating `runs`
/// ([`RunStore::advance_cursor`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorAdvance<'a> {
    /// The cursor.
    pub key: CursorKey<'a>,
    /// Where the caller saw it.
    pub expected: Option<u64>,
    /// Where it moves to.
    pub to: u64,
    /// The runs to create with the move.
    pub runs: Vec<NewRun>,
}

impl<'a> CursorAdvance<'a> {
    /// Model, chain, `expected`, `to` and `runs`, in that order.
    pub fn into_parts(self) -> (&'a str, &'a Chain, Option<u64>, u64, Vec<NewRun>) {
        let k = self.key;
        (k.model, k.chain, self.expected, self.to, self.runs)
    }
}

/// A cursor moving back from `expected` to `to` after a reorganisation
/// ([`RunStore::rewind_cursor`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorRewind<'a> {
    /// The cursor.
    pub key: CursorKey<'a>,
    /// Where the caller saw it.
    pub expected: u64,
    /// Where it moves back to.
    pub to: u64,
}

impl<'a> CursorRewind<'a> {
    /// Model, chain, `expected` and `to`, in that order.
    pub fn into_parts(self) -> (&'a str, &'a Chain, u64, u64) {
        (self.key.model, self.key.chain, self.expected, self.to)
    }
}

/// `blocks`, the last blocks of a cursor's realtime runs about to be created, to record, and
/// the records of numbers below `keep_from` to forget ([`RunStore::record_scheduled_blocks`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledBlocks<'a> {
    /// The cursor.
    pub key: CursorKey<'a>,
    /// The blocks to record.
    pub blocks: &'a [BlockRef],
    /// Records below this number are forgotten.
    pub keep_from: u64,
}

impl<'a> ScheduledBlocks<'a> {
    /// Model, chain, `blocks` and `keep_from`, in that order.
    pub fn into_parts(self) -> (&'a str, &'a Chain, &'a [BlockRef], u64) {
        (self.key.model, self.key.chain, self.blocks, self.keep_from)
    }
}

/// What [`RunStore::outbox`] asks for: at most `limit` runs due at `now`, none of
/// `skip_queues`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxQuery<'a> {
    /// Runs due at this time.
    pub now: DateTime<Utc>,
    /// At most this many.
    pub limit: usize,
    /// Queues the enqueuer cannot publish to right now.
    pub skip_queues: &'a [String],
}

impl<'a> OutboxQuery<'a> {
    /// `now`, `limit` and `skip_queues`, in that order.
    pub fn into_parts(self) -> (DateTime<Utc>, usize, &'a [String]) {
        (self.now, self.limit, self.skip_queues)
    }
}

/// A named lease that `owner` takes or renews until `until` ([`RunStore::try_lock`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockLease<'a> {
    /// The lock's name, e.g. `scheduler`.
    pub name: &'a str,
    /// Who takes it.
    pub owner: &'a str,
    /// Until when.
    pub until: DateTime<Utc>,
}

impl<'a> LockLease<'a> {
    /// `name`, `owner` and `until`, in that order.
    pub fn into_parts(self) -> (&'a str, &'a str, DateTime<Utc>) {
        (self.name, self.owner, self.until)
    }
}

/// A contract: `address` on `chain` (the ABI registry's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContractRef<'a> {
    /// Chain the contract lives on.
    pub chain: &'a Chain,
    /// Its address.
    pub address: Address,
}

impl<'a> ContractRef<'a> {
    /// `address` on `chain`.
    pub fn new(chain: &'a Chain, address: Address) -> Self {
        Self { chain, address }
    }
}

/// Where realtime scheduling of a model on a chain has got to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RealtimeCursor {
    /// Model.
    pub model: String,
    /// Chain.
    pub chain: Chain,
    /// Last block covered by a created run (inclusive).
    pub block: u64,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// A contract's JSON ABI in the registry ([`RunStore::put_abi`]): what the `abi_events` model
/// decodes that contract's logs with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContractAbi {
    /// Chain the contract lives on.
    pub chain: Chain,
    /// Contract address (serialised in lowercase hex).
    #[serde(with = "lowercase_address")]
    pub address: Address,
    /// The JSON ABI as registered (an array of items, as solc and Etherscan emit it).
    pub abi: Value,
    /// Last registration.
    pub updated_at: DateTime<Utc>,
}

impl ContractAbi {
    /// A registry entry for `abi`, or [`StoreError::InvalidInput`] unless [`parse_abi`] accepts
    /// it: every store's [`RunStore::put_abi`] checks and builds its answer with this.
    pub fn validated(
        contract: ContractRef<'_>,
        abi: Value,
        updated_at: DateTime<Utc>,
    ) -> StoreResult<Self> {
        parse_abi(&abi)?;
        Ok(Self {
            chain: contract.chain.clone(),
            address: contract.address,
            abi,
            updated_at,
        })
    }

    /// The ABI parsed for decoding. A registered ABI was validated by [`parse_abi`] on the way
    /// in, so this fails only on a corrupt store.
    pub fn parsed(&self) -> StoreResult<JsonAbi> {
        parse_abi(&self.abi)
    }
}

/// Serde of an [`Address`] as `0x` and 40 lowercase hex digits (the form every model writes and
/// every store keys by); any case is accepted on the way in.
mod lowercase_address {
    use alloy_primitives::Address;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(a: &Address, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{a:#x}"))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Address, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_address(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses a contract address: `0x` and 40 hex digits, any case (a mixed-case address is not
/// checked against its EIP-55 checksum: registries key by the lowercase form).
pub fn parse_address(text: &str) -> StoreResult<Address> {
    let digits = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X"));
    match digits {
        Some(d) if d.len() == 40 && d.bytes().all(|b| b.is_ascii_hexdigit()) => {
            d.parse::<Address>().map_err(|e| {
                StoreError::InvalidInput(format!("invalid contract address {text:?}: {e}"))
            })
        }
        _ => Err(StoreError::InvalidInput(format!(
            "invalid contract address {text:?}: expected 0x followed by 40 hex digits"
        ))),
    }
}

/// Validates a JSON ABI: it MUST be an array of ABI items that `alloy-json-abi` parses (each
/// with a known `type` and well-formed parameter types). The error names what is wrong.
/// Every store calls this in [`RunStore::put_abi`], so all refuse the same ABIs with the same
/// words.
pub fn parse_abi(abi: &Value) -> StoreResult<JsonAbi> {
    if !abi.is_array() {
        return Err(StoreError::InvalidInput(format!(
            "invalid ABI: expected a JSON array of ABI items (functions, events, errors), got {}",
            json_kind(abi)
        )));
    }
    let parsed = serde_json::from_value::<JsonAbi>(abi.clone())
        .map_err(|e| StoreError::InvalidInput(format!("invalid ABI: {e}")))?;
    // `alloy-json-abi` keeps parameter types as written; resolving each one is what rejects
    // `uint257` or `address[` here rather than at decoding time.
    let invalid = |item: String, name: &str, ty: &str, e: alloy_dyn_abi::Error| {
        StoreError::InvalidInput(format!(
            "invalid ABI: {item} parameter {name:?} has type {ty:?}, which is not a Solidity type: {e}"
        ))
    };
    for event in parsed.events() {
        for p in &event.inputs {
            p.resolve()
                .map_err(|e| invalid(format!("event {}", event.name), &p.name, &p.ty, e))?;
        }
    }
    let functions = parsed.functions().map(|f| {
        (
            format!("function {}", f.name),
            f.inputs.iter().chain(&f.outputs),
        )
    });
    for (item, params) in functions {
        for p in params {
            p.resolve()
                .map_err(|e| invalid(item.clone(), &p.name, &p.ty, e))?;
        }
    }
    for error in parsed.errors() {
        for p in &error.inputs {
            p.resolve()
                .map_err(|e| invalid(format!("error {}", error.name), &p.name, &p.ty, e))?;
        }
    }
    if let Some(constructor) = &parsed.constructor {
        for p in &constructor.inputs {
            p.resolve()
                .map_err(|e| invalid("constructor".into(), &p.name, &p.ty, e))?;
        }
    }
    Ok(parsed)
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Durable run state, the outbox and the realtime cursors.
///
/// # Contract
///
/// - `create_runs` MUST create all runs of a batch or none, in state `pending`, attempt 1, with
///   fresh UUID v7 ids ascending in batch order. With an idempotency key it MUST return the runs
///   of the first batch created with that key (and `created = false`) instead of creating more;
///   a resubmission with the same key but different runs MUST be a `Conflict`. An empty batch is
///   `InvalidInput`.
/// - `get` MUST return `NotFound` for an unknown id.
/// - `list` MUST return runs matching the filter ascending by id, at most `page_size()` of them,
///   and `next` MUST be set exactly when more matching runs may follow; walking pages with
///   `after = next` MUST visit every matching run once, even while runs are added.
/// - `apply` MUST be a compare-and-set: it applies the [`Transition`]'s event (with
///   [`ModelRun::apply`], the only place transitions are decided) only if the run is still in
///   `expected` state on `expected_attempt`, else `Conflict` carrying the current run; a refused event is
///   `Transition` and changes nothing. Concurrent transitions of one run MUST serialise: of two
///   racing callers with the same expectation exactly one wins.
/// - `transitions` MUST leave every run, and return for every item, exactly what
///   `apply` called once per item in batch order
///   would: each item is a compare-and-set of its own, an item that conflicts or is refused
///   fails alone (its own `Conflict`, `Transition` or `NotFound` in its slot) and never its
///   batch, and a run named twice sees the first item's result before the second is decided.
///   An outer `Err` (the store unreachable past its retry budget) means some items may have
///   been applied and others not; the caller retries them as it would a failed `apply`.
/// - A claim ([`RunStoreExt::claim`], the `Start` event) MUST move a `queued` run on `attempt`
///   to `running` with a lease for `owner`, and MUST let exactly one of any number of
///   concurrent claimers win.
/// - A heartbeat ([`RunStoreExt::heartbeat`]) MUST renew the lease and record progress only for
///   the current lease holder on that attempt.
/// - `expired_leases` MUST return `running` runs whose lease ended before `now`.
/// - `mark_enqueued` MUST leave every run exactly as `apply` of its `Enqueue` transition
///   would (same fields, same refusals), whether it marks them one by one or together.
/// - `stale_queued` MUST return `queued` runs whose `queued_at` is before `before`, oldest
///   first, and no other run.
/// - `outbox` MUST return runs due for publishing at `now` (see
///   [`ModelRun::is_due_for_publish`]): every `pending` run, oldest first, then retries whose
///   time has come, leaving out every run whose queue is in `skip_queues`.
/// - `advance_cursor` MUST, atomically, check the cursor of (model, chain) equals `expected`
///   (`None`: no cursor yet), set it to `to`, and create `runs`; on mismatch nothing changes and
///   it returns `Conflict`.
/// - `scheduled_blocks` MUST return the [`BlockRef`]s recorded for (model, chain) by
///   `record_scheduled_blocks`, newest (highest number) first, one per number (a later record of
///   a number replaces the earlier).
/// - `record_scheduled_blocks` MUST record `blocks` for (model, chain) and forget the records
///   of numbers below `keep_from`, atomically; it MUST be durable before it returns, since the
///   scheduler records runs' last blocks before it advances the cursor over them.
/// - `rewind_cursor` MUST, atomically, check the cursor of (model, chain) equals `expected`,
///   set it to `to` and forget the records of numbers above `to`; a cursor already at `to`
///   counts as a match (so a retried call succeeds); on mismatch nothing changes and it
///   returns `Conflict`.
/// - `realtime_runs_after` MUST return every realtime run of (model, chain) whose last block is
///   above `block` and whose state is neither `cancelled` nor `superseded`, in id order. The
///   default pages through `list`; an adapter SHOULD override it with an indexed query.
/// - The defaults of the three record methods refuse with `Backend` ("keeps no block
///   records"): a store without them cannot follow a chain reorganisation, so realtime
///   scheduling on it fails loudly instead of missing reorgs. Every adapter of this crate and of
///   `model-runner-adapters` implements them.
/// - `try_lock` MUST grant a named lease to one owner at a time until `until`; the holder MAY
///   renew it; another owner gets it only after it ends.
/// - Every write MUST be durable when the call returns (for durable adapters), with one
///   exception an adapter MAY take and MUST document: a claim (`Start`) and a heartbeat MAY be
///   committed without waiting for durability, so that a crash of the store (not a clean
///   restart) can undo the last ones. An undone claim leaves the run `queued` on the same
///   attempt; a caller that then finds its run in that state MUST give the run back to be
///   claimed again (the worker requeues its message) rather than drop it. An undone heartbeat
///   only leaves the earlier lease end.
///
/// ## ABI registry
///
/// The store also keeps one JSON ABI per (chain, contract address), for ABI-driven decoding.
///
/// - `put_abi` MUST validate the ABI with [`parse_abi`] and, when it is invalid, return
///   `InvalidInput` naming what is wrong and store nothing (an earlier ABI of that contract
///   stays). A valid ABI MUST replace any earlier one of (chain, address) (an upsert) and be
///   durable when the call returns; the returned [`ContractAbi`] is what `abi` reads back.
/// - `abi` MUST return the last ABI put for (chain, address), `None` when there is none (or it
///   was deleted). The same address on another chain is another contract.
/// - `abis` MUST return every registered ABI (of `chain`, when given), ordered by chain then
///   address.
/// - `delete_abi` MUST remove the ABI of (chain, address) and return whether there was one;
///   deleting a missing one is not an error.
/// - The defaults refuse with `Backend` ("keeps no ABI registry"); every adapter of this crate
///   and of `model-runner-adapters` implements them.
///
/// ## Readiness
///
/// `ping` is the readiness probe behind `GET /readyz`.
///
/// - `ping` MUST return `Ok` only when the backend answered a read made by this call, and MUST
///   fail (with [`StoreError::Unavailable`] when the backend cannot be reached) otherwise.
/// - `ping` MUST NOT write anything.
/// - `ping` SHOULD bound its own wait to a couple of seconds; callers MUST still bound it with
///   a timeout of their own.
/// - Its error MUST NOT contain secrets.
/// - The default reads the nil run id by primary key (`get`; `NotFound` means the backend
///   answered), which also proves the schema is in place; an adapter MAY override it with a
///   cheaper round trip.
#[async_trait]
pub trait RunStore: fmt::Debug + Send + Sync + 'static {
    /// Creates a batch of runs atomically (see the contract).
    async fn create_runs(&self, batch: CreateRuns) -> StoreResult<CreatedRuns>;

    /// One run.
    async fn get(&self, id: RunId) -> StoreResult<ModelRun>;

    /// A page of runs matching `filter`.
    async fn list(&self, filter: &RunFilter) -> StoreResult<RunPage>;

    /// Number of runs per state, for runs matching `filter`'s model, chain, mode and since.
    async fn count_by_state(&self, filter: &RunFilter) -> StoreResult<BTreeMap<RunState, u64>>;

    /// Compare-and-set transition: applies `t.event` to run `t.id` if it is still in
    /// `t.expected` state on `t.expected_attempt` (see the contract).
    /// [`RunStoreExt::transition`] takes the four parts.
    async fn apply(&self, t: Transition) -> StoreResult<ModelRun>;

    /// A batch of compare-and-set transitions, one result per item in order (see the
    /// contract). The default applies them one by one with [`apply`](RunStore::apply);
    /// adapters SHOULD apply a batch in a few round trips, with the same results.
    async fn transitions(&self, batch: &[Transition]) -> StoreResult<Vec<StoreResult<ModelRun>>> {
        let mut out = Vec::with_capacity(batch.len());
        for t in batch {
            match self.apply(t.clone()).await {
                Err(e @ (StoreError::Unavailable { .. } | StoreError::Backend { .. })) => {
                    return Err(e);
                }
                result => out.push(result),
            }
        }
        Ok(out)
    }

    /// Running runs whose lease ended before `now`, oldest lease first.
    async fn expired_leases(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ModelRun>>;

    /// Marks published runs `queued` ([`RunEvent::Enqueue`]): each run only if it is still in
    /// the given state on the given attempt, a compare-and-set per run as
    /// [`apply`](RunStore::apply) makes it; runs that moved on meanwhile (cancelled,
    /// say) are left as they are and not counted. Returns how many were marked. The default
    /// transitions them one by one; adapters SHOULD mark the batch in one round trip, with
    /// the same result.
    async fn mark_enqueued(&self, runs: &[(RunId, RunState, u32)]) -> StoreResult<usize> {
        let mut marked = 0;
        for (id, state, attempt) in runs {
            match self
                .transition(*id, *state, *attempt, RunEvent::Enqueue)
                .await
            {
                Ok(_) => marked += 1,
                Err(StoreError::Conflict { .. } | StoreError::Transition(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(marked)
    }

    /// `queued` runs whose `queued_at` is before `before`, oldest `queued_at` first, at most
    /// `limit`: the reconciler's candidates, whose message may be lost. The default walks
    /// [`list`](RunStore::list) over the `queued` runs; adapters MAY answer from an index.
    async fn stale_queued(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<ModelRun>> {
        let mut filter = RunFilter {
            state: Some(RunState::Queued),
            limit: 1000,
            ..Default::default()
        };
        let mut stale = Vec::new();
        loop {
            let page = self.list(&filter).await?;
            stale.extend(
                page.runs
                    .into_iter()
                    .filter(|r| r.queued_at.is_some_and(|at| at < before)),
            );
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        stale.sort_by_key(|r| (r.queued_at, r.id));
        stale.truncate(limit);
        Ok(stale)
    }

    /// Runs due for publishing at `now`, in order, leaving out runs of `skip_queues` (queues the
    /// enqueuer cannot publish to right now, so their runs do not crowd out the others).
    async fn outbox(&self, query: OutboxQuery<'_>) -> StoreResult<Vec<ModelRun>>;

    /// The realtime cursor `key`.
    async fn cursor(&self, key: CursorKey<'_>) -> StoreResult<Option<u64>>;

    /// Every realtime cursor, optionally of one chain.
    async fn cursors(&self, chain: Option<&Chain>) -> StoreResult<Vec<RealtimeCursor>>;

    /// Moves the cursor from `expected` to `to` and creates `runs`, atomically.
    async fn advance_cursor(&self, advance: CursorAdvance<'_>) -> StoreResult<Vec<ModelRun>>;

    /// The recorded last blocks of (model, chain)'s realtime runs, newest first (see the
    /// contract).
    async fn scheduled_blocks(&self, key: CursorKey<'_>) -> StoreResult<Vec<BlockRef>> {
        let _ = key;
        Err(no_block_records())
    }

    /// Records `blocks`, the last blocks of realtime runs about to be created, and forgets the
    /// records of numbers below `keep_from`.
    async fn record_scheduled_blocks(&self, record: ScheduledBlocks<'_>) -> StoreResult<()> {
        let _ = record;
        Err(no_block_records())
    }

    /// Moves the cursor back from `expected` to `to` (after a reorg) and forgets the block
    /// records above `to`, atomically.
    async fn rewind_cursor(&self, rewind: CursorRewind<'_>) -> StoreResult<()> {
        let _ = rewind;
        Err(no_block_records())
    }

    /// The realtime runs of (model, chain) past `block` that a reorg down to `block` would
    /// supersede: last block above `block`, not cancelled or superseded.
    async fn realtime_runs_after(
        &self,
        key: CursorKey<'_>,
        block: u64,
    ) -> StoreResult<Vec<ModelRun>> {
        let mut filter = RunFilter {
            model: Some(key.model.to_owned()),
            chain: Some(key.chain.clone()),
            mode: Some(RunMode::Realtime),
            limit: 1000,
            ..Default::default()
        };
        let mut runs = Vec::new();
        loop {
            let page = self.list(&filter).await?;
            runs.extend(page.runs.into_iter().filter(|r| {
                r.range.end() > block
                    && !matches!(r.state, RunState::Cancelled | RunState::Superseded)
            }));
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        Ok(runs)
    }

    /// Takes or renews the named lease for `owner` until `until`; `true` if `owner` holds it.
    async fn try_lock(&self, lease: LockLease<'_>) -> StoreResult<bool>;

    /// Registers (or replaces) the JSON ABI of `contract` (see the contract).
    async fn put_abi(&self, contract: ContractRef<'_>, abi: Value) -> StoreResult<ContractAbi> {
        let _ = (contract, abi);
        Err(no_abi_registry())
    }

    /// The ABI of `contract`, if one is registered.
    async fn abi(&self, contract: ContractRef<'_>) -> StoreResult<Option<ContractAbi>> {
        let _ = contract;
        Err(no_abi_registry())
    }

    /// Every registered ABI, optionally of one chain, by chain then address.
    async fn abis(&self, chain: Option<&Chain>) -> StoreResult<Vec<ContractAbi>> {
        let _ = chain;
        Err(no_abi_registry())
    }

    /// Removes the ABI of `contract`; `true` if there was one.
    async fn delete_abi(&self, contract: ContractRef<'_>) -> StoreResult<bool> {
        let _ = contract;
        Err(no_abi_registry())
    }

    /// Readiness probe: whether the backend answers now (see the contract). The default reads
    /// the nil run id: `NotFound` means reachable.
    async fn ping(&self) -> StoreResult<()> {
        match self.get(RunId(uuid::Uuid::nil())).await {
            Ok(_) | Err(StoreError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

macro_rules! forward_store {
    ($ty:ty) => {
        #[async_trait]
        impl<T: RunStore + ?Sized> RunStore for $ty {
            async fn create_runs(&self, batch: CreateRuns) -> StoreResult<CreatedRuns> {
                (**self).create_runs(batch).await
            }
            async fn get(&self, id: RunId) -> StoreResult<ModelRun> {
                (**self).get(id).await
            }
            async fn list(&self, filter: &RunFilter) -> StoreResult<RunPage> {
                (**self).list(filter).await
            }
            async fn count_by_state(
                &self,
                filter: &RunFilter,
            ) -> StoreResult<BTreeMap<RunState, u64>> {
                (**self).count_by_state(filter).await
            }
            async fn apply(&self, t: Transition) -> StoreResult<ModelRun> {
                (**self).apply(t).await
            }
            async fn expired_leases(
                &self,
                now: DateTime<Utc>,
                limit: usize,
            ) -> StoreResult<Vec<ModelRun>> {
                (**self).expired_leases(now, limit).await
            }
            async fn outbox(&self, query: OutboxQuery<'_>) -> StoreResult<Vec<ModelRun>> {
                (**self).outbox(query).await
            }
            async fn transitions(
                &self,
                batch: &[Transition],
            ) -> StoreResult<Vec<StoreResult<ModelRun>>> {
                (**self).transitions(batch).await
            }
            async fn mark_enqueued(&self, runs: &[(RunId, RunState, u32)]) -> StoreResult<usize> {
                (**self).mark_enqueued(runs).await
            }
            async fn stale_queued(
                &self,
                before: DateTime<Utc>,
                limit: usize,
            ) -> StoreResult<Vec<ModelRun>> {
                (**self).stale_queued(before, limit).await
            }
            async fn cursor(&self, key: CursorKey<'_>) -> StoreResult<Option<u64>> {
                (**self).cursor(key).await
            }
            async fn cursors(&self, chain: Option<&Chain>) -> StoreResult<Vec<RealtimeCursor>> {
                (**self).cursors(chain).await
            }
            async fn advance_cursor(
                &self,
                advance: CursorAdvance<'_>,
            ) -> StoreResult<Vec<ModelRun>> {
                (**self).advance_cursor(advance).await
            }
            async fn scheduled_blocks(&self, key: CursorKey<'_>) -> StoreResult<Vec<BlockRef>> {
                (**self).scheduled_blocks(key).await
            }
            async fn record_scheduled_blocks(
                &self,
                record: ScheduledBlocks<'_>,
            ) -> StoreResult<()> {
                (**self).record_scheduled_blocks(record).await
            }
            async fn rewind_cursor(&self, rewind: CursorRewind<'_>) -> StoreResult<()> {
                (**self).rewind_cursor(rewind).await
            }
            async fn realtime_runs_after(
                &self,
                key: CursorKey<'_>,
                block: u64,
            ) -> StoreResult<Vec<ModelRun>> {
                (**self).realtime_runs_after(key, block).await
            }
            async fn try_lock(&self, lease: LockLease<'_>) -> StoreResult<bool> {
                (**self).try_lock(lease).await
            }
            async fn ping(&self) -> StoreResult<()> {
                (**self).ping().await
            }
            async fn put_abi(
                &self,
                contract: ContractRef<'_>,
                abi: Value,
            ) -> StoreResult<ContractAbi> {
                (**self).put_abi(contract, abi).await
            }
            async fn abi(&self, contract: ContractRef<'_>) -> StoreResult<Option<ContractAbi>> {
                (**self).abi(contract).await
            }
            async fn abis(&self, chain: Option<&Chain>) -> StoreResult<Vec<ContractAbi>> {
                (**self).abis(chain).await
            }
            async fn delete_abi(&self, contract: ContractRef<'_>) -> StoreResult<bool> {
                (**self).delete_abi(contract).await
            }
        }
    };
}
forward_store!(Arc<T>);
forward_store!(Box<T>);

/// Conveniences over any [`RunStore`] (blanket-implemented): the transitions the engine makes
/// by their parts, each one [`RunStore::apply`].
#[async_trait]
pub trait RunStoreExt: RunStore {
    /// Compare-and-set transition of run `id` from `expected` on `expected_attempt` by
    /// `event`: [`RunStore::apply`] of the [`Transition`] these make.
    async fn transition(
        &self,
        id: RunId,
        expected: RunState,
        expected_attempt: u32,
        event: RunEvent,
    ) -> StoreResult<ModelRun> {
        self.apply(Transition {
            id,
            expected,
            expected_attempt,
            event,
        })
        .await
    }

    /// Claims a queued run for `owner` until `lease_until`.
    async fn claim(
        &self,
        id: RunId,
        attempt: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<ModelRun> {
        self.transition(
            id,
            RunState::Queued,
            attempt,
            RunEvent::Start {
                owner: owner.to_owned(),
                lease_until,
            },
        )
        .await
    }

    /// Renews `owner`'s lease and records progress.
    async fn heartbeat(
        &self,
        id: RunId,
        attempt: u32,
        owner: &str,
        lease_until: DateTime<Utc>,
        blocks_done: u64,
    ) -> StoreResult<ModelRun> {
        self.transition(
            id,
            RunState::Running,
            attempt,
            RunEvent::Heartbeat {
                owner: owner.to_owned(),
                lease_until,
                blocks_done,
            },
        )
        .await
    }
}

impl<T: RunStore + ?Sized> RunStoreExt for T {}

/// The error of the [`RunStore`] ABI defaults, for stores without a registry.
fn no_abi_registry() -> StoreError {
    StoreError::Backend {
        adapter: "run store",
        source: "this run store keeps no ABI registry".into(),
    }
}

/// Checks a batch before creation: not empty, each run sane. Shared by adapters so every store
/// refuses the same inputs with the same words.
pub fn validate_batch(runs: &[NewRun]) -> StoreResult<()> {
    if runs.is_empty() {
        return Err(StoreError::InvalidInput(
            "a batch must hold at least one run".into(),
        ));
    }
    for r in runs {
        if r.model.is_empty() {
            return Err(StoreError::InvalidInput("model name is empty".into()));
        }
        if r.queue.is_empty() {
            return Err(StoreError::InvalidInput(format!(
                "run of {} over {} has no queue",
                r.model, r.range
            )));
        }
        if r.max_attempts == 0 {
            return Err(StoreError::InvalidInput(
                "max_attempts must be at least 1".into(),
            ));
        }
    }
    Ok(())
}

/// Checks the runs [`RunStore::advance_cursor`] creates with the cursor: none (the cursor
/// moves alone) or a batch [`validate_batch`] accepts. Shared by adapters like
/// [`validate_batch`].
pub fn validate_cursor_runs(runs: &[NewRun]) -> StoreResult<()> {
    if runs.is_empty() {
        Ok(())
    } else {
        validate_batch(runs)
    }
}

/// Whether `existing` runs (of an idempotency key) were created from `requested`.
pub fn same_batch(existing: &[ModelRun], requested: &[NewRun]) -> bool {
    existing.len() == requested.len()
        && existing.iter().zip(requested).all(|(e, r)| {
            e.model == r.model && e.chain == r.chain && e.range == r.range && e.mode == r.mode
        })
}

/// The conflict returned when an idempotency key is reused for a different batch.
pub fn idempotency_conflict(key: &str) -> StoreError {
    StoreError::Conflict {
        message: format!("idempotency key {key:?} was already used for a different set of runs"),
        current: None,
    }
}

/// The conflict returned when a run is not in the expected state or attempt.
pub fn state_conflict(current: ModelRun, expected: RunState, expected_attempt: u32) -> StoreError {
    StoreError::Conflict {
        message: format!(
            "run {} is {} on attempt {}, not {} on attempt {}",
            current.id, current.state, current.attempt, expected, expected_attempt
        ),
        current: Some(Box::new(current)),
    }
}

/// The refusal of a store that keeps no realtime block records (the defaults of
/// [`RunStore::scheduled_blocks`] and its kin).
fn no_block_records() -> StoreError {
    StoreError::Backend {
        adapter: "store",
        source: "this store keeps no realtime block records, so it cannot follow chain reorganisations; use the memory, SQLite or PostgreSQL store".into(),
    }
}

/// The conflict returned when a realtime cursor moved.
pub fn cursor_conflict(
    model: &str,
    chain: &Chain,
    expected: Option<u64>,
    actual: Option<u64>,
) -> StoreError {
    StoreError::Conflict {
        message: format!("realtime cursor of {model} on {chain} is {actual:?}, not {expected:?}"),
        current: None,
    }
}
