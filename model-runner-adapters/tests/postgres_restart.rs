//! The PostgreSQL run store across a server restart and a server crash: the server is restarted
//! (or killed and started) while workers claim and complete runs; afterwards every run is
//! succeeded exactly once and none was lost.
//!
//! Run with: `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo test -p
//! model-runner-adapters --no-default-features --features postgres --test postgres_restart`
//!
//! It restarts the server with `PG_RESTART_COMMAND` (default
//! `pg_ctlcluster --skip-systemctl-redirect 15 main restart`) and crashes it with
//! `PG_CRASH_COMMAND` (default: `stop -m immediate`, which skips the shutdown checkpoint and
//! recovers from the WAL on start, as after a power cut, then `start`). Both break every other
//! test using the server at that moment: CI runs them in a step of their own, after everything
//! else, and they take turns with each other.
#![cfg(feature = "postgres")]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use model_runner_adapters::postgres::{PostgresOptions, PostgresRunStore};
use model_runner_core::conformance::{new_run, unique};
use model_runner_core::ports::{CreateRuns, RunFilter, RunStore, RunStoreExt, StoreError};
use model_runner_core::run::TransitionError;
use model_runner_core::{RunEvent, RunId, RunState};

const RUNS: u64 = 3000;
const WORKERS: usize = 4;

async fn store_in(url: &str, schema: &str, max_connections: u32) -> PostgresRunStore {
    PostgresRunStore::connect_with(
        url,
        PostgresOptions {
            schema: Some(schema.to_owned()),
            max_connections,
            // Long enough to ride out the restart inside the adapter.
            retry_budget: Duration::from_secs(120),
            ..Default::default()
        },
    )
    .await
    .unwrap_or_else(|e| panic!("DATABASE_URL is set but the store cannot connect: {e}"))
}

/// When the server started. Pooled connections from before a restart fail once each, so this
/// tries again (with a deadline) like the store does.
async fn server_started_at(store: &PostgresRunStore) -> DateTime<Utc> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match sqlx::query_scalar("SELECT pg_postmaster_start_time()")
            .fetch_one(store.pool())
            .await
        {
            Ok(t) => return t,
            Err(e) => {
                assert!(Instant::now() < deadline, "pg_postmaster_start_time: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Polls `cond` every 10 ms until it holds, failing after `limit`.
async fn wait_for(what: &str, limit: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The two tests stop the one shared server: one at a time.
static SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_under_load_loses_nothing() {
    let restart = std::env::var("PG_RESTART_COMMAND")
        .unwrap_or_else(|_| "pg_ctlcluster --skip-systemctl-redirect 15 main restart".to_owned());
    under_load("restart", &restart).await;
}

/// An immediate stop loses what was committed without waiting for the WAL flush: the store's
/// asynchronous claims. A worker whose claim was undone finds, when it completes, its run `queued`
/// again on the same attempt, or already taken (even completed) by another worker that claimed it
/// since; it drops its result, and the store still ends with every run completed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crash_under_load_loses_nothing() {
    let crash = std::env::var("PG_CRASH_COMMAND").unwrap_or_else(|_| {
        "pg_ctlcluster --skip-systemctl-redirect 15 main stop -m immediate && \
         pg_ctlcluster --skip-systemctl-redirect 15 main start"
            .to_owned()
    });
    under_load("crash", &crash).await;
}

/// Workers claim and complete `RUNS` runs while `command` takes the server away.
async fn under_load(what: &str, command: &str) {
    let _turn = SERVER.lock().await;
    let restart = command.to_owned();
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            eprintln!(
                "DATABASE_URL is not set: the PostgreSQL restart test is not configured and \
                 checks nothing (CI sets it)"
            );
            return;
        }
    };
    let schema = unique("t");
    let store = store_in(&url, &schema, 8).await;
    let runs: Vec<_> = (0..RUNS)
        .map(|i| new_run("m", "ethereum", i * 10, i * 10 + 9))
        .collect();
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
    let mut tasks = Vec::new();
    for chunk in ids.chunks(ids.len() / 8 + 1) {
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
    let started_before = server_started_at(&store).await;

    let completed = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let lost_claims = Arc::new(AtomicUsize::new(0));
    let lease = Utc::now() + chrono::Duration::minutes(30);
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let s = store_in(&url, &schema, 2).await;
        let (queue, completed, count, lost_claims) = (
            queue.clone(),
            completed.clone(),
            count.clone(),
            lost_claims.clone(),
        );
        workers.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            while let Some(run) = s.claim_next(&queue, &owner, lease).await.expect("claim") {
                let done = match s
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
                {
                    Ok(done) => done,
                    // The claim was undone by the crash: the run was queued again, and is
                    // either still queued (it will be claimed again, by this worker or another)
                    // or already claimed, or even completed, by another worker. Either way this
                    // worker's result is dropped; the counts below check that every run was
                    // still completed exactly once.
                    Err(StoreError::Conflict {
                        current: Some(c), ..
                    }) if c.attempt == run.attempt
                        && c.lease_owner.as_deref() != Some(owner.as_str()) =>
                    {
                        lost_claims.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    // Claimed again by another worker on the same attempt and still running
                    // there: the state and attempt match, so the state machine refuses us as
                    // not the lease holder.
                    Err(StoreError::Transition(TransitionError::NotLeaseHolder {
                        holder: Some(holder),
                        ..
                    })) if holder != owner => {
                        lost_claims.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    Err(e) => panic!("complete {}: {e}", run.id),
                };
                assert_eq!(done.state, RunState::Succeeded);
                completed.lock().unwrap().push(run.id);
                count.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    wait_for("the first completions", Duration::from_secs(120), || {
        count.load(Ordering::Relaxed) >= 300
    })
    .await;
    let before_restart = count.load(Ordering::Relaxed);
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&restart)
            .status()
    })
    .await
    .unwrap()
    .expect("run PG_RESTART_COMMAND");
    assert!(status.success(), "restart command failed: {status}");
    assert!(
        before_restart < RUNS as usize,
        "the {what} must happen while runs are being processed"
    );

    for w in workers {
        tokio::time::timeout(Duration::from_secs(300), w)
            .await
            .expect("workers finish after the restart")
            .expect("worker");
    }
    let started_after = server_started_at(&store).await;
    assert!(
        started_after > started_before,
        "the server was taken away ({what}: {started_before} -> {started_after})"
    );

    let completed = completed.lock().unwrap().clone();
    assert_eq!(completed.len(), RUNS as usize, "every run completed once");
    let distinct: HashSet<_> = completed.iter().collect();
    assert_eq!(distinct.len(), RUNS as usize, "no run completed twice");
    let counts = store.count_by_state(&RunFilter::default()).await.unwrap();
    assert_eq!(
        counts.into_iter().collect::<Vec<_>>(),
        vec![(RunState::Succeeded, RUNS)],
        "every run is in exactly one terminal state"
    );
    let mut filter = RunFilter {
        limit: 1000,
        ..Default::default()
    };
    let mut seen = 0;
    loop {
        let page = store.list(&filter).await.unwrap();
        for r in &page.runs {
            assert_eq!((r.state, r.attempt), (RunState::Succeeded, 1), "{r:?}");
            assert!(r.finished_at.is_some() && r.lease_owner.is_none());
            seen += 1;
        }
        match page.next {
            Some(n) => filter.after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, RUNS);
    eprintln!(
        "{what} test: {before_restart} of {RUNS} runs done before the {what}, all {RUNS} done \
         once after it; {} claims undone by it and made again",
        lost_claims.load(Ordering::Relaxed)
    );
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(store.pool())
    .await
    .expect("drop schema");
}
