//! [`PostgresRunStore::claim_next`]: claiming the next queued run of a queue in one statement
//! (`FOR UPDATE SKIP LOCKED`), for the claim benchmarks and the store's tests. The engine claims
//! by run id from a queue message ([`RunStore::claim`](model_runner_core::ports::RunStore::claim)),
//! so this is behind the `bench` feature and not part of the default API.

use chrono::{DateTime, Utc};
use model_runner_core::ports::StoreResult;
use model_runner_core::{ModelRun, RunEvent, RunId};
use uuid::Uuid;

use super::errors::{Backoff, classify, corrupt};
use super::queries::CLAIM_NEXT;
use super::rows::{StoredRun, decode, now, to_micros};
use super::{AttemptError, PostgresRunStore, compare_and_set};

/// `claim_next` scans a queue from its oldest run at least once per this many claims.
pub const FULL_SCAN_EVERY: u32 = 64;

impl PostgresRunStore {
    /// Claims a `queued` run of `queue` for `owner` until `lease_until`, skipping runs other
    /// claimers are taking (`FOR UPDATE SKIP LOCKED`), or `None` when the queue has no queued run
    /// left. The transition is decided by [`ModelRun::apply`] as for
    /// [`RunStoreExt::claim`](model_runner_core::ports::RunStoreExt::claim).
    ///
    /// Runs are taken in id order from just after the last run this store claimed from the
    /// queue, going back to the oldest queued run when none follows and at least every
    /// [`FULL_SCAN_EVERY`] claims, so a requeued (older) run waits at most that many claims.
    /// Starting after the last claim keeps each claim clear of the index entries that claimed
    /// runs leave at the head of the queue until vacuum removes them, which would otherwise make
    /// every claim scan all runs claimed since the last vacuum.
    pub async fn claim_next(
        &self,
        queue: &str,
        owner: &str,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Option<ModelRun>> {
        let event = RunEvent::Start {
            owner: owner.to_owned(),
            lease_until,
        };
        let mut backoff = Backoff::new(self.retry_budget);
        let mut in_doubt: Option<ModelRun> = None;
        let mut after = self.claim_hint(queue);
        loop {
            if let Some(mine) = in_doubt.take() {
                let stored = self.load(mine.id).await?;
                if stored.run == mine {
                    self.remember(&stored);
                    self.set_claim_hint(queue, mine.id, after.is_none());
                    return Ok(Some(stored.run));
                }
            }
            match self.try_claim_next(queue, &event, after).await {
                Ok(Some(stored)) => {
                    self.remember(&stored);
                    self.set_claim_hint(queue, stored.run.id, after.is_none());
                    return Ok(Some(stored.run));
                }
                // Nothing after the hint: look from the start of the queue.
                Ok(None) if after.is_some() => after = None,
                Ok(None) => return Ok(None),
                Err((AttemptError::Before(e), _)) => backoff.retry("claim_next", e).await?,
                Err((AttemptError::InDoubt(e), next)) => {
                    backoff.retry("claim_next", e).await?;
                    in_doubt = next;
                }
            }
        }
    }

    #[allow(clippy::type_complexity)] // the in-doubt run travels with its error
    async fn try_claim_next(
        &self,
        queue: &str,
        event: &RunEvent,
        after: Option<RunId>,
    ) -> Result<Option<StoredRun>, (AttemptError, Option<ModelRun>)> {
        let before = |e: sqlx::Error| (AttemptError::Before(classify(e)), None);
        let mut tx = self.pool.begin().await.map_err(before)?;
        let row = sqlx::query(CLAIM_NEXT)
            .bind(queue)
            .bind(after.map_or(Uuid::nil(), |a| a.0))
            .fetch_optional(&mut *tx)
            .await
            .map_err(before)?;
        let Some(row) = row else {
            tx.commit().await.map_err(before)?;
            return Ok(None);
        };
        let prev = decode(&row).map_err(|e| (AttemptError::Before(e), None))?;
        let mut next = prev.run.clone();
        next.apply(event, now())
            .map_err(|e| (AttemptError::Before(e.into()), None))?;
        to_micros(&mut next);
        let version = compare_and_set(&prev, &next, !self.durable_claims)
            .fetch_optional(&mut *tx)
            .await
            .map_err(before)?
            // We hold the row lock, so the row cannot have moved.
            .ok_or_else(|| {
                (
                    AttemptError::Before(corrupt("claimed run changed under its row lock")),
                    None,
                )
            })?;
        match tx.commit().await {
            Ok(()) => Ok(Some(StoredRun { run: next, version })),
            Err(e) => Err((AttemptError::InDoubt(classify(e)), Some(next))),
        }
    }

    /// Where `claim_next` on `queue` starts: after the last claimed run, or at the start of the
    /// queue every [`FULL_SCAN_EVERY`] claims.
    fn claim_hint(&self, queue: &str) -> Option<RunId> {
        let hints = self.claim_hints.lock().unwrap_or_else(|e| e.into_inner());
        match hints.get(queue) {
            Some((last, since_full)) if *since_full < FULL_SCAN_EVERY => Some(*last),
            _ => None,
        }
    }

    fn set_claim_hint(&self, queue: &str, last: RunId, was_full_scan: bool) {
        let mut hints = self.claim_hints.lock().unwrap_or_else(|e| e.into_inner());
        let since_full = match hints.get(queue) {
            Some((_, n)) if !was_full_scan => n + 1,
            _ => 1,
        };
        hints.insert(queue.to_owned(), (last, since_full));
    }
}
