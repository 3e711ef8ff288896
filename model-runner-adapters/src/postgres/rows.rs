//! Between [`ModelRun`] and its `runs` and `run_states` rows: column lists, decoding, and the integer and timestamp
//! conversions PostgreSQL needs.

use chrono::{DateTime, SubsecRound, Utc};
use model_runner_core::ports::{StoreError, StoreResult};
use model_runner_core::{BlockRange, Chain, ModelRun, RunId};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::errors::corrupt;

/// Every column of a run, from `runs r` (what never changes) joined with `run_states s` (what
/// transitions change), in the order [`decode`] reads them by name. Use with [`run_tables!`].
macro_rules! run_columns {
    () => {
        "r.id, r.model, r.model_version, r.chain, r.range_start, r.range_end, r.mode, r.kind, \
         r.queue, s.state, s.attempt, s.max_attempts, r.created_at, s.updated_at, s.queued_at, \
         s.started_at, s.finished_at, s.lease_owner, s.lease_expires_at, s.next_attempt_at, \
         s.blocks_done, s.records_written, s.last_error, r.idempotency_key, s.republished, \
         s.notes, s.version"
    };
}

/// The tables [`run_columns!`] reads, driven by `run_states` (for queries on state).
macro_rules! run_tables_by_state {
    () => {
        " FROM run_states s JOIN runs r ON r.id = s.id"
    };
}

/// The tables [`run_columns!`] reads, driven by `runs` (for queries on what never changes).
macro_rules! run_tables {
    () => {
        " FROM runs r JOIN run_states s ON s.id = r.id"
    };
}
pub(crate) use run_columns;
pub(crate) use run_tables;
pub(crate) use run_tables_by_state;

/// A run as stored, with the row version its compare-and-set checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredRun {
    pub(crate) run: ModelRun,
    pub(crate) version: i64,
}

/// Decodes one row selected with [`run_columns!`].
pub(crate) fn decode(row: &PgRow) -> StoreResult<StoredRun> {
    decode_inner(row).map_err(|e| match e {
        Decode::Sql(e) => corrupt(format!("unreadable run row: {e}")),
        Decode::Value(m) => corrupt(format!("corrupt run row: {m}")),
    })
}

enum Decode {
    Sql(sqlx::Error),
    Value(String),
}

impl From<sqlx::Error> for Decode {
    fn from(e: sqlx::Error) -> Self {
        Decode::Sql(e)
    }
}

fn decode_inner(row: &PgRow) -> Result<StoredRun, Decode> {
    let bad = |what: &str, e: &dyn std::fmt::Display| Decode::Value(format!("{what}: {e}"));
    let unsigned = |col: &str| -> Result<u64, Decode> {
        let v: i64 = row.try_get(col)?;
        u64::try_from(v).map_err(|e| bad(col, &e))
    };
    let small = |col: &str| -> Result<u32, Decode> {
        let v: i64 = row.try_get(col)?;
        u32::try_from(v).map_err(|e| bad(col, &e))
    };
    let chain: String = row.try_get("chain")?;
    let mode: String = row.try_get("mode")?;
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let run = ModelRun {
        id: RunId(row.try_get("id")?),
        model: row.try_get("model")?,
        model_version: row.try_get("model_version")?,
        chain: Chain::new(chain).map_err(|e| bad("chain", &e))?,
        range: BlockRange::new(unsigned("range_start")?, unsigned("range_end")?)
            .map_err(|e| bad("range", &e))?,
        mode: mode.parse().map_err(|e| bad("mode", &e))?,
        kind: kind.parse().map_err(|e| bad("kind", &e))?,
        queue: row.try_get("queue")?,
        state: state.parse().map_err(|e| bad("state", &e))?,
        attempt: small("attempt")?,
        max_attempts: small("max_attempts")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        queued_at: row.try_get("queued_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        blocks_done: unsigned("blocks_done")?,
        records_written: unsigned("records_written")?,
        last_error: row.try_get("last_error")?,
        idempotency_key: row.try_get("idempotency_key")?,
        republished: u32::try_from(row.try_get::<i32, _>("republished")?).unwrap_or(0),
        notes: serde_json::from_str(&row.try_get::<String, _>("notes")?)
            .map_err(|e| bad("notes", &e))?,
    };
    Ok(StoredRun {
        run,
        version: row.try_get("version")?,
    })
}

/// Decodes every row.
pub(crate) fn decode_all(rows: &[PgRow]) -> StoreResult<Vec<ModelRun>> {
    rows.iter().map(|r| decode(r).map(|s| s.run)).collect()
}

/// A `u64` as a `bigint`, refusing values PostgreSQL cannot hold.
pub(crate) fn to_i64(v: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(v).map_err(|_| {
        StoreError::InvalidInput(format!(
            "{what} {v} is above {}, the largest value the postgres store holds",
            i64::MAX
        ))
    })
}

/// The current time at the microsecond precision of `timestamptz`, so a run returned by a call
/// equals the run read back later.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Truncates every timestamp of `run` to microseconds, as PostgreSQL will store them.
pub(crate) fn to_micros(run: &mut ModelRun) {
    let t = |v: &mut DateTime<Utc>| *v = v.trunc_subsecs(6);
    let o = |v: &mut Option<DateTime<Utc>>| {
        if let Some(v) = v {
            *v = v.trunc_subsecs(6);
        }
    };
    t(&mut run.created_at);
    t(&mut run.updated_at);
    o(&mut run.queued_at);
    o(&mut run.started_at);
    o(&mut run.finished_at);
    o(&mut run.lease_expires_at);
    o(&mut run.next_attempt_at);
}

/// Checks the integers of `run` fit PostgreSQL's `bigint`.
pub(crate) fn check_ranges(run: &ModelRun) -> StoreResult<()> {
    to_i64(run.range.end(), "block number")?;
    to_i64(run.blocks_done, "blocks_done")?;
    to_i64(run.records_written, "records_written")?;
    Ok(())
}
