//! Every statement the store sends, in one place so the plan checks in `plans.rs` examine
//! exactly what runs in production. Each names the index it is meant to use.

use chrono::{DateTime, Utc};
use model_runner_core::ports::RunFilter;
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use uuid::Uuid;

use super::rows::{run_columns, run_tables, run_tables_by_state};

/// One run by primary key (`runs_pkey`, `run_states_pkey`).
pub(crate) const SELECT_RUN: &str =
    concat!("SELECT ", run_columns!(), run_tables!(), " WHERE r.id = $1");

/// The realtime runs of (model $1, chain $2) whose last block is above $3 and that are neither
/// cancelled nor superseded, in id order (`runs_realtime_end`).
pub(crate) const REALTIME_RUNS_AFTER: &str = concat!(
    "SELECT ",
    run_columns!(),
    run_tables!(),
    " WHERE r.model = $1 AND r.chain = $2 AND r.mode = 'realtime' AND r.range_end > $3 \
     AND s.state NOT IN ('cancelled', 'superseded') ORDER BY r.id"
);

/// The runs of an idempotency key in batch order (`runs_idempotency`).
pub(crate) const SELECT_RUNS_OF_KEY: &str = concat!(
    "SELECT ",
    run_columns!(),
    run_tables!(),
    " WHERE r.idempotency_key = $1 ORDER BY r.id"
);

/// The `SET` and `WHERE` of the compare-and-set every transition persists with (primary key).
macro_rules! update_run {
    ($from:literal) => {
        concat!(
            "UPDATE run_states SET state = $5, attempt = $6, max_attempts = $7, updated_at = $8, \
             queued_at = $9, started_at = $10, finished_at = $11, lease_owner = $12, \
             lease_expires_at = $13, next_attempt_at = $14, blocks_done = $15, \
             records_written = $16, last_error = $17, republished = $18, notes = $19, \
             version = version + 1",
            $from,
            " WHERE id = $1 AND state = $2 AND attempt = $3 AND version = $4 RETURNING version"
        )
    };
}

/// The compare-and-set every transition persists with, committed durably.
pub(crate) const UPDATE_RUN: &str = update_run!("");

/// [`UPDATE_RUN`] committed without waiting for the WAL flush (`synchronous_commit = off` for
/// this one transaction): for claims and lease renewals, whose loss in a server crash is
/// harmless (see the module docs, "Asynchronous claims").
pub(crate) const UPDATE_RUN_ASYNC: &str =
    update_run!(" FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit");

/// Runs by primary key, for a batch of transitions (`runs_pkey`, `run_states_pkey`).
pub(crate) const SELECT_RUNS_BY_ID: &str = concat!(
    "SELECT ",
    run_columns!(),
    run_tables!(),
    " WHERE r.id = ANY($1)"
);

/// The compare-and-set of a batch of transitions in one statement: row `i` of the arrays is
/// one run's [`UPDATE_RUN`], with the same `SET` and the same `WHERE` on (id, state, attempt,
/// version); rows that no longer match are left alone and missing from the returned
/// (id, version) pairs.
macro_rules! update_runs {
    ($from:literal) => {
        concat!(
            "UPDATE run_states s SET state = u.state, attempt = u.attempt, \
             max_attempts = u.max_attempts, updated_at = u.updated_at, queued_at = u.queued_at, \
             started_at = u.started_at, finished_at = u.finished_at, \
             lease_owner = u.lease_owner, lease_expires_at = u.lease_expires_at, \
             next_attempt_at = u.next_attempt_at, blocks_done = u.blocks_done, \
             records_written = u.records_written, last_error = u.last_error, \
             republished = u.republished, notes = u.notes, version = s.version + 1 \
             FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], \
             $6::bigint[], $7::bigint[], $8::timestamptz[], $9::timestamptz[], \
             $10::timestamptz[], $11::timestamptz[], $12::text[], $13::timestamptz[], \
             $14::timestamptz[], $15::bigint[], $16::bigint[], $17::text[], $18::int[], \
             $19::text[]) \
             AS u(id, prev_state, prev_attempt, prev_version, state, attempt, max_attempts, \
             updated_at, queued_at, started_at, finished_at, lease_owner, lease_expires_at, \
             next_attempt_at, blocks_done, records_written, last_error, republished, notes)",
            $from,
            " WHERE s.id = u.id AND s.state = u.prev_state AND s.attempt = u.prev_attempt \
             AND s.version = u.prev_version RETURNING s.id, s.version"
        )
    };
}

/// [`UPDATE_RUN`] for a batch, committed durably.
pub(crate) const UPDATE_RUNS: &str = update_runs!("");

/// [`UPDATE_RUNS`] committed without waiting for the WAL flush: for batches of claims and lease
/// renewals only (see [`UPDATE_RUN_ASYNC`]).
pub(crate) const UPDATE_RUNS_ASYNC: &str =
    update_runs!(", (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit");

/// The next queued run of a queue after `$2`, locked, skipping locked ones
/// (`run_states_queued`).
#[cfg(any(test, feature = "bench"))]
pub(crate) const CLAIM_NEXT: &str = concat!(
    "SELECT ",
    run_columns!(),
    run_tables_by_state!(),
    " WHERE s.queue = $1 AND s.state = 'queued' AND s.id > $2 ORDER BY s.id LIMIT 1 \
     FOR UPDATE OF s SKIP LOCKED"
);

/// Running runs whose lease ended before `$1` (`run_states_leases`).
pub(crate) const EXPIRED_LEASES: &str = concat!(
    "SELECT ",
    run_columns!(),
    run_tables_by_state!(),
    " WHERE s.state = 'running' AND s.lease_expires_at < $1 \
     ORDER BY s.lease_expires_at, s.id LIMIT $2"
);

/// Pending runs, oldest first, of queues other than those in `$2` (`run_states_outbox_pending`).
pub(crate) const OUTBOX_PENDING: &str = concat!(
    "SELECT ",
    run_columns!(),
    run_tables_by_state!(),
    " WHERE s.state = 'pending' AND s.queue <> ALL($2) ORDER BY s.id LIMIT $1"
);

/// Failed or expired runs whose retry is due at `$1` (`run_states_outbox_retries`).
pub(crate) const OUTBOX_RETRIES: &str = concat!(
    "SELECT ",
    run_columns!(),
    run_tables_by_state!(),
    " WHERE s.state IN ('failed', 'expired') \
     AND s.next_attempt_at IS NOT NULL AND s.next_attempt_at <= $1 \
     AND s.attempt < s.max_attempts AND s.queue <> ALL($3) \
     ORDER BY s.next_attempt_at, s.id LIMIT $2"
);

/// [`RunEvent::Enqueue`](model_runner_core::RunEvent::Enqueue) for a batch of published runs
/// in one statement: `$1` ids, `$2` expected states, `$3` expected attempts, `$4` now. Each row
/// is a compare-and-set on its own (id, state, attempt); the `SET` mirrors `ModelRun::apply`
/// for `Enqueue` (a conformance case compares the two), and the `WHERE` its refusals.
pub(crate) const MARK_ENQUEUED: &str = "UPDATE run_states s SET state = 'queued', \
     attempt = CASE WHEN s.state = 'pending' THEN s.attempt ELSE s.attempt + 1 END, \
     updated_at = $4, queued_at = $4, started_at = NULL, finished_at = NULL, \
     next_attempt_at = NULL, blocks_done = 0, version = s.version + 1 \
     FROM unnest($1::uuid[], $2::text[], $3::bigint[]) AS m(id, state, attempt) \
     WHERE s.id = m.id AND s.state = m.state AND s.attempt = m.attempt \
     AND (s.state = 'pending' OR (s.state IN ('failed', 'expired') AND s.attempt < s.max_attempts))";

/// Queued runs whose queue time began before `$1`, oldest first (`run_states_queued`, whose
/// rows are the queued runs).
pub(crate) const STALE_QUEUED: &str = concat!(
    "SELECT ",
    run_columns!(),
    run_tables_by_state!(),
    " WHERE s.state = 'queued' AND s.queued_at < $1 ORDER BY s.queued_at, s.id LIMIT $2"
);

/// A bind parameter of a dynamically assembled filter.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Text(String),
    Time(DateTime<Utc>),
    Id(Uuid),
    Int(i64),
    /// A text array (only the plan checks bind one through [`bind_all`]; the store binds
    /// its skip lists directly).
    #[cfg(test)]
    Texts(Vec<String>),
}

/// A page of [`RunStore::list`](model_runner_core::ports::RunStore::list): `limit` rows from
/// the keyset bound on, by id. Filtered by state, it is driven by `run_states`
/// (`run_states_model_state_id` or `run_states_state_id`); otherwise by `runs` (its primary key,
/// or `runs_model_id`, `runs_model_chain_id` or `runs_created_at` when filtered), whose indexes
/// transitions never touch.
pub(crate) fn list_sql(filter: &RunFilter, limit: i64) -> (String, Vec<Param>) {
    let by_state = filter.state.is_some();
    let (t, table, other) = if by_state {
        ("s", "run_states", "runs r ON r.id = s.id")
    } else {
        ("r", "runs", "run_states s ON s.id = r.id")
    };
    let (clause, mut params) = filter_sql(filter, true, t);
    params.push(Param::Int(limit));
    // The page is chosen from one table, then joined to the other half of its runs: planned
    // as one join, the planner would rather walk the primary key than sort the few runs an
    // index finds (a `since` of the last hour walked a million runs).
    let sql = format!(
        concat!(
            "SELECT ",
            run_columns!(),
            " FROM (SELECT * FROM {table} {t}{clause} ORDER BY {t}.id LIMIT ${n}) {t} \
             JOIN {other} ORDER BY {t}.id"
        ),
        table = table,
        t = t,
        clause = clause,
        n = params.len(),
        other = other,
    );
    (sql, params)
}

/// Runs per state matching `filter` but its state and keyset bound, from `run_states` alone (an
/// index-only scan of `run_states_model_state_id` when filtered by model).
pub(crate) fn count_sql(filter: &RunFilter) -> (String, Vec<Param>) {
    let (clause, params) = filter_sql(filter, false, "s");
    (
        format!("SELECT s.state, count(*) AS n FROM run_states s{clause} GROUP BY s.state"),
        params,
    )
}

/// The `WHERE` clause of `filter` (model, chain, mode, since; plus state and the keyset bound
/// when `paged`) on the columns of table alias `t` (`r` or `s`, which both carry model, chain,
/// mode, created_at and id; state is only in `s`), with its parameters, numbered from `$1`.
///
/// State and mode are written into the SQL (they come from a fixed set of `&'static str`), so
/// the planner sees the value: a generic plan for `state = $n` would assume every state is as
/// common as `succeeded` and walk the primary key for a rare one.
fn filter_sql(filter: &RunFilter, paged: bool, t: &str) -> (String, Vec<Param>) {
    let mut sql = String::from(" WHERE true");
    let mut params = Vec::new();
    let mut add = |clause: &str, p: Param| {
        params.push(p);
        sql.push_str(&format!(" AND {t}.{clause} ${}", params.len()));
    };
    if let Some(m) = &filter.model {
        add("model =", Param::Text(m.clone()));
    }
    if let Some(c) = &filter.chain {
        add("chain =", Param::Text(c.as_str().to_owned()));
    }
    if let Some(ts) = filter.since {
        add("created_at >=", Param::Time(ts));
    }
    if paged && let Some(a) = filter.after {
        add("id >", Param::Id(a.0));
    }
    if let Some(m) = filter.mode {
        sql.push_str(&format!(" AND {t}.mode = '{}'", m.as_str()));
    }
    if paged && let Some(s) = filter.state {
        sql.push_str(&format!(" AND s.state = '{}'", s.as_str()));
    }
    (sql, params)
}

/// Binds `params` in order.
pub(crate) fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, Postgres, PgArguments>,
    params: &[Param],
) -> sqlx::query::Query<'q, Postgres, PgArguments> {
    for p in params {
        q = match p {
            Param::Text(s) => q.bind(s.clone()),
            Param::Time(t) => q.bind(*t),
            Param::Id(u) => q.bind(*u),
            Param::Int(i) => q.bind(*i),
            #[cfg(test)]
            Param::Texts(v) => q.bind(v.clone()),
        };
    }
    q
}
