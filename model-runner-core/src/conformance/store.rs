//! The [`RunStore`] conformance suite.

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};

use alloy_primitives::Address;

use super::{ERC20_ABI, new_run};
use crate::chain::{Chain, RunMode};
use crate::ports::{
    ContractRef, CursorAdvance, CursorKey, CursorRewind, LockLease, OutboxQuery, ScheduledBlocks,
};
use crate::ports::{CreateRuns, RunFilter, RunStore, RunStoreExt, StoreError, Transition};
use crate::run::{NewRun, RunEvent, RunId, RunState};

/// Runs every case, each on a fresh store from `make`.
pub async fn run_all<F, Fut, S>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
    S: RunStore,
{
    create_get_and_not_found(make().await).await;
    empty_batch_is_invalid(make().await).await;
    idempotent_create(make().await).await;
    keyset_pagination_and_filters(make().await).await;
    transition_is_compare_and_set(make().await).await;
    racing_transitions_have_one_winner(Arc::new(make().await)).await;
    claims_are_exclusive(Arc::new(make().await)).await;
    heartbeat_only_for_holder(make().await).await;
    expired_leases_are_listed(make().await).await;
    worker_events_need_the_lease(make().await).await;
    mark_enqueued_is_a_compare_and_set_per_run(make().await).await;
    transitions_are_a_compare_and_set_per_run(make().await).await;
    batched_claims_have_one_winner_per_run(Arc::new(make().await)).await;
    outbox_order_and_retries(make().await).await;
    cursor_advances_atomically(make().await).await;
    reorg_records_rewind_and_supersede(make().await).await;
    named_lock_has_one_holder(make().await).await;
    counts_by_state(make().await).await;
    large_batch_is_stored_whole(make().await).await;
    release_hands_back_on_the_same_attempt(make().await).await;
    ping_answers_and_writes_nothing(make().await).await;
    abi_registry_round_trip(make().await).await;
    invalid_abi_is_refused_and_stores_nothing(make().await).await;
}

/// Creates `n` pending runs of model `m` (blocks `i*10..=i*10+9`); returns their ids.
pub async fn create(store: &impl RunStore, n: u64) -> Vec<RunId> {
    let runs = (0..n)
        .map(|i| new_run("m", "ethereum", i * 10, i * 10 + 9))
        .collect();
    store
        .create_runs(CreateRuns {
            runs,
            idempotency_key: None,
        })
        .await
        .expect("create_runs")
        .runs
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// `owner`'s success on a run of [`create`] (10 blocks, 1 record).
fn succeed(owner: &str) -> RunEvent {
    RunEvent::Succeed {
        owner: owner.into(),
        blocks_done: 10,
        records_written: 1,
        notes: Default::default(),
    }
}

/// An expiry of a lease the expirer found ended at `now`, its retry due at `now`.
fn expire(now: DateTime<Utc>) -> RunEvent {
    RunEvent::Expire {
        at: now,
        retry_at: Some(now),
    }
}

/// Moves pending runs (attempt 1) to `queued`, one transition each.
pub async fn enqueue_all(store: &impl RunStore, ids: &[RunId]) {
    for id in ids {
        store
            .transition(*id, RunState::Pending, 1, RunEvent::Enqueue)
            .await
            .expect("enqueue");
    }
}

/// create_runs makes pending runs on attempt 1 with ascending ids; get finds them; unknown ids
/// are NotFound.
pub async fn create_get_and_not_found(store: impl RunStore) {
    let created = store
        .create_runs(CreateRuns {
            runs: vec![
                new_run("m", "ethereum", 0, 9),
                new_run("m", "ethereum", 10, 19),
                new_run("m", "matic", 0, 0),
            ],
            idempotency_key: None,
        })
        .await
        .expect("create_runs");
    assert!(created.created);
    assert_eq!(created.runs.len(), 3);
    assert!(
        created.runs.windows(2).all(|w| w[0].id < w[1].id),
        "ids MUST ascend in batch order"
    );
    for r in &created.runs {
        assert_eq!(r.state, RunState::Pending);
        assert_eq!(r.attempt, 1);
        let got = store.get(r.id).await.expect("get");
        assert_eq!(&got, r, "get MUST return the run as created");
    }
    assert_eq!(created.runs[2].chain, Chain::new("matic").unwrap());
    let missing = RunId::new();
    match store.get(missing).await {
        Err(StoreError::NotFound { id }) => assert_eq!(id, missing),
        other => panic!("get of an unknown id MUST be NotFound, got {other:?}"),
    }
}

/// An empty batch is InvalidInput.
pub async fn empty_batch_is_invalid(store: impl RunStore) {
    let err = store
        .create_runs(CreateRuns {
            runs: vec![],
            idempotency_key: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput(_)), "{err:?}");
}

/// The same idempotency key returns the same runs; a different batch under it is a Conflict.
pub async fn idempotent_create(store: impl RunStore) {
    let batch = CreateRuns {
        runs: vec![
            new_run("m", "ethereum", 0, 99),
            new_run("m", "ethereum", 100, 199),
        ],
        idempotency_key: Some("key-1".into()),
    };
    let first = store.create_runs(batch.clone()).await.expect("first");
    let second = store.create_runs(batch.clone()).await.expect("second");
    assert!(first.created);
    assert!(
        !second.created,
        "a resubmission MUST report created = false"
    );
    let ids = |c: &crate::ports::CreatedRuns| c.runs.iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(&first),
        ids(&second),
        "same key MUST give the same runs"
    );
    let all = store.list(&RunFilter::default()).await.unwrap();
    assert_eq!(all.runs.len(), 2, "a resubmission MUST NOT create runs");
    let other = CreateRuns {
        runs: vec![new_run("m", "ethereum", 0, 5)],
        idempotency_key: Some("key-1".into()),
    };
    let err = store.create_runs(other).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let third = store
        .create_runs(CreateRuns {
            idempotency_key: Some("key-2".into()),
            ..batch
        })
        .await
        .unwrap();
    assert!(third.created, "another key MUST create");
}

/// Pages ascend by id, cover every match once, and filters apply.
pub async fn keyset_pagination_and_filters(store: impl RunStore) {
    let mut runs = Vec::new();
    for i in 0..130u64 {
        let chain = if i % 2 == 0 { "ethereum" } else { "matic" };
        let model = if i % 3 == 0 { "a" } else { "b" };
        runs.push(new_run(model, chain, i, i));
    }
    let created = store
        .create_runs(CreateRuns {
            runs,
            idempotency_key: None,
        })
        .await
        .unwrap()
        .runs;
    enqueue_all(&store, &[created[0].id, created[1].id]).await;

    let mut seen = Vec::new();
    let mut filter = RunFilter {
        limit: 50,
        ..Default::default()
    };
    let mut pages = 0;
    loop {
        let page = store.list(&filter).await.unwrap();
        pages += 1;
        assert!(page.runs.len() <= 50);
        seen.extend(page.runs.iter().map(|r| r.id));
        if pages == 1 {
            // Runs added while paging are still visited.
            store
                .create_runs(CreateRuns {
                    runs: vec![new_run("late", "ethereum", 1, 1)],
                    idempotency_key: None,
                })
                .await
                .unwrap();
        }
        match page.next {
            Some(n) => filter.after = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 3, "131 runs in pages of 50");
    assert_eq!(seen.len(), 131, "every run exactly once");
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "pages MUST ascend by id"
    );

    let exact = store
        .list(&RunFilter {
            limit: 131,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(exact.runs.len(), 131);
    assert_eq!(exact.next, None, "next MUST be None when nothing follows");

    let eth_a = store
        .list(&RunFilter {
            model: Some("a".into()),
            chain: Some(Chain::new("ethereum").unwrap()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(eth_a.runs.len(), 22, "i % 6 == 0 for i < 130");
    assert!(
        eth_a
            .runs
            .iter()
            .all(|r| r.model == "a" && r.chain.as_str() == "ethereum")
    );
    let queued = store
        .list(&RunFilter {
            state: Some(RunState::Queued),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(queued.runs.len(), 2);
    let future = store
        .list(&RunFilter {
            since: Some(Utc::now() + Duration::hours(1)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(future.runs.is_empty());
    let backfill = store
        .list(&RunFilter {
            mode: Some(crate::chain::RunMode::Realtime),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(backfill.runs.is_empty(), "no realtime runs were created");
}

/// Transitions apply only from the expected state and attempt.
pub async fn transition_is_compare_and_set(store: impl RunStore) {
    let id = create(&store, 1).await[0];
    let err = store
        .transition(id, RunState::Pending, 2, RunEvent::Enqueue)
        .await
        .unwrap_err();
    let current = err
        .current()
        .expect("a Conflict MUST carry the current run");
    assert_eq!((current.state, current.attempt), (RunState::Pending, 1));
    let err = store
        .transition(id, RunState::Queued, 1, RunEvent::Enqueue)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let err = store
        .transition(
            id,
            RunState::Pending,
            1,
            RunEvent::Succeed {
                owner: "w".into(),
                blocks_done: 1,
                records_written: 1,
                notes: Default::default(),
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition(_)), "{err:?}");
    assert_eq!(
        store.get(id).await.unwrap().state,
        RunState::Pending,
        "refused events change nothing"
    );
    let err = store
        .transition(RunId::new(), RunState::Pending, 1, RunEvent::Enqueue)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }));

    let queued = store
        .transition(id, RunState::Pending, 1, RunEvent::Enqueue)
        .await
        .unwrap();
    assert_eq!(queued.state, RunState::Queued);
    assert!(queued.queued_at.is_some());
    let lease = Utc::now() + Duration::minutes(5);
    let running = store.claim(id, 1, "w1", lease).await.unwrap();
    assert_eq!(running.lease_owner.as_deref(), Some("w1"));
    let failed = store
        .transition(
            id,
            RunState::Running,
            1,
            RunEvent::Fail {
                owner: "w1".into(),
                error: "boom: model panicked".into(),
                retry_at: Some(Utc::now()),
            },
        )
        .await
        .unwrap();
    assert_eq!(failed.state, RunState::Failed);
    assert_eq!(failed.last_error.as_deref(), Some("boom: model panicked"));
    assert!(failed.lease_owner.is_none());
    let requeued = store
        .transition(id, RunState::Failed, 1, RunEvent::Enqueue)
        .await
        .unwrap();
    assert_eq!((requeued.state, requeued.attempt), (RunState::Queued, 2));
    assert!(
        store.claim(id, 1, "late", lease).await.is_err(),
        "a stale attempt MUST NOT claim"
    );
    store.claim(id, 2, "w2", lease).await.unwrap();
    let done = store
        .transition(
            id,
            RunState::Running,
            2,
            RunEvent::Succeed {
                owner: "w2".into(),
                blocks_done: 10,
                records_written: 42,
                notes: [("abi_mismatched_logs".to_owned(), 3)].into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(done.state, RunState::Succeeded);
    assert_eq!((done.blocks_done, done.records_written), (10, 42));
    assert_eq!(
        done.notes,
        [("abi_mismatched_logs".to_owned(), 3)].into(),
        "a success carries the model's notes"
    );
    assert!(done.finished_at.is_some());
    assert_eq!(
        store.get(id).await.unwrap(),
        done,
        "the stored run MUST equal the returned one"
    );

    let other = create(&store, 1).await[0];
    let cancelled = store
        .transition(
            other,
            RunState::Pending,
            1,
            RunEvent::Cancel {
                reason: Some("user".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(cancelled.state, RunState::Cancelled);
}

/// Of 16 racing callers with the same expectation exactly one wins.
pub async fn racing_transitions_have_one_winner<S: RunStore>(store: Arc<S>) {
    let id = create(&*store, 1).await[0];
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.transition(id, RunState::Pending, 1, RunEvent::Enqueue)
                .await
                .is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1, "exactly one racing transition MUST win");
}

/// 16 tasks claiming from 500 queued runs claim each exactly once.
pub async fn claims_are_exclusive<S: RunStore>(store: Arc<S>) {
    let ids = create(&*store, 500).await;
    enqueue_all(&*store, &ids).await;
    let ids = Arc::new(ids);
    let lease = Utc::now() + Duration::minutes(5);
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (s, ids) = (store.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            let mut won = Vec::new();
            // Each task walks the runs from a different offset so they collide a lot.
            for i in 0..ids.len() {
                let id = ids[(i + w * 31) % ids.len()];
                match s.claim(id, 1, &owner, lease).await {
                    Ok(r) => {
                        assert_eq!(r.lease_owner.as_deref(), Some(owner.as_str()));
                        won.push(id);
                    }
                    Err(StoreError::Conflict { .. }) => {}
                    Err(e) => panic!("claim failed: {e}"),
                }
            }
            won
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 500, "every run claimed, none twice");
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), 500, "no run claimed twice");
    for id in ids.iter().take(20) {
        assert_eq!(store.get(*id).await.unwrap().state, RunState::Running);
    }
}

/// Only the lease holder on the current attempt can heartbeat.
pub async fn heartbeat_only_for_holder(store: impl RunStore) {
    let id = create(&store, 1).await[0];
    enqueue_all(&store, &[id]).await;
    let t0 = Utc::now() + Duration::seconds(30);
    store.claim(id, 1, "w1", t0).await.unwrap();
    let t1 = t0 + Duration::seconds(30);
    let r = store.heartbeat(id, 1, "w1", t1, 7).await.unwrap();
    assert_eq!(r.blocks_done, 7);
    assert_eq!(
        r.lease_expires_at.map(|t| t.timestamp_millis()),
        Some(t1.timestamp_millis()),
        "heartbeat MUST renew the lease"
    );
    let err = store.heartbeat(id, 1, "w2", t1, 9).await.unwrap_err();
    assert!(matches!(err, StoreError::Transition(_)), "{err:?}");
    assert!(store.heartbeat(id, 2, "w1", t1, 9).await.is_err());
    assert_eq!(store.get(id).await.unwrap().blocks_done, 7);
}

/// Running runs with a lease in the past are listed; others are not.
pub async fn expired_leases_are_listed(store: impl RunStore) {
    let ids = create(&store, 3).await;
    enqueue_all(&store, &ids).await;
    let now = Utc::now();
    store
        .claim(ids[0], 1, "gone", now - Duration::seconds(10))
        .await
        .unwrap();
    store
        .claim(ids[1], 1, "alive", now + Duration::minutes(10))
        .await
        .unwrap();
    let expired = store.expired_leases(now, 100).await.unwrap();
    assert_eq!(
        expired.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let r = store
        .transition(ids[0], RunState::Running, 1, expire(now))
        .await
        .unwrap();
    assert_eq!(r.state, RunState::Expired);
    assert!(store.expired_leases(now, 100).await.unwrap().is_empty());
}

/// `Succeed` and `Fail` MUST come from the lease holder, and `Expire` MUST lose to a heartbeat
/// that renewed the lease after the expirer listed the run (checked inside the
/// compare-and-set, against the stored lease, not the caller's copy).
pub async fn worker_events_need_the_lease(store: impl RunStore) {
    let id = create(&store, 1).await[0];
    enqueue_all(&store, &[id]).await;
    let now = Utc::now();
    store
        .claim(id, 1, "w1", now - Duration::seconds(5))
        .await
        .unwrap();
    let listed = store.expired_leases(now, 10).await.unwrap();
    assert_eq!(listed.len(), 1, "the lease ended 5 s ago");
    for event in [
        succeed("w2"),
        RunEvent::Fail {
            owner: "w2".into(),
            error: "boom".into(),
            retry_at: None,
        },
    ] {
        let err = store
            .transition(id, RunState::Running, 1, event)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Transition(_)), "{err:?}");
    }
    // The holder renews after the expirer listed the run: the expiry MUST be refused.
    store
        .heartbeat(id, 1, "w1", now + Duration::minutes(5), 3)
        .await
        .unwrap();
    let err = store
        .transition(id, RunState::Running, 1, expire(now))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Transition(_)), "{err:?}");
    let still = store.get(id).await.unwrap();
    assert_eq!(
        (still.state, still.lease_owner.as_deref(), still.blocks_done),
        (RunState::Running, Some("w1"), 3)
    );
    let done = store
        .transition(id, RunState::Running, 1, succeed("w1"))
        .await
        .unwrap();
    assert_eq!(done.state, RunState::Succeeded);
}

/// `mark_enqueued` leaves each run as `transition(.., Enqueue)` would, marks only runs still
/// in their expected state and attempt, and counts what it marked.
pub async fn mark_enqueued_is_a_compare_and_set_per_run(store: impl RunStore) {
    let ids = create(&store, 6).await;
    // ids[4] and ids[5] fail their first attempt (a retry is due), so Enqueue starts attempt 2.
    for id in &ids[4..] {
        store
            .transition(*id, RunState::Pending, 1, RunEvent::Enqueue)
            .await
            .unwrap();
        store
            .claim(*id, 1, "w", Utc::now() + Duration::minutes(1))
            .await
            .unwrap();
        store
            .transition(
                *id,
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
    }
    store
        .transition(
            ids[2],
            RunState::Pending,
            1,
            RunEvent::Cancel { reason: None },
        )
        .await
        .unwrap();
    let marked = store
        .mark_enqueued(&[
            (ids[0], RunState::Pending, 1),
            (ids[1], RunState::Pending, 1),
            (ids[2], RunState::Pending, 1), // cancelled meanwhile
            (ids[3], RunState::Failed, 1),  // wrong expectation
            (ids[4], RunState::Failed, 1),
        ])
        .await
        .unwrap();
    assert_eq!(marked, 3);
    // The same event, one run at a time, for comparison.
    let one = store
        .transition(ids[5], RunState::Failed, 1, RunEvent::Enqueue)
        .await
        .unwrap();
    let batch = store.get(ids[4]).await.unwrap();
    let fields = |r: &crate::run::ModelRun| {
        (
            r.state,
            r.attempt,
            r.started_at,
            r.finished_at,
            r.next_attempt_at,
            r.blocks_done,
            r.lease_owner.clone(),
            r.last_error.clone(),
            r.queued_at.is_some(),
        )
    };
    assert_eq!(fields(&batch), fields(&one));
    assert_eq!((batch.state, batch.attempt), (RunState::Queued, 2));
    for (i, state) in [
        (0, RunState::Queued),
        (1, RunState::Queued),
        (2, RunState::Cancelled),
        (3, RunState::Pending),
    ] {
        assert_eq!(store.get(ids[i]).await.unwrap().state, state, "run {i}");
    }
    // Marked runs are claimable on the attempt their message carries.
    store
        .claim(ids[4], 2, "w2", Utc::now() + Duration::minutes(1))
        .await
        .unwrap();
    assert_eq!(store.mark_enqueued(&[]).await.unwrap(), 0);
}

/// A batch of transitions in which some items conflict, are refused, name an unknown run or
/// name a run twice: each item gets what `transition` would have given it, in order, and the
/// runs end as one-by-one transitions leave them.
pub async fn transitions_are_a_compare_and_set_per_run(store: impl RunStore) {
    let ids = create(&store, 7).await;
    enqueue_all(&store, &ids).await;
    let lease = Utc::now() + Duration::minutes(5);
    let start = |owner: &str| RunEvent::Start {
        owner: owner.into(),
        lease_until: lease,
    };
    let succeed = |owner: &str| RunEvent::Succeed {
        owner: owner.into(),
        blocks_done: 10,
        records_written: 3,
        notes: [("skipped".to_owned(), 2)].into(),
    };
    let item = |id, expected, expected_attempt, event| Transition {
        id,
        expected,
        expected_attempt,
        event,
    };
    let unknown = RunId(uuid::Uuid::now_v7());
    let batch = vec![
        item(ids[0], RunState::Queued, 1, start("a")),
        // A stale attempt: conflict.
        item(ids[1], RunState::Queued, 2, start("a")),
        item(unknown, RunState::Queued, 1, start("a")),
        // Refused by the state machine: a queued run cannot succeed.
        item(ids[2], RunState::Queued, 1, succeed("a")),
        // Named twice: the first claim wins, the second sees it and conflicts.
        item(ids[3], RunState::Queued, 1, start("a")),
        item(ids[3], RunState::Queued, 1, start("b")),
        // Claimed, then completed, in one batch.
        item(ids[4], RunState::Queued, 1, start("a")),
        item(ids[4], RunState::Running, 1, succeed("a")),
        // Completed by someone who does not hold the lease: refused.
        item(ids[5], RunState::Queued, 1, start("a")),
        item(ids[5], RunState::Running, 1, succeed("b")),
    ];
    let results = store.transitions(&batch).await.expect("transitions");
    assert_eq!(results.len(), batch.len(), "one result per item");
    let ok = |i: usize| match &results[i] {
        Ok(run) => run.clone(),
        Err(e) => panic!("item {i} failed: {e}"),
    };
    assert_eq!(ok(0).state, RunState::Running);
    assert_eq!(ok(0).lease_owner.as_deref(), Some("a"));
    match &results[1] {
        Err(StoreError::Conflict { current, .. }) => {
            let current = current.as_deref().expect("the conflict carries the run");
            assert_eq!((current.state, current.attempt), (RunState::Queued, 1));
        }
        other => panic!("a stale attempt MUST conflict, got {other:?}"),
    }
    assert!(
        matches!(&results[2], Err(StoreError::NotFound { id }) if *id == unknown),
        "an unknown run MUST be NotFound, got {:?}",
        results[2]
    );
    assert!(
        matches!(&results[3], Err(StoreError::Transition(_))),
        "a refused event MUST be Transition, got {:?}",
        results[3]
    );
    assert_eq!(ok(4).lease_owner.as_deref(), Some("a"));
    match &results[5] {
        Err(StoreError::Conflict { current, .. }) => {
            let current = current.as_deref().expect("the conflict carries the run");
            assert_eq!(
                current.state,
                RunState::Running,
                "the second claim sees the first"
            );
            assert_eq!(current.lease_owner.as_deref(), Some("a"));
        }
        other => panic!("a second claim of one run MUST conflict, got {other:?}"),
    }
    assert_eq!(ok(6).state, RunState::Running);
    let batched = ok(7);
    assert_eq!(batched.state, RunState::Succeeded);
    assert_eq!(batched.notes, [("skipped".to_owned(), 2)].into());
    assert!(
        matches!(&results[9], Err(StoreError::Transition(_))),
        "completing without the lease MUST be refused, got {:?}",
        results[9]
    );

    // What the batch stored is what the items return, and what one-by-one transitions store.
    for (i, expected) in [
        (0, RunState::Running),
        (1, RunState::Queued),
        (2, RunState::Queued),
        (3, RunState::Running),
        (4, RunState::Succeeded),
        (5, RunState::Running),
    ] {
        let stored = store.get(ids[i]).await.unwrap();
        assert_eq!(stored.state, expected, "run {i}");
        assert_eq!(stored.attempt, 1, "run {i}");
    }
    assert_eq!(store.get(ids[4]).await.unwrap(), batched);
    store.claim(ids[6], 1, "a", lease).await.unwrap();
    let one = store
        .transition(ids[6], RunState::Running, 1, succeed("a"))
        .await
        .unwrap();
    let fields = |r: &crate::run::ModelRun| {
        (
            r.state,
            r.attempt,
            r.lease_owner.clone(),
            r.lease_expires_at,
            r.blocks_done,
            r.records_written,
            r.last_error.clone(),
            r.started_at.is_some(),
            r.finished_at.is_some(),
            r.next_attempt_at,
        )
    };
    assert_eq!(fields(&batched), fields(&one));
    assert!(store.transitions(&[]).await.unwrap().is_empty());
}

/// Four claimers each claim all 200 queued runs in batches of 50, in different orders: every
/// run is claimed exactly once, and every losing item is a conflict naming the winner.
pub async fn batched_claims_have_one_winner_per_run<S: RunStore>(store: Arc<S>) {
    let ids = create(&*store, 200).await;
    enqueue_all(&*store, &ids).await;
    let ids = Arc::new(ids);
    let lease = Utc::now() + Duration::minutes(5);
    let mut tasks = Vec::new();
    for w in 0..4 {
        let (s, ids) = (store.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let owner = format!("w{w}");
            let order: Vec<RunId> = (0..ids.len())
                .map(|i| ids[(i * 7 + w * 53) % ids.len()])
                .collect();
            let mut won = Vec::new();
            for chunk in order.chunks(50) {
                let batch: Vec<Transition> = chunk
                    .iter()
                    .map(|id| Transition {
                        id: *id,
                        expected: RunState::Queued,
                        expected_attempt: 1,
                        event: RunEvent::Start {
                            owner: owner.clone(),
                            lease_until: lease,
                        },
                    })
                    .collect();
                let results = s.transitions(&batch).await.expect("transitions");
                for (id, result) in chunk.iter().zip(results) {
                    match result {
                        Ok(run) => {
                            assert_eq!(run.lease_owner.as_deref(), Some(owner.as_str()));
                            won.push(*id);
                        }
                        Err(StoreError::Conflict { current, .. }) => {
                            let current = current.expect("the conflict carries the run");
                            assert_eq!(current.state, RunState::Running);
                            assert_ne!(current.lease_owner.as_deref(), Some(owner.as_str()));
                        }
                        Err(e) => panic!("claim failed: {e}"),
                    }
                }
            }
            won
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len(), "no run claimed twice");
    assert_eq!(all.len(), 200, "every run claimed");
}

/// The outbox gives pending runs oldest first, then due retries; not future or spent ones.
pub async fn outbox_order_and_retries(store: impl RunStore) {
    let ids = create(&store, 5).await;
    let now = Utc::now();
    let out = store
        .outbox(OutboxQuery {
            now,
            limit: 100,
            skip_queues: &[],
        })
        .await
        .unwrap();
    assert_eq!(
        out.iter().map(|r| r.id).collect::<Vec<_>>(),
        ids,
        "pending, oldest first"
    );
    assert_eq!(
        store
            .outbox(OutboxQuery {
                now,
                limit: 2,
                skip_queues: &[]
            })
            .await
            .unwrap()
            .len(),
        2,
        "limit applies"
    );
    enqueue_all(&store, &ids[..3]).await;
    let lease = now + Duration::minutes(1);
    for id in &ids[..3] {
        store.claim(*id, 1, "w", lease).await.unwrap();
    }
    let fail = |retry_at| RunEvent::Fail {
        owner: "w".into(),
        error: "x".into(),
        retry_at,
    };
    store
        .transition(
            ids[0],
            RunState::Running,
            1,
            fail(Some(now - Duration::seconds(1))),
        )
        .await
        .unwrap();
    store
        .transition(
            ids[1],
            RunState::Running,
            1,
            fail(Some(now + Duration::hours(1))),
        )
        .await
        .unwrap();
    store
        .transition(ids[2], RunState::Running, 1, fail(None))
        .await
        .unwrap();
    let due: BTreeSet<_> = store
        .outbox(OutboxQuery {
            now,
            limit: 100,
            skip_queues: &[],
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    let want: BTreeSet<_> = [ids[3], ids[4], ids[0]].into_iter().collect();
    assert_eq!(due, want, "pending plus the due retry only");
}

/// The cursor moves from the expected value only, creating its runs in the same step.
pub async fn cursor_advances_atomically(store: impl RunStore) {
    let eth = Chain::new("ethereum").unwrap();
    let m_key = CursorKey::new("m", &eth);
    assert_eq!(store.cursor(m_key).await.unwrap(), None);
    let runs = store
        .advance_cursor(CursorAdvance {
            key: m_key,
            expected: None,
            to: 19,
            runs: vec![
                new_run("m", "ethereum", 0, 9),
                new_run("m", "ethereum", 10, 19),
            ],
        })
        .await
        .unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(store.cursor(m_key).await.unwrap(), Some(19));
    let err = store
        .advance_cursor(CursorAdvance {
            key: m_key,
            expected: None,
            to: 29,
            runs: vec![new_run("m", "ethereum", 20, 29)],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(
        store.cursor(m_key).await.unwrap(),
        Some(19),
        "a refused advance changes nothing"
    );
    let listed = store.list(&RunFilter::default()).await.unwrap();
    assert_eq!(listed.runs.len(), 2, "a refused advance creates no runs");
    store
        .advance_cursor(CursorAdvance {
            key: m_key,
            expected: Some(19),
            to: 29,
            runs: vec![new_run("m", "ethereum", 20, 29)],
        })
        .await
        .unwrap();
    store
        .advance_cursor(CursorAdvance {
            key: CursorKey::new("other", &eth),
            expected: None,
            to: 5,
            runs: vec![],
        })
        .await
        .unwrap();
    let cursors = store.cursors(Some(&eth)).await.unwrap();
    assert_eq!(cursors.len(), 2);
    assert!(cursors.iter().any(|c| c.model == "m" && c.block == 29));
    assert!(
        store
            .cursors(Some(&Chain::new("matic").unwrap()))
            .await
            .unwrap()
            .is_empty()
    );
}

/// The block records the scheduler keeps for reorganisations: recorded newest first, pruned
/// below `keep_from`, replaced per number; `rewind_cursor` is a compare-and-set that forgets the
/// records above its target; `realtime_runs_after` finds the live realtime runs past a block;
/// and a run in any state but cancelled can be superseded.
pub async fn reorg_records_rewind_and_supersede(store: impl RunStore) {
    use crate::data::BlockRef;
    let eth = Chain::new("ethereum").unwrap();
    let m_key = CursorKey::new("m", &eth);
    let other_key = CursorKey::new("other", &eth);
    let block = |number: u64, branch: u8| BlockRef {
        number,
        hash: alloy_primitives::B256::with_last_byte(number as u8 ^ branch),
        parent_hash: alloy_primitives::B256::with_last_byte((number as u8).wrapping_sub(1)),
    };
    assert_eq!(store.scheduled_blocks(m_key).await.unwrap(), vec![]);
    let realtime = |start, end| NewRun {
        mode: RunMode::Realtime,
        queue: "ethereum_realtime_nonreads".into(),
        ..new_run("m", "ethereum", start, end)
    };
    let runs = store
        .advance_cursor(CursorAdvance {
            key: m_key,
            expected: None,
            to: 29,
            runs: vec![realtime(0, 9), realtime(10, 19), realtime(20, 29)],
        })
        .await
        .unwrap();
    store
        .record_scheduled_blocks(ScheduledBlocks {
            key: m_key,
            blocks: &[block(9, 0), block(19, 0), block(29, 0)],
            keep_from: 0,
        })
        .await
        .unwrap();
    // Another model's records and runs are its own.
    store
        .record_scheduled_blocks(ScheduledBlocks {
            key: other_key,
            blocks: &[block(29, 0x80)],
            keep_from: 0,
        })
        .await
        .unwrap();
    store
        .create_runs(CreateRuns {
            runs: vec![new_run("m", "ethereum", 20, 29)],
            idempotency_key: None,
        })
        .await
        .unwrap();
    assert_eq!(
        store.scheduled_blocks(m_key).await.unwrap(),
        vec![block(29, 0), block(19, 0), block(9, 0)],
        "newest first"
    );
    // A later record of a number replaces it; records below keep_from go.
    store
        .record_scheduled_blocks(ScheduledBlocks {
            key: m_key,
            blocks: &[block(29, 0x40), block(39, 0)],
            keep_from: 15,
        })
        .await
        .unwrap();
    assert_eq!(
        store.scheduled_blocks(m_key).await.unwrap(),
        vec![block(39, 0), block(29, 0x40), block(19, 0)]
    );

    // The live realtime runs past block 19: only 20-29 (not the backfill run over the same
    // blocks, not the runs ending at or below 19).
    let after: Vec<_> = store
        .realtime_runs_after(m_key, 19)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(after, vec![runs[2].id]);
    assert_eq!(store.realtime_runs_after(m_key, 8).await.unwrap().len(), 3);
    // Superseded, even once succeeded; then it is no longer live.
    let r = &runs[2];
    store
        .transition(r.id, RunState::Pending, 1, RunEvent::Enqueue)
        .await
        .unwrap();
    let superseded = store
        .transition(
            r.id,
            RunState::Queued,
            1,
            RunEvent::Supersede {
                reason: "reorg".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(superseded.state, RunState::Superseded);
    assert_eq!(superseded.last_error.as_deref(), Some("superseded: reorg"));
    assert_eq!(store.get(r.id).await.unwrap(), superseded, "stored");
    assert!(
        store
            .realtime_runs_after(m_key, 19)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .list(&RunFilter {
                state: Some(RunState::Superseded),
                ..Default::default()
            })
            .await
            .unwrap()
            .runs,
        vec![superseded.clone()],
        "listed by its state"
    );

    // Rewinding is a compare-and-set on the cursor.
    let rewind = |expected| CursorRewind {
        key: m_key,
        expected,
        to: 19,
    };
    let err = store.rewind_cursor(rewind(25)).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert_eq!(store.cursor(m_key).await.unwrap(), Some(29));
    assert_eq!(store.scheduled_blocks(m_key).await.unwrap().len(), 3);
    store.rewind_cursor(rewind(29)).await.unwrap();
    assert_eq!(store.cursor(m_key).await.unwrap(), Some(19));
    assert_eq!(
        store.scheduled_blocks(m_key).await.unwrap(),
        vec![block(19, 0)],
        "records above the new cursor are forgotten"
    );
    // A retried rewind (the cursor is already there) is not a conflict.
    store.rewind_cursor(rewind(29)).await.unwrap();
    assert_eq!(
        store.scheduled_blocks(other_key).await.unwrap(),
        vec![block(29, 0x80)]
    );
}

/// A named lock has one holder at a time until it ends.
pub async fn named_lock_has_one_holder(store: impl RunStore) {
    let now = Utc::now();
    let lock = |name, owner, until| {
        let store = &store;
        async move {
            let lease = LockLease { name, owner, until };
            store.try_lock(lease).await.unwrap()
        }
    };
    assert!(lock("scheduler", "a", now + Duration::minutes(1)).await);
    assert!(!lock("scheduler", "b", now + Duration::minutes(1)).await);
    assert!(
        lock("scheduler", "a", now + Duration::minutes(2)).await,
        "the holder MAY renew"
    );
    assert!(lock("other", "b", now + Duration::minutes(1)).await);
    assert!(lock("short", "a", now - Duration::seconds(1)).await);
    assert!(
        lock("short", "b", now + Duration::minutes(1)).await,
        "an ended lock MUST be takeable"
    );
}

/// Counts per state follow the filter.
pub async fn counts_by_state(store: impl RunStore) {
    let ids = create(&store, 4).await;
    enqueue_all(&store, &ids[..1]).await;
    store
        .create_runs(CreateRuns {
            runs: vec![new_run("other", "ethereum", 0, 1)],
            idempotency_key: None,
        })
        .await
        .unwrap();
    let counts = store
        .count_by_state(&RunFilter {
            model: Some("m".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(counts.get(&RunState::Pending), Some(&3));
    assert_eq!(counts.get(&RunState::Queued), Some(&1));
    assert_eq!(counts.values().sum::<u64>(), 4);
}

/// A batch of thousands of runs (one large backfill submission) is stored whole, in order, and an
/// idempotent resubmission returns all of it.
pub async fn large_batch_is_stored_whole(store: impl RunStore) {
    const N: u64 = 2_345;
    let batch = CreateRuns {
        runs: (0..N)
            .map(|i| new_run("m", "ethereum", i * 10, i * 10 + 9))
            .collect(),
        idempotency_key: Some("big".into()),
    };
    let created = store.create_runs(batch.clone()).await.expect("create_runs");
    assert_eq!(created.runs.len() as u64, N);
    assert!(created.runs.windows(2).all(|w| w[0].id < w[1].id));
    let counts = store.count_by_state(&RunFilter::default()).await.unwrap();
    assert_eq!(
        counts.get(&RunState::Pending),
        Some(&N),
        "every run MUST be stored"
    );
    for r in [
        &created.runs[0],
        &created.runs[1_000],
        &created.runs[N as usize - 1],
    ] {
        assert_eq!(&store.get(r.id).await.expect("get"), r);
    }
    let again = store.create_runs(batch).await.expect("resubmit");
    assert!(!again.created);
    assert_eq!(
        again.runs, created.runs,
        "a resubmission MUST return the whole batch"
    );
}

/// `Release` moves a running run back to `queued` on the same attempt, lease cleared and the
/// reason recorded, only for the current lease holder on that attempt; it can then be claimed
/// again on that attempt.
pub async fn release_hands_back_on_the_same_attempt(store: impl RunStore) {
    let id = create(&store, 1).await[0];
    enqueue_all(&store, &[id]).await;
    let lease = Utc::now() + Duration::minutes(5);
    store.claim(id, 1, "w1", lease).await.unwrap();
    store.heartbeat(id, 1, "w1", lease, 3).await.unwrap();
    let release = |owner: &str| RunEvent::Release {
        owner: owner.to_owned(),
        reason: "worker shutting down".into(),
    };

    let err = store
        .transition(id, RunState::Running, 1, release("w2"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Transition(_)),
        "a Release by another worker than the lease holder MUST be refused, got {err:?}"
    );
    let err = store
        .transition(id, RunState::Running, 2, release("w1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict { .. }),
        "a Release on another attempt MUST be a Conflict, got {err:?}"
    );
    let err = store
        .transition(id, RunState::Queued, 1, release("w1"))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    let still = store.get(id).await.unwrap();
    assert_eq!(
        (still.state, still.attempt, still.lease_owner.as_deref()),
        (RunState::Running, 1, Some("w1")),
        "refused releases change nothing"
    );

    let released = store
        .transition(id, RunState::Running, 1, release("w1"))
        .await
        .unwrap();
    assert_eq!(
        (released.state, released.attempt),
        (RunState::Queued, 1),
        "Release MUST requeue the run on the same attempt"
    );
    assert!(
        released.lease_owner.is_none(),
        "Release MUST clear the lease"
    );
    assert!(
        released.lease_expires_at.is_none(),
        "Release MUST clear the lease"
    );
    assert_eq!(released.blocks_done, 0);
    assert!(
        released
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("worker shutting down")),
        "Release MUST record its reason: {:?}",
        released.last_error
    );
    assert_eq!(
        store.get(id).await.unwrap(),
        released,
        "the stored run MUST equal the returned one"
    );
    assert!(
        store
            .expired_leases(Utc::now() + Duration::hours(1), 100)
            .await
            .unwrap()
            .is_empty(),
        "a released run holds no lease"
    );

    // Another worker claims it on the same attempt; the old holder can no longer release it.
    let again = store.claim(id, 1, "w2", lease).await.unwrap();
    assert_eq!((again.state, again.attempt), (RunState::Running, 1));
    let err = store
        .transition(id, RunState::Running, 1, release("w1"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Transition(_)),
        "a former lease holder MUST NOT release the run, got {err:?}"
    );
    let done = store
        .transition(id, RunState::Running, 1, succeed("w2"))
        .await
        .unwrap();
    assert_eq!((done.state, done.attempt), (RunState::Succeeded, 1));
}

/// `ping` succeeds on a healthy store and writes nothing.
pub async fn ping_answers_and_writes_nothing(store: impl RunStore) {
    store
        .ping()
        .await
        .expect("ping MUST succeed on a healthy store");
    let ids = create(&store, 2).await;
    enqueue_all(&store, &ids[..1]).await;
    let before = store.list(&RunFilter::default()).await.unwrap();
    let counts = store.count_by_state(&RunFilter::default()).await.unwrap();
    let eth = Chain::new("ethereum").unwrap();
    let cursors = store.cursors(Some(&eth)).await.unwrap();
    for _ in 0..3 {
        store.ping().await.expect("ping MUST succeed again");
    }
    assert_eq!(
        store.list(&RunFilter::default()).await.unwrap(),
        before,
        "ping MUST NOT write anything"
    );
    assert_eq!(
        store.count_by_state(&RunFilter::default()).await.unwrap(),
        counts,
        "ping MUST NOT write anything"
    );
    assert_eq!(store.cursors(Some(&eth)).await.unwrap(), cursors);
    assert!(
        store
            .outbox(OutboxQuery {
                now: Utc::now(),
                limit: 100,
                skip_queues: &[]
            })
            .await
            .unwrap()
            .iter()
            .all(|r| r.id == ids[1]),
        "ping MUST NOT create runs"
    );
}

fn erc20_abi() -> serde_json::Value {
    serde_json::from_str(ERC20_ABI).expect("the test ABI is JSON")
}

/// put_abi stores, abi reads back what put returned, a second put replaces (per chain and
/// address), abis lists by chain then address (optionally of one chain), delete_abi removes.
pub async fn abi_registry_round_trip(store: impl RunStore) {
    let eth = Chain::new("ethereum").unwrap();
    let matic = Chain::new("matic").unwrap();
    let token = Address::with_last_byte(0xAB);
    let other = Address::with_last_byte(0x01);
    let eth_token = ContractRef::new(&eth, token);
    let matic_token = ContractRef::new(&matic, token);
    assert_eq!(store.abi(eth_token).await.unwrap(), None, "no ABI yet");
    assert!(store.abis(None).await.unwrap().is_empty());

    let put = store
        .put_abi(eth_token, erc20_abi())
        .await
        .expect("put_abi");
    assert_eq!((&put.chain, put.address), (&eth, token));
    assert_eq!(put.abi, erc20_abi());
    assert_eq!(
        store.abi(eth_token).await.unwrap().as_ref(),
        Some(&put),
        "abi MUST read back what put_abi returned"
    );
    assert_eq!(
        store.abi(matic_token).await.unwrap(),
        None,
        "the same address on another chain is another contract"
    );

    // An upsert: the second ABI replaces the first.
    let transfer_only: serde_json::Value = serde_json::json!([erc20_abi()
        .as_array()
        .unwrap()
        .iter()
        .find(|item| item["name"] == "Transfer")
        .unwrap()]);
    let replaced = store
        .put_abi(eth_token, transfer_only.clone())
        .await
        .expect("put_abi again");
    assert_eq!(replaced.abi, transfer_only);
    assert!(replaced.updated_at >= put.updated_at);
    assert_eq!(
        store.abi(eth_token).await.unwrap().map(|a| a.abi),
        Some(transfer_only),
        "a second put_abi MUST replace the first"
    );

    let on_matic = store.put_abi(matic_token, erc20_abi()).await.unwrap();
    let first = store
        .put_abi(ContractRef::new(&eth, other), erc20_abi())
        .await
        .unwrap();
    let listed: Vec<(Chain, Address)> = store
        .abis(None)
        .await
        .unwrap()
        .into_iter()
        .map(|a| (a.chain, a.address))
        .collect();
    assert_eq!(
        listed,
        vec![
            (eth.clone(), other),
            (eth.clone(), token),
            (matic.clone(), token)
        ],
        "abis MUST list every ABI by chain then address"
    );
    assert_eq!(
        store.abis(Some(&matic)).await.unwrap(),
        vec![on_matic],
        "abis(Some(chain)) MUST list that chain's only"
    );

    assert!(store.delete_abi(eth_token).await.unwrap(), "it was there");
    assert_eq!(store.abi(eth_token).await.unwrap(), None);
    assert!(
        !store.delete_abi(eth_token).await.unwrap(),
        "deleting a missing ABI MUST return false, not fail"
    );
    assert_eq!(store.abis(Some(&eth)).await.unwrap(), vec![first]);
    assert!(store.abi(matic_token).await.unwrap().is_some());
}

/// put_abi of an invalid ABI is InvalidInput naming the problem, and leaves the earlier ABI.
pub async fn invalid_abi_is_refused_and_stores_nothing(store: impl RunStore) {
    let eth = Chain::new("ethereum").unwrap();
    let token = Address::with_last_byte(0xCD);
    let eth_token = ContractRef::new(&eth, token);
    let bad = [
        (serde_json::json!({"abi": []}), "expected a JSON array"),
        (serde_json::json!("[]"), "expected a JSON array"),
        (
            serde_json::json!([{"type": "event", "name": "X", "anonymous": false,
                "inputs": [{"name": "v", "type": "uint257", "indexed": false}]}]),
            "uint257",
        ),
        (serde_json::json!([{"type": "party", "name": "X"}]), "party"),
    ];
    for (abi, named) in &bad {
        match store.put_abi(eth_token, abi.clone()).await {
            Err(StoreError::InvalidInput(message)) => assert!(
                message.contains(named),
                "the error MUST name what is wrong ({named:?}): {message}"
            ),
            other => panic!("put_abi of {abi} MUST be InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(
        store.abi(eth_token).await.unwrap(),
        None,
        "a refused ABI MUST NOT be stored"
    );
    let good = store.put_abi(eth_token, erc20_abi()).await.unwrap();
    for (abi, _) in bad {
        store.put_abi(eth_token, abi).await.unwrap_err();
    }
    assert_eq!(
        store.abi(eth_token).await.unwrap(),
        Some(good),
        "a refused ABI MUST leave the earlier one"
    );
}
