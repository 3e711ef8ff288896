//! Plan checks at scale: fills a schema with millions of runs shaped like production (almost all
//! finished, a thin layer of pending, queued and running ones, a few failed ones due for retry)
//! and checks every statement of [`super::queries`] runs on its index, touching a bounded number
//! of pages: under both custom and generic plans for the prepared statements, and under custom
//! plans for the list and count queries, which the store never prepares.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test PLAN_RUNS=10000000 cargo test
//! -p model-runner-adapters --no-default-features --features postgres --lib postgres::plans --
//! --ignored --nocapture`

use chrono::{Duration, Utc};
use model_runner_core::ports::RunFilter;
use model_runner_core::{Chain, RunId, RunMode, RunState};
use sqlx::{AssertSqlSafe, Row};
use uuid::Uuid;

use super::queries::{
    CLAIM_NEXT, EXPIRED_LEASES, OUTBOX_PENDING, OUTBOX_RETRIES, Param, SELECT_RUN,
    SELECT_RUNS_OF_KEY, bind_all, count_sql, list_sql,
};
use super::{PostgresOptions, PostgresRunStore};

/// `n` runs, ids ascending with creation time three seconds apart (about a year for 10
/// million), 50 models on 5 chains. The newest 20,000 are pending, queued, running or succeeded
/// in turn; older ones succeeded but for one in 997 failed (due for retry or not), one in 1999
/// expired and one in 3001 cancelled.
/// Staged in an unlogged table, then split into `runs` and `run_states` by [`FILL_RUNS`] and
/// [`FILL_STATES`].
const FILL: &str = "
CREATE UNLOGGED TABLE fill AS
SELECT lpad(to_hex(g), 32, '0')::uuid AS id, 'model_' || (g % 50) AS model, '1' AS model_version,
       c.chain, g * 10 AS range_start, g * 10 + 9 AS range_end,
       CASE WHEN g % 10 = 0 THEN 'realtime' ELSE 'backfill' END AS mode, 'nonreads' AS kind,
       c.chain || '_backfill_nonreads' AS queue, s.state, 1 AS attempt, 3 AS max_attempts,
       t.at AS created_at, t.at AS updated_at, t.at AS queued_at,
       CASE WHEN s.state NOT IN ('pending', 'queued') THEN t.at END AS started_at,
       CASE WHEN s.state IN ('succeeded', 'failed', 'expired', 'cancelled') THEN t.at END
           AS finished_at,
       CASE WHEN s.state = 'running' THEN 'w' END AS lease_owner,
       CASE WHEN s.state = 'running' THEN now() + ((g % 11) - 5) * interval '1 minute' END
           AS lease_expires_at,
       CASE WHEN s.state = 'failed' AND g % 2 = 0 THEN now() + ((g % 5) - 2) * interval '1 hour' END
           AS next_attempt_at,
       10 AS blocks_done, 3 AS records_written,
       CASE WHEN s.state = 'failed' THEN 'boom' END AS last_error,
       CASE WHEN g % 100000 = 0 THEN 'key-' || g END AS idempotency_key
FROM generate_series(1, {n}) g
CROSS JOIN LATERAL (SELECT (ARRAY['ethereum', 'matic', 'bsc', 'arbitrum', 'stellar'])[1 + (g / 7) % 5] AS chain) c
CROSS JOIN LATERAL (SELECT now() - ({n} - g) * interval '3 seconds' AS at) t
CROSS JOIN LATERAL (SELECT CASE
    WHEN g > {n} - 20000 THEN (ARRAY['pending', 'queued', 'running', 'succeeded'])[1 + g % 4]
    WHEN g % 997 = 0 THEN 'failed'
    WHEN g % 1999 = 0 THEN 'expired'
    WHEN g % 3001 = 0 THEN 'cancelled'
    ELSE 'succeeded' END AS state) s";

const FILL_RUNS: &str = "
INSERT INTO runs (id, model, model_version, chain, range_start, range_end, mode, kind, queue,
                  created_at, idempotency_key)
SELECT id, model, model_version, chain, range_start, range_end, mode, kind, queue, created_at,
       idempotency_key
FROM fill";

const FILL_STATES: &str = "
INSERT INTO run_states (id, model, chain, mode, queue, created_at, state, attempt, max_attempts,
                        updated_at, queued_at, started_at, finished_at, lease_owner,
                        lease_expires_at, next_attempt_at, blocks_done, records_written,
                        last_error)
SELECT id, model, chain, mode, queue, created_at, state, attempt, max_attempts, updated_at,
       queued_at, started_at, finished_at, lease_owner, lease_expires_at, next_attempt_at,
       blocks_done, records_written, last_error
FROM fill";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "fills a table with PLAN_RUNS runs (default 10 million); run by hand"]
async fn statements_stay_on_their_indexes_at_scale() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("DATABASE_URL is not set: the plan check is not configured");
        return;
    };
    let n: i64 = std::env::var("PLAN_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let schema = format!("plans_{}", Uuid::now_v7().simple());
    let store = PostgresRunStore::connect_with(
        &url,
        PostgresOptions {
            schema: Some(schema.clone()),
            max_connections: 1,
            ..Default::default()
        },
    )
    .await
    .expect("connect");
    let pool = store.pool();
    let started = std::time::Instant::now();
    // A utility statement takes no bind parameters: `n` (an integer) is written in.
    sqlx::raw_sql(AssertSqlSafe(FILL.replace("{n}", &n.to_string())))
        .execute(pool)
        .await
        .expect("fill");
    for (what, sql) in [("runs", FILL_RUNS), ("run_states", FILL_STATES)] {
        sqlx::raw_sql(sql)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("fill {what}: {e}"));
    }
    // One statement each: a multi-statement string is one transaction, and VACUUM refuses that.
    for sql in [
        "DROP TABLE fill",
        "VACUUM ANALYZE runs",
        "VACUUM ANALYZE run_states",
    ] {
        sqlx::raw_sql(sql)
            .execute(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    eprintln!("filled {n} runs in {:.0?}", started.elapsed());

    let now = Utc::now();
    let model = Some("model_7".to_owned());
    let chain = Some(Chain::new("matic").unwrap());
    let middle = RunId(Uuid::from_u128(n as u128 / 2));
    let page = |f: RunFilter| list_sql(&f, 101);
    let cases: Vec<(&str, (String, Vec<Param>))> = vec![
        ("get", (SELECT_RUN.into(), vec![Param::Id(middle.0)])),
        ("list, first page", page(RunFilter::default())),
        (
            "list, deep page",
            page(RunFilter {
                after: Some(middle),
                ..Default::default()
            }),
        ),
        (
            "list by model",
            page(RunFilter {
                model: model.clone(),
                ..Default::default()
            }),
        ),
        (
            "list by model and chain, deep page",
            page(RunFilter {
                model: model.clone(),
                chain: chain.clone(),
                after: Some(middle),
                ..Default::default()
            }),
        ),
        (
            "list failed",
            page(RunFilter {
                state: Some(RunState::Failed),
                ..Default::default()
            }),
        ),
        (
            "list succeeded",
            page(RunFilter {
                state: Some(RunState::Succeeded),
                ..Default::default()
            }),
        ),
        (
            "list failed of a model",
            page(RunFilter {
                model: model.clone(),
                state: Some(RunState::Failed),
                ..Default::default()
            }),
        ),
        (
            "list realtime runs",
            page(RunFilter {
                mode: Some(RunMode::Realtime),
                ..Default::default()
            }),
        ),
        (
            "list of the last hour",
            page(RunFilter {
                since: Some(now - Duration::hours(1)),
                ..Default::default()
            }),
        ),
        (
            "count by state of a model",
            count_sql(&RunFilter {
                model: model.clone(),
                ..Default::default()
            }),
        ),
        (
            "count by state of a model on a chain",
            count_sql(&RunFilter {
                model: model.clone(),
                chain: chain.clone(),
                ..Default::default()
            }),
        ),
        (
            "outbox, pending",
            (
                OUTBOX_PENDING.into(),
                vec![Param::Int(100), Param::Texts(vec!["backfill_1".into()])],
            ),
        ),
        (
            "outbox, retries",
            (
                OUTBOX_RETRIES.into(),
                vec![
                    Param::Time(now),
                    Param::Int(100),
                    Param::Texts(vec!["backfill_1".into()]),
                ],
            ),
        ),
        (
            "expired leases",
            (
                EXPIRED_LEASES.into(),
                vec![Param::Time(now), Param::Int(100)],
            ),
        ),
        (
            "claim_next",
            (
                CLAIM_NEXT.into(),
                vec![
                    Param::Text("ethereum_backfill_nonreads".into()),
                    Param::Id(Uuid::nil()),
                ],
            ),
        ),
        (
            "runs of an idempotency key",
            (
                SELECT_RUNS_OF_KEY.into(),
                vec![Param::Text("key-100000".into())],
            ),
        ),
    ];

    let mut conn = pool.acquire().await.expect("connection");
    let mut failures = Vec::new();
    for mode in ["force_custom_plan", "force_generic_plan"] {
        sqlx::raw_sql(AssertSqlSafe(format!("SET plan_cache_mode = {mode}")))
            .execute(&mut *conn)
            .await
            .expect("plan_cache_mode");
        for (name, (sql, params)) in &cases {
            let prepared = !name.starts_with("list") && !name.starts_with("count");
            if mode == "force_generic_plan" && !prepared {
                continue;
            }
            let explain = format!("EXPLAIN (ANALYZE, BUFFERS) {sql}");
            let rows = bind_all(sqlx::query(AssertSqlSafe(explain)), params)
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let plan: Vec<String> = rows
                .iter()
                .map(|r| r.try_get::<String, _>(0).expect("plan line"))
                .collect();
            let plan = plan.join("\n");
            let pages = buffers(&plan);
            let removed = number_after(&plan, "Rows Removed by Filter: ");
            let time = plan
                .lines()
                .find(|l| l.starts_with("Execution Time"))
                .unwrap_or_default();
            eprintln!("--- {name} ({mode}): {pages} pages, {time}\n{plan}");
            // A count reads every index entry of its model, index-only (filtering the chain
            // there); a page of runs, a get or a poll reads a few hundred pages at most: about
            // four per run for the table that picks the page, and four more to join each run
            // to its other half (`runs` or `run_states`) by primary key.
            let (max_pages, max_removed) = if name.starts_with("count") {
                (5_000, u64::MAX)
            } else {
                (1_000, 10_000)
            };
            if plan.contains("Seq Scan") || pages > max_pages || removed > max_removed {
                failures.push(format!(
                    "{name} ({mode}): {pages} pages, {removed} rows filtered out"
                ));
            }
        }
    }
    drop(conn);
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(pool)
        .await
        .expect("drop schema");
    assert!(
        failures.is_empty(),
        "statements off their indexes:\n{}",
        failures.join("\n")
    );
}

/// Shared buffers hit plus read by the whole plan (the top node's line carries the total).
fn buffers(plan: &str) -> u64 {
    plan.lines()
        .find(|l| l.trim_start().starts_with("Buffers:"))
        .map(|l| number_after(l, "hit=") + number_after(l, "read="))
        .unwrap_or(0)
}

/// The sum of the numbers following each occurrence of `key`.
fn number_after(text: &str, key: &str) -> u64 {
    text.match_indices(key)
        .map(|(i, _)| {
            text[i + key.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse::<u64>()
                .unwrap_or(0)
        })
        .sum()
}
