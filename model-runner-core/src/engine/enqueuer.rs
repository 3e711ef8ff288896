//! The enqueuer: the transactional outbox relay from the store to the queues.
//!
//! Runs are created `pending` in the store; the enqueuer publishes each due run to its queue,
//! waits for the broker's confirmation, and only then marks it `queued`. A crash between the two
//! publishes the run again on restart: a duplicate message, which the worker's claim makes
//! harmless. A run is never lost, because it stays in the outbox until marked.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use super::{CancellationToken, EngineDeps, EngineError, instruments};
use crate::ports::OutboxQuery;
use crate::ports::{RunFilter, RunMessage};
use crate::run::{ModelRun, RunId, RunState};

/// Enqueuer settings.
#[derive(Debug, Clone)]
pub struct EnqueuerConfig {
    /// Runs taken from the outbox per pass.
    pub batch: usize,
    /// Wait after a pass that found nothing.
    pub idle: Duration,
}

impl Default for EnqueuerConfig {
    fn default() -> Self {
        Self {
            batch: 500,
            idle: Duration::from_millis(100),
        }
    }
}

/// The outbox relay.
#[derive(Debug, Clone)]
pub struct Enqueuer {
    deps: EngineDeps,
    config: EnqueuerConfig,
    /// Queues whose last publish failed, and until when to leave their runs out of the
    /// outbox, so that one broken queue neither stalls the others nor fills every batch.
    failing: Arc<Mutex<HashMap<String, QueueBackoff>>>,
}

#[derive(Debug, Clone, Copy)]
struct QueueBackoff {
    failures: u32,
    until: tokio::time::Instant,
}

impl Enqueuer {
    /// An enqueuer over `deps`.
    pub fn new(deps: EngineDeps, config: EnqueuerConfig) -> Self {
        Self {
            deps,
            config,
            failing: Arc::default(),
        }
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, HashMap<String, QueueBackoff>> {
        self.failing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes one batch of due runs, queue by queue, and marks each queue's runs queued in
    /// one store call once the broker confirmed them; returns how many were marked. A queue
    /// whose publish fails is logged and left out of the next passes for a backoff (200 ms,
    /// doubling, at most 30 s) while the other queues go on; only a store failure fails the
    /// pass.
    pub async fn pass(&self) -> Result<usize, EngineError> {
        let skip: Vec<String> = {
            let now = tokio::time::Instant::now();
            self.failing()
                .iter()
                .filter(|(_, b)| b.until > now)
                .map(|(q, _)| q.clone())
                .collect()
        };
        let due = self
            .deps
            .store
            .outbox(OutboxQuery {
                now: self.deps.clock.now(),
                limit: self.config.batch,
                skip_queues: &skip,
            })
            .await?;
        if due.is_empty() {
            return Ok(0);
        }
        let mut by_queue: BTreeMap<&str, Vec<&ModelRun>> = BTreeMap::new();
        for run in &due {
            by_queue.entry(run.queue.as_str()).or_default().push(run);
        }
        let mut marked = 0;
        for (queue, runs) in by_queue {
            let messages: Vec<RunMessage> = runs
                .iter()
                .map(|r| RunMessage {
                    run_id: r.id,
                    attempt: r.publish_attempt(),
                })
                .collect();
            // Confirmed by the broker before any run is marked.
            let publishing = std::time::Instant::now();
            let published = self.deps.queue.publish(queue, &messages).await;
            instruments::published(queue, publishing.elapsed(), published.is_ok());
            if let Err(e) = published {
                let mut failing = self.failing();
                let failures = failing.get(queue).map_or(0, |b| b.failures) + 1;
                let backoff = Duration::from_millis(200)
                    .saturating_mul(1 << failures.min(8))
                    .min(Duration::from_secs(30));
                failing.insert(
                    queue.to_owned(),
                    QueueBackoff {
                        failures,
                        until: tokio::time::Instant::now() + backoff,
                    },
                );
                warn!(%queue, runs = runs.len(), failures, error = %e, backoff_ms = backoff.as_millis() as u64, "publishing failed; this queue's runs wait, the other queues go on");
                continue;
            }
            if self.failing().remove(queue).is_some() {
                info!(%queue, "publishing to the queue works again");
            }
            let expected: Vec<(RunId, RunState, u32)> =
                runs.iter().map(|r| (r.id, r.state, r.attempt)).collect();
            // Runs cancelled or changed meanwhile are not marked: the worker drops their message.
            let n = self.deps.store.mark_enqueued(&expected).await?;
            instruments::enqueued(queue, n);
            marked += n;
        }
        Ok(marked)
    }

    /// Publishes every `queued` run again: used at start with a queue that lost its messages
    /// (not durable), so no queued run waits forever.
    pub async fn republish_queued(&self) -> Result<usize, EngineError> {
        let mut filter = RunFilter {
            state: Some(RunState::Queued),
            limit: 1000,
            ..Default::default()
        };
        let mut n = 0;
        loop {
            let page = self.deps.store.list(&filter).await?;
            let mut by_queue: BTreeMap<&str, Vec<RunMessage>> = BTreeMap::new();
            for r in &page.runs {
                by_queue
                    .entry(r.queue.as_str())
                    .or_default()
                    .push(RunMessage {
                        run_id: r.id,
                        attempt: r.attempt,
                    });
            }
            for (queue, messages) in by_queue {
                self.deps.queue.publish(queue, &messages).await?;
                n += messages.len();
            }
            match page.next {
                Some(next) => filter.after = Some(next),
                None => break,
            }
        }
        Ok(n)
    }

    /// Relays until `shutdown` is cancelled; failures are logged and retried after a pause.
    pub async fn run(self, shutdown: CancellationToken) {
        if !self.deps.queue.is_durable() {
            match self.republish_queued().await {
                Ok(0) => {}
                Ok(n) => info!(runs = n, "republished queued runs to a non-durable queue"),
                Err(e) => warn!(error = %e, "could not republish queued runs"),
            }
        }
        let mut failures = 0u32;
        loop {
            let wait = match self.pass().await {
                Ok(n) if n > 0 => {
                    failures = 0;
                    Duration::ZERO
                }
                Ok(_) => {
                    failures = 0;
                    self.config.idle
                }
                Err(e) => {
                    failures += 1;
                    warn!(error = %e, failures, "enqueuer pass failed; retrying");
                    Duration::from_millis(200 * u64::from(failures.min(25)))
                }
            };
            if wait.is_zero() {
                if shutdown.is_cancelled() {
                    break;
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;

    use super::*;
    use crate::chain::{BlockRange, Chain, RunMode};
    use crate::engine::{BackfillRequest, Worker, WorkerConfig, submit_backfill};
    use crate::memory::{MemoryBlockSource, MemoryRunQueue, MemoryRunStore, MemorySink};
    use crate::ports::{Consumer, QueueError, RunQueue, RunStore, RunStoreExt};
    use crate::routing::Routing;
    use crate::run::{RunEvent, RunId};

    /// A memory queue that records, for every message published, the run's state in the store
    /// at that moment; it can lose the broker's confirmation (after the messages landed), and
    /// cancel a run while its message is being published.
    #[derive(Debug)]
    struct SpyQueue {
        inner: MemoryRunQueue,
        store: Arc<MemoryRunStore>,
        seen: Mutex<Vec<(RunId, u32, RunState)>>,
        lose_confirmation: AtomicBool,
        cancel_on_publish: Mutex<Option<RunId>>,
    }

    #[async_trait]
    impl RunQueue for SpyQueue {
        async fn publish(&self, queue: &str, messages: &[RunMessage]) -> Result<(), QueueError> {
            for m in messages {
                let state = self.store.get(m.run_id).await.unwrap().state;
                self.seen.lock().unwrap().push((m.run_id, m.attempt, state));
            }
            let cancel = self.cancel_on_publish.lock().unwrap().take();
            if let Some(id) = cancel {
                let run = self.store.get(id).await.unwrap();
                self.store
                    .transition(
                        id,
                        run.state,
                        run.attempt,
                        RunEvent::Cancel { reason: None },
                    )
                    .await
                    .unwrap();
            }
            self.inner.publish(queue, messages).await?;
            if self.lose_confirmation.load(Ordering::SeqCst) {
                return Err(QueueError::NotConfirmed("connection lost".into()));
            }
            Ok(())
        }
        async fn consume(
            &self,
            queue: &str,
            prefetch: u16,
        ) -> Result<Box<dyn Consumer>, QueueError> {
            self.inner.consume(queue, prefetch).await
        }
        fn is_durable(&self) -> bool {
            true
        }
    }

    fn chain() -> Chain {
        Chain::new("ethereum").unwrap()
    }

    fn setup() -> (
        EngineDeps,
        Arc<MemoryRunStore>,
        Arc<SpyQueue>,
        Arc<MemorySink>,
    ) {
        // One clock for the store and the engine, following tokio's.
        let clock = crate::clock::TokioClock::shared();
        let store = Arc::new(MemoryRunStore::with_clock(clock.clone()));
        let queue = Arc::new(SpyQueue {
            inner: MemoryRunQueue::new(),
            store: store.clone(),
            seen: Mutex::default(),
            lose_confirmation: AtomicBool::new(false),
            cancel_on_publish: Mutex::default(),
        });
        let sink = Arc::new(MemorySink::new());
        let source = MemoryBlockSource::new(chain(), crate::models::tests::blocks(0, 29));
        let deps = EngineDeps {
            store: store.clone(),
            queue: queue.clone(),
            sink: sink.clone(),
            sources: HashMap::from([(chain(), Arc::new(source) as _)]),
            models: Arc::new(crate::models::builtin()),
            routing: Routing::default(),
            limits: Default::default(),
            clock,
        };
        (deps, store, queue, sink)
    }

    async fn submit(deps: &EngineDeps, max_attempts: u32) -> Vec<ModelRun> {
        submit_backfill(
            deps,
            BackfillRequest {
                max_attempts,
                ..BackfillRequest::new("block_stats", chain(), BlockRange::new(0, 29).unwrap(), 10)
            },
        )
        .await
        .unwrap()
        .runs
    }

    /// A memory queue whose `backfill_1` refuses every publish.
    #[derive(Debug, Default)]
    struct OneBadQueue(MemoryRunQueue);

    #[async_trait]
    impl RunQueue for OneBadQueue {
        async fn publish(&self, queue: &str, messages: &[RunMessage]) -> Result<(), QueueError> {
            if queue == "backfill_1" {
                return Err(QueueError::Unavailable {
                    adapter: "test",
                    message: "backfill_1 is broken".into(),
                });
            }
            self.0.publish(queue, messages).await
        }
        async fn consume(
            &self,
            queue: &str,
            prefetch: u16,
        ) -> Result<Box<dyn Consumer>, QueueError> {
            self.0.consume(queue, prefetch).await
        }
        fn is_durable(&self) -> bool {
            true
        }
    }

    /// One queue that refuses publishes must not stall the others, even when its runs are the
    /// oldest in the outbox and fill a whole batch (the enqueuer used to abort its pass on the
    /// first failing queue and read the same oldest runs again every pass).
    #[tokio::test]
    async fn one_failing_queue_does_not_stall_the_others() {
        let (deps, store, _spy, _sink) = setup();
        let queue = Arc::new(OneBadQueue::default());
        let deps = EngineDeps {
            queue: queue.clone(),
            ..deps
        };
        let adhoc = submit_backfill(
            &deps,
            BackfillRequest {
                mode: RunMode::Adhoc,
                adhoc_queue: Some(1),
                ..BackfillRequest::new("block_stats", chain(), BlockRange::new(0, 29).unwrap(), 10)
            },
        )
        .await
        .unwrap()
        .runs;
        let backfill = submit(&deps, 3).await;
        let enqueuer = Enqueuer::new(
            deps.clone(),
            EnqueuerConfig {
                batch: 3,
                idle: Duration::from_millis(5),
            },
        );
        // The oldest three are backfill_1's: the pass publishes nothing, and is no error.
        assert_eq!(enqueuer.pass().await.unwrap(), 0);
        // The next pass leaves backfill_1 out and relays the others.
        assert_eq!(enqueuer.pass().await.unwrap(), 3);
        for r in &backfill {
            assert_eq!(state(&store, r.id).await, (RunState::Queued, 1));
        }
        assert_eq!(queue.0.ready_len(&backfill[0].queue), 3);
        for r in &adhoc {
            assert_eq!(
                state(&store, r.id).await,
                (RunState::Pending, 1),
                "still in the outbox"
            );
        }
    }

    fn enqueuer(deps: &EngineDeps) -> Enqueuer {
        Enqueuer::new(
            deps.clone(),
            EnqueuerConfig {
                batch: 2,
                idle: Duration::from_millis(5),
            },
        )
    }

    async fn state(store: &MemoryRunStore, id: RunId) -> (RunState, u32) {
        let r = store.get(id).await.unwrap();
        (r.state, r.attempt)
    }

    #[tokio::test]
    async fn pending_runs_are_published_then_marked_queued() {
        let (deps, store, queue, _) = setup();
        let runs = submit(&deps, 3).await;
        let e = enqueuer(&deps);
        // Batches of two: two passes publish the three runs; a third finds nothing.
        assert_eq!(e.pass().await.unwrap(), 2);
        assert_eq!(e.pass().await.unwrap(), 1);
        assert_eq!(e.pass().await.unwrap(), 0);
        let seen = queue.seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            runs.iter()
                .map(|r| (r.id, 1, RunState::Pending))
                .collect::<Vec<_>>(),
            "each run published once, on attempt 1, while still pending"
        );
        for r in &runs {
            let now = store.get(r.id).await.unwrap();
            assert_eq!((now.state, now.attempt), (RunState::Queued, 1));
            assert!(now.queued_at.is_some());
        }
        assert_eq!(queue.inner.ready_len(&runs[0].queue), 3);
    }

    #[tokio::test]
    async fn an_unconfirmed_publish_marks_nothing_and_the_runs_are_published_again() {
        let (deps, store, queue, sink) = setup();
        let runs = submit(&deps, 3).await;
        let e = enqueuer(&deps);
        // The messages reach the queue but the confirmation is lost, as in a crash between
        // publishing and marking: the runs stay in the outbox.
        queue.lose_confirmation.store(true, Ordering::SeqCst);
        assert_eq!(e.pass().await.unwrap(), 0, "a failed publish marks nothing");
        for r in &runs {
            assert_eq!(state(&store, r.id).await, (RunState::Pending, 1));
        }
        assert_eq!(queue.inner.ready_len(&runs[0].queue), 2);
        // Restarted, the relay publishes them again (duplicates) and marks them.
        queue.lose_confirmation.store(false, Ordering::SeqCst);
        let e = enqueuer(&deps);
        assert_eq!(e.pass().await.unwrap(), 2);
        assert_eq!(e.pass().await.unwrap(), 1);
        assert_eq!(queue.inner.ready_len(&runs[0].queue), 5);
        let seen = queue.seen.lock().unwrap().clone();
        for r in &runs[..2] {
            assert_eq!(
                seen.iter().filter(|(id, _, _)| *id == r.id).count(),
                2,
                "published twice"
            );
        }

        // A worker runs every run once; the duplicate messages are dropped.
        let stop = CancellationToken::new();
        let worker = Worker::new(
            deps.clone(),
            WorkerConfig {
                queues: deps.routing.all_queues([&chain()]),
                env: "test".into(),
                ..Default::default()
            },
        );
        let stats = worker.stats();
        let handle = tokio::spawn(worker.run(stop.clone()));
        crate::engine::eventually(
            Duration::from_secs(10),
            "the worker to drain the queue",
            || {
                let drained = queue.inner.ready_len(&runs[0].queue) == 0
                    && stats.runs_succeeded.load(Ordering::Relaxed)
                        + stats.dropped.load(Ordering::Relaxed)
                        >= 5;
                async move { drained }
            },
        )
        .await;
        stop.cancel();
        handle.await.unwrap().unwrap();
        for r in &runs {
            assert_eq!(state(&store, r.id).await, (RunState::Succeeded, 1));
        }
        assert_eq!(stats.runs_succeeded.load(Ordering::Relaxed), 3);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(sink.records("test-ethereum-sink").len(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_published_when_due_and_cancelled_runs_never() {
        let (deps, store, queue, _) = setup();
        let runs = submit(&deps, 2).await;
        let e = enqueuer(&deps);
        while e.pass().await.unwrap() > 0 {}
        let now = deps.clock.now();
        let retry_at = [
            now - chrono::Duration::seconds(1),
            now + chrono::Duration::seconds(3600),
            now - chrono::Duration::seconds(1),
        ];
        for (r, at) in runs.iter().zip(retry_at) {
            store
                .claim(r.id, 1, "w", now + chrono::Duration::seconds(60))
                .await
                .unwrap();
            store
                .transition(
                    r.id,
                    RunState::Running,
                    1,
                    RunEvent::Fail {
                        owner: "w".into(),
                        error: "boom".into(),
                        retry_at: Some(at),
                    },
                )
                .await
                .unwrap();
        }
        // The third would be retried, but a user cancels it.
        store
            .transition(
                runs[2].id,
                RunState::Failed,
                1,
                RunEvent::Cancel { reason: None },
            )
            .await
            .unwrap();
        queue.seen.lock().unwrap().clear();
        assert_eq!(e.pass().await.unwrap(), 1);
        assert_eq!(e.pass().await.unwrap(), 0);
        assert_eq!(
            queue.seen.lock().unwrap().clone(),
            [(runs[0].id, 2, RunState::Failed)],
            "only the due retry, on its next attempt"
        );
        assert_eq!(state(&store, runs[0].id).await, (RunState::Queued, 2));
        assert_eq!(state(&store, runs[1].id).await, (RunState::Failed, 1));
        assert_eq!(state(&store, runs[2].id).await, (RunState::Cancelled, 1));
        // The last attempt failed: nothing more to publish.
        store
            .claim(runs[0].id, 2, "w", now + chrono::Duration::seconds(60))
            .await
            .unwrap();
        store
            .transition(
                runs[0].id,
                RunState::Running,
                2,
                RunEvent::Fail {
                    owner: "w".into(),
                    error: "again".into(),
                    retry_at: Some(now),
                },
            )
            .await
            .unwrap();
        assert_eq!(e.pass().await.unwrap(), 0);
        assert_eq!(queue.seen.lock().unwrap().len(), 1);
        // An hour later (time is paused, so at once) the second run's retry is due.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(e.pass().await.unwrap(), 1);
        assert_eq!(state(&store, runs[1].id).await, (RunState::Queued, 2));
        assert_eq!(e.pass().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_run_cancelled_while_being_published_is_not_marked() {
        let (deps, store, queue, _) = setup();
        let runs = submit(&deps, 3).await;
        *queue.cancel_on_publish.lock().unwrap() = Some(runs[1].id);
        let e = Enqueuer::new(deps.clone(), EnqueuerConfig::default());
        assert_eq!(e.pass().await.unwrap(), 2);
        assert_eq!(state(&store, runs[0].id).await, (RunState::Queued, 1));
        assert_eq!(state(&store, runs[1].id).await, (RunState::Cancelled, 1));
        assert_eq!(state(&store, runs[2].id).await, (RunState::Queued, 1));
        assert_eq!(e.pass().await.unwrap(), 0, "and never published again");
    }

    #[tokio::test]
    async fn queued_runs_are_republished_for_a_queue_that_lost_them() {
        let (deps, store, queue, _) = setup();
        let runs = submit(&deps, 3).await;
        let e = enqueuer(&deps);
        while e.pass().await.unwrap() > 0 {}
        // One runs; the others wait in `queued`.
        store
            .claim(
                runs[0].id,
                1,
                "w",
                Utc::now() + chrono::Duration::seconds(60),
            )
            .await
            .unwrap();
        queue.seen.lock().unwrap().clear();
        assert_eq!(e.republish_queued().await.unwrap(), 2);
        assert_eq!(
            queue.seen.lock().unwrap().clone(),
            [
                (runs[1].id, 1, RunState::Queued),
                (runs[2].id, 1, RunState::Queued)
            ]
        );
    }
}
