//! The PostgreSQL run store against a real server.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo test -p
//! model-runner-adapters --no-default-features --features postgres --test postgres`
//!
//! Every test works in its own schema (`t_<uuid>`), dropped at the end, so the tests run in
//! parallel on one database. Without `DATABASE_URL` each test says so and passes; with it set,
//! an unreachable server fails the test.
#![cfg(feature = "postgres")]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use model_runner_adapters::postgres::{PostgresOptions, PostgresRunStore};
use model_runner_core::conformance::{new_run, unique};
use model_runner_core::ports::{CreateRuns, RunFilter, RunStore, RunStoreExt, StoreError};
use model_runner_core::{RunEvent, RunId, RunState};
use sqlx::Connection;

fn database_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!(
                "DATABASE_URL is not set: this PostgreSQL test is not configured and checks \
                 nothing (CI sets it)"
            );
            None
        }
    }
}

/// A store in a fresh schema; panics (fails the test) when the server is unreachable.
async fn store_in(url: &str, schema: &str, max_connections: u32) -> PostgresRunStore {
    PostgresRunStore::connect_with(
        url,
        PostgresOptions {
            schema: Some(schema.to_owned()),
            max_connections,
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("DATABASE_URL is set but the store cannot connect: {e}"))
}

async fn drop_schemas(url: &str, schemas: &[String]) {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    for s in schemas {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{s}\" CASCADE"
        )))
        .execute(&mut conn)
        .await
        .expect("drop schema");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conformance() {
    let Some(url) = database_url() else { return };
    let schemas = Arc::new(Mutex::new(Vec::new()));
    let made = schemas.clone();
    model_runner_core::conformance::store::run_all(|| {
        let (url, made) = (url.clone(), made.clone());
        async move {
            let schema = unique("t");
            made.lock().unwrap().push(schema.clone());
            store_in(&url, &schema, 8).await
        }
    })
    .await;
    let schemas = schemas.lock().unwrap().clone();
    drop_schemas(&url, &schemas).await;
}

/// 8 connections claiming from 5,000 queued runs claim each exactly once and complete them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_connections_claim_each_run_once() {
    let Some(url) = database_url() else { return };
    let schema = unique("t");
    let store = store_in(&url, &schema, 8).await;
    let runs: Vec<_> = (0..5000u64)
        .map(|i| new_run("m", "ethereum", i * 10, i * 10 + 9))
        .collect();
    let queue = runs[0].queue.clone();
    let created = store
        .create_runs(CreateRuns {
            runs,
            idempotency_key: None,
        })
        .await
        .unwrap()
        .runs;
    let ids: Vec<RunId> = created.iter().map(|r| r.id).collect();
    // Enqueue from 8 tasks too.
    let mut tasks = Vec::new();
    for chunk in ids.chunks(625) {
        let (s, chunk) = (store.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for id in chunk {
                s.transition(id, RunState::Pending, 1, RunEvent::Enqueue)
                    .await
                    .expect("enqueue");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }

    let lease = Utc::now() + chrono::Duration::minutes(10);
    let mut workers = Vec::new();
    for w in 0..8 {
        // A fresh store per worker, as each worker is its own process in production.
        let s = store_in(&url, &schema, 1).await;
        let queue = queue.clone();
        workers.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            let mut done = Vec::new();
            while let Some(run) = s.claim_next(&queue, &owner, lease).await.expect("claim") {
                assert_eq!(run.state, RunState::Running);
                assert_eq!(run.lease_owner.as_deref(), Some(owner.as_str()));
                let finished = s
                    .transition(
                        run.id,
                        RunState::Running,
                        run.attempt,
                        RunEvent::Succeed {
                            owner: owner.clone(),
                            blocks_done: run.range.len(),
                            records_written: 1,
                            notes: Default::default(),
                        },
                    )
                    .await
                    .expect("complete");
                assert_eq!(finished.state, RunState::Succeeded);
                done.push(run.id);
            }
            done
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    assert_eq!(all.len(), 5000, "every run claimed and completed once");
    let unique_ids: HashSet<_> = all.iter().collect();
    assert_eq!(unique_ids.len(), 5000, "no run claimed twice");
    let counts = store.count_by_state(&RunFilter::default()).await.unwrap();
    assert_eq!(counts.get(&RunState::Succeeded), Some(&5000), "{counts:?}");
    assert_eq!(counts.len(), 1, "nothing left in another state: {counts:?}");
    drop_schemas(&url, &[schema]).await;
}

/// A late worker (another process, holding an old copy of the run) cannot overwrite a newer
/// attempt, and a stale expectation is a Conflict carrying the run as stored.
#[tokio::test]
async fn late_worker_cannot_overwrite_a_newer_attempt() {
    let Some(url) = database_url() else { return };
    let schema = unique("t");
    let worker_a = store_in(&url, &schema, 2).await;
    let scanner = store_in(&url, &schema, 2).await;
    let worker_b = store_in(&url, &schema, 2).await;
    let id = worker_a
        .create_runs(CreateRuns {
            runs: vec![new_run("m", "ethereum", 0, 9)],
            idempotency_key: None,
        })
        .await
        .unwrap()
        .runs[0]
        .id;
    worker_a
        .transition(id, RunState::Pending, 1, RunEvent::Enqueue)
        .await
        .unwrap();
    let past = Utc::now() - chrono::Duration::seconds(1);
    worker_a.claim(id, 1, "a", past).await.unwrap();
    // The lease ran out: another process expires, requeues and hands the run to worker b.
    let expired = scanner.expired_leases(Utc::now(), 10).await.unwrap();
    assert_eq!(expired.len(), 1);
    scanner
        .transition(
            id,
            RunState::Running,
            1,
            RunEvent::Expire {
                at: Utc::now(),
                retry_at: Some(Utc::now()),
            },
        )
        .await
        .unwrap();
    scanner
        .transition(id, RunState::Expired, 1, RunEvent::Enqueue)
        .await
        .unwrap();
    let lease = Utc::now() + chrono::Duration::minutes(5);
    worker_b.claim(id, 2, "b", lease).await.unwrap();

    // Worker a wakes up and reports success for attempt 1.
    let err = worker_a
        .transition(
            id,
            RunState::Running,
            1,
            RunEvent::Succeed {
                owner: "a".into(),
                blocks_done: 10,
                records_written: 5,
                notes: Default::default(),
            },
        )
        .await
        .unwrap_err();
    let current = err.current().expect("a Conflict carries the stored run");
    assert_eq!(
        (current.state, current.attempt),
        (RunState::Running, 2),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("is running on attempt 2, not running on attempt 1"),
        "{err}"
    );
    let err = worker_a.heartbeat(id, 1, "a", lease, 3).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    // Worker b's lease holds; its heartbeat and completion go through.
    let r = worker_b.heartbeat(id, 2, "b", lease, 4).await.unwrap();
    assert_eq!(r.blocks_done, 4);
    let done = worker_b
        .transition(
            id,
            RunState::Running,
            2,
            RunEvent::Succeed {
                owner: "b".into(),
                blocks_done: 10,
                records_written: 7,
                notes: Default::default(),
            },
        )
        .await
        .unwrap();
    assert_eq!(worker_a.get(id).await.unwrap(), done);
    // The result summary is kept on the run.
    assert_eq!((done.blocks_done, done.records_written), (10, 7));
    assert_eq!(done.last_error, None);
    drop_schemas(&url, &[schema]).await;
}

/// Unknown ids, stale states, refused events and over-large numbers are typed errors.
#[tokio::test]
async fn bad_input_is_a_typed_error() {
    let Some(url) = database_url() else { return };
    let schema = unique("t");
    let store = store_in(&url, &schema, 2).await;
    let missing = RunId::new();
    assert!(matches!(
        store.get(missing).await,
        Err(StoreError::NotFound { id }) if id == missing
    ));
    let err = store
        .transition(missing, RunState::Queued, 1, RunEvent::Enqueue)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err:?}");
    assert_eq!(err.to_string(), format!("run {missing} not found"));

    let id = store
        .create_runs(CreateRuns {
            runs: vec![new_run("m", "ethereum", 0, 9)],
            idempotency_key: None,
        })
        .await
        .unwrap()
        .runs[0]
        .id;
    let err = store
        .claim(id, 1, "w", Utc::now() + chrono::Duration::minutes(1))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is pending on attempt 1, not queued on attempt 1"),
        "{err}"
    );
    let err = store
        .transition(
            id,
            RunState::Pending,
            1,
            RunEvent::Expire {
                at: Utc::now(),
                retry_at: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "cannot expire a run that is pending");

    let err = store
        .create_runs(CreateRuns {
            runs: vec![new_run("m", "ethereum", 1, u64::MAX)],
            idempotency_key: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("block number"), "{err}");
    drop_schemas(&url, &[schema]).await;
}

#[tokio::test]
async fn malformed_urls_are_invalid_input_without_passwords() {
    for (url, says) in [
        ("mysql://root:hunter2@db/runs", "not a PostgreSQL URL"),
        ("postgres://root:hunter2@db:notaport/runs", "invalid port"),
        (
            "postgres://root:hunter2@db/runs?sslmode=sometimes",
            "sslmode",
        ),
        ("hunter2", "malformed PostgreSQL URL"),
        (
            "postgres://root:hunter2@db/runs?durable_claims=maybe",
            "invalid durable_claims=\"maybe\"",
        ),
        (
            "postgres://root:hunter2@db/runs?durable_claims=true&sslmode=sometimes",
            "sslmode",
        ),
    ] {
        let err = PostgresRunStore::connect(url).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::InvalidInput(_)), "{url}: {err:?}");
        assert!(msg.contains(says), "{url}: {msg}");
        assert!(!msg.contains("hunter2"), "password leaked: {msg}");
    }
    let err = PostgresRunStore::connect_with(
        "postgres://db/runs",
        PostgresOptions {
            schema: Some("x; DROP TABLE runs".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("invalid schema name"), "{err}");
}

#[tokio::test]
async fn unreachable_server_is_unavailable_without_password() {
    // Port 1 on localhost refuses connections; no server needed.
    let err = PostgresRunStore::connect_with(
        "postgres://root:hunter2@127.0.0.1:1/runs",
        PostgresOptions {
            acquire_timeout: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("postgres://root:***@127.0.0.1:1/runs"),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "{msg}");
}

/// `?durable_claims=` is the store's own URL parameter, taken out before libpq sees the rest.
#[tokio::test]
async fn durable_claims_from_the_url() {
    let Some(url) = database_url() else { return };
    let schema = unique("t");
    let sep = if url.contains('?') { '&' } else { '?' };
    for (param, durable) in [
        ("", false),
        ("durable_claims=true", true),
        ("durable_claims=0", false),
    ] {
        let full = if param.is_empty() {
            url.clone()
        } else {
            format!("{url}{sep}{param}")
        };
        let store = PostgresRunStore::connect_with(
            &full,
            PostgresOptions {
                schema: Some(schema.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{param}: {e}"));
        assert_eq!(store.durable_claims(), durable, "{param}");
        let run = store
            .create_runs(CreateRuns {
                runs: vec![new_run("m", "ethereum", 0, 9)],
                idempotency_key: None,
            })
            .await
            .unwrap()
            .runs
            .remove(0);
        store
            .transition(run.id, RunState::Pending, 1, RunEvent::Enqueue)
            .await
            .unwrap();
        let claimed = store
            .claim(run.id, 1, "w", Utc::now() + chrono::Duration::minutes(1))
            .await
            .unwrap();
        assert_eq!(claimed.state, RunState::Running);
    }
    drop_schemas(&url, &[schema]).await;
}

/// Statements are bounded by `statement_timeout` (a stuck one becomes a retried `Unavailable`),
/// but migrations are not: a store with a 1 ms limit still migrates a fresh schema.
#[tokio::test]
async fn statement_timeout_bounds_statements_but_not_migrations() {
    let Some(url) = database_url() else { return };
    let schema = unique("t");
    let store = PostgresRunStore::connect_with(
        &url,
        PostgresOptions {
            schema: Some(schema.clone()),
            statement_timeout: Some(Duration::from_millis(1)),
            retry_budget: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await
    .expect("migrations run without the statement timeout");
    // Each migration file is one simple query of many statements, far longer than 1 ms. Even
    // `SHOW` may be cut off on a loaded machine, so it gets a few tries.
    let mut limit = None;
    for _ in 0..50 {
        if let Ok(l) = sqlx::query_scalar::<_, String>("SHOW statement_timeout")
            .fetch_one(store.pool())
            .await
        {
            limit = Some(l);
            break;
        }
    }
    assert_eq!(
        limit.as_deref(),
        Some("1ms"),
        "pooled connections keep the limit after migrating"
    );
    let err = sqlx::query("SELECT pg_sleep(0.2)")
        .execute(store.pool())
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("57014"),
        "{err}"
    );
    let default = store_in(&url, &schema, 1).await;
    let limit: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(default.pool())
        .await
        .unwrap();
    assert_eq!(limit, "30s");
    drop_schemas(&url, &[schema]).await;
}

/// Migrating twice is a no-op; a store told not to migrate uses what is there.
#[tokio::test]
async fn migrations_are_idempotent() {
    let Some(url) = database_url() else { return };
    let schema = unique("t");
    let store = store_in(&url, &schema, 2).await;
    store.migrate().await.expect("second migrate");
    let again = PostgresRunStore::connect_with(
        &url,
        PostgresOptions {
            schema: Some(schema.clone()),
            migrate: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    again
        .create_runs(CreateRuns {
            runs: vec![new_run("m", "ethereum", 0, 9)],
            idempotency_key: Some("k".into()),
        })
        .await
        .unwrap();
    assert_eq!(
        store.list(&RunFilter::default()).await.unwrap().runs.len(),
        1
    );
    drop_schemas(&url, &[schema]).await;
}

/// `claim_next` goes on after its last claim but comes back for a requeued (older) run, and
/// says `None` once the queue is empty.
#[tokio::test]
async fn claim_next_comes_back_for_requeued_runs() {
    let Some(url) = database_url() else { return };
    let schema = unique("t");
    let store = store_in(&url, &schema, 2).await;
    let runs: Vec<_> = (0..3).map(|i| new_run("m", "ethereum", i, i)).collect();
    let queue = runs[0].queue.clone();
    let ids: Vec<RunId> = store
        .create_runs(CreateRuns {
            runs,
            idempotency_key: None,
        })
        .await
        .unwrap()
        .runs
        .iter()
        .map(|r| r.id)
        .collect();
    let lease = Utc::now() + chrono::Duration::minutes(5);
    assert_eq!(store.claim_next(&queue, "w", lease).await.unwrap(), None);
    for id in &ids {
        store
            .transition(*id, RunState::Pending, 1, RunEvent::Enqueue)
            .await
            .unwrap();
    }
    let first = store.claim_next(&queue, "w", lease).await.unwrap().unwrap();
    assert_eq!(first.id, ids[0], "oldest first");
    store
        .transition(
            first.id,
            RunState::Running,
            1,
            RunEvent::Fail {
                owner: "w".into(),
                error: "boom".into(),
                retry_at: Some(Utc::now()),
            },
        )
        .await
        .unwrap();
    store
        .transition(first.id, RunState::Failed, 1, RunEvent::Enqueue)
        .await
        .unwrap();
    let mut order = Vec::new();
    while let Some(r) = store.claim_next(&queue, "w", lease).await.unwrap() {
        order.push((r.id, r.attempt));
    }
    assert_eq!(order, vec![(ids[1], 1), (ids[2], 1), (ids[0], 2)]);
    assert_eq!(
        store
            .claim_next("some_other_queue", "w", lease)
            .await
            .unwrap(),
        None
    );
    drop_schemas(&url, &[schema]).await;
}

/// Upgrading a store created before `run_states` existed (migrations 0001-0003, one `runs`
/// table) keeps every run with all its fields, and the runs go on moving afterwards.
#[tokio::test]
async fn upgrade_to_run_states_keeps_every_run() {
    let Some(url) = database_url() else { return };
    let schema = unique("t");
    // The schema as release 0003 left it, through sqlx's migrator so the upgrade sees the same
    // history (and checksums) a real deployment has.
    let old = tempfile::tempdir().unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.as_str() < "0004" {
            std::fs::copy(&path, old.path().join(name)).unwrap();
        }
    }
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET search_path = \"{schema}\""
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::migrate::Migrator::new(old.path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .expect("old migrations");
    // Four runs as the old store wrote them: pending, running under a lease, failed with a
    // retry due, succeeded with its result summary.
    sqlx::raw_sql(
        "INSERT INTO runs (id, model, model_version, chain, range_start, range_end, mode, kind, \
         queue, state, attempt, max_attempts, created_at, updated_at, queued_at, started_at, \
         finished_at, lease_owner, lease_expires_at, next_attempt_at, blocks_done, \
         records_written, last_error, idempotency_key) VALUES \
         ('00000000-0000-7000-8000-000000000001', 'm', '1', 'ethereum', 0, 9, 'backfill', \
          'nonreads', 'ethereum_backfill_nonreads', 'pending', 1, 3, \
          '2026-01-01T00:00:00Z', '2026-01-01T00:00:00Z', NULL, NULL, NULL, NULL, NULL, NULL, \
          0, 0, NULL, 'key-1'), \
         ('00000000-0000-7000-8000-000000000002', 'm', '1', 'ethereum', 10, 19, 'backfill', \
          'nonreads', 'ethereum_backfill_nonreads', 'running', 2, 3, \
          '2026-01-01T00:00:01Z', '2026-01-01T00:01:00Z', '2026-01-01T00:00:30Z', \
          '2026-01-01T00:01:00Z', NULL, 'worker-a', '2099-01-01T00:00:00Z', NULL, 4, 7, \
          'first attempt: boom', 'key-1'), \
         ('00000000-0000-7000-8000-000000000003', 'm', '1', 'matic', 20, 29, 'adhoc', \
          'reads', 'backfill_2', 'failed', 1, 2, \
          '2026-01-01T00:00:02Z', '2026-01-01T00:02:00Z', '2026-01-01T00:00:40Z', \
          '2026-01-01T00:01:30Z', '2026-01-01T00:02:00Z', NULL, NULL, \
          '2026-01-01T00:03:00Z', 0, 0, 'model m failed: boom', NULL), \
         ('00000000-0000-7000-8000-000000000004', 'n', '2', 'ethereum', 30, 39, 'realtime', \
          'nonreads', 'ethereum_realtime_nonreads', 'succeeded', 1, 3, \
          '2026-01-01T00:00:03Z', '2026-01-01T00:05:00Z', '2026-01-01T00:00:50Z', \
          '2026-01-01T00:04:00Z', '2026-01-01T00:05:00Z', NULL, NULL, NULL, 10, 42, NULL, NULL); \
         INSERT INTO run_batches (idempotency_key, created_at) VALUES ('key-1', now())",
    )
    .execute(&mut conn)
    .await
    .expect("old rows");
    let before: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(r)::text FROM (SELECT id, model, model_version, chain, range_start, \
         range_end, mode, kind, queue, state, attempt, max_attempts, created_at, updated_at, \
         queued_at, started_at, finished_at, lease_owner, lease_expires_at, next_attempt_at, \
         blocks_done, records_written, last_error, idempotency_key FROM runs ORDER BY id) r",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();

    // The upgrade: a store connecting with `migrate` applies 0004.
    let store = store_in(&url, &schema, 2).await;
    let after: Vec<String> = sqlx::query_scalar(
        "SELECT row_to_json(x)::text FROM (SELECT r.id, r.model, r.model_version, r.chain, \
         r.range_start, r.range_end, r.mode, r.kind, r.queue, s.state, s.attempt, \
         s.max_attempts, r.created_at, s.updated_at, s.queued_at, s.started_at, s.finished_at, \
         s.lease_owner, s.lease_expires_at, s.next_attempt_at, s.blocks_done, \
         s.records_written, s.last_error, r.idempotency_key \
         FROM runs r JOIN run_states s ON s.id = r.id ORDER BY r.id) x",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        after, before,
        "every field of every run survives the upgrade"
    );

    // Through the port: the runs read back, filter, count and move on as before.
    let all = store.list(&RunFilter::default()).await.unwrap().runs;
    assert_eq!(all.len(), 4);
    let running = &all[1];
    assert_eq!(
        (
            running.state,
            running.attempt,
            running.lease_owner.as_deref()
        ),
        (RunState::Running, 2, Some("worker-a"))
    );
    assert_eq!(running.last_error.as_deref(), Some("first attempt: boom"));
    assert_eq!((running.blocks_done, running.records_written), (4, 7));
    let failed = store
        .list(&RunFilter {
            state: Some(RunState::Failed),
            ..Default::default()
        })
        .await
        .unwrap()
        .runs;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].queue, "backfill_2");
    let counts = store
        .count_by_state(&RunFilter {
            model: Some("m".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(counts.values().sum::<u64>(), 3);
    let done = store
        .transition(
            running.id,
            RunState::Running,
            2,
            RunEvent::Succeed {
                owner: "worker-a".into(),
                blocks_done: 10,
                records_written: 9,
                notes: Default::default(),
            },
        )
        .await
        .expect("a migrated run moves on");
    assert_eq!(done.state, RunState::Succeeded);
    // A stale expectation still loses against the migrated row version.
    let err = store
        .transition(
            running.id,
            RunState::Running,
            2,
            RunEvent::Cancel { reason: None },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let err = store
        .create_runs(CreateRuns {
            runs: vec![new_run("m", "ethereum", 0, 9)],
            idempotency_key: Some("key-1".into()),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { .. }) && err.to_string().contains("key-1"),
        "the old batch's idempotency key still guards it: {err}"
    );
    drop_schemas(&url, &[schema]).await;
}
