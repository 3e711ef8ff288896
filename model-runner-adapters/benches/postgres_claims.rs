//! Claim-and-complete cycles per second of the PostgreSQL run store, beside a floor measured in
//! the same run: plain single-row `UPDATE` transactions per second on the same server through
//! the same two connections.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo bench -p
//! model-runner-adapters --no-default-features --features postgres --bench postgres_claims`
//!
//! Works in its own schema (dropped at the end). Set `BENCH_SECONDS` to change the length of
//! each measurement (default 5).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use model_runner_adapters::postgres::{PostgresOptions, PostgresRunStore};
use model_runner_core::ports::{CreateRuns, RunStore, RunStoreExt};
use model_runner_core::{BlockRange, Chain, ModelKind, NewRun, RunEvent, RunId, RunMode, RunState};

const CONNECTIONS: u32 = 2;

fn spec(i: u64) -> NewRun {
    let chain = Chain::new("ethereum").expect("chain");
    NewRun {
        model: "bench".into(),
        model_version: "1".into(),
        queue: model_runner_core::queue_name(&chain, RunMode::Backfill, ModelKind::Nonreads),
        chain,
        range: BlockRange::new(i * 10, i * 10 + 9).expect("range"),
        mode: RunMode::Backfill,
        kind: ModelKind::Nonreads,
        max_attempts: 3,
    }
}

async fn connect(url: &str, schema: &str, max_connections: u32) -> PostgresRunStore {
    connect_with(url, schema, max_connections, false).await
}

async fn connect_with(
    url: &str,
    schema: &str,
    max_connections: u32,
    durable_claims: bool,
) -> PostgresRunStore {
    PostgresRunStore::connect_with(
        url,
        PostgresOptions {
            schema: Some(schema.to_owned()),
            max_connections,
            durable_claims,
            ..Default::default()
        },
    )
    .await
    .expect("connect")
}

/// Creates and enqueues `n` runs, returning their ids in order.
async fn queued_runs(store: &PostgresRunStore, n: u64) -> Vec<RunId> {
    let mut ids = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let created = store
            .create_runs(CreateRuns {
                runs: chunk.iter().map(|i| spec(*i)).collect(),
                idempotency_key: None,
            })
            .await
            .expect("create");
        ids.extend(created.runs.iter().map(|r| r.id));
    }
    let ids = Arc::new(ids);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (s, ids, next) = (store.clone(), ids.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(id) = ids.get(i) else { break };
                s.transition(*id, RunState::Pending, 1, RunEvent::Enqueue)
                    .await
                    .expect("enqueue");
            }
        }));
    }
    for t in tasks {
        t.await.expect("enqueue task");
    }
    Arc::try_unwrap(ids).expect("tasks done")
}

/// Operations done and time taken, summed over rounds.
#[derive(Debug, Default, Clone, Copy)]
struct Rate {
    ops: u64,
    secs: f64,
}

impl Rate {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.secs
    }
    fn add(&mut self, other: Rate) {
        self.ops += other.ops;
        self.secs += other.secs;
    }
}

/// Runs `CONNECTIONS` copies of `step` for `for_how_long` (or until a step returns `false`).
async fn measure<F, Fut>(for_how_long: Duration, step: Arc<F>) -> Rate
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..CONNECTIONS as usize {
        let step = step.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while start.elapsed() < for_how_long && step(w).await {
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("bench task");
    }
    Rate {
        ops: total,
        secs: start.elapsed().as_secs_f64(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("DATABASE_URL is not set: nothing to benchmark");
        return;
    };
    let seconds = Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(5),
    );
    // Each figure is measured in ROUNDS slices, interleaved, so load from elsewhere on the
    // machine hits all three alike.
    const ROUNDS: u32 = 5;
    let slice = seconds / ROUNDS;
    let schema = model_runner_core::conformance::unique("bench");
    let setup = connect(&url, &schema, 16).await;
    sqlx::query("CREATE TABLE bench_floor (id int PRIMARY KEY, n bigint NOT NULL)")
        .execute(setup.pool())
        .await
        .expect("floor table");
    sqlx::query("INSERT INTO bench_floor SELECT g, 0 FROM generate_series(0, 7) g")
        .execute(setup.pool())
        .await
        .expect("floor rows");
    // Enough queued runs for both claim loops at a few thousand cycles per second.
    let budget = 3000 * seconds.as_secs().max(1);
    let ids = Arc::new(queued_runs(&setup, 3 * budget).await);
    let queue = spec(0).queue;
    let lease = Utc::now() + chrono::Duration::minutes(30);

    // The measured stores: two connections each, nothing remembered from the setup.
    let store = connect(&url, &schema, CONNECTIONS).await;
    let pool = store.pool().clone();
    let floor_step = Arc::new(move |w: usize| {
        let pool = pool.clone();
        async move {
            sqlx::query("UPDATE bench_floor SET n = n + 1 WHERE id = $1")
                .bind(w as i32)
                .execute(&pool)
                .await
                .expect("floor update");
            true
        }
    });
    let s = store.clone();
    let claim_next_step = Arc::new(move |w: usize| {
        let (s, queue) = (s.clone(), queue.clone());
        async move {
            let owner = format!("w{w}");
            let Some(run) = s
                .claim_next(&queue, &owner, lease)
                .await
                .expect("claim_next")
            else {
                return false;
            };
            complete(&s, run.id, run.attempt, &owner).await;
            true
        }
    });
    // The port's claim by id (the id a worker got from the queue), from a store that has not
    // seen the runs: load, compare-and-set, then a remembered compare-and-set to complete. Once
    // with the default asynchronous claims, once with `durable_claims`. The two loops and
    // claim_next take runs from different thirds of the queue.
    let third = ids.len() / 3;
    let by_id_step = by_id(
        connect(&url, &schema, CONNECTIONS).await,
        ids.clone(),
        third,
        lease,
    );
    let durable_step = by_id(
        connect_with(&url, &schema, CONNECTIONS, true).await,
        ids.clone(),
        2 * third,
        lease,
    );

    measure(Duration::from_secs(1), floor_step.clone()).await; // warm up
    let (mut floor, mut claim_next, mut by_id, mut durable) = (
        Rate::default(),
        Rate::default(),
        Rate::default(),
        Rate::default(),
    );
    for _ in 0..ROUNDS {
        floor.add(measure(slice, floor_step.clone()).await);
        claim_next.add(measure(slice, claim_next_step.clone()).await);
        by_id.add(measure(slice, by_id_step.clone()).await);
        durable.add(measure(slice, durable_step.clone()).await);
    }
    let (floor, claim_next, by_id, durable) = (
        floor.per_second(),
        claim_next.per_second(),
        by_id.per_second(),
        durable.per_second(),
    );
    println!(
        "postgres claims, {CONNECTIONS} connections, {}s per figure in {ROUNDS} interleaved slices:",
        seconds.as_secs()
    );
    println!("  floor: single-row UPDATE transactions/s:     {floor:>8.0}");
    println!(
        "  claim_next (SKIP LOCKED) + complete cycles/s: {claim_next:>8.0}  = {:.0}% of floor",
        100.0 * claim_next / floor
    );
    println!(
        "  claim(id) + complete cycles/s:                {by_id:>8.0}  = {:.0}% of floor",
        100.0 * by_id / floor
    );
    println!(
        "  claim(id) + complete, durable_claims, cycles/s:{durable:>8.0}  = {:.0}% of floor",
        100.0 * durable / floor
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(setup.pool())
    .await
    .expect("drop schema");
}

/// Claim-by-id-and-complete cycles on `store`, over `ids` from index `from` on.
fn by_id(
    store: PostgresRunStore,
    ids: Arc<Vec<RunId>>,
    from: usize,
    lease: chrono::DateTime<Utc>,
) -> Arc<
    impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync + 'static,
> {
    let next = Arc::new(AtomicUsize::new(from));
    Arc::new(move |w: usize| {
        let (s, ids, next) = (store.clone(), ids.clone(), next.clone());
        Box::pin(async move {
            let owner = format!("w{w}");
            loop {
                let Some(id) = ids.get(next.fetch_add(1, Ordering::Relaxed)).copied() else {
                    return false;
                };
                match s.claim(id, 1, &owner, lease).await {
                    Ok(run) => {
                        complete(&s, run.id, run.attempt, &owner).await;
                        return true;
                    }
                    // Taken by another loop: skip it, as a worker would.
                    Err(e) if e.current().is_some() => continue,
                    Err(e) => panic!("claim: {e}"),
                }
            }
        }) as std::pin::Pin<Box<dyn Future<Output = bool> + Send>>
    })
}

async fn complete(store: &PostgresRunStore, id: RunId, attempt: u32, owner: &str) {
    store
        .transition(
            id,
            RunState::Running,
            attempt,
            RunEvent::Succeed {
                owner: owner.to_owned(),
                blocks_done: 10,
                records_written: 1,
                notes: Default::default(),
            },
        )
        .await
        .expect("complete");
}
