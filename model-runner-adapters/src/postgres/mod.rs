//! [`PostgresRunStore`]: the production [`RunStore`], on PostgreSQL through sqlx.
//!
//! # How data flows
//!
//! A run is split over two tables with the same primary key. `runs` holds what never changes
//! after creation (model and version, chain, block range, mode, kind, queue, creation time,
//! idempotency key) with the indexes of lists that do not filter on state; it is written once.
//! `run_states` holds what transitions change (state, attempt, lease, timestamps, the
//! per-run result summary `blocks_done`, `records_written` and `last_error`, and the row
//! version), plus copies of the few immutable columns its own indexes and filters need, with the
//! indexes of everything driven by state: lists filtered by state, counts, outbox polling,
//! lease-expiry scans and claims. A transition therefore rewrites one narrow row and touches only
//! the state indexes (migration `0004_run_states.sql` explains the measurements behind the
//! split). The records themselves go to the sink. Idempotency keys, realtime cursors, named
//! leases and the ABI registry have a table each. The schema is embedded from `migrations/postgres/` and applied by
//! [`PostgresRunStore::connect`] (or [`PostgresRunStore::migrate`]).
//!
//! # Transitions
//!
//! A transition loads the run, decides the change with [`ModelRun::apply`] (the only place
//! transitions are decided) and persists it with one compare-and-set statement,
//! `UPDATE run_states ... version = version + 1 WHERE id = $1 AND state = $2 AND attempt = $3
//! AND version = $4`, so a write computed from a stale copy never lands: a late worker cannot
//! overwrite a newer attempt, and two racing callers with the same expectation cannot both win.
//! No lock is held between the load and the write.
//!
//! The store remembers the last row it read or wrote for recently used runs. A transition first
//! tries the compare-and-set against that copy (one round trip); if it does not match it reloads
//! the row and decides again, so the copy is only ever an optimisation: every answer other than
//! success comes from a fresh read.
//!
//! `PostgresRunStore::claim_next` (feature `bench`: benchmarks and tests) takes a queued run of a queue with `FOR UPDATE SKIP LOCKED`,
//! so any number of workers can pull from one queue without waiting on each other. Creating
//! runs, advancing a realtime cursor with the runs it schedules, and recording an idempotency
//! key each happen in one transaction.
//!
//! # Asynchronous claims
//!
//! Unless [`PostgresOptions::durable_claims`] is set, a claim (`queued -> running`) and a
//! heartbeat are committed with `synchronous_commit = off` for that one transaction: the server
//! answers before the commit's WAL record is flushed, and flushes it within a few hundred
//! milliseconds (or with the next durable commit, whichever comes first). Every other write,
//! completions and failures included, waits for the flush. This makes a claim-and-complete
//! cycle about a quarter cheaper (`benches/postgres_claims.rs` prints both).
//!
//! Only a crash of the server can undo such a commit; a clean restart or shutdown flushes it
//! first. What a crash can undo is harmless by construction:
//!
//! - an undone claim leaves the run `queued` on the same attempt. The worker that thought it
//!   held it fails its next heartbeat or its completion with a `Conflict` showing exactly that,
//!   and hands the queue message back instead of acknowledging it (see the engine's worker), so
//!   the run is claimed again. If another worker has claimed (or even completed) the run in the
//!   meantime, the `Conflict` shows that instead and the worker drops its result. Either way the
//!   run's records may be sent twice, with the same keys, which is the at-least-once delivery
//!   every sink already documents;
//! - an undone heartbeat leaves the earlier lease end, which can only make the lease expire
//!   sooner: the run is then retried as after any lost lease.
//!
//! Nothing is lost and no run is completed twice (completions are durable compare-and-sets);
//! `tests/postgres_restart.rs` checks this across an immediate stop under load.
//!
//! # Transient failures
//!
//! Connection loss, pool exhaustion, serialization failures, deadlocks, server shutdown and the
//! `08` SQLSTATE class are [`StoreError::Unavailable`]. Every operation is retried inside the
//! adapter with bounded exponential backoff (see [`PostgresOptions::retry_budget`]) and returns
//! `Unavailable` only when the budget is spent. Retrying is safe for every operation:
//!
//! - reads are idempotent;
//! - a transition or claim whose commit was cut off is resolved by reading the row back: if it
//!   holds exactly the run the lost write computed (same state, attempt, lease and microsecond
//!   `updated_at`), the write landed and the call succeeds; otherwise the compare-and-set is
//!   decided again against the fresh row (a `Conflict` if someone else moved it meanwhile);
//! - `create_runs` and `advance_cursor` generate the run ids before the first attempt and, after a
//!   cut-off commit, look for them before writing again, so a batch is never created twice;
//! - `try_lock` is idempotent for its owner.
//!
//! A restart of the server therefore loses nothing: callers see slower calls, and
//! `Unavailable` only when the server stays away longer than the budget.

#[cfg(feature = "bench")]
mod claim_next;
mod errors;
#[cfg(test)]
mod plans;
mod queries;
mod rows;

#[cfg(feature = "bench")]
pub use claim_next::FULL_SCAN_EVERY;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use model_runner_core::ports::{
    ContractAbi, ContractRef, CreateRuns, CreatedRuns, CursorAdvance, CursorKey, CursorRewind,
    LockLease, OutboxQuery, RealtimeCursor, RunFilter, RunPage, RunStore, ScheduledBlocks,
    StoreError, StoreResult, Transition, cursor_conflict, idempotency_conflict, parse_address,
    same_batch, state_conflict, validate_batch, validate_cursor_runs,
};
use model_runner_core::{BlockRef, Chain, ModelRun, RunEvent, RunId, RunState};
use sqlx::postgres::{PgArguments, PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Postgres, Row};
use uuid::Uuid;

use errors::{ADAPTER, Backoff, classify, corrupt, redact_url};
use queries::{
    EXPIRED_LEASES, MARK_ENQUEUED, OUTBOX_PENDING, OUTBOX_RETRIES, Param, REALTIME_RUNS_AFTER,
    SELECT_RUN, SELECT_RUNS_BY_ID, SELECT_RUNS_OF_KEY, STALE_QUEUED, UPDATE_RUN, UPDATE_RUN_ASYNC,
    UPDATE_RUNS, UPDATE_RUNS_ASYNC, bind_all, count_sql, list_sql,
};
use rows::{StoredRun, check_ranges, decode, decode_all, now, to_i64, to_micros};
use serde_json::Value;

/// The embedded migrations of `migrations/postgres/`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How many runs the store remembers for one-round-trip transitions.
const REMEMBERED_RUNS: usize = 16_384;

/// How to connect. Build with struct update syntax:
/// `PostgresOptions { migrate: false, ..Default::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Apply the embedded migrations on connect (default `true`).
    pub migrate: bool,
    /// Size of the connection pool (default 10).
    pub max_connections: u32,
    /// Use this schema instead of the default `search_path`, creating it when migrating. Tests
    /// give each case its own schema. Lowercase ASCII letters, digits and `_`, not starting with
    /// a digit, at most 63 characters.
    pub schema: Option<String>,
    /// How long to wait for a free pooled connection before the attempt fails as transient
    /// (default 5 s).
    pub acquire_timeout: Duration,
    /// How long an operation keeps retrying transient failures before it returns
    /// [`StoreError::Unavailable`] (default 30 s, long enough to ride out a server restart or a
    /// failover).
    pub retry_budget: Duration,
    /// Wait for the WAL flush when committing claims and lease renewals too (default `false`).
    ///
    /// By default a claim (`queued -> running`) and a heartbeat commit asynchronously
    /// (`synchronous_commit = off` for that transaction alone), which makes a claim-and-complete
    /// cycle about a quarter cheaper. Only a server *crash* can lose them (a clean restart or a
    /// failover with synchronous replication does not), and losing one is harmless: see the
    /// module docs, "Asynchronous claims". Every other write waits for the flush. A URL's
    /// `?durable_claims=true` (or `false`) overrides this.
    pub durable_claims: bool,
    /// The server cancels any statement of the store that runs longer than this (default 30 s;
    /// `None` for no limit), so a stuck query becomes a retried [`StoreError::Unavailable`]
    /// instead of a call that never returns. Migrations run without it.
    pub statement_timeout: Option<Duration>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            migrate: true,
            max_connections: 10,
            schema: None,
            acquire_timeout: Duration::from_secs(5),
            retry_budget: Duration::from_secs(30),
            durable_claims: false,
            statement_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// A [`RunStore`] on PostgreSQL. Cheap to clone; clones share the pool.
#[derive(Debug, Clone)]
pub struct PostgresRunStore {
    pool: PgPool,
    schema: Option<String>,
    retry_budget: Duration,
    /// See [`PostgresOptions::durable_claims`].
    durable_claims: bool,
    /// Recently read or written rows, keyed by id: a first guess for the compare-and-set.
    remembered: Arc<Mutex<HashMap<RunId, StoredRun>>>,
    /// Per queue: the last run `claim_next` took and how many claims ago it last scanned the
    /// queue from its start.
    #[cfg(feature = "bench")]
    claim_hints: Arc<Mutex<HashMap<String, (RunId, u32)>>>,
}

/// Why one attempt at a multi-statement write failed.
enum AttemptError {
    /// Before the commit was sent: nothing was written.
    Before(StoreError),
    /// While committing: the write may or may not have landed.
    InDoubt(StoreError),
}

impl From<sqlx::Error> for AttemptError {
    fn from(e: sqlx::Error) -> Self {
        AttemptError::Before(classify(e))
    }
}

impl From<StoreError> for AttemptError {
    fn from(e: StoreError) -> Self {
        AttemptError::Before(e)
    }
}

impl PostgresRunStore {
    /// Connects to a `postgres://` (or `postgresql://`) URL and applies the migrations.
    ///
    /// A malformed URL is [`StoreError::InvalidInput`]; an unreachable server
    /// [`StoreError::Unavailable`]. Messages never contain the URL's password.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connects with explicit options (see [`PostgresOptions`]).
    pub async fn connect_with(url: &str, options: PostgresOptions) -> StoreResult<Self> {
        let (connect, durable_claims) = parse_url(url)?;
        let options = PostgresOptions {
            durable_claims: durable_claims.unwrap_or(options.durable_claims),
            ..options
        };
        let connect = match &options.schema {
            Some(schema) => {
                check_schema_name(schema)?;
                connect.options([("search_path", schema.as_str())])
            }
            None => connect,
        };
        let connect = match options.statement_timeout {
            Some(limit) => connect.options([(
                "statement_timeout",
                format!("{}ms", limit.as_millis().max(1)),
            )]),
            None => connect,
        };
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            // A dead connection fails its statement and the call is retried, which costs less
            // than a round trip before every statement.
            .test_before_acquire(false)
            .connect_with(connect)
            .await
            .map_err(|e| match classify(e) {
                StoreError::Unavailable { message, .. } => StoreError::Unavailable {
                    adapter: ADAPTER,
                    message: format!("cannot connect to {}: {message}", redact_url(url)),
                },
                other => other,
            })?;
        let store = Self {
            pool,
            schema: options.schema,
            retry_budget: options.retry_budget,
            durable_claims: options.durable_claims,
            remembered: Arc::default(),
            #[cfg(feature = "bench")]
            claim_hints: Arc::default(),
        };
        if options.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// Applies the embedded migrations that have not been applied yet (creating the schema of
    /// [`PostgresOptions::schema`] first). Safe to run concurrently from several processes.
    pub async fn migrate(&self) -> StoreResult<()> {
        // On one connection without the statement timeout: a migration may copy every run.
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        sqlx::query("SET statement_timeout = 0")
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
        if let Some(schema) = &self.schema {
            // The name was checked by `check_schema_name`, so quoting it is enough.
            sqlx::query(AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
        }
        MIGRATOR.run(&mut *conn).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => classify(e),
            other => StoreError::Backend {
                adapter: ADAPTER,
                source: Box::new(other),
            },
        })?;
        // Back to the connection's own limit before it returns to the pool.
        sqlx::query("RESET statement_timeout")
            .execute(&mut *conn)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Whether claims and heartbeats wait for the WAL flush ([`PostgresOptions::durable_claims`]).
    pub fn durable_claims(&self) -> bool {
        self.durable_claims
    }

    /// The connection pool, for health checks and benchmarks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// One attempt at a transition on one pooled connection (so a cold transition costs one
    /// connection checkout, not two). Returns transient errors for the caller to retry; a CAS
    /// cut off mid-flight leaves the run it would have written in `in_doubt`.
    async fn transition_once(
        &self,
        id: RunId,
        (expected, expected_attempt): (RunState, u32),
        event: &RunEvent,
        mut guess: Option<StoredRun>,
        in_doubt: &mut Option<ModelRun>,
    ) -> StoreResult<ModelRun> {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        loop {
            let from_memory = guess.is_some();
            let prev = match guess.take() {
                Some(g) => g,
                None => {
                    let row = sqlx::query(SELECT_RUN)
                        .bind(id.0)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(classify)?;
                    match row {
                        Some(row) => decode(&row)?,
                        None => {
                            self.forget(id);
                            return Err(StoreError::NotFound { id });
                        }
                    }
                }
            };
            if !from_memory
                && let Some(mine) = in_doubt.take()
                && prev.run == mine
            {
                // Our earlier write landed; only its reply was lost.
                self.remember(&prev);
                return Ok(prev.run);
            }
            if prev.run.state != expected || prev.run.attempt != expected_attempt {
                if from_memory {
                    continue;
                }
                self.remember(&prev);
                return Err(state_conflict(prev.run, expected, expected_attempt));
            }
            let mut next = prev.run.clone();
            if let Err(e) = next.apply(event, now()) {
                if from_memory {
                    continue;
                }
                return Err(e.into());
            }
            to_micros(&mut next);
            check_ranges(&next)?;
            let asynchronous = !self.durable_claims
                && matches!(event, RunEvent::Start { .. } | RunEvent::Heartbeat { .. });
            match compare_and_set(&prev, &next, asynchronous)
                .fetch_optional(&mut *conn)
                .await
            {
                Ok(Some(version)) => {
                    let stored = StoredRun { run: next, version };
                    self.remember(&stored);
                    return Ok(stored.run);
                }
                // Someone moved the row since we read it: decide again on a fresh read.
                Ok(None) => {}
                Err(e) => {
                    *in_doubt = Some(next);
                    return Err(classify(e));
                }
            }
        }
    }

    /// One attempt at a round of a batch of transitions ([`RunStore::transitions`]): `items`
    /// are indexes into `batch` naming distinct runs. Reads the runs it has no remembered copy
    /// of in one statement, decides every item with [`ModelRun::apply`], and writes the
    /// compare-and-sets in one statement. Settled items get their result in `results`; an item
    /// whose compare-and-set found the row moved is left unsettled, to be decided again on a
    /// fresh read (`fresh`). A transient failure of the write leaves the runs it would have
    /// written in `in_doubt`, to be recognised on the next read.
    async fn transitions_once(
        &self,
        batch: &[Transition],
        items: &[usize],
        fresh: &mut HashSet<usize>,
        results: &mut [Option<StoreResult<ModelRun>>],
        in_doubt: &mut HashMap<usize, ModelRun>,
    ) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await.map_err(classify)?;
        let mut prevs: HashMap<usize, (StoredRun, bool)> = HashMap::new();
        let mut to_read = Vec::new();
        for &i in items {
            let guess = (!fresh.contains(&i))
                .then(|| self.remembered(batch[i].id))
                .flatten();
            match guess {
                Some(g) => {
                    prevs.insert(i, (g, true));
                }
                None => to_read.push(i),
            }
        }
        if !to_read.is_empty() {
            let ids: Vec<Uuid> = to_read.iter().map(|&i| batch[i].id.0).collect();
            let rows = sqlx::query(SELECT_RUNS_BY_ID)
                .bind(&ids)
                .fetch_all(&mut *conn)
                .await
                .map_err(classify)?;
            let mut read = HashMap::with_capacity(rows.len());
            for row in &rows {
                let stored = decode(row)?;
                read.insert(stored.run.id, stored);
            }
            for &i in &to_read {
                let id = batch[i].id;
                match read.get(&id) {
                    Some(stored) => {
                        prevs.insert(i, (stored.clone(), false));
                    }
                    None => {
                        self.forget(id);
                        results[i] = Some(Err(StoreError::NotFound { id }));
                    }
                }
            }
        }
        // Decide each item as `transition_once` does.
        let mut writes: Vec<(usize, StoredRun, ModelRun)> = Vec::new();
        let now = now();
        for &i in items {
            let Some((prev, from_memory)) = prevs.remove(&i) else {
                continue;
            };
            let t = &batch[i];
            if !from_memory {
                fresh.remove(&i);
                if let Some(mine) = in_doubt.remove(&i)
                    && prev.run == mine
                {
                    // Our earlier write landed; only its reply was lost.
                    self.remember(&prev);
                    results[i] = Some(Ok(prev.run));
                    continue;
                }
            }
            if prev.run.state != t.expected || prev.run.attempt != t.expected_attempt {
                if from_memory {
                    fresh.insert(i);
                } else {
                    self.remember(&prev);
                    results[i] = Some(Err(state_conflict(
                        prev.run,
                        t.expected,
                        t.expected_attempt,
                    )));
                }
                continue;
            }
            let mut next = prev.run.clone();
            if let Err(e) = next.apply(&t.event, now) {
                if from_memory {
                    fresh.insert(i);
                } else {
                    results[i] = Some(Err(e.into()));
                }
                continue;
            }
            to_micros(&mut next);
            if let Err(e) = check_ranges(&next) {
                results[i] = Some(Err(e));
                continue;
            }
            writes.push((i, prev, next));
        }
        if writes.is_empty() {
            return Ok(());
        }
        let asynchronous = !self.durable_claims
            && writes.iter().all(|(i, _, _)| {
                matches!(
                    batch[*i].event,
                    RunEvent::Start { .. } | RunEvent::Heartbeat { .. }
                )
            });
        let column = |f: &dyn Fn(&StoredRun, &ModelRun) -> Option<DateTime<Utc>>| -> Vec<Option<DateTime<Utc>>> {
            writes.iter().map(|(_, p, n)| f(p, n)).collect()
        };
        let updated: Result<Vec<(Uuid, i64)>, sqlx::Error> = sqlx::query_as(if asynchronous {
            UPDATE_RUNS_ASYNC
        } else {
            UPDATE_RUNS
        })
        .bind(
            writes
                .iter()
                .map(|(_, p, _)| p.run.id.0)
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, p, _)| p.run.state.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, p, _)| i64::from(p.run.attempt))
                .collect::<Vec<_>>(),
        )
        .bind(writes.iter().map(|(_, p, _)| p.version).collect::<Vec<_>>())
        .bind(
            writes
                .iter()
                .map(|(_, _, n)| n.state.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, _, n)| i64::from(n.attempt))
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, _, n)| i64::from(n.max_attempts))
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, _, n)| n.updated_at)
                .collect::<Vec<_>>(),
        )
        .bind(column(&|_, n| n.queued_at))
        .bind(column(&|_, n| n.started_at))
        .bind(column(&|_, n| n.finished_at))
        .bind(
            writes
                .iter()
                .map(|(_, _, n)| n.lease_owner.clone())
                .collect::<Vec<_>>(),
        )
        .bind(column(&|_, n| n.lease_expires_at))
        .bind(column(&|_, n| n.next_attempt_at))
        // `check_ranges` refused values above i64::MAX before we got here.
        .bind(
            writes
                .iter()
                .map(|(_, _, n)| n.blocks_done as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, _, n)| n.records_written as i64)
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, _, n)| n.last_error.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, _, n)| i32::try_from(n.republished).unwrap_or(i32::MAX))
                .collect::<Vec<_>>(),
        )
        .bind(
            writes
                .iter()
                .map(|(_, _, n)| notes_json(n))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *conn)
        .await;
        let updated = match updated {
            Ok(rows) => rows.into_iter().collect::<HashMap<Uuid, i64>>(),
            Err(e) => {
                for (i, _, next) in writes {
                    fresh.insert(i);
                    in_doubt.insert(i, next);
                }
                return Err(classify(e));
            }
        };
        for (i, _, next) in writes {
            match updated.get(&next.id.0) {
                Some(&version) => {
                    let stored = StoredRun { run: next, version };
                    self.remember(&stored);
                    results[i] = Some(Ok(stored.run));
                }
                // Someone moved the row since we read it: decide again on a fresh read.
                None => {
                    fresh.insert(i);
                }
            }
        }
        Ok(())
    }

    fn remember(&self, stored: &StoredRun) {
        let mut map = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= REMEMBERED_RUNS
            && !map.contains_key(&stored.run.id)
            && let Some(evict) = map.keys().next().copied()
        {
            map.remove(&evict);
        }
        map.insert(stored.run.id, stored.clone());
    }

    fn remembered(&self, id: RunId) -> Option<StoredRun> {
        let map = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&id).cloned()
    }

    fn forget(&self, id: RunId) {
        let mut map = self.remembered.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&id);
    }

    /// Runs an idempotent read, retrying transient failures within the budget.
    async fn read<T, F, Fut>(&self, op: &str, mut attempt: F) -> StoreResult<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let mut backoff = Backoff::new(self.retry_budget);
        loop {
            match attempt().await {
                Ok(v) => return Ok(v),
                Err(e) => backoff.retry(op, classify(e)).await?,
            }
        }
    }

    /// The run as stored now.
    async fn load(&self, id: RunId) -> StoreResult<StoredRun> {
        let row = self
            .read("get", || {
                sqlx::query(SELECT_RUN)
                    .bind(id.0)
                    .fetch_optional(&self.pool)
            })
            .await?;
        match row {
            Some(row) => decode(&row),
            None => {
                self.forget(id);
                Err(StoreError::NotFound { id })
            }
        }
    }

    async fn select_runs(&self, op: &str, sql: &str, params: &[Param]) -> StoreResult<Vec<PgRow>> {
        self.read(op, || {
            // Not kept as a prepared statement: planned afresh with the values each time, as
            // a generic plan cannot know how selective a state, model or `since` is.
            bind_all(sqlx::query(AssertSqlSafe(sql.to_owned())), params)
                .persistent(false)
                .fetch_all(&self.pool)
        })
        .await
    }

    /// One attempt at inserting a batch, in one transaction with its idempotency key.
    async fn try_create(
        &self,
        runs: &[ModelRun],
        key: Option<&str>,
        created_at: DateTime<Utc>,
    ) -> Result<Result<(), Vec<ModelRun>>, AttemptError> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = key {
            let fresh = sqlx::query(
                "INSERT INTO run_batches (idempotency_key, created_at) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(key)
            .bind(created_at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !fresh {
                let rows = sqlx::query(SELECT_RUNS_OF_KEY)
                    .bind(key)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.rollback().await?;
                return Ok(Err(decode_all(&rows)?));
            }
        }
        insert_runs(&mut tx, runs).await?;
        tx.commit()
            .await
            .map_err(|e| AttemptError::InDoubt(classify(e)))?;
        Ok(Ok(()))
    }

    async fn exists(&self, id: RunId) -> StoreResult<bool> {
        match self.load(id).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// One attempt at moving a cursor and creating its runs, in one transaction.
    async fn try_advance(
        &self,
        model: &str,
        chain: &Chain,
        expected: Option<u64>,
        to: i64,
        runs: &[ModelRun],
        at: DateTime<Utc>,
    ) -> Result<(), AttemptError> {
        let mut tx = self.pool.begin().await?;
        let actual: Option<i64> = sqlx::query_scalar(
            "SELECT block FROM realtime_cursors WHERE model = $1 AND chain = $2 FOR UPDATE",
        )
        .bind(model)
        .bind(chain.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let conflict = |actual: Option<i64>| {
            AttemptError::Before(cursor_conflict(
                model,
                chain,
                expected,
                actual.map(|b| b as u64),
            ))
        };
        if actual.map(|b| b as u64) != expected {
            return Err(conflict(actual));
        }
        if actual.is_none() {
            let inserted = sqlx::query(
                "INSERT INTO realtime_cursors (model, chain, block, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(model)
            .bind(chain.as_str())
            .bind(to)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // Another scheduler created the cursor since our read.
                let now_there: Option<i64> = sqlx::query_scalar(
                    "SELECT block FROM realtime_cursors WHERE model = $1 AND chain = $2",
                )
                .bind(model)
                .bind(chain.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                return Err(conflict(now_there));
            }
        } else {
            sqlx::query(
                "UPDATE realtime_cursors SET block = $3, updated_at = $4 \
                 WHERE model = $1 AND chain = $2",
            )
            .bind(model)
            .bind(chain.as_str())
            .bind(to)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        if !runs.is_empty() {
            insert_runs(&mut tx, runs).await?;
        }
        tx.commit()
            .await
            .map_err(|e| AttemptError::InDoubt(classify(e)))
    }
}

/// Parses and checks a `postgres://` URL without ever echoing its password. The store's own
/// parameter `durable_claims=true|false` is taken out of the query (see
/// [`PostgresOptions::durable_claims`]); the rest is libpq's.
fn parse_url(url: &str) -> StoreResult<(PgConnectOptions, Option<bool>)> {
    let shown = redact_url(url);
    let mut parsed = url::Url::parse(url)
        .map_err(|e| StoreError::InvalidInput(format!("malformed PostgreSQL URL {shown}: {e}")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(StoreError::InvalidInput(format!(
            "not a PostgreSQL URL: {shown} (expected postgres://user@host:port/database)"
        )));
    }
    let mut durable_claims = None;
    let mut rest = Vec::new();
    for (k, v) in parsed.query_pairs() {
        if k == "durable_claims" {
            durable_claims = Some(match v.as_ref() {
                "true" | "1" => true,
                "false" | "0" => false,
                other => {
                    return Err(StoreError::InvalidInput(format!(
                        "invalid durable_claims={other:?} in PostgreSQL URL {shown}: expected \
                         true or false"
                    )));
                }
            });
        } else {
            rest.push((k.into_owned(), v.into_owned()));
        }
    }
    if durable_claims.is_some() {
        if rest.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(rest);
        }
    }
    let options = PgConnectOptions::from_str(parsed.as_str()).map_err(|e| {
        let mut message = e.to_string();
        if let Some(password) = parsed.password().filter(|p| !p.is_empty()) {
            message = message.replace(password, "***");
        }
        StoreError::InvalidInput(format!("malformed PostgreSQL URL {shown}: {message}"))
    })?;
    Ok((options, durable_claims))
}

fn check_schema_name(schema: &str) -> StoreResult<()> {
    let ok = !schema.is_empty()
        && schema.len() <= 63
        && !schema.as_bytes()[0].is_ascii_digit()
        // Lowercase only: `search_path` folds unquoted names to lowercase.
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "invalid schema name {schema:?}: expected 1-63 lowercase ASCII letters, digits and \
             '_', not starting with a digit"
        )))
    }
}

/// The compare-and-set from `prev` to `next`, committed without waiting for the WAL flush when
/// `asynchronous` (claims and lease renewals, see the module docs).
fn compare_and_set<'q>(
    prev: &StoredRun,
    next: &ModelRun,
    asynchronous: bool,
) -> sqlx::query::QueryScalar<'q, Postgres, i64, PgArguments> {
    sqlx::query_scalar(if asynchronous {
        UPDATE_RUN_ASYNC
    } else {
        UPDATE_RUN
    })
    .bind(prev.run.id.0)
    .bind(prev.run.state.as_str())
    .bind(i64::from(prev.run.attempt))
    .bind(prev.version)
    .bind(next.state.as_str())
    .bind(i64::from(next.attempt))
    .bind(i64::from(next.max_attempts))
    .bind(next.updated_at)
    .bind(next.queued_at)
    .bind(next.started_at)
    .bind(next.finished_at)
    .bind(next.lease_owner.clone())
    .bind(next.lease_expires_at)
    .bind(next.next_attempt_at)
    // `check_ranges` refused values above i64::MAX before we got here.
    .bind(next.blocks_done as i64)
    .bind(next.records_written as i64)
    .bind(next.last_error.clone())
    .bind(i32::try_from(next.republished).unwrap_or(i32::MAX))
    .bind(notes_json(next))
}

/// A run's notes as stored: a JSON object of counts.
fn notes_json(run: &ModelRun) -> String {
    serde_json::to_string(&run.notes).expect("a map of counts serialises")
}

/// Inserts freshly created runs (all `pending`, attempt 1, one timestamp and key per batch): one
/// statement for their `runs` rows, one for their `run_states` rows.
async fn insert_runs(
    tx: &mut sqlx::Transaction<'_, Postgres>,
    runs: &[ModelRun],
) -> Result<(), AttemptError> {
    let Some(first) = runs.first() else {
        return Ok(());
    };
    let col = |f: fn(&ModelRun) -> String| runs.iter().map(f).collect::<Vec<String>>();
    let int = |f: fn(&ModelRun) -> i64| runs.iter().map(f).collect::<Vec<i64>>();
    let ids = runs.iter().map(|r| r.id.0).collect::<Vec<Uuid>>();
    let models = col(|r| r.model.clone());
    let chains = col(|r| r.chain.as_str().to_owned());
    let modes = col(|r| r.mode.as_str().to_owned());
    let queues = col(|r| r.queue.clone());
    sqlx::query(
        "INSERT INTO runs (id, model, model_version, chain, range_start, range_end, mode, kind, \
         queue, created_at, idempotency_key) \
         SELECT u.id, u.model, u.model_version, u.chain, u.range_start, u.range_end, u.mode, \
         u.kind, u.queue, $10, $11 \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[], \
         $7::text[], $8::text[], $9::text[]) \
         AS u(id, model, model_version, chain, range_start, range_end, mode, kind, queue)",
    )
    .bind(&ids)
    .bind(&models)
    .bind(col(|r| r.model_version.clone()))
    .bind(&chains)
    .bind(int(|r| r.range.start() as i64))
    .bind(int(|r| r.range.end() as i64))
    .bind(&modes)
    .bind(col(|r| r.kind.as_str().to_owned()))
    .bind(&queues)
    .bind(first.created_at)
    .bind(first.idempotency_key.clone())
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO run_states (id, model, chain, mode, queue, created_at, state, attempt, \
         max_attempts, updated_at) \
         SELECT u.id, u.model, u.chain, u.mode, u.queue, $7, $8, $9, u.max_attempts, $7 \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[]) \
         AS u(id, model, chain, mode, queue, max_attempts)",
    )
    .bind(&ids)
    .bind(&models)
    .bind(&chains)
    .bind(&modes)
    .bind(&queues)
    .bind(int(|r| i64::from(r.max_attempts)))
    .bind(first.created_at)
    .bind(first.state.as_str())
    .bind(i64::from(first.attempt))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl RunStore for PostgresRunStore {
    async fn create_runs(&self, batch: CreateRuns) -> StoreResult<CreatedRuns> {
        validate_batch(&batch.runs)?;
        let at = now();
        let runs: Vec<ModelRun> = batch
            .runs
            .iter()
            .map(|spec| ModelRun::new(spec.clone(), batch.idempotency_key.clone(), at))
            .collect();
        for r in &runs {
            check_ranges(r)?;
        }
        let key = batch.idempotency_key.as_deref();
        let mut backoff = Backoff::new(self.retry_budget);
        let mut in_doubt = false;
        loop {
            // After a cut-off commit, our runs may already be there.
            if in_doubt && self.exists(runs[0].id).await? {
                break;
            }
            match self.try_create(&runs, key, at).await {
                Ok(Ok(())) => break,
                Ok(Err(existing)) => {
                    if existing.first().map(|r| r.id) == Some(runs[0].id) {
                        break; // our own earlier attempt, whose commit reply was lost
                    }
                    if !same_batch(&existing, &batch.runs) {
                        return Err(idempotency_conflict(key.unwrap_or_default()));
                    }
                    return Ok(CreatedRuns {
                        runs: existing,
                        created: false,
                    });
                }
                Err(AttemptError::Before(e)) => backoff.retry("create_runs", e).await?,
                Err(AttemptError::InDoubt(e)) => {
                    backoff.retry("create_runs", e).await?;
                    in_doubt = true;
                }
            }
        }
        for r in &runs {
            self.remember(&StoredRun {
                run: r.clone(),
                version: 1,
            });
        }
        Ok(CreatedRuns {
            runs,
            created: true,
        })
    }

    async fn get(&self, id: RunId) -> StoreResult<ModelRun> {
        let stored = self.load(id).await?;
        self.remember(&stored);
        Ok(stored.run)
    }

    async fn list(&self, filter: &RunFilter) -> StoreResult<RunPage> {
        let size = filter.page_size();
        let (sql, params) = list_sql(filter, limit(size + 1));
        let rows = self.select_runs("list", &sql, &params).await?;
        let mut runs = decode_all(&rows)?;
        let next = if runs.len() > size {
            runs.truncate(size);
            runs.last().map(|r| r.id)
        } else {
            None
        };
        Ok(RunPage { runs, next })
    }

    async fn count_by_state(&self, filter: &RunFilter) -> StoreResult<BTreeMap<RunState, u64>> {
        let (sql, params) = count_sql(filter);
        let rows = self.select_runs("count_by_state", &sql, &params).await?;
        let mut out = BTreeMap::new();
        for row in rows {
            let state: String = row.try_get("state").map_err(classify)?;
            let n: i64 = row.try_get("n").map_err(classify)?;
            let state = state
                .parse::<RunState>()
                .map_err(|e| corrupt(format!("corrupt run row: {e}")))?;
            out.insert(state, n as u64);
        }
        Ok(out)
    }

    async fn apply(&self, t: Transition) -> StoreResult<ModelRun> {
        let (id, expected, expected_attempt, event) = t.into_parts();
        let mut backoff = Backoff::new(self.retry_budget);
        // The row to decide against on the first attempt: the remembered copy.
        let mut guess = self.remembered(id);
        // A write whose commit reply was lost.
        let mut in_doubt: Option<ModelRun> = None;
        loop {
            match self
                .transition_once(
                    id,
                    (expected, expected_attempt),
                    &event,
                    guess.take(),
                    &mut in_doubt,
                )
                .await
            {
                Ok(run) => return Ok(run),
                Err(e) => backoff.retry("transition", e).await?,
            }
        }
    }

    async fn transitions(&self, batch: &[Transition]) -> StoreResult<Vec<StoreResult<ModelRun>>> {
        let mut results: Vec<Option<StoreResult<ModelRun>>> = batch.iter().map(|_| None).collect();
        let mut backoff = Backoff::new(self.retry_budget);
        // Items to decide on a fresh read rather than a remembered copy.
        let mut fresh: HashSet<usize> = HashSet::new();
        // Writes whose commit reply was lost, by item.
        let mut in_doubt: HashMap<usize, ModelRun> = HashMap::new();
        loop {
            // A round: the first unsettled item of each run, so a run named twice sees the
            // first item's result before the second is decided.
            let mut seen = HashSet::new();
            let round: Vec<usize> = (0..batch.len())
                .filter(|&i| results[i].is_none())
                .filter(|&i| seen.insert(batch[i].id))
                .collect();
            if round.is_empty() {
                break;
            }
            if let Err(e) = self
                .transitions_once(batch, &round, &mut fresh, &mut results, &mut in_doubt)
                .await
            {
                backoff.retry("transitions", e).await?;
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every item settled"))
            .collect())
    }

    async fn expired_leases(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ModelRun>> {
        let rows = self
            .read("expired_leases", || {
                sqlx::query(EXPIRED_LEASES)
                    .bind(now)
                    .bind(self::limit(limit))
                    .fetch_all(&self.pool)
            })
            .await?;
        decode_all(&rows)
    }

    async fn mark_enqueued(&self, runs: &[(RunId, RunState, u32)]) -> StoreResult<usize> {
        if runs.is_empty() {
            return Ok(0);
        }
        let ids: Vec<uuid::Uuid> = runs.iter().map(|(id, _, _)| id.0).collect();
        let states: Vec<&str> = runs.iter().map(|(_, s, _)| s.as_str()).collect();
        let attempts: Vec<i64> = runs.iter().map(|(_, _, a)| i64::from(*a)).collect();
        let now = now();
        for id in &ids {
            // The remembered copies are one version behind now.
            self.forget(RunId(*id));
        }
        // Safe to send again after a lost reply: rows already marked no longer match.
        let done = self
            .read("mark_enqueued", || {
                sqlx::query(MARK_ENQUEUED)
                    .bind(&ids)
                    .bind(&states)
                    .bind(&attempts)
                    .bind(now)
                    .execute(&self.pool)
            })
            .await?;
        Ok(done.rows_affected() as usize)
    }

    async fn stale_queued(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> StoreResult<Vec<ModelRun>> {
        let rows = self
            .read("stale_queued", || {
                sqlx::query(STALE_QUEUED)
                    .bind(before)
                    .bind(self::limit(limit))
                    .fetch_all(&self.pool)
            })
            .await?;
        decode_all(&rows)
    }

    async fn outbox(&self, query: OutboxQuery<'_>) -> StoreResult<Vec<ModelRun>> {
        let (now, limit, skip_queues) = query.into_parts();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let pending = self
            .read("outbox", || {
                sqlx::query(OUTBOX_PENDING)
                    .bind(self::limit(limit))
                    .bind(skip_queues)
                    .fetch_all(&self.pool)
            })
            .await?;
        let mut out = Vec::with_capacity(pending.len());
        for row in &pending {
            let stored = decode(row)?;
            self.remember(&stored);
            out.push(stored.run);
        }
        if out.len() < limit {
            let rest = limit - out.len();
            let retries = self
                .read("outbox", || {
                    sqlx::query(OUTBOX_RETRIES)
                        .bind(now)
                        .bind(self::limit(rest))
                        .bind(skip_queues)
                        .fetch_all(&self.pool)
                })
                .await?;
            for row in &retries {
                let stored = decode(row)?;
                self.remember(&stored);
                out.push(stored.run);
            }
        }
        Ok(out)
    }

    async fn cursor(&self, key: CursorKey<'_>) -> StoreResult<Option<u64>> {
        let (model, chain) = (key.model, key.chain);
        let block: Option<i64> = self
            .read("cursor", || {
                sqlx::query_scalar(
                    "SELECT block FROM realtime_cursors WHERE model = $1 AND chain = $2",
                )
                .bind(model)
                .bind(chain.as_str())
                .fetch_optional(&self.pool)
            })
            .await?;
        Ok(block.map(|b| b as u64))
    }

    async fn cursors(&self, chain: Option<&Chain>) -> StoreResult<Vec<RealtimeCursor>> {
        let chain = chain.map(|c| c.as_str().to_owned());
        let rows = self
            .read("cursors", || {
                sqlx::query(
                    "SELECT model, chain, block, updated_at FROM realtime_cursors \
                     WHERE $1::text IS NULL OR chain = $1 ORDER BY model, chain",
                )
                .bind(chain.clone())
                .fetch_all(&self.pool)
            })
            .await?;
        rows.iter()
            .map(|row| {
                let chain: String = row.try_get("chain").map_err(classify)?;
                let block: i64 = row.try_get("block").map_err(classify)?;
                Ok(RealtimeCursor {
                    model: row.try_get("model").map_err(classify)?,
                    chain: Chain::new(chain)
                        .map_err(|e| corrupt(format!("corrupt cursor row: {e}")))?,
                    block: block as u64,
                    updated_at: row.try_get("updated_at").map_err(classify)?,
                })
            })
            .collect()
    }

    async fn advance_cursor(&self, advance: CursorAdvance<'_>) -> StoreResult<Vec<ModelRun>> {
        let (model, chain, expected, to, runs) = advance.into_parts();
        validate_cursor_runs(&runs)?;
        let to_block = to_i64(to, "cursor block")?;
        let at = now();
        let created: Vec<ModelRun> = runs
            .into_iter()
            .map(|spec| ModelRun::new(spec, None, at))
            .collect();
        for r in &created {
            check_ranges(r)?;
        }
        let mut backoff = Backoff::new(self.retry_budget);
        let mut in_doubt = false;
        loop {
            if in_doubt {
                let landed = match created.first() {
                    Some(first) => self.exists(first.id).await?,
                    None => self
                        .cursors(Some(chain))
                        .await?
                        .iter()
                        .any(|c| c.model == model && c.block == to && c.updated_at == at),
                };
                if landed {
                    break;
                }
            }
            match self
                .try_advance(model, chain, expected, to_block, &created, at)
                .await
            {
                Ok(()) => break,
                Err(AttemptError::Before(e)) => backoff.retry("advance_cursor", e).await?,
                Err(AttemptError::InDoubt(e)) => {
                    backoff.retry("advance_cursor", e).await?;
                    in_doubt = true;
                }
            }
        }
        for r in &created {
            self.remember(&StoredRun {
                run: r.clone(),
                version: 1,
            });
        }
        Ok(created)
    }

    async fn scheduled_blocks(&self, key: CursorKey<'_>) -> StoreResult<Vec<BlockRef>> {
        let (model, chain) = (key.model, key.chain);
        let rows = self
            .read("scheduled_blocks", || {
                sqlx::query(
                    "SELECT number, hash, parent_hash FROM scheduled_blocks \
                     WHERE model = $1 AND chain = $2 ORDER BY number DESC",
                )
                .bind(model)
                .bind(chain.as_str())
                .fetch_all(&self.pool)
            })
            .await?;
        rows.iter()
            .map(|row| {
                let hash = |column: &str| {
                    row.try_get::<String, _>(column)
                        .map_err(classify)?
                        .parse()
                        .map_err(|e| corrupt(format!("corrupt scheduled block {column}: {e}")))
                };
                Ok(BlockRef {
                    number: row.try_get::<i64, _>("number").map_err(classify)? as u64,
                    hash: hash("hash")?,
                    parent_hash: hash("parent_hash")?,
                })
            })
            .collect()
    }

    async fn record_scheduled_blocks(&self, record: ScheduledBlocks<'_>) -> StoreResult<()> {
        let (model, chain, blocks, keep_from) = record.into_parts();
        let numbers = blocks
            .iter()
            .map(|b| to_i64(b.number, "block number"))
            .collect::<Result<Vec<_>, _>>()?;
        let hashes: Vec<String> = blocks.iter().map(|b| b.hash.to_string()).collect();
        let parents: Vec<String> = blocks.iter().map(|b| b.parent_hash.to_string()).collect();
        let keep_from = to_i64(keep_from, "block number")?;
        // An upsert of the same values and a delete: idempotent, so retried like a read. The
        // rows deleted (below `keep_from`) and those written are disjoint, as the scheduler
        // records only blocks it keeps.
        self.read("record_scheduled_blocks", || {
            sqlx::query(
                "WITH gone AS (DELETE FROM scheduled_blocks \
                     WHERE model = $1 AND chain = $2 AND number < $3) \
                 INSERT INTO scheduled_blocks (model, chain, number, hash, parent_hash) \
                 SELECT $1, $2, n, h, p FROM unnest($4::bigint[], $5::text[], $6::text[]) AS t(n, h, p) \
                 WHERE n >= $3 \
                 ON CONFLICT (model, chain, number) \
                 DO UPDATE SET hash = EXCLUDED.hash, parent_hash = EXCLUDED.parent_hash",
            )
            .bind(model)
            .bind(chain.as_str())
            .bind(keep_from)
            .bind(&numbers)
            .bind(&hashes)
            .bind(&parents)
            .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    async fn rewind_cursor(&self, rewind: CursorRewind<'_>) -> StoreResult<()> {
        let (model, chain, expected, to) = rewind.into_parts();
        let (expected_block, to_block) = (
            to_i64(expected, "cursor block")?,
            to_i64(to, "cursor block")?,
        );
        // One statement. A cursor already at `to` counts as moved, so the retry of a commit in
        // doubt is not taken for a conflict; the delete is idempotent.
        let moved: i64 = self
            .read("rewind_cursor", || {
                sqlx::query_scalar(
                    "WITH moved AS (UPDATE realtime_cursors SET block = $3, updated_at = $5 \
                         WHERE model = $1 AND chain = $2 AND block IN ($3, $4) RETURNING 1), \
                     gone AS (DELETE FROM scheduled_blocks \
                         WHERE model = $1 AND chain = $2 AND number > $3 \
                         AND EXISTS (SELECT 1 FROM moved)) \
                     SELECT count(*) FROM moved",
                )
                .bind(model)
                .bind(chain.as_str())
                .bind(to_block)
                .bind(expected_block)
                .bind(now())
                .fetch_one(&self.pool)
            })
            .await?;
        if moved == 0 {
            let actual = self.cursor(rewind.key).await?;
            return Err(cursor_conflict(model, chain, Some(expected), actual));
        }
        Ok(())
    }

    async fn realtime_runs_after(
        &self,
        key: CursorKey<'_>,
        block: u64,
    ) -> StoreResult<Vec<ModelRun>> {
        let block = to_i64(block, "block number")?;
        let rows = self
            .read("realtime_runs_after", || {
                sqlx::query(REALTIME_RUNS_AFTER)
                    .bind(key.model)
                    .bind(key.chain.as_str())
                    .bind(block)
                    .fetch_all(&self.pool)
            })
            .await?;
        decode_all(&rows)
    }

    async fn try_lock(&self, lease: LockLease<'_>) -> StoreResult<bool> {
        let (name, owner, until) = lease.into_parts();
        let at = Utc::now();
        // Idempotent for its owner, so retried like a read.
        let holder: Option<String> = self
            .read("try_lock", || {
                sqlx::query_scalar(
                    "INSERT INTO named_locks (name, owner, held_until) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE \
                     SET owner = EXCLUDED.owner, held_until = EXCLUDED.held_until \
                     WHERE named_locks.owner = EXCLUDED.owner OR named_locks.held_until <= $4 \
                     RETURNING owner",
                )
                .bind(name)
                .bind(owner)
                .bind(until)
                .bind(at)
                .fetch_optional(&self.pool)
            })
            .await?;
        Ok(holder.is_some())
    }

    async fn put_abi(&self, contract: ContractRef<'_>, abi: Value) -> StoreResult<ContractAbi> {
        let stored = ContractAbi::validated(contract, abi, now())?;
        let text = stored.abi.to_string();
        let address = format!("{:#x}", stored.address);
        // An upsert of the same values: idempotent, so retried like a read.
        self.read("put_abi", || {
            sqlx::query(
                "INSERT INTO contract_abis (chain, address, abi, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (chain, address) DO UPDATE SET abi = EXCLUDED.abi, updated_at = EXCLUDED.updated_at",
            )
            .bind(stored.chain.as_str())
            .bind(&address)
            .bind(&text)
            .bind(stored.updated_at)
            .execute(&self.pool)
        })
        .await?;
        Ok(stored)
    }

    async fn abi(&self, contract: ContractRef<'_>) -> StoreResult<Option<ContractAbi>> {
        let (chain, address) = (contract.chain, contract.address);
        let address = format!("{address:#x}");
        let row = self
            .read("abi", || {
                sqlx::query(
                    "SELECT chain, address, abi, updated_at FROM contract_abis \
                     WHERE chain = $1 AND address = $2",
                )
                .bind(chain.as_str())
                .bind(&address)
                .fetch_optional(&self.pool)
            })
            .await?;
        row.as_ref().map(decode_abi).transpose()
    }

    async fn abis(&self, chain: Option<&Chain>) -> StoreResult<Vec<ContractAbi>> {
        let chain = chain.map(|c| c.as_str().to_owned());
        let rows = self
            .read("abis", || {
                sqlx::query(
                    "SELECT chain, address, abi, updated_at FROM contract_abis \
                     WHERE $1::text IS NULL OR chain = $1 ORDER BY chain COLLATE \"C\", address COLLATE \"C\"",
                )
                .bind(chain.clone())
                .fetch_all(&self.pool)
            })
            .await?;
        rows.iter().map(decode_abi).collect()
    }

    async fn delete_abi(&self, contract: ContractRef<'_>) -> StoreResult<bool> {
        let (chain, address) = (contract.chain, contract.address);
        let address = format!("{address:#x}");
        // Retried like a read: a retry after a delete whose answer was lost finds nothing and
        // reports `false`, which the contract allows for a missing ABI.
        let done = self
            .read("delete_abi", || {
                sqlx::query("DELETE FROM contract_abis WHERE chain = $1 AND address = $2")
                    .bind(chain.as_str())
                    .bind(&address)
                    .execute(&self.pool)
            })
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// A `contract_abis` row as a [`ContractAbi`].
fn decode_abi(row: &PgRow) -> StoreResult<ContractAbi> {
    let chain: String = row.try_get("chain").map_err(classify)?;
    let address: String = row.try_get("address").map_err(classify)?;
    let abi: String = row.try_get("abi").map_err(classify)?;
    Ok(ContractAbi {
        chain: Chain::new(chain).map_err(|e| corrupt(format!("corrupt ABI row: {e}")))?,
        address: parse_address(&address).map_err(|e| corrupt(format!("corrupt ABI row: {e}")))?,
        abi: serde_json::from_str(&abi).map_err(|e| corrupt(format!("corrupt ABI row: {e}")))?,
        updated_at: row.try_get("updated_at").map_err(classify)?,
    })
}
