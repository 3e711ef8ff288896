//! Every statement the store sends, in one place so the plan checks in `plans.rs` examine
//! exactly what runs in production. Each names the index it is meant to use.

use chrono::{DateTime, Utc};
use model_runner_core::ports::RunFilter;
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use uuid::Uuid;

use super::rows::run_columns;

/// One run by primary key.
pub(crate) const SELECT_RUN: &str = concat!("SELECT ", run_columns!(), " FROM runs WHERE id = $1");

/// The runs of an idempotency key in batch order (`runs_idempotency`).
pub(crate) const SELECT_RUNS_OF_KEY: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs WHERE idempotency_key = $1 ORDER BY id"
);

/// The compare-and-set every transition persists with (primary key).
pub(crate) const UPDATE_RUN: &str = "UPDATE runs SET state = $5, attempt = $6, \
     max_attempts = $7, updated_at = $8, queued_at = $9, started_at = $10, finished_at = $11, \
     lease_owner = $12, lease_expires_at = $13, next_attempt_at = $14, blocks_done = $15, \
     records_written = $16, last_error = $17 \
     WHERE id = $1 AND state = $2 AND attempt = $3 AND version = $4 RETURNING version";

/// The next queued run of a queue after `$2`, locked, skipping locked ones (`runs_queued`).
pub(crate) const CLAIM_NEXT: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs WHERE queue = $1 AND state = 'queued' AND id > $2 ORDER BY id LIMIT 1 \
     FOR UPDATE SKIP LOCKED"
);

/// Running runs whose lease ended before `$1` (`runs_leases`).
pub(crate) const EXPIRED_LEASES: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs WHERE state = 'running' AND lease_expires_at < $1 \
     ORDER BY lease_expires_at, id LIMIT $2"
);

/// Pending runs, oldest first (`runs_outbox_pending`).
pub(crate) const OUTBOX_PENDING: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs WHERE state = 'pending' ORDER BY id LIMIT $1"
);

/// Failed or expired runs whose retry is due at `$1` (`runs_outbox_retries`).
pub(crate) const OUTBOX_RETRIES: &str = concat!(
    "SELECT ",
    run_columns!(),
    " FROM runs WHERE state IN ('failed', 'expired') \
     AND next_attempt_at IS NOT NULL AND next_attempt_at <= $1 \
     AND attempt < max_attempts ORDER BY next_attempt_at, id LIMIT $2"
);

/// A bind parameter of a dynamically assembled filter.
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Text(String),
    Time(DateTime<Utc>),
    Id(Uuid),
    Int(i64),
}

/// A page of [`RunStore::list`](model_runner_core::ports::RunStore::list): `limit` rows from
/// the keyset bound on, by id (primary key, or `runs_model_id`, `runs_model_chain_id`,
/// `runs_model_state_id`, `runs_state_id` or `runs_created_at` when filtered).
pub(crate) fn list_sql(filter: &RunFilter, limit: i64) -> (String, Vec<Param>) {
    let (clause, mut params) = filter_sql(filter, true);
    params.push(Param::Int(limit));
    let sql = format!(
        concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs{} ORDER BY id LIMIT ${}"
        ),
        clause,
        params.len()
    );
    (sql, params)
}

/// Runs per state matching `filter` but its state and keyset bound (an index-only scan of
/// `runs_model_state_id` when filtered by model).
pub(crate) fn count_sql(filter: &RunFilter) -> (String, Vec<Param>) {
    let (clause, params) = filter_sql(filter, false);
    (
        format!("SELECT state, count(*) AS n FROM runs{clause} GROUP BY state"),
        params,
    )
}

/// The `WHERE` clause of `filter` (model, chain, mode, since; plus state and the keyset bound
/// when `paged`) with its parameters, numbered from `$1`.
///
/// State and mode are written into the SQL (they come from a fixed set of `&'static str`), so
/// the planner sees the value: a generic plan for `state = $n` would assume every state is as
/// common as `succeeded` and walk the primary key for a rare one.
fn filter_sql(filter: &RunFilter, paged: bool) -> (String, Vec<Param>) {
    let mut sql = String::from(" WHERE true");
    let mut params = Vec::new();
    let mut add = |clause: &str, p: Param| {
        params.push(p);
        sql.push_str(&format!(" AND {clause} ${}", params.len()));
    };
    if let Some(m) = &filter.model {
        add("model =", Param::Text(m.clone()));
    }
    if let Some(c) = &filter.chain {
        add("chain =", Param::Text(c.as_str().to_owned()));
    }
    if let Some(t) = filter.since {
        add("created_at >=", Param::Time(t));
    }
    if paged && let Some(a) = filter.after {
        add("id >", Param::Id(a.0));
    }
    if let Some(m) = filter.mode {
        sql.push_str(&format!(" AND mode = '{}'", m.as_str()));
    }
    if paged && let Some(s) = filter.state {
        sql.push_str(&format!(" AND state = '{}'", s.as_str()));
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
        };
    }
    q
}
