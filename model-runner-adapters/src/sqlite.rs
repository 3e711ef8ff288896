//! [`SqliteRunStore`]: the embedded run store (bundled SQLite through sqlx).
//!
//! One file holds runs, realtime cursors and locks. Writes go through a single connection, so
//! they serialise without `SQLITE_BUSY` and every compare-and-set is trivially atomic; reads use
//! a small pool of their own (WAL mode lets them run beside the writer). Each run is stored as
//! the JSON of [`ModelRun`] next to the columns used to find it.
//!
//! URL: `sqlite://path/to/runs.db` (created if missing), `sqlite::memory:` for a throw-away
//! store. `?synchronous=normal` trades the last commits on power loss for speed; the default
//! `full` makes every write durable when the call returns.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use model_runner_core::ports::{
    ContractAbi, ContractRef, CreateRuns, CreatedRuns, CursorAdvance, CursorKey, CursorRewind,
    LockLease, OutboxQuery, RealtimeCursor, RunFilter, RunPage, RunStore, ScheduledBlocks,
    StoreError, StoreResult, Transition, cursor_conflict, idempotency_conflict, parse_address,
    same_batch, state_conflict, validate_batch, validate_cursor_runs,
};
use model_runner_core::run::{ModelRun, NewRun, RunEvent, RunId, RunState};
use model_runner_core::{BlockRef, Chain};
use serde_json::Value;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

const ADAPTER: &str = "sqlite";

/// A [`RunStore`] in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteRunStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

fn backend(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => {
            StoreError::Unavailable {
                adapter: ADAPTER,
                message: e.to_string(),
            }
        }
        other => StoreError::Backend {
            adapter: ADAPTER,
            source: Box::new(other),
        },
    }
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn decode(doc: &str) -> StoreResult<ModelRun> {
    serde_json::from_str(doc).map_err(|e| StoreError::Backend {
        adapter: ADAPTER,
        source: Box::new(e),
    })
}

fn corrupt(what: String) -> StoreError {
    StoreError::Backend {
        adapter: ADAPTER,
        source: what.into(),
    }
}

/// A `contract_abis` row (chain, address, abi, updated_at) as a [`ContractAbi`].
fn decode_abi(row: &sqlx::sqlite::SqliteRow) -> StoreResult<ContractAbi> {
    let chain: &str = row.get(0);
    let address: &str = row.get(1);
    let abi: &str = row.get(2);
    let updated_at: i64 = row.get(3);
    Ok(ContractAbi {
        chain: Chain::new(chain).map_err(|e| corrupt(format!("corrupt ABI row: {e}")))?,
        address: parse_address(address).map_err(|e| corrupt(format!("corrupt ABI row: {e}")))?,
        abi: serde_json::from_str(abi).map_err(|e| corrupt(format!("corrupt ABI row: {e}")))?,
        updated_at: DateTime::from_timestamp_micros(updated_at)
            .ok_or_else(|| corrupt(format!("corrupt ABI row: timestamp {updated_at}")))?,
    })
}

fn encode(run: &ModelRun) -> String {
    serde_json::to_string(run).expect("a ModelRun always serialises")
}

/// The embedded migrations of `migrations/sqlite/`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How to connect. Build with struct update syntax:
/// `SqliteOptions { migrate: false, ..Default::default() }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Create the file if it is missing and apply the embedded migrations on connect (default
    /// `true`). With `false` the file must exist with every migration of this build applied,
    /// and connecting fails otherwise, saying to run `model-runner migrate`.
    pub migrate: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self { migrate: true }
    }
}

/// The error for a store whose schema is missing or not the one this build expects.
fn not_migrated(base: &str, why: String) -> StoreError {
    StoreError::Backend {
        adapter: ADAPTER,
        source: format!(
            "store not migrated: {base} {why}; run `model-runner migrate` (or connect with migrations enabled)"
        )
        .into(),
    }
}

impl SqliteRunStore {
    /// Opens (creating if missing) and migrates the store at `url`.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, SqliteOptions::default()).await
    }

    /// Opens the store at `url`; see [`SqliteOptions`] for what `options.migrate` changes.
    pub async fn connect_with(url: &str, options: SqliteOptions) -> StoreResult<Self> {
        let (base, synchronous) = match url.split_once("?synchronous=") {
            Some((b, "normal")) => (b, SqliteSynchronous::Normal),
            Some((b, "full")) => (b, SqliteSynchronous::Full),
            Some((_, other)) => {
                return Err(StoreError::InvalidInput(format!(
                    "invalid sqlite synchronous mode {other:?}: expected `full` or `normal`"
                )));
            }
            None => (url, SqliteSynchronous::Full),
        };
        let memory = base.contains(":memory:");
        let opts = SqliteConnectOptions::from_str(base)
            .map_err(|e| StoreError::InvalidInput(format!("invalid sqlite URL {base:?}: {e}")))?
            .create_if_missing(options.migrate)
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(synchronous)
            .busy_timeout(Duration::from_secs(30));
        if !options.migrate && !memory && !opts.get_filename().exists() {
            return Err(not_migrated(base, "does not exist".into()));
        }
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(opts.clone())
            .await
            .map_err(|e| StoreError::Unavailable {
                adapter: ADAPTER,
                message: format!("cannot open {base}: {e}"),
            })?;
        let store = Self {
            // Replaced below for files; an in-memory database exists once per connection, so
            // it is read through the writer.
            reader: writer.clone(),
            writer,
        };
        if options.migrate {
            store.migrate().await?;
        } else {
            store.check_migrated(base).await?;
        }
        if memory {
            return Ok(store);
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts.read_only(true))
            .await
            .map_err(backend)?;
        Ok(Self { reader, ..store })
    }

    /// Applies the embedded migrations that have not been applied yet.
    pub async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR
            .run(&self.writer)
            .await
            .map_err(|e| StoreError::Backend {
                adapter: ADAPTER,
                source: Box::new(e),
            })
    }

    /// Fails unless every embedded migration has been applied, unchanged, and nothing newer.
    async fn check_migrated(&self, base: &str) -> StoreResult<()> {
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.writer)
        .await
        .map_err(backend)?;
        if table.is_none() {
            return Err(not_migrated(base, "has no model-runner schema".into()));
        }
        let applied: Vec<(i64, Vec<u8>, bool)> =
            sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
                .fetch_all(&self.writer)
                .await
                .map_err(backend)?;
        let applied: BTreeMap<i64, (Vec<u8>, bool)> =
            applied.into_iter().map(|(v, c, ok)| (v, (c, ok))).collect();
        for m in MIGRATOR
            .iter()
            .filter(|m| m.migration_type.is_up_migration())
        {
            match applied.get(&m.version) {
                None => {
                    return Err(not_migrated(
                        base,
                        format!("lacks migration {} ({})", m.version, m.description),
                    ));
                }
                Some((_, false)) => {
                    return Err(not_migrated(
                        base,
                        format!(
                            "has migration {} ({}) partially applied",
                            m.version, m.description
                        ),
                    ));
                }
                Some((checksum, true)) if checksum.as_slice() != &*m.checksum => {
                    return Err(StoreError::Backend {
                        adapter: ADAPTER,
                        source: format!(
                            "{base}: migration {} ({}) was applied from different SQL than this build's",
                            m.version, m.description
                        )
                        .into(),
                    });
                }
                Some(_) => {}
            }
        }
        if let Some(v) = applied.keys().find(|v| !MIGRATOR.version_exists(**v)) {
            return Err(StoreError::Backend {
                adapter: ADAPTER,
                source: format!(
                    "{base} has migration {v}, which this build does not know: it was migrated by a newer model-runner"
                )
                .into(),
            });
        }
        Ok(())
    }

    /// Inserts `runs` with multi-row `INSERT`s of [`INSERT_ROWS`] rows each: one statement per
    /// few hundred runs instead of one round trip per run (a 78,000-run backfill submission
    /// took 10 s row by row in a debug build).
    async fn insert(
        conn: &mut SqliteConnection,
        runs: Vec<NewRun>,
        key: Option<&str>,
    ) -> StoreResult<Vec<ModelRun>> {
        let now = Utc::now();
        let out: Vec<ModelRun> = runs
            .into_iter()
            .map(|spec| ModelRun::new(spec, key.map(str::to_owned), now))
            .collect();
        for chunk in out.chunks(INSERT_ROWS) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO runs (id, model, chain, mode, state, attempt, max_attempts, created_at, idempotency_key, doc) ",
            );
            q.push_values(chunk, |mut b, run| {
                b.push_bind(run.id.to_string())
                    .push_bind(run.model.clone())
                    .push_bind(run.chain.as_str().to_owned())
                    .push_bind(run.mode.as_str())
                    .push_bind(run.state.as_str())
                    .push_bind(run.attempt)
                    .push_bind(run.max_attempts)
                    .push_bind(micros(run.created_at))
                    .push_bind(key.map(str::to_owned))
                    .push_bind(encode(run));
            });
            q.build().execute(&mut *conn).await.map_err(backend)?;
        }
        Ok(out)
    }

    /// The compare-and-set of `transition` inside `tx`.
    async fn transition_in(
        tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
        id: RunId,
        expected: RunState,
        expected_attempt: u32,
        event: &RunEvent,
    ) -> StoreResult<ModelRun> {
        let mut run = Self::fetch(tx, id).await?;
        if run.state != expected || run.attempt != expected_attempt {
            return Err(state_conflict(run, expected, expected_attempt));
        }
        run.apply(event, Utc::now())?;
        sqlx::query(
            "UPDATE runs SET state = ?, attempt = ?, max_attempts = ?, lease_expires_at = ?, next_attempt_at = ?, doc = ? \
             WHERE id = ? AND state = ? AND attempt = ?",
        )
        .bind(run.state.as_str())
        .bind(run.attempt)
        .bind(run.max_attempts)
        .bind(run.lease_expires_at.map(micros))
        .bind(run.next_attempt_at.map(micros))
        .bind(encode(&run))
        .bind(id.to_string())
        .bind(expected.as_str())
        .bind(expected_attempt)
        .execute(&mut **tx)
        .await
        .map_err(backend)?;
        Ok(run)
    }

    /// The realtime cursor of (model, chain), read on `conn` (inside a write transaction).
    async fn cursor_in(
        conn: &mut SqliteConnection,
        model: &str,
        chain: &Chain,
    ) -> StoreResult<Option<u64>> {
        Ok(
            sqlx::query("SELECT block FROM realtime_cursors WHERE model = ? AND chain = ?")
                .bind(model)
                .bind(chain.as_str())
                .fetch_optional(conn)
                .await
                .map_err(backend)?
                .map(|r| r.get::<i64, _>(0) as u64),
        )
    }

    /// Deletes the scheduled-block records of (model, chain) whose number matches `which`
    /// (`number < ?` or `number > ?`) for `block`.
    async fn forget_scheduled(
        conn: &mut SqliteConnection,
        model: &str,
        chain: &Chain,
        which: &'static str,
        block: u64,
    ) -> StoreResult<()> {
        let sql = format!("DELETE FROM scheduled_blocks WHERE model = ? AND chain = ? AND {which}");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(model)
            .bind(chain.as_str())
            .bind(block as i64)
            .execute(conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn fetch(conn: &mut SqliteConnection, id: RunId) -> StoreResult<ModelRun> {
        let row = sqlx::query("SELECT doc FROM runs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&mut *conn)
            .await
            .map_err(backend)?
            .ok_or(StoreError::NotFound { id })?;
        decode(row.get::<&str, _>(0))
    }

    fn filter_sql(q: &mut QueryBuilder<Sqlite>, f: &RunFilter, with_state: bool) {
        q.push(" WHERE 1 = 1");
        if let Some(m) = &f.model {
            q.push(" AND model = ").push_bind(m.clone());
        }
        if let Some(c) = &f.chain {
            q.push(" AND chain = ").push_bind(c.to_string());
        }
        if with_state && let Some(s) = f.state {
            q.push(" AND state = ").push_bind(s.as_str());
        }
        if let Some(m) = f.mode {
            q.push(" AND mode = ").push_bind(m.as_str());
        }
        if let Some(t) = f.since {
            q.push(" AND created_at >= ").push_bind(micros(t));
        }
    }

    async fn fetch_docs(&self, mut q: QueryBuilder<Sqlite>) -> StoreResult<Vec<ModelRun>> {
        let rows = q.build().fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(|r| decode(r.get::<&str, _>(0))).collect()
    }
}

/// Rows per multi-row `INSERT`: 10 binds each stays far below SQLite's 32,766-variable limit.
const INSERT_ROWS: usize = 500;

#[async_trait]
impl RunStore for SqliteRunStore {
    async fn create_runs(&self, batch: CreateRuns) -> StoreResult<CreatedRuns> {
        validate_batch(&batch.runs)?;
        let mut tx = self.writer.begin().await.map_err(backend)?;
        if let Some(key) = &batch.idempotency_key {
            let rows = sqlx::query("SELECT doc FROM runs WHERE idempotency_key = ? ORDER BY id")
                .bind(key)
                .fetch_all(&mut *tx)
                .await
                .map_err(backend)?;
            if !rows.is_empty() {
                let existing = rows
                    .iter()
                    .map(|r| decode(r.get::<&str, _>(0)))
                    .collect::<Result<Vec<_>, _>>()?;
                if !same_batch(&existing, &batch.runs) {
                    return Err(idempotency_conflict(key));
                }
                return Ok(CreatedRuns {
                    runs: existing,
                    created: false,
                });
            }
        }
        let runs = Self::insert(&mut tx, batch.runs, batch.idempotency_key.as_deref()).await?;
        tx.commit().await.map_err(backend)?;
        Ok(CreatedRuns {
            runs,
            created: true,
        })
    }

    async fn get(&self, id: RunId) -> StoreResult<ModelRun> {
        let mut conn = self.reader.acquire().await.map_err(backend)?;
        Self::fetch(&mut conn, id).await
    }

    async fn list(&self, filter: &RunFilter) -> StoreResult<RunPage> {
        let size = filter.page_size();
        let mut q = QueryBuilder::new("SELECT doc FROM runs");
        Self::filter_sql(&mut q, filter, true);
        if let Some(after) = filter.after {
            q.push(" AND id > ").push_bind(after.to_string());
        }
        q.push(" ORDER BY id LIMIT ").push_bind(size as i64 + 1);
        Ok(RunPage::from_overfetched(self.fetch_docs(q).await?, size))
    }

    async fn count_by_state(&self, filter: &RunFilter) -> StoreResult<BTreeMap<RunState, u64>> {
        let mut q = QueryBuilder::new("SELECT state, COUNT(*) FROM runs");
        Self::filter_sql(&mut q, filter, false);
        q.push(" GROUP BY state");
        let rows = q.build().fetch_all(&self.reader).await.map_err(backend)?;
        let mut out = BTreeMap::new();
        for r in rows {
            let state: &str = r.get(0);
            let n: i64 = r.get(1);
            let state = state.parse().map_err(|e| StoreError::Backend {
                adapter: ADAPTER,
                source: Box::new(e),
            })?;
            out.insert(state, n as u64);
        }
        Ok(out)
    }

    async fn apply(&self, t: Transition) -> StoreResult<ModelRun> {
        let (id, expected, expected_attempt, event) = t.into_parts();
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let run = Self::transition_in(&mut tx, id, expected, expected_attempt, &event).await?;
        tx.commit().await.map_err(backend)?;
        Ok(run)
    }

    async fn transitions(&self, batch: &[Transition]) -> StoreResult<Vec<StoreResult<ModelRun>>> {
        // One transaction, so the batch costs one commit; each item decided on its own.
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let mut out = Vec::with_capacity(batch.len());
        for t in batch {
            match Self::transition_in(&mut tx, t.id, t.expected, t.expected_attempt, &t.event).await
            {
                Err(e @ StoreError::Backend { .. }) => return Err(e),
                result => out.push(result),
            }
        }
        tx.commit().await.map_err(backend)?;
        Ok(out)
    }

    async fn expired_leases(&self, now: DateTime<Utc>, limit: usize) -> StoreResult<Vec<ModelRun>> {
        let mut q = QueryBuilder::new(
            "SELECT doc FROM runs WHERE state = 'running' AND lease_expires_at < ",
        );
        q.push_bind(micros(now))
            .push(" ORDER BY lease_expires_at, id LIMIT ")
            .push_bind(limit as i64);
        self.fetch_docs(q).await
    }

    async fn outbox(&self, query: OutboxQuery<'_>) -> StoreResult<Vec<ModelRun>> {
        let (now, limit, skip_queues) = query.into_parts();
        let skip = |q: &mut QueryBuilder<Sqlite>| {
            if !skip_queues.is_empty() {
                q.push(" AND json_extract(doc, '$.queue') NOT IN (");
                let mut list = q.separated(", ");
                for queue in skip_queues {
                    list.push_bind(queue.clone());
                }
                q.push(")");
            }
        };
        let mut q = QueryBuilder::new("SELECT doc FROM runs WHERE state = 'pending'");
        skip(&mut q);
        q.push(" ORDER BY id LIMIT ").push_bind(limit as i64);
        let mut out = self.fetch_docs(q).await?;
        if out.len() < limit {
            let mut q = QueryBuilder::new(
                "SELECT doc FROM runs WHERE state IN ('failed', 'expired') AND attempt < max_attempts AND next_attempt_at <= ",
            );
            q.push_bind(micros(now));
            skip(&mut q);
            q.push(" ORDER BY next_attempt_at, id LIMIT ")
                .push_bind((limit - out.len()) as i64);
            out.extend(self.fetch_docs(q).await?);
        }
        Ok(out)
    }

    async fn cursor(&self, key: CursorKey<'_>) -> StoreResult<Option<u64>> {
        let (model, chain) = (key.model, key.chain);
        let row = sqlx::query("SELECT block FROM realtime_cursors WHERE model = ? AND chain = ?")
            .bind(model)
            .bind(chain.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        Ok(row.map(|r| r.get::<i64, _>(0) as u64))
    }

    async fn cursors(&self, chain: Option<&Chain>) -> StoreResult<Vec<RealtimeCursor>> {
        let mut q =
            QueryBuilder::new("SELECT model, chain, block, updated_at FROM realtime_cursors");
        if let Some(c) = chain {
            q.push(" WHERE chain = ").push_bind(c.to_string());
        }
        q.push(" ORDER BY chain, model");
        let rows = q.build().fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(RealtimeCursor {
                    model: r.get(0),
                    chain: Chain::new(r.get::<String, _>(1)).map_err(|e| StoreError::Backend {
                        adapter: ADAPTER,
                        source: Box::new(e),
                    })?,
                    block: r.get::<i64, _>(2) as u64,
                    updated_at: DateTime::from_timestamp_micros(r.get(3)).unwrap_or_default(),
                })
            })
            .collect()
    }

    async fn advance_cursor(&self, advance: CursorAdvance<'_>) -> StoreResult<Vec<ModelRun>> {
        let (model, chain, expected, to, runs) = advance.into_parts();
        validate_cursor_runs(&runs)?;
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let actual = Self::cursor_in(&mut tx, model, chain).await?;
        if actual != expected {
            return Err(cursor_conflict(model, chain, expected, actual));
        }
        sqlx::query(
            "INSERT INTO realtime_cursors (model, chain, block, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (model, chain) DO UPDATE SET block = excluded.block, updated_at = excluded.updated_at",
        )
        .bind(model)
        .bind(chain.as_str())
        .bind(to as i64)
        .bind(micros(Utc::now()))
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        let created = Self::insert(&mut tx, runs, None).await?;
        tx.commit().await.map_err(backend)?;
        Ok(created)
    }

    async fn scheduled_blocks(&self, key: CursorKey<'_>) -> StoreResult<Vec<BlockRef>> {
        let (model, chain) = (key.model, key.chain);
        let rows = sqlx::query(
            "SELECT number, hash, parent_hash FROM scheduled_blocks \
             WHERE model = ? AND chain = ? ORDER BY number DESC",
        )
        .bind(model)
        .bind(chain.as_str())
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let hash = |column: &str| {
                    r.get::<String, _>(column).parse().map_err(|e| {
                        StoreError::InvalidInput(format!("stored scheduled block {column}: {e}"))
                    })
                };
                Ok(BlockRef {
                    number: r.get::<i64, _>("number") as u64,
                    hash: hash("hash")?,
                    parent_hash: hash("parent_hash")?,
                })
            })
            .collect()
    }

    async fn record_scheduled_blocks(&self, record: ScheduledBlocks<'_>) -> StoreResult<()> {
        let (model, chain, blocks, keep_from) = record.into_parts();
        let mut tx = self.writer.begin().await.map_err(backend)?;
        for b in blocks {
            sqlx::query(
                "INSERT INTO scheduled_blocks (model, chain, number, hash, parent_hash) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (model, chain, number) \
                 DO UPDATE SET hash = excluded.hash, parent_hash = excluded.parent_hash",
            )
            .bind(model)
            .bind(chain.as_str())
            .bind(b.number as i64)
            .bind(b.hash.to_string())
            .bind(b.parent_hash.to_string())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        }
        Self::forget_scheduled(&mut tx, model, chain, "number < ?", keep_from).await?;
        tx.commit().await.map_err(backend)
    }

    async fn rewind_cursor(&self, rewind: CursorRewind<'_>) -> StoreResult<()> {
        let (model, chain, expected, to) = rewind.into_parts();
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let moved = sqlx::query(
            "UPDATE realtime_cursors SET block = ?, updated_at = ? \
             WHERE model = ? AND chain = ? AND block IN (?, ?)",
        )
        .bind(to as i64)
        .bind(micros(Utc::now()))
        .bind(model)
        .bind(chain.as_str())
        .bind(expected as i64)
        .bind(to as i64)
        .execute(&mut *tx)
        .await
        .map_err(backend)?
        .rows_affected();
        if moved == 0 {
            let actual = Self::cursor_in(&mut tx, model, chain).await?;
            return Err(cursor_conflict(model, chain, Some(expected), actual));
        }
        Self::forget_scheduled(&mut tx, model, chain, "number > ?", to).await?;
        tx.commit().await.map_err(backend)
    }

    async fn try_lock(&self, lease: LockLease<'_>) -> StoreResult<bool> {
        let (name, owner, until) = lease.into_parts();
        let now = micros(Utc::now());
        let done = sqlx::query(
            "INSERT INTO locks (name, owner, until) VALUES (?, ?, ?) \
             ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until \
             WHERE locks.owner = excluded.owner OR locks.until <= ?",
        )
        .bind(name)
        .bind(owner)
        .bind(micros(until))
        .bind(now)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn put_abi(&self, contract: ContractRef<'_>, abi: Value) -> StoreResult<ContractAbi> {
        // Microseconds, as stored, so the answer equals what `abi` reads back.
        let at = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let stored = ContractAbi::validated(contract, abi, at)?;
        let (chain, address) = (contract.chain, contract.address);
        sqlx::query(
            "INSERT INTO contract_abis (chain, address, abi, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (chain, address) DO UPDATE SET abi = excluded.abi, updated_at = excluded.updated_at",
        )
        .bind(chain.as_str())
        .bind(format!("{address:#x}"))
        .bind(stored.abi.to_string())
        .bind(micros(at))
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(stored)
    }

    async fn abi(&self, contract: ContractRef<'_>) -> StoreResult<Option<ContractAbi>> {
        let (chain, address) = (contract.chain, contract.address);
        sqlx::query(
            "SELECT chain, address, abi, updated_at FROM contract_abis WHERE chain = ? AND address = ?",
        )
        .bind(chain.as_str())
        .bind(format!("{address:#x}"))
        .fetch_optional(&self.reader)
        .await
        .map_err(backend)?
        .as_ref()
        .map(decode_abi)
        .transpose()
    }

    async fn abis(&self, chain: Option<&Chain>) -> StoreResult<Vec<ContractAbi>> {
        sqlx::query(
            "SELECT chain, address, abi, updated_at FROM contract_abis \
             WHERE ?1 IS NULL OR chain = ?1 ORDER BY chain, address",
        )
        .bind(chain.map(|c| c.as_str().to_owned()))
        .fetch_all(&self.reader)
        .await
        .map_err(backend)?
        .iter()
        .map(decode_abi)
        .collect()
    }

    async fn delete_abi(&self, contract: ContractRef<'_>) -> StoreResult<bool> {
        let (chain, address) = (contract.chain, contract.address);
        let done = sqlx::query("DELETE FROM contract_abis WHERE chain = ? AND address = ?")
            .bind(chain.as_str())
            .bind(format!("{address:#x}"))
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }
}
